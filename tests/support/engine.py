"""The engine's unit-test kit: an in-memory exchange with the ``ExchangeAPI`` surface and a
request log, engine settings and kill requests for tests, and recorders of what the
engine reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from killswitch.core.model import KillRequest, Scope, SweepResult
from killswitch.core.orders import Order, OrderStatus, Side, SymbolInfo
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.core.ports import BatchCancelResult, CancelResult, EngineConfig, NullObserver
from killswitch.engine import Engine
from killswitch.exchange.errors import AuthError, InvalidRequest

ACCOUNT = "mm-1"

Engines = Callable[[Engine], Awaitable[Engine]]
"""The ``engines`` fixture: ``await engines(Engine(...))`` begins the engine's lifetime
for the rest of the test."""


class FakeExchange:
    """An in-memory exchange with the ExchangeAPI surface and a request log."""

    def __init__(
        self, symbols: Sequence[str] = ("BTC_USDT", "ETH_USDT"), account: str = ACCOUNT
    ) -> None:
        self._account = account
        self.symbols = list(symbols)
        self.books: dict[str, dict[int, Order]] = {s: {} for s in self.symbols}
        self.log: list[tuple[str, str, tuple[int, ...]]] = []
        self.next_id = 1000
        self.auth_revoked = False
        self.list_error: Exception | None = None
        self.sticky = False  # cancels answer CANCEL_SENT but orders stay open
        self.reject_ids: set[int] = set()  # cancel answers 404
        self.batch_fail_ids: set[int] = set()  # batch answers these in "fail" (still open)
        self.spawn_on_cancel: list[tuple[str, Side]] = []  # new orders appear mid-sweep
        self.gate: asyncio.Event | None = None  # when set, cancels wait for it
        self.inflight: set[int] = set()
        self.double_cancels = 0

    @property
    def account(self) -> str:
        return self._account

    def place(
        self, symbol: str, side: Side = Side.BUY, price: str = "10", quantity: str = "1"
    ) -> int:
        self.next_id += 1
        self.books[symbol][self.next_id] = Order(
            order_id=self.next_id,
            symbol=symbol,
            side=side,
            status=OrderStatus.OPEN,
            type="LIMIT",
            price=Decimal(price),
            quantity=Decimal(quantity),
            created_at=self.next_id,
        )
        return self.next_id

    def open_count(self) -> int:
        return sum(len(b) for b in self.books.values())

    def calls(self, kind: str) -> list[tuple[str, str, tuple[int, ...]]]:
        return [c for c in self.log if c[0] == kind]

    async def exchange_info(self) -> list[SymbolInfo]:
        self.log.append(("info", "", ()))
        if self.auth_revoked:
            raise AuthError("refused", status=401)
        return [SymbolInfo(s, s.split("_")[0], s.split("_")[1]) for s in self.symbols]

    async def open_orders(self, symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        self.log.append(("list", symbol, ()))
        await asyncio.sleep(0)
        if self.auth_revoked:
            raise AuthError("refused", status=401)
        if self.list_error is not None:
            raise self.list_error
        if symbol not in self.books:
            raise InvalidRequest("unknown symbol", status=400, code="invalid_request")
        orders = sorted(self.books[symbol].values(), key=lambda o: -o.order_id)
        for i in range(0, len(orders), limit):
            yield orders[i : i + limit]
            await asyncio.sleep(0)

    async def get_order(self, order_id: int, symbol: str) -> Order:
        raise NotImplementedError

    async def _enter(self, ids: Sequence[int]) -> None:
        for i in ids:
            if i in self.inflight:
                self.double_cancels += 1
            self.inflight.add(i)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)

    def _leave(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.inflight.discard(i)
        for symbol, side in self.spawn_on_cancel:
            self.place(symbol, side)
        self.spawn_on_cancel = []

    async def cancel_order(self, order_id: int, symbol: str) -> CancelResult:
        self.log.append(("cancel", symbol, (order_id,)))
        await self._enter([order_id])
        try:
            if self.auth_revoked:
                return CancelResult(order_id, symbol, Outcome.REJECTED, 1, RejectReason.AUTH, 401)
            if order_id in self.reject_ids:
                return CancelResult(
                    order_id, symbol, Outcome.REJECTED, 1, RejectReason.NOT_FOUND, 404
                )
            book = self.books.get(symbol, {})
            if order_id not in book:
                return CancelResult(order_id, symbol, Outcome.ALREADY_CLOSED, 1, status=400)
            if not self.sticky:
                del book[order_id]
            return CancelResult(order_id, symbol, Outcome.SENT, 1, status=200)
        finally:
            self._leave([order_id])

    async def cancel_batch(self, symbol: str, order_ids: Sequence[int]) -> BatchCancelResult:
        self.log.append(("batch", symbol, tuple(order_ids)))
        await self._enter(order_ids)
        try:
            if self.auth_revoked:
                return BatchCancelResult(symbol, outcome=Outcome.REJECTED, reason=RejectReason.AUTH)
            book = self.books[symbol]
            success, fail = [], []
            for i in order_ids:
                if i in book and i not in self.batch_fail_ids:
                    del book[i]
                    success.append(i)
                else:
                    fail.append(i)
            return BatchCancelResult(symbol, success=success, fail=fail)
        finally:
            self._leave(order_ids)

    async def cancel_all(self, symbol: str) -> BatchCancelResult:
        self.log.append(("all", symbol, ()))
        await self._enter([])
        if self.auth_revoked:
            return BatchCancelResult(symbol, outcome=Outcome.REJECTED, reason=RejectReason.AUTH)
        book = self.books[symbol]
        success = [i for i in book if i not in self.batch_fail_ids]
        fail = [i for i in book if i in self.batch_fail_ids]
        for i in success:
            del book[i]
        return BatchCancelResult(symbol, success=success, fail=fail)


def settings(**kw: Any) -> EngineConfig:
    # per_order unless a test says otherwise: most tests here check the per-order path
    # (auto is tested by name and by test_engine_auto.py).
    base: dict[str, Any] = {
        "progress_interval_s": 0.01,
        "strategy": "per_order",
    }
    base.update(kw)
    return EngineConfig(**base)


def request(
    alert_id: str = "a1",
    *,
    symbols: set[str] | None = None,
    sides: set[Side] | None = None,
    ids: set[int] | None = None,
    latch: bool = False,
    dry_run: bool = False,
    deadline_s: float = 10.0,
    account: str = ACCOUNT,
) -> KillRequest:
    return KillRequest(
        alert_id=alert_id,
        account=account,
        scope=Scope(
            symbols=frozenset(symbols) if symbols is not None else None,
            sides=frozenset(sides) if sides is not None else None,
            order_ids=frozenset(ids) if ids is not None else None,
        ),
        received_at=datetime.now(UTC),
        deadline_s=deadline_s,
        latch=latch,
        dry_run=dry_run,
        source="test",
    )


class Progress:
    def __init__(self) -> None:
        self.events: list[SweepResult] = []

    async def __call__(self, result: SweepResult) -> None:
        self.events.append(result)


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.first_cancels: list[float] = []
        self.flats: list[float] = []
        self.halts: list[bool] = []
        self.residuals: list[tuple[int, int]] = []
        self.failed_sweeps = 0

    def cancel_outcome(self, account: str, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def first_cancel(self, seconds: float) -> None:
        self.first_cancels.append(seconds)

    def flat(self, seconds: Sequence[float]) -> None:
        self.flats.extend(seconds)

    def halted(self, account: str, halted: bool) -> None:
        self.halts.append(halted)

    def residual(self, account: str, count: int, unlisted_pairs: int) -> None:
        self.residuals.append((count, unlisted_pairs))

    def sweep_failed(self, account: str) -> None:
        self.failed_sweeps += 1


def assert_accounted(result: SweepResult) -> None:
    """Counts add up and every resolved order has exactly one report."""
    ids = [o.order_id for o in result.orders]
    assert len(ids) == len(set(ids))
    assert result.counts.resolved == len(ids)
    for outcome in Outcome:
        assert getattr(result.counts, outcome.value) == sum(
            1 for o in result.orders if o.outcome is outcome
        )


async def run(engine: Engine, req: KillRequest) -> SweepResult:
    try:
        return await engine.submit(req, Progress())
    finally:
        await engine.close(1.0)
