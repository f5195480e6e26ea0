"""One run, hosted: its engine, its decisions, and what a client attaching late needs.

A :class:`RunHost` runs a plan's pipeline or a program, and is the only thing that talks to its
runtime. Clients (the dashboard, the headless renderer, ``corral attach``) get the run's events
through a :class:`Feed` each and act through :meth:`RunHost.command`, whether they share the host's
process or reach it through the supervisor's socket. A decision (review, land, a program's question)
is an event every client sees (:class:`~corral.core.events.DecisionNeeded`); the first answer
decides, a second is refused, and the run waits, however long, until one comes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import anyio

from ..codes import EXIT_INTERRUPTED
from ..events import (
    DecisionMade,
    DecisionNeeded,
    Event,
    EventBus,
    Output,
    RunFinished,
    TaskActivity,
    TaskOutput,
    VerifyOutput,
)
from ..runtime import FollowUpRefused, PolicyApprover, Runtime, TaskInfo
from ..vcs.base import Forecast, VcsError

#: lines of each pane a late client is given (the whole log stays on disk)
DEFAULT_TAIL = 2000

#: ``body(approver, bus, on_runtime)``: the run itself (a plan's pipeline, or a program)
Body = Callable[[Any, EventBus, Callable[[Runtime], None]], Awaitable[Any]]


class CommandError(Exception):
    """A command that cannot be carried out; its message is one line for the client."""


def forecast_to_dict(forecast: Forecast) -> dict[str, Any]:
    return {"files": forecast.files, "conflicts": [[a, b, paths] for (a, b), paths in forecast.conflicts.items()],
            "crowded": forecast.crowded, "trials": forecast.trials}


def forecast_from_dict(data: dict[str, Any]) -> Forecast:
    return Forecast(files={k: list(v) for k, v in (data.get("files") or {}).items()},
                    conflicts={(a, b): list(paths) for a, b, paths in data.get("conflicts") or []},
                    crowded={k: list(v) for k, v in (data.get("crowded") or {}).items()},
                    trials=int(data.get("trials") or 0))


def review_items(rt: Runtime, candidates: list[TaskInfo]) -> list[dict[str, Any]]:
    """One row per task for the review: every task, the candidates marked."""
    names = {c.name for c in candidates}
    rows = []
    for t in rt.tasks.values():
        snap = t.snapshot
        rows.append({"name": t.name, "status": t.status, "agent": t.agent,
                     "added": snap.added if snap else 0, "removed": snap.removed if snap else 0,
                     "files": list(snap.files) if snap else [],
                     "candidate": t.name in names,
                     "attempts": [a for a in rt.attempts(t.name) if a != t.name and a in names]})
    return rows


def _output_key(ev: Event) -> tuple[str, str, str] | None:
    if isinstance(ev, TaskOutput):
        return ("output", ev.task, ev.stream)
    if isinstance(ev, VerifyOutput):
        return ("verify_output", "", "")
    return None


def _output_event(key: tuple[str, str, str], lines: list[str], run: str, text: str = "", data: bytes = b"") -> Event:
    if key[0] == "verify_output":
        return VerifyOutput(run=run, lines=lines, text=text, data=data)
    return TaskOutput(run=run, task=key[1], lines=lines, text=text, data=data, stream=key[2])


class _Tail:
    """The newest ``n`` lines of one output (a pane's), kept as the blocks they came in: they are
    split only when a client attaches, and counted only from the newest back when old blocks may
    go (once twice as much as is kept came), so most of a flood is neither split nor counted."""

    def __init__(self, n: int) -> None:
        self.n = n
        #: [block, its lines (-1: not counted yet)]
        self._blocks: deque[list[Any]] = deque()
        self._chars = 0
        self._look_at = 0

    def add(self, block: str) -> None:
        if not block:
            return
        self._blocks.append([block, -1])
        self._chars += len(block)
        if self._chars > self._look_at:
            self._trim()

    def _trim(self) -> None:
        lines = chars = keep = 0
        for entry in reversed(self._blocks):
            if entry[1] < 0:
                entry[1] = entry[0].count("\n")
            lines, chars, keep = lines + entry[1], chars + len(entry[0]), keep + 1
            if lines >= self.n:
                break
        for _ in range(len(self._blocks) - keep):
            self._blocks.popleft()
        self._chars, self._look_at = chars, 3 * chars

    def lines(self) -> list[str]:
        text = "".join(block for block, _ in self._blocks)
        return text[:-1].split("\n")[-self.n:] if text and self.n else []


def _joined(key: tuple[str, str, str], events: list[Output], run: str) -> Event:
    """Output events of one pane as one: their lines, or one block when any came as a block (of
    bytes when all came so: nothing is decoded on the way)."""
    if len(events) == 1:
        return events[0]
    if all(ev.data and not ev.text for ev in events):
        return _output_event(key, [], run, data=b"".join(ev.data for ev in events))
    if any(ev.text or ev.data for ev in events):
        return _output_event(key, [], run, "".join(ev.block() for ev in events))
    return _output_event(key, [line for ev in events for line in ev.lines], run)


class Feed:
    """What one client is sent, in order. While the client keeps up, every event; when it falls
    behind, each pane's output is cut to its newest ``tail`` lines (with a line saying how many
    were skipped: the log on disk has them) so that a slow client never holds up the run, nor
    grows without bound."""

    def __init__(self, run: str, tail: int | None, pace: float = 0.0) -> None:
        self.run = run
        #: None: nothing is cut (a client that must see every line)
        self.tail = None if tail is None else max(1, tail)
        #: a view that repaints every ``pace`` seconds gets output at most that often: a flood then
        #: reaches it as a few batches cut to their tails, not as every line (nothing else waits)
        self.pace = max(0.0, pace)
        self._last_take = 0.0
        self._items: deque[Event] = deque()
        #: per output: its lines (cut to ``tail``), or with no tail its events
        self._out: dict[tuple[str, str, str], list[Any]] = {}
        self._skipped: dict[tuple[str, str, str], int] = {}
        self._wake = anyio.Event()
        #: the run's exit code once it ended (the last thing a feed says)
        self.ended: int | None = None
        self.closed = False

    def push(self, ev: Event) -> None:
        key = _output_key(ev)
        if key is not None:
            assert isinstance(ev, Output)
            buf = self._out.setdefault(key, [])
            if self.tail is None:
                if ev.lines or ev.text or ev.data:
                    buf.append(ev)  # every line, joined when taken (a block of text stays one)
            else:
                lines = ev.last_lines(self.tail)
                buf.extend(lines)
                over = max(0, len(buf) - self.tail)
                del buf[:over]
                over += ev.line_count() - len(lines)
                if over > 0:
                    self._skipped[key] = self._skipped.get(key, 0) + over
        else:
            self._flush_output()
            last = self._items[-1] if self._items else None
            if (isinstance(ev, TaskActivity) and isinstance(last, TaskActivity) and last.task == ev.task):
                self._items[-1] = ev  # only the newest of what an agent says it is doing
            else:
                self._items.append(ev)
        self._wake.set()

    def end(self, exit_code: int) -> None:
        self.ended = exit_code
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def _flush_output(self) -> None:
        for key, pending in self._out.items():
            if self.tail is None:
                if pending:
                    self._items.append(_joined(key, pending, self.run))
                continue
            skipped = self._skipped.pop(key, 0)
            if skipped:
                pending = [f"[corral: {skipped} line(s) not shown here; the log on disk has them]", *pending]
            if pending:
                self._items.append(_output_event(key, pending, self.run))
        self._out.clear()

    async def take(self) -> list[Event]:
        """The events since the last call (waits for at least one, or for the end)."""
        while not self._items and not self._out and self.ended is None and not self.closed:
            await self._wake.wait()
            self._wake = anyio.Event()
        wait = self._last_take + self.pace - anyio.current_time()
        if wait > 0:
            # only output waits (anything else, or the end, goes at once): let more come
            with anyio.move_on_after(wait):
                while not self._items and self.ended is None and not self.closed:
                    await self._wake.wait()
                    self._wake = anyio.Event()
        self._flush_output()
        items = list(self._items)
        self._items.clear()
        self._last_take = anyio.current_time()
        return items


@dataclass
class _Decision:
    event: DecisionNeeded
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: Any = None
    by: str = ""


class HostApprover:
    """Decisions put to whoever is attached, now or later (``--approve ask``)."""

    def __init__(self, host: "RunHost") -> None:
        self.host = host

    async def review(self, rt: Runtime, candidates: list[TaskInfo], forecast: Forecast) -> dict[str, bool]:
        names = {c.name for c in candidates}
        answer = await self.host.decision("review", items=review_items(rt, candidates),
                                          forecast=forecast_to_dict(forecast), base=rt.base_name)
        if not isinstance(answer, dict):
            return {}
        return {str(k): bool(v) for k, v in answer.items() if k in names}

    async def confirm_land(self, rt: Runtime, message: str) -> bool:
        return bool(await self.host.decision("land", message=message, base=rt.base_name))

    async def ask(self, rt: Runtime, question: str, default: bool) -> bool:
        return bool(await self.host.decision("ask", message=question, default=default))

    async def choose_conflict(self, rt: Runtime, conflicts: list[str], question: str) -> str:
        """The review again, the conflicting tasks marked: the answer names the one to resolve now
        (``{"resolve": TASK}``), or none (go on without them)."""
        answer = await self.host.decision("conflicts", items=review_items(rt, []), message=question,
                                          base=rt.base_name)
        name = answer.get("resolve") if isinstance(answer, dict) else None
        return str(name) if name in conflicts else ""


class RunHost:
    """Hosts one run. ``approve`` is the ``--approve`` mode: ``ask`` puts decisions to clients;
    ``all``/``none`` decide by policy; an ``approver`` given replaces both (a terminal's). ``tail``:
    the lines of each pane kept for a client attaching late (0: none can, nothing is kept)."""

    def __init__(self, run_id: str, *, approve: str = "ask", approver: Any = None,
                 notify: list[str] | None = None, notify_env: dict[str, str] | None = None,
                 tail: int = DEFAULT_TAIL) -> None:
        self.run_id = run_id
        self.bus = EventBus(run_id)
        self.approve = approve
        if approver is None:
            approver = PolicyApprover(approve == "all") if approve in ("all", "none") else HostApprover(self)
        self.approver = approver
        self.notify = notify
        self.notify_env = notify_env
        self.tail = tail
        self.rt: Runtime | None = None
        self.started_at: float | None = None
        #: every event but output and activity, in order: a late client replays them
        self._history: list[Event] = []
        self._tails: dict[tuple[str, str, str], _Tail] = {}
        self._activity: dict[str, TaskActivity] = {}
        self._feeds: list[Feed] = []
        self._decisions: dict[int, _Decision] = {}
        self._next_decision = 1
        self._busy: set[tuple[str, str]] = set()
        self._scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.exit_code: int | None = None
        self.state = "starting"
        self.report = ""
        self.bus.subscribe(self._record)

    # ------------------------------------------------------------------------------- running
    async def run(self, body: Body) -> int:
        """Run ``body`` to its end (or until :meth:`stop`); returns the exit code."""
        import time

        self.started_at = time.time()
        self.state = "running"
        code = 1
        try:
            with self._scope:
                result = await body(self.approver, self.bus, self._on_runtime)
                code = result if isinstance(result, int) else int(getattr(result, "exit_code", 1))
                self.report = str(getattr(result, "report", "") or self.report)
            if self._scope.cancelled_caught:
                code = EXIT_INTERRUPTED
        except anyio.get_cancelled_exc_class():
            code = EXIT_INTERRUPTED  # cancelled from outside (its process is ending): cleanup ran
            raise
        except Exception as exc:  # an engine bug: the clients hear of it, the run ends
            import traceback

            code = 1
            self.bus.log("error", f"the run stopped on an internal error: {exc!r}")
            traceback.print_exc()  # (the supervisor's log, or a headless run's stderr)
        finally:
            self.exit_code = code
            self.state = "ended"
            for d in list(self._decisions.values()):
                if not d.done.is_set():
                    self._settle(d, None, "run")
            for feed in self._feeds:
                feed.end(code)
            self.done.set()
        return code

    def stop(self) -> bool:
        """Stop the run: every agent (TERM, then KILL), then its cleanup, as Ctrl-C does."""
        if self.done.is_set():
            return False
        self._scope.cancel()
        return True

    @property
    def live(self) -> bool:
        return not self.done.is_set()

    def waiting_for(self) -> str:
        """The kind of decision the run waits for ("review", "land", "ask"), or ""."""
        open_ = [d.event.kind for d in self._decisions.values() if not d.done.is_set()]
        return open_[0] if open_ else ""

    def _on_runtime(self, rt: Runtime) -> None:
        self.rt = rt

    # ------------------------------------------------------------------------------- history
    def _record(self, ev: Event) -> None:
        key = _output_key(ev)
        if key is not None:
            assert isinstance(ev, Output)
            if self.tail:
                tail = self._tails.get(key)
                if tail is None:
                    tail = self._tails[key] = _Tail(self.tail)
                tail.add(ev.block())
        elif isinstance(ev, TaskActivity):
            self._activity[ev.task] = ev
        else:
            self._history.append(ev)
            if isinstance(ev, RunFinished):
                self.report = ev.report
            if self.notify and (isinstance(ev, DecisionNeeded) or isinstance(ev, RunFinished)):
                self._run_notify(ev)
        for feed in self._feeds:
            feed.push(ev)

    def snapshot(self, tail: int | None = None) -> list[Event]:
        """The run so far as events: a client that applies them is where one that watched all
        along is (each pane holding its last ``tail`` lines)."""
        n = self.tail if tail is None else max(0, min(tail, self.tail))
        events = list(self._history)
        if n:
            for key, lines in self._tails.items():
                kept = lines.lines()[-n:]
                if kept:
                    events.append(_output_event(key, kept, self.run_id))
        events.extend(self._activity.values())
        return events

    def attach(self, tail: int | None = None, lossless: bool = False, pace: float = 0.0,
               batch_tail: int | None = None) -> tuple[list[Event], Feed]:
        """The snapshot (each pane's last ``tail`` lines) and a feed of everything after it (nothing
        lost or repeated between them; with ``lossless``, no output is ever cut from the feed). A view
        that repaints every ``pace`` seconds and shows at most ``batch_tail`` lines of a pane at a
        time gets output that often, each pane's cut to that many (the log on disk has them all)."""
        cut = batch_tail if batch_tail is not None else self.tail if tail is None else tail
        feed = Feed(self.run_id, None if lossless else max(1, cut), pace=0.0 if lossless else pace)
        if self.exit_code is not None:
            feed.end(self.exit_code)
        self._feeds.append(feed)
        return self.snapshot(tail), feed

    def detach(self, feed: Feed) -> None:
        feed.close()
        if feed in self._feeds:
            self._feeds.remove(feed)

    @property
    def clients(self) -> int:
        return len(self._feeds)

    # ----------------------------------------------------------------------------- decisions
    async def decision(self, kind: str, **fields: Any) -> Any:
        """Put a decision to the clients and wait for the first answer (None if the run ends)."""
        did = self._next_decision
        self._next_decision += 1
        ev = DecisionNeeded(id=did, kind=kind, **fields)
        d = self._decisions[did] = _Decision(ev)
        self.bus.emit(ev)
        try:
            await d.done.wait()
        finally:
            if not d.done.is_set():
                with anyio.CancelScope(shield=True):
                    self._settle(d, None, "run")
        return d.answer

    def _settle(self, d: _Decision, answer: Any, by: str) -> None:
        d.answer, d.by = answer, by
        d.done.set()
        self.bus.emit(DecisionMade(id=d.event.id, kind=d.event.kind, answer=answer, by=by))

    def decide(self, did: int, answer: Any, by: str = "") -> None:
        d = self._decisions.get(did)
        if d is None:
            raise CommandError(f"no decision {did} in run {self.run_id}")
        if d.done.is_set():
            who = f" by {d.by}" if d.by and d.by != "run" else ""
            raise CommandError(f"already decided{who}")
        if d.event.kind == "review" and not isinstance(answer, dict):
            raise CommandError("a review answer is an object of task name -> true/false")
        self._settle(d, answer, by)

    # ------------------------------------------------------------------------------ commands
    async def command(self, op: str, args: dict[str, Any], by: str = "") -> dict[str, Any]:
        """Carry out one client command; raises :class:`CommandError` (one line) when it can't be."""
        if op == "stop":
            return {"stopping": self.stop()}
        if op == "decide":
            self.decide(int(args.get("decision", 0)), args.get("answer"), by)
            return {}
        rt = self.rt
        if rt is None or self.done.is_set():
            raise CommandError(f"run {self.run_id} is {'over' if self.done.is_set() else 'not started yet'}")
        if op == "abort_all":
            return {"count": rt.abort_all()}
        name = str(args.get("task", ""))
        info = rt.tasks.get(name)
        if info is None:
            raise CommandError(f"run {self.run_id} has no task {name!r}")
        if op == "abort":
            if rt.aborted(name) and not info.finished:
                raise CommandError(f"{name} is being aborted already")
            if not rt.abort(name):
                raise CommandError(f"{name} is not running")
            return {"grace": rt.options.grace}
        if op == "discard":
            if (op, name) in self._busy or info.status == "discarded":
                raise CommandError(f"{name} is {'being ' if (op, name) in self._busy else ''}discarded already")
            self._busy.add((op, name))
            try:
                return {"discarded": await rt.discard(name)}
            finally:
                self._busy.discard((op, name))
        if op == "send":
            problem = rt.follow_up_problem(name) or await rt.branch_problem(name)
            if problem:
                raise CommandError(problem)
            try:
                _item, queued = rt.follow_up(name, str(args.get("message") or ""))
            except FollowUpRefused as exc:
                raise CommandError(str(exc)) from None
            return {"queued": queued}
        if op == "open":
            try:
                return {"workspace": str((await rt.open_workspace(name)).path)}
            except FollowUpRefused as exc:
                raise CommandError(str(exc)) from None
        if op == "cancel":
            try:
                return {"cancelled": rt.cancel_queued(name)}
            except FollowUpRefused as exc:
                raise CommandError(str(exc)) from None
        if op == "retry":
            try:
                return {"task": rt.retry(name, str(args.get("prompt") or ""))}
            except FollowUpRefused as exc:
                raise CommandError(str(exc)) from None
        ws = info.workspace
        if op == "diff":
            if ws is not None and info.resolution:  # a resolver's: its commit, not the whole integration
                ws = dataclasses.replace(ws, base_commit=info.resolution[1], head=info.resolution[2])
            return {"text": await rt.backend.diff(ws) if ws is not None else ""}
        if op == "task_info":
            try:
                pending = await rt.backend.pending_changes(ws) if ws is not None else []
            except VcsError as exc:
                pending = [f"(corral cannot list them: {exc})"]
            return {"status": info.status, "prompt": info.prompt, "turns": info.turns,
                    "workspace": str(ws.path) if ws and ws.task in rt.workspaces.live else "",
                    "ref": ws.ref if ws else "",
                    "extra_refs": list(ws.extra_refs) if ws else [], "pending": pending}
        raise CommandError(f"unknown command {op!r}")

    # -------------------------------------------------------------------------------- notify
    def _run_notify(self, ev: Event) -> None:
        """The plan's ``notify`` command, with the event as JSON on stdin: in the background, in its
        own process group, reaped; it can't hold up the run (killed after 30 s)."""
        what = ("needs decision" if isinstance(ev, DecisionNeeded) else
                "done" if isinstance(ev, RunFinished) and ev.exit_code == 0 else "failed")
        payload = json.dumps({"event": what, "run": self.run_id, **ev.to_dict()}, default=str).encode()
        argv = list(self.notify or [])
        env = dict(self.notify_env or os.environ)

        def call() -> None:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=env, process_group=0)
            except OSError as exc:
                print(f"corral: notify command {argv[0]!r} could not start: {exc}", file=sys.stderr)
                return
            try:
                proc.communicate(payload, timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, 9)
                except OSError:
                    pass
                proc.wait()

        import threading

        threading.Thread(target=call, name="corral-notify", daemon=True).start()
