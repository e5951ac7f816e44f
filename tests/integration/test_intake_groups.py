"""Groups: a run of one account's alerts taken up together joins its sweep once, and
each alert still gets exactly one final result (or ``duplicate``), committed only
after its result."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

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


async def test_a_run_of_one_accounts_alerts_is_one_group_with_a_result_each(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    ids = [f"storm-{i}" for i in range(8)]
    # Waiting before the intake starts: its first poll brings them all, one lane.
    await produce(settings, [alert_message(i) for i in ids])
    engine = FakeEngine()
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine) as run,
    ):
        await wait_for(lambda: len(results.finals()) == len(ids))
        await wait_for(lambda: run.intake.in_flight == 0)
        finals = (await results.to_end()).finals()
    assert Counter(f["alert_id"] for f in finals) == Counter(ids)
    assert {f["status"] for f in finals} == {"flat"}
    # Taken up together: joined in groups, not one start per alert.
    assert max(len(g) for g in engine.groups) > 1
    assert sorted(a for g in engine.groups for a in g) == sorted(ids)
    assert sorted(c.alert_id for c in engine.calls) == sorted(ids)
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == len(ids)


async def test_a_repeat_inside_a_group_is_answered_duplicate(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    await produce(settings, [alert_message(i) for i in ("a-1", "a-2", "a-1", "a-3")])
    engine = FakeEngine()
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine) as run,
    ):
        await wait_for(lambda: len(results.finals()) == 4)
        await wait_for(lambda: run.intake.in_flight == 0)
        finals = (await results.to_end()).finals()
    statuses = sorted((f["alert_id"], f["status"]) for f in finals)
    assert statuses == [("a-1", "duplicate"), ("a-1", "flat"), ("a-2", "flat"), ("a-3", "flat")]
    assert sorted(a for g in engine.groups for a in g) == ["a-1", "a-2", "a-3"]
    assert sorted(c.alert_id for c in engine.calls) == ["a-1", "a-2", "a-3"]
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == 4


async def test_a_group_cut_off_by_a_shutdown_commits_nothing_and_is_replayed(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    ids = [f"storm-{i}" for i in range(6)]
    await produce(settings, [alert_message(i) for i in ids])
    engine = FakeEngine()
    engine.hold("mm-1")  # the group's sweep never ends: no result before the shutdown
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine, grace_s=0.2) as run,
    ):
        await wait_for(lambda: len(engine.calls) == len(ids))
        assert max(len(g) for g in engine.groups) > 1
        assert run.intake.in_flight == len(ids)
    # Stopped mid-group: no final result, nothing committed.
    assert (await results.to_end()).finals() == []
    assert (await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) or 0) == 0
    # The next owner (here: the same group again) replays the whole group.
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, FakeEngine()),
    ):
        await wait_for(lambda: len(results.finals()) == len(ids))
        finals = (await results.to_end()).finals()
    assert Counter(f["alert_id"] for f in finals) == Counter(ids)
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == len(ids)
