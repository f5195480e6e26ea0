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

# The demo tasks. Each has a prompt for a real agent and a script for the `shell` agent that does the
# same thing. All of them also add a line to corral_example/CHANGES.md, so their branches conflict
# there and the merger agent has something to do.
TASKS = [
    {
        "name": "slugify",
        "task": "Create corral_example/slugify.py defining slugify(text) -> str (lowercase; runs of characters "
                "other than a-z and 0-9 become one '-'; no leading or trailing '-') and corral_example/"
                "test_slugify.py with unittest tests for it. Create corral_example/__init__.py (empty) if "
                "it is missing. Append the line '- slugify()' to corral_example/CHANGES.md. Touch nothing else.",
        "script": r"""
echo "Planning slugify()"; sleep {d}
mkdir -p corral_example && : > corral_example/__init__.py
cat > corral_example/slugify.py <<'PY'
import re


def slugify(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
PY
echo "Wrote corral_example/slugify.py"; sleep {d}
cat > corral_example/test_slugify.py <<'PY'
import unittest

from corral_example.slugify import slugify


class SlugifyTest(unittest.TestCase):
    def test_slugify(self):
        self.assertEqual(slugify("Hello, World!"), "hello-world")
PY
echo "- slugify()" >> corral_example/CHANGES.md
echo "Done: slugify() with a test."
""",
    },
    {
        "name": "wordcount",
        "task": "Create corral_example/wordcount.py defining wordcount(text) -> dict mapping each lowercase "
                "word to its count, and corral_example/test_wordcount.py with unittest tests for it. Create "
                "corral_example/__init__.py (empty) if it is missing. Append the line '- wordcount()' to "
                "corral_example/CHANGES.md. Touch nothing else.",
        "script": r"""
echo "Planning wordcount()"; sleep {d}
mkdir -p corral_example && : > corral_example/__init__.py
cat > corral_example/wordcount.py <<'PY'
def wordcount(text):
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts
PY
echo "Wrote corral_example/wordcount.py"; sleep {d}
cat > corral_example/test_wordcount.py <<'PY'
import unittest

from corral_example.wordcount import wordcount


class WordcountTest(unittest.TestCase):
    def test_wordcount(self):
        self.assertEqual(wordcount("a b A"), {"a": 2, "b": 1})
PY
echo "- wordcount()" >> corral_example/CHANGES.md
echo "Done: wordcount() with a test."
""",
    },
    {
        "name": "roman",
        "task": "Create corral_example/roman.py defining roman(n) -> str (Roman numeral of 1 <= n <= 3999) and "
                "corral_example/test_roman.py with unittest tests for it. Create corral_example/__init__.py "
                "(empty) if it is missing. Append the line '- roman()' to corral_example/CHANGES.md. Touch "
                "nothing else.",
        "script": r"""
echo "Planning roman()"; sleep {d}
mkdir -p corral_example && : > corral_example/__init__.py
cat > corral_example/roman.py <<'PY'
NUMERALS = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
            (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]


def roman(n):
    out = ""
    for value, letters in NUMERALS:
        while n >= value:
            out += letters
            n -= value
    return out
PY
echo "Wrote corral_example/roman.py"; sleep {d}
cat > corral_example/test_roman.py <<'PY'
import unittest

from corral_example.roman import roman


class RomanTest(unittest.TestCase):
    def test_roman(self):
        self.assertEqual(roman(1994), "MCMXCIV")
PY
echo "- roman()" >> corral_example/CHANGES.md
echo "Done: roman() with a test."
""",
    },
]

INSTALL = r"""
if [ -f requirements.txt ]; then echo "installing requirements.txt"; python3 -m pip install -q -r requirements.txt
elif [ -f package-lock.json ]; then echo "npm ci"; npm ci
else echo "no dependencies to install"; fi
"""

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
    tasks = input.get("tasks") or TASKS
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
                "system_prompt": t.get("system_prompt", "Implement the requested changes. Commit your work when done."),
                "task": t["script"].replace("{d}", str(delay)) if demo and t.get("script") else t["task"],
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
