"""Alert latency: from producing an alert to the first cancel request on the wire.

The daemon runs as ``python -m killswitch run`` in its own process against the
Kafka under test (the embedded broker, or ``KILLSWITCH_BENCH_BOOTSTRAP``) and an
exchange simulator served from this process, whose request handler is wrapped to
stamp each cancel's arrival with this process's ``perf_counter`` (the producer's
clock: both ends of the measurement are here).

Per alert: seed one open order, produce a kill for its account (scope: the order's
pair), time until the simulator receives the first cancel that covers that order (a
DELETE of the order, or of its pair: the cancel-all ``DELETE order/open?symbol=``),
then wait for the final result before the next one (no coalescing). The daemon's
default (``cancel_named_pairs_first``) sends the named pair's cancel-all before any
listing; the pipeline lists the pair and cancels the order it finds.

Baseline, same run, same fetch settings, in blocks interleaved with the daemon's
(``--blocks``): a bare pipeline in its own spawned process, an aiokafka consumer
polled as the daemon polls (``getmany``; ``--pipeline-poll getone`` for one record
per call) that on each record lists the pair's open orders and cancels the first one
with aiohttp (both signed with ``killswitch.exchange.signing``), with its own API key
and topic; its DELETE is stamped by the same simulator probe. Goal: the daemon's p50
alert -> first cancel <= the bare pipeline's p50 (p99 of both reported).

Also reported, no goal: the overhead over a bare aiokafka consumer's
produce-to-consume latency (that consumer in its own process, and in this one),
one signed listing's round trip from a bare aiohttp client, and a breakdown from
the daemon's own result timestamps (produce -> received, received -> first cancel
sent, sent -> on the wire; millisecond resolution). Note: the embedded
broker answers fetches only at the end of ``fetch_max_wait_ms``, so both
distributions carry up to that much jitter; percentiles are compared, not pairs.

``--trace`` runs the daemon under ``bench/daemon_trace.py`` and prints the p50 of each
step of the path most alerts took (poll, parse, plan, engine start, then the pair's
cancel-all written; or, listing first, the listing written and read and the order's
DELETE written), its poll -> DELETE beside the pipeline's record -> DELETE, and how often
a new connection, clock sync or pair-list fetch fell inside an alert's window.

    python -m bench alert_latency [--alerts 400] [--blocks 4] [--transport http1]
        [--pipeline-poll getmany|getone] [--trace]

The alert storm (throughput, kills behind a storm) is ``python -m bench storm``.

One line per figure on stdout; JSON in ``bench/results/alert_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import harness
from killswitch.core.times import format_time
from killswitch.procs import die_with_parent
from killswitch.simulator import Simulator, SimulatorServer
from killswitch.simulator.core import Request
from killswitch.simulator.testing import register_test_client

RESULTS = Path(__file__).parent / "results" / "alert_latency.json"
REPO = Path(__file__).resolve().parents[1]
CANCEL_PATH = "/coin/internal/v1/order"
OPEN_PATH = "/coin/internal/v1/order/open"
SYMBOL = "BTC_USDT"
WARMUP = 10
FETCH_MAX_WAIT_MS = 10
# The daemon's poll when it has nothing waiting (killswitch/kafka/consumer.py): getmany
# with this timeout, which returns as soon as a fetch brings records.
DAEMON_POLL_MS = 100
_RNG = random.Random(42)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_percentile(values, 0.50) * 1000, 3),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(values) * 1000, 3) if values else float("nan"),
        "n": len(values),
    }


class CancelProbe:
    """Wraps the simulator's handler: arrival time of the first cancel per order, which
    is a DELETE of the order or a cancel-all of its pair by the order's owner."""

    def __init__(self, sim: Simulator) -> None:
        self.first: dict[int, float] = {}
        self.waiters: dict[int, asyncio.Event] = {}
        self.pairs: dict[tuple[str, str], set[int]] = {}  # (API key, pair): expected ids
        inner = sim.handle

        def handle(request: Request) -> Any:
            if request.method == "DELETE" and request.path == CANCEL_PATH:
                order_id = _param(request.query, "order_id")
                if order_id is not None and order_id.isdigit():
                    self._arrived(int(order_id), time.perf_counter())
            elif request.method == "DELETE" and request.path == OPEN_PATH:
                stamp = time.perf_counter()
                symbol = _param(request.query, "symbol") or ""
                for expected in self.pairs.pop((request.api_key or "", symbol), set()):
                    self._arrived(expected, stamp)
            return inner(request)

        sim.handle = handle  # type: ignore[method-assign]

    def _arrived(self, order_id: int, stamp: float) -> None:
        if order_id in self.first:
            return
        self.first[order_id] = stamp
        event = self.waiters.get(order_id)
        if event is not None:
            event.set()

    def expect(self, order_id: int, api_key: str, symbol: str) -> asyncio.Event:
        """Wait for the first cancel of ``order_id`` (owned by ``api_key``, on ``symbol``)."""
        event = asyncio.Event()
        self.waiters[order_id] = event
        self.pairs.setdefault((api_key, symbol), set()).add(order_id)
        return event


def _param(query: str, name: str) -> str | None:
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return None


def _daemon_env(
    bootstrap: str,
    topics: dict[str, str],
    group: str,
    base_url: str,
    keys: dict[str, Any],
    *,
    transport: str | None = None,
) -> dict[str, str]:
    """The daemon's settings as KILLSWITCH_* variables (JSON per section)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    kafka = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "topics": topics,
    }
    accounts = [
        {
            "id": account,
            "api_key": api_key,
            "private_key": pem.decode(),
            "base_url": base_url,
            "rate_limit_per_second": 2000.0,
            "burst": 100,
            "max_concurrency": 8,
        }
        for account, (api_key, pem) in keys.items()
    ]
    env["KILLSWITCH_KAFKA"] = json.dumps(kafka)
    env["KILLSWITCH_ACCOUNTS"] = json.dumps(accounts)
    # Metrics on, as in production, on any free port.
    env["KILLSWITCH_METRICS"] = json.dumps({"enabled": True, "host": "127.0.0.1", "port": 0})
    engine: dict[str, Any] = {"progress_interval_s": 5.0}
    if transport is not None:
        engine["http_transport"] = transport
    env["KILLSWITCH_ENGINE"] = json.dumps(engine)
    env["KILLSWITCH_LOGGING"] = json.dumps({"level": "WARNING"})
    return env


async def _create_topics(bootstrap: str, topics: dict[str, str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, partitions if role == "alerts" else 1, 1)
                for role, name in topics.items()
            ]
        )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def _consumer(bootstrap: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        fetch_min_bytes=1,
    )
    await consumer.start()
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [0])
        ]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        yield consumer
    finally:
        await consumer.stop()


async def baseline(bootstrap: str, topic: str, n: int) -> list[float]:
    """Bare aiokafka: produce one message, time until a consumer (same fetch settings) has it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    out: list[float] = []
    try:
        async with _consumer(bootstrap, topic) as consumer:
            for i in range(n + WARMUP):
                await _random_phase()
                start = time.perf_counter()
                await producer.send_and_wait(topic, str(i).encode(), key=b"k")
                record = await consumer.getone()
                if i >= WARMUP:
                    out.append(time.perf_counter() - start)
                assert record.value == str(i).encode()
    finally:
        await producer.stop()
    return out


def _bare_consumer_child(bootstrap: str, topic: str, conn: Any) -> None:
    """In a child process: a bare aiokafka consumer (same fetch settings) that sends
    back, per record, the moment it had it. ``perf_counter`` is CLOCK_MONOTONIC on
    Linux, one clock for every process, so the parent can subtract its own stamps."""
    die_with_parent()

    async def main() -> None:
        async with _consumer(bootstrap, topic) as consumer:
            for tp in consumer.assignment():
                await consumer.position(tp)  # resolve "end" before saying ready
            conn.send("ready")
            while True:
                record = await consumer.getone()
                stamp = time.perf_counter()
                if record.value == b"stop":
                    return
                conn.send((record.value, stamp))

    try:
        asyncio.run(main())
    finally:
        conn.close()


async def baseline_process(bootstrap: str, topic: str, n: int) -> list[float]:
    """Bare aiokafka in its own process, like the daemon: produce one message, time
    until that consumer has it. A consumer in the producer's process (:func:`baseline`)
    is awake already when the record comes (it just sent the produce); the daemon is
    not, and on a shared machine waking an idle process costs a millisecond or more."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_bare_consumer_child, args=(bootstrap, topic, child), daemon=True)
    proc.start()
    child.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    out: list[float] = []
    try:
        if await harness.recv(parent, 60) != "ready":
            raise RuntimeError("baseline consumer did not start")
        for i in range(n + WARMUP):
            await _random_phase()
            start = time.perf_counter()
            await producer.send_and_wait(topic, str(i).encode(), key=b"k")
            value, stamp = await harness.recv(parent, 30)
            if value != str(i).encode():
                raise RuntimeError(f"baseline consumer read {value!r}, expected {i}")
            if i >= WARMUP:
                out.append(stamp - start)
        await producer.send_and_wait(topic, b"stop", key=b"k")
    finally:
        await producer.stop()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        parent.close()
    return out


def _bare_pipeline_child(
    bootstrap: str, topic: str, account: tuple[str, str, bytes], poll: str, conn: Any
) -> None:
    """In a child process: the least a kill switch can do on a record. A bare aiokafka
    consumer (same fetch settings, and by default the daemon's poll: ``getmany`` with
    its idle timeout, taking every record fetched) that, on each record, lists the
    pair's open orders and cancels the first one with aiohttp, both signed with the
    project's helpers (any client must sign), then sends back what it cancelled and the
    answer's status. The DELETE's arrival is stamped by the simulator, as the daemon's
    is. ``poll`` = ``getone`` reads one record per call instead: aiokafka then asks the
    broker for more only at the next call, after the kill, where ``getmany`` (like the
    daemon) has the next fetch on its way while it lists and cancels."""
    die_with_parent()
    import aiohttp

    from killswitch.exchange.signing import Signer, load_private_key, signing_payload

    base_url, api_key, pem = account
    signer = Signer(load_private_key(pem))

    def headers(method: str, path: str, query: str) -> dict[str, str]:
        stamp = str(int(time.time() * 1000))
        signature = signer.sign(signing_payload(stamp, method, path, query, b""))
        return {"X-API-KEY": api_key, "X-TIMESTAMP": stamp, "X-SIGNATURE": signature}

    async def kill(session: aiohttp.ClientSession) -> tuple[int, int, float]:
        query = f"symbol={SYMBOL}&limit=100"
        url = f"{base_url}{OPEN_PATH}?{query}"
        async with session.get(url, headers=headers("GET", OPEN_PATH, query)) as response:
            orders = await response.json()
        order_id = int(orders[0]["order_id"])
        query = f"order_id={order_id}&symbol={SYMBOL}"
        url = f"{base_url}{CANCEL_PATH}?{query}"
        cancelling = time.perf_counter()
        async with session.delete(url, headers=headers("DELETE", CANCEL_PATH, query)) as response:
            await response.read()
            return order_id, response.status, cancelling

    async def main() -> None:
        async with aiohttp.ClientSession() as session, _consumer(bootstrap, topic) as consumer:
            for tp in consumer.assignment():
                await consumer.position(tp)  # resolve "end" before saying ready
            conn.send("ready")
            while True:
                if poll == "getone":
                    records = [await consumer.getone()]
                else:
                    batch = await consumer.getmany(timeout_ms=DAEMON_POLL_MS)
                    records = [record for part in batch.values() for record in part]
                got = time.perf_counter()
                for record in records:
                    if record.value == b"stop":
                        return
                    conn.send((record.value, got, *await kill(session)))

    try:
        asyncio.run(main())
    finally:
        conn.close()


class BarePipeline:
    """The bare pipeline (:func:`_bare_pipeline_child`) in its own spawned process,
    with its own API key on the simulator (no daemon acts for it) and its own topic.
    Per alert, like :func:`daemon_latency`: seed one order, produce a record, time until
    the simulator receives the DELETE for that order, wait for the pipeline's answer."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        base_url: str,
        api_key: str,
        pem: bytes,
        *,
        poll: str = "getmany",
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.api_key = api_key
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_bare_pipeline_child,
            args=(bootstrap, topic, (base_url, api_key, pem), poll, child),
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)

    async def __aenter__(self) -> BarePipeline:
        try:
            await self.producer.start()
            ready = await harness.recv(self.conn, 60)
        except BaseException:
            await self.__aexit__()
            raise
        if ready != "ready":
            await self.__aexit__()
            raise RuntimeError("bare pipeline did not start")
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.proc.is_alive():
                with contextlib.suppress(Exception):
                    await self.producer.send_and_wait(self.topic, b"stop", key=b"k")
        finally:
            await self.producer.stop()
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
            self.conn.close()

    async def measure(
        self,
        sim: Simulator,
        probe: CancelProbe,
        n: int,
        legs: dict[str, list[float]] | None = None,
    ) -> list[float]:
        """Per alert, produce -> the DELETE at the simulator; ``legs`` (when given) gets
        produce -> record in hand (``record``) and record -> DELETE call (``to_cancel``),
        stamped in the pipeline's process."""
        out: list[float] = []
        for i in range(n + WARMUP):
            (order_id,) = sim.seed_orders(self.api_key, SYMBOL, 1)
            arrived = probe.expect(order_id, self.api_key, SYMBOL)
            value = str(i).encode()
            await _random_phase()
            start = time.perf_counter()
            await self.producer.send_and_wait(self.topic, value, key=b"k")
            async with asyncio.timeout(30):
                await arrived.wait()
            answer = await harness.recv(self.conn, 30)
            if answer[:1] + answer[2:4] != (value, order_id, 200):
                raise RuntimeError(f"bare pipeline answered {answer!r} for order {order_id}")
            if i >= WARMUP:
                out.append(probe.first[order_id] - start)
                if legs is not None:
                    got, cancelling = answer[1], answer[4]
                    legs.setdefault("record", []).append(got - start)
                    legs.setdefault("to_cancel", []).append(cancelling - got)
                    legs.setdefault("to_wire", []).append(probe.first[order_id] - got)
        return out


async def _random_phase() -> None:
    """Produce at a random point of the consumer's fetch cycle (both phases alike):
    otherwise the baseline produces right after a fetch returned, which the
    broker answers at once, and looks faster than a consumer that has been idle."""
    await asyncio.sleep(_RNG.uniform(0, 2 * FETCH_MAX_WAIT_MS / 1000))


def _alert(alert_id: str, account: str) -> bytes:
    body = {
        "schema": "killswitch.alert/v1",
        "alert_id": alert_id,
        "action": "kill",
        "source": "bench",
        "reason": "bench",
        "scope": {"accounts": [account], "symbols": [SYMBOL]},
        "created_at": format_time(datetime.now(UTC)),
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def _wait_final(
    results: AIOKafkaConsumer, alert_ids: set[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """The final result of each alert id (TimeoutError when one does not come)."""
    found: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while alert_ids:
            batch = await results.getmany(timeout_ms=100)
            for records in batch.values():
                for rec in records:
                    body = json.loads(rec.value)
                    if body.get("final"):
                        alert_ids.discard(body["alert_id"])
                        found[body["alert_id"]] = body
    return found


def _epoch(text: str | None) -> float:
    """Seconds since the epoch of a result timestamp (ms resolution); NaN when absent."""
    if not text:
        return float("nan")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Breakdown:
    """Where one alert's latency went, from the daemon's own result timestamps
    (wall clock, milliseconds): produce -> received (Kafka and intake), received ->
    first cancel sent (engine: listing the pair, picking the order), sent -> on the
    wire at the simulator."""

    def __init__(self) -> None:
        self.consume: list[float] = []
        self.engine: list[float] = []
        self.wire: list[float] = []

    def add(self, produced_wall: float, arrived_wall: float, body: dict[str, Any]) -> None:
        received = _epoch(body.get("received_at"))
        first = _epoch(body.get("first_cancel_at"))
        self.consume.append(received - produced_wall)
        self.engine.append(first - received)
        self.wire.append(arrived_wall - first)

    def figures(self) -> dict[str, dict[str, float]]:
        return {"consume": _ms(self.consume), "engine": _ms(self.engine), "wire": _ms(self.wire)}


async def daemon_latency(
    bootstrap: str,
    topics: dict[str, str],
    *,
    sim: Simulator,
    probe: CancelProbe,
    api_key: str,
    n: int,
    breakdown: Breakdown | None = None,
    prefix: str = "lat",
    windows: list[tuple[float, float]] | None = None,
) -> list[float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    out: list[float] = []
    wall_offset = time.time() - time.perf_counter()  # perf_counter -> epoch seconds
    try:
        async with _consumer(bootstrap, topics["results"]) as results:
            parts = list(results.assignment())
            for i in range(n + WARMUP):
                (order_id,) = sim.seed_orders(api_key, SYMBOL, 1)
                arrived = probe.expect(order_id, api_key, SYMBOL)
                alert_id = f"{prefix}-{i}"
                # The simulator serves the measured requests from this process: no fetch
                # loop of ours runs beside it meanwhile (the pipeline's blocks have none;
                # its answer comes through a pipe).
                results.pause(*parts)
                await _random_phase()
                start = time.perf_counter()
                await producer.send_and_wait(
                    topics["alerts"], _alert(alert_id, "acct-0"), key=b"acct-0"
                )
                async with asyncio.timeout(30):
                    await arrived.wait()
                results.resume(*parts)
                final = await _wait_final(results, {alert_id}, 30)
                if i >= WARMUP:
                    out.append(probe.first[order_id] - start)
                    if windows is not None:
                        windows.append((start, probe.first[order_id]))
                    if breakdown is not None:
                        breakdown.add(
                            start + wall_offset,
                            probe.first[order_id] + wall_offset,
                            final[alert_id],
                        )
    finally:
        await producer.stop()
    return out


async def _measure(
    args: argparse.Namespace,
    bootstrap: str,
    topics: dict[str, str],
    *,
    sim: Simulator,
    probe: CancelProbe,
    keys: dict[str, Any],
    pipeline_key: tuple[str, bytes],
    sim_url: str,
    windows: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    # Interleaved blocks: a noisy neighbour hits the baselines and the daemon alike.
    base: list[float] = []
    base_in_process: list[float] = []
    pipe: list[float] = []
    pipe_legs: dict[str, list[float]] = {}
    lat: list[float] = []
    breakdown = Breakdown()
    per_block = max(1, args.alerts // args.blocks)
    async with BarePipeline(
        bootstrap, topics["bare_pipeline"], sim_url, *pipeline_key, poll=args.pipeline_poll
    ) as bare:
        for block in range(args.blocks):
            base += await baseline_process(bootstrap, topics["baseline"], per_block)
            base_in_process += await baseline(bootstrap, topics["baseline_in_process"], per_block)
            pipe += await bare.measure(sim, probe, per_block, pipe_legs)
            lat += await daemon_latency(
                bootstrap,
                topics,
                sim=sim,
                probe=probe,
                api_key=keys["acct-0"][0],
                n=per_block,
                breakdown=breakdown,
                prefix=f"lat{block}",
                windows=windows,
            )
    api_key, pem = keys["acct-0"]
    loop = asyncio.get_running_loop()
    listing = (
        await loop.run_in_executor(
            None,
            lambda: harness.in_child(listing_round_trip, sim_url, api_key, pem, args.alerts),
        )
    )["seconds"]
    result["baseline"] = {**_ms(base), "consumer": "own process"}
    result["baseline_in_process"] = {**_ms(base_in_process), "consumer": "producer's process"}
    result["listing_round_trip"] = _ms(listing)
    result["bare_pipeline"] = {
        **_ms(pipe),
        "pipeline": "own process: aiokafka consumer, signed listing and DELETE on aiohttp",
        "poll": args.pipeline_poll,
        "legs": {leg: _ms(values) for leg, values in pipe_legs.items()},
    }
    result["alert_to_first_cancel"] = _ms(lat)
    result["vs_bare_pipeline"] = {
        q: round(result["alert_to_first_cancel"][q] - result["bare_pipeline"][q], 3)
        for q in ("p50_ms", "p99_ms")
    }
    result["vs_bare_pipeline"]["goal"] = "daemon p50 <= bare pipeline p50"
    result["breakdown"] = breakdown.figures()
    for key, against in (("overhead", "baseline"), ("overhead_in_process", "baseline_in_process")):
        result[key] = {
            q: round(result["alert_to_first_cancel"][q] - result[against][q], 3)
            for q in ("p50_ms", "p99_ms")
        }
    _print_latency(result)
    return result


def listing_round_trip(base_url: str, api_key: str, pem: bytes, n: int) -> dict[str, Any]:
    """In a child process: a signed open-orders listing from a bare aiohttp client, n
    times, to the simulator in the parent (the daemon's listing crosses processes too).
    The round trip the daemon must make before its first cancel: it has to find the order."""
    import aiohttp

    from killswitch.simulator.testing import signed_headers

    path, query = "/coin/internal/v1/order/open", f"symbol={SYMBOL}&limit=100"

    async def main() -> list[float]:
        out: list[float] = []
        async with aiohttp.ClientSession() as session:
            for i in range(n + WARMUP):
                await _random_phase()  # an idle client, like the daemon's between alerts
                start = time.perf_counter()
                headers = signed_headers(api_key, pem, "GET", path, query=query)
                async with session.get(f"{base_url}{path}?{query}", headers=headers) as response:
                    await response.read()
                if i >= WARMUP:
                    out.append(time.perf_counter() - start)
        return out

    return {"seconds": asyncio.run(main())}


def _print_latency(result: dict[str, Any]) -> None:
    lat, base, over = result["alert_to_first_cancel"], result["baseline"], result["overhead"]
    pipe = result["bare_pipeline"]
    parts = result["breakdown"]
    harness.summary(
        "alert_latency vs_bare_pipeline_p50",
        f"daemon {lat['p50_ms']:.2f} ms, bare pipeline {pipe['p50_ms']:.2f} ms (alert to "
        "first cancel on the wire; the pipeline an aiokafka consumer that lists and cancels "
        f"with aiohttp in its own process, interleaved; n={lat['n']} / {pipe['n']})",
        "daemon p50 <= bare pipeline p50",
        lat["p50_ms"] <= pipe["p50_ms"],
    )
    legs = pipe["legs"]
    harness.summary(
        "alert_latency bare_pipeline_legs_p50",
        f"produce->record in hand {legs['record']['p50_ms']:.2f} ms, record->DELETE called "
        f"{legs['to_cancel']['p50_ms']:.2f} ms, record->DELETE at the simulator "
        f"{legs['to_wire']['p50_ms']:.2f} ms (the pipeline's own perf_counter stamps)",
    )
    harness.summary(
        "alert_latency vs_bare_pipeline_p99",
        f"daemon {lat['p99_ms']:.2f} ms, bare pipeline {pipe['p99_ms']:.2f} ms",
    )
    for q in ("p50", "p99"):
        harness.summary(
            f"alert_latency overhead_{q}",
            f"{over[q + '_ms']:.2f} ms (alert to first cancel {lat[q + '_ms']:.2f} ms minus "
            f"a bare aiokafka consumer's produce-to-consume {base[q + '_ms']:.2f} ms, the "
            f"consumer in its own process like the daemon, n={lat['n']})",
        )
    inproc, over_inproc = result["baseline_in_process"], result["overhead_in_process"]
    harness.summary(
        "alert_latency overhead_vs_in_process_consumer",
        f"p50 {over_inproc['p50_ms']:.2f} ms, p99 {over_inproc['p99_ms']:.2f} ms (against a "
        f"bare consumer in the producer's own, already awake process: "
        f"{inproc['p50_ms']:.2f} / {inproc['p99_ms']:.2f} ms)",
    )
    listing = result["listing_round_trip"]["p50_ms"]
    harness.summary(
        "alert_latency overhead_p50_beyond_listing",
        f"{over['p50_ms'] - listing:.2f} ms (the overhead minus one signed listing round trip "
        f"from a bare aiohttp client in another process, {listing:.2f} ms p50, which the "
        "daemon needs to find the order)",
    )
    harness.summary(
        "alert_latency breakdown_p50",
        f"produce->received {parts['consume']['p50_ms']:.1f} ms, received->first cancel sent "
        f"{parts['engine']['p50_ms']:.1f} ms, sent->on the wire {parts['wire']['p50_ms']:.1f} ms "
        "(daemon's own timestamps, ms resolution)",
    )


# The daemon's path, stamped by bench/daemon_trace.py (``--trace``): (label, stamp name),
# each the first such stamp after the step before. "fetched" and "polled" are the
# last before the record is taken up (other readers fetch and poll too).
_TRACE_INTAKE = (
    ("aiokafka fetch answered", "fetched"),
    ("poll returned", "polled"),
    ("record taken up", "take_up"),
    ("parsed and checked", "parsed"),
    ("planned (dedup, scope, pairs)", "planned"),
    ("engine start entered", "engine_start"),
    ("engine start returned", "engine_started"),
    ("sweep task running", "sweep_task"),
)
# The pair's cancel-all first (engine.cancel_named_pairs_first, the default).
TRACE_STEPS_CANCEL_ALL = (
    *_TRACE_INTAKE,
    ("worker running", "worker"),
    ("cancel_all called", "cancel_all_call"),
    ("cancel-all signing", "sign"),
    ("cancel-all signed", "signed"),
    ("cancel-all bytes built", "request_bytes"),
    ("cancel-all written", "write DELETE"),
)
# Listing first (the setting off, or a daemon before it): list, then cancel the order.
TRACE_STEPS = (
    *_TRACE_INTAKE,
    ("listing signing", "sign"),
    ("listing signed", "signed"),
    ("listing bytes built", "request_bytes"),
    ("listing written", "write GET"),
    ("listing answer bytes in", "data_received"),
    ("listing answer read", "answered"),
    ("page parsed", "page_parsed"),
    ("order queued", "queued"),
    ("worker running", "worker"),
    ("cancel_order called", "cancel_call"),
    ("cancel signing", "sign"),
    ("cancel signed", "signed"),
    ("cancel bytes built", "request_bytes"),
    ("cancel written", "write DELETE"),
)
_BEFORE_TAKE_UP = {"fetched", "polled"}
# Stamps of work a warm daemon does not do between an alert and its first cancel.
_COLD_PATH = ("connect", "clock_sync", "pairs_fetch")


def _trace_path(
    events: list[tuple[str, float]], start: float, arrived: float
) -> tuple[tuple[str, str], ...]:
    """The steps of the path an alert took: cancel-all first when one was called before
    the first cancel arrived, else listing first."""
    pair_first = any(n == "cancel_all_call" and start <= t <= arrived for n, t in events)
    return TRACE_STEPS_CANCEL_ALL if pair_first else TRACE_STEPS


def _trace_alert(
    events: list[tuple[str, float]],
    start: float,
    arrived: float,
    steps: tuple[tuple[str, str], ...] = TRACE_STEPS,
) -> list[float] | None:
    """One alert's stamps in ``steps`` order (None when one is missing)."""
    window = [(name, t) for name, t in events if start <= t <= arrived + 0.005]
    take_up = next((t for name, t in window if name == "take_up"), None)
    if take_up is None:
        return None
    stamps: list[float] = []
    at = start
    for _, want in steps:
        if want in _BEFORE_TAKE_UP:
            found = [t for name, t in window if name == want and at <= t <= take_up]
            t = found[-1] if found else None
        else:
            t = next((t for name, t in window if name == want and t >= at), None)
        if t is None:
            return None
        stamps.append(t)
        at = t
    return stamps


def trace_figures(
    events: list[tuple[str, float]], windows: list[tuple[float, float]]
) -> dict[str, Any]:
    """Per step: p50 of its time since the step before (µs) and since the produce (ms),
    over the alerts that took the most common path (cancel-all first or listing first)."""
    paths = [_trace_path(events, start, arrived) for start, arrived in windows]
    path = max((TRACE_STEPS_CANCEL_ALL, TRACE_STEPS), key=paths.count)
    alerts = [
        (start, arrived, stamps)
        for (start, arrived), taken in zip(windows, paths, strict=True)
        if taken == path and (stamps := _trace_alert(events, start, arrived, path)) is not None
    ]
    steps: list[dict[str, Any]] = []
    labels = [("produce", None), *path, ("DELETE at the simulator", None)]
    for i, (label, _) in enumerate(labels):
        if i == 0:
            continue
        since_start = []
        delta = []
        for start, arrived, stamps in alerts:
            points = [start, *stamps, arrived]
            since_start.append(points[i] - start)
            delta.append(points[i] - points[i - 1])
        steps.append(
            {
                "step": label,
                "p50_us_since_previous": round(_percentile(delta, 0.5) * 1e6, 1),
                "p50_ms_since_produce": round(_percentile(since_start, 0.5) * 1e3, 3),
            }
        )
    polled = [arrived - stamps[1] for _, arrived, stamps in alerts]  # TRACE_STEPS[1]: polled
    cold = dict.fromkeys(_COLD_PATH, 0)
    for name, t in events:
        if name in cold and any(start <= t <= arrived for start, arrived in windows):
            cold[name] += 1
    return {
        "path": "cancel-all first" if path == TRACE_STEPS_CANCEL_ALL else "listing first",
        "alerts_on_path": paths.count(path),
        "alerts_traced": len(alerts),
        "alerts": len(windows),
        "steps": steps,
        "poll_to_wire": _ms(polled),
        "cold_path_in_windows": cold,
    }


def _print_trace(trace: dict[str, Any]) -> None:
    print(
        f"alert_latency trace ({trace['path']}, {trace['alerts_on_path']} of "
        f"{trace['alerts']} alerts): p50 per step of {trace['alerts_traced']} traced "
        "(µs since the step before; ms since the produce)"
    )
    for step in trace["steps"]:
        print(
            f"  {step['step']:<32} {step['p50_us_since_previous']:>9.1f} µs"
            f"  {step['p50_ms_since_produce']:>7.3f} ms"
        )
    harness.summary(
        "alert_latency trace poll_to_wire_p50",
        f"{trace['poll_to_wire']['p50_ms']:.2f} ms (the daemon's poll returned -> its DELETE "
        "at the simulator, traced; compare the pipeline's record -> DELETE at the simulator)",
    )
    cold = ", ".join(f"{name} {count}" for name, count in trace["cold_path_in_windows"].items())
    harness.summary(
        "alert_latency trace cold_path",
        f"{cold} (new connections, clock syncs, pair-list fetches between a produce and its "
        "DELETE, all alerts)",
    )


async def _run(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    topics = {
        role: f"bench.{role}.{tag}"
        for role in ("alerts", "manual", "heartbeats", "results", "state", "dlq")
    }
    group = f"bench.{tag}"
    await _create_topics(bootstrap, topics, args.partitions)
    baseline_topic = {
        "baseline": f"bench.baseline.{tag}",
        "baseline_in_process": f"bench.baseline-in-process.{tag}",
        "bare_pipeline": f"bench.bare-pipeline.{tag}",
    }
    await _create_topics(bootstrap, baseline_topic, 1)

    sim = Simulator(seed=1)
    keys = {f"acct-{i}": register_test_client(sim, name=f"acct-{i}") for i in range(args.accounts)}
    # The bare pipeline's own key: no daemon acts for it.
    pipeline_key = register_test_client(sim, name="bare-pipeline")
    probe = CancelProbe(sim)
    result: dict[str, Any] = {}
    windows: list[tuple[float, float]] | None = [] if args.trace else None
    async with SimulatorServer(sim) as server:
        with tempfile.TemporaryDirectory() as tmp:
            log = (Path(tmp) / "daemon.log").open("wb")
            trace_path = Path(tmp) / "trace.json"
            command = ["-m", "bench.daemon_trace", str(trace_path)] if args.trace else []
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *(command or ["-m", "killswitch"]),
                "run",
                cwd=REPO,
                env=_daemon_env(
                    bootstrap, topics, group, server.base_url, keys, transport=args.transport
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,
            )
            try:
                result.update(
                    await _measure(
                        args,
                        bootstrap,
                        {**topics, **baseline_topic},
                        sim=sim,
                        probe=probe,
                        keys=keys,
                        pipeline_key=pipeline_key,
                        sim_url=server.base_url,
                        windows=windows,
                    )
                )
            finally:
                proc.terminate()
                try:
                    async with asyncio.timeout(60):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                log.close()
                result["daemon_exit_code"] = proc.returncode
            if windows is not None:
                events = json.loads(trace_path.read_text()) if trace_path.exists() else []
                result["trace"] = trace_figures([(n, t) for n, t in events], windows)
                raw = RESULTS.with_name("alert_latency_trace.json")
                raw.parent.mkdir(parents=True, exist_ok=True)
                raw.write_text(json.dumps({"events": events, "windows": windows}))
                _print_trace(result["trace"])
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print one line per figure, write the JSON result."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=400, help="measured alerts (after warm-up)")
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4, help="alerts topic partitions")
    parser.add_argument("--blocks", type=int, default=4, help="interleaved baseline/daemon blocks")
    parser.add_argument(
        "--transport",
        choices=["http1"],
        default=None,
        help="the daemon's exchange client transport (engine.http_transport; default: "
        "the daemon's own default)",
    )
    parser.add_argument(
        "--pipeline-poll",
        choices=["getmany", "getone"],
        default="getmany",
        help="the bare pipeline's poll: getmany as the daemon polls (default), or getone, "
        "which sends the next fetch only after the kill",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the daemon under bench/daemon_trace.py and print where each alert's "
        "time went, step by step (the stamps cost a little themselves)",
    )
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    with harness.kafka() as (bootstrap, broker):
        result = asyncio.run(_run(args, bootstrap))
    result.update({"broker": broker, "fetch_max_wait_ms": FETCH_MAX_WAIT_MS})
    harness.write_result("alert_latency", result, sys.argv[1:] if argv is None else argv)
    return result


if __name__ == "__main__":
    main()
