"""Outputs Kafka refuses as made (too large, text UTF-8 cannot encode): which failures
those are, the reduced forms published instead, and the intake's retry around them.
The publisher here is a stand-in (the path through the real broker is
tests/integration/test_intake_publish.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    ProducerClosed,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
)

from killswitch.contracts import (
    REDUCED_TEXT_MAX,
    Rejection,
    RejectKind,
    ResultRecord,
    encode_dlq,
    encode_result,
    read_dead_letter,
    read_result,
    reduced_result,
    writable,
)
from killswitch.core.model import Position
from killswitch.kafka.consumer import Intake
from killswitch.kafka.forward import MAX_FORWARD_BYTES
from killswitch.kafka.outputs import ProducerUnusable, refused_as_made
from tests.support.engine import request
from tests.support.intake import RecordingObserver, offline_intake
from tests.support.results import sent_result
from tests.support.waiting import wait_for

ORIGIN = Position("killswitch.alerts", 0, 7)
LONE = "\ud83d"  # half of a surrogate pair: what a JSON escape can name, UTF-8 cannot encode


def test_writable_replaces_lone_surrogates_and_cuts() -> None:
    assert writable("plain é text") == "plain é text"
    assert writable(f"bad {LONE} end") == "bad \ufffd end"
    assert writable("x" * 10, 5) == "xxxx\u2026"
    assert writable("x" * 5, 5) == "xxxxx"


@pytest.mark.parametrize(
    "error",
    [
        MessageSizeTooLargeError(),
        RecordTooLargeError(),
        UnicodeEncodeError("utf-8", LONE, 0, 1, "surrogates not allowed"),
        ValueError("bad"),
        AssertionError("Unrecognized partition"),
        TypeError("not bytes"),
    ],
)
def test_the_record_itself_refused(error: BaseException) -> None:
    assert refused_as_made(error)


@pytest.mark.parametrize(
    "error",
    [
        KafkaTimeoutError(),
        KafkaConnectionError(),
        NotLeaderForPartitionError(),
        UnknownTopicOrPartitionError(),
        ProducerClosed(),
        # The daemon's producer stopped working: the record waits (the daemon stops).
        ProducerUnusable("kafka producer unusable: its sender task was stopped"),
    ],
)
def test_kafka_away_or_busy_is_not_the_records_fault(error: BaseException) -> None:
    assert not refused_as_made(error)


def _record(**changes: object) -> ResultRecord:
    record = ResultRecord.of(sent_result("a-1", orders=3), ORIGIN)
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_a_reduced_result_keeps_the_outcome_and_drops_the_order_list() -> None:
    record = _record(
        reason=f"exchange refused to list BTC_USDT: {LONE}",
        trigger_reason="r" * 1_000_000,
        unlisted_pairs=(f"ETH_{LONE}",),
    )
    with pytest.raises(UnicodeEncodeError):
        encode_result(record)
    reduced = reduced_result(record, "UnicodeEncodeError")
    value = encode_result(reduced)
    assert len(value) < 4 * REDUCED_TEXT_MAX + 2_000
    back = read_result(json.loads(value))
    assert back is not None
    for name in ("alert_id", "account", "status", "final", "counts", "residual_open", "origin"):
        assert getattr(back, name) == getattr(record, name), name
    assert back.orders == ()
    assert back.orders_omitted == 3
    assert back.unlisted_pairs == ("ETH_\ufffd",)
    assert back.reason is not None
    assert back.reason.startswith("exchange refused to list BTC_USDT: \ufffd; ")
    assert "UnicodeEncodeError" in back.reason
    assert len(back.trigger_reason) == REDUCED_TEXT_MAX


def test_a_reduced_result_without_a_reason_says_why_it_is_reduced() -> None:
    reduced = reduced_result(_record(), "MessageSizeTooLargeError")
    assert reduced.reason is not None
    assert reduced.reason.startswith("the full result could not be published")


def test_a_reduced_dead_letter_has_no_value_but_says_how_large_it_was() -> None:
    rejection = Rejection(RejectKind.INVALID, f"bad {LONE}", "a-1")
    raw = b'{"alert_id":"a-1"}' * 1000
    fields = {
        "topic": "t",
        "partition": 0,
        "offset": 3,
        "key": b"mm-1",
        "rejection": rejection,
        "received_at": datetime(2026, 11, 30, tzinfo=UTC),
    }
    with pytest.raises(UnicodeEncodeError):
        encode_dlq(raw, **fields)  # type: ignore[arg-type]
    letter = read_dead_letter(json.loads(encode_dlq(raw, **fields, reduced=True)))  # type: ignore[arg-type]
    assert letter.value in ("", None)
    assert letter.value_bytes == len(raw)
    assert letter.value_truncated
    assert letter.reason == "bad \ufffd"
    assert (letter.topic, letter.offset, letter.kind) == ("t", 3, "invalid")


class _Publisher:
    """Answers each publish with the next of ``answers`` (None: acknowledged), the last
    one for ever after; records what it was given."""

    def __init__(self, *answers: BaseException | None) -> None:
        self.answers = list(answers)
        self.sent: list[ResultRecord] = []
        self.letters: list[bytes] = []
        self.forwards: list[bytes] = []

    def _answer(self) -> None:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is not None:
            raise answer

    async def result(self, record: ResultRecord, *, wait: bool = True) -> None:
        self.sent.append(record)
        self._answer()

    async def results(self, records: Sequence[ResultRecord]) -> list[BaseException | None]:
        self.sent.extend(records)
        out: list[BaseException | None] = []
        for _ in records:
            try:
                self._answer()
                out.append(None)
            except Exception as exc:
                out.append(exc)
        return out

    async def dead_letter(self, value: bytes, key: bytes | None) -> None:
        self.letters.append(value)
        self._answer()

    async def alert(self, account: str, value: bytes) -> None:
        self.forwards.append(value)
        self._answer()


def _intake(publisher: _Publisher) -> tuple[Intake, RecordingObserver]:
    observer = RecordingObserver()
    return offline_intake(("mm-1",), publisher=publisher, observer=observer), observer


@pytest.mark.parametrize("alone", [True, False])
async def test_a_final_result_refused_as_made_is_published_reduced_once(alone: bool) -> None:
    publisher = _Publisher(ValueError("cannot write"), None)
    intake, observer = _intake(publisher)
    record = _record()
    (published,) = await intake._publish_results([record], alone=alone)
    assert [r.orders_omitted for r in publisher.sent] == [0, 3]
    assert publisher.sent[-1] == published
    assert published.status == record.status
    assert observer.refused == ["result"]


async def test_a_final_result_kafka_could_not_take_is_sent_again_as_it_was() -> None:
    publisher = _Publisher(KafkaTimeoutError(), KafkaConnectionError(), None)
    intake, observer = _intake(publisher)
    record = _record()
    assert await intake._publish_results([record], alone=False) == [record]
    assert publisher.sent == [record] * 3
    assert observer.refused == []


async def test_a_final_result_refused_even_reduced_is_retried_never_given_up() -> None:
    publisher = _Publisher(MessageSizeTooLargeError())
    intake, observer = _intake(publisher)
    task = asyncio.create_task(intake._publish_results([_record()], alone=True))
    await wait_for(lambda: len(publisher.sent) >= 4)
    assert not task.done()  # its record is not done: no offset committed past it
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert observer.refused == ["result"]  # counted once


async def test_a_dead_letter_refused_as_made_goes_out_without_the_value() -> None:
    publisher = _Publisher(MessageSizeTooLargeError(), None)
    intake, observer = _intake(publisher)
    raw = b"x" * 5000
    record = ConsumerRecord("killswitch.alerts", 0, 7, 0, 0, b"mm-1", raw, None, 0, 0, [])
    rejection = Rejection(RejectKind.INVALID, "not JSON")
    await intake._dead_letter(record, ORIGIN, rejection, datetime.now(UTC))
    full, reduced = (read_dead_letter(json.loads(v)) for v in publisher.letters)
    assert full.value == raw.decode()
    assert reduced.value in ("", None)
    assert reduced.value_bytes == len(raw)
    assert observer.refused == ["dead_letter"]


async def test_a_forward_refused_as_made_is_retried_and_counted_once() -> None:
    publisher = _Publisher(ValueError("cannot write"))
    intake, observer = _intake(publisher)
    task = asyncio.create_task(intake._forward("mm-2", b"{}", ORIGIN))
    await wait_for(lambda: len(publisher.forwards) >= 3)
    assert not task.done()  # the record waits for its forward: never done without it
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert observer.refused == ["forward"]


def test_a_record_whose_forward_would_be_too_large_is_swept_where_read() -> None:
    intake, _ = _intake(_Publisher(None))
    requests = [request("a-1", account="mm-1"), request("a-1", account="mm-2")]
    # Quotes are escaped in the forward: twice the size of the original.
    quotes = '"' * (MAX_FORWARD_BYTES // 2 - 100)
    quoted = json.dumps({"alert_id": "a-1", "reason": quotes}).encode()
    assert len(quoted) <= MAX_FORWARD_BYTES
    here, away = intake._route(requests, {"mm-1"}, "alerts", quoted)
    assert ([r.account for r in here], away) == (["mm-1", "mm-2"], [])
    plain = json.dumps({"alert_id": "a-1", "reason": "x" * (MAX_FORWARD_BYTES // 2)}).encode()
    here, away = intake._route(requests, {"mm-1"}, "alerts", plain)
    assert [r.account for r in here] == ["mm-1"]
    assert [account for account, _ in away] == ["mm-2"]
