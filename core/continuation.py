"""A follow-up to a task of a run that has ended (or whose workspaces ``corral clean`` removed).

The run is over, so the conversation goes on in a new run of its own: one task, the old one, with
the old plan's settings. Its workspace is re-opened from the task's kept branch, the agent's own
session (its id from the old run's journal) is resumed there with the message, and the new work is
settled onto that branch and goes on to review, merge and landing as any run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .pipeline import Prepared, prepare
from .plan import Plan, PlanError, TaskSpec, load_plan
from .runtime import FollowUp, Runtime
from .vcs import open_backend
from .vcs.base import UsageError, Workspace

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
        spec = next(t for t in plan.tasks if t.name == self.task)
        info = rt.tasks[self.task]
        ws = Workspace(task=self.task, path=Path(self.workspace), ref=self.ref, base_commit=self.base_commit,
                       run=rt.run_id)
        rt.workspaces.created[self.task] = ws
        info.workspace, info.session, info.turns = ws, self.session, self.turns
        # (not checked yet: its cwd is where the re-opened workspace will be)
        info.spec = {"agent": spec.agent, "profile": spec.agent, "name": self.task, "task": spec.prompt,
                     "system_prompt": spec.system_prompt, "cwd": self.workspace,
                     "timeout": plan.task_timeout(spec), "step": "agents"}
        info.queued.append(FollowUp(self.message))
        rt.journal.update(continues={"run": self.run, "task": self.task})
        rt.journal.update_task(self.task, branch=self.ref, base_commit=self.base_commit, session=self.session,
                               turns=self.turns)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stored_plan(data: dict[str, Any], task: str) -> Plan:
    """The plan a run recorded when it started (its settings as the run applied them), with only
    ``task``; its agent profiles are the plan file's when that still reads, else the built-in ones."""
    known = {f.name for f in fields(Plan)} - {"tasks", "agents"}
    plan = Plan(tasks=[TaskSpec(**t) for t in data.get("tasks", []) if t.get("name") == task],
                **{k: v for k, v in data.items() if k in known})
    if plan.source and plan.source != "--task" and Path(plan.source).is_file():
        try:
            plan.agents = load_plan(plan.source).agents
        except PlanError:
            pass
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
