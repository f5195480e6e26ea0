"""Plan files (TOML) and ad-hoc task lists: parsing and validation.

Everything wrong with a plan is reported as one :class:`PlanError` whose message names the file, the
key (and line, where it can be found) and what is wrong. Parsing never touches the repository.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .agents import BUILTIN, Profile, ProfileError, profile_from_table
from .sandbox import MODES

NAME_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,39}\Z")
ENUMS = {
    "vcs": ("auto", "git", "jj"),
    "merge": ("merge", "squash", "rebase"),
    "approve": ("ask", "all", "none"),
    "sandbox": MODES,
    "on_verify_fail": ("bisect", "stop"),
    "resolve": ("ask", "agent", "none"),
}
TOP_KEYS = {
    "base", "vcs", "worktree_root", "max_parallel", "agent", "setup", "verify", "merge", "approve",
    "timeout", "tasks", "agents", "reuse_deps", "notify", "sandbox", "network", "on_verify_fail", "resolve",
    "resolver",
}
TASK_KEYS = {"name", "prompt", "system_prompt", "agent", "setup", "timeout", "sandbox", "network"}


class PlanError(ValueError):
    """A plan (or an ad-hoc task list) is not usable. The message is one line for the user."""


@dataclass
class TaskSpec:
    name: str
    prompt: str
    agent: str
    system_prompt: str = ""
    setup: str | None = None  # None: the plan's setup
    timeout: float | None = None  # None: the agent's or the plan's
    sandbox: str | None = None  # None: the agent's or the plan's
    network: bool | None = None  # None: the agent's or the plan's


@dataclass
class Plan:
    tasks: list[TaskSpec]
    base: str | None = None
    vcs: str = "auto"
    worktree_root: str = ""
    max_parallel: int = 0
    agent: str = "claude"
    setup: str = "auto"
    verify: str = ""
    merge: str = "merge"
    approve: str = "ask"
    timeout: float = 0
    #: verify failed on the merge of several tasks: find the largest set that passes ("bisect"), or
    #: land nothing ("stop")
    on_verify_fail: str = "bisect"
    #: a conflict while merging: an agent resolves it ("agent"), the person is asked ("ask"; with
    #: nobody to ask, as "none"), or the task is left out ("none")
    resolve: str = "ask"
    #: the agent profile that resolves conflicts ("": the plan's agent)
    resolver: str = ""
    #: with setup = "auto": copy the base checkout's node_modules when the lock file is unchanged
    reuse_deps: bool = False
    #: run with an event as JSON on stdin when the run needs a decision, fails or is done
    notify: list[str] = field(default_factory=list)
    #: agents, setup and verify in bubblewrap: auto | bwrap | none (see core/sandbox.py); None: not set
    #: (``$CORRAL_SANDBOX``, else auto)
    sandbox: str | None = None
    network: bool = True
    agents: dict[str, Profile] = field(default_factory=lambda: dict(BUILTIN))
    #: the plan's ``[agents.NAME]`` tables as written: stored with the run (``plan.json``), so that a
    #: run carried on later rebuilds the same profiles whatever became of the plan file
    agent_tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "--task"

    def profile(self, task: TaskSpec) -> Profile:
        return self.agents[task.agent]

    def task_timeout(self, task: TaskSpec) -> float:
        if task.timeout is not None:
            return task.timeout
        return self.profile(task).timeout or self.timeout

    def task_setup(self, task: TaskSpec) -> str:
        return task.setup if task.setup is not None else self.setup

    def command_line_problem(self, task: TaskSpec, run: str, root: str | None) -> str | None:
        """Why the agent of ``task`` could not be started (:func:`argv_problem`), or None: its command
        line as the runtime builds it, in a workspace path as long as the one it will get."""
        profile = self.profile(task)
        workspace = str(Path(root or tempfile.gettempdir()) / f"corral-{task.name}-xxxxxxxx")  # mkdtemp's length
        argv = profile.argv(prompt=task.prompt, system_prompt=task.system_prompt, task=task.name,
                            workspace=workspace, run=run)
        env = {**os.environ, **dict(profile.env), "CORRAL_RUN": run, "CORRAL_TASK": task.name,
               "CORRAL_WORKSPACE": workspace}
        return argv_problem(argv, env)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "base": self.base,
            "vcs": self.vcs,
            "worktree_root": self.worktree_root,
            "max_parallel": self.max_parallel,
            "agent": self.agent,
            "setup": self.setup,
            "verify": self.verify,
            "merge": self.merge,
            "approve": self.approve,
            "timeout": self.timeout,
            "on_verify_fail": self.on_verify_fail,
            "resolve": self.resolve,
            "resolver": self.resolver,
            "agents": self.agent_tables,
            "reuse_deps": self.reuse_deps,
            "notify": self.notify,
            "sandbox": self.sandbox,
            "network": self.network,
            "tasks": [
                {
                    "name": t.name,
                    "prompt": t.prompt,
                    "system_prompt": t.system_prompt,
                    "agent": t.agent,
                    "setup": t.setup,
                    "timeout": t.timeout,
                    "sandbox": t.sandbox,
                    "network": t.network,
                }
                for t in self.tasks
            ],
        }


#: exec's limit on one argument on Linux (MAX_ARG_STRLEN: 32 pages, 128 KiB), its final NUL included
MAX_ARG_STRLEN = 32 * os.sysconf("SC_PAGESIZE") if sys.platform.startswith("linux") else 0


def argv_problem(argv: list[str], env: Mapping[str, str]) -> str | None:
    """Why exec would refuse ``argv`` with ``env`` ("Argument list too long"), or None. Linux takes
    at most 128 KiB in one argument (and a prompt is one argument), and everywhere the arguments and
    the environment together, with a pointer to each, must fit in ARG_MAX (on Linux a quarter of the
    stack limit, usually 2 MiB), less the 2048 bytes POSIX asks to leave spare."""
    sizes = [_size(arg) + 1 for arg in argv]
    longest = max(sizes, default=0)
    if MAX_ARG_STRLEN and longest > MAX_ARG_STRLEN:
        return (f"one argument of {argv[0]} is {longest - 1:,} bytes long; Linux passes at most "
                f"{MAX_ARG_STRLEN - 1:,} bytes in one argument")
    total = sum(sizes) + sum(_size(k) + _size(v) + 2 for k, v in env.items()) + 8 * (len(argv) + len(env) + 2)
    limit = os.sysconf("SC_ARG_MAX") - 2048
    if total > limit:
        return (f"the arguments and environment of {argv[0]} take {total:,} bytes; this system passes at "
                f"most {limit:,}")
    return None


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def task_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a task name, or None when it can."""
    if not isinstance(name, str):
        return "must be a string"
    if not name:
        return "is empty"
    if len(name) > 40:
        return f"is {len(name)} characters long (at most 40)"
    if not NAME_RE.match(name):
        if name[0] in "-.":
            return f"{name!r} must not start with {name[0]!r}"
        return f"{name!r} may only hold letters, digits, '.', '_' and '-'"
    if ".." in name:
        return f"{name!r} must not contain '..'"
    if name.endswith(".lock") or name.endswith("."):
        return f"{name!r} must not end with '.lock' or '.'"
    return None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'agent'?)`` when ``word`` is a near miss of one of ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _line_of(text: str, key: str, occurrence: int = 0) -> int | None:
    """Best-effort line number of ``key = `` in TOML text (tomllib gives none for semantic errors)."""
    pattern = re.compile(r"^\s*" + re.escape(key) + r"\s*=", re.MULTILINE)
    matches = list(pattern.finditer(text))
    if len(matches) > occurrence:
        return text.count("\n", 0, matches[occurrence].start()) + 1
    if matches:
        return text.count("\n", 0, matches[-1].start()) + 1
    return None


class _Checker:
    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text

    def fail(self, key: str, problem: str, line_key: str | None = None, occurrence: int = 0) -> PlanError:
        line = _line_of(self.text, line_key or key.split(".")[-1].split("[")[0], occurrence) if self.text else None
        where = f" (line {line})" if line else ""
        return PlanError(f"{self.source}: {key}: {problem}{where}")

    def string(self, data: dict[str, Any], key: str, label: str, default: str | None) -> str | None:
        if key not in data:
            return default
        value = data[key]
        if not isinstance(value, str):
            raise self.fail(label, f"must be a string, not {type(value).__name__}", key)
        return value

    def boolean(self, data: dict[str, Any], key: str, label: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(label, "must be true or false", key)
        return value

    def number(self, data: dict[str, Any], key: str, label: str, default: float, integer: bool) -> float:
        if key not in data:
            return default
        value: float = data[key]
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            kind = "an integer" if integer else "a number"
            raise self.fail(label, f"must be {kind}, not {type(value).__name__}", key)
        if value < 0:
            raise self.fail(label, f"must be >= 0, not {value}", key)
        return value


def parse_plan_text(text: str, source: str = "plan") -> Plan:
    """Parse and validate a plan; raise :class:`PlanError` on the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise PlanError(f"{source}: not valid TOML: values nested too deeply") from None
    return plan_from_dict(data, source, text)


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file") from None
    except IsADirectoryError:
        raise PlanError(f"{path}: is a directory, not a plan file") from None
    except OSError as exc:
        raise PlanError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not UTF-8 text") from None
    return parse_plan_text(text, str(path))


def plan_from_dict(data: dict[str, Any], source: str, text: str = "") -> Plan:
    c = _Checker(source, text)
    for key in data:
        if key not in TOP_KEYS:
            raise c.fail(key, f"unknown key{did_you_mean(key, TOP_KEYS)} (allowed: {', '.join(sorted(TOP_KEYS))})", key)

    plan = Plan(tasks=[], source=source)
    plan.base = c.string(data, "base", "base", None)
    if plan.base is not None and not plan.base.strip():
        raise c.fail("base", "is empty (leave it out to use the current branch)")
    for key in ("vcs", "merge", "approve", "sandbox", "on_verify_fail", "resolve"):
        if key == "sandbox" and key not in data:
            continue
        value = c.string(data, key, key, getattr(plan, key))
        if value not in ENUMS[key]:
            raise c.fail(key, f"must be one of {', '.join(ENUMS[key])}, not {value!r}")
        setattr(plan, key, value)
    plan.worktree_root = c.string(data, "worktree_root", "worktree_root", "") or ""
    plan.agent = c.string(data, "agent", "agent", plan.agent) or ""
    plan.setup = c.string(data, "setup", "setup", plan.setup) or "none"
    plan.verify = c.string(data, "verify", "verify", "") or ""
    plan.max_parallel = int(c.number(data, "max_parallel", "max_parallel", 0, integer=True))
    plan.timeout = float(c.number(data, "timeout", "timeout", 0, integer=False))
    if "notify" in data:
        plan.notify = _command(c, data["notify"], "notify")
    plan.reuse_deps = c.boolean(data, "reuse_deps", "reuse_deps", plan.reuse_deps)
    plan.network = c.boolean(data, "network", "network", plan.network)

    agents = data.get("agents", {})
    if not isinstance(agents, dict):
        raise c.fail("agents", "must be a table of [agents.NAME] tables")
    for name, table in agents.items():
        problem = task_name_problem(name)
        if problem:
            raise c.fail(f"agents.{name}", f"bad agent name: {problem}", "command")
        if not isinstance(table, dict):
            raise c.fail(f"agents.{name}", "must be a table")
        try:
            plan.agents[name] = profile_from_table(name, table, BUILTIN.get(name))
            plan.agent_tables[name] = table
        except ProfileError as exc:
            raise PlanError(f"{source}: {exc}") from None

    if "agent" in data and plan.agent not in plan.agents:
        raise c.fail("agent", _unknown_agent(plan.agent, plan.agents), "agent")
    plan.resolver = c.string(data, "resolver", "resolver", "") or ""
    if "resolver" in data and plan.resolver not in plan.agents:
        raise c.fail("resolver", _unknown_agent(plan.resolver, plan.agents), "resolver")
    tasks = data.get("tasks")
    if tasks is None:
        raise c.fail("tasks", "the plan has no [[tasks]]", "name")
    if not isinstance(tasks, list) or not tasks:
        raise c.fail("tasks", "must be a non-empty array of [[tasks]] tables")
    seen: dict[str, int] = {}
    for i, t in enumerate(tasks):
        label = f"tasks[{i + 1}]"
        if not isinstance(t, dict):
            raise c.fail(label, "must be a table")
        for key in t:
            if key not in TASK_KEYS:
                raise c.fail(f"{label}.{key}", f"unknown key{did_you_mean(key, TASK_KEYS)} "
                             f"(allowed: {', '.join(sorted(TASK_KEYS))})", key)
        if "name" not in t:
            raise c.fail(label, "has no name", "prompt", i)
        name = t["name"]
        problem = task_name_problem(name)
        if problem:
            raise c.fail(f"{label}.name", f"bad task name: {problem}", "name", i)
        if name in seen:
            raise c.fail(f"{label}.name", f"duplicate task name {name!r} (also tasks[{seen[name] + 1}])", "name", i)
        seen[name] = i
        prompt = c.string(t, "prompt", f"{label}.prompt", None)
        if prompt is None or not prompt.strip():
            raise c.fail(f"{label}.prompt", f"task {name!r} has an empty prompt", "prompt", i)
        if "\0" in prompt:
            raise c.fail(f"{label}.prompt", f"task {name!r}: the prompt holds a NUL character", "prompt", i)
        agent = c.string(t, "agent", f"{label}.agent", plan.agent) or ""
        spec = TaskSpec(
            name=name,
            prompt=prompt,
            agent=agent,
            system_prompt=c.string(t, "system_prompt", f"{label}.system_prompt", "") or "",
            setup=c.string(t, "setup", f"{label}.setup", None),
            timeout=c.number(t, "timeout", f"{label}.timeout", 0, integer=False) if "timeout" in t else None,
            sandbox=c.string(t, "sandbox", f"{label}.sandbox", None),
            network=c.boolean(t, "network", f"{label}.network", True) if "network" in t else None,
        )
        if spec.sandbox is not None and spec.sandbox not in MODES:
            raise c.fail(f"{label}.sandbox", f"must be one of {', '.join(MODES)}, not {spec.sandbox!r}", "sandbox", i)
        if "\0" in spec.system_prompt:
            raise c.fail(f"{label}.system_prompt", "holds a NUL character", "system_prompt", i)
        if agent not in plan.agents:
            raise c.fail(f"{label}.agent", _unknown_agent(agent, plan.agents, name), "agent")
        plan.tasks.append(spec)
    return plan


def _command(c: "_Checker", value: Any, key: str) -> list[str]:
    """A command given as a string (run by ``sh -c``, like ``verify``) or as an argv list."""
    if isinstance(value, str) and value.strip():
        return ["sh", "-c", value]
    if isinstance(value, list) and value and all(isinstance(x, str) and x for x in value):
        return list(value)
    raise c.fail(key, "must be a command: a non-empty string, or a non-empty list of strings")


def _unknown_agent(agent: str, known: Iterable[str], task: str = "") -> str:
    return (f"unknown agent {agent!r}{' for task ' + repr(task) if task else ''}{did_you_mean(agent, known)} "
            f"(known: {', '.join(sorted(known))}; define it under [agents.{agent}])")


def adhoc_plan(task_args: list[str], agent: str = "claude") -> Plan:
    """A plan from ``--task NAME=PROMPT`` arguments."""
    plan = Plan(tasks=[], agent=agent, source="--task")
    if agent not in plan.agents:
        raise PlanError(f"--agent: unknown agent {agent!r}{did_you_mean(agent, plan.agents)} "
                        f"(known: {', '.join(sorted(plan.agents))})")
    seen: set[str] = set()
    for arg in task_args:
        name, sep, prompt = arg.partition("=")
        if not sep:
            raise PlanError(f"--task {arg!r}: expected NAME=PROMPT")
        problem = task_name_problem(name)
        if problem:
            raise PlanError(f"--task {arg[:60]!r}: bad task name: {problem}")
        if name in seen:
            raise PlanError(f"--task {name}: duplicate task name {name!r}")
        if not prompt.strip():
            raise PlanError(f"--task {name}: empty prompt")
        if "\0" in prompt:
            raise PlanError(f"--task {name}: the prompt holds a NUL character")
        seen.add(name)
        plan.tasks.append(TaskSpec(name=name, prompt=prompt, agent=agent))
    if not plan.tasks:
        raise PlanError("no tasks: give a plan file or at least one --task NAME=PROMPT")
    return plan
