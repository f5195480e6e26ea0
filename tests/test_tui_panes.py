"""The run's end reaching a client that was busy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from conftest import write_plan
from corral.core.events import EventBus, RunFinished, TaskOutput
from corral.core.server.client import LocalLink, SnapshotEnd, SocketLink, open_connection
from corral.core.server.host import RunHost
from test_supervisor import start_detached, state_dir, wait_ended, wait_supervisor_gone

RUN = "r1"


def test_a_local_client_busy_when_the_run_ends_still_gets_its_last_events() -> None:
    go: Any = None

    async def body(approver: Any, bus: EventBus, on_runtime: Any) -> int:
        bus.emit(TaskOutput(run=RUN, task="t", lines=["first"]))
        await go.wait()
        bus.emit(TaskOutput(run=RUN, task="t", lines=["last"]))
        bus.emit(RunFinished(run=RUN, state="done", exit_code=0, report="", kept_branches=[]))
        return 0

    async def main() -> list[Any]:
        nonlocal go
        go = anyio.Event()
        host = RunHost(RUN)
        seen: list[Any] = []
        link = LocalLink(host)
        async with anyio.create_task_group() as tg:
            tg.start_soon(host.run, body)
            async for ev in link.events():
                seen.append(ev)
                if isinstance(ev, TaskOutput) and ev.lines == ["first"]:
                    go.set()
                    await host.done.wait()  # the run ends while this client handles an event
        assert link.exit_code == 0
        return seen

    seen = anyio.run(main)
    assert [line for ev in seen if isinstance(ev, TaskOutput) for line in ev.lines] == ["first", "last"]
    assert isinstance(seen[-1], RunFinished)


def test_a_client_reading_slowly_over_the_socket_gets_the_runs_last_lines_and_its_end(repo: Path,
                                                                                      tmp_path: Path) -> None:
    """The supervisor was still sending a batch to a slow client when the run ended: it said
    "ended" next and dropped what came meanwhile (the agents' last lines, run_finished)."""
    plan = write_plan(tmp_path / "plan.toml", """
        agent = "shell"
        setup = "none"
        approve = "none"
        [[tasks]]
        name = "talker"
        prompt = 'seq 1 40000 | sed "s/$/ a line long enough to fill the socket quickly/"; echo "the very last line"'
    """)

    async def watch() -> tuple[list[Any], int | None]:
        conn = await open_connection(state_dir(repo))
        link = SocketLink(conn, run, tail=2000)
        seen: list[Any] = []
        async for ev in link.events():
            seen.append(ev)
            if isinstance(ev, SnapshotEnd):
                # a client too busy to read: the socket fills, the supervisor waits in a send, and
                # the run ends meanwhile
                await anyio.to_thread.run_sync(wait_ended, repo, run)
        await link.aclose()
        return seen, link.exit_code

    run = start_detached(repo, plan)
    seen, code = anyio.run(watch)
    assert code == 0
    shown = [line for ev in seen if isinstance(ev, TaskOutput) for line in ev.lines]
    assert shown and shown[-1] == "the very last line"
    assert any(isinstance(ev, RunFinished) for ev in seen)
    wait_supervisor_gone(repo)


