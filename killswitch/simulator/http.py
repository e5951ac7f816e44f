"""A minimal HTTP/1.1 server on ``asyncio.Protocol``: just what the simulator needs.

Requests are framed by llhttp (``httptools.HttpRequestParser``), the parser of
Node.js and of the exchange client. Keep-alive, ``Content-Length`` bodies, pipelined
requests answered strictly in order, size limits, and an error answer (then close)
for anything it cannot parse or will not serve. It never raises out of a callback:
bad input costs the connection, never the server. Python HTTP frameworks cost more
per request than the ECDSA verify the simulator must do anyway; this keeps the rest
of the path to a few microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from killswitch.simulator.core import Request

_log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
# Data is fed to the parser in slices of at most this size, so that a head still
# incomplete after a feed is known to within one slice (llhttp reports no offsets).
_FEED_SLICE = 2048

_REASONS = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = _REASONS.get(status, "Unknown")
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode()
    return line


class Answer(Protocol):
    """What an application returns for one request (``core.Reply`` fits)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    delay_s: float
    hold_s: float
    drop: bool


App = Callable[[Request], Answer]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_body(message: str) -> bytes:
    return b'{"error":"invalid_request","message":"' + message.encode() + b'"}'


class HttpProtocol(asyncio.Protocol):
    """One connection. Requests are answered in arrival order; while one waits on a
    delay, the following ones stay buffered (pipelining-safe)."""

    def __init__(self, app: App, connections: set[HttpProtocol]) -> None:
        self._app = app
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # Parsed requests not answered yet, in order; a _BadRequest ends the queue.
        self._queue: deque[tuple[Request, bool] | _BadRequest] = deque()
        self._backlog = 0  # bytes received while an answer was pending
        self._failed = False  # the parser gave up: ignore whatever follows
        # The answer being delayed: the connection's own task (a protocol's callbacks have
        # no block to hold a task group), cancelled when the connection closes.
        self._waiting: asyncio.Task[None] | None = None
        self._closed = False
        self._reading_paused = False
        self._writing_paused = False
        # The request being parsed.
        self._in_head = False
        self._head_bytes = 0  # URL and headers reported so far
        self._head_fed = 0  # bytes fed since the head began (over by one slice at most)
        self._url = b""
        self._auth: list[str | None] = [None, None, None]  # api key, timestamp, signature
        self._body = b""

    # ------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not derive from asyncio's classes.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._connections.discard(self)
        if self._waiting is not None:
            self._waiting.cancel()

    def pause_writing(self) -> None:
        # The peer does not read its answers: stop reading its requests.
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._failed or self._closed:
            return
        if self._waiting is not None:
            self._backlog += len(data)
        try:
            if len(data) <= _FEED_SLICE and not self._in_head:
                self._parser.feed_data(data)  # the usual case: whole requests
                if self._in_head:
                    self._head_fed = len(data)
            else:
                self._feed(data)
        except _BadRequest as exc:
            self._fail(exc)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, _BadRequest) else _BadRequest(400, "bad request"))
        except httptools.HttpParserError as exc:
            self._fail(_BadRequest(400, _parser_message(exc)))
        if self._waiting is None:
            self._process()
        if self._reading_paused or self._writing_paused or self._waiting is not None:
            self._update_reading()

    def _feed(self, data: bytes) -> None:
        """Parse ``data``; requests completed go to the queue."""
        for start in range(0, len(data), _FEED_SLICE):
            piece = data[start : start + _FEED_SLICE] if len(data) > _FEED_SLICE else data
            self._parser.feed_data(piece)
            if self._in_head:
                self._head_fed += len(piece)
                if self._head_fed > MAX_HEAD_BYTES + _FEED_SLICE:
                    raise _BadRequest(431, "request head too large")

    # ------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._head_fed = 0
        self._url = b""
        self._auth = [None, None, None]
        self._body = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _BadRequest(431, "request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _BadRequest(431, "request head too large")
        name = name.lower()
        slot = _AUTH_HEADERS.get(name)
        if slot is not None:
            self._auth[slot] = value.decode("latin-1")
        elif name == b"content-length":
            # llhttp has checked its syntax and refused a second one.
            if len(value) > 9 or int(value) > MAX_BODY_BYTES:
                raise _BadRequest(413, "body too large")
        elif name == b"transfer-encoding":
            raise _BadRequest(501, "transfer-encoding is not supported")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._parser.get_http_version() not in ("1.1", "1.0"):
            raise _BadRequest(400, "unsupported HTTP version")
        if not self._url.startswith(b"/"):
            raise _BadRequest(400, "malformed request target")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        try:
            target = self._url.decode("ascii")
        except UnicodeDecodeError:
            raise _BadRequest(400, "non-ASCII request line") from None
        path, _, query = target.partition("?")
        parser = self._parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        key, stamp, signature = self._auth
        request = Request(
            method, path, query, self._body, api_key=key, timestamp=stamp, signature=signature
        )
        self._queue.append((request, parser.should_keep_alive()))

    def _fail(self, error: _BadRequest) -> None:
        """Answer the requests parsed before the error, then the error, then close."""
        self._failed = True
        self._queue.append(error)

    # ---------------------------------------------------------------- internals

    def close(self) -> asyncio.Task[None] | None:
        """Close the connection now (server shutdown); returns the answer task to await."""
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()
        waiting = self._waiting
        if waiting is not None and waiting is not asyncio.current_task():
            waiting.cancel()
            return waiting
        return None

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        want_pause = self._writing_paused or (
            self._waiting is not None and self._backlog > MAX_HEAD_BYTES + MAX_BODY_BYTES
        )
        if want_pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not want_pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _process(self) -> None:
        """Answer every parsed request, in order."""
        while not self._closed and self._waiting is None:
            if not self._queue:
                self._backlog = 0
                return
            parsed = self._queue.popleft()
            if isinstance(parsed, _BadRequest):
                self._write(parsed.status, error_body(str(parsed)), close=True)
                return
            request, keep_alive = parsed
            try:
                answer = self._app(request)
            except Exception:  # a bug must cost one request, never the server
                _log.exception("simulator failed on a request")
                self._write(500, b'{"error":"api_error"}', close=True)
                return
            if answer.delay_s or answer.hold_s or answer.drop:
                self._waiting = asyncio.get_running_loop().create_task(
                    self._act_out(answer, keep_alive)
                )
                return
            self._write(answer.status, answer.body, close=not keep_alive, headers=answer.headers)

    async def _act_out(self, answer: Answer, keep_alive: bool) -> None:
        """Delay, hold or drop, then carry on with buffered requests."""
        try:
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            if answer.hold_s:
                # The client normally gives up first; bounded so nothing hangs forever.
                await asyncio.sleep(answer.hold_s)
                self.close()
                return
            if answer.drop:
                self.close()
                return
            self._write(answer.status, answer.body, close=not keep_alive, headers=answer.headers)
        except asyncio.CancelledError:
            return
        finally:
            self._waiting = None
        if not self._closed:
            self._process()
            self._update_reading()

    def _write(
        self,
        status: int,
        body: bytes,
        close: bool,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        if headers:
            extra = b"".join([b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers])
            head = _head(status, len(body), close) + extra
            transport.write(b"%s\r\n%s" % (head, body))
        else:
            transport.write(_head(status, len(body), close) + b"\r\n" + body)
        if close:
            self._closed = True
            transport.close()


# Header name -> its slot in HttpProtocol._auth.
_AUTH_HEADERS = {b"x-api-key": 0, b"x-timestamp": 1, b"x-signature": 2}
# llhttp's method bytes -> str, without a decode per request.
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")}
# (status, body length, close) -> the head up to its blank line. Bounded: listing
# answers have many lengths; past the bound a head is built and not kept.
_HEADS: dict[tuple[int, int, bool], bytes] = {}
_HEADS_MAX = 4096


def _head(status: int, length: int, close: bool) -> bytes:
    """Status line, Content-Type, Content-Length and any Connection: close."""
    key = (status, length, close)
    head = _HEADS.get(key)
    if head is None:
        head = b"%sContent-Type: application/json\r\nContent-Length: %d\r\n%s" % (
            _status_line(status),
            length,
            b"Connection: close\r\n" if close else b"",
        )
        if len(_HEADS) < _HEADS_MAX:
            _HEADS[key] = head
    return head


def _parser_message(exc: httptools.HttpParserError) -> str:
    """llhttp's reason, safe to quote in a JSON string (it names the rule, never data)."""
    text = str(exc) or "malformed request"
    return "".join(c for c in text if c.isalnum() or c in " -_")[:80] or "malformed request"


class HttpServer:
    """Listens on a loopback port and serves ``app`` with :class:`HttpProtocol`."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[HttpProtocol] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self._app, self._connections),
            self._host,
            self._port,
            reuse_address=True,
            backlog=1024,
        )

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = [task for conn in list(self._connections) if (task := conn.close()) is not None]
        # Let delayed answers finish cancelling, so no task outlives the server.
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)
