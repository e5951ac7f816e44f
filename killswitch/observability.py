"""The daemon's Prometheus metrics, health listener and exchange probe, from the settings.

:func:`prometheus_observability` fills :class:`Observability`, the daemon's view of them: one
:class:`~killswitch.metrics.Metrics` on a registry of its own serves the engine and
the exchange clients (through :class:`~killswitch.health.ReadinessObserver`, so every
exchange answer also feeds readiness) and the intake (alerts read, loop lag); one
:class:`~killswitch.health.HealthServer` serves ``/metrics``, ``/healthz`` and
``/readyz`` on ``metrics.host:metrics.port``. With ``metrics.enabled = false`` nothing
is served and every event goes nowhere.

Readiness needs a recent answer from the exchange for every account, and an idle
daemon sends nothing; so the daemon runs one :class:`ExchangeProbe` on its own
exchange clients (the engine's, with their limiters) every ``exchange_stale_after_s /
4`` (at most 30 s, :func:`probe_interval_s`): a clock sync, the pair list when the
cached one is no longer fresh, and one signed read-only call per account (the first
page of open orders on one pair, of the engine's ``page_size`` orders, as a kill lists
them). Its answers reach readiness and the metrics like any other call: a 200 proves
the exchange answers and accepts the key, a 401/403 marks the account not ready, and
so does any other refusal of the listing (a 400 for a page size the exchange does not
take: every kill's listing would be refused the same way), with the exchange's reason.
The exchange info it reads is a public call, signed only if the exchange refuses it
unsigned (the client remembers): a refusal of the *signed* call is a refused key, which
the probe hands to readiness itself, saying when the clock may be the cause (the clock
offset could not be measured, see ``ExchangeClient.auth_clock_hint``). Redirects need
nothing here: the client reports every 3xx of every endpoint with its ``Location``
(``ReadinessObserver.redirected``).
``killswitch check`` reads a first page too (:func:`first_page`), of the same size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from killswitch.config import AccountSettings, DeadmanSource, MetricsSettings
from killswitch.core.orders import SymbolInfo
from killswitch.core.ports import (
    AlertObserver,
    EngineConfig,
    NullAlertObserver,
    NullObserver,
    Observer,
)
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import (
    AuthError,
    ExchangeError,
    ExchangeUnavailable,
    Redirected,
    RequestRejected,
)
from killswitch.health import HealthServer, Readiness, ReadinessObserver
from killswitch.metrics import Metrics
from killswitch.tasks import Interrupted, unless_set

__all__ = [
    "ExchangeProbe",
    "Observability",
    "first_page",
    "probe_interval_s",
    "prometheus_observability",
    "unanswered_text",
]

log = logging.getLogger(__name__)

_PROBE_MAX_INTERVAL_S = 30.0
# The engine's default page size (``engine.page_size``), for a probe built without one.
_DEFAULT_PAGE = EngineConfig().page_size


@dataclass
class Observability:
    """Metrics and health, as the daemon sees them (no-ops when metrics are off).

    ``observer`` goes to the engine and the exchange clients (Prometheus, and the
    exchange answers feed readiness); ``alert_observer`` to the intake, the dead-man
    watcher and the loop lag probe; ``set_consuming``/``set_draining`` drive
    ``/readyz`` and ``killswitch_ready``; ``set_kafka(up, reason)`` (from
    :class:`~killswitch.kafka.watch.KafkaWatch`) drives both and
    ``killswitch_kafka_up``; ``producer_failed(reason)`` (from the
    :class:`~killswitch.kafka.outputs.Publisher`) drives both and
    ``killswitch_kafka_producer_failed``; ``start``/``stop`` run the listener for
    /metrics, /healthz and /readyz.
    """

    observer: Observer = field(default_factory=NullObserver)
    alert_observer: AlertObserver = field(default_factory=NullAlertObserver)
    start: Callable[[], Awaitable[None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None
    set_consuming: Callable[[bool], None] = lambda consuming: None
    set_kafka: Callable[[bool, str], None] = lambda up, reason: None
    producer_failed: Callable[[str], None] = lambda reason: None
    set_draining: Callable[[], None] = lambda: None
    url: Callable[[], str] | None = None
    readiness: Readiness | None = None  # what the exchange probe reports besides answers


async def first_page(client: ExchangeClient, symbol: str, limit: int = 10) -> int:
    """Open orders on the first page for ``symbol`` (one signed read-only request)."""
    pages = client.open_orders(symbol, limit=limit)
    try:
        first = await anext(pages, None)
    finally:
        if isinstance(pages, AsyncGenerator):  # stop paging after the first page
            await pages.aclose()
    return len(first) if first is not None else 0


class ExchangeProbe:
    """Keeps the exchange warm and readiness current while no kill runs.

    One round per account: a clock sync, the pair list (a request only when the cached
    one is no longer fresh) and the first page of open orders on the first pair (one
    signed read-only request, of ``page_size`` orders: the engine's, so a page size the
    exchange refuses makes the account not ready instead of failing the next kill). It
    runs on the account's own clients, the engine's: its requests go through the
    account's limiter, which is the only writer of that account's
    ``killswitch_rate_limit_per_second``, and count against the one budget the exchange
    keeps per key.
    """

    def __init__(
        self,
        clients: Mapping[str, ExchangeClient],
        interval_s: float,
        readiness: Readiness | None = None,
        page_size: int = _DEFAULT_PAGE,
    ) -> None:
        self._clients = clients
        self._interval = interval_s
        self._readiness = readiness
        self._page_size = page_size
        self._refused: dict[str, str] = {}  # account: why its last listing was refused
        self._auth: dict[str, str] = {}  # account: why the exchange refused its key

    async def probe(self, client: ExchangeClient) -> None:
        """One round for one account; the observer records what the exchange answered."""
        try:
            await client.sync_clock()
        except ExchangeError as exc:  # the pairs and the listing still say what they can
            log.warning("exchange probe: clock sync failed: %s", exc, extra=_extra(client))
        try:
            pairs = await self._pairs(client)
            if pairs:
                await self._list(client, pairs[0].symbol)
        except AuthError as exc:
            hint = client.auth_clock_hint(exc.endpoint)
            if self._readiness is not None:
                self._readiness.auth_rejected(client.account, hint or None)
            self._auth_refused(client, exc)
        except ExchangeUnavailable as exc:
            if self._readiness is not None:
                throttled = exc.last_status == 429
                self._readiness.unreachable(
                    client.account, unanswered_text(exc), throttled=throttled
                )
            log.debug("exchange probe: %s", exc, extra=_extra(client))
        except ExchangeError as exc:
            log.debug("exchange probe: %s", exc, extra=_extra(client))
        except Exception:  # a probe must never stop probing (nor the daemon)
            log.warning("exchange probe failed", exc_info=True, extra=_extra(client))

    async def _list(self, client: ExchangeClient, symbol: str) -> None:
        """The first page of open orders on ``symbol``, as a kill asks for it; readiness
        and the log hear when the exchange refuses it (a 4xx other than an auth refusal
        or a redirect, which readiness learns otherwise) and when it accepts it again."""
        account = client.account
        try:
            await first_page(client, symbol, limit=self._page_size)
        except RequestRejected as exc:
            if not isinstance(exc, (AuthError, Redirected)):
                self._listing_refused(account, exc)
            raise
        if self._refused.pop(account, None) is not None:
            log.info("exchange probe: open orders listed again", extra=_extra(client))
        if self._auth.pop(account, None) is not None:
            log.info("exchange probe: the exchange accepts the key again", extra=_extra(client))
        if self._readiness is not None:
            self._readiness.listing(account, None)

    def _auth_refused(self, client: ExchangeClient, exc: AuthError) -> None:
        """Logged once when the exchange starts refusing the account's key (again only if
        the refusal's status or code changes): every kill of the account would fail the
        same way. The error's text already carries the clock hint when there is one."""
        refusal = f"{exc.status} {exc.code}"
        if self._auth.get(client.account) != refusal:
            log.warning(
                f"exchange probe: the exchange refuses the key ({_without_prefix(exc)}): "
                "check the account's api_key and that the exchange knows the public half "
                "of its private key",
                extra=_extra(client),
            )
        self._auth[client.account] = refusal

    def _listing_refused(self, account: str, exc: RequestRejected) -> None:
        problem = (
            f"open orders refused at engine.page_size {self._page_size} "
            f"({_without_prefix(exc)}): every kill's listing would be"
        )
        if self._refused.get(account) != problem:
            log.warning(f"exchange probe: {problem}", extra={"account": account})
        self._refused[account] = problem
        if self._readiness is not None:
            self._readiness.listing(account, problem)

    async def _pairs(self, client: ExchangeClient) -> list[SymbolInfo]:
        """The account's pairs; readiness learns whether it has any pair list at all
        (exchange-info raises only when no source is left)."""
        try:
            pairs = await client.exchange_info()
        except ExchangeError as exc:
            if self._readiness is not None:
                self._readiness.pair_list(client.account, _without_prefix(exc))
            raise
        if self._readiness is not None:
            self._readiness.pair_list(client.account, None)
        return pairs

    async def round(self) -> None:
        """One round for every account, concurrently."""
        await asyncio.gather(*(self.probe(c) for c in self._clients.values()))

    async def run(self, stop: asyncio.Event) -> None:
        """A round now, then one every interval, until ``stop`` is set; a round under
        way then is cut short (a request to a hanging exchange would otherwise hold the
        daemon's stop for its read timeout)."""
        while not stop.is_set():
            try:
                await unless_set(stop, self.round())
            except Interrupted:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await stop.wait()


def probe_interval_s(exchange_stale_after_s: float) -> float:
    """How often the probe runs: four rounds per ``exchange_stale_after_s`` (an answer
    lost now and then does not make the account stale), at most every 30 s."""
    return min(_PROBE_MAX_INTERVAL_S, exchange_stale_after_s / 4)


def _extra(client: ExchangeClient) -> dict[str, str]:
    return {"account": client.account}


def unanswered_text(exc: ExchangeUnavailable) -> str:
    """What a request that went unanswered through its retries says of the exchange:
    throttled when its last answer was a 429 (the key was not refused), else
    unreachable."""
    how = "throttled (HTTP 429) through every retry" if exc.last_status == 429 else "unreachable"
    return f"{how} ({_without_prefix(exc)})"


def _without_prefix(exc: ExchangeError) -> str:
    """The error's message without the ``account endpoint:`` prefix (readiness names
    the account itself)."""
    prefix = " ".join(part for part in (exc.account, exc.endpoint) if part) + ": "
    return str(exc).removeprefix(prefix)


def prometheus_observability(
    settings: MetricsSettings,
    accounts: Sequence[AccountSettings],
    deadman: Sequence[DeadmanSource],
) -> Observability:
    """Metrics, readiness and the listener for one daemon (nothing when ``settings``, the
    ``metrics`` section, disables them); ``accounts`` and ``deadman`` name the label sets."""
    if not settings.enabled:
        return Observability()
    registry = CollectorRegistry()
    metrics = Metrics.from_sections(registry, accounts, deadman)
    readiness = Readiness.for_accounts([a.id for a in accounts], settings.exchange_stale_after_s)
    readiness.expect_pair_lists()  # the exchange probe reports every account's
    server = HealthServer(settings, registry, readiness, on_ready=metrics.set_ready)
    observer = ReadinessObserver(metrics, readiness)

    def set_consuming(consuming: bool) -> None:
        # The daemon says when it consumes; /readyz adds the exchange's side per account.
        readiness.set_consuming(consuming)
        server.report()

    def set_kafka(up: bool, reason: str) -> None:
        readiness.set_kafka(up, reason)
        metrics.set_kafka_up(up)
        server.report()

    def producer_failed(reason: str) -> None:
        readiness.set_producer(reason)
        metrics.producer_failed()
        server.report()

    def set_draining() -> None:
        readiness.set_draining()
        server.report()

    async def stop() -> None:
        readiness.set_draining()
        await server.close()

    return Observability(
        observer=observer,
        alert_observer=metrics,
        start=server.start,
        stop=stop,
        set_consuming=set_consuming,
        set_kafka=set_kafka,
        producer_failed=producer_failed,
        set_draining=set_draining,
        url=lambda: server.url,
        readiness=readiness,
    )
