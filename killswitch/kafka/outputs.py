"""Everything the daemon writes to Kafka: results, halt state, dead letters, dead-man alerts."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

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


# Kafka errors about the record itself: sent again as it is, it is refused again.
_RECORD_REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


class ProducerUnusable(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The producer can deliver nothing any more: its sender task ended (an error
    escaped it, or it was cancelled) or it was closed while the daemon still publishes.
    aiokafka does not recover from either; a Kafka error, so whoever publishes retries
    (and holds its record) rather than take it for an error of the record."""

    def __str__(self) -> str:
        # The reason alone (it names the producer): KafkaError prefixes its class name.
        return str(self.args[0]) if self.args else "kafka producer unusable"


def sender_task(producer: AIOKafkaProducer) -> asyncio.Task[None] | None:
    """aiokafka's task that delivers every record the producer enqueues (None before
    ``start``). aiokafka has no public way to say that its producer stopped delivering:
    ``send`` keeps enqueueing after that task ended cancelled, and fails every record
    with the same error after it ended with one."""
    task: asyncio.Task[None] | None = getattr(
        getattr(producer, "_sender", None), "sender_task", None
    )
    return task


_CLOSED = "closed while still in use"


def _why_ended(task: asyncio.Task[None]) -> str:
    """Why the sender task ended, by the types of its error (never their text, which
    could quote anything)."""
    # Cancelled, aiokafka's sender routine returns rather than raise.
    error = None if task.cancelled() else task.exception()
    if error is None:
        return "its sender task was stopped"
    names = type(error).__name__
    cause = error.__cause__ or error.__context__
    if cause is not None:
        names += f" from {type(cause).__name__}"
    return f"its sender task failed ({names})"


def refused_as_made(error: BaseException) -> bool:
    """Whether a publish failed because of the record itself (too large for a request
    or for the broker, text that cannot be encoded, or a bug in writing it: anything
    but a Kafka error), not because Kafka is unavailable or busy: sent again unchanged
    it fails again, whereas the other errors pass once the broker answers."""
    return isinstance(error, _RECORD_REFUSED) or not isinstance(error, KafkaError)


def result_headers(record: ResultRecord) -> Headers:
    """The Kafka headers of a result record: its head (``killswitch.result.head``),
    from the same values its body is written from."""
    head = encode_result_head(
        record.alert_id, record.account, record.status, record.final, record.origin
    )
    return [(RESULT_HEAD_HEADER, head)]


def _encoded(records: Sequence[ResultRecord]) -> list[bytes | Exception]:
    """:func:`encode_results` of ``records``; when that fails, each encoded on its own,
    the error standing in for a record that cannot be (the others go out)."""
    try:
        return list(encode_results(records))
    except Exception:
        return [_encoded_alone(record) for record in records]


def _encoded_alone(record: ResultRecord) -> bytes | Exception:
    try:
        return encode_result(record)
    except Exception as exc:
        return exc


class _Filling:
    """A record batch of one partition of the results topic being filled: handed to
    aiokafka once the batch before it has been (see :meth:`Publisher.results`)."""

    __slots__ = ("builder", "outcome")

    def __init__(self, builder: Any) -> None:
        self.builder = builder  # aiokafka's BatchBuilder
        # None once the broker acknowledged the batch, else the error.
        self.outcome: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )

    def append(self, key: bytes, value: bytes, headers: Headers) -> bool:
        """Add one record; False when the batch is full (or already handed over)."""
        return (
            self.builder.append(timestamp=None, key=key, value=value, headers=headers) is not None
        )

    def settle(self, sent: asyncio.Future[object]) -> None:
        """Take the outcome of the batch aiokafka sent (a done callback)."""
        if not self.outcome.done():
            self.outcome.set_result(_outcome(sent))


def _outcome(sent: asyncio.Future[object]) -> BaseException | None:
    """None for a record (or batch) the broker acknowledged, else why it was not."""
    return KafkaError("send cancelled") if sent.cancelled() else sent.exception()


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
    land on one partition by one choice. Until the producer knows the results topic's
    partitions, and while a result sent before then waits for them, none is named: the
    producer picks the same one, in the order the results were sent.

    Given ``on_unusable`` (the daemon's), the publisher watches its producer, which it
    then owns (closed by :meth:`close`): one that can deliver nothing any more (its
    sender task ended, or it was closed by anything but :meth:`close`) is found at
    once; from then on every publish fails with :class:`ProducerUnusable`,
    :attr:`unusable` says why, and ``on_unusable`` is called once with that reason.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: TopicSettings,
        *,
        daemon: str | None = None,
        on_unusable: Callable[[str], None] | None = None,
    ) -> None:
        self._producer = producer
        self._topics = topics
        self.daemon = daemon  # this instance's id, written into state records
        self._background: set[asyncio.Future[object]] = set()
        # Enqueueing is serialised (see _send): one lock per partition of the results
        # topic, so a batch waiting for its turn holds back only its own partition, and
        # one for every other record.
        self._enqueue = asyncio.Lock()
        self._result_locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        # key -> the partition of the results topic the default partitioner picks for
        # it, valid until the producer's metadata next changes.
        self._result_partitions: dict[bytes, int] = {}
        producer.client.cluster.add_listener(self._metadata_changed)
        # partition -> the results batch being filled (see results()).
        self._filling: dict[int, _Filling] = {}
        self._handing: set[asyncio.Task[None]] = set()
        # Results being enqueued with no partition named (the topic's not known when
        # sent): while any is, every result goes the same way, behind it (see _placed).
        self._unplaced = 0
        # aiokafka's own limit (max_request_size), which send() checks for a record.
        self._max_record_bytes: int = producer._max_request_size
        self._on_unusable = on_unusable
        self._closing = False  # close() began: the producer ending is ours
        self._unusable: str | None = None
        sender = sender_task(producer) if on_unusable is not None else None
        if sender is not None:
            sender.add_done_callback(self._sender_ended)

    @property
    def topics(self) -> TopicSettings:
        return self._topics

    @property
    def unusable(self) -> str | None:
        """Why the producer can deliver nothing any more (for ``/readyz``: no secret,
        only the types of errors), None while it can."""
        return self._unusable

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        # stop() cancels the sender: the producer closed by anything but close().
        closed = getattr(self._producer, "_closed", False) is True
        self._found_unusable(_CLOSED if closed else _why_ended(task), task)

    def _found_unusable(self, why: str, task: asyncio.Task[None] | None = None) -> None:
        if self._on_unusable is None or self._closing or self._unusable is not None:
            return
        self._unusable = f"kafka producer unusable: {why}"
        error = task.exception() if task is not None and not task.cancelled() else None
        log.error(self._unusable, exc_info=error)
        self._on_unusable(self._unusable)

    def _check_usable(self) -> None:
        # A record enqueued behind a sender task that was cancelled would wait for ever.
        if self._unusable is not None:
            raise ProducerUnusable(self._unusable)

    async def result(self, record: ResultRecord, *, wait: bool = True) -> None:
        """Publish one result (key = account, with its head header)."""
        key = record.account.encode()
        future = await self._send(
            self._topics.results,
            encode_result(record),
            key,
            result_headers(record),
            partition=self._placed(key),
        )
        if wait:
            await future
            return
        self._background.add(future)
        future.add_done_callback(self._sent)

    async def results(self, records: Sequence[ResultRecord]) -> list[BaseException | None]:
        """Publish several final results at once and wait for every acknowledgement.
        Returns, in order, None for each acknowledged record and the error for each
        that was not.

        Records go into one record batch per partition that the publisher fills itself
        (aiokafka's ``create_batch``/``send_batch``): one future per batch, where
        ``send`` makes and resolves one per record, the larger part of publishing a
        storm's results. A partition's batch is
        handed to aiokafka once the one before it has been, so everything published
        meanwhile (by every group) goes out together. A record too large for a
        request, or whose partition is not known yet, is sent alone as ``send`` sends
        it, so it fails (or waits for metadata) alone; one that cannot be written at
        all (:func:`refused_as_made`) fails alone with the error that says why."""
        outcomes: list[BaseException | None] = [None] * len(records)
        waiting: list[tuple[int, asyncio.Future[BaseException | None]]] = []
        alone: list[tuple[int, asyncio.Future[object]]] = []
        for i, (record, value) in enumerate(zip(records, _encoded(records), strict=True)):
            if isinstance(value, Exception):  # this record cannot be written: it fails alone
                outcomes[i] = value
                continue
            try:
                key = record.account.encode()
                headers = result_headers(record)
            except Exception as exc:
                outcomes[i] = exc
                continue
            filling = self._fill(key, value, headers)
            if filling is not None:
                waiting.append((i, filling.outcome))
                continue
            try:
                future = await self._send(
                    self._topics.results, value, key, headers, partition=self._placed(key)
                )
                alone.append((i, future))
            except Exception as exc:  # the caller is told, whatever it is
                outcomes[i] = exc
        futures: set[asyncio.Future[Any]] = {f for _, f in waiting} | {f for _, f in alone}
        if futures:
            # wait(), not gather(): a caller cancelled meanwhile leaves the records be.
            await asyncio.wait(futures)
        for i, outcome in waiting:
            outcomes[i] = outcome.result()
        for i, future in alone:
            outcomes[i] = _outcome(future)
        return outcomes

    def _fill(self, key: bytes, value: bytes, headers: Headers) -> _Filling | None:
        """The batch of the key's partition the record went into, a new one started
        when there is none or it is full; None when the record is to go alone."""
        partition = self._placed(key)
        if partition is None or self._too_large(key, value, headers):
            return None
        filling = self._filling.get(partition)
        if filling is not None and filling.append(key, value, headers):
            return filling
        filling = _Filling(self._producer.create_batch())
        if not filling.append(key, value, headers):
            return None  # larger than a batch may be
        self._filling[partition] = filling
        task = asyncio.create_task(self._hand_over(partition, filling))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)
        return filling

    def _stop_filling(self, partition: int, filling: _Filling) -> None:
        """No record joins ``filling`` any more (the next one starts a new batch)."""
        if self._filling.get(partition) is filling:
            del self._filling[partition]
        filling.builder.close()

    def _too_large(self, key: bytes, value: bytes, headers: Headers) -> bool:
        # send() refuses such a record alone; in a batch the broker would refuse the batch.
        size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        return size > self._max_record_bytes

    async def _hand_over(self, partition: int, filling: _Filling) -> None:
        """Hand one filled batch to aiokafka, after every record enqueued to its
        partition before it (the partition's enqueueing lock: a progress result never
        overtakes its final). The batch stops filling once its hand-over holds the lock;
        aiokafka takes it once the batch before it is on its way to the broker, and
        until then the next batch keeps filling, its hand-over waiting here."""
        try:
            async with self._result_locks[partition]:
                self._stop_filling(partition, filling)
                self._check_usable()
                await self._check_partition(partition)
                try:
                    sent = await self._producer.send_batch(
                        filling.builder, self._topics.results, partition=partition
                    )
                except ProducerClosed:
                    self._found_unusable(_CLOSED)
                    raise
        except Exception as exc:  # its callers are told, whatever it is (they wait on it)
            self._stop_filling(partition, filling)
            filling.outcome.set_result(exc)
            return
        except asyncio.CancelledError:  # not handed over: its records were not sent
            self._stop_filling(partition, filling)
            filling.outcome.set_result(KafkaError("send cancelled"))
            raise
        sent.add_done_callback(filling.settle)

    async def _check_partition(self, partition: int) -> None:
        """Raise UnknownTopicOrPartitionError (which the intake retries, on a partition
        picked afresh) when the results topic, once the producer knows its partitions
        (waited for as ``send`` waits), lacks ``partition``: a broker back empty may
        have made the topic again with fewer since the record's was picked, and
        aiokafka would fail an assertion. Without a wait when they are known."""
        known = await self._producer.partitions_for(self._topics.results)
        if partition not in known:
            raise UnknownTopicOrPartitionError(f"results topic has no partition {partition}")

    async def broker_back(self, created: Collection[str]) -> None:
        """After the broker came back: the producer's metadata is asked again at once (so
        the results' partitions are worked out again). A topic made again may have other
        partitions; Kafka answers a write to a partition it lacks with an error that makes
        the client ask, but a broker that accepts it, as the embedded one does, would
        take results into a partition nobody reads, for up to the metadata's max age."""
        await self._producer.client.force_metadata_update()

    def _placed(self, key: bytes) -> int | None:
        """The partition a result of ``key`` is sent to (:meth:`result_partition`), or
        None while a result sent with none named is being enqueued: then this one goes
        the same way, behind it in the same queue (the other lock), so an alert's final
        never overtakes its progress result waiting for the topic's partitions."""
        return None if self._unplaced else self.result_partition(key)

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
        One sender at a time keeps it linear; acknowledgements still overlap. A result
        whose partition is named takes that partition's lock (in order with the
        batches of :meth:`results`) and ends the batch filling for that partition, so
        whatever is published after it goes after it; anything else takes the
        publisher's other lock.
        """
        lock = self._enqueue
        result_partition = partition if topic == self._topics.results else None
        unplaced = topic == self._topics.results and partition is None
        if result_partition is not None:
            lock = self._result_locks[result_partition]
            filling = self._filling.get(result_partition)
            if filling is not None:
                # Its hand-over may wait ahead of this record for the lock: a record
                # published after this one (its alert's final) must not join it.
                self._stop_filling(result_partition, filling)
        self._unplaced += unplaced  # see _placed
        try:
            async with lock:
                self._check_usable()
                if result_partition is not None:
                    await self._check_partition(result_partition)
                future: asyncio.Future[object] = await self._producer.send(
                    topic, value, key=key, partition=partition, headers=headers
                )
        except ProducerClosed:
            self._found_unusable(_CLOSED)
            raise
        finally:
            self._unplaced -= unplaced
        return future

    async def flush(self) -> None:
        """Wait until every enqueued record is acknowledged (or failed); at once when
        the producer can deliver nothing any more."""
        if self._handing:
            await asyncio.wait(self._handing)
        if self._unusable is None:
            await self._producer.flush()

    async def close(self) -> None:
        """Stop the producer (its ending is then not taken for a failure)."""
        self._closing = True
        await self._producer.stop()

    def _sent(self, future: asyncio.Future[object]) -> None:
        self._background.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.warning("progress result not published", extra={"error": type(exc).__name__})
