"""The guard around agents in corral's git workspaces: they may move their own task's branch and
their own checkout's refs, nothing else of the repository.

git itself refuses the rest. Each such agent gets, through its environment only
(``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n``, appended to any the user's
environment already carries), ``includeIf.gitdir`` entries that set ``core.hooksPath`` for this
repository alone: in the agent's own workspace to a hook directory that lets through its branch
``refs/heads/corral/<run>/<task>`` (not its deletion) and the checkout's own refs (``HEAD``,
``ORIG_HEAD``, ``refs/bisect/*``, ...); in every other checkout of the repository (the user's, other
tasks') to one that lets through no ref update at all. Their ``reference-transaction`` hook refuses
the rest in the ``prepared`` state, naming the ref. Every other hook there runs the repository's own
hook (its ``core.hooksPath``, as git resolves it, else ``<git-common-dir>/hooks``) with the same
arguments and input, so the user's ``pre-commit`` still runs for agents' commits, and so does the
user's own ``reference-transaction`` hook, after corral's check.

Two things no hook can refuse get their own answer. ``git stash pop``/``apply``/``drop`` read and
rewrite the stash (``refs/stash``, shared by every checkout) without a ref transaction, so the
agent's ``PATH`` starts with a ``git`` that refuses ``git stash`` (except ``list``, ``show`` and
``create``) in this repository and runs the real git for everything else. And ``git checkout
<branch>`` moves no ref, but it would leave the agent's commits, and corral's own commit of its
uncommitted work, going onto that branch: the workspace's ``post-checkout`` hook detaches HEAD when
it is attached to any branch but the task's.

This is a guard against mistakes, not a sandbox: an agent that clears its environment, runs git by
another path or through a library (libgit2, GitPython), or writes into ``.git`` itself is not
stopped by it; landing's compare-and-swap still refuses to land on a base that moved.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, cast

import anyio.to_thread

from .journal import write_atomic
from .vcs.base import Backend, Workspace, workspace_of

if TYPE_CHECKING:
    from .vcs.git import GitBackend

#: Hooks the guard's directories pass on to the repository's own. Not ``push-to-checkout`` and
#: ``proc-receive``: their mere presence changes what git does.
CHAINED_HOOKS = (
    "applypatch-msg", "pre-applypatch", "post-applypatch", "pre-commit", "pre-merge-commit",
    "prepare-commit-msg", "commit-msg", "post-commit", "pre-rebase", "post-checkout", "post-merge",
    "pre-push", "pre-receive", "update", "post-receive", "post-update", "pre-auto-gc", "post-rewrite",
    "sendemail-validate", "post-index-change", "p4-changelist", "p4-prepare-changelist",
    "p4-post-changelist", "p4-pre-submit",
)

_HEADER = "#!/bin/sh\n# Written by corral for its agents (see corral.core.guard); runs only in their git commands.\n"

_EXEC_USER_HOOK = """\
user_hook={hook}
[ -x "$user_hook" ] || exit 0
exec "$user_hook" "$@"
"""

# the repository's own reference-transaction hook gets the input corral's check has read
_PIPE_USER_HOOK = """\
user_hook={hook}
[ -x "$user_hook" ] || exit 0
printf '%s\\n' "$input" | "$user_hook" "$@"
"""

_REF_CHECK = """\
own={own}
input=$(cat)
if [ "$1" = prepared ]; then
  refused=
  while read -r old new ref; do
    case "$ref" in
      "") continue ;;
{allow}    esac
    echo "corral: refused to update $ref: {why}" >&2
    refused=1
  done <<EOF
$input
EOF
  [ -z "$refused" ] || exit 1
fi
"""

# in the agent's own workspace, every commit its HEAD or branch moves to is also written down where
# corral keeps it (the worktree's reflog goes with the worktree, should the agent remove that)
_HEADS_LOG = """\
if [ "$1" = committed ]; then
  while read -r old new ref; do
    case "$new" in *[!0]*) echo "$new" >> {heads} ;; esac
  done <<EOF
$input
EOF
fi
"""

# in the agent's own workspace: its branch (not deleted, nor made anew once gone: its ref file deleted
# outside git, a commit would start a history of its own there) and the checkout's own refs
_OWN_REFS = """\
      "$own") case "$new" in *[!0]*)
          case "$old" in *[!0]*) continue ;; esac
          git rev-parse -q --verify "$ref" >/dev/null && continue
          echo "corral: refused to make $ref anew: it was deleted outside git, and a commit on it now would start a new history; when the agent ends, corral puts it back at this task's last commit and commits what is left here" >&2
          refused=1; continue ;;
        esac
        echo "corral: refused to delete $ref: it holds this task's work" >&2; refused=1; continue ;;
      refs/bisect/*|refs/worktree/*|refs/rewritten/*) continue ;;
      *[!A-Z_]*) ;;
      *) continue ;;
"""

_DETACH = """\
if [ "$3" = 1 ] && branch=$(git symbolic-ref -q HEAD) && [ "$branch" != {own} ]; then
  git update-ref --no-deref -m "corral: detach from ${{branch#refs/heads/}}" HEAD HEAD &&
    echo "corral: HEAD detached at ${{branch#refs/heads/}}'s commit: only corral moves ${{branch#refs/heads/}}, when it lands verified work; commits made here stay this task's work" >&2
fi
"""

_GIT = """\
#!/bin/sh
# Written by corral for its agents (see corral.core.guard): 'git stash' reads and rewrites the
# stash every checkout of the repository shares, and no git hook can refuse that; in that
# repository it is refused (but for list, show and create). Everything else runs the real git.
real={real}
n=0 skip= cmd= sub=
for arg do
  if [ -n "$skip" ]; then skip=; n=$((n+1)); continue; fi
  if [ -n "$cmd" ]; then sub=$arg; break; fi
  case "$arg" in
    -C|-c|--git-dir|--work-tree|--namespace|--super-prefix|--config-env) skip=1; n=$((n+1)) ;;
    -*) n=$((n+1)) ;;
    *) cmd=$arg ;;
  esac
done
if [ "$cmd" = stash ]; then
  case "$sub" in
    list|show|create) ;;
    *) common=$(
         total=$# i=0
         for arg do [ $i -lt $n ] && set -- "$@" "$arg"; i=$((i+1)); done
         shift $total
         dir=$("$real" "$@" rev-parse --path-format=absolute --git-common-dir 2>/dev/null) && cd "$dir" && pwd -P)
       if [ "$common" = {common} ]; then
         echo "corral: refused 'git stash${{sub:+ $sub}}': the stash is shared with the user's checkouts; commit instead (your commits stay this task's work)" >&2
         exit 1
       fi ;;
  esac
fi
exec "$real" "$@"
"""


_EXECUTABLE = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


#: the files :func:`_write` wrote or found holding what it would write, with their stat signature:
#: every agent of a run shares some thirty of them, and a changed one has another signature
_KNOWN: dict[Path, tuple[tuple[int, ...], str]] = {}


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _write(path: Path, text: str, executable: bool = True) -> None:
    """``path`` holding ``text`` (``executable``: a hook or a program). Left as it is when it holds
    that already: every agent of a run gets the same files, and rewriting some fifty of them at each
    agent's start costs more than starting it."""
    try:
        st = path.stat()
        if _KNOWN.get(path) == (_signature(st), text):
            return  # as this process left it (or found it) last time: not read again
        if path.read_text(encoding="utf-8") == text and (not executable or st.st_mode & _EXECUTABLE == _EXECUTABLE):
            _KNOWN[path] = (_signature(st), text)
            return
    except (OSError, UnicodeDecodeError):
        pass
    write_atomic(path, text)
    if executable:
        path.chmod(path.stat().st_mode | _EXECUTABLE)
    _KNOWN[path] = (_signature(path.stat()), text)


def _link(path: Path, target: Path) -> None:
    """``path`` a symbolic link to ``target`` (left as it is when it is one already)."""
    try:
        if os.readlink(path) == str(target):
            return
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:  # not a link: a file of an older corral
        path.unlink(missing_ok=True)
    path.symlink_to(target)


def _hook_dir(path: Path, user_hooks: str, own: str, heads: str = "", shared: Path | None = None) -> None:
    """A hook directory: the ref check (``own``: the one branch it lets through, with the checkout's
    own refs; empty: nothing), then the repository's own hooks, each as git would run it. With
    ``heads``, every commit a ref update moves to is appended to that file. With ``shared`` (a hook
    directory with no ``own``), the hooks that would be the same as there are links to its files."""
    path.mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    for name in CHAINED_HOOKS:
        if name == "post-checkout" and own:
            body = _DETACH.format(own=q(own))
        elif shared is not None:
            _link(path / name, shared / name)
            continue
        else:
            body = ""
        _write(path / name, _HEADER + body + _EXEC_USER_HOOK.format(hook=q(os.path.join(user_hooks, name))))
    why = (f"an agent may move only its own branch {own.removeprefix('refs/heads/')} and its own checkout's HEAD"
           if own else "this is not the agent's own workspace, where alone it may move refs")
    check = _REF_CHECK.format(own=q(own), allow=_OWN_REFS if own else "", why=why)
    if heads:
        check += _HEADS_LOG.format(heads=q(heads))
    _write(path / "reference-transaction", _HEADER + check + _PIPE_USER_HOOK.format(
        hook=q(os.path.join(user_hooks, "reference-transaction"))))


def _shim(path: Path, real: str, common: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _write(path / "git", _GIT.format(real=shlex.quote(real), common=shlex.quote(str(common))))


def _pattern(path: Path | str) -> str:
    """``path`` as a literal ``includeIf.gitdir:`` pattern (wildmatch)."""
    return "".join("\\" + c if c in "*?[\\" else c for c in str(path))


#: held while an agent's guard files are written (see _write_guard)
_WRITING = threading.Lock()


def _write_guard(run_dir: Path, others: Path, own: Path, user_hooks: str, ref: str, heads: str, real: str | None,
                 common: Path) -> None:
    """The guard's files for an agent: the hooks of the other checkouts (``others``) and of its own
    (``own``, letting ``ref`` through), each dir's config, and the git shim (``real``: git's path).
    One agent's at a time: agents share ``others`` and the shim (and a file's temporary name)."""
    with _WRITING:
        _hook_dir(others / "hooks", user_hooks, "")
        _hook_dir(own / "hooks", user_hooks, ref, heads, shared=others / "hooks")
        for d in (others, own):
            _write(d / "config", f"[core]\n\thooksPath = {_config_string(d / 'hooks')}\n", executable=False)
        if real:
            _shim(run_dir / "guard" / "bin", real, common)


def _config_string(path: Path) -> str:
    """``path`` as a quoted value in a git config file."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config_count(env: Mapping[str, str]) -> int:
    raw = env.get("GIT_CONFIG_COUNT", "")
    return int(raw) if raw.isdigit() else 0


async def agent_git_env(backend: Backend, run_dir: Path, cwd: str, workspaces: Iterable[Workspace],
                        env: Mapping[str, str]) -> dict[str, str]:
    """What to add to the environment ``env`` of an agent starting in ``cwd``: always ``gc.auto=0``
    (no auto-gc while others share the object store); when ``cwd`` is in one of the run's git
    workspaces, the guard, written under ``run_dir/guard``. The user's own ``GIT_CONFIG_*`` entries
    are kept: ours come after them."""
    entries = [("gc.auto", "0")]
    extra: dict[str, str] = {}
    ws = workspace_of(cwd, workspaces)
    if ws is not None and backend.kind == "git":
        git = cast("GitBackend", backend)
        admin = ws.admin or (await git.git("rev-parse", "--absolute-git-dir", cwd=ws.path, check=False)).out.strip()
        if admin:
            # the user's hooks path is the same for every agent of a run: asked once
            user_hooks = await git.hooks_path(ws)
            common = git.common_dir.resolve()
            others, own = run_dir / "guard" / "others", run_dir / "guard" / f"ws-{ws.task}"
            real = shutil.which("git", path=env.get("PATH", os.defpath))
            # some sixty files read or written: in a worker thread, not on the event loop (64 agents
            # starting at once spent 5 ms each there)
            await anyio.to_thread.run_sync(_write_guard, run_dir, others, own, user_hooks, f"refs/heads/{ws.ref}",
                                           str(git.registry.heads_log(ws.key)) if ws.key else "", real, common)
            entries += [
                (f"includeIf.gitdir:{_pattern(common)}.path", str(others / "config")),  # the main checkout
                (f"includeIf.gitdir:{_pattern(common)}/worktrees/.path", str(others / "config")),
                (f"includeIf.gitdir:{_pattern(Path(admin).resolve())}.path", str(own / "config")),
            ]
            if real:
                extra["PATH"] = str(run_dir / "guard" / "bin") + os.pathsep + env.get("PATH", os.defpath)
    n = _config_count(env)
    for i, (key, value) in enumerate(entries, n):
        extra[f"GIT_CONFIG_KEY_{i}"] = key
        extra[f"GIT_CONFIG_VALUE_{i}"] = value
    extra["GIT_CONFIG_COUNT"] = str(n + len(entries))
    return extra
