"""The supervisor: a dashboard attached over its socket, a late attach, and an idle supervisor.

- stream: N agents x L lines (the log_streaming generator) in a run started with ``--detach``, with
  the real dashboard (headless Textual) attached over the socket; the throughput ratio is the bare
  drain's time over the agents' streaming window (target >= 0.5), and the panes must end on each
  agent's last line. The agents wait at a gate until the dashboard is attached and shows their
  panes: the window runs from the gate's opening to the last agent's end, the stream to a
  dashboard that is there (its own start, some 0.5 s of CPU, is not part of it).
- attach: agents that printed M lines in all while nobody watched, then wait; the time from
  ``corral attach`` connecting to the dashboard painted with every pane's tail (target <= 1 s).
- idle: N silent agents, no client: the supervisor's CPU over a window (target < 1 % of a core).

    python benchmarks/supervisor.py [--only stream|attach|idle] [--agents 16] [--lines 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import GEN, corral_cmd, fmt, median, scratch_repo

SIZE = (160, 48)


def write_plan(repo: Path, name: str, prompts: list[str], approve: str = "none") -> Path:
    plan = repo.parent / f"{repo.name}-{name}.toml"
    body = ['agent = "shell"', 'setup = "none"', 'sandbox = "none"', f'approve = "{approve}"']
    for i, p in enumerate(prompts):
        body += ["[[tasks]]", f'name = "t{i}"', f"prompt = {json.dumps(p)}"]
    plan.write_text("\n".join(body) + "\n")
    return plan


def start_detached(repo: Path, plan: Path) -> str:
    res = subprocess.run([*corral_cmd(), "run", str(plan), "--detach"], cwd=repo, capture_output=True, text=True)
    m = re.search(r"run (\S+) started", res.stdout)
    if not m:
        raise SystemExit(f"could not start: {res.stdout}{res.stderr}")
    return m.group(1)


def stop_supervisor(repo: Path) -> None:
    subprocess.run([*corral_cmd(), "stop", "--all"], cwd=repo, capture_output=True)
    lock = repo / ".git" / "corral" / "supervisor.lock"
    if lock.is_file():
        try:
            os.kill(int(lock.read_text().split()[0]), 15)
        except (OSError, ValueError):
            pass


async def attach_app(repo: Path, run: str, until, timeout: float = 600) -> tuple[float, dict]:
    """The real dashboard attached to ``run``; returns (seconds from connecting until ``until(app)``,
    what the panes show last)."""
    from corral.core.server.client import SocketLink, open_connection
    from corral.tui.dashboard import CorralApp

    t0 = time.perf_counter()
    conn = await open_connection(repo / ".git" / "corral")
    app = CorralApp(link=SocketLink(conn, run), notifications=False)
    async with app.run_test(headless=True, size=SIZE) as pilot:
        deadline = time.monotonic() + timeout
        while not until(app):
            if time.monotonic() > deadline:
                raise SystemExit("timed out")
            await asyncio.sleep(0.005)
        took = time.perf_counter() - t0
        await pilot.pause()
        shown = {n: list(p.log_widget.lines[-1:]) for n, p in app.run_screen.panes.items()} if app.run_screen else {}
        app.exit()
    return took, shown


def bench_stream(a: argparse.Namespace) -> None:
    from log_streaming import baseline

    import corral.tui.dashboard  # noqa: F401  (as `corral run` has it loaded before the run starts)

    repo = scratch_repo()
    outdir = Path(tempfile.mkdtemp(prefix="corral-drain-"))
    try:
        gate = repo.parent / f"{repo.name}-gate"
        plan = write_plan(repo, "stream", [f"while [ ! -f {gate} ]; do sleep 0.02; done; {sys.executable} {GEN} {a.lines} t{i}"
                                           for i in range(a.agents)])
        print(f"{a.agents} agents x {a.lines} lines through the supervisor's socket to an attached dashboard "
              f"(headless Textual {SIZE[0]}x{SIZE[1]}); each run after a baseline run")
        ratios, windows, tails = [], [], []
        for _ in range(a.runs):
            base = baseline(a.agents, a.lines, outdir)["window"]
            gate.unlink(missing_ok=True)
            run = start_detached(repo, plan)
            opened: list[float] = []

            def done(app) -> bool:
                screen = app.run_screen
                if not opened and screen is not None and len(screen.panes) == a.agents and all(
                        getattr(p, "ready", False) for p in screen.panes.values()):
                    opened.append(time.time())
                    gate.write_text("go")  # attached, the panes shown: the agents may print
                return bool(opened) and app.link is not None and not app.pipeline_running

            _, shown = asyncio.run(attach_app(repo, run, done))
            run_dir = repo / ".git" / "corral" / "runs" / run
            events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
            start = opened[0]
            end = max(e["ts"] for e in events if e["type"] == "task_finished")
            windows.append(end - start)
            ratios.append(base / (end - start))
            last = f"line {a.lines - 1:07d} "
            tails.append(len(shown) == a.agents and all(v and last in v[0] for v in shown.values()))
        print(f"  streaming window                 {fmt(median(windows))} s (median)")
        print(f"  throughput ratio to bare drain   {median(ratios):.2f}   (target >= 0.5; runs: "
              f"{', '.join(f'{r:.2f}' for r in sorted(ratios))})")
        print(f"  panes end on the agents' last line {'yes' if all(tails) else 'NO'}")
    finally:
        stop_supervisor(repo)
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(outdir, ignore_errors=True)
        Path(f"{repo.parent}/{repo.name}-stream.toml").unlink(missing_ok=True)
        Path(f"{repo.parent}/{repo.name}-gate").unlink(missing_ok=True)


def bench_attach(a: argparse.Namespace) -> None:
    repo = scratch_repo()
    gate = repo.parent / f"{repo.name}-gate"
    per = a.total // a.agents
    try:
        plan = write_plan(repo, "attach", [f"{sys.executable} {GEN} {per} t{i}; while [ ! -f {gate} ]; do sleep 0.1; done"
                                           for i in range(a.agents)])
        run = start_detached(repo, plan)
        logs = repo / ".git" / "corral" / "runs" / run / "logs"
        deadline = time.monotonic() + 600
        while sum(1 for i in range(a.agents) if (logs / f"t{i}.log").is_file()
                  and (logs / f"t{i}.log").stat().st_size >= per * 80) < a.agents:
            if time.monotonic() > deadline:
                raise SystemExit("the agents never printed their lines")
            time.sleep(0.2)
        times = []
        for _ in range(a.runs):
            def painted(app) -> bool:
                screen = app.run_screen
                return (screen is not None and len(screen.panes) == a.agents
                        and all(getattr(p, "ready", False) and len(p.log_widget.lines) > 0 for p in screen.panes.values()))
            took, _ = asyncio.run(attach_app(repo, run, painted, timeout=60))
            times.append(took)
        print(f"attach to a run whose {a.agents} agents printed {per * a.agents:,} lines while nobody watched")
        print(f"  connect to every pane painted with its tail   median {fmt(median(times))} s, worst "
              f"{fmt(max(times))} s over {a.runs} attaches   (target <= 1 s)")
    finally:
        gate.write_text("go")
        stop_supervisor(repo)
        shutil.rmtree(repo, ignore_errors=True)
        gate.unlink(missing_ok=True)
        Path(f"{repo.parent}/{repo.name}-attach.toml").unlink(missing_ok=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_idle(a: argparse.Namespace) -> None:
    repo = scratch_repo()
    try:
        plan = write_plan(repo, "idle", ["sleep 600"] * a.agents)
        start_detached(repo, plan)
        pid = int((repo / ".git" / "corral" / "supervisor.lock").read_text().split()[0])
        time.sleep(3)  # the agents started
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(a.window)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        print(f"an idle supervisor: {a.agents} silent agents, no client, {a.window:g} s")
        print(f"  CPU of the supervisor   {(c1 - c0) / (t1 - t0) * 100:.2f} % of a core   (target < 1 %)")
    finally:
        stop_supervisor(repo)
        shutil.rmtree(repo, ignore_errors=True)
        Path(f"{repo.parent}/{repo.name}-idle.toml").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("stream", "attach", "idle"))
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--total", type=int, default=1_000_000, help="attach: lines printed in all before attaching")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=10.0)
    a = ap.parse_args()
    os.environ.setdefault("CORRAL_SUPERVISOR_IDLE", "2")
    for name, fn in (("stream", bench_stream), ("attach", bench_attach), ("idle", bench_idle)):
        if a.only in (None, name):
            fn(a)


if __name__ == "__main__":
    main()
