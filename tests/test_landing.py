"""Landing when base moved, later, and beside a dirty checkout, on real git and jj repositories
through the real command line: a result is merged onto base's new tip and verified again before it
lands; ``corral land RUN`` lands a kept result from a new process; uncommitted changes of the user's
are never touched and refuse landing only when the landing changes them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, has_jj, write_plan
from test_engine_git import plan_text
from test_merge_queue import events, run_dir_of


def commit_to(repo: Path, path: str, text: str, message: str = "user commit meanwhile") -> str:
    """Shell: the user's commit of ``path`` on the branch checked out in ``repo`` (past the guard
    that keeps agents off base)."""
    return (f"printf %s {shlex.quote(text)} > {repo}/{path} && git -C {repo} add {path} && "
            f"git -C {repo} -c core.hooksPath=/dev/null commit -q -m {shlex.quote(message)}")


def once(marker: Path, command: str) -> str:
    """Shell: ``command`` the first time only (``marker`` says it ran)."""
    return f"if [ ! -e {marker} ]; then touch {marker}; {command}; fi"


def landed_files(repo: Path, rev: str = "main") -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", rev).split())


def test_base_moved_during_verify_is_merged_in_verified_again_and_lands(repo, tmp_path, wt_root):
    """verify moves base the first time it runs: the result is merged with base's new tip, verify
    runs again (in the verify pane) and passes, and the merge lands by compare-and-swap."""
    verify = once(tmp_path / "moved", commit_to(repo, "other.txt", "other\n")) + "; test -f one.txt"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt")], verify=verify))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"one.txt", "other.txt"} <= landed_files(repo)
    assert (repo / "one.txt").read_text() == "1\n" and git(repo, "status", "--porcelain") == ""
    assert "user commit meanwhile" in git(repo, "log", "--format=%s", "main")
    runs = events(repo, "verify")
    assert [r["ok"] for r in runs] == [True, True]
    assert "[verify] verify again (1), main merged in" in res.stdout
    [land] = events(repo, "land")
    assert land["ok"] and land["new"] == git(repo, "rev-parse", "main")
    state = corral_state(repo)
    assert state["branches"] == [] and state["worktrees"] == []


def test_base_moving_again_and_again_is_merged_each_time_then_refused(repo, tmp_path, wt_root):
    """Base moves at every verify run: merged in and verified again three times, then refused with
    the result kept and a hint that works."""
    count = tmp_path / "count"
    verify = (f"echo x >> {count}; wc -l < {count} > {repo}/other.txt && git -C {repo} add other.txt && "
              f"git -C {repo} -c core.hooksPath=/dev/null commit -q -m moved")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt")], verify=verify))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    assert len(events(repo, "verify")) == 4  # the first, then one per merge of base's new tip
    [land] = events(repo, "land")
    assert not land["ok"] and "main moved during the run" in land["message"]
    [integ] = [b for b in corral_state(repo)["branches"] if b.endswith("/integration")]
    assert land["kept"] == integ
    hint = land["message"].split("to land by hand: ")[1].split(", then")[0]
    subprocess.run(hint, shell=True, cwd=repo, check=True, capture_output=True)  # the hint works
    assert {"one.txt", "other.txt"} <= landed_files(repo)


def test_a_conflicting_merge_of_the_moved_base_is_refused_with_a_hint_that_works(repo, tmp_path, wt_root):
    verify = once(tmp_path / "moved", commit_to(repo, "src/app.py", "VALUE = 'user'\n"))
    tasks = [("one", "echo 'VALUE = 2' > src/app.py; echo 1 > one.txt")]
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, tasks, verify=verify))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    [integ] = [b for b in corral_state(repo)["branches"] if b.endswith("/integration")]
    [land] = events(repo, "land")
    assert not land["ok"] and land["kept"] == integ
    assert "main moved during the run, and merging it into the result conflicts in src/app.py" in land["message"]
    assert f"not landed: {land['message']}" in res.stdout
    assert f"- landed: no ({land['message']})" in (run_dir_of(repo) / "report.md").read_text()
    assert len(events(repo, "verify")) == 1  # nothing was verified that cannot land
    assert (repo / "src/app.py").read_text() == "VALUE = 'user'\n" and not (repo / "one.txt").exists()
    # the hint: the merge made by hand, its conflict resolved and committed
    hint = land["message"].split("to land by hand: ")[1].split(", resolve")[0]
    assert hint == f"git -C {shlex.quote(str(repo))} merge {integ}"
    made = subprocess.run(hint, shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 1 and "CONFLICT" in made.stdout, made.stdout + made.stderr
    (repo / "src/app.py").write_text("VALUE = 'both'\n")
    git(repo, "commit", "-q", "-am", "resolved")
    assert (repo / "one.txt").read_text() == "1\n" and git(repo, "show", "main:src/app.py") == "VALUE = 'both'"


# --------------------------------------------------------------------------------- corral land RUN
def kept_run(repo: Path, tmp_path: Path, wt_root: Path) -> tuple[str, str]:
    """A run whose verify failed (its result kept on its integration branch): (run id, branch)."""
    verify = f"test -e {tmp_path / 'fixed'} && test -f one.txt"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt")], verify=verify))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    [integ] = [b for b in corral_state(repo)["branches"] if b.endswith("/integration")]
    return integ.split("/")[1], integ


@pytest.mark.parametrize("where", ["main", "elsewhere", "integration"])
def test_corral_land_lands_a_kept_result_later_onto_the_base_of_today(repo, tmp_path, wt_root, where):
    """The next day, base moved: ``corral land`` merges the kept result onto it, verifies it again and
    lands it, whether the user's checkout is on base (fast-forwarded), on a branch of their own
    (left alone: base moves by compare-and-swap), or on the kept branch, where they committed a fix
    by hand (it lands with the rest, and the branch stays: it is checked out)."""
    run, integ = kept_run(repo, tmp_path, wt_root)
    subprocess.run(commit_to(repo, "other.txt", "other\n", "the next day"), shell=True, check=True)
    if where == "elsewhere":
        git(repo, "checkout", "-q", "-b", "elsewhere")
        (repo / "README.md").write_text("mine, uncommitted\n")
    elif where == "integration":
        git(repo, "checkout", "-q", integ)
        subprocess.run(commit_to(repo, "fix.txt", "by hand\n", "a fix by hand"), shell=True, check=True)
    (tmp_path / "fixed").touch()
    res = corral("land", run, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"one.txt", "other.txt"} <= landed_files(repo)
    if where == "main":
        assert (repo / "one.txt").read_text() == "1\n" and git(repo, "status", "--porcelain") == ""
    elif where == "elsewhere":
        assert git(repo, "symbolic-ref", "--short", "HEAD") == "elsewhere" and not (repo / "one.txt").exists()
        assert git(repo, "status", "--porcelain") == "M README.md"
        git(repo, "checkout", "-q", "--", "README.md")
    else:
        assert "fix.txt" in landed_files(repo) and git(repo, "symbolic-ref", "--short", "HEAD") == integ
        assert corral_state(repo)["branches"] == [integ]
        git(repo, "checkout", "-q", "main")
        git(repo, "branch", "-q", "-D", integ)
    data = json.loads((run_dir_of(repo) / "run.json").read_text())
    assert data["landed"] is True and data["tasks"]["one"]["status"] == "merged"
    kinds = [e["type"] for e in map(json.loads, (run_dir_of(repo) / "events.jsonl").read_text().splitlines())]
    assert kinds.count("verify") == 2 and kinds[-1] == "land"  # verified again, then landed
    assert f"corral: landed run {run} onto main" in res.stdout
    state = corral_state(repo)
    assert state["branches"] == [] and state["worktrees"] == [] and list(wt_root.iterdir()) == []
    # landed: nothing left to land
    res = corral("land", run, cwd=repo)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stdout + res.stderr
    assert f"run {run}: nothing to land (it landed)" in res.stderr


def test_corral_land_killed_midway_loses_nothing_and_runs_again(repo, tmp_path, wt_root):
    """kill -9 of ``corral land`` while it verifies: the kept branch is as it was, ``corral clean``
    removes the workspace it made, and ``corral land`` lands the result after all."""
    started, once = tmp_path / "started", tmp_path / "once"
    verify = (f"test -e {tmp_path / 'fixed'} && test -f one.txt && if [ ! -e {once} ]; then touch {once} {started}; "
              f"while [ ! -e {tmp_path / 'never'} ]; do sleep 0.05; done; fi")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt")], verify=verify))
    assert corral("run", str(plan), "--headless", "--approve", "all", cwd=repo).returncode == 1
    [integ] = [b for b in corral_state(repo)["branches"] if b.endswith("/integration")]
    run, kept = integ.split("/")[1], git(repo, "rev-parse", integ)
    (tmp_path / "fixed").touch()
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_RUN"}
    proc = subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "land", run], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "verify never started"
    proc.kill()
    proc.wait(timeout=10)
    assert git(repo, "rev-parse", integ) == kept and "one.txt" not in landed_files(repo)
    res = corral("clean", cwd=repo)
    assert res.returncode == 0 and "removed workspace" in res.stdout, res.stdout + res.stderr
    res = corral("land", run, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "one.txt" in landed_files(repo)
    # the merge the killed one was making went too: nothing of the run is left
    assert f"deleted corral/{run}-m2/integration: the merge of an earlier corral land" in res.stdout
    state = corral_state(repo)
    assert state["branches"] == [] and state["worktrees"] == [] and list(wt_root.iterdir()) == []


def test_corral_land_of_a_result_that_conflicts_with_base_now_gives_a_hint_that_works(repo, tmp_path, wt_root):
    run, integ = kept_run(repo, tmp_path, wt_root)
    kept = git(repo, "rev-parse", integ)
    subprocess.run(commit_to(repo, "one.txt", "mine\n", "the next day"), shell=True, check=True)
    (tmp_path / "fixed").touch()
    res = corral("land", run, cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"not landed: merging {integ} onto main conflicts in one.txt; to land by hand: " in res.stdout
    assert git(repo, "rev-parse", integ) == kept and git(repo, "show", "main:one.txt") == "mine"
    state = corral_state(repo)
    assert sorted(state["branches"]) == sorted([integ, f"corral/{run}/one"]) and state["worktrees"] == []
    hint = res.stdout.split("to land by hand: ")[1].split(", resolve")[0]
    made = subprocess.run(hint, shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 1 and "CONFLICT" in made.stdout, made.stdout + made.stderr
    (repo / "one.txt").write_text("both\n")
    git(repo, "commit", "-q", "-am", "resolved")
    assert git(repo, "show", "main:one.txt") == "both"


def test_corral_land_when_verify_still_fails_keeps_the_branch(repo, tmp_path, wt_root):
    run, integ = kept_run(repo, tmp_path, wt_root)
    before = git(repo, "rev-parse", integ)
    res = corral("land", run, "--json", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["ok"] for e in out if e["type"] == "verify"] == [False]
    assert git(repo, "rev-parse", integ) == before and "one.txt" not in landed_files(repo)
    assert corral_state(repo)["worktrees"] == [] and list(wt_root.iterdir()) == []


@pytest.mark.parametrize("case", ["unknown", "cleaned", "nothing"])
def test_corral_land_refuses_a_run_with_nothing_to_land(repo, tmp_path, wt_root, case):
    if case == "nothing":
        plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt")]))
        assert corral("run", str(plan), "--headless", "--approve", "none", cwd=repo).returncode == 0
        run = corral_state(repo)["runs"][0]
        why = f"run {run}: nothing to land (no result of it is kept"
    elif case == "cleaned":
        run, integ = kept_run(repo, tmp_path, wt_root)
        git(repo, "branch", "-D", integ)
        why = f"run {run}: its result's branch {integ} no longer exists"
    else:
        run, why = "20200101-000000-dead", "no run 20200101-000000-dead in"
    before = (git(repo, "rev-parse", "main"), corral_state(repo))
    res = corral("land", run, cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    assert why in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert (git(repo, "rev-parse", "main"), corral_state(repo)) == before


# ------------------------------------------------------------------------------ a dirty checkout
def test_a_dirty_checkout_of_base_refuses_only_a_landing_that_changes_its_files(repo, tmp_path, wt_root):
    (repo / ".gitignore").write_text("secret.env\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    mine = {"src/app.py": b"VALUE = 'mine'\r\n\x00", "notes.txt": b"untracked of mine\n",
            "secret.env": b"SECRET=mine\n"}
    for path, data in mine.items():
        (repo / path).write_bytes(data)
    git(repo, "add", "notes.txt")  # staged, new
    (repo / "notes.txt").write_bytes(b"untracked of mine, changed since\n")
    mine["notes.txt"] = b"untracked of mine, changed since\n"
    (repo / "loose.txt").write_bytes(b"loose\n")
    mine["loose.txt"] = b"loose\n"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt")]))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr  # landed beside them
    assert (repo / "one.txt").read_text() == "1\n" and "one.txt" in landed_files(repo)
    assert all((repo / p).read_bytes() == data for p, data in mine.items())
    # a landing that changes a file of theirs is refused, naming it; nothing of theirs moves
    main = git(repo, "rev-parse", "main")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("two", "echo 'VALUE = 2' > src/app.py")]))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"main is checked out at {repo} with uncommitted changes to file(s) the landing changes: " \
           "src/app.py; corral will not touch them" in res.stdout
    assert git(repo, "rev-parse", "main") == main
    assert all((repo / p).read_bytes() == data for p, data in mine.items())


# ---------------------------------------------------------------------------------------------- jj
jj_only = [pytest.mark.jj, pytest.mark.skipif(not has_jj(), reason="jj is not installed")]


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_jj_a_stale_default_base_is_caught_at_preflight(jj_repo, tmp_path):
    from test_jj import plan as jj_plan, run as jj_run, state

    res = jj_run(jj_repo, jj_plan(tmp_path, {"one": "echo 1 > one.txt"}), "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr  # landed on main; the user's @ did not move
    before = state(jj_repo)
    marker = tmp_path / "ran"
    res = jj_run(jj_repo, jj_plan(tmp_path, {"two": f"touch {marker}"}), "--approve", "all")
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "jj new main" in res.stderr, res.stderr
    assert not marker.exists() and state(jj_repo) == before


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_jj_base_moved_during_verify_is_merged_in_and_lands(jj_repo, tmp_path):
    from test_jj import file_at, plan as jj_plan, run as jj_run, state

    r = str(jj_repo)
    move = (f"jj --ignore-working-copy -R {r} new --no-edit main -m moved >/dev/null 2>&1 && "
            f"jj --ignore-working-copy -R {r} bookmark set main "
            "-r 'children(main) & description(substring:\"moved\")' >/dev/null 2>&1")
    verify = once(tmp_path / "moved", move) + "; test -f one.txt"
    res = jj_run(jj_repo, jj_plan(tmp_path, {"one": "echo 1 > one.txt"}, base="main", verify=verify),
                 "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert file_at(jj_repo, "main", "one.txt") == "1\n"
    from test_jj import jj

    assert "moved" in jj(jj_repo, "log", "-r", "::main", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
    assert state(jj_repo)["bookmarks"] == [] and state(jj_repo)["workspaces"] == []


def jj_mover(repo: Path, path: str, text: str) -> str:
    """Shell: the user's commit on ``main`` of a jj repository, writing ``path``, and main moved to it."""
    r = str(repo)
    return (f"jj --ignore-working-copy -R {r} new --no-edit main -m moved >/dev/null 2>&1 && "
            f"jj -R {r} --ignore-working-copy bookmark set main -r 'children(main) & description(substring:\"moved\")' "
            f">/dev/null 2>&1 && w=$(mktemp -d) && jj -R {r} workspace add --name mover -r main \"$w\" >/dev/null 2>&1 "
            f"&& printf %s {shlex.quote(text)} > \"$w/{path}\" && jj -R \"$w\" squash -m moved >/dev/null 2>&1; "
            f"jj -R {r} --ignore-working-copy workspace forget mover >/dev/null 2>&1; rm -rf \"$w\"")


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_jj_a_conflicting_merge_of_the_moved_base_is_refused_with_a_hint_that_works(jj_repo, tmp_path):
    from test_jj import file_at, jj, plan as jj_plan, run as jj_run, state

    verify = once(tmp_path / "moved", jj_mover(jj_repo, "src/app.py", "user\n"))
    res = jj_run(jj_repo, jj_plan(tmp_path, {"one": "echo one > src/app.py"}, base="main", verify=verify),
                 "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert file_at(jj_repo, "main", "src/app.py") == "user\n"
    [integ] = [b for b in state(jj_repo)["bookmarks"] if b.endswith("/integration")]
    assert "merging it into the result conflicts in src/app.py" in res.stdout
    hint = f"to land by hand: jj new main {integ}, resolve the conflicts in src/app.py, then jj bookmark set main -r @"
    assert hint in res.stdout
    jj(jj_repo, "new", "main", integ, wc=True)
    (jj_repo / "src/app.py").write_text("both\n")
    jj(jj_repo, "bookmark", "set", "main", "-r", "@", wc=True)
    assert file_at(jj_repo, "main", "src/app.py") == "both\n"


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_jj_corral_land_lands_a_kept_result_later(jj_repo, tmp_path):
    from test_jj import file_at, plan as jj_plan, run as jj_run, state

    verify = f"test -e {tmp_path / 'fixed'} && test -f one.txt"
    res = jj_run(jj_repo, jj_plan(tmp_path, {"one": "echo 1 > one.txt"}, base="main", verify=verify),
                 "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    run = state(jj_repo)["runs"][0]
    subprocess.run(jj_mover(jj_repo, "other.txt", "other\n"), shell=True, check=True)
    (tmp_path / "fixed").touch()
    res = corral("land", run, "--repo", str(jj_repo))
    assert res.returncode == 0, res.stdout + res.stderr
    assert file_at(jj_repo, "main", "one.txt") == "1\n" and file_at(jj_repo, "main", "other.txt") == "other\n"
    data = json.loads((jj_repo / ".jj" / "corral" / "runs" / run / "run.json").read_text())
    assert data["landed"] is True
    assert state(jj_repo)["bookmarks"] == [] and state(jj_repo)["workspaces"] == []
