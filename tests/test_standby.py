"""The warm start: ``corral run --headless`` handed over to a standby process behaves as the same
command in-process (output, exit codes, signals, a closed stdout, the client killed), a standby of
other code is never used, and ``CORRAL_STANDBY=0`` turns it off. All through the real ``corral``
command line, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TEST_MARK, _marked_processes, corral, corral_state, git, make_repo, write_plan

CLI = [sys.executable, "-m", "corral.tui.cli"]
ON = {"CORRAL_STANDBY": "1", "CORRAL_STANDBY_IDLE": "60"}


@pytest.fixture
def standbys(private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Standbys on for this test's commands (their sockets in its temp dir); at its end every
    standby it started is stopped and their directory removed."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    directory = private_tmpdir / f"corral-standby-{os.getuid()}"
    yield directory
    for pid in standby_pids():
        os.kill(pid, signal.SIGTERM)
    _until(lambda: not standby_pids(), "the standbys to end")
    shutil.rmtree(directory, ignore_errors=True)


def standby_pids() -> list[int]:
    """This test's standbys still waiting for a command."""
    mark = os.environ[TEST_MARK]
    return [pid for pid, cmd in _marked_processes(mark).items() if "corral.core.server.standby import serve" in cmd]


def _until(cond, what: str, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return got


def wait_standby(directory: Path, other_than: int = 0) -> int:
    """The pid of the (one) standby waiting, once its socket is there."""
    def ready() -> int:
        pids = [p for p in standby_pids() if p != other_than]
        return pids[0] if len(pids) == 1 and list(directory.glob("*.sock")) else 0

    return _until(ready, "a standby")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def last_run(repo: Path) -> dict:
    runs = sorted((repo / ".git" / "corral" / "runs").iterdir(), key=lambda d: d.stat().st_mtime)
    return json.loads((runs[-1] / "run.json").read_text())


def normal(text: str) -> list[str]:
    """Output with what differs from run to run (ids, paths, times, hashes, the order of two tasks'
    lines) made the same."""
    text = re.sub(r"\d{8}-\d{6}-[0-9a-f]{4}", "RUN", text)
    text = re.sub(r"/\S*/corral-(\w+)-\w+", r"WS-\1", text)
    text = re.sub(r"\d+\.\d+s", "Ts", text)
    return sorted(re.sub(r"\b[0-9a-f]{7,40}\b", "HASH", text).splitlines())


PLAN = """\
    agent = "shell"
    setup = "none"
    approve = "none"
    [[tasks]]
    name = "one"
    prompt = "printf 'first-line \\u00e9t\\u00e9\\n'; echo work > one.txt"
    [[tasks]]
    name = "two"
    prompt = "echo failing; exit 3"
"""


def test_a_handed_over_run_prints_and_exits_as_in_process(tmp_path: Path, standbys: Path) -> None:
    """The first command runs in-process and starts a standby; the next is run by it (the run's
    process is the standby's) with the same output, bytes for bytes but ids and times, and the
    same exit code; so is a usage error (exit 2)."""
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", PLAN)
    args = ("run", str(plan), "--headless")
    ref = corral(*args, cwd=repo, env={"CORRAL_STANDBY": "0"})
    assert ref.returncode == 1, ref.stderr
    assert not standby_pids()

    corral(*args, cwd=repo, env=ON)
    pid = wait_standby(standbys)
    got = corral(*args, cwd=repo, env=ON)
    assert last_run(repo)["pid"] == pid  # the standby ran it
    assert got.returncode == ref.returncode == 1
    assert "[one] first-line été" in got.stdout
    assert normal(got.stdout) == normal(ref.stdout)
    assert normal(got.stderr) == normal(ref.stderr)

    successor = wait_standby(standbys, other_than=pid)
    bad = corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env=ON)
    ref_bad = corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env={"CORRAL_STANDBY": "0"})
    assert not alive(successor)  # it ran the command
    assert (bad.returncode, bad.stdout, bad.stderr) == (ref_bad.returncode, ref_bad.stdout, ref_bad.stderr)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


SLOW = """\
    agent = "shell"
    setup = "none"
    approve = "none"
    [[tasks]]
    name = "one"
    prompt = "echo work > one.txt; git add one.txt; git commit -qm work; echo started; sleep 60"
"""


def _start_slow(tmp_path: Path, standbys: Path, *, stdout=subprocess.PIPE,  # type: ignore[no-untyped-def]
                orphaned: bool = False) -> tuple[Path, subprocess.Popen, int]:
    """A handed-over run whose agent committed its work and is sleeping: (repo, client, run's pid).
    ``orphaned``: the client in a process group no shell can continue (a session of its own)."""
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", SLOW)
    env = {**os.environ, **ON}
    env.pop("CORRAL_RUN", None)
    subprocess.run([*CLI, "run", str(tmp_path / "missing.toml"), "--headless"], cwd=repo, env=env,
                   capture_output=True, stdin=subprocess.DEVNULL)  # in-process: starts a standby
    pid = wait_standby(standbys)
    # (a process group of its own, as a shell's job: in one no shell can continue, such as the test
    # runner's can be, the kernel discards a Ctrl-Z)
    client = subprocess.Popen([*CLI, "run", str(plan), "--headless"], cwd=repo, env=env, stdin=subprocess.DEVNULL,
                              stdout=stdout, stderr=subprocess.PIPE, text=True,
                              **({"start_new_session": True} if orphaned else {"process_group": 0}))
    assert client.stdout is not None
    for line in client.stdout:
        if "[one] started" in line:
            break
    assert last_run(repo)["pid"] == pid != client.pid
    return repo, client, pid


def _work_kept(repo: Path) -> None:
    state = corral_state(repo)
    assert state["worktrees"] == []
    assert len(state["branches"]) == 1
    assert git(repo, "show", f"{state['branches'][0]}:one.txt") == "work"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_client_stops_the_run_as_in_process(tmp_path: Path, standbys: Path, sig: int) -> None:
    """Ctrl-C, SIGTERM and SIGHUP to ``corral`` stop the handed-over run as they stop one in-process:
    its cleanup runs, the work is kept on its branch, exit code 130."""
    repo, client, pid = _start_slow(tmp_path, standbys)
    client.send_signal(sig)
    _out, err = client.communicate(timeout=60)
    assert client.returncode == 130, err
    assert f"corral: {signal.Signals(sig).name}: stopping agents and cleaning up" in err
    # (the exit code is the standby's last word to the client: its own exit follows)
    _until(lambda: not alive(pid), "the standby's exit")
    _work_kept(repo)


def test_a_closed_stdout_stops_the_handed_over_run_quietly(tmp_path: Path, standbys: Path) -> None:
    """``corral run ... | head``: the reader goes, the run stops as in-process, without a traceback."""
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", SLOW.replace("sleep 60", "while :; do echo tick; sleep 0.05; done"))
    env = {**os.environ, **ON}
    corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env=ON)
    pid = wait_standby(standbys)
    client = subprocess.Popen([*CLI, "run", str(plan), "--headless"], cwd=repo, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert client.stdout is not None and client.stderr is not None
    for line in client.stdout:
        if b"[one] tick" in line:
            break
    client.stdout.close()
    err = client.stderr.read().decode()
    assert client.wait(timeout=60) == 130
    assert last_run(repo)["pid"] == pid
    assert "the output was closed: stopping agents" in err
    assert "Traceback" not in err and "BrokenPipe" not in err
    _work_kept(repo)


def test_the_client_killed_stops_the_run_and_keeps_the_work(tmp_path: Path, standbys: Path) -> None:
    """``kill -9`` of ``corral``: the run's process sees its client gone and stops the run as on
    SIGHUP (cleanup, work kept); nothing of it is left running."""
    repo, client, pid = _start_slow(tmp_path, standbys)
    client.kill()
    client.wait()
    _until(lambda: not alive(pid), "the run's process to end")
    _work_kept(repo)
    assert last_run(repo)["exit_code"] == 130
    waiting = standby_pids()  # (the one started for the next command, and its watchdog, are no part of it)
    run_procs = [p for p in _marked_processes(os.environ[TEST_MARK]) if p not in waiting and parent(p) not in waiting]
    assert run_procs == []


def _socket_inodes(directory: Path) -> set[int]:
    """The inodes of the standbys' sockets in ``directory`` (a socket is removed as its standby
    takes a command)."""
    found = set()
    for sock in directory.glob("*.sock"):
        try:
            found.add(sock.stat().st_ino)
        except FileNotFoundError:
            pass
    return found


def _handed_over(tmp_path: Path, standbys: Path, plan_text: str,
                 stdout: int = subprocess.DEVNULL) -> tuple[Path, int, set[int], subprocess.Popen[str]]:
    """A repository, a standby waiting (its pid, and the inodes of the sockets then), and ``corral
    run PLAN --headless`` of ``plan_text`` started (it hands its command over to that standby)."""
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", plan_text)
    corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env=ON)
    pid = wait_standby(standbys)
    sockets = _socket_inodes(standbys)
    client = subprocess.Popen([*CLI, "run", str(plan), "--headless"], cwd=repo, env={**os.environ, **ON},
                              stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, text=True)
    return repo, pid, sockets, client


def test_the_next_standby_starts_once_an_agent_has_printed(tmp_path: Path, standbys: Path) -> None:
    """The standby that follows a handed-over run starts once one of the run's agents has printed
    its first output, not at the hand-over: its start and warm-up (imports, a sandbox probe) would
    share the cores with the run's own start. A run that ends without any (a usage error) starts
    it as it ends."""
    started, go = tmp_path / "agent-started", tmp_path / "agent-go"
    repo, pid, _, client = _handed_over(tmp_path, standbys, f"""\
        agent = "shell"
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "one"
        prompt = "touch {started}; while [ ! -e {go} ]; do sleep 0.02; done; echo first-line"
    """, stdout=subprocess.PIPE)
    _until(started.exists, "the agent to start")
    assert standby_pids() == [pid]  # the run's process only: no successor yet
    go.touch()
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0 and "[one] first-line" in out, out + err
    assert last_run(repo)["pid"] == pid
    successor = wait_standby(standbys, other_than=pid)

    bad = corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env=ON)
    assert bad.returncode == 2
    _until(lambda: not alive(successor), "the standby that ran the command to end")
    wait_standby(standbys, other_than=successor)


def test_the_next_standby_waits_until_the_agents_output_is_quiet(tmp_path: Path, standbys: Path) -> None:
    """An agent that floods its output (25 MB, as fast as it can): the next standby does not start
    while the flood goes on (its warm-up would share the cores with it), but once the output has
    been quiet for a moment, while the agent still runs."""
    flooded, go = tmp_path / "flooded", tmp_path / "agent-go"
    _, pid, _, client = _handed_over(tmp_path, standbys, f"""\
        agent = "shell"
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "one"
        prompt = "echo first-line; yes tick | head -n 5000000; touch {flooded}; while [ ! -e {go} ]; do sleep 0.02; done"
    """)
    try:
        early: set[int] = set()
        while not flooded.exists():  # (the flood: 5 million lines)
            assert client.poll() is None, client.communicate()[1]
            early |= {p for p in standby_pids() if p != pid}
            time.sleep(0.01)
        # (a process the standby forks, its hub or watchdog, has its command line until it execs)
        assert not early & set(standby_pids()), "the next standby started while the agent's output flooded"
        successor = wait_standby(standbys, other_than=pid)
        assert client.poll() is None and not go.exists()  # (started while the agent still runs, quiet)
    finally:
        go.touch()
        _, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert successor in standby_pids()


def test_the_next_standby_starts_once_no_agent_runs_though_output_goes_on(tmp_path: Path, standbys: Path) -> None:
    """Once an agent has printed and no agent runs any more, the next standby starts, even while
    other output goes on (here the next task's setup, which prints without pause until told to
    stop): a command that follows the run at once finds it the warmer."""
    go = tmp_path / "setup-go"
    _, pid, first, client = _handed_over(tmp_path, standbys, f"""\
        agent = "shell"
        setup = "none"
        approve = "none"
        max_parallel = 1
        [[tasks]]
        name = "first"
        prompt = "echo first-line"
        [[tasks]]
        name = "second"
        prompt = "echo second-line"
        setup = "while [ ! -e {go} ]; do echo setting-up; sleep 0.02; done"
    """)
    try:
        # (a socket of the next standby: a process the run forks has the standby's command line
        # for a moment, until it execs)
        _until(lambda: _socket_inodes(standbys) - first, "the next standby")
        assert client.poll() is None and not go.exists()  # (the second task's setup still prints)
        successor = wait_standby(standbys, other_than=pid)
    finally:
        go.touch()
        _, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert successor in standby_pids()


def test_a_standby_of_edited_sources_is_not_used(tmp_path: Path, standbys: Path) -> None:
    """corral's source files edited (or upgraded) after a standby started: the next command runs the
    new code in-process, and the old standby ends."""
    from corral import core, tui

    pkg = tmp_path / "pkg" / "corral"
    shutil.copytree(Path(core.__file__).parent, pkg / "core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(tui.__file__).parent, pkg / "tui", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**ON, "PYTHONPATH": str(pkg.parent), "PYTHONDONTWRITEBYTECODE": "1"}
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", PLAN)
    corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env=env)
    old = wait_standby(standbys)
    headless = pkg / "tui" / "headless.py"
    headless.write_text(headless.read_text().replace('prefix = f"[{', 'prefix = f"edited [{', 1))
    got = corral("run", str(plan), "--headless", cwd=repo, env=env)
    assert "edited [one] first-line" in got.stdout, got.stdout
    assert last_run(repo)["pid"] != old
    _until(lambda: not alive(old), "the old standby to end")


def test_corral_standby_0_runs_in_process(tmp_path: Path, standbys: Path) -> None:
    """``CORRAL_STANDBY=0``: the command runs in-process even with a standby waiting, and starts none."""
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", PLAN)
    corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env=ON)
    pid = wait_standby(standbys)
    got = corral("run", str(plan), "--headless", cwd=repo, env={**ON, "CORRAL_STANDBY": "0"})
    assert got.returncode == 1
    assert last_run(repo)["pid"] != pid
    assert standby_pids() == [pid]


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_ctrl_z_stops_the_run_with_the_client_and_fg_goes_on(tmp_path: Path, standbys: Path) -> None:
    """Ctrl-Z (SIGTSTP to ``corral``) stops the run's process with it, as it stops corral in-process;
    SIGCONT (``fg``) continues both."""
    repo, client, pid = _start_slow(tmp_path, standbys)
    client.send_signal(signal.SIGTSTP)
    _until(lambda: _state(client.pid) == "T" and _state(pid) == "T", "both to stop")
    client.send_signal(signal.SIGCONT)
    _until(lambda: _state(client.pid) != "T" and _state(pid) != "T", "both to go on")
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=60) == 130
    _work_kept(repo)


def test_a_ctrl_z_the_kernel_discards_leaves_the_run_going(tmp_path: Path, standbys: Path) -> None:
    """In a process group no shell can continue (a script started with setsid), the kernel discards
    a Ctrl-Z to ``corral``: the run's process, stopped first, stayed stopped for good, and a Ctrl-C
    then never ended it. It goes on with the command."""
    repo, client, pid = _start_slow(tmp_path, standbys, orphaned=True)
    client.send_signal(signal.SIGTSTP)
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=60) == 130
    _work_kept(repo)


def test_the_run_takes_the_commands_environment_umask_directory_and_terminal(tmp_path: Path,
                                                                            standbys: Path) -> None:
    """What the standby had is replaced by the command's: its environment (a variable, its temp
    dir), its umask and its working directory reach the agent; ``--approve ask`` asks on the
    terminal that is the command's stdin and merges what is answered."""
    os.environ["XDG_RUNTIME_DIR"] = str(standbys.parent)  # the standby and the command: the same sockets
    repo = make_repo(tmp_path / "repo")
    write_plan(tmp_path / "plan.toml", """\
        agent = "shell"
        setup = "none"
        [[tasks]]
        name = "one"
        prompt = "echo \\"var=$MYVAR umask=$(umask)\\"; echo work > one.txt"
    """)
    env = {**os.environ, **ON}
    corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env=ON)
    pid = wait_standby(standbys)
    other_tmp = tmp_path / "tmp-b"
    other_tmp.mkdir()
    main_pty, term = os.openpty()
    try:
        client = subprocess.Popen([*CLI, "run", "../plan.toml", "--headless"], cwd=repo, stdin=term,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, umask=0o027,
                                  env={**env, "MYVAR": "hello", "TMPDIR": str(other_tmp)})
        assert client.stderr is not None
        asked = b""
        for question in (b"approve one", b"Land one onto main?"):
            while question not in asked:
                got = os.read(client.stderr.fileno(), 4096)
                assert got, asked
                asked += got
            os.write(main_pty, b"y\n")
        out, _err = client.communicate(timeout=60)
    finally:
        os.close(main_pty)
        os.close(term)
    assert client.returncode == 0, out
    assert last_run(repo)["pid"] == pid
    text = out.decode()
    assert "[one] var=hello umask=0027" in text
    assert f"setup in {other_tmp}/corral-one-" in text
    assert git(repo, "show", "main:one.txt") == "work"


def test_a_standby_directory_others_can_enter_is_not_used(tmp_path: Path, standbys: Path) -> None:
    """The sockets' directory must be this user's alone (mode 0700): opened to others, no command
    hands anything (its environment, its terminal) to what is in it."""
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", PLAN)
    corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env=ON)
    pid = wait_standby(standbys)
    standbys.chmod(0o755)
    got = corral("run", str(plan), "--headless", cwd=repo, env=ON)
    assert got.returncode == 1
    assert last_run(repo)["pid"] != pid
    assert alive(pid)


def test_an_unused_standby_ends_and_removes_its_socket(tmp_path: Path, standbys: Path) -> None:
    """A standby unused for ``CORRAL_STANDBY_IDLE`` seconds ends by itself, its socket removed."""
    repo = make_repo(tmp_path / "repo")
    corral("run", str(tmp_path / "missing.toml"), "--headless", cwd=repo, env={**ON, "CORRAL_STANDBY_IDLE": "1"})
    pid = wait_standby(standbys)
    _until(lambda: not alive(pid), "the standby to end")
    assert list(standbys.glob("*.sock")) == []



def test_a_standby_told_to_end_in_its_warm_up_ends_once_it_is_over(tmp_path: Path, standbys: Path) -> None:
    """A TERM or a HUP that comes while a standby warms up ends it once the warm-up is over, not in
    the middle of a step that makes something and removes it (Python's tempfile makes a file in the
    temp dir and removes it at once, to try the dir): nothing of it is left."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        warming, go = tmp_path / "warming", tmp_path / "go"
        (tmp_path / "warmup.py").write_text(f"""\
import os, time
def standby_warm():
    open({str(warming)!r}, "w").close()
    while not os.path.exists({str(go)!r}):
        time.sleep(0.01)
    os.unlink({str(warming)!r})
""")
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        proc = subprocess.Popen([sys.executable, "-c", "from corral.core.server.standby import serve; serve('warmup')"],
                                env=env, cwd="/", stdin=subprocess.DEVNULL)
        try:
            _until(warming.exists, "the warm-up")
            proc.send_signal(signum)
            go.touch()
            assert proc.wait(timeout=30) == -signum
        finally:
            proc.kill()
            proc.wait()
        assert not warming.exists()
        go.unlink()

#: what a standby does before it waits, then the command ``argv[1:]`` as the standby runs it: prints
#: the corral modules it imported and the argument parsers it built meanwhile
_AS_A_STANDBY = """
import argparse, sys
from corral.core.server.standby import warm

cli = warm("corral.tui.cli")
before, built = set(sys.modules), []
init = argparse.ArgumentParser.__init__
argparse.ArgumentParser.__init__ = lambda self, *a, **k: (built.append(1), init(self, *a, **k))[1]
code = cli.main(sys.argv[1:])
late = sorted(m for m in set(sys.modules) - before if m.startswith("corral"))
print("late:", late, "parsers built:", len(built), file=sys.stderr)
sys.exit(code)
"""


def _one_task_run_as(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    """``python -c script run PLAN --headless`` of PLAN's first task in a new repository: its line
    printed, exit 0."""
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", PLAN.split("    [[tasks]]\n    name = \"two\"")[0])
    res = subprocess.run([sys.executable, "-c", script, "run", str(plan), "--headless", "--approve", "none"],
                         cwd=repo, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "[one] first-line" in res.stdout, res.stdout + res.stderr
    return res


def test_a_standby_has_done_what_every_run_starts_with_before_it_waits(tmp_path: Path) -> None:
    """What a headless run needs is imported by the standby before it waits (the git backend too),
    and the command line's parser built: the run it takes imports no module of corral and builds
    no parser (argparse compiles its patterns as it builds one)."""
    res = _one_task_run_as(tmp_path, _AS_A_STANDBY)
    assert "late: [] parsers built: 0" in res.stderr, res.stderr


def test_the_client_imports_nothing_costly_before_it_hands_over(tmp_path: Path) -> None:
    """What ``corral`` imports before it hands its command over (cli's module, the standby client,
    its key), in an interpreter that has loaded nothing else (``-S``; the package found by path, as
    an installed one is): none of ``signal``, ``contextlib`` or ``typing`` (``enum``,
    ``collections``, ``functools``: a third of the client's start), ``socket``, ``subprocess``,
    ``json``, ``re`` or ``argparse``."""
    root = tmp_path / "site" / "corral"
    root.mkdir(parents=True)
    for part in ("core", "tui"):
        (root / part).symlink_to(Path(__import__(f"corral.{part}", fromlist=["_"]).__path__[0]))
    code = ("import sys\nbefore = set(sys.modules)\nimport corral.tui.cli\n"
            "from corral.core.server import standby\nstandby.socket_path('/x', standby.key())\n"
            "print(' '.join(sorted(set(sys.modules) - before)))")
    res = subprocess.run([sys.executable, "-S", "-c", code], env={**os.environ, "PYTHONPATH": str(root.parent)},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    loaded = set(res.stdout.split())
    assert "corral.core.server.standby" in loaded
    costly = {"signal", "contextlib", "typing", "enum", "collections", "functools", "socket", "subprocess", "json",
              "re", "argparse"}
    assert not loaded & costly, sorted(loaded & costly)


#: a standby's warm-up, then the command ``argv[1:]`` as the standby runs it: prints how many reaper
#: hubs and watchdogs the warm-up left running as this process's children, and whether the run's
#: are those
_HELPERS_AHEAD = """
import os, sys
from corral.core.server.standby import warm

cli = warm("corral.tui.cli")
children = {}
for entry in os.listdir("/proc"):
    try:
        with open(f"/proc/{entry}/stat") as f:
            state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                children[int(entry)] = f.read().split(b"\\0")
    except (OSError, ValueError):
        pass
code = cli.main(sys.argv[1:])
from corral.core.procs import _Hub
from corral.core.watchdog import Watchdog
hubs = [pid for pid, argv in children.items() if b"--hub" in argv]
watchdogs = [pid for pid, argv in children.items() if any(a.endswith(b"watchdog.py") for a in argv)]
print("hubs:", len(hubs), "the run's:", _Hub._instance.proc.pid in hubs,
      "watchdogs:", len(watchdogs), "the run's:", Watchdog._instance.proc.pid in watchdogs, file=sys.stderr)
sys.exit(code)
"""


def test_a_standby_has_started_the_reaper_hub_and_the_watchdog_before_it_waits(tmp_path: Path) -> None:
    """The processes a run's agents need, the hub that forks their reapers and the watchdog (two
    Python starts, tens of ms of CPU each), are started by the standby before it waits: the run it
    takes uses those and starts none while its preflight's git processes run."""
    res = _one_task_run_as(tmp_path, _HELPERS_AHEAD)
    assert "hubs: 1 the run's: True watchdogs: 1 the run's: True" in res.stderr, res.stderr


#: a standby's warm-up, then the command ``argv[3:]`` as the standby runs it, with ``bwrap`` on PATH a
#: wrapper that notes each start in file argv[1] and fails while file argv[2] exists (removed after
#: the warm-up): prints how many bwrap processes started during the warm-up and during the run
_PROBED_AHEAD = """
import os, sys
from pathlib import Path
from corral.core.server.standby import warm

log, broken = Path(sys.argv[1]), Path(sys.argv[2])
cli = warm("corral.tui.cli")
ahead = len(log.read_text().splitlines()) if log.exists() else 0
broken.unlink(missing_ok=True)
code = cli.main(sys.argv[3:])
print("ahead:", ahead, "in the run:", len(log.read_text().splitlines()) - ahead, file=sys.stderr)
sys.exit(code)
"""

SANDBOXED = """\
    agent = "shell"
    setup = "none"
    approve = "none"
    sandbox = "bwrap"
    [[tasks]]
    name = "one"
    prompt = "echo first-line"
"""


def _probed_ahead(tmp_path: Path, broken: bool) -> tuple[subprocess.CompletedProcess, Path]:
    log, flag = tmp_path / "bwrap-starts", tmp_path / "bwrap-broken"
    if broken:
        flag.touch()
    bindir = tmp_path / "bwrap-bin"
    bindir.mkdir()
    (bindir / "bwrap").write_text(f'#!/bin/sh\necho start >> {log}\n'
                                  f'if [ -e {flag} ]; then echo "bwrap: no user namespaces" >&2; exit 1; fi\n'
                                  f'exec {shutil.which("bwrap")} "$@"\n')
    (bindir / "bwrap").chmod(0o755)
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.toml", SANDBOXED)
    res = subprocess.run([sys.executable, "-c", _PROBED_AHEAD, str(log), str(flag), "run", str(plan), "--headless"],
                         cwd=repo, env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=120)
    return res, log


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed")
def test_a_standby_has_probed_the_sandbox_before_it_waits(tmp_path: Path) -> None:
    """The sandbox probe (a bwrap started and ended, the slowest of preflight's steps) is made by the
    standby before it waits: the run it takes starts one bwrap, its agent's, and runs sandboxed."""
    from test_sandbox import bwrap_problem

    if bwrap_problem():
        pytest.skip(f"no sandbox here: {bwrap_problem()}")
    res, _ = _probed_ahead(tmp_path, broken=False)
    assert res.returncode == 0 and "[one] first-line" in res.stdout, res.stdout + res.stderr
    assert "one: sandboxed: bwrap" in res.stdout
    assert "ahead: 1 in the run: 1" in res.stderr, res.stderr


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed")
def test_a_sandbox_that_failed_the_standbys_probe_is_probed_again_by_the_run(tmp_path: Path) -> None:
    """A bwrap that could not run when the standby probed it is not taken as broken for good: the
    run probes it again, and (working by then) its agent runs in it, as it would in-process."""
    from test_sandbox import bwrap_problem

    if bwrap_problem():
        pytest.skip(f"no sandbox here: {bwrap_problem()}")
    res, _ = _probed_ahead(tmp_path, broken=True)
    assert res.returncode == 0 and "[one] first-line" in res.stdout, res.stdout + res.stderr
    assert "one: sandboxed: bwrap" in res.stdout
    assert "ahead: 2 in the run: 2" in res.stderr, res.stderr  # (a failing probe tries both ways)


def test_a_standby_imports_with_the_collector_paused_then_collects_once_and_freezes() -> None:
    """The standby's warm-up makes objects that live as long as the process: no collection runs
    while it imports (they were a fifth of its time, and of the CPU the run that started it
    shares), one runs at its end, and what is left is frozen; the collector is on again after."""
    code = ("import gc\nfrom corral.core.server.standby import warm\n"
            "before = [s['collections'] for s in gc.get_stats()]\nwarm('corral.tui.cli')\n"
            "after = [s['collections'] for s in gc.get_stats()]\n"
            "print([a - b for a, b in zip(after, before)], gc.get_freeze_count() > 10000, gc.isenabled())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("]")[0] + "]" == "[0, 0, 1]", res.stdout
    assert res.stdout.split("]")[1].split() == ["True", "True"], res.stdout

