"""Simulator pure logic: token bucket, book paging, fault draws, parsing, and
``Simulator.handle`` with fake clocks (auth, limits, races, determinism)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

import pytest

from killswitch.exchange.signing import (
    CurveName,
    SignatureEncoding,
    Signer,
    compact_json,
    generate_private_key,
    signing_payload,
    verify,
)
from killswitch.simulator import EndpointFaults, Simulator
from killswitch.simulator.core import Reply, Request, parse_id, parse_query
from killswitch.simulator.faults import Races, SlidingWindow, TokenBucket, decide
from killswitch.simulator.model import Book, SimOrder

ORDER = "/coin/internal/v1/order"
OPEN = "/coin/internal/v1/order/open"
BATCH = "/coin/internal/v1/order/batch"
WALL_S = 1_800_000_000.0  # fixed wall clock for every simulator here


@dataclass
class FakeClock:
    """A monotonic clock the test moves by hand."""

    now: float = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ token bucket


def test_bucket_allows_burst_then_refuses_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True  # one token after 100 ms at 10/s
    assert bucket.take(0.1) is False


def test_bucket_never_stores_more_than_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=2, now=0.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]


def test_bucket_paced_just_under_rate_is_never_refused() -> None:
    bucket = TokenBucket(rate=500.0, burst=1, now=0.0)
    assert all(bucket.take(i / 499.0) for i in range(2000))


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)])
def test_bucket_rejects_bad_settings(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


# ------------------------------------------------------------------------ books


def _order(order_id: int) -> SimOrder:
    return SimOrder(
        order_id=order_id,
        owner="k",
        symbol="BTC_USDT",
        side="BUY",
        order_type="LIMIT",
        price="1",
        quantity="1",
        status="OPEN",
        now_ms=0,
    )


@pytest.mark.parametrize(
    ("from_id", "limit", "expected"),
    [
        (None, 3, [10, 9, 8]),
        (None, 100, [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]),
        (8, 3, [8, 7, 6]),  # from_order_id is inclusive
        (0, 5, []),
        (1, 5, [1]),
        (99, 2, [10, 9]),
    ],
)
def test_book_pages_newest_first_with_inclusive_start(
    from_id: int | None, limit: int, expected: list[int]
) -> None:
    book = Book()
    for i in range(1, 11):
        book.add(_order(i))
    assert [o.order_id for o in book.page(from_id, limit)] == expected


def test_book_paging_matches_a_naive_model_through_closes_and_compaction() -> None:
    rng = random.Random(7)
    book = Book()
    live: set[int] = set()
    next_id = 1
    for _ in range(3000):
        if live and rng.random() < 0.55:
            victim = rng.choice(sorted(live))
            live.discard(victim)
            book.remove(victim)
        else:
            book.add(_order(next_id))
            live.add(next_id)
            next_id += 1
        from_id = rng.choice([None, rng.randint(0, next_id)])
        limit = rng.randint(1, 50)
        naive = sorted((i for i in live if from_id is None or i <= from_id), reverse=True)
        assert [o.order_id for o in book.page(from_id, limit)] == naive[:limit]
    assert len(book.ids) < 2 * len(live) + 64  # compaction kept the list bounded


def test_book_refuses_ids_out_of_order() -> None:
    book = Book()
    book.add(_order(5))
    with pytest.raises(ValueError):
        book.add(_order(5))


# ----------------------------------------------------------------------- faults


def test_fault_draws_follow_their_rates() -> None:
    faults = EndpointFaults(error_rate=0.2, drop_rate=0.1, timeout_rate=0.1, throttle_rate=0.1)
    rng = random.Random(1)
    kinds: dict[str, int] = {}
    for _ in range(20_000):
        decision = decide(faults, rng, 0.0)
        kind = decision.kind if decision else "none"
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds["error"] == pytest.approx(4000, rel=0.1)
    assert kinds["drop"] == pytest.approx(2000, rel=0.1)
    assert kinds["timeout"] == pytest.approx(2000, rel=0.1)
    assert kinds["throttle"] == pytest.approx(2000, rel=0.1)
    assert kinds["none"] == pytest.approx(10000, rel=0.1)


def test_storm_window_throttles_everything_then_nothing() -> None:
    faults = EndpointFaults(storm_period_s=10.0, storm_duration_s=2.0)
    rng = random.Random(0)
    in_storm = decide(faults, rng, 11.5)
    assert in_storm is not None
    assert in_storm.status == 429
    assert decide(faults, rng, 13.0) is None


def test_latency_only_fault_is_a_delay() -> None:
    decision = decide(EndpointFaults(latency_ms=20, jitter_ms=10), random.Random(0), 0.0)
    assert decision is not None
    assert decision.kind == "latency"
    assert 0.02 <= decision.delay_s <= 0.03


@pytest.mark.parametrize(
    "settings",
    [
        {"error_rate": 1.5},
        {"error_rate": 0.6, "drop_rate": 0.6},
        {"latency_ms": -1},
        {"storm_period_s": 1, "storm_duration_s": 2},
        {"error_statuses": [200], "error_rate": 0.1},
        {"no_such_setting": 1},
    ],
)
def test_bad_fault_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EndpointFaults.from_dict(settings)


def test_bad_race_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Races.from_dict({"spawn_on_cancel": 2})
    with pytest.raises(ValueError):
        Races.from_dict({"sometimes": 0.1})


# ------------------------------------------------------------------ signatures


@pytest.mark.parametrize("curve", ["P-256", "P-384", "secp256k1"])
@pytest.mark.parametrize("encoding", ["base64-der", "hex-der", "base64-raw"])
def test_the_signature_check_accepts_only_the_bytes_signed_by_that_key(
    curve: CurveName, encoding: SignatureEncoding
) -> None:
    key = generate_private_key(curve)
    public = key.public_key()
    payload = b"1714440597515DELETE/coin/internal/v1/orderorder_id=5000000001&symbol=BTC_USDT"
    good = Signer(key, encoding).sign(payload)
    other = Signer(generate_private_key(curve), encoding).sign(payload)
    cases = [
        (payload, good),
        (payload + b"x", good),  # one byte more than was signed
        (payload[:-1], good),
        (payload, other),  # another key's signature
        (payload, good[:-4]),  # cut short
        (payload, "not a signature"),
        (payload, ""),
    ]
    verdicts = [verify(public, p, sig, encoding) for p, sig in cases]
    assert verdicts == [True, False, False, False, False, False, False]


# ---------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {}),
        ("order_id=1&symbol=BTC_USDT", {"order_id": "1", "symbol": "BTC_USDT"}),
        ("symbol=BTC%5FUSDT", {"symbol": "BTC_USDT"}),
        ("flag", {"flag": ""}),
        ("a=1&a=2", None),
    ],
)
def test_parse_query(query: str, expected: dict[str, str] | None) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),
        ("0", None),
        ("-1", None),
        ("1.0", None),
        ("abc", None),
        ("\u0661", None),  # an Arabic-Indic digit is not an ASCII digit
        ("", None),
        (None, None),
    ],
)
def test_parse_id(text: str | None, expected: int | None) -> None:
    assert parse_id(text) == expected


# ------------------------------------------------------------ Simulator.handle


class Harness:
    """A simulator on fake clocks with one signed client."""

    def __init__(self, **kwargs: object) -> None:
        self.clock = FakeClock()
        self.wall = WALL_S
        self.sim = Simulator(monotonic=self.clock, wall_clock=lambda: self.wall, **kwargs)  # type: ignore[arg-type]
        self.key = generate_private_key()
        self.api_key = "unit-key"
        self.sim.add_client(self.api_key, self.key.public_key(), name="unit")

    def request(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes = b"",
        *,
        api_key: str | None = None,
        stamp_ms: int | None = None,
        tamper: bytes | None = None,
    ) -> tuple[int, bytes]:
        reply = self.send(
            method, path, query, body, api_key=api_key, stamp_ms=stamp_ms, tamper=tamper
        )
        return reply.status, reply.body

    def signed(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes = b"",
        *,
        api_key: str | None = None,
        stamp_ms: int | None = None,
        tamper: bytes | None = None,
    ) -> Request:
        stamp = str(int(self.wall * 1000) if stamp_ms is None else stamp_ms)
        signed = signing_payload(stamp, method, path, query, body if tamper is None else tamper)
        return Request(
            method,
            path,
            query,
            body,
            api_key=api_key or self.api_key,
            timestamp=stamp,
            signature=Signer(self.key).sign(signed),
        )

    def send(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes = b"",
        *,
        api_key: str | None = None,
        stamp_ms: int | None = None,
        tamper: bytes | None = None,
    ) -> Reply:
        """One freshly signed request; the whole answer (status, body, headers)."""
        request = self.signed(
            method, path, query, body, api_key=api_key, stamp_ms=stamp_ms, tamper=tamper
        )
        return self.sim.handle(request)

    def cancel(self, order_id: int, symbol: str = "BTC_USDT") -> tuple[int, bytes]:
        return self.request("DELETE", ORDER, f"order_id={order_id}&symbol={symbol}")


@pytest.mark.parametrize(
    ("case", "expected_status"),
    [
        ("ok", 200),
        ("unknown_key", 401),
        ("stale", 401),
        ("future", 401),
        ("tampered_body", 401),
        ("within_window", 200),
    ],
)
def test_authentication_cases(case: str, expected_status: int) -> None:
    h = Harness(time_window_ms=5000)
    now_ms = int(h.wall * 1000)
    kwargs: dict[str, object] = {
        "ok": {},
        "unknown_key": {"api_key": "someone-else"},
        "stale": {"stamp_ms": now_ms - 5001},
        "future": {"stamp_ms": now_ms + 5001},
        "tampered_body": {"tamper": b"{}"},
        "within_window": {"stamp_ms": now_ms - 4999},
    }[case]  # type: ignore[assignment]
    status, body = h.request("GET", OPEN, "symbol=BTC_USDT", **kwargs)  # type: ignore[arg-type]
    assert status == expected_status
    if status == 401:
        assert body.startswith(b'{"error":"invalid_client"')


def test_missing_headers_and_revocation_answer_invalid_client() -> None:
    h = Harness()
    reply = h.sim.handle(Request("GET", OPEN, "symbol=BTC_USDT", api_key=h.api_key))
    assert (reply.status, reply.tag) == (401, "invalid_client")
    h.sim.revoke(h.api_key)
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 401
    h.sim.reinstate(h.api_key)
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200


def test_clock_offset_moves_the_accepted_window() -> None:
    h = Harness(time_window_ms=1000)
    h.sim.clock_offset_ms = 60_000
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 401
    server_ms = int(h.wall * 1000) + 60_000
    assert h.request("GET", OPEN, "symbol=BTC_USDT", stamp_ms=server_ms)[0] == 200


def test_403_variant_for_auth_failures() -> None:
    h = Harness(auth_failure_status=403)
    assert h.request("GET", OPEN, "symbol=BTC_USDT", api_key="nope")[0] == 403


def test_rate_limit_per_key_counts_429s() -> None:
    h = Harness()
    h.sim.set_rate_limit(10.0, 2, api_key=h.api_key)
    statuses = [h.request("GET", OPEN, "symbol=BTC_USDT")[0] for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    h.clock.now += 0.1
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200
    assert h.sim.count(h.api_key, "open_orders", 429) == 2
    assert h.sim.counters["unit"]["open_orders"] == {"200": 3, "429": 2}


def test_global_rate_limit_is_shared_by_clients() -> None:
    h = Harness(global_rate_limit_per_second=1.0, global_burst=1)
    other = generate_private_key()
    h.sim.add_client("other-key", other.public_key())
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200
    reply = h.sim.handle(Request("GET", OPEN, "symbol=BTC_USDT", api_key="other-key"))
    assert reply.status == 429


def test_cancel_answers() -> None:
    h = Harness()
    (order_id,) = h.sim.seed_orders(h.api_key, "BTC_USDT", 1)
    other = generate_private_key()
    h.sim.add_client("other-key", other.public_key())
    (foreign,) = h.sim.seed_orders("other-key", "BTC_USDT", 1)
    assert h.cancel(order_id) == (200, b'{"status":"CANCEL_SENT"}')
    assert h.cancel(order_id) == (400, b'{"error":"order_already_closed"}')
    assert h.cancel(foreign)[0] == 404
    assert h.cancel(order_id, "ETH_USDT")[0] == 404  # not an order on that pair
    assert h.cancel(order_id, "NOPE_USDT")[0] == 400
    assert h.request("DELETE", ORDER, "order_id=abc&symbol=BTC_USDT")[0] == 400
    assert h.sim.open_order_ids("other-key") == {foreign}


def test_batch_cancel_reports_success_and_fail() -> None:
    h = Harness(max_batch=3)
    a, b = h.sim.seed_orders(h.api_key, "BTC_USDT", 2)
    h.sim.close_order(b)
    body = compact_json({"order_ids": [a, b, 1], "symbol": "BTC_USDT"})
    status, answer = h.request("DELETE", BATCH, body=body)
    assert (status, answer) == (200, compact_json({"success": [a], "fail": [b, 1]}))
    too_many = compact_json({"order_ids": [1, 2, 3, 4], "symbol": "BTC_USDT"})
    assert h.request("DELETE", BATCH, body=too_many)[0] == 400
    assert h.request("DELETE", BATCH, body=b"not json")[0] == 400
    assert h.request("DELETE", BATCH, body=b"[" * 100_000)[0] == 400  # nesting, not a crash
    assert h.request("DELETE", BATCH, body=b"\xff\xfe")[0] == 400
    strings = compact_json({"order_ids": ["1"], "symbol": "BTC_USDT"})
    assert h.request("DELETE", BATCH, body=strings)[0] == 400


def test_races_close_before_cancel() -> None:
    h = Harness()
    ids = h.sim.seed_orders(h.api_key, "BTC_USDT", 3)
    h.sim.set_races(close_before_cancel=1.0)
    assert [h.cancel(i)[0] for i in ids] == [400, 400, 400]
    statuses = {h.sim.order(i)["status"] for i in ids}  # type: ignore[index]
    assert statuses <= {"FILLED", "CANCELLED", "PARTIAL_CANCELLED"}
    assert h.sim.open_order_ids(h.api_key) == set()


def test_races_spawn_on_cancel_is_bounded() -> None:
    h = Harness()
    ids = h.sim.seed_orders(h.api_key, "BTC_USDT", 5)
    h.sim.set_races(spawn_on_cancel=1.0, max_spawned=3)
    for i in ids:
        assert h.cancel(i)[0] == 200
    assert h.sim.spawned == 3
    remaining = h.sim.open_order_ids(h.api_key, "BTC_USDT")
    assert len(remaining) == 3
    assert min(remaining) > max(ids)  # new orders, newer ids


def test_races_lose_cancel_keeps_the_order_open() -> None:
    h = Harness()
    (order_id,) = h.sim.seed_orders(h.api_key, "BTC_USDT", 1)
    h.sim.set_races(lose_cancel=1.0)
    assert h.cancel(order_id)[0] == 200
    assert h.sim.open_order_ids(h.api_key) == {order_id}


def test_same_seed_same_run() -> None:
    def run() -> list[tuple[int, bytes]]:
        h = Harness(seed=42)
        ids = h.sim.seed_orders(h.api_key, "BTC_USDT", 40)
        h.sim.set_races(close_before_cancel=0.3, spawn_on_cancel=0.3)
        h.sim.set_faults(EndpointFaults(error_rate=0.2))
        answers = [h.cancel(i) for i in ids]
        answers.append(h.request("GET", OPEN, "symbol=BTC_USDT&limit=1000"))
        return answers

    first, second = run(), run()
    assert first == second
    assert {status for status, _ in first} >= {200, 400, 500}


def test_fault_after_effect_cancels_but_hides_the_answer() -> None:
    h = Harness()
    (order_id,) = h.sim.seed_orders(h.api_key, "BTC_USDT", 1)
    h.sim.set_faults(
        EndpointFaults(error_rate=1.0, error_statuses=(504,), after_effect=True), "cancel"
    )
    assert h.cancel(order_id)[0] == 504
    assert h.sim.open_order_ids(h.api_key) == set()


def test_request_log_holds_no_secret() -> None:
    h = Harness()
    (order_id,) = h.sim.seed_orders(h.api_key, "BTC_USDT", 1)
    h.cancel(order_id)
    h.request("GET", OPEN, "symbol=BTC_USDT", api_key="wrong-secret-key")
    (entry, anonymous) = h.sim.request_log
    assert (entry.client, entry.endpoint, entry.status, entry.order_id) == (
        "unit",
        "cancel",
        200,
        order_id,
    )
    assert anonymous.client is None
    text = repr([e.to_dict() for e in h.sim.request_log]) + repr(h.sim.counters)
    assert h.api_key not in text
    assert "wrong-secret-key" not in text


def test_reset_forgets_orders_but_keeps_clients() -> None:
    h = Harness()
    first = h.sim.seed_orders(h.api_key, "BTC_USDT", 2)
    h.cancel(first[0])
    h.sim.revoke(h.api_key)
    h.sim.reset()
    assert h.sim.open_order_ids(h.api_key) == set()
    assert h.sim.request_log == []
    assert h.sim.seed_orders(h.api_key, "BTC_USDT", 2) == first  # ids restart too
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200


def test_seeded_orders_are_open_and_well_formed() -> None:
    h = Harness()
    ids = h.sim.seed_orders(h.api_key, "BTC_IDR", 200)
    orders = [h.sim.order(i) for i in ids]
    assert {o["status"] for o in orders if o} <= {
        "NEW",
        "OPEN",
        "PARTIAL_FILLED",
        "PARTIALLY_FILLED",
    }
    assert h.sim.open_order_ids(h.api_key, "BTC_IDR") == set(ids)
    fixed = h.sim.seed_orders(h.api_key, "BTC_IDR", 1, side="SELL", price="1.5", quantity="2")
    seeded = h.sim.order(fixed[0])
    assert seeded is not None
    assert seeded["price"] == "1.5"


def test_unknown_routes_and_methods() -> None:
    h = Harness()
    assert h.sim.handle(Request("GET", "/coin/internal/v1/nope")).status == 404
    assert h.sim.handle(Request("PUT", ORDER)).status == 405
    assert h.sim.handle(Request("GET", ORDER + "/")).status == 404  # no trailing slash


def test_account_settings_helper_builds_a_usable_account() -> None:
    from killswitch.exchange.signing import load_private_key
    from killswitch.simulator.testing import account_settings, register_test_client

    sim = Simulator()
    api_key, pem = register_test_client(sim, name="mm-1")
    account = account_settings("http://127.0.0.1:1234", api_key, pem, "mm-1", burst=5)
    assert (account.id, account.base_url, account.burst) == ("mm-1", "http://127.0.0.1:1234", 5)
    assert account.api_key.get_secret_value() == api_key
    load_private_key(account.private_key_bytes())
    assert api_key not in repr(account)


# ------------------------------------------------------------------------ knobs

TIME = "/coin/internal/v1/public/time"
INFO = "/coin/internal/v1/public/exchange-info"


def _headers(reply: Reply) -> dict[str, str]:
    return dict(reply.headers)


def test_knobs_are_off_by_default() -> None:
    assert Simulator().knobs() == {
        "public_auth": False,
        "unknown_symbol": "invalid",
        "rate_limit_kind": "token_bucket",
        "sliding_window_s": 1.0,
        "retry_after_on_429": False,
        "replay_protection": False,
        "throttle_window": None,
        "redirects": {},
    }


def test_bucket_and_window_say_how_long_until_a_request_is_accepted() -> None:
    bucket = TokenBucket(rate=4.0, burst=1, now=0.0)
    assert bucket.wait_s(0.0) == 0.0
    assert bucket.take(0.0)
    assert bucket.wait_s(0.0) == pytest.approx(0.25)
    assert bucket.wait_s(0.125) == pytest.approx(0.125)
    window = SlidingWindow(rate=2.0, window_s=1.5)  # floor(3.0) = 3 per 1.5 s
    assert [window.take(t) for t in (0.0, 0.5, 1.0, 1.2)] == [True, True, True, False]
    assert window.wait_s(1.2) == pytest.approx(0.3)
    window.refund()  # the request at 1.0 is forgotten
    assert window.take(1.2) is True
    assert window.take(1.5) is True  # the one at 0.0 left the window at exactly 1.5


def test_sliding_window_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(0.0, 1.0)
    with pytest.raises(ValueError):
        SlidingWindow(1.0, 0.0)
    assert SlidingWindow(0.1, 1.0).limit == 1  # never a limit that refuses everything


def test_public_auth_requires_a_signature_on_public_endpoints() -> None:
    h = Harness()
    assert h.sim.handle(Request("GET", TIME)).status == 200  # default: unsigned is fine
    h.sim.public_auth = True
    for path in (TIME, INFO):
        unsigned = h.sim.handle(Request("GET", path))
        assert (unsigned.status, unsigned.tag) == (401, "invalid_client")
        assert h.request("GET", path)[0] == 200
    assert h.request("GET", TIME, tamper=b"x")[0] == 401
    h.sim.auth_failure_status = 403
    assert h.sim.handle(Request("GET", INFO)).status == 403


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            "invalid",
            [(400, b"invalid_request")] * 4,
        ),
        (
            "empty",
            [
                (200, b"[]"),
                (200, b'{"success":[],"fail":[]}'),
                (200, b'{"success":[],"fail":[]}'),
                (404, b'{"error":"order_not_found"}'),
            ],
        ),
    ],
)
def test_unknown_symbol_answers(answer: str, expected: list[tuple[int, bytes]]) -> None:
    h = Harness(unknown_symbol=answer)
    batch = compact_json({"order_ids": [5_000_000_001], "symbol": "NOPE_USDT"})
    replies = [
        h.request("GET", OPEN, "symbol=NOPE_USDT"),
        h.request("DELETE", OPEN, "symbol=btc_usdt"),
        h.request("DELETE", BATCH, body=batch),
        h.cancel(5_000_000_001, symbol="BTCUSDT"),
    ]
    for (status, body), (want_status, want_body) in zip(replies, expected, strict=True):
        assert status == want_status
        assert want_body in body


def test_unknown_symbol_empty_keeps_other_errors() -> None:
    h = Harness(unknown_symbol="empty")
    assert h.request("GET", OPEN)[0] == 400  # no symbol at all
    assert h.request("GET", ORDER, "order_id=1&symbol=NOPE_USDT")[0] == 400  # get_order
    assert h.request("DELETE", BATCH, body=b'{"order_ids":[1]}')[0] == 400
    with pytest.raises(ValueError):
        h.sim.unknown_symbol = "maybe"  # type: ignore[assignment]


def test_throttle_window_opens_after_n_requests_for_everyone() -> None:
    h = Harness()
    other = generate_private_key()
    h.sim.add_client("other-key", other.public_key(), name="other")
    h.sim.set_throttle_window(after_requests=3, duration_s=2.5)
    assert [h.request("GET", OPEN, "symbol=BTC_USDT")[0] for _ in range(3)] == [200] * 3
    assert h.sim.handle(Request("GET", TIME)).status == 200  # public: not counted
    first = h.send("GET", OPEN, "symbol=BTC_USDT")
    assert (first.status, first.tag, _headers(first)) == (
        429,
        "too_many_requests",
        {"Retry-After": "3"},
    )
    foreign = h.sim.handle(
        Request("DELETE", ORDER, "order_id=1&symbol=BTC_USDT", api_key="other-key")
    )
    assert foreign.status == 429  # exchange-wide, before authentication
    assert h.sim.handle(Request("GET", TIME)).status == 200  # public: never throttled
    h.clock.now += 1.0
    assert _headers(h.send("GET", OPEN, "symbol=BTC_USDT")) == {"Retry-After": "2"}
    h.clock.now += 1.4  # 0.1 s left: rounded up
    assert _headers(h.send("GET", OPEN, "symbol=BTC_USDT")) == {"Retry-After": "1"}
    h.clock.now += 0.1
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200  # closed, for good
    assert h.sim.throttle_window is None
    h.clock.now += 100.0
    assert [h.request("GET", OPEN, "symbol=BTC_USDT")[0] for _ in range(5)] == [200] * 5
    assert h.sim.count(status=429) == 4


def test_throttle_window_retry_after_as_a_date_or_none() -> None:
    h = Harness()
    h.sim.set_throttle_window(0, 2.5, retry_after="date")
    date = _headers(h.send("GET", OPEN, "symbol=BTC_USDT"))["Retry-After"]
    # The end (wall 1_800_000_002.5) rounded up to a whole second.
    assert date == formatdate(WALL_S + 3, usegmt=True)
    assert parsedate_to_datetime(date).timestamp() == WALL_S + 3
    h.sim.set_throttle_window(0, 1.0, retry_after=None)
    reply = h.send("GET", OPEN, "symbol=BTC_USDT")
    assert (reply.status, reply.headers) == (429, ())


def test_throttle_window_state_and_clearing() -> None:
    h = Harness()
    h.sim.set_throttle_window(1, 2.0)
    assert h.sim.throttle_window == {
        "after_requests": 1,
        "duration_s": 2.0,
        "retry_after": "seconds",
        "requests_seen": 0,
        "open": False,
        "seconds_left": None,
    }
    h.request("GET", OPEN, "symbol=BTC_USDT")
    h.clock.now += 0.5
    window = h.sim.throttle_window
    assert window is not None
    assert (window["open"], window["seconds_left"]) == (True, 1.5)
    h.sim.clear_throttle_window()
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200
    h.sim.set_throttle_window(0, 9.0)
    h.sim.reset()  # the window is cleared like the faults
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200


@pytest.mark.parametrize(
    ("after", "duration", "retry_after"),
    [
        (-1, 1.0, "seconds"),
        (True, 1.0, "seconds"),
        (1, 0.0, "seconds"),
        (1, float("nan"), None),
        (1, 1.0, "minutes"),
    ],
)
def test_throttle_window_refuses_bad_settings(
    after: int, duration: float, retry_after: str | None
) -> None:
    with pytest.raises(ValueError):
        Simulator().set_throttle_window(after, duration, retry_after)  # type: ignore[arg-type]


def test_sliding_window_rate_limit_counts_accepted_requests_only() -> None:
    h = Harness(rate_limit_kind="sliding_window", sliding_window_s=2.0)
    h.sim.set_rate_limit(1.5, burst=50, api_key=h.api_key)  # floor(1.5 * 2) = 3; burst ignored
    statuses = []
    for step in (0.0, 0.5, 0.5, 0.5, 0.4, 0.2, 0.1):  # at 0, .5, 1, 1.5, 1.9, 2.1, 2.2
        h.clock.now += step
        statuses.append(h.request("GET", OPEN, "symbol=BTC_USDT")[0])
    # Accepted at 0, .5, 1; refused at 1.5 and 1.9 (not counted); at 2.1 the one at 0
    # has left the window, so one more; at 2.2 the window holds .5, 1, 2.1 again.
    assert statuses == [200, 200, 200, 429, 429, 200, 429]


def test_sliding_window_applies_to_every_limiter_and_back() -> None:
    h = Harness(global_rate_limit_per_second=2.0)
    h.sim.rate_limit_kind = "sliding_window"
    assert [h.request("GET", OPEN, "symbol=BTC_USDT")[0] for _ in range(3)] == [200, 200, 429]
    h.sim.rate_limit_kind = "token_bucket"  # limiters restart full
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200
    with pytest.raises(ValueError):
        h.sim.rate_limit_kind = "leaky"  # type: ignore[assignment]
    with pytest.raises(ValueError):
        h.sim.sliding_window_s = 0.0


def test_retry_after_on_429_for_rate_limits() -> None:
    h = Harness()
    h.sim.set_rate_limit(0.4, 1, api_key=h.api_key)
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200
    assert h.send("GET", OPEN, "symbol=BTC_USDT").headers == ()  # off by default
    h.sim.retry_after_on_429 = True
    assert _headers(h.send("GET", OPEN, "symbol=BTC_USDT")) == {"Retry-After": "3"}  # 2.5 s
    h.clock.now += 2.45
    assert _headers(h.send("GET", OPEN, "symbol=BTC_USDT")) == {"Retry-After": "1"}  # at least 1
    h.clock.now += 0.05
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200


def test_retry_after_on_429_for_the_global_and_sliding_limits() -> None:
    h = Harness(
        rate_limit_kind="sliding_window",
        sliding_window_s=10.0,
        global_rate_limit_per_second=0.2,  # 2 per 10 s
        retry_after_on_429=True,
    )
    h.request("GET", OPEN, "symbol=BTC_USDT")
    h.clock.now += 4.0
    h.request("GET", OPEN, "symbol=BTC_USDT")
    h.clock.now += 1.0
    reply = h.send("GET", OPEN, "symbol=BTC_USDT")
    assert (reply.status, _headers(reply)) == (429, {"Retry-After": "5"})


def test_redirects_answer_location_and_touch_no_order() -> None:
    h = Harness()
    (order_id,) = h.sim.seed_orders(h.api_key, "BTC_USDT", 1)
    h.sim.set_redirect("https://api.elsewhere.example/coin/internal/v1/order")
    reply = h.send("DELETE", ORDER, f"order_id={order_id}&symbol=BTC_USDT")
    assert (reply.status, reply.body, reply.tag) == (307, b"", "redirect")
    assert _headers(reply) == {"Location": "https://api.elsewhere.example/coin/internal/v1/order"}
    assert h.sim.open_order_ids(h.api_key) == {order_id}
    assert h.sim.handle(Request("GET", TIME)).status == 200  # public endpoints: not by default
    h.sim.set_redirect("/moved", status=308, endpoint="time")
    assert h.sim.handle(Request("GET", TIME)).status == 308
    h.sim.set_redirect("/listing", status=301, endpoint="open_orders")  # wins over "all"
    assert _headers(h.send("GET", OPEN, "symbol=BTC_USDT")) == {"Location": "/listing"}
    assert h.sim.redirects() == {
        "all": {"status": 307, "location": "https://api.elsewhere.example/coin/internal/v1/order"},
        "time": {"status": 308, "location": "/moved"},
        "open_orders": {"status": 301, "location": "/listing"},
    }
    assert h.sim.count(h.api_key, "cancel", 307) == 1
    h.sim.reset()  # redirects are kept
    assert h.send("GET", OPEN, "symbol=BTC_USDT").status == 301
    h.sim.clear_redirects()
    assert h.request("DELETE", ORDER, f"order_id={order_id}&symbol=BTC_USDT")[0] == 404


@pytest.mark.parametrize(
    ("location", "status", "endpoint"),
    [
        ("/x", 200, None),
        ("/x", 400, None),
        ("", 307, None),
        ("/x\r\nSet-Cookie: a", 307, None),
        ("/x", 307, "nope"),
    ],
)
def test_redirect_refuses_bad_settings(location: str, status: int, endpoint: str | None) -> None:
    with pytest.raises(ValueError):
        Simulator().set_redirect(location, status, endpoint)


def test_replay_protection_refuses_a_signature_seen_within_the_window() -> None:
    h = Harness(time_window_ms=5000)
    request = h.signed("GET", OPEN, "symbol=BTC_USDT")
    assert [h.sim.handle(request).status for _ in range(2)] == [200, 200]  # off by default
    h.sim.replay_protection = True
    request = h.signed("GET", OPEN, "symbol=BTC_USDT")
    assert h.sim.handle(request).status == 200
    replayed = h.sim.handle(request)
    assert (replayed.status, replayed.body) == (
        401,
        b'{"error":"invalid_client","message":"replayed"}',
    )
    assert h.request("GET", OPEN, "symbol=BTC_USDT")[0] == 200  # a fresh signature is fine
    h.clock.now += 4.999
    assert h.sim.handle(request).status == 401
    h.clock.now += 0.001  # the accepted one is 5 s old: forgotten (its timestamp is what
    assert h.sim.handle(request).status == 200  # stops it now; the wall clock stands still)
    h.sim.replay_protection = False
    assert h.sim.handle(request).status == 200


def test_replay_protection_only_remembers_accepted_signatures() -> None:
    h = Harness(replay_protection=True)
    h.sim.set_rate_limit(1.0, 1, api_key=h.api_key)
    h.request("GET", OPEN, "symbol=BTC_USDT")
    request = h.signed("GET", OPEN, "symbol=BTC_USDT")
    assert h.sim.handle(request).status == 429  # refused before the signature was accepted
    h.clock.now += 1.0
    assert h.sim.handle(request).status == 200


def test_reset_keeps_the_knobs() -> None:
    h = Harness(
        public_auth=True,
        unknown_symbol="empty",
        rate_limit_kind="sliding_window",
        sliding_window_s=2.0,
        retry_after_on_429=True,
        replay_protection=True,
    )
    h.sim.set_redirect("/elsewhere", endpoint="get_order")
    before = h.sim.knobs()
    h.sim.reset()
    assert h.sim.knobs() == before
