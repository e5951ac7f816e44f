"""Everything the daemon writes to Kafka: results, halt state, dead letters, dead-man alerts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from killswitch.config import TopicSettings
from killswitch.contracts import (
    RESULT_HEAD_HEADER,
    ResultRecord,
    encode_result,
    encode_result_head,
    encode_results,
    encode_state,
)
from killswitch.core.model import HaltState, Position, SweepResult
from killswitch.core.ports import ResultSink

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# What AIOKafkaProducer uses unless given another partitioner.
_PARTITIONER = DefaultPartitioner()
# Keys whose partition is kept (accounts: a handful; the bound keeps memory flat anyway).
_MAX_CACHED_KEYS = 4096


def result_headers(record: ResultRecord) -> Headers:
    """The Kafka headers of a result record: its head (``killswitch.result.head``),
    from the same values its body is written from."""
    head = encode_result_head(
        record.alert_id, record.account, record.status, record.final, record.origin
    )
    return [(RESULT_HEAD_HEADER, head)]


async def _all_done(
    lasts: Iterable[asyncio.Future[object]], futures: Collection[asyncio.Future[object]]
) -> None:
    """Until every one of ``futures`` is done, waiting first for ``lasts`` (the last
    record sent to each partition): aiokafka sends a partition's batches in order and
    acknowledges a batch's records together, so by then the others mostly are done too,
    and one wake-up per partition replaces one callback per record. wait(), not
    gather(): a caller cancelled meanwhile leaves the records be."""
    await asyncio.wait(lasts)
    rest = [future for future in futures if not future.done()]
    if rest:
        await asyncio.wait(rest)


class Publisher:
    """One producer (acks=all) shared by every output. Keys are account ids.

    ``result(..., wait=True)`` returns only when the broker acknowledged the
    record, and ``results`` when every one of a group was: the intake commits an
    input offset after that. Progress results are
    enqueued without waiting (the sweep must not stall on Kafka); the producer
    keeps per-partition order, so a progress event never overtakes its final.

    Every result names its partition: the one aiokafka's default partitioner (the
    producer's, :func:`make_producer`) picks for its key, worked out once per key while
    the producer's metadata is unchanged, so an alert's progress results and its final
    land on one partition by one choice.
    """

    def __init__(
        self, producer: AIOKafkaProducer, topics: TopicSettings, *, daemon: str | None = None
    ) -> None:
        self._producer = producer
        self._topics = topics
        self.daemon = daemon  # this instance's id, written into state records
        self._background: set[asyncio.Future[object]] = set()
        self._enqueue = asyncio.Lock()
        # key -> the partition of the results topic the default partitioner picks for
        # it, valid until the producer's metadata next changes.
        self._result_partitions: dict[bytes, int] = {}
        producer.client.cluster.add_listener(self._metadata_changed)

    @property
    def topics(self) -> TopicSettings:
        return self._topics

    async def result(self, record: ResultRecord, *, wait: bool = True) -> None:
        """Publish one result (key = account, with its head header)."""
        key = record.account.encode()
        future = await self._send(
            self._topics.results,
            encode_result(record),
            key,
            result_headers(record),
            partition=self.result_partition(key),
        )
        if wait:
            await future
            return
        self._background.add(future)
        future.add_done_callback(self._sent)

    async def results(self, records: Sequence[ResultRecord]) -> list[BaseException | None]:
        """Publish several final results at once and wait for every acknowledgement:
        one hold of the enqueueing lock and one wake-up for all of them (a storm's
        alerts answered by one sweep are published together). Returns, in order,
        None for each acknowledged record and the error for each that was not."""
        outcomes: list[BaseException | None] = [None] * len(records)
        futures: dict[int, asyncio.Future[object]] = {}
        last: dict[int | None, asyncio.Future[object]] = {}  # per partition
        values = encode_results(records)
        topic = self._topics.results
        async with self._enqueue:
            for i, (record, value) in enumerate(zip(records, values, strict=True)):
                key = record.account.encode()
                partition = self.result_partition(key)
                try:
                    futures[i] = last[partition] = await self._producer.send(
                        topic, value, key=key, partition=partition, headers=result_headers(record)
                    )
                except KafkaError as exc:
                    outcomes[i] = exc
        if futures:
            await _all_done(last.values(), futures.values())
        for i, future in futures.items():
            outcomes[i] = KafkaError("send cancelled") if future.cancelled() else future.exception()
        return outcomes

    def result_partition(self, key: bytes) -> int | None:
        """The partition of the results topic that ``send(key=key)`` would pick now:
        aiokafka's default partitioner over the producer's metadata, as ``send`` runs
        it. Kept per key until the metadata next changes (its murmur2 is pure Python,
        and a group's records share their key). None while the producer knows no
        partitions of the topic (``send`` then waits for them and picks)."""
        partition = self._result_partitions.get(key)
        if partition is not None:
            return partition
        cluster = self._producer.client.cluster
        topic = self._topics.results
        known = cluster.partitions_for_topic(topic)
        if not known:
            return None  # not cached: the next call looks again
        if len(self._result_partitions) >= _MAX_CACHED_KEYS:
            self._result_partitions.clear()
        # The lists as send() makes them (the partitioner indexes the first).
        chosen: int = _PARTITIONER(
            key, list(known), list(cluster.available_partitions_for_topic(topic))
        )
        self._result_partitions[key] = chosen
        return chosen

    def _metadata_changed(self, _cluster: object) -> None:
        # Called by aiokafka after each metadata update, before anything awaiting
        # it resumes: the topic may have gained partitions.
        self._result_partitions.clear()

    def progress_sink(self, origin: Position | None) -> ResultSink:
        """The sink the engine calls with progress results of one alert (read at
        ``origin``)."""

        async def sink(result: SweepResult) -> None:
            try:
                await self.result(ResultRecord.of(result, origin), wait=False)
            except Exception:  # progress is best effort; the final result is what counts
                log.warning("progress result not published", exc_info=True)

        return sink

    async def state(self, state: HaltState) -> None:
        """Publish a halt latch change to the compacted state topic (key = account)."""
        await (
            await self._send(
                self._topics.state, encode_state(state, self.daemon), state.account.encode()
            )
        )

    async def dead_letter(self, value: bytes, key: bytes | None) -> None:
        """Publish one encoded dead letter record."""
        await (await self._send(self._topics.dlq, value, key))

    async def alert(self, account: str, value: bytes) -> None:
        """Publish an alert the daemon generated itself (dead-man) to the alerts topic."""
        await (await self._send(self._topics.alerts, value, account.encode()))

    async def _send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers | None = None,
        *,
        partition: int | None = None,
    ) -> asyncio.Future[object]:
        """Enqueue one record; the returned future resolves when the broker acknowledged it.

        Enqueueing is serialised: when a partition's batch is full, aiokafka makes
        every pending sender wait for that batch and wakes them all at once, which
        under an alert storm (thousands of results at once) costs O(n^2) wake-ups.
        One sender at a time keeps it linear; acknowledgements still overlap.
        """
        async with self._enqueue:
            future: asyncio.Future[object] = await self._producer.send(
                topic, value, key=key, partition=partition, headers=headers
            )
        return future

    async def flush(self) -> None:
        """Wait until every enqueued record is acknowledged (or failed)."""
        await self._producer.flush()

    def _sent(self, future: asyncio.Future[object]) -> None:
        self._background.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.warning("progress result not published", extra={"error": type(exc).__name__})
