"""The broker-loss policy's pure parts: when an account is due, what is held meanwhile."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from killswitch.config import ConfigError, load_settings
from killswitch.core.broker_loss import (
    SOURCE,
    BrokerLossClock,
    HeldOutputs,
    broker_loss_alert_id,
    broker_loss_reason,
)
from killswitch.core.model import Counts, HaltState, Scope, SweepResult, SweepStatus
from killswitch.exchange.signing import generate_private_key, private_key_pem

T0 = datetime(2026, 11, 29, 19, 5, 7, 123_000, tzinfo=UTC)


def clock(after: dict[str, float]) -> BrokerLossClock:
    return BrokerLossClock(after)


def test_nothing_is_due_while_the_link_is_up_or_unknown() -> None:
    c = clock({"mm-1": 5.0})
    assert c.due(1_000.0) == []
    assert c.next_due_in(1_000.0) is None
    c.link(True, 10.0)
    assert c.due(1_000.0) == []


def test_due_once_the_threshold_has_passed_since_the_loss() -> None:
    c = clock({"mm-1": 5.0})
    c.link(False, 100.0)
    assert c.due(104.9) == []
    assert c.next_due_in(104.0) == pytest.approx(1.0)
    assert c.due(105.0) == ["mm-1"]


def test_each_account_is_due_once_per_outage() -> None:
    c = clock({"mm-1": 5.0})
    c.link(False, 100.0)
    assert c.due(106.0) == ["mm-1"]
    assert c.due(200.0) == []
    assert c.next_due_in(200.0) is None


def test_accounts_fall_due_by_their_own_thresholds() -> None:
    c = clock({"mm-1": 5.0, "mm-2": 30.0, "mm-3": 5.0})
    c.link(False, 0.0)
    assert c.due(10.0) == ["mm-1", "mm-3"]
    assert c.next_due_in(10.0) == pytest.approx(20.0)
    assert c.due(30.0) == ["mm-2"]


def test_a_late_check_fires_at_once() -> None:
    c = clock({"mm-1": 5.0})
    c.link(False, 0.0)
    assert c.next_due_in(60.0) == 0.0
    assert c.due(60.0) == ["mm-1"]


def test_a_repeated_down_keeps_the_start_of_the_outage() -> None:
    c = clock({"mm-1": 5.0})
    c.link(False, 0.0)
    c.link(False, 4.0)  # still down: the clock runs from 0
    assert c.due(5.0) == ["mm-1"]


def test_the_broker_back_resets_the_clock_and_the_next_loss_fires_again() -> None:
    c = clock({"mm-1": 5.0})
    c.link(False, 0.0)
    c.link(True, 4.0)  # back before the threshold: nothing
    assert c.due(100.0) == []
    c.link(False, 100.0)
    assert c.due(104.0) == []
    assert c.due(105.0) == ["mm-1"]
    c.link(True, 110.0)
    c.link(False, 120.0)
    assert c.due(125.0) == ["mm-1"]  # a new outage: due again


def test_accounts_not_opted_in_are_never_due() -> None:
    c = clock({})
    c.link(False, 0.0)
    assert c.due(1e9) == []
    assert c.next_due_in(0.0) is None


def test_alert_id_names_the_account_and_the_utc_second() -> None:
    assert broker_loss_alert_id("mm-1", T0) == "broker-loss-mm-1-20261129T190507Z"
    assert broker_loss_alert_id("mm-1", T0, "1a2b3c4d") == (
        "broker-loss-mm-1-20261129T190507Z-1a2b3c4d"
    )
    assert SOURCE == "broker-loss"
    reason = broker_loss_reason(5.0, "kafka unreachable at 127.0.0.1:9092")
    assert reason == (
        "no Kafka broker for 5s (on_broker_loss_after_s): kafka unreachable at 127.0.0.1:9092"
    )


def result(alert_id: str, account: str = "mm-1") -> SweepResult:
    return SweepResult(
        alert_id, account, SweepStatus.FLAT, True, False, Counts(), 0, 1, T0, None, T0
    )


def state(account: str, halted: bool, alert_id: str) -> HaltState:
    return HaltState(account, halted, alert_id, T0, Scope(), by=SOURCE)


def test_held_results_are_bounded_oldest_dropped_first() -> None:
    held = HeldOutputs(max_results=2)
    assert not held
    for name in ("a", "b", "c"):
        held.hold_result(result(name))
    assert [r.alert_id for r in held.results] == ["b", "c"]
    assert held.dropped == 1
    assert held


def test_one_held_state_per_account_the_newest() -> None:
    held = HeldOutputs()
    held.hold_state(state("mm-1", True, "x"))
    held.hold_state(state("mm-2", True, "y"))
    held.hold_state(state("mm-1", False, "z"))
    assert held.states["mm-1"].alert_id == "z"
    assert set(held.states) == {"mm-1", "mm-2"}
    held.superseded("mm-1")
    assert set(held.states) == {"mm-2"}


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HeldOutputs(max_results=0)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("on_broker_loss_after_s = 30", 30.0),
        ("on_broker_loss_after_s = 0", "greater than 0"),
        ('on_broker_loss_after_s = "soon"', "valid number"),
    ],
)
def test_the_setting_is_off_by_default_and_checked(
    tmp_path: Path, line: str, expected: float | str | None
) -> None:
    key = tmp_path / "mm-1.pem"
    key.write_bytes(private_key_pem(generate_private_key()))
    path = tmp_path / "ks.toml"
    path.write_text(
        f'[[accounts]]\nid = "mm-1"\napi_key = "k"\nprivate_key_file = "{key}"\n{line}\n'
    )
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert "accounts.0.on_broker_loss_after_s" in str(info.value)
        assert expected in str(info.value)
    else:
        assert load_settings(path).accounts[0].on_broker_loss_after_s == expected
