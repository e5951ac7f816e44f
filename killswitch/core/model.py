"""Plain data passed between the intake, the engine and the outputs (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome, RejectReason

_T = TypeVar("_T")


class SweepStatus(StrEnum):
    """``status`` of a result (``killswitch.result/v1``)."""

    FLAT = "flat"
    RESIDUAL = "residual"
    FAILED = "failed"
    RELEASED = "released"
    DRY_RUN = "dry_run"
    DUPLICATE = "duplicate"
    RUNNING = "running"  # progress events only (final = false)


@dataclass(frozen=True, slots=True)
class Scope:
    """What one account's sweep covers. ``None`` means "all" for symbols and sides."""

    symbols: frozenset[str] | None = None
    sides: frozenset[Side] | None = None
    order_ids: frozenset[int] | None = None  # non-empty narrows to these orders

    def __post_init__(self) -> None:
        # Empty ``order_ids`` means "no narrowing" (the alert contract), never "nothing":
        # an empty set would match no order, and would absorb a wider scope when
        # widened. Normalised here, where every scope is made, and nowhere else.
        if self.order_ids is not None and not self.order_ids:
            object.__setattr__(self, "order_ids", None)

    def widen(self, other: Scope) -> Scope:
        """Each field's union: a scope covering every order either covers, and possibly
        more (BTC buys widened by all of ETH is both pairs' every side). For a halt, where
        covering more errs on the side of the latch; a sweep joins by :meth:`union`."""
        return Scope(
            symbols=_union(self.symbols, other.symbols),
            sides=_union(self.sides, other.sides),
            order_ids=_union(self.order_ids, other.order_ids),
        )

    def union(self, other: Scope) -> Scope | None:
        """The one scope covering exactly the orders either covers, or None when no
        single scope can: a kill must not cancel what no alert asked for. Exact when one
        contains the other or they differ in one field only."""
        if self.contains(other):
            return self
        if other.contains(self):
            return other
        differing = (
            (self.symbols != other.symbols)
            + (self.sides != other.sides)
            + (self.order_ids != other.order_ids)
        )
        return self.widen(other) if differing == 1 else None

    def contains(self, other: Scope) -> bool:
        """Whether every order ``other`` covers is covered by this scope."""
        return (
            _superset(self.symbols, other.symbols)
            and _superset(self.sides, other.sides)
            and _superset(self.order_ids, other.order_ids)
        )

    def covers(self, symbol: str, side: Side | None, order_id: int) -> bool:
        """Whether an order is in this scope: the one scope test of the kill switch.

        ``side`` None (an order known only by id and pair) is covered only by a scope
        of both sides: a one-sided kill must not claim an order it cannot place.
        """
        return (
            (self.symbols is None or symbol in self.symbols)
            and (self.sides is None or (side is not None and side in self.sides))
            and (self.order_ids is None or order_id in self.order_ids)
        )

    def covers_pair(self, symbol: str) -> bool:
        """Whether any order on ``symbol`` may be in this scope (a request for a whole
        pair, before its orders are known)."""
        return self.symbols is None or symbol in self.symbols


def _superset(a: frozenset[_T] | None, b: frozenset[_T] | None) -> bool:
    return a is None or (b is not None and a >= b)


def _union(a: frozenset[_T] | None, b: frozenset[_T] | None) -> frozenset[_T] | None:
    if a is None or b is None:
        return None
    return a | b


@dataclass(frozen=True, slots=True)
class Position:
    """Where an input record was read: the dedup window's key to a replay, and the
    ``origin`` of its results."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class KillRequest:
    """One alert's demand on one account."""

    alert_id: str
    account: str
    scope: Scope
    received_at: datetime
    deadline_s: float  # seconds from received_at
    # A replayed alert: what an earlier process published for it before it stopped.
    carried: CarriedOutcomes | None = None
    latch: bool = False
    dry_run: bool = False
    source: str = ""
    reason: str = ""
    operator: str | None = None
    # Set when the scope's pairs could not be checked against any pair list (why):
    # an empty listing of such a pair proves nothing, so the result is never ``flat``.
    unchecked_pairs: str | None = None


@dataclass(slots=True)
class Counts:
    """Outcome counts of one result; ``resolved`` is the sum of the outcomes."""

    sent: int = 0
    already_closed: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def resolved(self) -> int:
        return self.sent + self.already_closed + self.rejected + self.failed + self.skipped

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)


@dataclass(frozen=True, slots=True)
class OrderReport:
    """The final outcome of one order in one sweep."""

    order_id: int
    symbol: str
    outcome: Outcome
    attempts: int
    reason: RejectReason | None = None


@dataclass(frozen=True, slots=True)
class InFlight:
    """An order whose cancel was sent and not answered yet (progress results)."""

    order_id: int
    symbol: str


@dataclass(frozen=True, slots=True)
class CarriedOutcomes:
    """The last progress result an earlier process published for one (alert, account)
    before it stopped without a final one; folded into the replay's results
    (:func:`killswitch.core.carry.carry_over`)."""

    counts: Counts = field(hash=False)
    orders: tuple[OrderReport, ...] = ()  # per-order outcomes, when they fitted the record
    sweeps: int = 0
    # Cancels sent and not answered when the record was published: the exchange may
    # have applied them after the process stopped (none of them is in ``orders``).
    in_flight: tuple[InFlight, ...] = ()
    received_at: datetime | None = None
    first_cancel_at: datetime | None = None

    @property
    def complete(self) -> bool:
        """Every counted outcome is in ``orders`` (so overlaps can be found)."""
        return len(self.orders) == self.counts.resolved


@dataclass(slots=True)
class SweepResult:
    """A result event for one alert and account (progress when ``final`` is False)."""

    alert_id: str
    account: str
    status: SweepStatus
    final: bool
    dry_run: bool
    counts: Counts
    residual_open: int
    sweeps: int
    received_at: datetime
    first_cancel_at: datetime | None
    finished_at: datetime | None
    orders: list[OrderReport] = field(default_factory=list)
    reason: str | None = None
    operator: str | None = None
    source: str = ""
    # Progress events: orders resolved whose outcome is not known yet (queued or in flight).
    pending: int = 0
    # Final results: order ids named in the scope that no listing ever showed open.
    not_found: list[int] = field(default_factory=list)
    # The trigger's own reason (``reason`` above is the sweep's explanation of its status).
    trigger_reason: str = ""
    # Progress events of a sweep: pairs listed to the end so far, of the pairs in scope
    # known so far (None when the sweep has not set out to list anything yet).
    pairs_listed: int | None = None
    pairs_in_scope: int | None = None
    # Releases only: whether the account was halted when the release came.
    was_halted: bool | None = None
    # Final results of a sweep: pairs in scope never listed to the end (sorted; empty
    # when every pair was). ``residual_open`` cannot count the orders open there.
    unlisted_pairs: list[str] = field(default_factory=list)
    # Progress events: orders whose cancel is sent and not answered yet (listed while
    # the orders fit one record), so a replay after a crash can account for them.
    in_flight: list[InFlight] = field(default_factory=list)


def no_sweep_result(
    request: KillRequest, status: SweepStatus, now: datetime, reason: str | None
) -> SweepResult:
    """The final result of an alert that needed no sweep: a duplicate, a refusal
    (``failed``) or a release. Counts are zero; the request's identity is kept."""
    return SweepResult(
        alert_id=request.alert_id,
        account=request.account,
        status=status,
        final=True,
        dry_run=request.dry_run,
        counts=Counts(),
        residual_open=0,
        sweeps=0,
        received_at=request.received_at,
        first_cancel_at=None,
        finished_at=now,
        reason=reason,
        operator=request.operator,
        source=request.source,
        trigger_reason=request.reason,
    )


@dataclass(frozen=True, slots=True)
class HaltState:
    """The halt latch of one account (``killswitch.state``, key = account).

    ``by`` is who latched (or released) it: the operator of a manual trigger, else the
    alert's source; ``reason`` is that alert's reason. Both are empty in records
    written before they existed.
    """

    account: str
    halted: bool
    alert_id: str
    since: datetime
    scope: Scope
    by: str = ""
    reason: str = ""


def requested_by(request: KillRequest) -> str:
    """Who asked for a kill or release: the operator, else the alert's source."""
    return request.operator or request.source
