"""The import layers hold: pipeline/ on top, then dedup/, transforms/, filters/, and the core at the bottom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_layers_are_kept() -> None:
    pytest.importorskip("importlinter")
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "lint_imports.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
