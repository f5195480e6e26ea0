"""The supervisor: one process per repository that owns its live runs.

Started on demand by the first client that needs it (``corral run`` with the dashboard, ``corral run
--detach``), in a session of its own so that no terminal's end reaches it; single per repository by
an ``flock`` on ``supervisor.lock`` in the state dir. It serves :mod:`.protocol` on
``supervisor.sock`` (mode 0600; a peer of another uid is refused), and exits on its own once no run
is live and no client has been connected for a while (``CORRAL_SUPERVISOR_IDLE`` seconds, 60 by
default). SIGTERM stops every run (their cleanup runs) and then the supervisor.

Its agents are supervised as in any corral process: it is their subreaper, and its watchdog ends
them if the supervisor itself is killed; ``corral clean`` recovers what such a death leaves.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ..events import wire_dict
from . import protocol
from .host import CommandError, RunHost


class Supervisor:
    def __init__(self, state_dir: Path, repo_root: Path, idle: float) -> None:
        self.state_dir = state_dir
        self.repo_root = repo_root
        self.idle = idle
        self.hosts: dict[str, RunHost] = {}
        self.clients = 0
        self.quiet_since = time.monotonic()
        self.tg: Any = None

    # ---------------------------------------------------------------------------- lifecycle
    async def serve(self) -> None:
        path = protocol.socket_path(self.state_dir)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            path.unlink()  # a dead supervisor's (the lock says none lives)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        print(f"corral supervisor {os.getpid()} for {self.repo_root} listening on {path}", flush=True)
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                tg.start_soon(self._watch_idle, tg.cancel_scope)
                tg.start_soon(self._watch_signals, tg.cancel_scope)
                await listener.serve(self._handle, task_group=tg)
        finally:
            try:
                path.unlink()
                if path.parent != self.state_dir:
                    path.parent.rmdir()  # the private dir of a socket too long for the state dir
            except OSError:
                pass
            print(f"corral supervisor {os.getpid()} exits", flush=True)

    def live_runs(self) -> list[RunHost]:
        return [h for h in self.hosts.values() if h.live]

    async def _watch_idle(self, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(min(0.5, max(0.05, self.idle / 4)))
            if self.live_runs() or self.clients:
                self.quiet_since = time.monotonic()
            elif time.monotonic() - self.quiet_since >= self.idle:
                scope.cancel()
                return

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    continue  # no terminal is ours: a hangup means nothing here
                print(f"corral supervisor: {signal.Signals(signum).name}: stopping every run", flush=True)
                for host in self.live_runs():
                    host.stop()
                with anyio.CancelScope(shield=True):
                    for host in list(self.hosts.values()):
                        await host.done.wait()
                scope.cancel()
                return

    # ----------------------------------------------------------------------------- requests
    async def _handle(self, stream: SocketStream) -> None:
        raw = stream.extra(SocketAttribute.raw_socket)
        uid = protocol.peer_uid(raw)
        conn = _Conn(stream)
        self.clients += 1
        try:
            if uid != os.getuid():
                await conn.send({"type": "error", "error": f"refused: uid {uid} is not the supervisor's owner"})
                return
            hello = await conn.receive()
            if hello.get("op") != "hello" or hello.get("version") != protocol.VERSION:
                await conn.send({"type": "error", "error": f"protocol version {hello.get('version')!r} not supported "
                                 f"(this supervisor speaks {protocol.VERSION}); stop it with corral stop --all"})
                return
            await conn.send({"type": "hello", "version": protocol.VERSION, "pid": os.getpid(),
                             "runs": self.runs()})
            async with anyio.create_task_group() as tg:
                try:
                    while True:
                        msg = await conn.receive()
                        tg.start_soon(self._dispatch, conn, msg)
                except _GONE:
                    pass
                tg.cancel_scope.cancel()  # the client went: so do its streams
        except _GONE:
            pass
        except Exception as exc:  # one client's trouble never reaches the runs
            print(f"corral supervisor: a connection failed: {exc!r}", flush=True)
        finally:
            self.clients -= 1
            self.quiet_since = time.monotonic()
            for host, feed in conn.feeds:
                host.detach(feed)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    def runs(self) -> list[dict[str, Any]]:
        return [{"run": h.run_id, "live": h.live, "state": h.state, "waiting": h.waiting_for(),
                 "clients": h.clients, "exit_code": h.exit_code, "pid": os.getpid(), "started": h.started_at}
                for h in self.hosts.values()]

    async def _dispatch(self, conn: "_Conn", msg: dict[str, Any]) -> None:
        try:
            await self._answer(conn, msg)
        except _GONE:
            await conn.close()  # the client is gone or stuck: its connection ends, nothing else
        except Exception as exc:
            print(f"corral supervisor: {msg.get('op')!r} failed: {exc!r}", flush=True)
            await conn.close()

    async def _answer(self, conn: "_Conn", msg: dict[str, Any]) -> None:
        rid = msg.get("id", 0)
        op = str(msg.get("op", ""))
        try:
            if op == "runs":
                reply: dict[str, Any] = {"runs": self.runs()}
            elif op == "start":
                reply = await self._start(msg)
            elif op == "stop_all":
                reply = {"stopped": [h.run_id for h in self.live_runs() if h.stop()]}
            else:
                host = self.hosts.get(str(msg.get("run", "")))
                if host is None:
                    raise CommandError(f"no run {msg.get('run')!r} in this supervisor")
                if op == "subscribe":
                    snapshot, feed = host.attach(int(msg.get("tail", 2000)), pace=min(1.0, float(msg.get("pace") or 0)),
                                                 batch_tail=int(msg["batch_tail"]) if msg.get("batch_tail") else None)
                    conn.feeds.append((host, feed))
                    await conn.send({"type": "ack", "id": rid, "ok": True})
                    await conn.send({"type": "snapshot", "run": host.run_id, "live": host.live,
                                     "events": [wire_dict(ev) for ev in snapshot]})
                    await self._stream(conn, host, feed)
                    return
                args = {k: v for k, v in msg.items() if k not in ("op", "id", "run")}
                reply = await host.command(op, args, by=f"client {id(conn) % 10000}")
        except CommandError as exc:
            await conn.send({"type": "ack", "id": rid, "ok": False, "error": str(exc)})
            return
        except Exception as exc:  # a bug here must not take the supervisor (and its runs) down
            await conn.send({"type": "ack", "id": rid, "ok": False, "error": f"internal error: {exc!r}"})
            return
        await conn.send({"type": "ack", "id": rid, "ok": True, **reply})

    async def _stream(self, conn: "_Conn", host: RunHost, feed: Any) -> None:
        while True:
            # the end as it was before taking: what the run said last (its last lines, run_finished)
            # can come while a batch is being sent, and is sent before "ended"
            ended, closed = feed.ended, feed.closed
            events = await feed.take()
            if events:
                await conn.send_many([wire_dict(ev) for ev in events])
            if ended is not None:
                await conn.send({"type": "ended", "run": host.run_id, "exit_code": ended,
                                 "report": host.report})
                return
            if closed:
                return

    async def _start(self, msg: dict[str, Any]) -> dict[str, Any]:
        from ..pipeline import execute
        from .launch import StartRequest, prepare_request

        req = StartRequest.from_dict(msg.get("request") or {})
        if req.land:
            return await self._start_land(req)
        prep = await prepare_request(req)
        if str(prep.backend.root) != str(self.repo_root):
            await prep.backend.close()
            raise CommandError(f"this supervisor serves {self.repo_root}, not {prep.backend.root}")
        host = RunHost(prep.run_id, approve=prep.plan.approve, notify=prep.plan.notify or None,
                       notify_env=req.env)
        self.hosts[prep.run_id] = host

        async def run() -> None:
            await host.run(lambda approver, bus, on_rt: execute(prep, approver, bus, keep_worktrees=req.keep_worktrees,
                                                                on_runtime=on_rt))

        self.tg.start_soon(run)
        await anyio.sleep(0)
        return {"run": prep.run_id, "notes": list(prep.notes)}

    async def _start_land(self, req: Any) -> dict[str, Any]:
        """``corral land``'s work hosted here (a dashboard asked for it): the kept result of the
        ended run ``req.land`` merged onto base as it is now, verified, landed; under that run's id."""
        from ..codes import EXIT_FAILED, EXIT_OK
        from ..events import PhaseChanged, RunFinished, RunStarted
        from ..landing import find_kept, land_kept
        from ..vcs import open_backend
        from ..vcs.base import UsageError

        host = self.hosts.get(req.land)
        if host is not None and not host.done.is_set():
            raise CommandError(f"run {req.land} is still going: it lands by itself")
        try:
            backend = await open_backend(req.repo)
        except UsageError as exc:
            raise CommandError(str(exc)) from None
        try:
            if str(backend.root) != str(self.repo_root):
                raise CommandError(f"this supervisor serves {self.repo_root}, not {backend.root}")
            kept = await find_kept(backend, req.land)
        except UsageError as exc:
            await backend.close()
            raise CommandError(str(exc)) from None
        except BaseException:
            await backend.close()
            raise
        host = RunHost(kept.run, approve="all", notify_env=req.env)
        self.hosts[kept.run] = host

        async def body(approver: Any, bus: Any, on_rt: Any) -> int:
            # a dashboard following it sees a run: its start, then its end (not journaled: the
            # run's journal has its own start and end; landing adds what it did)
            bus.run = kept.run
            code = EXIT_FAILED
            try:
                bus.emit(RunStarted(repo=str(backend.root), base=kept.base, base_commit=await backend.resolve(kept.base),
                                    backend=backend.kind, run_dir=str(backend.state_dir / "runs" / kept.run), tasks=[]))
                bus.emit(PhaseChanged(phase="landing"))
                code = await land_kept(backend, kept, bus, env=req.env)
                return code
            finally:
                with anyio.CancelScope(shield=True):
                    bus.emit(PhaseChanged(phase="done"))
                    bus.emit(RunFinished(exit_code=code, state="completed" if code == EXIT_OK else "failed",
                                         kept_branches=[] if code == EXIT_OK else [kept.ref]))
                    await backend.close()

        self.tg.start_soon(host.run, body)
        await anyio.sleep(0)
        return {"run": kept.run, "notes": []}


_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.IncompleteRead,
         anyio.DelimiterNotFound, OSError, ValueError)


class _Conn:
    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.lock = anyio.Lock()
        self.feeds: list[tuple[RunHost, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return protocol.decode(await self.reader.receive_until(b"\n", protocol.MAX_LINE))

    async def send(self, message: dict[str, Any]) -> None:
        async with self.lock:
            await self.stream.send(protocol.encode(message))

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()

    async def send_many(self, messages: list[dict[str, Any]]) -> None:
        async with self.lock:
            await self.stream.send(b"".join(protocol.encode(m) for m in messages))


def _lock(state_dir: Path) -> int | None:
    """Take the supervisor's lock (held for the process's life); None if another one holds it."""
    fd = os.open(state_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="corral-supervisor")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--daemon", action="store_true", help="fork, and let the starter return at once")
    args = p.parse_args(argv)
    state_dir = Path(args.state_dir)
    if args.daemon and os.fork() > 0:
        os._exit(0)  # the starter waits for this process only; the supervisor goes on, orphaned
    os.chdir(state_dir)
    fd = _lock(state_dir)
    if fd is None:
        return 0  # another supervisor serves this repository: clients reach it
    from .client import supervisor_env_idle

    sup = Supervisor(state_dir, Path(args.repo), supervisor_env_idle())
    anyio.run(sup.serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
