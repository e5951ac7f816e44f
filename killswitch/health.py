"""Health: readiness as plain state, and the one HTTP listener for Prometheus and Kubernetes.

:class:`Readiness` is pure: the daemon feeds it (consuming or not, the exchange's answers
per account) with explicit timestamps, and :meth:`Readiness.evaluate` says whether the
daemon can do its job right now and, if not, why. :class:`HealthServer` serves

- ``/metrics``: the injected registry in the Prometheus text format (or OpenMetrics when
  the scraper asks for it);
- ``/healthz``: 200 while the process and its event loop answer (liveness);
- ``/readyz``: 200 when ready, else 503 with ``{"ready": false, "reasons": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from killswitch.config import MetricsSettings
from killswitch.core.outcomes import Outcome
from killswitch.core.ports import Observer
from killswitch.exchange.errors import redirect_problem

__all__ = [
    "PUBLIC_ENDPOINTS",
    "Answer",
    "HealthServer",
    "HealthServerError",
    "Readiness",
    "ReadinessObserver",
    "ReadyReport",
    "classify_answer",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Answer(StrEnum):
    """What one exchange HTTP status says about the account's connection to the exchange."""

    OK = "ok"  # the exchange answered and understood us (even if it said no to an order)
    AUTH = "auth"  # the exchange refused the key or the signature
    REDIRECT = "redirect"  # a 3xx: the base URL points at the wrong place
    NONE = "none"  # no usable answer: transport error, timeout, 5xx, cancelled


# The exchange's public endpoints (client endpoint names). The client sends them
# unsigned and signs them only after a refusal, so their 401/403 says nothing about the
# key (a refusal of the signed retry reaches readiness from the probe instead), and an
# answer from them proves the exchange answers but not that the key is accepted.
PUBLIC_ENDPOINTS = frozenset({"time", "exchange_info"})


def classify_answer(status: str) -> Answer:
    """Classify a ``status`` given to ``Observer.request_done`` (code, ``timeout``, ``error``).

    A 4xx about an order (already closed, not found, invalid) and a 429 still prove the
    exchange is reachable and accepts our key; 401/403 mean the key or signature is refused;
    a 3xx that the account's base URL is wrong (the client never follows one).
    """
    if not status.isdigit():
        return Answer.NONE
    code = int(status)
    if code in (401, 403):
        return Answer.AUTH
    if 300 <= code < 400:
        return Answer.REDIRECT
    if 200 <= code < 500:
        return Answer.OK
    return Answer.NONE


@dataclass(frozen=True, slots=True)
class ReadyReport:
    """The verdict of :meth:`Readiness.evaluate`."""

    ready: bool
    reasons: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        """The ``/readyz`` body."""
        return {"ready": self.ready, "reasons": list(self.reasons)}


@dataclass(slots=True)
class Readiness:
    """Whether the daemon can act on an alert now. Pure state; time is passed in.

    Ready means: the broker answers, the producer can deliver, the consumer is
    consuming, the daemon is not shutting down, and every configured account had a
    usable exchange answer within ``stale_after_s``, no authentication refusal since its
    last good answer to a signed call, no redirect from any endpoint since that
    endpoint's last good answer (a redirect is a wrong ``base_url``: the endpoint that
    answered it, a cancel endpoint or the server time, may not be called again until a
    kill needs it), a pair list from some source (without one a whole-account kill
    cannot run), and no refusal of the exchange probe's listing since its last accepted
    one (the probe lists with the engine's page size: a refused listing means every
    kill's listing is refused too), and no signed request that went unanswered through
    its retries since the last answered one (the probe's listing: the exchange cannot be
    reached, though its staleness would take ``stale_after_s`` to tell).
    """

    accounts: tuple[str, ...]
    stale_after_s: float
    consuming: bool = False
    draining: bool = False
    kafka_problem: str | None = None  # why the broker is not usable, None while it answers
    producer_problem: str | None = None  # why the producer delivers nothing, None while it can
    _last_ok: dict[str, float] = field(default_factory=dict)
    _auth_failed: dict[str, str | None] = field(default_factory=dict)  # -> why, if known
    # account -> endpoint -> the problem ("" for a redirect reported without its endpoint)
    _redirected: dict[str, dict[str, str]] = field(default_factory=dict)
    _no_pairs: dict[str, str] = field(default_factory=dict)  # account: why it has none
    _listing_refused: dict[str, str] = field(default_factory=dict)  # account: why
    _pairs_unread: set[str] = field(default_factory=set)  # no pair_list() report yet
    _unreachable: dict[str, str] = field(default_factory=dict)  # account: why, until signed OK
    _throttled: set[str] = field(default_factory=set)  # of those, the ones 429s marked

    @classmethod
    def for_accounts(cls, accounts: Iterable[str], stale_after_s: float) -> Readiness:
        """Readiness for these configured account ids."""
        return cls(accounts=tuple(accounts), stale_after_s=stale_after_s)

    def set_consuming(self, consuming: bool) -> None:
        """The Kafka consumer has (True) or lost (False) its assignment and is polling."""
        self.consuming = consuming

    def set_kafka(self, up: bool, reason: str) -> None:
        """The broker answers (``up``) or not, and why not (shown as a readiness reason)."""
        self.kafka_problem = None if up else reason

    def set_producer(self, problem: str | None) -> None:
        """The Kafka producer can deliver (``problem`` None) or not, and why not (shown
        as a readiness reason): no result could reach the results topic."""
        self.producer_problem = problem

    def set_draining(self) -> None:
        """Shutdown began: stop receiving traffic from now on."""
        self.draining = True

    def exchange_ok(
        self,
        account: str,
        now: float,
        *,
        signed: bool = True,
        endpoint: str = "",
        throttled: bool = False,
    ) -> None:
        """The exchange gave ``account`` a usable answer at ``now`` (from ``endpoint``).
        One to a signed call also clears an auth failure (the key works) and an
        unreachable exchange, but a 429 (``throttled``) does not clear one found
        throttled (a request throttled through its retries is what marked it, and its
        429s come between); a redirect clears only with a good answer from the endpoint
        that answered it."""
        self._last_ok[account] = now
        if signed:
            self._auth_failed.pop(account, None)
            if not (throttled and account in self._throttled):
                self._answered(account)
        redirects = self._redirected.get(account)
        if redirects:
            redirects.pop(endpoint, None)
            if signed:
                redirects.pop("", None)

    def auth_rejected(self, account: str, detail: str | None = None) -> None:
        """The exchange refused ``account``'s key or signature (401/403 ``invalid_client``).

        ``detail`` says what else may be wrong (the clock offset could not be measured);
        a later refusal without one keeps it."""
        if detail is not None or account not in self._auth_failed:
            self._auth_failed[account] = detail

    def unreachable(self, account: str, problem: str, *, throttled: bool = False) -> None:
        """A signed request of ``account`` (the probe's listing) got no usable answer
        through all its retries (``throttled``: 429s to the end; ``problem`` says which):
        not ready until a signed call is answered again, however recently a public
        endpoint answered."""
        self._unreachable[account] = problem
        if throttled:
            self._throttled.add(account)
        else:
            self._throttled.discard(account)

    def _answered(self, account: str) -> None:
        """A signed call of ``account`` was answered: the exchange is reachable."""
        self._unreachable.pop(account, None)
        self._throttled.discard(account)

    def redirected(self, account: str, problem: str, endpoint: str = "") -> None:
        """``endpoint`` answered ``account`` with a redirect; ``problem`` says where to."""
        self._redirected.setdefault(account, {})[endpoint] = problem

    def expect_pair_lists(self) -> None:
        """Every account is not ready until :meth:`pair_list` reports on it: the first
        clock sync answers before the pair list is read (with exchange-info failing,
        its retries take seconds), and an answer alone must not make it ready."""
        self._pairs_unread = set(self.accounts)

    def pair_list(self, account: str, problem: str | None) -> None:
        """``account`` has a pair list (``problem`` None) or has none from any source
        (``problem`` says why: exchange-info failing and no ``symbols`` setting)."""
        self._pairs_unread.discard(account)
        if problem is None:
            self._no_pairs.pop(account, None)
        else:
            self._no_pairs[account] = problem

    def listing(self, account: str, problem: str | None) -> None:
        """The exchange accepted (``problem`` None) or refused ``account``'s listing of
        open orders as a kill would send it; ``problem`` says why."""
        if problem is None:
            self._listing_refused.pop(account, None)
        else:
            self._listing_refused[account] = problem

    def record_exchange(self, account: str, status: str, now: float, endpoint: str = "") -> None:
        """Feed one HTTP status and endpoint (as given to ``Observer.request_done``)."""
        answer = classify_answer(status)
        public = endpoint in PUBLIC_ENDPOINTS
        if answer is Answer.OK:
            self.exchange_ok(
                account, now, signed=not public, endpoint=endpoint, throttled=status == "429"
            )
        elif answer is Answer.AUTH and not public:
            self.auth_rejected(account)
            self._answered(account)  # it answered: the key is the problem
        elif answer is Answer.REDIRECT and endpoint not in self._redirected.get(account, {}):
            # Where to comes with the client's report (ReadinessObserver.redirected).
            on = f" on {endpoint}" if endpoint else ""
            self.redirected(
                account, f"exchange answered {status} redirect{on}: check base_url", endpoint
            )

    def evaluate(self, now: float) -> ReadyReport:
        """Ready or not at ``now``, with one reason per thing that is not ready."""
        reasons: list[str] = []
        if self.draining:
            reasons.append("shutting down")
        if self.kafka_problem is not None:
            reasons.append(self.kafka_problem)
        if self.producer_problem is not None:
            reasons.append(self.producer_problem)
        if not self.consuming:
            reasons.append("kafka: not consuming")
        for account in self.accounts:
            reason = self._account_reason(account, now)
            if reason:
                reasons.append(reason)
        return ReadyReport(ready=not reasons, reasons=tuple(reasons))

    def _account_reason(self, account: str, now: float) -> str | None:
        redirects = self._redirected.get(account)
        if redirects:
            return f"{account}: " + "; ".join(redirects[e] for e in sorted(redirects))
        if account in self._auth_failed:
            detail = self._auth_failed[account]
            return f"{account}: auth rejected" + (f"; {detail}" if detail else "")
        no_pairs = self._no_pairs.get(account)
        if no_pairs is not None:
            return f"{account}: {no_pairs}"
        refused = self._listing_refused.get(account)
        if refused is not None:
            return f"{account}: {refused}"
        unreachable = self._unreachable.get(account)
        if unreachable is not None:
            return f"exchange: {account} {unreachable}"
        last = self._last_ok.get(account)
        if last is None and self.kafka_problem is not None:
            # The daemon starts asking the exchange once the broker answers: "no answer"
            # would send an operator looking at a healthy exchange.
            return f"exchange: {account} not asked yet (once kafka answers)"
        if last is None:
            return f"exchange: {account} no answer yet"
        if account in self._pairs_unread:
            return f"exchange: {account} pair list not read yet"
        age = now - last
        if age > self.stale_after_s:
            return f"exchange: {account} no answer for {age:.0f}s"
        return None


class ReadinessObserver:
    """An ``Observer`` that feeds exchange answers to :class:`Readiness` and forwards all
    events to ``inner`` (usually ``killswitch.metrics.Metrics``)."""

    def __init__(
        self, inner: Observer, readiness: Readiness, clock: Clock = time.monotonic
    ) -> None:
        self._inner = inner
        self._readiness = readiness
        self._clock = clock

    def request_done(self, account: str, endpoint: str, status: str, seconds: float) -> None:
        """Forward, and record whether the exchange answered."""
        try:
            self._readiness.record_exchange(account, status, self._clock(), endpoint)
        except Exception:  # an Observer never raises into the engine
            log.warning("readiness: could not record an exchange answer", exc_info=True)
        self._inner.request_done(account, endpoint, status, seconds)

    def redirected(self, account: str, endpoint: str, status: int, location: str) -> None:
        """Readiness names the redirect, where it points and which endpoint answered it."""
        try:
            problem = redirect_problem(status, location, endpoint)
            self._readiness.redirected(account, problem, endpoint)
        except Exception:  # an Observer never raises into the engine
            log.warning("readiness: could not record a redirect", exc_info=True)

    def rate_changed(self, account: str, rate: float) -> None:
        self._inner.rate_changed(account, rate)

    def inflight_cancels(self, account: str, delta: int) -> None:
        self._inner.inflight_cancels(account, delta)

    def cancel_outcome(self, account: str, outcome: Outcome) -> None:
        self._inner.cancel_outcome(account, outcome)

    def first_cancel(self, seconds: float) -> None:
        self._inner.first_cancel(seconds)

    def flat(self, seconds: Sequence[float]) -> None:
        self._inner.flat(seconds)

    def halted(self, account: str, halted: bool) -> None:
        self._inner.halted(account, halted)

    def residual(self, account: str, count: int, unlisted_pairs: int) -> None:
        self._inner.residual(account, count, unlisted_pairs)

    def latch_reaction(self, account: str, seconds: float | None) -> None:
        self._inner.latch_reaction(account, seconds)

    def sweep_failed(self, account: str) -> None:
        self._inner.sweep_failed(account)


Encoder = Callable[[Collector], bytes]  # what choose_encoder gives: reads collect() only


class _Families:
    """Metric families already collected, as an encoder reads a registry."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


async def render_in_turns(encoder: Encoder, registry: CollectorRegistry) -> bytes:
    """``encoder(registry)``, byte for byte, one metric family per turn of the event loop.

    Rendering every series takes milliseconds of pure Python. All at once it holds the
    event loop (a kill arriving meanwhile waits); in a worker thread it holds the GIL
    in turns of the interpreter's switch interval (5 ms), each a pause of the loop. One
    family at a time, the loop runs between families. The text of each family is
    prometheus_client's; what the format adds once at the end (OpenMetrics' ``# EOF``)
    is what it renders for no family, taken off each and put back once."""
    end = encoder(_Families([]))
    parts: list[bytes] = []
    for family in registry.collect():
        text = encoder(_Families([family]))
        parts.append(text.removesuffix(end) if end else text)
        await asyncio.sleep(0)
    parts.append(end)
    return b"".join(parts)


class HealthServerError(Exception):
    """The listener could not start (``str()`` is an operator message)."""


_JSON = "application/json"


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one listener (aiohttp).

    ``port`` 0 picks a free port; :attr:`port` is the bound one after :meth:`start`.
    ``on_ready`` receives every readiness verdict computed (e.g. ``Metrics.set_ready``), so
    the ``killswitch_ready`` gauge is current at each scrape.
    """

    def __init__(
        self,
        settings: MetricsSettings,
        registry: CollectorRegistry,
        readiness: Readiness,
        *,
        on_ready: Callable[[bool], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._host = settings.host
        self._requested_port = settings.port
        self._registry = registry
        self._readiness = readiness
        self._on_ready = on_ready
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener (after :meth:`start`)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> None:
        """Bind and serve. Raises :class:`HealthServerError` when the address is unusable."""
        # access_log=None: Prometheus and kubelet poll every few seconds; not worth a line each.
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            where = f"{self._host}:{self._requested_port}"
            # aiohttp re-raises with a long message of its own; errno says it all.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise HealthServerError(f"metrics listener cannot bind {where}: {reason}") from None
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("metrics and health listener on %s", self.url)

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def report(self) -> ReadyReport:
        """Evaluate readiness now and pass the verdict to ``on_ready``."""
        report = self._readiness.evaluate(self._clock())
        if self._on_ready is not None:
            self._on_ready(report.ready)
        return report

    async def _metrics(self, request: web.Request) -> web.Response:
        self.report()  # keep killswitch_ready current at every scrape
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await render_in_turns(encoder, self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"alive": True}), content_type=_JSON)

    async def _readyz(self, request: web.Request) -> web.Response:
        report = self.report()
        return web.Response(
            text=json.dumps(report.as_json()),
            status=200 if report.ready else 503,
            content_type=_JSON,
        )
