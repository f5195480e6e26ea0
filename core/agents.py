"""Agent profiles: how to start an agent CLI non-interactively, and how to read its output.

A profile is a command template (an argv list whose elements may hold placeholders), an output
format (which picks a parser from :mod:`corral.core.parsers`), extra environment variables and an
optional timeout. Each placeholder fills exactly one argv element, so a prompt never reaches a shell
(except for the ``shell`` profile, whose prompt *is* a shell script, by design).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sandbox import Policy

PLACEHOLDERS = ("prompt", "system_prompt", "task", "workspace", "run", "session")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True)
class Profile:
    """How to run one agent CLI."""

    name: str
    command: tuple[str, ...]
    format: str = "text"
    env: tuple[tuple[str, str], ...] = ()
    timeout: float = 0
    #: argv elements that are dropped together with the next one when it expands to "" (flag + value).
    #: Any ``-flag`` followed by an element that is exactly ``{system_prompt}`` is treated the same way.
    optional_flags: tuple[str, ...] = ()
    version_args: tuple[str, ...] = ("--version",)
    #: what the agent may do unattended with this command line
    notes: str = ""
    #: how to give it more (or fewer) rights
    change: str = ""
    #: the CLI has no system-prompt flag: the system prompt goes in front of the prompt
    prepend_system_prompt: bool = False
    #: paths the CLI keeps its own state in (git pathspecs from the workspace root, like ``.aider*``):
    #: new files there are never committed with the agent's work; files the repository tracks still are
    exclude: tuple[str, ...] = ()
    #: the newest version of the CLI this profile was checked against (its output recorded in tests/fakes)
    tested: str = ""
    #: ``sandbox`` and ``network`` for every task of this agent (None: the plan's)
    sandbox: str | None = None
    network: bool | None = None
    #: where the CLI keeps its own state and caches, writable in corral's sandbox (``~``, ``$VAR``,
    #: wildcards; a trailing ``/``: a directory made when missing). See :func:`.sandbox.state_paths`.
    state: tuple[str, ...] = ()
    #: the command inside corral's sandbox, for CLIs that sandbox themselves (empty: ``command``)
    sandboxed_command: tuple[str, ...] = ()
    #: how to send a follow-up message into the agent's own session (``{session}``: the session id
    #: its output reported; ``{prompt}``: the message). Empty: the CLI cannot resume, and a follow-up
    #: starts a new session (``command``) with the previous turn's final text as context
    resume: tuple[str, ...] = ()
    #: ``resume`` inside corral's sandbox (empty: ``resume``)
    sandboxed_resume: tuple[str, ...] = ()

    def in_sandbox(self) -> "Profile":
        """The profile as it runs inside corral's sandbox: with its own sandbox off, where it has one
        (corral's contains it; Codex's own refuses writes into a workspace under the temp dir)."""
        if not self.sandboxed_command:
            return self
        return replace(self, command=self.sandboxed_command, resume=self.sandboxed_resume or self.resume)

    @property
    def resumes(self) -> bool:
        """Whether a follow-up continues the agent's own session (else: a new one, given context)."""
        return bool(self.resume)

    def resume_line(self) -> str:
        """How a follow-up reaches the agent, for people (``corral agents``)."""
        if not self.resume:
            return "cannot resume its session: a follow-up starts a new session with the previous turn's final text"
        return self._line(self.resume)

    @property
    def executable(self) -> str:
        return self.command[0]

    def find(self, path: str | None = None) -> str | None:
        """Full path of the executable, or None when it is not on ``path`` (default: PATH)."""
        return shutil.which(self.executable, path=path)

    def command_line(self) -> str:
        """The command template for people: optional flag pairs in brackets."""
        return self._line(self.command)

    def _line(self, parts: tuple[str, ...]) -> str:
        out: list[str] = []
        i = 0
        while i < len(parts):
            if i + 1 < len(parts) and self._optional(parts[i], parts[i + 1]):
                out.append(f"[{_quote(parts[i])} {_quote(parts[i + 1])}]")
                i += 2
                continue
            out.append(_quote(parts[i]))
            i += 1
        return " ".join(out)

    def _optional(self, flag: str, value: str) -> bool:
        if flag in self.optional_flags:
            return True
        # the system prompt is the one placeholder that may be empty: "--system {system_prompt}" is optional
        return flag.startswith("-") and flag != "--" and value == "{system_prompt}"

    def argv(self, **values: str) -> list[str]:
        """Fill the placeholders; each fills one element. A flag whose value is ``{system_prompt}`` is
        dropped together with it when there is no system prompt (no empty ``--append-system-prompt ""``).
        With :attr:`prepend_system_prompt`, the system prompt goes in front of the prompt instead."""
        values = dict(values)
        if self.prepend_system_prompt and values.get("system_prompt", "").strip():
            values["prompt"] = f"{values['system_prompt'].strip()}\n\n{values.get('prompt', '')}"
            values["system_prompt"] = ""
        return self._expand(self.command, values)

    def resume_argv(self, **values: str) -> list[str]:
        """:attr:`resume` filled: a follow-up ``prompt`` into the session ``session``."""
        return self._expand(self.resume, values)

    def _expand(self, parts: tuple[str, ...], values: dict[str, str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(parts):
            part = parts[i]
            if i + 1 < len(parts) and self._optional(part, parts[i + 1]):
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


def _quote(part: str) -> str:
    import shlex

    if _PLACEHOLDER_RE.search(part) and not any(ch.isspace() for ch in part):
        return part
    return shlex.quote(part)


BUILTIN: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "shell",
            ("sh", "-c", "{prompt}"),
            resume=("sh", "-c", "{prompt}"),  # a follow-up is another script, in the same workspace
            notes="The prompt is a shell script run by sh -c in the workspace, with your rights. "
            "For scripts, demos and tests.",
            change="It can do whatever the script does; there is nothing to grant.",
            version_args=(),
        ),
        Profile(
            "claude",
            (
                "claude", "-p", "--output-format", "stream-json", "--verbose",
                "--permission-mode", "acceptEdits", "--append-system-prompt", "{system_prompt}", "--", "{prompt}",
            ),
            resume=("claude", "-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "acceptEdits",
                    "--resume", "{session}", "--", "{prompt}"),
            format="claude-stream-json",
            tested="2.1.197",
            state=("~/.claude/", "~/.claude.json", "~/.claude.json.backup", "$CLAUDE_CONFIG_DIR/"),
            notes="Reads and edits files in its workspace without asking (--permission-mode acceptEdits). "
            "Shell commands and other tools that your Claude Code settings do not allow are denied "
            "(never asked: -p mode does not prompt); denials are shown in the pane.",
            change="Override [agents.claude] command: add --allowedTools \"Bash(npm test:*),Bash(git diff:*)\" to "
            "allow some commands, or use --permission-mode bypassPermissions to allow everything "
            "(refused as root unless IS_SANDBOX=1).",
        ),
        Profile(
            "codex",
            ("codex", "exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", "--", "{prompt}"),
            format="codex-json",
            # exec's options go before its subcommand: `codex exec [OPTIONS] resume <ID> <PROMPT>`
            resume=("codex", "exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", "resume",
                    "{session}", "--", "{prompt}"),
            sandboxed_resume=("codex", "exec", "--json", "--sandbox", "danger-full-access", "--skip-git-repo-check",
                              "resume", "{session}", "--", "{prompt}"),
            prepend_system_prompt=True,
            tested="0.171.0",
            state=("~/.codex/", "$CODEX_HOME/"),
            # Codex sandboxes itself with bubblewrap or landlock; inside corral's sandbox its own is off
            sandboxed_command=("codex", "exec", "--json", "--sandbox", "danger-full-access", "--skip-git-repo-check",
                               "--", "{prompt}"),
            notes="codex exec never asks for approval. --sandbox workspace-write: it may edit files in its "
            "workspace and run commands there, without network access; writes outside are blocked. In corral's "
            "sandbox it runs with --sandbox danger-full-access instead (corral's sandbox contains it).",
            change="Override [agents.codex] command: --sandbox read-only to forbid edits, --sandbox "
            "danger-full-access (or --dangerously-bypass-approvals-and-sandbox) to lift the sandbox.",
        ),
        Profile(
            "aider",
            (
                "aider", "--message={prompt}", "--yes-always", "--no-auto-commits", "--no-dirty-commits",
                "--no-gitignore", "--no-stream", "--no-pretty", "--no-fancy-input", "--no-check-update",
                "--no-show-release-notes", "--no-analytics", "--chat-history-file=/dev/null",
                "--input-history-file=/dev/null",
            ),
            format="aider",
            # a wide terminal: aider wraps its text at COLUMNS (80 on a pipe), which breaks lines mid-sentence
            env=(("COLUMNS", "10000"), ("PYTHONUNBUFFERED", "1")),
            prepend_system_prompt=True,
            exclude=(".aider*",),  # its repo-map cache (.aider.tags.cache.v4/, binary) and history files
            tested="0.86.2",
            state=("~/.aider/", "~/.aider*"),
            notes="--yes-always answers yes to every question: it edits files, creates the files it "
            "mentions and runs the shell commands it suggests. It never commits (corral commits).",
            change="Override [agents.aider] command: drop --yes-always to make it refuse whatever needs a "
            "confirmation (stdin is closed), add --no-suggest-shell-commands to keep it from running commands.",
        ),
        Profile(
            "gemini",
            ("gemini", "--output-format", "stream-json", "--approval-mode", "auto_edit", "--prompt={prompt}"),
            resume=("gemini", "--output-format", "stream-json", "--approval-mode", "auto_edit", "--resume", "{session}",
                    "--prompt={prompt}"),
            format="gemini-stream-json",
            # folder trust is on by default and a fresh workspace is untrusted: headless, Gemini CLI exits 55
            # (and drops auto_edit to default without a word). Older versions ignore the variable.
            env=(("GEMINI_CLI_TRUST_WORKSPACE", "true"),),
            prepend_system_prompt=True,
            tested="0.61.0",
            state=("~/.gemini/",),
            notes="--approval-mode auto_edit: file edits are approved; tools that would need a confirmation "
            "(shell commands) are not available in headless mode.",
            change="Override [agents.gemini] command: --approval-mode yolo allows every tool (shell "
            "included), --approval-mode default allows only read-only tools; or list tools in "
            "--allowed-tools.",
        ),
        Profile(
            "opencode",
            # --dir: opencode takes its directory from $PWD before the real cwd; say it twice
            ("opencode", "run", "--format", "json", "--dir", "{workspace}", "--", "{prompt}"),
            resume=("opencode", "run", "--format", "json", "--dir", "{workspace}", "--session", "{session}", "--",
                    "{prompt}"),
            format="opencode-json",
            prepend_system_prompt=True,
            tested="1.18.33",
            state=("~/.config/opencode/", "~/.local/share/opencode/", "~/.local/state/opencode/"),
            notes="Tools follow opencode's permission config (by default edits and commands are allowed); "
            "anything configured as \"ask\" is rejected in run mode, and the rejections are shown.",
            change="Set \"permission\" in opencode.json (allow/ask/deny per tool), or add --auto to the "
            "command to approve every request that is not denied.",
        ),
        Profile(
            "pi",
            ("pi", "--mode", "json", "-p", "--append-system-prompt", "{system_prompt}", "{prompt}"),
            # pi keeps its sessions per working directory: --continue picks up the workspace's own
            resume=("pi", "--mode", "json", "-p", "--continue", "{prompt}"),
            format="pi-json",
            tested="0.73.1",
            state=("~/.pi/", "$PI_CODING_AGENT_DIR/"),
            notes="pi has no permission prompts: its tools (read, bash, edit, write) run without asking. "
            "A prompt that starts with '-' or '@' is taken by pi as a flag or a file.",
            change="Override [agents.pi] command: --tools read,grep,find,ls for a read-only agent, or "
            "--tools read,edit,write to forbid shell commands.",
        ),
    ]
}


class ProfileError(ValueError):
    pass


#: a path in a profile's ``exclude``: relative, plain characters (it becomes a git pathspec and a jj glob)
_EXCLUDE_RE = re.compile(r"[A-Za-z0-9._*?-][A-Za-z0-9._*?/-]*")


def profile_from_table(name: str, table: dict[str, Any], base: Profile | None) -> Profile:
    """Build a profile from a plan's ``[agents.NAME]`` table, on top of a built-in one if it exists.

    Raises :class:`ProfileError` naming the key that is wrong.
    """
    from .parsers import known_formats

    from .sandbox import MODES

    allowed = {"command", "format", "env", "timeout", "profile", "exclude", "sandbox", "network", "resume"}
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
    # a command of one's own: the base's way of resuming may not fit it (a new session with context)
    resume = table.get("resume", list(base.resume) if base and "command" not in table else [])
    if not isinstance(resume, list) or not all(isinstance(c, str) for c in resume):
        raise ProfileError(f"agents.{name}.resume: must be a list of strings ([] when the agent cannot resume)")
    exclude = table.get("exclude", list(base.exclude) if base else [])
    if not isinstance(exclude, list) or not all(isinstance(x, str) and _EXCLUDE_RE.fullmatch(x) and ".." not in x
                                                for x in exclude):
        raise ProfileError(f"agents.{name}.exclude: must be a list of paths from the workspace root "
                           "(letters, digits, '.', '_', '-', '/' and the wildcards '*', '?')")
    sandbox = table.get("sandbox", base.sandbox if base else None)
    if sandbox is not None and sandbox not in MODES:
        raise ProfileError(f"agents.{name}.sandbox: must be one of {', '.join(MODES)}, not {sandbox!r}")
    network = table.get("network", base.network if base else None)
    if network is not None and not isinstance(network, bool):
        raise ProfileError(f"agents.{name}.network: must be true or false")
    return Profile(
        name=name,
        command=tuple(command),
        format=fmt,
        env=tuple(sorted(env.items())),
        timeout=float(timeout),
        optional_flags=base.optional_flags if base else (),
        version_args=base.version_args if base else ("--version",),
        notes=base.notes if base and "command" not in table else "",
        change=base.change if base and "command" not in table else "",
        prepend_system_prompt=bool(base and base.prepend_system_prompt
                                   and not any("{system_prompt}" in c for c in command)),
        exclude=tuple(exclude),
        tested=base.tested if base else "",
        sandbox=sandbox,
        network=network,
        state=base.state if base else (),
        sandboxed_command=base.sandboxed_command if base and "command" not in table else (),
        resume=tuple(resume),
        sandboxed_resume=base.sandboxed_resume if base and "command" not in table and "resume" not in table else (),
    )


_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def newer_than(version_line: str, tested: str) -> bool:
    """Whether the first version number in ``version_line`` (``codex-cli 0.172.0``) is newer than
    ``tested``; False when there is none to compare."""
    found, base = _VERSION_RE.search(version_line), _VERSION_RE.search(tested)
    if not found or not base:
        return False
    return tuple(int(x or 0) for x in found.groups()) > tuple(int(x or 0) for x in base.groups())


async def inspect_profiles(profiles: dict[str, Profile], cwd: str, builtin: dict[str, Profile] | None = None,
                           version_timeout: float = 8, sandbox: "Policy | None" = None) -> list[dict[str, Any]]:
    """For ``corral agents``: each profile with its command line, where its program is, its version
    (``PROGRAM --version``, run concurrently, each in its own process group), the version it was
    tested with and whether the installed one is newer; with ``sandbox``, how its tasks would run."""
    import anyio

    from .procs import run_captured

    builtin = BUILTIN if builtin is None else builtin
    rows: list[dict[str, Any]] = []
    for name, p in profiles.items():
        origin = "built-in" if builtin.get(name) == p else ("plan (overrides built-in)" if name in builtin else "plan")
        rows.append({
            "agent": name, "origin": origin, "command": p.command_line(), "argv": list(p.command),
            "format": p.format, "timeout": p.timeout or None, "path": p.find(), "version": None,
            "tested": p.tested or None, "newer": False, "unattended": p.notes, "change": p.change,
            "sandbox": sandbox.resolve("", p).describe() if sandbox else None,
            "resume": p.resume_line(), "resumes": p.resumes,
        })

    async def version(row: dict[str, Any], p: Profile) -> None:
        if not p.version_args or not row["path"]:
            return
        code, out = None, ""
        with anyio.move_on_after(version_timeout + 2):
            code, out = await run_captured([row["path"], *p.version_args], cwd=cwd, timeout=version_timeout)
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        row["version"] = lines[0][:60] if lines and code == 0 else (f"? (exit {code})" if code is not None
                                                                      else "? (timed out)")
        row["newer"] = bool(p.tested and code == 0 and newer_than(row["version"], p.tested))

    async with anyio.create_task_group() as tg:
        for row, p in zip(rows, profiles.values()):
            tg.start_soon(version, row, p)
    return rows
