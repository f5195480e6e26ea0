"""The CPU of the frames of the `z` key (zoom in, back to the grid) under a flood, without agents.

The real CorralApp headless (160x48) on events emitted in its own loop: N running tasks, each given
a batch of lines of ~80 characters at every flush (as the link paces a flood: FLUSH_CAP lines a
twelfth of a second). `z` is sent as a terminal key (as benchmarks/dashboard.py does); for each
press: the CPU from the key to the frame that shows it (zoomed, or the grid again), the wall time,
the layouts of each screen and the log lines rendered in that span; and the CPU of the flood's own
frames. With --widgets, where the time of those spans goes (each kind of widget's rendering, the
compositor's steps); with --profile F, a cProfile of them (pstats files F.in and F.out).

    python benchmarks/zoom_frames.py [--panes 16] [--presses 10] [--widgets] [--each] [--profile F]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from _common import send_key

SIZE = (160, 48)
RUN = "r1"


async def wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def main(a: argparse.Namespace) -> None:
    from textual._compositor import Compositor
    from textual.screen import Screen
    from textual.widget import Widget

    from corral.core.events import EventBus, RunStarted, TaskOutput, TaskStatus
    from corral.tui.dashboard import FLUSH_INTERVAL, CorralApp
    from corral.tui.run_screen import FLUSH_CAP
    from corral.tui.widgets import QuietLog

    names = [f"t{i:02d}" for i in range(a.panes)]
    bus = EventBus(RUN)
    app = CorralApp(bus=bus, notifications=False)
    counts = {"layouts": 0, "lines": 0}
    real_render_line = QuietLog.render_line

    def render_line(self: Any, *args: Any) -> Any:
        counts["lines"] += 1
        return real_render_line(self, *args)

    QuietLog.render_line = render_line  # type: ignore[method-assign]
    # the time each kind of widget takes to render its lines (Widget.render_lines), and the steps of
    # the compositor, in the spans timed
    by_kind: dict[str, list[float]] = {}
    timing = [False]

    def timed(cls: Any, name: str, key: Any) -> None:
        real = getattr(cls, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not timing[0]:
                return real(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                row = by_kind.setdefault(key(args), [0, 0.0])
                row[0] += 1
                row[1] += time.perf_counter() - t0

        setattr(cls, name, wrapper)

    if a.widgets:
        timed(Widget, "render_lines", lambda args: type(args[0]).__name__)
        for name in ("_render_chops", "update_widgets", "reflow"):
            timed(Compositor, name, lambda args, name=name: f"Compositor.{name}")
    async with app.run_test(headless=True, size=SIZE):
        bus.emit(RunStarted(run=RUN, repo="/nowhere", base="main", base_commit="0" * 40, backend="git",
                            run_dir="", tasks=names))
        for name in names:
            bus.emit(TaskStatus(run=RUN, task=name, status="running"))
        await wait(lambda: app.run_screen is not None and len(app.run_screen.panes) == a.panes
                   and all(p.ready for p in app.run_screen.panes.values())
                   and app.run_screen.focused_pane is not None, 60, "the panes")
        screen = app.run_screen
        real_layout = Screen._refresh_layout

        def layout(self: Any, *args: Any, **kwargs: Any) -> None:
            counts["layouts"] += 1
            real_layout(self, *args, **kwargs)

        Screen._refresh_layout = layout  # type: ignore[method-assign]
        serial = [0]

        # made once (making them took more of the loop than the dashboard did at 64 panes)
        batches = {name: [[f"{name} line {i:07d} ".ljust(79, "x") for i in range(n, n + FLUSH_CAP)]
                          for n in range(0, 4 * FLUSH_CAP, FLUSH_CAP)] for name in names}

        async def feed() -> None:
            while True:
                serial[0] += 1
                for name in names:
                    bus.emit(TaskOutput(run=RUN, task=name, lines=batches[name][serial[0] % 4]))
                await asyncio.sleep(FLUSH_INTERVAL)

        feeder = asyncio.create_task(feed())
        await asyncio.sleep(2.0)  # the flood's steady state
        # the frames made: when, the CPU until then, the screen, and the CPU of the screen update
        # that rendered it
        frames: list[tuple[float, float, object, float]] = []
        real_display = app._display
        real_refresh = Screen._compositor_refresh
        update_cpu = [0.0]

        def compositor_refresh(self: Any) -> None:
            update_cpu[0] = time.process_time()
            real_refresh(self)

        def display(shown: Any, renderable: Any) -> None:
            real_display(shown, renderable)
            if renderable is not None:
                cpu = time.process_time()
                frames.append((time.perf_counter(), cpu, shown, cpu - update_cpu[0]))

        app._display = display
        Screen._compositor_refresh = compositor_refresh  # type: ignore[method-assign]
        # the flood's own frames, nobody at the keyboard: the CPU of each
        await asyncio.sleep(2.0)
        steady = [f[3] for f in frames]
        import cProfile

        profs = {True: cProfile.Profile(), False: cProfile.Profile()} if a.profile else {}
        rows: dict[bool, list[tuple[float, float, int, int, float]]] = {True: [], False: []}
        kinds: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for _ in range(a.presses):
            for want in (True, False):
                seen = len(frames)
                before = dict(counts)
                prof = profs.get(want)
                if prof is not None:
                    prof.enable()
                by_kind.clear()
                start, cpu0 = time.perf_counter(), time.process_time()
                timing[0] = True
                send_key(app, "z")

                def shown() -> tuple[float, float, object, float] | None:
                    if (screen.zoomed is not None) != want:
                        return None
                    return next((f for f in frames[seen:] if (f[2] is not screen) == want), None)

                await wait(lambda: shown() is not None, 10, "the zoom")
                timing[0] = False
                kinds[want].append({k: v[1] for k, v in by_kind.items()})
                if prof is not None:
                    prof.disable()
                at, cpu, _, frame_cpu = shown()  # type: ignore[misc]
                rows[want].append((at - start, cpu - cpu0, counts["layouts"] - before["layouts"],
                                   counts["lines"] - before["lines"], frame_cpu))
                await asyncio.sleep(0.3)
        feeder.cancel()
        Screen._refresh_layout = real_layout  # type: ignore[method-assign]
        Screen._compositor_refresh = real_refresh  # type: ignore[method-assign]
        app.exit()
    print(f"{a.panes} panes, the flood's frames  CPU median {statistics.median(steady) * 1000:5.1f} ms,"
          f" worst {max(steady) * 1000:5.1f} ms ({len(steady) / 2:.0f} frames a second)")
    for want, title in ((True, "zoom in"), (False, "back to the grid")):
        r = rows[want]
        print(f"{a.panes} panes, {title:<17} wall median {statistics.median(x[0] for x in r) * 1000:5.1f} ms"
              f" worst {max(x[0] for x in r) * 1000:5.1f} ms; CPU key to frame {statistics.median(x[1] for x in r) * 1000:5.1f} ms,"
              f" of the frame {statistics.median(x[4] for x in r) * 1000:5.1f} ms;"
              f" layouts {statistics.median(x[2] for x in r):.0f}; log lines rendered {statistics.median(x[3] for x in r):.0f}")
    if a.each:
        for i, (zin, zout) in enumerate(zip(rows[True], rows[False])):
            print(f"  press {i + 1:2d}: zoom in wall {zin[0] * 1000:6.1f} ms CPU {zin[1] * 1000:6.1f} ms, layouts {zin[2]};"
                  f" back wall {zout[0] * 1000:6.1f} ms CPU {zout[1] * 1000:6.1f} ms, layouts {zout[2]}")
    if a.widgets:
        for want, title in ((True, "zoom in"), (False, "back to the grid")):
            print(f"{title}: median ms per press, by widget class (render_lines) and compositor step")
            seen_kinds = {k for row in kinds[want] for k in row}
            spent = {k: statistics.median(row.get(k, 0.0) for row in kinds[want]) for k in seen_kinds}
            for kind, ms in sorted(spent.items(), key=lambda kv: -kv[1]):
                if ms >= 0.0001:
                    print(f"  {kind:<28} {ms * 1000:6.2f}")
    if a.profile:
        profs[True].dump_stats(a.profile + ".in")
        profs[False].dump_stats(a.profile + ".out")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--panes", type=int, default=16)
    ap.add_argument("--presses", type=int, default=10)
    ap.add_argument("--profile", default="")
    ap.add_argument("--widgets", action="store_true", help="time each kind of widget's rendering")
    ap.add_argument("--each", action="store_true", help="the figures of each press (the first builds what a zoom needs)")
    asyncio.run(main(ap.parse_args()))
