"""Finding and removing what interrupted runs left behind, keeping every branch that holds work."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field

from .journal import list_runs, write_atomic
from .vcs.base import Backend, Leftover, Workspace


@dataclass
class CleanReport:
    removed: list[Leftover] = field(default_factory=list)
    kept_branches: list[str] = field(default_factory=list)
    skipped_live: list[Leftover] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    runs_marked: list[str] = field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _belongs_to_run(pid: int, run: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"CORRAL_RUN={run}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def stale_runs(backend: Backend) -> list[dict]:
    """Runs whose journal says running but whose corral process is gone."""
    out = []
    for data in list_runs(backend.state_dir):
        if data.get("state") in ("running", "starting") and not _pid_alive(int(data.get("pid") or 0) or -1):
            out.append(data)
    return out


async def clean(backend: Backend, dry_run: bool = False) -> CleanReport:
    rep = CleanReport()
    # 1. agents of dead runs that are still alive (corral was SIGKILLed): stop their process groups
    for data in stale_runs(backend):
        run = data["run"]
        for task in data.get("tasks", {}).values():
            pid = task.get("pgid") or task.get("pid")
            if pid and _pid_alive(pid) and _belongs_to_run(pid, run):
                rep.killed.append(pid)
                if not dry_run:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
        rep.runs_marked.append(run)
        if not dry_run:
            data = dict(data)
            data.pop("dir", None)
            data["state"] = "interrupted"
            path = backend.state_dir / "runs" / run / "run.json"
            if path.parent.is_dir():
                write_atomic(path, json.dumps(data, indent=2, default=str))
    # 2. workspaces left behind: salvage uncommitted work onto their branches, remove them
    for lo in await backend.list_leftovers():
        if lo.alive:
            rep.skipped_live.append(lo)
            continue
        rep.removed.append(lo)
        ws = Workspace(task=lo.task, path=lo.path, ref=lo.ref, name=lo.name)
        holds_work = await backend.holds_unmerged_work(lo.ref) if lo.ref else False
        if not dry_run:
            await backend.remove_workspace(ws, keep_ref=True)
            holds_work = await backend.holds_unmerged_work(lo.ref) if lo.ref else False
            if lo.ref and not holds_work:
                await backend.delete_ref(lo.ref)
        if lo.ref and holds_work:
            rep.kept_branches.append(lo.ref)
    return rep


__all__ = ["clean", "CleanReport", "stale_runs"]
