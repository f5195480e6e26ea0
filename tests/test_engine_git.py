"""The plan pipeline end to end on real git repositories, through the real command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, write_plan


def plan_text(wt_root: Path, tasks: list[tuple[str, str]], **top: object) -> str:
    lines = [f'worktree_root = "{wt_root}"', 'agent = "shell"', 'setup = "none"']
    for k, v in top.items():
        lines.append(f"{k} = {json.dumps(v)}")
    for name, script in tasks:
        lines += ["", "[[tasks]]", f'name = "{name}"', f"prompt = {json.dumps(script)}"]
    return "\n".join(lines) + "\n"


def run_plan(repo: Path, tmp_path: Path, wt_root: Path, tasks, *args: str, **top: object):
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, tasks, **top))
    return corral("run", str(plan), "--headless", *args, cwd=repo)


def test_three_tasks_on_separate_files_all_land(repo, tmp_path, wt_root):
    base_before = git(repo, "rev-parse", "main")
    res = run_plan(repo, tmp_path, wt_root, [
        ("one", "echo working on one; echo 1 > one.txt"),
        ("two", "mkdir -p docs && echo 2 > docs/two.md"),
        ("three", "echo 'VALUE = 3' > src/app.py"),
    ], "--approve", "all", verify="test -f one.txt && test -f docs/two.md")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[one] working on one" in res.stdout
    # base moved, and holds all three changes
    assert git(repo, "rev-parse", "main") != base_before
    assert (repo / "one.txt").read_text() == "1\n"  # the checked-out main worktree was fast-forwarded
    assert (repo / "docs/two.md").read_text() == "2\n"
    assert (repo / "src/app.py").read_text() == "VALUE = 3\n"
    assert git(repo, "status", "--porcelain") == ""
    state = corral_state(repo)
    assert state["worktrees"] == [] and state["branches"] == []
    assert list(wt_root.iterdir()) == []
    assert len(state["runs"]) == 1
    run_dir = Path(git(repo, "rev-parse", "--git-common-dir"))
    run_dir = (repo / run_dir if not run_dir.is_absolute() else run_dir) / "corral" / "runs" / state["runs"][0]
    report = (run_dir / "report.md").read_text()
    assert "outcome: **completed**" in report and "| one | shell | merged |" in report
    assert (run_dir / "logs" / "one.log").read_text() == "working on one\n"
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["state"] == "completed" and run_json["tasks"]["two"]["status"] == "merged"


def test_failing_task_keeps_its_branch_and_exits_1(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [
        ("good", "echo ok > good.txt"),
        ("bad", "echo half > half.txt; echo broken >&2; exit 4"),
    ], "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "bad: failed (exit code 4)" in res.stdout
    state = corral_state(repo)
    assert state["worktrees"] == []
    [kept] = state["branches"]
    assert kept.endswith("/bad")
    # the failed agent's uncommitted file was committed onto its branch: no work lost
    assert git(repo, "show", f"{kept}:half.txt") == "half"
    assert (repo / "good.txt").exists()
    assert "corral/" in res.stdout and "bad" in res.stdout.split("branch kept")[-1]


def test_conflicting_pair_merges_one_and_marks_the_other(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [
        ("first", "echo 'VALUE = 10' > src/app.py"),
        ("second", "echo 'VALUE = 20' > src/app.py"),
        ("other", "echo x > x.txt"),
    ], "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "forecast first: 1 file(s) [src/app.py]; would conflict with second" in res.stdout
    assert "second: CONFLICT merging (merge) in src/app.py; left out" in res.stdout
    assert (repo / "src/app.py").read_text() == "VALUE = 10\n"
    assert (repo / "x.txt").exists()
    # base is a clean merge of the others: no conflict markers anywhere
    assert "<<<<<<<" not in git(repo, "show", "main:src/app.py")
    state = corral_state(repo)
    assert [b.rsplit("/", 1)[1] for b in state["branches"]] == ["second"]
    assert state["worktrees"] == []


def test_failing_verify_lands_nothing_and_keeps_integration_branch(repo, tmp_path, wt_root):
    before = git(repo, "rev-parse", "main")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt")], "--approve", "all",
                   verify="echo checking; test -f missing.txt")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "[verify] checking" in res.stdout and "verify FAILED" in res.stdout
    assert git(repo, "rev-parse", "main") == before
    state = corral_state(repo)
    assert any(b.endswith("/integration") for b in state["branches"])
    integ = [b for b in state["branches"] if b.endswith("/integration")][0]
    assert git(repo, "show", f"{integ}:one.txt") == "1"
    assert any(b.endswith("/one") for b in state["branches"])  # not landed: its own branch is kept too
    assert state["worktrees"] == []


def test_approve_none_merges_nothing(repo, tmp_path, wt_root):
    before = git(repo, "rev-parse", "main")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt"), ("two", "echo 2 > two.txt")],
                   "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    assert git(repo, "rev-parse", "main") == before
    state = corral_state(repo)
    assert sorted(b.rsplit("/", 1)[1] for b in state["branches"]) == ["one", "two"]
    assert state["worktrees"] == []
    assert "one: rejected" in res.stdout


def test_approve_ask_without_a_terminal_means_none(repo, tmp_path, wt_root):
    before = git(repo, "rev-parse", "main")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "means none" in res.stdout
    assert git(repo, "rev-parse", "main") == before


@pytest.mark.parametrize("strategy", ["squash", "rebase"])
def test_other_merge_strategies(repo, tmp_path, wt_root, strategy):
    res = run_plan(repo, tmp_path, wt_root, [
        ("one", "echo 1 > one.txt; git add one.txt; git commit -qm 'agent commit'; echo more >> one.txt"),
        ("two", "echo 2 > two.txt"),
        ("clash", "echo 1-clash > one.txt"),
    ], "--approve", "all", merge=strategy)
    assert res.returncode == 1, res.stdout + res.stderr  # clash conflicts
    assert (repo / "one.txt").read_text() == "1\nmore\n"
    assert (repo / "two.txt").read_text() == "2\n"
    log = git(repo, "log", "--format=%s %p", "main").splitlines()
    assert all(len(line.split()) <= 4 for line in log)  # no merge commits (one parent each)
    if strategy == "squash":
        assert any("one (squashed)" in line for line in log)
    else:
        assert any(line.startswith("agent commit") for line in log)
    assert "clash: CONFLICT" in res.stdout


def test_json_events(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo hello; echo 1 > one.txt")], "--approve", "all", "--json")
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert all({"type", "ts", "run"} <= set(e) for e in events)
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    out = [e for e in events if e["type"] == "output"]
    assert out == [dict(out[0], line="hello")] and out[0]["task"] == "one"
    fc = [e for e in events if e["type"] == "forecast"]
    assert fc[0]["files"] == ["one.txt"] and fc[0]["conflicts_with"] == []
    assert events[-1]["exit_code"] == 0


def test_base_moved_during_run_is_merged_in_and_lands(repo, tmp_path, wt_root):
    # the user's commit, made from the agent's script: past the guard that keeps agents off base
    script = f"echo 1 > one.txt; git -C {repo} -c core.hooksPath=/dev/null commit -q --allow-empty -m 'user commit meanwhile'"
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "warning: main moved during the run" in res.stdout
    assert (repo / "one.txt").exists() and "user commit meanwhile" in git(repo, "log", "--format=%s", "main")
    assert corral_state(repo)["branches"] == []


def test_dirty_user_checkout_is_never_touched(repo, tmp_path, wt_root):
    (repo / "src/app.py").write_text("VALUE = 'mine, uncommitted'\n")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt; echo 'VALUE = 2' > src/app.py")],
                   "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "the landing changes: src/app.py; corral will not touch them" in res.stdout
    assert "git merge --ff-only" in res.stdout  # how to land by hand
    assert (repo / "src/app.py").read_text() == "VALUE = 'mine, uncommitted'\n"
    assert not (repo / "one.txt").exists()


def test_base_not_checked_out_moves_by_compare_and_swap(repo, tmp_path, wt_root):
    git(repo, "branch", "release")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt")], "--approve", "all", "--base", "release")
    assert res.returncode == 0, res.stdout + res.stderr
    assert git(repo, "show", "release:one.txt") == "1"
    assert not (repo / "one.txt").exists()  # main untouched


def test_max_parallel_bounds_running_agents(repo, tmp_path, wt_root):
    """Counted through the run's own events, not a time window: a task holds a slot from its
    workspace's creation to its end, and with the limit broken every task takes one before the first
    can finish (making a workspace waits on git)."""
    marker = tmp_path / "running"
    marker.mkdir()
    script = f"touch {marker}/$CORRAL_TASK; ls {marker} | wc -l > count.txt; rm {marker}/$CORRAL_TASK"
    res = run_plan(repo, tmp_path, wt_root, [(f"t{i}", script) for i in range(4)], "--approve", "none",
                   "--max-parallel", "1", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    holding: set[str] = set()
    most = 0
    for event in map(json.loads, res.stdout.splitlines()):
        if event["type"] == "task_status" and event["status"] in ("creating", "setup", "running"):
            holding.add(event["task"])
        elif event["type"] in ("task_status", "task_finished"):
            holding.discard(event["task"])
        most = max(most, len(holding))
    assert most == 1
    for i in range(4):
        branch = [b for b in corral_state(repo)["branches"] if b.endswith(f"/t{i}")][0]
        assert git(repo, "show", f"{branch}:count.txt").strip() == "1"


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # a zombie is dead for our purposes
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                continue
        except OSError:
            continue
        alive.append(pid)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_run_stops_every_agent_and_cleans_up(repo, tmp_path, wt_root, sig):
    pids = tmp_path / "pids"
    pids.mkdir()
    # each agent starts a grandchild (like a dev server) and ignores TERM itself for a moment
    script = (f"sleep 300 & echo $! > {pids}/$CORRAL_TASK.child; echo $$ > {pids}/$CORRAL_TASK.pid; "
              f"echo work > wip.txt; echo started; wait")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("a", script), ("b", script)]))
    proc = subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "run", str(plan), "--headless",
                             "--approve", "all"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    seen = []
    deadline = time.time() + 30
    while time.time() < deadline and sum("started" in l for l in seen) < 2:
        seen.append(proc.stdout.readline())
    assert sum("started" in l for l in seen) == 2, "".join(seen)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, "".join(seen) + out
    all_pids = [int(p.read_text()) for p in pids.iterdir()]
    assert len(all_pids) == 4
    deadline = time.time() + 5
    while _pids_alive(all_pids) and time.time() < deadline:
        time.sleep(0.1)
    assert _pids_alive(all_pids) == []
    state = corral_state(repo)
    assert state["worktrees"] == [] and list(wt_root.iterdir()) == []
    # interrupted work is kept, committed on its branch
    assert len(state["branches"]) == 2
    for b in state["branches"]:
        assert git(repo, "show", f"{b}:wip.txt") == "work"
    run = json.loads(next((repo / ".git/corral/runs").iterdir()).joinpath("run.json").read_text())
    assert run["state"] == "interrupted" and run["exit_code"] == 130


@pytest.mark.parametrize("mode", ["--json", "lines"])
def test_output_closed_by_its_reader_stops_the_run_quietly_and_keeps_the_work(repo, tmp_path, wt_root, mode):
    # `corral run --headless --json | head`: a BrokenPipeError traceback, and the run died mid-way
    script = "echo work > wip.txt; echo agent-began; seq 1 100000; exec sleep 300"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("a", script)]))
    args = ["--json"] if mode == "--json" else []
    proc = subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "run", str(plan), "--headless", *args,
                             "--approve", "all"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    seen = []
    deadline = time.time() + 30
    while time.time() < deadline and not any("agent-began" in l for l in seen):
        seen.append(proc.stdout.readline())
    assert any("agent-began" in l for l in seen), "".join(seen)
    proc.stdout.close()  # the reader goes away
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 130, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert "the output was closed" in err
    state = corral_state(repo)
    assert state["worktrees"] == [] and list(wt_root.iterdir()) == []
    [branch] = state["branches"]
    assert git(repo, "show", f"{branch}:wip.txt") == "work"


BAD_PLANS = {
    "duplicate": ('[[tasks]]\nname = "a"\nprompt = "x"\n\n[[tasks]]\nname = "a"\nprompt = "y"\n',
                  "duplicate task name 'a'"),
    "dotdot": ('[[tasks]]\nname = "../x"\nprompt = "x"\n', "tasks[1].name: bad task name"),
    "unknown-key": ('colour = "blue"\n[[tasks]]\nname = "a"\nprompt = "x"\n', "colour: unknown key"),
    "unknown-task-key": ('[[tasks]]\nname = "a"\nprompt = "x"\nmodel = "big"\n', "tasks[1].model: unknown key"),
    "unknown-agent": ('[[tasks]]\nname = "a"\nprompt = "x"\nagent = "hal9000"\n', "unknown agent 'hal9000'"),
    "missing-base": ('base = "no-such-branch"\n[[tasks]]\nname = "a"\nprompt = "x"\n',
                     "base 'no-such-branch': no such revision"),
    "empty-prompt": ('[[tasks]]\nname = "a"\nprompt = "  "\n', "empty prompt"),
    "bad-enum": ('merge = "octopus"\n[[tasks]]\nname = "a"\nprompt = "x"\n', "merge: must be one of"),
    "wrong-type": ('max_parallel = "4"\n[[tasks]]\nname = "a"\nprompt = "x"\n', "max_parallel: must be an integer"),
    "no-tasks": ('agent = "shell"\n', "no [[tasks]]"),
    "not-toml": ('[[tasks]\nname = \n', "not valid TOML"),
    "missing-worktree-root": ('worktree_root = "/nonexistent/dir"\n[[tasks]]\nname = "a"\nprompt = "x"\n',
                              "worktree_root '/nonexistent/dir': no such directory"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_bad_plans_exit_2_and_create_nothing(repo, tmp_path, case):
    body, message = BAD_PLANS[case]
    if "agent =" not in body.split("[[tasks]]")[0]:
        body = 'agent = "shell"\n' + body
    plan = write_plan(tmp_path / "plan.toml", body)
    before = corral_state(repo)
    head = git(repo, "rev-parse", "HEAD")
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert str(plan) in res.stderr or "base" in res.stderr or "worktree_root" in res.stderr
    assert corral_state(repo) == before == {"branches": [], "worktrees": [], "runs": []}
    assert git(repo, "rev-parse", "HEAD") == head
    assert not (repo / ".git" / "corral" / "runs").exists()


def test_bad_plan_message_names_the_line(repo, tmp_path):
    plan = write_plan(tmp_path / "plan.toml",
                      'agent = "shell"\n\n[[tasks]]\nname = "a"\nprompt = "x"\n\n[[tasks]]\nname = "a"\nprompt = "y"\n')
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 2 and "(line 8)" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["run", "--headless"], "run needs a plan file"),
    (["run", "--headless", "--task", "noequals"], "expected NAME=PROMPT"),
    (["run", "--headless", "--task", "a=x", "--task", "a=y", "--agent", "shell"], "duplicate task name"),
    (["run", "--headless", "--task=-x=y", "--agent", "shell"], "must not start with '-'"),
    (["run", "--headless", "--task", "a=x", "--agent", "nope"], "unknown agent 'nope'"),
    (["run", "--headless", "--task", "a=x", "--agent", "shell", "--base", "nope"], "no such revision"),
    (["run", "--headless", "--task", "a=x", "--agent", "shell", "--max-parallel", "-1"], "must be >= 0"),
    (["run", "--json", "--task", "a=x"], "--json needs --headless"),
    (["run", "missing.toml", "--headless"], "missing.toml: no such plan file"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_usage_exits_2(repo, args, message):
    res = corral(*args, cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}


def test_not_a_repository_exits_2(tmp_path):
    res = corral("run", "--headless", "--agent", "shell", "--task", "a=echo", cwd=tmp_path)
    assert res.returncode == 2 and "not a git or jj repository" in res.stderr


def test_a_base_that_does_not_exist_gets_a_suggestion(repo, tmp_path):
    res = corral("run", "--headless", "--agent", "shell", "--task", "a=echo", "--base", "mian", cwd=repo)
    assert res.returncode == 2 and "base 'mian': no such revision" in res.stderr
    assert "(did you mean 'main'?)" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_mid_rebase_repo_is_refused(repo, tmp_path):
    (Path(git(repo, "rev-parse", "--git-dir")) if Path(git(repo, "rev-parse", "--git-dir")).is_absolute()
     else repo / ".git").joinpath("rebase-merge").mkdir()
    res = corral("run", "--headless", "--agent", "shell", "--task", "a=echo", cwd=repo)
    assert res.returncode == 2 and "in the middle of a rebase" in res.stderr
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}


def test_adhoc_tasks_and_runs_listing(repo, tmp_path):
    res = corral("run", "--headless", "--agent", "shell", "--approve", "all",
                 "--task", "hello=echo 'it''s $(not expanded)' > hello.txt", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (repo / "hello.txt").exists()
    runs = corral("runs", cwd=repo)
    assert runs.returncode == 0
    lines = runs.stdout.splitlines()
    assert lines[0].split() == ["run", "started", "state", "ok", "failed", "landed"]
    assert lines[1].split()[3:] == ["completed", "1", "0", "yes"]


def test_demo_headless_shows_every_step():
    res = corral("demo", "--headless", "--delay", "0", "--keep")
    assert res.returncode == 1, res.stdout + res.stderr  # one agent fails, one conflicts: by design
    out = res.stdout
    for expected in ["upgrade-build: failed (exit code 3)", "would conflict with greet-fr",
                     "greet-fr: CONFLICT merging", "verify passed", "landed: main moved"]:
        assert expected in out
    repo = Path(out.splitlines()[0].split("scratch repository ")[1])
    assert (repo / "calc" / "mul.py").exists() and (repo / "docs" / "guide.md").exists()
    assert corral_state(repo)["worktrees"] == []
    shutil.rmtree(repo)  # the scratch repository is the user's to look at: the test removes it


def test_keep_worktrees_leaves_them_for_the_user_and_clean_removes_them_later(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt")], "--approve", "none", "--keep-worktrees")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "--keep-worktrees: workspaces left in place" in res.stdout
    [path] = corral_state(repo)["worktrees"]
    assert Path(path, "one.txt").read_text() == "1\n"
    res = corral("clean", cwd=repo)
    assert "removed workspace" in res.stdout and corral_state(repo)["worktrees"] == []
    assert [b.rsplit("/", 1)[1] for b in corral_state(repo)["branches"]] == ["one"]


def test_repo_option_before_or_after_the_command(repo, tmp_path):
    res = corral("run", "--headless", "--agent", "shell", "--approve", "all", "--task", "a=echo 1 > a.txt",
                 "--repo", str(repo), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for args in (["--repo", str(repo), "runs"], ["runs", "--repo", str(repo)]):
        out = corral(*args, cwd=tmp_path)
        assert out.returncode == 0 and "completed" in out.stdout, out.stderr
