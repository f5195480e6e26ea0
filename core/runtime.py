"""The runtime (``rt``): spawn agents, run them in parallel, join them, observe, ask for approval.

It is the one engine behind both front doors: the plan pipeline (:mod:`corral.core.pipeline`) and
user programs (``async def run(input, rt)``). Everything it does is announced on its
:class:`~corral.core.events.EventBus`; the dashboard and the headless renderers only listen to that
bus and call the control methods (:meth:`Runtime.abort`, :meth:`Runtime.abort_all`,
:meth:`Runtime.discard`).
"""

from __future__ import annotations

import builtins
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import anyio

from . import plan as _plan
from . import reaper
from .agents import Profile
from .events import (
    FINISHED_STATUSES,
    EventBus,
    Landed,
    LogEvent,
    PhaseChanged,
    TaskActivity,
    TaskFinished,
    TaskOutput,
    TaskStatus,
    WorkRecorded,
)
from .guard import agent_git_env
from .journal import Journal, write_atomic
from .parsers import TextParser, Usage, make_parser
from .plan import argv_problem
from .procs import MAX_DISPLAY_LINE, SESSION_NICE, Supervised
from .sandbox import TOOL_CACHES, Policy, Sandbox, object_binds, repo_paths, state_paths
from .vcs.base import Backend, Forecast, LandOutcome, MergeOutcome, Snapshot, VcsError, Workspace, workspace_of

#: longest output line handed whole to a structured-output parser
STRUCTURED_MAX_LINE = 8 * 1024 * 1024


#: a task, agent or workspace name: it becomes a branch name, a log file name and a pane title
NAME_RE = _plan.NAME_RE


def work_problem(snap: Snapshot) -> str:
    """Why a task's work is not fit to merge, though nothing of it is lost ("" when it is)."""
    def some(paths: list[str]) -> str:
        return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    if snap.uncommitted:
        return f"changes corral could not commit (kept in the workspace): {some(snap.uncommitted)}"
    if snap.conflicted:
        return f"conflicts left unresolved (committed with their markers): {some(snap.conflicted)}"
    return ""


def readable_name(text: str) -> str:
    """``text`` made fit for a name: runs of other characters become '-', at most 32 characters."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")[:32].rstrip("-.")
    return out or "agent"


#: Agents run at this niceness at least: when they saturate the CPUs, corral (and its dashboard)
#: still gets to run.
AGENT_NICE = SESSION_NICE


def agent_nice(at_once: int) -> int:
    """The niceness for an agent of ``at_once`` running together: so that together they weigh no
    more than corral's own process with the scheduler (which weighs nice ``n`` as 1.25**-n of nice 0)
    where each one's nice value weighs against corral's: without autogroup scheduling, or in a
    cgroup shared with corral. (With autogroup scheduling the agents share one scheduling group
    whose own nice value is what weighs against corral: see :data:`.procs.SESSION_NICE`.) 64 agents
    at nice 5 outweighed corral's loop 20 to 1, and it waited for the CPU. At least
    :data:`AGENT_NICE`, at most 19; the CPU an agent gets when corral does not want it is the same
    at any niceness."""
    nice = AGENT_NICE
    while nice < 19 and at_once > 1.25 ** nice:
        nice += 1
    return nice


@dataclass
class AgentResult:
    """What one agent run produced (attribute names follow pi-factory's runtime)."""

    agent: str
    name: str
    exit_code: int | None
    text: str
    usage: Usage
    duration: float
    status: str  # succeeded | failed | aborted
    reason: str = ""
    step: str = ""
    cwd: str = ""
    profile: str = ""  # the agent profile that ran (``agent`` is the spec's display name)
    files: list[str] = field(default_factory=list)  # what it changed, when it ran in a workspace
    failed_edits: int = 0  # edits (writes, patches) the agent tried that failed
    edit_error: str = ""  # the agent's own words for the last of them

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


class FollowUpRefused(ValueError):
    """A follow-up message that cannot be sent; the message is one line for the user."""


@dataclass
class FollowUp:
    """A message for a task's agent, waiting for its turn; ``result`` is that turn's (None when it
    was never delivered: the run ended first)."""

    message: str
    done: anyio.Event = field(default_factory=anyio.Event)
    result: AgentResult | None = None


def context_prompt(prompt: str, answer: str, message: str) -> str:
    """A follow-up for an agent that cannot resume its session: a new session told what the last one
    was asked and answered."""
    return (f"You are continuing earlier work in this directory. You were asked:\n\n{prompt}\n\n"
            f"You answered:\n\n{answer or '(no answer)'}\n\nNow:\n\n{message}")


def add_usage(a: Usage, b: Usage) -> Usage:
    """What two turns spent together."""
    cost = None if a.cost is None and b.cost is None else (a.cost or 0.0) + (b.cost or 0.0)
    return Usage(cost=cost, input_tokens=a.input_tokens + b.input_tokens,
                 output_tokens=a.output_tokens + b.output_tokens)


@dataclass
class TaskInfo:
    """Everything the engine knows about one task (or spawned agent), for renderers and the report."""

    name: str
    agent: str
    prompt: str = ""
    system_prompt: str = ""
    status: str = "pending"
    reason: str = ""
    workspace: Workspace | None = None
    snapshot: Snapshot | None = None
    result: AgentResult | None = None
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    approved: bool | None = None
    merged: bool = False
    branch_kept: bool = False
    conflict_files: list[str] = field(default_factory=list)
    #: how its commands run: ``bwrap (network on)``, ``none (why)``; "" before its first one
    sandbox: str = ""
    #: the agent's own session id (a follow-up resumes it), the turns it ran, the spec it ran with
    session: str = ""
    turns: int = 0
    spec: dict[str, Any] | None = None
    #: follow-up messages waiting for the current turn to end
    queued: list[FollowUp] = field(default_factory=list)
    #: a resolver's: the task whose conflict it resolved, and the integration before and after (its
    #: own diff in the review)
    resolution: tuple[str, str, str] | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def drop_queued(self) -> list[FollowUp]:
        """Take back the messages queued for its agent: never delivered (whoever waits on one wakes
        with no result)."""
        items, self.queued = self.queued, []
        for item in items:
            item.done.set()
        return items


class Approver(Protocol):
    """Who decides: a policy (``--approve all|none``), the terminal, or the dashboard."""

    async def review(self, rt: "Runtime", candidates: list[TaskInfo], forecast: Forecast) -> dict[str, bool]: ...

    async def confirm_land(self, rt: "Runtime", message: str) -> bool: ...

    async def ask(self, rt: "Runtime", question: str, default: bool) -> bool: ...


class PolicyApprover:
    """``--approve all`` / ``--approve none``: decides without asking."""

    def __init__(self, approve_all: bool) -> None:
        self.approve_all = approve_all

    async def review(self, rt: "Runtime", candidates: list[TaskInfo], forecast: Forecast) -> dict[str, bool]:
        # (an aborted agent's partial work is approved by a person only)
        return {t.name: self.approve_all and t.status == "succeeded" for t in candidates}

    async def confirm_land(self, rt: "Runtime", message: str) -> bool:
        return self.approve_all

    async def ask(self, rt: "Runtime", question: str, default: bool) -> bool:
        return self.approve_all


@dataclass
class RunOptions:
    run_id: str
    worktree_root: str | None = None
    grace: float = 3.0
    keep_worktrees: bool = False
    #: profile used for a spec whose ``agent`` is a display name and that names no ``profile``
    default_agent: str | None = None
    #: the environment commands start from (None: corral's own)
    env: dict[str, str] | None = None
    #: the run's sandbox settings (an unprobed policy runs nothing sandboxed)
    sandbox: Policy = field(default_factory=lambda: Policy(setting="none"))


def _within(path: str | Path, top: str | Path) -> bool:
    """Whether ``path`` is ``top`` or below it (both resolved)."""
    try:
        return Path(path).resolve().is_relative_to(Path(top).resolve())
    except OSError:
        return False


class Handle:
    """A spawned agent; ``await rt.join(handle)`` gives its :class:`AgentResult`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.done = anyio.Event()
        self.result: AgentResult | None = None
        self.error: BaseException | None = None


class Observer:
    """``rt.observe``: log into the event log, write artifacts into the run folder."""

    def __init__(self, rt: "Runtime") -> None:
        self._rt = rt

    def log(self, level: str, message: str, **data: Any) -> None:
        self._rt.bus.emit(LogEvent(level=level, message=str(message), data=data))

    def artifact(self, name: str, content: str | bytes) -> str:
        safe = Path(name).name
        if not safe or safe in (".", ".."):
            raise ValueError(f"artifact name {name!r} is not a file name")
        path = self._rt.journal.dir / safe
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            write_atomic(path, content)
        self._rt.bus.emit(LogEvent(level="info", message=f"artifact {safe} written", data={"path": str(path)}))
        return str(path)


#: merges of base's new tip into a result before it lands, at most (base moving again each time)
LAND_TRIES = 3


def _merge_run(run: str, n: int) -> str:
    """The run id the ``n``-th merge of ``run`` names its integration branch by."""
    return run if n == 1 else f"{run}-m{n}"


class Workspaces:
    """``rt.workspaces``: the active backend's workspaces, tracked so that none outlives the run."""

    def __init__(self, rt: "Runtime") -> None:
        self._rt = rt
        self.live: dict[str, Workspace] = {}
        #: every workspace this run created (also the removed ones), for the final sweep of branches
        self.created: dict[str, Workspace] = {}
        self._merges = 0
        self._locks: dict[str, anyio.Lock] = {}
        #: integration workspace -> (workspace name -> head merged into it)
        self._merged: dict[str, dict[str, str]] = {}
        #: workspace name -> the head of it that landed on base
        self.landed: dict[str, str] = {}
        #: the command a merge is verified with again when base moved before it landed ("" = none:
        #: a program verifies what it lands itself); the plan pipeline's is the plan's ``verify``
        self.verify = ""

    def _lock(self, ws: Workspace) -> anyio.Lock:
        """One workspace, one operation at a time: a commit of an agent's work and the removal of
        its workspace (a program's ``finally``) must not interleave."""
        return self._locks.setdefault(str(ws.path), anyio.Lock())

    async def create(self, name: str, base: str | None = None) -> Workspace:
        rt = self._rt
        if name in self.live or name in self.created:
            raise ValueError(f"workspace {name!r} already exists in this run")
        if not NAME_RE.match(str(name)) or not await rt.backend.check_ref_name(rt.backend.ref_name(rt.run_id, name)):
            raise ValueError(f"workspace name {name!r}: use letters, digits, '.', '_' and '-' (at most 40)")
        base_commit = await rt.backend.resolve(base) if base else rt.base_commit
        ws = await rt.backend.create_workspace(rt.run_id, name, base_commit, rt.options.worktree_root)
        self.live[name] = ws
        self.created[name] = ws
        rt.journal.update_task(name, workspace=str(ws.path), branch=ws.ref, base_commit=base_commit)
        self._say_notices()
        return ws

    def _say_notices(self) -> None:
        """What the backend found worth telling (jj: the base it chose, what agents did to the user's
        bookmarks and what corral put back, workspaces it had to adopt)."""
        for note in self._rt.backend.take_notices():
            self._rt.bus.log("warning", note)

    async def snapshot(self, ws: Workspace, message: str | None = None) -> Snapshot:
        async with self._lock(ws):
            try:
                return await self._rt.backend.snapshot(ws, message or f"corral: {ws.task}")
            finally:
                self._say_notices()

    async def put_away(self, ws: Workspace, message: str, recorded: Callable[[Snapshot], bool]) -> Snapshot:
        """:meth:`snapshot` of ``ws`` (a task's, whose agent just exited), handed to ``recorded`` (which
        records it and says whether the workspace may go), then :meth:`remove` with its branch kept:
        in one hold of its lock, its files looked at once. Nothing runs in it between the two (its
        agent and every process it started are gone, and the lock keeps out corral's own), so the
        removal need not commit it again. A removal that fails leaves it in place, said in a warning."""
        rt = self._rt
        with anyio.CancelScope(shield=True):
            async with self._lock(ws):
                try:
                    snap = await rt.backend.snapshot(ws, message)
                    if not recorded(snap):
                        return snap
                    try:
                        await rt.backend.remove_settled(ws)
                    except VcsError as exc:
                        rt.bus.log("warning", f"workspace of {ws.task} kept: {exc}", task=ws.task)
                        return snap
                finally:
                    self._say_notices()
        self.live.pop(ws.task, None)
        rt.journal.update_task(ws.task, workspace_removed=True, branch_kept=True)
        return snap

    async def remove(self, ws: Workspace | str, keep_branch: bool = True) -> None:
        found = self.live.get(ws) if isinstance(ws, str) else ws
        if found is None:
            return
        ws = found
        with anyio.CancelScope(shield=True):
            async with self._lock(ws):
                try:
                    await self._rt.backend.remove_workspace(ws, keep_ref=keep_branch)
                finally:
                    self._say_notices()
        self.live.pop(ws.task, None)
        self._rt.journal.update_task(ws.task, workspace_removed=True, branch_kept=keep_branch)

    def list(self) -> list[Workspace]:
        return list(self.live.values())

    async def reopen(self, name: str) -> Workspace:
        """The workspace ``name`` again, made from its kept branch when it was removed (one more turn
        of its agent: a follow-up, changes requested), registered as any workspace so that discard
        and the end of the run handle it. Raises :class:`VcsError` when its branch is gone."""
        if name in self.live:
            return self.live[name]
        old = self.created.get(name)
        if old is None or old.role != "task":
            raise ValueError(f"no task workspace {name!r} in this run")
        rt = self._rt
        try:
            ws = await rt.backend.reopen_workspace(old, rt.options.worktree_root)
        finally:
            self._say_notices()
        self.live[name] = self.created[name] = ws
        for info in rt.tasks.values():
            if info.workspace is old:
                info.workspace = ws
        rt.journal.update_task(name, workspace=str(ws.path), workspace_removed=False)
        return ws

    async def forecast(self, heads: dict[str, str] | builtins.list[Any] | None = None) -> Forecast:
        """Predicted conflicts between ``heads`` (a dict name -> commit, or a list of workspaces,
        workspace or branch names; default: every live workspace) and with base."""
        rt = self._rt
        if heads is None:
            heads = {ws.task: ws.head for ws in self.live.values() if ws.head}
        elif not isinstance(heads, dict):
            heads = dict([await self._head(h) for h in heads])
        bases = {name: self.created[name].base_commit for name in heads if name in self.created}
        base = rt.base_name
        try:
            await rt.backend.resolve(base)
        except VcsError:
            rt.bus.log("warning", f"base {base} no longer exists (deleted or renamed during the run): the forecast "
                                  f"is against {rt.base_commit[:12]}, where the run started")
            base = rt.base_commit
        return await rt.backend.forecast(base, heads, bases)

    async def _head(self, item: Any) -> tuple[str, str]:
        """(label, commit) of a workspace (its work committed first), a workspace name, a branch or
        revision name, or a ``(label, commit)`` pair."""
        if isinstance(item, tuple) and len(item) == 2:
            return str(item[0]), str(item[1])
        if isinstance(item, str) and item in self.live:
            item = self.live[item]
        if isinstance(item, Workspace):
            if item.task in self.live and item.path.is_dir():
                await self.snapshot(item)
            return item.task, item.head or item.base_commit
        if isinstance(item, str):
            try:
                return item, await self._rt.backend.resolve(item)
            except VcsError as exc:
                raise ValueError(f"merge: {item!r} is neither a workspace of this run nor a revision ({exc})") from None
        raise TypeError(f"merge: expected a workspace, a workspace or branch name, or (name, commit), "
                        f"not {type(item).__name__}")

    async def merge(self, heads: builtins.list[Any], strategy: str = "merge"
                    ) -> tuple[Workspace, builtins.list[MergeOutcome]]:
        """Merge ``heads`` (workspaces, workspace or branch names, or ``(name, commit)`` pairs) in order
        into a new integration workspace at base; a conflicting one is left out (its outcome says
        which files) and the others still merge. Returns the integration workspace and the outcomes."""
        rt = self._rt
        if strategy not in ("merge", "squash", "rebase"):
            raise ValueError(f"merge strategy {strategy!r}: must be merge, squash or rebase")
        pairs = [await self._head(h) for h in heads]
        # each merge gets an integration workspace of its own: the first `integration`, then
        # `integration-2`, ... (on branch corral/<run>-m2/integration: the backend names that branch)
        n = self._merges + 1
        while ((f"integration-{n}" if n > 1 else "integration") in self.created
               or await rt.backend.ref_exists(rt.backend.ref_name(_merge_run(rt.run_id, n), "integration"))):
            n += 1  # (a branch of that name is kept from before: `corral land` of a kept result)
        self._merges = n
        run = _merge_run(rt.run_id, n)
        ws, outcomes = await rt.backend.integrate(run, rt.base_commit, pairs, strategy, rt.options.worktree_root)
        ws.role = "integration"
        if ws.base_commit and ws.base_commit != rt.base_commit:
            # jj: base was rewritten during the run (a squash into it): the merge is on its new version
            rt.bus.log("warning", f"base {rt.base_name} was rewritten during the run ({rt.base_commit[:12]} -> "
                                  f"{ws.base_commit[:12]}): merged onto its new version")
            rt.base_commit = ws.base_commit
            rt.journal.update(base_commit=rt.base_commit)
        if n > 1:
            ws.task = f"{ws.task}-{n}"
        self.live[ws.task] = ws
        self.created[ws.task] = ws
        self._merged[ws.task] = {label: head for (label, head), o in zip(pairs, outcomes) if o.ok}
        return ws, outcomes

    def note_merged(self, integration: Workspace, label: str, head: str) -> None:
        """``head`` was merged into ``integration`` after :meth:`merge` (a conflict a resolver settled):
        its landing lands it too."""
        self._merged.setdefault(integration.task, {})[label] = head

    async def land(self, ws: Workspace | str, commit: bool = True) -> LandOutcome:
        """The one landing, for plans and programs alike: move the base branch to ``ws``'s work
        (what its workspace holds committed first, unless ``commit`` is false: a verified merge
        lands as it was verified) by compare-and-swap from where base was when the run started (or
        last landed). When base gained commits since, they are merged into ``ws`` and the result
        verified again (:attr:`verify`) before the next try (:meth:`_land_moved`). Announces a
        ``land`` event; when it does not land, ``ws``'s branch is kept and the event says how to
        land it by hand."""
        rt = self._rt
        if isinstance(ws, str):
            if ws not in self.live:
                raise ValueError(f"land: no live workspace {ws!r}")
            ws = self.live[ws]
        if commit and ws.task in self.live and ws.path.is_dir():
            await self.snapshot(ws)
        new = ws.head or ws.base_commit
        hint = ""
        if new == rt.base_commit:
            out = LandOutcome(True, "nothing to land", new, new)
        else:
            out = await rt.backend.land(rt.base_name, rt.base_commit, new)
            if out.why == "moved" and ws.task in self.live and ws.path.is_dir():
                out, hint = await self._land_moved(ws, out)
        if out.ok:
            rt.base_commit = out.new
            self.note_landed(ws)
            message = out.message
        else:
            hint = hint or rt.backend.land_hint(rt.base_name, ws.ref)
            message = f"{out.message}; {hint}" if hint else out.message
            out = replace(out, message=message)  # the report says what to do, as the event does
        rt.bus.emit(Landed(ok=out.ok, base=rt.base_name, old=out.old, new=out.new, message=message,
                           kept="" if out.ok else ws.ref))
        return out

    async def _land_moved(self, ws: Workspace, out: LandOutcome) -> tuple[LandOutcome, str]:
        """Base moved since the run started (``out`` says how): merge its new tip into ``ws``, verify
        the result again, and land it by compare-and-swap; base moving again meanwhile starts over,
        at most :data:`LAND_TRIES` times. Refused when the merge conflicts or verify fails: ``ws``'s
        branch then holds what was merged before, and the hint (second) says what to do."""
        from .queue import run_verify  # the merge queue builds on the runtime

        rt = self._rt
        for attempt in range(1, LAND_TRIES + 1):
            tip = await rt.backend.resolve(rt.base_name)
            again = " and verifying again" if self.verify.strip() else ""
            rt.bus.log("warning", f"{out.message}: merging it into {ws.ref}{again}")
            before = ws.head
            try:
                files = await rt.backend.merge_base_into(ws, tip)
            except VcsError as exc:
                return LandOutcome(False, f"{out.message}; merging it into the result failed: {exc}", out.old, before,
                                   "failed"), ""
            if files:
                hint = await rt.backend.conflict_hint(rt.base_name, ws.ref, files)
                return LandOutcome(False, f"{rt.base_name} moved during the run, and merging it into the result "
                                          f"conflicts in {', '.join(files[:5])}", out.old, before, "conflict"), hint
            if self.verify.strip():
                run = await run_verify(rt, self.verify, ws, list(self._merged.get(ws.task, {})),
                                       f"verify again ({attempt}), {rt.base_name} merged in: {self.verify}")
                if not run.ok:
                    return LandOutcome(False, f"{rt.base_name} moved during the run, and verify failed (exit "
                                              f"{run.exit_code}) with it merged in", tip, ws.head, "verify"), \
                        f"the merge is kept on {ws.ref}"
            out = await rt.backend.land(rt.base_name, tip, ws.head)
            if out.why != "moved":
                break
        return out, ""

    def note_landed(self, integration: Workspace) -> None:
        """The work merged into ``integration`` (and the merge itself) is on base now. Journaled at
        once: a run killed during its cleanup is still listed as landed."""
        self.landed.update(self._merged.get(integration.task, {}))
        self.landed[integration.task] = integration.head
        self._rt.journal.update(landed=True)

    async def wind_up(self) -> tuple[builtins.list[str], builtins.list[str]]:
        """The end of a run: remove every workspace still alive, its work committed onto its branch
        first (a workspace whose changes cannot be committed stays where it is), then delete this
        run's branches that hold no work of their own (merged, landed, or never changed). Shielded:
        runs even when the run is being cancelled. Returns (refs kept, workspaces left in place)."""
        rt = self._rt
        limiter = anyio.CapacityLimiter(4)
        left: list[str] = []

        async def remove_one(ws: Workspace) -> None:
            async with limiter:
                try:
                    await self.remove(ws, keep_branch=True)
                except Exception as exc:  # keep going: other workspaces still need removing
                    left.append(str(ws.path))
                    rt.bus.log("error", f"could not remove workspace {ws.path}: {exc}", task=ws.task)

        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for ws in list(self.live.values()):
                    tg.start_soon(remove_one, ws)
            kept = await self.sweep_refs()
        return kept, left

    async def sweep_refs(self) -> builtins.list[str]:
        """Delete the refs of this run's workspaces that hold no work of their own; return the others
        (a ref holding commits made in a workspace beside the task's own work is always kept)."""
        rt, backend = self._rt, self._rt.backend
        kept: list[str] = []
        # work held by base counts as safe there only while base is where corral left it (where the
        # run started, or what it landed); base moved by anyone else does not vouch for it
        try:
            base_tip = await backend.resolve(rt.base_name)
        except VcsError:
            base_tip = ""
        untrusted = "" if base_tip in (rt.base_commit, *self.landed.values()) else rt.base_name
        drop: list[Workspace] = []
        gone = [ws for ws in self.created.values() if ws.task not in self.live]
        try:  # which of their refs exist, and where they point, asked at once
            exist: dict[str, str] | None = await backend.existing_refs([r for ws in gone for r in (ws.ref, *ws.extra_refs)])
        except VcsError as exc:
            rt.bus.log("error", f"could not check the branches of this run: {exc}")
            exist = None
        for ws in self.created.values():
            if ws.task in self.live:  # kept (--keep-worktrees), or left in place: checked out there
                kept += [ws.ref, *ws.extra_refs]
                continue
            if exist is None:
                kept.append(ws.ref)
                continue
            try:
                if ws.ref in exist:
                    # landed as it is now (a rebase or squash landed copies of it), or holding nothing
                    # that is not elsewhere: its work is safe without it
                    landed = ws.head and self.landed.get(ws.task) == ws.head
                    # still at the commit it was made from: nothing of its own (no git process asked)
                    empty = bool(ws.base_commit) and exist[ws.ref] == ws.base_commit
                    if not landed and not empty and await backend.holds_unmerged_work(ws.ref, ws.base_commit, untrusted):
                        kept.append(ws.ref)
                    else:
                        drop.append(ws)
                kept += [r for r in ws.extra_refs if r in exist]
            except VcsError as exc:
                rt.bus.log("error", f"could not check branch {ws.ref}: {exc}")
                kept.append(ws.ref)
        try:
            # each deleted only while it points where it was looked at (no one moved it since)
            kept += await backend.drop_works(drop, {ws.ref: exist[ws.ref] for ws in drop} if exist else None)
        except VcsError as exc:
            rt.bus.log("error", f"could not delete branches of this run: {exc}")
            kept += [ws.ref for ws in drop if await backend.ref_exists(ws.ref)]
        for info in rt.tasks.values():
            if info.workspace is not None:
                info.branch_kept = info.workspace.ref in kept
        return kept


class Runtime:
    """The runtime handed to programs as ``rt`` and used by the plan pipeline."""

    def __init__(
        self,
        *,
        backend: Backend,
        bus: EventBus,
        journal: Journal,
        profiles: dict[str, Profile],
        approver: Approver,
        options: RunOptions,
        base_name: str,
        base_commit: str,
    ) -> None:
        self.backend = backend
        self.bus = bus
        self.journal = journal
        self.profiles = profiles
        self.approver = approver
        self.options = options
        self.run_id = options.run_id
        self.base_name = base_name
        self.base_commit = base_commit
        self.tasks: dict[str, TaskInfo] = {}
        self.phase = "preflight"
        self.observe = Observer(self)
        self.workspaces = Workspaces(self)
        self._procs: dict[str, Supervised] = {}
        self._abort_requested: set[str] = set()
        #: tasks whose conversation someone carries on (a flow running its turns): a message to one
        #: of them is queued for that flow; ``_quiet`` is set when there is none
        self._owned: set[str] = set()
        self._quiet = anyio.Event()
        self._quiet.set()
        #: the open review (the plan pipeline's): a follow-up to a task withdraws it (changes requested)
        self.review_scope: anyio.CancelScope | None = None
        #: ``(task, prompt) -> new task``: a new attempt of a task (the plan pipeline sets it)
        self.new_attempt: Callable[[str, str], str] | None = None
        #: a retry's task -> the task it is a new attempt of (the first attempt's name)
        self.attempt_of: dict[str, str] = {}
        #: the run's agent slots (a plan's max_parallel): a follow-up turn takes one like any agent
        self.slots: anyio.Semaphore | None = None
        #: how many agents the run has run at once at most (a plan's max_parallel), for their niceness
        self.agents_at_once = 1
        #: a plan's run without --keep-worktrees: a task's workspace goes once its agent's work is on
        #: its branch (no more checkouts on disk than agents at work); another turn re-opens it
        self.put_away = False
        #: what a workspace re-opened for another turn needs first (a plan's setup); False: the turn
        #: does not start (the task's status says why)
        self.on_reopen: Callable[[str, Workspace], Awaitable[bool]] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._counter = 0
        self.started = time.time()
        #: what the user should know about this run's repository (shown at the start, and in panes)
        self.notes: list[str] = []

    # -------------------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> "Runtime":
        self._tg_cm = anyio.create_task_group()
        self._tg = await self._tg_cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        try:
            return await self._tg_cm.__aexit__(*exc)
        finally:
            self._tg = None

    # ---------------------------------------------------------------------------- state
    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.journal.update(phase=phase)
        self.bus.emit(PhaseChanged(phase=phase))

    def add_task(self, name: str, agent: str, prompt: str = "", system_prompt: str = "") -> TaskInfo:
        info = self.tasks.get(name)
        if info is None:
            info = TaskInfo(name=name, agent=agent, prompt=prompt, system_prompt=system_prompt)
            self.tasks[name] = info
            self.journal.update_task(name, status="pending", agent=agent)
        return info

    def set_status(self, name: str, status: str, reason: str = "") -> None:
        info = self.tasks[name]
        info.status = status
        info.reason = reason
        ws = info.workspace
        self.journal.update_task(name, status=status, reason=reason)
        self.bus.emit(TaskStatus(task=name, status=status, reason=reason,
                                 workspace=str(ws.path) if ws else "", branch=ws.ref if ws else ""))

    async def record_work(self, name: str, message: str) -> Snapshot | None:
        """Settle a task's work: commit what its workspace holds, gather every commit made there onto
        its branch (and kept refs), and record the result (journal, ``info.snapshot``). Emits
        :class:`WorkRecorded` with ``note`` when the work changed since it was last recorded.
        Shielded. Raises :class:`VcsError` when the work could not be committed."""
        info = self.tasks[name]
        ws = info.workspace
        if ws is None or ws.task not in self.workspaces.live:
            return info.snapshot
        before = info.snapshot
        with anyio.CancelScope(shield=True):
            snap = await self.workspaces.snapshot(ws, message)
        self._recorded(info, before, snap, message)
        return snap

    def _recorded(self, info: TaskInfo, before: Snapshot | None, snap: Snapshot, message: str) -> None:
        """What :meth:`record_work` does with the snapshot ``snap`` of ``info``'s work (``before``: the
        one recorded before it)."""
        name = info.name
        info.snapshot = snap
        self.journal.update_task(name, files=snap.files, commit=snap.commit, added=snap.added, removed=snap.removed,
                                 extra_refs=snap.extra_refs, uncommitted=snap.uncommitted,
                                 **({"change_id": snap.change_id} if snap.change_id else {}))
        if snap.extra_refs and (before is None or before.extra_refs != snap.extra_refs):
            self.bus.log("warning", "other commits made in the workspace, not part of the task's work, are kept on "
                         + ", ".join(snap.extra_refs), task=name)
        if before is not None and (before.commit, before.extra_refs, before.uncommitted) != \
                (snap.commit, snap.extra_refs, snap.uncommitted):
            self.bus.emit(WorkRecorded(task=name, commit=snap.commit, files=snap.files, added=snap.added,
                                       removed=snap.removed, extra_refs=snap.extra_refs,
                                       uncommitted=snap.uncommitted,
                                       note=message.split("\n")[0].removeprefix("corral: ")))

    async def record_all_work(self, message: str) -> None:
        """:meth:`record_work` for every task whose workspace is still there (errors are logged);
        ``{task}`` in ``message`` is the task's name."""
        limiter = anyio.CapacityLimiter(4)

        async def one(name: str) -> None:
            async with limiter:
                try:
                    await self.record_work(name, message.replace("{task}", name))
                except VcsError as exc:
                    self.bus.log("error", f"could not commit the work of {name}: {exc}", task=name)

        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for name, info in self.tasks.items():
                    ws = info.workspace
                    if ws is not None and ws.role == "task" and ws.task in self.workspaces.live \
                            and info.status != "discarded":
                        tg.start_soon(one, name)

    # --------------------------------------------------------------------------- control
    def abort(self, name: str) -> bool:
        """Stop one agent (TERM to its process group, KILL after the grace period). A task still
        waiting to start is aborted before it starts. Returns False when there is nothing to abort."""
        info = self.tasks.get(name)
        if info is None or info.finished:
            return False
        self._abort_requested.add(name)
        proc = self._procs.get(name)
        if proc is not None:
            proc.stop("aborted")
        self.bus.log("warning", f"abort requested for {name}", task=name)
        dropped = info.drop_queued()  # stopped means stopped: what was sent to it is not delivered
        if dropped:
            self.bus.log("warning", f"{len(dropped)} queued message(s) to {name} dropped", task=name)
        return True

    def abort_all(self) -> int:
        return sum(1 for name in list(self.tasks) if self.abort(name))

    def aborted(self, name: str) -> bool:
        return name in self._abort_requested

    async def discard(self, name: str) -> bool:
        """Abort the task if it runs, then delete its workspace and its branch: its work is gone."""
        info = self.tasks.get(name)
        if info is None or info.status in ("merged", "discarded"):
            return False
        if not info.finished:
            self.abort(name)
            with anyio.move_on_after(self.options.grace + 5):
                while not info.finished:
                    await anyio.sleep(0.05)
        ws = info.workspace
        if ws is not None and ws.task in self.workspaces.live:
            await self.workspaces.remove(ws, keep_branch=False)
        elif ws is not None:
            await self.backend.delete_ref(ws.ref)
        for ref in ws.extra_refs if ws is not None else []:
            await self.backend.delete_ref(ref)
        self.set_status(name, "discarded", "discarded by the user")
        return True

    # ---------------------------------------------------------------------------- agents
    def _spec(self, spec: dict[str, Any] | Any, step: str = "") -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise TypeError(f"an agent spec is a dict, not {type(spec).__name__}")
        spec = dict(spec)
        for camel, snake in (("systemPrompt", "system_prompt"),):  # pi-factory's spelling
            if camel in spec:
                spec.setdefault(snake, spec.pop(camel))
        unknown = set(spec) - {"agent", "task", "system_prompt", "cwd", "step", "profile", "name", "timeout"}
        if unknown:
            raise ValueError(f"agent spec: unknown keys {sorted(unknown)}")
        out = spec
        profile = out.get("profile")
        if not profile:
            profile = out.get("agent")
            if profile not in self.profiles and out.get("agent") and self.options.default_agent:
                profile = self.options.default_agent
        if not profile or profile not in self.profiles:
            raise ValueError(f"agent spec: unknown agent profile {profile!r} (known: {', '.join(sorted(self.profiles))})"
                             + ("" if out.get("profile") else "; give 'profile' when 'agent' is a display name"))
        if not out.get("task"):
            raise ValueError("agent spec: 'task' (the prompt) is empty")
        if out.get("cwd") is not None:
            cwd = Path(str(out["cwd"]))
            if not cwd.is_dir():
                raise ValueError(f"agent spec: cwd {str(cwd)!r} is not a directory")
            out["cwd"] = str(cwd)
        out["profile"] = profile
        out.setdefault("agent", profile)
        # the step a call names (rt.parallel's first argument) wins over a spec's own (often an index)
        out["step"] = step or ("" if out.get("step") is None else str(out["step"]))
        if "name" not in out:
            out["name"] = self.unique_name(str(out.get("agent") or profile))
        return out

    def unique_name(self, wanted: str) -> str:
        """A task name not used yet in this run, readable: ``merger``, then ``merger-2``, ``merger-3``."""
        base = readable_name(wanted)
        if base not in self.tasks:
            return base
        n = 2
        while f"{base}-{n}" in self.tasks:
            n += 1
        return f"{base}-{n}"

    async def run_agent(self, spec: dict[str, Any], follow_up: str | None = None) -> AgentResult:
        """Run one agent to completion in ``spec['cwd']`` (it must be a workspace or a directory).
        With ``follow_up``, one more turn of the task's conversation: the message goes into the
        agent's own session; the task's cost and tokens (``info.result``) add up over its turns."""
        spec = self._spec(spec)
        name = spec["name"]
        profile = self.profiles[spec["profile"]]
        info = self.add_task(name, profile.name, spec["task"], spec.get("system_prompt", ""))
        if info.workspace is None and spec.get("cwd"):
            # an agent sent into one of the run's workspaces: its pane shows that workspace's branch
            info.workspace = self._workspace_at(str(spec["cwd"]))
        cwd = str(spec.get("cwd") or (info.workspace.path if info.workspace else self.backend.root))
        timeout = float(spec.get("timeout") or profile.timeout or 0)
        parser = make_parser(profile.format)
        parser.cwd = cwd
        start = time.monotonic()
        if self.aborted(name):
            result = AgentResult(str(spec.get("agent") or profile.name), name, None, "", Usage(), 0.0, "aborted",
                                 "aborted before start", spec.get("step", ""), cwd, profile.name)
            info.result = result
            self.set_status(name, "aborted", result.reason)
            return result

        sandbox = self.sandbox_of(name, profile)
        if sandbox.on:
            profile = profile.in_sandbox()
        if follow_up is None:
            info.spec = spec
            argv = profile.argv(prompt=spec["task"], system_prompt=spec.get("system_prompt", ""), task=name,
                                workspace=cwd, run=self.run_id)
        else:
            argv = self._follow_up_argv(info, profile, follow_up, cwd)
        info.turns += 1
        self.journal.update_task(name, turns=info.turns)  # (a turn cut short by a crash counts too)
        target = self._workspace_at(cwd)
        if target is not None and profile.exclude:  # its own state files are never committed with the work
            target.exclude = sorted(set(target.exclude) | set(profile.exclude))
            self.backend.registry.note(target.key, exclude=target.exclude)  # for a clean-up after a crash
        env = self.child_env(name, cwd, dict(profile.env))
        # no auto-gc; in a workspace of the run, git refuses to move refs that are not its own
        env.update(await agent_git_env(self.backend, self.journal.dir, cwd, self.workspaces.list(), env))
        command = self.sandboxed(argv, sandbox, cwd, env, profile.state)
        emit = self.bus.emit
        last_activity = [""]

        text_parser = parser if isinstance(parser, TextParser) else None

        def on_data(data: bytes) -> None:
            """Plain text: each read as one block of bytes, decoded and split only by whoever needs
            text or every line (the headless printer wants neither)."""
            assert text_parser is not None
            text_parser.feed_data(data)
            emit(TaskOutput(task=name, data=data))

        def on_lines(lines: list[str]) -> None:
            # structured output: line by line, so every change of activity is seen in order
            shown = []
            for line in lines:
                shown += parser.feed(line)
                if parser.activity != last_activity[0]:
                    if shown:
                        emit(TaskOutput(task=name, lines=shown))
                        shown = []
                    last_activity[0] = parser.activity
                    emit(TaskActivity(task=name, text=parser.activity))
            if shown:
                emit(TaskOutput(task=name, lines=shown))

        def on_start(pid: int) -> None:
            info.pid = pid
            self.journal.update_task(name, pid=pid, pgid=pid)

        text = text_parser is not None
        proc = Supervised(command, cwd=cwd, env=env, on_lines=None if text else on_lines,
                          on_data=on_data if text else None, log_path=self.journal.log_path(name),
                          timeout=timeout, grace=self.options.grace, on_start=on_start,
                          nice=agent_nice(max(self.agents_at_once, len(self._procs) + 1)),
                          # structured output: the parser needs whole events (a result line can be long)
                          max_line=STRUCTURED_MAX_LINE if profile.format != "text" else MAX_DISPLAY_LINE)
        self._procs[name] = proc
        info.started = time.time()
        self.set_status(name, "running")
        try:
            res = await proc.run()
        finally:
            self._procs.pop(name, None)
            info.ended = time.time()
        rest = parser.drain()
        if rest:
            emit(TaskOutput(task=name, lines=rest))
        parser.finish()
        if res.reason == "aborted" or self.aborted(name):
            status, reason = "aborted", "aborted by the user"
        elif res.reason == "timeout":
            status, reason = "failed", f"timeout after {timeout:g}s"
        elif res.reason == "error":
            problem = argv_problem(argv, env)  # "Argument list too long": say how long, and the limit
            # (a sandboxed command is started by bwrap: a start that failed was bwrap's)
            status, reason = "failed", f"could not start {reaper.program(command)}" + (f": {problem}" if problem else "")
        elif res.exit_code != 0:
            status, reason = "failed", f"exit code {res.exit_code}"
            if getattr(parser, "error", ""):
                reason += f": {getattr(parser, 'error')}"
        elif getattr(parser, "error", ""):
            status, reason = "failed", str(getattr(parser, "error"))
        else:
            status, reason = "succeeded", ""
        result = AgentResult(str(spec.get("agent") or profile.name), name, res.exit_code, parser.final_text,
                             parser.usage, time.monotonic() - start, status, reason, spec.get("step", ""), cwd,
                             profile.name, failed_edits=parser.failed_edits, edit_error=parser.edit_error)
        before = info.result
        info.result = result if follow_up is None or before is None else \
            replace(result, usage=add_usage(before.usage, result.usage), duration=before.duration + result.duration)
        info.session = parser.session_id or info.session
        total = info.result
        self.journal.update_task(name, exit_code=res.exit_code, duration=total.duration, cost=total.usage.cost,
                                 tokens=total.usage.tokens, pid=None, session=info.session, turns=info.turns)
        return result

    def _follow_up_argv(self, info: TaskInfo, profile: Profile, message: str, cwd: str) -> list[str]:
        """The command of a follow-up turn: the agent's own session resumed with ``message``; where
        its CLI cannot resume (or reported no session), a new session given the last turn's answer."""
        values = {"task": info.name, "workspace": cwd, "run": self.run_id}
        if profile.resume and (info.session or not any("{session}" in p for p in profile.resume)):
            return profile.resume_argv(prompt=message, session=info.session, **values)
        why = "cannot resume its session" if not profile.resume else "reported no session id to resume"
        self.bus.emit(TaskOutput(task=info.name, lines=[
            f"corral: {profile.name} {why}: a new session starts, given the previous turn's final text"]))
        prompt = context_prompt(info.prompt, info.result.text if info.result else "", message)
        spec = info.spec or {}
        return profile.argv(prompt=prompt, system_prompt=spec.get("system_prompt", ""), **values)

    async def settle_agent(self, result: AgentResult, message: str) -> None:
        """The one step after an agent exits, for plans and programs alike: commit what it left in
        its workspace onto its branch (every commit it made there is collected too), judge its
        edits, announce :class:`TaskFinished` and set the task's status. Work corral cannot commit,
        or conflicts left unresolved, fail the task (nothing of it is lost: the workspace stays)."""
        name = result.name
        info = self.tasks[name]
        snap = None
        problem = ""
        if info.workspace is not None:
            try:
                snap = await self._settle_work(info, message)
            except VcsError as exc:
                self.bus.log("error", f"could not commit the work of {name}: {exc}", task=name)
                problem = f"commit failed: {exc}"
            else:
                result.files = list(snap.files) if snap else []
                self.judge_edits(result, snap)
                problem = work_problem(snap) if snap is not None else ""
        snap = snap or info.snapshot
        if problem:
            result.status, result.reason = "failed", problem
        total = info.result or result  # every turn of the task's conversation
        if total is not result:
            total.status, total.reason, total.files = result.status, result.reason, result.files
        self.bus.emit(TaskFinished(task=name, status=result.status, exit_code=result.exit_code,
                                   duration=total.duration, cost=total.usage.cost,
                                   tokens=total.usage.tokens or None, files=snap.files if snap else [],
                                   added=snap.added if snap else 0, removed=snap.removed if snap else 0,
                                   commit=snap.commit if snap else "", text=result.text, reason=result.reason))
        self.set_status(name, result.status, result.reason)

    async def _settle_work(self, info: TaskInfo, message: str) -> Snapshot | None:
        """:meth:`record_work` of a task whose agent just exited; with :attr:`put_away`, its workspace
        removed in the same step once its work is all on its branch (one that cannot be removed stays:
        it is said, and the end of the run tries again)."""
        ws = info.workspace
        if ws is None or not self._may_put_away(info):
            return await self.record_work(info.name, message)
        before = info.snapshot

        def recorded(snap: Snapshot) -> bool:
            self._recorded(info, before, snap, message)
            return not work_problem(snap) and self._may_put_away(info)

        return await self.workspaces.put_away(ws, message, recorded)

    def _may_put_away(self, info: TaskInfo) -> bool:
        """Whether a task's workspace may go once its work is all on its branch (:attr:`put_away`)."""
        ws = info.workspace
        return (self.put_away and ws is not None and ws.role == "task" and ws.task == info.name
                and ws.task in self.workspaces.live and info.name not in self._procs
                and not info.queued)  # (a message queued for it: its next turn is about to start there)

    def judge_edits(self, result: AgentResult, snap: Snapshot | None) -> None:
        """An agent that says it succeeded but whose every edit failed, and that changed nothing, did
        not succeed: the task fails with the agent's own error line. Edits that failed beside ones that
        worked are said in a warning."""
        if not result.failed_edits or snap is None:
            return
        what = f"{result.failed_edits} edit(s) failed" + (f": {result.edit_error}" if result.edit_error else "")
        if result.status == "succeeded" and not snap.files:
            result.status, result.reason = "failed", f"{what}; nothing changed"
        else:
            self.bus.log("warning", f"{result.name}: {what}", task=result.name)

    def child_env(self, task: str, cwd: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a command corral runs for ``task`` in ``cwd`` (agent, setup, verify):
        corral's own, ``extra`` (a profile's), and the marks by which what it leaves running is found
        after a crash (``CORRAL_RUN``, ``CORRAL_TASK``)."""
        env = dict(os.environ if self.options.env is None else self.options.env)
        env.update(extra or {})
        env.update({"CORRAL_RUN": self.run_id, "CORRAL_TASK": task, "CORRAL_WORKSPACE": cwd})
        return env

    def sandbox_of(self, task: str, profile: Profile | None = None) -> Sandbox:
        """How the commands of ``task`` run (its agent ``profile``'s settings count); said once per
        task, in its pane and the journal."""
        sandbox = self.options.sandbox.resolve(task, profile)
        info = self.tasks.get(task)
        described = sandbox.describe()
        if info is not None and info.sandbox != described:
            info.sandbox = described
            self.journal.update_task(task, sandbox=described)
            self.bus.log("info", f"sandboxed: {described}", task=task, sandbox=described)
        return sandbox

    def sandboxed(self, argv: list[str], sandbox: Sandbox, cwd: str, env: dict[str, str],
                  state: tuple[str, ...] = (), commits: bool = True) -> list[str]:
        """``argv`` wrapped in ``sandbox`` for a command in ``cwd``: it may write the workspace it is
        in (with what a commit there needs, unless not ``commits``), a directory outside the user's
        checkout that a program sends it into, ``state`` (its agent's own, see
        :func:`.sandbox.state_paths`) and the package caches; it sees the rest read-only."""
        if not sandbox.on:
            return argv
        ws = workspace_of(cwd, self.workspaces.list())
        visible, writable = repo_paths(self.backend, ws)
        if not commits:
            writable = [Path(ws.path)] if ws else []
        if ws is None and not _within(cwd, self.backend.root):
            writable.append(Path(cwd))
        home = env.get("HOME") or os.path.expanduser("~")
        writable += state_paths((*TOOL_CACHES, *state), env)
        moved = object_binds(self.backend, ws) if commits else {}
        return sandbox.wrap(argv, cwd=cwd, visible=[*visible, Path(home)], writable=writable, moved=moved)

    def _workspace_at(self, cwd: str) -> Workspace | None:
        return workspace_of(cwd, self.workspaces.live.values(), exact=True)

    async def _run_handle(self, handle: Handle, spec: dict[str, Any]) -> None:
        try:
            try:
                result = await self.run_agent(spec)
                await self.settle_agent(result, f"corral: {result.name}\n\nrun {self.run_id}, "
                                                f"agent {result.agent} ({result.profile})")
                handle.result = result
            except BaseException as exc:
                handle.error = exc
                raise
            finally:
                handle.done.set()
            await self.converse(handle.name)
        finally:
            self.release(handle.name)

    def spawn(self, spec: dict[str, Any], step: str = "") -> Handle:
        """Start an agent now; it gets a pane. ``await rt.join(handle)`` for its result."""
        if self._tg is None:
            raise RuntimeError("rt.spawn needs a running runtime")
        spec = self._spec(spec, step)
        if spec["name"] in self.tasks:  # a name given twice: the second agent gets its own pane
            spec["name"] = self.unique_name(spec["name"])
        info = self.add_task(spec["name"], spec["profile"], spec["task"], spec.get("system_prompt", ""))
        self.set_status(info.name, "pending")
        self.hold(info.name)
        handle = Handle(spec["name"])
        self._tg.start_soon(self._run_handle, handle, spec)
        return handle

    async def join(self, handle: Handle) -> AgentResult:
        await handle.done.wait()
        if handle.error is not None:
            raise handle.error
        assert handle.result is not None
        return handle.result

    async def parallel(self, step: str, specs: list[dict[str, Any]]) -> list[AgentResult]:
        """Run every spec at once; results in the order of ``specs``."""
        handles = [self.spawn(s, step) for s in specs]
        return [await self.join(h) for h in handles]

    async def approve(self, question: str, default: bool = False) -> bool:
        """Ask the person (dashboard or terminal) or follow ``--approve``."""
        self.bus.log("info", f"approval asked: {question}")
        answer = await self.approver.ask(self, question, default)
        self.bus.log("info", f"approval {'given' if answer else 'refused'}: {question}")
        return answer

    # ----------------------------------------------------------------------- conversations
    def hold(self, name: str) -> None:
        """A flow carries on ``name``'s conversation: messages to it are queued for that flow, which
        delivers them (:meth:`converse`) after its first turn, and :meth:`release` s it."""
        self._owned.add(name)
        self._quiet = anyio.Event()

    def release(self, name: str) -> None:
        """The flow of ``name`` is over; what is still queued was never delivered (the run ended)."""
        self._owned.discard(name)
        info = self.tasks.get(name)
        if info:
            info.drop_queued()
        if not self._owned:
            self._quiet.set()

    async def quiet(self) -> None:
        """Wait until no task's conversation goes on (every follow-up turn settled)."""
        while self._owned:
            await self._quiet.wait()

    def follow_up_problem(self, name: str) -> str:
        """Why a follow-up to ``name`` cannot be sent now ("" when it can)."""
        info = self.tasks.get(name)
        if info is None:
            return f"run {self.run_id} has no task {name!r}"
        in_review = self.phase == "review" and self.review_scope is not None
        if self._tg is None or not (self.phase == "running" or in_review):
            return (f"run {self.run_id} is past its agents ({self.phase}): a follow-up now would not be reviewed"
                    if self.phase not in ("preflight", "done") else f"run {self.run_id} is not running")
        if info.spec is None and name not in self._owned:
            return f"{name} has not run an agent: there is no conversation to follow up"
        return self._turn_problem(info)

    def _turn_problem(self, info: TaskInfo) -> str:
        """Why ``info``'s agent cannot take another turn ("" when it can): checked when a message is
        sent, and again when it is delivered."""
        name = info.name
        if info.status == "discarded":
            return f"{name} was discarded: its work is gone, there is nothing to follow up"
        if info.status == "merged" or info.merged:
            return f"{name} is merged already: start a new task for more changes"
        ws = info.workspace
        if ws is not None and ws.task not in self.workspaces.created:
            return f"{name} ran in {ws.path}, which is no workspace of this run: it cannot be re-opened"
        return ""

    async def open_workspace(self, name: str) -> Workspace:
        """``name``'s workspace, re-opened from its kept branch when it was put away (a shell in it
        during the run or the review: what is edited there is committed onto the branch before the
        merge). Raises :class:`FollowUpRefused` (one line) when it cannot be."""
        info = self.tasks.get(name)
        if info is None:
            raise FollowUpRefused(f"run {self.run_id} has no task {name!r}")
        ws = info.workspace
        if ws is None or ws.task not in self.workspaces.created:
            raise FollowUpRefused(f"{name} has no workspace")
        if ws.task in self.workspaces.live:
            return ws
        problem = (self._turn_problem(info) or await self.branch_problem(name)
                   or ("" if self.phase in ("running", "review") else f"run {self.run_id} is past its review"))
        if problem:
            raise FollowUpRefused(problem)
        try:
            return await self.workspaces.reopen(ws.task)
        except VcsError as exc:
            raise FollowUpRefused(f"the workspace of {name} cannot be re-opened: {exc}") from None

    async def branch_problem(self, name: str) -> str:
        """Why ``name``'s removed workspace cannot be re-opened for a follow-up ("" when it can, or
        when it was not removed): its branch was deleted."""
        info = self.tasks.get(name)
        ws = info.workspace if info else None
        if ws is None or ws.task in self.workspaces.live or await self.backend.ref_exists(ws.ref):
            return ""
        return f"the branch {ws.ref} of {name} is gone (deleted): there is no work to re-open for a follow-up"

    def follow_up(self, target: "Handle | str", message: str) -> tuple[FollowUp, bool]:
        """Send ``message`` to a task's agent: queued while it works (delivered when its turn ends;
        the pane says so), else a new turn starts now in its workspace, resuming its own session.
        Returns the message's :class:`FollowUp` and whether it was queued. Raises
        :class:`FollowUpRefused` (one line) when it cannot be sent."""
        name = target.name if isinstance(target, Handle) else str(target)
        if not str(message).strip():
            raise FollowUpRefused("the message is empty")
        problem = self.follow_up_problem(name)
        if problem:
            raise FollowUpRefused(problem)
        item = FollowUp(str(message))
        self.tasks[name].queued.append(item)
        self._withdraw_review(f"changes requested from {name}: the review comes back when it is done")
        queued = name in self._owned
        if queued:
            first = item.message.strip().splitlines()[0]
            self.bus.emit(TaskOutput(task=name, lines=[
                f"corral: message queued, delivered when the current turn ends: {first[:120]}"]))
        else:
            assert self._tg is not None
            self.hold(name)
            self._tg.start_soon(self.carry_on, name)
        return item, queued

    def cancel_queued(self, name: str) -> int:
        """Take back the messages queued for ``name``'s agent (not delivered yet); the pane says so.
        Returns how many. Raises :class:`FollowUpRefused` (one line) when none is queued."""
        info = self.tasks.get(name)
        if info is None:
            raise FollowUpRefused(f"run {self.run_id} has no task {name!r}")
        if not info.queued:
            raise FollowUpRefused(f"no message is queued for {name}")
        items = info.drop_queued()
        self.bus.emit(TaskOutput(task=name, lines=[
            f"corral: queued message cancelled: {item.message.strip().splitlines()[0][:120]}" for item in items]))
        return len(items)

    def _withdraw_review(self, why: str) -> None:
        """A task's work changes during the review: the open review is withdrawn (the pipeline puts
        it again once every follow-up is done)."""
        if self.phase == "review" and self.review_scope is not None:
            self.bus.log("info", why)
            self.review_scope.cancel()
            self.review_scope = None

    def retry(self, name: str, prompt: str = "") -> str:
        """A new attempt of a failed or aborted task: a new task (``name-2``) from base with the same
        prompt (or ``prompt``), on a branch of its own; the old attempt and its branch stay. Returns
        the new task's name. Raises :class:`FollowUpRefused` (one line) when it cannot be retried."""
        info = self.tasks.get(name)
        if info is None:
            raise FollowUpRefused(f"run {self.run_id} has no task {name!r}")
        if info.status not in ("failed", "aborted"):
            raise FollowUpRefused(f"{name} is {info.status}: only a failed or aborted task is retried "
                                  "(send it a message instead)")
        if self.new_attempt is None:
            raise FollowUpRefused("only a plan's tasks are retried (a program starts its own agents)")
        if self._tg is None or not (self.phase == "running" or (self.phase == "review" and self.review_scope)):
            raise FollowUpRefused(f"run {self.run_id} is past its review ({self.phase}): too late for a new attempt")
        new = self.new_attempt(name, prompt)
        self.attempt_of[new] = self.attempt_of.get(name, name)
        self._withdraw_review(f"{name} retried as {new}: the review comes back when it is done")
        return new

    def attempts(self, name: str) -> builtins.list[str]:
        """Every attempt of the task ``name`` is one of (itself and its retries), oldest first."""
        first = self.attempt_of.get(name, name)
        return [first, *[new for new, old in self.attempt_of.items() if old == first]]

    async def send(self, target: "Handle | str", message: str) -> AgentResult:
        """``rt.send(handle_or_name, message)``: :meth:`follow_up`, then the new turn's result."""
        item, _ = self.follow_up(target, message)
        await item.done.wait()
        if item.result is None:
            name = target.name if isinstance(target, Handle) else str(target)
            raise RuntimeError(f"the message to {name} was not delivered (the run ended, or the task went away)")
        return item.result

    async def _reopened(self, info: TaskInfo) -> dict[str, Any] | None:
        """The spec of ``info``'s next turn: its workspace re-opened from its kept branch when it was
        removed (the agent's directory in it moves along), set up as :attr:`on_reopen` says (None:
        its setup failed)."""
        assert info.spec is not None
        old = info.workspace
        if old is None or old.task in self.workspaces.live:
            return info.spec
        ws = await self.workspaces.reopen(old.task)
        cwd = Path(str(info.spec.get("cwd") or old.path))
        inside = cwd.relative_to(old.path) if cwd.is_relative_to(old.path) else Path()
        info.spec = {**info.spec, "cwd": str(ws.path / inside)}
        self.bus.emit(TaskOutput(task=info.name, lines=[f"corral: its workspace re-opened from branch {ws.ref}: "
                                                        f"{ws.path}"]))
        if self.on_reopen is not None and ws.task == info.name and not await self.on_reopen(info.name, ws):
            return None
        return info.spec

    async def carry_on(self, name: str) -> None:
        """The turns of the messages queued for ``name`` (held by :meth:`hold`), in an agent slot
        as any agent's work; then :meth:`release`."""
        try:
            if self.slots is None:
                await self.converse(name)
            else:
                if self.slots.value == 0:
                    self.bus.emit(TaskOutput(task=name, lines=["corral: every agent slot is taken (max_parallel): "
                                                               "the message waits for one"]))
                async with self.slots:  # a turn is an agent at work: it waits for a slot as the others
                    await self.converse(name)
        finally:
            self.release(name)

    async def converse(self, name: str) -> None:
        """Deliver the messages queued for ``name``, one turn each, until none is left."""
        info = self.tasks[name]
        while info.queued:
            item = info.queued.pop(0)
            try:
                item.result = await self._turn(name, item.message)
            finally:
                item.done.set()

    async def _turn(self, name: str, message: str) -> AgentResult | None:
        """One follow-up turn: a turn boundary and the message in the pane, the agent resumed in the
        task's workspace, what it did settled onto the task's branch."""
        info = self.tasks[name]
        problem = self._turn_problem(info)
        if problem or info.spec is None:
            self.bus.log("warning", f"message to {name} not delivered: {problem or 'its agent never started'}",
                         task=name)
            return None
        self._abort_requested.discard(name)
        n = info.turns + 1
        self.bus.emit(TaskOutput(task=name, lines=["", f"──── turn {n}: follow-up message ────",
                                                   *[f"> {line}" for line in message.splitlines()], ""]))
        try:
            spec = await self._reopened(info)
        except VcsError as exc:
            self.bus.log("warning", f"message to {name} not delivered: its workspace cannot be re-opened: {exc}",
                         task=name)
            return None
        if spec is None:
            self.bus.log("warning", f"message to {name} not delivered: {info.reason}", task=name)
            return None
        result = await self.run_agent(spec, follow_up=message)
        first = message.strip().splitlines()[0][:72]
        await self.settle_agent(result, f"corral: {name}, turn {n}\n\n{first}\n\nrun {self.run_id}, "
                                        f"agent {result.agent}")
        return result
