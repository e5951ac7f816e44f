"""Crash recovery: the daemon SIGKILLed at seeded random points of its sweeps, restarted.

``python -m killswitch run --config FILE`` runs against the embedded broker and the
simulator in this process (which outlives every kill). Each round, trading systems
place new orders and risk engines publish alerts covering them; a new daemon starts
and is killed at a point drawn from a seeded RNG: as soon as its health listener
answers (start-up, maybe before it joined the group), after its k-th listing or cancel
request (mid sweep), or right after it published a final result (before
or after the offset commit). After the last kill one more daemon runs to the end.

Then: every (alert, account) has a final result (``flat``, repeats ``duplicate``),
every account is flat on the simulator's books in scope, orders outside every scope
were never touched, nothing went to the dead-letter topic, the last daemon exits 0 on
SIGTERM, and no secret appears in any output.

A kill counts as *mid-sweep* only when it landed with cancels in flight: requests the
killed daemon had sent whose answers the simulator had not sent yet (their orders are
cancelled on the exchange, and the daemon never learnt it). The test says how many
kills did, and fails if none did.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from killswitch.exchange.simulator import EndpointFaults
from tests.support import figures
from tests.support.daemon import DaemonProcess, Daemons, daemon_config, http_get, write_config
from tests.support.exchange import Exchange, exchange
from tests.support.topics import Producer, TopicCollector, alert, create_topics
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261124
ACCOUNTS = ["mm-1", "mm-2", "mm-3"]
IN_SCOPE = ["BTC_USDT", "ETH_USDT", "SOL_USDT"]
ELSEWHERE = "DOGE_USDT"  # never in any alert's scope
KILLS = 10
KINDS = ["startup", "requests", "requests", "requests", "requests", "result", "result"]
MID_SWEEP = "kills with cancels in flight"
IN_FLIGHT = "cancels in flight at those kills"


async def reach_kill_point(
    point: tuple[str, int], daemon: DaemonProcess, ex: Exchange, results: TopicCollector, port: int
) -> None:
    """Wait (bounded) until the daemon reaches the drawn point of its work."""
    kind, k = point
    since, finals = ex.last_seq(), len(results.finals())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        assert daemon.running, f"daemon exited on its own:\n{daemon.stderr()[-2000:]}"
        if kind == "startup":
            if await http_get(f"http://127.0.0.1:{port}/healthz", timeout=0.2) is not None:
                return
        elif kind == "requests":
            if len(ex.sweep_requests(since)) >= k:
                return
        elif len(results.finals()) > finals:
            return
        assert loop.time() < deadline, f"kill point {kind} {k} not reached"
        await asyncio.sleep(0.005)  # polling the daemon's progress with a deadline


# Ten daemon starts, each joining the group: bounded generously for a loaded machine.
@pytest.mark.timeout(300)
async def test_sigkill_at_random_points_loses_nothing(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    tag = f"crash{rng.randrange(10**8)}"
    async with exchange(ACCOUNTS, [*IN_SCOPE, ELSEWHERE], seed=SEED) as ex:
        # Slow enough that a sweep takes a second or two and can be cut anywhere.
        ex.sim.set_faults(EndpointFaults(latency_ms=3, jitter_ms=6))
        elsewhere = {a: ex.seed(a, [ELSEWHERE], 5) for a in ACCOUNTS}
        config = daemon_config(
            kafka_bootstrap,
            tag,
            ex.account_configs(rate_limit_per_second=120.0, burst=10, max_concurrency=4),
            # The clock is not what this test checks (deadlines have tests of their own):
            # the last daemon sweeps every replayed alert at once, which on a loaded
            # machine can outlast the usual 20 s and end `residual` with orders open.
            # As long as the wait for the final results below.
            engine={"default_deadline_s": 90.0},
            # The killed member never leaves the group: the next one's join waits for its
            # session to expire. The shortest allowed keeps ten restarts quick.
            kafka={
                "session_timeout_ms": 1_000,
                "heartbeat_interval_ms": 200,
                "rebalance_timeout_ms": 1_000,
            },
        )
        port = config["metrics"]["port"]
        path = write_config(tmp_path / "killswitch.toml", config)
        topics = config["kafka"]["topics"]
        await create_topics(kafka_bootstrap, topics)
        expected: set[tuple[str, str]] = set()
        seeded = 0
        kill_log: Counter[str] = Counter()
        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            TopicCollector(kafka_bootstrap, topics["dlq"]) as dlq,
            Producer(kafka_bootstrap) as producer,
        ):
            for round_no in range(KILLS):
                # New orders, and alerts that cover them (some for several accounts).
                symbols = rng.sample(IN_SCOPE, rng.randint(1, len(IN_SCOPE)))
                accounts = rng.sample(ACCOUNTS, rng.randint(1, len(ACCOUNTS)))
                for account in accounts:
                    seeded += len(ex.seed(account, symbols, rng.randint(15, 30)))
                groups = [accounts] if rng.random() < 0.5 else [[a] for a in accounts]
                for n, group in enumerate(groups):
                    alert_id = f"crash-{round_no}-{n}"
                    message = alert(alert_id, group, scope={"symbols": symbols})
                    await producer.send(topics["alerts"], message, key=group[0])
                    expected |= {(alert_id, a) for a in group}
                kind = rng.choice(KINDS)
                k = rng.randint(1, 40)
                started = time.monotonic()
                daemon = daemons.start(path, f"round{round_no}")
                await reach_kill_point((kind, k), daemon, ex, results, port)
                # No await from here to the kill: the simulator sends no answer between.
                in_flight = ex.cancels_in_flight(since=started)
                daemon.kill()
                kill_log[kind] += 1
                if in_flight:
                    kill_log[MID_SWEEP] += 1
                    kill_log[IN_FLIGHT] += in_flight

            final = daemons.start(path, "final")
            await wait_for(lambda: results.final_pairs() >= expected, timeout=180)
            try:
                await wait_for(
                    lambda: all(not ex.open_ids(a, IN_SCOPE) for a in ACCOUNTS), timeout=30
                )
            except AssertionError:
                left = {a: len(ex.open_ids(a, IN_SCOPE)) for a in ACCOUNTS}
                unflat = [
                    (r["alert_id"], r["account"], r["status"], r.get("reason"))
                    for r in results.finals()
                    if r["status"] not in ("flat", "duplicate")
                ]
                raise AssertionError(f"orders left open {left}; finals not flat {unflat}") from None
            final.terminate()
            assert await final.wait(timeout=30) == 0
            outcomes = await results.to_end()
            dead_letters = (await dlq.to_end()).json()
            published = outcomes.json() + dead_letters

    killed = sum(n for kind, n in kill_log.items() if kind in KINDS)
    assert killed == KILLS
    assert kill_log[MID_SWEEP] > 0, f"no kill landed mid-sweep: {dict(kill_log)}"
    # Every alert has a final result per account: flat once, any repeat a duplicate.
    statuses: dict[tuple[str, str], list[str]] = {}
    for record in outcomes.finals():
        statuses.setdefault((record["alert_id"], record["account"]), []).append(record["status"])
    assert set(statuses) == expected
    for pair, seen in statuses.items():
        assert seen.count("flat") == 1, (pair, seen)
        assert set(seen) <= {"flat", "duplicate"}, (pair, seen)
    for record in outcomes.finals():
        counts = record["counts"]
        assert counts["resolved"] == len(record["orders"])
        assert counts["resolved"] == sum(v for k, v in counts.items() if k != "resolved")
    # The books: flat in scope, untouched elsewhere.
    for account in ACCOUNTS:
        assert ex.open_ids(account, IN_SCOPE) == set(), account
        assert ex.open_ids(account, [ELSEWHERE]) == elsewhere[account]
    assert not [e for e in ex.log("cancel") if ELSEWHERE in e.query]
    assert dead_letters == []
    # No secret in anything the daemons wrote or published.
    outputs = daemons.all_output() + "".join(str(r) for r in published)
    for secret in ex.secrets():
        assert secret not in outputs
    figures.add("crash: SIGKILLs survived", killed)
    figures.add("crash: SIGKILLs mid-sweep (cancels in flight)", kill_log[MID_SWEEP])
    figures.add("crash: cancels in flight at those SIGKILLs", kill_log[IN_FLIGHT])
    figures.add("crash: alerts x accounts with a final result", len(statuses))
    figures.add("crash: alerts lost", len(expected - set(statuses)))
    figures.add("crash: orders placed in scope (all cancelled)", seeded)
    figures.add(
        "crash: orders left open in scope", sum(len(ex.open_ids(a, IN_SCOPE)) for a in ACCOUNTS)
    )
