"""Shared behaviour of the fake agent CLIs in this folder (``claude``, ``codex``, ``aider``, ``gemini``,
``opencode``, ``pi``). Each fake reads its argv like the real CLI (refusing what the real one refuses)
and replays what the real CLI printed for a small task, recorded against a local stand-in of its
model API (``transcripts/<agent>-<scenario>.json``, made by ``record/record.py``; see core/AGENTS.md):
every line in the real order, the workspace path and the file name made this run's, and the files
the real CLI left (its own state files included) written when the real one wrote them.

What a fake does is chosen by words in the prompt, so that tasks of one run can differ:

``file=NAME``        the file the task writes (the recording's ``hello.py``), default ``<agent>.txt``
``exit=N``           exit code (default: the recording's); env ``FAKE_EXIT`` overrides
``sleep=S``          sleep S seconds after the edit, before the rest of the output
``gate=PATH``        after the edit, wait until PATH exists (a test's condition, not a time)
``grandchild=PATH``  start a ``sleep 300`` child (same process group) and write its pid to PATH
``+stubborn``        ignore SIGTERM (itself and the grandchild): only SIGKILL ends it
``+fail``            replay the ``error`` recording: the model API refused the key
``+denied``          replay the recording where every edit failed (codex: a patch outside the
                     workspace, rejected; opencode: edits set to "ask", auto-rejected)
``+garbage``         also print malformed and unknown lines
``+big``             make the final text 20,000 characters long (one long JSON line)

``FAKE_ARGV_LOG=PATH`` appends one JSON line per call: agent, argv, cwd (a follow-up's resume flags
included: each call replays a whole turn, the same session id as the recording's). ``FAKE_VERSION`` replaces
the recorded version that ``--version`` prints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time


def fail_usage(message: str, code: int = 2) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(code)


class Behaviour:
    def __init__(self, agent: str, prompt: str, argv: list[str], cwd: str | None = None) -> None:
        self.agent = agent
        self.prompt = prompt
        self.cwd = cwd or os.getcwd()
        kv = dict(re.findall(r"(?<![\w-])(file|exit|sleep|grandchild|gate)=(\S+)", prompt))
        flags = set(re.findall(r"(?<![\w-])\+(fail|denied|garbage|big|stubborn)\b", prompt))
        self.fail = "fail" in flags
        self.denied = "denied" in flags
        self.garbage = "garbage" in flags
        self.big = "big" in flags
        self.stubborn = "stubborn" in flags
        self.file = kv.get("file", f"{agent}.txt")
        exit_code = os.environ.get("FAKE_EXIT") or kv.get("exit")
        self.exit = int(exit_code) if exit_code is not None else None
        self.sleep = float(kv.get("sleep", 0))
        self.grandchild_file = kv.get("grandchild", "")
        self.gate = kv.get("gate", "")
        log = os.environ.get("FAKE_ARGV_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"agent": agent, "argv": argv, "cwd": self.cwd}) + "\n")
        if self.stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

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
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.05)

    def garbage_lines(self) -> None:
        if self.garbage:
            for line in ("this is not json {", '{"type": "assistant", "message": ', '{"type":"mystery_event","x":1}',
                         "[1, 2, 3]", '{"type": "assistant", "message": "not an object"}', ""):
                print(line, flush=True)


TRANSCRIPTS = os.path.join(os.path.dirname(os.path.realpath(__file__)), "transcripts")
RECORDED_FILE = "hello.py"  # the file the stand-in model asked every CLI to write
RECORDED_END = "to see it."  # how the recorded final text ends
#: what an unreadable file the real CLI left is replaced with (aider's SQLite repo-map cache)
BINARY = b"SQLite format 3\x00 (a fake cache)\x00\x01\x02"


def transcript(agent: str, scenario: str) -> dict:
    with open(os.path.join(TRANSCRIPTS, f"{agent}-{scenario}.json"), encoding="utf-8") as f:
        return json.load(f)


def version(agent: str) -> str:
    return os.environ.get("FAKE_VERSION") or transcript(agent, "write")["version"]


def replay(b: Behaviour, scenario: str, edit_marker: str, width: int = 0) -> int:
    """Print the recorded output of ``scenario`` as this run's and return its exit code. The files the
    real CLI left are written just before the first line holding ``edit_marker`` (the line that says
    the edit was made); ``sleep=``, a grandchild and ``+garbage`` come right after it. With ``width``,
    longer lines are wrapped at a space as a terminal of that width does (aider's output)."""
    rec = transcript(b.agent, scenario)
    lines = [part for line in rec["output"] for part in _wrap(_localise(line, b), width)]
    at = next((i for i, line in enumerate(lines) if edit_marker in line), None)
    for i, line in enumerate(lines):
        if i == at:
            write_files(b, rec["files"])
        print(line, flush=True)
        if i == at:
            b.garbage_lines()
            b.wait()
    if at is None:
        write_files(b, rec["files"])
        b.garbage_lines()
        b.wait()
    return rec["exit_code"] if b.exit is None else b.exit


def _wrap(line: str, width: int) -> list[str]:
    out = []
    while width and len(line) > width and " " in line[1:width + 1]:
        cut = line.rindex(" ", 1, width + 1)
        out.append(line[:cut + 1])
        line = line[cut + 1:]
    return out + [line]


def _localise(line: str, b: Behaviour) -> str:
    line = line.replace("{cwd}", b.cwd).replace(RECORDED_FILE, b.file)
    if b.big:
        line = line.replace(RECORDED_END, RECORDED_END + " " + "0123456789" * 2000)
    return line


def write_files(b: Behaviour, files: dict) -> None:
    for name, content in files.items():
        path = os.path.join(b.cwd, name.replace(RECORDED_FILE, b.file))
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(BINARY if content is None else content.encode())
