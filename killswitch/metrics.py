"""Prometheus metrics on an injected registry (the names are a contract: docs/CONTRACTS.md).

:class:`Metrics` implements :class:`killswitch.core.ports.Observer` for the engine and the
exchange client, plus the intake's and the daemon's events. It never touches the global
registry: the caller builds a :class:`prometheus_client.CollectorRegistry` and serves it
(``killswitch.health``), so tests and several daemons in one process never share series.

Label values are bounded. ``account`` is always a configured account id (anything else
becomes ``other``, so an API key passed by mistake can never become a label); free-form
values that come from input (``source``, ``reason``, ``endpoint``, ``status``) are cut to
a short length and capped in number per label, extra values collapsing into ``other``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from killswitch import __version__
from killswitch.core.outcomes import Outcome
from killswitch.loops import loop_name

if TYPE_CHECKING:
    from killswitch.config import AccountSettings, DeadmanSource
    from killswitch.core.ports import Observer

__all__ = [
    "ALERT_RESULTS",
    "DLQ_REASONS",
    "FLAT_BUCKETS",
    "LATENCY_BUCKETS",
    "LOOP_LAG_BUCKETS",
    "OTHER",
    "REFUSED_OUTPUTS",
    "LabelBudget",
    "Metrics",
]

log = logging.getLogger(__name__)

OTHER: Final = "other"
"""The label value every unknown or over-budget value collapses into."""

ALERT_RESULTS: Final = ("processed", "duplicate", "invalid", "unauthorized", "expired", "dry_run")
"""``result`` label values of ``killswitch_alerts_total`` (pre-initialised per known source)."""

DLQ_REASONS: Final = ("undecodable", "too_large", "invalid", "unauthorized", "expired")
"""``reason`` values of ``killswitch_dlq_total`` pre-initialised at 0 (others still count)."""

REFUSED_OUTPUTS: Final = ("result", "dead_letter", "forward")
"""``output`` values of ``killswitch_outputs_refused_total`` (pre-initialised at 0)."""

CANCEL_OUTCOMES: Final = tuple(Outcome)
"""``outcome`` label values of ``killswitch_cancels_total``: the contract's four plus
``skipped`` (dry runs), so dry-run orders are visible without being counted as cancels."""

# Seconds. One cancel round trip on a good day is a few milliseconds; a throttled or
# retried one is seconds; the per-request deadline defaults to 10 s.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Seconds. A verified-flat kill takes at least two listings and a round of cancels;
# the default kill deadline is 30 s and an operator may give longer ones.
FLAT_BUCKETS: Final = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
)
# Seconds. A healthy loop wakes within a millisecond; 100 ms already delays every kill.
LOOP_LAG_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

_MAX_LABEL_LEN: Final = 64
_DEFAULT_LABEL_BUDGET: Final = 50
# Hot-path child caches hold at most this many raw inputs; past it, the (rare) extra
# inputs take the slow lookup each time instead of growing memory with the input.
_CHILD_CACHE_LIMIT: Final = 1024

_P = ParamSpec("_P")
_K = TypeVar("_K")


def _never_raise(method: Callable[_P, None]) -> Callable[_P, None]:
    """Observer methods run inside the engine's hot path: a metrics bug must not kill a sweep."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:  # a metric is never worth a failed kill
            log.warning("metrics: %s failed", method.__name__, exc_info=True)

    return wrapper


class LabelBudget:
    """Bounds the values one label may take: at most ``limit`` distinct, each cut short.

    Values seen first keep their own series; once the budget is spent, new values map
    to ``other``. Pure and deterministic, so the cardinality of every series is bounded
    whatever arrives on the input topics.
    """

    def __init__(self, limit: int = _DEFAULT_LABEL_BUDGET, preset: Iterable[str] = ()) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        for value in preset:
            self._seen.add(_clean(value))

    def __call__(self, value: object) -> str:
        """The label value to use for ``value``."""
        text = _clean(value)
        if text in self._seen:
            return text
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(text)
        return text


def _remember(cache: dict[_K, Any], key: _K, child: Any) -> None:
    """Keep a label child for ``key`` unless the cache is full (bounded memory)."""
    if len(cache) < _CHILD_CACHE_LIMIT:
        cache[key] = child


def _clean(value: object) -> str:
    text = str(value).strip()
    if not text:
        return "unknown"
    # Printable only, no control characters: label values end up in dashboards and logs.
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:_MAX_LABEL_LEN]


class Metrics:
    """Every killswitch metric, registered on ``registry``.

    ``accounts`` are the configured account ids: their series exist at 0 from the start,
    and they are the only ``account`` label values ever used. ``sources`` are alert sources
    known up front (e.g. dead-man sources) whose ``killswitch_alerts_total`` series are
    pre-initialised too.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        accounts: Iterable[str],
        *,
        sources: Iterable[str] = (),
        rate_ceilings: dict[str, float] | None = None,
        version: str = __version__,
    ) -> None:
        self.registry = registry
        self._accounts = frozenset(accounts)
        self._sources = LabelBudget(preset=sources)
        self._endpoints = LabelBudget()
        self._statuses = LabelBudget()
        self._reasons = LabelBudget(preset=DLQ_REASONS)
        self._topics = LabelBudget()
        # Label children of the per-request metrics by raw input: `.labels()` costs
        # several microseconds per call, a dict lookup a fraction of one. Keyed by what
        # the caller passed, so the label-safety mapping (unknown account -> `other`,
        # budgets) runs once per input; it never changes for an input once decided.
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._inflight_children: dict[str, Any] = {}
        self._cancel_children: dict[tuple[str, Outcome], Any] = {}
        self._create(registry)
        self._build_info.labels(
            version=version, python=platform.python_version(), event_loop=loop_name()
        ).set(1)
        self._preinit(sources, rate_ceilings or {})

    @classmethod
    def from_sections(
        cls,
        registry: CollectorRegistry,
        accounts: Sequence[AccountSettings],
        deadman: Sequence[DeadmanSource],
    ) -> Metrics:
        """Metrics for a daemon: account ids and rate ceilings from the ``accounts`` section,
        dead-man sources from the ``deadman`` section."""
        return cls(
            registry,
            [a.id for a in accounts],
            sources=[d.source for d in deadman],
            rate_ceilings={a.id: a.rate_limit_per_second for a in accounts},
        )

    def _create(self, r: CollectorRegistry) -> None:
        # Counter names are given without `_total`: prometheus_client appends it.
        self._cancels = Counter(
            "killswitch_cancels",
            "Orders that reached a final outcome in a kill, one per order per outcome.",
            ["account", "outcome"],
            registry=r,
        )
        self._alerts = Counter(
            "killswitch_alerts",
            "Alerts read from the input topics, by source and what became of them.",
            ["source", "result"],
            registry=r,
        )
        self._first_cancel = Histogram(
            "killswitch_alert_to_first_cancel_seconds",
            "Seconds from reading an alert to sending its first cancel request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._flat = Histogram(
            "killswitch_time_to_flat_seconds",
            "Seconds from reading an alert to a verified flat result.",
            buckets=FLAT_BUCKETS,
            registry=r,
        )
        self._requests = Counter(
            "killswitch_exchange_requests",
            "HTTP calls to the exchange, by HTTP status code or timeout / error.",
            ["account", "endpoint", "status"],
            registry=r,
        )
        self._request_seconds = Histogram(
            "killswitch_exchange_request_duration_seconds",
            "Seconds one HTTP call to the exchange took (one attempt).",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._rate = Gauge(
            "killswitch_rate_limit_per_second",
            "Current rate of the account's adaptive limiter (requests per second).",
            ["account"],
            registry=r,
        )
        self._rate_ceiling = Gauge(
            "killswitch_rate_limit_ceiling_per_second",
            "Configured ceiling of the account's limiter (requests per second).",
            ["account"],
            registry=r,
        )
        self._inflight = Gauge(
            "killswitch_inflight_cancels",
            "Cancel requests in flight.",
            ["account"],
            registry=r,
        )
        self._halted = Gauge(
            "killswitch_account_halted",
            "1 while the account is halted by a latch, else 0.",
            ["account"],
            registry=r,
        )
        self._latch_reaction = Gauge(
            "killswitch_latch_reaction_seconds",
            "Halted account: longest time from a new order to its cancel by the guard,"
            " pairs * max(1 / (latch_budget_share * current rate), listing round trip)"
            " + one listing round trip.",
            ["account"],
            registry=r,
        )
        self._residual = Gauge(
            "killswitch_residual_open_orders",
            "Orders in scope still open after the account's last sweep, in the pairs it"
            " listed to the end (see killswitch_residual_unlisted_pairs).",
            ["account"],
            registry=r,
        )
        self._unlisted = Gauge(
            "killswitch_residual_unlisted_pairs",
            "Pairs in scope the account's last sweep never listed to the end (their open"
            " orders are unknown, not in killswitch_residual_open_orders).",
            ["account"],
            registry=r,
        )
        self._sweeps_failed = Counter(
            "killswitch_sweeps_failed",
            "Sweeps that ended failed (key refused, exchange unreachable, no pair list):"
            " every alert they answered is failed, and the account is not known to be flat.",
            ["account"],
            registry=r,
        )
        self._ready = Gauge(
            "killswitch_ready",
            "1 when consuming and the exchange answers for every account, else 0.",
            registry=r,
        )
        self._kafka_up = Gauge(
            "killswitch_kafka_up",
            "1 while the Kafka broker answers the daemon's metadata probe, else 0.",
            registry=r,
        )
        self._producer_failed = Gauge(
            "killswitch_kafka_producer_failed",
            "1 once the daemon's Kafka producer can deliver nothing any more (the daemon"
            " then stops, exit 1, for its supervisor to start it again), else 0.",
            registry=r,
        )
        self._loop_lag = Histogram(
            "killswitch_event_loop_lag_seconds",
            "How late the event loop woke a sleeping task (seconds).",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self._deadman = Counter(
            "killswitch_deadman_fired",
            "Dead-man kills fired because a source's heartbeats stopped.",
            ["source"],
            registry=r,
        )
        self._dlq = Counter(
            "killswitch_dlq",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self._refused = Counter(
            "killswitch_outputs_refused",
            "Outputs that could not be published as made (too large, text that cannot be "
            "encoded), by output.",
            ["output"],
            registry=r,
        )
        self._consumer_lag = Gauge(
            "killswitch_consumer_lag",
            "Messages between the consumer's position and the end of the partition.",
            ["topic", "partition"],
            registry=r,
        )
        self._build_info = Gauge(
            "killswitch_build_info",
            "Always 1; the labels say which build is running.",
            ["version", "python", "event_loop"],
            registry=r,
        )

    def _preinit(self, sources: Iterable[str], ceilings: dict[str, float]) -> None:
        """Create the series that should exist at 0 before anything happens.

        A counter that appears only at its first increment hides that increment from
        ``increase()`` and from alert rules; a gauge that is absent cannot be graphed.
        """
        for account in self._accounts:
            for outcome in CANCEL_OUTCOMES:
                self._cancels.labels(account=account, outcome=outcome.value)
            ceiling = ceilings.get(account)
            if ceiling is not None:
                self._rate.labels(account=account).set(ceiling)
                self._rate_ceiling.labels(account=account).set(ceiling)
            self._inflight.labels(account=account).set(0)
            self._halted.labels(account=account).set(0)
            self._residual.labels(account=account).set(0)
            self._sweeps_failed.labels(account=account)
            self._unlisted.labels(account=account).set(0)
        for source in sources:
            label = self._sources(source)
            for result in ALERT_RESULTS:
                self._alerts.labels(source=label, result=result)
            self._deadman.labels(source=label)
        for reason in DLQ_REASONS:
            self._dlq.labels(reason=reason)
        for output in REFUSED_OUTPUTS:
            self._refused.labels(output=output)
        self._ready.set(0)
        self._kafka_up.set(0)
        self._producer_failed.set(0)

    def _account(self, account: str) -> str:
        return account if account in self._accounts else OTHER

    # --- killswitch.core.ports.Observer -------------------------------------------------

    @_never_raise
    def request_done(self, account: str, endpoint: str, status: str, seconds: float) -> None:
        """One HTTP call finished; ``status`` is the code or ``timeout`` / ``error``."""
        key = (account, endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            label = self._endpoints(endpoint)
            children = (
                self._requests.labels(
                    account=self._account(account), endpoint=label, status=self._statuses(status)
                ),
                self._request_seconds.labels(endpoint=label),
            )
            _remember(self._request_children, key, children)
        children[0].inc()
        children[1].observe(max(seconds, 0.0))

    @_never_raise
    def rate_changed(self, account: str, rate: float) -> None:
        """The account's limiter changed its rate (requests per second)."""
        self._rate.labels(account=self._account(account)).set(rate)

    @_never_raise
    def inflight_cancels(self, account: str, delta: int) -> None:
        """A cancel request started (+1) or finished (-1)."""
        child = self._inflight_children.get(account)
        if child is None:
            child = self._inflight.labels(account=self._account(account))
            _remember(self._inflight_children, account, child)
        child.inc(delta)

    @_never_raise
    def cancel_outcome(self, account: str, outcome: Outcome) -> None:
        """One order counted: once, at its first exchange answer, or as failed when its
        sweep ends without one (the rule: docs/ENGINE.md)."""
        key = (account, outcome)
        child = self._cancel_children.get(key)
        if child is None:
            child = self._cancels.labels(
                account=self._account(account), outcome=Outcome(outcome).value
            )
            _remember(self._cancel_children, key, child)
        child.inc()

    @_never_raise
    def first_cancel(self, seconds: float) -> None:
        """Seconds from reading an alert to its first cancel request sent."""
        self._first_cancel.observe(max(seconds, 0.0))

    @_never_raise
    def flat(self, seconds: Sequence[float]) -> None:
        """Seconds from reading each alert to its verified flat result."""
        observe = self._flat.observe
        for one in seconds:
            observe(max(one, 0.0))

    @_never_raise
    def halted(self, account: str, halted: bool) -> None:
        """The account's halt latch was set (True) or released (False)."""
        self._halted.labels(account=self._account(account)).set(1 if halted else 0)

    @_never_raise
    def latch_reaction(self, account: str, seconds: float | None) -> None:
        """The guard's reaction bound for a halted account; None removes the series."""
        label = self._account(account)
        if seconds is None:
            with contextlib.suppress(KeyError):
                self._latch_reaction.remove(label)
            return
        self._latch_reaction.labels(account=label).set(max(seconds, 0.0))

    @_never_raise
    def residual(self, account: str, count: int, unlisted_pairs: int) -> None:
        """Orders in scope still open after the account's last sweep (in the pairs it
        listed to the end), and the pairs in scope it never listed to the end."""
        label = self._account(account)
        self._residual.labels(account=label).set(max(count, 0))
        self._unlisted.labels(account=label).set(max(unlisted_pairs, 0))

    @_never_raise
    def sweep_failed(self, account: str) -> None:
        """A sweep of ``account`` ended failed."""
        self._sweeps_failed.labels(account=self._account(account)).inc()

    # --- intake and daemon ----------------------------------------------------------------

    @_never_raise
    def alert_read(self, source: str, result: str, count: int = 1) -> None:
        """``count`` alerts were read; ``result`` is one of :data:`ALERT_RESULTS`."""
        label = result if result in ALERT_RESULTS else OTHER
        self._alerts.labels(source=self._sources(source), result=label).inc(count)

    @_never_raise
    def deadman_fired(self, source: str) -> None:
        """A dead-man source went silent and its kill was fired."""
        self._deadman.labels(source=self._sources(source)).inc()

    @_never_raise
    def dlq(self, reason: str) -> None:
        """A message went to the dead-letter topic."""
        self._dlq.labels(reason=self._reasons(reason)).inc()

    @_never_raise
    def output_refused(self, output: str) -> None:
        """Kafka refused an output as made; ``output`` one of :data:`REFUSED_OUTPUTS`."""
        self._refused.labels(output=output if output in REFUSED_OUTPUTS else OTHER).inc()

    @_never_raise
    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """Messages the consumer is behind on one partition."""
        self._consumer_lag.labels(topic=self._topics(topic), partition=str(partition)).set(
            max(lag, 0)
        )

    @_never_raise
    def loop_lag(self, seconds: float) -> None:
        """How late the event loop woke a task that asked to sleep."""
        self._loop_lag.observe(max(seconds, 0.0))

    @_never_raise
    def set_ready(self, ready: bool) -> None:
        """Mirror the readiness verdict (``killswitch.health.Readiness``) into a gauge."""
        self._ready.set(1 if ready else 0)

    @_never_raise
    def set_kafka_up(self, up: bool) -> None:
        """Whether the broker answers (``killswitch.kafka.watch.KafkaWatch``)."""
        self._kafka_up.set(1 if up else 0)

    @_never_raise
    def producer_failed(self) -> None:
        """The Kafka producer can deliver nothing any more (``Publisher.unusable``)."""
        self._producer_failed.set(1)


if TYPE_CHECKING:

    def _is_an_observer(metrics: Metrics) -> Observer:
        return metrics  # mypy proves Metrics satisfies the Observer protocol
