"""The git processes a workspace costs: at 200 tasks, each one of them is paid 200 times."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from conftest import git, make_repo


@pytest.fixture
def counted_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``git`` on PATH is the real git, each call (its arguments after the ``-c`` options) logged to
    the returned file."""
    real = shutil.which("git")
    assert real
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "git-calls"
    log.write_text("")
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" | sed "s/-c [^ ]* //g" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{Path(real).parent}")
    return log


def _calls(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line]


def test_a_workspace_costs_one_git_process_to_make_and_none_for_its_worktree_record_to_go(
        tmp_path: Path, counted_git: Path) -> None:
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo")
    root = tmp_path / "wt"
    root.mkdir()

    async def main() -> tuple[list[str], list[str], list[str], bool]:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        counted_git.write_text("")
        ok = await backend.check_ref_name(backend.ref_name("20260101-000000-abcd", "task-1"))
        named = _calls(counted_git)
        ws = await backend.create_workspace("20260101-000000-abcd", "task-1", base, str(root))
        made = _calls(counted_git)[len(named):]
        assert (ws.path / "src" / "app.py").read_text() == "VALUE = 1\n"
        assert backend.registry.get(ws.key).state == "ready"
        counted_git.write_text("")
        await backend.remove_workspace(ws, keep_ref=False)
        gone = _calls(counted_git)
        await backend.close()
        return named, made, gone, ok

    named, made, gone, ok = anyio.run(main)
    assert ok and named == []
    assert len(made) == 1 and made[0].startswith("worktree add"), made
    assert gone == [f"update-ref -d refs/heads/corral/20260101-000000-abcd/task-1"], gone
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo, "branch", "--list", "corral/*") == "" and list(root.iterdir()) == []


@pytest.mark.parametrize("name, ok", [
    ("corral/r/task-1", True), ("corral/r/a.b_c-d", True), ("corral/r/.hidden", False),
    ("corral/r/a..b", False), ("corral/r/x.lock", False), ("corral/r/x.", False), ("corral//x", False),
    ("corral/r/x/", False), ("corral/r/a b", False), ("corral/r/a~1", False), ("corral/r/@{x}", False),
])
def test_branch_names_are_judged_as_git_judges_them(tmp_path: Path, name: str, ok: bool) -> None:
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo")

    async def main() -> bool:
        backend = await GitBackend.open(repo)
        try:
            return await backend.check_ref_name(name)
        finally:
            await backend.close()

    assert anyio.run(main) is ok
    assert subprocess.run(["git", "check-ref-format", f"refs/heads/{name}"]).returncode == (0 if ok else 1)


def test_a_large_checkout_is_made_outside_the_repo_lock(tmp_path: Path, counted_git: Path) -> None:
    """Over SPLIT_CHECKOUT_FILES files, the checkout is a second git process, run outside the repo
    lock so that workspaces are filled in parallel."""
    from corral.core.vcs.git import SPLIT_CHECKOUT_FILES, GitBackend

    repo = make_repo(tmp_path / "repo", {f"d{i % 10}/f{i}.txt": f"{i}\n" for i in range(SPLIT_CHECKOUT_FILES + 1)})
    root = tmp_path / "wt"
    root.mkdir()

    async def main() -> list[str]:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        counted_git.write_text("")
        ws = await backend.create_workspace("20260101-000000-abcd", "big", base, str(root))
        made = _calls(counted_git)
        assert (ws.path / "d3" / "f13.txt").read_text() == "13\n"
        assert backend.registry.get(ws.key).state == "ready"
        await backend.remove_workspace(ws, keep_ref=False)
        await backend.close()
        return made

    made = anyio.run(main)
    assert [c.split()[:3] for c in made] == [["worktree", "add", "-q"], ["reset", "--hard", "-q"]], made
    assert "--no-checkout" in made[0]
    assert list(root.iterdir()) == []


def test_the_end_of_a_run_deletes_its_branches_in_one_transaction(tmp_path: Path, counted_git: Path) -> None:
    """Three tasks merged and landed: their branches and the integration branch go in one
    ``update-ref --stdin``, not one git process each; no ``worktree remove`` is run for them."""
    from test_engine_git import run_plan

    repo = make_repo(tmp_path / "repo")
    wt_root = tmp_path / "wt"
    wt_root.mkdir()
    counted_git.write_text("")
    res = run_plan(repo, tmp_path, wt_root, [(f"t{i}", f"echo {i} > f{i}.txt") for i in range(3)],
                   "--approve", "all")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    calls = _calls(counted_git)
    assert git(repo, "branch", "--list", "corral/*") == "" and list(wt_root.iterdir()) == []
    assert sorted(git(repo, "ls-files", "f*.txt").split()) == ["f0.txt", "f1.txt", "f2.txt"]
    assert [c for c in calls if c.startswith("update-ref --stdin")] == ["update-ref --stdin"]
    assert [c for c in calls if c.startswith(("update-ref -d", "worktree remove", "worktree unlock"))] == []
