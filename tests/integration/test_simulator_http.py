"""The simulator over real loopback HTTP: paging, cancels, auth, faults, races,
the HTTP layer's robustness, the admin calls and the standalone command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from killswitch.exchange.signing import (
    SignatureEncoding,
    compact_json,
    generate_private_key,
    private_key_pem,
    public_key_pem,
)
from killswitch.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.simulator.testing import (
    SignedClient,
    register_test_client,
    signed_headers,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SYMBOL = "BTC_USDT"
ORDER = "/coin/internal/v1/order"


@dataclass
class Served:
    sim: Simulator
    server: SimulatorServer
    client: SignedClient
    api_key: str = field(repr=False)
    pem: bytes = field(repr=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    sim = Simulator(seed=3)
    api_key, pem = register_test_client(sim, name="alice")
    async with SimulatorServer(sim) as server, SignedClient(server.base_url, api_key, pem) as c:
        yield Served(sim, server, c, api_key, pem)


async def raw_exchange(port: int, data: bytes, answers: int) -> list[tuple[int, bytes]]:
    """Write ``data`` on a fresh connection; read up to ``answers`` responses (fewer on close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out: list[tuple[int, bytes]] = []
    try:
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            out.append((int(head[9:12]), await reader.readexactly(length)))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
    return out


async def list_all(client: SignedClient, symbol: str, limit: int) -> list[int]:
    """Page through open orders as documented: inclusive from_order_id, skip the repeat."""
    seen: list[int] = []
    from_id: int | None = None
    for _ in range(1000):
        params = {"limit": limit} if from_id is None else {"limit": limit, "from_order_id": from_id}
        response = await client.open_orders(symbol, **params)
        assert response.status_code == 200
        page = [o["order_id"] for o in response.json()]
        assert page == sorted(page, reverse=True)  # newest first
        if from_id is not None and page:
            assert page[0] == from_id  # inclusive: the last one comes back
            page = page[1:]
        seen += page
        if len(response.json()) < limit:
            return seen
        from_id = min(seen)
    raise AssertionError("paging did not end")


# ------------------------------------------------------------------- endpoints


async def test_paging_walks_every_open_order_exactly_once(served: Served) -> None:
    ids = served.sim.seed_orders(served.api_key, SYMBOL, 250)
    served.sim.seed_orders(served.api_key, "ETH_USDT", 7)  # another pair stays out
    listed = await list_all(served.client, SYMBOL, 100)
    assert listed == sorted(ids, reverse=True)
    default_page = await served.client.open_orders(SYMBOL)
    assert len(default_page.json()) == 100  # default limit


async def test_cancel_flow_and_errors(served: Served) -> None:
    (mine,) = served.sim.seed_orders(served.api_key, SYMBOL, 1)
    other_key, _ = register_test_client(served.sim)
    (theirs,) = served.sim.seed_orders(other_key, SYMBOL, 1)
    c = served.client
    assert (await c.cancel(mine, SYMBOL)).json() == {"status": "CANCEL_SENT"}
    closed = await c.cancel(mine, SYMBOL)
    assert (closed.status_code, closed.json()) == (400, {"error": "order_already_closed"})
    assert (await c.cancel(theirs, SYMBOL)).status_code == 404
    assert (await c.cancel("12x", SYMBOL)).json()["error"] == "invalid_request"
    assert (await c.cancel(mine, "NOT_LISTED")).json()["error"] == "invalid_request"
    assert served.sim.open_order_ids(other_key) == {theirs}
    assert (await c.request("GET", "order", query=f"order_id={mine}&symbol={SYMBOL}")).json()[
        "status"
    ] in ("CANCELLED", "PARTIAL_CANCELLED")


async def test_cancel_all_and_batch(served: Served) -> None:
    ids = served.sim.seed_orders(served.api_key, SYMBOL, 30)
    batch = await served.client.request(
        "DELETE", "order/batch", json_body={"order_ids": ids[:10], "symbol": SYMBOL}
    )
    assert batch.json() == {"success": ids[:10], "fail": []}
    everything = await served.client.request("DELETE", "order/open", query=f"symbol={SYMBOL}")
    assert sorted(everything.json()["success"]) == ids[10:]
    assert served.sim.open_order_ids(served.api_key) == set()


async def test_orders_can_be_created_through_the_api(served: Served) -> None:
    created = await served.client.request(
        "POST",
        "order",
        json_body={
            "symbol": SYMBOL,
            "side": "SELL",
            "type": "LIMIT",
            "price": "70000.5",
            "quantity": "0.01",
        },
    )
    assert created.status_code == 200
    order = created.json()
    assert (order["status"], order["price"], order["quantity"]) == ("NEW", "70000.5", "0.01")
    assert served.sim.open_order_ids(served.api_key, SYMBOL) == {order["order_id"]}
    market = await served.client.request(
        "POST",
        "order",
        json_body={"symbol": SYMBOL, "side": "BUY", "type": "MARKET", "quantity": "1"},
    )
    assert market.json()["status"] == "FILLED"
    bad = await served.client.request("POST", "order", json_body={"symbol": SYMBOL, "side": "UP"})
    assert bad.json()["error"] == "invalid_request"


# ------------------------------------------------------------------------- auth


async def test_signature_covers_the_query_and_body_exactly_as_sent(served: Served) -> None:
    (order_id,) = served.sim.seed_orders(served.api_key, SYMBOL, 1)
    port = served.server.port
    # Reordered and percent-encoded: valid because it is signed exactly as sent.
    query = f"symbol=BTC%5FUSDT&order_id={order_id}"
    headers = signed_headers(served.api_key, served.pem, "DELETE", ORDER, query=query)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"DELETE {ORDER}?{query} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()
    assert await raw_exchange(port, request, 1) == [(200, b'{"status":"CANCEL_SENT"}')]
    # Signed for one query, sent with another.
    other = f"order_id={order_id + 1}&symbol={SYMBOL}"
    swapped = request.replace(query.encode(), other.encode())
    ((status, body),) = await raw_exchange(port, swapped, 1)
    assert (status, json.loads(body)["error"]) == (401, "invalid_client")
    # A body with a space is not the compact body that was signed.
    body_sent = b'{"order_ids": [1],"symbol":"BTC_USDT"}'
    headers = signed_headers(
        served.api_key,
        served.pem,
        "DELETE",
        ORDER + "/batch",
        body=compact_json(json.loads(body_sent)),
    )
    async with httpx.AsyncClient(base_url=served.server.base_url) as http:
        response = await http.request(
            "DELETE", ORDER + "/batch", content=body_sent, headers=headers
        )
    assert response.status_code == 401


@pytest.mark.parametrize("encoding", ["hex-der", "base64-raw"])
async def test_per_client_signature_encoding(served: Served, encoding: SignatureEncoding) -> None:
    api_key, pem = register_test_client(served.sim, signature_encoding=encoding)
    async with SignedClient(served.server.base_url, api_key, pem, signature_encoding=encoding) as c:
        assert (await c.open_orders(SYMBOL)).status_code == 200
    async with SignedClient(served.server.base_url, api_key, pem) as wrong:
        assert (await wrong.open_orders(SYMBOL)).status_code == 401


async def test_clock_skew_and_revocation(served: Served) -> None:
    served.sim.clock_offset_ms = 30_000
    assert (await served.client.open_orders(SYMBOL)).status_code == 401
    served_time = await served.client.http.get("/coin/internal/v1/public/time")
    offset = served_time.json()["timestamp"] - int(time.time() * 1000)
    served.client.clock_offset_ms = offset
    assert (await served.client.open_orders(SYMBOL)).status_code == 200
    served.sim.revoke(served.api_key)
    revoked = await served.client.open_orders(SYMBOL)
    assert (revoked.status_code, revoked.json()["error"]) == (401, "invalid_client")


async def test_rate_limit_over_http_is_exact_with_a_controlled_clock() -> None:
    clock = FakeClock()
    sim = Simulator(monotonic=clock)
    api_key, pem = register_test_client(sim, rate_limit_per_second=2.0, burst=3)
    async with SimulatorServer(sim) as server, SignedClient(server.base_url, api_key, pem) as c:
        statuses = [(await c.open_orders(SYMBOL)).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        throttled = await c.open_orders(SYMBOL)
        assert throttled.json() == {"error": "too_many_requests"}
        clock.now += 0.5
        assert (await c.open_orders(SYMBOL)).status_code == 200
    assert sim.count(api_key, status=429) == 3


# ----------------------------------------------------------------------- faults


async def test_error_and_latency_faults(served: Served) -> None:
    served.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(503,)), "open_orders")
    failed = await served.client.open_orders(SYMBOL)
    assert (failed.status_code, failed.json()) == (503, {"error": "api_error"})
    assert (await served.client.cancel(1, SYMBOL)).status_code == 404  # other endpoints untouched
    # The delay happened: a client that gives up long before it sees no answer in time.
    # (No timed assertion: a slow machine can only make the timeout more certain.)
    served.sim.set_faults(EndpointFaults(latency_ms=3000), "open_orders")
    async with SignedClient(
        served.server.base_url, served.api_key, served.pem, timeout_s=0.2
    ) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.open_orders(SYMBOL)
    served.sim.set_faults(EndpointFaults(), "open_orders")
    assert (await served.client.open_orders(SYMBOL)).status_code == 200


async def test_drop_and_timeout_faults(served: Served) -> None:
    served.sim.set_faults(EndpointFaults(drop_rate=1.0), "cancel")
    with pytest.raises(httpx.RemoteProtocolError):
        await served.client.cancel(1, SYMBOL)
    served.sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=30), "cancel")
    async with SignedClient(
        served.server.base_url, served.api_key, served.pem, timeout_s=0.2
    ) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.cancel(1, SYMBOL)
    counts = served.sim.counters["alice"]["cancel"]
    assert counts == {"drop": 1, "timeout": 1}


async def test_storm_throttles_every_request(served: Served) -> None:
    served.sim.set_faults(EndpointFaults(storm_period_s=60, storm_duration_s=60))
    statuses = {(await served.client.open_orders(SYMBOL)).status_code for _ in range(5)}
    assert statuses == {429}
    assert served.sim.throttled == 5


async def test_races_make_one_pass_not_enough(served: Served) -> None:
    served.sim.seed_orders(served.api_key, SYMBOL, 40)
    served.sim.set_races(close_before_cancel=0.2, spawn_on_cancel=0.5, max_spawned=30)
    outcomes: dict[str, int] = {}
    sweeps = 0
    for _ in range(50):
        listed = await list_all(served.client, SYMBOL, 100)
        if not listed:
            break
        sweeps += 1
        for order_id in listed:
            answer = await served.client.cancel(order_id, SYMBOL)
            key = answer.json().get("status") or answer.json()["error"]
            outcomes[key] = outcomes.get(key, 0) + 1
    assert sweeps > 1  # new orders appeared: one pass was not enough
    assert outcomes["order_already_closed"] > 0
    assert 0 < served.sim.spawned <= 30
    assert served.sim.open_order_ids(served.api_key) == set()


async def test_batch_fail_ids_under_races(served: Served) -> None:
    ids = served.sim.seed_orders(served.api_key, SYMBOL, 50)
    served.sim.set_races(close_before_cancel=0.3)
    answer = (
        await served.client.request(
            "DELETE", "order/batch", json_body={"order_ids": ids, "symbol": SYMBOL}
        )
    ).json()
    assert answer["fail"]
    assert sorted(answer["success"] + answer["fail"]) == ids


# --------------------------------------------------------------- HTTP robustness


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    served.sim.set_faults(EndpointFaults(latency_ms=30), "time")
    data = (
        b"GET /coin/internal/v1/public/time HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /coin/internal/v1/public/exchange-info HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answers = await raw_exchange(served.server.port, data, 3)
    assert [status for status, _ in answers] == [200, 200, 404]
    assert b"timezone" in answers[0][1]
    assert answers[1][1].startswith(b"[")


async def test_requests_split_across_packets_and_bodies_in_a_pipeline(served: Served) -> None:
    (order_id,) = served.sim.seed_orders(served.api_key, SYMBOL, 1)
    body = json.dumps({"api_key": served.api_key}).encode()
    data = (
        b"POST /_admin/orders/open HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
        b"GET /coin/internal/v1/public/time HTTP/1.1\r\n\r\n" % (len(body), body)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    for i in range(len(data)):  # one byte at a time
        writer.write(data[i : i + 1])
        await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    assert b'"order_ids":[%d]' % order_id in first
    second = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    assert b"timezone" in second
    writer.close()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"GET nope HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000, 431),
    ],
)
async def test_garbage_gets_an_error_and_the_server_lives_on(
    served: Served, data: bytes, status: int
) -> None:
    ((got, body),) = await raw_exchange(served.server.port, data, 1)
    assert got == status
    assert json.loads(body)["error"] == "invalid_request"
    assert (await served.client.open_orders(SYMBOL)).status_code == 200


async def test_a_bad_request_is_answered_after_the_delayed_ones_before_it(
    served: Served,
) -> None:
    served.sim.set_faults(EndpointFaults(latency_ms=30), "time")
    data = (
        b"GET /coin/internal/v1/public/time HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /coin/internal/v1/public/exchange-info HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n"
        b"GET /coin/internal/v1/public/time HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answers = await raw_exchange(served.server.port, data, 4)
    # In order; the connection closes after the 400, so the last request goes unanswered.
    assert [status for status, _ in answers] == [200, 200, 400]


async def test_a_head_trickled_past_the_limit_gets_431(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    writer.write(b"GET /coin/internal/v1/public/time HTTP/1.1\r\nX: ")
    for _ in range(40):  # 40 KiB of one header value, 1 KiB per write
        if writer.is_closing() or reader.at_eof():
            break
        writer.write(b"a" * 1024)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 431 ")
    writer.close()


async def test_random_bytes_never_take_the_server_down(served: Served) -> None:
    rng = random.Random(11)
    for _ in range(40):
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        await raw_exchange(served.server.port, noise + b"\r\n\r\n", 1)
    assert (await served.client.open_orders(SYMBOL)).status_code == 200


async def test_keep_alive_serves_many_requests_on_one_connection(served: Served) -> None:
    request = b"GET /coin/internal/v1/public/time HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = await raw_exchange(served.server.port, request * 200, 200)
    assert len(answers) == 200
    close = b"GET /coin/internal/v1/public/time HTTP/1.1\r\nConnection: close\r\n\r\n"
    assert len(await raw_exchange(served.server.port, close + request, 2)) == 1


# ------------------------------------------------------------------------ knobs


async def test_throttle_window_sends_retry_after_in_seconds_then_recovers() -> None:
    clock = FakeClock()
    sim = Simulator(monotonic=clock)
    api_key, pem = register_test_client(sim)
    sim.set_throttle_window(after_requests=2, duration_s=2.5)
    async with SimulatorServer(sim) as server, SignedClient(server.base_url, api_key, pem) as c:
        assert [(await c.open_orders(SYMBOL)).status_code for _ in range(2)] == [200, 200]
        throttled = await c.open_orders(SYMBOL)
        assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "3")
        assert throttled.json() == {"error": "too_many_requests"}
        clock.now += 2.5
        recovered = await c.open_orders(SYMBOL)
        assert recovered.status_code == 200
        assert "retry-after" not in recovered.headers


async def test_throttle_window_sends_retry_after_as_an_http_date(served: Served) -> None:
    served.sim.set_throttle_window(0, 30.0, retry_after="date")
    before = time.time()
    throttled = await served.client.open_orders(SYMBOL)
    after = time.time()
    assert throttled.status_code == 429
    end = parsedate_to_datetime(throttled.headers["retry-after"]).timestamp()
    # The window's end on the server clock, rounded up to a whole second.
    assert math.ceil(before) + 29 <= end <= math.ceil(after + 30)


async def test_rate_limit_429_carries_retry_after_when_asked() -> None:
    clock = FakeClock()
    sim = Simulator(monotonic=clock, retry_after_on_429=True)
    api_key, pem = register_test_client(sim, rate_limit_per_second=0.5, burst=1)
    async with SimulatorServer(sim) as server, SignedClient(server.base_url, api_key, pem) as c:
        assert (await c.open_orders(SYMBOL)).status_code == 200
        throttled = await c.open_orders(SYMBOL)
        assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "2")


async def test_redirect_answers_location_and_cancels_nothing(served: Served) -> None:
    (order_id,) = served.sim.seed_orders(served.api_key, SYMBOL, 1)
    served.sim.set_redirect("https://api.elsewhere.example/coin/internal/v1/order", status=308)
    moved = await served.client.cancel(order_id, SYMBOL)
    assert moved.status_code == 308
    assert moved.headers["location"] == "https://api.elsewhere.example/coin/internal/v1/order"
    assert moved.content == b""
    assert served.sim.open_order_ids(served.api_key) == {order_id}
    served.sim.clear_redirects()
    assert (await served.client.cancel(order_id, SYMBOL)).json() == {"status": "CANCEL_SENT"}


async def test_public_auth_refuses_unsigned_and_serves_signed(served: Served) -> None:
    served.sim.public_auth = True
    unsigned = await served.client.http.get("/coin/internal/v1/public/exchange-info")
    assert (unsigned.status_code, unsigned.json()["error"]) == (401, "invalid_client")
    signed = await served.client.request("GET", "public/exchange-info")
    assert signed.status_code == 200
    assert SYMBOL in [entry["symbol"] for entry in signed.json()]
    assert (await served.client.request("GET", "public/time")).status_code == 200


async def test_replay_protection_refuses_the_same_signed_bytes(served: Served) -> None:
    served.sim.replay_protection = True
    query = f"symbol={SYMBOL}"
    headers = signed_headers(
        served.api_key, served.pem, "GET", "/coin/internal/v1/order/open", query=query
    )
    url = f"/coin/internal/v1/order/open?{query}"
    first = await served.client.http.get(url, headers=headers)
    again = await served.client.http.get(url, headers=headers)
    assert first.status_code == 200
    assert (again.status_code, again.json()) == (
        401,
        {"error": "invalid_client", "message": "replayed"},
    )
    assert (await served.client.open_orders(SYMBOL)).status_code == 200  # freshly signed


async def test_unknown_symbol_empty_lists_nothing(served: Served) -> None:
    assert (await served.client.open_orders("NOPE_USDT")).status_code == 400
    served.sim.unknown_symbol = "empty"
    listed = await served.client.open_orders("NOPE_USDT")
    assert (listed.status_code, listed.json()) == (200, [])
    bulk = await served.client.request("DELETE", "order/open", query="symbol=btc_usdt")
    assert bulk.json() == {"success": [], "fail": []}


async def test_admin_sets_every_knob_and_state_shows_them(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.server.base_url + "/_admin") as admin:
        knobs = {
            "public_auth": True,
            "unknown_symbol": "empty",
            "rate_limit_kind": "sliding_window",
            "sliding_window_s": 2.0,
            "retry_after_on_429": True,
            "replay_protection": True,
            "throttle_window": {"after_requests": 5, "duration_s": 3, "retry_after": "date"},
            "redirect": {"status": 301, "location": "/moved", "endpoint": "get_order"},
        }
        answer = await admin.put("/exchange", json=knobs)
        assert answer.status_code == 200
        state = (await admin.get("/state")).json()["exchange"]
        assert state == answer.json()
        assert state["throttle_window"] == {
            "after_requests": 5,
            "duration_s": 3.0,
            "retry_after": "date",
            "requests_seen": 0,
            "open": False,
            "seconds_left": None,
        }
        assert state["redirects"] == {"get_order": {"status": 301, "location": "/moved"}}
        assert {k: state[k] for k in list(knobs)[:6]} == {k: knobs[k] for k in list(knobs)[:6]}
        for bad in (
            {"public_auth": "yes"},
            {"unknown_symbol": "maybe"},
            {"throttle_window": {"duration_s": -1}},
            {"redirect": {"status": 200, "location": "/x"}},
            {"redirect": {"location": "/x", "endpoint": "nowhere"}},
            {"replay_protection": False, "redirect": {"location": "/x", "nope": 1}},
            {"surprise": True},
        ):
            refused = await admin.put("/exchange", json=bad)
            assert refused.status_code == 400, bad
        assert (await admin.get("/state")).json()["exchange"] == state  # nothing applied
        everywhere = await admin.put(
            "/exchange", json={"redirect": {"location": "/all", "endpoint": "all"}}
        )
        assert everywhere.json()["redirects"]["all"] == {"status": 307, "location": "/all"}
        cleared = await admin.put(
            "/exchange", json={"throttle_window": None, "redirect": None, "public_auth": False}
        )
        assert (cleared.json()["throttle_window"], cleared.json()["redirects"]) == (None, {})
        assert (await served.client.http.get("/coin/internal/v1/public/time")).status_code == 200


async def test_admin_throttle_window_takes_retry_after_none_as_documented(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.server.base_url + "/_admin") as admin:
        spec = {"after_requests": 0, "duration_s": 30, "retry_after": "none"}
        answer = await admin.put("/exchange", json={"throttle_window": spec})
        assert answer.status_code == 200, answer.text
        assert answer.json()["throttle_window"]["retry_after"] is None
        assert served.sim.throttle_window is not None
        assert served.sim.throttle_window["retry_after"] is None


# ------------------------------------------------------------------------ admin


async def test_admin_calls_drive_the_simulator(served: Served) -> None:
    key = generate_private_key()
    async with httpx.AsyncClient(base_url=served.server.base_url + "/_admin") as admin:

        async def call(method: str, path: str, body: object = None) -> httpx.Response:
            return await admin.request(
                method, path, content=None if body is None else json.dumps(body)
            )

        added = await call(
            "POST",
            "/clients",
            {"api_key": "bob-secret", "public_key": public_key_pem(key).decode(), "name": "bob"},
        )
        assert added.json() == {"client": "bob"}
        seeded = await call(
            "POST", "/orders", {"api_key": "bob-secret", "symbol": SYMBOL, "count": 5}
        )
        assert seeded.json()["count"] == 5
        listed = await call("POST", "/orders/open", {"api_key": "bob-secret"})
        assert listed.json()["order_ids"] == seeded.json()["order_ids"]
        faults = await call(
            "PUT", "/faults", {"all": {"latency_ms": 1}, "cancel": {"error_rate": 0.5}}
        )
        assert faults.json()["endpoints"]["cancel"]["error_rate"] == 0.5
        assert (await call("PUT", "/races", {"close_before_cancel": 0.1})).status_code == 200
        limits = await call(
            "PUT", "/limits", {"api_key": "bob-secret", "rate_limit_per_second": 50}
        )
        assert limits.json()["clients"]["bob"] == {"rate_limit_per_second": 50.0, "burst": 50}
        assert (await call("PUT", "/clock", {"clock_offset_ms": 5})).json()["clock_offset_ms"] == 5
        assert (await call("DELETE", "/faults")).json()["endpoints"] == {}
        async with SignedClient(served.server.base_url, "bob-secret", key) as bob:
            bob.clock_offset_ms = 5
            assert (await bob.open_orders(SYMBOL)).status_code == 200
            await call("POST", "/revoke", {"api_key": "bob-secret"})
            assert (await bob.open_orders(SYMBOL)).status_code == 401
        counters = (await call("GET", "/counters")).json()
        assert counters["counters"]["bob"]["open_orders"] == {"200": 1, "401": 1}
        log = (await admin.get("/log", params={"since": 0})).text
        assert "bob-secret" not in log
        assert "X-SIGNATURE" not in log.upper()
        assert json.loads(log)["entries"][-1]["status"] == 401
        state = (await call("GET", "/state")).json()
        assert state["clients"] == ["alice", "bob"]
        assert (await call("POST", "/reset", {})).json() == {"reset": True}
        assert served.sim.request_log == []
        bad = await call("PUT", "/faults", {"cancel": {"error_rate": 7}})
        assert bad.status_code == 400
        assert (
            await call("POST", "/orders", {"api_key": "nobody", "symbol": SYMBOL})
        ).status_code == 404
        assert (await call("GET", "/nothing")).status_code == 404
        assert (await admin.post("/faults", content=b"[1")).status_code == 400
        assert (await admin.post("/faults", content=b"[" * 100_000)).status_code == 400


async def test_admin_can_be_turned_off() -> None:
    sim = Simulator()
    async with SimulatorServer(sim, admin=False) as server, httpx.AsyncClient() as http:
        response = await http.get(server.base_url + "/_admin/health")
        assert response.status_code == 404


# ---------------------------------------------------------- standalone command


def _start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "killswitch", "simulate-exchange", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("simulator listening on http://127.0.0.1:"), line
    return proc, line.split()[-1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_command_serves_clients_from_files_and_stops_cleanly(
    tmp_path: Path, signum: int
) -> None:
    key = generate_private_key()
    pub = tmp_path / "k.pub.pem"
    pub.write_bytes(public_key_pem(key))
    proc, base_url = _start(
        [
            "--client",
            f"cli-key={pub}",
            "--seed-orders",
            "5",
            "--symbols",
            "BTC_USDT,ETH_IDR",
            "--faults",
            '{"cancel": {"latency_ms": 1}}',
            "--rate-limit",
            "1000",
        ],
        tmp_path,
    )
    try:
        async with SignedClient(base_url, "cli-key", key) as c:
            assert len((await c.open_orders(SYMBOL)).json()) == 5
            info = await c.http.get("/coin/internal/v1/public/exchange-info")
            assert [e["symbol"] for e in info.json()] == ["BTC_USDT", "ETH_IDR"]
        proc.send_signal(signum)
        await wait_for(lambda: proc.poll() is not None, timeout=10)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


async def test_command_registers_configured_accounts(tmp_path: Path) -> None:
    key = generate_private_key()
    key_file = tmp_path / "mm.pem"
    key_file.write_bytes(private_key_pem(key))
    os.chmod(key_file, 0o600)
    config = tmp_path / "ks.toml"
    config.write_text(
        f'[[accounts]]\nid = "mm-1"\napi_key = "cfg-api-key"\nprivate_key_file = "{key_file}"\n'
        'signature_encoding = "hex-der"\n'
    )
    proc, base_url = _start(["--config", str(config)], tmp_path)
    try:
        async with SignedClient(base_url, "cfg-api-key", key, signature_encoding="hex-der") as c:
            assert (await c.open_orders(SYMBOL)).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "cfg-api-key" not in err


def test_command_refuses_bad_flags_with_a_short_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "killswitch",
            "simulate-exchange",
            "--faults",
            '{"cancel": {"error_rate": 9}}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "error_rate" in result.stderr
    assert "Traceback" not in result.stderr


async def test_command_sets_the_knobs_from_flags(tmp_path: Path) -> None:
    proc, base_url = _start(
        [
            "--public-auth",
            "--unknown-symbol",
            "empty",
            "--rate-limit-kind",
            "sliding_window",
            "--sliding-window-s",
            "2",
            "--retry-after-on-429",
            "--replay-protection",
            "--throttle-window",
            "50:3:date",
            "--redirect",
            "308:https://api.elsewhere.example/v1",
        ],
        tmp_path,
    )
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            state = (await http.get("/_admin/state")).json()["exchange"]
            unsigned = await http.get("/coin/internal/v1/public/time")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    window = state.pop("throttle_window")
    assert (window["after_requests"], window["duration_s"], window["retry_after"]) == (
        50,
        3.0,
        "date",
    )
    assert state == {
        "public_auth": True,
        "unknown_symbol": "empty",
        "rate_limit_kind": "sliding_window",
        "sliding_window_s": 2.0,
        "retry_after_on_429": True,
        "replay_protection": True,
        "redirects": {"all": {"status": 308, "location": "https://api.elsewhere.example/v1"}},
    }
    assert unsigned.status_code == 401


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--throttle-window", "3"], "--throttle-window"),
        (["--throttle-window", "3:x"], "--throttle-window"),
        (["--throttle-window", "3:1:minutes"], "--throttle-window"),
        (["--throttle-window", "3:0"], "duration_s"),
        (["--redirect", "https://x"], "--redirect"),
        (["--redirect", "200:/x"], "3xx"),
        (["--sliding-window-s", "0"], "sliding_window_s"),
    ],
)
def test_command_refuses_bad_knob_flags(flags: list[str], named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "killswitch", "simulate-exchange", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr
