"""The real dashboard (Textual Pilot) driving real runs of shell agents in real git repositories."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


from conftest import corral_state, git
from corral.core.pipeline import prepare
from corral.core.plan import Plan, TaskSpec
from corral.tui.dashboard import CorralApp
from corral.tui.dialogs import ConfirmScreen
from corral.tui.review_screen import ReviewScreen
from corral.tui.run_screen import RunScreen

SIZE = (160, 48)

# prints a line every 50 ms for up to 30 s: long enough to act on, short enough not to hang a broken test
TICKER = 'i=0; while [ $i -lt 600 ]; do echo "{name} tick $i"; i=$((i+1)); sleep 0.05; done'


def shell_plan(tasks: dict[str, str], wt_root: Path, approve: str = "none", verify: str = "") -> Plan:
    return Plan(tasks=[TaskSpec(name, script, "shell") for name, script in tasks.items()], agent="shell",
                setup="none", approve=approve, verify=verify, worktree_root=str(wt_root))


async def until(pilot, predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def abort_all(pilot) -> None:
    """``A``, and yes to its question."""
    await pilot.press("A")
    await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), what="abort-all question")
    await pilot.press("y")


def run(coro) -> None:
    asyncio.run(coro)


def pane_lines(app: CorralApp, name: str) -> list[str]:
    return list(app.run_screen.panes[name].log_widget.lines)


def badge(app: CorralApp, name: str) -> str:
    return app.run_screen.panes[name].head.word


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_panes_output_and_abort_focused(repo: Path, wt_root: Path) -> None:
    names = ["alpha", "beta", "gamma"]

    async def main() -> None:
        prep = await prepare(shell_plan({n: TICKER.format(name=n) for n in names}, wt_root), repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.run_screen is not None and set(app.run_screen.panes) == set(names),
                        what="three panes")
            assert [p.task_name for p in app.run_screen.panes.values()] == names
            assert [p.border_title for p in app.run_screen.panes.values()] == names
            await until(pilot, lambda: all(any("tick 3" in l for l in pane_lines(app, n)) for n in names),
                        what="output in every pane")
            assert all(line.startswith("beta tick") for line in pane_lines(app, "beta"))
            assert badge(app, "beta") == "RUNNING"

            app.run_screen.panes["beta"].focus()
            await pilot.pause()
            await pilot.press("a")
            await until(pilot, lambda: app.model.tasks["beta"].status == "aborted", what="beta aborted")
            await pilot.pause(0.2)
            assert badge(app, "beta") == "ABORTED"
            assert app.model.tasks["alpha"].status == "running"
            assert app.model.tasks["gamma"].status == "running"
            before = len(pane_lines(app, "alpha"))
            await pilot.pause(0.4)
            assert len(pane_lines(app, "alpha")) > before, "the others keep running and printing"
            # the abort key is dimmed now that beta is done
            assert app.run_screen.check_action("abort", ()) is None

            await abort_all(pilot)
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            assert {n: app.model.tasks[n].status for n in names} == dict.fromkeys(names, "aborted")
            assert app.exit_code == 1
            await pilot.press("q")
        assert app.return_value == 1

    run(main())
    assert corral_state(repo)["worktrees"] == []


def test_discard_after_confirm_removes_worktree(repo: Path, wt_root: Path) -> None:
    async def main() -> None:
        plan = shell_plan({
            "keep": TICKER.format(name="keep"),
            "drop": "echo work > dropped.txt; " + TICKER.format(name="drop"),
        }, wt_root)
        prep = await prepare(plan, repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.rt is not None and all(
                app.model.tasks.get(n) and app.model.tasks[n].status == "running" for n in ("keep", "drop")),
                what="both running")
            ws = app.rt.tasks["drop"].workspace
            assert ws is not None and Path(ws.path).is_dir()
            app.run_screen.panes["drop"].focus()
            await pilot.pause()
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
            body = str(app.screen.body)
            assert str(ws.path) in body and ws.ref in body, "the dialog says what will be deleted"
            assert "1 uncommitted file(s) in the workspace: dropped.txt" in body, body
            assert app.screen.focused is not None and app.screen.focused.id == "no", "focus on the safe choice"
            await pilot.press("y")
            await until(pilot, lambda: app.model.tasks["drop"].status == "discarded", what="discarded")
            assert not Path(ws.path).exists()
            worktrees = git(repo, "worktree", "list", "--porcelain")
            assert str(ws.path) not in worktrees
            assert ws.ref not in git(repo, "branch", "--list", "corral/*")
            assert app.model.tasks["keep"].status == "running"
            await pilot.pause(0.2)
            assert badge(app, "drop") == "DISCARDED"

            await abort_all(pilot)
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            await pilot.press("q")

    run(main())
    assert corral_state(repo)["worktrees"] == []


def test_review_approves_two_of_three_and_merges_exactly_those(repo: Path, wt_root: Path) -> None:
    tasks = {
        "one": "echo 'one' > one.txt; echo made one",
        "two": "echo 'two' > two.txt; echo made two",
        "three": "echo 'three' > three.txt; echo made three",
    }

    async def main() -> None:
        prep = await prepare(shell_plan(tasks, wt_root, approve="ask"), repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="review screen")
            screen = app.screen
            assert screen.candidates == ["one", "two", "three"]
            await until(pilot, lambda: "+++ b/one.txt" in screen.diff_view.diffs.get("one", ""), what="diff of one")
            assert screen.selected == "one"
            await pilot.pause(0.1)
            await pilot.press("y")  # one: approve, cursor moves on to two
            await pilot.press("n")  # two: reject
            await pilot.press("y")  # three: approve
            assert screen.decisions == {"one": True, "two": False, "three": True}
            await pilot.press("m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="land confirmation")
            assert "Land one, three onto main?" in str(app.screen.body)
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            status = {n: app.model.tasks[n].status for n in tasks}
            assert status == {"one": "merged", "two": "rejected", "three": "merged"}
            assert app.exit_code == 0
            await pilot.press("q")
        assert app.return_value == 0

    run(main())
    files = set(git(repo, "ls-tree", "-r", "--name-only", "main").splitlines())
    assert {"one.txt", "three.txt"} <= files
    assert "two.txt" not in files
    assert corral_state(repo)["worktrees"] == []


def test_quit_while_running_stops_everything(repo: Path, wt_root: Path) -> None:
    pids: list[int] = []

    async def main() -> None:
        plan = shell_plan({n: TICKER.format(name=n) for n in ("p", "q")}, wt_root)
        prep = await prepare(plan, repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.rt is not None and all(
                app.rt.tasks[n].pid for n in ("p", "q")) and all(
                app.model.tasks[n].status == "running" for n in ("p", "q")), what="agents running")
            pids.extend(app.rt.tasks[n].pid for n in ("p", "q"))
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="quit confirmation")
            assert "2 task(s) still running" in str(app.screen.body)
            await pilot.press("y")
            await until(pilot, lambda: not app.is_running, timeout=30, what="app exit")
        assert app.return_value == 130

    run(main())
    state = corral_state(repo)
    assert state["worktrees"] == []
    assert list(wt_root.iterdir()) == []
    assert not any(pid_alive(p) for p in pids)


def test_quit_after_cancel_answer_keeps_running(repo: Path, wt_root: Path) -> None:
    async def main() -> None:
        prep = await prepare(shell_plan({"solo": TICKER.format(name="solo")}, wt_root), repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.model.tasks.get("solo") and app.model.tasks["solo"].status == "running",
                        what="running")
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="quit confirmation")
            await pilot.press("escape")
            await pilot.pause(0.2)
            assert isinstance(app.screen, RunScreen)
            assert app.pipeline_running and app.model.tasks["solo"].status == "running"
            await abort_all(pilot)
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            await pilot.press("q")

    run(main())
    assert corral_state(repo)["worktrees"] == []


def test_output_flushed_while_the_dashboard_runs_reaches_textual(repo: Path, wt_root: Path) -> None:
    """While the app runs, Textual stands in for stdout and stderr and calls ``App._flush(stderr=...)``
    on every flush (a library's ``print(..., flush=True)``): the dashboard's own flush of its panes
    once had that name, and every such flush raised TypeError."""
    import sys

    async def main() -> None:
        prep = await prepare(shell_plan({"solo": "echo hello"}, wt_root), repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            print("a library's progress line", flush=True)
            print("and a warning", file=sys.stderr, flush=True)
            await pilot.press("q")

    run(main())


def test_zoom_events_and_dimmed_keys(repo: Path, wt_root: Path) -> None:
    async def main() -> None:
        plan = shell_plan({"left": TICKER.format(name="left"), "right": TICKER.format(name="right")}, wt_root)
        prep = await prepare(plan, repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.run_screen is not None and app.run_screen.focused_pane is not None
                        and app.model.tasks["right"].status == "running", what="running")
            screen = app.run_screen
            assert screen.focused_task == "left"
            assert screen.check_action("review", ()) is None, "nothing to review yet: dimmed"
            assert screen.check_action("abort", ()) is True
            titles = [c.title for c in app.get_system_commands(screen)]
            assert "Abort [a]" in titles and not any(t.startswith("Review") for t in titles)
            await pilot.press("right")
            assert screen.focused_task == "right"
            await pilot.press("z")
            assert screen.zoomed is screen.panes["right"]
            assert app.screen.pane.region.width >= SIZE[0] - 2, "the zoomed pane takes the width"
            await pilot.press("z")
            assert screen.zoomed is None and app.screen is screen
            events = screen.query_one("#events-box")
            assert events.collapsed
            await pilot.press("e")
            assert not events.collapsed
            await pilot.pause(0.3)
            assert any("right: running" in line for line in screen.query_one("#event-log").lines)
            await abort_all(pilot)
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            await pilot.press("q")

    run(main())


def test_runner_program_asks_through_the_dashboard(repo: Path) -> None:
    """A program-style runner on the real runtime: its agent gets a pane, rt.approve() asks here."""
    from corral.core.agents import BUILTIN
    from corral.core.journal import Journal, new_run_id
    from corral.core.runtime import RunOptions, Runtime
    from corral.core.vcs import open_backend

    answers: list[bool] = []

    async def runner(approver, bus, on_runtime) -> int:
        backend = await open_backend(repo)
        run_id = new_run_id()
        journal = Journal(backend.state_dir, run_id)
        journal.create()
        try:
            rt = Runtime(backend=backend, bus=bus, journal=journal, profiles=dict(BUILTIN), approver=approver,
                         options=RunOptions(run_id=run_id, grace=0.5), base_name="main",
                         base_commit=await backend.resolve("main"))
            on_runtime(rt)
            async with rt:
                result = await rt.join(rt.spawn({"agent": "shell", "name": "probe", "task": "echo probing",
                                                 "cwd": str(repo)}))
                answers.append(await rt.approve(f"probe said {result.text or 'something'}; go on?"))
            return 0 if answers[0] else 1
        finally:
            journal.close()
            await backend.close()

    async def main() -> None:
        app = CorralApp(runner=runner, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "go on?" in str(app.screen.body)
            await until(pilot, lambda: "probe" in app.run_screen.panes and app.run_screen.panes["probe"].ready
                        and pane_lines(app, "probe") == ["probing"], what="the agent's pane")
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, what="program end")
            assert answers == [True] and app.exit_code == 0
            await pilot.press("q")
        assert app.return_value == 0

    run(main())


def test_review_waits_for_an_open_question_and_never_takes_its_keys(repo: Path, wt_root: Path,
                                                                   tmp_path: Path) -> None:
    """``q`` mid-run, the agents finish under the quit question: the review must not open on top of
    it (``n`` there would reject a task, ``y`` approve one); the question says the run went on."""
    gate = tmp_path / "gate"
    task = f"echo work > work.txt; while [ ! -e {gate} ]; do sleep 0.05; done; echo done"

    async def main() -> None:
        prep = await prepare(shell_plan({"solo": task}, wt_root, approve="ask"), repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.model.tasks.get("solo") and app.model.tasks["solo"].status == "running",
                        what="running")
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="quit question")
            question = app.screen
            assert "1 task(s) still running" in str(question.body)
            gate.touch()
            await until(pilot, lambda: app.review_pending, what="review ready")
            await pilot.pause(0.3)
            assert app.screen is question, "nothing opens over an open question"
            assert "still running" not in str(question.body), "the question says what is true now"
            assert "review is ready" in str(question.body)
            await pilot.press("n")  # Keep running: meant for the question, not for the review
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="review after the answer")
            assert app.screen.decisions == {}, "the answer to the question decided nothing in the review"
            assert app.pipeline_running
            await pilot.press("y", "m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="land confirmation")
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            assert app.model.tasks["solo"].status == "merged"
            await pilot.press("q")
        assert app.return_value == 0

    run(main())
    assert corral_state(repo)["worktrees"] == []


def test_abort_all_and_abort_of_a_writer_ask_first(repo: Path, wt_root: Path) -> None:
    """``A`` ends the run and ``a`` on an agent that has written files loses its chance to finish:
    both ask, with focus on keeping it running; ``a`` on an agent that wrote nothing just aborts."""
    tasks = {"writer": "echo draft > draft.txt; " + TICKER.format(name="writer"),
             "reader": TICKER.format(name="reader"), "idle": TICKER.format(name="idle")}

    async def main() -> None:
        prep = await prepare(shell_plan(tasks, wt_root), repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: all(any("tick 2" in l for l in pane_lines(app, n)) for n in tasks),
                        what="all running")
            await pilot.press("A")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="abort-all question")
            assert app.screen.focused.id == "no", "focus on the safe choice"
            await pilot.press("enter")  # the focused button: keep running
            await pilot.pause(0.3)
            assert all(app.model.tasks[n].status == "running" for n in tasks)

            app.run_screen.panes["writer"].focus()
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="abort question")
            assert "draft.txt" in str(app.screen.body)
            await pilot.press("escape")
            await pilot.pause(0.3)
            assert app.model.tasks["writer"].status == "running"

            app.run_screen.panes["reader"].focus()
            await pilot.press("a")
            await until(pilot, lambda: app.model.tasks["reader"].status == "aborted", what="reader aborted")
            assert not isinstance(app.screen, ConfirmScreen)

            await abort_all(pilot)
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            assert {n: app.model.tasks[n].status for n in tasks} == dict.fromkeys(tasks, "aborted")
            await pilot.press("q")

    run(main())
    assert corral_state(repo)["worktrees"] == []
