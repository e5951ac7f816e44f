"""Readiness: a pure verdict from consuming state and the exchange's answers per account."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from killswitch.core.outcomes import Outcome
from killswitch.core.ports import NullObserver
from killswitch.health import Answer, Readiness, ReadinessObserver, ReadyReport, classify_answer
from killswitch.metrics import Metrics

ACCOUNTS = ("mm-1", "mm-2")
STALE = 120.0

Step = Callable[[Readiness], None]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("200", Answer.OK),
        ("204", Answer.OK),
        ("400", Answer.OK),  # order_already_closed / invalid_request: the exchange understood us
        ("404", Answer.OK),
        ("429", Answer.OK),  # throttled, but reachable and the key is accepted
        ("401", Answer.AUTH),
        ("403", Answer.AUTH),
        ("500", Answer.NONE),
        ("503", Answer.NONE),
        ("307", Answer.REDIRECT),
        ("301", Answer.REDIRECT),
        ("timeout", Answer.NONE),
        ("error", Answer.NONE),
        ("cancelled", Answer.NONE),
        ("", Answer.NONE),
    ],
)
def test_classify_answer(status: str, expected: Answer) -> None:
    assert classify_answer(status) is expected


def consuming(r: Readiness) -> None:
    r.set_consuming(True)


def ok(account: str, at: float) -> Step:
    return lambda r: r.exchange_ok(account, at)


def status(account: str, code: str, at: float) -> Step:
    return lambda r: r.record_exchange(account, code, at)


def kafka(up: bool, reason: str) -> Step:
    return lambda r: r.set_kafka(up, reason)


def producer(problem: str) -> Step:
    return lambda r: r.set_producer(problem)


def auth(account: str) -> Step:
    return lambda r: r.auth_rejected(account)


@pytest.mark.parametrize(
    ("steps", "now", "expected"),
    [
        pytest.param(
            [],
            0.0,
            ReadyReport(
                False,
                (
                    "kafka: not consuming",
                    "exchange: mm-1 no answer yet",
                    "exchange: mm-2 no answer yet",
                ),
            ),
            id="fresh",
        ),
        pytest.param(
            [kafka(False, "kafka unreachable at b:9092")],
            0.0,
            ReadyReport(
                False,
                (
                    "kafka unreachable at b:9092",
                    "kafka: not consuming",
                    "exchange: mm-1 not asked yet (once kafka answers)",
                    "exchange: mm-2 not asked yet (once kafka answers)",
                ),
            ),
            id="waiting-for-kafka-the-exchange-is-not-asked-yet",
        ),
        pytest.param(
            [consuming, ok("mm-1", 10), ok("mm-2", 10)], 20.0, ReadyReport(True), id="ready"
        ),
        pytest.param(
            [consuming, ok("mm-1", 10), ok("mm-2", 10)],
            10 + STALE,
            ReadyReport(True),
            id="exactly-at-the-limit-is-fresh",
        ),
        pytest.param(
            [ok("mm-1", 10), ok("mm-2", 10)],
            20.0,
            ReadyReport(False, ("kafka: not consuming",)),
            id="not-consuming",
        ),
        pytest.param(
            [consuming, ok("mm-1", 10), ok("mm-2", 10), producer("kafka producer unusable: x")],
            20.0,
            ReadyReport(False, ("kafka producer unusable: x",)),
            id="producer-unusable",
        ),
        pytest.param(
            [consuming, ok("mm-1", 0), ok("mm-2", 100)],
            130.0,
            ReadyReport(False, ("exchange: mm-1 no answer for 130s",)),
            id="stale-one",
        ),
        pytest.param(
            [consuming, ok("mm-1", 10), ok("mm-2", 10), auth("mm-2")],
            20.0,
            ReadyReport(False, ("mm-2: auth rejected",)),
            id="auth-rejected",
        ),
        pytest.param(
            [consuming, ok("mm-1", 10), auth("mm-2"), ok("mm-2", 15)],
            20.0,
            ReadyReport(True),
            id="auth-cleared-by-a-good-answer",
        ),
        pytest.param(
            [
                consuming,
                status("mm-1", "200", 10),
                status("mm-2", "429", 10),
                status("mm-1", "503", 19),
                status("mm-2", "timeout", 19),
            ],
            20.0,
            ReadyReport(True),
            id="errors-do-not-refresh-or-clear",
        ),
        pytest.param(
            [consuming, status("mm-1", "200", 10), status("mm-2", "401", 10)],
            20.0,
            ReadyReport(False, ("mm-2: auth rejected",)),
            id="401-via-record",
        ),
        pytest.param(
            [consuming, ok("mm-1", 0), ok("mm-2", 0), lambda r: r.set_consuming(False)],
            1.0,
            ReadyReport(False, ("kafka: not consuming",)),
            id="lost-assignment",
        ),
        pytest.param(
            [consuming, ok("mm-1", 0), ok("mm-2", 0), kafka(False, "waiting for Kafka at k:9092")],
            1.0,
            ReadyReport(False, ("waiting for Kafka at k:9092",)),
            id="kafka-down-while-consuming",
        ),
        pytest.param(
            [kafka(False, "waiting for Kafka at k:9092"), ok("mm-1", 0), ok("mm-2", 0)],
            1.0,
            ReadyReport(False, ("waiting for Kafka at k:9092", "kafka: not consuming")),
            id="kafka-down-and-not-consuming",
        ),
        pytest.param(
            [consuming, ok("mm-1", 0), ok("mm-2", 0), kafka(False, "gone"), kafka(True, "")],
            1.0,
            ReadyReport(True),
            id="kafka-back",
        ),
        pytest.param(
            [consuming, ok("mm-1", 0), ok("mm-2", 0), lambda r: r.set_draining()],
            1.0,
            ReadyReport(False, ("shutting down",)),
            id="draining",
        ),
        pytest.param(
            [consuming, ok("mm-1", 0), ok("mm-2", 0), ok("stranger", 0), auth("stranger")],
            1.0,
            ReadyReport(True),
            id="unconfigured-accounts-are-ignored",
        ),
    ],
)
def test_readiness(steps: list[Step], now: float, expected: ReadyReport) -> None:
    readiness = Readiness.for_accounts(ACCOUNTS, STALE)
    for step in steps:
        step(readiness)
    assert readiness.evaluate(now) == expected


def test_report_json() -> None:
    assert ReadyReport(False, ("kafka: not consuming",)).as_json() == {
        "ready": False,
        "reasons": ["kafka: not consuming"],
    }


def test_no_accounts_needs_only_kafka() -> None:
    readiness = Readiness.for_accounts([], STALE)
    readiness.set_consuming(True)
    assert readiness.evaluate(0).ready


def test_readiness_observer_feeds_readiness_and_forwards() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, ["mm-1"])
    readiness = Readiness.for_accounts(["mm-1"], STALE)
    readiness.set_consuming(True)
    now = [5.0]
    observer = ReadinessObserver(metrics, readiness, clock=lambda: now[0])
    observer.request_done("mm-1", "open_orders", "200", 0.01)
    observer.rate_changed("mm-1", 3.0)
    observer.inflight_cancels("mm-1", 1)
    observer.cancel_outcome("mm-1", Outcome.SENT)
    observer.first_cancel(0.1)
    observer.flat([0.2])
    observer.halted("mm-1", True)
    observer.residual("mm-1", 2, 1)
    assert readiness.evaluate(6.0).ready
    get = registry.get_sample_value
    assert (
        get(
            "killswitch_exchange_requests_total",
            {"account": "mm-1", "endpoint": "open_orders", "status": "200"},
        )
        == 1
    )
    assert get("killswitch_rate_limit_per_second", {"account": "mm-1"}) == 3.0
    assert get("killswitch_inflight_cancels", {"account": "mm-1"}) == 1
    assert get("killswitch_cancels_total", {"account": "mm-1", "outcome": "sent"}) == 1
    assert get("killswitch_alert_to_first_cancel_seconds_count", {}) == 1
    assert get("killswitch_time_to_flat_seconds_count", {}) == 1
    assert get("killswitch_account_halted", {"account": "mm-1"}) == 1
    assert get("killswitch_residual_open_orders", {"account": "mm-1"}) == 2
    observer.request_done("mm-1", "cancel", "403", 0.01)
    assert readiness.evaluate(6.0).reasons == ("mm-1: auth rejected",)


# -- public endpoints and redirects ----------------------------------------------------------


def ready_with(*feed: tuple[str, str, float, str]) -> ReadyReport:
    r = Readiness.for_accounts(["mm-1"], STALE)
    r.set_consuming(True)
    for account, code, at, endpoint in feed:
        r.record_exchange(account, code, at, endpoint)
    return r.evaluate(20.0)


def test_an_unsigned_public_call_refused_does_not_call_the_key_refused() -> None:
    """The client signs public endpoints after such a refusal; the key is fine."""
    report = ready_with(
        ("mm-1", "401", 10, "exchange_info"),  # unsigned, refused
        ("mm-1", "200", 10, "exchange_info"),  # signed, accepted
        ("mm-1", "200", 11, "open_orders"),
    )
    assert report == ReadyReport(True)
    assert ready_with(("mm-1", "403", 10, "time"), ("mm-1", "200", 10, "time")).ready


def test_a_public_answer_does_not_clear_a_refused_key() -> None:
    report = ready_with(("mm-1", "401", 10, "cancel"), ("mm-1", "200", 11, "time"))
    assert report == ReadyReport(False, ("mm-1: auth rejected",))


def test_a_redirect_is_a_configuration_problem_until_that_endpoint_answers() -> None:
    report = ready_with(("mm-1", "200", 10, "time"), ("mm-1", "307", 11, "open_orders"))
    assert report == ReadyReport(
        False, ("mm-1: exchange answered 307 redirect on open_orders: check base_url",)
    )
    r = Readiness.for_accounts(["mm-1"], STALE)
    r.set_consuming(True)
    problem = "exchange answered 308 redirect to http://x/y on cancel_all: check base_url"
    r.redirected("mm-1", problem, "cancel_all")
    r.record_exchange("mm-1", "308", 12, "cancel_all")  # the reported Location stays
    r.record_exchange("mm-1", "200", 12, "time")
    # a signed read answering (the probe) says nothing about the cancel-all endpoint
    r.record_exchange("mm-1", "200", 13, "open_orders")
    assert r.evaluate(20.0).reasons == (f"mm-1: {problem}",)
    r.redirected("mm-1", "exchange answered 302 redirect to /t on time: check base_url", "time")
    assert r.evaluate(20.0).reasons == (
        f"mm-1: {problem}; exchange answered 302 redirect to /t on time: check base_url",
    )
    r.record_exchange("mm-1", "200", 14, "cancel_all")
    r.record_exchange("mm-1", "200", 14, "time")
    assert r.evaluate(20.0).ready


def test_readiness_observer_names_the_location_of_every_redirect() -> None:
    r = Readiness.for_accounts(["mm-1"], STALE)
    r.set_consuming(True)
    observer = ReadinessObserver(NullObserver(), r, clock=lambda: 10.0)
    observer.request_done("mm-1", "open_orders", "200", 0.01)
    observer.request_done("mm-1", "cancel", "307", 0.01)
    observer.redirected("mm-1", "cancel", 307, "https://elsewhere.invalid/v1")
    assert r.evaluate(11.0).reasons == (
        "mm-1: exchange answered 307 redirect to https://elsewhere.invalid/v1 on cancel: "
        "check base_url",
    )


def test_an_auth_refusal_keeps_the_clients_description() -> None:
    r = Readiness.for_accounts(["mm-1"], STALE)
    r.set_consuming(True)
    r.exchange_ok("mm-1", 10.0)
    why = "the clock offset could not be measured: x"
    r.auth_rejected("mm-1", why)
    r.record_exchange("mm-1", "401", 11, "open_orders")  # no description: the old one stays
    assert r.evaluate(12.0).reasons == (f"mm-1: auth rejected; {why}",)
    r.record_exchange("mm-1", "200", 13, "open_orders")
    assert r.evaluate(14.0).ready


def test_an_account_without_any_pair_list_is_not_ready_until_it_has_one() -> None:
    r = Readiness.for_accounts(["mm-1", "mm-2"], STALE)
    r.set_consuming(True)
    for account in ("mm-1", "mm-2"):
        r.record_exchange(account, "200", 10, "time")
        r.record_exchange(account, "200", 10, "open_orders")
    why = "no pair list: exchange-info failed (HTTP 503) and account has no `symbols` setting"
    r.pair_list("mm-2", why)
    r.pair_list("mm-1", None)  # a list from some source (configured ones count)
    assert r.evaluate(20.0) == ReadyReport(False, (f"mm-2: {why}",))
    r.record_exchange("mm-2", "200", 12, "open_orders")  # answers do not give it a list
    assert not r.evaluate(20.0).ready
    r.pair_list("mm-2", None)
    assert r.evaluate(20.0).ready


def test_a_refused_listing_is_not_ready_though_the_exchange_answers() -> None:
    r = Readiness.for_accounts(["mm-1"], STALE)
    r.set_consuming(True)
    r.record_exchange("mm-1", "200", 10, "time")
    r.record_exchange("mm-1", "400", 10, "open_orders")  # an answer: not stale
    why = "open orders refused at engine.page_size 100 (...): every kill's listing would be"
    r.listing("mm-1", why)
    assert r.evaluate(11.0) == ReadyReport(False, (f"mm-1: {why}",))
    r.record_exchange("mm-1", "200", 12, "open_orders")  # answers alone do not clear it
    assert not r.evaluate(13.0).ready
    r.listing("mm-1", None)
    assert r.evaluate(13.0).ready


def test_an_account_whose_pair_list_is_not_read_yet_is_not_ready_though_it_answered() -> None:
    # The daemon's first probe: the clock sync answers before exchange-info, which may
    # be retrying for seconds and end with no pair list at all.
    r = Readiness.for_accounts(["mm-1", "mm-2"], STALE)
    r.expect_pair_lists()
    r.set_consuming(True)
    for account in ("mm-1", "mm-2"):
        r.record_exchange(account, "200", 10, "time")
    assert r.evaluate(11.0) == ReadyReport(
        False,
        ("exchange: mm-1 pair list not read yet", "exchange: mm-2 pair list not read yet"),
    )
    r.pair_list("mm-1", None)
    why = "no pair list: exchange-info failed (HTTP 503) and account has no `symbols` setting"
    r.pair_list("mm-2", why)
    assert r.evaluate(11.0) == ReadyReport(False, (f"mm-2: {why}",))
    r.pair_list("mm-2", None)
    assert r.evaluate(11.0).ready


def test_an_unreachable_exchange_is_not_ready_until_a_signed_call_is_answered() -> None:
    r = Readiness.for_accounts(["mm-1"], STALE)
    r.set_consuming(True)
    r.record_exchange("mm-1", "200", 10, "open_orders")
    why = "throttled (HTTP 429) through every retry (gave up after 6 attempt(s))"
    r.unreachable("mm-1", why, throttled=True)
    assert r.evaluate(11.0) == ReadyReport(False, (f"exchange: mm-1 {why}",))
    # A public answer, or another 429 (what marked it), does not clear it: no flapping
    # while the retries of a throttled probe go on.
    r.record_exchange("mm-1", "200", 12, "time")
    r.record_exchange("mm-1", "429", 12, "open_orders")
    assert not r.evaluate(13.0).ready
    r.record_exchange("mm-1", "200", 14, "open_orders")
    assert r.evaluate(15.0).ready


def test_an_exchange_found_unreachable_is_cleared_by_any_answer_to_a_signed_call() -> None:
    """Not only by a 200: a 429 or a key refusal says the exchange answers again (the
    refusal is then the reason), so a stale "unreachable" is not shown after it."""
    for status, after in (("429", ()), ("401", ("mm-1: auth rejected",))):
        r = Readiness.for_accounts(["mm-1"], STALE)
        r.set_consuming(True)
        r.record_exchange("mm-1", "200", 10, "open_orders")
        r.unreachable("mm-1", "unreachable (gave up after 6 attempt(s); last ConnectError)")
        assert not r.evaluate(11.0).ready
        r.record_exchange("mm-1", status, 12, "open_orders")
        assert r.evaluate(13.0) == ReadyReport(not after, after), status
