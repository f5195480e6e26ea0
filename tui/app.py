"""Entry points of the dashboard, light to import: Textual and the screens load only when called."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from corral.core.pipeline import Prepared
    from corral.core.server.client import Link

    from .dashboard import CorralApp


def _bell() -> bool:
    return os.environ.get("CORRAL_BELL", "").lower() in ("1", "yes", "true", "on")


def user_keymap() -> dict[str, str]:
    """The keymap file's bindings; raises KeymapError (one line) when it is wrong. Read before
    anything starts, so a mistake in it changes nothing."""
    from .keymap import load_keymap

    return load_keymap()


def run_dashboard(prep: "Prepared", keep_worktrees: bool = False, keymap: dict[str, str] | None = None) -> int:
    """Host ``prep`` (already through preflight) in this process, in the dashboard. Returns the
    run's exit code (0 or 1), or 130 when the person quit (or SIGTERM/SIGHUP came) while it ran."""
    from .dashboard import CorralApp

    app = CorralApp(prep=prep, keep_worktrees=keep_worktrees, bell=_bell(), handle_signals=True,
                    keymap=keymap if keymap is not None else user_keymap())
    return _finish(app, app.run())


def run_attached(link: "Link", keymap: dict[str, str] | None = None,
                 expect: "Iterable[tuple[str, str]]" = ()) -> int:
    """The dashboard on a run in the supervisor (``link`` may still be starting it: its tasks,
    name and agent, are ``expect``). Returns the run's exit code once it ended, 130 when the person
    stopped it, 0 when they detached (the run goes on), or 2 when the run could not start."""
    from .dashboard import CorralApp

    app = CorralApp(link=link, bell=_bell(), handle_signals=True, expect=expect,
                    keymap=keymap if keymap is not None else user_keymap())
    return _finish(app, app.run())


def _finish(app: "CorralApp", result: object) -> int:
    code = result if isinstance(result, int) else app.exit_code
    if app.start_refused:
        print(f"corral: {app.start_refused}", file=sys.stderr)
        return code
    if app.terminal_lost:
        return code
    run = app.bus.run
    if app.detached:
        print(f"corral: detached from run {run}; it goes on. corral attach {run} to come back, "
              f"corral stop {run} to stop it")
        return 0
    if app.report:
        print(f"corral: run {run} {app.final_state} (exit {code}); report: {app.report}")
    elif code == 130 and getattr(app.link, "withdrawn", False):
        print("corral: stopped before the run started: nothing was started", file=sys.stderr)
    elif code == 130:
        print("corral: run interrupted; agents stopped, workspaces removed, branches with work kept",
              file=sys.stderr)
    return code


def run_program_dashboard(prep: "Prepared", start, *, title: str = "corral") -> int:
    """``corral run PROGRAM.py`` in the dashboard: ``start(approver, bus, on_runtime)`` runs the
    program on the runtime (see ``corral.tui.programs.program_starter``)."""
    return run_dashboard_runner(start, run_id=prep.run_id, approve=prep.plan.approve, title=title)


def run_dashboard_runner(runner, run_id: str = "", approve: str = "ask", title: str = "corral") -> int:
    """Run any ``runner(approver, bus, on_runtime) -> exit code | outcome`` in the dashboard (for
    programs: build the runtime with ``approver`` and ``bus``, call ``on_runtime(rt)`` once it
    exists, run the program, clean up shielded). Returns its exit code, or 130 when quit mid-run."""
    from .dashboard import CorralApp
    from .keymap import KeymapError

    try:
        keymap = user_keymap()
    except KeymapError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    app = CorralApp(runner=runner, bell=_bell(), handle_signals=True, keymap=keymap)
    app.runner_approve = approve
    app.title = title
    if run_id:
        app.bus.run = run_id
    result = app.run()
    return result if isinstance(result, int) else app.exit_code


def run_home(repo_path: str) -> int:
    """Plain ``corral``: this repository's runs, leftovers of interrupted runs, and a form to start
    an ad-hoc run. Exit 2 (one line) when ``repo_path`` is not a repository."""
    import anyio

    from corral.core.vcs import open_backend
    from corral.core.vcs.base import UsageError

    from .keymap import KeymapError

    try:
        keymap = user_keymap()
    except KeymapError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2

    async def check() -> None:
        backend = await open_backend(repo_path)
        await backend.close()

    try:
        anyio.run(check)
    except UsageError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    from .dashboard import CorralApp

    app = CorralApp(home_repo=repo_path, bell=_bell(), handle_signals=True, keymap=keymap)
    result = app.run()
    return result if isinstance(result, int) else app.exit_code


__all__ = ["run_attached", "run_dashboard", "run_dashboard_runner", "run_home"]
