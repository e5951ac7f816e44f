"""Interfaces between the engine and the I/O shell (typing only; no I/O here).

The engine talks to the exchange through :class:`ExchangeAPI` (implemented by
``killswitch.exchange.client``; failures are :mod:`killswitch.core.errors`), reports what
happens through :class:`Observer` (implemented by ``killswitch.metrics`` with
Prometheus; :class:`NullObserver` by default) and reads its settings as an
:class:`EngineConfig`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, runtime_checkable

from killswitch.core.model import HaltState, KillRequest, SweepResult
from killswitch.core.orders import Order, SymbolInfo
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.core.pairs import PairList
from killswitch.core.planning import OrderPriority, StrategyName


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the engine reads of the ``[engine]`` settings, as plain values.

    Built from the validated settings at the edge
    (``killswitch.config.EngineSettings.engine_config``); the defaults are the settings'
    defaults (a unit test holds them equal), for tests that build one directly.
    """

    default_deadline_s: float = 30.0
    strategy: StrategyName = "auto"
    batch_size: int = 50
    page_size: int = 100
    priority: OrderPriority = "notional_desc"
    latch_budget_share: float = 0.5
    progress_interval_s: float = 1.0
    max_passes: int = 50
    settle_grace_s: float = 2.0
    cancel_named_pairs_first: bool = True


@runtime_checkable
class CurrentRate(Protocol):
    """A rate limiter as the engine reads it: the account's request rate now."""

    @property
    def rate(self) -> float: ...


@runtime_checkable
class Throttled(Protocol):
    """A rate limiter as a sweep reads it when its deadline ends it: whether the
    exchange throttles the key (429) now."""

    @property
    def throttling(self) -> bool: ...


class RequestPriority(IntEnum):
    """Which limiter queue an exchange request waits in: lower value is served first."""

    CANCEL = 0
    LIST = 1


@dataclass(frozen=True, slots=True)
class CancelResult:
    """Final answer for one cancel, after retries."""

    order_id: int
    symbol: str
    outcome: Outcome
    attempts: int
    reason: RejectReason | None = None
    status: int | None = None  # last HTTP status, None for timeout / connection error
    error: str | None = None  # exchange error code or transport error class


@dataclass(frozen=True, slots=True)
class BatchCancelResult:
    """Answer of a batch cancel or cancel-all. ``outcome`` is set when the call itself
    did not succeed (rejected / failed); then ``success`` and ``fail`` are empty."""

    symbol: str
    success: list[int] = field(default_factory=list)
    fail: list[int] = field(default_factory=list)
    attempts: int = 1
    outcome: Outcome | None = None
    reason: RejectReason | None = None
    # HTTP status of a refused call (404/405: no such endpoint, 3xx), or the last answer's
    # of one that failed (None: the last attempt got no answer).
    status: int | None = None
    # What a refused call's answer means (a redirect: where to), or how a failed one's
    # last attempt ended (an error code, or a transport error such as "ReadTimeout").
    error: str | None = None


class ExchangeAPI(Protocol):
    """One account's view of the exchange. Every call goes through the account's limiter.

    Listing calls raise ``killswitch.core.errors.AuthError`` on ``invalid_client``
    and ``ExchangeUnavailable`` when retries are exhausted; cancels never raise for
    exchange answers, they return a result with the outcome.
    """

    @property
    def account(self) -> str: ...

    async def exchange_info(self) -> list[SymbolInfo]: ...

    def open_orders(self, symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        """Pages of open orders, newest first, each order exactly once."""
        ...

    async def get_order(self, order_id: int, symbol: str) -> Order: ...

    async def cancel_order(self, order_id: int, symbol: str) -> CancelResult: ...

    async def cancel_batch(self, symbol: str, order_ids: Sequence[int]) -> BatchCancelResult: ...

    async def cancel_all(self, symbol: str) -> BatchCancelResult: ...


class PairLister(Protocol):
    """One account's pair list (``killswitch.exchange.client.ExchangeClient``)."""

    def cached_pair_list(self) -> PairList | None:
        """What is known now, without a request (None: nothing yet)."""
        ...

    async def pair_list(self) -> PairList:
        """Fetched when not fresh; kept or configured on failure; raises when no source."""
        ...


class Observer(Protocol):
    """Receives what happens, for metrics. Every method must be cheap and never raise."""

    def request_done(self, account: str, endpoint: str, status: str, seconds: float) -> None:
        """One HTTP call finished; ``status`` is the code or ``timeout`` / ``error``."""

    def rate_changed(self, account: str, rate: float) -> None: ...

    def inflight_cancels(self, account: str, delta: int) -> None: ...

    def cancel_outcome(self, account: str, outcome: Outcome) -> None: ...

    def first_cancel(self, seconds: float) -> None:
        """Seconds from reading an alert to its first cancel request sent."""

    def flat(self, seconds: Sequence[float]) -> None:
        """Seconds from reading each alert to its verified flat result: one call for the
        alerts a sweep answers together (a storm's, in turns of a few)."""

    def halted(self, account: str, halted: bool) -> None: ...

    def residual(self, account: str, count: int, unlisted_pairs: int) -> None:
        """What the account's last sweep left: ``count`` orders in scope still open in
        the last complete listing, and ``unlisted_pairs`` pairs in scope it never listed
        to the end (their open orders are not in ``count``: unknown, not zero)."""

    def latch_reaction(self, account: str, seconds: float | None) -> None:
        """The halted account's guard reaction bound now; None: no longer guarded here."""

    def sweep_failed(self, account: str) -> None:
        """A sweep of ``account`` ended ``failed`` (key refused, exchange unreachable, no
        pair list): every alert it answered is ``failed``."""


class NullObserver:
    """An :class:`Observer` that records nothing."""

    def request_done(self, account: str, endpoint: str, status: str, seconds: float) -> None:
        pass

    def rate_changed(self, account: str, rate: float) -> None:
        pass

    def inflight_cancels(self, account: str, delta: int) -> None:
        pass

    def cancel_outcome(self, account: str, outcome: Outcome) -> None:
        pass

    def first_cancel(self, seconds: float) -> None:
        pass

    def flat(self, seconds: Sequence[float]) -> None:
        pass

    def halted(self, account: str, halted: bool) -> None:
        pass

    def residual(self, account: str, count: int, unlisted_pairs: int) -> None:
        pass

    def latch_reaction(self, account: str, seconds: float | None) -> None:
        pass

    def sweep_failed(self, account: str) -> None:
        pass


@runtime_checkable
class RedirectObserver(Protocol):
    """An :class:`Observer` that also wants every 3xx answer with its ``Location``
    (readiness shows a redirect as a configuration problem of the account)."""

    def redirected(self, account: str, endpoint: str, status: int, location: str) -> None:
        """``endpoint`` answered ``status`` pointing at ``location`` (empty: none given)."""


ResultSink = Callable[[SweepResult], Awaitable[None]]
"""Where the engine sends progress results (``final`` False) while a sweep runs."""

StateSink = Callable[[HaltState], Awaitable[None]]
"""Where the engine sends halt latch changes (to be published to ``killswitch.state``)."""


class SweepHandedOver(Exception):
    """The account moved to another daemon: its sweep here stopped without a final
    result (the new owner replays the alert). See ``EngineAPI.hand_over``."""


class EngineAPI(Protocol):
    """What the intake needs from the kill engine (``killswitch.engine``).

    ``submit`` serialises per account and coalesces overlapping kills into the
    running sweep; it publishes progress through ``progress`` and *returns* the
    final result, which the caller publishes (so offsets are committed only after
    the final result is out).
    """

    async def submit(self, request: KillRequest, progress: ResultSink) -> SweepResult: ...

    def start(self, request: KillRequest, progress: ResultSink) -> Awaitable[SweepResult]:
        """``submit`` begun at once (its sweep spawned before this returns); the
        awaitable gives the final result and may be left unawaited harmlessly."""
        ...

    def start_group(
        self, alerts: Sequence[tuple[KillRequest, ResultSink]]
    ) -> Awaitable[list[SweepResult | BaseException]]:
        """``start`` for several kills of one account (one dry-run flag, no latch)
        joined to its sweep together; the awaitable gives each alert's final result
        or the exception ``start``'s awaitable would raise, in order, once all have one."""
        ...

    async def release(self, request: KillRequest) -> SweepResult: ...

    async def hand_over(self, accounts: Collection[str]) -> int:
        """Stop sweeping ``accounts`` at once (another daemon owns them now); returns
        the sweeps stopped. Their alerts' awaitables raise :class:`SweepHandedOver`;
        each alert's last progress result has gone to its progress sink on return,
        and no request for these accounts is sent from here after it."""
        ...

    def restore_halt(self, state: HaltState) -> None:
        """Resume guarding an account found halted in the state topic at start-up."""

    def halted(self) -> Mapping[str, HaltState]: ...

    async def close(self, grace_s: float) -> None:
        """Stop latch loops; let running sweeps finish within ``grace_s``."""


class AlertObserver(Protocol):
    """Receives what the intake sees, for metrics (``killswitch.metrics.Metrics`` backs it).

    ``alert_read(source, result, count)`` is ``killswitch_alerts_total{source,result}``:
    one count per input message (``count`` alike messages at once: a group's).
    ``source`` is the input channel: ``alerts`` (automatic), ``manual`` (operators) or
    ``deadman`` (kills fired by the dead-man's switch), a bounded label set, not the
    free-text ``source`` field.
    ``result`` is one of ``processed`` (swept or released), ``duplicate`` (every
    account already handled), ``invalid``, ``unauthorized``, ``expired``,
    ``dry_run`` (a dry-run kill that was processed).

    ``dlq(reason)``: one dead letter, ``reason`` one of ``undecodable``,
    ``too_large``, ``invalid``, ``unauthorized``, ``expired``.
    ``output_refused(output)``: Kafka refused an output as made (too large, text it
    cannot encode: ``killswitch.kafka.outputs.refused_as_made``); ``output`` one of
    ``result``, ``dead_letter``, ``forward``.
    ``deadman_fired(source)``: a dead-man source fell silent (its kill was published).
    ``consumer_lag(topic, partition, lag)``: records behind on one input partition
    (high watermark minus the commit position).
    ``loop_lag(seconds)``: how late the event loop woke a timer, sampled
    continuously (a stalled loop delays Kafka heartbeats and every sweep).
    Every method must be cheap and never raise.
    """

    def alert_read(self, source: str, result: str, count: int = 1) -> None: ...

    def dlq(self, reason: str) -> None: ...

    def output_refused(self, output: str) -> None: ...

    def deadman_fired(self, source: str) -> None: ...

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None: ...

    def loop_lag(self, seconds: float) -> None: ...


class NullAlertObserver:
    """An :class:`AlertObserver` that records nothing."""

    def alert_read(self, source: str, result: str, count: int = 1) -> None:
        pass

    def dlq(self, reason: str) -> None:
        pass

    def output_refused(self, output: str) -> None:
        pass

    def deadman_fired(self, source: str) -> None:
        pass

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        pass

    def loop_lag(self, seconds: float) -> None:
        pass
