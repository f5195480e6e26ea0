"""Red-team findings against the "nothing lost" guarantees (git): each test is a way a careless user,
a misbehaving agent or a kill at a bad moment lost work, touched the user's things, reported
something untrue or crashed. Those still open are marked xfail (strict) with the fix suggested."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, write_plan
from test_engine_git import plan_text, run_plan
from test_faults import start_run


def run_json(repo: Path) -> dict:
    [run_dir] = list((repo / ".git/corral/runs").iterdir())
    return json.loads((run_dir / "run.json").read_text())


def wait_until(cond, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------------ an agent's own workspace
def test_an_agent_that_deletes_its_git_file_keeps_its_uncommitted_work(repo, tmp_path, wt_root):
    # `rm .git` (an agent "cleaning up", or about to re-init): corral saw no worktree any more,
    # committed nothing, removed the directory with the edits in it and said "merged (no changes)"
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo precious > work.txt; echo more >> README.md; rm .git")],
                   "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert git(repo, "show", "main:work.txt") == "precious"
    assert git(repo, "show", "main:README.md").endswith("more")
    assert corral_state(repo)["worktrees"] == [] and list(wt_root.iterdir()) == []


def test_an_agent_that_reinitialises_its_workspace_keeps_it(repo, tmp_path, wt_root):
    # `rm .git; git init; git commit`: the directory is another repository now; corral committed into
    # it, gathered nothing of it, removed it with everything in it and exited 0
    script = ("echo kept > committed.txt; git add committed.txt; git commit -qm mine; "
              "echo edit >> README.md; rm .git; git init -q; git add -A; git commit -qm reinit; echo wip > wip.txt")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "one: failed" in res.stdout
    [left] = list(wt_root.iterdir())  # left in place, with everything in it
    assert (left / "wip.txt").read_text() == "wip\n" and (left / "README.md").read_text().endswith("edit\n")
    [branch] = corral_state(repo)["branches"]  # what it committed before is on its branch
    assert git(repo, "show", f"{branch}:committed.txt") == "kept"
    assert git(repo, "rev-parse", "main") == git(repo, "rev-list", "--max-parents=0", "main")
    # the user drops the agent's repository: clean puts corral's worktree back and keeps everything
    shutil.rmtree(left / ".git")
    res = corral("clean", cwd=repo)
    assert res.returncode == 0 and "removed workspace" in res.stdout, res.stdout + res.stderr
    assert git(repo, "show", f"{branch}:wip.txt") == "wip" and not left.exists()


def test_an_index_git_cannot_read_never_passes_for_no_changes(repo, tmp_path, wt_root):
    # `git status` failing (a full disk: it cannot write index.lock; an index an agent broke) was
    # taken for "nothing uncommitted": the workspace was removed with the agent's files, "merged
    # (no changes)", exit 0
    script = 'echo precious > work.txt; echo garbage > "$(git rev-parse --git-dir)/index"'
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "one: failed" in res.stdout and "cannot tell what" in res.stdout
    [left] = list(wt_root.iterdir())
    assert (left / "work.txt").read_text() == "precious\n"
    res = corral("clean", "--dry-run", cwd=repo)  # says, as clean does, that it cannot clean it
    assert res.returncode == 1 and f"could not clean {left}" in res.stdout, res.stdout + res.stderr
    (left / ".git").read_text()  # still corral's worktree: fix its index, and clean takes the work
    admin = Path((left / ".git").read_text().split(":", 1)[1].strip())
    (admin / "index").unlink()
    git(left, "reset", "-q")
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    [branch] = corral_state(repo)["branches"]
    assert git(repo, "show", f"{branch}:work.txt") == "precious"


# ------------------------------------------------------------------------------- the user's side
def test_git_dir_in_the_environment_never_touches_the_users_checkout(repo, tmp_path, wt_root):
    # GIT_DIR/GIT_WORK_TREE exported (a dotfiles setup, a git hook or alias starting corral): every
    # engine command in a workspace went to the user's checkout instead; the workspace's
    # `reset --hard` wiped the user's uncommitted edit and the agent's work was lost as "no changes"
    (repo / "README.md").write_text("# project\nthe user's unfinished edit\n")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 2 > two.txt")]))
    res = corral("run", str(plan), "--headless", "--approve", "none", cwd=repo,
                 env={"GIT_DIR": str(repo / ".git"), "GIT_WORK_TREE": str(repo)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert (repo / "README.md").read_text() == "# project\nthe user's unfinished edit\n"
    [branch] = corral_state(repo)["branches"]
    assert git(repo, "show", f"{branch}:two.txt") == "2"


def test_a_run_killed_after_landing_is_listed_as_landed(repo, tmp_path, wt_root):
    # base moved, the tasks said merged, but `landed` was written only at the very end: killed during
    # the cleanup, `corral runs` said "landed no" for a run whose work is on main
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt")], verify="true"))
    main = repo / ".git/refs/heads/main"
    before = main.read_text()
    proc = start_run(repo, plan, "--approve", "all")
    try:
        wait_until(lambda: main.read_text() != before, "main to move")
        # hold corral's repo lock: its cleanup waits for it, and is killed there
        fd = os.open(repo / ".git/corral/engine.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            wait_until(lambda: run_json(repo)["tasks"]["one"].get("status") == "merged", "the task to be merged")
            proc.kill()
            proc.wait(timeout=10)
        finally:
            os.close(fd)
    finally:
        proc.kill()
        proc.communicate()
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert run_json(repo)["landed"] is True
    [line] = corral("runs", cwd=repo).stdout.splitlines()[1:]
    assert line.split()[-1] == "yes", line


def test_a_file_name_that_is_not_utf8_does_not_crash_the_report(repo, tmp_path, wt_root):
    # git's output is decoded with surrogate escapes; report.md was written strictly: a traceback
    # after landing, run.json left "running", `corral runs` then said it never landed
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "printf x > \"$(printf 'bad\\377name.txt')\"")]))
    res = subprocess.run([sys.executable, "-m", "corral.tui.cli", "run", str(plan), "--headless", "--approve", "all"],
                         cwd=repo, capture_output=True, encoding="utf-8", errors="backslashreplace",
                         stdin=subprocess.DEVNULL, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert run_json(repo)["state"] == "completed"
    [run_dir] = list((repo / ".git/corral/runs").iterdir())
    assert "bad\\xffname.txt" in (run_dir / "report.md").read_text(encoding="utf-8")


def test_clean_leaves_a_workspace_a_process_works_in(repo, tmp_path, wt_root):
    # the README promises it ("a process still works in it ... left in place and named, exit code 1");
    # clean removed a --keep-worktrees workspace under the user's shell, and the ignored files in it
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt")], "--approve", "none", "--keep-worktrees")
    assert res.returncode == 0, res.stdout + res.stderr
    [ws] = list(wt_root.iterdir())
    (ws / "notes.txt").write_text("the user's\n")
    shell = subprocess.Popen(["sleep", "300"], cwd=ws)
    try:
        for args in (["clean", "--dry-run"], ["clean"]):
            res = corral(*args, cwd=repo)
            assert res.returncode == 1, res.stdout + res.stderr
            assert f"could not clean {ws}" in res.stdout and f"pid {shell.pid}" in res.stdout, res.stdout
            assert (ws / "notes.txt").exists()
    finally:
        shell.kill()
        shell.wait()
    res = corral("clean", cwd=repo)
    assert res.returncode == 0 and f"removed workspace {ws}" in res.stdout, res.stdout + res.stderr
    [branch] = corral_state(repo)["branches"]
    assert git(repo, "show", f"{branch}:notes.txt") == "the user's"


def test_detached_commits_survive_the_agent_removing_its_own_worktree(repo, tmp_path, wt_root):
    script = ("echo x > x.txt; git add x.txt; git commit -qm X; git checkout -q --detach; "
              "echo y > y.txt; git add y.txt; git commit -qm Y; W=$PWD; cd /; "
              "git -C \"$W\" worktree remove --force --force \"$W\"")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all")
    # Y is on main (merged) or on a kept branch, never only dangling
    assert "Y" in git(repo, "log", "--format=%s", "--branches").splitlines(), res.stdout


def test_a_rebase_left_in_conflict_is_not_landed(repo, tmp_path, wt_root):
    script = ("echo 'VALUE = 2' > src/app.py; git commit -qam one; git checkout -q HEAD~1; "
              "echo 'VALUE = 3' > src/app.py; git commit -qam two; git rebase corral/$CORRAL_RUN/one || true")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all")
    assert "<<<<<<<" not in git(repo, "show", "main:src/app.py")
    assert res.returncode == 1, res.stdout



# --------------------------------------------------------------------------------- still open
@pytest.mark.parametrize("how", ["/usr/bin/git stash pop", "git -c alias.s=stash s pop"])
def test_the_users_stash_never_lands_whatever_git_the_agent_calls(repo, tmp_path, wt_root, how):
    (repo / "secret.txt").write_text("the user's unfinished work\n")
    git(repo, "add", "secret.txt")
    git(repo, "stash", "-q")
    res = run_plan(repo, tmp_path, wt_root, [("one", how)], "--approve", "all")
    assert "WIP on main" in git(repo, "stash", "list")
    assert "secret.txt" not in git(repo, "ls-tree", "--name-only", "main"), res.stdout


#: in bubblewrap (sandbox = "bwrap") the user's checkout and the repository's config and reflogs are
#: read-only to agents; without it, the guard's hooks see none of these
WITHOUT_SANDBOX = "the guard refuses ref updates only, and with sandbox = \"none\" nothing else stops it"


def sandboxes():
    from test_sandbox import bwrap_problem

    problem = bwrap_problem()
    return [pytest.param("bwrap", marks=pytest.mark.skipif(bool(problem), reason=f"no sandbox here: {problem}")),
            pytest.param("none", marks=pytest.mark.xfail(strict=True, reason=WITHOUT_SANDBOX))]


# `git reset --hard` in the user's checkout rewrites its files before the hook refuses the ref
# update (and checkout/restore/clean update no ref at all)
@pytest.mark.parametrize("sandbox", sandboxes())
def test_an_agent_cannot_reset_the_users_checkout(repo, tmp_path, wt_root, sandbox):
    (repo / "README.md").write_text("# project\nthe user's unfinished edit\n")
    script = 'cd "$(dirname "$(git rev-parse --path-format=absolute --git-common-dir)")" && git reset -q --hard'
    run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all", sandbox=sandbox)
    assert (repo / "README.md").read_text() == "# project\nthe user's unfinished edit\n"


# `git config` and `git reflog expire` in a workspace write the repository's shared config and
# reflogs: no hook sees them
@pytest.mark.parametrize("sandbox", sandboxes())
def test_an_agent_cannot_change_the_repositorys_config_or_reflogs(repo, tmp_path, wt_root, sandbox):
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    config = (repo / ".git/config").read_text()
    reflog = git(repo, "reflog", "main")
    script = ("git config user.email agent@example.com; git config core.hooksPath /tmp/agent-hooks; "
              "git reflog expire --expire=now --all")
    run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all", sandbox=sandbox)
    assert (repo / ".git/config").read_text() == config
    assert git(repo, "reflog", "main").count("\n") >= reflog.count("\n")
