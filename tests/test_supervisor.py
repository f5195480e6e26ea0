"""Runs that outlive the terminal: the supervisor, its protocol, clients that come and go.

Everything here is real: ``corral`` as a subprocess, the supervisor it starts as a daemon, its
Unix socket, agents as shell commands, and clients speaking the protocol from the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import TEST_MARK, _marked_processes, corral, corral_state, git, write_plan
from test_faults import start_run, wait_for
from corral.core.events import DecisionMade, DecisionNeeded, RunStarted, TaskOutput, TaskStatus
from corral.core.server import protocol
from corral.core.server.client import SnapshotEnd, SocketLink, open_connection
from corral.core.server.host import CommandError


def state_dir(repo: Path) -> Path:
    return repo / ".git" / "corral"


def start_detached(repo: Path, plan: Path, *args: str, env: dict[str, str] | None = None) -> str:
    res = corral("run", str(plan), "--detach", *args, cwd=repo, env=env)
    assert res.returncode == 0, res.stderr + res.stdout
    m = re.search(r"run (\S+) started in the supervisor \(pid (\d+)\)", res.stdout)
    assert m, res.stdout
    return m.group(1)


def supervisor_pid(repo: Path) -> int:
    return int((state_dir(repo) / "supervisor.lock").read_text().split()[0])


def wait_until(cond, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def last_pid(repo: Path, run: str) -> int:
    return int(run_json(repo, run)["pid"])


def run_json(repo: Path, run: str) -> dict:
    return json.loads((state_dir(repo) / "runs" / run / "run.json").read_text())


def wait_ended(repo: Path, run: str, timeout: float = 60) -> dict:
    return wait_until(lambda: (d := run_json(repo, run)) and d.get("state") not in ("running", None) and d,
                      f"run {run} to end", timeout)


def wait_supervisor_gone(repo: Path) -> None:
    """The supervisor exits once idle: nothing of it is left (its socket neither)."""
    wait_until(lambda: not protocol.socket_path(state_dir(repo)).exists(), "the supervisor to exit", 30)


GATE = 'while [ ! -f "{gate}" ]; do sleep 0.05; done'


# ----------------------------------------------------------------------------- a late client
def test_a_detached_run_goes_on_and_a_late_client_gets_its_history_then_live_output(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "talker"
        prompt = 'seq 1 2500 | sed "s/^/line /"; {GATE.format(gate=gate)}; echo "after gate"; echo x > out.txt'
    """)
    run = start_detached(repo, plan)
    # nobody watches: the agent prints its 2,500 lines and waits at the gate
    wait_until(lambda: (state_dir(repo) / "runs" / run / "logs" / "talker.log").is_file() and
               "line 2500" in (state_dir(repo) / "runs" / run / "logs" / "talker.log").read_text(), "the agent's lines")

    seen: list[Any] = []

    async def watch() -> int | None:
        conn = await open_connection(state_dir(repo))
        link = SocketLink(conn, run, tail=2000)
        async for ev in link.events():
            seen.append(ev)
            if isinstance(ev, SnapshotEnd):
                gate.write_text("go")  # now the agent goes on, while we watch
        await link.aclose()
        return link.exit_code

    code = anyio.run(watch)
    assert code == 0
    end = next(i for i, ev in enumerate(seen) if isinstance(ev, SnapshotEnd))
    before, after = seen[:end], seen[end + 1:]
    lines_before = [line for ev in before if isinstance(ev, TaskOutput) for line in ev.lines]
    # the pane as if watched all along: its last 2,000 lines (the whole log stays on disk)
    assert lines_before == [f"line {i}" for i in range(501, 2501)]
    assert any(isinstance(ev, RunStarted) for ev in before)
    assert any(isinstance(ev, TaskStatus) and ev.status == "running" for ev in before)
    lines_after = [line for ev in after if isinstance(ev, TaskOutput) for line in ev.lines]
    assert "after gate" in lines_after and "line 2500" not in lines_after
    assert any(isinstance(ev, TaskStatus) and ev.status == "merged" for ev in after)
    assert git(repo, "show", "main:out.txt") == "x"
    assert len((state_dir(repo) / "runs" / run / "logs" / "talker.log").read_text().splitlines()) >= 2501
    wait_supervisor_gone(repo)


# --------------------------------------------------------------------- two clients, one decision
def test_two_clients_take_each_decision_once(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        [[tasks]]
        name = "one"
        prompt = "echo one > one.txt"
        [[tasks]]
        name = "two"
        prompt = "echo two > two.txt"
        [[tasks]]
        name = "slow"
        prompt = 'echo started; {GATE.format(gate=gate)}; echo late > slow.txt'
    """)
    run = start_detached(repo, plan)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        conns = [await open_connection(state_dir(repo)) for _ in range(2)]
        links = [SocketLink(c, run) for c in conns]
        decisions: list[list[DecisionNeeded]] = [[], []]
        made: list[list[DecisionMade]] = [[], []]
        ready = [anyio.Event(), anyio.Event()]

        async def follow(i: int) -> None:
            async for ev in links[i].events():
                if isinstance(ev, DecisionNeeded):
                    decisions[i].append(ev)
                if isinstance(ev, DecisionMade):
                    made[i].append(ev)
                if isinstance(ev, TaskOutput) and "started" in ev.lines:
                    ready[i].set()
            ready[i].set()

        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(follow, i)
            for i in range(2):
                await ready[i].wait()
            # both discard the slow task at once: one does it, the other is told
            results: list[Any] = []

            async def discard(i: int) -> None:
                try:
                    results.append(await links[i].request("discard", task="slow"))
                except CommandError as exc:
                    results.append(str(exc))

            async with anyio.create_task_group() as inner:
                inner.start_soon(discard, 0)
                inner.start_soon(discard, 1)
            out["discard"] = results
            with anyio.fail_after(60):
                while not (decisions[0] and decisions[1]):
                    await anyio.sleep(0.05)
            review = decisions[0][0]
            assert review.kind == "review" and decisions[1][0].id == review.id
            out["review_items"] = sorted(row["name"] for row in review.items if row["candidate"])
            await links[0].request("decide", decision=review.id, answer={"one": True, "two": True})
            try:
                await links[1].request("decide", decision=review.id, answer={"one": False, "two": False})
                out["second_review"] = "accepted"
            except CommandError as exc:
                out["second_review"] = str(exc)
            with anyio.fail_after(60):
                while not any(d.kind == "land" for d in decisions[1]):
                    await anyio.sleep(0.05)
            land = next(d for d in decisions[1] if d.kind == "land")
            answers: list[Any] = []

            async def decide(i: int, answer: bool) -> None:
                try:
                    answers.append(await links[i].request("decide", decision=land.id, answer=answer))
                except CommandError as exc:
                    answers.append(str(exc))

            async with anyio.create_task_group() as inner:
                inner.start_soon(decide, 1, True)
                inner.start_soon(decide, 0, False)
            out["land"] = answers
        out["codes"] = [link.exit_code for link in links]
        out["made"] = [[(m.kind, m.answer) for m in ms] for ms in made]
        for link in links:
            await link.aclose()
        return out

    out = anyio.run(main)
    assert sum(isinstance(r, dict) and r.get("discarded") for r in out["discard"]) == 1, out["discard"]
    assert any(isinstance(r, str) and "discarded" in r for r in out["discard"]), out["discard"]
    assert out["review_items"] == ["one", "two"]
    assert out["second_review"].startswith("already decided"), out
    assert sum(isinstance(a, dict) for a in out["land"]) == 1 and \
        sum(isinstance(a, str) and a.startswith("already decided") for a in out["land"]) == 1, out["land"]
    # both clients saw the same decisions taken, once each
    assert out["made"][0] == out["made"][1] and len(out["made"][0]) == 2
    first_land = out["made"][0][1][1]
    assert out["codes"] == [0, 0] if first_land else out["codes"][0] == out["codes"][1]
    if first_land:
        assert git(repo, "show", "main:one.txt") == "one" and git(repo, "show", "main:two.txt") == "two"
    assert "corral/" + run + "/slow" not in corral_state(repo)["branches"]
    wait_supervisor_gone(repo)


# ------------------------------------------------------------------------------ killed clients
def test_a_client_killed_mid_stream_does_not_touch_the_run(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "flood"
        prompt = 'i=0; while [ ! -f "{gate}" ]; do seq 1 200; i=$((i+1)); done; echo done > f.txt'
    """)
    run = start_detached(repo, plan)
    # a client reading the stream, killed while the agent floods it
    reader = subprocess.Popen([sys.executable, "-c", f"""
import anyio, sys
from pathlib import Path
from corral.core.server.client import SocketLink, open_connection
async def main():
    link = SocketLink(await open_connection(Path({str(state_dir(repo))!r})), {run!r})
    async for ev in link.events():
        print(ev.type, flush=True)
anyio.run(main)
"""], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "output" in (reader.stdout.readline() or ""), "the client to stream")
        reader.kill()
        reader.wait()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    gate.write_text("go")
    data = wait_ended(repo, run)
    assert data["state"] == "completed" and data["exit_code"] == 0
    assert git(repo, "show", "main:f.txt") == "done"
    wait_supervisor_gone(repo)


def test_the_supervisor_killed_leaves_no_agent_and_clean_recovers(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "worker"
        prompt = 'echo work > w.txt; git add w.txt; git commit -qm work; setsid sh -c "sleep 300" & sleep 300'
    """)
    run = start_detached(repo, plan)
    log = state_dir(repo) / "runs" / run / "logs" / "worker.log"
    wait_until(lambda: git(repo, "rev-parse", "--verify", "-q", f"corral/{run}/worker", check=False) and
               git(repo, "log", "-1", "--format=%s", f"corral/{run}/worker", check=False) == "work", "the agent's commit")
    pid = supervisor_pid(repo)
    mark = os.environ[TEST_MARK]
    agents = {p for p, cmd in _marked_processes(mark).items() if "sleep 300" in cmd}
    assert agents, "the agent runs"
    os.kill(pid, signal.SIGKILL)
    # the watchdog ends every agent, the escaped one too
    wait_until(lambda: not any("sleep 300" in cmd for cmd in _marked_processes(mark).values()), "no agent left")
    assert log.is_file()
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"corral/{run}/worker" in corral_state(repo)["branches"]  # its commit is kept
    assert corral_state(repo)["worktrees"] == []
    # the dead supervisor's socket is stale: the next run starts a new supervisor all the same
    assert protocol.socket_path(state_dir(repo)).exists()
    plan2 = write_plan(tmp_path / "plan2.toml", """
        agent = "shell"
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "again"
        prompt = "echo again > again.txt"
    """)
    run2 = start_detached(repo, plan2)
    assert supervisor_pid(repo) != pid
    assert wait_ended(repo, run2)["exit_code"] == 0
    assert git(repo, "show", "main:again.txt") == "again"
    wait_supervisor_gone(repo)
    git(repo, "branch", "-D", f"corral/{run}/worker")


# -------------------------------------------------------------------------- the socket's door
def test_the_socket_is_private_and_another_uid_is_refused(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "wait"
        prompt = '{GATE.format(gate=gate)}'
    """)
    run = start_detached(repo, plan)
    path = protocol.socket_path(state_dir(repo))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the peer-uid check itself: this process is the owner
    a, b = socket.socketpair(socket.AF_UNIX)
    assert protocol.peer_uid(a) == os.getuid()
    a.close(), b.close()
    if os.getuid() == 0:
        # as another user: the socket's mode keeps them out; opened up, the uid check still does
        os.chmod(path, 0o666)
        # the socket is reached through a descriptor opened first (the test's private dirs are
        # not searchable by that user)
        probe = f"""
import ctypes, os, socket, sys
fd = os.open({str(path)!r}, os.O_PATH)
os.setgid(65534); os.setuid(65534)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self/fd stays ours
s = socket.socket(socket.AF_UNIX)
s.connect(f"/proc/self/fd/{{fd}}")
print(s.recv(4096).decode())  # refused at once, before any hello
"""
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
        os.chmod(path, 0o600)
        assert "refused: uid 65534" in res.stdout, res.stdout + res.stderr
    gate.write_text("go")
    wait_ended(repo, run)
    wait_supervisor_gone(repo)


def test_stop_runs_and_their_cleanup_and_bad_names_are_usage_errors(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "forever"
        prompt = 'echo partial > p.txt; git add p.txt; git commit -qm partial; sleep 600'
    """)
    run = start_detached(repo, plan)
    wait_until(lambda: git(repo, "log", "-1", "--format=%s", f"corral/{run}/forever", check=False) == "partial",
               "the agent's commit")
    res = corral("runs", cwd=repo)
    assert re.search(rf"{run} .*live \(supervisor {supervisor_pid(repo)}\)", res.stdout), res.stdout
    bad = corral("stop", "no-such-run", cwd=repo)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no-such-run" in bad.stderr, bad.stderr
    res = corral("stop", run, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"run {run} ended (exit 130)" in res.stdout
    data = run_json(repo, run)
    assert data["state"] == "interrupted"
    assert corral_state(repo)["worktrees"] == []
    assert f"corral/{run}/forever" in corral_state(repo)["branches"]  # work kept
    wait_supervisor_gone(repo)
    assert corral("stop", run, cwd=repo).returncode == 2  # nothing runs: said in one line
    git(repo, "branch", "-D", f"corral/{run}/forever")


@pytest.mark.parametrize("how", ["--all", "by-id"])
def test_stop_stops_a_headless_run_in_a_process_of_its_own_as_ctrl_c_would(repo: Path, tmp_path: Path,
                                                                            how: str) -> None:
    """``corral run --headless`` runs in a process of its own, not in the supervisor: ``corral stop``
    (``--all`` or by its id) stops it as Ctrl-C would, its agents stopped, its cleanup run, its
    work kept; it said "no live run" and left it running."""
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        approve = "all"
        [[tasks]]
        name = "forever"
        prompt = 'echo partial > p.txt; git add p.txt; git commit -qm partial; echo started; sleep 600'
    """)
    proc = start_run(repo, plan)
    try:
        wait_for(proc, "[forever] started", 1)
        [run] = [d.name for d in (state_dir(repo) / "runs").iterdir()]
        listed = corral("runs", cwd=repo).stdout
        assert re.search(rf"{run} .*running in process {last_pid(repo, run)}", listed), listed
        res = corral("stop", *(["--all"] if how == "--all" else [run]), cwd=repo)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"run {run} ended (exit 130)" in res.stdout, res.stdout
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert run_json(repo, run)["state"] == "interrupted"
    assert corral_state(repo)["worktrees"] == []
    assert git(repo, "show", f"corral/{run}/forever:p.txt") == "partial"  # work kept
    assert "no live run" in corral("stop", "--all", cwd=repo).stdout
    git(repo, "branch", "-D", f"corral/{run}/forever")


def test_runs_says_what_waits_and_notify_hears_of_it(repo: Path, tmp_path: Path) -> None:
    heard = tmp_path / "heard.jsonl"
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "none"
        notify = ["sh", "-c", "cat >> {heard}; echo >> {heard}"]
        [[tasks]]
        name = "one"
        prompt = "echo one > one.txt"
    """)
    run = start_detached(repo, plan)
    wait_until(lambda: heard.is_file() and "needs decision" in heard.read_text(), "the notify command")
    event = json.loads(heard.read_text().splitlines()[0])
    assert event["event"] == "needs decision" and event["kind"] == "review" and event["run"] == run
    res = corral("runs", cwd=repo)
    assert re.search(rf"{run} .*waiting: review", res.stdout), res.stdout
    res = corral("runs", "--json", cwd=repo)
    row = next(json.loads(line) for line in res.stdout.splitlines() if json.loads(line)["run"] == run)
    assert row["live"] is True and row["waiting"] == "review" and row["supervisor"] == supervisor_pid(repo)
    assert corral("stop", run, cwd=repo).returncode == 0
    wait_until(lambda: "failed" in heard.read_text(), "the notify command at the end")
    wait_supervisor_gone(repo)


def test_detach_flags_are_checked(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        [[tasks]]
        name = "one"
        prompt = "true"
    """)
    res = corral("run", str(plan), "--detach", "--headless", "--json", cwd=repo)
    assert res.returncode == 2 and "--detach" in res.stderr and res.stderr.count("\n") == 1
    res = corral("attach", cwd=repo)
    assert res.returncode == 1 and res.stderr.startswith("corral: no live run in ") and res.stderr.count("\n") == 1
    assert not protocol.socket_path(state_dir(repo)).exists()  # nothing was started for that
    res = corral("run", str(tmp_path / "missing.toml"), "--detach", cwd=repo)
    assert res.returncode == 2 and not (state_dir(repo) / "supervisor.lock").exists()


def test_a_jj_repository_runs_detached(tmp_path: Path) -> None:
    from conftest import has_jj

    if not has_jj():
        pytest.skip("jj is not installed here")
    repo = tmp_path / "jjrepo"
    repo.mkdir()
    subprocess.run(["jj", "git", "init", "--colocate", str(repo)], check=True, capture_output=True)
    (repo / "a.txt").write_text("a\n")
    subprocess.run(["jj", "commit", "-m", "init", "-R", str(repo)], check=True, capture_output=True)
    subprocess.run(["jj", "bookmark", "create", "main", "-r", "@-", "-R", str(repo)], check=True, capture_output=True)
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        approve = "all"
        vcs = "jj"
        base = "main"
        [[tasks]]
        name = "one"
        prompt = "echo one > one.txt"
    """)
    res = corral("run", str(plan), "--detach", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    run = re.search(r"run (\S+) started", res.stdout).group(1)
    sd = repo / ".jj" / "corral"
    data = wait_until(lambda: (sd / "runs" / run / "run.json").is_file() and
                      (d := json.loads((sd / "runs" / run / "run.json").read_text())).get("state") != "running" and d,
                      "the jj run to end")
    assert data["exit_code"] == 0, data
    shown = subprocess.run(["jj", "file", "show", "-r", "main", "one.txt"], cwd=repo, capture_output=True, text=True)
    assert shown.stdout.strip() == "one", (shown.stderr, data)
    wait_until(lambda: not protocol.socket_path(sd).exists(), "the supervisor to exit", 30)


# ---------------------------------------------------------------------------- in the dashboard
def test_home_shows_a_live_run_attaches_to_it_and_detaching_leaves_it_running(repo: Path, tmp_path: Path) -> None:
    """The home screen lists a run of the supervisor as live and waiting; enter opens its dashboard
    with the review it waits for; D goes back home and the run still waits; a second dashboard
    (corral attach) approves and lands, and the first one's review closes."""
    import asyncio

    from corral.tui.dashboard import CorralApp
    from corral.tui.home_screen import HomeScreen
    from corral.tui.review_screen import ReviewScreen
    from corral.tui.run_screen import RunScreen
    from test_tui_pilot import SIZE, until

    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        [[tasks]]
        name = "one"
        prompt = "echo one > one.txt"
    """)
    run = start_detached(repo, plan)

    async def main() -> None:
        app = CorralApp(home_repo=str(repo), notifications=False)
        async with app.run_test(size=SIZE) as pilot:
            def live_row() -> bool:
                screen = app.screen
                return (isinstance(screen, HomeScreen) and screen.live.get(run, {}).get("waiting") == "review")

            deadline = time.monotonic() + 60
            while not live_row():
                assert time.monotonic() < deadline, "the run never showed as live and waiting"
                if isinstance(app.screen, HomeScreen) and app.screen.loaded:
                    app.screen.load()
                await pilot.pause(0.2)
            home = app.screen
            home.query_one("#home-runs").focus()
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen), 30, what="the review it waits for")
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
            await pilot.press("D")
            await until(pilot, lambda: isinstance(app.screen, HomeScreen), what="back home")
            assert app.link is None
            await pilot.press("q")

    asyncio.run(main())
    # still waiting for its review, nobody attached
    res = corral("runs", "--json", cwd=repo)
    row = next(json.loads(line) for line in res.stdout.splitlines() if json.loads(line)["run"] == run)
    assert row["live"] and row["waiting"] == "review"

    async def approve() -> int | None:
        link = SocketLink(await open_connection(state_dir(repo)), run)
        async with anyio.create_task_group() as tg:
            async for ev in link.events():
                if isinstance(ev, DecisionNeeded):  # answered from another task: this one reads the answers
                    answer: Any = {"one": True} if ev.kind == "review" else True
                    tg.start_soon(partial(link.request, "decide", decision=ev.id, answer=answer))
        await link.aclose()
        return link.exit_code

    assert anyio.run(approve) == 0
    assert git(repo, "show", "main:one.txt") == "one"
    wait_supervisor_gone(repo)


# ------------------------------------------------------------- the dashboard that starts its run
def _starting_app(repo: Path, plan: Path, names: list[str], repo_arg: str = "") -> Any:
    """The dashboard as ``corral run PLAN`` opens it: on a link that starts the run of ``plan``
    (asked for ``repo_arg``: the repository's path unless given), the plan's tasks ``names`` shown."""
    from corral.core.server.client import StartingLink
    from corral.core.server.launch import StartRequest
    from corral.tui.dashboard import CorralApp

    request = StartRequest(target=str(plan), repo=repo_arg or str(repo), cwd=str(repo), env=dict(os.environ))
    link = StartingLink(state_dir(repo), repo, request)
    return link, CorralApp(link=link, notifications=False, expect=[(n, "shell") for n in names])


async def _until_it_exits(app: Any, link: Any, pilot: Any) -> int | None:
    """Run ``app`` until it exits by itself; then close its link, as the command's exit does."""
    deadline = time.monotonic() + 60
    while app.is_running and time.monotonic() < deadline:
        await pilot.pause(0.05)
    await link.aclose()
    return app.return_value


def test_a_dashboard_stopped_before_its_run_was_asked_of_the_supervisor_starts_nothing(
        repo: Path, tmp_path: Path, capsys: Any) -> None:
    """``corral run PLAN`` opens the dashboard at once, and asks the supervisor for the run once its
    panes are drawn: stopped before that (q, y; SIGTERM of a run that cannot go on yet), no run
    starts, nothing is created, and it exits 130 saying so."""
    from corral.tui.app import _finish
    from test_tui_pilot import SIZE

    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "one"
        prompt = "echo one > one.txt; sleep 30"
    """)
    link, app = _starting_app(repo, plan, ["one"])

    async def main() -> int | None:
        async with app.run_test(size=SIZE) as pilot:
            assert link.starting
            app.stop_and_exit()
            return await _until_it_exits(app, link, pilot)

    code = _finish(app, anyio.run(main))
    assert code == 130 and link.withdrawn and not link.run_id
    assert "nothing was started" in capsys.readouterr().err
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}
    wait_supervisor_gone(repo)


def test_a_run_the_supervisor_refuses_ends_the_dashboard_with_one_line_and_exit_2(repo: Path, tmp_path: Path,
                                                                                  capsys: Any) -> None:
    """The supervisor checks the run again before it starts it; its refusal, coming once the
    dashboard is open, closes it: exit 2, the refusal in one line after the screen is gone, and no
    run created. A command sent meanwhile gets the refusal too."""
    from corral.tui.app import _finish
    from test_tui_pilot import SIZE

    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        [[tasks]]
        name = "one"
        prompt = "echo one > one.txt"
    """)
    link, app = _starting_app(repo, plan, ["one"], repo_arg="not/absolute")
    refused: list[str] = []

    async def main() -> int | None:
        async with app.run_test(size=SIZE) as pilot:
            async def ask() -> None:
                try:
                    await link.request("stop")
                except CommandError as exc:
                    refused.append(str(exc))
            app.run_worker(ask())
            return await _until_it_exits(app, link, pilot)

    code = _finish(app, anyio.run(main))
    err = capsys.readouterr().err
    assert code == 2 and app.exit_code == 2
    assert err.strip() == "corral: a start request needs the repository as an absolute path", err
    assert refused == ["a start request needs the repository as an absolute path"]
    assert corral_state(repo)["runs"] == []
    wait_supervisor_gone(repo)


def test_corral_run_asks_the_supervisor_for_its_run_once_the_dashboard_has_drawn_its_panes(
        repo: Path, tmp_path: Path) -> None:
    """The dashboard of ``corral run`` is built first, then the run's workspaces and agents start:
    built beside them, on the same cores, it took three times as long (64 panes). The supervisor
    (here one already up, with another run) answers at once; the run is still asked only after the
    frame that shows the panes."""
    from test_tui_pilot import SIZE, until

    gate = tmp_path / "gate"
    first = write_plan(tmp_path / "first.toml", f"""
        agent = "shell"
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "waits"
        prompt = '{GATE.format(gate=gate)}'
    """)
    other = start_detached(repo, first)  # the supervisor is up
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "one"
        prompt = "echo one"
        [[tasks]]
        name = "two"
        prompt = "echo two"
    """)
    link, app = _starting_app(repo, plan, ["one", "two"])
    runs_when_drawn: list[list[str]] = []

    class Drawn:
        """The app's event, noting which runs there were when it is set."""

        def __init__(self) -> None:
            self.event = anyio.Event()

        def set(self) -> None:
            if not runs_when_drawn:
                runs_when_drawn.append(corral_state(repo)["runs"])
            self.event.set()

        def is_set(self) -> bool:
            return self.event.is_set()

        async def wait(self) -> None:
            await self.event.wait()

    async def main() -> int | None:
        app.panes_drawn = Drawn()  # type: ignore[assignment]
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.model.finished is not None, 60, what="the run's end")
            app.exit()
        await link.aclose()
        return link.exit_code

    assert anyio.run(main) == 0 and link.run_id
    assert runs_when_drawn == [[other]], runs_when_drawn  # drawn before the run existed
    assert run_json(repo, link.run_id)["state"] == "completed"
    gate.write_text("go")
    wait_ended(repo, other)
    wait_supervisor_gone(repo)
