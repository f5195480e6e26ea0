"""A past run, opened from the home screen: its tasks (status, agent, files, +/-), each task's diff and
its log, from the run's journal. Looking changes nothing: diffs come from the commits the run
recorded (a kept branch's tip when it is still there), nothing is checked out. What was since deleted
(a branch, its commits once git collected them, a log) is said, not guessed.

What the run left can be finished from here, each in a new run in the repository's supervisor that
the dashboard then follows (as ``corral attach`` would): ``v`` reviews again the tasks whose work did
not land (approve, send back with a comment, resolve a conflict, land), ``L`` lands the run's kept
result (what ``corral land RUN`` does), ``c`` asks a task's agent for changes (what ``corral send RUN
TASK`` does after a run ended: its workspace re-opened from its branch, its session resumed, then
review)."""

from __future__ import annotations

import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Static

from corral.core.report import fmt_cost, fmt_duration
from corral.core.vcs.base import Backend, VcsError, Workspace

from .review_screen import NARROW_WIDTH, DiffView, ReviewSide
from .widgets import FitFooter, ForwardsWorkerErrors

#: the end of a task's log shown, in lines (the whole log is in the run folder)
MAX_LOG_LINES = 2000


def run_tasks(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A journal entry's tasks. Integration workspaces (``integration``, and ``integration-N`` of a
    bisected verify) are journaled next to them, with no agent: they are not tasks."""
    return {name: t for name, t in (run.get("tasks") or {}).items()
            if t.get("agent") or not re.fullmatch(r"integration(-\d+)?", name)}


class PastRunScreen(ForwardsWorkerErrors, Screen[None]):
    """One run of the journal: tasks on the left, the selected task's diff (or log) on the right."""

    CSS_PATH = "past_run_screen.tcss"

    BINDINGS = [
        Binding("l", "toggle_log", "Log/diff", tooltip="The task's log instead of its diff, and back",
                id="past.log"),
        Binding("r", "report", "Report", tooltip="The run's report.md", id="past.report"),
        Binding("L", "land", "Land", tooltip="Land the run's kept result onto base as it is now (verified again)",
                id="past.land"),
        Binding("v", "review", "Review", tooltip="Review again what the run left (approve, send back, resolve, "
                "land) in a new run", id="past.review"),
        Binding("c", "changes", "Changes", tooltip="Ask the selected task's agent for changes (a new run carries "
                "it on)", id="past.changes"),
        Binding("escape,q", "app.pop_screen", "Back", tooltip="Back to the runs", id="past.back"),
    ]

    def __init__(self, run: dict[str, Any], backend: Backend) -> None:
        super().__init__()
        self.run = run
        self.dir = Path(str(run.get("dir", "")))
        self.backend = backend
        self.tasks = run_tasks(run)
        self.selected: str | None = None
        self.showing_log = False
        #: task -> where its diff comes from (filled as diffs load)
        self.sources: dict[str, str] = {}
        self.diff_view = DiffView(self._load_diff, id="past-diff")

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="past-title")
        with Horizontal(id="past-body"):
            with ReviewSide(id="past-left"):
                yield DataTable(id="past-tasks", cursor_type="row", zebra_stripes=True)
                yield Static("", id="past-task")
            yield self.diff_view
            with VerticalScroll(id="past-log"):
                yield Static("", id="past-log-text")
        yield FitFooter()

    def _title(self) -> Text:
        run = self.run
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" RUN ", style="bold reverse")
        text.append(f"  {run.get('run', self.dir.name)}", style="bold")
        text.append(f" · {str(run.get('state', '?')).upper()}")
        if run.get("base"):
            text.append(f" · base {run['base']} @ {str(run.get('base_commit', ''))[:8]}")
        text.append(f" · landed {'yes' if run.get('landed') else 'no'}")
        if run.get("started"):
            text.append(time.strftime(" · %Y-%m-%d %H:%M", time.localtime(run["started"])), style="dim")
        return text

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < NARROW_WIDTH, "-narrow")

    def on_mount(self) -> None:
        self.query_one("#past-log").display = False
        table = self.query_one("#past-tasks", DataTable)
        for col in ("task", "status", "agent", "+", "-", "files"):
            table.add_column(col, key=col)
        for name, t in self.tasks.items():
            table.add_row(name, str(t.get("status", "?")).upper(), str(t.get("agent") or "-"),
                          Text(f"+{t.get('added', 0)}", style="green"), Text(f"-{t.get('removed', 0)}", style="red"),
                          str(len(t.get("files") or [])), key=name)
        if not self.tasks:
            self.query_one("#past-task", Static).update(Text("no tasks recorded for this run", style="dim"))
            self.diff_view.display = False
        table.focus()

    # ----------------------------------------------------------------------------- the task
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value in self.tasks:
            self._select(str(event.row_key.value))

    def _select(self, name: str) -> None:
        if name == self.selected:
            return
        self.selected = name
        self.refresh_bindings()
        self._show_task()
        self.diff_view.show(name)
        if self.showing_log:
            self._show_log()

    def _show_task(self) -> None:
        name = self.selected
        if name is None:
            return
        t = self.tasks[name]
        text = Text()
        text.append(name, style="bold")
        reason = f" ({t['reason']})" if t.get("reason") else ""
        text.append(f" · {t.get('status', '?')}{reason}")
        if t.get("agent"):
            text.append(f" · {t['agent']}", style="dim")
        text.append(f"\n{fmt_duration(t.get('duration'))} · {fmt_cost(t.get('cost'))}\n", style="dim")
        if name in self.sources:
            text.append(self.sources[name] + "\n", style="yellow" if "gone" in self.sources[name] else "")
        files = t.get("files") or []
        text.append(f"{len(files)} file(s) changed\n")
        for f in files[:30]:
            text.append(f"  {f}\n")
        if len(files) > 30:
            text.append(f"  ... and {len(files) - 30} more\n", style="dim")
        self.query_one("#past-task", Static).update(text)

    async def _head(self, name: str) -> str | None:
        """The commit holding ``name``'s work: its branch's tip if the branch is still there, else
        the commit the run recorded if it still exists; None when both are gone. Says which in
        :attr:`sources`."""
        t = self.tasks[name]
        branch, commit = str(t.get("branch") or ""), str(t.get("commit") or "")
        if branch and await self.backend.ref_exists(branch):
            self.sources[name] = f"branch {branch} (kept)"
            return await self.backend.resolve(branch)
        gone = f"branch {branch} deleted" if branch else "no branch recorded"
        if commit:
            try:
                head = await self.backend.resolve(commit)
            except VcsError:
                self.sources[name] = f"{gone}; its commit {commit[:12]} is gone too: no diff"
                return None
            self.sources[name] = f"{gone}; the diff is of the commit the run recorded, {commit[:12]}"
            return head
        self.sources[name] = f"{gone}; no commit recorded: no diff"
        return None

    async def _load_diff(self, name: str) -> str:
        t = self.tasks[name]
        base = str(t.get("base_commit") or self.run.get("base_commit") or "")
        head = await self._head(name) if base else None
        if name == self.selected:
            self._show_task()
        if head is None:
            why = self.sources.get(name, "no base commit recorded").replace("; ", ";\n")
            files = "".join(f"\n  {f}" for f in t.get("files") or []) or " none"
            return f"no diff for {name}:\n{why}\n\nfiles it changed, as the run recorded them:{files}\n"
        ws = Workspace(task=name, path=Path(str(t.get("workspace") or self.dir)), ref=str(t.get("branch") or ""),
                       base_commit=base, head=head)
        return await self.backend.diff(ws)

    # -------------------------------------------------------------------------------- the log
    def action_toggle_log(self) -> None:
        self.showing_log = not self.showing_log
        self.diff_view.display = not self.showing_log
        self.query_one("#past-log").display = self.showing_log
        if self.showing_log:
            self._show_log()

    def _show_log(self) -> None:
        name = self.selected
        widget = self.query_one("#past-log-text", Static)
        if name is None:
            widget.update(Text("no task", style="dim"))
            return
        widget.update(Text("loading log ...", style="dim"))
        self._read_log(name)

    @work(exclusive=True, group="past-log", exit_on_error=False)
    async def _read_log(self, name: str) -> None:
        import anyio.to_thread

        path = self.dir / "logs" / f"{name}.log"
        text = await anyio.to_thread.run_sync(_tail, path)
        if self.selected == name and self.showing_log:
            self.query_one("#past-log-text", Static).update(text)
            self.query_one("#past-log").scroll_end(animate=False)

    # ------------------------------------------------------------ finishing what the run left
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "land":
            return True if self._kept_result() else None
        if action == "changes":
            return True if self.selected is not None and not self._change_problem(self.selected) else None
        if action == "review":
            return True if self._left() else None
        return True

    def _left(self) -> list[str]:
        """The tasks whose work the run left on their branches without landing it (a review in a new
        run can take them up: the supervisor checks again that each branch is still there)."""
        from corral.core.continuation import LEFT

        if not (self.dir / "plan.json").is_file() or self.run.get("state") == "running":
            return []
        return [name for name, t in self.tasks.items()
                if t.get("status") in LEFT and t.get("branch") and t.get("files")]

    def _kept_result(self) -> str:
        """The branch holding the run's result that did not land ("" when there is none)."""
        if self.run.get("landed") or self.run.get("state") == "running":
            return ""
        return next((b for b in self.run.get("kept_branches") or [] if str(b).endswith("/integration")), "")

    def _change_problem(self, name: str) -> str:
        from corral.core.continuation import task_problem

        if not (self.dir / "plan.json").is_file():
            return "this run ran a program: only a plan's task is carried on"
        return task_problem(str(self.run.get("run", self.dir.name)), self.run, name)

    def action_land(self) -> None:
        from .dialogs import ConfirmScreen

        ref = self._kept_result()
        if not ref:
            return
        base = self.run.get("base", "base")
        body = Text(f"{ref} is merged onto {base} as it is now, verified again with the run's verify command, "
                    f"and {base} moves to it only if that passes (by compare-and-swap). The dashboard follows it; "
                    "D detaches.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._start(self._request(land=str(self.run.get("run", self.dir.name))))

        self.app.push_screen(ConfirmScreen(f"Land run {self.run.get('run', self.dir.name)}?", body, yes="Land",
                                           no="Cancel"), answered)

    def action_review(self) -> None:
        if self._left():
            self._start(self._request(review=str(self.run.get("run", self.dir.name))))

    def action_changes(self) -> None:
        from .dialogs import FollowUpScreen

        name = self.selected
        if name is None:
            return
        problem = self._change_problem(name)
        if problem:
            self.notify(problem, severity="warning")
            return
        run = str(self.run.get("run", self.dir.name))

        def send(message: str | None) -> None:
            if message and message.strip():
                self._start(self._request(follow_up={"run": run, "task": name, "message": message}))

        self.app.push_screen(FollowUpScreen(name, f"Changes to {name}", "A new run carries the task on: its "
                                            "workspace re-opened from its branch, its agent's session resumed; "
                                            "then its review."), send)

    def _request(self, **what: Any) -> Any:
        from corral.core.server.launch import StartRequest

        return StartRequest(target=None, repo=str(self.backend.root), cwd=os.getcwd(), env=dict(os.environ), **what)

    @work(exclusive=True, group="past-start", exit_on_error=False)
    async def _start(self, request: Any) -> None:
        """Start ``request`` in the supervisor, then follow that run in the dashboard."""
        from corral.core.server.client import LinkError, SocketLink, open_connection, start_run
        from corral.core.server.host import CommandError

        state_dir, root = self.backend.state_dir, self.backend.root
        try:
            run_id, _pid = await start_run(state_dir, root, request)
            conn = await open_connection(state_dir)
        except (LinkError, CommandError) as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.app.attach(SocketLink(conn, run_id))  # type: ignore[attr-defined]

    def action_report(self) -> None:
        from .home_screen import ReportScreen

        report = self.dir / "report.md"
        if not report.is_file():
            self.notify(f"no report for this run ({report})", severity="warning")
            return
        self.app.push_screen(ReportScreen(report))


def _tail(path: Path) -> Text:
    """The last :data:`MAX_LOG_LINES` lines of a log, as plain text (never markup)."""
    total = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines: deque[str] = deque(maxlen=MAX_LOG_LINES)
            for line in f:
                lines.append(line.rstrip("\n"))
                total += 1
    except OSError as exc:
        return Text(f"no log: {path} ({exc.strerror or exc})", style="yellow")
    if not lines:
        return Text(f"{path.name}: empty", style="dim")
    text = Text(f"{path}\n", style="dim")
    if total > len(lines):
        text.append(f"... {total - len(lines)} earlier lines not shown\n", style="dim")
    text.append("\n".join(lines))
    return text
