"""The user's own state is never touched: agents in corral's workspaces cannot move refs other than
their own task's (git's reference-transaction hook, set for them only), and landing never replaces
the user's untracked or ignored files nor moves base under an operation the user has in progress.
All through the real command line, with shell-script agents on real repositories."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, write_plan
from test_engine_git import plan_text, run_plan


def wait_for(path: Path, timeout: float = 60) -> str:
    """A shell snippet that waits until ``path`` exists (at most ``timeout`` seconds)."""
    return (f'n=0; while [ ! -e "{path}" ] && [ $n -lt {int(timeout * 20)} ]; do sleep 0.05; n=$((n+1)); done; '
            f'[ -e "{path}" ] || {{ echo "gave up waiting for {path}" >&2; exit 9; }}')


def branch_of(repo: Path, task: str) -> str:
    [branch] = [b for b in corral_state(repo)["branches"] if b.endswith(f"/{task}")]
    return branch


def stash_state(repo: Path) -> tuple[str, str, str]:
    return (git(repo, "rev-parse", "-q", "--verify", "refs/stash", check=False), git(repo, "stash", "list"),
            (repo / ".git/logs/refs/stash").read_text() if (repo / ".git/logs/refs/stash").exists() else "")


# ----------------------------------------------------------------------------- agents and refs
def test_agent_stash_never_touches_the_users_stash(repo, tmp_path, wt_root):
    (repo / "README.md").write_text("# project\nthe user's unfinished edit\n")
    git(repo, "stash", "-q")
    before = stash_state(repo)
    assert "WIP on main" in before[1]
    # first with nothing to stash (so a 'pop' would take the user's entry), then with changes
    script = ("git stash; git stash pop; echo 'VALUE = 2' > src/app.py; git stash; git stash pop; "
              "git stash drop; git stash clear; git stash list > listed.txt; echo done")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "corral: refused 'git stash'" in res.stdout
    assert "corral: refused 'git stash pop'" in res.stdout
    assert stash_state(repo) == before  # same entry, same ref, same reflog
    # the agent's own change landed; the user's stashed edit did not
    assert git(repo, "show", "main:src/app.py") == "VALUE = 2"
    assert "unfinished" not in git(repo, "show", "main:README.md")
    assert git(repo, "show", "main:listed.txt").startswith("stash@{0}: WIP on main")  # reading is fine
    git(repo, "stash", "pop", "-q")
    assert "unfinished" in (repo / "README.md").read_text()


def test_agent_cannot_update_refs_stash_directly(repo, tmp_path, wt_root):
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    (repo / "README.md").write_text("stashed\n")
    git(repo, "stash", "-q")
    before = stash_state(repo)
    res = run_plan(repo, tmp_path, wt_root, [("one", "git update-ref refs/stash HEAD~1; git update-ref -d refs/stash; echo rc=$?")],
                   "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("corral: refused to update refs/stash") == 2, res.stdout
    assert stash_state(repo) == before


def test_agent_cannot_commit_onto_base(repo, tmp_path, wt_root):
    git(repo, "checkout", "-q", "-b", "user-wip")  # main is checked out nowhere: an agent could take it
    main = git(repo, "rev-parse", "main")
    script = ("git checkout main; echo hack > hack.txt; git add hack.txt; git commit -qm 'onto main'; "
              "git branch -f main HEAD; git update-ref refs/heads/main HEAD; git reset -q --hard HEAD; "
              "echo 1 > one.txt")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "none", "--base", "main")
    assert res.returncode == 0, res.stdout + res.stderr
    assert git(repo, "rev-parse", "main") == main
    assert git(repo, "reflog", "show", "--format=%H", "refs/heads/main").split() == [main]
    assert "corral: HEAD detached at main's commit" in res.stdout
    assert res.stdout.count("corral: refused to update refs/heads/main") == 2, res.stdout
    # what the agent did is its task's work, on its branch
    branch = branch_of(repo, "one")
    assert git(repo, "show", f"{branch}:hack.txt") == "hack"
    assert git(repo, "show", f"{branch}:one.txt") == "1"


def test_agent_cannot_move_other_branches_nor_delete_its_own(repo, tmp_path, wt_root):
    signal = tmp_path / "a-done"
    a = ("echo a > a.txt; git add a.txt; git commit -qm a; "
         "git update-ref refs/heads/corral/$CORRAL_RUN/b HEAD; git branch -f corral/$CORRAL_RUN/b HEAD; "
         "git update-ref -d refs/heads/corral/$CORRAL_RUN/a; git branch mine; git tag v9; git checkout -q -b side; "
         "git worktree add -q --detach ../elsewhere; "
         f"touch {signal}")
    b = f"{wait_for(signal)}; echo b > b.txt"
    before = git(repo, "for-each-ref")
    res = run_plan(repo, tmp_path, wt_root, [("a", a), ("b", b)], "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    run = branch_of(repo, "a").split("/")[1]
    assert f"corral: refused to update refs/heads/corral/{run}/b" in res.stdout
    for ref in ("refs/heads/mine", "refs/tags/v9", "refs/heads/side"):
        assert f"corral: refused to update {ref}" in res.stdout
    assert f"corral: refused to delete refs/heads/corral/{run}/a" in res.stdout
    assert "corral: refused to update HEAD: this is not the agent's own workspace" in res.stdout  # worktree add
    assert git(repo, "show", f"{branch_of(repo, 'a')}:a.txt") == "a"
    assert git(repo, "show", f"{branch_of(repo, 'b')}:b.txt") == "b"
    assert git(repo, "ls-tree", "--name-only", branch_of(repo, "b"), "a.txt") == ""
    after = [line for line in git(repo, "for-each-ref").splitlines() if "refs/heads/corral/" not in line]
    assert after == before.splitlines()
    assert corral_state(repo)["worktrees"] == [] and list(wt_root.iterdir()) == []


def test_agent_in_the_users_checkout_cannot_move_its_head(repo, tmp_path, wt_root):
    git(repo, "checkout", "-q", "--detach")
    head = git(repo, "rev-parse", "HEAD")
    script = f"echo 1 > one.txt; git -C {repo} commit -q --allow-empty -m 'in the user checkout'; echo rc=$?"
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "none", "--base", "main")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "corral: refused to update HEAD" in res.stdout and "rc=128" in res.stdout
    assert git(repo, "rev-parse", "HEAD") == head


def test_users_hooks_still_run_for_agents_commits(repo, tmp_path, wt_root):
    seen = tmp_path / "seen"
    hooks = repo / ".git" / "hooks"
    (hooks / "pre-commit").write_text(f'#!/bin/sh\necho "pre-commit $CORRAL_TASK $#" >> {seen}\n')
    (hooks / "commit-msg").write_text(f'#!/bin/sh\necho "commit-msg $(cat "$1")" >> {seen}\n')
    (hooks / "reference-transaction").write_text(
        f'#!/bin/sh\nwhile read -r old new ref; do echo "ref $1 $ref" >> {seen}; done\n')
    (hooks / "pre-push").write_text('#!/bin/sh\necho "pre-push refuses" >&2; exit 1\n')
    for h in hooks.iterdir():
        h.chmod(0o755)
    script = ("echo 1 > one.txt; git add one.txt; git commit -qm 'agent message'; "
              "git push -q . HEAD:refs/heads/pushed; echo push=$?")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = seen.read_text().splitlines()
    assert "pre-commit one 0" in lines and "commit-msg agent message" in lines
    run = branch_of(repo, "one").split("/")[1]
    assert f"ref prepared refs/heads/corral/{run}/one" in lines and f"ref committed refs/heads/corral/{run}/one" in lines
    assert "pre-push refuses" in res.stdout and "push=1" in res.stdout
    assert git(repo, "rev-parse", "-q", "--verify", "refs/heads/pushed", check=False) == ""


def test_users_relative_hooks_path_is_chained(repo, tmp_path, wt_root):
    (repo / ".githooks").mkdir()
    (repo / ".githooks" / "pre-commit").write_text('#!/bin/sh\necho "tracked pre-commit says no" >&2; exit 1\n')
    (repo / ".githooks" / "pre-commit").chmod(0o755)
    git(repo, "add", ".githooks")
    git(repo, "commit", "-q", "--no-verify", "-m", "hooks")
    git(repo, "config", "core.hooksPath", ".githooks")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt; git add one.txt; git commit -qm x; echo rc=$?")],
                   "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tracked pre-commit says no" in res.stdout and "rc=1" in res.stdout


def test_users_git_config_env_is_kept_and_gc_stays_off(repo, tmp_path, wt_root):
    env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.favourite", "GIT_CONFIG_VALUE_0": "blue"}
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [(
        "one", "git config user.favourite > fav.txt; git config gc.auto > gc.txt; git tag t1; echo tag=$?")]))
    res = corral("run", str(plan), "--headless", "--approve", "none", cwd=repo, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    branch = branch_of(repo, "one")
    assert git(repo, "show", f"{branch}:fav.txt") == "blue"
    assert git(repo, "show", f"{branch}:gc.txt") == "0"
    assert "tag=1" in res.stdout and git(repo, "tag") == ""


def test_program_agents_are_guarded_in_workspaces_only(repo, tmp_path):
    """An agent a program sends into one of the run's workspaces is guarded; one it deliberately
    starts in the user's checkout (a merger, say) is the program's choice and is not."""
    prog = tmp_path / "prog.py"
    prog.write_text(f"""
async def run(input, rt):
    ws = await rt.workspaces.create("w")
    try:
        await rt.run_agent({{"agent": "shell", "task": "git tag in-workspace; echo rc=$?", "cwd": str(ws.path)}})
        await rt.run_agent({{"agent": "shell", "task": "git tag in-checkout; echo rc=$?", "cwd": {str(repo)!r}}})
    finally:
        await rt.workspaces.remove(ws)
""")
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "corral: refused to update refs/tags/in-workspace" in res.stdout
    assert git(repo, "tag").split() == ["in-checkout"]


# ------------------------------------------------------------------------------------ landing
@pytest.mark.parametrize("case", ["ignored-file", "ignored-dir", "untracked-file"])
def test_landing_never_replaces_the_users_untracked_or_ignored_files(repo, tmp_path, wt_root, case):
    (repo / ".gitignore").write_text(".env\nbuild/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    mine, theirs = {
        "ignored-file": (".env", ".env"),
        "ignored-dir": ("build/cache.bin", "build"),
        "untracked-file": ("notes.txt", "notes.txt"),
    }[case]
    (repo / mine).parent.mkdir(exist_ok=True)
    (repo / mine).write_text("SECRET=mine\n")
    main = git(repo, "rev-parse", "main")
    script = f"echo agent > one.txt; echo 'SECRET=agent' > {theirs}; git add -f {theirs} one.txt"
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    named = mine.split("/")[0] + ("/" if case == "ignored-dir" else "")
    assert f"untracked or ignored file(s) of yours in {repo}: {named}" in res.stdout
    assert (repo / mine).read_text() == "SECRET=mine\n"
    assert git(repo, "rev-parse", "main") == main and not (repo / "one.txt").exists()
    integ = [b for b in corral_state(repo)["branches"] if b.endswith("/integration")]
    assert integ and git(repo, "show", f"{integ[0]}:one.txt") == "agent"


def test_base_moved_by_an_agent_outside_the_guard_is_named(repo, tmp_path, wt_root):
    git(repo, "branch", "release")
    script = ("echo 1 > one.txt; git add one.txt; git commit -qm 'agent work'; "
              "git -c core.hooksPath=/dev/null update-ref refs/heads/release HEAD")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all", "--base", "release")
    assert res.returncode == 1, res.stdout + res.stderr
    branch = branch_of(repo, "one")
    assert "not landed: release moved during the run" in res.stdout
    assert f"release now holds commits of {branch}" in res.stdout


def _start_run(repo: Path, plan: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("CORRAL_RUN", None)
    return subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "run", str(plan), "--headless", *args],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, env=env)


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("where", ["main-checkout", "linked-worktree"])
def test_no_landing_while_the_user_rebases_base(repo, tmp_path, wt_root, where):
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    user = repo
    if where == "linked-worktree":
        git(repo, "checkout", "-q", "-b", "dev")
        user = tmp_path / "userwt"
        git(repo, "worktree", "add", "-q", str(user), "main")
    started, go = tmp_path / "started", tmp_path / "go"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [
        ("one", f"echo 1 > one.txt; touch {started}; {wait_for(go)}")]))
    proc = _start_run(repo, plan, "--approve", "all", "--base", "main")
    try:
        _wait_file(started, proc)
        res = subprocess.run(["git", "rebase", "-q", "--exec", "false", "HEAD~1"], cwd=user, capture_output=True,
                             text=True)
        assert res.returncode != 0 and (Path(git(user, "rev-parse", "--absolute-git-dir")) / "rebase-merge").is_dir()
        go.touch()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    main = git(repo, "rev-parse", "refs/heads/main")
    assert proc.returncode == 1, out
    assert f"not landed: {user} is in the middle of a rebase of main" in out
    git(user, "rebase", "--abort")
    assert git(repo, "rev-parse", "refs/heads/main") == main
    assert not (user / "one.txt").exists()
    if where == "linked-worktree":
        git(repo, "worktree", "remove", str(user))


# --------------------------------------------------------------------------- base resolution
def test_branch_and_tag_with_the_same_name_land_on_the_branch(repo, tmp_path, wt_root):
    git(repo, "tag", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "main moves past the tag")
    tag = git(repo, "rev-parse", "refs/tags/main")
    for args in ((), ("--base", "main")):
        res = run_plan(repo, tmp_path, wt_root, [(f"t{len(args)}", f"echo {len(args)} > t{len(args)}.txt")],
                       "--approve", "all", *args)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "landed: main moved" in res.stdout
        assert (repo / f"t{len(args)}.txt").exists()
    assert git(repo, "rev-parse", "refs/tags/main") == tag
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("kind", ["tag", "sha"])
def test_tag_or_sha_base_keeps_the_result_without_a_wrong_hint(repo, tmp_path, wt_root, kind):
    git(repo, "tag", "v1")
    base = "v1" if kind == "tag" else git(repo, "rev-parse", "HEAD")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt")], "--approve", "all", "--base", base)
    assert res.returncode == 1, res.stdout + res.stderr
    [integ] = [b for b in corral_state(repo)["branches"] if b.endswith("/integration")]
    assert f"is not a branch, so there is nothing to move; the result is kept on branch {integ}" in res.stdout
    assert "git merge" not in res.stdout and "git checkout" not in res.stdout
    assert git(repo, "show", f"{integ}:one.txt") == "1"


def test_rewritten_base_gets_a_hint_that_works(repo, tmp_path, wt_root):
    """Base rewritten during the run (not only gained commits): nothing is merged into the result
    for it, nothing lands, and the hint says how to land by hand."""
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    script = (f"echo 1 > one.txt; git -C {repo} -c core.hooksPath=/dev/null commit -q --amend --allow-empty "
              "-m 'user rewrote it'")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    [integ] = [b for b in corral_state(repo)["branches"] if b.endswith("/integration")]
    assert "not landed: main moved during the run" in res.stdout and "rewritten" in res.stdout
    assert "merging it into" not in res.stdout
    assert "--ff-only" not in res.stdout
    hint = f"to land by hand: git checkout main && git merge {integ}"
    assert hint in res.stdout
    git(repo, "merge", "-q", "--no-edit", integ)  # the hint's command works
    assert (repo / "one.txt").read_text() == "1\n"


def test_branch_named_corral_is_refused_at_preflight(repo, tmp_path, wt_root):
    git(repo, "branch", "corral")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt")], "--approve", "all")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "a branch named 'corral'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}
    assert list(wt_root.iterdir()) == []


def test_the_guard_files_are_written_once_and_put_back_when_changed(repo, tmp_path, wt_root):
    """Every agent of a run gets the same hook files: a second agent's start leaves them as they are
    (rewriting some fifty files at each start cost more than the start), and does not read them
    again unless their stat changed; one that was changed since is written again, executable."""
    import anyio

    from corral.core.guard import agent_git_env
    from corral.core.vcs.git import GitBackend

    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def main() -> tuple[dict[Path, int], dict[Path, int]]:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        ws = await backend.create_workspace("20260101-000000-abcd", "t1", base, str(wt_root))
        try:
            await agent_git_env(backend, run_dir, str(ws.path), [ws], {"PATH": os.environ["PATH"]})
            first = {p: p.stat().st_ino for p in (run_dir / "guard").rglob("*") if p.is_file()}
            # an agent's own hooks that are the same as the other checkouts' are links to those
            own = run_dir / "guard" / "ws-t1" / "hooks"
            assert os.readlink(own / "pre-commit") == str(run_dir / "guard" / "others" / "hooks" / "pre-commit")
            assert not (own / "post-checkout").is_symlink() and not (own / "reference-transaction").is_symlink()
            await agent_git_env(backend, run_dir, str(ws.path), [ws], {"PATH": os.environ["PATH"]})
            second = {p: p.stat().st_ino for p in (run_dir / "guard").rglob("*") if p.is_file()}
            hook = run_dir / "guard" / "others" / "hooks" / "reference-transaction"
            text = hook.read_text()
            hook.write_text("#!/bin/sh\nexit 0\n")
            hook.chmod(0o644)
            await agent_git_env(backend, run_dir, str(ws.path), [ws], {"PATH": os.environ["PATH"]})
            assert hook.read_text() == text and os.access(hook, os.X_OK)
        finally:
            await backend.remove_workspace(ws, keep_ref=False)
            await backend.close()
        return first, second

    first, second = anyio.run(main)
    assert len(first) > 50 and second == first
