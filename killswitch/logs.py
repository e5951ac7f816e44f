"""Structured logs: one JSON object per line, or a readable line in a terminal.

Call sites pass context as ``extra={"alert_id": ..., "account": ..., "order_id": ...}``.
Registered secrets are masked in every rendered line as a last line of defence;
the first is never to put a secret into a log call at all.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable
from typing import IO, Any, Literal

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "register_secrets"]

_CONTEXT_FIELDS = ("alert_id", "account", "order_id", "symbol", "source", "operator", "outcome")
_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_MASK = "**********"
_MIN_SECRET_LEN = 6  # shorter strings would mask ordinary words


def register_secrets(values: Iterable[str]) -> None:
    """Mask these strings (and each line of multi-line ones, e.g. PEM bodies) in all output."""
    with _secrets_lock:
        for value in values:
            for raw in [value, *value.splitlines()]:
                part = raw.strip()
                if len(part) >= _MIN_SECRET_LEN and not part.startswith("-----"):
                    _secrets.add(part)


def _mask(text: str) -> str:
    if not _secrets:
        return text
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, context fields, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            entry["error"] = f"{type(exc).__name__}: {exc}"
        return _mask(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level event key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = _extras(record)
        ordered = [k for k in _CONTEXT_FIELDS if k in extras] + sorted(
            k for k in extras if k not in _CONTEXT_FIELDS
        )
        tail = " ".join(f"{k}={extras[k]}" for k in ordered)
        line = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}"
        if tail:
            line = f"{line}  {tail}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line = f"{line}  error={type(exc).__name__}: {exc}"
        return _mask(line)


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "text"] = "auto",
    stream: IO[str] | None = None,
) -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_killswitch", False):
            root.removeHandler(old)
    handler._killswitch = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays at WARNING unless we are debugging.
    for noisy in ("aiokafka", "kafka", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel("DEBUG" if level == "DEBUG" else "WARNING")
