"""The engine (corral.core) never imports Textual: checked on the source and on a real import."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import corral.core

CORE = Path(corral.core.__file__).parent


def test_no_textual_import_in_core_sources():
    offenders = []
    for path in CORE.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import)\s+(textual|rich)\b", line):
                offenders.append(f"{path}:{n}: {line.strip()}")
    assert offenders == []


def test_importing_every_core_module_loads_no_textual():
    names = [m.name for m in pkgutil.walk_packages([str(CORE)], "corral.core.")]
    assert "corral.core.pipeline" in names
    code = "import sys\n" + "".join(f"import {n}\n" for n in names) + \
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\nprint(bad)\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_every_package_is_in_the_installed_distribution():
    """A regular install (``pip install .``, not the development one, which finds every module in
    place) gets only the packages pyproject.toml lists: every directory of core/ and tui/ that is a
    package must be there (corral.core.server was not, and an installed corral had no supervisor)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {f"corral.{top}": top for top in ("core", "tui")}
    assert conf["package-dir"] == dirs
    found = {f"corral.{init.parent.relative_to(root).as_posix().replace('/', '.')}"
             for top in dirs.values() for init in (root / top).rglob("__init__.py")}
    assert found <= set(conf["packages"]), sorted(found - set(conf["packages"]))
