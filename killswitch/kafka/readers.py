"""Start-up and background readers: the halt state topic and the results topic.

Both use consumers without a group (every daemon reads every partition; nothing
is committed), so they work the same with one daemon or many.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from killswitch.config import KafkaSettings
from killswitch.contracts import (
    RESULT_HEAD_HEADER,
    ResultHead,
    decode_result_summary,
    decode_state_record,
    read_result_head,
)
from killswitch.core.carry import CarryStore
from killswitch.core.dedup import DedupWindow
from killswitch.core.model import CarriedOutcomes, HaltState, Position, Scope
from killswitch.kafka.clients import all_partitions, make_reader, rewind_remade, stop_consumer
from killswitch.tasks import TurnBudget, wait_any

log = logging.getLogger(__name__)

_POLL_MS = 100
_MAX_RECORDS = 50
# Background readers: a halt, release or result from another daemon may take this
# long to be seen (start-up catch-up reads to the end regardless).
_READER_WAIT_MS = 100
# Longest the results reader waits for a busy intake before it reads a step anyway.
MAX_DEFER_S = 1.0
# Records the results reader may be behind and still wait for a busy intake. A step a
# second (MAX_DEFER_S, _MAX_RECORDS) falls ever further behind an intake busy for long
# while the group publishes faster than that; a catch-up on assignment must then read it
# all before wait_caught_up's timeout (or repeats are swept again), and the kills on the
# partitions just assigned wait for it. Bounded, a catch-up has this many records to
# read at most: final results learned from their heads read back at about 20,000 a
# second, so an assignment waits about half a second for them (results read from their
# bodies take longer), a small share of a failover, while a storm of as many alerts is
# read back only once it has been handled.
MAX_DEFER_LAG = 10_000
# While it waits for a busy intake, the reader asks the broker for the topic's end this
# often at most (for this long at most): records fetched and not yet read stop further
# fetches, and with them the high watermarks that would show the end moving on.
_ENDS_REFRESH_S = 1.0


async def _positions_reached(
    consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]
) -> bool:
    for tp, end in targets.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def read_halt_states(
    settings: KafkaSettings, topic: str, timeout_s: float = 60.0
) -> dict[str, HaltState]:
    """The last state of every account on the (compacted) state topic, halted ones only."""
    reader = HaltStateReader(settings, topic)
    try:
        return await reader.start(timeout_s)
    finally:
        await reader.close()


async def read_last_states(
    settings: KafkaSettings, topic: str, timeout_s: float = 60.0
) -> dict[str, HaltState]:
    """The last record of every account on the state topic, releases included (a
    tombstone reads as a release at the time it is read)."""
    consumer = make_reader(settings, _READER_WAIT_MS)
    await consumer.start()
    try:
        return await _read_states(consumer, topic, timeout_s, keep_cleared=True)
    finally:
        await stop_consumer(consumer)


async def _read_states(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float, *, keep_cleared: bool
) -> dict[str, HaltState]:
    """Every partition of ``topic`` from the beginning to the end offsets found now, the
    last record per account kept (``keep_cleared``: releases and tombstones too)."""
    latest: dict[str, HaltState] = {}
    parts = await all_partitions(consumer, topic)
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    targets = await consumer.end_offsets(parts)
    async with asyncio.timeout(timeout_s):
        while not await _positions_reached(consumer, targets):
            batch = await consumer.getmany(timeout_ms=_POLL_MS)
            for records in batch.values():
                for rec in records:
                    _fold_state(latest, rec.key, rec.value, None, keep_cleared=keep_cleared)
    return latest


StateApply = Callable[[HaltState], None]


class HaltStateReader:
    """Reads the state topic once at start-up, then follows it.

    :meth:`start` reads every partition from the beginning to the end offsets found
    then, keeping the last record per account (a tombstone or ``halted: false``
    clears it), and returns the halted accounts. :meth:`follow` then applies what
    *other* daemons publish (records carrying this daemon's id are skipped), so a
    release processed by the daemon that owns an account also stops the latch
    guards of every other daemon, and a halt set by a daemon that later dies is
    still guarded. Each poll's records are folded per account before applying.
    """

    def __init__(self, settings: KafkaSettings, topic: str, daemon: str | None = None) -> None:
        self._settings = settings
        self._topic = topic
        self._daemon = daemon
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self, timeout_s: float = 60.0) -> dict[str, HaltState]:
        consumer = make_reader(self._settings, _READER_WAIT_MS)
        await consumer.start()
        self._consumer = consumer
        latest = await _read_states(consumer, self._topic, timeout_s, keep_cleared=False)
        return {account: s for account, s in latest.items() if s.halted}

    async def follow(self, stop: asyncio.Event, apply: StateApply) -> None:
        """Apply other daemons' state changes until ``stop`` is set."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("HaltStateReader not started")
        while not stop.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=_POLL_MS)
            except KafkaError as exc:
                log.warning("state reader error", extra={"error": type(exc).__name__})
                await asyncio.sleep(0.5)  # back off before polling again
                continue
            changes: dict[str, HaltState] = {}
            for records in batch.values():
                for rec in records:
                    _fold_state(changes, rec.key, rec.value, self._daemon, keep_cleared=True)
            for state in changes.values():
                apply(state)

    async def broker_back(self, created: Collection[str]) -> None:
        """After the broker came back: a state log made again is read from its start
        (:func:`rewind_remade`): the halts the daemons publish again after such a loss."""
        consumer = self._consumer
        if consumer is not None:
            await rewind_remade(consumer, created, "the state follower")

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)


def _fold_state(
    latest: dict[str, HaltState],
    key: bytes | None,
    value: bytes | None,
    skip_daemon: str | None,
    *,
    keep_cleared: bool = False,
) -> None:
    record = decode_state_record(value)
    if record is not None:
        state, daemon = record
        if skip_daemon is not None and daemon == skip_daemon:
            latest.pop(state.account, None)  # our own change supersedes older ones
            return
        latest[state.account] = state
    elif value is None and key is not None:  # tombstone: the account is not halted
        account = key.decode("utf-8", "replace")
        if keep_cleared:
            latest[account] = HaltState(account, False, "", datetime.now(UTC), Scope())
        else:
            latest.pop(account, None)
    else:
        log.warning("unreadable record on the state topic ignored")


class KafkaRecord(Protocol):
    """What the results reader uses of a consumed record."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def result_head(record: KafkaRecord) -> ResultHead | None:
    """A result record's head header, when it has exactly one ``killswitch.result.head``
    and it is readable and names the record's key as its account; None otherwise (no
    header: an older daemon's record; anything doubtful): read the body then."""
    found = [value for name, value in record.headers if name == RESULT_HEAD_HEADER]
    if len(found) != 1:
        return None
    head = read_result_head(found[0])
    if head is None or not _is_key_of(record.key, head.account):
        return None
    return head


def of_another_alert(record: KafkaRecord, alert_id: str) -> bool:
    """Whether a result record's head names an alert other than ``alert_id``: a reader
    following one alert skips its body (it may list thousands of orders, and a busy
    results topic holds tens of thousands of other alerts' results)."""
    head = result_head(record)
    return head is not None and head.alert_id != alert_id


def final_head(record: KafkaRecord) -> ResultHead | None:
    """The head header of a final result, when it alone can be learned from
    (:func:`result_head`); None for a progress result too, whose outcomes are in the
    body."""
    head = result_head(record)
    return head if head is not None and head.final else None


def _is_key_of(key: bytes | None, account: str) -> bool:
    try:
        return key == account.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a JSON escape can name one): no key's
        return False


class ResultsIndex:
    """Feeds the dedup window with final results from the results topic, and keeps
    the latest progress outcomes of alerts with no final result yet (``carry``), so
    a replayed alert's final result covers what an earlier process did.

    At start-up it reads the tail of every partition (at most ``tail_records``
    per partition: the recent window) up to the end; then it keeps following the
    topic, so results published by other daemons in the group are known when
    their partitions move here (:meth:`wait_caught_up` on assignment).

    A final result is learned from its head header alone when :func:`final_head`
    trusts it (``read_heads`` counts those); every other record from its body.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        dedup: DedupWindow,
        tail_records: int,
        *,
        carry: CarryStore | None = None,
        deferrable: TurnBudget | None = None,
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._dedup = dedup
        # Following the topic can wait a turn (see Intake): None at start-up reads.
        self._deferrable = deferrable
        self.carry = carry if carry is not None else CarryStore()
        self._tail = tail_records
        self._consumer: AIOKafkaConsumer | None = None
        self._parts: list[TopicPartition] = []
        # Per partition, the end last known (the end offsets asked; the fetches' high
        # watermarks): against the position read to, how far behind the reader is.
        self._ends: dict[TopicPartition, int] = {}
        self._ends_due = 0.0  # monotonic time when the ends are asked again (see _defers)
        self._progress = asyncio.Event()
        self._catch_ups = 0  # wait_caught_up calls waiting: the reader defers to none
        self._catching_up = asyncio.Event()  # set while there are any
        self.deferred = 0  # steps that waited for the intake (a diagnostic)
        self.learned = 0
        self.read_heads = 0  # final results learned from their head header alone
        self.unreadable = 0  # records skipped because learning them failed

    async def start(self) -> None:
        """Assign every partition at its recent tail."""
        consumer = make_reader(self._settings, _READER_WAIT_MS)
        await consumer.start()
        self._consumer = consumer
        try:
            self._parts = await all_partitions(consumer, self._topic)
            consumer.assign(self._parts)
            begins = await consumer.beginning_offsets(self._parts)
            ends = await consumer.end_offsets(self._parts)
            for tp in self._parts:
                consumer.seek(tp, max(begins[tp], ends[tp] - self._tail))
            self._ends.update(ends)
        except BaseException:
            await self.close()
            raise

    async def catch_up(self, timeout_s: float) -> None:
        """Read until the end offsets seen now (used at start-up, before the tail loop runs)."""
        consumer = self._require()
        targets = await consumer.end_offsets(self._parts)
        async with asyncio.timeout(timeout_s):
            while not await _positions_reached(consumer, targets):
                await self._poll(consumer)

    async def run(
        self,
        stop: asyncio.Event,
        defer_to: asyncio.Event | None = None,
        *,
        max_defer_s: float = MAX_DEFER_S,
        max_defer_lag: int = MAX_DEFER_LAG,
    ) -> None:
        """Follow the topic until ``stop`` is set.

        ``defer_to`` (the intake's :attr:`~killswitch.kafka.consumer.Intake.idle`): while
        it is clear, each step first waits for it, for ``max_defer_s`` at most. During
        an alert storm the intake then has the CPU for the alerts, and this reader
        reads the storm's results once the storm has been handled: what it learns
        matters when partitions move here, and :meth:`wait_caught_up` (on assignment)
        waits for no one. Nor does a step while the reader is more than ``max_defer_lag``
        records behind: however long the intake stays busy, a catch-up has that many
        to read at most."""
        consumer = self._require()
        while not stop.is_set():
            if defer_to is not None and await self._defers(consumer, defer_to, max_defer_lag):
                self.deferred += 1
                await wait_any((defer_to, self._catching_up, stop), max_defer_s)
                if stop.is_set():
                    return
            if self._deferrable is not None:
                await self._deferrable.take()
            try:
                await self._poll(consumer)
                if not self._catch_ups:
                    # Reading back in the background (after a storm: thousands of
                    # results), one step per turn: a kill arriving then finds each turn
                    # holding one step, not a whole budget's worth of reading.
                    await asyncio.sleep(0)
            except KafkaError as exc:
                log.warning("results reader error", extra={"error": type(exc).__name__})
                await asyncio.sleep(0.5)  # back off before polling again

    async def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until the tail loop has read up to the current end offsets (False on timeout)."""
        consumer = self._require()
        self._catch_ups += 1
        self._catching_up.set()
        try:
            targets = await consumer.end_offsets(self._parts)
            self._ends.update(targets)
            async with asyncio.timeout(timeout_s):
                while not await _positions_reached(consumer, targets):
                    self._progress.clear()
                    await self._progress.wait()
        except (TimeoutError, KafkaError):
            return False
        finally:
            self._catch_ups -= 1
            if not self._catch_ups:
                self._catching_up.clear()
        return True

    async def broker_back(self, created: Collection[str]) -> None:
        """After the broker came back: a results log made again is read from its start
        (:func:`rewind_remade`), and the ends known so far are the new log's."""
        consumer = self._consumer
        if consumer is not None:
            self._ends = await rewind_remade(consumer, created, "the results reader")

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("ResultsIndex not started")
        return self._consumer

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        # Bounded: in an alert storm thousands of results wait, and reading them all in
        # one go would hold the event loop (and every kill) that long. Sized for records
        # read from their body (an older daemon's, a progress result); a final result
        # learned from its head costs a fraction of that, and a step's own overhead is
        # small, so a larger bound for those would save little.
        batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=_MAX_RECORDS)
        for records in batch.values():
            self._learn_records(records)
        self._progress.set()

    async def _defers(self, consumer: AIOKafkaConsumer, idle: asyncio.Event, max_lag: int) -> bool:
        """Whether the next step waits for the intake: it is busy (``idle`` clear), no
        catch-up is awaited, and the reader is at most ``max_lag`` records behind."""
        if idle.is_set() or self._catch_ups:
            return False
        now = time.monotonic()
        if now >= self._ends_due:
            self._ends_due = now + _ENDS_REFRESH_S
            try:
                async with asyncio.timeout(_ENDS_REFRESH_S):
                    self._ends.update(await consumer.end_offsets(self._parts))
            except (TimeoutError, KafkaError):
                pass  # the ends known so far (and the fetches' high watermarks) serve
        if idle.is_set() or self._catch_ups:
            return False
        return await self._behind(consumer) <= max_lag

    async def _behind(self, consumer: AIOKafkaConsumer) -> int:
        """Records between the positions read to and the last known ends (a lower bound:
        the ends move on between fetches)."""
        behind = 0
        for tp in self._parts:
            end = max(self._ends.get(tp, 0), consumer.highwater(tp) or 0)
            behind += max(0, end - await consumer.position(tp))
        return behind

    def carried(self, alert_id: str, account: str) -> CarriedOutcomes | None:
        """What an earlier process published for a pair it did not finish, if anything."""
        return self.carry.get(alert_id, account)

    def _learn_records(self, records: Iterable[KafkaRecord]) -> None:
        """Learn a final result from its head header when :func:`final_head` trusts
        it, anything else from its body. A record that makes learning fail is skipped
        with an error logged: anyone who can write the topic could otherwise stop every
        daemon, and keep them from starting, with one record."""
        for record in records:
            try:
                self._learn_record(record)
            except Exception:
                self.unreadable += 1
                log.exception("result record skipped: it could not be learned")

    def _learn_record(self, record: KafkaRecord) -> None:
        head = final_head(record)
        if head is None:
            self._learn_body(record.value)
        else:
            self.read_heads += 1
            self._learn_final(head.alert_id, head.account, head.status, head.origin)

    def _learn_body(self, value: bytes | None) -> None:
        summary = decode_result_summary(value)
        if summary is None:
            return
        if not summary.final:
            if summary.carried is not None and summary.status == "running":
                self.carry.progress(summary.alert_id, summary.account, summary.carried)
            return
        self._learn_final(summary.alert_id, summary.account, summary.status, summary.origin)

    def _learn_final(
        self, alert_id: str, account: str, status: str, origin: Position | None
    ) -> None:
        self.carry.final(alert_id, account)
        if status == "running":
            return
        self._dedup.learn(alert_id, account, status, origin)
        self.learned += 1
