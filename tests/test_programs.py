"""Programs (``async def run(input, rt)``) on real git repositories, through the real command line
(and in-process for abort-all), plus the three examples of examples/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, has_jj, make_repo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write_program(tmp_path: Path, body: str, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def run_dir(repo: Path) -> Path:
    runs = corral_state(repo)["runs"]
    assert len(runs) == 1, runs
    return repo / ".git" / "corral" / "runs" / runs[0]


def events(repo: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir(repo) / "events.jsonl").read_text().splitlines() if l.strip()]


def workspace_paths(repo: Path) -> list[Path]:
    state = json.loads((run_dir(repo) / "run.json").read_text())
    return [Path(t["workspace"]) for t in state["tasks"].values() if t.get("workspace")]


def assert_no_workspace_left(repo: Path) -> None:
    assert corral_state(repo)["worktrees"] == []
    for p in workspace_paths(repo):
        assert not p.exists(), f"workspace directory {p} left behind"


# ------------------------------------------------------------------------------------ examples
def test_git_example_merges_branches_with_merger_and_lands(repo, tmp_path):
    base = git(repo, "rev-parse", "main")
    res = corral("run", str(EXAMPLES / "git_branches.py"), "--headless", "--approve", "all",
                 "--input", '{"delay": 0}', cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    # every branch reached main: the one corral merged, and the two the merger agent merged by hand
    files = git(repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    for name in ("slugify", "wordcount", "roman"):
        assert f"corral_example/{name}.py" in files
        assert f"corral_example/test_{name}.py" in files
    changes = git(repo, "show", "main:corral_example/CHANGES.md").splitlines()
    assert sorted(changes) == ["- roman()", "- slugify()", "- wordcount()"]
    assert git(repo, "merge-base", "--is-ancestor", base, "main", check=False) == ""
    result = json.loads((run_dir(repo) / "result.json").read_text())
    assert result["status"] == "complete" and result["landed"] is True
    assert result["merged_by_corral"] == ["slugify"]
    assert result["merged_by_merger"] == ["wordcount", "roman"]
    report = Path(result["reportPath"])
    assert report.parent == run_dir(repo) and "## merger" in report.read_text()
    assert "program returned" in res.stdout and '"status": "complete"' in res.stdout
    # panes: unique readable names
    names = [e["task"] for e in events(repo) if e["type"] == "task_status" and e["status"] == "pending"]
    assert names == ["installer", "installer-2", "installer-3", "slugify", "wordcount", "roman", "merger"]
    assert_no_workspace_left(repo)
    assert corral_state(repo)["branches"] == []  # all of it landed: no branch needed to keep work
    assert "outcome: **completed** (exit code 0)" in (run_dir(repo) / "report.md").read_text()


def test_fanout_example_integrator_runs_tests_and_lands(repo, tmp_path):
    res = corral("run", str(EXAMPLES / "fanout_integrator.py"), "--headless", "--approve", "all",
                 "--input", '{"delay": 0}', cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[integrator] Ran 3 tests" in res.stdout
    result = json.loads((run_dir(repo) / "result.json").read_text())
    assert result["status"] == "success" and result["landed"] is True
    assert result["parts"] == ["slugify", "wordcount", "roman"]
    assert "OK" in result["report"]
    assert Path(result["reportPath"]).is_file()
    # the merged result on main passes its tests
    git(repo, "checkout", "-q", "main")
    test = subprocess.run([sys.executable, "-m", "unittest", "discover", "-s", "corral_example", "-t", "."],
                          cwd=repo, capture_output=True, text=True)
    assert test.returncode == 0 and "Ran 3 tests" in test.stderr
    assert not any("__pycache__" in f for f in git(repo, "ls-files").splitlines())
    assert_no_workspace_left(repo)
    assert corral_state(repo)["branches"] == []


def test_fanout_example_not_approved_keeps_work_on_branches(repo, tmp_path):
    base = git(repo, "rev-parse", "main")
    res = corral("run", str(EXAMPLES / "fanout_integrator.py"), "--headless", "--approve", "none",
                 "--input", '{"delay": 0}', cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert git(repo, "rev-parse", "main") == base
    result = json.loads((run_dir(repo) / "result.json").read_text())
    assert result["landed"] is False
    branches = corral_state(repo)["branches"]
    assert sorted(b.rsplit("/", 1)[1] for b in branches) == ["integrator", "roman", "slugify", "wordcount"]
    assert "corral_example/roman.py" in git(repo, "ls-tree", "-r", "--name-only", branches[0].rsplit("/", 1)[0]
                                            + "/integrator").splitlines()
    assert "Branches kept" in (run_dir(repo) / "report.md").read_text()
    assert_no_workspace_left(repo)


def _jj_backend_present() -> bool:
    try:
        import corral.core.vcs.jj  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.jj
@pytest.mark.parametrize("example", ["jj_merger.py", "fanout_integrator.py"])
def test_jj_examples_combine_changes_and_land(tmp_path, example):
    if not has_jj():
        pytest.skip("jj is not installed")
    if not _jj_backend_present():
        pytest.skip("the jj backend (corral/core/vcs/jj.py) is not in this build")
    repo = make_repo(tmp_path / "repo")
    subprocess.run(["jj", "git", "init", "--colocate"], cwd=repo, check=True, capture_output=True)
    env = {"JJ_USER": "Test Author", "JJ_EMAIL": "author@example.com"}
    res = corral("run", str(EXAMPLES / example), "--headless", "--approve", "all",
                 "--input", '{"delay": 0}', "--base", "main", cwd=repo, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    out = subprocess.run(["jj", "file", "list", "-r", "main"], cwd=repo, capture_output=True, text=True).stdout
    for name in ("slugify", "wordcount", "roman"):
        assert f"corral_example/{name}.py" in out
    ws = subprocess.run(["jj", "workspace", "list"], cwd=repo, capture_output=True, text=True).stdout
    assert ws.strip().count("\n") == 0, ws  # only the default workspace is left
    result = json.loads(Path(res.stdout.split("stored in ", 1)[1].split("):", 1)[0]).read_text())
    assert result["landed"] is True
    bookmarks = subprocess.run(["jj", "bookmark", "list"], cwd=repo, capture_output=True, text=True).stdout
    assert "corral/" not in bookmarks, bookmarks  # everything landed: no bookmark needed to keep work


def test_jj_example_in_a_git_repo_fails_clearly(repo):
    res = corral("run", str(EXAMPLES / "jj_merger.py"), "--headless", cwd=repo)
    assert res.returncode == 1
    assert "is not a jj repository" in res.stdout
    assert corral_state(repo)["worktrees"] == []


# ------------------------------------------------------------------------------- the runtime API
def test_parallel_results_in_order_with_attributes_log_and_artifact(repo, tmp_path):
    prog = write_program(tmp_path, """
        async def run(input, rt):
            specs = [{"agent": "worker", "profile": "shell", "task": f"sleep {d}; echo done {i}", "step": i}
                     for i, d in enumerate([0.4, 0.2, 0])]
            results = await rt.parallel("work", specs)
            rt.observe.log("info", "all done", count=len(results), who=[r.name for r in results])
            path = rt.observe.artifact("notes.md", "# notes\\n")
            h = rt.spawn({"agent": "shell", "task": "echo spawned; exit 3"})
            r = await rt.join(h)
            return {"texts": [x.text for x in results], "agents": [x.agent for x in results],
                    "names": [x.name for x in results], "codes": [x.exit_code for x in results],
                    "cost": [x.usage.cost for x in results], "durations": [x.duration for x in results],
                    "artifact": path, "spawned": [r.agent, r.exit_code, r.text], "input": input}
    """)
    res = corral("run", str(prog), "--headless", "--input", '{"k": [1, 2]}', cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((run_dir(repo) / "result.json").read_text())
    assert result["texts"] == ["done 0", "done 1", "done 2"]  # order of the specs, not of finishing
    assert result["agents"] == ["worker"] * 3
    assert result["names"] == ["worker", "worker-2", "worker-3"]
    assert result["codes"] == [0, 0, 0] and result["cost"] == [None] * 3
    assert result["durations"][0] >= 0.4
    assert result["spawned"] == ["shell", 3, "spawned"]
    assert result["input"] == {"k": [1, 2]}
    assert Path(result["artifact"]) == run_dir(repo) / "notes.md"
    assert (run_dir(repo) / "notes.md").read_text() == "# notes\n"
    logs = [e for e in events(repo) if e["type"] == "log" and e["message"] == "all done"]
    assert logs and logs[0]["data"] == {"count": 3, "who": ["worker", "worker-2", "worker-3"]}
    assert (run_dir(repo) / "logs" / "worker-2.log").read_text().strip() == "done 1"
    assert "notes.md" in (run_dir(repo) / "report.md").read_text()


def test_workspaces_merge_list_of_names_with_strategy_and_forecast(repo, tmp_path):
    prog = write_program(tmp_path, """
        async def run(input, rt):
            made = []
            try:
                for n in ("a", "b", "c"):
                    made.append(await rt.workspaces.create(n))
                listed = [w.task for w in rt.workspaces.list()]
                await rt.parallel("edit", [
                    {"agent": "shell", "task": "echo a > a.txt", "cwd": str(made[0].path)},
                    {"agent": "shell", "task": "echo b > b.txt; echo B > README.md", "cwd": str(made[1].path)},
                    {"agent": "shell", "task": "echo C > README.md", "cwd": str(made[2].path)},
                ])
                fc = await rt.workspaces.forecast(["a", "b", "c"])
                integ, outs = await rt.workspaces.merge(["a", made[1], "c"], strategy="squash")
                return {"listed": listed, "conflicts": {f"{x}+{y}": v for (x, y), v in fc.conflicts.items()},
                        "outcomes": [[o.task, o.ok, o.conflict_files] for o in outs],
                        "integration": integ.task, "head_parents": len(integ.head) > 0}
            finally:
                for w in made:
                    await rt.workspaces.remove(w)
    """)
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((run_dir(repo) / "result.json").read_text())
    assert result["listed"] == ["a", "b", "c"]
    assert result["conflicts"] == {"b+c": ["README.md"]}
    assert result["outcomes"] == [["a", True, []], ["b", True, []], ["c", False, ["README.md"]]]
    # the program left the integration workspace: corral removed it, its branch (unlanded work) kept
    assert "removing 1 workspace(s) the program left: integration" in res.stdout
    assert_no_workspace_left(repo)
    branches = corral_state(repo)["branches"]
    assert sorted(b.rsplit("/", 1)[1] for b in branches) == ["a", "b", "c", "integration"]
    integ = [b for b in branches if b.endswith("/integration")][0]
    assert git(repo, "log", "-1", "--format=%s", integ) == "corral: b (squashed)"


def test_approve_follows_the_approve_flag(repo, tmp_path):
    prog = write_program(tmp_path, """
        async def run(input, rt):
            return {"answer": await rt.approve("go on?", default=True)}
    """)
    for flag, expected in (("all", True), ("none", False)):
        res = corral("run", str(prog), "--headless", "--approve", flag, cwd=repo)
        assert res.returncode == 0, res.stderr
        assert f'"answer": {str(expected).lower()}' in res.stdout
    assert len(corral_state(repo)["runs"]) == 2


def test_agent_flag_gives_the_profile_for_display_names(repo, tmp_path):
    prog = write_program(tmp_path, """
        async def run(input, rt):
            r = await rt.join(rt.spawn({"agent": "Code Reviewer", "task": "echo reviewed"}))
            return [r.agent, r.name, r.profile, r.text]
    """)
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 1 and "give 'profile' when 'agent' is a display name" in res.stdout
    res = corral("run", str(prog), "--headless", "--agent", "shell", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(Path(res.stdout.split("stored in ", 1)[1].split("):", 1)[0]).read_text())
    assert result == ["Code Reviewer", "Code-Reviewer", "shell", "reviewed"]


def test_input_from_file_and_json_mode(repo, tmp_path):
    (tmp_path / "in.json").write_text('{"n": 41}')
    prog = write_program(tmp_path, """
        async def run(input, rt):
            return {"n": input["n"] + 1}
    """)
    res = corral("run", str(prog), "--headless", "--json", "--input", f"@{tmp_path / 'in.json'}", cwd=repo)
    assert res.returncode == 0, res.stderr
    evs = [json.loads(l) for l in res.stdout.splitlines()]
    result = [e for e in evs if e["type"] == "program_result"]
    assert result and result[0]["value"] == {"n": 42}
    assert evs[-1]["type"] == "run_finished" and evs[-1]["exit_code"] == 0


# ------------------------------------------------------------------------- failure and cleanup
def test_exception_in_run_is_reported_with_traceback_exit_1_no_workspace_left(repo, tmp_path):
    prog = write_program(tmp_path, """
        async def run(input, rt):
            ws = await rt.workspaces.create("doomed")
            await rt.join(rt.spawn({"agent": "shell", "task": "echo work > work.txt", "cwd": str(ws.path)}))
            rt.spawn({"agent": "sleeper", "profile": "shell", "task": "sleep 30"})
            helper()

        def helper():
            raise ValueError("the program broke")
    """)
    start = time.monotonic()
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    assert time.monotonic() - start < 15  # the spawned sleeper was stopped, not waited for
    assert "program raised ValueError: the program broke" in res.stdout
    assert "Traceback (most recent call last)" in res.stdout and 'in helper' in res.stdout
    report = (run_dir(repo) / "report.md").read_text()
    assert "## Error" in report and "ValueError: the program broke" in report and f"{prog}" in report
    assert "outcome: **error** (exit code 1)" in report
    errors = [e for e in events(repo) if e["type"] == "log" and e["level"] == "error"]
    assert errors and "Traceback" in errors[0]["data"]["traceback"]
    assert not (run_dir(repo) / "result.json").exists()
    assert_no_workspace_left(repo)
    # no work lost: the workspace's work is kept on its branch
    branches = corral_state(repo)["branches"]
    assert len(branches) == 1 and branches[0].endswith("/doomed")
    assert git(repo, "show", f"{branches[0]}:work.txt") == "work"
    sleeper = json.loads((run_dir(repo) / "run.json").read_text())["tasks"]["sleeper"]
    assert sleeper["status"] == "aborted"


def test_bad_spec_is_an_exception_in_run(repo, tmp_path):
    prog = write_program(tmp_path, """
        async def run(input, rt):
            await rt.parallel("x", [{"agent": "nosuchprofile", "task": "hi"}])
    """)
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 1
    assert "unknown agent profile 'nosuchprofile'" in res.stdout


def test_ctrl_c_mid_program_runs_its_finally_and_cleans_up(repo, tmp_path):
    prog = write_program(tmp_path, """
        import anyio

        async def run(input, rt):
            ws = await rt.workspaces.create("slow")
            try:
                await rt.parallel("work", [{"agent": "shell", "task": "echo started; echo x > x.txt; sleep 30",
                                            "cwd": str(ws.path)}])
                rt.observe.artifact("unreachable.txt", "no")
            finally:
                rt.observe.artifact("finally.txt", "finally ran")
                # the program's own cleanup is left undone on purpose: corral removes the workspace
    """)
    from conftest import FAKES  # noqa: F401  (same env as corral())

    env = dict(os.environ)
    env.pop("CORRAL_RUN", None)
    proc = subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "run", str(prog), "--headless"], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "[shell] started" in line:
                break
        else:
            raise AssertionError("agent never started: " + "".join(lines))
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + out + err
    d = run_dir(repo)
    assert (d / "finally.txt").read_text() == "finally ran"
    assert not (d / "unreachable.txt").exists()
    assert_no_workspace_left(repo)
    branches = corral_state(repo)["branches"]
    assert len(branches) == 1 and git(repo, "show", f"{branches[0]}:x.txt") == "x"
    state = json.loads((d / "run.json").read_text())
    assert state["state"] == "interrupted" and state["exit_code"] == 130
    assert "outcome: **interrupted** (exit code 130)" in (d / "report.md").read_text()


def test_abort_all_cancels_the_program_and_its_finally_runs(repo, tmp_path):
    import anyio

    from corral.core.events import EventBus, TaskOutput
    from corral.core.program import execute_program, load_program, prepare_program
    from corral.core.runtime import PolicyApprover

    prog = load_program(write_program(tmp_path, """
        async def run(input, rt):
            ws = await rt.workspaces.create("w")
            try:
                await rt.join(rt.spawn({"agent": "shell", "task": "echo go; sleep 30", "cwd": str(ws.path)}))
                await rt.join(rt.spawn({"agent": "never", "profile": "shell", "task": "echo never"}))
            finally:
                rt.observe.log("info", "finally block")
                await rt.workspaces.remove(ws)
                rt.observe.artifact("finally.txt", "yes")
    """))
    seen: list = []

    async def main():
        prep = await prepare_program(prog, repo)
        bus = EventBus(prep.run_id)
        holder = {}
        bus.subscribe(seen.append)

        def on_output(ev):
            if isinstance(ev, TaskOutput) and "go" in ev.all_lines():
                holder["rt"].abort_all()

        bus.subscribe(on_output)
        with anyio.fail_after(30):
            return await execute_program(prep, prog, {}, PolicyApprover(False), bus, grace=1,
                                         on_runtime=lambda rt: holder.__setitem__("rt", rt))

    outcome = anyio.run(main)
    assert outcome.exit_code == 130 and outcome.state == "interrupted"
    assert (outcome.run_dir / "finally.txt").read_text() == "yes"
    assert not any(getattr(e, "task", None) == "never" for e in seen)
    assert any(getattr(e, "message", "") == "finally block" for e in seen)
    assert_no_workspace_left(repo)


# ------------------------------------------------------------------------- bad programs: exit 2
BAD_PROGRAMS = {
    "syntax": ("async def run(input, rt)\n    return 1\n", "prog.py:1: syntax error"),
    "no-run": ("async def main(input, rt):\n    return 1\n", "defines no run function"),
    "not-async": ("def run(input, rt):\n    return 1\n", "must be `async def run(input, rt)`"),
    "arity": ("async def run(input):\n    return 1\n", "must take two arguments"),
    "load-error": ("import json\nraise RuntimeError('top-level boom')\n", "prog.py:2: failed to load: RuntimeError"),
}


@pytest.mark.parametrize("kind", sorted(BAD_PROGRAMS))
def test_bad_program_exit_2_nothing_created(repo, tmp_path, kind):
    text, message = BAD_PROGRAMS[kind]
    prog = tmp_path / "prog.py"
    prog.write_text(text)
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}


@pytest.mark.parametrize("args, message", [
    (["missing.py"], "missing.py: no such file"),
    (["PROG", "--input", "{not json"], "--input: not valid JSON"),
    (["PROG", "--input", "@nowhere.json"], "--input @nowhere.json: cannot read"),
    (["PROG", "--verify", "true"], "--verify is for plans"),
    (["PROG", "--task", "a=b"], "not both"),
    (["PROG", "--max-parallel", "2"], "--max-parallel is for plans"),
    (["PROG", "--agent", "nope"], "--agent 'nope': unknown agent profile"),
    (["PROG", "--base", "no-such-rev"], "no-such-rev"),
])
def test_bad_invocation_exit_2_nothing_created(repo, tmp_path, args, message):
    prog = write_program(tmp_path, "async def run(input, rt):\n    return 1\n")
    args = [str(prog) if a == "PROG" else a for a in args]
    res = corral("run", *args, "--headless", cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}


# -------------------------------------------------------------------- one engine, two front doors
def test_plan_pipeline_runs_as_a_program_on_the_same_runtime(repo, tmp_path):
    import anyio

    from corral.core.events import EventBus
    from corral.core.pipeline import execute, prepare
    from corral.core.plan import adhoc_plan
    from corral.core.program import ProgramRuntime, execute_program, pipeline_program
    from corral.core.runtime import PolicyApprover, Runtime

    def plan():
        return adhoc_plan(["one=echo 1 > one.txt", "two=echo 2 > two.txt; echo x >> README.md"], "shell")

    runtimes: list = []

    async def main():
        prep = await prepare(plan(), repo, approve="all")
        program = pipeline_program(prep.plan)
        out = await execute_program(prep, program, {}, PolicyApprover(True), EventBus(prep.run_id),
                                    on_runtime=runtimes.append)
        prep2 = await prepare(plan(), repo, approve="none")
        out2 = await execute(prep2, PolicyApprover(False), EventBus(prep2.run_id), on_runtime=runtimes.append)
        return out, out2

    out, out2 = anyio.run(main)
    assert out.exit_code == 0, (out.run_dir / "report.md").read_text()
    assert out.value == {"tasks": {"one": "merged", "two": "merged"}, "landed": True, "verify_ok": None,
                         "exit_code": 0}
    files = git(repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert "one.txt" in files and "two.txt" in files
    # the plan front door: the same Runtime class underneath
    assert out2.exit_code == 0 and type(runtimes[1]) is Runtime and isinstance(runtimes[0], ProgramRuntime)
    assert corral_state(repo)["worktrees"] == []
    # the second run approved nothing: its work stays on its branches; the first left no branch. Its
    # task "one" changed nothing (one.txt already held "1"), so no branch is kept for it
    assert sorted(b.rsplit("/", 1)[1] for b in corral_state(repo)["branches"]) == ["two"]


def test_program_may_return_results_and_workspaces(repo, tmp_path):
    prog = write_program(tmp_path, """
        from __future__ import annotations

        from dataclasses import dataclass

        @dataclass
        class Summary:   # a program's own dataclass (needs its module registered to be defined)
            name: str
            count: int = 0

        async def run(input, rt):
            ws = await rt.workspaces.create("w")
            results = await rt.parallel("s", [{"agent": "shell", "task": "echo hi > hi.txt", "cwd": str(ws.path)}])
            return {"results": results, "ws": ws.path, "set": {1}, "summary": Summary("s", 2)}
    """)
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((run_dir(repo) / "result.json").read_text())
    r = result["results"][0]
    assert r["agent"] == "shell" and r["exit_code"] == 0 and r["files"] == ["hi.txt"] and "cost" in r["usage"]
    assert result["set"] == [1] and isinstance(result["ws"], str)
    assert result["summary"] == {"name": "s", "count": 2}
    assert_no_workspace_left(repo)


def test_two_merges_in_one_run_get_their_own_integration_workspaces(repo, tmp_path):
    prog = write_program(tmp_path, """
        async def run(input, rt):
            a = await rt.workspaces.create("integration")   # a name the engine also uses
            await rt.parallel("x", [{"agent": "shell", "task": "echo a > a.txt", "cwd": str(a.path)}])
            i1, o1 = await rt.workspaces.merge([a])
            i2, o2 = await rt.workspaces.merge(["integration"], strategy="rebase")
            landed = await rt.workspaces.land(i2)
            return [i1.task, i2.task, i1.ref != i2.ref, landed.ok, [o.ok for o in o1 + o2]]
    """)
    res = corral("run", str(prog), "--headless", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((run_dir(repo) / "result.json").read_text())
    assert result == ["integration-2", "integration-3", True, True, [True, True]]
    assert git(repo, "show", "main:a.txt") == "a"
    assert_no_workspace_left(repo)


# ------------------------------------------------------------------------- with a "real" agent
FAKE_CLAUDE = r'''#!PYTHON
"""A stand-in for `claude -p PROMPT --output-format stream-json --verbose ...`: writes the first
corral_example/*.py file the prompt names, prints Claude Code's stream-json events."""
import json, os, re, sys

argv = sys.argv[1:]
assert argv[0] == "-p" and "--output-format" in argv and "--verbose" in argv, argv
prompt = argv[argv.index("--") + 1] if "--" in argv else argv[1]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"prompt": prompt, "cwd": os.getcwd()}) + "\n")
path = re.search(r"corral_example/\w+\.py", prompt).group(0)
os.makedirs(os.path.dirname(path), exist_ok=True)
open("corral_example/__init__.py", "a").close()
with open(path, "w") as f:
    f.write("# written by the fake claude\n")
def emit(obj):
    print(json.dumps(obj), flush=True)
emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": "s1", "model": "claude-x"})
emit({"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": f"Writing {path}"}]},
      "session_id": "s1"})
emit({"type": "result", "subtype": "success", "is_error": False, "result": f"Wrote {path}.", "session_id": "s1",
      "total_cost_usd": 0.01, "usage": {"input_tokens": 10, "output_tokens": 20}})
'''


def test_git_example_with_a_real_agent_profile_uses_the_prompts(repo, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    fake.write_text(FAKE_CLAUDE.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "claude.log"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log)}
    res = corral("run", str(EXAMPLES / "git_branches.py"), "--headless", "--approve", "all",
                 "--input", '{"agent": "claude"}', cwd=repo, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert len(calls) == 3  # one per task; the installers are shell, and nothing conflicted: no merger
    assert all(c["prompt"].startswith("Create corral_example/") for c in calls)
    assert len({c["cwd"] for c in calls}) == 3 and str(repo) not in {c["cwd"] for c in calls}
    files = git(repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert {"corral_example/slugify.py", "corral_example/wordcount.py", "corral_example/roman.py"} <= set(files)
    result = json.loads((run_dir(repo) / "result.json").read_text())
    assert result["status"] == "complete" and result["merged_by_merger"] == []
    from corral.core.parsers import known_formats

    if "claude-stream-json" in known_formats():  # the Claude parser reads the cost from the result event
        assert result["totalCost"] == pytest.approx(0.03)
    assert_no_workspace_left(repo)
