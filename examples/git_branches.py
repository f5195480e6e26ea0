"""The git pattern of the pi-factory worktree guide, for corral: one git worktree (on its own
branch) per task, agents in parallel, then the branches are merged.

corral's engine merges every branch it can into an integration worktree (the same merge the plan
pipeline does); a branch that conflicts is handed to a *merger* agent, which merges it by hand in
that worktree. After you approve, the result lands on the base branch (fast-forward only, so
nothing of yours is overwritten). Every worktree is removed in ``finally``.

    corral run examples/git_branches.py                                  # dashboard, shell agents
    corral run examples/git_branches.py --headless --approve all --input '{"delay": 0}'
    corral run examples/git_branches.py --input '{"agent": "claude"}'    # real agents

Input (all optional): ``agent`` (profile for every agent; default ``shell``, which runs the demo
scripts below), ``tasks`` (a list of ``{"name", "task", "system_prompt"?, "script"?}``),
``strategy`` (merge | squash | rebase), ``delay`` (seconds between demo lines).
"""

from _demo_tasks import INSTALL, demo_tasks, task_text

# What the merger does with the shell agent: merge each branch, and where it conflicts keep both sides.
MERGER_SCRIPT = r"""
set -e
for b in {branches}; do
  echo "merging $b"
  if ! git merge --no-edit -q "$b"; then
    for f in $(git diff --name-only --diff-filter=U); do
      echo "conflict in $f: keeping both sides"
      {{ git show ":2:$f"; git show ":3:$f"; }} > "$f"
      git add "$f"
    done
    git commit --no-edit -q
  fi
done
echo "merged: {branches}"
"""

MERGER_PROMPT = """You merge git branches from parallel workstreams. You are in a git worktree whose branch
already holds the branches that merged cleanly. Merge each of these branches into it, one by one, with
`git merge <branch>`; resolve conflicts, keeping both changes where possible; commit each merge.
Do not push, do not switch branches.

Branches:
{branches}"""


async def run(input, rt):
    agent = input.get("agent") or rt.options.default_agent or "shell"
    demo = agent == "shell"
    delay = float(input.get("delay", 0.3))
    strategy = input.get("strategy", "merge")
    # the demo tasks all add a line to corral_example/CHANGES.md: their branches conflict there, and
    # the merger agent has something to do
    tasks = input.get("tasks") or demo_tasks(changelog=True)
    workspaces = []
    try:
        # 1. one worktree per task, each on its own branch (corral/<run>/<task>) from base
        for t in tasks:
            ws = await rt.workspaces.create(t["name"])
            workspaces.append(ws)
            rt.observe.log("info", f"created worktree {t['name']}", path=str(ws.path), branch=ws.ref)

        # 2. install dependencies in each worktree
        await rt.parallel("install-deps", [
            {"agent": "installer", "profile": "shell", "task": INSTALL, "cwd": str(ws.path), "step": i}
            for i, ws in enumerate(workspaces)
        ])

        # 3. the agents, in parallel, each in its worktree
        results = await rt.parallel("worktree-agents", [
            {
                "agent": t["name"], "profile": agent, "cwd": str(ws.path), "step": i,
                "system_prompt": t.get("system_prompt", "Implement the requested changes."),
                "task": task_text(t, demo, delay),
            }
            for i, (t, ws) in enumerate(zip(tasks, workspaces))
        ])
        failed = [r.agent for r in results if r.exit_code != 0]
        if failed:
            rt.observe.log("warning", "some agents failed", failed=failed)
        done = [ws for ws, r in zip(workspaces, results) if r.exit_code == 0]
        if not done:
            return {"status": "failed", "completed": 0, "failed": len(failed)}

        # 4. merge the branches: corral merges what merges cleanly, the merger agent does the rest
        forecast = await rt.workspaces.forecast(done)
        for (a, b), files in forecast.conflicts.items():
            rt.observe.log("info", f"forecast: {a} and {b} conflict", files=files)
        integration, outcomes = await rt.workspaces.merge(done, strategy=strategy)
        workspaces.append(integration)
        conflicted = [ws.ref for ws, o in zip(done, outcomes) if not o.ok]
        merger = None
        if conflicted:
            rt.observe.log("info", f"{len(conflicted)} branch(es) conflict: the merger agent takes them")
            branch_list = "\n".join(f"- {b}" for b in conflicted)
            merger = await rt.join(rt.spawn({
                "agent": "merger", "profile": agent, "cwd": str(integration.path), "step": len(tasks),
                "task": MERGER_SCRIPT.format(branches=" ".join(conflicted)) if demo
                else MERGER_PROMPT.format(branches=branch_list),
            }))
            if merger.exit_code != 0:
                raise RuntimeError(f"the merger failed (exit {merger.exit_code}); the merge so far is kept on "
                                   f"branch {integration.ref}")

        # 5. land on base, if the person at the dashboard (or --approve) says so
        landed = False
        if await rt.approve(f"Land {len(done)} branch(es) onto {rt.base_name}?", default=False):
            landed = (await rt.workspaces.land(integration)).ok

        # 6. the report
        lines = [f"# {len(done)} of {len(tasks)} branches merged" + (", landed" if landed else ", not landed"), ""]
        for r in results:
            lines += [f"## {r.agent}", f"**Status:** {'ok' if r.exit_code == 0 else 'failed'}, "
                      f"files: {', '.join(r.files) or '-'}", "", r.text, ""]
        if merger is not None:
            lines += ["## merger", f"resolved: {', '.join(conflicted)}", "", merger.text, ""]
        report = rt.observe.artifact("worktree-report.md", "\n".join(lines))
        return {
            "status": "complete" if not failed and landed else "partial",
            "completed": len(done),
            "failed": len(failed),
            "merged_by_corral": [o.task for o in outcomes if o.ok],
            "merged_by_merger": [ws.task for ws, o in zip(done, outcomes) if not o.ok],
            "landed": landed,
            "reportPath": report,
            "totalCost": sum(r.usage.cost or 0 for r in results),
        }
    finally:
        # 7. cleanup, always: remove every worktree (branches holding unlanded work are kept)
        for ws in workspaces:
            await rt.workspaces.remove(ws)
            rt.observe.log("info", f"removed worktree {ws.task}", path=str(ws.path))
