"""Agents in a bubblewrap sandbox (``sandbox = "bwrap"``): they write only into their own workspace
(and what a commit there needs), never into the user's checkout, ``$HOME``, another task's
workspace or the real ``/tmp``; ``network = false`` cuts them off; what they leave running dies with
them, even when corral and the command's reaper are SIGKILLed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import anyio
import pytest

from conftest import corral, corral_state, git, has_jj, write_plan
from test_engine_git import plan_text, run_plan
from test_faults import start_run, wait_for


def bwrap_problem() -> str:
    """Why bwrap cannot run here ("" when it can), as corral's own probe finds it."""
    from corral.core.sandbox import probe

    return anyio.run(probe)[2]


needs_bwrap = pytest.mark.skipif(bool(bwrap_problem()), reason=f"no sandbox here: {bwrap_problem()}")


def wait_until(cond, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@needs_bwrap
def test_an_agent_writes_nothing_outside_its_workspace(repo, tmp_path, wt_root):
    home = tmp_path / "home"
    home.mkdir()
    outside = Path("/tmp") / f"corral-sandbox-test-{uuid.uuid4().hex}"
    readme = (repo / "README.md").read_text()
    # "two" exits at once; its workspace stays until the run ends. "one" waits for it (unsandboxed
    # it would see it at once; sandboxed it never does: the temp dir is private), then tries
    one = (f"for i in $(seq 40); do set -- {wt_root}/corral-two-*; [ -e \"$1\" ] && break; sleep 0.05; done; "
           f"echo evil >> {repo}/README.md; echo evil > $HOME/.bashrc; echo evil > \"$1/evil.txt\"; "
           f"echo evil > {outside}; echo mine > mine.txt")
    try:
        plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", one), ("two", "echo two")],
                                                           sandbox="bwrap"))
        res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo, env={"HOME": str(home)})
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout
        assert "one: sandboxed: bwrap (network on)" in out, out
        # each write failed, and the agent's output says so
        assert f"[one] sh: 1: cannot create {repo}/README.md: Read-only file system" in out, out
        assert f"[one] sh: 1: cannot create {home}/.bashrc: Read-only file system" in out, out
        assert "evil.txt: Directory nonexistent" in out or "evil.txt: Read-only file system" in out, out
        assert (repo / "README.md").read_text() == readme
        assert not (home / ".bashrc").exists()
        assert not outside.exists()
        # nothing of it reached another task's work: only one's own file landed
        assert git(repo, "show", "main:mine.txt") == "mine"
        assert "evil.txt" not in git(repo, "ls-tree", "-r", "--name-only", "main")
    finally:
        if outside.exists():
            outside.unlink()


def killed_then_cleaned(repo: Path, plan: Path, while_killed=None) -> subprocess.CompletedProcess:
    """``corral run`` of ``plan`` SIGKILLed once its agent printed "started" (``while_killed()`` then
    looks at what it left), then ``corral clean``, which must succeed."""
    proc = start_run(repo, plan, "--approve", "all")
    try:
        wait_for(proc, "started", 1)
        proc.kill()
        proc.wait()
        if while_killed is not None:
            while_killed()
        res = corral("clean", cwd=repo)
        assert res.returncode == 0, res.stdout + res.stderr
        return res
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_bwrap
def test_a_sandboxed_agent_commits_in_its_workspace_and_its_work_lands(repo, tmp_path, wt_root):
    script = ("echo one > one.txt && git add one.txt && git commit -qm 'agent: one' && "
              "git checkout -q --detach && echo two > two.txt && git add two.txt && git commit -qm 'agent: two' "
              "&& git checkout -q - && git log --format=%s -1")
    res = run_plan(repo, tmp_path, wt_root, [("one", script)], "--approve", "all", sandbox="bwrap")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "one: sandboxed: bwrap (network on)" in res.stdout
    assert "[one] agent: one" in res.stdout
    assert git(repo, "show", "main:one.txt") == "one"
    assert "agent: one" in git(repo, "log", "--format=%s", "main")
    assert corral_state(repo)["worktrees"] == [] and list(wt_root.iterdir()) == []


@needs_bwrap
def test_tools_installed_in_the_temp_dir_stay_usable_in_the_sandbox(repo, tmp_path, wt_root):
    """A venv or a PATH entry in a temp dir (CI checkouts often are) stays visible, read-only, over
    the sandbox's private temp dirs: agents and verify can run what is installed there."""
    bin_dir = tmp_path / "tools" / "bin"
    bin_dir.mkdir(parents=True)
    tool = bin_dir / "make-greeting"
    tool.write_text("#!/bin/sh\necho hello from a tool\n")
    tool.chmod(0o755)
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "make-greeting > one.txt")],
                                                        sandbox="bwrap", verify="make-greeting && test -s one.txt"))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo,
                 env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert git(repo, "show", "main:one.txt") == "hello from a tool"
    assert not (bin_dir / "x").exists()


def test_the_path_is_resolved_once_per_process_not_for_every_agent(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What a sandbox keeps visible of the temp dirs (corral's Python, the PATH entries in them) is
    the same for every agent of a process: each PATH entry is resolved once, not at every agent's
    start; a PATH entry of the temp dir is still bound read-only over the private temp dir."""
    from corral.core import sandbox

    tools = tmp_path / "tools" / "bin"
    tools.mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    resolved: list[str] = []
    realpath = os.path.realpath

    def spied(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        resolved.append(os.fspath(path))
        return realpath(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "realpath", spied)
    box = sandbox.Sandbox(bwrap="/usr/bin/bwrap")
    argvs = []
    for task in ("one", "two"):
        resolved.clear()
        argvs.append(box.wrap(["true"], cwd=str(tmp_path), writable=[tmp_path / task]))
    assert str(tools) not in resolved and "/usr/bin" not in resolved, resolved
    first = argvs[0]
    assert ["--ro-bind", str(tools.resolve()), str(tools.resolve())] == \
        first[first.index(str(tools.resolve())) - 1:first.index(str(tools.resolve())) + 2]


@needs_bwrap
def test_a_path_already_shown_read_only_gets_no_mount_of_its_own(tmp_path: Path) -> None:
    """Each mount costs a sandbox's start (the kernel makes them one at a time, for every agent
    started together): a path to show read-only that the root's read-only view already shows (a
    home outside the temp dir), or a read-only view of a dir above it (a repository's ``.git`` in
    the repository), gets no mount; one in a private temp dir does, and what lies below a writable
    or a moved mount does. In the sandbox each is shown as it should be."""
    from corral.core import sandbox

    repo = tmp_path / "repo"
    (repo / ".git" / "objects" / "moved").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "info").mkdir()
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    home = Path("/usr/share")  # (outside the temp dir: the root's read-only view shows it)
    box = sandbox.Sandbox(bwrap=shutil.which("bwrap") or "bwrap")
    probe = ("cat .git-head; test -w . && echo ws-writable; touch ../repo/x 2>/dev/null || echo repo-read-only;"
             " touch sub/y && echo sub-writable; ls ../repo/.git/objects/moved")
    (ws / ".git-head").symlink_to(repo / ".git" / "HEAD")
    argv = box.wrap(["sh", "-c", probe], cwd=str(ws), visible=[repo, repo / ".git", home, ws / "sub"],
                    writable=[ws], moved={repo / ".git" / "objects" / "moved": (elsewhere, False)})
    binds = [tuple(argv[i:i + 3]) for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]
    real = lambda p: os.path.realpath(p)  # noqa: E731
    assert ("--ro-bind", real(repo), real(repo)) in binds, "the repository is in a private temp dir"
    assert not [b for b in binds if b[2] in (real(repo / ".git"), str(home))], binds
    assert ("--ro-bind", real(ws / "sub"), real(ws / "sub")) in binds, "read-only below a writable mount"
    assert ("--ro-bind", real(elsewhere), real(repo / ".git" / "objects" / "moved")) in binds
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["ref:", "refs/heads/main", "ws-writable", "repo-read-only", "info"], done.stdout
    assert not (repo / "x").exists() and not (ws / "sub" / "y").exists()


@needs_bwrap
def test_the_probe_leaves_no_zombie_in_a_long_lived_corral() -> None:
    """The probe's bwrap (``--unshare-pid``) exits before the first process of its pid namespace is
    gone; that one is reparented to corral, a child subreaper, and was left a zombie for as long as
    corral ran (a standby, the supervisor). The probe reaps it: corral has no child left after it."""
    script = """
import os, anyio
from corral.core import procs, reaper, sandbox
assert procs._become_subreaper()
found, signals, problem = anyio.run(sandbox.probe)
assert found and not problem, problem
print([(p.pid, p.state) for p in reaper.processes() if p.ppid == os.getpid()])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


@needs_bwrap
def test_network_false_refuses_a_connection_to_a_local_listener(repo, tmp_path, wt_root):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                accepted.append(conn.recv(64).decode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    connect = (f"{sys.executable} -c \"import socket; s = socket.create_connection(('127.0.0.1', {port}), 5); "
               f"s.sendall(b'$CORRAL_TASK'); s.close(); print('connected')\"")
    plan = plan_text(wt_root, [("offline", connect), ("online", connect)], sandbox="bwrap")
    plan = plan.replace('name = "offline"', 'name = "offline"\nnetwork = false')
    try:
        res = corral("run", str(write_plan(tmp_path / "plan.toml", plan)), "--headless", "--approve", "all",
                     cwd=repo)
        assert "offline: sandboxed: bwrap (network off)" in res.stdout, res.stdout
        assert "online: sandboxed: bwrap (network on)" in res.stdout, res.stdout
        assert "[online] connected" in res.stdout
        assert "[offline] connected" not in res.stdout
        assert "Network is unreachable" in res.stdout or "Connection refused" in res.stdout, res.stdout
        wait_until(lambda: accepted, "the online agent's connection")
        assert accepted == ["online"]
    finally:
        server.close()
        thread.join(5)


def _processes_with(arg: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry.name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if arg.encode() in argv:
            found.append(int(entry.name))
    return found


@needs_bwrap
def test_an_escaped_daemon_dies_with_the_sandbox_when_corral_and_its_reaper_are_killed(repo, tmp_path, wt_root):
    # the reaper and corral's own sweep end an escaped daemon as long as one of them lives; with
    # both SIGKILLed (the reaper stopped first, so it cannot act), only the sandbox's own pid
    # namespace, ended with bwrap, takes the daemon along
    token = str(10_000 + uuid.uuid4().int % 50_000)
    script = f"setsid sleep {token} < /dev/null > /dev/null 2>&1 & echo started; sleep 300"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", script)], sandbox="bwrap"))
    proc = start_run(repo, plan, "--approve", "all")
    try:
        wait_for(proc, "[one] started", 1)
        wait_until(lambda: _processes_with(token), "the daemon")
        [run_dir] = list((repo / ".git/corral/runs").iterdir())

        def reaper_pid() -> int | None:
            return json.loads((run_dir / "run.json").read_text())["tasks"]["one"].get("pid")

        wait_until(reaper_pid, "the agent's pid in the journal")
        reaper = reaper_pid()
        os.kill(reaper, signal.SIGSTOP)
        proc.kill()
        proc.wait(timeout=10)
        os.kill(reaper, signal.SIGKILL)
        wait_until(lambda: not _processes_with(token), "the daemon to die", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _processes_with(token):
            os.kill(pid, signal.SIGKILL)
        proc.stdout.close()
        res = corral("clean", cwd=repo)
        assert res.returncode == 0, res.stdout + res.stderr


def test_sandbox_bwrap_without_bwrap_is_a_usage_error(repo, tmp_path, wt_root):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo hi")], sandbox="bwrap"))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo, env={"PATH": str(bin_dir)})
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [
        'corral: sandbox = "bwrap": bwrap is not installed (Debian/Ubuntu package: bubblewrap) '
        '(sandbox = "none" runs agents without one)'], res.stderr
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}
    # the same from the command line; and auto runs without one, saying why once
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo hi")]))
    res = corral("run", str(plan), "--headless", "--approve", "all", "--sandbox", "bwrap", cwd=repo,
                 env={"PATH": str(bin_dir)})
    assert res.returncode == 2 and res.stderr.startswith("corral: --sandbox bwrap: bwrap is not installed"), res.stderr
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo,
                 env={"PATH": str(bin_dir), "CORRAL_SANDBOX": "auto"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("agents run without a sandbox: bwrap is not installed") == 1, res.stdout
    assert "one: sandboxed: none (bwrap is not installed" in res.stdout, res.stdout


@pytest.mark.parametrize("line, problem", [
    ('sandbox = "docker"', 'sandbox: must be one of auto, bwrap, none, not \'docker\' (line 4)'),
    ("network = 0", "network: must be true or false (line 4)"),
])
def test_bad_sandbox_settings_are_one_line_and_exit_2(repo, tmp_path, wt_root, line, problem):
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo hi")]).replace(
        'setup = "none"', f'setup = "none"\n{line}'))
    res = corral("run", str(plan), "--headless", cwd=repo)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"corral: {plan}: {problem}"], res.stderr
    task = write_plan(tmp_path / "task.toml", plan_text(wt_root, [("one", "echo hi")]) + line + "\n")
    res = corral("run", str(task), "--headless", cwd=repo)
    assert res.returncode == 2 and f"tasks[1].{line.split()[0]}: must be" in res.stderr, res.stderr
    res = corral("run", str(plan), "--headless", "--sandbox", "maybe", cwd=repo)
    assert res.returncode == 2 and "--sandbox: invalid choice: 'maybe'" in res.stderr
    good = write_plan(tmp_path / "good.toml", plan_text(wt_root, [("one", "echo hi")]))
    res = corral("run", str(good), "--headless", cwd=repo, env={"CORRAL_SANDBOX": "maybe"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["corral: CORRAL_SANDBOX=maybe: must be one of auto, bwrap, none"]
    assert corral_state(repo)["runs"] == []


def test_corral_agents_shows_how_each_agent_would_be_sandboxed(repo, tmp_path):
    plan = write_plan(tmp_path / "plan.toml", """
        sandbox = "auto"
        [agents.codex]
        network = false
        [agents.pi]
        sandbox = "none"
        [[tasks]]
        name = "t"
        prompt = "x"
    """)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    res = corral("agents", "--plan", str(plan), cwd=repo, env={"PATH": str(bin_dir)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:6] == ["agent", "found", "version", "tested", "sandbox", "command"]
    assert "sandbox none: bwrap is not installed (Debian/Ubuntu package: bubblewrap)" in res.stdout
    rows = {r["agent"]: r["sandbox"] for r in map(json.loads, corral(
        "agents", "--plan", str(plan), "--json", cwd=repo, env={"PATH": str(bin_dir)}).stdout.splitlines())}
    assert rows["codex"] == rows["claude"] == "none (bwrap is not installed (Debian/Ubuntu package: bubblewrap))"
    assert rows["pi"] == "none (sandbox = none)"
    if bwrap_problem():
        return
    rows = {r["agent"]: r["sandbox"] for r in map(json.loads, corral(
        "agents", "--plan", str(plan), "--json", cwd=repo).stdout.splitlines())}
    assert rows["codex"] == "bwrap (network off)" and rows["claude"] == "bwrap (network on)"
    assert rows["pi"] == "none (sandbox = none)"


@needs_bwrap
def test_the_pane_says_sandboxed_and_abort_gives_a_sandboxed_agent_its_grace_period(repo, wt_root):
    # TERM reaches the agent inside the sandbox (same process group), and bwrap, which ignores it,
    # does not KILL the sandbox before the agent's own TERM handler has run
    from corral.core.plan import Plan, TaskSpec
    from corral.core.pipeline import prepare
    from corral.tui.dashboard import CorralApp
    from test_tui_pilot import SIZE, pane_lines, until

    script = "trap 'sleep 0.3; echo cleaned up; exit 3' TERM; while :; do echo tick; sleep 0.05; done"

    async def main() -> None:
        plan = Plan(tasks=[TaskSpec("one", script, "shell")], agent="shell", setup="none", approve="none",
                    worktree_root=str(wt_root), sandbox="bwrap")
        prep = await prepare(plan, repo)
        app = CorralApp(prep=prep, grace=5)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.run_screen is not None and "one" in app.run_screen.panes
                        and any("tick" in line for line in pane_lines(app, "one")), what="the agent's output")
            pane = app.run_screen.panes["one"]
            await until(pilot, lambda: pane.border_subtitle == "shell · sandboxed", what="the pane's subtitle")
            assert app.model.tasks["one"].sandbox == "bwrap (network on)"
            pane.focus()
            await pilot.pause()
            await pilot.press("a")
            await until(pilot, lambda: app.model.tasks["one"].status == "aborted", what="the abort")
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            assert "cleaned up" in pane_lines(app, "one")
            await pilot.press("q")

    anyio.run(main)
    assert corral_state(repo)["worktrees"] == []


@needs_bwrap
@pytest.mark.jj
@pytest.mark.skipif(not has_jj(), reason="jj is not installed")
@pytest.mark.parametrize("colocate", [True, False], ids=["colocated", "plain"])
def test_a_sandboxed_agent_uses_jj_in_its_workspace_and_its_work_lands(tmp_path, wt_root, colocate,
                                                                       monkeypatch):
    from test_jj import file_at, jj, make_jj_repo, state

    monkeypatch.setenv("JJ_USER", "Test Author")
    monkeypatch.setenv("JJ_EMAIL", "author@example.com")
    monkeypatch.delenv("JJ_CONFIG", raising=False)
    repo = make_jj_repo(tmp_path / "repo", colocate)
    script = "echo agent > agent.txt && jj describe -m 'agent: described' && jj new && echo more > more.txt"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", script)], sandbox="bwrap"))
    res = corral("run", str(plan), "--repo", str(repo), "--headless", "--approve", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "one: sandboxed: bwrap (network on)" in res.stdout
    assert file_at(repo, "main", "agent.txt") == "agent\n" and file_at(repo, "main", "more.txt") == "more\n"
    assert "agent: described" in jj(repo, "log", "-r", "::main", "--no-graph", "-T", 'description ++ "\\n"')
    assert state(repo)["workspaces"] == [] and list(wt_root.iterdir()) == []


@needs_bwrap
def test_setup_and_verify_run_in_the_sandbox_verify_writing_only_its_workspace(repo, tmp_path, wt_root):
    readme = (repo / "README.md").read_text()
    setup = f"echo installed > deps.txt || exit 4; echo setup >> {repo}/README.md || exit 5"
    verify = f"echo ok > verified.txt || exit 6; echo verify >> {repo}/README.md || exit 7"
    plan = plan_text(wt_root, [("one", "echo mine > mine.txt")], sandbox="bwrap")
    plan = write_plan(tmp_path / "plan.toml", plan.replace('setup = "none"', f"setup = {json.dumps(setup)}"))
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert "one: failed (setup failed (exit 5)" in res.stdout, res.stdout
    assert f"[one] sh: 1: cannot create {repo}/README.md: Read-only file system" in res.stdout
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo mine > mine.txt")], "--approve", "all",
                   sandbox="bwrap", verify=verify)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "verify failed (exit 7)" in res.stdout, res.stdout
    assert (repo / "README.md").read_text() == readme
    assert "mine.txt" not in git(repo, "ls-tree", "--name-only", "main")


@needs_bwrap
def test_a_programs_agents_write_only_into_their_workspace_or_a_directory_of_its_own(repo, tmp_path):
    own = tmp_path / "scratch"
    own.mkdir()
    prog = tmp_path / "prog.py"
    prog.write_text(f"""
async def run(input, rt):
    ws = await rt.workspaces.create("w")
    try:
        await rt.run_agent({{"agent": "shell", "task": "echo ws > in-ws.txt && echo wrote ws", "cwd": str(ws.path)}})
        await rt.run_agent({{"agent": "shell", "task": "echo x > in-checkout.txt || echo checkout refused",
                            "cwd": {str(repo)!r}}})
        await rt.run_agent({{"agent": "shell", "task": "echo own > own.txt && echo wrote own", "cwd": {str(own)!r}}})
    finally:
        await rt.workspaces.remove(ws)
""")
    res = corral("run", str(prog), "--headless", "--sandbox", "bwrap", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "wrote ws" in res.stdout and "checkout refused" in res.stdout and "wrote own" in res.stdout, res.stdout
    assert not (repo / "in-checkout.txt").exists() and (own / "own.txt").read_text() == "own\n"


def _history(repo: Path) -> list[str]:
    return git(repo, "log", "--format=%H %s", "main").splitlines()


@needs_bwrap
def test_an_agent_cannot_delete_the_repositorys_history(repo, tmp_path, wt_root):
    """The object store is every commit the user made: a sandboxed agent gets one of its own over it
    (the real one read-only inside), so `rm -rf .../objects/*` takes nothing of the user's, and the
    commit it makes afterwards lands."""
    (repo / "later.txt").write_text("a loose object\n")
    git(repo, "add", "later.txt")
    git(repo, "commit", "-qm", "user: later")
    git(repo, "gc", "-q")  # packed history, and a loose commit on top of it
    (repo / "last.txt").write_text("loose\n")
    git(repo, "add", "last.txt")
    git(repo, "commit", "-qm", "user: last")
    before = _history(repo)
    script = ('d=$(git rev-parse --git-common-dir); rm -rf "$d"/objects/* "$d"/objects/*/* "$d"/objects/.. 2>/dev/null; '
              'chmod -R u+w "$d"/objects 2>/dev/null; rm -rf "$d"/objects/real/* 2>/dev/null; '
              'echo one > one.txt && git add one.txt && git commit -qm "agent: one" && echo committed')
    res = run_plan(repo, tmp_path, wt_root, [("one", script), ("two", "echo two > two.txt")], "--approve", "all",
                   sandbox="bwrap")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[one] committed" in res.stdout, res.stdout
    after = _history(repo)
    assert set(before) <= set(after)
    assert "agent: one" in git(repo, "log", "--format=%s", "main")
    assert git(repo, "show", "main:two.txt") == "two"
    assert subprocess.run(["git", "fsck", "--full", "--strict"], cwd=repo, capture_output=True, text=True).returncode == 0
    # the agents' own object stores are gone into the repository's, and not named any more
    assert not list((repo / ".git/corral/objects").glob("*"))
    assert not (repo / ".git/objects/info/alternates").exists()


@needs_bwrap
def test_the_commits_of_an_agent_killed_with_corral_are_kept_by_clean(repo, tmp_path, wt_root):
    """The agent's commits are in its own object store while it runs (an alternate of the
    repository's): when corral is SIGKILLed, its branch still resolves, and `corral clean` moves them
    into the repository's store before it lets the store go."""
    (repo / ".git/objects/info").mkdir(parents=True, exist_ok=True)
    own_line = str(tmp_path / "user-alternate/objects")
    (tmp_path / "user-alternate/objects").mkdir(parents=True)
    (repo / ".git/objects/info/alternates").write_text(own_line + "\n")  # the user's own, kept
    script = "echo one > one.txt && git add one.txt && git commit -qm 'agent: one' && echo started; sleep 300"
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", script)], sandbox="bwrap"))
    def while_killed() -> None:
        lent = list((repo / ".git/corral/objects").iterdir())
        assert len(lent) == 1 and any(lent[0].rglob("*")), lent
        assert git(repo, "log", "--format=%s", "-1", *[f"refs/heads/{b}" for b in corral_state(repo)["branches"]]
                   ) == "agent: one"

    killed_then_cleaned(repo, plan, while_killed)
    branches = corral_state(repo)["branches"]
    assert len(branches) == 1
    assert git(repo, "show", f"{branches[0]}:one.txt") == "one"
    assert not list((repo / ".git/corral/objects").iterdir())
    assert (repo / ".git/objects/info/alternates").read_text() == own_line + "\n"
    assert subprocess.run(["git", "fsck", "--full"], cwd=repo, capture_output=True, text=True).returncode == 0


@needs_bwrap
@pytest.mark.parametrize("when", ["run", "clean"])
def test_an_agent_that_deletes_its_whole_workspace_in_the_sandbox_deletes_none_of_your_files(repo, tmp_path,
                                                                                            wt_root, when):
    """``rm -rf "$CORRAL_WORKSPACE"`` in the sandbox empties the directory but cannot remove it (a
    mount point): that is a workspace deleted, as outside the sandbox, not one whose every file was.
    Its commit lands (or is kept by ``clean`` after a kill); the deletion of every file does not."""
    files = set(git(repo, "ls-tree", "-r", "--name-only", "main").splitlines())
    script = ("echo d > d.txt && git add d.txt && git commit -qm d && cd / && rm -rf \"$CORRAL_WORKSPACE\"; "
              "echo started" + ("; sleep 300" if when == "clean" else ""))
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", script)], sandbox="bwrap"))
    if when == "run":
        res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
        assert res.returncode == 0, res.stdout + res.stderr
        kept = "main"
    else:
        res = killed_then_cleaned(repo, plan)
        [kept] = corral_state(repo)["branches"]
    assert set(git(repo, "ls-tree", "-r", "--name-only", kept).splitlines()) == files | {"d.txt"}, res.stdout
    assert corral_state(repo)["worktrees"] == [] and list(wt_root.iterdir()) == []


@needs_bwrap
def test_a_bwrap_gone_since_the_probe_is_named_when_an_agent_cannot_start(repo, tmp_path, wt_root):
    """bwrap removed after corral found it (a package upgrade during a run): the agent that cannot
    start says bwrap could not start, not its own program (which is there)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    bwrap = bin_dir / "bwrap"
    # the probe's and the first agent's bwrap; gone for the second agent
    bwrap.write_text(f'#!/bin/sh\necho >> "{calls}"\n[ "$(wc -l < "{calls}")" -ge 2 ] && rm -f "$0"\n'
                     f'exec {shutil.which("bwrap")} "$@"\n')
    bwrap.chmod(0o755)
    plan = write_plan(tmp_path / "plan.toml", plan_text(wt_root, [("one", "echo 1 > one.txt"), ("two", "echo 2 > two.txt")],
                                                        sandbox="bwrap", max_parallel=1))
    res = corral("run", str(plan), "--headless", "--approve", "none", cwd=repo,
                 env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert not bwrap.exists(), res.stdout + res.stderr
    assert "one: succeeded" in res.stdout, res.stdout
    assert f"two: failed (could not start {bwrap})" in res.stdout, res.stdout
    assert f"corral: cannot start {bwrap}: No such file or directory" in res.stdout + (
        "".join(p.read_text() for p in (repo / ".git" / "corral" / "runs").glob("*/report.md"))), res.stdout


@needs_bwrap
def test_a_path_to_show_under_dev_is_mounted_over_the_sandboxs_fresh_dev(tmp_path: Path) -> None:
    """The sandbox's ``/dev`` (and ``/proc``) are its own, not the root's read-only view: a
    repository or a home under ``/dev/shm`` (a tmpfs many use for scratch checkouts) still gets a
    mount of its own, and the agent sees its files."""
    from corral.core import sandbox

    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    top = shm / f"corral-test-{uuid.uuid4().hex[:12]}"
    try:
        repo, home, ws = top / "repo", top / "home", tmp_path / "ws"
        (repo / ".git").mkdir(parents=True)
        (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        (repo / "README").write_text("the repository\n")
        home.mkdir()
        (home / ".gitconfig").write_text("[user]\n\tname = someone\n")
        ws.mkdir()
        box = sandbox.Sandbox(bwrap=shutil.which("bwrap") or "bwrap")
        argv = box.wrap(["sh", "-c", f"cat {repo}/README {repo}/.git/HEAD {home}/.gitconfig"], cwd=str(ws),
                        visible=[repo, repo / ".git", home], writable=[ws])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout == "the repository\nref: refs/heads/main\n[user]\n\tname = someone\n", done.stdout
    finally:
        shutil.rmtree(top, ignore_errors=True)
