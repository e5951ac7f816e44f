"""A working directory for the demo: the example configuration and nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "killswitch.example.toml"


def demo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding ``config/killswitch.example.toml`` and nothing else."""
    (tmp_path / "config").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "config" / EXAMPLE.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "config" / EXAMPLE.name
