"""Kafka clients built from :class:`KafkaSettings`: the only place aiokafka is configured.

Every client (consumer, producer, admin) gets the same connection and security
settings: TLS through an :class:`ssl.SSLContext` built from ``kafka.ssl``, SASL
from ``kafka.sasl``. Topic creation at start-up lives here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Collection, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from killswitch.config import KafkaSettings

log = logging.getLogger(__name__)

_MAX_BATCH_BYTES = 512 * 1024

# Partitions for topics the daemon creates itself when they are missing. Alerts
# and results are keyed by account: more partitions let more daemons share them.
# The manual topic has as many as the alerts topic: with the range assignor a
# trigger keyed by account then lands on the daemon that owns the account
# (kafka/ownership.py). Operators who create topics themselves choose their own
# counts (the daemon warns when alerts and manual differ).
DEFAULT_PARTITIONS = {"alerts": 6, "manual": 6, "heartbeats": 3, "results": 6, "state": 3, "dlq": 1}
# kafka.assignors: range gives partition i of the alerts and the manual topic to
# the same member (equal partition counts, same subscription), so an account's
# alerts and triggers reach one daemon; round-robin does not. Only what is
# configured is offered: some brokers (the embedded one) take twice as long to
# complete a join when members offer two protocols.
ASSIGNORS: dict[str, type[AbstractPartitionAssignor]] = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
}


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL, None for plaintext protocols."""
    if "SSL" not in settings.security_protocol:
        return None
    s = settings.ssl
    password = s.password.get_secret_value() if s.password is not None else None
    ctx: ssl.SSLContext = create_ssl_context(
        cafile=str(s.cafile) if s.cafile else None,
        certfile=str(s.certfile) if s.certfile else None,
        keyfile=str(s.keyfile) if s.keyfile else None,
        password=password,
    )
    # create_ssl_context always checks host names; the setting may relax it (the
    # certificate chain is still verified).
    ctx.check_hostname = s.check_hostname
    return ctx


def connection_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Arguments shared by every aiokafka client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
        "ssl_context": ssl_context(settings),
    }
    if settings.security_protocol.startswith("SASL"):
        sasl = settings.sasl
        kwargs["sasl_mechanism"] = sasl.mechanism
        kwargs["sasl_plain_username"] = sasl.username
        kwargs["sasl_plain_password"] = sasl.password.get_secret_value() if sasl.password else None
    return kwargs


def fetch_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Consumer fetch tuning: a kill switch wants latency, not throughput."""
    return {
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "fetch_min_bytes": settings.fetch_min_bytes,
        "max_poll_records": settings.max_poll_records,
        # Retry a failed fetch quickly: backoff is part of alert latency.
        "retry_backoff_ms": 50,
    }


def make_group_consumer(settings: KafkaSettings, topics: Iterable[str]) -> AIOKafkaConsumer:
    """The alert consumer: one group, manual commits, earliest for a new group.

    ``earliest``: a new group must not skip alerts published before it first
    started (expired ones are refused by ``expires_at``).
    """
    # The consumer's request timeout must exceed the rebalance timeout, or the
    # JoinGroup request (which the broker holds until the rebalance completes)
    # times out first.
    request_timeout = max(settings.request_timeout_ms, settings.rebalance_timeout_ms + 5_000)
    kwargs = connection_kwargs(settings) | {"request_timeout_ms": request_timeout}
    return AIOKafkaConsumer(
        *topics,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        partition_assignment_strategy=tuple(ASSIGNORS[name] for name in settings.assignors),
        **fetch_kwargs(settings),
        **kwargs,
    )


def make_reader(settings: KafkaSettings, min_wait_ms: int = 0) -> AIOKafkaConsumer:
    """A consumer without a group (partitions assigned by hand, nothing committed).

    ``min_wait_ms`` raises the fetch wait for readers that need no low latency
    (results, state, heartbeats): fewer idle fetches for the broker and this
    process, which share both with the alert consumer.
    """
    fetch = fetch_kwargs(settings)
    fetch["fetch_max_wait_ms"] = max(settings.fetch_max_wait_ms, min_wait_ms)
    return AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **fetch,
        **connection_kwargs(settings),
    )


def make_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """acks=all (a result or dead letter is out only when every replica has it)."""
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=settings.enable_idempotence,
        linger_ms=0,
        # A result is about 0.5 KB plus about 75 B per order it lists; large batches
        # let a storm's results go out in few requests (the default 16 KB batch holds
        # only a few results of a sweep with tens of orders).
        max_batch_size=_MAX_BATCH_BYTES,
        **connection_kwargs(settings),
    )


async def rewind_remade(
    consumer: AIOKafkaConsumer, created: Collection[str], what: str
) -> dict[TopicPartition, int]:
    """After the broker came back: read from its start every assigned partition whose
    log was made again. Those of the topics in ``created`` (this daemon made them
    again), and those whose position is past the log's end (someone else did: Kafka
    answers a fetch there OFFSET_OUT_OF_RANGE and the client resets it, but a broker
    that answers with no records instead, as the embedded one does, would leave the
    reader waiting until the new log grows past its old position, skipping what comes
    before). ``what`` names the reader in the warning. Returns the partitions' end
    offsets now (empty when nothing is assigned)."""
    assigned = sorted(consumer.assignment())
    if not assigned:
        return {}
    ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
    remade = [
        tp
        for tp in assigned
        if tp.topic in created or await consumer.position(tp) > ends.get(tp, 0)
    ]
    if remade:
        await consumer.seek_to_beginning(*remade)
        log.warning(
            f"kafka came back with its log made again: {what} reads it from the start",
            extra={"partitions": [f"{tp.topic}:{tp.partition}" for tp in remade]},
        )
    return ends


async def all_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0
) -> list[TopicPartition]:
    """Every partition of ``topic`` (waits for metadata; raises LookupError if none)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        # aiokafka has no public "metadata for this topic" call on a consumer that
        # is not subscribed; its client's full metadata fetch is the documented way.
        with contextlib.suppress(KafkaError):
            cluster = await consumer._client.fetch_all_metadata()
            parts = cluster.partitions_for_topic(topic)
            if parts:
                return [TopicPartition(topic, p) for p in sorted(parts)]
        if loop.time() > deadline:
            raise LookupError(f"topic {topic!r} has no partitions (does it exist?)")
        await asyncio.sleep(0.05)  # polling metadata with a deadline


def topic_roles(settings: KafkaSettings) -> dict[str, str]:
    """Configured topic name -> role (a key of :data:`DEFAULT_PARTITIONS`)."""
    topics = settings.topics
    return {
        topics.alerts: "alerts",
        topics.manual: "manual",
        topics.heartbeats: "heartbeats",
        topics.results: "results",
        topics.state: "state",
        topics.dlq: "dlq",
    }


def topic_config(role: str) -> dict[str, str]:
    """Topic settings the daemon asks for: the state topic keeps the last record per key."""
    return {"cleanup.policy": "compact"} if role == "state" else {}


async def ensure_topics(settings: KafkaSettings) -> list[str]:
    """Create missing topics (state compacted). Returns the names created."""
    wanted = topic_roles(settings)
    admin = AIOKafkaAdminClient(**connection_kwargs(settings))
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        brokers = len((await admin.describe_cluster()).get("brokers", [])) or 1
        replication = min(3, brokers)
        for name, role in wanted.items():
            if name in existing:
                continue
            config = topic_config(role)
            if await _create(admin, name, DEFAULT_PARTITIONS[role], replication, config):
                created.append(name)
    finally:
        await admin.close()
    if created:
        log.info("created topics", extra={"topics": created})
    return created


_TOPIC_ALREADY_EXISTS = 36


async def _create(
    admin: AIOKafkaAdminClient, name: str, partitions: int, replication: int, config: dict[str, str]
) -> bool:
    topic = NewTopic(
        name=name, num_partitions=partitions, replication_factor=replication, topic_configs=config
    )
    try:
        response = await admin.create_topics([topic])
    except TopicAlreadyExistsError:
        return False
    # The admin client reports per-topic errors in the response instead of raising.
    errors = [(code, msg) for _t, code, msg in response.topic_errors if code != 0]
    if not errors:
        return True
    code, message = errors[0]
    if code == _TOPIC_ALREADY_EXISTS:
        return False  # another daemon created it meanwhile
    if config:
        # Some Kafka-compatible brokers refuse topic configs; the topic still works
        # (the state reader keeps the last record per account either way).
        log.warning(
            "topic config refused, creating without it",
            extra={"topic": name, "error_code": code},
        )
        return await _create(admin, name, partitions, replication, {})
    raise KafkaError(f"cannot create topic {name!r}: error {code} {message or ''}".strip())


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()`` that survives a broker that is gone.

    With fetches pending against a dead broker, aiokafka's ``Fetcher.close()`` cancels
    them and awaits them without catching their ``CancelledError``: it would escape
    into the caller as if the caller were cancelled (a graceful stop taken for a second
    signal), and the client's connections would stay open. That error is swallowed
    here and the rest of the close done by hand; a real cancellation of the calling
    task still propagates. Kafka errors while leaving are ignored (nothing to save).
    """
    current = asyncio.current_task()
    cancelling = current.cancelling() if current is not None else 0
    try:
        await consumer.stop()
    except KafkaError:
        return
    except asyncio.CancelledError:
        if current is not None and current.cancelling() > cancelling:
            raise  # we were cancelled ourselves
        log.debug("kafka consumer closed with pending fetches; closing the rest")
        await _close_leftovers(consumer)


async def _close_leftovers(consumer: AIOKafkaConsumer) -> None:
    # aiokafka has no public way to finish a close its fetcher cut short: cancel the
    # fetcher's pending tasks and close the client (both idempotent).
    fetcher = getattr(consumer, "_fetcher", None)
    pending = list(getattr(fetcher, "_pending_tasks", ()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    client = getattr(consumer, "_client", None)
    if client is not None:
        with contextlib.suppress(Exception):
            await client.close()
