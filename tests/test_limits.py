"""Limits and clear errors: input nested too deeply, a bare repository, git's and jj's real causes,
prompts over the argv limit, a journal that does not grow with prompts, and a forecast whose cost and
memory stay bounded however many tasks touch the same file."""

from __future__ import annotations

import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import anyio
import pytest

from conftest import corral, corral_state, git, has_jj, make_repo, write_plan
from corral.core.vcs.base import Forecast, VcsError
from test_engine_git import plan_text, run_plan

EMPTY = {"branches": [], "worktrees": [], "runs": []}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------------- input nested too deeply
@pytest.mark.parametrize("kind", ["array", "inline-table"])
def test_plan_nested_thousands_deep_is_refused_with_one_line(repo, tmp_path, kind):
    depth = 5000
    value = "[" * depth + "]" * depth if kind == "array" else "{a = " * depth + "1" + "}" * depth
    plan = write_plan(tmp_path / "deep.toml", f'agent = "shell"\nx = {value}\n')
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert str(plan) in line and "nested too deeply" in line
    assert corral_state(repo) == EMPTY


@pytest.mark.parametrize("depth", [101, 600, 100_000])
def test_program_input_nested_too_deeply_is_refused_with_one_line(repo, tmp_path, depth):
    """100,000 levels break the JSON parser; 600 parse, but broke the journal and the report that
    write the input out (the journal then stopped recording the run)."""
    prog = tmp_path / "prog.py"
    prog.write_text("async def run(input, rt):\n    return 1\n")
    data = tmp_path / "deep.json"
    data.write_text("[" * depth + "]" * depth)
    res = corral("run", str(prog), "--input", f"@{data}", "--headless", cwd=repo)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert f"--input @{data}" in line and "nested more than 100 levels deep" in line
    assert corral_state(repo) == EMPTY


def test_program_input_100_levels_deep_is_accepted(repo, tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("async def run(input, rt):\n    return 1\n")
    res = corral("run", str(prog), "--input", "[" * 100 + "]" * 100, "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert "failed" not in res.stderr


# ------------------------------------------------------------------------------ which repository
def test_bare_repository_is_named_as_such(tmp_path):
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    for args, cwd in ((["--task", "a=echo"], bare), (["--task", "a=echo", "--repo", str(bare)], tmp_path)):
        res = corral("run", *args, "--agent", "shell", "--headless", cwd=cwd)
        assert res.returncode == 2
        line = one_line(res.stderr)
        assert "bare repository" in line and "needs a working tree" in line and "not a git repository" not in line
    assert not (bare / "corral").exists()  # nothing made in it


def test_git_dir_of_a_repository_is_not_a_working_tree(repo):
    res = corral("run", "--task", "a=echo", "--agent", "shell", "--headless", cwd=repo / ".git")
    assert res.returncode == 2
    assert ".git directory" in one_line(res.stderr)
    assert corral_state(repo) == EMPTY


# ------------------------------------------------------------------------ the cause of git's errors
@pytest.mark.skipif(shutil.which("git-lfs") is not None, reason="git-lfs is installed here")
def test_missing_lfs_filter_program_is_named_in_the_task_failure(repo, tmp_path, wt_root):
    """A repository set up for LFS on a machine without git-lfs: checking the workspace out fails,
    and git's last line alone ("the remote end hung up unexpectedly") would not say why."""
    (repo / ".gitattributes").write_text("* filter=lfs\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-q", "-m", "lfs")
    git(repo, "config", "filter.lfs.smudge", "git-lfs smudge -- %f")
    git(repo, "config", "filter.lfs.process", "git-lfs filter-process")
    git(repo, "config", "filter.lfs.required", "true")
    res = run_plan(repo, tmp_path, wt_root, [("a", "echo hi > b.txt")], "--approve", "all")
    assert res.returncode == 1, res.stdout[-3000:]
    failed = [line for line in res.stdout.splitlines() if line.startswith("corral: a: failed")]
    assert failed and "git-lfs" in failed[0] and "not found" in failed[0], res.stdout[-3000:]
    assert corral_state(repo)["worktrees"] == [] and list(wt_root.iterdir()) == []


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_jj_errors_name_their_cause(tmp_path, monkeypatch):
    """jj puts the cause under its error ("Caused by: ..."), and a config error has no "Error:" line at
    all: the message used to be the error alone, or jj's "For help, see ..." line."""
    from corral.core.vcs import open_backend

    cfg = tmp_path / "jjconfig.toml"
    cfg.write_text("")
    monkeypatch.setenv("JJ_CONFIG", str(cfg))
    repo = tmp_path / "repo"
    subprocess.run(["jj", "git", "init", str(repo)], check=True, capture_output=True)

    async def scenario() -> None:
        b = await open_backend(repo)
        with pytest.raises(VcsError) as missing:
            await b.jj("workspace", "add", "--name", "w", str(tmp_path / "no" / "such" / "dir"))
        assert "No such file or directory" in str(missing.value)
        with pytest.raises(VcsError) as config:
            await b.jj("--config", 'x="[', "log", "-r", "@")
        assert "cannot be parsed" in str(config.value) and "TOML parse error" in str(config.value)
        assert "For help" not in str(config.value)

    anyio.run(scenario)


# --------------------------------------------------------------------------- the argv limit
def test_prompt_over_the_argv_limit_is_refused_at_preflight(repo, tmp_path, wt_root):
    prompt = "true " + "x" * 200 * 1024
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("small", "true"), ("big", prompt)]))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert "task 'big'" in line and f"{len(prompt):,} bytes" in line and "131,071" in line
    assert corral_state(repo) == EMPTY and list(wt_root.iterdir()) == []


def test_program_agent_with_a_prompt_over_the_argv_limit_fails_with_the_reason(repo, tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("async def run(input, rt):\n"
                    "    r = await rt.join(rt.spawn({'agent': 'shell', 'task': 'true ' + 'x' * 200 * 1024}))\n"
                    "    return {'status': r.status, 'reason': r.reason}\n")
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    run_dir = repo / ".git" / "corral" / "runs" / corral_state(repo)["runs"][0]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed"
    assert f"{5 + 200 * 1024:,} bytes" in result["reason"] and "131,071" in result["reason"]


def test_run_json_does_not_grow_with_the_prompts(tmp_path):
    """run.json is rewritten on every change of state: the plan (prompts included) is written once,
    to plan.json, beside it."""
    sizes = {}
    for label, filler in (("short", ""), ("long", "x" * 120 * 1024)):
        repo = make_repo(tmp_path / label)
        wt_root = tmp_path / f"wt-{label}"
        wt_root.mkdir()
        tasks = [(f"t{i}", f"echo {i} > f{i}.txt # {filler}") for i in range(3)]
        res = run_plan(repo, tmp_path, wt_root, tasks, "--approve", "all")
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        run_dir = repo / ".git" / "corral" / "runs" / corral_state(repo)["runs"][0]
        state = json.loads((run_dir / "run.json").read_text())
        assert state["plan"] == "plan.json" and state["state"] == "completed"
        plan = json.loads((run_dir / "plan.json").read_text())
        assert [t["prompt"] for t in plan["tasks"]] == [p for _, p in tasks]
        sizes[label] = (run_dir / "run.json").stat().st_size
    assert sizes["long"] < 8 * 1024 and abs(sizes["long"] - sizes["short"]) < 200, sizes


# ---------------------------------------------------------------------------- forecast at scale
def test_trial_pairs_leave_out_the_most_shared_files_beyond_the_cap():
    from corral.core.vcs.base import trial_pairs

    def pairs_of(files: dict[str, list[str]]):
        return trial_pairs(files, {t: f"head-{t}" for t in files})

    # 20 tasks on one file: 190 pairs, all tried
    pairs, crowded = pairs_of({f"t{i:02d}": ["a.txt"] for i in range(20)})
    assert len(pairs) == 190 and crowded == {}
    # 500 tasks on one file: 124,750 pairs, none tried; two of them also share another file: tried
    files = {f"t{i:03d}": ["a.txt"] for i in range(500)}
    files["t007"] = files["t300"] = ["a.txt", "b.txt"]
    pairs, crowded = pairs_of(files)
    assert pairs == [("t007", "t300")] and list(crowded) == ["a.txt"] and len(crowded["a.txt"]) == 500
    fc = Forecast(files=files, crowded=crowded)
    assert len(fc.untried_of("t007")) == 498 and "t300" not in fc.untried_of("t007")
    assert fc.untried_of("t001")["t002"] == ["a.txt"]
    # tasks on disjoint files are never paired; identical heads neither
    assert trial_pairs({"a": ["x"], "b": ["y"], "c": ["x"]}, {"a": "1", "b": "2", "c": "1"}) == ([], {})


def branches_on_one_file(repo: Path, count: int, shared: str = "shared.txt") -> dict[str, str]:
    """``count`` branches from main (made at once with fast-import), each writing its own line into
    ``shared``; t000 and t001 also write the same file ``pair.txt`` differently. Name -> commit."""
    base = git(repo, "rev-parse", "main")
    stream = []
    for i in range(count):
        name = f"t{i:03d}"
        blobs = [(shared, f"{name}\n")] + ([("pair.txt", f"{name}\n")] if i < 2 else [])
        stream.append(f"commit refs/heads/{name}\ncommitter T <t@example.com> 0 +0000\ndata 2\n{i % 10}\n"
                      f"from {base}\n")
        for path, text in blobs:
            stream.append(f"M 100644 inline {path}\ndata {len(text)}\n{text}")
        stream.append("\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input="".join(stream), text=True, check=True)
    return {f"t{i:03d}": git(repo, "rev-parse", f"t{i:03d}") for i in range(count)}


def test_forecast_of_150_tasks_on_one_file_is_capped_and_small(repo):
    """150 tasks editing one file made 11,175 trial merges, each a task started at once (about 7 KB
    apiece: 500 tasks peaked at 883 MB). Now: a fixed pool of workers, and a file shared by too many
    tasks is reported as such instead of trial-merged pair by pair."""
    from corral.core.vcs.base import MAX_TRIAL_MERGES
    from corral.core.vcs.git import GitBackend

    heads = branches_on_one_file(repo, 150)

    async def forecast() -> Forecast:
        backend = await GitBackend.open(repo)
        try:
            return await backend.forecast("main", heads)
        finally:
            await backend.close()

    tracemalloc.start()
    try:
        fc = anyio.run(forecast)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fc.trials <= MAX_TRIAL_MERGES
    assert fc.trials == 1 and fc.conflicts == {("t000", "t001"): ["pair.txt", "shared.txt"]}
    assert list(fc.crowded) == ["shared.txt"] and len(fc.crowded["shared.txt"]) == 150
    assert len(fc.untried_of("t005")) == 149 and "t001" not in fc.untried_of("t000")
    assert peak < 16 * 1024 * 1024, f"{peak / 1e6:.1f} MB"


@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_jj_forecast_of_many_tasks_on_one_file_is_capped(tmp_path, monkeypatch):
    """The jj backend shares the pairing: 21 tasks on one file make 210 pairs, over the cap."""
    from corral.core.vcs import open_backend

    cfg = tmp_path / "jjconfig.toml"
    cfg.write_text("")
    monkeypatch.setenv("JJ_CONFIG", str(cfg))
    repo = make_repo(tmp_path / "repo")
    subprocess.run(["jj", "git", "init", "--colocate"], cwd=repo, check=True, capture_output=True)
    heads = branches_on_one_file(repo, 21)
    subprocess.run(["jj", "git", "import"], cwd=repo, check=True, capture_output=True)

    async def forecast() -> Forecast:
        backend = await open_backend(repo)
        assert backend.kind == "jj"
        return await backend.forecast("main", heads)

    fc = anyio.run(forecast)
    assert fc.trials == 1 and fc.conflicts == {("t000", "t001"): ["pair.txt", "shared.txt"]}
    assert list(fc.crowded) == ["shared.txt"] and len(fc.untried_of("t020")) == 20


def test_headless_forecast_says_which_tasks_were_not_trial_merged(repo, tmp_path, wt_root):
    tasks = [(f"t{i:02d}", f"echo {i} > shared.txt") for i in range(21)]
    res = run_plan(repo, tmp_path, wt_root, tasks, "--approve", "none")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    line = next(line for line in res.stdout.splitlines() if line.startswith("corral: forecast t03:"))
    assert "not trial-merged with 20 task(s) touching the same files" in line and "merges cleanly" not in line
    assert corral_state(repo)["worktrees"] == []


def test_review_screen_shows_pairs_not_trial_merged():
    from corral.core.vcs.base import trial_pairs
    from corral.tui.review_screen import ReviewItem, ReviewScreen

    names = [f"t{i:02d}" for i in range(21)]
    files = {n: ["shared.txt"] for n in names}
    files["t00"] = files["t01"] = ["shared.txt", "pair.txt"]
    _, crowded = trial_pairs(files, {n: n for n in names})
    fc = Forecast(files=files, conflicts={("t00", "t01"): ["pair.txt"]}, crowded=crowded)

    async def load_diff(name: str) -> str:
        return ""

    screen = ReviewScreen([ReviewItem(n, "succeeded", "shell", 1, 1, files[n], True) for n in names], fc, load_diff)
    rows = screen._matrix().plain.splitlines()
    t00 = next(r for r in rows if r.split()[1:2] == ["t00"])  # rows: number, name, then a cell per column
    assert t00.split()[2:5] == ["·", "✗", "?"] and t00.split()[-1] == "ok"
    assert any(r.startswith("?:") for r in rows)
    text = screen._files_text("t05").plain
    assert "not trial-merged with 20 task(s)" in text and "touched by 21 tasks" in text
