"""Programs: a Python file defining ``async def run(input, rt)``, run on the same runtime as plans.

This is pi-factory's program model in Python. :func:`load_program` and :func:`parse_input` check
everything a user can get wrong before anything is created (one clear line, exit 2);
:func:`execute_program` runs the program beside :func:`corral.core.pipeline.execute`, sharing its
run start (journal, runtime) and its end (stopping agents, summary), and always cleans up: every
workspace the program left is removed by corral afterwards, its branch kept when it holds work
that no other branch has.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import anyio

from .diagnostics import loop_monitor
from .events import EventBus, Landed, LogEvent, ProgramResult, RunStarted
from .journal import write_atomic
from .pipeline import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Outcome,
    Prepared,
    announce_sandbox,
    finish_run,
    open_run,
)
from .report import fmt_cost, fmt_duration, render_tasks
from .runtime import Approver, Runtime
from .vcs.base import UsageError, VcsError


class ProgramError(UsageError):
    """A program file or its input is not usable (exit 2, nothing created)."""


@dataclass
class Program:
    path: Path
    fn: Callable[..., Any]
    module: types.ModuleType

    @property
    def name(self) -> str:
        return self.path.stem


def load_program(path: str | Path) -> Program:
    """Load a program file and check that it defines ``async def run(input, rt)``.

    Raises :class:`ProgramError` with one line naming the file (and line) and what is wrong.
    """
    p = Path(path)
    if not p.exists():
        raise ProgramError(f"{path}: no such file")
    if not p.is_file():
        raise ProgramError(f"{path}: not a file")
    try:
        source = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProgramError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ProgramError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        code = compile(source, str(p), "exec")
    except SyntaxError as exc:
        where = f":{exc.lineno}" if exc.lineno else ""
        raise ProgramError(f"{path}{where}: syntax error: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes
        raise ProgramError(f"{path}: cannot compile: {exc}") from None
    module = types.ModuleType(f"corral_program_{p.stem.replace('-', '_')}")
    module.__file__ = str(p.resolve())
    # a program may import helper modules that sit next to it
    folder = str(p.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # registered like an imported module (dataclasses, pickle and typing look modules up by name)
    sys.modules[module.__name__] = module
    try:
        exec(code, module.__dict__)
    except BaseException as exc:  # noqa: BLE001 - any failure at load time is a usage error
        sys.modules.pop(module.__name__, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = ""
        for frame in traceback.extract_tb(exc.__traceback__):
            if frame.filename == str(p):
                line = f":{frame.lineno}"
        raise ProgramError(f"{path}{line}: failed to load: {type(exc).__name__}: {exc}") from None
    fn = module.__dict__.get("run")
    if fn is None:
        raise ProgramError(f"{path}: defines no run function (a program needs `async def run(input, rt)`)")
    if not inspect.iscoroutinefunction(fn):
        raise ProgramError(f"{path}: `run` must be `async def run(input, rt)` (it is not an async function)")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise ProgramError(f"{path}: `run` must take two arguments: `async def run(input, rt)`") from None
    return Program(p, fn, module)


#: how deeply ``--input`` may nest: more than any real input needs, and far enough from Python's
#: recursion limit for the journal and the report to write the input out
MAX_INPUT_DEPTH = 100


def parse_input(text: str | None) -> Any:
    """The ``--input`` of a program: JSON text, or ``@FILE`` holding JSON. None gives ``{}``."""
    if text is None:
        return {}
    source = "--input"
    if text.startswith("@"):
        source = f"--input {text}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProgramError(f"{source}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProgramError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        pass  # deeper than the parser goes
    else:
        if _depth(value) <= MAX_INPUT_DEPTH:
            return value
    raise ProgramError(f"{source}: nested more than {MAX_INPUT_DEPTH} levels deep")


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar: 1), level by level rather than by recursion."""
    depth, level = 0, [value]
    while level and depth <= MAX_INPUT_DEPTH:
        depth += 1
        level = [v for item in level if isinstance(item, (list, dict))
                 for v in (item.values() if isinstance(item, dict) else item)]
    return depth


class ProgramRuntime(Runtime):
    """The ``rt`` a program gets: the plan pipeline's runtime, plus what a program needs to know.

    ``rt.abort_all()`` (the dashboard's abort-all) stops every agent *and* cancels the program: its
    ``finally`` still runs, then corral removes whatever workspace it left.
    """

    input: Any = None
    program: Program | None = None

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._program_scope = anyio.CancelScope()
        self.cancel_reason = ""

    @property
    def repo(self) -> str:
        """The repository's top directory (pi-factory's ``input.cwd || process.cwd()``)."""
        return str(self.backend.root)

    @property
    def run_dir(self) -> str:
        """The run folder (``result.json``, ``report.md``, artifacts, ``logs/``)."""
        return str(self.journal.dir)

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel the program (as abort-all does)."""
        if not self._program_scope.cancel_called:
            self.cancel_reason = reason
            self.bus.log("warning", f"program {reason}: stopping its agents; its finally blocks still run")
        self._program_scope.cancel()

    def abort_all(self) -> int:
        self.cancel("aborted")
        return super().abort_all()


@dataclass
class ProgramOutcome(Outcome):
    value: Any = None
    returned: bool = False
    error: str = ""
    traceback: str = ""
    result_path: Path | None = None
    kept_branches: list[str] = field(default_factory=list)


async def prepare_program(program: Program, repo: str | Path, *, base: str | None = None,
                          approve: str | None = None, sandbox: str | None = None) -> Prepared:
    """Preflight for a program: the plan pipeline's own, for a plan with no tasks (the program makes
    them as it goes). Raises :class:`UsageError`; creates nothing."""
    from .pipeline import prepare
    from .plan import Plan

    return await prepare(Plan(tasks=[], source=str(program.path)), repo, base=base, approve=approve,
                         sandbox=sandbox)


async def execute_program(prep: Prepared, program: Program, input: Any, approver: Approver, bus: EventBus, *,
                          keep_worktrees: bool = False, grace: float = 3.0,
                          on_runtime: Callable[[Runtime], None] | None = None,
                          default_agent: str | None = None) -> ProgramOutcome:
    """Run ``program`` with ``input``. Exit code 0 when ``run`` returns, 1 when it raises (the
    traceback goes to the event log and the report), 130 when cancelled (Ctrl-C, abort-all).
    Cancellation from outside propagates after cleanup has run."""
    rt, journal, unsubscribe = open_run(prep, approver, bus, keep_worktrees=keep_worktrees, grace=grace,
                                        runtime_cls=ProgramRuntime, default_agent=default_agent,
                                        program=str(program.path.resolve()))
    journal.attach("input", input)
    assert isinstance(rt, ProgramRuntime)
    rt.input, rt.program = input, program
    outcome = ProgramOutcome(EXIT_FAILED, prep.run_id, journal.dir, None, "running", rt)
    seen: dict[str, list[Any]] = {"lands": [], "artifacts": [], "logs": []}

    def collect(ev: Any) -> None:
        if isinstance(ev, Landed):
            seen["lands"].append(ev)
        elif isinstance(ev, LogEvent):
            if ev.message.startswith("artifact ") and "path" in ev.data:
                seen["artifacts"].append(ev.data["path"])
            elif ev.level != "debug":
                seen["logs"].append(ev)

    uncollect = bus.subscribe(collect)
    if on_runtime:
        on_runtime(rt)
    bus.emit(RunStarted(repo=str(prep.backend.root), base=prep.base_name, base_commit=prep.base_commit,
                        backend=prep.backend.kind, run_dir=str(journal.dir), tasks=[], agents={}))
    for note in rt.notes:
        bus.log("warning", note)
    announce_sandbox(rt)
    cancelled = False
    try:
        async with loop_monitor(), rt:
            rt.set_phase("running")
            bus.log("info", f"program {program.path} started", input=input)
            try:
                with rt._program_scope:
                    outcome.value = await program.fn(input, rt)
                    outcome.returned = True
            except Exception as exc:  # the program's own failure: report it, exit 1
                tb = "".join(traceback.format_exception(exc)).rstrip()
                outcome.error = f"{type(exc).__name__}: {exc}"
                outcome.traceback = tb
                bus.log("error", f"program raised {outcome.error}\n{tb}", traceback=tb)
            if rt._program_scope.cancel_called:  # abort-all: the run is interrupted, however run() ended
                cancelled = True
            running = [n for n, t in rt.tasks.items() if not t.finished]
            if running:
                bus.log("warning", "the program ended with agents still running (spawned, never joined): "
                        "stopping " + ", ".join(running))
                Runtime.abort_all(rt)
    except anyio.get_cancelled_exc_class():
        cancelled = True
        raise
    except (VcsError, OSError) as exc:
        outcome.error = outcome.error or f"{type(exc).__name__}: {exc}"
        bus.log("error", f"run failed: {exc}")
    except BaseExceptionGroup as eg:  # an engine task failed
        tb = "".join(traceback.format_exception(eg)).rstrip()
        outcome.error = outcome.error or f"{type(eg).__name__}: {eg}"
        outcome.traceback = outcome.traceback or tb
        bus.log("error", f"run failed: {eg}\n{tb}")
    finally:
        with anyio.CancelScope(shield=True):
            outcome.exit_code = EXIT_INTERRUPTED if cancelled else EXIT_FAILED if outcome.error else EXIT_OK
            outcome.state = "interrupted" if cancelled else "error" if outcome.error else "completed"
            try:
                await _finish(rt, outcome, seen, keep_worktrees, cancelled)
            finally:
                uncollect()
                unsubscribe()
                journal.close()
                await prep.backend.close()
    return outcome


async def _finish(rt: ProgramRuntime, outcome: ProgramOutcome, seen: dict[str, list[Any]], keep_worktrees: bool,
                  cancelled: bool) -> None:
    left = rt.workspaces.list()
    if left and not keep_worktrees:
        rt.bus.log("info", f"removing {len(left)} workspace(s) the program left: "
                   + ", ".join(ws.task for ws in left) + " (their branches are kept when they hold work)")

    def report(kept: list[str], left: list[str]) -> str:
        outcome.kept_branches = kept
        if outcome.returned:  # what run() returned, beside the report
            path = rt.journal.dir / "result.json"
            write_atomic(path, json.dumps(outcome.value, indent=2, default=_plain, ensure_ascii=False) + "\n")
            outcome.result_path = path
            rt.journal.update(result=str(path))
            rt.bus.emit(ProgramResult(value=_jsonable(outcome.value), path=str(path)))
        return render_program_report(rt, outcome, seen, kept)

    await finish_run(rt, outcome, report, keep_worktrees=keep_worktrees, cancelled=cancelled,
                     error=outcome.error or None, landed=any(ev.ok for ev in seen["lands"]))


def _plain(obj: Any) -> Any:
    """JSON for what a program may return besides plain data: results, workspaces, paths."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_plain))


def render_program_report(rt: ProgramRuntime, outcome: ProgramOutcome, seen: dict[str, list[Any]], kept: list[str]) -> str:
    tasks = list(rt.tasks.values())
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.status] = counts.get(t.status, 0) + 1
    costs = [t.result.usage.cost for t in tasks if t.result and t.result.usage.cost is not None]
    program = rt.program.path if rt.program else "?"
    lines = [
        f"# corral program run {rt.run_id}",
        "",
        f"- program: `{program}`",
        f"- repository: `{rt.backend.root}` ({rt.backend.kind})",
        f"- base: `{rt.base_name}` at `{str(rt.journal.state.get('base_commit', ''))[:12]}`",
        f"- started: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rt.started))}, "
        f"took {fmt_duration(time.time() - rt.started)}",
        f"- outcome: **{outcome.state}** (exit code {outcome.exit_code})",
        f"- agents: {len(tasks)}" + (" (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"
                                     if tasks else ""),
        f"- total cost: {fmt_cost(sum(costs)) if costs else '-'}",
    ]
    for ev in seen["lands"]:
        lines.append(f"- {'landed' if ev.ok else 'not landed'}: {ev.message}")
    if outcome.error:
        lines.append(f"- error: {outcome.error}")
    lines += ["", "## Input", "", "```json", json.dumps(rt.input, indent=2, default=str, ensure_ascii=False), "```"]
    if outcome.returned:
        lines += ["", "## Result", "", "```json",
                  json.dumps(outcome.value, indent=2, default=_plain, ensure_ascii=False)[:20000], "```"]
    if outcome.traceback:
        lines += ["", "## Error", "", "```text", outcome.traceback[-20000:], "```"]
    if seen["artifacts"]:
        lines += ["", "## Artifacts", ""] + [f"- `{p}`" for p in dict.fromkeys(seen["artifacts"])]
    if kept:
        lines += ["", "## Branches kept (work not on any other branch)", ""] + [f"- `{r}`" for r in kept]
    logs = [ev for ev in seen["logs"] if not ev.message.startswith("program raised ")]
    if logs:
        lines += ["", "## Log", ""]
        for ev in logs[-300:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(ev.ts))
            who = f"{ev.task}: " if ev.task else ""
            first = ev.message.splitlines()[0] if ev.message else ""
            lines.append(f"- {stamp} {ev.level}: {who}{first}")
    lines += render_tasks(rt, "Agents")
    return "\n".join(lines) + "\n"


def pipeline_program(plan: Any) -> Program:
    """The plan pipeline (steps 2-9 of a run) as a program: one engine, two front doors. ``corral run
    PLAN.toml`` runs the same steps through :func:`corral.core.pipeline.execute`, which adds the
    plan's own report; here they run on a program's runtime and return what happened."""
    from .pipeline import RunState, _exit_code, _steps

    async def run(input: Any, rt: Runtime) -> dict[str, Any]:
        state = RunState()
        for t in plan.tasks:
            rt.add_task(t.name, t.agent, t.prompt, t.system_prompt)
        await _steps(rt, plan, state)
        kept = state.integration_kept
        integ = state.integration
        if integ is not None and not kept and integ.task in rt.workspaces.live:
            await rt.workspaces.remove(integ, keep_branch=False)
        return {"tasks": {t.name: t.status for t in rt.tasks.values()}, "landed": bool(state.landed),
                "verify_ok": state.verify_ok, "exit_code": _exit_code(rt, state)}

    module = types.ModuleType("corral_plan_pipeline")
    setattr(module, "run", run)
    return Program(Path(plan.source or "plan"), run, module)


__all__ = ["Program", "pipeline_program", "ProgramError", "ProgramOutcome", "ProgramRuntime", "load_program", "parse_input",
           "prepare_program", "execute_program", "render_program_report"]
