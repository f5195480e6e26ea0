"""The home screen (plain ``corral``) on real repositories: runs, leftovers and their clean-up, and
starting an ad-hoc run from the form."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import corral, corral_state, git, write_plan
from corral.tui.dashboard import CorralApp
from corral.tui.dialogs import ConfirmScreen
from corral.tui.home_screen import HomeScreen, ReportScreen
from corral.tui.review_screen import ReviewScreen
from corral.tui.run_screen import RunScreen
from test_engine_git import plan_text
from test_faults import start_run, wait_for
from test_tui_pilot import SIZE, pane_lines, until


def make_leftover(repo: Path, tmp_path: Path) -> tuple[Path, str]:
    """What a SIGKILLed corral leaves: its registered worktree on a corral branch, holding uncommitted work."""
    wt_root = tmp_path / "worktrees"
    wt_root.mkdir()
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [
        ("lost", "echo 'work an agent left' > salvage.txt; echo started; exec sleep 600")]))
    proc = start_run(repo, plan, "--approve", "all")
    wait_for(proc, "started", 1)
    proc.kill()
    proc.wait(timeout=10)
    [path] = list(wt_root.iterdir())
    [branch] = corral_state(repo)["branches"]
    return path, branch


def test_home_lists_leftovers_and_cleans_them_keeping_work(repo: Path, tmp_path: Path) -> None:
    path, branch = make_leftover(repo, tmp_path)

    async def main() -> None:
        app = CorralApp(home_repo=str(repo), notifications=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, HomeScreen) and app.screen.loaded and app.screen.leftovers,
                        what="leftovers listed")
            screen = app.screen
            assert [lo.ref for lo in screen.leftovers] == [branch]
            assert screen.check_action("clean", ()) is True
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
            assert str(path) in str(app.screen.body)
            await pilot.press("y")
            await until(pilot, lambda: isinstance(app.screen, HomeScreen) and not app.screen.leftovers,
                        what="leftover cleaned")
            assert screen.check_action("clean", ()) is None, "clean-up is dimmed when nothing is left"
            await pilot.press("q")

    asyncio.run(main())
    assert not path.exists()
    assert corral_state(repo)["worktrees"] == []
    # the uncommitted work was salvaged onto its branch, which is kept
    assert branch in corral_state(repo)["branches"]
    assert "salvage.txt" in git(repo, "ls-tree", "-r", "--name-only", branch)


def test_home_starts_an_adhoc_run(repo: Path) -> None:
    async def main() -> None:
        app = CorralApp(home_repo=str(repo), notifications=False, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, HomeScreen) and app.screen.loaded, what="home loaded")
            home = app.screen
            assert app.focused is home.query_one("#home-tasks"), "typing starts in the form"
            await pilot.press("c", "q")  # letters of a task name: no clean-up, no quit
            assert home.query_one("#home-tasks").text == "cq" and not isinstance(app.screen, ConfirmScreen)
            home.query_one("#home-agent").value = "shell"
            home.query_one("#home-tasks").text = "bad name!=echo x"
            await pilot.press("ctrl+r")
            await until(pilot, lambda: "bad task name" in str(home.query_one("#home-error").render()),
                        what="form error")
            assert isinstance(app.screen, HomeScreen), "a bad form starts nothing"
            home.query_one("#home-tasks").text = "hello=echo hello from the form > hello.txt; echo said hello"
            await pilot.press("ctrl+r")
            await until(pilot, lambda: app.run_screen is not None and app.prep is not None, what="run screen")
            assert app.run_screen in app.screen_stack and isinstance(app.run_screen, RunScreen)
            await until(pilot, lambda: "hello" in app.run_screen.panes and "said hello" in pane_lines(app, "hello"),
                        what="output of hello")
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="review")
            await pilot.press("y", "m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="land confirmation")
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            assert app.model.tasks["hello"].status == "merged"
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, HomeScreen) and home.loaded > 1,
                        what="back home after the run")
            assert app.is_running and app.run_screen is None
            assert home.runs and home.runs[0]["state"] == "completed", "the run just made is listed"
            table = home.query_one("#home-runs")
            table.focus()
            table.move_cursor(row=0)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ReportScreen), what="the run's report")
            assert "hello" in app.screen.path.read_text()
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is home, what="home again")
            await pilot.press("q")
        assert app.return_value == 0

    asyncio.run(main())
    assert "hello.txt" in git(repo, "ls-tree", "-r", "--name-only", "main")
    assert corral_state(repo)["worktrees"] == []


def test_home_outside_a_repository_is_one_line_exit_2(tmp_path: Path) -> None:
    res = corral("--repo", str(tmp_path / "nowhere"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "corral:" in res.stderr


def test_an_error_in_background_work_is_shown(repo: Path, tmp_path: Path) -> None:
    """The repository goes away under the home screen; reloading fails in a worker: the person sees
    it (a notification, and the event log), it does not vanish."""
    import shutil

    async def main() -> None:
        app = CorralApp(home_repo=str(repo), notifications=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, HomeScreen) and app.screen.loaded, what="home loaded")
            shutil.rmtree(repo)
            await pilot.press("f5")
            await until(pilot, lambda: any(n.severity == "error" for n in app._notifications), what="an error shown")
            [note] = [n for n in app._notifications if n.severity == "error"]
            assert "load failed" in note.message, note.message
            assert any("load failed" in line for line in app.model.log_pending), "and in the event log"
            await pilot.press("q")

    asyncio.run(main())
