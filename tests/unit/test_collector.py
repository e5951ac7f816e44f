"""The cycle collector's pacing around the intake's busy spells (killswitch/collector.py),
against the interpreter's own collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from killswitch.collector import CollectorPacing
from tests.support.waiting import wait_for


@pytest.fixture
def passes() -> Iterator[list[int]]:
    """The generation of every collector pass while the test runs; the interpreter's
    thresholds as they were afterwards."""
    seen: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # the interpreter's defaults, whatever ran before
    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)
        gc.set_threshold(*thresholds)


def _allocate(young_passes: int) -> list[list[int]]:
    """Enough new containers, kept alive, for ``young_passes`` young passes or more."""
    young = gc.get_threshold()[0]
    return [[n] for n in range(young * young_passes)]


async def test_a_busy_intake_defers_the_older_generations_and_idle_restores_them(
    passes: list[int],
) -> None:
    pacing = CollectorPacing(max_defer_s=60)
    pacing.busy(True)
    assert pacing.deferring
    assert gc.get_threshold()[0] == 700
    assert gc.get_threshold()[2] == 10
    kept = _allocate(30)  # three times the middle generation's threshold
    assert 0 in passes
    assert [g for g in passes if g > 0] == []
    pacing.busy(False)
    assert not pacing.deferring
    assert gc.get_threshold() == (700, 10, 10)
    passes.clear()
    kept += _allocate(2)
    assert [g for g in passes if g > 0] != []  # the middle pass that was due came
    pacing.restore()  # nothing deferred: no change
    assert gc.get_threshold() == (700, 10, 10)


async def test_busy_again_while_deferring_keeps_the_thresholds_to_restore() -> None:
    thresholds = gc.get_threshold()
    pacing = CollectorPacing(max_defer_s=60)
    try:
        pacing.busy(True)
        pacing.busy(True)
        pacing.busy(False)
        assert gc.get_threshold() == thresholds
    finally:
        pacing.restore()


async def test_a_long_busy_spell_still_collects_the_middle_generation_in_time(
    passes: list[int],
) -> None:
    pacing = CollectorPacing(max_defer_s=0.05)
    pacing.busy(True)
    try:
        await wait_for(lambda: [g for g in passes if g > 0] != [], timeout=5)
        assert pacing.deferring  # and the passes are deferred again after it
        passes.clear()
        await wait_for(lambda: [g for g in passes if g > 0] != [], timeout=5)
    finally:
        pacing.restore()
    assert gc.get_threshold() == (700, 10, 10)
