"""The workspace registry: what corral made, so that it acts only on what it made.

Every workspace (git worktree or jj workspace) is registered here *before* it exists on disk, one
small JSON file per workspace under ``<state dir>/workspaces/``, written synchronously (a crash at
any later instant leaves a record that says what was being made). A record says which run and task
the workspace belongs to, its role (a task's workspace or an integration workspace), its path, its
branch or bookmark, the commit it started from, and its state:

- ``creating``: registered, maybe not complete on disk. It holds no work (no agent starts before it
  is ready), so a clean-up drops it: its directory, its VCS registration and its untouched branch.
- ``ready``: complete; an agent may have worked in it. A clean-up commits what is in it onto its
  branch before removing it.

The record is deleted once the workspace is gone (directory and VCS metadata). ``corral clean`` and
the home screen act on these records only, cross-checked with what the VCS says (the worktree lock
reason names the record's key), never on a workspace found by its branch name or path alone: the
user's own checkout or a worktree the user made on a ``corral/*`` branch is never touched.

Directories are made here too: a fresh name per attempt from :func:`candidate_name` (unpredictable),
created with ``mkdir(0700)``, which fails rather than follow anything planted at that path.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CREATING, READY = "creating", "ready"


def candidate_name(prefix: str) -> str:
    """A directory name for a new workspace: ``prefix`` and 12 random hex digits."""
    return f"{prefix}{os.urandom(6).hex()}"  # (secrets' source, without its imports)


@dataclass
class Record:
    """One workspace corral registered."""

    key: str
    run: str
    task: str
    role: str  # "task" | "integration"
    path: str
    ref: str
    vcs: str
    base_commit: str = ""
    state: str = CREATING
    pid: int = 0
    created: float = 0.0
    #: git: the worktree's administrative directory (``<common dir>/worktrees/<id>``); jj: ""
    admin: str = ""
    #: jj: the workspace name
    name: str = ""
    #: the agents' own state files, never committed from it (see Workspace.exclude)
    exclude: list[str] = field(default_factory=list)


class Registry:
    """The records of one repository's workspaces."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "workspaces"

    def _file(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def reserve(self, root: str | Path | None, *, run: str, task: str, role: str, ref: str, vcs: str,
                base_commit: str, name: str = "") -> tuple[Path, Record]:
        """Register a new workspace and make its (empty, private) directory under ``root`` (default:
        the system temp dir). The record exists before the directory does."""
        import tempfile

        parent = Path(root) if root else Path(tempfile.gettempdir())
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for _ in range(100):
            dirname = candidate_name(f"corral-{task}-")
            rec = Record(key=dirname, run=run, task=task, role=role, path=str(parent / dirname), ref=ref, vcs=vcs,
                         base_commit=base_commit, pid=os.getpid(), created=time.time(), name=name)
            try:
                fd = os.open(self._file(rec.key), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(asdict(rec)))
            try:
                os.mkdir(rec.path, 0o700)
            except FileExistsError:  # something is there already (planted or a collision): another name
                self._file(rec.key).unlink()
                continue
            except BaseException:
                self._file(rec.key).unlink()
                raise
            os.chmod(rec.path, 0o700)  # whatever the umask
            return Path(rec.path), rec
        raise OSError(f"no free workspace name under {parent}")

    def update(self, rec: Record, **fields: Any) -> None:
        for k, v in fields.items():
            setattr(rec, k, v)
        from ..journal import write_atomic

        write_atomic(self._file(rec.key), json.dumps(asdict(rec)))

    def heads_log(self, key: str) -> Path:
        """Where the guard writes down every commit an agent's git moved its HEAD or branch to
        (read with the worktree's reflogs; kept here, outside the worktree)."""
        return self.dir / f"{key}.heads"

    def note(self, key: str, **fields: Any) -> None:
        """Record more about the workspace ``key`` (nothing when it has no record)."""
        rec = self.get(key) if key else None
        if rec is not None:
            self.update(rec, **fields)

    def drop(self, rec: Record | str) -> None:
        key = rec if isinstance(rec, str) else rec.key
        for path in (self._file(key), self.heads_log(key)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def get(self, key: str) -> Record | None:
        try:
            data = json.loads(self._file(key).read_text(encoding="utf-8"))
            return Record(**data)
        except (OSError, ValueError, TypeError):
            return None

    def records(self) -> list[Record]:
        """Every record, oldest first; unreadable files are skipped."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.glob("*.json"):
            rec = self.get(p.stem)
            if rec is not None:
                out.append(rec)
        return sorted(out, key=lambda r: r.created)


def lock_reason(rec: Record) -> str:
    """The git worktree lock reason of a registered worktree: it names the record."""
    return f"corral run={rec.run} pid={rec.pid} ws={rec.key}"


def reason_key(reason: str) -> str:
    """The record key a lock reason names ("" when none)."""
    for word in reason.split():
        if word.startswith("ws="):
            return word[3:]
    return ""


__all__ = ["Registry", "Record", "CREATING", "READY", "candidate_name", "lock_reason", "reason_key"]
