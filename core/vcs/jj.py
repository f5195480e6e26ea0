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
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import anyio
import anyio.to_thread

from .base import (
    Backend,
    CommandResult,
    Forecast,
    LandOutcome,
    Leftover,
    MergeOutcome,
    Snapshot,
    UsageError,
    VcsError,
    Workspace,
    cause_line,
    run_forecast,
)
from .registry import READY, Record

#: Options every engine jj command gets.
GLOBAL = ("--no-pager", "--color", "never")
#: Snapshots of corral's workspaces track every new file the agent wrote (whatever the user's
#: auto-track setting), and big files too: an agent's work must not stay behind untracked.
SNAPSHOT_CONFIG = (
    "--config", 'snapshot.auto-track="all()"',
    "--config", 'snapshot.max-new-file-size="1GiB"',
)


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
_HEX_RE = re.compile(r"^[0-9a-f]{40,}$")
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

    async def commits(self, revset: str) -> list[_Commit]:
        res = await self.query("log", "-r", revset, "--no-graph", "-T", COMMIT_T)
        return [_Commit(line) for line in res.lines()]

    async def conflict_files(self, rev: str) -> list[str]:
        res = await self.query("file", "list", "-r", rev, "-T", 'if(conflict, path ++ "\\n")', check=False)
        return sorted(set(res.lines()))

    async def integrate(self) -> None:
        if self.detached and self.op:
            await self.b.jj("op", "integrate", self.op)

    async def rollback(self) -> None:
        if not self.detached and self.created:
            await self.b.jj("abandon", _union(self.created), check=False)
            self.created = []


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
                 workspace: bool = False, user_wc: bool = False, exclude: list[str] | None = None) -> JjResult:
        """Run jj. On the repository (default) with ``--ignore-working-copy``; with ``workspace=True``
        inside one of corral's workspaces (``cwd``), snapshotting it first (new files matching ``exclude``,
        an agent's own state, left untracked); with ``user_wc=True`` on the repository the way a user's
        own command runs (a last resort, for a jj that insists)."""
        argv = ["jj", *GLOBAL]
        if workspace:
            argv += ["-R", str(cwd), *(_snapshot_config(exclude) if exclude else SNAPSHOT_CONFIG)]
        elif user_wc:
            argv += ["-R", str(self.root)]
        else:
            argv += ["-R", str(self.root), "--ignore-working-copy"]
        argv += list(args)
        env = await self.env()
        async with self._limiter:
            code, out, err = await _run(argv, str(cwd or self.root), env)
        res = JjResult(code, out, err)
        if check and not res.ok:
            raise VcsError(f"jj {' '.join(a for a in args[:3] if not a.startswith('--'))}: {_short_err(res)}")
        return res

    def take_notices(self) -> list[str]:
        """Things worth telling the user once (e.g. the --no-colocate fallback)."""
        out, self._notices = self._notices, []
        return out

    async def current_op(self) -> str:
        return (await self.jj("op", "log", "-n", "1", "--no-graph", "-T", 'id ++ "\\n"')).out.strip()

    def txn(self, op: str | None = None) -> _Txn:
        return _Txn(self, op, self.detached_ops)

    # ---------------------------------------------------------------------------------- queries
    @property
    def state_dir(self) -> Path:
        return self.repo_dir.parent / "corral"

    async def current_base(self) -> str:
        """``@-``, named by its bookmark when exactly one (not corral's own) points at it, so the
        result can land by moving that bookmark."""
        res = await self.jj("log", "-r", "@-", "--no-graph", "-T",
                            'local_bookmarks.map(|b| b.name()).join("\n") ++ "\n"', check=False)
        names = [n.strip() for n in res.out.splitlines() if n.strip() and not n.strip().startswith("corral/")] \
            if res.ok else []
        return names[0] if len(names) == 1 else "@-"

    async def resolve(self, rev: str) -> str:
        if not rev or rev.startswith("-") or "\0" in rev or "\n" in rev:
            raise UsageError(f"base {rev!r}: not a valid revision")
        res = await self.jj("log", "-r", rev, "-n", "2", "--no-graph", "-T", 'commit_id ++ "\\n"', check=False)
        if not res.ok:
            raise UsageError(f"base {rev!r}: no such revision in {self.root} ({_short_err(res)})")
        ids = res.lines()
        if len(ids) != 1:
            raise UsageError(f"base {rev!r}: resolves to {'no' if not ids else 'several'} commits in {self.root}; "
                             "give one revision (--base REV)")
        return ids[0]

    async def preflight(self) -> list[str]:
        return []

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
                    res = await self.jj("workspace", "add", *flags, "--name", name, "-r", rev, str(path), check=False,
                                        user_wc=user_wc)
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
        return await self._new_workspace(run, task, self.ref_name(run, task), base_commit, base_commit, root)

    async def _new_workspace(self, run: str, task: str, ref: str, base_commit: str, at: str,
                             root: str | None) -> Workspace:
        """A workspace at ``at`` in a fresh private directory; on any failure nothing is left behind."""
        name = self.workspace_name(run, task)
        role = "integration" if ref.endswith("/integration") else "task"
        path, rec = self.registry.reserve(root, run=run, task=task, role=role, ref=ref, vcs="jj",
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
        """The workspace's working-copy commit, after snapshotting what is on disk."""
        res = await self.jj("log", "-r", "@", "--no-graph", "-T", COMMIT_T, cwd=ws.path, workspace=True,
                            exclude=ws.exclude)
        lines = res.lines()
        if not lines:
            raise VcsError(f"jj: no working-copy commit in {ws.path}")
        return _Commit(lines[0])

    async def snapshot(self, ws: Workspace, message: str) -> Snapshot:
        """Snapshot the workspace, describe its change (when the agent left it undescribed) and point
        the task's bookmark at it."""
        if ws.path.is_dir():
            async with self.mutating():  # one operation at a time: no divergent operations to reconcile
                head = await self._snapshot_head(ws, message)
            ws.head = head
        return await self.describe(ws)

    async def _snapshot_head(self, ws: Workspace, message: str) -> str:
        wc = await self._wc(ws)
        if not wc.empty:
            if not wc.subject:
                await self.jj("describe", "-r", "@", "-m", message, cwd=ws.path, workspace=True, exclude=ws.exclude)
                wc = await self._wc(ws)
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
            found = await txn.commits(f"children({parents[-1]}) & description(substring:{_quote(token)})")
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
        outcomes: list[MergeOutcome] = []
        created: list[str] = []
        async with self.mutating():
            txn = self.txn(await self.current_op() if self.detached_ops else None)
            tip = base_commit
            merged: list[tuple[str, str]] = []  # (task, head) merged so far (merge strategy)
            merge_change = ""
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
                if strategy == "merge" and change_ids:
                    # the new merge commit replaces the previous one: drop the previous
                    if merge_change:
                        await txn.run("abandon", merge_change)
                        created.remove(merge_change)
                    merge_change = change_ids[0]
                    merged.append((task, head))
                created += change_ids
                tip = new_tip
                outcomes.append(MergeOutcome(task, True, tip))
            if created:
                await txn.run("bookmark", "set", ref, "-r", tip, "--allow-backwards")
            else:
                await txn.run("bookmark", "set", ref, "-r", base_commit, "--allow-backwards")
            await txn.integrate()
        self._created[ref] = created
        ws = await self._new_workspace(run, "integration", ref, base_commit, tip, root)
        return ws, outcomes

    async def _merge_step(self, txn: _Txn, run: str, task: str, head: str, strategy: str, base_commit: str,
                          tip: str, merged: list[tuple[str, str]]) -> tuple[str, list[str], list[str] | None]:
        """One task into the integration chain. Returns (new tip, change ids made, conflicting paths or
        None when clean)."""
        chain = await txn.commits(f"{base_commit}..{head}")
        if not chain:
            return tip, [], None  # nothing to merge
        token = secrets.token_hex(6)
        if strategy == "merge":
            names = ", ".join([t for t, _ in merged] + [task])
            await txn.run("new", "--no-edit", base_commit, *(h for _, h in merged), head,
                          "-m", f"corral: merge {names}\n\nrun {run} ({token})")
            found = await txn.commits(f"children({head}) & description(substring:{_quote(token)})")
            if len(found) != 1:
                raise VcsError(f"jj: the merge commit for {task} was not found")
            txn.created = [found[0].change]
            if found[0].conflict:
                return tip, [], await txn.conflict_files(found[0].commit)
            return found[0].commit, [found[0].change], None
        # rebase / squash: copy the task's commits onto a fresh anchor child of the tip (so the copies
        # are found as the anchor's descendants), then drop the anchor (rebase) or squash into it
        subject = f"corral: {task} (squashed)" if strategy == "squash" else "corral: anchor"
        await txn.run("new", "--no-edit", tip, "-m", f"{subject}\n\nrun {run} ({token})")
        anchor = await txn.commits(f"children({tip}) & description(substring:{_quote(token)})")
        if len(anchor) != 1:
            raise VcsError(f"jj: the {strategy} anchor for {task} was not found")
        anchor_change = anchor[0].change
        txn.created = [anchor_change]
        await txn.run("duplicate", _union([c.commit for c in chain]), self.onto, anchor[0].commit)
        copies = await txn.commits(f"{anchor_change}+::")
        txn.created = [anchor_change] + [c.change for c in copies]
        if strategy == "squash":
            if copies:
                await txn.run("squash", "--from", _union([c.change for c in copies]), "--into", anchor_change,
                              "-m", f"{subject}\n\nrun {run}")
            result = await txn.commits(anchor_change)
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

    # ----------------------------------------------------------------------------------- landing
    async def land(self, base: str, old: str, new: str) -> LandOutcome:
        if not await self.is_bookmark(base):
            self._not_bookmark.add(base)
            return LandOutcome(False, f"base {base!r} is not a bookmark, so there is nothing to move", old, new)
        async with self.mutating():
            current = (await self.bookmarks(f"exact:{base}")).get(base)
            if current is None:
                return LandOutcome(False, f"bookmark {base} is conflicted; resolve it first", old, new)
            if current != old:
                return LandOutcome(False, f"{base} moved during the run (now {current[:12]}, was {old[:12]})",
                                   old, new)
            res = await self.jj("bookmark", "set", base, "-r", new, check=False)
            if not res.ok:
                return LandOutcome(False, f"moving {base} refused: {_short_err(res)}", old, new)
            after = (await self.bookmarks(f"exact:{base}")).get(base)
            if after != new:
                return LandOutcome(False, f"{base} did not move to {new[:12]} (a concurrent change?)", old, new)
        return LandOutcome(True, f"{base} moved {old[:12]} -> {new[:12]}", old, new)

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
        bookmark first, so removal never loses anything; a discarded task's change is abandoned."""
        with anyio.CancelScope(shield=True):
            registered = bool(ws.name) and ws.name in await self._workspaces()
            if keep_ref and not _is_integration(ws) and registered and ws.path.is_dir():
                try:
                    await self.snapshot(ws, f"corral: {ws.task}")
                except VcsError as exc:  # a stale workspace?: leave everything for the user
                    raise VcsError(f"{ws.path} is left in place: its work could not be snapshotted ({exc})") from None
            async with self.mutating():
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

    async def delete_ref(self, ref: str) -> None:
        async with self.mutating():
            await self.jj("bookmark", "delete", f"exact:{ref}", check=False)

    async def drop_work(self, ws: Workspace) -> None:
        async with self.mutating():
            await self._drop_work(ws)

    async def _drop_work(self, ws: Workspace) -> None:
        """Delete the workspace's bookmark and abandon the commits it made (under the repo lock)."""
        await self.jj("bookmark", "delete", f"exact:{ws.ref}", check=False)
        if _is_integration(ws):
            mine = self._created.pop(ws.ref, [])
        elif ws.base_commit and ws.head and ws.head != ws.base_commit:
            mine = [f"({ws.base_commit}..{ws.head})"]
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
        known: dict[str, tuple[str, str, dict]] = {}
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
        path = Path(rec.path)
        if os.path.realpath(path) == os.path.realpath(self.root):
            return "it is the repository's own working copy"
        found = (await self._workspaces()).get(rec.name)
        if found is None:
            if path.is_dir() and any(p.name != ".jj" for p in path.iterdir()):
                return "jj no longer knows it as a workspace and it holds files"
            return ""
        if os.path.realpath(found[0]) != os.path.realpath(path):
            return f"jj's workspace {rec.name} is not at the path corral registered"
        return ""

    async def drop_half_made(self, ws: Workspace) -> None:
        async with self.mutating():
            if ws.name in await self._workspaces():
                await self.jj("workspace", "forget", ws.name, check=False)
            await self.jj("bookmark", "delete", f"exact:{ws.ref}", check=False)
        await anyio.to_thread.run_sync(shutil.rmtree, ws.path, True)

    async def holds_unmerged_work(self, ref: str, base_commit: str = "", base_branch: str = "") -> bool:
        target = (await self.bookmarks(f"exact:{ref}")).get(ref)
        if not target:
            return ref in await self.bookmarks(f"exact:{ref}")  # conflicted: keep it
        also = f" | {base_commit}" if base_commit else ""
        res = await self.jj("log", "-r", f"(::{target} ~ ::({await self._protected()}{also})) ~ empty()", "-n", "1",
                            "--no-graph", "-T", 'commit_id ++ "\\n"', check=False)
        return not res.ok or bool(res.lines())

    async def list_refs(self, prefix: str = "corral/") -> dict[str, str]:
        return {n: t or "" for n, t in (await self.bookmarks(f"glob:{prefix}*")).items()}


def _is_integration(ws: Workspace) -> bool:
    """The integration workspace of a merge (``integration``, ``integration-2``, ...)."""
    return ws.ref.endswith("/integration")


async def _run(argv: list[str], cwd: str, env: dict[str, str] | None) -> tuple[int, str, str]:
    """Run a short command in its own process group; (exit code, stdout, stderr)."""
    try:
        proc = await anyio.run_process(argv, cwd=cwd, env=env, check=False, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
    except OSError as exc:
        return 127, "", f"Error: cannot run {argv[0]}: {exc.strerror or exc}"
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
