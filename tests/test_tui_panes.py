"""The panes' cost and their last lines: a late attach's history, panes off screen, the run's end
reaching a client that was busy, and a footer rebuilt only when its keys change."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from textual import events
from textual.color import Color

from conftest import write_plan
from corral.core.events import EventBus, RunFinished, RunStarted, TaskActivity, TaskOutput, TaskStatus
from corral.core.server.client import LocalLink, SnapshotEnd, SocketLink, open_connection
from corral.core.server.host import RunHost
from corral.tui.dashboard import CorralApp
from corral.tui.keymap import binding_ids
from corral.tui.model import PANE_MAX_LINES
from corral.tui.run_screen import ZoomScreen
from corral.tui.widgets import FitFooter, PaneLog
from test_supervisor import start_detached, state_dir, wait_ended, wait_supervisor_gone
from test_tui_pilot import SIZE, until

RUN = "r1"


def clocked_app(now: list[float]) -> tuple[EventBus, CorralApp]:
    """A run's bus and the dashboard on it, whose clock reads ``now[0]``."""
    bus = EventBus(RUN)
    return bus, CorralApp(bus=bus, notifications=False, clock=lambda: now[0])


def started(bus: EventBus, names: list[str]) -> None:
    bus.emit(RunStarted(run=RUN, repo="/nowhere", base="main", base_commit="0" * 40, backend="git",
                        run_dir="", tasks=names))
    for name in names:
        bus.emit(TaskStatus(run=RUN, task=name, status="running"))


def lines(name: str, start: int, stop: int) -> list[str]:
    return [f"{name} line {i}" for i in range(start, stop)]


@asynccontextmanager
async def hosted(names: list[str]) -> AsyncIterator[tuple[RunHost, CorralApp, Any]]:
    """The dashboard on a run hosted in this process whose tasks ``names`` are running."""
    host = RunHost(RUN)
    started(host.bus, names)
    app = CorralApp(link=LocalLink(host), notifications=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.run_screen is not None and len(app.run_screen.panes) == len(names)
                    and app.run_screen.focused_task == names[0], what="the panes, the first focused")
        yield host, app, pilot


@asynccontextmanager
async def on_bus(names: list[str]) -> AsyncIterator[tuple[EventBus, CorralApp, Any]]:
    """The dashboard on events emitted here for tasks ``names`` (running): every pane ready, the
    first focused."""
    bus = EventBus(RUN)
    app = CorralApp(bus=bus, notifications=False)
    async with app.run_test(size=SIZE) as pilot:
        started(bus, names)
        await until(pilot, lambda: app.run_screen is not None and len(app.run_screen.panes) == len(names)
                    and all(p.ready for p in app.run_screen.panes.values())
                    and app.run_screen.focused_task == names[0], what="the panes, the first focused")
        yield bus, app, pilot


def count_layouts(screen: Any) -> list[Any]:
    """The layouts of ``screen`` from now on, one item each."""
    layouts: list[Any] = []
    real_layout = screen._refresh_layout

    def layout(*args: Any, **kwargs: Any) -> None:
        layouts.append(args)
        real_layout(*args, **kwargs)

    screen._refresh_layout = layout
    return layouts


def count_styles(app: Any) -> list[Any]:
    """The nodes the app's stylesheet styles from now on, in order (a list that grows)."""
    styled: list[Any] = []
    real_apply = app.stylesheet.apply

    def apply(node: Any, *args: Any, **kwargs: Any) -> None:
        styled.append(node)
        real_apply(node, *args, **kwargs)

    app.stylesheet.apply = apply
    return styled


def test_a_late_attach_shows_each_panes_whole_history_at_its_first_paint() -> None:
    """16 agents printed 2,000 lines each while nobody watched: the first flush after the panes are
    mounted gives every pane its whole history (it showed 150 lines and 4 panes a flush, the rest
    waiting their turn as if they were flooding)."""
    names = [f"t{i:02d}" for i in range(16)]

    async def main() -> None:
        host = RunHost(RUN)
        started(host.bus, names)
        for name in names:
            for start in range(0, PANE_MAX_LINES, 500):
                host.bus.emit(TaskOutput(run=RUN, task=name, lines=lines(name, start, start + 500)))
        app = CorralApp(link=LocalLink(host), notifications=False)
        async with app.run_test(size=SIZE) as pilot:
            # (the panes off screen get theirs once filled, after the first frame: each its first write too)
            await until(pilot, lambda: app.run_screen is not None and len(app.run_screen.panes) == 16
                        and all(p.ready and p.log_widget.lines for p in app.run_screen.panes.values()),
                        what="every pane written")
            for name, pane in app.run_screen.panes.items():
                assert list(pane.log_widget.lines) == lines(name, 0, PANE_MAX_LINES), name
            app.exit()

    anyio.run(main)


def test_panes_off_screen_wait_while_their_agent_floods_and_end_on_its_last_line() -> None:
    """Only the panes that show are written while agents flood (a write's cost does not grow with the
    number of panes); the others get their lines when their agent ends (or they show)."""
    names = [f"t{i:02d}" for i in range(24)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            writes: list[tuple[str, bool]] = []
            real_write = screen._write

            def on_screen(pane: Any) -> bool:
                return bool(pane.region.overlaps(screen.query_one("#panes-scroll").region))

            def write(pane: Any, view: Any) -> None:
                writes.append((pane.task_name, on_screen(pane)))
                real_write(pane, view)

            screen._write = write  # type: ignore[method-assign]
            for burst in range(6):
                for name in names:
                    bus.emit(TaskOutput(run=RUN, task=name, lines=lines(name, burst * 100, burst * 100 + 100)))
                flushes = screen._flushes
                await until(pilot, lambda: screen._flushes >= flushes + 2, what="two flushes")
            off = {name for name, on in writes[len(names):] if not on}
            assert len({name for name, _ in writes}) > 0 and not off, f"off-screen panes written mid-flood: {off}"
            assert 0 < sum(on_screen(p) for p in screen.panes.values()) < 24
            for name in names:
                bus.emit(TaskStatus(run=RUN, task=name, status="succeeded"))
            await until(pilot, lambda: all(p.log_widget.lines and p.log_widget.lines[-1] == f"{n} line 599"
                                           for n, p in screen.panes.items()), what="every pane's last line")
            app.exit()

    anyio.run(main)


def test_a_pane_is_three_widgets() -> None:
    """Its border (name and agent), one head rendering the status badge, time, cost, files and
    activity, and its log: mounting, styling and laying out 64 panes is most of the first paint,
    and every layout walks every widget (a pane was six: a row of the badge and the meta line, the
    activity line)."""

    async def main() -> None:
        async with on_bus(["a", "b"]) as (bus, app, pilot):
            await pilot.pause(0.2)
            pane = app.run_screen.panes["a"]
            assert [type(w).__name__ for w in pane.walk_children(with_self=True)] == ["TaskPane", "PaneHead", "PaneLog"]
            assert pane.head.word == "RUNNING" and pane.head.meta.endswith("· $- · files -")
            app.exit()

    anyio.run(main)


def logs_at_first_frame(monkeypatch: Any) -> list[int]:
    """Filled, at the first line a log renders, with how many logs its screen holds then."""
    seen: list[int] = []
    real_render_line = PaneLog.render_line

    def render_line(log: PaneLog, y: int) -> Any:
        if not seen:
            seen.append(len(log.screen.query(PaneLog)))
        return real_render_line(log, y)

    monkeypatch.setattr(PaneLog, "render_line", render_line)
    return seen


def test_the_first_frame_draws_the_panes_on_screen_and_the_others_are_filled_after_it(monkeypatch: Any) -> None:
    """64 tasks known when the run screen opens: the first frame with panes has the head and log of
    the panes on screen only (4 rows of 3 at 160x48); the others are mounted as their border and get
    their head and log after that frame (mounting and styling them was half the first paint). Lines
    that came for a pane meanwhile show once it is filled, and Tab reaches every pane."""
    names = [f"t{i:02d}" for i in range(64)]
    mounted_at_first_frame = logs_at_first_frame(monkeypatch)

    async def main() -> None:
        bus = EventBus(RUN)
        app = CorralApp(bus=bus, notifications=False)
        started(bus, names)
        for name in names:
            bus.emit(TaskOutput(run=RUN, task=name, lines=lines(name, 0, 3)))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.run_screen is not None and len(app.run_screen.panes) == 64
                        and all(p.ready for p in app.run_screen.panes.values()), what="every pane filled")
            assert 0 < mounted_at_first_frame[0] <= 12, f"{mounted_at_first_frame[0]} panes drawn at the first frame"
            screen = app.run_screen
            await until(pilot, lambda: all(p.log_widget.lines[-1:] == [f"{n} line 2"] for n, p in screen.panes.items()),
                        what="every pane's lines")
            assert {tuple(type(w).__name__ for w in p.walk_children()) for p in screen.panes.values()} == \
                {("PaneHead", "PaneLog")}
            await pilot.press(*["tab"] * 63)
            await until(pilot, lambda: screen.focused_task == "t63", what="the last pane focused")
            app.exit()

    anyio.run(main)


def test_arrow_keys_move_between_panes_of_a_grid_that_scrolls() -> None:
    """64 panes, more than fit: down and up go to the pane below and above, the grid scrolling to
    show it (the grid's own up and down, a scroll container's, came first and scrolled it a line,
    the focus staying where it was)."""
    names = [f"t{i:02d}" for i in range(64)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            assert screen._columns == 3
            await pilot.press(*["down"] * 5)
            await until(pilot, lambda: screen.focused_task == "t15", what="five rows down")
            await until(pilot, lambda: screen.panes["t15"] in (screen._panes_on_screen() or ()), what="t15 shown")
            await pilot.press("up", "right")
            await until(pilot, lambda: screen.focused_task == "t13", what="a row up, then right")
            app.exit()

    anyio.run(main)


def test_panes_off_screen_whose_agents_end_one_by_one_are_written_together() -> None:
    """Each flush that writes a pane off screen makes Textual rebuild its map of every widget: the
    panes off screen whose agents ended are written together, at most once a second, and all at
    once when no agent runs any more."""
    names = [f"t{i:02d}" for i in range(24)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            for name in names:
                bus.emit(TaskOutput(run=RUN, task=name, lines=lines(name, 0, 10)))
            await until(pilot, lambda: all(p.log_widget.lines for p in screen.panes.values()), what="first lines")
            scroll = screen.query_one("#panes-scroll")
            off = [n for n, p in screen.panes.items() if not p.region.overlaps(scroll.region)]
            assert len(off) >= 6
            written: list[int] = []
            real_write = screen._write

            def write(pane: Any, view: Any) -> None:
                if pane.task_name in off:
                    written.append(screen._flushes)
                real_write(pane, view)

            screen._write = write  # type: ignore[method-assign]
            for name in off[:6]:
                bus.emit(TaskOutput(run=RUN, task=name, lines=lines(name, 10, 20)))
                bus.emit(TaskStatus(run=RUN, task=name, status="succeeded"))
                flushes = screen._flushes
                await until(pilot, lambda: screen._flushes >= flushes + 2, what="two flushes")
            flushes = screen._flushes
            await until(pilot, lambda: screen._flushes >= flushes + 14, what="a second of flushes")
            assert 1 <= len(set(written)) <= 2, f"panes off screen written in {len(set(written))} flushes"
            assert all(screen.panes[n].log_widget.lines[-1] == f"{n} line 19" for n in off[:6])
            for name in names:
                bus.emit(TaskOutput(run=RUN, task=name, lines=lines(name, 20, 30)))
                bus.emit(TaskStatus(run=RUN, task=name, status="succeeded"))
            await until(pilot, lambda: all(p.log_widget.lines[-1] == f"{n} line 29" for n, p in screen.panes.items()),
                        what="every pane's last line")
            app.exit()

    anyio.run(main)


def test_nothing_off_screen_is_updated_until_it_shows() -> None:
    """Agents change status and activity: the panes off screen and the closed event log are left as
    they are until they show (Textual takes a change to a widget off screen for a new widget, and
    rebuilds its map of every widget at the next frame: 20-170 ms each time at 64 panes)."""
    names = [f"t{i:02d}" for i in range(24)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            await pilot.pause(0.3)
            scroll = screen.query_one("#panes-scroll")
            off = [n for n, p in screen.panes.items() if not p.region.overlaps(scroll.region)]
            assert off and len(off) < 24
            shown: list[str] = []
            for name, pane in screen.panes.items():
                real_show = pane.show

                def show(view: Any, now: float, name: str = name, real_show: Any = real_show) -> None:
                    shown.append(name)
                    real_show(view, now)

                pane.show = show  # type: ignore[method-assign]
            event_log = screen.query_one("#event-log")
            logged = len(event_log.lines)
            for name in names:
                bus.emit(TaskActivity(run=RUN, task=name, text=f"{name} reads a file"))
                bus.emit(TaskStatus(run=RUN, task=name, status="succeeded"))
            flushes = screen._flushes
            await until(pilot, lambda: screen._flushes >= flushes + 3, what="three flushes")
            assert not set(off) & set(shown), "panes off screen updated"
            assert len(event_log.lines) == logged, "the closed event log written"
            last = screen.panes[off[-1]]
            scroll.scroll_to_widget(last, animate=False)
            await until(pilot, lambda: off[-1] in shown, what="the pane shown once on screen")
            await pilot.press("e")
            await until(pilot, lambda: any(f"{off[-1]}: succeeded" in line for line in event_log.lines),
                        what="the event log's lines once open")
            app.exit()

    anyio.run(main)


def test_zoom_shows_the_pane_over_the_grid_without_laying_the_grid_out() -> None:
    """z zooms the focused pane, Tab moves the zoom to the next pane, escape comes back: the run
    screen is not laid out meanwhile (Textual's maximize hid and showed every other widget, some 450
    at 64 panes, in two layouts of the whole screen), and what showed zoomed shows in the grid."""
    names = [f"t{i:02d}" for i in range(24)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", 0, 50)))
            await until(pilot, lambda: screen.panes["t00"].log_widget.lines[-1:] == ["t00 line 49"], what="t00's lines")
            await pilot.pause(0.2)
            layouts = count_layouts(screen)
            await pilot.press("z")
            await until(pilot, lambda: screen.zoomed is screen.panes["t00"], what="zoomed")
            zoom = app.screen
            assert zoom is not screen
            await until(pilot, lambda: zoom.pane.log_widget.lines[-1:] == ["t00 line 49"], what="the zoomed lines")
            assert zoom.pane.region.width >= SIZE[0] - 2, "the zoomed pane takes the width"
            bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", 50, 60)))
            await until(pilot, lambda: zoom.pane.log_widget.lines[-1:] == ["t00 line 59"], what="new lines, zoomed")
            assert screen.focused_task == "t00" and app.screen.check_action("zoom", ()) is True
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen and screen.zoomed is None, what="back to the grid")
            assert screen.panes["t00"].log_widget.lines[-1] == "t00 line 59", "what showed zoomed shows in the grid"
            await pilot.press("z")
            await until(pilot, lambda: screen.zoomed is screen.panes["t00"], what="zoomed again")
            await pilot.press("z")
            await until(pilot, lambda: app.screen is screen, what="back again")
            await pilot.pause(0.2)
            assert not layouts, f"{len(layouts)} layout(s) of the run screen"
            # the run screen's keys act on the zoomed pane: Tab zooms the next one
            await pilot.press("z", "tab")
            await until(pilot, lambda: screen.zoomed is screen.panes["t01"], what="the next pane zoomed")
            assert screen.focused_task == "t01" and app.screen.pane.border_title == "t01"
            await pilot.press("enter")
            await until(pilot, lambda: app.screen is screen and screen.zoomed is None, what="back to the grid")
            app.exit()

    anyio.run(main)


def test_a_local_client_busy_when_the_run_ends_still_gets_its_last_events() -> None:
    go: Any = None

    async def body(approver: Any, bus: EventBus, on_runtime: Any) -> int:
        bus.emit(TaskOutput(run=RUN, task="t", lines=["first"]))
        await go.wait()
        bus.emit(TaskOutput(run=RUN, task="t", lines=["last"]))
        bus.emit(RunFinished(run=RUN, state="done", exit_code=0, report="", kept_branches=[]))
        return 0

    async def main() -> list[Any]:
        nonlocal go
        go = anyio.Event()
        host = RunHost(RUN)
        seen: list[Any] = []
        link = LocalLink(host)
        async with anyio.create_task_group() as tg:
            tg.start_soon(host.run, body)
            async for ev in link.events():
                seen.append(ev)
                if isinstance(ev, TaskOutput) and ev.lines == ["first"]:
                    go.set()
                    await host.done.wait()  # the run ends while this client handles an event
        assert link.exit_code == 0
        return seen

    seen = anyio.run(main)
    assert [line for ev in seen if isinstance(ev, TaskOutput) for line in ev.lines] == ["first", "last"]
    assert isinstance(seen[-1], RunFinished)


def test_a_client_reading_slowly_over_the_socket_gets_the_runs_last_lines_and_its_end(repo: Path,
                                                                                      tmp_path: Path) -> None:
    """The supervisor was still sending a batch to a slow client when the run ended: it said
    "ended" next and dropped what came meanwhile (the agents' last lines, run_finished)."""
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "talker"
        prompt = 'seq 1 40000 | sed "s/$/ a line long enough to fill the socket quickly/"; echo "the very last line"'
    """)

    async def watch() -> tuple[list[Any], int | None]:
        conn = await open_connection(state_dir(repo))
        link = SocketLink(conn, run, tail=2000)
        seen: list[Any] = []
        async for ev in link.events():
            seen.append(ev)
            if isinstance(ev, SnapshotEnd):
                # a client too busy to read: the socket fills, the supervisor waits in a send, and
                # the run ends meanwhile
                await anyio.to_thread.run_sync(wait_ended, repo, run)
        await link.aclose()
        return seen, link.exit_code

    run = start_detached(repo, plan)
    seen, code = anyio.run(watch)
    assert code == 0
    shown = [line for ev in seen if isinstance(ev, TaskOutput) for line in ev.lines]
    assert shown and shown[-1] == "the very last line"
    assert any(isinstance(ev, RunFinished) for ev in seen)
    wait_supervisor_gone(repo)


def test_the_footer_is_rebuilt_only_when_its_keys_change() -> None:
    """Tab to the next pane and zoom keep the same keys: the footer stays (Textual rebuilt it, some
    20 widgets and a layout of the whole screen, at each)."""
    names = ["a", "b", "c"]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            await pilot.pause(0.3)
            footer = app.run_screen.query_one(FitFooter)
            keys = list(footer.children)
            assert keys
            for key in ("tab", "tab", "z", "z"):
                await pilot.press(key)
                await pilot.pause()
            assert list(footer.children) == keys
            # narrow, the keys that cannot act now go: rebuilt
            await pilot.resize_terminal(100, 40)
            await until(pilot, lambda: len(footer.children) < len(keys), what="the narrow footer")
            app.exit()

    anyio.run(main)


def test_a_key_that_can_no_longer_act_is_dimmed_in_place() -> None:
    """The focused pane's agent ends: abort can't act now. The footer dims that key where it is (a
    rebuild of the footer costs a layout of the whole screen, 40-200 ms with 16 flooding panes, and
    came once for each task that finished while its pane had the focus)."""
    async def main() -> None:
        async with hosted(["a", "b"]) as (host, app, pilot):
            footer = app.run_screen.query_one(FitFooter)

            def abort_key() -> Any:
                return next((k for k in footer.children if getattr(k, "action", "") == "abort"), None)

            await until(pilot, lambda: abort_key() is not None and not abort_key().has_class("-disabled"),
                        what="abort shown, enabled")
            keys = list(footer.children)
            host.bus.emit(TaskStatus(run=RUN, task="a", status="succeeded"))
            await until(pilot, lambda: abort_key().has_class("-disabled"), what="abort dimmed")
            assert list(footer.children) == keys
            host.bus.emit(RunFinished(run=RUN, state="done", exit_code=0, report=""))
            app.exit()

    anyio.run(main)


def test_a_paced_view_gets_a_flood_as_one_batch_cut_to_its_tail_and_other_events_at_once() -> None:
    """A view that repaints every ``pace`` seconds is sent output no more often: what comes in the
    meantime joins the waiting batch, cut to the view's ``batch_tail`` newest lines after a line
    saying how many were skipped; an event that is not output ends the wait at once."""

    async def main() -> None:
        host = RunHost(RUN)
        started(host.bus, ["a"])
        _snapshot, feed = host.attach(2000, pace=3600, batch_tail=3)
        host.bus.emit(TaskOutput(run=RUN, task="a", lines=["l0"]))
        assert [ev.lines for ev in await feed.take()] == [["l0"]]  # the first batch goes at once
        host.bus.emit(TaskOutput(run=RUN, task="a", lines=lines("a", 0, 1)))
        async with anyio.create_task_group() as tg:
            got: list[Any] = []

            async def take() -> None:
                got.extend(await feed.take())

            tg.start_soon(take)
            await anyio.wait_all_tasks_blocked()
            assert got == []  # output alone waits for the pace
            host.bus.emit(TaskOutput(run=RUN, task="a", lines=lines("a", 1, 6)))
            await anyio.wait_all_tasks_blocked()
            assert got == []
            host.bus.emit(TaskStatus(run=RUN, task="a", status="succeeded"))
        outputs = [ev for ev in got if isinstance(ev, TaskOutput)]
        assert len(outputs) == 1
        assert outputs[0].lines[0].startswith("[corral: 3 line(s) not shown here")
        assert outputs[0].lines[1:] == lines("a", 3, 6)
        assert isinstance(got[-1], TaskStatus)
        host.detach(feed)

    anyio.run(main)


def test_a_pane_that_gets_shorter_keeps_showing_its_last_line() -> None:
    """The run's end banner takes a row over the panes: each pane is shorter, and one that showed
    its newest line still does (Textual kept the scroll offset, so the last lines were out of view
    below, and later writes did not follow the end any more). One scrolled up stays where it is."""
    names = ["a", "b"]

    async def main() -> None:
        async with hosted(names) as (host, app, pilot):
            for name in names:
                host.bus.emit(TaskOutput(run=RUN, task=name, lines=lines(name, 0, 140)))
            logs = {n: p.log_widget for n, p in app.run_screen.panes.items()}
            await until(pilot, lambda: all(len(log.lines) >= 140 and log.max_scroll_y > 0 for log in logs.values()),
                        what="long panes")
            await until(pilot, lambda: all(log.is_vertical_scroll_end for log in logs.values()), what="at the end")
            logs["b"].scroll_to(y=0, animate=False, immediate=True)
            height = logs["a"].size.height
            for name in names:
                host.bus.emit(TaskStatus(run=RUN, task=name, status="succeeded"))
            host.bus.emit(RunFinished(run=RUN, state="done", exit_code=0, report=""))
            await until(pilot, lambda: logs["a"].size.height < height, what="a shorter pane")
            await pilot.pause()
            assert logs["a"].is_vertical_scroll_end
            assert logs["b"].scroll_y == 0
            app.exit()

    anyio.run(main)


def test_panes_of_a_run_known_at_the_start_are_styled_once_before_the_first_paint() -> None:
    """A run's tasks known when the run screen opens (``corral run``: the plan's tasks): each pane is
    styled once, when it is mounted. Mounted with the screen, they were styled three times more
    before the first paint (the screen's resume restyles all it holds, and its first resize gives it
    the app's breakpoint classes, which restyles all it holds again: 0.5-2 s at 64 panes)."""
    names = [f"t{i:02d}" for i in range(16)]

    async def main() -> None:
        bus = EventBus(RUN)
        app = CorralApp(bus=bus, notifications=False)
        started(bus, names)  # the model has the tasks before the run screen mounts
        styled: list[str] = []
        real_apply = app.stylesheet.apply

        logs: list[Any] = []

        def apply(node: Any, *args: Any, **kwargs: Any) -> None:
            # the grid's (the zoom screen, made once the grid is drawn, has a pane of its own)
            if type(node).__name__ == "TaskPane" and not node.zoomed:
                styled.append(node.task_name)
            if type(node).__name__ == "PaneLog" and not node.parent.zoomed:
                logs.append(node)
            real_apply(node, *args, **kwargs)

        app.stylesheet.apply = apply  # type: ignore[method-assign]
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.run_screen is not None and len(app.run_screen.panes) == 16
                        and all(p.ready for p in app.run_screen.panes.values())
                        and app.run_screen.focused_task == "t00", what="the panes, the first focused")
            await pilot.pause(0.2)
            first = [n for n in styled]
            # focus styles the focused pane (its :focus border) once more
            assert sorted(first) == sorted(names + ["t00"]), f"styled {len(first)} times: {sorted(first)}"
            # a pane's log once as well (and its scrollbar with the pane's :focus), not again for its scrollbar
            assert len(logs) == 16 + 1 and len(set(logs)) == 16, f"the logs styled {len(logs)} times"
            app.exit()

    anyio.run(main)


def test_a_pane_head_styles_only_the_components_it_shows() -> None:
    """A pane's head takes the styles of its badge, meta and activity lines and of its status now,
    not those of every status (14 styles computed per head, at each restyle of a pane: 64 panes
    made 900 of them, most of a restyle of the run screen); a new status brings its own colours."""

    async def main() -> None:
        async with on_bus(["a", "b"]) as (bus, app, pilot):
            pane = app.run_screen.panes["b"]
            applied = count_styles(app)
            app.update_styles(pane.head)
            assert len(applied) <= 1 + 4, f"{len(applied)} styles computed for one head"
            running = pane.head._badge_styles()[1]
            bus.emit(TaskStatus(run=RUN, task="b", status="failed"))
            await until(pilot, lambda: pane.head.word == "FAILED", what="b failed")
            failed = pane.head._badge_styles()[1]
            assert running.bgcolor != failed.bgcolor
            assert failed.bgcolor == Color.parse(app.get_css_variables()["error"]).rich_color, "$error, as the CSS says"
            app.exit()

    anyio.run(main)


def test_the_zooms_way_back_has_a_keymap_id() -> None:
    """``escape`` leaves the zoom like ``z`` and ``enter``: it is ``zoom.back`` in the keymap, so a
    person's keys can take it (a binding without an id cannot be remapped)."""
    assert binding_ids()["zoom.back"] == "Back"

    async def main() -> None:
        bus = EventBus(RUN)
        app = CorralApp(bus=bus, notifications=False, keymap={"zoom.back": "b"})
        async with app.run_test(size=SIZE) as pilot:
            started(bus, ["a", "b"])
            await until(pilot, lambda: app.run_screen is not None and app.run_screen.focused_task == "a",
                        what="the panes, the first focused")
            screen = app.run_screen
            await pilot.press("z")
            await until(pilot, lambda: screen.zoomed is screen.panes["a"], what="zoomed")
            await pilot.press("b")
            await until(pilot, lambda: app.screen is screen and screen.zoomed is None, what="back to the grid")
            app.exit()

    anyio.run(main)


def test_tab_to_a_pane_never_focused_lays_nothing_out() -> None:
    """Focus restyles a pane, and with it its log's scrollbar: Textual styles a scrollbar only when
    its widget is restyled, so the first focus of each pane gave its scrollbar its styles, and the
    scrollbar's new size laid out the whole screen (60-200 ms at 64 panes, at every first Tab)."""
    names = [f"t{i:02d}" for i in range(24)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            await pilot.pause(0.2)
            layouts = count_layouts(screen)
            for name in ("t01", "t02", "t03"):
                await pilot.press("tab")
                await until(pilot, lambda: screen.focused_task == name, what=f"{name} focused")
            await pilot.pause(0.2)
            assert not layouts, f"{len(layouts)} layout(s) of the run screen"
            app.exit()

    anyio.run(main)


def test_the_footer_is_filled_once_when_the_run_screen_opens(monkeypatch: Any) -> None:
    """The footer's keys are the same before a pane has the focus and after (the keys of the focused
    task dimmed, then lit in place): it is composed once. The collapsible titles of the verify and
    event logs took the first focus, their ``enter`` hid the zoom's, and the first pane's focus
    rebuilt the footer: a layout of the whole screen (250 ms at 64 panes) before the first paint."""
    composed: list[int] = []
    real_recompose = FitFooter.recompose

    async def recompose(self: FitFooter) -> None:
        if not isinstance(self.screen, ZoomScreen):  # the run screen's (the zoom screen is made once it is drawn)
            composed.append(1)
        await real_recompose(self)

    monkeypatch.setattr(FitFooter, "recompose", recompose)

    async def main() -> None:
        bus = EventBus(RUN)
        app = CorralApp(bus=bus, notifications=False)
        started(bus, ["a", "b", "c"])
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.run_screen is not None and app.run_screen.focused_task == "a",
                        what="the first pane focused")
            await pilot.pause(0.3)
            assert len(composed) == 1, f"the footer composed {len(composed)} times"
            app.exit()

    anyio.run(main)


def test_a_key_bound_on_the_screen_acts_where_it_arrives_not_at_the_focused_pane() -> None:
    """Textual takes a key to the focused widget, then up through every container to the app, which
    only then finds its binding: each step a message waiting its turn of the loop (with 64 agents
    flooding, a turn runs their readers and a frame: 50-300 ms for ``z``). For a focused pane (it
    has no bindings of its own) the app finds the binding where the key arrives, the same one, and
    the key goes no further; a key bound to nothing goes to the pane and on up as before."""
    names = [f"t{i:02d}" for i in range(4)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            reached: list[tuple[str, str]] = []

            def watch(node: Any, name: str) -> None:
                real_post = node.post_message

                def post(message: Any) -> bool:
                    if isinstance(message, events.Key):
                        reached.append((name, message.key))
                    return real_post(message)

                node.post_message = post

            for name, pane in screen.panes.items():
                watch(pane, name)
            watch(screen.query_one("#panes-scroll"), "grid")
            await pilot.press("z")
            await until(pilot, lambda: screen.zoomed is screen.panes["t00"], what="zoomed")
            watch(app.screen.pane, "zoomed")
            await pilot.press("z")
            await until(pilot, lambda: app.screen is screen, what="back")
            await pilot.press("tab", "down")
            await until(pilot, lambda: screen.focused_task == "t03", what="t01, then the pane below it")
            assert not reached, f"keys handed on from the app: {reached}"
            await pilot.press("g")  # bound to nothing: it goes to the pane and on up as before
            await until(pilot, lambda: reached == [("t03", "g"), ("grid", "g")], what="g to the pane, then the grid")
            app.exit()

    anyio.run(main)


def test_the_run_headers_time_and_count_growing_longer_lay_nothing_out() -> None:
    """The header's counts, time and cost had the width of their text: "9s" becoming "10s", "9/10
    done" becoming "10/10 done" laid the whole screen out (100-180 ms at 64 panes under a flood, a
    key pressed then waited for it). Their width is fixed; the new text is repainted in it."""
    names = [f"t{i:02d}" for i in range(10)]
    now = [0.0]

    async def main() -> None:
        bus, app = clocked_app(now)
        async with app.run_test(size=SIZE) as pilot:
            started(bus, names)
            now[0] = app.model.started + 5
            screen = app.run_screen
            stats = screen.query_one("#run-stats")
            await until(pilot, lambda: len(screen.panes) == len(names) and all(p.ready for p in screen.panes.values())
                        and "0/10 done" in str(stats.render()), what="the panes and the header")
            for name in names[:9]:
                bus.emit(TaskStatus(run=RUN, task=name, status="succeeded"))
            await until(pilot, lambda: "9/10 done" in str(stats.render()), what="9 done")
            await pilot.pause(0.2)
            layouts = count_layouts(screen)
            bus.emit(TaskStatus(run=RUN, task=names[9], status="succeeded"))
            await until(pilot, lambda: "10/10 done" in str(stats.render()), what="10 done")
            now[0] = app.model.started + 65
            await until(pilot, lambda: "1m04s" in str(stats.render()), what="a minute")
            await pilot.pause(0.2)
            assert not layouts, f"{len(layouts)} layout(s) of the run screen"
            assert stats.region.width >= len("10/10 done") and stats.region.right <= SIZE[0], "the text fits"
            app.exit()

    anyio.run(main)


def test_a_zoom_restyles_nothing_unless_the_css_changed() -> None:
    """Textual restyles a screen and everything on it whenever it is pushed: the zoom screen, at
    every zoom, for the same styles (15-35 ms under a flood at 64 panes, before its first frame).
    It is styled again only when the app's CSS changed while it was away (a new theme); not at the
    first zoom either (its nodes were just styled as they were mounted)."""
    names = [f"t{i:02d}" for i in range(4)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            styled: list[Any] = []
            real_update = app.stylesheet.update_nodes

            def update_nodes(nodes: Any, animate: bool = False) -> None:
                nodes = list(nodes)
                styled.extend(n for n in nodes if isinstance(n.screen, ZoomScreen))
                real_update(nodes, animate=animate)

            app.stylesheet.update_nodes = update_nodes  # type: ignore[method-assign]
            await pilot.press("z")
            await until(pilot, lambda: screen.zoomed is screen.panes["t00"], what="zoomed")
            zoom = app.screen
            await pilot.pause(0.2)
            # the first zoom: the zoom screen as a whole is not restyled either (its nodes were
            # styled as they were mounted, its classes given); the focus, a status restyle theirs
            assert zoom not in styled, f"the zoom screen restyled at the first zoom: {styled.count(zoom)} time(s)"
            assert {"-large", "-tall"} <= zoom.classes
            await pilot.press("z")
            await until(pilot, lambda: app.screen is screen, what="back")
            await pilot.pause(0.2)
            styled.clear()
            await pilot.press("z")
            await until(pilot, lambda: app.screen is zoom and zoom.pane.border_title == "t00", what="zoomed again")
            await pilot.pause(0.2)
            assert not styled, f"{len(styled)} node(s) of the zoom screen restyled"
            await pilot.press("z")
            await until(pilot, lambda: app.screen is screen, what="back again")
            app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
            await pilot.pause(0.2)
            await pilot.press("z")
            await until(pilot, lambda: app.screen is zoom, what="zoomed after a new theme")
            await pilot.pause(0.2)
            assert zoom.pane in styled, "a new theme restyles the zoom screen at its next zoom"
            app.exit()

    anyio.run(main)


def test_a_pane_head_repaints_from_its_segments_with_the_styles_it_computed_once() -> None:
    """A head changes every second while its agent runs (its time), and one frame repaints the head
    of every pane on screen. It went through Textual's text layout and computed its styles again at
    each repaint (Textual drops them at every refresh): 1.2-1.5 ms a head, 0.25 now. It shows the
    same: the status's word on its badge, time, cost and files, then the activity, cut with an
    ellipsis when too long."""
    from textual.visual import Visual

    from corral.tui.widgets import PaneHead

    names = ["t00", "t01"]
    now = [0.0]

    async def main() -> None:
        bus, app = clocked_app(now)
        async with app.run_test(size=SIZE) as pilot:
            started(bus, names)
            screen = app.run_screen
            await until(pilot, lambda: len(screen.panes) == 2 and all(p.ready for p in screen.panes.values()),
                        what="the panes")
            head = screen.panes["t00"].head
            start = app.model.tasks["t00"].started
            now[0] = start + 3
            bus.emit(TaskActivity(run=RUN, task="t00", text="reading " + "a very long path/" * 20))
            await until(pilot, lambda: head.activity.startswith("reading"), what="the activity")
            await pilot.pause(0.2)
            laid_out: list[Any] = []
            styled: list[Any] = []
            real_to_strips = Visual.to_strips
            real_component_styles = head.get_component_styles

            def to_strips(widget: Any, *args: Any, **kwargs: Any) -> Any:
                if isinstance(widget, PaneHead):
                    laid_out.append(widget)
                return real_to_strips(widget, *args, **kwargs)

            def component_styles(*names: str) -> Any:
                styled.append(names)
                return real_component_styles(*names)

            Visual.to_strips = to_strips  # type: ignore[method-assign]
            head.get_component_styles = component_styles  # type: ignore[method-assign]
            try:
                for second in (4, 5, 6):
                    now[0] = start + second
                    shown = f"{int(math.floor(now[0]) - start)}s"  # whole seconds on screen
                    await until(pilot, lambda: head.meta.startswith(shown), what=shown)
                    await pilot.pause(0.1)
                    lines = [strip.text for strip in head.render_lines(head.region.reset_offset)]
                    assert lines[0].split() == ["RUNNING", shown, "·", "$-", "·", "files", "-"]
            finally:
                Visual.to_strips = real_to_strips  # type: ignore[method-assign]
            assert not laid_out, f"{len(laid_out)} head(s) through Textual's text layout"
            assert not styled, f"the head's styles computed {len(styled)} time(s) for the same status"
            assert lines[1].startswith("reading a very long path/") and lines[1].endswith("…")
            assert len(lines[1]) == head.size.width
            bus.emit(TaskStatus(run=RUN, task="t00", status="failed"))
            await until(pilot, lambda: head.word == "FAILED", what="failed")
            await pilot.pause(0.1)
            assert styled, "a new status: the badge's colours computed again"
            app.exit()

    anyio.run(main)


def test_a_logs_lines_render_with_its_style_computed_once_per_restyle() -> None:
    """Textual's Log asks for its style at every line it renders, and each time the style is
    computed again by walking up to the screen for the backgrounds: 43 times for one frame of a
    zoomed pane (about 15 ms under a flood). It is computed once, and again after a restyle (a new
    theme): the lines then have the new theme's background."""
    from textual.dom import DOMNode

    from corral.tui.widgets import PaneLog

    names = ["t00", "t01"]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", 0, 200)))
            await until(pilot, lambda: screen.panes["t00"].log_widget.lines[-1:] == ["t00 line 199"], what="t00's lines")
            computed: list[Any] = []
            real = DOMNode.rich_style.fget

            def rich_style(node: Any) -> Any:
                if isinstance(node, PaneLog):
                    computed.append(node)
                return real(node)  # type: ignore[misc]

            DOMNode.rich_style = property(rich_style)  # type: ignore[method-assign,assignment]
            try:
                await pilot.press("z")
                await until(pilot, lambda: screen.zoomed is screen.panes["t00"], what="zoomed")
                zoom = app.screen
                log = zoom.pane.log_widget
                await until(pilot, lambda: log.lines[-1:] == ["t00 line 199"], what="the zoomed lines")
                await pilot.pause(0.2)
                rows = log.scrollable_content_region.height
                assert rows > 20 and len(computed) <= 2, f"the log's style computed {len(computed)} times for {rows} lines"
                dark = log.render_line(0)
                app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
                await pilot.pause(0.3)
                light = log.render_line(0)
                assert light.text == dark.text and light != dark, "the same line in the new theme's colours"
                assert log.rich_style == real(log), "the style the log keeps is the one Textual computes"  # type: ignore[misc]
            finally:
                DOMNode.rich_style = property(real)  # type: ignore[method-assign,assignment]
            app.exit()

    anyio.run(main)


def test_a_layout_of_the_run_screen_arranges_the_grid_of_panes_once(monkeypatch: Any) -> None:
    """The grid's height is its rows times their height, said when the panes or the size change:
    of a height ``auto``, Textual arranged the whole grid to measure it, then again to place it,
    at every layout of the screen (the first paint's, a resize's: 64 panes twice each)."""
    from textual.layouts.grid import GridLayout

    names = [f"t{i:02d}" for i in range(24)]
    arranged: list[int] = []
    real_arrange = GridLayout.arrange

    def arrange(self: GridLayout, parent: Any, children: Any, size: Any, greedy: bool = True) -> Any:
        arranged.append(len(children))
        return real_arrange(self, parent, children, size, greedy)

    monkeypatch.setattr(GridLayout, "arrange", arrange)

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            await pilot.pause(0.2)
            per_layout: list[list[int]] = []  # the grid's arrangements in each layout of the screen
            real_layout = screen._refresh_layout

            def layout(*args: Any, **kwargs: Any) -> None:
                arranged.clear()
                real_layout(*args, **kwargs)
                per_layout.append(list(arranged))

            screen._refresh_layout = layout
            await pilot.resize_terminal(150, SIZE[1])  # two columns, not three
            await until(pilot, lambda: screen._columns == 2 and any(per_layout), what="a layout in two columns")
            await pilot.pause(0.2)
            assert all(len(a) <= 1 for a in per_layout), f"the grid arranged in each layout: {per_layout}"
            grid = screen.query_one("#panes")
            assert grid.region.height == 12 * 12 and grid.region.bottom > SIZE[1], "12 rows of 12 lines: it scrolls"
            app.exit()

    anyio.run(main)


def test_the_run_screen_is_styled_once_before_its_first_paint(monkeypatch: Any) -> None:
    """Textual restyled the whole run screen at its push and again at its first resize (the
    breakpoint classes, ``-narrow``/``-short``), each for the styles its nodes had just been given
    as they were mounted, before the panes could come (20-30 ms each at the first paint). It is
    given those classes when it is made; a new theme still restyles it."""
    from textual.css.stylesheet import Stylesheet

    from corral.tui.run_screen import RunScreen

    restyled: list[str] = []
    real_update = Stylesheet.update_nodes

    def update_nodes(self: Stylesheet, nodes: Any, animate: bool = False) -> None:
        nodes = list(nodes)
        restyled.extend(type(n).__name__ for n in nodes if isinstance(n, RunScreen))
        real_update(self, nodes, animate=animate)

    monkeypatch.setattr(Stylesheet, "update_nodes", update_nodes)

    async def main(size: tuple[int, int], classes: set[str]) -> None:
        restyled.clear()
        bus = EventBus(RUN)
        app = CorralApp(bus=bus, notifications=False)
        async with app.run_test(size=size) as pilot:
            started(bus, ["a", "b"])
            await until(pilot, lambda: app.run_screen is not None and len(app.run_screen.panes) == 2
                        and all(p.ready for p in app.run_screen.panes.values()), what="the panes")
            await pilot.pause(0.2)
            screen = app.run_screen
            assert not restyled, f"the run screen restyled {len(restyled)} time(s) before its first paint"
            assert classes <= screen.classes, screen.classes
            app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
            await until(pilot, lambda: restyled, what="a new theme restyling the run screen")
            app.exit()

    anyio.run(main, SIZE, {"-large", "-tall"})
    anyio.run(main, (80, 24), {"-small", "-short", "-narrow"})


def test_the_tasks_of_a_run_being_started_are_panes_at_the_first_frame_and_the_runs_own_replace_them(
        monkeypatch: Any) -> None:
    """``corral run PLAN`` opens its dashboard while the supervisor starts the run: the plan's tasks
    are pending panes at the first frame, before any event of the run (from a supervisor busy
    starting 64 agents, they came half a second later, and the panes after them). The run's start
    says its own tasks: one the plan had and the run does not loses its pane."""
    names = [f"t{i:02d}" for i in range(6)]
    panes_at_first_frame = logs_at_first_frame(monkeypatch)

    async def main() -> None:
        bus = EventBus(RUN)
        app = CorralApp(bus=bus, notifications=False, expect=[(n, "shell") for n in names])
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: bool(panes_at_first_frame), what="the first frame with a log")
            screen = app.run_screen
            assert screen is not None and panes_at_first_frame == [6] and list(screen.panes) == names
            assert {p.head.status for p in screen.panes.values()} == {"pending"}
            assert screen.panes["t00"].border_subtitle == "shell"
            started(bus, names[:5])  # t05 is not in the run after all
            await until(pilot, lambda: [getattr(w, "task_name", "") for w in screen.query_one("#panes").children]
                        == names[:5], what="t05's pane gone")
            assert list(screen.panes) == names[:5] and app.model.total == 5
            await until(pilot, lambda: {p.head.status for p in screen.panes.values()} == {"running"},
                        what="the run's statuses")


def watch_renders(widgets: list[Any]) -> list[Any]:
    """Each line of ``widgets`` rendered again from now on (a line a cache kept is not): one item,
    the widget, per line."""
    rendered: list[Any] = []
    for widget in widgets:
        def render_line(y: int, widget: Any = widget, real: Any = widget.render_line) -> Any:
            rendered.append(widget)
            return real(y)

        widget.render_line = render_line
    return rendered


def test_a_zoom_and_back_render_again_only_the_lines_that_changed() -> None:
    """A zoom covers the whole terminal and the way back uncovers it, so each is a frame of the
    whole screen; what was rendered before comes from the widgets' caches. A screen's background
    (its own lines, under its widgets) was rendered again at each (Textual refreshes a screen at
    every push and pop), and its new lines, cut at every widget's edge, made the frame of the grid
    twice as slow (12 ms more at 64 panes); the zoomed pane's border was rendered again at every
    zoom of the same pane (5 ms). Now a zoom renders the zoomed log's lines, the way back those of
    the grid's pane that got the lines written while zoomed."""
    names = [f"t{i:02d}" for i in range(24)]
    M = PANE_MAX_LINES  # as under a flood: a log as long as it gets, its scrollbar at its end
    now = [100.0]  # a clock that stands still: no head shows a new time meanwhile

    async def main() -> None:
        bus, app = clocked_app(now)
        async with app.run_test(size=SIZE) as pilot:
            started(bus, names)
            await until(pilot, lambda: app.run_screen is not None and len(app.run_screen.panes) == len(names)
                        and all(p.ready for p in app.run_screen.panes.values())
                        and app.run_screen.focused_task == "t00", what="the panes, the first focused")
            screen = app.run_screen
            source = screen.panes["t00"]
            bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", 0, M)))
            await until(pilot, lambda: source.log_widget.lines[-1:] == [f"t00 line {M - 1}"], what="t00's lines")
            await pilot.press("z")  # the zoom screen is made at the first zoom
            await until(pilot, lambda: screen.zoomed is source, what="zoomed")
            zoom = app.screen
            await pilot.press("z")
            await until(pilot, lambda: app.screen is screen, what="back")
            bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", M, M + 10)))
            await until(pilot, lambda: source.log_widget.lines[-1:] == [f"t00 line {M + 9}"], what="new lines")
            await pilot.pause(0.2)
            widgets = [*screen.walk_children(with_self=True), *zoom.walk_children(with_self=True)]
            widgets += [w.vertical_scrollbar for w in widgets if isinstance(w, PaneLog)]
            rendered = watch_renders(widgets)
            await pilot.press("z")
            await until(pilot, lambda: app.screen is zoom and zoom.pane.log_widget.lines[-1:] == [f"t00 line {M + 9}"],
                        what="zoomed again")
            bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", M + 10, M + 20)))
            await until(pilot, lambda: zoom.pane.log_widget.lines[-1:] == [f"t00 line {M + 19}"], what="new lines, zoomed")
            await pilot.pause(0.2)
            zoomed = set(rendered)
            rendered.clear()
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen, what="back again")
            await pilot.pause(0.2)
            back = set(rendered)
            assert zoomed == {zoom.pane.log_widget}, f"rendered again at the zoom: {zoomed}"
            assert back == {source.log_widget}, f"rendered again on the way back: {back}"
            assert source.log_widget.lines[-1] == f"t00 line {M + 19}"
            # what a screen keeps of its own lines goes with its styles: a new theme, new colours
            crop = screen.size.region
            before = screen.render_lines(crop)
            app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
            await pilot.pause(0.3)
            after = screen.render_lines(crop)
            assert [s.text for s in after] == [s.text for s in before] and after != before
            assert screen in set(rendered), "the new theme's background rendered"
            # the zoom moved to a pane with no lines yet: an empty log, and its scrollbar says so
            await pilot.press("z", "tab")
            await until(pilot, lambda: screen.zoomed is screen.panes["t01"], what="the next pane zoomed")
            await pilot.pause(0.1)
            log = zoom.pane.log_widget
            assert not log.lines and log.vertical_scrollbar.window_virtual_size == 0
            app.exit()

    anyio.run(main)


def test_the_zoom_screen_is_made_before_the_first_zoom_which_mounts_and_lays_out_nothing() -> None:
    """The first ``z`` of a run made the zoom screen: its pane and footer mounted and styled, two
    layouts, every line rendered (2-3 times a later zoom: 70-240 ms under a flood). It is made once
    the grid is drawn, laid out and rendered off screen: the first zoom renders what a zoom to
    another pane does (the zoomed log and its scrollbar, the head), and the footer at 80 columns
    is the narrow one (made before its first resize, its keys are made for the width)."""
    from textual.widgets._footer import FooterKey

    names = [f"t{i:02d}" for i in range(24)]
    now = [100.0]  # a clock that stands still: no head shows a new time meanwhile

    for size in (SIZE, (80, 24)):
        async def main() -> None:
            bus, app = clocked_app(now)
            async with app.run_test(size=size) as pilot:
                started(bus, names)
                await until(pilot, lambda: app.run_screen is not None and len(app.run_screen.panes) == len(names)
                            and app.run_screen.focused_task == "t00", what="the panes, the first focused")
                screen = app.run_screen
                bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", 0, 300)))
                await until(pilot, lambda: screen._zoom_screen is not None and screen._zoom_screen.settled,
                            what="the zoom screen made ahead")
                zoom = screen._zoom_screen
                assert app.screen is screen and zoom not in app.screen_stack
                assert zoom.pane.ready and zoom.outer_size == app.size
                keys = {k.key for k in zoom.query(FooterKey)}
                assert "z" in keys and ("ctrl+p" in keys) == (size[0] >= FitFooter.NARROW), keys
                await pilot.pause(0.2)
                layouts = count_layouts(screen) + count_layouts(zoom)
                styled = count_styles(app)
                widgets = [*zoom.walk_children(with_self=True)]
                widgets.append(zoom.pane.log_widget.vertical_scrollbar)
                rendered = watch_renders(widgets)
                await pilot.press("z")
                await until(pilot, lambda: screen.zoomed is screen.panes["t00"] and app.screen is zoom, what="zoomed")
                await pilot.pause(0.2)
                assert zoom.pane.log_widget.lines[-1] == "t00 line 299"
                assert layouts == [], f"{len(layouts)} layout(s) at the first zoom"
                assert styled == [], f"styled at the first zoom: {styled}"
                log = zoom.pane.log_widget
                assert set(rendered) <= {log, log.vertical_scrollbar, zoom.pane.head}, set(rendered)
                assert {k.key for k in zoom.query(FooterKey)} == keys
                app.exit()

        anyio.run(main)


def test_a_zoom_and_the_way_back_are_drawn_when_the_key_acts_with_the_collector_held() -> None:
    """The frame of a zoom is made by the key's action: Textual made it three turns of the loop
    later (the screen's resume message, its idle, its update timer), each turn first running every
    agent's reader under a flood (5-30 ms). The garbage collector waits until the frame is out: a
    collection of the oldest generation that started while it was rendered (it allocates a lot)
    came before it (20-50 ms under a flood)."""
    import gc

    names = [f"t{i:02d}" for i in range(4)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", 0, 50)))
            await until(pilot, lambda: screen.panes["t00"].log_widget.lines[-1:] == ["t00 line 49"], what="t00's lines")
            frames: list[tuple[Any, bool]] = []
            real_display = app._display

            def display(shown: Any, renderable: Any) -> None:
                if renderable is not None:
                    frames.append((shown, gc.isenabled()))
                real_display(shown, renderable)

            app._display = display  # type: ignore[method-assign]
            for _ in range(2):  # the first zoom (the zoom screen made then or ahead) and a later one
                await pilot.pause(0.2)
                frames.clear()
                screen.action_zoom()  # as the key does, without a turn of the loop after it
                zoom = app.screen
                assert isinstance(zoom, ZoomScreen) and screen.zoomed is screen.panes["t00"]
                assert frames[:1] == [(zoom, False)], f"the frames when the zoom's action returned: {frames}"
                assert gc.isenabled()
                await pilot.pause(0.2)
                assert zoom.pane.log_widget.lines[-1] == "t00 line 49"
                frames.clear()
                screen.action_zoom()
                assert app.screen is screen and frames[:1] == [(screen, False)], frames
                assert gc.isenabled()
            app.exit()

    anyio.run(main)


def test_the_footers_keys_are_styled_once_each_when_it_is_composed() -> None:
    """A footer key is made the footer's way (compact or not) when it is made: Textual made each one
    compact and then bound it to the footer's ``compact``, restyling it twice at its mount (some
    20 keys, 25-60 ms before the first paint and at every rebuild of the footer), wide or narrow."""
    from textual.widgets._footer import FooterKey

    for size in (SIZE, (80, 24)):
        async def main() -> None:
            bus = EventBus(RUN)
            app = CorralApp(bus=bus, notifications=False)
            started(bus, ["a", "b", "c"])
            restyled: list[str] = []
            real_update = app.update_styles

            def update_styles(node: Any, *args: Any, **kwargs: Any) -> None:
                if isinstance(node, FooterKey):
                    restyled.append(node.key)
                real_update(node, *args, **kwargs)

            app.update_styles = update_styles  # type: ignore[method-assign]
            async with app.run_test(size=size) as pilot:
                await until(pilot, lambda: app.run_screen is not None and app.run_screen.focused_task == "a"
                            and bool(app.run_screen.query(FooterKey)), what="the footer's keys")
                await pilot.pause(0.3)
                keys = app.run_screen.query(FooterKey)
                # the palette's key (on a wide screen) is compact in Textual's footer: not bound to it
                assert {k.has_class("-compact") for k in keys if k.key != "ctrl+p"} == {size[0] < FitFooter.NARROW}
                assert all(k.has_class("-compact") for k in keys if k.key == "ctrl+p")
                assert restyled == [], f"{len(restyled)} restyles of the footer's keys at {size}: {restyled}"
                app.exit()

        anyio.run(main)


def test_a_logs_lines_render_as_textuals_log_renders_them_without_its_text_layout() -> None:
    """A pane's log renders a line as one segment in its style: Textual's Log lays each line out as
    a rich Text first (three times the cost; a zoom renders 43 new lines). The lines are the ones
    Textual's Log renders: tabs, control codes, wide characters, an empty line, scrolled sideways;
    selected text is Textual's to show."""
    from rich.text import Text
    from textual.widgets import Log

    tricky = ["plain", "a\ttab", "colour \x1b[31mred\x1b[0m codes", "wide 漢字 and 🙂", "", "x" * 300]

    async def main() -> None:
        async with on_bus(["t00"]) as (bus, app, pilot):
            screen = app.run_screen
            log = screen.panes["t00"].log_widget
            bus.emit(TaskOutput(run=RUN, task="t00", lines=[*lines("t00", 0, 100), *tricky]))
            await until(pilot, lambda: log.lines[-1:] == [tricky[-1]], what="the lines")
            await pilot.pause(0.2)
            laid_out: list[Any] = []
            real_render = Text.render

            def render(text: Any, *args: Any, **kwargs: Any) -> Any:
                laid_out.append(text.plain)
                return real_render(text, *args, **kwargs)

            Text.render = render  # type: ignore[method-assign]
            try:
                await pilot.press("z")
                await until(pilot, lambda: screen.zoomed is not None, what="zoomed")
                zoomed = app.screen.pane.log_widget
                await until(pilot, lambda: zoomed.lines[-1:] == [tricky[-1]], what="the zoomed lines")
                await pilot.pause(0.2)
                assert not any(line.startswith("t00 line") for line in laid_out), "log lines laid out as text"
            finally:
                Text.render = real_render  # type: ignore[method-assign]
            for widget in (log, zoomed):
                rows = widget.scrollable_content_region.height
                for scroll_x in (0, 3):
                    widget.scroll_to(x=scroll_x, animate=False, immediate=True)
                    for y in range(rows):
                        assert widget.render_line(y) == Log.render_line(widget, y), (widget, scroll_x, y)
            app.exit()

    anyio.run(main)


def test_a_new_line_renders_only_itself_not_the_lines_it_moves_up(monkeypatch: Any) -> None:
    """A new line moves every line of a pane up a row, and the frame renders every row again: each
    line shown was made again from its text (43 rows of a zoomed pane for one new line). A line is
    made once, and again after a restyle (a new theme)."""
    from collections import Counter

    from textual.widgets import Log

    made: Counter[str] = Counter()
    real = Log._process_line.__func__  # type: ignore[attr-defined]

    def process_line(cls: Any, line: str) -> str:
        made[line] += 1
        return real(cls, line)  # type: ignore[no-any-return]

    async def main() -> None:
        async with on_bus(["t00"]) as (bus, app, pilot):
            screen = app.run_screen
            bus.emit(TaskOutput(run=RUN, task="t00", lines=lines("t00", 0, 100)))
            await until(pilot, lambda: screen.panes["t00"].log_widget.lines[-1:] == ["t00 line 99"], what="the lines")
            await pilot.press("z")
            await until(pilot, lambda: screen.zoomed is not None, what="zoomed")
            log = app.screen.pane.log_widget
            await until(pilot, lambda: log.lines[-1:] == ["t00 line 99"], what="the zoomed lines")
            await pilot.pause(0.2)
            monkeypatch.setattr(Log, "_process_line", classmethod(process_line))
            for i in range(100, 105):  # one line a flush, each frame moving the others up a row
                bus.emit(TaskOutput(run=RUN, task="t00", lines=[f"t00 line {i}"]))
                await until(pilot, lambda: log.lines[-1:] == [f"t00 line {i}"], what=f"line {i}")
                await pilot.pause(0.15)
            rows = log.scrollable_content_region.height
            assert rows > 20 and made, "lines rendered"
            again = {line: n for line, n in made.items() if n > 1}
            assert not again, f"lines made again from their text: {again}"
            app.exit()

    anyio.run(main)


def test_a_frame_renders_only_the_widgets_where_something_changed() -> None:
    """12 panes on screen, the header's clock and the last pane's log change: the frame renders the
    widgets there (the header, that pane and what holds it), not every widget in the rectangle
    around both (Textual's way: the whole screen), and writes what Textual's compositor writes."""
    from textual._compositor import Compositor

    names = [f"t{i:02d}" for i in range(12)]

    async def main() -> None:
        async with on_bus(names) as (bus, app, pilot):
            screen = app.run_screen
            await pilot.pause()
            compositor = screen._compositor
            on_screen = [w for w in compositor.visible_widgets]
            last = screen.panes[names[-1]]
            log = last.query_one(PaneLog)
            assert log in on_screen and screen._header in on_screen
            rendered: list[Any] = []
            for widget in on_screen:
                widget.render_lines = (lambda real, w: lambda crop: (rendered.append(w), real(crop))[1])(
                    widget.render_lines, widget)

            def frame(render: Any) -> tuple[str, list[Any]]:
                rendered.clear()
                for widget in (screen._header, log):
                    widget.refresh()  # (its whole region to repaint)
                compositor.update_widgets({screen._header, log})
                update = render(compositor)
                text = "".join(seg.text for seg in app.console.render(update))
                return text, list(rendered)

            ours, ours_rendered = frame(type(compositor).render_partial_update)
            textuals, textuals_rendered = frame(Compositor.render_partial_update)
            assert ours == textuals and ours.strip()
            # what holds the log, and what lies in the header or in that pane
            visible = compositor.visible_widgets
            inside = {w for w, (region, clip) in visible.items()
                      if any(area.contains_region(region.intersection(clip))
                             for area in (screen._header.region, last.region))}
            assert set(ours_rendered) <= inside | set(log.ancestors_with_self), ours_rendered
            assert len(ours_rendered) < len(textuals_rendered) / 2, (len(ours_rendered), len(textuals_rendered))

    anyio.run(main)
