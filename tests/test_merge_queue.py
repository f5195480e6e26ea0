"""The merge queue on real git repositories through the real command line: a failing verify is
bisected to land what passes, conflicts are resolved by an agent, kept branches are cleaned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, has_jj, write_plan
from test_engine_git import plan_text


def run_dir_of(repo: Path) -> Path:
    [run] = corral_state(repo)["runs"]
    common = Path(git(repo, "rev-parse", "--git-common-dir"))
    return (common if common.is_absolute() else repo / common) / "corral" / "runs" / run


def events(repo: Path, kind: str) -> list[dict]:
    lines = (run_dir_of(repo) / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def eight_tasks(culprits: set[int]) -> list[tuple[str, str]]:
    """Eight shell agents, each writing its own file; a culprit also writes ``bad-<n>``."""
    return [(f"t{n}", f"echo {n} > f{n}.txt" + (f"; echo bad > bad-{n}" if n in culprits else ""))
            for n in range(8)]


#: fails when any culprit's file is in the merge
VERIFY = "echo checking; ! ls bad-* 2>/dev/null"


def run_queue(repo: Path, tmp_path: Path, wt_root: Path, tasks, **top: object):
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, tasks, verify=VERIFY, **top))
    return corral("run", str(plan), "--headless", "--approve", "all", cwd=repo, timeout=240)


def test_bisect_lands_seven_of_eight_and_marks_the_culprit_verify_failed(repo, tmp_path, wt_root):
    res = run_queue(repo, tmp_path, wt_root, eight_tasks({2}))
    assert res.returncode == 1, res.stdout + res.stderr
    landed = set(git(repo, "ls-tree", "--name-only", "main").split())
    assert {f"f{n}.txt" for n in range(8) if n != 2} <= landed
    assert "f2.txt" not in landed and "bad-2" not in landed
    runs = events(repo, "verify")
    assert len(runs) <= 7  # 2 * log2(8) + 1
    assert runs[0]["tasks"] == [f"t{n}" for n in range(8)] and not runs[0]["ok"]
    assert runs[-1]["ok"] and sorted(runs[-1]["tasks"]) == sorted(f"t{n}" for n in range(8) if n != 2)
    # each verify run after the first is announced in the verify pane
    assert "[verify] verify 2 (bisecting 8 tasks): tasks t0, t1, t2, t3" in res.stdout
    assert "t2: verify-failed" in res.stdout
    run = json.loads((run_dir_of(repo) / "run.json").read_text())
    assert run["tasks"]["t2"]["status"] == "verify-failed"
    assert all(run["tasks"][f"t{n}"]["status"] == "merged" for n in range(8) if n != 2)
    # the home screen counts the tasks, not the integration workspaces bisection made: 8, 7 ok, 1 failed
    from corral.tui.home_screen import run_row

    assert run_row(run)[3:7] == ("8", "7", "1", "yes")
    # the culprit's branch is kept with its work; no integration branch of the bisection is left
    state = corral_state(repo)
    assert [b.rsplit("/", 1)[1] for b in state["branches"]] == ["t2"]
    assert git(repo, "show", f"{state['branches'][0]}:bad-2") == "bad"
    assert state["worktrees"] == [] and list(wt_root.iterdir()) == []
    report = (run_dir_of(repo) / "report.md").read_text()
    assert "| t2 | shell | verify-failed" in report
    assert "## Verify failed with t2 merged" in report and "bad-2" in report.split("## Verify failed")[1]


def test_bisect_finds_two_culprits_among_eight(repo, tmp_path, wt_root):
    res = run_queue(repo, tmp_path, wt_root, eight_tasks({2, 5}))
    assert res.returncode == 1, res.stdout + res.stderr
    landed = set(git(repo, "ls-tree", "--name-only", "main").split())
    assert {f"f{n}.txt" for n in (0, 1, 3, 4, 6, 7)} <= landed
    assert not {"f2.txt", "f5.txt", "bad-2", "bad-5"} & landed
    assert len(events(repo, "verify")) <= 2 * 7 + 1  # about twice one culprit's
    run = json.loads((run_dir_of(repo) / "run.json").read_text())
    assert sorted(n for n, t in run["tasks"].items() if t["status"] == "verify-failed") == ["t2", "t5"]
    assert sorted(b.rsplit("/", 1)[1] for b in corral_state(repo)["branches"]) == ["t2", "t5"]


def test_on_verify_fail_stop_lands_nothing_after_one_verify_run(repo, tmp_path, wt_root):
    before = git(repo, "rev-parse", "main")
    res = run_queue(repo, tmp_path, wt_root, eight_tasks({2}), on_verify_fail="stop")
    assert res.returncode == 1, res.stdout + res.stderr
    assert git(repo, "rev-parse", "main") == before
    assert len(events(repo, "verify")) == 1
    assert "verify-failed" not in res.stdout
    branches = corral_state(repo)["branches"]
    assert any(b.endswith("/integration") for b in branches) and len(branches) == 9


def resolver_plan(tmp_path: Path, wt_root: Path, resolve: str, script: str,
                  verify: str = "grep -q 30 src/app.py") -> Path:
    """Two tasks that edit the same line, one beside them, and a shell resolver running ``script``
    (its prompt written to ``prompt.txt`` beside the repository)."""
    tasks = [("first", "echo 'VALUE = 10' > src/app.py"), ("second", "echo 'VALUE = 20' > src/app.py"),
             ("other", "echo x > x.txt")]
    body = plan_text(wt_root, tasks, resolve=resolve, resolver="fixer", verify=verify)
    command = ["sh", "-c", f'printf %s "$0" > {tmp_path / "prompt.txt"}; {script}', "{prompt}"]
    body += f'\n[agents.fixer]\ncommand = {json.dumps(command)}\nformat = "text"\n'

    return write_plan(tmp_path / "plan.toml", body)


def test_a_resolver_agent_settles_a_conflict_and_both_tasks_land(repo, tmp_path, wt_root):
    plan = resolver_plan(tmp_path, wt_root, "agent", "printf 'VALUE = 30\\n' > src/app.py && git add -A && "
                                                    "git commit -q --no-edit")
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    # the resolution landed, and with it both tasks' work (their commits are in base's history)
    assert git(repo, "show", "main:src/app.py") == "VALUE = 30"
    assert (repo / "x.txt").exists()
    run = json.loads((run_dir_of(repo) / "run.json").read_text())
    assert run["tasks"]["first"]["status"] == run["tasks"]["second"]["status"] == "merged"
    assert run["tasks"]["resolve-second"]["status"] == "succeeded"
    for task in ("first", "second"):
        assert git(repo, "log", "--format=%s", "main").count(f"corral: {task}") == 1
    prompt = (tmp_path / "prompt.txt").read_text()
    assert "conflicts in: src/app.py" in prompt
    assert "echo 'VALUE = 10' > src/app.py" in prompt and "echo 'VALUE = 20' > src/app.py" in prompt
    state = corral_state(repo)
    assert state["branches"] == [] and state["worktrees"] == []


def test_a_resolver_that_leaves_markers_changes_nothing(repo, tmp_path, wt_root):
    plan = resolver_plan(tmp_path, wt_root, "agent", "git add -A && git commit -q --no-edit")
    res = corral("run", str(plan), "--headless", "--approve", "all", "--verify", "true", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "second: conflict not resolved: conflict markers left in src/app.py" in res.stdout
    assert git(repo, "show", "main:src/app.py") == "VALUE = 10"  # first and other landed, no markers
    assert (repo / "x.txt").exists()
    run = json.loads((run_dir_of(repo) / "run.json").read_text())
    assert run["tasks"]["second"]["status"] == "conflict"
    assert run["tasks"]["resolve-second"]["status"] == "failed"
    assert [b.rsplit("/", 1)[1] for b in corral_state(repo)["branches"]] == ["second"]


def test_resolve_ask_with_nobody_to_ask_leaves_the_conflict(repo, tmp_path, wt_root):
    plan = resolver_plan(tmp_path, wt_root, "ask", "exit 9")
    res = corral("run", str(plan), "--headless", "--approve", "all", "--verify", "true", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    assert not (tmp_path / "prompt.txt").exists()  # the resolver never ran
    assert "second: CONFLICT merging (merge) in src/app.py; left out" in res.stdout


def test_clean_branches_deletes_merged_and_empty_ones_and_unmerged_only_by_name(repo, tmp_path, wt_root):
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("merged", "echo 1 > one.txt"),
                                                                   ("unmerged", "echo 2 > two.txt")]))
    res = corral("run", str(plan), "--headless", "--approve", "none", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    kept = {b.rsplit("/", 1)[1]: b for b in corral_state(repo)["branches"]}
    git(repo, "merge", "-q", "--no-edit", kept["merged"])  # its work reached base by hand
    run = kept["merged"].split("/")[1]
    git(repo, "branch", f"corral/{run}/empty", "HEAD~1")  # holds nothing of its own
    git(repo, "branch", f"corral/{run}/mine", "HEAD")
    git(repo, "checkout", "-q", f"corral/{run}/mine")  # the user's checkout is on it
    git(repo, "branch", "feature", "main")  # not corral's: never touched
    res = corral("clean", "--branches", "--dry-run", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"would delete branch {kept['merged']}" in res.stdout
    assert len(corral_state(repo)["branches"]) == 4  # --dry-run changed nothing
    # a name that is not a corral branch: one line, exit 2, nothing deleted
    res = corral("clean", "--branches", "feature", cwd=repo)
    assert res.returncode == 2 and "--branches feature: no such corral branch" in res.stderr, res.stdout + res.stderr
    assert len(corral_state(repo)["branches"]) == 4
    res = corral("clean", "--branches", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"kept branch {kept['unmerged']}: holds work not merged into base" in res.stdout
    assert sorted(corral_state(repo)["branches"]) == sorted([kept["unmerged"], f"corral/{run}/mine"])
    # named, a branch with unmerged work goes too; the one checked out never does
    git(repo, "checkout", "-q", "main")
    res = corral("clean", "--branches", kept["unmerged"], cwd=repo)
    assert res.returncode == 0 and f"deleted branch {kept['unmerged']} (named)" in res.stdout, res.stdout
    assert corral_state(repo)["branches"] == [f"corral/{run}/mine"]
    assert git(repo, "rev-parse", "feature") == git(repo, "rev-parse", "main")


def test_a_dirty_checkout_of_base_is_said_at_preflight_before_any_agent_runs(repo, tmp_path, wt_root):
    (repo / "src/app.py").write_text("VALUE = 'mine, uncommitted'\n")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt")]))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr  # landed beside it: the landing does not change it
    warning = f"warning: main is checked out at {repo} with uncommitted changes (src/app.py)"
    assert warning in res.stdout
    assert res.stdout.index(warning) < res.stdout.index("one: running")
    assert (repo / "src/app.py").read_text() == "VALUE = 'mine, uncommitted'\n"


def test_bisecting_a_merge_with_a_resolved_conflict_resolves_it_again(repo, tmp_path, wt_root):
    """A conflict the resolver settled in the full merge conflicts again in the subsets bisection
    merges: it goes to the resolver there too, so only the real culprit is left out."""
    tasks = [("first", "echo 'VALUE = 10' > src/app.py"), ("second", "echo 'VALUE = 20' > src/app.py"),
             ("other", "echo x > x.txt"), ("bad", "echo bad > bad-1")]
    body = plan_text(wt_root, tasks, resolve="agent", resolver="fixer", verify=VERIFY)
    command = ["sh", "-c", "printf 'VALUE = 30\\n' > src/app.py && git add -A && git commit -q --no-edit"]
    body += f'\n[agents.fixer]\ncommand = {json.dumps(command)}\nformat = "text"\n'
    plan = write_plan(tmp_path / "plan.toml", body)
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo, timeout=240)
    assert res.returncode == 1, res.stdout + res.stderr
    run = json.loads((run_dir_of(repo) / "run.json").read_text())
    assert {n: t["status"] for n, t in run["tasks"].items() if not n.startswith(("resolve", "integration"))} == {
        "first": "merged", "second": "merged", "other": "merged", "bad": "verify-failed"}
    assert git(repo, "show", "main:src/app.py") == "VALUE = 30" and (repo / "x.txt").exists()
    assert not (repo / "bad-1").exists()


def changelog_tasks() -> list[tuple[str, str]]:
    return [("one", "echo 'one' >> CHANGELOG"), ("two", "echo 'two' >> CHANGELOG")]


def test_a_union_merged_changelog_is_forecast_and_merged_alike(repo, tmp_path, wt_root):
    """merge=union in base's .gitattributes: the forecast's trial merges and the real merge both go
    by it, though the user's checkout (main) has no such attribute; and the other way round."""
    git(repo, "checkout", "-q", "-b", "release")
    (repo / ".gitattributes").write_text("CHANGELOG merge=union\n")
    (repo / "CHANGELOG").write_text("start\n")
    (repo / "docs/sub").mkdir(parents=True)
    (repo / "docs/.gitattributes").write_text("NEWS merge=union\n")  # nested: for NEWS at any depth below
    (repo / "docs/sub/NEWS").write_text("news\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "changelog, merged by union")
    git(repo, "checkout", "-q", "main")
    news = [("three", "echo 3 >> docs/sub/NEWS"), ("four", "echo 4 >> docs/sub/NEWS")]
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, changelog_tasks() + news, base="release"))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "forecast one: 1 file(s) [CHANGELOG]; merges cleanly" in res.stdout
    assert "forecast three: 1 file(s) [docs/sub/NEWS]; merges cleanly" in res.stdout
    assert git(repo, "show", "release:CHANGELOG").splitlines() == ["start", "one", "two"]
    assert git(repo, "show", "release:docs/sub/NEWS").splitlines() == ["news", "3", "4"]
    # the other way round: the user's checkout says union, base does not: both see the conflict
    git(repo, "checkout", "-q", "-b", "plain", "release")
    git(repo, "rm", "-q", ".gitattributes")
    git(repo, "commit", "-q", "-m", "no union")
    git(repo, "checkout", "-q", "release")
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, changelog_tasks(), base="plain"))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "forecast one: 1 file(s) [CHANGELOG]; would conflict with two" in res.stdout
    assert "two: CONFLICT merging (merge) in CHANGELOG" in res.stdout


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_bisect_in_a_jj_repository(jj_repo, tmp_path, wt_root):
    from test_jj import file_at, plan as jj_plan, run as jj_run, state

    repo = jj_repo
    tasks = dict(eight_tasks({1})[:4])
    res = jj_run(repo, jj_plan(tmp_path, tasks, base="main", verify=VERIFY), "--approve", "all", wt_root=wt_root)
    assert res.returncode == 1, res.stdout + res.stderr
    assert all(file_at(repo, "main", f"f{n}.txt") == f"{n}\n" for n in (0, 2, 3))
    assert file_at(repo, "main", "f1.txt") is None and file_at(repo, "main", "bad-1") is None
    assert "t1: verify-failed" in res.stdout
    left = state(repo)
    assert [b.rsplit("/", 1)[1] for b in left["bookmarks"]] == ["t1"] and left["workspaces"] == []


def jj_resolver_run(repo: Path, tmp_path: Path, wt_root: Path, script: str, verify: str = "grep -q 30 src/app.py"):
    """The resolver plan's tasks on jj, the shell resolver running ``script`` in the integration
    workspace (its prompt in ``prompt.txt``; the conflicted file as it found it in ``seen.txt``)."""
    from test_jj import run as jj_run

    plan = resolver_plan(tmp_path, wt_root, "agent", f"cp src/app.py {tmp_path / 'seen.txt'}; {script}", verify)
    return jj_run(repo, plan, "--approve", "all", wt_root=wt_root)


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_a_resolver_agent_settles_a_jj_conflict_and_both_tasks_land(jj_repo, tmp_path, wt_root):
    from test_jj import file_at, jj, run_json, state

    res = jj_resolver_run(jj_repo, tmp_path, wt_root, "printf 'VALUE = 30\\n' > src/app.py")
    assert res.returncode == 0, res.stdout + res.stderr
    # the resolver saw the conflict as git-style markers in the file, and the files named in its prompt
    seen = (tmp_path / "seen.txt").read_text()
    assert "<<<<<<<" in seen and "VALUE = 10" in seen and "VALUE = 20" in seen
    prompt = (tmp_path / "prompt.txt").read_text()
    assert "conflicts in: src/app.py" in prompt and "jj resolve --list" in prompt
    # the resolution landed with both tasks' changes in main's history, no conflict anywhere
    assert file_at(jj_repo, "main", "src/app.py") == "VALUE = 30\n" and file_at(jj_repo, "main", "x.txt") == "x\n"
    assert jj(jj_repo, "log", "-r", "conflicts()", "--no-graph", "-T", "commit_id").strip() == ""
    subjects = jj(jj_repo, "log", "-r", "::main", "--no-graph", "-T", 'description.first_line() ++ "\\n"')
    assert "corral: merge second" in subjects
    run = run_json(jj_repo)
    assert run["tasks"]["first"]["status"] == run["tasks"]["second"]["status"] == "merged"
    assert run["tasks"]["resolve-second"]["status"] == "succeeded"
    left = state(jj_repo)
    assert left["bookmarks"] == [] and left["workspaces"] == []


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
@pytest.mark.parametrize("script, why", [
    ("true", "conflicts left in src/app.py"),  # exits without touching the markers
    ("printf '<<<<<<< mine\\nVALUE = 30\\n' > src/app.py", "conflict markers left in src/app.py"),
    ("printf 'VALUE = 30\\n' > src/app.py; exit 3", "the resolver failed"),
])
def test_a_jj_resolver_that_does_not_resolve_changes_nothing(jj_repo, tmp_path, wt_root, script, why):
    from test_jj import file_at, jj, run_json, state

    res = jj_resolver_run(jj_repo, tmp_path, wt_root, script, verify="true")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"second: conflict not resolved: {why}" in res.stdout
    # first and other landed; no marker, no conflict; second's work is kept on its bookmark
    assert file_at(jj_repo, "main", "src/app.py") == "VALUE = 10\n" and file_at(jj_repo, "main", "x.txt") == "x\n"
    assert jj(jj_repo, "log", "-r", "conflicts()", "--no-graph", "-T", "commit_id").strip() == ""
    run = run_json(jj_repo)
    assert run["tasks"]["second"]["status"] == "conflict"
    assert run["tasks"]["resolve-second"]["status"] == "failed"
    left = state(jj_repo)
    assert [b.rsplit("/", 1)[1] for b in left["bookmarks"]] == ["second"] and left["workspaces"] == []
    assert file_at(jj_repo, left["bookmarks"][0], "src/app.py") == "VALUE = 20\n"


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_a_jj_resolution_that_fails_verify_does_not_land(jj_repo, tmp_path, wt_root):
    """A resolver that commits garbage: the merge is resolved, but verify checks it like any other
    merge and bisects the merge down to what passes: the resolved task is left out."""
    from test_jj import file_at, run_json

    res = jj_resolver_run(jj_repo, tmp_path, wt_root, "printf 'garbage\\n' > src/app.py",
                          verify="grep -q VALUE src/app.py")
    assert res.returncode == 1, res.stdout + res.stderr
    assert file_at(jj_repo, "main", "src/app.py") == "VALUE = 10\n" and file_at(jj_repo, "main", "x.txt") == "x\n"
    assert run_json(jj_repo)["tasks"]["second"]["status"] == "verify-failed"
