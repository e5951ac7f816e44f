"""The cycle collector's pacing around the intake's busy spells (killswitch/gc_pacing.py),
against the interpreter's own collector."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from killswitch.gc_pacing import CollectorPacing, deferring
from tests.support.waiting import wait_for

DEFAULTS = (700, 10, 10)  # the interpreter's thresholds


@pytest.fixture
def passes() -> Iterator[list[int]]:
    """The generation of every collector pass while the test runs, from clean counts
    and the interpreter's default thresholds; the thresholds as they were afterwards."""
    seen: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.set_threshold(*DEFAULTS)
    gc.collect()
    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)
        gc.set_threshold(*thresholds)
    assert not deferring()


@pytest.fixture
def pacing() -> Iterator[Callable[[float], CollectorPacing]]:
    """Makes pacings, each closed at the end even when the test fails midway: a pacing
    left busy would keep the process's deferral for the tests after it."""
    made: list[CollectorPacing] = []

    def make(max_defer_s: float = 60) -> CollectorPacing:
        made.append(CollectorPacing(max_defer_s=max_defer_s))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _allocate(young_passes: int) -> list[list[int]]:
    """Enough new containers, kept alive, for ``young_passes`` young passes or more."""
    return [[n] for n in range(gc.get_threshold()[0] * young_passes)]


def _older(passes: list[int]) -> list[int]:
    return [g for g in passes if g > 0]


async def test_a_busy_intake_defers_the_older_generations_and_idle_runs_the_due_pass(
    passes: list[int], pacing: Callable[[float], CollectorPacing]
) -> None:
    first = pacing(60)
    first.set_busy(True)
    assert deferring()
    kept = _allocate(30)  # three times the middle generation's threshold
    assert 0 in passes  # the young generation is collected as usual
    assert _older(passes) == []
    assert gc.get_threshold()[0] == DEFAULTS[0]
    first.set_busy(False)
    assert _older(passes) == [1]  # at once, not at the next young pass
    assert gc.get_threshold() == DEFAULTS
    assert kept


async def test_idle_with_no_pass_due_collects_nothing(
    passes: list[int], pacing: Callable[[float], CollectorPacing]
) -> None:
    first = pacing(60)
    first.set_busy(True)
    first.set_busy(False)
    assert passes == []
    assert gc.get_threshold() == DEFAULTS


async def test_a_full_pass_due_waits_until_the_intake_is_idle(
    passes: list[int], pacing: Callable[[float], CollectorPacing]
) -> None:
    # The collector runs a full pass at a young pass once the oldest generation's count
    # is over its threshold and what reached it since the last full pass is over a
    # quarter of what that pass left there: both made true here.
    grown = [[n] for n in range(len(gc.get_objects(generation=2)) // 3)]
    for _ in range(DEFAULTS[2] + 1):
        gc.collect(1)
    passes.clear()
    first = pacing(60)
    first.set_busy(True)
    kept = _allocate(3)
    assert _older(passes) == []
    first.set_busy(False)
    kept += _allocate(2)  # the next young pass: the collector's own rule says full
    assert _older(passes) == [2]
    assert kept
    assert grown


async def test_the_deferral_lasts_while_any_daemon_of_the_process_is_busy(
    passes: list[int], pacing: Callable[[float], CollectorPacing]
) -> None:
    first, second = pacing(60), pacing(60)
    first.set_busy(True)
    second.set_busy(True)
    first.set_busy(False)
    assert deferring()
    kept = _allocate(30)
    assert _older(passes) == []
    second.set_busy(False)
    assert not deferring()
    assert gc.get_threshold() == DEFAULTS  # never the deferral's own thresholds
    first.set_busy(True)
    first.close()
    assert gc.get_threshold() == DEFAULTS
    assert kept


async def test_a_long_busy_spell_still_has_a_pass_every_max_defer_s(
    passes: list[int], pacing: Callable[[float], CollectorPacing]
) -> None:
    first = pacing(0.05)
    first.set_busy(True)
    try:
        kept = _allocate(3)  # young passes: their survivors wait in the middle generation
        await wait_for(lambda: _older(passes) != [], timeout=5)
        assert deferring()  # and deferred again after it
        passes.clear()
        kept += _allocate(3)
        await wait_for(lambda: _older(passes) != [], timeout=5)
    finally:
        first.close()
    assert gc.get_threshold() == DEFAULTS
    assert kept
