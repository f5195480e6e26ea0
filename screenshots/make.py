"""Regenerate the README's screenshots from the real app running the real demo.

    python screenshots/make.py [--out screenshots] [--size 140x40] [--no-png]

Makes a scratch demo repository (the same as ``corral demo``), runs the demo plan in the dashboard
(headless Textual, real agents, real git), and saves SVGs at the interesting moments: the run screen
mid-run, a zoomed pane, the review screen on the conflicting task, the land confirmation with the
verify result, the home screen listing the run, and that run opened from there. PNGs are made with
``rsvg-convert`` when it is installed (Debian: ``apt-get install librsvg2-bin fonts-firacode``).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


async def until(pilot, predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"make.py: timed out waiting for {what}")
        await pilot.pause(0.05)


async def shoot(out: Path, size: tuple[int, int]) -> list[Path]:
    from corral.core.demo import demo_plan, make_demo_repo
    from corral.core.pipeline import prepare
    from corral.tui.dashboard import CorralApp
    from corral.tui.dialogs import ConfirmScreen
    from corral.tui.home_screen import HomeScreen
    from corral.tui.past_run_screen import PastRunScreen
    from corral.tui.review_screen import ReviewScreen

    saved: list[Path] = []
    repo = make_demo_repo()
    try:
        plan = demo_plan(1.5)
        plan.approve = "ask"
        prep = await prepare(plan, repo)
        app = CorralApp(prep=prep, notifications=False)

        async def save(name: str, which=None) -> None:
            target = which or app
            path = out / f"{name}.svg"
            for _ in range(20):  # now and then the compositor is caught between two frames: try again
                svg = target.export_screenshot()
                if svg.count("<text") > 10:
                    break
                await asyncio.sleep(0.1)
            path.write_text(svg, encoding="utf-8")
            saved.append(path)
            print(f"saved {path}")

        async with app.run_test(size=size) as pilot:
            model = app.model
            await until(pilot, lambda: model.tasks.get("upgrade-build") is not None
                        and model.tasks["upgrade-build"].status == "failed"
                        and any(t.status == "running" for t in model.tasks.values()), what="mid-run")
            app.run_screen.panes["add-mul"].focus()
            await pilot.pause(0.3)
            await save("run")
            await pilot.press("z")
            await pilot.pause(0.3)
            await save("zoom")
            await pilot.press("z")
            await until(pilot, lambda: app.run_screen.zoomed is None, what="unzoomed")
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="review")
            await pilot.pause(0.3)
            await pilot.press("y", "y")  # add-mul, write-docs
            await until(pilot, lambda: app.screen.selected == "greet-en" and "greet-en" in app.screen.diff_view.diffs,
                        what="greet-en selected")
            await pilot.pause(0.3)
            await save("review")
            await pilot.press("y", "n", "m")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="land confirmation")
            await pilot.pause(0.3)
            await save("land")
            await pilot.press("y")
            await until(pilot, lambda: not app.pipeline_running, what="run end")
            await pilot.pause(0.3)
            await save("done")
            await pilot.press("q")

        home = CorralApp(home_repo=str(repo), notifications=False)
        async with home.run_test(size=size) as pilot:
            await until(pilot, lambda: isinstance(home.screen, HomeScreen) and home.screen.loaded, what="home")
            home.screen.query_one("#home-tasks").text = "fix-typos=Fix the typos in README.md\nadd-tests=Add tests for calc/greet.py"
            await pilot.pause(0.3)
            await save("home", home)
            table = home.screen.query_one("#home-runs")
            table.focus()
            table.move_cursor(row=0)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(home.screen, PastRunScreen) and home.screen.selected is not None
                        and home.screen.selected in home.screen.diff_view.diffs, what="the past run")
            await pilot.pause(0.3)
            await save("past", home)
            await pilot.press("escape", "q")
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    return saved


_SPAN = re.compile(r'<text ([^>]*?)x="([\d.]+)"([^>]*?)textLength="([\d.]+)"([^>]*)>((?:&#160;)+)([^<]*)</text>')


def without_leading_spaces(svg: str) -> str:
    """Each span's leading spaces moved into its position. rsvg-convert lays out a span's leading
    no-break spaces after its text, so in the PNG the header read "...0a46base": the run id glued
    to the next field (the terminal and the SVG in a browser were right)."""
    def fix(m: re.Match) -> str:
        before, x, middle, length, after, spaces, rest = m.groups()
        if not rest:
            return m.group(0)  # a span of spaces only: nothing to glue
        cells = spaces.count("&#160;")
        width = float(length) / (cells + len(html.unescape(rest)))
        return (f'<text {before}x="{float(x) + cells * width:g}"{middle}textLength="{float(length) - cells * width:g}"'
                f'{after}>{rest}</text>')

    return _SPAN.sub(fix, svg)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent))
    p.add_argument("--size", default="140x40", help="terminal size, COLSxROWS")
    p.add_argument("--no-png", action="store_true")
    args = p.parse_args()
    cols, rows = (int(x) for x in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = asyncio.run(shoot(out, (cols, rows)))
    if args.no_png:
        return 0
    if shutil.which("rsvg-convert") is None:
        print("make.py: rsvg-convert not found (apt-get install librsvg2-bin); SVGs only", file=sys.stderr)
        return 0
    for svg in saved:
        png = svg.with_suffix(".png")
        fixed = svg.with_name(f".{svg.stem}.rsvg.svg")
        fixed.write_text(without_leading_spaces(svg.read_text(encoding="utf-8")), encoding="utf-8")
        try:
            subprocess.run(["rsvg-convert", "-z", "1", str(fixed), "-o", str(png)], check=True, start_new_session=True)
        finally:
            fixed.unlink()
        print(f"saved {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
