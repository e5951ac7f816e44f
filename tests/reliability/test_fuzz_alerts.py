"""Hostile alert messages through the real parser (property-based, hypothesis).

Every input goes through :func:`killswitch.contracts.parse_alert` on both channels (the
manual one with trigger signing required) and must come back as an ``Alert`` or a
``Rejection``: never an exception. Every refusal must carry a short reason that does
not echo the input, and must make a dead-letter record that is valid JSON of bounded
size with that reason. Where the category fixes the verdict (wrong schema, too many
order ids, too large, wrong JSON types) the verdict is checked too.

Examples are derandomised (fixed per test), so the count of inputs tried is the same
on every run; it is printed in the "reliability figures" section of the pytest summary.
The sample that goes through Kafka into the running daemon is in ``test_daemon_input``.
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from killswitch.config import OperatorKey, TriggerSigningSettings
from killswitch.contracts import (
    ALERT_SCHEMA,
    DLQ_MAX_VALUE_BYTES,
    Alert,
    Channel,
    Rejection,
    RejectKind,
    encode_dlq,
    parse_alert,
)
from killswitch.triggers import TriggerVerifier, sign_trigger
from tests.support import figures

ACCOUNTS = ("mm-1", "mm-2")
MAX_BYTES = 64 * 1024  # small, so "huge" inputs cross it cheaply
MAX_IDS = 50
NOW = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)
CREATED = "2026-11-24T01:02:00.000Z"
# A refusal reason is one line for an operator: bounded whatever the input was.
MAX_REASON_CHARS = 1_000

ALICE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VERIFIER = TriggerVerifier(
    TriggerSigningSettings(
        required=True,
        operators=[
            OperatorKey(
                name="alice",
                public_key=base64.b64encode(
                    ALICE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                ).decode(),
            )
        ],
    )
)
# A well-formed but wrong signature: gets a manual trigger as far as verification.
FAKE_SIGNATURE = base64.b64encode(bytes(64)).decode()

FUZZ = settings(
    derandomize=True,  # the same inputs (and count) on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def valid_alert(**changes: Any) -> dict[str, Any]:
    """A valid automatic alert (a valid manual trigger once signed by alice)."""
    base: dict[str, Any] = {
        "schema": ALERT_SCHEMA,
        "alert_id": "fuzz-1",
        "action": "kill",
        "source": "fuzz",
        "reason": "fuzzing",
        "scope": {"accounts": ["mm-1"], "symbols": ["BTC_USDT"], "sides": ["BUY"]},
        "latch": False,
        "dry_run": False,
        "created_at": CREATED,
        "expires_at": None,
    }
    base.update(changes)
    return base


def signed(message: dict[str, Any]) -> dict[str, Any]:
    """Signed by alice; unsigned when the message has no canonical form (NaN)."""
    try:
        return sign_trigger(message, "alice", ALICE)
    except ValueError:
        return message


def dumps(message: Any) -> bytes:
    return json.dumps(message).encode()


def parse(raw: bytes | None, channel: Channel) -> Alert | Rejection:
    """Parse one input, check the invariants every input must meet, count it."""
    figures.add("fuzz: parser inputs tried")
    result = parse_alert(
        raw,
        channel=channel,
        accounts=ACCOUNTS,
        max_message_bytes=MAX_BYTES,
        max_order_ids=MAX_IDS,
        now=NOW,
        verifier=VERIFIER,
    )
    assert isinstance(result, Alert | Rejection)
    if isinstance(result, Rejection):
        figures.add("fuzz: parser inputs refused")
        check_refusal(raw, result)
    return result


def check_refusal(raw: bytes | None, rejection: Rejection) -> None:
    """The refusal is explainable, bounded, and makes a readable dead letter."""
    assert isinstance(rejection.kind, RejectKind)
    assert rejection.reason.strip(), "a refusal without a reason"
    assert len(rejection.reason) <= MAX_REASON_CHARS, f"reason of {len(rejection.reason)} chars"
    if rejection.alert_id is not None:
        assert len(rejection.alert_id) <= 128
    record = json.loads(
        encode_dlq(
            raw,
            topic="killswitch.alerts",
            partition=0,
            offset=7,
            key=b"mm-1",
            rejection=rejection,
            received_at=NOW,
        )
    )
    assert record["reason"] == rejection.reason
    assert record["kind"] == rejection.kind.value
    assert record["value_bytes"] == len(raw or b"")
    kept = record.get("value", record.get("value_base64", ""))
    assert len(kept) <= DLQ_MAX_VALUE_BYTES * 4 // 3 + 4, "dead letter not bounded"


def refused(result: Alert | Rejection, kind: RejectKind = RejectKind.INVALID) -> Rejection:
    assert isinstance(result, Rejection), "hostile input accepted"
    assert result.kind is kind, result
    return result


channels = st.sampled_from(["alerts", "manual"])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities become tokens the parser must refuse
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
# Values a JSON encoder can write as standard JSON (no NaN or infinity tokens).
finite_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


# --------------------------------------------------------------------- raw bytes


@settings(FUZZ, max_examples=400)
@given(raw=st.binary(max_size=2048), channel=channels)
def test_random_bytes_are_refused(raw: bytes, channel: Channel) -> None:
    refused(parse(raw, channel))


@settings(FUZZ, max_examples=300)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.floats(0, 1),
            st.binary(min_size=1, max_size=1),
        ),
        min_size=1,
        max_size=6,
    ),
    channel=channels,
)
def test_corrupted_alert_bytes_never_crash(
    edits: list[tuple[str, float, bytes]], channel: Channel
) -> None:
    raw = bytearray(dumps(signed(valid_alert()) if channel == "manual" else valid_alert()))
    for op, where, byte in edits:
        i = int(where * (len(raw) - 1))
        if op == "insert":
            raw[i:i] = byte
        elif op == "delete":
            del raw[i]
        else:
            raw[i : i + 1] = byte
    parse(bytes(raw), channel)


@settings(FUZZ, max_examples=200)
@given(document=json_values, channel=channels)
@example(document=float("inf"), channel="alerts")  # once flaky: Infinity is not JSON
@example(document=[float("nan")], channel="manual")
def test_arbitrary_json_documents_never_crash(document: Any, channel: Channel) -> None:
    raw = dumps(document)
    result = parse(raw, channel)
    if not _standard_json(raw):  # NaN / Infinity tokens: not JSON at all
        assert refused(result).reason.startswith("not JSON")
    elif not isinstance(document, dict):
        assert refused(result).reason.startswith("expected a JSON object")


def _standard_json(raw: bytes) -> bool:
    def refuse(token: str) -> None:
        raise ValueError(token)

    try:
        json.loads(raw, parse_constant=refuse)
    except ValueError:
        return False
    return True


# -------------------------------------------------------------------- wrong types

# Python types (as decoded from JSON) each field accepts; any other type must be refused.
ACCEPTED_TYPES: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "alert_id": (str,),
    "action": (str,),
    "source": (str,),
    "reason": (str,),
    "scope": (dict,),
    "latch": (bool,),
    "dry_run": (bool,),
    "created_at": (str,),
    "expires_at": (str, type(None)),
    "deadline_s": (int, float, str, bool, type(None)),  # pydantic's lax numbers
    "operator": (dict, type(None)),
}
SCOPE_ACCEPTED: dict[str, tuple[type, ...]] = {
    "accounts": (list, str),
    "symbols": (list, type(None)),
    "sides": (list, type(None)),
    "order_ids": (list,),
}


@settings(FUZZ, max_examples=400)
@given(field=st.sampled_from(sorted(ACCEPTED_TYPES)), value=json_values, channel=channels)
def test_wrong_types_at_the_top_level_are_refused(field: str, value: Any, channel: Channel) -> None:
    message = valid_alert(**{field: value})
    if channel == "manual" and field not in ("signature", "operator"):
        message = signed(message)  # validly signed, so only the type can be wrong
    result = parse(dumps(message), channel)
    if not isinstance(value, ACCEPTED_TYPES[field]):
        refused(result)


@settings(FUZZ, max_examples=300)
@given(field=st.sampled_from(sorted(SCOPE_ACCEPTED)), value=json_values, channel=channels)
def test_wrong_types_in_the_scope_are_refused(field: str, value: Any, channel: Channel) -> None:
    message = valid_alert()
    message["scope"] = {**message["scope"], field: value}
    if channel == "manual":
        message = signed(message)
    result = parse(dumps(message), channel)
    if not isinstance(value, SCOPE_ACCEPTED[field]):
        refused(result)


# ----------------------------------------------------------------- unknown fields

# Short names, and long ones (a long name must not make a long refusal reason).
# Every top-level name the model reads (``signature`` too, and a field's own name beside
# its alias): anything else is unknown.
KNOWN_FIELDS = {
    name for field, info in Alert.model_fields.items() for name in (field, info.alias) if name
}
field_names = st.text(min_size=1, max_size=40) | st.text(min_size=1, max_size=10).map(
    lambda s: s * 100
)


@settings(FUZZ, max_examples=200)
@given(extra=st.dictionaries(field_names, finite_json_values, min_size=1, max_size=3))
def test_unknown_top_level_fields_are_ignored(extra: dict[str, Any]) -> None:
    # Compatibility rule (killswitch.contracts): a newer producer may add top-level fields.
    extra = {k: v for k, v in extra.items() if k not in valid_alert() and k not in KNOWN_FIELDS}
    result = parse(dumps({**valid_alert(), **extra}), "alerts")
    assert isinstance(result, Alert), result


@settings(FUZZ, max_examples=200)
@given(extra=st.dictionaries(field_names, finite_json_values, min_size=1, max_size=3))
def test_unknown_scope_fields_are_refused(extra: dict[str, Any]) -> None:
    # A misspelt narrowing key would silently widen a kill: refused, never ignored.
    extra = {k: v for k, v in extra.items() if k not in SCOPE_ACCEPTED}
    if not extra:
        return
    message = valid_alert()
    message["scope"] = {**message["scope"], **extra}
    assert "scope" in refused(parse(dumps(message), "alerts")).reason


# ---------------------------------------------------------------- schema versions

wrong_schemas = (
    st.sampled_from(
        [
            "killswitch.alert/v2",
            "killswitch.alert/v0",
            "killswitch.alert/V1",
            "killswitch.alert/v1 ",
            " killswitch.alert/v1",
            "killswitch.alert",
            "killswitch.result/v1",
            "",
        ]
    )
    | st.text(max_size=40).filter(lambda s: s != ALERT_SCHEMA)
    | finite_json_values.filter(lambda v: v != ALERT_SCHEMA)  # Infinity is not JSON at all
)


@settings(FUZZ, max_examples=200)
@given(schema=wrong_schemas, channel=channels, drop=st.booleans())
def test_wrong_schema_versions_are_refused(schema: Any, channel: Channel, drop: bool) -> None:
    message = valid_alert(schema=schema)
    if drop:
        del message["schema"]
    if channel == "manual":
        message = signed(message)
    assert refused(parse(dumps(message), channel)).reason.startswith("schema:")


# ------------------------------------------------------------------ huge and deep


@settings(FUZZ, max_examples=60)
@given(
    size=st.integers(MAX_BYTES - 2_000, 4 * MAX_BYTES),
    where=st.sampled_from(["reason", "unknown", "keys", "list", "alert_id", "bigint"]),
    channel=channels,
)
def test_huge_messages_are_refused_or_parsed(size: int, where: str, channel: Channel) -> None:
    message = valid_alert()
    if where == "reason":
        message["reason"] = "x" * size
    elif where == "unknown":
        message["padding"] = "y" * size
    elif where == "keys":
        message["padding"] = {f"k{i}": i for i in range(size // 12)}
    elif where == "list":
        message["padding"] = list(range(size // 7))
    elif where == "alert_id":
        message["alert_id"] = "a" * size
    raw = dumps(message)
    if where == "bigint":  # beyond Python's integer digit limit for str -> int
        raw = raw[:-1] + b', "deadline_s": ' + b"9" * size + b"}"
    result = parse(raw, channel)
    if len(raw) > MAX_BYTES:
        assert "limit" in refused(result).reason
    elif where in ("reason", "alert_id", "bigint"):
        refused(result)  # over the field's own bound


def nest(depth: int, kind: str, leaf: Any = 1) -> str:
    """JSON text nested ``depth`` levels deep (built as text: no recursion here)."""
    if kind == "list":
        return "[" * depth + json.dumps(leaf) + "]" * depth
    return '{"a":' * depth + json.dumps(leaf) + "}" * depth


@settings(FUZZ, max_examples=300)
@given(
    depth=st.integers(1, 3_000) | st.integers(900, 1_010),  # around the interpreter's limit
    kind=st.sampled_from(["list", "dict"]),
    where=st.sampled_from(["document", "unknown", "reason", "accounts", "operator", "scope"]),
    channel=channels,
)
def test_deeply_nested_json_never_crashes(
    depth: int, kind: str, where: str, channel: Channel
) -> None:
    deep = nest(depth, kind)
    if where == "document":
        raw = deep.encode()
    else:
        message = valid_alert(operator={"name": "alice"}, signature=FAKE_SIGNATURE)
        placeholder = "__DEEP__"
        if where == "accounts":
            message["scope"]["accounts"] = placeholder
        elif where == "scope":
            message["scope"]["extra"] = placeholder
        else:
            message[where if where != "unknown" else "junk"] = placeholder
        raw = dumps(message).replace(json.dumps(placeholder).encode(), deep.encode())
    result = parse(raw, channel)
    if where != "unknown":
        refused(result)
    elif channel == "manual":  # the fake signature (if nothing before it fails)
        assert isinstance(result, Rejection)


NEAR_THE_LIMIT = range(sys.getrecursionlimit() - 120, sys.getrecursionlimit() + 10)


@pytest.mark.parametrize("channel", ["alerts", "manual"])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_every_depth_around_the_recursion_limit(kind: str, channel: Channel) -> None:
    # Random depths rarely land in the few levels where decoding still succeeds but
    # anything recursive done with the result afterwards (signature checking
    # re-encodes the message) runs out of stack; so every depth there is tried.
    for depth in NEAR_THE_LIMIT:
        message = valid_alert(operator={"name": "alice"}, signature=FAKE_SIGNATURE)
        message["junk"] = "__DEEP__"
        raw = dumps(message).replace(b'"__DEEP__"', nest(depth, kind).encode())
        result = parse(raw, channel)
        if channel == "manual":
            assert isinstance(result, Rejection)


# ----------------------------------------------------------------- order id lists


@settings(FUZZ, max_examples=100)
@given(
    count=st.integers(MAX_IDS + 1, 20_000),
    ids=st.sampled_from(["valid", "strings", "mixed"]),
    channel=channels,
)
def test_oversized_order_id_lists_are_refused(count: int, ids: str, channel: Channel) -> None:
    order_ids: list[Any] = list(range(1, count + 1))
    if ids == "strings":
        order_ids = [str(i) for i in order_ids]
    elif ids == "mixed":
        order_ids = [i if i % 3 else "x" for i in order_ids]
    message = valid_alert()
    message["scope"]["order_ids"] = order_ids
    if channel == "manual":
        message = signed(message)
    raw = dumps(message)
    reason = refused(parse(raw, channel)).reason
    assert "limit" in reason if len(raw) > MAX_BYTES else "order" in reason


def test_the_valid_alert_and_trigger_are_accepted() -> None:
    # The fuzz tests above mutate these: they must start out valid.
    assert isinstance(parse(dumps(valid_alert()), "alerts"), Alert)
    assert isinstance(parse(dumps(signed(valid_alert())), "manual"), Alert)
