"""The dashboard's view of a run: engine events folded into plain state, with no Textual in sight.

The Textual app subscribes a :class:`RunModel` to the engine's :class:`~corral.core.events.EventBus`;
the model keeps per-task state and per-pane line buffers, and remembers what changed since the last
flush so that one timer can update only the widgets that need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from corral.core.events import (
    FINISHED_STATUSES,
    Event,
    ForecastEvent,
    Landed,
    LogEvent,
    MergeEvent,
    PhaseChanged,
    ReviewDecision,
    RunFinished,
    RunStarted,
    TaskActivity,
    TaskFinished,
    WorkRecorded,
    TaskOutput,
    TaskStatus,
    VerifyOutput,
    VerifyResult,
)
from corral.tui.headless import work_line

#: Statuses shown on a badge, with the word shown (readable without colour).
BADGE_WORDS = {
    "pending": "PENDING",
    "creating": "CREATING",
    "setup": "SETUP",
    "running": "RUNNING",
    "succeeded": "SUCCEEDED",
    "failed": "FAILED",
    "aborted": "ABORTED",
    "rejected": "REJECTED",
    "conflict": "CONFLICT",
    "verify-failed": "VERIFY-FAILED",
    "merged": "MERGED",
    "discarded": "DISCARDED",
}

#: Most lines kept in memory per pane; the full log is on disk.
PANE_MAX_LINES = 2000


@dataclass
class TaskView:
    """What a pane shows for one task."""

    name: str
    agent: str = ""
    status: str = "pending"
    reason: str = ""
    workspace: str = ""
    #: when the workspace began to be made (setup time counts from here until the agent starts)
    prepared: float | None = None
    #: when the agent started
    started: float | None = None
    ended: float | None = None
    #: the agent's run time as the engine measured it (the report's duration), once it exited
    duration: float | None = None
    cost: float | None = None
    files: int | None = None
    added: int = 0
    removed: int = 0
    activity: str = ""
    #: how its commands run: ``bwrap (network on)``, ``none (why)`` ("" until said)
    sandbox: str = ""
    lines_total: int = 0
    #: lines dropped from ``pending`` before a flush could show them (only on disk)
    dropped: int = 0
    pending: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def agent_running(self) -> bool:
        """Whether the task's agent (or its workspace creation / setup) is still going."""
        return self.status in ("creating", "setup", "running")

    def elapsed(self, now: float) -> float | None:
        """The agent's time, the same figure as the report's duration: from its start to its exit
        (the engine's own measure once it exited); before it starts, the time its setup has taken."""
        if self.duration is not None:
            return self.duration
        start = self.started if self.started is not None else self.prepared
        if start is None:
            return None
        return max(0.0, (self.ended if self.ended is not None else now) - start)


@dataclass
class ForecastView:
    """Conflict forecast for the tasks under review."""

    files: dict[str, list[str]] = field(default_factory=dict)
    conflicts_with: dict[str, list[str]] = field(default_factory=dict)
    conflicts_with_base: dict[str, bool] = field(default_factory=dict)


class RunModel:
    """Folds the event stream into state. Call it as an EventBus subscriber; it must stay quick."""

    def __init__(self, max_lines: int = PANE_MAX_LINES) -> None:
        self.max_lines = max_lines
        self.run = ""
        self.repo = ""
        self.base = ""
        self.base_commit = ""
        self.backend = ""
        self.run_dir = ""
        self.phase = "preflight"
        self.started: float | None = None
        self.ended: float | None = None
        self.tasks: dict[str, TaskView] = {}
        self.order: list[str] = []
        self.log_pending: list[str] = []
        self.verify_pending: list[str] = []
        self.verify_started = False
        self.verify_result: VerifyResult | None = None
        self.landed: Landed | None = None
        self.finished: RunFinished | None = None
        self.forecast = ForecastView()
        self.decisions: dict[str, bool] = {}
        #: names of tasks whose pane header changed since the last flush; "" means the run header
        self.dirty: set[str] = set()
        self.new_tasks: list[str] = []
        #: tasks shown before the run said them (:meth:`expect`), and those the run turned out not
        #: to have (their panes go at the next flush)
        self.expected: set[str] = set()
        self.gone_tasks: list[str] = []
        #: called for events worth a notification: (title, message, severity)
        self.on_notify: Callable[[str, str, str], None] | None = None

    # ------------------------------------------------------------------------------ helpers
    def task(self, name: str, agent: str = "") -> TaskView:
        view = self.tasks.get(name)
        if view is None:
            view = TaskView(name=name, agent=agent)
            self.tasks[name] = view
            self.order.append(name)
            self.new_tasks.append(name)
            self.dirty.add("")
        elif agent and not view.agent:
            view.agent = agent
        return view

    def expect(self, tasks: Iterable[tuple[str, str]]) -> None:
        """The tasks (name, agent) of the plan a run is being started from, shown pending at once:
        their panes are drawn with the screen, not once the run's first events come (from a
        supervisor busy starting them). The run's start says its own tasks, and replaces these."""
        for name, agent in tasks:
            if name not in self.tasks:
                self.task(name, agent)
                self.expected.add(name)

    @property
    def total(self) -> int:
        return len(self.order)

    @property
    def done_count(self) -> int:
        return sum(1 for t in self.tasks.values() if t.finished)

    @property
    def total_cost(self) -> float | None:
        costs = [t.cost for t in self.tasks.values() if t.cost is not None]
        return sum(costs) if costs else None

    @property
    def agents_running(self) -> bool:
        return any(t.agent_running or t.status == "pending" for t in self.tasks.values()) and self.finished is None

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return max(0.0, (self.ended if self.ended is not None else now) - self.started)

    def _log(self, text: str) -> None:
        self.log_pending.append(text)
        if len(self.log_pending) > self.max_lines:
            del self.log_pending[: len(self.log_pending) - self.max_lines]

    def _notify(self, title: str, message: str, severity: str = "information") -> None:
        if self.on_notify is not None:
            self.on_notify(title, message, severity)

    # ------------------------------------------------------------------------------- events
    def __call__(self, ev: Event) -> None:
        if isinstance(ev, TaskOutput):
            view = self.tasks.get(ev.task) or self.task(ev.task)
            buf = view.pending
            lines = ev.all_lines()
            if ev.stream == "agent":
                buf.extend(lines)
            else:
                buf.extend(f"[{ev.stream}] {line}" for line in lines)
            view.lines_total += len(lines)
            if len(buf) > self.max_lines:
                view.dropped += len(buf) - self.max_lines
                del buf[: len(buf) - self.max_lines]
            return
        if isinstance(ev, VerifyOutput):
            self.verify_started = True
            self.verify_pending.extend(ev.all_lines())
            if len(self.verify_pending) > self.max_lines:
                del self.verify_pending[: len(self.verify_pending) - self.max_lines]
            return
        if isinstance(ev, TaskActivity):
            view = self.task(ev.task)
            view.activity = ev.text
            self.dirty.add(ev.task)
            return
        if isinstance(ev, RunStarted):
            self.run, self.repo, self.base, self.base_commit = ev.run, ev.repo, ev.base, ev.base_commit
            self.backend, self.run_dir, self.started = ev.backend, ev.run_dir, ev.ts
            for name in self.expected - set(ev.tasks):  # expected, but not in the run after all
                del self.tasks[name]
                self.order.remove(name)
                if name in self.new_tasks:
                    self.new_tasks.remove(name)
                else:
                    self.gone_tasks.append(name)
            self.expected.clear()
            for name in ev.tasks:
                self.task(name, ev.agents.get(name, ""))
            self.dirty.add("")
            self._log(f"run {ev.run} started: {len(ev.tasks)} task(s) on {ev.base} ({ev.backend})")
            return
        if isinstance(ev, PhaseChanged):
            self.phase = ev.phase
            self.dirty.add("")
            if ev.phase not in ("report", "done"):
                self._log(f"phase: {ev.phase}")
            return
        if isinstance(ev, TaskStatus):
            self._on_status(ev)
            return
        if isinstance(ev, TaskFinished):
            view = self.task(ev.task)
            view.duration = ev.duration
            view.cost = ev.cost
            view.files = len(ev.files)
            view.added, view.removed = ev.added, ev.removed
            self.dirty.update((ev.task, ""))
            cost = f", cost ${ev.cost:.4f}" if ev.cost is not None else ""
            self._log(f"{ev.task}: agent exited ({ev.exit_code}) after {ev.duration:.1f}s{cost}; "
                      f"{len(ev.files)} file(s) changed (+{ev.added} -{ev.removed})")
            return
        if isinstance(ev, WorkRecorded):
            view = self.task(ev.task)
            view.files = len(ev.files)
            view.added, view.removed = ev.added, ev.removed
            self.dirty.update((ev.task, ""))
            self._log(work_line(ev))
            return
        if isinstance(ev, ForecastEvent):
            self.forecast.files[ev.task] = list(ev.files)
            self.forecast.conflicts_with[ev.task] = list(ev.conflicts_with)
            self.forecast.conflicts_with_base[ev.task] = ev.conflicts_with_base
            clash = ev.conflicts_with + (["base"] if ev.conflicts_with_base else [])
            parts = [f"would conflict with {', '.join(clash)}"] if clash else []
            if ev.untried_with:
                parts.append(f"not trial-merged with {len(ev.untried_with)} task(s) touching the same files")
            self._log(f"forecast {ev.task}: " + ("; ".join(parts) or "merges cleanly"))
            return
        if isinstance(ev, ReviewDecision):
            self.decisions[ev.task] = ev.approved
            self._log(f"{ev.task}: {'approved' if ev.approved else 'not approved'}")
            return
        if isinstance(ev, MergeEvent):
            self._log(f"merged {ev.task}" if ev.ok else
                      f"{ev.task}: CONFLICT in {', '.join(ev.conflict_files)}; left out")
            return
        if isinstance(ev, VerifyResult):
            self.verify_result = ev
            self.dirty.add("")
            self._log(f"verify {'passed' if ev.ok else 'FAILED'} (exit {ev.exit_code}, {ev.duration:.1f}s)")
            self._notify("verify", f"verify {'passed' if ev.ok else 'FAILED'}", "information" if ev.ok else "error")
            return
        if isinstance(ev, Landed):
            self.landed = ev
            if ev.ok and ev.new:
                self.base_commit = ev.new  # the base is where the run left it
                self.dirty.add("")
            self._log(("landed: " if ev.ok else "not landed: ") + ev.message)
            return
        if isinstance(ev, LogEvent):
            if ev.level == "debug":
                return
            if ev.task and "sandbox" in ev.data:
                self.task(ev.task).sandbox = str(ev.data["sandbox"])
                self.dirty.add(ev.task)
            prefix = f"{ev.task}: " if ev.task else ""
            level = "" if ev.level == "info" else f"{ev.level}: "
            self._log(f"{level}{prefix}{ev.message}")
            return
        if isinstance(ev, RunFinished):
            self.finished = ev
            self.ended = ev.ts
            self.dirty.add("")
            self._log(f"run {ev.state} (exit {ev.exit_code}); report: {ev.report}")
            self._notify("run finished", f"run {ev.state} (exit code {ev.exit_code})",
                         "information" if ev.exit_code == 0 else "warning")
            return

    def _on_status(self, ev: TaskStatus) -> None:
        view = self.task(ev.task)
        old = view.status
        view.status, view.reason = ev.status, ev.reason
        if ev.workspace:
            view.workspace = ev.workspace
        if ev.status in ("creating", "setup") and view.prepared is None:
            view.prepared = ev.ts
        if ev.status == "running" and view.started is None:
            view.started = ev.ts
        if ev.status in FINISHED_STATUSES and view.ended is None and (view.started or view.prepared) is not None:
            view.ended = ev.ts
        self.dirty.update((ev.task, ""))
        if old == ev.status:
            return
        reason = f" ({ev.reason})" if ev.reason else ""
        self._log(f"{ev.task}: {ev.status}{reason}")
        if old in ("creating", "setup", "running", "pending"):
            if ev.status == "succeeded":
                self._notify(ev.task, "agent finished", "information")
            elif ev.status in ("failed", "aborted"):
                self._notify(ev.task, f"{ev.status}{reason}", "error" if ev.status == "failed" else "warning")
