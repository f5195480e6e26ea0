"""Conflict forecast with many tasks that all edit one file: its time, trial merges and memory.

Every task's branch writes the same file, so every pair of tasks overlaps: n tasks make n(n-1)/2
pairs (500 tasks: 124,750). Prints the time the engine's forecast took, how many trial merges it
made, how many pairs overlap, and the process's peak memory (RSS) before and after it. Run it on an
older checkout of corral for the figures before a change (the counter of trial merges is then
shown as "-").

    python benchmarks/forecast_many.py [--tasks 500]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import time
from pathlib import Path

from _common import fmt, scratch_repo


def branches_on_one_file(repo: Path, tasks: int) -> dict[str, str]:
    """``tasks`` branches from main, made at once with fast-import, each writing ``shared.txt``."""
    base = subprocess.run(["git", "rev-parse", "main"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()
    stream = []
    for i in range(tasks):
        text = f"task {i}\n"
        stream.append(f"commit refs/heads/t{i:04d}\ncommitter b <b@b> 0 +0000\ndata 5\ntask\nfrom {base}\n"
                      f"M 100644 inline shared.txt\ndata {len(text)}\n{text}\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input="".join(stream), text=True, check=True)
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/"],
                         cwd=repo, check=True, capture_output=True, text=True).stdout
    return {name: sha for name, sha in (line.split() for line in out.splitlines()) if name != "main"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def forecast(repo: Path, heads: dict[str, str]):
    from corral.core.vcs.git import GitBackend

    backend = await GitBackend.open(repo)
    try:
        return await backend.forecast("main", heads)
    finally:
        await backend.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=500)
    a = ap.parse_args()
    repo = scratch_repo(1)
    try:
        heads = branches_on_one_file(repo, a.tasks)
        import corral.core.vcs.git  # noqa: F401  (imports are not the forecast's memory)

        before = peak_rss_mb()
        start = time.perf_counter()
        fc = asyncio.run(forecast(repo, heads))
        took = time.perf_counter() - start
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    trials = getattr(fc, "trials", None)
    print(f"conflict forecast: {a.tasks} tasks that all edit one file ({a.tasks * (a.tasks - 1) // 2:,} "
          f"overlapping pairs)")
    print(f"  time            {fmt(took)} s")
    print(f"  trial merges    {'-' if trials is None else f'{trials:,}'}")
    print(f"  conflicts found {len(fc.conflicts):,}; files not trial-merged: {len(getattr(fc, 'crowded', {}))}")
    print(f"  peak RSS        {peak_rss_mb():.0f} MB ({before:.0f} MB before the forecast)")


if __name__ == "__main__":
    main()
