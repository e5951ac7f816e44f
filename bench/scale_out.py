"""Scale-out: 1, 2 and 3 daemons in one consumer group on an alert storm.

Everything runs on loopback in separate processes: the Kafka broker (embedded
Tansu, or ``KILLSWITCH_BENCH_BOOTSTRAP``), the exchange simulator
(``killswitch simulate-exchange``, unthrottled), and N daemons
(``python -m killswitch run``) sharing one group on an alerts topic with 6
partitions. For each N, on fresh topics and a fresh group:

1. every account gets ``--orders`` open orders; the N daemons start; one warm-up
   alert per account is sent and answered (so every daemon is consuming);
2. ``--alerts`` kill alerts (scope: the account's BTC_USDT orders) are produced over
   ``--accounts`` accounts, as fast as the producer goes;
3. measured: seconds until the group's committed offsets reach the end of the topic
   (consumer lag 0), and until every alert has a final result;
4. checked: final results per ``alert_id`` on the results topic (each alert must be
   completed exactly once), duplicate cancels in the simulator's request log.

Figures: alerts/s for each N, and speed-up = alerts/s(N) ÷ alerts/s(1) from the
same run; alerts completed exactly once (goal: all). On a machine with few cores the
daemons, the broker and the simulator share them: the speed-up says how much of
the work the group really spreads, not what more machines would give.

    python -m bench scale_out [--alerts 10000] [--accounts 10] [--daemons 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench import harness

SYMBOL = "BTC_USDT"
PARTITIONS = 6


def _accounts(n: int) -> dict[str, tuple[str, bytes, bytes]]:
    """account id -> (api key, private PEM, public PEM)."""
    out = {}
    for i in range(n):
        pem, public = harness.new_key()
        out[f"acct-{i}"] = (f"bench-scale-{i}-{uuid.uuid4().hex[:8]}", pem, public)
    return out


async def _produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> float:
    """Produce (key, value) pairs as fast as possible; seconds taken."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        futures = [await producer.send(topic, value, key=key.encode()) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return loop.time() - started


async def _until_lag_zero(bootstrap: str, group: str, topic: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        # Polling with a deadline: the broker has no event to wait on.
        while await harness.group_lag(bootstrap, group, topic, PARTITIONS) > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def _measure(
    n_daemons: int,
    *,
    args: argparse.Namespace,
    bootstrap: str,
    sim: harness.Simulator,
    accounts: dict[str, tuple[str, bytes, bytes]],
    tmp: Path,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    topics = harness.topic_names(tag)
    group = f"bench.{tag}.group"
    await harness.create_topics(
        bootstrap,
        {name: PARTITIONS if role in ("alerts", "results") else 1 for role, name in topics.items()},
    )
    with sim.admin() as admin:
        admin.post("/_admin/reset", json={"clients": False}).raise_for_status()
        for api_key, _, _ in accounts.values():
            harness.seed(admin, api_key, SYMBOL, args.orders)
    keys = {a: (k, pem) for a, (k, pem, _) in accounts.items()}
    env = harness.daemon_env(bootstrap, topics, group, sim.base_url, keys)
    daemons = [
        harness.DaemonProcess(env, tmp / f"daemon-{n_daemons}-{i}.log") for i in range(n_daemons)
    ]
    loop = asyncio.get_running_loop()
    try:
        await harness.wait_group_stable(bootstrap, group, n_daemons, 90)
        async with harness.Results(bootstrap, topics["results"], PARTITIONS) as results:
            warm = [
                (a, harness.alert_bytes(f"warm-{tag}-{a}", a, symbols=[SYMBOL])) for a in accounts
            ]
            await _produce(bootstrap, topics["alerts"], warm)
            await results.wait_for({f"warm-{tag}-{a}" for a in accounts}, 90)
            log_start = _cancels(sim, 0)[1]
            with sim.admin() as admin:
                for api_key, _, _ in accounts.values():  # the storm has orders to cancel
                    harness.seed(admin, api_key, SYMBOL, args.orders)
            names = list(accounts)
            ids = [f"storm-{tag}-{i}" for i in range(args.alerts)]
            messages = [
                (
                    names[i % len(names)],
                    harness.alert_bytes(alert_id, names[i % len(names)], symbols=[SYMBOL]),
                )
                for i, alert_id in enumerate(ids)
            ]
            cpu0 = [harness.cpu_seconds(d.pid) for d in daemons]
            started = loop.time()
            produce_s = await _produce(bootstrap, topics["alerts"], messages)
            await _until_lag_zero(bootstrap, group, topics["alerts"], args.timeout)
            lag_zero_s = loop.time() - started
            cpu = [harness.cpu_seconds(d.pid) - c for d, c in zip(daemons, cpu0, strict=True)]
            await results.wait_for(set(ids), 60)
            all_final_s = loop.time() - started
            finals = {i: results.final.get(i, []) for i in ids}
        cancels, _ = _cancels(sim, log_start)
        exits = [d.stop() for d in daemons]
    finally:
        for d in daemons:
            d.stop()
    counts = Counter(len(v) for v in finals.values())
    statuses = Counter(s for v in finals.values() for s in v)
    return {
        "daemons": n_daemons,
        "alerts": args.alerts,
        "produce_s": round(produce_s, 3),
        "lag_zero_s": round(lag_zero_s, 3),
        "all_final_s": round(all_final_s, 3),
        "alerts_per_s": round(args.alerts / lag_zero_s, 1),
        "completed_once": counts.get(1, 0),
        "completed_more_than_once": sum(n for k, n in counts.items() if k > 1),
        "not_completed": counts.get(0, 0),
        "final_statuses": dict(statuses),
        "cancel_requests": sum(cancels.values()),
        "orders_cancelled": len(cancels),
        "duplicate_cancels": sum(c - 1 for c in cancels.values() if c > 1),
        "daemon_exit_codes": exits,
        "daemon_cpu_s": [round(c, 2) for c in cpu],
    }


def _cancels(sim: harness.Simulator, since: int) -> tuple[Counter[int], int]:
    """Single-order cancels per order id in the simulator's log after ``since``, and
    the last sequence number."""
    seen: Counter[int] = Counter()
    with sim.admin() as admin:
        while True:
            page = admin.get("/_admin/log", params={"since": since, "limit": 10_000}).json()
            for entry in page["entries"]:
                if entry["endpoint"] == "cancel" and entry["order_id"] is not None:
                    seen[entry["order_id"]] += 1
            if not page["entries"]:
                return seen, since
            since = page["entries"][-1]["seq"]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    accounts = _accounts(args.accounts)
    runs = []
    with (
        harness.kafka() as (bootstrap, broker),
        harness.temp_dir() as tmp,
        harness.Simulator("--log-max", "400000", pin_first_cpu=False) as sim,
    ):
        with sim.admin() as admin:
            for account, (api_key, _, public) in accounts.items():
                harness.register(admin, api_key, public, account)
        for n in args.daemons:
            runs.append(
                await _measure(
                    n, args=args, bootstrap=bootstrap, sim=sim, accounts=accounts, tmp=tmp
                )
            )
            _print(runs[-1], runs[0])
    return {"broker": broker, "runs": runs}


def _print(run: dict[str, Any], first: dict[str, Any]) -> None:
    n = run["daemons"]
    speedup = run["alerts_per_s"] / first["alerts_per_s"]
    harness.summary(
        f"scale_out {n}_daemons speedup",
        f"{speedup:.2f}x one daemon ({run['alerts_per_s']:.0f} alerts/s; lag 0 after "
        f"{run['lag_zero_s']:.1f} s for {run['alerts']} alerts over {PARTITIONS} partitions; "
        f"daemon CPU seconds {'+'.join(f'{c:.1f}' for c in run['daemon_cpu_s'])})",
    )
    once = run["completed_once"] == run["alerts"]
    harness.summary(
        f"scale_out {n}_daemons completed_once",
        f"{run['completed_once']}/{run['alerts']} alerts "
        f"({run['completed_more_than_once']} more than once, {run['not_completed']} never; "
        f"{run['duplicate_cancels']} duplicate cancels)",
        "all, 0 duplicate cancels",
        once and run["duplicate_cancels"] == 0,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; one line per figure; JSON in bench/results/scale_out.json."""
    parser = argparse.ArgumentParser(prog="python -m bench scale_out")
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--orders", type=int, default=50, help="open orders per account")
    parser.add_argument("--daemons", default="1,2,3")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per storm")
    args = parser.parse_args(argv or [])
    args.daemons = [int(n) for n in args.daemons.split(",")]
    result = asyncio.run(_run(args))
    result.update(
        {
            "alerts": args.alerts,
            "accounts": args.accounts,
            "orders_per_account": args.orders,
            "partitions": PARTITIONS,
        }
    )
    harness.write_result("scale_out", result, argv)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
