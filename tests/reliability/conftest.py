"""Reliability suite: the figures its tests measure, printed at the end of the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.figures import FIGURES

FIGURES_ENV = "KILLSWITCH_RELIABILITY_FIGURES"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name in sorted(FIGURES):
        terminalreporter.write_line(f"{name}: {FIGURES[name]}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        Path(target).write_text(json.dumps(dict(sorted(FIGURES.items())), indent=2) + "\n")
