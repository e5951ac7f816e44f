"""Is Kafka there? Waiting for it at start-up, watching it afterwards, and a quiet log.

The signal is a cheap public call with a deadline: ``AIOKafkaConsumer.topics()`` (one
metadata request, raising ``KafkaError`` when no broker answers) on the alert
consumer, every :data:`PROBE_INTERVAL_S`, bounded by :data:`PROBE_TIMEOUT_S` (a frozen
broker never answers), and at once when the Kafka client logs an error. The aiokafka
consumer retries internally and never reports a lost broker to its caller, so its own
state cannot be relied on; a metadata answer is what "the broker answers" means.

A lost broker makes aiokafka log hundreds of error records a second.
:class:`ClientLogFilter` (on the log handlers) lets each kind of record through once
per summary period while the link is up and drops them all while it is down; the
watch logs one line per change of state and a "kafka still down" summary with the
count every :data:`SUMMARY_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from aiokafka.errors import KafkaError

from killswitch.core.kafka_link import KafkaLink, LinkChange
from killswitch.tasks import wait_any

__all__ = [
    "PROBE_INTERVAL_S",
    "PROBE_TIMEOUT_S",
    "SUMMARY_EVERY_S",
    "ClientLogFilter",
    "KafkaWatch",
]

log = logging.getLogger(__name__)

# Detection within interval + timeout (6 s), well inside the 10 s readiness promise;
# a metadata request every 2 s is negligible load for a broker.
PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 4.0
SUMMARY_EVERY_S = 30.0
# Start-up: first retry soon (a broker starting alongside), then back off to this.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
# A broker that is starting may accept connections before it answers: a few tries.
REFUSALS_FATAL = 3
_CONNECT_TIMEOUT_S = 1.0
_CLIENT_LOGGERS = ("aiokafka", "kafka")

Probe = Callable[[], Awaitable[object]]
OnChange = Callable[[bool, str], None]


def _is_client(record: logging.LogRecord) -> bool:
    name = record.name
    return any(name == prefix or name.startswith(prefix + ".") for prefix in _CLIENT_LOGGERS)


class ClientLogFilter(logging.Filter):
    """Aggregates the Kafka client's WARNING-and-above records (install on handlers).

    While the link is down every such record is dropped and counted; otherwise each
    kind (logger and message template) passes once per ``period_s`` and the repeats
    are counted. Every ERROR record asks the watch to probe now.
    """

    def __init__(self, watch: KafkaWatch, period_s: float, clock: Callable[[], float]) -> None:
        super().__init__()
        self._watch = watch
        self._period = period_s
        self._clock = clock
        self._passed: dict[tuple[str, str], float] = {}
        self._last: logging.LogRecord | None = None
        self._verdict = True

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not _is_client(record):
            return True
        # On several handlers, one record is seen once per handler: count and decide once.
        if record is self._last:
            return self._verdict
        self._last, self._verdict = record, self._decide(record)
        return self._verdict

    def _decide(self, record: logging.LogRecord) -> bool:
        self._watch.client_error(record.levelno >= logging.ERROR)
        if self._watch.link.up is False:
            return False
        kind = (record.name, str(record.msg))
        now = self._clock()
        last = self._passed.get(kind)
        if last is not None and now - last < self._period:
            return False
        self._passed[kind] = now
        return True


class KafkaWatch:
    """The daemon's view of its broker: readiness, the ``killswitch_kafka_up`` gauge, logs.

    ``on_change(up, reason)`` is called on every change of state (and once before the
    first attempt at start-up, as not up); ``on_up`` runs after each recovery, before
    ready is reported (the daemon re-creates missing topics, a broker that lost its
    storage coming back empty, and has the intake read those topics from the start).
    """

    def __init__(
        self,
        bootstrap: str,
        on_change: OnChange,
        *,
        on_up: Callable[[], Awaitable[object]] | None = None,
        summary_every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = bootstrap
        self.link = KafkaLink(summary_every_s=summary_every_s)
        self._on_change = on_change
        self._on_up = on_up
        self._clock = clock
        self._filter = ClientLogFilter(self, summary_every_s, clock)
        self._handlers: list[logging.Handler] = []
        self._poke = asyncio.Event()
        self._down_since_wall: datetime | None = None

    # ---------------------------------------------------------------- log filter

    def attach_log_filter(self) -> None:
        """Filter the Kafka client's records on every handler of the root logger."""
        for handler in logging.getLogger().handlers:
            if handler not in self._handlers:
                handler.addFilter(self._filter)
                self._handlers.append(handler)

    def detach_log_filter(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self._filter)
        self._handlers.clear()

    def client_error(self, is_error: bool) -> None:
        """A client record was seen (from the filter): count it; an error probes now."""
        self.link.client_error()
        if is_error and self.link.up is not False:
            self._poke.set()

    # ---------------------------------------------------------------- start-up

    async def wait_until_up(self, attempt: Probe, stop: asyncio.Event) -> bool:
        """Run ``attempt`` until it succeeds (True) or ``stop`` is set (False).

        Retries with exponential backoff (:data:`BACKOFF_FIRST_S` doubling up to
        :data:`BACKOFF_MAX_S`); not ready meanwhile, with the reason
        "waiting for Kafka at HOST:PORT". Waiting is for a broker that is not there:
        when something accepts TCP connections at the address but ``attempt`` still
        fails :data:`REFUSALS_FATAL` times in a row (a wrong CA, SASL credentials or
        protocol), that is a configuration problem and raises ``KafkaError``."""
        waiting = f"waiting for Kafka at {self.bootstrap}"
        self._on_change(False, waiting)
        delay = BACKOFF_FIRST_S
        refusals = 0
        while not stop.is_set():
            try:
                await attempt()
            except (KafkaError, OSError, TimeoutError) as exc:
                refusals = refusals + 1 if await any_listening(self.bootstrap) else 0
                if refusals >= REFUSALS_FATAL:
                    raise KafkaError(
                        f"Kafka at {self.bootstrap} accepts connections but refuses this "
                        f"client (check security_protocol, ssl and sasl): {exc}"
                    ) from exc
                change = self.link.probe_failed(waiting, self._clock())
                if change is not None:
                    self._announce(change, error=exc)
                self._maybe_summarise()
                if await _wait_event(stop, delay):
                    return False
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._changed(self.link.probe_ok(self._clock()))
            return True
        return False

    # ---------------------------------------------------------------- running

    async def run(
        self,
        probe: Probe,
        stop: asyncio.Event,
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        """Probe until ``stop`` is set: every ``interval_s``, or at once on a client error."""
        while not stop.is_set():
            self._poke.clear()
            await self.check(probe, timeout_s)
            self._maybe_summarise()
            await wait_any([self._poke, stop], interval_s)

    async def check(self, probe: Probe, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """One probe; updates the state (and says whether the broker answered)."""
        try:
            async with asyncio.timeout(timeout_s):
                await probe()
        except Exception as exc:  # any failure of the probe means no usable answer
            reason = f"kafka unreachable at {self.bootstrap} ({_describe(exc, timeout_s)})"
            change = self.link.probe_failed(reason, self._clock())
            if change is not None:
                self._announce(change, error=exc)
            return False
        change = self.link.probe_ok(self._clock())
        if change is not None:
            await self._recovered()  # topics first, then ready
            self._changed(change)
        return True

    # ---------------------------------------------------------------- reporting

    def _changed(self, change: LinkChange | None) -> None:
        if change is not None:
            self._announce(change)

    def _announce(self, change: LinkChange, error: BaseException | None = None) -> None:
        self._on_change(change.up, change.reason)
        extra: dict[str, object] = {"bootstrap": self.bootstrap}
        if change.up:
            self._down_since_wall = None
            if change.down_for_s:
                extra |= {"down_s": round(change.down_for_s, 1), "client_errors": change.errors}
            log.info("kafka up", extra=extra)
            return
        self._down_since_wall = datetime.now(UTC)
        cause = _describe(error, PROBE_TIMEOUT_S) if error is not None else ""
        if cause and cause not in change.reason:
            extra["cause"] = cause
        log.error(f"kafka down: {change.reason}", extra=extra)

    def _maybe_summarise(self) -> None:
        if not self.link.summary_due(self._clock()):
            return
        since = self._down_since_wall or datetime.now(UTC) - timedelta(
            seconds=self._clock() - self.link.since
        )
        stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        log.warning(
            f"kafka still down: {self.link.errors} client errors since {stamp}",
            extra={"bootstrap": self.bootstrap, "reason": self.link.reason},
        )

    async def _recovered(self) -> None:
        if self._on_up is None:
            return
        try:
            await self._on_up()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("kafka back, but recovery failed", extra={"error": repr(exc)})


async def any_listening(bootstrap: str, timeout_s: float = _CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection opens to any of the ``host:port`` addresses in
    ``bootstrap`` (comma-separated; IPv6 hosts in brackets)."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit():
            continue
        try:
            async with asyncio.timeout(timeout_s):
                _reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g}s"
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True if ``event`` was set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
