"""The run journal: one folder per run under the VCS dir, with ``run.json`` (written atomically),
``events.jsonl``, ``logs/<task>.log`` and ``report.md``; ``plan.json`` (a plan's run) or
``input.json`` (a program's), written once."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from .events import Event, TaskOutput, VerifyOutput


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()  # (secrets' source, without its imports)


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a crash of corral never leaves the file half-written (readers see the old
    or the new content, never a mix)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


#: how often, at most, the writer replaces ``run.json`` while task updates keep coming
SNAPSHOT_INTERVAL = 0.15
#: ... and no more often than this many times the time its last one took: a run of hundreds of tasks
#: (some 6 ms a snapshot at 200) spends at most a fortieth of a core on it, whatever its size
SNAPSHOT_DUTY = 40


class _Writer(threading.Thread):
    """Writes the journal off the event loop: a busy disk (agents streaming logs) must not stall the
    dashboard, and serialising the state of 200 tasks at each of their updates would. ``events.jsonl``
    lines are appended in order; ``run.json`` is written from here at most every
    :data:`SNAPSHOT_INTERVAL` (the latest state wins, see :meth:`Journal.write_snapshot`)."""

    def __init__(self, journal: "Journal", events: Path) -> None:
        super().__init__(name="corral-journal", daemon=True)
        self.journal = journal
        self.events = open(events, "a", encoding="utf-8")
        self.cond = threading.Condition()
        self.dirty = False
        self.pending_lines: list[str] = []
        self.closing = False
        #: the writer waits for work (not in its pause between two writes): only then is it woken
        self.idle = False

    def submit(self, dirty: bool = False, line: str | None = None) -> None:
        with self.cond:
            self.dirty = self.dirty or dirty
            if line is not None:
                self.pending_lines.append(line)
            if self.idle:  # (in its pause, a wake-up per update would only send it back to sleep)
                self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                self.idle = True
                while not (self.dirty or self.pending_lines or self.closing):
                    self.cond.wait()
                self.idle = False
                dirty, self.dirty = self.dirty, False
                lines, self.pending_lines = self.pending_lines, []
                closing = self.closing
            if lines:
                self.events.write("".join(lines))
                self.events.flush()
            took = 0.0
            if dirty:
                start = time.perf_counter()
                self.journal.write_snapshot()
                took = time.perf_counter() - start
            if closing:
                with self.cond:
                    if not (self.dirty or self.pending_lines):
                        self.events.close()
                        return
            else:  # coalesce bursts of updates (the end of the run does not wait for this)
                with self.cond:
                    self.cond.wait_for(lambda: self.closing, max(SNAPSHOT_INTERVAL, SNAPSHOT_DUTY * took))

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.join()


class Journal:
    """The state of one run on disk. A task's update costs the same whatever the number of tasks:
    it changes the state in memory, and the writer thread serialises and writes ``run.json`` (compact
    JSON, replaced atomically) at most every :data:`SNAPSHOT_INTERVAL`. A change of the run's own
    fields (its pid, phase, landing, end, kept branches) is written at once, before ``update``
    returns: ``corral clean``, ``corral runs`` and the home screen must find it there even if corral
    is killed the next instant."""

    def __init__(self, state_dir: Path, run: str) -> None:
        self.run = run
        self.dir = state_dir / "runs" / run
        self.logs = self.dir / "logs"
        self.state: dict[str, Any] = {"run": run, "state": "starting", "started": time.time(), "tasks": {}}
        self._writer: _Writer | None = None
        #: held while the state changes or is serialised (the writer thread serialises it)
        self._state_lock = threading.Lock()
        #: held while run.json is replaced; with the sequence numbers, an older snapshot never
        #: replaces a newer one
        self._write_lock = threading.Lock()
        self._dumped = 0
        self._written = 0

    def create(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.write_snapshot()
        self._writer = _Writer(self, self.dir / "events.jsonl")
        self._writer.start()

    def log_path(self, task: str) -> Path:
        return self.logs / f"{task}.log"

    def on_event(self, event: Event) -> None:
        """Event-bus subscriber: every event but output lines (those are in ``logs/``)."""
        if self._writer is None or isinstance(event, (TaskOutput, VerifyOutput)):
            return
        self._writer.submit(line=json.dumps(event.to_dict(), default=str) + "\n")

    def task(self, name: str) -> dict[str, Any]:
        tasks: dict[str, dict[str, Any]] = self.state["tasks"]
        return tasks.setdefault(name, {"status": "pending"})

    def attach(self, key: str, value: Any) -> None:
        """Write ``value`` once, to ``<key>.json`` in the run folder, and keep only that file's name
        under ``key`` in ``run.json``: ``run.json`` is rewritten on every change, and a plan's prompts
        or a program's input would be copied with it every time."""
        write_atomic(self.dir / f"{key}.json", json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n")
        self.update(**{key: f"{key}.json"})

    def update(self, **fields: Any) -> None:
        """Change the run's own fields, and write ``run.json`` now."""
        with self._state_lock:
            self.state.update(fields)
        self.write_snapshot()

    def update_task(self, name: str, **fields: Any) -> None:
        """Change a task's fields; ``run.json`` follows within :data:`SNAPSHOT_INTERVAL`."""
        with self._state_lock:
            self.task(name).update(fields)
        if self._writer is not None:
            self._writer.submit(dirty=True)

    def write_snapshot(self) -> None:
        """Replace ``run.json`` with the current state (from any thread). A run whose journal cannot
        be written (its folder deleted under it, a full disk) goes on without it, as it did when only
        the writer thread wrote: that is no reason to stop its agents or skip its cleanup."""
        with self._state_lock:
            text = json.dumps(self.state, default=str, separators=(",", ":"))
            self._dumped += 1
            seq = self._dumped
        with self._write_lock:
            if seq > self._written:
                try:
                    write_atomic(self.dir / "run.json", text)
                except OSError:
                    return
                self._written = seq

    def close(self) -> None:
        """Flush everything to disk (synchronously) and stop the writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.write_snapshot()


#: A run's states while its process has not ended it (a run in them whose process is gone was killed)
ACTIVE_STATES = ("running", "starting")


def list_runs(state_dir: Path) -> list[dict[str, Any]]:
    """Every run recorded under ``state_dir``, newest first; unreadable ones are listed as such."""
    runs_dir = state_dir / "runs"
    out: list[dict[str, Any]] = []
    if not runs_dir.is_dir():
        return out
    for d in sorted(runs_dir.iterdir(), reverse=True):
        if not d.is_dir():
            continue
        try:
            data = json.loads((d / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {"run": d.name, "state": "unreadable", "tasks": {}}
        data.setdefault("run", d.name)
        data["dir"] = str(d)
        out.append(data)
    return out
