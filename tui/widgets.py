"""Reusable dashboard widgets: a task pane and its head (the status badge), the run header, the footer."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.reactive import Reactive
from textual.screen import Screen
from textual.strip import Strip
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual import events
from textual.worker import Worker, WorkerState
from textual.widget import Widget
from textual.widgets import Footer, Log, ProgressBar, Static
from textual.widgets._footer import FooterKey

from corral.core.report import fmt_cost, fmt_duration

from .model import BADGE_WORDS, PANE_MAX_LINES, RunModel, TaskView


class ForwardsWorkerErrors:
    """For screens: a worker of theirs that raised goes to the app, whose one handler shows it
    (Textual tells only the node that started the worker, and drops the error with
    ``exit_on_error=False``)."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            event.stop()
            self.app.post_message(Worker.StateChanged(event.worker, event.state))  # type: ignore[attr-defined]


def fmt_elapsed(seconds: float | None, live: bool) -> str:
    """Elapsed time on screen: whole seconds while it still ticks (one repaint a second at most),
    ``fmt_duration`` (tenths under 10 s) once it stopped."""
    if seconds is None or not live:
        return fmt_duration(seconds)
    return f"{int(seconds)}s" if seconds < 10 else fmt_duration(float(int(seconds)))


#: A status's badge: its colours, by status (the rest: ``$text`` on ``$panel``).
BADGE_STYLES = {
    "creating": "background: $primary-darken-2;",
    "setup": "background: $primary-darken-2;",
    "running": "background: $primary;",
    "succeeded": "background: $success-darken-1;",
    "merged": "background: $success; color: $background;",
    "failed": "background: $error;",
    "aborted": "background: $warning-darken-2;",
    "conflict": "background: $warning; color: $background;",
    "verify-failed": "background: $error;",
    "rejected": "background: $surface-lighten-2; color: $text-muted;",
    "discarded": "background: $surface-lighten-2; color: $text-muted;",
}
#: A badge's width: the longest word but one, and a wider badge for the longest
BADGE_WIDTH = 11
WIDE_BADGES = {"verify-failed": 15}


#: A head's components besides its status's (``PaneHead._get_component_classes``).
_HEAD_COMPONENTS = frozenset({"pane-head--badge", "pane-head--meta", "pane-head--activity"})


class PaneHead(Widget):
    """A pane's two lines over its log: the status as a word in capitals on a coloured background,
    elapsed time, cost and files; then what the agent says it is doing. One widget rendering both
    (they were five: a row, the badge, the meta line, the activity line), so a pane is three widgets
    to mount, style and lay out; a change repaints it, never lays out the screen (a fixed size)."""

    COMPONENT_CLASSES = {"pane-head--badge", "pane-head--meta", "pane-head--activity",
                         *(f"pane-head--{status}" for status in BADGE_STYLES)}

    DEFAULT_CSS = """
    PaneHead { height: 2; }
    PaneHead > .pane-head--badge { text-style: bold; color: $text; background: $panel; }
    PaneHead > .pane-head--meta { color: $text-muted; }
    PaneHead > .pane-head--activity { color: $text-muted; text-style: italic; }
    """ + "\n".join(f"    PaneHead > .pane-head--{status} {{ {css} }}" for status, css in BADGE_STYLES.items())

    def __init__(self) -> None:
        super().__init__()
        self.status = "pending"
        self.meta = ""
        self.activity = ""
        #: its two lines as last rendered, and the width they were rendered at
        self._strips: tuple[int, list[Strip]] | None = None
        #: the styles of its parts (``_part_styles``), until it is restyled
        self._parts: tuple[Style, Style, Style, Style, Style] | None = None

    def set(self, status: str, meta: str, activity: str) -> None:
        if (status, meta, activity) != (self.status, self.meta, self.activity):
            restyle = status != self.status and self.is_attached
            self.status, self.meta, self.activity = status, meta, activity
            self._strips = None
            if restyle:
                self.update_node_styles(animate=False)  # the new status's colours (now: it renders next)
            self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = self._parts = None  # new colours: a new status, a new theme

    def _get_component_classes(self) -> frozenset[str]:  # type: ignore[override]
        """The components it shows now: its lines' and its status's. Textual computes the styles of
        every component of a widget at each restyle of it (14 here, all statuses: 900 at 64 panes,
        most of a restyle of the run screen); a new status restyles the head (``set``)."""
        status = f"pane-head--{self.status}"
        return _HEAD_COMPONENTS | {status} if self.status in BADGE_STYLES else _HEAD_COMPONENTS

    @property
    def word(self) -> str:
        return BADGE_WORDS.get(self.status, self.status.upper())

    def _badge_styles(self) -> tuple[Style, Style]:
        """The badge's colours, for its word and its padding; ``$text`` (an automatic colour: light
        or dark, whichever reads best) on the badge's own background, as a widget of that
        background would show it."""
        names = ["pane-head--badge"] + ([f"pane-head--{self.status}"] if self.status in BADGE_STYLES else [])
        styles = self.get_component_styles(*names)
        background, color = styles.background, styles.color
        if styles.auto_color:
            color = background.get_contrast_text(color.a)
        padding = Style(bgcolor=background.rich_color)
        return padding + Style(color=(background + color).rich_color, bold=True), padding

    def render_line(self, y: int) -> Strip:
        """Its lines made from their few segments (Textual's line API): a head changes every second
        while its agent runs, and a text rendered the usual way went through Textual's text layout,
        ten times the cost of the segments (one frame repaints the heads of every pane on screen)."""
        width = self.size.width
        if self._strips is None or self._strips[0] != width:
            self._strips = (width, self._render_strips(width))
        lines = self._strips[1]
        return lines[y] if 0 <= y < len(lines) else Strip.blank(width, self._part_styles()[0])

    def _part_styles(self) -> tuple[Style, Style, Style, Style, Style]:
        """Its own style, the badge's word and padding, the meta line's and the activity's, kept
        until it is restyled: Textual computes them again after every repaint (walking up to the
        screen for the background), and a head repaints every second."""
        if self._parts is None:
            base = self.rich_style
            badge, padding = self._badge_styles()
            self._parts = (base, base + badge, base + padding,
                           base + self.get_component_rich_style("pane-head--meta"),
                           base + self.get_component_rich_style("pane-head--activity"))
        return self._parts

    def _render_strips(self, width: int) -> list[Strip]:
        """The badge (the status's word on its colours), elapsed time, cost and files; then the
        activity. Each cut to ``width`` with an ellipsis, never wrapped."""
        base, badge, padding, meta, activity = self._part_styles()
        inner = WIDE_BADGES.get(self.status, BADGE_WIDTH) - 2  # a cell of padding each side
        word = self.word[:inner]
        left = (inner - len(word)) // 2
        head = [Segment(" " * (left + 1), padding), Segment(word, badge),
                Segment(" " * (inner - len(word) - left + 1), padding), Segment(" ", base),
                Segment(self.meta, meta)]
        return [_fit(head, width, base), _fit([Segment(self.activity, activity)], width, base)]


def _fit(segments: list[Segment], width: int, style: Style) -> Strip:
    """``segments`` as one line of ``width`` cells: cut with an ellipsis (in the style of the cell
    it replaces) when longer, padded in ``style`` when shorter."""
    strip = Strip(segments)
    if strip.cell_length > width:
        if width < 1:
            return Strip([])
        cut = list(strip.crop(0, width - 1))
        last = cut[-1].style if cut else style
        strip = Strip([*cut, Segment("…", last)])
    return strip.extend_cell_length(width, style)


#: Lines a log keeps rendered (more than a zoomed pane shows on a tall terminal), then starts afresh.
LINE_STRIPS = 512


class QuietLog(Log):
    """A Log whose writes repaint it and never lay out the screen."""

    #: A longer log does not change the pane's size: Log's ``virtual_size`` asks for a layout of the
    #: whole screen on every write (50-150 ms with 16 panes, many times a second while the panes fill
    #: up); here it repaints. The vertical scrollbar is always there and the horizontal one never
    #: (TaskPane's CSS), so no write makes a scrollbar come or go, which would need a layout too.
    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False, repaint=True)

    #: its style (``rich_style``) until it is restyled
    _line_style: Style | None = None

    @property
    def rich_style(self) -> Style:
        """Textual's, kept until the log is restyled: Log asks for it at every line it renders, and
        each time it walks up to the screen for the backgrounds (0.1-0.35 ms: 15 ms for the 43
        lines of a zoomed pane, most of a frame's rendering under a flood). A restyle of the log or
        of one of its containers restyles the log too (``notify_style_update``)."""
        style = self._line_style
        if style is None:
            style = self._line_style = super().rich_style
        return style

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._line_style = None
        self._line_strips = None

    def render_line(self, y: int) -> Strip:
        """A line as one segment in the log's style. Textual's Log makes each line a rich Text (spans,
        a style over them) and renders that, three times the cost, and keeps none of them (it
        caches a line only while text is selected): a zoom renders 43 new lines, a flood's every
        frame the new lines of the panes it repaints, and a new line moves every line on screen up
        a row, which rendered them all again. Selected or highlighted text is Textual's."""
        if self.text_selection is not None or self.highlight:
            return super().render_line(y)
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        style = self.rich_style
        width = self.size.width
        lines = self.lines
        if index >= len(lines):
            return Strip.blank(width, style)
        strip = self._line_strip(lines[index], style)
        return strip.crop_extend(scroll_x, scroll_x + width, style).apply_offsets(scroll_x, index)

    #: the lines rendered lately (``_line_strip``), by their text, in its style until it is restyled
    _line_strips: dict[str, Strip] | None = None

    def _line_strip(self, text: str, style: Style) -> Strip:
        strips = self._line_strips
        if strips is None or len(strips) >= LINE_STRIPS:
            strips = self._line_strips = {}
        strip = strips.get(text)
        if strip is None:
            line = self._process_line(text)
            strip = strips[text] = Strip([Segment(line, style)] if line else [], cell_len(line))
        return strip

    def watch_virtual_size(self, old: Size, new: Size) -> None:
        styles = self.styles
        if styles.overflow_y == "auto" or styles.overflow_x == "auto":
            region = self.scrollable_content_region
            if (old.height > region.height) != (new.height > region.height) or \
                    (old.width > region.width) != (new.width > region.width):
                self.refresh(layout=True)
                return
        if self.show_vertical_scrollbar:
            self.vertical_scrollbar.window_virtual_size = new.height

    def _update_size(self, updates: int, lines: list[str]) -> None:  # type: ignore[override]
        """The widest line, measured here and now. Textual's Log starts a thread worker for it on
        every write: with 16 panes flushed 12 times a second that is ~200 threads and ~600 worker
        state messages a second, which starved the loop under a flood."""
        if lines:
            process = self._process_line
            self._update_maximum_width(updates, max(cell_len(process(line)) for line in lines))


class PaneLog(QuietLog, can_focus=False):
    """The live log of one pane (focus stays on the pane, so keys act on the task)."""

    #: rows of log the pane showed at its last resize
    shown_rows = 0

    def on_resize(self, event: events.Resize) -> None:
        """A pane that gets shorter (the run's end banner, the verify log opening) keeps showing
        its newest line if it showed it: Textual keeps the scroll offset, and later writes follow
        the end only from the end, so the pane stayed above its last lines. One scrolled up stays."""
        rows = self.scrollable_content_region.height
        before, self.shown_rows = self.shown_rows, rows
        if 0 < rows < before and self.scroll_y >= self.virtual_size.height - before:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def _update_size(self, updates: int, lines: list[str]) -> None:  # type: ignore[override]
        """Nothing to measure: a pane never scrolls sideways (``overflow-x: hidden``), so the width
        of its lines does not matter, and a late attach loads 2,000 lines per pane in one write."""

    #: lines being replaced (``replace_lines``): the scrollbar waits for the new ones
    _replacing = False

    def replace_lines(self, lines: Sequence[str]) -> None:
        """Show ``lines`` instead of its own. The scrollbar is told only where the new lines leave
        it: cleared first, it was told of an empty log and then of the new one, and rendered again
        even where it shows the same (a zoom under a flood: a log as long as it gets, at its end)."""
        before = self.virtual_size
        self._replacing = True
        try:
            self.clear()
            self.write_lines(lines)
        finally:
            self._replacing = False
        super().watch_virtual_size(before, self.virtual_size)

    def watch_virtual_size(self, old: Size, new: Size) -> None:
        if not self._replacing:
            super().watch_virtual_size(old, new)


class TaskPane(Vertical, can_focus=True):
    """One task, live: name and agent in the border, its head (status badge, elapsed time, cost,
    files; activity) and its log."""

    #: z zooms a pane on a screen of its own (tui/run_screen.py's ZoomScreen), not with Textual's maximize
    ALLOW_MAXIMIZE = False

    DEFAULT_CSS = """
    TaskPane { border: round $panel-lighten-2; height: 1fr; min-height: 8; padding: 0 1; }
    TaskPane:focus { border: heavy $accent; }
    TaskPane PaneLog { height: 1fr; background: $surface; overflow-x: hidden; overflow-y: scroll;
                       scrollbar-size-horizontal: 0; scrollbar-size-vertical: 1;
                       scrollbar-background: $surface; scrollbar-background-hover: $surface;
                       scrollbar-background-active: $surface; }
    """

    def __init__(self, task_name: str, agent: str = "", max_lines: int = PANE_MAX_LINES, zoomed: bool = False,
                 lines: list[str] | None = None, deferred: bool = False) -> None:
        super().__init__(classes="task-pane")
        self.task_name = task_name
        self.agent = agent
        self.max_lines = max_lines
        #: the zoomed view of a pane of the grid, starting with the ``lines`` that pane showed
        self.zoomed = zoomed
        self._initial_lines = lines or []
        self.border_title = task_name
        self.border_subtitle = agent
        #: its head and log exist from the start (what they show can be read, a zoom can start from
        #: them), mounted with the pane, or by ``fill`` for a pane mounted ``deferred``
        self.head = PaneHead()
        self.log_widget = PaneLog(max_lines=max_lines, auto_scroll=True)
        #: mounted as its border only, its head and log to come (``fill``): a pane off screen when
        #: the grid opens waits for the first frame (at 64 panes, 52 of them: half the first paint)
        self.deferred = deferred
        #: its head and log are mounted and can be written
        self.ready = False
        #: the screen's flush count when its log was last written (flooded panes take turns)
        self.written_at = 0

    def compose(self) -> ComposeResult:
        if not self.deferred:
            yield self.head
            yield self.log_widget

    def on_mount(self) -> None:
        if not self.deferred:
            self._filled()

    def fill(self) -> None:
        """Mount the head and log of a pane mounted ``deferred`` (its border only); it is ready at once."""
        if self.deferred and self.is_attached:
            self.deferred = False
            self.mount_all([self.head, self.log_widget])  # registered and styled now
            self._filled()

    def _filled(self) -> None:
        # its scrollbar styled now, in the layout the mount makes: Textual styles a scrollbar only
        # when its widget is restyled, and the first focus of the pane did, its scrollbar's new
        # size laying out the whole screen. The scrollbar alone: the log was styled at its mount
        # (restyling it again cost as much as styling it, 64 times before the first paint)
        self.app.stylesheet.apply(self.log_widget.vertical_scrollbar)
        if self._initial_lines:
            self.log_widget.write_lines(self._initial_lines)
            self._initial_lines = []
        self.ready = True

    @property
    def shown_lines(self) -> list[str]:
        """The lines it shows, or will show once ready (a deferred pane's, given while it waited)."""
        return list(self.log_widget.lines) if self.ready else list(self._initial_lines)

    def take_lines(self, lines: Sequence[str]) -> None:
        """Show ``lines`` instead of its own (a zoomed view's, given back); kept until it is ready."""
        if self.ready:
            self.log_widget.replace_lines(lines)
        else:
            self._initial_lines = list(lines)

    def show_task_of(self, other: "TaskPane") -> None:
        """Show the task of ``other`` and its lines from now on (a zoomed view, moved to another task)."""
        if (self.task_name, self.agent) != (other.task_name, other.agent):
            # (a border set again, even to the same, renders the pane's every line again)
            self.task_name = self.border_title = other.task_name
            self.agent = self.border_subtitle = other.agent
        self.written_at = 0
        self.take_lines(other.shown_lines)

    def show(self, view: TaskView, now: float) -> None:
        """Bring the header line up to date with ``view`` (cheap when nothing changed)."""
        agent = view.agent + (" · sandboxed" if view.sandbox.startswith("bwrap") else "")
        if view.agent and agent != self.agent:
            self.agent = agent
            self.border_subtitle = agent
        elapsed = view.elapsed(now)
        live = view.ended is None and view.duration is None
        parts = [fmt_elapsed(elapsed, live) if elapsed is not None else "-"]
        parts.append(fmt_cost(view.cost) if view.cost is not None else "$-")
        if view.files is not None:
            parts.append(f"{view.files} file{'s' if view.files != 1 else ''} (+{view.added} -{view.removed})")
        else:
            parts.append("files -")
        activity = (view.reason if view.finished and view.reason else view.activity) or ""
        self.head.set(view.status, " · ".join(parts), activity)


def fit_path(path: str, width: int) -> str:
    """``path`` in ``width`` cells, its start cut off if need be: the end of a path says the most."""
    if width <= 1 or cell_len(path) <= width:
        return path
    return "…" + path[-(width - 1):]


#: The width of the run header's counts, time and cost ("64/64 done", "1m05s · $1.23"): fixed, so a
#: longer text does not lay the screen out; a text that does not fit widens it (a few times at most).
STATS_WIDTH = 14


class RunHeader(Horizontal):
    """Run id, base and phase; the repository; a progress bar (tasks finished / total; hidden when
    narrow: the count says it too), elapsed time and cost. Lines are cut, never wrapped: a wrapped
    line lost its spaces and glued the run id to the next word."""

    DEFAULT_CSS = """
    RunHeader { height: 2; background: $boost; padding: 0 1; }
    RunHeader #run-info { width: 1fr; }
    RunHeader #run-progress { width: 24; padding: 0 1; }
    RunHeader #run-progress Bar { width: 20; }
    RunHeader.-narrow #run-progress { display: none; }
    RunHeader #run-stats { width: %d; text-align: right; }
    """ % STATS_WIDTH

    #: Below this width the progress bar goes.
    NARROW = 110

    def compose(self) -> ComposeResult:
        yield Static("", id="run-info")
        yield ProgressBar(total=1, show_eta=False, show_percentage=False, id="run-progress")
        yield Static("", id="run-stats")

    def on_mount(self) -> None:
        self._info = self.query_one("#run-info", Static)
        self._bar = self.query_one(ProgressBar)
        self._stats = self.query_one("#run-stats", Static)
        self._last: list = [None, None, None]
        self._stats_width = STATS_WIDTH
        self.ready = True

    def on_resize(self) -> None:
        self.set_class(self.size.width < self.NARROW, "-narrow")
        self._last[0] = None  # the repository's path is cut to the new width

    def show(self, model: RunModel, now: float) -> None:
        if not getattr(self, "ready", False):
            return
        info = Text(no_wrap=True, overflow="ellipsis")
        info.append("run ", style="dim")
        info.append(model.run or "-", style="bold")
        info.append("  base ", style="dim")
        info.append(model.base or "-")
        if model.base_commit:
            info.append(f" @ {model.base_commit[:8]}", style="dim")
        info.append("  phase ", style="dim")
        info.append(model.phase, style="bold reverse" if model.phase not in ("done",) else "bold")
        info.append("\n")
        info.append("repo ", style="dim")
        info.append(fit_path(model.repo or "-", self._info.size.width - 5))
        if info.plain != self._last[0]:
            self._last[0] = info.plain
            self._info.update(info, layout=False)
        progress = (max(model.total, 1), model.done_count)
        if progress != self._last[1]:
            self._last[1] = progress
            self._bar.update(total=progress[0], progress=progress[1])
        cost = model.total_cost
        stats = (f"{model.done_count}/{model.total} done\n{fmt_elapsed(model.elapsed(now), model.ended is None)} · "
                 f"{fmt_cost(cost) if cost is not None else '$-'}")
        if stats != self._last[2]:
            # a repaint: its width is fixed (a width that followed the text laid the whole screen
            # out when the count reached 10 or the time a minute, 100-180 ms at 64 panes)
            self._last[2] = stats
            width = max(cell_len(line) for line in stats.split("\n"))
            if width > self._stats_width:
                self._stats_width = width + 2  # room for the next digit
                self._stats.styles.width = self._stats_width
            self._stats.update(stats, layout=False)


class FitFooter(Footer):
    """Textual's footer, compact and without the palette hint on a narrow terminal (ctrl+p still
    opens the palette): at 80 columns the full one cut off ``e`` and ``q``."""

    #: Narrower than this, the footer is compact.
    NARROW = 120

    _shown: tuple | None = None

    def __init__(self) -> None:
        """Compact or not for the terminal's width now (it spans the screen): a footer whose keys
        are made before its first resize (the zoom screen's, made ahead of the first zoom) makes
        them the right way, and its first resize changes nothing."""
        narrow = self.app.size.width < self.NARROW
        super().__init__(compact=narrow, show_command_palette=not narrow)

    def bindings_changed(self, screen: Screen) -> None:
        """Rebuilt only when the keys it shows changed. Textual rebuilds it whenever the screen's
        bindings may have (every focus change, zoom, Tab to the next pane): some 20 widgets mounted
        and a layout of the whole screen, for the same keys most of the time."""
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            shown = tuple((key, binding.action, binding.description, enabled, tooltip)
                          for key, (_, binding, enabled, tooltip) in screen.active_bindings.items() if binding.show)
            if shown == self._shown:
                return
            before, self._shown = self._shown, shown
            if before is not None and self._toggle_in_place(before, shown):
                return
        super().bindings_changed(screen)

    def compose(self) -> ComposeResult:
        """Textual's keys, each made compact or not as it will be once mounted: a key is made
        compact and bound to the footer's ``compact``, and at its mount it was restyled twice to be
        made the footer's way (some 20 keys, 25-60 ms before the first paint, and again at each
        rebuild)."""
        for widget in super().compose():
            if isinstance(widget, FooterKey):
                # bound to the footer's (the palette's key is not: it keeps its own default)
                bound = "compact" in (widget._reactive_connect or {})
                compact = self.compact if bound else bool(FooterKey.compact._default)
                widget.set_reactive(FooterKey.compact, compact)
                widget.set_class(compact, "-compact", update=False)
            yield widget

    def _toggle_in_place(self, before: tuple, shown: tuple) -> bool:
        """The same keys, only some enabled or disabled now (a task finished, the focus moved to a
        pane in another state): restyle those keys where they are, a repaint of the footer, where
        a rebuild would cost a layout of the whole screen. False when the keys themselves changed."""
        if [(k, a, d, t) for k, a, d, _, t in before] != [(k, a, d, t) for k, a, d, _, t in shown]:
            return False
        enabled = {(key, action): on for key, action, _, on, _ in shown}
        for widget in self.query(FooterKey):
            on = enabled.get((widget.key, widget.action))
            if on is not None and on == widget._disabled:
                widget._disabled = not on  # what its click checks
                widget.set_class(not on, "-disabled")
        return True

    def on_resize(self, event: events.Resize) -> None:
        """Compact, and without the palette's key, when narrow. Its keys made already (a footer
        made before its first resize: the zoom screen's, made ahead of the first zoom; a terminal
        made narrower or wider) are made again: the palette's key comes or goes only with them."""
        narrow = event.size.width < self.NARROW
        self.compact = narrow
        if self.show_command_palette == narrow:
            self.show_command_palette = not narrow
            if self.children:
                self.call_after_refresh(self.recompose)
