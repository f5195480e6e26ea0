"""Workspace creation: 16 workspaces of a synthetic repository of 20,000 files.

Baseline: a sequential shell loop of `git worktree add`. corral: the engine's create_workspace for
all 16 at once (worktree metadata under the repo lock, checkouts in parallel), then removal.
jj: the same through the jj backend (when jj is installed), against a loop of `jj workspace add`.

    python benchmarks/workspaces.py [--files 20000] [--count 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import fmt, median, scratch_repo


def shell_loop(repo: Path, count: int, cmd: str) -> float:
    root = Path(tempfile.mkdtemp(prefix="corral-bench-wt-"))
    script = cmd.format(root=root, count=count)
    start = time.perf_counter()
    subprocess.run(["sh", "-c", script], cwd=repo, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - start
    return took, root


async def engine(repo: Path, count: int, vcs: str) -> tuple[float, float]:
    from corral.core.vcs import open_backend

    backend = await open_backend(repo, vcs)
    base = await backend.resolve("main" if vcs == "git" else "main")
    root = tempfile.mkdtemp(prefix="corral-bench-ws-")
    start = time.perf_counter()
    results = await asyncio.gather(*(backend.create_workspace("bench", f"t{i}", base, root) for i in range(count)))
    created = time.perf_counter() - start
    start = time.perf_counter()
    for ws in results:
        await backend.remove_workspace(ws, keep_ref=False)
    removed = time.perf_counter() - start
    await backend.close()
    shutil.rmtree(root, ignore_errors=True)
    return created, removed


def settle() -> None:
    os.sync()
    time.sleep(2)


def git_cleanup(repo: Path, root: Path) -> None:
    subprocess.run(["sh", "-c", "git worktree list --porcelain | sed -n 's/^worktree //p' | tail -n +2 | "
                    "xargs -r -n1 git worktree remove --force; git for-each-ref --format='%(refname)' refs/heads/b/ | "
                    "xargs -r -n1 git update-ref -d"], cwd=repo, check=True)
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    repo = scratch_repo(a.files)
    print(f"workspace creation: {a.count} workspaces of a {a.files}-file repository, median of {a.runs} runs")
    loop = ("i=0; while [ $i -lt {count} ]; do git worktree add -q --no-track -b b/$i {root}/w$i main; "
            "i=$((i+1)); done")
    # the filesystem pays for deletions later (ext4 discard, journal): settle it before each
    # measurement, and alternate the order so neither side always runs after the other's cleanup
    base, ours = [], []
    for i in range(a.runs):
        for which in (("base", "ours") if i % 2 == 0 else ("ours", "base")):
            settle()
            if which == "base":
                took, root = shell_loop(repo, a.count, loop)
                base.append(took)
                git_cleanup(repo, root)
            else:
                ours.append(asyncio.run(engine(repo, a.count, "git")))
    b, c = median(base), median([x[0] for x in ours])
    print(f"  git  baseline (sequential worktree add loop)  {fmt(b)} s")
    print(f"  git  corral (parallel, locked metadata)       {fmt(c)} s   ratio {b / c:.2f}x   "
          f"(removal {fmt(median([x[1] for x in ours]))} s)")
    if shutil.which("jj"):
        try:
            from corral.core.vcs.jj import JjBackend  # noqa: F401
        except ImportError:
            print("  jj   skipped: this build has no jj backend")
            return
        subprocess.run(["jj", "git", "init", "--colocate"], cwd=repo, check=True, capture_output=True)
        subprocess.run(["jj", "bookmark", "track", "main@git"], cwd=repo, capture_output=True)
        jloop = ("i=0; while [ $i -lt {count} ]; do jj workspace add --no-colocate -r main --name b$i {root}/w$i "
                 ">/dev/null 2>&1 || jj workspace add -r main --name b$i {root}/w$i; i=$((i+1)); done")
        jbase = []
        for _ in range(a.runs):
            settle()
            took, root = shell_loop(repo, a.count, jloop)
            jbase.append(took)
            subprocess.run(["sh", "-c", f"for i in $(seq 0 {a.count - 1}); do jj workspace forget b$i; done"],
                           cwd=repo, capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
        jours = []
        for _ in range(a.runs):
            settle()
            jours.append(asyncio.run(engine(repo, a.count, "jj")))
        jb, jc = median(jbase), median([x[0] for x in jours])
        print(f"  jj   baseline (sequential workspace add loop) {fmt(jb)} s")
        print(f"  jj   corral                                   {fmt(jc)} s   ratio {jb / jc:.2f}x")
    else:
        print("  jj   skipped: jj is not installed")


if __name__ == "__main__":
    main()
