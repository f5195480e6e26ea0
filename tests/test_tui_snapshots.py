"""Snapshot tests of the dashboard (pytest-textual-snapshot): fixed terminal size, frozen clock and ids.

Review a failing snapshot's report, then accept with ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.text import Text
from textual.widgets import Static

import tui_scenes
from conftest import make_repo
from corral.core.events import EventBus
from corral.tui.dashboard import CorralApp
from corral.tui.review_screen import ReviewScreen

SIZE = (140, 40)


def run_app() -> CorralApp:
    bus = EventBus(tui_scenes.RUN_ID)
    app = CorralApp(bus=bus, clock=tui_scenes.clock, notifications=False)
    app._scene_bus = bus  # type: ignore[attr-defined]
    return app


async def _feed(pilot) -> None:
    app = pilot.app
    tui_scenes.feed_run(app._scene_bus)
    await pilot.pause(0.3)
    app.run_screen.panes["greet-en"].focus()
    await pilot.pause(0.1)


def test_run_screen(snap_compare) -> None:
    assert snap_compare(run_app(), terminal_size=SIZE, run_before=_feed)


def test_zoomed_pane(snap_compare) -> None:
    async def zoom(pilot) -> None:
        await _feed(pilot)
        pilot.app.run_screen.panes["write-docs"].focus()
        await pilot.pause()
        await pilot.press("z")
        await pilot.pause(0.2)

    assert snap_compare(run_app(), terminal_size=SIZE, run_before=zoom)


def test_review_screen_with_conflict(snap_compare) -> None:
    async def review(pilot) -> None:
        await _feed(pilot)
        screen = ReviewScreen(tui_scenes.review_items(), tui_scenes.review_forecast(), tui_scenes.load_diff,
                              {"add-mul": True, "write-docs": True})
        pilot.app.push_screen(screen)
        await pilot.pause(0.2)
        await pilot.press("down", "down", "down")  # to greet-en, which conflicts with greet-fr
        await pilot.pause(0.3)

    assert snap_compare(run_app(), terminal_size=SIZE, run_before=review)


def _home_repo(parent: Path) -> Path:
    """A repository in ``parent`` with two runs in its journal (fixed ids and times)."""
    repo = make_repo(parent / "corral-snapshot-home")
    runs = repo / ".git" / "corral" / "runs"
    for run, state, started, landed, statuses in [
        ("20270114-171500-9f3e", "completed", 1_799_946_900.0, True, ["merged", "merged", "rejected"]),
        ("20270115-083000-c0de", "failed", 1_800_001_800.0, True, ["merged", "failed", "conflict", "merged"]),
    ]:
        d = runs / run
        d.mkdir(parents=True)
        data = {"run": run, "state": state, "started": started, "landed": landed, "pid": 1,
                "tasks": {f"t{i}": {"status": s} for i, s in enumerate(statuses)}}
        (d / "run.json").write_text(json.dumps(data))
    return repo


def test_home_screen(snap_compare, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    # the agent list says which agents are installed: make that the same on every machine
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    repo = _home_repo(tmp_path)
    app = CorralApp(home_repo=str(repo), notifications=False)

    async def loaded(pilot) -> None:
        from corral.tui.home_screen import HomeScreen

        for _ in range(100):
            screen = pilot.app.screen
            if isinstance(screen, HomeScreen) and screen.loaded:
                break
            await pilot.pause(0.05)
        await pilot.wait_for_scheduled_animations()
        # the title names the repository by its path, which differs from run to run: checked here,
        # then shown as one fixed path for the image
        title = pilot.app.screen.query_one("#home-title", Static)
        assert str(title.render()) == f" corral   {repo}  (git)"
        title.update(Text.assemble((" corral ", "bold reverse"), "  ", ("/tmp/corral-snapshot-home", "bold"),
                                   ("  (git)", "dim")))
        await pilot.pause(0.3)

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=loaded)
    finally:
        monkeypatch.undo()
        time.tzset()
