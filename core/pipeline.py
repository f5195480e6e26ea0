"""The plan pipeline: the eleven steps of a run (SPEC.md), written as a program on the runtime.

:func:`prepare` is step 1 (preflight, in :mod:`.preflight`) and creates nothing; :func:`execute` does
steps 2-11 and always cleans up, also when cancelled (Ctrl-C, SIGTERM, SIGHUP, quitting the dashboard).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import anyio

from .codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: F401 (re-exported)
from .diagnostics import loop_monitor
from .events import (
    BAD_STATUSES,
    EventBus,
    ForecastEvent,
    Landed,
    MergeEvent,
    ReviewDecision,
    RunFinished,
    RunStarted,
    TaskOutput,
)
from .journal import Journal
from .plan import Plan, TaskSpec
from .preflight import Prepared, _first_leaf, prepare, sandbox_policy  # noqa: F401 (prepare, sandbox_policy re-exported)
from .procs import Supervised
from .queue import VerifyRun, bisect, run_verify, settle_conflicts
from .report import printable, render_report
from .runtime import Approver, RunOptions, Runtime, TaskInfo, work_problem
from .setup import copy_command, reusable_dependencies, setup_command
from .vcs.base import VcsError, Workspace


@dataclass
class Outcome:
    exit_code: int
    run_id: str
    run_dir: Path
    report: Path | None
    state: str
    runtime: Runtime | None = None


async def execute(prep: Prepared, approver: Approver, bus: EventBus, *, keep_worktrees: bool = False,
                  grace: float = 3.0, on_runtime: Callable[[Runtime], None] | None = None) -> Outcome:
    """Steps 2-11. Cancellation (Ctrl-C and friends) propagates after cleanup has run."""
    plan, backend = prep.plan, prep.backend
    rt, journal, unsubscribe = open_run(prep, approver, bus, keep_worktrees=keep_worktrees, grace=grace)
    journal.attach("plan", plan.to_dict())
    rt.workspaces.verify = plan.verify  # a merge re-made onto a base that moved is verified again
    state = RunState()
    outcome = Outcome(EXIT_FAILED, prep.run_id, journal.dir, None, "running", rt)
    for t in plan.tasks:
        rt.add_task(t.name, t.agent, t.prompt, t.system_prompt)
    if prep.continues is not None:
        prep.continues.install(rt, plan)
    if on_runtime:
        on_runtime(rt)
    bus.emit(RunStarted(repo=str(backend.root), base=prep.base_name, base_commit=prep.base_commit,
                        backend=backend.kind, run_dir=str(journal.dir), tasks=[t.name for t in plan.tasks],
                        agents={t.name: t.agent for t in plan.tasks}))
    if prep.continues is not None:
        prep.continues.started(rt)
    for note in rt.notes:
        bus.log("warning", note)
    announce_sandbox(rt)
    try:
        async with loop_monitor(), rt:
            await _steps(rt, plan, state)
    except anyio.get_cancelled_exc_class():
        state.cancelled = True
        raise
    except (VcsError, OSError) as exc:
        state.error = str(exc)
        bus.log("error", f"run failed: {exc}")
    except BaseExceptionGroup as group:  # what _steps raises arrives grouped by the runtime's task group
        errors, rest = group.split((VcsError, OSError))
        if errors is None or rest is not None:
            raise
        error = _first_leaf(errors)
        state.error = str(error)
        bus.log("error", f"run failed: {error}")
    finally:
        with anyio.CancelScope(shield=True):
            outcome.exit_code = _exit_code(rt, state)
            outcome.state = ("interrupted" if state.cancelled else
                             "error" if state.error else "completed" if outcome.exit_code == 0 else "failed")
            await _finish(rt, plan, state, outcome, keep_worktrees)
            unsubscribe()
            journal.close()
            await backend.close()
    return outcome


@dataclass
class RunState:
    """What a plan's run decided and did, past its tasks (each task's own state is its TaskInfo):
    read by the exit code, the report and the journal."""

    verify_ok: bool | None = None
    #: None: nothing was up for landing
    landed: bool | None = None
    land_message: str = ""
    #: the integration branch kept because its merge did not land
    integration_kept: str = ""
    cancelled: bool = False
    error: str = ""
    integration: Workspace | None = None
    merged: list[TaskInfo] = field(default_factory=list)
    #: bisecting a failing verify: the verify runs made, and each task left out -> the tail of the
    #: output of the last failing verify run that held it
    verify_runs: int = 0
    verify_failed: dict[str, list[str]] = field(default_factory=dict)
    #: workspaces left in place at the end (they hold changes that could not be committed)
    workspaces_left: list[str] = field(default_factory=list)


def open_run(prep: Prepared, approver: Approver, bus: EventBus, *, keep_worktrees: bool = False, grace: float = 3.0,
             runtime_cls: type[Runtime] = Runtime, default_agent: str | None = None,
             **journal_fields: Any) -> tuple[Runtime, Journal, Callable[[], None]]:
    """The start every run shares (plan pipeline and programs): its journal folder, the journal
    listening to the bus, and the runtime. Returns (runtime, journal, unsubscribe the journal)."""
    backend = prep.backend
    bus.run = prep.run_id
    journal = Journal(backend.state_dir, prep.run_id)
    journal.create()
    unsubscribe = bus.subscribe(journal.on_event)
    journal.update(
        state="running", pid=os.getpid(), repo=str(backend.root), backend=backend.kind, base=prep.base_name,
        base_commit=prep.base_commit, **journal_fields,
    )
    options = RunOptions(run_id=prep.run_id, worktree_root=prep.worktree_root, grace=grace,
                         keep_worktrees=keep_worktrees, default_agent=default_agent, env=prep.env,
                         sandbox=prep.sandbox)
    rt = runtime_cls(backend=backend, bus=bus, journal=journal, profiles=prep.plan.agents, approver=approver,
                     options=options, base_name=prep.base_name, base_commit=prep.base_commit)
    rt.notes = list(prep.notes)
    return rt, journal, unsubscribe


def announce_sandbox(rt: Runtime) -> None:
    """Say once, at the start of a run, why agents run without the sandbox ``auto`` asked for."""
    policy = rt.options.sandbox
    if policy.problem and not policy.bwrap:
        rt.bus.log("info", f"agents run without a sandbox: {policy.problem}")


def stop_unfinished(rt: Runtime, cancelled: bool) -> None:
    """At the end of a run: stop any process still running, and mark every unfinished task aborted."""
    for proc in list(rt._procs.values()):
        proc.stop("cancelled")
    for info in rt.tasks.values():
        if not info.finished:
            rt.set_status(info.name, "aborted", "run interrupted" if cancelled else "run ended")


def run_summary(rt: Runtime) -> tuple[list[dict[str, Any]], float | None]:
    """One row per task for the RunFinished event, and the total cost (None when no agent reported one)."""
    total_cost = sum((t.result.usage.cost or 0) for t in rt.tasks.values() if t.result and t.result.usage.cost)
    has_cost = any(t.result and t.result.usage.cost is not None for t in rt.tasks.values())
    summary = [
        {
            "task": t.name, "agent": t.agent, "status": t.status, "reason": t.reason,
            "duration": round(t.result.duration, 2) if t.result else None,
            "cost": t.result.usage.cost if t.result else None,
            "tokens": (t.result.usage.tokens or None) if t.result else None,
            "files": len(t.snapshot.files) if t.snapshot else 0,
            "branch": ", ".join(([t.workspace.ref] if t.branch_kept else []) + t.workspace.extra_refs)
            if t.workspace else "",
        }
        for t in rt.tasks.values()
    ]
    return summary, (total_cost if has_cost else None)


async def _steps(rt: Runtime, plan: Plan, state: "RunState") -> None:
    bus = rt.bus
    # steps 2-5, per task: its workspace, setup, agent, commit. A workspace is made when its agent
    # is about to start, so no more than max_parallel of them are being filled and worked in at once
    rt.set_phase("running")
    sem = anyio.Semaphore(plan.max_parallel or max(1, len(plan.tasks)))
    rt.agents_at_once = min(plan.max_parallel or len(plan.tasks), len(plan.tasks)) or 1
    rt.slots, rt.put_away = sem, not rt.options.keep_worktrees

    async def set_up_again(name: str, ws: Workspace) -> bool:
        spec = next((t for t in plan.tasks if t.name == name), None)
        return spec is None or await _setup(rt, plan, spec, ws)

    rt.on_reopen = set_up_again
    rt.new_attempt = lambda name, prompt: _new_attempt(rt, plan, sem, name, prompt)
    async with anyio.create_task_group() as tg:
        for spec in plan.tasks:
            rt.hold(spec.name)  # a message sent before its agent ends is queued for its flow
            # (a task whose agent ran already, in the run it is carried on from, goes on talking)
            if rt.tasks[spec.name].spec is None:
                tg.start_soon(_task_flow, rt, plan, spec, sem)
            else:
                tg.start_soon(rt.carry_on, spec.name)
    # follow-ups to tasks whose flow had ended: the review sees what their new turns did
    await rt.quiet()

    # step 6: review
    reviewed = await _review(rt, plan)
    if reviewed is None:
        return
    done, decisions = reviewed
    for t in done:
        t.approved = bool(decisions.get(t.name))
    _one_attempt_each(rt, [t for t in done if t.approved])
    for t in done:
        bus.emit(ReviewDecision(task=t.name, approved=bool(t.approved), by=type(rt.approver).__name__))
        if not t.approved and t.status == "succeeded":
            rt.set_status(t.name, "rejected", "not approved")
    approved = [rt.tasks[t.name] for t in plan.tasks if rt.tasks[t.name].approved and reviewable(rt, rt.tasks[t.name])]
    # what was edited by hand in a workspace during the review is part of the task's work
    await settle(rt, approved, "corral: edits made in {task}'s workspace after its agent exited")
    approved = [t for t in approved if reviewable(rt, t)]
    if not approved:
        bus.log("info", "nothing approved: nothing to merge")
        return

    # step 7: merge into the integration workspace
    rt.set_phase("merging")
    integ, outcomes = await rt.workspaces.merge([(t.name, t.workspace.head) for t in approved if t.workspace],
                                                plan.merge)
    state.integration = integ
    if not all(o.ok for o in outcomes):
        await settle_conflicts(rt, plan, integ, outcomes)
    merged: list[TaskInfo] = []
    for o in outcomes:
        info = rt.tasks[o.task]
        bus.emit(MergeEvent(task=o.task, ok=o.ok, strategy=plan.merge, commit=o.commit,
                            conflict_files=o.conflict_files))
        if o.ok:
            merged.append(info)
        else:
            info.conflict_files = o.conflict_files
            rt.set_status(o.task, "conflict", "conflicts in " + ", ".join(o.conflict_files[:5]))
    state.merged = merged
    if not merged:
        return
    if integ.head == rt.base_commit:
        bus.log("info", "the approved tasks changed nothing: nothing to land")
        for info in merged:
            info.merged = True
            rt.set_status(info.name, "merged", "no changes")
        state.landed = True
        return

    # step 8: verify; a failing merge of several tasks is bisected (on_verify_fail = "bisect")
    if plan.verify.strip():
        rt.set_phase("verify")
        bus.log("info", f"verify: {plan.verify}")
        run = await run_verify(rt, plan.verify, integ, [t.name for t in merged])
        if not run.ok and plan.on_verify_fail == "bisect" and len(merged) > 1:
            run = await _bisect(rt, plan, state, merged, run)
            integ, merged = run.integration, [rt.tasks[name] for name in run.tasks]
            state.integration, state.merged = integ, merged
        state.verify_ok = run.ok
        if not run.ok:
            state.integration_kept = integ.ref
            bus.log("error", f"verify failed (exit {run.exit_code}): nothing lands; the merge result is kept on "
                             f"branch {integ.ref}")
            return

    # step 9: land
    rt.set_phase("landing")
    names = ", ".join(t.name for t in merged)
    if not await rt.approver.confirm_land(rt, f"Land {names} onto {rt.base_name}?"):
        state.landed = False
        state.integration_kept = integ.ref
        state.land_message = "landing declined"
        bus.emit(Landed(ok=False, base=rt.base_name, old=rt.base_commit, new=integ.head,
                        message="landing declined", kept=integ.ref))
        return
    land = await rt.workspaces.land(integ, commit=False)
    state.landed = land.ok
    state.land_message = land.message
    if land.why == "verify":  # base moved, and verify failed on the merge with its new tip
        state.verify_ok = False
    if land.ok:
        for info in merged:
            info.merged = True
            rt.set_status(info.name, "merged")
    else:
        state.integration_kept = integ.ref


async def _bisect(rt: Runtime, plan: Plan, state: RunState, merged: list[TaskInfo],
                  first: VerifyRun) -> VerifyRun:
    """Verify failed on the merge of every task in ``merged``: find the largest set of them whose
    merge passes. The others are marked ``verify-failed`` (their branches kept); the full merge's
    workspace goes when a subset passes, else it is kept as without bisecting. Returns the verify
    run of the merge to land (``first`` when nothing passed)."""
    rt.bus.log("warning", f"verify failed (exit {first.exit_code}) on the merge of {len(merged)} tasks: bisecting")
    found = await bisect(rt, plan, merged, first)
    state.verify_runs = found.runs
    for name, run in found.failed.items():
        state.verify_failed[name] = run.output
        rt.set_status(name, "verify-failed", f"verify failed (exit {run.exit_code}) with it merged")
    done = ", ".join(t.name for t in found.landed) or "none"
    rt.bus.log("info", f"bisected in {found.runs} verify runs: {done} pass; verify-failed: "
                       f"{', '.join(found.failed)}")
    if found.run is None:
        return first
    await rt.workspaces.remove(first.integration, keep_branch=False)
    return found.run


def _new_attempt(rt: Runtime, plan: Plan, sem: anyio.Semaphore, name: str, prompt: str) -> str:
    """A retry: a copy of task ``name`` (its prompt replaced by ``prompt`` when given) under a new
    name, started now from base in a workspace of its own, reviewed with the others."""
    old = next(t for t in plan.tasks if t.name == name)
    t = replace(old, name=rt.unique_name(name), prompt=prompt.strip() or old.prompt)
    plan.tasks.append(t)
    policy = rt.options.sandbox
    if policy.tasks is not None and name in policy.tasks:
        policy.tasks[t.name] = policy.tasks[name]
    rt.add_task(t.name, t.agent, t.prompt, t.system_prompt)
    rt.set_status(t.name, "pending", f"a new attempt of {name}")
    rt.hold(t.name)
    assert rt._tg is not None
    rt._tg.start_soon(_task_flow, rt, plan, t, sem)
    return t.name


async def _review(rt: Runtime, plan: Plan) -> tuple[list[TaskInfo], dict[str, bool]] | None:
    """The succeeded tasks and the approver's decisions on them (None: nothing to review). Changes
    requested from a task (a follow-up sent during the review) withdraw the review: it is put again,
    on the new work, once every follow-up turn is done."""
    bus = rt.bus
    while True:
        done = [rt.tasks[t.name] for t in plan.tasks if reviewable(rt, rt.tasks[t.name])]
        if not done:
            bus.log("info", "no task succeeded: nothing to review or merge")
            return None
        rt.set_phase("review")
        await settle(rt, done, "corral: edits made in {task}'s workspace after its agent exited")
        done = [t for t in done if reviewable(rt, t)]
        heads = {t.name: t.workspace.head for t in done if t.workspace}
        forecast = await rt.workspaces.forecast(heads)
        for t in done:
            others = forecast.conflicts_of(t.name)
            bus.emit(ForecastEvent(task=t.name, files=forecast.files.get(t.name, []),
                                   conflicts_with=sorted(k for k in others if k != "base"),
                                   conflicts_with_base="base" in others, conflict_files=others,
                                   untried_with=sorted(forecast.untried_of(t.name))))
        decisions: dict[str, bool] = {}
        with anyio.CancelScope() as scope:
            rt.review_scope = scope
            decisions = await rt.approver.review(rt, done, forecast)
        rt.review_scope = None
        if not scope.cancel_called:  # (a follow-up just after the answer came counts as changes requested)
            return done, decisions
        rt.set_phase("running")
        await rt.quiet()


def reviewable(rt: Runtime, info: TaskInfo) -> bool:
    """Whether a task's work is up for review: its agent succeeded, or was aborted after changing
    files (its partial work, salvaged onto its branch, can be approved as it is), or failed after
    changing files and was retried (the review shows every attempt: the user picks one)."""
    snap = info.snapshot
    partial = info.status == "aborted" or (info.status == "failed" and len(rt.attempts(info.name)) > 1)
    return info.status == "succeeded" or (partial and snap is not None and bool(snap.files)
                                          and not snap.uncommitted and not snap.conflicted)


def _one_attempt_each(rt: Runtime, approved: list[TaskInfo]) -> None:
    """Attempts of one task are alternatives: of those approved, the newest is merged, the others
    are rejected."""
    names = {t.name for t in approved}
    for t in approved:
        newer = [a for a in rt.attempts(t.name)[::-1] if a in names]
        if newer[0] != t.name:
            t.approved = False
            rt.bus.log("warning", f"{t.name} and its new attempt {newer[0]} both approved: {newer[0]} is merged",
                       task=t.name)


async def _create_workspace(rt: Runtime, t: TaskSpec) -> bool:
    name = t.name
    rt.set_status(name, "creating")
    try:
        rt.tasks[name].workspace = await rt.workspaces.create(name)
    except VcsError as exc:
        rt.set_status(name, "failed", f"workspace: {exc}")
        return False
    if rt.notes:
        rt.bus.emit(TaskOutput(task=name, lines=[f"corral: note: {n}" for n in rt.notes], stream="setup"))
    return True


async def _task_flow(rt: Runtime, plan: Plan, t: TaskSpec, sem: anyio.Semaphore) -> None:
    """One task: its workspace, setup, agent and commit, then the turns of the messages sent to it
    meanwhile (each settled onto its branch), until none is left."""
    name = t.name
    try:
        async with sem:
            if rt.aborted(name):
                rt.set_status(name, "aborted", "aborted before start")
                return
            if await _create_workspace(rt, t):
                await _agent_flow(rt, plan, t)
                await rt.converse(name)
    finally:
        rt.release(name)


async def _agent_flow(rt: Runtime, plan: Plan, t: TaskSpec) -> None:
    name = t.name
    ws = rt.tasks[name].workspace
    assert ws is not None
    if rt.aborted(name):
        rt.set_status(name, "aborted", "aborted before start")
        return
    if not await _setup(rt, plan, t, ws):
        return
    result = await rt.run_agent({
        "agent": t.agent, "name": name, "task": t.prompt, "system_prompt": t.system_prompt,
        "cwd": str(ws.path), "timeout": plan.task_timeout(t), "step": "agents",
    })
    first = t.prompt.strip().splitlines()[0][:72] if t.prompt.strip() else ""
    await rt.settle_agent(result, f"corral: {name}\n\n{first}\n\nrun {rt.run_id}, agent {t.agent}")


async def _setup(rt: Runtime, plan: Plan, t: TaskSpec, ws: Workspace) -> bool:
    """The task's setup in its workspace (a new one, or one re-opened from its branch for another
    turn: what setup installs is not on the branch). Returns whether its agent may start; when not,
    the task's status says why."""
    bus, name = rt.bus, t.name
    rt.set_status(name, "setup")
    setting = plan.task_setup(t)
    command, why = setup_command(setting, ws.path)

    async def setup_step(argv: list[str]) -> int | None:
        """One setup command in the workspace, its output in the pane and the log, abortable."""
        env = rt.child_env(name, str(ws.path))
        sandbox = rt.sandbox_of(name, rt.profiles.get(t.agent))
        proc = Supervised(rt.sandboxed(argv, sandbox, str(ws.path), env), cwd=ws.path, env=env,
                          on_lines=lambda lines: bus.emit(TaskOutput(task=name, lines=lines, stream="setup")),
                          log_path=rt.journal.log_path(name), grace=rt.options.grace)
        rt._procs[name] = proc
        try:
            return (await proc.run()).exit_code
        finally:
            rt._procs.pop(name, None)

    if command and plan.reuse_deps and setting == "auto":
        src, note = reusable_dependencies(rt.backend.root, ws.path)
        bus.log("info", f"setup: {note}", task=name)
        if src is not None:
            if await setup_step(copy_command(src, ws.path / src.name)) == 0:
                command = None
            elif not rt.aborted(name):
                bus.log("warning", f"copy of {src} failed: installing instead", task=name)
    if command and not rt.aborted(name):
        bus.log("info", f"setup ({why}): {command}", task=name)
        code = await setup_step(["sh", "-c", command])
        if not rt.aborted(name) and code != 0:
            rt.set_status(name, "failed", f"setup failed (exit {code}): {command}")
            return False
    elif not command and setting == "auto":
        bus.log("debug", f"setup: {why}", task=name)
    if rt.aborted(name):
        rt.set_status(name, "aborted", "aborted during setup")
        return False
    return True


async def settle(rt: Runtime, tasks: list[TaskInfo], message: str) -> None:
    """Commit what the workspaces of ``tasks`` hold now (edits made by hand after the agents exited)
    onto their branches, so review, merge and discard see all of it. A task whose changes cannot be
    committed fails (its workspace is kept); one that cannot be committed at all fails too."""
    for info in tasks:
        try:
            snap = await rt.record_work(info.name, message.replace("{task}", info.name))
        except VcsError as exc:
            rt.set_status(info.name, "failed", f"commit failed: {exc}")
            continue
        problem = work_problem(snap) if snap is not None else ""
        if problem:
            rt.set_status(info.name, "failed", problem)


def _exit_code(rt: Runtime, state: "RunState") -> int:
    if state.cancelled:
        return EXIT_INTERRUPTED
    if state.error:
        return EXIT_FAILED
    bad = any(t.status in BAD_STATUSES for t in rt.tasks.values())
    if bad or state.verify_ok is False or state.landed is False:
        return EXIT_FAILED
    return EXIT_OK


async def _finish(rt: Runtime, plan: Plan, state: "RunState", outcome: Outcome, keep_worktrees: bool) -> None:
    """Steps 11 and 10: cleanup (always), then the report of what really remains."""
    def report(kept: list[str], left: list[str]) -> str:
        state.workspaces_left = left
        return render_report(rt, plan, state, outcome, kept)

    await finish_run(rt, outcome, report, keep_worktrees=keep_worktrees, cancelled=state.cancelled,
                     landed=bool(state.landed))


async def finish_run(rt: Runtime, outcome: Any, report: Callable[[list[str], list[str]], str], *,
                     keep_worktrees: bool, cancelled: bool, **journal: Any) -> list[str]:
    """The one end of every run, plan or program: stop what still runs, put back what of the
    user's went missing, commit every task's work onto its branch (what a stopped agent left, edits
    made by hand in a workspace), remove the workspaces (or keep them, ``--keep-worktrees``) and
    the branches that hold no work of their own, then write ``report(kept, left)`` as
    ``report.md``, journal the end (``journal`` adds fields) and announce :class:`RunFinished`.
    Returns the branches kept. ``outcome`` has ``state``, ``exit_code`` and gets ``report``."""
    bus = rt.bus
    stop_unfinished(rt, cancelled)
    for note in await rt.backend.restore_user_state():
        bus.log("warning", note)
    await rt.record_all_work("corral: salvage uncommitted work of {task}")

    rt.set_phase("cleanup")
    left: list[str] = []
    if keep_worktrees:
        if rt.workspaces.list():
            bus.log("info", "--keep-worktrees: workspaces left in place: "
                    + ", ".join(str(ws.path) for ws in rt.workspaces.list()))
        kept = await rt.workspaces.sweep_refs()
    else:
        kept, left = await rt.workspaces.wind_up()

    rt.set_phase("report")
    path = rt.journal.dir / "report.md"
    path.write_text(printable(report(kept, left)), encoding="utf-8")
    outcome.report = path

    rt.set_phase("done")
    summary, cost = run_summary(rt)
    rt.journal.update(state=outcome.state, exit_code=outcome.exit_code, ended=time.time(), kept_branches=kept,
                      report=str(path), **journal)
    bus.emit(RunFinished(exit_code=outcome.exit_code, state=outcome.state, report=str(path), kept_branches=kept,
                         summary=summary, cost=cost,
                         tokens=sum(t.result.usage.tokens for t in rt.tasks.values() if t.result) or None))
    return kept


__all__ = ["prepare", "execute", "open_run", "finish_run", "RunState", "stop_unfinished", "run_summary", "Prepared", "Outcome", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]
