"""The intake's index of kills being swept (``Intake._sweeping``) and the futures
repeats wait on: every way a record's handling ends takes its new kills out of it and
tells their repeats, or a repeat waits forever and a later hand-over misjudges which
accounts are still swept here. The publisher is a stand-in whose forwards never get
acknowledged, so the record's task is cancelled while forwarding (a hand-over after
``revoke_drain_s``, a shutdown)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from aiokafka import ConsumerRecord

from killswitch.core.dedup import Seen
from killswitch.core.model import Position
from killswitch.kafka.consumer import ASSIGN_CATCH_UP_S, Intake, assignment_wait_s
from tests.support.intake import offline_intake

NOW = datetime(2026, 11, 30, 2, 0, 0, tzinfo=UTC)
ACCOUNTS = ("mm-1", "mm-2")


class _StuckPublisher:
    """Forwards are never acknowledged (the broker is unreachable)."""

    def __init__(self) -> None:
        self.forwarding = asyncio.Event()

    async def alert(self, account: str, value: bytes) -> None:
        self.forwarding.set()
        await asyncio.Event().wait()


def _intake(publisher: _StuckPublisher) -> Intake:
    # No engine: the kill never reaches it, its task ends while forwarding.
    intake = offline_intake(ACCOUNTS, publisher=publisher)
    intake._owner_here = lambda account: account == "mm-1"  # type: ignore[method-assign]
    return intake


def _record() -> ConsumerRecord[bytes, bytes]:
    body = {
        "schema": "killswitch.alert/v1",
        "alert_id": "a-1",
        "action": "kill",
        "source": "risk-engine",
        "reason": "test",
        "scope": {"accounts": list(ACCOUNTS)},
        "created_at": "2026-11-30T01:59:00.000Z",
    }
    value = json.dumps(body).encode()
    return ConsumerRecord("killswitch.alerts", 0, 7, 0, 0, b"mm-1", value, None, 0, 0, [])


async def test_a_kill_cancelled_while_forwarding_is_no_longer_swept_and_its_repeat_is_told() -> (
    None
):
    publisher = _StuckPublisher()
    intake = _intake(publisher)
    record = _record()
    origin = Position(record.topic, record.partition, record.offset)
    parsed = intake._parse(record.value, "alerts", NOW)
    plan = intake._plan(parsed, "alerts", origin, NOW, record.value)
    assert [a for a, _ in plan.forwards] == ["mm-2"]
    assert [s.request.account for s in plan.steps] == ["mm-1"]
    task = asyncio.create_task(intake._execute(record, plan, origin, NOW, 0))
    async with asyncio.timeout(5):
        await publisher.forwarding.wait()
    key = ("a-1", "mm-1")
    waiter = intake._waiter(key)  # a repeat (say on the manual topic) waits for it
    assert waiter is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert key not in intake._sweeping
    assert waiter.done()
    assert waiter.result() is None  # no final result: the alert is replayed
    assert "mm-1" not in intake._queued
    assert intake._dedup.decide("a-1", ["mm-1"], origin).accounts[0].seen is Seen.NEW


@pytest.mark.parametrize("session_ms", [1_000, 2_000, 10_000, 45_000, 300_000])
def test_an_assignment_waits_for_the_results_reader_well_inside_the_session(
    session_ms: int,
) -> None:
    # aiokafka sends no heartbeat while the assignment callback runs: a wait reaching
    # the session timeout gets the member dropped, and the group rebalances again.
    wait = assignment_wait_s(session_ms)
    assert 0 < wait <= session_ms / 1000 / 3
    assert wait <= ASSIGN_CATCH_UP_S
