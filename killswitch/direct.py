"""``killswitch trigger --direct``: the break-glass kill, run in the operator's own process.

No Kafka and no daemon are needed: the kill goes straight to the exchange with the
account keys of the configuration, through the daemon's own parts (the
:class:`~killswitch.exchange.client.ExchangeClient` per account, the scope's pairs
checked against each account's pair list before any request, the
:class:`~killswitch.engine.Engine` sweep), shown on the same progress board and
ending with the same exit codes as a kill through the daemon.

The final results are appended to a local audit file (JSON lines) first, then, when
Kafka answers within ``direct.kafka_connect_timeout_s`` (tried while the kill runs,
never delaying it), published to the results topic (and, with ``--latch``, the halt
to the state topic) so daemons and ``killswitch status`` see them. A daemon sweeping
the same account at the same time is harmless: cancels are idempotent and each
process counts only the answers it got (an order the other cancelled first is
``already_closed`` here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from killswitch.board import Board
from killswitch.config import (
    AccountSettings,
    ConfigError,
    DirectSettings,
    EngineSettings,
    KafkaSettings,
    TopicSettings,
)
from killswitch.contracts import (
    Alert,
    DeadLetter,
    RejectKind,
    ResultRecord,
    kill_requests,
    result_to_json,
)
from killswitch.core.model import HaltState, KillRequest, SweepResult
from killswitch.core.pairs import PairList, PairVerdict, check_pairs
from killswitch.display import Display
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClients
from killswitch.exchange.signing import KeyLoadError
from killswitch.exitcodes import EXIT_NOT_DONE
from killswitch.kafka.clients import make_producer
from killswitch.kafka.outputs import Publisher
from killswitch.render import dry_run_lines, summary_lines
from killswitch.tasks import task_scope

__all__ = [
    "AUDIT_SCHEMA",
    "DirectRun",
    "append_audit",
    "direct_document",
    "direct_record",
    "report_lines",
    "run_direct",
]

AUDIT_SCHEMA = "killswitch.audit/v1"
# Longest the pair lists may take before the kill runs with its pairs unchecked (it
# then never ends ``flat``), as in the daemon's intake.
PAIR_FETCH_WAIT_S = 2.0
# Publishing after the kill: the broker answered the connect, so this is generous.
_PUBLISH_TIMEOUT_S = 15.0
# Results in the audit file and the printed JSON list every order (the Kafka copy is
# cut to the daemon's limit, with ``orders_omitted``).
_ALL_ORDERS = 10**9


@dataclass
class DirectRun:
    """What a direct kill did (printed as JSON, appended to the audit file)."""

    alert: Alert
    board: Board
    results: list[SweepResult] = field(default_factory=list)
    published: bool = False
    kafka_detail: str = ""
    latch_published: bool | None = None  # None: no latch asked for
    audit_file: Path | None = None
    audit_error: str | None = None
    refusal: str | None = None
    exit_code: int = EXIT_NOT_DONE
    elapsed_s: float = 0.0


async def run_direct(
    alert: Alert,
    *,
    accounts: Sequence[AccountSettings],
    engine: EngineSettings,
    kafka: KafkaSettings,
    direct: DirectSettings,
    out: TextIO,
    tty: bool,
    audit_file: Path,
    instance: str,
) -> DirectRun:
    """Run ``alert`` (a kill) against the exchange from this process; see the module doc."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    configured = {a.id: a for a in accounts}
    requests = kill_requests(
        alert,
        accounts=list(configured),
        received_at=datetime.now(UTC),
        default_deadline_s=engine.default_deadline_s,
    )
    board = Board(alert.alert_id, [r.account for r in requests], dry_run=alert.dry_run)
    run = DirectRun(alert, board, audit_file=audit_file)
    try:
        clients = ExchangeClients(
            [configured[r.account] for r in requests],
            exchange_info_ttl_s=engine.exchange_info_ttl_s,
            transport=engine.http_transport,
        )
    except KeyLoadError as exc:
        raise ConfigError(str(exc)) from None
    states: list[HaltState] = []
    # Kafka is reached while the kill runs, in a task that does not outlive the kill.
    async with task_scope() as tasks:
        link = tasks.create_task(
            _connect(kafka, direct.kafka_connect_timeout_s), name="direct-kafka-connect"
        )
        try:
            async with clients:
                await _kill(
                    run,
                    _Sweeper(engine, {a.id: a.max_concurrency for a in accounts}),
                    clients,
                    requests,
                    states=states,
                    display=Display(out, tty=tty),
                )
            run.elapsed_s = loop.time() - started
            records = [direct_record(r) for r in run.results]
            run.audit_error = append_audit(audit_file, records)
            await _publish(run, link, states, instance, kafka.topics)
        finally:
            await _close(link)
    run.exit_code = board.exit_code()
    if run.latch_published is False and run.exit_code == 0:
        run.exit_code = EXIT_NOT_DONE  # asked to stay halted, and nobody can hold the latch
    return run


# ------------------------------------------------------------------------ the kill


@dataclass(frozen=True)
class _Sweeper:
    """What the engine of a direct kill is built from."""

    engine: EngineSettings
    concurrency: dict[str, int]


async def _kill(
    run: DirectRun,
    sweeper: _Sweeper,
    clients: ExchangeClients,
    requests: list[KillRequest],
    *,
    states: list[HaltState],
    display: Display,
) -> None:
    """The pair check, then the sweeps (a refusal is shown as the daemon's would be)."""
    alert = run.alert
    verdict = await _check_pairs(alert, clients)
    if verdict.refusal is not None:
        run.refusal = verdict.refusal
        letter = DeadLetter(RejectKind.INVALID.value, verdict.refusal, alert.alert_id)
        run.board.apply_dead_letter(letter.to_json())
        return
    run.results = await _sweep(
        sweeper,
        clients,
        _mark_unchecked(requests, verdict),
        board=run.board,
        states=states,
        display=display,
    )


async def _check_pairs(alert: Alert, clients: ExchangeClients) -> PairVerdict:
    """The scope's pairs against every target account's pair list, before any request
    (a pair the exchange does not list is refused, with suggestions)."""
    symbols = alert.scope.symbols
    if symbols is None:
        return PairVerdict()
    errors: dict[str, str] = {}

    async def fetch(account: str) -> PairList | None:
        try:
            async with asyncio.timeout(PAIR_FETCH_WAIT_S):
                return await clients[account].pair_list()
        except TimeoutError:
            errors[account] = f"exchange-info gave no answer within {PAIR_FETCH_WAIT_S:g}s"
        except Exception as exc:  # no source of pairs: the kill runs unchecked
            errors[account] = str(exc) or type(exc).__name__
        return None

    accounts = list(clients)
    lists = await asyncio.gather(*(fetch(a) for a in accounts))
    return check_pairs(symbols, dict(zip(accounts, lists, strict=True)), errors)


def _mark_unchecked(requests: list[KillRequest], verdict: PairVerdict) -> list[KillRequest]:
    unchecked = verdict.unchecked or {}
    return [
        replace(r, unchecked_pairs=unchecked[r.account]) if r.account in unchecked else r
        for r in requests
    ]


async def _sweep(
    sweeper: _Sweeper,
    clients: ExchangeClients,
    requests: Sequence[KillRequest],
    *,
    board: Board,
    states: list[HaltState],
    display: Display,
) -> list[SweepResult]:
    """One engine sweep per account, the board redrawn as progress comes in."""

    async def on_state(state: HaltState) -> None:
        states.append(state)  # published to the state topic after the kill

    async def progress(result: SweepResult) -> None:
        display.show(board, changed=board.apply_result(result_to_json(ResultRecord.of(result))))

    engine = Engine(
        clients,
        sweeper.engine.engine_config(),
        on_state=on_state,
        concurrency=sweeper.concurrency,
    )
    for account in board.accounts:  # no daemon to wait for: this process is sweeping
        board.rows[account] = replace(board.rows[account], status="running")
    display.show(board, changed=True)
    # Leaving the engine's lifetime stops the latch guard too: with --latch, the daemons
    # guard the account once the halt is on the state topic.
    async with engine:
        results = await asyncio.gather(*(engine.start(r, progress) for r in requests))
    for result in results:
        board.apply_result(result_to_json(ResultRecord.of(replace(result, final=True))))
    display.show(board, changed=True, final=True)
    return [replace(r, final=True) for r in results]


# ------------------------------------------------------------------------ records


def direct_record(result: SweepResult) -> dict[str, Any]:
    """A final result as the audit file and ``--out`` keep it: ``killswitch.result/v1``
    with every order listed, plus ``via: "direct"``."""
    return result_to_json(ResultRecord.of(result, max_orders=_ALL_ORDERS)) | {"via": "direct"}


def append_audit(path: Path, records: Sequence[dict[str, Any]]) -> str | None:
    """Append one JSON line per record (the file made mode 600 if new); the error, if any.

    No records (a kill refused before any request): the file is left alone."""
    if not records:
        return None
    lines = "".join(
        json.dumps({"audit": AUDIT_SCHEMA} | r, separators=(",", ":"), ensure_ascii=False) + "\n"
        for r in records
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(lines)
    except OSError as exc:
        return f"{path}: {exc.strerror or type(exc).__name__}"
    return None


# ------------------------------------------------------------------------ Kafka


async def _connect(kafka: KafkaSettings, timeout_s: float) -> AIOKafkaProducer | str:
    """A started producer, or why Kafka could not be reached within ``timeout_s``.

    Never raises (but for a cancellation): it runs beside the kill in the kill's task
    group, where a failure would cancel the kill; the kill goes on without Kafka."""
    try:
        producer = make_producer(kafka)
    except Exception as exc:
        return f"Kafka at {kafka.bootstrap_servers} not reachable ({type(exc).__name__})"
    try:
        async with asyncio.timeout(timeout_s):
            await producer.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await producer.stop()
        return f"Kafka at {kafka.bootstrap_servers} not reachable ({type(exc).__name__})"
    return producer


async def _close(link: asyncio.Task[AIOKafkaProducer | str]) -> None:
    """Stop the connect attempt if it still runs, and the producer if it started."""
    if not link.done():
        link.cancel()
    await asyncio.gather(link, return_exceptions=True)
    if link.cancelled() or link.exception() is not None:
        return
    producer = link.result()
    if isinstance(producer, AIOKafkaProducer):
        with contextlib.suppress(Exception):
            await producer.stop()


async def _publish(
    run: DirectRun,
    link: asyncio.Task[AIOKafkaProducer | str],
    states: Sequence[HaltState],
    instance: str,
    topics: TopicSettings,
) -> None:
    """The halt (if any) and the final results to Kafka, when it answered."""
    latched = run.alert.latch and not run.alert.dry_run and bool(states)
    if not run.results and not states:
        run.kafka_detail = "nothing to publish"
        return
    producer = await link
    if isinstance(producer, str):
        run.kafka_detail = producer
        run.latch_published = False if latched else None
        return
    publisher = Publisher(producer, topics, daemon=instance)
    try:
        async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
            for state in states:
                await publisher.state(state)
            for result in run.results:
                await publisher.result(ResultRecord.of(result), wait=True)
    except (KafkaError, TimeoutError, OSError) as exc:
        run.kafka_detail = f"publishing failed ({type(exc).__name__})"
        run.latch_published = False if latched else None
        return
    run.published = True
    run.latch_published = True if latched else None
    run.kafka_detail = "published"


# ------------------------------------------------------------------------ report


def report_lines(run: DirectRun) -> list[str]:
    """What the operator reads after the board: verdict, dry-run orders, where it went."""
    lines = summary_lines(run.board, run.elapsed_s)
    lines += dry_run_lines(run.board)
    if run.refusal is not None:
        lines.append(f"refused before any request: {run.refusal}")
    elif run.published:
        latch = " with the latch" if run.latch_published else ""
        lines.append(f"results published to Kafka{latch}")
    else:
        lines.append(f"results NOT published to Kafka: {run.kafka_detail}")
    if run.latch_published is False:
        lines.append(
            "WARNING: the latch is NOT in force: no daemon knows the account is halted; "
            "trigger --latch again once Kafka is back"
        )
    if run.audit_error is None and run.results:
        lines.append(f"audit: {len(run.results)} result(s) appended to {run.audit_file}")
    return lines


def direct_document(run: DirectRun) -> dict[str, Any]:
    """The JSON printed at the end (and written by ``--out``)."""
    alert = run.alert
    return {
        "alert_id": alert.alert_id,
        "action": "kill",
        "via": "direct",
        "operator": alert.operator.name if alert.operator is not None else None,
        "trigger_reason": alert.reason,
        "dry_run": alert.dry_run,
        "latch": alert.latch,
        "exit_code": run.exit_code,
        "refused": run.refusal,
        "kafka": {
            "published": run.published,
            "detail": run.kafka_detail,
            "latch_published": run.latch_published,
        },
        "audit_file": str(run.audit_file) if run.audit_file is not None else None,
        "audit_error": run.audit_error,
        "results": [direct_record(r) for r in run.results],
    }
