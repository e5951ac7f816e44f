"""Helpers for intake tests against the real broker: settings, a scriptable engine, readers.

The engine here is a test double of ``EngineAPI`` (the real one is exercised by
the daemon end-to-end tests); Kafka, offsets and rebalances are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from killswitch.alerts import format_time
from killswitch.config import Settings
from killswitch.core.dedup import DedupWindow
from killswitch.core.model import (
    Counts,
    HaltState,
    KillRequest,
    SweepResult,
    SweepStatus,
)
from killswitch.core.ports import PairLister, ResultSink
from killswitch.intake.consumer import Intake, IntakeConfig
from killswitch.intake.kafka import make_producer
from killswitch.intake.outputs import Publisher
from killswitch.intake.readers import ResultsIndex
from killswitch.triggers import TriggerVerifier
from tests.conftest import create_topics

ACCOUNTS = ["mm-1", "mm-2", "arb-1"]


def make_settings(bootstrap: str, unique: Callable[[str], str], **overrides: Any) -> Settings:
    """Settings on unique topics and group; accounts need no real keys (fake engine)."""
    kafka = {
        "bootstrap_servers": bootstrap,
        "group_id": unique("group"),
        "fetch_max_wait_ms": 10,
        "session_timeout_ms": 3000,
        "heartbeat_interval_ms": 500,
        # Tansu starts group generations at 0 and aiokafka sends no LeaveGroup for
        # generation 0, so the first member of a fresh group leaves uncleanly and the
        # next join waits out the rebalance timeout: keep it short in tests.
        "rebalance_timeout_ms": 3000,
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
    return {
        "schema": "killswitch.alert/v1",
        "alert_id": alert_id,
        "action": kw.pop("action", "kill"),
        "source": kw.pop("source", "test"),
        "reason": "test",
        "scope": {
            "accounts": accounts if accounts == "*" else list(accounts),
            **kw.pop("scope", {}),
        },
        "latch": kw.pop("latch", False),
        "dry_run": kw.pop("dry_run", False),
        "created_at": format_time(datetime.now(UTC)),
        **kw,
    }


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

    def hold(self, account: str) -> None:
        self.holds[account] = asyncio.Event()

    def let_go(self, account: str) -> None:
        self.holds.pop(account).set()

    def start(self, request: KillRequest, progress: ResultSink) -> asyncio.Future[SweepResult]:
        if request.alert_id in self.start_raises_for:
            raise RuntimeError("engine start bug")
        self.started.append(request.alert_id)
        return asyncio.ensure_future(self.submit(request, progress))

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
            return self._result(request, status, final=True)
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
    fired: list[str] = field(default_factory=list)
    consumer_lags: dict[tuple[str, int], int] = field(default_factory=dict)

    def alert_read(self, source: str, result: str) -> None:
        self.alerts.append((source, result))

    def dlq(self, reason: str) -> None:
        self.dead_letters.append(reason)

    def deadman_fired(self, source: str) -> None:
        self.fired.append(source)

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lags[(topic, partition)] = lag

    def loop_lag(self, seconds: float) -> None:
        self.lags.append(seconds)


class TopicReader:
    """Collects every JSON record of one topic in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[dict[str, Any]] = []
        self.keys: list[bytes | None] = []
        self._bootstrap = bootstrap
        self._topic = topic
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            self.keys.append(record.key)
            self.records.append(json.loads(record.value) if record.value else {})

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def finals(self, alert_id: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r.get("final") and (alert_id is None or r.get("alert_id") == alert_id)
        ]


async def produce(
    settings: Settings,
    messages: list[bytes | dict[str, Any]],
    topic: str | None = None,
    key: str | None = "mm-1",
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for message in messages:
            value = message if isinstance(message, bytes) else json.dumps(message).encode()
            await producer.send_and_wait(
                topic or settings.kafka.topics.alerts, value, key=key.encode() if key else None
            )
    finally:
        await producer.stop()


async def committed(settings: Settings, topic: str, partition: int = 0) -> int | None:
    """The group's committed offset on one partition (read with a throwaway member)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=settings.kafka.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(topic, partition))
        return offset
    finally:
        await consumer.stop()


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
) -> AsyncIterator[Running]:
    """An Intake with its publisher and results index, consuming until the block exits."""
    engine = engine or FakeEngine()
    observer = RecordingObserver()
    dedup = dedup or DedupWindow(settings.intake.dedup_window)
    producer = make_producer(settings.kafka)
    await producer.start()
    publisher = Publisher(producer, settings.kafka.topics)
    index = ResultsIndex(settings.kafka, settings.kafka.topics.results, dedup, 1000)
    await index.start()
    await index.catch_up(10)
    stop = asyncio.Event()
    index_task = asyncio.create_task(index.run(stop))
    intake = Intake(
        IntakeConfig.from_settings(settings),
        settings.kafka,
        engine,
        publisher,
        dedup,
        verifier=TriggerVerifier(settings.trigger_signing),
        observer=observer,
        results_index=index,
        pairs=pairs,
    )
    await intake.start()
    task = asyncio.create_task(intake.run())
    try:
        yield Running(intake, engine, observer, dedup, task)
    finally:
        intake.stop()
        await task
        await intake.shutdown(grace_s)
        stop.set()
        await index_task
        await index.close()
        await producer.stop()
