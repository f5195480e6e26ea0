"""Fan-out with worktrees, then synthesize: the last pattern of the pi-factory worktree guide, for
corral. Agents implement their parts in parallel, each in its own workspace (git worktree or jj
workspace, whichever the repository uses); then an *integrator* agent, in a fresh workspace at
base, merges every part, runs the test suite and fixes what the integration broke. When it
succeeds and you approve, its result lands on the base branch. Every workspace is removed in
``finally``.

    corral run examples/fanout_integrator.py                                  # dashboard, shell agents
    corral run examples/fanout_integrator.py --headless --approve all --input '{"delay": 0}'
    corral run examples/fanout_integrator.py --input '{"agent": "claude", "test_command": "pytest -q"}'

Input (all optional): ``agent`` (default ``shell``: the demo scripts), ``tasks`` (a list of
``{"name", "task", "system_prompt"?, "script"?}``), ``test_command`` (default: unittest on the
demo's package), ``delay`` (seconds between demo lines).
"""

from _demo_tasks import INSTALL, TEST_COMMAND, demo_tasks, task_text

# The shell integrator: merge every part, then run the tests (its exit code is the tests').
GIT_INTEGRATOR = """set -e
export PYTHONDONTWRITEBYTECODE=1
echo "merging: {refs}"
git merge --no-edit -q {refs}
echo "running the tests: {test}"
{test} 2>&1
"""
JJ_INTEGRATOR = """set -e
export PYTHONDONTWRITEBYTECODE=1
echo "merging: {refs}"
jj new {refs} -m "corral: integrate parallel workstreams"
jj new
echo "running the tests: {test}"
{test} 2>&1
"""

INTEGRATOR_SYSTEM = """You integrate parallel workstreams. You are in a {vcs} workspace at the base revision.
1. Merge all of these into this workspace{how}: {refs}
2. Resolve any conflicts.
3. Run the full test suite: `{test}`.
4. Fix any integration issues until the tests pass.
Do not push. Your last message says whether the tests pass."""


async def run(input, rt):
    agent = input.get("agent") or rt.options.default_agent or "shell"
    demo = agent == "shell"
    delay = float(input.get("delay", 0.3))
    test = input.get("test_command") or TEST_COMMAND
    tasks = input.get("tasks") or demo_tasks()
    jj = rt.backend.kind == "jj"
    workspaces = []
    try:
        # set up the workspaces
        for t in tasks:
            workspaces.append(await rt.workspaces.create(t["name"]))

        # install deps in parallel
        await rt.parallel("deps", [
            {"agent": "installer", "profile": "shell", "task": INSTALL, "cwd": str(ws.path), "step": i}
            for i, ws in enumerate(workspaces)
        ])

        # parallel implementation
        results = await rt.parallel("implement", [
            {"agent": t["name"], "profile": agent, "cwd": str(ws.path), "step": i,
             "system_prompt": t.get("system_prompt", "You are a software engineer."),
             "task": task_text(t, demo, delay)}
            for i, (t, ws) in enumerate(zip(tasks, workspaces))
        ])
        parts = [(r, ws) for r, ws in zip(results, workspaces) if r.exit_code == 0]
        for r in results:
            if r.exit_code != 0:
                rt.observe.log("warning", f"{r.agent} failed (exit {r.exit_code}); left out of the integration")
        if not parts:
            return {"status": "failed", "report": "no part succeeded"}

        # synthesize: merge and verify, in a workspace of its own
        refs = " ".join(ws.head for _, ws in parts) if jj else " ".join(ws.ref for _, ws in parts)
        integration = await rt.workspaces.create("integrator")
        workspaces.append(integration)
        context = "\n\n".join(f"[{r.agent}]\n{r.text}" for r, _ in parts)
        synthesis = await rt.join(rt.spawn({
            "agent": "integrator", "profile": agent, "cwd": str(integration.path), "step": len(tasks),
            "system_prompt": INTEGRATOR_SYSTEM.format(vcs="jj" if jj else "git", refs=refs, test=test,
                                                      how=" (jj new <all of them>)" if jj else " (git merge)"),
            "task": (JJ_INTEGRATOR if jj else GIT_INTEGRATOR).format(refs=refs, test=test) if demo
            else f"Integrate these parallel changes:\n\n{context}",
        }))
        ok = synthesis.exit_code == 0
        landed = False
        if ok and await rt.approve(f"Tests pass on the integration of {len(parts)} part(s). Land it on "
                                   f"{rt.base_name}?", default=False):
            landed = (await rt.workspaces.land(integration)).ok
        report = rt.observe.artifact("integration-report.md", "\n".join(
            [f"# integration: {'tests pass' if ok else 'FAILED'}" + (", landed" if landed else ", not landed"), ""]
            + [f"## {r.agent}\n\n{r.text}\n" for r in results]
            + ["## integrator", "", synthesis.text]))
        return {
            "status": "success" if ok else "integration_failed",
            "parts": [r.agent for r, _ in parts],
            "landed": landed,
            "report": synthesis.text,
            "reportPath": report,
        }
    finally:
        for ws in workspaces:
            await rt.workspaces.remove(ws)
