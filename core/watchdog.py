"""The agent watchdog: if corral itself dies (even by SIGKILL), no agent outlives it.

corral starts one watchdog process per corral process, in its own session, and keeps the write end
of a pipe to its stdin. It tells the watchdog each agent process group it starts, with its grace
period (``+PGID GRACE``), and each it has reaped (``-PGID``). When the pipe reaches EOF without a
clean ``bye`` (the corral process is gone, however it died), the watchdog sends TERM to every group
still registered, waits for each group's leader to exit (up to its grace period, and more for a
reaper: it ends every descendant of its command, the escaped ones too, before it exits), then KILLs
what is left of the groups, and exits. A parent-death signal alone would not do: it reaches only
the direct child, and only where that child acts on it (the reapers do).

Run as ``python -I -S .../watchdog.py`` (as the reapers are: without ``site`` it starts in a
third of the time, beside a run's own start); :class:`Watchdog` is the client side, which imports
what it needs (``subprocess``, ``atexit``) where it uses it: the watchdog's own start imports only
what its loop needs (``subprocess`` and ``signal``'s enums were two thirds of it).
"""

from __future__ import annotations

import _thread
import os
import sys
import time

TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:
    import signal
    import subprocess
else:
    import _signal as signal  # the signal module without its enums (see above)

if __package__:
    from .reaper import SLACK, alive, signal_group
else:  # run by its path, isolated: the reaper module beside it (its imports are the stdlib's)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from reaper import SLACK, alive, signal_group  # type: ignore[import-not-found,no-redef]

    del sys.path[0]


def _serve() -> int:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    groups: dict[int, float] = {}  # pgid: grace period
    stdin = sys.stdin.buffer
    for raw in stdin:
        line = raw.split()
        if line == [b"bye"]:
            return 0
        if len(line) == 2 and line[0][:1] == b"+" and line[0][1:].isdigit():
            groups[int(line[0][1:])] = float(line[1])
        elif len(line) == 1 and line[0][:1] == b"-" and line[0][1:].isdigit():
            groups.pop(int(line[0][1:]), None)
    # EOF without bye: corral died. Stop everything it left running.
    for pgid in list(groups):
        if not signal_group(pgid, signal.SIGTERM):
            del groups[pgid]
    deadline = time.monotonic() + max(groups.values(), default=0) + SLACK
    while time.monotonic() < deadline and any(alive(pgid) for pgid in groups):
        time.sleep(0.05)
    for pgid in groups:
        signal_group(pgid, signal.SIGKILL)
    return 0


class Watchdog:
    """Client: starts the watchdog on first use and registers process groups with it."""

    _instance: "Watchdog | None" = None
    _lock = _thread.allocate_lock()

    def __init__(self) -> None:
        import atexit
        import subprocess

        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )
        atexit.register(self.close)

    @classmethod
    def get(cls) -> "Watchdog | None":
        if os.environ.get("CORRAL_NO_WATCHDOG"):
            return None
        with cls._lock:
            if cls._instance is None or cls._instance.proc.poll() is not None:
                try:
                    cls._instance = Watchdog()
                except OSError:
                    return None
            return cls._instance

    def _send(self, text: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def register(self, pgid: int, grace: float) -> None:
        self._send(f"+{pgid} {grace!r}\n")

    def unregister(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """A clean exit: tell the watchdog to stand down, and reap it."""
        import subprocess

        if self.proc.poll() is None:
            self._send("bye\n")
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(_serve())
