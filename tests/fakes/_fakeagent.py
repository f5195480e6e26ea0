"""Shared behaviour of the fake agent CLIs in this folder (``claude``, ``codex``, ``aider``, ``gemini``,
``opencode``, ``pi``). Each fake reads its argv like the real CLI (refusing what the real one refuses),
prints the real CLI's documented output format, edits a file in its cwd and exits.

What a fake does is chosen by words in the prompt, so that tasks of one run can differ:

``file=NAME``        write NAME (default ``<agent>.txt``) in the cwd
``exit=N``           exit code (default 0, or 1 with ``+fail``); env ``FAKE_EXIT`` overrides
``sleep=S``          sleep S seconds after the edit, before the final events
``cost=X``           the cost it reports, in USD (default 0.0123; codex and gemini report tokens only)
``grandchild=PATH``  start a ``sleep 300`` child (same process group) and write its pid to PATH
``+stubborn``        ignore SIGTERM (itself and the grandchild): only SIGKILL ends it
``+fail``            report a failure the agent's own way (is_error, turn.failed, ...)
``+garbage``         also print malformed and unknown lines
``+big``             make the final text 20,000 characters long (one long JSON line)

``FAKE_ARGV_LOG=PATH`` appends one JSON line per call: agent, argv, cwd.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid


def fail_usage(message: str, code: int = 2) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(code)


class Behaviour:
    def __init__(self, agent: str, prompt: str, argv: list[str]) -> None:
        self.agent = agent
        self.prompt = prompt
        self.cwd = os.getcwd()
        self.session = str(uuid.uuid4())
        kv = dict(re.findall(r"(?<![\w-])(file|exit|sleep|cost|grandchild)=(\S+)", prompt))
        flags = set(re.findall(r"(?<![\w-])\+(fail|garbage|big|stubborn)\b", prompt))
        self.fail = "fail" in flags
        self.garbage = "garbage" in flags
        self.big = "big" in flags
        self.stubborn = "stubborn" in flags
        self.file = kv.get("file", f"{agent}.txt")
        self.exit = int(os.environ.get("FAKE_EXIT") or kv.get("exit", 1 if self.fail else 0))
        self.sleep = float(kv.get("sleep", 0))
        self.cost = float(kv.get("cost", 0.0123))
        self.grandchild_file = kv.get("grandchild", "")
        log = os.environ.get("FAKE_ARGV_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"agent": agent, "argv": argv, "cwd": self.cwd}) + "\n")
        if self.stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    @property
    def path(self) -> str:
        return os.path.join(self.cwd, self.file)

    @property
    def content(self) -> str:
        return f"written by fake {self.agent}\n"

    def write_file(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(self.content)

    def final_text(self) -> str:
        text = f"Done: created {self.file} with a greeting."
        if self.big:
            text += "\n" + ("0123456789" * 2000)
        return text

    def wait(self) -> None:
        """Start the grandchild (if asked) and sleep (if asked): the part a timeout interrupts."""
        if self.grandchild_file:
            def ignore_term() -> None:
                if self.stubborn:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)

            child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=ignore_term)
            with open(self.grandchild_file, "w", encoding="utf-8") as f:
                f.write(str(child.pid))
        if self.sleep:
            time.sleep(self.sleep)

    def garbage_lines(self) -> None:
        if self.garbage:
            for line in ("this is not json {", '{"type": "assistant", "message": ', '{"type":"mystery_event","x":1}',
                         "[1, 2, 3]", '{"type": "assistant", "message": "not an object"}', ""):
                print(line, flush=True)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def now_ms() -> int:
    return int(time.time() * 1000)
