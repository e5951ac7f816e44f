"""``killswitch run``: the long-running daemon, wired from the settings.

Start-up, in order: logging; operator keys and dead-man scopes checked; the metrics
listener; one exchange client per account (a key that does not load is a
configuration error, found before touching Kafka); Kafka topics created if missing
(state compacted), waiting with backoff while no broker answers
(:class:`~killswitch.kafka.watch.KafkaWatch`; not ready meanwhile); the producer
(results, state, dead letters); the engine; halted accounts restored from the state
topic; the dedup window rebuilt from recent results; then the alert consumer, the
dead-man watcher, the state follower, the loop lag probe, the Kafka watch (readiness
and ``killswitch_kafka_up`` follow the broker) and the exchange probe
(:class:`~killswitch.observability.ExchangeProbe`, on the engine's clients: clock sync,
pair list, readiness) run until SIGTERM/SIGINT (or ``stop_event`` in tests). When an
account sets ``on_broker_loss_after_s``, the broker-loss guard
(:mod:`killswitch.kafka.broker_loss`) hears the watch's changes of state, kills and
latches those accounts after that long without the broker, and is the engine's
halt-state sink (held while the broker is away, published when it answers). After
every recovery of the broker the halt republisher
(:mod:`killswitch.kafka.republish`) publishes again the halts the state topic lost
(a broker that lost its storage comes back empty), for the accounts this daemon owns.

Latch guards follow the alert consumer's assignment: every daemon knows every
halt, but only the one assigned an account's alerts partition guards it (lists its
pairs and cancels what appears, :mod:`killswitch.kafka.ownership`); restored halts
are guarded from the first assignment on.

A producer that can deliver nothing any more (aiokafka's sender task ended: an error
escaped it, or it was stopped, or the producer was closed underneath the daemon) makes
the daemon not ready at once (``/readyz`` names it, ``killswitch_kafka_producer_failed``
1) and stops it gracefully; ``async_run`` then raises
:class:`~killswitch.kafka.outputs.ProducerUnusable` and ``run()`` returns 1, for the
supervisor to start the daemon again.

Shutdown: stop taking alerts and heartbeats; let running sweeps finish within
``engine.shutdown_grace_s`` and publish their results; commit what completed
(the rest is replayed by whoever consumes the partition next); stop the
engine's latch guards; close every client. Exit code 0, also with the broker gone:
each Kafka step after the grace period is bounded (see ``_within``).

``run()`` is for production, ``async_run()`` (``handle_signals=False``) for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import IO, Any

from killswitch.config import ConfigError, Settings, settings_from_args
from killswitch.contracts import ResultRecord
from killswitch.core.dedup import DedupWindow
from killswitch.core.model import HaltState
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClients
from killswitch.exchange.signing import KeyLoadError
from killswitch.exitcodes import EXIT_FAILED, EXIT_FORCED, EXIT_OK
from killswitch.gc_pacing import CollectorPacing
from killswitch.health import HealthServerError
from killswitch.kafka.broker_loss import BrokerLossGuard, KillStart
from killswitch.kafka.clients import ensure_topics, make_producer
from killswitch.kafka.consumer import DEFERRABLE_PER_TURN_S, Intake, IntakeConfig
from killswitch.kafka.deadman import DeadmanWatcher
from killswitch.kafka.outputs import ProducerUnusable, Publisher
from killswitch.kafka.ownership import Ownership
from killswitch.kafka.readers import HaltStateReader, ResultsIndex, read_last_states
from killswitch.kafka.republish import HaltRepublisher
from killswitch.kafka.watch import KafkaWatch, OnChange
from killswitch.logs import (
    CLOSE_WAIT_S,
    ThreadedLineHandler,
    configure_logging,
    default_masker,
    register_settings_secrets,
    skip_unwritten_record_fields,
)
from killswitch.looplag import watch_loop_lag
from killswitch.loops import EventLoopUnavailable, loop_factory
from killswitch.observability import (
    ExchangeProbe,
    Observability,
    probe_interval_s,
    prometheus_observability,
)
from killswitch.tasks import Interrupted, TurnBudget, cancel_and_wait, unless_set
from killswitch.triggers import TriggerKeyError, TriggerVerifier

log = logging.getLogger(__name__)

_Spawn = Callable[[asyncio.TaskGroup], dict[str, asyncio.Task[None]]]


# Results per partition read back at start-up to rebuild the dedup window: each
# alert produces at least one final result per account, plus progress events.
_RESULTS_TAIL_FACTOR = 4
_STARTUP_READ_TIMEOUT_S = 60.0
# Each step after the broker came back (a few requests to it): past this it is logged
# as failed and the next runs.
RECOVERY_STEP_S = 15.0
# Beyond the grace period, how long a stop waits for Kafka (commits, deliveries): a
# broker that answers needs milliseconds.
_KAFKA_STOP_S = 5.0
_KAFKA_GONE_STOP_S = 1.0  # the broker did not answer the last probe
# A stop signal this soon after the first is the same request, not "stop now": a wrapper
# that forwards signals to a process group (``timeout``, a shell, some supervisors)
# delivers one SIGTERM twice within a millisecond, while an operator who means "now"
# presses Ctrl-C again well after the first.
SAME_STOP_SIGNAL_S = 0.5


def add_arguments_run(parser: argparse.ArgumentParser) -> None:
    """``killswitch run`` has no options beyond ``--config`` (settings carry everything)."""
    parser.description = (
        "Consume alerts, manual triggers and heartbeats from Kafka; sweep accounts; "
        "publish results and halt state. Stops gracefully on SIGTERM/SIGINT."
    )


def cli_run(args: argparse.Namespace) -> int:
    """Entry point of ``killswitch run`` (settings errors exit 2 through the CLI)."""
    return run(settings_from_args(args))


# Net container allocations between collections of the youngest generation (the
# interpreter's default is 700); see tune_interpreter().
GC_YOUNG_THRESHOLD = 10_000


def tune_interpreter() -> None:
    """Settings of the interpreter for a daemon that serves kills from one event loop."""
    # Everything imported and built so far lives as long as the process: out of the
    # cycle collector's reach, a full collection during an alert storm (thousands of
    # records, tasks and results alive) scans only what the storm made.
    gc.collect()
    gc.freeze()
    # An alert storm allocates a few hundred containers per alert. At the default
    # first threshold (700) the collector runs hundreds of times a storm and its full
    # collections, each a pause of the event loop, come often enough to delay the
    # kills of accounts outside the storm; collecting the youngest generation every
    # GC_YOUNG_THRESHOLD allocations makes each pass larger but the full ones rare.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM/SIGINT; 0 after a graceful stop, 1 if it could not run
    (or its Kafka producer stopped working), 130 when a second signal cut the stop short
    (unfinished alerts are replayed)."""
    try:
        factory = loop_factory(settings.runtime.event_loop)
    except EventLoopUnavailable as exc:
        raise ConfigError(str(exc)) from None
    # Lines written by a thread of their own: a slow log output never holds up a kill.
    logs = configure_logging(settings.logging.level, settings.logging.format, threaded=True)
    # A line per final result (or per group of alike ones): a storm writes many a second.
    skip_unwritten_record_fields()
    tune_interpreter()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(async_run(settings, handle_signals=True))
    except asyncio.CancelledError:
        log.warning("stopped at once on a second signal")
        return EXIT_FORCED
    except ConfigError:
        if isinstance(logs, ThreadedLineHandler):
            logs.drain()  # the CLI prints it next: after the log's lines, not among them
        raise
    except Exception as exc:
        report_failure(exc, logs, sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def report_failure(
    exc: Exception, logs: logging.Handler, out: IO[str], drain_s: float = CLOSE_WAIT_S
) -> bool:
    """Log the daemon's failure, then print it (masked) to ``out`` after the log's lines;
    False when not printed: the log's writer has written nothing more for ``drain_s``
    (an output nobody reads), and a print to it would hold up the exit for ever."""
    log.critical("daemon failed", exc_info=exc)
    if isinstance(logs, ThreadedLineHandler) and not logs.drain(drain_s):
        return False
    message = default_masker.mask(f"{type(exc).__name__}: {exc}")
    print(f"killswitch: daemon failed: {message}", file=out)
    return True


def validate(settings: Settings) -> TriggerVerifier:
    """Checks beyond the settings schema; raises :class:`ConfigError` naming the setting."""
    try:
        verifier = TriggerVerifier(settings.trigger_signing)
    except TriggerKeyError as exc:
        raise ConfigError(str(exc)) from None
    known = {a.id for a in settings.accounts}
    for source in settings.deadman:
        accounts = source.scope.accounts
        unknown = [] if accounts == "*" else sorted(set(accounts) - known)
        if unknown:
            raise ConfigError(f"deadman[{source.source!r}].scope.accounts: unknown {unknown}")
    return verifier


# ---------------------------------------------------------------------- the daemon


@dataclass
class Daemon:
    """The running parts (exposed to tests through ``on_started``)."""

    settings: Settings
    instance: str
    publisher: Publisher
    engine: Engine
    intake: Intake
    dedup: DedupWindow
    deadman: DeadmanWatcher | None
    restored: list[HaltState]
    background: asyncio.Event  # stops the readers once the intake has drained
    observability: Observability
    ownership: Ownership  # which halted accounts this daemon guards
    kafka_watch: KafkaWatch | None = None  # whether the broker answers
    broker_loss: BrokerLossGuard | None = None  # None: no account opted in
    clients: ExchangeClients | None = None  # the accounts' clients: engine and probe
    republisher: HaltRepublisher | None = None  # halts the state topic lost, published again


async def async_run(
    settings: Settings,
    *,
    handle_signals: bool = False,
    ready_event: asyncio.Event | None = None,
    stop_event: asyncio.Event | None = None,
    on_started: Callable[[Daemon], None] | None = None,
) -> None:
    """Run until ``stop_event`` is set (or SIGTERM/SIGINT with ``handle_signals``)."""
    verifier = validate(settings)
    register_settings_secrets(settings.kafka, settings.accounts)
    stop = stop_event or asyncio.Event()
    if handle_signals:
        _install_signal_handlers(stop)
    # The daemon lives in a task of its own: a cancellation of this one (a second
    # signal, or a caller cutting the run short) becomes a request, ``now``, that the
    # daemon carries out in a task not itself being cancelled, so that stopping at once
    # (abandoning records' work, cancelling sweeps, closing clients) runs to its end.
    now = asyncio.Event()
    life = asyncio.create_task(
        _live(settings, verifier, stop, now, ready_event=ready_event, on_started=on_started),
        name="daemon",
    )
    try:
        await asyncio.shield(life)
    except asyncio.CancelledError:
        now.set()
        try:
            await asyncio.shield(life)
        except asyncio.CancelledError:
            # Cancelled again (a third signal): the clean-up is cut short too, and ends
            # before this returns.
            await cancel_and_wait(life)
        raise


async def _live(
    settings: Settings,
    verifier: TriggerVerifier,
    stop: asyncio.Event,
    now: asyncio.Event,
    *,
    ready_event: asyncio.Event | None,
    on_started: Callable[[Daemon], None] | None,
) -> None:
    """The daemon's lifetime: start, run until ``stop``, stop gracefully; ``now`` cuts the
    start-up or the graceful stop short."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            started = await unless_set(now, _start(settings, verifier, stop, stack))
        except Interrupted:
            log.warning("start-up cut short")
            return
        if started is None:
            log.info("stopped while waiting for Kafka")
            return
        daemon, spawn = started
        failure: Exception | None = None
        # The engine's lifetime (its sweeps and guards) encloses the parts that submit to
        # it. The long-lived parts (intake, readers, dead-man, probes) live in this group:
        # none outlives the daemon. Each handles its own failure (``_part``), so the group
        # never cancels the others on its own; the stop decides their order.
        async with daemon.engine, asyncio.TaskGroup() as tg:
            parts = spawn(tg)
            try:
                _announce(daemon, ready_event, on_started)
                try:
                    await unless_set(now, _graceful(daemon, parts, stop))
                except Interrupted:
                    await _stop_now(daemon)
            except Exception as exc:
                failure = exc  # raised as itself once the group has ended
            finally:
                for task in parts.values():
                    task.cancel()  # ended already after a graceful stop
        if failure is not None:
            raise failure
        if daemon.publisher.unusable is not None:
            # Exit 1 (run()): the supervisor starts the daemon again, with a new producer.
            raise ProducerUnusable(daemon.publisher.unusable)


def _stop_on_producer_failure(obs: Observability, stop: asyncio.Event) -> Callable[[str], None]:
    """What the publisher calls once its producer can deliver nothing any more: not
    ready (with the reason) from then on, and the graceful stop, after which the daemon
    exits 1 for its supervisor to start it again. aiokafka does not recover such a
    producer; a new process rebuilds everything from Kafka (halts, the dedup window,
    counts of unfinished alerts) with a new one, and no record is committed without its
    results meanwhile (they wait, and are replayed by the partition's next owner)."""

    def failed(reason: str) -> None:
        obs.producer_failed(reason)
        log.error("stopping: no output can be published; exit 1 follows the graceful stop")
        stop.set()

    return failed


def _announce(
    daemon: Daemon, ready_event: asyncio.Event | None, on_started: Callable[[Daemon], None] | None
) -> None:
    if on_started is not None:
        on_started(daemon)
    if ready_event is not None:
        ready_event.set()
    log.info(
        "daemon running",
        extra={"instance": daemon.instance, "accounts": len(daemon.settings.accounts)},
    )


async def _part(name: str, work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """One long-lived part of the daemon. Ending or failing before the stop stops the
    daemon (gracefully, as a signal does); a failure is logged here, not raised, so that
    the task group does not cancel the other parts before the graceful stop orders them."""
    try:
        await work
    except Exception:
        log.exception(f"{name} task failed; shutting down")
    finally:
        stop.set()


async def _graceful(
    daemon: Daemon, parts: dict[str, asyncio.Task[None]], stop: asyncio.Event
) -> None:
    """Until stop is requested (or a part ends), then the graceful stop."""
    await stop.wait()
    await _shutdown(daemon, parts)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    """The first SIGTERM/SIGINT stops gracefully; another one while stopping stops now,
    unless it comes within :data:`SAME_STOP_SIGNAL_S` of the first (the same request).

    Now: running sweeps are cancelled without results and their offsets stay
    uncommitted, so whoever consumes the partitions next replays them (at least once)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    first: float | None = None  # when the signal that started the stop came

    def on_signal() -> None:
        nonlocal first
        at = time.monotonic()
        if not stop.is_set():
            stop.set()
            first = at
            return
        if first is not None and at - first < SAME_STOP_SIGNAL_S:
            log.info("stop signal repeated at once: the same request, still stopping gracefully")
            return
        log.warning("second stop signal: stopping now; unfinished alerts will be replayed")
        if main is not None:
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def _paced_collector(stack: contextlib.AsyncExitStack) -> Callable[[bool], None]:
    """The intake's busy spells hold off the collector's older generations (gc_pacing.py)."""
    pacing = CollectorPacing()
    stack.callback(pacing.close)
    return pacing.set_busy


async def _start(
    settings: Settings,
    verifier: TriggerVerifier,
    stop: asyncio.Event,
    stack: contextlib.AsyncExitStack,
) -> tuple[Daemon, _Spawn] | None:
    """Start every part; the long-lived tasks are started by the returned function, in the
    daemon's task group. None when ``stop`` was set while waiting for Kafka."""
    kafka = settings.kafka
    topics = kafka.topics
    instance = f"{kafka.client_id}-{uuid.uuid4().hex[:8]}"
    obs = prometheus_observability(settings.metrics, settings.accounts, settings.deadman)
    await _start_listener(obs, stack)

    # Keys first: a bad key is a configuration error, found before touching Kafka.
    try:
        clients = ExchangeClients(
            settings.accounts,
            observer=obs.observer,
            exchange_info_ttl_s=settings.engine.exchange_info_ttl_s,
            transport=settings.engine.http_transport,
        )
    except KeyLoadError as exc:
        raise ConfigError(str(exc)) from None
    stack.push_async_callback(clients.close)

    # Who hears of the link's changes: readiness now, the broker-loss guard once made.
    # What runs after the broker comes back, with the topics that had to be made again.
    up_hooks: list[Callable[[list[str]], Awaitable[None]]] = []
    watch = _kafka_watch(settings, link_listeners := [obs.set_kafka], up_hooks, stack)
    if not await watch.wait_until_up(lambda: ensure_topics(kafka), stop):
        return None
    producer = make_producer(kafka)
    await producer.start()
    publisher = Publisher(
        producer, topics, daemon=instance, on_unusable=_stop_on_producer_failure(obs, stop)
    )
    stack.push_async_callback(lambda: _within(_kafka_stop_s(watch), publisher.close()))
    engine, loss = _engine(settings, clients, obs, publisher, link_listeners)
    # Set before any halt is restored: nothing is guarded until the first assignment.
    ownership = Ownership(topics.alerts)
    engine.set_guard_filter(ownership.owns)
    # After the broker comes back (empty, if it lost its storage), the halts held here
    # that the state topic lacks are published again by their owner.
    republisher = HaltRepublisher(
        engine,
        lambda: read_last_states(kafka, topics.state, _STARTUP_READ_TIMEOUT_S),
        ownership.owns,
    )
    link_listeners.append(republisher.link_changed)

    states = HaltStateReader(kafka, topics.state, daemon=instance)
    stack.push_async_callback(states.close)
    halted = await states.start(_STARTUP_READ_TIMEOUT_S)
    for state in halted.values():
        engine.restore_halt(state)
    if halted:
        log.warning("halted accounts restored", extra={"accounts": sorted(halted)})

    dedup = DedupWindow(settings.intake.dedup_window)
    deferrable = TurnBudget(DEFERRABLE_PER_TURN_S)  # shared by the intake and the index
    index = await _results_index(settings, dedup, deferrable, stack)

    intake = Intake(
        IntakeConfig.from_sections(
            settings.kafka, settings.intake, settings.engine, (a.id for a in settings.accounts)
        ),
        kafka,
        engine,
        publisher,
        dedup,
        verifier=verifier,
        observer=obs.alert_observer,
        results_index=index,
        pairs=clients,
        on_consuming=obs.set_consuming,
        on_busy=_paced_collector(stack),
        on_assignment=lambda: _move_guards(intake, ownership, engine, republisher),
        deferrable=deferrable,
    )
    await intake.start()
    stack.push_async_callback(intake.close)
    # After a broker that lost its logs: the intake first (its seek has no await, so no
    # record of a new alerts log is taken up at an old offset), then the readers.
    up_hooks.extend(
        [intake.broker_back, publisher.broker_back, index.broker_back, states.broker_back]
    )

    watcher = await _deadman_watcher(settings, publisher, obs, stack, up_hooks)

    background = asyncio.Event()  # stops the readers after the intake has drained
    probe = ExchangeProbe(
        clients,
        probe_interval_s(settings.metrics.exchange_stale_after_s),
        obs.readiness,
        page_size=settings.engine.page_size,
    )

    def spawn(tg: asyncio.TaskGroup) -> dict[str, asyncio.Task[None]]:
        """The long-lived parts, started in ``tg``; named for the ordered stop."""
        works: dict[str, Coroutine[Any, Any, None]] = {
            "intake": intake.run(),
            # Defers to the intake: a storm's alerts first, its results read after.
            "results-reader": index.run(background, intake.idle),
            "state-follower": states.follow(background, _state_applier(engine, republisher)),
            "halt-republish": republisher.run(background),
            "lag": watch_loop_lag(obs.alert_observer, background),
        }
        if watcher is not None:
            works["deadman"] = watcher.run(stop)
        if loss is not None:
            # Until the engine has stopped: kills finishing in the grace period are held too.
            works["broker-loss"] = loss.run(background)
        # Ends when the stop begins: the consumer it probes is closed during the stop.
        works["kafka-watch"] = watch.run(intake.consumer.topics, stop)
        works["exchange-probe"] = probe.run(background)
        return {name: tg.create_task(_part(name, w, stop), name=name) for name, w in works.items()}

    daemon = Daemon(
        settings,
        instance,
        publisher,
        engine,
        intake,
        dedup,
        watcher,
        list(halted.values()),
        background,
        obs,
        ownership,
        watch,
        loss,
        clients,
        republisher,
    )
    return daemon, spawn


async def _results_index(
    settings: Settings,
    dedup: DedupWindow,
    deferrable: TurnBudget,
    stack: contextlib.AsyncExitStack,
) -> ResultsIndex:
    """The results reader, caught up: ``dedup`` rebuilt from the results topic's tail."""
    index = ResultsIndex(
        settings.kafka,
        settings.kafka.topics.results,
        dedup,
        settings.intake.dedup_window * _RESULTS_TAIL_FACTOR,
        deferrable=deferrable,
    )
    stack.push_async_callback(index.close)
    await index.start()
    await index.catch_up(_STARTUP_READ_TIMEOUT_S)
    log.info(
        "dedup window rebuilt",
        extra={"results": index.learned, "unfinished_with_progress": len(index.carry)},
    )
    return index


async def _deadman_watcher(
    settings: Settings,
    publisher: Publisher,
    obs: Observability,
    stack: contextlib.AsyncExitStack,
    up_hooks: list[Callable[[list[str]], Awaitable[None]]],
) -> DeadmanWatcher | None:
    """The dead-man watcher, started (and told when the broker comes back); None when
    no dead-man source is configured."""
    if not settings.deadman:
        return None
    watcher = DeadmanWatcher(
        settings.kafka,
        settings.deadman,
        publisher,
        [a.id for a in settings.accounts],
        observer=obs.alert_observer,
    )
    stack.push_async_callback(watcher.close)
    await watcher.start()
    up_hooks.append(watcher.broker_back)
    return watcher


async def _start_listener(obs: Observability, stack: contextlib.AsyncExitStack) -> None:
    """The /metrics listener; a busy port is a configuration error (one line, exit 2)."""
    if obs.start is not None:
        try:
            await obs.start()
        except HealthServerError as exc:
            raise ConfigError(
                f"{exc} (another process uses it? set metrics.port or "
                "KILLSWITCH_METRICS__PORT; 0 picks a free port)"
            ) from None
    if obs.stop is not None:
        stack.push_async_callback(obs.stop)


def _kafka_watch(
    settings: Settings,
    listeners: list[OnChange],
    up_hooks: list[Callable[[list[str]], Awaitable[None]]],
    stack: contextlib.AsyncExitStack,
) -> KafkaWatch:
    """The broker watch, its log filter on from now on; every change of the link goes to
    each of ``listeners`` (the list may grow). After the broker comes back, missing
    topics are created again (a broker that lost its storage returns empty), then each
    of ``up_hooks`` (the list may grow) runs with the topics made again."""
    kafka = settings.kafka

    def changed(up: bool, reason: str) -> None:
        for listener in listeners:
            listener(up, reason)

    async def recovered() -> None:
        created = await ensure_topics(kafka)
        for hook in up_hooks:
            try:
                # Bounded: the watch runs these before it can notice the next outage.
                async with asyncio.timeout(RECOVERY_STEP_S):
                    await hook(created)
            except Exception:  # one step failing must stop neither the watch nor the others
                log.exception("recovery step failed after kafka came back")

    watch = KafkaWatch(kafka.bootstrap_servers, changed, on_up=recovered)
    watch.attach_log_filter()
    stack.callback(watch.detach_log_filter)
    return watch


def _engine(
    settings: Settings,
    clients: ExchangeClients,
    obs: Observability,
    publisher: Publisher,
    link_listeners: list[OnChange],
) -> tuple[Engine, BrokerLossGuard | None]:
    """The engine, and the broker-loss guard when an account opted in: the guard submits
    its kills to the engine, and the engine's halt states go through the guard (held
    while the broker is away)."""
    loss = _broker_loss_guard(settings, publisher, lambda r, p: engine.start(r, p))  # noqa: PLW0108 - late-bound
    if loss is not None:
        link_listeners.append(loss.link_changed)
    engine = Engine(
        clients,
        settings.engine.engine_config(),
        obs.observer,
        publisher.state if loss is None else loss.state,
        concurrency={a.id: a.max_concurrency for a in settings.accounts},
    )
    return engine, loss


def _broker_loss_guard(
    settings: Settings, publisher: Publisher, start: KillStart
) -> BrokerLossGuard | None:
    """The broker-loss policy for the accounts that opted in (None: none did)."""
    after_s = {
        a.id: a.on_broker_loss_after_s
        for a in settings.accounts
        if a.on_broker_loss_after_s is not None
    }
    if not after_s:
        return None
    log.info("broker-loss policy on", extra={"after_s": after_s})
    return BrokerLossGuard(
        after_s,
        start,
        publish_result=lambda result: publisher.result(ResultRecord.of(result), wait=True),
        publish_state=publisher.state,
        progress=publisher.progress_sink(None),
        deadline_s=settings.engine.default_deadline_s,
        daemon=(publisher.daemon or "").rpartition("-")[2],
    )


async def _move_guards(
    intake: Intake, ownership: Ownership, engine: Engine, republisher: HaltRepublisher
) -> None:
    """After a rebalance: guard exactly the halted accounts whose alerts partition is ours
    (and publish the halts the state topic lost that are ours now)."""
    assignment = intake.assignment
    count = await intake.partition_count(ownership.topic) if assignment else None
    ownership.update(assignment, count)
    await engine.refresh_guards()
    republisher.assignment_changed()
    log.info(
        "latch guards follow the assignment",
        extra={
            "partitions": sorted(ownership.assigned),
            "guarded": sorted(engine.guarded()),
            "halted": len(engine.halted()),
        },
    )


def _state_applier(engine: Engine, republisher: HaltRepublisher) -> Callable[[HaltState], None]:
    def apply(state: HaltState) -> None:
        log.info(
            "halt state from another daemon",
            extra={"account": state.account, "halted": state.halted, "alert_id": state.alert_id},
        )
        engine.restore_halt(state)
        republisher.state_seen(state)

    return apply


async def _shutdown(daemon: Daemon, parts: dict[str, asyncio.Task[None]]) -> None:
    grace = daemon.settings.engine.shutdown_grace_s
    started = time.monotonic()
    log.info("shutting down", extra={"grace_s": grace})
    daemon.observability.set_draining()
    daemon.intake.stop()
    first = [parts[name] for name in ("deadman",) if name in parts]
    for task in first:
        await _finish(task)
    # Sweeps first, within the grace period: their results are published and their
    # offsets committed; only then are the engine's latch guards stopped. The intake's
    # run ends here: it lasts as long as the records' work it owns.
    kafka_s = _kafka_stop_s(daemon.kafka_watch)
    if not await _within(grace + 2 * kafka_s, daemon.intake.shutdown(grace, kafka_s)):
        # Leave now: what was not committed is replayed.
        await _within(kafka_s, daemon.intake.close())
    await daemon.engine.close(max(0.0, grace - (time.monotonic() - started)))
    daemon.background.set()
    for task in parts.values():
        if task not in first:
            await _finish(task)
    with contextlib.suppress(Exception):
        await _within(_kafka_stop_s(daemon.kafka_watch), daemon.publisher.flush())
    log.info("stopped", extra={"seconds": round(time.monotonic() - started, 3)})


def _kafka_stop_s(watch: KafkaWatch | None) -> float:
    """How long a Kafka step of the stop may take: short when the broker is known gone."""
    down = watch is not None and watch.link.up is False
    return _KAFKA_GONE_STOP_S if down else _KAFKA_STOP_S


async def _within(seconds: float, step: Awaitable[None]) -> bool:
    """A Kafka step of the shutdown, given up after ``seconds`` (False): with the broker
    gone, aiokafka retries commits and deliveries for as long as it is allowed to, and a
    stop must end. Offsets not committed are replayed by the next owner (at least once)."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        log.warning("kafka did not answer while stopping; going on without it")
        return False
    return True


async def _stop_now(daemon: Daemon) -> None:
    """The stop was cut short: cancel the records' work, then the sweeps, before the
    producer and the clients close. No result of a sweep cut short is published (its
    alert is replayed); work that completed before was published and stays so."""
    daemon.observability.set_draining()
    await daemon.intake.abandon()
    await daemon.engine.close(0.0)
    await daemon.intake.close()  # leave the group now; nothing more is committed


async def _finish(task: asyncio.Task[None], timeout_s: float = 5.0) -> None:
    """Wait for a task that was told to stop; cancel it if it does not."""
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(task)
    except TimeoutError:
        await cancel_and_wait(task)
    except Exception:
        log.exception(f"{task.get_name()} ended with an error")
