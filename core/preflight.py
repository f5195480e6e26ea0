"""Step 1 of a run, preflight (SPEC.md): every check that protects the user's work, made before
anything is created. Its own module, importing only what the checks need: the engine's modules
(runtime, merge queue, events' renderers) are not needed until the run starts, and ``corral run``
imports them while preflight's git processes run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, TypeVar, cast

import anyio
import anyio.to_thread

from .plan import Plan
from .procs import start_hub, stop_unused_hub
from .sandbox import MODES, Policy, probe
from .vcs import open_backend
from .vcs.base import Backend, UsageError
from .watchdog import Watchdog

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from .continuation import Continuation, Revisit
    from .procs import _Hub


def _new_run_id() -> str:
    from .journal import new_run_id  # (the journal imports the events: beside preflight, not before it)

    return new_run_id()


@dataclass
class Prepared:
    """A plan that passed preflight: everything needed to start, nothing created yet."""

    plan: Plan
    backend: Backend
    base_name: str
    base_commit: str
    worktree_root: str | None
    run_id: str = field(default_factory=_new_run_id)
    #: what the user should know before the run starts (not problems): shown at its start
    notes: list[str] = field(default_factory=list)
    #: the environment commands of the run start from (default: corral's own); a supervisor's run
    #: gets the one of the terminal that started it
    env: dict[str, str] | None = None
    sandbox: Policy = field(default_factory=lambda: Policy(setting="none"))
    #: a follow-up to a task of an ended run, which this run carries on (see continuation.py)
    continues: "Continuation | Revisit | None" = None


async def prepare(plan: Plan, repo: str | Path, *, base: str | None = None, verify: str | None = None,
                  max_parallel: int | None = None, approve: str | None = None,
                  sandbox: str | None = None, env: dict[str, str] | None = None,
                  cwd: str | None = None, starts_agents: bool = True) -> Prepared:
    """Step 1, preflight. Raises :class:`UsageError` naming the problem; creates nothing. ``env`` and
    ``cwd`` are those of the person's terminal when another process (the supervisor) prepares;
    ``starts_agents``: the run's agents start in this process (not in a supervisor it is handed to)."""
    if sandbox is not None and sandbox not in MODES:
        raise UsageError(f"--sandbox {sandbox}: must be one of {', '.join(MODES)}")
    if base is not None:
        plan.base = base
    if verify is not None:
        plan.verify = verify
    if max_parallel is not None:
        if max_parallel < 0:
            raise UsageError(f"--max-parallel {max_parallel}: must be >= 0")
        plan.max_parallel = max_parallel
    if approve is not None:
        plan.approve = approve
    # what does not depend on the answers before it is asked at once, each answer awaited where the
    # checks needed it in turn: the same checks, in the same order, the first problem the one said
    hubs: list[_Hub | None] = []  # the reaper hub, if started here: a refused run ends it
    try:
        async with anyio.create_task_group() as tg:
            if starts_agents:
                # the process's watchdog (procs.py tells it each agent) and the hub that forks the
                # agents' reapers start now, beside the git processes: at the first agent's start
                # the agent would wait for the hub's Python start, and both would share the cores
                # with the agent's own (nothing here waits for them; the process keeps them)
                tg.start_soon(anyio.to_thread.run_sync, Watchdog.get)
                tg.start_soon(anyio.to_thread.run_sync, lambda: hubs.append(start_hub()))
            if _probes(plan, sandbox, env):
                tg.start_soon(probe)  # (sandbox_policy below gets its result)
            backend = await open_backend(repo, plan.vcs, checks_base=not plan.base)
            try:
                user_state = _Soon(tg, backend.remember_user_state)
                base_name = plan.base or await backend.current_base()
                base_commit, problems = await backend.check_base(base_name)
                if problems:
                    raise UsageError(problems[0])
                notes = _Soon(tg, backend.notes, base_commit, base_name)
                root = await _check_tasks(plan, backend, env, cwd)
                policy = await sandbox_policy(plan, sandbox, env=env)
                await user_state.get()
                prep = Prepared(plan, backend, base_name, base_commit, root, notes=await notes.get(),
                                sandbox=policy, env=env)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await backend.close()
                raise
    except BaseException as exc:
        if hubs and hubs[0] is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stop_unused_hub, hubs[0])
        if isinstance(exc, BaseExceptionGroup):
            raise _problem_of(exc) from None
        raise
    return prep


async def _check_tasks(plan: Plan, backend: Backend, env: dict[str, str] | None, cwd: str | None) -> str | None:
    """Preflight of the plan's tasks on ``backend``: each agent's program is found, each branch name
    valid, the worktree root usable, each prompt fits its agent's command line. Returns the worktree
    root (absolute; None: the temp dir)."""
    for task in plan.tasks:
        profile = plan.profile(task)
        if profile.find((env or os.environ).get("PATH", os.defpath)) is None:
            hint = ("install it, or pick another with --agent NAME" if plan.source == "--task" else
                    f"install it, or set [agents.{profile.name}] command = [...] in the plan")
            raise UsageError(f"task {task.name!r}: agent {profile.name!r} needs {profile.executable!r}, "
                             f"which is not on PATH ({hint})")
        ref = backend.ref_name("20000101-000000-0000", task.name)
        if not await backend.check_ref_name(ref):
            raise UsageError(f"task {task.name!r}: {ref!r} is not a valid branch name")
    root = plan.worktree_root or None
    if root:
        p = Path(cwd or ".") / Path(root).expanduser()
        if not p.is_dir():
            raise UsageError(f"worktree_root {root!r}: no such directory")
        root = str(p.resolve())
    _check_writable(root)
    problem = backend.worktree_root_problem(root)
    if problem:
        raise UsageError(problem)
    for task in plan.tasks:
        problem = plan.command_line_problem(task, _new_run_id(), root)
        if problem:
            raise UsageError(f"task {task.name!r}: the prompt is too long for the command line of agent "
                             f"{task.agent!r}: {problem} (put long instructions in a file in the "
                             f"repository and point the prompt at it)")
    return root


T = TypeVar("T")


class _Soon(Generic[T]):
    """A coroutine function's call started now in task group ``tg``; its result awaited later
    (:meth:`get`). Should it raise, the task group's other tasks are cancelled."""

    def __init__(self, tg: TaskGroup, fn: Callable[..., Awaitable[T]], *args: Any) -> None:
        self._done = anyio.Event()
        self._value: T | None = None

        async def run() -> None:
            self._value = await fn(*args)
            self._done.set()

        tg.start_soon(run)

    async def get(self) -> T:
        await self._done.wait()
        return cast(T, self._value)


def _problem_of(group: BaseExceptionGroup) -> BaseException:
    """What to raise for what preflight's task group raised, as preflight raised it when it asked one
    thing at a time: its first usage error (the problem to name, exit 2), else a Ctrl-C, else the
    one exception in it (the group when there are several)."""
    for kind in (UsageError, KeyboardInterrupt):
        found = group.subgroup(kind)
        if found is not None:
            return _first_leaf(found)
    return _first_leaf(group) if len(group.exceptions) == 1 else group


def _probes(plan: Plan, forced: str | None, env: dict[str, str] | None) -> bool:
    """Whether :func:`sandbox_policy` will probe bwrap for ``plan`` (not when it refuses the settings:
    it says so in its turn)."""
    try:
        return set(_settings(plan, _policy(plan, forced, env)).values()) != {"none"}
    except Exception:
        return False


def _policy(plan: Plan, forced: str | None, env: dict[str, str] | None) -> Policy:
    default = (os.environ if env is None else env).get("CORRAL_SANDBOX") or "auto"
    if default not in MODES:
        raise UsageError(f"CORRAL_SANDBOX={default}: must be one of {', '.join(MODES)}")
    return Policy(setting=plan.sandbox or default, network=plan.network, forced=forced,
                  tasks={t.name: (t.sandbox, t.network) for t in plan.tasks})


def _settings(plan: Plan, policy: Policy) -> dict[str, str]:
    """Each task's sandbox setting, and the plan's own ("": verify, and the agents a program starts)."""
    wanted = {"": policy.setting_of("", None)[0]}
    wanted.update({t.name: policy.setting_of(t.name, plan.profile(t))[0] for t in plan.tasks})
    return wanted


async def sandbox_policy(plan: Plan, forced: str | None = None, strict: bool = True,
                         env: dict[str, str] | None = None) -> Policy:
    """The run's sandbox settings, bwrap probed when a task (or verify, or a program's agents) may
    use it. Raises :class:`UsageError` when one must run in bwrap and bwrap cannot run here (unless
    not ``strict``: ``corral agents`` only shows it)."""
    policy = _policy(plan, forced, env)
    wanted = _settings(plan, policy)
    if set(wanted.values()) == {"none"}:
        return policy
    policy.bwrap, policy.signals, policy.problem = await probe()
    strict_tasks = [task for task, setting in wanted.items() if setting == "bwrap"]
    if strict and strict_tasks and not policy.bwrap:
        first = strict_tasks[0]
        where = "--sandbox bwrap" if forced else (f"task {first!r}: sandbox = \"bwrap\"" if first
                                                  else 'sandbox = "bwrap"')
        raise UsageError(f"{where}: {policy.problem} (sandbox = \"none\" runs agents without one)")
    return policy


def _check_writable(root: str | None) -> None:
    """Workspaces are made with mkdtemp under ``root`` (default: the temp dir): try it once."""
    import tempfile

    try:
        probe = tempfile.mkdtemp(prefix=".corral-probe-", dir=root)
    except OSError as exc:
        where = f"worktree_root {root!r}" if root else f"temp dir {tempfile.gettempdir()!r}"
        raise UsageError(f"{where}: not writable ({exc.strerror or exc})") from None
    os.rmdir(probe)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
