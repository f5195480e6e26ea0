"""The git backend: worktrees on ``corral/<run>/<task>`` branches, trial merges with
``git merge-tree --write-tree``, merges in a private integration worktree, landing by
compare-and-swap.

git runs through GitPython's command layer (``git.Git.execute``) in worker threads, one command
object per call (GitPython objects are not shared between threads), each git process in its own
process group. Every mutation of shared repository state (worktree add/remove/prune, branch and ref
updates) runs under one repo-wide lock: an ``anyio.Lock`` inside this process plus ``flock`` on
``<git-common-dir>/corral/engine.lock`` across processes.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
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
    private_dir,
)

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
import git as gitpython  # noqa: E402  (GitPython; imported after GIT_PYTHON_REFRESH is set)

# Options every engine git command gets: no hooks, no signing prompts, no pager, no auto-gc.
ENGINE_CONFIG = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "commit.gpgsign=false",
    "-c", "gc.auto=0",
    "-c", "branch.autoSetupMerge=false",
    "-c", "advice.detachedHead=false",
    "-c", "core.quotePath=false",
)
RETRIES = 5


GitResult = CommandResult


def _run_git_sync(args: Sequence[str], cwd: str, env: dict[str, str] | None, stdin_text: str | None) -> GitResult:
    cmd = gitpython.Git(cwd)
    istream = None
    if stdin_text is not None:
        istream = tempfile.TemporaryFile()
        istream.write(stdin_text.encode())
        istream.seek(0)
    try:
        if not os.path.isdir(cwd):
            return GitResult(128, "", f"fatal: cannot change to '{cwd}': No such file or directory")
        code, out, err = cmd.execute(
            ["git", *ENGINE_CONFIG, *args],
            istream=istream,
            with_extended_output=True,
            with_exceptions=False,
            env=env,
            strip_newline_in_stdout=False,
            start_new_session=True,
        )
    except gitpython.exc.GitCommandNotFound as exc:  # the directory went away meanwhile
        return GitResult(128, "", f"fatal: {exc}")
    finally:
        if istream is not None:
            istream.close()
    return GitResult(code, out, err)


def _short_err(res: GitResult) -> str:
    text = (res.err or res.out).strip().splitlines()
    lines = [l for l in text if l.strip()]
    return lines[-1] if lines else f"exit code {res.code}"


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
        self._limiter = anyio.CapacityLimiter(8)
        #: why the last landing on each base was refused, for :meth:`land_hint`
        self._refusals: dict[str, str] = {}

    # ----------------------------------------------------------------------------------- plumbing
    @classmethod
    async def open(cls, path: str | Path) -> "GitBackend":
        path = Path(path)
        if not path.is_dir():
            raise UsageError(f"{path}: no such directory")
        res = await anyio.to_thread.run_sync(
            _run_git_sync, ["rev-parse", "--show-toplevel", "--git-common-dir", "--git-dir"], str(path), None, None
        )
        if not res.ok:
            raise UsageError(f"{path}: not a git repository")
        lines = res.out.strip().splitlines()
        if len(lines) < 3:
            raise UsageError(f"{path}: a bare git repository has no working tree to run in")
        root = Path(lines[0]).resolve()
        common = (path / lines[1]).resolve() if not os.path.isabs(lines[1]) else Path(lines[1]).resolve()
        gdir = (path / lines[2]).resolve() if not os.path.isabs(lines[2]) else Path(lines[2]).resolve()
        return cls(root, common, gdir)

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
        """Author/committer for engine commits when the user configured none."""
        if self._ident is None:
            name = await self.git("config", "user.name", check=False)
            email = await self.git("config", "user.email", check=False)
            env: dict[str, str] = {}
            if not name.out.strip():
                env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "corral"
            if not email.out.strip():
                env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "corral@localhost"
            self._ident = env
        return self._ident or None

    # ---------------------------------------------------------------------------------- queries
    @property
    def state_dir(self) -> Path:
        return self.common_dir / "corral"

    async def current_base(self) -> str:
        # the full name: --short gives 'heads/main' when a tag 'main' exists too
        res = await self.git("symbolic-ref", "-q", "HEAD", check=False)
        if not res.ok or not res.out.strip().startswith("refs/heads/"):
            raise UsageError(f"{self.root}: HEAD is detached; give a base (--base REV or base = \"...\")")
        return res.out.strip().removeprefix("refs/heads/")

    async def resolve(self, rev: str) -> str:
        """The commit of ``rev``; a branch of that name wins over a tag of the same name (git's own
        order picks the tag), as landing moves the branch."""
        if not rev or rev.startswith("-") or "\0" in rev:
            raise UsageError(f"base {rev!r}: not a valid revision")
        full = f"refs/heads/{rev}" if await self.is_branch(rev) else rev
        res = await self.git("rev-parse", "--verify", "-q", f"{full}^{{commit}}", check=False)
        if not res.ok or not res.out.strip():
            raise UsageError(f"base {rev!r}: no such revision in {self.root}")
        return res.out.strip()

    async def preflight(self) -> list[str]:
        problems = [f"{self.root} is in the middle of {what}: finish or abort it first"
                    for what in _operations(self.git_dir)]
        if await self.is_branch("corral"):
            problems.append(f"{self.root}: a branch named 'corral' exists, and git cannot create corral's branches "
                            "corral/<run>/<task> beside it: rename it (git branch -m corral NEW-NAME)")
        return problems

    def ref_name(self, run: str, task: str) -> str:
        return f"corral/{run}/{task}"

    async def check_ref_name(self, name: str) -> bool:
        res = await self.git("check-ref-format", f"refs/heads/{name}", check=False)
        return res.ok

    async def ref_exists(self, ref: str) -> bool:
        res = await self.git("rev-parse", "--verify", "-q", f"refs/heads/{ref}", check=False)
        return res.ok

    async def is_branch(self, name: str) -> bool:
        """Whether ``refs/heads/<name>`` exists, exactly (not ``main~1``, which rev-parse would take)."""
        res = await self.git("show-ref", "--verify", "-q", f"refs/heads/{name}", check=False)
        return res.ok

    # ------------------------------------------------------------------------------- workspaces
    async def _add_worktree(self, path: Path, args: list[str], branch: str | None) -> None:
        """``git worktree add`` under the repo lock, retried on lock contention (deleting a branch a
        failed attempt left behind), with the checkout itself done outside the lock."""
        last = None
        for attempt in range(RETRIES):
            async with self.mutating():
                res = await self.git("worktree", "add", "--no-checkout", *args, check=False)
                if not res.ok:
                    last = res
                    await self.git("worktree", "prune", check=False)
                    if branch:
                        await self.git("update-ref", "-d", f"refs/heads/{branch}", check=False)
            if res.ok:
                break
            if not _is_contention(res):
                raise VcsError(f"git worktree add {path}: {_short_err(res)}")
            path.mkdir(mode=0o700, exist_ok=True)
            await anyio.sleep(0.05 * (attempt + 1))
        else:
            assert last is not None
            raise VcsError(f"git worktree add {path}: {_short_err(last)} (after {RETRIES} tries)")
        # populate the checkout in parallel with other workspaces: this touches only the new
        # worktree's own index
        async with self.checkouts:
            res = await self.git("reset", "--hard", "-q", cwd=path, check=False)
        if not res.ok:
            raise VcsError(f"checkout of {path}: {_short_err(res)}")

    def _lock_reason(self, run: str) -> str:
        return f"corral run={run} pid={os.getpid()}"

    async def create_workspace(self, run: str, task: str, base_commit: str, root: str | None) -> Workspace:
        return await self._new_worktree(run, task, self.ref_name(run, task), base_commit, root)

    async def _new_worktree(self, run: str, task: str, branch: str, base_commit: str, root: str | None) -> Workspace:
        """A locked worktree on a new branch at ``base_commit`` in a fresh private directory; on any
        failure nothing is left behind."""
        path = private_dir(root, f"corral-{task}-")
        try:
            await self._add_worktree(
                path,
                ["--no-track", "--lock", "--reason", self._lock_reason(run), "-b", branch, str(path), base_commit],
                branch,
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._forget_path(path)
                shutil.rmtree(path, ignore_errors=True)
            raise
        return Workspace(task=task, path=path, ref=branch, name=path.name, base_commit=base_commit, head=base_commit)

    async def _forget_path(self, path: Path) -> None:
        async with self.mutating():
            await self.git("worktree", "unlock", str(path), check=False)
            await self.git("worktree", "remove", "--force", "--force", str(path), check=False)
            await self.git("worktree", "prune", check=False)

    async def _dirty(self, path: Path) -> bool:
        res = await self.git("status", "--porcelain", "-uall", cwd=path, check=False)
        return res.ok and bool(res.out.strip())

    async def snapshot(self, ws: Workspace, message: str) -> Snapshot:
        path = ws.path
        if path.is_dir() and await self._dirty(path):
            await self.git("add", "-A", cwd=path)
            await self.git("commit", "-q", "--no-verify", "--allow-empty", "-m", message, cwd=path,
                           env=await self.ident_env())
        head = (await self.git("rev-parse", "HEAD", cwd=path)).out.strip() if path.is_dir() else ws.head
        # the agent may have moved HEAD off its branch: keep the branch pointing at its work
        await self._sync_branch(ws, head)
        ws.head = head
        if not ws.base_commit:
            return Snapshot(commit=head, files=[])
        return await self.describe(ws)

    async def _sync_branch(self, ws: Workspace, head: str) -> None:
        tip = await self.git("rev-parse", "-q", "--verify", f"refs/heads/{ws.ref}", check=False)
        if tip.ok and tip.out.strip() == head:
            return
        anc = await self.git("merge-base", "--is-ancestor", tip.out.strip() or ws.base_commit, head, check=False)
        if anc.ok:
            async with self.mutating():
                await self.git("update-ref", "-m", "corral: follow the agent's HEAD", f"refs/heads/{ws.ref}", head)

    async def describe(self, ws: Workspace) -> Snapshot:
        head = ws.head or ws.base_commit
        names = await self.git("diff", "--name-only", "--no-renames", "-z", f"{ws.base_commit}...{head}")
        files = [f for f in names.out.split("\0") if f]
        stat = await self.git("diff", "--numstat", "--no-renames", f"{ws.base_commit}...{head}")
        added = removed = 0
        for line in stat.out.splitlines():
            a, _, rest = line.partition("\t")
            r, _, _ = rest.partition("\t")
            added += int(a) if a.isdigit() else 0
            removed += int(r) if r.isdigit() else 0
        return Snapshot(commit=head, files=files, added=added, removed=removed)

    async def diff(self, ws: Workspace, context: int = 3) -> str:
        res = await self.git("diff", f"-U{context}", "--no-color", f"{ws.base_commit}...{ws.head or ws.base_commit}",
                             check=False)
        return res.out

    async def head_of(self, ws: Workspace) -> str:
        return (await self.git("rev-parse", "HEAD", cwd=ws.path)).out.strip()

    # -------------------------------------------------------------------------------- forecast
    async def merge_tree(self, a: str, b: str) -> list[str] | None:
        """Conflicting paths of merging ``a`` and ``b`` (None: merges cleanly). Never touches a worktree."""
        res = await self.git("merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", a, b, check=False)
        if res.code == 0:
            return None
        if res.code == 1 and res.out.strip("\0\n"):
            parts = [p for p in res.out.split("\0") if p]
            return sorted(set(p.strip("\n") for p in parts[1:] if p.strip("\n")))
        raise VcsError(f"git merge-tree {a[:12]} {b[:12]}: {_short_err(res)}")

    async def forecast(self, base: str, heads: dict[str, str], base_commits: dict[str, str] | None = None) -> Forecast:
        fc = Forecast()
        base_tip = await self.resolve(base)
        base_commits = base_commits or {}

        async def files_of(task: str, head: str) -> None:
            start = base_commits.get(task, base_tip)
            res = await self.git("diff", "--name-only", "--no-renames", "-z", f"{start}...{head}")
            fc.files[task] = sorted(f for f in res.out.split("\0") if f)

        async with anyio.create_task_group() as tg:
            for task, head in heads.items():
                tg.start_soon(files_of, task, head)

        async def pair(a: str, b: str, ha: str, hb: str) -> None:
            paths = await self.merge_tree(ha, hb)
            if paths is not None:
                fc.conflicts[(a, b)] = paths

        async with anyio.create_task_group() as tg:
            for (a, ha), (b, hb) in itertools.combinations(heads.items(), 2):
                # tasks that touch disjoint files cannot conflict: skip the trial merge
                if set(fc.files[a]) & set(fc.files[b]):
                    tg.start_soon(pair, a, b, ha, hb)
            for task, head in heads.items():
                if base_commits.get(task, base_tip) != base_tip:
                    tg.start_soon(pair, task, "base", head, base_tip)
        return fc

    # ------------------------------------------------------------------------------ integration
    async def integrate(self, run: str, base_commit: str, heads: list[tuple[str, str]], strategy: str,
                        root: str | None) -> tuple[Workspace, list[MergeOutcome]]:
        ws = await self._new_worktree(run, "integration", self.ref_name(run, "integration"), base_commit, root)
        env = await self.ident_env()
        outcomes = []
        for task, head in heads:
            outcomes.append(await self._merge_one(ws, task, head, strategy, env))
        ws.head = await self.head_of(ws)
        return ws, outcomes

    async def _merge_one(self, ws: Workspace, task: str, head: str, strategy: str,
                         env: dict[str, str] | None) -> MergeOutcome:
        p = ws.path
        if strategy == "merge":
            res = await self.git("merge", "--no-ff", "--no-edit", "-q", "-m", f"corral: merge {task}", head,
                                 cwd=p, env=env, check=False)
            if res.ok:
                return MergeOutcome(task, True, await self.head_of(ws))
            files = await self._unmerged(p)
            await self.git("merge", "--abort", cwd=p, check=False)
        elif strategy == "squash":
            res = await self.git("merge", "--squash", "-q", head, cwd=p, env=env, check=False)
            if res.ok:
                staged = await self.git("diff", "--cached", "--quiet", cwd=p, check=False)
                if staged.code == 1:
                    await self.git("commit", "-q", "--no-verify", "-m", f"corral: {task} (squashed)", cwd=p, env=env)
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

    async def _unmerged(self, path: Path) -> list[str]:
        res = await self.git("diff", "--name-only", "--diff-filter=U", "-z", cwd=path, check=False)
        return sorted(set(f for f in res.out.split("\0") if f))

    # ----------------------------------------------------------------------------------- landing
    async def _checked_out_at(self, branch: str) -> Path | None:
        res = await self.git("worktree", "list", "--porcelain", "-z")
        for rec in _worktree_records(res.out):
            if rec.get("branch") == f"refs/heads/{branch}":
                return Path(rec["worktree"])
        return None

    async def land(self, base: str, old: str, new: str) -> LandOutcome:
        """Move branch ``base`` from ``old`` to ``new``: a fast-forward in the checkout where it is
        checked out, else a compare-and-swap of the ref. Refused (ok=False, saying why) when base is
        not a branch, moved, is under an operation of the user's (rebase, merge, ...), or its
        checkout has uncommitted changes or untracked or ignored files the landing would replace."""
        if not await self.is_branch(base):
            return self._refuse(base, "not a branch", f"base {base!r} is not a branch, so there is nothing to move",
                                old, new)
        async with self.mutating():
            current = (await self.git("rev-parse", f"refs/heads/{base}")).out.strip()
            if current != old:
                return self._refuse(base, "moved", await self._moved(base, old, current), old, new)
            busy = await self._busy(base)
            if busy:
                return self._refuse(base, "busy", busy, old, new)
            where = await self._checked_out_at(base)
            if where is not None:
                status = await self.git("status", "--porcelain", "--untracked-files=no", cwd=where, check=False)
                if not status.ok or status.out.strip():
                    return self._refuse(
                        base, "dirty",
                        f"{base} is checked out at {where} with uncommitted changes; corral will not touch them",
                        old, new,
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

    def _refuse(self, base: str, why: str, message: str, old: str, new: str) -> LandOutcome:
        self._refusals[base] = why
        return LandOutcome(False, message, old, new)

    def land_hint(self, base: str, ref: str) -> str:
        """What to do with ``ref`` after :meth:`land` refused: what works depends on why."""
        why = self._refusals.get(base, "")
        if why == "not a branch":
            return f"the result is kept on branch {ref}"
        if why in ("moved", "busy"):  # base has (or will have) commits the result lacks: no fast-forward
            when = " once that is done" if why == "busy" else ""
            return f"to land by hand{when}: git checkout {base} && git merge {ref}, then verify the result again"
        if why == "in the way":
            return f"to land by hand, move those files elsewhere, then: git checkout {base} && git merge --ff-only {ref}"
        return f"to land by hand: git checkout {base} && git merge --ff-only {ref}"

    async def _moved(self, base: str, old: str, current: str) -> str:
        """Says how ``base`` moved from ``old`` to ``current`` and, where it can, what moved it: the
        last entry of its reflog, and corral branches whose commits it now holds."""
        how = f"now {current[:12]}, was {old[:12]}"
        if (await self.git("merge-base", "--is-ancestor", old, current, check=False)).ok:
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
        return message

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
            link = _read(where / ".git")
            if link.startswith("gitdir: "):
                gitdir = Path(link.removeprefix("gitdir: "))
                out.append((gitdir if gitdir.is_absolute() else where / gitdir, where))
        return out

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
        """Remove a worktree. When its branch is kept, uncommitted work is committed onto it first,
        so removal never loses anything."""
        with anyio.CancelScope(shield=True):
            if keep_ref and ws.path.is_dir() and await self._dirty(ws.path):
                try:
                    await self.snapshot(ws, f"corral: salvage uncommitted work of {ws.task}")
                except VcsError:
                    keep_dir = True
                else:
                    keep_dir = False
                if keep_dir:
                    # could not commit: leave the directory for the user rather than lose work
                    return
            # delete the files first, outside the lock and in parallel with other removals (the
            # work is on the branch by now); then drop git's metadata under the lock
            if ws.path.is_dir():
                await anyio.to_thread.run_sync(shutil.rmtree, ws.path, True)
            async with self.mutating():
                await self.git("worktree", "unlock", str(ws.path), check=False)
                await self.git("worktree", "remove", "--force", "--force", str(ws.path), check=False)
                if ws.path.exists():
                    shutil.rmtree(ws.path, ignore_errors=True)
                await self.git("worktree", "prune", check=False)
                if not keep_ref:
                    await self.git("update-ref", "-d", f"refs/heads/{ws.ref}", check=False)

    async def delete_ref(self, ref: str) -> None:
        async with self.mutating():
            await self.git("update-ref", "-d", f"refs/heads/{ref}", check=False)

    async def list_leftovers(self) -> list[Leftover]:
        res = await self.git("worktree", "list", "--porcelain", "-z")
        out = []
        for rec in _worktree_records(res.out):
            branch = rec.get("branch", "").removeprefix("refs/heads/")
            reason = rec.get("locked", "")
            if not (branch.startswith("corral/") or reason.startswith("corral run=")):
                continue
            parts = branch.split("/")
            run = parts[1] if len(parts) >= 3 else ""
            task = "/".join(parts[2:]) if len(parts) >= 3 else ""
            pid = 0
            for word in reason.split():
                if word.startswith("run=") and not run:
                    run = word[4:]
                if word.startswith("pid="):
                    pid = int(word[4:]) if word[4:].isdigit() else 0
            out.append(Leftover(run=run, task=task, path=Path(rec["worktree"]), ref=branch,
                                name=Path(rec["worktree"]).name, alive=_pid_is_corral(pid)))
        return out

    async def holds_unmerged_work(self, ref: str) -> bool:
        res = await self.git("for-each-ref", f"--contains=refs/heads/{ref}", "--format=%(refname:short)",
                             "refs/heads/", check=False)
        if not res.ok:
            return False
        return not any(not name.startswith("corral/") for name in res.out.split())

    async def list_refs(self, prefix: str = "corral/") -> dict[str, str]:
        res = await self.git("for-each-ref", "--format=%(refname:short)\t%(objectname)", f"refs/heads/{prefix}")
        refs = {}
        for line in res.out.splitlines():
            name, _, sha = line.partition("\t")
            refs[name] = sha
        return refs


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


def _pid_is_corral(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"corral" in f.read()
    except OSError:
        return False
