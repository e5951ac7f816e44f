"""The dead-man decision (pure, injected clock) and its alert messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

import pytest

from killswitch.config import AlertScope, DeadmanSource
from killswitch.contracts import Alert, encode_heartbeat, parse_alert, parse_heartbeat
from killswitch.core.deadman import DeadmanMonitor, Firing, HeartbeatVerdict
from killswitch.kafka.deadman import deadman_alert_id, deadman_alerts

# Events: ("hb", t) heartbeat at t, ("hb_age", t, age) heartbeat t with age, ("check", t)
# expecting the listed sources to fire.
Event = (
    tuple[Literal["hb"], float]
    | tuple[Literal["hb_age"], float, float]
    | tuple[Literal["check"], float, list[str]]
)
TABLE: list[tuple[str, list[Event]]] = [
    (
        "silent past the timeout fires once",
        [("check", 10.0, []), ("check", 10.1, ["bot"]), ("check", 50, [])],
    ),
    ("heartbeats keep it quiet", [("hb", 5), ("check", 14.9, []), ("hb", 14), ("check", 24, [])]),
    ("exactly the timeout is not yet silence", [("hb", 5), ("check", 15.0, [])]),
    (
        "resumed heartbeats re-arm",
        [("check", 11, ["bot"]), ("hb", 12), ("check", 21, []), ("check", 22.5, ["bot"])],
    ),
    ("a stale heartbeat does not count", [("hb_age", 9, 11.0), ("check", 10.5, ["bot"])]),
    ("a fresh heartbeat with age counts", [("hb_age", 9, 1.0), ("check", 10.5, [])]),
]


@pytest.mark.parametrize(("case", "events"), TABLE, ids=[t[0] for t in TABLE])
def test_deadman_table(case: str, events: list[Event]) -> None:
    monitor = DeadmanMonitor({"bot": 10.0}, now=0.0)
    for event in events:
        if event[0] == "hb":
            monitor.heard("bot", event[1])
        elif event[0] == "hb_age":
            monitor.heard("bot", event[1], age_s=event[2])
        else:
            fired = [f.source for f in monitor.check(event[1])]
            assert fired == event[2], f"{case}: at t={event[1]}"


def test_heartbeat_verdicts() -> None:
    monitor = DeadmanMonitor({"bot": 10.0}, now=0.0)
    assert monitor.heard("other", 1) is HeartbeatVerdict.UNKNOWN
    assert monitor.heard("bot", 1) is HeartbeatVerdict.ALIVE
    assert monitor.heard("bot", 2, age_s=30) is HeartbeatVerdict.STALE
    assert monitor.check(20)[0].silent_s == pytest.approx(19)
    assert monitor.fired() == ["bot"]
    assert monitor.heard("bot", 21, sent_ms=5) is HeartbeatVerdict.RESUMED
    assert monitor.fired() == []


def test_sources_are_independent_and_next_due() -> None:
    monitor = DeadmanMonitor({"fast": 1.0, "slow": 5.0}, now=0.0)
    assert monitor.next_due(0.25) == pytest.approx(0.75)
    assert [f.source for f in monitor.check(1.5)] == ["fast"]
    assert monitor.next_due(1.5) == pytest.approx(3.5)
    assert [f.source for f in monitor.check(6)] == ["slow"]
    assert monitor.next_due(6) is None


def test_firing_remembers_the_last_heartbeat_time() -> None:
    monitor = DeadmanMonitor({"bot": 1.0}, now=0.0)
    monitor.heard("bot", 0.5, sent_ms=1000)
    monitor.heard("bot", 0.6, sent_ms=900)  # reordered: keeps the latest
    (firing,) = monitor.check(2)
    assert firing.last_sent_ms == 1000


def test_alert_id_is_deterministic_per_silence() -> None:
    heard = Firing("mm bot/1", 12.0, 10.0, 1700)
    assert deadman_alert_id("mm bot/1", heard, 5) == "deadman-mm_bot_1-1700"
    never = Firing("bot", 12.0, 10.0, None)
    assert deadman_alert_id("bot", never, 5) == "deadman-bot-s5"


def test_deadman_alerts_are_valid_alerts_one_per_account() -> None:
    config = DeadmanSource(
        source="bot",
        timeout_s=10,
        latch=True,
        scope=AlertScope(accounts="*", symbols=["BTC_USDT"], sides=["SELL"]),
    )
    now = datetime(2026, 11, 24, tzinfo=UTC)
    out = deadman_alerts(
        config,
        Firing("bot", 12.5, 10, None),
        accounts=["mm-1", "mm-2"],
        alert_id="deadman-bot-s1",
        now=now,
    )
    assert [account for account, _ in out] == ["mm-1", "mm-2"]
    for account, message in out:
        parsed = parse_alert(
            json.dumps(message).encode(),
            channel="alerts",
            accounts=["mm-1", "mm-2"],
            max_message_bytes=10_000,
            max_order_ids=10,
            now=now,
        )
        assert isinstance(parsed, Alert)
        assert parsed.source == "deadman"
        assert parsed.scope.accounts == [account]
        assert parsed.scope.symbols == ["BTC_USDT"]
        assert parsed.latch is True
        assert "12.5s" in parsed.reason


def test_heartbeat_round_trip_and_garbage() -> None:
    now = datetime(2026, 11, 24, 1, 2, 3, 456000, tzinfo=UTC)
    beat = parse_heartbeat(encode_heartbeat("bot", now))
    assert not isinstance(beat, str)
    assert (beat.source, beat.sent_at) == ("bot", now)
    assert isinstance(parse_heartbeat(b"nope"), str)
    assert isinstance(parse_heartbeat(b'{"schema": "killswitch.heartbeat/v1"}'), str)
    minimal = parse_heartbeat(b'{"schema": "killswitch.heartbeat/v1", "source": "x"}')
    assert not isinstance(minimal, str)
    assert minimal.sent_at is None
