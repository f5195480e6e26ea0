"""Shared fixtures: real git repositories in temp dirs, and the real ``corral`` command as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Tests never depend on the machine's git identity or config.
os.environ.update({
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
})

FAKES = Path(__file__).parent / "fakes"


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and every ``corral`` it starts) gets a temp dir of its own under pytest's, so
    workspaces made in the default place and ``corral demo``'s scratch repositories never pile up in
    the system temp dir."""
    import tempfile

    path = tmp_path_factory.mktemp("tmp")
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


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


def has_jj() -> bool:
    if shutil.which("jj") is None:
        return False
    try:
        return subprocess.run(["jj", "--version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
