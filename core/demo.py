"""``corral demo``: a scratch repository with a small real project, and a plan of scripted shell
agents that shows every step of a run: separate edits that land, a failure, and two tasks that
touch the same lines (so the forecast and the conflict path show; ``R`` on the conflict in the review
hands it to a scripted resolver that keeps both)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .agents import profile_from_table
from .plan import Plan, TaskSpec

FILES = {
    "README.md": "# calc\n\nA tiny calculator, used by the corral demo.\n",
    "calc/__init__.py": '"""A tiny calculator."""\n',
    "calc/ops.py": "def add(a, b):\n    return a + b\n",
    "calc/greet.py": 'def greeting():\n    return "hello"\n',
    "tests/__init__.py": "",
    "tests/test_ops.py": (
        "import unittest\n\nfrom calc.ops import add\n\n\n"
        "class OpsTest(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"
    ),
    ".gitignore": "__pycache__/\n*.pyc\n",
}

# Each script is what a scripted "agent" does: it talks a little (slowly, so the dashboard shows it
# streaming), then edits files in its workspace. corral commits what it leaves.
_MUL = r"""
echo "Reading calc/ops.py"; sleep {d}
echo "Plan: add mul() in calc/mul.py with a test"; sleep {d}
cat > calc/mul.py <<'EOF'
def mul(a, b):
    return a * b
EOF
echo "Wrote calc/mul.py"; sleep {d}
cat > tests/test_mul.py <<'EOF'
import unittest

from calc.mul import mul


class MulTest(unittest.TestCase):
    def test_mul(self):
        self.assertEqual(mul(4, 5), 20)
EOF
echo "Wrote tests/test_mul.py"; sleep {d}
echo "Done: mul() added with a test."
"""

_DOCS = r"""
echo "Looking at the project layout"; sleep {d}
mkdir -p docs
for section in Install Usage Testing; do
  echo "Writing section: $section"; sleep {d}
  printf '## %s\n\nSee README.md.\n\n' "$section" >> docs/guide.md
done
echo "Done: docs/guide.md written (3 sections)."
"""

_FLAKY = r"""
echo "Trying to upgrade the build system"; sleep {d}
echo "Downloading toolchain..."; sleep {d}
echo "error: toolchain mirror unreachable" >&2; sleep {d}
exit 3
"""

_GREET = r"""
echo "Changing the greeting to {word}"; sleep {d}
sed -i 's/"hello"/"{word}"/' calc/greet.py
echo "Edited calc/greet.py"; sleep {d}
echo "Done: greeting() now says {word}."
"""


#: the demo's resolver agent (``R`` on the conflict in the review): keeps both greetings
_RESOLVE = r"""
echo "Resolving the conflict in calc/greet.py"; sleep {d}
printf 'def greeting():\n    return "hi there / bonjour"\n' > calc/greet.py
git add calc/greet.py && git commit -q --no-edit
echo "Kept both greetings: hi there / bonjour"
"""


def demo_plan(delay: float = 0.4, python: str | None = None) -> Plan:
    d = f"{delay:g}"
    py = python or sys.executable
    tasks = [
        TaskSpec("add-mul", _MUL.format(d=d), "shell", "You are a careful Python engineer."),
        TaskSpec("write-docs", _DOCS.format(d=d), "shell"),
        TaskSpec("upgrade-build", _FLAKY.format(d=d), "shell"),
        TaskSpec("greet-en", _GREET.format(d=d, word="hi there"), "shell"),
        TaskSpec("greet-fr", _GREET.format(d=d, word="bonjour"), "shell"),
    ]
    resolver = {"command": ["sh", "-c", _RESOLVE.format(d=d)], "format": "text"}
    plan = Plan(
        tasks=tasks,
        agent="shell",
        setup="none",
        verify=f"{py} -m unittest discover -s tests -q",
        approve="all",
        resolver="demo-resolver",
        source="demo",
    )
    plan.agents["demo-resolver"] = profile_from_table("demo-resolver", resolver, None)
    plan.agent_tables["demo-resolver"] = resolver
    return plan


def make_demo_repo(parent: str | None = None) -> Path:
    """A fresh git repository in a private temp dir with the demo project committed on ``main``."""
    root = Path(tempfile.mkdtemp(prefix="corral-demo-", dir=parent))
    for rel, text in FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       start_new_session=True)

    git("init", "-q", "-b", "main")
    git("config", "user.name", "corral demo")
    git("config", "user.email", "demo@corral.invalid")
    git("config", "commit.gpgsign", "false")
    git("add", "-A")
    git("commit", "-q", "-m", "calc: initial project")
    return root
