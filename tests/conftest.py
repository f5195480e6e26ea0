"""Shared fixtures: real git repositories in temp dirs, and the real ``corral`` command as a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never depend on the machine's git identity or config.
os.environ.update({
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    # a supervisor a test started ends soon after its last run and client (the teardown waits for it)
    "CORRAL_SUPERVISOR_IDLE": "0.5",
    # no standby process (core/server/standby.py) outlives a test: tests/test_standby.py turns them on
    "CORRAL_STANDBY": "0",
})

FAKES = Path(__file__).parent / "fakes"


@pytest.fixture(autouse=True, scope="session")
def own_watchdog() -> None:
    """An engine run in this process starts one watchdog for the process's whole life: started
    before any test marks its processes, it is not taken for something a test left running."""
    from corral.core.watchdog import Watchdog

    Watchdog.get()


#: the environment variable that marks every process a test starts (inherited through setsid,
#: double forks and corral's reapers), so what a test leaves running can be found
TEST_MARK = "CORRAL_TEST_MARK"


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test (and every ``corral`` it starts) gets a temp dir of its own under pytest's, so
    workspaces made in the default place and ``corral demo``'s scratch repositories never pile up in
    the system temp dir. The suite leaves nothing behind: a test fails (an error at its teardown)
    when, once it is over, anything is left in that temp dir, any repository under its ``tmp_path``
    still registers a worktree, a jj workspace or a corral workspace record, or a process it started
    still runs (those are killed)."""
    import tempfile

    path = tmp_path_factory.mktemp("tmp")
    mark = uuid.uuid4().hex
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setenv(TEST_MARK, mark)
    # agents of tests write their markers into tmp_path, outside their workspaces: no sandbox unless
    # a test's plan (or --sandbox) asks for one (tests/test_sandbox.py)
    monkeypatch.setenv("CORRAL_SANDBOX", "none")
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    left = [f"process {pid}: {cmd}" for pid, cmd in _stop_marked_processes(mark).items()]
    left += [f"in the temp dir: {p}" for p in sorted(path.iterdir())]
    left += [f"registered: {w}" for w in _registered_workspaces(tmp_path)]
    if left:
        pytest.fail("the test left things behind:\n  " + "\n  ".join(left), pytrace=False)


def _marked_processes(mark: str) -> dict[int, str]:
    """Live (not zombie) processes whose environment carries ``mark``: pid -> command line."""
    needle = f"{TEST_MARK}={mark}".encode()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry.name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                found[int(entry.name)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return found


def _stop_marked_processes(mark: str, wait: float = 15) -> dict[int, str]:
    """The test's processes still running once they had ``wait`` seconds to end (a watchdog
    ends what a SIGKILLed corral left after its grace period); they are killed, so they cannot
    disturb the tests after."""
    deadline = time.monotonic() + wait
    while (left := _marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _registered_workspaces(root: Path) -> list[str]:
    """Worktrees (git), workspaces (jj) and corral workspace records that the repositories under
    ``root`` still register."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        gitdirs = [here / ".git"] if ".git" in dirnames else []
        if "HEAD" in filenames and "objects" in dirnames:  # a bare repository, or jj's backing store
            gitdirs.append(here)
        for gitdir in gitdirs:
            found += [str(p) for p in sorted((gitdir / "worktrees").glob("*"))]
            found += [str(p) for p in sorted((gitdir / "corral" / "workspaces").glob("*.json"))]
        if ".jj" in dirnames and (here / ".jj" / "repo").is_dir():
            found += [str(p) for p in sorted((here / ".jj" / "corral" / "workspaces").glob("*.json"))]
            found += [f"jj workspace {name} of {here}" for name in _jj_workspaces(here) if name != "default"]
        dirnames[:] = [d for d in dirnames if d not in (".git", ".jj", "node_modules")]
    return found


def _jj_workspaces(repo: Path) -> list[str]:
    if shutil.which("jj") is None:
        return []
    res = subprocess.run(["jj", "workspace", "list", "--ignore-working-copy", "--color", "never",
                          "-T", 'name ++ "\\n"', "-R", str(repo)], capture_output=True, text=True)
    return res.stdout.split() if res.returncode == 0 else []


def git(cwd: Path, *args: str, check: bool = True) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {res.stderr}")
    return res.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None, branch: str = "main") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    git(path, "config", "commit.gpgsign", "false")
    files = files or {"README.md": "# project\n", "src/app.py": "VALUE = 1\n"}
    for rel, text in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real git repository on branch main with two files committed."""
    return make_repo(tmp_path / "repo")


@pytest.fixture
def wt_root(tmp_path: Path) -> Path:
    """A private worktree root for the run, so tests can check that nothing is left in it."""
    p = tmp_path / "worktrees"
    p.mkdir()
    return p


def write_plan(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def corral(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real ``corral`` command line in a subprocess."""
    full_env = dict(os.environ)
    full_env.pop("CORRAL_RUN", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "corral.tui.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL,
    )


def corral_state(repo: Path) -> dict:
    """What a run can leave behind: corral branches, extra worktrees, run folders."""
    branches = [b for b in git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/corral/").splitlines() if b]
    worktrees = [l.split(" ", 1)[1] for l in git(repo, "worktree", "list", "--porcelain").splitlines()
                 if l.startswith("worktree ")]
    runs_dir = Path(git(repo, "rev-parse", "--git-common-dir"))
    if not runs_dir.is_absolute():
        runs_dir = repo / runs_dir
    runs_dir = runs_dir / "corral" / "runs"
    runs = sorted(p.name for p in runs_dir.iterdir()) if runs_dir.is_dir() else []
    return {"branches": branches, "worktrees": worktrees[1:], "runs": runs}


def jj_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No machine config, a fixed identity: tests never depend on the user's jj setup."""
    cfg = tmp_path / "jjconfig.toml"
    cfg.write_text("")
    monkeypatch.setenv("JJ_CONFIG", str(cfg))
    monkeypatch.setenv("JJ_USER", "Test Author")
    monkeypatch.setenv("JJ_EMAIL", "author@example.com")


@pytest.fixture
def jj_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plain jj repository (no machine config, a fixed identity)."""
    from test_jj import make_jj_repo

    jj_identity(tmp_path, monkeypatch)
    return make_jj_repo(tmp_path / "repo", False)


def has_jj() -> bool:
    if shutil.which("jj") is None:
        return False
    try:
        return subprocess.run(["jj", "--version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
