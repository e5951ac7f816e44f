"""``Http1Transport`` on loopback: against the exchange simulator (the full client) and
against small HTTP/1.1 servers written here, whose handlers misbehave on purpose
(stall, close idle or mid-body, refuse, chunk). The hostile-server table of the
transport's limits and deadlines is in ``test_transport_hostile.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from killswitch.core.orders import Order
from killswitch.core.outcomes import Outcome
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.http1 import Http1Transport, build_transport, default_ssl_context
from killswitch.exchange.signing import compact_json
from killswitch.exchange.simulator import Simulator, SimulatorServer
from killswitch.exchange.simulator.testing import account_settings, register_test_client
from killswitch.exchange.transport import (
    AttemptDeadline,
    Phases,
    RawHeaders,
    StaleConnection,
)
from tests.support.tls import make_pki
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PHASES = Phases(connect=2.0, read=2.0, pool=2.0)
SYMBOL = "BTC_USDT"


# -- a small HTTP/1.1 server of our own ------------------------------------------------------


@dataclass
class Req:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    conn: int  # 1 for the first accepted connection
    seq: int  # 1 for the first request on that connection


Handler = Callable[[Req, asyncio.StreamWriter], Awaitable[bool]]


def answer(
    writer: asyncio.StreamWriter,
    body: bytes = b"ok",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    """Write a Content-Length framed answer."""
    lines = [f"HTTP/1.1 {status} X\r\n", f"Content-Length: {len(body)}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in (headers or {}).items()]
    writer.write("".join(lines).encode() + b"\r\n" + body)


async def ok(req: Req, writer: asyncio.StreamWriter) -> bool:
    """Echo method, target, connection and request number."""
    answer(writer, f"{req.method} {req.target} c{req.conn} r{req.seq}".encode())
    return True


@dataclass
class Server:
    handler: Handler
    tls: ssl.SSLContext | None = None
    accepted: int = 0
    open: int = 0
    peak_open: int = 0
    in_handler: int = 0
    requests: list[Req] = field(default_factory=list)
    client_closed: set[int] = field(default_factory=set)  # connections the client ended
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        conn = self.accepted
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            seq = 0
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.client_closed.add(conn)
                    return
                seq += 1
                req = _parse(head, conn, seq)
                length = int(req.headers.get("content-length", "0"))
                req.body = await reader.readexactly(length) if length else b""
                self.requests.append(req)
                self.in_handler += 1
                try:
                    keep = await self.handler(req, writer)
                finally:
                    self.in_handler -= 1
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)


def _parse(head: bytes, conn: int, seq: int) -> Req:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    assert version == "HTTP/1.1"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
    return Req(method, target, headers, b"", conn, seq)


@contextlib.asynccontextmanager
async def serving(
    handler: Handler = ok, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(handler, tls)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def get(transport: Http1Transport, url: str, phases: Phases = PHASES) -> tuple[int, bytes]:
    status, body, _ = await transport.send_raw("GET", url, {"Accept": "*/*"}, None, phases)
    return status, body


# -- the wire format and keep-alive ------------------------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    async with serving() as server, Http1Transport(max_connections=4) as transport:
        answers = [await get(transport, f"{server.url}/n{i}?q=a%2Fb") for i in range(10)]
    assert answers == [(200, f"GET /n{i}?q=a%2Fb c1 r{i + 1}".encode()) for i in range(10)]
    assert server.accepted == 1
    first = server.requests[0]
    assert first.headers == {"host": f"127.0.0.1:{server.port}", "accept": "*/*"}


async def test_urls_without_a_path_or_with_slashes_in_the_query() -> None:
    async with serving() as server, Http1Transport() as transport:
        assert await get(transport, f"{server.url}?a=/b") == (200, b"GET /?a=/b c1 r1")
        assert await get(transport, server.url) == (200, b"GET / c1 r2")
        assert await get(transport, f"{server.url}/p?x=/y/") == (200, b"GET /p?x=/y/ c1 r3")
        with pytest.raises(httpx.UnsupportedProtocol):
            await get(transport, f"ftp://127.0.0.1:{server.port}/")
        with pytest.raises(httpx.UnsupportedProtocol):
            await get(transport, f"http://user:pw@127.0.0.1:{server.port}/")
    assert server.accepted == 1


async def test_request_framing_and_body() -> None:
    async def echo(req: Req, writer: asyncio.StreamWriter) -> bool:
        answer(writer, compact_json({"h": req.headers, "b": req.body.decode()}), status=201)
        return True

    async with serving(echo) as server, Http1Transport() as transport:
        headers = {"X-API-KEY": "k", "Content-Length": "99", "Connection": "close", "Host": "x"}
        status, body, _ = await transport.send_raw(
            "DELETE", f"{server.url}/o", headers, b'{"a":1}', PHASES
        )
        _, empty_post, _ = await transport.send_raw("POST", f"{server.url}/p", {}, None, PHASES)
    assert status == 201
    assert body == compact_json(
        {
            "h": {"host": f"127.0.0.1:{server.port}", "x-api-key": "k", "content-length": "7"},
            "b": '{"a":1}',
        }
    )
    assert server.requests[1].headers["content-length"] == "0"  # POST: RFC 9110 8.6
    assert b'"content-length":"0"' in empty_post
    assert server.accepted == 1  # the caller's "Connection: close" was not sent


async def _chunks() -> AsyncIterator[bytes]:
    yield b"bo"
    yield b"dy"


async def test_generic_path_matches_the_fast_path() -> None:
    async def echo(req: Req, writer: asyncio.StreamWriter) -> bool:
        answer(writer, f"{req.method} {req.target} {req.body.decode()}".encode(), status=202)
        return True

    async with serving(echo) as server, Http1Transport() as transport:
        url = f"{server.url}/echo?order_id=7&note=a%2Fb"
        raw = (await transport.send_raw("PUT", url, {"X": "y"}, b"body", PHASES))[:2]
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.put(url, headers={"X": "y"}, content=b"body")
            streamed = await client.put(url, content=_chunks())  # read, then Content-Length
    assert streamed.content == b"PUT /echo?order_id=7&note=a%2Fb body"
    assert server.requests[-1].headers["content-length"] == "4"
    assert (
        raw
        == (response.status_code, response.content)
        == (202, b"PUT /echo?order_id=7&note=a%2Fb body")
    )
    assert response.request.method == "PUT"
    assert server.accepted == 1


async def test_compressed_answer_is_refused_and_the_connection_dropped() -> None:
    async def zipped(req: Req, writer: asyncio.StreamWriter) -> bool:
        answer(writer, gzip.compress(b'{"ok":true}'), headers={"Content-Encoding": "gzip"})
        return True

    async with serving(zipped) as server, Http1Transport() as transport:
        with pytest.raises(httpx.RemoteProtocolError, match="compressed"):
            await get(transport, f"{server.url}/")
        with pytest.raises(httpx.RemoteProtocolError, match="compressed"):
            await get(transport, f"{server.url}/")
    assert server.accepted == 2
    assert "accept-encoding" not in server.requests[0].headers


async def test_chunked_answer_and_reuse_after_it() -> None:
    async def chunked(req: Req, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        writer.write(b"4;ext=1\r\nabcd\r\n")
        await writer.drain()
        writer.write(b"2\r\nef\r\n0\r\nX-Trailer: t\r\n\r\n")
        return True

    async with serving(chunked) as server, Http1Transport() as transport:
        assert await get(transport, f"{server.url}/") == (200, b"abcdef")
        assert await get(transport, f"{server.url}/") == (200, b"abcdef")
    assert server.accepted == 1


async def test_read_until_close_answer() -> None:
    async def unframed(req: Req, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end")
        return False  # the server closes: that ends the body

    async with serving(unframed) as server, Http1Transport() as transport:
        assert await get(transport, f"{server.url}/") == (200, b"to the end")
        assert await get(transport, f"{server.url}/") == (200, b"to the end")
    assert server.accepted == 2


async def test_connection_close_is_honoured() -> None:
    async def closing(req: Req, writer: asyncio.StreamWriter) -> bool:
        answer(writer, b"bye", headers={"Connection": "close"})
        return True  # the server keeps it open: the client must close it

    async with serving(closing) as server, Http1Transport() as transport:
        assert await get(transport, f"{server.url}/") == (200, b"bye")
        assert await get(transport, f"{server.url}/") == (200, b"bye")
        await wait_for(lambda: server.client_closed == {1, 2})
    assert server.accepted == 2
    assert [r.seq for r in server.requests] == [1, 1]


async def test_keepalive_expiry_closes_old_idle_connections() -> None:
    async with serving() as server, Http1Transport(keepalive_expiry_s=30.0) as transport:
        await get(transport, f"{server.url}/")
        for idle in transport._idle.values():
            for conn in idle:
                conn.idle_since -= 31.0  # as if idle for 31 s
        assert await get(transport, f"{server.url}/") == (200, b"GET / c2 r1")
        await wait_for(lambda: 1 in server.client_closed)


# -- the pool -----------------------------------------------------------------------------


async def test_pool_cap_and_fifo_waiters() -> None:
    gate = asyncio.Event()

    async def gated(req: Req, writer: asyncio.StreamWriter) -> bool:
        await gate.wait()
        return await ok(req, writer)

    async with serving(gated) as server, Http1Transport(max_connections=2) as transport:
        tasks = [asyncio.create_task(get(transport, f"{server.url}/{i}")) for i in range(5)]
        await wait_for(lambda: server.in_handler == 2 and len(transport._waiters) == 3)
        assert server.accepted == 2
        gate.set()
        answers = await asyncio.gather(*tasks)
    assert [status for status, _ in answers] == [200] * 5
    assert server.accepted == 2
    assert server.peak_open == 2
    # The three that waited were served in the order they asked.
    waited = [r.target for r in server.requests[2:]]
    assert waited == ["/2", "/3", "/4"]


async def test_pool_timeout_and_the_slot_comes_back() -> None:
    gate = asyncio.Event()

    async def gated(req: Req, writer: asyncio.StreamWriter) -> bool:
        await gate.wait()
        return await ok(req, writer)

    async with serving(gated) as server, Http1Transport(max_connections=1) as transport:
        first = asyncio.create_task(get(transport, f"{server.url}/first"))
        await wait_for(lambda: server.in_handler == 1)
        with pytest.raises(httpx.PoolTimeout):
            await get(transport, f"{server.url}/second", Phases(2.0, 2.0, 0.05))
        assert transport._waiters == type(transport._waiters)()  # the timed-out waiter left
        gate.set()
        assert await first == (200, b"GET /first c1 r1")
        assert await get(transport, f"{server.url}/third") == (200, b"GET /third c1 r2")
    assert server.accepted == 1


async def test_read_timeout_closes_that_connection() -> None:
    gate = asyncio.Event()

    async def stall_first(req: Req, writer: asyncio.StreamWriter) -> bool:
        if req.conn == 1:
            await gate.wait()
        return await ok(req, writer)

    async with serving(stall_first) as server, Http1Transport(max_connections=1) as transport:
        with pytest.raises(httpx.ReadTimeout):
            await get(transport, f"{server.url}/slow", Phases(2.0, 0.05, 2.0))
        # The unread answer's connection is closed, not pooled; the slot is free again.
        assert await get(transport, f"{server.url}/next") == (200, b"GET /next c2 r1")
        gate.set()
        await wait_for(lambda: server.open == 1)
    assert transport._open == 0


async def test_the_deadline_ends_the_answer_pool_wait_and_connect() -> None:
    """``send_raw(deadline=...)``: the read timer runs to the deadline when it is sooner than
    the read timeout (AttemptDeadline); the pool wait is capped to it; past it nothing is sent."""
    gate = asyncio.Event()

    async def stall(req: Req, writer: asyncio.StreamWriter) -> bool:
        await gate.wait()
        return await ok(req, writer)

    long = Phases(connect=30.0, read=30.0, pool=30.0)
    loop = asyncio.get_running_loop()
    async with serving(stall) as server, Http1Transport(max_connections=1) as transport:
        url = f"{server.url}/x"
        first = transport.send_raw("GET", url, {}, None, long, deadline=loop.time() + 0.1)
        with pytest.raises(AttemptDeadline):
            await first
        await wait_for(lambda: transport._open == 0)  # that connection was discarded
        holder = asyncio.create_task(transport.send_raw("GET", url, {}, None, long))
        await wait_for(lambda: server.in_handler == 2)  # the first one still stalls there
        with pytest.raises(httpx.PoolTimeout):  # the one slot is taken: the wait is capped
            await transport.send_raw("GET", url, {}, None, long, deadline=loop.time() + 0.1)
        with pytest.raises(AttemptDeadline):
            await transport.send_raw("GET", url, {}, None, long, deadline=loop.time() - 1)
        gate.set()
        assert (await holder)[0] == 200
    assert [r.target for r in server.requests] == ["/x", "/x"]


async def test_cancellation_does_not_poison_the_pool() -> None:
    gate = asyncio.Event()

    async def stall_first(req: Req, writer: asyncio.StreamWriter) -> bool:
        if req.conn == 1:
            await gate.wait()  # then answers into a connection the client closed
        return await ok(req, writer)

    async with serving(stall_first) as server, Http1Transport(max_connections=1) as transport:
        task = asyncio.create_task(get(transport, f"{server.url}/cancelled"))
        await wait_for(lambda: server.in_handler == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        # max_connections=1: a leaked slot would make this a PoolTimeout.
        assert await get(transport, f"{server.url}/after", Phases(2.0, 2.0, 0.5)) == (
            200,
            b"GET /after c2 r1",
        )
        await wait_for(lambda: 1 in server.client_closed)  # the client closed it
    assert [r.target for r in server.requests] == ["/cancelled", "/after"]


async def test_cancelled_while_waiting_for_the_pool() -> None:
    gate = asyncio.Event()

    async def gated(req: Req, writer: asyncio.StreamWriter) -> bool:
        await gate.wait()
        return await ok(req, writer)

    async with serving(gated) as server, Http1Transport(max_connections=1) as transport:
        first = asyncio.create_task(get(transport, f"{server.url}/1"))
        await wait_for(lambda: server.in_handler == 1)
        waiting = asyncio.create_task(get(transport, f"{server.url}/2"))
        await wait_for(lambda: len(transport._waiters) == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.set()
        assert (await first)[0] == 200
        assert await get(transport, f"{server.url}/3") == (200, b"GET /3 c1 r2")
    assert server.accepted == 1


# -- errors and the stale keep-alive retry ---------------------------------------------


async def test_connect_refused_is_a_connect_error() -> None:
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    async with Http1Transport(max_connections=1) as transport:
        with pytest.raises(httpx.ConnectError):
            await get(transport, refused)
        with pytest.raises(httpx.ConnectError):  # and the slot was given back
            await get(transport, refused, Phases(2.0, 2.0, 0.05))
        assert transport._open == 0


async def test_server_closing_an_idle_connection() -> None:
    async def answer_then_close(req: Req, writer: asyncio.StreamWriter) -> bool:
        await ok(req, writer)
        return False  # closes the kept-alive connection right after answering

    async with serving(answer_then_close) as server, Http1Transport() as transport:
        assert await get(transport, f"{server.url}/a") == (200, b"GET /a c1 r1")
        await wait_for(lambda: server.open == 0)
        assert await get(transport, f"{server.url}/b") == (200, b"GET /b c2 r1")
    assert server.accepted == 2


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_stale_keep_alive_connection_is_retried_once(how: str) -> None:
    """The server takes the second request on a connection and drops it unanswered, as a
    server does when its idle timer fires just as the request arrives."""

    async def drop_second(req: Req, writer: asyncio.StreamWriter) -> bool:
        if req.seq == 2:
            if how == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        return await ok(req, writer)

    async with serving(drop_second) as server, Http1Transport() as transport:
        assert await get(transport, f"{server.url}/a") == (200, b"GET /a c1 r1")
        assert await get(transport, f"{server.url}/b") == (200, b"GET /b c2 r1")
    assert [(r.target, r.conn, r.seq) for r in server.requests] == [
        ("/a", 1, 1),
        ("/b", 1, 2),  # reached the server, which dropped it
        ("/b", 2, 1),  # the one retry, on a fresh connection
    ]


async def test_a_fresh_connection_failing_is_not_retried() -> None:
    async def drop(req: Req, writer: asyncio.StreamWriter) -> bool:
        return False

    async with serving(drop) as server, Http1Transport() as transport:
        with pytest.raises(httpx.ReadError) as caught:
            await get(transport, f"{server.url}/")
    assert type(caught.value) is httpx.ReadError  # the client reports the class name
    assert server.accepted == 1


async def test_a_retry_that_fails_again_is_an_error() -> None:
    async def only_first(req: Req, writer: asyncio.StreamWriter) -> bool:
        if req.conn == 1 and req.seq == 1:
            return await ok(req, writer)
        return False

    async with serving(only_first) as server, Http1Transport() as transport:
        await get(transport, f"{server.url}/")
        with pytest.raises(httpx.ReadError) as caught:
            await get(transport, f"{server.url}/")
    assert type(caught.value) is httpx.ReadError
    assert server.accepted == 2  # one retry, not more


async def test_close_mid_body_is_a_protocol_error() -> None:
    async def truncated(req: Req, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        return False

    async with serving(truncated) as server, Http1Transport() as transport:
        with pytest.raises(httpx.RemoteProtocolError):
            await get(transport, f"{server.url}/")
    assert server.accepted == 1  # an answer had started: not retried


async def test_malformed_answer_is_a_protocol_error_and_not_reused() -> None:
    async def garbage(req: Req, writer: asyncio.StreamWriter) -> bool:
        if req.conn == 1:
            writer.write(b"HTTP/1.1 2xx Nope\r\n\r\n")
            return True
        return await ok(req, writer)

    async with serving(garbage) as server, Http1Transport() as transport:
        with pytest.raises(httpx.RemoteProtocolError):
            await get(transport, f"{server.url}/")
        assert await get(transport, f"{server.url}/") == (200, b"GET / c2 r1")


async def test_use_after_close() -> None:
    async with serving() as server:
        transport = Http1Transport()
        await get(transport, f"{server.url}/")
        await transport.aclose()
        await wait_for(lambda: server.client_closed == {1})
        with pytest.raises(httpx.TransportError):
            await get(transport, f"{server.url}/")


# -- TLS ---------------------------------------------------------------------------------------


def _server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    pki = make_pki(tmp_path / "pki")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context, pki.ca_cert


async def test_https_with_the_test_ca(tmp_path: Path) -> None:
    server_tls, ca = _server_tls(tmp_path)
    client_tls = ssl.create_default_context(cafile=str(ca))
    async with serving(tls=server_tls) as server, Http1Transport(ssl_context=client_tls) as t:
        assert await get(t, f"{server.url}/x") == (200, b"GET /x c1 r1")
        assert await get(t, f"https://localhost:{server.port}/y") == (200, b"GET /y c2 r1")
        assert await get(t, f"{server.url}/z") == (200, b"GET /z c1 r2")  # pool by host
    assert server.requests[1].headers["host"] == f"localhost:{server.port}"


async def test_https_with_a_wrong_ca_is_refused(tmp_path: Path) -> None:
    server_tls, _ = _server_tls(tmp_path)
    other = make_pki(tmp_path / "other", ca_name="some other CA")
    client_tls = ssl.create_default_context(cafile=str(other.ca_cert))
    async with serving(tls=server_tls) as server, Http1Transport(ssl_context=client_tls) as t:
        with pytest.raises(httpx.ConnectError):
            await get(t, f"{server.url}/")
        assert t._open == 0
    assert server.requests == []


# -- the exchange client on the simulator -------------------------------------------------


class _Counting(Http1Transport):
    """Counts which path the client takes."""

    def __init__(self) -> None:
        super().__init__(max_connections=4)
        self.raw = 0
        self.generic = 0

    async def send_raw(self, *args: Any, **kwargs: Any) -> tuple[int, bytes, RawHeaders]:
        self.raw += 1
        return await super().send_raw(*args, **kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.generic += 1
        return await super().handle_async_request(request)


async def test_client_takes_the_fast_path() -> None:
    sim = Simulator(seed=5)
    api_key, pem = register_test_client(sim)
    (order_id,) = sim.seed_orders(api_key, SYMBOL, 1)
    transport = _Counting()
    async with SimulatorServer(sim) as srv:
        settings = account_settings(srv.base_url, api_key, pem)
        async with ExchangeClient(settings, transport=transport) as client:
            result = await client.cancel_order(order_id, SYMBOL)
    assert result.outcome is Outcome.SENT
    assert (transport.generic, transport.raw) == (0, 2)  # the clock sync, then the cancel


def test_build_transport_http1() -> None:
    assert isinstance(build_transport("http1", max_connections=3), Http1Transport)


async def _scenario(transport: httpx.AsyncBaseTransport) -> list[Any]:
    """List, cancel one, batch-cancel, cancel again, cancel all, list: every answer."""
    sim = Simulator(seed=11)
    api_key, pem = register_test_client(sim)
    ids = sim.seed_orders(api_key, SYMBOL, 12)
    seen: list[Any] = []
    async with SimulatorServer(sim) as srv:
        settings = account_settings(srv.base_url, api_key, pem)
        async with ExchangeClient(settings, transport=transport) as client:
            pages = [page async for page in client.open_orders(SYMBOL, limit=5)]
            seen.append([[o.order_id for o in page] for page in pages])
            seen.append(await client.cancel_order(ids[0], SYMBOL))
            seen.append(await client.cancel_order(ids[0], SYMBOL))
            seen.append(await client.cancel_batch(SYMBOL, [*ids[1:5], 999_999]))
            seen.append(await client.get_order(ids[5], SYMBOL))
            seen.append(await client.cancel_all(SYMBOL))
            seen.append([page async for page in client.open_orders(SYMBOL)])
    return seen


class _GenericOnly(httpx.AsyncBaseTransport):
    """``Http1Transport`` behind the plain httpx interface: the client's generic path."""

    def __init__(self, max_connections: int) -> None:
        self._inner = Http1Transport(max_connections=max_connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _comparable(value: Any) -> Any:
    """Answers without the simulator's wall-clock stamps (they differ between runs)."""
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, Order):
        return dataclasses.replace(value, created_at=0, updated_at=0)
    return value


async def test_same_answers_on_the_fast_and_the_generic_path() -> None:
    ours = await _scenario(Http1Transport(max_connections=9))
    theirs = await _scenario(_GenericOnly(max_connections=9))
    assert _comparable(ours) == _comparable(theirs)
    assert sum(len(page) for page in ours[0]) == 12
    assert ours[1].outcome is Outcome.SENT
    assert ours[2].outcome is Outcome.ALREADY_CLOSED
    assert len(ours[3].success) == 4
    assert ours[-1] == []


# -- found in review: what a reused connection may hold, budgets, odd hosts ----------------


class _ThreadServer:
    """A blocking server in its own thread (as a remote exchange is: it sends while this
    event loop is busy). Per connection: answer the first request with 200 ``ok``,
    then, if ``stray`` is set, once the test says it has read that answer
    (:attr:`answered`), send those bytes unasked and set :attr:`stray_sent`."""

    def __init__(self, stray: bytes | None = None) -> None:
        self.stray = stray
        self.answered = threading.Event()
        self.stray_sent = threading.Event()
        self.seen: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # accept() wakes to see a stop request
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = [threading.Thread(target=self._accept)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(conn,))
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
            self.seen.append(buf.split(b"\r\n", 1)[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if self.stray is not None and not self.stray_sent.is_set():
                self.answered.wait(5)  # not in the same segment as the answer
                conn.sendall(self.stray)
                self.stray_sent.set()
            # Keep the connection until the client is done with it (bounded).
            with contextlib.suppress(OSError):
                while conn.recv(4096):
                    pass

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(10)


async def test_unasked_bytes_on_an_idle_connection_are_never_the_next_answer() -> None:
    """A server's idle-timeout ``408`` lands in the socket while this loop is busy (so
    the protocol has not read it): the next request must not take it as its answer.
    Here that would have reported a cancel the server never read as refused."""
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    server = _ThreadServer(stray)
    try:
        async with Http1Transport() as transport:
            assert await get(transport, f"{server.url}/orders") == (200, b"ok")
            server.answered.set()
            # Deliberately block this loop (no await) until the bytes are on their way.
            assert server.stray_sent.wait(5)
            url = f"{server.url}/order?id=7"
            answer = await transport.send_raw("DELETE", url, {}, None, PHASES)
        assert answer[:2] == (200, b"ok")
        assert server.seen == [b"GET /orders HTTP/1.1", b"DELETE /order?id=7 HTTP/1.1"]
    finally:
        server.close()


async def test_stale_retry_gets_what_is_left_of_the_read_budget() -> None:
    """The reused connection is held 0.45 s and dropped; the retry's server would answer
    after 0.3 s, past the 0.5 s read budget of the attempt: a timeout, not an answer
    that comes after the caller's deadline."""

    async def slow_drop(req: Req, writer: asyncio.StreamWriter) -> bool:
        if req.conn == 1 and req.seq == 1:
            return await ok(req, writer)
        await asyncio.sleep(0.45 if req.conn == 1 else 0.3)  # the server's own pace
        if req.conn == 1:
            return False
        return await ok(req, writer)

    phases = Phases(connect=2.0, read=0.5, pool=2.0)
    async with serving(slow_drop) as server, Http1Transport() as transport:
        await get(transport, f"{server.url}/a", phases)
        with pytest.raises(httpx.ReadTimeout):
            await get(transport, f"{server.url}/b", phases)


async def test_a_stale_connection_does_not_resend_a_post() -> None:
    async def drop_second(req: Req, writer: asyncio.StreamWriter) -> bool:
        return req.seq == 1 and await ok(req, writer)

    async with serving(drop_second) as server, Http1Transport() as transport:
        await get(transport, f"{server.url}/a")
        with pytest.raises(httpx.ReadError):
            await transport.send_raw("POST", f"{server.url}/b", {}, b"{}", PHASES)
    assert [(r.method, r.conn) for r in server.requests] == [("GET", 1), ("POST", 1)]


async def test_reset_while_reading_until_close_is_an_error() -> None:
    async def partial_then_reset(req: Req, writer: asyncio.StreamWriter) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\n\r\n{"orders": [1, 2')
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False

    async with serving(partial_then_reset) as server, Http1Transport() as transport:
        with pytest.raises(httpx.RemoteProtocolError):
            await get(transport, f"{server.url}/")


@pytest.mark.parametrize("url", ["http://a..b/x", "https://.example.com/x"])
async def test_unusable_host_names_are_connect_errors(url: str) -> None:
    async with Http1Transport() as transport:
        with pytest.raises(httpx.ConnectError):
            await get(transport, url)


@pytest.mark.parametrize(
    "url",
    [
        "http://h\x00st/x",
        "http://h st/x",
        "http://h%41/x",
        "http://127.0.0.1:9/x#frag",
        "ftp://h/x",
    ],
)
async def test_urls_that_cannot_be_sent_as_given_are_refused(url: str) -> None:
    async with Http1Transport() as transport:
        with pytest.raises(httpx.UnsupportedProtocol):
            await get(transport, url)


async def test_credentials_in_a_url_are_refused_and_never_echoed() -> None:
    async with Http1Transport() as transport:
        with pytest.raises(httpx.UnsupportedProtocol) as caught:
            await get(transport, "http://user:s3cret@127.0.0.1:9/x")
    assert "s3cret" not in str(caught.value)


async def test_https_by_default_verifies_against_the_system_store(tmp_path: Path) -> None:
    """No ``ssl_context``: the shared default context, which does not know the test CA."""
    server_tls, _ = _server_tls(tmp_path)
    async with serving(tls=server_tls) as server, Http1Transport() as transport:
        with pytest.raises(httpx.ConnectError):
            await get(transport, f"{server.url}/")
    assert server.requests == []
    assert default_ssl_context().verify_mode == ssl.CERT_REQUIRED
    assert default_ssl_context().check_hostname


# -- a stale connection carrying a signed request ----------------------------------------------


class _StaleOnSecond:
    """A loopback proxy in front of the simulator. On the first connection it forwards
    the second request (the simulator acts on it) and then closes the connection
    without passing the answer on: to the client, a kept-alive connection that went
    stale under a request. Every request head it saw is kept."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.heads: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> _StaleOnSecond:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        return head + (await reader.readexactly(length) if length else b"")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            for seq in range(1, 1000):
                try:
                    request = await self._message(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(request.split(b"\r\n\r\n", 1)[0])
                up_writer.write(request)
                answer = await self._message(up_reader)
                if first and seq == 2:
                    return  # acted on upstream, the answer never reaches the client
                writer.write(answer)
                await writer.drain()
        finally:
            writer.transport.abort()
            up_writer.close()


def _header_of(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} header")


async def test_a_request_on_a_stale_connection_is_signed_anew() -> None:
    """The client re-signs (fresh timestamp and signature) instead of replaying the
    same bytes: an exchange with replay protection would refuse them as replayed."""
    sim = Simulator(seed=5)
    sim.replay_protection = True  # the same signature twice answers 401 invalid_client
    api_key, pem = register_test_client(sim)
    (order_id,) = sim.seed_orders(api_key, "BTC_USDT", 1)
    async with SimulatorServer(sim) as server, _StaleOnSecond(server.port) as proxy:
        settings = account_settings(proxy.url, api_key, pem, read_timeout_s=2.0)
        async with ExchangeClient(settings, transport="http1") as client:
            # Request 1 on the first connection is the clock sync; the cancel reuses it.
            result = await client.cancel_order(order_id, "BTC_USDT")
    deletes = [h for h in proxy.heads if h.startswith(b"DELETE ")]
    assert len(deletes) == 2  # the one that went stale, and the one sent again
    first, again = deletes
    assert _header_of(first, b"x-signature") != _header_of(again, b"x-signature")
    assert proxy.connections == 2
    # The first DELETE took effect upstream; the second finds the order closed (it is
    # not refused as a replay, which would have read as a refused key).
    assert (result.outcome, result.attempts) == (Outcome.ALREADY_CLOSED, 1)
    assert sim.count(api_key, "cancel", 401) == 0
    assert sim.open_order_ids(api_key) == set()


async def test_without_resend_a_stale_connection_raises_and_fresh_opens_a_new_one() -> None:
    async def drop_second(req: Req, writer: asyncio.StreamWriter) -> bool:
        return req.seq == 1 and await ok(req, writer)

    async with serving(drop_second) as server, Http1Transport() as transport:
        await get(transport, f"{server.url}/a")
        url = f"{server.url}/order?id=7"
        with pytest.raises(StaleConnection):
            await transport.send_raw("DELETE", url, {}, None, PHASES, resend_stale=False)
        status, _, _ = await transport.send_raw(
            "DELETE", url, {}, None, PHASES, resend_stale=False, fresh=True
        )
    assert status == 200
    assert [(r.method, r.conn) for r in server.requests] == [
        ("GET", 1),
        ("DELETE", 1),
        ("DELETE", 2),
    ]
