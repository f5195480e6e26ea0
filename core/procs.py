"""The process supervisor: start a command in its own process group, stream its output line by line,
log every byte to disk, and stop the whole group (TERM, then KILL after a grace period) on abort,
timeout, cancellation or exit. Every process started here is reaped.

No descendant outlives its command (Linux): every command runs under its own reaper
(:mod:`.reaper`), a child subreaper that leads the process group and ends whatever is left below it,
however it escaped the group (``setsid``, a double fork, a daemon), when the command exits, when the
group gets TERM (abort, timeout, Ctrl-C, the watchdog) or when corral dies. The reapers are forked
by one hub process per corral (no interpreter started per command) and are corral's children.
corral itself is a child subreaper too: what a killed reaper left is reparented to corral, which
kills it when the command's task ends. Every command gets its cwd as ``PWD``.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import functools
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import anyio
import anyio.lowlevel

from . import reaper
from .watchdog import Watchdog

#: Longest line handed to a display callback; the log file always keeps the full output.
MAX_DISPLAY_LINE = 16 * 1024
#: A read of output takes at most this much (a grown pipe, :data:`PIPE_MAX`, is read in several):
#: larger reads only make one agent's turn on the event loop longer, and cost more per byte (each
#: buffer that large is a fresh memory mapping to fault in)
CHUNK = 128 * 1024
#: An output pipe holds 64 KiB (the kernel's default); one whose command writes faster than corral
#: reads grows up to this, so the command runs ahead while corral is busy elsewhere or pauses
#: (:data:`READ_PAUSE`) and its flood comes in full reads, not in a read per write
PIPE_MAX = 1024 * 1024
#: What corral's grown pipes may take together beyond their default size: the kernel counts every
#: pipe's size against the user's 64 MiB (``pipe-user-pages-soft``), past which the user's new pipes
#: (git's, a shell's) get 8 KiB
PIPE_BUDGET = 16 * 1024 * 1024
#: After a read that emptied the pipe, the next one waits this long: a command writing small pieces
#: fast (``yes | head`` at a low priority writes 4 KiB at a time) is read in chunks of what it wrote
#: meanwhile, not at each write, each costing a wake-up, an event and a hand-over to the log writer;
#: a line after a quiet while is read as soon as it comes
READ_PAUSE = 0.001
DEFAULT_GRACE = 3.0

_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


_CONTROL_BYTES = tuple(bytes([c]) for c in range(32) if c != 10) + (b"\x7f",)
#: the control bytes but NUL, in two sets of at most 16 (see :func:`_control_scan`)
_CONTROL_SETS = (b"".join(_CONTROL_BYTES[1:16]), b"".join(_CONTROL_BYTES[16:]))


@functools.cache
def _control_scan() -> Callable[[bytes, bytes], int] | None:
    """libc's ``strcspn``, called holding the GIL (it is quick): the length of the start of a bytes
    object (NUL-terminated, as Python keeps each) free of the bytes of a set. glibc on x86-64 scans
    16 bytes a step for a set of at most 16: two calls cost less than half of 31 ``memchr``. None
    where there is no libc to ask."""
    try:
        import ctypes

        scan = ctypes.PyDLL(None).strcspn
    except (ImportError, OSError, AttributeError):
        return None
    scan.restype = ctypes.c_size_t
    scan.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    return cast(Callable[[bytes, bytes], int], scan)


def _plain(data: bytes, text: str) -> bool:
    """Whether output needs no cleaning line by line: no control byte but newlines, no bad UTF-8.
    C-speed scans: two ``strcspn`` (which stop at a NUL too), or where libc cannot be asked one
    ``memchr`` per control byte (those 31 scans were nearly half of what reading a flood cost)."""
    scan = _control_scan()
    if scan is not None and type(data) is bytes:
        clean = all(scan(data, chars) == len(data) for chars in _CONTROL_SETS)
    else:
        clean = not any(map(data.__contains__, _CONTROL_BYTES))
    # (for ASCII text, which cannot hold U+FFFD, the ``in`` answers without a scan)
    return clean and "\ufffd" not in text


def clean_lines(data: bytes) -> list[str]:
    """Complete lines (``data`` ends with a newline) to pane text; fast when nothing needs cleaning
    (C-speed scans), line by line only when a control byte or bad UTF-8 is present."""
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    lines.pop()  # after the last newline
    if _plain(data, text):
        return lines
    return [clean_line(line.encode("utf-8", "surrogatepass")) for line in lines]


def clip_lines(lines: list[str], limit: int) -> list[str]:
    """Lines longer than ``limit`` cut there, marked."""
    return [line[:limit] + " [...]" if len(line) > limit else line for line in lines]


def clean_block(data: bytes, limit: int) -> str:
    """Complete lines (``data`` ends with a newline) to pane text as one block, each line ending with
    a newline, as :func:`clean_lines` and :func:`clip_lines` make them, but never split when nothing
    needs cleaning nor cutting: a flood costs a few C-speed scans per chunk."""
    text = data.decode("utf-8", errors="replace")
    if _plain(data, text) and _no_line_over(data, limit):
        return text
    return "\n".join(clip_lines(clean_lines(data), limit)) + "\n"


def clean_data(data: bytes, limit: int) -> bytes:
    """:func:`clean_block` in UTF-8 bytes: ``data`` itself when nothing needs cleaning nor cutting,
    not copied, and not even decoded when it is ASCII (which is valid UTF-8): a flood costs its
    C-speed scans."""
    text = "" if data.isascii() else data.decode("utf-8", errors="replace")
    if _plain(data, text) and _no_line_over(data, limit):
        return data
    return clean_block(data, limit).encode()


def _no_line_over(data: bytes, limit: int) -> bool:
    """True when no line of ``data`` is longer than ``limit`` bytes (False: maybe one is): every
    aligned stretch of half that has a newline, so no gap between two is as long as ``limit``."""
    half = max(1, limit // 2)
    return all(data.find(b"\n", i, i + half) >= 0 for i in range(0, len(data) - half + 1, half))


def clean_line(raw: bytes) -> str:
    """Bytes of one output line to text fit for a pane: UTF-8 (bad bytes replaced), no ANSI escapes,
    no control characters, no trailing CR."""
    text = raw.decode("utf-8", errors="replace")
    if "\r" in text:
        # progress bars redraw with CR: show the last state of the line
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    if "\x1b" in text:
        text = _ANSI_RE.sub("", text)
    return _CTRL_RE.sub("\ufffd", text).replace("\t", "    ")


_SPAWN_LIMITER: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("corral_spawn_limiter")


def _spawn_limiter() -> anyio.CapacityLimiter:
    """One spawning thread at a time per event loop: spawns are serial in the kernel anyway, and
    sixteen threads running Popen's Python code at once would fight the event loop for the GIL."""
    try:
        return _SPAWN_LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _SPAWN_LIMITER.set(limiter)
        return limiter


#: The nice value of the scheduling group of corral's commands (agents, setup and checks), with the
#: kernel's autogroup scheduling: all of them share the reaper hub's session, one group (see
#: corral.core.reaper), so together they weigh a third of corral's own process when both want the
#: CPU, however many run. A command's own nice value only counts inside that group.
SESSION_NICE = 5

#: Commands run under a reaper where there is ``PR_SET_CHILD_SUBREAPER`` and /proc
REAPED = sys.platform == "linux"


@functools.cache
def _become_subreaper() -> bool:
    """Make corral a child subreaper, once, before its first command starts: orphans of a command
    whose reaper was killed come to corral (see :func:`_end_strays`), not to init."""
    return reaper.prctl(reaper.PR_SET_CHILD_SUBREAPER, 1)


class _Adopted:
    """What :class:`Child` uses of a ``Popen``, for a reaper the hub forked: corral's child by
    reparenting, not by a fork of its own, so ``subprocess`` does not know it."""

    def __init__(self, pid: int, out: int) -> None:
        self.pid = pid
        self.stdout = open(out, "rb", buffering=0)
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self) -> int:
        code = self._reap(0)
        assert code is not None
        return code

    def _reap(self, flags: int) -> int | None:
        with self._lock:
            if self.returncode is None:
                pid, status = os.waitpid(self.pid, flags)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
                    _Hub.reapers.discard(pid)  # (one step for the interpreter: no lock, which a
                    # spawn holds while the hub forks, on the event loop that polls this)
            return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class _Hub:
    """corral's end of the reaper hub (:func:`.reaper.serve`): started on first use (again if it
    died), or beforehand by :func:`start_hub`; one request at a time. Its environment is empty: it
    forks reapers, each given its command's environment, and is never taken for a process of a task."""

    _instance: "_Hub | None" = None
    _guard = threading.Lock()
    #: the sessions of the hubs this process started (each hub leads one, its reapers' and their
    #: commands'), and the reapers of those hubs not reaped yet (added under :attr:`_guard`, which a
    #: look for strays holds: it never finds a reaper being handed over)
    sessions: set[int] = set()
    reapers: set[int] = set()

    def __init__(self) -> None:
        #: whether a command was asked of it (:func:`stop_unused_hub` leaves such a hub alone)
        self.used = False
        mine, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", reaper.__file__, "--hub", str(theirs.fileno()),
                                          "--nice", str(SESSION_NICE)],
                                         pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True, env={})
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.sock = mine
        _Hub.sessions.add(self.proc.pid)
        atexit.register(self.close)

    def close(self) -> None:
        """On corral's way out: close its end of the socket, at which the hub ends, and reap it (its
        CPU, and that of the middlemen it reaped, is corral's own)."""
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @classmethod
    def spawn(cls, argv: list[str], cwd: str, env: dict[str, str], grace: float, status_w: int,
              done_w: int, nice: int = 0) -> _Adopted | None:
        """A reaper of ``argv`` forked by the hub; None when there is no hub to ask (it cannot be
        started): the caller starts the reaper itself. Raises OSError when the hub failed while
        asked (whether it forked the reaper is unknown: the command is not started again)."""
        with cls._guard:
            hub, _ = cls._live()
            if hub is None:
                return None
            hub.used = True
            out_r, out_w = os.pipe()
            try:
                pid = hub._ask(reaper.request(argv, os.path.abspath(cwd), env, grace, os.getpid(), nice),
                               [out_w, status_w, done_w])
            except BaseException:
                os.close(out_r)
                raise
            finally:
                os.close(out_w)
            if not pid:
                os.close(out_r)
                raise OSError(f"the reaper hub could not start {argv[0]}")
            cls.reapers.add(pid)
            return _Adopted(pid, out_r)

    @classmethod
    def _live(cls) -> "tuple[_Hub | None, bool]":
        """(the running hub, started now if there was none or it died; None if it cannot be
        started), and whether it was started by this call. Called under :attr:`_guard`."""
        hub = cls._instance
        if hub is not None and hub.proc.poll() is None:
            return hub, False
        if hub is not None:
            hub.close()
        try:
            cls._instance = cls()
        except OSError:
            cls._instance = None
        return cls._instance, cls._instance is not None

    def _ask(self, message: bytes, fds: list[int]) -> int:
        sent = socket.send_fds(self.sock, [message], fds)
        if sent < len(message):
            self.sock.sendall(message[sent:])
        answer = b""
        while len(answer) < 8:
            more = self.sock.recv(8 - len(answer))
            if not more:
                raise OSError("the reaper hub is gone")
            answer += more
        return int.from_bytes(answer, "little")


def start_hub() -> "_Hub | None":
    """Start the reaper hub now, where commands run under reapers and none is running: a run whose
    agents start in this process calls it beside its preflight (in a worker thread), so that its
    first agent does not wait for the hub's Python to start. Returns the hub it started, for
    :func:`stop_unused_hub` (None: it started none)."""
    if not (REAPED and _become_subreaper()):  # (the hub's reapers would go to init: it is not used)
        return None
    with _Hub._guard:
        hub, started = _Hub._live()
        return hub if started else None


def stop_unused_hub(hub: "_Hub | None") -> None:
    """End ``hub`` (as :func:`start_hub` returned it) unless a command was asked of it meanwhile: a
    run that preflight refused leaves no process behind."""
    with _Hub._guard:
        if hub is not None and hub is _Hub._instance and not hub.used:
            _Hub._instance = None
            atexit.unregister(hub.close)
            hub.close()


class Child:
    """A started command: its own process group, in a session without a terminal (its reaper hub's,
    or one of its own), stdin closed, stdout and stderr on one pipe read without blocking the event
    loop. On Linux the process started (``pid``, the group's leader) is the command's reaper, which
    runs the command as its child in the same group.

    Started from a worker thread, so the fork and exec (which under load can take tens of
    milliseconds while the child waits for a CPU) never stall the event loop, and awaited through a
    pidfd, so no thread sits in ``waitpid`` per child. Where pidfds are missing (not Linux, or an old
    kernel) a worker thread waits instead."""

    def __init__(self, popen: "subprocess.Popen[bytes] | _Adopted", reaped: bool = False, done: int = -1) -> None:
        self._popen = popen
        self.pid = popen.pid
        #: a reaper leads the group: it ends the command's descendants itself, given time to
        self.reaped = reaped
        #: the reaper's done pipe: a byte once its sweep is complete (see :meth:`swept`)
        self._done = done
        assert popen.stdout is not None
        self._out = popen.stdout.fileno()
        os.set_blocking(self._out, False)
        #: what the output pipe can hold (:meth:`grow_pipe`)
        self.pipe_size = _pipe_size(self._out)
        #: it may grow (not where its size is unknown, nor once the kernel refused)
        self._may_grow = self.pipe_size > 0
        self.pipe_size = self.pipe_size or CHUNK
        #: by how much it grew (given back to :data:`PIPE_BUDGET` on close)
        self._pipe_grown = 0
        try:
            self._pidfd: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self._waiter: anyio.Event | None = None

    @classmethod
    async def start(cls, argv: list[str], *, cwd: str, env: dict[str, str] | None, nice: int = 0,
                    grace: float = DEFAULT_GRACE) -> "Child":
        """Start ``argv`` in ``cwd`` with ``env`` (corral's own when None) and PWD set to ``cwd``
        (some programs, opencode, resolve paths against PWD before the real cwd); on Linux under a
        reaper that ends its descendants ``grace`` seconds after TERM. Raises OSError when the
        command cannot be started."""
        env = {**(os.environ if env is None else env), "PWD": os.path.abspath(cwd)}
        status_fd = done_fd = -1

        def spawn() -> Child:
            nonlocal status_fd, done_fd
            popen: subprocess.Popen[bytes] | _Adopted | None = None
            status_w = done_w = -1
            if REAPED:
                status_fd, status_w = os.pipe()
                done_fd, done_w = os.pipe()
            try:
                if REAPED and _become_subreaper():  # (else the hub's reapers would go to init)
                    popen = _Hub.spawn(argv, cwd, env, grace, status_w, done_w, nice)
                if popen is None:
                    full = argv
                    if REAPED:
                        full = [sys.executable, "-I", "-S", reaper.__file__, "--grace", repr(grace), "--parent",
                                str(os.getpid()), "--status-fd", str(status_w), "--done-fd", str(done_w), "--", *argv]
                    popen = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True,
                                             pass_fds=(status_w, done_w) if REAPED else ())
            finally:
                for fd in (status_w, done_w):
                    if fd >= 0:
                        os.close(fd)
            if nice and not isinstance(popen, _Adopted):
                # agents yield the CPU to corral itself, so the dashboard stays responsive under load;
                # set at once, so the child's own start-up already runs at the lower priority (a
                # reaper the hub forked does it itself, before it starts the command)
                reaper.renice_session(popen.pid, nice)
            try:
                return cls(popen, reaped=REAPED, done=done_fd)
            except BaseException:
                popen.kill()
                popen.wait()
                raise
        # shielded: a child started while the caller was being cancelled must still be handed back,
        # so the caller's cleanup stops and reaps it
        with anyio.CancelScope(shield=True):
            try:
                child = await anyio.to_thread.run_sync(spawn, limiter=_spawn_limiter())
            except BaseException:
                for fd in (status_fd, done_fd):
                    if fd >= 0:
                        os.close(fd)
                raise
            if status_fd >= 0:
                error = await _read_all(status_fd)
                if error:
                    await child.wait()
                    child.close()
                    code = int(error)
                    raise OSError(code, os.strerror(code), reaper.program(argv))
        return child

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        """Wait for the process to exit and reap it; several tasks may wait at once."""
        while self._popen.poll() is None:
            if self._waiter is not None:
                await self._waiter.wait()
                continue
            self._waiter = waiter = anyio.Event()
            try:
                if self._pidfd is not None:
                    await anyio.wait_readable(self._pidfd)
                else:
                    await anyio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
            finally:
                self._waiter = None
                waiter.set()
        code = self._popen.returncode
        assert code is not None  # (poll() set it)
        return code

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of output; b"" at the end of it."""
        while True:
            try:
                return os.read(self._out, size)
            except BlockingIOError:
                await anyio.wait_readable(self._out)

    def grow_pipe(self) -> None:
        """Let the output pipe hold four times more (at most :data:`PIPE_MAX`) while all of corral's
        grown pipes stay within :data:`PIPE_BUDGET`: the command writes faster than corral reads. A
        refusal (the user's pipes are over the kernel's limit) leaves it as it is, not asked again."""
        global _pipes_grown
        want = min(PIPE_MAX, self.pipe_size * 4)
        if not self._may_grow or want <= self.pipe_size or _pipes_grown + want - self.pipe_size > PIPE_BUDGET:
            return
        try:
            size = fcntl.fcntl(self._out, fcntl.F_SETPIPE_SZ, want)
        except OSError:
            size = 0
        if size <= self.pipe_size:
            self._may_grow = False
            return
        _pipes_grown += size - self.pipe_size
        self._pipe_grown += size - self.pipe_size
        self.pipe_size = size

    def swept(self) -> bool:
        """Whether the reaper, reaped by now, completed its sweep: then nothing below it was left
        when it exited, so nothing of the command can have been reparented to corral (a reaper
        killed before it wrote its byte did not say so)."""
        if self._done < 0:
            return False
        os.set_blocking(self._done, False)
        try:
            return os.read(self._done, 1) == b"."
        except BlockingIOError:  # a writer is left: the reaper is not gone
            return False

    def close(self) -> None:
        """Close the pipes and the pidfd (the process itself is stopped and reaped by then)."""
        global _pipes_grown
        _pipes_grown -= self._pipe_grown
        self._pipe_grown = 0
        for fd in (self._out, self._pidfd):
            if fd is not None:
                anyio.notify_closing(fd)
        assert self._popen.stdout is not None
        self._popen.stdout.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._done >= 0:
            os.close(self._done)
            self._done = -1


#: bytes corral's open output pipes hold beyond their default size (see :data:`PIPE_BUDGET`)
_pipes_grown = 0


def _pipe_size(fd: int) -> int:
    """The capacity of the pipe ``fd`` is an end of; 0 where it cannot be known (nor changed)."""
    try:
        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    except (AttributeError, OSError):
        return 0


async def _read_all(fd: int) -> bytes:
    """Everything written to a pipe until its last writer closes it; closes ``fd``. The reaper's
    status pipe: closed by the command's exec, or given the errno of an exec that failed."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 64)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            if not chunk:
                return data
            data += chunk
    finally:
        os.close(fd)


class _LogWriter(threading.Thread):
    """Appends agents' output to their log files from one thread of its own, once a write was slow
    (see :class:`_LogFile`). Chunks are written in the order they came."""

    _instance: "_LogWriter | None" = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        super().__init__(name="corral-logs", daemon=True)
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[Any, bytes | None, threading.Event | None]] = collections.deque()
        #: bytes handed over and not yet written
        self.backlog = 0

    @classmethod
    def get(cls) -> "_LogWriter":
        with cls._guard:
            if cls._instance is None or not cls._instance.is_alive():
                cls._instance = cls()
                cls._instance.start()
            return cls._instance

    def put(self, f: Any, data: bytes | None, done: threading.Event | None = None) -> None:
        with self._cond:
            self._queue.append((f, data, done))
            if data:
                self.backlog += len(data)
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                items = list(self._queue)
                self._queue.clear()
            written = 0
            for log, data, done in items:
                if data is not None:
                    written += len(data)
                    log.write_now(data)
                else:
                    log.close_now()
                if done is not None:
                    done.set()
            with self._cond:
                self.backlog -= written


#: File systems on a local disk (or in memory): a write there may be held back for a busy disk, but
#: never waits for a server. ``overlay`` is a container's, over a local one.
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "overlay", "zfs",
                                "bcachefs", "jfs", "reiserfs"})
_local_devices: dict[int, bool] = {}


def _on_local_disk(fd: int) -> bool:
    """Whether the file open as ``fd`` is on one of :data:`LOCAL_FILE_SYSTEMS` (asked once per device)."""
    try:
        device = os.fstat(fd).st_dev
    except OSError:
        return False
    if device not in _local_devices:
        _local_devices[device] = file_system_type(device) in LOCAL_FILE_SYSTEMS
    return _local_devices[device]


def file_system_type(device: int) -> str:
    """The type of the file system on ``device`` (a ``st_dev``) as /proc/self/mountinfo names it; ""
    where it does not say (no /proc, or a device no mount names, such as a btrfs subvolume's)."""
    want = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if fields[2] == want:
                    return fields[fields.index("-") + 1]
    except (OSError, ValueError, IndexError):
        pass
    return ""


class _LogFile:
    """One agent's log file, unbuffered (what is written can be read at once: ``l``). A write error
    (disk full) is raised on the next write, as if the write had been made then.

    Written on the event loop while writes are quick: a write of a 128 KiB chunk into the page cache
    takes 30 to 60 us, less than handing it to a thread (a wake-up and two hand-overs of the GIL per
    chunk, which made up a fifth of the CPU that reading a flood of output cost corral). The first
    write that takes longer than :attr:`SLOW` (the kernel holding writers back for a busy disk)
    sends every later log write of the process to the log writer thread, so a busy disk stalls the
    event loop once, for that one write, and never again. A log on a file system that is not a local
    disk's (NFS, SMB, FUSE, a virtual machine's share) goes to the thread from the start: a server
    that stops answering would hold the event loop, and with it the whole run, for as long."""

    #: Most bytes waiting for the disk before the agent's output is read again (back-pressure)
    BACKLOG = 16 * 1024 * 1024
    #: A log write that took longer than this (seconds) sends every later one to the writer thread
    #: (four times Python's switch interval: a write that waited for the GIL after the system call
    #: is not a slow disk's)
    SLOW = 0.02
    #: whether a write of this process was slow (set once, never cleared)
    threaded = False

    def __init__(self, path: Path) -> None:
        self._file = open(path, "ab", buffering=0)
        #: the writer thread, once this file handed it a write (its close then goes there too)
        self._writer: _LogWriter | None = None
        self.error: OSError | None = None
        #: whether writes may be made on the event loop (the file is on a local disk)
        self._inline = _on_local_disk(self._file.fileno())

    async def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self._inline and not _LogFile.threaded:
            start = time.perf_counter()
            self.write_now(data)
            if time.perf_counter() - start > self.SLOW:
                _LogFile.threaded = True
            return
        writer = self._writer = self._writer or _LogWriter.get()
        writer.put(self, data)
        while writer.backlog > self.BACKLOG:
            await anyio.sleep(0.005)

    async def aclose(self) -> None:
        """Once every byte handed over is on its way to the disk and the file is closed."""
        if self._writer is None:
            self.close_now()
            return
        done = threading.Event()
        self._writer.put(self, None, done)
        await anyio.to_thread.run_sync(done.wait)

    def write_now(self, data: bytes) -> None:
        """Write ``data`` whole (in the writer thread, once writes go there)."""
        if self.error is not None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
        except OSError as exc:
            self.error = exc

    def close_now(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc


@dataclass
class ProcResult:
    exit_code: int | None
    reason: str  # exited | timeout | aborted | cancelled | error
    duration: float


async def kill_group(proc: Child, grace: float = DEFAULT_GRACE) -> None:
    """Stop a process group: TERM, wait up to ``grace`` for the leader, then KILL whatever is left
    of the group (the leader can exit while its children live on), and reap the leader.

    A reaper leading the group is given its grace period and then some: after TERM it ends every
    descendant (the escaped ones too, KILL after ``grace``) before it exits, and the group's KILL
    must not cut that short."""
    with anyio.CancelScope(shield=True):
        pgid = proc.pid
        if proc.returncode is None:
            if reaper.signal_group(pgid, signal.SIGTERM):
                with anyio.move_on_after(grace + (reaper.SLACK if proc.reaped else 0)):
                    await proc.wait()
        else:
            # the leader is gone; give its children a moment after TERM before KILL
            if reaper.signal_group(pgid, signal.SIGTERM):
                deadline = time.monotonic() + min(grace, 0.5)
                while time.monotonic() < deadline and reaper.signal_group(pgid, 0):
                    await anyio.sleep(0.02)
        reaper.signal_group(pgid, signal.SIGKILL)
        await proc.wait()


class Supervised:
    """One supervised command. Create, then ``await run()``; ``stop(reason)`` from the same event loop
    ends it early (TERM to the group, KILL after ``grace``)."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: str | Path,
        env: dict[str, str] | None = None,
        on_lines: Callable[[list[str]], object] | None = None,
        on_text: Callable[[str], object] | None = None,
        log_path: Path | None = None,
        timeout: float = 0,
        grace: float = DEFAULT_GRACE,
        on_start: Callable[[int], None] | None = None,
        nice: int = 0,
        max_line: int = MAX_DISPLAY_LINE,
        on_data: Callable[[bytes], object] | None = None,
    ) -> None:
        self.argv = argv
        self.cwd = str(cwd)
        self.env = env
        self.on_lines = on_lines or (lambda lines: None)
        #: given, output goes here instead, as blocks of lines (see :func:`clean_block`), unsplit
        self.on_text = on_text
        #: given, output goes here instead, as those blocks in UTF-8 (see :func:`clean_data`): a
        #: flood's reads as they came, neither decoded nor copied
        self.on_data = on_data
        self.log_path = log_path
        self.timeout = timeout
        self.grace = grace
        self.on_start = on_start
        self.nice = nice
        #: longest line handed to on_lines (structured output needs whole lines: its parser shortens them)
        self.max_line = max(1024, max_line)
        self.pid: int | None = None
        self._stop = anyio.Event()
        self._stop_reason = "aborted"
        self._proc: Child | None = None
        #: whether the output was read to its end (else it is drained into the log as the command stops)
        self._eof = False

    def stop(self, reason: str = "aborted") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def run(self) -> ProcResult:
        start = time.monotonic()
        reason = "exited"
        try:
            proc = await Child.start(self.argv, cwd=self.cwd, env=self.env, nice=self.nice, grace=self.grace)
        except OSError as exc:
            self._say([f"corral: cannot start {reaper.program(self.argv)}: {exc.strerror or exc}"])
            return ProcResult(None, "error", time.monotonic() - start)
        self._proc = proc
        self.pid = proc.pid
        watchdog = Watchdog.get()
        if watchdog:
            watchdog.register(proc.pid, self.grace)
        if self.on_start:
            self.on_start(proc.pid)
        log = _LogFile(self.log_path) if self.log_path else None
        try:
            async with anyio.create_task_group() as tg:
                pump_done = anyio.Event()
                tg.start_soon(self._pump, proc, log, pump_done)
                watch = anyio.CancelScope()

                async def watcher() -> None:
                    nonlocal reason
                    with watch:
                        limit = self.timeout if self.timeout and self.timeout > 0 else math.inf
                        with anyio.move_on_after(limit):
                            await self._stop.wait()
                        reason = self._stop_reason if self._stop.is_set() else "timeout"
                        await kill_group(proc, self.grace)

                tg.start_soon(watcher)
                await proc.wait()
                watch.cancel()
                # children the agent left behind (a dev server) die with it
                await kill_group(proc, self.grace)
                with anyio.move_on_after(2):
                    await pump_done.wait()
                tg.cancel_scope.cancel()
        except BaseException:
            reason = "cancelled"
            raise
        finally:
            if log is not None and not self._eof:
                # stopped from outside (the run cancelled, its reader gone): what the command says
                # in its grace period still goes to its log
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as drain:
                        drained = anyio.Event()
                        drain.start_soon(_drain_to_log, proc, log, drained)
                        await kill_group(proc, self.grace)
                        with anyio.move_on_after(1):  # (what the pipe still holds)
                            await drained.wait()
                        drain.cancel_scope.cancel()
            else:
                await kill_group(proc, self.grace)
            swept = proc.swept()
            proc.close()
            if watchdog:
                watchdog.unregister(proc.pid)
            with anyio.CancelScope(shield=True):
                if proc.reaped and not swept:
                    await anyio.to_thread.run_sync(_end_strays, proc.pid, _marks(self.env))
                if log:
                    await log.aclose()
        code = proc.returncode
        return ProcResult(code, reason, time.monotonic() - start)

    def _say(self, lines: list[str]) -> None:
        """Lines to whichever of ``on_data``, ``on_text`` and ``on_lines`` takes the output."""
        if self.on_data is not None:
            self.on_data("".join(line + "\n" for line in lines).encode())
        elif self.on_text is not None:
            self.on_text("".join(line + "\n" for line in lines))
        else:
            self.on_lines(lines)

    async def _pump(self, proc: Child, log: _LogFile | None, done: anyio.Event) -> None:
        buf = b""
        say, on_text, on_data = self._say, self.on_text, self.on_data
        limit = self.max_line
        try:
            while True:
                chunk = await proc.read(CHUNK)
                if not chunk:
                    self._eof = True
                    break
                # (what a full pipe holds can be less than its size: a write may fill a page partly)
                drained = len(chunk) < min(CHUNK, proc.pipe_size) // 2
                if not drained:  # the command writes faster than we read: let its pipe hold more
                    proc.grow_pipe()
                if log:
                    await log.write(chunk)
                cut = chunk.rfind(b"\n")
                if cut < 0:
                    buf += chunk
                else:
                    complete, buf = _complete_lines(buf, chunk, cut), chunk[cut + 1 :]
                    if on_data is not None:
                        on_data(clean_data(complete, limit))
                    elif on_text is not None:
                        on_text(clean_block(complete, limit))
                    else:
                        lines = clean_lines(complete)
                        if len(complete) > limit and max(map(len, lines)) > limit:
                            lines = clip_lines(lines, limit)
                        say(lines)
                if len(buf) > limit:
                    # a line with no newline for a long while: show what we have, keep reading
                    say([clean_line(buf[:limit]) + " [...]"])
                    buf = b""
                if drained:  # let what is written meanwhile come as one chunk
                    await anyio.sleep(READ_PAUSE)
                else:  # a read from a full buffer does not yield: let the other agents and the UI run
                    await anyio.lowlevel.checkpoint()
            if buf:
                say([clean_line(buf)])
        finally:
            done.set()


async def _drain_to_log(proc: Child, log: _LogFile, done: anyio.Event) -> None:
    """The rest of a command's output into its log only, until the pipe's end (or a write fails)."""
    try:
        while chunk := await proc.read(CHUNK):
            await log.write(chunk)
    except OSError:
        pass
    finally:
        done.set()


def _complete_lines(head: bytes, chunk: bytes, cut: int) -> bytes:
    """The line ``head`` began, then ``chunk`` up to its newline at ``cut``: copied once (a flood's
    chunk is not joined to the line before it and then cut again), and not at all when ``chunk``
    is whole lines."""
    if head:
        return b"".join((head, memoryview(chunk)[: cut + 1]))
    return chunk if cut + 1 == len(chunk) else chunk[: cut + 1]


def _environ(pid: int) -> set[bytes]:
    """The ``NAME=value`` entries of a process's environment (empty when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return set(f.read().split(b"\0"))
    except OSError:
        return set()


def _marks(env: dict[str, str] | None) -> frozenset[bytes]:
    """The entries that tie a process to a run's task: its CORRAL_RUN and CORRAL_TASK."""
    env = env or {}
    if not (env.get("CORRAL_RUN") and env.get("CORRAL_TASK")):
        return frozenset()
    return frozenset(f"{k}={env[k]}".encode() for k in ("CORRAL_RUN", "CORRAL_TASK"))


def _strays(leader: int, marks: frozenset[bytes]) -> list[reaper.Proc]:
    """Children of corral that the command led by ``leader`` left: orphans of its subtree, which
    come to corral (a child subreaper) when the command's reaper was killed before its sweep. Known
    by the reaper's process group, or its session (a reaper corral started itself leads one), or by
    ``marks`` in their environment (those that left both); a zombie only by the first two. And every
    child of corral in the session of a reaper hub that is not one of the hub's reapers (nor the
    hub): only those reapers are corral's children there, so the rest are orphans of a reaper that
    is gone, this one's or another's."""
    me = os.getpid()
    with _Hub._guard:  # (no reaper is being handed over meanwhile)
        reapers = set(_Hub.reapers)
        return [p for p in reaper.processes()
                if p.ppid == me and p.pid != leader
                and (p.sid == leader or p.pgid == leader or (bool(marks) and marks <= _environ(p.pid))
                     or (p.sid in _Hub.sessions and p.pid != p.sid and p.pid not in reapers))]


def _end_strays(leader: int, marks: frozenset[bytes], timeout: float = 10) -> None:
    """KILL the strays of a command (with their process groups) and reap them, until none is left.
    Runs in a worker thread, after the command's reaper has been reaped."""
    pending: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        found = _strays(leader, marks)
        for p in found:
            if p.state != "Z":
                _kill(p.pid, p.pgid == p.pid)
            pending.add(p.pid)
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pending.discard(pid)
            except ChildProcessError:
                pending.discard(pid)
        if not (found or pending) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _kill(pid: int, group: bool) -> None:
    """SIGKILL a process, or the whole process group it leads."""
    if group:
        reaper.signal_group(pid, signal.SIGKILL)
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def processes_in(*paths: Path) -> list[int]:
    """Live processes whose working directory is one of ``paths`` or below it."""
    prefixes = [os.path.realpath(p) for p in paths]
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if any(cwd == p or cwd.startswith(p + os.sep) for p in prefixes):
            out.append(int(entry))
    return out


def gits_in(*paths: Path) -> list[int]:
    """Live git processes (``git``, ``git-*``) whose working directory is one of ``paths`` or below
    it (:func:`processes_in`): a git the user runs in the checkout, or another corral's, may hold a
    lock of a branch there. Not the file system monitor's daemon (``core.fsmonitor``), which lives
    there and locks no ref, nor this process's own (the engine orders those itself)."""
    me = os.getpid()
    out = []
    for pid in processes_in(*paths):
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                comm = f.read().strip()
            if comm != b"git" and not comm.startswith(b"git-"):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"\0fsmonitor--daemon\0" in f.read():
                    continue
            if int(reaper.stat_fields(pid)[1]) == me:  # (its parent)
                continue
        except (OSError, IndexError, ValueError):
            continue
        out.append(pid)
    return out


def run_processes(run: str) -> list[int]:
    """Pids of every live process whose environment holds ``CORRAL_RUN=<run>``: what is left of a
    run (agents, what they started) when its corral was SIGKILLed. corral's own process is never
    among them."""
    mark = f"CORRAL_RUN={run}".encode()
    return [p.pid for p in reaper.processes()
            if p.state != "Z" and p.pid != os.getpid() and mark in _environ(p.pid)]


def kill_run_processes(run: str) -> list[int]:
    """SIGKILL every process :func:`run_processes` finds, with the process group it is in (unless
    that is corral's own), and return their pids. For runs whose corral is gone (``corral clean``)."""
    own = os.getpgrp()
    pids = run_processes(run)
    for pid in pids:
        try:
            pgid = os.getpgid(pid)
        except OSError:
            continue
        if pgid != own:
            _kill(pgid, True)
        _kill(pid, False)
    return pids


async def run_captured(argv: list[str], cwd: str | Path, env: dict[str, str] | None = None,
                       timeout: float = 0) -> tuple[int | None, str]:
    """Run a short command in its own process group and return (exit code, combined output)."""
    lines: list[str] = []
    result = await Supervised(argv, cwd=cwd, env=env, on_lines=lines.extend, timeout=timeout).run()
    return result.exit_code, "\n".join(lines)
