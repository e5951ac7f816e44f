"""The Ajaib REST client for one account: signed requests, retries, outcomes, clock sync.

:class:`ExchangeClient` implements :class:`killswitch.core.ports.ExchangeAPI`. Every
call goes through the account's :class:`~killswitch.ratelimit.RateLimiter` (cancels
ahead of listing), is reported to the :class:`~killswitch.core.ports.Observer`, and
speaks httpx (``httpx.AsyncClient`` over a selectable transport, see
``killswitch.exchange.transport``). httpx exceptions stop here: callers see only the
error tree of ``killswitch.exchange.errors``.

Choices worth knowing (also in ``docs/CLIENT.md``):

- **Signed bytes are sent bytes.** The query string and the JSON body are serialised
  once; the same strings are signed and sent, with the URL built here so httpx does
  not re-encode it. Each attempt gets a fresh timestamp and signature.
- **Retries.** 429, 5xx, timeouts and connection errors retry with capped exponential
  backoff and full jitter, within ``max_attempts`` and ``request_deadline_s``. The
  deadline starts when the first attempt is let through by the limiter (queueing
  behind other cancels is bounded by the sweep's own deadline, not this one). A 429
  also tells the limiter. Cancels are safe to retry: a repeat answers
  ``order_already_closed``.
- **Clock.** The offset to the server clock is measured with the public time endpoint
  (server time minus the midpoint of the round trip) before the first signed request,
  then refreshed in the background every ``clock_sync_interval_s``. On
  ``invalid_client`` the offset is re-measured (at most once per
  ``auth_resync_min_interval_s``, one measurement shared by concurrent requests)
  and the request is retried once *only if the offset moved* by more than
  ``auth_resync_tolerance_ms``; otherwise it is an auth failure at once (a revoked
  key does not cost a second request per order).
- **Public endpoints.** Server time bypasses the limiter (it carries no API key and
  must not queue behind a thousand cancels); exchange info goes through it and is
  cached for ``exchange_info_ttl_s``.
- **Pair list.** Kept on failure: a failed refresh serves the last good answer
  (``stale``); an exchange that never answered is replaced by the account's
  ``symbols`` setting (``configured``). :meth:`ExchangeClient.pair_list` says which.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
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
from killswitch.core.outcomes import Outcome, Verdict, classify_cancel, classify_read, error_code
from killswitch.core.pairs import PairList, no_pair_list_reason
from killswitch.core.ports import BatchCancelResult, CancelResult, NullObserver, Observer, Priority
from killswitch.exchange.errors import (
    AuthError,
    ExchangeError,
    ExchangeUnavailable,
    InvalidRequest,
    NotFound,
    ProtocolError,
    RequestRejected,
    RequestTimeout,
    TransportError,
)
from killswitch.exchange.http1 import Http1Transport
from killswitch.exchange.keys import load_account_key
from killswitch.exchange.signing import (
    Signer,
    compact_json,
    encode_query,
    signing_payload,
)
from killswitch.exchange.transport import (
    AiohttpTransport,
    Phases,
    RawTransport,
    TransportKind,
    build_transport,
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
# After a failed exchange-info refresh, serve the fallback this long before asking
# again: a burst of alerts while the exchange is down must not queue one full retry
# budget each behind the lock.
_INFO_RETRY_S = 5.0


# -- pure pieces: request preparation, backoff, clock offset, paging --------------------


@dataclass(frozen=True, slots=True)
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
    headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
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


def _parse_json(content: bytes) -> Any:
    """The JSON body with decimals as Decimal, or None when empty or not JSON."""
    if not content:
        return None
    try:
        return json.loads(content, parse_float=Decimal)
    except ValueError:
        return None


# -- the client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    endpoint: str  # short name for metrics
    method: str
    path: str
    query: str = ""
    body: bytes = b""
    signed: bool = True
    priority: Priority = Priority.LIST
    cancel: bool = False


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: Any
    attempts: int


class ExchangeClient:
    """One account's client. Use as ``async with ExchangeClient(settings) as client``.

    ``transport`` is ``"http1"`` (default: our native HTTP/1.1 transport, measured
    fastest and the shortest path to the first cancel), ``"aiohttp"``, ``"httpx"``
    (httpx's own pool), or any
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
            transport = build_transport(transport, max_connections=settings.max_concurrency + 1)
        # Requests go straight to the transport: httpx.AsyncClient's send path (cookie
        # jar, auth and redirect machinery, none of which the exchange uses) cost about
        # a fifth of the client's CPU per cancel (bench/cpu_per_cancel.py).
        self._transport = transport
        # Our own transports have a fast path that skips httpx's models.
        self._raw: RawTransport | None = (
            transport if isinstance(transport, AiohttpTransport | Http1Transport) else None
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
        self._synced_at = -float("inf")  # monotonic time of the last measurement attempt
        self._next_sync = -float("inf")
        self._sync_task: asyncio.Task[None] | None = None
        self._info: list[SymbolInfo] | None = None  # the last good answer, kept on failure
        self._info_list = PairList(frozenset(), "exchange")  # its names, built once
        self._info_expires = -float("inf")
        self._info_error: str | None = None  # why the last refresh failed
        self._info_failure: ExchangeError | None = None
        self._info_failed_at = -float("inf")
        self._info_lock = asyncio.Lock()
        self._configured = frozenset(settings.symbols) if settings.symbols else None
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

        Raises an :class:`ExchangeError` when the time endpoint does not answer usefully.
        """
        call = _Call("time", "GET", PATH_TIME, signed=False)
        self._synced_at = self._mono()
        sent = self._wall()
        status, body = await self._attempt(call, 0, self._settings.request_deadline_s)
        received = self._wall()
        if status != 200:
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
            task = asyncio.create_task(self._refresh_clock(), name=f"clock-sync-{self._account}")
            self._sync_task = task
        return task

    async def _ensure_clock(self) -> None:
        """Before a signed request: first sync awaited, later ones in the background."""
        task = self._start_sync()
        if not self._synced:
            await asyncio.shield(task)

    async def _clock_moved(self, signed_offset: int) -> bool:
        """After invalid_client: re-measure (rate-limited, shared) and compare offsets."""
        since = self._mono() - self._synced_at
        if since >= self._resync_min_interval or self._sync_task is not None:
            await asyncio.shield(self._start_sync())
        return abs(self._offset_ms - signed_offset) > self._resync_tolerance

    # -- one attempt and the retry loop --------------------------------------------------

    def _timeouts(self, remaining: float) -> dict[str, float]:
        s = self._settings
        remaining = max(remaining, 0.001)
        return {
            "connect": min(s.connect_timeout_s, remaining),
            "read": min(s.read_timeout_s, remaining),
            "write": min(s.write_timeout_s, remaining),
            "pool": min(s.pool_timeout_s, remaining),
        }

    def _raw_timeout(self, remaining: float) -> Phases:
        """The fast path's timeouts: as :meth:`_timeouts`, reused while not capped."""
        s = self._settings
        if remaining >= self._uncapped_after:
            return self._uncapped_timeout
        remaining = max(remaining, 0.001)
        return Phases(
            min(s.connect_timeout_s, remaining),
            min(s.read_timeout_s, remaining),
            min(s.pool_timeout_s, remaining),
        )

    async def _attempt(self, call: _Call, offset_ms: int, remaining: float) -> tuple[int, Any]:
        """Send one request; (status, parsed body) or TransportError / RequestTimeout."""
        prepared = prepare_request(
            call.method,
            call.path,
            call.query,
            call.body,
            api_key=self._api_key if call.signed else None,
            signer=self._signer if call.signed else None,
            timestamp_ms=int(self._wall() * 1000) + offset_ms,
        )
        url = self._base_url + prepared.target
        observer = self._observer
        started = time.perf_counter()
        if call.cancel:
            observer.inflight_cancels(self._account, 1)
        try:
            if self._raw is not None:
                # Our own transports: prepared bytes in, (status, bytes) out,
                # without httpx's Request/Response models (a third of the CPU).
                status, content = await self._raw.send_raw(
                    prepared.method,
                    url,
                    prepared.headers,
                    prepared.body or None,
                    self._raw_timeout(remaining),
                )
            else:
                status, content = await self._send_httpx(prepared, url, remaining)
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
        finally:
            if call.cancel:
                observer.inflight_cancels(self._account, -1)
        observer.request_done(self._account, call.endpoint, str(status), _since(started))
        return status, _parse_json(content)

    async def _send_httpx(
        self, prepared: PreparedRequest, url: str, remaining: float
    ) -> tuple[int, bytes]:
        """The generic path: any httpx transport, through httpx's models."""
        request = httpx.Request(
            prepared.method,
            url,
            headers=prepared.headers,
            content=prepared.body or None,
            extensions={"timeout": self._timeouts(remaining)},
        )
        response = await self._transport.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, content

    async def _acquire(self, priority: Priority, deadline: float | None) -> bool:
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
        """Send with retries; the final answer (2xx or final 4xx) or ExchangeUnavailable."""
        if call.signed and self._mono() >= self._next_sync:
            await self._ensure_clock()
        settings = self._settings
        attempts = 0
        deadline: float | None = None
        auth_retried = False
        last_status: int | None = None
        last_error: str | None = None
        while attempts < settings.max_attempts:
            if not await self._acquire(call.priority, deadline):
                last_error = last_error or "deadline"
                break
            if deadline is None:
                deadline = self._mono() + settings.request_deadline_s
            attempts += 1
            offset = self._offset_ms
            sent_at = self._mono()
            try:
                status, body = await self._attempt(call, offset, deadline - sent_at)
            except TransportError as exc:
                last_status, last_error, verdict, body = None, exc.kind, Verdict.TRANSIENT, None
            else:
                last_status, last_error = status, error_code(body)
                verdict = classify_read(status)  # type: ignore[assignment]
            finally:
                self._limiter.release()
            if verdict is None:
                if (
                    call.signed
                    and not auth_retried
                    and attempts < settings.max_attempts
                    and _is_auth_failure(last_status or 0, body)
                    and await self._clock_moved(offset)
                ):
                    auth_retried = True  # the clock was off: one more try, no backoff
                    continue
                return _Answer(last_status or 0, body, attempts)
            if verdict is Verdict.THROTTLED:
                self._limiter.throttled(sent_at)
            if attempts >= settings.max_attempts:
                break
            delay = backoff_delay(
                attempts, settings.backoff_base_s, settings.backoff_cap_s, self._rng
            )
            if self._mono() + delay >= deadline:
                break
            await self._sleep(delay)
        raise ExchangeUnavailable(
            f"gave up after {attempts} attempt(s); last {_describe(last_status, last_error)}",
            attempts=attempts,
            last_status=last_status,
            last_error=last_error,
            account=self._account,
            endpoint=call.endpoint,
        )

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
        what = f"HTTP {status}" + (f" {code}" if code else "")
        if _is_auth_failure(status, body):
            raise AuthError(f"authentication refused ({what})", **kw)
        if status == 404:
            raise NotFound(f"not found ({what})", **kw)
        if status == 400 and code == "invalid_request":
            raise InvalidRequest(f"invalid request ({what})", **kw)
        raise RequestRejected(f"request rejected ({what})", **kw)

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

    async def pair_list(self) -> PairList:
        """The pairs this account trades, and where the list came from.

        The exchange's answer is cached for ``exchange_info_ttl_s``. When a refresh
        fails the last good answer is kept (``stale``); when the exchange never
        answered, the account's ``symbols`` setting is the list (``configured``). After
        a failure, callers within ``_INFO_RETRY_S`` get the fallback without a new
        request. Raises the exchange's error, saying no source is left, only when
        there is no fallback at all.
        """
        cached = self.cached_pair_list()
        if cached is not None and cached.source == "exchange":
            return cached
        async with self._info_lock:
            cached = self.cached_pair_list()
            if cached is not None and cached.source == "exchange":
                return cached
            if self._mono() < self._info_failed_at + _INFO_RETRY_S:
                if cached is not None:
                    return cached
                assert self._info_failure is not None  # set with _info_failed_at
                raise _no_pair_list(self._info_failure)
            try:
                await self._fetch_info()
            except ExchangeError as exc:
                self._info_error = str(exc)
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
        call = _Call("exchange_info", "GET", PATH_INFO, signed=False)
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
        call = _Call("cancel", "DELETE", PATH_ORDER, query, priority=Priority.CANCEL, cancel=True)
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
        return CancelResult(
            order_id,
            symbol,
            verdict.outcome,
            answer.attempts,
            reason=verdict.reason,
            status=answer.status,
            error=verdict.error_code,
        )

    async def cancel_batch(self, symbol: str, order_ids: Sequence[int]) -> BatchCancelResult:
        """Cancel a set of orders in one request (not atomic: read ``success`` and ``fail``)."""
        if not order_ids:
            return BatchCancelResult(symbol, attempts=0)
        body = compact_json({"order_ids": [int(i) for i in order_ids], "symbol": symbol})
        call = _Call(
            "cancel_batch", "DELETE", PATH_BATCH, body=body, priority=Priority.CANCEL, cancel=True
        )
        return await self._bulk_cancel(call, symbol, order_ids)

    async def cancel_all(self, symbol: str) -> BatchCancelResult:
        """Cancel every open order on ``symbol`` (not atomic: read ``success`` and ``fail``)."""
        query = encode_query([("symbol", symbol)])
        call = _Call(
            "cancel_all", "DELETE", PATH_OPEN, query, priority=Priority.CANCEL, cancel=True
        )
        return await self._bulk_cancel(call, symbol, ())

    async def _bulk_cancel(
        self, call: _Call, symbol: str, requested: Sequence[int]
    ) -> BatchCancelResult:
        try:
            answer = await self._request(call)
        except ExchangeUnavailable as exc:
            return BatchCancelResult(symbol, attempts=exc.attempts, outcome=Outcome.FAILED)
        verdict = classify_cancel(answer.status, answer.body)
        if verdict.outcome is not Outcome.SENT:
            return BatchCancelResult(
                symbol, attempts=answer.attempts, outcome=verdict.outcome, reason=verdict.reason
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


def _since(started: float) -> float:
    return time.perf_counter() - started


def _describe(status: int | None, error: str | None) -> str:
    if status is None:
        return error or "no answer"
    return f"HTTP {status}" + (f" {error}" if error else "")


def _configured_info(symbol: str) -> SymbolInfo:
    """A pair from the ``symbols`` setting: the name is all we know (``BASE_QUOTE``)."""
    base, _, quote = symbol.partition("_")
    return SymbolInfo(symbol=symbol, base_asset=base, quote_asset=quote)


def _no_pair_list(exc: ExchangeError) -> ExchangeError:
    """``exc`` again (its base class: callers handle it as before), the message saying
    that no source of pairs is left."""
    text = str(exc)
    prefix = " ".join(part for part in (exc.account, exc.endpoint) if part) + ": "
    reason = no_pair_list_reason(text.removeprefix(prefix))  # the new error adds it once
    common = {"account": exc.account, "endpoint": exc.endpoint}
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
