"""The pure parts of ``trigger --direct``: the audit file, the report, the JSON document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from killswitch.board import Board
from killswitch.contracts import Alert, ResultRecord, result_to_json
from killswitch.core.model import Counts, SweepResult, SweepStatus
from killswitch.direct import DirectRun, append_audit, direct_document, report_lines

NOW = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)


def alert(**kw: object) -> Alert:
    data = {
        "schema": "killswitch.alert/v1",
        "alert_id": "op-1",
        "action": "kill",
        "source": "operator-cli",
        "reason": "desk runaway",
        "scope": {"accounts": ["mm-1"]},
        "created_at": "2026-11-24T01:02:03.000Z",
        "operator": {"name": "alice"},
    } | kw
    return Alert.model_validate(data)


def result(status: SweepStatus = SweepStatus.FLAT) -> SweepResult:
    return SweepResult(
        alert_id="op-1",
        account="mm-1",
        status=status,
        final=True,
        dry_run=False,
        counts=Counts(sent=3),
        residual_open=0,
        sweeps=1,
        received_at=NOW,
        first_cancel_at=NOW,
        finished_at=NOW,
        operator="alice",
        source="operator-cli",
        trigger_reason="desk runaway",
    )


def test_audit_lines_are_appended_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "audit.jsonl"
    assert append_audit(path, []) is None
    assert not path.exists()  # nothing done, nothing written
    record = result_to_json(ResultRecord.of(result()))
    assert append_audit(path, [record]) is None
    assert append_audit(path, [record, record]) is None
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    assert lines[0]["audit"] == "killswitch.audit/v1"
    assert lines[0]["trigger_reason"] == "desk runaway"
    assert path.stat().st_mode & 0o777 == 0o600
    blocked = tmp_path / "file"
    blocked.write_text("")
    error = append_audit(blocked / "audit.jsonl", [record])
    assert error is not None
    assert str(blocked) in error


def test_report_and_document_say_where_the_result_went() -> None:
    board = Board("op-1", ["mm-1"])
    board.apply_result(result_to_json(ResultRecord.of(result())))
    run = DirectRun(alert(latch=True), board, results=[result()], audit_file=Path("/a.jsonl"))
    run.kafka_detail = "Kafka at k:9092 not reachable (KafkaConnectionError)"
    run.latch_published = False
    run.exit_code = 1
    lines = report_lines(run)
    assert lines[0].startswith("kill op-1: flat on 1/1")
    assert "results NOT published to Kafka: Kafka at k:9092 not reachable" in lines[1]
    assert lines[2].startswith("WARNING: the latch is NOT in force")
    assert lines[3] == "audit: 1 result(s) appended to /a.jsonl"
    document = direct_document(run)
    assert document["via"] == "direct"
    assert (document["operator"], document["trigger_reason"]) == ("alice", "desk runaway")
    assert document["kafka"] == {
        "published": False,
        "detail": run.kafka_detail,
        "latch_published": False,
    }
    (record,) = document["results"]
    assert record["via"] == "direct"
    assert record["status"] == "flat"
    json.dumps(document)  # serialisable as it is printed


def test_a_refused_direct_kill_reports_the_refusal() -> None:
    board = Board("op-1", ["mm-1"])
    board.apply_dead_letter({"alert_id": "op-1", "kind": "invalid", "reason": "unknown pair"})
    run = DirectRun(alert(), board, refusal="unknown pair(s): BTC_USDX")
    assert board.exit_code() == 2
    lines = report_lines(run)
    assert "refused before any request: unknown pair(s): BTC_USDX" in lines
    assert not any(line.startswith("audit:") for line in lines)
