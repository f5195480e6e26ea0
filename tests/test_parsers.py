"""Unit tests of the output parsers on realistic event streams (shapes from each agent's docs and
source; see core/AGENTS.md), including malformed and unknown lines."""

from __future__ import annotations

import json
import random

import pytest

from corral.core.parsers import (
    MAX_SHOWN,
    PARSERS,
    AiderParser,
    ClaudeStreamParser,
    CodexJsonParser,
    GeminiStreamParser,
    OpencodeJsonParser,
    Parser,
    PiJsonParser,
    TextParser,
    known_formats,
    make_parser,
)


def run(parser: Parser, lines: list) -> tuple[list[str], list[str]]:
    """Feed lines (dicts are dumped as JSON); return (shown lines, distinct activities in order)."""
    shown: list[str] = []
    activities: list[str] = []
    for line in lines:
        text = json.dumps(line) if isinstance(line, dict) else line
        out = parser.feed(text)
        assert isinstance(out, list) and all(isinstance(x, str) for x in out)
        shown += out
        if parser.activity and (not activities or activities[-1] != parser.activity):
            activities.append(parser.activity)
    parser.finish()
    return shown, activities


def no_raw_json(shown: list[str]) -> None:
    assert not [s for s in shown if s.lstrip().startswith("{")], shown


# ------------------------------------------------------------------------------------------ claude
CWD = "/tmp/ws/task"
SID = "8b0c7e2a-4c1f-4a51-9b1e-2f3d4c5b6a7f"


def claude_msg(*content, mid="msg_01"):
    return {"type": "assistant", "message": {"id": mid, "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": list(content), "stop_reason": None,
            "usage": {"input_tokens": 4, "output_tokens": 30}}, "parent_tool_use_id": None, "session_id": SID}


CLAUDE_STREAM = [
    {"type": "system", "subtype": "init", "cwd": CWD, "session_id": SID, "tools": ["Bash", "Edit", "Read"],
     "mcp_servers": [], "model": "claude-sonnet-4-5", "permissionMode": "acceptEdits", "apiKeySource": "none"},
    claude_msg({"type": "thinking", "thinking": "Need to look at app.py first.\nThen edit.", "signature": "s"}),
    claude_msg({"type": "text", "text": "Let me read the file."}),
    claude_msg({"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": f"{CWD}/src/app.py"}}),
    {"type": "user", "message": {"role": "user", "content": [
        {"tool_use_id": "toolu_1", "type": "tool_result", "content": "VALUE = 1\n"}]}, "session_id": SID},
    claude_msg({"type": "tool_use", "id": "toolu_2", "name": "Edit",
                "input": {"file_path": f"{CWD}/src/app.py", "old_string": "1", "new_string": "2"}}),
    {"type": "user", "message": {"role": "user", "content": [
        {"tool_use_id": "toolu_2", "type": "tool_result", "content": "The file has been updated."}]}},
    claude_msg({"type": "tool_use", "id": "toolu_3", "name": "Bash",
                "input": {"command": "pytest -q", "description": "Run tests"}}),
    {"type": "user", "message": {"role": "user", "content": [
        {"tool_use_id": "toolu_3", "type": "tool_result", "is_error": True,
         "content": [{"type": "text", "text": "This command requires approval"}]}]}},
    claude_msg({"type": "text", "text": "Changed VALUE to 2.\n\nTests were not run."}, mid="msg_02"),
    {"type": "result", "subtype": "success", "is_error": False, "duration_ms": 12345, "duration_api_ms": 11000,
     "num_turns": 5, "result": "Changed VALUE to 2.\n\nTests were not run.", "session_id": SID,
     "total_cost_usd": 0.0421, "usage": {"input_tokens": 20, "cache_creation_input_tokens": 4000,
                                         "cache_read_input_tokens": 16000, "output_tokens": 300},
     "permission_denials": [{"tool_name": "Bash", "tool_use_id": "toolu_3", "tool_input": {"command": "pytest -q"}}]},
]


def test_claude_stream_readable_lines_final_text_and_cost():
    p = ClaudeStreamParser()
    shown, activities = run(p, CLAUDE_STREAM)
    no_raw_json(shown)
    assert shown[0] == "claude session started (model claude-sonnet-4-5, permission mode acceptEdits)"
    assert "thinking: Need to look at app.py first. …" in shown
    assert "→ Read: src/app.py" in shown  # path shown relative to the agent's cwd
    assert "→ Edit: src/app.py" in shown
    assert "→ Bash: pytest -q" in shown
    assert "✗ Bash: pytest -q: This command requires approval" in shown
    assert "permission denied: Bash: pytest -q" in shown
    assert shown[-1] == "✓ success, 5 turn(s), 12.3s, $0.0421"
    assert ["Changed VALUE to 2.", "", "Tests were not run."] == shown[shown.index("Changed VALUE to 2."):][:3]
    # successful tool results are not repeated in the pane
    assert not any("VALUE = 1" in s for s in shown)
    assert activities == ["starting", "thinking", "writing", "Read: src/app.py", "Edit: src/app.py",
                          "Bash: pytest -q", "writing", "done"]
    assert p.final_text == "Changed VALUE to 2.\n\nTests were not run."
    assert p.usage.cost == pytest.approx(0.0421)
    assert p.usage.input_tokens == 20 + 4000 + 16000 and p.usage.output_tokens == 300
    assert p.error == ""


def test_claude_error_result_sets_error():
    p = ClaudeStreamParser()
    shown, _ = run(p, CLAUDE_STREAM[:3] + [
        {"type": "result", "subtype": "error_max_turns", "is_error": True, "num_turns": 10, "duration_ms": 900,
         "total_cost_usd": 0.5, "session_id": SID, "errors": ["Reached maximum number of turns (10)"]}])
    assert p.error == "claude reported an error: Reached maximum number of turns (10)"
    assert p.activity == "failed"
    assert shown[-1].startswith("✗ error_max_turns, 10 turn(s), 0.9s, $0.5000")
    assert p.usage.cost == 0.5
    assert p.final_text == "Let me read the file."  # no result text: the last assistant text


def test_claude_older_cost_field_and_partial_messages():
    p = ClaudeStreamParser()
    shown, activities = run(p, [
        {"type": "stream_event", "event": {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "tool_use", "name": "Write"}}},
        {"type": "stream_event", "event": {"type": "content_block_delta", "delta": {"type": "input_json_delta"}}},
        {"type": "system", "subtype": "hook_response", "stdout": "x"},
        {"type": "result", "subtype": "success", "is_error": False, "result": "ok", "cost_usd": 0.01},
    ])
    assert shown == ["✓ success, $0.0100"]
    assert activities == ["Write", "done"]
    assert p.usage.cost == 0.01 and p.final_text == "ok"


# ------------------------------------------------------------------------------------------- codex
# the sample output of openai/codex docs/exec.md, plus a file change and a failing command
CODEX_STREAM = [
    {"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Searching for README files**"}},
    {"type": "item.started", "item": {"id": "item_1", "type": "command_execution", "command": "bash -lc ls",
                                      "aggregated_output": "", "status": "in_progress"}},
    {"type": "item.completed", "item": {"id": "item_1", "type": "command_execution", "command": "bash -lc ls",
                                        "aggregated_output": "AGENTS.md\nREADME.md\ncodex-rs\n", "exit_code": 0,
                                        "status": "completed"}},
    {"type": "item.started", "item": {"id": "item_2", "type": "command_execution", "command": "bash -lc 'cargo test'",
                                      "aggregated_output": "", "status": "in_progress"}},
    {"type": "item.completed", "item": {"id": "item_2", "type": "command_execution",
                                        "command": "bash -lc 'cargo test'", "exit_code": 101, "status": "failed",
                                        "aggregated_output": "compiling\nerror[E0425]: cannot find value `x`\n"}},
    {"type": "item.started", "item": {"id": "item_3", "type": "todo_list", "items": [
        {"text": "Fix the test", "completed": False}, {"text": "Update docs", "completed": False}]}},
    {"type": "item.updated", "item": {"id": "item_3", "type": "todo_list", "items": [
        {"text": "Fix the test", "completed": True}, {"text": "Update docs", "completed": False}]}},
    {"type": "item.completed", "item": {"id": "item_4", "type": "file_change", "status": "completed",
                                        "changes": [{"path": f"{CWD}/src/lib.rs", "kind": "update"},
                                                    {"path": f"{CWD}/NOTES.md", "kind": "add"}]}},
    {"type": "item.started", "item": {"id": "item_5", "type": "mcp_tool_call", "server": "github",
                                      "tool": "search_issues", "arguments": {"query": "is:open"},
                                      "status": "in_progress"}},
    {"type": "item.completed", "item": {"id": "item_5", "type": "mcp_tool_call", "server": "github",
                                        "tool": "search_issues", "status": "failed",
                                        "error": {"message": "not authenticated"}}},
    {"type": "item.completed", "item": {"id": "item_6", "type": "agent_message",
                                        "text": "Yep — there’s a `README.md` in the repository root."}},
    {"type": "turn.completed", "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122}},
]


def test_codex_stream_lines_tokens_and_final_text():
    p = CodexJsonParser()
    p.cwd = CWD
    shown, activities = run(p, CODEX_STREAM)
    no_raw_json(shown)
    assert shown[:4] == ["codex thread 0199a213-81c0-7800-8aa1-bbab2a035a53 started",
                         "thinking: Searching for README files", "$ bash -lc ls", "  exit 0, 3 line(s) of output"]
    assert "✗ exit 101: bash -lc 'cargo test'" in shown
    assert "  error[E0425]: cannot find value `x`" in shown
    assert "plan: 2 step(s)" in shown and "  [ ] Fix the test" in shown and "plan: 1/2 done" in shown
    assert "edited: src/lib.rs (update), NOTES.md (add)" in shown
    assert "→ github.search_issues: is:open" in shown and "✗ github.search_issues: not authenticated" in shown
    assert shown[-1] == "✓ turn completed: 24763 input tokens (24448 cached), 122 output tokens"
    assert "$ bash -lc ls" in activities and activities[-1] == "done"
    assert p.final_text == "Yep — there’s a `README.md` in the repository root."
    assert p.usage.cost is None  # codex reports no cost
    assert (p.usage.input_tokens, p.usage.output_tokens) == (24763, 122)
    assert p.error == ""


def test_codex_turn_failed_and_first_experimental_format():
    p = CodexJsonParser()
    shown, _ = run(p, [
        {"type": "thread.started", "thread_id": "t"},
        {"type": "item.completed", "item": {"id": "itm_0", "item_type": "assistant_message", "text": "Working on it"}},
        {"type": "error", "message": "Reconnecting... 1/5"},
        {"type": "turn.failed", "error": {"message": "stream disconnected before completion"}},
    ])
    assert "Working on it" in shown and "error: Reconnecting... 1/5" in shown
    assert shown[-1] == "✗ turn failed: stream disconnected before completion"
    assert p.error == "codex: stream disconnected before completion"
    assert p.final_text == "Working on it"


def test_codex_stream_error_fails_only_without_a_completed_turn():
    p = CodexJsonParser()
    run(p, [{"type": "turn.started"}, {"type": "error", "message": "Reconnecting... 1/5"},
            {"type": "turn.completed", "usage": {"input_tokens": 5, "output_tokens": 1}}])
    assert p.error == ""
    p = CodexJsonParser()
    run(p, [{"type": "turn.started"}, {"type": "error", "message": "exceeded retry limit, last status: 429"}])
    assert p.error == "codex: exceeded retry limit, last status: 429"


# ------------------------------------------------------------------------------------------- aider
AIDER_OUTPUT = """\
Aider v0.86.2
Main model: anthropic/claude-sonnet-4-20250514 with diff edit format, infinite output
Weak model: anthropic/claude-3-5-haiku-20241022
Git repo: .git with 12 files
Repo-map: using 4096 tokens, auto refresh

I'll change VALUE to 2 in src/app.py.

src/app.py
```python
<<<<<<< SEARCH
VALUE = 1
=======
VALUE = 2
>>>>>>> REPLACE
```

That's all that was needed.

Tokens: 12k sent, 3.2k cache write, 1.1k cache hit, 250 received.
Cost: $0.05 message, $0.12 session.
Applied edit to src/app.py
"""


def test_aider_reply_usage_and_edits():
    p = AiderParser()
    shown, activities = run(p, AIDER_OUTPUT.splitlines())
    assert shown == AIDER_OUTPUT.splitlines()  # plain text: every line shown as it is
    assert p.final_text == ("I'll change VALUE to 2 in src/app.py.\n\n[edit src/app.py]\n\n"
                            "That's all that was needed.")
    assert p.usage.cost == pytest.approx(0.12)  # the session total, not the message's
    # "sent" already counts the cache writes (aider adds them to the prompt tokens), not the cache hits
    assert p.usage.input_tokens == 13100 and p.usage.output_tokens == 250
    assert "editing src/app.py" in activities and activities[-1] == "edited src/app.py"
    assert p.error == ""


def test_aider_api_error_with_exit_0_is_an_error_unless_it_recovered():
    p = AiderParser()
    run(p, ["Aider v0.86.2", "Main model: gpt-4o with diff edit format", "",
            "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key provided",
            "The API provider is not able to authenticate you. Check your API key."])
    assert p.error.startswith("aider: litellm.AuthenticationError")
    p = AiderParser()
    run(p, ["litellm.RateLimitError: rate limited", "Retrying in 0.2 seconds...", "Done, VALUE is 2.",
            "Tokens: 900 sent, 12 received. Cost: $0.0031 message, $0.0031 session."])
    assert p.error == "" and p.usage.cost == pytest.approx(0.0031) and p.usage.tokens == 912


# ------------------------------------------------------------------------------------------ gemini
def gem(kind, **data):
    return {"type": kind, "timestamp": "2025-10-10T12:00:00.000Z", **data}


GEMINI_STREAM = [
    gem("init", session_id="abc123", model="gemini-2.5-pro"),
    gem("message", role="user", content="Make VALUE 2"),
    gem("message", role="assistant", content="I'll update ", delta=True),
    gem("message", role="assistant", content="the file.\nFirst I read", delta=True),
    gem("message", role="assistant", content=" it.", delta=True),
    gem("tool_use", tool_name="read_file", tool_id="read_file-1", parameters={"absolute_path": f"{CWD}/src/app.py"}),
    gem("tool_result", tool_id="read_file-1", status="success", output="VALUE = 1"),
    gem("tool_use", tool_name="run_shell_command", tool_id="sh-1", parameters={"command": "pytest"}),
    gem("tool_result", tool_id="sh-1", status="error", error={"type": "invalid_tool_params",
                                                             "message": "Tool execution denied by policy."}),
    gem("error", severity="warning", message="Loop detected, stopping"),
    gem("message", role="assistant", content="VALUE is now 2.", delta=True),
    gem("result", status="success", stats={"total_tokens": 2000, "input_tokens": 1800, "output_tokens": 200,
                                           "cached": 1000, "input": 800, "duration_ms": 3000, "tool_calls": 2}),
]


def test_gemini_deltas_become_lines_and_final_text():
    p = GeminiStreamParser()
    p.cwd = CWD
    shown, activities = run(p, GEMINI_STREAM)
    no_raw_json(shown)
    assert shown == [
        "gemini session started (model gemini-2.5-pro)",
        "I'll update the file.",
        "First I read it.",
        "→ read_file: src/app.py",
        "→ run_shell_command: pytest",
        "✗ run_shell_command: pytest: Tool execution denied by policy.",
        "warning: Loop detected, stopping",
        "VALUE is now 2.",
        "✓ success, 3.0s, 2000 tokens, 2 tool call(s)",
    ]
    assert activities[-1] == "done" and "read_file: src/app.py" in activities
    assert p.final_text == "VALUE is now 2."  # the answer after the last tool call
    assert p.usage.cost is None and p.usage.tokens == 2000
    assert p.error == ""


def test_gemini_error_result():
    p = GeminiStreamParser()
    shown, _ = run(p, [gem("init", session_id="s", model="m"),
                       gem("message", role="assistant", content="Trying", delta=True),
                       gem("result", status="error", error={"type": "FatalTurnLimitedError",
                                                            "message": "Reached max session turns"},
                           stats={"total_tokens": 10, "input_tokens": 8, "output_tokens": 2, "duration_ms": 5})])
    assert shown[-2:] == ["Trying", "✗ error, 0.0s, 10 tokens: Reached max session turns"]
    assert p.error == "gemini: Reached max session turns"
    assert p.final_text == "Trying"


# ---------------------------------------------------------------------------------------- opencode
def oc(kind, **data):
    return {"type": kind, "timestamp": 1767036059338, "sessionID": "ses_494719016ffe85dkDMj0FPRbHK", **data}


OPENCODE_STREAM = [
    oc("step_start", part={"id": "prt_1", "type": "step-start", "snapshot": "abc"}),
    oc("reasoning", part={"id": "prt_2", "type": "reasoning", "text": "I should edit app.py"}),
    oc("text", part={"id": "prt_3", "type": "text", "text": "Editing app.py.", "time": {"start": 1, "end": 2}}),
    oc("tool_use", part={"id": "prt_4", "type": "tool", "tool": "edit", "callID": "c1", "state": {
        "status": "completed", "input": {"filePath": f"{CWD}/src/app.py"}, "output": "", "title": "src/app.py"}}),
    oc("tool_use", part={"id": "prt_5", "type": "tool", "tool": "bash", "callID": "c2", "state": {
        "status": "error", "input": {"command": "npm test"}, "error": "command not found: npm"}}),
    oc("step_finish", part={"id": "prt_6", "type": "step-finish", "reason": "tool-calls", "cost": 0.0105,
                            "tokens": {"input": 9000, "output": 100, "reasoning": 20, "cache": {"read": 0, "write": 500}}}),
    oc("step_start", part={"id": "prt_7", "type": "step-start"}),
    oc("text", part={"id": "prt_8", "type": "text", "text": "Done: VALUE is 2.", "time": {"start": 3, "end": 4}}),
    oc("step_finish", part={"id": "prt_9", "type": "step-finish", "reason": "stop", "cost": 0.002,
                            "tokens": {"input": 300, "output": 30, "reasoning": 0, "cache": {"read": 9000, "write": 0}}}),
    oc("done", reason="idle", rejected=["external_directory"]),
]


def test_opencode_costs_are_summed_over_steps():
    p = OpencodeJsonParser()
    p.cwd = CWD
    shown, activities = run(p, OPENCODE_STREAM)
    no_raw_json(shown)
    assert shown[:4] == ["thinking: I should edit app.py", "Editing app.py.", "→ edit: src/app.py",
                         "✗ bash: npm test: command not found: npm"]
    assert "Done: VALUE is 2." in shown
    assert shown[-2].startswith("✓ done ($0.0125, ")
    assert "permission requests rejected: external_directory" in shown[-1]
    assert p.usage.cost == pytest.approx(0.0125)
    assert p.usage.input_tokens == 9000 + 500 + 300 + 9000 and p.usage.output_tokens == 100 + 20 + 30
    assert p.final_text == "Done: VALUE is 2."
    assert activities[-1] == "done" and p.error == ""


def test_opencode_error_event():
    p = OpencodeJsonParser()
    shown, _ = run(p, [oc("step_start", part={"type": "step-start"}),
                       oc("error", error={"name": "ProviderAuthError",
                                          "data": {"providerID": "anthropic", "message": "Invalid API key."}})])
    assert shown == ["✗ error: Invalid API key."]
    assert p.error == "opencode: Invalid API key." and p.usage.cost is None


# ---------------------------------------------------------------------------------------------- pi
def pi_assistant(content, cost, stop="stop", error=None):
    msg = {"role": "assistant", "content": content, "api": "anthropic-messages", "provider": "anthropic",
           "model": "claude-sonnet-4-5", "stopReason": stop, "timestamp": 1,
           "usage": {"input": 1000, "output": 50, "cacheRead": 200, "cacheWrite": 0, "totalTokens": 1250,
                     "cost": {"input": cost / 2, "output": cost / 2, "cacheRead": 0, "cacheWrite": 0, "total": cost}}}
    if error:
        msg["errorMessage"] = error
    return msg


def delta(text):
    return {"type": "message_update", "message": {"role": "assistant", "content": []},
            "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": text}}


PI_CALL = {"type": "toolCall", "id": "t1", "name": "bash", "arguments": {"command": "ls -la"}}
PI_STREAM = [
    {"type": "session", "version": 3, "id": "uuid", "timestamp": "2026-01-01T00:00:00Z", "cwd": CWD},
    {"type": "agent_start"},
    {"type": "turn_start"},
    {"type": "message_start", "message": {"role": "user", "content": [{"type": "text", "text": "hi"}]}},
    {"type": "message_end", "message": {"role": "user", "content": [{"type": "text", "text": "hi"}]}},
    {"type": "message_start", "message": {"role": "assistant", "content": []}},
    {"type": "message_update", "message": {}, "assistantMessageEvent": {"type": "thinking_delta", "delta": "hm"}},
    delta("Looking at "), delta("the files.\nOne "), delta("moment."),
    {"type": "message_end", "message": pi_assistant([{"type": "text", "text": "Looking at the files.\nOne moment."},
                                                     PI_CALL], 0.01, "toolUse")},
    {"type": "tool_execution_start", "toolCallId": "t1", "toolName": "bash", "args": {"command": "ls -la"}},
    {"type": "tool_execution_update", "toolCallId": "t1", "toolName": "bash", "args": {}, "partialResult": {}},
    {"type": "tool_execution_end", "toolCallId": "t1", "toolName": "bash", "isError": True,
     "result": {"content": [{"type": "text", "text": "ls: cannot access: Permission denied"}]}},
    {"type": "message_end", "message": {"role": "toolResult", "toolCallId": "t1", "toolName": "bash",
                                        "content": [], "isError": True}},
    {"type": "turn_end", "message": {}, "toolResults": []},
    {"type": "auto_retry_start", "attempt": 1, "maxAttempts": 3, "delayMs": 1000, "errorMessage": "overloaded"},
    {"type": "auto_retry_end", "success": True, "attempt": 1},
    {"type": "turn_start"},
    {"type": "message_end", "message": pi_assistant([{"type": "text", "text": "All done."}], 0.0025)},
    {"type": "agent_end", "messages": []},
]


def test_pi_stream_costs_summed_text_not_repeated():
    p = PiJsonParser()
    shown, activities = run(p, PI_STREAM)
    no_raw_json(shown)
    assert shown == [
        "pi session started",
        "Looking at the files.",
        "One moment.",
        "→ bash: ls -la",
        "✗ bash: ls: cannot access: Permission denied",
        "retrying (attempt 1/3): overloaded",
        "All done.",  # not streamed: shown from message_end
        "✓ done ($0.0125, 2500 tokens)",
    ]
    assert activities[:3] == ["starting", "thinking", "writing"] and activities[-1] == "done"
    assert p.usage.cost == pytest.approx(0.0125)
    assert p.usage.input_tokens == 2400 and p.usage.output_tokens == 100
    assert p.final_text == "All done." and p.error == ""


def test_pi_error_stop_reason_sets_error():
    p = PiJsonParser()
    shown, _ = run(p, PI_STREAM[:2] + [
        {"type": "message_end", "message": pi_assistant([], 0.001, "error", error="429 rate_limit_error")},
        {"type": "agent_end", "messages": [pi_assistant([{"type": "text", "text": "partial"}], 0)]}])
    assert "✗ error: 429 rate_limit_error" in shown
    assert p.error == "pi: 429 rate_limit_error"
    assert p.final_text == "partial"  # from agent_end's messages


# ------------------------------------------------------------------------------------- robustness
JSON_PARSERS = [ClaudeStreamParser, CodexJsonParser, GeminiStreamParser, OpencodeJsonParser, PiJsonParser]
MALFORMED = [
    "this is not json {",
    '{"type": "assistant", "message": ',  # truncated
    "[1, 2, 3]",
    '"just a string"',
    "{not json at all}",
    "Error: something went wrong on stderr",
    "\ufffd\ufffd binary garbage \ufffd",
]


@pytest.mark.parametrize("cls", JSON_PARSERS)
def test_malformed_lines_are_shown_as_text(cls):
    p = cls()
    for line in MALFORMED:
        assert p.feed(line) == [line]
    assert p.feed("") == [] and p.feed("   ") == []
    p.finish()
    assert "Error: something went wrong on stderr" in p.final_text  # no structured text: the tail


@pytest.mark.parametrize("cls", JSON_PARSERS)
def test_unknown_events_are_shown_raw(cls):
    p = cls()
    line = '{"type": "brand_new_event", "payload": {"x": 1}}'
    assert p.feed(line) == [line]
    no_type = '{"hello": "world"}'
    assert p.feed(no_type) == [no_type]


# events of every known type with fields of the wrong type: never an exception
WRONG = [None, 5, "str", [1], {"a": 1}, True, -3.5]
KNOWN_TYPES = ["system", "assistant", "user", "result", "stream_event", "thread.started", "turn.started",
               "turn.completed", "turn.failed", "item.started", "item.updated", "item.completed", "error",
               "init", "message", "tool_use", "tool_result", "step_start", "text", "reasoning", "step_finish",
               "done", "session", "agent_start", "turn_start", "message_start", "message_update", "message_end",
               "tool_execution_start", "tool_execution_end", "agent_end", "auto_compaction_start",
               "auto_compaction_end", "auto_retry_start", "auto_retry_end"]
FIELDS = ["subtype", "message", "content", "usage", "item", "part", "error", "result", "total_cost_usd",
          "stats", "status", "role", "delta", "tool_name", "parameters", "args", "toolName", "isError",
          "assistantMessageEvent", "messages", "permission_denials", "cwd", "model", "rejected", "event"]


def random_value(rng: random.Random, depth: int = 0):
    if depth > 2:
        return rng.choice(WRONG[:3])
    kind = rng.randrange(6)
    if kind == 0:
        return {rng.choice(FIELDS + ["type", "text", "id", "changes", "items", "cost", "tokens"]):
                random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if kind == 1:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return rng.choice(WRONG)


@pytest.mark.parametrize("cls", JSON_PARSERS)
def test_fuzzed_events_never_crash(cls):
    rng = random.Random(cls.__name__)
    p = cls()
    for _ in range(1500):
        event = {"type": rng.choice(KNOWN_TYPES)}
        for _ in range(rng.randrange(5)):
            event[rng.choice(FIELDS)] = random_value(rng)
        out = p.feed(json.dumps(event))
        assert isinstance(out, list) and all(isinstance(x, str) for x in out)
    p.finish()
    assert isinstance(p.final_text, str) and isinstance(p.error, str)
    assert p.usage.cost is None or isinstance(p.usage.cost, float)


def test_aider_and_text_parsers_take_anything():
    for cls in (AiderParser, TextParser):
        p = cls()
        for line in MALFORMED + ["Tokens: lots sent, none received.", "Cost: $abc message", "<<<<<<< SEARCH",
                                 ">>>>>>> REPLACE", "Applied edit to "]:
            assert p.feed(line) == [line]
        p.finish()


def test_long_lines_are_clipped_for_display_but_parsed_whole():
    p = ClaudeStreamParser()
    big = "x" * 100_000
    out = p.feed(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": big,
                             "total_cost_usd": 1.5}))
    assert out == ["✓ success, $1.5000"]
    p.finish()
    assert p.final_text == big and p.usage.cost == 1.5
    shown = TextParser().feed("y" * 100_000)
    assert len(shown[0]) == MAX_SHOWN + len(" [...]")


def test_registry():
    assert set(known_formats()) == {"text", "claude-stream-json", "codex-json", "aider", "gemini-stream-json",
                                    "opencode-json", "pi-json"}
    assert isinstance(make_parser("no-such-format"), TextParser)
    for fmt, cls in PARSERS.items():
        assert type(make_parser(fmt)) is cls
        assert make_parser(fmt) is not make_parser(fmt)  # fresh state per agent run


def test_claude_subagent_messages_are_indented_and_not_the_final_text():
    p = ClaudeStreamParser()
    sub = claude_msg({"type": "text", "text": "Subagent report"})
    sub["parent_tool_use_id"] = "toolu_task"
    shown, _ = run(p, [claude_msg({"type": "tool_use", "id": "toolu_task", "name": "Task",
                                   "input": {"description": "Explore the code", "prompt": "..."}}),
                       sub, claude_msg({"type": "text", "text": "Main answer"})])
    assert shown == ["→ Task: Explore the code", "  │ Subagent report", "Main answer"]
    assert p.final_text == "Main answer"


@pytest.mark.parametrize("cls,events", [
    (GeminiStreamParser, [gem("message", role="assistant", content="no newline at the end", delta=True)]),
    (PiJsonParser, [delta("no newline at the end")]),
])
def test_text_held_back_is_drained_at_exit(cls, events):
    p = cls()
    shown = []
    for ev in events:
        shown += p.feed(json.dumps(ev))
    assert shown == []
    assert p.drain() == ["no newline at the end"]
    assert p.drain() == []
    p.finish()
    assert isinstance(p.final_text, str)


def test_claude_success_subtype_with_is_error():
    # an API/auth failure: subtype "success" but is_error, the message in "result"
    p = ClaudeStreamParser()
    shown, _ = run(p, [{"type": "result", "subtype": "success", "is_error": True, "duration_ms": 300,
                        "num_turns": 1, "result": "Invalid API key · Please run /login", "total_cost_usd": 0}])
    assert p.error == "claude reported an error: Invalid API key · Please run /login"
    assert shown == ["✗ success, 1 turn(s), 0.3s, $0.0000: Invalid API key · Please run /login"]
    assert p.usage.cost == 0.0
