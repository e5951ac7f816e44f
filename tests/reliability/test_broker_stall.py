"""Broker stall: the Kafka broker process frozen (SIGSTOP) mid-sweep, longer than the
consumer session timeout, then resumed (SIGCONT).

A dedicated embedded broker (the session one is shared by other tests). While it is
frozen the daemon's sweep goes on against the exchange, but its results cannot be
published, its offsets cannot be committed and its group session expires; alerts are
produced during the stall (they reach the broker when it wakes). The same daemon
process, never restarted, must handle every alert: each has exactly one ``flat``
result (a repeat after the rebalance may add a ``duplicate``), the books are flat,
and it still stops cleanly with exit code 0.

What the frozen broker does to the group is the broker's business: the embedded broker
(Tansu 0.6) keeps the member after SIGCONT (same generation, checked by hand), so what
this test exercises is the client side: fetches, produces and metadata requests timing
out and failing during the stall, results published after it, no restart needed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from killswitch.embedded import EmbeddedBroker
from killswitch.exchange.simulator import EndpointFaults
from tests.support import figures
from tests.support.daemon import Daemons, daemon_config, write_config
from tests.support.exchange import exchange
from tests.support.topics import Producer, TopicCollector, alert, create_topics
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNTS = ["mm-1", "mm-2"]
SYMBOLS = ["BTC_USDT", "ETH_USDT", "SOL_USDT"]
SESSION_TIMEOUT_MS = 1_500
STALL_S = 4.0  # well beyond the session timeout
STALL_ALERTS = ["stall-2", "stall-3"]  # produced while the broker is frozen


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (it is frozen; ``stop`` resumes it before ending it)."""
    with EmbeddedBroker() as own:
        yield own


async def test_broker_frozen_past_the_session_timeout_then_resumed(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    async with exchange(ACCOUNTS, SYMBOLS, seed=8) as ex:
        ex.sim.set_faults(EndpointFaults(latency_ms=2, jitter_ms=3))
        ex.seed("mm-1", SYMBOLS, 40)
        config = daemon_config(
            bootstrap,
            "stall",
            ex.account_configs(rate_limit_per_second=40.0, burst=4, max_concurrency=2),
            kafka={
                "session_timeout_ms": SESSION_TIMEOUT_MS,
                "heartbeat_interval_ms": 300,
                "rebalance_timeout_ms": 1_500,
                # Requests to the frozen broker time out (and are retried) during the stall.
                "request_timeout_ms": 2_000,
            },
        )
        topics = config["kafka"]["topics"]
        await create_topics(bootstrap, topics)
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", config))
        async with (
            TopicCollector(bootstrap, topics["results"]) as results,
            Producer(bootstrap) as producer,
        ):
            await producer.send(topics["alerts"], alert("stall-1", ["mm-1"]), key="mm-1")
            await wait_for(lambda: len(ex.log("cancel")) >= 10, timeout=30)

            loop = asyncio.get_running_loop()
            os.kill(broker.pid, signal.SIGSTOP)
            stopped_at = loop.time()
            try:
                ex.seed("mm-2", SYMBOLS, 10)
                ex.seed("mm-1", ["SOL_USDT"], 10)
                during = [
                    await producer.send_later(topics["alerts"], alert(STALL_ALERTS[0], ["mm-2"])),
                    await producer.send_later(
                        topics["alerts"],
                        alert(STALL_ALERTS[1], ["mm-1"], scope={"symbols": ["SOL_USDT"]}),
                    ),
                ]
                # Holding the fault for its duration (not synchronising on anything).
                await asyncio.sleep(STALL_S)
                assert daemon.running, "the daemon died while the broker was frozen"
            finally:
                os.kill(broker.pid, signal.SIGCONT)
                frozen_s = loop.time() - stopped_at
            await asyncio.wait_for(asyncio.gather(*during), timeout=30)

            expected = {("stall-1", "mm-1"), (STALL_ALERTS[0], "mm-2"), (STALL_ALERTS[1], "mm-1")}
            await wait_for(lambda: results.final_pairs() >= expected, timeout=60)
            pid = daemon.pid
            assert daemon.running
            daemon.terminate()
            assert await daemon.wait(timeout=30) == 0
            finals = (await results.to_end()).finals()

    statuses: dict[tuple[str, str], list[str]] = {}
    for record in finals:
        statuses.setdefault((record["alert_id"], record["account"]), []).append(record["status"])
    assert set(statuses) == expected
    for pair, seen in statuses.items():
        assert seen.count("flat") == 1, (pair, seen)
        assert set(seen) <= {"flat", "duplicate"}, (pair, seen)
    assert ex.open_ids("mm-1") == set()
    assert ex.open_ids("mm-2") == set()
    assert len(daemons.started) == 1  # never restarted...
    assert daemons.started[0].pid == pid  # ...and the same process throughout
    for secret in ex.secrets():
        assert secret not in daemon.output()
    assert frozen_s * 1000 > SESSION_TIMEOUT_MS
    figures.add(
        f"broker stall: seconds frozen (session timeout {SESSION_TIMEOUT_MS / 1000:g} s)",
        int(frozen_s),
    )
    handled = [a for a in STALL_ALERTS if any(pair[0] == a for pair in statuses)]
    figures.add("broker stall: alerts produced during the stall, handled", len(handled))
