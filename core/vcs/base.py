"""The interface every VCS backend (git, jj) implements, and the value types it returns."""

from __future__ import annotations

import abc
import contextlib
import fcntl
import itertools
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping

import anyio
import anyio.to_thread

from .registry import Record, Registry


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
    role: str = "task"  # "task" | "integration": what corral decides about it goes by role, never by name
    run: str = ""
    key: str = ""  # its record in the workspace registry (see registry.py)
    admin: str = ""  # git: the worktree's administrative directory
    #: refs holding commits made in the workspace that are not in ``head`` (an agent that moved HEAD
    #: elsewhere after committing): kept, never merged, named in the report
    extra_refs: list[str] = field(default_factory=list)
    #: files an agent left in conflict, committed with their markers (the task's work is not fit to merge)
    conflicted: list[str] = field(default_factory=list)
    #: the backend's memo of its last snapshot of this workspace (what it read, what it found)
    memo: tuple[tuple[object, ...], Snapshot] | None = field(default=None, repr=False, compare=False)
    #: pathspecs (from the workspace root) of the agents' own state files (``.aider*``): new files
    #: there are never committed, changes to files the repository tracks still are
    exclude: list[str] = field(default_factory=list)


def holds_anything(path: Path) -> bool:
    """Whether the directory ``path`` exists and is not empty (a ``.git`` or ``.jj`` counts): an
    empty one is a workspace deleted, also in the sandbox, where ``rm -rf`` of a workspace (a mount
    point there) empties it and cannot remove it."""
    try:
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def workspace_of(path: str | Path, workspaces: Iterable[Workspace], exact: bool = False) -> Workspace | None:
    """The first of ``workspaces`` whose directory holds ``path`` (``exact``: is ``path``), both
    resolved. One named by ``path`` as it is spelled is found without resolving any path: an agent
    starts in its workspace's own path, and resolving 200 workspaces' paths for each would cost more
    than running it."""
    candidates = list(workspaces)
    spelled = str(path)
    for ws in candidates:
        if str(ws.path) == spelled:
            return ws
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    for ws in candidates:
        try:
            top = Path(ws.path).resolve()
        except (OSError, RuntimeError):
            continue
        if target == top or (not exact and target.is_relative_to(top)):
            return ws
    return None


@dataclass
class Snapshot:
    """The state of a task's work after its agent exited."""

    commit: str
    files: list[str]
    added: int = 0
    removed: int = 0
    change_id: str = ""  # jj: the change id of the task's change
    #: refs holding the workspace's other commits (see Workspace.extra_refs)
    extra_refs: list[str] = field(default_factory=list)
    #: changes still in the workspace that could not be committed (inside a submodule, ...)
    uncommitted: list[str] = field(default_factory=list)
    #: files the agent left in conflict (a merge or rebase it did not finish): committed as they are
    conflicted: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.files)


@dataclass
class Forecast:
    """Predicted conflicts, from trial merges that leave no trace."""

    files: dict[str, list[str]] = field(default_factory=dict)
    #: (a, b) -> conflicting paths, for every pair of tasks that would conflict; b may be "base"
    conflicts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: files touched by too many tasks to trial-merge every pair of them -> the tasks touching each
    #: (see :func:`trial_pairs`); two tasks that share only such files were not trial-merged
    crowded: dict[str, list[str]] = field(default_factory=dict)
    #: how many trial merges were made
    trials: int = 0

    def conflicts_of(self, task: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for (a, b), paths in self.conflicts.items():
            if a == task:
                out[b] = paths
            elif b == task:
                out[a] = paths
        return out

    def untried_of(self, task: str) -> dict[str, list[str]]:
        """The tasks that touch files ``task`` touches but were not trial-merged with it (every file
        they share is crowded), each with the files they share: they may or may not conflict."""
        mine = self.files.get(task, [])
        shared: dict[str, list[str]] = {}
        for f in mine:
            for other in self.crowded.get(f, ()):
                if other != task:
                    shared.setdefault(other, []).append(f)
        if not shared:
            return {}
        tried_on = {f for f in mine if f not in self.crowded}  # sharing one of these: trial-merged
        return {other: paths for other, paths in shared.items()
                if tried_on.isdisjoint(self.files.get(other, ()))}


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
    #: why it did not land: "moved" (base gained commits since ``old``: merging them in may land it),
    #: "conflict" (merging them in conflicts), or another word of the backend's
    why: str = ""


@dataclass
class Leftover:
    """A workspace an interrupted run left behind, from its record in the registry."""

    run: str
    task: str
    path: Path
    ref: str
    name: str = ""
    alive: bool = False  # the corral process that made it still runs
    record: "Record | None" = None
    #: "creating": never became ready, holds no work (dropped, not salvaged); "ready": an agent may
    #: have worked in it (its work is committed onto its branch before it goes)
    state: str = "ready"


#: trial merges between tasks per forecast, at most: beyond it, the files most tasks share are left out
#: (:func:`trial_pairs`). 20 tasks that all edit one file make 190 pairs, and are still all tried.
MAX_TRIAL_MERGES = 200
#: trial merges (and file listings) at once, whatever the number of tasks
FORECAST_WORKERS = 8


def trial_pairs(files: dict[str, list[str]], heads: dict[str, str],
                cap: int = MAX_TRIAL_MERGES) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Which pairs of tasks to trial-merge: those whose file sets overlap (tasks on disjoint files
    cannot conflict), in the order of ``heads``. When more than ``cap`` pairs would be tried, the
    files shared by the most tasks are set aside as *crowded* (one file shared by n tasks makes
    n(n-1)/2 pairs) until at most ``cap`` are left; pairs that share only crowded files are not tried.
    Returns (pairs to try, crowded file -> the tasks touching it)."""
    touching: dict[str, list[str]] = {}
    for task in heads:
        for f in files.get(task, ()):
            touching.setdefault(f, []).append(task)
    shared = {f: tasks for f, tasks in touching.items() if len(tasks) > 1}
    pairs_in = {f: len(tasks) * (len(tasks) - 1) // 2 for f, tasks in shared.items()}
    total = sum(pairs_in.values())  # counts a pair once per file the two share: never too few
    crowded: dict[str, list[str]] = {}
    for f in sorted(shared, key=lambda f: pairs_in[f], reverse=True):
        if total <= cap:
            break
        crowded[f] = shared[f]
        total -= pairs_in[f]
    pairs: set[tuple[str, str]] = set()
    for f, tasks in shared.items():
        if f not in crowded:
            pairs.update((a, b) for a, b in itertools.combinations(tasks, 2) if heads[a] != heads[b])
    order = {task: i for i, task in enumerate(heads)}
    return sorted(pairs, key=lambda p: (order[p[0]], order[p[1]])), crowded


async def run_forecast(base_tip: str, heads: dict[str, str], base_commits: dict[str, str],
                       changed_files: Callable[[str, str], Awaitable[list[str]]],
                       trial_merge: Callable[[str, str], Awaitable[list[str] | None]],
                       cap: int = MAX_TRIAL_MERGES) -> Forecast:
    """The forecast both backends make, given their own ``changed_files(start, head)`` and
    ``trial_merge(a, b)`` (conflicting paths, or None when the two merge cleanly): the files each
    task changed since its start, then trial merges of the pairs :func:`trial_pairs` picks and of
    each task that started before ``base_tip`` against it. A fixed pool of workers does the work, so
    memory does not grow with the number of pairs."""
    fc = Forecast(files={task: [] for task in heads})  # in the order of heads, whichever is listed first

    async def list_files(task: str) -> None:
        fc.files[task] = await changed_files(base_commits.get(task, base_tip), heads[task])

    await _in_pool(list_files, iter(heads))
    pairs, fc.crowded = trial_pairs(fc.files, heads, cap)

    def jobs() -> Iterator[tuple[str, str, str, str]]:
        for a, b in pairs:
            yield a, b, heads[a], heads[b]
        for task, head in heads.items():
            if base_commits.get(task, base_tip) != base_tip and fc.files[task]:
                yield task, "base", head, base_tip

    async def trial(job: tuple[str, str, str, str]) -> None:
        a, b, ha, hb = job
        fc.trials += 1
        paths = await trial_merge(ha, hb)
        if paths is not None:
            fc.conflicts[(a, b)] = paths

    await _in_pool(trial, jobs())
    return fc


async def _in_pool(fn: Callable[..., Awaitable[None]], items: Iterator[object]) -> None:
    """``fn(item)`` for every item, :data:`FORECAST_WORKERS` at a time, taken from one iterator."""
    async def worker() -> None:
        for item in items:
            await fn(item)

    async with anyio.create_task_group() as tg:
        for _ in range(FORECAST_WORKERS):
            tg.start_soon(worker)


def pid_is_corral(pid: int) -> bool:
    """Whether ``pid`` is a live corral process (this one included)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"corral" in f.read()
    except OSError:
        return False


async def keep_repository_history(state_dir: Path, ws: Workspace, rel: str) -> str:
    """Move the ``.git`` of the git repository an agent made at ``rel`` in ``ws`` into the run's
    folder (``runs/RUN/repositories/TASK/REL/.git`` under ``state_dir``), so that the commits made in
    it outlive the workspace; its files are the task's. Returns what to tell the user ("" when the
    repository has no commit: it holds nothing its files do not, and stays)."""
    git_dir = ws.path / rel / ".git"
    if git_dir.is_dir() and not _has_refs(git_dir):
        return ""
    dest = state_dir / "runs" / (ws.run or "unknown") / "repositories" / ws.task / rel / ".git"
    for n in itertools.count(2):
        if not os.path.lexists(dest):
            break
        dest = dest.with_name(f".git.{n}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    await anyio.to_thread.run_sync(shutil.move, str(git_dir), str(dest))
    return (f"{ws.task}: the history of the git repository the agent made at {rel}/ is kept in {dest} "
            f"(git --git-dir {shlex.quote(str(dest))} log)")


def _has_refs(git_dir: Path) -> bool:
    """Whether the repository ``git_dir`` has a commit to keep: a ref (a branch, a stash), or a
    reflog (a detached HEAD's commits, a deleted branch's)."""
    return (git_dir / "packed-refs").exists() or any(p.is_file() for sub in ("refs", "logs")
                                                     for p in (git_dir / sub).rglob("*"))


class Backend(abc.ABC):
    """One repository, one VCS. All methods are async; blocking work runs off the event loop."""

    kind: str
    root: Path

    @property
    @abc.abstractmethod
    def state_dir(self) -> Path:
        """Where corral keeps its journal for this repository."""

    @property
    def registry(self) -> Registry:
        """The records of the workspaces corral made in this repository."""
        reg = self.__dict__.get("_registry")
        if reg is None:
            reg = self.__dict__["_registry"] = Registry(self.state_dir)
        return reg

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

    async def check_base(self, base: str) -> tuple[str, list[str]]:
        """Preflight's questions about the repository in one go: the commit of ``base``
        (:class:`UsageError` when it does not resolve) and the problems :meth:`preflight` finds."""
        commit = await self.resolve(base)
        return commit, await self.preflight()

    async def remember_user_state(self) -> None:
        """Note what of the user's corral checks later (git: their stash)."""

    async def restore_user_state(self) -> list[str]:
        """Put back what of the user's went missing since :meth:`remember_user_state`; say what."""
        return []

    def worktree_root_problem(self, root: str | None) -> str | None:
        """Why workspaces must not be made under ``root`` (None when they may)."""
        return None

    def take_notices(self) -> list[str]:
        """What the backend found worth telling the user since it was last asked (jj: the base it
        chose, what agents did to the user's bookmarks and what corral put back)."""
        return []

    async def notes(self, base_commit: str, base: str = "") -> list[str]:
        """Things about the repository (and ``base``, by name) a user should know before a run (not problems)."""
        return []

    @abc.abstractmethod
    def ref_name(self, run: str, task: str) -> str:
        """The branch / bookmark holding a task's work."""

    @abc.abstractmethod
    async def check_ref_name(self, name: str) -> bool:
        """Whether ``name`` is a valid branch / bookmark name."""

    @abc.abstractmethod
    async def create_workspace(self, run: str, task: str, base_commit: str, root: str | None) -> Workspace:
        ...

    async def reopen_workspace(self, ws: Workspace, root: str | None) -> Workspace:
        """A new workspace on the kept branch of ``ws`` (removed: its work is on that branch), for one
        more turn of its agent there; :class:`VcsError` when the branch is gone or it cannot be made."""
        raise VcsError(f"a removed workspace cannot be re-opened in a {self.kind} repository")

    @abc.abstractmethod
    async def snapshot(self, ws: Workspace, message: str) -> Snapshot:
        """Commit whatever the agent left uncommitted onto its branch and describe what changed."""

    async def pending_changes(self, ws: Workspace) -> list[str]:
        """Paths the workspace holds changed and not committed yet (empty when it is gone);
        :class:`VcsError` when the VCS cannot tell."""
        return []

    async def other_lines_kept(self, ws: Workspace) -> list[str]:
        """The refs besides its branch that removing ``ws`` with its work kept leaves holding other
        lines of work made in it (git: ``<branch>+N``), found changing nothing."""
        return []

    async def salvage_keeps(self, ws: Workspace, pending: list[str]) -> bool | None:
        """For a workspace whose branch does not exist yet (a VCS that makes it when the work is
        committed): whether removing it with its work kept leaves that branch holding work of its
        own; None when no branch is made. ``pending`` is what :meth:`pending_changes` found."""
        return None

    @abc.abstractmethod
    async def describe(self, ws: Workspace) -> Snapshot:
        """What ``ws``'s head changed since its base (files, lines added and removed); commits nothing."""

    @abc.abstractmethod
    async def diff(self, ws: Workspace, context: int = 3) -> str:
        """The task's diff against its base."""

    @abc.abstractmethod
    async def forecast(self, base: str, heads: dict[str, str], base_commits: dict[str, str] | None = None) -> Forecast:
        """Trial-merge the pairs of task heads that touch the same files, and each task that started
        before ``base`` (its ``base_commits`` entry) against it (:func:`run_forecast`)."""

    @abc.abstractmethod
    async def integrate(self, run: str, base_commit: str, heads: list[tuple[str, str]], strategy: str,
                        root: str | None) -> tuple[Workspace, list[MergeOutcome]]:
        """Create the integration workspace at base and merge each (task, head) into it in order;
        a conflicting task is left out and the others still merge."""

    async def redo_merge(self, ws: Workspace, task: str, head: str, strategy: str) -> list[str]:
        """Merge ``head`` into integration workspace ``ws`` leaving its conflict there for a resolver
        agent; the conflicted files. A backend that cannot raises :class:`VcsError` saying so."""
        raise VcsError(f"conflicts cannot be handed to a resolver in a {self.kind} repository yet")

    async def conclude_merge(self, ws: Workspace, task: str, head: str, strategy: str, before: str,
                             files: list[str]) -> str:
        """The resolver's merge committed and checked; the new head (:class:`VcsError`: not resolved)."""
        raise VcsError(f"conflicts cannot be handed to a resolver in a {self.kind} repository yet")

    async def undo_merge(self, ws: Workspace, before: str) -> None:
        """Put ``ws`` back at ``before``: the resolver failed."""
        raise VcsError(f"conflicts cannot be handed to a resolver in a {self.kind} repository yet")

    @abc.abstractmethod
    async def head_of(self, ws: Workspace) -> str:
        ...

    @abc.abstractmethod
    async def land(self, base: str, old: str, new: str) -> LandOutcome:
        """Move ``base`` from ``old`` to ``new``, only if it is still at ``old``."""

    async def merge_base_into(self, ws: Workspace, tip: str) -> list[str]:
        """Merge ``tip`` (base's new tip, which descends from where ``ws``'s merge started) into the
        integration workspace ``ws``: its files, ``ws.head`` and its ref follow. Returns the files in
        conflict (none: merged); a conflicting merge changes nothing."""
        raise VcsError(f"base cannot be merged into the integration in a {self.kind} repository")

    async def conflict_hint(self, base: str, ref: str, files: list[str]) -> str:
        """How to land ``ref`` by hand when merging base into it conflicts in ``files``: commands
        that work on the repository as it is."""
        return f"the result is kept on {ref}"

    @abc.abstractmethod
    def land_hint(self, base: str, ref: str) -> str:
        """What to do with the kept result ``ref`` after :meth:`land` refused (what works depends on
        why it refused)."""

    @abc.abstractmethod
    async def remove_workspace(self, ws: Workspace, keep_ref: bool) -> None:
        """Remove the workspace (directory and VCS metadata); delete its ref unless ``keep_ref``."""

    async def remove_settled(self, ws: Workspace) -> None:
        """:meth:`remove_workspace` with its ref kept, of a task's workspace whose work the caller's
        :meth:`snapshot` has just committed whole (nothing uncommitted, no conflict), nothing having
        run in it since: a backend whose removal would only snapshot it again need not."""
        await self.remove_workspace(ws, keep_ref=True)

    @abc.abstractmethod
    async def delete_ref(self, ref: str) -> None:
        ...

    async def drop_work(self, ws: Workspace) -> None:
        """Let go of a removed workspace's work (merged, landed, or none): delete its ref, and
        whatever the VCS keeps alive only for it."""
        await self.delete_ref(ws.ref)

    async def drop_works(self, wss: list[Workspace], tips: Mapping[str, str] | None = None) -> list[str]:
        """:meth:`drop_work` of several removed workspaces at once (the end of a run); ``tips``: where
        each ref pointed when it was found to hold nothing of its own (a backend that can delete a
        ref only while it is there does so). Returns the refs left."""
        for ws in wss:
            await self.drop_work(ws)
        return []

    async def list_leftovers(self) -> list[Leftover]:
        """The workspaces corral registered in this repository and has not removed yet (each with
        whether the corral process that made it still runs)."""
        return [Leftover(run=rec.run, task=rec.task, path=Path(rec.path), ref=rec.ref, name=rec.name or rec.key,
                         alive=pid_is_corral(rec.pid), record=rec, state=rec.state)
                for rec in [*self.registry.records(), *await self.legacy_leftovers()]]

    async def forget_dead_processes(self) -> None:
        """Let go of what corral processes that were killed registered for themselves alone (not
        their runs' workspaces: those are :meth:`list_leftovers`)."""

    async def legacy_leftovers(self) -> list[Record]:
        """Workspaces an older corral made before the registry existed, where it can tell."""
        return []

    async def vet_leftover(self, rec: Record) -> str:
        """Why corral must not act on the registered workspace ``rec`` ("" when it may)."""
        if not rec.ref.startswith(f"corral/{rec.run}"):
            return f"its branch {rec.ref!r} is not one of corral's"
        return ""

    async def drop_half_made(self, ws: Workspace) -> None:
        """Remove a workspace that never became ready (it holds no work)."""
        await self.remove_workspace(ws, keep_ref=False)

    @staticmethod
    def workspace_of(rec: Record) -> Workspace:
        """The workspace a registry record describes."""
        return Workspace(task=rec.task, path=Path(rec.path), ref=rec.ref, name=rec.name or Path(rec.path).name,
                         base_commit=rec.base_commit, role=rec.role, run=rec.run, key=rec.key, admin=rec.admin,
                         exclude=list(rec.exclude))

    @abc.abstractmethod
    async def ref_exists(self, ref: str) -> bool:
        ...

    async def existing_refs(self, refs: list[str]) -> dict[str, str]:
        """Which of ``refs`` exist (:meth:`ref_exists` of each), each with the commit it points at
        where that comes at no cost ("" here)."""
        return {ref: "" for ref in refs if await self.ref_exists(ref)}

    @abc.abstractmethod
    async def list_refs(self, prefix: str = "corral/") -> dict[str, str]:
        """Branches (jj: bookmarks) whose name starts with ``prefix``: name -> commit."""

    async def checked_out_at(self, branch: str) -> Path | None:
        """The checkout that has ``branch`` checked out (deleting it would orphan that checkout's
        HEAD), or None. jj's bookmarks are never checked out."""
        return None

    async def holds_unmerged_work(self, ref: str, base_commit: str = "", base_branch: str = "") -> bool:
        """Whether ``ref`` holds commits that no branch outside corral's has (so deleting it loses work)."""
        return True

    async def close(self) -> None:
        """Release anything held open."""
