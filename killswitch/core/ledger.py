"""The accounting of one sweep: every resolved order, its one outcome, what is in flight.

Rules (the invariants of ``shared/design.md``, as plain code):

- An order is *resolved* the first time a listing returns it open and in scope (or a
  cancel-all names it). From then on it has exactly one record and, when the sweep
  ends, exactly one outcome; the counts are computed from the records, so they add up.
- Never two cancels in flight for one order: :meth:`Ledger.begin` refuses a second one,
  and :meth:`Ledger.observe` never queues an order that is queued or in flight.
- One cancel per order per pass: a listing that returns an order twice (paging races)
  queues it once.
- An order a later listing still shows open is cancelled again (the first ``sent`` was
  not the end of it). Its record keeps one outcome, the latest, with one exception:
  ``already_closed`` after ``sent`` keeps ``sent``, because the order most likely closed
  because of that first cancel. Attempts add up over the sweep. The order counts once.
- An order ``rejected`` by the exchange (not found, invalid request) is not cancelled
  again in the same sweep: the same request would get the same answer.
- Orders still queued or in flight when a sweep stops (deadline, auth failure) end as
  ``failed`` unless an earlier pass already gave them an outcome.
- Residual: the orders the latest listing of each pair returned in scope (plus those of
  a listing cut short), minus those a cancel since then found ``already_closed``.
  ``sent`` is not proof: such orders stay residual until a listing no longer returns them.
  A pair never listed to the end is not counted (nothing is known about it); the sweep
  names such pairs (:meth:`Ledger.listed_pairs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from killswitch.core.model import Counts, OrderReport, Scope
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome, RejectReason


class DoubleCancel(RuntimeError):
    """A second cancel for an order that already has one in flight (a bug, never allowed)."""


@dataclass(slots=True)
class OrderRecord:
    """What a sweep keeps per resolved order: no prices, no quantities."""

    symbol: str
    side: Side | None  # None when only a cancel-all named the order
    outcome: Outcome | None = None
    attempts: int = 0
    reason: RejectReason | None = None


def merge_outcome(prior: Outcome | None, new: Outcome) -> Outcome:
    """The outcome an order keeps after one more cancel answer (see module docstring)."""
    if prior is Outcome.SENT and new is Outcome.ALREADY_CLOSED:
        return Outcome.SENT
    return new


def should_cancel_again(prior: Outcome | None) -> bool:
    """Whether an order a listing shows open again gets another cancel."""
    return prior not in (Outcome.REJECTED, Outcome.SKIPPED)


def covers(scope: Scope, order_id: int, record: OrderRecord) -> bool:
    """Scope test for a record; an unknown side is covered only by a scope of both sides."""
    if record.side is None:
        return (
            scope.sides is None
            and (scope.symbols is None or record.symbol in scope.symbols)
            and (scope.order_ids is None or order_id in scope.order_ids)
        )
    return scope.covers(record.symbol, record.side, order_id)


class Ledger:
    """Accounting for one sweep of one account (see the module docstring for the rules)."""

    def __init__(self) -> None:
        self._orders: dict[int, OrderRecord] = {}
        self._pending: set[int] = set()  # queued or in flight
        self._in_flight: set[int] = set()
        self._seen: set[int] = set()  # listed in the current pass
        self._recancels = 0  # of those, orders an earlier pass had already cancelled (sent)
        self._tally: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self._listed: dict[str, set[int]] = {}  # latest complete listing per pair
        self._listing: dict[str, set[int]] = {}  # listing in progress per pair

    # ----------------------------------------------------------- passes and listing

    def new_pass(self) -> None:
        """A new pass starts: every order may be cancelled once more."""
        self._seen = set()
        self._recancels = 0

    def recancels(self) -> int:
        """Orders this pass found open again although a cancel for them was ``sent``."""
        return self._recancels

    def seen_count(self) -> int:
        """How many in-scope open orders the current pass's listing returned."""
        return len(self._seen)

    def seen_this_pass(self) -> frozenset[int]:
        """Ids the current pass's listing returned in scope."""
        return frozenset(self._seen)

    def listing_started(self, symbol: str) -> None:
        self._listing[symbol] = set()

    def listing_finished(self, symbol: str) -> None:
        """A pair's listing completed: it becomes that pair's residual picture."""
        self._listed[symbol] = self._listing.pop(symbol, set())

    def listed_pairs(self) -> frozenset[str]:
        """Pairs with at least one complete listing in this sweep."""
        return frozenset(self._listed)

    def observe(self, order_id: int, symbol: str, side: Side) -> bool:
        """A listing returned this open, in-scope order. True when it must be queued."""
        if order_id in self._seen:
            return False
        self._seen.add(order_id)
        self._listing.setdefault(symbol, set()).add(order_id)
        record = self._orders.get(order_id)
        if record is None:
            self._orders[order_id] = OrderRecord(symbol, side)
            self._pending.add(order_id)
            return True
        if record.side is None:
            record.side = side  # first named by a cancel-all: a listing tells the side
        if order_id in self._pending or not should_cancel_again(record.outcome):
            return False
        if record.outcome is Outcome.SENT:
            self._recancels += 1
        self._pending.add(order_id)
        return True

    def adopt(self, order_id: int, symbol: str) -> bool:
        """An order named by a cancel-all answer; True when it was not resolved before."""
        if order_id in self._orders:
            return False
        self._orders[order_id] = OrderRecord(symbol, None)
        return True

    def hand_back(self, order_id: int, attempts: int = 0) -> None:
        """A bulk cancel did not settle this order: it waits for a per-order cancel.

        ``attempts`` (the bulk request's) are added to the order's count.
        """
        record = self._orders[order_id]
        record.attempts += attempts
        self._in_flight.discard(order_id)
        self._pending.add(order_id)

    # ---------------------------------------------------------------- cancelling

    def begin(self, order_id: int) -> None:
        """A cancel for this order is about to be sent."""
        if order_id in self._in_flight:
            raise DoubleCancel(f"order {order_id} already has a cancel in flight")
        self._in_flight.add(order_id)
        self._pending.add(order_id)

    def in_flight(self) -> int:
        return len(self._in_flight)

    def pending(self) -> int:
        """Resolved orders whose outcome is not known yet."""
        return sum(1 for r in self._orders.values() if r.outcome is None)

    def conclude(
        self,
        order_id: int,
        outcome: Outcome,
        attempts: int = 0,
        reason: RejectReason | None = None,
    ) -> None:
        """Record one answer for a resolved order (see ``merge_outcome``)."""
        record = self._orders[order_id]
        self._in_flight.discard(order_id)
        self._pending.discard(order_id)
        merged = merge_outcome(record.outcome, outcome)
        if record.outcome is not None:
            self._tally[record.outcome] -= 1
        self._tally[merged] += 1
        if merged is outcome:  # an answer that did not win keeps the earlier reason too
            record.reason = reason
        record.outcome = merged
        record.attempts += attempts
        if outcome is Outcome.ALREADY_CLOSED:
            self._listed.get(record.symbol, set()).discard(order_id)
            self._listing.get(record.symbol, set()).discard(order_id)

    def abandon(self, order_id: int) -> None:
        """A queued or in-flight cancel that will not be answered (the sweep stopped)."""
        self._in_flight.discard(order_id)
        self._pending.discard(order_id)
        record = self._orders.get(order_id)
        if record is not None and record.outcome is None:
            self.conclude(order_id, Outcome.FAILED)

    def finalise(self) -> int:
        """End of sweep: every order without an outcome is ``failed``. Returns how many."""
        missing = [oid for oid, r in self._orders.items() if r.outcome is None]
        for order_id in missing:
            self.abandon(order_id)
        self._pending.clear()
        self._in_flight.clear()
        return len(missing)

    # ------------------------------------------------------------------ reporting

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._orders

    def record(self, order_id: int) -> OrderRecord:
        return self._orders[order_id]

    def items(self, scope: Scope | None = None) -> Iterator[tuple[int, OrderRecord]]:
        """Records in resolution order, optionally only those ``scope`` covers."""
        for order_id, record in self._orders.items():
            if scope is None or covers(scope, order_id, record):
                yield order_id, record

    def counts(self, scope: Scope | None = None) -> Counts:
        """Outcome counts (orders without an outcome yet are not counted)."""
        if scope is None:
            t = self._tally
            return Counts(
                sent=t[Outcome.SENT],
                already_closed=t[Outcome.ALREADY_CLOSED],
                rejected=t[Outcome.REJECTED],
                failed=t[Outcome.FAILED],
                skipped=t[Outcome.SKIPPED],
            )
        counts = Counts()
        for _, record in self.items(scope):
            if record.outcome is not None:
                counts.add(record.outcome)
        return counts

    def reports(self, scope: Scope | None = None) -> list[OrderReport]:
        """One report per resolved order with an outcome."""
        return [
            OrderReport(order_id, r.symbol, r.outcome, r.attempts, r.reason)
            for order_id, r in self.items(scope)
            if r.outcome is not None
        ]

    def residual(self, scope: Scope | None = None) -> int:
        """Orders in scope the latest listing of their pair returned and not known closed."""
        # A pair whose listing was cut short counts both its last complete listing and
        # what the partial one returned: an estimate that errs towards "still open".
        ids: set[int] = set()
        for listed in self._listed.values():
            ids |= listed
        for listing in self._listing.values():
            ids |= listing
        if scope is None:
            return len(ids)
        return sum(
            1 for oid in ids if oid in self._orders and covers(scope, oid, self._orders[oid])
        )
