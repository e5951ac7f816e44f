"""The results reader's cheap reading (pure): ``read_final_head`` reads a record as the
full decoder does, or not at all; ``encode_results`` writes what ``encode_result``
writes, byte for byte, whatever the results hold."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.contracts import (
    FinalHead,
    decode_result_summary,
    encode_result,
    encode_results,
    read_final_head,
)
from killswitch.core.model import Counts, InFlight, OrderReport, Position, SweepResult, SweepStatus
from killswitch.core.outcomes import Outcome, RejectReason

NOW = datetime(2026, 11, 24, 1, 2, 3, 456000, tzinfo=UTC)
ORIGIN = Position("killswitch.alerts", 0, 5)


def final(**fields: object) -> SweepResult:
    base = SweepResult(
        alert_id="a",
        account="acc1",
        status=SweepStatus.FLAT,
        final=True,
        dry_run=False,
        counts=Counts(sent=1),
        residual_open=0,
        sweeps=1,
        received_at=NOW,
        first_cancel_at=None,
        finished_at=NOW,
        orders=[OrderReport(1, "BTC_USDT", Outcome.SENT, 1)],
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def full_head(raw: bytes) -> FinalHead | None:
    """What the full decoder says the record is, as a head (None: not a final result)."""
    record = decode_result_summary(raw)
    if record is None or not record.final:
        return None
    return FinalHead(record.alert_id, record.account, record.status, record.origin)


def agrees(raw: bytes) -> bool:
    """The cheap reading is the full reading, or no reading at all."""
    head = read_final_head(raw)
    return head is None or head == full_head(raw)


RAW = encode_result(final(), ORIGIN)


@pytest.mark.parametrize(
    "raw",
    [
        # A key written twice: JSON readers keep the last value.
        RAW.replace(b'"final":true,', b'"final":true,"account":"acc2",'),
        RAW.replace(b'"final":true,', b'"final":true,"status":"failed",'),
        RAW.replace(b'"final":true,', b'"final":true,"final":false,'),
        RAW.replace(b'"final":true,', b'"final":true,"alert_id":"zz",'),
        RAW.replace(b'"final":true,', b'"final":true, "final" :false,'),
        # The origin written with a space (still JSON): not "no origin".
        RAW.replace(b',"origin":', b', "origin":'),
        RAW.replace(b',"origin":', b',"origin" :'),
        # An origin key inside a value, and none of the record's own.
        encode_result(final(), None)[:-1] + b',"x":{"y":1,"origin":{"topic":"t"}}}',
    ],
)
def test_a_head_is_never_read_other_than_the_full_reading(raw: bytes) -> None:
    assert agrees(raw)


def test_a_head_of_the_encoders_own_record_is_read() -> None:
    assert read_final_head(RAW) == FinalHead("a", "acc1", "flat", ORIGIN)


_text = st.text(max_size=30)
# Strings an attacker or another writer may put in a result: JSON's own punctuation,
# the keys the head reader looks for, escapes and control characters.
_tricky = st.one_of(
    _text,
    st.lists(
        st.sampled_from(
            [',"origin":', '"final"', '"account":', "\\", '"', "}", "{", "\x00", "\u2028", "é"]
        ),
        max_size=6,
    ).map("".join),
)
_instants = st.integers(0, 10**9).map(lambda ms: NOW + timedelta(milliseconds=ms))
_times = st.one_of(st.none(), _instants)
_orders = st.lists(
    st.builds(
        OrderReport,
        st.integers(1, 2**62),
        _tricky,
        st.sampled_from(list(Outcome)),
        st.integers(0, 5),
        st.one_of(st.none(), st.sampled_from(list(RejectReason))),
    ),
    max_size=4,
)
_origins = st.one_of(
    st.none(), st.builds(Position, _tricky, st.integers(0, 99), st.integers(0, 2**40))
)


@st.composite
def _results(draw: st.DrawFn) -> SweepResult:
    return final(
        alert_id=draw(_tricky.map(lambda text: text or "id")),
        account=draw(st.sampled_from(["acc1", "mm-1"])),
        status=draw(st.sampled_from(list(SweepStatus))),
        final=draw(st.booleans()),
        dry_run=draw(st.booleans()),
        received_at=draw(_instants),
        first_cancel_at=draw(_times),
        finished_at=draw(_times),
        orders=draw(_orders),
        reason=draw(st.one_of(st.none(), _tricky)),
        operator=draw(st.one_of(st.none(), _tricky)),
        source=draw(_tricky),
        trigger_reason=draw(_tricky),
        not_found=draw(st.lists(st.integers(1, 99), max_size=2)),
        unlisted_pairs=draw(st.lists(_tricky, max_size=2)),
        in_flight=draw(st.lists(st.builds(InFlight, st.integers(1, 99), _tricky), max_size=2)),
        was_halted=draw(st.one_of(st.none(), st.booleans())),
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_results(), _origins), max_size=6), st.booleans())
def test_results_written_together_are_those_written_one_by_one(
    items: list[tuple[SweepResult, Position | None]], share: bool
) -> None:
    if share and items:
        # A sweep's coalesced alerts: everything shared but the alert id, times, origin.
        first = items[0][0]
        items = [
            (
                dataclasses.replace(
                    first, alert_id=r.alert_id, received_at=r.received_at, finished_at=None
                ),
                o,
            )
            for r, o in items
        ]
    assert encode_results(items) == [encode_result(r, o) for r, o in items]


@settings(max_examples=40, deadline=None)
@given(_results(), _origins)
def test_a_head_reads_any_result_as_the_full_reading_does(
    result: SweepResult, origin: Position | None
) -> None:
    raw = encode_result(result, origin)
    assert agrees(raw)
    # The same record re-encoded by another writer (spaces, other key order) too.
    data = json.loads(raw)
    assert agrees(json.dumps(data).encode())
    assert agrees(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
