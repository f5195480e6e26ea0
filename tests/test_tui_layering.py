"""The engine stays free of Textual, and the dashboard's entry points stay light to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"


def test_core_never_imports_textual() -> None:
    offenders = [str(p.relative_to(CORE)) for p in CORE.rglob("*.py")
                 if "import textual" in p.read_text() or "from textual" in p.read_text()]
    assert offenders == []
    code = "import sys, corral.core.pipeline, corral.core.runtime, corral.core.demo; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dashboard_entry_points_load_textual_lazily() -> None:
    code = "import sys, corral.tui.app, corral.tui.cli; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
