"""The demo tasks the example programs share (imported by them: a program may import modules that
sit next to it).

Each task has a prompt (``task``) for a real agent and a ``script`` for the ``shell`` agent that
does the same thing, so every example runs as a demo without any agent CLI installed. The tasks
add small, independent Python modules with unittest tests under ``corral_example/``, so they work
in any repository; the integrator runs those tests.
"""

TEST_COMMAND = "python3 -m unittest discover -s corral_example -t ."

_COMMON = ("Create corral_example/__init__.py (empty) if it is missing.{changelog} Touch nothing else. "
           "(corral commits whatever you leave uncommitted.)")

_SPECS = [
    (
        "slugify",
        "Create corral_example/slugify.py defining slugify(text) -> str (lowercase; runs of characters other "
        "than a-z and 0-9 become one '-'; no leading or trailing '-') and corral_example/test_slugify.py with "
        "unittest tests for it.",
        r"""
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
echo "Wrote corral_example/test_slugify.py"; sleep {d}
""",
    ),
    (
        "wordcount",
        "Create corral_example/wordcount.py defining wordcount(text) -> dict mapping each lowercase word to its "
        "count, and corral_example/test_wordcount.py with unittest tests for it.",
        r"""
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
echo "Wrote corral_example/test_wordcount.py"; sleep {d}
""",
    ),
    (
        "roman",
        "Create corral_example/roman.py defining roman(n) -> str (the Roman numeral of 1 <= n <= 3999) and "
        "corral_example/test_roman.py with unittest tests for it.",
        r"""
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
echo "Wrote corral_example/test_roman.py"; sleep {d}
""",
    ),
]


def demo_tasks(changelog: bool = False) -> list[dict]:
    """The three demo tasks. With ``changelog`` each also appends a line to corral_example/CHANGES.md,
    so every pair of branches conflicts in that file (a job for a merger)."""
    out = []
    for name, prompt, script in _SPECS:
        note = f" Append the line '- {name}()' to corral_example/CHANGES.md." if changelog else ""
        if changelog:
            script += f'echo "- {name}()" >> corral_example/CHANGES.md\n'
        script += f'echo "Done: {name}() with a test."\n'
        out.append({"name": name, "task": prompt + " " + _COMMON.format(changelog=note), "script": script})
    return out


def task_text(task: dict, demo: bool, delay: float) -> str:
    """What the agent is given: the script with the shell agent, the prompt with a real one."""
    if demo and task.get("script"):
        return task["script"].replace("{d}", str(delay))
    return task["task"]


# Installs the project's dependencies in a workspace (always run by the shell agent: no tokens spent).
INSTALL = r"""
if [ -f requirements.txt ]; then echo "installing requirements.txt"; python3 -m pip install -q -r requirements.txt
elif [ -f package-lock.json ]; then echo "npm ci"; npm ci
else echo "no dependencies to install"; fi
"""
