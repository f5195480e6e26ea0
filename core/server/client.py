"""What every front end uses to follow a run and act on it: a :class:`Link`.

:class:`LocalLink` reaches a :class:`~corral.core.server.host.RunHost` in the same process (headless
runs, programs, tests); :class:`SocketLink` reaches one in the repository's supervisor. Both give
the same events (first the run so far, then live) and take the same commands, so the dashboard
and the headless renderer cannot tell them apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ..events import Event, event_from_dict
from . import protocol
from .host import CommandError, RunHost


_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.IncompleteRead,
         anyio.DelimiterNotFound, OSError, ValueError)


class SnapshotEnd(Event):
    """Not sent by the supervisor: a link yields it after the run-so-far, before live events. A
    client replays what came before it quietly (no toasts for old news; a decision taken since
    is not put to the person)."""

    TYPE = "snapshot_end"


class LinkError(Exception):
    """The supervisor can't be reached, or refused: one line for the person."""


class NoSupervisor(LinkError):
    """No supervisor listens for this repository: no run of it is live."""


class Link:
    """A run, seen from a client."""

    run_id: str = ""
    #: whether closing this client leaves the run going (a supervisor's run) or stops it
    detachable = False
    #: the run's exit code, once the event stream has ended with the run
    exit_code: int | None = None
    #: set by a view before it follows the run: it repaints every ``pace`` seconds and shows at most
    #: ``batch_tail`` lines of a pane at a time, so live output comes no more often, each pane's cut
    #: to its newest lines (the log on disk has every one)
    pace: float = 0.0
    batch_tail: int | None = None

    def events(self) -> AsyncIterator[Event]:
        """The run's events: the run so far, then live ones; ends when the run ends (``exit_code``
        is then set) or the link is lost."""
        raise NotImplementedError

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Carry out a command on the run; raises :class:`CommandError` with the refusal."""
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class LocalLink(Link):
    def __init__(self, host: RunHost, tail: int | None = None, lossless: bool = False) -> None:
        self.host = host
        self.run_id = host.run_id
        self.tail = tail
        #: every line, however far behind the client is (a headless renderer's output is the record)
        self.lossless = lossless
        self._feed: Any = None

    async def events(self) -> AsyncIterator[Event]:
        snapshot, feed = self.host.attach(self.tail, lossless=self.lossless, pace=self.pace,
                                          batch_tail=self.batch_tail)
        self._feed = feed
        try:
            for ev in snapshot:
                yield ev
            yield SnapshotEnd(run=self.run_id)
            while True:
                # the end as it was before taking: events pushed while these are handled come first
                ended, closed = feed.ended, feed.closed
                for ev in await feed.take():
                    yield ev
                if ended is not None:
                    self.exit_code = ended
                    return
                if closed:
                    return
        finally:
            self.host.detach(feed)

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        return await self.host.command(op, args, by="this terminal")

    async def aclose(self) -> None:
        if self._feed is not None:
            self.host.detach(self._feed)


# ------------------------------------------------------------------------------------ socket
class Connection:
    """One connection to the supervisor: requests with ids, and answers matched to them."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self._next = 1
        self._waiting: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._lock = anyio.Lock()
        self.closed_why = ""
        self.hello: dict[str, Any] = {}

    async def send(self, message: dict[str, Any]) -> None:
        async with self._lock:
            await self.stream.send(protocol.encode(message))

    async def receive(self) -> dict[str, Any]:
        line = await self.reader.receive_until(b"\n", protocol.MAX_LINE)
        return protocol.decode(line)

    def deliver(self, msg: dict[str, Any]) -> bool:
        """An answer to a request goes to whoever waits for it; False for any other message."""
        if msg.get("type") != "ack":
            return False
        waiter = self._waiting.pop(int(msg.get("id", 0)), None)
        if waiter is not None:
            waiter[1].append(msg)
            waiter[0].set()
        return True

    def gone(self, why: str) -> None:
        """The supervisor went: nobody waits for an answer any more."""
        self.closed_why = self.closed_why or why
        for event, _ in self._waiting.values():
            event.set()
        self._waiting.clear()

    async def ask(self, op: str, **args: Any) -> dict[str, Any]:
        """A command on a connection nobody else reads (``corral stop``, ``send``, ``run``): sent,
        then its answer read here. Raises :class:`CommandError` with the refusal."""
        rid = self._next
        self._next += 1
        try:
            await self.send({"op": op, "id": rid, **args})
            while True:
                msg = await self.receive()
                if msg.get("type") == "ack" and msg.get("id") == rid:
                    break
        except _GONE as exc:
            raise CommandError(f"the supervisor is gone ({type(exc).__name__})") from None
        if not msg.get("ok"):
            raise CommandError(str(msg.get("error") or "refused"))
        return msg

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command and wait for its answer, read by the events of a :class:`SocketLink`
        in another task (a client that only sends commands uses :meth:`ask`)."""
        rid = self._next
        self._next += 1
        event: anyio.Event = anyio.Event()
        box: list[dict[str, Any]] = []
        self._waiting[rid] = (event, box)
        try:
            await self.send({"op": op, "id": rid, **args})
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._waiting.pop(rid, None)
            raise CommandError(f"the supervisor is gone: {exc}") from None
        await event.wait()
        if not box:
            raise CommandError(self.closed_why or "the supervisor is gone")
        reply = box[0]
        if not reply.get("ok"):
            raise CommandError(str(reply.get("error") or "refused"))
        return reply

    async def aclose(self) -> None:
        self.closed_why = self.closed_why or "closed"
        await self.stream.aclose()


async def open_connection(state_dir: Path) -> Connection:
    """Connect to the repository's supervisor and say hello; raises LinkError when none runs."""
    path = protocol.socket_path(state_dir)
    try:
        stream = await anyio.connect_unix(path)
    except OSError as exc:
        raise NoSupervisor(f"no corral supervisor runs for this repository ({exc.strerror or exc})") from None
    conn = Connection(stream)
    try:
        await conn.send({"op": "hello", "version": protocol.VERSION})
        hello = await conn.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, ValueError, anyio.IncompleteRead) as exc:
        await conn.aclose()
        raise LinkError(f"the corral supervisor did not answer ({type(exc).__name__})") from None
    if hello.get("type") != "hello":
        await conn.aclose()
        raise LinkError(str(hello.get("error") or "the corral supervisor refused the connection"))
    conn.hello = hello
    return conn


class SocketLink(Link):
    """A run in the supervisor, followed over its socket."""

    detachable = True

    def __init__(self, conn: Connection, run_id: str, tail: int = 2000) -> None:
        self.conn = conn
        self.run_id = run_id
        self.tail = tail
        self.lost = ""

    async def events(self) -> AsyncIterator[Event]:
        # read here, in the caller's task (no task of its own across the yields): answers to the
        # commands sent meanwhile are handed to their waiters as they come
        conn = self.conn
        try:
            sub: dict[str, Any] = {"op": "subscribe", "run": self.run_id, "tail": self.tail, "id": 0}
            if self.pace:
                sub["pace"] = self.pace
            if self.batch_tail is not None:
                sub["batch_tail"] = self.batch_tail
            await conn.send(sub)
            while True:
                msg = await conn.receive()
                if msg.get("type") == "ack" and msg.get("id") == 0:
                    if not msg.get("ok"):
                        raise LinkError(str(msg.get("error") or "subscribe refused"))
                    continue
                if conn.deliver(msg):
                    continue
                kind = msg.get("type")
                if kind == "snapshot":
                    for data in msg.get("events", []):
                        ev = event_from_dict(data)
                        if ev is not None:
                            yield ev
                    yield SnapshotEnd(run=self.run_id)
                elif kind == "ended":
                    self.exit_code = int(msg.get("exit_code", 1))
                    return
                else:
                    ev = event_from_dict(msg)
                    if ev is not None:
                        yield ev
        except _GONE as exc:
            self.lost = conn.closed_why or f"the supervisor closed the connection ({type(exc).__name__})"
        finally:
            conn.gone(self.lost or "the run's events ended")

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """A command on the run. Its answer is read by :meth:`events`, in the task iterating it:
        send commands from another task (the dashboard's workers do), never from the loop's body."""
        return await self.conn.request(op, run=self.run_id, **args)

    async def aclose(self) -> None:
        await self.conn.aclose()


class StartRefused(LinkError):
    """The run of a :class:`StartingLink` did not start: no supervisor could be had, or it refused
    the run (its preflight found a problem). One line for the person."""


class StartingLink(Link):
    """A run still to be started in the repository's supervisor (started first if none runs), then
    followed over the same connection, as a :class:`SocketLink`. A view can open on it at once: the
    supervisor is started (or connected) while the view is built, and the run asked of it once the
    view's ``gate`` lets it. Its events begin once the run has started, and a command sent
    meanwhile waits for the start (a stop stops the run as soon as it exists).
    :meth:`events` raises :class:`StartRefused` when the run cannot start."""

    def __init__(self, state_dir: Path, repo_root: Path, request: Any, tail: int = 2000) -> None:
        self.state_dir, self.repo_root, self.start_request, self.tail = state_dir, repo_root, request, tail
        #: set by a view: awaited once the supervisor is connected (started), before the run is
        #: asked of it (a dashboard has the run's panes drawn first: see :meth:`events`)
        self.gate: Callable[[], Awaitable[None]] | None = None
        self._started = anyio.Event()
        #: the start was withdrawn before it was asked (:meth:`withdraw`)
        self.withdrawn = False
        self._asked = False
        #: the run's link once it has started
        self.link: SocketLink | None = None
        #: why the run did not start
        self.refused = ""

    @property
    def starting(self) -> bool:
        """Whether the run is still being started."""
        return not self._started.is_set()

    @property
    def detachable(self) -> bool:  # type: ignore[override]
        """Once the run exists: a dashboard closed before that leaves nothing going."""
        return self.link is not None

    @property
    def lost(self) -> str:
        return self.link.lost if self.link is not None else ""

    async def events(self) -> AsyncIterator[Event]:
        try:
            link = await self._start()
        except StartRefused as exc:
            self.refused = str(exc)
            raise
        finally:
            self._started.set()  # commands waiting for the start go on (or fail: it did not start)
        if link is None:
            self.refused = "the run was stopped before it started"
            return
        try:
            async for ev in link.events():
                yield ev
        finally:
            self.exit_code = link.exit_code

    async def _start(self) -> SocketLink | None:
        """The supervisor connected (started first if need be), the view's ``gate`` passed, the
        run asked of it: its link (also :attr:`link`), or None when the start was withdrawn
        meanwhile. The connection is closed unless it became the run's. Raises
        :class:`StartRefused`."""
        try:
            conn = await ensure_supervisor(self.state_dir, self.repo_root)
        except LinkError as exc:
            raise StartRefused(str(exc)) from None
        try:
            if self.gate is not None:
                # the view built before the run's 64 workspaces and agents start: built while
                # they started, on the same cores, it took three times as long
                await self.gate()
            if self.withdrawn:
                return None
            self._asked = True
            try:
                reply = await conn.ask("start", request=self.start_request.to_dict())
            except CommandError as exc:
                raise StartRefused(str(exc)) from None
            link = SocketLink(conn, str(reply["run"]), self.tail)
            link.pace, link.batch_tail = self.pace, self.batch_tail
            self.link, self.run_id = link, link.run_id
            return link
        finally:
            if self.link is None:
                await conn.aclose()

    def withdraw(self) -> bool:
        """Do not start the run if it has not been asked of the supervisor yet (a dashboard
        closed while it waits to draw its panes); True if so: nothing will start."""
        if not self._asked:
            self.withdrawn = True
        return self.withdrawn

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        await self._started.wait()
        if self.link is None:
            raise CommandError(self.refused or "the run did not start")
        return await self.link.request(op, **args)

    async def aclose(self) -> None:
        if self.link is not None:
            await self.link.aclose()


async def live_runs(state_dir: Path) -> dict[str, dict[str, Any]]:
    """What the repository's supervisor says of its runs: run id -> its row (``live``, ``waiting``,
    ...) with the supervisor's ``pid``; {} when no supervisor runs. Starts nothing."""
    try:
        conn = await open_connection(state_dir)
    except LinkError:
        return {}
    await conn.aclose()
    return {r["run"]: {**r, "pid": conn.hello.get("pid")} for r in conn.hello.get("runs", [])}


def own_process_runs(state_dir: Path) -> dict[str, int]:
    """The repository's runs that a process of their own runs (``corral run --headless``, a
    dashboard hosting its run), not its supervisor: run id -> that process, where it is alive and
    started before its run did (a pid the system gave another process since is not the run's). Such
    a run stops as Ctrl-C stops it, on SIGTERM."""
    from ..journal import ACTIVE_STATES, list_runs
    from ..reaper import alive

    out: dict[str, int] = {}
    for data in list_runs(state_dir):
        pid = int(data.get("pid") or 0)
        if data.get("state") not in ACTIVE_STATES or pid <= 0 or pid == os.getpid() or not alive(pid):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"corral.core.server.supervisor" in f.read():
                    continue
        except OSError:
            continue
        started = process_start(pid)
        if started is None or started > float(data.get("started") or 0) + 1:  # (the boot time is in seconds)
            continue
        out[str(data["run"])] = pid
    return out


def process_start(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch, to the second); None where /proc does not say."""
    from ..reaper import stat_fields

    try:
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + int(stat_fields(pid)[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------- the supervisor
def supervisor_env_idle() -> float:
    try:
        return float(os.environ.get("CORRAL_SUPERVISOR_IDLE", "") or 60.0)
    except ValueError:
        return 60.0


async def start_run(state_dir: Path, repo_root: Path, request: Any) -> tuple[str, int]:
    """Start ``request`` (a :class:`~corral.core.server.launch.StartRequest`) in the repository's
    supervisor, started first if none runs. Returns (run id, supervisor pid); raises
    :class:`LinkError` when no supervisor can be had, :class:`CommandError` when it refuses."""
    conn = await ensure_supervisor(state_dir, repo_root)
    try:
        reply = await conn.ask("start", request=request.to_dict())
    finally:
        await conn.aclose()
    return str(reply["run"]), int(conn.hello.get("pid", 0))


async def ensure_supervisor(state_dir: Path, repo_root: Path, timeout: float = 20.0) -> Connection:
    """A connection to the repository's supervisor, started first if none runs (in a session of
    its own, detached from this terminal, its output in ``supervisor.log`` in the state dir)."""
    try:
        return await open_connection(state_dir)
    except LinkError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "supervisor.log"
    with open(log, "ab") as out:
        starter = subprocess.Popen(
            [sys.executable, "-m", "corral.core.server.supervisor", "--state-dir", str(state_dir),
             "--repo", str(repo_root), "--daemon"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True)
    await anyio.to_thread.run_sync(starter.wait)  # it forks the supervisor and exits at once
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            return await open_connection(state_dir)
        except LinkError as exc:
            last = str(exc)
        await anyio.sleep(0.02)
    tail = ""
    try:
        tail = log.read_text(errors="replace").strip().splitlines()[-1]
    except (OSError, IndexError):
        pass
    raise LinkError(f"the corral supervisor did not start ({tail or last}); see {log}")
