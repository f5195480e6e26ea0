"""Helpers shared by the benchmark scripts (not a test module)."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GEN = HERE / "_gen.py"


def scratch_repo(files: int = 1, prefix: str = "corral-bench-") -> Path:
    """A git repository of ``files`` files in a fresh temp dir, removed when the script exits, with
    the files a script writes beside it (``<name>-*``: plans)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(remove_scratch, root)
    for i in range(files):
        p = root / f"d{i % 100:02d}" / f"f{i:05d}.txt" if files > 1 else root / "README.md"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"file {i}\n" + "content line\n" * 5)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    return root


def remove_scratch(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for sibling in root.parent.glob(f"{root.name}-*"):
        if sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)


def corral_cmd() -> list[str]:
    return [sys.executable, "-m", "corral.tui.cli"]


def send_key(app, key: str) -> None:
    """As a terminal key press arrives at a running Textual app: from its driver, without Pilot's
    wait-for-idle."""
    from textual import events

    ev = events.Key(key, key if len(key) == 1 else None)
    ev.set_sender(app)
    app._driver.send_message(ev)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt(x: float) -> str:
    return f"{x:.3f}"


def timed(args: list[str], runs: int) -> float:
    """Median wall time of running ``args`` (output discarded) ``runs`` times."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return median(times)


def import_times(args: list[str]) -> list[tuple[int, int, str]]:
    """(cumulative microseconds, nesting depth, module) of each import made by ``python -X importtime
    ARGS``."""
    res = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True)
    rows = []
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    return rows
