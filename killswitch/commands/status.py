"""``killswitch status``: the halted accounts, read from the compacted state topic."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime

from aiokafka.errors import KafkaError

from killswitch.commands.common import (
    KAFKA_TIMEOUT_S,
    OperatorError,
    missing_topic,
    start_reader,
    topic_partitions,
)
from killswitch.config import KafkaSettings, settings_from_args
from killswitch.core.model import HaltState
from killswitch.exitcodes import EXIT_FAILED, EXIT_OK
from killswitch.kafka.readers import read_halt_states
from killswitch.render import status_lines, status_records

__all__ = ["add_arguments_status", "cli_status", "read_status"]


def add_arguments_status(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch status``."""
    parser.description = "Show the halted accounts, read from the compacted state topic."
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--timeout", type=float, default=KAFKA_TIMEOUT_S, metavar="SECONDS", help="read timeout"
    )


async def read_status(kafka: KafkaSettings, timeout_s: float = KAFKA_TIMEOUT_S) -> list[HaltState]:
    """The halted accounts on the state topic of ``kafka`` (read from the beginning to the
    end)."""
    consumer = await start_reader(kafka)
    try:
        async with asyncio.timeout(timeout_s):
            parts = await topic_partitions(consumer)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    topic = kafka.topics.state
    if topic not in parts:
        raise missing_topic(topic, "state")
    try:
        halted = await read_halt_states(kafka, topic, timeout_s)
    except (TimeoutError, KafkaError, LookupError) as exc:
        raise OperatorError(f"could not read {topic!r} to its end: {type(exc).__name__}") from None
    return sorted(halted.values(), key=lambda s: s.account)


def cli_status(args: argparse.Namespace) -> int:
    """``killswitch status``: halted accounts, as a table or ``--json``."""
    settings = settings_from_args(args)
    try:
        states = asyncio.run(read_status(settings.kafka, args.timeout))
    except OperatorError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"halted": status_records(states)}, indent=2))
    else:
        print("\n".join(status_lines(states, datetime.now(UTC))))
    return EXIT_OK
