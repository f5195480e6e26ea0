"""Snapshot tests of the dashboard (pytest-textual-snapshot): fixed terminal size, frozen clock and ids.

Review a failing snapshot's report, then accept with ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from pathlib import Path

from rich.text import Text
from textual.widgets import Static

import tui_scenes
from conftest import make_repo
from corral.core.events import EventBus
from corral.tui.dashboard import CorralApp

#: the smallest terminal people use, the size the README's screenshots are taken at, a large one
SIZES = {"80x24": (80, 24), "140x40": (140, 40), "220x60": (220, 60)}


def run_app() -> CorralApp:
    return CorralApp(bus=EventBus(tui_scenes.RUN_ID), clock=tui_scenes.clock, notifications=False)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scene", ["run", "zoom", "review", "land", "done"])
def test_dashboard(snap_compare, scene: str, size: str) -> None:
    """The run screen mid-run, a zoomed pane, the review on a conflicting task, the land question
    with the verify result, and the run screen after landing."""

    async def play(pilot) -> None:
        await tui_scenes.play(pilot.app, scene, pilot.pause)

    assert snap_compare(run_app(), terminal_size=SIZES[size], run_before=play)


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


@pytest.mark.parametrize("size", SIZES)
def test_home_screen(snap_compare, monkeypatch, tmp_path, size: str) -> None:
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
        assert snap_compare(app, terminal_size=SIZES[size], run_before=loaded)
    finally:
        monkeypatch.undo()
        time.tzset()
