"""Failover: SIGKILL the daemon sweeping an account; how soon does the survivor cancel?

Two daemons (``python -m killswitch run``) share one consumer group on the embedded
broker (or ``KILLSWITCH_BENCH_BOOTSTRAP``) with the **example configuration's** Kafka
and intake settings (``config/killswitch.example.toml``: session timeout, heartbeat
interval, rebalance timeout, fetch wait, rebalance drain). The exchange simulator runs
in this process with one listener per daemon (``DoorServer``), so its request log says
which daemon sent each request. Each round:

1. ``--orders`` open orders are seeded for the account and one kill alert is produced
   (keyed by the account, so it goes to the daemon owning the account's partition);
   the engine cancels one order per request (``per_order``) at ``--rate`` requests/s,
   so the sweep lasts a few seconds;
2. once ``--cut-after`` cancels went out, the daemon sending them is SIGKILLed;
3. measured: from the SIGKILL to the survivor's first cancel for the account (the
   simulator's clock, in ms); then the alert must end with one final result and the
   account flat on the simulator's books;
4. the killed daemon is restarted (and the group settles with two members) before the
   next round.

Figures: the median (and each round's) time from SIGKILL to the survivor's first
cancel, next to the session timeout it is made of (goal: at most 5 s); double sweeps
(goal 0): rounds where both daemons sent sweep requests for the account in overlapping
windows (the survivor before the kill, or the killed one after the survivor began),
plus alerts with more than one final result other than ``duplicate`` (the results topic
read to its end offsets at the end).

    python -m bench failover [--rounds 5] [--orders 800] [--rate 100] [--cut-after 30]
                             [--session-ms MS --heartbeat-ms MS]  (compare other timeouts)

One line per figure on stdout; JSON in ``bench/results/failover.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench import harness
from killswitch.simulator import Simulator
from killswitch.simulator.testing import DoorServer, register_test_client

NAME = "failover"
ACCOUNT = "mm-1"
SYMBOL = "BTC_USDT"
PARTITIONS = 6  # alerts and manual, as the daemon creates them
GOAL_S = 5.0
EXAMPLE = harness.REPO / "config" / "killswitch.example.toml"
KAFKA_KEYS = (
    "session_timeout_ms",
    "heartbeat_interval_ms",
    "rebalance_timeout_ms",
    "fetch_max_wait_ms",
    "fetch_min_bytes",
    "max_poll_records",
    "request_timeout_ms",
)
CANCEL_ENDPOINTS = frozenset({"cancel", "cancel_batch", "cancel_all"})
PAGE_SIZE = 100  # the engine's listing page in this benchmark (set in daemon_env)
# Every wait has a deadline (seconds).
SWEEP_START_S = 60.0
FAILOVER_S = 60.0
FINISH_S = 120.0
GROUP_S = 90.0

T = TypeVar("T")


def example_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The example configuration's Kafka timing and intake sections (``--session-ms``
    and ``--heartbeat-ms`` override its group timeouts, for comparisons)."""
    data = tomllib.loads(EXAMPLE.read_text())
    kafka = {k: data["kafka"][k] for k in KAFKA_KEYS if k in data["kafka"]}
    if args.session_ms is not None:
        kafka["session_timeout_ms"] = args.session_ms
    if args.heartbeat_ms is not None:
        kafka["heartbeat_interval_ms"] = args.heartbeat_ms
    return {"kafka": kafka, "intake": data.get("intake", {}), "engine": data.get("engine", {})}


def daemon_env(
    args: argparse.Namespace,
    *,
    bootstrap: str,
    topics: dict[str, str],
    group: str,
    door: DoorServer,
    key: tuple[str, bytes],
    example: dict[str, Any],
) -> dict[str, str]:
    """One daemon's settings: the example's Kafka/intake/engine, this bench's topics,
    group and account (through ``door``), per-order cancels at ``--rate``."""
    engine = {
        **example["engine"],
        "strategy": "per_order",
        "default_deadline_s": 120.0,
        "page_size": PAGE_SIZE,
    }
    env = harness.daemon_env(
        bootstrap,
        topics,
        group,
        door.base_url,
        {ACCOUNT: key},
        account={"rate_limit_per_second": args.rate, "burst": 10, "max_concurrency": 8},
        engine=engine,
    )
    kafka = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "topics": topics,
        "client_id": f"bench-failover-{door.port}",
        **example["kafka"],
    }
    env["KILLSWITCH_KAFKA"] = json.dumps(kafka)
    env["KILLSWITCH_INTAKE"] = json.dumps(example["intake"])
    if args.log_dir is not None:
        env["KILLSWITCH_LOGGING"] = json.dumps({"level": "INFO", "format": "json"})
    return env


async def until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something (TimeoutError naming ``what``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.005)  # polling the simulator's log with a deadline


def _counts(entry: Any, cancels_only: bool, probe_pair: str) -> bool:
    """A single-order cancel; unless ``cancels_only`` also any cancel or a sweep listing
    (a page of the engine's size other than the daemon's exchange probe's, which lists
    the first page of the first pair, ``probe_pair``, of the engine's size too)."""
    if entry.endpoint == "cancel":
        return True
    if cancels_only:
        return False
    if entry.endpoint == "open_orders":
        probe = entry.query.startswith(probe_pair) and "from_order_id=" not in entry.query
        return f"limit={PAGE_SIZE}" in entry.query and not probe
    return entry.endpoint in CANCEL_ENDPOINTS


def sweep_entries(sim: Simulator, since: int, door: DoorServer, cancels_only: bool) -> list[Any]:
    """The account's requests through ``door`` after ``since`` that :func:`_counts`."""
    probe_pair = f"symbol={sim.symbols[0]}&" if sim.symbols else "\0"
    return [
        e
        for e in sim.log_since(since)
        if e.seq in door.seqs and e.client == ACCOUNT and _counts(e, cancels_only, probe_pair)
    ]


async def produce(bootstrap: str, topic: str, alert_id: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        value = harness.alert_bytes(alert_id, ACCOUNT, symbols=[SYMBOL])
        await producer.send_and_wait(topic, value, key=ACCOUNT.encode())
    finally:
        await producer.stop()


async def finals_to_end(bootstrap: str, topic: str, partitions: int) -> dict[str, list[str]]:
    """alert id -> statuses of its final results, the topic read to its end offsets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # "earliest": the default's own first reset can land after the seek (see harness.Results).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: dict[str, list[str]] = {}
        async with asyncio.timeout(60):
            while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        body = json.loads(record.value)
                        if body.get("final"):
                            out.setdefault(body["alert_id"], []).append(body["status"])
        return out
    finally:
        await consumer.stop()


class Cluster:
    """The two daemons, each behind its own door; a killed one can be replaced."""

    def __init__(self, envs: list[dict[str, str]], tmp: Path) -> None:
        self.envs = envs
        self.tmp = tmp
        self.started = 0
        self.daemons = [self._start(i) for i in range(len(envs))]

    def _start(self, index: int) -> harness.DaemonProcess:
        self.started += 1
        return harness.DaemonProcess(self.envs[index], self.tmp / f"daemon-{self.started}.log")

    def kill(self, index: int) -> None:
        proc = self.daemons[index].proc
        proc.kill()  # SIGKILL
        proc.wait(10)

    def restart(self, index: int) -> None:
        self.daemons[index].stop()  # reaps it and closes its log
        self.daemons[index] = self._start(index)

    def stop(self) -> list[int]:
        return [d.stop() for d in self.daemons]


async def one_round(
    n: int,
    *,
    args: argparse.Namespace,
    sim: Simulator,
    doors: list[DoorServer],
    cluster: Cluster,
    bootstrap: str,
    topics: dict[str, str],
    group: str,
    results: harness.Results,
    api_key: str,
) -> dict[str, Any]:
    alert_id = f"failover-{n}-{uuid.uuid4().hex[:6]}"
    sim.seed_orders(api_key, SYMBOL, args.orders)
    since = sim.last_seq
    await produce(bootstrap, topics["alerts"], alert_id)

    def sweeper() -> int | None:
        counts = [len(sweep_entries(sim, since, d, cancels_only=True)) for d in doors]
        best = max(range(len(doors)), key=lambda i: counts[i])
        return best if counts[best] >= args.cut_after else None

    victim = await until(sweeper, SWEEP_START_S, "the sweep's first cancels")
    survivor = 1 - victim
    kill_seq, kill_ms = sim.last_seq, sim.now_ms()
    cluster.kill(victim)

    def first_cancel() -> Any | None:
        after = sweep_entries(sim, kill_seq, doors[survivor], cancels_only=True)
        return after[0] if after else None

    first = await until(first_cancel, FAILOVER_S, "the survivor's first cancel")
    await results.wait_for({alert_id}, FINISH_S)
    await until(
        lambda: True if not sim.open_order_ids(api_key) else None, FINISH_S, "the account flat"
    )
    early = sweep_entries(sim, since, doors[survivor], cancels_only=False)
    late = sweep_entries(sim, first.seq, doors[victim], cancels_only=False)
    overlapped = any(e.seq <= kill_seq for e in early) or bool(late)
    cluster.restart(victim)
    await harness.wait_group_stable(bootstrap, group, 2, GROUP_S)
    seconds = (first.timestamp_ms - kill_ms) / 1000
    return {
        "alert_id": alert_id,
        "killed": victim,
        "cancels_before_kill": len(sweep_entries(sim, since, doors[victim], cancels_only=True)),
        "sigkill_to_first_cancel_s": round(seconds, 3),
        "overlap": overlapped,
        "final_statuses": results.final.get(alert_id, []),
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    example = example_settings(args)
    sim = Simulator(seed=args.seed, symbols=[SYMBOL])
    api_key, pem = register_test_client(sim, name=ACCOUNT)
    tag = uuid.uuid4().hex[:8]
    topics = harness.topic_names(tag)
    group = f"bench.{tag}.group"
    rounds: list[dict[str, Any]] = []
    with harness.kafka() as (bootstrap, broker), harness.temp_dir() as scratch:
        tmp = args.log_dir or scratch
        partitions = {
            name: PARTITIONS if role in ("alerts", "manual", "results") else 1
            for role, name in topics.items()
        }
        await harness.create_topics(bootstrap, partitions)
        async with contextlib.AsyncExitStack() as stack:
            doors = [DoorServer(sim), DoorServer(sim)]
            for door in doors:
                await stack.enter_async_context(door)
            envs = [
                daemon_env(
                    args,
                    bootstrap=bootstrap,
                    topics=topics,
                    group=group,
                    door=d,
                    key=(api_key, pem),
                    example=example,
                )
                for d in doors
            ]
            cluster = Cluster(envs, tmp)
            stack.callback(cluster.stop)
            await harness.wait_group_stable(bootstrap, group, 2, GROUP_S)
            results = await stack.enter_async_context(
                harness.Results(bootstrap, topics["results"], PARTITIONS)
            )
            for n in range(args.rounds):
                rounds.append(
                    await one_round(
                        n,
                        args=args,
                        sim=sim,
                        doors=doors,
                        cluster=cluster,
                        bootstrap=bootstrap,
                        topics=topics,
                        group=group,
                        results=results,
                        api_key=api_key,
                    )
                )
                print(f"{NAME} round {n + 1}: {json.dumps(rounds[-1])}", flush=True)
        finals = await finals_to_end(bootstrap, topics["results"], PARTITIONS)
    return summarise(args, example, rounds, finals, broker)


def summarise(
    args: argparse.Namespace,
    example: dict[str, Any],
    rounds: list[dict[str, Any]],
    finals: dict[str, list[str]],
    broker: str,
) -> dict[str, Any]:
    times = [r["sigkill_to_first_cancel_s"] for r in rounds]
    median = statistics.median(times)
    session_s = example["kafka"].get("session_timeout_ms", 10_000) / 1000
    harness.summary(
        f"{NAME} sigkill_to_first_cancel",
        f"median {median:.2f} s over {len(times)} rounds "
        f"({', '.join(f'{t:.2f}' for t in times)}; session timeout {session_s:g} s, "
        f"heartbeat {example['kafka'].get('heartbeat_interval_ms', 3000) / 1000:g} s)",
        f"<= {GOAL_S:g} s",
        median <= GOAL_S,
    )
    overlaps = sum(1 for r in rounds if r["overlap"])
    outcomes = [[s for s in finals.get(r["alert_id"], []) if s != "duplicate"] for r in rounds]
    repeated = sum(1 for statuses in outcomes if len(statuses) > 1)
    one_final = sum(1 for statuses in outcomes if statuses == ["flat"])
    harness.summary(
        f"{NAME} double_sweeps",
        f"{overlaps + repeated} ({overlaps} rounds with overlapping sweeps, {repeated} alerts "
        f"with more than one final result); {one_final}/{len(rounds)} alerts ended with one "
        "final result, flat",
        "0",
        overlaps + repeated == 0 and one_final == len(rounds),
    )
    return {
        "broker": broker,
        "rounds": rounds,
        "median_s": median,
        "goal_s": GOAL_S,
        "double_sweeps": overlaps + repeated,
        "one_final_flat": one_final,
        "example_kafka": example["kafka"],
        "example_intake": example["intake"],
        "orders": args.orders,
        "rate": args.rate,
        "cut_after": args.cut_after,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; one line per figure; JSON in bench/results/failover.json."""
    parser = argparse.ArgumentParser(prog="python -m bench failover")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--orders", type=int, default=800, help="open orders per round")
    parser.add_argument("--rate", type=float, default=100.0, help="the account's requests/s")
    parser.add_argument("--cut-after", type=int, default=30, help="cancels before the SIGKILL")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--session-ms", type=int, default=None, help="instead of the example's")
    parser.add_argument("--heartbeat-ms", type=int, default=None, help="instead of the example's")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="keep the daemons' logs (INFO) here"
    )
    args = parser.parse_args(argv or [])
    result = asyncio.run(_run(args))
    harness.write_result(NAME, result, argv)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
