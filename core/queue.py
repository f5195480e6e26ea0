"""The merge queue's verify step: a merge whose verify fails is bisected (``on_verify_fail =
"bisect"``) to land the largest set of approved tasks whose merge passes, as a bisecting merge queue
does, rather than letting one bad task hold back every good one.

:func:`largest_passing` is the search alone (which subsets to try, in which order); :func:`verify_merge`
runs it on the runtime: each subset merged into a fresh integration workspace and verified there.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence, TypeVar

from .events import VerifyOutput, VerifyResult
from .procs import Supervised
from .runtime import Runtime, TaskInfo
from .vcs.base import Workspace

T = TypeVar("T")

#: lines of a verify run's output kept for the report of a task it failed on
OUTPUT_TAIL = 40


async def largest_passing(items: Sequence[T], passes: Callable[[list[T]], Awaitable[bool]]) -> list[T]:
    """The largest subset of ``items`` (in their order) that ``passes``, given that all of them
    together do not: split the candidates in halves and try the first on top of what passed so far;
    a half that passes joins it, a half that fails is split again. One culprit among N costs at most
    2·log2(N) calls; each further culprit about as many again."""
    async def search(good: list[T], candidates: list[T]) -> list[T]:
        # ``good`` passes (or is empty) and ``good + candidates`` fails
        if len(candidates) == 1:
            return good
        half = len(candidates) // 2
        first, second = candidates[:half], candidates[half:]
        if await passes(good + first):
            return await search(good + first, second)
        good = await search(good, first)
        if await passes(good + second):
            return good + second
        return await search(good, second)

    return await search([], list(items)) if items else []


@dataclass
class VerifyRun:
    """One run of the verify command on one merge."""

    tasks: list[str]
    integration: Workspace
    ok: bool
    exit_code: int | None
    output: list[str] = field(default_factory=list)


async def run_verify(rt: Runtime, command: str, integ: Workspace, tasks: list[str], header: str = "") -> VerifyRun:
    """Run ``command`` in ``integ`` (sandboxed as the plan says), its output in the verify pane (after
    ``header``, when given) and in ``verify.log``; announce its result."""
    bus = rt.bus
    start = time.monotonic()
    if header:
        bus.emit(VerifyOutput(lines=[header]))
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)

    def on_lines(lines: list[str]) -> None:
        tail.extend(lines)
        bus.emit(VerifyOutput(lines=lines))

    env = rt.child_env("verify", str(integ.path))
    argv = rt.sandboxed(["sh", "-c", command], rt.options.sandbox.resolve(""), str(integ.path), env, commits=False)
    proc = Supervised(argv, cwd=integ.path, env=env, on_lines=on_lines, log_path=rt.journal.logs / "verify.log",
                      grace=rt.options.grace)
    res = await proc.run()
    ok = res.exit_code == 0
    bus.emit(VerifyResult(ok=ok, exit_code=res.exit_code, command=command, duration=time.monotonic() - start,
                          tasks=tasks))
    return VerifyRun(tasks, integ, ok, res.exit_code, list(tail))


@dataclass
class Bisection:
    """What bisecting a failing merge found: the verified merge to land (None: no subset passed),
    the tasks it holds, and for each task left out the failing verify run that last held it."""

    run: VerifyRun | None
    landed: list[TaskInfo]
    failed: dict[str, VerifyRun]
    runs: int


async def bisect(rt: Runtime, command: str, strategy: str, merged: list[TaskInfo], first: VerifyRun) -> Bisection:
    """``first`` (the merge of every task of ``merged``) failed: merge and verify subsets of them,
    each in a fresh integration workspace, until the largest that passes is found. The workspaces of
    the other subsets are removed with their branches (the tasks' own branches hold their work)."""
    last_failed = {name: first for name in first.tasks}
    best: list[VerifyRun] = []
    count = [1]

    async def passes(subset: list[TaskInfo]) -> bool:
        names = [t.name for t in subset]
        count[0] += 1
        integ, outcomes = await rt.workspaces.merge([(t.name, t.workspace.head) for t in subset if t.workspace],
                                                    strategy)
        header = f"verify {count[0]} (bisecting {len(merged)} tasks): tasks {', '.join(names)}"
        if all(o.ok for o in outcomes):
            run = await run_verify(rt, command, integ, names, header)
        else:  # merged together, these conflicted in this order: not a set that can land
            bad = [o.task for o in outcomes if not o.ok]
            rt.bus.emit(VerifyOutput(lines=[header, f"corral: merging them conflicts ({', '.join(bad)}): not verified"]))
            run = VerifyRun(names, integ, False, None, [f"merging {', '.join(names)} conflicts"])
        if run.ok:
            for old in best:
                await rt.workspaces.remove(old.integration, keep_branch=False)
            best[:] = [run]
        else:
            last_failed.update({name: run for name in names})
            await rt.workspaces.remove(integ, keep_branch=False)
        return run.ok

    landed = await largest_passing(merged, passes)
    kept = {t.name for t in landed}
    return Bisection(best[0] if best else None, landed,
                     {t.name: last_failed[t.name] for t in merged if t.name not in kept}, count[0])
