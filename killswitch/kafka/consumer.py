"""The alert consumer: Kafka in, engine, results out, offsets committed at-least-once.

One consumer group reads the alerts and manual topics. Records read wait in
lanes (:class:`killswitch.core.lanes.FairLanes`, one per topic and key; the
shortest first, manual triggers before all) and are taken up a slice at a time
between turns of the event loop, so a record for a quiet account is never queued
behind a storm on another (docs/INTAKE.md, "Ordering work").
Each record taken up is parsed and validated
(:func:`killswitch.contracts.parse_alert`) and planned, then handled in a task:
refused to the DLQ, or one request per account handed to the engine (which
serialises and coalesces per account) and each account's final result published.
A lane's records taken up as a run share that work: the plain kills of one account
form a group, joined to its sweep at once, handled by one task, their results
published together (:meth:`Intake._accept_run`). The record's offset is *done* only
when every output for it is acknowledged; the committer commits the contiguous done
prefix per partition (:class:`OffsetTracker`).

Backpressure: an account with ``max_queued_per_account`` requests in the engine
holds its lane (its records wait, the other lanes go on); with that times the
number of accounts records waiting or in flight, the consumer pauses the
partitions that have records waiting (records stay in Kafka; the others are
still read) and resumes them at half. Each poll takes everything the Kafka
client has fetched (up to that limit), so the client fetches every partition
again at once.

Rebalance: on revocation the consumer waits (``intake.rebalance_drain_s`` at
most) for the revoked partitions' work to finish; what still runs is cancelled
without a result and its accounts' sweeps are handed over (``EngineAPI.hand_over``:
stopped, their last progress published), so the next owner replays it with nobody
else sweeping those accounts. Then it commits what completed and forgets the rest
(the dedup window turns finished repeats into ``duplicate`` results). On
assignment it first lets the results reader catch up, so results published by the
previous owner are known. After every change of the
assignment (and before leaving the group) ``on_assignment`` runs, once
:attr:`Intake.assignment` reflects it: the daemon moves latch guards with it.

Lifetime: :meth:`Intake.run` owns every task of the intake (the poll, records' and
groups' work, the committer, pair-list fetches) in one task group; a revocation reaches the
revoked partitions' work through an index by partition, which keeps no task alive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import Counter
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from killswitch.config import EngineSettings, IntakeSettings, KafkaSettings, TopicSettings
from killswitch.contracts import (
    Alert,
    Channel,
    Rejection,
    RejectKind,
    ResultRecord,
    duplicate_result,
    encode_dlq,
    failed_result,
    final_result_fields,
    final_results_lines,
    kill_requests,
    parse_alert,
    reduced_result,
)
from killswitch.core.dedup import DedupWindow, Seen
from killswitch.core.lanes import FairLanes
from killswitch.core.model import KillRequest, Position, SweepResult, SweepStatus
from killswitch.core.offsets import OffsetTracker
from killswitch.core.pairs import PairVerdict, check_pairs
from killswitch.core.ports import (
    AlertObserver,
    EngineAPI,
    NullAlertObserver,
    PairLister,
    SweepHandedOver,
)
from killswitch.kafka.clients import all_partitions, make_group_consumer, stop_consumer
from killswitch.kafka.forward import MAX_FORWARD_BYTES, decode_forward, encode_forward, is_forward
from killswitch.kafka.outputs import Publisher, refused_as_made
from killswitch.kafka.ownership import owns
from killswitch.kafka.readers import ResultsIndex
from killswitch.tasks import TurnBudget, task_scope
from killswitch.triggers import TriggerVerifier

log = logging.getLogger(__name__)

DEADMAN_SOURCE = "deadman"
# Messages larger than this are parsed in a worker thread.
_THREAD_PARSE_BYTES = 64 * 1024
_POLL_MS = 100
# Of each turn of the event loop, how long work that can wait (a group's results
# published, results read back) may take before the rest of it waits for later turns.
DEFERRABLE_PER_TURN_S = 0.004
# While every lane with records waiting is held: how long a poll waits for new records
# before the lanes are looked at again.
_HELD_POLL_MS = 10
# Records are taken up for at most this long before the rest of the event loop (sweeps,
# publishing, the Kafka client) gets a turn. What a turn takes up sets how much storm work
# its next turns carry, and a quiet account's kill waits a few turns: shorter slices
# shorten its wait, at the cost of smaller groups and more turns per storm
# (docs/BENCHMARKS.md, "storm").
SLICE_S = 0.001
# The least a turn takes up, however much of its budget is spent: new records keep
# coming in while a storm's results go out.
_MIN_SLICE_S = 0.0005
# Most records of one lane taken up as one run (see Intake._accept_run): a storm's
# alerts for an account then share one join to its sweep and one task. Bounded so a
# run's parsing stays within about a slice.
_RUN_MAX = 32
_PUBLISH_BACKOFF_MAX_S = 5.0
_LAG_REPORT_S = 1.0
# How long a hand-over waits for its last progress results to be acknowledged.
_HANDOVER_FLUSH_S = 2.0
# How long the commit of a revocation may take. aiokafka retries a commit for as long as
# the group's coordinator is unknown (the broker away), and forever once the consumer is
# closing (it no longer looks the coordinator up). That commit runs in aiokafka's
# coordination task, which ``consumer.stop()`` waits for: unbounded, a broker lost
# during a rebalance would keep the daemon from ever stopping.
REVOKE_COMMIT_S = 5.0
# Longest an alert waits for a pair list that is not cached (normally one round trip):
# past this its kill runs with its pairs unchecked rather than wait out the client's
# retries against a failing exchange-info.
PAIR_FETCH_WAIT_S = 2.0


# How long an assignment waits at most for the results reader to catch up (see
# assignment_wait_s).
ASSIGN_CATCH_UP_S = 10.0


def assignment_wait_s(session_timeout_ms: int) -> float:
    """How long an assignment waits for the results reader: at most
    :data:`ASSIGN_CATCH_UP_S`, and a third of the session timeout. aiokafka sends no
    heartbeat while the assignment callback runs, so a wait near the session timeout
    gets the member dropped from the group, which rebalances, and with a reader that
    stays behind does so again at every assignment. A reader still behind after the
    wait only means a repeat may be swept again (logged)."""
    return min(ASSIGN_CATCH_UP_S, session_timeout_ms / 1000 / 3)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class IntakeConfig:
    """The narrow slice of the settings the intake needs."""

    topics: TopicSettings
    accounts: tuple[str, ...]
    limits: IntakeSettings
    default_deadline_s: float
    revoke_drain_s: float
    # How long one turn of taking up records may last (tests lengthen it to make a run's
    # grouping independent of the machine's speed).
    slice_s: float = SLICE_S

    @classmethod
    def from_sections(
        cls,
        kafka: KafkaSettings,
        intake: IntakeSettings,
        engine: EngineSettings,
        accounts: Iterable[str],
    ) -> IntakeConfig:
        """The intake's slice of the ``kafka``, ``intake`` and ``engine`` sections, for
        these ``accounts``."""
        # A revocation may wait for running sweeps, but must end well inside the
        # rebalance timeout or the group evicts this member.
        drain = min(
            intake.rebalance_drain_s,
            engine.shutdown_grace_s,
            kafka.rebalance_timeout_ms / 2000,
        )
        return cls(
            topics=kafka.topics,
            accounts=tuple(accounts),
            limits=intake,
            default_deadline_s=engine.default_deadline_s,
            revoke_drain_s=drain,
        )


@dataclass(slots=True)
class _Step:
    """What to do for one account of an alert."""

    request: KillRequest
    seen: Seen
    started: Awaitable[SweepResult] | None = None  # NEW kill: the engine's result, begun early
    previous: str | None = None  # DONE: the status of the original handling


@dataclass(slots=True)
class _Plan:
    """What to do with one record: a refusal, or one step per account."""

    label: str
    rejection: Rejection | None = None
    result: str = "processed"
    steps: list[_Step] = field(default_factory=list)
    action: str = "kill"
    # (account, forward record): accounts another daemon owns, handed on to it.
    forwards: list[tuple[str, bytes]] = field(default_factory=list)


# An alert's own fields: those the alerts of a storm differ in. A kill's shape reads
# none of them (its requests take the alert id, and the time the record was read, from
# each alert); every other field, including any added later, makes alerts unlike.
_OWN_FIELDS = frozenset({"alert_id", "created_at", "expires_at", "signature"})
# An alert's shared fields, all but its own: alerts with equal ones are *alike*.
shared_fields: Callable[[Alert], tuple[Any, ...]] = attrgetter(
    *(name for name in Alert.model_fields if name not in _OWN_FIELDS)
)


def _request_maker(request: KillRequest) -> Callable[..., KillRequest]:
    """:class:`KillRequest` with every field of ``request`` bound but the alert id and
    the time its record was read: ``request`` for another alert (cheaper per call than
    ``dataclasses.replace``)."""
    shared = {
        f.name: getattr(request, f.name)
        for f in dataclasses.fields(request)
        if f.name not in ("alert_id", "received_at")
    }
    return functools.partial(KillRequest, **shared)


@dataclass(slots=True)
class _KillShape:
    """What planning makes of an alert's shared fields (all but its own) and of the
    intake's pair lists and assignment: its requests, their pairs checked (or the
    refusal), and which of their accounts are swept here. Made once for the alerts alike
    of a run (:class:`_RunShapes`); only the alert id and times are each record's."""

    alert: Alert  # the alert it was made for
    channel: Channel
    label: str
    shared: tuple[Any, ...]  # the alert's shared_fields: read once, compared per alert
    refusal: str | None = None  # a scope pair missing from an account's pair list
    requests: tuple[KillRequest, ...] = ()  # one per target account
    owned: frozenset[str] = frozenset()  # the accounts swept here (the others forwarded)
    # A kill naming an account another daemon owns: each record of it is routed.
    foreign: bool = False
    accounts: tuple[str, ...] = ()  # of the requests, in their order
    # The requests for another alert: made when one first fits.
    makers: tuple[Callable[..., KillRequest], ...] | None = None

    def fits(self, alert: Alert, channel: Channel) -> bool:
        """Whether ``alert``, read on ``channel``, is planned as this shape's alert: it
        is alike (:data:`shared_fields`)."""
        return channel == self.channel and (
            alert is self.alert or bool(shared_fields(alert) == self.shared)
        )

    def requests_for(self, alert: Alert, received: datetime) -> list[KillRequest]:
        """The requests of ``alert`` (one that fits), read at ``received``."""
        if alert is self.alert:
            return list(self.requests)
        if self.makers is None:
            self.makers = tuple(_request_maker(r) for r in self.requests)
        return [make(alert_id=alert.alert_id, received_at=received) for make in self.makers]


@dataclass(slots=True)
class _RunShapes:
    """The last shape made while a run is taken up: the run's next alert alike reuses
    it. Good for that synchronous stretch only: the pair lists, their errors and the
    assignment a shape was made from change only across an await (a list going stale
    on the clock changes no verdict: stale lists refuse and check like fresh ones)."""

    last: _KillShape | None = None
    fitted: Alert | None = None  # the alert last found to fit ``last``

    def fitting(self, alert: Alert, channel: Channel) -> _KillShape | None:
        """``last`` when ``alert``, read on ``channel``, fits it, else None (asked twice
        per alert, compared once)."""
        last = self.last
        if last is None or not (alert is self.fitted or last.fits(alert, channel)):
            return None
        self.fitted = alert
        return last

    def keep(self, shape: _KillShape) -> None:
        """``shape`` is the last made."""
        self.last = shape
        self.fitted = shape.alert


@dataclass(slots=True)
class _Member:
    """One record of a group (see ``Intake._accept_run``)."""

    record: ConsumerRecord[Any, Any]
    plan: _Plan
    origin: Position
    received: datetime
    epoch: int  # of its partition's offsets when it was read (see OffsetTracker)
    step: _Step | None = None  # its one account's step; None: handled on its own
    status: str | None = None  # the final result published for it

    @property
    def request(self) -> KillRequest:
        assert self.step is not None
        return self.step.request


_Lane = tuple[str, str | None]
"""A lane of waiting records: (topic, the record's key as text)."""
_Read = tuple[TopicPartition, ConsumerRecord[Any, Any], int]
"""A record read: (its partition, the record, the epoch of the partition's offsets it was
read in; see :class:`OffsetTracker`)."""


def _internal_error(exc: Exception) -> Rejection:
    # Dead-lettered with the reason (visible, counted) rather than left pending forever.
    return Rejection(RejectKind.INVALID, f"internal error while reading: {type(exc).__name__}")


def _refusal_fields(
    output: str, error: BaseException, origin: Position | None, record: ResultRecord | None
) -> dict[str, Any]:
    """A refused output's log fields: what and where, the error's name (its message may
    quote the text that was refused)."""
    fields: dict[str, Any] = {"output": output, "error": type(error).__name__}
    if origin is not None:
        fields.update(topic=origin.topic, partition=origin.partition, offset=origin.offset)
    if record is not None:
        fields.update(alert_id=record.alert_id, account=record.account, status=record.status)
    return fields


class _Interrupted(Exception):
    """The engine stopped a request because the daemon is shutting down."""


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    """A record's (or group's) handling: a failure, a bug in this module, is logged here
    so that the run's task group does not cancel the other records' work for it."""
    try:
        await work
    except Exception:
        log.exception("alert handling failed")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, intake: Intake) -> None:
        self._intake = intake

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._intake._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._intake._on_assigned(assigned)


class Intake:
    """Consumes alerts and drives the engine. Use :meth:`start`, :meth:`run`, :meth:`shutdown`."""

    def __init__(
        self,
        config: IntakeConfig,
        kafka: KafkaSettings,
        engine: EngineAPI,
        publisher: Publisher,
        dedup: DedupWindow,
        *,
        verifier: TriggerVerifier | None = None,
        observer: AlertObserver | None = None,
        results_index: ResultsIndex | None = None,
        pairs: Mapping[str, PairLister] | None = None,
        on_consuming: Callable[[bool], None] | None = None,
        on_busy: Callable[[bool], None] | None = None,
        on_assignment: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], datetime] = utc_now,
        deferrable: TurnBudget | None = None,
    ) -> None:
        self._config = config
        self._kafka = kafka
        # Taking up records and publishing a group's results share each turn's budget
        # with the results reader; the polls and the kills' requests run outside it.
        self._deferrable = deferrable or TurnBudget(DEFERRABLE_PER_TURN_S)
        self._engine = engine
        self._publisher = publisher
        self._dedup = dedup
        self._verifier = verifier
        self._observer: AlertObserver = observer or NullAlertObserver()
        self._results_index = results_index
        # Per account: scope pairs are checked against these before any request.
        self._pairs = pairs
        self._pair_errors: dict[str, str] = {}  # why an account has no pair list
        self._pair_fetches: dict[str, asyncio.Task[None]] = {}  # running, per account (in run)
        self._on_consuming = on_consuming or (lambda consuming: None)
        self._on_busy = on_busy or (lambda busy: None)
        self._on_assignment = on_assignment
        self._clock = clock
        self._lag_reported_at = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        # The run's task group (see run): every task of the intake is one of its tasks.
        self._group: asyncio.TaskGroup | None = None
        self._over = asyncio.Event()  # the run may end: stopped and idle, or cut short
        self._run_ended = asyncio.Event()  # no run is going on
        self._run_ended.set()
        # The tasks handling records (one per record or group of records, see
        # _accept_run) by the partition they came from: what a revocation waits for
        # and cancels. Their lifetime is the run's.
        self._work: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._records_running = 0  # records held by those tasks
        # Records read and not taken up yet; lane = (topic, record key as text).
        self._backlog: FairLanes[_Lane, _Read]
        self._backlog = FairLanes(source=lambda item: item[0])
        self._queued: Counter[str] = Counter()
        # Lanes held until a record of theirs taken up is planned in its task (see
        # _hold_lane): how many such records each has.
        self._unplanned: Counter[_Lane] = Counter()
        # (alert id, account) being swept -> where the record that asked was read.
        self._sweeping: dict[tuple[str, str], Position] = {}
        # Of those, the ones a repeat waits for (see _waiter): resolved with the final status.
        self._in_flight: dict[tuple[str, str], asyncio.Future[str | None]] = {}
        self._max_bytes = config.limits.max_message_bytes
        self._max_in_flight = config.limits.max_queued_per_account * max(1, len(config.accounts))
        self._paused = False  # over the limit: the partitions with records waiting paused
        self._paused_partitions: set[TopicPartition] = set()
        self._stopping = False
        self._commit_wanted = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._assigned: set[TopicPartition] = set()
        self.committed_total = 0  # commits done (tests and diagnostics)
        self._idle = asyncio.Event()  # see idle
        self._idle.set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("Intake not started")
        return self._consumer

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def in_flight(self) -> int:
        """Records being handled (taken up, not finished)."""
        return self._records_running

    @property
    def waiting(self) -> int:
        """Records read and not taken up yet (see :class:`FairLanes`)."""
        return len(self._backlog)

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    @property
    def idle(self) -> asyncio.Event:
        """Set while no record waits in a lane or is being handled: work that can wait
        for the intake (following the results topic) waits for this. Each change is
        also told to ``on_busy`` (the daemon's pacing of the cycle collector)."""
        return self._idle

    async def partition_count(self, topic: str, timeout_s: float = 5.0) -> int | None:
        """Partitions of ``topic`` (None when unknown after ``timeout_s``)."""
        consumer = self._consumer
        if consumer is None:
            return None
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return len(partitions)
        # A member that did not compute the assignment may have no metadata for the
        # topic yet when its assignment arrives: fetch it.
        try:
            return len(await all_partitions(consumer, topic, timeout_s))
        except LookupError:
            return None

    async def routing_problem(self) -> str | None:
        """Why manual triggers may miss the account's owner; None when they cannot.

        A trigger is keyed by account like an alert; it reaches the daemon that owns
        the account (the one assigned the account's alerts partition) only when both
        topics have the same partition count, so the range assignor gives the same
        partition of each to one member."""
        topics = self._config.topics
        alerts = await self.partition_count(topics.alerts)
        manual = await self.partition_count(topics.manual)
        if alerts is None or manual is None or alerts == manual:
            return None
        return (
            f"{topics.manual} has {manual} partition(s) and {topics.alerts} {alerts}: a manual "
            "trigger may be swept by a daemon that does not own the account while its owner "
            f"sweeps it too; give {topics.manual} {alerts} partition(s)"
        )

    async def start(self) -> None:
        """Join the group (subscribed to the alerts and manual topics)."""
        topics = self._config.topics
        consumer = make_group_consumer(self._kafka, [])
        consumer.subscribe([topics.alerts, topics.manual], listener=_Listener(self))
        # Set before start(): the first assignment may arrive while start() runs, and
        # the assignment hook reads the consumer's metadata.
        self._consumer = consumer
        await consumer.start()
        routing = await self.routing_problem()
        if routing is not None:
            log.warning("manual triggers not routed to the owner", extra={"problem": routing})

    async def run(self) -> None:
        """Consume until :meth:`stop` is called, then wait for the records taken up to be
        handled; :meth:`shutdown` (once its grace is over), :meth:`abandon` and
        :meth:`close` end the run sooner.

        The run is the lifetime of the intake's tasks (the poll, each record's or group's
        handling, the committer, pair-list fetches): they are tasks of its task group, and those
        still running when it ends are cancelled with it, so none outlives it. A bad
        message never ends the run."""
        if not self._run_ended.is_set():
            raise RuntimeError("the intake is running already")
        self._run_ended.clear()
        self._over.clear()
        self._check_over()
        try:
            async with task_scope() as group:
                self._group = group
                group.create_task(self._commit_loop(), name="intake-committer")
                # Polling in a task of its own: ending the run cancels a poll under way
                # rather than wait for it (the records it brings are not taken up).
                group.create_task(self._consume(), name="intake-poll")
                await self._over.wait()
        finally:
            self._group = None
            self._run_ended.set()

    async def _consume(self) -> None:
        """Read records and take them up until :meth:`stop` is called (a task of the run)."""
        consumer = self.consumer
        while not self._stopping:
            try:
                batch = await consumer.getmany(
                    timeout_ms=self._poll_ms(), max_records=self._poll_max_records()
                )
            except KafkaError as exc:
                log.warning("kafka poll failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(0.5)  # back off before polling again
                continue
            if self._stopping:
                break  # not handed out: not read, so replayed by whoever resumes
            for tp, records in batch.items():
                self._enqueue(tp, records)
            if self._take_up() or batch:
                # Records are still waiting: let the rest of the loop run before the
                # next slice (a poll that finds records buffered does not yield). Records
                # were taken up: the sweeps they started send their first request before
                # this loop's bookkeeping and next poll.
                await asyncio.sleep(0)
            self._update_backpressure()
            try:
                self._report_lag()
            except Exception:  # metrics must never stop the consumer
                log.exception("consumer lag not reported")

    def stop(self) -> None:
        """Stop taking new alerts (running work continues; see :meth:`shutdown`): the run
        ends once it is over."""
        self._stopping = True
        self._on_consuming(False)
        self._check_over()

    def _check_over(self) -> None:
        """Stopped with no record being handled: the run may end."""
        if self._stopping and not self._work:
            self._over.set()

    def _report_lag(self) -> None:
        """Records behind per partition (high watermark - commit position), once a second."""
        now = time.monotonic()
        if now - self._lag_reported_at < _LAG_REPORT_S or self._consumer is None:
            return
        self._lag_reported_at = now
        for tp in self._assigned:
            highwater = self._consumer.highwater(tp)
            position = self._tracker.position(tp)
            if highwater is not None and position is not None:
                self._observer.consumer_lag(tp.topic, tp.partition, highwater - position)

    async def abandon(self) -> None:
        """Stop now (a second stop signal): end the run, cancelling every record still
        being handled, and wait for it to end.

        Nothing more is published for them and their offsets stay uncommitted, so the
        next owner of the partitions replays them. Call before the engine is closed: a
        sweep cut short must not reach a record task that would publish it as final."""
        await self._end_run()

    async def shutdown(self, grace_s: float, commit_s: float | None = None) -> None:
        """Stop taking new alerts, let running work finish within ``grace_s`` (the run
        ends), then cancel what still runs (as :meth:`abandon`: uncommitted, replayed by
        the next owner), commit what completed (given up after ``commit_s``: replayed by
        the next owner) and leave the group (:meth:`close`)."""
        self.stop()
        try:
            async with asyncio.timeout(grace_s):
                await self._run_ended.wait()
        except TimeoutError:
            log.warning("work interrupted by shutdown", extra={"records": self._records_running})
        await self._end_run()
        await self._commit(timeout_s=commit_s)
        await self.close()

    async def _end_run(self) -> None:
        """Stop, end the run now (its tasks still running are cancelled) and wait for it."""
        self.stop()
        self._over.set()
        await self._run_ended.wait()

    async def close(self) -> None:
        """Leave the group without draining (start-up failed or already shut down); a run
        still going on is ended first, as by :meth:`abandon`."""
        if self._assigned:
            # aiokafka does not call the revocation listener when the consumer stops:
            # give the partitions up here, before leaving the group (after which the
            # next owner may start guarding them).
            self._assigned.clear()
            await self._assignment_changed()
        await self._end_run()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)

    # ------------------------------------------------------------------ records

    def _poll_ms(self) -> int:
        if not len(self._backlog):
            return _POLL_MS
        return 0 if self._backlog.ready(self._held) else _HELD_POLL_MS

    def _poll_max_records(self) -> int:
        """Records one poll may return: everything fetched, up to the room left under
        the global limit (at least ``kafka.max_poll_records``, the overshoot bound).

        Taking all the client has fetched matters for latency, not only throughput:
        aiokafka sends no fetch to a broker while fetched records of any of its
        partitions wait to be consumed (up to its prefetch backoff), so records
        left in the client's buffer would hold back a manual trigger or a quiet
        account's alert on every other partition of that broker."""
        room = self._max_in_flight - self._records_running - len(self._backlog)
        return max(self._kafka.max_poll_records, room)

    def _enqueue(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        """A partition's records read: each into its lane (its offset now counts as
        read, not done). A storm's poll brings thousands in one step of the event
        loop: each lane's records are added at once."""
        runs: dict[_Lane, list[_Read]] = {}
        lanes: dict[bytes | None, _Lane] = {}
        part = self._tracker.partition(tp)
        if records and part.highest_read is not None and records[0].offset <= part.highest_read:
            self._position_went_back(tp, records[0].offset, part.highest_read)
            part = self._tracker.partition(tp)
        read = part.read
        epoch = self._tracker.epoch(tp)
        for record in records:
            if not read(record.offset):
                continue
            key = record.key
            lane = lanes.get(key)
            if lane is None:
                lane = lanes[key] = self._lane(tp, record)
            runs.setdefault(lane, []).append((tp, record, epoch))
        manual = tp.topic == self._config.topics.manual
        for lane, items in runs.items():
            self._backlog.extend(lane, items, urgent=manual)

    def _position_went_back(self, tp: TopicPartition, offset: int, highest: int) -> None:
        """The Kafka client handed out an offset at or below one already read, which it
        does only when its position was reset: the partition's log was made again (a
        broker that lost its storage, the topic made again by someone else than this
        daemon; see :meth:`broker_back`). Its read offsets are forgotten (a new epoch):
        its records are read as new, not skipped as read. Were they the same log's
        records after all, the dedup window answers them ``duplicate``."""
        self._tracker.drop([tp])
        log.warning(
            "kafka handed out offsets already read: the partition's log was made again",
            extra={"partition": f"{tp.topic}:{tp.partition}", "offset": offset, "read": highest},
        )

    @staticmethod
    def _lane(tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> _Lane:
        key = record.key
        return (tp.topic, key.decode("utf-8", "replace") if isinstance(key, bytes) else None)

    def _held(self, lane: _Lane) -> bool:
        """A lane waits while its account has as much work in the engine as it may, or
        while a record of it taken up is not planned yet (see :meth:`_hold_lane`)."""
        if lane in self._unplanned:
            return True
        account = lane[1]
        return account is not None and (
            self._queued.get(account, 0) >= self._config.limits.max_queued_per_account
        )

    def _hold_lane(
        self, tp: TopicPartition, record: ConsumerRecord[Any, Any]
    ) -> Callable[[], None]:
        """Hold the record's lane until the returned function is called (once it is
        planned and its sweep started, or its task ended). A record planned in its task
        (parsed in a thread, or after a pair-list fetch) would otherwise be overtaken by
        the lane's later records: a release reaching the engine before the latched kill
        it follows would leave the account halted."""
        lane = self._lane(tp, record)
        self._unplanned[lane] += 1
        pending = [lane]

        def planned() -> None:
            if pending:
                pending.clear()
                self._unplanned[lane] -= 1
                if self._unplanned[lane] <= 0:
                    del self._unplanned[lane]

        return planned

    def _take_up(self) -> bool:
        """Take up waiting records, lane by lane, for at most ``slice_s`` (:data:`SLICE_S`)
        and no longer than the turn's budget has left, but at least :data:`_MIN_SLICE_S`
        (the shortest lane, a quiet account's, goes first).

        True when records not held are still waiting."""
        room = max(_MIN_SLICE_S, min(self._config.slice_s, self._deferrable.remaining()))
        deadline = time.monotonic() + room
        while not self._stopping:
            taken = self._backlog.pop_run(self._held, self._run_room)
            if taken is None:
                return False
            lane, items = taken
            if len(items) == 1:
                self._accept(*items[0])
            else:
                left = self._accept_run(items, deadline)
                self._backlog.push_back(lane, left, urgent=lane[0] == self._config.topics.manual)
            if time.monotonic() >= deadline:
                return self._backlog.ready(self._held)
        return False

    def _run_room(self, lane: _Lane) -> int:
        """Records a lane may hand over in one run: :data:`_RUN_MAX`, and no more than
        its account may still have in the engine."""
        account = lane[1]
        if account is None:
            return _RUN_MAX
        limit = self._config.limits.max_queued_per_account
        return max(1, min(_RUN_MAX, limit - self._queued.get(account, 0)))

    def _accept_run(self, items: list[_Read], deadline: float) -> list[_Read]:
        """Take up a run of one lane's records together: each is parsed, checked and
        planned as in :meth:`_accept`, and the plain kills of one account (one
        partition, one dry-run flag, no latch), with the repeats among them, form a
        group: one join to the account's sweep (``EngineAPI.start_group``), one task,
        their final results published together. The others are handled one by one
        as in :meth:`_accept`; a group is started before such a record, so records
        reach the engine in their order. Stops at ``deadline`` (the slice's end, see
        :meth:`_take_up`), after one record at least; returns the records not taken up.

        Alerts alike (all fields but their id, times and signature) share one plan's
        making (:class:`_KillShape`): requests, pair check, routing."""
        groups: dict[tuple[TopicPartition, str, bool], list[_Member]] = {}
        shapes = _RunShapes()
        for n, (tp, record, epoch) in enumerate(items):
            if n and time.monotonic() >= deadline:
                self._start_groups(groups)
                return items[n:]
            member = self._member(tp, record, epoch, shapes)
            if member is None:
                self._start_groups(groups)
                self._accept(tp, record, epoch)
                if self._lane(tp, record) in self._unplanned:
                    return items[n + 1 :]  # the lane waits until that record is planned
            elif member.step is None:
                self._start_groups(groups)
                self._start_sweeps(member.plan, member.origin)
                work = self._execute(record, member.plan, member.origin, member.received, epoch)
                self._spawn(tp, work)
            else:
                request = member.step.request
                groups.setdefault((tp, request.account, request.dry_run), []).append(member)
        self._start_groups(groups)
        return []

    def _channel(self, tp: TopicPartition) -> Channel:
        return "manual" if tp.topic == self._config.topics.manual else "alerts"

    def _member(
        self, tp: TopicPartition, record: ConsumerRecord[Any, Any], epoch: int, shapes: _RunShapes
    ) -> _Member | None:
        """A record of a run, planned (its ``step`` set when it can join a group);
        None when it needs :meth:`_accept` (large, or a pair list to fetch)."""
        value: bytes | None = record.value
        if value is not None and len(value) > _THREAD_PARSE_BYTES:
            return None
        channel = self._channel(tp)
        received = self._clock()
        origin = Position(tp.topic, tp.partition, record.offset)
        try:
            parsed = self._parse(value, channel, received)
            # An alert fitting the run's last shape (not a refusal) needs no pair list
            # fetched: the shape's alert needed none, with the same accounts and symbols,
            # and the lists change only across an await (a fresh list going stale on the
            # clock still has every pair it had).
            shape = shapes.fitting(parsed, channel) if isinstance(parsed, Alert) else None
            if (shape is None or shape.refusal is not None) and self._pairs_to_fetch(parsed):
                return None
        except Exception:  # _accept reads it again and reports it
            return None
        plan = self._plan_safely(record, parsed, channel, origin, received, shapes=shapes)
        member = _Member(record, plan, origin, received, epoch)
        plain = plan.rejection is None and not plan.forwards and plan.action == "kill"
        if plain and len(plan.steps) == 1:
            request = plan.steps[0].request
            if not request.latch or request.dry_run:  # a latch publishes a halt first
                member.step = plan.steps[0]
        return member

    def _start_groups(self, groups: dict[tuple[TopicPartition, str, bool], list[_Member]]) -> None:
        """Join each group's new kills to their account's sweep and run the group."""
        for (tp, _, _), members in groups.items():
            new = [m for m in members if m.step is not None and m.step.seen is Seen.NEW]
            started: Awaitable[list[SweepResult | BaseException]] | None = None
            if new:
                alerts = [(m.request, self._publisher.progress_sink(m.origin)) for m in new]
                try:
                    started = self._engine.start_group(alerts)
                except Exception:  # each record then goes its own way, as in _accept
                    log.exception("engine group start failed", extra={"records": len(members)})
                    for m in members:
                        self._start_sweeps(m.plan, m.origin)
                        work = self._execute(m.record, m.plan, m.origin, m.received, m.epoch)
                        self._spawn(tp, work)
                    continue
            self._spawn(tp, self._execute_group(members, started), len(members))
        groups.clear()

    def _accept(self, tp: TopicPartition, record: ConsumerRecord[Any, Any], epoch: int) -> None:
        """Hand out one record (read in ``epoch`` of its partition's offsets): plan it now
        (so backpressure counts it), run it in a task.

        Planned later, in the task, only when it is large (parsed in a thread) or when
        its pairs need a pair list that is not cached yet (one fetch awaited first)."""
        channel: Channel = "manual" if tp.topic == self._config.topics.manual else "alerts"
        received = self._clock()
        origin = Position(tp.topic, tp.partition, record.offset)
        value: bytes | None = record.value
        planned: Callable[[], None] | None = None
        if value is not None and _THREAD_PARSE_BYTES < len(value) <= self._max_bytes:
            planned = self._hold_lane(tp, record)
            work = self._handle_large(record, channel, origin, received, planned, epoch=epoch)
        else:
            fetch: list[str] = []
            try:
                parsed = self._parse(value, channel, received)
                fetch = self._pairs_to_fetch(parsed)
            except Exception as exc:  # a bug here must not stop the consumer or stall commits
                log.exception("cannot read a record", extra={"offset": record.offset})
                parsed = _internal_error(exc)
            if fetch:
                planned = self._hold_lane(tp, record)
                work = self._handle_parsed(
                    record,
                    parsed,
                    channel,
                    origin,
                    received,
                    epoch=epoch,
                    fetch=fetch,
                    planned=planned,
                )
            else:
                plan = self._plan_safely(record, parsed, channel, origin, received)
                self._start_sweeps(plan, origin)
                work = self._execute(record, plan, origin, received, epoch)
        task = self._spawn(tp, work)
        if planned is not None:
            task.add_done_callback(lambda _: planned())  # cancelled or failed before planned

    def _spawn(
        self, tp: TopicPartition, work: Coroutine[Any, Any, None], records: int = 1
    ) -> asyncio.Task[None]:
        """Run the handling of ``records`` records of ``tp`` in a task of the run's group,
        indexed under ``tp`` for a revocation (see :meth:`_on_revoked`)."""
        group = self._group
        if group is None:
            work.close()
            raise RuntimeError("records are taken up only while the intake runs")
        name = f"intake-{tp.topic}-{tp.partition}"
        task = group.create_task(_logged(work), name=name)
        self._work.setdefault(tp, set()).add(task)
        self._records_running += records
        task.add_done_callback(functools.partial(self._task_done, tp, records, work))
        return task

    def _task_done(
        self,
        tp: TopicPartition,
        records: int,
        work: Coroutine[Any, Any, None],
        task: asyncio.Task[None],
    ) -> None:
        # A task cancelled before its first step never started ``work``: closed here, as
        # a task of ``work`` itself would have closed it (a no-op once it has run).
        work.close()
        tasks = self._work.get(tp)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._work[tp]
        self._records_running -= records
        self._check_over()
        self._update_backpressure()

    async def _handle_large(
        self,
        record: ConsumerRecord[Any, Any],
        channel: Channel,
        origin: Position,
        received: datetime,
        planned: Callable[[], None],
        *,
        epoch: int,
    ) -> None:
        # Parsing is synchronous; a large message is parsed in a worker thread so a
        # burst of them cannot stall the loop (and with it Kafka heartbeats).
        fetch: list[str] = []
        try:
            parsed = await asyncio.to_thread(self._parse, record.value, channel, received)
            fetch = self._pairs_to_fetch(parsed)
        except Exception as exc:
            log.exception("cannot read a record", extra={"offset": record.offset})
            parsed = _internal_error(exc)
        await self._handle_parsed(
            record, parsed, channel, origin, received, epoch=epoch, fetch=fetch, planned=planned
        )

    async def _handle_parsed(
        self,
        record: ConsumerRecord[Any, Any],
        parsed: Alert | Rejection,
        channel: Channel,
        origin: Position,
        received: datetime,
        *,
        epoch: int,
        fetch: Sequence[str],
        planned: Callable[[], None],
    ) -> None:
        """Fetch the pair lists the alert needs (if any), then plan and run it; its lane
        is let go (``planned``) once it has reached the engine."""
        if fetch:
            await self._fetch_pairs(fetch)
        plan = self._plan_safely(record, parsed, channel, origin, received)
        self._start_sweeps(plan, origin)
        planned()
        await self._execute(record, plan, origin, received, epoch)

    def _plan_safely(
        self,
        record: ConsumerRecord[Any, Any],
        parsed: Alert | Rejection,
        channel: Channel,
        origin: Position,
        received: datetime,
        *,
        shapes: _RunShapes | None = None,
    ) -> _Plan:
        try:
            return self._plan(parsed, channel, origin, received, record.value, shapes=shapes)
        except Exception as exc:  # a bug here must not stop the consumer or stall commits
            log.exception("cannot read a record", extra={"offset": record.offset})
            return _Plan(label=channel, rejection=_internal_error(exc))

    # ------------------------------------------------------------------ pairs

    def _pairs_to_fetch(self, parsed: Alert | Rejection) -> list[str]:
        """Accounts whose pair list must be fetched before this alert's pairs can be
        checked: none cached yet, or a scope pair missing from a list that is not
        fresh (it may be new on the exchange). Empty on the hot path (warm lists)."""
        if self._pairs is None or isinstance(parsed, Rejection) or parsed.action != "kill":
            return []
        symbols = parsed.scope.symbols
        if symbols is None:
            return []
        fetch: list[str] = []
        for account in parsed.target_accounts(self._config.accounts):
            lister = self._pairs.get(account)
            if lister is None:
                continue
            cached = lister.cached_pair_list()
            if cached is None or (
                cached.source != "exchange" and not all(s in cached for s in symbols)
            ):
                fetch.append(account)
        return fetch

    async def _fetch_pairs(self, accounts: Sequence[str]) -> None:
        """One pair-list fetch per account (failures are remembered, not raised),
        awaited for at most :data:`PAIR_FETCH_WAIT_S`: a kill does not wait out the
        client's whole retry budget for a list; it runs unchecked instead (never
        ``flat``), and a fetch still running finishes for the next alert."""
        tasks = {a: self._pair_fetches.get(a) or self._start_pair_fetch(a) for a in accounts}
        _, late = await asyncio.wait(tasks.values(), timeout=PAIR_FETCH_WAIT_S)
        for account, task in tasks.items():
            if task in late:
                self._pair_errors.setdefault(
                    account, f"exchange-info gave no answer within {PAIR_FETCH_WAIT_S:g}s"
                )

    def _start_pair_fetch(self, account: str) -> asyncio.Task[None]:
        """A fetch of ``account``'s pair list in a task of the run's group: it may outlive
        the record that asked (the next alert finds it running), not the run."""
        assert self._pairs is not None
        lister = self._pairs[account]
        group = self._group
        if group is None:
            raise RuntimeError("pair lists are fetched only while the intake runs")

        async def fetch() -> None:
            try:
                await lister.pair_list()
            except Exception as exc:  # no source of pairs: the kill runs unchecked
                self._pair_errors[account] = str(exc)
            else:
                self._pair_errors.pop(account, None)

        def ended(task: asyncio.Task[None]) -> None:
            if self._pair_fetches.get(account) is task:
                del self._pair_fetches[account]

        task = group.create_task(fetch(), name=f"intake-pairs-{account}")
        self._pair_fetches[account] = task
        task.add_done_callback(ended)
        return task

    def _check_pairs(self, alert: Alert, requests: list[KillRequest]) -> PairVerdict:
        """The scope's pairs against each target account's cached pair list."""
        symbols = alert.scope.symbols
        if self._pairs is None or alert.action != "kill" or symbols is None:
            return PairVerdict()
        lists = {
            r.account: lister.cached_pair_list()
            for r in requests
            if (lister := self._pairs.get(r.account)) is not None
        }
        return check_pairs(symbols, lists, self._pair_errors)

    def _start_sweeps(self, plan: _Plan, origin: Position) -> None:
        """Start the engine on a plan's new kills right away, before the record's task
        runs: otherwise the first exchange request waits behind whatever the event loop
        has queued meanwhile (the Kafka client's next fetch, among others)."""
        if plan.rejection is not None or plan.action != "kill":
            return
        for step in plan.steps:
            if step.seen is not Seen.NEW:
                continue
            try:
                step.started = self._engine.start(
                    step.request, self._publisher.progress_sink(origin)
                )
            except Exception:  # the record's task calls the engine again and reports it
                log.exception("engine start failed", extra={"alert_id": step.request.alert_id})

    def _parse(
        self, value: bytes | None, channel: Channel, received: datetime
    ) -> Alert | Rejection:
        if is_forward(value):
            assert value is not None
            return self._parse_forward(value, received)
        limits = self._config.limits
        return parse_alert(
            value,
            channel=channel,
            accounts=self._config.accounts,
            max_message_bytes=limits.max_message_bytes,
            max_order_ids=limits.max_order_ids,
            now=received,
            verifier=self._verifier,
        )

    def _parse_forward(self, value: bytes, received: datetime) -> Alert | Rejection:
        """A forward: the original alert, checked as it was written, for its one account."""
        forward = decode_forward(value)
        if isinstance(forward, str):
            return Rejection(RejectKind.INVALID, forward)
        if is_forward(forward.value):
            return Rejection(RejectKind.INVALID, "forward: a forward inside a forward")
        parsed = self._parse(forward.value, forward.channel, received)
        if isinstance(parsed, Rejection):
            return parsed
        if forward.account not in parsed.target_accounts(self._config.accounts):
            reason = "forward: the alert does not name that account"
            return Rejection(RejectKind.INVALID, reason, parsed.alert_id)
        scope = parsed.scope.model_copy(update={"accounts": [forward.account]})
        return parsed.model_copy(update={"scope": scope})

    def _owner_here(self, account: str) -> bool:
        """Whether this daemon owns ``account`` (its alerts partition is assigned here).
        Unknown (no assignment or no metadata yet): yes, it is swept here."""
        topic = self._config.topics.alerts
        assigned = [tp.partition for tp in self._assigned if tp.topic == topic]
        partitions = self._consumer.partitions_for_topic(topic) if self._consumer else None
        if not assigned or not partitions:
            return True
        return owns(account, len(partitions), assigned)

    def _route(
        self,
        requests: list[KillRequest],
        owned: Collection[str],
        channel: Channel,
        value: bytes | None,
    ) -> tuple[list[KillRequest], list[tuple[str, bytes]]]:
        """The requests swept here, and a forward for each account another daemon owns
        (those not in ``owned``). Swept here too: a record whose forward would be over
        :data:`MAX_FORWARD_BYTES` (the original is escaped in it, up to twice its size),
        which the broker might refuse for good."""
        if value is None or len(value) > MAX_FORWARD_BYTES:
            return requests, []
        here: list[KillRequest] = []
        away: list[tuple[str, bytes]] = []
        for request in requests:
            if request.account in owned:
                here.append(request)
                continue
            try:
                forward = encode_forward(request.account, channel, value)
            except UnicodeDecodeError:  # JSON in another encoding: swept here
                here.append(request)
                continue
            if len(forward) > MAX_FORWARD_BYTES:
                here.append(request)
            else:
                away.append((request.account, forward))
        return here, away

    def _plan(
        self,
        parsed: Alert | Rejection,
        channel: Channel,
        origin: Position,
        received: datetime,
        value: bytes | None = None,
        *,
        shapes: _RunShapes | None = None,
    ) -> _Plan:
        """Decide per account (synchronously, so concurrent repeats see each other).

        Accounts another daemon owns are forwarded to it (``value``: the record's,
        none for a forward, which is swept here whoever owns the account by now).
        ``shapes``: the run's, when the record is one of a run (see :class:`_RunShapes`)."""
        if isinstance(parsed, Rejection):
            return _Plan(label=channel, rejection=parsed)
        alert = parsed
        shape = self._shape_of(alert, channel, received, shapes)
        label = shape.label
        if shape.refusal is not None:
            # Before any request and before the dedup window: nothing was done for it.
            refusal = Rejection(RejectKind.INVALID, shape.refusal, alert.alert_id)
            return _Plan(label=label, rejection=refusal)
        requests = shape.requests_for(alert, received)
        forwards: list[tuple[str, bytes]] = []
        accounts: Sequence[str] = shape.accounts
        if shape.foreign and not is_forward(value):
            requests, forwards = self._route(requests, shape.owned, channel, value)
            accounts = [r.account for r in requests]
        decision = self._dedup.decide(alert.alert_id, accounts, origin)
        signing = self._verifier is not None and self._verifier.required
        if decision.reused and channel == "manual" and signing:
            refusal = Rejection(
                RejectKind.UNAUTHORIZED,
                "alert_id already used by an earlier trigger (replay refused)",
                alert.alert_id,
            )
            return _Plan(label=label, rejection=refusal)
        if alert.operator is not None:
            # Who pulled the trigger, on the record (results carry it too).
            log.info(
                "trigger accepted",
                extra={
                    "alert_id": alert.alert_id,
                    "operator": alert.operator.name,
                    "action": alert.action,
                    "accounts": [r.account for r in requests],
                    "signed": signing,
                },
            )
        steps: list[_Step] = []
        for request, verdict in zip(requests, decision.accounts, strict=True):
            if verdict.seen is Seen.NEW:
                self._dedup.start(alert.alert_id, request.account, origin)
                self._sweeping[(alert.alert_id, request.account)] = origin
                self._queued[request.account] += 1
                steps.append(_Step(self._with_carried(request), Seen.NEW))
            else:
                steps.append(_Step(request, verdict.seen, previous=verdict.previous_status))
        if decision.all_repeats and requests:
            result = "duplicate"
        elif alert.dry_run and alert.action == "kill":
            result = "dry_run"
        else:
            result = "processed"
        return _Plan(
            label=label, result=result, steps=steps, action=alert.action, forwards=forwards
        )

    def _shape_of(
        self, alert: Alert, channel: Channel, received: datetime, shapes: _RunShapes | None
    ) -> _KillShape:
        """The run's last shape when ``alert`` fits it, else a new one (kept as the last)."""
        if shapes is None:
            return self._shape(alert, channel, received)
        shape = shapes.fitting(alert, channel)
        if shape is None:
            shape = self._shape(alert, channel, received)
            shapes.keep(shape)
        return shape

    def _shape(self, alert: Alert, channel: Channel, received: datetime) -> _KillShape:
        """What :meth:`_plan` makes of ``alert`` that alerts alike share: its label,
        its requests (read at ``received``) with their pairs checked, or the pair
        refusal, and the accounts this daemon owns among a kill's."""
        label = (
            DEADMAN_SOURCE if channel == "alerts" and alert.source == DEADMAN_SOURCE else channel
        )
        shared = shared_fields(alert)
        requests = kill_requests(
            alert,
            accounts=self._config.accounts,
            received_at=received,
            default_deadline_s=self._config.default_deadline_s,
        )
        pairs = self._check_pairs(alert, requests)
        if pairs.refusal is not None:
            return _KillShape(alert, channel, label, shared, refusal=pairs.refusal)
        if pairs.unchecked:
            unchecked = pairs.unchecked
            requests = [
                dataclasses.replace(r, unchecked_pairs=unchecked[r.account])
                if r.account in unchecked
                else r
                for r in requests
            ]
        accounts = tuple(r.account for r in requests)
        if alert.action != "kill":
            return _KillShape(
                alert, channel, label, shared, requests=tuple(requests), accounts=accounts
            )
        owned = frozenset(a for a in accounts if self._owner_here(a))
        return _KillShape(
            alert,
            channel,
            label,
            shared,
            requests=tuple(requests),
            owned=owned,
            foreign=not owned.issuperset(accounts),
            accounts=accounts,
        )

    def _with_carried(self, request: KillRequest) -> KillRequest:
        """A replay: what an earlier process published for it goes into its results."""
        index = self._results_index
        carried = index.carried(request.alert_id, request.account) if index is not None else None
        return request if carried is None else dataclasses.replace(request, carried=carried)

    async def _execute(
        self,
        record: ConsumerRecord[Any, Any],
        plan: _Plan,
        origin: Position,
        received: datetime,
        epoch: int,
    ) -> None:
        """Run a plan; the record is done once every output for it is acknowledged."""
        if plan.rejection is not None:
            await self._dead_letter(record, origin, plan.rejection, received)
            self._observer.dlq(plan.rejection.dlq_reason)
            result = plan.rejection.kind.value
        else:
            try:
                for account, forward in plan.forwards:
                    await self._forward(account, forward, origin)
            except BaseException:
                self._steps_dropped(plan.steps)
                raise
            try:
                if len(plan.steps) == 1:  # the common case: no extra task hop before the engine
                    await self._run_step(plan.steps[0], plan.action, origin)
                else:
                    await asyncio.gather(
                        *(self._run_step(step, plan.action, origin) for step in plan.steps)
                    )
            except _Interrupted:
                return  # shutdown: not done, replayed after the restart
            result = plan.result
        self._observer.alert_read(plan.label, result)
        self._done(origin, epoch)
        self._commit_wanted.set()

    def _steps_dropped(self, steps: Sequence[_Step]) -> None:
        """A record's steps will not run (cancelled or failed while forwarding): its new
        kills end without a result (a replay redoes them), so no repeat waits for them
        forever and a hand-over no longer counts them as swept here. A sweep begun early
        runs on unobserved (see ``EngineAPI.start``)."""
        for step in steps:
            if step.seen is Seen.NEW:
                self._request_ended(step.request, None)
        self._update_backpressure()

    async def _forward(self, account: str, forward: bytes, origin: Position) -> None:
        """Hand one account's kill on to its owner (acknowledged before the record is done)."""
        await self._retry(lambda: self._publisher.alert(account, forward), "forward", origin)
        log.info(
            "kill forwarded to the account's owner",
            extra={"account": account, "partition": origin.partition, "offset": origin.offset},
        )

    async def _run_step(self, step: _Step, action: str, origin: Position) -> None:
        if step.seen is Seen.NEW:
            await self._run_request(step.request, action, origin, step.started)
        elif step.seen is Seen.IN_FLIGHT:
            await self._repeat_after_in_flight(step.request, origin)
        else:
            await self._publish_duplicate(step.request, step.previous, origin)

    async def _run_request(
        self,
        request: KillRequest,
        action: str,
        origin: Position,
        started: Awaitable[SweepResult] | None = None,
    ) -> None:
        """Engine, then the final result; the dedup window learns it once published."""
        status: str | None = None
        try:
            result = self._final(request, await self._call_engine(request, action, origin, started))
            await self._publish_final(result, origin)
            status = result.status.value
            self._dedup.finish(request.alert_id, request.account, status, origin)
        finally:
            self._request_ended(request, status)
            self._update_backpressure()

    def _final(self, request: KillRequest, result: SweepResult) -> SweepResult:
        """The engine's result as published (final); :class:`_Interrupted` when the
        engine could not work because the daemon is shutting down."""
        carried = request.carried.counts.resolved if request.carried else 0
        if (
            self._stopping
            and result.status is SweepStatus.FAILED
            and result.counts.resolved <= carried
        ):
            # Could not work while shutting down (e.g. the engine refused): replay it
            # after the restart rather than record a failure for good.
            raise _Interrupted
        return result if result.final else dataclasses.replace(result, final=True)

    def _request_ended(self, request: KillRequest, status: str | None) -> None:
        """A new request's handling ended, with a final result of ``status`` published
        or without (None: forgotten, a replay redoes it); its repeats are told."""
        key = (request.alert_id, request.account)
        if status is None:
            self._dedup.forget_in_flight(request.alert_id, request.account)
        future = self._in_flight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(status)
        self._sweeping.pop(key, None)
        self._queued[request.account] -= 1
        if self._queued[request.account] <= 0:
            del self._queued[request.account]

    async def _execute_group(
        self,
        members: list[_Member],
        started: Awaitable[list[SweepResult | BaseException]] | None,
    ) -> None:
        """Run a group (see :meth:`_accept_run`): wait for its new kills' outcomes
        (one wake-up), publish their final results together, then the repeats'
        ``duplicate`` results; each record is done once its result is acknowledged.
        A record whose handling is interrupted (shutdown, hand-over) is not done."""
        new = [m for m in members if m.step is not None and m.step.seen is Seen.NEW]
        try:
            if started is not None:
                finals = await self._group_finals(new, await started)
                await self._deferrable.take()
                await self._publish_finals(finals)
                for member, result in finals:
                    member.status = status = result.status.value
                    request = member.request
                    self._dedup.finish(request.alert_id, request.account, status, member.origin)
        finally:
            for member in new:
                self._request_ended(member.request, member.status)
            self._update_backpressure()
        self._records_done(new)
        # A repeat of a kill of this group: its original is no longer in flight.
        ours = {(m.request.alert_id, m.request.account): m.status for m in new}
        repeats: list[tuple[_Member, SweepResult]] = []
        for member in members:
            step = member.step
            if step is None or step.seen is Seen.NEW:
                continue
            previous = step.previous
            if step.seen is Seen.IN_FLIGHT:
                key = (step.request.alert_id, step.request.account)
                if key in ours:
                    previous = ours[key]
                else:
                    future = self._waiter(key)
                    previous = await asyncio.shield(future) if future is not None else None
            repeats.append((member, duplicate_result(step.request, previous, self._clock())))
        await self._publish_finals(repeats)
        for member, result in repeats:
            member.status = result.status.value
        self._records_done([member for member, _ in repeats])

    def _records_done(self, members: list[_Member]) -> None:
        """The members with a final result published: their records are done (counted
        once per kind: a group's are alike)."""
        read: Counter[tuple[str, str]] = Counter()
        for member in members:
            if member.status is not None:
                read[member.plan.label, member.plan.result] += 1
                self._done(member.origin, member.epoch)
        for (label, result), count in read.items():
            self._observer.alert_read(label, result, count)
        if members:
            self._commit_wanted.set()

    async def _group_finals(
        self, members: list[_Member], outcomes: list[SweepResult | BaseException]
    ) -> list[tuple[_Member, SweepResult]]:
        """The final results of a group's new kills from their outcomes; the failures
        among them (rare: an engine error, a hand-over) handled concurrently."""
        finals: list[tuple[_Member, SweepResult]] = []
        failed: list[tuple[_Member, BaseException]] = []
        for member, outcome in zip(members, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.append((member, outcome))
                continue
            try:  # not contextlib.suppress: one context manager per alert of a storm
                finals.append((member, self._final(member.request, outcome)))
            except _Interrupted:
                continue
        if failed:
            results = await asyncio.gather(*(self._group_final(m, o) for m, o in failed))
            finals.extend((m, r) for (m, _), r in zip(failed, results, strict=True) if r)
        return finals

    async def _group_final(
        self, member: _Member, outcome: SweepResult | BaseException
    ) -> SweepResult | None:
        """One group member's final result from its outcome, as :meth:`_run_request`
        makes it (a failure becomes a ``failed`` result); None when interrupted."""

        async def settled() -> SweepResult:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        try:
            return self._final(
                member.request,
                await self._call_engine(member.request, "kill", member.origin, settled()),
            )
        except _Interrupted:
            return None

    @staticmethod
    def _partition_of(origin: Position) -> TopicPartition:
        return TopicPartition(origin.topic, origin.partition)

    def _done(self, origin: Position, epoch: int) -> None:
        """The record at ``origin``, read in ``epoch`` of its partition's offsets, is done.
        Not counted when those offsets were forgotten since (the partition revoked, or
        its topic made again): the offset may now be another record's (see
        :meth:`broker_back`)."""
        if not self._tracker.done(self._partition_of(origin), origin.offset, epoch):
            log.debug(
                "a record finished after its partition's offsets were forgotten: not counted",
                extra={"partition": origin.partition, "offset": origin.offset},
            )

    async def _publish_finals(self, items: Sequence[tuple[_Member, SweepResult]]) -> None:
        """Publish a group's final results until every one is acknowledged (the input
        offsets wait for this; see :meth:`_publish_results`), then their log lines: alike
        results share one (:func:`final_results_lines`), another stands alone, as
        :meth:`_publish_final`."""
        records = [ResultRecord.of(result, member.origin) for member, result in items]
        published = await self._publish_results(records, alone=False)
        if log.isEnabledFor(logging.INFO):
            for event, fields in final_results_lines(published):
                log.info(event, extra=fields)

    async def _publish_results(
        self, records: Sequence[ResultRecord], *, alone: bool
    ) -> list[ResultRecord]:
        """Publish final results until every one is acknowledged; returns them as
        published. A failure of Kafka (down, busy, rebalancing) is retried as it is,
        with a backoff. A record Kafka refuses as made (:func:`refused_as_made`: too
        large, text it cannot encode) would be refused again: it is published reduced
        instead (:func:`reduced_result`: same status and counts, no order list), logged
        and counted once. Refused even reduced, it is retried like the others, so its
        record is never done without a final result (its offset stays uncommitted and
        the alert is replayed after a restart). ``alone``: one record, sent as
        :meth:`Publisher.result` sends it."""
        out = list(records)
        pending = list(range(len(out)))
        stuck: set[int] = set()  # refused even reduced: said once
        delay = 0.05
        while pending:
            errors = await self._send_results([out[i] for i in pending], alone=alone)
            failed: list[int] = []
            retried: BaseException | None = None
            for i, error in zip(pending, errors, strict=True):
                if error is None:
                    continue
                failed.append(i)
                if not refused_as_made(error):
                    retried = error
                elif out[i] is records[i]:
                    out[i] = reduced_result(records[i], type(error).__name__)
                    self._output_refused("result", error, records[i].origin, records[i])
                elif i not in stuck:
                    stuck.add(i)
                    self._refused_again("result", error, records[i].origin, records[i])
            if not failed:
                break
            if retried is not None:
                log.warning(
                    "results not published, retrying",
                    extra={"records": len(failed), "error": type(retried).__name__},
                )
            pending = failed
            await asyncio.sleep(delay)  # backoff between publish attempts
            delay = min(delay * 2, _PUBLISH_BACKOFF_MAX_S)
        return out

    async def _send_results(
        self, records: list[ResultRecord], *, alone: bool
    ) -> list[BaseException | None]:
        """One attempt: None per record acknowledged, else its error (never raises but
        a cancellation)."""
        try:
            if alone:
                await self._publisher.result(records[0], wait=True)
                return [None]
            return await self._publisher.results(records)
        except Exception as exc:
            return [exc] * len(records)

    def _output_refused(
        self,
        output: str,
        error: BaseException,
        origin: Position | None,
        record: ResultRecord | None = None,
    ) -> None:
        """Kafka refused an output as made: said (without its text, which may be what
        was refused) and counted; its reduced form goes out instead, if it has one."""
        self._observer.output_refused(output)
        log.error(
            "output cannot be published as made; publishing it reduced",
            extra=_refusal_fields(output, error, origin, record),
        )

    def _refused_again(
        self,
        output: str,
        error: BaseException,
        origin: Position | None,
        record: ResultRecord | None = None,
    ) -> None:
        log.error(
            "output cannot be published; retried until it is, its offset uncommitted",
            extra=_refusal_fields(output, error, origin, record),
        )

    async def _call_engine(
        self,
        request: KillRequest,
        action: str,
        origin: Position,
        started: Awaitable[SweepResult] | None = None,
    ) -> SweepResult:
        try:
            if action == "release":
                return await self._engine.release(request)
            if started is not None:
                return await started
            return await self._engine.submit(request, self._publisher.progress_sink(origin))
        except asyncio.CancelledError:
            raise
        except SweepHandedOver as exc:
            if TopicPartition(origin.topic, origin.partition) in self._assigned:
                # Not expected (only accounts no kept record sweeps are handed over);
                # the record is still ours, so it gets swept and answered here.
                return await self._engine.submit(request, self._publisher.progress_sink(origin))
            raise _Interrupted from exc  # no result, not done: the new owner replays it
        except Exception as exc:
            if self._stopping:
                # Shutting down: no final result, the offset stays uncommitted and
                # the alert is replayed after the restart.
                raise _Interrupted from exc
            log.exception(
                "engine failed", extra={"alert_id": request.alert_id, "account": request.account}
            )
            return failed_result(request, f"internal error: {type(exc).__name__}", self._clock())

    def _waiter(self, key: tuple[str, str]) -> asyncio.Future[str | None] | None:
        """Resolved with the final status of the kill being swept for ``key`` (alert id,
        account), None when none is: made when a repeat first asks, since a storm's
        kills rarely have one."""
        if key not in self._sweeping:
            return None
        future = self._in_flight.get(key)
        if future is None:
            future = self._in_flight[key] = asyncio.get_running_loop().create_future()
        return future

    async def _repeat_after_in_flight(self, request: KillRequest, origin: Position) -> None:
        future = self._waiter((request.alert_id, request.account))
        status = await asyncio.shield(future) if future is not None else None
        await self._publish_duplicate(request, status, origin)

    async def _publish_duplicate(
        self, request: KillRequest, previous: str | None, origin: Position
    ) -> None:
        await self._publish_final(duplicate_result(request, previous, self._clock()), origin)

    async def _publish_final(self, result: SweepResult, origin: Position) -> None:
        """Publish until acknowledged (see :meth:`_publish_results`): the input offset
        waits for this (cancelled at shutdown).

        Then one log line for the audit trail (what an operator greps for after the fact)."""
        records = [ResultRecord.of(result, origin)]
        (published,) = await self._publish_results(records, alone=True)
        if log.isEnabledFor(logging.INFO):
            log.info("final result", extra=final_result_fields(published))

    async def _dead_letter(
        self,
        record: ConsumerRecord[Any, Any],
        origin: Position,
        rejection: Rejection,
        received: datetime,
    ) -> None:
        log.warning(
            "message refused",
            extra={
                "kind": rejection.kind.value,
                "reason": rejection.reason,
                "alert_id": rejection.alert_id,
                "topic": origin.topic,
                "partition": origin.partition,
                "offset": origin.offset,
            },
        )

        def letter(reduced: bool = False) -> Awaitable[None]:
            value = encode_dlq(
                record.value,
                topic=origin.topic,
                partition=origin.partition,
                offset=origin.offset,
                key=record.key,
                rejection=rejection,
                received_at=received,
                reduced=reduced,
            )
            return self._publisher.dead_letter(value, record.key)

        await self._retry(letter, "dead_letter", origin, reduced=lambda: letter(reduced=True))

    async def _retry(
        self,
        send: Callable[[], Awaitable[None]],
        output: str,
        origin: Position,
        *,
        reduced: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``send`` ``output`` (``dead_letter``, ``forward``) until acknowledged. A
        failure of Kafka is retried as it is, with a backoff. An output Kafka refuses as
        made (:func:`refused_as_made`) is said and counted once, then sent ``reduced``
        when it has such a form; refused without one, or even reduced, it is retried
        like the rest (said once more): the record waits, never done without its outputs."""
        delay = 0.05
        counted = stuck = False
        while True:
            try:
                await send()
                return
            except Exception as exc:
                if not refused_as_made(exc):
                    log.warning(
                        "output not published, retrying",
                        extra={"output": output, "error": type(exc).__name__},
                    )
                elif reduced is not None:  # the first refusal: its reduced form next
                    self._output_refused(output, exc, origin)
                    send, reduced, counted = reduced, None, True
                    continue
                elif not stuck:  # no reduced form, or refused even so: said once
                    if not counted:
                        self._observer.output_refused(output)
                        counted = True
                    stuck = True
                    self._refused_again(output, exc, origin)
            await asyncio.sleep(delay)  # backoff between publish attempts
            delay = min(delay * 2, _PUBLISH_BACKOFF_MAX_S)

    # ------------------------------------------------------------- backpressure

    # One account over its limit holds only its own lane (see _held): pausing the
    # partitions would stop every other account's alerts behind it. Over the global
    # limit only the partitions with records waiting are paused (see below).
    def _over_limit(self) -> bool:
        return self._records_running + len(self._backlog) >= self._max_in_flight

    def _below_resume(self) -> bool:
        return self._records_running + len(self._backlog) <= self._max_in_flight // 2

    def _update_backpressure(self) -> None:
        """After records were read, taken up or finished: the partitions paused or resumed
        (see :meth:`_pause_waiting`), then :attr:`idle` set or cleared (last: going idle
        may run a collector pass, which a resume need not wait for)."""
        consumer = self._consumer
        if consumer is not None:
            if self._over_limit():
                self._pause_waiting(consumer)
            elif self._paused and self._below_resume():
                self._paused = False
                self._paused_partitions.clear()
                consumer.resume(*consumer.assignment())
                log.info(
                    "backpressure: partitions resumed", extra={"in_flight": self._records_running}
                )
        self._report_idle()

    def _report_idle(self) -> None:
        """:attr:`idle` set or cleared, and ``on_busy`` told, when that changed."""
        busy = bool(self._records_running or len(self._backlog))
        if busy == self._idle.is_set():
            if busy:
                self._idle.clear()
            else:
                self._idle.set()
            self._on_busy(busy)

    def _pause_waiting(self, consumer: AIOKafkaConsumer) -> None:
        """Pause the partitions that have records waiting in lanes.

        A partition with nothing waiting adds nothing to the memory held here, and it
        may be the one a manual trigger or a quiet account's kill arrives on (the
        manual topic's while a storm fills the alerts topic's): it goes on being
        read. What it brings in is paused the next time round, so the records held
        stay within the limit plus one poll per partition."""
        waiting = {tp for tp in self._backlog.sources() if isinstance(tp, TopicPartition)}
        new = (waiting - self._paused_partitions) & consumer.assignment()
        if not new:
            return
        consumer.pause(*new)
        self._paused_partitions |= new
        if not self._paused:
            self._paused = True
            log.info("backpressure: partitions paused", extra={"in_flight": self._records_running})

    # ------------------------------------------------------------------ commits

    async def broker_back(self, created: Collection[str]) -> None:
        """After the broker came back: the assigned partitions of the topics in
        ``created`` (made again: the broker had lost them) are read from offset 0, their
        read offsets forgotten. The Kafka client would go on at its old positions in the
        new, empty log, and this intake would take its first records for ones it had
        read, and skip them. Seek and forget happen in one step (no await between), so
        no record of the new log is taken up against the old offsets.

        Records of the old log still running, or read and waiting in a lane, are handled
        as usual, but their offsets no longer count: they were read in the partition's
        previous epoch (:class:`OffsetTracker`), so one finishing does not mark done the
        record of the new log at its offset (the commit waits for that record's own
        result). The old log is gone, so no replay could bring them back either way."""
        consumer = self._consumer
        if consumer is None or not created:
            return
        moved: list[TopicPartition] = []
        for tp in sorted(consumer.assignment()):
            if tp.topic not in created or tp not in self._assigned:
                continue
            try:
                consumer.seek(tp, 0)  # a topic made again begins at 0
            except IllegalStateError:  # no longer assigned: its next owner reads it
                continue
            self._tracker.drop([tp])
            moved.append(tp)
        if moved:
            log.warning(
                "kafka came back without the topics read before: reading them from the start",
                extra={"partitions": [f"{tp.topic}:{tp.partition}" for tp in moved]},
            )

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._commit()

    async def _commit(
        self, partitions: Sequence[TopicPartition] | None = None, timeout_s: float | None = None
    ) -> None:
        """Commit the done positions (of ``partitions``, or all), given up after
        ``timeout_s`` (None: aiokafka retries while the coordinator is unknown)."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            positions = self._tracker.to_commit(partitions)
            if not positions:
                return
            try:
                async with asyncio.timeout(timeout_s):
                    await consumer.commit(positions)
            except (KafkaError, IllegalStateError, TimeoutError) as exc:
                # Rebalancing or broker trouble: the positions stay pending and the
                # next commit (or the next owner's replay) covers them.
                log.warning("offset commit failed", extra={"error": type(exc).__name__})
                return
            self._tracker.committed(positions)
            self.committed_total += 1

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before the group reassigns ``revoked``: finish, or hand over, their work.

        Records of those partitions get ``revoke_drain_s`` to finish; the ones still
        running after it are cancelled without a result (their offsets stay
        uncommitted) and their accounts' sweeps stopped (:meth:`_hand_over`), so when
        the next owner replays them nobody else is sweeping those accounts. Their
        offsets are then forgotten: a new epoch, so should the partition come back to
        this daemon, nothing read before counts for its replay."""
        gone = set(revoked)
        self._backlog.drop(lambda item: item[0] in gone)  # not taken up: the next owner's
        self._report_idle()
        if gone:
            self._on_consuming(False)
        self._assigned -= gone
        await self._assignment_changed()
        waiting = [task for tp in gone for task in self._work.get(tp, ())]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=self._config.revoke_drain_s)
            if late:
                await self._hand_over(late, gone)
        await self._commit(list(gone), timeout_s=REVOKE_COMMIT_S)
        self._tracker.drop(gone)

    async def _hand_over(
        self, late: Collection[asyncio.Task[None]], gone: set[TopicPartition]
    ) -> None:
        """Cancel the records still running on revoked partitions and stop the sweeps
        of their accounts, unless a record this daemon keeps sweeps the account too
        (an alert naming several accounts): that sweep goes on here. The sweeps' last
        progress results are acknowledged before this returns, so the next owner's
        results reader has them when it replays (counts carried over)."""
        sweeping = [
            (account, self._partition_of(at)) for (_, account), at in self._sweeping.items()
        ]
        moving = {account for account, tp in sweeping if tp in gone}
        moving -= {account for account, tp in sweeping if tp not in gone}
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        try:
            stopped = await self._engine.hand_over(moving)
        except Exception:  # the rebalance must go on (commit, drop) whatever happened
            log.exception("hand-over failed", extra={"accounts": sorted(moving)})
            stopped = 0
        log.warning(
            "rebalance: unfinished records handed over",
            extra={"records": len(late), "accounts": sorted(moving), "sweeps": stopped},
        )
        try:
            async with asyncio.timeout(self._config.revoke_drain_s + _HANDOVER_FLUSH_S):
                await self._publisher.flush()
        except (TimeoutError, KafkaError):
            log.warning("last progress results not acknowledged before the hand-over")

    async def _assignment_changed(self) -> None:
        if self._on_assignment is None:
            return
        try:
            await self._on_assignment()
        except Exception:  # a failing hook must not break the rebalance
            log.exception("assignment hook failed")

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self._assigned = set(assigned)
        await self._assignment_changed()
        # Ready even with no partitions: a member with nothing assigned is healthy.
        self._on_consuming(not self._stopping)
        if self._results_index is not None:
            wait_s = assignment_wait_s(self._kafka.session_timeout_ms)
            caught_up = await self._results_index.wait_caught_up(timeout_s=wait_s)
            if not caught_up:
                log.warning("results reader behind at assignment; repeats may be re-swept")
        # A new assignment starts unpaused: over the limit, pause again only the
        # partitions with records waiting, as _pause_waiting does between rebalances.
        self._paused_partitions.clear()
        if self._paused and self._consumer is not None:
            self._pause_waiting(self._consumer)
