"""The dashboard's entry points stay light to import (that the engine never imports Textual is
checked in test_layering.py)."""

from __future__ import annotations

import subprocess
import sys


def test_dashboard_entry_points_load_textual_lazily() -> None:
    code = "import sys, corral.tui.app, corral.tui.cli; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
