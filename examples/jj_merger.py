"""The jj pattern of the pi-factory worktree guide, for corral: one jj workspace per task, agents
in parallel, then a *merger* agent combines every change into one merge commit with jj. After you
approve, the merge lands on the base bookmark. Every workspace is removed (forgotten and its
directory deleted) in ``finally``.

Needs a jj repository (``jj git init --colocate`` turns a git repository into one).

    corral run examples/jj_merger.py                                   # dashboard, shell agents
    corral run examples/jj_merger.py --headless --approve all --input '{"delay": 0}'
    corral run examples/jj_merger.py --input '{"agent": "claude"}'     # real agents

Input (all optional): ``agent`` (default ``shell``: the demo scripts), ``tasks`` (a list of
``{"name", "task", "system_prompt"?, "script"?}``), ``delay`` (seconds between demo lines).
"""

from _demo_tasks import INSTALL, demo_tasks, task_text

# The shell merger: one merge commit whose parents are every successful change.
MERGER_SCRIPT = """set -e
echo "changes to merge: {revs}"
jj log --no-graph -r '{revset}' -T 'change_id.short() ++ " " ++ description.first_line() ++ "\\n"'
jj new {revs} -m "corral: merge {n} parallel workstreams"
jj new
jj log --no-graph -r @- -T 'commit_id.short() ++ " " ++ description.first_line() ++ "\\n"'
echo "merged {n} change(s)"
"""

MERGER_SYSTEM = """You merge parallel workstream results using jj.
You are in a jj workspace of its own, at the base revision. Use 'jj log' to see the changes.
Create a merge commit that combines all the successful changes (jj new <all of them> -m "...").
Resolve any conflicts if they arise (jj resolve, or edit the files), then run `jj new` so that the
merge is a finished change. Do not push, do not move bookmarks."""


async def run(input, rt):
    if rt.backend.kind != "jj":
        raise RuntimeError(f"{rt.repo} is not a jj repository: run `jj git init --colocate` in it first, "
                           "or use examples/git_branches.py")
    agent = input.get("agent") or rt.options.default_agent or "shell"
    demo = agent == "shell"
    delay = float(input.get("delay", 0.3))
    tasks = input.get("tasks") or demo_tasks()
    workspaces = []
    try:
        # 1. create the workspaces
        for t in tasks:
            ws = await rt.workspaces.create(t["name"])
            workspaces.append(ws)
            rt.observe.log("info", f"created workspace {t['name']}", path=str(ws.path))

        # 2. install dependencies in each workspace
        await rt.parallel("install-deps", [
            {"agent": "installer", "profile": "shell", "task": INSTALL, "cwd": str(ws.path), "step": i}
            for i, ws in enumerate(workspaces)
        ])

        # 3. dispatch the agents in parallel
        results = await rt.parallel("worktree-agents", [
            {"agent": t["name"], "profile": agent, "cwd": str(ws.path), "step": i,
             "system_prompt": t.get("system_prompt", "You are a software engineer. Implement the requested "
                                                     "changes. Run tests to verify your work."),
             "task": task_text(t, demo, delay)}
            for i, (t, ws) in enumerate(zip(tasks, workspaces))
        ])

        # 4. check the results
        failed = [r for r in results if r.exit_code != 0]
        if failed:
            rt.observe.log("warning", "some agents failed", failed=[r.agent for r in failed])
        done = [ws for ws, r in zip(workspaces, results) if r.exit_code == 0]
        if not done:
            return {"status": "failed", "completed": 0, "failed": len(failed)}

        # 5. merge: each workspace's work is a jj change (corral committed it); the merger combines them
        revs = " ".join(ws.head for ws in done)
        merge_ws = await rt.workspaces.create("merge")
        workspaces.append(merge_ws)
        merger = await rt.join(rt.spawn({
            "agent": "merger", "profile": agent, "cwd": str(merge_ws.path), "step": len(tasks),
            "system_prompt": MERGER_SYSTEM,
            "task": MERGER_SCRIPT.format(revs=revs, revset=" | ".join(ws.head for ws in done), n=len(done)) if demo
            else (f"Merge changes from {len(done)} parallel workstreams: {revs}\n"
                  f"Failed agents: {', '.join(r.agent for r in failed) or 'none'}\n"
                  "Combine them into one merge commit in this workspace."),
        }))
        if merger.exit_code != 0:
            raise RuntimeError(f"the merger failed (exit {merger.exit_code}): {merger.text[-500:]}")

        # 6. land, if approved
        landed = False
        if await rt.approve(f"Land the merge of {len(done)} change(s) onto {rt.base_name}?", default=False):
            landed = (await rt.workspaces.land(merge_ws)).ok

        # 7. write the summary
        summary = "\n\n---\n\n".join(
            f"## {r.agent}\n**Status:** {'ok' if r.exit_code == 0 else 'failed'}\n\n{r.text}" for r in results)
        report = rt.observe.artifact("worktree-report.md", summary + f"\n\n---\n\n## merger\n\n{merger.text}\n")
        return {
            "status": "success" if not failed else "partial",
            "completed": len(done),
            "failed": len(failed),
            "landed": landed,
            "reportPath": report,
            "totalCost": sum(r.usage.cost or 0 for r in results) + (merger.usage.cost or 0),
        }
    finally:
        # 8. cleanup, always: forget every workspace and delete its directory (corral keeps the
        #    changes: jj never loses a commit)
        for ws in workspaces:
            await rt.workspaces.remove(ws)
            rt.observe.log("info", f"cleaned up workspace {ws.task}", path=str(ws.path))
