"""Pair names in a kill's scope against the exchange's pair list (pure, no I/O).

A scope naming a pair the exchange does not list cannot be killed: listing open orders
there may answer ``[]`` as readily as an error, and neither proves anything. So such a
scope is refused before any request, with the known pairs that look close. Names are
compared case-sensitively (the exchange's own rule); suggestions ignore case and
separators, so ``btc_usdt`` and ``BTCUSDT`` both point at ``BTC_USDT``.

:class:`PairList` says where a pair list came from, so callers can tell a fresh
answer of the exchange from a kept (stale) one or the account's configured fallback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "EXCHANGE_PAIR_RE",
    "PAIR_NAME_RE",
    "PairList",
    "PairSource",
    "PairVerdict",
    "check_pairs",
    "list_unchecked_reason",
    "no_pair_list_reason",
    "refusal_reason",
    "suggest",
    "unchecked_reason",
    "unknown_pairs",
]

PairSource = Literal["exchange", "stale", "configured"]
"""``exchange``: the exchange answered within the cache lifetime; ``stale``: the last
good answer, older than that (not refreshed yet, or kept because a refresh failed);
``configured``: the account's ``symbols`` setting, because the exchange never answered.

Only the exchange's own lists (``exchange`` and ``stale``) may refuse a pair or prove a
kill flat: the configured list is the operator's belief, not the exchange's answer."""

# What a pair name in an alert's scope may look like (a typo here is refused with
# suggestions by the pair check, not by the parser).
PAIR_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"
# How the exchange writes a pair (docs/EXCHANGE.md): upper-case ``BASE_QUOTE``. The
# ``symbols`` setting must match it: a miscased entry there would be listed in vain.
EXCHANGE_PAIR_RE = r"^[A-Z0-9]{1,20}_[A-Z0-9]{1,20}$"
MAX_SUGGESTIONS = 3
# difflib's similarity ratio a known pair needs to be suggested.
_CUTOFF = 0.6
_SEPARATORS = re.compile(r"[^0-9A-Z]")


@dataclass(frozen=True, slots=True)
class PairList:
    """The pairs an account can trade, and where that list came from.

    ``error`` says why the exchange's current answer is not in it (``stale`` and
    ``configured`` lists: the refresh's error, or that the list is past its lifetime),
    else None.
    """

    symbols: frozenset[str]
    source: PairSource
    error: str | None = None

    def __contains__(self, symbol: object) -> bool:
        return symbol in self.symbols


def _folded(name: str) -> str:
    """Upper case without separators: ``btc_usdt``, ``BTC-USDT``, ``BTCUSDT`` fold alike."""
    return _SEPARATORS.sub("", name.upper())


def suggest(name: str, known: Collection[str], limit: int = MAX_SUGGESTIONS) -> list[str]:
    """Known pairs close to ``name``, at most ``limit``: those with the same letters
    ignoring case and separators (sorted) when there are any, they are what was meant;
    else difflib's closest, compared case-insensitively, best first."""
    folded = _folded(name)
    same = sorted(k for k in known if _folded(k) == folded and k != name)
    if same:
        return same[:limit]
    by_upper: dict[str, list[str]] = {}
    for k in known:
        by_upper.setdefault(k.upper(), []).append(k)
    close = difflib.get_close_matches(name.upper(), list(by_upper), n=limit, cutoff=_CUTOFF)
    return [k for upper in close for k in sorted(by_upper[upper])][:limit]


def unknown_pairs(
    scope_symbols: Iterable[str], known: Collection[str]
) -> list[tuple[str, list[str]]]:
    """The scope's pairs missing from ``known`` (case-sensitive), each with suggestions,
    in sorted order."""
    return [
        (name, suggest(name, known)) for name in sorted(set(scope_symbols)) if name not in known
    ]


def refusal_reason(unknown: Sequence[tuple[str, list[str]]]) -> str:
    """The dead-letter reason for a scope naming pairs the exchange does not list."""
    parts = []
    for name, close in unknown:
        hint = "did you mean " + " or ".join(close) + "?" if close else "no close match"
        parts.append(f"{name} ({hint})")
    return (
        f"unknown pair(s): {', '.join(parts)}; the exchange does not list them "
        "(pair names are case-sensitive)"
    )


def unchecked_reason(why: str) -> str:
    """Why a kill ran without its pairs checked against the exchange's own list: it can
    then never end ``flat``."""
    return (
        f"pairs could not be checked against the exchange's pair list ({why}); "
        "an empty listing does not prove flat"
    )


def list_unchecked_reason(pairs: PairList) -> str | None:
    """Why pairs taken from ``pairs`` prove nothing about the exchange (a kill listing
    them can never end ``flat``), or None for the exchange's own list, fresh or stale."""
    if pairs.source != "configured":
        return None
    return unchecked_reason(f"exchange-info: {pairs.error or 'no answer'}")


def no_pair_list_reason(error: str) -> str:
    """No source of pairs at all: the exchange failed and nothing is configured."""
    return f"no pair list: exchange-info failed ({error}) and account has no `symbols` setting"


@dataclass(frozen=True, slots=True)
class PairVerdict:
    """The decision on one alert's pairs across its target accounts.

    ``refusal`` is the dead-letter reason when a pair is unknown to any account that
    has a pair list from the exchange (fresh or stale). ``unchecked`` maps each account
    without one (no list at all, or only the configured ``symbols``) to the reason its
    result can never be ``flat``.
    """

    refusal: str | None = None
    unchecked: Mapping[str, str] | None = None


def check_pairs(
    scope_symbols: Collection[str] | None,
    lists: Mapping[str, PairList | None],
    errors: Mapping[str, str] | None = None,
) -> PairVerdict:
    """Check a scope's pairs against each target account's list.

    ``scope_symbols`` None (every pair) needs no check. ``lists`` maps account to its
    pair list, None when the account has none (``errors`` then says why). A configured
    list never refuses: a pair missing from it may well be traded, so such a kill runs,
    unchecked.
    """
    if scope_symbols is None:
        return PairVerdict()
    unknown: dict[str, list[str]] = {}
    unchecked: dict[str, str] = {}
    for account, pairs in lists.items():
        if pairs is None:
            why = (errors or {}).get(account) or "no pair list"
            unchecked[account] = unchecked_reason(why)
            continue
        blind = list_unchecked_reason(pairs)
        if blind is not None:
            unchecked[account] = blind
            continue
        for name, close in unknown_pairs(scope_symbols, pairs.symbols):
            unknown.setdefault(name, close)
    if unknown:
        return PairVerdict(refusal=refusal_reason(sorted(unknown.items())))
    return PairVerdict(unchecked=unchecked or None)
