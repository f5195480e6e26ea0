"""The git backend: worktrees on ``corral/<run>/<task>`` branches, trial merges with
``git merge-tree --write-tree``, merges in a private integration worktree, landing by
compare-and-swap.

git runs in worker threads, one process per call (``subprocess``: GitPython's command layer
cost more to import than most runs spend in it, and asked ``git version`` twice at each start),
each git process in its own process group, its messages in English (``LC_ALL=C``: corral reads
some of them). Every mutation of shared repository state (worktree add/remove/prune, branch and ref
updates) runs under one repo-wide lock: an ``anyio.Lock`` inside this process plus ``flock`` on
``<git-common-dir>/corral/engine.lock`` across processes; but new workspaces are made at once, outside
it (:meth:`GitBackend._add_worktree`).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

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
from ..procs import gits_in, processes_in
from ..plan import did_you_mean
from . import objstore
from .registry import READY, Record, lock_reason, reason_key

# Options every engine git command gets: no hooks, no signing prompts, no pager, no auto-gc (nor the
# `git maintenance run --auto` process a commit or a merge starts to look whether one is due).
ENGINE_CONFIG = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "commit.gpgsign=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "branch.autoSetupMerge=false",
    "-c", "advice.detachedHead=false",
    "-c", "core.quotePath=false",
    # no fsmonitor: a command or daemon started by git (the config of a repository an agent made
    # reaches the git that git status starts in it), and a daemon left running per workspace
    "-c", "core.fsmonitor=false",
)
RETRIES = 5
#: a base of more files than this is checked out a few workspaces at a time (:attr:`checkouts`), not
#: all at once: 16 workspaces of 20,000 files took 3.5 s 4 at a time, 8.1 s one after the other
#: (benchmarks/workspaces.py, tmpfs, 2 cores); 200 files take a few ms, all at once is quickest.
SPLIT_CHECKOUT_FILES = 2000
#: environment variables that tell git where the repository, its work tree or its index is
_LOCATION_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_PREFIX",
                 "GIT_IMPLICIT_WORK_TREE", "GIT_INTERNAL_SUPER_PREFIX")


GitResult = CommandResult
#: git's messages in English whatever the user's locale: corral reads some of them
_C_LOCALE = {"LANGUAGE": "C", "LC_ALL": "C"}
_ENCODING = sys.getfilesystemencoding()


def _run_git_sync(args: Sequence[str], cwd: str, env: dict[str, str] | None, stdin_text: str | None) -> GitResult:
    if not os.path.isdir(cwd):
        return GitResult(128, "", f"fatal: cannot change to '{cwd}': No such file or directory")
    try:
        proc = subprocess.run(["git", *ENGINE_CONFIG, *args], cwd=cwd, env={**os.environ, **_C_LOCALE, **(env or {})},
                              input=None if stdin_text is None else stdin_text.encode(),
                              stdin=subprocess.DEVNULL if stdin_text is None else None,
                              capture_output=True, start_new_session=True)
    except OSError as exc:  # the directory went away meanwhile (or git is not installed)
        return GitResult(128, "", f"fatal: {exc}")
    err = proc.stderr.decode(_ENCODING, "surrogateescape")
    return GitResult(proc.returncode, proc.stdout.decode(_ENCODING, "surrogateescape"), err.removesuffix("\n"))


#: what git writes to stderr besides errors: advice and progress
_GIT_CHATTER = re.compile(r"(hint:|Preparing worktree |HEAD is now at |Updating files: |Checking out files: |"
                          r"Switched to |Auto-merging |Already up to date)")


def _short_err(res: GitResult) -> str:
    """Why a git command failed, in one line (:func:`cause_line`): git's own last line alone can hide
    the cause (a filter program that is not installed shows as "the remote end hung up")."""
    lines = [line.strip() for line in (res.err or res.out).splitlines() if line.strip()]
    return cause_line([line for line in lines if not _GIT_CHATTER.match(line)] or lines[-1:], res.code)


def _is_contention(res: GitResult) -> bool:
    text = (res.err or "") + (res.out or "")
    return any(s in text for s in (".lock", "File exists", "commondir", "could not lock", "Unable to create"))


class GitBackend(Backend):
    kind = "git"

    def __init__(self, root: Path, common_dir: Path, git_dir: Path) -> None:
        self.root = root
        self.common_dir = common_dir
        self.git_dir = git_dir
        self._ident: dict[str, str] | None = None
        self._ident_asked = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(8)
        #: where git looks for the user's own hooks (see guard.py), once asked (:meth:`hooks_path`)
        self.user_hooks: str | None = None
        self._hooks_asked = anyio.Lock()
        self._stash_at_start: list[tuple[str, str]] = []
        self._stash_taken: list[tuple[str, str]] = []
        #: why the last landing on each base was refused, for :meth:`land_hint`
        self._refusals: dict[str, str] = {}
        #: the files changed from one commit to another (``git diff A...B``), as snapshots found them
        self._changed: dict[tuple[str, str], list[str]] = {}
        self._notices: list[str] = []
        #: where a branch is checked out, as :meth:`check_base` found it (None: nowhere), for :meth:`notes`
        self._checkout_seen: dict[str, Path | None] = {}
        #: the branches :meth:`open` asked ``for-each-ref`` about beside its ``rev-parse``, and the
        #: answer, for :meth:`_branch_tips` to use once
        self._early_tips: tuple[tuple[str, ...], GitResult] | None = None

    # ----------------------------------------------------------------------------------- plumbing
    @classmethod
    async def open(cls, path: str | Path, checks_base: bool = False) -> "GitBackend":
        """The repository containing ``path``. ``checks_base``: :meth:`check_base` of the branch
        checked out there comes next (preflight): its ``for-each-ref`` is asked beside the
        ``rev-parse`` that finds the repository, where ``path`` holds the ``.git`` directory and its
        ``HEAD`` names a branch (its answer is used if that is where ``rev-parse`` found the
        repository and :meth:`check_base` asks about that branch)."""
        path = Path(path)
        if not path.is_dir():
            raise UsageError(f"{path}: no such directory")
        guess = _head_branch(path / ".git") if checks_base and not any(v in os.environ for v in _LOCATION_ENV) else ""
        names, early = (guess, "corral"), []

        def ask_tips() -> None:
            early.append(_run_git_sync(["for-each-ref", _TIPS_FORMAT, *[f"refs/heads/{n}" for n in names]],
                                       str(path), None, None))

        async with anyio.create_task_group() as tg:
            if guess:
                tg.start_soon(anyio.to_thread.run_sync, ask_tips)
            res = await anyio.to_thread.run_sync(
                _run_git_sync, ["rev-parse", "--show-toplevel", "--git-common-dir", "--git-dir"], str(path), None, None
            )
        lines = res.out.strip().splitlines()
        if not res.ok or len(lines) < 3:
            raise UsageError(f"{path}: {await cls._not_usable(path, res)}")
        root = Path(lines[0]).resolve()
        common = (path / lines[1]).resolve() if not os.path.isabs(lines[1]) else Path(lines[1]).resolve()
        gdir = (path / lines[2]).resolve() if not os.path.isabs(lines[2]) else Path(lines[2]).resolve()
        await cls._forget_location_env(root, common)
        backend = cls(root, common, gdir)
        if early and gdir == (path / ".git").resolve():
            backend._early_tips = names, early[0]
        return backend

    @staticmethod
    async def _forget_location_env(root: Path, common: Path) -> None:
        """Unset ``GIT_DIR``, ``GIT_WORK_TREE``, ``GIT_INDEX_FILE`` and the like once they have named
        the repository: every later git command (corral's, and its agents') runs in a workspace and
        must find that workspace, not the user's checkout these point at (a workspace's checkout
        would reset the user's files). Refused when the repository cannot be found without them."""
        found = [var for var in _LOCATION_ENV if var in os.environ]
        if not found:
            return
        saved = {var: os.environ.pop(var) for var in found}
        res = await anyio.to_thread.run_sync(_run_git_sync, ["rev-parse", "--git-common-dir"], str(root), None, None)
        here = res.out.strip()
        if not res.ok or Path(root, here).resolve() != common:
            os.environ.update(saved)
            raise UsageError(f"{', '.join(found)} set: corral needs a repository it finds from its working tree "
                             f"{root}, as its workspaces do; unset them")

    @staticmethod
    async def _not_usable(path: Path, res: GitResult) -> str:
        """Why ``path`` has no working tree for corral (``rev-parse --show-toplevel`` failed)."""
        where = await anyio.to_thread.run_sync(
            _run_git_sync, ["rev-parse", "--is-bare-repository", "--is-inside-git-dir"], str(path), None, None
        )
        bare, _, inside = where.out.partition("\n")
        if where.ok and bare.strip() == "true":
            return "a bare repository: corral needs a working tree (a clone without --bare, or a git worktree)"
        if where.ok and inside.strip() == "true":
            return "inside a repository's .git directory: run corral in its working tree"
        if "not a git repository" in (res.err or where.err):
            return "not a git or jj repository (no .git or .jj here or in any folder above)"
        return _short_err(res)

    async def git(self, *args: str, cwd: str | Path | None = None, check: bool = True,
                  env: dict[str, str] | None = None, stdin: str | None = None) -> GitResult:
        async with self._limiter:
            res = await anyio.to_thread.run_sync(
                _run_git_sync, list(args), str(cwd or self.root), env, stdin, abandon_on_cancel=False
            )
        if check and not res.ok:
            raise VcsError(f"git {' '.join(args[:3])}: {_short_err(res)}")
        return res

    async def ident_env(self) -> dict[str, str] | None:
        """Author/committer for engine commits when the user configured none: asked once (tasks that
        end together wait for the one answer), both names in one git process."""
        async with self._ident_asked:
            if self._ident is None:
                res = await self.git("config", "--get-regexp", r"^user\.(name|email)$", check=False)
                values = dict(line.partition(" ")[::2] for line in res.out.splitlines())  # the last one wins
                env: dict[str, str] = {}
                if not values.get("user.name", "").strip():
                    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "corral"
                if not values.get("user.email", "").strip():
                    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "corral@localhost"
                self._ident = env
        return self._ident or None

    # ---------------------------------------------------------------------------------- queries
    @property
    def state_dir(self) -> Path:
        return self.common_dir / "corral"

    async def current_base(self) -> str:
        """The branch the user's checkout is on, read from its ``HEAD`` file as ``git symbolic-ref -q
        HEAD`` reads it (no git process on the way to the run's start); git is asked when the file
        says anything but a plain branch name (a reftable repository's placeholder, a detached HEAD)."""
        name = _head_branch(self.git_dir)
        if name:
            return name
        # the full name: --short gives 'heads/main' when a tag 'main' exists too
        res = await self.git("symbolic-ref", "-q", "HEAD", check=False)
        if not res.ok or not res.out.strip().startswith("refs/heads/"):
            raise UsageError(f"{self.root}: HEAD is detached; give a base (--base REV or base = \"...\")")
        return res.out.strip().removeprefix("refs/heads/")

    async def resolve(self, rev: str) -> str:
        """The commit of ``rev``; a branch of that name wins over a tag of the same name (git's own
        order picks the tag), as landing moves the branch. A branch's is one ``for-each-ref``."""
        _check_rev(rev)
        branch = (await self._branch_tips(rev)).get(rev)
        if branch is not None and branch.commit:
            return branch.commit
        full = f"refs/heads/{rev}" if branch is not None else rev
        res = await self.git("rev-parse", "--verify", "-q", f"{full}^{{commit}}", check=False)
        if not res.ok or not res.out.strip():
            names = await self.git("for-each-ref", "--format=%(refname:short)", "refs/heads/", "refs/tags/",
                                   check=False)
            raise UsageError(f"base {rev!r}: no such revision in {self.root}"
                             + did_you_mean(rev, [n for n in names.out.split() if not n.startswith("corral/")]))
        return res.out.strip()

    async def preflight(self) -> list[str]:
        return self._preflight_problems(await self.is_branch("corral"))

    def _preflight_problems(self, corral_branch: bool) -> list[str]:
        problems = [f"{self.root} is in the middle of {what}: finish or abort it first"
                    for what in _operations(self.git_dir)]
        if corral_branch:
            problems.append(f"{self.root}: a branch named 'corral' exists, and git cannot create corral's branches "
                            "corral/<run>/<task> beside it: rename it (git branch -m corral NEW-NAME)")
        return problems

    async def check_base(self, base: str) -> tuple[str, list[str]]:
        """One ``for-each-ref`` answers what :meth:`resolve` and :meth:`preflight` ask two git
        processes, and :meth:`notes` a third: whether branch ``base`` exists, its commit and where it
        is checked out, and whether a branch ``corral`` does. A base that is no branch (a tag,
        ``main~1``, a commit id), or a branch that does not point at a commit, is resolved as
        :meth:`resolve` does."""
        _check_rev(base)
        branches = await self._branch_tips(base, "corral")
        tip = branches.get(base)
        commit = tip.commit if tip is not None else ""
        if not commit:
            commit = await self.resolve(base)
        # where base is checked out, for :meth:`notes` (asked next, of the same base): known now
        self._checkout_seen[base] = Path(tip.where) if tip is not None and tip.where else None
        return commit, self._preflight_problems("corral" in branches)

    async def _branch_tips(self, *names: str, check: bool = False) -> dict[str, "_Tip"]:
        """Which of the branches ``names`` exist (exactly: ``refs/heads/<name>``), each with what it
        points at and where it is checked out, from one ``for-each-ref``."""
        early, self._early_tips = self._early_tips, None
        if early is not None and early[0] == names and (early[1].ok or not check):
            res = early[1]
        else:
            res = await self.git("for-each-ref", _TIPS_FORMAT, *[f"refs/heads/{n}" for n in names], check=check)
        wanted = {f"refs/heads/{n}": n for n in names}
        out: dict[str, _Tip] = {}
        for line in res.out.splitlines():
            ref, kind, oid, where = (line.split("\0") + ["", "", ""])[:4]
            if ref in wanted:
                out[wanted[ref]] = _Tip(oid, kind, where)
        return out

    async def notes(self, base_commit: str, base: str = "") -> list[str]:
        """Things about the repository a user should know before a run (not problems): submodules, and
        a checkout of ``base`` with uncommitted changes (landing would be refused). Both looked at
        at once: each is a git process or two, on the way to the run's start."""
        out = ["", ""]

        async def dirty() -> None:
            out[0] = await self._dirty_base(base) if base else ""

        async def submodules() -> None:
            subs = await self.git("ls-tree", "-r", "-z", "--full-tree", base_commit, check=False)
            paths = [e.partition("\t")[2] for e in subs.out.split("\0") if e.startswith("160000 ")]
            if paths:
                listed = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
                out[1] = (f"this repository has submodules ({listed}): workspaces get them uninitialised (corral "
                          "does not run `git submodule update`), and edits made inside them cannot be kept (a task "
                          "that makes some fails, its workspace kept)")

        async with anyio.create_task_group() as tg:
            tg.start_soon(dirty)
            tg.start_soon(submodules)
        return [note for note in out if note]

    async def _dirty_base(self, base: str) -> str:
        """Said at preflight: landing refuses to move ``base`` when its checkout has uncommitted changes
        to files the landing changes (see :meth:`land`), better known before the agents run than after."""
        where = self._checkout_seen.pop(base) if base in self._checkout_seen else await self._checkout_of(base)
        if where is None:
            return ""
        res = await self.git("status", "--porcelain", "-z", "--untracked-files=no", "--no-renames", cwd=where,
                             check=False)
        files = [entry[3:] for entry in res.out.split("\0") if len(entry) > 3]
        if not files:
            return ""
        more = f" and {len(files) - 5} more" if len(files) > 5 else ""
        return (f"{base} is checked out at {where} with uncommitted changes ({', '.join(files[:5])}{more}): "
                f"corral never touches them, and will not land onto {base} a merge that changes them (commit or "
                f"stash them before the run lands)")

    def ref_name(self, run: str, task: str) -> str:
        return f"corral/{run}/{task}"

    async def check_ref_name(self, name: str) -> bool:
        if _PLAIN_REF.match(name):  # corral's own names: decided here, without a git process per workspace
            return _plain_ref_ok(name)
        res = await self.git("check-ref-format", f"refs/heads/{name}", check=False)
        return res.ok

    async def ref_exists(self, ref: str) -> bool:
        res = await self.git("rev-parse", "--verify", "-q", f"refs/heads/{ref}", check=False)
        return res.ok

    async def existing_refs(self, refs: list[str]) -> dict[str, str]:
        """Which of the branches ``refs`` exist, each with the commit it points at: one
        ``for-each-ref`` for all of them (at the end of a run, one per task's branch was a git
        process per task)."""
        return {name: tip.oid for name, tip in (await self._branch_tips(*refs, check=True)).items()} if refs else {}

    async def is_branch(self, name: str) -> bool:
        """Whether ``refs/heads/<name>`` exists, exactly (not ``main~1``, which rev-parse would take)."""
        res = await self.git("show-ref", "--verify", "-q", f"refs/heads/{name}", check=False)
        return res.ok

    # ------------------------------------------------------------------------------- workspaces
    async def _register_worktree(self, ws: Workspace, rec: Record) -> None:
        """``git worktree add`` of ``ws`` on its existing branch (a re-opened workspace), its files
        checked out by the same git process, under the repo lock, retried on lock contention; a
        failed attempt's admin dir is removed precisely, never by a repository-wide prune. It must be
        under the lock: concurrent ``worktree add``s read each other's half-written admin dirs and fail."""
        args = ["--lock", "--reason", lock_reason(rec), str(ws.path), ws.ref]
        last = None
        for attempt in range(RETRIES):
            async with self.mutating():
                res = await self.git("worktree", "add", "-q", *args, check=False)
                if not res.ok:
                    last = res
                    await self._drop_admin_of(ws.path)
            if res.ok:
                return
            if not _is_contention(res):
                raise VcsError(f"git worktree add {ws.path}: {_short_err(res)}")
            ws.path.mkdir(mode=0o700, exist_ok=True)
            await anyio.sleep(0.05 * (attempt + 1))
        assert last is not None
        raise VcsError(f"git worktree add {ws.path}: {_short_err(last)} (after {RETRIES} tries)")

    def _admin_dirs(self, named: str = "") -> dict[str, Path]:
        """Every linked worktree's admin dir, by the worktree path its ``gitdir`` file names; with
        ``named``, only those git names after a worktree directory of that name (``named``, then
        ``named1``, ``named2``...: what ``git worktree add`` and corral name a new one)."""
        out: dict[str, Path] = {}
        wdir = self.common_dir / "worktrees"
        if wdir.is_dir():
            for admin in wdir.iterdir():
                if named and not (admin.name.startswith(named) and admin.name[len(named):].isdigit()
                                  or admin.name == named):
                    continue
                try:
                    target = (admin / "gitdir").read_text(encoding="utf-8").strip()
                except OSError:
                    continue
                out[os.path.dirname(target)] = admin
        return out

    def _admin_dir_of(self, path: Path, known: str = "", named: str = "") -> Path | None:
        """The admin dir of the worktree at ``path``: ``known`` (the one recorded at its creation) while
        its ``gitdir`` still names ``path``, else found among every worktree's (those ``named`` so,
        see :meth:`_admin_dirs`)."""
        if known and os.path.dirname(_read(Path(known) / "gitdir").strip()) == str(path):
            return Path(known)
        return self._admin_dirs(named).get(str(path))

    async def _drop_admin_of(self, path: Path, known: str = "") -> None:
        """Remove git's record of the worktree at ``path`` (its admin dir), whatever state it is in."""
        admin = self._admin_dir_of(path, known)
        if admin is not None:
            await anyio.to_thread.run_sync(shutil.rmtree, admin, True)

    async def create_workspace(self, run: str, task: str, base_commit: str, root: str | None) -> Workspace:
        return await self._new_worktree(run, task, self.ref_name(run, task), base_commit, root, "task")

    async def _new_worktree(self, run: str, task: str, branch: str, base_commit: str, root: str | None,
                            role: str) -> Workspace:
        """A locked worktree on a new branch at ``base_commit`` in a fresh private directory, registered
        before it exists and marked ready only once its files are checked out; on any failure nothing
        is left behind. Made outside the repo lock, in parallel with other workspaces (see
        :meth:`_add_worktree`)."""
        path, rec = self.registry.reserve(root, run=run, task=task, role=role, ref=branch, vcs="git",
                                          base_commit=base_commit)
        ws = Workspace(task=task, path=path, ref=branch, name=path.name, base_commit=base_commit, head=base_commit,
                       role=role, run=run, key=rec.key)
        try:
            await self._add_worktree(ws, rec)
            ws.admin = _admin_of(path)
            ws.name = Path(ws.admin).name if ws.admin else path.name
            self.registry.update(rec, state=READY, admin=ws.admin)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.drop_half_made(ws)
                self.registry.drop(rec)
            raise
        return ws

    async def _add_worktree(self, ws: Workspace, rec: Record) -> None:
        """``git worktree add --lock -b`` of ``ws``, made so that many can run at once: git's own reads
        every sibling's admin dir and dies on one that is half-written (the commondir race), so it
        must run under the repo lock, one after another. Here the admin dir is written complete
        (locked, detached at the base) in corral's state dir and renamed into ``worktrees/``, so no git
        ever sees it half-made; then one ``git checkout -b`` in the worktree creates the branch (it
        refuses one that exists) and checks out its files. A large checkout waits for a slot of
        :attr:`checkouts` (more at once only contend in the filesystem)."""
        admin = await anyio.to_thread.run_sync(self._write_admin, ws, rec)
        ws.admin = str(admin)
        big = _index_entries(self.git_dir) > SPLIT_CHECKOUT_FILES
        async with anyio.create_task_group() as tg:
            if self.user_hooks is None:  # the guard's question for the first agent, asked meanwhile
                tg.start_soon(self.hooks_path, ws)
            async with self.checkouts if big else contextlib.nullcontext():
                res = await self.git("checkout", "-q", "-f", "--no-recurse-submodules", "--no-track", "-b", ws.ref,
                                     ws.base_commit, cwd=ws.path, check=False)
        if not res.ok:
            raise VcsError(f"git worktree add {ws.path}: {_short_err(res)}")

    async def hooks_path(self, ws: Workspace) -> str:
        """Where git would look for the repository's own hooks (see guard.py), asked once in the
        workspace ``ws``: ``core.hooksPath`` as configured (a relative one stays relative: git resolves
        it in the checkout where the hook runs), else the common dir's ``hooks``. The engine's own
        ``-c core.hooksPath=/dev/null`` comes last: skipped. The first workspace asks it beside its
        checkout (its admin dir is complete by then: git reads the same config files there)."""
        async with self._hooks_asked:
            if self.user_hooks is None:
                res = await self.git("config", "--path", "--show-scope", "--get-all", "core.hooksPath", cwd=ws.path,
                                     check=False)
                values = [line.partition("\t")[2] for line in res.out.splitlines() if "\t" in line]
                if values and values[-1] == "/dev/null" and res.out.splitlines()[-1].startswith("command\t"):
                    values.pop()
                self.user_hooks = values[-1] if values and values[-1] else str(self.common_dir / "hooks")
            return self.user_hooks

    def _write_admin(self, ws: Workspace, rec: Record) -> Path:
        """The admin dir of the new worktree ``ws`` as ``git worktree add --lock`` writes it, detached at
        the base, and the worktree's ``.git`` file naming it; renamed into place whole (an id taken
        already gets a number, as git does)."""
        path = ws.path.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix="admin-", dir=self.state_dir))
        try:
            for name, text in (("gitdir", f"{path / '.git'}\n"), ("commondir", "../..\n"),
                               ("HEAD", f"{ws.base_commit}\n"), ("locked", f"{lock_reason(rec)}\n")):
                (stage / name).write_text(text, encoding="utf-8")
            top = self.common_dir / "worktrees"
            top.mkdir(exist_ok=True)
            for n in range(100):
                admin = top / (path.name if n == 0 else f"{path.name}{n}")
                if admin.exists():
                    continue
                (path / ".git").write_text(f"gitdir: {admin.resolve()}\n", encoding="utf-8")
                try:
                    os.rename(stage, admin)
                except OSError:  # taken meanwhile
                    continue
                return admin
            raise VcsError(f"git worktree add {ws.path}: no free worktree id under {top}")
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    async def reopen_workspace(self, ws: Workspace, root: str | None) -> Workspace:
        """A locked worktree on the kept branch of the removed workspace ``ws``, in a fresh private
        directory; on any failure nothing is left behind, the branch untouched."""
        if not await self.ref_exists(ws.ref):
            raise VcsError(f"its branch {ws.ref} is gone")
        head = await self.resolve(ws.ref)
        path, rec = self.registry.reserve(root, run=ws.run, task=ws.task, role=ws.role, ref=ws.ref, vcs="git",
                                          base_commit=ws.base_commit)
        new = Workspace(task=ws.task, path=path, ref=ws.ref, name=path.name, base_commit=ws.base_commit, head=head,
                        role=ws.role, run=ws.run, key=rec.key, extra_refs=list(ws.extra_refs),
                        exclude=list(ws.exclude))
        try:
            await self._register_worktree(new, rec)
            new.admin = _admin_of(path)
            new.name = Path(new.admin).name if new.admin else path.name
            self.registry.update(rec, state=READY, admin=new.admin, exclude=new.exclude)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.drop_half_made(replace(new, base_commit=""))  # (no base: its branch stays)
                self.registry.drop(rec)
            raise
        return new

    async def drop_half_made(self, ws: Workspace) -> None:
        """Remove a workspace that never became ready: it holds no work (no agent ran in it). Its
        branch goes only while it still points at the base, so nothing anyone made is deleted."""
        async with self.mutating():
            await self.git("worktree", "unlock", str(ws.path), check=False)
            await self.git("worktree", "remove", "--force", "--force", str(ws.path), check=False)
            await self._drop_admin_of(ws.path)
            if ws.base_commit:
                await self.git("update-ref", "-d", f"refs/heads/{ws.ref}", ws.base_commit, check=False)
        await anyio.to_thread.run_sync(shutil.rmtree, ws.path, True)

    async def pending_changes(self, ws: Workspace) -> list[str]:
        if self._is_live(ws):
            return await self._changes(ws.path, ws.exclude)
        admin = ws.admin or str(self._admin_dirs().get(str(ws.path), ""))
        if self._relinkable(ws.path, admin):
            # its `.git` file deleted: what :meth:`snapshot` commits once it has put it back, asked
            # through the admin dir so that nothing is written here (``clean --dry-run``)
            return await self._changes(ws.path, ws.exclude, env={"GIT_DIR": admin, "GIT_WORK_TREE": str(ws.path)})
        return []

    async def _changes(self, path: Path, exclude: list[str] | tuple[str, ...] = (),
                       env: dict[str, str] | None = None) -> list[str]:
        """Paths with changes not committed (submodules' inner changes included); new files matching
        ``exclude`` (an agent's own state) are none. Raises :class:`VcsError` when git cannot tell (a
        full disk, an index an agent broke): "none" would let the workspace be removed with its changes."""
        return (await self._status(path, exclude, env))[0]

    async def _status(self, path: Path, exclude: list[str] | tuple[str, ...] = (),
                      env: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
        """:meth:`_changes` of ``path``, and of them the files in conflict (unmerged: a merge or a
        rebase left under way), from one ``git status``."""
        # (git status looks into a submodule's files with a git of its own, which reads that
        # repository's config: only into the repository's own submodules, never into one an agent
        # made, whose files :meth:`_stage_nested` reads)
        subs = "none" if (path / ".gitmodules").exists() else "dirty"
        res = await self.git("status", "--porcelain", "-z", "-uall", "--no-renames", f"--ignore-submodules={subs}",
                             cwd=path, check=False, env=env)
        if not res.ok:
            raise VcsError(f"cannot tell what {path} holds uncommitted: git status: {_short_err(res)}")
        entries = [entry for entry in res.out.split("\0") if len(entry) > 3 and entry[2] == " "]
        out = [entry[3:] for entry in entries
               if not (entry[:2] == "??" and any(fnmatch.fnmatchcase(entry[3:], p) for p in exclude))]
        conflicted = sorted({entry[3:] for entry in entries if entry[:2] in _UNMERGED})
        if (path / ".gitmodules").exists():
            # files written into a submodule that is not checked out are invisible to git status
            stage = await self.git("ls-files", "--stage", "-z", cwd=path, check=False, env=env)
            for entry in stage.out.split("\0"):
                mode, _, rest = entry.partition(" ")
                sub = rest.partition("\t")[2]
                if mode == "160000" and sub and sub not in out and _uninitialised_with_files(path / sub):
                    out.append(f"{sub}/ (inside a submodule)")
        return out, conflicted

    def _is_live(self, ws: Workspace) -> bool:
        """Whether the workspace directory is still the worktree corral made: its ``.git`` links to the
        worktree's admin dir (an agent may have deleted it, or made a repository of its own there)."""
        if not ws.path.is_dir():
            return False
        if not ws.admin:
            return (ws.path / ".git").exists()
        link = _admin_of(ws.path)
        return bool(link) and os.path.realpath(ws.path / link) == os.path.realpath(ws.admin)

    def _relink(self, ws: Workspace) -> None:
        """Put back the ``.git`` file of a workspace whose agent deleted it (``rm .git``): the files
        there are still the worktree's, and git's admin dir still names that directory."""
        if self._relinkable(ws.path, ws.admin):
            (ws.path / ".git").write_text(f"gitdir: {ws.admin}\n", encoding="utf-8")

    @staticmethod
    def _relinkable(path: Path, admin: str) -> bool:
        """Whether the workspace at ``path`` lost its ``.git`` file while git's admin dir ``admin``
        still names that directory as its worktree, and kept some file. An empty directory is a
        workspace deleted, not one whose every file was: an agent's ``rm -rf "$CORRAL_WORKSPACE"`` in
        the sandbox, where the directory is a mount point and stays (outside, it goes). Its commits
        are kept as they are; committing the deletion of every file would land that."""
        git_file = path / ".git"
        if not admin or not path.is_dir() or os.path.lexists(git_file):
            return False
        if not holds_anything(path):
            return False
        return os.path.realpath(_read(Path(admin) / "gitdir")) == os.path.realpath(git_file)

    async def clear_stale_locks(self, ws: Workspace) -> list[str]:
        """Remove lock files a killed git process left in the worktree's admin dir, and that of the
        task's branch (a commit in the workspace locks it), once no process works in the workspace
        any more (a live one may hold them). The branch's lock is also left while a git works in the
        repository's checkout or git dir: one the user runs there, or another corral's, may be
        updating the branch. Returns what was removed."""
        admin = Path(ws.admin)
        if not ws.admin or not admin.is_dir():
            return []
        branch = [self.common_dir / "refs" / "heads" / f"{ws.ref}.lock"] if ws.ref else []
        locks = [p for p in (admin / "index.lock", admin / "HEAD.lock", *branch) if p.exists()]
        if not locks or processes_in(ws.path):
            return []
        if branch and branch[0] in locks and gits_in(self.root, self.common_dir):
            locks.remove(branch[0])
        removed = []
        for p in locks:
            try:
                p.unlink()
                removed.append(str(p))
            except FileNotFoundError:
                pass
        return removed

    async def snapshot(self, ws: Workspace, message: str) -> Snapshot:
        """Commit what the workspace holds uncommitted (on whatever HEAD the agent left), then gather
        every commit made in it (see :meth:`_collect`) onto the task's branch and kept refs."""
        if not ws.admin:
            ws.admin = _admin_of(ws.path) or str(self._admin_dirs().get(str(ws.path), ""))
        left: list[str] = []
        conflicted: list[str] = []
        self._relink(ws)
        if self._is_live(ws):
            await self.clear_stale_locks(ws)
            changes, unmerged = await self._status(ws.path, ws.exclude)
            if changes:
                # never commit onto a branch that is not the task's (an agent that pointed HEAD at
                # the user's branch): commit on a detached HEAD, which _collect then gathers
                sym = await self._symbolic_head(ws)
                if sym and sym != f"refs/heads/{ws.ref}":
                    await self.git("update-ref", "--no-deref", "-m", "corral: detach from a branch not the task's",
                                   "HEAD", "HEAD", cwd=ws.path)
                elif sym:
                    await self._put_back_branch(ws)
                # a merge or rebase left in conflict: its files are committed as they are (nothing
                # lost), and the task is told, so conflict markers never pass for work
                conflicted = unmerged
                left = await self._commit_all(ws, message, _nested_repos(ws.path, changes))
        elif ws.path.is_dir() and any(ws.path.iterdir()):
            # its .git is something else now (an agent's `git init`): its files are not the
            # worktree's to commit, nor to delete
            left = [".git (not corral's worktree any more: an agent replaced it)"]
        # what _collect reads: when none of it changed since the last time, neither did its answer
        seen = self._signature(ws)
        if ws.memo is not None and ws.memo[0] == seen:
            snap = copy.copy(ws.memo[1])
        else:
            snap = await self._gather(ws)
        embedded = _nested_repos(ws.path, snap.files) if self._is_live(ws) else []
        if embedded:  # the agent committed a repository of its own as a gitlink: its files instead
            left = await self._commit_all(ws, message, embedded)
            snap = await self._gather(ws)
        if conflicted:
            ws.conflicted = conflicted
        snap.uncommitted, snap.conflicted = left, list(ws.conflicted)
        return snap

    async def _gather(self, ws: Workspace) -> Snapshot:
        """:meth:`_collect` of ``ws`` and what its head changed, remembered with what it read."""
        ws.head = await self._collect(ws)
        snap = await self.describe(ws) if ws.base_commit else Snapshot(commit=ws.head, files=[])
        snap.extra_refs = list(ws.extra_refs)
        ws.memo = (self._signature(ws), snap)
        return snap

    async def _commit_all(self, ws: Workspace, message: str, nested: list[str]) -> list[str]:
        """Commit everything the live workspace holds (new files but the agent's own state); the files
        of ``nested``, git repositories an agent made in it, as the task's own files. Returns what is
        left uncommitted (inside a submodule, or a name git cannot take)."""
        if ws.exclude or nested:  # every change to tracked files, new files but those set aside
            # (git add looks into a repository it holds as a gitlink with a git started there, which
            # reads the config the agent wrote: not into those, whose files are staged below)
            await self.git("add", "-u", "--", ".", *(f":(exclude){p}" for p in nested), cwd=ws.path)
            await self.git("add", "-A", "--", ".", *(f":(exclude){p}" for p in [*ws.exclude, *nested]), cwd=ws.path)
        else:
            await self.git("add", "-A", cwd=ws.path)
        left = await self._stage_nested(ws, nested) if nested else []
        res = await self.git("commit", "-q", "--no-verify", "-m", message, cwd=ws.path, check=False,
                             env=await self.ident_env())
        if not res.ok and "nothing" not in res.out + res.err:  # nothing staged: submodule changes only
            raise VcsError(f"git commit in {ws.path}: {_short_err(res)}")
        if (ws.path / ".gitmodules").exists():  # the only changes git add -A leaves behind
            left += await self._changes(ws.path, ws.exclude)
        return left

    async def _stage_nested(self, ws: Workspace, nested: list[str]) -> list[str]:
        """Stage the files of each repository in ``nested`` (from the workspace root) as ``git add -A``
        stages any directory's: what that repository tracks or would add (its own ignore rules), less
        what the workspace's rules ignore or set aside. ``git add`` would record a gitlink to a commit
        that exists only inside the workspace (lost with it) or refuse a repository with no commit;
        the repository itself is left as it is. Returns the files git cannot stage (a newline in a
        name)."""
        files: list[str] = []
        pending = list(nested)
        while pending:
            top = pending.pop()
            # (the agent wrote that repository's config: nothing in it may move its work tree, and
            # ENGINE_CONFIG's fsmonitor=false keeps it from running a command)
            where = ws.path / top
            git_dir = where / ".git"
            link = _read(git_dir) if git_dir.is_file() else ""
            if link.startswith("gitdir:"):
                git_dir = where / link[len("gitdir:"):].strip()
            res = await self.git("ls-files", "-z", "-c", "-o", "--exclude-standard",
                                 cwd=where, env={"GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(where)})
            for name in res.out.split("\0"):
                if name.endswith("/"):  # a repository inside that one
                    pending.append(f"{top}/{name.rstrip('/')}")
                elif name and os.path.lexists(ws.path / top / name):
                    files.append(f"{top}/{name}")
        files = [f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in ws.exclude)]
        if files:  # (--no-index: the index may hold a gitlink there, which git would not look past)
            ignored = await self.git("check-ignore", "-z", "--stdin", "--no-index", cwd=ws.path, check=False,
                                     stdin="\0".join(files) + "\0")
            files = sorted(set(files) - set(ignored.out.split("\0")))
        left = [f for f in files if "\n" in f]
        files = [f for f in files if "\n" not in f]
        links = [f for f in files if os.path.islink(ws.path / f)]
        plain = [f for f in files if f not in links]
        shas = (await self.git("hash-object", "-w", "--stdin-paths", cwd=ws.path,
                               stdin="".join(f"{f}\n" for f in plain))).out.split() if plain else []
        for link in links:  # a symbolic link's blob is its target
            shas.append((await self.git("hash-object", "-w", "--stdin", cwd=ws.path,
                                        stdin=os.readlink(ws.path / link))).out.strip())
        entries = [f"{_mode_of(ws.path / f)} {sha}\t{f}\0" for f, sha in zip([*plain, *links], shas)]
        await self.git("update-index", "-z", "--force-remove", "--stdin", cwd=ws.path, stdin="\0".join(nested) + "\0")
        if entries:
            await self.git("update-index", "-z", "--add", "--index-info", cwd=ws.path, stdin="".join(entries))
        self._notices.append(f"{ws.task}: {', '.join(f'{n}/' for n in nested)} "
                             f"{'is a git repository' if len(nested) == 1 else 'are git repositories'} of its own "
                             "(made by the agent): the files are committed as the task's, the repository left as it is")
        return left

    def take_notices(self) -> list[str]:
        out, self._notices = self._notices, []
        return out

    async def _put_back_branch(self, ws: Workspace) -> None:
        """The task's branch, when it is gone while HEAD is on it (its ref file deleted outside git,
        which no hook sees: in the sandbox any agent of the run can), put back at the last commit the
        workspace registered (the base when none), so what is committed next goes on the task's line
        and not into a new root commit that shares no history with base. :meth:`_collect` then
        gathers every other line as it always does."""
        if _HEX40.match(_read(self.common_dir / "refs" / "heads" / ws.ref)):
            return  # there as a loose ref, as corral made it
        if (await self.git("rev-parse", "-q", "--verify", f"refs/heads/{ws.ref}", check=False)).ok:
            return
        registered = self._reflog_commits(ws)
        async with self.mutating():
            await self.git("update-ref", "-m", "corral: the task's branch put back, deleted outside git",
                           f"refs/heads/{ws.ref}", registered[-1] if registered else ws.base_commit, "0" * 40,
                           check=False)

    async def _symbolic_head(self, ws: Workspace) -> str:
        """The branch the live workspace's HEAD is on (empty: detached), read from git's admin dir
        (what ``git symbolic-ref -q HEAD`` says, without a git process)."""
        text = _read(Path(ws.admin) / "HEAD").strip() if ws.admin else ""
        if not text:
            res = await self.git("symbolic-ref", "-q", "HEAD", cwd=ws.path, check=False)
            return res.out.strip() if res.ok else ""
        return text[4:].strip() if text.startswith("ref:") else ""

    def _signature(self, ws: Workspace) -> tuple[object, ...]:
        """The state of everything :meth:`_collect` reads (HEAD, the reflogs, the branch), cheaply."""
        def stat(p: Path) -> tuple[int, ...]:
            try:
                st = p.stat()
            except OSError:
                return ()
            return (st.st_size, st.st_mtime_ns, st.st_ino)
        admin = Path(ws.admin) if ws.admin else None
        return (_read(admin / "HEAD") if admin else "", stat(admin / "logs" / "HEAD") if admin else (),
                stat(self.common_dir / "logs" / "refs" / "heads" / ws.ref),
                stat(self.common_dir / "refs" / "heads" / ws.ref), stat(self.common_dir / "packed-refs"),
                tuple(ws.extra_refs))

    async def _worktree_head(self, ws: Workspace) -> str:
        """The commit the workspace's HEAD is at, read from git's admin dir when the directory is gone."""
        if self._is_live(ws):
            res = await self.git("rev-parse", "-q", "--verify", "HEAD^{commit}", cwd=ws.path, check=False)
            if res.ok:
                return res.out.strip()
        try:
            text = (Path(ws.admin) / "HEAD").read_text(encoding="utf-8").strip() if ws.admin else ""
        except OSError:
            text = ""
        rev = text[5:].strip() if text.startswith("ref:") else text
        if not rev:
            return ""
        res = await self.git("rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False)
        return res.out.strip() if res.ok else ""

    async def _heads(self, ws: Workspace) -> tuple[str, str]:
        """The commits of the workspace's HEAD (:meth:`_worktree_head`) and of its branch (empty:
        none): read from git's files when they are plain (:meth:`_plain_heads`), as they are at the
        end of most tasks; else in one git process while both are there."""
        plain = self._plain_heads(ws)
        if plain is not None:
            return plain
        if self._is_live(ws):
            both = await self.git("rev-parse", "HEAD^{commit}", f"refs/heads/{ws.ref}^{{commit}}", "--",
                                  cwd=ws.path, check=False)
            found = [c for c in both.out.split() if c != "--"]  # it echoes the "--"
            if both.ok and len(found) == 2 and all(_HEX40.match(c) for c in found):
                return found[0], found[1]
        tip = await self.git("rev-parse", "-q", "--verify", f"refs/heads/{ws.ref}", check=False)
        return await self._worktree_head(ws), tip.out.strip() if tip.ok else ""

    def _plain_heads(self, ws: Workspace) -> tuple[str, str] | None:
        """HEAD's and the branch's commits as git's own files hold them, when they are plain: the
        branch a loose ref (which wins over a packed one), HEAD attached to it or detached at a
        commit id, as git itself reads them. None when git must be asked (a packed branch, HEAD on
        another branch, another ref format)."""
        if not ws.admin:
            return None
        tip = _read(self.common_dir / "refs" / "heads" / ws.ref)
        head = _read(Path(ws.admin) / "HEAD")
        if not _HEX40.match(tip):
            return None
        if head == f"ref: refs/heads/{ws.ref}":
            return tip, tip
        return (head, tip) if _HEX40.match(head) else None

    def _reflog_commits(self, ws: Workspace) -> list[str]:
        """Every commit the workspace's HEAD and the task's branch pointed at: from their reflogs, and
        from what the guard wrote down (which outlives the worktree). A commit an amend or a rebase
        replaced is left out: its successor carries its work."""
        out: list[str] = []
        replaced: set[str] = set()
        logs = [self.common_dir / "logs" / "refs" / "heads" / ws.ref]
        if ws.admin:
            logs.append(Path(ws.admin) / "logs" / "HEAD")
        for log in logs:
            for line in _read(log).splitlines():
                parts = line.split(" ", 2)
                if len(parts) >= 2 and _HEX40.match(parts[1]) and parts[1].strip("0"):
                    out.append(parts[1])
                    if line.partition("\t")[2].startswith(("commit (amend)", "rebase")):
                        replaced.add(parts[0])
        if ws.key:
            out += [c for c in _read(self.registry.heads_log(ws.key)).split() if _HEX40.match(c)]
        return [c for c in out if c not in replaced]

    async def _collect(self, ws: Workspace) -> str:
        """Every commit made in the workspace ends on a ref. The commits of the task are those its
        workspace's HEAD or its branch ever pointed at (their reflogs, read from git's admin dir even
        when the directory is gone) that no other ref holds (not the base, the user's branches, tags,
        or another task's branch). The task's branch points at the line of them the workspace ended
        on (its HEAD's; the branch's when HEAD went back to older commits); any other line (an agent
        that committed, then checked out something else and committed again) is kept on
        ``<branch>+N``. Returns the task's head."""
        tip, primary, extras = await self._lines(ws)
        if tip is None:  # nothing to move or keep
            return primary
        if primary != tip or extras or ws.extra_refs:
            async with self.mutating():
                if primary != tip:
                    await self.git("update-ref", "-m", "corral: the work made in the workspace",
                                   f"refs/heads/{ws.ref}", primary)
                ws.extra_refs = await self._keep_extras(ws, extras, primary)
        return primary

    async def _lines(self, ws: Workspace) -> tuple[str | None, str, list[str]]:
        """What :meth:`_collect` finds, changing nothing: (the branch's tip, the line the task's
        branch is to point at, the ends of the other lines); the tip None when nothing is to be
        moved or kept (the head is then the answer)."""
        head, tip = await self._heads(ws)
        base = ws.base_commit
        cands = list(dict.fromkeys(c for c in [head, tip, *self._reflog_commits(ws)] if c))
        if not base or not cands:
            return None, head or tip or base, []
        if tip and head == tip and set(cands) <= {tip, base} and not ws.extra_refs:
            # one line, the branch's, which HEAD is on (a task's end, most often): whether other refs
            # hold its commits or not, the branch stays where it is and nothing else is kept; no need
            # to ask git which commits are the task's own
            return None, tip, []
        # the commits only this task's refs (or none) hold, with their parents
        res = await self.git("rev-list", "--parents", "--ignore-missing", *cands, "--not", base,
                             f"--exclude={ws.ref}", f"--exclude={ws.ref}+*", "--branches", "--tags", "--remotes",
                             check=False)
        parents = {line.split()[0]: line.split()[1:] for line in res.out.splitlines() if line.strip()}
        work = [c for c in cands if c in parents]
        if not work:
            return None, tip or base, []  # nothing of its own, or all of it held elsewhere (landed): leave it
        below = {p for ps in parents.values() for p in ps}
        tips = [c for c in work if c not in below]  # the lines' ends: no other of its commits is on them

        def reaches(t: str, target: str) -> bool:
            seen, todo = set(), [t]
            while todo:
                c = todo.pop()
                if c == target:
                    return True
                if c not in seen:
                    seen.add(c)
                    todo += parents.get(c, [])
            return False

        primary = next((t for anchor in (head, tip) if anchor for t in tips if reaches(t, anchor)), "")
        if not primary:
            # the workspace ended on none of these lines: the branch stays where it is (if it holds
            # something: it was merged, say), the lines are kept beside it
            primary = tip if tip and tip != base else tips[0]
        return tip, primary, [t for t in tips if t != primary]

    async def other_lines_kept(self, ws: Workspace) -> list[str]:
        """The ``<branch>+N`` refs removing ``ws`` with its work kept leaves (its uncommitted files
        are committed on the line its HEAD is on, which changes none of them), found changing nothing."""
        tip, primary, extras = await self._lines(ws)
        return await self._keep_extras(ws, extras, primary, dry_run=True) if tip is not None and (
            extras or ws.extra_refs) else []

    async def _is_ancestor(self, a: str, b: str) -> bool:
        return (await self.git("merge-base", "--is-ancestor", a, b, check=False)).ok

    async def _keep_extras(self, ws: Workspace, extras: list[str], primary: str, dry_run: bool = False) -> list[str]:
        """``<branch>+N`` refs for ``extras`` (existing ones reused; those the primary now holds
        dropped). Called under the repo lock; with ``dry_run``, the names only, nothing written."""
        have = await self.list_refs(f"{ws.ref}+")
        by_commit = {sha: name for name, sha in have.items()}
        kept: list[str] = []
        for name, sha in have.items():
            if sha not in extras and await self._is_ancestor(sha, primary):
                if not dry_run:
                    await self.git("update-ref", "-d", f"refs/heads/{name}", sha, check=False)
            else:
                kept.append(name)
        n = 1
        for sha in extras:
            if sha in by_commit:
                continue
            while f"{ws.ref}+{n}" in have:
                n += 1
            name = f"{ws.ref}+{n}"
            if not dry_run:
                await self.git("update-ref", "-m", "corral: other commits made in the workspace",
                               f"refs/heads/{name}", sha, "0" * 40)
            have[name] = sha
            kept.append(name)
        return sorted(kept)

    async def describe(self, ws: Workspace) -> Snapshot:
        head = ws.head or ws.base_commit
        if head == ws.base_commit:  # nothing changed, known without a diff
            self._changed[(ws.base_commit, head)] = []
            return Snapshot(commit=head, files=[], extra_refs=list(ws.extra_refs))
        stat = await self.git("diff", "--numstat", "--no-renames", "-z", f"{ws.base_commit}...{head}")
        files: list[str] = []
        added = removed = 0
        for record in stat.out.split("\0"):
            a, _, rest = record.partition("\t")
            r, _, name = rest.partition("\t")
            if name:
                files.append(name)
                added += int(a) if a.isdigit() else 0
                removed += int(r) if r.isdigit() else 0
        self._changed[(ws.base_commit, head)] = files
        return Snapshot(commit=head, files=files, added=added, removed=removed, extra_refs=list(ws.extra_refs))

    async def diff(self, ws: Workspace, context: int = 3) -> str:
        res = await self.git("diff", f"-U{context}", "--no-color", f"{ws.base_commit}...{ws.head or ws.base_commit}",
                             check=False)
        return res.out

    async def head_of(self, ws: Workspace) -> str:
        return (await self.git("rev-parse", "HEAD", cwd=ws.path)).out.strip()

    # -------------------------------------------------------------------------------- forecast
    async def merge_tree(self, a: str, b: str, attributes: str = "") -> list[str] | None:
        """Conflicting paths of merging ``a`` and ``b`` (None: merges cleanly). Never touches a worktree.
        With ``attributes`` (a file: see :meth:`_merge_attributes`), it goes by those gitattributes
        (merge drivers such as ``merge=union``) and not by the user's checkout's: run in the git dir,
        git reads no worktree's."""
        config = ["-c", f"core.attributesFile={attributes}"] if attributes else []
        return (await self._merged_tree(a, b, self.common_dir if attributes else self.root, *config))[1]

    async def _merged_tree(self, a: str, b: str, cwd: Path, *config: str) -> tuple[str, list[str] | None]:
        """``git merge-tree --write-tree`` of ``a`` and ``b`` run in ``cwd`` (whose gitattributes it goes
        by): the tree it wrote and the conflicting paths (None: merges cleanly). A failure that is no
        conflict (an unknown ref exits 1 too, with nothing on stdout) raises :class:`VcsError`."""
        res = await self.git(*config, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", a, b,
                             check=False, cwd=cwd)
        parts = [p.strip("\n") for p in res.out.split("\0") if p.strip("\n")]
        if res.code == 0 and parts:
            return parts[0], None
        if res.code == 1 and parts:
            return parts[0], sorted(set(parts[1:]))
        raise VcsError(f"git merge-tree {a[:12]} {b[:12]}: {_short_err(res)}")

    async def forecast(self, base: str, heads: dict[str, str], base_commits: dict[str, str] | None = None) -> Forecast:
        async def changed_files(start: str, head: str) -> list[str]:
            if (start, head) in self._changed:  # a snapshot's, of the same commits
                return sorted(self._changed[(start, head)])
            res = await self.git("diff", "--name-only", "--no-renames", "-z", f"{start}...{head}")
            return sorted(f for f in res.out.split("\0") if f)

        tip = await self.resolve(base)
        # trial merges go by the gitattributes a real merge on base goes by (the integration
        # worktree's, base's own), whatever the user's checkout holds
        with tempfile.NamedTemporaryFile("w", prefix="corral-attributes-", encoding="utf-8") as attributes:
            attributes.write(await self._merge_attributes(tip))
            attributes.flush()

            async def merge_tree(a: str, b: str) -> list[str] | None:
                return await self.merge_tree(a, b, attributes.name)

            return await run_forecast(tip, heads, base_commits or {}, changed_files, merge_tree)

    async def _merge_attributes(self, commit: str) -> str:
        """The gitattributes a merge in a worktree of ``commit`` goes by, in one file, lowest precedence
        first (later lines win): the user's own attributes file, then ``commit``'s ``.gitattributes``
        files from the root down, their patterns made relative to the root. ($GIT_DIR/info/attributes,
        above them all, git reads itself.)"""
        own = (await self.git("config", "--path", "--get", "core.attributesFile", check=False)).out.strip()
        config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        parts = [_read(Path(own or os.path.join(config_home, "git", "attributes")))]
        names = (await self.git("ls-tree", "-r", "-z", "--name-only", commit)).out.split("\0")
        found = sorted((n for n in names if n == ".gitattributes" or n.endswith("/.gitattributes")),
                       key=lambda n: n.count("/"))
        for name in found:
            text = (await self.git("show", f"{commit}:{name}", check=False)).out
            folder = name[: -len(".gitattributes")]
            parts += [_attribute_line(line, folder) for line in text.splitlines()]
        return "\n".join(parts) + "\n"

    # ------------------------------------------------------------------------------ integration
    async def integrate(self, run: str, base_commit: str, heads: list[tuple[str, str]], strategy: str,
                        root: str | None) -> tuple[Workspace, list[MergeOutcome]]:
        ws = await self._new_worktree(run, "integration", self.ref_name(run, "integration"), base_commit, root,
                                      "integration")
        env = await self.ident_env()
        if strategy in ("merge", "squash") and not await self._touch_attributes(base_commit, heads):
            outcomes = await self._merge_in_store(ws, heads, strategy, env)
        else:
            outcomes = [await self._merge_one(ws, task, head, strategy, env) for task, head in heads]
        ws.head = await self.head_of(ws)
        return ws, outcomes

    async def _touch_attributes(self, base_commit: str, heads: list[tuple[str, str]]) -> bool:
        """Whether any of ``heads`` changes a ``.gitattributes`` since ``base_commit``: merges in a
        worktree go by the attributes merged before them, so such heads are merged there one by one."""
        if not heads:
            return False
        res = await self.git("rev-list", "-1", *(head for _, head in heads), "--not", base_commit, "--",
                             ".gitattributes", "*/.gitattributes")
        return bool(res.out.strip())

    async def _merge_in_store(self, ws: Workspace, heads: list[tuple[str, str]], strategy: str,
                              env: dict[str, str] | None) -> list[MergeOutcome]:
        """Merge ``heads`` in order into ``ws`` (a checkout of its base) as :meth:`_merge_one` does, the
        same trees and commits, but in the object store (``merge-tree`` and ``commit-tree``, in ``ws``:
        by its gitattributes), then check the result out once. A conflicting head is left out."""
        cur = ws.base_commit
        tree = (await self.git("rev-parse", f"{cur}^{{tree}}")).out.strip()
        outcomes = []
        for task, head in heads:
            try:
                merged, conflicts = await self._merged_tree(cur, head, ws.path)
            except VcsError as exc:
                raise VcsError(f"merging {task} ({strategy}): {exc}") from None
            if conflicts == []:  # as `git merge` exiting 1 with no file unmerged
                raise VcsError(f"merging {task} ({strategy}): git merge-tree says it conflicts, in no file")
            if conflicts is not None:
                outcomes.append(MergeOutcome(task, False, conflict_files=conflicts))
                continue
            # nothing to commit: `git merge --squash` stages nothing, `git merge --no-ff` of a head
            # already merged is "Already up to date" (of any other, a merge commit all the same)
            if merged == tree and (strategy == "squash" or await self._is_ancestor(head, cur)):
                outcomes.append(MergeOutcome(task, True, cur))
                continue
            parents = ["-p", cur, "-p", head] if strategy == "merge" else ["-p", cur]
            cur = (await self.git("commit-tree", merged, *parents, "-m", _merge_message(task, strategy),
                                  env=env)).out.strip()
            tree = merged
            outcomes.append(MergeOutcome(task, True, cur))
        if cur != ws.base_commit:
            await self.git("reset", "--hard", "-q", cur, cwd=ws.path)
        return outcomes

    async def _merge_one(self, ws: Workspace, task: str, head: str, strategy: str,
                         env: dict[str, str] | None) -> MergeOutcome:
        p = ws.path
        if strategy == "merge":
            res = await self.git(*_merge_args(task, head, strategy), cwd=p, env=env, check=False)
            if res.ok:
                return MergeOutcome(task, True, await self.head_of(ws))
            files = await self._unmerged(p)
            await self.git("merge", "--abort", cwd=p, check=False)
        elif strategy == "squash":
            res = await self.git(*_merge_args(task, head, strategy), cwd=p, env=env, check=False)
            if res.ok:
                staged = await self.git("diff", "--cached", "--quiet", cwd=p, check=False)
                if staged.code == 1:
                    await self.git("commit", "-q", "--no-verify", "-m", _merge_message(task, strategy), cwd=p,
                                   env=env)
                return MergeOutcome(task, True, await self.head_of(ws))
            files = await self._unmerged(p)
            await self.git("reset", "--hard", "-q", "HEAD", cwd=p, check=False)
        elif strategy == "rebase":
            mb = (await self.git("merge-base", ws.base_commit, head)).out.strip()
            commits = (await self.git("rev-list", "--reverse", "--no-merges", f"{mb}..{head}")).out.split()
            if not commits:
                return MergeOutcome(task, True, await self.head_of(ws))
            res = await self.git("cherry-pick", "--allow-empty", "--keep-redundant-commits", *commits,
                                 cwd=p, env=env, check=False)
            if res.ok:
                return MergeOutcome(task, True, await self.head_of(ws))
            files = await self._unmerged(p)
            await self.git("cherry-pick", "--abort", cwd=p, check=False)
        else:
            raise VcsError(f"unknown merge strategy {strategy!r}")
        if not files:
            # a failure that is not a conflict: report it plainly rather than call it one
            raise VcsError(f"merging {task} ({strategy}): {_short_err(res)}")
        return MergeOutcome(task, False, conflict_files=files)

    async def redo_merge(self, ws: Workspace, task: str, head: str, strategy: str) -> list[str]:
        """Merge ``head`` into the integration workspace ``ws`` again as :meth:`integrate` tried, but
        leave its conflict in the worktree (markers in the files, the merge under way) for a resolver.
        Returns the conflicted files (none: it merges cleanly now, and is committed)."""
        if strategy not in ("merge", "squash"):
            raise VcsError(f"a conflict of merge strategy {strategy!r} cannot be handed to a resolver "
                           f"(merge and squash can)")
        res = await self.git(*_merge_args(task, head, strategy), cwd=ws.path, env=await self.ident_env(),
                             check=False)
        files = await self._unmerged(ws.path)
        if not res.ok and not files:
            raise VcsError(f"merging {task} ({strategy}): {_short_err(res)}")
        if not files and strategy == "squash":
            await self.git("commit", "-q", "--no-verify", "-m", _merge_message(task, strategy), cwd=ws.path,
                           env=await self.ident_env(), check=False)
        return files

    async def conclude_merge(self, ws: Workspace, task: str, head: str, strategy: str, before: str,
                             files: list[str]) -> str:
        """After a resolver worked on the conflict :meth:`redo_merge` left: the merge committed (what
        the resolver left uncommitted is committed for it), checked to hold no conflict markers in
        ``files`` and (``merge``) to have ``head`` merged. Returns the new head of ``ws``; raises
        :class:`VcsError` saying why the conflict is not resolved."""
        p = ws.path
        left = await self._unmerged(p)
        if left:
            raise VcsError(f"conflicts left in {', '.join(left)}")
        merging = (await self.git("rev-parse", "-q", "--verify", "MERGE_HEAD", cwd=p, check=False)).ok
        if merging or await self._changes(p, ws.exclude):
            await self.git("add", "-A", "--", ".", *(f":(exclude){x}" for x in ws.exclude), cwd=p)
            res = await self.git("commit", "-q", "--no-verify", "-m", _merge_message(task, strategy), cwd=p,
                                 env=await self.ident_env(), check=False)
            if not res.ok:
                raise VcsError(f"git commit: {_short_err(res)}")
        new = await self.head_of(ws)
        if new == before:
            raise VcsError("nothing was committed")
        marked = await self.git("grep", "-l", "-E", "^(<<<<<<<|>>>>>>>)( |$)", new, "--", *files, cwd=p,
                                check=False)
        if marked.out.strip():
            found = sorted({line.partition(":")[2] for line in marked.out.splitlines()})
            raise VcsError(f"conflict markers left in {', '.join(found)}")
        if strategy == "merge" and not await self._is_ancestor(head, new):
            raise VcsError(f"{task}'s work is not merged in what was committed")
        ws.head = new
        return new

    async def undo_merge(self, ws: Workspace, before: str) -> None:
        """Put the integration workspace back where it was before :meth:`redo_merge` (a resolver that
        failed): every change made since is dropped (it is a copy of work kept on the tasks' branches)."""
        await self.git("merge", "--abort", cwd=ws.path, check=False)
        await self.git("reset", "-q", "--hard", before, cwd=ws.path)
        await self.git("clean", "-q", "-fd", cwd=ws.path, check=False)
        ws.head = before

    async def _unmerged(self, path: Path) -> list[str]:
        res = await self.git("diff", "--name-only", "--diff-filter=U", "-z", cwd=path, check=False)
        return sorted(set(f for f in res.out.split("\0") if f))

    # ----------------------------------------------------------------------------------- landing
    async def _checkout_of(self, branch: str) -> Path | None:
        """Where branch ``branch`` is checked out (None: it is not, or there is no such branch), as
        :meth:`checked_out_at` tells, in one git process instead of two."""
        res = await self.git("for-each-ref", "--format=%(refname)%00%(worktreepath)", f"refs/heads/{branch}",
                             check=False)
        for line in res.out.splitlines():
            ref, _, where = line.partition("\0")
            if ref == f"refs/heads/{branch}" and where:
                return Path(where)
        return None

    async def checked_out_at(self, branch: str) -> Path | None:
        res = await self.git("worktree", "list", "--porcelain", "-z")
        for rec in _worktree_records(res.out):
            if rec.get("branch") == f"refs/heads/{branch}":
                return Path(rec["worktree"])
        return None

    async def land(self, base: str, old: str, new: str) -> LandOutcome:
        """Move branch ``base`` from ``old`` to ``new``: a fast-forward in the checkout where it is
        checked out, else a compare-and-swap of the ref. Refused (ok=False, saying why) when base is
        not a branch, moved (``why`` "moved" when it only gained commits of no corral branch),
        is under an operation of the user's (rebase, merge, ...), or its checkout has uncommitted
        changes to files the landing changes, or untracked or ignored files it would replace (the
        other uncommitted changes stay as they are: a fast-forward leaves them)."""
        async with self.mutating():
            # whether base is a branch, and where it is now: one for-each-ref, under the lock
            tip = (await self._branch_tips(base, check=True)).get(base)
            if tip is None:
                return self._refuse(base, "not a branch",
                                    f"base {base!r} is not a branch, so there is nothing to move", old, new)
            current = tip.oid
            if current != old:
                message, gained = await self._moved(base, old, current)
                return self._refuse(base, "moved", message, old, new, "moved" if gained else "rewritten")
            busy = await self._busy(base)
            if busy:
                return self._refuse(base, "busy", busy, old, new)
            taken = await self._stash_landing(old, new)
            if taken:
                return self._refuse(base, "stash", taken, old, new)
            where = await self.checked_out_at(base)
            if where is not None:
                dirty = await self._dirty_in_the_way(where, old, new)
                if dirty:
                    more = f" and {len(dirty) - 5} more" if len(dirty) > 5 else ""
                    return self._refuse(
                        base, "dirty",
                        f"{base} is checked out at {where} with uncommitted changes to file(s) the landing "
                        f"changes: {', '.join(dirty[:5])}{more}; corral will not touch them", old, new,
                    )
                files = await self._in_the_way(where, old, new)
                if files:
                    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
                    return self._refuse(
                        base, "in the way",
                        f"landing would replace untracked or ignored file(s) of yours in {where}: "
                        f"{', '.join(files[:5])}{more}; corral will not touch them", old, new,
                    )
                res = await self.git("merge", "--ff-only", "-q", new, cwd=where, check=False)
                if not res.ok:
                    return self._refuse(base, "failed", f"fast-forward of {base} in {where} failed: {_short_err(res)}",
                                        old, new)
            else:
                res = await self.git("update-ref", "-m", "corral: land", f"refs/heads/{base}", new, old, check=False)
                if not res.ok:
                    return self._refuse(base, "failed", f"update of {base} refused: {_short_err(res)}", old, new)
        self._refusals.pop(base, None)
        return LandOutcome(True, f"{base} moved {old[:12]} -> {new[:12]}", old, new)

    async def _stash_entries(self) -> list[tuple[str, str]]:
        """The stash, newest first: (commit, message) of each entry. Its entries are the lines of the
        reflog of ``refs/stash`` (``git stash`` always writes one): with refs stored as files and no
        such reflog, there is none, and no git process is started to say so (on the way to the
        run's start, and again at its end)."""
        if not (self.common_dir / "reftable").exists() and not (self.common_dir / "logs" / "refs" / "stash").exists():
            return []
        res = await self.git("log", "-g", "--format=%H%x00%gs", "refs/stash", "--", check=False)
        return [tuple(line.split("\0", 1)) for line in res.out.splitlines() if "\0" in line]  # type: ignore[misc]

    async def remember_user_state(self) -> None:
        """What of the user's corral checks before landing: the entries of their stash (shared by every
        checkout; ``git stash pop`` by an agent that got past the guard takes one, and no hook sees it)."""
        self._stash_at_start = await self._stash_entries()

    async def restore_user_state(self) -> list[str]:
        """Put back the entries of the user's stash gone since the run started (the stash is shared
        by every checkout; ``git stash pop`` by an agent that got past the guard takes one, and no
        hook sees it, or a refused one leaves the stash's list empty). Returns what was done."""
        if not self._stash_at_start:  # (nothing to go missing)
            return []
        now = await self._stash_entries()
        gone = [(c, m) for c, m in self._stash_at_start if c not in {c for c, _ in now}]
        if gone:
            # the stash rebuilt in its order: the entries of the start, then those made since (git
            # stash store writes no entry for the commit refs/stash points at already)
            start = {c for c, _ in self._stash_at_start}
            entries = [e for e in now if e[0] not in start] + self._stash_at_start
            async with self.mutating():
                await self.git("update-ref", "-d", "refs/stash", check=False)
                for commit, message in reversed(entries):  # oldest first
                    await self.git("stash", "store", "-m", message, commit, check=False)
        self._stash_taken += gone
        return [f"{len(gone)} entr{'y' if len(gone) == 1 else 'ies'} of your stash went missing during the run "
                "(an agent's git stash?): put back, see git stash list"] if gone else []

    async def _stash_landing(self, old: str, new: str) -> str:
        """Why ``new`` must not land: it carries changes of a stash entry an agent took ("" if not)."""
        await self.restore_user_state()
        landing: list[str] = []
        for commit, _ in self._stash_taken:
            changed = await self.git("diff", "--name-only", "-z", f"{commit}^1", commit, check=False)
            for path in (p for p in changed.out.split("\0") if p):
                blobs = [(await self.git("rev-parse", "-q", "--verify", f"{rev}:{path}", check=False)).out.strip()
                         for rev in (commit, new, old)]
                if blobs[0] and blobs[0] == blobs[1] != blobs[2]:
                    landing.append(path)
        if not landing:
            return ""
        return (f"the result holds changes of your stash ({', '.join(sorted(set(landing))[:5])}): an agent took "
                "them from it (they are back in git stash list)")

    def _refuse(self, base: str, why: str, message: str, old: str, new: str, kind: str = "") -> LandOutcome:
        self._refusals[base] = why
        return LandOutcome(False, message, old, new, kind or why)

    async def merge_base_into(self, ws: Workspace, tip: str) -> list[str]:
        """Merge base's new ``tip`` into the integration worktree ``ws`` (a merge commit on its branch).
        What verify left in the worktree goes first: what lands is what was committed and verified."""
        p = ws.path
        if ws.role == "integration":  # a task's worktree was committed: what is left there is its agent's
            await self.git("reset", "-q", "--hard", "HEAD", cwd=p)
            await self.git("clean", "-q", "-fd", cwd=p, check=False)
        res = await self.git("merge", "--no-ff", "--no-edit", "-m", f"corral: merge {tip[:12]}, where base moved "
                             "during the run", tip, cwd=p, env=await self.ident_env(), check=False)
        if res.ok:
            ws.head = await self.head_of(ws)
            return []
        files = await self._unmerged(p)
        await self.git("merge", "--abort", cwd=p, check=False)
        if not files:
            raise VcsError(f"merging {tip[:12]} into {ws.ref}: {_short_err(res)}")
        return files

    async def conflict_hint(self, base: str, ref: str, files: list[str]) -> str:
        """The merge corral could not make, made by hand where base is checked out (or after checking
        it out), its conflicts left for the user to resolve."""
        where = await self.checked_out_at(base)
        merge = f"git -C {shlex.quote(str(where))} merge {ref}" if where else f"git checkout {base} && git merge {ref}"
        return (f"to land by hand: {merge}, resolve the conflicts in {', '.join(files[:5])}, git commit, "
                "then verify the result")

    def land_hint(self, base: str, ref: str) -> str:
        """What to do with ``ref`` after :meth:`land` refused: what works depends on why."""
        why = self._refusals.get(base, "")
        if why in ("not a branch", "stash"):
            return f"the result is kept on branch {ref}"
        if why in ("moved", "busy"):  # base has (or will have) commits the result lacks: no fast-forward
            when = " once that is done" if why == "busy" else ""
            return f"to land by hand{when}: git checkout {base} && git merge {ref}, then verify the result again"
        if why == "dirty":
            return f"commit or stash those changes of yours, then: git checkout {base} && git merge --ff-only {ref}"
        if why == "in the way":
            return f"to land by hand, move those files elsewhere, then: git checkout {base} && git merge --ff-only {ref}"
        return f"to land by hand: git checkout {base} && git merge --ff-only {ref}"

    async def _moved(self, base: str, old: str, current: str) -> tuple[str, bool]:
        """Says how ``base`` moved from ``old`` to ``current`` and, where it can, what moved it: the
        last entry of its reflog, and corral branches whose commits it now holds. And whether it only
        gained commits, none of corral's branches' (merging them into the result may land it; an
        agent that moved base to its own work outside the guard must not land that way)."""
        how = f"now {current[:12]}, was {old[:12]}"
        gained = await self._is_ancestor(old, current)
        if gained:
            count = (await self.git("rev-list", "--count", f"{old}..{current}", check=False)).out.strip()
            how += f": {count} commit{'s' if count != '1' else ''} since"
        else:
            how += ": rewritten, the run's base is no longer in it"
        last = (await self.git("log", "-g", "-1", "--format=%gs", f"refs/heads/{base}", "--", check=False)).out.strip()
        if last:
            how += f", last '{last}'"
        message = f"{base} moved during the run ({how})"
        res = await self.git("for-each-ref", "--format=%(refname:short)", f"--merged={current}", f"--no-merged={old}",
                             "refs/heads/corral/", check=False)
        holds = res.out.split()
        if holds:
            message += f"; {base} now holds commits of {', '.join(holds[:3])}" + (" and more" if len(holds) > 3 else "")
        return message, gained and not holds

    async def _busy(self, base: str) -> str:
        """What the user is in the middle of on ``base`` (a rebase, merge, cherry-pick, revert, am or
        bisect), in any checkout of it or any worktree rebasing or bisecting it; empty when nothing."""
        for gitdir, where in await self._worktree_dirs():
            head = _read(gitdir / "HEAD")
            if head == f"ref: refs/heads/{base}":
                ops = _operations(gitdir)
                if ops:
                    return f"{where} is in the middle of {ops[0]} on {base}: finish or abort it first"
            for state in ("rebase-merge", "rebase-apply"):
                if _read(gitdir / state / "head-name") == f"refs/heads/{base}":
                    return f"{where} is in the middle of a rebase of {base}: finish or abort it first"
            if _read(gitdir / "BISECT_START") in (base, f"refs/heads/{base}"):
                return f"{where} is in the middle of a bisect of {base}: finish it first (git bisect reset)"
        return ""

    async def _worktree_dirs(self) -> list[tuple[Path, Path]]:
        """(git dir, checkout) of every worktree of the repository: the main one and each linked one."""
        res = await self.git("worktree", "list", "--porcelain", "-z")
        out = []
        for i, rec in enumerate(_worktree_records(res.out)):
            where = Path(rec["worktree"])
            if i == 0:
                out.append((self.common_dir, where))
                continue
            admin = _admin_of(where)
            if admin:
                out.append((Path(admin), where))
        return out

    async def _dirty_in_the_way(self, where: Path, old: str, new: str) -> list[str]:
        """Files of the checkout at ``where`` with uncommitted changes (staged or not) that a
        fast-forward from ``old`` to ``new`` changes; the others it leaves as they are. A status git
        cannot give counts as all of them in the way."""
        status = await self.git("status", "--porcelain", "-z", "--untracked-files=no", "--no-renames", cwd=where,
                                check=False)
        if not status.ok:
            return [f"(git status failed: {_short_err(status)})"]
        dirty = {entry[3:] for entry in status.out.split("\0") if len(entry) > 3}
        if not dirty:
            return []
        changed = await self.git("diff", "--name-only", "--no-renames", "-z", old, new)
        return sorted(dirty & {p for p in changed.out.split("\0") if p})

    async def _in_the_way(self, where: Path, old: str, new: str) -> list[str]:
        """Untracked or ignored files of the checkout at ``where`` that a fast-forward from ``old`` to
        ``new`` would replace or delete: git overwrites ignored ones when the incoming tree tracks
        that path (a filled-in ``.env``), or a directory of them where a file comes in."""
        changed = await self.git("diff", "--name-only", "--no-renames", "-z", old, new)
        paths = [p for p in changed.out.split("\0") if p]
        if not paths:
            return []
        others = await self.git("ls-files", "-z", "--others", "--directory", "--no-empty-directory", cwd=where)
        mine = {p.rstrip("/"): p for p in others.out.split("\0") if p}  # 'build/': a whole directory of them
        under: dict[str, list[str]] = {}
        for key, entry in mine.items():
            for parent in _parents(key):
                under.setdefault(parent, []).append(entry)
        hits = []
        for path in paths:
            hits += [mine[p] for p in (path, *_parents(path)) if p in mine]  # that path, or a dir where it goes
            hits += under.get(path, [])  # files of theirs in a directory where a file comes
        return sorted(set(hits))

    # ----------------------------------------------------------------------------------- cleanup
    async def remove_workspace(self, ws: Workspace, keep_ref: bool) -> None:
        """Remove a worktree corral made: its directory and git's record of it. With ``keep_ref`` its
        work is gathered onto its branch first (uncommitted changes committed, every commit made there
        on a ref), and a workspace holding changes that cannot be committed stays where it is
        (:class:`VcsError` says so). Without ``keep_ref`` its branch is deleted (a discarded task, or
        one whose work is merged); refs holding its other commits are never deleted here."""
        with anyio.CancelScope(shield=True):
            # a task's workspace; an integration workspace holds corral's own merges and what verify
            # left behind, nothing to salvage
            if keep_ref and ws.role == "task" and (self._is_live(ws) or ws.admin):
                snap = await self.snapshot(ws, f"corral: salvage uncommitted work of {ws.task}")
                if snap.uncommitted:
                    raise VcsError(f"{ws.path} is left in place: it holds changes corral cannot commit "
                                   f"({', '.join(snap.uncommitted[:5])})")
            await self._take_down(ws, keep_ref)

    async def remove_settled(self, ws: Workspace) -> None:
        """:meth:`remove_workspace` with its branch kept, without the snapshot: the caller's own has
        just committed all of it, and nothing has run in it since."""
        with anyio.CancelScope(shield=True):
            await self._take_down(ws, keep_ref=True)

    async def _take_down(self, ws: Workspace, keep_ref: bool) -> None:
        """The removal of a workspace whose work is on its branch (or to be dropped with it); the
        history of a repository an agent made in it, above the files its last snapshot found, kept."""
        if ws.role == "task":
            await self._keep_nested_histories(ws, ws.memo[1].files if ws.memo else [])
        # the files first, outside the lock and in parallel with other removals (the work is on
        # the branch by now); then git's record of the worktree, under the lock
        if ws.path.is_dir():
            await anyio.to_thread.run_sync(shutil.rmtree, ws.path, True)
        # (its admin dir, lock included, is all git keeps of it: removed as `worktree prune` would,
        # without a git process, and without pruning anyone else's)
        async with self.mutating():
            await self._drop_admin_of(ws.path, ws.admin)
            if not keep_ref:
                await self.git("update-ref", "-d", f"refs/heads/{ws.ref}", check=False)
        left = []
        if ws.path.exists():
            left.append(f"its directory {ws.path}")
        # (the admin dirs named after its directory, not every one: a run's 64 workspaces removed
        # one by one read 2,000 files)
        if self._admin_dir_of(ws.path, ws.admin, named=ws.path.name) is not None:
            left.append("git's record of it")
        if left:
            raise VcsError(f"workspace {ws.path} not fully removed: {' and '.join(left)} remain")
        if ws.key:
            await self._absorb(objstore.objects_dir(self.state_dir, ws.key))
            self.registry.drop(ws.key)

    async def _absorb(self, own: Path) -> None:
        """The objects its agents wrote (:mod:`.objstore`) moved into the repository's store."""
        if own.exists():
            try:
                await anyio.to_thread.run_sync(objstore.absorb, self.common_dir, own)
            except OSError as e:
                raise VcsError(f"the objects in {own} could not be moved into the repository: {e}") from e

    async def forget_dead_processes(self) -> None:
        """The object directories (:mod:`.objstore`) of workspaces no record names any more (their
        workspace removed, corral killed before it moved their objects), moved into the repository."""
        for own in objstore.lent(self.state_dir):
            if self.registry.get(own.name) is None:
                await self._absorb(own)

    async def _keep_nested_histories(self, ws: Workspace, files: Sequence[str]) -> None:
        """Move the ``.git`` of each repository an agent made in ``ws`` (found above the task's
        ``files``: their files are the task's, see :meth:`_stage_nested`) into the run's folder, so
        that the commits made in it outlive the workspace."""
        seen: set[str] = set()
        found: set[str] = set()
        for name in files:
            parts = name.split("/")[:-1]
            for rel in ("/".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if rel not in seen:
                    seen.add(rel)
                    if (ws.path / rel / ".git").is_dir() and not (ws.path / rel).is_symlink():
                        found.add(rel)
        for rel in sorted(found, key=lambda r: -r.count("/")):  # the innermost first
            note = await keep_repository_history(self.state_dir, ws, rel)
            if note:
                self._notices.append(note)

    async def delete_ref(self, ref: str, old: str = "") -> None:
        """Delete the branch ``ref`` (only while it points at ``old``, when given)."""
        async with self.mutating():
            await self.git("update-ref", "-d", f"refs/heads/{ref}", *filter(None, [old]), check=False)

    async def drop_works(self, wss: list[Workspace], tips: Mapping[str, str] | None = None) -> list[str]:
        """Their branches deleted in one ``update-ref --stdin`` transaction, each only while it still
        points where ``tips`` says (what was found to hold nothing of its own); when it fails (one of
        them could not be deleted, or moved since, so none was), one by one. Returns the branches
        left (moved since, or not deletable)."""
        if not wss:
            return []
        tips = tips or {}

        def line(ws: Workspace) -> str:
            return f"delete refs/heads/{ws.ref} {tips.get(ws.ref, '')}".rstrip() + "\n"

        async with self.mutating():
            res = await self.git("update-ref", "--stdin", stdin="".join(map(line, wss)), check=False)
        if res.ok:
            return []
        left = []
        for ws in wss:
            await self.delete_ref(ws.ref, tips.get(ws.ref, ""))
            if await self.ref_exists(ws.ref):
                left.append(ws.ref)
        return left

    async def workspace_at(self, path: Path) -> dict[str, str] | None:
        """git's record of the worktree at ``path`` (``worktree``, ``HEAD``, ``branch``, ``locked``...)."""
        res = await self.git("worktree", "list", "--porcelain", "-z")
        for rec in _worktree_records(res.out):
            if os.path.realpath(rec.get("worktree", "")) == os.path.realpath(path):
                return rec
        return None

    async def vet_leftover(self, rec: Record) -> str:
        """Why corral must not act on the registered workspace ``rec`` ("" when it may): it is the
        main worktree, or git knows a worktree at that path that corral's lock reason does not name."""
        why = await super().vet_leftover(rec)
        if why:
            return why
        path = Path(rec.path)
        if os.path.realpath(path) == os.path.realpath(self.root) or path in (self.root, self.common_dir):
            return "it is the repository's main worktree"
        found = await self.workspace_at(path)
        if found is None:
            if path.is_dir() and any(path.iterdir()):
                return "git no longer knows it as a worktree and it holds files"
            return ""
        if reason_key(found.get("locked", "")) != rec.key:
            return "git's worktree there is not the one corral registered"
        return ""

    async def legacy_leftovers(self) -> list[Record]:
        """Worktrees made by corral before the registry existed: locked with reason ``corral run=R
        pid=P`` and recorded as task T's workspace in run R's journal (both must agree)."""
        from ..journal import list_runs

        journals = {r["run"]: r for r in list_runs(self.state_dir)}
        res = await self.git("worktree", "list", "--porcelain", "-z")
        out = []
        for wt in _worktree_records(res.out):
            reason = wt.get("locked", "")
            if not reason.startswith("corral run=") or reason_key(reason):
                continue
            words = dict(w.split("=", 1) for w in reason.split()[1:] if "=" in w)
            run = words.get("run", "")
            for task, info in (journals.get(run, {}).get("tasks") or {}).items():
                if isinstance(info, dict) and info.get("workspace") and \
                        os.path.realpath(info["workspace"]) == os.path.realpath(wt["worktree"]):
                    out.append(Record(key="", run=run, task=task, role="task", path=wt["worktree"],
                                      ref=str(info.get("branch") or ""), vcs="git",
                                      base_commit=str(info.get("base_commit") or ""), state=READY,
                                      pid=int(words.get("pid", "0")) if words.get("pid", "").isdigit() else 0))
        return out

    async def holds_unmerged_work(self, ref: str, base_commit: str = "", base_branch: str = "") -> bool:
        """Whether ``ref`` holds commits that no branch, tag or remote branch outside corral's has,
        and that are not in ``base_commit``: deleting it would lose them. ``base_branch`` does not
        count as elsewhere (work that reached it other than by corral's landing is not safe there)."""
        res = await self.git("rev-list", "-n", "1", f"refs/heads/{ref}", *([f"^{base_commit}"] if base_commit else []),
                             "--not", "--exclude=corral/*", *([f"--exclude={base_branch}"] if base_branch else []),
                             "--branches", "--tags", "--remotes", check=False)
        return not res.ok or bool(res.out.strip())

    async def list_refs(self, prefix: str = "corral/") -> dict[str, str]:
        """Branches whose name starts with ``prefix``: name -> commit."""
        # for-each-ref matches whole path components: ask for the prefix's folder, filter here
        folder = prefix.rpartition("/")[0]
        res = await self.git("for-each-ref", "--format=%(refname:short)\t%(objectname)",
                             f"refs/heads/{folder}/" if folder else "refs/heads/")
        refs = {}
        for line in res.out.splitlines():
            name, _, sha = line.partition("\t")
            if name.startswith(prefix):
                refs[name] = sha
        return refs


def _attribute_line(line: str, folder: str) -> str:
    """A line of ``folder``'s ``.gitattributes`` as a line of a file at the root: a pattern without a
    slash matches a name at any depth below ``folder``, one with a slash is relative to it; macros
    (``[attr]``) count only at the root, as git has it."""
    text = line.strip()
    if not folder or not text or text.startswith("#"):
        return line
    pattern, *rest = text.split(None, 1)
    if pattern.startswith(("[attr]", '"')):  # a macro (git ignores it here), a quoted pattern: left out
        return ""
    rebased = pattern.lstrip("/") if "/" in pattern.rstrip("/") else "**/" + pattern
    return f"{folder}{rebased} {' '.join(rest)}"


def _merge_args(task: str, head: str, strategy: str) -> list[str]:
    """The git command that merges ``head`` into an integration worktree (strategy merge or squash)."""
    if strategy == "squash":
        return ["merge", "--squash", "-q", head]
    return ["merge", "--no-ff", "--no-edit", "-q", "-m", _merge_message(task, strategy), head]


def _merge_message(task: str, strategy: str) -> str:
    """The message of the commit merging ``task`` into an integration (strategy merge or squash)."""
    return f"corral: {task} (squashed)" if strategy == "squash" else f"corral: merge {task}"


#: a branch name of letters, digits, '.', '_', '-' and '/': none of the characters git refuses, so
#: only git's rules about dots and slashes apply (git-check-ref-format(1))
def _check_rev(rev: str) -> None:
    """Refuse a base no git command should be given: empty, an option, or holding a NUL."""
    if not rev or rev.startswith("-") or "\0" in rev:
        raise UsageError(f"base {rev!r}: not a valid revision")


_PLAIN_REF = re.compile(r"\A[A-Za-z0-9._/-]+\Z")
#: what :meth:`GitBackend._branch_tips` asks ``for-each-ref`` of each branch
_TIPS_FORMAT = "--format=%(refname)%00%(objecttype)%00%(objectname)%00%(worktreepath)"


def _head_branch(git_dir: Path) -> str:
    """The branch ``git_dir``'s ``HEAD`` names, read as :meth:`GitBackend.current_base` reads it
    ("" when it names none, or not plainly)."""
    text = _read(git_dir / "HEAD")
    ref = text[4:].strip() if text.startswith("ref:") else ""
    name = ref.removeprefix("refs/heads/")
    return name if ref.startswith("refs/heads/") and _PLAIN_REF.match(name) and _plain_ref_ok(name) else ""


def _plain_ref_ok(name: str) -> bool:
    """git-check-ref-format's verdict on ``refs/heads/<name>``, for a name :data:`_PLAIN_REF` matches:
    no empty component, none starting with '.' or ending with '.lock', no '..', no final '.'."""
    parts = name.split("/")
    return not (".." in name or name.endswith(".")
                or any(not p or p.startswith(".") or p.endswith(".lock") for p in parts))


def _index_entries(git_dir: Path) -> int:
    """How many files the index of the checkout at ``git_dir`` lists (from its header; 0 when it
    cannot tell): about the size of a workspace's checkout, known without a git process."""
    try:
        with open(git_dir / "index", "rb") as f:
            head = f.read(12)
    except OSError:
        return 0
    return int.from_bytes(head[8:12], "big") if len(head) == 12 and head[:4] == b"DIRC" else 0


def _admin_of(path: Path) -> str:
    """The admin dir a linked worktree's ``.git`` file points at, a relative one taken from the
    worktree ("" when there is none)."""
    text = _read(path / ".git")
    if not text.startswith("gitdir:"):
        return ""
    return str(path / text[len("gitdir:"):].strip())  # an absolute path stays as it is


def _nested_repos(root: Path, paths: Sequence[str]) -> list[str]:
    """Of ``paths`` (from the workspace ``root``; git status ends a repository it will not look into
    with "/"), the git repositories made inside the workspace: a directory with a ``.git`` of its
    own that is no submodule of the repository's (``.gitmodules``)."""
    found = []
    for path in paths:
        name = path.rstrip("/")
        where = root / name
        if name and where.is_dir() and not where.is_symlink() and os.path.lexists(where / ".git"):
            found.append(name)
    if found and (root / ".gitmodules").exists():
        subs = set(re.findall(r"^\s*path\s*=\s*(.+?)\s*$", _read(root / ".gitmodules"), re.M))
        found = [name for name in found if name not in subs]
    return found


def _mode_of(path: Path) -> str:
    """The index mode git gives the file at ``path``."""
    if path.is_symlink():
        return "120000"
    return "100755" if os.stat(path).st_mode & 0o100 else "100644"


def _uninitialised_with_files(path: Path) -> bool:
    """A submodule directory that is not checked out (no ``.git``) yet holds files."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return bool(names) and ".git" not in names


class _Tip(NamedTuple):
    """A branch as ``for-each-ref`` shows it: the object it points at, that object's type, and the
    checkout it is checked out in ("": none)."""

    oid: str
    kind: str
    where: str

    @property
    def commit(self) -> str:
        """The commit it points at ("" when it points at something else, a tag say)."""
        return self.oid if self.kind == "commit" else ""


_HEX40 = re.compile(r"\A[0-9a-f]{40}\Z")
#: the two letters ``git status --porcelain`` shows a path in conflict with (unmerged)
_UNMERGED = frozenset({"DD", "AU", "UD", "UA", "DU", "AA", "UU"})


#: what the user may be in the middle of, by the file git keeps in the worktree's git dir meanwhile
_OPERATIONS = {
    "MERGE_HEAD": "a merge",
    "rebase-merge": "a rebase",
    "rebase-apply": "a rebase or am",
    "CHERRY_PICK_HEAD": "a cherry-pick",
    "REVERT_HEAD": "a revert",
    "sequencer": "a cherry-pick or revert",
    "BISECT_LOG": "a bisect",
}


def _operations(gitdir: Path) -> list[str]:
    return [what for name, what in _OPERATIONS.items() if (gitdir / name).exists()]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _parents(path: str) -> list[str]:
    """``a/b/c`` -> ``['a/b', 'a']``."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _worktree_records(out: str) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for field in out.split("\0"):
        if not field:
            if cur:
                records.append(cur)
                cur = {}
            continue
        key, _, value = field.partition(" ")
        cur[key] = value
    if cur:
        records.append(cur)
    return records
