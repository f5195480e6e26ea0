"""A warm start for ``corral run --headless``: a standby process that has imported what a run needs
waits on a private Unix socket, and the ``corral`` command hands its command over to it.

Most of the start of a run is Python importing modules and creating classes. A standby does that
ahead of time and waits. The ``corral`` command, before its own imports, connects to it and passes
the command: its arguments, working directory (a descriptor), environment and umask, and its stdin,
stdout and stderr (``SCM_RIGHTS``). The standby then *becomes* that command's process (one-shot:
nothing is forked from a process that may have threads): it takes the client's context, runs the
command and reports its exit code, which the client exits with. It starts a fresh standby for the
next command once one of the run's agents has printed and then either the agents' output has been
quiet for a moment or no agent runs any more (or at its end): not at once, where the new one's
start and warm-up would share the cores with the run's own start, nor while agents flood their
output. The client forwards the signals it gets (INT, TERM, HUP, WINCH; a stop and a continue as
SIGSTOP and SIGCONT); when the client goes away (``kill -9``), the run stops as on SIGHUP.

A standby is never stale: its socket is named after a key of everything that could make it behave
otherwise than the command would in-process (the interpreter and its flags, the locale and
``PYTHON*`` variables, ``sys.path``, corral's installed location and the size, time and inode of
each of its source files, the uid, groups, nice value, cgroup, namespaces and resource limits), in
a private (0700) directory; each side checks the other's uid (``SO_PEERCRED``) and the standby
checks the full key again. With no standby answering, the command runs in-process as it always did
and starts one in the background; a standby exits after ``CORRAL_STANDBY_IDLE`` seconds unused (600)
or once its key no longer holds. ``CORRAL_STANDBY=0`` turns all of it off.

The client half runs before anything else of corral: it imports nothing the interpreter has not
loaded at start-up but ``_socket``, ``zlib`` and ``resource`` (not ``socket``, ``typing``, ``json``
or ``subprocess``, nor ``signal`` or ``contextlib``, which import ``enum``, ``collections`` and
``functools``: a third of the client's start); the standby half imports what it needs in its
functions.
"""

from __future__ import annotations

import _socket
import os
import stat
import sys

TYPE_CHECKING = False  # typing's, without importing typing (see above)
if TYPE_CHECKING:
    import signal
    import socket
    from collections.abc import Sequence
    from types import ModuleType
    from typing import TextIO
else:
    import _signal as signal  # the signal module without its enums (see above)

#: set to 0 (or off, no, false) to never use a standby
ENV_SWITCH = "CORRAL_STANDBY"
#: seconds a standby waits unused before it exits
ENV_IDLE = "CORRAL_STANDBY_IDLE"
IDLE_DEFAULT = 600.0
#: how often a waiting standby checks that its key still holds (an edited source file ends it)
RECHECK = 5.0
#: how long a client waits for a standby to take its command (it may still be importing)
READY_TIMEOUT = 10.0
#: the signals that end a standby waiting for a command
_ENDING = (signal.SIGHUP, signal.SIGTERM)

#: the signals a client passes on; WINCH is ignored by a headless run, as it is in-process
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH)
MAGIC = b"corral-standby 1"
_SUN_PATH_MAX = 107


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() not in ("0", "off", "no", "false")


def wanted(args: Sequence[str]) -> bool:
    """Whether the command goes through a standby: ``run ... --headless`` (the dashboard needs the
    terminal as its controlling one, and stays in-process)."""
    it = iter(args)
    for arg in it:
        if arg == "--repo":
            next(it, None)
        elif arg == "--" or not arg.startswith("-"):
            return arg == "run" and "--headless" in args
    return False


# ------------------------------------------------------------------------------------ the key
def _package_dirs() -> list[str]:
    dirs = []
    for name in ("corral.core", "corral.tui"):
        __import__(name)
        dirs += list(sys.modules[name].__path__)
    return dirs


def _sources(top: str) -> list[str]:
    """Every file under ``top`` but compiled ones, with its size, modification time and inode."""
    out = []
    with os.scandir(top) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            if e.is_dir(follow_symlinks=False):
                if e.name != "__pycache__":
                    out += _sources(e.path)
                continue
            st = e.stat()
            out.append(f"{e.path} {st.st_size} {st.st_mtime_ns} {st.st_ino}")
    return out


def key(paths: Sequence[str] | None = None) -> str:
    """What a command and a standby must agree on for the standby to run it as the command would
    run in-process (see the module's docstring). Computed by each side from its own state;
    ``paths``: the import path but its first entry (the script's or the working directory: each
    command's own), by default ``sys.path[1:]``."""
    import resource

    def stamp(path: str) -> str:
        try:
            return f"{path} {os.stat(path or '.').st_mtime_ns}"
        except OSError:
            return f"{path} -"

    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return "-"

    def link(path: str) -> str:
        try:
            return os.readlink(path)
        except OSError:
            return "-"

    parts = [sys.executable, sys.version, repr(sys.flags), repr(sorted(sys._xoptions.items())),
             repr(sys.warnoptions), repr((os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()))),
             str(os.getpriority(os.PRIO_PROCESS, 0)), repr(sorted(os.sched_getaffinity(0))),
             read("/proc/self/cgroup"), *(link(f"/proc/self/ns/{ns}") for ns in ("mnt", "pid", "user", "net", "ipc", "uts")),
             repr([resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_")])]
    parts += sorted(f"{k}={v}" for k, v in os.environ.items()
                    if k.startswith(("PYTHON", "LC_")) or k == "LANG")
    parts += [stamp(p) for p in (sys.path[1:] if paths is None else paths)]
    for top in _package_dirs():
        parts += _sources(top)
    return "\n".join(parts)


def private_dir(create: bool) -> str | None:
    """The directory of this user's standby sockets (mode 0700, this user's, not a link), or None
    when it is missing or not private."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(base, f"corral-standby-{os.getuid()}")
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def socket_path(directory: str, the_key: str) -> str | None:
    import zlib

    data = the_key.encode(errors="surrogateescape")
    path = os.path.join(directory, f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}.sock")
    return path if len(os.fsencode(path)) <= _SUN_PATH_MAX else None


# --------------------------------------------------------------------------------- the client
def hand_over(args: Sequence[str], entry: str) -> int | None:
    """The command ``args`` run by a standby of ``entry`` (see :func:`serve`): its exit code, or
    None when it runs in-process (no standby, or none answered: one is started for next time)."""
    if not enabled() or not wanted(args):
        return None
    the_key = key()
    directory = private_dir(create=False)
    path = socket_path(directory, the_key) if directory else None
    code = _run_remote(path, the_key, args) if path else None
    if code is None:
        start(entry)
    return code


def peer(sock: _socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (``SO_PEERCRED``); raises
    :class:`OSError` when it cannot be told."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(raw[0:4], sys.byteorder, signed=True), int.from_bytes(raw[4:8], sys.byteorder)


class _Lines:
    """Lines read from a socket."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def next(self) -> bytes | None:
        while b"\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line


def _request(the_key: str, args: Sequence[str]) -> bytes:
    umask = os.umask(0)
    os.umask(umask)
    fields = [MAGIC, the_key.encode(errors="surrogateescape"), b"%d" % umask, os.fsencode(sys.path[0]),
              os.fsencode(sys.argv[0]), b"%d" % len(args), *map(os.fsencode, args),
              *(k + b"=" + v for k, v in os.environb.items())]
    body = b"\0".join(fields)
    return b"%d\n" % len(body) + body


def _run_remote(path: str, the_key: str, args: Sequence[str]) -> int | None:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        pid, uid = peer(sock)
        if uid != os.getuid():
            return None
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            data = _request(the_key, args)
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd))
            sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        finally:
            os.close(cwd)
        if sent < len(data):
            sock.sendall(data[sent:])
        sock.settimeout(READY_TIMEOUT)
        lines = _Lines(sock)
        if lines.next() != b"ready":
            return None
        sock.settimeout(None)
        return _follow(sock, lines, pid)
    except OSError:  # no standby, or it went away before it took the command
        return None
    except KeyboardInterrupt:  # before the standby took the command: nothing started
        from corral.core.codes import EXIT_INTERRUPTED

        return EXIT_INTERRUPTED
    finally:
        sock.close()


def _follow(sock: _socket.socket, lines: _Lines, pid: int) -> int | None:
    """Commit the standby (``pid``) to the command, pass signals on until it reports its exit
    code; None if it could not take it after all (the command runs in-process)."""
    got: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if signum != signal.SIGWINCH:
            got.append(signum)
        try:
            sock.sendall(b"sig %d\n" % signum)
        except OSError:
            pass

    def stop(signum: int, frame: object) -> None:  # Ctrl-Z: the command's process stops too
        os.kill(pid, signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, stop)
        # here once continued, or at once when the kernel discarded the stop (a process group no
        # shell can continue): either way the command's process goes on with this one
        os.kill(pid, signal.SIGCONT)

    def cont(signum: int, frame: object) -> None:
        os.kill(pid, signal.SIGCONT)

    handlers = {**{s: forward for s in FORWARDED}, signal.SIGTSTP: stop, signal.SIGCONT: cont}
    signal.pthread_sigmask(signal.SIG_BLOCK, handlers)  # none is passed on before "go"
    try:
        sock.sendall(b"go\n")
        before = {s: signal.signal(s, h) for s, h in handlers.items()}
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handlers)
    while True:
        try:
            line = lines.next()
        except OSError:  # (committed: never run in-process after this)
            line = None
        if line is None or line == b"back":
            break
        if line.startswith(b"exit "):
            return int(line[5:])
    for s, h in before.items():
        signal.signal(s, h)
    if line == b"back":
        return None
    if got:  # it ended by the signal it was passed, before it could say so: end as in-process
        signal.signal(got[-1], signal.SIG_DFL)
        os.kill(os.getpid(), got[-1])
    print(f"corral: the command's process ({pid}) ended without an exit code", file=sys.stderr)
    return 1


# -------------------------------------------------------------------------------- the standby
def start(entry: str) -> None:
    """Start a standby for ``entry`` in the background (in a session of its own, its working
    directory ``/``, nothing of this terminal), unless standbys are turned off."""
    if not enabled():
        return
    import subprocess

    code = f"from corral.core.server.standby import serve; serve({entry!r})"
    try:
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # (what multiprocessing uses)
        subprocess.Popen([sys.executable, *flags, "-c", code],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd="/", start_new_session=True, close_fds=True)
    except OSError:
        pass


class _DirLock:
    """Held while a standby binds its socket or removes it, so that two never take one name."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "lock")

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class _Listener:
    """The standby's socket, bound under the directory's lock (one standby per key)."""

    def __init__(self, directory: str, path: str) -> None:
        import socket

        self.directory, self.path = directory, path
        self.sock: socket.socket | None = None
        with _DirLock(directory):
            if os.path.lexists(path):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(path)
                    return  # a live standby has it
                except ConnectionRefusedError:
                    os.unlink(path)  # what a killed standby left
                finally:
                    probe.close()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            sock.listen(16)
            self.sock, self.inode = sock, os.stat(path).st_ino

    def still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def close(self) -> None:
        """Stop listening and remove the socket if it is still this standby's."""
        assert self.sock is not None
        self.sock.close()
        with _DirLock(self.directory):
            if self.still_ours():
                os.unlink(self.path)


class _Request:
    def __init__(self, umask: int, path0: str, argv0: str, args: list[str], env: dict[bytes, bytes],
                 fds: list[int]) -> None:
        self.umask, self.path0, self.argv0, self.args, self.env, self.fds = umask, path0, argv0, args, env, fds


def _receive(conn: socket.socket, the_key: str) -> _Request | None:
    """The request on ``conn``, if it is one from a client of this uid with this standby's key."""
    import socket

    conn.settimeout(READY_TIMEOUT)
    fds: list[int] = []
    try:
        if peer(conn)[1] != os.getuid():
            return None
        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 8)
        head, sep, body = data.partition(b"\n")
        if not sep:
            return None
        size = int(head)
        while len(body) < size:
            more = conn.recv(min(size - len(body), 1 << 20))
            if not more:
                return None
            body += more
        fields = body.split(b"\0")
        if fields[0] != MAGIC or fields[1] != the_key.encode(errors="surrogateescape") or len(fds) != 4:
            return None
        argc = int(fields[5])
        args = [os.fsdecode(a) for a in fields[6:6 + argc]]
        env = dict(e.partition(b"=")[::2] for e in fields[6 + argc:])
        req = _Request(int(fields[2]), os.fsdecode(fields[3]), os.fsdecode(fields[4]), args, env, fds)
        fds = []
        return req
    except (OSError, ValueError, IndexError):
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _adopt(req: _Request) -> None:
    """Become the client's process: its stdin/stdout/stderr, working directory, umask, environment
    (and what Python derives from it), ``sys.path[0]`` and ``sys.argv``."""
    import tempfile
    import time

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    for fd, got in enumerate(req.fds[:3]):
        os.dup2(got, fd)
    os.fchdir(req.fds[3])
    for got in req.fds:
        os.close(got)
    os.umask(req.umask)
    os.environb.clear()
    os.environb.update(req.env)
    time.tzset()
    tempfile.tempdir = None
    sys.path.insert(0, req.path0)
    sys.argv = [req.argv0, *req.args]
    sys.stdin, sys.stdout, sys.stderr = (_stdio(fd, old) for fd, old in enumerate((sys.stdin, sys.stdout, sys.stderr)))
    for name in ("stdin", "stdout", "stderr"):
        setattr(sys, f"__{name}__", getattr(sys, name))


def _stdio(fd: int, old: TextIO) -> TextIO:
    """A standard stream on ``fd`` made as Python makes it at start-up (its encoding and errors as
    the standby's, which the key made the client's; line buffered on a terminal, and stderr)."""
    import io

    write = fd != 0
    unbuffered = write and bool(getattr(old, "write_through", False))  # python -u
    buf = io.open(fd, "wb" if write else "rb", buffering=0 if unbuffered else -1, closefd=False)
    raw = buf if unbuffered else buf.raw  # type: ignore[attr-defined]
    setattr(raw, "name", ("<stdin>", "<stdout>", "<stderr>")[fd])  # as Python names them
    text = io.TextIOWrapper(buf, encoding=old.encoding, errors=old.errors, newline="\n",
                            line_buffering=not unbuffered and (fd == 2 or os.isatty(fd)), write_through=unbuffered)
    text.mode = "w" if write else "r"  # type: ignore[misc]
    return text


class _Client:
    """The client of the command this process runs: the signals it passes on, and its end (the
    run stops as on SIGHUP when it goes away before the command's end)."""

    def __init__(self, conn: socket.socket) -> None:
        import threading

        self.conn, self.done = conn, False
        conn.settimeout(None)
        threading.Thread(target=self._listen, name="corral-standby-client", daemon=True).start()

    def _listen(self) -> None:
        buf = b""
        while True:
            try:
                data = self.conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                if not self.done:
                    os.kill(os.getpid(), signal.SIGHUP)
                return
            buf += data
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                if line.startswith(b"sig ") and int(line[4:]) in FORWARDED:
                    os.kill(os.getpid(), int(line[4:]))

    def report(self, code: int) -> None:
        self.done = True
        try:
            self.conn.sendall(b"exit %d\n" % code)
        except OSError:
            pass


def _exit_code(code: object) -> int:
    """What Python exits with for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def serve(entry: str) -> None:
    """Be a standby for the module ``entry``: import it and what its ``STANDBY_MODULES`` names, do
    what its ``standby_warm()`` does (:func:`warm`), wait (at most ``CORRAL_STANDBY_IDLE`` seconds
    unused, and while the key holds) for one command, and run it as the client's process with
    ``entry.main(args)``. Started by :func:`start`."""
    import atexit

    signal.signal(signal.SIGINT, signal.default_int_handler)
    # a TERM or HUP in the warm-up ends the standby once it is over: killed in the middle of it, it
    # could leave what a step makes and removes at once (the file with which Python's tempfile tries
    # the temp dir, in the temp dir)
    held: list[int] = []
    for ending in _ENDING:
        signal.signal(ending, lambda signum, frame: held.append(signum))
    the_key = key()
    del sys.path[0]  # python -c's working directory (/) is no place to import from
    directory = private_dir(create=True)
    path = socket_path(directory, the_key) if directory else None
    if not path:
        return
    listener = _Listener(directory, path)  # type: ignore[arg-type]
    if listener.sock is None:
        return
    code = 1
    reporter: _Client | None = None
    # the first registered runs last: the exit code goes once all else is done, the closing of the
    # processes the warm-up started (the run's reaper hub and watchdog) too
    atexit.register(lambda: reporter.report(code) if reporter else None)
    module = warm(entry)
    for ending in _ENDING:
        signal.signal(ending, signal.SIG_DFL)
    if held:
        os.kill(os.getpid(), held[0])
    client = _wait(listener, the_key)
    if client is None:
        return
    conn, req = client
    try:
        _adopt(req)
    except OSError:
        conn.sendall(b"back\n")
        return
    _owed.append(entry)
    atexit.register(successor)  # (registered after the report: runs before it, the client waits)
    reporter = _Client(conn)
    try:
        code = _exit_code(module.main(req.args))
    except SystemExit as exc:
        code = _exit_code(exc.code)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    sys.exit(code)


#: the entry of the standby this process still owes the next command (see :func:`successor`)
_owed: list[str] = []


def successor() -> None:
    """Start the standby that follows this one, if this process is a standby's command that has not
    started it yet. The run calls it once one of its agents has printed and then the output has been
    quiet for a moment or no agent runs any more (see ``run_hosted`` in corral.tui.cli), and the
    process as it exits: started at the hand-over, its Python start and warm-up (some 350 ms of
    CPU) shared the cores with the run's own start to that first line; started at the first line,
    with agents flooding their output."""
    try:
        entry = _owed.pop()
    except IndexError:  # (not a standby's command, or started already)
        return
    start(entry)


def warm(entry: str) -> ModuleType:
    """The module ``entry`` imported, and what its ``STANDBY_MODULES`` names, and its
    ``standby_warm()`` done, with its ``standby_ahead()`` (work that waits on other processes) in a
    thread beside the imports: what a standby does before it waits for a command (a command that
    comes right after the one that started this standby waits for all of it). The cyclic garbage
    collector is paused meanwhile, then run once: what is imported stays for the process's life, and
    the collections its allocations set off were a fifth of the time (and of the CPU, which the run
    that started the standby shares); all of it is then frozen, so the run's collections need not go
    through it."""
    import gc

    gc.disable()  # (before the imports below too: a collection may start in any allocation)
    try:
        import importlib
        import threading

        module = importlib.import_module(entry)
        ahead = threading.Thread(target=getattr(module, "standby_ahead", lambda: None), name="corral-standby-ahead")
        ahead.start()
        try:
            for name in getattr(module, "STANDBY_MODULES", ()):
                importlib.import_module(name)
            getattr(module, "standby_warm", lambda: None)()
        finally:
            ahead.join()
    finally:
        gc.collect()
        gc.freeze()
        gc.enable()
    return module


def _wait(listener: _Listener, the_key: str) -> tuple[socket.socket, _Request] | None:
    """The first client that sends a request with this key and says go; None once idle too long,
    or when the key no longer holds (the socket is closed then)."""
    import time

    assert listener.sock is not None
    try:
        idle = float(os.environ.get(ENV_IDLE, "") or IDLE_DEFAULT)
    except ValueError:
        idle = IDLE_DEFAULT
    deadline = time.monotonic() + idle
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not listener.still_ours() or key(sys.path) != the_key:
            listener.close()
            return None
        listener.sock.settimeout(min(left, RECHECK))
        try:
            conn, _ = listener.sock.accept()
        except TimeoutError:
            continue
        req = _receive(conn, the_key)
        if req is not None:
            try:
                conn.sendall(b"ready\n")
                conn.settimeout(READY_TIMEOUT)
                if conn.recv(3) == b"go\n":
                    listener.close()
                    return conn, req
            except OSError:
                pass
            for fd in req.fds:
                os.close(fd)
        conn.close()
