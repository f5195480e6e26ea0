"""The home screen (plain ``corral``): this repository's runs from the journal, leftovers of
interrupted runs with a clean-up action, and a form to start an ad-hoc run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Label, Select, Static, TextArea

from .dialogs import ConfirmScreen
from .past_run_screen import PastRunScreen, run_tasks
from .widgets import FitFooter, ForwardsWorkerErrors

if TYPE_CHECKING:
    from .dashboard import CorralApp

STATE_STYLE = {"completed": "green", "failed": "yellow", "interrupted": "red", "error": "red", "running": "cyan"}


def run_row(r: dict[str, Any], live: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """One journal entry as a table row: run, started, state, ok, failed, landed, and whether it is
    live in the supervisor (``live``: what the supervisor says of it) and what it waits for."""
    tasks = list(run_tasks(r).values())
    ok = sum(1 for t in tasks if t.get("status") in ("succeeded", "merged", "rejected"))
    bad = sum(1 for t in tasks if t.get("status") in ("failed", "aborted", "conflict", "verify-failed"))
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["started"])) if r.get("started") else "-"
    state = str(r.get("state", "?"))
    now = ""
    if live and live.get("live"):
        now = f"LIVE (pid {live.get('pid')})" + (f", waits: {live['waiting']}" if live.get("waiting") else "")
    return (r.get("run", "?"), started, Text(state.upper(), style=STATE_STYLE.get(state, "")),
            str(len(tasks)), str(ok), str(bad), "yes" if r.get("landed") else "no",
            Text(now, style="bold cyan") if now else "")


class ReportScreen(Screen[None]):
    """A past run's report (``report.md``: outcome, tasks, files, what was kept), read-only."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back", tooltip="Back to the runs", id="report.back")]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        from textual.widgets import Markdown

        yield Static(Text.assemble((" REPORT ", "bold reverse"), "  ", (str(self.path), "bold")), id="home-title")
        with VerticalScroll(id="report-body"):
            yield Markdown(self.path.read_text(encoding="utf-8", errors="replace"))
        yield FitFooter()

    def on_mount(self) -> None:
        self.query_one("#report-body").focus()


class HomeScreen(ForwardsWorkerErrors, Screen):
    """Runs of this repository, leftovers, and a form to start a run."""

    CSS_PATH = "home_screen.tcss"

    BINDINGS = [
        Binding("ctrl+r", "start", "Start run", tooltip="Start the tasks in the form", id="home.start",
                priority=True),
        Binding("c", "clean", "Clean up", tooltip="Remove leftovers of interrupted runs (keeps work)",
                id="home.clean"),
        Binding("f5", "reload", "Reload", id="home.reload"),
        Binding("q", "app.quit_run", "Quit", id="home.quit"),
    ]

    def __init__(self, repo: str) -> None:
        super().__init__()
        self.repo = repo
        self.backend: Any = None
        self.leftovers: list[Any] = []
        self.runs: list[dict[str, Any]] = []
        self.live: dict[str, dict[str, Any]] = {}
        #: how many times the lists were (re)loaded; tests wait on it
        self.loaded = 0

    @property
    def corral(self) -> "CorralApp":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        from corral.core.agents import BUILTIN

        yield Static(Text.assemble((" corral ", "bold reverse"), "  ", (self.repo, "bold")), id="home-title")
        with VerticalScroll(id="home-body"):
            yield Label("Runs of this repository", classes="section")
            yield DataTable(id="home-runs", cursor_type="row", zebra_stripes=True)
            yield Label("Leftovers of interrupted runs", classes="section")
            yield DataTable(id="home-leftovers", cursor_type="row")
            with Horizontal(id="home-clean-row"):
                yield Static("", id="home-leftover-note")
                yield Button(Text("Clean up [c]"), id="home-clean", variant="warning")
            yield Label("Start a run", classes="section")
            with Vertical(id="home-form"):
                yield Static("Tasks, one per line: NAME=PROMPT", classes="hint")
                yield TextArea(id="home-tasks", soft_wrap=True, show_line_numbers=False)
                with Horizontal(id="home-form-row"):
                    yield Static("Agent", classes="hint")
                    found = {name: p.find() is not None for name, p in BUILTIN.items()}
                    options = [(name if ok else f"{name} (not found)", name) for name, ok in found.items()]
                    default = "claude" if found.get("claude") else next((n for n, ok in found.items() if ok),
                                                                         next(iter(BUILTIN)))
                    yield Select(options, value=default, allow_blank=False, id="home-agent")
                    yield Button(Text("Start run [ctrl+r]"), id="home-start", variant="success")
                yield Static("", id="home-error")
        yield FitFooter()

    def on_mount(self) -> None:
        runs = self.query_one("#home-runs", DataTable)
        runs.add_columns("run", "started", "state", "tasks", "ok", "failed", "landed", "now")
        left = self.query_one("#home-leftovers", DataTable)
        left.add_columns("run", "task", "workspace", "branch", "state")
        self.query_one("#home-tasks", TextArea).cursor_blink = False
        self.load()

    @work(exclusive=True, group="home-load", exit_on_error=False)
    async def load(self) -> None:
        from corral.core.journal import list_runs
        from corral.core.server.client import live_runs
        from corral.core.vcs import open_backend

        if self.backend is None:
            self.backend = await open_backend(self.repo)
            self.query_one("#home-title", Static).update(
                Text.assemble((" corral ", "bold reverse"), "  ", (str(self.backend.root), "bold"),
                              (f"  ({self.backend.kind})", "dim")))
        self.runs = list_runs(self.backend.state_dir)
        self.live = await live_runs(self.backend.state_dir)
        self.leftovers = await self.backend.list_leftovers()
        self._show()

    def _show(self) -> None:
        runs = self.query_one("#home-runs", DataTable)
        runs.clear()
        for r in self.runs:
            runs.add_row(*run_row(r, self.live.get(str(r.get("run")))), key=r.get("dir"))
        if not self.runs:
            runs.add_row("no runs yet", "", "", "", "", "", "", "")
        left = self.query_one("#home-leftovers", DataTable)
        left.clear()
        for lo in self.leftovers:
            left.add_row(lo.run, lo.task, str(lo.path), lo.ref,
                         Text("RUN STILL ALIVE", style="cyan") if lo.alive else Text("LEFT OVER", style="yellow"))
        stale = [lo for lo in self.leftovers if not lo.alive]
        note = (f"{len(stale)} workspace(s) left by interrupted runs: clean-up removes them and keeps every "
                "branch that holds unmerged work" if stale else "nothing left over")
        self.query_one("#home-leftover-note", Static).update(note)
        self.query_one("#home-clean", Button).disabled = not stale
        self.refresh_bindings()
        if not self.loaded:
            # typing starts in the form (in the runs table, a task name's letters fired keys: c cleaned
            # up); with leftovers, on the clean-up button
            (self.query_one("#home-clean", Button) if stale else self.query_one("#home-tasks", TextArea)).focus()
        self.loaded += 1

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """``enter`` on a past run: the run (its tasks, their diffs and logs; its report from there)."""
        if event.data_table.id != "home-runs" or event.row_key.value is None or self.backend is None:
            return
        run = next((r for r in self.runs if r.get("dir") == event.row_key.value), None)
        if run is None:
            return
        if self.live.get(str(run.get("run")), {}).get("live"):
            self.attach(str(run["run"]))  # a live run: its dashboard, as corral attach opens it
        else:
            self.app.push_screen(PastRunScreen(run, self.backend))

    @work(group="home-attach", exit_on_error=False)
    async def attach(self, run: str) -> None:
        from corral.core.server.client import LinkError, SocketLink, open_connection

        assert self.backend is not None
        try:
            conn = await open_connection(self.backend.state_dir)
        except LinkError as exc:
            self.notify(str(exc), severity="warning")
            self.load()
            return
        self.corral.attach(SocketLink(conn, run))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clean":
            return True if any(not lo.alive for lo in self.leftovers) else None
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "home-clean":
            self.action_clean()
        elif event.button.id == "home-start":
            self.action_start()

    def action_reload(self) -> None:
        self.load()

    def action_clean(self) -> None:
        stale = [lo for lo in self.leftovers if not lo.alive]
        if not stale:
            self.notify("nothing to clean", severity="warning")
            return
        body = Text("This removes these workspaces (uncommitted work in them is committed to their branch "
                    "first; branches holding unmerged work are kept):\n\n")
        for lo in stale[:12]:
            body.append(f"  {lo.path}  ({lo.ref})\n")
        if len(stale) > 12:
            body.append(f"  ... and {len(stale) - 12} more\n")
        def answered(yes: bool | None) -> None:
            if yes:
                self._clean()

        self.app.push_screen(ConfirmScreen("Clean up leftovers?", body, yes="Clean up", no="Cancel"), answered)

    @work(exclusive=True, group="home-clean", exit_on_error=False)
    async def _clean(self) -> None:
        from corral.core.clean import clean

        rep = await clean(self.backend)
        kept = f"; kept {len(rep.kept_branches)} branch(es) holding work" if rep.kept_branches else ""
        self.notify(f"removed {len(rep.removed)} workspace(s){kept}", title="clean-up")
        for item in rep.failed:
            self.notify(f"could not clean {item.leftover.path}: {item.error}", title="clean-up", severity="error")
        self.load()

    def action_start(self) -> None:
        lines = [line.strip() for line in self.query_one("#home-tasks", TextArea).text.splitlines() if line.strip()]
        agent = str(self.query_one("#home-agent", Select).value)
        error = self.query_one("#home-error", Static)
        if not lines:
            error.update(Text("give at least one task: NAME=PROMPT", style="bold red"))
            return
        self._prepare(lines, agent)

    @work(exclusive=True, group="home-start", exit_on_error=False)
    async def _prepare(self, lines: list[str], agent: str) -> None:
        from corral.core.pipeline import prepare
        from corral.core.plan import PlanError, adhoc_plan
        from corral.core.vcs.base import UsageError

        error = self.query_one("#home-error", Static)
        try:
            plan = adhoc_plan(lines, agent)
            prep = await prepare(plan, self.repo)
        except (PlanError, UsageError) as exc:
            error.update(Text(str(exc), style="bold red"))
            return
        error.update("")
        self.corral.start_run(prep)
