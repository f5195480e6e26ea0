"""The interface every VCS backend (git, jj) implements, and the value types it returns."""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import anyio
import anyio.to_thread


class CommandResult:
    """What a VCS command gave back: exit code, stdout, stderr."""

    __slots__ = ("code", "out", "err")

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def ok(self) -> bool:
        return self.code == 0

    def lines(self) -> list[str]:
        return [line for line in self.out.splitlines() if line.strip()]


class VcsError(RuntimeError):
    """A VCS operation failed; the message is fit for the user."""


class UsageError(VcsError):
    """The repository or a revision given by the user is not usable (exit 2, nothing created)."""


def cause_line(lines: list[str], code: int, width: int = 200) -> str:
    """One line saying why a command failed, from the lines of its output that are not advice or
    progress: the first (what went wrong first, often the cause itself, such as a filter program that
    is not installed) and, when it differs, the last (the command's own verdict, which alone can be
    as vague as "the remote end hung up unexpectedly"). Each part is cut at ``width`` characters."""
    if not lines:
        return f"exit code {code}"
    first, last = (line if len(line) <= width else line[: width - 1] + "…" for line in (lines[0], lines[-1]))
    return first if first == last else f"{first}; {last}"


@dataclass
class Workspace:
    """An isolated checkout one task works in."""

    task: str
    path: Path
    ref: str  # git: branch name (corral/<run>/<task>); jj: bookmark name
    name: str = ""  # jj: workspace name; git: the worktree id
    base_commit: str = ""
    head: str = ""  # commit holding the task's work once snapshotted


@dataclass
class Snapshot:
    """The state of a task's work after its agent exited."""

    commit: str
    files: list[str]
    added: int = 0
    removed: int = 0
    change_id: str = ""  # jj: the change id of the task's change

    @property
    def changed(self) -> bool:
        return bool(self.files)


@dataclass
class Forecast:
    """Predicted conflicts, from trial merges that leave no trace."""

    files: dict[str, list[str]] = field(default_factory=dict)
    #: (a, b) -> conflicting paths, for every pair of tasks that would conflict; b may be "base"
    conflicts: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def conflicts_of(self, task: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for (a, b), paths in self.conflicts.items():
            if a == task:
                out[b] = paths
            elif b == task:
                out[a] = paths
        return out


@dataclass
class MergeOutcome:
    task: str
    ok: bool
    commit: str = ""
    conflict_files: list[str] = field(default_factory=list)


@dataclass
class LandOutcome:
    ok: bool
    message: str
    old: str = ""
    new: str = ""


@dataclass
class Leftover:
    """A workspace an interrupted run left behind."""

    run: str
    task: str
    path: Path
    ref: str
    name: str = ""
    alive: bool = False  # the run that made it still runs


def private_dir(root: str | Path | None, prefix: str) -> Path:
    """A fresh private directory (mode 0700, unpredictable name) for a workspace."""
    if root:
        root = Path(root)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=str(root) if root else None))
    os.chmod(path, 0o700)
    return path


class Backend(abc.ABC):
    """One repository, one VCS. All methods are async; blocking work runs off the event loop."""

    kind: str
    root: Path

    @property
    @abc.abstractmethod
    def state_dir(self) -> Path:
        """Where corral keeps its journal for this repository."""

    @contextlib.asynccontextmanager
    async def mutating(self) -> AsyncIterator[None]:
        """The repo-wide lock around shared-state mutations (workspace add/remove, ref updates):
        an ``anyio.Lock`` inside this process plus ``flock`` on ``<state_dir>/engine.lock`` across
        processes."""
        lock = self.__dict__.get("_repo_lock")
        if lock is None:
            lock = self.__dict__["_repo_lock"] = anyio.Lock()
        async with lock:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.state_dir / "engine.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    @property
    def checkouts(self) -> anyio.CapacityLimiter:
        """Checkouts at once (filling a new workspace with its files), outside the repo lock.
        Populating a workspace is mostly kernel work, creating thousands of files; more of them than
        about two per core only contend in the filesystem: on 2 cores, 16 at once took as long as 16
        in a row and 4 at once 30-40 % less (benchmarks/workspaces.py, 20,000 files)."""
        limiter = self.__dict__.get("_checkouts")
        if limiter is None:
            limiter = self.__dict__["_checkouts"] = anyio.CapacityLimiter(max(2, 2 * (os.cpu_count() or 1)))
        return limiter

    @abc.abstractmethod
    async def current_base(self) -> str:
        """The default base: the current branch (git) / ``@-`` (jj)."""

    @abc.abstractmethod
    async def resolve(self, rev: str) -> str:
        """Commit id of ``rev``; :class:`UsageError` when it does not resolve."""

    @abc.abstractmethod
    async def preflight(self) -> list[str]:
        """Problems that forbid a run (mid-merge, mid-rebase); empty when all is well."""

    @abc.abstractmethod
    def ref_name(self, run: str, task: str) -> str:
        """The branch / bookmark holding a task's work."""

    @abc.abstractmethod
    async def check_ref_name(self, name: str) -> bool:
        """Whether ``name`` is a valid branch / bookmark name."""

    @abc.abstractmethod
    async def create_workspace(self, run: str, task: str, base_commit: str, root: str | None) -> Workspace:
        ...

    @abc.abstractmethod
    async def snapshot(self, ws: Workspace, message: str) -> Snapshot:
        """Commit whatever the agent left uncommitted onto its branch and describe what changed."""

    @abc.abstractmethod
    async def diff(self, ws: Workspace, context: int = 3) -> str:
        """The task's diff against its base."""

    @abc.abstractmethod
    async def forecast(self, base: str, heads: dict[str, str]) -> Forecast:
        """Trial-merge every pair of task heads and each against ``base``."""

    @abc.abstractmethod
    async def integrate(self, run: str, base_commit: str, heads: list[tuple[str, str]], strategy: str,
                        root: str | None) -> tuple[Workspace, list[MergeOutcome]]:
        """Create the integration workspace at base and merge each (task, head) into it in order;
        a conflicting task is left out and the others still merge."""

    @abc.abstractmethod
    async def head_of(self, ws: Workspace) -> str:
        ...

    @abc.abstractmethod
    async def land(self, base: str, old: str, new: str) -> LandOutcome:
        """Move ``base`` from ``old`` to ``new``, only if it is still at ``old``."""

    @abc.abstractmethod
    async def remove_workspace(self, ws: Workspace, keep_ref: bool) -> None:
        """Remove the workspace (directory and VCS metadata); delete its ref unless ``keep_ref``."""

    @abc.abstractmethod
    async def delete_ref(self, ref: str) -> None:
        ...

    @abc.abstractmethod
    async def list_leftovers(self) -> list[Leftover]:
        ...

    @abc.abstractmethod
    async def ref_exists(self, ref: str) -> bool:
        ...

    async def holds_unmerged_work(self, ref: str) -> bool:
        """Whether ``ref`` holds commits that no branch outside corral's has (so deleting it loses work)."""
        return True

    async def close(self) -> None:
        """Release anything held open."""
