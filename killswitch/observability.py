"""The daemon's Prometheus metrics and health listener, built from the settings.

Fills the daemon's observability hook (:func:`killswitch.daemon.build_observability`):
one :class:`~killswitch.metrics.Metrics` on a registry of its own serves the engine and
the exchange clients (through :class:`~killswitch.health.ReadinessObserver`, so every
exchange answer also feeds readiness) and the intake (alerts read, loop lag); one
:class:`~killswitch.health.HealthServer` serves ``/metrics``, ``/healthz`` and
``/readyz`` on ``metrics.host:metrics.port``. With ``metrics.enabled = false`` nothing
is served and every event goes nowhere.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from killswitch.config import Settings
from killswitch.daemon import Observability
from killswitch.health import HealthServer, Readiness, ReadinessObserver
from killswitch.metrics import Metrics

__all__ = ["prometheus_observability"]


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

    def set_ready(consuming: bool) -> None:
        # The daemon says when it consumes; /readyz adds the exchange's side per account.
        readiness.set_consuming(consuming)
        server.report()

    async def stop() -> None:
        readiness.set_draining()
        await server.close()

    return Observability(
        observer=ReadinessObserver(metrics, readiness),
        alert_observer=metrics,
        start=server.start,
        stop=stop,
        set_ready=set_ready,
    )
