"""The simulated exchange: state and request handling, no I/O.

:class:`Simulator` answers one parsed request at a time with a :class:`Reply`
(status, body, and any fault the I/O shell must act out: a delay, holding the
request unanswered, dropping the connection). The HTTP server in ``server.py``
feeds it; tests can also drive it in-process through its Python API.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from email.utils import formatdate
from typing import Any, Literal, get_args
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric import ec

from killswitch.exchange.signing import (
    SignatureEncoding,
    load_public_key,
    signing_payload,
    verify,
)
from killswitch.simulator.faults import (
    EndpointFaults,
    FaultDecision,
    Limiter,
    Races,
    SlidingWindow,
    TokenBucket,
    decide,
    default_burst,
)
from killswitch.simulator.model import (
    DEFAULT_SYMBOLS,
    ORDER_TYPES,
    SIDES,
    Book,
    SimOrder,
    SymbolSpec,
    symbol_spec,
)

PREFIX = "/coin/internal/v1"

# (METHOD, path) -> endpoint name. Names are what faults and counters are keyed by.
ROUTES: dict[tuple[str, str], str] = {
    ("GET", f"{PREFIX}/public/time"): "time",
    ("GET", f"{PREFIX}/public/exchange-info"): "exchange_info",
    ("GET", f"{PREFIX}/order/open"): "open_orders",
    ("DELETE", f"{PREFIX}/order/open"): "cancel_all",
    ("GET", f"{PREFIX}/order"): "get_order",
    ("DELETE", f"{PREFIX}/order"): "cancel",
    ("POST", f"{PREFIX}/order"): "create_order",
    ("DELETE", f"{PREFIX}/order/batch"): "cancel_batch",
}
ENDPOINTS: tuple[str, ...] = tuple(dict.fromkeys(ROUTES.values()))
PUBLIC_ENDPOINTS = frozenset({"time", "exchange_info"})
_KNOWN_PATHS = frozenset(path for _, path in ROUTES)

ANONYMOUS = "-"  # counter/log label for requests with no known client
_MAX_INT64 = 2**63 - 1
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,20}_[A-Z0-9]{1,20}$")
_TIMESTAMP_MAX_DIGITS = 16
_HEADER_VALUE_RE = re.compile(r"^[\x21-\x7e][\x20-\x7e]*$")  # visible ASCII, no CR/LF

UnknownSymbol = Literal["invalid", "empty"]
RateLimitKind = Literal["token_bucket", "sliding_window"]
RetryAfter = Literal["seconds", "date"]
UNKNOWN_SYMBOL_ANSWERS: tuple[str, ...] = get_args(UnknownSymbol)
RATE_LIMIT_KINDS: tuple[str, ...] = get_args(RateLimitKind)
RETRY_AFTER_FORMS: tuple[str, ...] = get_args(RetryAfter)


class Reply:
    """One answer: status, JSON body and extra headers, plus what the I/O shell must act out.

    ``tag`` is the short code kept in the request log (``invalid_request``,
    ``fault:drop``...); ``headers`` are extra response headers (``Retry-After``,
    ``Location``) as (name, value) pairs; ``hold_s`` > 0 means "never answer, close
    after this long"; ``drop`` means "close the connection without an answer".
    """

    __slots__ = ("body", "delay_s", "drop", "headers", "hold_s", "status", "tag")

    def __init__(
        self,
        status: int,
        body: bytes,
        tag: str | None = None,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        delay_s: float = 0.0,
        hold_s: float = 0.0,
        drop: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.tag = tag
        self.headers = headers
        self.delay_s = delay_s
        self.hold_s = hold_s
        self.drop = drop

    def delayed(self, delay_s: float) -> Reply:
        """The same answer, sent ``delay_s`` seconds later."""
        return Reply(
            self.status,
            self.body,
            self.tag,
            headers=self.headers,
            delay_s=delay_s,
            hold_s=self.hold_s,
            drop=self.drop,
        )

    def with_headers(self, *headers: tuple[str, str]) -> Reply:
        """The same answer with these headers added."""
        return Reply(
            self.status,
            self.body,
            self.tag,
            headers=self.headers + headers,
            delay_s=self.delay_s,
            hold_s=self.hold_s,
            drop=self.drop,
        )

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r}, tag={self.tag!r})"


class Request:
    """One parsed request: the raw path, query and body, and the three auth headers."""

    __slots__ = ("api_key", "body", "method", "path", "query", "signature", "timestamp")

    def __init__(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes = b"",
        *,
        api_key: str | None = None,
        timestamp: str | None = None,
        signature: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.api_key = api_key
        self.timestamp = timestamp
        self.signature = signature


def _error(status: int, code: str, message: str | None = None) -> Reply:
    body: dict[str, str] = {"error": code}
    if message:
        body["message"] = message
    return Reply(status, json.dumps(body, separators=(",", ":")).encode(), code)


CANCEL_SENT = Reply(200, b'{"status":"CANCEL_SENT"}')
ALREADY_CLOSED = _error(400, "order_already_closed")
ORDER_NOT_FOUND = _error(404, "order_not_found")
THROTTLED = _error(429, "too_many_requests")
ROUTE_NOT_FOUND = _error(404, "not_found")
METHOD_NOT_ALLOWED = _error(405, "method_not_allowed")
_INVALID: dict[str, Reply] = {}
_EMPTY_LIST = Reply(200, b"[]")
_EMPTY_BULK = Reply(200, b'{"success":[],"fail":[]}')


def invalid(message: str) -> Reply:
    """400 ``invalid_request`` with a reason (cached: the set of reasons is small)."""
    reply = _INVALID.get(message)
    if reply is None:
        reply = _INVALID[message] = _error(400, "invalid_request", message)
    return reply


_UNKNOWN_SYMBOL = invalid("unknown or missing symbol")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One request as the simulator saw it. Never holds a signature or a key:
    ``client`` is the client's label (its name, or a fingerprint of its key)."""

    seq: int
    timestamp_ms: int
    method: str
    path: str
    query: str
    client: str | None
    endpoint: str
    status: int | None  # None when no answer was sent (timeout, drop)
    tag: str | None  # error code or fault, None for a plain success
    order_id: int | None  # for single-order calls

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "timestamp_ms": self.timestamp_ms,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "client": self.client,
            "endpoint": self.endpoint,
            "status": self.status,
            "tag": self.tag,
            "order_id": self.order_id,
        }


class Client:
    """A registered API key with its public key, limiter and books."""

    __slots__ = (
        "api_key",
        "books",
        "bucket",
        "encoding",
        "label",
        "limit",
        "public_key",
        "revoked",
    )

    def __init__(
        self,
        api_key: str,
        label: str,
        public_key: ec.EllipticCurvePublicKey,
        encoding: SignatureEncoding,
        limit: tuple[float, int] | None,
    ) -> None:
        self.api_key = api_key
        self.label = label
        self.public_key = public_key
        self.encoding: SignatureEncoding = encoding
        self.limit = limit  # own (rate, burst); None follows the simulator default
        self.bucket: Limiter | None = None
        self.revoked = False
        self.books: dict[str, Book] = {}

    def book(self, symbol: str) -> Book:
        book = self.books.get(symbol)
        if book is None:
            book = self.books[symbol] = Book()
        return book


def client_label(api_key: str) -> str:
    """A stable, non-secret name for a key: a short fingerprint."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def parse_query(query: str) -> dict[str, str] | None:
    """``k=v&k=v`` into a dict (percent-decoded); None when a key repeats."""
    params: dict[str, str] = {}
    if not query:
        return params
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if "%" in key or "%" in value:
            key, value = unquote(key), unquote(value)
        if key in params:
            return None
        params[key] = value
    return params


def parse_id(text: str | None, minimum: int = 1) -> int | None:
    """A positive int64 written in ASCII digits, else None."""
    if not text or len(text) > 19 or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if minimum <= value <= _MAX_INT64 else None


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() and number > 0 else None


Handler = Callable[["Client | None", str, bytes], tuple[Reply, int | None]]


class ThrottleWindow:
    """One exchange-wide 429 window (see :meth:`Simulator.set_throttle_window`).

    ``seen`` counts the requests answered since it was set; ``ends_at`` (monotonic
    seconds) is None until the window opens.
    """

    __slots__ = ("after_requests", "duration_s", "ends_at", "retry_after", "seen")

    def __init__(
        self, after_requests: int, duration_s: float, retry_after: RetryAfter | None
    ) -> None:
        self.after_requests = after_requests
        self.duration_s = duration_s
        self.retry_after: RetryAfter | None = retry_after
        self.seen = 0
        self.ends_at: float | None = None

    def to_dict(self, now: float) -> dict[str, Any]:
        left = None if self.ends_at is None else max(0.0, self.ends_at - now)
        return {
            "after_requests": self.after_requests,
            "duration_s": self.duration_s,
            "retry_after": self.retry_after,
            "requests_seen": self.seen,
            "open": left is not None and left > 0,
            "seconds_left": left,
        }


class Simulator:
    """The Ajaib exchange in memory: clients, orders, limits, faults and races.

    Pure state and decisions, no I/O: :meth:`handle` takes a parsed request and
    returns a :class:`Reply`. Serve it over HTTP with ``SimulatorServer``.
    Randomness (seeding, faults, races) comes from one ``random.Random(seed)``.
    """

    def __init__(
        self,
        seed: int = 0,
        time_window_ms: int = 5000,
        clock_offset_ms: int = 0,
        *,
        symbols: Iterable[str] | None = None,
        rate_limit_per_second: float | None = None,
        burst: int | None = None,
        global_rate_limit_per_second: float | None = None,
        global_burst: int | None = None,
        max_batch: int = 1000,
        max_page_limit: int = 1000,
        log_max: int = 200_000,
        auth_failure_status: int = 401,
        first_order_id: int = 5_000_000_001,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        public_auth: bool = False,
        unknown_symbol: UnknownSymbol = "invalid",
        rate_limit_kind: RateLimitKind = "token_bucket",
        sliding_window_s: float = 1.0,
        retry_after_on_429: bool = False,
        replay_protection: bool = False,
    ) -> None:
        self.seed = seed
        self.time_window_ms = time_window_ms
        self.clock_offset_ms = clock_offset_ms
        self.max_batch = max_batch
        self.max_page_limit = max_page_limit
        self.first_order_id = first_order_id
        self._monotonic = monotonic
        self._wall = wall_clock
        self._specs: dict[str, SymbolSpec] = {}
        self._exchange_info = b"[]"
        self._clients: dict[str, Client] = {}
        self._default_limit: tuple[float, int] | None = None
        self._global_bucket: Limiter | None = None
        self._global_limit: tuple[float, int] | None = None
        self._log: deque[tuple[Any, ...]] = deque(maxlen=log_max)
        self._handlers: dict[str, Handler] = {
            "time": self._h_time,
            "exchange_info": self._h_exchange_info,
            "open_orders": self._h_open_orders,
            "get_order": self._h_get_order,
            "cancel": self._h_cancel,
            "cancel_batch": self._h_cancel_batch,
            "cancel_all": self._h_cancel_all,
            "create_order": self._h_create_order,
        }
        self.auth_failure_status = auth_failure_status
        # Knobs for exchanges that read the same API differently (docs/SIMULATOR.md).
        self.public_auth = public_auth
        self.retry_after_on_429 = retry_after_on_429
        self.unknown_symbol = unknown_symbol
        self._rate_limit_kind: RateLimitKind = "token_bucket"
        self._sliding_window_s = 1.0
        self.set_rate_limit_kind(rate_limit_kind, sliding_window_s)
        self._redirects: dict[str | None, Reply] = {}
        self._throttle: ThrottleWindow | None = None
        # Signatures accepted (api_key, signature) -> monotonic time, and their order
        # for expiry; None while replay protection is off (the fast path checks that).
        self._replays: dict[tuple[str, str], float] | None = None
        self._replay_order: deque[tuple[float, tuple[str, str]]] = deque()
        self.replay_protection = replay_protection
        self._clear_state()
        self.add_symbols(DEFAULT_SYMBOLS if symbols is None else symbols)
        self.set_rate_limit(rate_limit_per_second, burst)
        self.set_global_rate_limit(global_rate_limit_per_second, global_burst)

    # ----------------------------------------------------------------- setup

    def _clear_state(self) -> None:
        self.rng = random.Random(self.seed)
        self._orders: dict[int, SimOrder] = {}
        self._next_id = self.first_order_id
        self._faults: dict[str, EndpointFaults] = {}
        self._default_faults = EndpointFaults()
        self._faults_active = False
        self._faults_set_at = self._monotonic()
        self._races = Races()
        self._races_active = False
        self._spawned = 0
        self._counts: dict[tuple[str, str, str], int] = {}
        self._seq = 0
        self._log.clear()
        self._throttle = None
        self._update_gate()
        if self._replays is not None:
            self._replays = {}
        self._replay_order.clear()

    @property
    def auth_failure_status(self) -> int:
        """401 (default) or 403: the docs show both for ``invalid_client``."""
        return self._auth_status

    @auth_failure_status.setter
    def auth_failure_status(self, status: int) -> None:
        if status not in (401, 403):
            raise ValueError("auth_failure_status must be 401 or 403")
        self._auth_status = status
        self._auth_replies = {
            reason: _error(status, "invalid_client", message)
            for reason, message in (
                ("unknown", "unknown api key"),
                ("revoked", "api key revoked"),
                ("headers", "missing X-API-KEY, X-TIMESTAMP or X-SIGNATURE"),
                ("clock", "timestamp outside the allowed window"),
                ("signature", "signature does not match"),
                ("replayed", "replayed"),
            )
        }

    @property
    def symbols(self) -> list[str]:
        """Trading pairs listed in exchange-info, in listing order."""
        return list(self._specs)

    def add_symbols(self, symbols: Iterable[str]) -> None:
        """List more trading pairs (``BASE_QUOTE``, upper case)."""
        for symbol in symbols:
            if not _SYMBOL_RE.match(symbol):
                raise ValueError(f"not a symbol (BASE_QUOTE, upper case): {symbol!r}")
            self._specs.setdefault(symbol, symbol_spec(symbol))
        entries = [spec.to_dict() for spec in self._specs.values()]
        self._exchange_info = json.dumps(entries, separators=(",", ":")).encode()

    def add_client(
        self,
        api_key: str,
        public_key: ec.EllipticCurvePublicKey | bytes | str,
        *,
        signature_encoding: SignatureEncoding = "base64-der",
        rate_limit_per_second: float | None = None,
        burst: int | None = None,
        name: str | None = None,
    ) -> str:
        """Register an API key and its public key (object, PEM, DER or OpenSSH).

        Returns the client's label: ``name``, or a fingerprint of the key. Counters
        and the request log name clients by label, never by key.
        """
        if not api_key or len(api_key) > 256 or not api_key.isprintable():
            raise ValueError("api_key must be 1-256 printable characters")
        if signature_encoding not in ("base64-der", "hex-der", "base64-raw"):
            raise ValueError(f"unknown signature encoding {signature_encoding!r}")
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raw = public_key.encode() if isinstance(public_key, str) else public_key
            public_key = load_public_key(raw)
        limit = None
        if rate_limit_per_second is not None:
            limit = _limit(rate_limit_per_second, burst)
        client = Client(
            api_key, name or client_label(api_key), public_key, signature_encoding, limit
        )
        old = self._clients.get(api_key)
        if old is not None:
            client.books = old.books  # re-registering a key keeps its orders
        self._clients[api_key] = client
        self._reset_bucket(client)
        return client.label

    def label(self, api_key: str) -> str:
        """The label a client is known by in counters and the log (KeyError if unknown)."""
        return self._client(api_key).label

    def revoke(self, api_key: str) -> None:
        """Every later request with this key answers ``invalid_client``."""
        self._client(api_key).revoked = True

    def reinstate(self, api_key: str) -> None:
        """Undo :meth:`revoke`."""
        self._client(api_key).revoked = False

    # ----------------------------------------------------------------- knobs

    @property
    def unknown_symbol(self) -> UnknownSymbol:
        """How a pair the exchange does not trade is answered by ``open_orders``,
        ``cancel_all``, ``cancel`` and ``cancel_batch``: ``"invalid"`` (400
        ``invalid_request``) or ``"empty"`` (``[]``, ``{"success":[],"fail":[]}``,
        404 ``order_not_found`` for a single cancel)."""
        return self._unknown_symbol

    @unknown_symbol.setter
    def unknown_symbol(self, answer: UnknownSymbol) -> None:
        if answer not in UNKNOWN_SYMBOL_ANSWERS:
            raise ValueError(f"unknown_symbol must be one of {', '.join(UNKNOWN_SYMBOL_ANSWERS)}")
        self._unknown_symbol: UnknownSymbol = answer

    @property
    def rate_limit_kind(self) -> RateLimitKind:
        """``"token_bucket"`` (rate, burst) or ``"sliding_window"``: at most
        ``floor(rate * sliding_window_s)`` accepted requests in any trailing window."""
        return self._rate_limit_kind

    @rate_limit_kind.setter
    def rate_limit_kind(self, kind: RateLimitKind) -> None:
        self.set_rate_limit_kind(kind, self._sliding_window_s)

    @property
    def sliding_window_s(self) -> float:
        """The trailing window of the ``sliding_window`` rate limit, in seconds."""
        return self._sliding_window_s

    @sliding_window_s.setter
    def sliding_window_s(self, window_s: float) -> None:
        self.set_rate_limit_kind(self._rate_limit_kind, window_s)

    def set_rate_limit_kind(self, kind: RateLimitKind, sliding_window_s: float = 1.0) -> None:
        """Both rate-limit settings at once; every limiter restarts full (nothing counted)."""
        if kind not in RATE_LIMIT_KINDS:
            raise ValueError(f"rate_limit_kind must be one of {', '.join(RATE_LIMIT_KINDS)}")
        if (
            isinstance(sliding_window_s, bool)
            or not isinstance(sliding_window_s, int | float)
            or not (math.isfinite(sliding_window_s) and sliding_window_s > 0)
        ):
            raise ValueError("sliding_window_s must be a positive number of seconds")
        self._rate_limit_kind = kind
        self._sliding_window_s = float(sliding_window_s)
        self._reset_limiters()

    @property
    def replay_protection(self) -> bool:
        """True: a signature already accepted for the same API key within
        ``time_window_ms`` answers ``invalid_client`` (message ``replayed``)."""
        return self._replays is not None

    @replay_protection.setter
    def replay_protection(self, on: bool) -> None:
        if on and self._replays is None:
            self._replays = {}
        elif not on:
            self._replays = None
            self._replay_order.clear()

    def set_throttle_window(
        self,
        after_requests: int,
        duration_s: float,
        retry_after: RetryAfter | None = "seconds",
    ) -> None:
        """One exchange-wide 429 window.

        Requests to the non-public endpoints (every client) are counted from now;
        when the ``after_requests``-th has been answered (at once for 0) the window
        opens, and every such request answers 429 ``too_many_requests`` for
        ``duration_s`` seconds, with ``Retry-After`` in whole seconds left (rounded
        up), or the HTTP date of the window's end, or none (``retry_after=None``).
        The window then closes for good: one window per call.
        """
        if (
            isinstance(after_requests, bool)
            or not isinstance(after_requests, int)
            or (after_requests < 0)
        ):
            raise ValueError("after_requests must be an integer >= 0")
        if (
            isinstance(duration_s, bool)
            or not isinstance(duration_s, int | float)
            or not (math.isfinite(duration_s) and duration_s > 0)
        ):
            raise ValueError("duration_s must be a positive number of seconds")
        if retry_after is not None and retry_after not in RETRY_AFTER_FORMS:
            raise ValueError("retry_after must be 'seconds', 'date' or None")
        window = ThrottleWindow(after_requests, float(duration_s), retry_after)
        if after_requests == 0:
            window.ends_at = self._monotonic() + window.duration_s
        self._throttle = window
        self._update_gate()

    def clear_throttle_window(self) -> None:
        """No throttle window (a pending or open one ends now)."""
        self._throttle = None
        self._update_gate()

    @property
    def throttle_window(self) -> dict[str, Any] | None:
        """The throttle window in force (pending or open) as JSON-ready data, else None."""
        window = self._throttle
        return None if window is None else window.to_dict(self._monotonic())

    def set_redirect(self, location: str, status: int = 307, endpoint: str | None = None) -> None:
        """Answer ``status`` (3xx) with ``Location: location`` and an empty body, with
        no effect on orders: on ``endpoint``, or (None) on every non-public endpoint.
        A redirect set for an endpoint wins over the one for every endpoint."""
        if isinstance(status, bool) or not isinstance(status, int) or not 300 <= status <= 399:
            raise ValueError("redirect status must be a 3xx code")
        if not isinstance(location, str) or not _HEADER_VALUE_RE.match(location):
            raise ValueError("redirect location must be non-empty visible ASCII")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r} (one of {', '.join(ENDPOINTS)})")
        self._redirects[endpoint] = Reply(
            status, b"", "redirect", headers=(("Location", location),)
        )
        self._update_gate()

    def clear_redirects(self) -> None:
        """No redirects anywhere."""
        self._redirects.clear()
        self._update_gate()

    def redirects(self) -> dict[str, dict[str, Any]]:
        """Redirects in force: endpoint name (``"all"`` for every non-public one) ->
        ``{"status", "location"}``."""
        return {
            "all" if endpoint is None else endpoint: {
                "status": reply.status,
                "location": reply.headers[0][1],
            }
            for endpoint, reply in self._redirects.items()
        }

    def knobs(self) -> dict[str, Any]:
        """Every knob as JSON-ready data (what ``GET /_admin/state`` shows)."""
        return {
            "public_auth": self.public_auth,
            "unknown_symbol": self.unknown_symbol,
            "rate_limit_kind": self.rate_limit_kind,
            "sliding_window_s": self.sliding_window_s,
            "retry_after_on_429": self.retry_after_on_429,
            "replay_protection": self.replay_protection,
            "throttle_window": self.throttle_window,
            "redirects": self.redirects(),
        }

    def _update_gate(self) -> None:
        # One flag for the request path: a redirect or a throttle window in force.
        self._gate_on = bool(self._redirects) or self._throttle is not None

    def set_rate_limit(
        self,
        rate_limit_per_second: float | None,
        burst: int | None = None,
        *,
        api_key: str | None = None,
    ) -> None:
        """Per-key token bucket. With ``api_key`` for that client only; without, the
        default for every client that has no limit of its own. ``None`` = unlimited.
        ``burst`` defaults to one second's worth (``ceil(rate)``)."""
        limit = None if rate_limit_per_second is None else _limit(rate_limit_per_second, burst)
        if api_key is not None:
            client = self._client(api_key)
            client.limit = limit
            self._reset_bucket(client)
            return
        self._default_limit = limit
        for client in self._clients.values():
            self._reset_bucket(client)

    def set_global_rate_limit(
        self, rate_limit_per_second: float | None, burst: int | None = None
    ) -> None:
        """One more limiter shared by all clients (``None`` = unlimited); of the
        kind in ``rate_limit_kind``, like the per-key ones."""
        if rate_limit_per_second is None:
            self._global_limit = self._global_bucket = None
            return
        self._global_limit = _limit(rate_limit_per_second, burst)
        self._global_bucket = self._limiter(self._global_limit)

    def _limiter(self, limit: tuple[float, int]) -> Limiter:
        if self._rate_limit_kind == "sliding_window":
            return SlidingWindow(limit[0], self._sliding_window_s)
        return TokenBucket(*limit, self._monotonic())

    def _reset_bucket(self, client: Client) -> None:
        limit = client.limit or self._default_limit
        client.bucket = None if limit is None else self._limiter(limit)

    def _reset_limiters(self) -> None:
        for client in self._clients.values():
            self._reset_bucket(client)
        if self._global_limit is not None:
            self._global_bucket = self._limiter(self._global_limit)

    def rate_limits(self) -> dict[str, Any]:
        """Effective limits: default, global and per client label."""
        return {
            "default": _limit_dict(self._default_limit),
            "global": _limit_dict(self._global_limit),
            "clients": {
                c.label: _limit_dict(c.limit or self._default_limit) for c in self._clients.values()
            },
        }

    def set_faults(self, faults: EndpointFaults, endpoint: str | None = None) -> None:
        """Faults for one endpoint, or (``endpoint=None``) for every endpoint, which
        also drops the per-endpoint settings. Storm periods restart now."""
        if endpoint is None:
            self._default_faults = faults
            self._faults = {}
        elif endpoint in ENDPOINTS:
            self._faults[endpoint] = faults
        else:
            raise ValueError(f"unknown endpoint {endpoint!r} (one of {', '.join(ENDPOINTS)})")
        self._faults_set_at = self._monotonic()
        self._faults_active = self._default_faults.active or any(
            f.active for f in self._faults.values()
        )

    def clear_faults(self) -> None:
        """No faults anywhere."""
        self.set_faults(EndpointFaults())

    def faults(self, endpoint: str) -> EndpointFaults:
        """The faults in force for an endpoint."""
        return self._faults.get(endpoint, self._default_faults)

    def fault_settings(self) -> dict[str, Any]:
        """All fault settings as JSON-ready data."""
        return {
            "all": self._default_faults.to_dict(),
            "endpoints": {name: f.to_dict() for name, f in self._faults.items()},
        }

    def set_races(
        self,
        close_before_cancel: float = 0.0,
        spawn_on_cancel: float = 0.0,
        max_spawned: int = 1_000,
        lose_cancel: float = 0.0,
    ) -> None:
        """Races between the client and the market (see :class:`Races`)."""
        self._races = Races(close_before_cancel, spawn_on_cancel, max_spawned, lose_cancel)
        self._races_active = self._races.active

    @property
    def races(self) -> Races:
        return self._races

    @property
    def spawned(self) -> int:
        """Orders created by ``spawn_on_cancel`` so far."""
        return self._spawned

    def reset(self, *, clients: bool = False) -> None:
        """Forget orders, counters, the log, faults and races; reseed the RNG.

        Clients stay registered (revocations lifted, limiters full) unless
        ``clients=True``. Clock offset, window and limits are kept, and so are the
        knobs (``public_auth``, ``unknown_symbol``, ``rate_limit_kind``,
        ``sliding_window_s``, ``retry_after_on_429``, ``replay_protection``,
        redirects) except the throttle window, which is cleared like the faults;
        the signatures remembered for replay protection are forgotten.
        """
        self._clear_state()
        if clients:
            self._clients.clear()
        for client in self._clients.values():
            client.books = {}
            client.revoked = False
        self._reset_limiters()

    # ---------------------------------------------------------------- orders

    def _client(self, api_key: str) -> Client:
        client = self._clients.get(api_key)
        if client is None:
            raise KeyError("unknown api key")  # never echo the key itself
        return client

    def _check_symbol(self, symbol: str) -> None:
        if symbol not in self._specs:
            raise ValueError(f"unknown symbol {symbol!r}")

    def _new_order(
        self,
        client: Client,
        symbol: str,
        *,
        side: str,
        order_type: str,
        price: str,
        quantity: str,
        status: str = "OPEN",
        executed: str = "0",
        avg_price: str = "0",
    ) -> SimOrder:
        order_id = self._next_id
        self._next_id += 1
        order = SimOrder(
            order_id=order_id,
            owner=client.api_key,
            symbol=symbol,
            side=side,
            order_type=order_type,
            price=price,
            quantity=quantity,
            status=status,
            now_ms=self.now_ms(),
            executed_quantity=executed,
            avg_price=avg_price,
        )
        self._orders[order_id] = order
        if order.is_open:
            client.book(symbol).add(order)
        return order

    def _random_order(
        self,
        client: Client,
        symbol: str,
        side: str | None = None,
        price: str | None = None,
        quantity: str | None = None,
    ) -> SimOrder:
        rng = self.rng
        spec = self._specs[symbol]
        side = side or rng.choice(("BUY", "SELL"))
        if price is None:
            ref = Decimal(spec.reference_price)
            offset = Decimal(rng.randint(5, 500)) / Decimal(10_000)
            factor = (1 - offset) if side == "BUY" else (1 + offset)
            tick = Decimal(spec.quote_tick)
            price = str(max((ref * factor).quantize(tick), tick))
        qty = Decimal(quantity) if quantity is not None else _random_quantity(rng, spec)
        fields = {"side": side, "price": price, "quantity": str(qty)}
        draw = rng.random()
        if draw < 0.7:
            return self._new_order(client, symbol, order_type="LIMIT", **fields)
        if draw < 0.85:
            return self._new_order(client, symbol, order_type="LIMIT_MAKER", status="NEW", **fields)
        # Partially filled: both spellings from the docs occur on the wire.
        status = "PARTIAL_FILLED" if draw < 0.95 else "PARTIALLY_FILLED"
        executed = (qty * Decimal(rng.randint(1, 9)) / 10).quantize(qty)
        if not 0 < executed < qty:
            return self._new_order(client, symbol, order_type="LIMIT", **fields)
        return self._new_order(
            client,
            symbol,
            order_type="LIMIT",
            status=status,
            executed=str(executed),
            avg_price=price,
            **fields,
        )

    def seed_orders(
        self,
        api_key: str,
        symbol: str,
        count: int,
        *,
        side: str | None = None,
        price: str | None = None,
        quantity: str | None = None,
    ) -> list[int]:
        """Add ``count`` open orders (NEW, OPEN or partially filled, random sides and
        prices near a reference unless given). Returns their ids, ascending."""
        client = self._client(api_key)
        self._check_symbol(symbol)
        if side is not None and side not in SIDES:
            raise ValueError("side must be BUY or SELL")
        for value, name in ((price, "price"), (quantity, "quantity")):
            if value is not None and _decimal(value) is None:
                raise ValueError(f"{name} must be a positive decimal string")
        if not 0 <= count <= 10_000_000:
            raise ValueError("count must be within [0, 10000000]")
        return [
            self._random_order(client, symbol, side, price, quantity).order_id for _ in range(count)
        ]

    def open_order_ids(self, api_key: str, symbol: str | None = None) -> set[int]:
        """Ids of a client's open orders (on one symbol, or all)."""
        books = self._client(api_key).books
        if symbol is not None:
            book = books.get(symbol)
            return set(book.open) if book else set()
        return {oid for book in books.values() for oid in book.open}

    def order(self, order_id: int) -> dict[str, object] | None:
        """An order's wire object (any status, any client), None when unknown."""
        order = self._orders.get(order_id)
        return None if order is None else order.to_dict()

    def close_order(self, order_id: int, status: str = "FILLED") -> None:
        """Close an order as the market would (fill, expiry...)."""
        order = self._orders[order_id]
        if not order.is_open:
            return
        if status == "FILLED":
            order.executed_quantity = order.quantity
            order.avg_price = order.price
        self._close(order, status)

    def _close(self, order: SimOrder, status: str) -> None:
        order.close(status, self.now_ms())
        self._clients[order.owner].books[order.symbol].remove(order.order_id)

    def _cancel(self, client: Client, symbol: str, order_id: int) -> Reply:
        """Cancel one order, races included: CANCEL_SENT, ALREADY_CLOSED or NOT_FOUND."""
        order = self._orders.get(order_id)
        if order is None or order.owner != client.api_key or order.symbol != symbol:
            return ORDER_NOT_FOUND
        if not order.is_open:
            return ALREADY_CLOSED
        if not self._races_active:
            self._close(
                order, "CANCELLED" if order.executed_quantity == "0" else "PARTIAL_CANCELLED"
            )
            return CANCEL_SENT
        races, rng = self._races, self.rng
        if races.close_before_cancel and rng.random() < races.close_before_cancel:
            if rng.random() < 0.5:
                self.close_order(order_id, "FILLED")
            else:
                self._close(order, _cancelled_status(order))
            return ALREADY_CLOSED
        if not (races.lose_cancel and rng.random() < races.lose_cancel):
            self._close(
                order, "CANCELLED" if order.executed_quantity == "0" else "PARTIAL_CANCELLED"
            )
        if (
            races.spawn_on_cancel
            and self._spawned < races.max_spawned
            and rng.random() < races.spawn_on_cancel
        ):
            self._spawned += 1
            self._random_order(client, symbol)
        return CANCEL_SENT

    # ----------------------------------------------------------------- clock

    def now_ms(self) -> int:
        """Server time in epoch ms, clock offset included."""
        return int(self._wall() * 1000) + self.clock_offset_ms

    # -------------------------------------------------------------- requests

    def handle(self, request: Request) -> Reply:
        """Answer one request. Its ``query`` and ``body`` are exactly as received."""
        endpoint = ROUTES.get((request.method, request.path))
        if endpoint is None:
            known = request.path in _KNOWN_PATHS
            reply = METHOD_NOT_ALLOWED if known else ROUTE_NOT_FOUND
            self._record(request, None, "unknown", reply, None)
            return reply
        if self._gate_on:  # a redirect or a throttle window in force
            gated = self._gate(endpoint)
            if gated is not None:
                api_key = request.api_key
                self._record(
                    request, self._clients.get(api_key) if api_key else None, endpoint, gated, None
                )
                return gated
        fault: FaultDecision | None = None
        after_effect = False
        if self._faults_active:
            faults = self._faults.get(endpoint, self._default_faults)
            if faults.active:
                fault = decide(faults, self.rng, self._monotonic() - self._faults_set_at)
                after_effect = faults.after_effect
        api_key = request.api_key
        client = self._clients.get(api_key) if api_key else None
        if fault is not None and fault.kind != "latency" and not after_effect:
            reply = _fault_reply(fault)
            self._record(request, client, endpoint, reply, None)
            return reply
        note: int | None = None
        refused = None
        if endpoint not in PUBLIC_ENDPOINTS or self.public_auth:
            refused = self._authenticate(client, request)
        if refused is None:
            reply, note = self._handlers[endpoint](client, request.query, request.body)
        else:
            reply = refused
        if fault is not None:
            reply = reply.delayed(fault.delay_s) if fault.kind == "latency" else _fault_reply(fault)
        self._record(request, client, endpoint, reply, note)
        return reply

    def _gate(self, endpoint: str) -> Reply | None:
        """A redirect, or the throttle window's 429, or None to go on.

        Both act in front of the exchange, like a gateway: before faults and
        authentication. Only non-public endpoints count toward or feel the window.
        """
        redirects = self._redirects
        if redirects:
            reply = redirects.get(endpoint)
            if reply is None and endpoint not in PUBLIC_ENDPOINTS:
                reply = redirects.get(None)
            if reply is not None:
                return reply
        window = self._throttle
        if window is None or endpoint in PUBLIC_ENDPOINTS:
            return None
        now = self._monotonic()
        if window.ends_at is None:
            window.seen += 1
            if window.seen >= window.after_requests:
                window.ends_at = now + window.duration_s
            return None
        left = window.ends_at - now
        if left <= 0:
            self.clear_throttle_window()
            return None
        if window.retry_after == "seconds":
            return THROTTLED.with_headers(("Retry-After", str(math.ceil(left))))
        if window.retry_after == "date":
            # HTTP dates have whole seconds: round the end up so a client waiting
            # until that date never arrives inside the window.
            end_s = math.ceil(self.now_ms() / 1000 + left)
            return THROTTLED.with_headers(("Retry-After", formatdate(end_s, usegmt=True)))
        return THROTTLED

    def _throttled(self, limiter: Limiter, now: float) -> Reply:
        """The rate limit's 429, with ``Retry-After`` when ``retry_after_on_429``."""
        if not self.retry_after_on_429:
            return THROTTLED
        seconds = max(1, math.ceil(limiter.wait_s(now)))
        return THROTTLED.with_headers(("Retry-After", str(seconds)))

    def _replayed(self, client: Client, signature: str) -> bool:
        """True when this signature was accepted for this key within the time window;
        else remember it."""
        replays = self._replays
        assert replays is not None
        now = self._monotonic()
        order = self._replay_order
        edge = now - self.time_window_ms / 1000
        while order and order[0][0] <= edge:
            replays.pop(order.popleft()[1], None)
        key = (client.api_key, signature)
        if key in replays:
            return True
        replays[key] = now
        order.append((now, key))
        return False

    def _authenticate(self, client: Client | None, request: Request) -> Reply | None:
        """None when the request may proceed, else the 401/403 or 429 answer.

        The rate limit is checked before the (costly) signature, as a gateway would.
        """
        if client is None:
            return self._auth_replies["unknown"]
        if client.revoked:
            return self._auth_replies["revoked"]
        now = self._monotonic()
        bucket = client.bucket
        if bucket is not None and not bucket.take(now):
            return self._throttled(bucket, now)
        shared = self._global_bucket
        if shared is not None and not shared.take(now):
            if bucket is not None:
                bucket.refund()
            return self._throttled(shared, now)
        timestamp, signature = request.timestamp, request.signature
        if not timestamp or not signature:
            return self._auth_replies["headers"]
        if not (
            len(timestamp) <= _TIMESTAMP_MAX_DIGITS and timestamp.isascii() and timestamp.isdigit()
        ):
            return self._auth_replies["clock"]
        if abs(self.now_ms() - int(timestamp)) > self.time_window_ms:
            return self._auth_replies["clock"]
        payload = signing_payload(
            timestamp, request.method, request.path, request.query, request.body
        )
        if not verify(client.public_key, payload, signature, client.encoding):
            return self._auth_replies["signature"]
        if self._replays is not None and self._replayed(client, signature):
            return self._auth_replies["replayed"]
        return None

    def _record(
        self,
        request: Request,
        client: Client | None,
        endpoint: str,
        reply: Reply,
        order_id: int | None,
    ) -> None:
        label = client.label if client is not None else ANONYMOUS
        if reply.drop:
            status: int | None = None
            key = "drop"
        elif reply.hold_s:
            status, key = None, "timeout"
        else:
            status, key = reply.status, _STATUS_KEYS.get(reply.status) or str(reply.status)
        counts = self._counts
        ckey = (label, endpoint, key)
        counts[ckey] = counts.get(ckey, 0) + 1
        self._seq += 1
        self._log.append(
            (
                self._seq,
                self.now_ms(),
                request.method,
                request.path,
                request.query,
                None if client is None else label,
                endpoint,
                status,
                reply.tag,
                order_id,
            )
        )

    # -------------------------------------------------------------- handlers

    def _h_time(self, client: Client | None, query: str, body: bytes) -> tuple[Reply, int | None]:
        return Reply(200, b'{"timezone":"UTC","timestamp":%d}' % self.now_ms()), None

    def _h_exchange_info(
        self, client: Client | None, query: str, body: bytes
    ) -> tuple[Reply, int | None]:
        return Reply(200, self._exchange_info), None

    def _unknown_pair(self, symbol: str | None, empty: Reply) -> Reply:
        """The answer for a missing symbol or a pair the exchange does not trade:
        400, or ``empty`` for an unknown pair when ``unknown_symbol == "empty"``."""
        if symbol is not None and self._unknown_symbol == "empty":
            return empty
        return _UNKNOWN_SYMBOL

    def _pair_query(self, query: str, empty: Reply | None) -> tuple[str, dict[str, str]] | Reply:
        """The query's traded pair and parameters, or the refusal: see
        :meth:`_unknown_pair` (with ``empty`` None an unknown pair is always a 400)."""
        params = parse_query(query)
        if params is None:
            return invalid("repeated query parameter")
        symbol = params.get("symbol")
        if symbol is None or symbol not in self._specs:
            return _UNKNOWN_SYMBOL if empty is None else self._unknown_pair(symbol, empty)
        return symbol, params

    def _symbol_and_id(self, query: str, empty: Reply | None = None) -> tuple[str, int] | Reply:
        parsed = self._pair_query(query, empty)
        if isinstance(parsed, Reply):
            return parsed
        symbol, params = parsed
        order_id = parse_id(params.get("order_id"))
        if order_id is None:
            return invalid("order_id must be a positive int64")
        return symbol, order_id

    def _h_cancel(self, client: Client | None, query: str, body: bytes) -> tuple[Reply, int | None]:
        assert client is not None
        parsed = self._symbol_and_id(query, ORDER_NOT_FOUND)
        if isinstance(parsed, Reply):
            return parsed, None
        symbol, order_id = parsed
        return self._cancel(client, symbol, order_id), order_id

    def _h_get_order(
        self, client: Client | None, query: str, body: bytes
    ) -> tuple[Reply, int | None]:
        assert client is not None
        parsed = self._symbol_and_id(query)
        if isinstance(parsed, Reply):
            return parsed, None
        symbol, order_id = parsed
        order = self._orders.get(order_id)
        if order is None or order.owner != client.api_key or order.symbol != symbol:
            return ORDER_NOT_FOUND, order_id
        return Reply(200, order.to_json()), order_id

    def _h_open_orders(
        self, client: Client | None, query: str, body: bytes
    ) -> tuple[Reply, int | None]:
        assert client is not None
        parsed_query = self._pair_query(query, _EMPTY_LIST)
        if isinstance(parsed_query, Reply):
            return parsed_query, None
        symbol, params = parsed_query
        from_id = None
        if "from_order_id" in params:
            from_id = parse_id(params["from_order_id"], minimum=0)
            if from_id is None:
                return invalid("from_order_id must be an int64"), None
        limit = 100
        if "limit" in params:
            parsed = parse_id(params["limit"])
            if parsed is None or parsed > self.max_page_limit:
                return invalid(f"limit must be within [1, {self.max_page_limit}]"), None
            limit = parsed
        book = client.books.get(symbol)
        orders = book.page(from_id, limit) if book is not None else []
        return Reply(200, b"[" + b",".join([o.to_json() for o in orders]) + b"]"), None

    def _h_cancel_batch(
        self, client: Client | None, query: str, body: bytes
    ) -> tuple[Reply, int | None]:
        assert client is not None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # bad UTF-8, bad JSON, absurd nesting
            return invalid("body is not JSON"), None
        if not isinstance(data, dict):
            return invalid("body must be a JSON object"), None
        symbol = data.get("symbol")
        ids = data.get("order_ids")
        if not isinstance(symbol, str) or symbol not in self._specs:
            return self._unknown_pair(
                symbol if isinstance(symbol, str) else None, _EMPTY_BULK
            ), None
        if not isinstance(ids, list) or len(ids) > self.max_batch:
            return invalid(f"order_ids must be a list of at most {self.max_batch} ids"), None
        if any(type(i) is not int or not 0 < i <= _MAX_INT64 for i in ids):
            return invalid("order_ids must be positive int64 numbers"), None
        return self._batch_reply(client, symbol, ids), None

    def _h_cancel_all(
        self, client: Client | None, query: str, body: bytes
    ) -> tuple[Reply, int | None]:
        assert client is not None
        parsed = self._pair_query(query, _EMPTY_BULK)
        if isinstance(parsed, Reply):
            return parsed, None
        symbol, _ = parsed
        book = client.books.get(symbol)
        # A snapshot: orders spawned while cancelling stay open (not atomic, as documented).
        ids = sorted(book.open, reverse=True) if book is not None else []
        return self._batch_reply(client, symbol, ids), None

    def _batch_reply(self, client: Client, symbol: str, ids: list[int]) -> Reply:
        success: list[int] = []
        fail: list[int] = []
        for order_id in ids:
            if self._cancel(client, symbol, order_id) is CANCEL_SENT:
                success.append(order_id)
            else:
                fail.append(order_id)
        body = json.dumps({"success": success, "fail": fail}, separators=(",", ":"))
        return Reply(200, body.encode())

    def _h_create_order(
        self, client: Client | None, query: str, body: bytes
    ) -> tuple[Reply, int | None]:
        assert client is not None
        try:
            data = json.loads(body, parse_float=Decimal)
        except (ValueError, RecursionError):
            return invalid("body is not JSON"), None
        if not isinstance(data, dict):
            return invalid("body must be a JSON object"), None
        symbol, side = data.get("symbol"), data.get("side")
        order_type = data.get("type", "LIMIT")
        if not isinstance(symbol, str) or symbol not in self._specs:
            return invalid("unknown or missing symbol"), None
        if side not in SIDES:
            return invalid("side must be BUY or SELL"), None
        if order_type not in ORDER_TYPES:
            return invalid("type must be LIMIT, MARKET or LIMIT_MAKER"), None
        quantity = _decimal(data.get("quantity"))
        if quantity is None:
            return invalid("quantity must be a positive decimal"), None
        if order_type == "MARKET":
            fill = self._specs[symbol].reference_price
            order = self._new_order(
                client,
                symbol,
                side=side,
                order_type="MARKET",
                price="0",
                quantity=str(quantity),
                status="FILLED",
                executed=str(quantity),
                avg_price=fill,
            )
            return Reply(200, order.to_json()), order.order_id
        price = _decimal(data.get("price"))
        if price is None:
            return invalid("price must be a positive decimal"), None
        order = self._new_order(
            client,
            symbol,
            side=side,
            order_type=order_type,
            price=str(price),
            quantity=str(quantity),
            status="NEW",
        )
        return Reply(200, order.to_json()), order.order_id

    # ------------------------------------------------------------ inspection

    @property
    def counters(self) -> dict[str, dict[str, dict[str, int]]]:
        """Request counts: client label -> endpoint -> status (``"200"``, ``"429"``,
        ``"timeout"``, ``"drop"``...) -> count. Label ``"-"``: no known client."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (label, endpoint, status), n in self._counts.items():
            out.setdefault(label, {}).setdefault(endpoint, {})[status] = n
        return out

    def count(
        self,
        api_key: str | None = None,
        endpoint: str | None = None,
        status: int | str | None = None,
    ) -> int:
        """Sum of requests matching every given filter (client by API key)."""
        label = None if api_key is None else self._client(api_key).label
        want = None if status is None else str(status)
        return sum(
            n
            for (lab, ep, st), n in self._counts.items()
            if (label is None or lab == label)
            and (endpoint is None or ep == endpoint)
            and (want is None or st == want)
        )

    @property
    def throttled(self) -> int:
        """Requests answered 429 (rate limit or forced)."""
        return self.count(status=429)

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest log entry (0 before the first request)."""
        return self._seq

    @property
    def request_log(self) -> list[LogEntry]:
        """Every request kept (the newest ``log_max``), oldest first."""
        return [LogEntry(*row) for row in self._log]

    def log_since(self, seq: int = 0, limit: int | None = None) -> list[LogEntry]:
        """Log entries with ``seq`` greater than ``seq`` (for incremental reads)."""
        out: list[LogEntry] = []
        for row in self._log:
            if row[0] > seq:
                out.append(LogEntry(*row))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def api_keys(self) -> list[str]:
        """Registered API keys, in registration order (in-process use only)."""
        return list(self._clients)

    def client_labels(self) -> list[str]:
        return [c.label for c in self._clients.values()]


_STATUS_KEYS = {s: str(s) for s in (200, 400, 401, 403, 404, 405, 429, 500, 502, 503, 504)}


def _limit(rate: float, burst: int | None) -> tuple[float, int]:
    if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
        raise ValueError("rate_limit_per_second must be a positive number")
    burst = default_burst(rate) if burst is None else burst
    if burst < 1:
        raise ValueError("burst must be at least 1")
    return float(rate), int(burst)


def _limit_dict(limit: tuple[float, int] | None) -> dict[str, float] | None:
    return None if limit is None else {"rate_limit_per_second": limit[0], "burst": limit[1]}


def _fault_reply(fault: FaultDecision) -> Reply:
    if fault.kind == "drop":
        return Reply(0, b"", "fault:drop", delay_s=fault.delay_s, drop=True)
    if fault.kind == "timeout":
        return Reply(
            0, b"", "fault:timeout", delay_s=fault.delay_s, hold_s=max(fault.hold_s, 0.001)
        )
    if fault.kind == "throttle":
        return Reply(429, THROTTLED.body, "fault:429", delay_s=fault.delay_s)
    body = b'{"error":"api_error"}'
    return Reply(fault.status, body, f"fault:{fault.status}", delay_s=fault.delay_s)


def _cancelled_status(order: SimOrder) -> str:
    return "CANCELLED" if order.executed_quantity == "0" else "PARTIAL_CANCELLED"


def _random_quantity(rng: random.Random, spec: SymbolSpec) -> Decimal:
    step = Decimal(1).scaleb(-spec.base_precision)
    # Aim at a notional of 10..5000 quote units, rounded to the base precision.
    notional = Decimal(rng.randint(10, 5000))
    qty = (notional / Decimal(spec.reference_price)).quantize(step)
    return max(qty, step)
