"""Differential test through the socket: the shipped transport against h11.

The same generated answers as ``tests/unit/test_http1_differential.py`` (valid, or
broken in a way both must refuse), written by a loopback server in the generated
pieces (each written and drained on its own, ``TCP_NODELAY``) and then the connection
closed. ``Http1Transport.send_raw`` and h11, fed the same pieces and the same end of
connection, must agree on accept or refuse and, when they accept, on status and body.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from killswitch.exchange.http1 import Http1Transport
from killswitch.exchange.transport import Phases
from tests.support.http1_answers import Verdict, answers, split, theirs

pytestmark = pytest.mark.integration

PHASES = Phases(connect=5.0, read=5.0, pool=5.0)


async def through_the_transport(pieces: list[bytes]) -> Verdict:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)  # let each piece go out on its own
        except ConnectionError:
            pass  # the transport refused early and hung up
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Http1Transport() as transport:
            try:
                status, body, _ = await transport.send_raw(
                    "GET", f"http://127.0.0.1:{port}/", {}, None, PHASES
                )
            except (httpx.RemoteProtocolError, httpx.ReadError):
                return Verdict(False)
            return Verdict(True, status, body)
    finally:
        server.close()
        await server.wait_closed()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_transport_agrees_with_h11(data: st.DataObject) -> None:
    answer, broken = data.draw(answers())
    pieces = data.draw(split(answer))
    mine = asyncio.run(through_the_transport(pieces))
    assert mine == theirs(pieces), (broken, answer)
