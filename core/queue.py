"""The merge queue: conflicts handed to a resolver agent (``resolve = "agent"``), and a merge whose
verify fails bisected (``on_verify_fail = "bisect"``) to land the largest set of approved tasks whose
merge passes, as a bisecting merge queue does, rather than letting one bad task hold back every good one.

:func:`largest_passing` is the search alone (which subsets to try, in which order); :func:`bisect`
runs it on the runtime: each subset merged into a fresh integration workspace and verified there.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, Sequence, TypeVar, runtime_checkable

from .events import VerifyOutput, VerifyResult
from .procs import Supervised
from .plan import Plan
from .runtime import PolicyApprover, Runtime, TaskInfo
from .vcs.base import MergeOutcome, VcsError, Workspace

T = TypeVar("T")

#: lines of a verify run's output kept for the report of a task it failed on
OUTPUT_TAIL = 40


async def largest_passing(items: Sequence[T], passes: Callable[[list[T]], Awaitable[bool]]) -> list[T]:
    """The largest subset of ``items`` (in their order) that ``passes``, given that all of them
    together do not: split the candidates in halves and try the first on top of what passed so far;
    a half that passes joins it, a half that fails is split again. One culprit among N costs at most
    2·log2(N) calls; each further culprit about as many again."""
    async def search(good: list[T], candidates: list[T]) -> list[T]:
        # ``good`` passes (or is empty) and ``good + candidates`` fails
        if len(candidates) == 1:
            return good
        half = len(candidates) // 2
        first, second = candidates[:half], candidates[half:]
        if await passes(good + first):
            return await search(good + first, second)
        good = await search(good, first)
        if await passes(good + second):
            return good + second
        return await search(good, second)

    return await search([], list(items)) if items else []


@dataclass
class VerifyRun:
    """One run of the verify command on one merge."""

    tasks: list[str]
    integration: Workspace
    ok: bool
    exit_code: int | None
    output: list[str] = field(default_factory=list)


async def run_verify(rt: Runtime, command: str, integ: Workspace, tasks: list[str], header: str = "") -> VerifyRun:
    """Run ``command`` in ``integ`` (sandboxed as the plan says), its output in the verify pane (after
    ``header``, when given) and in ``verify.log``; announce its result."""
    bus = rt.bus
    start = time.monotonic()
    if header:
        bus.emit(VerifyOutput(lines=[header]))
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)

    def on_lines(lines: list[str]) -> None:
        tail.extend(lines)
        bus.emit(VerifyOutput(lines=lines))

    env = rt.child_env("verify", str(integ.path))
    argv = rt.sandboxed(["sh", "-c", command], rt.options.sandbox.resolve(""), str(integ.path), env, commits=False)
    proc = Supervised(argv, cwd=integ.path, env=env, on_lines=on_lines, log_path=rt.journal.logs / "verify.log",
                      grace=rt.options.grace)
    res = await proc.run()
    ok = res.exit_code == 0
    bus.emit(VerifyResult(ok=ok, exit_code=res.exit_code, command=command, duration=time.monotonic() - start,
                          tasks=tasks))
    return VerifyRun(tasks, integ, ok, res.exit_code, list(tail))


@dataclass
class Bisection:
    """What bisecting a failing merge found: the verified merge to land (None: no subset passed),
    the tasks it holds, and for each task left out the failing verify run that last held it."""

    run: VerifyRun | None
    landed: list[TaskInfo]
    failed: dict[str, VerifyRun]
    runs: int


async def bisect(rt: Runtime, plan: Plan, merged: list[TaskInfo], first: VerifyRun) -> Bisection:
    """``first`` (the merge of every task of ``merged``) failed verify: merge and verify subsets of
    them, each in a fresh integration workspace (a conflict there goes to the resolver as in the full
    merge), until the largest that passes is found. The workspaces of the other subsets are removed
    with their branches (the tasks' own branches hold their work)."""
    last_failed = {name: first for name in first.tasks}
    best: list[VerifyRun] = []
    count = [1]

    async def passes(subset: list[TaskInfo]) -> bool:
        names = [t.name for t in subset]
        count[0] += 1
        integ, outcomes = await rt.workspaces.merge([(t.name, t.workspace.head) for t in subset if t.workspace],
                                                    plan.merge)
        if not all(o.ok for o in outcomes):
            await resolve_conflicts(rt, plan, integ, outcomes)
        header = f"verify {count[0]} (bisecting {len(merged)} tasks): tasks {', '.join(names)}"
        if all(o.ok for o in outcomes):
            run = await run_verify(rt, plan.verify, integ, names, header)
        else:  # merged together, these conflicted in this order: not a set that can land
            bad = [o.task for o in outcomes if not o.ok]
            rt.bus.emit(VerifyOutput(lines=[header, f"corral: merging them conflicts ({', '.join(bad)}): "
                                                    "not verified"]))
            run = VerifyRun(names, integ, False, None, [f"merging {', '.join(names)} conflicts"])
        if run.ok:
            for old in best:
                await rt.workspaces.remove(old.integration, keep_branch=False)
            best[:] = [run]
        else:
            last_failed.update({name: run for name in names})
            await rt.workspaces.remove(integ, keep_branch=False)
        return run.ok

    landed = await largest_passing(merged, passes)
    kept = {t.name for t in landed}
    return Bisection(best[0] if best else None, landed,
                     {t.name: last_failed[t.name] for t in merged if t.name not in kept}, count[0])


@runtime_checkable
class ConflictChooser(Protocol):
    """An approver a person answers on a screen that lists the tasks (the dashboard's review): with
    ``resolve = "ask"`` the merge's conflicts are put to it together, and it names the one whose
    conflict the resolver takes on now, or none (go on without them)."""

    async def choose_conflict(self, rt: Runtime, conflicts: list[str], question: str) -> str: ...


async def settle_conflicts(rt: Runtime, plan: Plan, integ: Workspace, outcomes: list[MergeOutcome]) -> None:
    """The conflicts of a run's merge. With ``resolve = "ask"`` and a person at a review screen, the
    conflicting tasks are marked ``conflict`` and the review shows them until the person goes on: each
    one they pick (``R``) is handed to the resolver there and then, and the review comes back with the
    resolution as a task of its own. Otherwise as :func:`resolve_conflicts`."""
    chooser = rt.approver
    if plan.resolve != "ask" or not isinstance(chooser, ConflictChooser):
        await resolve_conflicts(rt, plan, integ, outcomes)
        return
    resolved = ""  # what the resolver just settled: shown once more before it is verified
    while True:
        left = {o.task: o for o in outcomes if not o.ok}
        if not left and not resolved:
            return
        for o in left.values():
            if rt.tasks[o.task].status != "conflict":
                rt.set_status(o.task, "conflict", "conflicts in " + ", ".join(o.conflict_files[:5]))
        question = "; ".join([resolved] * bool(resolved) + [
            f"{o.task} conflicts in {', '.join(o.conflict_files[:5])} (R: agent "
            f"{resolver_of(plan, rt.tasks[o.task])} resolves it)" for o in left.values()])
        picked = left.get(await chooser.choose_conflict(rt, list(left), question))
        if picked is None:
            return
        name = await _resolve(rt, plan, integ, picked, outcomes)
        resolved = ""
        if picked.ok:
            rt.set_status(picked.task, "succeeded", f"its conflict resolved by {name}")
            resolved = f"{name} resolved the conflict of {picked.task}"


def resolver_of(plan: Plan, info: TaskInfo) -> str:
    """The agent profile that resolves ``info``'s conflict: the plan's ``resolver``, else the task's own."""
    return plan.resolver or info.agent or plan.agent


async def resolve_conflicts(rt: Runtime, plan: Plan, integ: Workspace, outcomes: list[MergeOutcome]) -> None:
    """Each merge of ``outcomes`` that conflicted, in order, handed to the resolver agent when the plan
    says so (``resolve = "agent"``, or ``"ask"`` and the person says yes): a resolved one becomes a
    merge like the others (its outcome ok), and verify checks it as it checks them."""
    for o in outcomes:
        if not o.ok and await _wants_resolver(rt, plan, o):
            await _resolve(rt, plan, integ, o, outcomes)


async def _wants_resolver(rt: Runtime, plan: Plan, o: MergeOutcome) -> bool:
    if plan.resolve == "agent":
        return True
    if any(t.resolution and t.resolution[0] == o.task for t in rt.tasks.values()):
        return True  # resolved in this run (asked then): again in each merge bisection tries
    if plan.resolve == "ask" and not isinstance(rt.approver, PolicyApprover):  # nobody to ask: as "none"
        return await rt.approver.ask(rt, f"{o.task} conflicts in {', '.join(o.conflict_files[:5])}: let agent "
                                         f"{resolver_of(plan, rt.tasks[o.task])} resolve it?", False)
    return False


async def _resolve(rt: Runtime, plan: Plan, integ: Workspace, o: MergeOutcome, outcomes: list[MergeOutcome]) -> str:
    """Merge ``o``'s task into ``integ`` again, its conflict left in the files, and run the resolver
    there (a task of its own, ``resolve-<task>``, whose name is returned); what it commits must be the
    merge, markers gone. A resolver that fails, or is aborted, leaves ``integ`` as it was: the task
    stays a conflict."""
    backend, bus = rt.backend, rt.bus
    info = rt.tasks[o.task]
    head = info.workspace.head if info.workspace else ""
    before = integ.head or await backend.head_of(integ)
    try:
        files = await backend.redo_merge(integ, o.task, head, plan.merge)
    except VcsError as exc:
        bus.log("warning", f"{o.task}: not resolved: {exc}", task=o.task)
        return ""
    name = rt.unique_name(f"resolve-{o.task}")
    try:
        if files:
            result = await rt.run_agent({"agent": resolver_of(plan, info), "name": name, "step": "resolve",
                                         "task": resolver_prompt(rt, o.task, files, outcomes),
                                         "cwd": str(integ.path), "timeout": plan.timeout})
            if not result.ok:
                raise VcsError(f"the resolver {result.status}" + (f": {result.reason}" if result.reason else ""))
            new = await backend.conclude_merge(integ, o.task, head, plan.merge, before, files)
        else:  # it merges cleanly on top of what was merged since it conflicted
            new = integ.head = await backend.head_of(integ)
    except VcsError as exc:
        await backend.undo_merge(integ, before)
        bus.log("warning", f"{o.task}: conflict not resolved: {exc}", task=o.task)
        if name in rt.tasks:
            rt.set_status(name, "failed", f"conflict not resolved: {exc}")
        return name
    if name in rt.tasks:
        rt.tasks[name].resolution = (o.task, before, new)
        rt.tasks[name].snapshot = await backend.describe(dataclasses.replace(integ, base_commit=before, head=new))
        rt.set_status(name, "succeeded", f"resolved the conflict of {o.task} in {', '.join(files)}")
    rt.workspaces.note_merged(integ, o.task, head)
    o.ok, o.commit = True, new
    return name


def resolver_prompt(rt: Runtime, task: str, files: list[str], outcomes: list[MergeOutcome]) -> str:
    """What the resolver is told: the files in conflict, and what each side was asked and answered."""
    merged = [rt.tasks[x.task] for x in outcomes if x.ok and x.task in rt.tasks]
    others = [t for t in merged if t.snapshot and set(t.snapshot.files) & set(files)] or merged

    def side(info: TaskInfo) -> str:
        text = info.result.text.strip() if info.result else ""
        return (f"Task {info.name} was asked:\n{info.prompt.strip()}\n"
                + (f"It answered when done:\n{text[:4000]}\n" if text else ""))

    commit = ("then commit the merge (git add the files, then git commit --no-edit)" if rt.backend.kind == "git" else
              "and leave the result in the working copy, which is the merge commit: jj records your edits by "
              "itself (`jj resolve --list` lists what still conflicts; do not run jj new, jj commit or jj squash)")
    return "\n".join([
        f"You are in the integration workspace of a corral run. Merging task {task} into the work already "
        f"merged here conflicts in: {', '.join(files)}. Those files hold conflict markers (<<<<<<<, =======, "
        f">>>>>>>). Resolve every conflict so that both sides' work is kept as their tasks intended, remove "
        f"the markers, {commit}. Change nothing else.",
        "",
        side(rt.tasks[task]),
        *(side(t) for t in others),
    ])
