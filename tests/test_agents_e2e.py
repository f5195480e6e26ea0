"""The built-in agent profiles end to end: the real ``corral`` CLI runs plans whose agents are the
executable fakes in tests/fakes (first on PATH), which read their argv like the real CLIs and print
their documented output formats. Checked: pane lines (output events), activity, final text, cost and
tokens in ``--json`` events and in report.md, failures reported the agents' own ways, timeouts
without orphans, and the preflight refusal of a missing agent."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from conftest import FAKES, corral, corral_state, git, write_plan
from corral.core.agents import BUILTIN, Profile, profile_from_table

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
prompt = "- a prompt that starts with a dash file=claude.txt cost=0.25"
system_prompt = "You are careful."

[[tasks]]
name = "x1"
agent = "codex"
prompt = "write file=codex.txt"
system_prompt = "You are careful."

[[tasks]]
name = "a1"
agent = "aider"
prompt = "write file=aider.txt cost=0.5"

[[tasks]]
name = "g1"
agent = "gemini"
prompt = "write file=gemini.txt"

[[tasks]]
name = "o1"
agent = "opencode"
prompt = "write file=opencode.txt cost=0.125"

[[tasks]]
name = "p1"
agent = "pi"
prompt = "write file=pi.txt cost=0.0625"
system_prompt = "Be brief."
"""

EXPECTED_LINES = {
    "c1": ["claude session started (model claude-sonnet-4-5-20250929, permission mode acceptEdits)",
           "→ Write: claude.txt", "permission denied: Bash: rm -rf build", "✓ success, 4 turn(s), 5.1s, $0.2500"],
    "x1": ["thinking: Looking at the repository", "$ bash -lc ls", "edited: codex.txt (add)",
           "✓ turn completed: 24763 input tokens (24448 cached), 122 output tokens"],
    "a1": ["Aider v0.86.2", "Tokens: 2.4k sent, 180 received. Cost: $0.5000 message, $0.5000 session.",
           "Applied edit to aider.txt"],
    "g1": ["gemini session started (model gemini-2.5-pro)", "I'll create gemini.txt now.", "→ write_file: gemini.txt",
           "✓ success, 4.8s, 10417 tokens, 1 tool call(s)"],
    "o1": ["I'll create opencode.txt.", "→ write: opencode.txt", "✓ done ($0.1250, 23137 tokens)"],
    "p1": ["pi session started", "I'll create pi.txt.", "→ write: pi.txt", "✓ done ($0.0625, 6320 tokens)"],
}


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
        assert finished[task]["files"] == [f"{name}.txt"]
        assert finished[task]["text"].endswith(f"Done: created {name}.txt with a greeting."), finished[task]["text"]
    assert "Write: claude.txt" in activity["c1"] and activity["c1"][-1] == "done"

    costs = {t: f["cost"] for t, f in finished.items()}
    assert costs == {"c1": 0.25, "x1": None, "a1": 0.5, "g1": None, "o1": pytest.approx(0.125),
                     "p1": pytest.approx(0.0625)}
    # totals as each agent documents them, added up by hand from what the fakes print: claude's
    # input_tokens leave the cache out (12 in + 3000 written + 10000 read + 250 out); codex's input
    # includes its cached tokens (24763 + 122 out); gemini's total_tokens (10417); aider's "2.4k sent,
    # 180 received"; opencode's two steps (11452 + 120, then 220 + 45 + 11300 read from the cache);
    # pi's two messages (3000 + 80, 3200 + 40)
    tokens = {t: f["tokens"] for t, f in finished.items()}
    assert tokens == {"c1": 13262, "x1": 24885, "a1": 2580, "g1": 10417, "o1": 23137, "p1": 6320}

    run_finished = [e for e in evs if e["type"] == "run_finished"][-1]
    assert run_finished["cost"] == pytest.approx(0.9375)
    assert run_finished["tokens"] == 80601
    assert {r["task"]: r["tokens"] for r in run_finished["summary"]}["x1"] == 24885

    report = Path(run_finished["report"]).read_text()
    assert "- total cost: $0.9375" in report
    assert "| x1 | codex | merged | " in report and "| 24.9k tokens |" in report
    assert "| c1 | claude | merged | " in report and "| $0.2500 |" in report
    assert "- usage: $0.2500, 13262 tokens (13012 in, 250 out)" in report
    for name in ("claude", "codex", "aider", "gemini", "opencode", "pi"):
        assert f"Done: created {name}.txt with a greeting." in report
    assert "[edit aider.txt]" in report  # aider's edit block, summarised in its final text

    # the work landed; nothing left behind
    for name in ("claude", "codex", "aider", "gemini", "opencode", "pi"):
        assert (repo / f"{name}.txt").read_text() == f"written by fake {name}\n"
    state = corral_state(repo)
    assert state["branches"] == [] and state["worktrees"] == [] and not list(wt_root.iterdir())

    argv = argv_log(tmp_path)
    assert argv["claude"][-2:] == ["--", "- a prompt that starts with a dash file=claude.txt cost=0.25"]
    assert argv["claude"][argv["claude"].index("--append-system-prompt") + 1] == "You are careful."
    assert argv["codex"][-2:] == ["--", "You are careful.\n\nwrite file=codex.txt"]  # no flag: prepended
    assert "--append-system-prompt" not in argv["aider"] and "--message=write file=aider.txt cost=0.5" in argv["aider"]
    assert argv["pi"][argv["pi"].index("--append-system-prompt") + 1] == "Be brief."
    assert argv["gemini"][-1] == "--prompt=write file=gemini.txt"


def test_headless_lines_show_usage(repo, wt_root, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", f"""
        worktree_root = "{wt_root}"
        [[tasks]]
        name = "c"
        agent = "claude"
        prompt = "go cost=1.5"
        [[tasks]]
        name = "g"
        agent = "gemini"
        prompt = "go"
    """)
    res = corral("run", str(plan), "--headless", "--approve", "none", cwd=repo, env=fake_env(tmp_path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "[c] → Write: claude.txt" in out and "[g] → write_file: gemini.txt" in out
    assert "c: agent exited with 0 after" in out and ", $1.50; 1 file(s) changed" in out
    assert ", 10.4k tokens; 1 file(s) changed" in out
    assert "total cost: $1.50 (23679 tokens)" in out
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
    assert f["reason"] == "claude reported an error: API Error: 529 Overloaded"
    assert f["cost"] == pytest.approx(0.0123)  # a failed run still costs money
    # aider exits 0 after an API error
    f = finished["aider-api-error"]
    assert (f["status"], f["exit_code"]) == ("failed", 0)
    assert f["reason"].startswith("aider: litellm.AuthenticationError")
    # a non-zero exit says why when the agent said why
    f = finished["codex-failed"]
    assert f["status"] == "failed"
    assert f["reason"] == "exit code 1: codex: unexpected status 401 Unauthorized: Missing bearer"
    assert "✗ turn failed: unexpected status 401 Unauthorized: Missing bearer" in output["codex-failed"]
    assert finished["gemini-exit-3"]["reason"] == "exit code 3"
    # malformed and unknown lines are shown as text and break nothing
    f = finished["pi-garbage"]
    assert f["status"] == "succeeded" and f["cost"] == pytest.approx(0.0123)
    for line in ("this is not json {", '{"type": "assistant", "message": ', "[1, 2, 3]",
                 '{"type":"mystery_event","x":1}'):
        assert line in output["pi-garbage"]
    # an event line far longer than a pane line is parsed whole: the final text is complete
    f = finished["opencode-big"]
    assert f["status"] == "succeeded" and len(f["text"]) > 20_000 and f["text"].endswith("0123456789")
    assert f["cost"] == pytest.approx(0.0123)

    # the work of failed tasks is kept on their branches
    branches = corral_state(repo)["branches"]
    for task, file in (("claude-is-error", "c.txt"), ("codex-failed", "x.txt"), ("gemini-exit-3", "g.txt")):
        ref = next(b for b in branches if b.endswith("/" + task))
        assert git(repo, "show", f"{ref}:{file}").startswith("written by fake")
    report = Path([e for e in evs if e["type"] == "run_finished"][-1]["report"]).read_text()
    assert "| claude-is-error | claude | failed (claude reported an error: API Error: 529 Overloaded) |" in report


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
    assert git(repo, "show", f"{ref}:early.txt") == "written by fake claude"


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


# ------------------------------------------------------------------------------- corral agents
def test_corral_agents_lists_profiles_paths_versions_and_permissions(tmp_path):
    res = corral("agents", env=fake_env(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for name, version in (("claude", "2.0.14 (Claude Code)"), ("codex", "codex-cli 0.50.0"),
                          ("aider", "aider 0.86.2"), ("gemini", "0.12.0"), ("opencode", "1.0.50"), ("pi", "0.30.2")):
        row = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert str(FAKES / name) in row and version in row, row
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
    assert any(l.startswith("claude* ") and "2.0.14" in l for l in lines)
    assert any(l.startswith("ghost* ") and "NOT FOUND" in l for l in lines)
    assert "Not found on PATH: ghost." in res.stdout
    res = corral("agents", "--plan", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1


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
