"""Contract: every answer documented in docs/EXCHANGE.md, in the documented
shape, from the simulator over HTTP. Each test names the example it checks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from killswitch.core.orders import Order, OrderStatus, SymbolInfo
from killswitch.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.simulator.testing import SignedClient, register_test_client

pytestmark = pytest.mark.integration

SYMBOL = "BTC_USDT"
ORDER_FIELDS = {
    "order_id": int,
    "side": str,
    "status": str,
    "symbol": str,
    "type": str,
    "price": str,
    "quantity": str,
    "avg_price": str,
    "executed_quantity": str,
    "created_at": int,
    "updated_at": int,
}
DOCUMENTED_STATUSES = {s.value for s in OrderStatus}


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Simulator, SignedClient]]:
    sim = Simulator(seed=5)
    api_key, pem = register_test_client(sim)
    async with SimulatorServer(sim) as server, SignedClient(server.base_url, api_key, pem) as c:
        yield sim, c


def assert_json(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    return response.json()


def assert_order(data: Any) -> Order:
    """The documented Order object: every field, with its type; decimals as strings."""
    assert isinstance(data, dict)
    assert set(data) == set(ORDER_FIELDS)
    for name, kind in ORDER_FIELDS.items():
        assert type(data[name]) is kind, name
    assert data["side"] in ("BUY", "SELL")
    assert data["type"] in ("LIMIT", "MARKET", "LIMIT_MAKER")
    assert data["status"] in DOCUMENTED_STATUSES
    for name in ("price", "quantity", "avg_price", "executed_quantity"):
        assert Decimal(data[name]).is_finite(), name
    assert 0 < data["order_id"] < 2**63
    order = Order.from_json(data)
    assert order.to_json() == data  # round-trips through the shared order model
    return order


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """Flat ``{"error": code}`` with at most an optional ``message``; not problem+json."""
    body = assert_json(response, status)
    assert body["error"] == code
    assert set(body) <= {"error", "message"}
    assert isinstance(body.get("message", ""), str)


async def test_server_time(pair: tuple[Simulator, SignedClient]) -> None:
    """`{"timezone": "UTC", "timestamp": 1714440597515}`"""
    _, c = pair
    body = assert_json(await c.http.get("/coin/internal/v1/public/time"), 200)
    assert set(body) == {"timezone", "timestamp"}
    assert body["timezone"] == "UTC"
    assert type(body["timestamp"]) is int
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000  # epoch ms, not seconds


async def test_exchange_info_entries(pair: tuple[Simulator, SignedClient]) -> None:
    """array of `{symbol, base_asset, base_precision, quote_asset, quote_tick}`"""
    _, c = pair
    body = assert_json(await c.http.get("/coin/internal/v1/public/exchange-info"), 200)
    assert isinstance(body, list)
    assert len(body) >= 20
    symbols = {entry["symbol"] for entry in body}
    assert {"BTC_USDT", "ETH_USDT", "BTC_IDR"} <= symbols
    for entry in body:
        assert set(entry) == {"symbol", "base_asset", "base_precision", "quote_asset", "quote_tick"}
        assert entry["symbol"] == f"{entry['base_asset']}_{entry['quote_asset']}"
        assert type(entry["base_precision"]) is int
        assert Decimal(entry["quote_tick"]) > 0
        SymbolInfo.from_json(entry)


async def test_open_orders_are_order_objects_newest_first(
    pair: tuple[Simulator, SignedClient],
) -> None:
    """open orders: array of Order, newest first; limit default 100."""
    sim, c = pair
    sim.seed_orders(c.api_key, SYMBOL, 120)
    body = assert_json(await c.open_orders(SYMBOL), 200)
    assert len(body) == 100
    orders = [assert_order(o) for o in body]
    assert all(o.status.is_open for o in orders)
    ids = [o.order_id for o in orders]
    assert ids == sorted(ids, reverse=True)
    # Both spellings of a partial fill are documented and both occur.
    statuses = {o["status"] for o in assert_json(await c.open_orders(SYMBOL, limit=120), 200)}
    assert {"PARTIAL_FILLED", "PARTIALLY_FILLED"} & statuses


async def test_open_orders_errors(pair: tuple[Simulator, SignedClient]) -> None:
    """symbol is required; a bad parameter is `invalid_request`."""
    _, c = pair
    assert_error(await c.request("GET", "order/open"), 400, "invalid_request")
    assert_error(await c.open_orders("NOPE_USDT"), 400, "invalid_request")
    assert_error(
        await c.request("GET", "order/open", query="symbol=BTC_USDT&limit=x"),
        400,
        "invalid_request",
    )


async def test_get_order(pair: tuple[Simulator, SignedClient]) -> None:
    """one order: Order (any status)."""
    sim, c = pair
    (order_id,) = sim.seed_orders(c.api_key, SYMBOL, 1)
    query = f"order_id={order_id}&symbol={SYMBOL}"
    assert_order(assert_json(await c.request("GET", "order", query=query), 200))
    sim.close_order(order_id)
    filled = assert_order(assert_json(await c.request("GET", "order", query=query), 200))
    assert filled.status == OrderStatus.FILLED
    assert filled.executed_quantity == filled.quantity


async def test_cancel_answers(pair: tuple[Simulator, SignedClient]) -> None:
    """200 CANCEL_SENT; 400 order_already_closed; 400 invalid_request; 404."""
    sim, c = pair
    (order_id,) = sim.seed_orders(c.api_key, SYMBOL, 1)
    assert assert_json(await c.cancel(order_id, SYMBOL), 200) == {"status": "CANCEL_SENT"}
    assert_error(await c.cancel(order_id, SYMBOL), 400, "order_already_closed")
    assert_error(await c.cancel(order_id, "NOPE_USDT"), 400, "invalid_request")
    assert_error(await c.cancel("-5", SYMBOL), 400, "invalid_request")
    assert (await c.cancel(order_id + 1000, SYMBOL)).status_code == 404


async def test_batch_and_cancel_all_answers(pair: tuple[Simulator, SignedClient]) -> None:
    """`200 {"success": [ids], "fail": [ids]}` for both."""
    sim, c = pair
    ids = sim.seed_orders(c.api_key, "BTC_IDR", 4)
    batch = assert_json(
        await c.request(
            "DELETE", "order/batch", json_body={"order_ids": [ids[0], ids[0]], "symbol": "BTC_IDR"}
        ),
        200,
    )
    assert batch == {"success": [ids[0]], "fail": [ids[0]]}
    every = assert_json(await c.request("DELETE", "order/open", query="symbol=BTC_IDR"), 200)
    assert set(every) == {"success", "fail"}
    assert sorted(every["success"]) == ids[1:]
    assert every["fail"] == []
    assert all(type(i) is int for i in every["success"])


async def test_auth_and_throttle_errors(pair: tuple[Simulator, SignedClient]) -> None:
    """401 invalid_client; 429 over the limit."""
    sim, c = pair
    stale = SignedClient(str(c.http.base_url), c.api_key, c._key, clock_offset_ms=-3_600_000)
    async with stale:
        assert_error(await stale.open_orders(SYMBOL), 401, "invalid_client")
    sim.set_faults(EndpointFaults(throttle_rate=1.0))
    assert (await c.open_orders(SYMBOL)).status_code == 429
    sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(500, 502, 503, 504)))
    answer = await c.open_orders(SYMBOL)
    assert answer.status_code in (500, 502, 503, 504)
    assert_error(answer, answer.status_code, "api_error")


async def test_created_order_is_an_order_object(pair: tuple[Simulator, SignedClient]) -> None:
    """order creation answers the Order it made."""
    _, c = pair
    body = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT_MAKER", "price": "1.5", "quantity": "2"}
    order = assert_order(assert_json(await c.request("POST", "order", json_body=body), 200))
    assert order.status.is_open
