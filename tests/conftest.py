"""The suite's fixtures live in ``tests/support/fixtures.py`` (helpers in ``tests/support``);
test modules import helpers from there, never from a conftest or another test module.

The hooks here print the reliability figures at the end of the run, adding up the
counts of pytest-xdist workers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.figures import FIGURES

pytest_plugins = ["tests.support.fixtures"]

FIGURES_ENV = "KILLSWITCH_RELIABILITY_FIGURES"

# Hypothesis's deadline and "too slow" health check time each example: on a shared
# machine running several test workers that fails tests for the load, not the code.
settings.register_profile("killswitch", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("killswitch")
_WORKER_FIGURES = "reliability_figures"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker, hand the figures it counted to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[_WORKER_FIGURES] = dict(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """On the controller, add up the figures of each worker as it finishes."""
    FIGURES.update(getattr(node, "workeroutput", {}).get(_WORKER_FIGURES, {}))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Print the reliability figures (and write them to $KILLSWITCH_RELIABILITY_FIGURES)."""
    if hasattr(config, "workerinput") or not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name in sorted(FIGURES):
        terminalreporter.write_line(f"{name}: {FIGURES[name]}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        Path(target).write_text(json.dumps(dict(sorted(FIGURES.items())), indent=2) + "\n")
