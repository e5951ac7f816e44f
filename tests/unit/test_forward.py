"""The forward codec: a kill handed on to the account's owner, the original kept as written."""

from __future__ import annotations

import json

import pytest

from killswitch.kafka.forward import Forward, decode_forward, encode_forward, is_forward


def test_a_forward_carries_the_original_value_unchanged() -> None:
    original = '{"alert_id":"a-1","scope":{"accounts":["mm-1","mm-2"]},"reason":"é"}'.encode()
    forward = encode_forward("mm-2", "manual", original)
    assert is_forward(forward)
    assert decode_forward(forward) == Forward("mm-2", "manual", original)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "forward: not JSON"),
        (b"[]", "forward: not an object"),
        (json.dumps({"channel": "alerts", "value": "{}"}).encode(), "forward: account missing"),
        (
            json.dumps({"account": "mm-1", "channel": "dlq", "value": "{}"}).encode(),
            "forward: channel must be alerts or manual",
        ),
        (json.dumps({"account": "mm-1", "channel": "alerts"}).encode(), "forward: value missing"),
    ],
)
def test_an_unreadable_forward_says_why(body: bytes, reason: str) -> None:
    assert decode_forward(body) == reason


def test_only_forwards_are_taken_for_forwards() -> None:
    assert not is_forward(None)
    assert not is_forward(b'{"schema":"killswitch.alert/v1"}')
    # The schema must come first, as encode_forward writes it.
    assert not is_forward(b'{"a":1,"schema":"killswitch.forward/v1"}')
