"""A kill handed on to the daemon that owns an account (pure codec).

A record is read by the daemon assigned its partition, which owns the record's key
(the first account it names). An alert naming several accounts, or a trigger on a
manual topic whose partitions do not match the alerts topic's, may name accounts this
daemon does not own: for each of those it publishes a *forward* to the alerts topic,
keyed by the account, so the owner reads it and sweeps that account alone. The
forward carries the original record's value unchanged (a signed trigger is verified
again by the owner, exactly as written) and the channel it came in on.

``{"schema": "killswitch.forward/v1", "account": ..., "channel": "alerts"|"manual",
"value": <the original record's value, UTF-8 text>}``
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from killswitch.contracts import Channel

FORWARD_SCHEMA = "killswitch.forward/v1"
# How a forward begins (encode_forward writes the schema first): records that do not
# begin so are never decoded twice.
_PREFIX = b'{"schema":"' + FORWARD_SCHEMA.encode() + b'"'
# Larger originals are swept where they are read: a forward a little larger than its
# original could exceed a broker's message limit that the original just met.
MAX_FORWARD_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class Forward:
    """A forward as read: the account to sweep, and the original record."""

    account: str
    channel: Channel
    value: bytes


def encode_forward(account: str, channel: Channel, value: bytes) -> bytes:
    """The forward of ``value`` (the original record's value) for ``account``."""
    body = {
        "schema": FORWARD_SCHEMA,
        "account": account,
        "channel": channel,
        "value": value.decode("utf-8"),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def is_forward(value: bytes | None) -> bool:
    """Whether ``value`` is a forward (by its first bytes)."""
    return value is not None and value.startswith(_PREFIX)


def decode_forward(value: bytes) -> Forward | str:
    """The forward in ``value``, or why it cannot be read."""
    try:
        body: Any = json.loads(value)
    except (ValueError, RecursionError):
        return "forward: not JSON"
    if not isinstance(body, dict):
        return "forward: not an object"
    account, channel, inner = body.get("account"), body.get("channel"), body.get("value")
    if not isinstance(account, str) or not account:
        return "forward: account missing"
    if channel not in ("alerts", "manual"):
        return "forward: channel must be alerts or manual"
    if not isinstance(inner, str):
        return "forward: value missing"
    return Forward(account, channel, inner.encode("utf-8"))
