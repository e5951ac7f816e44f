"""``killswitch results ALERT_ID``: an alert's results (and dead letter) read back from
the start of the results topic, or followed until every account has a final result;
also the ``--out`` / ``--json`` document of a kill through the daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from killswitch.board import AccountProgress, Board
from killswitch.commands.common import (
    FOLLOW_MARGIN_S,
    KAFKA_TIMEOUT_S,
    MAX_RESULT_BYTES,
    POLL_S,
    OperatorError,
    UsageError,
    missing_topic,
    split_values,
    start_reader,
    topic_partitions,
)
from killswitch.config import KafkaSettings, settings_from_args
from killswitch.contracts import ResultRecord, load_json_object, read_result
from killswitch.display import Display
from killswitch.exitcodes import EXIT_FAILED, EXIT_USAGE
from killswitch.kafka.readers import of_another_alert
from killswitch.render import dry_run_lines, progress_lines, summary_lines

__all__ = ["add_arguments_results", "cli_results", "read_results", "results_document"]


def results_document(board: Board, exit_code: int) -> dict[str, Any]:
    """``--out`` of a kill through the daemon: the final result records as read."""
    return {
        "alert_id": board.alert_id,
        "action": board.action,
        "via": "kafka",
        "exit_code": exit_code,
        "results": [dict(board.finals[a]) for a in board.accounts if a in board.finals],
    }


async def read_results(
    kafka: KafkaSettings,
    alert_id: str,
    *,
    accounts: Sequence[str] = (),
    follow: bool = False,
    timeout_s: float = KAFKA_TIMEOUT_S,
    display: Display | None = None,
) -> Board:
    """An alert's results (and dead letter) read from the start of the results topic of
    ``kafka``.

    Without ``follow``: what is there now. With ``follow``: then on, until every
    account (``accounts``, else those with a result so far) has a final result, or
    ``timeout_s`` has passed (the rest marked timed out)."""
    topics = kafka.topics
    consumer = await start_reader(kafka)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    board = Board(alert_id, list(accounts))
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            parts = await topic_partitions(consumer)
        if topics.results not in parts:
            raise missing_topic(topics.results, "results")
        tps = [TopicPartition(t, p) for t in (topics.results, topics.dlq) for p in parts.get(t, ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
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
    seen: list[ResultRecord] = field(default_factory=list)  # this alert's results, read

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
            changed = await self.poll(min(remaining, POLL_S))
            if not self.board.accounts and board.rows:
                board.accounts = sorted(board.rows)
            if display is not None:
                display.show(board, changed=changed)
        if display is not None:
            display.show(board, changed=True, final=True)

    async def poll(self, wait_s: float = POLL_S) -> bool:
        batch = await self.consumer.getmany(timeout_ms=max(1, int(wait_s * 1000)))
        changed = False
        for tp, records in batch.items():
            for record in records:
                if tp.topic != self.dlq and of_another_alert(record, self.board.alert_id):
                    continue
                data = load_json_object(record.value, MAX_RESULT_BYTES)
                if isinstance(data, str) or data.get("alert_id") != self.board.alert_id:
                    continue
                if tp.topic == self.dlq:
                    if not self.board.rows:  # refused before any account was named
                        self.board.accounts = ["*"]
                        self.board.rows["*"] = AccountProgress("*")
                    changed |= self.board.apply_dead_letter(data)
                else:
                    result = read_result(data)
                    if result is not None:
                        self.seen.append(result)
                    changed |= self.board.apply_result(data)
        return changed


def _infer_action(board: Board, records: Sequence[ResultRecord]) -> None:
    """A release or a dry run, as the alert's results say (the board's success status)."""
    if any(r.status == "released" for r in records):
        board.action = "release"
    board.dry_run = any(r.dry_run for r in records)


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
            settings.engine.default_deadline_s + FOLLOW_MARGIN_S if args.follow else KAFKA_TIMEOUT_S
        )
    if timeout <= 0:
        print("killswitch: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        accounts = split_values(args.account, "--account")
    except UsageError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tty = sys.stdout.isatty() and not args.json
    display = Display(sys.stdout, tty=tty) if args.follow and not args.json else None
    try:
        board = asyncio.run(
            read_results(
                settings.kafka,
                args.alert_id,
                accounts=accounts,
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
    # The longest time an account's kill took, as its results say (none: no time shown).
    seconds = max((r.seconds for r in finals if r.seconds is not None), default=None)
    lines = summary_lines(board, seconds) if board.done else []
    print("\n".join([*lines, *dry_run_lines(board)]))
    return code
