"""The way to a run's first output: preflight's git processes are few and asked at once, and the
sandbox probe runs beside them, once per bwrap."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from conftest import corral, git, make_repo
from test_workspaces_git import _calls, counted_git  # noqa: F401  (a fixture)


def _one_task_plan(**fields: object):
    from corral.core.plan import Plan, TaskSpec

    return Plan(tasks=[TaskSpec(name="one", prompt="echo hi", agent="shell")], **fields)  # type: ignore[arg-type]


def test_preflight_asks_git_four_questions_and_creates_nothing(tmp_path: Path, counted_git: Path) -> None:
    """Whether the base is a branch, its commit, where it is checked out and whether a branch
    ``corral`` exists are one ``for-each-ref``: no ``show-ref`` or ``rev-parse`` per question, no
    ``worktree list``; the branch checked out is read from ``HEAD`` (no ``symbolic-ref``), and a
    repository without a stash is not asked for its entries (no ``log -g``)."""
    from corral.core.pipeline import prepare

    repo = make_repo(tmp_path / "repo")
    before = git(repo, "for-each-ref")
    main_commit = git(repo, "rev-parse", "main").strip()

    async def main() -> None:
        prep = await prepare(_one_task_plan(sandbox="none"), repo)
        assert prep.base_name == "main" and prep.base_commit == main_commit
        await prep.backend.close()

    counted_git.write_text("")
    anyio.run(main)
    asked = collections.Counter(line.split()[0] for line in _calls(counted_git))
    assert asked == {"rev-parse": 1, "for-each-ref": 1, "status": 1, "ls-tree": 1}
    assert git(repo, "for-each-ref") == before
    assert not (repo / ".git" / "corral" / "runs").exists()


def test_preflight_asks_for_each_ref_beside_the_rev_parse_that_finds_the_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base checked out in the repository (its ``HEAD``) is asked about (``for-each-ref``) while
    ``rev-parse`` finds the repository, not after it: here ``rev-parse`` waits (up to 10 s) for a
    ``for-each-ref`` to have started, and says whether one had. Still four git processes; with a
    base given (``--base``), the questions one after the other, as before."""
    from corral.core.pipeline import prepare

    real = shutil.which("git")
    repo = make_repo(tmp_path / "repo")
    bindir, log, said = tmp_path / "bin", tmp_path / "git-calls", tmp_path / "rev-parse-saw"
    bindir.mkdir()
    (bindir / "git").write_text(
        "#!/bin/sh\n"
        f'echo "$*" | sed "s/-c [^ ]* //g" >> {log}\n'
        f'case "$*" in *"rev-parse --show-toplevel"*) if [ -e {said} ]; then\n'
        f"  i=0; until grep -q for-each-ref {log} || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done\n"
        f"  if grep -q for-each-ref {log}; then echo beside >> {said}; else echo after >> {said}; fi; fi;;\n"
        "esac\n"
        f'exec {real} "$@"\n')
    (bindir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    main_commit = git(repo, "rev-parse", "main").strip()

    async def main(base: str | None) -> None:
        prep = await prepare(_one_task_plan(sandbox="none"), repo, base=base)
        assert prep.base_name == "main" and prep.base_commit == main_commit
        await prep.backend.close()

    log.write_text("")
    said.write_text("")  # (rev-parse waits while this file exists)
    anyio.run(main, None)
    assert said.read_text().split() == ["beside"]
    asked = collections.Counter(line.split()[0] for line in _calls(log))
    assert asked == {"rev-parse": 1, "for-each-ref": 1, "status": 1, "ls-tree": 1}
    said.unlink()
    log.write_text("")
    anyio.run(main, "main")
    assert _calls(log)[0].startswith("rev-parse --show-toplevel")
    assert collections.Counter(line.split()[0] for line in _calls(log)) == asked


def test_preflight_still_refuses_what_it_refused(tmp_path: Path) -> None:
    """The checks answered by the one ``for-each-ref`` refuse as before: a missing base, a branch
    ``corral``; a tag or ``main~1`` as the base still resolves."""
    from corral.core.pipeline import prepare
    from corral.core.vcs.base import UsageError

    repo = make_repo(tmp_path / "repo")
    (repo / "two.txt").write_text("2\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two")
    git(repo, "tag", "-a", "-m", "a tag", "v1", "main~1")

    async def commit_of(base: str) -> str:
        prep = await prepare(_one_task_plan(sandbox="none"), repo, base=base)
        await prep.backend.close()
        return prep.base_commit

    first = git(repo, "rev-parse", "main~1").strip()
    assert anyio.run(commit_of, "v1") == first
    assert anyio.run(commit_of, "main~1") == first
    with pytest.raises(UsageError, match="base 'nope': no such revision"):
        anyio.run(commit_of, "nope")
    git(repo, "branch", "corral")
    with pytest.raises(UsageError, match="a branch named 'corral' exists"):
        anyio.run(commit_of, "main")


def test_the_base_is_the_branch_checked_out_as_git_says(tmp_path: Path) -> None:
    """Without a base, the branch the checkout is on (read from HEAD): a name git would quote goes
    by ``git symbolic-ref``, and a detached HEAD is still refused, naming what to give."""
    from corral.core.pipeline import prepare
    from corral.core.vcs.base import UsageError

    repo = make_repo(tmp_path / "repo")

    async def base_of() -> tuple[str, str]:
        prep = await prepare(_one_task_plan(sandbox="none"), repo)
        await prep.backend.close()
        return prep.base_name, prep.base_commit

    assert anyio.run(base_of) == ("main", git(repo, "rev-parse", "main"))
    git(repo, "checkout", "-q", "-b", "feature/ü+x")
    assert anyio.run(base_of) == ("feature/ü+x", git(repo, "rev-parse", "main"))
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(UsageError, match="HEAD is detached; give a base"):
        anyio.run(base_of)


def test_a_one_task_run_starts_six_git_processes_before_its_agent(tmp_path: Path, counted_git: Path) -> None:
    """From ``corral run`` to its agent: preflight's four questions (the checkout's branch read from
    HEAD; the base's commit, where it is checked out and a branch ``corral`` in one ``for-each-ref``;
    no stash's entries where there is no stash),
    the workspace's one ``checkout`` and the question of the user's hooks path (asked beside it)."""
    repo = make_repo(tmp_path / "repo")
    (tmp_path / "wt").mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text(f'agent = "shell"\nsetup = "none"\nsandbox = "none"\nworktree_root = "{tmp_path / "wt"}"\n'
                    f'[[tasks]]\nname = "one"\nprompt = "echo AGENT >> {counted_git}"\n')
    counted_git.write_text("")
    res = corral("run", str(plan), "--headless", "--approve", "none", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    calls = _calls(counted_git)
    before = [c.split()[0] for c in calls[:calls.index("AGENT")]]
    assert sorted(before) == sorted(["rev-parse", "for-each-ref", "ls-tree", "status", "checkout", "config"])


def test_the_users_stash_is_asked_of_git_only_when_there_is_one(tmp_path: Path, counted_git: Path) -> None:
    """The stash's entries are the reflog of ``refs/stash``: a repository without one (refs stored
    as files) has none, and a run asks no ``git log -g`` of it, at its start or its end. With one,
    the run asks at both and the stash is kept as it was."""
    repo = make_repo(tmp_path / "repo")
    (tmp_path / "wt").mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text(f'agent = "shell"\nsetup = "none"\nsandbox = "none"\nworktree_root = "{tmp_path / "wt"}"\n'
                    '[[tasks]]\nname = "one"\nprompt = "echo hi"\n')

    def stash_asked() -> int:
        counted_git.write_text("")
        res = corral("run", str(plan), "--headless", "--approve", "none", cwd=repo)
        assert res.returncode == 0, res.stdout + res.stderr
        return sum(c.startswith("log -g") and "refs/stash" in c for c in _calls(counted_git))

    assert stash_asked() == 0
    (repo / "README.md").write_text("edited\n")
    git(repo, "stash", "-q")
    stash = git(repo, "stash", "list")
    assert stash_asked() == 2
    assert git(repo, "stash", "list") == stash


@pytest.fixture
def bwrap_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``bwrap`` on PATH is the real one, each start logged (a line) to the returned file; the
    process's probe results are forgotten for the test."""
    log = tmp_path / "bwrap-starts"
    wrap_bwrap(tmp_path, monkeypatch, f"echo start >> {log}", f"{Path(sys.executable).parent}:")
    return log


def wrap_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, path: str = "") -> None:
    """``bwrap`` on PATH runs the shell ``line``, then the real one; the process's probe results
    are forgotten for the test."""
    from corral.core import sandbox

    real = shutil.which("bwrap") or "/usr/bin/bwrap"
    bindir = tmp_path / "bwrap-bin"
    bindir.mkdir()
    wrapper = bindir / "bwrap"
    wrapper.write_text(f'#!/bin/sh\n{line}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{path}/usr/bin:/bin")
    monkeypatch.setattr(sandbox, "_probed", {})


def test_the_sandbox_probe_runs_beside_the_git_preflight(tmp_path: Path, bwrap_seen: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe starts while preflight's git processes run, not after them: here its ``git
    for-each-ref`` waits (up to 20 s) for bwrap to have started, and says whether it had."""
    from corral.core.pipeline import prepare

    real = shutil.which("git")
    repo = make_repo(tmp_path / "repo")
    bindir = tmp_path / "git-bin"
    bindir.mkdir()
    said = tmp_path / "preflight-saw"
    wrapper = bindir / "git"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in *for-each-ref*refs/heads/corral)\n'
        f"  i=0; while [ ! -s {bwrap_seen} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done\n"
        f"  if [ -s {bwrap_seen} ]; then echo bwrap >> {said}; else echo nothing >> {said}; fi;;\n"
        "esac\n"
        f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    async def main() -> None:
        prep = await prepare(_one_task_plan(sandbox="auto"), repo)
        await prep.backend.close()

    anyio.run(main)
    assert said.read_text().split() == ["bwrap"]


def test_the_sandbox_probe_runs_once_for_callers_at_once(bwrap_seen: Path) -> None:
    """Two callers asking at once (preflight's early start, then its policy) get one probe's answer."""
    from corral.core import sandbox

    async def alone() -> tuple[str, bool, str]:
        return await sandbox.probe()

    one = anyio.run(alone)
    starts = len(bwrap_seen.read_text().splitlines())
    assert starts >= 1
    sandbox._probed.clear()
    bwrap_seen.write_text("")

    async def together() -> list[tuple[str, bool, str]]:
        got: list[tuple[str, bool, str]] = []

        async def ask() -> None:
            got.append(await sandbox.probe())

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            tg.start_soon(ask)
        return got

    assert anyio.run(together) == [one, one]
    assert len(bwrap_seen.read_text().splitlines()) == starts


def test_the_sandbox_probe_is_corrals_own_child_in_its_own_group(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe is one short ``bwrap true``, run as preflight's git processes are: started by
    corral itself in a process group of its own (and reaped there), not through a reaper process
    (a Python start each time, most of the probe's time)."""
    from corral.core import sandbox

    seen = tmp_path / "bwrap-parents"
    # (``env`` execs this script: its parent is whoever started ``env``; field 5 of stat is its group)
    wrap_bwrap(tmp_path, monkeypatch, f'echo "$$ $PPID $(cut -d" " -f5 /proc/$$/stat)" >> {seen}')
    anyio.run(sandbox.probe)
    pid, parent, group = seen.read_text().splitlines()[0].split()
    assert int(parent) == os.getpid() and group == pid


def test_preflight_imports_none_of_the_engines_run_modules() -> None:
    """Preflight's module needs the plan, the VCS and the sandbox, not the runtime, the merge queue,
    the events or the run's host: those are imported beside it (below)."""
    code = ("import sys, corral.core.preflight\n"
            "print(sorted(m for m in ('corral.core.runtime', 'corral.core.queue', 'corral.core.pipeline',\n"
            "    'corral.core.server.host', 'corral.core.parsers') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


#: ``corral`` as the command line runs it, noting in file argv[1] which thread imports the runtime, and
#: in argv[1] + ".ctypes" which one imports ctypes (the first agent's start needs it: see procs.py)
_NOTING_IMPORTS = """
import sys, threading
from pathlib import Path

noted = Path(sys.argv[1])


class Note:
    def find_spec(self, name, path=None, target=None):
        if name in ("corral.core.runtime", "ctypes"):
            where = noted if name == "corral.core.runtime" else Path(str(noted) + ".ctypes")
            if not where.exists():
                where.write_text(threading.current_thread().name)
        return None


sys.meta_path.insert(0, Note())
from corral.tui.cli import main

main(sys.argv[2:])
"""


def preflight_waits(tmp_path: Path, cond: str, seen: str, said: Path) -> tuple[Path, Path, Path]:
    """A repository, a ``git`` wrapper (in the returned bin dir) whose preflight ``for-each-ref``
    waits up to 20 s for the shell condition ``cond``, then writes ``seen`` to ``said`` if it held
    ("nothing" if not), and a one-task plan whose agent prints ``first-line``."""
    real = shutil.which("git")
    repo = make_repo(tmp_path / "repo")
    bindir = tmp_path / "git-bin"
    bindir.mkdir()
    wrapper = bindir / "git"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"held() {{ {cond}; }}\n"
        'case "$*" in *for-each-ref*refs/heads/corral)\n'
        "  i=0; until held || [ $i -ge 400 ]; do sleep 0.05; i=$((i+1)); done\n"
        f"  if held; then echo {seen} >> {said}; else echo nothing >> {said}; fi;;\n"
        "esac\n"
        f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "wt").mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text(f'agent = "shell"\nsetup = "none"\nsandbox = "none"\nworktree_root = "{tmp_path / "wt"}"\n'
                    '[[tasks]]\nname = "one"\nprompt = "echo first-line"\n')
    return repo, bindir, plan


def test_a_headless_run_imports_the_engine_while_preflights_git_runs(tmp_path: Path) -> None:
    """``corral run --headless`` imports the runtime (and what else the run needs after preflight,
    ctypes too) in a thread of its own while preflight's git processes run, not before the first of
    them nor at the first agent's start: here preflight's ``git for-each-ref`` waits (up to 20 s) for
    the runtime's import to have begun, and says whether it had. The run is the same: its agent's
    line, exit 0."""
    noted, said = tmp_path / "runtime-imported-by", tmp_path / "preflight-saw"
    repo, bindir, plan = preflight_waits(tmp_path, f"[ -s {noted} ]", "runtime", said)
    driver = tmp_path / "driver.py"
    driver.write_text(_NOTING_IMPORTS)
    res = subprocess.run([sys.executable, str(driver), str(noted), "run", str(plan), "--headless", "--approve", "none"],
                         cwd=repo, env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "[one] first-line" in res.stdout, res.stdout + res.stderr
    assert noted.read_text() == "corral-imports"
    assert Path(str(noted) + ".ctypes").read_text() == "corral-imports"
    assert said.read_text().split() == ["runtime"]


def test_the_watchdog_starts_beside_preflights_git(tmp_path: Path) -> None:
    """A run starts its process's watchdog in preflight, beside its git processes, also when no
    sandbox is probed: not at its first agent's start (where the two Python starts would share the
    cores): here preflight's ``git for-each-ref`` waits (up to 20 s) for a watchdog child of corral
    to exist, and says whether one did."""
    said = tmp_path / "preflight-saw"
    repo, bindir, plan = preflight_waits(tmp_path, "pgrep -P $PPID -f watchdog.py > /dev/null", "watchdog", said)
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_NO_WATCHDOG"}
    res = subprocess.run([sys.executable, "-m", "corral.tui.cli", "run", str(plan), "--headless", "--approve", "none"],
                         cwd=repo, env={**env, "PATH": f"{bindir}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "[one] first-line" in res.stdout, res.stdout + res.stderr
    assert said.read_text().split() == ["watchdog"]


def test_the_reaper_hub_starts_beside_preflights_git(tmp_path: Path) -> None:
    """A run starts the hub that forks its agents' reapers in preflight, beside its git processes:
    its first agent does not wait for the hub's Python to start. Here preflight's ``git
    for-each-ref`` waits (up to 20 s) for a hub child of corral to exist, and says whether one did;
    the agent's reaper is then forked by that hub (one hub, started once)."""
    said = tmp_path / "preflight-saw"
    repo, bindir, plan = preflight_waits(tmp_path, "pgrep -P $PPID -f 'reaper.py --hub' > /dev/null", "hub", said)
    plan.write_text(plan.read_text().replace('"echo first-line"',
                                             """'echo first-line; tr "\\0" " " < /proc/$PPID/cmdline; echo'"""))
    res = subprocess.run([sys.executable, "-m", "corral.tui.cli", "run", str(plan), "--headless", "--approve", "none"],
                         cwd=repo, env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "[one] first-line" in res.stdout, res.stdout + res.stderr
    assert said.read_text().split() == ["hub"]
    reaper_argv = next(line for line in res.stdout.splitlines() if "reaper.py" in line)
    assert "--hub" in reaper_argv, reaper_argv


def test_a_run_that_preflight_refuses_leaves_no_hub_behind(tmp_path: Path) -> None:
    """The hub preflight starts beside its git processes is ended when preflight refuses the run (a
    process that outlives the refusal, as a supervisor does, is left with nothing of the run)."""
    from corral.core import procs
    from corral.core.pipeline import prepare
    from corral.core.vcs.base import UsageError

    def hubs() -> list[int]:
        found = []
        for p in procs.reaper.processes():
            if p.ppid == os.getpid() and p.state != "Z":
                with open(f"/proc/{p.pid}/cmdline", "rb") as f:
                    if b"--hub" in f.read().split(b"\0"):
                        found.append(p.pid)
        return found

    with procs._Hub._guard:  # (one the tests before used: this test starts from none)
        if procs._Hub._instance is not None:
            procs._Hub._instance.close()
            procs._Hub._instance = None
    repo = make_repo(tmp_path / "repo")

    async def refused() -> None:
        await prepare(_one_task_plan(sandbox="none"), repo, base="nope")

    with pytest.raises(UsageError, match="base 'nope': no such revision"):
        anyio.run(refused)
    assert procs._Hub._instance is None and hubs() == []

    async def accepted() -> None:  # (one that passes keeps it for its agents)
        prep = await prepare(_one_task_plan(sandbox="none"), repo)
        await prep.backend.close()

    anyio.run(accepted)
    assert procs._Hub._instance is not None and hubs() == [procs._Hub._instance.proc.pid]


def test_the_watchdog_starts_without_site_as_the_reapers_do() -> None:
    """Started beside a run's preflight (at its first process), the watchdog is Python without
    ``site`` and without the corral package, as the reapers are (a third of the CPU time on a
    machine whose cores the start-up shares)."""
    from corral.core.watchdog import Watchdog

    dog = Watchdog.get()
    assert dog is not None and dog.proc.poll() is None
    argv: list[str] = []
    deadline = time.monotonic() + 10
    while not argv and time.monotonic() < deadline:  # (empty until its exec is done)
        with open(f"/proc/{dog.proc.pid}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
    assert argv[1:3] == ["-I", "-S"] and argv[3].endswith("watchdog.py")


def test_the_watchdog_imports_nothing_costly_for_its_start() -> None:
    """The watchdog's own half (what runs as its script) needs none of ``subprocess``,
    ``threading``, ``signal`` (its enums), ``re`` or ``locale``: the client's half imports those
    where it uses them. They were two thirds of the watchdog's start, which a run's or a standby's
    start shares the cores with."""
    from corral.core import watchdog

    res = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", watchdog.__file__],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    loaded = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "reaper" in loaded
    costly = {"subprocess", "threading", "signal", "enum", "re", "locale", "atexit"}
    assert not loaded & costly, sorted(loaded & costly)


def test_the_reaper_hub_imports_nothing_costly_for_its_start() -> None:
    """The hub takes its requests on the socket with ``_socket`` alone: ``socket`` imports ``enum``
    and ``selectors``, some 40 % of the hub's start (which a run's or a standby's start shares the
    cores with)."""
    import socket

    from corral.core import reaper

    ours, theirs = socket.socketpair()
    with ours:
        hub = subprocess.Popen([sys.executable, "-I", "-S", "-X", "importtime", reaper.__file__, "--hub",
                                str(theirs.fileno())], pass_fds=[theirs.fileno()], stderr=subprocess.PIPE, text=True)
        theirs.close()
    _out, err = hub.communicate(timeout=60)  # (it ends when our end closes)
    assert hub.returncode == 0, err
    loaded = {line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert "_socket" in loaded
    costly = {"socket", "enum", "selectors", "subprocess", "threading", "signal", "re"}
    assert not loaded & costly, sorted(loaded & costly)


def test_an_agents_guard_files_are_written_off_the_event_loop(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard's sixty-odd hook files per agent are read and written in a worker thread: when many
    agents start at once, the event loop does not wait for the filesystem (and still gets them all)."""
    import threading

    from corral.core import guard
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo")
    root = tmp_path / "wt"
    root.mkdir()
    writers: set[str] = set()
    write = guard._write

    def spied(path: Path, text: str, executable: bool = True) -> None:
        writers.add(threading.current_thread().name)
        write(path, text, executable)

    monkeypatch.setattr(guard, "_write", spied)

    async def main() -> tuple[str, dict[str, str]]:
        backend = await GitBackend.open(repo)
        ws = await backend.create_workspace("20260101-000000-abcd", "one", await backend.resolve("main"), str(root))
        try:
            loop = threading.current_thread().name
            env = await guard.agent_git_env(backend, tmp_path / "run", str(ws.path), [ws], dict(os.environ))
        finally:
            await backend.remove_workspace(ws, keep_ref=False)
            await backend.close()
        return loop, env

    loop, env = anyio.run(main)
    assert writers and loop not in writers
    assert (tmp_path / "run" / "guard" / "ws-one" / "hooks" / "reference-transaction").is_file()
    assert env["PATH"].startswith(str(tmp_path / "run" / "guard" / "bin"))
