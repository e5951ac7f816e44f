"""Time to flat: how close a kill gets to what the exchange's rate limit allows.

The exchange simulator runs as ``killswitch simulate-exchange`` in its own process
(pinned to one core); the daemon's real pieces run here: the ``ExchangeClient``
(limiter, retries) and the ``Engine`` (resolve, cancel, verify), warmed up first (clock
sync, pair list, a pooled connection) as a running daemon's would be. Every kill names no
symbol: the engine reads the pair list and sweeps every pair.

Baselines, from the same run (no timed constant anywhere):

- **fewest requests** = what the API allows at best for the strategy: listing pages
  (``n // page_size + 1`` per pair, the last page short) + the cancels (one cancel-all per
  pair for ``auto``, one DELETE per order for ``per_order``) + one verifying listing page
  per pair. ``ideal = fewest / limit``. A strategy that needs fewer requests than that
  (``auto`` need not list a whole pair before cancelling it) scores above 1.
- **accepted requests** (older figures): the signed requests the exchange accepted for
  the work the engine chose, over the limit.

Scenarios and goals (orders / pairs, exchange limit, what the exchange does):

- ``default``: default engine settings (``auto``), 2,000 / 20, 100/s token bucket;
  goal ideal / actual >= 0.5. ``default:per_order`` beside it, same exchange.
- ``default+window``: as ``default``, and 3 s in which the exchange answers 429 (with
  ``Retry-After``) to everything, starting after 50 requests; goal time to flat
  <= 3 s + 1.5 x ideal, 0 failed.
- ``per_order+window``: ``per_order``, 800 / 8, 150/s, the same 3 s window; same goal.
- ``sliding``: ``per_order``, 1,000 / 10, a 60/s sliding-window limit; goal >= 0.8.
- ``per_order``, ``batch``, ``symbol``: 2,000 / 20 at 500/s; accepted-request ideal /
  actual >= 0.95 and 429s <= 1%. ``per_order@2x``: the client's ceiling at twice the
  exchange's limit (the limiter must learn it from 429s); >= 0.8.

    .venv/bin/python -m bench.time_to_flat [--only NAME[,NAME]] [--concurrency 8]

One line per figure on stdout; JSON in ``bench/results/time_to_flat.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import harness
from killswitch.config import EngineSettings
from killswitch.core.model import KillRequest, Scope, SweepResult, SweepStatus
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClient
from killswitch.simulator.model import DEFAULT_SYMBOLS
from killswitch.simulator.testing import account_settings

RESULTS = Path(__file__).parent / "results" / "time_to_flat.json"
API_KEY = "bench-ttf-key"
ACCOUNT = "bench"
SERVER_BURST = 20
CLIENT_BURST = 10
SIGNED = ("open_orders", "cancel", "cancel_batch", "cancel_all", "get_order")
CANCELS = ("cancel", "cancel_batch", "cancel_all")
WINDOW_S = 3.0  # how long the throttle window refuses requests
WINDOW = {"after_requests": 50, "duration_s": WINDOW_S, "retry_after": "seconds"}


@dataclass(frozen=True)
class Scenario:
    """One measured kill: the exchange's shape and the engine's strategy."""

    name: str
    strategy: str | None  # None: the engine's default settings
    orders: int
    pairs: int
    limit: float
    goal: str  # "ratio", "window", "accepted" or "beside" (no goal of its own)
    target: float
    ceiling: float | None = None  # the client's configured rate; None: the exchange limit
    exchange: dict[str, Any] = field(default_factory=dict)  # PUT /_admin/exchange body


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("default", None, 2000, 20, 100.0, "ratio", 0.5),
    Scenario("default:per_order", "per_order", 2000, 20, 100.0, "beside", 0.0),
    Scenario(
        "default+window", None, 2000, 20, 100.0, "window", 1.5, exchange={"throttle_window": WINDOW}
    ),
    Scenario(
        "per_order+window",
        "per_order",
        800,
        8,
        150.0,
        "window",
        1.5,
        exchange={"throttle_window": WINDOW},
    ),
    Scenario(
        "sliding",
        "per_order",
        1000,
        10,
        60.0,
        "ratio",
        0.8,
        exchange={"rate_limit_kind": "sliding_window", "sliding_window_s": 1.0},
    ),
    Scenario("per_order", "per_order", 2000, 20, 500.0, "accepted", 0.95),
    Scenario("batch", "batch", 2000, 20, 500.0, "accepted", 0.95),
    Scenario("symbol", "symbol", 2000, 20, 500.0, "accepted", 0.95),
    Scenario("per_order@2x", "per_order", 2000, 20, 500.0, "accepted", 0.8, ceiling=1000.0),
)
# Every knob this benchmark may set, and its "off" value, sent before each scenario.
EXCHANGE_OFF: dict[str, Any] = {
    "throttle_window": None,
    "rate_limit_kind": "token_bucket",
    "sliding_window_s": 1.0,
}


def fewest_requests(strategy: str, orders: int, pairs: int, page_size: int) -> int:
    """The fewest requests the API allows for a whole-account kill (module docstring)."""
    per_pair = orders // pairs
    listing = pairs * (per_pair // page_size + 1)
    cancels = pairs if strategy == "auto" else orders
    return listing + cancels + pairs


@dataclass
class Run:
    """One measured kill."""

    name: str
    strategy: str
    orders: int
    pairs: int
    limit: float
    ceiling: float
    status: str
    seconds: float
    requests: int  # signed requests the exchange accepted (not 429)
    cancel_requests: int
    listing_requests: int
    throttled: int  # 429 answers
    fewest: int
    ideal_s: float  # fewest / limit
    ratio: float  # ideal / actual
    accepted_ideal_s: float  # accepted requests / limit
    accepted_ratio: float
    throttled_share: float
    sweeps: int
    resolved: int
    failed: int
    open_after: int
    goal: str
    ok: bool

    def print_figures(self) -> None:
        """One line per figure, with its goal."""
        baseline = (
            f"accepted-ideal {self.accepted_ideal_s:.3f} s"
            if self.goal.startswith(">= ") and "accepted" in self.goal
            else f"fewest {self.fewest} -> ideal {self.ideal_s:.3f} s"
        )
        what = (
            f"{self.seconds:.3f} s, {self.requests} requests accepted ({self.cancel_requests} "
            f"cancel + {self.listing_requests} listing), {self.throttled} answered 429, "
            f"{baseline}; status {self.status}, {self.failed} failed, {self.open_after} open after"
        )
        if self.goal.startswith("<="):
            value = f"{self.seconds:.3f} s ({what})"
        elif self.name in ("per_order", "batch", "symbol", "per_order@2x"):
            value = f"{self.accepted_ratio:.3f} ({what})"
        else:
            value = f"{self.ratio:.3f} ({what})"
        harness.summary(f"time_to_flat {self.name}", value, self.goal, self.ok)


async def _admin_ok(response: Any) -> Any:
    response.raise_for_status()
    return response.json()


async def _prepare(admin: httpx.AsyncClient, s: Scenario, symbols: list[str]) -> None:
    """Fresh books and counters, the scenario's limit and knobs, orders on every pair."""
    await _admin_ok(await admin.post("/_admin/reset", json={}))
    await _admin_ok(await admin.put("/_admin/exchange", json=EXCHANGE_OFF))
    limits = {"api_key": API_KEY, "rate_limit_per_second": s.limit, "burst": SERVER_BURST}
    await _admin_ok(await admin.put("/_admin/limits", json=limits))
    for symbol in symbols:
        body = {"api_key": API_KEY, "symbol": symbol, "count": s.orders // s.pairs}
        await _admin_ok(await admin.post("/_admin/orders", json=body))


async def _counters(admin: httpx.AsyncClient) -> dict[str, dict[str, int]]:
    data = (await admin.get("/_admin/counters")).json()["counters"]
    merged: dict[str, dict[str, int]] = {}
    for per_client in data.values():
        for endpoint, statuses in per_client.items():
            for status, n in statuses.items():
                merged.setdefault(endpoint, {})
                merged[endpoint][status] = merged[endpoint].get(status, 0) + n
    return merged


async def _open_after(admin: httpx.AsyncClient) -> int:
    answer = await admin.post("/_admin/orders/open", json={"api_key": API_KEY})
    return int(answer.json()["count"])


async def _kill(
    client: ExchangeClient, settings: EngineSettings, name: str, workers: int
) -> tuple[SweepResult, float]:
    request = KillRequest(
        alert_id=f"bench-{name}",
        account=ACCOUNT,
        scope=Scope(),
        received_at=datetime.now(UTC),
        deadline_s=120.0,
    )

    async def no_progress(result: SweepResult) -> None:
        pass

    async with Engine({ACCOUNT: client}, settings.engine_config(), concurrency=workers) as engine:
        start = time.perf_counter()
        try:
            result = await engine.submit(request, no_progress)
        finally:
            seconds = time.perf_counter() - start
            await engine.close(5.0)
    return result, seconds


async def _one(
    s: Scenario, *, base_url: str, pem: bytes, admin: httpx.AsyncClient, workers: int
) -> Run:
    symbols = list(DEFAULT_SYMBOLS[: s.pairs])
    await _prepare(admin, s, symbols)
    ceiling = s.ceiling or s.limit
    account = account_settings(
        base_url,
        API_KEY,
        pem,
        ACCOUNT,
        rate_limit_per_second=ceiling,
        burst=CLIENT_BURST,
        max_concurrency=workers,
    )
    settings = EngineSettings(default_deadline_s=120.0)
    if s.strategy is not None:
        settings = settings.model_copy(update={"strategy": s.strategy})
    async with ExchangeClient(account) as client:
        await client.sync_clock()  # warm: clock, pair list, a pooled connection
        await client.exchange_info()
        if s.exchange:  # set last: a throttle window counts the kill's requests only
            await _admin_ok(await admin.put("/_admin/exchange", json=s.exchange))
        # The scenarios before this one left garbage in this process: a collection
        # during a fifth-of-a-second kill would be timed as the kill's.
        gc.collect()
        result, seconds = await _kill(client, settings, s.name, workers)
    counters = await _counters(admin)
    accepted = {
        ep: sum(n for st, n in counters.get(ep, {}).items() if st != "429") for ep in SIGNED
    }
    throttled = sum(counters.get(ep, {}).get("429", 0) for ep in SIGNED)
    cancel_requests = sum(accepted[ep] for ep in CANCELS)
    listing = accepted["open_orders"] + accepted["get_order"]
    requests = cancel_requests + listing
    fewest = fewest_requests(settings.strategy, s.orders, s.pairs, settings.page_size)
    ideal = fewest / s.limit
    accepted_ideal = requests / s.limit
    failed = result.counts.failed
    flat = result.status is SweepStatus.FLAT
    if s.goal == "window":
        bound = WINDOW_S + s.target * ideal
        goal, ok = f"<= {bound:.2f} s (3 s + {s.target} x ideal), 0 failed", seconds <= bound
        ok = ok and failed == 0
    elif s.goal == "beside":  # no goal of its own: what per_order costs next to auto
        goal, ok = "none (beside default)", True
    elif s.goal == "ratio":
        goal, ok = f">= {s.target} ideal/actual", ideal / seconds >= s.target
    else:
        goal = f">= {s.target} accepted-ideal/actual, 429s <= 1%"
        ok = accepted_ideal / seconds >= s.target and throttled <= 0.01 * (requests + throttled)
    return Run(
        name=s.name,
        strategy=settings.strategy,
        orders=s.orders,
        pairs=s.pairs,
        limit=s.limit,
        ceiling=ceiling,
        status=result.status.value,
        seconds=round(seconds, 4),
        requests=requests,
        cancel_requests=cancel_requests,
        listing_requests=listing,
        throttled=throttled,
        fewest=fewest,
        ideal_s=round(ideal, 4),
        ratio=round(ideal / seconds, 4),
        accepted_ideal_s=round(accepted_ideal, 4),
        accepted_ratio=round(accepted_ideal / seconds, 4),
        throttled_share=round(throttled / max(1, requests + throttled), 4),
        sweeps=result.sweeps,
        resolved=result.counts.resolved,
        failed=failed,
        open_after=await _open_after(admin),
        goal=goal,
        ok=ok and flat,
    )


async def _run(args: argparse.Namespace) -> list[Run]:
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    pairs = max(s.pairs for s in chosen)
    runs: list[Run] = []
    with harness.temp_dir() as tmp:
        private_pem, public_pem = harness.new_key()
        pub = tmp / "bench.pub.pem"
        pub.write_bytes(public_pem)
        symbols = ",".join(DEFAULT_SYMBOLS[:pairs])
        sim_args = ("--client", f"{API_KEY}={pub}", "--symbols", symbols, "--log-max", "1000")
        with harness.Simulator(*sim_args) as sim:
            cpus = harness.cpus()
            harness.pin(os.getpid(), set(cpus[1:]) or set(cpus))  # the simulator has cpus[0]
            async with httpx.AsyncClient(base_url=sim.base_url, timeout=30.0) as admin:
                for scenario in chosen:
                    run = await _one(
                        scenario,
                        base_url=sim.base_url,
                        pem=private_pem,
                        admin=admin,
                        workers=args.concurrency,
                    )
                    runs.append(run)
                    run.print_figures()
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print one line per figure, write the JSON result."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--concurrency", type=int, default=8, help="client in-flight cap")
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    runs = asyncio.run(_run(args))
    if any(r.status != SweepStatus.FLAT.value for r in runs):
        print("time_to_flat: WARNING a kill did not end flat", flush=True)
    result = {
        "benchmark": "time_to_flat",
        "server_burst": SERVER_BURST,
        "client_burst": CLIENT_BURST,
        "client_concurrency": args.concurrency,
        "simulator": "separate process (killswitch simulate-exchange)",
        "runs": [asdict(r) for r in runs],
        "machine": harness.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "command": "python -m bench.time_to_flat " + " ".join(sys.argv[1:]),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
