"""Dependency setup: detection by lock file, and reuse of the base checkout's node_modules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import corral, corral_state, git, make_repo, write_plan
from corral.core.setup import detect, reusable_dependencies, setup_command


@pytest.mark.parametrize("lock,expect", [
    ("package-lock.json", "npm ci"),
    ("requirements.txt", "pip install -q -r requirements.txt"),
    ("Cargo.lock", "cargo fetch"),
    ("uv.lock", "uv sync --frozen"),
])
def test_auto_detects_the_package_manager(tmp_path, lock, expect):
    (tmp_path / lock).write_text("{}")
    command, why = detect(tmp_path)
    program = expect.split()[0]
    if program not in ("pip",) and shutil.which(program) is None:
        assert command is None and f"{program} is not installed" in why
    else:
        assert expect in command and lock in why


def test_setup_values(tmp_path):
    assert setup_command("none", tmp_path)[0] is None
    assert setup_command("auto", tmp_path) == (None, "no lock file found: no setup needed")
    assert setup_command("make deps", tmp_path) == ("make deps", "from the plan")


def _node_project(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo", {
        "package.json": json.dumps({"name": "p", "version": "1.0.0", "dependencies": {"left-pad": "1.3.0"}}),
        "package-lock.json": json.dumps({"name": "p", "lockfileVersion": 3, "packages": {}}),
        ".gitignore": "node_modules/\n",
    })
    pkg = repo / "node_modules" / "left-pad"
    pkg.mkdir(parents=True)
    (pkg / "index.js").write_text("module.exports = 'installed in base';\n")
    return repo


def test_reuse_decision(tmp_path):
    repo = _node_project(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    for f in ("package.json", "package-lock.json"):
        shutil.copy(repo / f, ws / f)
    src, why = reusable_dependencies(repo, ws)
    assert src == repo / "node_modules" and "unchanged" in why
    (ws / "package-lock.json").write_text("{}")
    assert reusable_dependencies(repo, ws)[0] is None
    assert "differs" in reusable_dependencies(repo, ws)[1]
    assert reusable_dependencies(repo, tmp_path / "nothing")[0] is None


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed: auto setup would not pick it")
def test_reuse_deps_copies_node_modules_without_touching_the_original(tmp_path):
    repo = _node_project(tmp_path)
    script = ("cat node_modules/left-pad/index.js > seen.txt; "
              "echo 'changed by agent' > node_modules/left-pad/index.js")
    plan = write_plan(tmp_path / "plan.toml", f"""
        agent = "shell"
        setup = "auto"
        reuse_deps = true
        [[tasks]]
        name = "a"
        prompt = "{script}"
    """)
    res = corral("run", str(plan), "--headless", "--approve", "all", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "copying its node_modules" in res.stdout
    assert (repo / "seen.txt").read_text() == "module.exports = 'installed in base';\n"
    assert (repo / "node_modules/left-pad/index.js").read_text() == "module.exports = 'installed in base';\n"
    assert corral_state(repo)["worktrees"] == []
    assert "node_modules" not in git(repo, "ls-files")
