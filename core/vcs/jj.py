"""The jj (Jujutsu) backend: one jj workspace per task, trial merges in operations that never join
the operation log, merges as jj commits, landing by moving a bookmark.

Every jj command runs through its CLI in its own process group, always with ``--no-pager
--color never``, and every answer is read from a ``-T`` template (``--no-graph``), never from
human output. Commands on the repository itself run with ``--ignore-working-copy``, so the user's
own working copy (the default workspace) is never snapshotted, checked out or rewritten by a run;
only corral's own workspaces are snapshotted (that is how an agent's edits become its change).

Trial merges (the conflict forecast, and each step of the integration) run with
``--no-integrate-operation`` (jj >= 0.41): the operation is created but stays out of the
operation log, is inspected with ``--at-op``, and is either joined to the log with
``jj op integrate`` (a clean integration step) or simply left behind (a forecast, a conflicting
step), so neither ``jj log`` nor ``jj op log`` shows a stray trial. On older jj the same commands
run normally and the trial commits are abandoned afterwards.

Repository mutations (workspace add/forget, bookmarks, integration, landing) run under one lock:
an ``anyio.Lock`` inside this process plus ``flock`` on ``.jj/corral/engine.lock`` across processes.

They run from a workspace of corral's own (``corral-engine-*``, under ``.jj/corral/engine/``, never
checked out, forgotten when the process closes the backend), not from the user's: jj records each
operation with the workspace it came from, so ``jj undo`` in the user's workspace refuses corral's
operations instead of undoing them (jj >= 0.46), and a colocated repository's git index, which jj
resets after every operation of a colocated workspace, stays the user's.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import tempfile
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import anyio
import anyio.to_thread

from .base import (
    Backend,
    CommandResult,
    Forecast,
    LandOutcome,
    MergeOutcome,
    Snapshot,
    UsageError,
    VcsError,
    Workspace,
    cause_line,
    holds_anything,
    keep_repository_history,
    run_forecast,
)
from .registry import READY, Record

#: Options every engine jj command gets.
GLOBAL = ("--no-pager", "--color", "never")
#: Snapshots of corral's workspaces track every new file the agent wrote (whatever the user's
#: auto-track setting), and big files too: an agent's work must not stay behind untracked.
SNAPSHOT_CONFIG = (
    "--config", 'snapshot.auto-track="all()"',
    "--config", 'snapshot.max-new-file-size="1GiB"',  # SIZE_LIMIT
)
SIZE_LIMIT = "1 GiB"
#: What jj says when it cannot snapshot one of corral's workspaces: its working-copy commit was
#: rewritten from elsewhere (stale), the workspace was forgotten, or its operation was abandoned.
_UNSNAPSHOTTABLE = ("working copy is stale", "have a working-copy commit", "sibling of the working copy's operation",
                    "working copy's operation")


def _snapshot_config(exclude: list[str]) -> tuple[str, ...]:
    """:data:`SNAPSHOT_CONFIG`, with new files under the workspace-root globs ``exclude`` left untracked."""
    globs = " | ".join(f'root-glob:"{p}" | root-glob:"{p}/**"' for p in exclude)
    return ("--config", f"snapshot.auto-track='all() ~ ({globs})'", *SNAPSHOT_CONFIG[2:])


#: One line per commit: commit id, change id, empty, conflict, parents, description (first line).
COMMIT_T = ('commit_id ++ "\\t" ++ change_id ++ "\\t" ++ empty ++ "\\t" ++ conflict ++ "\\t" ++ '
            'parents.map(|c| c.commit_id()).join(",") ++ "\\t" ++ description.first_line() ++ "\\n"')
_OP_RE = re.compile(r"--no-integrate-operation[^\n]*?([0-9a-f]{12,})")
_ERROR_RE = re.compile(r"(?:[A-Z][a-z]+ )?[Ee]rror: ")
_CAUSE_RE = re.compile(r"(?:Caused by:|\d+:)\s*(.*)")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_HEX_RE = re.compile(r"\A[0-9a-f]{40,}\Z")
#: a conflict marker line left in a file (git's style, which corral asks jj for)
_MARKER_RE = re.compile(r"^(<<<<<<<|>>>>>>>)( |$)", re.MULTILINE)
_REFUSED_RE = re.compile(r"^\s+(.+?): [\d.]+\s*\w+ \(\d+ bytes\)")
_LEFTOVER_RE = re.compile(r"\Acorral-(\d{8}-\d{6}-[0-9a-f]+)-(.+)\Z")
MIN_VERSION = (0, 36)  # -o/--onto, the colocation default; older ones are untested
#: What cleanup never abandons: everything any bookmark, tag or working copy still holds.
KEEP = "(bookmarks() | remote_bookmarks() | tags() | working_copies())"


JjResult = CommandResult


def _short_err(res: JjResult) -> str:
    """Why a jj command failed, in one line: its error (``Error: ...``, ``Config error: ...``) and
    the last of the causes listed under it (``Caused by: ...``, or ``1: ...``, ``2: ...``), which
    names what really went wrong; hints dropped (:func:`cause_line`)."""
    lines = [line.strip() for line in (res.err or res.out).splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if _ERROR_RE.match(line)), None)
    if start is None:
        return cause_line([line for line in lines if not line.startswith("Hint:")][-1:] or lines[-1:], res.code)
    cause = ""
    for line in lines[start + 1:]:
        m = _CAUSE_RE.match(line)
        if m is None:
            break
        cause = m.group(1) or cause
    return cause_line([lines[start].removeprefix("Error:").strip()] + ([cause] if cause else []), res.code)


def _quote(text: str) -> str:
    """A jj revset / template string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _union(ids: Sequence[str]) -> str:
    return "(" + " | ".join(ids) + ")" if ids else "none()"


class _Commit:
    __slots__ = ("commit", "change", "empty", "conflict", "parents", "subject")

    def __init__(self, line: str) -> None:
        parts = line.split("\t", 5)
        parts += [""] * (6 - len(parts))
        self.commit, self.change = parts[0], parts[1]
        self.empty = parts[2] == "true"
        self.conflict = parts[3] == "true"
        self.parents = [p for p in parts[4].split(",") if p]
        self.subject = parts[5]


class _Txn:
    """A chain of jj commands on the repository. Detached (jj >= 0.41): each command's operation is
    created with ``--no-integrate-operation`` on top of the previous one and stays out of the
    operation log until :meth:`integrate`; dropping the object leaves no trace. Otherwise the
    commands run normally and :meth:`rollback` abandons the commits they created."""

    def __init__(self, backend: "JjBackend", op: str | None, detached: bool) -> None:
        self.b = backend
        self.op = op
        self.detached = detached
        self.created: list[str] = []  # change ids to abandon on rollback (attached mode)
        self.made: list[str] = []  # commit ids it wrote (detached mode: their refs/jj/keep go on rollback)

    def fork(self) -> "_Txn":
        return _Txn(self.b, self.op, self.detached)

    async def run(self, *args: str) -> JjResult:
        if not self.detached:
            return await self.b.jj(*args)
        at = ("--at-op", self.op) if self.op else ()
        res = await self.b.jj(*at, "--no-integrate-operation", *args)
        m = _OP_RE.search(res.err) or _OP_RE.search(res.out)
        if m is None:
            raise VcsError(f"jj {' '.join(args[:2])}: no operation id in its output")
        self.op = m.group(1)
        return res

    async def query(self, *args: str, check: bool = True) -> JjResult:
        at = ("--at-op", self.op) if (self.detached and self.op) else ()
        return await self.b.jj(*at, *args, check=check)

    async def commits(self, revset: str, made: bool = False) -> list[_Commit]:
        """The commits of ``revset``; ``made``: ones this chain wrote (a revset that finds them)."""
        res = await self.query("log", "-r", revset, "--no-graph", "-T", COMMIT_T)
        found = [_Commit(line) for line in res.lines()]
        if made:
            self.made += [c.commit for c in found]
        return found

    async def conflict_files(self, rev: str) -> list[str]:
        res = await self.query("file", "list", "-r", rev, "-T", 'if(conflict, path ++ "\\n")', check=False)
        return sorted(set(res.lines()))

    async def integrate(self) -> None:
        if self.detached and self.op:
            await self.b.jj("op", "integrate", self.op)

    async def rollback(self) -> None:
        """Attached: abandon what the chain created. Detached: its operations never join the log, but
        in a colocated repository git still shows the commits it wrote (jj keeps a ``refs/jj/keep/*``
        ref for each): drop those refs, which nothing in the operation log needs."""
        if not self.detached and self.created:
            await self.b.jj("abandon", _union(self.created), check=False)
            self.created = []
        if self.detached and self.made:
            await self.b.drop_keep_refs(self.made)
            self.made = []


class JjBackend(Backend):
    kind = "jj"

    def __init__(self, root: Path, repo_dir: Path, version: tuple[int, int, int]) -> None:
        self.root = root
        self.repo_dir = repo_dir
        self.version = version
        self.colocated = (root / ".git").exists()
        self._limiter = anyio.CapacityLimiter(4)
        self._env: dict[str, str] | None = None
        self._no_colocate: bool | None = None  # None: not decided yet
        self._colocate_lock = anyio.Lock()
        self._notices: list[str] = []
        self._created: dict[str, list[str]] = {}  # integration bookmark -> change ids it made
        self._not_bookmark: set[str] = set()
        self._diff_template = True
        #: answers about commit ids, which never change: (from, to) -> files / stats; commit -> change id
        self._files_memo: dict[tuple[str, str], list[str]] = {}
        self._stats_memo: dict[tuple[str, str], tuple[list[str], int, int]] = {}
        self._change_of: dict[str, str] = {}
        self._engine: Path | None = None  # corral's own workspace (see the module docstring)
        self._engine_lock: int | None = None
        self._refused: dict[str, list[str]] = {}  # workspace path -> files jj refused to snapshot
        #: integration workspace path -> the change id of the merge a resolver works on
        self._resolving: dict[str, str] = {}
        #: the guard (see :meth:`guard`): the operation and the user's bookmarks and working copies when
        #: this backend first changed the repository; operations examined; what could not be restored
        self._start_op: str | None = None
        self._start_view: dict[str, str] = {}
        self._views: dict[str, dict[str, str]] = {}
        self._examined: set[str] = set()
        self._unrestored: list[str] = []
        self._op_window = 256

    # ----------------------------------------------------------------------------------- plumbing
    @classmethod
    async def open(cls, path: str | Path) -> "JjBackend":
        from . import find_jj_root

        path = Path(path)
        if not path.is_dir():
            raise UsageError(f"{path}: no such directory")
        if shutil.which("jj") is None:
            raise UsageError(f"{path}: a jj repository, but jj is not on PATH")
        root = find_jj_root(path)
        if root is None:
            raise UsageError(f"{path}: not a jj repository (no .jj folder)")
        code, out, _ = await _run(["jj", "--version"], str(root), None)
        m = _VERSION_RE.search(out) if code == 0 else None
        if m is None:
            raise UsageError("jj --version failed: is jj installed correctly?")
        version = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
        if version[:2] < MIN_VERSION:
            raise UsageError(f"jj {'.'.join(map(str, version))} is too old: corral needs jj >= "
                             f"{'.'.join(map(str, MIN_VERSION))}")
        repo = root / ".jj" / "repo"
        if repo.is_file():  # a secondary workspace: .jj/repo names the shared repository
            target = Path(repo.read_text(encoding="utf-8").strip())
            repo = target if target.is_absolute() else (root / ".jj" / target)
        backend = cls(root, repo.resolve(), version)
        res = await backend.jj("workspace", "root", check=False)
        if not res.ok:
            raise UsageError(f"{path}: not a usable jj repository ({_short_err(res)})")
        return backend

    @property
    def detached_ops(self) -> bool:
        """Whether this jj can keep operations out of the op log (``--no-integrate-operation``)."""
        return self.version[:2] >= (0, 41)

    @property
    def onto(self) -> str:
        return "-o" if self.version[:2] >= (0, 36) else "-d"

    async def env(self) -> dict[str, str]:
        """The environment for jj: an identity for engine commits when the user configured none."""
        if self._env is None:
            env = dict(os.environ)
            env.setdefault("JJ_EDITOR", "true")  # never wait on an editor (every message is given with -m)
            for key, var, default in (("user.name", "JJ_USER", "corral"), ("user.email", "JJ_EMAIL", "corral@localhost")):
                if env.get(var):
                    continue
                code, out, _ = await _run(["jj", *GLOBAL, "--ignore-working-copy", "config", "get", key],
                                          str(self.root), env)
                if code != 0 or not out.strip():
                    env[var] = default
            self._env = env
        return self._env

    async def jj(self, *args: str, cwd: str | Path | None = None, check: bool = True,
                 workspace: bool = False, user_wc: bool = False, at_root: bool = False,
                 exclude: list[str] | None = None) -> JjResult:
        """Run jj. On the repository (default) with ``--ignore-working-copy``, from corral's own
        workspace once there is one; with ``at_root=True`` from the user's workspace (where a revset the
        user gave, such as ``@-``, means what the user meant); with ``workspace=True`` inside one of
        corral's workspaces (``cwd``), snapshotting it first (new files matching ``exclude``, an agent's
        own state, left untracked); with ``user_wc=True`` on the repository the way a user's own command
        runs (a last resort, for a jj that insists)."""
        argv = ["jj", *GLOBAL]
        if workspace:
            argv += ["-R", str(cwd), *(_snapshot_config(exclude) if exclude else SNAPSHOT_CONFIG)]
        elif user_wc:
            argv += ["-R", str(self.root)]
        else:
            repo = self.root if (at_root or self._engine is None) else self._engine
            argv += ["-R", str(repo), "--ignore-working-copy"]
        argv += list(args)
        env = await self.env()
        async with self._limiter:
            code, out, err = await _run(argv, str(cwd or self.root), env)
        res = JjResult(code, out, err)
        if check and not res.ok:
            raise VcsError(f"jj {' '.join(a for a in args[:3] if not a.startswith('--'))}: {_short_err(res)}")
        return res

    async def notes(self, base_commit: str, base: str = "") -> list[str]:
        """What preflight found worth saying (the base chosen for a merge working copy)."""
        return self.take_notices()

    def take_notices(self) -> list[str]:
        """Things worth telling the user once (e.g. the --no-colocate fallback)."""
        out, self._notices = self._notices, []
        return out

    async def current_op(self) -> str:
        return (await self.jj("op", "log", "-n", "1", "--no-graph", "-T", 'id ++ "\\n"')).out.strip()

    def txn(self, op: str | None = None) -> _Txn:
        return _Txn(self, op, self.detached_ops)

    # ------------------------------------------------------------------------- engine workspace
    @contextlib.asynccontextmanager
    async def mutating(self) -> AsyncIterator[None]:
        """The repo lock, with corral's own workspace in place for the operations made under it. In a
        colocated repository, bookmarks are exported to git at the end: jj exports by itself only
        from a colocated workspace, and corral's is not one (it must not touch the user's index)."""
        async with super().mutating():
            await self._ensure_engine()
            try:
                yield
            finally:
                if self.colocated:
                    with anyio.CancelScope(shield=True):
                        await self.jj("git", "export", check=False)

    async def _ensure_engine(self) -> None:
        """Register corral's own workspace (once per process): a name that says whose it is, a
        directory under ``.jj/corral/engine/`` that is never checked out (its working-copy commit is
        an empty child of the root commit), and a lock file held while this process lives, so that a
        later process forgets the workspace of one that was killed."""
        if self._engine is not None:
            return
        self._start_op = await self.current_op()
        self._start_view = await self._user_view(self._start_op)
        engines = self.state_dir / "engine"
        engines.mkdir(parents=True, exist_ok=True)
        name = f"corral-engine-{os.getpid()}-{secrets.token_hex(3)}"
        fd = os.open(engines / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = engines / name
        path.mkdir(mode=0o700)
        try:
            await self._register(name, path)  # the operation is recorded with no workspace at all
        except VcsError:
            os.close(fd)
            shutil.rmtree(path, ignore_errors=True)
            os.unlink(engines / f"{name}.lock")
            raise
        self._engine, self._engine_lock = path, fd
        atexit.register(self._forget_engine_at_exit)
        await self._forget_dead_engines(engines)

    async def _register(self, name: str, path: Path) -> None:
        """``jj workspace add --ignore-working-copy``: the workspace is registered with nothing checked
        out, its working-copy commit an empty child of the root commit (jj says it cannot update the
        working copy, and exits 1). Never a git worktree (``--no-colocate``, where jj knows it)."""
        for flags in (["--no-colocate"], []):
            res = await self.jj("workspace", "add", *flags, "--name", name, str(path), check=False)
            if name in await self._workspaces():
                return
            if "unexpected argument" not in res.err:
                break
        raise VcsError(f"jj workspace add {path}: {_short_err(res)}")

    async def _forget_dead_engines(self, engines: Path) -> None:
        """Forget the workspaces of corral processes that died without closing (their lock is free;
        this process's own lock, held through another open file, is not)."""
        for lock in _dead_engine_locks(engines):
            name = lock.name[:-len(".lock")]
            await self.jj("workspace", "forget", name, check=False)
            shutil.rmtree(engines / name, ignore_errors=True)
            lock.unlink(missing_ok=True)

    async def forget_dead_processes(self) -> None:
        """The workspaces of corral processes killed outright (a later process that needs its own
        forgets them too)."""
        engines = self.state_dir / "engine"
        if engines.is_dir() and _dead_engine_locks(engines):
            async with self.mutating():  # (from corral's own workspace, as every operation of corral's)
                await self._forget_dead_engines(engines)

    async def close(self) -> None:
        """Forget corral's own workspace (from itself, so that this too is not the user's to undo)."""
        if self._engine is None:
            return
        with anyio.CancelScope(shield=True):
            async with super().mutating():
                await self.jj("workspace", "forget", self._engine.name, check=False)
            self._drop_engine()

    def _drop_engine(self) -> None:
        if self._engine is None:
            return
        path, self._engine = self._engine, None
        shutil.rmtree(path, ignore_errors=True)
        (path.parent / f"{path.name}.lock").unlink(missing_ok=True)
        if self._engine_lock is not None:
            os.close(self._engine_lock)
            self._engine_lock = None
        atexit.unregister(self._forget_engine_at_exit)

    def _forget_engine_at_exit(self) -> None:
        """For a process that never closed the backend (``corral clean``): forget the workspace now."""
        if self._engine is None:
            return
        subprocess.run(["jj", *GLOBAL, "-R", str(self._engine), "--ignore-working-copy", "workspace", "forget",
                        self._engine.name], cwd=str(self.root), stdin=subprocess.DEVNULL, capture_output=True,
                       env=self._env, start_new_session=True, check=False)
        self._drop_engine()

    # ------------------------------------------------------------------------------------ guard
    async def _user_view(self, op: str) -> dict[str, str]:
        """The user's things at operation ``op``: ``bookmark NAME`` and ``working copy NAME@`` (not
        corral's) -> commit id."""
        if op not in self._views:
            res = await self.jj("--at-op", op, "log", "-r", "bookmarks() | working_copies()", "--no-graph", "-T",
                                'commit_id ++ "\\t" ++ local_bookmarks.map(|b| b.name()).join(",") ++ "\\t" ++ '
                                'working_copies.map(|w| w.name()).join(",") ++ "\\n"', check=False)
            view: dict[str, str] = {}
            named = False
            for line in res.lines() if res.ok else []:
                commit, marks, wcs = (line.split("\t") + ["", ""])[:3]
                named = named or bool(wcs)
                view.update({f"bookmark {n}": commit for n in marks.split(",") if n and not n.startswith("corral/")})
                view.update({f"working copy {n}@": commit for n in wcs.split(",") if n and not n.startswith("corral-")})
            if not named:
                # jj names no working copy in a template when there is one workspace only (an operation
                # from before corral's: one an agent's `jj op restore` went back to): ask jj for it
                res = await self.jj("--at-op", op, "workspace", "list", "-T",
                                    'name ++ "\t" ++ self.target().commit_id() ++ "\n"', check=False, at_root=True)
                for line in res.lines() if res.ok else []:
                    name, _, commit = line.partition("\t")
                    if name and commit and not name.startswith("corral-"):
                        view[f"working copy {name}@"] = commit
            self._views[op] = view
        return self._views[op]

    async def _ops_since_start(self) -> list[list[str]] | None:
        """Operations after the start, oldest first: [id, workspace, parents, description]; None when
        the start is no longer in the operation log (operations were abandoned). Reads the newest
        operations only, twice as many as last time, more when the start is further back."""
        limit = self._op_window
        while True:
            res = await self.jj("op", "log", "--no-graph", "-n", str(limit), "-T",
                                'id ++ "\\t" ++ workspace_name ++ "\\t" ++ parents.map(|o| o.id()).join(",") ++ '
                                '"\\t" ++ description.first_line() ++ "\\n"')
            ops: list[list[str]] = []
            for line in res.lines():
                fields = (line.split("\t") + ["", "", ""])[:4]
                if fields[0] == self._start_op:
                    self._op_window = max(self._op_window, 2 * len(ops))
                    return ops[::-1]
                ops.append(fields)
            if len(ops) < limit:
                return None
            limit *= 4

    async def guard(self) -> list[str]:
        """Agents may change their own change and bookmark, nothing else. Since this backend first
        changed the repository, find what operations run from corral's task workspaces (an agent's jj,
        or corral's snapshot of a workspace the agent pointed at base) did to the user's bookmarks and
        working copies; put back what can be put back without divergent changes (a bookmark moved,
        deleted or created: the commit it was on is still there), keep the rest in ``_unrestored``
        (landing is then refused), and return what was done. Operations abandoned from the log
        (``jj op abandon``, which leaves the user's workspace unloadable) are integrated back."""
        if self._start_op is None:
            return []
        notes: list[str] = []
        ops = await self._ops_since_start()
        if ops is None:
            async with self.mutating():
                notes.append(await self._integrate_abandoned())
            ops = await self._ops_since_start() or []
        if not ops or await self._user_view(ops[-1][0]) == self._start_view:
            return notes
        changes: dict[str, tuple[list[str], str, str]] = {}  # thing -> (op, value before, value after)
        for op in ops:
            if op[0] in self._examined:
                continue
            self._examined.add(op[0])
            who = op[1].rstrip("@")
            parents = [p for p in op[2].split(",") if p]
            if (not who.startswith("corral-") or who.startswith("corral-engine-") or len(parents) != 1
                    or op[3].startswith("import git")):  # what git did, brought in by whichever jj ran next
                continue
            before, after = await self._user_view(parents[0]), await self._user_view(op[0])
            for thing in sorted(set(before) | set(after)):
                if before.get(thing) != after.get(thing):
                    first = changes.get(thing)
                    changes[thing] = (op, first[1] if first else before.get(thing, ""), after.get(thing, ""))
        now = await self._user_view(ops[-1][0])
        lost: dict[str, tuple[list[str], list[str]]] = {}  # op id -> (op, what it did that cannot be put back)
        async with self.mutating():
            for thing, (op, old, new) in changes.items():
                change = (f"created {thing}" if not old else f"deleted {thing}" if not new else
                          f"moved {thing} from {old[:12]} to {new[:12]}")
                done = await self._restore(thing, old, new, now.get(thing, ""))
                if done:
                    notes.append(f"{_by(op)} {change}: {done}")
                else:
                    lost.setdefault(op[0], (op, []))[1].append(change)
        for op, things in lost.values():
            problem = (f"{_by(op)} {', '.join(things)}, which cannot be put back without divergent changes: "
                       f"to undo it, jj op revert {op[0][:12]}")
            self._unrestored.append(problem)
            notes.append(problem)
        return notes

    async def _restore(self, thing: str, old: str, new: str, now: str) -> str:
        """Put ``thing`` (``bookmark NAME``, ``working copy NAME@``) back from ``new`` to ``old``; what was
        done, or "" when it cannot be done without divergent changes (``old`` was rewritten or
        abandoned, or it is a working copy)."""
        if thing.startswith("working copy "):
            return await self._restore_working_copy(thing.removeprefix("working copy "), old, now)
        kind, name = thing.split(" ", 1)
        if now != new:
            return "it has changed again since, so corral leaves it"
        if kind == "bookmark" and not old:
            await self.jj("bookmark", "delete", f"exact:{name}")
            return "deleted it again"
        if kind == "bookmark" and not await self._hidden(old):
            await self.jj("bookmark", "set", name, "-r", old, "--allow-backwards")
            return f"put back on {old[:12]}"
        return ""

    async def _restore_working_copy(self, name: str, old: str, now: str) -> str:
        """Put the user's workspace ``name`` (``NAME@``) back on ``old``, the commit an agent's
        operation moved it off, when that is the commit its files on disk are (the operation its
        directory last recorded has it there: the user ran no jj there since) and no other commit of
        its change is visible (no divergence). jj's own way out of the stale workspace the agent left
        (``jj workspace update-stale``) checks the other commit out over those files, deleting what
        only ``old`` held. What was done, or "" (landing is then refused)."""
        workspaces = await self._workspaces()
        found = workspaces.get(name.removesuffix("@"))
        if not old or found is None:
            return ""
        root = Path(found[0])
        op, _ = _checkout_state(root)
        if not op or (await self._user_view(op)).get(f"working copy {name}") != old:
            return ""
        if now == old:
            return "it is back on the commit its files are"
        # only when the operation went back to an older version of the same change (a restore): one
        # that rewrote it (an agent that rewrote base, which rebases your working copy) is not undone
        # here (landing is refused, naming the operation to revert)
        res = await self.jj("evolog", "-r", old, "--no-graph", "-T", 'commit.commit_id() ++ "\n"', check=False)
        if not res.ok or now not in res.lines()[1:]:
            return ""
        res = await self.jj("log", "-r", old, "--no-graph", "-T", "change_id", check=False)
        change = res.out.strip() if res.ok else ""
        if not change:
            return ""
        # the other visible versions of its change (the older one a restore brings back) are hidden
        # again once the workspace is on ``old``: only when nothing is on them and no other workspace
        # is (else they would stay, divergent)
        others = f"present(change_id({change})) ~ {old}"
        res = await self.jj("log", "-r", f"({others}) | (({others}):: ~ ({others}))", "--no-graph", "-T",
                            'commit_id ++ "\t" ++ change_id ++ "\n"', check=False)
        lines = [line.split("\t") for line in res.lines()] if res.ok else []
        elsewhere = {target for ws_name, (_, target) in workspaces.items() if f"{ws_name}@" != name}
        if not res.ok or any(c != change or commit in elsewhere for commit, c in lines):
            return ""
        with _git_index_kept(root):
            if not (await self.jj("--ignore-working-copy", "edit", old, cwd=root, workspace=True, check=False)).ok:
                return ""
        if lines:
            await self.jj("abandon", others, check=False)
        return f"put back on {old[:12]}, the commit its files are"

    async def _hidden(self, commit: str) -> bool:
        res = await self.jj("log", "-r", f"present({commit})", "--no-graph", "-T", "hidden", check=False)
        return res.out.strip() != "false"

    async def _integrate_abandoned(self) -> str:
        """Bring operations abandoned from the log back (the run's start, and the operation each of the
        user's workspaces last recorded), so that jj loads the user's workspace again."""
        assert self._start_op is not None
        ops = [self._start_op]
        for name, (root, _) in (await self._workspaces()).items():
            if not name.startswith("corral-"):
                op, _ = _checkout_state(Path(root))
                ops += [op] if op else []
        done = []
        for op in dict.fromkeys(ops):
            res = await self.jj("op", "integrate", op, check=False)
            done += [op[:12]] if res.ok and "already" not in res.out + res.err else []
        return ("operations were abandoned from the operation log during the run (jj op abandon): "
                + (f"integrated {', '.join(done)} back" if done else "nothing could be integrated back"))

    # ---------------------------------------------------------------------------------- queries
    @property
    def state_dir(self) -> Path:
        return self.repo_dir.parent / "corral"

    async def current_base(self) -> str:
        """``@-``, named by its bookmark when exactly one (not corral's own) points at it, so the
        result can land by moving that bookmark. When the working copy is a merge, its first parent,
        and a notice says so: the other parents' changes are not in the base."""
        res = await self.jj("log", "-r", "@", "--no-graph", "-T",
                            'parents.map(|c| c.commit_id() ++ "\\t" ++ c.local_bookmarks().map(|b| b.name())'
                            '.join(",")).join("\\n") ++ "\\n"', check=False, at_root=True)
        parents = [line.split("\t") + [""] for line in res.lines()] if res.ok else []
        if not parents:
            return "@-"
        names = [n for n in parents[0][1].split(",") if n and not n.startswith("corral/")]
        if not names and len(parents) == 1 and parents[0][0].strip("0"):  # (not the root commit)
            await self._check_not_behind(parents[0][0])
        base = names[0] if len(names) == 1 else "@-" if len(parents) == 1 else parents[0][0]
        if len(parents) > 1:
            others = ", ".join(_label(c, b) for c, b, _ in parents[1:])
            self._notices.append(
                f"base {base}: your working copy is a merge, and the base is its first parent "
                f"({_label(*parents[0][:2])}); the changes of {others} are not in it (give --base to choose)")
        return base

    async def _check_not_behind(self, parent: str) -> None:
        """``@-`` (``parent``) has no bookmark, and a bookmark sits on a commit after it that is not
        under the working copy: the usual cause is a run that landed there while the working copy
        stayed put. A run on ``@-`` would build on stale work and land nowhere: refused (exit 2)."""
        res = await self.jj("log", "-r", f"(descendants({parent}) ~ ::@) & bookmarks()", "--no-graph", "-T",
                            'local_bookmarks.map(|b| b.name()).join("\\n") ++ "\\n"', check=False, at_root=True)
        ahead = [n for n in res.lines() if not n.startswith("corral/")] if res.ok else []
        if ahead:
            raise UsageError(f"base @- ({parent[:12]}) is behind bookmark {ahead[0]}, which moved past it (a run "
                             f"landed there?): start on it with `jj new {ahead[0]}`, or give --base @- to build on "
                             "the old commit")

    async def resolve(self, rev: str) -> str:
        if not rev or rev.startswith("-") or "\0" in rev or "\n" in rev:
            raise UsageError(f"base {rev!r}: not a valid revision")
        res = await self.jj("log", "-r", rev, "-n", "2", "--no-graph", "-T", 'commit_id ++ "\\n"', check=False,
                            at_root=True)
        if not res.ok:
            raise UsageError(f"base {rev!r}: no such revision in {self.root} ({_short_err(res)})")
        ids = res.lines()
        if len(ids) != 1:
            raise UsageError(f"base {rev!r}: resolves to {'no' if not ids else 'several'} commits in {self.root}; "
                             "give one revision (--base REV)")
        return ids[0]

    async def preflight(self) -> list[str]:
        return []

    def worktree_root_problem(self, root: str | None) -> str | None:
        """Workspaces must not sit inside a colocated repository: one without a ``.git`` of its own
        (``--no-colocate``) lets an agent's git walk up into the user's repository (``git stash -u``
        would stash the user's files)."""
        import tempfile

        where = Path(root or tempfile.gettempdir()).resolve()
        if self.colocated and (where == self.root or self.root in where.parents):
            label = f"worktree_root {root!r}" if root else f"temp dir {str(where)!r}"
            return (f"{label} is inside the colocated repository {self.root}, where agents' git commands would "
                    "reach your own checkout: choose a directory outside it")
        return None

    def ref_name(self, run: str, task: str) -> str:
        return f"corral/{run}/{task}"

    def workspace_name(self, run: str, task: str) -> str:
        return f"corral-{run}-{task}"

    async def check_ref_name(self, name: str) -> bool:
        # jj bookmarks are exported to git (colocated or not), so they must be valid git branch names
        code, _, _ = await _run(["git", "check-ref-format", f"refs/heads/{name}"], str(self.root), None)
        if code == 127:  # no git binary: the common rules
            parts = name.split("/")
            return (bool(name) and not name.endswith((".", ".lock", "/")) and ".." not in name and "@{" not in name
                    and not any(p == "" or p.startswith(".") for p in parts)
                    and not re.search(r"[\x00-\x20\x7f~^:?*\[\\]", name))
        return code == 0

    async def bookmarks(self, pattern: str = "glob:*") -> dict[str, str | None]:
        """Local bookmarks matching ``pattern``: name -> commit id (None when conflicted)."""
        res = await self.jj("bookmark", "list", "-T",
                            'if(!remote, name ++ "\\t" ++ conflict ++ "\\t" ++ '
                            'if(normal_target, normal_target.commit_id(), "") ++ "\\n")', pattern, check=False)
        out: dict[str, str | None] = {}
        for line in res.lines():
            name, conflict, target = (line.split("\t") + ["", "", ""])[:3]
            if not target and conflict != "true":
                continue  # deleted (a tombstone kept for a remote)
            out[name] = None if conflict == "true" else target
        return out

    async def ref_exists(self, ref: str) -> bool:
        return ref in await self.bookmarks(f"exact:{ref}")

    async def list_refs(self, prefix: str = "corral/") -> dict[str, str]:
        """Bookmarks whose name starts with ``prefix``: name -> commit ("" when conflicted)."""
        return {name: target or "" for name, target in (await self.bookmarks(f"glob:{prefix}*")).items()}

    async def is_bookmark(self, name: str) -> bool:
        return await self.ref_exists(name)

    # ------------------------------------------------------------------------------- workspaces
    async def _workspaces(self) -> dict[str, tuple[str, str]]:
        """Every workspace: name -> (root, working-copy commit id)."""
        res = await self.jj("workspace", "list", "-T",
                            'name ++ "\\t" ++ self.root() ++ "\\t" ++ self.target().commit_id() ++ "\\n"')
        out = {}
        for line in res.lines():
            name, root, target = (line.split("\t") + ["", "", ""])[:3]
            out[name] = (root, target)
        return out

    async def _add_workspace(self, name: str, path: Path, rev: str) -> None:
        """``jj workspace add`` without touching the user's working copy. Run on the repository with
        ``--ignore-working-copy``, jj registers the workspace but cannot check it out; the check-out
        then happens inside the new workspace (``jj new REV``, then ``jj workspace update-stale``)."""
        async with self._colocate_lock:
            user_wc = False
            while True:
                flags = ["--no-colocate"] if self._no_colocate else []
                async with self.mutating():
                    # from the user's workspace: a workspace is colocated by default when that one is
                    res = await self.jj("workspace", "add", *flags, "--name", name, "-r", rev, str(path), check=False,
                                        user_wc=user_wc, at_root=True)
                    registered = name in await self._workspaces()
                if registered:
                    if self._no_colocate is None:
                        self._no_colocate = False
                    break
                text = res.err + res.out
                if self._no_colocate is None and ("2.42" in text or "orphan" in text):
                    self._no_colocate = True
                    self._notices.append(
                        "jj: colocated workspaces need git >= 2.42 on this machine's jj; corral creates its "
                        "workspaces with --no-colocate (no .git inside them: agents should use jj, not git)")
                    for child in path.iterdir():  # the failed attempt may leave files behind
                        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
                    continue
                if not user_wc and "working copy" in text:
                    user_wc = True  # this jj will not add a workspace without loading the current one
                    continue
                raise VcsError(f"jj workspace add {path}: {_short_err(res)}")
        # a fresh working-copy commit on REV: an operation, under the lock, that touches no file
        # (the workspace's first working-copy commit may sit elsewhere, and its files may be missing)
        async with self.mutating():
            await self.jj("new", rev, "--ignore-working-copy", cwd=path, workspace=True)
        # then the check-out, in parallel with other workspaces: it writes this workspace's files
        # and records no operation
        async with self.checkouts:
            await self.jj("workspace", "update-stale", cwd=path, workspace=True)

    async def create_workspace(self, run: str, task: str, base_commit: str, root: str | None) -> Workspace:
        base_commit = await self.follow(base_commit)  # base may have been rewritten since the run started
        return await self._new_workspace(run, task, self.ref_name(run, task), base_commit, base_commit, root)

    async def reopen_workspace(self, ws: Workspace, root: str | None) -> Workspace:
        """A workspace on a new change on top of the kept bookmark of the removed workspace ``ws``: its
        next snapshot moves the bookmark on, or leaves it where it is when nothing changes."""
        found = await self.bookmarks(f"exact:{ws.ref}")
        head = found.get(ws.ref)
        if not head:
            raise VcsError(f"its bookmark {ws.ref} is {'conflicted' if ws.ref in found else 'gone'}")
        new = await self._new_workspace(ws.run, ws.task, ws.ref, ws.base_commit, head, root)
        new.extra_refs, new.exclude = list(ws.extra_refs), list(ws.exclude)
        return new

    async def _new_workspace(self, run: str, task: str, ref: str, base_commit: str, at: str,
                             root: str | None, reserved: tuple[Path, Record] | None = None) -> Workspace:
        """A workspace at ``at`` in a fresh private directory (``reserved``: registered already);
        on any failure nothing is left behind."""
        name = self.workspace_name(run, task)
        role = "integration" if ref.endswith("/integration") else "task"
        path, rec = reserved or self.registry.reserve(root, run=run, task=task, role=role, ref=ref, vcs="jj",
                                                      base_commit=base_commit, name=name)
        try:
            await self._add_workspace(name, path, at)
            self.registry.update(rec, state=READY)
        except BaseException:
            with anyio.CancelScope(shield=True):
                async with self.mutating():
                    await self.jj("workspace", "forget", name, check=False)
                shutil.rmtree(path, ignore_errors=True)
                self.registry.drop(rec)
            raise
        return Workspace(task=task, path=path, ref=ref, name=name, base_commit=base_commit, head=at, role=role,
                         run=run, key=rec.key)

    async def _wc(self, ws: Workspace) -> _Commit:
        """The workspace's working-copy commit, after snapshotting what is on disk. Files jj refused to
        snapshot (over its size limit) are remembered for :meth:`snapshot` to report."""
        res = await self.jj("log", "-r", "@", "--no-graph", "-T", COMMIT_T, cwd=ws.path, workspace=True,
                            exclude=ws.exclude)
        self._refused[str(ws.path)] = _refused_files(res.err)
        lines = res.lines()
        if not lines:
            raise VcsError(f"jj: no working-copy commit in {ws.path}")
        return _Commit(lines[0])

    async def snapshot(self, ws: Workspace, message: str) -> Snapshot:
        """Snapshot the workspace, describe its change (when the agent left it undescribed) and point
        the task's bookmark at it. A workspace jj can no longer snapshot (forgotten, or stale because
        its base was rewritten) is adopted first (:meth:`_adopt`). Files jj refuses to commit (over its
        size limit) raise :class:`VcsError` once the rest is committed: the workspace must be kept."""
        if ws.base_commit:
            ws.base_commit = await self.follow(ws.base_commit)
        if holds_anything(ws.path):
            async with self.mutating():  # one operation at a time: no divergent operations to reconcile
                head = await self._snapshot_head(ws, message)
            ws.head = head
        else:
            # the directory is gone, or empty (an agent's `rm -rf "$CORRAL_WORKSPACE"`: in the sandbox
            # the directory is a mount point and stays): a workspace deleted, not one whose every file
            # was. Its work is what jj last recorded of it; nothing on disk is snapshotted.
            async with self.mutating():
                wc = await self._commit_at("", f"{_quote(ws.name)}@")
                if wc is not None:
                    ws.head = await self._settle_head(ws, wc, message, in_workspace=False)
        snap = await self.describe(ws)
        self._notices += await self.guard()
        refused = self._refused.pop(str(ws.path), [])
        if refused:
            raise VcsError(f"{', '.join(refused)}: over jj's snapshot size limit ({SIZE_LIMIT}), not committed")
        return snap

    async def _snapshot_head(self, ws: Workspace, message: str) -> str:
        if not (ws.path / ".jj").is_dir():  # an agent deleted it: the files on disk are all there is
            await self._adopt(ws, "its .jj directory was deleted")
        await self._take_in_repositories(ws)
        try:
            wc = await self._wc(ws)
        except VcsError as exc:
            if not any(sign in str(exc) for sign in _UNSNAPSHOTTABLE):
                raise
            await self._adopt(ws, str(exc))
            wc = await self._wc(ws)
        return await self._settle_head(ws, wc, message)

    async def _settle_head(self, ws: Workspace, wc: _Commit, message: str, in_workspace: bool = True) -> str:
        """The task's head, from its workspace's working-copy commit ``wc`` (described with
        ``message`` when it holds work and no description), and its bookmark pointed at it. Not
        ``in_workspace``: the workspace's directory is gone, and jj is asked from corral's own."""
        if not wc.empty:
            if not wc.subject:
                if in_workspace:
                    await self.jj("describe", "-r", "@", "-m", message, cwd=ws.path, workspace=True,
                                  exclude=ws.exclude)
                    wc = await self._wc(ws)
                else:
                    await self.jj("describe", "-r", wc.commit, "-m", message)
                    wc = await self._commit_at("", f"{_quote(ws.name)}@") or wc
            head = wc.commit
            self._change_of[head] = wc.change
        elif wc.subject or len(wc.parents) != 1:
            head = wc.commit
            self._change_of[head] = wc.change
        elif ws.base_commit and wc.parents == [ws.base_commit]:
            head = ws.base_commit  # the agent changed nothing
        else:
            head = wc.parents[0]  # the agent committed its work itself (jj commit): its change is @-
        await self.jj("bookmark", "set", ws.ref, "-r", head, "--allow-backwards")
        return head

    async def _take_in_repositories(self, ws: Workspace) -> None:
        """Make the files of every git repository an agent made in ``ws`` (``git init`` in a folder)
        the task's: jj snapshots no folder holding a ``.git``, so they would be in no commit, and
        once committed, the next snapshot would drop them again. Each ``.git`` goes to the run's
        folder (its history kept), or, with no commit in it, away."""
        for rel in await anyio.to_thread.run_sync(_repositories_under, ws.path):
            note = await keep_repository_history(self.state_dir, ws, rel)
            if not note:
                await anyio.to_thread.run_sync(shutil.rmtree, ws.path / rel / ".git", True)
            self._notices.append(note or f"{ws.task}: {rel}/ was a git repository with no commit (made by the "
                                         "agent): its files are committed as the task's")

    async def _adopt(self, ws: Workspace, why: str) -> None:
        """(Under the repo lock.) Make a workspace jj can no longer snapshot a working one again, every
        file on disk committed, without writing a file and without divergent changes. jj's own way out
        (``workspace update-stale``) snapshots a stale workspace at its old operation, which gives the
        change two versions, then overwrites the files on disk with the other one; a forgotten
        workspace has no way out at all. Instead:

        1. the workspace's last working-copy commit W is read at the operation its directory last
           recorded (``.jj/working_copy/checkout``);
        2. the workspace is registered afresh (forgotten first if it still is): ``workspace add
           --ignore-working-copy`` gives a state with nothing checked out, on an empty child of the root
           commit, and that state replaces the directory's ``.jj``; its snapshot C holds exactly the
           files on disk;
        3. the work S is a commit on W's parents with C's files, rebased onto their current versions
           when they were rewritten (a squash into base; the old versions, visible again for a
           moment, are hidden again), described as W was;
        4. the workspace is set to edit S, C and the older versions of W's change are abandoned, and
           ``update-stale`` checks out only what the rebase changed (the disk equals the state it
           recorded, so nothing is snapshotted twice).
        """
        op, _ = _checkout_state(ws.path)
        registered = ws.name in await self._workspaces()
        # with its .jj gone, W is what jj records of the workspace now (when it still knows it)
        old = await self._commit_at(op, f"{_quote(ws.name)}@") if (op or registered) else None
        parents = old.parents if old else [ws.base_commit or ws.head or "root()"]
        at_op = ("--at-op", op) if op else ()
        description = (await self.jj(*at_op, "log", "-r", old.commit, "--no-graph", "-T", "description")).out \
            if old else ""
        if registered:
            await self.jj("workspace", "forget", ws.name)
        tmp = Path(tempfile.mkdtemp(prefix=".corral-adopt-", dir=ws.path.parent))
        try:
            await self._register(ws.name, tmp)
            if os.path.lexists(ws.path / ".jj"):
                os.rename(ws.path / ".jj", tmp / "stale-jj")
            os.rename(tmp / ".jj", ws.path / ".jj")
            (ws.path / ".jj" / "repo").write_text(str(self.repo_dir), encoding="utf-8")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        files = await self._wc(ws)
        current = [await self.follow(p) for p in parents]  # before a child makes the old versions visible
        token = secrets.token_hex(6)
        await self.jj("new", "--no-edit", *parents, "-m", f"corral: adopting {ws.task} ({token})")
        found = await self.txn().commits(f"children({parents[-1]}) & description(substring:{_quote(token)})")
        if len(found) != 1:
            raise VcsError(f"jj: the adopted commit of {ws.task} was not found")
        work = found[0].change
        await self.jj("restore", "--from", files.commit, "--into", work)
        if current != parents:
            await self.jj("rebase", "-r", work, self.onto, *current)
            # the old versions the new commit was made on became visible again (jj keeps a parent whose
            # child moves away): hide them, or their changes would be divergent
            await self.jj("abandon", _union([p for p, c in zip(parents, current) if p != c]))
        await self.jj("describe", "-r", work, "-m", description)
        await self.jj("--ignore-working-copy", "edit", work, cwd=ws.path, workspace=True)
        older = f"present(change_id({old.change}))" if old else "none()"
        await self.jj("abandon", f"({files.commit} | {older}) ~ {work}")
        await self.jj("workspace", "update-stale", cwd=ws.path, workspace=True)
        self._notices.append(f"{ws.task}: jj could no longer snapshot its workspace ({why.split(': ', 1)[-1]}); its "
                             f"files were committed again, on {'the new version of ' if current != parents else ''}"
                             "its base")

    async def _commit_at(self, op: str, rev: str) -> _Commit | None:
        """``rev`` at operation ``op`` (at the current one when ``op`` is empty)."""
        at_op = ("--at-op", op) if op else ()
        res = await self.jj(*at_op, "log", "-r", f"present({rev})", "--no-graph", "-T", COMMIT_T, check=False)
        lines = res.lines() if res.ok else []
        return _Commit(lines[0]) if lines else None

    async def follow(self, commit: str) -> str:
        """The visible commit that now holds ``commit``'s change: jj rewrites commits in place (a squash
        into base gives base a new commit id and rebases everything on it), so a run that kept the
        old id would bring the old version back as a divergent change. ``commit`` itself when it is
        still visible, or when its change was abandoned or is divergent."""
        res = await self.jj("log", "-r", f"present({commit})", "--no-graph", "-T",
                            'change_id ++ "\\t" ++ hidden ++ "\\n"', check=False)
        change, hidden = (res.lines()[0].split("\t") + [""])[:2] if res.ok and res.lines() else ("", "false")
        if hidden != "true":
            return commit
        res = await self.jj("log", "-r", f"present(change_id({change}))", "--no-graph", "-T", 'commit_id ++ "\\n"',
                            check=False)
        ids = res.lines() if res.ok else []
        return ids[0] if len(ids) == 1 else commit

    async def describe(self, ws: Workspace) -> Snapshot:
        head = ws.head or ws.base_commit
        base = ws.base_commit or head
        change = self._change_of.get(head)
        if change is None:
            info = await self.txn().commits(head)
            change = self._change_of[head] = info[0].change if info else ""
        files, added, removed = await self._diff_stats(base, head)
        return Snapshot(commit=head, files=files, added=added, removed=removed, change_id=change)

    async def _files(self, frm: str, to: str) -> list[str]:
        key = (frm, to)
        if key not in self._files_memo:
            files = await self._files_uncached(frm, to)
            if not (_HEX_RE.match(frm) and _HEX_RE.match(to)):
                return files
            self._files_memo[key] = files
        return list(self._files_memo[key])

    async def _files_uncached(self, frm: str, to: str) -> list[str]:
        if self._diff_template:
            res = await self.jj("diff", "--from", frm, "--to", to, "-T", 'path ++ "\\n"', check=False)
            if res.ok:
                return sorted(set(res.lines()))
            if "unexpected argument" not in res.err:
                raise VcsError(f"jj diff: {_short_err(res)}")
            self._diff_template = False  # a jj without `diff -T`
        # --name-only prints paths relative to the current directory: run at the repository root
        res = await self.jj("diff", "--from", frm, "--to", to, "--name-only")
        return sorted(set(res.lines()))

    async def _diff_stats(self, frm: str, to: str) -> tuple[list[str], int, int]:
        if frm == to:
            return [], 0, 0
        if (frm, to) in self._stats_memo:
            files, added, removed = self._stats_memo[(frm, to)]
            return list(files), added, removed
        files = await self._files(frm, to)
        res = await self.jj("diff", "--git", "--context", "0", "--from", frm, "--to", to)
        added = removed = 0
        in_hunk = False
        for line in res.out.splitlines():
            if line.startswith("diff --git "):
                in_hunk = False
            elif line.startswith("@@"):
                in_hunk = True
            elif in_hunk and line.startswith("+"):
                added += 1
            elif in_hunk and line.startswith("-"):
                removed += 1
        if _HEX_RE.match(frm) and _HEX_RE.match(to):
            self._stats_memo[(frm, to)] = (list(files), added, removed)
        return files, added, removed

    async def diff(self, ws: Workspace, context: int = 3) -> str:
        head = ws.head or ws.base_commit
        res = await self.jj("diff", "--git", "--context", str(context), "--from", ws.base_commit, "--to", head,
                            check=False)
        return res.out

    async def head_of(self, ws: Workspace) -> str:
        if _is_integration(ws):
            return ws.head
        wc = await self._wc(ws)
        if wc.empty and not wc.subject and len(wc.parents) == 1:
            return wc.parents[0]
        return wc.commit

    # -------------------------------------------------------------------------------- forecast
    async def trial_merge(self, parents: Sequence[str], op: str | None = None) -> list[str] | None:
        """Conflicting paths of merging ``parents`` (None: merges cleanly), from a merge commit made in
        an operation that never joins the op log (or, on old jj, a commit abandoned at once)."""
        if self.detached_ops:
            return await self._trial_merge(parents, op)
        async with self.mutating():  # attached: the trial is a real operation, abandoned at once
            return await self._trial_merge(parents, None)

    async def _trial_merge(self, parents: Sequence[str], op: str | None) -> list[str] | None:
        token = secrets.token_hex(8)
        txn = self.txn(op)
        found: list[_Commit] = []
        try:
            await txn.run("new", "--no-edit", *parents, "-m", f"corral: trial merge {token}")
            found = await txn.commits(f"children({parents[-1]}) & description(substring:{_quote(token)})", made=True)
            if len(found) != 1:
                raise VcsError(f"jj: trial merge of {', '.join(p[:12] for p in parents)} not found")
            if not found[0].conflict:
                return None
            return await txn.conflict_files(found[0].commit)
        finally:
            with anyio.CancelScope(shield=True):
                txn.created = [c.change for c in found]
                await txn.rollback()

    async def forecast(self, base: str, heads: dict[str, str], base_commits: dict[str, str] | None = None) -> Forecast:
        base_tip = await self.resolve(base)
        op = await self.current_op() if self.detached_ops else None

        async def changed_files(start: str, head: str) -> list[str]:
            return await self._files(start, head) if start != head else []

        async def trial(a: str, b: str) -> list[str] | None:
            try:
                return await self.trial_merge([a, b], op)
            except VcsError:
                return None  # e.g. one head descends from the other: no merge to try

        return await run_forecast(base_tip, heads, base_commits or {}, changed_files, trial)

    # ------------------------------------------------------------------------------ integration
    async def integrate(self, run: str, base_commit: str, heads: list[tuple[str, str]], strategy: str,
                        root: str | None) -> tuple[Workspace, list[MergeOutcome]]:
        if strategy not in ("merge", "rebase", "squash"):
            raise VcsError(f"unknown merge strategy {strategy!r}")
        ref = self.ref_name(run, "integration")
        # merge what exists now: commits a rewrite replaced would come back as divergent changes
        base_commit = await self.follow(base_commit)
        heads = [(task, await self.follow(head)) for task, head in heads]
        # registered before its bookmark exists: a kill from here on leaves a record clean-up finds
        reserved = self.registry.reserve(root, run=run, task="integration", role="integration", ref=ref, vcs="jj",
                                         base_commit=base_commit, name=self.workspace_name(run, "integration"))
        try:
            return await self._integrate(run, ref, base_commit, heads, strategy, root, reserved)
        except BaseException:
            with anyio.CancelScope(shield=True):
                rec = reserved[1]
                if self.registry.get(rec.key) is not None:
                    await self.drop_half_made(self.workspace_of(rec))
                    self.registry.drop(rec)
            raise

    async def _integrate(self, run: str, ref: str, base_commit: str, heads: list[tuple[str, str]], strategy: str,
                         root: str | None, reserved: tuple[Path, Record]) -> tuple[Workspace, list[MergeOutcome]]:
        outcomes: list[MergeOutcome] = []
        created: list[str] = []
        async with self.mutating():
            start = await self.current_op() if self.detached_ops else None
            txn = self.txn(start)
            tip = base_commit
            merged: list[tuple[str, str]] = []  # (task, head) merged so far (merge strategy)
            merge_change = ""
            made: list[str] = []  # commits of the chain's steps
            for task, head in heads:
                step = txn.fork()
                try:
                    new_tip, change_ids, conflicts = await self._merge_step(step, run, task, head, strategy,
                                                                            base_commit, tip, merged)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await step.rollback()
                    raise
                if conflicts is not None:
                    await step.rollback()
                    outcomes.append(MergeOutcome(task, False, conflict_files=conflicts or ["(unknown)"]))
                    continue
                txn = step
                made += step.made
                if strategy == "merge" and change_ids:
                    # the new merge commit replaces the previous one: drop the previous (detached: the
                    # whole chain is a trial, replaced below by the one merge commit that stays)
                    if merge_change and not self.detached_ops:
                        await txn.run("abandon", merge_change)
                        created.remove(merge_change)
                    merge_change = change_ids[0]
                    merged.append((task, head))
                created += change_ids
                tip = new_tip
                outcomes.append(MergeOutcome(task, True, tip))
            if strategy == "merge" and self.detached_ops and merged:
                trial, txn = txn, self.txn(start)
                final = await self._merge_commit(txn, run, base_commit, merged)
                tip, created = final.commit, [final.change]
                trial.made = made
                await trial.rollback()
                for o in outcomes:
                    o.commit = tip if o.ok else o.commit
            if created:
                await txn.run("bookmark", "set", ref, "-r", tip, "--allow-backwards")
            else:
                await txn.run("bookmark", "set", ref, "-r", base_commit, "--allow-backwards")
            await txn.integrate()
        self._created[ref] = created
        ws = await self._new_workspace(run, "integration", ref, base_commit, tip, root, reserved)
        return ws, outcomes

    async def _merge_commit(self, txn: _Txn, run: str, base_commit: str, heads: list[tuple[str, str]]) -> _Commit:
        """``jj new base A B ...``: the merge commit of the tasks ``heads`` (task, head) onto base."""
        token = secrets.token_hex(6)
        names = ", ".join(t for t, _ in heads)
        await txn.run("new", "--no-edit", base_commit, *(h for _, h in heads),
                      "-m", f"corral: merge {names}\n\nrun {run} ({token})")
        found = await txn.commits(f"children({heads[-1][1]}) & description(substring:{_quote(token)})", made=True)
        if len(found) != 1:
            raise VcsError(f"jj: the merge commit for {heads[-1][0]} was not found")
        txn.created = [found[0].change]
        return found[0]

    async def _merge_step(self, txn: _Txn, run: str, task: str, head: str, strategy: str, base_commit: str,
                          tip: str, merged: list[tuple[str, str]]) -> tuple[str, list[str], list[str] | None]:
        """One task into the integration chain. Returns (new tip, change ids made, conflicting paths or
        None when clean)."""
        chain = await txn.commits(f"{base_commit}..{head}")
        if not chain:
            return tip, [], None  # nothing to merge
        token = secrets.token_hex(6)
        if strategy == "merge":
            found = await self._merge_commit(txn, run, base_commit, merged + [(task, head)])
            if found.conflict:
                return tip, [], await txn.conflict_files(found.commit)
            return found.commit, [found.change], None
        # rebase / squash: copy the task's commits onto a fresh anchor child of the tip (so the copies
        # are found as the anchor's descendants), then drop the anchor (rebase) or squash into it
        subject = f"corral: {task} (squashed)" if strategy == "squash" else "corral: anchor"
        await txn.run("new", "--no-edit", tip, "-m", f"{subject}\n\nrun {run} ({token})")
        anchor = await txn.commits(f"children({tip}) & description(substring:{_quote(token)})", made=True)
        if len(anchor) != 1:
            raise VcsError(f"jj: the {strategy} anchor for {task} was not found")
        anchor_change = anchor[0].change
        txn.created = [anchor_change]
        await txn.run("duplicate", _union([c.commit for c in chain]), self.onto, anchor[0].commit)
        copies = await txn.commits(f"{anchor_change}+::", made=True)
        txn.created = [anchor_change] + [c.change for c in copies]
        if strategy == "squash":
            if copies:
                await txn.run("squash", "--from", _union([c.change for c in copies]), "--into", anchor_change,
                              "-m", f"{subject}\n\nrun {run}")
            result = await txn.commits(anchor_change, made=True)
            txn.created = [anchor_change]
            if len(result) != 1:
                raise VcsError(f"jj: the squashed commit for {task} was not found")
            if result[0].conflict:
                return tip, [], await txn.conflict_files(result[0].commit)
            return result[0].commit, [anchor_change], None
        await txn.run("abandon", anchor_change)
        ids = [c.change for c in copies]
        txn.created = ids
        after = await txn.commits(_union(ids))
        bad = [c for c in after if c.conflict]
        if bad:
            files: set[str] = set()
            for c in bad:
                files.update(await txn.conflict_files(c.commit))
            return tip, [], sorted(files)
        top = await txn.commits(f"heads({_union(ids)})")
        if len(top) != 1:
            raise VcsError(f"jj: the rebased commits of {task} have {len(top)} heads")
        return top[0].commit, ids, None

    # ------------------------------------------------------------------------- conflict resolution
    async def redo_merge(self, ws: Workspace, task: str, head: str, strategy: str) -> list[str]:
        """Merge ``head`` into the integration workspace ``ws`` again, as its working copy (``jj new
        TIP HEAD``): a conflict commit whose files hold git-style markers (jj reads them back when it
        snapshots) for a resolver. Returns the conflicted files (none: it merges cleanly now, and
        is the new head)."""
        if strategy != "merge":
            raise VcsError(f"a conflict of merge strategy {strategy!r} cannot be handed to a resolver in a jj "
                           f"repository (merge can)")
        head = await self.follow(head)
        async with self.mutating():
            await self.jj("--config", "ui.conflict-marker-style=git", "new", ws.head, head, "-m",
                          f"corral: merge {task}", cwd=ws.path, workspace=True, exclude=ws.exclude)
            wc = await self._wc(ws)
        self._created.setdefault(ws.ref, []).append(wc.change)
        if not wc.conflict:
            await self._merged_at(ws, wc.commit)
            return []
        self._resolving[str(ws.path)] = wc.change
        files = await self.txn().conflict_files(wc.commit)
        return files or ["(unknown)"]

    async def conclude_merge(self, ws: Workspace, task: str, head: str, strategy: str, before: str,
                             files: list[str]) -> str:
        """After a resolver worked on the conflict :meth:`redo_merge` left: its edits snapshotted (a
        resolver that ran ``jj commit`` or ``jj new`` left its resolution in ``@-``), checked to hold no
        conflict and no markers in ``files``, and to have both ``before`` and ``head`` in its
        history; the integration bookmark moved there. Returns the new head of ``ws``; raises
        :class:`VcsError` saying why the conflict is not resolved."""
        wc = await self._wc(ws)
        new = wc.parents[0] if wc.empty and not wc.subject and len(wc.parents) == 1 else wc.commit
        if new == before:
            raise VcsError("nothing was committed")
        left = await self.jj("log", "-r", f"conflicts() & ({before}..{new})", "--no-graph", "-T", COMMIT_T)
        if left.lines():
            conflicted = set()
            for c in map(_Commit, left.lines()):
                conflicted.update(await self.txn().conflict_files(c.commit))
            raise VcsError(f"conflicts left in {', '.join(sorted(conflicted)) or ', '.join(files)}")
        marked = [f for f in files
                  if _MARKER_RE.search((await self.jj("file", "show", "-r", new, f"root-file:{_quote(f)}",
                                                      check=False)).out)]
        if marked:
            raise VcsError(f"conflict markers left in {', '.join(marked)}")
        if not (await self._descends(new, head) and await self._descends(new, before)):
            raise VcsError(f"{task}'s work is not merged in what was committed")
        made = await self.jj("log", "-r", f"{before}..{new}", "--no-graph", "-T", 'change_id ++ "\\n"')
        self._created.setdefault(ws.ref, []).extend(c for c in made.lines() if c not in self._created[ws.ref])
        self._resolving.pop(str(ws.path), None)
        await self._merged_at(ws, new)
        return new

    async def _merged_at(self, ws: Workspace, new: str) -> None:
        """The integration's bookmark and head at ``new``, with a fresh working copy on it as the
        integration had before: what verify writes there is never part of what lands."""
        async with self.mutating():
            await self.jj("bookmark", "set", ws.ref, "-r", new, "--allow-backwards")
            await self.jj("new", new, cwd=ws.path, workspace=True, exclude=ws.exclude)
        ws.head = new

    async def undo_merge(self, ws: Workspace, before: str) -> None:
        """Put the integration workspace back at ``before`` (a resolver that failed): a fresh working
        copy there, and the merge :meth:`redo_merge` made abandoned with what the resolver made on
        it (a copy of work kept on the tasks' bookmarks)."""
        change = self._resolving.pop(str(ws.path), "")
        async with self.mutating():
            await self.jj("new", before, cwd=ws.path, workspace=True, exclude=ws.exclude)
            if change:
                await self.jj("abandon", f"{change}:: ~ ::{KEEP}", check=False)
                if change in self._created.get(ws.ref, []):
                    self._created[ws.ref].remove(change)
        ws.head = before

    # ----------------------------------------------------------------------------------- landing
    async def land(self, base: str, old: str, new: str) -> LandOutcome:
        """Move bookmark ``base`` to ``new``, only if it still holds ``old`` (or the version of ``old``'s
        change that a rewrite, such as a squash into base, made of it) and ``new`` descends from it;
        and only if no agent changed what is not its own (:meth:`guard`, which also puts back what it
        can and says so)."""
        said = "; ".join(await self.guard())
        also = f"; {said}" if said else ""
        if self._unrestored:
            return LandOutcome(False, "agents changed what is not theirs: " + "; ".join(self._unrestored), old, new)
        if not await self.is_bookmark(base):
            if f"bookmark {base}" in self._start_view:
                return LandOutcome(False, f"bookmark {base} no longer exists (deleted or renamed during the run)"
                                   + also, old, new)
            self._not_bookmark.add(base)
            return LandOutcome(False, f"base {base!r} is not a bookmark, so there is nothing to move", old, new)
        followed = await self.follow(old)
        async with self.mutating():
            current = (await self.bookmarks(f"exact:{base}")).get(base)
            if current is None:
                return LandOutcome(False, f"bookmark {base} is conflicted; resolve it first", old, new)
            if current != followed or not await self._descends(new, current):
                gained = current != followed and await self._descends(current, followed)
                return LandOutcome(False, f"{base} moved during the run (now {current[:12]}, was {old[:12]})" + also,
                                   old, new, "moved" if gained else "rewritten")
            res = await self.jj("bookmark", "set", base, "-r", new, check=False)
            if not res.ok:
                return LandOutcome(False, f"moving {base} refused: {_short_err(res)}", old, new)
            after = (await self.bookmarks(f"exact:{base}")).get(base)
            if after != new:
                return LandOutcome(False, f"{base} did not move to {new[:12]} (a concurrent change?)", old, new)
        return LandOutcome(True, f"{base} moved {current[:12]} -> {new[:12]}" + also, current, new)

    async def _descends(self, commit: str, ancestor: str) -> bool:
        res = await self.jj("log", "-r", f"{ancestor} & ::{commit}", "--no-graph", "-T", 'commit_id ++ "\\n"',
                            check=False)
        return res.ok and bool(res.lines())

    async def merge_base_into(self, ws: Workspace, tip: str) -> list[str]:
        """Base's new ``tip`` merged into the integration ``ws``: a merge commit of its head and
        ``tip`` (conflicted: rolled back, leaving no trace), its bookmark moved there, and its working
        copy moved onto it (what verify left there is not snapshotted)."""
        token = secrets.token_hex(6)
        async with self.mutating():
            txn = self.txn(await self.current_op() if self.detached_ops else None)
            try:
                await txn.run("new", "--no-edit", ws.head, tip, "-m",
                              f"corral: merge {tip[:12]}, where base moved during the run\n\n({token})")
                found = await txn.commits(f"children({tip}) & description(substring:{_quote(token)})", made=True)
                if len(found) != 1:
                    raise VcsError(f"jj: the merge of {tip[:12]} into {ws.ref} was not found")
                txn.created = [found[0].change]
                if found[0].conflict:
                    files = await txn.conflict_files(found[0].commit)
                    await txn.rollback()
                    return files or ["(unknown)"]
                await txn.run("bookmark", "set", ws.ref, "-r", found[0].commit, "--allow-backwards")
                await txn.integrate()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await txn.rollback()
                raise
            self._created.setdefault(ws.ref, []).append(found[0].change)
            await self.jj("new", found[0].commit, "--ignore-working-copy", cwd=ws.path, workspace=True)
        async with self.checkouts:
            await self.jj("workspace", "update-stale", cwd=ws.path, workspace=True)
        ws.head = found[0].commit
        return []

    async def conflict_hint(self, base: str, ref: str, files: list[str]) -> str:
        return (f"to land by hand: jj new {base} {ref}, resolve the conflicts in {', '.join(files[:5])}, then "
                f"jj bookmark set {base} -r @ (and verify the result)")

    def land_hint(self, base: str, ref: str) -> str:
        if base in self._not_bookmark:
            return f"the result is on bookmark {ref}: to land by hand, move a bookmark there (jj bookmark set NAME -r {ref})"
        return f"to land by hand: jj bookmark set {base} -r {ref}"

    # ----------------------------------------------------------------------------------- cleanup
    async def _protected(self) -> str:
        """A revset of what the user keeps: bookmarks other than corral's, remote bookmarks, tags and
        the working copies of workspaces other than corral's (for :meth:`holds_unmerged_work`)."""
        marks = await self.bookmarks()
        keep = [t for n, t in marks.items() if t and not n.startswith("corral/")]
        keep += [t for n, (_, t) in (await self._workspaces()).items() if t and not n.startswith("corral-")]
        return f"(remote_bookmarks() | tags() | {_union(sorted(set(keep)))})"

    async def remove_workspace(self, ws: Workspace, keep_ref: bool) -> None:
        """Forget the workspace and delete its directory. A kept task's work is snapshotted onto its
        bookmark first (a workspace forgotten or gone stale meanwhile is adopted for that), so removal
        never loses anything; when that fails the directory is kept and :class:`VcsError` says why. A
        kept bookmark exists afterwards, whatever happened to it. A discarded task's change is
        abandoned."""
        with anyio.CancelScope(shield=True):
            if keep_ref and not _is_integration(ws):  # (a directory gone or emptied: what jj recorded of it)
                try:
                    await self.snapshot(ws, f"corral: {ws.task}")
                except VcsError as exc:
                    raise VcsError(f"{ws.path} is left in place, with files in no commit: {exc}") from None
            registered = bool(ws.name) and ws.name in await self._workspaces()
            async with self.mutating():
                if keep_ref and ws.head and not await self.ref_exists(ws.ref):
                    await self.jj("bookmark", "set", ws.ref, "-r", await self.follow(ws.head), "--allow-backwards")
                if registered:
                    await self.jj("workspace", "forget", ws.name, check=False)
                if ws.path.exists():
                    shutil.rmtree(ws.path, ignore_errors=True)
                if self.colocated and self._no_colocate is False:
                    # a colocated workspace is also a git worktree: drop git's record of it
                    await _run(["git", "worktree", "prune"], str(self.root), None)
                if not keep_ref:
                    await self._drop_work(ws)
            if ws.path.exists():
                raise VcsError(f"workspace {ws.path} not fully removed: its directory remains")
            if ws.key:
                self.registry.drop(ws.key)

    async def drop_keep_refs(self, commits: Sequence[str]) -> None:
        """Delete git's ``refs/jj/keep/<commit>`` of commits no operation in the log refers to (trial
        merges, rolled-back integration steps): jj writes one for every commit so that git's gc keeps
        it, which makes ``git log --all`` show them in a colocated repository."""
        if self.colocated and commits:
            lines = "".join(f"delete refs/jj/keep/{c}\n" for c in dict.fromkeys(commits) if _HEX_RE.match(c))
            await _run(["git", "update-ref", "--stdin"], str(self.root), None, lines.encode())

    async def delete_ref(self, ref: str) -> None:
        async with self.mutating():
            await self.jj("bookmark", "delete", f"exact:{ref}", check=False)

    async def drop_work(self, ws: Workspace) -> None:
        async with self.mutating():
            await self._drop_work(ws)

    async def _drop_work(self, ws: Workspace) -> None:
        """Delete the workspace's bookmark and abandon the commits it made (under the repo lock)."""
        await self.jj("bookmark", "delete", f"exact:{ws.ref}", check=False)
        if _is_integration(ws) and ws.ref in self._created:
            mine = self._created.pop(ws.ref)
        elif ws.base_commit and ws.head and ws.head != ws.base_commit:
            mine = [f"({await self.follow(ws.base_commit)}..{await self.follow(ws.head)})"]
        else:
            mine = []
        if mine:
            # never abandon what any bookmark, tag or working copy still holds
            revset = f"{_union(mine)} ~ ::{KEEP}"
            await self.jj("abandon", revset, check=False)

    async def legacy_leftovers(self) -> list[Record]:
        """Workspaces an older corral made before the registry existed: a ``corral-<run>-<task>``
        workspace recorded as that task's workspace in run's journal (both must agree)."""
        registered = {rec.name for rec in self.registry.records()}
        known: dict[str, tuple[str, str, dict[str, Any]]] = {}
        runs_dir = self.state_dir / "runs"
        if runs_dir.is_dir():
            for d in runs_dir.iterdir():
                try:
                    data = json.loads((d / "run.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                for task, info in (data.get("tasks") or {}).items():
                    if isinstance(info, dict) and info.get("workspace"):
                        known[os.path.realpath(info["workspace"])] = (d.name, task, info)
        out = []
        for name, (root, _) in (await self._workspaces()).items():
            hit = known.get(os.path.realpath(root))
            if not name.startswith("corral-") or name in registered or hit is None:
                continue
            run, task, info = hit
            if name != self.workspace_name(run, task):
                continue
            pid = 0
            try:
                pid = int(json.loads((runs_dir / run / "run.json").read_text(encoding="utf-8")).get("pid") or 0)
            except (OSError, ValueError):
                pass
            out.append(Record(key="", run=run, task=task, role="task", path=root,
                              ref=str(info.get("branch") or self.ref_name(run, task)), vcs="jj",
                              base_commit=str(info.get("base_commit") or ""), state=READY, pid=pid, name=name))
        return out

    async def vet_leftover(self, rec: Record) -> str:
        """Why corral must not act on ``rec`` ("" when it may): the user's own workspace, or a
        workspace of that name that jj roots elsewhere."""
        why = await super().vet_leftover(rec)
        if why:
            return why
        path = Path(rec.path)
        if os.path.realpath(path) == os.path.realpath(self.root):
            return "it is the repository's own working copy"
        found = (await self._workspaces()).get(rec.name)
        if found is None:
            if path.is_dir() and any(p.name != ".jj" for p in path.iterdir()) and not self._ours(path):
                return "jj no longer knows it as a workspace and its .jj is not this repository's"
            return ""  # forgotten (an agent's `jj workspace forget`): adopted, as a run does, when its work is kept
        if os.path.realpath(found[0]) != os.path.realpath(path):
            return f"jj's workspace {rec.name} is not at the path corral registered"
        return ""

    async def drop_half_made(self, ws: Workspace) -> None:
        """Forget a workspace that never became ready, delete its directory, and let go of what was
        made for it (an integration killed before its workspace existed: its bookmark and merges)."""
        async with self.mutating():
            if ws.name in await self._workspaces():
                await self.jj("workspace", "forget", ws.name, check=False)
            target = (await self.bookmarks(f"exact:{ws.ref}")).get(ws.ref)
            if target:
                ws.head = target
                await self._drop_work(ws)
        await anyio.to_thread.run_sync(shutil.rmtree, ws.path, True)

    async def holds_unmerged_work(self, ref: str, base_commit: str = "", base_branch: str = "") -> bool:
        target = (await self.bookmarks(f"exact:{ref}")).get(ref)
        if not target:
            return ref in await self.bookmarks(f"exact:{ref}")  # conflicted: keep it
        return await self._holds_work_at(target, base_commit)

    def _ours(self, path: Path) -> bool:
        """Whether the workspace directory ``path`` belongs to this repository: its ``.jj`` is gone
        (the run made the directory; an agent deleted it) or names this repository's store."""
        if not (path / ".jj").is_dir():
            return True
        try:  # (a file naming the store, relative to the .jj directory in newer jj)
            named = (path / ".jj" / "repo").read_text(encoding="utf-8").strip()
        except OSError:
            return False
        return os.path.realpath(path / ".jj" / named) == os.path.realpath(self.repo_dir)

    async def _last_working_copy(self, ws: Workspace) -> str | None:
        """The working-copy commit jj last recorded for ``ws``: from its workspace list, or, once an
        agent forgot the workspace, at the operation its directory last recorded (as :meth:`_adopt`
        reads it); None when neither tells."""
        found = (await self._workspaces()).get(ws.name)
        if found is not None:
            return found[1]
        op, _ = _checkout_state(ws.path)
        old = await self._commit_at(op, f"{_quote(ws.name)}@") if op else None
        return old.commit if old else None

    async def pending_changes(self, ws: Workspace) -> list[str]:
        """Read without snapshotting (``clean --dry-run`` writes no operation): with its ``.jj`` gone,
        every file on disk (what :meth:`snapshot` then commits); else the files added or deleted
        since jj's last snapshot of it, and those written after that snapshot."""
        on_disk = _files_under(ws.path)
        if not (ws.path / ".jj").is_dir():
            return sorted(on_disk)
        last = await self._last_working_copy(ws)
        stamp = ws.path / ".jj" / "working_copy" / "tree_state"
        if last is None or not stamp.exists():
            return []
        # (paths relative to the directory jj runs in: the workspace of the repository it reads)
        known = set((await self.jj("file", "list", "-r", last, cwd=self._engine or self.root)).lines())
        since = stamp.stat().st_mtime
        return sorted((on_disk ^ known) | {p for p in on_disk & known if (ws.path / p).stat().st_mtime > since})

    async def salvage_keeps(self, ws: Workspace, pending: list[str]) -> bool | None:
        """Whether removing ``ws`` with its work kept leaves its bookmark holding work of its own
        (:meth:`snapshot` makes the bookmark then); None when it makes none (its directory is gone or
        empty, and jj knows the workspace no more)."""
        if pending:
            return True
        last = await self._last_working_copy(ws)  # (what snapshot takes for the work)
        if last is None:
            return None if not holds_anything(ws.path) else False
        return await self._holds_work_at(last, ws.base_commit)

    async def _holds_work_at(self, target: str, base_commit: str) -> bool:
        """Whether ``target`` has non-empty commits of its own: not on a protected bookmark or base."""
        also = f" | {base_commit}" if base_commit else ""
        res = await self.jj("log", "-r", f"(::{target} ~ ::({await self._protected()}{also})) ~ empty()", "-n", "1",
                            "--no-graph", "-T", 'commit_id ++ "\\n"', check=False)
        return not res.ok or bool(res.lines())



def _refused_files(err: str) -> list[str]:
    """The files jj's snapshot warning lists ("Refused to snapshot some files:", then one line each:
    ``  PATH: 1.1GiB (1153433600 bytes); the maximum size allowed is ...``)."""
    out: list[str] = []
    lines = err.splitlines()
    for i, line in enumerate(lines):
        if "Refused to snapshot some files" in line:
            for item in lines[i + 1:]:
                m = _REFUSED_RE.match(item)
                if m is None:
                    break
                out.append(m.group(1))
    return out


def _files_under(root: Path) -> set[str]:
    """Every file below ``root`` (its ``.jj`` and any ``.git`` aside), as paths relative to it."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".jj" in dirnames:
            dirnames.remove(".jj")
        if ".git" in dirnames:
            dirnames.remove(".git")
        rel = os.path.relpath(dirpath, root)
        out.update(name if rel == "." else f"{rel}/{name}" for name in filenames if name != ".git")
    return out


def _repositories_under(root: Path) -> list[str]:
    """The folders below ``root`` (not ``root`` itself) holding a ``.git``, innermost first, as paths
    relative to it; never inside ``.jj``."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in (".jj", ".git")]
            continue
        if ".git" in dirnames or ".git" in filenames:
            found.append(os.path.relpath(dirpath, root))
        if ".git" in dirnames:
            dirnames.remove(".git")
    return sorted(found, key=lambda rel: -rel.count("/"))


def _dead_engine_locks(engines: Path) -> list[Path]:
    """The lock files under ``engines`` no process holds (this process's own, held through another
    open file, is held)."""
    dead = []
    for lock in engines.glob("corral-engine-*.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            dead.append(lock)
        except OSError:
            continue  # alive
        finally:
            os.close(fd)
    return dead


@contextlib.contextmanager
def _git_index_kept(root: Path) -> Any:
    """Around a jj command run in the user's workspace at ``root``: when that is colocated, jj resets
    its git index (what the user staged with git), even with ``--ignore-working-copy``; the index is
    put back as it was when git's HEAD is where it was (the staged changes are still on the same
    commit)."""
    git = root / ".git"
    try:
        head, index = (git / "HEAD").read_bytes(), (git / "index").read_bytes()
    except OSError:  # (not colocated, or nothing staged ever)
        yield
        return
    yield
    try:
        if (git / "HEAD").read_bytes() == head and (git / "index").read_bytes() != index:
            tmp = git / f"index.corral-{os.getpid()}"
            tmp.write_bytes(index)
            os.replace(tmp, git / "index")
    except OSError:
        pass


def _checkout_state(path: Path) -> tuple[str, str]:
    """(operation id, workspace name) a workspace directory last recorded, from the protobuf in
    ``.jj/working_copy/checkout`` (field 2: operation id, field 3: workspace name); ("", "") when it
    cannot be read."""
    try:
        data = (path / ".jj" / "working_copy" / "checkout").read_bytes()
    except OSError:
        return "", ""
    fields: dict[int, bytes] = {}
    i = 0
    try:
        while i < len(data):
            key, i = _varint(data, i)
            if key & 7 == 2:
                size, i = _varint(data, i)
                fields[key >> 3] = data[i:i + size]
                i += size
            elif key & 7 == 0:
                _, i = _varint(data, i)
            else:
                break
    except IndexError:
        return "", ""
    return fields.get(2, b"").hex(), fields.get(3, b"").decode("utf-8", "replace")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _by(op: list[str]) -> str:
    """Who did it: ``task NAME's `DESCRIPTION` (operation ID)`` for an operation [id, workspace, ...]."""
    task = m.group(2) if (m := _LEFTOVER_RE.match(op[1].rstrip("@"))) else op[1]
    what = re.sub(r"\b([0-9a-f]{12})[0-9a-f]{20,}\b", r"\1", op[3])
    return f"task {task}'s `{what}` (operation {op[0][:12]})"


def _label(commit: str, bookmarks: str) -> str:
    """A commit as the user knows it: its bookmarks, else its short id."""
    names = [n for n in bookmarks.split(",") if n]
    return ", ".join(names) if names else commit[:12]


def _is_integration(ws: Workspace) -> bool:
    """The integration workspace of a merge (``integration``, ``integration-2``, ...)."""
    return ws.ref.endswith("/integration")


async def _run(argv: list[str], cwd: str, env: dict[str, str] | None,
               stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run a short command in its own process group; (exit code, stdout, stderr)."""
    try:
        if stdin is None:
            proc = await anyio.run_process(argv, cwd=cwd, env=env, check=False, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
        else:
            proc = await anyio.run_process(argv, cwd=cwd, env=env, check=False, input=stdin,
                                           start_new_session=True)
    except OSError as exc:
        return 127, "", f"Error: cannot run {argv[0]}: {exc.strerror or exc}"
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
