"""The ``corral`` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any, NoReturn, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageExit(Exception):
    """Bad usage: print one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line, exit 2
        raise UsageExit(f"{self.prog}: {message} (see {self.prog.split()[0]} --help)")


def build_parser() -> argparse.ArgumentParser:
    from corral.core import __version__

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

    ag = sub.add_parser("agents", help="list agent profiles, whether each command is found, and its version")
    ag.add_argument("--plan", default=None, metavar="PLAN.toml", help="also the profiles a plan defines or overrides")
    ag.add_argument("--json", action="store_true", help="one JSON object per profile")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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
    if cmd == "run":
        return cmd_run(args)
    if cmd == "demo":
        return cmd_demo(args)
    if cmd == "runs":
        return cmd_runs(args)
    if cmd == "clean":
        return cmd_clean(args)
    if cmd == "agents":
        return cmd_agents(args)
    fail_usage(f"unknown command {cmd!r}")


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
    plan = _load_plan(args)
    repo = args.repo or os.getcwd()
    return launch(plan, repo, args, headless=args.headless, json_mode=args.json)


def launch(plan, repo: str, args: argparse.Namespace, *, headless: bool, json_mode: bool,
           banner: str | None = None) -> int:
    """Preflight (exit 2 on any problem, nothing created), then the run in the chosen front end."""
    import anyio

    from corral.core.pipeline import prepare
    from corral.core.vcs.base import UsageError

    async def do_prepare():
        return await prepare(plan, repo, base=getattr(args, "base", None), verify=getattr(args, "verify", None),
                             max_parallel=getattr(args, "max_parallel", None),
                             approve=getattr(args, "approve", None), sandbox=getattr(args, "sandbox", None))

    keymap = None
    if not headless:
        from corral.tui.app import user_keymap
        from corral.tui.keymap import KeymapError

        try:
            keymap = user_keymap()  # before preflight: a mistake in it starts nothing
        except KeymapError as exc:
            fail_usage(str(exc))
    try:
        prep = anyio.run(do_prepare)
    except UsageError as exc:
        fail_usage(str(exc))
    keep = bool(getattr(args, "keep_worktrees", False))
    if headless:
        return run_headless(prep, json_mode=json_mode, keep_worktrees=keep, banner=banner)
    from corral.tui.app import run_dashboard

    return run_dashboard(prep, keep_worktrees=keep, keymap=keymap)


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


async def with_signals(body, on_signal=None):
    """Run ``body()`` so that SIGINT, SIGTERM and SIGHUP cancel it (its cleanup still runs, shielded),
    and later signals during cleanup only print a note. Returns (result, signal received or None)."""
    import anyio

    got: list[int] = []
    result = None
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    if not got:
                        got.append(signum)
                        print(f"\ncorral: {signal.Signals(signum).name}: stopping agents and cleaning up "
                              "(work is kept on its branches)", file=sys.stderr, flush=True)
                        if on_signal:
                            on_signal(signum)
                        scope.cancel()
                    else:
                        print("corral: cleanup in progress, please wait", file=sys.stderr, flush=True)

        tg.start_soon(watch)
        await anyio.sleep(0)
        with scope:
            result = await body()
        tg.cancel_scope.cancel()
    return result, (got[0] if got else None)


def run_headless(prep, *, json_mode: bool, keep_worktrees: bool, banner: str | None = None) -> int:
    import anyio

    from corral.core.events import EventBus
    from corral.core.pipeline import execute
    from corral.tui.headless import JsonRenderer, LineRenderer

    bus = EventBus(prep.run_id)
    bus.subscribe(JsonRenderer() if json_mode else LineRenderer())
    if banner and not json_mode:
        print(banner, flush=True)
    approver = make_headless_approver(prep.plan.approve, bus)

    async def main() -> Any:
        return await with_signals(lambda: execute(prep, approver, bus, keep_worktrees=keep_worktrees))

    outcome, sig = anyio.run(main)
    if sig is not None or outcome is None:
        return EXIT_INTERRUPTED
    return outcome.exit_code


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
        code = launch(plan, str(repo), args, headless=args.headless, json_mode=args.json, banner=banner)
    finally:
        if not args.keep:
            shutil.rmtree(repo, ignore_errors=True)
        if not args.json:
            print(demo_epilogue(repo, code, args.keep), file=sys.stderr if code == EXIT_INTERRUPTED else sys.stdout)
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
    from corral.core.journal import list_runs

    backend = _open_backend(args.repo)
    runs = list_runs(backend.state_dir)
    if args.json:
        for r in runs:
            print(json.dumps({k: r.get(k) for k in ("run", "state", "started", "ended", "exit_code", "landed",
                                                     "base", "kept_branches")}, default=str))
        return EXIT_OK
    if not runs:
        print(f"no corral runs in {backend.root}")
        return EXIT_OK
    rows = [("run", "started", "state", "ok", "failed", "landed")]
    for r in runs:
        tasks = r.get("tasks", {}).values()
        ok = sum(1 for t in tasks if t.get("status") in ("succeeded", "merged", "rejected"))
        bad = sum(1 for t in tasks if t.get("status") in ("failed", "aborted", "conflict"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"])) if r.get("started") else "-"
        rows.append((r["run"], started, str(r.get("state", "?")), str(ok), str(bad),
                     "yes" if r.get("landed") else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    import anyio

    from corral.core.clean import clean

    backend = _open_backend(args.repo)
    rep = anyio.run(clean, backend, args.dry_run)
    for line in clean_lines(rep, args.dry_run):
        print(line)
    if not rep.items and not rep.killed:
        print(f"nothing to clean in {backend.root}")
    return EXIT_FAILED if rep.failed else EXIT_OK


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
        from corral.core.pipeline import sandbox_policy
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
