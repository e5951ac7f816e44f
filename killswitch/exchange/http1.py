"""A lean native HTTP/1.1 client transport on ``asyncio.Protocol``.

Why: on a busy two-core machine, code that has not run for a few milliseconds runs
10-20x slower (cold caches), and aiohttp's request path costs 200-300 µs cold before
the bytes are written. This transport keeps the steps between "send" and
``transport.write`` (one ``bytes`` built by one join, one write), and between
``data_received`` and the answer (the parser runs inside ``data_received`` and
resolves the waiting future itself), as few as possible.

What it does: HTTP/1.1 over TCP or TLS, a keep-alive pool per transport keyed by
(scheme, host, port) with at most ``max_connections`` open connections (idle ones
reused last-in first-out, waiters served first-come first-served), responses framed by
``Content-Length``, ``Transfer-Encoding: chunked`` (extensions and trailers) or the
end of the connection, interim 1xx answers skipped, ``Connection: close`` and HTTP/1.0
honoured. A request that fails on a *reused* connection before any byte of the answer
arrived (the server closed it while it was idle) is sent once more on a fresh
connection, unless the caller asked for :class:`~killswitch.exchange.transport.StaleConnection`
instead (``resend_stale=False``: a signed request is signed anew, then sent with
``fresh=True``). Errors are httpx's exception types, like :class:`AiohttpTransport`'s.

What it does not do: proxies, HTTP/2, redirects, cookies, authentication, request
bodies other than bytes, streaming responses, ``Expect: 100-continue`` on its own,
a write timeout of its own (the read timeout covers the attempt).
"""

from __future__ import annotations

import asyncio
import functools
import select
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from killswitch.exchange.transport import (
    FRESH_CONNECTION,
    RESEND_STALE,
    Phases,
    RawHeaders,
    StaleConnection,
    phases_of,
)

__all__ = ["MAX_BODY", "MAX_HEAD", "Http1Transport", "ResponseParser"]

MAX_HEAD = 64 * 1024  # status line + headers (+ interim answers and trailers)
MAX_BODY = 64 * 1024 * 1024
_MAX_CHUNK_LINE = 4096

# Headers whose value this transport sets itself (framing and connection management).
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# RFC 9110 8.6: send Content-Length: 0 for an empty body only where the method
# anticipates content (POST, PUT, PATCH); GET, HEAD, DELETE, OPTIONS go without.
_EXPECTS_BODY = frozenset({"POST", "PUT", "PATCH"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE, _DONE = range(7)


class ResponseParser:
    """Incremental parser of one HTTP/1.x response, fed bytes as they arrive.

    :meth:`feed` returns True once the response is complete (``status``, ``headers``
    as raw ``(name, value)`` byte pairs, ``body``); :meth:`feed_eof` ends a response
    read until the connection closes. ``keep_alive`` says whether the connection may
    carry another request. Malformed input and exceeded limits raise
    ``httpx.RemoteProtocolError``.
    """

    __slots__ = (
        "_buf",
        "_head_bytes",
        "_max_body",
        "_max_head",
        "_no_body",
        "_parts",
        "_remaining",
        "_size",
        "_state",
        "body",
        "encoded",
        "headers",
        "keep_alive",
        "received",
        "status",
    )

    def __init__(
        self, *, head_request: bool = False, max_head: int = MAX_HEAD, max_body: int = MAX_BODY
    ) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._no_body = head_request
        self._max_head = max_head
        self._max_body = max_body
        self._head_bytes = 0  # head, interim heads and trailers so far
        self._remaining = 0
        self._size = 0  # body bytes so far (chunked)
        self._parts: list[bytes] = []
        self.received = False  # any byte at all
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True
        self.encoded = False  # a Content-Encoding header was present

    @property
    def complete(self) -> bool:
        """The whole response has been read."""
        return self._state == _DONE

    @property
    def until_close(self) -> bool:
        """The body runs to the end of the connection."""
        return self._state == _UNTIL_CLOSE

    def feed(self, data: bytes) -> bool:  # noqa: PLR0912, PLR0915 - one flat loop, few calls
        """Take the next bytes; True once the response is complete."""
        if data:
            self.received = True
        buf = self._buf
        buf += data
        state = self._state
        while True:
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if self._head_bytes + len(buf) > self._max_head:
                        raise httpx.RemoteProtocolError("response head too large")
                    return False
                self._head_bytes += end + 4
                if self._head_bytes > self._max_head:
                    raise httpx.RemoteProtocolError("response head too large")
                head = bytes(buf[:end])
                del buf[: end + 4]
                state = self._state = self._parse_head(head)
                if state == _DONE:  # no body (HEAD, 204, 304)
                    return self._finish(consumed=0)
            elif state == _LENGTH:
                remaining = self._remaining
                if len(buf) < remaining:
                    return False
                self.body = bytes(buf[:remaining])
                return self._finish()
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise httpx.RemoteProtocolError("chunk size line too long")
                    return False
                size = _chunk_size(bytes(buf[:end]))
                del buf[: end + 2]
                if size == 0:
                    state = self._state = _TRAILERS
                else:
                    self._size += size
                    if self._size > self._max_body:
                        raise httpx.RemoteProtocolError("response body too large")
                    self._remaining = size
                    state = self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                remaining = self._remaining
                if len(buf) < remaining + 2:
                    return False
                if buf[remaining : remaining + 2] != b"\r\n":
                    raise httpx.RemoteProtocolError("chunk data not followed by CRLF")
                self._parts.append(bytes(buf[:remaining]))
                del buf[: remaining + 2]
                state = self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if self._head_bytes + len(buf) > self._max_head:
                        raise httpx.RemoteProtocolError("trailers too large")
                    return False
                self._head_bytes += end + 2
                if self._head_bytes > self._max_head:
                    raise httpx.RemoteProtocolError("trailers too large")
                if end == 0:
                    del buf[:2]
                    self.body = b"".join(self._parts)
                    self._parts = []
                    return self._finish(consumed=0)
                line = bytes(buf[:end])
                del buf[: end + 2]
                _header(line)  # validated, then dropped: trailers are not merged
            elif state == _UNTIL_CLOSE:
                if len(buf) > self._max_body:
                    raise httpx.RemoteProtocolError("response body too large")
                return False
            else:  # _DONE, fed again: bytes after a complete answer make it unusable
                if buf:
                    buf.clear()
                    self.keep_alive = False
                return True

    def feed_eof(self) -> bool:
        """The peer closed: True if that completes the response (read until close)."""
        if self._state == _UNTIL_CLOSE:
            self.body = bytes(self._buf)
            self._buf.clear()
            self._state = _DONE
            return True
        return self._state == _DONE

    def _finish(self, consumed: int | None = None) -> bool:
        """The response is complete; anything left over makes the connection unusable."""
        buf = self._buf
        if consumed is None:
            consumed = self._remaining
        if len(buf) > consumed:
            self.keep_alive = False
        buf.clear()
        self._state = _DONE
        return True

    def _parse_head(self, head: bytes) -> int:  # noqa: PLR0912, PLR0915 - one pass, inline
        """Status line and headers; the next state."""
        lines = head.split(b"\r\n")
        newlines = len(lines) - 1
        if head.count(b"\n") != newlines or head.count(b"\r") != newlines:
            raise httpx.RemoteProtocolError("bare CR or LF in the response head")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2:
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}")
        version, code = parts[0], parts[1]
        if version == b"HTTP/1.1":
            http10 = False
        elif version == b"HTTP/1.0":
            http10 = True
        else:
            raise httpx.RemoteProtocolError(f"unsupported HTTP version {version[:20]!r}")
        if len(code) != 3 or not code.isdigit() or code[0] == 0x30:
            raise httpx.RemoteProtocolError(f"malformed status code {code[:20]!r}")
        status = int(code)
        headers: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        codings: list[bytes] = []
        tokens: list[bytes] = []
        encoded = False
        for line in lines[1:]:
            name, value = _header(line)
            headers.append((name, value))
            lname = name.lower()
            if lname == b"content-length":
                if length is not None and value != length:
                    length = b"," + length + b"," + value  # compared below
                else:
                    length = value
            elif lname == b"transfer-encoding":
                codings += (c.strip(b" \t").lower() for c in value.split(b","))
            elif lname == b"connection":
                tokens += (t.strip(b" \t").lower() for t in value.split(b","))
            elif lname == b"content-encoding":
                encoded = True
        if status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
            return _HEAD  # interim answer (100 Continue, 103 Early Hints): skipped
        self.status = status
        self.headers = headers
        self.encoded = encoded
        if http10:
            self.keep_alive = b"keep-alive" in tokens
        else:
            self.keep_alive = b"close" not in tokens
        if self._no_body or status in (204, 304):
            return _DONE
        if codings:
            if length is not None:
                self.keep_alive = False  # both framings: trust chunked, do not reuse
            if codings[-1] == b"chunked":
                return _CHUNK_SIZE
            self.keep_alive = False
            return _UNTIL_CLOSE
        if length is not None:
            size = _content_length(length)
            if size > self._max_body:
                raise httpx.RemoteProtocolError("response body too large")
            self._remaining = size
            return _LENGTH
        self.keep_alive = False
        return _UNTIL_CLOSE


def _header(line: bytes) -> tuple[bytes, bytes]:
    """One ``name: value`` line as (name, value without surrounding whitespace)."""
    name, colon, value = line.partition(b":")
    if not colon or not name or name[-1] in b" \t" or name[0] in b" \t":
        raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
    return name, value.strip(b" \t")


def _content_length(value: bytes) -> int:
    """Content-Length: digits; repeated identical values (``5, 5``) are accepted."""
    sizes = {v.strip(b" \t") for v in value.split(b",") if v.strip(b" \t")}
    if len(sizes) != 1:
        raise httpx.RemoteProtocolError(f"conflicting Content-Length {value[:60]!r}")
    (size,) = sizes
    if not size.isdigit() or len(size) > 18:
        raise httpx.RemoteProtocolError(f"malformed Content-Length {value[:60]!r}")
    return int(size)


def _chunk_size(line: bytes) -> int:
    """The size on a chunk line (``1a;ext=v``); extensions are ignored."""
    digits = line.split(b";", 1)[0].strip(b" \t")
    if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
        raise httpx.RemoteProtocolError(f"malformed chunk size line {line[:60]!r}")
    return int(digits, 16)


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
        self.parser: ResponseParser | None = None
        self.waiter: asyncio.Future[ResponseParser] | None = None
        self.closed = False
        self.counted = True  # holds one of the owner's max_connections slots
        self.reused = False  # has completed at least one exchange
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = owner._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
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


def _expire(waiter: asyncio.Future[ResponseParser]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("read timeout"))


def _pool_expire(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.PoolTimeout("timed out waiting for a pooled connection"))


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """``ssl.create_default_context()``, built once per process: it loads the system CA
    store (~20 ms here), which should not happen on each transport's first connection."""
    return ssl.create_default_context()


class Http1Transport(httpx.AsyncBaseTransport):
    """A native HTTP/1.1 keep-alive transport; httpx interface plus :meth:`send_raw`.

    ``max_connections`` caps the open connections (all origins together);
    ``keepalive_expiry_s`` closes connections idle for longer instead of reusing them;
    ``ssl_context`` is used for ``https`` (default: :func:`default_ssl_context`, one
    ``ssl.create_default_context()`` shared by the process).
    Everything runs in the event loop of the first request; no background tasks.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max = max_connections
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
        resend_stale: bool = True,
        fresh: bool = False,
    ) -> tuple[int, bytes, RawHeaders]:
        """The fast path: prepared request in, ``(status, body bytes, raw headers)`` out.

        ``url`` is sent as given (already percent-encoded); ``headers`` except the
        framing ones (Host, Content-Length, Transfer-Encoding, Connection, set here);
        ``body`` bytes or None. Errors are httpx's exceptions (no request attached).
        A compressed answer (never asked for) is decoded as httpx would.
        ``resend_stale=False``: a reused connection found closed before any byte of
        the answer raises :class:`StaleConnection` instead of sending the same bytes
        again; ``fresh=True`` opens a new connection instead of reusing an idle one.
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
            resend_stale=resend_stale,
            fresh=fresh,
        )
        if parser.encoded and parser.body:
            decoded = httpx.Response(parser.status, headers=parser.headers, content=parser.body)
            return parser.status, decoded.content, parser.headers
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
        """(origin, request target) of a URL, parsed (the fragment is not sent)."""
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
        resend_stale: bool = True,
        fresh: bool = False,
    ) -> ResponseParser:
        """Send on a pooled connection; once more on a fresh one if a reused one was stale
        (or :class:`StaleConnection` without ``resend_stale``)."""
        data = _request_bytes(method, target, origin.host_header, headers, body)
        head_request = method == "HEAD"
        conn = await self._acquire(origin, phases, fresh=fresh)
        read = phases.read
        started = self._loop.time()
        try:
            return await self._roundtrip(conn, data, head_request, read)
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
        conn = await self._acquire(origin, phases, fresh=True)
        try:
            return await self._roundtrip(conn, data, head_request, read)
        except _NoAnswer as exc:  # callers see httpx's own class (its name is reported)
            raise httpx.ReadError(str(exc)) from exc.__cause__

    async def _roundtrip(
        self, conn: _Connection, data: bytes, head_request: bool, read: float | None
    ) -> ResponseParser:
        transport = conn.transport
        if transport is None or not conn.usable():
            conn.close()
            self._drop(conn)
            raise _NoAnswer("connection closed before the request was written")
        parser = ResponseParser(head_request=head_request)
        waiter: asyncio.Future[ResponseParser] = self._loop.create_future()
        conn.parser = parser
        conn.waiter = waiter
        transport.write(data)
        timer = None if read is None else self._loop.call_later(read, _expire, waiter)
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


def _request_bytes(
    method: str, target: str, host: str, headers: Iterable[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request as one ``bytes``: request line, Host, headers, framing, body."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers if name.lower() not in _OWN_HEADERS]
    if body:
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    elif method in _EXPECTS_BODY:
        lines.append("Content-Length: 0\r\n\r\n")
    else:
        lines.append("\r\n")
    head = "".join(lines)
    # Every piece ends in one CRLF; the first and (with a length) the last hold two.
    # Any other CR or LF would be an injected line.
    breaks = len(lines) + (2 if lines[-1] != "\r\n" else 1)
    if head.count("\n") != breaks or head.count("\r") != breaks or " " in target:
        raise httpx.LocalProtocolError("CR, LF or space inside the request line or a header")
    try:
        data = head.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise httpx.LocalProtocolError(f"request head is not latin-1: {exc}") from None
    return data + body if body else data
