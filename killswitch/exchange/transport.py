"""HTTP transports for the exchange client: httpx's own, one backed by aiohttp, or ours.

The client always speaks the httpx interface (``httpx.AsyncClient`` with a
``transport=``); only the transport underneath changes. Measured on loopback
(``python -m bench client_transport``, figures in ``docs/CLIENT.md``), httpx's own
connection pool loses throughput as concurrency rises, the aiohttp-backed transport
keeps up, and our own ``http1`` is faster still and the shortest path from an alert to
its first cancel (``python -m bench alert_latency``), so ``http1`` is the default.

:class:`AiohttpTransport` is a small ``httpx.AsyncBaseTransport``: it sends the
request's method, URL (already percent-encoded, sent as is), headers and body bytes
through one ``aiohttp.ClientSession`` with a keep-alive connection pool, and turns
aiohttp's exceptions into httpx's, so the client translates one family only. Its
:meth:`AiohttpTransport.send_raw` is the exchange client's fast path: prepared method,
URL string, headers and body bytes in, ``(status, body bytes, raw headers)`` out, the
same httpx exceptions, and no ``httpx.Request``/``httpx.Response`` built (their URL parsing and
models were a third of the client's CPU per cancel). Any other transport goes through
``handle_async_request`` as usual.

:class:`~killswitch.exchange.http1.Http1Transport` (``"http1"``) is a native HTTP/1.1
client on ``asyncio.Protocol`` with the same fast path (the :class:`RawTransport`
protocol); both take their per-phase timeouts as :class:`Phases`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
import httpx
from yarl import URL

# Response headers as raw (name, value) byte pairs, as received (names in any case).
RawHeaders = list[tuple[bytes, bytes]]

TransportKind = Literal["http1", "aiohttp", "httpx"]
TRANSPORT_KINDS: tuple[TransportKind, ...] = ("http1", "aiohttp", "httpx")

# httpx sets these from the body; aiohttp computes its own framing for a bytes body.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class Phases:
    """Per-phase timeouts in seconds (httpx's ``connect``/``read``/``pool``; None: no limit).

    ``write`` has no counterpart: the read timeout of the same attempt covers it.
    """

    connect: float | None = None
    read: float | None = None
    pool: float | None = None


class StaleConnection(httpx.ReadError):
    """A reused keep-alive connection ended before any byte of the answer (the server
    had closed it while idle). Raised instead of sending the same bytes again when the
    caller asked so (``resend_stale=False``): a signed request must be signed anew (a
    fresh timestamp) before it goes out again, on a fresh connection (``fresh=True``)."""


# The httpx request extensions the generic path honours on our own transports.
RESEND_STALE = "killswitch.resend_stale"
FRESH_CONNECTION = "killswitch.fresh_connection"


def header(headers: RawHeaders, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case bytes), decoded, or None."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RawTransport(Protocol):
    """A transport with the exchange client's fast path (see :meth:`AiohttpTransport.send_raw`)."""

    async def send_raw(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        phases: Phases,
        *,
        resend_stale: bool = True,
        fresh: bool = False,
    ) -> tuple[int, bytes, RawHeaders]:
        """Send prepared bytes, return ``(status, body bytes, raw headers)``; httpx's exceptions.

        ``resend_stale=False``: a stale keep-alive connection raises
        :class:`StaleConnection` instead of sending the same bytes again; ``fresh``:
        use a new connection, not an idle one.
        """
        ...


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends requests with aiohttp.

    ``max_connections`` caps the pool, ``keepalive_expiry_s`` closes idle
    connections. Per-request timeouts come from the request's ``timeout``
    extension (httpx's per-phase ``connect``/``read``/``pool``; ``write`` has no
    aiohttp counterpart and is covered by the read timeout of the same attempt).
    The session is created on first use, inside the running event loop.
    """

    def __init__(self, *, max_connections: int = 100, keepalive_expiry_s: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive = keepalive_expiry_s
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # The last Phases seen by send_raw and its ClientTimeout: the client passes the
        # same Phases object while the deadline does not cap it, so this costs nothing.
        self._phases: Phases | None = None
        self._client_timeout = aiohttp.ClientTimeout()

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise httpx.TransportError("transport is closed")
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=self._keepalive,
            ttl_dns_cache=60,
        )
        # auto_decompress off: httpx decodes Content-Encoding itself from the raw bytes.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request and return the fully read response."""
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower().decode("latin-1") not in _FRAMING_HEADERS
        ]
        status, raw_headers, content = await self._send(
            request.method,
            str(request.url),
            headers,
            request.content or None,
            phases=_timeout(request.extensions.get("timeout")),
            request=request,
        )
        return httpx.Response(status, headers=raw_headers, content=content, request=request)

    async def send_raw(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        phases: Phases,
        *,
        resend_stale: bool = True,
        fresh: bool = False,
    ) -> tuple[int, bytes, RawHeaders]:
        """The fast path: send prepared bytes, return ``(status, body bytes, raw headers)``.

        For callers that already hold the exact request (the exchange client): the
        method, the URL string (already percent-encoded, sent as is), the headers
        and the body bytes, without building ``httpx.Request``/``httpx.Response``
        (their URL parsing and header models cost more CPU than the rest of a
        loopback request). ``phases`` are the per-phase timeouts, mapped onto
        aiohttp's as :meth:`handle_async_request` maps httpx's timeout extension. Errors
        are the same httpx exceptions
        :meth:`handle_async_request` raises (without a
        ``request`` attached). A compressed answer is decoded as httpx would.

        ``resend_stale`` and ``fresh`` are accepted for the protocol's sake: aiohttp
        manages its pool itself (it re-sends an idempotent request once when a reused
        connection was closed by the server; the ``http1`` transport does not, for
        signed requests).
        """
        if phases is not self._phases:
            if phases != self._phases:
                self._client_timeout = aiohttp_timeout(phases)
            self._phases = phases
        status, raw_headers, content = await self._send(
            method, url, headers, body, phases=self._client_timeout, request=None
        )
        if content and any(name.lower() == b"content-encoding" for name, _ in raw_headers):
            # Rare (the client never asks for compression): let httpx decode it.
            decoded = httpx.Response(status, headers=raw_headers, content=content).content
            return status, decoded, raw_headers
        return status, content, raw_headers

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes | None,
        *,
        phases: aiohttp.ClientTimeout,
        request: httpx.Request | None,
    ) -> tuple[int, RawHeaders, bytes]:
        """One exchange over the pool; aiohttp's errors raised as httpx's."""
        session = self._session or self._open()
        try:
            async with session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=phases,
            ) as response:
                content = await response.read()
                return response.status, list(response.raw_headers), content
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
        except TimeoutError as exc:  # aiohttp's socket read timeout, or the pool wait
            raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientResponseError as exc:  # malformed status line or headers
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc

    async def aclose(self) -> None:
        """Close the session and its pooled connections."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def phases_of(spec: Any) -> Phases:
    """httpx's per-phase timeout extension (a dict, or absent) as :class:`Phases`."""
    if not isinstance(spec, dict):
        return Phases()
    return Phases(spec.get("connect"), spec.get("read"), spec.get("pool"))


def _timeout(spec: Any) -> aiohttp.ClientTimeout:
    """httpx's per-phase timeout extension as an aiohttp ClientTimeout."""
    return aiohttp_timeout(phases_of(spec))


def aiohttp_timeout(phases: Phases) -> aiohttp.ClientTimeout:
    """Per-phase timeouts (``write`` has no counterpart) as an aiohttp ClientTimeout."""
    connect, pool = phases.connect, phases.pool
    # aiohttp's `connect` covers waiting for a pooled connection plus connecting.
    total_connect = None if connect is None or pool is None else connect + pool
    return aiohttp.ClientTimeout(
        total=None, connect=total_connect, sock_connect=connect, sock_read=phases.read
    )


def build_transport(
    kind: TransportKind, *, max_connections: int, keepalive_expiry_s: float = 30.0
) -> httpx.AsyncBaseTransport:
    """A keep-alive transport of the given kind with a pool of ``max_connections``."""
    if kind == "http1":
        from killswitch.exchange.http1 import Http1Transport  # noqa: PLC0415 - it imports Phases from here

        return Http1Transport(
            max_connections=max_connections, keepalive_expiry_s=keepalive_expiry_s
        )
    if kind == "aiohttp":
        return AiohttpTransport(
            max_connections=max_connections, keepalive_expiry_s=keepalive_expiry_s
        )
    if kind == "httpx":
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry_s,
        )
        return httpx.AsyncHTTPTransport(limits=limits, retries=0)
    raise ValueError(f"unknown transport {kind!r}; expected one of {', '.join(TRANSPORT_KINDS)}")
