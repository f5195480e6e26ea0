"""Agents, setup steps and verify in a bubblewrap sandbox: they can write only into their own
workspace (and what a commit there needs), never into the user's checkout, ``$HOME`` or another
task's workspace.

A command runs as ``bwrap ... -- ARGV`` under its reaper (:mod:`.reaper`): the whole filesystem
read-only (``--ro-bind / /``), a fresh ``/dev`` and ``/proc``, a private ``/tmp`` (and temp dir), the
paths a task may see again on top (its repository, which may itself live under the temp dir), and
the paths it may write bound read-write last, deepest last, so the most specific rule wins. Its own
pid namespace and ``--die-with-parent`` end the whole sandbox with its bwrap, an escaped ``setsid``
daemon included, even when corral and the reaper are SIGKILLed; ``network = false`` adds
``--unshare-net`` (loopback only, and down).

The sandbox stays in the command's process group (no ``--new-session``), so TERM to the group still
reaches the command. bwrap itself must not die of that TERM: with ``--die-with-parent`` its death
KILLs the sandbox at once, and the command would lose its grace period. So bwrap is started with
TERM ignored (``env --ignore-signal=TERM``, which the reaper carries out itself: one exec less) and
the command with TERM back to its default (``env --default-signal=TERM``); the reaper KILLs bwrap
when the grace period is over. Leaving out
``--new-session`` opens no ``TIOCSTI`` hole: corral starts every command in a session without a
controlling terminal (its reaper hub's, or one of its own).
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, cast

if TYPE_CHECKING:
    import anyio

    from .agents import Profile
    from .vcs.base import Backend, Workspace
    from .vcs.git import GitBackend
    from .vcs.jj import JjBackend

MODES = ("auto", "bwrap", "none")

#: Package managers' caches, writable wherever they exist: setup steps install with them, agents run
#: the project's tests and installs too. Missing ones are not created.
TOOL_CACHES = (
    "~/.cache", "~/.npm", "~/.yarn", "~/.bun/install/cache", "~/.local/share/pnpm", "~/.cargo/registry",
    "~/.cargo/git", "~/go/pkg/mod",
)


@dataclass(frozen=True)
class Sandbox:
    """How one command runs: in bwrap (``bwrap`` is its path) or as it is (``why`` says why)."""

    bwrap: str = ""
    network: bool = True
    #: GNU env's --ignore-signal/--default-signal work here (see the module's docstring)
    signals: bool = True
    why: str = ""

    @property
    def on(self) -> bool:
        return bool(self.bwrap)

    def describe(self) -> str:
        """``bwrap (network on)``, or ``none (<why>)``: for pane lines, the journal, ``corral agents``."""
        if self.on:
            return f"bwrap (network {'on' if self.network else 'off'})"
        return f"none ({self.why})" if self.why else "none"

    def wrap(self, argv: list[str], *, cwd: str, visible: Iterable[Path] = (),
             writable: Iterable[Path] = (), moved: Mapping[Path, tuple[Path, bool]] | None = None) -> list[str]:
        """``argv`` as it runs in this sandbox, in ``cwd``: ``visible`` paths read-only (again, over
        the private temp dirs), ``writable`` ones read-write, ``moved`` ones (destination: (source,
        writable)) show another path. Paths that do not exist are left out."""
        if not self.on:
            return argv
        out = [self.bwrap, "--die-with-parent", "--unshare-pid"]
        if not self.network:
            out.append("--unshare-net")
        out += ["--ro-bind", "/", "/", "--dev", FRESH[0], "--proc", FRESH[1]]
        private, tools = _private_dirs(os.environ.get("PATH", ""), tempfile.gettempdir())
        mounts = {p: "--tmpfs" for p in private}
        # tools that live in a temp dir (a venv or a PATH entry there: CI checkouts often are) stay
        # visible, read-only, over the private ones
        mounts.update({p: "--ro-bind" for p in tools if os.path.isdir(p)})
        mounts.update({os.path.realpath(p): "--ro-bind" for p in visible if os.path.lexists(p)})
        mounts.update({os.path.realpath(p): "--bind" for p in writable if os.path.lexists(p)})
        sources = {}
        for dest, (src, rw) in (moved or {}).items():
            if os.path.lexists(src):  # (the destination may be made by an earlier mount)
                real = os.path.realpath(dest)
                mounts[real], sources[real] = "--bind" if rw else "--ro-bind", os.path.realpath(src)
        # a mount hides what earlier ones put below it: the deepest path's rule wins
        for path in sorted(mounts, key=lambda p: (p.rstrip(os.sep).count(os.sep), p)):
            if mounts[path] == "--ro-bind" and path not in sources and _shown_read_only(path, mounts, sources):
                continue  # (each mount costs the sandbox's start, and the kernel makes them one at a time)
            out += [mounts[path], path] if mounts[path] == "--tmpfs" else [mounts[path], sources.get(path, path), path]
        out += ["--chdir", os.path.abspath(cwd), "--"]
        if self.signals:
            env = shutil.which("env") or "env"  # corral's PATH found bwrap; an agent's may differ
            return [env, "--ignore-signal=TERM", *out, env, "--default-signal=TERM", *argv]
        return out + argv


@functools.lru_cache(maxsize=8)
def _private_dirs(path_env: str, tempdir: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the temp dirs a sandbox gets private ones of: ``/tmp`` and ``tempdir``, real paths; the real
    paths of corral's tools that lie in them: its Python's prefixes, the entries of ``path_env``).
    The same for every agent of a process: resolved once (some forty ``lstat`` calls each time)."""
    private = ("/tmp", os.path.realpath(tempdir))
    real = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, *path_env.split(os.pathsep))
            if p and os.path.isabs(p)}
    return private, tuple(sorted(p for p in real if any(_within_dir(p, d) and p != d for d in private)))


#: the sandbox's own ``/dev`` and ``/proc`` (``--dev``, ``--proc``): what lies below them on the
#: machine is not shown there
FRESH = ("/dev", "/proc")


def _shown_read_only(path: str, mounts: Mapping[str, str], sources: Mapping[str, str]) -> bool:
    """Whether ``path`` is shown read-only as it is already: the nearest mount above it is a
    read-only bind of its own place (``/`` is one), not a private dir, nor another path's contents,
    nor the sandbox's own ``/dev`` or ``/proc`` (a checkout in ``/dev/shm``)."""
    parent = os.path.dirname(path)
    while parent not in mounts and parent != os.sep and parent not in FRESH:
        parent = os.path.dirname(parent)
    if parent in FRESH and parent not in mounts:
        return False
    return parent == os.sep or (mounts[parent] == "--ro-bind" and parent not in sources)


def _within_dir(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


OFF = Sandbox(why="sandbox = none")

_probed: dict[str, tuple[str, bool, str]] = {}
#: the probes under way, by bwrap's path: a second caller waits for the first one's answer
_probing: dict[str, "anyio.Event"] = {}


async def probe() -> tuple[str, bool, str]:
    """(path of a bwrap that works here, whether the TERM handling of :meth:`Sandbox.wrap` works,
    why there is none): a sandbox with every option corral uses, tried once per process (preflight
    starts it early, beside its git processes, and asks again when it needs the answer)."""
    import anyio

    found = shutil.which("bwrap")
    if found is None:
        return "", False, "bwrap is not installed (Debian/Ubuntu package: bubblewrap)"
    while found not in _probed and found in _probing:
        await _probing[found].wait()
    if found in _probed:
        return _probed[found]
    _probing[found] = anyio.Event()
    try:
        _probed[found] = await _try_bwrap(found)
    finally:
        _probing.pop(found).set()
    return _probed[found]


def probe_ahead() -> None:
    """Probe bwrap now, outside any run (a standby does, before it waits for a command): the run's
    preflight finds the answer known. Only a bwrap that works is remembered: one that cannot run is
    tried again when a run asks (what stopped it may be gone by then), so no run goes without a
    sandbox it could have had; one that stopped working since fails at its command's start."""
    found = shutil.which("bwrap")
    if found is not None and found not in _probed:
        result = _try_bwrap_now(found)
        if result[0]:
            _probed[found] = result


async def _try_bwrap(found: str) -> tuple[str, bool, str]:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(_try_bwrap_now, found)


def _try_bwrap_now(found: str) -> tuple[str, bool, str]:
    result: tuple[str, bool, str] = ("", False, "")
    for signals in (True, False):
        trial = Sandbox(bwrap=found, network=False, signals=signals)
        code, out = _run_trial(trial.wrap(["true"], cwd="/"), 20.0)
        if code == 0:
            result = (found, signals, "")
            break
        lines = [line for line in out.splitlines() if line.strip()]
        result = ("", False, f"{found} cannot run here: {lines[-1] if lines else f'exit {code}'}")
    return result


def _run_trial(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """(exit code, combined output) of a probe's ``bwrap ... true``, run as preflight's git processes
    are (in a worker thread, in a process group of its own, reaped here; KILLed at ``timeout``): no
    reaper process, whose Python start was most of the probe's time. bwrap's ``--die-with-parent``
    ends it with corral."""
    import contextlib
    import signal
    import subprocess

    try:
        proc = subprocess.Popen(argv, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return None, str(exc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    _reap_left_in(proc.pid, timeout)
    return proc.returncode, out.decode(errors="replace")


def _reap_left_in(session: int, timeout: float) -> None:
    """Reap what a probe left in its ``session`` (its own) that came to this process: bwrap with
    ``--unshare-pid`` exits once its command's exit code is in, while the first process of its pid
    namespace (a bwrap too) may still be on its way out; that one is reparented to corral (a child
    subreaper), which must reap it, or it stays a zombie for as long as corral runs (a standby, the
    supervisor). Killed with the session if it is not gone within ``timeout``."""
    import signal
    import time

    from .reaper import processes

    me, deadline = os.getpid(), time.monotonic() + timeout

    def left() -> list[int]:
        # (not the session's leader: the probe's, reaped; its pid may be another child's by now)
        return [p.pid for p in processes() if p.ppid == me and p.sid == session and p.pid != session]

    while pids := left():
        reaped = 0
        for pid in pids:
            try:
                reaped += os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:  # (a thread's Popen reaped it meanwhile)
                reaped += 1
        if reaped == len(pids):
            continue  # (look again at once: all were gone)
        if time.monotonic() > deadline:
            try:
                os.killpg(session, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
        time.sleep(0.005)


@dataclass
class Policy:
    """The sandbox settings of a run: the plan's (or ``--sandbox``'s), each task's own, and what
    bwrap can do on this machine."""

    setting: str = "auto"
    network: bool = True
    #: task name -> (setting, network) where the plan's task sets them (None: not set)
    tasks: dict[str, tuple[str | None, bool | None]] | None = None
    #: ``--sandbox``: wins over every other setting
    forced: str | None = None
    bwrap: str = ""
    signals: bool = True
    problem: str = ""

    def setting_of(self, task: str, profile: "Profile | None") -> tuple[str, bool]:
        own = (self.tasks or {}).get(task, (None, None))
        setting = self.forced or own[0] or (profile.sandbox if profile else None) or self.setting
        network = own[1] if own[1] is not None else (
            profile.network if profile and profile.network is not None else self.network)
        return setting, network

    def resolve(self, task: str, profile: "Profile | None" = None) -> Sandbox:
        setting, network = self.setting_of(task, profile)
        if setting == "none":
            return Sandbox(network=network, why="sandbox = none")
        if not self.bwrap:
            return Sandbox(network=network, why=self.problem)
        return Sandbox(bwrap=self.bwrap, network=network, signals=self.signals)


def state_paths(entries: Iterable[str], env: Mapping[str, str]) -> list[Path]:
    """An agent's own state and cache paths (a profile's ``state``), expanded: ``~`` and ``$VAR``
    (left out when VAR is unset), wildcards. Entries ending in ``/`` are directories the agent needs:
    made when missing (it cannot make them itself in a read-only ``$HOME``)."""
    home = env.get("HOME") or os.path.expanduser("~")
    out: list[Path] = []
    for entry in entries:
        if entry.startswith("$"):
            var, _, rest = entry[1:].partition("/")
            if not env.get(var):
                continue
            entry = env[var] + ("/" + rest if rest else "/")
        path = home + entry[1:] if entry.startswith("~") else entry
        if entry.endswith("/"):
            try:
                Path(path).mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
        out += [Path(p) for p in sorted(glob.glob(path.rstrip("/") or "/"))]
    return out


def repo_paths(backend: "Backend", ws: "Workspace | None") -> tuple[list[Path], list[Path]]:
    """(paths to see, paths to write) in the repository for a command in ``ws`` (None: in no
    workspace of the run; it writes nothing of the repository). git: the worktree's admin dir, the
    directories of its branch's ref and reflog (shared with the run's other task branches: the
    guard's hooks refuse the rest), the reftable when refs are stored so, and the file the guard
    writes the workspace's heads to (its objects: :func:`object_binds`). jj: the repository's store
    (``.jj/repo``) and, colocated, its git dir, which jj writes through."""
    if backend.kind == "git":
        git = cast("GitBackend", backend)
        common = Path(git.common_dir)
        visible = [Path(git.root), common]
        if ws is None:
            return visible, []
        # (the object store is not among them: see :func:`object_binds`)
        writable = [Path(ws.path), common / "reftable"]
        if ws.admin:
            writable.append(Path(ws.admin))
        branch_dir = str(Path(ws.ref).parent)
        writable += [common / "refs" / "heads" / branch_dir, common / "logs" / "refs" / "heads" / branch_dir]
        if ws.key:
            heads = git.registry.heads_log(ws.key)
            heads.parent.mkdir(parents=True, exist_ok=True)
            heads.touch()
            writable.append(heads)
        return visible, writable
    jj = cast("JjBackend", backend)
    visible = [Path(jj.root), Path(jj.repo_dir)]
    if ws is None:
        return visible, []
    writable = [Path(ws.path), Path(jj.repo_dir)]
    if jj.colocated:
        writable.append(Path(jj.root) / ".git")
    return visible, writable


def object_binds(backend: "Backend", ws: "Workspace | None") -> dict[Path, tuple[Path, bool]]:
    """The mounts (destination: (source, writable)) that give a command writing commits in ``ws`` an
    object store of its own (see :mod:`.vcs.objstore`): its own directory over the repository's
    ``objects``, the real store read-only inside it. Made (and lent to the repository) here, before
    the command starts. git only: a jj workspace writes its repository's store."""
    if backend.kind != "git" or ws is None or not ws.key:
        return {}
    from .vcs import objstore

    git = cast("GitBackend", backend)
    common = Path(git.common_dir)
    own = objstore.objects_dir(git.state_dir, ws.key)
    objstore.lend(common, own)
    return {common / "objects": (own, True), common / "objects" / objstore.REAL: (common / "objects", False),
            # (read-only: the line naming the real store cannot be taken away)
            common / "objects" / "info": (own / "info", False)}
