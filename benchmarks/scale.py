"""Many small tasks: N trivial tasks (shell agents writing one file each) at ``max_parallel`` P on a
repository of F files, against a bare script doing the same work with git.

The bare script: ``xargs -P P`` of (worktree add / write / commit / worktree remove; the adds and
removes under ``flock``: git's worktree metadata does not take concurrent changes), then the merges
one at a time in one integration worktree and a fast-forward of main. corral: ``corral run PLAN
--headless --approve all`` of the same tasks (merge, land). Prints the wall-time ratio (bare / corral),
the CPU of each side (every process of it, per task), the most checkouts on disk at any moment
(sampled every 10 ms in the worktree root), corral's worst event-loop stall (its loop monitor,
``CORRAL_LOOP_MONITOR``), and the time from spawning ``corral run`` to the first output line of a
one-task run.

    TMPDIR=/dev/shm python benchmarks/scale.py [--tasks 200] [--parallel 8] [--files 200]
    TMPDIR=/dev/shm python benchmarks/scale.py --only first-output [--runs 5] [--files 200]

``--only first-output`` measures the one-task run alone, ``--runs`` times (medians and each run's
figures), with the steps before its line: ``run_started`` (imports, preflight, the journal), the
workspace made, the agent started. Each run starts once a warm standby waits (``--pace ready``, a
person's pace; the first run of the script may find none and start one), or right after the run
before (``--pace back-to-back``: the standby that run started may still be warming up);
``CORRAL_STANDBY=0`` measures the start without one.

One run of each side (this is a slow measurement on a shared machine); the repository and the
workspaces go to the temp dir (``TMPDIR=/dev/shm`` keeps the disk out of it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _common import corral_cmd, fmt, median, scratch_repo

ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
       "GIT_COMMITTER_EMAIL": "b@b"}

BARE = r"""
set -e
root=$1; n=$2; p=$3
seq 0 $((n - 1)) | xargs -P "$p" -I{} sh -c '
  flock "$0/../lock" git worktree add -q -b b/t{} "$0/w{}" main &&
  echo "task {}" > "$0/w{}/out-t{}.txt" &&
  git -C "$0/w{}" add -A && git -C "$0/w{}" commit -q -m "t{}" &&
  flock "$0/../lock" git worktree remove --force "$0/w{}"' "$root"
git worktree add -q -b b/integration "$root/integration" main
for i in $(seq 0 $((n - 1))); do git -C "$root/integration" merge -q --no-edit "b/t$i"; done
git worktree remove --force "$root/integration"
git merge -q --ff-only b/integration
"""


class CheckoutCounter(threading.Thread):
    """The most entries seen at once in ``root`` (one per checkout), sampled every 10 ms."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.most, self.stop = root, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            try:
                self.most = max(self.most, len(os.listdir(self.root)))
            except OSError:
                pass


def measured(args: list[str], cwd: Path, root: Path, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s of every process it ran, most checkouts at once) of running ``args``."""
    counter = CheckoutCounter(root)
    counter.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run(args, cwd=cwd, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    counter.stop.set()
    counter.join()
    if res.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({res.returncode}): {res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, counter.most


def write_plan(path: Path, tasks: int, parallel: int, root: Path) -> Path:
    body = ['agent = "shell"', 'setup = "none"', 'approve = "all"', f"max_parallel = {parallel}",
            f"worktree_root = {json.dumps(str(root))}"]
    for i in range(tasks):
        body += ["[[tasks]]", f'name = "t{i}"', f'prompt = "echo task {i} > out-t{i}.txt"']
    path.write_text("\n".join(body) + "\n")
    return path


def events(repo: Path) -> list[dict]:
    """The events of the newest run in ``repo``."""
    # (by time: ids made in the same second sort by their random part)
    run = max((repo / ".git" / "corral" / "runs").iterdir(), key=lambda d: (d / "events.jsonl").stat().st_mtime)
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def phases(evs: list[dict]) -> str:
    """How long each phase of the run lasted, from its events' times."""
    marks = [(e["phase"], e["ts"]) for e in evs if e["type"] == "phase"] + [("end", evs[-1]["ts"])]
    return ", ".join(f"{name} {b - a:.2f} s" for (name, a), (_, b) in zip(marks, marks[1:]))


def first_output(repo: Path, root: Path) -> dict[str, float]:
    """Seconds from spawning ``corral run`` (one task printing a line) to that line on its stdout
    (``first``), and to the steps before it, from the run's events: ``run_started`` (imports,
    preflight, the journal), the workspace made (``workspace``: the task's ``setup`` status) and the
    agent started (``agent``: its ``running`` status)."""
    plan = repo.parent / f"{repo.name}-one.toml"
    plan.write_text(f'agent = "shell"\nsetup = "none"\napprove = "none"\nworktree_root = {json.dumps(str(root))}\n'
                    '[[tasks]]\nname = "one"\nprompt = "echo first-line"\n')
    start, wall = time.perf_counter(), time.time()
    proc = subprocess.Popen([*corral_cmd(), "run", str(plan), "--headless", "--approve", "none"], cwd=repo,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    took = float("nan")
    assert proc.stdout is not None
    for line in proc.stdout:
        if "first-line" in line and took != took:
            took = time.perf_counter() - start
    proc.wait()
    evs = events(repo)

    def status(name: str) -> float:
        return next(e["ts"] for e in evs if e["type"] == "task_status" and e["status"] == name) - wall

    return {"run_started": next(e["ts"] for e in evs if e["type"] == "run_started") - wall,
            "workspace": status("setup"), "agent": status("running"), "first": took}


STEPS = ("run_started", "workspace", "agent", "first")


def standby_ready(timeout: float = 10.0) -> bool:
    """Wait until a standby of this user is warm (see corral's core/server/standby.py): one that
    waits for a command accepts a connection, and closes one that sends no valid request, only
    once its imports and warm-up are done. False when none answered (standbys off, or none left)."""
    import socket

    from corral.core.server import standby

    if not standby.enabled():
        return False
    directory = standby.private_dir(create=False)
    deadline = time.monotonic() + timeout
    while directory and time.monotonic() < deadline:
        for sock_path in Path(directory).glob("*.sock"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(sock_path))
                    s.sendall(b"0\n")  # (no request: the standby drops it once it looks)
                    s.settimeout(max(0.01, deadline - time.monotonic()))
                    if s.recv(1) == b"":
                        return True
                except OSError:
                    continue
        time.sleep(0.02)
    return False


def first_output_only(files: int, runs: int, pace: str) -> None:
    """The one-task run alone, ``runs`` times on one ``files``-file repository; with ``pace`` ready,
    each run starts once a standby is warm (a person's pace: the last run's successor is ready),
    back-to-back: each right after the one before (the standby started by the run before may
    still be warming up, on the same two cores)."""
    print(f"one task on a {files}-file repository, {runs} runs (temp dir {tempfile.gettempdir()}), "
          f"{'each once a standby is warm' if pace == 'ready' else 'back to back'}")
    repo = scratch_repo(files)
    root = Path(tempfile.mkdtemp(prefix="corral-bench-scale-"))
    try:
        got = []
        for _ in range(runs):
            if pace == "ready":
                standby_ready()
            got.append(first_output(repo, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for p in repo.parent.glob(f"{repo.name}-*.toml"):
            p.unlink()
        shutil.rmtree(repo, ignore_errors=True)
    print("  each run (ms after spawning `corral run`: " + " / ".join(STEPS) + "): "
          + ", ".join("/".join(f"{g[k] * 1000:.0f}" for k in STEPS) for g in got))
    med = {k: median([g[k] for g in got]) for k in STEPS}
    print(f"  median: first output line {med['first'] * 1000:.0f} ms after spawning `corral run`, "
          f"run_started after {med['run_started'] * 1000:.0f} ms")
    print(f"  median steps: to run_started {med['run_started'] * 1000:.0f} ms (imports, preflight, journal), "
          f"workspace made {(med['workspace'] - med['run_started']) * 1000:.0f} ms later, agent started "
          f"{(med['agent'] - med['workspace']) * 1000:.0f} ms later, its first line "
          f"{(med['first'] - med['agent']) * 1000:.0f} ms later")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--only", choices=("first-output",), default=None, help="measure only this part")
    ap.add_argument("--runs", type=int, default=5, help="with --only first-output: how many one-task runs")
    ap.add_argument("--pace", choices=("ready", "back-to-back"), default="ready",
                    help="with --only first-output: start each run once a standby is warm, or right away")
    a = ap.parse_args()
    if a.only == "first-output":
        first_output_only(a.files, a.runs, a.pace)
        return
    print(f"{a.tasks} trivial tasks at max_parallel {a.parallel} on a {a.files}-file repository "
          f"(temp dir {tempfile.gettempdir()})")

    repo = scratch_repo(a.files)
    root = Path(tempfile.mkdtemp(prefix="corral-bench-scale-"))
    try:
        (root / "bare").mkdir()
        bare = measured(["sh", "-c", BARE, "sh", str(root / "bare"), str(a.tasks), str(a.parallel)], repo,
                        root / "bare")
        shutil.rmtree(repo)
        repo = scratch_repo(a.files)
        (root / "corral").mkdir()
        plan = write_plan(repo.parent / f"{repo.name}-scale.toml", a.tasks, a.parallel, root / "corral")
        monitor = root / "loop.json"
        ours = measured([*corral_cmd(), "run", str(plan), "--headless", "--approve", "all"], repo, root / "corral",
                        {**ENV, "CORRAL_LOOP_MONITOR": str(monitor)})
        loop = json.loads(monitor.read_text())
        run_phases = phases(events(repo))
        landed = len(subprocess.run(["git", "ls-files", "out-t*.txt"], cwd=repo, capture_output=True,
                                    text=True).stdout.split())
        (root / "one").mkdir()
        first = first_output(repo, root / "one")
        plan.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for p in repo.parent.glob(f"{repo.name}-*.toml"):
            p.unlink()
        shutil.rmtree(repo, ignore_errors=True)

    print(f"  bare script (xargs -P{a.parallel}, merges, fast-forward)  {fmt(bare[0])} s   "
          f"CPU {fmt(bare[1])} s ({bare[1] / a.tasks * 1000:.1f} ms/task)   checkouts at once: {bare[2]}")
    print(f"  corral run --headless --approve all            {fmt(ours[0])} s   "
          f"CPU {fmt(ours[1])} s ({ours[1] / a.tasks * 1000:.1f} ms/task)   checkouts at once: {ours[2]}")
    print(f"  ratio (bare / corral) {bare[0] / ours[0]:.2f}   CPU per task {ours[1] / bare[1]:.2f}x the bare script's   "
          f"files landed {landed}/{a.tasks}")
    print(f"  corral: worst event-loop stall {loop['max_stall_s'] * 1000:.0f} ms; its own CPU {loop['cpu_s']} s; "
          f"peak RSS {loop['max_rss_mb']} MB")
    print(f"  corral's phases: {run_phases}")
    print(f"  one task: first output line {first['first'] * 1000:.0f} ms after spawning `corral run` "
          f"(run_started after {first['run_started'] * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
