"""The process supervisor on real processes: how children are started, prioritised, awaited and
stopped (the engine tests drive it through whole runs; these pin down its own promises)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import anyio
import pytest

from corral.core.procs import Supervised


def _alive_with(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_agents_run_niced_in_a_session_of_their_own(tmp_path: Path) -> None:
    """With autogroup scheduling a session is its own scheduling group, so the nice value is set on
    the agent's group too: otherwise 16 agents would each weigh as much as corral itself."""
    script = "echo sid=$(ps -o sid= -p $$) ni=$(ps -o ni= -p $$); cat /proc/self/autogroup 2>/dev/null || true"
    lines: list[str] = []

    async def main() -> None:
        proc = Supervised(["sh", "-c", script], cwd=tmp_path, on_lines=lines.extend, nice=5)
        result = await proc.run()
        assert result.exit_code == 0
        assert f"sid={proc.pid}" in lines[0].replace(" ", ""), "the agent leads a session of its own"

    anyio.run(main)
    assert "ni=5" in lines[0].replace(" ", "")
    if Path("/proc/self/autogroup").exists():
        assert lines[1].endswith("nice 5"), lines


def test_many_children_are_awaited_without_a_thread_each(tmp_path: Path) -> None:
    """asyncio's own child watcher starts one thread per child; corral waits on pidfds."""
    during: list[str] = []

    async def main() -> None:
        procs = [Supervised(["sleep", "0.6"], cwd=tmp_path) for _ in range(12)]
        results = []

        async def one(p: Supervised) -> None:
            results.append(await p.run())

        async with anyio.create_task_group() as tg:
            for p in procs:
                tg.start_soon(one, p)
            while not all(p.running for p in procs):
                await anyio.sleep(0.01)
            during.extend(t.name for t in threading.enumerate())
        assert [r.exit_code for r in results] == [0] * 12
        for p in procs:
            with pytest.raises(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)  # reaped already

    anyio.run(main)
    if hasattr(os, "pidfd_open"):
        assert not [n for n in during if n.startswith("asyncio-waitpid")], during


def test_a_child_started_while_its_caller_is_cancelled_is_still_stopped(tmp_path: Path) -> None:
    """The spawn runs in a worker thread; a cancellation arriving meanwhile must not leave the
    new process running unsupervised."""
    marker = f"corral-test-{uuid.uuid4().hex}"

    async def main() -> None:
        for _ in range(10):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(Supervised(["sh", "-c", f"sleep 30 # {marker}"], cwd=tmp_path, grace=0.5).run)
                    await anyio.sleep(0)
                    await anyio.sleep(0)  # the spawn is under way in its thread
                    scope.cancel()

    anyio.run(main)
    deadline = time.monotonic() + 5
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with(marker) == []


def test_stop_while_the_exit_is_awaited_twice(tmp_path: Path) -> None:
    """An agent that ignores TERM, stopped: the run's own wait and the stop's wait both end when the
    group is killed after the grace period, and its grandchild dies with it."""
    marker = f"corral-test-{uuid.uuid4().hex}"
    script = f"trap '' TERM; sleep 30 & sleep 30 # {marker}\n"

    async def main() -> None:
        proc = Supervised(["sh", "-c", script], cwd=tmp_path, grace=0.3)
        async with anyio.create_task_group() as tg:
            result = {}

            async def run() -> None:
                result["r"] = await proc.run()

            tg.start_soon(run)
            while not proc.running:
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            proc.stop("aborted")
        assert result["r"].reason == "aborted"
        assert result["r"].exit_code is not None

    anyio.run(main)
    assert _alive_with(marker) == []


def test_log_written_in_order_and_a_full_disk_surfaces(tmp_path: Path) -> None:
    """The log writer thread keeps every byte in order; a failing log write (disk full) ends the
    run with that error, as a write made on the event loop would, and stops the agent."""
    marker = f"corral-test-{uuid.uuid4().hex}"
    log = tmp_path / "agent.log"
    script = "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; printf tail"

    async def main() -> None:
        result = await Supervised(["sh", "-c", script], cwd=tmp_path, log_path=log).run()
        assert result.exit_code == 0
        with pytest.raises(BaseException) as info:
            await Supervised(["sh", "-c", f"yes {marker} # {marker}"], cwd=tmp_path, grace=0.5,
                             log_path=Path("/dev/full")).run()
        errors = info.value.exceptions if isinstance(info.value, BaseExceptionGroup) else [info.value]
        assert any(isinstance(e, OSError) and e.errno == 28 for e in errors), errors

    anyio.run(main)
    assert log.read_text() == "".join(f"line {i}\n" for i in range(3000)) + "tail"
    assert _alive_with(marker) == []


def test_children_get_their_cwd_as_pwd_and_an_environment_otherwise_untouched(tmp_path: Path) -> None:
    """opencode reads PWD before the real cwd: a stale PWD (corral's own) sent it into the user's
    checkout. Nothing else of the environment changes (Python's start-up in front of the command
    sets LC_CTYPE in a C locale, for one)."""
    outputs: list[dict[bytes, bytes]] = []
    env = {"PATH": os.environ["PATH"], "LANG": "C", "PWD": "/", "X": "1"}

    async def main() -> None:
        for i, given in enumerate((env, None)):
            log = tmp_path / f"environ-{i}"
            result = await Supervised(["cat", "/proc/self/environ"], cwd=tmp_path, env=given, log_path=log).run()
            assert result.exit_code == 0
            outputs.append(dict(e.split(b"=", 1) for e in log.read_bytes().split(b"\0") if e))

    anyio.run(main)
    assert outputs[0] == {k.encode(): v.encode() for k, v in {**env, "PWD": str(tmp_path)}.items()}
    assert outputs[1] == {**os.environb, b"PWD": str(tmp_path).encode()}
