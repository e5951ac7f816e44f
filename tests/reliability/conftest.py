"""Reliability suite: the ``daemons`` fixture, and the figures printed at the end of the run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from killswitch.embedded import EmbeddedBroker
from tests.reliability.figures import FIGURES
from tests.support.broker import own_broker
from tests.support.daemon import Daemons

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


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Daemon subprocesses for one test; every one still running is killed at the end."""
    runner = Daemons(tmp_path)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A broker of the test's own, which it may kill and restart on the same port."""
    yield from own_broker()
