"""Fixed scenes for the dashboard's snapshot tests: event streams with frozen timestamps and ids,
fed through the same EventBus the engine uses, so snapshots are byte-for-byte stable."""

from __future__ import annotations

from corral.core.events import (
    EventBus,
    LogEvent,
    PhaseChanged,
    RunStarted,
    TaskActivity,
    TaskFinished,
    TaskOutput,
    TaskStatus,
)
from corral.core.vcs.base import Forecast
from corral.tui.review_screen import ReviewItem

T0 = 1_800_000_000.0
NOW = T0 + 83.0
RUN_ID = "20270115-083000-c0de"
TASKS = {"add-mul": "claude", "write-docs": "codex", "upgrade-build": "aider", "greet-en": "shell",
         "greet-fr": "shell"}


def clock() -> float:
    return NOW


def feed_run(bus: EventBus) -> None:
    """A run 83 s in: one task done, one failed, two running, one waiting for a slot."""
    e = bus.emit
    e(RunStarted(run=RUN_ID, repo="/home/ada/src/calc", base="main", base_commit="6cd0d48b45aa1b2c3d4e5f60718293a4b5c6d7e8",
                 backend="git", run_dir="/nonexistent/corral/runs/" + RUN_ID, tasks=list(TASKS), agents=TASKS, ts=T0))
    e(PhaseChanged(phase="running", ts=T0))
    for i, name in enumerate(TASKS):
        if name == "greet-fr":
            continue
        e(TaskStatus(task=name, status="creating", ts=T0 + 1 + i))
        e(TaskStatus(task=name, status="setup", ts=T0 + 2 + i))
        e(TaskStatus(task=name, status="running", ts=T0 + 3 + i))
    mul = ["Reading calc/ops.py", "Plan: add mul() in calc/mul.py with a test", "Edit calc/mul.py (+2 lines)",
           "Edit tests/test_mul.py (+8 lines)", "$ python -m unittest -q", "Ran 2 tests in 0.001s", "OK",
           "Done: mul() added with a test."]
    for line in mul:
        e(TaskOutput(task="add-mul", lines=[line], ts=T0 + 10))
    e(TaskFinished(task="add-mul", status="succeeded", exit_code=0, duration=41.5, cost=0.0412, tokens=18000,
                   files=["calc/mul.py", "tests/test_mul.py"], added=10, removed=0, commit="abc", ts=T0 + 45))
    e(TaskStatus(task="add-mul", status="succeeded", ts=T0 + 45))
    for i in range(40):
        e(TaskOutput(task="write-docs", lines=[f"writing docs/guide.md: section {i + 1} of 60"], ts=T0 + 20))
    e(TaskActivity(task="write-docs", text="editing docs/guide.md", ts=T0 + 20))
    for line in ["Trying to upgrade the build system", "Downloading toolchain...",
                 "error: toolchain mirror unreachable"]:
        e(TaskOutput(task="upgrade-build", lines=[line], ts=T0 + 30))
    e(TaskStatus(task="upgrade-build", status="failed", reason="exit code 3", ts=T0 + 38))
    for line in ["Changing the greeting to hi there", "sed -i calc/greet.py"]:
        e(TaskOutput(task="greet-en", lines=[line], ts=T0 + 40))
    e(TaskActivity(task="greet-en", text="running: sed -i calc/greet.py", ts=T0 + 40))
    e(LogEvent(level="info", message="max_parallel = 4: greet-fr waits for a free slot", ts=T0 + 5))


def review_items() -> list[ReviewItem]:
    return [
        ReviewItem("add-mul", "succeeded", "claude", 10, 0, ["calc/mul.py", "tests/test_mul.py"], True),
        ReviewItem("write-docs", "succeeded", "codex", 12, 0, ["docs/guide.md"], True),
        ReviewItem("upgrade-build", "failed", "aider", 0, 0, [], False),
        ReviewItem("greet-en", "succeeded", "shell", 1, 1, ["calc/greet.py"], True),
        ReviewItem("greet-fr", "succeeded", "shell", 1, 1, ["calc/greet.py"], True),
    ]


def review_forecast() -> Forecast:
    return Forecast(
        files={"add-mul": ["calc/mul.py", "tests/test_mul.py"], "write-docs": ["docs/guide.md"],
               "greet-en": ["calc/greet.py"], "greet-fr": ["calc/greet.py"]},
        conflicts={("greet-en", "greet-fr"): ["calc/greet.py"]},
    )


DIFFS = {
    "greet-en": (
        "diff --git a/calc/greet.py b/calc/greet.py\n"
        "index 8bed27e..77f489a 100644\n"
        "--- a/calc/greet.py\n"
        "+++ b/calc/greet.py\n"
        "@@ -1,2 +1,2 @@\n"
        " def greeting():\n"
        '-    return "hello"\n'
        '+    return "hi there"\n'
    ),
}


async def load_diff(name: str) -> str:
    return DIFFS.get(name, f"diff --git a/{name} b/{name}\n")
