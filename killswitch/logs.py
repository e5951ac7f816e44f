"""Structured logs: one JSON object per line, or a readable line in a terminal.

Call sites pass context as ``extra={"alert_id": ..., "account": ..., "order_id": ...}``.
Registered secrets are masked in every rendered line, exception and traceback included,
as a last line of defence; the first is never to put a secret into a log call at all.
:func:`register_settings_secrets` registers every secret of the configuration (the Kafka
section and the accounts) at start-up.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from collections.abc import Sequence

    from killswitch.config import AccountSettings, KafkaSettings

__all__ = [
    "MASK",
    "JsonFormatter",
    "SecretMasker",
    "TextFormatter",
    "ThreadedLineHandler",
    "configure_logging",
    "default_masker",
    "quiet_libraries",
    "register_secrets",
    "register_settings_secrets",
    "settings_secrets",
    "skip_unwritten_record_fields",
]

MASK = "**********"
_CONTEXT_FIELDS = ("alert_id", "account", "order_id", "symbol", "source", "operator", "outcome")
_CORE_FIELDS = frozenset({"ts", "level", "logger", "event", "error", "traceback", "stack"})
_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_MIN_SECRET_LEN = 6  # shorter strings would mask ordinary words
NOISY_LOGGERS = ("aiokafka", "kafka", "httpx", "httpcore", "asyncio", "aiohttp")


class SecretMasker:
    """Replaces registered secrets with ``**********`` in any text. Thread-safe.

    A multi-line secret (a PEM key) is also registered line by line, so a fragment of it
    is masked too; so are each secret's JSON-escaped and ``repr()`` forms, which is how it
    appears inside a JSON line or an exception message (``KeyError`` shows the repr) when it
    contains quotes, backslashes or control characters.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()  # longest first, replaced atomically as a whole

    def register(self, values: Iterable[str]) -> None:
        """Mask these strings from now on (strings under 6 characters are ignored)."""
        with self._lock:
            found = set(self._secrets)
            for value in values:
                for part in _fragments(value):
                    found.update(_escaped_forms(part))
            self._secrets = tuple(sorted(found, key=len, reverse=True))

    def clear(self) -> None:
        """Forget every registered secret (tests)."""
        with self._lock:
            self._secrets = ()

    def __len__(self) -> int:
        return len(self._secrets)

    def mask(self, text: str) -> str:
        """``text`` with every registered secret replaced."""
        # Longest first, so a secret that contains another is masked whole.
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def _escaped_forms(secret: str) -> set[str]:
    forms = {secret, json.dumps(secret, ensure_ascii=False)[1:-1], json.dumps(secret)[1:-1]}
    forms.add(repr(secret)[1:-1])
    forms.add(ascii(secret)[1:-1])
    return forms


def _fragments(value: str) -> Iterator[str]:
    for raw in [value, *value.splitlines()]:
        part = raw.strip()
        # PEM armour lines ("-----BEGIN ...") are public boilerplate, not secret.
        if len(part) >= _MIN_SECRET_LEN and not part.startswith("-----"):
            yield part


default_masker = SecretMasker()
"""The process-wide masker the formatters use unless given their own."""


def register_secrets(values: Iterable[str]) -> None:
    """Mask these strings (and each line of multi-line ones, e.g. PEM bodies) in all output."""
    default_masker.register(values)


def settings_secrets(kafka: KafkaSettings, accounts: Sequence[AccountSettings]) -> list[str]:
    """Every secret value of the sections that hold secrets: each ``SecretStr`` in the
    Kafka section (SASL and TLS passwords) and the accounts (API keys, inline private keys,
    passphrases, TLS key passwords), plus the contents of private key files that can be
    read. No other section of the configuration holds a ``SecretStr`` (a unit test keeps
    that so)."""
    found = [secret.get_secret_value() for secret in _walk_secrets([kafka, *accounts])]
    for account in accounts:
        if account.private_key_file is not None:
            # Unreadable now: the client reports that when it loads the key.
            with contextlib.suppress(OSError):
                found.append(account.private_key_file.read_text(errors="replace"))
    return [value for value in found if value]


def _walk_secrets(value: object) -> Iterator[SecretStr]:
    if isinstance(value, SecretStr):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk_secrets(getattr(value, name))
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _walk_secrets(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_secrets(item)


def register_settings_secrets(
    kafka: KafkaSettings,
    accounts: Sequence[AccountSettings],
    masker: SecretMasker | None = None,
) -> int:
    """Register every secret of these sections for masking; returns how many values."""
    values = settings_secrets(kafka, accounts)
    (masker if masker is not None else default_masker).register(values)
    return len(values)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string must not lose the event (nor print its args)
        return f"{record.msg} (unformattable log arguments)"


def _exception(record: logging.LogRecord) -> tuple[str | None, str | None]:
    """``"Type: message"`` and the formatted traceback of the record's exception, if any."""
    if not record.exc_info or record.exc_info[1] is None:
        return None, None
    exc = record.exc_info[1]
    summary = f"{type(exc).__name__}: {exc}"
    return summary, logging.Formatter().formatException(record.exc_info)


class _Formatter(logging.Formatter):
    def __init__(self, masker: SecretMasker | None = None) -> None:
        super().__init__()
        self._masker = masker if masker is not None else default_masker


class JsonFormatter(_Formatter):
    """One JSON object per line: ts, level, logger, event, context fields, extras,
    and ``error`` / ``traceback`` when an exception is attached."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _message(record),
        }
        for key, value in _extras(record).items():
            # An extra named like a core field must not overwrite it.
            entry[f"extra_{key}" if key in _CORE_FIELDS else key] = value
        error, trace = _exception(record)
        if error is not None:
            entry["error"] = error
            entry["traceback"] = trace
        if record.stack_info:
            entry["stack"] = record.stack_info
        # json.dumps escapes newlines, so a traceback stays on this one line. One pass
        # over the line masks a secret wherever it was: JSON escapes each character on
        # its own, so a secret inside any key or value appears in the line as its escaped
        # form, which is registered with it (_escaped_forms). Masking every value first
        # as well cost several times the rest of the line's making (a storm writes many
        # lines a second).
        return self._masker.mask(json.dumps(entry, default=str, ensure_ascii=False))


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    # A storm writes many lines a second: each second is written out once.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class TextFormatter(_Formatter):
    """``HH:MM:SS level event key=value ...`` for people at a terminal; a traceback,
    when there is one, follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = _extras(record)
        ordered = [k for k in _CONTEXT_FIELDS if k in extras] + sorted(
            k for k in extras if k not in _CONTEXT_FIELDS
        )
        tail = " ".join(f"{k}={_text_value(extras[k])}" for k in ordered)
        line = f"{stamp} {record.levelname.lower():<7} {_message(record)}"
        if tail:
            line = f"{line}  {tail}"
        error, trace = _exception(record)
        if error is not None:
            line = f"{line}  error={error}\n{trace}"
        if record.stack_info:
            line = f"{line}\n{record.stack_info}"
        return self._masker.mask(line)


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(ch.isspace() or ch == "=" for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class _KillswitchHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler :func:`configure_logging` installed, so a second call replaces it."""


# Lines waiting for the writer thread at most (a few MB); beyond, lines are dropped and
# counted, and a line saying how many comes before the next one written.
MAX_QUEUED_LINES = 10_000
# How long closing the handler waits for the lines still queued to be written.
CLOSE_WAIT_S = 2.0


class ThreadedLineHandler(_KillswitchHandler):
    """Formats each record where it is logged (the event loop: secrets are masked there)
    and leaves the write to a thread of its own, so a log output that is slow or full (a
    pipe its reader does not drain) never holds up the event loop, and a kill with it.

    The standard library's ``QueueListener`` has neither a bound on its queue that drops
    and says so nor a bounded wait at close; hence this small writer. Lines keep their
    order; lines still queued when the process is killed are lost."""

    def __init__(self, stream: IO[str], max_lines: int = MAX_QUEUED_LINES) -> None:
        super().__init__(stream)
        self._lines: queue.Queue[str | threading.Event | None] = queue.Queue(max_lines)
        self._debug_room = max(1, max_lines // 2)  # DEBUG lines queued at most
        self._dropped = 0
        # The marker of the latest drain that gave up waiting for it (see drain).
        self._behind: threading.Event | None = None
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._writer.start()

    @property
    def queued(self) -> int:
        """Lines waiting for the writer (the line it is writing not counted)."""
        return self._lines.qsize()

    @property
    def writing(self) -> bool:
        """Whether the writer thread runs (until :meth:`close`)."""
        return self._writer.is_alive()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.INFO and self._lines.qsize() >= self._debug_room:
            # DEBUG gives way first: the INFO lines (final results among them) keep the
            # other half of the queue.
            self._dropped += 1
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self._dropped and self._offer(self._dropped_line(record)):
            self._dropped = 0
        if not self._dropped and self._offer(line):
            return
        self._dropped += 1

    def _offer(self, line: str) -> bool:
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            return False
        return True

    def _dropped_line(self, record: logging.LogRecord) -> str:
        notice = logging.makeLogRecord(
            {
                "name": __name__,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "log lines dropped: the log output did not keep up",
                "created": record.created,
                "msecs": record.msecs,
                "dropped": self._dropped,
            }
        )
        return self.format(notice)

    def _write(self) -> None:
        while True:
            item = self._lines.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()  # every line before it is written
                continue
            # A failed write has nowhere left to be told; the next line tries again.
            with contextlib.suppress(Exception):
                self.stream.write(item + self.terminator)
                if self._lines.empty():
                    self.stream.flush()

    def drain(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Wait until the lines queued so far are written; False after ``timeout``."""
        if not self._writer.is_alive():
            return True
        if self._behind is not None and not self._behind.is_set():
            return False  # a drain gave up, and the lines before it are still not written
        written = threading.Event()
        try:
            self._lines.put(written, timeout=timeout)
        except queue.Full:
            return False
        if written.wait(timeout):
            return True
        self._behind = written
        return False

    def close(self) -> None:
        """Write what is queued (waiting :data:`CLOSE_WAIT_S` at most, once: not again
        after a drain that gave up, whose lines are still not written), then stop."""
        if self._writer.is_alive() and self.drain():
            with contextlib.suppress(queue.Full):
                self._lines.put(None, timeout=CLOSE_WAIT_S)
            self._writer.join(CLOSE_WAIT_S)
        super().close()


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "text"] = "auto",
    stream: IO[str] | None = None,
    masker: SecretMasker | None = None,
    *,
    threaded: bool = False,
) -> logging.Handler:
    """Install one handler on the root logger (idempotent) and return it.

    ``auto`` writes JSON unless ``stream`` (default stderr) is a terminal. ``threaded``
    (the daemon): lines are written by a thread of their own (:class:`ThreadedLineHandler`).
    """
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not _isatty(out))
    handler = ThreadedLineHandler(out) if threaded else _KillswitchHandler(out)
    handler.setFormatter(JsonFormatter(masker) if use_json else TextFormatter(masker))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _KillswitchHandler):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays at WARNING unless we are debugging.
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel("DEBUG" if level == "DEBUG" else "WARNING")
    return handler


def skip_unwritten_record_fields() -> None:
    """Stop the logging module working out, for every record, what neither formatter
    writes: the calling frame's file and line (a walk of the stack), the thread, process
    and multiprocessing names (the module's documented optimisations). Process-wide: the
    daemon calls it; a test process keeps them for its own log capture."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def quiet_libraries() -> None:
    """Hide the libraries' own log lines (the Kafka client's "Unable connect to ...")
    from an operator's command: each command reports a failure once, in its own words,
    and a bare library line before it only confuses. ``killswitch --verbose`` skips
    this; the daemon's :func:`configure_logging` sets these loggers' levels again."""
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.CRITICAL + 1)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
