"""Scope pairs against the exchange's pair list (pure): refusals, suggestions, verdicts."""

from __future__ import annotations

import pytest

from killswitch.core.pairs import (
    PairList,
    check_pairs,
    list_unchecked_reason,
    no_pair_list_reason,
    refusal_reason,
    suggest,
    unchecked_reason,
    unknown_pairs,
)

KNOWN = frozenset({"BTC_USDT", "ETH_USDT", "BTC_IDR", "SOL_USDT", "btc_usdt_legacy"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("btc_usdt", ["BTC_USDT"]),  # case only: that is what was meant
        ("BTCUSDT", ["BTC_USDT"]),  # separator left out
        ("btc-usdt", ["BTC_USDT"]),  # another separator
        ("BTC_USTD", ["BTC_USDT", "BTC_IDR", "ETH_USDT"]),  # typo: difflib, best first
        ("eth_usd", ["ETH_USDT", "BTC_USDT"]),  # difflib ignores case too
        ("NOPE_USDT", ["SOL_USDT", "ETH_USDT"]),
        ("XRP_IDR", []),  # nothing close
    ],
)
def test_suggest(name: str, expected: list[str]) -> None:
    assert suggest(name, KNOWN) == expected


def test_suggest_same_letters_sorted_and_capped() -> None:
    known = {"BTC_USDT", "BTCUSDT", "btc-usdt", "BTC.USDT", "ETH_USDT"}
    assert suggest("Btc_Usdt", known) == ["BTC.USDT", "BTCUSDT", "BTC_USDT"]
    assert suggest("BTC_USDT", known) == ["BTC.USDT", "BTCUSDT", "btc-usdt"]  # never itself


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (["BTC_USDT"], []),
        (["BTC_USDT", "ETH_USDT"], []),
        (["btc_usdt"], [("btc_usdt", ["BTC_USDT"])]),  # case-sensitive
        (["BTCUSDT", "BTC_USDT"], [("BTCUSDT", ["BTC_USDT"])]),
        (["NOPE_USDT", "btc_usdt", "NOPE_USDT"], [("NOPE_USDT", []), ("btc_usdt", ["BTC_USDT"])]),
    ],
)
def test_unknown_pairs(scope: list[str], expected: list[tuple[str, list[str]]]) -> None:
    got = unknown_pairs(scope, KNOWN)
    assert [name for name, _ in got] == [name for name, _ in expected]
    for (_, close), (_, want) in zip(got, expected, strict=True):
        assert close[: len(want)] == want
        if not want:
            assert "BTC_USDT" not in close


def test_refusal_reason_names_pairs_and_suggestions() -> None:
    text = refusal_reason([("NOPE_USDT", []), ("btc_usdt", ["BTC_USDT", "BTC_IDR"])])
    assert text == (
        "unknown pair(s): NOPE_USDT (no close match), btc_usdt (did you mean BTC_USDT or "
        "BTC_IDR?); the exchange does not list them (pair names are case-sensitive)"
    )


def test_reasons_for_missing_lists() -> None:
    assert no_pair_list_reason("HTTP 503") == (
        "no pair list: exchange-info failed (HTTP 503) and account has no `symbols` setting"
    )
    assert unchecked_reason("x").startswith(
        "pairs could not be checked against the exchange's pair list (x); "
    )


def test_only_the_configured_list_proves_nothing() -> None:
    assert list_unchecked_reason(EXCHANGE) is None
    assert list_unchecked_reason(STALE) is None  # the exchange's own answer, kept
    assert list_unchecked_reason(CONFIGURED) == unchecked_reason("exchange-info: HTTP 503")


EXCHANGE = PairList(KNOWN, "exchange")
STALE = PairList(frozenset({"BTC_USDT"}), "stale", "HTTP 503")
CONFIGURED = PairList(frozenset({"BTC_USDT", "ETH_USDT"}), "configured", "HTTP 503")


@pytest.mark.parametrize(
    ("scope", "lists", "refused", "unchecked"),
    [
        (None, {"a": None}, None, None),  # every pair: nothing to check
        (["BTC_USDT"], {"a": EXCHANGE}, None, None),
        (["BTC_USDT"], {"a": STALE}, None, None),  # a stale list still decides
        (["ETH_USDT"], {"a": EXCHANGE, "b": STALE}, "ETH_USDT", None),  # unknown to b
        (["btc_usdt"], {"a": EXCHANGE}, "btc_usdt (did you mean BTC_USDT?)", None),
        (["BTC_USDT"], {"a": EXCHANGE, "b": None}, None, ["b"]),
        (["NOPE_USDT"], {"a": None, "b": EXCHANGE}, "NOPE_USDT", None),  # refusal wins
        (["BTC_USDT"], {}, None, None),  # no account has a lister
        (["XRP_USDT"], {"a": STALE}, "XRP_USDT", None),  # a stale list still refuses
        # The configured list never refuses, and never proves anything.
        (["BTC_USDT"], {"b": CONFIGURED}, None, ["b"]),
        (["XRP_USDT"], {"b": CONFIGURED}, None, ["b"]),
        (["btc_usdt"], {"b": CONFIGURED}, None, ["b"]),
        (["XRP_USDT"], {"a": EXCHANGE, "b": CONFIGURED}, "XRP_USDT", None),
    ],
)
def test_check_pairs(
    scope: list[str] | None,
    lists: dict[str, PairList | None],
    refused: str | None,
    unchecked: list[str] | None,
) -> None:
    verdict = check_pairs(scope, lists, {"b": "HTTP 503"})
    if refused is None:
        assert verdict.refusal is None
    else:
        assert verdict.refusal is not None
        assert refused in verdict.refusal
    if unchecked is None:
        assert verdict.unchecked is None
    else:
        assert verdict.unchecked is not None
        assert sorted(verdict.unchecked) == unchecked
        assert all("HTTP 503" in why for why in verdict.unchecked.values())


def test_pair_list_membership() -> None:
    assert "BTC_USDT" in EXCHANGE
    assert "btc_usdt" not in EXCHANGE
