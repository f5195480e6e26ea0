"""Fixed scenes for the dashboard's snapshot tests: event streams with frozen timestamps and ids,
fed through the same EventBus the engine uses, so snapshots are byte-for-byte stable."""

from __future__ import annotations

from corral.core.events import (
    EventBus,
    Landed,
    LogEvent,
    MergeEvent,
    PhaseChanged,
    ReviewDecision,
    RunFinished,
    RunStarted,
    TaskActivity,
    TaskFinished,
    TaskOutput,
    TaskStatus,
    VerifyOutput,
    VerifyResult,
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


VERIFY_CMD = "python -m unittest discover -s tests -q"


def feed_verified(bus: EventBus) -> None:
    """After :func:`feed_run`: every agent done, three approved and merged, verify passed."""
    e = bus.emit
    e(TaskFinished(task="write-docs", status="succeeded", exit_code=0, duration=52.25, files=["docs/guide.md"],
                   added=12, removed=0, commit="def", ts=T0 + 57))
    e(TaskStatus(task="write-docs", status="succeeded", ts=T0 + 57))
    e(TaskFinished(task="greet-en", status="succeeded", exit_code=0, duration=39.5, files=["calc/greet.py"],
                   added=1, removed=1, commit="123", ts=T0 + 48))
    e(TaskStatus(task="greet-en", status="succeeded", ts=T0 + 48))
    e(TaskStatus(task="greet-fr", status="creating", ts=T0 + 46))
    e(TaskStatus(task="greet-fr", status="running", ts=T0 + 47))
    e(TaskOutput(task="greet-fr", lines=["Changing the greeting to bonjour", "sed -i calc/greet.py"], ts=T0 + 50))
    e(TaskFinished(task="greet-fr", status="succeeded", exit_code=0, duration=21.0, files=["calc/greet.py"],
                   added=1, removed=1, commit="456", ts=T0 + 68))
    e(TaskStatus(task="greet-fr", status="succeeded", ts=T0 + 68))
    e(PhaseChanged(phase="merging", ts=T0 + 75))
    for name, ok in [("add-mul", True), ("write-docs", True), ("greet-en", True), ("greet-fr", False)]:
        e(ReviewDecision(task=name, approved=ok, ts=T0 + 75))
        if not ok:
            e(TaskStatus(task=name, status="rejected", reason="not approved", ts=T0 + 75))
    for name in ("add-mul", "write-docs", "greet-en"):
        e(MergeEvent(task=name, ok=True, strategy="merge", ts=T0 + 76))
    e(PhaseChanged(phase="verify", ts=T0 + 77))
    e(VerifyOutput(lines=["..", "-" * 70, "Ran 2 tests in 0.001s", "", "OK"], ts=T0 + 79))
    e(VerifyResult(ok=True, exit_code=0, command=VERIFY_CMD, duration=1.4, ts=T0 + 79))
    e(PhaseChanged(phase="landing", ts=T0 + 80))


def feed_landed(bus: EventBus) -> None:
    """After :func:`feed_verified`: landed; the run is over (failed: one task failed, one rejected)."""
    e = bus.emit
    e(Landed(ok=True, base="main", old="6cd0d48b45aa1b2c3d4e5f60718293a4b5c6d7e8",
             new="1ef94dad6110aa1b2c3d4e5f60718293a4b5c6d7", message="main moved", ts=T0 + 82))
    for name in ("add-mul", "write-docs", "greet-en"):
        e(TaskStatus(task=name, status="merged", ts=T0 + 82))
    e(PhaseChanged(phase="done", ts=T0 + 83))
    e(RunFinished(exit_code=1, state="failed", report=f"/home/ada/src/calc/.git/corral/runs/{RUN_ID}/report.md",
                  kept_branches=[f"corral/{RUN_ID}/greet-fr"], ts=T0 + 83))


async def settle(screen, pause) -> None:
    """Until the run screen's layout stops changing (two looks a flush apart agree)."""
    def look():
        box = screen.query_one("#verify-box")
        return (screen._scroll.size, screen._row_height, box.display, box.collapsed, screen._scroll.scroll_y)

    last = None
    for _ in range(50):
        await pause(0.1)
        now = look()
        if now == last:
            return
        last = now


async def focus(screen, name: str, pause) -> None:
    """Focus a pane and put it at the top of the grid's view: where focus scrolled from depends on
    timing, so a snapshot would too."""
    screen.panes[name].focus(scroll_visible=False)
    for _ in range(100):
        await pause(0.02)
        if screen.focused_task == name:
            break
    await settle(screen, pause)
    screen._scroll.scroll_to_widget(screen.panes[name], animate=False, top=True)
    await settle(screen, pause)


async def play(app, scene: str, pause) -> None:
    """Bring ``app`` (made with ``bus=``, ``clock=clock``) to ``scene``: run, zoom, review, land, done.
    ``pause(seconds)`` lets the app catch up (``pilot.pause``)."""
    from corral.tui.dialogs import ConfirmScreen
    from corral.tui.review_screen import ReviewScreen

    bus = app.bus
    feed_run(bus)
    screen = app.run_screen
    for _ in range(100):  # the panes are made and the first one focused by the app, at its pace
        await pause(0.05)
        if screen.focused_pane is not None:
            break
    await focus(screen, "write-docs" if scene == "zoom" else "greet-en", pause)
    if scene == "zoom":
        app.run_screen.action_zoom()
    elif scene == "review":
        review = ReviewScreen(review_items(), review_forecast(), load_diff, {"add-mul": True, "write-docs": True})
        app.push_screen(review)
        await pause(0.2)
        review.query_one("#review-tasks").move_cursor(row=3)  # greet-en, which conflicts with greet-fr
    elif scene in ("land", "done"):
        feed_verified(bus)
        await settle(screen, pause)  # the verify pane comes (on a short screen it closes once passed)
        await focus(screen, "greet-en", pause)
        if scene == "land":
            from corral.tui.dashboard import LAND_TITLE, land_body

            await pause(0.2)
            body = land_body(app.model.verify_result, "Land add-mul, write-docs, greet-en onto main?", "main")
            app.push_screen(ConfirmScreen(LAND_TITLE, body, yes="Land", no="Keep branch", danger=False))
        else:
            feed_landed(bus)
    await pause(0.3)
