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
    checkouts = [c for c in made if not c.startswith("config --path --show-scope --get-all core.hooksPath")]
    assert len(checkouts) == 1 and checkouts[0].startswith("checkout -q -f") and len(made) == 2, made  # (the
    # backend's first workspace asks where the user's hooks are beside its checkout: see below)
    assert gone == ["update-ref -d refs/heads/corral/20260101-000000-abcd/task-1"], gone
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


def test_a_large_checkout_is_one_git_process_too(tmp_path: Path, counted_git: Path) -> None:
    """Over SPLIT_CHECKOUT_FILES files, the workspace is still one git process (it only waits for a
    checkout slot)."""
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
    assert [c.split()[:3] for c in made if not c.startswith("config")] == [["checkout", "-q", "-f"]], made
    assert list(root.iterdir()) == []


def test_the_user_hooks_path_is_asked_beside_the_first_checkout(tmp_path: Path, counted_git: Path) -> None:
    """The guard's question (where the user's hooks are) is asked while the first workspace's files
    are checked out, not after: here the checkout's smudge filter waits (up to 20 s) for it to have
    been asked, and says whether it was. The next workspace does not ask it again."""
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo", {".gitattributes": "*.txt filter=wait\n", "a.txt": "a\n"})
    said = tmp_path / "filter-saw"
    git(repo, "config", "filter.wait.clean", "cat")
    git(repo, "config", "filter.wait.smudge",
        f"sh -c 'i=0; until grep -q \"get-all core.hooksPath\" {counted_git} || [ $i -ge 400 ]; do sleep 0.05; "
        f"i=$((i+1)); done; grep -q \"get-all core.hooksPath\" {counted_git} && echo asked >> {said}; cat'")
    git(repo, "config", "core.hooksPath", "my-hooks")
    root = tmp_path / "wt"
    root.mkdir()
    counted_git.write_text("")

    async def main() -> tuple[str | None, list[str]]:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        one = await backend.create_workspace("20260101-000000-abcd", "one", base, str(root))
        two = await backend.create_workspace("20260101-000000-abcd", "two", base, str(root))
        asked = [c for c in _calls(counted_git) if c.startswith("config")]
        for ws in (one, two):
            await backend.remove_workspace(ws, keep_ref=False)
        await backend.close()
        return backend.user_hooks, asked

    hooks, asked = anyio.run(main)
    assert said.read_text().split() == ["asked", "asked"]  # (the second checkout finds it asked already)
    assert hooks == "my-hooks" and len(asked) == 1, asked


def test_workspaces_are_made_at_once_and_one_that_fails_loses_nothing(tmp_path: Path) -> None:
    """Four workspaces made concurrently: each checkout waits (a smudge filter) until all three that
    can be made are checking out at once, so one made after another would never get there. The
    fourth's branch exists already, with a commit: its creation fails, leaving nothing behind and
    that commit where it was; the other three are whole, locked worktrees on their new branches."""
    from corral.core.vcs.base import VcsError
    from corral.core.vcs.git import GitBackend

    run = "20260101-000000-abcd"
    repo = make_repo(tmp_path / "repo", {"README.md": "# project\n", "data.gate": "payload\n",
                                         ".gitattributes": "*.gate filter=gate\n"})
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    gate = tmp_path / "gate-filter"
    gate.write_text("#!/bin/sh\n"
                    f"touch {arrived}/$$\n"
                    "n=0\n"
                    f'while [ "$(ls {arrived} | wc -l)" -lt 3 ]; do\n'
                    "  n=$((n+1)); [ $n -gt 600 ] && exit 1\n"  # 30 s: they were made one at a time
                    "  sleep 0.05\n"
                    "done\n"
                    "exec cat\n")
    gate.chmod(0o755)
    git(repo, "branch", f"corral/{run}/t3", "main")
    git(repo, "checkout", "-q", f"corral/{run}/t3")
    (repo / "work.txt").write_text("work\n")
    git(repo, "add", "work.txt")
    git(repo, "commit", "-qm", "work on t3")
    work = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    git(repo, "config", "filter.gate.smudge", str(gate))
    git(repo, "config", "filter.gate.required", "true")
    root = tmp_path / "wt"
    root.mkdir()

    async def main() -> tuple[dict[str, object], list[str]]:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        made: dict[str, object] = {}

        async def make(task: str) -> None:
            try:
                made[task] = await backend.create_workspace(run, task, base, str(root))
            except VcsError as exc:
                made[task] = exc

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(make, f"t{i}")
        states = [backend.registry.get(ws.key).state for ws in made.values() if not isinstance(ws, Exception)]
        for ws in made.values():
            if not isinstance(ws, Exception):
                await backend.remove_workspace(ws, keep_ref=False)
        await backend.close()
        return made, states

    made, states = anyio.run(main)
    assert isinstance(made["t3"], Exception) and "already exists" in str(made["t3"]), made["t3"]
    assert states == ["ready"] * 3
    for i in range(3):
        ws = made[f"t{i}"]
        assert not isinstance(ws, Exception), ws
        assert ws.ref == f"corral/{run}/t{i}"  # type: ignore[union-attr]
    assert len(list(arrived.iterdir())) == 3
    assert git(repo, "rev-parse", f"corral/{run}/t3") == work  # the work on the branch that was there
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo, "branch", "--list", "corral/*").split() == [f"corral/{run}/t3"]
    assert list(root.iterdir()) == []


def test_a_made_workspace_is_a_locked_worktree_on_its_branch_with_its_files(tmp_path: Path) -> None:
    """What git itself says of a workspace made without ``git worktree add``: listed, locked with
    corral's reason, on its new branch, its files checked out and nothing changed."""
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo")
    root = tmp_path / "wt"
    root.mkdir()

    async def main() -> None:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        ws = await backend.create_workspace("20260101-000000-abcd", "t", base, str(root))
        listing = git(repo, "worktree", "list", "--porcelain")
        assert f"worktree {ws.path.resolve()}\nHEAD {base}\nbranch refs/heads/{ws.ref}\nlocked corral run=" in listing
        assert git(ws.path, "status", "--porcelain") == ""
        assert (ws.path / "src" / "app.py").read_text() == "VALUE = 1\n"
        assert git(ws.path, "rev-parse", "--show-toplevel") == str(ws.path.resolve())
        await backend.remove_workspace(ws, keep_ref=False)
        await backend.close()

    anyio.run(main)
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert list(root.iterdir()) == []


def test_the_end_of_a_run_deletes_its_branches_in_one_transaction(tmp_path: Path, counted_git: Path) -> None:
    """Three tasks merged and landed: their branches and the integration branch go in one
    ``update-ref --stdin``, not one git process each, after one ``for-each-ref`` has said which of
    them exist; no ``worktree remove`` is run for them."""
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
    # which of them exist: one for-each-ref, not a rev-parse per branch; a branch resolved: one
    # for-each-ref, not show-ref and rev-parse
    asked = [c for c in calls if c.startswith(("rev-parse --verify", "show-ref", "for-each-ref"))]
    per_branch = [c for c in asked if "/t0" in c]
    assert len(per_branch) == 1 and per_branch[0].startswith("for-each-ref") and "/t1" in per_branch[0], asked
    assert not [c for c in asked if c.startswith("show-ref")], asked
    # the identity for corral's commits, when none is configured: one question for the tasks that
    # end together, not two each
    assert len([c for c in calls if c.startswith("config") and "user" in c]) == 1, calls



def test_branches_of_tasks_that_made_nothing_go_without_a_question_each(tmp_path: Path, counted_git: Path) -> None:
    """Tasks that changed nothing: their branches, still at the commit they were made from, hold
    nothing of their own; they are deleted at the run's end without a ``rev-list`` each."""
    from test_engine_git import run_plan

    repo = make_repo(tmp_path / "repo")
    wt_root = tmp_path / "wt"
    wt_root.mkdir()
    counted_git.write_text("")
    res = run_plan(repo, tmp_path, wt_root, [(f"t{i}", "echo nothing") for i in range(3)], "--approve", "all")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    calls = _calls(counted_git)
    assert git(repo, "branch", "--list", "corral/*") == "" and list(wt_root.iterdir()) == []
    assert [c for c in calls if c.startswith("rev-list") and "refs/heads/corral/" in c] == [], calls


def test_a_branch_moved_since_it_was_found_empty_is_not_deleted(tmp_path: Path) -> None:
    """The end of a run deletes each branch only while it points where it was looked at: one that
    someone moved meanwhile (a commit of the user's on it) stays, and is reported left; the others
    of the same batch go."""
    from corral.core.vcs.base import Workspace
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    for name in ("corral/r/a", "corral/r/b"):
        git(repo, "branch", name, base)

    async def main() -> list[str]:
        backend = await GitBackend.open(repo)
        tips = await backend.existing_refs(["corral/r/a", "corral/r/b", "corral/r/none"])
        assert tips == {"corral/r/a": base, "corral/r/b": base}
        moved = git(repo, "commit-tree", "-p", base, "-m", "the user's", f"{base}^{{tree}}")
        git(repo, "update-ref", "refs/heads/corral/r/b", moved)
        wss = [Workspace(task=n, path=tmp_path / n, ref=f"corral/r/{n}", name=n, base_commit=base) for n in "ab"]
        left = await backend.drop_works(wss, tips)
        await backend.close()
        return left

    assert anyio.run(main) == ["corral/r/b"]
    assert git(repo, "branch", "--list", "corral/*").split() == ["corral/r/b"]


def test_a_task_put_away_at_its_end_looks_at_its_files_once(tmp_path: Path, counted_git: Path) -> None:
    """A task whose agent exits: its work committed and its workspace removed (max_parallel bounds
    them) in one step, one ``git status`` of its files, not one to commit and another to remove it.
    Its work is on its branch, its workspace gone."""
    from test_engine_git import run_plan

    repo = make_repo(tmp_path / "repo")
    wt_root = tmp_path / "wt"
    wt_root.mkdir()
    counted_git.write_text("")
    res = run_plan(repo, tmp_path, wt_root, [("one", "echo 1 > one.txt")], "--approve", "none")
    assert res.returncode == 0 and "rejected" in res.stdout, res.stdout[-2000:] + res.stderr
    calls = _calls(counted_git)
    assert len([c for c in calls if c.startswith("status --porcelain -z -uall")]) == 1, calls
    branch = git(repo, "branch", "--list", "corral/*", "--format=%(refname:short)")
    assert git(repo, "show", f"{branch}:one.txt") == "1" and list(wt_root.iterdir()) == []
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def _branches(repo: Path, base: str, changes: dict[str, dict[str, str]]) -> dict[str, str]:
    """A branch off ``base`` per name, committing its files; their heads by name."""
    heads = {}
    for name, files in changes.items():
        git(repo, "checkout", "-q", "-b", name, base)
        for rel, text in files.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", name)
        heads[name] = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return heads


def _merged_by_hand(repo: Path, where: Path, base: str, heads: list[tuple[str, str]], strategy: str) -> list[str]:
    """The tree after each merge of ``heads`` (empty: it conflicts, left out), merged one by one with
    ``git merge`` in a worktree of ``base``, as corral merged them before merge-tree."""
    git(repo, "worktree", "add", "-q", "--detach", str(where), base)
    trees = []
    for task, head in heads:
        args = ["merge", "--squash", head] if strategy == "squash" else ["merge", "--no-ff", "-m", task, head]
        if subprocess.run(["git", *args], cwd=where, capture_output=True).returncode:
            git(where, "reset", "-q", "--hard")
            trees.append("")
            continue
        if strategy == "squash" and git(where, "diff", "--cached", "--name-only"):
            git(where, "commit", "-q", "-m", task)
        trees.append(git(where, "rev-parse", "HEAD^{tree}"))
    git(repo, "worktree", "remove", "--force", str(where))
    return trees


@pytest.mark.parametrize("strategy", ["merge", "squash"])
def test_an_integration_is_merged_in_the_object_store_and_checked_out_once(
        tmp_path: Path, counted_git: Path, strategy: str) -> None:
    """Branches merged in order into an integration workspace: the same trees as ``git merge`` one by
    one in a worktree (union merge driver of base's .gitattributes honoured, a conflicting branch left
    out, one already merged adding nothing), but no merge in the worktree: one checkout of the result.
    A conflict handed to a resolver is still left in the checkout."""
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo", {".gitattributes": "CHANGELOG merge=union\n", "CHANGELOG": "start\n",
                                         "src/app.py": "VALUE = 1\n"})
    base = git(repo, "rev-parse", "HEAD")
    heads = _branches(repo, base, {"one": {"CHANGELOG": "start\none\n", "a.txt": "a\n"},
                                   "two": {"CHANGELOG": "start\ntwo\n", "src/app.py": "VALUE = 2\n"},
                                   "clash": {"src/app.py": "VALUE = 3\n"}, "three": {"docs/b.md": "b\n"}})
    order = [("one", heads["one"]), ("two", heads["two"]), ("clash", heads["clash"]), ("again", heads["one"]),
             ("three", heads["three"]), ("old", base)]
    expected = _merged_by_hand(repo, tmp_path / "by-hand", base, order, strategy)
    root = tmp_path / "wt"
    root.mkdir()

    async def main() -> tuple[list[str], list[str], list[str], str, list[str]]:
        backend = await GitBackend.open(repo)
        counted_git.write_text("")
        ws, outcomes = await backend.integrate("20260101-000000-abcd", base, order, strategy, str(root))
        calls = _calls(counted_git)
        trees = [git(repo, "rev-parse", f"{o.commit}^{{tree}}") if o.ok else "" for o in outcomes]
        files = outcomes[2].conflict_files
        checked_out = git(ws.path, "status", "--porcelain") + git(ws.path, "rev-parse", "HEAD^{tree}")
        left = await backend.redo_merge(ws, "clash", heads["clash"], strategy)
        assert "<<<<<<<" in (ws.path / "src/app.py").read_text()
        await backend.undo_merge(ws, outcomes[-1].commit)
        await backend.remove_workspace(ws, keep_ref=False)
        await backend.close()
        return calls, trees, files, checked_out, left

    calls, trees, files, checked_out, left = anyio.run(main)
    assert trees == expected and expected[2] == "" and expected[3] == expected[1]
    assert files == left == ["src/app.py"]
    assert checked_out == expected[-1]  # clean, at the last merge
    assert git(repo, "show", f"{expected[-1]}:CHANGELOG").splitlines() == ["start", "one", "two"]
    assert not [c for c in calls if c.startswith(("merge ", "commit ", "cherry-pick"))], calls
    made = [c for c in calls if c.startswith("checkout -q -f ") and " -b " in c]  # the new workspace
    assert len(made) == 1 and len([c for c in calls if c.startswith(("reset", "checkout", "read-tree"))]) == 2, calls


def test_branches_that_change_gitattributes_merge_by_them_as_before(tmp_path: Path) -> None:
    """A branch that makes CHANGELOG merge by union: the merges after it go by that, as merges in a
    worktree one after the other do."""
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo", {"CHANGELOG": "start\n"})
    base = git(repo, "rev-parse", "HEAD")
    heads = _branches(repo, base, {"attrs": {".gitattributes": "CHANGELOG merge=union\n"},
                                   "one": {"CHANGELOG": "start\none\n"}, "two": {"CHANGELOG": "start\ntwo\n"}})
    order = list(heads.items())
    expected = _merged_by_hand(repo, tmp_path / "by-hand", base, order, "merge")
    root = tmp_path / "wt"
    root.mkdir()

    async def main() -> list[str]:
        backend = await GitBackend.open(repo)
        ws, outcomes = await backend.integrate("20260101-000000-abcd", base, order, "merge", str(root))
        await backend.remove_workspace(ws, keep_ref=False)
        await backend.close()
        return [git(repo, "rev-parse", f"{o.commit}^{{tree}}") if o.ok else "" for o in outcomes]

    assert anyio.run(main) == expected and all(expected)


def test_the_workspace_of_a_path_is_found_as_spelled_or_resolved(tmp_path: Path) -> None:
    """An agent's workspace by the path it starts in: its own path as spelled, a folder in it, the
    same through a symlink (resolved); ``exact``: only the workspace's own directory; else none."""
    from corral.core.vcs.base import Workspace, workspace_of

    dirs = [tmp_path / "wt" / f"w{i}" for i in range(3)]
    for d in dirs:
        (d / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "wt")
    wss = [Workspace(task=f"t{i}", path=d, ref=f"r{i}") for i, d in enumerate(dirs)]
    assert workspace_of(str(dirs[1]), wss) is wss[1]
    assert workspace_of(dirs[2] / "sub", wss) is wss[2]
    assert workspace_of(tmp_path / "link" / "w0" / "sub", wss) is wss[0]
    assert workspace_of(tmp_path / "link" / "w0", wss, exact=True) is wss[0]
    assert workspace_of(dirs[0] / "sub", wss, exact=True) is None
    assert workspace_of(tmp_path, wss) is None


def test_a_finished_tasks_snapshot_costs_four_git_processes_and_its_forecast_none_more(
        tmp_path: Path, counted_git: Path) -> None:
    """At a task's end: one status (which names files in conflict too), add, commit, one diff for
    its files and line counts (HEAD and the branch read from git's files; HEAD on the branch, which
    holds one line of commits: no rev-list to gather them); the forecast then knows the task's files
    without asking git again. A task that changed nothing costs the status alone."""
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo")
    root = tmp_path / "wt"
    root.mkdir()

    async def main() -> tuple[list[str], list[str], list[str], tuple[int, int], object]:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        ws = await backend.create_workspace("20260101-000000-abcd", "t1", base, str(root))
        (ws.path / "new.txt").write_text("one\ntwo\n")
        (ws.path / "src" / "app.py").write_text("VALUE = 2\n")
        await backend.ident_env()
        counted_git.write_text("")
        snap = await backend.snapshot(ws, "corral: t1")
        made = _calls(counted_git)
        counted_git.write_text("")
        forecast = await backend.forecast("main", {"t1": snap.commit}, {"t1": base})
        asked = [c for c in _calls(counted_git) if c.startswith("diff")]
        idle = await backend.create_workspace("20260101-000000-abcd", "t2", base, str(root))
        counted_git.write_text("")
        nothing = await backend.snapshot(idle, "corral: t2")
        assert nothing.commit == base and nothing.files == []
        made += ["--"] + _calls(counted_git)
        for w in (ws, idle):
            await backend.remove_workspace(w, keep_ref=False)
        await backend.close()
        return made, snap.files, asked, (snap.added, snap.removed), forecast

    made, files, asked, counts, forecast = anyio.run(main)
    assert files == ["new.txt", "src/app.py"] and counts == (3, 1)
    assert [c.split()[0] for c in made] == ["status", "add", "commit", "diff", "--", "status"], made
    assert asked == [] and forecast.files["t1"]  # type: ignore[attr-defined] == ["new.txt", "src/app.py"]


@pytest.mark.parametrize("how", ["packed", "detached", "other branch"])
def test_a_snapshot_finds_heads_git_keeps_otherwise(tmp_path: Path, how: str) -> None:
    """HEAD and the branch where reading git's files does not answer (the branch packed, HEAD
    detached or on another branch): the snapshot still gathers the agent's commits onto the task's
    branch (git is asked), its uncommitted work committed too."""
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "other")
    root = tmp_path / "wt"
    root.mkdir()

    async def main() -> tuple[str, str, list[str]]:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        ws = await backend.create_workspace("20260101-000000-abcd", "t1", base, str(root))
        if how == "other branch":
            git(ws.path, "checkout", "-q", "other")
        (ws.path / "a.txt").write_text("a\n")
        git(ws.path, "add", "-A")
        git(ws.path, "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-q", "-m", "agent's")
        made = git(ws.path, "rev-parse", "HEAD")
        if how == "detached":
            git(ws.path, "checkout", "-q", "--detach")
        if how == "packed":
            git(ws.path, "pack-refs", "--all")
            assert not (repo / ".git" / "refs" / "heads" / ws.ref).exists()
        (ws.path / "b.txt").write_text("b\n")
        snap = await backend.snapshot(ws, "corral: t1")
        tip = git(repo, "rev-parse", f"refs/heads/{ws.ref}")
        await backend.remove_workspace(ws, keep_ref=True)
        await backend.close()
        return made, tip, snap.files

    made, tip, files = anyio.run(main)
    assert files == ["a.txt", "b.txt"] and git(repo, "rev-parse", f"{tip}~1") == made
    # corral's own commit moved no branch but the task's (the agent's moved "other")
    assert git(repo, "rev-parse", "other") == (made if how == "other branch" else git(repo, "rev-parse", "main"))


def test_corrals_commits_start_no_maintenance_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gc is off for corral's git commands, and so is the `git maintenance run --auto` process a
    commit starts to look whether it is due (one more process per task)."""
    from corral.core.vcs.git import GitBackend

    repo = make_repo(tmp_path / "repo")
    root = tmp_path / "wt"
    root.mkdir()
    trace = tmp_path / "trace2.json"

    async def main() -> None:
        backend = await GitBackend.open(repo)
        base = await backend.resolve("main")
        ws = await backend.create_workspace("20260101-000000-abcd", "t1", base, str(root))
        (ws.path / "new.txt").write_text("one\n")
        monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))
        await backend.snapshot(ws, "corral: t1")
        monkeypatch.delenv("GIT_TRACE2_EVENT")
        await backend.remove_workspace(ws, keep_ref=False)
        await backend.close()

    anyio.run(main)
    events = trace.read_text()
    assert '"name":"commit"' in events and '"maintenance"' not in events


def test_the_git_backend_imports_no_gitpython() -> None:
    """git runs through subprocess: GitPython's import cost more at each start than most runs spend
    in its command layer, and it ran ``git version`` twice on import."""
    import sys

    res = subprocess.run([sys.executable, "-c", "import sys, corral.core.vcs.git, corral.core.pipeline; "
                          "print(sorted(m for m in sys.modules if m == 'git' or m.startswith('git.')))"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
