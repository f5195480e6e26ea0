"""The built-in agent profiles end to end: the real ``corral`` CLI runs plans whose agents are the
executable fakes in tests/fakes (first on PATH), which read their argv like the real CLIs and replay
what the real CLIs printed for a small task (recorded against a local stand-in of each model API,
tests/fakes/transcripts). Checked: pane lines (output events), activity, final text, cost and
tokens in ``--json`` events and in report.md, failures reported the agents' own ways, timeouts
without orphans, and the preflight refusal of a missing agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import FAKES, corral, corral_state, git, has_jj, write_plan
from corral.core.agents import BUILTIN, Profile, ProfileError, profile_from_table

AGENTS = ["claude", "codex", "aider", "gemini", "opencode", "pi"]


def fake_env(tmp_path: Path, path: str | None = None) -> dict[str, str]:
    return {"PATH": f"{FAKES}{os.pathsep}{path or os.environ.get('PATH', '')}",
            "FAKE_ARGV_LOG": str(tmp_path / "argv.jsonl")}


def events(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        if line.strip():
            out.append(json.loads(line))  # --json: every stdout line is one JSON event
    return out


def by_task(evs: list[dict], kind: str) -> dict[str, list[dict]]:
    res: dict[str, list[dict]] = {}
    for e in evs:
        if e["type"] == kind:
            res.setdefault(e["task"], []).append(e)
    return res


def argv_log(tmp_path: Path) -> dict[str, list[str]]:
    calls = [json.loads(l) for l in (tmp_path / "argv.jsonl").read_text().splitlines()]
    return {c["agent"]: c["argv"] for c in calls}


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


def processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read() and pid_alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                pass
    return found


# ------------------------------------------------------------------------------------ all six
ALL_SIX = """
[[tasks]]
name = "c1"
agent = "claude"
prompt = "- a prompt that starts with a dash file=claude.txt"
system_prompt = "You are careful."

[[tasks]]
name = "x1"
agent = "codex"
prompt = "write file=codex.txt"
system_prompt = "You are careful."

[[tasks]]
name = "a1"
agent = "aider"
prompt = "write file=aider.txt"

[[tasks]]
name = "g1"
agent = "gemini"
prompt = "write file=gemini.txt"

[[tasks]]
name = "o1"
agent = "opencode"
prompt = "write file=opencode.txt"

[[tasks]]
name = "p1"
agent = "pi"
prompt = "write file=pi.txt"
system_prompt = "Be brief."
"""

#: what the recorded real CLIs show (tests/fakes/transcripts/*-write.json)
EXPECTED_LINES = {
    "c1": ["claude session started (model claude-opus-4-8[1m], permission mode acceptEdits)",
           "→ Write: claude.txt", "✓ success, 2 turn(s), 0.5s, $0.0590"],
    "x1": ["I'll create codex.txt with a greeting.", "edited: codex.txt (add)",
           "✓ turn completed: 6400 input tokens (4000 cached), 300 output tokens"],
    "a1": ["Aider v0.86.2", "Tokens: 9.2k sent, 3.0k cache write, 2.0k cache hit, 150 received.",
           "Cost: $0.02 message, $0.02 session.", "Applied edit to aider.txt"],
    "g1": ["gemini session started (model auto)", "I'll create gemini.txt with a greeting.", "→ write_file: gemini.txt",
           "✓ success, 0.9s, 10050 tokens, 1 tool call(s)"],
    "o1": ["I'll create opencode.txt with a greeting.", "→ write: opencode.txt", "✓ done ($0.0129, 6700 tokens)"],
    "p1": ["pi session started", "I'll create pi.txt with a greeting.", "→ write: pi.txt",
           "✓ done ($0.0129, 6700 tokens)"],
}


def final(name: str) -> str:
    return f"Done: created {name}.txt with a greeting; run it with `python {name}.txt` from the repository root to see it."


def test_all_six_agents_run_with_their_output_parsed(repo, wt_root, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(f'worktree_root = "{wt_root}"\n' + ALL_SIX)  # top-level keys before the tables
    res = corral("run", str(plan), "--headless", "--json", "--approve", "all", cwd=repo, env=fake_env(tmp_path))
    assert res.returncode == 0, res.stderr + res.stdout[-3000:]
    evs = events(res.stdout)
    output = {t: [e["line"] for e in es] for t, es in by_task(evs, "output").items()}
    finished = {t: es[-1] for t, es in by_task(evs, "task_finished").items()}
    activity = {t: [e["text"] for e in es] for t, es in by_task(evs, "activity").items()}

    for task, lines in EXPECTED_LINES.items():
        for line in lines:
            assert line in output[task], (task, line, output[task])
        if task != "a1":  # structured formats: no raw JSON reaches the pane
            assert not [l for l in output[task] if l.lstrip().startswith("{")], output[task]
        assert activity[task], task  # the status line moved
        name = {"c1": "claude", "x1": "codex", "a1": "aider", "g1": "gemini", "o1": "opencode", "p1": "pi"}[task]
        assert finished[task]["status"] == "succeeded"
        assert finished[task]["files"] == [f"{name}.txt"]  # aider's repo-map cache is not part of its work
        assert finished[task]["text"].endswith(final(name)), finished[task]["text"]
    assert "Write: claude.txt" in activity["c1"] and activity["c1"][-1] == "done"
    assert activity["o1"][-1] == "done"  # opencode 1.18 sends no "done" event: its last step says it
    # aider's banner is no part of its reply, and its widened terminal keeps the reply's lines whole
    assert finished["a1"]["text"] == f"I'll create aider.txt with a greeting.\n\n[edit aider.txt]\n\n{final('aider')}"

    costs = {t: f["cost"] for t, f in finished.items()}
    assert costs == {"c1": pytest.approx(0.059), "x1": None, "a1": pytest.approx(0.02), "g1": None,
                     "o1": pytest.approx(0.0129), "p1": pytest.approx(0.0129)}
    tokens = {t: f["tokens"] for t, f in finished.items()}
    # aider: 9.2k sent (cache writes included) + 2.0k cache hits + 150 received
    assert tokens == {"c1": 12700, "x1": 6700, "a1": 11350, "g1": 10050, "o1": 6700, "p1": 6700}

    run_finished = [e for e in evs if e["type"] == "run_finished"][-1]
    assert run_finished["cost"] == pytest.approx(0.1048)
    assert run_finished["tokens"] == 54200  # added up by hand
    assert {r["task"]: r["tokens"] for r in run_finished["summary"]}["x1"] == 6700

    report = Path(run_finished["report"]).read_text()
    assert "- total cost: $0.1048" in report
    assert "| x1 | codex | merged | " in report and "| 6.7k tokens |" in report
    assert "| c1 | claude | merged | " in report and "| $0.0590 |" in report
    assert "- usage: $0.0590, 12700 tokens (12400 in, 300 out)" in report
    for name in ("claude", "codex", "aider", "gemini", "opencode", "pi"):
        assert final(name) in report
    assert "[edit aider.txt]" in report  # aider's edit block, summarised in its final text

    # the work landed, without aider's own state; nothing left behind
    for name in ("claude", "codex", "aider", "gemini", "opencode", "pi"):
        assert (repo / f"{name}.txt").read_text() == 'print("hello")\n'
    assert not [f for f in git(repo, "ls-files").split() if f.startswith(".aider")], "aider's state was committed"
    assert not (repo / ".gitignore").exists()
    state = corral_state(repo)
    assert state["branches"] == [] and state["worktrees"] == [] and not list(wt_root.iterdir())

    argv = argv_log(tmp_path)
    assert argv["claude"][-2:] == ["--", "- a prompt that starts with a dash file=claude.txt"]
    assert argv["claude"][argv["claude"].index("--append-system-prompt") + 1] == "You are careful."
    assert argv["codex"][-2:] == ["--", "You are careful.\n\nwrite file=codex.txt"]  # no flag: prepended
    assert "--append-system-prompt" not in argv["aider"] and "--message=write file=aider.txt" in argv["aider"]
    assert argv["pi"][argv["pi"].index("--append-system-prompt") + 1] == "Be brief."
    assert argv["gemini"][-1] == "--prompt=write file=gemini.txt"
    ws = argv["opencode"][argv["opencode"].index("--dir") + 1]  # opencode is told its workspace
    assert ws.startswith(str(wt_root)) and argv["opencode"][-2:] == ["--", "write file=opencode.txt"]


def test_headless_lines_show_usage(repo, wt_root, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", f"""
        worktree_root = "{wt_root}"
        [[tasks]]
        name = "c"
        agent = "claude"
        prompt = "go"
        [[tasks]]
        name = "g"
        agent = "gemini"
        prompt = "go"
    """)
    res = corral("run", str(plan), "--headless", "--approve", "none", cwd=repo, env=fake_env(tmp_path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "[c] → Write: claude.txt" in out and "[g] → write_file: gemini.txt" in out
    assert "c: agent exited with 0 after" in out and ", $0.0590; 1 file(s) changed" in out
    assert ", 10.1k tokens; 1 file(s) changed" in out
    assert "total cost: $0.0590 (22750 tokens)" in out
    assert '{"type"' not in out


# ---------------------------------------------------------------------------------- failures
FAILURES = """
[[tasks]]
name = "claude-is-error"
agent = "claude"
prompt = "try +fail exit=0 file=c.txt"

[[tasks]]
name = "aider-api-error"
agent = "aider"
prompt = "try +fail file=a.txt"

[[tasks]]
name = "codex-failed"
agent = "codex"
prompt = "try +fail file=x.txt"

[[tasks]]
name = "gemini-exit-3"
agent = "gemini"
prompt = "try exit=3 file=g.txt"

[[tasks]]
name = "pi-garbage"
agent = "pi"
prompt = "try +garbage file=p.txt"

[[tasks]]
name = "opencode-big"
agent = "opencode"
prompt = "try +big file=o.txt"
"""


def test_failures_reported_the_agents_own_ways(repo, wt_root, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(f'worktree_root = "{wt_root}"\napprove = "none"\n' + FAILURES)
    res = corral("run", str(plan), "--headless", "--json", cwd=repo, env=fake_env(tmp_path))
    assert res.returncode == 1, res.stderr
    evs = events(res.stdout)
    finished = {t: es[-1] for t, es in by_task(evs, "task_finished").items()}
    output = {t: [e["line"] for e in es] for t, es in by_task(evs, "output").items()}

    # exit code 0, but the result event says is_error
    f = finished["claude-is-error"]
    assert (f["status"], f["exit_code"]) == ("failed", 0)
    assert f["reason"] == ("claude reported an error: Failed to authenticate. API Error: 401 Invalid API key "
                           "(stand-in: scenario error)")
    assert f["cost"] == 0.0
    # aider exits 0 after an API error
    f = finished["aider-api-error"]
    assert (f["status"], f["exit_code"]) == ("failed", 0)
    assert f["reason"].startswith("aider: litellm.AuthenticationError: AnthropicException")
    # a non-zero exit says why when the agent said why
    f = finished["codex-failed"]
    assert f["status"] == "failed"
    assert f["reason"].startswith("exit code 1: codex: unexpected status 401 Unauthorized: Invalid API key")
    assert any(line.startswith("✗ turn failed: unexpected status 401") for line in output["codex-failed"])
    assert finished["gemini-exit-3"]["reason"] == "exit code 3"
    # malformed and unknown lines are shown as text and break nothing
    f = finished["pi-garbage"]
    assert f["status"] == "succeeded" and f["cost"] == pytest.approx(0.0129)
    for line in ("this is not json {", '{"type": "assistant", "message": ', "[1, 2, 3]",
                 '{"type":"mystery_event","x":1}'):
        assert line in output["pi-garbage"]
    # an event line far longer than a pane line is parsed whole: the final text is complete
    f = finished["opencode-big"]
    assert f["status"] == "succeeded" and len(f["text"]) > 20_000 and f["text"].endswith("0123456789")
    assert f["cost"] == pytest.approx(0.0129)

    # the work of a failed task is kept on its branch
    ref = next(b for b in corral_state(repo)["branches"] if b.endswith("/gemini-exit-3"))
    assert git(repo, "show", f"{ref}:g.txt") == 'print("hello")'
    report = Path([e for e in evs if e["type"] == "run_finished"][-1]["report"]).read_text()
    assert "| claude-is-error | claude | failed (claude reported an error: Failed to authenticate. " in report


# ------------------------------------------------------------------------------- failed edits
def test_an_agent_whose_every_edit_failed_and_that_changed_nothing_is_not_a_success(repo, wt_root, tmp_path):
    """Real codex says "Done" after its sandbox refused its patch; real opencode too after it
    auto-rejected an edit set to "ask". Neither changed anything: both tasks fail, in their own words."""
    plan = write_plan(tmp_path / "plan.toml", f"""
        worktree_root = "{wt_root}"
        [[tasks]]
        name = "refused"
        agent = "codex"
        prompt = "write +denied file=hello.py"
        [[tasks]]
        name = "asked"
        agent = "opencode"
        prompt = "write +denied file=hello.py"
        [[tasks]]
        name = "fine"
        agent = "codex"
        prompt = "write file=fine.py"
    """)
    res = corral("run", str(plan), "--headless", "--json", "--approve", "all", cwd=repo, env=fake_env(tmp_path))
    assert res.returncode == 1, res.stderr + res.stdout[-2000:]
    evs = events(res.stdout)
    finished = {t: es[-1] for t, es in by_task(evs, "task_finished").items()}
    status = {t: es[-1] for t, es in by_task(evs, "task_status").items()}  # what the pane shows
    refused = ("1 edit(s) failed: ✗ edit failed: patch rejected: writing outside of the project; rejected by user "
               "approval settings; nothing changed")
    asked = ("1 edit(s) failed: ✗ write: hello.py: The user rejected permission to use this specific tool call.; "
             "nothing changed")
    for task, reason in (("refused", refused), ("asked", asked)):
        assert (finished[task]["status"], finished[task]["reason"]) == ("failed", reason)
        assert (status[task]["status"], status[task]["reason"]) == ("failed", reason)
    assert finished["refused"]["text"].startswith("Done: created hello.py")  # what codex claimed
    assert status["fine"]["status"] == "merged" and (repo / "fine.py").exists()
    summary = {r["task"]: r for r in [e for e in evs if e["type"] == "run_finished"][-1]["summary"]}
    assert summary["refused"]["status"] == "failed"
    report = Path([e for e in evs if e["type"] == "run_finished"][-1]["report"]).read_text()
    assert f"| refused | codex | failed ({refused}) |" in report
    assert "merged (no changes)" not in report

    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo, env=fake_env(tmp_path))
    assert res.returncode == 1 and f"corral: refused: failed ({refused})" in res.stdout, res.stdout[-2000:]


# ----------------------------------------------------------------------------------- timeout
def test_agent_timeout_fails_the_task_and_leaves_no_orphans(repo, wt_root, tmp_path):
    token = f"stuck-{uuid.uuid4().hex[:12]}"
    pidfile = tmp_path / "grandchild.pid"
    plan = write_plan(tmp_path / "plan.toml", f"""
        worktree_root = "{wt_root}"
        [agents.claude]
        timeout = 3

        [[tasks]]
        name = "stuck"
        agent = "claude"
        prompt = "{token} file=early.txt sleep=120 grandchild={pidfile} +stubborn"

        [[tasks]]
        name = "quick"
        agent = "pi"
        prompt = "quick file=quick.txt"
    """)
    start = time.monotonic()
    res = corral("run", str(plan), "--headless", "--json", "--approve", "all", cwd=repo, env=fake_env(tmp_path),
                 timeout=60)
    took = time.monotonic() - start
    assert res.returncode == 1, res.stderr
    assert took < 30, took  # 3 s timeout + TERM ignored + KILL after the grace period (3 s)
    evs = events(res.stdout)
    statuses = [(e["status"], e["reason"]) for e in evs if e["type"] == "task_status" and e["task"] == "stuck"]
    assert statuses[-1] == ("failed", "timeout after 3s")
    assert any(l == "→ Write: early.txt" for l in (e["line"] for e in by_task(evs, "output")["stuck"]))
    # the stubborn agent and its grandchild are gone
    assert pidfile.exists(), "the fake did not get to start its grandchild within the timeout"
    gc = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while (pid_alive(gc) or processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(gc), "grandchild survived the timeout"
    assert processes_with(token) == [], "the agent survived the timeout"
    # the other task was not disturbed, and the stuck task's work so far is kept on its branch
    assert (repo / "quick.txt").exists()
    ref = next(b for b in corral_state(repo)["branches"] if b.endswith("/stuck"))
    assert git(repo, "show", f"{ref}:early.txt") == 'print("hello")'


# ---------------------------------------------------------------------------------- preflight
def git_only_path(tmp_path: Path) -> str:
    """A PATH with git (and sh) but none of the agent CLIs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for prog in ("git", "sh"):
        os.symlink(shutil.which(prog), bin_dir / prog)
    return str(bin_dir)


@pytest.mark.parametrize("agent", AGENTS)
def test_missing_agent_is_refused_before_anything_is_created(repo, tmp_path, agent):
    plan = write_plan(tmp_path / "plan.toml", f"""
        [[tasks]]
        name = "t"
        agent = "{agent}"
        prompt = "do it"
    """)
    res = corral("run", str(plan), "--headless", "--json", "--approve", "all", cwd=repo,
                 env={"PATH": git_only_path(tmp_path)})
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"agent '{agent}' needs '{agent}', which is not on PATH" in lines[0]
    assert f"[agents.{agent}] command" in lines[0]
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}


def test_missing_custom_agent_and_adhoc_default_are_refused(repo, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", """
        [agents.mine]
        command = ["corral-test-no-such-agent", "{prompt}"]
        [[tasks]]
        name = "t"
        agent = "mine"
        prompt = "do it"
    """)
    res = corral("run", str(plan), "--headless", cwd=repo, env=fake_env(tmp_path))
    assert res.returncode == 2
    assert "agent 'mine' needs 'corral-test-no-such-agent'" in res.stderr and "[agents.mine]" in res.stderr
    res = corral("run", "--task", "x=do it", "--headless", cwd=repo, env={"PATH": git_only_path(tmp_path)})
    assert res.returncode == 2 and "agent 'claude'" in res.stderr
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}


# ------------------------------------------------------------------------------ state files
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
def test_aider_state_files_are_never_committed_in_a_jj_repository(tmp_path, wt_root, monkeypatch):
    monkeypatch.setenv("JJ_CONFIG", str(tmp_path / "jjconfig.toml"))
    (tmp_path / "jjconfig.toml").write_text('user.name = "T"\nuser.email = "t@example.com"\n')
    repo = tmp_path / "jrepo"
    subprocess.run(["jj", "git", "init", str(repo)], check=True, capture_output=True)
    (repo / "README.md").write_text("# project\n")
    for args in (["describe", "-m", "initial"], ["new"], ["bookmark", "create", "main", "-r", "@-"]):
        subprocess.run(["jj", *args], cwd=repo, check=True, capture_output=True)
    plan = write_plan(tmp_path / "plan.toml", f"""
        worktree_root = "{wt_root}"
        setup = "none"
        [[tasks]]
        name = "a1"
        agent = "aider"
        prompt = "write file=aider.txt"
    """)
    res = corral("run", str(plan), "--headless", "--json", "--approve", "all", cwd=repo, env=fake_env(tmp_path))
    assert res.returncode == 0, res.stderr + res.stdout[-2000:]
    finished = by_task(events(res.stdout), "task_finished")["a1"][-1]
    assert finished["files"] == ["aider.txt"]
    listed = subprocess.run(["jj", "--ignore-working-copy", "file", "list", "-r", "main"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == ["README.md", "aider.txt"]


# ------------------------------------------------------------------------------- corral agents
def test_corral_agents_lists_profiles_paths_versions_and_permissions(tmp_path):
    res = corral("agents", env=fake_env(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for name, version, tested in (("claude", "2.1.197 (Claude Code)", "2.1.197"), ("codex", "codex-cli 0.171.0", "0.171.0"),
                                  ("aider", "aider 0.86.2", "0.86.2"), ("gemini", "0.61.0", "0.61.0"),
                                  ("opencode", "1.18.33", "1.18.33"), ("pi", "0.73.1", "0.73.1")):
        row = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert str(FAKES / name) in row and version in row and f"  {tested}  " in row, row
    assert "newer" not in out
    assert "claude -p --output-format stream-json --verbose --permission-mode acceptEdits " \
           "[--append-system-prompt {system_prompt}] -- {prompt}" in out
    assert "codex exec --json --sandbox workspace-write --skip-git-repo-check -- {prompt}" in out
    assert "What each agent may do unattended" in out and "to change: Override [agents.codex] command" in out

    res = corral("agents", "--json", env={"PATH": git_only_path(tmp_path)}, cwd=tmp_path)
    rows = [json.loads(l) for l in res.stdout.splitlines()]
    assert [r["agent"] for r in rows] == ["shell", *AGENTS]
    claude = rows[1]
    assert claude["path"] is None and claude["version"] is None and claude["format"] == "claude-stream-json"
    assert "acceptEdits" in claude["unattended"] and "bypassPermissions" in claude["change"]


def test_corral_agents_with_a_plan(tmp_path):
    plan = write_plan(tmp_path / "plan.toml", """
        [agents.claude]
        timeout = 600
        [agents.ghost]
        command = ["corral-test-no-such-agent", "{prompt}"]
        [[tasks]]
        name = "t"
        agent = "ghost"
        prompt = "x"
    """)
    res = corral("agents", "--plan", str(plan), env=fake_env(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(l.startswith("claude* ") and "2.1.197" in l for l in lines)
    assert any(l.startswith("ghost* ") and "NOT FOUND" in l for l in lines)
    assert "Not found on PATH: ghost." in res.stdout
    res = corral("agents", "--plan", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_corral_agents_warns_when_a_cli_is_newer_than_the_tested_one(tmp_path):
    res = corral("agents", env={**fake_env(tmp_path), "FAKE_VERSION": "codex-cli 0.180.2"}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    row = next(l for l in res.stdout.splitlines() if l.startswith("codex "))
    assert "codex-cli 0.180.2 (newer)" in row and "  0.171.0  " in row
    assert ("warning: codex codex-cli 0.180.2 is newer than the version corral was tested with (0.171.0)"
            in res.stdout)
    rows = {r["agent"]: r for r in map(json.loads, corral("agents", "--json", env={
        **fake_env(tmp_path), "FAKE_VERSION": "0.1.0"}, cwd=tmp_path).stdout.splitlines())}
    assert rows["codex"]["tested"] == "0.171.0" and rows["codex"]["newer"] is False  # older: no warning


# ----------------------------------------------------------------------------------- profiles
def test_profile_argv_placeholders_and_system_prompt():
    claude = BUILTIN["claude"]
    assert claude.argv(prompt="-x", system_prompt="") == [
        "claude", "-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "acceptEdits",
        "--", "-x"]
    assert claude.argv(prompt="p", system_prompt="S")[-4:] == ["--append-system-prompt", "S", "--", "p"]
    codex = BUILTIN["codex"]
    assert codex.argv(prompt="p", system_prompt="S")[-1] == "S\n\np"
    assert codex.argv(prompt="p", system_prompt="  ")[-1] == "p"
    assert BUILTIN["shell"].argv(prompt="echo hi", system_prompt="S") == ["sh", "-c", "echo hi"]
    custom = Profile("mine", ("mine", "--task", "{prompt}", "--system", "{system_prompt}", "--in", "{workspace}"))
    assert custom.argv(prompt="p", system_prompt="", workspace="/w") == ["mine", "--task", "p", "--in", "/w"]
    assert custom.argv(prompt="p", system_prompt="s", workspace="/w") == [
        "mine", "--task", "p", "--system", "s", "--in", "/w"]


def test_profiles_of_the_tested_clis():
    # Gemini CLI trusts corral's fresh workspace, or it exits 55 (and drops auto_edit without a word)
    assert dict(BUILTIN["gemini"].env)["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    # opencode is told its directory, whatever $PWD says
    assert BUILTIN["opencode"].argv(prompt="p", workspace="/w")[-4:] == ["--dir", "/w", "--", "p"]
    # aider: a wide terminal (it wraps at COLUMNS), and its repo-map cache and history are its own
    assert int(dict(BUILTIN["aider"].env)["COLUMNS"]) >= 1000 and BUILTIN["aider"].exclude == (".aider*",)
    assert profile_from_table("aider", {"timeout": 5}, BUILTIN["aider"]).exclude == (".aider*",)
    assert profile_from_table("mine", {"command": ["x"], "exclude": [".x-cache/*"]}, None).exclude == (".x-cache/*",)
    for bad in (["/abs"], ["../up"], [":(top)x"], "x", [1]):
        with pytest.raises(ProfileError, match="exclude"):
            profile_from_table("mine", {"command": ["x"], "exclude": bad}, None)


def test_profile_overrides():
    # an override of the timeout keeps everything else of the built-in
    p = profile_from_table("codex", {"timeout": 30}, BUILTIN["codex"])
    assert p.timeout == 30 and p.command == BUILTIN["codex"].command and p.prepend_system_prompt
    assert p.notes == BUILTIN["codex"].notes
    # a new command line that places the system prompt itself: no prepending
    p = profile_from_table("codex", {"command": ["codex", "exec", "--json", "-c", "x={system_prompt}", "{prompt}"]},
                           BUILTIN["codex"])
    assert not p.prepend_system_prompt and p.argv(prompt="p", system_prompt="s")[-2:] == ["x=s", "p"]
    p = profile_from_table("codex", {"command": ["codex", "exec", "--json", "--", "{prompt}"]}, BUILTIN["codex"])
    assert p.prepend_system_prompt and p.notes == ""
    # a profile based on a built-in under another name
    p = profile_from_table("fast", {"profile": "claude", "command": ["claude", "-p", "--output-format",
                                                                     "stream-json", "--verbose", "--model", "haiku",
                                                                     "--", "{prompt}"]}, None)
    assert p.format == "claude-stream-json"
