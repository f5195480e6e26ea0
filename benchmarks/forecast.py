"""Conflict forecast: 12 task branches on a 20,000-file repository, every pair plus base.

Baseline: a bare loop of `git merge-tree --write-tree` calls over the same pairs (66 pairs + 12
against a moved base). corral: the engine's forecast (file sets first, trial merges only where
files overlap, in parallel). Prints both and the ratio; the target is under 3 s.

    python benchmarks/forecast.py [--files 20000] [--tasks 12] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import time
from pathlib import Path

from _common import fmt, median, scratch_repo

ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
       "GIT_COMMITTER_EMAIL": "b@b"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=ENV).stdout.strip()


def make_branches(repo: Path, tasks: int) -> tuple[str, dict[str, str]]:
    """Each task edits 20 files of its own and, for every third task, one shared file (conflicts)."""
    base = git(repo, "rev-parse", "main")
    heads = {}
    for t in range(tasks):
        git(repo, "checkout", "-q", "-b", f"task{t}", base)
        for k in range(20):
            p = repo / f"d{(t * 7 + k) % 100:02d}" / f"task{t}-{k}.txt"
            p.write_text(f"task {t} file {k}\n")
        if t % 3 == 0:
            (repo / "d00" / "f00000.txt").write_text(f"changed by task {t}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"task {t}")
        heads[f"task{t}"] = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    # base moves on, touching one file a task also touches
    (repo / "d00" / "f00000.txt").write_text("changed on main\n")
    git(repo, "commit", "-qam", "main moves")
    return base, heads


def bare_loop(repo: Path, heads: dict[str, str]) -> float:
    start = time.perf_counter()
    for a, b in itertools.combinations(heads.values(), 2):
        subprocess.run(["git", "merge-tree", "--write-tree", "--name-only", "--no-messages", a, b], cwd=repo,
                       capture_output=True)
    for h in heads.values():
        subprocess.run(["git", "merge-tree", "--write-tree", "--name-only", "--no-messages", h, "main"], cwd=repo,
                       capture_output=True)
    return time.perf_counter() - start


async def engine(repo: Path, base: str, heads: dict[str, str]) -> tuple[float, int]:
    from corral.core.vcs.git import GitBackend

    backend = await GitBackend.open(repo)
    start = time.perf_counter()
    fc = await backend.forecast("main", heads, {t: base for t in heads})
    took = time.perf_counter() - start
    return took, len(fc.conflicts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    repo = scratch_repo(a.files)
    base, heads = make_branches(repo, a.tasks)
    pairs = a.tasks * (a.tasks - 1) // 2
    print(f"conflict forecast: {a.tasks} branches of a {a.files}-file repository ({pairs} pairs + {a.tasks} "
          f"against base), median of {a.runs} runs")
    b = median([bare_loop(repo, heads) for _ in range(a.runs)])
    results = [asyncio.run(engine(repo, base, heads)) for _ in range(a.runs)]
    c = median([r[0] for r in results])
    print(f"  baseline (bare loop of git merge-tree)  {fmt(b)} s")
    print(f"  corral forecast                         {fmt(c)} s   ratio {b / c:.2f}x   "
          f"({results[0][1]} conflicting pairs found; target < 3 s)")


if __name__ == "__main__":
    main()
