"""The Textual app: a client of a run, which it follows through a :class:`~corral.core.server.client.Link`.

No engine logic lives here, and no engine object is reached into. The run is hosted by a
:class:`~corral.core.server.host.RunHost`, in the repository's supervisor (``corral run``, ``corral
attach``: the dashboard can detach and the run goes on) or in this process (programs, the home
screen's runs). Its events feed the app's :class:`~corral.core.events.EventBus`, and through it a
:class:`~corral.tui.model.RunModel`, which only appends to per-pane buffers; one ``set_interval``
timer flushes every pane inside ``batch_update()``. Controls (abort, discard, the diff, decisions)
are commands on the link; a decision the run waits for arrives as an event, opens the review or a
question, and the first answer from any attached client decides.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from functools import partial
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

import anyio
from rich.text import Text
from textual import events, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.worker import Worker, WorkerState

from corral.core.codes import EXIT_INTERRUPTED, EXIT_USAGE
from corral.core.events import DecisionMade, DecisionNeeded, Event, EventBus, RunFinished, RunStarted
from corral.core.report import fmt_duration
from corral.core.server.host import CommandError, forecast_from_dict

from .dialogs import ConfirmScreen, FollowUpScreen
from .model import RunModel

if TYPE_CHECKING:
    from corral.core.events import VerifyResult
    from corral.core.pipeline import Prepared
    from corral.core.runtime import Runtime
    from corral.core.server.client import Link
    from corral.core.server.host import RunHost

    from .review_screen import ReviewScreen
    from .run_screen import RunScreen

#: ``runner(approver, bus, on_runtime)``: what :meth:`CorralApp.start_runner` runs.
Runner = Callable[[Any, EventBus, Callable[["Runtime"], None]], Awaitable[Any]]
#: Panes are flushed this often (seconds).
FLUSH_INTERVAL = 1 / 12
#: Longest a run that ``corral run`` starts waits for its panes to be drawn: the dashboard is built
#: before the run's workspaces and agents start, not beside them on the same cores (three times as
#: long at 64 panes); the supervisor is started meanwhile.
PANES_DRAWN_WAIT = 1.0


LAND_TITLE = "Land the merge?"
#: decisions answered on the review screen: the review itself, and what to do with the merge's conflicts
REVIEW_KINDS = ("review", "conflicts")


def land_body(result: "VerifyResult | None", message: str, base_name: str) -> Text:
    """What the land question says: the verify result, what lands, and the compare-and-swap."""
    body = Text()
    if result is not None:
        body.append(f"verify {'PASSED' if result.ok else 'FAILED'}", style="bold green" if result.ok else "bold red")
        body.append(f": {result.command} (exit {result.exit_code}, {fmt_duration(result.duration)})\n\n")
    else:
        body.append("no verify command configured\n\n", style="dim")
    body.append(message)
    body.append(f"\n\n{base_name} moves to the merge result only if it did not move meanwhile.", style="dim")
    return body


class _Pending:
    """A question the pipeline is waiting on."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: Any = None


class CorralApp(App[int]):
    """corral's dashboard. Give it a link to a run (``link``: a run in the supervisor), a prepared
    run or a program to host in this process (``prep``, ``runner``), a repository for the home
    screen (``home_repo``), or none of them (a bus fed by the caller: tests and screenshots)."""

    TITLE = "corral"
    CSS_PATH = "toasts.tcss"
    #: the screen gets ``-small`` below 120 columns or 40 lines (toasts.tcss makes toasts fit there)
    HORIZONTAL_BREAKPOINTS = [(0, "-small"), (120, "-large")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]
    BINDINGS = [
        Binding("ctrl+q", "quit_run", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        *,
        prep: "Prepared | None" = None,
        runner: "Runner | None" = None,
        link: "Link | None" = None,
        keep_worktrees: bool = False,
        home_repo: str | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        notifications: bool = True,
        bell: bool = False,
        handle_signals: bool = False,
        grace: float = 3.0,
        keymap: dict[str, str] | None = None,
        expect: "Iterable[tuple[str, str]]" = (),
    ) -> None:
        super().__init__()
        if keymap:
            self.set_keymap(keymap)  # the person's keys (keymap.toml), by binding id
        self.prep = prep
        self.runner = runner
        self.initial_link = link
        self.keep_worktrees = keep_worktrees
        self.home_repo = home_repo
        self.clock = clock
        self.notifications = notifications
        self.bell_on_finish = bell
        self.handle_signals = handle_signals
        self.grace = grace
        self.bus = bus or EventBus()
        self.model = RunModel()
        self._unsubscribe = self.bus.subscribe(self.model)
        self.model.on_notify = self._on_model_notify
        # the tasks (name, agent) of the run ``link`` starts, shown pending until it says its own
        self.model.expect(expect)
        #: the run this dashboard follows, and (for a run in this process) its host
        self.link: "Link | None" = None
        self.host: "RunHost | None" = None
        self.exit_code = 0
        self.report = ""
        self.final_state = ""
        #: set when the person detached: the run goes on without this dashboard
        self.detached = False
        self.run_screen: "RunScreen | None" = None
        self._pipeline_running = False
        self._pipeline_done = anyio.Event()
        self._decision: DecisionNeeded | None = None
        #: while the run so far is replayed: no toasts, and decisions opened only if still open
        self._replaying = True
        self._replayed: dict[int, DecisionNeeded] = {}
        self._decision_worker: Worker[Any] | None = None
        self._review_screen: "ReviewScreen | None" = None
        self._modals: list[Any] = []
        #: screens that wanted to open while a modal was up: they open, in order, once it is answered
        self._waiting: list[Callable[[], object]] = []
        self._quit_dialog: ConfirmScreen | None = None
        self._stopping = False
        #: set when SIGHUP said the terminal went away
        self.terminal_lost = False
        #: why the run its link was to start did not start (said once the screen is gone; exit 2)
        self.start_refused = ""
        #: set at the frame that first shows the run screen's panes (RunScreen)
        self.panes_drawn = anyio.Event()

    @property
    def rt(self) -> "Runtime | None":
        """The runtime of a run hosted in this process (for tests; the app itself never uses it)."""
        return self.host.rt if self.host is not None else None

    # ----------------------------------------------------------------------------- lifecycle
    def on_mount(self) -> None:
        self.set_interval(FLUSH_INTERVAL, self._flush_panes, name="flush")
        self.screen_change_signal.subscribe(self, self._on_screen_change)
        if self.handle_signals:
            import asyncio

            loop = asyncio.get_running_loop()
            self._loop = loop
            try:
                loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
                # a plain handler for SIGHUP: it must run even when the loop is stuck writing to a
                # terminal that is gone (Textual's writer thread dies on EIO and its queue fills up)
                signal.signal(signal.SIGHUP, self._on_hangup)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        if self.initial_link is not None:
            self.attach(self.initial_link)
        elif self.prep is not None:
            self.start_run(self.prep)
        elif self.runner is not None:
            self.start_runner(self.runner, approve=self.runner_approve)
        elif self.home_repo is not None:
            from .home_screen import HomeScreen

            self.push_screen(HomeScreen(self.home_repo))
        else:
            self.show_run_screen()

    def show_run_screen(self) -> "RunScreen":
        from .run_screen import RunScreen

        if self.run_screen is None:
            self.run_screen = RunScreen(self.model)
        self.push_screen(self.run_screen)
        return self.run_screen

    def start_run(self, prep: "Prepared", keep_worktrees: bool | None = None) -> None:
        """Show the run screen and host the pipeline of ``prep`` in this process."""
        from corral.core.pipeline import execute

        if keep_worktrees is not None:
            self.keep_worktrees = keep_worktrees
        self.prep = prep
        self.model.expect((t.name, t.agent) for t in prep.plan.tasks)
        keep, grace = self.keep_worktrees, self.grace
        self._host(prep.run_id, prep.plan.approve,
                   lambda approver, bus, on_rt: execute(prep, approver, bus, keep_worktrees=keep, grace=grace,
                                                        on_runtime=on_rt))

    #: ``--approve`` mode for a runner given to the constructor
    runner_approve: str = "ask"

    def start_runner(self, runner: "Runner", run_id: str = "", approve: str = "ask") -> None:
        """Show the run screen and host ``runner(approver, bus, on_runtime)`` (a program on the
        runtime, say) the way a plan's pipeline runs: it returns an exit code or an object with
        ``exit_code``; quitting cancels it (its cleanup must be shielded). ``approve`` is the
        ``--approve`` mode: ``ask`` puts each question to the person, ``all``/``none`` answer it."""
        self._host(run_id or self.bus.run, approve, runner)

    def _host(self, run_id: str, approve: str, body: Any) -> None:
        from corral.core.server.client import LocalLink
        from corral.core.server.host import RunHost

        self.host = RunHost(run_id, approve=approve)
        self.attach(LocalLink(self.host), body)

    def attach(self, link: "Link", body: Any = None) -> None:
        """Follow the run behind ``link`` (hosting it first when ``body`` is given)."""
        from .run_screen import FLUSH_CAP

        # output no more often than the panes repaint, nor more of a pane than a repaint shows
        link.pace, link.batch_tail = FLUSH_INTERVAL, FLUSH_CAP
        self.link = link
        if hasattr(link, "gate"):  # a run still to be started: once its panes are drawn
            link.gate = self._panes_drawn
        self._replaying, self._replayed = True, {}
        if link.run_id:
            self.bus.run = link.run_id
        self._pipeline_running = True
        self._pipeline_done = anyio.Event()
        self.show_run_screen()
        self._follow(link, body)

    async def _panes_drawn(self) -> None:
        """Until the frame that first shows the run screen's panes (at most PANES_DRAWN_WAIT
        seconds: a run is never held up for long by a screen that cannot be drawn)."""
        with anyio.move_on_after(PANES_DRAWN_WAIT):
            await self.panes_drawn.wait()

    @property
    def detachable(self) -> bool:
        return self.link is not None and self.link.detachable

    @work(exclusive=True, group="pipeline", exit_on_error=False)
    async def _follow(self, link: "Link", body: Any = None) -> None:
        """Feed the run's events to the bus until the run ends (or the link is lost)."""
        from corral.core.server.client import StartRefused

        host = self.host
        try:
            async with anyio.create_task_group() as tg:
                if body is not None and host is not None:
                    tg.start_soon(host.run, body)
                async for ev in link.events():
                    self._on_event(ev)
            if link.exit_code is not None:
                self.exit_code = link.exit_code
            elif not self.detached and not getattr(link, "withdrawn", False):
                self.exit_code = 1
                why = getattr(link, "lost", "") or "the run's events stopped"
                self.bus.log("error", f"lost the run: {why}")
                self.notify(f"lost the run: {why}", severity="error", timeout=10)
        except Exception as exc:
            cause: BaseException = exc
            while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
                cause = cause.exceptions[0]  # (raised in the task group's body)
            if isinstance(cause, StartRefused):  # nothing started: the one line comes once the screen is gone
                self.start_refused = str(cause)
                self.exit_code = EXIT_USAGE
                self.exit(EXIT_USAGE)
                return
            # an engine or link bug: say so, keep the dashboard up
            self.exit_code = 1
            self.bus.log("error", f"the run stopped on an internal error: {exc!r}")
            self.notify(f"internal error: {exc!r}", severity="error", timeout=10)
        finally:
            self._pipeline_running = False
            self._drop_decision()
            self._close_modals()
            self._pipeline_done.set()
            self._flush_panes()

    def _on_event(self, ev: Event) -> None:
        from corral.core.server.client import SnapshotEnd

        if isinstance(ev, SnapshotEnd):
            self._replaying = False
            open_ = [d for d in self._replayed.values()]
            self._replayed.clear()
            if open_:
                self._on_decision(open_[-1])  # the one the run waits for now
            return
        if isinstance(ev, RunStarted) and not self.bus.run:
            self.bus.run = ev.run  # a run started by its link, which had no id before
        self.bus.emit(ev)
        if isinstance(ev, DecisionNeeded):
            if self._replaying:
                self._replayed[ev.id] = ev
            else:
                self._on_decision(ev)
        elif isinstance(ev, DecisionMade):
            self._replayed.pop(ev.id, None)
            self._on_decided(ev)
        elif isinstance(ev, RunFinished):
            self.report, self.final_state = ev.report, ev.state

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker is reported (the app's own, and the screens' forwarded by
        ForwardsWorkerErrors): a notification and a line in the event log; nothing vanishes."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        name = event.worker.name or "background work"
        self.bus.log("error", f"{name} failed: {error!r}")
        self.notify(f"{name} failed: {error}", title="internal error", severity="error", timeout=10)

    @property
    def pipeline_running(self) -> bool:
        return self._pipeline_running

    @property
    def can_control(self) -> bool:
        """Whether commands (abort, discard, ...) can reach the run now."""
        return self.link is not None and self._pipeline_running

    async def command(self, op: str, **args: Any) -> dict[str, Any] | None:
        """A command on the run; a refusal is a notification (and None)."""
        if self.link is None:
            return None
        try:
            return await self.link.request(op, **args)
        except CommandError as exc:
            self.notify(str(exc), severity="warning")
            return None

    def _on_model_notify(self, title: str, message: str, severity: str) -> None:
        if not self.notifications or (self._replaying and self.link is not None):
            return
        # many agents finishing at once must not bury the screen in toasts: short-lived unless bad
        self.notify(message, title=title, severity=severity,  # type: ignore[arg-type]
                    timeout=3 if severity == "information" else 8)
        if self.bell_on_finish and severity in ("error", "warning"):
            self.bell()

    def _flush_panes(self) -> None:
        screen = self.run_screen
        if screen is None or not screen.is_mounted:
            return
        from textual.css.query import NoMatches

        with self.batch_update():
            try:
                screen.flush()
            except NoMatches:  # the app is shutting down and its widgets are going away
                pass
        dialog = self._quit_dialog
        if dialog is not None and dialog.is_attached:
            dialog.update_body(self._quit_body())  # the run goes on under the question

    #: Textual's palette commands that corral's keys replace (q quits after asking; z zooms a pane)
    REPLACED_COMMANDS = frozenset({"Quit", "Maximize", "Minimize"})

    def get_system_commands(self, screen: Any) -> Iterable[SystemCommand]:
        """One palette entry per action: the screen's keys that can act now (moving focus between
        panes is not a command), and Textual's own except those corral's keys replace."""
        for command in super().get_system_commands(screen):
            if command.title not in self.REPLACED_COMMANDS:
                yield command
        seen: set[str] = set()
        for binding in getattr(screen, "BINDINGS", []):
            if not isinstance(binding, Binding) or not binding.description:
                continue
            if not (binding.show or binding.tooltip) or binding.description in seen:
                continue
            action = binding.action
            name = action.split("(", 1)[0].removeprefix("app.")
            target = self if action.startswith("app.") else screen
            if target.check_action(name, ()) is not True:
                continue
            seen.add(binding.description)
            key = binding.key.split(",")[0]
            yield SystemCommand(f"{binding.description} [{key}]", binding.tooltip or binding.description,
                                partial(screen.run_action, action))

    async def on_event(self, event: events.Event) -> None:
        """A key for a focused pane acts here, where it arrives: Textual hands it on to the focused
        widget, a message waiting its turn of the loop (with 64 agents flooding, a turn runs their
        readers and a frame: ``z`` took 50-200 ms), to look up the same bindings of the screen and
        the app (a pane has none of its own). A key bound to nothing goes on to the pane as before."""
        if isinstance(event, events.Key) and not event.is_forwarded:
            from .widgets import TaskPane

            if isinstance(self.focused, TaskPane):
                self.app_focus = True  # (as Textual's, for a key)
                if await self._check_bindings(event.key, priority=True) or await self._check_bindings(event.key):
                    return
        await super().on_event(event)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "detach":  # shown only where the run can go on without the dashboard
            return (True if self._pipeline_running else None) if self.detachable else False
        return True

    # --------------------------------------------------------------------------------- modals
    @property
    def modal_open(self) -> bool:
        """Whether a question (or the command palette) is on top: its keys are its own."""
        return isinstance(self.screen, ModalScreen)

    def open_when_free(self, opener: Callable[[], object]) -> None:
        """Run ``opener`` (which pushes a screen) now, or once the open modal is answered: a screen
        that opened over a question would take the keys meant for it (``y`` on "Stop and quit"
        approving a task in the review that just opened on top)."""
        if self.modal_open or self._waiting:
            self._waiting.append(opener)
        else:
            opener()

    def _on_screen_change(self, screen: Any) -> None:
        if self._waiting and not self.modal_open:
            # after the dismissed modal's callback, which may push or pop a screen itself
            self.call_later(self._open_waiting)

    def _open_waiting(self) -> None:
        while self._waiting and not self.modal_open and not self._stopping:
            self._waiting.pop(0)()  # a screen that has nothing to show any more pushes nothing

    # ------------------------------------------------------------------------------- quitting
    async def action_quit(self) -> None:
        await self.action_quit_run()

    def action_detach(self) -> None:
        """``D``: close the dashboard; the run goes on in the supervisor (``corral attach``)."""
        if not self.detachable:
            starting = getattr(self.link, "starting", False)
            self.notify("the run is still being started: D detaches from it once it has" if starting
                        else "this run lives in this process: it can't go on without the dashboard", severity="warning")
            return
        from .home_screen import HomeScreen

        if any(isinstance(s, HomeScreen) for s in self.screen_stack):
            # attached from the home screen: back to it; the run goes on
            self.workers.cancel_group(self, "pipeline")
            self._pipeline_running = False
            self._back_home()
            return
        self.detached = True
        self.exit(0)

    async def action_quit_run(self) -> None:
        """Quit; while the run goes on, ask first: detach (the run goes on) or stop it."""
        if self._stopping:
            self.notify("still cleaning up, please wait", severity="warning")
            return
        if not self._pipeline_running:
            if not self._back_home():
                self.exit(self.exit_code)
            return
        if self._quit_dialog is not None:
            return  # asked already (on screen, or waiting for the question on top to be answered)
        if self.detachable:
            dialog = ConfirmScreen("Quit corral?", self._quit_body(), yes="Stop the run", no="Detach",
                                   cancel=True)
        else:
            dialog = ConfirmScreen("Quit corral?", self._quit_body(), yes="Stop and quit", no="Keep running")
        self._quit_dialog = dialog
        if self.modal_open:
            self.notify("answer this question first; then corral asks about quitting", severity="warning")
        self.open_when_free(partial(self.push_screen, dialog, self._quit_answer))

    def _quit_body(self) -> Text:
        running = sum(1 for t in self.model.tasks.values() if not t.finished)
        body = Text()
        if not self._pipeline_running:
            body.append("The run has finished: quitting only closes the dashboard.")
            return body
        if running:
            body.append(f"{running} task(s) still running. ", style="bold")
        if self.detachable:
            body.append(f"The run is in its {self.model.phase} phase.\n")
            body.append("n detach", style="bold")
            body.append(f" (the default): the run goes on; corral attach {self.bus.run} comes back.\n")
            body.append("y stop the run", style="bold")
            body.append(": agents stopped, workspaces removed, unmerged work kept on its branches.\n")
            body.append("escape", style="bold")
            body.append(": keep watching.")
        else:
            body.append(f"The run is in its {self.model.phase} phase. Quitting stops every agent (TERM, then KILL), "
                        "removes every workspace and keeps the branches that hold unmerged work.")
        if self._decision is not None and self._decision.kind == "review":
            body.append("\n\nThe review is ready: it opens when you keep running.", style="bold")
        return body

    def _back_home(self) -> bool:
        """After a run started from the home screen: back to it, its lists reloaded, ready for the
        next run (a fresh model: the old run's panes stay with the old run). False without one."""
        from .home_screen import HomeScreen

        homes = [s for s in self.screen_stack if isinstance(s, HomeScreen)]
        if not homes or self.run_screen is None:
            return False
        while self.screen is not homes[-1]:
            self.pop_screen()
        self._unsubscribe()
        self.model = RunModel()
        self.model.on_notify = self._on_model_notify
        self._unsubscribe = self.bus.subscribe(self.model)
        self.run_screen = None
        if self.link is not None:  # (a connection to the supervisor: it may go once idle)
            self.run_worker(self.link.aclose(), exit_on_error=False)
        self.link = self.host = self.prep = None
        self.report = ""
        homes[-1].load()
        return True

    def _quit_answer(self, yes: bool | None) -> None:
        self._quit_dialog = None
        if yes:
            self.stop_and_exit()
        elif yes is False and self.detachable:
            self.action_detach()

    def _on_signal(self, signum: int) -> None:
        if self.detachable:
            self.action_detach()  # the run is the supervisor's: this client only goes away
            return
        self.stop_and_exit()

    def _on_hangup(self, signum: int, frame: Any) -> None:
        """The terminal is gone: stop drawing (so nothing blocks on it), then detach (a run in the
        supervisor goes on) or stop and clean up (a run in this process)."""
        self.terminal_lost = True
        if self.detachable:
            # nothing of the run is here: end at once, whatever Textual's threads are doing with
            # the terminal that is gone (its input thread can spin on EOF, its writer block)
            os._exit(0)
        driver = self._driver
        if driver is not None:
            # nothing more reaches the terminal; and SIGCONT (sent with SIGHUP to an orphaned group)
            # must not restart application mode on it
            driver.write = lambda data: None  # type: ignore[method-assign]
            driver.flush = lambda: None  # type: ignore[method-assign]
        try:
            signal.signal(signal.SIGCONT, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
        writer = getattr(driver, "_writer_thread", None)
        old = getattr(writer, "_queue", None)
        if writer is not None and old is not None:
            import queue

            writer._queue = queue.Queue()  # unbounded and never read: later writes go nowhere
            try:
                while True:
                    old.get_nowait()  # unblocks a write stuck on the full queue
            except queue.Empty:
                pass
            try:
                old.put_nowait(None)  # a still-living writer thread ends
            except queue.Full:
                pass
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self.stop_and_exit)

    @work(exclusive=True, group="stop", exit_on_error=False)
    async def stop_and_exit(self) -> None:
        """Stop the run (its cleanup runs, in whichever process hosts it), wait for its end, exit
        with 130."""
        if self._stopping:
            return
        self._stopping = True
        withdraw = getattr(self.link, "withdraw", None)
        if withdraw is not None and withdraw():  # a run not asked of the supervisor yet: none starts
            await self._pipeline_done.wait()
            self.exit(EXIT_INTERRUPTED)
            return
        if self._pipeline_running and self.link is not None:
            self.notify("stopping agents and cleaning up ...", timeout=30)
            try:
                await self.link.request("stop")
            except CommandError:
                pass
            await self._pipeline_done.wait()
            self.exit(EXIT_INTERRUPTED if self.exit_code in (0, EXIT_INTERRUPTED) else self.exit_code)
        else:
            self.exit(self.exit_code)

    def _close_modals(self) -> None:
        """The pipeline ended while a question was open: close it."""
        for screen in list(self._modals):
            if screen.is_attached and screen in self.screen_stack:
                screen.dismiss(None)
        self._modals.clear()

    # ------------------------------------------------------------------------------ decisions
    @property
    def review_pending(self) -> bool:
        return self._decision is not None and self._decision.kind == "review"

    @property
    def review_waiting(self) -> bool:
        """The run waits on the review screen: the review, or what to do with its merge's conflicts."""
        return self._decision is not None and self._decision.kind in REVIEW_KINDS

    def _on_decision(self, ev: DecisionNeeded) -> None:
        """The run waits for a decision: open the review, or ask the question."""
        self._drop_decision()
        self._decision = ev
        if self.bell_on_finish:
            self.bell()  # a person is needed now
        if ev.kind in REVIEW_KINDS:
            self.open_review()
            if self.notifications:
                self.notify(("review ready: y approve, n reject, m merge the approved ones" if ev.kind == "review" else
                             "merge conflicts: R resolves the selected one with the resolver agent, m goes on")
                            + (" (it opens when you answer the question)" if self.modal_open else ""),
                            title="review")
            return
        self._decision_worker = self._ask(ev)

    @work(group="decision", exit_on_error=False)
    async def _ask(self, ev: DecisionNeeded) -> None:
        if ev.kind == "land":
            body = land_body(self.model.verify_result, ev.message, ev.base)
            answer = await self.request_confirm(LAND_TITLE, body, yes="Land", no="Keep branch", danger=False)
        else:
            answer = await self.request_confirm("Approval asked", ev.message, danger=False)
        await self._decide(ev, answer)

    async def _decide(self, ev: DecisionNeeded, answer: Any) -> None:
        if self._decision is ev:
            self._decision = None
        await self.command("decide", decision=ev.id, answer=answer)

    def _on_decided(self, ev: DecisionMade) -> None:
        """A decision was taken (here, in another terminal, or by the run's end): close what asks it."""
        if self._decision is None or self._decision.id != ev.id:
            return
        self._drop_decision()
        if ev.by != "run" and self.notifications:
            self.notify(f"decided in another terminal: {ev.kind}", severity="warning")

    def _drop_decision(self) -> None:
        self._decision = None
        worker = self._decision_worker
        self._decision_worker = None
        if worker is not None and worker.is_running:
            worker.cancel()
        screen = self._review_screen
        self._review_screen = None
        self._waiting = [w for w in self._waiting if w != self._push_review]
        if screen is not None and screen in self.screen_stack:
            # once mounted: a screen popped while it mounts fails in its on_mount
            self.call_after_refresh(self._pop_if_top, screen)

    def _pop_if_top(self, screen: Any) -> None:
        if self.screen is screen:
            self.pop_screen()

    def open_review(self) -> None:
        """Open the review now, or once the open question is answered."""
        if self.modal_open:
            if self._push_review not in self._waiting:
                self._waiting.append(self._push_review)
            return
        self._push_review()

    def _push_review(self) -> None:
        from .review_screen import ReviewItem, ReviewScreen

        ev = self._decision
        if ev is None or ev.kind not in REVIEW_KINDS:
            return
        if self._review_screen is not None and self._review_screen in self.screen_stack:
            return
        items = [ReviewItem(**row) for row in ev.items]
        previous = self._review_screen.decisions if self._review_screen is not None else {}
        screen = ReviewScreen(items, forecast_from_dict(ev.forecast), self._load_diff, previous,
                              conflicts=ev.message if ev.kind == "conflicts" else "")
        self._review_screen = screen

        def done(result: dict[str, Any] | None) -> None:
            if result is None or self._decision is not ev:
                return  # back to the run screen; decide later with r
            self._review_screen = None
            self.run_worker(self._decide(ev, result), group="decision", exit_on_error=False)

        self.push_screen(screen, done)

    async def _load_diff(self, name: str) -> str:
        reply = await self.command("diff", task=name)
        return str(reply.get("text", "")) if reply else ""

    async def request_confirm(self, title: str, body: Any, yes: str = "Yes", no: str = "No",
                              danger: bool = True) -> bool:
        pending = _Pending()
        screen = ConfirmScreen(title, body, yes=yes, no=no, danger=danger)
        self._modals.append(screen)

        def done(answer: bool | None) -> None:
            pending.result = bool(answer)
            pending.event.set()

        opener = partial(self.push_screen, screen, done)
        self.open_when_free(opener)
        if self.bell_on_finish:
            self.bell()
        try:
            await pending.event.wait()
            return bool(pending.result)
        finally:
            if screen in self._modals:
                self._modals.remove(screen)
            if opener in self._waiting:
                self._waiting.remove(opener)  # the run was cancelled before the question could open
            if not pending.event.is_set() and self.screen is screen:
                self.pop_screen()  # the run was cancelled while the question was open

    # ------------------------------------------------------------------------------- controls
    @work(group="abort", exit_on_error=False)
    async def confirm_abort(self, name: str) -> None:
        """Stop one agent; ask first when it has written files (its work so far stays on its branch,
        but the agent will not finish it)."""
        info = await self.command("task_info", task=name)
        if info is None:
            return
        written = list(info.get("pending", []))
        if not written:
            await self.abort_task(name)
            return
        body = Text()
        body.append(f"{name}'s agent has written {len(written)} file(s): ", style="bold")
        body.append(", ".join(written[:6]) + (" ..." if len(written) > 6 else "") + ".\n\n")
        body.append("Stopping it (TERM, then KILL) leaves that work half done; it is kept on its branch.")

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self.abort_task(name), group="abort", exit_on_error=False)

        self.push_screen(ConfirmScreen(f"Abort {name}?", body, yes="Abort", no="Keep running"), answered)

    async def abort_task(self, name: str) -> None:
        reply = await self.command("abort", task=name)
        if reply is not None:
            self.notify(f"aborting {name}: TERM now, KILL after {float(reply.get('grace', self.grace)):g}s",
                        title=name)

    def confirm_abort_all(self) -> None:
        """``A`` ends the run: ask first (focus on keeping it)."""
        running = [t.name for t in self.model.tasks.values() if not t.finished]
        if not self.can_control or not running:
            return
        body = Text()
        body.append(f"Stop every agent: {', '.join(running)}.\n\n", style="bold")
        body.append("Work done so far stays on each task's branch; the run goes on to review what finished.")
        def answered(yes: bool | None) -> None:
            if yes:
                self.abort_all()

        self.push_screen(ConfirmScreen("Abort all agents?", body, yes="Abort all", no="Keep running"), answered)

    @work(group="abort", exit_on_error=False)
    async def abort_all(self) -> None:
        reply = await self.command("abort_all")
        if reply is None:
            return
        n = int(reply.get("count", 0))
        self.notify(f"aborting {n} task(s)" if n else "nothing is running",
                    severity="warning" if not n else "information")

    @work(group="discard", exit_on_error=False)
    async def confirm_discard(self, name: str) -> None:
        info = await self.command("task_info", task=name)
        if info is None:
            return
        view = self.model.tasks.get(name)
        # what is in the workspace and not committed yet (edits made there by hand, or by an agent
        # still running) is deleted too: say so
        pending = list(info.get("pending", []))
        body = Text()
        body.append("This deletes, with no way back:\n", style="bold")
        if info.get("workspace"):
            body.append(f"  the workspace {info['workspace']}\n")
            body.append(f"  the branch {info.get('ref', '')}\n")
            for ref in info.get("extra_refs", []):
                body.append(f"  the branch {ref} (other commits made in the workspace)\n")
        if view is not None and view.files is not None:
            body.append(f"  and {name}'s work: {view.files} file(s) changed (+{view.added} -{view.removed})\n")
        else:
            body.append(f"  and everything {name} has done so far\n")
        if pending:
            body.append(f"  and {len(pending)} uncommitted file(s) in the workspace: "
                        + ", ".join(pending[:6]) + (" ..." if len(pending) > 6 else "") + "\n")
        if info.get("status") in ("pending", "creating", "setup", "running"):
            body.append("\nThe agent is stopped first.", style="dim")

        def answered(yes: bool | None) -> None:
            if yes:
                self._discard(name)

        self.push_screen(ConfirmScreen(f"Discard {name}?", body, yes="Discard", no="Keep"), answered)

    @work(group="discard", exit_on_error=False)
    async def _discard(self, name: str) -> None:
        self.notify(f"discarding {name} ...", title=name)
        reply = await self.command("discard", task=name)
        if reply and reply.get("discarded"):
            self.notify(f"{name}: workspace and branch deleted", title=name)

    def ask_follow_up(self, name: str, changes: bool = False) -> None:
        """``f`` (and the review's ``c``, ``changes``): a message for ``name``'s agent, sent as the
        run's ``send`` command."""
        view = self.model.tasks.get(name)
        if changes or self.review_pending:
            title, note = (f"Changes requested from {name}", "The review closes; it comes back when the agent "
                           "is done, on its new work.")
        elif view is not None and not view.finished:
            title, note = f"Message to {name}'s agent", "It is still working: the message waits until its turn ends."
        else:
            title, note = f"Message to {name}'s agent", "It has finished: its session is resumed in its workspace."

        def answered(message: str | None) -> None:
            if message:
                self._send(name, message)

        self.push_screen(FollowUpScreen(name, title, note), answered)

    @work(group="send", exit_on_error=False)
    async def ask_retry(self, name: str) -> None:
        """``R``: a new attempt of a failed or aborted task, its prompt editable first."""
        info = await self.command("task_info", task=name)
        if info is None:
            return
        prompt = str(info.get("prompt") or "")

        def answered(text: str | None) -> None:
            if text:
                self._retry(name, text)

        self.push_screen(FollowUpScreen(name, f"Retry {name}", "A new attempt starts from base on a branch of its "
                                        "own; this one stays until the run ends.", value=prompt), answered)

    @work(group="send", exit_on_error=False)
    async def _retry(self, name: str, prompt: str) -> None:
        reply = await self.command("retry", task=name, prompt=prompt)
        if reply is not None:
            self.notify(f"retried as {reply.get('task')}", title=name)

    @work(group="send", exit_on_error=False)
    async def cancel_queued(self, name: str) -> None:
        """``x``: take back the messages queued for ``name``'s agent (the run's ``cancel`` command)."""
        reply = await self.command("cancel", task=name)
        if reply is not None:
            self.notify(f"{reply.get('cancelled')} queued message(s) cancelled", title=name)

    @work(group="send", exit_on_error=False)
    async def _send(self, name: str, message: str) -> None:
        reply = await self.command("send", task=name, message=message)
        if reply is not None:
            self.notify("message queued: delivered when its turn ends" if reply.get("queued") else
                        "its session resumed with the message", title=name)

    def workspace_dir(self, name: str | None) -> Path | None:
        if name is None:
            return None
        path: Path | None = None
        if self.model.tasks.get(name) and self.model.tasks[name].workspace:
            path = Path(self.model.tasks[name].workspace)
        if path is None or not path.is_dir():
            return None
        if self.model.tasks.get(name) and self.model.tasks[name].status == "discarded":
            return None
        return path

    def log_file(self, name: str) -> Path | None:
        if not self.model.run_dir:
            return None
        path = Path(self.model.run_dir) / "logs" / f"{name}.log"
        return path if path.is_file() else None

    async def open_shell(self, name: str) -> None:
        path = self.workspace_dir(name)
        if path is None and self.can_control:  # put away once its agent's work was on its branch
            reply = await self.command("open", task=name)
            path = Path(reply["workspace"]) if reply else None
            if path is None:
                return
        if path is None:
            self.notify(f"{name} has no workspace on disk", severity="warning")
            return
        shell = os.environ.get("SHELL") or "/bin/sh"
        banner = (f"corral: a shell in {name}'s workspace {path}\n"
                  f"corral: agents keep running; exit the shell (Ctrl-D) to return to the dashboard\n")
        await self._run_suspended([shell], cwd=str(path), banner=banner)

    async def open_pager(self, name: str) -> None:
        path = self.log_file(name)
        if path is None:
            self.notify(f"no log for {name} yet", severity="warning")
            return
        pager = shlex.split(os.environ.get("PAGER") or "less -R") or ["less"]
        await self._run_suspended([*pager, str(path)], cwd=str(path.parent))

    async def _run_suspended(self, argv: list[str], cwd: str, banner: str = "") -> None:
        """Hand the terminal to ``argv`` (in its own process group, made the terminal's foreground
        group) while the loop keeps running the pipeline; the screen is redrawn afterwards."""
        try:
            with self.batch_update():
                with self.suspend():
                    if banner:
                        os.write(1, banner.encode())
                    code = await run_in_foreground(argv, cwd)
        except Exception as exc:  # SuspendNotSupported, a missing $SHELL
            self.notify(f"could not run {argv[0]}: {exc}", severity="error")
            return
        self.refresh(repaint=True, layout=True)
        if code == STOPPED:
            self.notify(f"{Path(argv[0]).name} was stopped (Ctrl-Z), so corral closed it and took the "
                        "terminal back", severity="warning")
        elif code not in (0, None):
            self.notify(f"{Path(argv[0]).name} exited with {code}", severity="warning")


#: what :func:`run_in_foreground` returns for a program that stopped itself (Ctrl-Z) and was closed
STOPPED = -signal.SIGTSTP


async def run_in_foreground(argv: list[str], cwd: str) -> int | None:
    """Run an interactive program on the terminal: its own process group, given the terminal's
    foreground while it runs (so Ctrl-C reaches it, not corral), always reaped.

    A program that stops (Ctrl-Z in a pager) would wait for a shell's ``fg`` that never comes, the
    dashboard waiting for it: corral is the one to go back to, so the terminal comes back to the
    dashboard and the stopped program is killed (:data:`STOPPED` is returned)."""
    import anyio.to_thread

    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        tty = None
    proc = subprocess.Popen(argv, cwd=cwd, process_group=0)
    old_ttou = None
    try:
        if tty is not None:
            old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                try:
                    os.setpgid(proc.pid, proc.pid)
                except OSError:
                    pass
                os.tcsetpgrp(tty, proc.pid)
                # the child runs before it has the terminal: a shell that finds itself in a background
                # group stops itself with SIGTTIN (1 shell in 4 with two agents flooding output). It
                # has the terminal now, so nothing can stop it again; SIGCONT wakes it if it stopped
                # (and drops a stop still pending)
                os.killpg(proc.pid, signal.SIGCONT)
            except OSError:
                pass
        if await anyio.to_thread.run_sync(_wait_exit_or_stop, proc.pid, abandon_on_cancel=True):
            os.killpg(proc.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
            proc.wait()
            return STOPPED
        return proc.wait()
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
        if tty is not None:
            try:
                os.tcsetpgrp(tty, os.getpgrp())
            except OSError:
                pass
            os.close(tty)
        if old_ttou is not None:
            signal.signal(signal.SIGTTOU, old_ttou)


def _wait_exit_or_stop(pid: int) -> bool:
    """Wait until child ``pid`` exits (False; left for ``Popen.wait`` to reap) or is stopped by job
    control (True)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WSTOPPED | os.WNOWAIT)
    return info is not None and info.si_code == os.CLD_STOPPED
