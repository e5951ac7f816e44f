"""``AiohttpTransport.send_raw``: the client's fast path past httpx's models.

The same answers and the same httpx exception types as the transport's generic
``handle_async_request``, against a small aiohttp server on loopback; and the client
really takes it (the generic path is covered by ``test_client_sim.py``'s
``aiohttp-generic`` runs).
"""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from killswitch.core.outcomes import Outcome
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.signing import compact_json
from killswitch.exchange.simulator import Simulator, SimulatorServer
from killswitch.exchange.simulator.testing import account_settings, register_test_client
from killswitch.exchange.transport import AiohttpTransport, Phases, RawHeaders

pytestmark = pytest.mark.integration

PHASES = Phases(1.0, 1.0, 1.0)


async def _echo(request: web.Request) -> web.Response:
    """Method, request target, one header and the body back as JSON, with status 201."""
    body = compact_json(
        {
            "method": request.method,
            "target": request.raw_path,  # as sent, not decoded
            "key": request.headers.get("X-API-KEY"),
            "body": (await request.read()).decode(),
        }
    )
    return web.Response(status=201, body=body, content_type="application/json")


async def _gzipped(_: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(b'{"ok":true}'),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """Base URL of a loopback server (/echo, /gzip, /stall) and the event /stall waits on."""
    release = asyncio.Event()

    async def stall(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/echo", _echo)
    app.router.add_get("/gzip", _gzipped)
    app.router.add_get("/stall", stall)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", release
    finally:
        release.set()
        await runner.cleanup()


async def test_send_raw_matches_the_generic_path(server: tuple[str, asyncio.Event]) -> None:
    base, _ = server
    url = f"{base}/echo?order_id=7&symbol=BTC_USDT&note=a%2Fb"  # sent as encoded
    headers = {"X-API-KEY": "k", "Content-Type": "application/json"}
    async with AiohttpTransport() as transport:
        raw = await transport.send_raw("DELETE", url, headers, b'{"x":1}', PHASES)
        response = await transport.handle_async_request(
            httpx.Request("DELETE", url, headers=headers, content=b'{"x":1}')
        )
    assert raw[:2] == (response.status_code, response.content)
    assert dict(raw[2]) == dict(response.headers.raw)  # the headers come back too
    assert raw[0] == 201
    assert raw[1] == compact_json(
        {
            "method": "DELETE",
            "target": "/echo?order_id=7&symbol=BTC_USDT&note=a%2Fb",
            "key": "k",
            "body": '{"x":1}',
        }
    )


async def test_send_raw_decodes_a_compressed_answer(server: tuple[str, asyncio.Event]) -> None:
    base, _ = server
    async with AiohttpTransport() as transport:
        status, body, _ = await transport.send_raw("GET", f"{base}/gzip", {}, None, PHASES)
    assert (status, body) == (200, b'{"ok":true}')


async def test_send_raw_errors_are_httpx_errors(server: tuple[str, asyncio.Event]) -> None:
    base, _ = server
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    transport = AiohttpTransport()
    with pytest.raises(httpx.ConnectError):
        await transport.send_raw("GET", refused, {}, None, PHASES)
    with pytest.raises(httpx.ReadTimeout):
        await transport.send_raw("GET", f"{base}/stall", {}, None, Phases(1.0, 0.05, 1.0))
    await transport.aclose()
    with pytest.raises(httpx.TransportError):
        await transport.send_raw("GET", f"{base}/echo", {}, None, PHASES)


class _Counting(AiohttpTransport):
    """Counts which path the client takes."""

    def __init__(self) -> None:
        super().__init__(max_connections=4)
        self.raw = 0
        self.generic = 0

    async def send_raw(self, *args: object, **kwargs: object) -> tuple[int, bytes, RawHeaders]:
        self.raw += 1
        return await super().send_raw(*args, **kwargs)  # type: ignore[arg-type]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.generic += 1
        return await super().handle_async_request(request)


async def test_client_takes_the_fast_path_on_our_transport() -> None:
    sim = Simulator(seed=5)
    api_key, pem = register_test_client(sim)
    (order_id,) = sim.seed_orders(api_key, "BTC_USDT", 1)
    transport = _Counting()
    async with SimulatorServer(sim) as srv:
        settings = account_settings(srv.base_url, api_key, pem)
        async with ExchangeClient(settings, transport=transport) as client:
            result = await client.cancel_order(order_id, "BTC_USDT")
    assert result.outcome is Outcome.SENT
    assert transport.generic == 0
    assert transport.raw == 2  # the clock sync, then the cancel
