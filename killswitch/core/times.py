"""Timestamps in messages (pure): one writer and one reader for every record.

Every time a message carries is ISO-8601 UTC with milliseconds and ``Z``
(``2026-11-24T01:02:03.456Z``). Records are read back leniently: an offset other than
``Z`` is converted, and a time without one is read as UTC (what every writer means).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def format_time(value: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and ``Z`` (``2026-11-24T01:02:03.456Z``); a naive
    time is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    # isoformat (C) rather than strftime: every result carries three of these.
    return utc.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_time(value: Any) -> datetime | None:
    """A record's time, aware (read as UTC when it names no offset); None when it is
    not an ISO-8601 string. Never raises."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
