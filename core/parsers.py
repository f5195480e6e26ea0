"""Output parsers: turn an agent's stdout lines into readable pane lines, activity, final text and usage.

A parser is fed one decoded line at a time (without its newline) and returns the readable lines to
show for it (zero or more). It never raises on odd input: unknown or malformed lines are shown as
text. After the agent exits, :attr:`Parser.final_text` and :attr:`Parser.usage` hold what the
report shows, and :attr:`Parser.error` is set when the agent said it failed (even with exit code 0).

One parser per output format (see ``core/AGENTS.md`` for the formats and where they are documented):

========================  =====================================================================
``text``                  plain text (``shell`` and any command without structured output)
``claude-stream-json``    ``claude -p --output-format stream-json --verbose``
``codex-json``            ``codex exec --json``
``aider``                 aider's plain output (``--no-pretty``) with its ``Tokens: ... Cost: ...`` line
``gemini-stream-json``    ``gemini -o stream-json``
``opencode-json``         ``opencode run --format json``
``pi-json``               ``pi --mode json``
========================  =====================================================================
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .events import tail_lines, tail_of

#: Longest line a parser returns for display (the agent's log file keeps everything).
MAX_SHOWN = 16 * 1024
#: Longest one-line summary of a tool call, a result, a thought.
SUMMARY = 160


@dataclass
class Usage:
    """What an agent spent: cost in USD where the agent reports it, tokens otherwise."""

    cost: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add_cost(self, value: Any) -> None:
        cost = _num(value)
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost


@dataclass
class Parser:
    """Base parser: plain text. Every line is shown as it is; the last non-empty lines are the final text."""

    usage: Usage = field(default_factory=Usage)
    activity: str = ""
    final_text: str = ""
    #: set when the agent reported a failure in its output (the task fails even with exit code 0)
    error: str = ""
    #: the agent's working directory (set by the runtime): paths under it are shown relative
    cwd: str = ""
    #: tool calls that would have changed files (writes, edits, patches) and failed, and the agent's
    #: own words for the last one: an agent whose every edit failed may still say "Done"
    failed_edits: int = 0
    edit_error: str = ""
    #: the agent's own session id as its CLI reports it ("" when it reports none): a follow-up
    #: message resumes that session
    session_id: str = ""
    _tail: list[str] = field(default_factory=list)

    TAIL_LINES = 20

    def feed(self, line: str) -> list[str]:
        """Take one line of output; return the lines to show for it."""
        self._remember(line)
        return [_clip(line)]

    def feed_lines(self, lines: list[str]) -> list[str]:
        """Take a batch of lines; return the lines to show for them."""
        out: list[str] = []
        for line in lines:
            out += self.feed(line)
        return out

    def _remember(self, line: str) -> None:
        if line.strip():
            self._tail.append(_clip(line))
            if len(self._tail) > self.TAIL_LINES:
                del self._tail[0]

    def edit_failed(self, line: str) -> str:
        """Count one failed edit; ``line`` is what the agent said about it. Returns the line."""
        self.failed_edits += 1
        self.edit_error = short(_ANSI_RE.sub("", line), SUMMARY * 2)
        return line

    def drain(self) -> list[str]:
        """Called once after the agent exited, before :meth:`finish`: lines still held back (a
        streamed message that never ended with a newline), to show."""
        return []

    def finish(self) -> None:
        """Called once after the agent exited."""
        if not self.final_text:
            self.final_text = "\n".join(self._tail[-5:])


class TextParser(Parser):
    """Plain text output (the ``shell`` profile and any command without structured output)."""

    def feed_lines(self, lines: list[str]) -> list[str]:
        tail = [line for line in lines[-self.TAIL_LINES :] if line.strip()]
        if tail:
            self._tail = (self._tail + tail)[-self.TAIL_LINES :]
        return lines

    def feed_text(self, text: str) -> None:
        """A block of lines (each ending with a newline): only its last few are kept, for the final
        text, so only they are split off."""
        self.feed_lines(tail_lines(text, self.TAIL_LINES))

    def feed_data(self, data: bytes) -> None:
        """:meth:`feed_text` for a block of UTF-8 bytes: only its last few lines are decoded."""
        self.feed_lines(tail_of(data, self.TAIL_LINES))


# ------------------------------------------------------------------------------------------ helpers
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: tools that change files, by the names the built-in agents give them (lower case)
EDIT_TOOLS = frozenset({"write", "edit", "multiedit", "notebookedit", "write_file", "replace", "apply_patch",
                        "patch", "str_replace_based_edit_tool", "create_file"})


def is_edit_tool(name: str) -> bool:
    return name.lower() in EDIT_TOOLS


def _clip(text: str, limit: int = MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> int:
    n = _num(value)
    return int(n) if n is not None and n >= 0 else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def short(text: Any, limit: int = SUMMARY) -> str:
    """One line: the first non-empty line of ``text``, whitespace collapsed, cut at ``limit``."""
    if not isinstance(text, str):
        if text is None:
            return ""
        try:
            text = json.dumps(text, ensure_ascii=False)
        except (TypeError, ValueError):
            text = str(text)
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    first = " ".join(first.split())
    more = len([ln for ln in text.splitlines() if ln.strip()]) > 1
    if len(first) > limit:
        return first[: limit - 1] + "…"
    return first + (" …" if more else "")


def text_lines(text: str) -> list[str]:
    """A message as pane lines: trailing spaces and surrounding blank lines dropped."""
    lines = [_clip(ln.rstrip()) for ln in text.splitlines()]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _usage_note(usage: Usage) -> str:
    bits = []
    if usage.cost is not None:
        bits.append(f"${usage.cost:.4f}")
    if usage.tokens:
        bits.append(f"{usage.tokens} tokens")
    return f" ({', '.join(bits)})" if bits else ""


def _count_lines(text: str) -> int:
    return len([ln for ln in text.splitlines() if ln.strip()])


# argument names that say best what a tool call is about, in order of preference
_TOOL_KEYS = ("command", "cmd", "file_path", "filePath", "absolute_path", "path", "dir_path", "notebook_path",
              "pattern", "query", "url", "description", "prompt", "title", "name")


def tool_summary(name: str, args: Any, cwd: str = "") -> str:
    """``Edit src/app.py`` / ``Bash: pytest -q``: what a tool call does, in one line."""
    name = name or "tool"
    detail = ""
    if isinstance(args, dict):
        for key in _TOOL_KEYS:
            value = args.get(key)
            if isinstance(value, str) and value.strip():
                detail = value
                if key in ("file_path", "filePath", "absolute_path", "path", "dir_path", "notebook_path"):
                    detail = _rel(value, cwd)
                break
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                detail = " ".join(value)  # codex-style argv lists
                break
        else:
            todos = args.get("todos")
            if isinstance(todos, list):
                detail = f"{len(todos)} item(s)"
            else:
                strings = [v for v in args.values() if isinstance(v, str) and v.strip()]
                detail = strings[0] if strings else ""
    elif isinstance(args, str):
        detail = args
    detail = short(detail, SUMMARY - len(name) - 2)
    return f"{name}: {detail}" if detail else name


def _rel(path: str, cwd: str) -> str:
    if cwd and path.startswith(cwd.rstrip("/") + "/"):
        return path[len(cwd.rstrip("/")) + 1:]
    return path


def _content_text(content: Any) -> str:
    """Text of a message/tool-result ``content``: a string, or a list of ``{type: text, text}`` blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "\n".join(parts)
    if isinstance(content, dict):
        return _content_text(content.get("content", content.get("text", "")))
    return ""


class JsonLinesParser(Parser):
    """Base of the JSON-lines formats: one event per line, dispatched on its ``type``.

    Lines that are not a JSON object (a warning on stderr, a stack trace) are shown as they are;
    an event that breaks a handler's assumptions is shown as its raw line. Known events that say
    nothing worth showing return no lines. Unknown event types are shown raw (clipped).
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_text = ""  # the last assistant text seen, fallback for the final text

    def feed(self, line: str) -> list[str]:
        stripped = line.strip()
        if not stripped:
            return []
        event = None
        if stripped.startswith("{"):
            try:
                event = json.loads(stripped)
            except ValueError:
                event = None
        if not isinstance(event, dict):
            self._remember(line)
            return [_clip(x) for x in self.plain(line)]
        try:
            out = self.handle(event)
        except Exception:  # an event of a shape we did not expect: show it, never crash
            out = None
        if out is None:
            return [_clip(stripped, SUMMARY * 2)]
        return [_clip(x) for x in out]

    def handle(self, event: dict[str, Any]) -> list[str] | None:
        """Lines to show for one event; None when the event is unknown (shown raw)."""
        raise NotImplementedError

    def plain(self, line: str) -> list[str]:
        """Lines to show for a line that is not an event (the CLI's own log lines, on stderr)."""
        return [line]

    def finish(self) -> None:
        if not self.final_text:
            self.final_text = self._last_text.strip()
        if not self.final_text:
            super().finish()


# ------------------------------------------------------------------------------------------ claude
class ClaudeStreamParser(JsonLinesParser):
    """Claude Code ``-p --output-format stream-json --verbose``.

    Events: ``system`` (``init``: session_id, model, cwd, tools, permissionMode), ``assistant``
    (an Anthropic message: ``text``/``thinking``/``tool_use`` blocks), ``user`` (``tool_result``
    blocks), ``stream_event`` (partial messages, only with --include-partial-messages), and the
    final ``result`` (``subtype``, ``is_error``, ``result`` text, ``total_cost_usd``, ``usage``,
    ``num_turns``, ``duration_ms``, ``permission_denials``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._tools: dict[str, str] = {}  # tool_use id -> summary
        self._edits: set[str] = set()  # tool_use ids of edit tools
        self._result_seen = False

    def handle(self, ev: dict[str, Any]) -> list[str] | None:
        kind = ev.get("type")
        if kind == "system":
            sub = _str(ev.get("subtype"))
            if sub == "init":
                self.cwd = _str(ev.get("cwd"))
                self.session_id = _str(ev.get("session_id")) or self.session_id
                self.activity = "starting"
                bits = [f"model {ev['model']}" if _str(ev.get("model")) else "",
                        f"permission mode {ev['permissionMode']}" if _str(ev.get("permissionMode")) else ""]
                bits = [b for b in bits if b]
                return ["claude session started" + (f" ({', '.join(bits)})" if bits else "")]
            if sub == "compact_boundary":
                return ["(context compacted)"]
            return []  # hooks, status: nothing a person needs in the pane
        if kind in ("assistant", "user"):
            subagent = bool(ev.get("parent_tool_use_id"))  # a subagent's (Task tool) message: indented
            if kind == "assistant":
                out = self._assistant(_dict(ev.get("message")), subagent=subagent)
            else:
                out = self._user(_dict(ev.get("message")))
            return [f"  │ {line}" for line in out] if subagent else out
        if kind == "stream_event":
            inner = _dict(ev.get("event"))
            if inner.get("type") == "content_block_start":
                block = _dict(inner.get("content_block"))
                if block.get("type") == "tool_use":
                    self.activity = _str(block.get("name")) or self.activity
                elif block.get("type") == "thinking":
                    self.activity = "thinking"
                elif block.get("type") == "text":
                    self.activity = "writing"
            return []
        if kind == "result":
            return self._result(ev)
        return None

    def _assistant(self, msg: dict[str, Any], subagent: bool = False) -> list[str]:
        out: list[str] = []
        for block in _list(msg.get("content")):
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text":
                text = _str(block.get("text"))
                if text.strip():
                    if not subagent:
                        self._last_text = text
                    self.activity = "writing"
                    out += text_lines(text)
            elif btype == "thinking":
                thought = short(block.get("thinking"))
                self.activity = "thinking"
                if thought:
                    out.append(f"thinking: {thought}")
            elif btype == "tool_use":
                summary = tool_summary(_str(block.get("name")), block.get("input"), self.cwd)
                self._tools[_str(block.get("id"))] = summary
                if is_edit_tool(_str(block.get("name"))):
                    self._edits.add(_str(block.get("id")))
                self.activity = summary
                out.append(f"→ {summary}")
        return out

    def _user(self, msg: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for block in _list(msg.get("content")):
            if isinstance(block, dict) and block.get("type") == "tool_result" and block.get("is_error"):
                tid = _str(block.get("tool_use_id"))
                line = f"✗ {self._tools.get(tid, 'tool')}: {short(_content_text(block.get('content')))}"
                out.append(self.edit_failed(line) if tid in self._edits else line)
        return out

    def _result(self, ev: dict[str, Any]) -> list[str]:
        self._result_seen = True
        cost = _num(ev.get("total_cost_usd"))
        if cost is None:
            cost = _num(ev.get("cost_usd"))  # older versions
        if cost is not None:
            self.usage.cost = cost
        usage = _dict(ev.get("usage"))
        if usage:
            self.usage.input_tokens = (_int(usage.get("input_tokens")) + _int(usage.get("cache_creation_input_tokens"))
                                       + _int(usage.get("cache_read_input_tokens")))
            self.usage.output_tokens = _int(usage.get("output_tokens"))
        result = _str(ev.get("result"))
        if result.strip():
            self.final_text = result.strip()
        sub = _str(ev.get("subtype")) or "result"
        out = []
        for denial in _list(ev.get("permission_denials")):
            if isinstance(denial, dict):
                what = tool_summary(_str(denial.get("tool_name")), denial.get("tool_input"), self.cwd)
                out.append(f"permission denied: {what}")
        parts = [sub]
        if _int(ev.get("num_turns")):
            parts.append(f"{_int(ev.get('num_turns'))} turn(s)")
        if (ms := _num(ev.get("duration_ms"))) is not None:
            parts.append(f"{ms / 1000:.1f}s")
        if cost is not None:
            parts.append(f"${cost:.4f}")
        if ev.get("is_error") or (sub.startswith("error")):
            errors = [short(e) for e in _list(ev.get("errors")) if short(e)]
            detail = "; ".join(errors) or short(result) or sub
            self.error = f"claude reported an error: {detail}" if detail != sub else f"claude reported {sub}"
            self.activity = "failed"
            out.append(f"✗ {', '.join(parts)}: {detail}")
        else:
            self.activity = "done"
            out.append(f"✓ {', '.join(parts)}")
        return out


# ------------------------------------------------------------------------------------------- codex
#: codex's own log line (stderr) when the apply_patch tool is refused or fails
_CODEX_PATCH_ERROR = re.compile(r"\bERROR codex_core::tools::router: error=(?P<error>(?:patch rejected|apply_patch|"
                                r"Failed to).*)$")


class CodexJsonParser(JsonLinesParser):
    """``codex exec --json``: ``thread.started``, ``turn.started``, ``turn.completed`` (usage),
    ``turn.failed`` (error), ``item.started|updated|completed`` with items ``agent_message``,
    ``reasoning``, ``command_execution``, ``file_change``, ``mcp_tool_call``, ``web_search``,
    ``todo_list``, ``error``; top-level ``error``. Codex reports tokens, no cost.
    """

    def __init__(self) -> None:
        super().__init__()
        self._completed = False
        self._stream_error = ""
        self._logged_edit_error = False  # a failed edit said in a log line, before its file_change event

    def handle(self, ev: dict[str, Any]) -> list[str] | None:
        kind = ev.get("type")
        if kind == "thread.started":
            self.activity = "starting"
            tid = _str(ev.get("thread_id"))
            self.session_id = tid or self.session_id
            return [f"codex thread {tid} started" if tid else "codex thread started"]
        if kind == "turn.started":
            self.activity = "thinking"
            return []
        if kind == "turn.completed":
            usage = _dict(ev.get("usage"))
            # codex reports the thread's running totals: keep the last
            self.usage.input_tokens = _int(usage.get("input_tokens"))
            self.usage.output_tokens = _int(usage.get("output_tokens"))
            self.activity = "done"
            self._completed = True
            cached = _int(usage.get("cached_input_tokens"))
            return [f"✓ turn completed: {self.usage.input_tokens} input tokens"
                    + (f" ({cached} cached)" if cached else "") + f", {self.usage.output_tokens} output tokens"]
        if kind == "turn.failed":
            message = short(_dict(ev.get("error")).get("message")) or "turn failed"
            self.error = f"codex: {message}"
            self.activity = "failed"
            return [f"✗ turn failed: {message}"]
        if kind == "error":
            self._stream_error = short(ev.get("message")) or "unknown error"
            return [f"error: {self._stream_error}"]
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item(kind.split(".")[1], _dict(ev.get("item")))
        if kind in ("item.plan.delta", "request_user_input"):
            return []
        return None

    def _item(self, phase: str, item: dict[str, Any]) -> list[str] | None:
        itype = item.get("type") or item.get("item_type")  # item_type: the first experimental format
        if itype in ("agent_message", "assistant_message"):
            if phase != "completed":
                self.activity = "writing"
                return []
            text = _str(item.get("text"))
            if text.strip():
                self._last_text = text
            return text_lines(text)
        if itype == "reasoning":
            self.activity = "thinking"
            if phase != "completed":
                return []
            thought = short(_str(item.get("text")).replace("**", ""))
            return [f"thinking: {thought}"] if thought else []
        if itype == "command_execution":
            command = _str(item.get("command"))
            if phase == "started":
                self.activity = short(f"$ {command}", 80)
                return [f"$ {short(command, SUMMARY)}"]
            if phase == "updated":
                return []
            status = _str(item.get("status"))
            code = item.get("exit_code")
            output = _str(item.get("aggregated_output"))
            if status == "declined":
                return [f"✗ declined: {short(command)}"]
            if status == "failed" or (isinstance(code, int) and code != 0):
                tail = [ln for ln in output.splitlines() if ln.strip()][-3:]
                return [f"✗ exit {code}: {short(command, 100)}"] + [f"  {short(ln)}" for ln in tail]
            n = _count_lines(output)
            return [f"  exit {code if code is not None else 0}" + (f", {n} line(s) of output" if n else "")]
        if itype == "file_change":
            if phase != "completed":
                return []
            changes = [c for c in _list(item.get("changes")) if isinstance(c, dict)]
            failed = item.get("status") == "failed"
            names = ", ".join(f"{_rel(_str(c.get('path')), self.cwd)} ({_str(c.get('kind')) or 'update'})"
                              for c in changes)
            self.activity = "editing"
            if failed:
                line = f"✗ edit failed: {short(names, SUMMARY)}"
                if self._logged_edit_error:  # counted already, in codex's own words
                    self._logged_edit_error = False
                    return [line]
                return [self.edit_failed(line)]
            return [f"edited: {short(names, SUMMARY)}"]
        if itype == "mcp_tool_call":
            what = f"{_str(item.get('server'))}.{_str(item.get('tool'))}".strip(".")
            if phase == "started":
                self.activity = what
                return [f"→ {tool_summary(what, item.get('arguments'))}"]
            if phase == "completed" and (item.get("status") == "failed" or item.get("error")):
                return [f"✗ {what}: {short(_dict(item.get('error')).get('message')) or 'failed'}"]
            return []
        if itype == "web_search":
            if phase != "started":
                return []
            self.activity = short(f"web search: {_str(item.get('query'))}", 80)
            return [f"→ web search: {short(item.get('query'))}"]
        if itype == "todo_list":
            todos = [t for t in _list(item.get("items")) if isinstance(t, dict)]
            done = sum(1 for t in todos if t.get("completed"))
            if phase == "started":
                return [f"plan: {len(todos)} step(s)"] + [f"  [ ] {short(t.get('text'))}" for t in todos]
            current = next((t for t in todos if not t.get("completed")), None)
            if current is not None:
                self.activity = short(_str(current.get("text")), 80)
            return [f"plan: {done}/{len(todos)} done"] if phase == "updated" else []
        if itype == "error":
            return [f"error: {short(item.get('message'))}"]
        if itype == "plan":
            return text_lines(_str(item.get("text"))) if phase == "completed" else []
        if itype == "collab_tool_call":
            return [f"→ {_str(item.get('tool')) or 'collab'}"] if phase == "started" else []
        return None

    def plain(self, line: str) -> list[str]:
        m = _CODEX_PATCH_ERROR.search(line)
        if m:  # "ERROR codex_core::tools::router: error=patch rejected: writing outside of the project; ..."
            self._logged_edit_error = True
            return [self.edit_failed(f"✗ edit failed: {m.group('error')}")]
        return [line]

    def finish(self) -> None:
        # a stream error (reconnecting...) that the turn recovered from is no failure
        if not self.error and self._stream_error and not self._completed:
            self.error = f"codex: {self._stream_error}"
        super().finish()


# ------------------------------------------------------------------------------------------- aider
_AIDER_TOKENS = re.compile(r"^Tokens: (?P<sent>[\d.,]+[kM]?) sent,(?P<mid>.*?)(?P<recv>[\d.,]+[kM]?) received\.")
_AIDER_COST = re.compile(r"Cost: \$(?P<msg>[\d.,]+) message, \$(?P<session>[\d.,]+) session\.")
_AIDER_HEADER = re.compile(
    r"^(Aider v\d|Main model:|Weak model:|Editor model:|Model:|Git repo:|Repo-map:|Added .* to the chat|"
    r"Use /help|Cur working dir:|Git working dir:|Warning: |You can skip this check|Note: |"
    r"https://aider\.chat/|Update git name|Update git email|Analytics|Newer aider version|Run pip install|"
    r"Scanning repo:|Initial repo scan|Has it been deleted from the file system|"
    r"Using .+ model with API key from environment|Detected dumb terminal)"
)
_AIDER_APPLIED = re.compile(r"^Applied edit to (?P<file>.+)$")
_AIDER_FATAL = re.compile(r"^(litellm\.\w*Error\b|.*\bAuthenticationError\b|Missing these environment variables|"
                          r"Unable to find|The API provider has rate limited|API provider's servers are down|"
                          r"Model .* was not found)")
_AIDER_RETRY = re.compile(r"^Retrying in [\d.]+ seconds")
_AIDER_EDIT_FAILED = re.compile(r"^(# \d+ SEARCH/REPLACE blocks? failed to match|Unable to write file |"
                                r"Unable to create .*, skipping edits|The LLM did not conform to the edit format)")


def _aider_tokens(text: str) -> int:
    text = text.replace(",", "")
    mult = 1
    if text.endswith("k"):
        mult, text = 1000, text[:-1]
    elif text.endswith("M"):
        mult, text = 1_000_000, text[:-1]
    try:
        return int(round(float(text) * mult))
    except ValueError:
        return 0


class AiderParser(Parser):
    """aider with ``--no-pretty --no-stream``: plain text, no JSON.

    Every line is shown. The header (version, models, repo) is skipped for the final text; the
    reply is what aider printed after it, with edit blocks (``<<<<<<< SEARCH`` ... ``>>>>>>> REPLACE``)
    summarised, up to its usage line: what follows (the files it edits) is no reply unless another
    usage line comes. Usage comes from ``Tokens: 9.2k sent, 3.0k cache write, 2.0k cache hit, 150
    received.`` and ``Cost: $0.02 message, $0.02 session.`` (one line, or two when there are both cache
    writes and cache hits; "sent" already counts the cache writes; the session cost is cumulative:
    the last one wins). ``Applied edit to F`` becomes the activity. A model/API error line (``litellm.AuthenticationError: ...``) sets :attr:`error`
    unless a reply came through afterwards, because aider exits 0 after such errors.
    """

    def __init__(self) -> None:
        super().__init__()
        self._reply: list[str] = []
        self._in_block = False
        self._block_file = ""
        self._prev = ""
        self._fatal = ""
        self._edited: list[str] = []
        self._after: list[str] = []  # lines after a usage line: a reply only if another usage line follows
        self._closed = False

    def feed(self, line: str) -> list[str]:
        try:
            self._scan(line)
        except Exception:
            pass
        self._remember(line)
        self._prev = line
        return [_clip(line)]

    def _scan(self, line: str) -> None:
        s = line.strip()
        m = _AIDER_TOKENS.match(s)
        if m:
            self.usage.input_tokens += _aider_tokens(m.group("sent"))
            self.usage.output_tokens += _aider_tokens(m.group("recv"))
            for part in m.group("mid").split(","):  # "sent" counts the cache writes already, not the hits
                part = part.strip()
                if part.endswith("cache hit"):
                    self.usage.input_tokens += _aider_tokens(part.split()[0])
            self._reply += self._after
            self._after, self._closed = [], True
        c = _AIDER_COST.search(s)
        if c:
            try:
                self.usage.cost = float(c.group("session").replace(",", ""))
            except ValueError:
                pass
            self.activity = "waiting for edits"
            return
        if m:
            return
        a = _AIDER_APPLIED.match(s)
        if a:
            self._edited.append(a.group("file"))
            self.activity = f"edited {a.group('file')}"
            return
        if _AIDER_FATAL.match(s):
            self._fatal = s
            self.activity = "error"
            return
        if _AIDER_EDIT_FAILED.match(s):
            self.edit_failed(s)
        if _AIDER_RETRY.match(s):
            self.activity = short(s, 80)
            return
        if _AIDER_HEADER.match(s):
            return
        reply = self._after if self._closed else self._reply
        if s.startswith("<<<<<<< SEARCH"):
            # the block is announced by "path" then an opening fence ("```" or "```python")
            self._in_block = True
            if reply and reply[-1].strip().startswith("```"):
                reply.pop()
            self._block_file = reply.pop().strip() if reply and reply[-1].strip() else ""
            self.activity = f"editing {self._block_file}" if self._block_file else "editing"
            return
        if self._in_block:
            if s.startswith(">>>>>>> REPLACE"):
                self._in_block = False
                reply.append(f"[edit {self._block_file}]" if self._block_file else "[edit]")
            return
        if reply and reply[-1].startswith("[edit") and s.startswith("```") and not s.strip("`"):
            return  # closing fence of an edit block
        if s or reply:
            reply.append(_clip(line.rstrip()))
            if len(reply) > 400:  # a long session: the end of the reply is what counts
                del reply[:100]
            if s:
                self.activity = "writing"

    def finish(self) -> None:
        reply = text_lines("\n".join(self._reply))
        if reply:
            self.final_text = "\n".join(reply[-60:])
        if self._edited and not self.final_text:
            self.final_text = "Applied edits to " + ", ".join(self._edited)
        if self._fatal and not self._edited and self.usage.output_tokens == 0:
            self.error = f"aider: {short(self._fatal)}"
        if not self.final_text:
            super().finish()


# ------------------------------------------------------------------------------------------ gemini
class GeminiStreamParser(JsonLinesParser):
    """``gemini -o stream-json``: ``init`` (session_id, model), ``message`` (role, content, delta),
    ``tool_use`` (tool_name, tool_id, parameters), ``tool_result`` (tool_id, status, output, error),
    ``error`` (severity, message) and ``result`` (status, error, stats: total_tokens, input_tokens,
    output_tokens, cached, duration_ms, tool_calls). Gemini reports tokens, no cost.

    Assistant ``message`` deltas are joined; a pane line is shown when it is complete.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending = ""  # streamed text not yet ended by a newline
        self._turn: list[str] = []  # assistant text since the last tool call
        self._tools: dict[str, str] = {}
        self._edits: set[str] = set()

    def _flush(self) -> list[str]:
        if not self._pending:
            return []
        rest, self._pending = self._pending, ""
        return [ln for ln in text_lines(rest)]

    def handle(self, ev: dict[str, Any]) -> list[str] | None:
        kind = ev.get("type")
        if kind == "message":
            if ev.get("role") != "assistant":
                return []  # the user's prompt echoed back
            content = _str(ev.get("content"))
            self.activity = "writing"
            self._turn.append(content)
            if not ev.get("delta"):
                content = content if content.endswith("\n") else content + "\n"
            self._pending += content
            if "\n" not in self._pending:
                return []
            done, self._pending = self._pending.rsplit("\n", 1)
            return [_clip(ln.rstrip()) for ln in done.split("\n")]
        out = self._flush()
        if kind == "init":
            self.activity = "starting"
            self.session_id = _str(ev.get("session_id")) or self.session_id
            model = _str(ev.get("model"))
            return out + ["gemini session started" + (f" (model {model})" if model else "")]
        if kind == "tool_use":
            if "".join(self._turn).strip():
                self._last_text = "".join(self._turn)
            self._turn = []
            summary = tool_summary(_str(ev.get("tool_name")), ev.get("parameters"), self.cwd)
            self._tools[_str(ev.get("tool_id"))] = summary
            if is_edit_tool(_str(ev.get("tool_name"))):
                self._edits.add(_str(ev.get("tool_id")))
            self.activity = summary
            return out + [f"→ {summary}"]
        if kind == "tool_result":
            if ev.get("status") == "error":
                tid = _str(ev.get("tool_id"))
                err = _dict(ev.get("error"))
                line = f"✗ {self._tools.get(tid, 'tool')}: {short(err.get('message')) or 'failed'}"
                return out + [self.edit_failed(line) if tid in self._edits else line]
            return out
        if kind == "error":
            severity = _str(ev.get("severity")) or "error"
            return out + [f"{severity}: {short(ev.get('message'))}"]
        if kind == "result":
            stats = _dict(ev.get("stats"))
            self.usage.input_tokens = _int(stats.get("input_tokens"))
            self.usage.output_tokens = _int(stats.get("output_tokens"))
            if not self.usage.tokens and _int(stats.get("total_tokens")):
                self.usage.input_tokens = _int(stats.get("total_tokens"))
            parts = [_str(ev.get("status")) or "result"]
            if (ms := _num(stats.get("duration_ms"))) is not None:
                parts.append(f"{ms / 1000:.1f}s")
            if self.usage.tokens:
                parts.append(f"{self.usage.tokens} tokens")
            if _int(stats.get("tool_calls")):
                parts.append(f"{_int(stats.get('tool_calls'))} tool call(s)")
            if ev.get("status") == "error":
                message = short(_dict(ev.get("error")).get("message")) or "error"
                self.error = f"gemini: {message}"
                self.activity = "failed"
                return out + [f"✗ {', '.join(parts)}: {message}"]
            self.activity = "done"
            return out + [f"✓ {', '.join(parts)}"]
        if out:  # an unknown event after streamed text: show both
            return out + [short(json.dumps(ev, ensure_ascii=False), SUMMARY * 2)]
        return None

    def drain(self) -> list[str]:
        return self._flush()

    def finish(self) -> None:
        text = "".join(self._turn).strip()
        if text:
            self._last_text = text
        super().finish()


# ---------------------------------------------------------------------------------------- opencode
#: opencode's plain line (not JSON) when a permission set to "ask" is refused in run mode
_OPENCODE_REJECTED = re.compile(r"permission requested: (?P<what>.+?); auto-rejecting")


class OpencodeJsonParser(JsonLinesParser):
    """``opencode run --format json``: lines ``{type, timestamp, sessionID, part | error}`` with types
    ``step_start``, ``text`` (part.text), ``reasoning``, ``tool_use`` (part.tool, part.state:
    status, input, output, title, error), ``step_finish`` (part.reason, part.cost, part.tokens: input,
    output, reasoning, cache.read, cache.write) and ``error`` (error.name, error.data.message). The cost
    is the sum of the steps' costs.

    opencode 1.18 ends with the ``step_finish`` whose reason is ``stop`` (older versions added a
    ``done`` event, also read), and says a permission it auto-rejects in a plain line, coloured:
    ``! permission requested: edit (hello.py); auto-rejecting``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._step_text: list[str] = []
        self._rejected: list[str] = []

    def _done(self) -> list[str]:
        self.activity = "done"
        return [f"✓ done{_usage_note(self.usage)}"]

    def plain(self, line: str) -> list[str]:
        text = _ANSI_RE.sub("", line).strip()
        m = _OPENCODE_REJECTED.search(text)
        if not m:
            return [line]
        self._rejected.append(m.group("what"))
        return [f"✗ permission rejected: {m.group('what')} (allow it in opencode's \"permission\" config, or add "
                "--auto to the command)"]

    def handle(self, ev: dict[str, Any]) -> list[str] | None:
        kind = ev.get("type")
        part = _dict(ev.get("part"))
        self.session_id = self.session_id or _str(ev.get("sessionID"))
        if kind == "step_start":
            self.activity = "thinking"
            self._step_text = []
            return []
        if kind == "text":
            text = _str(part.get("text"))
            if text.strip():
                self._step_text.append(text)
                self._last_text = "\n\n".join(t.strip() for t in self._step_text)
                self.activity = "writing"
            return text_lines(text)
        if kind == "reasoning":
            self.activity = "thinking"
            thought = short(part.get("text"))
            return [f"thinking: {thought}"] if thought else []
        if kind == "tool_use":
            state = _dict(part.get("state"))
            tool = _str(part.get("tool")) or "tool"
            title = _str(state.get("title"))
            summary = f"{tool}: {short(title, SUMMARY - len(tool) - 2)}" if title else \
                tool_summary(tool, state.get("input"), self.cwd)
            self.activity = summary
            if state.get("status") == "error":
                line = f"✗ {summary}: {short(state.get('error')) or 'failed'}"
                return [self.edit_failed(line) if is_edit_tool(tool) else line]
            return [f"→ {summary}"]
        if kind == "step_finish":
            self.usage.add_cost(part.get("cost"))
            tokens = _dict(part.get("tokens"))
            cache = _dict(tokens.get("cache"))
            self.usage.input_tokens += _int(tokens.get("input")) + _int(cache.get("read")) + _int(cache.get("write"))
            self.usage.output_tokens += _int(tokens.get("output")) + _int(tokens.get("reasoning"))
            return self._done() if part.get("reason") == "stop" else []
        if kind == "error":
            err = _dict(ev.get("error"))
            data = _dict(err.get("data"))
            message = short(data.get("message")) or short(err.get("message")) or _str(err.get("name")) or "error"
            self.error = f"opencode: {message}"
            self.activity = "failed"
            return [f"✗ error: {message}"]
        if kind == "done":  # opencode before 1.x
            rejected = [r for r in _list(ev.get("rejected")) if isinstance(r, str) and r not in self._rejected]
            self._rejected += rejected
            out = [] if self.activity == "done" else self._done()
            if rejected:
                out.append(f"permission requests rejected: {', '.join(rejected)} (allow them in opencode's config, "
                           "or add --auto to the command)")
            return out
        return None


# ---------------------------------------------------------------------------------------------- pi
class PiJsonParser(JsonLinesParser):
    """``pi --mode json``: a ``session`` header, then ``agent_start``, ``turn_start``,
    ``message_start|update|end`` (updates carry ``assistantMessageEvent``: ``text_delta``,
    ``thinking_delta``, ``toolcall_*``), ``tool_execution_start|update|end``, ``turn_end``,
    ``agent_end``, ``auto_compaction_*``, ``auto_retry_*``. Each assistant message has
    ``usage{input, output, cacheRead, cacheWrite, totalTokens, cost{..., total}}``, ``stopReason``
    (stop|length|toolUse|error|aborted) and ``errorMessage``. Cost = sum over assistant messages.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending = ""
        self._streamed = False
        self._last_error = ""

    def _flush(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return text_lines(rest) if rest.strip() else []

    def handle(self, ev: dict[str, Any]) -> list[str] | None:
        kind = ev.get("type")
        if kind == "session":
            self.cwd = _str(ev.get("cwd"))
            self.session_id = _str(ev.get("id")) or self.session_id
            self.activity = "starting"
            return ["pi session started"]
        if kind in ("agent_start", "turn_start", "turn_end"):
            if kind == "turn_start":
                self.activity = "thinking"
            return []
        if kind == "message_start":
            msg = _dict(ev.get("message"))
            if msg.get("role") == "assistant":
                self._pending, self._streamed = "", False
            return []
        if kind == "message_update":
            sub = _dict(ev.get("assistantMessageEvent"))
            stype = sub.get("type")
            if stype == "text_delta":
                self._streamed = True
                self.activity = "writing"
                self._pending += _str(sub.get("delta"))
                if "\n" not in self._pending:
                    return []
                done, self._pending = self._pending.rsplit("\n", 1)
                return [_clip(ln.rstrip()) for ln in done.split("\n")]
            if stype in ("thinking_start", "thinking_delta"):
                self.activity = "thinking"
            return []
        if kind == "message_end":
            return self._message_end(_dict(ev.get("message")))
        if kind == "tool_execution_start":
            summary = tool_summary(_str(ev.get("toolName")), ev.get("args"), self.cwd)
            self.activity = summary
            return self._flush() + [f"→ {summary}"]
        if kind == "tool_execution_update":
            return []
        if kind == "tool_execution_end":
            if ev.get("isError"):
                name = _str(ev.get("toolName")) or "tool"
                line = f"✗ {name}: {short(_content_text(_dict(ev.get('result')).get('content')) or ev.get('result'))}"
                return [self.edit_failed(line) if is_edit_tool(name) else line]
            return []
        if kind == "agent_end":
            self.activity = "done" if not self._last_error else "failed"
            ending = [] if self._last_error else [f"✓ done{_usage_note(self.usage)}"]
            if not self._last_text:
                for msg in reversed(_list(ev.get("messages"))):
                    if isinstance(msg, dict) and msg.get("role") == "assistant":
                        text = self._assistant_text(msg)
                        if text.strip():
                            self._last_text = text
                            break
            return self._flush() + ending
        if kind == "auto_compaction_start":
            self.activity = "compacting context"
            return ["(compacting context)"]
        if kind == "auto_compaction_end":
            return [f"compaction failed: {short(ev.get('errorMessage'))}"] if ev.get("errorMessage") else []
        if kind == "auto_retry_start":
            self.activity = "retrying"
            return [f"retrying (attempt {ev.get('attempt')}/{ev.get('maxAttempts')}): {short(ev.get('errorMessage'))}"]
        if kind == "auto_retry_end":
            return [] if ev.get("success") else [f"retries failed: {short(ev.get('finalError'))}"]
        return None

    @staticmethod
    def _assistant_text(msg: dict[str, Any]) -> str:
        return "\n".join(_str(b.get("text")) for b in _list(msg.get("content"))
                         if isinstance(b, dict) and b.get("type") == "text")

    def _message_end(self, msg: dict[str, Any]) -> list[str]:
        if msg.get("role") != "assistant":
            return []
        out = self._flush()
        text = self._assistant_text(msg)
        if not self._streamed and text.strip():
            out += text_lines(text)
        if text.strip():
            self._last_text = text
        usage = _dict(msg.get("usage"))
        self.usage.add_cost(_dict(usage.get("cost")).get("total"))
        self.usage.input_tokens += (_int(usage.get("input")) + _int(usage.get("cacheRead"))
                                    + _int(usage.get("cacheWrite")))
        self.usage.output_tokens += _int(usage.get("output"))
        stop = _str(msg.get("stopReason"))
        if stop in ("error", "aborted"):
            self._last_error = short(msg.get("errorMessage")) or stop
            self.activity = "failed"
            out.append(f"✗ {stop}: {self._last_error}")
        else:
            self._last_error = ""
        self._streamed = False
        return out

    def drain(self) -> list[str]:
        return self._flush()

    def finish(self) -> None:
        if self._last_error:
            self.error = f"pi: {self._last_error}"
        super().finish()


PARSERS: dict[str, type[Parser]] = {
    "text": TextParser,
    "claude-stream-json": ClaudeStreamParser,
    "codex-json": CodexJsonParser,
    "aider": AiderParser,
    "gemini-stream-json": GeminiStreamParser,
    "opencode-json": OpencodeJsonParser,
    "pi-json": PiJsonParser,
}


def make_parser(fmt: str) -> Parser:
    """A fresh parser for an output format name; unknown formats fall back to text."""
    return PARSERS.get(fmt, TextParser)()


def known_formats() -> list[str]:
    return sorted(PARSERS)
