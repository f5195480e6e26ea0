"""``corral run PROGRAM.py``: load the program, preflight, then run it headless or in the dashboard."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Awaitable, Callable

from corral.core.events import Event, ProgramResult


class _Usage(Exception):
    pass


def fail_usage(message: str):
    raise _Usage(message)


def run_program_cli(args: argparse.Namespace) -> int:
    """``corral run PROGRAM.py``. Bad usage: one line on stderr, exit 2, nothing created."""
    try:
        return _run_program_cli(args)
    except _Usage as exc:
        # (printed here rather than raised as the CLI's UsageExit: under `python -m corral.tui.cli`
        # that class exists twice, as __main__.UsageExit and corral.tui.cli.UsageExit)
        print(f"corral: {exc}", file=sys.stderr)
        return 2


def _run_program_cli(args: argparse.Namespace) -> int:
    import anyio

    from corral.core.agents import BUILTIN
    from corral.core.program import ProgramError, load_program, parse_input, prepare_program
    from corral.core.vcs.base import UsageError

    if args.task:
        fail_usage("give either a program (PROGRAM.py) or --task arguments, not both")
    if args.verify is not None:
        fail_usage("--verify is for plans and --task runs; a program runs its own checks (see examples/)")
    if args.max_parallel is not None:
        fail_usage("--max-parallel is for plans and --task runs; a program decides what runs at once")
    if args.agent is not None and args.agent not in BUILTIN:
        fail_usage(f"--agent {args.agent!r}: unknown agent profile (known: {', '.join(BUILTIN)})")
    try:
        program = load_program(args.target)
        value = parse_input(args.input)
    except ProgramError as exc:
        fail_usage(str(exc))
    repo = args.repo or os.getcwd()
    try:
        prep = anyio.run(lambda: prepare_program(program, repo, base=args.base, approve=args.approve,
                                                       sandbox=args.sandbox))
    except UsageError as exc:
        fail_usage(str(exc))
    keep = bool(args.keep_worktrees)
    headless = bool(args.headless)
    if not headless:
        from corral.tui.app import run_program_dashboard

        code = run_program_dashboard(prep, program_starter(prep, program, value, keep_worktrees=keep,
                                                           default_agent=args.agent),
                                     title=f"corral {program.path.name}")
        _print_stored_result(prep)
        return code
    return run_program_headless(prep, program, value, json_mode=bool(args.json), keep_worktrees=keep,
                                default_agent=args.agent)


def program_starter(prep, program, value: Any, *, keep_worktrees: bool = False, default_agent: str | None = None,
                    grace: float = 3.0) -> Callable[..., Awaitable[Any]]:
    """The one thing a front end needs to run a program: ``await start(approver, bus, on_runtime)``,
    in place of ``execute(prep, approver, bus, keep_worktrees=..., on_runtime=...)`` for a plan.
    It returns an outcome with ``exit_code``, ``run_dir``, ``report`` (and ``value``)."""
    from corral.core.program import execute_program

    async def start(approver, bus, on_runtime=None):
        return await execute_program(prep, program, value, approver, bus, keep_worktrees=keep_worktrees,
                                     grace=grace, on_runtime=on_runtime, default_agent=default_agent)

    return start


def _program_line_renderer():
    from corral.core.events import RunStarted
    from corral.tui.headless import LineRenderer

    class ProgramLineRenderer(LineRenderer):
        """The plan renderer, but a program's run starts with no tasks: its agents come as it goes."""

        def describe(self, ev: Event) -> str | None:
            if isinstance(ev, RunStarted):
                return (f"program run {ev.run} on {ev.repo} ({ev.backend}), base {ev.base} at "
                        f"{ev.base_commit[:12]}; state in {ev.run_dir}")
            return super().describe(ev)

    return ProgramLineRenderer()


class ResultPrinter:
    """Line mode: print the program's return value when it arrives (before the summary table)."""

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, ProgramResult):
            self.out.write(f"corral: program returned (stored in {ev.path}):\n")
            self.out.write(json.dumps(ev.value, indent=2, ensure_ascii=False) + "\n")
            self.out.flush()


def run_program_headless(prep, program, value: Any, *, json_mode: bool, keep_worktrees: bool,
                         default_agent: str | None = None) -> int:
    from corral.tui.cli import make_headless_approver, run_hosted
    from corral.tui.headless import JsonRenderer

    renderers = [JsonRenderer()] if json_mode else [_program_line_renderer(), ResultPrinter()]
    start = program_starter(prep, program, value, keep_worktrees=keep_worktrees, default_agent=default_agent)
    return run_hosted(prep.run_id, prep.plan.approve, start, renderers,
                      approver_for=lambda bus: make_headless_approver(prep.plan.approve, bus))


def _print_stored_result(prep) -> None:
    """After the dashboard closed: print what the program returned (from the run folder)."""
    path = prep.backend.state_dir / "runs" / prep.run_id / "result.json"
    if path.is_file():
        print(f"corral: program returned (stored in {path}):")
        print(path.read_text(encoding="utf-8").rstrip())
