"""Keys people choose: ``keymap.toml`` in corral's config dir maps binding ids to keys, handed to
Textual's ``App.set_keymap``. Read before the dashboard starts, so a mistake in it is one line and
exit 2, with nothing started.

    # ~/.config/corral/keymap.toml
    "run.abort" = "x"
    "run.zoom" = "z,enter,space"
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


class KeymapError(Exception):
    """The keymap file is wrong: the message is one line naming the file and what is wrong."""


def keymap_path() -> Path:
    """``$XDG_CONFIG_HOME/corral/keymap.toml``, ``~/.config/corral/keymap.toml`` without it."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "corral" / "keymap.toml"


def binding_ids() -> dict[str, str]:
    """Every binding id of the dashboard, with its description."""
    from textual.binding import Binding

    from .dialogs import ConfirmScreen
    from .home_screen import HomeScreen, ReportScreen
    from .past_run_screen import PastRunScreen
    from .review_screen import ReviewScreen
    from .run_screen import RunScreen, ZoomScreen

    ids = {}
    for screen in (RunScreen, ZoomScreen, ReviewScreen, HomeScreen, PastRunScreen, ReportScreen, ConfirmScreen):
        for binding in screen.BINDINGS:
            if isinstance(binding, Binding) and binding.id:
                ids[binding.id] = binding.description
    return ids


def load_keymap(path: Path | None = None) -> dict[str, str]:
    """The user's keymap (empty when there is no file). Raises KeymapError on a bad one."""
    path = path or keymap_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeymapError(f"keymap {path}: {exc}") from None
    known = binding_ids()
    keymap = {}
    for bid, keys in data.items():
        if bid not in known:
            from corral.core.plan import did_you_mean

            raise KeymapError(f"keymap {path}: unknown binding id {bid!r}{did_you_mean(bid, known)}")
        if not isinstance(keys, str) or not keys.strip():
            raise KeymapError(f"keymap {path}: {bid} must be a string of keys like \"x\" or \"ctrl+x,f2\"")
        keymap[bid] = keys
    return keymap
