"""Typed events the engine emits while a run goes on.

Every renderer (the headless line printer, the JSON printer, the Textual dashboard, the journal's
``events.jsonl``) consumes the same stream of these dataclasses through an :class:`EventBus`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, AnyStr, Callable, ClassVar

#: Every status a task can be in, in the order a task normally passes through them.
TASK_STATUSES = (
    "pending",
    "creating",
    "setup",
    "running",
    "succeeded",
    "failed",
    "aborted",
    "rejected",
    "conflict",
    "verify-failed",
    "merged",
    "discarded",
)
#: Statuses after which the task's agent is no longer running.
FINISHED_STATUSES = frozenset({"succeeded", "failed", "aborted", "rejected", "conflict", "verify-failed", "merged",
                               "discarded"})
#: Statuses that make a run's exit code 1: work that was meant to land and did not.
BAD_STATUSES = frozenset({"failed", "aborted", "conflict", "verify-failed"})

PHASES = ("preflight", "creating", "setup", "running", "review", "merging", "verify", "landing", "report", "cleanup", "done")


@dataclass(kw_only=True)
class Event:
    """Base of every event: which run, and when."""

    TYPE: ClassVar[str] = "event"
    run: str = ""
    ts: float = field(default_factory=time.time)

    @property
    def type(self) -> str:
        return self.TYPE

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data. Fields of plain types (strings, numbers, lists of lines)
        are copied shallowly: ``dataclasses.asdict`` visits every line of a ``task_output`` one by
        one, which was a third of what the supervisor spent streaming a flood to a client."""
        data: dict[str, Any] = {"type": self.TYPE}
        for name, shallow in _fields_of(type(self)):
            value = getattr(self, name)
            data[name] = (list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict)
                          else value) if shallow else _plain(value)
        return data


#: Field annotations whose values are JSON-ready as they are (a list or dict of them is copied once).
_PLAIN_TYPES = frozenset({"str", "int", "float", "bool", "str | None", "int | None", "float | None", "bool | None",
                          "list[str]", "dict[str, str]", "dict[str, list[str]]"})
_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _fields_of(cls: type) -> tuple[tuple[str, bool], ...]:
    """(name, copied shallowly) of each field of an event class, worked out once per class."""
    known = _FIELDS.get(cls)
    if known is None:
        known = _FIELDS[cls] = tuple((f.name, str(f.type) in _PLAIN_TYPES) for f in dataclasses.fields(cls))
    return known


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data, as ``dataclasses.asdict`` makes it (dataclasses inside too)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(kw_only=True)
class RunStarted(Event):
    TYPE: ClassVar[str] = "run_started"
    repo: str
    base: str
    base_commit: str
    backend: str
    run_dir: str
    tasks: list[str]
    agents: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class PhaseChanged(Event):
    TYPE: ClassVar[str] = "phase"
    phase: str


@dataclass(kw_only=True)
class TaskStatus(Event):
    """A task moved to another status (see :data:`TASK_STATUSES`)."""

    TYPE: ClassVar[str] = "task_status"
    task: str
    status: str
    reason: str = ""
    workspace: str = ""
    branch: str = ""


def _tail_start(block: AnyStr, newline: AnyStr, n: int) -> int:
    """Where the last ``n`` lines of ``block`` (lines each ending with ``newline``) begin."""
    start = len(block) - 1
    for _ in range(n):
        start = block.rfind(newline, 0, start)
        if start < 0:
            break
    return start + 1


def tail_lines(text: str, n: int) -> list[str]:
    """The last ``n`` lines of ``text`` (lines each ending with a newline): only they are split
    off, the rest of a flood's block is neither copied nor split."""
    if n <= 0 or not text:
        return []
    return text[_tail_start(text, "\n", n) : -1].split("\n")


def tail_of(data: bytes, n: int) -> list[str]:
    """:func:`tail_lines` of a block of UTF-8 bytes: only the last ``n`` lines are decoded."""
    if n <= 0 or not data:
        return []
    return data[_tail_start(data, b"\n", n) : -1].decode("utf-8", "replace").split("\n")


@dataclass(kw_only=True)
class Output(Event):
    """Lines of output, in batches (one per read from the pipe) so that chatty programs cost one
    event per chunk, not one per line. A text agent's come as one block, each line ending with a
    newline (``lines`` is then empty), split only by whoever needs every line, so a flood is not cut
    into a string per line on its way to a pane that shows the newest few: as ``data``, its UTF-8
    bytes as read (cleaned where they needed it), decoded to ``text`` only by whoever needs text
    (the headless printer and the log want bytes), or as ``text``."""

    lines: list[str] = field(default_factory=list)
    text: str = ""
    data: bytes = b""

    def all_lines(self) -> list[str]:
        if self.text or self.data:
            return self.block()[:-1].split("\n")
        return self.lines

    def last_lines(self, n: int) -> list[str]:
        """The newest ``n`` lines (a split, and a decode, of only that much of the block)."""
        if n <= 0:
            return []
        if self.text:
            return tail_lines(self.text, n)
        return tail_of(self.data, n) if self.data else self.lines[-n:]

    def line_count(self) -> int:
        if self.text:
            return self.text.count("\n")
        return self.data.count(b"\n") if self.data else len(self.lines)

    def block(self) -> str:
        """The lines as one block, each ending with a newline ("" for none); ``data`` is decoded
        once, on the first call."""
        if self.data and not self.text:
            self.text = self.data.decode("utf-8", "replace")
        return self.text or "".join(line + "\n" for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`Event.to_dict` makes it, the bytes as ``text`` (JSON has no bytes)."""
        out = super().to_dict()
        if out.pop("data"):
            out["text"] = self.block()
        return out


@dataclass(kw_only=True)
class TaskOutput(Output):
    """Lines of an agent's (or its setup's) output, already made readable by its parser. JSON
    renderers print one ``output`` object per line."""

    TYPE: ClassVar[str] = "output"
    task: str
    stream: str = "agent"  # agent | setup


@dataclass(kw_only=True)
class TaskActivity(Event):
    """What the agent says it is doing now (from structured output), for the pane's status line."""

    TYPE: ClassVar[str] = "activity"
    task: str
    text: str


@dataclass(kw_only=True)
class TaskFinished(Event):
    """An agent exited and its work was committed onto its branch."""

    TYPE: ClassVar[str] = "task_finished"
    task: str
    status: str
    exit_code: int | None
    duration: float
    cost: float | None = None
    tokens: int | None = None
    files: list[str] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    commit: str = ""
    text: str = ""
    reason: str = ""


@dataclass(kw_only=True)
class WorkRecorded(Event):
    """A task's work changed after its agent exited: edits made by hand in its workspace committed,
    or what a stopped task left salvaged. ``files``/``added``/``removed`` are its whole work now."""

    TYPE: ClassVar[str] = "work_recorded"
    task: str
    commit: str
    files: list[str] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    #: refs holding other commits made in the workspace (kept, not merged)
    extra_refs: list[str] = field(default_factory=list)
    #: changes still in the workspace that could not be committed
    uncommitted: list[str] = field(default_factory=list)
    note: str = ""


@dataclass(kw_only=True)
class ForecastEvent(Event):
    """Predicted merge outcome of one succeeded task against base and every other task."""

    TYPE: ClassVar[str] = "forecast"
    task: str
    files: list[str]
    conflicts_with: list[str]
    conflicts_with_base: bool
    conflict_files: dict[str, list[str]] = field(default_factory=dict)
    #: tasks touching the same files that were not trial-merged with it (too many tasks share them)
    untried_with: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ReviewDecision(Event):
    TYPE: ClassVar[str] = "review"
    task: str
    approved: bool
    by: str = "policy"


@dataclass(kw_only=True)
class MergeEvent(Event):
    """The outcome of merging one approved task into the integration workspace."""

    TYPE: ClassVar[str] = "merge"
    task: str
    ok: bool
    strategy: str
    commit: str = ""
    conflict_files: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class VerifyOutput(Output):
    """Lines of the verify command's output (batched like :class:`TaskOutput`)."""

    TYPE: ClassVar[str] = "verify_output"


@dataclass(kw_only=True)
class VerifyResult(Event):
    TYPE: ClassVar[str] = "verify"
    ok: bool
    exit_code: int | None
    command: str
    duration: float
    #: the tasks whose merge it verified (a bisected merge verifies several subsets of them)
    tasks: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Landed(Event):
    TYPE: ClassVar[str] = "land"
    ok: bool
    base: str
    old: str = ""
    new: str = ""
    message: str = ""
    kept: str = ""  # integration branch kept when landing did not happen


@dataclass(kw_only=True)
class LogEvent(Event):
    """An engine message or an ``rt.observe.log`` call."""

    TYPE: ClassVar[str] = "log"
    level: str
    message: str
    task: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class RunFinished(Event):
    TYPE: ClassVar[str] = "run_finished"
    exit_code: int
    state: str
    report: str = ""
    kept_branches: list[str] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    cost: float | None = None
    tokens: int | None = None  # total over the tasks, where agents report tokens


@dataclass(kw_only=True)
class ProgramResult(Event):
    """What a program's ``run(input, rt)`` returned (stored as ``result.json`` in the run folder)."""

    TYPE: ClassVar[str] = "program_result"
    value: Any = None
    path: str = ""


@dataclass(kw_only=True)
class DecisionNeeded(Event):
    """The run waits for a person: the review (``kind="review"``), landing (``"land"``) or a
    program's question (``"ask"``). Any client may answer it, once (see :class:`DecisionMade`);
    until then the run waits, however long, whether anyone watches or not."""

    TYPE: ClassVar[str] = "decision_needed"
    id: int
    kind: str
    #: review: one row per task (name, status, agent, added, removed, files, candidate)
    items: list[dict[str, Any]] = field(default_factory=list)
    #: review: the conflict forecast (files, conflicts as [a, b, paths], crowded, trials)
    forecast: dict[str, Any] = field(default_factory=dict)
    #: land: what lands; ask: the question
    message: str = ""
    base: str = ""
    default: bool = False


@dataclass(kw_only=True)
class DecisionMade(Event):
    """A decision was taken (by a client, or by the run ending first: ``by="run"``)."""

    TYPE: ClassVar[str] = "decision_made"
    id: int
    kind: str
    answer: Any = None
    by: str = ""


def wire_dict(ev: Event) -> dict[str, Any]:
    """``ev.to_dict()`` as it leaves the process (the socket, ``--json``): a block of output is its
    lines there (``"lines": [...]``), as every client reads them."""
    data = ev.to_dict()
    if isinstance(ev, Output) and data.pop("text"):
        data["lines"] = ev.all_lines()
    return data


#: every event type by its ``type`` field, for turning JSON back into events
EVENT_TYPES: dict[str, type[Event]] = {}


def _register() -> None:
    stack = list(Event.__subclasses__())
    while stack:
        cls = stack.pop()
        EVENT_TYPES[cls.TYPE] = cls
        stack.extend(cls.__subclasses__())


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """The event ``data`` (as :meth:`Event.to_dict` made it) stands for; None for an unknown type
    (a newer peer's), which a reader skips."""
    if not EVENT_TYPES:
        _register()
    cls = EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


Subscriber = Callable[[Event], None]


class EventBus:
    """Fans events out to subscribers, synchronously and in order.

    Subscribers must be quick (append to a buffer, write a line); a subscriber that raises is
    dropped from nothing and never stops the run: its error is reported once on stderr.
    """

    def __init__(self, run: str = "") -> None:
        self.run = run
        self._subscribers: list[Subscriber] = []
        self._broken: set[int] = set()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def emit(self, event: Event) -> Event:
        if not event.run:
            event.run = self.run
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception as exc:  # a renderer bug must not break the run
                if id(fn) not in self._broken:
                    self._broken.add(id(fn))
                    import sys

                    print(f"corral: event subscriber {fn!r} failed: {exc!r}", file=sys.stderr)
        return event

    def log(self, level: str, message: str, task: str | None = None, **data: Any) -> None:
        self.emit(LogEvent(level=level, message=message, task=task, data=data))
