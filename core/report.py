"""``report.md``: what a run did, per task, with totals at the top."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import RunState
    from .plan import Plan
    from .runtime import Runtime


def printable(text: str) -> str:
    """``text`` as valid UTF-8 for a file: what git gave that is not (a file name in another
    encoding, decoded with surrogate escapes) written the way git quotes it, ``\\xff``; any other
    lone surrogate (an agent's JSON can hold one) as ``\\udXXX``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def fmt_cost(cost: float | None) -> str:
    return "-" if cost is None else f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


def fmt_tokens(tokens: int | None) -> str:
    if not tokens:
        return "-"
    if tokens < 1000:
        return str(tokens)
    if tokens < 1_000_000:
        return f"{tokens / 1000:.1f}k"
    return f"{tokens / 1_000_000:.2f}M"


def fmt_usage(cost: float | None, tokens: int | None) -> str:
    """Cost where the agent reports it, tokens otherwise (codex, gemini): ``$0.0123`` / ``24.9k tokens``."""
    if cost is not None:
        return fmt_cost(cost)
    return f"{fmt_tokens(tokens)} tokens" if tokens else "-"


def render_report(rt: "Runtime", plan: "Plan", state: "RunState", outcome: Any, kept: list[str]) -> str:
    tasks = list(rt.tasks.values())
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.status] = counts.get(t.status, 0) + 1
    costs = [t.result.usage.cost for t in tasks if t.result and t.result.usage.cost is not None]
    tokens = sum(t.result.usage.tokens for t in tasks if t.result)
    lines = [
        f"# corral run {rt.run_id}",
        "",
        f"- repository: `{rt.backend.root}` ({rt.backend.kind})",
        f"- base: `{rt.base_name}` at `{rt.base_commit[:12]}`",
        f"- started: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rt.started))}, "
        f"took {fmt_duration(time.time() - rt.started)}",
        f"- outcome: **{outcome.state}** (exit code {outcome.exit_code})",
        f"- tasks: {len(tasks)} (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")",
        f"- total cost: {fmt_cost(sum(costs)) if costs else '-'}" + (f", {tokens} tokens" if tokens else ""),
        f"- merge strategy: {plan.merge}; verify: {('`' + plan.verify + '`') if plan.verify else 'none'}",
    ]
    if state.verify_ok is not None:
        lines.append(f"- verify: {'passed' if state.verify_ok else 'FAILED'}")
    if state.verify_runs:
        lines.append(f"- verify failed on the merge of every approved task: bisected in {state.verify_runs} "
                     f"verify runs; verify-failed: {', '.join(state.verify_failed)}")
    if state.landed is True:
        lines.append(f"- landed: yes ({state.land_message or 'nothing to move'})")
    elif state.landed is False or state.integration_kept:
        lines.append(f"- landed: no ({state.land_message or 'verify failed'})")
    else:
        lines.append("- landed: no (nothing to land)")
    if state.error:
        lines.append(f"- error: {state.error}")
    if kept:
        lines += ["", "## Branches kept (work not merged)", ""]
        lines += [f"- `{ref}`" for ref in kept]
    if state.workspaces_left:
        lines += ["", "## Workspaces left in place (they hold changes corral could not commit)", ""]
        lines += [f"- `{p}`" for p in state.workspaces_left]
    for name, output in state.verify_failed.items():
        lines += ["", f"## Verify failed with {name} merged", "", "```text", *output, "```"]
    lines += render_tasks(rt)
    return "\n".join(lines) + "\n"


def render_tasks(rt: "Runtime", title: str = "Tasks") -> list[str]:
    """The per-task part of a report (a table, then one section per task): plans and programs share it."""
    tasks = list(rt.tasks.values())
    lines = ["", f"## {title}", "", "| task | agent | status | duration | cost | files | merged |",
             "|---|---|---|---|---|---|---|"]
    for t in tasks:
        files = len(t.snapshot.files) if t.snapshot else 0
        lines.append(
            f"| {t.name} | {t.agent} | {t.status}{(' (' + t.reason + ')') if t.reason else ''} | "
            f"{fmt_duration(t.result.duration if t.result else None)} | "
            f"{fmt_usage(t.result.usage.cost, t.result.usage.tokens) if t.result else '-'} | {files} | "
            f"{'yes' if t.merged else 'no'} |"
        )
    for t in tasks:
        lines += ["", f"### {t.name}", ""]
        lines.append(f"- status: {t.status}" + (f" ({t.reason})" if t.reason else ""))
        if t.result and (t.result.usage.cost is not None or t.result.usage.tokens):
            u = t.result.usage
            lines.append("- usage: " + ", ".join(x for x in (
                fmt_cost(u.cost) if u.cost is not None else "",
                f"{u.tokens} tokens ({u.input_tokens} in, {u.output_tokens} out)" if u.tokens else "") if x))
        if t.workspace:
            lines.append(f"- branch: `{t.workspace.ref}`" + (" (kept)" if t.branch_kept else " (deleted)"))
        if t.snapshot:
            lines.append(f"- commit: `{t.snapshot.commit[:12]}`, +{t.snapshot.added} -{t.snapshot.removed}")
            if t.snapshot.files:
                lines.append("- files changed: " + ", ".join(f"`{f}`" for f in t.snapshot.files[:50])
                             + (f" and {len(t.snapshot.files) - 50} more" if len(t.snapshot.files) > 50 else ""))
        if t.snapshot and t.snapshot.extra_refs:
            lines.append("- other commits made in its workspace (not merged), kept on: "
                         + ", ".join(f"`{r}`" for r in t.snapshot.extra_refs))
        if t.snapshot and t.snapshot.uncommitted:
            lines.append("- changes corral could not commit, left in the workspace: "
                         + ", ".join(f"`{f}`" for f in t.snapshot.uncommitted[:20]))
        if t.conflict_files:
            lines.append("- conflicts in: " + ", ".join(f"`{f}`" for f in t.conflict_files))
        if t.result and t.result.text.strip():
            lines += ["", "Final text:", "", "```text", t.result.text.strip()[:4000], "```"]
    return lines
