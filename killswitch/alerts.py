"""Message contracts on Kafka: alerts in; results, halt state and dead letters out.

Everything here is pure (no I/O): bytes in, models or bytes out.

* :func:`parse_alert` turns the bytes of one Kafka record into an :class:`Alert`
  or a :class:`Rejection` (``invalid``, ``unauthorized`` or ``expired``) with a
  reason an operator can act on. It never raises for bad input: size is checked
  before parsing, JSON nesting depth, duplicate keys, NaN and oversized numbers
  are refused, and pydantic errors are summarised without echoing the input.
* :func:`kill_requests` turns an alert into one :class:`KillRequest` per account
  (``"*"`` expands to every configured account).
* :func:`encode_result`, :func:`encode_state`, :func:`encode_dlq` write
  ``killswitch.result/v1``, the halt state record and the dead letter record;
  :func:`decode_result_summary` and :func:`decode_state` read the first two back
  (dedup rebuild and halt restore at start-up).

Compatibility: unknown *top-level* alert fields are ignored (a newer producer may
add fields; a kill must not be refused for that), but unknown keys inside
``scope`` are refused, because a misspelt narrowing key (``symbol`` for
``symbols``) would silently widen a kill to every symbol.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from killswitch.core.carry import RESULT_MAX_ORDERS, carried_from_json, carry_over
from killswitch.core.model import (
    CarriedOutcomes,
    HaltState,
    KillRequest,
    OrderReport,
    Scope,
    SweepResult,
    SweepStatus,
    no_sweep_result,
)
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome
from killswitch.core.pairs import PAIR_NAME_RE

if TYPE_CHECKING:
    from killswitch.triggers import TriggerVerifier

ALERT_SCHEMA = "killswitch.alert/v1"
RESULT_SCHEMA = "killswitch.result/v1"
STATE_SCHEMA = "killswitch.state/v1"
DLQ_SCHEMA = "killswitch.dlq/v1"

# Printable ASCII without spaces: safe in logs, keys and generated dead-man ids.
ALERT_ID_RE = r"^[A-Za-z0-9][\x21-\x7e]{0,127}$"
SYMBOL_RE = PAIR_NAME_RE
_MAX_INT64 = 2**63 - 1
_MAX_ERRORS_SHOWN = 5
# Alerts nest three levels deep. A fixed bound (rather than the interpreter's
# recursion limit, which depends on how deep the caller's stack already is) keeps
# anything done later with the decoded value (signature checks re-encode it) safe.
MAX_JSON_DEPTH = 64
# Field paths in refusal reasons: an unknown key is input, so it is shown cut short.
_MAX_LOC_PART_CHARS = 64
# Dead letters keep at most this much of the original message (the producer's
# request size limit is 1 MB; a DLQ record must always fit).
DLQ_MAX_VALUE_BYTES = 256 * 1024

Channel = Literal["alerts", "manual"]


class RejectKind(StrEnum):
    """Why an input message was refused (a ``result`` label of ``killswitch_alerts_total``)."""

    INVALID = "invalid"
    UNAUTHORIZED = "unauthorized"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused message: goes to the DLQ with ``reason`` and is counted under ``kind``.

    ``alert_id`` is set when the message was readable enough to have one, so a
    caller following its alert can find the dead letter.
    """

    kind: RejectKind
    reason: str
    alert_id: str | None = None
    unreadable: Literal["undecodable", "too_large"] | None = None  # never parsed

    @property
    def dlq_reason(self) -> str:
        """The ``reason`` label of ``killswitch_dlq_total``."""
        return self.unreadable or self.kind.value


# --------------------------------------------------------------------------- models


def _order_id(value: Any) -> Any:
    # JSON producers in languages without int64 send ids as strings; accept digits
    # only. Booleans and floats are refused (pydantic's lax mode would take them).
    if isinstance(value, bool | float):
        raise PydanticCustomError("order_id", "order ids must be integers")
    if isinstance(value, str) and not value.isdigit():
        raise PydanticCustomError("order_id", "order ids must be decimal digits")
    return value


def _iso_string(value: Any) -> Any:
    if not isinstance(value, str):
        raise PydanticCustomError("timestamp", "must be an ISO-8601 string with a time zone")
    return value


OrderId = Annotated[int, BeforeValidator(_order_id), Field(gt=0, le=_MAX_INT64)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_string)]
SymbolName = Annotated[str, Field(pattern=SYMBOL_RE)]
AccountRef = Annotated[str, Field(min_length=1, max_length=64)]


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What validation needs to know about this deployment (pydantic validation context)."""

    accounts: Collection[str]
    max_order_ids: int


class AlertScopeModel(BaseModel):
    """``scope`` of an alert. Missing symbols/sides mean all; empty lists are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accounts: list[AccountRef] | Literal["*"]
    symbols: list[SymbolName] | None = None
    sides: list[Literal["BUY", "SELL"]] | None = None
    order_ids: list[OrderId] = []

    @field_validator("accounts")
    @classmethod
    def _known_accounts(
        cls, value: list[str] | Literal["*"], info: ValidationInfo
    ) -> list[str] | Literal["*"]:
        if value == "*":
            return value
        if not value:
            raise ValueError('empty list: name the accounts or use "*" for all')
        ctx = info.context
        if isinstance(ctx, ParseContext):
            unknown = sorted({a for a in value if a not in ctx.accounts})
            if unknown:
                shown = ", ".join(repr(a[:64]) for a in unknown[:5])
                raise ValueError(f"unknown account id(s): {shown}")
        return list(dict.fromkeys(value))  # drop repeats, keep order

    @field_validator("symbols", "sides")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("empty list: omit the field to mean all")
        return value

    @field_validator("order_ids")
    @classmethod
    def _bounded(cls, value: list[int], info: ValidationInfo) -> list[int]:
        ctx = info.context
        if isinstance(ctx, ParseContext) and len(value) > ctx.max_order_ids:
            raise ValueError(f"{len(value)} order ids, at most {ctx.max_order_ids} allowed")
        return value


class OperatorModel(BaseModel):
    """Who published a manual trigger (the key name on the signing allowlist)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)


class Alert(BaseModel):
    """``killswitch.alert/v1``: one kill or release demand, validated."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    schema_: Literal["killswitch.alert/v1"] = Field(alias="schema")
    alert_id: str = Field(pattern=ALERT_ID_RE)
    action: Literal["kill", "release"]
    source: str = Field(min_length=1, max_length=128)
    reason: str = Field("", max_length=2048)
    scope: AlertScopeModel
    latch: StrictBool = False
    dry_run: StrictBool = False
    created_at: Timestamp
    expires_at: Timestamp | None = None
    # Additive extensions of the contract:
    deadline_s: float | None = Field(None, gt=0, le=86_400)
    operator: OperatorModel | None = None
    signature: str | None = Field(None, max_length=512)

    @model_validator(mode="after")
    def _expiry_after_creation(self) -> Alert:
        if self.expires_at is not None and self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        return self

    def target_accounts(self, configured: Sequence[str]) -> list[str]:
        """The accounts this alert addresses, ``"*"`` expanded to every configured one."""
        if self.scope.accounts == "*":
            return list(configured)
        return list(self.scope.accounts)

    def core_scope(self) -> Scope:
        """The scope as the engine's :class:`Scope` (``None`` means all)."""
        s = self.scope
        return Scope(
            symbols=frozenset(s.symbols) if s.symbols is not None else None,
            sides=frozenset(Side(x) for x in s.sides) if s.sides is not None else None,
            order_ids=frozenset(s.order_ids) if s.order_ids else None,
        )


# ---------------------------------------------------------------------- parsing


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A signed message with two "scope" keys could be read one way by the signer
    # and another way by us; refuse the ambiguity outright.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every message (``json.loads`` with hooks builds a new one per call).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
_LENIENT = json.JSONDecoder()


def load_json_object(
    raw: bytes | None, max_bytes: int, *, strict: bool = True
) -> dict[str, Any] | str:
    """Decode one JSON object, or return the reason it cannot be read (never raises).

    ``strict`` refuses duplicate keys and NaN/Infinity (input that is signed or acted
    on); records the daemons write themselves are read without those checks, which
    cost a Python call per JSON object (a result lists up to hundreds of orders)."""
    if not raw:
        return "empty message"
    if len(raw) > max_bytes:
        return f"message is {len(raw)} bytes, the limit is {max_bytes}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {exc.start})"
    try:
        data = (_DECODER if strict else _LENIENT).decode(text)
    except RecursionError:
        return "not JSON: nested too deeply"
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except ValueError as exc:  # duplicate keys, NaN, integers beyond the digit limit
        return f"not JSON: {str(exc)[:200]}"
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    # Nesting deeper than the limit needs more brackets than the limit: counting them
    # (in C) spares the walk for every ordinary message.
    brackets = raw.count(b"{") + raw.count(b"[")
    if brackets > MAX_JSON_DEPTH and _deeper_than(data, MAX_JSON_DEPTH):
        return f"not JSON: nested more than {MAX_JSON_DEPTH} levels deep"
    return data


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def describe_validation_error(exc: ValidationError) -> str:
    """``field.path: problem; ...`` for the first few errors, never echoing input values."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for err in errors[:_MAX_ERRORS_SHOWN]:
        loc = ".".join(_loc_part(p) for p in err["loc"]) or "message"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required field is missing"
        parts.append(f"{loc}: {msg}")
    if len(errors) > _MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - _MAX_ERRORS_SHOWN} more")
    return "; ".join(parts)


def _loc_part(part: str | int) -> str:
    text = str(part)
    if len(text) <= _MAX_LOC_PART_CHARS:
        return text
    return f"{text[:_MAX_LOC_PART_CHARS]}... ({len(text)} chars)"


def _readable_alert_id(data: Mapping[str, Any]) -> str | None:
    value = data.get("alert_id")
    if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
        return value
    return None


def parse_alert(
    raw: bytes | None,
    *,
    channel: Channel,
    accounts: Collection[str],
    max_message_bytes: int,
    max_order_ids: int,
    now: datetime,
    verifier: TriggerVerifier | None = None,
) -> Alert | Rejection:
    """Validate one alert message read from ``channel``; never raises for bad input.

    Checks, in order: size, UTF-8, JSON, schema, fields (``invalid``); on the
    manual channel the operator identity (``invalid``) and, when the verifier
    requires it, the signature and freshness (``unauthorized``); last
    ``expires_at`` against ``now`` (``expired``). Re-use of an ``alert_id`` is a
    question for the dedup window, not for this function.
    """
    data = load_json_object(raw, max_message_bytes)
    if isinstance(data, str):
        size = raw is not None and len(raw) > max_message_bytes
        return Rejection(
            RejectKind.INVALID, data, unreadable="too_large" if size else "undecodable"
        )
    alert_id = _readable_alert_id(data)
    schema = data.get("schema")
    if schema != ALERT_SCHEMA:
        shown = repr(schema)[:80] if schema is not None else "missing"
        return Rejection(
            RejectKind.INVALID, f"schema: expected {ALERT_SCHEMA!r}, got {shown}", alert_id
        )
    try:
        alert = Alert.model_validate(
            data, context=ParseContext(accounts=accounts, max_order_ids=max_order_ids)
        )
    except ValidationError as exc:
        return Rejection(RejectKind.INVALID, describe_validation_error(exc), alert_id)
    if channel == "manual":
        if alert.operator is None:
            return Rejection(
                RejectKind.INVALID, "operator: manual triggers must name the operator", alert_id
            )
        if verifier is not None and verifier.required:
            problem = verifier.verify(data, alert.operator.name, alert.created_at, now=now)
            if problem is not None:
                return Rejection(RejectKind.UNAUTHORIZED, problem, alert_id)
    if alert.expires_at is not None and alert.expires_at <= now:
        return Rejection(
            RejectKind.EXPIRED, f"expired at {format_time(alert.expires_at)}", alert_id
        )
    return alert


def kill_requests(
    alert: Alert,
    *,
    accounts: Sequence[str],
    received_at: datetime,
    default_deadline_s: float,
) -> list[KillRequest]:
    """One request per addressed account (``"*"`` = every configured account)."""
    scope = alert.core_scope()
    deadline = alert.deadline_s if alert.deadline_s is not None else default_deadline_s
    operator = alert.operator.name if alert.operator is not None else None
    return [
        KillRequest(
            alert_id=alert.alert_id,
            account=account,
            scope=scope,
            received_at=received_at,
            deadline_s=deadline,
            latch=alert.latch,
            dry_run=alert.dry_run,
            source=alert.source,
            reason=alert.reason,
            operator=operator,
        )
        for account in alert.target_accounts(accounts)
    ]


# ---------------------------------------------------------------------- outputs


def format_time(value: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and ``Z`` (``2026-11-24T01:02:03.456Z``)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an input record was read (partition position), carried in results."""

    topic: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def _order_json(order: OrderReport) -> dict[str, Any]:
    out: dict[str, Any] = {
        "order_id": order.order_id,
        "symbol": order.symbol,
        "outcome": order.outcome.value,
        "attempts": order.attempts,
    }
    if order.reason is not None:
        out["reason"] = order.reason.value
    return out


# A result lists at most RESULT_MAX_ORDERS orders (see killswitch.core.carry); when
# the list is cut, orders that did not go as planned come first.
_LIST_FIRST = {Outcome.FAILED: 0, Outcome.REJECTED: 1}


def _listed_orders(orders: list[OrderReport], limit: int) -> list[OrderReport]:
    if len(orders) <= limit:
        return orders
    ranked = sorted(orders, key=lambda o: _LIST_FIRST.get(o.outcome, 2))
    return ranked[:limit]


def result_to_json(
    result: SweepResult, origin: Origin | None = None, max_orders: int = RESULT_MAX_ORDERS
) -> dict[str, Any]:
    """``killswitch.result/v1`` as a dict (field names are the contract)."""
    listed = _listed_orders(result.orders, max_orders)
    return _result_json(result, origin, [_order_json(o) for o in listed], len(listed))


def _result_json(
    result: SweepResult, origin: Origin | None, orders: list[dict[str, Any]], listed: int
) -> dict[str, Any]:
    c = result.counts
    out: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "alert_id": result.alert_id,
        "account": result.account,
        "status": result.status.value,
        "final": result.final,
        "dry_run": result.dry_run,
        "counts": {
            "resolved": c.resolved,
            "sent": c.sent,
            "already_closed": c.already_closed,
            "rejected": c.rejected,
            "failed": c.failed,
            "skipped": c.skipped,
        },
        "residual_open": result.residual_open,
        "pending": result.pending,
        "sweeps": result.sweeps,
        "received_at": format_time(result.received_at),
        "first_cancel_at": format_time(result.first_cancel_at),
        "finished_at": format_time(result.finished_at),
        "orders": orders,
        "orders_omitted": len(result.orders) - listed,
        "reason": result.reason,
        "operator": result.operator,
        "source": result.source,
        "not_found": list(result.not_found),
        "trigger_reason": result.trigger_reason,
        "in_flight": [{"order_id": o.order_id, "symbol": o.symbol} for o in result.in_flight],
    }
    if result.pairs_in_scope is not None:
        out["pairs_listed"] = result.pairs_listed
        out["pairs_in_scope"] = result.pairs_in_scope
    if result.final:
        # Pairs in scope never listed to the end: residual_open cannot count them.
        out["unlisted_pairs"] = list(result.unlisted_pairs)
    if result.was_halted is not None:
        out["was_halted"] = result.was_halted
    if origin is not None:
        out["origin"] = origin.to_json()
    return out


def encode_result(result: SweepResult, origin: Origin | None = None) -> bytes:
    """The bytes of a result record (Kafka key: the account).

    The alerts one sweep coalesced share one list of order reports (see
    ``Sweep.result_for``): its JSON is made once and spliced into each record."""
    orders, listed = _orders_text(result.orders)
    text = json.dumps(
        _result_json(result, origin, [], listed), separators=(",", ":"), ensure_ascii=False
    )
    # The first '"orders":[]' is the key's: inside a JSON string every quote is escaped.
    return text.replace('"orders":[]', f'"orders":{orders}', 1).encode("utf-8")


# The last list of order reports encoded, kept (so its id cannot be reused) with its
# length (a list changed since would not match) and its JSON.
_orders_memo: tuple[list[OrderReport], int, str, int] | None = None


def _orders_text(orders: list[OrderReport]) -> tuple[str, int]:
    """The JSON array of the orders a result lists, and how many it lists."""
    global _orders_memo  # noqa: PLW0603 - a one-entry memo of a pure function
    memo = _orders_memo
    if memo is not None and memo[0] is orders and memo[1] == len(orders):
        return memo[2], memo[3]
    listed = _listed_orders(orders, RESULT_MAX_ORDERS)
    text = json.dumps([_order_json(o) for o in listed], separators=(",", ":"), ensure_ascii=False)
    _orders_memo = (orders, len(orders), text, len(listed))
    return text, len(listed)


def duplicate_result(
    request: KillRequest, previous_status: str | None, now: datetime
) -> SweepResult:
    """The final ``duplicate`` result for a repeat of an alert already handled."""
    seen = f" (already {previous_status})" if previous_status else ""
    return no_sweep_result(request, SweepStatus.DUPLICATE, now, f"duplicate alert_id{seen}")


def failed_result(request: KillRequest, reason: str, now: datetime) -> SweepResult:
    """A final ``failed`` result when the engine could not work at all (a replay keeps
    what an earlier process published for it)."""
    result = no_sweep_result(request, SweepStatus.FAILED, now, reason)
    return result if request.carried is None else carry_over(result, request.carried)


@dataclass(frozen=True, slots=True)
class ResultSummary:
    """What the dedup rebuild (and, from progress results, a replay) needs from a result."""

    alert_id: str
    account: str
    status: str
    final: bool
    origin: Origin | None
    carried: CarriedOutcomes | None = None  # progress results only


def decode_result_summary(raw: bytes | None) -> ResultSummary | None:
    """Read back a result record; None for anything that is not one (never raises).

    A progress result's outcomes come back as ``carried`` (None when its counts are
    unreadable; per-order outcomes dropped, counts kept, when its order list is
    unreadable or disagrees with the counts)."""
    data = load_json_object(raw, 16 * 1024 * 1024, strict=False)
    if isinstance(data, str) or data.get("schema") != RESULT_SCHEMA:
        return None
    alert_id, account, status = data.get("alert_id"), data.get("account"), data.get("status")
    if not (isinstance(alert_id, str) and isinstance(account, str) and isinstance(status, str)):
        return None
    origin = None
    o = data.get("origin")
    if isinstance(o, dict):
        topic, part, off = o.get("topic"), o.get("partition"), o.get("offset")
        if isinstance(topic, str) and isinstance(part, int) and isinstance(off, int):
            origin = Origin(topic, part, off)
    final = data.get("final") is True
    carried = None if final else carried_from_json(data)
    return ResultSummary(alert_id, account, status, final, origin, carried)


def scope_to_json(scope: Scope) -> dict[str, Any]:
    """A core scope as JSON (sorted lists; null means all)."""

    def _list(values: frozenset[Any] | None) -> list[Any] | None:
        return sorted(str(v) if isinstance(v, Side) else v for v in values) if values else None

    return {
        "symbols": _list(scope.symbols),
        "sides": _list(scope.sides),
        "order_ids": _list(scope.order_ids),
    }


def encode_state(state: HaltState, daemon: str | None = None) -> bytes:
    """The halt state record for the compacted state topic (Kafka key: the account).

    ``daemon`` (additive) names the daemon instance that wrote it, so a daemon
    following the topic can skip its own records. ``by`` and ``reason`` (additive)
    say who latched or released the account and why; readers treat them as empty
    when a record lacks them.
    """
    record: dict[str, Any] = {
        "schema": STATE_SCHEMA,
        "account": state.account,
        "halted": state.halted,
        "alert_id": state.alert_id,
        "since": format_time(state.since),
        "scope": scope_to_json(state.scope),
        "by": state.by,
        "reason": state.reason,
    }
    if daemon is not None:
        record["daemon"] = daemon
    return _dumps(record)


def _frozen(values: Any, convert: type[Any]) -> frozenset[Any] | None:
    if values is None:
        return None
    if not isinstance(values, list):
        raise TypeError("scope entries must be lists")
    return frozenset(convert(v) for v in values) or None


def decode_state(raw: bytes | None) -> HaltState | None:
    """Read back a state record; None for a tombstone or an unreadable record."""
    record = decode_state_record(raw)
    return record[0] if record is not None else None


def decode_state_record(raw: bytes | None) -> tuple[HaltState, str | None] | None:
    """A state record and the daemon that wrote it (None when not recorded)."""
    data = load_json_object(raw, 16 * 1024 * 1024)
    if isinstance(data, str):
        return None
    state = _state_from_json(data)
    if state is None:
        return None
    daemon = data.get("daemon")
    return state, daemon if isinstance(daemon, str) else None


def _state_from_json(data: dict[str, Any]) -> HaltState | None:
    try:
        scope = data.get("scope") or {}
        since = datetime.fromisoformat(str(data["since"]).replace("Z", "+00:00"))
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return HaltState(
            account=str(data["account"]),
            halted=data["halted"] is True,
            alert_id=str(data.get("alert_id") or ""),
            since=since,
            scope=Scope(
                symbols=_frozen(scope.get("symbols"), str),
                sides=_frozen(scope.get("sides"), Side),
                order_ids=_frozen(scope.get("order_ids"), int),
            ),
            by=_text(data.get("by")),
            reason=_text(data.get("reason")),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _text(value: Any) -> str:
    """An optional text field of a record: empty when absent (older records) or not text."""
    return value if isinstance(value, str) else ""


def encode_dlq(
    raw: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    rejection: Rejection,
    received_at: datetime,
) -> bytes:
    """The dead letter record: the original message, where it was, and why it was refused.

    The original is kept as ``value`` (text) when it is UTF-8, else ``value_base64``;
    beyond :data:`DLQ_MAX_VALUE_BYTES` it is truncated and ``value_truncated`` is set.
    """
    body = raw or b""
    kept = body[:DLQ_MAX_VALUE_BYTES]
    record: dict[str, Any] = {
        "schema": DLQ_SCHEMA,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": _text_or_none(key),
        "kind": rejection.kind.value,
        "reason": rejection.reason,
        "alert_id": rejection.alert_id,
        "received_at": format_time(received_at),
        "value_bytes": len(body),
        "value_truncated": len(kept) < len(body),
    }
    try:
        record["value"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        record["value_base64"] = base64.b64encode(kept).decode("ascii")
    return _dumps(record)


def _text_or_none(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key[:256].decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(key[:256]).decode("ascii")


def decode_b64(value: str) -> bytes | None:
    """Strict standard base64, None when malformed."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
