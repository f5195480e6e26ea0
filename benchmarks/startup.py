"""Start-up: `corral --help` and `corral --version` wall time, and the import-time breakdown.

    python benchmarks/startup.py [--runs 5]

(First paint of the dashboard is measured by benchmarks/dashboard.py.)
"""

from __future__ import annotations

import argparse
import sys

from _common import corral_cmd, fmt, import_times, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    print(f"start-up, median of {a.runs} runs")
    bare = timed([sys.executable, "-c", "pass"], a.runs)
    print(f"  python -c pass (floor)   {fmt(bare)} s")
    for args in (["--version"], ["--help"], ["run", "--help"]):
        print(f"  corral {' '.join(args):<16} {fmt(timed([*corral_cmd(), *args], a.runs))} s")
    rows = import_times(["-m", "corral.tui.cli", "--help"])
    top = sorted((r for r in rows if r[1] <= 3), reverse=True)[:10]
    print("  heaviest imports for `corral --help` (cumulative):")
    for us, _, name in top:
        print(f"    {us / 1000:7.1f} ms  {name}")
    heavy = [name for _, _, name in rows if name.split(".")[0] in ("textual", "git", "anyio")]
    print(f"  textual/GitPython/anyio imported by --help: {'none' if not heavy else ', '.join(sorted(set(heavy))[:5])}")


if __name__ == "__main__":
    main()
