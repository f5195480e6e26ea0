"""The run journal: one folder per run under the VCS dir, with ``run.json`` (written atomically),
``events.jsonl``, ``logs/<task>.log`` and ``report.md``."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .events import Event, TaskOutput, VerifyOutput


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a crash never leaves the file half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Journal:
    """The state of one run on disk."""

    def __init__(self, state_dir: Path, run: str) -> None:
        self.run = run
        self.dir = state_dir / "runs" / run
        self.logs = self.dir / "logs"
        self.state: dict[str, Any] = {"run": run, "state": "starting", "started": time.time(), "tasks": {}}
        self._events = None

    def create(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")
        self.save()

    def log_path(self, task: str) -> Path:
        return self.logs / f"{task}.log"

    def on_event(self, event: Event) -> None:
        """Event-bus subscriber: every event but output lines (those are in ``logs/``)."""
        if self._events is None or isinstance(event, (TaskOutput, VerifyOutput)):
            return
        self._events.write(json.dumps(event.to_dict(), default=str) + "\n")
        self._events.flush()

    def task(self, name: str) -> dict[str, Any]:
        return self.state["tasks"].setdefault(name, {"status": "pending"})

    def update(self, **fields: Any) -> None:
        self.state.update(fields)
        self.save()

    def update_task(self, name: str, **fields: Any) -> None:
        self.task(name).update(fields)
        self.save()

    def save(self) -> None:
        if self.dir.is_dir():
            write_atomic(self.dir / "run.json", json.dumps(self.state, indent=2, default=str))

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None


def list_runs(state_dir: Path) -> list[dict[str, Any]]:
    """Every run recorded under ``state_dir``, newest first; unreadable ones are listed as such."""
    runs_dir = state_dir / "runs"
    out = []
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
