"""What the operator commands share: environment variable names, timeouts, their two
errors, and opening a Kafka reader (a command that cannot reach Kafka or finds a topic
missing says so in one line, exit code 1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from killswitch.config import KafkaSettings
from killswitch.kafka.clients import connection_kwargs, make_reader

__all__ = [
    "FOLLOW_MARGIN_S",
    "KAFKA_TIMEOUT_S",
    "MAX_RESULT_BYTES",
    "OPERATOR_ENV",
    "OPERATOR_KEY_ENV",
    "OPERATOR_KEY_PASSPHRASE_ENV",
    "POLL_S",
    "OperatorError",
    "UsageError",
    "missing_topic",
    "split_values",
    "start_reader",
    "topic_partitions",
]


OPERATOR_ENV = "KILLSWITCH_OPERATOR"
OPERATOR_KEY_ENV = "KILLSWITCH_OPERATOR_KEY"
OPERATOR_KEY_PASSPHRASE_ENV = "KILLSWITCH_OPERATOR_KEY_PASSPHRASE"  # noqa: S105 - a variable name

# Beyond the kill's own deadline, how long to wait for results: the alert may queue
# behind other work, and the last verification listing needs its round trip.
FOLLOW_MARGIN_S = 30.0
KAFKA_TIMEOUT_S = 15.0
POLL_S = 0.2
MAX_RESULT_BYTES = 16 * 1024 * 1024


class UsageError(Exception):
    """The command line cannot be turned into a valid trigger (exit code 2)."""


class OperatorError(Exception):
    """The command could not do its job (Kafka unreachable, topic missing): exit code 1."""


def split_values(values: Sequence[str] | None, option: str) -> list[str]:
    """Repeatable options that also take comma-separated lists.

    A value with nothing in it (``-s ""`` from an unset shell variable) is a
    UsageError: dropped silently, it would leave the option unset and so widen a
    scope to every pair or order instead of narrowing it.
    """
    out: list[str] = []
    for value in values or ():
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not parts:
            raise UsageError(f"{option} {value[:40]!r}: empty value (leave the option out instead)")
        out.extend(parts)
    return list(dict.fromkeys(out))


async def topic_partitions(consumer: AIOKafkaConsumer) -> dict[str, list[int]]:
    """Every topic the broker lists, with its partition ids."""
    # aiokafka has no public call for metadata of topics a consumer is not
    # subscribed to; the client's full metadata fetch is what topics() uses too.
    cluster = await consumer._client.fetch_all_metadata()
    return {t: sorted(cluster.partitions_for_topic(t) or ()) for t in cluster.topics()}


async def start_reader(kafka: KafkaSettings) -> AIOKafkaConsumer:
    consumer = make_reader(kafka)
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            await consumer.start()
    except (KafkaError, TimeoutError, OSError) as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise OperatorError(
            f"Kafka at {kafka.bootstrap_servers} is not reachable ({type(exc).__name__})"
        ) from None
    return consumer


def missing_topic(name: str, role: str) -> OperatorError:
    return OperatorError(
        f"the {role} topic {name!r} does not exist: is the daemon running against this "
        "Kafka? (it creates its topics at start-up)"
    )


async def describe_group(kafka: KafkaSettings) -> tuple[str, list[str]]:
    """The daemons' consumer group: its state and its members (``client_id@host``, else
    the member id), as the group coordinator describes it. Never joins the group."""
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka))
    try:
        await admin.start()
        described = await admin.describe_consumer_groups([kafka.group_id])
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return _group_members(described)


def _group_members(described: Sequence[Any]) -> tuple[str, list[str]]:
    """State and members of a DescribeGroups answer."""
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
