"""The intake against the real broker: at-least-once, DLQ, dedup, backpressure, restore."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from killswitch.config import Settings
from killswitch.contracts import encode_state
from killswitch.core.dedup import DedupWindow
from killswitch.core.model import HaltState, Scope
from killswitch.kafka.readers import read_halt_states
from killswitch.triggers import sign_trigger
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


async def test_kill_is_swept_and_its_final_result_published_then_committed(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings) as run,
    ):
        await produce(settings, [alert_message("a-1", ["mm-1", "mm-2"], latch=True)])
        await wait_for(lambda: len(results.finals("a-1")) == 2)
        await wait_for(lambda: run.intake.committed_total >= 1)
        requests = sorted(run.engine.calls, key=lambda r: r.account)
        assert [r.account for r in requests] == ["mm-1", "mm-2"]
        assert all(r.latch for r in requests)
        final = results.finals("a-1")[0]
        assert final["schema"] == "killswitch.result/v1"
        assert final["status"] == "flat"
        assert final["origin"] == {"topic": topics.alerts, "partition": 0, "offset": 0}
        everything = await results.to_end()
        progress = [r for r in everything.json() if r.get("final") is False]
        assert len(progress) == 2  # the fake engine reports progress once per account
        assert len(everything.finals()) == 2
        assert set(everything.keys()) == {b"mm-1", b"mm-2"}
        assert run.observer.alerts == [("alerts", "processed")]
    assert (
        await committed(settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts)
        == 1
    )


async def test_bad_messages_go_to_the_dlq_and_the_consumer_keeps_going(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    messages: list[bytes | dict[str, object]] = [
        b"\xff not json",
        b"[" * 100_000,
        alert_message("bad-1", ["nobody"]),
        alert_message(
            "bad-2",
            [],
        ),
        alert_message("old-1", created_at="2020-01-01T00:00:00Z", expires_at=past),
        alert_message("good-1"),
    ]
    async with (
        TopicCollector(kafka_bootstrap, topics.dlq) as dlq,
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings) as run,
    ):
        await produce(settings, messages)
        await wait_for(lambda: len(dlq.json()) == 5 and len(results.finals()) == 1)
        # handled concurrently (the big one in a thread): order by offset
        dead = sorted((await dlq.to_end()).json(), key=lambda r: r["offset"])
        assert [r["offset"] for r in dead] == [0, 1, 2, 3, 4]
        kinds = [(r["kind"], r["alert_id"]) for r in dead]
        assert kinds == [
            ("invalid", None),
            ("invalid", None),
            ("invalid", "bad-1"),
            ("invalid", "bad-2"),
            ("expired", "old-1"),
        ]
        assert "unknown account" in dead[2]["reason"]
        assert base64.b64decode(dead[0]["value_base64"]) == b"\xff not json"
        assert dead[1]["value"].startswith("[[[")
        assert [c.alert_id for c in run.engine.calls] == ["good-1"]
        assert sorted(run.observer.alerts) == sorted(
            [("alerts", "invalid")] * 4 + [("alerts", "expired"), ("alerts", "processed")]
        )
        await wait_for(lambda: run.intake.committed_total >= 1)
    assert (
        await committed(settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts)
        == 6
    )


async def test_duplicate_delivery_sweeps_once(kafka_bootstrap: str, unique_name: Unique) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    engine = FakeEngine()
    engine.hold("mm-1")
    message = alert_message("dup-1")
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine) as run,
    ):
        # The second copy arrives while the first is still being swept.
        await produce(settings, [message, message])
        await wait_for(lambda: len(engine.calls) == 1 and run.intake.in_flight == 2)
        engine.let_go("mm-1")
        await wait_for(lambda: len(results.finals("dup-1")) == 2)
        # and a third copy after it finished
        await produce(settings, [message])
        await wait_for(lambda: len(results.finals("dup-1")) == 3)
        finals = (await results.to_end()).finals("dup-1")
        assert [r["status"] for r in finals] == ["flat", "duplicate", "duplicate"]
        assert "already flat" in finals[2]["reason"]
        assert len(engine.calls) == 1
        assert sorted(run.observer.alerts) == [
            ("alerts", "duplicate"),
            ("alerts", "duplicate"),
            ("alerts", "processed"),
        ]


async def test_a_repeat_on_the_manual_topic_says_what_the_swept_original_became(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # Read after its original, on the other topic, while the original is still swept:
    # it waits for the original's outcome and says it, as a repeat of its own run does.
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    engine = FakeEngine()
    engine.hold("mm-1")
    message = alert_message("twice-1", operator={"name": "ops"})
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine) as run,
    ):
        await produce(settings, [message])
        await wait_for(lambda: len(engine.calls) == 1)
        await produce(settings, [message], topic=settings.kafka.topics.manual)
        await wait_for(lambda: run.intake.in_flight == 2)
        engine.let_go("mm-1")
        await wait_for(lambda: len(results.finals("twice-1")) == 2)
        finals = (await results.to_end()).finals("twice-1")
    assert [f["status"] for f in finals] == ["flat", "duplicate"]
    assert finals[1]["reason"] == "duplicate alert_id (already flat)"
    assert len(engine.calls) == 1


async def test_the_intake_is_idle_only_with_nothing_waiting_or_running(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """``Intake.idle`` (what the results reader defers to): clear from the moment a record
    is read until its final result is out, set again after; the ``on_busy`` hook (what
    paces the cycle collector) is told of each change, once."""
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    engine = FakeEngine()
    engine.hold("mm-1")
    told: list[bool] = []
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine, on_busy=told.append) as run,
    ):
        assert run.intake.idle.is_set()
        await produce(settings, [alert_message("idle-1")])
        await wait_for(lambda: len(engine.calls) == 1)
        assert not run.intake.idle.is_set()  # handled, held in the engine
        assert told == [True]
        engine.let_go("mm-1")
        await wait_for(lambda: len(results.finals("idle-1")) == 1)
        await wait_for(run.intake.idle.is_set)
        assert told == [True, False]


async def test_unfinished_work_is_replayed_and_finished_work_is_not_swept_again(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    first = FakeEngine()
    first.hold("mm-1")
    async with TopicCollector(kafka_bootstrap, topics.results) as results:
        async with running_intake(settings, first, grace_s=0) as run:
            await produce(settings, [alert_message("slow-1"), alert_message("fast-1", ["mm-2"])])
            await wait_for(lambda: len(results.finals("fast-1")) == 1)
            await wait_for(lambda: run.intake.in_flight == 1)
            # offset 1 is done but offset 0 is not: nothing may be committed
            assert await committed(
                settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts
            ) in (None, 0)
        # shut down with zero grace: slow-1 was interrupted, no final result for it
        assert (await results.to_end()).finals("slow-1") == []
        second = FakeEngine()
        async with running_intake(settings, second) as run:
            await wait_for(lambda: len(results.finals("slow-1")) == 1)
            await wait_for(lambda: len(results.finals("fast-1")) == 2)
            assert [c.alert_id for c in second.calls] == ["slow-1"]
            assert results.finals("fast-1")[1]["status"] == "duplicate"
            await wait_for(lambda: run.intake.committed_total >= 1)
    assert (
        await committed(settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts)
        == 2
    )


async def test_dedup_survives_a_restart_through_the_results_topic(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    message = alert_message("once-1", ["mm-1", "arb-1"])
    async with TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results:
        async with running_intake(settings):
            await produce(settings, [message])
            await wait_for(lambda: len(results.finals("once-1")) == 2)
        # A new process: fresh dedup window, rebuilt from the results topic.
        engine = FakeEngine()
        async with running_intake(settings, engine, dedup=DedupWindow(100)) as run:
            await produce(settings, [message])
            await wait_for(lambda: len(results.finals("once-1")) == 4)
            assert engine.calls == []
            assert run.observer.alerts == [("alerts", "duplicate")]


async def test_backpressure_pauses_instead_of_buffering(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(
        kafka_bootstrap,
        unique_name,
        intake={"max_queued_per_account": 2},
        kafka={"max_poll_records": 1},
    )
    await create_all_topics(settings)
    engine = FakeEngine()
    engine.hold("mm-1")
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine) as run,
    ):
        await produce(settings, [alert_message(f"bp-{i}") for i in range(12)])
        await wait_for(lambda: run.intake.paused)
        # Paused: the rest stays in Kafka rather than in memory.
        held = run.intake.in_flight
        assert held <= 3  # the limit plus at most one poll of overshoot
        assert run.intake.consumer.paused()
        engine.let_go("mm-1")
        await wait_for(lambda: len(results.finals()) == 12)
        assert not run.intake.paused
        assert sorted(c.alert_id for c in engine.calls) == sorted(f"bp-{i}" for i in range(12))


async def test_engine_errors_become_failed_results(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    engine = FakeEngine(raise_for={"boom-1"})
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine),
    ):
        await produce(settings, [alert_message("boom-1"), alert_message("after-1")])
        await wait_for(lambda: len(results.finals()) == 2)
        by_id = {r["alert_id"]: r for r in results.finals()}
        assert by_id["boom-1"]["status"] == "failed"
        assert by_id["boom-1"]["reason"] == "internal error: RuntimeError"
        assert by_id["after-1"]["status"] == "flat"


async def test_kills_start_while_read_and_a_failing_start_falls_back(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    engine = FakeEngine(start_raises_for={"start-bug-1"})
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings, engine),
    ):
        await produce(settings, [alert_message("start-bug-1"), alert_message("early-1")])
        await wait_for(lambda: len(results.finals()) == 2)
        by_id = {r["alert_id"]: r for r in results.finals()}
        # start() failed: the record's own task asked the engine again (submit).
        assert by_id["start-bug-1"]["status"] == "flat"
        assert by_id["early-1"]["status"] == "flat"
        assert engine.started == ["early-1"]  # begun while the record was read
        assert sorted(c.alert_id for c in engine.calls) == ["early-1", "start-bug-1"]


async def test_release_and_dry_run(kafka_bootstrap: str, unique_name: Unique) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    async with (
        TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        running_intake(settings) as run,
    ):
        await produce(
            settings,
            [alert_message("rel-1", "*", action="release"), alert_message("dry-1", dry_run=True)],
        )
        await wait_for(lambda: len(results.finals()) == 4)
        assert sorted(r.account for r in run.engine.releases) == sorted(["mm-1", "mm-2", "arb-1"])
        assert {r["status"] for r in results.finals("rel-1")} == {"released"}
        assert results.finals("dry-1")[0]["status"] == "dry_run"
        assert sorted(run.observer.alerts) == [("alerts", "dry_run"), ("alerts", "processed")]


def _operator_settings(
    kafka_bootstrap: str, unique_name: Unique, key: Ed25519PrivateKey
) -> Settings:
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    return make_settings(
        kafka_bootstrap,
        unique_name,
        trigger_signing={
            "required": True,
            "operators": [{"name": "alice", "public_key": public.decode()}],
        },
    )


async def test_signed_manual_triggers_and_replays(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    key = Ed25519PrivateKey.generate()
    settings = _operator_settings(kafka_bootstrap, unique_name, key)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    signed = sign_trigger(alert_message("ops-1", source="cli"), "alice", key)
    forged = sign_trigger(
        alert_message("ops-2", source="cli"), "alice", Ed25519PrivateKey.generate()
    )
    unsigned = alert_message("ops-3", source="cli", operator={"name": "alice"})
    async with (
        TopicCollector(kafka_bootstrap, topics.dlq) as dlq,
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings) as run,
    ):
        await produce(settings, [signed, forged, unsigned], topic=topics.manual)
        await wait_for(lambda: len(dlq.json()) == 2 and len(results.finals("ops-1")) == 1)
        # the same signed bytes published again: a replay, refused
        await produce(settings, [signed], topic=topics.manual)
        await wait_for(lambda: len(dlq.json()) == 3)
        letters = (await dlq.to_end()).json()
        reasons = [(r["alert_id"], r["kind"]) for r in letters]
        assert reasons == [
            ("ops-2", "unauthorized"),
            ("ops-3", "unauthorized"),
            ("ops-1", "unauthorized"),
        ]
        assert "replay" in letters[2]["reason"]
        assert [c.operator for c in run.engine.calls] == ["alice"]
        (result,) = (await results.to_end()).finals("ops-1")
        assert result["operator"] == "alice"
        assert (
            sorted(run.observer.alerts)
            == [("manual", "processed")] + [("manual", "unauthorized")] * 3
        )


async def test_halt_state_is_read_back_last_record_wins(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topic = settings.kafka.topics.state
    since = datetime(2026, 11, 24, tzinfo=UTC)

    def state(account: str, halted: bool) -> bytes:
        return encode_state(HaltState(account, halted, "a-1", since, Scope()))

    await produce(settings, [state("mm-1", True)], topic=topic, key="mm-1")
    await produce(settings, [state("mm-2", True)], topic=topic, key="mm-2")
    await produce(settings, [state("mm-2", False)], topic=topic, key="mm-2")
    await produce(settings, [state("arb-1", True), b"garbage"], topic=topic, key="arb-1")
    halted = await read_halt_states(settings.kafka, topic)
    assert sorted(halted) == ["arb-1", "mm-1"]
    assert halted["mm-1"].since == since
    assert json.loads(state("mm-1", True))["halted"] is True


async def test_engine_state_sink_publishes_to_the_state_topic(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    from killswitch.kafka.clients import make_producer
    from killswitch.kafka.outputs import Publisher

    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        now = datetime.now(UTC)
        await publisher.state(HaltState("mm-1", True, "x-1", now, Scope()))
    finally:
        await producer.stop()
    halted = await read_halt_states(settings.kafka, settings.kafka.topics.state)
    assert list(halted) == ["mm-1"]
    assert halted["mm-1"].alert_id == "x-1"
    _ = FakeEngine  # the harness engine is not needed here


async def test_work_still_running_after_the_drain_is_handed_over(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, intake={"rebalance_drain_s": 0.1})
    await create_all_topics(settings)
    topics = settings.kafka.topics
    first = FakeEngine()
    first.hold("mm-1")  # longer than the drain
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, first) as one,
    ):
        await produce(settings, [alert_message("ho-1")])
        await wait_for(lambda: len(first.calls) == 1)
        # A second member joins: the first gives its partitions up; the record still
        # running after the drain is cancelled and its account's sweep handed over,
        # before the group reassigns the partition.
        async with running_intake(settings, FakeEngine()) as two:
            await wait_for(lambda: first.handed_over == ["mm-1"], timeout=20)
            first.let_go("mm-1")
            # Whichever member has partition 0 now replays it: one final result.
            await wait_for(lambda: len(results.finals("ho-1")) == 1, timeout=20)
            await wait_for(lambda: one.intake.in_flight == two.intake.in_flight == 0)
            assert [r["status"] for r in results.finals("ho-1")] == ["flat"]
    bootstrap, group = settings.kafka.bootstrap_servers, settings.kafka.group_id
    assert await committed(bootstrap, group, topics.alerts) == 1  # committed on the way out


async def test_revocation_waits_for_running_work_and_commits_it(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # The longest drain these group timeouts allow (half the rebalance timeout).
    settings = make_settings(kafka_bootstrap, unique_name, intake={"rebalance_drain_s": 1.0})
    await create_all_topics(settings)
    topics = settings.kafka.topics
    first = FakeEngine()
    first.hold("mm-1")
    second = FakeEngine()
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, first) as one,
    ):
        await produce(settings, [alert_message("rb-1")])
        await wait_for(lambda: len(first.calls) == 1)
        # A second member joins: the first must give its partitions up, and waits
        # for the running sweep before committing (instead of leaving it to replay).
        joining = running_intake(settings, second)
        entered = asyncio.create_task(joining.__aenter__())
        try:
            await wait_for(lambda: not one.intake.assignment, timeout=20)
            assert one.intake.in_flight == 1
            first.let_go("mm-1")
            two = await entered
            await wait_for(lambda: len(results.finals("rb-1")) == 1)
            # One partition per topic: the range assignor gives both to one member.
            await wait_for(
                lambda: len(one.intake.assignment | two.intake.assignment) == 2,
                timeout=20,
            )
            assert (
                await committed(
                    settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts
                )
                == 1
            )
            assert second.calls == []
        finally:
            if not entered.done():
                entered.cancel()
            try:
                await entered
            except asyncio.CancelledError:
                pass
            else:
                await joining.__aexit__(None, None, None)


async def test_the_partitions_of_a_topic_made_again_are_read_again_from_offset_0(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """What the daemon does after a broker that lost its storage comes back (its topics
    made again): the intake reads those topics' partitions from offset 0 and forgets
    their read offsets. Told so here of a topic whose log is intact, it reads its one
    record again, which the dedup window answers ``duplicate`` (without the seek the
    record is not fetched again)."""
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings) as run,
    ):
        await produce(settings, [alert_message("back-1")])
        await wait_for(lambda: len(results.finals("back-1")) == 1)
        await wait_for(lambda: run.intake.in_flight == 0)
        await run.intake.broker_back([topics.alerts])
        await wait_for(lambda: len(results.finals("back-1")) == 2)
        finals = (await results.to_end()).finals("back-1")
        assert [r["status"] for r in finals] == ["flat", "duplicate"]
        assert [r["origin"]["offset"] for r in finals] == [0, 0]
        assert len(run.engine.calls) == 1  # swept once
        # Topics not made again are left alone.
        await run.intake.broker_back([])
        await produce(settings, [alert_message("back-2")])
        await wait_for(lambda: len(results.finals("back-2")) == 1)
        assert len((await results.to_end()).finals("back-1")) == 2


async def test_a_position_the_client_moved_back_is_read_as_a_new_log(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """The Kafka client resets its position when its log was made again by someone
    else than this daemon (a broker that creates its topics itself, another daemon):
    it then hands out offsets already read. The intake reads them as new, not as read.
    The client's reset is stood in for by a seek; the log is intact here, so the dedup
    window answers the record read again ``duplicate``."""
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings) as run,
    ):
        await produce(settings, [alert_message("reset-1")])
        await wait_for(lambda: len(results.finals("reset-1")) == 1)
        await wait_for(lambda: run.intake.in_flight == 0)
        consumer = run.intake._consumer
        assert consumer is not None
        (tp,) = [tp for tp in consumer.assignment() if tp.topic == topics.alerts]
        consumer.seek(tp, 0)
        await wait_for(lambda: len(results.finals("reset-1")) == 2)
        finals = (await results.to_end()).finals("reset-1")
        assert [r["status"] for r in finals] == ["flat", "duplicate"]
        assert len(run.engine.calls) == 1  # swept once
        await wait_for(lambda: run.intake.in_flight == 0)
    # The record read again was done in the new epoch: its offset is committed.
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == 1


async def test_a_record_of_the_old_log_finishing_after_its_topic_is_made_again_moves_no_commit(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """A record of the old log still running when its topic is found made again finishes
    later: that does not count for the record of the new log at the same offset, so the
    commit does not pass a record that has no result yet.

    As in the test above the log is intact, so the new log's records are the old ones
    read again. Both records are keyed ``mm-1``: ``old-0`` (offset 0) sweeps mm-2,
    ``old-1`` (offset 1) mm-1, both held. With at most one request per account in the
    engine the lane ``mm-1`` waits while ``old-1`` runs, so the records read again wait
    in it. When ``old-0`` finishes, its offset 0 belongs to the old log: a shutdown then
    commits 0, not past the offset 0 read again, whose result is not published."""
    settings = make_settings(kafka_bootstrap, unique_name, intake={"max_queued_per_account": 1})
    await create_all_topics(settings)
    topics = settings.kafka.topics
    engine = FakeEngine()
    engine.hold("mm-1")
    engine.hold("mm-2")
    async with TopicCollector(kafka_bootstrap, topics.results) as results:
        async with running_intake(settings, engine, grace_s=0.0) as run:
            await produce(settings, [alert_message("old-0", ["mm-2"]), alert_message("old-1")])
            await wait_for(lambda: len(engine.calls) == 2)
            await run.intake.broker_back([topics.alerts])
            await wait_for(lambda: run.intake.waiting == 2)  # both read again, lane held
            engine.let_go("mm-2")
            await wait_for(lambda: run.intake.in_flight == 1)  # old-0 done: its task ended
        # The shutdown committed what was done (old-1 was cut off, not done).
        engine.let_go("mm-1")
        assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == 0
        finals = (await results.to_end()).finals()
        assert [(r["alert_id"], r["origin"]["offset"]) for r in finals] == [("old-0", 0)]
