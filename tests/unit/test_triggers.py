"""Signed manual triggers (pure): canonical form, allowlist, freshness."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from killswitch.config import OperatorKey, TriggerSigningSettings
from killswitch.contracts import Alert, Rejection, RejectKind, parse_alert
from killswitch.triggers import (
    TriggerKeyError,
    TriggerVerifier,
    canonical_bytes,
    load_public_key,
    sign_trigger,
)

NOW = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)
ALICE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
MALLORY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def raw_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def verifier(required: bool = True, max_age_s: float = 300) -> TriggerVerifier:
    return TriggerVerifier(
        TriggerSigningSettings(
            required=required,
            max_age_s=max_age_s,
            operators=[
                OperatorKey(name="alice", public_key=raw_b64(ALICE)),
                OperatorKey(name="bob", public_key=pem(Ed25519PrivateKey.generate())),
            ],
        )
    )


def trigger(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": "killswitch.alert/v1",
        "alert_id": "ops-1",
        "action": "kill",
        "source": "cli",
        "reason": "manual kill — runaway bot",
        "scope": {"accounts": ["mm-1"], "symbols": ["BTC_USDT"]},
        "latch": False,
        "dry_run": False,
        "created_at": "2026-11-24T01:02:00.000Z",
    }
    base.update(changes)
    return base


def parse(message: dict[str, Any], v: TriggerVerifier | None = None, now: datetime = NOW) -> Any:
    return parse_alert(
        json.dumps(message).encode(),
        channel="manual",
        accounts=["mm-1"],
        max_message_bytes=100_000,
        max_order_ids=10,
        now=now,
        verifier=v if v is not None else verifier(),
    )


def test_canonical_form_is_sorted_compact_utf8_without_signature() -> None:
    message = {"b": 1, "a": {"z": "é", "y": [True, None]}, "signature": "x"}
    assert canonical_bytes(message) == '{"a":{"y":[true,null],"z":"é"},"b":1}'.encode()


def test_canonical_form_ignores_key_order_and_whitespace_of_the_sender() -> None:
    signed = sign_trigger(trigger(), "alice", ALICE)
    reordered = dict(reversed(list(signed.items())))
    text = json.dumps(reordered, indent=4)
    assert isinstance(parse(json.loads(text)), Alert)


def test_a_signed_trigger_is_accepted() -> None:
    signed = sign_trigger(trigger(), "alice", ALICE)
    assert signed["operator"] == {"name": "alice"}
    result = parse(signed)
    assert isinstance(result, Alert)
    assert result.operator is not None
    assert result.operator.name == "alice"


def tamper(field: str, value: Any) -> dict[str, Any]:
    signed = sign_trigger(trigger(), "alice", ALICE)
    signed[field] = value
    return signed


def resign_as(name: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_trigger(trigger(), name, key)


def unsigned_with_operator() -> dict[str, Any]:
    return trigger(operator={"name": "alice"})


def bad_b64() -> dict[str, Any]:
    return tamper("signature", "!!not base64!!")


def short_sig() -> dict[str, Any]:
    return tamper("signature", base64.b64encode(b"x" * 10).decode())


def claims_alice_signed_by_mallory() -> dict[str, Any]:
    return sign_trigger(trigger(), "alice", MALLORY)


UNAUTHORIZED = [
    ("unsigned", unsigned_with_operator, "signature missing"),
    ("unknown operator", lambda: resign_as("eve", ALICE), "not on the signing allowlist"),
    ("wrong key", claims_alice_signed_by_mallory, "does not verify"),
    ("scope widened", lambda: tamper("scope", {"accounts": "*"}), "does not verify"),
    ("latch flipped", lambda: tamper("latch", True), "does not verify"),
    ("operator swapped", lambda: tamper("operator", {"name": "bob"}), "does not verify"),
    ("extra field added", lambda: tamper("note", "x"), "does not verify"),
    ("not base64", bad_b64, "not base64"),
    ("short signature", short_sig, "is 10 bytes"),
]


@pytest.mark.parametrize(
    ("case", "make", "expected"), UNAUTHORIZED, ids=[c[0] for c in UNAUTHORIZED]
)
def test_unauthorised_triggers_are_refused(case: str, make: Any, expected: str) -> None:
    result = parse(make())
    assert isinstance(result, Rejection), case
    assert result.kind is RejectKind.UNAUTHORIZED
    assert expected in result.reason


@pytest.mark.parametrize(
    ("created_at", "ok"),
    [
        ("2026-11-24T00:57:03.000Z", True),  # exactly max_age_s old
        ("2026-11-24T00:57:02.999Z", False),  # just older
        ("2026-11-24T01:07:03.000Z", True),  # max_age_s ahead (clock skew)
        ("2026-11-24T01:07:04.000Z", False),
    ],
)
def test_freshness_window(created_at: str, ok: bool) -> None:
    signed = sign_trigger(trigger(created_at=created_at), "alice", ALICE)
    result = parse(signed)
    if ok:
        assert isinstance(result, Alert)
    else:
        assert isinstance(result, Rejection)
        assert result.kind is RejectKind.UNAUTHORIZED
        assert "outside the 300s window" in result.reason


def test_unsigned_triggers_are_accepted_when_signing_is_off() -> None:
    off = verifier(required=False)
    assert isinstance(parse(unsigned_with_operator(), off), Alert)
    # still an operator identity is required
    no_operator = parse(trigger(), off)
    assert isinstance(no_operator, Rejection)
    assert no_operator.kind is RejectKind.INVALID


def test_invalid_before_unauthorized_and_unauthorized_before_expired() -> None:
    broken = parse(tamper("action", "nuke"))
    assert isinstance(broken, Rejection)
    assert broken.kind is RejectKind.INVALID
    expired = sign_trigger(trigger(expires_at="2026-11-24T01:02:01Z"), "alice", ALICE)
    assert parse(expired).kind is RejectKind.EXPIRED
    expired["latch"] = True
    assert parse(expired).kind is RejectKind.UNAUTHORIZED


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is 0 bytes"),
        ("not base64 at all!", "neither PEM nor base64"),
        (base64.b64encode(b"x" * 31).decode(), "31 bytes"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "not a readable PEM"),
        (
            generate_private_key(SECP256R1())
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode(),
            "not Ed25519",
        ),
    ],
)
def test_bad_public_keys_are_named(text: str, message: str) -> None:
    with pytest.raises(TriggerKeyError, match=message):
        load_public_key(text)


def test_allowlist_errors_name_the_operator_and_hide_the_key() -> None:
    bad = "c2VjcmV0LWlzaC1idXQtd3Jvbmc="
    with pytest.raises(TriggerKeyError) as info:
        TriggerVerifier(
            TriggerSigningSettings(operators=[OperatorKey(name="carol", public_key=bad)])
        )
    assert "carol" in str(info.value)
    assert bad not in str(info.value)
    with pytest.raises(TriggerKeyError, match="listed twice"):
        TriggerVerifier(
            TriggerSigningSettings(
                operators=[
                    OperatorKey(name="a", public_key=raw_b64(ALICE)),
                    OperatorKey(name="a", public_key=raw_b64(ALICE)),
                ]
            )
        )
    with pytest.raises(TriggerKeyError, match="no operators"):
        TriggerVerifier(TriggerSigningSettings(required=True))


def test_pem_and_raw_keys_verify_alike() -> None:
    v = TriggerVerifier(
        TriggerSigningSettings(
            required=True, operators=[OperatorKey(name="alice", public_key=pem(ALICE))]
        )
    )
    assert isinstance(parse(sign_trigger(trigger(), "alice", ALICE), v), Alert)
    assert v.operators == frozenset({"alice"})


def test_sign_trigger_does_not_mutate_its_input() -> None:
    original = trigger()
    snapshot = json.dumps(original, sort_keys=True)
    sign_trigger(original, "alice", ALICE)
    assert json.dumps(original, sort_keys=True) == snapshot


def test_signature_is_within_expected_age_in_timedelta() -> None:
    # A trigger signed "now" stays valid for max_age_s, then is refused.
    signed = sign_trigger(trigger(created_at="2026-11-24T01:02:03Z"), "alice", ALICE)
    assert isinstance(parse(signed, now=NOW + timedelta(seconds=299)), Alert)
    assert isinstance(parse(signed, now=NOW + timedelta(seconds=301)), Rejection)
