"""The run journal: one folder per run under the VCS dir, with ``run.json`` (written atomically),
``events.jsonl``, ``logs/<task>.log`` and ``report.md``; ``plan.json`` (a plan's run) or
``input.json`` (a program's), written once."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from .events import Event, TaskOutput, VerifyOutput


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a crash of corral never leaves the file half-written (readers see the old
    or the new content, never a mix)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class _Writer(threading.Thread):
    """Writes the journal off the event loop: a busy disk (agents streaming logs) must not stall the
    dashboard. ``run.json`` is coalesced (the latest state wins) and replaced atomically;
    ``events.jsonl`` lines are appended in order."""

    def __init__(self, run_json: Path, events: Path) -> None:
        super().__init__(name="corral-journal", daemon=True)
        self.run_json = run_json
        self.events = open(events, "a", encoding="utf-8")
        self.cond = threading.Condition()
        self.pending_state: str | None = None
        self.pending_lines: list[str] = []
        self.closing = False

    def submit(self, state: str | None = None, line: str | None = None) -> None:
        with self.cond:
            if state is not None:
                self.pending_state = state
            if line is not None:
                self.pending_lines.append(line)
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while not (self.pending_state or self.pending_lines or self.closing):
                    self.cond.wait()
                state, self.pending_state = self.pending_state, None
                lines, self.pending_lines = self.pending_lines, []
                closing = self.closing
            if lines:
                self.events.write("".join(lines))
                self.events.flush()
            if state is not None:
                write_atomic(self.run_json, state)
            if closing:
                with self.cond:
                    if not (self.pending_state or self.pending_lines):
                        self.events.close()
                        return
            else:
                time.sleep(0.05)  # coalesce bursts of updates

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.join()


class Journal:
    """The state of one run on disk."""

    def __init__(self, state_dir: Path, run: str) -> None:
        self.run = run
        self.dir = state_dir / "runs" / run
        self.logs = self.dir / "logs"
        self.state: dict[str, Any] = {"run": run, "state": "starting", "started": time.time(), "tasks": {}}
        self._writer: _Writer | None = None

    def create(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.dir / "run.json", self._dump())
        self._writer = _Writer(self.dir / "run.json", self.dir / "events.jsonl")
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
        self.state.update(fields)
        self.save()

    def update_task(self, name: str, **fields: Any) -> None:
        self.task(name).update(fields)
        self.save()

    def _dump(self) -> str:
        return json.dumps(self.state, indent=2, default=str)

    def save(self) -> None:
        if self._writer is not None:
            self._writer.submit(state=self._dump())

    def close(self) -> None:
        """Flush everything to disk (synchronously) and stop the writer."""
        if self._writer is not None:
            self._writer.submit(state=self._dump())
            self._writer.close()
            self._writer = None


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
