"""The cost of the sandbox: an agent's start time in bubblewrap vs without, through corral's own
process layer (its reaper, a process group, the output pipe), in a worktree of a scratch repository
with the binds a real task gets.

    python benchmarks/sandbox.py [--runs 20]

Start time: from asking for the command to its first output line. Whole: until it has exited and
been reaped (the sandbox's teardown included).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import anyio

from _common import fmt, median, scratch_repo


async def measure(argv: list[str], cwd: Path, runs: int) -> tuple[float, float]:
    from corral.core.procs import Supervised

    starts, wholes = [], []
    for _ in range(runs):
        first: list[float] = []
        begin = time.perf_counter()
        proc = Supervised(argv, cwd=cwd, on_lines=lambda lines: first or first.append(time.perf_counter()))
        result = await proc.run()
        assert result.exit_code == 0 and first, f"{argv[:3]}... failed (exit {result.exit_code})"
        starts.append(first[0] - begin)
        wholes.append(time.perf_counter() - begin)
    return median(starts), median(wholes)


async def main_async(runs: int) -> None:
    from corral.core.sandbox import Sandbox, probe

    bwrap, signals, problem = await probe()
    if not bwrap:
        print(f"no sandbox here: {problem}")
        return
    repo = scratch_repo()
    ws = Path(tempfile.mkdtemp(prefix="corral-bench-ws-"))
    ws.rmdir()
    try:
        subprocess.run(["git", "worktree", "add", "-q", "-b", "corral/bench/one", str(ws)], cwd=repo, check=True)
        common = repo / ".git"
        writable = [ws, common / "objects", common / "worktrees" / ws.name, common / "refs/heads/corral/bench",
                    common / "logs/refs/heads/corral/bench", Path("~/.cache").expanduser()]
        argv = ["sh", "-c", "echo started"]
        print(f"agent start, median of {runs} runs (sh -c 'echo started', under corral's reaper)")
        plain = await measure(argv, ws, runs)
        for network in (True, False):
            sandbox = Sandbox(bwrap=bwrap, network=network, signals=signals)
            wrapped = sandbox.wrap(argv, cwd=str(ws), visible=[repo, common, Path.home()], writable=writable)
            boxed = await measure(wrapped, ws, runs)
            print(f"  {sandbox.describe():<25} start {fmt(boxed[0])} s (+{(boxed[0] - plain[0]) * 1000:.1f} ms), "
                  f"whole {fmt(boxed[1])} s (+{(boxed[1] - plain[1]) * 1000:.1f} ms)")
        print(f"  {'no sandbox':<25} start {fmt(plain[0])} s, whole {fmt(plain[1])} s")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ws)], cwd=repo, check=False)
        shutil.rmtree(repo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    anyio.run(main_async, ap.parse_args().runs)


if __name__ == "__main__":
    main()
