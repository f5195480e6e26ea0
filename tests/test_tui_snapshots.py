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


def _past_run_repo(parent: Path) -> Path:
    """A repository whose journal holds one run (fixed dates, so fixed commit ids): ``add-mul``
    merged (its branch deleted: its diff comes from the recorded commit), ``write-docs`` failed with
    its branch kept, ``upgrade-build`` failed and its branch since deleted and collected."""
    from conftest import git

    repo = make_repo(parent / "corral-snapshot-past", {"calc/ops.py": "def add(a, b):\n    return a + b\n"})
    base = git(repo, "rev-parse", "HEAD").strip()
    heads = {}
    for name, path, text in [("add-mul", "calc/mul.py", "def mul(a, b):\n    return a * b\n"),
                             ("write-docs", "docs/guide.md", "# Guide\n\n## Install\n\npip install calc\n")]:
        git(repo, "checkout", "-q", "-b", f"corral/{tui_scenes.RUN_ID}/{name}", base)
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"corral: {name}")
        heads[name] = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "corral: merge add-mul", heads["add-mul"])
    git(repo, "branch", "-q", "-D", f"corral/{tui_scenes.RUN_ID}/add-mul")
    d = repo / ".git" / "corral" / "runs" / tui_scenes.RUN_ID
    (d / "logs").mkdir(parents=True)
    (d / "logs" / "add-mul.log").write_text("Reading calc/ops.py\nDone: mul() added.\n")
    tasks = {
        "add-mul": {"status": "merged", "agent": "claude", "commit": heads["add-mul"], "files": ["calc/mul.py"],
                    "added": 2, "removed": 0, "duration": 41.5, "cost": 0.0412},
        "write-docs": {"status": "failed", "reason": "exit code 1", "agent": "codex", "commit": heads["write-docs"],
                       "files": ["docs/guide.md"], "added": 5, "removed": 0, "duration": 63.0},
        "upgrade-build": {"status": "failed", "reason": "exit code 3", "agent": "aider", "commit": "f" * 40,
                          "files": ["build.toml"], "added": 3, "removed": 1, "duration": 38.0},
    }
    for name, t in tasks.items():
        t.update(branch=f"corral/{tui_scenes.RUN_ID}/{name}", base_commit=base)
    data = {"run": tui_scenes.RUN_ID, "state": "failed", "started": tui_scenes.T0, "landed": True, "base": "main",
            "base_commit": base, "tasks": tasks}
    (d / "run.json").write_text(json.dumps(data))
    return repo


@pytest.mark.parametrize("size", SIZES)
def test_past_run_screen(snap_compare, monkeypatch, tmp_path, size: str) -> None:
    """``enter`` on a run of the home screen: its tasks, the merged task's diff."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    for var in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        monkeypatch.setenv(var, "2027-01-15T08:30:00Z")
    repo = _past_run_repo(tmp_path)
    app = CorralApp(home_repo=str(repo), notifications=False)

    async def opened(pilot) -> None:
        from corral.tui.home_screen import HomeScreen
        from corral.tui.past_run_screen import PastRunScreen

        for _ in range(100):
            if isinstance(pilot.app.screen, HomeScreen) and pilot.app.screen.loaded:
                break
            await pilot.pause(0.05)
        table = pilot.app.screen.query_one("#home-runs")
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("enter")
        for _ in range(100):
            screen = pilot.app.screen
            if isinstance(screen, PastRunScreen) and "add-mul" in screen.diff_view.diffs:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)

    try:
        assert snap_compare(app, terminal_size=SIZES[size], run_before=opened)
    finally:
        monkeypatch.undo()
        time.tzset()
