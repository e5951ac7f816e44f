"""Outcomes carried over a crash (pure): the merge rule and a bounded store.

A daemon that dies mid-sweep publishes no final result, so its alert's offset is
not committed and the alert is replayed by the next process. That process only
sees what is still open: the orders the first one cancelled are gone from the
books and would be missing from the final result. What the first process did is
on the results topic, in its progress results (``final: false``): counts, and the
per-order outcomes while they fit one record (:data:`RESULT_MAX_ORDERS`).

Merge rule (:func:`carry_over`), per order id, earlier process first:

- An order concluded by both processes counts once. The later outcome wins, except
  ``already_closed`` after ``sent`` stays ``sent`` (the order most likely closed
  because of that first cancel), the rule of :func:`killswitch.core.ledger.merge_outcome`.
  Attempts add up; the reason goes with the winning outcome.
- Counts are the earlier counts plus the later ones, minus each order both sides
  list, plus its merged outcome. When both sides list every order they counted this
  is exactly the count of the merged per-order view; otherwise an order both
  concluded but one side did not list counts twice, and the result says so.
- A final ``flat`` result proves, by the later process's complete listing, that no
  order in scope is open: an earlier ``failed`` the later process never concluded
  is ``sent``: a cancel was attempted and the order is gone, and an order absent from
  a complete final listing is never ``failed``.
- A cancel the earlier process had in flight (``in_flight``: sent, not answered) may
  have been applied by the exchange after that process stopped, and then the later
  process never sees the order open. Unless the later process concluded it itself, a
  final result counts it: ``sent`` when ``flat`` (gone after a cancel was attempted),
  else ``failed`` (a cancel was attempted, its effect is unknown). A progress result
  keeps listing it in flight, so a second crash still carries it.

Reading a progress record back is the result reader's job
(:func:`killswitch.contracts.decode_result_summary`, which trusts another process's
record only as far as it is consistent). The store (:class:`CarryStore`) keeps the
latest one per (alert, account) until a final result for the pair is read.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable

from killswitch.core.ledger import merge_outcome
from killswitch.core.model import (
    CarriedOutcomes,
    Counts,
    InFlight,
    OrderReport,
    SweepResult,
    SweepStatus,
)
from killswitch.core.outcomes import Outcome

# Most order entries one result record lists. A kill of 100,000 orders must still fit
# in one Kafka record (1 MB by default): the counts stay complete, the list is cut and
# ``orders_omitted`` says by how much. Progress results list per-order outcomes only
# while all of them fit, so a restarted daemon can merge them order by order.
RESULT_MAX_ORDERS = 2_000


def merge_report(earlier: OrderReport, later: OrderReport) -> OrderReport:
    """One order concluded by two processes: one report (see the module docstring)."""
    outcome = merge_outcome(earlier.outcome, later.outcome)
    return OrderReport(
        order_id=later.order_id,
        symbol=later.symbol,
        outcome=outcome,
        attempts=earlier.attempts + later.attempts,
        reason=later.reason if outcome is later.outcome else earlier.reason,
    )


def _bump(counts: Counts, outcome: Outcome, delta: int) -> None:
    setattr(counts, outcome.value, getattr(counts, outcome.value) + delta)


def _plus(a: Counts, b: Counts) -> Counts:
    return Counts(
        sent=a.sent + b.sent,
        already_closed=a.already_closed + b.already_closed,
        rejected=a.rejected + b.rejected,
        failed=a.failed + b.failed,
        skipped=a.skipped + b.skipped,
    )


def merge_outcomes(
    carried: CarriedOutcomes,
    counts: Counts,
    orders: Iterable[OrderReport],
    *,
    flat: bool = False,
    final: bool = False,
) -> tuple[Counts, list[OrderReport]]:
    """Counts and per-order reports of both processes (earlier orders first).

    ``flat``: the later process's complete listing found nothing in scope open, so
    an order the earlier one reported ``failed`` and the later one never concluded
    is gone after a cancel was attempted: ``sent`` (an order absent from a complete
    final listing is never ``failed``). ``final`` (implied by ``flat``): the earlier
    process's cancels in flight that the later one never concluded are counted,
    ``sent`` when ``flat``, else ``failed``."""
    merged: dict[int, OrderReport] = {o.order_id: o for o in carried.orders}
    total = _plus(carried.counts, counts)
    later_ids: set[int] = set()
    for later in orders:
        later_ids.add(later.order_id)
        earlier = merged.get(later.order_id)
        if earlier is None:
            merged[later.order_id] = later
            continue
        report = merge_report(earlier, later)
        merged[later.order_id] = report
        _bump(total, earlier.outcome, -1)
        _bump(total, later.outcome, -1)
        _bump(total, report.outcome, +1)
    if flat:
        _failed_but_gone(carried, merged, later_ids, total)
    if final or flat:
        _in_flight_at_stop(carried, merged, total, Outcome.SENT if flat else Outcome.FAILED)
    return total, list(merged.values())


def _in_flight_at_stop(
    carried: CarriedOutcomes, merged: dict[int, OrderReport], total: Counts, outcome: Outcome
) -> None:
    """The earlier process's unanswered cancels no process concluded: ``outcome`` each."""
    for order in carried.in_flight:
        if order.order_id in merged:
            continue
        merged[order.order_id] = OrderReport(order.order_id, order.symbol, outcome, 1)
        _bump(total, outcome, +1)


def still_in_flight(
    carried: CarriedOutcomes, in_flight: Iterable[InFlight], orders: Iterable[OrderReport]
) -> list[InFlight]:
    """A progress result's cancels in flight: its own, then the earlier process's that
    no process concluded (so a second crash still carries them)."""
    out = list(in_flight)
    seen = {o.order_id for o in out} | {o.order_id for o in orders}
    return out + [o for o in carried.in_flight if o.order_id not in seen]


def _failed_but_gone(
    carried: CarriedOutcomes, merged: dict[int, OrderReport], later_ids: set[int], total: Counts
) -> None:
    """Earlier ``failed`` outcomes the later process never touched become ``sent``,
    those counted without per-order detail included."""
    listed_failed = 0
    for report in carried.orders:
        if report.outcome is not Outcome.FAILED:
            continue
        listed_failed += 1
        if report.order_id not in later_ids:
            merged[report.order_id] = dataclasses.replace(report, outcome=Outcome.SENT)
            _bump(total, Outcome.FAILED, -1)
            _bump(total, Outcome.SENT, +1)
    unlisted = carried.counts.failed - listed_failed
    _bump(total, Outcome.FAILED, -unlisted)
    _bump(total, Outcome.SENT, +unlisted)


def carry_over(result: SweepResult, carried: CarriedOutcomes) -> SweepResult:
    """``result`` (this process's, final or progress) with an earlier process's outcomes."""
    flat = result.final and result.status is SweepStatus.FLAT
    counts, orders = merge_outcomes(
        carried, result.counts, result.orders, flat=flat, final=result.final
    )
    exact = carried.complete and len(result.orders) == result.counts.resolved
    n = carried.counts.resolved
    note = f"includes {n} outcome(s) an earlier process published before it stopped"
    known = {report.order_id for report in result.orders} | {
        report.order_id for report in carried.orders
    }
    settled = sum(1 for o in carried.in_flight if o.order_id not in known)
    if result.final and settled:
        note += f" and {settled} cancel(s) it had in flight"
    if not exact:
        note += ", not all of them per order: an order both processes concluded may count twice"
    received = result.received_at
    if carried.received_at is not None and carried.received_at < received:
        received = carried.received_at
    # An id the earlier process concluded was seen open then: not "never found".
    concluded = {report.order_id for report in orders}
    return dataclasses.replace(
        result,
        counts=counts,
        orders=orders,
        not_found=[i for i in result.not_found if i not in concluded],
        in_flight=[] if result.final else still_in_flight(carried, result.in_flight, orders),
        sweeps=result.sweeps + carried.sweeps,
        received_at=received,
        first_cancel_at=carried.first_cancel_at or result.first_cancel_at,
        reason=f"{result.reason}; {note}" if result.reason else note,
    )


Key = tuple[str, str]
"""(alert id, account)."""


class CarryStore:
    """The latest progress outcomes of (alert, account) pairs with no final result yet.

    Bounded: at most ``max_entries`` pairs (the oldest forgotten first) and at most
    ``max_orders`` per-order entries in all (the oldest pairs keep their counts and
    lose their per-order detail first). A final result drops its pair.
    """

    def __init__(self, max_entries: int = 10_000, max_orders: int = 200_000) -> None:
        if max_entries < 1 or max_orders < 0:
            raise ValueError("max_entries must be at least 1 and max_orders at least 0")
        self.max_entries = max_entries
        self.max_orders = max_orders
        self._entries: OrderedDict[Key, CarriedOutcomes] = OrderedDict()
        self._orders = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def orders(self) -> int:
        """Per-order entries (outcomes and cancels in flight) held in all."""
        return self._orders

    def progress(self, alert_id: str, account: str, carried: CarriedOutcomes) -> None:
        """A progress result was read: it replaces what was known of the pair."""
        key = (alert_id, account)
        self._drop(key)
        self._entries[key] = carried
        self._orders += _entries_of(carried)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
        self._shed()

    def final(self, alert_id: str, account: str) -> None:
        """A final result was read: the pair is finished, nothing to carry."""
        self._drop((alert_id, account))

    def get(self, alert_id: str, account: str) -> CarriedOutcomes | None:
        return self._entries.get((alert_id, account))

    def _drop(self, key: Key) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._orders -= _entries_of(old)

    def _shed(self) -> None:
        """Over the per-order budget: the oldest pairs keep only their counts."""
        for key, entry in self._entries.items():
            if self._orders <= self.max_orders:
                return
            if entry.orders or entry.in_flight:
                self._orders -= _entries_of(entry)
                self._entries[key] = dataclasses.replace(entry, orders=(), in_flight=())


def _entries_of(carried: CarriedOutcomes) -> int:
    return len(carried.orders) + len(carried.in_flight)
