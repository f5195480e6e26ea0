#!/usr/bin/env python3
"""A local stand-in for the model APIs the agent CLIs call, for recording their real output.

It serves, on 127.0.0.1 only, the four wire formats the built-in agents speak:

=============================================  ==========================================
``POST /v1/messages`` (+ ``/count_tokens``)    Anthropic Messages (Claude Code; aider via litellm)
``POST /v1/responses``                         OpenAI Responses (Codex)
``POST /v1/chat/completions``                  OpenAI Chat Completions (pi, opencode, aider)
``POST /v1beta/models/M:streamGenerateContent`` Gemini (Gemini CLI)
=============================================  ==========================================

Its "model" follows a script, the same for every CLI: asked with tools and no tool result yet, it
calls the CLI's own write tool (``Write``, ``write``, ``write_file``, Codex's ``apply_patch``) to
create ``hello.py`` in ``--dir``; once a tool result is in the conversation it answers with the final
text. For aider (no tools) it answers with a SEARCH/REPLACE block. Scenarios (``--scenario``):

``write``   the above
``error``   every model call is refused with 401 and an authentication error
``denied``  the write goes to a path the CLI cannot write (``/proc/corral-denied/hello.py``), then
            the model ends with its final text anyway, as a model does after a failed edit

Usage numbers are fixed (with cache reads and cache writes where the API has them), so recorded
costs are the CLIs' own arithmetic on known token counts. Every request is logged as one JSON line
to ``--log`` (method, path, model, tools offered), so what each CLI asked for can be read afterwards.

    python standin.py --dir /tmp/ws --port-file /tmp/port [--scenario write] [--log requests.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FILE = "hello.py"
CONTENT = 'print("hello")\n'
INTRO = f"I'll create {FILE} with a greeting."
#: longer than 80 columns, as a model's sentences are: a CLI that wraps its output shows it
FINAL = f"Done: created {FILE} with a greeting; run it with `python {FILE}` from the repository root to see it."
DENIED_DIR = "/proc/corral-denied"
WRITE_TOOLS = ("Write", "write", "write_file")
PATH_KEYS = ("file_path", "filePath", "path", "absolute_path")
#: token counts every answer reports (cache figures where the API has them)
USAGE = {"input": 1200, "cache_write": 3000, "cache_read": 2000, "output": 150}
ERROR = "Invalid API key (stand-in: scenario error)"


class Script:
    """What the model answers, given what it was asked."""

    def __init__(self, workdir: str, scenario: str) -> None:
        self.workdir = workdir
        self.scenario = scenario

    def target(self) -> str:
        base = DENIED_DIR if self.scenario == "denied" else self.workdir
        return os.path.join(base, FILE)

    def answer(self, body: dict, tools: list[str], has_result: bool) -> dict:
        """``{"text": ...}`` or ``{"text": ..., "tool": name, "args": {...}}`` (``patch`` for apply_patch)."""
        if not tools:
            schema = _json_schema(body)
            if schema is not None:
                return {"text": json.dumps(_instance(schema))}
            if _mentions(body, "SEARCH/REPLACE") or _mentions(body, "<<<<<<< SEARCH"):
                return {"text": self.aider_reply()}
            return {"text": "Greeting file"}  # titles, summaries and other side questions
        if has_result:
            return {"text": FINAL}
        if "apply_patch" in tools:
            path = self.target() if self.scenario == "denied" else FILE
            return {"text": INTRO, "tool": "apply_patch",
                    "patch": f"*** Begin Patch\n*** Add File: {path}\n+{CONTENT.rstrip()}\n*** End Patch\n"}
        name = next((t for t in WRITE_TOOLS if t in tools), "")
        if not name:
            return {"text": FINAL}
        return {"text": INTRO, "tool": name, "args": {"content": CONTENT}}

    def aider_reply(self) -> str:
        path = self.target() if self.scenario == "denied" else FILE
        return (f"{INTRO}\n\n{path}\n```python\n<<<<<<< SEARCH\n=======\n{CONTENT.rstrip()}\n>>>>>>> REPLACE\n```\n\n"
                f"{FINAL}\n")


def _mentions(body: Any, text: str) -> bool:
    return text in json.dumps(body)


def _json_schema(body: dict) -> dict | None:
    """The JSON schema a Gemini request wants its answer in (routing, next-speaker checks), if any."""
    gen = body.get("generationConfig") or {}
    if gen.get("responseMimeType") != "application/json":
        return None
    return gen.get("responseJsonSchema") or gen.get("responseSchema") or {}


def _instance(schema: dict) -> Any:
    """A small value that fits ``schema``: the user speaks next, the task is simple."""
    if schema.get("enum"):
        return "user" if "user" in schema["enum"] else schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        return {k: _instance(v) for k, v in (schema.get("properties") or {}).items()}
    return {"string": "simple task", "number": 1, "integer": 1, "boolean": False, "array": []}.get(kind)


def _path_key(schema: Any) -> str:
    props = (schema or {}).get("properties") or {}
    return next((k for k in PATH_KEYS if k in props), "file_path")


class Handler(BaseHTTPRequestHandler):
    server: "StandIn"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: requests go to --log
        pass

    # ----------------------------------------------------------------------------- plumbing
    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self.headers.get("Content-Encoding") == "gzip" and raw:
            import gzip
            raw = gzip.decompress(raw)
        elif self.headers.get("Content-Encoding") == "zstd" and raw:
            raise ValueError("zstd request bodies are not supported")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        return body if isinstance(body, dict) else {}

    def _json(self, obj: Any, code: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in events:
            chunk = (f"event: {name}\n" if name else "") + "data: " + (data if isinstance(data, str) else
                                                                      json.dumps(data)) + "\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()
        self.close_connection = True

    def _log(self, body: dict, tools: list[str], has_result: bool) -> None:
        self.server.note({"method": self.command, "path": self.path, "model": body.get("model"),
                          "stream": body.get("stream"), "tools": tools, "tool_result": has_result})
        if self.server.dump:
            self.server.note({"body": body})

    def do_GET(self) -> None:  # noqa: N802
        self.server.note({"method": "GET", "path": self.path})
        if self.path.rstrip("/").endswith("/models"):
            return self._json({"object": "list", "data": [{"id": "stand-in", "object": "model",
                                                           "owned_by": "corral"}], "models": []})
        self._json({"error": {"message": f"stand-in: no GET {self.path}"}}, 404)

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        path = self.path.split("?")[0]
        try:
            if path.endswith("/messages/count_tokens"):
                self._log(body, [], False)
                return self._json({"input_tokens": USAGE["input"]})
            if path.endswith("/messages"):
                return self.anthropic(body)
            if path.endswith("/responses"):
                return self.openai_responses(body)
            if path.endswith("/chat/completions"):
                return self.chat(body)
            if ":countTokens" in path:
                self._log(body, [], False)
                return self._json({"totalTokens": USAGE["input"]})
            if ":streamGenerateContent" in path or ":generateContent" in path:
                return self.gemini(body, stream=":streamGenerateContent" in path)
        except (BrokenPipeError, ConnectionResetError):
            return
        self.server.note({"method": "POST", "path": self.path, "unknown": True})
        self._json({"error": {"message": f"stand-in: no POST {self.path}"}}, 404)

    def _refuse(self, payload: Any) -> bool:
        if self.server.script.scenario != "error":
            return False
        self._json(payload, 401)
        return True

    # ---------------------------------------------------------------------------- Anthropic
    def anthropic(self, body: dict) -> None:
        tools = [t.get("name", "") for t in body.get("tools") or [] if isinstance(t, dict)]
        schemas = {t.get("name", ""): t.get("input_schema") for t in body.get("tools") or [] if isinstance(t, dict)}
        has_result = _mentions(body.get("messages"), '"tool_result"')
        self._log(body, tools, has_result)
        if self._refuse({"type": "error", "error": {"type": "authentication_error", "message": ERROR}}):
            return
        ans = self.server.script.answer(body, tools, has_result)
        model = body.get("model") or "claude-sonnet-4-5"
        usage = {"input_tokens": USAGE["input"], "cache_creation_input_tokens": USAGE["cache_write"],
                 "cache_read_input_tokens": USAGE["cache_read"], "output_tokens": USAGE["output"]}
        blocks: list[dict] = [{"type": "text", "text": ans["text"]}]
        if ans.get("tool"):
            args = dict(ans["args"], **{_path_key(schemas.get(ans["tool"])): self.server.script.target()})
            blocks.append({"type": "tool_use", "id": self.server.new_id("toolu_"), "name": ans["tool"],
                           "input": args})
        stop = "tool_use" if ans.get("tool") else "end_turn"
        mid = self.server.new_id("msg_")
        if not body.get("stream"):
            return self._json({"id": mid, "type": "message", "role": "assistant", "model": model, "content": blocks,
                               "stop_reason": stop, "stop_sequence": None, "usage": usage})
        events: list[tuple[str | None, Any]] = [("message_start", {"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": dict(usage, output_tokens=1)}})]
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": {"type": "text", "text": ""}}))
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": block["text"]}}))
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                         "usage": {"output_tokens": USAGE["output"]}}))
        events.append(("message_stop", {"type": "message_stop"}))
        self._sse(events)

    # ------------------------------------------------------------------------ OpenAI Responses
    def openai_responses(self, body: dict) -> None:
        tools = [t.get("name", "") for t in body.get("tools") or [] if isinstance(t, dict)]
        has_result = _mentions(body.get("input"), "_call_output")
        self._log(body, tools, has_result)
        if self._refuse({"error": {"message": ERROR, "type": "invalid_request_error", "code": "invalid_api_key"}}):
            return
        ans = self.server.script.answer(body, tools, has_result)
        rid, model = self.server.new_id("resp_"), body.get("model") or "gpt-5"
        items: list[dict] = [{"type": "message", "id": self.server.new_id("msg_"), "role": "assistant",
                              "status": "completed",
                              "content": [{"type": "output_text", "text": ans["text"], "annotations": []}]}]
        if ans.get("tool") == "apply_patch":
            call = self.server.new_id("call_")
            spec = next((t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name") == "apply_patch"),
                        {})
            if spec.get("type") == "custom":
                items.append({"type": "custom_tool_call", "id": self.server.new_id("ctc_"), "status": "completed",
                              "call_id": call, "name": "apply_patch", "input": ans["patch"]})
            else:
                items.append({"type": "function_call", "id": self.server.new_id("fc_"), "status": "completed",
                              "call_id": call, "name": "apply_patch",
                              "arguments": json.dumps({"input": ans["patch"]})})
        usage = {"input_tokens": USAGE["input"] + USAGE["cache_read"],
                 "input_tokens_details": {"cached_tokens": USAGE["cache_read"]},
                 "output_tokens": USAGE["output"], "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": USAGE["input"] + USAGE["cache_read"] + USAGE["output"]}
        resp = {"id": rid, "object": "response", "created_at": int(time.time()), "model": model, "status": "in_progress",
                "output": []}
        events: list[tuple[str | None, Any]] = [("response.created", {"type": "response.created", "response": resp})]
        for i, item in enumerate(items):
            events.append(("response.output_item.added", {"type": "response.output_item.added", "output_index": i,
                                                          "item": dict(item, status="in_progress")}))
            if item["type"] == "message":
                events.append(("response.output_text.delta", {"type": "response.output_text.delta",
                                                              "item_id": item["id"], "output_index": i,
                                                              "content_index": 0, "delta": ans["text"]}))
            events.append(("response.output_item.done", {"type": "response.output_item.done", "output_index": i,
                                                         "item": item}))
        events.append(("response.completed", {"type": "response.completed", "response": dict(
            resp, status="completed", output=items, usage=usage)}))
        self._sse(events)

    # ------------------------------------------------------------------- OpenAI Chat Completions
    def chat(self, body: dict) -> None:
        specs = {(t.get("function") or {}).get("name", ""): (t.get("function") or {}).get("parameters")
                 for t in body.get("tools") or [] if isinstance(t, dict)}
        tools = list(specs)
        has_result = any(isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages") or [])
        self._log(body, tools, has_result)
        if self._refuse({"error": {"message": ERROR, "type": "invalid_request_error", "code": "invalid_api_key"}}):
            return
        ans = self.server.script.answer(body, tools, has_result)
        cid, model, created = self.server.new_id("chatcmpl-"), body.get("model") or "stand-in", int(time.time())
        calls = []
        if ans.get("tool"):
            args = dict(ans["args"], **{_path_key(specs.get(ans["tool"])): self.server.script.target()})
            calls = [{"id": self.server.new_id("call_"), "type": "function",
                      "function": {"name": ans["tool"], "arguments": json.dumps(args)}}]
        finish = "tool_calls" if calls else "stop"
        usage = {"prompt_tokens": USAGE["input"] + USAGE["cache_read"], "completion_tokens": USAGE["output"],
                 "total_tokens": USAGE["input"] + USAGE["cache_read"] + USAGE["output"],
                 "prompt_tokens_details": {"cached_tokens": USAGE["cache_read"]}}
        if not body.get("stream"):
            message: dict = {"role": "assistant", "content": ans["text"]}
            if calls:
                message["tool_calls"] = calls
            return self._json({"id": cid, "object": "chat.completion", "created": created, "model": model,
                               "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                               "usage": usage})

        def chunk(delta: dict, finish_reason: str | None = None, **extra: Any) -> tuple[None, dict]:
            return None, {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}

        events: list[tuple[str | None, Any]] = [chunk({"role": "assistant", "content": ""}),
                                                chunk({"content": ans["text"]})]
        for i, call in enumerate(calls):
            events.append(chunk({"tool_calls": [dict(call, index=i)]}))
        events.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append((None, {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                  "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        self._sse(events)

    # ----------------------------------------------------------------------------------- Gemini
    def gemini(self, body: dict, stream: bool) -> None:
        decls = [d for t in body.get("tools") or [] if isinstance(t, dict) for d in t.get("functionDeclarations") or []]
        specs = {d.get("name", ""): d.get("parameters") or d.get("parametersJsonSchema") for d in decls}
        tools = list(specs)
        has_result = _mentions(body.get("contents"), '"functionResponse"')
        self._log(body, tools, has_result)
        if self._refuse({"error": {"code": 401, "message": ERROR, "status": "UNAUTHENTICATED"}}):
            return
        ans = self.server.script.answer(body, tools, has_result)
        parts: list[dict] = [{"text": ans["text"]}]
        if ans.get("tool"):
            args = dict(ans["args"], **{_path_key(specs.get(ans["tool"])): self.server.script.target()})
            parts.append({"functionCall": {"name": ans["tool"], "args": args}})
        usage = {"promptTokenCount": USAGE["input"] + USAGE["cache_read"], "candidatesTokenCount": USAGE["output"],
                 "cachedContentTokenCount": USAGE["cache_read"],
                 "totalTokenCount": USAGE["input"] + USAGE["cache_read"] + USAGE["output"]}
        resp = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage, "modelVersion": "gemini-2.5-pro", "responseId": self.server.new_id("r")}
        if stream:
            return self._sse([(None, resp)])
        self._json(resp)


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: Script, log: str | None, dump: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.dump = dump
        self.script = script
        self._log = log
        self._lock = threading.Lock()
        self._n = 0

    def new_id(self, prefix: str) -> str:
        with self._lock:
            self._n += 1
            return f"{prefix}standin{self._n:04d}"

    def note(self, entry: dict) -> None:
        if self._log:
            with self._lock, open(self._log, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True, help="the workspace the CLI runs in: where the model writes")
    ap.add_argument("--scenario", default="write", choices=("write", "error", "denied"))
    ap.add_argument("--port-file", required=True, help="written with the port once the server listens")
    ap.add_argument("--log", help="append one JSON line per request here")
    ap.add_argument("--dump", action="store_true", help="log whole request bodies too")
    args = ap.parse_args()
    server = StandIn(Script(os.path.realpath(args.dir), args.scenario), args.log, args.dump)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
