"""The supervisor's protocol: newline-delimited JSON over a Unix socket, versioned.

Every message is one JSON object on one line. A client says ``{"op": "hello", "version": 1}``
first; the supervisor answers ``{"type": "hello", "version": 1, "pid": N, "runs": [...]}`` or
``{"type": "error", ...}`` when the versions differ. Then:

- ``{"op": "subscribe", "run": ID, "tail": N}`` -> ``{"type": "snapshot", ...}`` (the run's events so
  far, without output, and each pane's last ``N`` lines), then every event as ``--json`` prints it
  (output batched: ``{"type": "output", "lines": [...]}``), then ``{"type": "ended", "exit_code": N}``.
  A view may add ``"pace": S`` and ``"batch_tail": M`` (it repaints every ``S`` seconds and shows at
  most ``M`` lines of a pane at a time): output then comes at most every ``S`` seconds, each pane's
  cut to its newest ``M`` lines after a line saying how many were skipped. Other events never wait.
- commands carry an ``id`` and get ``{"type": "ack", "id": N, "ok": true, ...}`` or
  ``{"type": "ack", "id": N, "ok": false, "error": "one line"}``.

Framing is plain: JSON has no raw newlines, so a line is a message (the same framing as
``--json`` output, readable with any JSON-lines tool); lines are capped at :data:`MAX_LINE`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from .standby import peer

#: the protocol's version: a client and a supervisor of different versions refuse each other
VERSION = 1
#: the longest message accepted (a snapshot with many long panes stays well under it)
MAX_LINE = 64 * 1024 * 1024
#: commands a client may send about a run
COMMANDS = ("abort", "abort_all", "discard", "decide", "stop", "diff", "task_info", "send", "retry")
#: a Unix socket path longer than this does not fit ``sockaddr_un``
_SUN_PATH_MAX = 100


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, ensure_ascii=False, default=str) + "\n").encode()


def decode(line: bytes) -> dict[str, Any]:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a message must be a JSON object")
    return data


def socket_path(state_dir: Path) -> Path:
    """``supervisor.sock`` in the state dir; where that path is too long for a Unix socket, a
    private directory in the temp dir named after the state dir (the state dir keeps a link)."""
    path = Path(state_dir) / "supervisor.sock"
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    digest = hashlib.sha256(os.fsencode(Path(state_dir).resolve())).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"corral-{os.getuid()}" / f"{digest}.sock"


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``), or None."""
    try:
        return peer(sock)[1]
    except (OSError, AttributeError):
        return None
