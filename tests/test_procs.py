"""The process supervisor on real processes: how children are started, prioritised, awaited and
stopped (the engine tests drive it through whole runs; these pin down its own promises)."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import anyio
import pytest

from corral.core.procs import SESSION_NICE, Supervised


def _alive_with(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose environment holds ``marker`` (see :func:`_marked`):
    unlike a command line, it survives ``exec`` (a ``sh -c`` that is bash execs its last command) and
    is inherited by every child and grandchild."""
    needle = f"CORRAL_TEST_PROBE={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def _marked(marker: str) -> dict[str, str]:
    """An environment that marks every process started with it for :func:`_alive_with`."""
    return {**os.environ, "CORRAL_TEST_PROBE": marker}


def _until_none_alive_with(marker: str, timeout: float = 10) -> list[int]:
    """Wait until no process carries ``marker`` (a KILLed process dies when the kernel gets to it,
    and ``kill_group`` waits for the group's leader only); what is still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while (alive := _alive_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_agents_run_niced_in_a_group_of_their_own_in_one_scheduling_group(tmp_path: Path) -> None:
    """With autogroup scheduling a session is one scheduling group and a nice value only counts
    inside it: a command leads a process group of its own in the reaper hub's session (not corral's),
    whose group is niced; otherwise 16 agents would each weigh as much as corral itself."""
    script = ("echo pgid=$(ps -o pgid= -p $$) sid=$(ps -o sid= -p $$) ni=$(ps -o ni= -p $$);"
              " cat /proc/self/autogroup 2>/dev/null || true")
    lines: list[str] = []

    async def main() -> None:
        proc = Supervised(["sh", "-c", script], cwd=tmp_path, on_lines=lines.extend, nice=7)
        result = await proc.run()
        assert result.exit_code == 0
        assert f"pgid={proc.pid}" in lines[0].replace(" ", ""), "the agent leads a process group of its own"

    anyio.run(main)
    ids = dict(field.split("=") for field in lines[0].replace("= ", "=").split())
    assert int(ids["sid"]) != os.getsid(0), "not in corral's session"
    assert ids["ni"] == "7"
    if Path("/proc/self/autogroup").exists():
        assert lines[1].endswith(f"nice {SESSION_NICE}"), lines
        # (corral's own group reads empty where it is the default one, a session that never had a
        # group of its own: e.g. a container's first process and what it starts without setsid)
        ours = Path("/proc/self/autogroup").read_text().split()
        assert lines[1].split()[0] != (ours[0] if ours else None), "not corral's group"


#: Run by :func:`test_every_agent_of_a_run_is_niced_where_the_kernel_limits_autogroup_writes`: starts
#: eight agents at once while another process takes the kernel's one write per 100 ms again and again
#: (for 0.3 s), and prints each agent's scheduling group once all of them are niced (or after 5 s)
_EIGHT_AT_ONCE = """
import os, sys, time, anyio
from pathlib import Path
from corral.core.procs import Supervised

hog = os.fork()
if hog == 0:
    os.setsid()  # (a scheduling group of its own, whose nice value it writes)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write("0")
        except OSError:
            pass
        time.sleep(0.005)
    os._exit(0)

async def main():
    procs = [Supervised(["sleep", "30"], cwd=sys.argv[1], nice=10) for _ in range(8)]
    async with anyio.create_task_group() as tg:
        for p in procs:
            tg.start_soon(p.run)
        while not all(p.running for p in procs):
            await anyio.sleep(0.01)
        deadline = time.monotonic() + 5
        while True:
            groups = [Path(f"/proc/{p.pid}/autogroup").read_text().strip() for p in procs]
            if all(g.endswith(sys.argv[2]) for g in groups) or time.monotonic() > deadline:
                break
            await anyio.sleep(0.02)
        print(" | ".join(groups))
        for p in procs:
            p.stop("aborted")

anyio.run(main)
os.waitpid(hog, 0)
"""


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="this kernel has no autogroup scheduling")
def test_every_agent_of_a_run_is_niced_where_the_kernel_limits_autogroup_writes(tmp_path: Path) -> None:
    """Linux lets a user without CAP_SYS_ADMIN (every user but root) set an autogroup's nice value
    once per 100 ms, machine-wide, and refuses the others (EAGAIN). Eight agents started at once,
    as a user without it, while another process takes those writes: each of them runs in a niced
    scheduling group (one write, by the hub, tried again until it is taken), not most of them at
    corral's full weight; and the group gets the hub's nice value, not an agent's."""
    argv = [sys.executable, "-c", _EIGHT_AT_ONCE, str(tmp_path), f"nice {SESSION_NICE}"]
    if os.geteuid() == 0:  # root without CAP_SYS_ADMIN, as any other user runs
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is needed to drop CAP_SYS_ADMIN as root")
        argv = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    groups = done.stdout.strip().split(" | ")
    assert len(groups) == 8 and all(g.endswith(f"nice {SESSION_NICE}") for g in groups), done.stdout
    assert len({g.split()[0] for g in groups}) == 1, "one scheduling group for all"


def test_many_children_are_awaited_without_a_thread_each(tmp_path: Path) -> None:
    """asyncio's own child watcher starts one thread per child; corral waits on pidfds."""
    during: list[str] = []

    async def main() -> None:
        procs = [Supervised(["sleep", "0.6"], cwd=tmp_path) for _ in range(12)]
        results = []

        async def one(p: Supervised) -> None:
            results.append(await p.run())

        async with anyio.create_task_group() as tg:
            for p in procs:
                tg.start_soon(one, p)
            while not all(p.running for p in procs):
                await anyio.sleep(0.01)
            during.extend(t.name for t in threading.enumerate())
        assert [r.exit_code for r in results] == [0] * 12
        for p in procs:
            with pytest.raises(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)  # reaped already

    anyio.run(main)
    if hasattr(os, "pidfd_open"):
        assert not [n for n in during if n.startswith("asyncio-waitpid")], during


def test_a_child_started_while_its_caller_is_cancelled_is_still_stopped(tmp_path: Path) -> None:
    """The spawn runs in a worker thread; a cancellation arriving meanwhile must not leave the
    new process running unsupervised."""
    marker = f"corral-test-{uuid.uuid4().hex}"

    async def main() -> None:
        for _ in range(10):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(Supervised(["sh", "-c", "sleep 30"], cwd=tmp_path, env=_marked(marker),
                                             grace=0.5).run)
                    await anyio.sleep(0)
                    await anyio.sleep(0)  # the spawn is under way in its thread
                    scope.cancel()

    anyio.run(main)
    assert _until_none_alive_with(marker) == []


def test_stop_while_the_exit_is_awaited_twice(tmp_path: Path) -> None:
    """An agent that ignores TERM, stopped: the run's own wait and the stop's wait both end when the
    group is killed after the grace period, and its grandchild dies with it."""
    marker = f"corral-test-{uuid.uuid4().hex}"
    grandchild = tmp_path / "grandchild.pid"
    script = f"trap '' TERM; sleep 30 & echo $! > {grandchild}; sleep 30\n"

    async def main() -> None:
        proc = Supervised(["sh", "-c", script], cwd=tmp_path, env=_marked(marker), grace=0.3)
        async with anyio.create_task_group() as tg:
            result = {}

            async def run() -> None:
                result["r"] = await proc.run()

            tg.start_soon(run)
            while not (grandchild.exists() and grandchild.read_text().strip()):
                await anyio.sleep(0.01)
            proc.stop("aborted")
        assert result["r"].reason == "aborted"
        assert result["r"].exit_code is not None

    anyio.run(main)
    left = _until_none_alive_with(marker)
    assert int(grandchild.read_text()) not in left, "the grandchild outlived the stop"
    assert left == []


def test_log_written_in_order_and_a_full_disk_surfaces(tmp_path: Path) -> None:
    """The log writer thread keeps every byte in order; a failing log write (disk full) ends the
    run with that error, as a write made on the event loop would, and stops the agent."""
    marker = f"corral-test-{uuid.uuid4().hex}"
    log = tmp_path / "agent.log"
    script = "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; printf tail"

    async def main() -> None:
        result = await Supervised(["sh", "-c", script], cwd=tmp_path, log_path=log).run()
        assert result.exit_code == 0
        with pytest.raises(BaseException) as info:
            await Supervised(["sh", "-c", "yes"], cwd=tmp_path, env=_marked(marker), grace=0.5,
                             log_path=Path("/dev/full")).run()
        errors = info.value.exceptions if isinstance(info.value, BaseExceptionGroup) else [info.value]
        assert any(isinstance(e, OSError) and e.errno == 28 for e in errors), errors

    anyio.run(main)
    assert log.read_text() == "".join(f"line {i}\n" for i in range(3000)) + "tail"
    assert _until_none_alive_with(marker) == []


def test_logs_are_written_on_the_loop_until_a_write_is_slow_then_by_the_writer_thread(tmp_path: Path) -> None:
    """A flood's log writes are made on the event loop while they are quick (handing each chunk to
    a thread cost more than the write); once one write was slow (here: a log that is a FIFO whose
    reader waits while it is full, as the kernel holds writers back for a busy disk) every later
    write goes to the writer thread. Either way the log holds every byte, in order."""
    import fcntl
    import termios

    from corral.core import procs

    script = "yes 'a line of the flood' | head -n 20000; printf tail"
    expected = b"a line of the flood\n" * 20000 + b"tail"
    try:
        async def quick() -> None:
            result = await Supervised(["sh", "-c", script], cwd=tmp_path, log_path=tmp_path / "quick.log").run()
            assert result.exit_code == 0

        anyio.run(quick)
        assert (tmp_path / "quick.log").read_bytes() == expected
        assert not procs._LogFile.threaded, "quick writes stay on the loop"
        # (on a local disk: on a network's file system a log goes to the writer thread at once)
        findmnt = shutil.which("findmnt")
        if findmnt:
            kind = subprocess.run([findmnt, "-n", "-o", "FSTYPE", "--target", str(tmp_path)], capture_output=True,
                                  text=True).stdout.strip()
            assert procs.file_system_type(os.stat(tmp_path).st_dev) == kind

        fifo = tmp_path / "slow.log"
        os.mkfifo(fifo)
        got = bytearray()

        def reader() -> None:
            with open(fifo, "rb", buffering=0) as f:
                size = bytearray(4)
                while True:  # until the FIFO is full: corral's write is held back
                    fcntl.ioctl(f.fileno(), termios.FIONREAD, size)
                    if int.from_bytes(size, sys.byteorder) >= 60000:
                        break
                    time.sleep(0.001)
                threading.Event().wait(0.05)  # (holding the write back a while)
                while chunk := f.read(65536):
                    got.extend(chunk)

        thread = threading.Thread(target=reader)
        thread.start()

        async def slow() -> None:
            result = await Supervised(["sh", "-c", script], cwd=tmp_path, log_path=fifo).run()
            assert result.exit_code == 0

        anyio.run(slow)
        thread.join()
        assert bytes(got) == expected
        assert procs._LogFile.threaded, "a slow write sends the later ones to the writer thread"
        assert any(t.name == "corral-logs" for t in threading.enumerate())
    finally:
        procs._LogFile.threaded = False


def test_env_ignoring_term_in_front_of_a_program_is_done_by_the_reaper_itself(tmp_path: Path) -> None:
    """A sandbox starts bwrap as ``env --ignore-signal=TERM /path/bwrap ...``: the reaper does what
    env would (one exec and env's start-up less for every agent): the program runs with TERM ignored
    and nothing else changed, and a program that is not there is a command that cannot start, as
    without env. Any other use of env is env's."""
    env = shutil.which("env") or "/usr/bin/env"
    sh = shutil.which("sh") or "/bin/sh"
    script = "grep -E '^Sig(Ign|Blk)' /proc/self/status"
    outputs: list[list[str]] = []

    async def main() -> None:
        for argv in ([env, "--ignore-signal=TERM", sh, "-c", script], [env, "--ignore-signal=TERM", "sh", "-c", script],
                     [sh, "-c", script]):
            lines: list[str] = []
            result = await Supervised(argv, cwd=tmp_path, on_lines=lines.extend).run()
            assert result.exit_code == 0, lines
            outputs.append(lines)
        lines = []
        result = await Supervised([env, "--ignore-signal=TERM", str(tmp_path / "nothing-here")], cwd=tmp_path,
                                  on_lines=lines.extend).run()
        assert result.reason == "error" and result.exit_code is None, (result, lines)
        assert "cannot start" in lines[0], lines

    anyio.run(main)
    ignored = [dict(line.split(":") for line in out)["SigIgn"].strip() for out in outputs]
    term = 1 << (signal.SIGTERM - 1)
    assert int(ignored[0], 16) == int(ignored[1], 16) == int(ignored[2], 16) | term, outputs
    assert outputs[0][0] == outputs[2][0], "the same signals blocked"


def test_children_get_their_cwd_as_pwd_and_an_environment_otherwise_untouched(tmp_path: Path) -> None:
    """opencode reads PWD before the real cwd: a stale PWD (corral's own) sent it into the user's
    checkout. Nothing else of the environment changes (Python's start-up in front of the command
    sets LC_CTYPE in a C locale, for one)."""
    outputs: list[dict[bytes, bytes]] = []
    env = {"PATH": os.environ["PATH"], "LANG": "C", "PWD": "/", "X": "1"}

    async def main() -> None:
        for i, given in enumerate((env, None)):
            log = tmp_path / f"environ-{i}"
            result = await Supervised(["cat", "/proc/self/environ"], cwd=tmp_path, env=given, log_path=log).run()
            assert result.exit_code == 0
            outputs.append(dict(e.split(b"=", 1) for e in log.read_bytes().split(b"\0") if e))

    anyio.run(main)
    assert outputs[0] == {k.encode(): v.encode() for k, v in {**env, "PWD": str(tmp_path)}.items()}
    assert outputs[1] == {**os.environb, b"PWD": str(tmp_path).encode()}


def test_descendants_are_found_below_every_thread_of_a_process_and_however_deep(tmp_path: Path) -> None:
    """What a reaper's sweep ends: every process below it, read from the kernel's children lists
    (a read per process below, not one per process of the machine): a child forked by another
    thread than the main one is listed under that thread, and grandchildren are found through
    their parents. The same set as every process's parent link gives."""
    from corral.core import reaper

    script = """
import ctypes, os, signal, subprocess, sys, threading
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # (a child subreaper: it reaps all of them at the end)
kids, forked, end = [], threading.Event(), threading.Event()
def other_thread():  # (alive while the test looks: its children are listed under it)
    kids.append(subprocess.Popen(["sleep", "30"], process_group=0))
    forked.set()
    end.wait()
t = threading.Thread(target=other_thread)
t.start(); forked.wait()
kids.append(subprocess.Popen(["sh", "-c", "sleep 31 & sleep 32; :"], process_group=0))
print("ready", flush=True)
sys.stdin.read()
end.set(); t.join()
for kid in kids:
    os.killpg(kid.pid, signal.SIGKILL)
try:
    while True:
        os.waitpid(-1, 0)
except ChildProcessError:
    pass
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"

        def by_parent_links() -> set[int]:
            children: dict[int, list[int]] = {}
            for p in reaper.processes():
                children.setdefault(p.ppid, []).append(p.pid)
            found, todo = set(), [proc.pid]
            while todo:
                kids = children.get(todo.pop(), [])
                found.update(kids)
                todo += kids
            return found

        deadline = time.monotonic() + 30
        while len(by_parent_links()) < 4:  # sleep 30, sh, and the sh's two sleeps
            assert time.monotonic() < deadline, by_parent_links()
            time.sleep(0.01)
        below = reaper.descendants(proc.pid)
        assert sorted(below) == sorted(by_parent_links()) and len(below) == 4, below
        names = sorted(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2].decode() for pid in below)
        assert names == ["30", "31", "32", "sleep 31 & sleep 32; :"], names
    finally:
        proc.communicate(timeout=30)  # (its end of stdin closed: it ends and reaps them all)
    assert reaper.descendants(proc.pid) == []


# ----------------------------------------------------------------- descendants that escape the group
def _pids_alive(pids: list[int]) -> list[int]:
    """The pids of ``pids`` that name a live process (a zombie is dead for our purposes)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _escaping(pids: Path, stubborn: bool) -> str:
    """A shell script that leaves two processes outside its process group and session, each writing
    its pid to ``pids/NAME``: ``setsid cmd &`` and a double-forked daemon (a subshell starts it and
    exits at once). Stubborn ones ignore TERM, so only KILL ends them."""
    trap = "trap '' TERM; " if stubborn else ""
    esc = f"{trap}echo $$ > {pids}/$0; exec sleep 600"
    return (f"ESC={shlex.quote(esc)}; setsid sh -c \"$ESC\" setsid & (setsid sh -c \"$ESC\" daemon &); "
            f"while [ ! -s {pids}/setsid ] || [ ! -s {pids}/daemon ]; do sleep 0.02; done; echo started")


def _escaped(pids: Path) -> list[int]:
    return [int(p.read_text()) for p in pids.iterdir()]


@pytest.fixture
def pids(tmp_path: Path):
    """A folder for escaped processes' pid files; whatever is still alive at the end is killed, so a
    failing test leaves nothing behind."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for pid in _pids_alive(_escaped(folder)):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("stubborn", [False, True])
def test_escaped_descendants_are_dead_when_the_command_exits(tmp_path: Path, pids: Path, stubborn: bool) -> None:
    """setsid and double forks leave the process group; the command's reaper still ends them (KILL
    after the grace period for those ignoring TERM) and has reaped them before run() returns."""
    lines: list[str] = []

    async def main() -> None:
        result = await Supervised(["sh", "-c", _escaping(pids, stubborn)], cwd=tmp_path, grace=0.5,
                                  on_lines=lines.extend).run()
        assert (result.exit_code, result.reason) == (0, "exited")
        assert _pids_alive(_escaped(pids)) == []  # at once: no deadline needed

    anyio.run(main)
    assert lines == ["started"]
    assert len(_escaped(pids)) == 2


def test_stop_ends_escaped_descendants_before_the_group_is_killed(tmp_path: Path, pids: Path) -> None:
    """stop(): TERM to the group reaches the reaper, which TERMs every descendant, waits the grace
    period, KILLs the rest and only then exits; the group's final KILL must not cut that short."""
    script = "trap '' TERM; " + _escaping(pids, stubborn=True) + "; sleep 600 & wait"

    async def main() -> None:
        proc = Supervised(["sh", "-c", script], cwd=tmp_path, grace=0.5,
                          on_lines=lambda lines: "started" in lines and proc.stop("aborted"))
        result = await proc.run()
        assert result.reason == "aborted" and result.exit_code == -signal.SIGKILL
        assert _pids_alive(_escaped(pids)) == []

    anyio.run(main)
    assert len(_escaped(pids)) == 2


@pytest.mark.parametrize("script,code", [("exit 0", 0), ("exit 3", 3), ("kill -USR1 $$", -signal.SIGUSR1),
                                         ("kill -KILL $$", -signal.SIGKILL)])
def test_exit_codes_and_output_pass_through(tmp_path: Path, script: str, code: int) -> None:
    """The reaper in front of every command is invisible: the command's exit code (or the signal
    that killed it) and every byte of its output come through unchanged."""
    log = tmp_path / "out.log"
    printed = b"\x00\xff\x1b[1mbold\r\n" + bytes(range(256))

    async def main() -> None:
        octal = "".join(f"\\{b:03o}" for b in printed)
        result = await Supervised(["sh", "-c", f"printf '{octal}'; {script}"], cwd=tmp_path, log_path=log).run()
        assert (result.exit_code, result.reason) == (code, "exited")

    anyio.run(main)
    assert log.read_bytes() == printed


def test_a_command_that_cannot_start_is_reported(tmp_path: Path) -> None:
    lines: list[str] = []

    async def main() -> None:
        result = await Supervised(["corral-no-such-command"], cwd=tmp_path, on_lines=lines.extend).run()
        assert (result.exit_code, result.reason) == (None, "error")

    anyio.run(main)
    assert lines == ["corral: cannot start corral-no-such-command: No such file or directory"]


def test_processes_of_a_dead_run_are_found_by_their_environment(tmp_path: Path) -> None:
    """What corral clean uses after a SIGKILLed corral: every live process whose environment names
    the run is killed, with its process group (a member that dropped the variable goes too)."""
    from corral.core.procs import kill_run_processes, run_processes

    run, other = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    procs, members = [], []
    for r in (run, other):
        members.append(tmp_path / r)
        member = f"echo $$ > {members[-1]}.tmp; mv {members[-1]}.tmp {members[-1]}; exec sleep 600"
        script = f"env -u CORRAL_RUN sh -c {shlex.quote(member)} & exec sleep 600"
        procs.append(subprocess.Popen(["sh", "-c", script], env={**os.environ, "CORRAL_RUN": r}, start_new_session=True))
    try:
        deadline = time.monotonic() + 10
        while not all(m.exists() for m in members) and time.monotonic() < deadline:
            time.sleep(0.02)
        member = int(members[0].read_text())
        assert run_processes(run) == [procs[0].pid]
        assert kill_run_processes(run) == [procs[0].pid]
        assert procs[0].wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _pids_alive([member]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _pids_alive([member]) == []
        assert run_processes(run) == []
        assert _pids_alive([procs[1].pid, int(members[1].read_text())]) == [procs[1].pid, int(members[1].read_text())]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _idle_with_nothing_pending(pid: int) -> bool:
    """Whether a process sleeps (in the reaper: waits for a signal) with no signal pending."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return status["State"].split()[0] == "S" and not int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)


def test_the_reaper_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    """The parent-death signal comes when the *thread* that forked the reaper ends, and corral
    spawns from worker threads that retire when idle: the reaper must end nothing while corral
    itself is still there."""
    from corral.core import reaper

    status_r, status_w = os.pipe()
    started: dict = {}

    def spawn() -> None:
        started["tid"] = threading.get_native_id()
        started["proc"] = subprocess.Popen(
            [sys.executable, "-I", "-S", reaper.__file__, "--grace", "1", "--parent", str(os.getpid()),
             "--status-fd", str(status_w), "--", "sh", "-c", 'read line; echo "$line"; exit 7'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(status_w,))
        os.close(status_w)
        # the thread ends once the reaper has set its parent-death signal and the command runs
        started["status"] = os.read(status_r, 16)

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join()
    proc = started["proc"]
    try:
        assert started["status"] == b""  # the command's exec closed the status pipe
        deadline = time.monotonic() + 10
        # the signal is sent as the thread ends; then the reaper takes it and waits again
        while time.monotonic() < deadline and (Path(f"/proc/self/task/{started['tid']}").exists()
                                               or not _idle_with_nothing_pending(proc.pid)):
            time.sleep(0.01)
        out, _ = proc.communicate(b"still here\n", timeout=10)
        assert (out, proc.returncode) == (b"still here\n", 7)
    finally:
        os.close(status_r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_reaper_that_is_not_the_child_of_its_corral_starts_nothing_and_says_so(tmp_path: Path) -> None:
    """A reaper whose parent is not the corral it was made for (corral died before the reaper set
    its parent-death signal) must not run the command, and must not exit as if the command had
    failed (exit 1, a verify that "failed", a resolver that "failed"): it says why on the status
    pipe, which corral reports as a command that could not start."""
    from corral.core import reaper

    status_r, status_w = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", reaper.__file__, "--grace", "1", "--parent", str(os.getppid()),
             "--status-fd", str(status_w), "--", "touch", str(tmp_path / "ran")],
            stdin=subprocess.DEVNULL, pass_fds=(status_w,), timeout=30)
        os.close(status_w)
        status = os.read(status_r, 16)
    finally:
        os.close(status_r)
    assert (proc.returncode, status) == (reaper.CANNOT_EXEC, str(errno.ESRCH).encode())
    assert not (tmp_path / "ran").exists()


def test_a_relative_cwd_is_corrals_own_cwd_at_the_start_not_the_hubs(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub keeps the cwd corral had when it started the hub: a command's relative cwd is
    resolved against corral's cwd when the command starts, as a fork of corral's own would."""
    (tmp_path / "sub").mkdir()

    async def main() -> list[str]:
        await Supervised(["true"], cwd=tmp_path).run()  # the hub starts in the cwd of the test run
        monkeypatch.chdir(tmp_path)
        lines: list[str] = []
        result = await Supervised(["pwd", "-P"], cwd="sub", on_lines=lines.extend).run()
        assert (result.exit_code, result.reason) == (0, "exited"), lines
        return lines

    assert anyio.run(main) == [str((tmp_path / "sub").resolve())]


def test_reapers_are_forked_by_one_hub_not_an_interpreter_started_per_command(tmp_path: Path) -> None:
    """Every command still has its reaper (its parent, corral's child, leading the command's group),
    but no Python interpreter starts for each (15-30 ms of CPU, more than a trivial task's own): the
    reapers of two commands are forks of one hub, never executed themselves."""
    script = 'echo "$PPID $(cut -d" " -f4,5 /proc/$PPID/stat)"; tr "\\0" " " < /proc/$PPID/cmdline; echo'

    async def main() -> list[list[str]]:
        seen = []
        for _ in range(2):
            lines: list[str] = []
            proc = Supervised(["sh", "-c", script], cwd=tmp_path, on_lines=lines.extend)
            result = await proc.run()
            assert (result.exit_code, len(lines)) == (0, 2), lines
            reaper, parent, group = lines[0].split()
            assert (int(reaper), int(parent), int(group)) == (proc.pid, os.getpid(), proc.pid)
            seen.append(lines[1].split())
        return seen

    first, second = anyio.run(main)
    assert first == second and "--hub" in first and "--" not in first, first


def test_corral_reaps_its_hub_when_it_exits(tmp_path: Path) -> None:
    """The hub is corral's child like every process corral starts: reaped by corral on its way
    out, not left to whoever adopts orphans (and its CPU, and that of the middlemen it reaped,
    counted as corral's own)."""
    from corral.core import procs

    def children() -> set[int]:
        return {p.pid for p in procs.reaper.processes() if p.ppid == os.getpid()}

    assert procs._become_subreaper()  # an orphaned hub would come here
    before = children()
    script = "import anyio; from corral.core.procs import SESSION_NICE, Supervised; anyio.run(Supervised(['true'], cwd='.').run)"
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=60)
    left = children() - before
    for pid in left:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not left


def test_what_left_its_group_and_environment_dies_when_its_reaper_was_killed(tmp_path: Path, pids: Path) -> None:
    """An agent that KILLs its reaper, after starting a process that left its process group and
    dropped its environment (nothing of the task's left to know it by, but the reaper hub's session,
    which only reapers and what they run are in): it comes to corral, which kills it when the
    command ends."""
    python = shlex.quote(os.path.realpath(sys.executable))
    code = "import os, sys, time; os.setpgid(0, 0); open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
    script = (f"env -i {python} -I -S -c {shlex.quote(code)} {pids}/left & "
              f"while [ ! -s {pids}/left ]; do sleep 0.02; done; kill -KILL $PPID; sleep 600")

    async def main() -> None:
        result = await Supervised(["sh", "-c", script], cwd=tmp_path, grace=0.5).run()
        assert result.exit_code == -signal.SIGKILL
        assert _pids_alive(_escaped(pids)) == []  # at once: no deadline needed

    anyio.run(main)
    assert len(_escaped(pids)) == 1


def test_no_look_through_proc_after_a_command_whose_reaper_swept(tmp_path: Path, pids: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper that exited after its sweep had nothing below it: nothing of its command was left
    to come to corral, which does not read every process in /proc looking for it (it still does
    for a reaper that was killed: test_faults)."""
    from corral.core import reaper

    scans: list[int] = []
    real = reaper.processes

    def counted() -> object:
        scans.append(1)
        return real()

    monkeypatch.setattr(reaper, "processes", counted)

    async def main() -> None:
        result = await Supervised(["sh", "-c", _escaping(pids, stubborn=False)], cwd=tmp_path, grace=0.5).run()
        assert (result.exit_code, result.reason) == (0, "exited")
        assert _pids_alive(_escaped(pids)) == []

    anyio.run(main)
    assert len(_escaped(pids)) == 2 and scans == []


def test_each_command_gets_its_own_outcome_whenever_the_parent_death_signal_comes(tmp_path: Path) -> None:
    """Commands started through the hub, many at once, each with its own exit code and output. A
    reaper's parent-death signal (SIGUSR2, whose default action ends a process) comes when the hub's
    middleman that forked it exits, at a moment nobody chooses; here it is sent over and over to
    every middleman and reaper the hub has just forked. None may die of it (a command reported as
    killed, or never started, that ran fine or never ran), none may get another's outcome."""
    from corral.core import procs, reaper

    stop = threading.Event()
    hits = 0

    def children(pid: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def signal_the_hubs_children() -> None:
        nonlocal hits
        while not stop.is_set():
            hub = procs._Hub._instance
            for middleman in children(hub.proc.pid) if hub else []:
                for pid in [middleman, *children(middleman)]:
                    try:
                        os.kill(pid, reaper.PDEATH_SIGNAL)
                        hits += 1
                    except OSError:
                        pass

    async def main() -> dict[int, tuple[int | None, str, list[str]]]:
        outcomes: dict[int, tuple[int | None, str, list[str]]] = {}
        slots = anyio.Semaphore(16)

        async def one(i: int) -> None:
            lines: list[str] = []
            async with slots:
                result = await Supervised(["sh", "-c", f"echo command {i}; exit {i % 100}"], cwd=tmp_path,
                                          on_lines=lines.extend).run()
            outcomes[i] = (result.exit_code, result.reason, lines)

        await Supervised(["true"], cwd=tmp_path).run()  # the hub is there before the signals start
        spammer = threading.Thread(target=signal_the_hubs_children)
        spammer.start()
        deadline = time.monotonic() + 60
        try:
            while hits < 20 and time.monotonic() < deadline:  # rounds until the signals came often
                async with anyio.create_task_group() as tg:
                    for i in range(len(outcomes), len(outcomes) + 50):
                        tg.start_soon(one, i)
        finally:
            stop.set()
            spammer.join()
        return outcomes

    outcomes = anyio.run(main)
    wrong = {i: got for i, got in outcomes.items() if got != (i % 100, "exited", [f"command {i}"])}
    assert hits >= 20 and not wrong, (hits, wrong)


def test_a_program_env_would_run_that_cannot_start_is_named(tmp_path: Path) -> None:
    """``env --ignore-signal=TERM /PROGRAM`` is run by the reaper itself: when /PROGRAM cannot be
    started (a sandbox's bwrap removed or upgraded away since corral found it), the message names
    /PROGRAM, as env's own would, not env (which is there)."""
    env = shutil.which("env") or "/usr/bin/env"
    missing = tmp_path / "bin" / "bwrap"
    lines: list[str] = []

    async def main() -> None:
        result = await Supervised([env, "--ignore-signal=TERM", str(missing), "--", "true"], cwd=tmp_path,
                                  on_lines=lines.extend).run()
        assert (result.exit_code, result.reason) == (None, "error"), (result, lines)

    anyio.run(main)
    assert lines == [f"corral: cannot start {missing}: No such file or directory"]
