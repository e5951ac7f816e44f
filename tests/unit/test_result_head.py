"""A result's head header (pure): its codec, that it says what the body says, and that
the results reader learns a final result from it and anything doubtful from the body."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from killswitch.config import KafkaSettings
from killswitch.contracts import (
    RESULT_HEAD_HEADER,
    ResultHead,
    ResultRecord,
    decode_result_summary,
    encode_result,
    encode_result_head,
    encode_results,
    read_result_head,
)
from killswitch.core.dedup import DedupWindow
from killswitch.core.model import Position, SweepResult
from killswitch.kafka.outputs import result_headers
from killswitch.kafka.readers import ResultsIndex, final_head, of_another_alert
from tests.support.results import sent_result

ORIGIN = Position("killswitch.alerts", 2, 1841)
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "CONTRACTS.md"


def result(*, final: bool = True, alert_id: str = "a-1", account: str = "mm-1") -> SweepResult:
    return sent_result(alert_id, account, final=final)


# ------------------------------------------------------------------------- codec


@pytest.mark.parametrize(
    "head",
    [
        ResultHead("a-1", "mm-1", "flat", True, ORIGIN),
        ResultHead("a-1", "mm-1", "running", False, None),
        # Strings JSON must escape, and text beyond ASCII (written as UTF-8).
        ResultHead('q"uo\\te', 'acc"ount\n', "flat", True, Position('t"o\\p', 0, 0)),
        ResultHead("a-1", "kōnto-✓", "dúplicate", True, Position("ü", 7, 2**62)),
    ],
)
def test_a_head_reads_back_as_written(head: ResultHead) -> None:
    raw = encode_result_head(head.alert_id, head.account, head.status, head.final, head.origin)
    assert read_result_head(raw) == head
    assert json.loads(raw)["origin"] == (
        None if head.origin is None else dataclasses.asdict(head.origin)
    )


def test_the_head_is_compact_json_with_exactly_its_five_fields() -> None:
    raw = encode_result_head("risk-7f3a", "mm-1", "flat", True, ORIGIN)
    assert raw == (
        b'{"alert_id":"risk-7f3a","account":"mm-1","status":"flat","final":true,'
        b'"origin":{"topic":"killswitch.alerts","partition":2,"offset":1841}}'
    )
    # The example in docs/CONTRACTS.md is this very value.
    assert raw.decode() in CONTRACTS.read_text()


GOOD = {
    "alert_id": "a-1",
    "account": "mm-1",
    "status": "flat",
    "final": True,
    "origin": {"topic": "t", "partition": 0, "offset": 5},
}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"alert_id": "a-1"',
        b"x" * 4096,
        # a field missing, empty or not of its type
        *[json.dumps({k: v for k, v in GOOD.items() if k != name}).encode() for name in GOOD],
        json.dumps(GOOD | {"alert_id": ""}).encode(),
        json.dumps(GOOD | {"account": ""}).encode(),
        json.dumps(GOOD | {"status": ""}).encode(),
        json.dumps(GOOD | {"account": 7}).encode(),
        json.dumps(GOOD | {"final": 1}).encode(),
        json.dumps(GOOD | {"final": "true"}).encode(),
        json.dumps(GOOD | {"origin": {"topic": "t", "partition": 0}}).encode(),
        json.dumps(GOOD | {"origin": {"topic": "t", "partition": True, "offset": 1}}).encode(),
        json.dumps(GOOD | {"origin": "t:0:5"}).encode(),
        # a head that says two things: never learned from
        b'{"alert_id":"a-1","account":"mm-1","status":"flat","final":false,"final":true,'
        b'"origin":null}',
        b'{"alert_id":"a-1","account":"mm-1","status":"flat","final":true,"origin":NaN}',
    ],
)
def test_an_unreadable_head_reads_as_none(raw: bytes | None) -> None:
    assert read_result_head(raw) is None


def test_unknown_keys_of_a_head_are_ignored() -> None:
    raw = json.dumps(GOOD | {"added_later": 1}).encode()
    assert read_result_head(raw) == ResultHead("a-1", "mm-1", "flat", True, Position("t", 0, 5))


# ------------------------------------------------- the head says what the body says


def _head_of(headers: Sequence[tuple[str, bytes]]) -> ResultHead | None:
    [(name, value)] = headers
    assert name == RESULT_HEAD_HEADER
    return read_result_head(value)


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("origin", [ORIGIN, None])
def test_the_head_written_is_what_the_body_says(final: bool, origin: Position | None) -> None:
    written = ResultRecord.of(result(final=final, alert_id='a"1', account="mm-✓"), origin)
    # One record (``Publisher.result``) and a sweep's group (``Publisher.results``).
    group = [written, dataclasses.replace(written, alert_id="a-2")]
    bodies = [encode_result(written), *encode_results(group)]
    for one, body in zip([written, *group], bodies, strict=True):
        summary = decode_result_summary(body)
        assert summary is not None
        said = (summary.alert_id, summary.account, summary.status, summary.final, summary.origin)
        head = _head_of(result_headers(one))
        assert head is not None
        assert (head.alert_id, head.account, head.status, head.final, head.origin) == said


# --------------------------------------------------------------- the reader's part


@dataclass(frozen=True)
class Rec:
    """A consumed record, as the reader sees one."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def published(res: SweepResult, origin: Position | None = ORIGIN) -> Rec:
    """A record as ``Publisher`` writes it: key, body and head."""
    record = ResultRecord.of(res, origin)
    return Rec(res.account.encode(), encode_result(record), result_headers(record))


def index() -> ResultsIndex:
    return ResultsIndex(KafkaSettings(), "results", DedupWindow(10), tail_records=10)


def test_a_final_result_is_learned_from_its_head_alone() -> None:
    reader = index()
    # A body that is no result at all: only the head can teach the reader this one.
    record = dataclasses.replace(published(result()), value=b"not read")
    reader._learn_records([record])
    assert reader._dedup.status("a-1", "mm-1") == "flat"
    assert not reader._dedup.decide("a-1", ["mm-1"], ORIGIN).reused  # origin learned too
    assert reader._dedup.decide("a-1", ["mm-1"], Position("x", 0, 0)).reused
    assert (reader.learned, reader.read_heads) == (1, 1)


def test_a_record_without_a_head_is_learned_from_its_body() -> None:
    reader = index()
    reader._learn_records([dataclasses.replace(published(result()), headers=())])
    assert reader._dedup.status("a-1", "mm-1") == "flat"
    assert (reader.learned, reader.read_heads) == (1, 0)


def test_a_progress_result_is_read_from_its_body_for_what_it_carries() -> None:
    reader = index()
    reader._learn_records([published(result(final=False))])
    carried = reader.carried("a-1", "mm-1")
    assert carried is not None
    assert [o.order_id for o in carried.orders] == [1, 2]
    assert reader._dedup.status("a-1", "mm-1") is None
    assert reader.read_heads == 0


def _head(**fields: object) -> tuple[str, bytes]:
    return (RESULT_HEAD_HEADER, json.dumps(GOOD | {"account": "mm-1"} | fields).encode())


@pytest.mark.parametrize(
    "headers",
    [
        [(RESULT_HEAD_HEADER, b"{unreadable")],
        [_head(account="mm-2")],  # another account than the record's key
        [_head(), _head()],  # two heads
        [_head(final=False)],
        [("other.header", _head()[1])],
    ],
)
def test_a_doubtful_head_leaves_the_record_to_its_body(
    headers: list[tuple[str, bytes]],
) -> None:
    # The body is a progress result: whatever the head claims, nothing is final yet.
    record = dataclasses.replace(published(result(final=False)), headers=headers)
    assert final_head(record) is None
    reader = index()
    reader._learn_records([record])
    assert reader._dedup.status("a-1", "mm-1") is None
    assert reader.carried("a-1", "mm-1") is not None
    assert reader.read_heads == 0


def test_a_final_head_is_trusted_only_with_the_records_key() -> None:
    record = published(result())
    assert final_head(record) == ResultHead("a-1", "mm-1", "flat", True, ORIGIN)
    assert final_head(dataclasses.replace(record, key=None)) is None
    assert final_head(dataclasses.replace(record, key=b"mm-2")) is None


def test_a_head_naming_an_account_no_key_can_be_is_left_to_the_body() -> None:
    # A JSON escape can name a lone surrogate, which has no UTF-8: no key is that
    # account's, and reading such a record must not end the results reader.
    record = Rec(b"mm-1", b"not read", [_head(account="\ud800")])
    assert final_head(record) is None
    reader = index()
    reader._learn_records([record])
    assert reader.read_heads == 0


class _FailsOn(DedupWindow):
    """A dedup window that fails to learn one alert id: stands for any record that
    trips a reader (a gap no check foresaw)."""

    def __init__(self, alert_id: str) -> None:
        super().__init__(10)
        self._fails = alert_id

    def learn(self, alert_id: str, account: str, status: str, origin: Position | None) -> None:
        if alert_id == self._fails:
            raise ValueError("not learnable")
        super().learn(alert_id, account, status, origin)


def test_a_record_that_cannot_be_learned_is_skipped_and_the_next_is_learned() -> None:
    reader = ResultsIndex(KafkaSettings(), "results", _FailsOn("a-1"), tail_records=10)
    reader._learn_records([published(result()), published(result(alert_id="a-2"))])
    assert reader.unreadable == 1
    assert reader._dedup.status("a-2", "mm-1") == "flat"


def test_a_reader_of_one_alert_skips_only_the_bodies_a_head_says_are_another_alerts() -> None:
    mine, other = published(result()), published(result(alert_id="a-2"))
    assert not of_another_alert(mine, "a-1")
    assert of_another_alert(other, "a-1")  # another alert's result: its body is skipped
    assert not of_another_alert(dataclasses.replace(other, headers=()), "a-1")  # no head
    assert not of_another_alert(dataclasses.replace(other, key=b"mm-2"), "a-1")  # doubtful
