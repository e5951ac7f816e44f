"""KafkaLink: when the link to the broker changes state, and when a summary is due."""

from __future__ import annotations

from killswitch.core.kafka_link import KafkaLink, LinkChange


def test_first_outcome_is_a_change_either_way() -> None:
    assert KafkaLink().probe_ok(1.0) == LinkChange(True, "broker answers", 1.0)
    assert KafkaLink().probe_failed("no", 1.0) == LinkChange(False, "no", 1.0)


def test_only_changes_are_reported() -> None:
    link = KafkaLink()
    assert link.probe_ok(0.0) is not None
    assert link.probe_ok(1.0) is None
    assert link.probe_failed("refused", 2.0) == LinkChange(False, "refused", 2.0)
    assert link.probe_failed("timed out", 3.0) is None
    assert link.reason == "timed out"  # the latest reason, for readiness
    assert link.up is False


def test_recovery_reports_downtime_and_errors_then_resets_the_count() -> None:
    link = KafkaLink()
    link.probe_ok(0.0)
    link.probe_failed("refused", 10.0)
    for _ in range(500):
        link.client_error()
    change = link.probe_ok(25.0)
    assert change == LinkChange(True, "broker answers", 25.0, errors=500, down_for_s=15.0)
    assert link.errors == 0
    assert link.since == 25.0


def test_summary_every_period_while_down_only() -> None:
    link = KafkaLink(summary_every_s=30.0)
    link.probe_ok(0.0)
    assert not link.summary_due(100.0)  # up: never
    link.probe_failed("refused", 100.0)
    assert not link.summary_due(129.9)
    assert link.summary_due(130.0)
    assert not link.summary_due(131.0)  # the period restarted
    assert link.summary_due(160.0)
    link.probe_ok(161.0)
    assert not link.summary_due(500.0)


def test_unknown_link_has_no_summary() -> None:
    assert not KafkaLink(summary_every_s=0.0).summary_due(100.0)
