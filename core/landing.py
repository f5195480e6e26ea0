"""``corral land RUN``: a past run's kept result landed later, from a new process.

A run whose result did not land (verify failed, landing declined or refused) keeps it on its
integration branch. :func:`find_kept` finds that branch from the run's journal (refusing, with
:class:`UsageError`, a run that is unknown, still going, or has nothing to land); :func:`land_kept`
merges it onto today's base in a fresh integration workspace, verifies the merge with the verify
command the run's plan had, and lands it by compare-and-swap (:meth:`Workspaces.land`, which merges
base in again if it moves meanwhile). The run's journal records what happened: its events, and
``landed``. The kept branch goes only once its work is on base; a kill at any point leaves it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .codes import EXIT_FAILED, EXIT_OK
from .events import EventBus, Landed
from .journal import Journal
from .preflight import sandbox_policy
from .plan import Plan
from .queue import run_verify
from .runtime import PolicyApprover, RunOptions, Runtime
from .vcs.base import Backend, UsageError, Workspace, pid_is_corral

@dataclass
class Kept:
    """A past run's result kept on a branch, and what landing it needs from the run's journal."""

    run: str
    journal: dict[str, Any]
    ref: str
    head: str
    base: str
    plan: Plan


async def find_kept(backend: Backend, run: str) -> Kept:
    """The kept result of ``run``; :class:`UsageError` (one line) when there is nothing to land."""
    folder = backend.state_dir / "runs" / run
    if "/" in run or run in (".", "..") or not (folder / "run.json").is_file():
        raise UsageError(f"no run {run} in {backend.root} (corral runs lists them)")
    try:
        data = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"run {run}: its journal cannot be read ({exc})") from None
    if data.get("state") == "running" and pid_is_corral(int(data.get("pid") or 0)) and data.get("pid") != os.getpid():
        raise UsageError(f"run {run} is still going (pid {data.get('pid')}): it lands by itself")
    refs = [b for b in data.get("kept_branches") or [] if b.endswith("/integration")]
    if not refs:
        why = "it landed" if data.get("landed") else "no result of it is kept on a branch"
        raise UsageError(f"run {run}: nothing to land ({why})")
    ref = refs[-1]
    if not await backend.ref_exists(ref):
        if data.get("landed"):  # (by a corral land that could not delete it: it was checked out)
            raise UsageError(f"run {run}: nothing to land (it landed)")
        raise UsageError(f"run {run}: its result's branch {ref} no longer exists (deleted, or corral clean "
                         "--branches found its work merged): nothing to land")
    base = str(data.get("base") or "")
    if not base:
        raise UsageError(f"run {run}: its journal names no base")
    head = await backend.resolve(ref)
    return Kept(run, data, ref, head, base, _plan_of(folder, data))


def _plan_of(folder: Path, data: dict[str, Any]) -> Plan:
    """The settings of the run's plan that landing uses (verify, the sandbox, where workspaces go):
    a program's run has none of them."""
    plan = Plan(tasks=[], source=str(folder / "plan.json"))
    if data.get("plan"):
        try:
            saved = json.loads((folder / str(data["plan"])).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"run {folder.name}: its plan cannot be read ({exc})") from None
        plan.verify = str(saved.get("verify") or "")
        plan.sandbox = saved.get("sandbox")
        plan.network = bool(saved.get("network", True))
        plan.worktree_root = str(saved.get("worktree_root") or "")
    return plan


async def land_kept(backend: Backend, kept: Kept, bus: EventBus, env: dict[str, str] | None = None) -> int:
    """Merge ``kept`` onto its base as it is now, verify, land; journaled in the run's folder.
    Returns the exit code: 0 landed (or already on base), 1 not."""
    policy = await sandbox_policy(kept.plan, strict=False, env=env)
    journal = Journal(backend.state_dir, kept.run)
    journal.state = dict(kept.journal)
    journal.create()
    bus.run = kept.run
    unsubscribe = bus.subscribe(journal.on_event)
    # where the run made its workspaces; a relative one was relative to a directory not known now
    root = kept.plan.worktree_root if os.path.isabs(kept.plan.worktree_root) and os.path.isdir(
        kept.plan.worktree_root) else None
    rt = Runtime(backend=backend, bus=bus, journal=journal, profiles={}, approver=PolicyApprover(True),
                 options=RunOptions(run_id=kept.run, worktree_root=root, env=env, sandbox=policy),
                 base_name=kept.base, base_commit=await backend.resolve(kept.base))
    ws = rt.workspaces
    ws.verify = kept.plan.verify
    # the kept result, as a workspace of the run that is gone: the sweep at the end deletes its
    # branch once its head landed, and keeps it otherwise (and always while it is checked out)
    if await backend.checked_out_at(kept.ref) is None:
        ws.created[kept.ref] = Workspace(task=kept.ref, path=Path(os.devnull), ref=kept.ref, head=kept.head,
                                         base_commit=str(kept.journal.get("base_commit") or ""),
                                         role="integration", run=kept.run)
    landed = False
    try:
        await _drop_earlier_attempts(backend, kept, bus)
        bus.log("info", f"landing run {kept.run}: {kept.ref} merged onto {kept.base} ({rt.base_commit[:12]})")
        landed = await _merge_verify_land(rt, kept)
    finally:
        with anyio.CancelScope(shield=True):  # Ctrl-C: the workspace goes, the kept branch stays
            for integ in ws.list():  # a merge that did not land is a copy of the kept branch: dropped
                await ws.remove(integ, keep_branch=landed)
            await ws.sweep_refs()
            before = list(kept.journal.get("kept_branches") or [])
            if landed:
                await _drop_landed(backend, [b for b in before if b != kept.ref])
                for task in _merged_tasks(journal):
                    journal.update_task(task, status="merged")
            journal.update(kept_branches=[b for b in before if await backend.ref_exists(b)],
                           **({"landed": True} if landed else {}))
            unsubscribe()
            journal.close()
    bus.log("info" if landed else "error",
            f"landed run {kept.run} onto {kept.base}" if landed else f"run {kept.run} not landed; still kept on "
                                                                      f"{kept.ref}")
    return EXIT_OK if landed else EXIT_FAILED


async def _drop_earlier_attempts(backend: Backend, kept: Kept, bus: EventBus) -> None:
    """Delete the integration branches an earlier ``corral land`` of the run left when it was
    killed: ``corral/<run>-mN/integration`` branches the run did not keep (it journals those), whose
    workspace ``corral clean`` removed. They hold only merges of the kept result with base."""
    journaled = set(kept.journal.get("kept_branches") or [])
    registered = {lo.record.ref for lo in await backend.list_leftovers() if lo.record is not None}
    refs = await backend.list_refs(f"corral/{kept.run}-m")
    for ref in sorted(refs):
        if ref.endswith("/integration") and ref not in journaled and ref not in registered:
            await backend.delete_ref(ref)
            bus.log("info", f"deleted {ref}: the merge of an earlier corral land of run {kept.run} that did not end")


def _merged_tasks(journal: Journal) -> list[str]:
    """The run's tasks its kept result holds: merged into it (the run's ``merge`` events say so) and
    left succeeded (not verify-failed by bisecting, not since merged)."""
    try:
        lines = (journal.dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    merged = set()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # the last line of a run that was killed while writing it
            continue
        if event.get("type") == "merge" and event.get("ok"):
            merged.add(event.get("task"))
    tasks = journal.state.get("tasks") or {}
    return [name for name in tasks if name in merged and tasks[name].get("status") == "succeeded"]


async def _drop_landed(backend: Backend, refs: list[str]) -> None:
    """The run's other kept branches whose work is on base now (its tasks' ones, which the
    result held) go, as they would have at the end of the run had it landed then."""
    for ref in refs:
        if (await backend.ref_exists(ref) and await backend.checked_out_at(ref) is None
                and not await backend.holds_unmerged_work(ref)):
            await backend.delete_ref(ref)


async def _merge_verify_land(rt: Runtime, kept: Kept) -> bool:
    """Whether the kept result landed: merged onto base in a new integration workspace, verified
    there (when the plan has verify and the merge changed base), then landed."""
    base = rt.base_commit
    integ, [merged] = await rt.workspaces.merge([(kept.ref, kept.head)])
    if not merged.ok:
        hint = await rt.backend.conflict_hint(rt.base_name, kept.ref, merged.conflict_files)
        rt.bus.emit(Landed(ok=False, base=rt.base_name, old=base, new=kept.head, kept=kept.ref,
                           message=f"merging {kept.ref} onto {rt.base_name} conflicts in "
                                   f"{', '.join(merged.conflict_files[:5])}; {hint}"))
        return False
    if rt.workspaces.verify.strip() and integ.head != base:
        run = await run_verify(rt, rt.workspaces.verify, integ, [kept.ref], f"verify: {rt.workspaces.verify}")
        if not run.ok:
            rt.bus.emit(Landed(ok=False, base=rt.base_name, old=base, new=integ.head, kept=kept.ref,
                               message=f"verify failed (exit {run.exit_code}) on {kept.ref} merged onto "
                                       f"{rt.base_name}: nothing landed"))
            return False
    return (await rt.workspaces.land(integ, commit=False)).ok
