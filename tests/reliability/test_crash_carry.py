"""After a SIGKILL mid-sweep and a restart, the final result covers the whole kill.

The first daemon dies without a final result, so the alert's offset is not
committed and the next daemon replays it. That daemon sees only what is still
open; what the first one cancelled is known from the progress results it
published. The final result must count both (``killswitch.core.carry``).

To know exactly what the first daemon had reported when it died, the test stops
the exchange from answering before the kill (cancels, or the verifying listing, are
held unanswered by the simulator) and waits until a progress result shows every
order the simulator has cancelled so far. The kill lands with the sweep still
running: in the first test with orders still open, in the second with none left.

The daemon still has cancels in flight then, and the hold does not stop all of them
from acting: a cancel the daemon began before that progress result but wrote only
just before the kill (a request waits for the client's rate limiter and a busy event
loop), not yet read by the simulator, is read after the faults are cleared and
cancels its order, which the second daemon then never sees open. The third test
makes that certain (held cancels take effect): the final result still counts those
orders, from the cancels in flight the progress result lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from killswitch.simulator import EndpointFaults
from tests.support import figures
from tests.support.daemon import Daemons, daemon_config, write_config
from tests.support.exchange import Exchange, exchange
from tests.support.topics import Producer, TopicCollector, alert, create_topics
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNT = "mm-1"
PAIR = "BTC_USDT"
# Requests held this long without an answer: longer than the test waits before the kill.
HOLD = EndpointFaults(timeout_rate=1.0, timeout_hold_s=30.0)
# Held the same way, but the exchange cancels the order first: applied, never answered.
APPLIED_UNANSWERED = EndpointFaults(timeout_rate=1.0, timeout_hold_s=30.0, after_effect=True)


def _config(bootstrap: str, tag: str, ex: Exchange) -> dict[str, Any]:
    return daemon_config(
        bootstrap,
        tag,
        # Slow enough that the kill can land between two cancels.
        ex.account_configs(rate_limit_per_second=30.0, burst=5, max_concurrency=2),
        # per_order: one cancel per order, so a sweep can be cut part-way.
        engine={"strategy": "per_order", "progress_interval_s": 0.05, "default_deadline_s": 60},
        # The killed member never leaves the group: keep the wait for its session short.
        kafka={
            "session_timeout_ms": 1_000,
            "heartbeat_interval_ms": 200,
            "rebalance_timeout_ms": 1_000,
        },
    )


def _progress(results: TopicCollector, alert_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in results.json()
        if r.get("alert_id") == alert_id and r.get("account") == ACCOUNT and r.get("final") is False
    ]


def _reported(results: TopicCollector, alert_id: str, sent: int) -> bool:
    """A progress result reports exactly ``sent`` cancels, order by order."""
    return any(
        r["counts"]["sent"] == sent == r["counts"]["resolved"] == len(r["orders"])
        for r in _progress(results, alert_id)
    )


async def _start(
    kafka_bootstrap: str, tmp_path: Path, tag: str, ex: Exchange
) -> tuple[Path, dict[str, str]]:
    config = _config(kafka_bootstrap, tag, ex)
    await create_topics(kafka_bootstrap, config["kafka"]["topics"])
    return write_config(tmp_path / "killswitch.toml", config), config["kafka"]["topics"]


async def test_final_counts_cover_cancels_of_both_processes(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    orders = 120
    async with exchange([ACCOUNT], [PAIR]) as ex:
        placed = ex.seed(ACCOUNT, [PAIR], orders)
        path, topics = await _start(kafka_bootstrap, tmp_path, "carrymid", ex)

        def cancelled() -> int:
            return orders - len(ex.open_ids(ACCOUNT, [PAIR]))

        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            Producer(kafka_bootstrap) as producer,
        ):
            await producer.send(
                topics["alerts"], alert("carry-mid", [ACCOUNT], scope={"symbols": [PAIR]}), ACCOUNT
            )
            first = daemons.start(path, "first")
            await wait_for(lambda: cancelled() >= 20, timeout=30)
            ex.sim.set_faults(HOLD, "cancel")  # the next cancels hang and change nothing
            before = cancelled()
            await wait_for(lambda: _reported(results, "carry-mid", before), timeout=10)
            assert first.running, first.stderr()[-2000:]
            first.kill()
            # Died mid-sweep: no final result.
            assert not (await results.to_end()).finals("carry-mid")
            assert cancelled() == before
            open_at_kill = orders - before

            ex.sim.clear_faults()
            since = ex.last_seq()
            second = daemons.start(path, "second")
            await wait_for(lambda: bool(results.finals("carry-mid")), timeout=60)
            second.terminate()
            assert await second.wait(timeout=30) == 0
            finals = (await results.to_end()).finals("carry-mid")
            by_second = {
                e.order_id
                for e in ex.log("cancel", since)
                if e.status == 200 and e.order_id is not None
            }

    (final,) = finals
    assert 0 < before < orders, "the kill did not land mid-sweep"
    assert by_second  # the second process cancelled the rest itself
    assert len(by_second) == open_at_kill
    assert ex.open_ids(ACCOUNT, [PAIR]) == set()
    # The whole kill: every order the simulator shows cancelled, each counted once.
    assert final["status"] == "flat"
    assert final["counts"]["resolved"] == cancelled() == orders
    assert final["counts"]["sent"] == orders
    assert {o["order_id"] for o in final["orders"]} == placed
    assert "earlier process" in final["reason"]
    figures.add("carry: orders cancelled before the SIGKILL", before)
    figures.add("carry: orders cancelled after the restart", len(by_second))
    figures.add("carry: final resolved (both processes)", final["counts"]["resolved"])


async def test_nothing_left_after_restart_still_reports_what_was_cancelled(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    orders = 40  # one page: the first listing is done once a cancel went out
    async with exchange([ACCOUNT], [PAIR]) as ex:
        placed = ex.seed(ACCOUNT, [PAIR], orders)
        path, topics = await _start(kafka_bootstrap, tmp_path, "carrydone", ex)
        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            Producer(kafka_bootstrap) as producer,
        ):
            await producer.send(
                topics["alerts"], alert("carry-done", [ACCOUNT], scope={"symbols": [PAIR]}), ACCOUNT
            )
            first = daemons.start(path, "first")
            await wait_for(lambda: bool(ex.log("cancel")), timeout=30)
            # The verifying listing hangs: the sweep cannot end before the kill.
            ex.sim.set_faults(HOLD, "open_orders")
            await wait_for(lambda: not ex.open_ids(ACCOUNT, [PAIR]), timeout=30)
            await wait_for(lambda: _reported(results, "carry-done", orders), timeout=10)
            assert first.running, first.stderr()[-2000:]
            first.kill()
            assert not (await results.to_end()).finals("carry-done")

            ex.sim.clear_faults()
            since = ex.last_seq()
            second = daemons.start(path, "second")
            await wait_for(lambda: bool(results.finals("carry-done")), timeout=60)
            second.terminate()
            assert await second.wait(timeout=30) == 0
            finals = (await results.to_end()).finals("carry-done")
            cancels_by_second = ex.log("cancel", since)

    (final,) = finals
    assert cancels_by_second == []  # zero work left after the restart
    assert final["status"] == "flat"
    # Not all zero: the first process did the cancelling.
    assert final["counts"]["resolved"] == final["counts"]["sent"] == orders
    assert {o["order_id"] for o in final["orders"]} == placed
    figures.add("carry: orders cancelled before a SIGKILL with nothing left", orders)


async def test_cancels_in_flight_at_the_kill_count_when_the_exchange_applied_them(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    orders = 120
    async with exchange([ACCOUNT], [PAIR]) as ex:
        placed = ex.seed(ACCOUNT, [PAIR], orders)
        path, topics = await _start(kafka_bootstrap, tmp_path, "carryflight", ex)

        def cancelled() -> set[int]:
            return placed - ex.open_ids(ACCOUNT, [PAIR])

        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            Producer(kafka_bootstrap) as producer,
        ):
            await producer.send(
                topics["alerts"],
                alert("carry-flight", [ACCOUNT], scope={"symbols": [PAIR]}),
                ACCOUNT,
            )
            first = daemons.start(path, "first")
            await wait_for(lambda: len(cancelled()) >= 20, timeout=30)
            # From now on cancels cancel their order and are never answered.
            ex.sim.set_faults(APPLIED_UNANSWERED, "cancel")
            answered = cancelled()
            await wait_for(lambda: len(cancelled()) > len(answered), timeout=10)
            await wait_for(lambda: _reported(results, "carry-flight", len(answered)), timeout=10)
            assert first.running, first.stderr()[-2000:]
            first.kill()
            assert not (await results.to_end()).finals("carry-flight")
            # Cancelled by the first daemon, and in none of its outcomes.
            unanswered = cancelled() - answered
            assert unanswered

            ex.sim.clear_faults()
            since = ex.last_seq()
            second = daemons.start(path, "second")
            await wait_for(lambda: bool(results.finals("carry-flight")), timeout=60)
            second.terminate()
            assert await second.wait(timeout=30) == 0
            finals = (await results.to_end()).finals("carry-flight")
            by_second = {
                e.order_id
                for e in ex.log("cancel", since)
                if e.status == 200 and e.order_id is not None
            }

    (final,) = finals
    assert ex.open_ids(ACCOUNT, [PAIR]) == set()
    assert by_second
    assert not by_second & (answered | unanswered)  # the second never saw those open
    assert final["status"] == "flat"
    assert final["counts"]["resolved"] == final["counts"]["sent"] == orders
    assert {o["order_id"] for o in final["orders"]} == placed
    assert all(o["outcome"] == "sent" for o in final["orders"])
    figures.add("carry: cancels in flight at the SIGKILL, applied unanswered", len(unanswered))
