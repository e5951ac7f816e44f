"""A final result Kafka refuses as made (text it cannot write, too large for a request):
the alert still gets its final result, reduced, its offset is committed only after it,
and the intake goes on. Real broker; the engine double makes the results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.intake import (
    FakeEngine,
    alert_message,
    create_all_topics,
    make_settings,
    running_intake,
)
from tests.support.topics import TopicCollector, committed, produce
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]

# Half of a surrogate pair: text UTF-8 cannot encode. An exchange's own text is cleaned
# of it (core.outcomes.exchange_text); this stands for any route left to a result.
UNWRITABLE = "exchange refused to list BTC_USDT: request rejected (HTTP 400: bad \ud83d)"
# Larger than the producer's largest request (1 MiB by default).
TOO_LARGE = "x" * 1_200_000
# A turn of taking up records long enough that a run is one group whatever the machine.
SLICE = 1.0


def _by_id(finals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for final in finals:
        assert final["alert_id"] not in out, f"two final results for {final['alert_id']}"
        out[final["alert_id"]] = final
    return out


async def test_a_lone_final_result_kafka_refuses_is_published_reduced_then_committed(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    engine = FakeEngine(final_reasons={"bad-text": UNWRITABLE, "too-large": TOO_LARGE})
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine) as run,
    ):
        # One record per lane: each is handled alone (no group).
        await produce(settings, [alert_message("bad-text", ["mm-1"])], key="mm-1")
        await produce(settings, [alert_message("too-large", ["mm-2"])], key="mm-2")
        await produce(settings, [alert_message("after", ["arb-1"])], key="arb-1")
        await wait_for(lambda: len(results.finals()) == 3)
        await wait_for(lambda: run.intake.in_flight == 0)
        await wait_for(lambda: run.intake.committed_total >= 1)
        finals = _by_id((await results.to_end()).finals())
        assert not run.task.done()  # the intake goes on
    assert set(finals) == {"bad-text", "too-large", "after"}
    # The sweep's status stands; the reason says what was left out and why.
    refused = {"bad-text": "UnicodeEncodeError", "too-large": "MessageSizeTooLargeError"}
    for alert_id, error in refused.items():
        final = finals[alert_id]
        assert final["status"] == "flat"
        assert final["final"] is True
        assert final["orders"] == []
        assert error in final["reason"]
    assert "\ufffd" in finals["bad-text"]["reason"]
    assert len(finals["too-large"]["reason"]) < 2_000
    assert finals["after"]["reason"] is None
    assert run.observer.refused == ["result", "result"]
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == 3


async def test_a_group_with_a_result_kafka_refuses_publishes_every_result(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    ids = ["g-1", "g-2", "g-3", "g-4"]
    # Waiting before the intake starts: its first poll brings them all, one lane, one group.
    await produce(settings, [alert_message(i) for i in [*ids, "g-2"]])
    engine = FakeEngine(final_reasons={"g-2": UNWRITABLE, "g-3": TOO_LARGE})
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine, slice_s=SLICE) as run,
    ):
        await wait_for(lambda: len(results.finals()) == len(ids) + 1)
        await wait_for(lambda: run.intake.in_flight == 0)
        everything = (await results.to_end()).finals()
        assert not run.task.done()
    assert max(len(g) for g in engine.groups) > 1  # it was a group
    statuses = sorted((f["alert_id"], f["status"]) for f in everything)
    assert statuses == [
        ("g-1", "flat"),
        ("g-2", "duplicate"),
        ("g-2", "flat"),
        ("g-3", "flat"),
        ("g-4", "flat"),
    ]
    reduced = {f["alert_id"] for f in everything if f["status"] == "flat" and f["reason"]}
    assert reduced == {"g-2", "g-3"}
    assert run.observer.refused == ["result", "result"]
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == 5
