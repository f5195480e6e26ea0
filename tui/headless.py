"""Headless renderers of the engine's event stream: plain lines, or one JSON object per line."""

from __future__ import annotations

import codecs
import json
import sys
from typing import TextIO

import anyio
import anyio.to_thread

from corral.core.events import (
    Event,
    ForecastEvent,
    Landed,
    LogEvent,
    MergeEvent,
    Output,
    PhaseChanged,
    ReviewDecision,
    RunFinished,
    RunStarted,
    TaskActivity,
    TaskFinished,
    WorkRecorded,
    TaskOutput,
    TaskStatus,
    VerifyOutput,
    VerifyResult,
    wire_dict,
)
from corral.core.report import fmt_cost, fmt_duration, fmt_usage
from corral.core.runtime import Runtime, TaskInfo
from corral.core.vcs.base import Forecast


class LineRenderer:
    """``[task] line`` for agent output, ``corral: ...`` for engine events, a summary table at the end."""

    def __init__(self, out: TextIO | None = None, verbose: bool = False) -> None:
        self.out = out or sys.stdout
        self.verbose = verbose

    def __call__(self, ev: Event) -> None:
        w = self.out.write
        if isinstance(ev, (TaskOutput, VerifyOutput)):
            prefix = f"[{ev.task}] " if isinstance(ev, TaskOutput) else "[verify] "
            if ev.lines or ev.text or ev.data:
                self._write_block(prefix, ev)
            return
        text = self.describe(ev)
        if text is not None:
            w(f"corral: {text}\n")
        if isinstance(ev, RunFinished):
            w(self.summary(ev))
        self.out.flush()

    def _write_block(self, prefix: str, ev: Output) -> None:
        """The event's lines with ``prefix`` before each: prefixed at C speed and never split. Where
        the stream has a UTF-8 byte buffer under it, as bytes (a bytes replace is three times as fast
        as a str one, and a flood's blocks are large): a block that came as bytes is neither decoded
        nor copied but by the prefixing (the first line's prefix goes as a write of its own)."""
        buffer = getattr(self.out, "buffer", None)
        if buffer is None or codecs.lookup(getattr(self.out, "encoding", None) or "ascii").name != "utf-8":
            block = ev.block()
            self.out.write(prefix + block[:-1].replace("\n", "\n" + prefix) + "\n")
            return
        self.out.flush()  # (what was written as text goes first)
        errors = self.out.errors or "strict"
        tag = prefix.encode("utf-8", errors)
        data = (ev.data or ev.block().encode("utf-8", errors)).replace(b"\n", b"\n" + tag)
        buffer.write(tag)
        buffer.write(memoryview(data)[: len(data) - len(tag)])  # (no prefix after the last line)
        if getattr(self.out, "line_buffering", False):  # (a terminal: as the text layer would)
            buffer.flush()

    def describe(self, ev: Event) -> str | None:
        if isinstance(ev, RunStarted):
            return (f"run {ev.run} on {ev.repo} ({ev.backend}), base {ev.base} at {ev.base_commit[:12]}, "
                    f"{len(ev.tasks)} task(s); state in {ev.run_dir}")
        if isinstance(ev, PhaseChanged):
            return f"phase: {ev.phase}"
        if isinstance(ev, TaskStatus):
            extra = f" ({ev.reason})" if ev.reason else ""
            where = f" in {ev.workspace}" if ev.status == "setup" and ev.workspace else ""
            return f"{ev.task}: {ev.status}{extra}{where}"
        if isinstance(ev, TaskFinished):
            cost = f", {fmt_usage(ev.cost, ev.tokens)}" if ev.cost is not None or ev.tokens else ""
            return (f"{ev.task}: agent exited with {ev.exit_code} after {fmt_duration(ev.duration)}{cost}; "
                    f"{len(ev.files)} file(s) changed (+{ev.added} -{ev.removed})")
        if isinstance(ev, TaskActivity):
            return f"{ev.task}: {ev.text}" if self.verbose and ev.text else None
        if isinstance(ev, WorkRecorded):
            return work_line(ev)
        if isinstance(ev, ForecastEvent):
            parts = []
            if ev.conflicts_with:
                parts.append("would conflict with " + ", ".join(ev.conflicts_with))
            if ev.conflicts_with_base:
                parts.append("would conflict with base")
            if ev.untried_with:
                parts.append(f"not trial-merged with {len(ev.untried_with)} task(s) touching the same files "
                             f"(too many tasks share them): {_some(ev.untried_with)}")
            files = ", ".join(ev.files[:6]) + (" ..." if len(ev.files) > 6 else "")
            return f"forecast {ev.task}: {len(ev.files)} file(s) [{files}]; " + ("; ".join(parts) or "merges cleanly")
        if isinstance(ev, ReviewDecision):
            return f"{ev.task}: {'approved' if ev.approved else 'not approved'}"
        if isinstance(ev, MergeEvent):
            if ev.ok:
                return f"merged {ev.task} ({ev.strategy})"
            return f"{ev.task}: CONFLICT merging ({ev.strategy}) in {', '.join(ev.conflict_files)}; left out"
        if isinstance(ev, VerifyResult):
            return f"verify {'passed' if ev.ok else 'FAILED'} (exit {ev.exit_code}, {fmt_duration(ev.duration)})"
        if isinstance(ev, Landed):
            return ("landed: " if ev.ok else "not landed: ") + ev.message
        if isinstance(ev, LogEvent):
            if ev.level == "debug" and not self.verbose:
                return None
            prefix = f"{ev.task}: " if ev.task else ""
            level = "" if ev.level == "info" else f"{ev.level}: "
            return f"{level}{prefix}{ev.message}"
        if isinstance(ev, RunFinished):
            return f"run {ev.run} {ev.state} (exit {ev.exit_code}); report: {ev.report}"
        return None

    def summary(self, ev: RunFinished) -> str:
        rows = [("task", "agent", "status", "time", "cost", "files", "branch kept")]
        for r in ev.summary:
            rows.append((r["task"], r["agent"], r["status"], fmt_duration(r["duration"]),
                         fmt_usage(r["cost"], r.get("tokens")),
                         str(r["files"]), r["branch"] or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["", "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows[1:]]
        tokens = getattr(ev, "tokens", None)
        if ev.cost is not None:
            lines.append(f"total cost: {fmt_cost(ev.cost)}" + (f" ({tokens} tokens)" if tokens else ""))
        elif tokens:
            lines.append(f"total tokens: {tokens}")
        return "\n".join(lines) + "\n"


def _some(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


class JsonRenderer:
    """One JSON object per event per line (``--json``)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, (TaskOutput, VerifyOutput)):
            # one object per output line, so consumers need not know about batching
            data = wire_dict(ev)
            lines = data.pop("lines")
            self.out.write("".join(json.dumps({**data, "line": line}, ensure_ascii=False) + "\n" for line in lines))
            return
        self.out.write(json.dumps(ev.to_dict(), default=str, ensure_ascii=False) + "\n")
        self.out.flush()


class TerminalApprover:
    """``--approve ask`` in headless mode with a terminal: asks on stdin/stderr."""

    async def _yes(self, question: str, default: bool) -> bool:
        hint = "[Y/n]" if default else "[y/N]"

        def ask() -> bool:
            sys.stderr.write(f"{question} {hint} ")
            sys.stderr.flush()
            try:
                answer = sys.stdin.readline()
            except (OSError, ValueError):
                return default
            answer = answer.strip().lower()
            return default if not answer else answer in ("y", "yes")

        return await anyio.to_thread.run_sync(ask, abandon_on_cancel=True)

    async def review(self, rt: Runtime, candidates: list[TaskInfo], forecast: Forecast) -> dict[str, bool]:
        out = {}
        for t in candidates:
            files = len(t.snapshot.files) if t.snapshot else 0
            clash = forecast.conflicts_of(t.name)
            note = f"; would conflict with {', '.join(sorted(clash))}" if clash else ""
            if t.status != "succeeded":  # an aborted agent's partial work, or an attempt that failed
                note += f"; {t.status}: its work as it was left"
            untried = forecast.untried_of(t.name)
            if untried:
                note += f"; not trial-merged with {len(untried)} task(s) touching the same files"
            out[t.name] = await self._yes(f"approve {t.name} ({files} file(s) changed{note})?", False)
        return out

    async def confirm_land(self, rt: Runtime, message: str) -> bool:
        return await self._yes(message, True)

    async def ask(self, rt: Runtime, question: str, default: bool) -> bool:
        return await self._yes(question, default)


def work_line(ev: WorkRecorded) -> str:
    """One line on a task's work recorded after its agent exited (headless output, the event log)."""
    text = f"{ev.task}: {ev.note or 'work recorded'}; now {len(ev.files)} file(s) changed (+{ev.added} -{ev.removed})"
    if ev.extra_refs:
        text += "; other commits made in its workspace kept on " + ", ".join(ev.extra_refs)
    if ev.uncommitted:
        text += "; NOT committed (workspace kept): " + ", ".join(ev.uncommitted[:5])
    return text
