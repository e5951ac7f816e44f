"""What an exchange answer means: the outcome taxonomy of ``docs/CLIENT.md``, as plain code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

# A Retry-After beyond this is not a throttle window but a misreading (or an outage
# no request deadline would outlast): capped, so nothing waits for it.
MAX_RETRY_AFTER_S = 3600.0


class Outcome(StrEnum):
    """The final outcome of one order in one alert (a metric label and a result field)."""

    SENT = "sent"
    ALREADY_CLOSED = "already_closed"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"  # dry run only


class RejectReason(StrEnum):
    AUTH = "auth"
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    OTHER_4XX = "other_4xx"
    REDIRECT = "redirect"  # a 3xx: never followed, the base URL is wrong


class Verdict(StrEnum):
    """What to do with one HTTP answer."""

    DONE = "done"  # final outcome known
    THROTTLED = "throttled"  # 429: slow the limiter down, retry
    TRANSIENT = "transient"  # 5xx / timeout / connection error: retry with backoff


@dataclass(frozen=True, slots=True)
class Classification:
    verdict: Verdict
    outcome: Outcome | None = None
    reason: RejectReason | None = None
    error_code: str | None = None


THROTTLED = Classification(Verdict.THROTTLED)
TRANSIENT = Classification(Verdict.TRANSIENT)
_SENT = Classification(Verdict.DONE, Outcome.SENT)


def error_code(body: Any) -> str | None:
    """The ``error`` field of a flat JSON error body, if there is one."""
    # dict first: parsed JSON objects are dicts, and the Mapping ABC check costs more.
    if isinstance(body, (dict, Mapping)):
        code = body.get("error")
        if isinstance(code, str):
            return code
    return None


# Control and format characters (C0, C1, line/paragraph separators, zero-width and
# bidirectional marks): an exchange's text must not break a log line or hide its content.
# Lone surrogates too (a JSON escape can name half of a pair): no UTF-8 writer takes them.
_UNPRINTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069\ud800-\udfff]+"
)
# A long unbroken run of key-like characters: an API key, a signature or key material the
# exchange might echo back. Words of an error message are far shorter.
_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{24,}")
REDACTED = "[redacted]"
EXCHANGE_TEXT_MAX = 160


def exchange_text(value: Any, limit: int = EXCHANGE_TEXT_MAX) -> str | None:
    """The exchange's own error text (an ``error`` or ``message`` field), fit to be shown
    in a reason or a log line; None when it is not a non-empty string.

    It is the exchange's answer, not ours, but it may echo what we sent: control
    characters become spaces, whitespace runs one space, every run of 24 or more
    key-like characters (a key or a signature) is replaced by ``[redacted]``, and the
    text is cut at ``limit`` characters."""
    if not isinstance(value, str):
        return None
    text = " ".join(_UNPRINTABLE.sub(" ", value).split())
    text = _TOKEN.sub(REDACTED, text)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text or None


def error_message(body: Any) -> str | None:
    """The ``message`` field of a flat JSON error body, cleaned by :func:`exchange_text`."""
    if isinstance(body, (dict, Mapping)):
        return exchange_text(body.get("message"))
    return None


def classify_cancel(status: int, body: Any) -> Classification:
    """Map one cancel answer (HTTP status and parsed JSON body, or None) to a verdict."""
    if 200 <= status < 300:
        return _SENT
    code = error_code(body)
    if status == 429:
        return THROTTLED
    if status >= 500:
        return TRANSIENT
    if 300 <= status < 400:
        return Classification(Verdict.DONE, Outcome.REJECTED, RejectReason.REDIRECT, code)
    if status == 400 and code == "order_already_closed":
        return Classification(Verdict.DONE, Outcome.ALREADY_CLOSED, error_code=code)
    if status in (401, 403) or code == "invalid_client":
        return Classification(Verdict.DONE, Outcome.REJECTED, RejectReason.AUTH, code)
    if status == 404:
        return Classification(Verdict.DONE, Outcome.REJECTED, RejectReason.NOT_FOUND, code)
    if status == 400 and code == "invalid_request":
        return Classification(Verdict.DONE, Outcome.REJECTED, RejectReason.INVALID_REQUEST, code)
    return Classification(Verdict.DONE, Outcome.REJECTED, RejectReason.OTHER_4XX, code)


def classify_read(status: int) -> Verdict | None:
    """For non-cancel calls: None when the answer is usable or a final error, else retry kind."""
    if status == 429:
        return Verdict.THROTTLED
    if status >= 500:
        return Verdict.TRANSIENT
    return None


def retry_after_s(value: str | None, now_wall_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 10.2.3), or None.

    The value is a number of seconds (``"3"``) or an HTTP date (``"Sun, 29 Nov 2026
    18:00:03 GMT"``, compared with ``now_wall_s``, seconds since the epoch). A date in
    the past is 0; anything unreadable is None (no advice); at most an hour.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(int(value)), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now_wall_s), MAX_RETRY_AFTER_S)
