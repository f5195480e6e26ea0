"""The review screen: every task with its status, +/- lines and files touched; the conflict forecast
as a task x task matrix (plus base); the selected task's diff, syntax-highlighted. ``y`` approves,
``n`` rejects, ``m`` merges the approved ones (dismissing with the decisions), Escape goes back to
the run screen with nothing decided yet. ``R`` on a task marked CONFLICT, when the run asks what to do
with its merge's conflicts, hands it to the resolver agent (dismissing with ``{"resolve": TASK}``);
on a failed or aborted task it asks for a new attempt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from rich.syntax import Syntax
from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Static

from corral.core.vcs.base import Forecast

from .widgets import FitFooter, ForwardsWorkerErrors

#: Longest diff shown, in lines; the rest is one `git diff` away.
MAX_DIFF_LINES = 4000
#: Narrower than this the task list goes above the diff rather than beside it.
NARROW_WIDTH = 120


def _key_hints(text: Text, *hints: tuple[str, str]) -> Text:
    """Append "KEY label" pairs to a title, the key in bold, two spaces between pairs."""
    for i, (key, label) in enumerate(hints):
        text.append(key, style="bold")
        text.append(f" {label}" + ("  " if i < len(hints) - 1 else ""))
    return text


class ReviewSide(VerticalScroll, can_focus=False):
    """The task list, the forecast and the selected task's files; scrolls when they do not fit
    (focus stays on the table)."""


@dataclass
class ReviewItem:
    """One row of the review table."""

    name: str
    status: str
    agent: str = ""
    added: int = 0
    removed: int = 0
    files: list[str] = field(default_factory=list)
    candidate: bool = False  # succeeded (or partial work), so it can be approved
    #: the other attempts of the same task up for review (a retry): approving one rejects these
    attempts: list[str] = field(default_factory=list)


DiffLoader = Callable[[str], Awaitable[str]]


class DiffView(VerticalScroll):
    """A task's diff, syntax-highlighted, loaded in the background by ``load_diff`` (once per task:
    :meth:`show` again is instant). The review screen and a past run's screen show diffs with it."""

    def __init__(self, load_diff: DiffLoader, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.load_diff = load_diff
        self.shown: str | None = None
        #: task -> its diff, once loaded
        self.diffs: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="review-diff")

    def show(self, name: str) -> None:
        self.shown = name
        if name in self.diffs:
            self._show_diff(name, self.diffs[name])
        else:
            self.query_one("#review-diff", Static).update(Text("loading diff ...", style="dim"))
            self._fetch(name)

    @work(exclusive=True, group="review-diff", exit_on_error=False)
    async def _fetch(self, name: str) -> None:
        try:
            diff = await self.load_diff(name)
        except Exception as exc:  # a missing workspace must not break the screen
            diff = f"(diff not available: {exc})"
        self.diffs[name] = diff
        if self.shown == name:
            self._show_diff(name, diff)

    def _show_diff(self, name: str, diff: str) -> None:
        widget = self.query_one("#review-diff", Static)
        if not diff.strip():
            widget.update(Text(f"{name}: no changes", style="dim"))
            return
        lines = diff.splitlines()
        note = ""
        if len(lines) > MAX_DIFF_LINES:
            note = f"\n... {len(lines) - MAX_DIFF_LINES} more lines not shown"
            diff = "\n".join(lines[:MAX_DIFF_LINES])
        widget.update(Syntax(diff + note, "diff", theme="monokai", word_wrap=False, background_color="default"))
        self.scroll_home(animate=False)


class ReviewScreen(ForwardsWorkerErrors, Screen[dict[str, Any] | None]):
    """Approve or reject each succeeded task, then merge the approved ones. With ``conflicts`` (the
    run's question about its merge's conflicts), pick the conflict the resolver takes on now, or go on."""

    CSS_PATH = "review_screen.tcss"

    BINDINGS = [
        Binding("y", "decide(True)", "Approve", tooltip="Approve the selected task", id="review.approve"),
        Binding("n", "decide(False)", "Reject", tooltip="Reject the selected task", id="review.reject"),
        Binding("Y", "decide_all(True)", "Approve all", show=False, tooltip="Approve every succeeded task",
                id="review.approve_all"),
        Binding("c", "request_changes", "Changes", tooltip="Ask the selected task's agent for changes (a message)",
                id="review.changes"),
        Binding("R", "resolve", "Resolve/retry", tooltip="A task marked CONFLICT: its conflict resolved by the "
                "resolver agent now; a failed or aborted task: a new attempt", id="review.resolve"),
        Binding("m", "merge", "Merge approved", tooltip="Merge the approved tasks and go on", id="review.merge"),
        Binding("escape", "back", "Back", tooltip="Back to the run screen (decide later with r)", id="review.back"),
        Binding("q", "app.quit_run", "Quit", tooltip="Quit (asks first; stops and cleans up)", id="review.quit"),
    ]

    def __init__(self, items: list[ReviewItem], forecast: Forecast, load_diff: DiffLoader,
                 decisions: dict[str, bool] | None = None, conflicts: str = "") -> None:
        super().__init__()
        #: the run's question about its merge's conflicts ("": the review before the merge)
        self.conflicts = conflicts
        self.items = {item.name: item for item in items}
        self.order = [item.name for item in items]
        self.forecast = forecast
        self.decisions: dict[str, bool] = dict(decisions or {})
        self.selected: str | None = None
        self.diff_view = DiffView(load_diff, id="review-diff-scroll")

    @property
    def candidates(self) -> list[str]:
        return [n for n in self.order if self.items[n].candidate]

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="review-title")
        with Horizontal(id="review-body"):
            with ReviewSide(id="review-left"):
                yield DataTable(id="review-tasks", cursor_type="row", zebra_stripes=True)
                yield Static("", id="review-matrix")
                yield Static("", id="review-files")
            yield self.diff_view
        yield FitFooter()

    def on_resize(self, event: events.Resize) -> None:
        # narrow: the list above the diff, each the full width (side by side the diff got 15 columns)
        self.set_class(event.size.width < NARROW_WIDTH, "-narrow")

    def _title(self) -> Text:
        decided = [n for n in self.candidates if n in self.decisions]
        n_ok = sum(1 for n in decided if self.decisions[n])
        left = len(self.candidates) - len(decided)
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.conflicts:
            text.append(" CONFLICTS ", style="bold reverse")
            text.append("  ")
            return _key_hints(text, ("R", "resolve the selected one with the resolver agent"),
                              ("m", "go on (verify, then land) without what still conflicts"))
        text.append(" REVIEW ", style="bold reverse")
        if left:
            text.append(f"  {left} of {len(self.candidates)} to decide · {n_ok} approved · ")
        else:
            text.append(f"  all {len(self.candidates)} decided: {n_ok} approved, {len(decided) - n_ok} rejected · ")
        return _key_hints(text, ("y", "approve"), ("n", "reject"), ("m", "merge the approved ones"))

    def on_mount(self) -> None:
        table = self.query_one("#review-tasks", DataTable)
        table.add_column("decision", key="decision", width=11)
        table.add_column("task", key="task")
        table.add_column("status", key="status")
        table.add_column("+", key="added")
        table.add_column("-", key="removed")
        table.add_column("files", key="files")
        for name in self.order:
            item = self.items[name]
            table.add_row(self._decision_cell(name), name, item.status.upper(),
                          Text(f"+{item.added}", style="green"), Text(f"-{item.removed}", style="red"),
                          str(len(item.files)), key=name)
        self.query_one("#review-matrix", Static).update(self._matrix())
        conflicted = [n for n in self.order if self.items[n].status == "conflict"]
        # after a resolution with nothing left in conflict: the newest task, the resolver
        first = next(iter(self.candidates or conflicted or (self.order[-1:] if self.conflicts else self.order)), None)
        if first is not None:
            table.move_cursor(row=self.order.index(first))
            self._select(first)
        table.focus()

    # ----------------------------------------------------------------------------- rendering
    def _decision_cell(self, name: str) -> Text:
        if not self.items[name].candidate:
            return Text("-", style="dim")
        decision = self.decisions.get(name)
        if decision is True:
            return Text("✔ approve", style="bold green")
        if decision is False:
            return Text("✘ reject", style="bold red")
        return Text("? undecided", style="yellow")

    def _matrix(self) -> Text:
        """Task x task (plus base), the columns numbered so that it fits beside the diff whatever
        the names: ✗ where a trial merge conflicts, ok where it merges, ? where not tried; then the
        conflicting pairs by name. Lines are cut, never wrapped."""
        names = self.candidates
        text = Text(no_wrap=True, overflow="crop")
        if self.conflicts:  # merged already: what the merge found, not a forecast
            text.append("merge conflicts\n", style="bold underline")
            for line in self.conflicts.split("; "):
                text.append(f"{line}\n", style="red" if " conflicts in " in line else "green")
            text.rstrip()
            return text
        text.append("conflict forecast", style="bold underline")
        text.append("  (trial merges, nothing touched)\n", style="dim")
        if not names:
            text.append("no succeeded task to forecast", style="dim")
            return text
        label = len(str(len(names))) + 1
        first = label + min(max(len(n) for n in names), 16) + 2
        width = max(3, len(str(len(names))) + 2)
        text.append(" " * first)
        for i in range(1, len(names) + 1):
            text.append(str(i).ljust(width), style="bold")
        text.append("base\n", style="bold")
        untried_any = False
        for i, a in enumerate(names, 1):
            clash = self.forecast.conflicts_of(a)
            untried = self.forecast.untried_of(a)
            untried_any = untried_any or bool(untried)
            name = a if len(a) <= 16 else a[:15] + "…"
            text.append(f"{i}".rjust(label - 1) + " ", style="dim")
            text.append(name.ljust(first - label), style="bold")
            for b in names + ["base"]:
                if a == b:
                    text.append("·".ljust(width), style="dim")
                elif b in clash:
                    text.append("✗".ljust(width), style="bold red")
                elif b in untried:
                    text.append("?".ljust(width), style="yellow")
                else:
                    text.append("ok".ljust(width), style="green")
            text.append("\n")
        pairs = sorted({tuple(sorted((a, b))) for a in names for b in self.forecast.conflicts_of(a)})
        for a, b in pairs:
            text.append("✗ ", style="bold red")
            text.append(f"{a} conflicts with {b}\n", style="red")
        if untried_any:
            text.append("?: both touch files that too many tasks share to trial-merge every pair; "
                        "not trial-merged, they may conflict\n", style="yellow")
        text.rstrip()
        return text

    def _files_text(self, name: str) -> Text:
        item = self.items[name]
        text = Text()
        text.append(f"{name}", style="bold")
        text.append(f" · {item.status}")
        if item.agent:
            text.append(f" · {item.agent}", style="dim")
        text.append(f" · {len(item.files)} file(s) touched\n")
        clash = self.forecast.conflicts_of(name)
        crowded = self.forecast.crowded
        for f in item.files[:30]:
            hot = any(f in paths for paths in clash.values())
            text.append(f"  {f}", style="bold red" if hot else "")
            if hot:
                text.append("  (conflict)\n", style="red")
            elif f in crowded:
                text.append(f"  (touched by {len(crowded[f])} tasks: too many to trial-merge every pair)\n",
                            style="yellow")
            else:
                text.append("\n")
        if len(item.files) > 30:
            text.append(f"  ... and {len(item.files) - 30} more\n", style="dim")
        for other, paths in sorted(clash.items()):
            text.append(f"would conflict with {other}: {', '.join(paths)}\n", style="red")
        untried = sorted(self.forecast.untried_of(name))
        if untried:
            more = f" and {len(untried) - 8} more" if len(untried) > 8 else ""
            text.append(f"not trial-merged with {len(untried)} task(s) touching the same files: "
                        f"{', '.join(untried[:8])}{more}\n", style="yellow")
        return text

    def _select(self, name: str) -> None:
        if name == self.selected:
            return
        self.selected = name
        self.query_one("#review-files", Static).update(self._files_text(name))
        self.refresh_bindings()
        self.diff_view.show(name)

    def _refresh_row(self, name: str) -> None:
        table = self.query_one("#review-tasks", DataTable)
        table.update_cell(name, "decision", self._decision_cell(name))
        self.query_one("#review-title", Static).update(self._title())

    # -------------------------------------------------------------------------------- events
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value in self.items:
            self._select(str(event.row_key.value))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("decide", "decide_all", "request_changes") and self.conflicts:
            return False  # decided already: the merge is under way
        if action in ("decide", "request_changes"):
            return True if (self.selected and self.items[self.selected].candidate) else None
        if action == "resolve":  # in the footer only where it does something
            return True if self._resolve_kind() else False
        return True

    def _resolve_kind(self) -> str:
        """What ``R`` does on the selected task: "resolve" its conflict, "retry" it, or nothing."""
        item = self.items[self.selected] if self.selected else None
        if item is None:
            return ""
        if item.status == "conflict":
            return "resolve" if self.conflicts else ""
        return "retry" if item.status in ("failed", "aborted") else ""

    def action_resolve(self) -> None:
        kind, name = self._resolve_kind(), self.selected
        if kind == "resolve":
            self.dismiss({"resolve": name})
        elif kind == "retry":
            self.app.ask_retry(name)  # type: ignore[attr-defined]

    def action_decide(self, approve: bool) -> None:
        name = self.selected
        if not name or not self.items[name].candidate:
            return
        self.decisions[name] = approve
        self._refresh_row(name)
        for other in self.items[name].attempts if approve else []:  # the user picks one attempt
            if other in self.items:
                self.decisions[other] = False
                self._refresh_row(other)
        # move on to the next undecided task, selected now: keys typed ahead of the table's
        # highlight message (y y y) decide one task each, not the first one three times
        table = self.query_one("#review-tasks", DataTable)
        for other in self.order[self.order.index(name) + 1:]:
            if self.items[other].candidate and other not in self.decisions:
                table.move_cursor(row=self.order.index(other))
                self._select(other)
                break

    def action_request_changes(self) -> None:
        if self.selected and self.items[self.selected].candidate:
            self.app.ask_follow_up(self.selected, changes=True)  # type: ignore[attr-defined]

    def action_decide_all(self, approve: bool) -> None:
        for name in self.candidates:
            self.decisions[name] = approve
            self._refresh_row(name)

    def action_merge(self) -> None:
        if self.conflicts:
            self.dismiss({})  # go on: what still conflicts is left out
            return
        decisions: dict[str, Any] = {name: bool(self.decisions.get(name)) for name in self.candidates}
        undecided = [n for n in self.candidates if n not in self.decisions]
        approved = [n for n in self.candidates if decisions[n]]
        if not undecided and approved:
            self.dismiss(decisions)
            return
        from .dialogs import ConfirmScreen

        body = Text()
        if approved:
            body.append(f"Merge {', '.join(approved)}.\n")
        else:
            body.append("Nothing is approved: nothing will be merged.\n", style="bold")
        if undecided:
            body.append(f"Not decided yet, so rejected: {', '.join(undecided)}.\n")
        body.append("\nRejected work stays on its branch.", style="dim")
        title = "Merge the approved tasks?" if approved else "Reject every task?"
        def answered(yes: bool | None) -> None:
            if yes:
                self.dismiss(decisions)

        self.app.push_screen(ConfirmScreen(title, body, yes="Go on", no="Back to review", danger=not approved),
                             answered)

    def action_back(self) -> None:
        self.dismiss(None)
