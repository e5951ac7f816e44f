"""The Ajaib REST client for one account: signed requests, retries, outcomes, clock sync.

:class:`ExchangeClient` implements :class:`killswitch.core.ports.ExchangeAPI`. Every
call goes through the account's :class:`~killswitch.ratelimit.RateLimiter` (cancels
ahead of listing), is reported to the :class:`~killswitch.core.ports.Observer`, and
goes through an httpx transport (``httpx.AsyncBaseTransport``: by default our
HTTP/1.1 transport, :class:`~killswitch.exchange.http1.Http1Transport`, through its
fast path; any other, such as ``httpx.MockTransport``, through
``handle_async_request``). httpx exceptions stop here: callers see only the error tree
of ``killswitch.exchange.errors``.

Choices worth knowing (also in ``docs/CLIENT.md``):

- **Signed bytes are sent bytes.** The query string and the JSON body are serialised
  once; the same strings are signed and sent, with the URL built here so nothing
  re-encodes it. Each attempt gets a fresh timestamp and signature.
- **Every attempt has a hard deadline.** Connect, send and the whole answer together
  are bounded by what is left of ``request_deadline_s``, whatever the transport's own
  timeouts do: our transport is handed the deadline and ends the exchange at it itself
  (one timer per request); any other runs under ``asyncio.timeout_at``. A server that
  trickles its answer ends in a timeout, retried or failed like any other.
- **Retries.** 429, 5xx, timeouts and connection errors retry with capped exponential
  backoff and full jitter, within ``request_deadline_s``; ``max_attempts`` bounds all
  but the 429s, which the limiter already accounts for (a cancel caught in a throttle
  window keeps retrying until its deadline). ``Retry-After`` (seconds or an HTTP date)
  on a 429 or 503 is the least wait, and on a 429 pauses the key's limiter. The
  deadline starts when the first attempt is let through by the limiter (queueing
  behind other cancels is bounded by the sweep's own deadline, not this one).
  Cancels are safe to retry: a repeat answers ``order_already_closed``.
- **Redirects** are never followed nor retried: a cancel is ``rejected``/``redirect``,
  a listing raises :class:`~killswitch.exchange.errors.Redirected` (with ``Location``).
- **Stale connections.** A request whose kept-alive connection turned out closed
  before any answer is signed anew and sent on a fresh connection (same attempt): the
  same signed bytes never go twice (an exchange may refuse a replayed signature).
- **Clock.** The offset to the server clock is measured with the public time endpoint
  (server time minus the midpoint of the round trip) before the first signed request,
  then refreshed in the background every ``clock_sync_interval_s``. On
  ``invalid_client`` the offset is re-measured (at most once per
  ``auth_resync_min_interval_s``, one measurement shared by concurrent requests)
  and the request is retried once *only if the offset moved* by more than
  ``auth_resync_tolerance_ms``; otherwise it is an auth failure at once (a revoked
  key does not cost a second request per order).
- **Public endpoints.** Server time bypasses the limiter (it must not queue behind
  a thousand cancels); exchange info goes through it and is cached for
  ``exchange_info_ttl_s``. Both go unsigned until the exchange refuses one (401/403):
  then that call is sent again signed at once, and every later public call is signed.
- **Pair list.** Kept on failure: a failed refresh serves the last good answer
  (``stale``); an exchange that never answered is replaced by the account's
  ``symbols`` setting (``configured``). :meth:`ExchangeClient.pair_list` says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any

import httpx

from killswitch import __version__
from killswitch.config import AccountSettings
from killswitch.core.orders import Order, OrderParseError, SymbolInfo
from killswitch.core.outcomes import (
    REDACTED,
    Outcome,
    RejectReason,
    Verdict,
    classify_cancel,
    classify_read,
    error_code,
    error_message,
    exchange_text,
    retry_after_s,
)
from killswitch.core.pairs import PairList, no_pair_list_reason
from killswitch.core.ports import (
    BatchCancelResult,
    CancelResult,
    NullObserver,
    Observer,
    RedirectObserver,
    RequestPriority,
)
from killswitch.exchange.errors import (
    AuthError,
    ExchangeError,
    ExchangeUnavailable,
    InvalidRequest,
    NotFound,
    ProtocolError,
    Redirected,
    RequestRejected,
    RequestTimeout,
    TransportError,
    redirect_problem,
)
from killswitch.exchange.http1 import Http1Transport, build_transport
from killswitch.exchange.keys import load_account_key
from killswitch.exchange.signing import (
    KeyLoadError,
    Signer,
    compact_json,
    encode_query,
    signing_payload,
)
from killswitch.exchange.transport import (
    FRESH_CONNECTION,
    RESEND_STALE,
    AttemptDeadline,
    Phases,
    RawHeaders,
    RawTransport,
    StaleConnection,
    TransportKind,
    header,
    tls_context,
)
from killswitch.ratelimit import RateLimiter

__all__ = [
    "PATH_BATCH",
    "PATH_INFO",
    "PATH_OPEN",
    "PATH_ORDER",
    "PATH_TIME",
    "ExchangeClient",
    "ExchangeClients",
    "OpenOrdersPager",
    "PreparedRequest",
    "backoff_delay",
    "clock_hint",
    "clock_offset_ms",
    "prepare_request",
]

log = logging.getLogger(__name__)

PREFIX = "/coin/internal/v1"
PATH_TIME = f"{PREFIX}/public/time"
PATH_INFO = f"{PREFIX}/public/exchange-info"
PATH_ORDER = f"{PREFIX}/order"
PATH_OPEN = f"{PREFIX}/order/open"
PATH_BATCH = f"{PREFIX}/order/batch"

_USER_AGENT = f"killswitch/{__version__}"
# After a failed clock sync, try again this much later (not at every request).
_SYNC_RETRY_S = 5.0
# How long signed requests wait for the first clock measurement: a time endpoint that
# hangs must not hold a kill's first requests for a whole read timeout. Past it they
# go with the local clock, and the measurement goes on in the background.
_FIRST_SYNC_WAIT_S = 1.0
# After a failed exchange-info refresh, serve the fallback this long before asking
# again: a burst of alerts while the exchange is down must not queue one full retry
# budget each behind the lock. No longer than a sweep's longest pause between passes
# (UNANSWERED_PAUSE_CAP_S), so a whole-account kill waiting out an outage asks again
# at its own pace.
_INFO_RETRY_S = 2.0
# An error code is one word ("invalid_request"); anything longer is not shown whole.
_CODE_SHOWN_MAX = 64


# -- pure pieces: request preparation, backoff, clock offset, paging --------------------


@dataclass(slots=True)
class PreparedRequest:
    """A request ready to send: the exact target and body bytes that were signed."""

    method: str
    path: str
    query: str
    body: bytes
    headers: dict[str, str]

    @property
    def target(self) -> str:
        """Path plus ``?query`` when there is one: what goes on the request line."""
        return f"{self.path}?{self.query}" if self.query else self.path


def prepare_request(
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    *,
    api_key: str | None = None,
    signer: Signer | None = None,
    timestamp_ms: int = 0,
) -> PreparedRequest:
    """Headers for one request; signed (X-API-KEY, X-TIMESTAMP, X-SIGNATURE) with a signer.

    ``query`` and ``body`` must already be serialised (``encode_query``,
    ``compact_json``): they are signed as given and must be sent as given.
    """
    method = method.upper()
    # identity: compression is never asked for (the transport refuses compressed answers,
    # so a small answer never inflates into a large one).
    headers = {
        "Accept": "application/json",
        "Accept-Encoding": "identity",
        "User-Agent": _USER_AGENT,
    }
    if body:
        headers["Content-Type"] = "application/json"
    if signer is not None and api_key is not None:
        stamp = str(timestamp_ms)
        headers["X-API-KEY"] = api_key
        headers["X-TIMESTAMP"] = stamp
        headers["X-SIGNATURE"] = signer.sign(signing_payload(stamp, method, path, query, body))
    return PreparedRequest(method, path, query, body, headers)


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))] after ``attempt`` tries."""
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 60))
    return rng.uniform(0.0, ceiling)


def clock_offset_ms(sent_wall_s: float, received_wall_s: float, server_ms: int) -> int:
    """Server clock minus local clock, assuming the server stamped mid round trip."""
    midpoint_ms = (sent_wall_s + received_wall_s) * 500.0
    return round(server_ms - midpoint_ms)


# A signed request is refused when its timestamp is outside the exchange's time window,
# exactly like a bad key: without a measured offset that is the first suspect.
_SKEW_NOTE = "a local clock outside the exchange's time window is refused like a bad key"


def clock_hint(endpoint: str, *, synced: bool, sync_error: str | None) -> str:
    """What an authentication refusal of ``endpoint`` adds when the clock may be its cause.

    Nothing while the last clock sync worked. The time endpoint's own refusal (only a
    signed request to it is refused: an unsigned one is signed and sent again) means the
    offset cannot be measured at all; elsewhere ``sync_error`` says why the last sync
    failed: before any measurement the offset is unknown, after one it may be out of date.
    """
    if endpoint == "time":
        return f"; the clock offset could not be measured: server time refused it too; {_SKEW_NOTE}"
    if sync_error is None:
        return ""
    if not synced:
        return f"; the clock offset could not be measured: {sync_error}; {_SKEW_NOTE}"
    return (
        f"; the last clock sync failed ({sync_error}): the clock offset in use may be out of date"
    )


class OpenOrdersPager:
    """Paging state for open orders (pure; the client feeds it pages).

    Pages come newest first. The next page starts at the smallest ``order_id`` seen
    (``from_order_id`` is inclusive, so that order comes back and is skipped); a
    page shorter than ``limit`` is the last. An order is returned at most once even
    if the book moves between pages, and a server that makes no progress (the
    smallest id does not go down) ends the paging instead of looping.
    """

    def __init__(self, limit: int) -> None:
        if limit < 2:
            # With limit 1 the inclusive cursor would return the same order forever.
            raise ValueError("open orders page limit must be at least 2")
        self.limit = limit
        self.cursor: int | None = None
        self.done = False
        self._seen: set[int] = set()

    def params(self, symbol: str) -> list[tuple[str, str | int]]:
        """Query parameters of the next page, in the order they are signed and sent."""
        params: list[tuple[str, str | int]] = [("symbol", symbol)]
        if self.cursor is not None:
            params.append(("from_order_id", self.cursor))
        params.append(("limit", self.limit))
        return params

    def feed(self, page: Sequence[Order]) -> list[Order]:
        """Take one page; return the orders not seen before and advance the cursor."""
        fresh = [order for order in page if order.order_id not in self._seen]
        self._seen.update(order.order_id for order in fresh)
        if len(page) < self.limit:
            self.done = True
            return fresh
        smallest = min(order.order_id for order in page)
        if self.cursor is not None and smallest >= self.cursor:
            self.done = True  # no progress: stop rather than loop
        self.cursor = smallest
        return fresh


def _is_auth_failure(status: int, body: Any) -> bool:
    return status in (401, 403) or error_code(body) == "invalid_client"


# One decoder for every answer: json.loads(..., parse_float=...) builds a new one per call.
_JSON = json.JSONDecoder(parse_float=Decimal)


def _parse_json(content: bytes) -> Any:
    """The JSON body (UTF-8, RFC 8259 8.1) with decimals as Decimal, or None when empty
    or not JSON."""
    if not content:
        return None
    try:
        return _JSON.decode(content.decode())
    except ValueError:  # UnicodeDecodeError included
        return None


# -- the client ---------------------------------------------------------------------------

# The per-request records below are not frozen (nor is PreparedRequest): a frozen
# dataclass sets each field through object.__setattr__, several times the cost of a
# plain one, and these are built on every request. Nothing mutates them.


@dataclass(slots=True)
class _Call:
    endpoint: str  # short name for metrics
    method: str
    path: str
    query: str = ""
    body: bytes = b""
    public: bool = False  # signed only once the exchange refused it unsigned
    priority: RequestPriority = RequestPriority.LIST
    cancel: bool = False


@dataclass(slots=True)
class _Reply:
    """One HTTP answer: status, parsed body and the headers the client acts on."""

    status: int
    body: Any
    retry_after: str | None = None
    location: str | None = None


@dataclass(slots=True)
class _Tries:
    """The retry loop's state for one request."""

    attempts: int = 0  # requests sent
    budget: int = 0  # attempts that use up max_attempts (429s and re-signing do not)
    auth_retried: bool = False
    public_retried: bool = False
    last_status: int | None = None
    last_error: str | None = None


@dataclass(slots=True)
class _Answer:
    status: int
    body: Any
    attempts: int
    location: str | None = None


# Answers whose headers the client reads (Retry-After on 429/503, Location on 3xx).
def _wants_headers(status: int) -> bool:
    return status in (429, 503) or 300 <= status < 400


def _reply(status: int, content: bytes, headers: RawHeaders | None) -> _Reply:
    body = _parse_json(content)
    if headers is None or not _wants_headers(status):
        return _Reply(status, body)
    return _Reply(status, body, header(headers, b"retry-after"), header(headers, b"location"))


class ExchangeClient:
    """One account's client. Use as ``async with ExchangeClient(settings) as client``.

    ``transport`` is ``"http1"`` (default: our HTTP/1.1 transport with the account's
    TLS settings, measured fastest and the shortest path to the first cancel) or any
    ``httpx.AsyncBaseTransport`` (tests, benchmarks). ``limiter``
    defaults to one built from the account's rate, burst and concurrency.
    ``wall_clock`` (seconds since the epoch), ``monotonic``, ``sleep`` and ``rng``
    are injectable for tests.
    """

    def __init__(
        self,
        settings: AccountSettings,
        *,
        observer: Observer | None = None,
        transport: TransportKind | httpx.AsyncBaseTransport = "http1",
        limiter: RateLimiter | None = None,
        exchange_info_ttl_s: float = 300.0,
        auth_resync_tolerance_ms: int = 250,
        auth_resync_min_interval_s: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._account = settings.id
        self._observer: Observer = observer or NullObserver()
        # Every 3xx goes to an observer that wants it (readiness), with its Location.
        self._on_redirect = (
            self._observer.redirected if isinstance(self._observer, RedirectObserver) else None
        )
        self._signer = _load_signer(settings)
        self._api_key = settings.api_key.get_secret_value()
        self._base_url = settings.base_url
        self._wall = wall_clock
        self._mono = monotonic
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._info_ttl = exchange_info_ttl_s
        self._resync_tolerance = auth_resync_tolerance_ms
        self._resync_min_interval = auth_resync_min_interval_s
        self._limiter = limiter or RateLimiter(
            settings.rate_limit_per_second,
            settings.burst,
            settings.max_concurrency,
            on_rate_change=self._rate_changed,
        )
        if isinstance(transport, str):
            # One spare connection beyond the limiter's cap for the clock sync,
            # which bypasses the limiter.
            transport = build_transport(
                transport,
                max_connections=settings.max_concurrency + 1,
                ssl_context=_load_tls(settings),
            )
        # Requests go straight to the transport, not through httpx.AsyncClient: its send
        # path runs a cookie jar, auth and redirect machinery the exchange never uses, on
        # every cancel (bench/cpu_per_cancel.py measures the client's CPU per cancel).
        self._transport = transport
        # Our own transport has a fast path that skips httpx's models.
        self._raw: RawTransport | None = (
            transport if isinstance(transport, Http1Transport) else None
        )
        # The fast path's timeouts are the configured ones unless the deadline caps them.
        self._uncapped_after = max(
            settings.connect_timeout_s, settings.read_timeout_s, settings.pool_timeout_s
        )
        self._uncapped_timeout = Phases(
            settings.connect_timeout_s, settings.read_timeout_s, settings.pool_timeout_s
        )
        if limiter is None:  # the gauge starts at the configured ceiling, not empty
            self._observer.rate_changed(self._account, self._limiter.rate)

        self._offset_ms = 0
        self._synced = False  # a measurement has succeeded at least once
        self._sync_error: str | None = None  # why the last measurement failed, if it did
        self._synced_at = -float("inf")  # monotonic time of the last measurement attempt
        self._next_sync = -float("inf")
        self._sync_task: asyncio.Task[None] | None = None
        self._first_sync_waited = False  # signed requests waited for the first sync once
        self._info: list[SymbolInfo] | None = None  # the last good answer, kept on failure
        self._info_list = PairList(frozenset(), "exchange")  # its names, built once
        self._info_expires = -float("inf")
        self._info_error: str | None = None  # why the last refresh failed
        self._info_failure: ExchangeError | None = None
        self._info_failed_at = -float("inf")
        self._info_lock = asyncio.Lock()
        self._configured = frozenset(settings.symbols) if settings.symbols else None
        # Public endpoints (time, exchange info) go unsigned until the exchange refuses
        # one (401/403); then every public call is signed, for the client's lifetime.
        self._sign_public = False
        self._closed = False

    def __repr__(self) -> str:  # never the API key
        return f"ExchangeClient(account={self._account!r}, base_url={self._base_url!r})"

    # -- properties and lifecycle --------------------------------------------------------

    @property
    def account(self) -> str:
        """The configured account id (never the API key)."""
        return self._account

    @property
    def limiter(self) -> RateLimiter:
        """This account's limiter (its ``rate`` is the current request rate)."""
        return self._limiter

    @property
    def clock_offset_ms(self) -> int:
        """Server clock minus local clock as last measured (0 before the first sync)."""
        return self._offset_ms

    async def __aenter__(self) -> ExchangeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the clock refresh, the limiter and close pooled connections."""
        if self._closed:
            return
        self._closed = True
        task = self._sync_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._limiter.close()
        await self._transport.aclose()

    def _rate_changed(self, rate: float) -> None:
        self._observer.rate_changed(self._account, rate)

    # -- clock ---------------------------------------------------------------------------

    async def sync_clock(self) -> int:
        """Measure the server clock offset now and apply it; returns it in ms.

        Raises an :class:`ExchangeError` when the time endpoint does not answer usefully
        (:class:`Redirected` for a 3xx, :class:`AuthError` when even the signed request
        is refused); why is kept for the clock hint of later authentication refusals
        (:func:`clock_hint`).
        """
        try:
            offset = await self._measure_clock()
        except ExchangeError as exc:
            self._sync_error = _sync_failure(exc)
            raise
        self._sync_error = None
        return offset

    async def _measure_clock(self) -> int:
        call = _Call("time", "GET", PATH_TIME, public=True)
        self._synced_at = self._mono()
        deadline_s = self._settings.request_deadline_s
        signed = self._sign_public
        sent = self._wall()
        reply = await self._attempt(call, self._offset_ms, deadline_s, signed=signed)
        received = self._wall()
        if not signed and _is_auth_failure(reply.status, reply.body):
            self._learn_public_signing(call)
            sent = self._wall()
            reply = await self._attempt(call, self._offset_ms, deadline_s, signed=True)
            received = self._wall()
        status, body = reply.status, reply.body
        if status != 200:
            if 300 <= status < 500 and status != 429:
                self._final_body(call, _Answer(status, body, 1, reply.location))
            raise ExchangeUnavailable(
                f"server time answered HTTP {status}",
                attempts=1,
                last_status=status,
                last_error=error_code(body),
                account=self._account,
                endpoint="time",
            )
        server_ms = body.get("timestamp") if isinstance(body, Mapping) else None
        if isinstance(server_ms, bool) or not isinstance(server_ms, int):
            raise ProtocolError("server time without an integer timestamp", account=self._account)
        self._offset_ms = clock_offset_ms(sent, received, server_ms)
        self._synced = True
        self._next_sync = self._mono() + self._settings.clock_sync_interval_s
        return self._offset_ms

    def auth_clock_hint(self, endpoint: str) -> str:
        """Why the clock may be the cause of an authentication refusal of ``endpoint`` now
        (as :func:`clock_hint` words it, without its leading separator), else empty."""
        hint = clock_hint(endpoint, synced=self._synced, sync_error=self._sync_error)
        return hint.removeprefix("; ")

    @property
    def signs_public(self) -> bool:
        """True once the exchange refused an unsigned public call (then they are signed)."""
        return self._sign_public

    def _signs(self, call: _Call) -> bool:
        return not call.public or self._sign_public

    def _learn_public_signing(self, call: _Call) -> None:
        if not self._sign_public:
            self._sign_public = True
            log.info(
                "the exchange wants public endpoints signed; signing them from now on",
                extra={"account": self._account, "endpoint": call.endpoint},
            )

    async def _refresh_clock(self) -> None:
        try:
            await self.sync_clock()
        except ExchangeError as exc:
            # Keep the old offset: a time endpoint outage must not stop cancels.
            retry_in = min(_SYNC_RETRY_S, self._settings.clock_sync_interval_s)
            self._next_sync = self._mono() + retry_in
            log.warning("clock sync failed: %s", exc, extra={"account": self._account})
        finally:
            self._sync_task = None

    def _start_sync(self) -> asyncio.Task[None]:
        task = self._sync_task
        if task is None:
            # The client's own helper, not a task group's: a client has no lifetime block
            # (``async with`` is optional), the sync is shared by every request waiting
            # for it, and close() stops it.
            task = asyncio.create_task(self._refresh_clock(), name=f"clock-sync-{self._account}")
            self._sync_task = task
        return task

    async def _ensure_clock(self) -> None:
        """Before a signed request: the first sync awaited, for at most
        :data:`_FIRST_SYNC_WAIT_S` and only once (then the local clock until it answers);
        later ones in the background."""
        task = self._start_sync()
        if self._synced or self._first_sync_waited:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), _FIRST_SYNC_WAIT_S)
        except TimeoutError:
            self._first_sync_waited = True
            log.warning(
                "server time did not answer within %gs: signing with the local clock until it does",
                _FIRST_SYNC_WAIT_S,
                extra={"account": self._account},
            )
        else:
            self._first_sync_waited = True

    async def _clock_moved(self, signed_offset: int) -> bool:
        """After invalid_client: re-measure (rate-limited, shared) and compare offsets.

        The measurement is waited for :data:`_FIRST_SYNC_WAIT_S` at most, as the first
        one: a time endpoint that hangs must not hold the refusal (and the kill) for its
        read timeout. Unanswered by then, the clock counts as not moved (the refusal
        stands, its reason says the clock sync did not answer) and the measurement goes
        on for the requests after."""
        since = self._mono() - self._synced_at
        if since >= self._resync_min_interval or self._sync_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._start_sync()), _FIRST_SYNC_WAIT_S)
            except TimeoutError:
                # Said in the refusal's reason (clock_hint); the answer, when it comes,
                # clears it.
                self._sync_error = f"server time did not answer within {_FIRST_SYNC_WAIT_S:g}s"
        return abs(self._offset_ms - signed_offset) > self._resync_tolerance

    # -- one attempt and the retry loop --------------------------------------------------

    def _phases(self, remaining: float) -> Phases:
        """The per-phase timeouts, each capped to ``remaining``; reused while not capped."""
        s = self._settings
        if remaining >= self._uncapped_after:
            return self._uncapped_timeout
        remaining = max(remaining, 0.001)
        return Phases(
            min(s.connect_timeout_s, remaining),
            min(s.read_timeout_s, remaining),
            min(s.pool_timeout_s, remaining),
        )

    async def _attempt(
        self, call: _Call, offset_ms: int, remaining: float, *, signed: bool
    ) -> _Reply:
        """Send one request; the answer, or TransportError / RequestTimeout.

        Every call is reported to the observer as it ends: its status, ``timeout``,
        ``error``, or ``cancelled`` when the caller was cancelled while it was in flight.
        The whole attempt (connect, send, the complete answer, a stale connection's
        second send) ends within ``remaining`` seconds: past it, ``RequestTimeout``
        (kind ``AttemptDeadline``), whatever the transport's own timeouts are.
        """
        observer = self._observer
        started = time.perf_counter()
        if call.cancel:
            observer.inflight_cancels(self._account, 1)
        deadline = asyncio.get_running_loop().time() + max(remaining, 0.001)
        # Our own transport ends the exchange at the deadline itself (its read timer is
        # the attempt's timer: one timer per request, not two); any other is bounded here.
        bound = _UNBOUNDED if self._raw is not None else asyncio.timeout_at(deadline)
        try:
            async with bound:
                try:
                    status, content, headers = await self._send(
                        call, offset_ms, deadline, signed=signed, fresh=False
                    )
                except StaleConnection:
                    # An idle keep-alive connection the server had closed: nothing was
                    # answered. Signed anew (a fresh timestamp: an exchange with replay
                    # protection refuses a repeated signature) and sent once more on a
                    # new connection, as part of the same attempt.
                    observer.request_done(self._account, call.endpoint, "error", _since(started))
                    started = time.perf_counter()
                    status, content, headers = await self._send(
                        call, self._offset_ms, deadline, signed=signed, fresh=True
                    )
        except (TimeoutError, AttemptDeadline) as exc:  # the attempt's own deadline
            observer.request_done(self._account, call.endpoint, "timeout", _since(started))
            raise RequestTimeout(
                f"attempt deadline after {_since(started):.3f}s",
                kind="AttemptDeadline",
                account=self._account,
                endpoint=call.endpoint,
            ) from exc
        except httpx.TimeoutException as exc:
            observer.request_done(self._account, call.endpoint, "timeout", _since(started))
            raise RequestTimeout(
                f"{type(exc).__name__} after {_since(started):.3f}s",
                kind=type(exc).__name__,
                account=self._account,
                endpoint=call.endpoint,
            ) from exc
        except httpx.HTTPError as exc:
            observer.request_done(self._account, call.endpoint, "error", _since(started))
            raise TransportError(
                f"{type(exc).__name__}: {exc}",
                kind=type(exc).__name__,
                account=self._account,
                endpoint=call.endpoint,
            ) from exc
        except asyncio.CancelledError:
            observer.request_done(self._account, call.endpoint, "cancelled", _since(started))
            raise
        finally:
            if call.cancel:
                observer.inflight_cancels(self._account, -1)
        observer.request_done(self._account, call.endpoint, str(status), _since(started))
        reply = _reply(status, content, headers)
        if 300 <= status < 400 and self._on_redirect is not None:
            self._on_redirect(self._account, call.endpoint, status, _shown_location(reply.location))
        return reply

    async def _send(
        self, call: _Call, offset_ms: int, deadline: float, *, signed: bool, fresh: bool
    ) -> tuple[int, bytes, RawHeaders | None]:
        """Prepare (sign) and send, to be answered by ``deadline`` (event loop clock);
        httpx's exceptions, :class:`StaleConnection` and :class:`AttemptDeadline` included."""
        prepared = prepare_request(
            call.method,
            call.path,
            call.query,
            call.body,
            api_key=self._api_key if signed else None,
            signer=self._signer if signed else None,
            timestamp_ms=int(self._wall() * 1000) + offset_ms,
        )
        url = self._base_url + prepared.target
        if self._raw is not None:
            # Our own transport: prepared bytes in, (status, bytes, headers) out,
            # without building httpx's Request/Response models (URL parsing, header
            # objects) for bytes that are already prepared.
            return await self._raw.send_raw(
                prepared.method,
                url,
                prepared.headers,
                prepared.body or None,
                self._uncapped_timeout,  # the transport caps each phase to the deadline
                deadline=deadline,
                resend_stale=False,
                fresh=fresh,
            )
        remaining = deadline - asyncio.get_running_loop().time()
        return await self._send_httpx(prepared, url, remaining, fresh=fresh)

    def _timeout_extension(self, remaining: float) -> dict[str, float | None]:
        """httpx's per-phase ``timeout`` extension: :meth:`_phases` plus ``write``."""
        phases = self._phases(remaining)
        write = min(self._settings.write_timeout_s, max(remaining, 0.001))
        return {
            "connect": phases.connect,
            "read": phases.read,
            "write": write,
            "pool": phases.pool,
        }

    async def _send_httpx(
        self, prepared: PreparedRequest, url: str, remaining: float, *, fresh: bool
    ) -> tuple[int, bytes, RawHeaders]:
        """The generic path: any httpx transport, through httpx's models."""
        request = httpx.Request(
            prepared.method,
            url,
            headers=prepared.headers,
            content=prepared.body or None,
            extensions={
                "timeout": self._timeout_extension(remaining),
                RESEND_STALE: False,
                FRESH_CONNECTION: fresh,
            },
        )
        response = await self._transport.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, content, list(response.headers.raw)

    async def _acquire(self, priority: RequestPriority, deadline: float | None) -> bool:
        """A limiter slot; False when the request deadline passes while waiting."""
        if deadline is None:
            await self._limiter.acquire(priority)
            return True
        remaining = deadline - self._mono()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                await self._limiter.acquire(priority)
        except TimeoutError:
            return False
        return True

    async def _request(self, call: _Call) -> _Answer:
        """Send with retries; the final answer (2xx, 3xx or final 4xx) or ExchangeUnavailable.

        ``max_attempts`` bounds the answers that say "try again" (5xx, timeouts,
        connection errors, an auth retry after a clock jump); 429s do not use it up:
        the limiter already slows every request of the key down for them, so throttled
        retries are bounded by the request deadline only (a cancel caught in a throttle
        window keeps its place until the exchange accepts again).
        """
        if self._signs(call) and self._mono() >= self._next_sync:
            await self._ensure_clock()
        tries = _Tries()
        deadline: float | None = None
        while tries.budget < self._settings.max_attempts:
            # A free token and slot are taken without a coroutine call (the first attempt
            # of a kill's listing or cancel, normally); otherwise wait in the limiter.
            took = deadline is None and self._limiter.try_acquire(call.priority)
            if not took and not await self._acquire(call.priority, deadline):
                tries.last_error = tries.last_error or "deadline"
                break
            if deadline is None:
                deadline = self._mono() + self._settings.request_deadline_s
            tries.attempts += 1
            signed = self._signs(call)
            offset = self._offset_ms
            sent_at = self._mono()
            reply, verdict = await self._try_once(call, tries, offset, deadline - sent_at, signed)
            if verdict is None:
                assert reply is not None
                self._limiter.accepted(sent_at)
                # Checked here first: most answers are no refusal, and need no coroutine.
                if _is_auth_failure(reply.status, reply.body) and await self._retry_refused(
                    call, tries, signed=signed, offset=offset
                ):
                    continue
                return _Answer(reply.status, reply.body, tries.attempts, reply.location)
            delay = self._retry_delay(verdict, reply, tries, sent_at)
            if delay is None or self._mono() + delay >= deadline:
                break
            await self._sleep(delay)
        raise ExchangeUnavailable(
            f"gave up after {tries.attempts} attempt(s); "
            f"last {_describe(tries.last_status, tries.last_error)}",
            attempts=tries.attempts,
            last_status=tries.last_status,
            last_error=tries.last_error,
            account=self._account,
            endpoint=call.endpoint,
        )

    async def _try_once(
        self, call: _Call, tries: _Tries, offset: int, remaining: float, signed: bool
    ) -> tuple[_Reply | None, Verdict | None]:
        """One attempt holding the limiter slot; (answer, retry verdict or None if final)."""
        try:
            reply = await self._attempt(call, offset, remaining, signed=signed)
        except TransportError as exc:
            tries.last_status, tries.last_error = None, exc.kind
            return None, Verdict.TRANSIENT
        finally:
            self._limiter.release()
        tries.last_status, tries.last_error = reply.status, error_code(reply.body)
        return reply, classify_read(reply.status)

    async def _retry_refused(
        self, call: _Call, tries: _Tries, *, signed: bool, offset: int
    ) -> bool:
        """After an authentication refusal: True to send again at once."""
        if call.public and not signed and not tries.public_retried:
            # A deployment that wants its public endpoints signed: sign this one now
            # (no attempt used up) and every later one.
            tries.public_retried = True
            self._learn_public_signing(call)
            await self._ensure_clock()
            return True
        if (
            signed
            and not tries.auth_retried
            and tries.budget + 1 < self._settings.max_attempts
            and await self._clock_moved(offset)
        ):
            tries.auth_retried = True  # the clock was off: one more try, no backoff
            tries.budget += 1
            return True
        return False

    def _retry_delay(
        self, verdict: Verdict, reply: _Reply | None, tries: _Tries, sent_at: float
    ) -> float | None:
        """How long to wait before the next attempt; None when the budget is used up.

        A 429 tells the limiter (with its Retry-After) and uses up no attempt; any
        Retry-After (429 or 503) is the least the wait can be.
        """
        settings = self._settings
        wait = None if reply is None else retry_after_s(reply.retry_after, self._wall())
        if verdict is Verdict.THROTTLED:
            self._limiter.throttled(sent_at, wait)
        else:
            tries.budget += 1
            if tries.budget >= settings.max_attempts:
                return None
        delay = backoff_delay(
            tries.attempts, settings.backoff_base_s, settings.backoff_cap_s, self._rng
        )
        return delay if wait is None else max(delay, wait)

    def _final_body(self, call: _Call, answer: _Answer) -> Any:
        """The body of a 2xx answer; the matching RequestRejected for anything else."""
        status, body = answer.status, answer.body
        if 200 <= status < 300:
            return body
        code = error_code(body)
        kw: dict[str, Any] = {
            "status": status,
            "code": code,
            "account": self._account,
            "endpoint": call.endpoint,
        }
        shown = exchange_text(code, _CODE_SHOWN_MAX)
        what = f"HTTP {status}" + (f" {shown}" if shown else "")
        if 300 <= status < 400:
            location = _shown_location(answer.location)
            raise Redirected(
                redirect_problem(status, location, call.endpoint),
                status=status,
                location=location,
                account=self._account,
                endpoint=call.endpoint,
            )
        if _is_auth_failure(status, body):
            hint = clock_hint(call.endpoint, synced=self._synced, sync_error=self._sync_error)
            raise AuthError(f"authentication refused ({what}){hint}", **kw)
        what += self._exchange_says(body)
        if status == 404:
            raise NotFound(f"not found ({what})", **kw)
        if status == 400 and code == "invalid_request":
            raise InvalidRequest(f"invalid request ({what})", **kw)
        raise RequestRejected(f"request rejected ({what})", **kw)

    def _exchange_says(self, body: Any) -> str:
        """``": <the exchange's message>"`` for a rejection's reason, or nothing: the
        exchange's words say what was wrong ("limit must be within [1, 50]"). Cleaned
        (:func:`~killswitch.core.outcomes.exchange_text`) and without this account's API
        key, in case the exchange echoes it."""
        message = error_message(body)
        if message is None:
            return ""
        if self._api_key:
            message = message.replace(self._api_key, REDACTED)
        return f": {message}"

    # -- reading ----------------------------------------------------------------------------

    def cached_pair_list(self) -> PairList | None:
        """The pair list :meth:`pair_list` would give now, without a request.

        ``exchange`` while the last answer is younger than ``exchange_info_ttl_s``;
        ``stale`` after that or after a failed refresh (the last good answer is kept);
        ``configured`` (the account's ``symbols``) when the exchange never answered and
        a fetch failed; None when there is nothing yet (no answer, no failed fetch with
        a fallback). Cheap: meant for the alert hot path.
        """
        if self._info is not None:
            if self._mono() < self._info_expires:
                return self._info_list
            why = self._info_error or "older than exchange_info_ttl_s"
            return PairList(self._info_list.symbols, "stale", why)
        if self._info_error is not None and self._configured is not None:
            return PairList(self._configured, "configured", self._info_error)
        return None

    async def refresh_pair_list(self) -> PairList:
        """:meth:`pair_list`, asking the exchange again now even within
        ``_INFO_RETRY_S`` of a failed refresh (a sweep's one second look before its
        result, not a burst of alerts)."""
        return await self.pair_list(now=True)

    async def pair_list(self, *, now: bool = False) -> PairList:
        """The pairs this account trades, and where the list came from.

        The exchange's answer is cached for ``exchange_info_ttl_s``. When a refresh
        fails the last good answer is kept (``stale``); when the exchange never
        answered, the account's ``symbols`` setting is the list (``configured``). After
        a failure, callers within ``_INFO_RETRY_S`` get the fallback without a new
        request (unless ``now``: see :meth:`refresh_pair_list`). Raises the exchange's
        error, saying no source is left, only when there is no fallback at all.
        """
        cached = self.cached_pair_list()
        if cached is not None and cached.source == "exchange":
            return cached
        async with self._info_lock:
            cached = self.cached_pair_list()
            if cached is not None and cached.source == "exchange":
                return cached
            if not now and self._mono() < self._info_failed_at + _INFO_RETRY_S:
                if cached is not None:
                    return cached
                assert self._info_failure is not None  # set with _info_failed_at
                raise _no_pair_list(self._info_failure)
            try:
                await self._fetch_info()
            except ExchangeError as exc:
                self._info_error = _bare_message(exc)  # the account is named by callers
                self._info_failure = exc
                self._info_failed_at = self._mono()
                fallback = self.cached_pair_list()
                if fallback is None:
                    raise _no_pair_list(exc) from None
                log.warning(
                    "exchange info failed; using the %s pair list",
                    fallback.source,
                    extra={"account": self._account, "error": str(exc)},
                )
                return fallback
            return self._info_list

    async def exchange_info(self) -> list[SymbolInfo]:
        """Trading pairs as :meth:`pair_list` finds them (the exchange's, a kept stale
        answer, or the configured ``symbols``); the same errors."""
        pairs = await self.pair_list()
        if pairs.source == "configured":
            return [_configured_info(name) for name in sorted(pairs.symbols)]
        assert self._info is not None
        return list(self._info)

    async def _fetch_info(self) -> None:
        call = _Call("exchange_info", "GET", PATH_INFO, public=True)
        body = self._final_body(call, await self._request(call))
        if not isinstance(body, list):
            raise ProtocolError("exchange info is not an array", account=self._account)
        try:
            info = [SymbolInfo.from_json(item) for item in body]
        except (OrderParseError, AttributeError) as exc:
            raise ProtocolError(str(exc), account=self._account) from None
        self._info = info
        self._info_list = PairList(frozenset(s.symbol for s in info), "exchange")
        self._info_error = None
        self._info_failure = None
        self._info_failed_at = -float("inf")
        self._info_expires = self._mono() + self._info_ttl

    async def open_orders(self, symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        """Pages of open orders on ``symbol``, newest first, each order at most once."""
        pager = OpenOrdersPager(limit)
        while not pager.done:
            call = _Call("open_orders", "GET", PATH_OPEN, encode_query(pager.params(symbol)))
            body = self._final_body(call, await self._request(call))
            fresh = pager.feed(self._orders(body))
            if fresh:
                yield fresh

    def _orders(self, body: Any) -> list[Order]:
        if not isinstance(body, list):
            raise ProtocolError("open orders answer is not an array", account=self._account)
        try:
            return [Order.from_json(item) for item in body]
        except (OrderParseError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"bad order in open orders: {exc}", account=self._account) from None

    async def get_order(self, order_id: int, symbol: str) -> Order:
        """One order by id (NotFound when the exchange does not know it)."""
        query = encode_query([("order_id", order_id), ("symbol", symbol)])
        call = _Call("get_order", "GET", PATH_ORDER, query)
        body = self._final_body(call, await self._request(call))
        if not isinstance(body, Mapping):
            raise ProtocolError("order answer is not an object", account=self._account)
        try:
            return Order.from_json(body)
        except OrderParseError as exc:
            raise ProtocolError(f"bad order: {exc}", account=self._account) from None

    # -- cancelling ---------------------------------------------------------------------

    async def cancel_order(self, order_id: int, symbol: str) -> CancelResult:
        """Cancel one order. Never raises for an exchange answer: the outcome says it."""
        query = encode_query([("order_id", order_id), ("symbol", symbol)])
        call = _Call(
            "cancel", "DELETE", PATH_ORDER, query, priority=RequestPriority.CANCEL, cancel=True
        )
        try:
            answer = await self._request(call)
        except ExchangeUnavailable as exc:
            return CancelResult(
                order_id,
                symbol,
                Outcome.FAILED,
                exc.attempts,
                status=exc.last_status,
                error=exc.last_error,
            )
        verdict = classify_cancel(answer.status, answer.body)
        assert verdict.outcome is not None  # retry verdicts never reach here
        error = verdict.error_code
        if verdict.reason is RejectReason.REDIRECT:
            error = redirect_problem(answer.status, _shown_location(answer.location), call.endpoint)
        return CancelResult(
            order_id,
            symbol,
            verdict.outcome,
            answer.attempts,
            reason=verdict.reason,
            status=answer.status,
            error=error,
        )

    async def cancel_batch(self, symbol: str, order_ids: Sequence[int]) -> BatchCancelResult:
        """Cancel a set of orders in one request (not atomic: read ``success`` and ``fail``)."""
        if not order_ids:
            return BatchCancelResult(symbol, attempts=0)
        body = compact_json({"order_ids": [int(i) for i in order_ids], "symbol": symbol})
        call = _Call(
            "cancel_batch",
            "DELETE",
            PATH_BATCH,
            body=body,
            priority=RequestPriority.CANCEL,
            cancel=True,
        )
        return await self._bulk_cancel(call, symbol, order_ids)

    async def cancel_all(self, symbol: str) -> BatchCancelResult:
        """Cancel every open order on ``symbol`` (not atomic: read ``success`` and ``fail``)."""
        query = encode_query([("symbol", symbol)])
        call = _Call(
            "cancel_all", "DELETE", PATH_OPEN, query, priority=RequestPriority.CANCEL, cancel=True
        )
        return await self._bulk_cancel(call, symbol, ())

    async def _bulk_cancel(
        self, call: _Call, symbol: str, requested: Sequence[int]
    ) -> BatchCancelResult:
        try:
            answer = await self._request(call)
        except ExchangeUnavailable as exc:
            return BatchCancelResult(
                symbol,
                attempts=exc.attempts,
                outcome=Outcome.FAILED,
                status=exc.last_status,
                error=exc.last_error,
            )
        verdict = classify_cancel(answer.status, answer.body)
        if verdict.outcome is not Outcome.SENT:
            error = None
            if verdict.reason is RejectReason.REDIRECT:
                location = _shown_location(answer.location)
                error = redirect_problem(answer.status, location, call.endpoint)
            return BatchCancelResult(
                symbol,
                attempts=answer.attempts,
                outcome=verdict.outcome,
                reason=verdict.reason,
                status=answer.status,
                error=error,
            )
        success, fail = _id_lists(answer.body)
        if success is None or fail is None:
            # 200 without the documented arrays: the exchange took the instruction but
            # did not say which ids; count the requested ones as sent (verify re-lists).
            log.warning(
                "%s answered 200 without success/fail arrays",
                call.endpoint,
                extra={"account": self._account, "symbol": symbol},
            )
            return BatchCancelResult(symbol, success=list(requested), attempts=answer.attempts)
        return BatchCancelResult(symbol, success=success, fail=fail, attempts=answer.attempts)


def _id_lists(body: Any) -> tuple[list[int] | None, list[int] | None]:
    if not isinstance(body, Mapping) or ("success" not in body and "fail" not in body):
        return None, None
    return _ints(body.get("success", [])), _ints(body.get("fail", []))


def _ints(value: Any) -> list[int] | None:
    if not isinstance(value, list):
        return None
    out: list[int] = []
    for item in value:
        if isinstance(item, bool):
            return None
        try:
            out.append(int(item))
        except (TypeError, ValueError):
            return None
    return out


# A Location is the exchange's text, shown to operators: bounded, one line.
_MAX_LOCATION = 200


def _shown_location(location: str | None) -> str:
    if not location:
        return ""
    shown = location.replace("\r", " ").replace("\n", " ").strip()
    return shown if len(shown) <= _MAX_LOCATION else shown[:_MAX_LOCATION] + "..."


# The attempt bound of a transport that enforces the deadline itself.
_UNBOUNDED = contextlib.nullcontext()


def _since(started: float) -> float:
    return time.perf_counter() - started


def _describe(status: int | None, error: str | None) -> str:
    if status is None:
        return error or "no answer"
    return f"HTTP {status}" + (f" {error}" if error else "")


def _bare(exc: ExchangeError) -> str:
    """The message without the ``account endpoint:`` prefix."""
    prefix = " ".join(part for part in (exc.account, exc.endpoint) if part) + ": "
    return str(exc).removeprefix(prefix)


def _sync_failure(exc: ExchangeError) -> str:
    """Why a clock sync failed, as the clock hint of a later refusal shows it."""
    if isinstance(exc, AuthError):
        return f"server time refused the signed request too (HTTP {exc.status})"
    text = _bare(exc)
    return text if text.startswith("server time") else f"server time: {text}"


def _configured_info(symbol: str) -> SymbolInfo:
    """A pair from the ``symbols`` setting: the name is all we know (``BASE_QUOTE``)."""
    base, _, quote = symbol.partition("_")
    return SymbolInfo(symbol=symbol, base_asset=base, quote_asset=quote)


def _bare_message(exc: ExchangeError) -> str:
    """The error's message without its ``account endpoint:`` prefix."""
    prefix = " ".join(part for part in (exc.account, exc.endpoint) if part) + ": "
    return str(exc).removeprefix(prefix)


def _no_pair_list(exc: ExchangeError) -> ExchangeError:
    """``exc`` again (the same class for the ones callers tell apart: redirect, auth,
    unavailable; else its base class), the message saying that no source of pairs is
    left."""
    reason = no_pair_list_reason(_bare_message(exc))  # the new error adds the prefix once
    common = {"account": exc.account, "endpoint": exc.endpoint}
    if isinstance(exc, Redirected):
        return Redirected(reason, status=exc.status, location=exc.location, **common)
    if isinstance(exc, RequestRejected):
        kind = AuthError if isinstance(exc, AuthError) else RequestRejected
        return kind(reason, status=exc.status, code=exc.code, **common)
    if isinstance(exc, ExchangeUnavailable):
        return ExchangeUnavailable(
            reason,
            attempts=exc.attempts,
            last_status=exc.last_status,
            last_error=exc.last_error,
            **common,
        )
    return ProtocolError(reason, **common)


def _load_tls(settings: AccountSettings) -> ssl.SSLContext | None:
    """The account's TLS context; KeyLoadError naming the setting (never a key) on failure."""
    try:
        return tls_context(settings.tls)
    except OSError as exc:  # ssl.SSLError included: unreadable file, wrong password
        raise KeyLoadError(f"accounts[{settings.id}].tls: {exc}") from None


def _load_signer(settings: AccountSettings) -> Signer:
    """The account's signer; KeyLoadError naming the account (never the key) on failure."""
    return Signer(load_account_key(settings), settings.signature_encoding)


# -- several accounts ---------------------------------------------------------------------


class ExchangeClients(Mapping[str, ExchangeClient]):
    """One :class:`ExchangeClient` per configured account, each with its own limiter
    and connection pool; an async context manager that closes them all.

    Keys are loaded when this is built, so a bad key fails at start-up.
    """

    def __init__(
        self,
        accounts: Sequence[AccountSettings],
        *,
        observer: Observer | None = None,
        transport: TransportKind = "http1",
        exchange_info_ttl_s: float = 300.0,
        client_factory: Callable[[AccountSettings], ExchangeClient] | None = None,
    ) -> None:
        def default_factory(settings: AccountSettings) -> ExchangeClient:
            return ExchangeClient(
                settings,
                observer=observer,
                transport=transport,
                exchange_info_ttl_s=exchange_info_ttl_s,
            )

        factory = client_factory or default_factory
        self._clients: dict[str, ExchangeClient] = {}
        for settings in accounts:
            self._clients[settings.id] = factory(settings)

    def __getitem__(self, account: str) -> ExchangeClient:
        return self._clients[account]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    async def __aenter__(self) -> ExchangeClients:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every client, even when one of them fails to close."""
        results = await asyncio.gather(
            *(client.close() for client in self._clients.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                log.warning("closing an exchange client failed: %s", result)
