"""Workspace creation: 16 workspaces of a synthetic repository of 20,000 files.

Baseline: a sequential shell loop of `git worktree add`. corral: the engine's create_workspace for
all 16 at once (worktree metadata under the repo lock, checkouts in parallel), then removal.
jj: the same through the jj backend (when jj is installed), against a loop of `jj workspace add`.

    python benchmarks/workspaces.py [--files 20000] [--count 16] [--runs 3] [--vcs git,jj] [--settle 40]

The repository and the workspaces go to the temp dir: ``TMPDIR=/dev/shm`` measures the same on tmpfs
(what /tmp is on many systems), where the disk's state plays no part.
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


def settle(seconds: float) -> None:
    """Let the filesystem forget the last round's deletions. ext4 will not reuse an inode freed in
    the last 5 to 35 seconds (``recently_deleted``) and scans past every such one when creating a
    file: right after 320,000 deletions, creating files costs 5 to 10 times more kernel time, for
    whichever side happens to run next (perf: find_get_block_common under __ext4_new_inode)."""
    os.sync()
    time.sleep(seconds)


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
    ap.add_argument("--vcs", default="git,jj", help="which to measure: git, jj or both (default)")
    ap.add_argument("--settle", type=float, default=40, help="seconds to wait after a sync before each measurement")
    a = ap.parse_args()
    repo = scratch_repo(a.files)
    print(f"workspace creation: {a.count} workspaces of a {a.files}-file repository, median of {a.runs} runs")
    loop = ("i=0; while [ $i -lt {count} ]; do git worktree add -q --no-track -b b/$i {root}/w$i main; "
            "i=$((i+1)); done")
    # the filesystem pays for deletions later: settle it before each measurement, and alternate the
    # order so neither side always runs after the other's cleanup
    base, ours = [], []
    for i in range(a.runs if "git" in a.vcs else 0):
        for which in (("base", "ours") if i % 2 == 0 else ("ours", "base")):
            settle(a.settle)
            if which == "base":
                took, root = shell_loop(repo, a.count, loop)
                base.append(took)
                git_cleanup(repo, root)
            else:
                ours.append(asyncio.run(engine(repo, a.count, "git")))
    if base:
        b, c = median(base), median([x[0] for x in ours])
        print(f"  git  baseline (sequential worktree add loop)  {fmt(b)} s   (runs: {', '.join(fmt(x) for x in base)})")
        print(f"  git  corral (parallel, locked metadata)       {fmt(c)} s   ratio {b / c:.2f}x   "
              f"(runs: {', '.join(fmt(x[0]) for x in ours)}; removal {fmt(median([x[1] for x in ours]))} s)")
    if "jj" not in a.vcs:
        return
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
            settle(a.settle)
            took, root = shell_loop(repo, a.count, jloop)
            jbase.append(took)
            subprocess.run(["sh", "-c", f"for i in $(seq 0 {a.count - 1}); do jj workspace forget b$i; done"],
                           cwd=repo, capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
        jours = []
        for _ in range(a.runs):
            settle(a.settle)
            jours.append(asyncio.run(engine(repo, a.count, "jj")))
        jb, jc = median(jbase), median([x[0] for x in jours])
        print(f"  jj   baseline (sequential workspace add loop) {fmt(jb)} s")
        print(f"  jj   corral                                   {fmt(jc)} s   ratio {jb / jc:.2f}x")
    else:
        print("  jj   skipped: jj is not installed")


if __name__ == "__main__":
    main()
