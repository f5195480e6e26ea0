"""The run screen: a header, one pane per task in a grid that adapts to the width, the verify pane
and a collapsible event log. Actions reach the engine only through the app's control methods."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import events
from textual._compositor import ChopsUpdate, Compositor
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, VerticalScroll
from textual.geometry import Region, Size
from textual.screen import Screen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Collapsible, Log, Static

from .model import RunModel
from .widgets import FitFooter, ForwardsWorkerErrors, QuietLog, RunHeader, TaskPane

if TYPE_CHECKING:
    from corral.core.events import RunFinished

    from .dashboard import CorralApp

#: Narrowest a pane gets before the grid drops a column.
PANE_MIN_WIDTH = 52
#: A pane's height when not all of them fit (the grid scrolls) ...
PANE_HEIGHT = 12
#: ... and the least it gets, even on a short terminal (its border, head line, activity, 4 of log).
PANE_MIN_HEIGHT = 8
#: Narrower than this the footer shows only the keys that can act now; shorter than this the verify
#: and event logs take fewer lines (80x24 keeps a whole pane on screen after landing).
NARROW_WIDTH = 120
SHORT_HEIGHT = 40
#: Most lines one pane takes per flush (12 a second); under a flood the older ones are only on disk.
FLUSH_CAP = 150
#: A pane with this many new lines at a flush is flooded: its whole view changes at every flush.
FLOOD_LINES = 40
#: Flooded panes repainted per flush (the rest wait a flush or three): 4 of 16 keeps a frame to about
#: a quarter of the rendering, and each flooded pane still moves three times a second.
FLOODS_PER_FLUSH = 4
#: Panes off screen are written (their first lines, or their lines once their agent ended) together,
#: at most once every this many flushes (a second), or at once when no agent runs any more: a flush
#: that writes a widget off screen makes Textual rebuild its map of every widget (20-300 ms at 64
#: panes under load), and agents end one by one.
OFF_SCREEN_EVERY = 12


def _freeze_heap() -> None:
    """Move what exists now (modules, Textual, the screen and its panes: some 100,000 objects) out
    of the garbage collector's sight. Under a flood the oldest generation is collected every second
    or so, and walking those objects each time made 50-100 ms stalls; they live as long as the app."""
    gc.freeze()


#: Actions whose availability (check_action) depends on the run and the focused pane.
_STATEFUL_ACTIONS = ("zoom", "abort", "abort_all", "discard", "followup", "unqueue", "retry", "review", "shell",
                     "pager")


def finished_banner(fin: "RunFinished", repo: str) -> Text:
    """The line over the panes once the run is over: outcome, where unmerged work is, the report
    (paths inside the repository shown from it: the header names the repository)."""
    text = Text()
    text.append(f" run {fin.state} ", style="bold reverse")
    text.append(f" exit code {fin.exit_code}")
    if fin.kept_branches:
        text.append(f" · work kept on {', '.join(fin.kept_branches)}")
    if fin.report:
        report = fin.report
        if repo and report.startswith(repo.rstrip("/") + "/"):
            report = report[len(repo.rstrip("/")) + 1:]
        text.append(f" · report {report}")
    text.append(" · q quits", style="dim")
    return text


class PanesScroll(VerticalScroll, can_focus=False, inherit_bindings=False):
    """Scrolls the grid when there are more panes than fit; focus goes to the panes. None of a
    scroll container's keys: its up and down came before the run screen's and scrolled the grid a
    line, the focus staying where it was (the grid scrolls to the pane the arrows focus)."""


class StyledOnce:
    """A screen restyled at a push only when the app's CSS changed since it was styled (a new
    theme). Textual restyles a pushed screen and all it holds at every push: at the run screen's
    first push, the nodes it had just styled as they were mounted (20 nodes, 10-30 ms before the
    first paint); at every zoom, the zoom screen (15-35 ms under a flood, for the same styles). It
    refreshes the screens in its stack itself when the CSS changes, not one that is not in it.
    Runs before Textual's handler, which reads ``refresh_styles``."""

    app: Any
    #: the app's count of CSS changes when this screen was last styled (set when it is made: its
    #: nodes are styled as they are mounted, after that)
    _styled_at: int | None = None

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        count = self.app._css_update_count
        if count == self._styled_at:
            event.refresh_styles = False
        self._styled_at = count


@contextmanager
def gc_held() -> Iterator[None]:
    """The garbage collector off inside (its collections wait until after), as it was after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def draw_now(screen: Screen) -> None:
    """The frame of ``screen``, just pushed or uncovered, made now (as Textual's update timer
    would: a layout if one is due, then the whole screen, its lines from the widgets' caches).
    Textual makes it three turns of the loop later (the screen's resume message, its idle, its
    update timer), and under a flood each turn of the loop first runs every agent's reader and
    the link: 5-30 ms between the key and its frame. Left to Textual when the terminal's size or
    the styles changed since the screen was laid out or styled: its resume handler does that first."""
    app = screen.app
    if app._batch_count or app.screen is not screen or screen.outer_size != app.size:
        return
    if isinstance(screen, StyledOnce) and screen._styled_at != app._css_update_count:
        return
    screen.refresh()
    screen._on_timer_update()


class KeepsOwnLines:
    """A screen whose own lines (its background, under its widgets) are rendered once per size and
    style. Textual refreshes a screen at every push and pop, which renders them again: new lines,
    that the frame then cuts at every widget's edge, where the lines it kept had those cuts cached
    (at 64 panes, 12 ms of a 24 ms frame of the grid coming back from a zoom). They change only with
    its size (the region asked for) or its styles (``notify_style_update``: a new theme)."""

    #: the region last rendered and its lines
    _own_lines: tuple[Region, list[Strip]] | None = None

    def render_lines(self, crop: Region) -> list[Strip]:
        kept = self._own_lines
        if kept is not None and kept[0] == crop:
            return kept[1]
        lines = super().render_lines(crop)  # type: ignore[misc]
        self._own_lines = (crop, lines)
        return lines

    def notify_style_update(self) -> None:
        super().notify_style_update()  # type: ignore[misc]
        self._own_lines = None


class DirtyOnlyCompositor(Compositor):
    """A compositor whose partial updates render only the widgets that overlap a region to update.
    Textual's renders every visible widget inside the rectangle around all of those regions: the
    header's clock at the top and a pane at the bottom made every frame of a flood render the whole
    screen (35 widgets a frame at 64 panes, where 4 panes and the header had changed). The lines it
    writes are the same: only what lies in those regions is written, and the frontmost widget at any
    point of one overlaps it, so it is rendered."""

    #: the regions of the partial update being rendered (None: any other render, as Textual's)
    _only: list[Region] | None = None

    def render_partial_update(self) -> ChopsUpdate | None:
        self._only = list(self._dirty_regions)
        try:
            return super().render_partial_update()
        finally:
            self._only = None

    def _get_renders(self, crop: Region | None = None) -> Iterable[tuple[Region, Region, list[Strip]]]:
        only = self._only
        if only is None:
            yield from super()._get_renders(crop)
            return
        # (Textual's, of the widgets that overlap a region to update)
        for widget, (region, clip) in self.visible_widgets.items():
            shown = region.intersection(clip)
            if shown.area and any(shown.overlaps(dirty) for dirty in only):
                x, y, width, height = shown
                yield region, clip, widget.render_lines(Region(x - region.x, y - region.y, width, height))


def breakpoint_classes(screen: Screen, size: Size) -> set[str]:
    """The classes Textual gives ``screen`` at a resize to ``size`` by the breakpoints (its own, or
    the app's): given before its first resize, that resize changes none and restyles nothing."""
    app = screen.app
    horizontal = screen.HORIZONTAL_BREAKPOINTS if screen.HORIZONTAL_BREAKPOINTS is not None \
        else app.HORIZONTAL_BREAKPOINTS
    vertical = screen.VERTICAL_BREAKPOINTS if screen.VERTICAL_BREAKPOINTS is not None else app.VERTICAL_BREAKPOINTS
    classes = set()
    for points, extent in ((horizontal or [], size.width), (vertical or [], size.height)):
        for at, name in sorted(points, reverse=True):
            if extent >= at:
                classes.add(name)
                break
    return classes


class RunScreen(StyledOnce, KeepsOwnLines, ForwardsWorkerErrors, Screen):
    """Watch a run live; abort, discard, zoom, open a shell or the full log of the focused task."""

    CSS_PATH = "run_screen.tcss"
    #: a pane, never a collapsible log's title (the app's "*"): the first pane is focused once there
    #: are panes (``_focus_first``), and the title's ``enter`` took the zoom's place in the footer
    AUTO_FOCUS = "TaskPane"

    BINDINGS = [
        Binding("tab", "focus_pane(1)", "Next pane", show=False, id="run.next"),
        Binding("shift+tab", "focus_pane(-1)", "Previous pane", show=False, id="run.prev"),
        Binding("right", "focus_side(1)", "Pane to the right", show=False, id="run.right"),
        Binding("left", "focus_side(-1)", "Pane to the left", show=False, id="run.left"),
        Binding("down", "focus_row(1)", "Pane below", show=False, id="run.down"),
        Binding("up", "focus_row(-1)", "Pane above", show=False, id="run.up"),
        Binding("z,enter", "zoom", "Zoom", tooltip="Zoom the focused pane to full screen and back", id="run.zoom"),
        Binding("a", "abort", "Abort", tooltip="Stop the focused agent (TERM, then KILL)", id="run.abort"),
        Binding("A", "abort_all", "Abort all", tooltip="Stop every agent", id="run.abort_all"),
        Binding("d", "discard", "Discard", tooltip="Delete the focused task's workspace and work", id="run.discard"),
        Binding("f", "followup", "Follow up", tooltip="Send the focused task's agent a message", id="run.followup"),
        Binding("x", "unqueue", "Cancel queued", show=False, id="run.unqueue",
                tooltip="Take back the messages queued for the focused task's agent"),
        Binding("R", "retry", "Retry", tooltip="A new attempt of the focused failed or aborted task", id="run.retry"),
        Binding("r", "review", "Review", tooltip="Review diffs and approve merges", id="run.review"),
        Binding("o", "shell", "Shell", tooltip="Open $SHELL in the focused workspace", id="run.shell"),
        Binding("l", "pager", "Full log", tooltip="Open the focused task's full log in $PAGER", id="run.log"),
        Binding("e", "toggle_events", "Events", tooltip="Show or hide the event log", id="run.events"),
        Binding("q", "app.quit_run", "Quit", tooltip="Quit (asks first: detach, or stop the run)", id="run.quit"),
        Binding("D", "app.detach", "Detach", tooltip="Close the dashboard; the run goes on (corral attach)", id="run.detach"),
    ]

    def __init__(self, model: RunModel) -> None:
        super().__init__()
        self._compositor = DirtyOnlyCompositor()
        self.model = model
        # the classes its first resize gives it (Textual's breakpoints, ``_fit``'s), given now: set
        # at that resize, each restyled the whole screen before the first paint (20-30 ms)
        size = self.app.size
        self.add_class(*breakpoint_classes(self, size), *self._fit_classes(*size), update=False)
        self._styled_at = self.app._css_update_count
        self.panes: dict[str, TaskPane] = {}
        self._columns = 0
        self._row_height = 0
        self._grid_height = 0
        self._scroll_height = 0
        self._binding_key: tuple = ()
        self._flushes = 0
        self._off_screen_at = -OFF_SCREEN_EVERY  # the flush that last wrote panes off screen
        self._ready = False
        #: the zoom screen while a pane is zoomed; and the one screen every zoom uses (installed: a
        #: screen popped and removed costs a layout of the screen under it)
        self._zoom: ZoomScreen | None = None
        self._zoom_screen: ZoomScreen | None = None
        self._zoom_ahead = False  # its making ahead of the first zoom is under way
        #: panes mounted as their border only, to be filled (``_fill_deferred``), and whether a
        #: fill waits for the next frame
        self._deferred: list[TaskPane] = []
        self._filling = False

    @property
    def corral(self) -> "CorralApp":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield RunHeader()
        yield Static("", id="run-banner")
        with PanesScroll(id="panes-scroll"):
            yield Container(id="panes")
        with Collapsible(title="Verify", id="verify-box", collapsed=False):
            yield QuietLog(max_lines=self.model.max_lines, id="verify-log")
        with Collapsible(title="Events", id="events-box", collapsed=True):
            yield QuietLog(max_lines=self.model.max_lines, id="event-log")
        yield FitFooter()

    def on_mount(self) -> None:
        self.query_one("#verify-box").display = False
        self.query_one("#run-banner").display = False
        # looked up once: a query walks the whole DOM, and flush runs 12 times a second
        self._scroll = self.query_one("#panes-scroll")
        self._event_log = self.query_one("#event-log", Log)
        self._verify_log = self.query_one("#verify-log", Log)
        self._verify_box = self.query_one("#verify-box", Collapsible)
        self._events_box = self.query_one("#events-box", Collapsible)
        self._banner = self.query_one("#run-banner", Static)
        self._header = self.query_one(RunHeader)
        self._fit(*self.app.size)  # its own size is known at its first layout, after its footer is filled

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width, event.size.height)
        if not self._ready:
            # the panes come after the screen's first restyles: its resume restyles all it holds,
            # and this first resize again (Textual gives it the app's breakpoint classes after this
            # handler); mounted before them, 64 panes were styled three times before the first paint
            self._ready = True
            self.call_later(self.flush)

    @staticmethod
    def _fit_classes(width: int, height: int) -> list[str]:
        return (["-narrow"] if width < NARROW_WIDTH else []) + (["-short"] if height < SHORT_HEIGHT else [])

    def _fit(self, width: int, height: int) -> None:
        classes = self._fit_classes(width, height)
        self.set_class("-narrow" in classes, "-narrow")
        self.set_class("-short" in classes, "-short")
        self._layout_grid(width)

    def _layout_grid(self, width: int) -> None:
        """As many columns as fit (at least PANE_MIN_WIDTH each); rows fill the height when every
        pane fits with PANE_MIN_HEIGHT lines, else the grid scrolls with rows of PANE_HEIGHT (or
        half the height on a short terminal, so two rows show)."""
        count = max(len(self.panes), 1)
        columns = max(1, min(count, width // PANE_MIN_WIDTH))
        rows = -(-count // columns)
        height = self.query_one("#panes-scroll").size.height
        if not height:
            row_height = PANE_HEIGHT
        elif height // rows >= PANE_MIN_HEIGHT:
            row_height = height // rows
        else:
            row_height = max(PANE_MIN_HEIGHT, min(PANE_HEIGHT, height // 2))
        # the grid's height said here: of a height ``auto``, Textual arranged the whole grid once
        # to measure it and again to place it, at every layout of the screen (64 panes twice)
        grid_height = -(-len(self.panes) // columns) * row_height
        if (columns, row_height, grid_height) != (self._columns, self._row_height, self._grid_height):
            self._columns, self._row_height, self._grid_height = columns, row_height, grid_height
            grid = self.query_one("#panes")
            grid.styles.grid_size_columns = columns
            grid.styles.grid_rows = str(row_height)
            grid.styles.height = grid_height

    # ------------------------------------------------------------------------------ updates
    def flush(self) -> None:
        """Bring widgets up to date with the model (called by the app's one timer)."""
        if not self._ready:
            return
        scroll_height = self._scroll.size.height
        if scroll_height != self._scroll_height:  # the verify pane or the banner came or went
            self._scroll_height = scroll_height
            self._layout_grid(self.size.width)
        model = self.model
        # whole seconds: every elapsed time on screen ticks at the same moment, once a second, so an
        # idle dashboard repaints once a second rather than on every flush
        now = float(math.floor(self.corral.clock()))
        if model.gone_tasks:
            self._remove_panes(model.gone_tasks)
            model.gone_tasks.clear()
        if model.new_tasks:
            new = [name for name in model.new_tasks if name not in self.panes]
            model.new_tasks.clear()
            if new:
                self._mount_panes(new)
        drawn = self.corral.panes_drawn
        fill = bool(self._deferred) and not self._filling
        if (fill or not drawn.is_set()) and self.panes and all(p.ready or p.deferred for p in self.panes.values()):
            # the panes that show are drawn at the next frame: after it, the others get their head
            # and log, and a run that waits for them (``corral run``'s) starts
            if fill:
                self._filling = True
                self.call_after_refresh(self._fill_deferred)
            if not drawn.is_set():
                self.call_after_refresh(drawn.set)
        elif (self._zoom_screen is None and not self._zoom_ahead and drawn.is_set() and self.panes
              and not self._deferred and not self._filling and all(p.ready for p in self.panes.values())):
            # the grid is drawn and every pane filled: the zoom screen is made at the next idle
            self._zoom_ahead = True
            self.call_after_refresh(self._build_zoom_ahead)
        self._flushes += 1
        floods = []
        shown = self._panes_on_screen()
        zoom = self._zoom
        off_screen_turn = self._flushes >= self._off_screen_at + OFF_SCREEN_EVERY or not model.agents_running
        for name, pane in self.panes.items():
            view = model.tasks[name]
            if zoom is not None and pane is zoom.source:
                pane = zoom.pane  # the grid's pane waits under the zoomed one, which shows its task
            if not pane.ready:
                continue
            on_screen = shown is None or pane in shown
            if view.pending:
                if not on_screen and ((view.agent_running and pane.written_at) or not off_screen_turn):
                    # off screen (scrolled away, or under a zoomed pane): its lines wait until it
                    # shows or its agent ends, so a write's cost never depends on how many panes
                    # there are; then they wait for the turn of the panes off screen
                    pass
                # a pane's first lines (a late attach's history, an agent's first burst) are shown at
                # once: it has nothing on screen yet, and a first paint waiting for a turn is slow
                elif (view.agent_running and len(view.pending) >= FLOOD_LINES and not pane.zoomed
                        and pane.written_at):
                    floods.append(pane)
                else:
                    self._write(pane, view)
                    if not on_screen:
                        self._off_screen_at = self._flushes
            if on_screen:
                # a pane off screen shows its status when it comes on screen: Textual takes a change
                # to a widget off screen for a new widget and rebuilds its map of every widget
                pane.show(view, now)
        # a flood replaces a pane's whole view at every flush; repaint a few of them per flush, the
        # ones that waited longest, so one frame never renders every flooding pane at once
        floods.sort(key=lambda p: p.written_at)
        for pane in floods[:FLOODS_PER_FLUSH]:
            self._write(pane, model.tasks[pane.task_name])
        if model.log_pending and self._event_log.is_attached and not self._events_box.collapsed:
            # the closed log is written when it opens (its lines wait in the model, as many as it keeps)
            lines, model.log_pending = model.log_pending, []
            self._event_log.write_lines(lines)
        if model.verify_pending and self._verify_log.is_attached:
            lines, model.verify_pending = model.verify_pending, []
            self._verify_log.write_lines(lines)
        if model.verify_started:
            box = self._verify_box
            if not box.display:
                box.display = True
            result = model.verify_result
            title = "Verify: running" if result is None else (
                f"Verify: {'PASSED' if result.ok else 'FAILED'} (exit {result.exit_code})")
            if box.title != title:
                box.title = title
                if result is not None and result.ok and self.has_class("-short"):
                    box.collapsed = True  # passed: the title says so, and the panes need the lines
        self._header.show(model, now)
        if model.finished is not None:
            banner = self._banner
            if not banner.display:
                banner.update(finished_banner(model.finished, model.repo))
                banner.set_class(model.finished.exit_code != 0, "-failed")
                banner.display = True
        model.dirty.clear()
        self._refresh_bindings_if_changed()

    def _mount_panes(self, names: list[str]) -> None:
        """Mount a pane for each task of ``names``, in one batch; those that land off screen as
        their border only (``TaskPane.deferred``), filled after the next frame (``_fill_deferred``)."""
        model = self.model
        added = []
        for name in names:
            pane = TaskPane(name, model.tasks[name].agent, max_lines=model.max_lines)
            self.panes[name] = pane
            added.append(pane)
        self._layout_grid(self.size.width)  # the rows and columns the new count takes
        shown = self._panes_on_screen()
        if shown is not None:
            for pane in added:
                if pane not in shown:
                    pane.deferred = True
                    self._deferred.append(pane)
        self.query_one("#panes").mount_all(added)
        if self.focused_pane is None:
            self.call_after_refresh(self._focus_first)
        self.call_after_refresh(_freeze_heap)

    def _remove_panes(self, names: list[str]) -> None:
        """Take away the panes of ``names`` (tasks shown before the run started that it turned out
        not to have), and lay the grid out for the panes left."""
        gone = [pane for name in names if (pane := self.panes.pop(name, None)) is not None]
        for pane in gone:
            if pane in self._deferred:
                self._deferred.remove(pane)
            if self._zoom is not None and self._zoom.source is pane:
                self.action_zoom()  # back to the grid: the zoomed task is no more
        if gone:
            self.query_one("#panes").remove_children(gone)
            self._layout_grid(self.size.width)

    def _fill_deferred(self) -> None:
        """Fill the panes mounted deferred, all in one batch: each batch lays out the whole screen."""
        self._filling = False
        deferred, self._deferred = self._deferred, []
        for pane in deferred:
            pane.fill()
        self.call_after_refresh(_freeze_heap)

    def _panes_on_screen(self) -> set[TaskPane] | None:
        """The panes that show now (None: all of them, or it can't be told yet): the zoomed one, or
        the rows of the grid inside the scrolled window (from the grid's own geometry: asking Textual
        where an off-screen widget is rebuilds its map of every widget)."""
        if self._zoom is not None:
            return {self._zoom.pane}
        height, row = self._scroll.size.height, self._row_height
        if not height or not row or self._columns < 1:
            return None
        top = int(self._scroll.scroll_offset.y)
        first, last = top // row, (top + height - 1) // row
        return set(list(self.panes.values())[first * self._columns:(last + 1) * self._columns])

    def _write(self, pane: TaskPane, view) -> None:
        lines, view.pending = view.pending, []
        # the first write takes all that is pending (up to the pane's max lines: a late attach's
        # history, in one go); later ones FLUSH_CAP
        cap = FLUSH_CAP if pane.written_at else len(lines)
        skipped = view.dropped + max(0, len(lines) - cap)
        if skipped:
            # a flood: show the newest lines; the full log is on disk (l opens it)
            view.dropped = 0
            lines = [f"[... {skipped} lines not shown here; l opens the full log]", *lines[-cap:]]
        pane.log_widget.write_lines(lines)
        pane.written_at = self._flushes

    def _refresh_bindings_if_changed(self) -> None:
        """Rebuild the footer only when what a key can do changed: a rebuilt footer costs a layout
        of the whole screen (30-60 ms with 16 panes), and a pane's status changes four or five
        times in a run without changing its keys most of those times."""
        key = tuple(self.check_action(action, ()) for action in _STATEFUL_ACTIONS)
        if key != self._binding_key:
            self._binding_key = key
            self.refresh_bindings()
            if self._zoom is not None:
                self._zoom.refresh_bindings()  # its footer shows these keys

    def _focus_first(self) -> None:
        if self.focused_pane is None and self.panes and self.app.screen is self:
            next(iter(self.panes.values())).focus()

    # ------------------------------------------------------------------------------- focus
    @property
    def focused_pane(self) -> TaskPane | None:
        widget = self.focused
        while widget is not None and not isinstance(widget, TaskPane):
            parent = widget.parent
            widget = parent if isinstance(parent, Widget) else None
        return widget if isinstance(widget, TaskPane) else None

    @property
    def focused_task(self) -> str | None:
        pane = self.focused_pane
        return pane.task_name if pane else None

    def _go(self, target: TaskPane) -> None:
        if self._zoom is not None:
            self._zoom.give_back()
            self._zoom.show_pane(target)
        target.focus()
        target.scroll_visible()

    def _current(self, panes: list[TaskPane]) -> int | None:
        cur = self.focused_pane
        return panes.index(cur) if cur is not None and cur in panes else None

    def action_focus_pane(self, delta: int) -> None:
        """Tab order: the next (or previous) pane, round the end to the start."""
        panes = list(self.panes.values())
        if not panes:
            return
        idx = self._current(panes)
        self._go(panes[0 if delta > 0 else -1] if idx is None else panes[(idx + delta) % len(panes)])

    def action_focus_side(self, delta: int) -> None:
        """The pane beside the focused one in its row; none past the row's end (no wrap to the next row)."""
        panes = list(self.panes.values())
        idx = self._current(panes)
        if idx is None:
            self.action_focus_pane(delta)
            return
        columns = max(self._columns, 1)
        col = idx % columns + delta
        if 0 <= col < columns and idx + delta < len(panes):
            self._go(panes[idx + delta])

    def action_focus_row(self, delta: int) -> None:
        """The pane above or below: the one in the same column, or the nearest one when that row
        is shorter (the last row of a grid that is not full)."""
        panes = list(self.panes.values())
        idx = self._current(panes)
        if idx is None:
            self.action_focus_pane(delta)
            return
        columns = max(self._columns, 1)
        row = idx // columns + delta
        if row < 0 or row * columns >= len(panes):
            return
        self._go(panes[min(row * columns + idx % columns, len(panes) - 1)])

    # ------------------------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        able = self._able(action)
        # a narrow footer has no room for keys that cannot act now: hidden there, dimmed elsewhere
        return False if able is None and self.has_class("-narrow") else able

    def _able(self, action: str) -> bool | None:
        app = self.corral
        name = self.focused_task
        view = self.model.tasks.get(name) if name else None
        if action == "zoom":
            return True if (view is not None or self._zoom is not None) else None
        if action == "abort":
            return True if (app.can_control and view is not None and not view.finished) else None
        if action == "abort_all":
            return True if (app.can_control and any(not t.finished for t in self.model.tasks.values())) else None
        if action == "discard":
            ok = (app.can_control and view is not None and bool(view.workspace)
                  and view.status not in ("merged", "discarded", "creating")
                  and self.model.phase in ("running", "review") and self.model.finished is None)
            return True if ok else None
        if action == "followup":  # in the review: changes requested (the review comes back)
            ok = (app.can_control and view is not None and view.status not in ("merged", "discarded")
                  and (self.model.phase == "running" or app.review_pending) and self.model.finished is None)
            return True if ok else None
        if action == "unqueue":
            return True if (app.can_control and view is not None and not view.finished) else None
        if action == "retry":
            ok = (app.can_control and view is not None and view.status in ("failed", "aborted")
                  and self.model.phase in ("running", "review") and self.model.finished is None)
            return True if ok else None
        if action == "review":
            return True if app.review_waiting else None
        if action == "shell":  # a workspace put away is re-opened from its branch
            reopen = (app.can_control and view is not None and bool(view.workspace) and view.finished
                      and view.status not in ("merged", "discarded") and self.model.finished is None)
            return True if (view is not None and (app.workspace_dir(name) is not None or reopen)) else None
        if action == "pager":
            return True if (name is not None and app.log_file(name) is not None) else None
        return True

    @property
    def zoomed(self) -> TaskPane | None:
        """The grid's pane shown zoomed (on a screen of its own over this one), or None."""
        return self._zoom.source if self._zoom is not None else None

    def action_zoom(self) -> None:
        """The focused pane over the whole screen, and back. The zoom is a screen of its own over
        this one: the grid stays as it is under it, neither hidden nor laid out again (Textual's
        maximize hid and showed every other widget, some 450 at 64 panes, in two layouts of the
        whole screen: 100-400 ms under a flood). Its frame is made here (``draw_now``), the
        garbage collector held off until it is shown: rendering a frame allocates a lot, and a
        collection of the oldest generation that started in it (20-50 ms under a flood, one a
        second or so) came before the frame."""
        with gc_held():
            self._toggle_zoom()

    def _toggle_zoom(self) -> None:
        zoom = self._zoom
        if zoom is not None:
            self._zoom = None
            zoom.give_back()
            if self.app.screen is zoom:
                self.app.pop_screen()
                draw_now(self)
            return
        pane = self.focused_pane
        if pane is None:
            return
        zoom = self._zoom_screen
        if zoom is None:
            zoom = self._zoom_screen = ZoomScreen(self, pane)
            self.app.install_screen(zoom, f"corral-zoom-{id(self)}")
        else:
            zoom.show_pane(pane)
        self._zoom = zoom
        self.app.push_screen(zoom)
        draw_now(zoom)

    def _build_zoom_ahead(self) -> None:
        """The zoom screen made before the first zoom, once the grid is drawn: composed, mounted and
        laid out at the terminal's size off the screen stack, its lines rendered once. Made at the
        first ``z``, it took that press 2-3 times as long as the later ones (its widgets mounted
        and styled, two layouts, every line rendered: 70-240 ms under a flood)."""
        if self._zoom_screen is not None or not self.panes or not self.is_attached:
            return
        first = next(iter(self.panes.values()))
        zoom = self._zoom_screen = ZoomScreen(self, first, ahead=True)
        # its head as the first pane's now: mounted with that status's colours, not restyled at a
        # zoom to a pane in the same state
        zoom.pane.show(self.model.tasks[first.task_name], float(math.floor(self.corral.clock())))
        self.app.install_screen(zoom, f"corral-zoom-{id(self)}")
        self.app._get_screen(zoom)  # registered: composed and mounted as a push does, not shown
        zoom.call_after_refresh(zoom.settle_ahead)

    def _screen_resized(self, size: Size) -> None:
        """Textual's, without a layout when the size is the one laid out: a screen pushed over this
        one (a zoom, a question) lays out the screens under it at its first resize, as if the
        terminal had changed (60-200 ms at 64 panes)."""
        if size != self.outer_size:
            super()._screen_resized(size)

    def on_unmount(self) -> None:
        """Back to the home screen: the zoom screen goes too (the app's exit removes it itself)."""
        zoom = self._zoom_screen
        if zoom is not None and zoom not in self.app.screen_stack:
            self.app.uninstall_screen(zoom)
            zoom.remove()

    def action_abort(self) -> None:
        name = self.focused_task
        if name:
            self.corral.confirm_abort(name)

    def action_abort_all(self) -> None:
        self.corral.confirm_abort_all()

    def action_discard(self) -> None:
        name = self.focused_task
        if name:
            self.corral.confirm_discard(name)

    def action_followup(self) -> None:
        name = self.focused_task
        if name:
            self.corral.ask_follow_up(name)

    def action_unqueue(self) -> None:
        name = self.focused_task
        if name:
            self.corral.cancel_queued(name)

    def action_retry(self) -> None:
        name = self.focused_task
        if name:
            self.corral.ask_retry(name)

    def action_review(self) -> None:
        self.corral.open_review()

    async def action_shell(self) -> None:
        name = self.focused_task
        if name:
            await self.corral.open_shell(name)

    async def action_pager(self) -> None:
        name = self.focused_task
        if name:
            await self.corral.open_pager(name)

    def action_toggle_events(self) -> None:
        box = self._events_box
        box.collapsed = not box.collapsed


class ZoomScreen(StyledOnce, KeepsOwnLines, ForwardsWorkerErrors, Screen):
    """One task's pane over the whole screen, above the run screen's grid. Its keys are the run
    screen's, acting on the zoomed task (the grid's pane keeps the run screen's focus); Tab and the
    arrows zoom the next pane; z, enter or escape go back."""

    AUTO_FOCUS = "TaskPane"
    BINDINGS = [*RunScreen.BINDINGS, Binding("escape", "zoom", "Back", show=False, id="zoom.back")]

    def __init__(self, run: RunScreen, source: TaskPane, ahead: bool = False) -> None:
        super().__init__()
        self.run = run
        self.source = source
        #: made ahead of the first zoom (``RunScreen._build_zoom_ahead``): its pane starts empty
        #: (the zoom gives it the lines of the pane it shows)
        self.pane = self._pane_of(source, lines=not ahead)
        self.add_class(*breakpoint_classes(self, self.app.size), update=False)  # as the run screen
        self._styled_at = self.app._css_update_count
        #: made ahead, it is laid out and rendered (``settle_ahead``)
        self.settled = False

    def compose(self) -> ComposeResult:
        yield self.pane
        yield FitFooter()

    @staticmethod
    def _pane_of(source: TaskPane, lines: bool = True) -> TaskPane:
        """A pane of the task of ``source`` with the lines it shows: new lines come to it from the
        run screen's flush while it is zoomed."""
        return TaskPane(source.task_name, source.agent, max_lines=source.max_lines, zoomed=True,
                        lines=source.shown_lines if lines else None)

    def settle_ahead(self, rounds: int = 4) -> None:
        """Made ahead of its first push: laid out at the terminal's size and rendered once, off
        screen (thrown away), so that the push finds its layout done and its lines cached. Again
        after the next idle while its widgets still ask for a layout (its footer's keys come
        after its first layout), a few rounds at most."""
        if not self.is_attached or self.is_current:
            return
        if self._layout_required or self._layout_widgets or self.outer_size != self.app.size:
            self._refresh_layout(self.app.size)
            self._layout_required = False
            self._compositor.render_update(full=True)
            if rounds > 1:
                self.call_after_refresh(self.settle_ahead, rounds - 1)
                return
        _freeze_heap()  # its widgets live as long as the run screen, as the panes do
        self.settled = True

    def show_pane(self, source: TaskPane) -> None:
        """Zoom another pane of the grid (Tab, the arrows; the next zoom): the same pane, showing
        that one's task and lines."""
        self.source = source
        self.pane.show_task_of(source)
        self.pane.show(self.run.model.tasks[source.task_name], float(math.floor(self.run.corral.clock())))

    def give_back(self) -> None:
        """The lines written here while zoomed, to the grid's pane (its own waited)."""
        if self.pane.written_at:
            self.source.take_lines(self.pane.log_widget.lines)
            self.source.written_at = self.run._flushes

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.run.check_action(action, parameters)

    def __getattr__(self, name: str) -> object:
        """The run screen's actions (abort, follow up, Tab...) are this screen's too."""
        if name.startswith("action_"):
            return getattr(self.run, name)
        raise AttributeError(name)
