"""The real dashboard in a pseudo-terminal. ``corral run``'s run lives in the supervisor: SIGTERM or
a hangup (the terminal goes away, then SIGHUP) only detach the dashboard, the agents go on, and
``corral attach`` in another terminal shows the panes' history and live output. A run the dashboard
hosts itself (``corral demo``) is stopped by them, cleaned up, and the exit code is 130."""

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
from test_supervisor import start_detached

TICKER = 'i=0; while [ $i -lt 600 ]; do echo "tick $i"; i=$((i+1)); sleep 0.05; done'


def start_in_pty(repo: Path, wt_root: Path, *argv: str) -> tuple[subprocess.Popen, int, list[bytes]]:
    plan = repo.parent / "plan.toml"
    plan.write_text(
        f'agent = "shell"\nsetup = "none"\napprove = "none"\nworktree_root = "{wt_root}"\n'
        f'[[tasks]]\nname = "one"\nprompt = \'{TICKER}\'\n'
        f'[[tasks]]\nname = "two"\nprompt = \'{TICKER}\'\n'
    )
    master, slave = os.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", LINES="40")
    env.pop("CORRAL_RUN", None)
    proc = subprocess.Popen([sys.executable, "-m", "corral.tui.cli", *(argv or ("run", str(plan)))], cwd=repo,
                            env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
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


def hang_up(proc: subprocess.Popen, master: int, how: str) -> int:
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.close(master)  # the terminal goes away ...
        master = -1
        proc.send_signal(signal.SIGHUP)  # ... and the kernel would say so
    return master


def close(proc: subprocess.Popen, master: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if master >= 0:
        os.close(master)


@pytest.mark.parametrize("how", ["SIGTERM", "hangup"])
def test_the_dashboard_detaches_and_attach_shows_history_then_live_output(repo: Path, wt_root: Path, how: str,
                                                                          tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # each agent ticks, then waits at a gate while nobody watches, then ticks on
    gated = (f'i=0; while [ $i -lt 60 ]; do echo "tick $i"; i=$((i+1)); sleep 0.05; done; '
             f'while [ ! -f {gate} ]; do sleep 0.05; done; '
             f'while [ $i -lt 600 ]; do echo "tick $i"; i=$((i+1)); sleep 0.05; done')
    plan = repo.parent / "gated.toml"
    plan.write_text(f'agent = "shell"\nsetup = "none"\napprove = "none"\nworktree_root = "{wt_root}"\n'
                    f'[[tasks]]\nname = "one"\nprompt = \'{gated}\'\n')
    proc, master, screen = start_in_pty(repo, wt_root, "run", str(plan))
    try:
        deadline = time.monotonic() + 30
        while b"tick 3" not in b"".join(screen[-200:]) and time.monotonic() < deadline:
            assert proc.poll() is None, b"".join(screen)[-3000:]
            time.sleep(0.05)
        master = hang_up(proc, master, how)
        code = proc.wait(timeout=30)
    finally:
        close(proc, master)
    assert code == 0  # detached: the run goes on in the supervisor
    run = corral_state(repo)["runs"][-1]
    log = repo / ".git" / "corral" / "runs" / run / "logs" / "one.log"
    deadline = time.monotonic() + 30
    while "tick 59" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "tick 59" in log.read_text()  # printed while nobody watched
    proc, master, screen = start_in_pty(repo, wt_root, "attach")
    try:
        deadline = time.monotonic() + 30
        while b"tick 59" not in b"".join(screen) and time.monotonic() < deadline:
            assert proc.poll() is None, b"".join(screen)[-3000:]
            time.sleep(0.05)
        assert b"tick 59" in b"".join(screen)  # the pane's history
        mark = len(screen)
        gate.write_text("go")
        deadline = time.monotonic() + 30
        while b"tick 70" not in b"".join(screen[mark:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"tick 70" in b"".join(screen[mark:])  # then live output
        os.write(master, b"q")  # asks: detach, or stop the run (y)
        deadline = time.monotonic() + 20
        while b"Stop the run" not in b"".join(screen[mark:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.write(master, b"y")
        code = proc.wait(timeout=60)
    finally:
        close(proc, master)
    assert code == 130
    state = corral_state(repo)
    assert state["worktrees"] == []
    assert list(wt_root.iterdir()) == []


@pytest.mark.parametrize("how", ["SIGTERM", "hangup"])
def test_a_run_the_dashboard_hosts_is_stopped_cleaned_up_and_exits_130(tmp_path: Path, how: str) -> None:
    """``corral demo`` hosts its run in the dashboard's process (its scratch repository goes with it)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc, master, screen = start_in_pty(cwd, tmp_path, "demo", "--delay", "0.5")
    try:
        deadline = time.monotonic() + 60
        while b"RUNNING" not in b"".join(screen[-400:]) and time.monotonic() < deadline:
            assert proc.poll() is None, b"".join(screen)[-3000:]
            time.sleep(0.05)
        master = hang_up(proc, master, how)
        code = proc.wait(timeout=60)
    finally:
        close(proc, master)
    assert code == 130




def test_a_hangup_during_the_review_ends_the_attached_dashboard_at_once(repo: Path, wt_root: Path,
                                                                         tmp_path: Path) -> None:
    """The terminal closed while ``corral attach`` shows the review: the dashboard ends (nothing of the
    run is in it), however Textual's threads are stuck on the dead terminal, and the run still waits."""
    plan = repo.parent / "review.toml"
    plan.write_text(f'agent = "shell"\nsetup = "none"\nworktree_root = "{wt_root}"\n'
                    f'[[tasks]]\nname = "one"\nprompt = "echo one > one.txt"\n')
    run = start_detached(repo, plan)
    proc, master, screen = start_in_pty(repo, wt_root, "attach", run)
    try:
        deadline = time.monotonic() + 60
        while b"Merge approved" not in b"".join(screen[-300:]) and time.monotonic() < deadline:
            assert proc.poll() is None, b"".join(screen)[-3000:]
            time.sleep(0.05)
        assert b"Merge approved" in b"".join(screen[-300:]), "the review never opened"
        master = hang_up(proc, master, "hangup")
        code = proc.wait(timeout=10)
    finally:
        close(proc, master)
    assert code == 0
    res = subprocess.run([sys.executable, "-m", "corral.tui.cli", "runs", "--json"], cwd=repo, capture_output=True,
                         text=True)
    assert '"waiting": "review"' in res.stdout, res.stdout
    res = subprocess.run([sys.executable, "-m", "corral.tui.cli", "stop", run], cwd=repo, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert corral_state(repo)["worktrees"] == []
