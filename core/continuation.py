"""A follow-up to a task of a run that has ended (or whose workspaces ``corral clean`` removed).

The run is over, so the conversation goes on in a new run of its own: one task, the old one, with
the old plan's settings. Its workspace is re-opened from the task's kept branch, the agent's own
session (its id from the old run's journal) is resumed there with the message, and the new work is
settled onto that branch and goes on to review, merge and landing as any run's.

A run's leftovers are taken up again the same way (:func:`prepare_review`): the tasks whose work did
not land (rejected, conflicting, failing verify, or never reviewed) in a new run that goes straight
to their review, where they are approved, sent back with a comment, resolved and landed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .pipeline import Prepared, prepare
from .agents import BUILTIN, ProfileError, profile_from_table
from .plan import Plan, PlanError, TaskSpec, load_plan
from .runtime import FollowUp, Runtime
from .vcs import open_backend
from .vcs.base import Snapshot, UsageError, Workspace

#: the states of a run that ended by itself or was stopped (not one that is running, or crashed)
ENDED = ("completed", "failed", "interrupted", "error")


@dataclass
class Continuation:
    """The task of an ended run a new run carries on, and the message it carries on with."""

    run: str
    task: str
    message: str
    ref: str
    base_commit: str
    workspace: str
    session: str
    turns: int

    def install(self, rt: Runtime, plan: Plan) -> None:
        """Make the new run's task the old one, its workspace removed (its next turn re-opens it
        from the branch), the message queued for it."""
        _adopt(rt, plan, self.task, self.ref, self.base_commit, self.workspace, self.session, self.turns)
        rt.tasks[self.task].queued.append(FollowUp(self.message))
        rt.journal.update(continues={"run": self.run, "task": self.task})

    def started(self, rt: Runtime) -> None:
        """The new run has started (nothing to say: the message's turn says it)."""


def _adopt(rt: Runtime, plan: Plan, task: str, ref: str, base_commit: str, workspace: str, session: str,
           turns: int, head: str = "") -> None:
    """The new run's task ``task`` is the old run's: its branch, its workspace (removed: a turn
    re-opens it from the branch), its agent's session and turns."""
    spec = next(t for t in plan.tasks if t.name == task)
    info = rt.tasks[task]
    ws = Workspace(task=task, path=Path(workspace or os.devnull), ref=ref, base_commit=base_commit, head=head,
                   run=rt.run_id)
    rt.workspaces.created[task] = ws
    info.workspace, info.session, info.turns = ws, session, turns
    # (not checked yet: its cwd is where the re-opened workspace will be)
    info.spec = {"agent": spec.agent, "profile": spec.agent, "name": task, "task": spec.prompt,
                 "system_prompt": spec.system_prompt, "cwd": workspace,
                 "timeout": plan.task_timeout(spec), "step": "agents"}
    rt.journal.update_task(task, branch=ref, base_commit=base_commit, session=session, turns=turns)


#: the statuses of a task whose work a review may take up again: its agent did its work (or was
#: stopped after changing files), and it did not land
LEFT = ("succeeded", "rejected", "conflict", "verify-failed", "aborted")


@dataclass
class Revisit:
    """The tasks an ended run left, taken up by a new run: no agent turn, their work (the kept
    branches' tips) straight to the review, as if their agents had just finished."""

    run: str
    #: task -> (branch, base commit, workspace, session, turns, its work as it is on the branch)
    tasks: dict[str, tuple[str, str, str, str, int, Snapshot]]

    def install(self, rt: Runtime, plan: Plan) -> None:
        for name, (ref, base_commit, workspace, session, turns, snap) in self.tasks.items():
            _adopt(rt, plan, name, ref, base_commit, workspace, session, turns, head=snap.commit)
            rt.tasks[name].snapshot = snap
        rt.journal.update(continues={"run": self.run, "tasks": list(self.tasks)})

    def started(self, rt: Runtime) -> None:
        """Each task's status, now that the run has started: its work is up for review."""
        for name in self.tasks:
            rt.set_status(name, "succeeded", f"left by run {self.run}")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stored_plan(data: dict[str, Any], *tasks: str) -> Plan:
    """The plan a run recorded when it started (its settings as the run applied them), with only
    ``tasks``; its agent profiles rebuilt from the ``[agents]`` tables the run stored (for a run from
    before they were stored: the plan file's when it still reads), over the built-in ones."""
    known = {f.name for f in fields(Plan)} - {"tasks", "agents", "agent_tables"}
    plan = Plan(tasks=[TaskSpec(**t) for t in data.get("tasks", []) if t.get("name") in tasks],
                **{k: v for k, v in data.items() if k in known})
    tables = data.get("agents")
    if isinstance(tables, dict):
        for name, table in tables.items():
            try:
                plan.agents[name] = profile_from_table(name, table, BUILTIN.get(name))
            except (ProfileError, TypeError, ValueError):
                continue  # (its preflight says the agent is unknown, if a task needs it)
            plan.agent_tables[name] = table
    elif plan.source and plan.source != "--task" and Path(plan.source).is_file():
        try:
            plan.agents = load_plan(plan.source).agents
        except PlanError:
            pass
    if plan.resolver and plan.resolver not in plan.agents:
        raise UsageError(f"the run's resolver {plan.resolver!r} is no known agent profile now (its plan file "
                         f"{plan.source} is gone or changed)")
    return plan


def task_problem(run: str, record: dict[str, Any], task: str) -> str:
    """Why ``task`` of the ended run ``record`` cannot be followed up ("" when it can)."""
    if record.get("state") not in ENDED:
        return (f"run {run} did not end cleanly (its state is {record.get('state')!r}): corral clean first, "
                "then send again")
    info = (record.get("tasks") or {}).get(task)
    if info is None:
        return f"run {run} has no task {task!r}"
    if info.get("status") == "discarded":
        return f"{task} was discarded: its work is gone, there is nothing to follow up"
    if info.get("status") == "merged":
        return f"{task} is merged already: start a new task for more changes"
    if not info.get("turns") or not info.get("branch"):
        return f"{task} has not run an agent: there is no conversation to follow up"
    return ""


async def prepare_follow_up(repo: str, run: str, task: str, message: str, *, env: dict[str, str] | None = None,
                            cwd: str | None = None) -> Prepared:
    """Preflight of the new run that carries on ``task`` of the ended ``run`` with ``message``.
    Raises :class:`UsageError` (one line) when it cannot; creates nothing."""
    if not message.strip():
        raise UsageError("the message is empty")
    backend = await open_backend(repo)
    folder = backend.state_dir / "runs" / run
    await backend.close()
    record = _read(folder / "run.json")
    if not isinstance(record, dict):
        raise UsageError(f"no run {run!r} in {backend.root} (corral runs lists them)")
    problem = task_problem(run, record, task)
    if problem:
        raise UsageError(problem)
    data = _read(folder / "plan.json")
    if not isinstance(data, dict):
        raise UsageError(f"run {run} ran a program: only a plan's task is followed up after its run ended")
    plan = stored_plan(data, task)
    if not plan.tasks:
        raise UsageError(f"{task} is not a task of run {run}'s plan (a retry's new attempt is not followed up "
                         "after the run ended)")
    info = record["tasks"][task]
    prep = await prepare(plan, repo, base=str(record.get("base") or "") or None, env=env, cwd=cwd)
    try:
        if not await prep.backend.ref_exists(info["branch"]):
            raise UsageError(f"the branch {info['branch']} of {task} is gone (deleted): there is no work to "
                             "re-open for a follow-up")
        checked_out = await prep.backend.checked_out_at(info["branch"])
        if checked_out is not None:
            raise UsageError(f"the branch {info['branch']} of {task} is checked out at {checked_out}: "
                             "corral clean (or remove that checkout) first")
    except BaseException:
        await prep.backend.close()
        raise
    prep.continues = Continuation(run=run, task=task, message=message, ref=info["branch"],
                                  base_commit=str(info.get("base_commit") or record.get("base_commit") or ""),
                                  workspace=str(info.get("workspace") or ""), session=str(info.get("session") or ""),
                                  turns=int(info.get("turns") or 0))
    return prep


async def prepare_review(repo: str, run: str, *, env: dict[str, str] | None = None,
                         cwd: str | None = None) -> Prepared:
    """Preflight of the new run that takes up what the ended ``run`` left for a review (a person
    reviews it: ``approve = "ask"``). Raises :class:`UsageError` (one line) when there is nothing
    to take up; creates nothing."""
    backend = await open_backend(repo)
    folder = backend.state_dir / "runs" / run
    await backend.close()
    record = _read(folder / "run.json")
    if not isinstance(record, dict) or "/" in run:
        raise UsageError(f"no run {run!r} in {backend.root} (corral runs lists them)")
    if record.get("state") not in ENDED:
        raise UsageError(f"run {run} did not end cleanly (its state is {record.get('state')!r}): corral clean "
                         "first")
    data = _read(folder / "plan.json")
    if not isinstance(data, dict):
        raise UsageError(f"run {run} ran a program: only a plan's tasks are reviewed again")
    planned = {t.get("name") for t in data.get("tasks", [])}
    left = {name: info for name, info in (record.get("tasks") or {}).items()
            if name in planned and info.get("status") in LEFT and info.get("branch") and info.get("files")}
    plan = stored_plan(data, *left)
    plan.approve = "ask"
    prep = await prepare(plan, repo, base=str(record.get("base") or "") or None, env=env, cwd=cwd)
    try:
        tasks: dict[str, tuple[str, str, str, str, int, Snapshot]] = {}
        for name, info in left.items():
            ref = str(info["branch"])
            if not await prep.backend.ref_exists(ref) or await prep.backend.checked_out_at(ref) is not None:
                continue  # deleted, or someone works on it: not taken up
            base_commit = str(info.get("base_commit") or record.get("base_commit") or "")
            head = await prep.backend.resolve(ref)
            snap = await prep.backend.describe(Workspace(task=name, path=Path(os.devnull), ref=ref,
                                                         base_commit=base_commit, head=head))
            if snap.files:
                tasks[name] = (ref, base_commit, str(info.get("workspace") or ""), str(info.get("session") or ""),
                               int(info.get("turns") or 0), snap)
        if not tasks:
            raise UsageError(f"run {run}: nothing left to review (every task's work landed, was discarded, or its "
                             "branch is gone)")
    except BaseException:
        await prep.backend.close()
        raise
    prep.plan.tasks = [t for t in prep.plan.tasks if t.name in tasks]
    prep.continues = Revisit(run=run, tasks=tasks)
    return prep
