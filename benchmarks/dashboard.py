"""The dashboard at scale: the real CorralApp in a headless Textual run (160x48) on a scratch repo.

1. Log streaming through the dashboard: N shell agents each printing L lines of ~80 characters as
   fast as they can (benchmarks/_gen.py), against the bare drain of log_streaming.py. Checks the log
   files are byte-identical to the baseline's; prints the throughput ratio over the agents'
   streaming window (from the run's events.jsonl), the worst event-loop stall (the pipeline's loop
   monitor, and a 5 ms timer task of our own in the app's loop for the whole life of the app), the
   peak RSS, and the key latency while flooding (``z`` sent as a terminal key: time until the frame
   that shows the pane zoomed, and again until the frame that shows the grid).
2. First paint: wall time from spawning ``python -c`` to the frame of the run screen with its N
   panes (those on screen drawn; those off screen are mounted as their border and filled after that
   frame, also timed). Three ways: ``corral run PLAN`` as the CLI does it (preflight, the run started
   in the repository's supervisor, the dashboard attached as its client), with the supervisor
   started by the run and with one already up; and the run hosted in the dashboard's own process
   (as ``corral demo``). Then the heaviest imports of the dashboard path (``python -X importtime``).
3. Idle cost: N agents running ``sleep 30`` (silent): CPU seconds of the corral process over a 10 s
   window while the dashboard is up, as % of one core.

Each measurement runs in its own process (so RSS and CPU are its own). Prints medians of R runs.

    python benchmarks/dashboard.py [--agents 16] [--lines 100000] [--runs 3] [--only stream,paint,idle]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import GEN, fmt, import_times, median, scratch_repo, send_key, timed

HERE = Path(__file__).resolve().parent
SIZE = (160, 48)
TICK = 0.005


# ----------------------------------------------------------------------------- in the child
class LoopLateness:
    """A task in the running loop that sleeps TICK and records how late it woke (the app's own loop)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self.stalls: list[tuple[float, float]] = []  # (when, how late) of stalls over 50 ms
        self.t0 = time.perf_counter()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            late = time.perf_counter() - before - TICK
            self.ticks += 1
            self.worst = max(self.worst, late)
            if late > 0.02:
                self.stalls.append((round(before - self.t0, 3), round(late, 3), time.time()))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _prepared(plan_path: str, repo: str):
    from corral.core.pipeline import prepare
    from corral.core.plan import load_plan

    return await prepare(load_plan(plan_path), repo)


async def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def child_stream(plan_path: str, repo: str, agents: int, keys_on: bool) -> dict:
    from corral.tui.dashboard import CorralApp

    prep = await _prepared(plan_path, repo)
    app = CorralApp(prep=prep)
    lateness = LoopLateness()
    keys: list[float] = []
    prof = None
    if os.environ.get("BENCH_PROFILE"):  # where the time goes: cProfile of the whole run
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    async with app.run_test(headless=True, size=SIZE):
        lateness.start()
        await _wait(lambda: app.run_screen is not None and len(app.run_screen.panes) == agents
                    and app.run_screen.focused_pane is not None, 60, "the panes")
        await _wait(lambda: sum(t.lines_total for t in app.model.tasks.values()) > 20_000 or not app.pipeline_running,
                    60, "the flood")
        screen = app.run_screen
        # the frames made (a terminal would be written then): when, and of which screen
        frames: list[tuple[float, object]] = []
        real_display = app._display

        def display(shown, renderable) -> None:
            real_display(shown, renderable)
            if renderable is not None:
                frames.append((time.perf_counter(), shown))

        app._display = display
        # zoom in and out while the agents flood: time from the key to the frame that shows its
        # effect (the zoomed pane, the grid again); as a person would: a zoom in and out every
        # half second or so, not a stream of keys
        t_flood = time.perf_counter() - lateness.t0
        while keys_on and app.model.agents_running and len(keys) < 10:
            for want in (True, False):
                seen = len(frames)
                start = time.perf_counter()
                send_key(app, "z")

                def shown() -> float | None:
                    if (screen.zoomed is not None) != want:
                        return None
                    return next((at for at, s in frames[seen:] if (s is not screen) == want), None)

                await _wait(lambda: shown() is not None, 10, "zoom")
                keys.append((shown() or start) - start)
                await asyncio.sleep(0.25)
        await _wait(lambda: not app.pipeline_running, 600, "the run's end")
        shown = {n: list(p.log_widget.lines[-1:]) for n, p in screen.panes.items()}
        lateness.stop()
        if prof is not None:
            prof.disable()
            prof.dump_stats(os.environ["BENCH_PROFILE"])
        app.exit()
    return {"app_stall_s": lateness.worst, "stalls": lateness.stalls, "t_flood": t_flood, "ticks": lateness.ticks, "keys": keys, "run_dir": app.model.run_dir,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "last_shown": shown}


async def child_idle(plan_path: str, repo: str, agents: int, window: float) -> dict:
    from corral.tui.dashboard import CorralApp

    prep = await _prepared(plan_path, repo)
    app = CorralApp(prep=prep, grace=0.5)
    async with app.run_test(headless=True, size=SIZE):
        await _wait(lambda: len(app.model.tasks) == agents
                    and all(t.status == "running" for t in app.model.tasks.values()), 60, "agents running")
        await asyncio.sleep(1.0)  # let the notifications of the start settle
        prof = None
        if os.environ.get("BENCH_PROFILE"):  # where the idle CPU goes: cProfile of the window
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(window)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        if prof is not None:
            prof.disable()
            prof.dump_stats(os.environ["BENCH_PROFILE"])
        still = sum(1 for t in app.model.tasks.values() if t.status == "running")
        app.stop_and_exit()  # a worker: cancels the pipeline (cleanup runs), then exits
        await _wait(lambda: not app.pipeline_running, 60, "the cleanup")
    return {"cpu_s": cpu, "wall_s": wall, "running": still,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


#: the app both first-paint children run, headless: it notes the frame that first shows every pane on
#: screen drawn (those off screen wait as their border, filled after that frame), the frame that
#: shows every pane filled, off screen too, as each frame is made (``App._display``: the frame has
#: been rendered; a terminal would be written now), and when the run's start came to it (its first
#: event); then stops the run and exits
TIMED_APP = """
def timed_app():
    import inspect
    from pathlib import Path
    from corral.tui.dashboard import CorralApp
    class App(CorralApp):
        # Textual finds a relative CSS_PATH beside the file of the class: this one has none (python -c)
        CSS_PATH = str(Path(inspect.getfile(CorralApp)).parent / CorralApp.CSS_PATH)
        _painted = _filled = _started = 0.0
        def _on_event(self, ev):
            self._started = self._started or time.time()
            super()._on_event(ev)
        def _display(self, screen, renderable):
            super()._display(screen, renderable)
            s = self.run_screen
            if renderable is None or self._filled or s is None or screen is not s or len(s.panes) != N:
                return
            if not self._painted and all(p.ready or getattr(p, "deferred", False) for p in s.panes.values()):
                self._painted = time.time()
            if self._painted and self._started and all(p.ready for p in s.panes.values()):
                self._filled = time.time()
                print(f"{T_IMPORT} {T_PREP} {self._painted} {self._filled} {self._started}", flush=True)
                self.stop_and_exit()
    return App
"""

#: ``python -c`` importing the dashboard, preflight, the run hosted in the dashboard's own process
#: (as ``corral demo`` and programs do)
PAINT = """
import sys, time, anyio
from corral.tui.app import run_dashboard  # the entry point `corral demo` takes
import corral.tui.dashboard
from corral.core.pipeline import prepare
from corral.core.plan import load_plan
plan, repo, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
T_IMPORT = time.time()
prep = anyio.run(lambda: prepare(load_plan(plan), repo))
T_PREP = time.time()
""" + TIMED_APP + """
app = timed_app()(prep=prep, grace=0.2, notifications=False)
app.run(headless=True, size=(160, 48))
"""

#: ``corral run PLAN`` as the CLI runs it (preflight here, the run started in the repository's
#: supervisor, the dashboard attached to it as a client), the dashboard headless: the one call the
#: CLI makes to open it (``corral.tui.app.run_attached``) is replaced by the same app run headless.
#: Its "preflight" is the moment that call comes: preflight done; the run is started in the supervisor
#: (started first if none runs) while the dashboard is built.
CLIENT_PAINT = """
import sys, time
plan, N = sys.argv[1], int(sys.argv[2])
import corral.tui.app as tui_app
from corral.tui.cli import main
T_IMPORT = time.time()
def run_attached(link, keymap=None, expect=()):
    global T_PREP
    T_PREP = time.time()
    app = timed_app()(link=link, notifications=False, **({"expect": expect} if expect else {}))  # (older versions: none)
    app.run(headless=True, size=(160, 48))
    conn = link.link.conn if hasattr(link, "link") else link.conn  # a link that started the run, or one to it
    print(f"supervisor {conn.hello.get('pid', 0)}", flush=True)
    return app.exit_code
tui_app.run_attached = run_attached
""" + TIMED_APP + """
main(["run", plan])
"""


def child_main(a: argparse.Namespace) -> None:
    if a.child == "stream":
        out = asyncio.run(child_stream(a.plan, a.repo, a.agents, a.keys))
    else:
        out = asyncio.run(child_idle(a.plan, a.repo, a.agents, a.window))
    print("RESULT " + json.dumps(out))


# ---------------------------------------------------------------------------- in the parent
def write_plan(repo: Path, name: str, prompts: list[str]) -> Path:
    plan = repo.parent / f"{repo.name}-{name}.toml"
    body = ['agent = "shell"', 'setup = "none"', 'approve = "none"']
    for i, prompt in enumerate(prompts):
        body += ["[[tasks]]", f'name = "t{i}"', f"prompt = {json.dumps(prompt)}"]
    plan.write_text("\n".join(body) + "\n")
    return plan


def run_child(kind: str, plan: Path, repo: Path, agents: int, env: dict | None = None, window: float = 10.0,
              keys: bool = False) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", kind, "--plan", str(plan), "--repo", str(repo),
                          "--agents", str(agents), "--window", str(window), *(["--keys"] if keys else [])],
                         cwd=repo, capture_output=True, text=True, env=env or os.environ.copy())
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"{kind} child failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")


def streaming_span(run_dir: Path) -> tuple[float, float]:
    """From the first agent running to the last agent finished (wall clock, from events.jsonl)."""
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    started = [e["ts"] for e in events if e["type"] == "task_status" and e["status"] == "running"]
    ended = [e["ts"] for e in events if e["type"] == "task_finished"]
    return min(started), max(ended)


def streaming_window(run_dir: Path) -> float:
    start, end = streaming_span(run_dir)
    return end - start


def bench_stream(a: argparse.Namespace) -> None:
    from log_streaming import baseline, digest

    repo = scratch_repo()
    plan = write_plan(repo, "stream", [f"{sys.executable} {GEN} {a.lines} t{i}" for i in range(a.agents)])
    mb = a.agents * a.lines * 80 / 1e6
    print(f"log streaming through the dashboard: {a.agents} agents x {a.lines} lines (~{mb:.0f} MB), "
          f"headless Textual {SIZE[0]}x{SIZE[1]}, median of {a.runs} runs (each after a baseline run)")
    outdir = Path(tempfile.mkdtemp(prefix="corral-drain-"))
    atexit.register(shutil.rmtree, outdir, True)
    def one(keys: bool) -> dict:
        monitor = Path(tempfile.mktemp(prefix="corral-monitor-"))
        r = run_child("stream", plan, repo, a.agents, env={**os.environ, "CORRAL_LOOP_MONITOR": str(monitor)}, keys=keys)
        r.update(json.loads(monitor.read_text()))
        monitor.unlink()
        r["window"] = streaming_window(Path(r["run_dir"]))
        start, end = streaming_span(Path(r["run_dir"]))
        r["stream_stall_s"] = max([late for _, late, at in r["stalls"] if start <= at <= end], default=0.0)
        r["same"] = all(digest(outdir / f"t{i}.log") == digest(Path(r["run_dir"]) / "logs" / f"t{i}.log")
                        for i in range(a.agents))
        r["tail_ok"] = all(v == [f"{n} line {a.lines - 1:07d} ".ljust(79, "x")] for n, v in r["last_shown"].items())
        return r

    # throughput, stalls and memory with nobody at the keyboard; then one more run with a person
    # zooming in and out every half second or so, for the key latency
    # each run right after its own baseline run: the machine is shared, its load comes and goes, and
    # the ratio of a pair measured together is steadier than the ratio of two medians taken apart
    base_times, results = [], []
    for _ in range(a.runs):
        base_times.append(baseline(a.agents, a.lines, outdir)["window"])
        results.append(one(False))
        results[-1]["ratio"] = base_times[-1] / results[-1]["window"]
    keyed = one(True)
    b, w = median(base_times), median([r["window"] for r in results])
    keys = sorted(keyed["keys"])
    n = a.agents * a.lines
    print(f"  baseline (bare drain to files)     {fmt(b)} s   {n / b / 1e6:.2f} M lines/s")
    print(f"  dashboard, streaming window        {fmt(w)} s   {n / w / 1e6:.2f} M lines/s")
    ratios = sorted(r["ratio"] for r in results)
    print(f"  throughput ratio dashboard/base    {median(ratios):.2f}   (target >= 0.5; median of the runs' ratios to"
          f" the baseline run just before each: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"  worst stall, pipeline loop monitor {max(r['max_stall_s'] for r in results) * 1000:.0f} ms   (target < 150)")
    print(f"  worst stall, 5 ms timer in the app {max(r['app_stall_s'] for r in results) * 1000:.0f} ms   (target < 150)"
          f"   (of which between the first agent running and the last one done:"
          f" {max(r['stream_stall_s'] for r in results) * 1000:.0f} ms)")
    if keys:
        print(f"  key `z` to the frame showing it    median {median(keys) * 1000:.0f} ms, worst {keys[-1] * 1000:.0f} ms"
              f"   over {len(keys)} presses during the flood (one more run: window {fmt(keyed['window'])} s,"
              f" ratio {b / keyed['window']:.2f}, worst stall {keyed['app_stall_s'] * 1000:.0f} ms)")
        print(f"  the presses in order (zoom in, back, ...): {', '.join(f'{k * 1000:.0f}' for k in keyed['keys'])} ms")
    else:
        print("  key `z` to zoom toggled            (the flood ended before a key could be pressed)")
    print(f"  peak RSS of corral + dashboard     {max(r['rss_mb'] for r in results + [keyed]):.0f} MB   (target < 300)")
    print(f"  log files identical to baseline    {'yes' if all(r['same'] for r in results + [keyed]) else 'NO'}")
    print(f"  panes end on each agent's last line {'yes' if all(r['tail_ok'] for r in results + [keyed]) else 'NO'}")


def paint_child(script: str, args: list[str], repo: Path) -> tuple[list[float], int]:
    """(imports, preflight, first paint, every pane filled, the run's first event) in seconds from
    the spawn of ``script``, and the pid of the supervisor it used (0: none; one it started waits
    30 s for the next run)."""
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", script, *args], cwd=repo, capture_output=True, text=True,
                         env={**os.environ, "CORRAL_SUPERVISOR_IDLE": "30"})
    lines = res.stdout.split("\n")
    try:
        times = [float(x) - t0 for x in lines[0].split()[:5]]
        assert len(times) == 5
    except (ValueError, AssertionError):
        raise SystemExit(f"paint child failed: {res.stdout[-1000:]}\n{res.stderr[-3000:]}")
    pid = next((int(l.split()[1]) for l in lines if l.startswith("supervisor ")), 0)
    return times, pid


def stop_supervisor(pid: int, timeout: float = 60.0) -> None:
    """SIGTERM to the supervisor ``pid`` (its run has ended), then wait until it has exited."""
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def bench_paint(a: argparse.Namespace) -> None:
    repo = scratch_repo()
    plan = write_plan(repo, "paint", ["sleep 30"] * a.agents)
    print(f"first paint of a {a.agents}-agent plan of `sleep 30`, the dashboard headless until the run screen "
          f"with its {a.agents} panes is rendered; median of {a.runs} runs of each")
    rows: dict[str, list[list[float]]] = {"cold": [], "warm": [], "in": []}
    for _ in range(a.runs):
        # as `corral run PLAN` does: the supervisor started by the run (the first run of a repository,
        # or one more than 60 s after the last), then one already up (another run within the minute)
        times, pid = paint_child(CLIENT_PAINT, [str(plan), str(a.agents)], repo)
        rows["cold"].append(times)
        times, pid = paint_child(CLIENT_PAINT, [str(plan), str(a.agents)], repo)
        rows["warm"].append(times)
        stop_supervisor(pid)
        # the run hosted in the dashboard's process (as `corral demo` and programs are)
        rows["in"].append(paint_child(PAINT, [str(plan), str(repo), str(a.agents)], repo)[0])
    floor = timed([sys.executable, "-c", "pass"], a.runs)
    help_t = timed([sys.executable, "-m", "corral.tui.cli", "--help"], a.runs)
    print(f"  python -c pass (floor)             {fmt(floor)} s")
    print(f"  corral --help                      {fmt(help_t)} s")
    for key, title, prep in (
            ("cold", "`corral run PLAN`, supervisor started by the run (the dashboard its client)",
             "preflight done, dashboard opens"),
            ("warm", "`corral run PLAN`, supervisor already up", "preflight done, dashboard opens"),
            ("in", "the run hosted in the dashboard's process (as `corral demo`)", "preflight done")):
        r = rows[key]
        print(f"  {title}:")
        print(f"    imports done                     {fmt(median([x[0] for x in r]))} s")
        print(f"    {prep:<34}{fmt(median([x[1] for x in r]))} s")
        print(f"    first paint of the run screen    {fmt(median([x[2] for x in r]))} s"
              f"{'   (target < 1)' if key != 'in' else ''}   (the app's part: "
              f"{fmt(median([x[2] - x[1] for x in r]))} s)")
        print(f"    every pane filled, off screen too  {fmt(median([x[3] for x in r]))} s")
        print(f"    the run's start reached it       {fmt(median([x[4] for x in r]))} s"
              f"{'   (asked of the supervisor once the panes are drawn)' if key != 'in' else ''}")
    parsed = import_times(["-c", "import corral.tui.app; import corral.tui.dashboard; import corral.tui.run_screen"])
    print(f"  heaviest imports of the dashboard path (cumulative; total "
          f"{sum(us for us, d, _ in parsed if d == 1) / 1000:.0f} ms):")
    for us, _, name in sorted((r for r in parsed if r[1] <= 3), reverse=True)[:12]:
        print(f"    {us / 1000:7.1f} ms  {name}")
    heavy = sorted({name.split(".")[0] for _, _, name in import_times(["-c", "import corral.tui.app"])}
                   & {"textual", "rich", "git", "anyio"})
    print(f"  imported by `import corral.tui.app` alone: {', '.join(heavy) or 'none of textual/rich/git/anyio'}")


def bench_idle(a: argparse.Namespace) -> None:
    repo = scratch_repo()
    plan = write_plan(repo, "idle", ["sleep 30"] * a.agents)
    print(f"idle cost: {a.agents} agents running `sleep 30` (silent), dashboard up, CPU of the corral process "
          f"over {a.window:.0f} s; median of {a.runs} runs")
    rows = [run_child("idle", plan, repo, a.agents, window=a.window) for _ in range(a.runs)]
    pct = [r["cpu_s"] / r["wall_s"] * 100 for r in rows]
    print(f"  CPU of one core                    {median(pct):.1f} %   (worst {max(pct):.1f} %; target < 3)")
    print(f"  agents still running at the end    {min(r['running'] for r in rows)} of {a.agents}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--only", default="stream,paint,idle")
    ap.add_argument("--child", choices=["stream", "idle"], help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--repo", help=argparse.SUPPRESS)
    ap.add_argument("--keys", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_main(a)
        return
    parts = a.only.split(",")
    for part, fn in (("stream", bench_stream), ("paint", bench_paint), ("idle", bench_idle)):
        if part in parts:
            fn(a)


if __name__ == "__main__":
    main()
