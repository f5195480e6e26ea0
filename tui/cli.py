"""The ``corral`` command line."""

from __future__ import annotations

import os
import sys

from corral.core.codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

# typing's, without importing typing, argparse or json here: the command hands over to a standby
# (core/server/standby.py) before it imports anything it need not
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import threading
    from typing import Any, NoReturn, Sequence


class UsageExit(Exception):
    """Bad usage: print one line, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from corral.core import __version__

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:  # one clear line, exit 2
            raise UsageExit(f"{self.prog}: {message} (see {self.prog.split()[0]} --help)")

    p = _Parser(prog="corral", description="Run coding agents in parallel, each in its own git worktree or jj "
                "workspace; watch them live; merge what you approve, verified and atomically.")
    p.add_argument("--version", action="version", version=f"corral {__version__}")
    p.add_argument("--repo", default=None, help="repository (default: the one containing the current directory)")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    r = sub.add_parser("run", help="run a plan file (.toml), a program (.py), or ad-hoc --task arguments")
    r.add_argument("target", nargs="?", help="PLAN.toml or PROGRAM.py")
    r.add_argument("--task", action="append", default=[], metavar="NAME=PROMPT", help="an ad-hoc task (repeatable)")
    r.add_argument("--repo", default=argparse.SUPPRESS, help="repository (default: the one containing the current directory)")
    r.add_argument("--headless", action="store_true", help="no dashboard: plain lines on stdout")
    r.add_argument("--json", action="store_true", help="with --headless: one JSON object per event per line")
    r.add_argument("--approve", choices=("ask", "all", "none"), default=None, help="who approves merges (default: ask)")
    r.add_argument("--agent", default=None, help="default agent for ad-hoc tasks (default: claude)")
    r.add_argument("--max-parallel", type=int, default=None, metavar="N", help="agents running at once (0: all)")
    r.add_argument("--base", default=None, metavar="REV", help="revision to start from (default: current branch)")
    r.add_argument("--verify", default=None, metavar="CMD", help="command run on the merge result before landing")
    r.add_argument("--keep-worktrees", action="store_true", help="leave workspaces in place after the run")
    r.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default=None,
                   help="run agents, setup and verify in bubblewrap (default: the plan's, else auto)")
    r.add_argument("--input", default=None, metavar="JSON", help="input for a program (JSON)")
    r.add_argument("--detach", action="store_true",
                   help="start the run in the repository's supervisor and return (corral attach to watch it)")

    at = sub.add_parser("attach", help="open the dashboard on a live run (the newest if none is named)")
    at.add_argument("run", nargs="?", help="run id (see corral runs)")
    at.add_argument("--repo", default=argparse.SUPPRESS, help="repository (default: the current one)")

    st = sub.add_parser("stop", help="stop a live run: its agents, then its cleanup (work is kept)")
    st.add_argument("run", nargs="?", help="run id (see corral runs)")
    st.add_argument("--all", action="store_true", help="every live run of the repository")
    st.add_argument("--repo", default=argparse.SUPPRESS, help="repository (default: the current one)")

    se = sub.add_parser("send", help="send a follow-up message to a task of a run (queued while its agent "
                                     "works; a finished agent is resumed in its workspace; to a run that has "
                                     "ended, a new run carries the task on from its branch)")
    se.add_argument("run", help="run id (see corral runs)")
    se.add_argument("task", help="the task's name")
    se.add_argument("message", nargs="?", help="the message for its agent")
    se.add_argument("--cancel", action="store_true", help="take back the messages queued for the task instead")
    se.add_argument("--repo", default=argparse.SUPPRESS, help="repository (default: the current one)")

    rt = sub.add_parser("retry", help="a new attempt of a failed or aborted task of a live run, from base, "
                                      "on a branch of its own (the old attempt is kept)")
    rt.add_argument("run", help="run id (see corral runs)")
    rt.add_argument("task", help="the task's name")
    rt.add_argument("--prompt", default="", help="the new attempt's prompt (default: the task's)")
    rt.add_argument("--repo", default=argparse.SUPPRESS, help="repository (default: the current one)")

    la = sub.add_parser("land", help="land a past run's kept result onto its base as it is now: merged, "
                                     "verified again, then landed")
    la.add_argument("run", help="run id (see corral runs)")
    la.add_argument("--json", action="store_true", help="one JSON object per event per line")
    la.add_argument("--repo", default=argparse.SUPPRESS, help="repository (default: the current one)")

    d = sub.add_parser("demo", help="make a scratch repository and run a built-in demo plan on it")
    d.add_argument("--headless", action="store_true", help="no dashboard: plain lines on stdout")
    d.add_argument("--json", action="store_true", help="with --headless: one JSON object per event per line")
    d.add_argument("--delay", type=float, default=0.4, help="seconds the scripted agents pause between lines")
    d.add_argument("--keep", action="store_true", help="keep the scratch repository (default: removed at exit)")

    ru = sub.add_parser("runs", help="list this repository's runs")
    ru.add_argument("--repo", default=argparse.SUPPRESS, help="repository (default: the current one)")
    ru.add_argument("--json", action="store_true", help="one JSON object per run")

    c = sub.add_parser("clean", help="remove workspaces left by interrupted runs; keep branches holding work")
    c.add_argument("--repo", default=argparse.SUPPRESS, help="repository (default: the current one)")
    c.add_argument("--dry-run", action="store_true", help="only say what would be done")
    c.add_argument("--branches", nargs="*", default=None, metavar="BRANCH",
                   help="also delete kept corral/* branches whose work is merged or that hold none; "
                        "branches named are deleted even with unmerged work")

    ag = sub.add_parser("agents", help="list agent profiles, whether each command is found, and its version")
    ag.add_argument("--plan", default=None, metavar="PLAN.toml", help="also the profiles a plan defines or overrides")
    ag.add_argument("--json", action="store_true", help="one JSON object per profile")
    return p


_parser: argparse.ArgumentParser | None = None


def parser() -> argparse.ArgumentParser:
    """:func:`build_parser`'s parser, built once per process (parsing leaves it as it was): a
    standby builds it before it waits for a command (see :func:`standby_warm`)."""
    global _parser
    if _parser is None:
        _parser = build_parser()
    return _parser


def standby_warm() -> None:
    """What a standby does once it has imported :data:`STANDBY_MODULES`: the work every command does
    first, here the parser (argparse compiles its patterns as it builds one: 5 to 10 ms)."""
    parser()


def standby_ahead() -> None:
    """What a standby does while it imports: the start of the processes a run's agents need, the
    watchdog and the hub that forks their reapers (two Python starts, 40 to 50 ms of CPU each, that
    a run's preflight shared the cores with), and the probe of bwrap (a sandbox started and ended,
    the slowest of preflight's steps: see :func:`corral.core.sandbox.probe_ahead`)."""
    from corral.core.procs import start_hub
    from corral.core.sandbox import probe_ahead
    from corral.core.watchdog import Watchdog

    Watchdog.get()
    start_hub()
    probe_ahead()


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the command line: a standby may run it (corral run --headless)
        from corral.core.server.standby import hand_over

        handed = hand_over(sys.argv[1:], "corral.tui.cli")
        if handed is not None:
            sys.exit(handed)
    try:
        args = parser().parse_args(argv)
        code = dispatch(args)
    except UsageExit as exc:
        print(str(exc), file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.stdout.flush()
    if argv is None:
        sys.exit(code)
    return code


def fail_usage(message: str) -> NoReturn:
    raise UsageExit(f"corral: {message}")


def dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd is None:
        return open_home(args.repo)
    commands = {"run": cmd_run, "demo": cmd_demo, "runs": cmd_runs, "clean": cmd_clean, "agents": cmd_agents,
                "attach": cmd_attach, "stop": cmd_stop, "send": cmd_send, "retry": cmd_retry, "land": cmd_land}
    if cmd not in commands:
        fail_usage(f"unknown command {cmd!r}")
    return commands[cmd](args)


# ----------------------------------------------------------------------------------------- run
def _load_plan(args: argparse.Namespace):
    from corral.core.plan import PlanError, adhoc_plan, load_plan

    try:
        if args.target and args.task:
            fail_usage("give either a plan file or --task arguments, not both")
        if args.target:
            if args.agent is not None:
                fail_usage("--agent is for ad-hoc --task runs; set agent = \"...\" in the plan")
            return load_plan(args.target)
        if not args.task:
            fail_usage("run needs a plan file (PLAN.toml), a program (PROGRAM.py) or --task NAME=PROMPT")
        return adhoc_plan(args.task, args.agent or "claude")
    except PlanError as exc:
        fail_usage(str(exc))


def cmd_run(args: argparse.Namespace) -> int:
    if args.json and not args.headless:
        fail_usage("--json needs --headless")
    if args.target and args.target.endswith(".py"):
        from corral.tui.programs import run_program_cli

        return run_program_cli(args)
    if args.input is not None:
        fail_usage("--input is for programs (PROGRAM.py)")
    if args.detach and args.json:
        fail_usage("--detach starts the run and returns: it prints no events (corral attach shows them)")
    plan = _load_plan(args)
    repo = args.repo or os.getcwd()
    return launch(plan, repo, args, headless=args.headless, json_mode=args.json)


def launch(plan, repo: str, args: argparse.Namespace, *, headless: bool, json_mode: bool,
           banner: str | None = None, in_process: bool = False) -> int:
    """Preflight (exit 2 on any problem, nothing created), then the run: headless in this process,
    or in the repository's supervisor with the dashboard attached (``in_process``: the dashboard
    hosts it, for runs that must not outlive this process, like the demo's on its scratch repo)."""
    import anyio

    try:  # what anyio.run loads first: here, before the thread below, so that it competes with git's waits only
        import anyio._backends._asyncio  # noqa: F401
    except ImportError:  # (anyio's private module: anyio.run loads whatever it has become)
        pass
    from corral.core.preflight import prepare
    from corral.core.vcs.base import UsageError

    detach = bool(getattr(args, "detach", False))

    async def do_prepare():
        return await prepare(plan, repo, base=getattr(args, "base", None), verify=getattr(args, "verify", None),
                             max_parallel=getattr(args, "max_parallel", None),
                             approve=getattr(args, "approve", None), sandbox=getattr(args, "sandbox", None),
                             starts_agents=(headless and not detach) or in_process)

    keymap = None
    if not headless:
        from corral.tui.app import user_keymap
        from corral.tui.keymap import KeymapError

        try:
            keymap = user_keymap()  # before preflight: a mistake in it starts nothing
        except KeymapError as exc:
            fail_usage(str(exc))
    keep = bool(getattr(args, "keep_worktrees", False))
    beside = import_beside(_HEADLESS_MODULES if headless and not detach else _IN_PROCESS_MODULES if in_process
                           else _SUPERVISED_MODULES + (() if detach else ("corral.tui.dashboard",)))
    try:
        prep = anyio.run(do_prepare)
    except UsageError as exc:
        fail_usage(str(exc))
    beside.join()
    if headless and not detach:
        return run_headless(prep, json_mode=json_mode, keep_worktrees=keep, banner=banner)
    if in_process:
        from corral.tui.app import run_dashboard

        return run_dashboard(prep, keep_worktrees=keep, keymap=keymap)
    # the run goes to the repository's supervisor, which outlives this terminal
    anyio.run(prep.backend.close)
    request = start_request(args, plan, str(prep.backend.root), keep)
    state_dir, root = prep.backend.state_dir, prep.backend.root
    if detach:
        run_id, pid = anyio.run(start_in_supervisor, state_dir, root, request)
        print(f"corral: run {run_id} started in the supervisor (pid {pid}) of {root}; "
              f"corral attach {run_id} to watch it, corral stop {run_id} to stop it")
        return EXIT_OK
    if banner:
        print(banner, flush=True)
    return start_with_dashboard(state_dir, root, request, keymap, [(t.name, t.agent) for t in plan.tasks])


#: How long the agents' output must have been quiet, after an agent printed, before a headless run
#: that a standby took starts the standby for the next command (see :func:`run_hosted`)
STANDBY_QUIET = 0.05

#: what a run needs once preflight has passed, by where it runs: imported beside preflight (ctypes:
#: the first command's start makes corral a child subreaper with it)
_HEADLESS_MODULES = ("ctypes", "corral.core.pipeline", "corral.core.server.host", "corral.core.server.client",
                     "corral.tui.headless")
#: what ``corral run --headless`` needs from its start, imported by a standby before it waits for one
STANDBY_MODULES = ("argparse", "json", "anyio", "anyio._backends._asyncio", "corral.core.plan",
                   "corral.core.preflight", "corral.core.vcs.git", *_HEADLESS_MODULES)
_IN_PROCESS_MODULES = ("ctypes", "corral.core.pipeline", "corral.tui.dashboard")
_SUPERVISED_MODULES = ("corral.core.server.client", "corral.core.server.launch")


def import_beside(modules: Sequence[str]) -> "threading.Thread":
    """Import ``modules`` in a thread, started now: preflight's git processes and its sandbox probe
    keep the main thread waiting, and this Python work fits in those waits (a third of the start of
    a run). Join the thread before using them; an import that fails here fails again, and is
    reported, where the module is used."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:
                return

    thread = threading.Thread(target=run, name="corral-imports", daemon=True)
    thread.start()
    return thread


def start_request(args: argparse.Namespace, plan, repo_root: str, keep: bool):
    """What the supervisor needs to start the run as this terminal would: absolute paths, and the
    environment and working directory agents and commands start from."""
    from corral.core.server.launch import StartRequest

    target = getattr(args, "target", None)
    return StartRequest(
        target=os.path.abspath(target) if target else None, repo=repo_root,
        tasks=list(getattr(args, "task", []) or []) if not target else [],
        agent=getattr(args, "agent", None), base=plan.base, verify=plan.verify or None,
        max_parallel=plan.max_parallel, approve=plan.approve, keep_worktrees=keep,
        sandbox=getattr(args, "sandbox", None), cwd=os.getcwd(), env=dict(os.environ))


async def start_in_supervisor(state_dir, root, request) -> tuple[str, int]:
    """Start ``request`` in the repository's supervisor (started first if none runs); returns the
    run id and the supervisor's pid. A refusal is a usage error (exit 2)."""
    from corral.core.server.client import LinkError, start_run
    from corral.core.server.host import CommandError

    try:
        return await start_run(state_dir, root, request)
    except (LinkError, CommandError) as exc:
        raise UsageExit(f"corral: {exc}") from None


def start_with_dashboard(state_dir, root, request, keymap, tasks: list[tuple[str, str]]) -> int:
    """The dashboard on the run of ``request``, opened at once with the plan's ``tasks`` pending:
    the run is started in the repository's supervisor (started first if none runs) while the
    screen is built, and followed over the same connection. A refusal (the supervisor's preflight)
    is one line once the screen is gone, exit 2."""
    from corral.core.server.client import StartingLink
    from corral.tui.app import run_attached

    return run_attached(StartingLink(state_dir, root, request), keymap=keymap, expect=tasks)


def attach_dashboard(state_dir, root, run_id: str | None, keymap) -> int:
    """The dashboard on a run of the supervisor: ``run_id``, or the newest live one."""
    import anyio

    from corral.core.server.client import LinkError, NoSupervisor, SocketLink, open_connection
    from corral.tui.app import run_attached

    try:
        conn = anyio.run(open_connection, state_dir)
    except NoSupervisor:
        if run_id is not None:
            fail_usage(f"no live run {run_id!r} in {root} (corral runs lists them)")
        print(f"corral: no live run in {root} (corral runs lists them all)", file=sys.stderr)
        return EXIT_FAILED
    except LinkError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if run_id is None:
        live = [r for r in conn.hello.get("runs", []) if r.get("live")]
        if not live:
            anyio.run(conn.aclose)
            print(f"corral: no live run in {root} (corral runs lists them all)", file=sys.stderr)
            return EXIT_FAILED
        run_id = max(live, key=lambda r: r.get("started") or 0)["run"]
    elif run_id not in {r.get("run") for r in conn.hello.get("runs", [])}:
        anyio.run(conn.aclose)
        fail_usage(f"no live run {run_id!r} in {root} (corral runs lists them)")
    return run_attached(SocketLink(conn, run_id), keymap=keymap)


def cmd_attach(args: argparse.Namespace) -> int:
    from corral.tui.app import user_keymap
    from corral.tui.keymap import KeymapError

    try:
        keymap = user_keymap()
    except KeymapError as exc:
        fail_usage(str(exc))
    backend = _open_backend(args.repo)
    return attach_dashboard(backend.state_dir, backend.root, args.run, keymap)


def cmd_stop(args: argparse.Namespace) -> int:
    import signal

    import anyio

    from corral.core import reaper
    from corral.core.journal import list_runs
    from corral.core.server.client import LinkError, open_connection, own_process_runs
    from corral.core.server.host import CommandError

    if bool(args.run) == bool(args.all):
        fail_usage("stop needs a run id (see corral runs) or --all")
    backend = _open_backend(args.repo)
    own = own_process_runs(backend.state_dir)  # (`corral run --headless`: not the supervisor's)

    async def stop() -> int:
        try:
            conn = await open_connection(backend.state_dir)
        except LinkError:
            conn = None
        runs = {r["run"]: r for r in conn.hello.get("runs", [])} if conn is not None else {}
        targets = [r for r, info in runs.items() if info.get("live")] if args.all else [args.run]
        headless = {run: pid for run, pid in own.items() if run not in runs and (args.all or run == args.run)}
        if not args.all and args.run not in runs and args.run not in headless:
            if conn is not None:
                await conn.aclose()
            fail_usage(f"no live run {args.run!r} in {backend.root} (corral runs lists them)")
        if conn is None and not headless:
            print(f"corral: no live run in {backend.root}")
            return EXIT_OK
        code = EXIT_OK
        targets = [run for run in targets if run not in headless]
        for run, pid in headless.items():
            try:
                os.kill(pid, signal.SIGTERM)  # as Ctrl-C would (its agents stopped, its cleanup run)
            except ProcessLookupError:
                continue
            print(f"corral: stopping run {run} (process {pid}): agents stopped, then its cleanup (work is kept)")
        for pid in headless.values():
            while reaper.alive(pid):
                await anyio.sleep(0.1)
        if headless:
            ended = {r["run"]: r for r in list_runs(backend.state_dir)}
            for run in headless:
                print(f"corral: run {run} ended (exit {ended.get(run, {}).get('exit_code')})")
        if conn is None:
            return code
        for run in targets:
            try:
                await conn.ask("stop", run=run)
            except CommandError as exc:
                print(f"corral: {run}: {exc}", file=sys.stderr)
                code = EXIT_FAILED
                continue
            print(f"corral: stopping run {run}: agents stopped, then its cleanup (work is kept)")
        await conn.aclose()
        # wait for the runs to end: their cleanup is done when the supervisor says they are over
        for run in targets:
            while True:
                try:
                    c2 = await open_connection(backend.state_dir)
                except LinkError:
                    break
                info = {r["run"]: r for r in c2.hello.get("runs", [])}.get(run)
                await c2.aclose()
                if info is None or not info.get("live"):
                    if info is not None:
                        print(f"corral: run {run} ended (exit {info.get('exit_code')})")
                    break
                await anyio.sleep(0.1)
        return code

    return anyio.run(stop)


def cmd_send(args: argparse.Namespace) -> int:
    """``corral send RUN TASK MESSAGE``: one follow-up, through the supervisor's ``send`` command."""
    if args.cancel or args.message is None:
        if not args.cancel:
            print("corral: send: give the message, or --cancel to take back the queued ones", file=sys.stderr)
            return EXIT_USAGE
        if args.message is not None:
            print("corral: send --cancel takes no message", file=sys.stderr)
            return EXIT_USAGE
        reply = run_command(args, "cancel")
        print(f"corral: {reply.get('cancelled')} queued message(s) to {args.task} cancelled")
        return EXIT_OK
    if not _live(args):
        return send_to_ended_run(args)
    reply = run_command(args, "send", message=args.message)
    if reply.get("queued"):
        print(f"corral: message queued for {args.task}: delivered when its agent's current turn ends")
    else:
        print(f"corral: {args.task} resumed with the message (corral attach {args.run} to watch it)")
    return EXIT_OK


def _live(args: argparse.Namespace) -> bool:
    """Whether run ``args.run`` is live in the repository's supervisor (or not recorded at all:
    :func:`run_command` says so)."""
    import anyio

    from corral.core.server.client import live_runs

    backend = _open_backend(args.repo)
    if not (backend.state_dir / "runs" / args.run / "run.json").is_file():
        return True
    return bool(anyio.run(live_runs, backend.state_dir).get(args.run, {}).get("live"))


def send_to_ended_run(args: argparse.Namespace) -> int:
    """``corral send`` to a task of a run that has ended: a new run in the supervisor carries the
    task on (its workspace re-opened from its branch, its agent's session resumed), checked here
    first so that a refusal is one line and exit 2 with nothing started."""
    import anyio

    from corral.core.continuation import prepare_follow_up
    from corral.core.server.launch import StartRequest
    from corral.core.vcs.base import UsageError

    repo = args.repo or os.getcwd()
    try:
        prep = anyio.run(prepare_follow_up, repo, args.run, args.task, args.message)
    except UsageError as exc:
        fail_usage(f"send {args.task}: {exc}")
    anyio.run(prep.backend.close)
    root, state_dir = prep.backend.root, prep.backend.state_dir
    request = StartRequest(target=None, repo=str(root), cwd=os.getcwd(), env=dict(os.environ),
                           follow_up={"run": args.run, "task": args.task, "message": args.message})
    run_id, _pid = anyio.run(start_in_supervisor, state_dir, root, request)
    print(f"corral: run {args.run} has ended: {args.task} resumed with the message in run {run_id} "
          f"(corral attach {run_id} to watch it)")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """``corral retry RUN TASK``: a new attempt, through the supervisor's ``retry`` command."""
    reply = run_command(args, "retry", prompt=args.prompt)
    print(f"corral: {args.task} retried as {reply.get('task')} (corral attach {args.run} to watch it)")
    return EXIT_OK


def run_command(args: argparse.Namespace, op: str, **fields: Any) -> dict:
    """One command ``op`` about ``args.task`` of the live run ``args.run``; a refusal (or no such
    run) is one line and exit 2."""
    import anyio

    from corral.core.server.client import LinkError, open_connection
    from corral.core.server.host import CommandError

    backend = _open_backend(args.repo)

    async def request() -> dict:
        try:
            conn = await open_connection(backend.state_dir)
        except LinkError:
            fail_usage(f"no live run {args.run!r} in {backend.root} (corral runs lists them)")
        try:
            if not (conn.hello.get("runs") and any(r["run"] == args.run and r.get("live")
                                                   for r in conn.hello["runs"])):
                fail_usage(f"no live run {args.run!r} in {backend.root} (corral runs lists them)")
            try:
                return await conn.ask(op, run=args.run, task=args.task, **fields)
            except CommandError as exc:
                fail_usage(f"{op} {args.task}: {exc}")
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()

    return anyio.run(request)


def make_headless_approver(mode: str, bus):
    from corral.core.runtime import PolicyApprover

    if mode == "all":
        return PolicyApprover(True)
    if mode == "none":
        return PolicyApprover(False)
    if sys.stdin is not None and sys.stdin.isatty():
        from corral.tui.headless import TerminalApprover

        return TerminalApprover()
    bus.log("info", "--approve ask without a terminal on stdin means none: nothing will be merged "
                    "(use --approve all to merge)")
    return PolicyApprover(False)


def run_hosted(run_id: str, approve: str, body, renderers, approver_for=None) -> int:
    """Host a run in this process and render it (``--headless``): the renderers get its events
    through a link, as every client does, and all of them (output is never cut here). SIGINT,
    SIGTERM and SIGHUP stop the run, as ``corral stop`` would: its cleanup runs, what it prints
    is still rendered, and the exit code is 130; later signals only print a note. Output closed by
    its reader stops the run the same way.

    Run by a standby, it starts the standby for the next command once an agent has printed and
    then either the agents' output has been quiet for :data:`STANDBY_QUIET` or no agent runs any
    more (or as it exits): not while the run starts, nor while agents flood their output (8 agents
    streaming ``yes``: a standby's warm-up beside them made their window some 50 ms longer, at
    whatever priority it ran), and not later than the agents' end (a command that follows a short
    run at once finds its standby the warmer)."""
    import signal
    import time

    import anyio

    from corral.core.events import TaskOutput, TaskStatus
    from corral.core.server.client import LocalLink, SnapshotEnd
    from corral.core.server.host import RunHost
    from corral.core.server.standby import successor

    async def main() -> int:
        host = RunHost(run_id, approve=approve, tail=0)  # (its renderers attach now, and no one later)
        if approver_for is not None:
            host.approver = approver_for(host.bus)
        got: list[int] = []
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                    async for signum in signals:
                        if not got:
                            got.append(signum)
                            print(f"\ncorral: {signal.Signals(signum).name}: stopping agents and cleaning up "
                                  "(work is kept on its branches)", file=sys.stderr, flush=True)
                            host.stop()
                        else:
                            print("corral: cleanup in progress, please wait", file=sys.stderr, flush=True)

            printed = anyio.Event()  # (by an agent)
            last_output = 0.0
            running: set[str] = set()  # the tasks whose agent runs
            ended = anyio.Event()  # (no agent runs, after one printed)

            async def next_standby() -> None:
                await printed.wait()
                while running and (left := last_output + STANDBY_QUIET - time.monotonic()) > 0:
                    with anyio.move_on_after(left):
                        await ended.wait()
                successor()

            tg.start_soon(watch)
            tg.start_soon(next_standby)
            await anyio.sleep(0)
            tg.start_soon(host.run, body)
            shown = list(renderers)
            async for ev in LocalLink(host, lossless=True).events():
                if isinstance(ev, SnapshotEnd) or not shown:
                    continue
                try:
                    for render in shown:
                        render(ev)
                except BrokenPipeError:
                    # whoever read the output is gone (`| head`): the run stops as on SIGHUP, quietly
                    shown.clear()
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                    if not got:
                        got.append(signal.SIGPIPE)
                        print("corral: the output was closed: stopping agents and cleaning up "
                              "(work is kept on its branches)", file=sys.stderr, flush=True)
                        host.stop()
                if isinstance(ev, TaskOutput):  # (once its lines are out)
                    last_output = time.monotonic()
                    if ev.stream == "agent":
                        printed.set()
                elif isinstance(ev, TaskStatus):
                    (running.add if ev.status == "running" else running.discard)(ev.task)
                    if not running and printed.is_set():
                        ended.set()
            tg.cancel_scope.cancel()
        return EXIT_INTERRUPTED if got else int(host.exit_code if host.exit_code is not None else EXIT_FAILED)

    return anyio.run(main)


def run_headless(prep, *, json_mode: bool, keep_worktrees: bool, banner: str | None = None) -> int:
    from corral.core.pipeline import execute
    from corral.tui.headless import JsonRenderer, LineRenderer

    if banner and not json_mode:
        print(banner, flush=True)
    return run_hosted(prep.run_id, prep.plan.approve,
                      lambda approver, bus, on_rt: execute(prep, approver, bus, keep_worktrees=keep_worktrees,
                                                           on_runtime=on_rt),
                      [JsonRenderer() if json_mode else LineRenderer()],
                      approver_for=lambda bus: make_headless_approver(prep.plan.approve, bus))


# ---------------------------------------------------------------------------------------- land
def cmd_land(args: argparse.Namespace) -> int:
    """``corral land RUN``: hosted in this process as a headless run is, its events rendered as lines
    (or JSON); a run with nothing to land is one line and exit 2, nothing changed."""
    import anyio

    from corral.core.landing import find_kept, land_kept
    from corral.core.vcs.base import UsageError
    from corral.tui.headless import JsonRenderer, LineRenderer

    backend = _open_backend(args.repo)
    try:
        kept = anyio.run(find_kept, backend, args.run)
    except UsageError as exc:
        anyio.run(backend.close)
        fail_usage(str(exc))

    async def body(approver, bus, on_runtime) -> int:
        try:
            return await land_kept(backend, kept, bus)
        finally:
            await backend.close()

    return run_hosted(kept.run, "all", body, [JsonRenderer() if args.json else LineRenderer()])


# ---------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from corral.core.demo import demo_plan, make_demo_repo

    if args.json and not args.headless:
        fail_usage("--json needs --headless")
    if args.delay < 0:
        fail_usage("--delay must be >= 0")
    repo = make_demo_repo()
    plan = demo_plan(args.delay)
    if not args.headless:
        plan.approve = "ask"  # the dashboard is where a person approves: show the review screen
    banner = (f"corral demo: scratch repository {repo}{'' if args.keep else ' (removed at exit; --keep keeps it)'}\n"
              f"corral demo: {len(plan.tasks)} scripted agents; one fails, two edit the same line")
    code = EXIT_INTERRUPTED
    try:
        code = launch(plan, str(repo), args, headless=args.headless, json_mode=args.json, banner=banner,
                      in_process=True)
    finally:
        if not args.keep:
            shutil.rmtree(repo, ignore_errors=True)
        if not args.json:
            try:
                print(demo_epilogue(repo, code, args.keep), file=sys.stderr if code == EXIT_INTERRUPTED else sys.stdout)
            except OSError:  # the terminal is gone (SIGHUP): nobody to tell, and the exit code stays
                pass
    return code


def demo_epilogue(repo, code: int, keep: bool) -> str:
    """What a newcomer reads at the end of the demo: why it exits 1, and where the repository is."""
    lines = []
    if code == EXIT_FAILED:
        lines.append("corral demo: exit code 1 is by design: upgrade-build always fails and greet-en and greet-fr "
                     "edit the same line, so the run cannot be all green (the failure and the conflict are part of "
                     "the show)")
    lines.append(f"corral demo: the scratch repository is kept at {repo}" if keep else
                 f"corral demo: removed the scratch repository {repo} (corral demo --keep keeps it)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- runs, clean
def _open_backend(repo: str | None):
    import anyio

    from corral.core.vcs import open_backend
    from corral.core.vcs.base import UsageError

    try:
        return anyio.run(open_backend, repo or os.getcwd())
    except UsageError as exc:
        fail_usage(str(exc))


def cmd_runs(args: argparse.Namespace) -> int:
    import json
    import time

    from corral.core.journal import list_runs

    backend = _open_backend(args.repo)
    import anyio

    from corral.core.server.client import live_runs, own_process_runs

    runs = list_runs(backend.state_dir)
    live = anyio.run(live_runs, backend.state_dir)
    own = own_process_runs(backend.state_dir)  # (`corral run --headless`: a process of its own)
    if args.json:
        for r in runs:
            info = live.get(r["run"], {})
            data = {k: r.get(k) for k in ("run", "state", "started", "ended", "exit_code", "landed",
                                          "base", "kept_branches")}
            data.update(live=bool(info.get("live")), waiting=info.get("waiting") or "",
                        supervisor=info.get("pid") if info.get("live") else None, process=own.get(r["run"]))
            print(json.dumps(data, default=str))
        return EXIT_OK
    if not runs:
        print(f"no corral runs in {backend.root}")
        return EXIT_OK
    rows = [("run", "started", "state", "ok", "failed", "landed", "")]
    for r in runs:
        tasks = r.get("tasks", {}).values()
        ok = sum(1 for t in tasks if t.get("status") in ("succeeded", "merged", "rejected"))
        bad = sum(1 for t in tasks if t.get("status") in ("failed", "aborted", "conflict", "verify-failed"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"])) if r.get("started") else "-"
        info = live.get(r["run"], {})
        note = ""
        if info.get("live"):
            note = f"live (supervisor {info.get('pid')})" + (f", waiting: {info['waiting']}" if info.get("waiting") else "")
        elif r["run"] in own:
            note = f"running in process {own[r['run']]}"
        rows.append((r["run"], started, str(r.get("state", "?")), str(ok), str(bad),
                     "yes" if r.get("landed") else "no", note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if any(r.get("live") for r in live.values()):
        print("(corral attach RUN opens the dashboard on a live run; corral stop RUN stops it)")
    elif own:
        print("(corral stop RUN stops a run)")
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    import anyio

    from corral.core.clean import check_branch_names, clean, clean_branches

    from corral.core.vcs.base import UsageError

    backend = _open_backend(args.repo)
    named = args.branches

    async def go():
        if named:
            await check_branch_names(backend, named)  # a wrong name changes nothing
        rep = await clean(backend, args.dry_run)
        return rep, (await clean_branches(backend, named, args.dry_run) if named is not None else [])

    try:
        rep, branches = anyio.run(go)
    except UsageError as exc:
        fail_usage(str(exc))
    for line in clean_lines(rep, args.dry_run) + branch_lines(rep.branches + branches, args.dry_run):
        print(line)
    if not rep.items and not rep.killed and not rep.branches and not branches:
        print(f"nothing to clean in {backend.root}")
    return EXIT_FAILED if rep.failed or any(b.error for b in rep.branches + branches) else EXIT_OK


def branch_lines(items, dry_run: bool) -> list[str]:
    """What ``corral clean --branches`` did (or would do) with each corral branch, one line each."""
    out = []
    for b in items:
        if b.error:
            out.append(f"could not delete branch {b.ref}: {b.error}")
        elif b.action == "delete":
            out.append(f"{'would delete' if dry_run else 'deleted'} branch {b.ref} ({b.why})")
        else:
            out.append(f"{'would keep' if dry_run else 'kept'} branch {b.ref}: {b.why}")
    return out


def clean_lines(rep, dry_run: bool) -> list[str]:
    """What ``corral clean`` did (or, with ``--dry-run``, would do), one line per action."""
    would = dry_run
    out = [f"{'would stop' if would else 'stopped'} leftover process {pid} of an interrupted run" for pid in rep.killed]
    for item in rep.items:
        lo = item.leftover
        label = f"{lo.path} (run {lo.run}, task {lo.task})"
        if item.action == "live":
            out.append(f"left alone: {lo.path} belongs to run {lo.run}, which is still running")
            continue
        out += [f"note: {note}" for note in item.notes]
        if item.error:
            out.append(f"could not clean {label}: {item.error}")
            continue
        if item.action == "skip":
            out.append(f"left alone: {label}: {item.why}")
            continue
        if item.action == "drop":
            out.append(f"{'would remove' if would else 'removed'} half-made workspace {label}: {item.why}")
            continue
        if item.committed:
            out.append(f"{'would commit' if would else 'committed'} {len(item.committed)} uncommitted file(s) "
                       f"of {lo.task} onto {lo.ref}")
        out.append(f"{'would remove' if would else 'removed'} workspace {label}")
        for ref in item.kept:
            out.append(f"{'would keep' if would else 'kept'} branch {ref} (holds work not merged)")
        for ref in item.deleted:
            out.append(f"{'would delete' if would else 'deleted'} branch {ref} (holds no work of its own)")
    return out


def cmd_agents(args: argparse.Namespace | None = None) -> int:
    import json

    import anyio

    from corral.core.agents import BUILTIN, inspect_profiles

    from corral.core.vcs.base import UsageError

    profiles, sandbox, network = dict(BUILTIN), None, True
    plan_path = getattr(args, "plan", None)
    if plan_path:
        from corral.core.plan import PlanError, load_plan

        try:
            plan = load_plan(plan_path)
        except PlanError as exc:
            fail_usage(str(exc))
        profiles, sandbox, network = dict(plan.agents), plan.sandbox, plan.network
    async def inspect() -> list[dict]:
        from corral.core.preflight import sandbox_policy
        from corral.core.plan import Plan

        policy = await sandbox_policy(Plan(tasks=[], sandbox=sandbox, network=network), strict=False)
        return await inspect_profiles(profiles, os.getcwd(), sandbox=policy)

    try:
        rows = anyio.run(inspect)
    except UsageError as exc:
        fail_usage(str(exc))
    if getattr(args, "json", False):
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    table = [("agent", "found", "version", "tested", "sandbox", "command")]
    for r in rows:
        table.append((r["agent"] + ("*" if r["origin"] != "built-in" else ""), r["path"] or "NOT FOUND",
                      (r["version"] or "-") + (" (newer)" if r["newer"] else ""), r["tested"] or "-",
                      r["sandbox"].split(" (")[0] + (", no network" if "network off" in r["sandbox"] else ""),
                      r["command"]))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line[:5], widths)) + "  " + line[5])
    for why in dict.fromkeys(r["sandbox"].partition(" (")[2][:-1] for r in rows if r["sandbox"].startswith("none")):
        if why != "sandbox = none":
            print(f"sandbox none: {why}")
    if any(r["origin"] != "built-in" for r in rows):
        print(f"(* defined or overridden in {plan_path})")
    for r in rows:
        if r["newer"]:
            print(f"warning: {r['agent']} {r['version']} is newer than the version corral was tested with "
                  f"({r['tested']}); its output may have changed: check a run's panes, or see core/AGENTS.md")
    print("\nWhat each agent may do unattended (stdin is closed; nothing waits for an answer):")
    for r in rows:
        print(f"  {r['agent']}: {r['unattended'] or 'custom command line: see its own documentation.'}")
        if r["change"]:
            print(f"    to change: {r['change']}")
        print(f"    follow-ups: {r['resume']}")
    missing = [r["agent"] for r in rows if not r["path"]]
    if missing:
        print(f"\nNot found on PATH: {', '.join(missing)}. Install them, or point a plan at them with "
              f"[agents.NAME] command = [\"/path/to/program\", ...].")
    return EXIT_OK


def open_home(repo: str | None) -> int:
    from corral.tui.app import run_home

    return run_home(repo or os.getcwd())


if __name__ == "__main__":
    main()
