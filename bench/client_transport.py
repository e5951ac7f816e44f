"""Which HTTP transport should the exchange client use? Measured, in one run.

5,000 signed cancel DELETEs (configurable) at 1 / 16 / 64 in flight, over loopback,
against a server in a separate process (the exchange simulator, and a trivial
aiohttp server that answers ``CANCEL_SENT`` without any work, to show the client's
own ceiling). Variants, all in the same run:

- ``bare-aiohttp``     an aiohttp loop with no httpx at all: the baseline (ratio 1.00)
- ``httpx-default``    ``httpx.AsyncClient`` with its own transport
- ``httpx-aiohttp-pkg`` ``httpx.AsyncClient`` over the ``httpx-aiohttp`` package (if installed)
- ``httpx-http1``      ``httpx.AsyncClient`` over our ``Http1Transport`` (llhttp framing)
- ``raw-http1``        a loop over ``Http1Transport.send_raw``, the client's fast path
- ``client-http1`` / ``client-httpx``  the full ``ExchangeClient.cancel_order``
  (signing, limiter, retries, outcome, the attempt deadline) on our transport and on
  httpx's own (any httpx transport plugs in): what a kill actually gets

Every request is signed the same way (a fresh timestamp and signature each), so the
signing cost is in every figure alike. Run::

    .venv/bin/python -m bench.client_transport [--requests 5000] [--rounds 3]
                                               [--server sim|trivial|both]

Each figure is the best of ``--rounds`` interleaved runs. One summary line per figure
on stdout (progress on stderr); JSON in ``bench/results/client_transport.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import multiprocessing
import platform
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from pydantic import SecretStr

from bench import harness
from killswitch.config import AccountSettings
from killswitch.core.outcomes import Outcome
from killswitch.exchange.client import PATH_ORDER, ExchangeClient, prepare_request
from killswitch.exchange.http1 import Http1Transport
from killswitch.exchange.signing import (
    Signer,
    encode_query,
    generate_private_key,
    private_key_pem,
    public_key_pem,
)
from killswitch.exchange.transport import Phases, RawTransport, TransportKind

RESULTS = Path(__file__).parent / "results"
SYMBOL = "BTC_USDT"
API_KEY = "bench-api-key"
CONCURRENCY = (1, 16, 64)


@dataclass
class Figure:
    server: str
    variant: str
    inflight: int
    requests: int
    seconds: float
    ok: int
    rps: float
    ratio: float | None = None  # against bare-aiohttp at the same in-flight count


# -- the server, in its own process --------------------------------------------------------


def _serve(kind: str, public_pem: bytes, conn: Connection) -> None:
    asyncio.run(_serve_async(kind, public_pem, conn))


async def _serve_async(kind: str, public_pem: bytes, conn: Connection) -> None:
    """Serve until told to stop; ``("seed", n)`` answers with n fresh open order ids."""
    loop = asyncio.get_running_loop()
    async with _server(kind, public_pem) as (base_url, seed):
        conn.send(base_url)
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                return
            conn.send(seed(int(command[1])))


@contextlib.asynccontextmanager
async def _server(
    kind: str, public_pem: bytes
) -> AsyncIterator[tuple[str, Callable[[int], list[int]]]]:
    if kind == "trivial":
        async with _trivial_server() as base_url:
            yield base_url, lambda n: list(range(1, n + 1))
        return
    from killswitch.simulator import Simulator, SimulatorServer

    sim = Simulator(seed=0)
    sim.add_client(API_KEY, public_pem)

    def seed(n: int) -> list[int]:
        sim.reset()  # forget the cancelled orders of the previous run
        return sim.seed_orders(API_KEY, SYMBOL, n)

    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield server.base_url, seed


@contextlib.asynccontextmanager
async def _trivial_server() -> AsyncIterator[str]:
    from aiohttp import web

    body = b'{"status":"CANCEL_SENT"}'

    async def cancel(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def server_time(_: web.Request) -> web.Response:
        return web.json_response({"timezone": "UTC", "timestamp": int(time.time() * 1000)})

    app = web.Application()
    app.router.add_route("DELETE", PATH_ORDER, cancel)
    app.router.add_route("GET", "/coin/internal/v1/public/time", server_time)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def serving(kind: str, public_pem: bytes) -> Iterator[tuple[str, Callable[[int], list[int]]]]:
    """Start the server process; yield its base URL and a function that seeds orders."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(kind, public_pem, child), daemon=True)
    process.start()

    def seed(n: int) -> list[int]:
        parent.send(("seed", n))
        if not parent.poll(120):
            raise RuntimeError(f"{kind} server did not seed orders")
        ids: list[int] = parent.recv()
        return ids

    try:
        if not parent.poll(60):
            raise RuntimeError(f"{kind} server did not start")
        yield parent.recv(), seed
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


# -- the variants -----------------------------------------------------------------------

Send = Callable[[int], Awaitable[bool]]


class Signed:
    """Signed cancel headers, made fresh per request exactly like the client does."""

    def __init__(self, signer: Signer, base_url: str) -> None:
        self.signer = signer
        self.base_url = base_url

    def __call__(self, order_id: int) -> tuple[str, dict[str, str]]:
        query = encode_query([("order_id", order_id), ("symbol", SYMBOL)])
        prepared = prepare_request(
            "DELETE",
            PATH_ORDER,
            query,
            api_key=API_KEY,
            signer=self.signer,
            timestamp_ms=int(time.time() * 1000),
        )
        return self.base_url + prepared.target, prepared.headers


async def drive(send: Send, ids: list[int], inflight: int) -> tuple[float, int]:
    """Send one request per id with ``inflight`` workers; (seconds, answers that were 2xx)."""
    it = iter(ids)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for order_id in it:
            if await send(order_id):
                ok += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.perf_counter() - started, ok


@contextlib.asynccontextmanager
async def bare_aiohttp(signed: Signed, inflight: int) -> AsyncIterator[Send]:
    connector = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(order_id: int) -> bool:
            url, headers = signed(order_id)
            async with session.delete(url, headers=headers) as response:
                await response.read()
                return response.status < 300

        yield send


@contextlib.asynccontextmanager
async def httpx_over(signed: Signed, transport: httpx.AsyncBaseTransport) -> AsyncIterator[Send]:
    async with httpx.AsyncClient(transport=transport) as client:

        async def send(order_id: int) -> bool:
            url, headers = signed(order_id)
            response = await client.send(httpx.Request("DELETE", url, headers=headers))
            return response.status_code < 300

        yield send


@contextlib.asynccontextmanager
async def raw_over(signed: Signed, transport: Http1Transport) -> AsyncIterator[Send]:
    """The transport's send_raw fast path, as the client calls it (no client around it)."""
    raw: RawTransport = transport
    phases = Phases(connect=5.0, read=5.0, pool=5.0)
    async with transport:

        async def send(order_id: int) -> bool:
            url, headers = signed(order_id)
            status, _, _ = await raw.send_raw("DELETE", url, headers, None, phases)
            return status < 300

        yield send


def _httpx_default(inflight: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    return httpx.AsyncHTTPTransport(limits=limits)


def _httpx_aiohttp_pkg(inflight: int) -> httpx.AsyncBaseTransport:
    import httpx_aiohttp  # type: ignore[import-not-found,unused-ignore]

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight))
    transport: httpx.AsyncBaseTransport = httpx_aiohttp.AiohttpTransport(client=session)
    return transport


@contextlib.asynccontextmanager
async def full_client(
    base_url: str,
    key_pem: bytes,
    inflight: int,
    transport: TransportKind | httpx.AsyncBaseTransport,
) -> AsyncIterator[Send]:
    settings = AccountSettings(
        id="bench",
        api_key=SecretStr(API_KEY),
        private_key=SecretStr(key_pem.decode()),
        base_url=base_url,
        rate_limit_per_second=100_000,
        burst=100_000,
        max_concurrency=inflight,
    )
    async with ExchangeClient(settings, transport=transport) as client:
        await client.sync_clock()

        async def send(order_id: int) -> bool:
            result = await client.cancel_order(order_id, SYMBOL)
            return result.outcome is Outcome.SENT

        yield send


def variants(
    signed: Signed, base_url: str, key_pem: bytes, inflight: int
) -> dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Send]]]:
    found: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Send]]] = {
        "bare-aiohttp": lambda: bare_aiohttp(signed, inflight),
        "httpx-default": lambda: httpx_over(signed, _httpx_default(inflight)),
    }
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        found["httpx-aiohttp-pkg"] = lambda: httpx_over(signed, _httpx_aiohttp_pkg(inflight))
    found["httpx-http1"] = lambda: httpx_over(signed, Http1Transport(max_connections=inflight))
    found["raw-http1"] = lambda: raw_over(signed, Http1Transport(max_connections=inflight))
    found["client-http1"] = lambda: full_client(base_url, key_pem, inflight, "http1")
    found["client-httpx"] = lambda: full_client(
        base_url, key_pem, inflight, _httpx_default(inflight + 1)
    )
    return found


# -- the run ------------------------------------------------------------------------------


async def measure_server(kind: str, requests: int, warmup: int, rounds: int) -> list[Figure]:
    """Every variant at every in-flight count, ``rounds`` times interleaved; best kept.

    Interleaving spreads background noise over all variants alike; the best of the
    rounds is reported because noise only ever slows a run down.
    """
    key = generate_private_key()
    key_pem = private_key_pem(key)
    signer = Signer(key)
    best: dict[tuple[str, int], Figure] = {}
    with serving(kind, public_key_pem(key)) as (base_url, seed):
        signed = Signed(signer, base_url)
        for round_no in range(1, rounds + 1):
            for inflight in CONCURRENCY:
                for name, factory in variants(signed, base_url, key_pem, inflight).items():
                    ids = seed(requests + warmup)
                    async with factory() as send:
                        await drive(send, ids[:warmup], inflight)  # connections, caches
                        seconds, ok = await drive(send, ids[warmup:], inflight)
                    figure = Figure(kind, name, inflight, requests, seconds, ok, requests / seconds)
                    print(f"  round {round_no}: {_line(figure)}", file=sys.stderr, flush=True)
                    kept = best.get((name, inflight))
                    if kept is None or figure.rps > kept.rps:
                        best[(name, inflight)] = figure
    figures = list(best.values())
    for figure in figures:
        baseline = best[("bare-aiohttp", figure.inflight)].rps
        figure.ratio = figure.rps / baseline
    return figures


def _line(f: Figure) -> str:
    ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
    return (
        f"client_transport {f.server}/{f.inflight}/{f.variant}: {ratio} bare aiohttp "
        f"({f.rps:,.0f} req/s at {f.inflight} in flight, ok {f.ok}/{f.requests})"
    )


def _environment() -> dict[str, Any]:
    versions: dict[str, Any] = {"httpx": httpx.__version__, "aiohttp": aiohttp.__version__}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["httpx-aiohttp"] = version("httpx-aiohttp")
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": multiprocessing.cpu_count(),
        "host": harness.machine(),
        **versions,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints one line per figure and writes the JSON result file."""
    parser = argparse.ArgumentParser(prog="python -m bench.client_transport")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", choices=["sim", "trivial", "both"], default="sim")
    args = parser.parse_args(argv if argv is not None else [])
    kinds = ["sim", "trivial"] if args.server == "both" else [args.server]
    figures: list[Figure] = []
    for kind in kinds:
        figures += asyncio.run(measure_server(kind, args.requests, args.warmup, args.rounds))
    for figure in figures:
        print(_line(figure), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "client_transport.json"
    report = {
        "benchmark": "client_transport",
        "command": " ".join(["python -m bench.client_transport", *(argv or [])]),
        "rounds": args.rounds,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": _environment(),
        "figures": [asdict(f) for f in figures],
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"client_transport: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
