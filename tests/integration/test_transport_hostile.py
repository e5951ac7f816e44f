"""Hostile exchange servers against the full client on the shipped transport.

Each case is a tiny asyncio server on loopback that answers the clock sync like an
exchange and then plays one hostile part on the cancel: trickling, endless interim
answers or bodies, a compression bomb, stray or extra bytes on a kept-alive
connection, malformed heads, a chunk flood, a redirect elsewhere. Every case must end
in the right outcome (``sent`` only for a real 2xx answer to that request), ended by
the client itself (its attempt deadline or a refusal, never the server), with what the
server managed to write bounded by the transport's limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
import pytest

from killswitch.config import AccountSettings
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.http1 import DEFAULT_LIMITS
from killswitch.exchange.signing import generate_private_key, private_key_pem
from killswitch.exchange.simulator.testing import account_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SYMBOL = "BTC_USDT"
REJECTED_400 = b'{"error":"invalid_request","error_description":"no such order"}'
# What the socket buffers between the server and the client may hold beyond what the
# client read (loopback buffers grow to a few MiB): added to each bound.
SLACK = 16 * 1024 * 1024

Play = Callable[["Hostile", asyncio.StreamWriter, int], Awaitable[bool]]


def framed(status: int, body: bytes, extra: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    return head.encode() + extra + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


@dataclass
class Hostile:
    """Answers the clock sync properly; ``play`` answers everything else (the cancel)."""

    play: Play
    after_time: bytes = b""  # written right after the time answer, in the same write
    accepted: int = 0
    written: int = 0  # bytes the hostile part managed to write
    closed_by_client: int = 0  # connections that ended from the client's side
    requests: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # the test is over
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        self.written += len(data)
        writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        conn = self.accepted
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                line, *rest = head.decode("latin-1").split("\r\n")
                fields = (h.partition(":") for h in rest if h)
                headers = {k.strip().lower(): v.strip() for k, _, v in fields}
                self.requests.append((conn, line, headers))
                if "/public/time" in line:
                    now = json.dumps({"timestamp": int(time.time() * 1000)}).encode()
                    writer.write(framed(200, now) + self.after_time)
                    await writer.drain()
                    continue
                if not await self.play(self, writer, conn):
                    return
                await writer.drain()
        except ConnectionError:
            self.closed_by_client += 1
        finally:
            writer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> Hostile:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def hold(self) -> bool:
        """Keep the connection open, answering nothing more, until the test is over."""
        await self.done.wait()
        return False

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.done.set()
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture(scope="module")
def pem() -> bytes:
    return private_key_pem(generate_private_key())


def settings(base_url: str, pem: bytes, **overrides: Any) -> AccountSettings:
    options: dict[str, Any] = {
        # Only the client's own deadline can end a slow answer: the read timeout is longer.
        "read_timeout_s": 60.0,
        "request_deadline_s": 1.5,
        "max_attempts": 2,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.02,
        **overrides,
    }
    return account_settings(base_url, "hostile-key", pem, **options)


async def cancel_on(server: Hostile, pem: bytes, **overrides: Any) -> Any:
    async with ExchangeClient(settings(server.url, pem, **overrides)) as client:
        await client.sync_clock()
        return await client.cancel_order(7, SYMBOL)


@contextlib.asynccontextmanager
async def traced() -> AsyncIterator[Callable[[], int]]:
    """Python's allocations during the block: yields a function giving the peak in bytes."""
    tracemalloc.start()
    peak = 0
    try:
        yield lambda: peak
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


async def forever(server: Hostile, writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Write ``data`` again and again until the client hangs up."""
    while not writer.is_closing():
        server.write(writer, data)
        await writer.drain()
    return False


# -- slow: only the client's own deadline ends these -----------------------------------------


@pytest.mark.parametrize("part", ["head", "body"])
async def test_a_trickled_answer_ends_at_the_attempt_deadline(part: str, pem: bytes) -> None:
    answer = framed(200, b'{"order_id":7}')
    split = answer.index(b"\r\n\r\n") + 4 if part == "body" else 5

    async def trickle(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
        server.write(writer, answer[:split])
        for byte in answer[split:-1]:  # never the last byte: only a deadline can end it
            if writer.is_closing():
                break
            await writer.drain()
            await asyncio.sleep(0.05)  # the hostile part: one byte per 50 ms
            server.write(writer, bytes([byte]))
        return await server.hold()

    async with Hostile(trickle) as server:
        result = await cancel_on(server, pem)
    assert (result.outcome, result.error) == (Outcome.FAILED, "AttemptDeadline")
    assert result.attempts >= 1


async def test_endless_interim_answers_are_refused_at_the_head_limit(pem: bytes) -> None:
    async def interim(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
        return await forever(server, writer, b"HTTP/1.1 100 Continue\r\n\r\n" * 64)

    async with Hostile(interim) as server:
        result = await cancel_on(server, pem, max_attempts=1)
    assert (result.outcome, result.error) == (Outcome.FAILED, "RemoteProtocolError")
    assert server.written < DEFAULT_LIMITS.head + SLACK


async def test_an_endless_body_without_length_is_refused_at_the_body_limit(pem: bytes) -> None:
    async def endless(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
        server.write(writer, b"HTTP/1.1 200 OK\r\n\r\n")
        return await forever(server, writer, b"x" * 65536)

    async with Hostile(endless) as server, traced() as peak:
        result = await cancel_on(server, pem, max_attempts=1, request_deadline_s=30.0)
    assert (result.outcome, result.error) == (Outcome.FAILED, "RemoteProtocolError")
    assert server.written < DEFAULT_LIMITS.body + SLACK
    assert peak() < 2 * DEFAULT_LIMITS.body  # one body's worth held, never a second copy


async def test_a_flood_of_one_byte_chunks_is_refused_at_the_chunk_limit(pem: bytes) -> None:
    async def chunks(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
        server.write(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        return await forever(server, writer, b"1\r\nx\r\n" * 4096)

    async with Hostile(chunks) as server, traced() as peak:
        result = await cancel_on(server, pem, max_attempts=1, request_deadline_s=30.0)
    assert (result.outcome, result.error) == (Outcome.FAILED, "RemoteProtocolError")
    assert server.written < 6 * DEFAULT_LIMITS.chunks + SLACK
    # The body so far is one byte a chunk, held in one buffer (not an object per chunk).
    assert peak() < 8 * 1024 * 1024


async def test_a_compression_bomb_is_refused_not_inflated(pem: bytes) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KiB

    async def zipped(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
        server.write(writer, framed(200, bomb, b"Content-Encoding: gzip\r\n"))
        return True

    async with Hostile(zipped) as server:
        result = await cancel_on(server, pem, max_attempts=1)
    assert (result.outcome, result.error) == (Outcome.FAILED, "RemoteProtocolError")
    assert all(h.get("accept-encoding") == "identity" for _, _, h in server.requests)


# -- out of step: never the answer to another request ----------------------------------------


async def rejected(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
    server.write(writer, framed(400, REJECTED_400))
    return True


async def test_a_stray_answer_on_an_idle_connection_is_never_the_next_answer(
    pem: bytes,
) -> None:
    stray = framed(200, b'{"order_id":7,"status":"CANCELED"}')

    async with Hostile(rejected) as server, ExchangeClient(settings(server.url, pem)) as client:
        await client.sync_clock()
        # The server speaks on the idle connection, unasked.
        (writer,) = server.writers
        writer.write(stray)
        await wait_for(lambda: server.closed_by_client == 1)
        result = await client.cancel_order(7, SYMBOL)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, RejectReason.INVALID_REQUEST)
    assert server.accepted == 2  # the cancel went on a new connection


async def test_bytes_after_a_complete_answer_discard_the_connection(pem: bytes) -> None:
    extra = framed(200, b'{"order_id":7,"status":"CANCELED"}')
    async with Hostile(rejected, after_time=extra) as server:
        result = await cancel_on(server, pem)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, RejectReason.INVALID_REQUEST)
    assert server.accepted == 2


# -- malformed heads: refused at once, not waited on -----------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",  # LF-only head
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",  # obs-fold
        b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 2\r\n\r\n{}",  # NUL
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["lf-only", "obs-fold", "nul", "two-lengths", "length-and-chunked", "http2"],
)
async def test_a_malformed_head_is_refused(answer: bytes, pem: bytes) -> None:
    async def malformed(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
        server.write(writer, answer)
        return await server.hold()  # the connection stays open: only a refusal ends it

    async with Hostile(malformed) as server:
        # A deadline far beyond the test's own timeout: only a refusal can end this.
        result = await cancel_on(server, pem, max_attempts=1, request_deadline_s=600.0)
    assert (result.outcome, result.error) == (Outcome.FAILED, "RemoteProtocolError")


# -- redirects ---------------------------------------------------------------------------------


async def test_a_redirect_to_another_host_is_rejected_not_followed(pem: bytes) -> None:
    async def never(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
        server.write(writer, framed(200, b'{"order_id":7}'))
        return True

    async with Hostile(never) as elsewhere:

        async def redirect(server: Hostile, writer: asyncio.StreamWriter, conn: int) -> bool:
            location = f"Location: {elsewhere.url}/coin/internal/v1/order\r\n".encode()
            server.write(writer, framed(307, b"", location))
            return True

        async with Hostile(redirect) as server:
            result = await cancel_on(server, pem)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, RejectReason.REDIRECT)
    assert elsewhere.accepted == 0


# -- what is sent ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8700/x\x00",
        "http://127.0.0.1:8700/x\x7f",
        "http://127.0.0.1:8700/#frag",
        "http://user:secret@127.0.0.1:8700",
        "http://127.0.0.1:8700/?q=1",
        "ftp://127.0.0.1:8700",
        "http://exa mple.com",
        "http://bücher.example",
    ],
)
def test_a_base_url_that_cannot_be_sent_is_refused_at_load(base_url: str, pem: bytes) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        settings(base_url, pem)
    shown = str(caught.value.errors(include_input=False, include_url=False))
    assert "secret" not in shown
