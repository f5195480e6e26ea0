"""Self-measurement for benchmarks: event-loop stalls and peak memory of the corral process.

Enabled by ``CORRAL_LOOP_MONITOR=<file>``: while a run goes on, a task wakes every 5 ms and records
how late it woke; at the end the worst lateness, the peak RSS and the CPU time are written to the file
as JSON. Off by default; costs nothing when off.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from typing import AsyncIterator

import anyio

TICK = 0.005


@contextlib.asynccontextmanager
async def loop_monitor() -> AsyncIterator[None]:
    path = os.environ.get("CORRAL_LOOP_MONITOR")
    if not path:
        yield
        return
    worst = 0.0
    worst_at = 0.0
    ticks = 0
    stalls: list[tuple[float, float, float]] = []

    async def watch() -> None:
        nonlocal worst, worst_at, ticks
        while True:
            before = time.perf_counter()
            cpu_before = time.thread_time()
            await anyio.sleep(TICK)
            late = time.perf_counter() - before - TICK
            cpu = time.thread_time() - cpu_before
            ticks += 1
            if late > worst:
                worst, worst_at = late, time.time()
            if late > 0.05:
                stalls.append((round(time.time(), 3), round(late, 4), round(cpu, 4)))

    start_cpu = time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            with open(path, "w") as f:
                json.dump({"max_stall_s": round(worst, 4), "max_stall_at": worst_at, "ticks": ticks, "loop_stalls": stalls[-50:], "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
                           "cpu_s": round(time.process_time() - start_cpu, 3),
                           "wall_s": round(time.perf_counter() - start, 3)}, f)
