"""The accounting of one sweep: every resolved order, its one outcome, what is in flight.

Rules (the invariants of docs/CONTRACTS.md and docs/ENGINE.md, as plain code):

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
- The exchange has the last word. A complete listing of a pair that no longer shows an
  order whose cancel ended ``failed`` in an earlier pass (its answer was lost: timeout,
  retries exhausted) makes it ``sent``. The final listing of a sweep (see
  :meth:`Ledger.listing_finished` with ``final``) also settles orders without an outcome:
  gone after a cancel was attempted (in flight when the sweep stopped) is ``sent``, gone
  without one is ``already_closed``. Only what is still unsettled when the sweep ends
  (:meth:`Ledger.finalise`) is ``failed``: an order absent from a complete final listing
  never is.
- Metrics (``on_outcome``): each order is counted once, when it first reaches ``sent``,
  ``already_closed`` or ``rejected`` (answers from the exchange), or as ``failed`` at the
  end of the sweep if it reached none of them. ``failed`` during a sweep is provisional
  (the next pass lists and cancels again), so it is not counted until then. A later
  change of a counted order's outcome (``sent`` then ``rejected`` by a re-cancel) is
  not counted again: the result carries the final outcome, the counter the first.
- Residual: the orders the latest *complete* listing of each pair returned in scope,
  minus those a cancel answered ``sent`` or ``already_closed`` after that listing
  (they are no longer known to be open; a lost cancel shows up again in the next
  listing). A listing cut short proves nothing and counts nothing; a pair never listed
  to the end is not counted (nothing is known about it) and the sweep names such pairs
  (:meth:`Ledger.listed_pairs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from killswitch.core.model import Counts, InFlight, OrderReport, Scope
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
    counted: bool = False  # reported to ``on_outcome`` (once per order, see the rules)


# Outcomes that are answers from the exchange: counted in the metrics as they arrive.
COUNTED_AT_ONCE = frozenset({Outcome.SENT, Outcome.ALREADY_CLOSED, Outcome.REJECTED})


def merge_outcome(prior: Outcome | None, new: Outcome) -> Outcome:
    """The outcome an order keeps after one more cancel answer (see module docstring)."""
    if prior is Outcome.SENT and new is Outcome.ALREADY_CLOSED:
        return Outcome.SENT
    return new


def should_cancel_again(prior: Outcome | None) -> bool:
    """Whether an order a listing shows open again gets another cancel."""
    return prior not in (Outcome.REJECTED, Outcome.SKIPPED)


def settle_absent(outcome: Outcome | None, attempts: int) -> Outcome | None:
    """The outcome of an order a complete final listing no longer shows (None: keep it).

    Gone after a cancel was attempted (a ``failed`` answer, or a request in flight when
    the sweep stopped) is ``sent``: the exchange applied it. Gone without any cancel is
    ``already_closed``: it closed on its own. Exchange answers are kept as they are.
    """
    if outcome is Outcome.FAILED or (outcome is None and attempts > 0):
        return Outcome.SENT
    if outcome is None:
        return Outcome.ALREADY_CLOSED
    return None


class Ledger:
    """Accounting for one sweep of one account (see the module docstring for the rules)."""

    def __init__(self, on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self._on_outcome = on_outcome
        self._orders: dict[int, OrderRecord] = {}
        self._failed_before: set[int] = set()  # outcome failed when the pass started
        self._by_symbol: dict[str, list[int]] | None = None  # for a final listing
        self._pending: set[int] = set()  # queued or in flight
        self._in_flight: set[int] = set()
        self._seen: set[int] = set()  # listed in the current pass
        self._recancels = 0  # of those, orders an earlier pass had already cancelled (sent)
        self._tally: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self._listed: dict[str, set[int]] = {}  # latest complete listing per pair
        self._listing: dict[str, set[int]] = {}  # listing in progress per pair
        # Bumped whenever a record is added or changed: what was read of the records
        # (reports, counts) is still true while it stays the same.
        self.version = 0

    # ----------------------------------------------------------- passes and listing

    def new_pass(self) -> None:
        """A new pass starts: every order may be cancelled once more."""
        self._seen = set()
        self._recancels = 0
        self._failed_before = {
            oid for oid, r in self._orders.items() if r.outcome is Outcome.FAILED
        }
        self._by_symbol = None

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

    def listing_finished(self, symbol: str, *, final: bool = False) -> None:
        """A pair's listing completed: it becomes that pair's residual picture.

        Orders of the pair this pass's listing did not return are settled: ``failed`` in
        an earlier pass becomes ``sent``; with ``final`` (the sweep's last listing, no
        cancel runs any more) orders without an outcome too (see :func:`settle_absent`).
        """
        self._listed[symbol] = self._listing.pop(symbol, set())
        seen = self._seen
        if final:
            candidates = [
                oid
                for oid in self._orders_of(symbol)
                if oid not in seen and oid not in self._in_flight
            ]
        else:
            candidates = [
                oid
                for oid in self._failed_before
                if oid not in seen and self._orders[oid].symbol == symbol
            ]
        for order_id in candidates:
            record = self._orders[order_id]
            if record.outcome is Outcome.FAILED and order_id in self._pending:
                continue  # cancelled again in this pass: its own answer decides
            settled = settle_absent(record.outcome, record.attempts)
            if settled is not None:
                self.conclude(order_id, settled)
            self._failed_before.discard(order_id)

    def _orders_of(self, symbol: str) -> list[int]:
        """Resolved orders of one pair, indexed at the first call of a pass (an order
        resolved later in the pass was seen by its listing: never settled as absent)."""
        if self._by_symbol is None:
            self._by_symbol = {}
            for order_id, record in self._orders.items():
                self._by_symbol.setdefault(record.symbol, []).append(order_id)
        return self._by_symbol.get(symbol, [])

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
            self.version += 1
            self._pending.add(order_id)
            return True
        if record.side is None:
            record.side = side  # first named by a cancel-all: a listing tells the side
            self.version += 1
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
        self.version += 1
        return True

    def hand_back(self, order_id: int, attempts: int = 0) -> None:
        """A bulk cancel did not settle this order: it waits for a per-order cancel.

        ``attempts`` (the bulk request's) are added to the order's count.
        """
        record = self._orders[order_id]
        record.attempts += attempts
        self.version += 1
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
        self.version += 1
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
        if merged in COUNTED_AT_ONCE:
            self._count(record)
        if outcome is Outcome.ALREADY_CLOSED or outcome is Outcome.SENT:
            # No longer known to be open (a lost cancel shows up in the next listing).
            self._listed.get(record.symbol, set()).discard(order_id)
            self._listing.get(record.symbol, set()).discard(order_id)

    def _count(self, record: OrderRecord) -> None:
        if record.counted or record.outcome is None or record.outcome is Outcome.SKIPPED:
            return
        record.counted = True
        if self._on_outcome is not None:
            self._on_outcome(record.outcome)

    def abandon(self, order_id: int, *, sent: bool = False) -> None:
        """A queued or in-flight cancel that will not be answered (the sweep stopped).

        The order keeps its outcome (none yet, usually): a final listing may still
        settle it, else :meth:`finalise` makes it ``failed``. ``sent``: the request had
        gone out (in flight), which counts as an attempt.
        """
        self._in_flight.discard(order_id)
        self._pending.discard(order_id)
        record = self._orders.get(order_id)
        if record is not None and sent:
            record.attempts += 1
            self.version += 1

    def attempted(self, order_id: int) -> bool:
        """Whether any cancel for this order was sent (or an answer recorded)."""
        record = self._orders[order_id]
        return record.attempts > 0 or record.outcome is not None

    def finalise(self) -> int:
        """End of sweep: every order without an outcome is ``failed``. Returns how many.

        Orders whose ``failed`` was never superseded are counted in the metrics now.
        """
        self._pending.clear()
        self._in_flight.clear()
        missing = [oid for oid, r in self._orders.items() if r.outcome is None]
        for order_id in missing:
            self.conclude(order_id, Outcome.FAILED)
        for record in self._orders.values():
            if record.outcome is Outcome.FAILED:
                self._count(record)
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
            if scope is None or scope.covers(record.symbol, record.side, order_id):
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

    def in_flight_orders(self, scope: Scope | None = None) -> list[InFlight]:
        """Orders with a cancel sent and no outcome yet, in ascending id order."""
        out = []
        for oid in sorted(self._in_flight):
            r = self._orders[oid]
            if r.outcome is None and (scope is None or scope.covers(r.symbol, r.side, oid)):
                out.append(InFlight(oid, r.symbol))
        return out

    def residual(self, scope: Scope | None = None) -> int:
        """Orders in scope the latest complete listing of their pair returned open and no
        cancel answered since (see the module docstring)."""
        ids: set[int] = set()
        for listed in self._listed.values():
            ids |= listed
        if scope is None:
            return len(ids)
        orders = self._orders
        return sum(
            1
            for oid in ids
            if (r := orders.get(oid)) is not None and scope.covers(r.symbol, r.side, oid)
        )
