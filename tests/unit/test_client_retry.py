"""The client's retry, outcome and error logic, with a scripted in-memory transport.

Only the decision logic is under test here (fake time, no sockets); the same
behaviour over real HTTP against the simulator is in tests/integration/test_client*.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from killswitch.config import AccountSettings
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.exchange.client import PATH_TIME, ExchangeClient, clock_hint
from killswitch.exchange.errors import (
    AuthError,
    ExchangeError,
    ExchangeUnavailable,
    InvalidRequest,
    NotFound,
    ProtocolError,
    Redirected,
    RequestRejected,
)
from killswitch.ratelimit import RateLimiter
from tests.support.keys import PKCS8_PEM

API_KEY = "unit-api-key-0123456789"

# What httpx.MockTransport serves with: a Script, or a function for a one-off answer.
Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


class FakeTime:
    def __init__(self) -> None:
        self.mono = 500.0
        self.wall = 1_700_000_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.mono

    def wall_clock(self) -> float:
        return self.wall

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds
        self.wall += seconds
        await asyncio.sleep(0)


class Recorder:
    """An Observer that keeps everything."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.rates: list[float] = []
        self.inflight = 0
        self.max_inflight = 0

    def request_done(self, account: str, endpoint: str, status: str, seconds: float) -> None:
        assert account == "acct"
        self.requests.append((endpoint, status))

    def rate_changed(self, account: str, rate: float) -> None:
        self.rates.append(rate)

    def inflight_cancels(self, account: str, delta: int) -> None:
        self.inflight += delta
        self.max_inflight = max(self.max_inflight, self.inflight)

    def cancel_outcome(self, account: str, outcome: Outcome) -> None:
        raise AssertionError("the engine, not the client, counts final outcomes")

    def first_cancel(self, seconds: float) -> None: ...
    def flat(self, seconds: Sequence[float]) -> None: ...
    def halted(self, account: str, halted: bool) -> None: ...
    def residual(self, account: str, count: int, unlisted_pairs: int) -> None: ...

    def latch_reaction(self, account: str, seconds: float | None) -> None: ...
    def sweep_failed(self, account: str) -> None: ...


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers)


class Script:
    """Answers the time endpoint with the fake clock (+ offset), others from a list."""

    def __init__(self, fake: FakeTime, answers: list[httpx.Response | Exception]) -> None:
        self.fake = fake
        self.answers = answers
        self.server_offset_ms = 0
        self.seen: list[httpx.Request] = []
        self.time_calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == PATH_TIME:
            self.time_calls += 1
            return reply(200, {"timestamp": int(self.fake.wall * 1000) + self.server_offset_ms})
        self.seen.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def settings(tmp_path: Path, **kw: Any) -> AccountSettings:
    key = tmp_path / "key.pem"
    key.write_bytes(PKCS8_PEM)
    base: dict[str, Any] = {
        "id": "acct",
        "api_key": SecretStr(API_KEY),
        "private_key_file": key,
        "rate_limit_per_second": 1000.0,
        "burst": 100,
        "max_attempts": 4,
        "request_deadline_s": 10.0,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 1.0,
    }
    base.update(kw)
    return AccountSettings(**base)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def make_client(
    tmp_path: Path, fake: FakeTime, script: Handler, recorder: Recorder | None = None, **kw: Any
) -> ExchangeClient:
    account = settings(tmp_path, **kw)
    limiter = RateLimiter(
        account.rate_limit_per_second,
        account.burst,
        account.max_concurrency,
        clock=fake.monotonic,
        sleep=fake.sleep,
        on_rate_change=(lambda r: recorder.rate_changed("acct", r)) if recorder else None,
    )
    return ExchangeClient(
        account,
        observer=recorder,
        transport=httpx.MockTransport(script),
        limiter=limiter,
        wall_clock=fake.wall_clock,
        monotonic=fake.monotonic,
        sleep=fake.sleep,
        rng=random.Random(1),
    )


async def test_5xx_then_success_is_sent_after_one_jittered_backoff(
    tmp_path: Path, fake: FakeTime
) -> None:
    script = Script(
        fake, [reply(503, {"error": "api_error"}), reply(200, {"status": "CANCEL_SENT"})]
    )
    recorder = Recorder()
    async with make_client(tmp_path, fake, script, recorder) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.attempts, result.status) == (Outcome.SENT, 2, 200)
    assert len(fake.sleeps) == 1
    assert 0.0 <= fake.sleeps[0] <= 0.05
    assert ("cancel", "503") in recorder.requests
    assert ("cancel", "200") in recorder.requests
    assert recorder.inflight == 0
    assert recorder.max_inflight == 1


async def test_repeated_429s_on_retries_keep_cutting_then_succeed(
    tmp_path: Path, fake: FakeTime
) -> None:
    script = Script(
        fake, [reply(429), reply(429), reply(429), reply(200, {"status": "CANCEL_SENT"})]
    )
    recorder = Recorder()
    async with make_client(tmp_path, fake, script, recorder) as client:
        result = await client.cancel_order(7, "BTC_USDT")
        assert result.outcome is Outcome.SENT
        assert result.attempts == 4
        # Every retry was sent after the previous cut and was throttled again: each
        # is a fresh loss event, so each cuts (x0.7) unless it falls in the 50 ms guard.
        rate = client.limiter.rate
    assert recorder.rates[0] == 700.0  # the first cut
    assert rate < 600.0  # the retries throttled again cut again (no cool-down across them)


async def test_retries_exhausted_is_failed_with_last_status(tmp_path: Path, fake: FakeTime) -> None:
    script = Script(fake, [reply(502)])
    async with make_client(tmp_path, fake, script) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.attempts, result.status) == (Outcome.FAILED, 4, 502)
    assert len(script.seen) == 4
    caps = [0.05, 0.1, 0.2]
    assert all(0 <= s <= c for s, c in zip(fake.sleeps, caps, strict=True))


async def test_deadline_stops_retries_before_max_attempts(tmp_path: Path, fake: FakeTime) -> None:
    script = Script(fake, [reply(500)])
    async with make_client(
        tmp_path, fake, script, max_attempts=50, request_deadline_s=1.0, backoff_base_s=0.2
    ) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert result.outcome is Outcome.FAILED
    assert 1 < result.attempts < 50
    assert sum(fake.sleeps) < 1.0


@pytest.mark.parametrize(
    ("exc", "status_label", "kind"),
    [
        (httpx.ConnectError("refused"), "error", "ConnectError"),
        (httpx.ReadTimeout("slow"), "timeout", "ReadTimeout"),
        (httpx.RemoteProtocolError("reset"), "error", "RemoteProtocolError"),
    ],
)
async def test_transport_errors_retry_then_fail_translated(
    tmp_path: Path, fake: FakeTime, exc: Exception, status_label: str, kind: str
) -> None:
    script = Script(fake, [exc])
    recorder = Recorder()
    async with make_client(tmp_path, fake, script, recorder, max_attempts=3) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.attempts, result.status, result.error) == (
        Outcome.FAILED,
        3,
        None,
        kind,
    )
    assert recorder.requests.count(("cancel", status_label)) == 3


async def test_transport_error_then_success(tmp_path: Path, fake: FakeTime) -> None:
    script = Script(fake, [httpx.ConnectError("refused"), reply(200, {"status": "CANCEL_SENT"})])
    async with make_client(tmp_path, fake, script) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)


@pytest.mark.parametrize(
    ("status", "body", "outcome", "reason"),
    [
        (200, {"status": "CANCEL_SENT"}, Outcome.SENT, None),
        (400, {"error": "order_already_closed"}, Outcome.ALREADY_CLOSED, None),
        (400, {"error": "invalid_request"}, Outcome.REJECTED, RejectReason.INVALID_REQUEST),
        (401, {"error": "invalid_client"}, Outcome.REJECTED, RejectReason.AUTH),
        (403, {"error": "invalid_client"}, Outcome.REJECTED, RejectReason.AUTH),
        (404, None, Outcome.REJECTED, RejectReason.NOT_FOUND),
        (409, {"error": "conflict"}, Outcome.REJECTED, RejectReason.OTHER_4XX),
        (402, None, Outcome.REJECTED, RejectReason.OTHER_4XX),
        (307, None, Outcome.REJECTED, RejectReason.REDIRECT),
        (301, None, Outcome.REJECTED, RejectReason.REDIRECT),
    ],
)
async def test_cancel_outcome_table_without_retries(  # noqa: PLR0917 (parametrised table)
    tmp_path: Path,
    fake: FakeTime,
    status: int,
    body: Any,
    outcome: Outcome,
    reason: RejectReason | None,
) -> None:
    script = Script(fake, [reply(status, body)])
    async with make_client(tmp_path, fake, script) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.reason, result.status, result.attempts) == (
        outcome,
        reason,
        status,
        1,
    )
    assert fake.sleeps == []


async def test_cancel_request_is_signed_delete_with_query(tmp_path: Path, fake: FakeTime) -> None:
    script = Script(fake, [reply(200, {"status": "CANCEL_SENT"})])
    async with make_client(tmp_path, fake, script) as client:
        await client.cancel_order(123, "BTC_USDT")
    request = script.seen[0]
    assert request.method == "DELETE"
    assert request.url.raw_path == b"/coin/internal/v1/order?order_id=123&symbol=BTC_USDT"
    assert request.headers["X-API-KEY"] == API_KEY
    assert request.headers["X-TIMESTAMP"] == str(int(fake.wall * 1000))
    assert request.content == b""


async def test_invalid_client_with_steady_clock_is_rejected_at_once(
    tmp_path: Path, fake: FakeTime
) -> None:
    script = Script(fake, [reply(401, {"error": "invalid_client"})])
    async with make_client(tmp_path, fake, script) as client:
        fake.mono += 5.0  # allow a re-measurement
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.reason, result.attempts) == (
        Outcome.REJECTED,
        RejectReason.AUTH,
        1,
    )
    assert len(script.seen) == 1


async def test_invalid_client_after_clock_jump_resyncs_and_retries_once(
    tmp_path: Path, fake: FakeTime
) -> None:
    script = Script(
        fake, [reply(401, {"error": "invalid_client"}), reply(200, {"status": "CANCEL_SENT"})]
    )
    async with make_client(tmp_path, fake, script) as client:
        await client.sync_clock()
        assert client.clock_offset_ms == 0
        script.server_offset_ms = 30_000  # the server clock jumped
        fake.mono += 2.0
        result = await client.cancel_order(7, "BTC_USDT")
        assert client.clock_offset_ms == 30_000
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)
    second = script.seen[1]
    assert second.headers["X-TIMESTAMP"] == str(int(fake.wall * 1000) + 30_000)


async def test_first_signed_request_waits_for_clock_sync(tmp_path: Path, fake: FakeTime) -> None:
    script = Script(fake, [reply(200, {"status": "CANCEL_SENT"})])
    script.server_offset_ms = -4_000
    async with make_client(tmp_path, fake, script) as client:
        await client.cancel_order(7, "BTC_USDT")
        await client.cancel_order(8, "BTC_USDT")
    assert script.time_calls == 1
    assert script.seen[0].headers["X-TIMESTAMP"] == str(int(fake.wall * 1000) - 4_000)


async def test_clock_sync_failure_does_not_block_cancels(tmp_path: Path, fake: FakeTime) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == PATH_TIME:
            return reply(503)
        return reply(200, {"status": "CANCEL_SENT"})

    account = settings(tmp_path)
    async with ExchangeClient(
        account, transport=httpx.MockTransport(handler), wall_clock=fake.wall_clock
    ) as client:
        result = await client.cancel_order(7, "BTC_USDT")
        assert result.outcome is Outcome.SENT
        assert client.clock_offset_ms == 0


async def test_listing_raises_project_errors(tmp_path: Path, fake: FakeTime) -> None:
    cases: list[tuple[httpx.Response, type[ExchangeError]]] = [
        (reply(401, {"error": "invalid_client"}), AuthError),
        (reply(400, {"error": "invalid_request"}), InvalidRequest),
        (reply(200, {"not": "a list"}), ProtocolError),
        (reply(200, [{"order_id": "x"}]), ProtocolError),
        (reply(503), ExchangeUnavailable),
    ]
    for response, error in cases:
        script = Script(fake, [response])
        async with make_client(tmp_path, fake, script, max_attempts=2) as client:
            with pytest.raises(error) as info:
                async for _ in client.open_orders("BTC_USDT"):
                    pass
        assert API_KEY not in str(info.value)
        assert "acct" in str(info.value)


async def test_get_order_not_found_and_decimals(tmp_path: Path, fake: FakeTime) -> None:
    order = {
        "order_id": 9,
        "symbol": "BTC_USDT",
        "side": "SELL",
        "status": "PARTIALLY_FILLED",
        "type": "LIMIT",
        "price": 0.1,
        "quantity": "2.50",
        "executed_quantity": "1",
    }
    script = Script(fake, [reply(200, order), reply(404, {"error": "not_found"})])
    async with make_client(tmp_path, fake, script) as client:
        got = await client.get_order(9, "BTC_USDT")
        assert str(got.price) == "0.1"  # parsed as Decimal from the JSON number text
        assert str(got.remaining) == "1.50"
        with pytest.raises(NotFound):
            await client.get_order(10, "BTC_USDT")


async def test_batch_cancel_body_and_results(tmp_path: Path, fake: FakeTime) -> None:
    script = Script(
        fake,
        [reply(200, {"success": [1, 2], "fail": [3]}), reply(200, {"status": "CANCEL_SENT"})],
    )
    async with make_client(tmp_path, fake, script) as client:
        result = await client.cancel_batch("BTC_IDR", [1, 2, 3])
        assert (result.success, result.fail, result.outcome) == ([1, 2], [3], None)
        assert script.seen[0].content == b'{"order_ids":[1,2,3],"symbol":"BTC_IDR"}'
        odd = await client.cancel_batch("BTC_IDR", [4, 5])  # 200 without the arrays
        assert (odd.success, odd.fail) == ([4, 5], [])
        empty = await client.cancel_batch("BTC_IDR", [])
        assert (empty.attempts, len(script.seen)) == (0, 2)


async def test_batch_and_cancel_all_rejected_or_failed(tmp_path: Path, fake: FakeTime) -> None:
    script = Script(fake, [reply(403, {"error": "invalid_client"})])
    async with make_client(tmp_path, fake, script) as client:
        rejected = await client.cancel_all("BTC_IDR")
    assert (rejected.outcome, rejected.reason) == (Outcome.REJECTED, RejectReason.AUTH)
    script = Script(fake, [reply(504)])
    async with make_client(tmp_path, fake, script, max_attempts=2) as client:
        failed = await client.cancel_batch("BTC_IDR", [1])
    assert (failed.outcome, failed.attempts) == (Outcome.FAILED, 2)


async def test_exchange_info_is_cached_for_ttl(tmp_path: Path, fake: FakeTime) -> None:
    info = [{"symbol": "BTC_IDR", "base_asset": "BTC", "quote_asset": "IDR", "quote_tick": "1"}]
    script = Script(fake, [reply(200, info)])
    async with make_client(tmp_path, fake, script) as client:
        first = await client.exchange_info()
        await client.exchange_info()
        assert len(script.seen) == 1
        fake.mono += 301.0
        await client.exchange_info()
        assert len(script.seen) == 2
    assert first[0].symbol == "BTC_IDR"
    assert "X-API-KEY" not in script.seen[0].headers  # public endpoint


# -- Retry-After, throttling without using up attempts ------------------------------------


async def test_retry_after_seconds_on_429_is_waited_and_pauses_the_key(
    tmp_path: Path, fake: FakeTime
) -> None:
    script = Script(
        fake, [reply(429, headers={"Retry-After": "3"}), reply(200, {"status": "CANCEL_SENT"})]
    )
    async with make_client(tmp_path, fake, script) as client:
        sent_at = fake.mono
        result = await client.cancel_order(7, "BTC_USDT")
        assert client.limiter.paused_until == pytest.approx(sent_at + 3.0)
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)
    assert fake.sleeps
    assert fake.sleeps[0] >= 3.0  # not the 50 ms backoff


async def test_retry_after_http_date_on_503_is_waited(tmp_path: Path, fake: FakeTime) -> None:
    fake.wall = 1_700_000_000.0  # a whole second: the date has no fraction
    when = email.utils.formatdate(fake.wall + 2.0, usegmt=True)
    script = Script(
        fake, [reply(503, headers={"Retry-After": when}), reply(200, {"status": "CANCEL_SENT"})]
    )
    async with make_client(tmp_path, fake, script) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)
    assert fake.sleeps[0] == pytest.approx(2.0)


async def test_429s_use_up_the_deadline_not_max_attempts(tmp_path: Path, fake: FakeTime) -> None:
    answers: list[httpx.Response | Exception] = [reply(429)] * 10
    script = Script(fake, [*answers, reply(200, {"status": "CANCEL_SENT"})])
    async with make_client(tmp_path, fake, script, max_attempts=3) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.attempts) == (Outcome.SENT, 11)


async def test_endless_429s_end_at_the_request_deadline(tmp_path: Path, fake: FakeTime) -> None:
    script = Script(fake, [reply(429)])
    async with make_client(
        tmp_path, fake, script, max_attempts=3, request_deadline_s=5.0
    ) as client:
        started = fake.mono
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.status) == (Outcome.FAILED, 429)
    assert result.attempts > 3
    assert fake.mono - started <= 5.0


async def test_a_retry_after_past_the_deadline_gives_up_at_once(
    tmp_path: Path, fake: FakeTime
) -> None:
    script = Script(fake, [reply(429, headers={"Retry-After": "30"})])
    async with make_client(tmp_path, fake, script, request_deadline_s=10.0) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.attempts, result.status) == (Outcome.FAILED, 1, 429)
    assert fake.sleeps == []


# -- public endpoints signed when the exchange wants it ------------------------------------


class SignedPublic(Script):
    """An exchange that refuses unsigned public calls (401 invalid_client)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/coin/internal/v1/public/"):
            self.seen.append(request)
            if "X-SIGNATURE" not in request.headers:
                return reply(401, {"error": "invalid_client"})
            if request.url.path == PATH_TIME:
                self.time_calls += 1
                return reply(200, {"timestamp": int(self.fake.wall * 1000)})
        return super().__call__(request)


async def test_public_endpoints_are_signed_after_a_refusal_and_remembered(
    tmp_path: Path, fake: FakeTime
) -> None:
    info = [{"symbol": "BTC_IDR", "base_asset": "BTC", "quote_asset": "IDR", "quote_tick": "1"}]
    script = SignedPublic(fake, [reply(200, info)])
    recorder = Recorder()
    async with make_client(tmp_path, fake, script, recorder, max_attempts=1) as client:
        pairs = await client.exchange_info()
        assert client.signs_public
        fake.mono += 301.0  # the cache expired
        await client.exchange_info()
        offset = await client.sync_clock()
    assert [p.symbol for p in pairs] == ["BTC_IDR"]
    signed = ["X-SIGNATURE" in r.headers for r in script.seen]
    # One unsigned refusal, then only signed calls (time for the clock sync included).
    assert signed[0] is False
    assert all(signed[1:])
    assert len(signed) >= 4
    assert offset == 0
    assert ("exchange_info", "401") in recorder.requests


async def test_a_key_refused_on_a_signed_public_call_is_an_auth_error(
    tmp_path: Path, fake: FakeTime
) -> None:
    class Refusing(Script):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            self.seen.append(request)
            return reply(401, {"error": "invalid_client"})

    script = Refusing(fake, [])
    async with make_client(tmp_path, fake, script) as client:
        with pytest.raises(AuthError):
            await client.exchange_info()
        with pytest.raises(AuthError):
            await client.sync_clock()


# -- redirects: never followed, never retried ------------------------------------------------


async def test_a_redirect_on_a_listing_raises_redirected_naming_the_location(
    tmp_path: Path, fake: FakeTime
) -> None:
    elsewhere = "https://elsewhere.example/coin/internal/v1/order/open"
    script = Script(fake, [reply(307, headers={"Location": elsewhere})])
    async with make_client(tmp_path, fake, script) as client:
        with pytest.raises(Redirected) as info:
            async for _ in client.open_orders("BTC_USDT"):
                pass
    assert len(script.seen) == 1  # not retried, not followed
    assert info.value.location == elsewhere
    assert info.value.status == 307
    assert isinstance(info.value, RequestRejected)
    assert f"307 redirect to {elsewhere} on open_orders: check base_url" in str(info.value)


async def test_a_redirect_on_a_cancel_is_rejected_with_the_location(
    tmp_path: Path, fake: FakeTime
) -> None:
    script = Script(fake, [reply(308, headers={"Location": "http://other/x"})])
    recorder = RedirectRecorder()
    async with make_client(tmp_path, fake, script, recorder) as client:
        result = await client.cancel_order(7, "BTC_USDT")
        batch = await client.cancel_all("BTC_USDT")
        several = await client.cancel_batch("BTC_USDT", [7, 8])
    assert (result.outcome, result.reason, result.status) == (
        Outcome.REJECTED,
        RejectReason.REDIRECT,
        308,
    )
    assert (
        result.error == "exchange answered 308 redirect to http://other/x on cancel: check base_url"
    )
    assert (batch.outcome, batch.reason, batch.status) == (
        Outcome.REJECTED,
        RejectReason.REDIRECT,
        308,
    )
    assert batch.error == (
        "exchange answered 308 redirect to http://other/x on cancel_all: check base_url"
    )
    assert several.error == (
        "exchange answered 308 redirect to http://other/x on cancel_batch: check base_url"
    )
    assert len(script.seen) == 3
    # every 3xx reaches an observer that wants it, with its endpoint and Location
    assert recorder.redirects == [
        ("cancel", 308, "http://other/x"),
        ("cancel_all", 308, "http://other/x"),
        ("cancel_batch", 308, "http://other/x"),
    ]


class RedirectRecorder(Recorder):
    """A Recorder that also wants every redirect (as readiness does)."""

    def __init__(self) -> None:
        super().__init__()
        self.redirects: list[tuple[str, int, str]] = []

    def redirected(self, account: str, endpoint: str, status: int, location: str) -> None:
        self.redirects.append((endpoint, status, location))


async def test_a_redirect_on_server_time_reaches_the_observer(
    tmp_path: Path, fake: FakeTime
) -> None:
    def moved(request: httpx.Request) -> httpx.Response:
        return reply(302, headers={"Location": "https://elsewhere.example/t"})

    recorder = RedirectRecorder()
    async with make_client(tmp_path, fake, moved, recorder) as client:
        with pytest.raises(Redirected) as info:
            await client.sync_clock()
    assert recorder.redirects == [("time", 302, "https://elsewhere.example/t")]
    assert "on time: check base_url" in str(info.value)


# -- an authentication refusal says when the clock may be its cause -----------------------------


def test_clock_hint_says_nothing_while_the_clock_sync_works() -> None:
    assert clock_hint("open_orders", synced=True, sync_error=None) == ""
    assert clock_hint("open_orders", synced=False, sync_error=None) == ""


def test_clock_hint_names_why_the_offset_is_unknown_or_old() -> None:
    unknown = clock_hint("open_orders", synced=False, sync_error="server time answered HTTP 503")
    assert unknown.startswith(
        "; the clock offset could not be measured: server time answered HTTP 503; "
    )
    old = clock_hint("cancel", synced=True, sync_error="server time: timeout")
    assert "the last clock sync failed (server time: timeout)" in old
    own = clock_hint("time", synced=True, sync_error=None)
    assert "the clock offset could not be measured: server time refused it too" in own


async def test_an_auth_refusal_with_the_clock_unmeasured_says_so(
    tmp_path: Path, fake: FakeTime
) -> None:
    """Public endpoints signed and a clock outside the exchange's window: everything
    signed is refused, the time endpoint too, and the refusal says the clock is suspect."""

    class SkewedSignedPublic(Script):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            self.seen.append(request)
            return reply(401, {"error": "invalid_client"})

    script = SkewedSignedPublic(fake, [])
    async with make_client(tmp_path, fake, script, max_attempts=1) as client:
        with pytest.raises(AuthError) as listing:
            async for _ in client.open_orders("BTC_USDT"):
                pass
        with pytest.raises(AuthError) as clock:
            await client.sync_clock()
    assert (
        "authentication refused (HTTP 401 invalid_client); the clock offset could not be "
        "measured: server time refused the signed request too (HTTP 401)" in str(listing.value)
    )
    assert "the clock offset could not be measured: server time refused it too" in str(clock.value)


async def test_an_auth_refusal_with_a_measured_clock_has_no_hint(
    tmp_path: Path, fake: FakeTime
) -> None:
    script = Script(fake, [reply(401, {"error": "invalid_client"})])
    async with make_client(tmp_path, fake, script) as client:
        with pytest.raises(AuthError) as info:
            async for _ in client.open_orders("BTC_USDT"):
                pass
    assert str(info.value).endswith("authentication refused (HTTP 401 invalid_client)")


# -- a request cancelled in flight is still counted --------------------------------------------


async def test_a_request_cancelled_in_flight_is_reported(tmp_path: Path, fake: FakeTime) -> None:
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        if request.url.path == PATH_TIME:
            return reply(200, {"timestamp": int(fake.wall * 1000)})
        await never.wait()
        raise AssertionError("unreachable")

    recorder = Recorder()
    async with make_client(tmp_path, fake, hang, recorder) as client:
        task = asyncio.create_task(client.cancel_order(7, "BTC_USDT"))
        for _ in range(100):
            if recorder.inflight:
                break
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ("cancel", "cancelled") in recorder.requests
    assert recorder.inflight == 0


async def test_a_transport_that_never_answers_is_ended_by_the_attempt_deadline(
    tmp_path: Path, fake: FakeTime
) -> None:
    """Any httpx transport, even one with no timeouts of its own: the client's deadline ends
    every attempt (here a mock that never answers the cancel)."""
    never = asyncio.Event()
    script = Script(fake, [reply(200, {"status": "CANCEL_SENT"})])

    async def silent(request: httpx.Request) -> httpx.Response:
        if request.url.path == PATH_TIME:
            return script(request)
        await never.wait()
        raise AssertionError("unreachable")

    recorder = Recorder()
    account = settings(tmp_path, max_attempts=2, request_deadline_s=0.2)
    async with ExchangeClient(
        account, observer=recorder, transport=httpx.MockTransport(silent)
    ) as client:
        result = await client.cancel_order(7, "BTC_USDT")
    assert (result.outcome, result.error) == (Outcome.FAILED, "AttemptDeadline")
    assert ("cancel", "timeout") in recorder.requests
    assert recorder.inflight == 0
