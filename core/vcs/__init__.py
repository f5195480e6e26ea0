"""VCS backends behind one interface: git and jj, each through its command line."""

from __future__ import annotations

from pathlib import Path

from .base import Backend, UsageError, VcsError, Workspace

__all__ = ["Backend", "UsageError", "VcsError", "Workspace", "open_backend", "find_jj_root"]


def find_jj_root(path: Path) -> Path | None:
    """The nearest directory at or above ``path`` that holds a ``.jj`` folder."""
    path = path.resolve()
    for d in (path, *path.parents):
        if (d / ".jj").is_dir():
            return d
    return None


async def open_backend(path: str | Path, vcs: str = "auto", checks_base: bool = False) -> Backend:
    """Open the repository containing ``path`` with the backend ``vcs`` asks for (auto: jj when
    the repository has ``.jj``, else git). Raises :class:`UsageError` (exit 2) when it cannot.
    ``checks_base``: the base checked out there is checked next (git asks it meanwhile)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such directory")
    if vcs == "auto":
        vcs = "jj" if find_jj_root(path) is not None else "git"
    if vcs == "jj":
        try:
            from .jj import JjBackend
        except ImportError:
            raise UsageError(f"{path}: jj repositories are not supported by this build of corral") from None
        return await JjBackend.open(path)
    if vcs == "git":
        from .git import GitBackend

        return await GitBackend.open(path, checks_base=checks_base)
    raise UsageError(f"vcs {vcs!r}: must be auto, git or jj")
