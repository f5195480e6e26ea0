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
