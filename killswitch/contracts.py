"""Message contracts on Kafka: alerts and heartbeats in; results, halt state and dead letters out.

Everything here is pure (no I/O): bytes in, models or bytes out.

* :func:`parse_alert` turns the bytes of one Kafka record into an :class:`Alert`
  or a :class:`Rejection` (``invalid``, ``unauthorized`` or ``expired``) with a
  reason an operator can act on. It never raises for bad input: size is checked
  before parsing, JSON nesting depth, duplicate keys, NaN and oversized numbers
  are refused, and pydantic errors are summarised without echoing the input.
* :func:`kill_requests` turns an alert into one :class:`KillRequest` per account
  (``"*"`` expands to every configured account).
* :meth:`Alert.to_json` writes an alert (operator triggers, dead-man kills).
* :class:`ResultRecord` is ``killswitch.result/v1`` both ways: made of the engine's
  result by :meth:`ResultRecord.of`, written by :func:`encode_result` (and
  :func:`encode_results`, :func:`result_to_json`), read back by :func:`read_result`
  (the operator's board; :func:`decode_result_summary` reads it without its lists,
  plus what a replay carries, for the dedup rebuild).
* :func:`encode_state` and :func:`decode_state_record` write and read the halt state
  record; :class:`DeadLetter` is the dead letter record both ways.
* :func:`encode_result_head` and :func:`read_result_head` write and read the small
  header every result record carries (``killswitch.result.head``), so the dedup
  rebuild can learn a final result without decoding its body.

Compatibility: unknown *top-level* alert fields are ignored (a newer producer may
add fields; a kill must not be refused for that), but unknown keys inside
``scope`` are refused, because a misspelt narrowing key (``symbol`` for
``symbols``) would silently widen a kill to every symbol.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import re
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Final,
    Literal,
    NamedTuple,
    TypeGuard,
    TypeVar,
)

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

from killswitch.core.carry import RESULT_MAX_ORDERS, carry_over
from killswitch.core.model import (
    CarriedOutcomes,
    Counts,
    HaltState,
    InFlight,
    KillRequest,
    OrderReport,
    Position,
    Scope,
    SweepResult,
    SweepStatus,
    no_sweep_result,
)
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.core.pairs import PAIR_NAME_RE
from killswitch.core.times import format_time, parse_time

if TYPE_CHECKING:
    from killswitch.triggers import TriggerVerifier

ALERT_SCHEMA: Final = "killswitch.alert/v1"
RESULT_SCHEMA = "killswitch.result/v1"
STATE_SCHEMA = "killswitch.state/v1"
DLQ_SCHEMA = "killswitch.dlq/v1"
HEARTBEAT_SCHEMA: Final = "killswitch.heartbeat/v1"
_MAX_HEARTBEAT_BYTES = 64 * 1024

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
_T = TypeVar("_T")


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
    # A factory, not ``= []``: pydantic deep-copies a mutable default on every validation.
    order_ids: list[OrderId] = Field(default_factory=list)

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
            known = ctx.accounts
            for account in value:  # every alert of a storm passes: no set, no sort
                if account not in known:
                    unknown = sorted({a for a in value if a not in known})
                    shown = ", ".join(repr(a[:64]) for a in unknown[:5])
                    every = ' (every account is the string "*", not a list)' if "*" in value else ""
                    raise ValueError(f"unknown account id(s): {shown}{every}")
        # Drop repeats, keep order. One account (the usual alert) has none, and its list
        # is pydantic's own copy already.
        return value if len(value) == 1 else list(dict.fromkeys(value))

    def to_json(self) -> dict[str, Any]:
        """``scope`` as written: ``symbols`` and ``sides`` when given, ``order_ids``
        when not empty."""
        accounts = self.accounts if self.accounts == "*" else list(self.accounts)
        out: dict[str, Any] = {"accounts": accounts}
        if self.symbols is not None:
            out["symbols"] = list(self.symbols)
        if self.sides is not None:
            out["sides"] = list(self.sides)
        if self.order_ids:
            out["order_ids"] = list(self.order_ids)
        return out

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

    def to_json(self) -> dict[str, Any]:
        """The message as written: the additive fields (``operator``, ``deadline_s``,
        ``signature``) only when set, the scope's optional lists only when given, times
        as :func:`format_time` writes them. Every writer of alerts goes through here."""
        out: dict[str, Any] = {
            "schema": self.schema_,
            "alert_id": self.alert_id,
            "action": self.action,
            "source": self.source,
            "reason": self.reason,
            "scope": self.scope.to_json(),
            "latch": self.latch,
            "dry_run": self.dry_run,
            "created_at": format_time(self.created_at),
            "expires_at": format_time(self.expires_at),
        }
        if self.operator is not None:
            out["operator"] = {"name": self.operator.name}
        if self.deadline_s is not None:
            out["deadline_s"] = self.deadline_s
        if self.signature is not None:
            out["signature"] = self.signature
        return out

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
            order_ids=frozenset(s.order_ids),  # empty means all (Scope normalises it)
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


# The last validation context made, kept for the next alert of the same deployment (a
# storm validates thousands in a row; a context holds the very ``accounts`` given).
_context_memo: ParseContext | None = None


def _parse_context(accounts: Collection[str], max_order_ids: int) -> ParseContext:
    global _context_memo  # noqa: PLW0603 - a one-entry memo of a pure function
    memo = _context_memo
    if memo is None or memo.accounts is not accounts or memo.max_order_ids != max_order_ids:
        memo = _context_memo = ParseContext(accounts=accounts, max_order_ids=max_order_ids)
    return memo


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
        # The model's validator called as model_validate calls it, without that
        # wrapper's checks of arguments not given here: the same validation, per alert.
        alert: Alert = Alert.__pydantic_validator__.validate_python(
            data, context=_parse_context(accounts, max_order_ids)
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


# One encoder for every record written (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


def position_to_json(position: Position) -> dict[str, Any]:
    """A result's ``origin``."""
    return {"topic": position.topic, "partition": position.partition, "offset": position.offset}


def position_from_json(value: Any) -> Position | None:
    """A result's ``origin`` read back; None when absent or unreadable."""
    if not isinstance(value, Mapping):
        return None
    topic, part, off = value.get("topic"), value.get("partition"), value.get("offset")
    if isinstance(topic, str) and _is_int(part) and _is_int(off):
        return Position(topic, part, off)
    return None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class ResultOrder(NamedTuple):
    """One entry of a result's ``orders``: an :class:`OrderReport` as written.

    ``outcome`` and ``reason`` are the written words, kept as text when read back (a
    newer daemon may use a word this one does not know); made of an order report they
    are its :class:`Outcome` and :class:`RejectReason` members, which are their words
    (``StrEnum``). A named tuple: a record of 2,000 orders makes 2,000 of them, each in
    one C call (:func:`_result_orders_of`)."""

    order_id: int
    symbol: str
    outcome: str  # an Outcome value, or a word a newer daemon added
    attempts: int = 0  # absent in records of older daemons
    reason: str | None = None  # a RejectReason value, when the outcome has one

    def to_json(self) -> dict[str, Any]:
        """The entry as written (``reason`` only when there is one)."""
        out: dict[str, Any] = {
            "order_id": self.order_id,
            "symbol": self.symbol,
            "outcome": self.outcome,
            "attempts": self.attempts,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


# Not frozen, like SweepResult: an alert storm makes one record per alert, and a frozen
# dataclass's __init__ sets each of these fields through object.__setattr__. A record
# is a value all the same: nobody modifies one once it is made.
@dataclass(slots=True)
class ResultRecord:
    """``killswitch.result/v1``: the one model of a result, written and read.

    Written by :func:`encode_result` / :func:`encode_results` / :func:`result_to_json`
    (and logged by :func:`final_result_fields`) from a record the shell makes of the
    engine's :class:`SweepResult` (:meth:`of`); read back by :func:`read_result` (the
    operator's board, :meth:`killswitch.board.AccountProgress.from_record`) and
    :func:`decode_result_summary` (the dedup rebuild and a replay). What is written
    reads back equal, with two exceptions: times are written to the millisecond, and
    ``carried`` is never written (it is the reader's decoding of a progress record's
    counts and orders, :func:`carried_from_json`, and None in a record to write).

    Lenient, as the contract asks of readers: a field a newer daemon added is ignored,
    one an older daemon lacked (or one not of its type) reads as its empty value, and
    only ``account`` and ``status`` are required. ``carried`` is trusted only as far
    as the other process's record is consistent.
    """

    account: str
    # A SweepStatus (a StrEnum member is its word), or a word a newer daemon added.
    status: str
    alert_id: str = ""  # empty when the record names none
    final: bool = False
    dry_run: bool = False
    counts: Counts = field(default_factory=Counts)
    residual_open: int = 0
    pending: int | None = None  # absent in records of older daemons
    sweeps: int = 0
    received_at: datetime | None = None
    first_cancel_at: datetime | None = None
    finished_at: datetime | None = None
    # The orders listed (at most RESULT_MAX_ORDERS when published) and how many more
    # the result had.
    orders: tuple[ResultOrder, ...] = ()
    orders_omitted: int = 0
    reason: str | None = None
    operator: str | None = None
    source: str = ""
    trigger_reason: str = ""
    not_found: tuple[int, ...] = ()
    unlisted_pairs: tuple[str, ...] = ()  # written in final results only
    in_flight: tuple[InFlight, ...] = ()
    # Written only when ``pairs_in_scope`` is set.
    pairs_listed: int | None = None
    pairs_in_scope: int | None = None
    was_halted: bool | None = None
    origin: Position | None = None
    carried: CarriedOutcomes | None = None

    @classmethod
    def of(
        cls,
        result: SweepResult,
        origin: Position | None = None,
        *,
        max_orders: int = RESULT_MAX_ORDERS,
    ) -> ResultRecord:
        """The record published for the engine's ``result`` of the alert read at
        ``origin``: its orders listed up to ``max_orders`` (those that did not go as
        planned first), and only what the record carries (``unlisted_pairs`` in final
        results, ``pairs_listed`` with ``pairs_in_scope``).

        The alerts one sweep coalesced share one list of order reports (see
        ``Sweep.result_for``): it is converted once, and their records share the tuple
        (which :func:`encode_results` writes once). ``counts`` is the result's own
        (shared the same way; nobody modifies a result's counts once it is made)."""
        orders, omitted = _record_orders(result.orders, max_orders)
        final = result.final
        in_scope = result.pairs_in_scope
        return cls(
            account=result.account,
            status=result.status,  # a StrEnum member is its word
            alert_id=result.alert_id,
            final=final,
            dry_run=result.dry_run,
            counts=result.counts,
            residual_open=result.residual_open,
            pending=result.pending,
            sweeps=result.sweeps,
            received_at=result.received_at,
            first_cancel_at=result.first_cancel_at,
            finished_at=result.finished_at,
            orders=orders,
            orders_omitted=omitted,
            reason=result.reason,
            operator=result.operator,
            source=result.source,
            trigger_reason=result.trigger_reason,
            not_found=tuple(result.not_found),
            unlisted_pairs=tuple(result.unlisted_pairs) if final else (),
            in_flight=tuple(result.in_flight),
            pairs_listed=result.pairs_listed if in_scope is not None else None,
            pairs_in_scope=in_scope,
            was_halted=result.was_halted,
            origin=origin,
        )


# When the list is cut, orders that did not go as planned come first.
_LIST_FIRST = {Outcome.FAILED: 0, Outcome.REJECTED: 1}


def _listed_orders(orders: list[OrderReport], limit: int) -> list[OrderReport]:
    if len(orders) <= limit:
        return orders
    ranked = sorted(orders, key=lambda o: _LIST_FIRST.get(o.outcome, 2))
    return ranked[:limit]


# An order report's fields in ResultOrder's order, and a ResultOrder of them: both C
# calls, so converting a list costs no Python frame per order.
_report_fields = attrgetter(*ResultOrder._fields)
_result_order = functools.partial(tuple.__new__, ResultOrder)


def _result_orders_of(reports: list[OrderReport]) -> tuple[ResultOrder, ...]:
    return tuple(map(_result_order, map(_report_fields, reports)))


# The last list of order reports converted, kept (so its id cannot be reused) with its
# length (a list changed since would not match), the limit and the conversion.
_record_orders_memo: tuple[list[OrderReport], int, int, tuple[ResultOrder, ...], int] | None = None


def _record_orders(orders: list[OrderReport], limit: int) -> tuple[tuple[ResultOrder, ...], int]:
    """The entries a record lists of ``orders`` (at most ``limit``), and how many it
    leaves out."""
    global _record_orders_memo  # noqa: PLW0603 - a one-entry memo of a pure function
    if not orders:  # progress results: no order list, and no reason to drop the memo
        return (), 0
    memo = _record_orders_memo
    if memo is not None and memo[0] is orders and memo[1] == len(orders) and memo[2] == limit:
        return memo[3], memo[4]
    listed = _result_orders_of(_listed_orders(orders, limit))
    omitted = len(orders) - len(listed)
    _record_orders_memo = (orders, len(orders), limit, listed, omitted)
    return listed, omitted


def result_to_json(record: ResultRecord) -> dict[str, Any]:
    """``killswitch.result/v1`` as a dict (field names are the contract)."""
    return _result_json(record, [o.to_json() for o in record.orders])


def _result_json(record: ResultRecord, orders: list[dict[str, Any]]) -> dict[str, Any]:
    c = record.counts
    out: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "alert_id": record.alert_id,
        "account": record.account,
        "status": record.status,
        "final": record.final,
        "dry_run": record.dry_run,
        "counts": {
            "resolved": c.resolved,
            "sent": c.sent,
            "already_closed": c.already_closed,
            "rejected": c.rejected,
            "failed": c.failed,
            "skipped": c.skipped,
        },
        "residual_open": record.residual_open,
        "pending": record.pending,
        "sweeps": record.sweeps,
        "received_at": format_time(record.received_at),
        "first_cancel_at": format_time(record.first_cancel_at),
        "finished_at": format_time(record.finished_at),
        "orders": orders,
        "orders_omitted": record.orders_omitted,
        "reason": record.reason,
        "operator": record.operator,
        "source": record.source,
        "not_found": list(record.not_found),
        "trigger_reason": record.trigger_reason,
        "in_flight": [{"order_id": o.order_id, "symbol": o.symbol} for o in record.in_flight],
    }
    if record.pairs_in_scope is not None:
        out["pairs_listed"] = record.pairs_listed
        out["pairs_in_scope"] = record.pairs_in_scope
    if record.final:
        # Pairs in scope never listed to the end: residual_open cannot count them.
        out["unlisted_pairs"] = list(record.unlisted_pairs)
    if record.was_halted is not None:
        out["was_halted"] = record.was_halted
    if record.origin is not None:
        out["origin"] = position_to_json(record.origin)
    return out


def encode_result(record: ResultRecord) -> bytes:
    """The bytes of a result record (Kafka key: the account).

    The records of the alerts one sweep coalesced share one tuple of orders (see
    :meth:`ResultRecord.of`): its JSON is made once and spliced into each record."""
    orders = _orders_text(record.orders)
    text = _ENCODER.encode(_result_json(record, []))
    # The first '"orders":[]' is the key's: inside a JSON string every quote is escaped.
    return text.replace('"orders":[]', f'"orders":{orders}', 1).encode("utf-8")


# Longest text a reduced result keeps of each of its texts (a reason is a sentence or two).
REDUCED_TEXT_MAX = 500
_SURROGATE = re.compile("[\ud800-\udfff]")


def writable(text: str, limit: int | None = None) -> str:
    """``text`` that UTF-8 can encode (a lone surrogate, which a JSON escape can name,
    becomes U+FFFD), cut at ``limit`` characters (the cut marked with an ellipsis)."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return _SURROGATE.sub("\ufffd", text)


def reduced_result(record: ResultRecord, error: str) -> ResultRecord:
    """The final result published when Kafka refused ``record`` as made (``error``: the
    error's name; too large for a request, text UTF-8 cannot encode): its status,
    counts, residual, times, origin and pair lists unchanged, its order lists left out
    (``orders_omitted`` counts every order), every text made writable and cut at
    :data:`REDUCED_TEXT_MAX` characters, and the reason saying so."""
    note = (
        f"the full result could not be published ({error}): "
        "its order list is left out and its texts are cut"
    )
    reason = writable(record.reason, REDUCED_TEXT_MAX) if record.reason else ""
    operator = record.operator
    return dataclasses.replace(
        record,
        orders=(),
        orders_omitted=record.orders_omitted + len(record.orders),
        in_flight=(),
        reason=f"{reason}; {note}" if reason else note,
        operator=None if operator is None else writable(operator, REDUCED_TEXT_MAX),
        source=writable(record.source, REDUCED_TEXT_MAX),
        trigger_reason=writable(record.trigger_reason, REDUCED_TEXT_MAX),
        unlisted_pairs=tuple(writable(p, REDUCED_TEXT_MAX) for p in record.unlisted_pairs),
    )


def final_result_fields(record: ResultRecord) -> dict[str, Any]:
    """The structured fields of a final result's log line: the result's own field
    names, its counts flattened, and the kill's duration in ``seconds`` (alike results
    published together share a line, see :func:`final_results_lines`)."""
    c = record.counts
    return {
        "alert_id": record.alert_id,
        "account": record.account,
        "status": record.status,
        "dry_run": record.dry_run,
        "sent": c.sent,
        "already_closed": c.already_closed,
        "rejected": c.rejected,
        "failed": c.failed,
        "skipped": c.skipped,
        "residual_open": record.residual_open,
        "unlisted_pairs": list(record.unlisted_pairs),
        "operator": record.operator,
        "source": record.source,
        "trigger_reason": record.trigger_reason,
        "reason": record.reason,
        "seconds": _seconds(record),
    }


def _seconds(record: ResultRecord) -> float | None:
    """The kill's duration in a log line: received to finished, in seconds to the ms."""
    received, finished = record.received_at, record.finished_at
    if finished is None or received is None:
        return None
    return round((finished - received).total_seconds(), 3)


# A result's own fields in its log line: alike results differ only in these.
_LOG_OWN = frozenset({"alert_id", "seconds"})
# What the other fields of a result's log line are made from (read in one C call per
# result: a storm logs thousands of results, compared here and written once per kind).
_log_shared = attrgetter(
    "account",
    "status",
    "dry_run",
    *(f"counts.{name}" for name in ("sent", "already_closed", "rejected", "failed", "skipped")),
    "residual_open",
    "unlisted_pairs",
    "operator",
    "source",
    "trigger_reason",
    "reason",
)


def final_results_lines(records: Sequence[ResultRecord]) -> list[tuple[str, dict[str, Any]]]:
    """The log lines of final results published together, as (event, fields), in order
    of first appearance: a ``final result`` line (:func:`final_result_fields`) for a
    result alone of its kind, one ``final results`` line (:func:`_shared_line`) for
    each set of alike results (equal in every field but ``alert_id`` and ``seconds``).

    An alert storm's results on one account are usually alike: a line per group of
    them, not per alert, keeps a storm from flooding the log and from spending the
    daemon's CPU on it, and still names every result."""
    kinds: dict[Hashable, list[ResultRecord]] = {}
    for record in records:
        kinds.setdefault(_alike_key(_log_shared(record)), []).append(record)
    return [
        ("final result", final_result_fields(alike[0]))
        if len(alike) == 1
        else ("final results", _shared_line(alike))
        for alike in kinds.values()
    ]


def _alike_key(shared: tuple[Any, ...]) -> Hashable:
    """``shared`` as the key of alike results; a value that cannot be compared that
    way keeps its result on a line of its own."""
    try:
        hash(shared)
    except TypeError:
        return object()  # equal to nothing else
    return shared


def _shared_line(alike: list[ResultRecord]) -> dict[str, Any]:
    """One line for alike results: their shared fields; ``alert_ids`` and
    ``seconds_each`` (one entry per result, in the same order) where a single line has
    ``alert_id`` and ``seconds``; ``alerts``, their count; ``seconds``, the longest
    (so a query for slow kills still finds the line)."""
    line: dict[str, Any] = {"alert_ids": [r.alert_id for r in alike], "alerts": len(alike)}
    first = final_result_fields(alike[0])
    line.update((k, v) for k, v in first.items() if k not in _LOG_OWN)
    each = [_seconds(r) for r in alike]
    known = [s for s in each if s is not None]
    line["seconds"] = max(known) if known else None
    line["seconds_each"] = each
    return line


# What records written from one template must share: every field but these (and
# whether they have an origin).
_PER_ALERT = ("alert_id", "received_at", "first_cancel_at", "finished_at")
_shared_fields = attrgetter(
    *(f.name for f in dataclasses.fields(ResultRecord) if f.name not in (*_PER_ALERT, "origin"))
)
# Stand-ins for the per-alert values while a template is written (a control character
# JSON escapes, so the stand-in appears in the text only where it was put).
_MARK = "\x00killswitch-template\x00"
_MARK_JSON = _ENCODER.encode(_MARK)


def encode_results(records: Sequence[ResultRecord]) -> list[bytes]:
    """:func:`encode_result` of each, byte for byte. A sweep's coalesced alerts have
    records that differ only in alert id, times and origin: those are written from
    one template (encoded once), filling in just what differs. The last template is
    kept for the next call (a sweep's next group shares it); a record no template can
    be cut from is encoded whole."""
    global _template_memo  # noqa: PLW0603 - a one-entry memo of a pure function
    out: list[bytes] = []
    key, parts = _template_memo or (None, None)
    for record in records:
        shared = (record.origin is None, _shared_fields(record))
        if shared != key:
            key, parts = shared, _template(record)
            _template_memo = (key, parts)
        out.append(encode_result(record) if parts is None else _fill(parts, record))
    return out


# The last template written, with what its records shared (the next group of a sweep
# shares it too).
_template_memo: tuple[tuple[Any, ...], list[str] | None] | None = None


def _template(record: ResultRecord) -> list[str] | None:
    """The text of ``record`` cut where its per-alert values go; None when it cannot be
    (a stand-in found elsewhere in it)."""
    marked = dataclasses.replace(record, alert_id=_MARK)
    orders = _orders_text(record.orders)
    data = _result_json(marked, [])
    for name in _PER_ALERT[1:]:
        data[name] = _MARK
    if record.origin is not None:
        data["origin"] = _MARK
    text = _ENCODER.encode(data).replace('"orders":[]', f'"orders":{orders}', 1)
    parts = text.split(_MARK_JSON)
    return parts if len(parts) == len(_PER_ALERT) + (record.origin is not None) + 1 else None


def _fill(parts: list[str], record: ResultRecord) -> bytes:
    # The template's parts around alert_id, received_at, first_cancel_at, finished_at
    # and (when it has one) origin, in that order; the last part ends the text. One
    # f-string either way: the text lists the sweep's orders, and is copied once.
    alert_id = _json_string(record.alert_id)
    received = _received_json(record.received_at)
    first_cancel = _time_json(record.first_cancel_at)
    finished = _time_json(record.finished_at)
    origin = record.origin
    if origin is None:
        return (
            f"{parts[0]}{alert_id}{parts[1]}{received}{parts[2]}{first_cancel}{parts[3]}"
            f"{finished}{parts[4]}"
        ).encode()
    return (
        f"{parts[0]}{alert_id}{parts[1]}{received}{parts[2]}{first_cancel}{parts[3]}"
        f"{finished}{parts[4]}{_origin_text(origin)}{parts[5]}"
    ).encode()


def _origin_text(origin: Position) -> str:
    """:func:`position_to_json` as :data:`_ENCODER` writes it, byte for byte (a result's
    body and its head header both carry it)."""
    return f"{_origin_start(origin.topic, origin.partition)}{int(origin.offset)}}}"


# A storm's alerts are read from a few partitions: the text up to the offset is cached.
@functools.lru_cache(maxsize=256)
def _origin_start(topic: str, partition: int) -> str:
    return f'{{"topic":{_json_string(topic)},"partition":{int(partition)},"offset":'


# How _ENCODER writes a string (it does not escape non-ASCII), without its Python frame.
_json_string: Callable[[str], str] = json.encoder.encode_basestring


# The alerts of one sweep share the times the sweep set (its first cancel, its end):
# each is formatted once.
@functools.lru_cache(maxsize=256)
def _time_json(value: datetime | None) -> str:
    # format_time's text needs no escaping.
    text = format_time(value)
    return "null" if text is None else f'"{text}"'


def _received_json(value: datetime | None) -> str:
    """:func:`_time_json` of a time few records share (each alert's receipt): a UTC
    time is written from its minute's text (cached: a storm's alerts share it) and its
    seconds and milliseconds, as ``format_time`` writes them (truncated, not rounded)."""
    if value is None or value.tzinfo is not UTC:
        return _time_json(value)
    minute = _minute_json(value.year, value.month, value.day, value.hour, value.minute)
    return f"{minute}{_SECONDS_JSON[value.second]}{_MILLIS_JSON[value.microsecond // 1000]}"


# The rest of a receipt time after its minute, looked up rather than formatted.
_SECONDS_JSON: Final = tuple(f"{second:02d}." for second in range(60))
_MILLIS_JSON: Final = tuple(f'{milli:03d}Z"' for milli in range(1000))


@functools.lru_cache(maxsize=64)
def _minute_json(year: int, month: int, day: int, hour: int, minute: int) -> str:
    return f'"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:'


# The last tuple of orders encoded, kept (so its id cannot be reused) with its JSON.
_orders_memo: tuple[tuple[ResultOrder, ...], str] | None = None


def _orders_text(orders: tuple[ResultOrder, ...]) -> str:
    """The JSON array of the orders a record lists."""
    global _orders_memo  # noqa: PLW0603 - a one-entry memo of a pure function
    if not orders:
        return "[]"
    memo = _orders_memo
    if memo is not None and memo[0] is orders:
        return memo[1]
    text = f"[{','.join(map(_order_text, orders))}]"
    _orders_memo = (orders, text)
    return text


def _order_text(order: ResultOrder) -> str:
    """``order.to_json()`` as :data:`_ENCODER` writes it, byte for byte: formatted
    directly, as a record lists up to 2,000 entries and building and encoding a dict
    for each costs more than the rest of the record."""
    order_id, symbol, outcome, attempts, reason = order
    text = (
        f'{{"order_id":{order_id:d},"symbol":{_json_string(symbol)},'
        f'"outcome":{_json_string(outcome)},"attempts":{attempts:d}'
    )
    return f"{text}}}" if reason is None else f'{text},"reason":{_json_string(reason)}}}'


# A duplicate result's reason begins with this, then `` (already STATUS)`` when the
# original handling's status is known (the operator's tools show that part).
DUPLICATE_REASON = "duplicate alert_id"


def duplicate_result(
    request: KillRequest, previous_status: str | None, now: datetime
) -> SweepResult:
    """The final ``duplicate`` result for a repeat of an alert already handled."""
    seen = f" (already {previous_status})" if previous_status else ""
    return no_sweep_result(request, SweepStatus.DUPLICATE, now, f"{DUPLICATE_REASON}{seen}")


def failed_result(request: KillRequest, reason: str, now: datetime) -> SweepResult:
    """A final ``failed`` result when the engine could not work at all (a replay keeps
    what an earlier process published for it)."""
    result = no_sweep_result(request, SweepStatus.FAILED, now, reason)
    return result if request.carried is None else carry_over(result, request.carried)


def read_result(data: Mapping[str, Any], *, lists: bool = True) -> ResultRecord | None:
    """A result record (decoded JSON) as a :class:`ResultRecord`; None without an
    ``account`` and a ``status`` (never raises).

    ``lists`` False leaves ``orders``, ``not_found``, ``unlisted_pairs`` and
    ``in_flight`` empty: every daemon reads every result, and the dedup window needs
    none of them (a record lists up to 2,000 orders)."""
    account, status = data.get("account"), data.get("status")
    if not isinstance(account, str) or not isinstance(status, str):
        return None
    if not lists:
        return _result_head(data, account, status)
    return dataclasses.replace(
        _result_head(data, account, status),
        orders=_result_orders(data.get("orders")),
        not_found=tuple(_entries(data.get("not_found"), _is_int)),
        unlisted_pairs=tuple(_entries(data.get("unlisted_pairs"), _is_str)),
        in_flight=_result_in_flight(data.get("in_flight")),
    )


def _result_head(data: Mapping[str, Any], account: str, status: str) -> ResultRecord:
    """Every field of a result record but its lists."""
    raw_counts = data.get("counts")
    c: Mapping[str, Any] = raw_counts if isinstance(raw_counts, Mapping) else {}
    alert_id, reason, operator = data.get("alert_id"), data.get("reason"), data.get("operator")
    was_halted = data.get("was_halted")
    return ResultRecord(
        account=account,
        status=status,
        alert_id=alert_id if isinstance(alert_id, str) else "",
        final=data.get("final") is True,
        dry_run=data.get("dry_run") is True,
        counts=Counts(
            _count(c.get("sent")) or 0,
            _count(c.get("already_closed")) or 0,
            _count(c.get("rejected")) or 0,
            _count(c.get("failed")) or 0,
            _count(c.get("skipped")) or 0,
        ),
        residual_open=_count(data.get("residual_open")) or 0,
        pending=_count(data.get("pending")),
        sweeps=_count(data.get("sweeps")) or 0,
        received_at=parse_time(data.get("received_at")),
        first_cancel_at=parse_time(data.get("first_cancel_at")),
        finished_at=parse_time(data.get("finished_at")),
        orders_omitted=_count(data.get("orders_omitted")) or 0,
        reason=reason if isinstance(reason, str) else None,
        operator=operator if isinstance(operator, str) else None,
        source=_text(data.get("source")),
        trigger_reason=_text(data.get("trigger_reason")),
        pairs_listed=_count(data.get("pairs_listed")),
        pairs_in_scope=_count(data.get("pairs_in_scope")),
        was_halted=was_halted if isinstance(was_halted, bool) else None,
        origin=position_from_json(data.get("origin")),
    )


def _count(value: Any) -> int | None:
    """A non-negative JSON integer (booleans are not counts), else None."""
    return value if type(value) is int and value >= 0 else None


def _is_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str)


def _entries(value: Any, keep: Callable[[Any], TypeGuard[_T]]) -> list[_T]:
    """The entries of a record's list that ``keep`` accepts (anything else left out)."""
    return [v for v in value if keep(v)] if isinstance(value, list) else []


def _result_orders(value: Any) -> tuple[ResultOrder, ...]:
    """The readable entries of a result's ``orders`` (anything else left out)."""
    rows = []
    for entry in _entries(value, _is_mapping):
        oid, symbol, outcome = entry.get("order_id"), entry.get("symbol"), entry.get("outcome")
        if _is_int(oid) and isinstance(symbol, str) and isinstance(outcome, str):
            reason = entry.get("reason")
            attempts = _count(entry.get("attempts")) or 0
            rows.append(
                ResultOrder(oid, symbol, outcome, attempts, reason if _is_str(reason) else None)
            )
    return tuple(rows)


def _result_in_flight(value: Any) -> tuple[InFlight, ...]:
    """The readable entries of a result's ``in_flight`` (anything else left out)."""
    return tuple(
        InFlight(e["order_id"], e["symbol"])
        for e in _entries(value, _is_mapping)
        if _is_int(e.get("order_id")) and isinstance(e.get("symbol"), str)
    )


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(value, Mapping)


def decode_result_summary(raw: bytes | None) -> ResultRecord | None:
    """Read back a result record for the dedup rebuild and a replay; None for anything
    that is not one, or names no ``alert_id`` (never raises).

    A progress result's outcomes come back as ``carried`` (None when its counts are
    unreadable; per-order outcomes dropped, counts kept, when its order list is
    unreadable or disagrees with the counts)."""
    data = load_json_object(raw, 16 * 1024 * 1024, strict=False)
    if isinstance(data, str) or data.get("schema") != RESULT_SCHEMA:
        return None
    record = read_result(data, lists=False)
    if record is None or not record.alert_id:
        return None
    if record.final:
        return record
    return dataclasses.replace(record, carried=carried_from_json(data))


# ----------------------------------------- a result's head, as a Kafka record header

# Every result record carries this header: what the dedup rebuild needs of a *final*
# result, so that every daemon reading every result need not decode each body (a
# storm's bodies list the sweep's orders). An optimisation only: the body stays the
# contract, and a reader falls back to it whenever the head is missing or unreadable.
RESULT_HEAD_HEADER: Final = "killswitch.result.head"
# Five short fields (an alert id is at most 128 characters, a topic name 249): a longer
# value is not a head a daemon wrote.
_MAX_HEAD_BYTES = 2048


@dataclass(frozen=True, slots=True)
class ResultHead:
    """A result's ``killswitch.result.head`` header, read back."""

    alert_id: str
    account: str
    status: str
    final: bool
    origin: Position | None


def encode_result_head(
    alert_id: str, account: str, status: str, final: bool, origin: Position | None
) -> bytes:
    """The header value written with a result, from the values its body is written
    from: compact JSON ``{"alert_id","account","status","final","origin"}`` in UTF-8,
    ``origin`` as in the body or null. Written as text (each string JSON-escaped): a
    storm publishes thousands of results at once (``_json_string`` is what
    ``_ENCODER.encode`` runs for a string)."""
    where = "null" if origin is None else _origin_text(origin)
    return (
        f'{{"alert_id":{_json_string(alert_id)},"account":{_json_string(account)},'
        f'"status":{_json_string(status)},"final":{"true" if final else "false"},'
        f'"origin":{where}}}'
    ).encode()


def read_result_head(raw: bytes | None) -> ResultHead | None:
    """A ``killswitch.result.head`` value read back; None unless it is a JSON object
    (no duplicate keys) with a non-empty ``alert_id``, ``account`` and ``status``, a
    boolean ``final`` and an ``origin`` that is null or a readable position (never
    raises). Keys it does not know are ignored."""
    data = load_json_object(raw, _MAX_HEAD_BYTES)
    if isinstance(data, str):
        return None
    alert_id, account, status = data.get("alert_id"), data.get("account"), data.get("status")
    final, where = data.get("final"), data.get("origin", False)
    origin = None if where is None else position_from_json(where)
    if (
        not (isinstance(alert_id, str) and alert_id)
        or not (isinstance(account, str) and account)
        or not (isinstance(status, str) and status)
        or not isinstance(final, bool)
        or (where is not None and origin is None)
    ):
        return None
    return ResultHead(alert_id, account, status, final, origin)


# ------------------------------------------- a progress result's outcomes, for a replay

_COUNT_NAMES = ("sent", "already_closed", "rejected", "failed", "skipped")


def carried_from_json(data: Mapping[str, Any]) -> CarriedOutcomes | None:
    """The outcomes a (progress) ``killswitch.result/v1`` record reports, decoded: the
    part of the result reader a replay folds in (:func:`killswitch.core.carry.carry_over`).

    Written by another process (maybe another version): trusted only as far as it is
    consistent. None without readable counts; counts only (no per-order outcomes) when
    the order list is unreadable, has duplicates, or is complete but disagrees with the
    counts; no cancels in flight when their list is unreadable or has duplicates (an
    entry that also has an outcome is left out). Never raises."""
    raw_counts = data.get("counts")
    if not isinstance(raw_counts, dict):
        return None
    values: dict[str, int] = {}
    for name in _COUNT_NAMES:
        value = _count(raw_counts.get(name, 0))
        if value is None:
            return None
        values[name] = value
    counts = Counts(**values)
    orders = _decode_reports(data.get("orders"), counts)
    return CarriedOutcomes(
        counts=counts,
        orders=orders,
        in_flight=_decode_in_flight(data.get("in_flight"), orders),
        sweeps=_count(data.get("sweeps")) or 0,
        received_at=parse_time(data.get("received_at")),
        first_cancel_at=parse_time(data.get("first_cancel_at")),
    )


def _decode_reports(raw: Any, counts: Counts) -> tuple[OrderReport, ...]:
    """Per-order outcomes that agree with ``counts``; () when any entry is unreadable."""
    if not isinstance(raw, list) or len(raw) > counts.resolved:
        return ()
    reports: dict[int, OrderReport] = {}
    for entry in raw:
        report = _decode_report(entry)
        if report is None or report.order_id in reports:
            return ()
        reports[report.order_id] = report
    out = tuple(reports.values())
    if len(out) == counts.resolved:  # a complete list must tally with the counts
        tally = Counts()
        for report in out:
            tally.add(report.outcome)
        if tally != counts:
            return ()
    return out


def _decode_in_flight(raw: Any, orders: tuple[OrderReport, ...]) -> tuple[InFlight, ...]:
    """Cancels in flight, each once and none with an outcome; () when any is unreadable."""
    if not isinstance(raw, list) or len(raw) > RESULT_MAX_ORDERS:
        return ()
    concluded = {o.order_id for o in orders}
    found: dict[int, InFlight] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            return ()
        order_id, symbol = _count(entry.get("order_id")), entry.get("symbol")
        if order_id is None or not isinstance(symbol, str) or order_id in found:
            return ()
        if order_id not in concluded:
            found[order_id] = InFlight(order_id, symbol)
    return tuple(found.values())


def _decode_report(entry: Any) -> OrderReport | None:
    if not isinstance(entry, dict):
        return None
    order_id, symbol = _count(entry.get("order_id")), entry.get("symbol")
    attempts = _count(entry.get("attempts", 0))
    outcome, reason = entry.get("outcome"), entry.get("reason")
    if order_id is None or not isinstance(symbol, str) or attempts is None:
        return None
    if not (isinstance(outcome, str) and outcome in _OUTCOMES):
        return None
    if not (reason is None or (isinstance(reason, str) and reason in _REASONS)):
        return None
    return OrderReport(
        order_id, symbol, Outcome(outcome), attempts, RejectReason(reason) if reason else None
    )


_OUTCOMES = frozenset(o.value for o in Outcome)
_REASONS = frozenset(r.value for r in RejectReason)


def scope_to_json(scope: Scope) -> dict[str, Any]:
    """A core scope as JSON (sorted lists; null means all)."""

    def _list(values: frozenset[Any] | None) -> list[Any] | None:
        return sorted(str(v) if isinstance(v, Side) else v for v in values) if values else None

    return {
        "symbols": _list(scope.symbols),
        "sides": _list(scope.sides),
        "order_ids": _list(scope.order_ids),
    }


def state_to_json(state: HaltState, daemon: str | None = None) -> dict[str, Any]:
    """``killswitch.state/v1`` as a dict (field names are the contract).

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
    return record


def encode_state(state: HaltState, daemon: str | None = None) -> bytes:
    """The halt state record for the compacted state topic (Kafka key: the account)."""
    return _dumps(state_to_json(state, daemon))


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
    return None if isinstance(data, str) else state_from_json(data)


def state_from_json(data: Mapping[str, Any]) -> tuple[HaltState, str | None] | None:
    """A state record (decoded JSON) and the daemon that wrote it (None when not
    recorded); None when it is not a readable state record (never raises)."""
    daemon = data.get("daemon")
    state = _halt_state(data)
    return None if state is None else (state, daemon if isinstance(daemon, str) else None)


def _halt_state(data: Mapping[str, Any]) -> HaltState | None:
    try:
        scope = data.get("scope") or {}
        since = parse_time(data["since"])
        if since is None:
            return None
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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """``killswitch.dlq/v1``: a refused input record, where it was read and why.

    The original is kept as ``value`` (text) when it is UTF-8, else ``value_base64``;
    beyond :data:`DLQ_MAX_VALUE_BYTES` it is truncated and ``value_truncated`` is set.
    """

    kind: str  # a RejectKind value
    reason: str
    alert_id: str | None = None
    topic: str = ""
    partition: int = 0
    offset: int = 0
    key: str | None = None
    received_at: datetime | None = None
    value_bytes: int = 0
    value_truncated: bool = False
    value: str | None = None
    value_base64: str | None = None

    @classmethod
    def of(
        cls,
        raw: bytes | None,
        *,
        position: Position,
        key: bytes | None,
        rejection: Rejection,
        received_at: datetime,
        max_value_bytes: int = DLQ_MAX_VALUE_BYTES,
    ) -> DeadLetter:
        """The dead letter of a record read at ``position`` and refused, keeping at most
        ``max_value_bytes`` of its value."""
        body = raw or b""
        kept = body[:max_value_bytes]
        try:
            text, b64 = kept.decode("utf-8"), None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(kept).decode("ascii")
        return cls(
            kind=rejection.kind.value,
            reason=rejection.reason,
            alert_id=rejection.alert_id,
            topic=position.topic,
            partition=position.partition,
            offset=position.offset,
            key=_text_or_none(key),
            received_at=received_at,
            value_bytes=len(body),
            value_truncated=len(kept) < len(body),
            value=text,
            value_base64=b64,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as written (field names are the contract)."""
        record: dict[str, Any] = {
            "schema": DLQ_SCHEMA,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "kind": self.kind,
            "reason": self.reason,
            "alert_id": self.alert_id,
            "received_at": format_time(self.received_at),
            "value_bytes": self.value_bytes,
            "value_truncated": self.value_truncated,
        }
        if self.value is not None:
            record["value"] = self.value
        if self.value_base64 is not None:
            record["value_base64"] = self.value_base64
        return record


def read_dead_letter(data: Mapping[str, Any]) -> DeadLetter:
    """A dead letter (decoded JSON) read leniently: what is missing or not of its type
    reads as empty (never raises)."""
    alert_id, key = data.get("alert_id"), data.get("key")
    value, b64 = data.get("value"), data.get("value_base64")
    return DeadLetter(
        kind=_text(data.get("kind")),
        reason=_text(data.get("reason")),
        alert_id=alert_id if isinstance(alert_id, str) else None,
        topic=_text(data.get("topic")),
        partition=_count(data.get("partition")) or 0,
        offset=_count(data.get("offset")) or 0,
        key=key if isinstance(key, str) else None,
        received_at=parse_time(data.get("received_at")),
        value_bytes=_count(data.get("value_bytes")) or 0,
        value_truncated=data.get("value_truncated") is True,
        value=value if isinstance(value, str) else None,
        value_base64=b64 if isinstance(b64, str) else None,
    )


def encode_dlq(
    raw: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    rejection: Rejection,
    received_at: datetime,
    reduced: bool = False,
) -> bytes:
    """The bytes of the dead letter of a refused record (see :class:`DeadLetter`).

    ``reduced``: the form published when Kafka refused the full one as made: without
    the original's value (``value_bytes`` and ``value_truncated`` still say what it
    was), its texts made writable and cut (:func:`writable`)."""
    if reduced:
        alert_id = rejection.alert_id
        rejection = dataclasses.replace(
            rejection,
            reason=writable(rejection.reason, REDUCED_TEXT_MAX),
            alert_id=None if alert_id is None else writable(alert_id, REDUCED_TEXT_MAX),
        )
    letter = DeadLetter.of(
        raw,
        position=Position(topic, partition, offset),
        key=key,
        rejection=rejection,
        received_at=received_at,
        max_value_bytes=0 if reduced else DLQ_MAX_VALUE_BYTES,
    )
    return _dumps(letter.to_json())


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


# Heartbeat (``killswitch.heartbeats``, key = source): trading systems' liveness for the dead-man.


class Heartbeat(BaseModel):
    """``killswitch.heartbeat/v1``."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    schema_: Literal["killswitch.heartbeat/v1"] = Field(alias="schema")
    source: str = Field(min_length=1, max_length=128)
    sent_at: Timestamp | None = None

    def to_json(self) -> dict[str, Any]:
        """The message as written (``sent_at`` as :func:`format_time` writes it)."""
        return {"schema": self.schema_, "source": self.source, "sent_at": format_time(self.sent_at)}


def parse_heartbeat(raw: bytes | None) -> Heartbeat | str:
    """A heartbeat, or the reason the bytes are not one (never raises)."""
    data = load_json_object(raw, _MAX_HEARTBEAT_BYTES)
    if isinstance(data, str):
        return data
    try:
        return Heartbeat.model_validate(data)
    except ValidationError as exc:
        return f"not a heartbeat: {exc.error_count()} problem(s)"


def encode_heartbeat(source: str, sent_at: datetime) -> bytes:
    """The heartbeat bytes a trading system sends (helper for tools and tests)."""
    beat = Heartbeat.model_construct(schema_=HEARTBEAT_SCHEMA, source=source, sent_at=sent_at)
    return json.dumps(beat.to_json(), separators=(",", ":")).encode()
