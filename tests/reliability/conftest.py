"""Reliability suite: the ``daemons`` and ``broker`` fixtures (its figures: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from killswitch.embedded import EmbeddedBroker
from tests.support.broker import own_broker
from tests.support.daemon import Daemons


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
