"""Graceful shutdown: SIGTERM while sweeps run, then a restart.

Three alerts in one partition, in this order: C (a small kill, finished before the
signal), A (a kill that needs well under the grace period to finish) and B (a kill that
needs far longer). SIGTERM arrives while A and B run. The daemon must let A finish and
publish its result, hand B off (no final result, offset not committed), and exit 0
well before B could have finished. A restarted daemon must finish B and must not touch
A or C again: no new result for them, not one exchange request for their accounts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from killswitch.daemon import SAME_STOP_SIGNAL_S
from killswitch.simulator import EndpointFaults
from tests.support import figures
from tests.support.daemon import Daemons, daemon_config, wait_http, write_config
from tests.support.exchange import exchange
from tests.support.topics import Producer, TopicCollector, alert, committed, create_topics
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRACE_S = 3.0
RATE = 40.0  # requests per second per account for the first daemon (one cancel each)
C_ORDERS = 5  # finished before the signal
A_ORDERS = int(RATE * GRACE_S / 4)  # a quarter of the grace period at RATE
B_ORDERS = int(RATE * GRACE_S * 5)  # five grace periods at RATE
# The first daemon must exit within this: the grace period and a margin for start-up of
# the stop, yet well before B could have finished.
FIRST_EXIT_S = GRACE_S + 6
assert FIRST_EXIT_S < B_ORDERS / RATE


async def test_sigterm_finishes_or_hands_off_and_nothing_is_replayed(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    async with exchange(["mm-1", "mm-2", "mm-3"], ["BTC_USDT"], seed=4) as ex:
        ex.sim.set_faults(EndpointFaults(latency_ms=2))
        ex.seed("mm-3", ["BTC_USDT"], C_ORDERS)
        ex.seed("mm-1", ["BTC_USDT"], A_ORDERS)
        ex.seed("mm-2", ["BTC_USDT"], B_ORDERS)
        tag = f"term{ex.server.port}"
        slow = daemon_config(
            kafka_bootstrap,
            tag,
            ex.account_configs(rate_limit_per_second=RATE, burst=2, max_concurrency=2),
            engine={"shutdown_grace_s": GRACE_S, "default_deadline_s": 60.0},
            # The next member's join waits out the previous one's session: keep it short.
            kafka={"session_timeout_ms": 1_000, "heartbeat_interval_ms": 200},
        )
        topics = slow["kafka"]["topics"]
        group = slow["kafka"]["group_id"]
        await create_topics(kafka_bootstrap, topics)
        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            Producer(kafka_bootstrap) as producer,
        ):
            first = daemons.start(write_config(tmp_path / "slow.toml", slow), "first")
            await producer.send(topics["alerts"], alert("term-C", ["mm-3"]))
            await wait_for(lambda: bool(results.finals("term-C")), timeout=30)
            await producer.send(topics["alerts"], alert("term-A", ["mm-1"]))
            await producer.send(topics["alerts"], alert("term-B", ["mm-2"]))
            await wait_for(
                lambda: (
                    len(ex.log("cancel")) >= C_ORDERS + 5 + 5
                    and len(ex.open_ids("mm-1")) < A_ORDERS
                ),
                timeout=30,
            )
            assert ex.open_ids("mm-1"), "A was meant to be running at the signal"
            first.terminate()
            # Bounded well below the time B would need: B was handed off, not finished.
            first_exit = await first.wait(timeout=FIRST_EXIT_S)
            assert first_exit == 0
            after_first = {r["alert_id"]: r["status"] for r in (await results.to_end()).finals()}
            b_left_open = len(ex.open_ids("mm-2"))
            offset_after_first = await committed(kafka_bootstrap, group, topics["alerts"])

            # The restart (faster, so B finishes quickly): same group, same topics.
            fast = {**slow, "accounts": ex.account_configs(rate_limit_per_second=2000.0)}
            ex.sim.clear_faults()
            mark = ex.last_seq()
            second = daemons.start(write_config(tmp_path / "fast.toml", fast), "second")
            await wait_for(lambda: bool(results.finals("term-B")), timeout=60)
            second.terminate()
            assert await second.wait(timeout=30) == 0
            offset_after_second = await committed(kafka_bootstrap, group, topics["alerts"])
            finals = (await results.to_end()).finals()

    # The first daemon: C and A finished with results, B handed off unfinished.
    assert after_first == {"term-C": "flat", "term-A": "flat"}
    assert b_left_open > 0
    assert offset_after_first == 2  # C and A committed; B is replayed from here
    # The restart finished B, and did nothing for A or C.
    assert [(r["alert_id"], r["status"]) for r in finals] == [
        ("term-C", "flat"),
        ("term-A", "flat"),
        ("term-B", "flat"),
    ]
    assert ex.open_ids("mm-2") == set()
    assert offset_after_second == 3
    # (The readiness probes still read the time, pairs and a page for every account.)
    touched = {e.client for e in ex.sweep_requests(since=mark)}
    assert touched == {"mm-2"}
    replayed = [r for r in finals[len(after_first) :] if r["alert_id"] in after_first]
    figures.add("shutdown: SIGTERMs during sweeps, exit 0", [first_exit].count(0))
    figures.add("shutdown: alerts replayed as new work", len(replayed))


async def test_a_second_sigterm_stops_at_once_and_the_alert_is_replayed(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    """A long grace period and a sweep far longer still: the first SIGTERM starts the
    graceful stop (draining), a second one ends it now (exit 130). The unfinished alert
    has no final result and its offset stays uncommitted: a restart finishes it."""
    async with exchange(["mm-1"], ["BTC_USDT"], seed=5) as ex:
        orders = int(RATE * 30)  # 30 s at RATE, and the grace period longer still
        ex.seed("mm-1", ["BTC_USDT"], orders)
        tag = f"term2{ex.server.port}"
        slow = daemon_config(
            kafka_bootstrap,
            tag,
            ex.account_configs(rate_limit_per_second=RATE, burst=2, max_concurrency=2),
            engine={"shutdown_grace_s": 120.0, "default_deadline_s": 120.0},
            kafka={"session_timeout_ms": 1_000, "heartbeat_interval_ms": 200},
        )
        topics = slow["kafka"]["topics"]
        group = slow["kafka"]["group_id"]
        readyz = f"http://127.0.0.1:{slow['metrics']['port']}/readyz"
        await create_topics(kafka_bootstrap, topics)
        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            Producer(kafka_bootstrap) as producer,
        ):
            first = daemons.start(write_config(tmp_path / "slow.toml", slow), "first")
            await producer.send(topics["alerts"], alert("twice-A", ["mm-1"]))
            await wait_for(lambda: len(ex.log("cancel")) >= 5, timeout=30)
            first.terminate()

            # The first signal was taken: /readyz says it is shutting down.
            await wait_http(readyz, until=lambda answer: "shutting down" in answer.text)
            # A signal within SAME_STOP_SIGNAL_S of the first is the same request: the
            # second one comes once that has passed since the daemon took the first
            # (before it said so; the monotonic clock is the machine's, not a process's).
            draining = time.monotonic()
            await wait_for(
                lambda: time.monotonic() > draining + SAME_STOP_SIGNAL_S,
                timeout=SAME_STOP_SIGNAL_S + 5,
            )
            assert first.running  # the graceful stop waits for the sweep
            first.terminate()
            second_exit = await first.wait(timeout=20)  # before the sweep or grace could end
            assert second_exit == 130
            left_open = len(ex.open_ids("mm-1"))
            assert not (await results.to_end()).finals("twice-A")
            assert await committed(kafka_bootstrap, group, topics["alerts"]) in (None, 0)

            fast = {**slow, "accounts": ex.account_configs(rate_limit_per_second=2000.0)}
            second = daemons.start(write_config(tmp_path / "fast.toml", fast), "second")
            await wait_for(lambda: bool(results.finals("twice-A")), timeout=60)
            second.terminate()
            assert await second.wait(timeout=30) == 0
            replayed = (await results.to_end()).finals("twice-A")
    assert left_open > 0
    assert [r["status"] for r in replayed] == ["flat"]
    assert ex.open_ids("mm-1") == set()
    figures.add(
        "shutdown: second SIGTERM, exit 130, alert replayed",
        int(second_exit == 130 and len(replayed) == 1),
    )


async def test_a_sigterm_delivered_twice_at_once_is_one_graceful_stop(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    """A wrapper forwarding a signal to a process group (``timeout``, a shell) delivers
    SIGTERM twice within a millisecond: that is one request, a graceful stop (exit 0),
    not a second signal's stop at once (130)."""
    async with exchange(["mm-1"], ["BTC_USDT"], seed=6) as ex:
        config = daemon_config(
            kafka_bootstrap,
            f"twin{ex.server.port}",
            ex.account_configs(),
            kafka={"session_timeout_ms": 1_000, "heartbeat_interval_ms": 200},
        )
        readyz = f"http://127.0.0.1:{config['metrics']['port']}/readyz"
        await create_topics(kafka_bootstrap, config["kafka"]["topics"])
        daemon = daemons.start(write_config(tmp_path / "twin.toml", config), "twin")
        await wait_http(readyz, until=lambda answer: answer.status_code == 200)
        os.kill(daemon.pid, signal.SIGTERM)
        # Two kills in a row may reach the process as one (a signal still pending is not
        # queued twice): the second is sent once the first was delivered.
        await wait_for(lambda: not _sigterm_pending(daemon.pid), timeout=10)
        os.kill(daemon.pid, signal.SIGTERM)
        assert await daemon.wait(timeout=30) == 0


def _sigterm_pending(pid: int) -> bool:
    """Whether a SIGTERM sent to ``pid`` is not delivered yet (Linux: /proc status)."""
    bit = 1 << (signal.SIGTERM - 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigPnd", "ShdPnd") and int(value, 16) & bit:
            return True
    return False
