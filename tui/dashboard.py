"""The Textual app: runs the engine's pipeline on Textual's asyncio loop and renders its event stream.

No engine logic lives here. The app subscribes a :class:`~corral.tui.model.RunModel` to the
:class:`~corral.core.events.EventBus`; subscribers are called synchronously in the loop thread, so the
model only appends to per-pane buffers, and one ``set_interval`` timer flushes every pane inside
``batch_update()``. Controls go through the :class:`~corral.core.runtime.Runtime` handed over by
``on_runtime``: ``rt.abort``, ``rt.abort_all``, ``rt.discard``; approvals through
:class:`DashboardApprover`, which pushes the review screen or a confirmation and awaits the answer.
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
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.worker import Worker, WorkerState

from corral.core.events import EventBus
from corral.core.report import fmt_duration
from corral.core.vcs.base import VcsError

from .dialogs import ConfirmScreen
from .model import RunModel

if TYPE_CHECKING:
    from corral.core.events import VerifyResult
    from corral.core.pipeline import Outcome, Prepared
    from corral.core.runtime import Runtime, TaskInfo
    from corral.core.vcs.base import Forecast

    from .review_screen import ReviewScreen
    from .run_screen import RunScreen

EXIT_INTERRUPTED = 130
#: ``runner(approver, bus, on_runtime)``: what :meth:`CorralApp.start_runner` runs.
Runner = Callable[[Any, EventBus, Callable[["Runtime"], None]], Awaitable[Any]]
#: Panes are flushed this often (seconds).
FLUSH_INTERVAL = 1 / 12


LAND_TITLE = "Land the merge?"


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


class DashboardApprover:
    """The person at the dashboard decides: the review screen, and modal confirmations."""

    def __init__(self, app: "CorralApp") -> None:
        self.app = app

    async def review(self, rt: "Runtime", candidates: list["TaskInfo"], forecast: "Forecast") -> dict[str, bool]:
        return await self.app.request_review(candidates, forecast)

    async def confirm_land(self, rt: "Runtime", message: str) -> bool:
        body = land_body(self.app.model.verify_result, message, rt.base_name)
        return await self.app.request_confirm(LAND_TITLE, body, yes="Land", no="Keep branch", danger=False)

    async def ask(self, rt: "Runtime", question: str, default: bool) -> bool:
        return await self.app.request_confirm("Approval asked", question, danger=False)


class _Pending:
    """A question the pipeline is waiting on."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: Any = None


class CorralApp(App[int]):
    """corral's dashboard. Give it a prepared run (``prep``), a repository for the home screen
    (``home_repo``), or neither (a bus fed by the caller: tests and screenshots)."""

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
        keep_worktrees: bool = False,
        home_repo: str | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        notifications: bool = True,
        bell: bool = False,
        handle_signals: bool = False,
        grace: float = 3.0,
        keymap: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if keymap:
            self.set_keymap(keymap)  # the person's keys (keymap.toml), by binding id
        self.prep = prep
        self.runner = runner
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
        self.rt: "Runtime | None" = None
        self.outcome: "Outcome | None" = None
        self.exit_code = 0
        self.run_screen: "RunScreen | None" = None
        self._scope: anyio.CancelScope | None = None
        self._pipeline_running = False
        self._pipeline_done = anyio.Event()
        self._review: _Pending | None = None
        self._review_items: tuple[list["TaskInfo"], "Forecast"] | None = None
        self._review_screen: "ReviewScreen | None" = None
        self._modals: list[Any] = []
        #: screens that wanted to open while a modal was up: they open, in order, once it is answered
        self._waiting: list[Callable[[], object]] = []
        self._quit_dialog: ConfirmScreen | None = None
        self._stopping = False
        #: set when SIGHUP said the terminal went away
        self.terminal_lost = False

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
        if self.prep is not None:
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
        """Show the run screen and run the pipeline of ``prep`` in a worker on this loop."""
        from corral.core.runtime import PolicyApprover

        if keep_worktrees is not None:
            self.keep_worktrees = keep_worktrees
        self.prep = prep
        self.bus.run = prep.run_id
        mode = prep.plan.approve
        approver = PolicyApprover(mode == "all") if mode in ("all", "none") else DashboardApprover(self)
        self._pipeline_running = True
        self._pipeline_done = anyio.Event()
        self.show_run_screen()
        self._run_pipeline(prep, approver)

    #: ``--approve`` mode for a runner given to the constructor
    runner_approve: str = "ask"

    def start_runner(self, runner: "Runner", run_id: str = "", approve: str = "ask") -> None:
        """Show the run screen and run ``runner(approver, bus, on_runtime)`` (a program on the
        runtime, say) the way a plan's pipeline runs: it returns an exit code or an object with
        ``exit_code``; quitting cancels it (its cleanup must be shielded). ``approve`` is the
        ``--approve`` mode: ``ask`` puts each question to the person, ``all``/``none`` answer it."""
        from corral.core.runtime import PolicyApprover

        if run_id:
            self.bus.run = run_id
        approver = PolicyApprover(approve == "all") if approve in ("all", "none") else DashboardApprover(self)
        self._pipeline_running = True
        self._pipeline_done = anyio.Event()
        self.show_run_screen()
        self._run_worker(lambda: runner(approver, self.bus, self._on_runtime))

    def _run_pipeline(self, prep: "Prepared", approver: Any) -> None:
        from corral.core.pipeline import execute

        self._run_worker(lambda: execute(prep, approver, self.bus, keep_worktrees=self.keep_worktrees,
                                         grace=self.grace, on_runtime=self._on_runtime))

    @work(exclusive=True, group="pipeline", exit_on_error=False)
    async def _run_worker(self, start: Callable[[], Awaitable[Any]]) -> None:
        self._scope = anyio.CancelScope()
        try:
            with self._scope:
                result = await start()
                if isinstance(result, int):
                    self.exit_code = result
                else:
                    self.outcome = result
                    self.exit_code = int(getattr(result, "exit_code", 1))
            if self._scope.cancelled_caught:
                self.exit_code = EXIT_INTERRUPTED
        except Exception as exc:  # an engine bug: say so, keep the dashboard up
            self.exit_code = 1
            self.bus.log("error", f"the run stopped on an internal error: {exc!r}")
            self.notify(f"internal error: {exc!r}", severity="error", timeout=10)
        finally:
            self._pipeline_running = False
            self._close_modals()
            self._pipeline_done.set()
            self._flush_panes()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker is reported (the app's own, and the screens' forwarded by
        ForwardsWorkerErrors): a notification and a line in the event log; nothing vanishes."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        name = event.worker.name or "background work"
        self.bus.log("error", f"{name} failed: {error!r}")
        self.notify(f"{name} failed: {error}", title="internal error", severity="error", timeout=10)

    def _on_runtime(self, rt: "Runtime") -> None:
        self.rt = rt

    @property
    def pipeline_running(self) -> bool:
        return self._pipeline_running

    def _on_model_notify(self, title: str, message: str, severity: str) -> None:
        if not self.notifications:
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

    async def action_quit_run(self) -> None:
        """Quit; while the run goes on, ask first, then stop every agent and clean up."""
        if self._stopping:
            self.notify("still cleaning up, please wait", severity="warning")
            return
        if not self._pipeline_running:
            if not self._back_home():
                self.exit(self.exit_code)
            return
        if self._quit_dialog is not None:
            return  # asked already (on screen, or waiting for the question on top to be answered)
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
        body.append(f"The run is in its {self.model.phase} phase. Quitting stops every agent (TERM, then KILL), "
                    "removes every workspace and keeps the branches that hold unmerged work.")
        if self._review is not None:
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
        self.rt = self.outcome = self.prep = None
        homes[-1].load()
        return True

    def _quit_answer(self, yes: bool | None) -> None:
        self._quit_dialog = None
        if yes:
            self.stop_and_exit()

    def _on_signal(self, signum: int) -> None:
        self.stop_and_exit()

    def _on_hangup(self, signum: int, frame: Any) -> None:
        """The terminal is gone: stop drawing (so nothing blocks on it), then stop and clean up."""
        self.terminal_lost = True
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
        """Cancel the pipeline (its cleanup is shielded and runs), wait for it, exit with 130."""
        if self._stopping:
            return
        self._stopping = True
        if self._pipeline_running and self._scope is not None:
            self.notify("stopping agents and cleaning up ...", timeout=30)
            self._scope.cancel()
            await self._pipeline_done.wait()
            self.exit(EXIT_INTERRUPTED)
        else:
            self.exit(self.exit_code)

    def _close_modals(self) -> None:
        """The pipeline ended while a question was open: close it."""
        for screen in list(self._modals):
            if screen.is_attached and screen in self.screen_stack:
                screen.dismiss(None)
        self._modals.clear()

    # ------------------------------------------------------------------------------ approvals
    @property
    def review_pending(self) -> bool:
        return self._review is not None

    async def request_review(self, candidates: list["TaskInfo"], forecast: "Forecast") -> dict[str, bool]:
        pending = _Pending()
        self._review = pending
        self._review_items = (candidates, forecast)
        try:
            self.open_review()
            if self.notifications:
                self.notify("review ready: y approve, n reject, m merge the approved ones"
                            + (" (it opens when you answer the question)" if self.modal_open else ""),
                            title="review")
            if self.bell_on_finish:
                self.bell()  # a person is needed now
            await pending.event.wait()
            return dict(pending.result or {})
        finally:
            self._review = None
            self._review_items = None
            screen = self._review_screen
            self._review_screen = None
            if not pending.event.is_set() and screen is not None and self.screen is screen:
                self.pop_screen()  # the run was cancelled while the review was open

    def open_review(self) -> None:
        """Open the review now, or once the open question is answered."""
        if self.modal_open:
            if self._push_review not in self._waiting:
                self._waiting.append(self._push_review)
            return
        self._push_review()

    def _push_review(self) -> None:
        from .review_screen import ReviewItem, ReviewScreen

        if self._review is None or self._review_items is None:
            return
        if self._review_screen is not None and self._review_screen in self.screen_stack:
            return
        candidates, forecast = self._review_items
        names = {c.name for c in candidates}
        rt = self.rt
        items = []
        tasks = list(rt.tasks.values()) if rt is not None else candidates
        for t in tasks:
            snap = t.snapshot
            items.append(ReviewItem(name=t.name, status=t.status, agent=t.agent,
                                    added=snap.added if snap else 0, removed=snap.removed if snap else 0,
                                    files=list(snap.files) if snap else [],
                                    candidate=t.name in names and t.status == "succeeded"))
        previous = self._review_screen.decisions if self._review_screen is not None else {}
        screen = ReviewScreen(items, forecast, self._load_diff, previous)
        self._review_screen = screen

        def done(result: dict[str, bool] | None) -> None:
            pending = self._review
            if result is None or pending is None:
                return  # back to the run screen; decide later with r
            pending.result = result
            pending.event.set()

        self.push_screen(screen, done)

    async def _load_diff(self, name: str) -> str:
        rt = self.rt
        if rt is None:
            return ""
        info = rt.tasks.get(name)
        if info is None or info.workspace is None:
            return ""
        return await rt.backend.diff(info.workspace)

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
        rt = self.rt
        if rt is None or name not in rt.tasks:
            return
        ws = rt.tasks[name].workspace
        written = await rt.backend.pending_changes(ws) if ws is not None else []
        if not written:
            self.abort_task(name)
            return
        body = Text()
        body.append(f"{name}'s agent has written {len(written)} file(s): ", style="bold")
        body.append(", ".join(written[:6]) + (" ..." if len(written) > 6 else "") + ".\n\n")
        body.append("Stopping it (TERM, then KILL) leaves that work half done; it is kept on its branch.")
        self.push_screen(ConfirmScreen(f"Abort {name}?", body, yes="Abort", no="Keep running"),
                         lambda yes: self.abort_task(name) if yes else None)

    def abort_task(self, name: str) -> None:
        if self.rt is None:
            return
        if self.rt.abort(name):
            self.notify(f"aborting {name}: TERM now, KILL after {self.grace:g}s", title=name)
        else:
            self.notify(f"{name} is not running", severity="warning")

    def confirm_abort_all(self) -> None:
        """``A`` ends the run: ask first (focus on keeping it)."""
        running = [t.name for t in self.model.tasks.values() if not t.finished]
        if self.rt is None or not running:
            return
        body = Text()
        body.append(f"Stop every agent: {', '.join(running)}.\n\n", style="bold")
        body.append("Work done so far stays on each task's branch; the run goes on to review what finished.")
        self.push_screen(ConfirmScreen("Abort all agents?", body, yes="Abort all", no="Keep running"),
                         lambda yes: self.abort_all() if yes else None)

    def abort_all(self) -> None:
        if self.rt is None:
            return
        n = self.rt.abort_all()
        self.notify(f"aborting {n} task(s)" if n else "nothing is running",
                    severity="warning" if not n else "information")

    @work(group="discard", exit_on_error=False)
    async def confirm_discard(self, name: str) -> None:
        rt = self.rt
        if rt is None or name not in rt.tasks:
            return
        info = rt.tasks[name]
        view = self.model.tasks.get(name)
        ws = info.workspace
        # what is in the workspace and not committed yet (edits made there by hand, or by an agent
        # still running) is deleted too: say so
        try:
            pending = await rt.backend.pending_changes(ws) if ws is not None else []
        except VcsError as exc:
            pending = [f"(corral cannot list them: {exc})"]
        body = Text()
        body.append("This deletes, with no way back:\n", style="bold")
        if ws is not None:
            body.append(f"  the workspace {ws.path}\n")
            body.append(f"  the branch {ws.ref}\n")
            for ref in ws.extra_refs:
                body.append(f"  the branch {ref} (other commits made in the workspace)\n")
        if view is not None and view.files is not None:
            body.append(f"  and {name}'s work: {view.files} file(s) changed (+{view.added} -{view.removed})\n")
        else:
            body.append(f"  and everything {name} has done so far\n")
        if pending:
            body.append(f"  and {len(pending)} uncommitted file(s) in the workspace: "
                        + ", ".join(pending[:6]) + (" ..." if len(pending) > 6 else "") + "\n")
        if info.status in ("pending", "creating", "setup", "running"):
            body.append("\nThe agent is stopped first.", style="dim")
        def answered(yes: bool | None) -> None:
            if yes:
                self._discard(name)

        self.push_screen(ConfirmScreen(f"Discard {name}?", body, yes="Discard", no="Keep"), answered)

    @work(group="discard", exit_on_error=False)
    async def _discard(self, name: str) -> None:
        rt = self.rt
        if rt is None:
            return
        self.notify(f"discarding {name} ...", title=name)
        try:
            ok = await rt.discard(name)
        except Exception as exc:
            self.notify(f"could not discard {name}: {exc}", severity="error")
            return
        if ok:
            self.notify(f"{name}: workspace and branch deleted", title=name)

    def workspace_dir(self, name: str | None) -> Path | None:
        if name is None:
            return None
        path: Path | None = None
        ws = self.rt.tasks[name].workspace if self.rt is not None and name in self.rt.tasks else None
        if ws is not None:
            path = Path(ws.path)
        elif self.model.tasks.get(name) and self.model.tasks[name].workspace:
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
