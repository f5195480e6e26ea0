"""Log streaming: N agents each printing L lines of ~80 characters as fast as they can.

Baseline: a bare Python program draining the same N pipes to N files (selectors, 64 KiB reads).
corral: a headless run of N shell agents running the same generator. Prints the median of R runs
of each, the throughput ratio (corral / baseline, over the agents' streaming window), the worst
event-loop stall and corral's peak RSS, and checks the log files are byte-identical.

    python benchmarks/log_streaming.py [--agents 16] [--lines 100000] [--runs 3] [--producer gen|yes]

``--producer yes``: each agent is ``yes LINE | head -n L`` (the issue's "as fast as yes"), which
writes faster than any reader drains: the ratio is then corral's reading against the bare drain's
64 KiB chunks, nothing of the producer's own speed hides it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import GEN, corral_cmd, fmt, median, remove_scratch, scratch_repo


def producer(kind: str, lines: int, tag: str) -> str:
    """The agent's command line (the shell agent runs it with ``sh -c``)."""
    if kind == "yes":
        return f"yes {tag}-{'x' * 76} | head -n {lines}"
    return f"{sys.executable} {GEN} {lines} {tag}"


def baseline(agents: int, lines: int, outdir: Path, kind: str = "gen") -> float:
    sel = selectors.DefaultSelector()
    start = time.perf_counter()
    procs = []
    for i in range(agents):
        p = subprocess.Popen(["sh", "-c", producer(kind, lines, f"t{i}")], stdout=subprocess.PIPE)
        f = open(outdir / f"t{i}.log", "wb")
        sel.register(p.stdout, selectors.EVENT_READ, f)
        procs.append(p)
    left = agents
    while left:
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if data:
                key.data.write(data)
            else:
                sel.unregister(key.fileobj)
                key.data.close()
                left -= 1
    for p in procs:
        p.wait()
    return time.perf_counter() - start


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corral_run(repo: Path, agents: int, lines: int, plan: Path) -> dict:
    monitor = Path(tempfile.mktemp(prefix="corral-monitor-"))
    env = {**os.environ, "CORRAL_LOOP_MONITOR": str(monitor)}
    start = time.perf_counter()
    subprocess.run([*corral_cmd(), "run", str(plan), "--headless", "--approve", "none"], cwd=repo,
                   stdout=subprocess.DEVNULL, env=env, check=False)
    total = time.perf_counter() - start
    runs = sorted((repo / ".git/corral/runs").iterdir())
    run_dir = runs[-1]
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    running = {e["task"]: e["ts"] for e in events if e["type"] == "task_status" and e["status"] == "running"}
    started = list(running.values())
    ended = [e["ts"] for e in events if e["type"] == "task_finished"]
    stats = json.loads(monitor.read_text())
    monitor.unlink()
    # the streaming window ends with the last byte on disk (the logs' writes); task_finished comes
    # after the agent's work was committed as well
    last = {f"t{i}": (run_dir / "logs" / f"t{i}.log").stat().st_mtime for i in range(agents)}
    # each agent's own: from its start to its last byte on disk (the agents do not start at once)
    own = sorted(last[t] - running[t] for t in last)
    return {"total": total, "window": max(last.values()) - min(started), "to_finished": max(ended) - min(started),
            "own": own[len(own) // 2], "start_spread": max(started) - min(started), "run_dir": run_dir, **stats}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--producer", choices=("gen", "yes"), default="gen")
    a = ap.parse_args()
    repo = scratch_repo()
    plan = repo.parent / f"{repo.name}-plan.toml"
    body = ['agent = "shell"', 'setup = "none"']
    for i in range(a.agents):
        body += ["[[tasks]]", f'name = "t{i}"', f"prompt = {json.dumps(producer(a.producer, a.lines, f't{i}'))}"]
    plan.write_text("\n".join(body) + "\n")
    mb = a.agents * a.lines * 80 / 1e6
    print(f"log streaming: {a.agents} agents x {a.lines} lines (~{mb:.0f} MB) from "
          f"{'yes | head' if a.producer == 'yes' else 'the generator'}, median of {a.runs} runs")

    base_times, outdir = [], Path(tempfile.mkdtemp(prefix="corral-drain-"))
    try:
        for _ in range(a.runs):
            base_times.append(baseline(a.agents, a.lines, outdir, a.producer))
        results = [corral_run(repo, a.agents, a.lines, plan) for _ in range(a.runs)]
        same = all(digest(outdir / f"t{i}.log") == digest(results[-1]["run_dir"] / "logs" / f"t{i}.log")
                   for i in range(a.agents))
    finally:  # the scratch repository, its plan and the drain's files go (they are 100s of MB on tmpfs)
        remove_scratch(repo)
        shutil.rmtree(outdir, ignore_errors=True)
    b = median(base_times)
    w = median([r["window"] for r in results])
    print(f"  baseline (bare drain to files)   {fmt(b)} s   {a.agents * a.lines / b / 1e6:.2f} M lines/s")
    print(f"  corral headless, streaming window {fmt(w)} s   {a.agents * a.lines / w / 1e6:.2f} M lines/s"
          f"   (to the last task_finished, commits included: {fmt(median([r['to_finished'] for r in results]))} s;"
          f" whole run incl. worktrees: {fmt(median([r['total'] for r in results]))} s)")
    print(f"  throughput ratio corral/baseline  {b / w:.2f}   (target >= 0.5)")
    print(f"  the agents started over           {fmt(median([r['start_spread'] for r in results]))} s (from the first"
          f" agent's start to the last's); each agent's own start to last byte: {fmt(median([r['own'] for r in results]))} s (median)")
    print(f"  CPU of corral's own process       {fmt(median([r['cpu_s'] for r in results]))} s (median)")
    print(f"  worst event-loop stall            {max(r['max_stall_s'] for r in results) * 1000:.0f} ms   (target < 150)")
    print(f"  peak RSS of corral                {max(r['max_rss_mb'] for r in results):.0f} MB   (target < 300)")
    print(f"  log files identical to baseline   {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
