"""``R`` in the live run's review (the real dashboard under Textual's Pilot, real git and jj): a task
marked CONFLICT goes to the resolver agent by hand, whose resolution shows as a diff of its own before
it is verified and landed; on a failed task ``R`` asks for a new attempt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import corral_state, git, has_jj
from corral.core.pipeline import prepare
from corral.core.plan import parse_plan_text
from corral.tui.dashboard import CorralApp
from corral.tui.dialogs import ConfirmScreen
from corral.tui.review_screen import ReviewScreen
from test_engine_git import plan_text
from test_tui_pilot import SIZE, run, until

RESOLVED = "VALUE = 30"


def conflict_plan(tmp_path: Path, wt_root: Path, fixer: str, **top: object):
    """Two tasks that set the same line, one beside them (``resolve`` left at its default, ask), and a
    shell resolver ``fixer`` (its working directory written to ``cwd.txt``)."""
    tasks = [("first", "echo 'VALUE = 10' > src/app.py"), ("second", "echo 'VALUE = 20' > src/app.py"),
             ("other", "echo x > x.txt")]
    top.setdefault("verify", "grep -q 30 src/app.py")
    body = plan_text(wt_root, tasks, approve="ask", resolver="fixer", **top)
    command = ["sh", "-c", f'pwd > {tmp_path / "cwd.txt"}; {fixer}', "{prompt}"]
    body += f'\n[agents.fixer]\ncommand = {json.dumps(command)}\nformat = "text"\n'
    return parse_plan_text(body)


def review_shown(app: CorralApp) -> ReviewScreen | None:
    """The review screen on top, once mounted (a task selected)."""
    screen = app.screen
    return screen if isinstance(screen, ReviewScreen) and screen.selected is not None else None


def conflicts_screen(app: CorralApp) -> ReviewScreen | None:
    screen = review_shown(app)
    return screen if screen is not None and screen.conflicts else None


async def approve_all_and_merge(app: CorralApp, pilot) -> ReviewScreen:
    """Approve every task and merge: the review comes back with the conflicts (returned)."""
    await until(pilot, lambda: review_shown(app) is not None, what="review screen")
    await pilot.press("Y", "m")
    await until(pilot, lambda: conflicts_screen(app) is not None, what="the conflicts on the review screen")
    screen = app.screen
    assert isinstance(screen, ReviewScreen)
    return screen


async def resolve_by_hand(app: CorralApp, pilot, tmp_path: Path) -> None:
    """Approve every task; at the conflict, ``R``; see the resolution's own diff; go on and land."""
    await until(pilot, lambda: review_shown(app) is not None, what="review screen")
    assert not app.screen.conflicts
    screen = await approve_all_and_merge(app, pilot)
    assert screen.items["second"].status == "conflict" and screen.selected == "second"
    assert "second conflicts in src/app.py (R: agent fixer resolves it)" in screen.conflicts
    assert app.model.tasks["second"].status == "conflict"
    await pilot.press("R")
    # the resolver ran in a pane of its own, in the integration workspace; the review comes back
    await until(pilot, lambda: (s := conflicts_screen(app)) is not None and "resolve-second" in s.items,
                timeout=60, what="the review with the resolution")
    screen = app.screen
    assert "resolve-second" in app.run_screen.panes
    assert "resolve-second resolved the conflict of second" in screen.conflicts
    assert screen.items["second"].status == "succeeded"
    resolution = screen.items["resolve-second"]
    assert (resolution.files, resolution.added, resolution.removed) == (["src/app.py"], 1, 1)
    # selected: its diff is the resolver's commit, apart from the task's own
    assert screen.selected == "resolve-second"
    await until(pilot, lambda: "+VALUE = 30" in screen.diff_view.diffs.get("resolve-second", ""),
                what="the resolution's diff")
    assert "-VALUE = 10" in screen.diff_view.diffs["resolve-second"]
    screen.query_one("#review-tasks").move_cursor(row=screen.order.index("second"))
    await until(pilot, lambda: "+VALUE = 20" in screen.diff_view.diffs.get("second", ""), what="second's diff")
    await pilot.press("m")
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=60, what="land confirmation")
    assert "Land first, second, other onto main?" in str(app.screen.body)
    await pilot.press("y")
    await until(pilot, lambda: not app.pipeline_running, timeout=60, what="run end")
    status = {n: app.model.tasks[n].status for n in ("first", "second", "other", "resolve-second")}
    assert status == {"first": "merged", "second": "merged", "other": "merged", "resolve-second": "succeeded"}
    assert app.exit_code == 0
    await pilot.press("q")


def test_R_on_a_conflict_resolves_it_by_hand_and_its_diff_shows_before_it_lands(repo, tmp_path, wt_root):
    plan = conflict_plan(tmp_path, wt_root, f"printf '{RESOLVED}\\n' > src/app.py && git add -A && "
                                            "git commit -q --no-edit")

    async def main() -> None:
        app = CorralApp(prep=await prepare(plan, repo), grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await resolve_by_hand(app, pilot, tmp_path)

    run(main())
    assert git(repo, "show", "main:src/app.py") == RESOLVED and git(repo, "show", "main:x.txt") == "x"
    assert Path((tmp_path / "cwd.txt").read_text().strip()).parent == wt_root  # in the integration worktree
    state = corral_state(repo)
    assert state["branches"] == [] and state["worktrees"] == []


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_R_on_a_jj_conflict_resolves_it_by_hand(jj_repo, tmp_path, wt_root):
    from test_jj import file_at, state

    repo = jj_repo
    plan = conflict_plan(tmp_path, wt_root, f"printf '{RESOLVED}\\n' > src/app.py")

    async def main() -> None:
        app = CorralApp(prep=await prepare(plan, repo), grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await resolve_by_hand(app, pilot, tmp_path)

    run(main())
    assert file_at(repo, "main", "src/app.py") == RESOLVED + "\n" and file_at(repo, "main", "x.txt") == "x\n"
    left = state(repo)
    assert left["bookmarks"] == [] and left["workspaces"] == []


def test_a_resolver_that_fails_by_hand_leaves_the_conflict_to_go_on_without(repo, tmp_path, wt_root):
    """The resolver exits leaving the markers: the review comes back with the task still CONFLICT (R
    again is possible); going on lands the others, the task's work stays on its branch."""
    plan = conflict_plan(tmp_path, wt_root, "git add -A && git commit -q --no-edit", verify="true")

    async def main() -> None:
        app = CorralApp(prep=await prepare(plan, repo), grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            first = await approve_all_and_merge(app, pilot)
            await pilot.press("R")
            await until(pilot, lambda: (s := conflicts_screen(app)) is not None and s is not first, timeout=60,
                        what="the conflicts again")
            screen = app.screen
            assert screen.items["second"].status == "conflict"
            assert screen.items["resolve-second"].status == "failed"
            assert app.model.tasks["resolve-second"].status == "failed"
            # escape goes back to the run screen, r brings the conflicts back
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is app.run_screen, what="the run screen")
            await pilot.press("r")
            await until(pilot, lambda: conflicts_screen(app) is not None, what="the conflicts once more")
            await pilot.press("m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=60, what="land confirmation")
            assert "Land first, other onto main?" in str(app.screen.body)
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, timeout=60, what="run end")
            assert app.model.tasks["second"].status == "conflict"
            await pilot.press("q")

    run(main())
    assert git(repo, "show", "main:src/app.py") == "VALUE = 10"
    [branch] = corral_state(repo)["branches"]
    assert branch.endswith("/second") and git(repo, "show", f"{branch}:src/app.py") == "VALUE = 20"


def test_R_on_a_failed_task_in_the_review_asks_for_a_new_attempt(repo, tmp_path, wt_root):
    from corral.tui.dialogs import FollowUpScreen

    plan = parse_plan_text(plan_text(wt_root, [("good", "echo 1 > one.txt"), ("bad", "exit 3")], approve="ask"))

    async def main() -> None:
        app = CorralApp(prep=await prepare(plan, repo), grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: review_shown(app) is not None, what="review screen")
            screen = app.screen
            screen.query_one("#review-tasks").move_cursor(row=screen.order.index("bad"))
            await until(pilot, lambda: screen.selected == "bad", what="bad selected")
            await pilot.press("R")
            await until(pilot, lambda: isinstance(app.screen, FollowUpScreen), what="the retry prompt")
            assert app.screen.title_text == "Retry bad"
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen, what="back to the review")
            await pilot.press("n", "m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="nothing approved question")
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, timeout=60, what="run end")
            await pilot.press("q")

    run(main())


def test_a_resolver_aborted_by_the_user_leaves_the_conflict(repo, tmp_path, wt_root):
    """The person aborts the resolver they started: the integration is put back (no half-resolved
    file lands), the review comes back with the task still CONFLICT, and ``R`` can try again."""
    plan = conflict_plan(tmp_path, wt_root, "printf 'VALUE = 3' > src/app.py; "
                                            "i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
                         verify="true")

    async def main() -> None:
        app = CorralApp(prep=await prepare(plan, repo), grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            first = await approve_all_and_merge(app, pilot)
            await pilot.press("R")
            await until(pilot, lambda: getattr(app.model.tasks.get("resolve-second"), "status", "") == "running",
                        what="the resolver running")
            await app.abort_task("resolve-second")
            await until(pilot, lambda: (s := conflicts_screen(app)) is not None and s is not first, timeout=60,
                        what="the conflicts again")
            screen = app.screen
            assert screen.items["second"].status == "conflict" and screen.items["resolve-second"].status == "failed"
            assert screen.selected == "second" and screen.check_action("resolve", ()) is True
            await pilot.press("m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=60, what="land confirmation")
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, timeout=60, what="run end")
            await pilot.press("q")

    run(main())
    assert git(repo, "show", "main:src/app.py") == "VALUE = 10"
    assert [b.rsplit("/", 1)[1] for b in corral_state(repo)["branches"]] == ["second"]


def test_a_conflict_resolved_by_hand_is_resolved_again_as_verify_bisects(repo, tmp_path, wt_root):
    """Verify fails on the merge because of another task: each merge bisection tries holds the
    conflict again, and the resolver settles it there without asking again (the person said R)."""
    from corral.tui.dashboard import LAND_TITLE

    plan = conflict_plan(tmp_path, wt_root, f"printf '{RESOLVED}\\n' > src/app.py && git add -A && "
                                            "git commit -q --no-edit", verify="grep -q 30 src/app.py && ! test -f bad")
    plan.tasks.append(type(plan.tasks[0])("culprit", "echo bad > bad", "shell"))

    async def main() -> None:
        app = CorralApp(prep=await prepare(plan, repo), grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await approve_all_and_merge(app, pilot)
            await pilot.press("R")
            await until(pilot, lambda: (s := conflicts_screen(app)) is not None and "resolve-second" in s.items,
                        timeout=60, what="the review with the resolution")
            await pilot.press("m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=120, what="a question")
            assert app.screen.title_text == LAND_TITLE
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, timeout=60, what="run end")
            status = {n: app.model.tasks[n].status for n in ("first", "second", "other", "culprit")}
            assert status == {"first": "merged", "second": "merged", "other": "merged", "culprit": "verify-failed"}
            await pilot.press("q")

    run(main())
    assert git(repo, "show", "main:src/app.py") == RESOLVED


def test_the_demo_s_conflict_is_resolved_by_its_scripted_resolver(tmp_path: Path) -> None:
    """``corral demo``'s review: ``Y m`` brings up its conflict, ``R`` hands it to the demo's own
    resolver agent (not the shell agent, which would run the resolver's prompt as a script), and
    all four edits land with both greetings kept."""
    import asyncio
    import shutil
    import subprocess

    from corral.core.demo import demo_plan, make_demo_repo
    from corral.core.pipeline import prepare
    from corral.tui.dashboard import CorralApp
    from corral.tui.dialogs import ConfirmScreen
    from corral.tui.review_screen import ReviewScreen
    from test_tui_pilot import SIZE, until

    repo = make_demo_repo(str(tmp_path))
    try:
        async def main() -> None:
            plan = demo_plan(0)
            plan.approve = "ask"
            plan.worktree_root = str(tmp_path)
            prep = await prepare(plan, str(repo))
            app = CorralApp(prep=prep, grace=0.5)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="the review", timeout=60)
                await pilot.pause(0.1)
                await pilot.press("Y", "m")
                await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.conflicts,
                            what="the conflicts", timeout=60)
                screen = app.screen
                await until(pilot, lambda: screen.selected == "greet-fr", what="the conflict selected")
                await pilot.press("R")
                await until(pilot, lambda: app.model.tasks.get("resolve-greet-fr") is not None
                            and app.model.tasks["resolve-greet-fr"].status == "succeeded", what="resolved", timeout=60)
                await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="the review again")
                await pilot.press("m")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="land", timeout=60)
                await pilot.press("y")
                await until(pilot, lambda: not app.pipeline_running, what="the end", timeout=60)
                await pilot.press("q")

        asyncio.run(main())
        greet = subprocess.run(["git", "show", "main:calc/greet.py"], cwd=repo, capture_output=True, text=True)
        assert '"hi there / bonjour"' in greet.stdout
    finally:
        shutil.rmtree(repo, ignore_errors=True)
