"""The simulator's in-memory data: orders, per-(client, symbol) books, trading pairs.

Built for speed on the cancel path: orders live in one dict keyed by id (O(1)
lookup) and each book keeps the ids it ever held in one ascending list. Ids come
from one global counter, so appending keeps the list sorted; closed ids stay in
it until they make up half of it, then the list is compacted (amortised O(1)).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass

# Statuses the simulator hands out. Both spellings of a partial fill appear on the
# wire (the docs use both), so clients are exercised on each.
OPEN_STATUSES = frozenset({"NEW", "OPEN", "PARTIAL_FILLED", "PARTIALLY_FILLED"})
ORDER_TYPES = frozenset({"LIMIT", "MARKET", "LIMIT_MAKER"})
SIDES = frozenset({"BUY", "SELL"})

# Compaction threshold: below this many closed ids a book never bothers.
_COMPACT_MIN_DEAD = 64


class SimOrder:
    """One order, mutable in place; its wire JSON is cached until it changes."""

    __slots__ = (
        "_json",
        "avg_price",
        "created_at",
        "executed_quantity",
        "order_id",
        "owner",
        "price",
        "quantity",
        "side",
        "status",
        "symbol",
        "type",
        "updated_at",
    )

    def __init__(
        self,
        *,
        order_id: int,
        owner: str,
        symbol: str,
        side: str,
        order_type: str,
        price: str,
        quantity: str,
        status: str,
        now_ms: int,
        executed_quantity: str = "0",
        avg_price: str = "0",
    ) -> None:
        self.order_id = order_id
        self.owner = owner  # the client's api key: orders are private to a client
        self.symbol = symbol
        self.side = side
        self.type = order_type
        self.price = price
        self.quantity = quantity
        self.status = status
        self.executed_quantity = executed_quantity
        self.avg_price = avg_price
        self.created_at = now_ms
        self.updated_at = now_ms
        self._json: bytes | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def close(self, status: str, now_ms: int) -> None:
        """Move to a terminal status (the caller keeps the book in step)."""
        self.status = status
        self.updated_at = now_ms
        self._json = None

    def to_dict(self) -> dict[str, object]:
        """The documented Order object (decimals as strings, times in ms)."""
        return {
            "order_id": self.order_id,
            "symbol": self.symbol,
            "side": self.side,
            "status": self.status,
            "type": self.type,
            "price": self.price,
            "quantity": self.quantity,
            "avg_price": self.avg_price,
            "executed_quantity": self.executed_quantity,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def to_json(self) -> bytes:
        """Compact wire JSON, cached (listing pages reuse it)."""
        cached = self._json
        if cached is None:
            cached = self._json = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return cached


class Book:
    """The open orders of one client on one symbol, pageable newest first."""

    __slots__ = ("dead", "ids", "open")

    def __init__(self) -> None:
        self.ids: list[int] = []  # ascending; may still hold closed ids
        self.open: dict[int, SimOrder] = {}
        self.dead = 0

    def __len__(self) -> int:
        return len(self.open)

    def add(self, order: SimOrder) -> None:
        """Add a new open order; ids are issued increasing, so this appends."""
        ids = self.ids
        if ids and order.order_id <= ids[-1]:
            raise ValueError("order ids must be added in increasing order")
        ids.append(order.order_id)
        self.open[order.order_id] = order

    def remove(self, order_id: int) -> None:
        """Forget a closed order; compacts the id list when half of it is dead."""
        if self.open.pop(order_id, None) is None:
            return
        self.dead += 1
        if self.dead >= _COMPACT_MIN_DEAD and self.dead * 2 >= len(self.ids):
            live = self.open
            self.ids = [i for i in self.ids if i in live]
            self.dead = 0

    def page(self, from_order_id: int | None, limit: int) -> list[SimOrder]:
        """Up to ``limit`` open orders, newest (largest id) first, ids <= ``from_order_id``."""
        ids = self.ids
        live = self.open
        i = (len(ids) if from_order_id is None else bisect_right(ids, from_order_id)) - 1
        out: list[SimOrder] = []
        while i >= 0 and len(out) < limit:
            order = live.get(ids[i])
            if order is not None:
                out.append(order)
            i -= 1
        return out


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """A trading pair as exchange-info describes it, plus a reference price for seeding."""

    symbol: str
    base_asset: str
    quote_asset: str
    base_precision: int
    quote_tick: str
    reference_price: str

    def to_dict(self) -> dict[str, object]:
        """The documented exchange-info entry."""
        return {
            "symbol": self.symbol,
            "base_asset": self.base_asset,
            "base_precision": self.base_precision,
            "quote_asset": self.quote_asset,
            "quote_tick": self.quote_tick,
        }


# (symbol, base precision, quote tick, reference price): plausible, not market data.
_DEFAULTS: tuple[tuple[str, int, str, str], ...] = (
    ("BTC_USDT", 6, "0.01", "65000.00"),
    ("ETH_USDT", 5, "0.01", "3200.00"),
    ("SOL_USDT", 3, "0.01", "150.00"),
    ("XRP_USDT", 1, "0.0001", "0.5200"),
    ("BNB_USDT", 4, "0.01", "580.00"),
    ("ADA_USDT", 1, "0.0001", "0.4500"),
    ("DOGE_USDT", 0, "0.00001", "0.15000"),
    ("AVAX_USDT", 3, "0.01", "35.00"),
    ("DOT_USDT", 2, "0.001", "7.000"),
    ("LINK_USDT", 2, "0.001", "15.000"),
    ("LTC_USDT", 3, "0.01", "85.00"),
    ("TRX_USDT", 0, "0.00001", "0.12000"),
    ("ETH_BTC", 4, "0.00001", "0.05000"),
    ("BTC_IDR", 8, "1", "1050000000"),
    ("ETH_IDR", 8, "1", "52000000"),
    ("USDT_IDR", 2, "1", "16200"),
    ("SOL_IDR", 6, "1", "2400000"),
    ("XRP_IDR", 2, "1", "8400"),
    ("BNB_IDR", 6, "1", "9400000"),
    ("DOGE_IDR", 0, "1", "2400"),
    ("ADA_IDR", 1, "1", "7300"),
    ("LINK_IDR", 4, "1", "240000"),
)


def symbol_spec(symbol: str) -> SymbolSpec:
    """The spec of a pair: built-in figures when known, generic ones otherwise."""
    for name, precision, tick, price in _DEFAULTS:
        if name == symbol:
            base, _, quote = name.partition("_")
            return SymbolSpec(name, base, quote, precision, tick, price)
    base, _, quote = symbol.partition("_")
    return SymbolSpec(symbol, base, quote or "USDT", 8, "0.01", "100.00")


DEFAULT_SYMBOLS: tuple[str, ...] = tuple(row[0] for row in _DEFAULTS)
