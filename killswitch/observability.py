"""The daemon's Prometheus metrics, health listener and exchange probe, from the settings.

Fills the daemon's observability hook (:func:`killswitch.daemon.build_observability`):
one :class:`~killswitch.metrics.Metrics` on a registry of its own serves the engine and
the exchange clients (through :class:`~killswitch.health.ReadinessObserver`, so every
exchange answer also feeds readiness) and the intake (alerts read, loop lag); one
:class:`~killswitch.health.HealthServer` serves ``/metrics``, ``/healthz`` and
``/readyz`` on ``metrics.host:metrics.port``. With ``metrics.enabled = false`` nothing
is served and every event goes nowhere.

Readiness needs a recent answer from the exchange for every account, and an idle
daemon sends nothing; so :class:`ExchangeProbe` makes one signed read-only call per
account (the first page of open orders on one pair) every ``exchange_stale_after_s / 4``
(at most 30 s). Its answers reach readiness and the metrics like any other call: a 200
proves the exchange answers and accepts the key, a 401/403 marks the account not ready.
The exchange info it reads first is a public call, signed only if the exchange refuses
it unsigned (the client remembers): a refusal of the *signed* call is a refused key,
which the probe hands to readiness itself, saying when the clock may be the cause (the
clock offset could not be measured, see ``ExchangeClient.auth_clock_hint``). Redirects
need nothing here: the client reports every 3xx of every endpoint with its ``Location``
(``ReadinessObserver.redirected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence

from prometheus_client import CollectorRegistry

from killswitch.config import AccountSettings, Settings
from killswitch.core.orders import SymbolInfo
from killswitch.core.ports import Observer
from killswitch.daemon import Observability
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import AuthError, ExchangeError
from killswitch.exchange.signing import KeyLoadError
from killswitch.health import HealthServer, Readiness, ReadinessObserver
from killswitch.metrics import Metrics

__all__ = ["ExchangeProbe", "first_page", "prometheus_observability"]

log = logging.getLogger(__name__)

_PROBE_MAX_INTERVAL_S = 30.0


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
    """Keeps readiness current while no kill runs: one signed read-only call per account."""

    def __init__(
        self,
        accounts: Sequence[AccountSettings],
        observer: Observer,
        interval_s: float,
        readiness: Readiness | None = None,
    ) -> None:
        self._accounts = accounts
        self._observer = observer
        self._readiness = readiness
        self._interval = interval_s
        self._clients: list[ExchangeClient] = []
        self._task: asyncio.Task[None] | None = None

    async def probe(self, client: ExchangeClient) -> None:
        """One round for one account; the observer records what the exchange answered."""
        try:
            pairs = await self._pairs(client)
            if pairs:
                await first_page(client, pairs[0].symbol, limit=2)
        except AuthError as exc:
            if self._readiness is not None:
                hint = client.auth_clock_hint(exc.endpoint)
                self._readiness.auth_rejected(client.account, hint or None)
            log.debug("exchange probe: %s", exc, extra={"account": client.account})
        except ExchangeError as exc:
            log.debug("exchange probe: %s", exc, extra={"account": client.account})
        except Exception:  # a probe must never stop probing (nor the daemon)
            log.warning("exchange probe failed", exc_info=True, extra={"account": client.account})

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

    async def run(self) -> None:
        """Probe every account, then again every interval, until cancelled."""
        while True:
            await asyncio.gather(*(self.probe(c) for c in self._clients))
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Build one client per account and start probing."""
        for account in self._accounts:
            # Its own clients (and limiters): one request per account per interval is
            # far below any budget, and the daemon's clients stay untouched.
            try:
                client = ExchangeClient(
                    account.model_copy(update={"max_attempts": 1}), observer=self._observer
                )
            except KeyLoadError:
                continue  # the daemon refuses this key as a configuration error next
            self._clients.append(client)
        self._task = asyncio.create_task(self.run(), name="exchange-probe")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        clients, self._clients = self._clients, []
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def _without_prefix(exc: ExchangeError) -> str:
    """The error's message without the ``account endpoint:`` prefix (readiness names
    the account itself)."""
    prefix = " ".join(part for part in (exc.account, exc.endpoint) if part) + ": "
    return str(exc).removeprefix(prefix)


def prometheus_observability(settings: Settings) -> Observability:
    """Metrics, readiness and the listener for one daemon (nothing when disabled)."""
    if not settings.metrics.enabled:
        return Observability()
    registry = CollectorRegistry()
    metrics = Metrics.from_settings(settings, registry)
    readiness = Readiness.for_accounts(
        [a.id for a in settings.accounts], settings.metrics.exchange_stale_after_s
    )
    server = HealthServer(settings.metrics, registry, readiness, on_ready=metrics.set_ready)
    observer = ReadinessObserver(metrics, readiness)
    probe = ExchangeProbe(
        settings.accounts,
        observer,
        min(_PROBE_MAX_INTERVAL_S, settings.metrics.exchange_stale_after_s / 4),
        readiness,
    )

    async def start() -> None:
        await server.start()
        probe.start()

    def set_consuming(consuming: bool) -> None:
        # The daemon says when it consumes; /readyz adds the exchange's side per account.
        readiness.set_consuming(consuming)
        server.report()

    def set_kafka(up: bool, reason: str) -> None:
        readiness.set_kafka(up, reason)
        metrics.set_kafka_up(up)
        server.report()

    def set_draining() -> None:
        readiness.set_draining()
        server.report()

    async def stop() -> None:
        readiness.set_draining()
        await probe.close()
        await server.close()

    return Observability(
        observer=observer,
        alert_observer=metrics,
        start=start,
        stop=stop,
        set_consuming=set_consuming,
        set_kafka=set_kafka,
        set_draining=set_draining,
        url=lambda: server.url,
    )
