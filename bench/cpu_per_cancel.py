"""CPU seconds per cancel: the kill switch against a bare aiohttp loop, unthrottled.

The exchange simulator runs in its own process (``killswitch simulate-exchange``,
pinned to the first CPU, no rate limit). Each variant runs in a fresh process of its
own (pinned to the second CPU) and measures its own CPU time with
``time.process_time()`` (user + system, all threads) around the measured part only:

- ``bare-aiohttp``  (the baseline) one ``aiohttp.ClientSession``, 16 workers, each
  signing and sending one cancel DELETE per order and reading the answer. The least
  a correct client can do: the signature is part of every request.
- ``httpx-16``      the naive peer: the same loop on ``httpx.AsyncClient`` (its own
  pool), 16 in flight.
- ``client``        ``ExchangeClient.cancel_order`` at 16 in flight: signing,
  limiter, retries, outcome, observer; no engine.
- ``engine``        what the daemon does for a kill: ``Engine.submit`` on an account
  with N open orders (list, cancel every order with its own DELETE, list again to
  verify) with the real ``ExchangeClient`` (16 workers, limiter ceiling far above the
  simulator's speed), strategy ``per_order``: the default, ``auto``, would cancel the
  pair with one cancel-all and leave no per-order DELETE to measure. CPU per cancel
  counts the listing and the verification too.
- ``daemon``        the whole daemon (``python -m killswitch run``, its own process,
  ``engine.strategy`` = ``per_order`` for the same reason) killing the same account on
  an alert from Kafka (embedded broker, fetch wait 10 ms);
  its CPU from /proc from just before the alert is produced until its final result
  is read back. Includes the Kafka consumer's idle fetch loop (reported separately
  as CPU seconds per second while idle).

Each variant runs ``--rounds`` times, interleaved (a noisy neighbour hits all alike);
the figure is the median. Ratio = variant CPU/request ÷ bare-aiohttp CPU/request
(goal for ``engine`` and ``daemon`` <= 1.0; ``httpx-16`` is reported as the naive peer).

    python -m bench cpu_per_cancel [--orders 5000] [--rounds 3] [--inflight 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

from bench import harness

API_KEY = "bench-cpu-key"
ACCOUNT = "bench-cpu"
SYMBOL = "BTC_USDT"
WARM_SYMBOL = "ETH_USDT"
VARIANTS = ("bare-aiohttp", "httpx-16", "client", "engine", "daemon")
GOAL_ENGINE = 1.0


# -- the measured processes (top-level functions: they run in spawned children) ----------


def _signer(pem: bytes) -> Any:
    from killswitch.exchange.signing import Signer, load_private_key

    return Signer(load_private_key(pem))


def _headers(signer: Any, query: str) -> dict[str, str]:
    """The three auth headers of one cancel, fresh timestamp and signature."""
    from killswitch.exchange.signing import signing_payload

    stamp = str(int(time.time() * 1000))
    payload = signing_payload(stamp, "DELETE", "/coin/internal/v1/order", query, b"")
    return {"X-API-KEY": API_KEY, "X-TIMESTAMP": stamp, "X-SIGNATURE": signer.sign(payload)}


async def _drive(send: Any, ids: list[int], inflight: int) -> int:
    """One request per id with ``inflight`` workers; the count of 2xx answers."""
    it = iter(ids)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for order_id in it:
            if await send(order_id):
                ok += 1

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return ok


def _measured(ok: int, requests: int, cpu: float, wall: float) -> dict[str, Any]:
    return {
        "requests": requests,
        "cancels": ok,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_per_request_us": cpu / max(1, requests) * 1e6,
        "cpu_per_cancel_us": cpu / max(1, ok) * 1e6,
        "rps": requests / wall if wall else 0.0,
    }


def run_bare_aiohttp(
    base_url: str, pem: bytes, warm: list[int], ids: list[int], inflight: int
) -> dict[str, Any]:
    """The baseline: aiohttp, signed DELETEs, nothing else."""
    import aiohttp

    signer = _signer(pem)
    url = base_url + "/coin/internal/v1/order"

    async def main() -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=inflight)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def send(order_id: int) -> bool:
                query = f"order_id={order_id}&symbol={SYMBOL}"
                headers = _headers(signer, query)
                async with session.delete(f"{url}?{query}", headers=headers) as response:
                    await response.read()
                    return response.status < 300

            await _drive(send, warm, inflight)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ok = await _drive(send, ids, inflight)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        return _measured(ok, len(ids), cpu, wall)

    return asyncio.run(main())


def run_httpx(
    base_url: str, pem: bytes, warm: list[int], ids: list[int], inflight: int
) -> dict[str, Any]:
    """The naive peer: the same loop on httpx's own pool."""
    import httpx

    signer = _signer(pem)

    async def main() -> dict[str, Any]:
        limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
        async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:

            async def send(order_id: int) -> bool:
                query = f"order_id={order_id}&symbol={SYMBOL}"
                response = await client.delete(
                    f"/coin/internal/v1/order?{query}", headers=_headers(signer, query)
                )
                return response.status_code < 300

            await _drive(send, warm, inflight)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ok = await _drive(send, ids, inflight)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        return _measured(ok, len(ids), cpu, wall)

    return asyncio.run(main())


def _account(base_url: str, pem: bytes, inflight: int) -> Any:
    from killswitch.simulator.testing import account_settings

    return account_settings(
        base_url,
        API_KEY,
        pem,
        ACCOUNT,
        rate_limit_per_second=100_000,
        burst=1_000,
        max_concurrency=inflight,
    )


def run_client(
    base_url: str, pem: bytes, warm: list[int], ids: list[int], inflight: int
) -> dict[str, Any]:
    """``ExchangeClient.cancel_order`` at ``inflight``: the client without the engine."""
    from killswitch.core.outcomes import Outcome
    from killswitch.exchange.client import ExchangeClient

    async def main() -> dict[str, Any]:
        async with ExchangeClient(_account(base_url, pem, inflight)) as client:
            await client.sync_clock()

            async def send(order_id: int) -> bool:
                result = await client.cancel_order(order_id, SYMBOL)
                return result.outcome is Outcome.SENT

            await _drive(send, warm, inflight)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ok = await _drive(send, ids, inflight)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        return _measured(ok, len(ids), cpu, wall)

    return asyncio.run(main())


def run_engine(
    base_url: str, pem: bytes, warm: list[int], ids: list[int], inflight: int
) -> dict[str, Any]:
    """A kill through ``Engine.submit``: list, cancel every order, verify flat."""
    from datetime import UTC, datetime

    from killswitch.config import EngineSettings
    from killswitch.core.model import KillRequest, Scope, SweepResult
    from killswitch.engine import Engine
    from killswitch.exchange.client import ExchangeClient

    async def no_progress(_: SweepResult) -> None:
        pass

    def kill(alert_id: str, symbol: str) -> KillRequest:
        return KillRequest(
            alert_id=alert_id,
            account=ACCOUNT,
            scope=Scope(symbols=frozenset({symbol})),
            received_at=datetime.now(UTC),
            deadline_s=120.0,
        )

    async def main() -> dict[str, Any]:
        async with ExchangeClient(_account(base_url, pem, inflight)) as client:
            await client.sync_clock()
            # per_order: the figure is CPU per DELETE (the default, auto, would cancel
            # the pair with one cancel-all and leave nothing per order to measure).
            settings = EngineSettings(strategy="per_order")
            async with Engine(
                {ACCOUNT: client}, settings.engine_config(), concurrency=inflight
            ) as engine:
                await engine.submit(kill("warm", WARM_SYMBOL), no_progress)
                wall0, cpu0 = time.perf_counter(), time.process_time()
                result = await engine.submit(kill("measured", SYMBOL), no_progress)
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                await engine.close(5.0)
        measured = _measured(result.counts.sent, len(ids), cpu, wall)
        measured["status"] = result.status.value
        measured["sweeps"] = result.sweeps
        return measured

    return asyncio.run(main())


async def _daemon_round(
    sim: harness.Simulator, bootstrap: str, pem: bytes, ids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """One kill by a daemon process on an alert; its CPU seconds from /proc."""
    from aiokafka import AIOKafkaProducer

    tag = f"cpu{time.monotonic_ns()}"
    topics = harness.topic_names(tag)
    group = f"bench.{tag}.group"
    await harness.create_topics(bootstrap, dict.fromkeys(topics.values(), 1))
    env = harness.daemon_env(
        bootstrap,
        topics,
        group,
        sim.base_url,
        {ACCOUNT: (API_KEY, pem)},
        account={
            "rate_limit_per_second": 100_000,
            "burst": 1_000,
            "max_concurrency": args.inflight,
        },
        # One DELETE per order, like the engine variant (auto would send one cancel-all).
        engine={"strategy": "per_order"},
    )
    daemon = harness.DaemonProcess(env, args.tmp / f"daemon-{tag}.log")
    harness.pin(daemon.pid, {harness.cpus()[-1]})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        await harness.wait_group_stable(bootstrap, group, 1, 90)
        async with harness.Results(bootstrap, topics["results"], 1) as results:
            alert = harness.alert_bytes(f"warm-{tag}", ACCOUNT, symbols=[WARM_SYMBOL])
            await producer.send_and_wait(topics["alerts"], alert, key=ACCOUNT.encode())
            await results.wait_for({f"warm-{tag}"}, 60)
            idle0, idle_t0 = harness.cpu_seconds(daemon.pid), time.perf_counter()
            await asyncio.sleep(1.0)  # idle: what the consumer's fetch loop costs alone
            idle_cpu = harness.cpu_seconds(daemon.pid) - idle0
            idle_s = time.perf_counter() - idle_t0
            cpu0, wall0 = harness.cpu_seconds(daemon.pid), time.perf_counter()
            alert = harness.alert_bytes(f"kill-{tag}", ACCOUNT, symbols=[SYMBOL])
            await producer.send_and_wait(topics["alerts"], alert, key=ACCOUNT.encode())
            await results.wait_for({f"kill-{tag}"}, 120)
            cpu, wall = harness.cpu_seconds(daemon.pid) - cpu0, time.perf_counter() - wall0
            final = results.last(f"kill-{tag}")
            assert final is not None  # wait_for returned: its final result was read
    finally:
        await producer.stop()
        daemon.stop()
    measured = _measured(final["counts"]["sent"], len(ids), cpu, wall)
    measured["status"] = final["status"]
    measured["idle_cpu_per_s"] = idle_cpu / idle_s
    # The idle polling is a cost per second, not per cancel: over a kill made slower by
    # a busy machine (the simulator shares it) it weighs more per cancel. Shown beside.
    busy_cpu = max(0.0, cpu - measured["idle_cpu_per_s"] * wall)
    measured["cpu_per_cancel_less_idle_us"] = busy_cpu / max(1, measured["cancels"]) * 1e6
    return measured


RUNNERS = {
    "bare-aiohttp": run_bare_aiohttp,
    "httpx-16": run_httpx,
    "client": run_client,
    "engine": run_engine,
}


# -- the run ------------------------------------------------------------------------------


def _one(sim: harness.Simulator, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fresh books, seed, run one variant in its own process; its measurement."""
    with sim.admin() as admin:
        admin.post("/_admin/reset", json={"clients": False}).raise_for_status()
        warm = harness.seed(admin, API_KEY, WARM_SYMBOL, args.warmup)
        ids = harness.seed(admin, API_KEY, SYMBOL, args.orders)
    if name == "daemon":
        result = asyncio.run(
            asyncio.wait_for(_daemon_round(sim, args.bootstrap, args.pem, ids, args), 300)
        )
    else:
        if name == "engine":
            warm = []  # the engine kills the warm-up pair itself
        result = harness.in_child(
            RUNNERS[name],
            sim.base_url,
            args.pem,
            warm,
            ids,
            args.inflight,
            timeout=180,
            cpu=harness.cpus()[-1],
        )
    # The engine's measured kill also issues listings; count cancels the exchange took.
    if name in ("engine", "daemon"):
        with sim.admin() as admin:
            result["open_after"] = harness.open_count(admin, API_KEY)
            counters = admin.get("/_admin/counters").json()["counters"].get(ACCOUNT, {})
        result["listing_requests"] = sum(counters.get("open_orders", {}).values())
        result["cancel_requests"] = sum(counters.get("cancel", {}).values())
    return result


def _median(runs: list[dict[str, Any]], field: str) -> float:
    return float(statistics.median(r[field] for r in runs))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; one line per figure; JSON in bench/results/cpu_per_cancel.json."""
    parser = argparse.ArgumentParser(prog="python -m bench cpu_per_cancel")
    parser.add_argument("--orders", type=int, default=5000, help="cancels per measurement")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv or [])
    names = [v for v in args.variants.split(",") if v]
    if "bare-aiohttp" not in names:
        names.insert(0, "bare-aiohttp")  # the baseline is always measured in the same run
    pem, public = harness.new_key()
    args.pem = pem
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        args.bootstrap, broker = (
            stack.enter_context(harness.kafka()) if "daemon" in names else ("", "")
        )
        args.tmp = stack.enter_context(harness.temp_dir())
        sim = stack.enter_context(harness.Simulator("--log-max", "1000"))
        with sim.admin() as admin:
            harness.register(admin, API_KEY, public, ACCOUNT)
        for round_no in range(args.rounds):
            for name in names:
                measured = _one(sim, name, args)
                measured["round"] = round_no
                runs[name].append(measured)
    base = _median(runs["bare-aiohttp"], "cpu_per_request_us")
    figures: dict[str, Any] = {}
    for name in names:
        per = _median(runs[name], "cpu_per_cancel_us")
        ratio = per / base
        figures[name] = {
            "cpu_per_cancel_us": round(per, 1),
            "ratio_vs_bare_aiohttp": round(ratio, 3),
            "rps_median": round(_median(runs[name], "rps"), 1),
        }
        goal = f"<= {GOAL_ENGINE:.1f}" if name in ("engine", "daemon") else None
        ok = ratio <= GOAL_ENGINE if goal else None
        label = {"httpx-16": "naive peer", "bare-aiohttp": "baseline"}.get(name, "")
        if goal:
            # The figure is per DELETE: a kill that cancelled in bulk is not comparable.
            # (The round's count includes the warm-up kill's DELETEs.)
            deletes = min(r["cancel_requests"] for r in runs[name])
            figures[name]["cancel_requests_min"] = deletes
            ok = ok and deletes >= args.orders
            label = f"at least {deletes} DELETEs per round, warm-up included"
        if name == "daemon":
            idle = _median(runs[name], "idle_cpu_per_s")
            figures[name]["idle_cpu_s_per_s"] = round(idle, 4)
            label += f", includes Kafka polling, idle {idle * 1000:.0f} ms CPU per second"
        harness.summary(
            f"cpu_per_cancel {name}",
            f"{ratio:.2f}x bare aiohttp ({per:.0f} us CPU per cancel, "
            f"{figures[name]['rps_median']:.0f} req/s{', ' + label if label else ''})",
            goal,
            ok,
        )
        if name == "daemon":
            less = _median(runs[name], "cpu_per_cancel_less_idle_us")
            figures[name]["less_idle_ratio"] = round(less / base, 3)
            harness.summary(
                "cpu_per_cancel daemon_less_idle",
                f"{less / base:.2f}x bare aiohttp ({less:.0f} us CPU per cancel without the "
                f"idle Kafka polling over the kill's wall time; "
                f"{_median(runs[name], 'wall_s'):.1f} s per kill)",
            )
    result = {
        "orders": args.orders,
        "rounds": args.rounds,
        "inflight": args.inflight,
        "baseline": "bare-aiohttp",
        "figures": figures,
        "runs": runs,
        "simulator": "separate process, unthrottled, pinned to the first CPU",
        "broker": broker,
    }
    harness.write_result("cpu_per_cancel", result, argv)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
