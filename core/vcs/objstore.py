"""An agent's own object directory: what it can write of a git repository's object store.

A commit needs the object store written, and the object store is the whole history of the user's
repository: one ``rm -rf "$(git rev-parse --git-common-dir)/objects"`` by an agent would delete every
commit the user ever made. So in the sandbox the repository's ``objects`` is not the real one: it is
a directory of the agent's own (:func:`objects_dir`, under corral's state dir), bound read-write over
``<common dir>/objects``, and the real object store is bound read-only inside it, at ``real``, named
as its alternate (``info/alternates``: ``real``). The agent's git reads every object of the
repository and writes new ones into its own directory, and can delete nothing of the user's.

Outside the sandbox the agent's directory is an alternate of the real store (a line of
``objects/info/alternates``, added by :func:`lend`), so corral, the user and the other agents see
every commit the agent made at once, and a crash at any moment leaves a repository whose every ref
resolves. When its workspace is removed, :func:`absorb` hard-links the agent's objects into the real
store, then takes the line out, then deletes the directory: at every moment each object is in one
place git looks, at least. Outside the sandbox ``real`` is an empty directory (git skips it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator

#: The name, inside an agent's object directory, of the real object store (read-only, in the sandbox)
REAL = "real"
_HEX = frozenset("0123456789abcdef")


def objects_dir(state_dir: Path, key: str) -> Path:
    """The object directory of the workspace ``key`` (see the module's docstring)."""
    return state_dir / "objects" / key


def lend(common_dir: Path, own: Path) -> None:
    """Make ``own`` an agent's object directory (its alternate: the real store, at ``real``) and an
    alternate of the repository's object store. Nothing is changed when it is one already."""
    (own / REAL).mkdir(parents=True, exist_ok=True)
    (own / "info").mkdir(exist_ok=True)
    alt = own / "info" / "alternates"
    if not alt.exists():
        alt.write_text(f"{REAL}\n", encoding="utf-8")
    with _alternates(common_dir) as lines:
        if str(own) not in lines:
            lines.append(str(own))


def absorb(common_dir: Path, own: Path) -> None:
    """Move the objects an agent wrote in ``own`` into the repository's object store, stop naming
    ``own`` as an alternate, delete it. Safe to repeat: a crash in between leaves every object where
    git finds it. Raises OSError when an object cannot be copied (``own`` then stays as it is)."""
    if own.is_dir():
        store = common_dir / "objects"
        for entry in sorted(os.listdir(own)):
            if len(entry) == 2 and set(entry) <= _HEX:
                # (not a temp file of a write cut short)
                names = [n for n in os.listdir(own / entry) if len(n) >= 38 and set(n) <= _HEX]
            elif entry == "pack":
                # a pack is found by its index: the index goes last
                names = sorted((n for n in os.listdir(own / "pack") if n.startswith("pack-")),
                               key=lambda n: n.endswith(".idx"))
            else:
                continue
            if names:
                (store / entry).mkdir(exist_ok=True)
            for name in names:
                _link(own / entry / name, store / entry / name)
    with _alternates(common_dir) as lines:
        while str(own) in lines:
            lines.remove(str(own))
    shutil.rmtree(own, ignore_errors=True)


def lent(state_dir: Path) -> list[Path]:
    """Every agent object directory under ``state_dir``."""
    top = state_dir / "objects"
    try:
        return sorted(p for p in top.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def _link(src: Path, dest: Path) -> None:
    """``src`` at ``dest`` too (a hard link; a copy renamed into place where links are refused); an
    object already there is the same object."""
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except FileExistsError:
        pass
    except OSError:
        tmp = dest.with_name(f"tmp_corral_{os.getpid()}_{dest.name}")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)


@contextlib.contextmanager
def _alternates(common_dir: Path) -> Iterator[list[str]]:
    """The lines of ``objects/info/alternates``, to change in place: written back atomically when the
    block ends (the file removed when no line is left), under a lock every corral process takes. The
    user's own lines stay as they are."""
    info = common_dir / "objects" / "info"
    info.mkdir(parents=True, exist_ok=True)
    path = info / "alternates"
    lock_dir = common_dir / "corral"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / "alternates.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        lines = text.splitlines()
        before = list(lines)
        yield lines
        if lines == before:
            return
        if not lines:
            path.unlink(missing_ok=True)
            return
        tmp = info / f"alternates.corral-{os.getpid()}"
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)
