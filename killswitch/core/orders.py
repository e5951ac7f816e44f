"""Order model shared by the client, the engine and the simulator (pure data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderStatus(StrEnum):
    NEW = "NEW"
    OPEN = "OPEN"
    PARTIAL_FILLED = "PARTIAL_FILLED"
    # The cancel page of the docs spells it this way; both are accepted.
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PARTIAL_CANCELLED = "PARTIAL_CANCELLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    EXPIRED_IN_MATCH = "EXPIRED_IN_MATCH"
    PARTIALLY_EXPIRED_IN_MATCH = "PARTIALLY_EXPIRED_IN_MATCH"

    @property
    def is_open(self) -> bool:
        """Only NEW, OPEN and partially filled orders are open (and cancellable)."""
        return self in _OPEN


_OPEN = frozenset(
    {OrderStatus.NEW, OrderStatus.OPEN, OrderStatus.PARTIAL_FILLED, OrderStatus.PARTIALLY_FILLED}
)


class OrderParseError(ValueError):
    """An order object from the exchange does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class Order:
    """An order as the exchange reports it. Decimals are never floats."""

    order_id: int
    symbol: str
    side: Side
    status: OrderStatus
    type: str
    price: Decimal
    quantity: Decimal
    executed_quantity: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    created_at: int = 0
    updated_at: int = 0

    @property
    def remaining(self) -> Decimal:
        return max(self.quantity - self.executed_quantity, Decimal(0))

    @property
    def notional(self) -> Decimal:
        """Open exposure in quote currency: price times remaining quantity."""
        return self.price * self.remaining

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Order:
        """Parse one order object (raises OrderParseError naming the bad field)."""
        try:
            order_id = data["order_id"]
            if isinstance(order_id, bool) or not isinstance(order_id, int | str):
                raise OrderParseError("order_id: not an integer")
            return cls(
                order_id=int(order_id),
                symbol=str(data["symbol"]),
                side=Side(data["side"]),
                status=OrderStatus(data["status"]),
                type=str(data.get("type", "LIMIT")),
                price=_decimal(data, "price"),
                quantity=_decimal(data, "quantity"),
                executed_quantity=_decimal(data, "executed_quantity"),
                avg_price=_decimal(data, "avg_price"),
                created_at=int(data.get("created_at") or 0),
                updated_at=int(data.get("updated_at") or 0),
            )
        except KeyError as exc:
            raise OrderParseError(f"missing field {exc.args[0]}") from None
        except (ValueError, TypeError) as exc:
            if isinstance(exc, OrderParseError):
                raise
            raise OrderParseError(f"bad order object: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        """The documented wire shape (decimals as strings)."""
        return {
            "order_id": self.order_id,
            "symbol": self.symbol,
            "side": self.side.value,
            "status": self.status.value,
            "type": self.type,
            "price": str(self.price),
            "quantity": str(self.quantity),
            "avg_price": str(self.avg_price),
            "executed_quantity": str(self.executed_quantity),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _decimal(data: Mapping[str, Any], name: str) -> Decimal:
    raw = data.get(name)
    if raw is None or raw == "":
        return Decimal(0)
    if isinstance(raw, float):
        raw = repr(raw)
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise OrderParseError(f"{name}: not a decimal") from None
    if not value.is_finite():
        raise OrderParseError(f"{name}: not a finite decimal")
    return value


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """A trading pair from exchange info."""

    symbol: str
    base_asset: str
    quote_asset: str
    base_precision: int = 8
    quote_tick: Decimal = Decimal("0.01")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SymbolInfo:
        try:
            return cls(
                symbol=str(data["symbol"]),
                base_asset=str(data.get("base_asset", "")),
                quote_asset=str(data.get("quote_asset", "")),
                base_precision=int(data.get("base_precision", 8)),
                quote_tick=Decimal(str(data.get("quote_tick", "0.01"))),
            )
        except (KeyError, ValueError, TypeError, InvalidOperation) as exc:
            raise OrderParseError(f"bad exchange-info entry: {exc}") from None
