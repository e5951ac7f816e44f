"""Failover: two daemon processes in one group, the one sweeping SIGKILLed mid-sweep.

``python -m killswitch run`` twice (one group, one partition per input topic, so one
daemon owns the account and the other idles), each reaching the simulator in this
process through a listener of its own (``DoorServer``): the simulator's log says
which daemon sent each request. A risk alert and an operator's trigger for the same
account arrive together (the trigger on the manual topic, keyed by the account as
``killswitch trigger`` keys it): the owner sweeps both. Once it has sent some cancels
it is SIGKILLed. Then: the survivor takes the partitions over and finishes both; it
sent nothing for the account before the kill (one sweep at a time: with round-robin
assignment it would have swept the trigger alongside); each alert has exactly one
final result, ``flat``, read to the results topic's end offsets, and the simulator's
books are flat. How fast is the benchmark's business (``python -m bench failover``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from killswitch.simulator.testing import DoorServer
from tests.support.daemon import Daemons, account_config, daemon_config, wait_http, write_config
from tests.support.exchange import CANCEL_ENDPOINTS, exchange
from tests.support.topics import Producer, TopicCollector, alert, create_topics, read_to_end
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNT = "mm-1"
SYMBOL = "BTC_USDT"
ORDERS = 200
CUT_AFTER = 20  # cancels sent before the SIGKILL
IDS = {("fo-1", ACCOUNT), ("fo-op", ACCOUNT)}


async def test_sigkill_of_the_sweeping_daemon_the_survivor_finishes_alone(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    tag = f"failover{tmp_path.name[-8:]}"
    async with exchange([ACCOUNT], [SYMBOL]) as ex, contextlib.AsyncExitStack() as stack:
        doors = [DoorServer(ex.sim), DoorServer(ex.sim)]
        for door in doors:
            await stack.enter_async_context(door)
        api_key, pem = ex.keys[ACCOUNT]
        configs = [
            daemon_config(
                kafka_bootstrap,
                tag,
                [account_config(ACCOUNT, api_key, pem, door.base_url, rate_limit_per_second=100.0)],
                engine={"default_deadline_s": 60.0},
                # The shortest group timeouts allowed: the survivor notices in ~1 s.
                kafka={
                    "session_timeout_ms": 1_000,
                    "heartbeat_interval_ms": 200,
                    "rebalance_timeout_ms": 1_000,
                },
            )
            for door in doors
        ]
        topics = configs[0]["kafka"]["topics"]
        await create_topics(kafka_bootstrap, topics)
        runs = [
            daemons.start(write_config(tmp_path / f"d{i}.toml", c), f"d{i}")
            for i, c in enumerate(configs)
        ]
        for config in configs:
            port = config["metrics"]["port"]
            await wait_http(f"http://127.0.0.1:{port}/readyz", until=lambda r: r.status_code == 200)
        seeded = ex.seed(ACCOUNT, [SYMBOL], ORDERS)
        since = ex.last_seq()

        def cancels(door: DoorServer, after: int) -> list[int]:
            return [
                e.seq
                for e in ex.log(since=after)
                if e.seq in door.seqs and e.endpoint in CANCEL_ENDPOINTS
            ]

        def sweep_requests(door: DoorServer, after: int) -> list[int]:
            return [e.seq for e in ex.sweep_requests(after) if e.seq in door.seqs]

        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            Producer(kafka_bootstrap) as producer,
        ):
            await producer.send(topics["alerts"], alert("fo-1", [ACCOUNT]), key=ACCOUNT)
            trigger = alert("fo-op", [ACCOUNT], operator={"name": "alice"})
            await producer.send(topics["manual"], trigger, key=ACCOUNT)
            await wait_for(
                lambda: any(len(cancels(d, since)) >= CUT_AFTER for d in doors), timeout=30
            )
            victim = max((0, 1), key=lambda i: len(cancels(doors[i], since)))
            survivor = 1 - victim
            kill_seq = ex.last_seq()
            runs[victim].kill()
            assert ex.open_ids(ACCOUNT), "the sweep ended before the kill"
            await wait_for(lambda: results.final_pairs() >= IDS, timeout=60)
            await wait_for(lambda: not ex.open_ids(ACCOUNT), timeout=30)
            runs[survivor].terminate()
            assert await runs[survivor].wait(timeout=30) == 0
        records = (await read_to_end(kafka_bootstrap, topics["results"])).json()

    for alert_id, _ in IDS:
        finals = [r["status"] for r in records if r.get("final") and r["alert_id"] == alert_id]
        assert finals == ["flat"], alert_id
    # One daemon at a time: the survivor sent nothing for the account before the kill,
    # and it did finish the sweep.
    assert [s for s in sweep_requests(doors[survivor], since) if s <= kill_seq] == []
    assert cancels(doors[survivor], kill_seq)
    assert not ex.open_ids(ACCOUNT)
    assert len(seeded) == ORDERS
