"""The plan pipeline on real jj repositories (colocated and not), through the real ``corral`` CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import corral, has_jj, jj_identity, write_plan

pytestmark = [pytest.mark.jj, pytest.mark.skipif(not has_jj(), reason="jj is not installed (run ../shared/tools/install-jj)")]

APP = "".join(f"line {i}\n" for i in range(1, 11))


@pytest.fixture(autouse=True)
def jj_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No machine config, a fixed identity: tests never depend on the user's jj setup."""
    jj_identity(tmp_path, monkeypatch)


def jj(repo: Path, *args: str, check: bool = True, wc: bool = False) -> str:
    argv = ["jj", "--no-pager", "--color", "never", *([] if wc else ["--ignore-working-copy"]), *args]
    res = subprocess.run(argv, cwd=repo, capture_output=True, text=True, start_new_session=True)
    if check and res.returncode != 0:
        raise AssertionError(f"jj {' '.join(args)} failed: {res.stderr}")
    return res.stdout


def make_jj_repo(path: Path, colocate: bool, files: dict[str, str] | None = None) -> Path:
    """A jj repository whose bookmark ``main`` holds ``files``; the default workspace sits on an
    empty change on top of it (the usual jj layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["jj", "git", "init", *([] if colocate else ["--no-colocate"]), str(path)], check=True,
                   capture_output=True)
    for rel, text in (files or {"README.md": "# project\n", "src/app.py": APP}).items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    jj(path, "describe", "-m", "initial", wc=True)
    jj(path, "new", wc=True)
    jj(path, "bookmark", "create", "main", "-r", "@-")
    return path


@pytest.fixture(params=["colocated", "plain"])
def jrepo(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return make_jj_repo(tmp_path / "repo", request.param == "colocated")


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return make_jj_repo(tmp_path / "repo", False)


@pytest.fixture
def colocated(tmp_path: Path) -> Path:
    return make_jj_repo(tmp_path / "repo", True)


def commit_of(repo: Path, rev: str) -> str:
    return jj(repo, "log", "-r", rev, "--no-graph", "-T", "commit_id").strip()


def parents_of(repo: Path, rev: str) -> list[str]:
    return jj(repo, "log", "-r", rev, "--no-graph", "-T", 'parents.map(|c| c.commit_id()).join(",")').strip().split(",")


def file_at(repo: Path, rev: str, path: str) -> str | None:
    res = subprocess.run(["jj", "--no-pager", "--ignore-working-copy", "file", "show", "-r", rev, path], cwd=repo,
                         capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def state(repo: Path) -> dict:
    """What a run can leave behind in a jj repo: corral bookmarks and workspaces, run folders."""
    marks = [l for l in jj(repo, "bookmark", "list", "-T", 'name ++ "\\n"', "glob:corral/*").splitlines() if l]
    wss = [l for l in jj(repo, "workspace", "list", "-T", 'name ++ "\\n"').splitlines() if l.startswith("corral-")]
    runs_dir = repo / ".jj" / "corral" / "runs"
    runs = sorted(p.name for p in runs_dir.iterdir()) if runs_dir.is_dir() else []
    return {"bookmarks": sorted(marks), "workspaces": wss, "runs": runs}


def no_trial_traces(repo: Path, op_log: bool = True, agents_use_jj: bool = False) -> None:
    """Neither the log nor the operation log shows a trial merge or a rolled-back integration step
    (an older jj, without detached operations, cannot keep them out of the operation log)."""
    subjects = jj(repo, "log", "-r", "all()", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
    assert "trial merge" not in subjects and "corral: anchor" not in subjects
    ops = jj(repo, "op", "log", "--no-graph", "-T", 'description ++ " " ++ tags ++ "\\n"')
    if op_log:
        assert "trial merge" not in ops
    if not agents_use_jj:  # corral's own operations never run concurrently (agents' may)
        assert "reconcile divergent operations" not in ops
    assert jj(repo, "log", "-r", "conflicts()", "--no-graph", "-T", 'commit_id ++ "\\n"').strip() == ""


def plan(tmp_path: Path, tasks: dict[str, str], **top: str) -> Path:
    lines = ['agent = "shell"', 'setup = "none"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for name, script in tasks.items():
        lines += ["[[tasks]]", f"name = {json.dumps(name)}", f"prompt = {json.dumps(script)}"]
    return write_plan(tmp_path / "plan.toml", "\n".join(lines) + "\n")


EDIT_TOP = "sed -i 's/^line 2$/line two/' src/app.py"
EDIT_BOTTOM = "sed -i 's/^line 9$/line nine/' src/app.py"


def run(repo: Path, plan_path: Path, *extra: str, wt_root: Path | None = None) -> subprocess.CompletedProcess:
    args = ["run", str(plan_path), "--repo", str(repo), "--headless", *extra]
    return corral(*args, env={"TMPDIR": str(wt_root)} if wt_root else None)


def killed_run(repo: Path, plan_path: Path, wt_root: Path, until: Callable[[], bool]) -> None:
    """``corral run --headless --approve all`` of ``plan_path``, killed outright (SIGKILL) once
    ``until()`` holds (at most 30 s)."""
    env = dict(os.environ, TMPDIR=str(wt_root))
    env.pop("CORRAL_RUN", None)
    proc = subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "run", str(plan_path), "--repo", str(repo),
                             "--headless", "--approve", "all"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not until():
            time.sleep(0.05)
        assert until(), "the run never got there"
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------- tests
def test_three_tasks_land_and_user_working_copy_is_untouched(jrepo: Path, tmp_path: Path, wt_root: Path) -> None:
    # the user's own change in the default workspace: one file jj already knows, one it has not seen
    (jrepo / "notes.txt").write_text("mine\n")
    jj(jrepo, "describe", "-m", "my work in progress", wc=True)
    (jrepo / "scratch.txt").write_text("not yet snapshotted\n")
    user_wc = commit_of(jrepo, "@")
    old_main = commit_of(jrepo, "main")
    p = plan(tmp_path, {"top": EDIT_TOP, "bottom": EDIT_BOTTOM, "docs": "mkdir docs && echo hi > docs/x.md"},
             base="main", verify="grep -q 'line two' src/app.py && grep -q 'line nine' src/app.py")
    res = run(jrepo, p, "--approve", "all", wt_root=wt_root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "landed: main moved" in res.stdout
    new_main = commit_of(jrepo, "main")
    assert new_main != old_main
    # one merge commit: base first, then the tasks in plan order
    parents = parents_of(jrepo, "main")
    assert parents[0] == old_main and len(parents) == 4
    assert "line two" in file_at(jrepo, "main", "src/app.py") and "line nine" in file_at(jrepo, "main", "src/app.py")
    assert file_at(jrepo, "main", "docs/x.md") == "hi\n"
    assert file_at(jrepo, "main", "notes.txt") is None  # the user's change did not ride along
    # the user's working copy: same commit, same parent, files on disk as they were
    assert commit_of(jrepo, "@") == user_wc
    assert parents_of(jrepo, "@") == [old_main]
    assert (jrepo / "scratch.txt").read_text() == "not yet snapshotted\n"
    assert (jrepo / "notes.txt").read_text() == "mine\n"
    st = state(jrepo)
    assert st["bookmarks"] == [] and st["workspaces"] == [] and len(st["runs"]) == 1
    assert list(wt_root.iterdir()) == []
    no_trial_traces(jrepo)
    # the merged tasks' changes stay in main's history, described
    subjects = jj(jrepo, "log", "-r", "::main", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
    assert "corral: top" in subjects and "corral: bottom" in subjects
    run_json = json.loads((jrepo / ".jj" / "corral" / "runs" / st["runs"][0] / "run.json").read_text())
    assert run_json["backend"] == "jj" and run_json["tasks"]["top"]["change_id"]
    if (jrepo / ".git").exists():
        # colocated: git sees the landed bookmark too
        git_main = subprocess.run(["git", "rev-parse", "main"], cwd=jrepo, capture_output=True, text=True)
        assert git_main.stdout.strip() == new_main
        refs = subprocess.run(["git", "for-each-ref", "refs/heads/corral/"], cwd=jrepo, capture_output=True, text=True)
        assert refs.stdout == ""  # no corral branch left in git either
        wts = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=jrepo, capture_output=True, text=True)
        assert wts.stdout.count("worktree ") == 1


@pytest.mark.parametrize("strategy", ["rebase", "squash"])
def test_rebase_and_squash_strategies(plain: Path, tmp_path: Path, strategy: str) -> None:
    old_main = commit_of(plain, "main")
    # agent a commits part of its work itself (jj commit) and leaves the rest in its working copy
    a = "echo A > a.txt && jj commit -m 'agent: first half' >/dev/null 2>&1 && echo A2 > a2.txt"
    p = plan(tmp_path, {"a": a, "b": EDIT_TOP, "c": "echo C > c.txt"}, base="main", merge=strategy)
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    # linear history on top of the old main: the tasks' commits (rebase) or one per task (squash)
    chain = jj(plain, "log", "-r", f"{old_main}..main", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
    subjects = chain.split("\n")[:-1]
    if strategy == "rebase":
        assert subjects == ["corral: c", "corral: b", "corral: a", "agent: first half"]
    else:
        assert subjects == ["corral: c (squashed)", "corral: b (squashed)", "corral: a (squashed)"]
    for rev in ("main", "main-", "main--"):
        assert len(parents_of(plain, rev)) == 1
    assert file_at(plain, "main", "a.txt") == "A\n" and file_at(plain, "main", "c.txt") == "C\n"
    assert file_at(plain, "main", "a2.txt") == "A2\n"
    # the task's own changes were copied, so they are abandoned: nothing dangles next to main
    heads = jj(plain, "log", "-r", "heads(all())", "--no-graph", "-T", 'commit_id ++ "\\n"').split()
    assert set(heads) == {commit_of(plain, "main"), commit_of(plain, "@")}
    assert state(plain)["bookmarks"] == []
    no_trial_traces(plain, agents_use_jj=True)


def test_failed_task_keeps_its_change(plain: Path, tmp_path: Path) -> None:
    p = plan(tmp_path, {"good": "echo ok > good.txt", "bad": "echo half > half.txt; exit 3"}, base="main")
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    st = state(plain)
    run_id = st["runs"][0]
    assert st["bookmarks"] == [f"corral/{run_id}/bad"]
    assert st["workspaces"] == []
    # the failed task's work is on its bookmark, described, findable
    assert file_at(plain, f"corral/{run_id}/bad", "half.txt") == "half\n"
    desc = jj(plain, "log", "-r", f"corral/{run_id}/bad", "--no-graph", "-T", "description.first_line()")
    assert desc == "corral: bad"
    assert file_at(plain, "main", "good.txt") == "ok\n"
    assert file_at(plain, "main", "half.txt") is None
    report = (plain / ".jj" / "corral" / "runs" / run_id / "report.md").read_text()
    assert f"corral/{run_id}/bad" in report


def test_conflicting_pair(jrepo: Path, tmp_path: Path) -> None:
    old_main = commit_of(jrepo, "main")
    p = plan(tmp_path, {
        "en": "sed -i 's/^line 5$/line five/' src/app.py",
        "fr": "sed -i 's/^line 5$/ligne cinq/' src/app.py",
        "other": EDIT_BOTTOM,
    }, base="main")
    res = run(jrepo, p, "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "forecast en" in out and "conflict" in out.split("forecast en", 1)[1].splitlines()[0]
    assert "fr: conflict" in out
    st = state(jrepo)
    run_id = st["runs"][0]
    assert st["bookmarks"] == [f"corral/{run_id}/fr"]
    # en and other landed; fr's change is intact (not conflicted) on its bookmark
    assert "line five" in file_at(jrepo, "main", "src/app.py")
    assert "line nine" in file_at(jrepo, "main", "src/app.py")
    assert "ligne cinq" in file_at(jrepo, f"corral/{run_id}/fr", "src/app.py")
    assert parents_of(jrepo, f"corral/{run_id}/fr") == [old_main]
    assert len(parents_of(jrepo, "main")) == 3  # base, en, other
    no_trial_traces(jrepo)
    # the conflicting integration step (en + fr) was never part of the operation log either
    ops = jj(jrepo, "op", "log", "--no-graph", "-T", 'description ++ " " ++ tags ++ "\\n"')
    assert "corral: merge en, fr" not in ops and "corral: merge en, other" in ops


def test_failing_verify_lands_nothing(plain: Path, tmp_path: Path) -> None:
    old_main = commit_of(plain, "main")
    p = plan(tmp_path, {"a": "echo A > a.txt", "b": "echo B > b.txt"}, base="main", verify="test -f nope.txt")
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert commit_of(plain, "main") == old_main
    st = state(plain)
    run_id = st["runs"][0]
    assert st["bookmarks"] == sorted([f"corral/{run_id}/a", f"corral/{run_id}/b", f"corral/{run_id}/integration"])
    assert st["workspaces"] == []
    integ = f"corral/{run_id}/integration"
    assert file_at(plain, integ, "a.txt") == "A\n" and file_at(plain, integ, "b.txt") == "B\n"


def test_approve_none_merges_nothing(plain: Path, tmp_path: Path) -> None:
    old_main = commit_of(plain, "main")
    p = plan(tmp_path, {"a": "echo A > a.txt", "b": "echo B > b.txt"}, base="main")
    res = run(plain, p, "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    assert commit_of(plain, "main") == old_main
    st = state(plain)
    run_id = st["runs"][0]
    assert st["bookmarks"] == [f"corral/{run_id}/a", f"corral/{run_id}/b"]
    assert st["workspaces"] == []
    assert file_at(plain, f"corral/{run_id}/a", "a.txt") == "A\n"


def test_default_base_is_the_bookmark_on_the_parent_of_the_working_copy(plain: Path, tmp_path: Path) -> None:
    """``@-`` carries the bookmark ``main``: the default base is named by it, and the result lands there."""
    old_main = commit_of(plain, "main")
    res = run(plain, plan(tmp_path, {"a": "echo A > a.txt"}), "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "base main at" in res.stdout
    assert commit_of(plain, "main") != old_main and file_at(plain, "main", "a.txt") == "A\n"


def test_default_base_without_a_bookmark_is_kept_not_landed(colocated: Path, tmp_path: Path) -> None:
    """Base ``@-`` with no bookmark on it: the result is kept on the integration bookmark, nothing moves."""
    old_main = commit_of(colocated, "main")
    jj(colocated, "new", wc=True)  # now @- is an empty change above main, with no bookmark
    base = commit_of(colocated, "@-")
    p = plan(tmp_path, {"a": "echo A > a.txt"})
    res = run(colocated, p, "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "is not a bookmark" in res.stdout
    assert commit_of(colocated, "main") == old_main
    st = state(colocated)
    run_id = st["runs"][0]
    integ = f"corral/{run_id}/integration"
    assert integ in st["bookmarks"]
    assert file_at(colocated, integ, "a.txt") == "A\n"
    assert base in parents_of(colocated, integ)
    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    major, minor = (int(x) for x in git.split()[2].split(".")[:2])
    if (major, minor) < (2, 42):
        assert res.stdout.count("--no-colocate") == 1  # said once


def test_sigint_cleans_up_and_keeps_work(jrepo: Path, tmp_path: Path, wt_root: Path) -> None:
    p = plan(tmp_path, {"slow1": "echo one > one.txt; echo started; sleep 30",
                        "slow2": "echo two > two.txt; echo started; sleep 30"}, base="main")
    env = dict(os.environ, TMPDIR=str(wt_root))
    env.pop("CORRAL_RUN", None)
    proc = subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "run", str(p), "--repo", str(jrepo),
                             "--headless", "--approve", "all"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = {f for d in wt_root.iterdir() for f in ("one.txt", "two.txt") if (d / f).exists()}
            if len(found) == 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the agents did not start")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    st = state(jrepo)
    run_id = st["runs"][0]
    assert st["workspaces"] == []
    assert list(wt_root.iterdir()) == []
    assert st["bookmarks"] == [f"corral/{run_id}/slow1", f"corral/{run_id}/slow2"]
    # the uncommitted work of the interrupted agents was snapshotted onto their bookmarks
    assert file_at(jrepo, f"corral/{run_id}/slow1", "one.txt") == "one\n"
    assert file_at(jrepo, f"corral/{run_id}/slow2", "two.txt") == "two\n"
    data = json.loads((jrepo / ".jj" / "corral" / "runs" / run_id / "run.json").read_text())
    assert data["state"] == "interrupted"
    # the report and the summary count what was snapshotted ("files 0" before)
    report = (jrepo / ".jj" / "corral" / "runs" / run_id / "report.md").read_text()
    assert "| slow1 | shell | aborted (run interrupted) |" in report and "| 1 | no |" in report, report
    assert [line.split()[5] for line in out.splitlines() if line.startswith("slow1 ")] == ["1"], out


@pytest.mark.parametrize("case", ["bad-base", "bad-agent", "bad-plan", "ambiguous-base"])
def test_bad_plans_create_nothing(plain: Path, tmp_path: Path, case: str) -> None:
    ops_before = jj(plain, "op", "log", "--no-graph", "-T", 'id ++ "\\n"')
    if case == "bad-base":
        p, extra = plan(tmp_path, {"a": "true"}, base="no-such-bookmark"), []
    elif case == "bad-agent":
        p = write_plan(tmp_path / "plan.toml", '[[tasks]]\nname = "a"\nprompt = "x"\nagent = "nope"\n')
        extra = []
    elif case == "bad-plan":
        p, extra = write_plan(tmp_path / "plan.toml", "[[tasks]\nname = \n"), []
    else:
        p, extra = plan(tmp_path, {"a": "true"}, base="all()"), []
    res = run(plain, p, "--approve", "all", *extra)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("corral"), res.stderr
    assert state(plain) == {"bookmarks": [], "workspaces": [], "runs": []}
    assert jj(plain, "op", "log", "--no-graph", "-T", 'id ++ "\\n"') == ops_before


def test_clean_after_a_killed_run(plain: Path, tmp_path: Path, wt_root: Path) -> None:
    """A run killed outright leaves workspaces; ``corral clean`` forgets them and keeps the work."""
    p = plan(tmp_path, {"w": "echo work > w.txt; echo started; sleep 30"}, base="main")
    killed_run(plain, p, wt_root, lambda: any((d / "w.txt").exists() for d in wt_root.iterdir()))
    st = state(plain)
    # the task's workspace, and corral's own (the next corral process forgets it)
    assert len(st["workspaces"]) == 2 and sum(w.startswith("corral-engine-") for w in st["workspaces"]) == 1
    res = corral("clean", "--repo", str(plain))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "removed workspace" in res.stdout
    st = state(plain)
    run_id = st["runs"][0]
    assert st["workspaces"] == [] and list(wt_root.iterdir()) == []
    assert st["bookmarks"] == [f"corral/{run_id}/w"]
    assert file_at(plain, f"corral/{run_id}/w", "w.txt") == "work\n"
    assert f"kept branch corral/{run_id}/w" in res.stdout


@pytest.mark.parametrize("detached", [True, False], ids=["detached-ops", "old-jj"])
def test_backend_trials_and_discard(plain: Path, wt_root: Path, detached: bool) -> None:
    """The backend API on a real repo: forecast and integration leave no trial behind (with detached
    operations, and on an older jj without them, where trials are abandoned); a discarded task's
    change is abandoned; a kept one stays on its bookmark."""
    import anyio

    from corral.core.vcs import open_backend

    old_main = commit_of(plain, "main")

    async def scenario() -> None:
        b = await open_backend(plain)
        assert b.kind == "jj"
        if not detached:
            b.version = (0, 40, 0)  # jj before --no-integrate-operation
        assert b.detached_ops is detached
        edits = {"x": ("line 5", "line five"), "y": ("line 5", "ligne cinq"), "z": ("line 1", "line one")}
        wss = {}
        for task, (old, new) in edits.items():
            ws = await b.create_workspace("20260101-000000-abcd", task, old_main, str(wt_root))
            app = ws.path / "src" / "app.py"
            app.write_text(app.read_text().replace(old + "\n", new + "\n"))
            snap = await b.snapshot(ws, f"corral: {task}")
            assert snap.files == ["src/app.py"] and snap.change_id
            wss[task] = ws
        ops_before = jj(plain, "op", "log", "--no-graph", "-T", 'id ++ "\\n"')
        fc = await b.forecast("main", {t: ws.head for t, ws in wss.items()})
        assert fc.conflicts == {("x", "y"): ["src/app.py"]}
        if detached:  # the forecast added nothing to the operation log
            assert jj(plain, "op", "log", "--no-graph", "-T", 'id ++ "\\n"') == ops_before
        integ, outcomes = await b.integrate("20260101-000000-abcd", old_main,
                                            [(t, ws.head) for t, ws in wss.items()], "merge", str(wt_root))
        assert [(o.task, o.ok) for o in outcomes] == [("x", True), ("y", False), ("z", True)]
        assert outcomes[1].conflict_files == ["src/app.py"]
        assert "line five" in (integ.path / "src" / "app.py").read_text()
        no_trial_traces(plain, op_log=detached)
        # discard y: its change is abandoned; x stays on its bookmark; the integration is dropped
        y_change = jj(plain, "log", "-r", wss["y"].head, "--no-graph", "-T", "change_id").strip()
        await b.remove_workspace(wss["y"], keep_ref=False)
        await b.remove_workspace(wss["x"], keep_ref=True)
        await b.remove_workspace(wss["z"], keep_ref=True)
        await b.remove_workspace(integ, keep_ref=False)
        await b.close()  # forgets corral's own workspace
        visible = jj(plain, "log", "-r", "all()", "--no-graph", "-T", 'change_id ++ "\\n"').split()
        assert y_change not in visible
        assert state(plain)["bookmarks"] == ["corral/20260101-000000-abcd/x", "corral/20260101-000000-abcd/z"]
        assert state(plain)["workspaces"] == [] and list(wt_root.iterdir()) == []
        subjects = jj(plain, "log", "-r", "all()", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
        assert "corral: merge" not in subjects
        assert await b.holds_unmerged_work("corral/20260101-000000-abcd/x")

    anyio.run(scenario)


def test_base_moved_during_the_run_is_merged_in_and_lands(plain: Path, tmp_path: Path) -> None:
    """Someone moves ``main`` while the agents work: their commit is merged into the result, which
    lands on top of it."""
    mover = (f"echo A > a.txt; jj --ignore-working-copy -R {plain} new --no-edit main -m moved >/dev/null 2>&1 && "
             f"jj --ignore-working-copy -R {plain} bookmark set main "
             "-r 'children(main) & description(substring:\"moved\")' >/dev/null 2>&1")
    p = plan(tmp_path, {"a": mover}, base="main")
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "main moved during the run" in res.stdout
    assert "moved" in jj(plain, "log", "-r", "::main", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
    assert file_at(plain, "main", "a.txt") == "A\n"
    assert state(plain)["bookmarks"] == []


def test_keep_worktrees_then_clean(plain: Path, tmp_path: Path, wt_root: Path) -> None:
    """--keep-worktrees leaves the landed run's workspaces; ``corral clean`` removes them later and
    drops the bookmarks whose work already landed."""
    p = plan(tmp_path, {"one": "echo 1 > one.txt", "two": "echo 2 > two.txt"}, base="main")
    res = run(plain, p, "--approve", "all", "--keep-worktrees", wt_root=wt_root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "--keep-worktrees: workspaces left in place" in res.stdout
    st = state(plain)
    assert len(st["workspaces"]) == 3  # two tasks and the integration
    res = corral("clean", "--repo", str(plain))
    assert res.returncode == 0 and res.stdout.count("removed workspace") == 3, res.stdout + res.stderr
    st = state(plain)
    assert st["workspaces"] == [] and list(wt_root.iterdir()) == []
    assert st["bookmarks"] == []  # everything landed: nothing left to keep
    assert file_at(plain, "main", "one.txt") == "1\n" and file_at(plain, "main", "two.txt") == "2\n"


def test_vcs_jj_on_a_git_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    p = plan(tmp_path, {"a": "true"}, vcs="jj")
    res = run(repo, p, "--approve", "all")
    assert res.returncode == 2 and "not a jj repository" in res.stderr, res.stdout + res.stderr
    assert not (repo / ".jj").exists() and not (repo / ".git" / "corral" / "runs").exists()


# ------------------------------------------------------------------ nothing lost on jj either (issue 21)
def wait_for(path: Path) -> str:
    """Shell: wait (at most 60 s) until ``path`` exists; the agents of these tests take turns by it."""
    return f"i=0; while [ ! -e {path} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"


def run_id_of(repo: Path) -> str:
    return state(repo)["runs"][-1]


def run_json(repo: Path) -> dict:
    return json.loads((repo / ".jj" / "corral" / "runs" / run_id_of(repo) / "run.json").read_text())


def divergent(repo: Path) -> str:
    return jj(repo, "log", "-r", "divergent()", "--no-graph", "-T", 'change_id.short() ++ " " ++ description ++ "\\n"')


def kept_bookmarks_exist(repo: Path) -> None:
    """Every bookmark the report lists as kept exists, and holds what the journal says."""
    report = (repo / ".jj" / "corral" / "runs" / run_id_of(repo) / "report.md").read_text()
    kept = [line.strip("- `") for line in report.split("## Branches kept", 1)[-1].split("##", 1)[0].splitlines()
            if line.startswith("- `")] if "## Branches kept" in report else []
    existing = state(repo)["bookmarks"]
    assert all(k in existing for k in kept), (kept, existing)


@pytest.mark.parametrize("how", ["agent-forgets-it", "user-restores-an-earlier-operation"])
def test_workspace_forgotten_mid_run_keeps_its_files(plain: Path, tmp_path: Path, wt_root: Path, how: str) -> None:
    """Another task's agent forgets a task's workspace, or the user restores the operation before the run,
    while the task's agent works: its files (written before and after) are committed and land."""
    flags = tmp_path / "flags"
    flags.mkdir()
    before_run = jj(plain, "op", "log", "-n", "1", "--no-graph", "-T", "id")
    victim = f"echo early > early.txt; touch {flags}/ready; {wait_for(flags / 'done')}; echo late > late.txt"
    if how == "agent-forgets-it":
        act = 'jj --ignore-working-copy workspace forget "corral-$CORRAL_RUN-victim"'
    else:  # and the victim then fails: its work is kept on a bookmark that exists
        act = f"jj -R {plain} --ignore-working-copy op restore {before_run}"
        victim += "; exit 3"
    other = f"{wait_for(flags / 'ready')}; {act} >/dev/null 2>&1; touch {flags}/done"
    res = run(plain, plan(tmp_path, {"victim": victim, "other": other}, base="main"), "--approve", "all",
              wt_root=wt_root)
    assert "committed again" in res.stdout
    if how == "agent-forgets-it":
        assert res.returncode == 0, res.stdout + res.stderr
        kept = "main"
    else:
        assert res.returncode == 1, res.stdout + res.stderr
        kept = f"corral/{run_id_of(plain)}/victim"
        kept_bookmarks_exist(plain)
        assert state(plain)["bookmarks"] == [kept]
    assert file_at(plain, kept, "early.txt") == "early\n" and file_at(plain, kept, "late.txt") == "late\n"
    st = state(plain)
    assert st["workspaces"] == [] and list(wt_root.iterdir()) == []
    assert divergent(plain) == ""


def test_base_squashed_into_mid_run_is_followed(jrepo: Path, tmp_path: Path, wt_root: Path) -> None:
    """The user squashes their change into main (``@-``) while agents work: every workspace goes stale.
    corral follows the rewrite: the agents' work (also what they wrote after it) lands on the new main,
    nothing comes back as a divergent change, and nothing is left for ``corral clean``."""
    flags = tmp_path / "flags"
    flags.mkdir()
    (jrepo / "mine.txt").write_text("the user's change\n")
    tasks = {
        "a": f"echo A > a.txt; touch {flags}/a; {wait_for(flags / 'squashed')}; echo A2 > a2.txt",
        "b": f"echo B > b.txt; touch {flags}/b; {wait_for(flags / 'squashed')}",
        "user": f"{wait_for(flags / 'a')}; {wait_for(flags / 'b')}; cd {jrepo} && jj squash >/dev/null 2>&1; "
                f"touch {flags}/squashed",
    }
    res = run(jrepo, plan(tmp_path, tasks, base="main"), "--approve", "all", wt_root=wt_root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rewritten during the run" in res.stdout
    for name, text in (("mine.txt", "the user's change\n"), ("a.txt", "A\n"), ("a2.txt", "A2\n"), ("b.txt", "B\n")):
        assert file_at(jrepo, "main", name) == text, name
    assert divergent(jrepo) == ""
    initial = jj(jrepo, "log", "-r", "all()", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
    assert initial.count("initial") == 1
    st = state(jrepo)
    assert st["workspaces"] == [] and st["bookmarks"] == [] and list(wt_root.iterdir()) == []
    clean = corral("clean", "--repo", str(jrepo))
    assert clean.returncode == 0 and "nothing to clean" in clean.stdout, clean.stdout + clean.stderr


def test_clean_adopts_a_stale_workspace_and_keeps_its_work(plain: Path, tmp_path: Path, wt_root: Path) -> None:
    """Workspaces left by a run go stale when the user squashes into base; ``corral clean`` really
    removes them (it used to print "removed" and remove nothing), keeping every file on the bookmark,
    on the new base, without a divergent change."""
    res = run(plain, plan(tmp_path, {"a": "echo A > a.txt"}, base="main"), "--approve", "none", "--keep-worktrees",
              wt_root=wt_root)
    assert res.returncode == 0, res.stdout + res.stderr
    (ws,) = list(wt_root.iterdir())
    (ws / "later.txt").write_text("edited by hand after the run\n")
    (plain / "mine.txt").write_text("mine\n")
    jj(plain, "squash", wc=True)
    res = corral("clean", "--repo", str(plain))
    assert res.returncode == 0 and "removed workspace" in res.stdout, res.stdout + res.stderr
    st = state(plain)
    assert st["workspaces"] == [] and list(wt_root.iterdir()) == []
    ref = f"corral/{run_id_of(plain)}/a"
    assert st["bookmarks"] == [ref]
    assert file_at(plain, ref, "a.txt") == "A\n"
    assert file_at(plain, ref, "later.txt") == "edited by hand after the run\n"
    assert parents_of(plain, ref) == [commit_of(plain, "main")]
    assert divergent(plain) == ""


PAST = {"remove": "removed", "keep": "kept", "delete": "deleted", "commit": "committed"}


def clean_as_the_dry_run_said(repo: Path) -> subprocess.CompletedProcess:
    """``corral clean --dry-run``, then ``corral clean``: both succeed, and the dry run said exactly
    what clean did (the bookmarks too, which jj makes as the work is committed); clean's ``note:``
    lines tell what it found doing it."""
    dry = corral("clean", "--dry-run", "--repo", str(repo))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    res = corral("clean", "--repo", str(repo))
    assert res.returncode == 0, res.stdout + res.stderr
    said = sorted(re.sub(r"^would (\w+)", lambda m: PAST[m[1]], line) for line in dry.stdout.splitlines())
    assert said == sorted(line for line in res.stdout.splitlines() if not line.startswith("note: ")), \
        (dry.stdout, res.stdout)
    return res
RM_JJ = "echo e > e.txt; jj commit -m e >/dev/null 2>&1; echo f > f.txt; rm -rf .jj"


def test_an_agent_that_deletes_its_jj_dir_keeps_its_work(plain: Path, tmp_path: Path, wt_root: Path) -> None:
    """`rm -rf .jj` in its workspace after committing (an agent "cleaning up"): what it committed and
    the files on disk after it are committed and land, as with git's `rm .git`."""
    res = run(plain, plan(tmp_path, {"rmjj": RM_JJ}, base="main"), "--approve", "all", wt_root=wt_root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert file_at(plain, "main", "e.txt") == "e\n" and file_at(plain, "main", "f.txt") == "f\n"
    st = state(plain)
    assert st["workspaces"] == [] and list(wt_root.iterdir()) == [] and divergent(plain) == ""


def test_clean_after_a_crash_keeps_the_work_of_an_agent_that_deleted_its_jj_dir(plain: Path, tmp_path: Path,
                                                                                wt_root: Path) -> None:
    """The same after a kill -9 of corral: clean removed the directory with the file written after
    the `jj commit` in it, and kept no bookmark for the commit."""
    p = plan(tmp_path, {"rmjj": f"{RM_JJ}; touch {tmp_path}/rmjj; exec sleep 60",
                        "idle": f"touch {tmp_path}/idle; exec sleep 60",
                        "more": f"echo m > m.txt; rm README.md; touch {tmp_path}/more; exec sleep 60"}, base="main")
    started = [tmp_path / t for t in ("rmjj", "idle", "more")]
    killed_run(plain, p, wt_root, lambda: all(f.exists() for f in started))
    res = clean_as_the_dry_run_said(plain)
    ref = f"corral/{run_id_of(plain)}/rmjj"
    assert f"kept branch {ref}" in res.stdout, res.stdout
    assert f"deleted branch corral/{run_id_of(plain)}/idle" in res.stdout
    assert "committed 2 uncommitted file(s) of more" in res.stdout
    assert file_at(plain, ref, "e.txt") == "e\n" and file_at(plain, ref, "f.txt") == "f\n"
    assert state(plain)["workspaces"] == [] and list(wt_root.iterdir()) == [] and divergent(plain) == ""


RM_WS = ("echo d > d.txt && jj commit -m d >/dev/null 2>&1 && echo e > e.txt && jj st >/dev/null; cd /; "
         "rm -rf \"$CORRAL_WORKSPACE\"; true")


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_an_agent_that_deletes_its_whole_workspace_keeps_its_work_and_deletes_none_of_yours(
        plain: Path, tmp_path: Path, wt_root: Path, sandbox: str) -> None:
    """`rm -rf "$CORRAL_WORKSPACE"` after a `jj commit` and a snapshot: what jj recorded of the
    workspace lands. The directory gone (or, in the sandbox, where it is a mount point, left empty) is
    a workspace deleted: its commit was never found (the task "merged", nothing landed), and in the
    sandbox the empty directory was adopted as work that deleted every file, which landed."""
    if sandbox == "bwrap":
        from test_sandbox import bwrap_problem
        if bwrap_problem():
            pytest.skip(f"no sandbox here: {bwrap_problem()}")
    files = set(jj(plain, "file", "list", "-r", "main").split())
    res = run(plain, plan(tmp_path, {"rmws": RM_WS}, base="main", sandbox=sandbox), "--approve", "all",
              wt_root=wt_root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert set(jj(plain, "file", "list", "-r", "main").split()) == files | {"d.txt", "e.txt"}, res.stdout
    assert state(plain)["workspaces"] == [] and list(wt_root.iterdir()) == [] and divergent(plain) == ""


def test_clean_after_a_crash_keeps_the_work_of_an_agent_that_deleted_its_whole_workspace(
        plain: Path, tmp_path: Path, wt_root: Path) -> None:
    p = plan(tmp_path, {"rmws": f"{RM_WS}; touch {tmp_path}/rmws; exec sleep 60"}, base="main")
    killed_run(plain, p, wt_root, lambda: (tmp_path / "rmws").exists())
    res = clean_as_the_dry_run_said(plain)
    ref = f"corral/{run_id_of(plain)}/rmws"
    assert f"kept branch {ref}" in res.stdout, res.stdout
    assert file_at(plain, ref, "d.txt") == "d\n" and file_at(plain, ref, "e.txt") == "e\n"
    assert file_at(plain, ref, "README.md") is not None
    assert state(plain)["workspaces"] == [] and list(wt_root.iterdir()) == [] and divergent(plain) == ""


@pytest.mark.parametrize("change", ["rename", "delete"])
def test_base_bookmark_renamed_or_deleted_mid_run(plain: Path, tmp_path: Path, change: str) -> None:
    """The user renames or deletes the base bookmark during the run: one clear line, nothing lands, the
    result is kept, and run.json, report.md and ``corral runs`` say the run failed (exit 1)."""
    act = "bookmark rename main trunk" if change == "rename" else "bookmark delete main"
    p = plan(tmp_path, {"a": f"echo A > a.txt; jj -R {plain} --ignore-working-copy {act} >/dev/null 2>&1"},
             base="main")
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "ExceptionGroup" not in res.stderr, res.stderr
    assert "bookmark main no longer exists" in res.stdout
    data = run_json(plain)
    assert data["state"] == "failed" and data["exit_code"] == 1
    report = (plain / ".jj" / "corral" / "runs" / run_id_of(plain) / "report.md").read_text()
    assert "**failed** (exit code 1)" in report and "landed: no (bookmark main no longer exists" in report
    runs = corral("runs", "--repo", str(plain))
    assert "failed" in runs.stdout and "completed" not in runs.stdout
    integ = f"corral/{run_id_of(plain)}/integration"
    assert file_at(plain, integ, "a.txt") == "A\n"
    kept_bookmarks_exist(plain)


def test_agent_moving_the_base_bookmark_is_put_back(plain: Path, tmp_path: Path) -> None:
    """An agent points main at its own unreviewed change: corral puts main back, says so, and lands the
    work the normal way (merged and verified)."""
    old_main = commit_of(plain, "main")
    p = plan(tmp_path, {"a": "echo A > a.txt; jj bookmark set main -r @ --allow-backwards >/dev/null 2>&1"},
             base="main", verify="test -f a.txt")
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "moved bookmark main" in res.stdout and f"put back on {old_main[:12]}" in res.stdout
    assert parents_of(plain, "main")[0] == old_main and file_at(plain, "main", "a.txt") == "A\n"
    assert state(plain)["bookmarks"] == []


@pytest.mark.parametrize("colocate", [False, True], ids=["plain", "colocated"])
def test_an_agent_restoring_an_old_operation_never_costs_you_your_working_copy(tmp_path: Path, wt_root: Path,
                                                                             colocate: bool) -> None:
    """An agent runs ``jj op restore`` to an operation from before your last snapshot: your working
    copy moves back to an older commit, and your workspace is stale; jj's own way out (``jj workspace
    update-stale``) then deleted your file from disk (it was only in the operation log). corral
    puts your working copy back on the commit your workspace's files are, and the run lands; in a
    colocated repository, what you staged with git stays staged."""
    plain = make_jj_repo(tmp_path / "repo", colocate)
    before = jj(plain, "op", "log", "--no-graph", "-n", "1", "-T", "id").strip()
    (plain / "mine.txt").write_text("mine\n")
    jj(plain, "status", wc=True)  # snapshotted: your working copy now holds it
    if colocate:
        (plain / "staged.txt").write_text("staged\n")
        subprocess.run(["git", "add", "staged.txt"], cwd=plain, check=True)
    p = plan(tmp_path, {"a": f"echo A > a.txt; jj op restore {before} >/dev/null 2>&1; echo B > b.txt"},
             base="main")
    res = run(plain, p, "--approve", "all", wt_root=wt_root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "put back" in res.stdout, res.stdout
    assert file_at(plain, "main", "a.txt") == "A\n" and file_at(plain, "main", "b.txt") == "B\n"
    if colocate:
        staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=plain, capture_output=True,
                                text=True, check=True).stdout.split()
        assert staged == ["staged.txt"], staged
    jj(plain, "workspace", "update-stale", wc=True)  # what jj tells you to run when it is stale
    assert "mine.txt" in jj(plain, "status", wc=True)  # loads, and holds your change
    assert (plain / "mine.txt").read_text() == "mine\n" and file_at(plain, "@", "mine.txt") == "mine\n"
    assert divergent(plain) == ""


def test_agent_abandoning_operations_does_not_break_the_user_workspace(plain: Path, tmp_path: Path) -> None:
    """An agent runs ``jj op abandon ..@-``: the user's workspace would not load any more ("sibling of
    the working copy's operation"); corral integrates the operations back and says so."""
    (plain / "mine.txt").write_text("mine\n")
    jj(plain, "describe", "-m", "my work", wc=True)
    p = plan(tmp_path, {"a": "echo A > a.txt; jj st >/dev/null 2>&1; jj op abandon ..@- >/dev/null 2>&1"},
             base="main")
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "integrated" in res.stdout
    st = subprocess.run(["jj", "--no-pager", "st"], cwd=plain, capture_output=True, text=True)
    assert st.returncode == 0, st.stderr
    assert "my work" in st.stdout and file_at(plain, "main", "a.txt") == "A\n"


@pytest.mark.parametrize("act", ["squash", "edit main", "abandon @-"])
def test_agent_rewriting_the_base_lands_nothing_and_creates_no_divergence(plain: Path, tmp_path: Path,
                                                                        wt_root: Path, act: str) -> None:
    """An agent rewrites main itself (squashes into it, edits it, abandons it) while another works: the
    other's work is kept (its workspace went stale), nothing becomes divergent, nothing lands, corral
    says which task did what and how to undo it, and every bookmark the report keeps exists."""
    flags = tmp_path / "flags"
    flags.mkdir()
    bad = {"squash": "echo X > x.txt; jj squash", "edit main": "jj edit main; echo X > x.txt; jj st",
           "abandon @-": "echo X > x.txt; jj abandon @-"}[act]
    tasks = {"good": f"echo G > g.txt; touch {flags}/ready; {wait_for(flags / 'done')}; echo G2 > g2.txt",
             "bad": f"{wait_for(flags / 'ready')}; {bad} >/dev/null 2>&1; touch {flags}/done"}
    old_main = commit_of(plain, "main") if act != "abandon @-" else ""
    res = run(plain, plan(tmp_path, tasks, base="main"), "--approve", "all", wt_root=wt_root)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "task bad's `" in res.stdout and "jj op revert" in res.stdout
    assert "Traceback" not in res.stderr
    assert divergent(plain) == ""
    if old_main:
        assert commit_of(plain, "main") != old_main  # what the agent did stays, and is said
    good = f"corral/{run_id_of(plain)}/good"
    assert file_at(plain, good, "g.txt") == "G\n" and file_at(plain, good, "g2.txt") == "G2\n"
    kept_bookmarks_exist(plain)
    assert state(plain)["workspaces"] == [] and list(wt_root.iterdir()) == []


def test_user_undo_never_undoes_corral(jrepo: Path, tmp_path: Path) -> None:
    """corral records its operations from workspaces of its own, so the user's ``jj undo`` refuses them
    (jj 0.46 refuses other workspaces' operations) instead of undoing a bookmark deletion of corral's."""
    before = jj(jrepo, "op", "log", "--no-graph", "-T", 'id ++ "\\n"').split()
    res = run(jrepo, plan(tmp_path, {"a": "echo A > a.txt"}, base="main"), "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    ops = jj(jrepo, "op", "log", "--no-graph", "-T", 'id ++ "\\t" ++ workspace_name ++ "\\n"').splitlines()
    during = [line.split("\t") for line in ops if line.split("\t")[0] not in before]
    assert during and all(ws != "default@" for _, ws in during), during
    main = commit_of(jrepo, "main")
    undo = subprocess.run(["jj", "--no-pager", "undo"], cwd=jrepo, capture_output=True, text=True)
    assert undo.returncode != 0 and "corral-engine-" in undo.stderr, undo.stdout + undo.stderr
    assert commit_of(jrepo, "main") == main and state(jrepo)["bookmarks"] == []


def test_colocated_run_leaves_the_git_index_and_git_history_alone(colocated: Path, tmp_path: Path) -> None:
    """A file the user staged with git stays staged, and git shows none of corral's trial merges or
    rolled-back integration steps (jj keeps a ``refs/jj/keep/*`` ref for every commit it writes)."""
    (colocated / "staged.txt").write_text("staged\n")
    subprocess.run(["git", "add", "staged.txt"], cwd=colocated, check=True)
    p = plan(tmp_path, {"en": "sed -i 's/^line 5$/line five/' src/app.py",
                        "fr": "sed -i 's/^line 5$/ligne cinq/' src/app.py"}, base="main")
    res = run(colocated, p, "--approve", "all")
    assert res.returncode == 1 and "fr: conflict" in res.stdout, res.stdout + res.stderr
    status = subprocess.run(["git", "status", "--porcelain"], cwd=colocated, capture_output=True, text=True).stdout
    assert "A  staged.txt" in status.splitlines(), status
    subjects = subprocess.run(["git", "log", "--all", "--format=%s"], cwd=colocated, capture_output=True,
                              text=True).stdout
    assert "trial merge" not in subjects and "corral: merge en, fr" not in subjects, subjects


def test_worktree_root_inside_a_colocated_repository_is_refused(colocated: Path, tmp_path: Path) -> None:
    inside = colocated / "work"
    inside.mkdir()
    p = plan(tmp_path, {"a": "git stash -u"}, base="main", worktree_root=str(inside))
    ops_before = jj(colocated, "op", "log", "--no-graph", "-T", 'id ++ "\\n"')
    res = run(colocated, p, "--approve", "all")
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "inside the colocated repository" in lines[0], res.stderr
    assert list(inside.iterdir()) == [] and state(colocated)["runs"] == []
    assert jj(colocated, "op", "log", "--no-graph", "-T", 'id ++ "\\n"') == ops_before


def test_file_over_the_snapshot_size_limit_keeps_the_workspace(plain: Path, tmp_path: Path, wt_root: Path) -> None:
    """jj refuses to snapshot a file over its size limit (1 GiB): the task is not merged, says which
    file, and its workspace (with the file) is kept; the rest of its work is on its bookmark."""
    p = plan(tmp_path, {"big": "echo small > small.txt; truncate -s 1100M big.bin"}, base="main")
    res = run(plain, p, "--approve", "all", wt_root=wt_root)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "big.bin" in res.stdout and "size limit" in res.stdout and "kept" in res.stdout
    (ws,) = list(wt_root.iterdir())
    assert (ws / "big.bin").stat().st_size == 1100 * 1024 * 1024
    assert len(state(plain)["workspaces"]) == 1
    assert run_json(plain)["tasks"]["big"]["status"] == "failed"
    assert file_at(plain, f"corral/{run_id_of(plain)}/big", "small.txt") == "small\n"
    assert file_at(plain, "main", "small.txt") is None
    # once the big file is gone, clean removes the workspace it kept
    (ws / "big.bin").unlink()
    res = corral("clean", "--repo", str(plain))
    assert res.returncode == 0 and "removed workspace" in res.stdout, res.stdout + res.stderr
    assert state(plain)["workspaces"] == [] and not ws.exists()


def test_default_base_of_a_merge_working_copy_is_said(plain: Path, tmp_path: Path) -> None:
    """The user's working copy is a merge of main and an unbookmarked side change: corral says at the
    start which base it took and that the other parent's changes are not in it."""
    jj(plain, "new", "root()", "-m", "side", wc=True)
    (plain / "side.txt").write_text("side\n")
    change = jj(plain, "log", "-r", "@", "--no-graph", "-T", "change_id", wc=True)
    jj(plain, "new", "main", change, wc=True)
    side = commit_of(plain, change)
    res = run(plain, plan(tmp_path, {"a": "echo A > a.txt"}), "--approve", "none")
    assert res.returncode == 0, res.stdout + res.stderr
    head = res.stdout.split("phase: running", 1)[0]
    assert "base main" in head and "is a merge" in head and side[:12] in head, res.stdout


def test_an_error_inside_the_run_is_one_line_and_the_journal_says_so(plain: Path, tmp_path: Path) -> None:
    """An error raised inside the run's steps (here: the worktree root vanished before the integration
    workspace is made) arrives wrapped by the runtime's task group: it is reported in one line, and
    run.json says the run ended in an error, not "completed (exit 0)"."""
    root = tmp_path / "root"
    root.mkdir()
    p = plan(tmp_path, {"a": f"rm -rf {root}"}, base="main", worktree_root=str(root))
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "run failed:" in res.stdout, res.stdout + res.stderr
    data = run_json(plain)
    assert data["state"] == "error" and data["exit_code"] == 1


# ------------------------------------------------------------------ leftovers that clean finds (jj)
CRASH_AT = r'''
import os, sys, anyio
from corral.core.vcs.jj import JjBackend

async def main() -> None:
    b = await JjBackend.open(sys.argv[1])
    where, root = sys.argv[2], sys.argv[3]
    real_jj, real_reserve = b.jj, b.registry.reserve
    async def jj(*args, **kw):
        if where == "checkout" and args[:2] == ("workspace", "update-stale"):
            os._exit(9)  # killed between `jj new` and the check-out
        return await real_jj(*args, **kw)
    def reserve(*args, **kw):
        out = real_reserve(*args, **kw)
        if where == "integration" and kw.get("role") == "integration":
            b.registry.reserve = real_reserve
        return out
    b.jj, b.registry.reserve = jj, reserve
    run = "20260101-000000-dead"
    base = await b.resolve("main")
    ws = await b.create_workspace(run, "a", base, root)
    if where == "integration":
        (ws.path / "a.txt").write_text("a\n")
        snap = await b.snapshot(ws, "corral: a")
        real_new = b._new_workspace
        async def new_workspace(*args, **kw):
            os._exit(9)  # killed after the integration's bookmark was set, before its workspace
        b._new_workspace = new_workspace
        await b.integrate(run, base, [("a", snap.commit)], "merge", root)

anyio.run(main)
'''


@pytest.mark.parametrize("where", ["checkout", "integration"])
def test_clean_finds_what_a_kill_during_creation_left(plain: Path, tmp_path: Path, wt_root: Path, where: str) -> None:
    """Killed between ``jj new`` and the check-out (a stale, half-made workspace), or after the
    integration's bookmark was set and before its workspace existed: ``corral clean`` drops what
    holds no work (workspace, directory, bookmark, merge commit) and keeps the task's work."""
    before = set(jj(plain, "log", "-r", "all()", "--no-graph", "-T", 'commit_id ++ "\\n"').split())
    script = tmp_path / "crash.py"
    script.write_text(CRASH_AT)
    res = subprocess.run([sys.executable, str(script), str(plain), where, str(wt_root)], capture_output=True,
                         text=True)
    assert res.returncode == 9, res.stdout + res.stderr
    assert [w for w in state(plain)["workspaces"] if not w.startswith("corral-engine-")]
    out = corral("clean", "--repo", str(plain))
    assert out.returncode == 0, out.stdout + out.stderr
    st = state(plain)
    assert st["workspaces"] == [] and list(wt_root.iterdir()) == [], out.stdout
    if where == "checkout":
        assert "removed half-made workspace" in out.stdout
        assert st["bookmarks"] == []
        after = set(jj(plain, "log", "-r", "all()", "--no-graph", "-T", 'commit_id ++ "\\n"').split())
        assert after - before <= {commit_of(plain, "@")}, "a commit of the half-made workspace is still visible"
    else:
        assert st["bookmarks"] == ["corral/20260101-000000-dead/a"], out.stdout
        assert file_at(plain, "corral/20260101-000000-dead/a", "a.txt") == "a\n"
        subjects = jj(plain, "log", "-r", "all()", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
        assert "corral: merge" not in subjects
    assert "nothing to clean" in corral("clean", "--repo", str(plain)).stdout


def test_a_failed_task_that_changed_nothing_keeps_no_bookmark(plain: Path, tmp_path: Path) -> None:
    res = run(plain, plan(tmp_path, {"bad": "exit 3", "good": "echo g > g.txt"}, base="main"), "--approve", "all")
    assert res.returncode == 1, res.stdout + res.stderr
    assert state(plain)["bookmarks"] == []
    assert "Branches kept" not in (plain / ".jj" / "corral" / "runs" / run_id_of(plain) / "report.md").read_text()


FORGET = ('echo e > e.txt; jj commit -m e >/dev/null 2>&1; echo f > f.txt; '
          'jj --ignore-working-copy workspace forget "corral-$CORRAL_RUN-$CORRAL_TASK" >/dev/null 2>&1')


def test_clean_after_a_crash_keeps_the_work_of_an_agent_that_forgot_its_workspace(plain: Path, tmp_path: Path,
                                                                                   wt_root: Path) -> None:
    """An agent forgets its own workspace (`jj workspace forget`) after committing, then corral is
    killed: clean left the directory alone with a note and kept no bookmark for the commit, so the
    user had to find both. The workspace is corral's (registered, its `.jj` points into this
    repository): clean adopts it as a run does, and keeps the work on the task's bookmark."""
    p = plan(tmp_path, {"forget": f"{FORGET}; touch {tmp_path}/forget; exec sleep 60",
                        "idle": f"touch {tmp_path}/idle; exec sleep 60"}, base="main")
    started = [tmp_path / t for t in ("forget", "idle")]
    killed_run(plain, p, wt_root, lambda: all(f.exists() for f in started))
    res = clean_as_the_dry_run_said(plain)
    ref = f"corral/{run_id_of(plain)}/forget"
    assert f"kept branch {ref}" in res.stdout, res.stdout
    assert "note: forget: jj could no longer snapshot its workspace" in res.stdout, res.stdout
    assert file_at(plain, ref, "e.txt") == "e\n" and file_at(plain, ref, "f.txt") == "f\n"
    assert state(plain)["workspaces"] == [] and list(wt_root.iterdir()) == [] and divergent(plain) == ""


def test_clean_leaves_alone_a_forgotten_workspace_that_became_another_repository(plain: Path, tmp_path: Path,
                                                                                 wt_root: Path) -> None:
    """After the crash the user made the forgotten workspace's directory a repository of its own
    (`jj git init` there): it is not corral's any more, so clean touches neither it nor its files."""
    p = plan(tmp_path, {"forget": f"{FORGET}; touch {tmp_path}/forget; exec sleep 60"}, base="main")
    killed_run(plain, p, wt_root, lambda: (tmp_path / "forget").exists())
    (where,) = [d for d in wt_root.iterdir() if d.name.startswith("corral-forget-")]
    shutil.rmtree(where / ".jj")
    jj(where, "git", "init", wc=True)
    res = corral("clean", "--repo", str(plain))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"left alone: {where}" in res.stdout and "its .jj is not this repository's" in res.stdout, res.stdout
    assert (where / "f.txt").read_text() == "f\n" and (where / ".jj" / "repo").is_dir()
    # the killed corral's own workspace is forgotten all the same (nothing else needed one)
    assert state(plain)["workspaces"] == []
    shutil.rmtree(where)  # (the user's to remove: then so is corral's record of it)
    for rec in (plain / ".jj" / "corral" / "workspaces").glob("corral-forget-*.json"):
        rec.unlink()


def test_a_git_repository_an_agent_makes_in_its_workspace_lands_as_files(plain: Path, tmp_path: Path) -> None:
    """`git init` in a folder of a jj workspace (as scaffolding tools do): jj snapshots no folder
    holding a `.git`, so its files were in no commit and went with the workspace (the task said
    "merged"; once committed, jj's next snapshot would drop them again). Now they land, and the
    commits made in that repository are kept in the run's folder."""
    inner = "git -c user.name=x -c user.email=x@x commit -qm inner"
    p = plan(tmp_path, {"inner": f"mkdir sub && cd sub && git init -q && echo p > p.txt && git add -A && {inner} && "
                                 "echo u > u.txt && cd .. && echo top > top.txt",
                        "fresh": "mkdir -p a/b && cd a/b && git init -q && echo x > x.txt"}, base="main")
    res = run(plain, p, "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    landed = set(jj(plain, "file", "list", "-r", "main").split())
    assert {"sub/p.txt", "sub/u.txt", "top.txt", "a/b/x.txt"} <= landed, landed
    assert not any("/.git/" in f for f in landed)
    [kept] = list((plain / ".jj" / "corral" / "runs").glob("*/repositories/inner/sub/.git"))
    assert subprocess.run(["git", "--git-dir", str(kept), "log", "--format=%s"], capture_output=True,
                          text=True).stdout == "inner\n"
    assert "a/b/ was a git repository with no commit" in res.stdout, res.stdout
    assert state(plain)["workspaces"] == []
