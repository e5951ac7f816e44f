"""A ``trigger`` / ``release`` command line turned into an alert message (pure).

:func:`prepare_trigger` builds the ``killswitch.alert/v1`` message, validates it exactly
as the daemon will (:func:`killswitch.contracts.parse_alert` on the manual channel, with
the configured signing allowlist) and signs it with the operator's Ed25519 key when one
is given; :class:`Prepared` is what ``trigger`` and ``release`` publish. Also the
options the two commands share."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from killswitch.commands.common import OPERATOR_ENV, OPERATOR_KEY_ENV, UsageError, split_values
from killswitch.config import IntakeSettings, TriggerSigningSettings
from killswitch.contracts import (
    ALERT_SCHEMA,
    Alert,
    AlertScopeModel,
    OperatorModel,
    Rejection,
    parse_alert,
)
from killswitch.core.pairs import PAIR_NAME_RE, suggest
from killswitch.triggers import TriggerKeyError, TriggerVerifier, sign_trigger

__all__ = [
    "Prepared",
    "TriggerRequest",
    "TriggerRules",
    "add_publish_arguments",
    "add_target_arguments",
    "alert_message",
    "message_key",
    "new_alert_id",
    "operator_name",
    "prepare_trigger",
    "request_from_args",
]


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-a",
        "--account",
        action="append",
        metavar="ID",
        help="account id (repeatable, or comma-separated)",
    )
    parser.add_argument("--all", action="store_true", help="every configured account")


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--operator",
        metavar="NAME",
        help=f"who you are, as on the signing allowlist (default: ${OPERATOR_ENV}, else login)",
    )
    parser.add_argument(
        "--signing-key",
        metavar="FILE",
        help=f"Ed25519 private key (PEM or OpenSSH) to sign with (default: ${OPERATOR_KEY_ENV})",
    )
    parser.add_argument("--alert-id", metavar="ID", help="alert id (default: generated)")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop waiting for results after this long (default: the deadline plus 30 s)",
    )
    parser.add_argument(
        "--no-follow", action="store_true", help="publish and exit without waiting for results"
    )


@dataclass(frozen=True, slots=True)
class TriggerRequest:
    """What the operator asked for (one alert)."""

    action: Literal["kill", "release"]
    accounts: Sequence[str] | Literal["*"]
    reason: str
    operator: str
    symbols: Sequence[str] = ()
    sides: Sequence[str] = ()
    order_ids: Sequence[int] = ()
    latch: bool = False
    dry_run: bool = False
    deadline_s: float | None = None
    alert_id: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated (and possibly signed) alert ready to publish."""

    message: dict[str, Any]
    value: bytes
    key: bytes
    alert_id: str
    accounts: list[str]  # the accounts whose results to wait for
    alert: Alert  # the message as the daemon reads it

    @property
    def signed(self) -> bool:
        return self.alert.signature is not None


def new_alert_id(action: str, now: datetime, token: str | None = None) -> str:
    """``op-20261124T010203-1a2b3c4d`` (kill) or ``rel-...`` (release)."""
    prefix = "op" if action == "kill" else "rel"
    return f"{prefix}-{now.astimezone(UTC):%Y%m%dT%H%M%S}-{token or secrets.token_hex(4)}"


def _order_ids(values: Sequence[str]) -> list[int]:
    out = []
    for value in values:
        if not value.isdigit() or int(value) <= 0:
            raise UsageError(f"--order-id {value[:40]!r}: order ids are positive integers")
        out.append(int(value))
    return out


def _pair_names(names: list[str]) -> list[str]:
    """``--symbol`` values, each a well-formed pair name (the daemon's own check,
    said in terms of the option rather than of the message's field)."""
    for name in names:
        if not re.match(PAIR_NAME_RE, name):
            raise UsageError(
                f"--symbol {name[:40]!r}: not a pair name (letters and digits, joined by "
                "_ . or -, as the exchange writes them: BTC_USDT)"
            )
    return names


def request_from_args(
    args: argparse.Namespace, action: Literal["kill", "release"]
) -> TriggerRequest:
    """The command line as a :class:`TriggerRequest` (UsageError on contradictions)."""
    accounts = split_values(args.account, "--account")
    if args.all and accounts:
        raise UsageError("give either --account or --all, not both")
    if not args.all and not accounts:
        raise UsageError("name the accounts with --account ID (repeatable), or use --all")
    if not args.reason.strip():
        raise UsageError("--reason is empty: say why (it goes into every result and halt)")
    deadline = getattr(args, "deadline", None)
    if deadline is not None and deadline <= 0:
        raise UsageError("--deadline must be positive")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    return TriggerRequest(
        action=action,
        accounts="*" if args.all else accounts,
        reason=args.reason,
        operator=operator_name(args.operator),
        symbols=_pair_names(split_values(getattr(args, "symbol", None), "--symbol")),
        sides=list(dict.fromkeys(getattr(args, "side", None) or ())),
        order_ids=_order_ids(split_values(getattr(args, "order_id", None), "--order-id")),
        latch=bool(getattr(args, "latch", False)),
        dry_run=bool(getattr(args, "dry_run", False)),
        deadline_s=deadline,
        alert_id=args.alert_id,
    )


def operator_name(given: str | None, environ: dict[str, str] | None = None) -> str:
    """``--operator``, else ``$KILLSWITCH_OPERATOR``, else the login name. An empty
    ``--operator`` (an unset shell variable) is refused, as any option given empty:
    falling back would put someone else's name on the trigger."""
    if given is not None and not given.strip():
        raise UsageError("--operator '': empty value (leave the option out instead)")
    env = os.environ if environ is None else environ
    name = given or env.get(OPERATOR_ENV)
    if not name:
        with contextlib.suppress(OSError, KeyError):
            name = getpass.getuser()
    if not name:
        raise UsageError(f"cannot tell who you are: pass --operator NAME or set {OPERATOR_ENV}")
    return name


def alert_message(request: TriggerRequest, *, alert_id: str, now: datetime) -> dict[str, Any]:
    """The ``killswitch.alert/v1`` object for a request (unsigned, not yet validated:
    :func:`prepare_trigger` validates it as the daemon will, to refuse it with the
    daemon's own reason)."""
    scope = AlertScopeModel.model_construct(
        accounts="*" if request.accounts == "*" else list(request.accounts),
        symbols=list(request.symbols) or None,
        sides=cast("list[Literal['BUY', 'SELL']]", list(request.sides)) or None,
        order_ids=list(request.order_ids),
    )
    alert = Alert.model_construct(
        schema_=ALERT_SCHEMA,
        alert_id=alert_id,
        action=request.action,
        source="operator-cli",
        reason=request.reason,
        scope=scope,
        latch=request.latch,
        dry_run=request.dry_run,
        created_at=now,
        expires_at=None,
        deadline_s=request.deadline_s,
        operator=OperatorModel.model_construct(name=request.operator),
    )
    return alert.to_json()


def _check_accounts(named: Sequence[str] | Literal["*"], configured: Sequence[str]) -> None:
    """Refuse an account id the configuration does not have, saying what was likely
    meant and which ids there are (the daemon's own refusal names only the unknown)."""
    if named == "*":
        return
    unknown = [a for a in dict.fromkeys(named) if a not in configured]
    if not unknown:
        return
    parts = []
    for name in unknown[:5]:
        close = suggest(name, configured)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        parts.append(f"{name[:64]!r}{hint}")
    ids = ", ".join(configured[:10]) + (", ..." if len(configured) > 10 else "")
    raise UsageError(
        f"unknown account id(s): {', '.join(parts)}; the configuration has: {ids or 'none'}"
    )


def message_key(accounts: Sequence[str] | Literal["*"]) -> bytes:
    """The Kafka key: the account (the first one named when there are several; ``*``)."""
    if accounts == "*":
        return b"*"
    return accounts[0].encode()


@dataclass(frozen=True)
class TriggerRules:
    """What the daemon checks a trigger against: the configured account ids, the
    intake's size limits and the signing rules (allowlist, whether signing is required)."""

    accounts: tuple[str, ...]
    intake: IntakeSettings
    signing: TriggerSigningSettings


def prepare_trigger(
    request: TriggerRequest,
    rules: TriggerRules,
    *,
    now: datetime,
    signing_key: Ed25519PrivateKey | None = None,
    require_signature: bool = True,
) -> Prepared:
    """Build, sign and validate one trigger exactly as the daemon will read it.

    Raises :class:`UsageError` with the daemon's own reason when the daemon would
    refuse it (unknown account, bad symbol, unsigned while signing is required,
    operator not on the allowlist...). ``require_signature`` False (a direct kill,
    which no daemon reads: the account keys are the authority) skips the signing rule.
    """
    _check_accounts(request.accounts, rules.accounts)
    alert_id = request.alert_id or new_alert_id(request.action, now)
    message = alert_message(request, alert_id=alert_id, now=now)
    if signing_key is not None:
        message = sign_trigger(message, request.operator, signing_key)
    try:
        verifier = TriggerVerifier(rules.signing)
    except TriggerKeyError as exc:
        raise UsageError(str(exc)) from None
    if verifier.required and signing_key is None and require_signature:
        raise UsageError(
            "trigger signing is required by the configuration: pass --signing-key FILE "
            f"(or set {OPERATOR_KEY_ENV})"
        )
    value = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    configured = list(rules.accounts)
    parsed = parse_alert(
        value,
        channel="manual",
        accounts=configured,
        max_message_bytes=rules.intake.max_message_bytes,
        max_order_ids=rules.intake.max_order_ids,
        now=now,
        verifier=verifier if signing_key is not None else None,
    )
    if isinstance(parsed, Rejection):
        raise UsageError(f"refused before sending ({parsed.kind}): {parsed.reason}")
    return Prepared(
        message=message,
        value=value,
        key=message_key(request.accounts),
        alert_id=alert_id,
        accounts=parsed.target_accounts(configured),
        alert=parsed,
    )
