"""Dependency setup in a fresh workspace: ``auto`` detects the package manager by its lock file."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

#: (lock file, program that must exist, shell command), first match wins
DETECTORS: list[tuple[str, str, str]] = [
    ("bun.lockb", "bun", "bun install --frozen-lockfile"),
    ("bun.lock", "bun", "bun install --frozen-lockfile"),
    ("pnpm-lock.yaml", "pnpm", "pnpm install --frozen-lockfile"),
    ("yarn.lock", "yarn", "yarn install --frozen-lockfile"),
    ("package-lock.json", "npm", "npm ci --no-audit --no-fund"),
    ("uv.lock", "uv", "uv sync --frozen"),
    ("poetry.lock", "poetry", "poetry install --no-interaction"),
    ("requirements.txt", "", "{python} -m venv .venv && .venv/bin/python -m pip install -q -r requirements.txt"),
    ("Cargo.lock", "cargo", "cargo fetch"),
    ("go.sum", "go", "go mod download"),
]


def detect(path: Path) -> tuple[str | None, str]:
    """The setup command for the project at ``path`` and a one-line note on why (or why none)."""
    for lock, program, command in DETECTORS:
        if (path / lock).is_file():
            if program and shutil.which(program) is None:
                return None, f"found {lock} but {program} is not installed: no setup"
            return command.format(python=sys.executable), f"found {lock}"
    return None, "no lock file found: no setup needed"


def setup_command(setting: str, path: Path) -> tuple[str | None, str]:
    """Resolve a plan's ``setup`` value (auto | none | a shell command) for one workspace."""
    if setting == "none" or not setting.strip():
        return None, "setup = none"
    if setting == "auto":
        return detect(path)
    return setting, "from the plan"


#: Lock files of Node package managers, whose installed tree (node_modules) can be copied.
NODE_LOCKS = ("bun.lockb", "bun.lock", "pnpm-lock.yaml", "yarn.lock", "package-lock.json")


def reusable_dependencies(checkout: Path, ws: Path) -> tuple[Path | None, str]:
    """The base checkout's installed ``node_modules``, when a workspace may start from a copy of it:
    same lock file and same package.json, byte for byte. Python environments are never reused (a
    virtualenv holds absolute paths to itself, so a copy would install into the original)."""
    for lock in NODE_LOCKS:
        mine = ws / lock
        if not mine.is_file():
            continue
        theirs = checkout / lock
        if not theirs.is_file() or theirs.read_bytes() != mine.read_bytes():
            return None, f"{lock} differs from the one in {checkout}: fresh install"
        for extra in ("package.json",):
            if (ws / extra).is_file() and (not (checkout / extra).is_file()
                                           or (checkout / extra).read_bytes() != (ws / extra).read_bytes()):
                return None, f"{extra} differs from the one in {checkout}: fresh install"
        if not (checkout / "node_modules").is_dir():
            return None, f"{checkout} has no node_modules to reuse: fresh install"
        return checkout / "node_modules", f"{lock} unchanged from {checkout}: copying its node_modules"
    return None, "no Node lock file: nothing to reuse"


def copy_command(src: Path, dst: Path) -> list[str]:
    """argv of a copy-on-write copy where the filesystem supports it (btrfs, xfs), a plain copy
    otherwise; never hard links, so an install in the workspace cannot change the original."""
    return ["cp", "-a", "--reflink=auto", str(src), str(dst)]
