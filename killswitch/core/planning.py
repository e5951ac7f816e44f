"""Sweep planning: which orders to cancel, in what order, how, and when a sweep is done.

Plain functions and small data structures, no I/O; the engine (``killswitch.engine``)
calls them while it streams listings and fires cancels.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from killswitch.core.model import Scope, SweepStatus
from killswitch.core.orders import Order

# Which open orders a sweep cancels first (the ``engine.priority`` setting).
OrderPriority = Literal["notional_desc", "newest_first", "oldest_first"]
StrategyName = Literal["auto", "per_order", "batch", "symbol"]
EndpointName = Literal["cancel_all", "cancel_batch"]

# Queue entry standing for "cancel every open order of this pair" (one cancel-all);
# order ids are positive, so it never collides with one.
WHOLE_PAIR = -1
# Queue key of a named pair's cancel-all sent before any listing (see
# :func:`cancel_pair_first`): nothing about its orders is known yet, and it is what the
# alert asked for, so it goes before any order a listing queued (first in, first out
# among named pairs).
NAMED_PAIR_KEY: tuple[float, int] = (-math.inf, 0)
# HTTP answers that mean the exchange does not serve an endpoint at all (the route or
# the method does not exist), as opposed to refusing one request to it.
ENDPOINT_REFUSED_STATUSES = frozenset({404, 405})


# --------------------------------------------------------------------------- scope


def symbols_to_list(scope: Scope, exchange_symbols: Iterable[str] | None) -> list[str]:
    """The pairs a sweep lists: the scope's own, else every pair the exchange trades.

    ``exchange_symbols`` may be ``None`` when the scope names its symbols (no need to
    ask the exchange). Sorted so a sweep's request order is reproducible.
    """
    if scope.symbols is not None:
        return sorted(scope.symbols)
    if exchange_symbols is None:
        raise ValueError("scope names no symbols: exchange symbols are needed")
    return sorted(set(exchange_symbols))


def needs_exchange_info(scope: Scope) -> bool:
    """True when the sweep must ask the exchange which pairs exist (scope names none)."""
    return scope.symbols is None


def whole_pairs(scope: Scope) -> bool:
    """True when the scope is whole pairs: no side filter and no explicit order ids.

    Only then may ``cancel_all`` on a pair be used, since it cannot be narrowed.
    """
    return scope.sides is None and not scope.order_ids


def in_scope(scope: Scope, order: Order) -> bool:
    """An open order this scope covers (closed orders are never cancelled)."""
    return order.status.is_open and scope.covers(order.symbol, order.side, order.order_id)


def effective_strategy(strategy: StrategyName, scope: Scope, *, first_pass: bool) -> StrategyName:
    """The strategy for one pass.

    ``symbol`` (cancel-all on each pair) applies only to the first pass of a sweep and
    only when the scope is whole pairs; every later pass is a verify listing whose
    leftovers are cancelled one by one (``per_order``). ``auto`` decides per pair and
    per request (see :func:`cancel_whole_pair` and :func:`bulk_plan`), in every pass.
    """
    if strategy == "symbol":
        return "symbol" if first_pass and whole_pairs(scope) else "per_order"
    return strategy


def cancel_whole_pair(
    scope: Scope,
    *,
    first_page: int,
    in_scope_on_page: int,
    page_size: int,
    refused: Iterable[str] = (),
) -> bool:
    """Strategy ``auto``: whether a pair becomes one cancel-all after its first page.

    Only a scope of whole pairs may use cancel-all (it cannot be narrowed), and only
    while the account's exchange serves it (``refused`` names endpoints it does not).
    A full first page means more pages follow: one cancel-all covers them all, so the
    rest of the pair is not listed (the next pass's listing verifies). A short page is
    the whole pair: two or more orders there are still cheaper as one cancel-all, one
    order is one DELETE either way and a per-order answer says more (already closed).
    """
    if not whole_pairs(scope) or "cancel_all" in refused:
        return False
    return first_page >= page_size or in_scope_on_page >= 2


def cancel_pair_first(
    strategy: StrategyName,
    scope: Scope,
    *,
    first_pass: bool,
    enabled: bool = True,
    refused: Iterable[str] = (),
) -> bool:
    """Strategy ``auto``: whether a pair the scope names gets its cancel-all before any
    listing (the ``cancel_named_pairs_first`` setting, ``enabled``).

    Only in a sweep's first pass (not a dry run, not a guard's listing: the caller's
    ``first_pass``), only for whole pairs (a cancel-all cannot be narrowed), only for
    pairs the scope names (a whole-account kill lists first: most of the exchange's pairs
    are usually empty, and an empty first page costs one request where a cancel-all
    and its verifying listing cost two), and only while the account's exchange serves
    cancel-all. The pass does not list such a pair: the next pass's listing, begun
    after the cancel-all's answer, verifies it.
    """
    return (
        enabled
        and first_pass
        and strategy == "auto"
        and scope.symbols is not None
        and whole_pairs(scope)
        and "cancel_all" not in refused
    )


def bulk_plan(
    strategy: StrategyName, batch_size: int, refused: Iterable[str] = ()
) -> tuple[int, bool]:
    """How a worker of this pass takes queued orders: (ids per request, use batch cancel).

    ``batch`` always sends batch cancels; ``auto`` does while the exchange serves them
    (a batch of one is sent as a per-order DELETE); everything else one by one.
    """
    if strategy == "batch":
        return batch_size, True
    if strategy == "auto" and "cancel_batch" not in refused:
        return batch_size, True
    return 1, False


def endpoint_refused(status: int | None) -> bool:
    """True when a bulk cancel's answer says not to call that endpoint again: the exchange
    has no such endpoint, or it redirects (never followed: the same 3xx would come back
    for every pair)."""
    return status is not None and (status in ENDPOINT_REFUSED_STATUSES or 300 <= status < 400)


# ------------------------------------------------------------------------ priority

PriorityKey = tuple[float, int]


def priority_key(priority: OrderPriority, order: Order) -> PriorityKey:
    """Heap key: smaller is cancelled first.

    The notional is a float here on purpose: it only orders the queue (never an
    amount that is reported or compared for equality), and a float key keeps the
    heap small when a listing yields 100,000 orders.
    """
    if priority == "notional_desc":
        return (-float(order.notional), -order.order_id)
    if priority == "newest_first":
        return (-float(order.created_at), -order.order_id)
    if priority == "oldest_first":
        return (float(order.created_at), order.order_id)
    raise ValueError(f"unknown priority {priority!r}")


class CancelQueue:
    """Orders waiting to be cancelled, best first, grouped by pair for batches.

    Every push goes into one heap per pair and into a global heap of
    ``(key, seq, symbol)`` heads. :meth:`pop` takes the globally best live entry and,
    for batches, more of the same pair in their own priority order. Entries taken by a
    batch leave stale heads in the global heap, recognised because the pair's own heap
    no longer starts with that ``(key, seq)``. Entries are small tuples, never orders.
    """

    def __init__(self) -> None:
        self._global: list[tuple[float, int, int, str]] = []
        self._by_symbol: dict[str, list[tuple[float, int, int, int]]] = {}
        self._seq = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, key: PriorityKey, order_id: int, symbol: str) -> None:
        """Queue one order."""
        self._seq += 1
        heapq.heappush(self._global, (key[0], key[1], self._seq, symbol))
        heapq.heappush(
            self._by_symbol.setdefault(symbol, []), (key[0], key[1], self._seq, order_id)
        )
        self._size += 1

    def pop(self, max_n: int = 1) -> tuple[str, list[int]] | None:
        """The best order and up to ``max_n - 1`` more of its pair, or None when empty.

        A :data:`WHOLE_PAIR` entry always comes out alone (it is one cancel-all).
        """
        while self._global:
            k0, k1, seq, symbol = heapq.heappop(self._global)
            heap = self._by_symbol.get(symbol)
            if not heap or heap[0][:3] != (k0, k1, seq):
                continue  # stale head: that entry went out in an earlier batch
            ids = [heapq.heappop(heap)[3]]
            if ids[0] != WHOLE_PAIR:
                while heap and len(ids) < max_n and heap[0][3] != WHOLE_PAIR:
                    ids.append(heapq.heappop(heap)[3])
            if not heap:
                del self._by_symbol[symbol]
            self._size -= len(ids)
            return symbol, ids
        return None

    def requests(self, max_n: int) -> int:
        """How many requests the queued orders make, ``max_n`` ids per request at most."""
        return sum(-(-len(heap) // max_n) for heap in self._by_symbol.values())

    def drain(self) -> Iterator[tuple[str, int]]:
        """Remove and yield every queued ``(symbol, order_id)`` (a stopped sweep)."""
        for symbol, heap in self._by_symbol.items():
            for entry in heap:
                yield symbol, entry[3]
        self._by_symbol.clear()
        self._global.clear()
        self._size = 0


def unanswered(sent: Iterable[int], success: Iterable[int]) -> list[int]:
    """Ids of a batch that need a per-order cancel: every id sent that is not in ``success``.

    An id in ``fail`` has usually just closed on its own; a per-order cancel then answers
    ``order_already_closed`` (one request, the same cost as checking it with get-order,
    and it cancels the order if it is in fact still open). Ids the exchange answered in
    neither list are treated the same way rather than assumed cancelled; ids in ``fail``
    that were never sent are ignored.
    """
    ok = set(success)
    seen: set[int] = set()
    out: list[int] = []
    for order_id in sent:
        if order_id not in ok and order_id not in seen:
            seen.add(order_id)
            out.append(order_id)
    return out


# ------------------------------------------------------------------ pass decisions


class Next(StrEnum):
    """What a sweep does after one pass."""

    CONTINUE = "continue"  # list again (and cancel what is found)
    FLAT = "flat"  # a complete listing returned nothing in scope
    RESIDUAL = "residual"  # stop with orders still open
    DRY_RUN = "dry_run"  # a dry run lists once


@dataclass(frozen=True, slots=True)
class PassSummary:
    """What one pass saw and did.

    ``listed`` is False for a pass that did not list every pair in scope (a
    cancel-all pass); ``found`` counts in-scope open orders its listing returned;
    ``queued`` how many of them it cancelled (or tried to); ``scope_changed`` whether
    the scope widened after the pass started (so its listing may have missed orders).
    """

    listed: bool
    found: int
    queued: int
    scope_changed: bool = False


def next_step(summary: PassSummary, *, passes: int, max_passes: int, dry_run: bool) -> Next:
    """Decide after a pass: flat only after a complete listing found nothing in scope."""
    if dry_run and summary.listed and not summary.scope_changed:
        return Next.DRY_RUN
    if summary.listed and summary.found == 0 and not summary.scope_changed:
        return Next.FLAT
    if passes >= max_passes:
        return Next.RESIDUAL
    if (
        summary.listed
        and not dry_run
        and summary.found > 0
        and summary.queued == 0
        and not summary.scope_changed
    ):
        # Every order still open is one we will not cancel again (rejected): another
        # listing cannot change that, it would only spend the exchange budget.
        return Next.RESIDUAL
    return Next.CONTINUE


def pause_before_next_pass(lagging_passes: int, base_s: float = 0.05, cap_s: float = 1.0) -> float:
    """Seconds to wait before listing again.

    ``lagging_passes`` counts consecutive passes whose listing still returned orders
    the exchange had already accepted a cancel for (``sent``): the exchange is slow to
    apply cancels, and listing and cancelling again at once would only spend budget.
    The pause doubles per such pass, from ``base_s`` up to ``cap_s``; otherwise none.
    """
    if lagging_passes <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2.0 ** min(lagging_passes - 1, 30)))


def final_status(
    *,
    dry_run: bool,
    failure: str | None,
    verified: bool,
    residual_in_scope: int,
) -> SweepStatus:
    """The final status of one alert's result.

    ``verified`` means a complete listing that started after the alert joined the sweep
    returned nothing in the alert's scope.
    """
    if failure is not None:
        return SweepStatus.FAILED
    if dry_run:
        return SweepStatus.DRY_RUN
    if verified and residual_in_scope == 0:
        return SweepStatus.FLAT
    return SweepStatus.RESIDUAL
