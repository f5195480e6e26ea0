"""Every task is a conversation: follow-up messages to a task's agent, queued while it works and
resuming its own session when it has finished, each turn settled onto the task's branch.

Real parts only: ``corral run --detach`` and ``corral send`` as subprocesses, the supervisor they
start, shell agents and the fake agent CLIs (tests/fakes, first on PATH) that record their argv.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

import signal

from conftest import FAKES, corral, corral_state, git, write_plan
from corral.core.events import TaskOutput
from corral.core.reaper import alive as pid_alive
from corral.core.server.client import SnapshotEnd, SocketLink, open_connection
from test_supervisor import (GATE, run_json, start_detached, state_dir, supervisor_pid, wait_ended,
                             wait_supervisor_gone, wait_until)


def task_state(repo: Path, run: str, task: str) -> dict[str, Any]:
    return run_json(repo, run).get("tasks", {}).get(task, {})


def pane(repo: Path, run: str, task: str) -> list[str]:
    """What the task's pane holds now, as a client attaching late is given it."""
    async def snapshot() -> list[str]:
        conn = await open_connection(state_dir(repo))
        link = SocketLink(conn, run, tail=2000)
        lines: list[str] = []
        async for ev in link.events():
            if isinstance(ev, SnapshotEnd):
                break
            if isinstance(ev, TaskOutput) and ev.task == task:
                lines += ev.lines
        await link.aclose()
        return lines

    return anyio.run(snapshot)


def send(repo: Path, run: str, task: str, message: str, env: dict[str, str] | None = None):
    return corral("send", run, task, message, cwd=repo, env=env)


def two_task_plan(tmp_path: Path, gate: Path, agent: str = "shell", done_prompt: str = "echo one > one.txt") -> Path:
    """``done`` finishes at once; ``slow`` holds the run in its running phase until ``gate`` exists."""
    return write_plan(tmp_path / "plan.toml", f"""
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "done"
        agent = "{agent}"
        prompt = '{done_prompt}'
        [[tasks]]
        name = "slow"
        agent = "shell"
        prompt = '{GATE.format(gate=gate)}; echo slow > slow.txt'
    """)


# ------------------------------------------------------------------------ a finished agent, resumed
def test_a_follow_up_resumes_a_finished_shell_task_and_the_review_waits_for_it(repo: Path, tmp_path: Path) -> None:
    gate, gate2 = tmp_path / "go", tmp_path / "go2"
    run = start_detached(repo, two_task_plan(tmp_path, gate))
    wait_until(lambda: task_state(repo, run, "done").get("status") == "succeeded", "the first turn to end")
    res = send(repo, run, "done", f"echo two > two.txt; {GATE.format(gate=gate2)}; echo three > three.txt")
    assert res.returncode == 0, res.stderr
    assert "resumed" in res.stdout
    wait_until(lambda: task_state(repo, run, "done").get("status") == "running", "the second turn to start")
    gate.write_text("go")  # the other task ends: the review must still wait for the second turn
    wait_until(lambda: task_state(repo, run, "slow").get("status") == "succeeded", "slow to end")
    assert run_json(repo, run).get("phase") == "running"
    lines = pane(repo, run, "done")
    assert "──── turn 2: follow-up message ────" in lines
    assert any(line.startswith("> echo two > two.txt") for line in lines)
    gate2.write_text("go")
    end = wait_ended(repo, run)
    assert end["exit_code"] == 0, end
    # both turns' work reviewed, merged and landed
    assert git(repo, "show", "main:one.txt") == "one"
    assert git(repo, "show", "main:three.txt") == "three"
    assert end["tasks"]["done"]["turns"] == 2
    wait_supervisor_gone(repo)


def test_a_follow_up_resumes_claudes_own_session_and_costs_add_up(repo: Path, tmp_path: Path) -> None:
    env = {"PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_ARGV_LOG": str(tmp_path / "argv.jsonl")}
    gate = tmp_path / "go"
    run_id = start_detached(repo, two_task_plan(tmp_path, gate, "claude", "write file=first.py"), env=env)
    wait_until(lambda: task_state(repo, run_id, "done").get("status") == "succeeded", "claude's first turn")
    first = task_state(repo, run_id, "done")
    assert first["session"] == "3441670d-e0e7-4ddf-9365-084c5dd52992"  # as its init event said
    res = send(repo, run_id, "done", "now file=second.py", env=env)
    assert res.returncode == 0, res.stderr
    wait_until(lambda: task_state(repo, run_id, "done").get("turns") == 2
               and task_state(repo, run_id, "done").get("status") == "succeeded", "claude's second turn")
    gate.write_text("go")
    end = wait_ended(repo, run_id)
    assert end["exit_code"] == 0, end
    calls = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    claude = [c for c in calls if c["agent"] == "claude"]
    assert len(claude) == 2 and "--resume" not in claude[0]["argv"]
    argv = claude[1]["argv"]
    assert argv[argv.index("--resume") + 1] == first["session"] and argv[-1] == "now file=second.py"
    # its workspace went once the first turn's work was on its branch: re-opened from that branch
    assert claude[1]["cwd"] != claude[0]["cwd"] and not Path(claude[0]["cwd"]).exists()
    assert any("workspace re-opened from branch" in line for line in pane(repo, run_id, "done"))
    assert end["tasks"]["done"]["cost"] == 2 * first["cost"]
    assert end["tasks"]["done"]["tokens"] == 2 * first["tokens"]
    assert git(repo, "show", "main:first.py") and git(repo, "show", "main:second.py")
    wait_supervisor_gone(repo)


# ------------------------------------------------------------------------- a running agent: queued
def test_a_follow_up_to_a_running_agent_is_queued_and_delivered_when_its_turn_ends(repo: Path,
                                                                                 tmp_path: Path) -> None:
    env = {"PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_ARGV_LOG": str(tmp_path / "argv.jsonl")}
    gate = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "sh"
        agent = "shell"
        prompt = '{GATE.format(gate=gate)}; echo one > one.txt'
        [[tasks]]
        name = "cl"
        agent = "claude"
        prompt = 'write file=first.py gate={gate}'
    """)
    run = start_detached(repo, plan, env=env)
    wait_until(lambda: task_state(repo, run, "sh").get("status") == "running"
               and task_state(repo, run, "cl").get("status") == "running", "both agents to work")
    for task, message in (("sh", "echo two > two.txt"), ("cl", "now file=second.py")):
        res = send(repo, run, task, message, env=env)
        assert res.returncode == 0, res.stderr
        assert "queued" in res.stdout
        assert any("message queued" in line for line in pane(repo, run, task))
    gate.write_text("go")
    end = wait_ended(repo, run)
    assert end["exit_code"] == 0, end
    for path in ("one.txt", "two.txt", "first.py", "second.py"):
        assert git(repo, "show", f"main:{path}")
    claude = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    assert [c["argv"][-1] for c in claude] == [f"write file=first.py gate={gate}", "now file=second.py"]
    assert "--resume" in claude[1]["argv"]
    wait_supervisor_gone(repo)


# ------------------------------------------------------------------------------------ refusals
def test_a_follow_up_to_a_discarded_task_or_an_unknown_one_is_refused(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    run = start_detached(repo, two_task_plan(tmp_path, gate))
    wait_until(lambda: task_state(repo, run, "done").get("status") == "succeeded", "the first turn to end")

    async def discard() -> None:
        conn = await open_connection(state_dir(repo))
        await conn.ask("discard", run=run, task="done")
        await conn.aclose()

    anyio.run(discard)
    res = send(repo, run, "done", "echo more > more.txt")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "done was discarded" in res.stderr
    res = send(repo, run, "nosuch", "echo more")
    assert res.returncode == 2 and "no task 'nosuch'" in res.stderr and res.stderr.count("\n") == 1
    res = send(repo, "20000101-000000-0000", "done", "echo more")
    assert res.returncode == 2 and "no live run" in res.stderr and res.stderr.count("\n") == 1
    gate.write_text("go")
    wait_ended(repo, run)
    assert not (Path(task_state(repo, run, "done").get("workspace", tmp_path / "none")) / "more.txt").exists()
    res = send(repo, run, "done", "echo more > more.txt")  # the run has ended: still refused, nothing started
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "done was discarded" in res.stderr, res.stderr
    assert len(corral_state(repo)["runs"]) == 1
    wait_supervisor_gone(repo)


# --------------------------------------------------------------------- stopped during a second turn
def test_stopping_the_run_during_a_second_turn_keeps_both_turns_work_on_the_branch(repo: Path,
                                                                                 tmp_path: Path) -> None:
    gate = tmp_path / "go"
    run = start_detached(repo, two_task_plan(tmp_path, gate))
    wait_until(lambda: task_state(repo, run, "done").get("status") == "succeeded", "the first turn to end")
    res = send(repo, run, "done", f"echo partial > partial.txt; {GATE.format(gate=tmp_path / 'never')}")
    assert res.returncode == 0, res.stderr
    # (the turn runs in the workspace re-opened for it: the state names it once it is made)
    wait_until(lambda: (Path(task_state(repo, run, "done")["workspace"] or "/nonexistent") / "partial.txt").exists(),
               "the second turn's edit")
    res = corral("stop", run, cwd=repo)
    assert res.returncode == 0, res.stderr
    end = wait_ended(repo, run)
    assert end["state"] == "interrupted"
    branch = end["tasks"]["done"]["branch"]
    assert branch in end["kept_branches"]
    assert git(repo, "show", f"{branch}:one.txt") == "one"  # the first turn's, committed when it ended
    assert git(repo, "show", f"{branch}:partial.txt") == "partial"  # the stopped turn's, salvaged
    assert end["tasks"]["done"]["status"] == "aborted"
    git(repo, "branch", "-D", *end["kept_branches"])
    wait_supervisor_gone(repo)


# ------------------------------------------------------------------------------------- programs
def test_a_program_sends_follow_ups_and_gets_each_turns_result(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    prog = tmp_path / "prog.py"
    prog.write_text(f'''
import anyio, os

async def run(input, rt):
    ws = await rt.workspaces.create("talk")
    h = rt.spawn({{"agent": "shell", "name": "talk", "task": "echo one > one.txt; echo first", "cwd": str(ws.path)}})
    first = await rt.join(h)
    second = await rt.send(h, "echo two > two.txt; echo second")
    # a message to an agent still at work waits for its turn to end
    slow = rt.spawn({{"agent": "shell", "name": "slow", "task": 'while [ ! -f {gate} ]; do sleep 0.05; done; echo slow'}})
    async with anyio.create_task_group() as tg:
        answers = []
        async def ask():
            answers.append(await rt.send("slow", "echo later"))
        tg.start_soon(ask)
        while not rt.tasks["slow"].queued:
            await anyio.sleep(0.05)
        open({str(gate)!r}, "w").close()
    await rt.join(slow)
    files = sorted(os.listdir(ws.path))
    await rt.workspaces.remove(ws)
    return {{"texts": [first.text, second.text, answers[0].text], "turns": rt.tasks["talk"].turns,
             "files": [f for f in files if f.endswith(".txt")], "branch": ws.ref}}
''')
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = repo / ".git" / "corral" / "runs"
    result = json.loads((next(runs.iterdir()) / "result.json").read_text())
    assert result["texts"] == ["first", "second", "later"]
    assert result["turns"] == 2 and result["files"] == ["one.txt", "two.txt"]
    assert git(repo, "show", f"{result['branch']}:two.txt") == "two"  # the second turn settled on the branch
    git(repo, "branch", "-D", result["branch"])


# ------------------------------------------------------------------------------------ dashboard
def test_f_in_the_dashboard_sends_a_follow_up_to_a_finished_and_a_running_agent(repo: Path, wt_root: Path,
                                                                               tmp_path: Path) -> None:
    from textual.widgets import Input

    from corral.core.pipeline import prepare
    from corral.tui.dashboard import CorralApp
    from corral.tui.dialogs import FollowUpScreen
    from test_tui_pilot import SIZE, abort_all, pane_lines, shell_plan, until

    gate = tmp_path / "go"

    async def follow_up(pilot, app, name: str, message: str) -> None:
        app.run_screen.panes[name].focus()
        await pilot.pause()
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, FollowUpScreen), what="the message input")
        app.screen.query_one(Input).value = message
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, FollowUpScreen), what="the input to close")

    async def main() -> None:
        plan = shell_plan({"done": "echo one > one.txt", "slow": GATE.format(gate=gate)}, wt_root)
        prep = await prepare(plan, repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.rt is not None and app.model.tasks.get("done") is not None
                        and app.model.tasks["done"].status == "succeeded"
                        and app.model.tasks["slow"].status == "running", what="done finished, slow running")
            await follow_up(pilot, app, "done", "echo two > two.txt")
            await until(pilot, lambda: app.rt.tasks["done"].turns == 2 and app.rt.tasks["done"].status == "succeeded",
                        what="the second turn")
            await until(pilot, lambda: "> echo two > two.txt" in pane_lines(app, "done"), what="the message shown")
            lines = pane_lines(app, "done")
            assert "──── turn 2: follow-up message ────" in lines
            ws = app.rt.tasks["done"].workspace
            assert git(repo, "show", f"{ws.ref}:two.txt") == "two"  # settled on the task's branch

            await follow_up(pilot, app, "slow", "echo later > later.txt")
            await until(pilot, lambda: any("message queued" in line for line in pane_lines(app, "slow")),
                        what="the queued line")
            assert app.model.tasks["slow"].status == "running"
            await pilot.press("x")  # taken back before its turn
            await until(pilot, lambda: "corral: queued message cancelled: echo later > later.txt"
                        in pane_lines(app, "slow"), what="the cancelled line")
            assert not app.rt.tasks["slow"].queued
            await abort_all(pilot)
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            assert app.rt.tasks["slow"].turns == 1  # aborted: the queued message was dropped, not delivered
            await pilot.press("q")

    anyio.run(main)


# ------------------------------------------------------------------------ each profile's own resume
SESSIONS = {  # the session id each recorded CLI reported, and how its profile resumes it
    "claude": ("3441670d-e0e7-4ddf-9365-084c5dd52992", ["--resume", "3441670d-e0e7-4ddf-9365-084c5dd52992"]),
    "codex": ("01a2306f-4ca4-76f1-a87d-a20febc161ae", ["resume", "01a2306f-4ca4-76f1-a87d-a20febc161ae"]),
    "gemini": ("7abbee51-6ea8-4090-b96a-805d9a193b23", ["--resume", "7abbee51-6ea8-4090-b96a-805d9a193b23"]),
    "opencode": ("ses_dcf8f57afffeZgBO6ujGQbUVZI", ["--session", "ses_dcf8f57afffeZgBO6ujGQbUVZI"]),
    "pi": ("01a23071-8e7e-719f-86f4-46a1b331cb52", ["--continue"]),
    "aider": ("", []),  # cannot resume: a new session, told the last turn's prompt and answer
}


@pytest.mark.parametrize("agent", sorted(SESSIONS))
def test_each_profile_resumes_its_own_session_in_the_same_workspace(repo: Path, tmp_path: Path, agent: str) -> None:
    env = {"PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_ARGV_LOG": str(tmp_path / "argv.jsonl")}
    prog = tmp_path / "prog.py"
    prog.write_text('''
async def run(input, rt):
    ws = await rt.workspaces.create("talk")
    h = rt.spawn({"agent": input["agent"], "name": "talk", "task": "write file=first.py", "cwd": str(ws.path)})
    first = await rt.join(h)
    second = await rt.send(h, "now file=second.py")
    info = rt.tasks["talk"]
    await rt.workspaces.remove(ws)
    return {"session": info.session, "status": [first.status, second.status], "branch": ws.ref,
            "tokens": [first.usage.tokens, second.usage.tokens, info.result.usage.tokens]}
''')
    res = corral("run", str(prog), "--headless", "--input", json.dumps({"agent": agent}), cwd=repo, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((next((repo / ".git" / "corral" / "runs").iterdir()) / "result.json").read_text())
    session, flags = SESSIONS[agent]
    assert result["session"] == session and result["status"] == ["succeeded", "succeeded"]
    calls = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and calls[0]["cwd"] == calls[1]["cwd"]
    first, second = calls[0]["argv"], calls[1]["argv"]
    assert not any(f in first for f in ("--resume", "resume", "--session", "--continue"))
    if flags:
        at = second.index(flags[0])
        assert second[at:at + len(flags)] == flags
        assert any(a.endswith("now file=second.py") and "first.py" not in a for a in second), second
    else:
        prompt = next(a for a in second if "now file=second.py" in a)
        assert "write file=first.py" in prompt and "You answered" in prompt
        assert "cannot resume its session" in res.stdout
    tokens = result["tokens"]
    assert tokens[2] == tokens[0] + tokens[1]  # the task's usage adds up over its turns
    for path in ("first.py", "second.py"):  # both turns' work on the task's branch
        assert git(repo, "show", f"{result['branch']}:{path}")
    git(repo, "branch", "-D", result["branch"])


# --------------------------------------------------------------------------- changes requested
def test_changes_requested_during_the_review_withdraw_it_and_it_comes_back_on_the_new_work(repo: Path,
                                                                                         tmp_path: Path) -> None:
    from corral.core.events import DecisionMade, DecisionNeeded

    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        [[tasks]]
        name = "done"
        prompt = 'echo one > one.txt'
    """)
    run = start_detached(repo, plan)
    seen: list[Any] = []

    async def main() -> None:
        conn = await open_connection(state_dir(repo))
        link = SocketLink(conn, run)

        def reviews() -> list[DecisionNeeded]:
            return [ev for ev in seen if isinstance(ev, DecisionNeeded) and ev.kind == "review"]

        async with anyio.create_task_group() as tg:
            async def follow() -> None:
                async for ev in link.events():
                    seen.append(ev)

            tg.start_soon(follow)
            with anyio.fail_after(60):
                while not reviews():
                    await anyio.sleep(0.05)
            first = (reviews())[0]
            res = await anyio.to_thread.run_sync(send, repo, run, "done", "echo fix > fix.txt")
            assert res.returncode == 0, res.stderr
            with anyio.fail_after(60):
                while len(reviews()) < 2:
                    await anyio.sleep(0.05)
            made = [ev for ev in seen if isinstance(ev, DecisionMade) and ev.id == first.id]
            assert made and made[0].answer is None and made[0].by == "run"  # withdrawn
            second = (reviews())[1]
            row = next(r for r in second.items if r["name"] == "done")
            assert row["candidate"] and sorted(row["files"]) == ["fix.txt", "one.txt"]  # the new work, reviewed
            await link.request("decide", decision=second.id, answer={"done": True})
            with anyio.fail_after(60):
                while not any(isinstance(ev, DecisionNeeded) and ev.kind == "land" for ev in seen):
                    await anyio.sleep(0.05)
            land = next(ev for ev in seen if isinstance(ev, DecisionNeeded) and ev.kind == "land")
            await link.request("decide", decision=land.id, answer=True)
            with anyio.fail_after(60):
                while link.exit_code is None:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        await link.aclose()

    anyio.run(main)
    assert git(repo, "show", "main:fix.txt") == "fix" and git(repo, "show", "main:one.txt") == "one"
    wait_supervisor_gone(repo)


def test_c_in_the_review_asks_for_changes_and_the_review_comes_back_with_the_new_diff(repo: Path,
                                                                                     wt_root: Path) -> None:
    from textual.widgets import Input

    from corral.core.pipeline import prepare
    from corral.tui.dashboard import CorralApp
    from corral.tui.dialogs import ConfirmScreen, FollowUpScreen
    from corral.tui.review_screen import ReviewScreen
    from test_tui_pilot import SIZE, shell_plan, until

    async def main() -> None:
        prep = await prepare(shell_plan({"one": "echo one > one.txt"}, wt_root, approve="ask"), repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="review screen")
            first = app.screen
            await pilot.pause(0.1)
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, FollowUpScreen), what="the comment input")
            app.screen.query_one(Input).value = "echo fix > fix.txt"
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen is not first,
                        what="the review back")
            screen = app.screen
            assert app.rt.tasks["one"].turns == 2
            await until(pilot, lambda: "+++ b/fix.txt" in screen.diff_view.diffs.get("one", ""), what="the new diff")
            await pilot.press("y")
            await pilot.press("m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="land confirmation")
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            assert app.exit_code == 0
            await pilot.press("q")

    anyio.run(main)
    assert git(repo, "show", "main:fix.txt") == "fix"


# ---------------------------------------------------------------------------------------- retry
def test_corral_retry_starts_a_new_attempt_from_base_and_keeps_the_old_one(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "fix"
        prompt = 'echo partial > partial.txt; exit 3'
        [[tasks]]
        name = "slow"
        prompt = '{GATE.format(gate=gate)}; echo slow > slow.txt'
    """)
    run = start_detached(repo, plan)
    wait_until(lambda: task_state(repo, run, "fix").get("status") == "failed", "the first attempt to fail")
    res = corral("retry", run, "slow", cwd=repo)
    assert res.returncode == 2 and "only a failed or aborted task is retried" in res.stderr
    assert res.stderr.count("\n") == 1
    res = corral("retry", run, "fix", "--prompt", "echo ok > ok.txt", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "retried as fix-2" in res.stdout
    wait_until(lambda: task_state(repo, run, "fix-2").get("status") == "succeeded", "the new attempt")
    new = task_state(repo, run, "fix-2")["branch"]  # from base, not from the failed attempt:
    assert git(repo, "ls-tree", "--name-only", new, "partial.txt") == ""
    gate.write_text("go")
    end = wait_ended(repo, run)
    assert end["tasks"]["fix-2"]["status"] == "merged" and end["tasks"]["fix"]["status"] == "failed"
    assert git(repo, "show", "main:ok.txt") == "ok"
    old = end["tasks"]["fix"]["branch"]
    assert old in end["kept_branches"] and git(repo, "show", f"{old}:partial.txt") == "partial"
    git(repo, "branch", "-D", old)
    wait_supervisor_gone(repo)


def test_R_in_the_dashboard_retries_a_failed_task_with_its_prompt_edited(repo: Path, wt_root: Path,
                                                                          tmp_path: Path) -> None:
    from textual.widgets import Input

    from corral.core.pipeline import prepare
    from corral.tui.dashboard import CorralApp
    from corral.tui.dialogs import FollowUpScreen
    from test_tui_pilot import SIZE, abort_all, shell_plan, until

    gate = tmp_path / "go"

    async def main() -> None:
        plan = shell_plan({"bad": "exit 3", "slow": GATE.format(gate=gate)}, wt_root)
        prep = await prepare(plan, repo)
        app = CorralApp(prep=prep, grace=0.5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.model.tasks.get("bad") is not None
                        and app.model.tasks["bad"].status == "failed", what="bad failed")
            app.run_screen.panes["bad"].focus()
            await pilot.pause()
            await pilot.press("R")
            await until(pilot, lambda: isinstance(app.screen, FollowUpScreen), what="the prompt input")
            field = app.screen.query_one(Input)
            await until(pilot, lambda: field.value == "exit 3", what="the old prompt, to edit")
            field.value = "echo ok > ok.txt"
            await pilot.press("enter")
            await until(pilot, lambda: "bad-2" in app.run_screen.panes
                        and app.model.tasks["bad-2"].status == "succeeded", what="the new attempt's pane")
            assert git(repo, "show", f"{app.rt.tasks['bad-2'].workspace.ref}:ok.txt") == "ok"
            await abort_all(pilot)
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            await pilot.press("q")

    anyio.run(main)


# --------------------------------------------------------------------------- bounded checkouts
def test_a_finished_tasks_workspace_goes_so_checkouts_stay_bounded_by_max_parallel(repo: Path, tmp_path: Path) -> None:
    counts = tmp_path / "counts"
    tasks = "".join(f"""
        [[tasks]]
        name = "t{i}"
        prompt = 'git worktree list | wc -l >> {counts}; echo {i} > f{i}.txt'
    """ for i in range(16))
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        sandbox = "none"
        approve = "all"
        max_parallel = 2
    """ + tasks)
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    seen = [int(n) for n in counts.read_text().split()]
    assert len(seen) == 16 and max(seen) <= 4 + 1, seen  # max_parallel + 2, and the main checkout
    for i in range(16):  # every task's work merged from its branch
        assert git(repo, "show", f"main:f{i}.txt") == str(i)


# ------------------------------------------------------------------- a removed workspace, re-opened
def test_a_follow_up_to_a_task_whose_workspace_was_removed_resumes_in_one_reopened_from_its_branch(
        repo: Path, tmp_path: Path) -> None:
    env = {"PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_ARGV_LOG": str(tmp_path / "argv.jsonl")}
    prog = tmp_path / "prog.py"
    prog.write_text('''
import os

async def run(input, rt):
    ws = await rt.workspaces.create("talk")
    h = rt.spawn({"agent": "claude", "name": "talk", "task": "write file=first.py", "cwd": str(ws.path)})
    first = await rt.join(h)
    await rt.workspaces.remove(ws)  # its work is on its branch; the checkout is gone
    second = await rt.send(h, "now file=second.py")
    again = rt.tasks["talk"].workspace
    return {"status": second.status, "branch": ws.ref, "cwd": [first.cwd, second.cwd],
            "files": sorted(os.listdir(again.path)), "same_branch": again.ref == ws.ref}
''')
    res = corral("run", str(prog), "--headless", cwd=repo, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((next((repo / ".git" / "corral" / "runs").iterdir()) / "result.json").read_text())
    assert result["status"] == "succeeded" and result["same_branch"]
    assert result["cwd"][0] != result["cwd"][1] and "first.py" in result["files"]  # checked out from the branch
    calls = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    argv = calls[1]["argv"]
    assert argv[argv.index("--resume") + 1] == SESSIONS["claude"][0]  # its own session, resumed
    for path in ("first.py", "second.py"):
        assert git(repo, "show", f"{result['branch']}:{path}")
    assert corral_state(repo)["worktrees"] == []  # the re-opened workspace went at the end of the run too
    git(repo, "branch", "-D", result["branch"])


def test_a_follow_up_to_a_task_whose_branch_the_user_deleted_is_refused(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    run = start_detached(repo, two_task_plan(tmp_path, gate))
    wait_until(lambda: task_state(repo, run, "done").get("workspace_removed"), "done's workspace put away")
    branch = task_state(repo, run, "done")["branch"]
    git(repo, "branch", "-D", branch)
    res = send(repo, run, "done", "echo more > more.txt")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"the branch {branch} of done is gone" in res.stderr
    gate.write_text("go")
    end = wait_ended(repo, run)
    assert end["tasks"]["done"]["turns"] == 1
    wait_supervisor_gone(repo)


def test_the_supervisor_killed_during_a_reopened_workspaces_second_turn_loses_neither_turn(repo: Path,
                                                                                          tmp_path: Path) -> None:
    gate = tmp_path / "go"
    run = start_detached(repo, two_task_plan(tmp_path, gate))
    wait_until(lambda: task_state(repo, run, "done").get("workspace_removed"), "done's workspace put away")
    first_ws = task_state(repo, run, "done")["workspace"]
    res = send(repo, run, "done", f"echo partial > partial.txt; {GATE.format(gate=tmp_path / 'never')}")
    assert res.returncode == 0, res.stderr
    ws = Path(wait_until(lambda: (w := task_state(repo, run, "done").get("workspace")) != first_ws and w,
                         "the re-opened workspace"))
    wait_until(lambda: (ws / "partial.txt").exists() and task_state(repo, run, "done").get("turns") == 2,
               "the second turn's edit, journaled")
    pid = supervisor_pid(repo)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), "the supervisor to be gone")
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    branch = task_state(repo, run, "done")["branch"]
    assert git(repo, "show", f"{branch}:one.txt") == "one"  # the first turn's, on the branch
    assert git(repo, "show", f"{branch}:partial.txt") == "partial"  # the killed turn's, salvaged by clean
    assert corral_state(repo)["worktrees"] == []
    gate.write_text("go")
    # after corral clean the conversation goes on all the same: in a new run, from the branch
    res = send(repo, run, "done", "echo three > three.txt")
    assert res.returncode == 0, res.stderr
    new = re.search(r"in run (\S+) ", res.stdout).group(1)
    end = wait_ended(repo, new)
    assert end["tasks"]["done"]["turns"] == 3 and end["continues"] == {"run": run, "task": "done"}
    for path, text in (("one.txt", "one"), ("partial.txt", "partial"), ("three.txt", "three")):
        assert git(repo, "show", f"main:{path}") == text  # reviewed (approve = "all") and landed
    wait_supervisor_gone(repo)
    for b in corral_state(repo)["branches"]:
        git(repo, "branch", "-D", b)


def test_a_follow_up_turn_waits_for_an_agent_slot_like_any_agent(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        approve = "all"
        max_parallel = 1
        [[tasks]]
        name = "done"
        prompt = 'echo one > one.txt'
        [[tasks]]
        name = "slow"
        prompt = '{GATE.format(gate=gate)}; echo slow > slow.txt'
    """)
    run = start_detached(repo, plan)
    wait_until(lambda: task_state(repo, run, "slow").get("status") == "running", "slow to take the one slot")
    # the turn says whether slow was still at work when it ran
    res = send(repo, run, "done", f'if [ -f "{gate}" ]; then echo after; else echo during; fi > turn.txt')
    assert res.returncode == 0, res.stderr
    gate.write_text("go")
    end = wait_ended(repo, run)
    assert end["exit_code"] == 0, end
    assert git(repo, "show", "main:turn.txt") == "after"
    wait_supervisor_gone(repo)


def test_a_queued_message_is_taken_back_with_send_cancel_and_never_delivered(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    run = start_detached(repo, two_task_plan(tmp_path, gate))
    wait_until(lambda: task_state(repo, run, "slow").get("status") == "running", "slow to work")
    res = send(repo, run, "slow", "echo later > later.txt")
    assert res.returncode == 0 and "queued" in res.stdout, res.stderr
    res = corral("send", "--cancel", run, "slow", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "1 queued message(s) to slow cancelled" in res.stdout
    assert "corral: queued message cancelled: echo later > later.txt" in pane(repo, run, "slow")
    res = corral("send", "--cancel", run, "slow", cwd=repo)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no message is queued for slow" in res.stderr
    res = corral("send", run, "slow", cwd=repo)  # neither a message nor --cancel
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    gate.write_text("go")
    end = wait_ended(repo, run)
    assert end["exit_code"] == 0, end
    assert end["tasks"]["slow"]["turns"] == 1
    assert git(repo, "ls-tree", "--name-only", "main", "later.txt") == ""
    wait_supervisor_gone(repo)


# ------------------------------------------------------------------- an aborted task's partial work
def test_an_aborted_tasks_partial_work_can_be_approved_and_merged(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        [[tasks]]
        name = "part"
        prompt = 'echo partial > partial.txt; {GATE.format(gate=tmp_path / "never")}'
        [[tasks]]
        name = "idle"
        prompt = '{GATE.format(gate=tmp_path / "never")}'
    """)
    run = start_detached(repo, plan)
    ws = Path(wait_until(lambda: task_state(repo, run, "part").get("workspace"), "part's workspace"))
    wait_until(lambda: (ws / "partial.txt").exists(), "part's edit")
    rows = review_and_land(repo, run, lambda rows: {"part": True}, first="abort_all")
    assert rows["part"]["candidate"] and rows["part"]["status"] == "aborted"
    assert rows["part"]["files"] == ["partial.txt"]
    assert not rows["idle"]["candidate"]  # aborted with nothing done: nothing to approve
    assert git(repo, "show", "main:partial.txt") == "partial"
    assert run_json(repo, run)["tasks"]["part"]["status"] == "merged"
    wait_supervisor_gone(repo)


# ------------------------------------------------------------------------ retries side by side
def review_and_land(repo: Path, run: str, answer: Any, first: str = "") -> dict[str, Any]:
    """Answer the run's review with ``answer(rows)`` (rows by task name) and confirm its landing;
    returns the review's rows. ``first``: a command sent to the run before (``abort_all``, say)."""
    from corral.core.events import DecisionNeeded

    seen: list[Any] = []
    rows: dict[str, Any] = {}

    async def main() -> None:
        conn = await open_connection(state_dir(repo))
        link = SocketLink(conn, run)

        async def wait_for(kind: str) -> DecisionNeeded:
            with anyio.fail_after(60):
                while not any(isinstance(ev, DecisionNeeded) and ev.kind == kind for ev in seen):
                    await anyio.sleep(0.05)
            return next(ev for ev in seen if isinstance(ev, DecisionNeeded) and ev.kind == kind)

        async with anyio.create_task_group() as tg:
            async def follow() -> None:
                async for ev in link.events():
                    seen.append(ev)

            tg.start_soon(follow)
            if first:
                await link.request(first)
            review = await wait_for("review")
            rows.update({r["name"]: r for r in review.items})
            await link.request("decide", decision=review.id, answer=answer(rows))
            land = await wait_for("land")
            await link.request("decide", decision=land.id, answer=True)
            with anyio.fail_after(60):
                while link.exit_code is None:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        await link.aclose()

    anyio.run(main)
    return rows


def retried_run(repo: Path, tmp_path: Path, slow: str = "") -> str:
    """A detached run whose task ``fix`` failed after changing a file and was retried (``fix-2``
    succeeded), its other task ``slow`` held until then (then running ``slow``): its id."""
    gate = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        [[tasks]]
        name = "fix"
        prompt = 'echo partial > partial.txt; exit 3'
        [[tasks]]
        name = "slow"
        prompt = '{GATE.format(gate=gate)}{slow}'
    """)
    run = start_detached(repo, plan)
    wait_until(lambda: task_state(repo, run, "fix").get("status") == "failed", "the first attempt to fail")
    res = corral("retry", run, "fix", "--prompt", "echo ok > ok.txt", cwd=repo)
    assert res.returncode == 0, res.stderr
    wait_until(lambda: task_state(repo, run, "fix-2").get("status") == "succeeded", "the new attempt")
    gate.write_text("go")
    return run


def test_the_review_shows_both_attempts_of_a_retried_task_and_the_user_picks_one(repo: Path,
                                                                                tmp_path: Path) -> None:
    run = retried_run(repo, tmp_path, "; echo slow > slow.txt")
    rows = review_and_land(repo, run, lambda rows: {"fix": True, "slow": True})  # the old attempt picked
    assert rows["fix"]["candidate"] and rows["fix"]["status"] == "failed" and rows["fix"]["attempts"] == ["fix-2"]
    assert rows["fix-2"]["candidate"] and rows["fix-2"]["attempts"] == ["fix"]
    end = wait_ended(repo, run)
    assert end["tasks"]["fix"]["status"] == "merged" and end["tasks"]["fix-2"]["status"] == "rejected"
    assert git(repo, "show", "main:partial.txt") == "partial"
    assert git(repo, "ls-tree", "--name-only", "main", "ok.txt") == ""
    assert end["tasks"]["fix-2"]["branch"] in end["kept_branches"]  # the other attempt's work kept
    for b in end["kept_branches"]:
        git(repo, "branch", "-D", b)
    wait_supervisor_gone(repo)


def test_when_both_attempts_are_approved_the_newest_is_merged(repo: Path, tmp_path: Path) -> None:
    run = retried_run(repo, tmp_path)
    review_and_land(repo, run, lambda rows: {name: True for name, row in rows.items() if row["candidate"]})
    end = wait_ended(repo, run)
    assert end["tasks"]["fix-2"]["status"] == "merged" and end["tasks"]["fix"]["status"] == "failed"
    assert git(repo, "show", "main:ok.txt") == "ok"
    assert git(repo, "ls-tree", "--name-only", "main", "partial.txt") == ""
    for b in end["kept_branches"]:
        git(repo, "branch", "-D", b)
    wait_supervisor_gone(repo)


def test_y_on_one_attempt_in_the_review_screen_rejects_the_other() -> None:
    from textual.app import App

    from corral.core.vcs.base import Forecast
    from corral.tui.review_screen import ReviewItem, ReviewScreen

    async def load_diff(name: str) -> str:
        return ""

    items = [ReviewItem("fix", "failed", "shell", 1, 0, ["partial.txt"], True, attempts=["fix-2"]),
             ReviewItem("fix-2", "succeeded", "shell", 1, 0, ["ok.txt"], True, attempts=["fix"]),
             ReviewItem("other", "succeeded", "shell", 1, 0, ["o.txt"], True)]

    async def main() -> None:
        screen = ReviewScreen(items, Forecast(), load_diff)
        app = App()
        async with app.run_test() as pilot:
            await app.push_screen(screen)
            await pilot.pause()
            screen.decisions["fix-2"] = True
            screen._select("fix")
            screen.action_decide(True)
            assert screen.decisions == {"fix": True, "fix-2": False}
            screen._select("fix-2")
            screen.action_decide(True)
            assert screen.decisions == {"fix": False, "fix-2": True}

    anyio.run(main)



# -------------------------------------------------------------------------- after the run ended
def test_a_follow_up_after_the_run_ended_resumes_the_session_in_a_new_run_from_the_kept_branch(
        repo: Path, tmp_path: Path) -> None:
    env = {"PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_ARGV_LOG": str(tmp_path / "argv.jsonl")}
    plan = write_plan(tmp_path / "plan.toml", """
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "done"
        agent = "claude"
        prompt = 'write file=first.py'
        [[tasks]]
        name = "gone"
        agent = "shell"
        prompt = 'echo gone > gone.txt'
    """)
    run = start_detached(repo, plan, env=env)
    first = wait_ended(repo, run)
    assert first["tasks"]["done"]["status"] == "rejected"
    branch = first["tasks"]["done"]["branch"]
    assert branch in first["kept_branches"] and corral_state(repo)["worktrees"] == []
    git(repo, "branch", "-D", first["tasks"]["gone"]["branch"])
    res = send(repo, run, "gone", "echo more > more.txt", env=env)  # its branch deleted
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "is gone (deleted)" in res.stderr, res.stderr
    res = send(repo, run, "nosuch", "hello", env=env)
    assert res.returncode == 2 and "has no task 'nosuch'" in res.stderr and res.stderr.count("\n") == 1
    res = send(repo, run, "done", "now file=second.py", env=env)
    assert res.returncode == 0, res.stderr
    new = re.search(r"in run (\S+) ", res.stdout).group(1)
    assert new != run
    end = wait_ended(repo, new)
    assert end["tasks"]["done"]["turns"] == 2 and end["tasks"]["done"]["status"] == "rejected"  # approve = "none"
    assert list(end["tasks"]) == ["done"] and end["continues"] == {"run": run, "task": "done"}
    calls = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    argv = calls[-1]["argv"]
    assert argv[argv.index("--resume") + 1] == first["tasks"]["done"]["session"]  # from the old run's journal
    for path in ("first.py", "second.py"):  # the same branch, both turns' work on it
        assert git(repo, "show", f"{branch}:{path}")
    assert corral_state(repo)["worktrees"] == [] and end["kept_branches"] == [branch]
    git(repo, "branch", "-D", branch)
    wait_supervisor_gone(repo)


def test_a_workspace_reopened_for_a_follow_up_is_set_up_again(repo: Path, tmp_path: Path) -> None:
    (repo / ".gitignore").write_text("deps/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore deps")
    setups, gate = tmp_path / "setups", tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = 'echo run >> {setups}; mkdir -p deps; echo ok > deps/ok'
        sandbox = "none"
        approve = "all"
        [[tasks]]
        name = "done"
        prompt = 'echo one > one.txt'
        [[tasks]]
        name = "slow"
        setup = "none"
        prompt = '{GATE.format(gate=gate)}'
    """)
    run = start_detached(repo, plan)
    wait_until(lambda: task_state(repo, run, "done").get("workspace_removed"), "done's workspace put away")
    res = send(repo, run, "done", 'if [ -f deps/ok ]; then echo yes; else echo no; fi > saw.txt')
    assert res.returncode == 0, res.stderr
    wait_until(lambda: task_state(repo, run, "done").get("turns") == 2
               and task_state(repo, run, "done").get("status") == "succeeded", "the second turn")
    gate.write_text("go")
    end = wait_ended(repo, run)
    assert end["exit_code"] == 0, end
    assert git(repo, "show", "main:saw.txt") == "yes"  # what setup installs is there for the second turn
    assert setups.read_text().split() == ["run", "run"]
    wait_supervisor_gone(repo)


def test_a_run_s_stored_plan_keeps_its_own_agent_profiles_whatever_became_of_the_plan_file(tmp_path: Path) -> None:
    """A run carried on later (a follow-up, a review of its leftovers) rebuilds its plan from the run's
    ``plan.json``: the plan's own ``[agents]`` are in it, so a plan file since deleted (or given by a
    path relative to a directory the supervisor is not in) does not lose them."""
    import json

    from corral.core.continuation import stored_plan
    from corral.core.plan import load_plan
    from corral.core.vcs.base import UsageError

    path = write_plan(tmp_path / "plan.toml", """
        agent = "mine"
        resolver = "fixer"
        [agents.mine]
        command = ["sh", "-c", "{prompt}"]
        format = "text"
        [agents.fixer]
        command = ["fix-it", "{prompt}"]
        format = "text"
        [[tasks]]
        name = "t"
        prompt = "true"
    """)
    loaded = load_plan(str(path))
    data = json.loads(json.dumps(loaded.to_dict()))
    path.unlink()
    plan = stored_plan(data, "t")
    assert plan.agents["mine"] == loaded.agents["mine"] and plan.agents["fixer"] == loaded.agents["fixer"]
    assert [t.agent for t in plan.tasks] == ["mine"]
    del data["agents"]  # a run from before the profiles were stored, its plan file gone
    with pytest.raises(UsageError, match="resolver 'fixer' is no known agent profile"):
        stored_plan(data, "t")
