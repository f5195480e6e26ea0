"""The home screen (plain ``corral``) on real repositories: runs, leftovers and their clean-up, and
starting an ad-hoc run from the form."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, has_jj, write_plan
from corral.tui.dashboard import CorralApp
from corral.tui.dialogs import ConfirmScreen
from corral.tui.home_screen import HomeScreen, ReportScreen
from corral.tui.past_run_screen import PastRunScreen
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
            await until(pilot, lambda: app.focused is home.query_one("#home-tasks"), what="typing starts in the form")
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
            await open_newest_run(app, pilot)
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ReportScreen), what="the run's report")
            assert "hello" in app.screen.path.read_text()
            await pilot.press("escape", "escape")
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


def test_enter_on_a_past_run_opens_its_tasks_diffs_and_logs_read_only(repo: Path, tmp_path: Path, wt_root: Path) -> None:
    """A run with a merged task (its branch deleted: the diff comes from the commit the run
    recorded), a failed one whose branch is kept, and a failed one whose branch was since deleted
    and its commit collected by git: each shows what it can and says what is gone. Nothing in the
    repository changes."""
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [
        ("merged", "echo merged-line > merged.txt; echo said merged"),
        ("kept", "echo kept-line > kept.txt; echo said kept; exit 3"),
        ("lost", "echo lost-line > lost.txt; exit 4"),
    ]))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    [run] = [p for p in (repo / ".git" / "corral" / "runs").iterdir()]
    lost = f"corral/{run.name}/lost"
    git(repo, "branch", "-D", lost)
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")

    def repo_state() -> tuple[str, ...]:
        return (git(repo, "for-each-ref"), git(repo, "status", "--porcelain", "--ignored"),
                git(repo, "worktree", "list", "--porcelain"), git(repo, "rev-parse", "HEAD"))

    before = repo_state()

    async def main() -> None:
        app = CorralApp(home_repo=str(repo), notifications=False)
        async with app.run_test(size=SIZE) as pilot:
            await open_newest_run(app, pilot)
            screen = app.screen
            tasks = screen.query_one("#past-tasks")
            rows = {str(tasks.get_row(k)[0]): [str(c) for c in tasks.get_row(k)] for k in tasks.rows}
            assert rows["merged"] == ["merged", "MERGED", "shell", "+1", "-0", "1"]
            assert rows["kept"][:2] == ["kept", "FAILED"] and rows["lost"][:2] == ["lost", "FAILED"]
            diffs = screen.diff_view.diffs

            await until(pilot, lambda: "merged" in diffs, what="diff of merged")
            assert "+merged-line" in diffs["merged"]
            assert "deleted; the diff is of the commit the run recorded" in screen.sources["merged"]
            await pilot.press("l")
            await until(pilot, lambda: "said merged" in str(screen.query_one("#past-log-text").render()),
                        what="log of merged")
            await pilot.press("l")

            await pilot.press("down")
            await until(pilot, lambda: "kept" in diffs, what="diff of kept")
            assert "+kept-line" in diffs["kept"] and screen.sources["kept"].endswith("(kept)")

            await pilot.press("down")
            await until(pilot, lambda: "lost" in diffs, what="diff of lost")
            assert "is gone too" in diffs["lost"] and "lost.txt" in diffs["lost"]
            assert "is gone too" in str(screen.query_one("#past-task").render())

            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, HomeScreen), what="home again")
            await pilot.press("q")

    asyncio.run(main())
    assert repo_state() == before, "opening a past run changed the repository"


async def open_newest_run(app: CorralApp, pilot) -> None:
    """From the home screen: ``enter`` on the newest run."""
    await until(pilot, lambda: isinstance(app.screen, HomeScreen) and app.screen.loaded, what="home loaded")
    table = app.screen.query_one("#home-runs")
    table.focus()
    table.move_cursor(row=0)
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, PastRunScreen), what="the run")


def test_a_past_run_s_kept_result_lands_from_its_screen_through_the_supervisor(repo: Path, tmp_path: Path,
                                                                               wt_root: Path) -> None:
    """``L`` on a past run whose verify failed (its result kept): base moved since; the result is
    merged onto it, verified again and landed in a run of the supervisor the dashboard follows, and
    the run's screen then has nothing left to land."""
    import json
    import subprocess

    from test_landing import commit_to, kept_run
    from test_supervisor import wait_supervisor_gone

    run, integ = kept_run(repo, tmp_path, wt_root)
    subprocess.run(commit_to(repo, "other.txt", "other\n", "meanwhile"), shell=True, check=True)
    (tmp_path / "fixed").touch()  # what made verify fail is fixed

    async def main() -> None:
        app = CorralApp(home_repo=str(repo), notifications=False)
        async with app.run_test(size=SIZE) as pilot:
            await open_newest_run(app, pilot)
            assert app.screen.check_action("land", ()) is True
            await pilot.press("L")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert integ in str(app.screen.body)
            await pilot.press("y")
            await until(pilot, lambda: isinstance(app.screen, RunScreen) and not app.pipeline_running,
                        what="the landing run to end", timeout=60)
            assert app.model.finished.exit_code == 0
            assert app.model.verify_result is not None and app.model.verify_result.ok
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, HomeScreen), what="home again")

    asyncio.run(main())
    assert {"one.txt", "other.txt"} <= set(git(repo, "ls-tree", "-r", "--name-only", "main").split())
    assert corral_state(repo)["branches"] == []
    data = json.loads((repo / ".git" / "corral" / "runs" / run / "run.json").read_text())
    assert data["landed"] is True
    screen = PastRunScreen(data, None)  # type: ignore[arg-type]
    assert screen.check_action("land", ()) is None, "a landed run has nothing left to land"
    wait_supervisor_gone(repo)


def test_changes_to_a_past_run_s_task_carry_it_on_in_a_new_run(repo: Path, tmp_path: Path, wt_root: Path) -> None:
    """``c`` on a task of an ended run: the message goes to its agent in a new run of the supervisor
    (its workspace re-opened from its kept branch), which the dashboard follows; the new work lands
    on the same branch, after the old, and goes on as the old plan said. A merged task can't be carried on (``c`` is dimmed)."""
    import json

    from test_supervisor import wait_supervisor_gone

    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [
        ("done", "echo done > done.txt"), ("kept", "echo kept-line > kept.txt; exit 3")], approve="all"))
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    [run] = [p.name for p in (repo / ".git" / "corral" / "runs").iterdir()]
    branch = f"corral/{run}/kept"

    async def main() -> None:
        app = CorralApp(home_repo=str(repo), notifications=False)
        async with app.run_test(size=SIZE) as pilot:
            await open_newest_run(app, pilot)
            screen = app.screen
            await until(pilot, lambda: screen.selected == "done", what="first task selected")
            assert screen.check_action("changes", ()) is None, "a merged task is not carried on"
            assert screen.check_action("land", ()) is None, "the run landed what passed"
            await pilot.press("down")
            await until(pilot, lambda: screen.selected == "kept", what="kept selected")
            assert screen.check_action("changes", ()) is True
            await pilot.press("c")
            await until(pilot, lambda: app.screen.__class__.__name__ == "FollowUpScreen", what="the message")
            await pilot.press(*"echo more > more.txt")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, RunScreen) and not app.pipeline_running,
                        what="the new run to end", timeout=60)
            assert app.bus.run != run
            new = json.loads((repo / ".git" / "corral" / "runs" / app.bus.run / "run.json").read_text())
            assert new["continues"] == {"run": run, "task": "kept"} and new["tasks"]["kept"]["turns"] == 2
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, HomeScreen), what="home again")

    asyncio.run(main())
    # the new turn succeeded: with the old plan's --approve all, the task's whole work landed
    files = git(repo, "ls-tree", "-r", "--name-only", "main").split()
    assert {"done.txt", "kept.txt", "more.txt"} <= set(files), files
    assert branch not in corral_state(repo)["branches"]
    wait_supervisor_gone(repo)


def review_leftovers(repo: Path, run: str) -> str:
    """In the dashboard: ``v`` on the past run ``run``, then in the new run's review approve
    ``one``, reject ``two``, merge and land. Returns the new run's id."""
    new_run = ""

    async def main() -> None:
        nonlocal new_run
        app = CorralApp(home_repo=str(repo), notifications=False)
        async with app.run_test(size=SIZE) as pilot:
            await open_newest_run(app, pilot)
            assert app.screen.check_action("review", ()) is True
            await pilot.press("v")
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="the review", timeout=60)
            screen = app.screen
            new_run = app.bus.run
            assert new_run != run
            assert screen.candidates == ["one", "two"], "a task that changed nothing is not taken up"
            await until(pilot, lambda: "one.txt" in screen.diff_view.diffs.get("one", ""), what="diff of one")
            await pilot.pause(0.1)
            await pilot.press("y", "n", "m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="land confirmation")
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, what="the run to end", timeout=60)
            assert app.model.finished.exit_code == 0
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, HomeScreen), what="home again")

    asyncio.run(main())
    return new_run


def test_a_past_run_s_leftovers_are_reviewed_again_approved_and_landed(repo: Path, tmp_path: Path,
                                                                      wt_root: Path) -> None:
    """``v`` on a past run whose tasks were rejected: a new run of the supervisor takes up their kept
    branches with no agent turn, straight to the review; one approved, one rejected again, the
    approved one lands; the rejected one's branch is still kept."""
    import json

    from test_supervisor import wait_supervisor_gone

    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [
        ("one", "echo 1 > one.txt"), ("two", "echo 2 > two.txt"), ("none", "true")], approve="none"))
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    [run] = [p.name for p in (repo / ".git" / "corral" / "runs").iterdir()]
    new_run = review_leftovers(repo, run)
    files = git(repo, "ls-tree", "-r", "--name-only", "main").split()
    assert "one.txt" in files and "two.txt" not in files
    assert corral_state(repo)["branches"] == [f"corral/{run}/two"]
    data = json.loads((repo / ".git" / "corral" / "runs" / new_run / "run.json").read_text())
    assert data["continues"] == {"run": run, "tasks": ["one", "two"]}
    assert data["tasks"]["one"]["status"] == "merged" and data["tasks"]["two"]["status"] == "rejected"
    wait_supervisor_gone(repo)


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_a_jj_past_run_s_leftovers_are_reviewed_again_and_landed(jj_repo: Path, tmp_path: Path) -> None:
    from test_jj import file_at, plan as jj_plan, run as jj_run, state
    from test_supervisor import wait_supervisor_gone

    res = jj_run(jj_repo, jj_plan(tmp_path, {"one": "echo 1 > one.txt", "two": "echo 2 > two.txt", "none": "true"},
                                  base="main", approve="none"))
    assert res.returncode == 0, res.stdout + res.stderr
    [run] = state(jj_repo)["runs"]
    review_leftovers(jj_repo, run)
    assert file_at(jj_repo, "main", "one.txt") == "1\n" and file_at(jj_repo, "main", "two.txt") is None
    assert state(jj_repo)["bookmarks"] == [f"corral/{run}/two"]
    wait_supervisor_gone(jj_repo)
