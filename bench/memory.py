"""Peak memory while killing an account with 100,000 open orders.

The exchange simulator runs in its own process (its books and closed orders take
memory that is not ours to count), unthrottled. The kill runs in a dedicated process
of its own: the real ``ExchangeClient`` and ``Engine``, warmed up first (clock sync,
exchange info, a small kill on another pair) as a running daemon would be. Then:

- baseline = that process's resident set (``VmRSS``) just before the kill;
- the kernel's high-water mark is reset (``/proc/self/clear_refs`` ``5``), the kill
  runs (list every pair, cancel every order, verify), and the peak = ``VmHWM`` after
  it (cross-checked by sampling ``VmRSS`` every 20 ms during the kill).

Figures: peak RSS in MB (goal <= 150), and peak ÷ baseline (what the kill itself adds).

    python -m bench memory [--orders 100000] [--symbols 20] [--strategy per_order]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import time
from pathlib import Path
from typing import Any

from bench import harness

API_KEY = "bench-mem-key"
ACCOUNT = "bench-mem"
WARM_SYMBOL = "SOL_USDT"
GOAL_MB = 150.0


def _status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run_kill(
    base_url: str, pem: bytes, strategy: str, inflight: int, orders: int
) -> dict[str, Any]:
    """In the dedicated process: warm up, measure RSS, kill the account, measure again."""
    from datetime import UTC, datetime

    from killswitch.config import EngineSettings
    from killswitch.core.model import KillRequest, Scope, SweepResult
    from killswitch.engine import Engine
    from killswitch.exchange.client import ExchangeClient
    from killswitch.simulator.testing import account_settings

    async def no_progress(_: SweepResult) -> None:
        pass

    def kill(alert_id: str, scope: Scope) -> KillRequest:
        return KillRequest(alert_id, ACCOUNT, scope, datetime.now(UTC), deadline_s=600.0)

    async def sample(peak: list[int], stop: asyncio.Event) -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _status_kb("VmRSS"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    await stop.wait()

    async def main() -> dict[str, Any]:
        settings = account_settings(
            base_url,
            API_KEY,
            pem,
            ACCOUNT,
            rate_limit_per_second=100_000,
            burst=1_000,
            max_concurrency=inflight,
        )
        engine_settings = EngineSettings(strategy=strategy, default_deadline_s=600.0)
        async with ExchangeClient(settings) as client:
            await client.sync_clock()
            async with Engine(
                {ACCOUNT: client}, engine_settings.engine_config(), concurrency=inflight
            ) as engine:
                warm = await engine.submit(
                    kill("warm", Scope(symbols=frozenset({WARM_SYMBOL}))), no_progress
                )
                baseline_kb = _status_kb("VmRSS")
                reset = _reset_peak()
                sampled = [baseline_kb]
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample(sampled, stop))
                started = time.perf_counter()
                result = await engine.submit(kill("measured", Scope()), no_progress)
                seconds = time.perf_counter() - started
                stop.set()
                await sampler
                hwm_kb = _status_kb("VmHWM")
                after_kb = _status_kb("VmRSS")
                await engine.close(5.0)
        return {
            "baseline_rss_kb": baseline_kb,
            "peak_hwm_kb": hwm_kb if reset else None,
            "peak_sampled_kb": sampled[0],
            "after_rss_kb": after_kb,
            "hwm_reset": reset,
            "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "seconds": seconds,
            "status": result.status.value,
            "resolved": result.counts.resolved,
            "sent": result.counts.sent,
            "sweeps": result.sweeps,
            "warm_resolved": warm.counts.resolved,
        }

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; one line per figure; JSON in bench/results/memory.json."""
    parser = argparse.ArgumentParser(prog="python -m bench memory")
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument(
        "--strategy", default="per_order", choices=("auto", "per_order", "batch", "symbol")
    )
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds for the kill")
    args = parser.parse_args(argv or [])
    from killswitch.simulator.model import DEFAULT_SYMBOLS

    symbols = [s for s in DEFAULT_SYMBOLS if s != WARM_SYMBOL][: args.symbols]
    pem, public = harness.new_key()
    with harness.Simulator("--log-max", "1000") as sim:
        with sim.admin(timeout=120.0) as admin:
            harness.register(admin, API_KEY, public, ACCOUNT)
            harness.seed(admin, API_KEY, WARM_SYMBOL, 200)
            per, extra = divmod(args.orders, len(symbols))
            for i, symbol in enumerate(symbols):
                harness.seed(admin, API_KEY, symbol, per + (1 if i < extra else 0))
        measured = harness.in_child(
            run_kill,
            sim.base_url,
            pem,
            args.strategy,
            args.inflight,
            args.orders,
            timeout=args.timeout,
            cpu=harness.cpus()[-1],
        )
        with sim.admin() as admin:
            measured["open_after"] = harness.open_count(admin, API_KEY)
    # VmHWM is updated lazily by the kernel; the 20 ms samples can see a little more.
    peak_kb = max(measured["peak_hwm_kb"] or 0, measured["peak_sampled_kb"])
    peak_mb = peak_kb / 1024
    base_mb = measured["baseline_rss_kb"] / 1024
    harness.summary(
        "memory peak_rss",
        f"{peak_mb:.1f} MB killing {measured['resolved']:,} orders "
        f"({measured['status']}, {measured['seconds']:.1f} s, {measured['open_after']} open after)",
        f"<= {GOAL_MB:.0f} MB",
        peak_mb <= GOAL_MB,
    )
    per_order = (peak_kb - measured["baseline_rss_kb"]) * 1024 / max(1, measured["resolved"])
    harness.summary(
        "memory peak_over_baseline",
        f"{peak_kb / measured['baseline_rss_kb']:.2f}x the RSS before the kill "
        f"({base_mb:.1f} MB; the kill adds {peak_mb - base_mb:.1f} MB, "
        f"{per_order:.0f} B/order)",
    )
    result = {
        "orders": args.orders,
        "symbols": len(symbols),
        "strategy": args.strategy,
        "inflight": args.inflight,
        "peak_rss_mb": round(peak_mb, 1),
        "baseline_rss_mb": round(base_mb, 1),
        "ratio_peak_over_baseline": round(peak_kb / measured["baseline_rss_kb"], 3),
        "goal_mb": GOAL_MB,
        "measured": measured,
        "simulator": "separate process, unthrottled",
    }
    harness.write_result("memory", result, argv)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
