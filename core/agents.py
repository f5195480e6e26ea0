"""Agent profiles: how to start an agent CLI non-interactively, and how to read its output.

A profile is a command template (an argv list whose elements may hold placeholders), an output
format (which picks a parser from :mod:`corral.core.parsers`), extra environment variables and an
optional timeout. Each placeholder fills exactly one argv element, so a prompt never reaches a shell
(except for the ``shell`` profile, whose prompt *is* a shell script, by design).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from typing import Any

PLACEHOLDERS = ("prompt", "system_prompt", "task", "workspace", "run")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True)
class Profile:
    """How to run one agent CLI."""

    name: str
    command: tuple[str, ...]
    format: str = "text"
    env: tuple[tuple[str, str], ...] = ()
    timeout: float = 0
    #: argv elements that are dropped together with the next one when it expands to "" (flag + value)
    optional_flags: tuple[str, ...] = ()
    version_args: tuple[str, ...] = ("--version",)
    notes: str = ""

    @property
    def executable(self) -> str:
        return self.command[0]

    def find(self) -> str | None:
        """Full path of the executable, or None when it is not on PATH."""
        return shutil.which(self.executable)

    def argv(self, **values: str) -> list[str]:
        """Fill the placeholders; each fills one element. A flag in ``optional_flags`` whose value is
        empty is dropped together with it (no empty ``--append-system-prompt ""``)."""
        out: list[str] = []
        parts = list(self.command)
        i = 0
        while i < len(parts):
            part = parts[i]
            if part in self.optional_flags and i + 1 < len(parts):
                value = _fill(parts[i + 1], values)
                if value:
                    out += [part, value]
                i += 2
                continue
            out.append(_fill(part, values))
            i += 1
        return out


def _fill(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), template)


BUILTIN: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "shell",
            ("sh", "-c", "{prompt}"),
            notes="The prompt is a shell script run by sh -c in the workspace. For scripts, demos and tests.",
            version_args=(),
        ),
        Profile(
            "claude",
            (
                "claude", "-p", "{prompt}", "--output-format", "stream-json", "--verbose",
                "--permission-mode", "acceptEdits", "--append-system-prompt", "{system_prompt}",
            ),
            format="claude-stream-json",
            optional_flags=("--append-system-prompt",),
            notes="Edits files without asking (acceptEdits); other tools follow your Claude Code settings. "
            "Override command to add --allowedTools or use --permission-mode bypassPermissions.",
        ),
        Profile(
            "codex",
            ("codex", "exec", "--json", "--full-auto", "--skip-git-repo-check", "{prompt}"),
            format="codex-json",
            notes="--full-auto: workspace-write sandbox, no approval prompts. corral commits for it.",
        ),
        Profile(
            "aider",
            (
                "aider", "--message", "{prompt}", "--yes-always", "--no-auto-commits", "--no-stream",
                "--no-pretty", "--no-check-update", "--no-show-release-notes",
            ),
            format="aider",
            env=(("PYTHONUNBUFFERED", "1"),),
            notes="--yes-always answers every question with yes; no auto-commits (corral commits).",
        ),
        Profile(
            "gemini",
            ("gemini", "-p", "{prompt}", "-o", "stream-json", "--approval-mode", "auto_edit"),
            format="gemini-stream-json",
            notes="auto_edit: file edits are approved; use --approval-mode yolo to allow every tool.",
        ),
        Profile(
            "opencode",
            ("opencode", "run", "--format", "json", "{prompt}"),
            format="opencode-json",
            notes="Permission requests are rejected in run mode unless allowed in opencode's config.",
        ),
        Profile(
            "pi",
            ("pi", "--mode", "json", "-p", "{prompt}", "--append-system-prompt", "{system_prompt}"),
            format="pi-json",
            optional_flags=("--append-system-prompt",),
            notes="pi runs its tools without asking in print mode.",
        ),
    ]
}


class ProfileError(ValueError):
    pass


def profile_from_table(name: str, table: dict[str, Any], base: Profile | None) -> Profile:
    """Build a profile from a plan's ``[agents.NAME]`` table, on top of a built-in one if it exists.

    Raises :class:`ProfileError` naming the key that is wrong.
    """
    from .parsers import known_formats

    allowed = {"command", "format", "env", "timeout", "profile"}
    for key in table:
        if key not in allowed:
            raise ProfileError(f"agents.{name}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    if "profile" in table:
        parent = table["profile"]
        if not isinstance(parent, str) or parent not in BUILTIN:
            raise ProfileError(f"agents.{name}.profile: unknown profile {parent!r}")
        base = BUILTIN[parent]
    command = table.get("command", list(base.command) if base else None)
    if command is None:
        raise ProfileError(f"agents.{name}: a new agent needs a command (a list of strings)")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise ProfileError(f"agents.{name}.command: must be a non-empty list of strings")
    if not command[0].strip():
        raise ProfileError(f"agents.{name}.command: the program name is empty")
    fmt = table.get("format", base.format if base else "text")
    if not isinstance(fmt, str) or fmt not in known_formats():
        raise ProfileError(f"agents.{name}.format: unknown format {fmt!r} (known: {', '.join(known_formats())})")
    env = table.get("env", dict(base.env) if base else {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ProfileError(f"agents.{name}.env: must be a table of strings")
    timeout = table.get("timeout", base.timeout if base else 0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ProfileError(f"agents.{name}.timeout: must be a number of seconds >= 0")
    return Profile(
        name=name,
        command=tuple(command),
        format=fmt,
        env=tuple(sorted(env.items())),
        timeout=float(timeout),
        optional_flags=base.optional_flags if base and "command" not in table else (),
        version_args=base.version_args if base else ("--version",),
        notes=base.notes if base else "",
    )
