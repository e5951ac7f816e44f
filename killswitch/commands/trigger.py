"""``killswitch trigger``: publish a manual kill and follow it to its final result.

Publishes the prepared alert (:mod:`killswitch.commands.prepare`) to the manual topic
and follows the results topic (and the dead letter topic, to report a refusal at once)
until every account has a final result, showing a progress bar per account; the exit
code is :meth:`killswitch.board.Board.exit_code`. ``--direct`` runs the kill in this
process instead (:mod:`killswitch.direct`). ``release`` publishes through
:func:`publish_command` too."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from killswitch.board import TIMED_OUT, Board
from killswitch.commands.common import (
    FOLLOW_MARGIN_S,
    KAFKA_TIMEOUT_S,
    MAX_RESULT_BYTES,
    OPERATOR_KEY_ENV,
    OPERATOR_KEY_PASSPHRASE_ENV,
    POLL_S,
    OperatorError,
    UsageError,
    describe_group,
    missing_topic,
    start_reader,
    topic_partitions,
)
from killswitch.commands.operator_keys import load_operator_key
from killswitch.commands.prepare import (
    Prepared,
    TriggerRules,
    add_publish_arguments,
    add_target_arguments,
    prepare_trigger,
    request_from_args,
)
from killswitch.commands.results import results_document
from killswitch.config import KafkaSettings, Settings, settings_from_args
from killswitch.contracts import Alert, load_json_object
from killswitch.display import Display
from killswitch.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from killswitch.kafka.clients import make_producer
from killswitch.kafka.readers import of_another_alert
from killswitch.logs import TextFormatter
from killswitch.render import dry_run_lines, summary_lines

__all__ = [
    "TriggerRun",
    "add_arguments_trigger",
    "cli_trigger",
    "publish_command",
    "run_trigger",
    "trigger_rules",
]


def add_arguments_trigger(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch trigger``."""
    parser.description = (
        "Publish a manual kill to the manual topic and follow it to its final result "
        "(--direct: run it in this process against the exchange, no Kafka or daemon "
        "needed). Exit 0 only when every account ends flat (dry_run for --dry-run)."
    )
    add_target_arguments(parser)
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
    add_publish_arguments(parser)


@dataclass
class TriggerRun:
    """What happened (for callers such as the demo)."""

    prepared: Prepared
    board: Board
    published: bool = False
    exit_code: int = EXIT_FAILED
    elapsed_s: float = 0.0
    partitions: list[TopicPartition] = field(default_factory=list)
    no_daemon: bool = False  # the daemons' consumer group had no member once published


async def run_trigger(
    kafka: KafkaSettings,
    prepared: Prepared,
    *,
    out: TextIO,
    tty: bool,
    timeout_s: float,
    follow: bool = True,
    on_published: Callable[[], None] | None = None,
    warn: TextIO | None = None,
) -> TriggerRun:
    """Publish ``prepared`` to the manual topic of ``kafka`` and follow its results to the
    end. With ``warn``: say there, before following, when no daemon is in the daemons'
    consumer group (nothing will run the kill until one joins)."""
    board = Board(
        prepared.alert_id,
        prepared.accounts,
        action=prepared.alert.action,
        dry_run=prepared.alert.dry_run,
    )
    run = TriggerRun(prepared, board)
    topics = kafka.topics
    loop = asyncio.get_running_loop()
    started = loop.time()
    consumer = await start_reader(kafka)
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            parts = await topic_partitions(consumer)
        if topics.manual not in parts:
            raise missing_topic(topics.manual, "manual")
        if follow:
            if topics.results not in parts:
                raise missing_topic(topics.results, "results")
            run.partitions = [
                TopicPartition(t, p) for t in (topics.results, topics.dlq) for p in parts.get(t, ())
            ]
            consumer.assign(run.partitions)
            # Positions fixed before publishing, so no result can slip past.
            for tp, offset in (await consumer.end_offsets(run.partitions)).items():
                consumer.seek(tp, offset)
        await _publish(kafka, topics.manual, prepared)
        run.published = True
        if on_published is not None:
            on_published()
        _announce(out, prepared, topics.manual)
        if not follow:
            run.exit_code = EXIT_OK
            return run
        if warn is not None and await _no_daemon(kafka):
            run.no_daemon = True
            warn.write(_no_daemon_text(kafka) + "\n")
            warn.flush()
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


# The group check before following a trigger: bounded well inside any --timeout, as the
# kill's results wait behind it (a broker answers it in milliseconds).
GROUP_CHECK_S = 2.0


async def _no_daemon(kafka: KafkaSettings) -> bool:
    """Whether the daemons' consumer group has no member now: none running, or one still
    joining. False when the group cannot be read (nothing is claimed then)."""
    try:
        async with asyncio.timeout(GROUP_CHECK_S):
            state, members = await describe_group(kafka)
    except (KafkaError, TimeoutError, OSError, ValueError):
        return False
    # Empty: the group exists, nobody in it; Dead: no such group (Kafka's words).
    return not members and state in ("Empty", "Dead")


def _no_daemon_text(kafka: KafkaSettings) -> str:
    return (
        f"killswitch: no daemon is in consumer group {kafka.group_id!r} now (none running, "
        f"or one still starting): the kill waits in {kafka.topics.manual!r} until a daemon "
        "reads it. To kill from here now: 'killswitch trigger --direct' (same options)"
    )


async def _publish(kafka: KafkaSettings, topic: str, prepared: Prepared) -> None:
    producer = make_producer(kafka)
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
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
    """``latch on``, ``DRY RUN``, ``deadline 5s``: how the trigger is announced (a
    release has no latch to speak of)."""
    flags = [f"latch {'on' if alert.latch else 'off'}"] if alert.action == "kill" else []
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
        batch = await consumer.getmany(timeout_ms=max(1, int(min(remaining, POLL_S) * 1000)))
        changed = False
        for tp, records in batch.items():
            for record in records:
                if tp.topic != dlq and of_another_alert(record, board.alert_id):
                    continue  # another alert's result (an alert storm's, say): not decoded
                data = load_json_object(record.value, MAX_RESULT_BYTES)
                if isinstance(data, str):
                    continue  # not ours to judge; the daemon never writes such records
                if tp.topic == dlq:
                    changed |= board.apply_dead_letter(data)
                else:
                    changed |= board.apply_result(data)
        display.show(board, changed=changed)
    display.show(board, changed=True, final=True)


def trigger_rules(settings: Settings) -> TriggerRules:
    """The sections of ``settings`` a trigger is checked against."""
    return TriggerRules(
        accounts=tuple(a.id for a in settings.accounts),
        intake=settings.intake,
        signing=settings.trigger_signing,
    )


def _signing_key(args: argparse.Namespace) -> Ed25519PrivateKey | None:
    path = args.signing_key or os.environ.get(OPERATOR_KEY_ENV)
    if not path:
        return None
    return load_operator_key(Path(path), os.environ.get(OPERATOR_KEY_PASSPHRASE_ENV))


def publish_command(args: argparse.Namespace, action: Literal["kill", "release"]) -> int:
    settings = settings_from_args(args)
    try:
        request = request_from_args(args, action)
        prepared = prepare_trigger(
            request, trigger_rules(settings), now=datetime.now(UTC), signing_key=_signing_key(args)
        )
    except UsageError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    deadline = request.deadline_s or settings.engine.default_deadline_s
    timeout = args.timeout if args.timeout is not None else deadline + FOLLOW_MARGIN_S
    published = False

    def mark() -> None:
        nonlocal published
        published = True

    try:
        run = asyncio.run(
            run_trigger(
                settings.kafka,
                prepared,
                out=sys.stdout,
                tty=sys.stdout.isatty(),
                timeout_s=timeout,
                follow=not args.no_follow,
                on_published=mark,
                warn=sys.stderr,
            )
        )
    except OperatorError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        if not published and prepared.alert.action == "kill":
            print(
                "killswitch: nothing was published; with Kafka or the daemons down, "
                "'killswitch trigger --direct' (same options) runs the kill from here",
                file=sys.stderr,
            )
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
    if run.published and any(r.status == TIMED_OUT for r in run.board.rows.values()):
        who = "a daemon that starts runs it" if run.no_daemon else "the daemon carries on with it"
        print(
            f"killswitch: stopped waiting; {prepared.alert_id} was published and {who} "
            f"(follow it with: killswitch results {prepared.alert_id} --follow)",
            file=sys.stderr,
        )
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
    return publish_command(args, "kill")


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
            request, trigger_rules(settings), now=datetime.now(UTC), require_signature=False
        )
    except UsageError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    audit = Path(args.audit_file) if args.audit_file else settings.direct.audit_path()
    _announce_direct(sys.stdout, prepared)
    try:
        with _direct_kill_logging():
            run = asyncio.run(
                run_direct(
                    prepared.alert,
                    accounts=settings.accounts,
                    engine=settings.engine,
                    kafka=settings.kafka,
                    direct=settings.direct,
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
    # With --out the document goes to the file, as a kill through the daemon does, and
    # the summary above stays readable; a file that cannot be written loses nothing.
    if args.out and _write_out(Path(args.out), document):
        print(f"the results are in {args.out}")
    else:
        print(json.dumps(document, indent=2))
    return run.exit_code


_quiet_lock = threading.Lock()

_quiet_users = 0

_quiet_saved = logging.NOTSET


@contextlib.contextmanager
def _direct_kill_logging() -> Iterator[None]:
    """Silence the Kafka client's own log while a direct kill runs: whether Kafka answered
    is reported once, in the summary, not as connection errors on stderr; and show the
    kill's own warnings (:func:`_warnings_handler`). Counted, so overlapping kills in one
    process (tests run several) restore the level only once the last one ends."""
    global _quiet_users, _quiet_saved, _warnings  # noqa: PLW0603 - process-wide too
    kafka_log = logging.getLogger("aiokafka")
    root = logging.getLogger()
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_saved = kafka_log.level
            kafka_log.setLevel(logging.CRITICAL)
            _warnings = _warnings_handler()
            root.addHandler(_warnings)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                kafka_log.setLevel(_quiet_saved)
                if _warnings is not None:
                    root.removeHandler(_warnings)


def _warnings_handler() -> logging.Handler:
    """The kill's own warnings (a listing that failed, a pair list read from the
    configuration) on stderr (as it is now) as readable lines with their context, secrets
    masked: with no handler, Python's last resort writes the bare message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(TextFormatter())
    return handler


_warnings: logging.Handler | None = None


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
