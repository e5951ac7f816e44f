"""Groups: a run of one account's alerts taken up together joins its sweep once, and
each alert still gets exactly one final result (or ``duplicate``), committed only
after its result."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import NotRequired, TypedDict

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


# A turn of taking up records long enough that a run is never cut short by the
# machine's speed (the default is 1 ms): which records form a group is then decided by
# what the first poll brings, not by how fast this machine parses.
SLICE = 1.0


async def test_a_run_of_one_accounts_alerts_is_one_group_with_a_result_each(
    kafka_bootstrap: str, unique_name: Unique, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="killswitch.kafka.consumer")
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    ids = [f"storm-{i}" for i in range(8)]
    # Waiting before the intake starts: its first poll brings them all, one lane.
    await produce(settings, [alert_message(i) for i in ids])
    engine = FakeEngine()
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine, slice_s=SLICE) as run,
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
    # The audit log names each alert once; a group's alike results share a line.
    logged: Counter[str] = Counter()
    shared = 0
    for line in caplog.records:
        if line.getMessage() == "final result":
            logged[line.alert_id] += 1  # type: ignore[attr-defined]
        elif line.getMessage() == "final results":
            logged.update(line.alert_ids)  # type: ignore[attr-defined]
            assert line.alerts == len(line.alert_ids) == len(line.seconds_each)  # type: ignore[attr-defined]
            shared += 1
    assert logged == Counter(ids)
    assert shared > 0


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
        running_intake(settings, engine, slice_s=SLICE) as run,
    ):
        await wait_for(lambda: len(results.finals()) == 4)
        await wait_for(lambda: run.intake.in_flight == 0)
        finals = (await results.to_end()).finals()
    statuses = sorted((f["alert_id"], f["status"]) for f in finals)
    assert statuses == [("a-1", "duplicate"), ("a-1", "flat"), ("a-2", "flat"), ("a-3", "flat")]
    # Counted once per record (a group's are counted together, by kind).
    assert Counter(run.observer.alerts) == {("alerts", "processed"): 3, ("alerts", "duplicate"): 1}
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
        running_intake(settings, engine, grace_s=0.2, slice_s=SLICE) as run,
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
        running_intake(settings, FakeEngine(), slice_s=SLICE),
    ):
        await wait_for(lambda: len(results.finals()) == len(ids))
        finals = (await results.to_end()).finals()
    assert Counter(f["alert_id"] for f in finals) == Counter(ids)
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == len(ids)


async def test_an_engine_error_inside_a_group_fails_that_alert_only(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    ids = ["ok-1", "ok-2", "boom-1", "ok-3", "ok-4"]
    await produce(settings, [alert_message(i) for i in ids])
    engine = FakeEngine(raise_for={"boom-1"})
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine, slice_s=SLICE),
    ):
        await wait_for(lambda: len(results.finals()) == len(ids))
        by_id = {r["alert_id"]: r for r in (await results.to_end()).finals()}
    assert max(len(g) for g in engine.groups) > 1
    boom = by_id.pop("boom-1")
    assert (boom["status"], boom["reason"]) == ("failed", "internal error: RuntimeError")
    assert {r["status"] for r in by_id.values()} == {"flat"}


async def test_a_group_still_running_after_the_drain_is_handed_over_and_replayed(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, intake={"rebalance_drain_s": 0.1})
    await create_all_topics(settings)
    topics = settings.kafka.topics
    ids = [f"ho-{i}" for i in range(4)]
    await produce(settings, [alert_message(i) for i in ids])
    first = FakeEngine()
    first.hold("mm-1")  # longer than the drain
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, first, slice_s=SLICE) as one,
    ):
        await wait_for(lambda: len(first.calls) == len(ids))
        assert max(len(g) for g in first.groups) > 1
        # A second member joins: the group still running after the drain is cancelled
        # (none of its records done) and its account handed over.
        async with running_intake(settings, FakeEngine(), slice_s=SLICE) as two:
            await wait_for(lambda: first.handed_over == ["mm-1"], timeout=20)
            first.let_go("mm-1")
            # Whichever member has the partition now replays the group: one result each.
            await wait_for(lambda: len(results.finals()) == len(ids), timeout=20)
            await wait_for(lambda: one.intake.in_flight == two.intake.in_flight == 0)
            finals = (await results.to_end()).finals()
    assert Counter(f["alert_id"] for f in finals) == Counter(ids)
    assert {f["status"] for f in finals} == {"flat"}
    bootstrap, group = settings.kafka.bootstrap_servers, settings.kafka.group_id
    assert await committed(bootstrap, group, topics.alerts) == len(ids)


async def test_records_that_cannot_join_a_group_keep_their_place_in_the_run(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    messages = [
        alert_message("k-1"),
        alert_message("k-2"),
        alert_message("latch-3", latch=True),  # publishes a halt first: on its own
        alert_message("dry-4", dry_run=True),  # another dry-run flag: another group
        alert_message("k-5"),
    ]
    await produce(settings, messages)
    engine = FakeEngine()
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine, slice_s=SLICE) as run,
    ):
        await wait_for(lambda: len(results.finals()) == len(messages))
        await wait_for(lambda: run.intake.in_flight == 0)
    grouped = [a for g in engine.groups for a in g]
    assert grouped == ["k-1", "k-2", "dry-4", "k-5"]  # (a run may stop at its slice's end)
    assert ["dry-4"] in engine.groups  # never with the others
    # Handed to the engine in the order they were read.
    assert engine.started == ["k-1", "k-2", "latch-3", "dry-4", "k-5"]
    statuses = {r["alert_id"]: r["status"] for r in results.finals()}
    assert statuses == {
        "k-1": "flat",
        "k-2": "flat",
        "latch-3": "flat",
        "dry-4": "dry_run",
        "k-5": "flat",
    }


class _AlertFields(TypedDict):
    """The fields an alert of the test below sets beyond its id."""

    reason: str
    deadline_s: int
    scope: NotRequired[dict[str, list[str]]]
    operator: NotRequired[dict[str, str]]


async def test_each_alert_of_a_group_keeps_its_own_fields(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # Alerts alike are planned once per run (their requests copied with each id and
    # time); alerts that differ in anything else must each get their own requests.
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    sent: dict[str, _AlertFields] = {
        "a-1": {"reason": "first", "deadline_s": 5},
        "a-2": {"reason": "first", "deadline_s": 5},
        "a-3": {"reason": "second", "deadline_s": 5},
        "a-4": {"reason": "second", "deadline_s": 7},
        "a-5": {"reason": "second", "deadline_s": 7, "scope": {"sides": ["BUY"]}},
        "a-6": {"reason": "second", "deadline_s": 7, "operator": {"name": "ops"}},
        "a-7": {"reason": "second", "deadline_s": 7, "operator": {"name": "ops"}},
    }
    await produce(settings, [alert_message(i, **fields) for i, fields in sent.items()])
    engine = FakeEngine()
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine, slice_s=SLICE) as run,
    ):
        await wait_for(lambda: len(results.finals()) == len(sent))
        await wait_for(lambda: run.intake.in_flight == 0)
        finals = {f["alert_id"]: f for f in (await results.to_end()).finals()}
    assert max(len(g) for g in engine.groups) > 1
    requests = {r.alert_id: r for r in engine.calls}
    assert sorted(requests) == sorted(sent)
    for alert_id, fields in sent.items():
        request = requests[alert_id]
        sides = {s.value for s in request.scope.sides} if request.scope.sides else None
        operator = fields.get("operator")
        assert (request.reason, request.deadline_s, sides, request.operator) == (
            fields["reason"],
            fields["deadline_s"],
            set(fields.get("scope", {}).get("sides", [])) or None,
            operator["name"] if operator else None,
        )
        assert finals[alert_id]["operator"] == request.operator
    # Each request is stamped when its own record was taken up, in the order read.
    stamps = [requests[i].received_at for i in sent]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
