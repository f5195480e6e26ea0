"""The dashboard at the sizes people use (80x24 up to 220x60), on fixed scenes: what must be on screen
is on screen, nothing wraps into nonsense, and the figures agree with the report."""

from __future__ import annotations

import asyncio

import tui_scenes
from corral.core.events import EventBus
from corral.core.report import fmt_duration
from corral.tui.dashboard import CorralApp
from corral.tui.review_screen import ReviewItem, ReviewScreen
from corral.core.vcs.base import Forecast


#: the least a pane may get: its border, its head line, activity and four lines of log
PANE_MIN_HEIGHT = 8


def screen_lines(app: CorralApp) -> list[str]:
    """The screen as text, one string per row (what a person sees, without colour)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def scene(name: str, size: tuple[int, int], check) -> None:
    async def main() -> None:
        app = CorralApp(bus=EventBus(tui_scenes.RUN_ID), clock=tui_scenes.clock, notifications=False)
        async with app.run_test(size=size) as pilot:
            await tui_scenes.play(app, name, pilot.pause)
            await check(app, pilot)

    asyncio.run(main())


def test_header_and_footer_at_80x24_show_every_field_and_key() -> None:
    async def check(app, pilot) -> None:
        lines = screen_lines(app)
        assert "run 20270115-083000-c0de  base main @ 6cd0d48b  phase running" in lines[0], lines[0]
        assert "repo /home/ada/src/calc" in lines[1], lines[1]
        assert "2/5 done" in lines[0] and "1m23s" in lines[1]
        footer = lines[-1]
        assert "q Quit" in footer and "e Events" in footer, footer

    scene("run", (80, 24), check)


def test_header_shows_the_base_where_landing_left_it() -> None:
    async def check(app, pilot) -> None:
        assert "base main @ 1ef94dad  phase done" in screen_lines(app)[0]

    scene("done", (160, 48), check)


def test_after_landing_at_80x24_panes_keep_their_lines() -> None:
    async def check(app, pilot) -> None:
        scroll = app.run_screen.query_one("#panes-scroll")
        assert scroll.size.height >= PANE_MIN_HEIGHT, "the verify pane and the banner left the panes no room"
        pane = app.run_screen.panes["add-mul"]
        assert pane.region.height >= PANE_MIN_HEIGHT
        assert any("report .git/corral/runs/" in line for line in screen_lines(app)), "the banner names the report"

    scene("done", (80, 24), check)


def test_pane_time_is_the_reports_duration() -> None:
    """add-mul's agent ran 41.5 s (the engine's figure, the report's ``42s``); its workspace was
    being made two seconds before: the pane said 44s."""

    async def check(app, pilot) -> None:
        meta = app.run_screen.panes["add-mul"].head.meta
        assert meta.startswith(fmt_duration(41.5) + " ·"), meta

    scene("run", (160, 48), check)


def test_review_at_80x24_gives_the_diff_the_width() -> None:
    async def check(app, pilot) -> None:
        diff = app.screen.query_one("#review-diff-scroll")
        assert diff.size.width >= 70, f"the diff is {diff.size.width} columns wide"
        assert diff.size.height >= 6
        assert any('+    return "hi there"' in line for line in screen_lines(app))
        assert "y Approve" in screen_lines(app)[-1] and "q Quit" in screen_lines(app)[-1]

    scene("review", (80, 24), check)


def test_conflict_matrix_of_ordinary_names_fits_at_160_columns() -> None:
    names = ["fix-login-redirect", "update-deps", "add-api-tests", "refactor-db", "docs-quickstart", "cache-layer"]
    items = [ReviewItem(n, "succeeded", "claude", 3, 1, [f"src/{n}.py"], True) for n in names]
    forecast = Forecast(files={n: [f"src/{n}.py"] for n in names},
                        conflicts={("update-deps", "cache-layer"): ["pyproject.toml"]})

    async def main() -> None:
        app = CorralApp(bus=EventBus(tui_scenes.RUN_ID), clock=tui_scenes.clock, notifications=False)
        async with app.run_test(size=(160, 48)) as pilot:
            screen = ReviewScreen(items, forecast, tui_scenes.load_diff)
            app.push_screen(screen)
            await pilot.pause(0.3)
            matrix = screen.query_one("#review-matrix")
            rows = screen._matrix().plain.rstrip("\n").split("\n")
            assert matrix.size.height == len(rows), "a matrix row wrapped"
            widest = max(len(r) for r in rows if "conflicts with" not in r and "forecast" not in r)
            assert widest <= matrix.size.width, "a matrix row is cut"
            lines = screen_lines(app)
            assert any("update-deps" in line and "✗" in line for line in lines)
            assert any("cache-layer conflicts with update-deps" in line for line in lines)

    asyncio.run(main())


def test_review_title_when_everything_is_decided() -> None:
    async def check(app, pilot) -> None:
        screen = app.screen
        for name in ("greet-en", "greet-fr"):
            screen.decisions[name] = name == "greet-en"
            screen._refresh_row(name)
        await pilot.pause()
        title = screen_lines(app)[0]
        assert "to decide" not in title, title
        assert "all 4 decided: 3 approved, 1 rejected" in title, title

    scene("review", (160, 48), check)


def test_every_screen_fills_220x60() -> None:
    async def panes_fill(app, pilot) -> None:
        regions = [pane.region for pane in app.run_screen.panes.values()]
        assert max(r.right for r in regions) >= 215, "the grid takes the width"
        scroll = app.run_screen.query_one("#panes-scroll").region
        assert max(r.bottom for r in regions) >= scroll.bottom - 1, "the panes take the height"
        assert scroll.height >= 38

    async def diff_fills(app, pilot) -> None:
        diff = app.screen.query_one("#review-diff-scroll").region
        assert diff.right == 220 and diff.width >= 120 and diff.height >= 55

    for name, check in [("run", panes_fill), ("done", panes_fill), ("review", diff_fills)]:
        scene(name, (220, 60), check)


def test_arrow_keys_move_as_the_eye_expects() -> None:
    """Five panes in three columns: add-mul write-docs upgrade-build / greet-en greet-fr."""

    async def check(app, pilot) -> None:
        screen = app.run_screen
        assert screen._columns == 3

        async def at(name: str, *keys: str) -> str:
            screen.panes[name].focus()
            await pilot.pause()
            await pilot.press(*keys)
            return screen.focused_task

        assert await at("upgrade-build", "down") == "greet-fr", "down to the nearest pane of a shorter row"
        assert await at("upgrade-build", "right") == "upgrade-build", "right stops at the row's end"
        assert await at("greet-en", "left") == "greet-en", "left stops at the row's start"
        assert await at("greet-fr", "up") == "write-docs"
        assert await at("add-mul", "right", "right") == "upgrade-build"
        assert await at("greet-fr", "down") == "greet-fr"
        assert await at("greet-fr", "tab") == "add-mul", "tab goes round"

    scene("run", (160, 48), check)


def test_command_palette_has_one_entry_per_action() -> None:
    async def check(app, pilot) -> None:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert len(titles) == len(set(titles)), titles
        assert "Zoom [z]" in titles and "Maximize" not in titles, "z zooms: Textual's Maximize beside it is a twin"
        assert [t for t in titles if t.startswith("Quit")] == ["Quit [q]"], titles
        assert not any(t.startswith(("Next pane", "Pane ")) for t in titles), "moving focus is not a command"

    scene("run", (160, 48), check)


def test_review_keys_typed_ahead_decide_one_task_each() -> None:
    """``y y n`` typed faster than the table moves its cursor: one decision per task, in order."""

    async def check(app, pilot) -> None:
        screen = ReviewScreen(tui_scenes.review_items(), tui_scenes.review_forecast(), tui_scenes.load_diff)
        app.push_screen(screen)
        await pilot.pause(0.3)
        for approve in (True, True, False):  # three keys handled before any highlight message
            screen.action_decide(approve)
        await pilot.pause(0.2)
        assert screen.decisions == {"add-mul": True, "write-docs": True, "greet-en": False}

    scene("run", (160, 48), check)


def test_toasts_of_agents_finishing_at_once_leave_the_panes_readable_at_80x24() -> None:
    """Three agents finish at once at 80x24: Textual's toasts (60 columns but at most half the
    screen, five lines each) covered the right half of the panes. One toast, a third of the width."""
    from textual.widgets._toast import Toast

    from corral.core.events import TaskStatus

    async def main() -> None:
        app = CorralApp(bus=EventBus(tui_scenes.RUN_ID), clock=tui_scenes.clock, notifications=True)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await tui_scenes.play(app, "run", pilot.pause)
            for name in ("write-docs", "greet-en", "greet-fr"):
                app.bus.emit(TaskStatus(task=name, status="running", ts=tui_scenes.NOW))
                app.bus.emit(TaskStatus(task=name, status="succeeded", ts=tui_scenes.NOW))
            for _ in range(100):
                if len(app.screen.query(Toast)) >= 3:
                    break
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            shown = [t for t in app.screen.query(Toast) if t.region.area]
            assert len(shown) == 1, f"{len(shown)} toasts on screen at once"
            [toast] = shown
            assert "greet-fr" in str(toast.render()), "the newest is the one shown"
            assert toast.region.width <= 80 // 3 and toast.region.height <= 3, toast.region
            lines = screen_lines(app)
            assert any("Changing the greeting to hi there" in line for line in lines), "the focused pane reads"

    asyncio.run(main())
