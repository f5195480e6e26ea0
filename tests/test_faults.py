"""Faults, crashes and hostile input: nothing lost, nothing leaked."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, write_plan
from test_engine_git import _pids_alive, plan_text, run_plan

EMPTY = {"branches": [], "worktrees": [], "runs": []}


def start_run(repo: Path, plan: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "run", str(plan), "--headless", *args],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)


def wait_for(proc: subprocess.Popen, text: str, count: int, timeout: float = 30) -> str:
    seen: list[str] = []
    deadline = time.time() + timeout
    while time.time() < deadline and sum(text in l for l in seen) < count:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
    assert sum(text in l for l in seen) >= count, "".join(seen)
    return "".join(seen)


def test_sigkill_of_corral_leaves_no_agent_and_clean_recovers_the_work(repo, tmp_path, wt_root):
    pids = tmp_path / "pids"
    pids.mkdir()
    script = (f"sleep 300 & echo $! > {pids}/$CORRAL_TASK.child; echo $$ > {pids}/$CORRAL_TASK.pid; "
              f"trap '' TERM; echo unsaved > wip-$CORRAL_TASK.txt; echo started; wait")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("a", script), ("b", script),
                                                                  ("c", "echo quick; echo started")]))
    proc = start_run(repo, plan, "--approve", "all")
    wait_for(proc, "started", 3)

    def c_put_away() -> bool:  # c's work is on its branch and its workspace gone (max_parallel bounds them)
        runs = list((repo / ".git/corral/runs").iterdir())
        try:
            return bool(runs) and json.loads((runs[0] / "run.json").read_text())["tasks"]["c"].get("workspace_removed")
        except (OSError, ValueError, KeyError):
            return False

    deadline = time.time() + 30
    while not c_put_away() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup code of corral's runs
    proc.wait(timeout=10)
    all_pids = [int(p.read_text()) for p in pids.iterdir()]
    assert len(all_pids) == 4
    deadline = time.time() + 10  # they ignore TERM: KILL comes after the grace period (3 s)
    while _pids_alive(all_pids) and time.time() < deadline:
        time.sleep(0.1)
    assert _pids_alive(all_pids) == [], "agents outlived corral"

    # the journal is readable, and clean finds what the run left
    run_dir = next((repo / ".git/corral/runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["state"] == "running"
    left = corral_state(repo)
    assert len(left["worktrees"]) == 2 and len(left["branches"]) == 3
    dry = corral("clean", "--dry-run", cwd=repo)
    assert dry.returncode == 0 and dry.stdout.count("would remove workspace") == 2
    assert dry.stdout.count("would delete branch") == 1
    assert corral_state(repo) == left
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("removed workspace") == 2
    assert f"deleted branch {[b for b in left['branches'] if b.endswith('/c')][0]}" in res.stdout
    state = corral_state(repo)
    assert state["worktrees"] == [] and list(wt_root.iterdir()) == []
    # a and b held uncommitted work: salvaged onto their kept branches; c had none (its workspace
    # already put away, its branch left by the killed run): branch deleted
    assert sorted(b.rsplit("/", 1)[1] for b in state["branches"]) == ["a", "b"]
    for b in state["branches"]:
        task = b.rsplit("/", 1)[1]
        assert git(repo, "show", f"{b}:wip-{task}.txt") == "unsaved"
        assert f"kept branch {b}" in res.stdout
    assert json.loads((run_dir / "run.json").read_text())["state"] == "interrupted"
    assert "interrupted" in corral("runs", cwd=repo).stdout
    assert "nothing to clean" in corral("clean", cwd=repo).stdout


def test_second_ctrl_c_during_cleanup_does_not_half_remove(repo, tmp_path, wt_root):
    # on TERM the agents hold the cleanup until the test has sent its Ctrl-Cs (at most the grace
    # period: KILL comes after it)
    release = tmp_path / "release"
    script = (f"trap 'while [ ! -e {release} ]; do sleep 0.02; done; exit 1' TERM; echo work > wip.txt; "
              f"echo started; sleep 300 & wait")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [(f"t{i}", script) for i in range(3)]))
    proc = start_run(repo, plan, "--approve", "all")
    wait_for(proc, "started", 3)
    proc.send_signal(signal.SIGINT)
    out = wait_for(proc, "stopping agents and cleaning up", 1)
    proc.send_signal(signal.SIGINT)
    out += wait_for(proc, "cleanup in progress", 1)
    proc.send_signal(signal.SIGINT)
    out += wait_for(proc, "cleanup in progress", 1)
    release.touch()
    rest, _ = proc.communicate(timeout=30)
    out += rest
    assert proc.returncode == 130, out
    assert "cleanup in progress" in out
    state = corral_state(repo)
    assert state["worktrees"] == [] and list(wt_root.iterdir()) == []
    assert len(state["branches"]) == 3
    for b in state["branches"]:
        assert git(repo, "show", f"{b}:wip.txt") == "work"
    assert git(repo, "worktree", "prune", "--dry-run", "-v") == ""


def test_agent_that_ignores_term_is_killed_after_grace(repo, tmp_path, wt_root):
    # timeout ends it: TERM is ignored, so KILL after the grace period must
    script = "trap '' TERM; echo stubborn; sleep 300 & wait; wait"
    start = time.time()
    res = run_plan(repo, tmp_path, wt_root, [("stubborn", script)], "--approve", "all", timeout=1)
    assert time.time() - start < 20
    assert res.returncode == 1, res.stdout
    assert "stubborn: failed (timeout after 1s)" in res.stdout


def test_24_tasks_in_one_run_without_git_lock_errors(repo, tmp_path, wt_root):
    tasks = [(f"task-{i:02d}", f"echo {i} > file-{i:02d}.txt") for i in range(24)]
    res = run_plan(repo, tmp_path, wt_root, tasks, "--approve", "all")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "lock" not in res.stdout.lower()
    assert len(list(repo.glob("file-*.txt"))) == 24
    assert corral_state(repo)["worktrees"] == [] and corral_state(repo)["branches"] == []


@pytest.mark.parametrize("name,problem", [
    ("", "is empty"),
    ("x" * 41, "at most 40"),
    ("..", "must not start with '.'"),
    ("a..b", "must not contain '..'"),
    ("a/b", "may only hold"),
    ("-rf", "must not start with '-'"),
    ("tâche", "may only hold"),
    ("a;rm -rf ~", "may only hold"),
    ("$(id)", "may only hold"),
    ("x.lock", "must not end with '.lock'"),
])
def test_hostile_task_names_are_refused(repo, tmp_path, name, problem):
    plan = write_plan(tmp_path / "plan.toml",
                      f'agent = "shell"\n[[tasks]]\nname = {json.dumps(name)}\nprompt = "echo hi"\n')
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    assert problem in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert corral_state(repo) == EMPTY


def test_prompts_reach_agents_verbatim_never_through_a_shell(repo, tmp_path, wt_root):
    recorder = tmp_path / "bin" / "recorder"
    recorder.parent.mkdir()
    recorder.write_text("#!/usr/bin/env python3\nimport json, sys\n"
                        "open('argv.json', 'w').write(json.dumps(sys.argv[1:]))\nprint('recorded')\n")
    recorder.chmod(0o755)
    prompt = "it's \"quoted\"\nnew line; $(touch /tmp/pwned-corral) `id` && rm -rf ~ | cat > x"
    body = (f'worktree_root = "{wt_root}"\nagent = "rec"\nsetup = "none"\n'
            f'[agents.rec]\ncommand = ["{recorder}", "--task", "{{task}}", "--prompt", "{{prompt}}", "x{{run}}y"]\n'
            f'[[tasks]]\nname = "t-1"\nprompt = {json.dumps(prompt)}\n')
    plan = write_plan(tmp_path / "plan.toml", body)
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    argv = json.loads((repo / "argv.json").read_text())
    assert argv[:4] == ["--task", "t-1", "--prompt", prompt]
    assert argv[4].startswith("x2") and argv[4].endswith("y")
    assert not Path("/tmp/pwned-corral").exists()


def test_nul_in_a_prompt_is_refused(repo, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", 'agent = "shell"\n[[tasks]]\nname = "a"\nprompt = "x\\u0000y"\n')
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 2 and "NUL" in res.stderr
    assert corral_state(repo) == EMPTY


def test_unwritable_worktree_root_is_refused(repo, tmp_path):
    plan = write_plan(tmp_path / "plan.toml",
                      'worktree_root = "/sys"\nagent = "shell"\n[[tasks]]\nname = "a"\nprompt = "x"\n')
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 2 and "worktree_root '/sys': not writable" in res.stderr
    assert corral_state(repo) == EMPTY


def test_disk_full_during_setup_fails_that_task_only(repo, tmp_path, wt_root):
    body = plan_text(wt_root, [("full", "echo never runs"), ("fine", "echo 1 > fine.txt")])
    body = body.replace('name = "full"', 'name = "full"\nsetup = "head -c 100000 /dev/zero > /dev/full"')
    plan = write_plan(tmp_path / "plan.toml", body)
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 1, res.stdout
    assert "full: failed (setup failed (exit 1)" in res.stdout
    assert "No space left on device" in res.stdout
    assert "never runs" not in res.stdout
    assert (repo / "fine.txt").exists()
    assert corral_state(repo)["worktrees"] == []


def test_binary_garbage_huge_lines_and_no_newline(repo, tmp_path, wt_root):
    tasks = [
        ("garbage", "head -c 200000 /dev/urandom; echo; echo after-garbage"),
        ("huge", f"{sys.executable} -c \"import sys; sys.stdout.write('x' * 10_000_000 + '\\n')\"; echo after-huge"),
        ("nonl", "printf 'no newline at the end'"),
    ]
    res = run_plan(repo, tmp_path, wt_root, tasks, "--approve", "none")
    assert res.returncode == 0, res.stdout[-2000:]
    assert "[garbage] after-garbage" in res.stdout
    assert "[huge] after-huge" in res.stdout
    assert "[nonl] no newline at the end" in res.stdout
    longest = max(len(line) for line in res.stdout.splitlines())
    assert longest < 20_000  # panes get capped lines
    run_dir = next((repo / ".git/corral/runs").iterdir())
    assert (run_dir / "logs" / "huge.log").stat().st_size == 10_000_001 + len("after-huge\n")
    assert (run_dir / "logs" / "garbage.log").stat().st_size == 200_000 + 1 + len("after-garbage\n")


@pytest.mark.parametrize("at_once, nice", [(1, 5), (8, 10), (64, 19)])
def test_agents_are_niced_so_that_together_they_never_outweigh_corral(repo, tmp_path, wt_root, at_once, nice):
    # 64 agents at nice 5, each a scheduling group of its own, outweighed corral's loop 20 to 1: its
    # worst stall doubled while they streamed
    # the agent's first instant counts: corral's renice of a reaper's group came at times before the
    # hub's reaper had a session of its own, and the agent ran at 0 in a scheduling group of its own
    probe = tmp_path / "nice"
    res = run_plan(repo, tmp_path, wt_root, [("a", f"ps -o ni= -p $$ > {probe}")], "--approve", "none",
                   max_parallel=at_once)
    assert res.returncode == 0, res.stdout + res.stderr
    assert probe.read_text().strip() == "5"  # one task: one agent at once, whatever max_parallel says
    tasks = [(f"t{i}", f"ps -o ni= -p $$ > {tmp_path}/nice-$CORRAL_TASK") for i in range(at_once)]
    res = run_plan(repo, tmp_path, wt_root, tasks[:2] if at_once == 1 else tasks, "--approve", "none",
                   max_parallel=at_once)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {p.read_text().strip() for p in tmp_path.glob("nice-*")} == {str(nice)}


def test_workspaces_are_private_fresh_dirs(repo, tmp_path, wt_root):
    probe = tmp_path / "probe.txt"
    script = f"pwd > {probe}; stat -c %a . >> {probe}"
    res = run_plan(repo, tmp_path, wt_root, [("a", script)], "--approve", "none")
    assert res.returncode == 0
    path, mode = probe.read_text().split()
    assert mode == "700"
    assert Path(path).parent == wt_root and Path(path).name.startswith("corral-a-")
    assert len(Path(path).name) > len("corral-a-") + 5  # random part


def test_preplanted_symlinks_in_the_worktree_root_are_not_followed(repo, tmp_path, wt_root):
    """Workspace names are random, so a planted name is never guessed right by chance: the real
    corral runs with its name generator made predictable, and the first 50 names it tries are
    planted symlinks to a victim directory. It must skip them all, never write through one."""
    target = tmp_path / "victim"
    target.mkdir()
    for i in range(50):
        (wt_root / f"corral-a-{i:012x}").symlink_to(target)
    probe = tmp_path / "pwd.txt"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("a", f"pwd > {probe}; echo 1 > one.txt")]))
    predictable = ("import itertools, sys; from corral.core.vcs import registry; from corral.tui.cli import main; "
                   "n = itertools.count(); registry.candidate_name = lambda prefix: f'{prefix}{next(n):012x}'; "
                   "sys.argv[0] = 'corral'; main()")
    res = subprocess.run([sys.executable, "-c", predictable, "run", str(plan), "--headless", "--approve", "all"],
                         cwd=repo, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert probe.read_text().strip() == str(wt_root / f"corral-a-{50:012x}")  # the first name not planted
    assert git(repo, "show", "main:one.txt") == "1"
    assert list(target.iterdir()) == []
    assert all(p.is_symlink() for p in wt_root.iterdir())


def test_an_agent_writing_to_its_pwd_writes_into_its_workspace(repo, tmp_path, wt_root):
    """opencode resolves paths against $PWD, not the real cwd: corral's own PWD (the user's
    checkout) sent its writes there, outside the workspace."""
    agent = tmp_path / "pwd-agent"
    agent.write_text(f"#!{sys.executable}\nimport os\nopen(os.environ['PWD'] + '/x.txt', 'w').write('x')\n")
    agent.chmod(0o755)
    plan = write_plan(tmp_path / "plan.toml",
                      f'worktree_root = "{wt_root}"\nagent = "pwd"\nsetup = "none"\n'
                      f'[agents.pwd]\ncommand = ["{agent}", "{{prompt}}"]\n[[tasks]]\nname = "a"\nprompt = "go"\n')
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo, env={"PWD": str(repo)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert git(repo, "status", "--porcelain") == "", "written into the user's checkout"
    assert git(repo, "show", "main:x.txt") == "x"  # landed through the merge


# ------------------------------------------------- no descendant of an agent outlives its task
def escaping(pids: Path, then: str = "") -> str:
    """An agent that leaves three processes outside its process group and session, each ignoring
    TERM and writing its pid to ``pids/NAME``: ``setsid cmd &``, a double-forked daemon (a subshell
    starts it and exits) and ``setsid -f``. It says "started" once all three run, then runs ``then``."""
    esc = f"trap '' TERM; echo $$ > {pids}/$0; exec sleep 600"
    names = ("setsid", "daemon", "setsid-f")
    waiting = " || ".join(f"[ ! -s {pids}/{n} ]" for n in names)
    return (f"ESC={shlex.quote(esc)}; setsid sh -c \"$ESC\" setsid & (setsid sh -c \"$ESC\" daemon &); "
            f"setsid -f sh -c \"$ESC\" setsid-f; while {waiting}; do sleep 0.02; done; echo started; {then}")


@pytest.fixture
def pids(tmp_path):
    """A folder for escaped processes' pid files; whatever is still alive at the end is killed, so a
    failing test leaves nothing behind."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for pid in _pids_alive(escaped(folder)):
        os.kill(pid, signal.SIGKILL)


def escaped(pids: Path) -> list[int]:
    return [int(p.read_text()) for p in pids.iterdir()]


def assert_all_dead(pids: Path, count: int = 3, timeout: float = 15) -> None:
    found = escaped(pids)
    assert len(found) == count, found
    deadline = time.time() + timeout
    while _pids_alive(found) and time.time() < deadline:
        time.sleep(0.05)
    assert _pids_alive(found) == [], "escaped processes outlived their task"


def test_escaped_processes_die_when_their_task_ends(repo, tmp_path, wt_root, pids):
    res = run_plan(repo, tmp_path, wt_root, [("esc", escaping(pids))], "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[esc] started" in res.stdout
    assert_all_dead(pids, timeout=2)  # the task's end waits for them: dead by the time corral exits


def test_escaped_processes_die_when_their_task_is_aborted(repo, tmp_path, pids):
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import anyio, pathlib\n"
        "async def run(input, rt):\n"
        "    ws = await rt.workspaces.create('w')\n"
        f"    h = rt.spawn({{'agent': 'shell', 'name': 'esc', 'cwd': str(ws.path), 'task': {escaping(pids, 'sleep 600')!r}}})\n"
        f"    while len(list(pathlib.Path({str(pids)!r}).iterdir())) < 3:\n"
        "        await anyio.sleep(0.05)\n"
        "    rt.abort('esc')\n"
        "    return (await rt.join(h)).status\n")
    res = corral("run", str(prog), "--headless", "--json", cwd=repo)
    results = [json.loads(l) for l in res.stdout.splitlines() if '"program_result"' in l]
    assert results and results[0]["value"] == "aborted", res.stdout + res.stderr
    assert_all_dead(pids, timeout=2)


def test_escaped_processes_die_when_the_run_is_interrupted(repo, tmp_path, wt_root, pids):
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("esc", escaping(pids, "sleep 600"))]))
    proc = start_run(repo, plan, "--approve", "all")
    wait_for(proc, "started", 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert_all_dead(pids, timeout=2)


def test_escaped_processes_die_when_corral_is_sigkilled_and_clean_finds_none(repo, tmp_path, wt_root, pids):
    """corral SIGKILLed: its watchdog TERMs each agent's group, the agent's reaper TERMs every
    descendant (these ignore it), KILLs them after the grace period, and the watchdog waits for the
    reaper before it KILLs the group."""
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("esc", escaping(pids, "sleep 600"))]))
    proc = start_run(repo, plan, "--approve", "all")
    wait_for(proc, "started", 1)
    proc.kill()
    proc.wait(timeout=10)
    assert_all_dead(pids)
    from corral.core.procs import run_processes

    run = corral_state(repo)["runs"][0]
    assert run_processes(run) == []
    res = corral("clean", cwd=repo)
    assert res.returncode == 0 and "stopped" not in res.stdout, res.stdout


def test_escaped_processes_die_with_their_task_when_the_reaper_itself_is_killed(repo, tmp_path, wt_root, pids):
    """An agent that SIGKILLs the process in front of it (its reaper): what escaped is reparented
    to corral, a child subreaper itself, which kills it at the task's end."""
    res = run_plan(repo, tmp_path, wt_root, [("esc", escaping(pids, "kill -KILL $PPID; sleep 600"))],
                   "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "esc: failed (exit code -9)" in res.stdout
    assert_all_dead(pids, timeout=2)


def test_what_an_agent_says_in_its_grace_period_is_in_its_log(repo, tmp_path, wt_root):
    """SIGTERM to a headless run stops its agents with TERM and a grace period: what an agent
    prints then (its last words, a summary of what it was doing) is in its log, not cut off where
    the run was stopped."""
    script = "trap 'echo said in its grace period; exit 3' TERM; echo started; sleep 300 & wait"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("a", script)]))
    proc = start_run(repo, plan, "--approve", "all")
    seen = wait_for(proc, "[a] started", 1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + out
    [run] = list((repo / ".git/corral/runs").iterdir())
    assert (run / "logs" / "a.log").read_text() == "started\nsaid in its grace period\n"
