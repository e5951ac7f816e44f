"""The suite's pytest fixtures, registered as a plugin by ``tests/conftest.py``.

``kafka_bootstrap``: by default a session-wide embedded broker (Tansu) on a free
loopback port, stopped at the end of the session whatever happens; with
``KILLSWITCH_TEST_BOOTSTRAP`` set, the tests use that Kafka instead and start nothing.
``unique_name``: per-test names, so tests sharing one broker never see each other's data.
``daemons``: daemon subprocesses of one test, killed at its end. ``broker``: a broker of
the test's own, which it may kill and restart on the same port. ``engines``: begins the
lifetime of each engine a test makes (``engine = await engines(Engine(...))``) and ends
it when the test ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from killswitch.embedded import BrokerUnavailable, EmbeddedBroker
from killswitch.logs import NOISY_LOGGERS
from tests.support.broker import own_broker
from tests.support.daemon import Daemons
from tests.support.engine import Engines

BOOTSTRAP_ENV = "KILLSWITCH_TEST_BOOTSTRAP"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of the Kafka under test."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    try:
        broker = EmbeddedBroker().start()
    except BrokerUnavailable as exc:
        pytest.fail(f"embedded broker unavailable: {exc}")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Per-test unique names, so tests sharing one broker never see each other's data."""
    tag = uuid.uuid4().hex[:8]
    return lambda base: f"{base}.{tag}"


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


@pytest.fixture
async def engines() -> AsyncIterator[Engines]:
    """``engine = await engines(Engine(...))``: the engine's lifetime begun (its sweeps and
    guards are tasks of its task group); at the test's end it is closed without grace
    (unless the test closed it) and whatever still runs is cancelled."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack.enter_async_context


@pytest.fixture(autouse=True)
def _library_log_levels() -> Iterator[None]:
    """The libraries' logger levels as each test found them: a test that runs a CLI
    command in-process silences them (``logs.quiet_libraries``, process-wide as it
    should be in a command), which would hide their records from the tests after it."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
