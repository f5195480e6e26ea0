"""Log streaming: N agents each printing L lines of ~80 characters as fast as they can.

Baseline: a bare Python program draining the same N pipes to N files (selectors, 64 KiB reads).
corral: a headless run of N shell agents running the same generator. Prints the median of R runs
of each, the throughput ratio (corral / baseline, over the agents' window), the worst event-loop
stall and corral's peak RSS, and checks the log files are byte-identical.

    python benchmarks/log_streaming.py [--agents 16] [--lines 100000] [--runs 3] [--producer gen|yes]

Both sides are timed alike, on the same clock (the wall clock; the last byte is a file's mtime):

- the window: from the first producer's start (the baseline: before it spawns its first; corral:
  the first agent's ``running`` status, set before its command is spawned) to the last byte on
  disk. The ratio is over this window;
- its streaming part: from the first byte on disk (of any producer) to the last. corral's first
  bytes are seen with inotify, on its log files, from outside its process;
- each producer's start: from its own start (its spawn; an agent's ``running`` status) to its
  first byte on disk, median and slowest.

``--producer yes``: each agent is ``yes LINE | head -n L``, which writes faster than any reader
drains: the ratio is then corral's reading against the bare drain's 64 KiB chunks, nothing of the
producer's own speed hides it.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import select
import selectors
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import GEN, corral_cmd, fmt, median, remove_scratch, scratch_repo


def producer(kind: str, lines: int, tag: str) -> str:
    """The agent's command line (the shell agent runs it with ``sh -c``)."""
    if kind == "yes":
        return f"yes {tag}-{'x' * 76} | head -n {lines}"
    return f"{sys.executable} {GEN} {lines} {tag}"


def baseline(agents: int, lines: int, outdir: Path, kind: str = "gen") -> dict:
    sel = selectors.DefaultSelector()
    procs, started, first = [], [], [0.0] * agents
    start = time.time()
    for i in range(agents):
        started.append(time.time())
        p = subprocess.Popen(["sh", "-c", producer(kind, lines, f"t{i}")], stdout=subprocess.PIPE)
        f = open(outdir / f"t{i}.log", "wb")
        sel.register(p.stdout, selectors.EVENT_READ, (i, f))
        procs.append(p)
    left = agents
    while left:
        for key, _ in sel.select():
            i, f = key.data
            data = os.read(key.fd, 65536)
            if data:
                f.write(data)
                first[i] = first[i] or time.time()
            else:
                sel.unregister(key.fileobj)
                f.close()
                left -= 1
    for p in procs:
        p.wait()
    last = max((outdir / f"t{i}.log").stat().st_mtime for i in range(agents))
    return windows(start, min(first), last, [f - s for f, s in zip(first, started)])


def windows(start: float, first: float, last: float, own_starts: list[float]) -> dict:
    """The window (start to last byte), its streaming part (first byte to last) and the producers'
    own starts (each one's start to its first byte: median, slowest)."""
    own = sorted(own_starts)
    return {"window": last - start, "streaming": last - first, "own_start": own[len(own) // 2], "worst_start": own[-1]}


class FirstBytes(threading.Thread):
    """When each of a run's log files (``logs/<name>.log`` in the first run directory made under
    ``runs`` after this starts) first held bytes: inotify watches, from outside corral's process,
    followed down from the nearest directory that exists. ``first`` maps name to wall-clock time."""

    IN_MODIFY, IN_CREATE, IN_ISDIR = 0x2, 0x100, 0x40000000

    def __init__(self, runs: Path, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.runs, self.names, self.first = runs, set(names), {}
        self.before = set(runs.iterdir()) if runs.is_dir() else set()
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_CLOEXEC)
        self.stop_r, self.stop_w = os.pipe()
        self.dirs: dict[int, Path] = {}
        self.logs: Path | None = None
        top = runs
        while not top.is_dir():
            top = top.parent
        self.watch(top)

    def wanted(self, path: Path) -> bool:
        """Whether ``path`` is on the way down to the run's logs (or is them)."""
        if path in self.runs.parents or path == self.runs:
            return True
        if path.parent == self.runs:
            return path not in self.before and self.logs is None
        return path.name == "logs" and path.parent.parent == self.runs and self.logs is None

    def watch(self, path: Path) -> None:
        logs = path.name == "logs" and path.parent.parent == self.runs
        wd = self.libc.inotify_add_watch(self.fd, bytes(path), self.IN_CREATE | (self.IN_MODIFY if logs else 0))
        if wd < 0:
            return
        self.dirs[wd] = path
        if logs:
            self.logs = path
            for name in self.names:  # (bytes written before the watch was added)
                if (path / f"{name}.log").exists() and (path / f"{name}.log").stat().st_size:
                    self.first.setdefault(name, time.time())
            return
        for child in path.iterdir() if path.is_dir() else ():  # (made before the watch was added)
            if child.is_dir() and self.wanted(child):
                self.watch(child)

    def run(self) -> None:
        while len(self.first) < len(self.names):
            ready, _, _ = select.select([self.fd, self.stop_r], [], [])
            if self.stop_r in ready:
                break
            data, at = os.read(self.fd, 65536), time.time()
            while data:
                wd, mask, _cookie, size = struct.unpack_from("iIII", data)
                name = data[16:16 + size].rstrip(b"\0").decode()
                data = data[16 + size:]
                where = self.dirs.get(wd)
                if where is None:
                    continue
                if mask & self.IN_CREATE and mask & self.IN_ISDIR and self.wanted(where / name):
                    self.watch(where / name)
                elif mask & self.IN_MODIFY and where == self.logs and name.endswith(".log"):
                    if name[:-4] in self.names:
                        self.first.setdefault(name[:-4], at)

    def close(self) -> dict[str, float]:
        os.write(self.stop_w, b".")
        self.join()
        for fd in (self.fd, self.stop_r, self.stop_w):
            os.close(fd)
        return self.first


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corral_run(repo: Path, agents: int, lines: int, plan: Path) -> dict:
    monitor = Path(tempfile.mktemp(prefix="corral-monitor-"))
    env = {**os.environ, "CORRAL_LOOP_MONITOR": str(monitor)}
    names = [f"t{i}" for i in range(agents)]
    watcher = FirstBytes(repo / ".git/corral/runs", names)
    watcher.start()
    start = time.perf_counter()
    subprocess.run([*corral_cmd(), "run", str(plan), "--headless", "--approve", "none"], cwd=repo,
                   stdout=subprocess.DEVNULL, env=env, check=False)
    total = time.perf_counter() - start
    first = watcher.close()
    # (not the last by name: ids made in the same second sort by their random part)
    run_dir = watcher.logs.parent if watcher.logs else max(
        (repo / ".git/corral/runs").iterdir(), key=lambda d: (d / "events.jsonl").stat().st_mtime)
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    running = {e["task"]: e["ts"] for e in events if e["type"] == "task_status" and e["status"] == "running"}
    started = list(running.values())
    ended = [e["ts"] for e in events if e["type"] == "task_finished"]
    stats = json.loads(monitor.read_text())
    monitor.unlink()
    # the window ends with the last byte on disk (the logs' writes); task_finished comes after the
    # agent's work was committed as well
    last = {t: (run_dir / "logs" / f"{t}.log").stat().st_mtime for t in names}
    if len(first) < agents:  # (not seen: counted as late as can be, the agent's last byte)
        print(f"  (the first byte of {agents - len(first)} log(s) was not seen)", file=sys.stderr)
    first = {t: first.get(t, last[t]) for t in names}
    # each agent's own: from its start to its last byte on disk (the agents do not start at once)
    own = sorted(last[t] - running[t] for t in last)
    return {**windows(min(started), min(first.values()), max(last.values()), [first[t] - running[t] for t in names]),
            "total": total, "to_finished": max(ended) - min(started),
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

    bases, outdir = [], Path(tempfile.mkdtemp(prefix="corral-drain-"))
    try:
        for _ in range(a.runs):
            bases.append(baseline(a.agents, a.lines, outdir, a.producer))
        results = [corral_run(repo, a.agents, a.lines, plan) for _ in range(a.runs)]
        same = all(digest(outdir / f"t{i}.log") == digest(results[-1]["run_dir"] / "logs" / f"t{i}.log")
                   for i in range(a.agents))
    finally:  # the scratch repository, its plan and the drain's files go (they are 100s of MB on tmpfs)
        remove_scratch(repo)
        shutil.rmtree(outdir, ignore_errors=True)
    def med(rows: list[dict], key: str) -> float:
        return median([r[key] for r in rows])

    n = a.agents * a.lines / 1e6
    b, w = med(bases, "window"), med(results, "window")
    bs, ws = med(bases, "streaming"), med(results, "streaming")
    print(f"  baseline (bare drain to files)    window {fmt(b)} s   {n / b:.2f} M lines/s;"
          f" streaming {fmt(bs)} s;  each drain's start to first byte {fmt(med(bases, 'own_start'))} s"
          f" (median), {fmt(med(bases, 'worst_start'))} s (slowest)")
    print(f"  corral headless                   window {fmt(w)} s   {n / w:.2f} M lines/s;"
          f" streaming {fmt(ws)} s;  each agent's start to first byte {fmt(med(results, 'own_start'))} s"
          f" (median), {fmt(med(results, 'worst_start'))} s (slowest)")
    print(f"  throughput ratio corral/baseline  {b / w:.2f}   (target >= 0.5; the streaming parts alone: {bs / ws:.2f})")
    print(f"  corral: to the last task_finished, commits included {fmt(med(results, 'to_finished'))} s;"
          f" whole run incl. worktrees {fmt(med(results, 'total'))} s")
    print(f"  the agents started over           {fmt(med(results, 'start_spread'))} s (from the first"
          f" agent's start to the last's); each agent's own start to last byte: {fmt(med(results, 'own'))} s (median)")
    print(f"  CPU of corral's own process       {fmt(med(results, 'cpu_s'))} s (median)")
    print(f"  worst event-loop stall            {max(r['max_stall_s'] for r in results) * 1000:.0f} ms   (target < 150)")
    print(f"  peak RSS of corral                {max(r['max_rss_mb'] for r in results):.0f} MB   (target < 300)")
    print(f"  log files identical to baseline   {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
