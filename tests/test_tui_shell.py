"""``o`` (a shell in the focused workspace) in the real ``corral run`` dashboard in a pseudo-terminal,
while agents keep both cores busy: the shell must get the terminal every time, never stop on SIGTTIN
in a background process group (with the terminal dead until someone sends SIGCONT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import corral_state

# agents flooding output (the log writer thread and the loop busy): the load under which the dashboard
# lost the race to the shell it had just started
BUSY = "exec yes busy"
#: shells opened one after the other: before the fix, one of the first six stopped in each of 3 tries
ROUNDS = 12


class Pty:
    """``corral`` on a pseudo-terminal, with everything it writes collected."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = os.openpty()
        # a session of its own with the pty as its controlling terminal, as in a terminal emulator
        # (without one there is no job control: no foreground group, no SIGTTIN, no race)
        self.proc = subprocess.Popen(["setsid", "--ctty", *argv], cwd=cwd, env=env, stdin=slave, stdout=slave,
                                     stderr=slave)
        os.close(slave)
        self.master = master
        self.out = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.out += data

    def mark(self) -> int:
        with self._lock:
            return len(self.out)

    def wait_for(self, needle: bytes, since: int, timeout: float, what: str) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                at = self.out.find(needle, since)
            if at >= 0:
                return at + len(needle)
            if self.proc.poll() is not None:
                raise AssertionError(f"corral exited with {self.proc.returncode} waiting for {what}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; {stopped_processes(self.proc.pid)}; "
                             f"last output: {bytes(self.out[-600:])!r}")

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def stopped_processes(session: int) -> str:
    """The processes of ``session`` stopped by job control (state T), for the failure message."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat.rsplit(") ", 1)
        fields = rest.split()
        if fields[0] == "T" and int(fields[3]) == session:
            found.append(f"{entry.name} {name.split('(', 1)[1]}")
        # fields: state ppid pgrp session
    return f"stopped in the session: {found or 'none'}"


def test_shell_gets_the_terminal_every_time_under_load(repo: Path, wt_root: Path) -> None:
    plan = repo.parent / "plan.toml"
    plan.write_text(
        f'agent = "shell"\nsetup = "none"\napprove = "none"\nworktree_root = "{wt_root}"\n'
        f'[[tasks]]\nname = "one"\nprompt = \'{BUSY}\'\n'
        f'[[tasks]]\nname = "two"\nprompt = \'{BUSY}\'\n'
    )
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", LINES="40", SHELL="/bin/sh", ENV="",
               PS1="$ ")
    env.pop("CORRAL_RUN", None)
    term = Pty([sys.executable, "-m", "corral.tui.cli", "run", str(plan)], repo, env)
    try:
        term.wait_for(b"busy", 0, 30, "the agents")
        for i in range(ROUNDS):
            start = term.mark()
            term.send(b"o")
            at = term.wait_for(b"corral: agents keep running", start, 20, f"shell {i} to start")
            # the shell computes the answer: the terminal echoes what is typed even to a stopped shell
            term.send(f"echo $((40 + {i}))-answer; exit\n".encode())
            at = term.wait_for(f"{40 + i}-answer".encode(), at, 20, f"shell {i} to answer")
            term.wait_for(b"\x1b[?1049h", at, 20, f"the dashboard back after shell {i}")
        start = term.mark()
        term.send(b"q")
        term.wait_for(b"Stop the run", start, 20, "the quit question (detach, or stop the run)")
        term.send(b"y")
        assert term.proc.wait(timeout=30) == 130
    finally:
        term.close()
    assert corral_state(repo)["worktrees"] == []


def test_a_pager_or_shell_that_stops_gives_the_terminal_back(repo: Path, wt_root: Path) -> None:
    """Ctrl-Z in the pager ``l`` opened (or a shell ``o`` opened stopping itself): the program stops,
    and nobody would ever continue it; the dashboard comes back with a note, the program is closed."""
    plan = repo.parent / "plan.toml"
    plan.write_text(
        f'agent = "shell"\nsetup = "none"\napprove = "none"\nworktree_root = "{wt_root}"\n'
        f'[[tasks]]\nname = "one"\nprompt = \'i=0; while [ $i -lt 3000 ]; do echo "tick $i"; i=$((i+1)); sleep 0.1; done\'\n'
    )
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", LINES="40", SHELL="/bin/sh", ENV="",
               PS1="$ ", PAGER="less", LESS="")
    env.pop("CORRAL_RUN", None)
    term = Pty([sys.executable, "-m", "corral.tui.cli", "run", str(plan)], repo, env)
    try:
        term.wait_for(b"tick 3", 0, 30, "the agent")
        start = term.mark()
        term.send(b"l")
        at = term.wait_for(b"one.log", start, 20, "less showing the log")
        term.send(b"\x1a")  # Ctrl-Z: the terminal sends SIGTSTP to less, which stops
        at = term.wait_for(b"\x1b[?1049h", at, 20, "the dashboard back after Ctrl-Z in less")
        term.wait_for(b"was stopped", at, 20, "the note that less was closed")
        start = term.mark()
        term.send(b"o")
        at = term.wait_for(b"corral: agents keep running", start, 20, "the shell to start")
        term.send(b"kill -STOP $$\n")
        at = term.wait_for(b"\x1b[?1049h", at, 20, "the dashboard back after the shell stopped")
        term.wait_for(b"was stopped", at, 20, "the note that the shell was closed")
        assert "none" in stopped_processes(term.proc.pid)
        start = term.mark()
        term.send(b"q")
        term.wait_for(b"Stop the run", start, 20, "the quit question (detach, or stop the run)")
        term.send(b"y")
        assert term.proc.wait(timeout=30) == 130
    finally:
        term.close()
    assert corral_state(repo)["worktrees"] == []
