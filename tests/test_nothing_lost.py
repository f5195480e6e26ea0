"""Nothing lost, for real (git): corral touches only what it made, keeps every commit an agent made,
and recovers from kills at any step. Each test reproduces a way work was lost before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, make_repo, write_plan
from test_engine_git import plan_text, run_plan
from test_faults import start_run, wait_for


def run_dirs(repo: Path) -> list[Path]:
    d = repo / ".git" / "corral" / "runs"
    return sorted(d.iterdir()) if d.is_dir() else []


def killed_run(repo: Path, tmp_path: Path, wt_root: Path, tasks: list[tuple[str, str]], started: int) -> None:
    """A run whose corral is SIGKILLed once ``started`` agents printed "started"; waits until the
    watchdog has stopped its agents (their pids, written to ``tmp_path/pids``)."""
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    tasks = [(n, f"echo $$ > {pids}/{n}.pid; {s}") for n, s in tasks]
    plan = write_plan(tmp_path / "killed.toml", plan_text(wt_root, tasks))
    proc = start_run(repo, plan, "--approve", "all")
    wait_for(proc, "started", started)
    proc.kill()
    proc.wait(timeout=10)
    wait_dead([int(p.read_text()) for p in pids.glob("*.pid")])


def wait_dead(pids: list[int], timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":  # a zombie does nothing any more
                        alive.append(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes still alive: {alive}")


def files_at(repo: Path, rev: str) -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", rev).splitlines()


# ----------------------------------------------------------------------- corral touches only what it made
@pytest.mark.parametrize("how", ["checkout -b", "kept branch"])
def test_clean_never_touches_the_users_checkout_on_a_corral_branch(repo, tmp_path, wt_root, how):
    if how == "checkout -b":
        git(repo, "checkout", "-q", "-b", "corral/x")
    else:
        # a failed run's kept branch, checked out as its report invites
        res = run_plan(repo, tmp_path, wt_root, [("bad", "echo half > half.txt; exit 3")], "--approve", "all")
        assert res.returncode == 1
        [kept] = corral_state(repo)["branches"]
        git(repo, "checkout", "-q", kept)
    # and a linked worktree of the user's own on a corral/* branch, locked like corral's
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "--lock", "--reason", "corral run=20200101-000000-beef pid=1",
        "-b", "corral/20200101-000000-beef/y", str(mine), "main")
    (mine / "precious.txt").write_text("mine\n")
    (repo / "wip.txt").write_text("uncommitted\n")
    for args in (["clean", "--dry-run"], ["clean"]):
        res = corral(*args, cwd=repo)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "nothing to clean" in res.stdout, res.stdout
    assert (repo / ".git").is_dir() and (repo / "README.md").exists() and (repo / "wip.txt").exists()
    assert (mine / "precious.txt").read_text() == "mine\n"
    assert str(mine) in git(repo, "worktree", "list")
    git(repo, "worktree", "remove", "--force", "--force", str(mine))  # the test's own, made above


def clean_as_the_dry_run_said(repo: Path) -> list[str]:
    """``corral clean --dry-run`` (which changes nothing), then ``corral clean``: the dry run said
    exactly what clean did. Returns clean's lines but its ``note:`` ones, sorted."""
    before = corral_state(repo)
    dry = corral("clean", "--dry-run", cwd=repo)
    assert dry.returncode == 0, dry.stderr
    assert corral_state(repo) == before, "--dry-run changed something"
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stderr
    said = sorted(line.replace("would ", "", 1) for line in dry.stdout.splitlines())
    done = sorted(line for line in res.stdout.splitlines() if not line.startswith("note: "))
    verbs = {"stop": "stopped", "remove": "removed", "commit": "committed", "keep": "kept", "delete": "deleted"}
    said = sorted(verbs[line.split(" ", 1)[0]] + " " + line.split(" ", 1)[1] if line.split(" ", 1)[0] in verbs
                  else line for line in said)
    assert said == done, f"dry run:\n{dry.stdout}\nclean:\n{res.stdout}"
    return done


def test_dry_run_says_exactly_what_clean_then_does(repo, tmp_path, wt_root):
    killed_run(repo, tmp_path, wt_root, [
        ("wip", "echo unsaved > wip.txt; echo started; exec sleep 600"),
        ("idle", "echo started; exec sleep 600"),
    ], started=2)
    done = clean_as_the_dry_run_said(repo)
    assert any("committed 1 uncommitted file(s) of wip" in line for line in done)
    assert any(line.startswith("deleted branch") and line.endswith("(holds no work of its own)") for line in done)
    state = corral_state(repo)
    assert state["worktrees"] == [] and list(wt_root.iterdir()) == []
    [kept] = state["branches"]
    assert kept.endswith("/wip") and git(repo, "show", f"{kept}:wip.txt") == "unsaved"


def test_dry_run_names_the_other_line_of_work_clean_then_keeps(repo, tmp_path, wt_root):
    """An agent commits, detaches HEAD to an older commit, commits again and leaves a file: clean
    keeps the second line on the task's branch and the first on ``<branch>+1``; the dry run named
    the branch only."""
    killed_run(repo, tmp_path, wt_root, [
        ("two", "echo a > a.txt; git add a.txt; git commit -qm a; git checkout -q --detach HEAD~1; "
                "echo c > c.txt; git add c.txt; git commit -qm c; echo w > w.txt; echo started; exec sleep 600"),
    ], started=1)
    done = clean_as_the_dry_run_said(repo)
    [branch, other] = corral_state(repo)["branches"]
    assert other == f"{branch}+1" and f"kept branch {other} (holds work not merged)" in done, done
    assert {"c.txt", "w.txt"} <= set(files_at(repo, branch)) and "a.txt" in files_at(repo, other)


def test_a_task_named_integration_keeps_its_branch_when_it_fails(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [
        ("integration", "echo mine > mine.txt; exit 5"),
        ("other", "echo o > o.txt"),
    ], "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert (repo / "o.txt").exists()  # the other task landed
    state = corral_state(repo)
    [kept] = state["branches"]
    assert kept.endswith("/integration") and git(repo, "show", f"{kept}:mine.txt") == "mine"
    report = (run_dirs(repo)[0] / "report.md").read_text()
    assert f"`{kept}` (kept)" in report


def test_a_stale_index_lock_is_recovered_and_clean_reports_what_really_happened(repo, tmp_path, wt_root):
    killed_run(repo, tmp_path, wt_root, [("a", "echo unsaved > a.txt; echo started; exec sleep 600")], started=1)
    [ws] = list(wt_root.iterdir())
    admin = Path((ws / ".git").read_text().split(":", 1)[1].strip())
    (admin / "index.lock").write_text("")  # a git child killed with corral left its lock
    # while a process still works in the workspace the lock may be live: nothing is removed, and
    # clean says so (exit 1) instead of claiming it removed the workspace
    sleeper = subprocess.Popen(["sleep", "600"], cwd=ws, start_new_session=True)
    try:
        res = corral("clean", cwd=repo)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "could not clean" in res.stdout and "removed workspace" not in res.stdout
        assert ws.is_dir() and (ws / "a.txt").exists() and str(ws) in git(repo, "worktree", "list")
    finally:
        sleeper.kill()
        sleeper.wait()
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "removed workspace" in res.stdout
    assert not ws.exists() and corral_state(repo)["worktrees"] == []
    [kept] = corral_state(repo)["branches"]
    assert git(repo, "show", f"{kept}:a.txt") == "unsaved"


def test_a_stale_lock_of_the_tasks_branch_is_recovered_by_clean(repo, tmp_path, wt_root):
    """A git commit killed with corral after it locked the task's branch leaves
    ``refs/heads/<branch>.lock``; every later update of that branch failed, so clean could not save
    the uncommitted work. Once no process works in the workspace the lock is stale: clean removes it
    and commits the work onto the branch."""
    killed_run(repo, tmp_path, wt_root, [("a", "echo unsaved > a.txt; echo started; exec sleep 600")], started=1)
    [ws] = list(wt_root.iterdir())
    branch = git(ws, "symbolic-ref", "--short", "HEAD")
    lock = repo / ".git" / "refs" / "heads" / f"{branch}.lock"
    lock.write_text("")  # as the killed commit left it
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "removed workspace" in res.stdout and not lock.exists()
    [kept] = corral_state(repo)["branches"]
    assert git(repo, "show", f"{kept}:a.txt") == "unsaved"


def test_a_lock_of_the_tasks_branch_a_live_git_holds_is_not_removed_by_clean(repo, tmp_path, wt_root):
    """The lock of a task's branch can be held by a git working outside the workspace: one the user
    runs in the checkout (``git branch -f``, a ``git update-ref --stdin`` transaction), or another
    corral's (which updates a task's branch from the repository's top). clean leaves it while such a
    git lives, and that git's update of the branch goes through."""
    killed_run(repo, tmp_path, wt_root, [("a", "echo unsaved > a.txt; echo started; exec sleep 600")], started=1)
    [ws] = list(wt_root.iterdir())
    branch = git(ws, "symbolic-ref", "--short", "HEAD")
    lock = repo / ".git" / "refs" / "heads" / f"{branch}.lock"
    target = git(repo, "rev-parse", "main")
    user = subprocess.Popen(["git", "update-ref", "--stdin"], cwd=repo, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert user.stdin is not None and user.stdout is not None
        user.stdin.write(f"start\nupdate refs/heads/{branch} {target}\nprepare\n")
        user.stdin.flush()
        assert [user.stdout.readline(), user.stdout.readline()] == ["start: ok\n", "prepare: ok\n"]
        assert lock.exists()
        res = corral("clean", cwd=repo)
        assert lock.exists(), res.stdout + res.stderr
        out, _ = user.communicate("commit\n", timeout=30)
    finally:
        if user.poll() is None:
            user.kill()
            user.wait()
    assert user.returncode == 0, out
    assert git(repo, "rev-parse", branch) == target
    # the work is still in the workspace, and a clean once that git is gone saves it
    assert (ws / "a.txt").read_text() == "unsaved\n"
    res = corral("clean", cwd=repo)
    assert res.returncode == 0 and "removed workspace" in res.stdout, res.stdout + res.stderr
    [kept] = corral_state(repo)["branches"]
    assert git(repo, "show", f"{kept}:a.txt") == "unsaved"


def test_a_kill_during_the_checkout_leaves_nothing_that_clean_calls_work(repo, tmp_path, wt_root):
    """Killed during the checkout ``git worktree add`` makes (before it is over): the half-made
    workspace holds no work. Before, clean "salvaged" it as a commit deleting every file."""
    marker = tmp_path / "checking-out"
    slow = tmp_path / "slow-filter"
    slow.write_text(f"#!/bin/sh\necho $$ > {marker}.tmp; mv {marker}.tmp {marker}\nexec sleep 600\n")
    slow.chmod(0o755)
    (repo / ".gitattributes").write_text("*.slow filter=slow\n")
    (repo / "data.slow").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a file behind a slow checkout filter")
    git(repo, "config", "filter.slow.smudge", str(slow))
    git(repo, "config", "filter.slow.required", "true")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("a", "echo never runs")]))
    proc = start_run(repo, plan, "--approve", "all")
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the checkout never started"
    proc.kill()
    proc.wait(timeout=10)
    filter_pid = int(marker.read_text())
    os.killpg(os.getpgid(filter_pid), signal.SIGKILL)  # the checkout's git dies too, leaving its locks
    wait_dead([filter_pid])
    git(repo, "config", "--unset", "filter.slow.smudge")
    assert len(corral_state(repo)["worktrees"]) == 1
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "removed half-made workspace" in res.stdout and "committed" not in res.stdout
    state = corral_state(repo)
    assert state["worktrees"] == [] and state["branches"] == [] and list(wt_root.iterdir()) == []
    assert "nothing to clean" in corral("clean", cwd=repo).stdout


# --------------------------------------------------------------------- every commit an agent made is kept
def test_an_agent_that_commits_then_checks_out_an_older_commit_loses_nothing(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [(
        "a", "echo a > a.txt; git add a.txt; git commit -qm a; echo b > b.txt; git add b.txt; git commit -qm b; "
             "git checkout -q HEAD~1")], "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"a.txt", "b.txt"} <= set(files_at(repo, "main"))
    assert corral_state(repo)["branches"] == []


def test_an_agent_whose_lines_of_work_diverge_keeps_both(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [(
        "a", "echo a > a.txt; git add a.txt; git commit -qm a; git checkout -q --detach HEAD~1; "
             "echo c > c.txt; git add c.txt; git commit -qm c")], "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    # the line the workspace ended on landed; the other line is kept on a ref the report names
    assert "c.txt" in files_at(repo, "main") and "a.txt" not in files_at(repo, "main")
    [extra] = corral_state(repo)["branches"]
    assert extra.endswith("/a+1") and "a.txt" in files_at(repo, extra)
    assert extra in res.stdout
    assert f"kept on: `{extra}`" in (run_dirs(repo)[0] / "report.md").read_text()


def test_an_agent_that_deletes_its_workspace_after_committing_loses_nothing(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [(
        "a", "echo a > a.txt; git add a.txt; git commit -qm a; git checkout -q --detach; echo d > d.txt; "
             "git add d.txt; git commit -qm d; cd /; rm -rf \"$CORRAL_WORKSPACE\"")], "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"a.txt", "d.txt"} <= set(files_at(repo, "main")), res.stdout
    assert "no changes" not in res.stdout
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": corral_state(repo)["runs"]}


def test_clean_after_a_crash_with_a_detached_head_names_the_task_and_leaves_nothing_dangling(repo, tmp_path,
                                                                                           wt_root):
    killed_run(repo, tmp_path, wt_root, [
        ("det", "git checkout -q --detach; echo w > w.txt; echo started; exec sleep 600")], started=1)
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "task det)" in res.stdout
    [kept] = corral_state(repo)["branches"]
    assert kept.endswith("/det") and git(repo, "show", f"{kept}:w.txt") == "w"
    # the salvage commit is on the kept branch, not dangling
    assert git(repo, "fsck", "--no-reflogs", "--unreachable", "--no-progress") == ""


def test_clean_after_a_crash_says_what_it_commits_of_an_agent_that_deleted_its_git_file(repo, tmp_path, wt_root):
    # clean put the `.git` file back and committed the edits, but asked git what was uncommitted
    # before that, found nothing, and said neither (nor did --dry-run say it would)
    killed_run(repo, tmp_path, wt_root, [
        ("rmgit", "echo w > w.txt; echo more >> README.md; rm .git; echo started; exec sleep 600")], started=1)
    dry = corral("clean", "--dry-run", cwd=repo)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would commit 2 uncommitted file(s) of rmgit" in dry.stdout, dry.stdout
    [ws] = list(wt_root.iterdir())
    assert not (ws / ".git").exists()  # the dry run changed nothing
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "committed 2 uncommitted file(s) of rmgit" in res.stdout, res.stdout
    [kept] = corral_state(repo)["branches"]
    assert git(repo, "show", f"{kept}:w.txt") == "w" and git(repo, "show", f"{kept}:README.md").endswith("more")


# ----------------------------------------------------------------------------------- edits by hand
def test_edits_made_by_hand_after_the_agent_exited_are_merged(repo, tmp_path, wt_root):
    """The dashboard's `o` shell is there to fix up a task's work before approving it: those edits
    are committed onto the task's branch before the merge."""
    import anyio

    from corral.core.events import EventBus
    from corral.core.pipeline import execute, prepare
    from corral.core.plan import load_plan
    from corral.core.runtime import PolicyApprover

    class EditThenApprove(PolicyApprover):
        async def review(self, rt, candidates, forecast):
            ws = await rt.open_workspace(candidates[0].name)  # put away: re-opened, as `o` does
            (ws.path / "by-hand.txt").write_text("fixed by hand\n")
            return await super().review(rt, candidates, forecast)

    plan = load_plan(write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("a", "echo a > a.txt")])))

    async def main():
        prep = await prepare(plan, repo)
        return await execute(prep, EditThenApprove(True), EventBus(prep.run_id))

    out = anyio.run(main)
    assert out.exit_code == 0
    assert (repo / "by-hand.txt").read_text() == "fixed by hand\n"
    assert "by-hand.txt" in files_at(repo, "main")


# ------------------------------------------------------------------------------------------- reports
def test_a_stopped_task_reports_its_salvaged_work_and_empty_branches_are_not_kept(repo, tmp_path, wt_root):
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [
        ("busy", "echo one > one.txt; echo two > two.txt; echo started; exec sleep 600"),
        ("idle", "echo started; exec sleep 600"),
        ("empty-fail", "exit 4"),
    ]))
    proc = start_run(repo, plan, "--approve", "all")
    wait_for(proc, "started", 2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    [kept] = corral_state(repo)["branches"]
    assert kept.endswith("/busy")
    report = (run_dirs(repo)[0] / "report.md").read_text()
    assert "| busy | shell | aborted (run interrupted) |" in report and "| 2 | no |" in report, report
    assert "empty-fail" not in report.split("## Tasks")[0], "an empty branch listed as work not merged"
    summary = [line for line in out.splitlines() if line.startswith("busy ")]
    assert summary and " 2 " in summary[0] and kept in summary[0], out


# -------------------------------------------------------------------------------------- submodules
def test_edits_inside_a_submodule_are_never_reported_as_merged(tmp_path, wt_root):
    lib = make_repo(tmp_path / "lib", {"l.txt": "lib\n"})
    repo = make_repo(tmp_path / "repo")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    git(repo, "commit", "-qm", "add a submodule")
    res = run_plan(repo, tmp_path, wt_root, [("sub", "echo edit > lib/new.txt")], "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "has submodules (lib)" in res.stdout
    assert "sub: failed (changes corral could not commit (kept in the workspace): lib/ (inside a submodule))" \
        in res.stdout, res.stdout
    assert "merged" not in [line.split()[2] for line in res.stdout.splitlines() if line.startswith("sub ")]
    # the workspace holding the edit is kept, not deleted
    [ws] = list(wt_root.iterdir())
    assert (ws / "lib" / "new.txt").read_text() == "edit\n"
    git(repo, "worktree", "remove", "--force", "--force", str(ws))
    res = corral("clean", cwd=repo)  # removed by hand: clean forgets its record, keeps its branch
    assert res.returncode == 0 and f"removed workspace {ws}" in res.stdout, res.stdout + res.stderr


# ------------------------------------------------------------------ repositories an agent makes inside
INNER = "git -c user.name=x -c user.email=x@x commit -qm inner"


def nested_histories(repo: Path) -> dict[str, str]:
    """task/path -> the log of each repository kept from a workspace, in the run's folder."""
    runs = repo / ".git" / "corral" / "runs"
    return {"/".join(git_dir.relative_to(runs).parts[2:-1]): git(repo, "--git-dir", str(git_dir), "log", "--format=%s")
            for git_dir in sorted(runs.glob("*/repositories/**/.git"))}


def test_a_repository_an_agent_makes_in_its_workspace_lands_as_files_and_keeps_its_history(repo, tmp_path, wt_root):
    """An agent runs `git init` in a folder of its workspace (a scaffolding tool does). git add records
    such a folder as a gitlink to a commit that exists only inside the workspace, or refuses it when
    it has no commit: main got a gitlink to a commit that was deleted with the workspace, and the
    files and the commit were gone; a task with an uncommitted file there failed. Now its files are
    the task's, and its history is kept in the run's folder."""
    res = run_plan(repo, tmp_path, wt_root, [
        ("inner", f"mkdir sub && cd sub && git init -q && echo p > p.txt && git add -A && {INNER} && "
                  "echo u > u.txt && cd .. && echo top > top.txt"),
        ("fresh", "mkdir -p a/b && cd a/b && git init -q && echo x > x.txt && chmod +x x.txt && ln -s x.txt l"),
        ("gitlink", f"mkdir gl && cd gl && git init -q && echo g > g.txt && git add -A && {INNER} && cd .. && "
                    "git add gl && git commit -qm 'the agent commits a gitlink'"),
        # its one commit on a detached HEAD alone, no branch left (only HEAD's reflog names it)
        ("detached", f"mkdir d && cd d && git init -q -b tmp && echo d > d.txt && git add -A && {INNER} && "
                     "git checkout -q --detach && git update-ref -d refs/heads/tmp"),
    ], "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    tree = git(repo, "ls-tree", "-r", "main")
    assert " commit " not in tree, tree  # no gitlink landed
    assert {"sub/p.txt", "sub/u.txt", "top.txt", "a/b/x.txt", "a/b/l", "gl/g.txt"} <= set(files_at(repo, "main"))
    assert git(repo, "show", "main:sub/u.txt") == "u" and git(repo, "show", "main:a/b/l") == "x.txt"
    assert "100755 blob" in next(line for line in tree.splitlines() if line.endswith("a/b/x.txt"))
    assert "120000 blob" in next(line for line in tree.splitlines() if line.endswith("a/b/l"))
    assert "sub/ is a git repository of its own" in res.stdout, res.stdout
    # the commits made inside are kept (the one with none holds nothing its files do not)
    assert nested_histories(repo) == {"inner/sub": "inner", "gitlink/gl": "inner", "detached/d": "inner"}
    assert corral_state(repo)["worktrees"] == [] and list(wt_root.iterdir()) == []


def test_clean_after_a_crash_keeps_the_files_and_history_of_a_repository_an_agent_made(repo, tmp_path, wt_root):
    killed_run(repo, tmp_path, wt_root, [
        ("inner", f"mkdir sub && cd sub && git init -q && echo p > p.txt && git add -A && {INNER} && echo u > u.txt; "
                  "echo started; exec sleep 600")], started=1)
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    [kept] = corral_state(repo)["branches"]
    assert kept.endswith("/inner") and {"sub/p.txt", "sub/u.txt"} <= set(files_at(repo, kept)), res.stdout
    assert " commit " not in git(repo, "ls-tree", "-r", kept)
    assert "note: inner: the history of the git repository the agent made at sub/ is kept in" in res.stdout
    assert nested_histories(repo) == {"inner/sub": "inner"}
    assert list(wt_root.iterdir()) == []


# --------------------------------------------------------------------------------- workspaces on demand
def test_a_workspace_is_made_when_its_agent_is_about_to_start(repo, tmp_path, wt_root):
    res = run_plan(repo, tmp_path, wt_root, [
        (n, f"ls {wt_root} | wc -l > seen-{n}.txt") for n in ("one", "two", "three")
    ], "--approve", "all", max_parallel=1)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (repo / "seen-one.txt").read_text().strip() == "1"


def test_corral_never_commits_an_agents_leftovers_onto_a_branch_not_the_tasks(repo, tmp_path, wt_root):
    """An agent that points its HEAD at the user's branch without a checkout (git runs no hook for
    that) and leaves a file: corral's commit of it goes to the task, never onto main."""
    before = git(repo, "rev-parse", "main")
    res = run_plan(repo, tmp_path, wt_root, [
        ("a", "git symbolic-ref HEAD refs/heads/main; echo x > f.txt")], "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    assert git(repo, "rev-parse", "main") == before
    [kept] = corral_state(repo)["branches"]
    assert git(repo, "show", f"{kept}:f.txt") == "x"


@pytest.mark.parametrize("then", ["leaves", "commits"])
def test_a_task_whose_branch_file_is_deleted_under_it_lands_its_work(repo, tmp_path, wt_root, then):
    """The task's branch deleted outside git while the agent works on it (an ``rm`` of its ref file,
    which no hook sees; in the sandbox any agent of the run can): corral puts the branch back at the
    last commit the workspace registered before it commits what was left, and the guard refuses an
    agent's commit that would start the branch anew as a root commit (sharing no history with base).
    Every commit lands, on one line, and nothing is kept beside it."""
    finish = "echo b > b.txt" if then == "leaves" else \
        "echo b > b.txt; git add b.txt; git commit -qm b 2>&1; echo c > c.txt"
    roots = git(repo, "rev-list", "--max-parents=0", "main")
    res = run_plan(repo, tmp_path, wt_root, [(
        "a", "echo a > a.txt; git add a.txt; git commit -qm a; "
             "rm \"$(git rev-parse --git-common-dir)/refs/heads/$(git symbolic-ref --short HEAD)\"; " + finish)],
        "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    landed = set(files_at(repo, "main"))
    assert {"a.txt", "b.txt"} <= landed and (then == "leaves" or "c.txt" in landed), res.stdout
    assert git(repo, "rev-list", "--max-parents=0", "main") == roots  # one line: no new root commit
    assert corral_state(repo)["branches"] == []
    if then == "commits":
        assert "refused" in res.stdout, res.stdout


def test_an_empty_directory_left_by_a_kill_before_the_worktree_existed_is_removed(repo, tmp_path, wt_root):
    """Killed after its private directory was made, before ``git worktree add``: the directory is
    registered, so clean finds it (and nothing else of the user's in that folder)."""
    code = ("import sys; from pathlib import Path; from corral.core.vcs.registry import Registry; "
            "Registry(Path(sys.argv[1])).reserve(sys.argv[2], run='20260101-000000-dead', task='a', role='task', "
            "ref='corral/20260101-000000-dead/a', vcs='git', base_commit='')")
    subprocess.run([sys.executable, "-c", code, str(repo / ".git" / "corral"), str(wt_root)], check=True)
    (wt_root / "corral-mine-123").mkdir()  # the user's own, named like corral's: not registered
    [made] = [p for p in wt_root.iterdir() if p.name != "corral-mine-123"]
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"removed half-made workspace {made}" in res.stdout
    assert [p.name for p in wt_root.iterdir()] == ["corral-mine-123"]
    assert "nothing to clean" in corral("clean", cwd=repo).stdout


def test_amended_commits_are_not_kept_as_other_lines_of_work(repo, tmp_path, wt_root):
    """An amend replaces a commit; its successor carries its work: no `+N` branch per amend."""
    script = ("echo a > a.txt; git add a.txt; git commit -qm a; for i in 1 2 3; do echo $i >> a.txt; "
              "git commit -qa --amend -m a$i; done")
    res = run_plan(repo, tmp_path, wt_root, [("a", script)], "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    [kept] = corral_state(repo)["branches"]
    assert kept.endswith("/a") and git(repo, "show", f"{kept}:a.txt") == "a\n1\n2\n3"


def test_clean_never_acts_on_a_record_whose_branch_is_not_corrals(repo, tmp_path, wt_root):
    """A forged (or corrupted) record naming the user's branch: clean leaves it alone."""
    code = ("import sys, json; from pathlib import Path; from corral.core.vcs.registry import Registry; "
            "r = Registry(Path(sys.argv[1])); p, rec = r.reserve(sys.argv[2], run='20260101-000000-dead', task='a', "
            "role='task', ref='main', vcs='git', base_commit=''); r.update(rec, state='ready')")
    subprocess.run([sys.executable, "-c", code, str(repo / ".git" / "corral"), str(wt_root)], check=True)
    before = git(repo, "rev-parse", "main")
    res = corral("clean", cwd=repo)
    assert "left alone" in res.stdout and "not one of corral's" in res.stdout, res.stdout
    assert git(repo, "rev-parse", "main") == before
    for p in (repo / ".git" / "corral" / "workspaces").iterdir():  # the forgery goes, by hand
        p.unlink()
    for p in wt_root.iterdir():
        p.rmdir()


def test_clean_after_a_crash_never_commits_an_agents_own_state_files(repo, tmp_path, wt_root):
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [
        ("a", "echo state > .toolstate; echo work > work.txt; echo started; exec sleep 600")]).replace(
        'agent = "shell"', 'agent = "tool"') + '\n[agents.tool]\ncommand = ["sh", "-c", "{prompt}"]\n'
        'exclude = [".tool*"]\n')
    proc = start_run(repo, plan, "--approve", "all")
    wait_for(proc, "started", 1)
    proc.kill()
    proc.wait(timeout=10)
    res = corral("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    [kept] = corral_state(repo)["branches"]
    assert files_at(repo, kept) == sorted(files_at(repo, "main") + ["work.txt"])


def test_corral_runs_nothing_a_repository_an_agent_made_configures(repo, tmp_path, wt_root):
    """The agent configures its repository to run a command whenever git looks at it (an fsmonitor
    hook, a clean filter) and to have its work tree elsewhere: corral reads that repository's files,
    unsandboxed, so none of it may take effect (git status looked into a staged one with a git of
    its own, which ran both)."""
    ran = tmp_path / "ran"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {ran}\n")
    hook.chmod(0o755)
    res = run_plan(repo, tmp_path, wt_root, [
        ("cfg", f"mkdir sub && cd sub && git init -q && echo p > p.txt && git config core.fsmonitor {hook} && "
                f"git config core.worktree {tmp_path}"),
        # committed as a gitlink, with a change inside: git status looks into it with a git of its own
        ("staged", f"mkdir gl && cd gl && git init -q && echo g > g.txt && echo '* filter=x' > .gitattributes && "
                   f"git add -A && {INNER} && git config core.fsmonitor {hook} && "
                   f"git config filter.x.clean \"sh -c '{hook}; cat'\" && cd .. && git add gl && "
                   "git commit -qm 'the agent commits a gitlink' && echo changed > gl/g.txt && echo more > gl/more.txt")],
        "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not ran.exists(), "corral ran the agent's fsmonitor hook"
    landed = set(files_at(repo, "main"))
    assert {"sub/p.txt", "gl/g.txt", "gl/more.txt"} <= landed and git(repo, "show", "main:gl/g.txt") == "changed" and not any(f.startswith("sub/repo") for f in landed)
