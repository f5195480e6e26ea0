"""The reaper: a small process in front of every command corral starts (on Linux), so that no
descendant of the command outlives it, however it left the command's process group or session
(``setsid cmd &``, a double fork, ``setsid -f``, a daemon).

    python -I -S reaper.py --grace SECONDS --parent PID --status-fd FD [--done-fd FD] -- ARGV...
    python -I -S reaper.py --hub FD [--nice N]

It makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so every orphan of the command's
subtree is reparented to it instead of to init, and it forks and execs ARGV in its own process
group (stdin, stdout and cwd as it got them, the environment exactly as it got it). When the command
exits, or the reaper gets TERM, INT or HUP, or corral is gone, it sends TERM to every descendant
left, KILL to what is left after the grace period, reaps them all, then exits as the command did:
with its exit code, or killed by the same signal. Every other signal is blocked, so a command that
signals its own process group does not end the reaper. Every signal is blocked before anything else
(the hub blocks them in itself, so its reapers are born so): no signal can end a reaper before it
takes its signals itself and a command is never reported killed, or failed, that ran fine or never
ran.

A parent-death signal tells it that corral is gone. It is not TERM: the kernel sends it when the
*thread* that forked the reaper ends, and corral spawns from worker threads that retire when idle,
so it only means "look whether corral is still there" (``getppid``). Once its sweep is complete
(nothing is left below it) it writes one byte to the done pipe, if it was given one: then nothing of
the command can have been reparented to corral, which need not look for strays.

A reaper per command costs a Python interpreter's start-up (15-30 ms of CPU, more than the trivial
task it supervises); the hub (``--hub FD``, one per corral process) makes them by ``fork`` instead.
corral sends it each command (argv, cwd, environment, grace, the status and done pipes and the
output pipe, see :func:`request`) over a socket; the hub forks a middleman that forks the reaper and
exits at once, so the reaper, an orphan, is reparented to corral (a child subreaper) and is corral's
child like one it had started itself; the hub answers with its pid. The hub ends when corral's end of
the socket closes. The middleman's exit sends the reaper its parent-death signal, at a moment nobody
chooses: that is why the reapers are born with every signal blocked. A reaper that finds itself not
corral's child (corral died meanwhile) starts nothing and says so on the status pipe.

The hub's reapers stay in the hub's session, each leading a process group of its own (in which its
command runs). With the kernel's autogroup scheduling a session is one scheduling group, so all the
commands of one corral process share one group, whose nice value the hub sets once (``--nice``):
together they weigh as one process of that niceness against corral's own, however many run. A
session per command would need a write of its group's nice value per command, and Linux lets a user
without ``CAP_SYS_ADMIN`` make one such write per 100 ms on the whole machine (EAGAIN for the
others): most commands of a run started together would weigh as much as corral itself. The hub tries
its one write again every 100 ms until it is taken. What sharing a session costs: a command can
change the group's nice value for all of them (a write to ``/proc/self/autogroup``, which nothing
does by accident), and a command run without the sandbox reaches the others with a signal to its
whole session (``pkill -s 0``), as it reaches any process of the user by its pid; in the sandbox a
command sees only its own processes (a pid namespace of its own).

Only the standard library, and only what is needed (``-I -S``: no site-packages): the reaper
starts in front of every agent and every setup command. :func:`processes` is shared with corral.
"""

from __future__ import annotations

import errno
import os
import sys
import time

TYPE_CHECKING = False  # typing costs more to import than the rest of the reaper together
if TYPE_CHECKING:
    import _socket
    import signal
    from typing import Iterable, Iterator
else:
    import _signal as signal  # the signal module without its enums, which take longer to import

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PDEATH_SIGNAL = signal.SIGUSR2
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
#: Exit code when the command cannot be started (the errno goes to the status pipe)
CANNOT_EXEC = 127
#: How long after its grace period the reaper may still take to KILL and reap what is left: whoever
#: waits for a reaper to finish its sweep waits that much longer than the grace period
SLACK = 5.0


_libc: object = None


def prctl(option: int, arg: int) -> bool:
    """``prctl(option, arg)`` on this process; False where it is missing or refused. (ctypes is
    imported on first use: the hub's reapers find it imported.)"""
    global _libc
    try:
        import ctypes

        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return bool(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0),  # type: ignore[attr-defined]
                                ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0)
    except (OSError, AttributeError):
        return False


class Proc:
    """One line of ``/proc/PID/stat``, the fields corral looks at."""

    __slots__ = ("pid", "ppid", "pgid", "sid", "state")

    def __init__(self, pid: int, ppid: int, pgid: int, sid: int, state: str) -> None:
        self.pid, self.ppid, self.pgid, self.sid = pid, ppid, pgid, sid
        self.state = state  # "Z" for a zombie


def stat_fields(pid: int | str) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after the command name, from the state on (the name may hold
    spaces and parentheses: they are read from the last ')'). Raises OSError when there is none."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def processes() -> Iterator[Proc]:
    """Every process visible in /proc, from its ``stat`` (:func:`stat_fields`)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = stat_fields(name)
        except (OSError, IndexError):
            continue
        yield Proc(int(name), int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode())


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return stat_fields(pid)[0] != b"Z"
    except OSError:
        return True  # no /proc to tell a zombie by (or it ended just now: the next look sees it)


def descendants(root: int) -> list[int]:
    """Pids of every process below ``root`` (parent links, as they are now): from the kernel's
    lists of each one's children (``/proc/PID/task/TID/children``), as many reads as there are
    processes below it, where the kernel keeps them; else from every process's parent link, a read
    per process of the machine (with 64 agents, some 400 for each one's sweep at its end)."""
    if _children_lists():
        found: list[int] = []
        seen = {root}
        todo = [root]
        while todo:
            for kid in _children_of(todo.pop()):
                if kid not in seen:
                    seen.add(kid)
                    found.append(kid)
                    todo.append(kid)
        return found
    children: dict[int, list[int]] = {}
    for p in processes():
        children.setdefault(p.ppid, []).append(p.pid)
    found = []
    todo = [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


_has_lists: list[bool] = []


def _children_lists() -> bool:
    """Whether this kernel keeps each task's children list in /proc (CONFIG_PROC_CHILDREN)."""
    if not _has_lists:
        _has_lists.append(os.path.exists(f"/proc/self/task/{os.getpid()}/children"))
    return _has_lists[0]


def _children_of(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (a child belongs to the thread that forked it, or to
    the process when it was reparented); none for a process that is gone."""
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids += map(int, f.read().split())
        except OSError:
            pass
    return kids


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group has no process left."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _signal_descendants(sig: int) -> None:
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _environ() -> dict[bytes, bytes]:
    """The environment this process was started with, byte for byte: Python's start-up may have
    changed ``os.environ`` (in a C locale it sets LC_CTYPE), the command must not see that."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return dict(os.environb)
    return dict(e.split(b"=", 1) for e in entries if b"=" in e)


#: ``env --ignore-signal=TERM /PROGRAM ARGS...`` (how a sandbox starts bwrap, see corral.core.sandbox)
#: is run as env would run it, by the reaper itself: ``/PROGRAM ARGS...`` with TERM ignored (an exec
#: and env's start-up less for every agent; whatever else env is asked to do goes to env)
IGNORE_TERM = "--ignore-signal=TERM"


def ignores_term(argv: list[str]) -> bool:
    """Whether ``argv`` is ``env --ignore-signal=TERM /PROGRAM ARGS...``, which the reaper runs as
    ``/PROGRAM ARGS...`` itself (see :data:`IGNORE_TERM`)."""
    return (len(argv) > 2 and argv[1] == IGNORE_TERM and os.path.basename(argv[0]) == "env"
            and argv[2].startswith("/") and "=" not in argv[2])


def program(argv: list[str]) -> str:
    """The program the reaper execs for ``argv`` (what a failed start names)."""
    return argv[2] if ignores_term(argv) else argv[0]


def _exec(argv: list[str], mask: Iterable[int], status_fd: int, env: dict[bytes, bytes]) -> None:
    """In the forked child: undo what Python's start-up and the reaper changed, then exec. An exec
    that fails writes its errno to the status pipe (closed on a successful exec)."""
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        if ignores_term(argv):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            argv = argv[2:]
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(status_fd, str(exc.errno or 0).encode())
    finally:
        os._exit(CANNOT_EXEC)


def _supervise(main: int, grace: float, parent: int) -> int:
    """Reap every child until none is left; start the sweep (TERM, then KILL after ``grace``) when
    the command exits or a stop is asked for. Returns the command's wait status."""
    wanted = {signal.SIGCHLD, PDEATH_SIGNAL, *STOP_SIGNALS}
    status: int | None = None
    deadline: float | None = None
    while True:
        try:
            while True:
                pid, st = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid == main:
                    status = st
        except ChildProcessError:
            assert status is not None  # the command is a child until it is reaped
            return status  # nothing left below the reaper
        if status is not None and deadline is None:
            deadline = _stop(grace)
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                _signal_descendants(signal.SIGKILL)
                timeout = 0.1  # then again: whatever was forked meanwhile
        info = signal.sigtimedwait(wanted, timeout) if timeout is not None else signal.sigwaitinfo(wanted)
        if info is None or deadline is not None:
            continue
        if info.si_signo in STOP_SIGNALS or (info.si_signo == PDEATH_SIGNAL and os.getppid() != parent):
            deadline = _stop(grace)


def _stop(grace: float) -> float:
    _signal_descendants(signal.SIGTERM)
    return time.monotonic() + grace


def _exit_as(status: int) -> None:
    """Exit with the command's exit code, or die of the signal that killed it (without a core dump
    of the reaper's own)."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    prctl(PR_SET_DUMPABLE, 0)
    if -code != signal.SIGKILL:  # whose action cannot be changed
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {-code})
    os._exit(128 - code)  # a signal that does not kill (the command cannot have died of it)


def _parse(args: list[str]) -> tuple[float, int, int, int, list[str]]:
    opts: dict[str, str] = {}
    while args and args[0] != "--":
        opts[args[0]] = args[1]
        args = args[2:]
    if not args[1:]:
        raise SystemExit("usage: reaper.py --grace S --parent PID --status-fd FD [--done-fd FD] -- ARGV...")
    return (float(opts["--grace"]), int(opts["--parent"]), int(opts["--status-fd"]), int(opts.get("--done-fd", -1)),
            args[1:])


def main(args: list[str]) -> None:
    if args[:1] == ["--hub"]:
        serve(int(args[1]), int(args[3]) if args[2:3] == ["--nice"] else 0)
        return
    mask = _block_all()
    grace, parent, status_fd, done_fd, argv = _parse(args)
    _reap(argv, _environ(), grace, parent, status_fd, done_fd, mask)


def _block_all() -> Iterable[int]:
    """Block every signal (the reaper takes them with ``sigtimedwait``); returns the mask before,
    which the command is given back. Done before anything else: the parent-death signal, once set,
    may come at any moment (the hub's middleman exits at once), and unblocked it would end the
    reaper (SIGUSR2's default action) before it started its command."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())


def _reap(argv: list[str], env: dict[bytes, bytes], grace: float, parent: int, status_fd: int, done_fd: int,
          mask: Iterable[int], middleman: int = 0) -> None:
    """Be the reaper of ``argv``: run it, end every descendant, exit as it did. Every signal is
    blocked already (:func:`_block_all`, ``mask`` the one before). ``middleman``: the process that
    forked this one and exits at once (the hub's), after which the parent is corral."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    prctl(PR_SET_PDEATHSIG, PDEATH_SIGNAL)
    while middleman and os.getppid() == middleman:
        signal.sigtimedwait({PDEATH_SIGNAL}, 0.01)  # its exit sends the parent-death signal
    if os.getppid() != parent:
        # corral died before the parent-death signal was set (or this is not corral's child): start
        # nothing, and say so rather than exit as if the command had failed
        os.write(status_fd, str(errno.ESRCH).encode())
        os._exit(CANNOT_EXEC)
    os.set_inheritable(status_fd, False)
    if done_fd >= 0:
        os.set_inheritable(done_fd, False)
    pid = os.fork()
    if pid == 0:
        _exec(argv, mask, status_fd, env)
    os.close(status_fd)
    try:
        status = _supervise(pid, grace, parent)
    except BaseException:
        _signal_descendants(signal.SIGKILL)
        raise
    if done_fd >= 0:
        try:
            os.write(done_fd, b".")  # the sweep is complete: nothing was left below the reaper
        except OSError:
            pass  # corral is gone
    _exit_as(status)


# ------------------------------------------------------------------------------------------ the hub
def request(argv: list[str], cwd: str, env: dict[str, str], grace: float, parent: int, nice: int = 0) -> bytes:
    """What corral sends the hub for one command (its pipes go with it: output, status, done), with
    corral's umask as it is now: the hub has the one it was started with, and a standby starts its
    hub before it takes a command's (see corral.core.server.standby)."""
    import marshal

    payload = marshal.dumps(([os.fsencode(a) for a in argv], os.fsencode(cwd),
                             {os.fsencode(k): os.fsencode(v) for k, v in env.items()}, grace, parent, nice,
                             _umask()))
    return len(payload).to_bytes(8, "little") + payload


def _umask() -> int | None:
    """This process's umask, read without setting it (``os.umask`` sets one to read the old: a file
    another thread made meanwhile would get the wrong mode); None where the kernel does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def renice_autogroup(pid: int, nice: int) -> bool:
    """Set the nice value of the autogroup (the scheduling group of the session) of ``pid`` (0:
    this process). False only when the kernel said to try again later (EAGAIN: a user without
    ``CAP_SYS_ADMIN`` may make one such write per 100 ms, machine-wide); True when it is set, or
    when there is no autogroup to set (other kernels, other systems: the plain nice value is what
    counts)."""
    try:
        with open(f"/proc/{pid or 'self'}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError as exc:
        return exc.errno != errno.EAGAIN
    return True


def renice_session(pid: int, nice: int) -> None:
    """Lower the priority of a new session led by ``pid``: its process group, and its autogroup
    (once: where the kernel refuses the write, see :func:`renice_autogroup`, the session keeps its
    full weight). For a reaper corral started itself, where there is no hub; the hub's reapers share
    its session, whose nice value the hub sets (see above)."""
    try:
        os.setpriority(os.PRIO_PGRP, pid, nice)
    except OSError:
        pass
    renice_autogroup(pid, nice)


#: How often the hub tries again to set its session's nice value, while the kernel refuses it
RENICE_AGAIN = 0.1


def serve(sock_fd: int, group_nice: int = 0) -> None:
    """The hub: make a reaper for each command corral sends, until corral's end closes. Its
    session's autogroup (where all its commands run) is set to ``group_nice``, tried again every
    :data:`RENICE_AGAIN` seconds while the kernel refuses it."""
    import _socket
    import marshal
    import select

    sock = _socket.socket(fileno=sock_fd)
    # every signal blocked here, so the middlemen and reapers are born so: no signal can end them
    # before the reaper takes its signals itself (the parent-death signal above all)
    mask = _block_all()
    reniced = not group_nice
    prctl(PR_SET_DUMPABLE, 1)  # (a no-op: loads ctypes and libc once, for every reaper forked)
    while True:
        if not reniced:  # (also between two commands: a burst of them may never leave it waiting)
            reniced = renice_autogroup(0, group_nice)
            while not reniced and not select.select([sock_fd], [], [], RENICE_AGAIN)[0]:
                reniced = renice_autogroup(0, group_nice)
        head, fds = _recv_fds(sock, 8, 3)
        if not head:
            return
        while len(head) < 8:
            more = sock.recv(8 - len(head))
            if not more:
                return
            head += more
        size, body = int.from_bytes(head, "little"), b""
        while len(body) < size:
            more = sock.recv(size - len(body))
            if not more:
                return
            body += more
        argv, cwd, env, grace, parent, own_nice, umask = marshal.loads(body)
        try:
            pid = _fork_reaper([os.fsdecode(a) for a in argv], cwd, env, grace, parent, fds, mask, own_nice, umask)
        except OSError:
            pid = 0
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendall(pid.to_bytes(8, "little"))


def _recv_fds(sock: _socket.socket, size: int, most: int) -> tuple[bytes, list[int]]:
    """``socket.recv_fds`` with ``_socket`` alone (``socket`` imports ``enum`` and ``selectors``:
    some 40 % of the hub's start)."""
    import _socket

    data, ancillary, _flags, _addr = sock.recvmsg(size, _socket.CMSG_LEN(most * 4))
    fds: list[int] = []
    for level, kind, raw in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(raw[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(raw) - 3, 4)]
    return data, fds


def _fork_reaper(argv: list[str], cwd: bytes, env: dict[bytes, bytes], grace: float, parent: int,
                 fds: list[int], mask: Iterable[int], nice: int = 0, umask: int | None = None) -> int:
    """Fork a middleman that forks the reaper and exits; once the middleman is reaped, the reaper
    is corral's child (an orphan goes to the nearest subreaper above it). Returns its pid."""
    out_fd, status_fd, done_fd = fds
    r, w = os.pipe()
    middleman = os.fork()
    if middleman == 0:
        try:
            os.close(r)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _adopted(argv, cwd, env, grace, parent, out_fd, status_fd, done_fd, mask, me, nice, umask)
            # its group, as the reaper makes it too: whichever comes first, the group is there
            # before corral has the pid to signal it by
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass
            os.write(w, pid.to_bytes(8, "little"))
        finally:
            os._exit(0)
    os.close(w)
    with open(r, "rb") as f:
        got = f.read()
    os.waitpid(middleman, 0)
    return int.from_bytes(got, "little") if len(got) == 8 else 0


def _adopted(argv: list[str], cwd: bytes, env: dict[bytes, bytes], grace: float, parent: int, out_fd: int,
             status_fd: int, done_fd: int, mask: Iterable[int], middleman: int, nice: int = 0,
             umask: int | None = None) -> None:
    """In the reaper forked by the hub: what ``Popen(process_group=0, stdin=DEVNULL, stdout=out,
    stderr=STDOUT, cwd=cwd)`` from corral would do (with corral's ``umask``), in the hub's session
    (see above), its new process group reniced to ``nice``, then :func:`_reap`. Never returns."""
    try:
        os.setpgid(0, 0)
        if umask is not None:
            os.umask(umask)
        if nice:
            try:
                os.setpriority(os.PRIO_PGRP, 0, nice)
            except OSError:
                pass
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        keep = {0, 1, 2, status_fd, done_fd}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        try:
            os.chdir(cwd)
        except OSError as exc:
            os.write(status_fd, str(exc.errno or 0).encode())
            os._exit(CANNOT_EXEC)
        _reap(argv, env, grace, parent, status_fd, done_fd, mask, middleman)
    finally:
        os._exit(CANNOT_EXEC)


if __name__ == "__main__":
    main(sys.argv[1:])
