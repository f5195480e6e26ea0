"""The real ``corral run`` dashboard in a pseudo-terminal: SIGTERM, and a hangup (the terminal goes
away, then SIGHUP), stop the agents, clean up and exit 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import corral_state

TICKER = 'i=0; while [ $i -lt 600 ]; do echo "tick $i"; i=$((i+1)); sleep 0.05; done'


def start_in_pty(repo: Path, wt_root: Path) -> tuple[subprocess.Popen, int, list[bytes]]:
    plan = repo.parent / "plan.toml"
    plan.write_text(
        f'agent = "shell"\nsetup = "none"\napprove = "none"\nworktree_root = "{wt_root}"\n'
        f'[[tasks]]\nname = "one"\nprompt = \'{TICKER}\'\n'
        f'[[tasks]]\nname = "two"\nprompt = \'{TICKER}\'\n'
    )
    master, slave = os.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", LINES="40")
    env.pop("CORRAL_RUN", None)
    proc = subprocess.Popen([sys.executable, "-m", "corral.tui.cli", "run", str(plan)], cwd=repo, env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    screen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            screen.append(data)

    threading.Thread(target=drain, daemon=True).start()
    return proc, master, screen


def wait_running(repo: Path, proc: subprocess.Popen, screen: list[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(corral_state(repo)["worktrees"]) == 2 and b"tick 3" in b"".join(screen[-200:]):
            return
        if proc.poll() is not None:
            raise AssertionError(f"corral exited early with {proc.returncode}: {b''.join(screen)[-2000:]!r}")
        time.sleep(0.1)
    raise AssertionError("agents never ran")


@pytest.mark.parametrize("how", ["SIGTERM", "hangup"])
def test_signal_stops_cleans_up_and_exits_130(repo: Path, wt_root: Path, how: str) -> None:
    proc, master, screen = start_in_pty(repo, wt_root)
    try:
        wait_running(repo, proc, screen)
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.close(master)  # the terminal goes away ...
            master = -1
            proc.send_signal(signal.SIGHUP)  # ... and the kernel would say so
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if master >= 0:
            os.close(master)
    assert code == 130
    state = corral_state(repo)
    assert state["worktrees"] == []
    assert list(wt_root.iterdir()) == []
