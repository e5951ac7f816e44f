"""Operator commands: ``trigger``, ``release``, ``results``, ``status``, ``check`` (and
operator keys).

``trigger`` builds a ``killswitch.alert/v1`` kill from the command line, validates it
exactly as the daemon will (:func:`killswitch.alerts.parse_alert` on the manual
channel, with the configured signing allowlist), signs it with the operator's Ed25519
key when one is given, publishes it to the manual topic and follows the results topic
(and the dead letter topic, to report a refusal at once) until every account has a
final result, showing a progress bar per account; ``trigger --direct`` runs the kill in
this process instead (:mod:`killswitch.direct`). ``release`` does the same for a
release. ``results`` reads an alert's results back (or follows them); ``status`` reads
the compacted state topic; ``check`` tries Kafka, the topics, the daemons' consumer
group, the exchange and every account's key with read-only calls.

The decisions and the text live in pure functions (:func:`prepare_trigger` here,
:mod:`killswitch.render` for everything printed); this module is the I/O around them.
Exit codes: 0 success, 1 the job failed (not flat, timed out, a check failed, Kafka
unreachable), 2 bad usage or a trigger the daemon refused (dead letter, the reason
printed), 3 nothing to act on: flat but order ids named were never found open, or a
release of an account that was not halted (see :meth:`killswitch.render.Board.exit_code`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import json
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_ssh_private_key,
)

from killswitch.alerts import (
    ALERT_SCHEMA,
    Alert,
    AlertScopeModel,
    OperatorModel,
    Rejection,
    load_json_object,
    parse_alert,
)
from killswitch.config import AccountSettings, Settings, settings_from_args
from killswitch.core.model import HaltState
from killswitch.core.pairs import PairList
from killswitch.display import Display
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import AuthError, ExchangeError, Redirected, redirect_problem
from killswitch.exchange.signing import KeyLoadError
from killswitch.intake.kafka import connection_kwargs, make_producer, make_reader
from killswitch.intake.readers import read_halt_states
from killswitch.observability import first_page
from killswitch.render import (
    AccountProgress,
    Board,
    Check,
    GroupView,
    check_lines,
    dry_run_lines,
    group_checks,
    progress_lines,
    status_lines,
    status_records,
    summary_lines,
)
from killswitch.triggers import TriggerKeyError, TriggerVerifier, sign_trigger

__all__ = [
    "OPERATOR_ENV",
    "OPERATOR_KEY_ENV",
    "OPERATOR_KEY_PASSPHRASE_ENV",
    "Prepared",
    "TriggerRequest",
    "UsageError",
    "cli_check",
    "cli_release",
    "cli_results",
    "cli_status",
    "cli_trigger",
    "keygen_operator",
    "load_operator_key",
    "prepare_trigger",
    "read_results",
    "read_status",
    "results_document",
    "run_checks",
    "run_trigger",
    "write_operator_key",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

OPERATOR_ENV = "KILLSWITCH_OPERATOR"
OPERATOR_KEY_ENV = "KILLSWITCH_OPERATOR_KEY"
OPERATOR_KEY_PASSPHRASE_ENV = "KILLSWITCH_OPERATOR_KEY_PASSPHRASE"  # noqa: S105 - a variable name

# Beyond the kill's own deadline, how long to wait for results: the alert may queue
# behind other work, and the last verification listing needs its round trip.
_FOLLOW_MARGIN_S = 30.0
_KAFKA_TIMEOUT_S = 15.0
_POLL_S = 0.2
_MAX_RESULT_BYTES = 16 * 1024 * 1024


class UsageError(Exception):
    """The command line cannot be turned into a valid trigger (exit code 2)."""


class OperatorError(Exception):
    """The command could not do its job (Kafka unreachable, topic missing): exit code 1."""


# ------------------------------------------------------------------------ arguments


def _split(values: Sequence[str] | None) -> list[str]:
    """Repeatable options that also take comma-separated lists."""
    out: list[str] = []
    for value in values or ():
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return list(dict.fromkeys(out))


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-a",
        "--account",
        action="append",
        metavar="ID",
        help="account id (repeatable, or comma-separated)",
    )
    parser.add_argument("--all", action="store_true", help="every configured account")


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
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


def add_arguments_trigger(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch trigger``."""
    parser.description = (
        "Publish a manual kill to the manual topic and follow it to its final result "
        "(--direct: run it in this process against the exchange, no Kafka or daemon "
        "needed). Exit 0 only when every account ends flat (dry_run for --dry-run)."
    )
    _add_target_arguments(parser)
    parser.add_argument(
        "-s", "--symbol", action="append", metavar="PAIR", help="only these pairs (default: all)"
    )
    parser.add_argument(
        "--side",
        action="append",
        type=str.upper,
        choices=["BUY", "SELL"],
        help="only this side (default: both)",
    )
    parser.add_argument(
        "--order-id", action="append", metavar="ID", help="only these order ids (repeatable)"
    )
    parser.add_argument(
        "-r",
        "--reason",
        required=True,
        help="why (in every result as trigger_reason, and in the halt state)",
    )
    parser.add_argument(
        "--latch", action="store_true", help="keep the accounts halted until a release"
    )
    parser.add_argument("--dry-run", action="store_true", help="resolve the orders, cancel nothing")
    parser.add_argument(
        "--deadline", type=float, metavar="SECONDS", help="kill deadline (default: configured)"
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="break glass: run the kill in this process straight against the exchange with "
        "the configured account keys (no Kafka, no daemon needed); results go to the audit "
        "file, and to Kafka when it answers",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="write the final results as JSON to FILE (a dry run: every order it would cancel)",
    )
    parser.add_argument(
        "--audit-file",
        metavar="FILE",
        help="with --direct: the JSON-lines file to append the results to "
        "(default: direct.audit_file)",
    )
    _add_common_arguments(parser)


def add_arguments_release(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch release``."""
    parser.description = (
        "Publish a release that lifts the halt latch of accounts and wait for the "
        "'released' result. Exit 0 only when every account is released; 3 when an "
        "account was not halted (the release did nothing there)."
    )
    _add_target_arguments(parser)
    parser.add_argument("-r", "--reason", default="released by operator", help="why")
    _add_common_arguments(parser)


def add_arguments_status(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch status``."""
    parser.description = "Show the halted accounts, read from the compacted state topic."
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--timeout", type=float, default=_KAFKA_TIMEOUT_S, metavar="SECONDS", help="read timeout"
    )


def add_arguments_check(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch check``."""
    parser.description = (
        "Check that Kafka answers, the topics exist, the exchange answers for every "
        "account and accepts every account's key (a read-only signed call). Exit 0 only "
        "when every check passes."
    )
    parser.add_argument(
        "--timeout", type=float, default=_KAFKA_TIMEOUT_S, metavar="SECONDS", help="per check"
    )


# -------------------------------------------------------------------- trigger model


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


def request_from_args(
    args: argparse.Namespace, action: Literal["kill", "release"]
) -> TriggerRequest:
    """The command line as a :class:`TriggerRequest` (UsageError on contradictions)."""
    accounts = _split(args.account)
    if args.all and accounts:
        raise UsageError("give either --account or --all, not both")
    if not args.all and not accounts:
        raise UsageError("name the accounts with --account ID (repeatable), or use --all")
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
        symbols=_split(getattr(args, "symbol", None)),
        sides=list(dict.fromkeys(getattr(args, "side", None) or ())),
        order_ids=_order_ids(_split(getattr(args, "order_id", None))),
        latch=bool(getattr(args, "latch", False)),
        dry_run=bool(getattr(args, "dry_run", False)),
        deadline_s=deadline,
        alert_id=args.alert_id,
    )


def operator_name(given: str | None, environ: dict[str, str] | None = None) -> str:
    """``--operator``, else ``$KILLSWITCH_OPERATOR``, else the login name."""
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


def message_key(accounts: Sequence[str] | Literal["*"]) -> bytes:
    """The Kafka key: the account (the first one named when there are several; ``*``)."""
    if accounts == "*":
        return b"*"
    return accounts[0].encode()


def prepare_trigger(
    request: TriggerRequest,
    settings: Settings,
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
    alert_id = request.alert_id or new_alert_id(request.action, now)
    message = alert_message(request, alert_id=alert_id, now=now)
    if signing_key is not None:
        message = sign_trigger(message, request.operator, signing_key)
    try:
        verifier = TriggerVerifier(settings.trigger_signing)
    except TriggerKeyError as exc:
        raise UsageError(str(exc)) from None
    if verifier.required and signing_key is None and require_signature:
        raise UsageError(
            "trigger signing is required by the configuration: pass --signing-key FILE "
            f"(or set {OPERATOR_KEY_ENV})"
        )
    value = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    configured = [a.id for a in settings.accounts]
    parsed = parse_alert(
        value,
        channel="manual",
        accounts=configured,
        max_message_bytes=settings.intake.max_message_bytes,
        max_order_ids=settings.intake.max_order_ids,
        now=now,
        verifier=verifier if signing_key is not None else None,
    )
    if isinstance(parsed, Rejection):
        raise UsageError(f"the daemon would refuse this trigger ({parsed.kind}): {parsed.reason}")
    return Prepared(
        message=message,
        value=value,
        key=message_key(request.accounts),
        alert_id=alert_id,
        accounts=parsed.target_accounts(configured),
        alert=parsed,
    )


# ---------------------------------------------------------------------- operator keys


def load_operator_key(path: Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) or OpenSSH file.

    Errors name the file and the problem, never any key material.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"signing key {path}: {exc.strerror or type(exc).__name__}") from None
    secret = passphrase.encode() if passphrase else None
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            key: object = load_ssh_private_key(data, secret)
        else:
            key = load_pem_private_key(data, secret)
    except TypeError:
        raise UsageError(
            f"signing key {path}: encrypted; set {OPERATOR_KEY_PASSPHRASE_ENV}"
            if secret is None
            else f"signing key {path}: not encrypted, but a passphrase was given"
        ) from None
    except ValueError:
        raise UsageError(
            f"signing key {path}: not a readable private key (or wrong passphrase)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"signing key {path}: {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key in base64: what ``trigger_signing.operators`` lists."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def write_operator_key(out: Path, *, force: bool = False) -> str:
    """Generate an Ed25519 key into ``out`` (mode 600, PKCS#8 PEM); return the public key."""
    if out.exists() and not force:
        raise UsageError(f"{out} exists (use --force to overwrite)")
    key = Ed25519PrivateKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return public_key_b64(key)


def keygen_operator(args: argparse.Namespace) -> int:
    """``killswitch keygen --ed25519 --out FILE``: an operator's trigger signing key."""
    try:
        public = write_operator_key(Path(args.out), force=args.force)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"private key: {args.out} (mode 600; pass it with --signing-key)\n"
        "add to the daemon's configuration:\n"
        "  [[trigger_signing.operators]]\n"
        '  name = "YOUR-NAME"\n'
        f'  public_key = "{public}"'
    )
    return EXIT_OK


# ------------------------------------------------------------------------ Kafka helpers


async def _topic_partitions(consumer: AIOKafkaConsumer) -> dict[str, list[int]]:
    """Every topic the broker lists, with its partition ids."""
    # aiokafka has no public call for metadata of topics a consumer is not
    # subscribed to; the client's full metadata fetch is what topics() uses too.
    cluster = await consumer._client.fetch_all_metadata()
    return {t: sorted(cluster.partitions_for_topic(t) or ()) for t in cluster.topics()}


async def _start_reader(settings: Settings) -> AIOKafkaConsumer:
    consumer = make_reader(settings.kafka)
    try:
        async with asyncio.timeout(_KAFKA_TIMEOUT_S):
            await consumer.start()
    except (KafkaError, TimeoutError, OSError) as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise OperatorError(
            f"Kafka at {settings.kafka.bootstrap_servers} is not reachable ({type(exc).__name__})"
        ) from None
    return consumer


def _missing_topic(name: str, role: str) -> OperatorError:
    return OperatorError(
        f"the {role} topic {name!r} does not exist: is the daemon running against this "
        "Kafka? (it creates its topics at start-up)"
    )


# ---------------------------------------------------------------------- trigger / release


@dataclass
class TriggerRun:
    """What happened (for callers such as the demo)."""

    prepared: Prepared
    board: Board
    published: bool = False
    exit_code: int = EXIT_FAILED
    elapsed_s: float = 0.0
    partitions: list[TopicPartition] = field(default_factory=list)


async def run_trigger(
    settings: Settings,
    prepared: Prepared,
    *,
    out: TextIO,
    tty: bool,
    timeout_s: float,
    follow: bool = True,
    on_published: Callable[[], None] | None = None,
) -> TriggerRun:
    """Publish ``prepared`` to the manual topic and follow its results to the end."""
    board = Board(
        prepared.alert_id,
        prepared.accounts,
        action=prepared.alert.action,
        dry_run=prepared.alert.dry_run,
    )
    run = TriggerRun(prepared, board)
    topics = settings.kafka.topics
    loop = asyncio.get_running_loop()
    started = loop.time()
    consumer = await _start_reader(settings)
    try:
        async with asyncio.timeout(_KAFKA_TIMEOUT_S):
            parts = await _topic_partitions(consumer)
        if topics.manual not in parts:
            raise _missing_topic(topics.manual, "manual")
        if follow:
            if topics.results not in parts:
                raise _missing_topic(topics.results, "results")
            run.partitions = [
                TopicPartition(t, p) for t in (topics.results, topics.dlq) for p in parts.get(t, ())
            ]
            consumer.assign(run.partitions)
            # Positions fixed before publishing, so no result can slip past.
            for tp, offset in (await consumer.end_offsets(run.partitions)).items():
                consumer.seek(tp, offset)
        await _publish(settings, topics.manual, prepared)
        run.published = True
        if on_published is not None:
            on_published()
        _announce(out, prepared, topics.manual)
        if not follow:
            run.exit_code = EXIT_OK
            return run
        await _follow(consumer, board, Display(out, tty=tty), topics.dlq, started + timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    run.elapsed_s = loop.time() - started
    for line in summary_lines(board, run.elapsed_s):
        out.write(line + "\n")
    out.flush()
    run.exit_code = board.exit_code()
    return run


async def _publish(settings: Settings, topic: str, prepared: Prepared) -> None:
    producer = make_producer(settings.kafka)
    try:
        async with asyncio.timeout(_KAFKA_TIMEOUT_S):
            await producer.start()
            await producer.send_and_wait(topic, prepared.value, key=prepared.key)
    except (KafkaError, TimeoutError, OSError) as exc:
        raise OperatorError(f"could not publish to {topic!r}: {type(exc).__name__}") from None
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


def _announce(out: TextIO, prepared: Prepared, topic: str) -> None:
    flags = [*_flags(prepared.alert), "signed" if prepared.signed else "unsigned"]
    out.write(
        f"{prepared.alert.action} {prepared.alert_id} published to {topic} by "
        f"{_operator(prepared.alert)} for {', '.join(prepared.accounts)} ({', '.join(flags)})\n"
    )
    out.flush()


def _flags(alert: Alert) -> list[str]:
    """``latch on``, ``DRY RUN``, ``deadline 5s``: how the trigger is announced."""
    flags = [f"latch {'on' if alert.latch else 'off'}"]
    if alert.dry_run:
        flags.append("DRY RUN")
    if alert.deadline_s is not None:
        flags.append(f"deadline {alert.deadline_s:g}s")
    return flags


def _operator(alert: Alert) -> str:
    return alert.operator.name if alert.operator is not None else "?"


async def _follow(
    consumer: AIOKafkaConsumer, board: Board, display: Display, dlq: str, deadline: float
) -> None:
    loop = asyncio.get_running_loop()
    display.show(board, changed=True)
    while not board.done:
        remaining = deadline - loop.time()
        if remaining <= 0:
            board.time_out()
            break
        batch = await consumer.getmany(timeout_ms=max(1, int(min(remaining, _POLL_S) * 1000)))
        changed = False
        for tp, records in batch.items():
            for record in records:
                data = load_json_object(record.value, _MAX_RESULT_BYTES)
                if isinstance(data, str):
                    continue  # not ours to judge; the daemon never writes such records
                if tp.topic == dlq:
                    changed |= board.apply_dead_letter(data)
                else:
                    changed |= board.apply_result(data)
        display.show(board, changed=changed)
    display.show(board, changed=True, final=True)


def _signing_key(args: argparse.Namespace) -> Ed25519PrivateKey | None:
    path = args.signing_key or os.environ.get(OPERATOR_KEY_ENV)
    if not path:
        return None
    return load_operator_key(Path(path), os.environ.get(OPERATOR_KEY_PASSPHRASE_ENV))


def _publish_command(args: argparse.Namespace, action: Literal["kill", "release"]) -> int:
    settings = settings_from_args(args)
    try:
        request = request_from_args(args, action)
        prepared = prepare_trigger(
            request, settings, now=datetime.now(UTC), signing_key=_signing_key(args)
        )
    except UsageError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    deadline = request.deadline_s or settings.engine.default_deadline_s
    timeout = args.timeout if args.timeout is not None else deadline + _FOLLOW_MARGIN_S
    published = False

    def mark() -> None:
        nonlocal published
        published = True

    try:
        run = asyncio.run(
            run_trigger(
                settings,
                prepared,
                out=sys.stdout,
                tty=sys.stdout.isatty(),
                timeout_s=timeout,
                follow=not args.no_follow,
                on_published=mark,
            )
        )
    except OperatorError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if published:
            print(
                f"\nkillswitch: stopped following; {prepared.alert_id} was published and the "
                "daemon carries on with it (see it with: killswitch results "
                f"{prepared.alert_id} --follow)",
                file=sys.stderr,
            )
        raise
    table = dry_run_lines(run.board)
    if table:
        print("\n".join(table))
    out_file = getattr(args, "out", None)
    if out_file and run.published and not args.no_follow:
        _write_out(Path(out_file), results_document(run.board, run.exit_code))
    return run.exit_code


def cli_trigger(args: argparse.Namespace) -> int:
    """``killswitch trigger``: publish a manual kill and follow it to its final result
    (``--direct``: run it in this process against the exchange)."""
    if args.direct:
        return _direct_command(args)
    if args.audit_file:
        print("killswitch: --audit-file applies to --direct only", file=sys.stderr)
        return EXIT_USAGE
    return _publish_command(args, "kill")


def _direct_command(args: argparse.Namespace) -> int:
    from killswitch.direct import (  # noqa: PLC0415 - the engine, only when used
        direct_document,
        report_lines,
        run_direct,
    )

    settings = settings_from_args(args)
    if args.no_follow or args.timeout is not None:
        print(
            "killswitch: --no-follow and --timeout do not apply to --direct "
            "(--deadline bounds the kill)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        request = request_from_args(args, "kill")
        prepared = prepare_trigger(
            request, settings, now=datetime.now(UTC), require_signature=False
        )
    except UsageError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    audit = Path(args.audit_file) if args.audit_file else settings.direct.audit_path()
    _announce_direct(sys.stdout, prepared)
    try:
        with _kafka_client_quiet():
            run = asyncio.run(
                run_direct(
                    settings,
                    prepared.alert,
                    out=sys.stdout,
                    tty=sys.stdout.isatty(),
                    audit_file=audit,
                    instance=f"{settings.kafka.client_id}-direct-{secrets.token_hex(4)}",
                )
            )
    except KeyboardInterrupt:
        print(
            f"\nkillswitch: {prepared.alert_id} stopped before its end: orders may still be "
            "open and nothing was recorded (check with --dry-run)",
            file=sys.stderr,
        )
        raise
    print("\n".join(report_lines(run)))
    if run.audit_error is not None:
        print(f"killswitch: the audit file was NOT written: {run.audit_error}", file=sys.stderr)
    document = direct_document(run)
    print(json.dumps(document, indent=2))
    if args.out:
        _write_out(Path(args.out), document)
    return run.exit_code


_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_saved = logging.NOTSET


@contextlib.contextmanager
def _kafka_client_quiet() -> Iterator[None]:
    """Silence the Kafka client's own log while a direct kill runs: whether Kafka answered
    is reported once, in the summary, not as connection errors on stderr. Counted, so
    overlapping kills in one process (tests run several) restore the level only once
    the last one ends."""
    global _quiet_users, _quiet_saved  # noqa: PLW0603 - the logger level is process-wide too
    kafka_log = logging.getLogger("aiokafka")
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_saved = kafka_log.level
            kafka_log.setLevel(logging.CRITICAL)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                kafka_log.setLevel(_quiet_saved)


def _announce_direct(out: TextIO, prepared: Prepared) -> None:
    out.write(
        f"kill {prepared.alert_id} DIRECT to the exchange by {_operator(prepared.alert)} "
        f"for {', '.join(prepared.accounts)} ({', '.join(_flags(prepared.alert))})\n"
    )
    out.flush()


def _write_out(path: Path, document: dict[str, Any]) -> bool:
    """``--out FILE``: the results as JSON; False (and a message) when it cannot be written."""
    try:
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        print(f"killswitch: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def results_document(board: Board, exit_code: int) -> dict[str, Any]:
    """``--out`` of a kill through the daemon: the final result records as read."""
    return {
        "alert_id": board.alert_id,
        "action": board.action,
        "via": "kafka",
        "exit_code": exit_code,
        "results": [dict(board.finals[a]) for a in board.accounts if a in board.finals],
    }


def cli_release(args: argparse.Namespace) -> int:
    """``killswitch release``: publish a release and follow it to the ``released`` result."""
    return _publish_command(args, "release")


# ------------------------------------------------------------------------------ results


async def read_results(
    settings: Settings,
    alert_id: str,
    *,
    accounts: Sequence[str] = (),
    follow: bool = False,
    timeout_s: float = _KAFKA_TIMEOUT_S,
    display: Display | None = None,
) -> Board:
    """An alert's results (and dead letter) read from the start of the results topic.

    Without ``follow``: what is there now. With ``follow``: then on, until every
    account (``accounts``, else those with a result so far) has a final result, or
    ``timeout_s`` has passed (the rest marked timed out)."""
    topics = settings.kafka.topics
    consumer = await _start_reader(settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    board = Board(alert_id, list(accounts))
    try:
        async with asyncio.timeout(_KAFKA_TIMEOUT_S):
            parts = await _topic_partitions(consumer)
        if topics.results not in parts:
            raise _missing_topic(topics.results, "results")
        tps = [TopicPartition(t, p) for t in (topics.results, topics.dlq) for p in parts.get(t, ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(_KAFKA_TIMEOUT_S):
            ends = await consumer.end_offsets(tps)
        reader = _ResultsReader(consumer, board, topics.dlq)
        try:
            async with asyncio.timeout_at(deadline if follow else loop.time() + timeout_s):
                await reader.catch_up(ends)
        except TimeoutError:
            raise OperatorError(f"could not read {topics.results!r} to its end") from None
        _infer_action(board, reader.seen)
        if not accounts:
            board.accounts = sorted(board.rows)
        if follow:
            await reader.follow(deadline, display)
            _infer_action(board, reader.seen)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise OperatorError(f"could not read the results: {type(exc).__name__}") from None
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return board


@dataclass
class _ResultsReader:
    consumer: AIOKafkaConsumer
    board: Board
    dlq: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def catch_up(self, ends: dict[TopicPartition, int]) -> None:
        while await self._behind(ends):
            await self.poll()

    async def _behind(self, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if end and await self.consumer.position(tp) < end:
                return True
        return False

    async def follow(self, deadline: float, display: Display | None) -> None:
        loop = asyncio.get_running_loop()
        board = self.board
        if display is not None:
            display.show(board, changed=True)
        while not (board.rows and board.done):
            remaining = deadline - loop.time()
            if remaining <= 0:
                board.time_out()
                break
            changed = await self.poll(min(remaining, _POLL_S))
            if not self.board.accounts and board.rows:
                board.accounts = sorted(board.rows)
            if display is not None:
                display.show(board, changed=changed)
        if display is not None:
            display.show(board, changed=True, final=True)

    async def poll(self, wait_s: float = _POLL_S) -> bool:
        batch = await self.consumer.getmany(timeout_ms=max(1, int(wait_s * 1000)))
        changed = False
        for tp, records in batch.items():
            for record in records:
                data = load_json_object(record.value, _MAX_RESULT_BYTES)
                if isinstance(data, str) or data.get("alert_id") != self.board.alert_id:
                    continue
                if tp.topic == self.dlq:
                    if not self.board.rows:  # refused before any account was named
                        self.board.accounts = ["*"]
                        self.board.rows["*"] = AccountProgress("*")
                    changed |= self.board.apply_dead_letter(data)
                else:
                    self.seen.append(data)
                    changed |= self.board.apply_result(data)
        return changed


def _infer_action(board: Board, records: Sequence[dict[str, Any]]) -> None:
    """A release or a dry run, as the alert's results say (the board's success status)."""
    if any(r.get("status") == "released" for r in records):
        board.action = "release"
    board.dry_run = any(r.get("dry_run") is True for r in records)


def add_arguments_results(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch results``."""
    parser.description = (
        "Print an alert's results from the results topic (its dead letter too), or "
        "--follow them until every account has a final result. Exit codes as trigger."
    )
    parser.add_argument("alert_id", metavar="ALERT_ID")
    parser.add_argument(
        "-a",
        "--account",
        action="append",
        metavar="ID",
        help="with --follow: wait for these accounts (default: those with results so far)",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="wait for the final results as they come"
    )
    parser.add_argument("--json", action="store_true", help="print the final results as JSON")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --follow: stop waiting after this long (default: the configured "
        "deadline plus 30 s); else the read timeout",
    )


def cli_results(args: argparse.Namespace) -> int:
    """``killswitch results ALERT_ID``: an alert's results, read back (or followed)."""
    settings = settings_from_args(args)
    timeout = args.timeout
    if timeout is None:
        timeout = (
            settings.engine.default_deadline_s + _FOLLOW_MARGIN_S
            if args.follow
            else _KAFKA_TIMEOUT_S
        )
    if timeout <= 0:
        print("killswitch: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    tty = sys.stdout.isatty() and not args.json
    display = Display(sys.stdout, tty=tty) if args.follow and not args.json else None
    try:
        board = asyncio.run(
            read_results(
                settings,
                args.alert_id,
                accounts=_split(args.account),
                follow=args.follow,
                timeout_s=timeout,
                display=display,
            )
        )
    except OperatorError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not board.rows:
        print(f"killswitch: no result for {args.alert_id}", file=sys.stderr)
        return EXIT_FAILED
    code = board.exit_code()
    if args.json:
        print(json.dumps(results_document(board, code), indent=2))
        return code
    if display is None:
        print("\n".join(progress_lines(board)))
    finals = [board.rows[a] for a in board.accounts if board.rows[a].final]
    seconds = max((r.seconds or 0.0 for r in finals), default=0.0)
    lines = summary_lines(board, seconds) if board.done else []
    print("\n".join([*lines, *dry_run_lines(board)]))
    return code


# ------------------------------------------------------------------------------- status


async def read_status(settings: Settings, timeout_s: float = _KAFKA_TIMEOUT_S) -> list[HaltState]:
    """The halted accounts on the state topic (read from the beginning to the end)."""
    consumer = await _start_reader(settings)
    try:
        async with asyncio.timeout(timeout_s):
            parts = await _topic_partitions(consumer)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    topic = settings.kafka.topics.state
    if topic not in parts:
        raise _missing_topic(topic, "state")
    try:
        halted = await read_halt_states(settings.kafka, topic, timeout_s)
    except (TimeoutError, KafkaError, LookupError) as exc:
        raise OperatorError(f"could not read {topic!r} to its end: {type(exc).__name__}") from None
    return sorted(halted.values(), key=lambda s: s.account)


def cli_status(args: argparse.Namespace) -> int:
    """``killswitch status``: halted accounts, as a table or ``--json``."""
    settings = settings_from_args(args)
    try:
        states = asyncio.run(read_status(settings, args.timeout))
    except OperatorError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"halted": status_records(states)}, indent=2))
    else:
        print("\n".join(status_lines(states, datetime.now(UTC))))
    return EXIT_OK


# -------------------------------------------------------------------------------- check


async def _kafka_checks(settings: Settings, timeout_s: float) -> list[Check]:
    kafka = settings.kafka
    t = kafka.topics
    roles = {
        t.alerts: "alerts",
        t.manual: "manual",
        t.heartbeats: "heartbeats",
        t.results: "results",
        t.state: "state",
        t.dlq: "dlq",
    }
    try:
        consumer = await _start_reader(settings)
    except OperatorError as exc:
        failed = [Check("kafka reachable", kafka.bootstrap_servers, False, str(exc))]
        return failed + [Check("topic present", n, False, "Kafka not reachable") for n in roles]
    try:
        async with asyncio.timeout(timeout_s):
            parts = await _topic_partitions(consumer)
    except (KafkaError, TimeoutError) as exc:
        detail = f"no metadata ({type(exc).__name__})"
        return [Check("kafka reachable", kafka.bootstrap_servers, False, detail)]
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    checks = [Check("kafka reachable", kafka.bootstrap_servers, True, f"{len(parts)} topic(s)")]
    for name, role in roles.items():
        count = len(parts.get(name, ()))
        detail = f"{role}, {count} partition(s)" if count else f"{role}: missing"
        checks.append(Check("topic present", name, count > 0, detail))
    inputs = {t: parts[t] for t in (t.alerts, t.manual) if t in parts}
    try:
        async with asyncio.timeout(timeout_s):
            view: GroupView | str = await read_group(settings, inputs)
    except (KafkaError, TimeoutError, OSError, ValueError) as exc:
        # ValueError: a broker answering a request version the client cannot decode.
        view = f"not readable ({type(exc).__name__})"
    return checks + group_checks(kafka.group_id, view)


async def read_group(settings: Settings, inputs: dict[str, list[int]]) -> GroupView:
    """The daemons' consumer group: its state, its members and how far behind it is on
    the input topics (``inputs``: topic -> partitions). Never joins the group."""
    kafka = settings.kafka
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka))
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([kafka.group_id])
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    state, members = _group_members(described)
    # A consumer bound to the group but subscribed to nothing reads its committed
    # offsets (OffsetFetch) without joining it.
    reader = AIOKafkaConsumer(
        group_id=kafka.group_id, enable_auto_commit=False, **connection_kwargs(kafka)
    )
    await reader.start()
    try:
        lag: dict[str, int] = {}
        for topic, partitions in inputs.items():
            tps = [TopicPartition(topic, p) for p in partitions]
            ends = await reader.end_offsets(tps)
            starts = await reader.beginning_offsets(tps)
            behind = 0
            for tp in tps:
                committed = await reader.committed(tp)
                behind += max(0, ends[tp] - (committed if committed is not None else starts[tp]))
            lag[topic] = behind
    finally:
        with contextlib.suppress(Exception):
            await reader.stop()
    return GroupView(state, members, lag)


def _group_members(described: Sequence[Any]) -> tuple[str, list[str]]:
    """State and members (``client_id@host``, else the member id) of DescribeGroups."""
    for response in described:
        for group in getattr(response, "groups", ()):
            error, _, state, _, _, members = group[:6]
            if error:
                return f"error {error}", []
            names = [
                f"{m[1]}@{m[2].lstrip('/')}" if m[1] and m[2] else (m[1] or m[0]) for m in members
            ]
            return str(state), names
    return "unknown", []


async def _exchange_checks(account: AccountSettings, timeout_s: float) -> list[Check]:
    # Fail fast: a check is a question, not a kill (few retries, short deadline).
    quick = account.model_copy(
        update={
            "max_attempts": min(account.max_attempts, 2),
            "request_deadline_s": min(account.request_deadline_s, timeout_s),
        }
    )
    target = f"{account.id} {account.base_url}"
    try:
        client = ExchangeClient(quick)
    except KeyLoadError as exc:
        return [
            Check("exchange reachable", target, False, "not tried: the key does not load"),
            Check("key accepted", account.id, False, str(exc)),
        ]
    async with client:
        try:
            async with asyncio.timeout(timeout_s):
                offset = await client.sync_clock()
                pairs = await client.pair_list()
                symbols = await client.exchange_info()  # no request: pair_list cached it
        except Redirected as exc:
            problem = redirect_problem(exc.status, exc.location, exc.endpoint)
            return [
                Check("exchange reachable", target, False, problem),
                Check("key accepted", account.id, False, "not tried: exchange redirects"),
            ]
        except AuthError as exc:
            # The public endpoints want a signature here and the signed call was refused.
            detail = "answered; public endpoints need a signature"
            return [
                Check("exchange reachable", target, True, detail),
                Check("key accepted", account.id, False, f"refused: {exc}"),
            ]
        except (ExchangeError, TimeoutError) as exc:
            return [
                Check("exchange reachable", target, False, str(exc) or type(exc).__name__),
                Check("key accepted", account.id, False, "not tried: exchange not reachable"),
            ]
        signed = ", public endpoints signed" if client.signs_public else ""
        reach = Check(
            "exchange reachable",
            target,
            True,
            f"{len(symbols)} pairs{_pair_source(pairs)}, clock offset {offset:+d} ms{signed}",
        )
        if not symbols:
            return [reach, Check("key accepted", account.id, False, "the exchange lists no pairs")]
        symbol = symbols[0].symbol
        try:
            async with asyncio.timeout(timeout_s):
                shown = await first_page(client, symbol)
        except AuthError as exc:
            return [reach, Check("key accepted", account.id, False, f"refused: {exc}")]
        except (ExchangeError, TimeoutError) as exc:
            return [reach, Check("key accepted", account.id, False, str(exc) or "timeout")]
        detail = f"open orders on {symbol} answered ({shown} on the first page)"
        return [reach, Check("key accepted", account.id, True, detail)]


def _pair_source(pairs: PairList) -> str:
    """Where the pair list came from, when not the exchange's current answer."""
    if pairs.source == "exchange":
        return ""
    return f" ({pairs.source}; exchange-info failed: {pairs.error})"


async def run_checks(settings: Settings, timeout_s: float = _KAFKA_TIMEOUT_S) -> list[Check]:
    """Every check, Kafka first, then each account (concurrently)."""
    kafka, *accounts = await asyncio.gather(
        _kafka_checks(settings, timeout_s),
        *(_exchange_checks(a, timeout_s) for a in settings.accounts),
    )
    out = list(kafka)
    for checks in accounts:
        out.extend(checks)
    return out


def cli_check(args: argparse.Namespace) -> int:
    """``killswitch check``: a table of checks; exit 0 only when all pass."""
    settings = settings_from_args(args)
    if args.timeout <= 0:
        print("killswitch: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    # Every problem is a row of the table: no bare log line from a library (a pair list
    # fallback, a retry) on stderr, as Python prints one when logging is not set up.
    logging.getLogger("killswitch").addHandler(logging.NullHandler())
    checks = asyncio.run(run_checks(settings, args.timeout))
    print("\n".join(check_lines(checks)))
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED
