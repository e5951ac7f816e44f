"""The exchange client's HTTP/1.1 transport: asyncio sockets, framing by llhttp.

Why its own transport: the cancel path must end every attempt in a known outcome
within the client's deadline, whatever the server does. The transport keeps the
steps between "send" and ``transport.write`` (one ``bytes`` built by one join, one
write) and between ``data_received`` and the answer (the parser runs inside
``data_received`` and resolves the waiting future itself) few, and it decides itself
what a connection may be reused for. The byte-level framing (status line, headers,
Content-Length and chunked bodies, interim 1xx answers) is not ours: it is llhttp,
the parser of Node.js and aiohttp, through ``httptools``. :class:`AnswerReader`
adds what llhttp leaves to its caller: limits (head size, header count, body size,
chunk count, wire bytes), the HTTP versions and status codes accepted, refusing any
transfer or content coding other than chunked and identity (the client never asks
for compression, so an inflated answer is never held), and the keep-alive decision.

What it does: HTTP/1.1 over TCP or TLS, a keep-alive pool per transport keyed by
(scheme, host, port) with at most ``max_connections`` open connections (idle ones
reused last-in first-out, waiters served first-come first-served), responses framed by
``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the connection,
interim 1xx answers skipped, ``Connection: close`` and HTTP/1.0 honoured. A connection
is discarded, never reused, when anything is out of step: bytes arriving while it is
idle (an answer before the request), bytes after a complete answer, an answer cut
short, a timeout or a cancellation mid-answer. A request that fails on a *reused*
connection before any byte of the answer arrived (the server closed it while it was
idle) is sent once more on a fresh connection, unless the caller asked for
:class:`~killswitch.exchange.transport.StaleConnection` instead (``resend_stale=False``:
a signed request is signed anew, then sent with ``fresh=True``). Every request line
and header is checked before anything is written (:func:`request_bytes`). Errors are
httpx's exception types.

What it does not do: proxies, HTTP/2, redirects, cookies, authentication, HEAD
requests, request bodies other than bytes, streaming responses, compressed answers,
``Expect: 100-continue`` on its own, a write timeout of its own (the read timeout
covers the attempt, and the exchange client bounds each whole attempt by its deadline).
"""

from __future__ import annotations

import asyncio
import functools
import re
import select
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools
import httpx

from killswitch.exchange.transport import (
    FRESH_CONNECTION,
    RESEND_STALE,
    TRANSPORT_KINDS,
    AttemptDeadline,
    Phases,
    RawHeaders,
    StaleConnection,
    TransportKind,
    phases_of,
)

__all__ = [
    "DEFAULT_LIMITS",
    "AnswerReader",
    "Http1Transport",
    "Limits",
    "build_transport",
    "default_ssl_context",
    "request_bytes",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one answer may hold; beyond any of them it is refused (``RemoteProtocolError``).

    ``head``: bytes before the final answer's body (status line, headers and any interim
    1xx answers); ``headers``: header lines of one answer, interim ones and trailers
    included; ``body``: body bytes after de-chunking; ``chunks``: chunks in a chunked
    body (each costs a parser callback, so a flood of one-byte chunks is bounded in CPU
    as well as memory). The bytes on the wire for one answer are bounded too
    (:attr:`wire`): chunk-size lines, extensions and trailers count there.
    """

    head: int = 64 * 1024
    headers: int = 128
    body: int = 16 * 1024 * 1024
    chunks: int = 64 * 1024

    @property
    def wire(self) -> int:
        """Bytes on the wire for one answer: body, head, and 64 bytes of framing a chunk."""
        return self.body + 2 * self.head + 64 * self.chunks


DEFAULT_LIMITS = Limits()
_CHUNKED = b"chunked"
_IDENTITY = b"identity"


class _Stop(httpx.RemoteProtocolError):
    """Raised inside a parser callback to stop llhttp; re-raised by :meth:`AnswerReader.feed`."""


class AnswerReader:
    """One HTTP/1.x answer, read by llhttp (``httptools``) as its bytes arrive.

    :meth:`feed` returns True once the answer is complete (``status``, ``headers``
    as raw ``(name, value)`` byte pairs as received, ``body``); :meth:`feed_eof` ends an
    answer read until the connection closes. ``keep_alive`` says whether the
    connection may carry another request: False after ``Connection: close``, an
    HTTP/1.0 answer without keep-alive, a body read until close, or any byte after the
    complete answer. Malformed input and exceeded :class:`Limits` raise
    ``httpx.RemoteProtocolError``; after one, the reader is spent.
    """

    __slots__ = (
        "_body",
        "_chunks",
        "_count",
        "_final",
        "_head_bytes",
        "_head_done",
        "_headers",
        "_limits",
        "_parser",
        "_wire",
        "body",
        "complete",
        "headers",
        "keep_alive",
        "received",
        "status",
        "until_close",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._headers: RawHeaders = []  # of the message being read (interim or final)
        self._body = bytearray()
        self._head_done = False  # the final answer's head has been read
        self._final = False  # the message being read is the final answer
        self._count = 0  # header lines so far (interim answers and trailers too)
        self._head_bytes = 0  # status lines and header fields so far, as llhttp saw them
        self._chunks = 0
        self._wire = 0
        self.received = False  # any byte at all
        self.complete = False
        self.until_close = False  # the body runs to the end of the connection
        self.status = 0
        self.headers: RawHeaders = []
        self.body = b""
        self.keep_alive = True

    def feed(self, data: bytes) -> bool:
        """Take the next bytes; True once the answer is complete."""
        if not data:
            return self.complete
        self.received = True
        parser = self._parser
        if parser is None:  # complete already: these bytes belong to no request
            self.keep_alive = False
            return self.complete
        self._wire += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._parser = None
            if self.complete:
                self.keep_alive = False
                return True
            raise httpx.RemoteProtocolError("unexpected protocol upgrade") from None
        except httptools.HttpParserError as exc:
            self._parser = None
            if self.complete:  # what follows the answer is what broke: the answer stands
                self.keep_alive = False
                return True
            reason = exc.__context__
            if isinstance(reason, _Stop):  # ours, from a callback: callers see httpx's class
                raise httpx.RemoteProtocolError(str(reason)) from None
            raise httpx.RemoteProtocolError(f"malformed answer: {exc}") from None
        if self.complete:
            self._parser = None  # no cycle left between the reader and its parser
            return True
        limits = self._limits
        if not self._head_done and self._wire > limits.head:
            self._parser = None
            raise httpx.RemoteProtocolError("answer head too large")
        if self._wire > limits.wire:
            self._parser = None
            raise httpx.RemoteProtocolError("answer too large on the wire")
        return False

    def feed_eof(self) -> bool:
        """The peer closed: True if that completes the answer (a body read until close)."""
        if self.until_close and not self.complete:
            self.body = bytes(self._body)
            self._body = bytearray()
            self.complete = True
            self.keep_alive = False
            self._parser = None
        return self.complete

    # -- llhttp's callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Stop("bytes after the complete answer")
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._head_bytes += len(reason) + 16

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > self._limits.headers:
            raise _Stop("too many header lines in the answer")
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.head:
            raise _Stop("answer head too large")
        if not self._head_done:  # trailers are read (and counted) but not kept
            # llhttp drops leading whitespace of a value, not trailing (RFC 9110 5.5: both go).
            self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Stop(f"unsupported HTTP version {version[:8]!r}")
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            raise _Stop(f"status code {status} out of range")
        if status < 200:
            if status == 101:
                raise _Stop("unexpected 101 Switching Protocols")
            return  # interim answer (100 Continue, 103 Early Hints): skipped
        self._final = True
        self._head_done = True
        self.status = status
        self.headers = headers = self._headers
        self._frame(version == "1.0", status, headers)

    def _frame(self, http10: bool, status: int, headers: RawHeaders) -> None:
        """Keep-alive and body framing from the final answer's headers; codings refused."""
        chunked = False
        length = False
        tokens: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"transfer-encoding":
                if value.strip(b" \t").lower() != _CHUNKED:
                    raise _Stop("transfer coding other than chunked refused")
                chunked = True
            elif lname == b"content-length":
                length = True
                if int(value) > self._limits.body:  # llhttp checked the digits
                    raise _Stop("answer body too large")
            elif lname == b"content-encoding":
                if value.strip(b" \t").lower() != _IDENTITY:
                    raise _Stop("compressed answer refused (compression is never asked for)")
            elif lname == b"connection":
                tokens += (t.strip(b" \t").lower() for t in value.split(b","))
        if http10:
            self.keep_alive = b"keep-alive" in tokens
        else:
            self.keep_alive = b"close" not in tokens
        if not chunked and not length and status not in (204, 304):
            self.until_close = True
            self.keep_alive = False

    def on_chunk_header(self) -> None:
        self._chunks += 1
        if self._chunks > self._limits.chunks:
            raise _Stop("too many chunks in the answer")

    def on_body(self, data: bytes) -> None:
        body = self._body
        if len(body) + len(data) > self._limits.body:
            raise _Stop("answer body too large")
        body += data

    def on_message_complete(self) -> None:
        if not self._final:
            return  # the end of an interim answer
        self.body = bytes(self._body)
        self._body = bytearray()
        self.complete = True


# -- what is sent ---------------------------------------------------------------------------

# RFC 9110 5.6.2 token (methods and header names).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# origin-form target: "/" then visible ASCII except "#" (no fragment, no space, no
# controls), not "//" first (read as a network-path reference by some intermediaries).
_TARGET = re.compile(r"/(?!/)[!-\"$-~]*")
_DOT_SEGMENT = re.compile(r"/\.\.?(?:/|$)")
# What a request head may hold besides the CR LF that end its lines: visible ASCII,
# space and tab.
_PLAIN = bytes(range(0x20, 0x7F)) + b"\t"
# Header names already checked (the client's few repeat): True for one of _OWN_HEADERS.
_NAMES: dict[str, bool] = {}
# Headers whose value this transport sets itself (framing and connection management).
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# RFC 9110 8.6: send Content-Length: 0 for an empty body only where the method
# anticipates content (POST, PUT, PATCH); GET, DELETE, OPTIONS go without.
_EXPECTS_BODY = frozenset({"POST", "PUT", "PATCH"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host as it may appear in the Host header: a DNS name, IPv4 or a bracketed IPv6.
_HOST = re.compile(r"[A-Za-z0-9\-._~]+|\[[0-9A-Fa-f:.]+\]")


def request_bytes(
    method: str, target: str, host: str, headers: Iterable[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request as one ``bytes``: request line, Host, headers, framing, body.

    Checked the same way on every call, before anything is written: the method and
    header names are tokens, the target is an origin-form path and query of visible
    ASCII (no space, no fragment), header values are visible ASCII, space or tab.
    Anything else raises ``httpx.LocalProtocolError`` (values are not echoed: a header
    may hold a secret). ``HEAD`` is refused (its answer has no body to frame).
    """
    if method == "HEAD" or not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"unsupported request method {method[:20]!r}")
    if not _TARGET.fullmatch(target) or (
        "/." in target and _DOT_SEGMENT.search(target.partition("?")[0])
    ):
        raise httpx.LocalProtocolError("request target is not a plain ASCII path and query")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        own = _NAMES.get(name)
        if own is None:
            own = _check_name(name)
        if not own:
            lines.append(f"{name}: {value}\r\n")
    if body:
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    elif method in _EXPECTS_BODY:
        lines.append("Content-Length: 0\r\n\r\n")
    else:
        lines.append("\r\n")
    # Values in one pass: nothing but visible ASCII, space and tab, and CR LF only where
    # the lines above put them (each piece ends in one; the first and a framing one in
    # two). Deleting every allowed byte must leave exactly those CR LF pairs.
    breaks = len(lines) + (1 if lines[-1] == "\r\n" else 2)
    try:
        data = "".join(lines).encode("ascii")
    except UnicodeEncodeError:
        data = b""
    if not data or data.translate(None, _PLAIN) != b"\r\n" * breaks:
        raise httpx.LocalProtocolError(
            "a request header value holds a control or non-ASCII character"
        )
    return data + body if body else data


def _check_name(name: str) -> bool:
    """A header name must be a token; True when it is one of _OWN_HEADERS (not sent as
    given). Good names are remembered in _NAMES."""
    if not _TOKEN.fullmatch(name):
        raise httpx.LocalProtocolError(f"malformed request header name {name[:40]!r}")
    own = name.lower() in _OWN_HEADERS
    if len(_NAMES) < 256:
        _NAMES[name] = own
    return own


# -- connections ------------------------------------------------------------------------


# Methods a stale keep-alive connection may send again (RFC 9110 9.2.2, idempotent).
_RETRY_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})


class _NoAnswer(httpx.ReadError):
    """The connection ended (or failed to write) before any byte of the answer."""


@dataclass(frozen=True, slots=True)
class _Origin:
    key: tuple[str, str, int]  # (scheme, host, port): the pool key
    host: str  # for connecting (IPv6 without brackets)
    port: int
    host_header: str
    tls: bool


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parses answers in ``data_received``."""

    __slots__ = (
        "closed",
        "counted",
        "idle_since",
        "lost",
        "origin",
        "owner",
        "parser",
        "poller",
        "reused",
        "transport",
        "waiter",
    )

    def __init__(self, owner: Http1Transport, origin: _Origin) -> None:
        self.owner = owner
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.poller: select.poll | None = None  # readable-check before reuse, see quiet()
        self.parser: AnswerReader | None = None
        self.waiter: asyncio.Future[AnswerReader] | None = None
        self.closed = False
        self.counted = True  # holds one of the owner's max_connections slots
        self.reused = False  # has completed at least one exchange
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = owner._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not derive from asyncio's classes.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets it too; kept explicit because the small request must not wait.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Registered once per connection: each reuse is then one poll(0) call.
        self.poller = select.poll()  # not select.select: it fails for fd >= 1024
        self.poller.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # unsolicited bytes on an idle connection: unusable
            self.close()
            return
        try:
            done = parser.feed(data)
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)
            self.close()
            return
        if done:
            self.parser = None
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(parser)

    def eof_received(self) -> bool:
        return False  # close; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser, self.parser = self.parser, None
        if parser is not None:
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                error: httpx.TransportError
                if exc is None and (parser.until_close or parser.complete):
                    if parser.feed_eof():
                        parser.keep_alive = False
                        waiter.set_result(parser)
                elif parser.received:
                    error = httpx.RemoteProtocolError("server closed the connection mid-response")
                    error.__cause__ = exc
                    waiter.set_exception(error)
                else:
                    reason = f": {exc}" if exc else ""
                    error = _NoAnswer(f"connection closed before any response byte{reason}")
                    error.__cause__ = exc
                    waiter.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)
        self.owner._drop(self)

    def _fail(self, exc: BaseException) -> None:
        self.parser = None
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        """Discard: abort, no TLS close_notify wait (the peer may never answer it)."""
        transport = self.transport
        if transport is not None and not self.closed:
            self.closed = True
            transport.abort()

    def usable(self) -> bool:
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    def quiet(self) -> bool:
        """Idle and nothing unread in the socket (no early answer, EOF or TLS alert)."""
        return self.poller is None or not self.poller.poll(0)


def _expire(waiter: asyncio.Future[AnswerReader]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("read timeout"))


def _at_most(limit: float | None, left: float) -> float:
    return left if limit is None else min(limit, left)


def _deadline_passed(waiter: asyncio.Future[AnswerReader]) -> None:
    if not waiter.done():
        waiter.set_exception(AttemptDeadline("attempt deadline passed during the answer"))


def _pool_expire(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.PoolTimeout("timed out waiting for a pooled connection"))


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """``ssl.create_default_context()``, built once per process: it loads the system CA
    store from disk, which should not happen on each transport's first connection."""
    return ssl.create_default_context()


class Http1Transport(httpx.AsyncBaseTransport):
    """A native HTTP/1.1 keep-alive transport; httpx interface plus :meth:`send_raw`.

    ``max_connections`` caps the open connections (all origins together);
    ``keepalive_expiry_s`` closes connections idle for longer instead of reusing them;
    ``ssl_context`` is used for ``https`` (default: :func:`default_ssl_context`, one
    ``ssl.create_default_context()`` shared by the process); ``limits`` bound every
    answer (:class:`Limits`).
    Everything runs in the event loop of the first request; no background tasks.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max = max_connections
        self._limits = limits
        self._keepalive = keepalive_expiry_s
        self._ssl = ssl_context
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._conns: set[_Connection] = set()
        self._open = 0  # connections holding a slot (connecting, busy or idle)
        self._waiters: deque[tuple[tuple[str, str, int], asyncio.Future[_Connection | None]]] = (
            deque()
        )
        self._closed = False

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_ref
        if loop is None:
            loop = self._loop_ref = asyncio.get_running_loop()
        return loop

    # -- the two entry points -------------------------------------------------------------

    async def send_raw(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        phases: Phases,
        *,
        deadline: float | None = None,
        resend_stale: bool = True,
        fresh: bool = False,
    ) -> tuple[int, bytes, RawHeaders]:
        """The fast path: prepared request in, ``(status, body bytes, raw headers)`` out.

        ``url`` is sent as given (already percent-encoded); ``headers`` except the
        framing ones (Host, Content-Length, Transfer-Encoding, Connection, set here);
        ``body`` bytes or None. Errors are httpx's exceptions (no request attached).
        A compressed answer (never asked for) is refused (``RemoteProtocolError``).
        ``resend_stale=False``: a reused connection found closed before any byte of
        the answer raises :class:`StaleConnection` instead of sending the same bytes
        again; ``fresh=True`` opens a new connection instead of reusing an idle one.
        ``deadline`` (``loop.time()`` clock) ends the whole exchange: the read timer runs
        to it when it comes before the read timeout (then :class:`AttemptDeadline`), and
        the pool wait and connect are capped to it.
        """
        # Up to the first "/" after "https://x" is scheme://host[:port] when the URL has a
        # path (a host cannot hold "/"); anything else ("?" first, not cached yet) is parsed.
        slash = url.find("/", 8)
        cached = self._origins.get(url[:slash]) if slash > 0 else None
        if cached is None:
            origin, target = self._locate(url)
        else:
            origin, target = cached, url[slash:]
        parser = await self._exchange(
            origin,
            method,
            target,
            headers.items(),
            body,
            phases=phases,
            deadline=deadline,
            resend_stale=resend_stale,
            fresh=fresh,
        )
        return parser.status, parser.body, parser.headers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one httpx request and return the fully read response."""
        url = request.url
        origin = self._origin(f"{url.scheme}://{url.netloc.decode('ascii')}")
        body = await request.aread()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw
        ]
        try:
            parser = await self._exchange(
                origin,
                request.method,
                url.raw_path.decode("ascii"),
                headers,
                body or None,
                phases=phases_of(request.extensions.get("timeout")),
                resend_stale=request.extensions.get(RESEND_STALE, True) is not False,
                fresh=request.extensions.get(FRESH_CONNECTION, False) is True,
            )
        except httpx.TransportError as exc:
            exc.request = request
            raise
        return httpx.Response(
            parser.status, headers=parser.headers, content=parser.body, request=request
        )

    async def aclose(self) -> None:
        """Close every connection; later requests raise ``httpx.TransportError``."""
        self._closed = True
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(httpx.TransportError("transport is closed"))
        self._waiters.clear()
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        self._idle.clear()
        pending = [conn.lost for conn in conns if conn.transport is not None]
        if pending:
            # Bounded: a TLS peer that never answers our close must not hang shutdown.
            await asyncio.wait(pending, timeout=2.0)

    # -- one exchange ----------------------------------------------------------------------

    def _locate(self, url: str) -> tuple[_Origin, str]:
        """(origin, request target) of a URL, parsed; a fragment is refused."""
        if "#" in url:
            raise httpx.UnsupportedProtocol("a URL with a fragment is not sent")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise httpx.UnsupportedProtocol(f"invalid URL {url!r}: {exc}") from None
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        return self._origin(f"{parts.scheme}://{parts.netloc}"), target

    def _origin(self, prefix: str) -> _Origin:
        """The origin of ``scheme://netloc``, cached under that string."""
        cached = self._origins.get(prefix)
        if cached is not None:
            return cached
        try:
            parts = urlsplit(prefix)
            port = parts.port
        except ValueError as exc:
            raise httpx.UnsupportedProtocol(f"invalid URL: {exc}") from None
        scheme = parts.scheme.lower()
        host = parts.hostname
        if parts.username or parts.password:  # never echoed: they may be secrets
            raise httpx.UnsupportedProtocol("credentials in the URL are not supported")
        if scheme not in _DEFAULT_PORTS or not host:
            raise httpx.UnsupportedProtocol(f"unsupported URL {prefix!r} (http(s)://host[:port])")
        default = _DEFAULT_PORTS[scheme]
        port = default if port is None else port
        shown = f"[{host}]" if ":" in host else host
        if not _HOST.fullmatch(shown):
            raise httpx.UnsupportedProtocol("unusable host name in the URL")
        origin = _Origin(
            key=(scheme, host, port),
            host=host,
            port=port,
            host_header=shown if port == default else f"{shown}:{port}",
            tls=scheme == "https",
        )
        self._origins[prefix] = origin
        return origin

    async def _exchange(
        self,
        origin: _Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        *,
        phases: Phases,
        deadline: float | None = None,
        resend_stale: bool = True,
        fresh: bool = False,
    ) -> AnswerReader:
        """Send on a pooled connection; once more on a fresh one if a reused one was stale
        (or :class:`StaleConnection` without ``resend_stale``)."""
        data = request_bytes(method, target, origin.host_header, headers, body)
        conn = await self._acquire(origin, self._capped(phases, deadline), fresh=fresh)
        read = phases.read
        started = self._loop.time()
        try:
            return await self._roundtrip(conn, data, read, deadline)
        except _NoAnswer as exc:
            if not conn.reused or method not in _RETRY_SAFE:
                raise httpx.ReadError(str(exc)) from exc.__cause__
            if not resend_stale:
                raise StaleConnection(f"stale keep-alive connection: {exc}") from exc.__cause__
        # A kept-alive connection the server had closed: one retry, on a new connection,
        # within what is left of the same read budget (the caller's deadline holds). The
        # same bytes go again (same signature and timestamp, a few ms older): only for
        # methods whose repetition is harmless, and only when the caller allows it (the
        # exchange client does not: an exchange with replay protection would refuse the
        # repeated signature, so it signs the request anew).
        if read is not None:
            read -= self._loop.time() - started
            if read <= 0:
                raise httpx.ReadTimeout("read timeout (stale connection, no time to retry)")
        conn = await self._acquire(origin, self._capped(phases, deadline), fresh=True)
        try:
            return await self._roundtrip(conn, data, read, deadline)
        except _NoAnswer as exc:  # callers see httpx's own class (its name is reported)
            raise httpx.ReadError(str(exc)) from exc.__cause__

    def _capped(self, phases: Phases, deadline: float | None) -> Phases:
        """``phases`` with the pool wait and connect ending by ``deadline`` at the latest."""
        if deadline is None:
            return phases
        left = deadline - self._loop.time()
        if left <= 0:
            raise AttemptDeadline("attempt deadline passed before the request was sent")
        connect, pool = phases.connect, phases.pool
        if connect is not None and connect <= left and pool is not None and pool <= left:
            return phases
        return Phases(_at_most(connect, left), phases.read, _at_most(pool, left))

    def _read_timer(
        self, waiter: asyncio.Future[AnswerReader], read: float | None, deadline: float | None
    ) -> asyncio.TimerHandle | None:
        """One timer for the answer: the read timeout, or the deadline when that is sooner."""
        loop = self._loop
        if deadline is not None and (read is None or loop.time() + read > deadline):
            return loop.call_at(deadline, _deadline_passed, waiter)
        return None if read is None else loop.call_later(read, _expire, waiter)

    async def _roundtrip(
        self, conn: _Connection, data: bytes, read: float | None, deadline: float | None = None
    ) -> AnswerReader:
        transport = conn.transport
        if transport is None or not conn.usable():
            conn.close()
            self._drop(conn)
            raise _NoAnswer("connection closed before the request was written")
        parser = AnswerReader(self._limits)
        waiter: asyncio.Future[AnswerReader] = self._loop.create_future()
        conn.parser = parser
        conn.waiter = waiter
        transport.write(data)
        timer = self._read_timer(waiter, read, deadline)
        try:
            await waiter
        except BaseException:
            # Timeout, error or cancellation: the answer is unread, never reuse this one.
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved: no "never retrieved" log
            conn.parser = None
            conn.waiter = None
            conn.close()
            self._drop(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if parser.keep_alive and conn.usable():
            self._release(conn)
        else:
            conn.close()
            self._drop(conn)
        return parser

    # -- the pool ------------------------------------------------------------------------

    async def _acquire(  # noqa: PLR0912 - the pool's cases in one place
        self, origin: _Origin, phases: Phases, *, fresh: bool
    ) -> _Connection:
        """An idle connection to ``origin`` (newest first), a new one, or wait for a slot."""
        if self._closed:
            raise httpx.TransportError("transport is closed")
        if not fresh:
            idle = self._idle.get(origin.key)
            if idle:
                now = self._loop.time()
                while idle:
                    conn = idle.pop()
                    if conn.usable() and now - conn.idle_since <= self._keepalive and conn.quiet():
                        return conn
                    conn.close()
                    self._drop(conn)
        if self._open < self._max and not self._waiters:
            self._open += 1
            return await self._connect(origin, phases.connect)
        if self._open >= self._max and not self._waiters:
            self._evict_idle()  # an idle connection to another origin gives way
            if self._open < self._max:
                self._open += 1
                return await self._connect(origin, phases.connect)
        waiter: asyncio.Future[_Connection | None] = self._loop.create_future()
        entry = (origin.key, waiter)
        self._waiters.append(entry)
        timer = (
            None
            if phases.pool is None
            else self._loop.call_later(phases.pool, _pool_expire, waiter)
        )
        try:
            granted = await waiter
        except BaseException:
            # Timed out or cancelled; if a slot or connection was granted meanwhile, give it back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if granted is not None:
            if granted.usable() and not fresh and granted.quiet():
                return granted
            # Unusable (or a new one is wanted): keep its slot for a new connection ...
            owned = self._forget(granted)
            granted.close()
            if not owned:  # ... unless it was lost meanwhile and its slot freed: queue again
                return await self._acquire(origin, phases, fresh=fresh)
        return await self._connect(origin, phases.connect)

    def _give_back(self, granted: _Connection | None) -> None:
        if granted is None:
            self._open -= 1
            self._wake()
        else:
            self._release(granted)

    async def _connect(self, origin: _Origin, limit_s: float | None) -> _Connection:
        """Open a connection for a slot already counted in ``_open``."""
        conn = _Connection(self, origin)
        self._conns.add(conn)
        tls: ssl.SSLContext | None = None
        if origin.tls:
            tls = self._ssl
            if tls is None:
                tls = self._ssl = default_ssl_context()
        try:
            async with asyncio.timeout(limit_s):
                await self._loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls is not None else None,
                )
        except BaseException as exc:
            conn.closed = True
            self._drop(conn)
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"connect to {origin.host_header} timed out") from exc
            if isinstance(exc, (OSError, ValueError)):  # ValueError/UnicodeError: bad host name
                raise httpx.ConnectError(f"connect to {origin.host_header}: {exc}") from exc
            raise
        if self._closed:  # closed while connecting
            conn.close()
            raise httpx.TransportError("transport is closed")
        return conn

    def _release(self, conn: _Connection) -> None:
        """A connection whose answer was read completely: to a waiter, or idle."""
        conn.reused = True
        while self._waiters:
            key, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if key == conn.origin.key:
                waiter.set_result(conn)
                return
            # The first waiter wants another origin: this connection makes way for it.
            self._waiters.appendleft((key, waiter))
            conn.close()
            self._drop(conn)
            return
        if self._closed:
            conn.close()
            return
        conn.idle_since = self._loop.time()
        self._idle.setdefault(conn.origin.key, []).append(conn)

    def _drop(self, conn: _Connection) -> None:
        """A connection is gone or going: forget it and free its slot (idempotent)."""
        if self._forget(conn):
            self._open -= 1
            self._wake()

    def _forget(self, conn: _Connection) -> bool:
        """Stop tracking ``conn``; True if it held a slot (which the caller now owns)."""
        if not conn.counted:
            return False
        conn.counted = False
        self._conns.discard(conn)
        idle = self._idle.get(conn.origin.key)
        if idle and conn in idle:
            idle.remove(conn)
        return True

    def _wake(self) -> None:
        """A slot is free: grant it to the first live waiter (counted on its behalf)."""
        while self._waiters and self._open < self._max:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)

    def _evict_idle(self) -> None:
        """Close one idle connection (the oldest) to free a slot for another origin."""
        oldest: _Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            oldest.close()
            self._drop(oldest)


def build_transport(
    kind: TransportKind = "http1",
    *,
    max_connections: int,
    keepalive_expiry_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncBaseTransport:
    """The exchange transport: a keep-alive pool of ``max_connections``."""
    if kind != "http1":
        raise ValueError(
            f"unknown transport {kind!r}; expected one of {', '.join(TRANSPORT_KINDS)}"
        )
    return Http1Transport(
        max_connections=max_connections,
        keepalive_expiry_s=keepalive_expiry_s,
        ssl_context=ssl_context,
    )
