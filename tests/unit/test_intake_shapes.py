"""Alerts alike (pure): the intake plans the alerts of a run that differ only in their
own fields (id, times, signature) once, and copies the requests with each alert's id
and read time. These tests pin what that relies on."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from killswitch.contracts import Alert, kill_requests
from killswitch.core.pairs import PairList
from killswitch.kafka.consumer import (
    Intake,
    _request_maker,
    _RunShapes,
    shared_fields,
)
from tests.support.intake import offline_intake

NOW = datetime(2026, 11, 30, 2, 0, 0, tzinfo=UTC)
ACCOUNTS = ("mm-1", "mm-2", "arb-1")
OWN = {"alert_id", "created_at", "expires_at", "signature"}


def alike(a: Alert, b: Alert) -> bool:
    """What a run's shape compares (``_KillShape.fits``): the alerts' shared fields."""
    return bool(shared_fields(a) == shared_fields(b))


def alert(**changes: Any) -> Alert:
    body: dict[str, Any] = {
        "schema": "killswitch.alert/v1",
        "alert_id": "storm-1",
        "action": "kill",
        "source": "risk-engine",
        "reason": "VaR limit breached",
        "scope": {"accounts": ["mm-1", "mm-2"], "symbols": ["BTC_USDT"], "sides": ["BUY"]},
        "latch": False,
        "dry_run": False,
        "created_at": "2026-11-30T01:59:00.000Z",
        "expires_at": "2026-11-30T02:05:00.000Z",
        "deadline_s": 12.5,
        "operator": {"name": "alice"},
        "signature": "c2lnbmF0dXJl",
        **changes,
    }
    return Alert.model_validate(body)


def test_alerts_differing_in_their_own_fields_are_alike_and_request_the_same() -> None:
    first = alert()
    other = alert(
        alert_id="storm-2",
        created_at="2026-11-30T01:59:01.000Z",
        expires_at="2026-11-30T02:06:00.000Z",
        signature="b3RoZXI=",
    )
    assert alike(first, other)
    later = NOW + timedelta(milliseconds=3)
    requests = kill_requests(first, accounts=ACCOUNTS, received_at=NOW, default_deadline_s=30)
    requests = [dataclasses.replace(r, unchecked_pairs="why") for r in requests]
    copied = [_request_maker(r)(alert_id=other.alert_id, received_at=later) for r in requests]
    expected = kill_requests(other, accounts=ACCOUNTS, received_at=later, default_deadline_s=30)
    assert copied == [dataclasses.replace(r, unchecked_pairs="why") for r in expected]


# One change per field an alert shares with the alerts alike: each makes them unlike.
SHARED_CHANGES: dict[str, dict[str, Any]] = {
    "schema_": {},  # a single value: nothing to change
    "action": {"action": "release"},
    "source": {"source": "other-engine"},
    "reason": {"reason": "another reason"},
    "scope": {"scope": {"accounts": ["mm-1", "mm-2"], "symbols": ["ETH_USDT"], "sides": ["BUY"]}},
    "latch": {"latch": True},
    "dry_run": {"dry_run": True},
    "deadline_s": {"deadline_s": 13},
    "operator": {"operator": {"name": "bob"}},
}


def test_every_field_but_the_own_ones_is_compared() -> None:
    # A field added to alerts must be placed here (shared) or in OWN (each alert's own,
    # and then never read by kill_requests or the pair check).
    assert set(SHARED_CHANGES) == set(Alert.model_fields) - OWN


@pytest.mark.parametrize(
    "field", sorted(f for f, change in SHARED_CHANGES.items() if change), ids=str
)
def test_alerts_differing_in_a_shared_field_are_not_alike(field: str) -> None:
    assert not alike(alert(), alert(alert_id="storm-2", **SHARED_CHANGES[field]))


@pytest.mark.parametrize(
    "scope",
    [
        {"accounts": ["mm-2", "mm-1"], "symbols": ["BTC_USDT"], "sides": ["BUY"]},
        {"accounts": "*", "symbols": ["BTC_USDT"], "sides": ["BUY"]},
        {"accounts": ["mm-1", "mm-2"], "sides": ["BUY"]},
        {"accounts": ["mm-1", "mm-2"], "symbols": ["BTC_USDT"]},
        {"accounts": ["mm-1", "mm-2"], "symbols": ["BTC_USDT"], "sides": ["BUY"], "order_ids": [7]},
    ],
    ids=["accounts-order", "all-accounts", "all-symbols", "all-sides", "order-ids"],
)
def test_alerts_differing_in_any_part_of_the_scope_are_not_alike(scope: dict[str, Any]) -> None:
    assert not alike(alert(), alert(alert_id="storm-2", scope=scope))


def test_optional_fields_absent_on_one_side_make_alerts_unlike() -> None:
    bare = {"deadline_s": None, "operator": None}
    assert alike(alert(**bare), alert(alert_id="storm-2", **bare))
    assert not alike(alert(), alert(alert_id="storm-2", operator=None))
    assert not alike(alert(), alert(alert_id="storm-2", deadline_s=None))


# A run's alerts alike skip the pair-list check (Intake._member): the run's shape was
# made for an alert that needed no fetch. These pin that the skip answers as the check
# would, including after a fresh list went stale on the clock within the run.


@dataclass
class _Lister:
    """A pair list as the exchange client keeps it: ``fresh`` says whether it is still
    within its lifetime (the client's clock)."""

    symbols: frozenset[str]
    fresh: bool = True

    def cached_pair_list(self) -> PairList:
        if self.fresh:
            return PairList(self.symbols, "exchange")
        return PairList(self.symbols, "stale", "older than exchange_info_ttl_s")

    async def pair_list(self) -> PairList:
        return self.cached_pair_list()


def _storm_intake(lister: _Lister, accounts: tuple[str, ...] = ("mm-1",)) -> Intake:
    return offline_intake(accounts, pairs=dict.fromkeys(accounts, lister))


def _record(
    offset: int, symbol: str = "BTC_USDT", accounts: tuple[str, ...] = ("mm-1",)
) -> ConsumerRecord[bytes, bytes]:
    body = {
        "schema": "killswitch.alert/v1",
        "alert_id": f"storm-{offset}",
        "action": "kill",
        "source": "risk-engine",
        "reason": "storm",
        "scope": {"accounts": list(accounts), "symbols": [symbol]},
        "created_at": "2026-11-30T01:59:00.000Z",
    }
    value = json.dumps(body).encode()
    return ConsumerRecord("killswitch.alerts", 0, offset, 0, 0, b"mm-1", value, None, 0, 0, [])


TP = TopicPartition("killswitch.alerts", 0)


async def test_alike_alerts_of_a_run_are_planned_without_a_pair_fetch() -> None:
    lister = _Lister(frozenset({"BTC_USDT"}))
    intake = _storm_intake(lister)
    shapes = _RunShapes()
    first = intake._member(TP, _record(0), 0, shapes)
    lister.fresh = False  # stale, every pair still in it: no fetch either way
    second = intake._member(TP, _record(1), 0, shapes)
    assert first is not None
    assert second is not None
    assert second.step is not None
    assert second.step.request.alert_id == "storm-1"
    assert second.plan.rejection is None


async def test_an_alike_alert_after_a_refusal_is_checked_again() -> None:
    # A pair missing from a fresh list refuses the first alert; once the list is stale
    # the pair may be new on the exchange, so the next alike alert waits for a fetch
    # (None: handled on its own) instead of taking the run's refusal.
    lister = _Lister(frozenset({"ETH_USDT"}))
    intake = _storm_intake(lister)
    shapes = _RunShapes()
    first = intake._member(TP, _record(0), 0, shapes)
    assert first is not None
    assert first.plan.rejection is not None
    lister.fresh = False
    assert intake._member(TP, _record(1), 0, shapes) is None


@pytest.mark.parametrize("owned", [("mm-1", "mm-2"), ("mm-1",), ()], ids=["all", "one", "none"])
async def test_every_alert_of_a_run_forwards_the_accounts_another_daemon_owns(
    owned: tuple[str, ...],
) -> None:
    accounts = ("mm-1", "mm-2")
    intake = _storm_intake(_Lister(frozenset({"BTC_USDT"})), accounts)
    intake._owner_here = lambda account: account in owned  # type: ignore[method-assign]
    shapes = _RunShapes()
    for offset in range(3):  # the first makes the run's shape, the others fit it
        member = intake._member(TP, _record(offset, accounts=accounts), 0, shapes)
        assert member is not None
        assert [step.request.account for step in member.plan.steps] == list(owned)
        assert [account for account, _ in member.plan.forwards] == [
            a for a in accounts if a not in owned
        ]
