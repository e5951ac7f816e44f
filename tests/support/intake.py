"""Helpers for intake tests against the real broker (settings, a scriptable engine),
and an intake never started for unit tests of its planning (:func:`offline_intake`).

The engine here is a test double of ``EngineAPI`` (the real one is exercised by
the daemon end-to-end tests); Kafka, offsets and rebalances are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from killswitch.config import IntakeSettings, KafkaSettings, Settings, TopicSettings
from killswitch.core.dedup import DedupWindow
from killswitch.core.model import (
    Counts,
    HaltState,
    KillRequest,
    SweepResult,
    SweepStatus,
)
from killswitch.core.ports import AlertObserver, PairLister, ResultSink
from killswitch.kafka.clients import make_producer
from killswitch.kafka.consumer import DEFERRABLE_PER_TURN_S, SLICE_S, Intake, IntakeConfig
from killswitch.kafka.outputs import Publisher
from killswitch.kafka.readers import ResultsIndex
from killswitch.tasks import TurnBudget
from killswitch.triggers import TriggerVerifier
from tests.support.topics import alert, create_topics

ACCOUNTS = ["mm-1", "mm-2", "arb-1"]


def offline_intake(
    accounts: Sequence[str],
    *,
    publisher: Any = None,
    pairs: Mapping[str, PairLister] | None = None,
    observer: AlertObserver | None = None,
) -> Intake:
    """An intake never started (no consumer, no engine) for unit tests of its planning
    and bookkeeping: records are handed to its methods directly."""
    config = IntakeConfig(
        topics=TopicSettings(),
        accounts=tuple(accounts),
        limits=IntakeSettings(),
        default_deadline_s=30.0,
        revoke_drain_s=1.0,
    )
    no_engine: Any = None  # planning and the bookkeeping tested never reach it
    return Intake(
        config,
        KafkaSettings(),
        no_engine,
        publisher,
        DedupWindow(100),
        pairs=pairs,
        observer=observer,
    )


def make_settings(bootstrap: str, unique: Callable[[str], str], **overrides: Any) -> Settings:
    """Settings on unique topics and group; accounts need no real keys (fake engine)."""
    kafka = {
        "bootstrap_servers": bootstrap,
        "group_id": unique("group"),
        "fetch_max_wait_ms": 10,
        # The embedded broker (Tansu) holds a fresh group's first join for about half the
        # session timeout, waiting for more members; and it starts group generations at
        # 0, for which aiokafka sends no LeaveGroup, so the first member of a fresh group
        # leaves uncleanly and the next join waits out the rebalance timeout. Both short
        # in tests, with four heartbeats per session so a busy loop is not evicted.
        "session_timeout_ms": 2_000,
        "heartbeat_interval_ms": 500,
        "rebalance_timeout_ms": 2_000,
        "topics": {
            "alerts": unique("alerts"),
            "manual": unique("manual"),
            "heartbeats": unique("heartbeats"),
            "results": unique("results"),
            "state": unique("state"),
            "dlq": unique("dlq"),
        },
    }
    kafka.update(overrides.pop("kafka", {}))
    accounts = [{"id": a, "api_key": f"key-{a}", "private_key": "unused"} for a in ACCOUNTS]
    return Settings(kafka=kafka, accounts=accounts, **overrides)


async def create_all_topics(settings: Settings, partitions: int = 1) -> None:
    t = settings.kafka.topics
    bootstrap = settings.kafka.bootstrap_servers
    await create_topics(bootstrap, [t.alerts, t.manual], partitions=partitions)
    await create_topics(bootstrap, [t.heartbeats, t.results, t.state, t.dlq])


def alert_message(alert_id: str, accounts: Any = ("mm-1",), **kw: Any) -> dict[str, Any]:
    """:func:`tests.support.topics.alert` for mm-1 from source ``test`` unless told."""
    return alert(alert_id, accounts, **{"source": "test", **kw})


@dataclass
class FakeEngine:
    """Records requests; each account can be held (sweeps block until released)."""

    calls: list[KillRequest] = field(default_factory=list)
    releases: list[KillRequest] = field(default_factory=list)
    restored: list[HaltState] = field(default_factory=list)
    holds: dict[str, asyncio.Event] = field(default_factory=dict)
    raise_for: set[str] = field(default_factory=set)
    start_raises_for: set[str] = field(default_factory=set)  # start() fails (submit works)
    started: list[str] = field(default_factory=list)  # alert ids begun through start()
    running: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_running: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    closed: bool = False
    handed_over: list[str] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)  # alert ids per start_group
    # alert id -> the reason its final result carries (e.g. text Kafka refuses to take)
    final_reasons: dict[str, str] = field(default_factory=dict)

    def hold(self, account: str) -> None:
        self.holds[account] = asyncio.Event()

    def let_go(self, account: str) -> None:
        self.holds.pop(account).set()

    def start(self, request: KillRequest, progress: ResultSink) -> asyncio.Future[SweepResult]:
        if request.alert_id in self.start_raises_for:
            raise RuntimeError("engine start bug")
        self.started.append(request.alert_id)
        return asyncio.ensure_future(self.submit(request, progress))

    def start_group(
        self, alerts: Sequence[tuple[KillRequest, ResultSink]]
    ) -> asyncio.Future[list[SweepResult | BaseException]]:
        self.groups.append([request.alert_id for request, _ in alerts])
        started = [self.start(request, progress) for request, progress in alerts]
        return asyncio.ensure_future(asyncio.gather(*started, return_exceptions=True))

    async def submit(self, request: KillRequest, progress: ResultSink) -> SweepResult:
        self.calls.append(request)
        self.running[request.account] += 1
        self.max_running[request.account] = max(
            self.max_running[request.account], self.running[request.account]
        )
        try:
            await progress(self._result(request, SweepStatus.RUNNING, final=False))
            gate = self.holds.get(request.account)
            if gate is not None:
                await gate.wait()
            if request.alert_id in self.raise_for:
                raise RuntimeError("engine bug")
            status = SweepStatus.DRY_RUN if request.dry_run else SweepStatus.FLAT
            result = self._result(request, status, final=True)
            reason = self.final_reasons.get(request.alert_id)
            return result if reason is None else dataclasses.replace(result, reason=reason)
        finally:
            self.running[request.account] -= 1

    async def release(self, request: KillRequest) -> SweepResult:
        self.releases.append(request)
        return self._result(request, SweepStatus.RELEASED, final=True)

    async def hand_over(self, accounts: Collection[str]) -> int:
        self.handed_over.extend(accounts)
        return 0

    def restore_halt(self, state: HaltState) -> None:
        self.restored.append(state)

    def halted(self) -> Mapping[str, HaltState]:
        return {}

    async def close(self, grace_s: float) -> None:
        self.closed = True

    @staticmethod
    def _result(request: KillRequest, status: SweepStatus, *, final: bool) -> SweepResult:
        now = datetime.now(UTC)
        return SweepResult(
            alert_id=request.alert_id,
            account=request.account,
            status=status,
            final=final,
            dry_run=request.dry_run,
            counts=Counts(sent=1),
            residual_open=0,
            sweeps=1,
            received_at=request.received_at,
            first_cancel_at=now,
            finished_at=now if final else None,
            source=request.source,
            operator=request.operator,
        )


@dataclass
class RecordingObserver:
    alerts: list[tuple[str, str]] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # outputs Kafka refused as made
    fired: list[str] = field(default_factory=list)
    consumer_lags: dict[tuple[str, int], int] = field(default_factory=dict)

    def alert_read(self, source: str, result: str, count: int = 1) -> None:
        self.alerts.extend([(source, result)] * count)

    def dlq(self, reason: str) -> None:
        self.dead_letters.append(reason)

    def output_refused(self, output: str) -> None:
        self.refused.append(output)

    def deadman_fired(self, source: str) -> None:
        self.fired.append(source)

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lags[(topic, partition)] = lag

    def loop_lag(self, seconds: float) -> None:
        self.lags.append(seconds)


@dataclass
class Running:
    intake: Intake
    engine: FakeEngine
    observer: RecordingObserver
    dedup: DedupWindow
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_intake(
    settings: Settings,
    engine: FakeEngine | None = None,
    *,
    grace_s: float = 5.0,
    dedup: DedupWindow | None = None,
    pairs: Mapping[str, PairLister] | None = None,
    slice_s: float = SLICE_S,
    on_assignment: Callable[[], Awaitable[None]] | None = None,
    on_busy: Callable[[bool], None] | None = None,
) -> AsyncIterator[Running]:
    """An Intake with its publisher and results index, consuming until the block exits;
    ``slice_s`` is its turn of taking up records (:attr:`IntakeConfig.slice_s`),
    ``on_assignment`` its hook after each change of the assignment and ``on_busy`` its
    hook when it becomes busy or idle (as the daemon's)."""
    engine = engine or FakeEngine()
    observer = RecordingObserver()
    dedup = dedup or DedupWindow(settings.intake.dedup_window)
    producer = make_producer(settings.kafka)
    await producer.start()
    publisher = Publisher(producer, settings.kafka.topics)
    index = ResultsIndex(settings.kafka, settings.kafka.topics.results, dedup, 1000)
    # At least the slice: a longer slice (a test's, to take up a whole run at once) is
    # not cut short by the turn's budget.
    deferrable = TurnBudget(max(DEFERRABLE_PER_TURN_S, slice_s))
    await index.start()
    await index.catch_up(10)
    stop = asyncio.Event()
    config = IntakeConfig.from_sections(
        settings.kafka, settings.intake, settings.engine, (a.id for a in settings.accounts)
    )
    intake = Intake(
        dataclasses.replace(config, slice_s=slice_s),
        settings.kafka,
        engine,
        publisher,
        dedup,
        verifier=TriggerVerifier(settings.trigger_signing),
        observer=observer,
        results_index=index,
        pairs=pairs,
        on_assignment=on_assignment,
        on_busy=on_busy,
        deferrable=deferrable,
    )
    # As the daemon wires it: the reader defers to a busy intake.
    index_task = asyncio.create_task(index.run(stop, intake.idle))
    await intake.start()
    task = asyncio.create_task(intake.run())
    try:
        yield Running(intake, engine, observer, dedup, task)
    finally:
        await intake.shutdown(grace_s)  # ends the run: its records' work is over
        await asyncio.wait([task])  # ended (or cancelled by the test) by now
        if not task.cancelled():
            task.result()  # the run's own failure, if any
        stop.set()
        await index_task
        await index.close()
        await producer.stop()
