"""Finding and removing what interrupted runs left behind, keeping every branch that holds work.

corral cleans up only what it registered (see :mod:`corral.core.vcs.registry`): each workspace it
made has a record, and clean-up acts on a record only when the VCS agrees (the worktree's lock reason
names the record; it is not the main worktree). A workspace that never became ready holds no work
and is dropped; any other has what it holds committed onto its branch first, and its branch is kept
when it holds work that is nowhere else. ``--dry-run`` goes through the same decisions and says
them, changing nothing.

``corral clean --branches`` then deletes the kept ``corral/*`` branches that hold no work of their
own any more (merged into base, or on another branch, tag or remote branch not corral's, or never
changed): deleting them loses nothing. A branch holding other work goes only when it is named.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .journal import ACTIVE_STATES, list_runs, write_atomic
from . import reaper
from .procs import kill_run_processes, processes_in, run_processes
from .vcs.base import Backend, Leftover, UsageError, VcsError
from .vcs.registry import CREATING


@dataclass
class CleanItem:
    """What clean-up did (or, with ``--dry-run``, would do) with one registered workspace."""

    leftover: Leftover
    #: "drop": a half-made workspace (no work), removed; "salvage": its work committed onto its
    #: branch, then removed; "skip": left alone (``why`` says why); "live": its run still runs
    action: str
    why: str = ""
    #: refs kept because they hold work (the branch, refs holding other commits made there)
    kept: list[str] = field(default_factory=list)
    #: its branch, deleted because it holds no work of its own
    deleted: list[str] = field(default_factory=list)
    #: files committed from the workspace before it went (with --dry-run: that would be)
    committed: list[str] = field(default_factory=list)
    #: the clean-up failed; what remains and why
    error: str = ""
    #: what the backend found worth telling while it did it (a repository kept, a workspace adopted)
    notes: list[str] = field(default_factory=list)


@dataclass
class CleanReport:
    items: list[CleanItem] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    runs_marked: list[str] = field(default_factory=list)
    #: the branches of the interrupted runs that held no work of their own, deleted
    branches: list["BranchItem"] = field(default_factory=list)

    @property
    def removed(self) -> list[Leftover]:
        return [i.leftover for i in self.items if i.action in ("drop", "salvage") and not i.error]

    @property
    def kept_branches(self) -> list[str]:
        return [r for i in self.items for r in i.kept]

    @property
    def skipped_live(self) -> list[Leftover]:
        return [i.leftover for i in self.items if i.action == "live"]

    @property
    def failed(self) -> list[CleanItem]:
        return [i for i in self.items if i.error]


def stale_runs(backend: Backend) -> list[dict[str, Any]]:
    """Runs whose journal says running but whose corral process is gone."""
    out = []
    for data in list_runs(backend.state_dir):
        if data.get("state") in ACTIVE_STATES and not reaper.alive(int(data.get("pid") or 0) or -1):
            out.append(data)
    return out


async def _plan_item(backend: Backend, lo: Leftover) -> CleanItem:
    """What clean-up does with one leftover, decided without changing anything."""
    if lo.alive:
        return CleanItem(lo, "live")
    rec = lo.record
    if rec is None:
        return CleanItem(lo, "skip", why="corral has no record of it")
    why = await backend.vet_leftover(rec)
    if why:
        return CleanItem(lo, "skip", why=why)
    busy = processes_in(lo.path)
    if busy:  # someone works there (your shell in a --keep-worktrees workspace): not while they do
        pids = ", ".join(str(p) for p in busy[:5]) + (" ..." if len(busy) > 5 else "")
        return CleanItem(lo, "skip", why="a process works in it",
                         error=f"a process still works in it (pid {pids}); it is left in place")
    if rec.state == CREATING:
        return CleanItem(lo, "drop", why="it never became ready, so it holds no work")
    item = CleanItem(lo, "salvage")
    try:
        item.committed = await backend.pending_changes(backend.workspace_of(rec))
    except VcsError as exc:
        return CleanItem(lo, "skip", why="corral cannot tell what it holds", error=f"{exc}; it is left in place")
    if rec.ref and await backend.ref_exists(rec.ref):
        keeps: bool | None = bool(item.committed) or await backend.holds_unmerged_work(rec.ref, rec.base_commit)
    else:  # (jj) the bookmark is made when the work is committed
        keeps = await backend.salvage_keeps(backend.workspace_of(rec), item.committed) if rec.ref else None
    if keeps is not None:
        (item.kept if keeps else item.deleted).append(rec.ref)
    item.kept += await backend.other_lines_kept(backend.workspace_of(rec))
    return item


async def _do_item(backend: Backend, item: CleanItem) -> None:
    rec = item.leftover.record
    assert rec is not None
    ws = backend.workspace_of(rec)
    try:
        if item.action == "drop":
            await backend.drop_half_made(ws)
            backend.registry.drop(rec)
            return
        await backend.remove_workspace(ws, keep_ref=True)
        item.kept, item.deleted = [], []
        for ref in [rec.ref, *ws.extra_refs]:
            if not ref or not await backend.ref_exists(ref):
                continue
            if ref != rec.ref or await backend.holds_unmerged_work(ref, rec.base_commit):
                item.kept.append(ref)
            else:
                await backend.delete_ref(ref)
                item.deleted.append(ref)
    except VcsError as exc:
        item.error = str(exc)
    finally:
        item.notes = backend.take_notices()


@dataclass
class BranchItem:
    """What ``clean --branches`` did (or would do) with one ``corral/*`` branch."""

    ref: str
    #: "delete" or "keep"
    action: str
    why: str
    error: str = ""


async def check_branch_names(backend: Backend, named: list[str]) -> dict[str, str]:
    """corral's branches (name -> commit); :class:`UsageError` when one of ``named`` is not one."""
    refs = await backend.list_refs("corral/")
    unknown = [name for name in named if name not in refs]
    if unknown:
        raise UsageError(f"--branches {unknown[0]}: no such corral branch (they are named corral/<run>/<task>)")
    return refs


async def clean_branches(backend: Backend, named: list[str], dry_run: bool = False,
                         runs: set[str] | None = None) -> list[BranchItem]:
    """Delete corral's kept branches that hold no work of their own (all of them, those of ``runs``,
    or only those ``named``: a named one is deleted even with unmerged work). Never one of a run still
    running, one a registered workspace is on (``corral clean`` removes that first) or one checked out
    somewhere. Raises :class:`UsageError` for a name that is not a corral branch, having changed nothing."""
    refs = await check_branch_names(backend, named)
    if runs is not None:
        refs = {ref: c for ref, c in refs.items() if ref.count("/") >= 2 and ref.split("/")[1].partition("-m")[0] in runs}
    live = {str(d.get("run")) for d in list_runs(backend.state_dir)
            if d.get("state") in ACTIVE_STATES and reaper.alive(int(d.get("pid") or 0) or -1)}
    registered = {lo.record.ref for lo in await backend.list_leftovers() if lo.record is not None}
    items = []
    for ref in named or sorted(refs):
        run = ref.split("/")[1].partition("-m")[0] if ref.count("/") >= 2 else ""
        where = await backend.checked_out_at(ref)
        if run in live:
            item = BranchItem(ref, "keep", f"its run {run} is still running")
        elif ref in registered:
            item = BranchItem(ref, "keep", "a workspace left by a run is on it (corral clean removes that first)")
        elif where is not None:
            item = BranchItem(ref, "keep", f"checked out in {where}")
        elif ref in named:
            item = BranchItem(ref, "delete", "named")
        elif await backend.holds_unmerged_work(ref):
            item = BranchItem(ref, "keep", "holds work not merged into base nor on another branch (name it to "
                                           "delete it)")
        else:
            item = BranchItem(ref, "delete", "its work is on base or another branch, or it holds none")
        if item.action == "delete" and not dry_run:
            try:
                await backend.delete_ref(ref)
                if await backend.ref_exists(ref):
                    item.error = "it is still there"
            except VcsError as exc:
                item.error = str(exc)
        items.append(item)
    return items


def _wait_gone(pids: list[int], timeout: float = 10) -> None:
    """Wait until every process in ``pids`` (sent SIGKILL) has ended."""
    deadline = time.monotonic() + timeout
    while any(reaper.alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


async def clean(backend: Backend, dry_run: bool = False) -> CleanReport:
    rep = CleanReport()
    # 1. what dead runs left running (corral was SIGKILLed): every process carrying the run's mark
    for data in stale_runs(backend):
        run = data["run"]
        rep.killed += run_processes(run) if dry_run else kill_run_processes(run)
        rep.runs_marked.append(run)
        if not dry_run:
            data = dict(data)
            data.pop("dir", None)
            data["state"] = "interrupted"
            path = backend.state_dir / "runs" / run / "run.json"
            if path.parent.is_dir():
                write_atomic(path, json.dumps(data, indent=2, default=str))
    if not dry_run:
        _wait_gone(rep.killed)
        await backend.forget_dead_processes()
    # 2. the workspaces corral registered and never removed (the processes just killed are gone
    # by then, so that none of them counts as working in one)
    for lo in await backend.list_leftovers():
        item = await _plan_item(backend, lo)
        rep.items.append(item)
        if not dry_run and item.action in ("drop", "salvage"):
            await _do_item(backend, item)
    # 3. the branches of those runs that hold no work of their own (a task whose workspace was put
    # away, its work on its branch, before the run was killed): what the run's end would have deleted
    if rep.runs_marked:
        found = await clean_branches(backend, [], dry_run, runs=set(rep.runs_marked))
        rep.branches = [b for b in found if b.action == "delete"]
    return rep


__all__ = ["clean", "check_branch_names", "clean_branches", "BranchItem", "CleanItem", "CleanReport", "stale_runs"]
