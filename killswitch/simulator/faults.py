"""Fault and race settings and the pure decisions drawn from them.

Every random choice goes through the simulator's one seeded ``random.Random``,
so a run is reproducible from its seed and its request sequence.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

ERROR_STATUSES = (500, 502, 503, 504)
# A token counts as whole within float rounding: a client pacing at exactly the
# rate must never be refused because 0.1 * 10 came out as 0.9999999999.
_ONE_TOKEN = 1.0 - 1e-9


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` stored.

    A request takes one token or is refused (the simulator answers 429); a refused
    request takes nothing, so a client pacing just under ``rate`` is never refused.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or not math.isfinite(rate):
            raise ValueError("rate must be a positive number")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token at time ``now`` (seconds, monotonic); False when empty."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        tokens = min(tokens, self.burst)
        self.stamp = now
        if tokens >= _ONE_TOKEN:
            self.tokens = max(tokens - 1.0, 0.0)
            return True
        self.tokens = tokens
        return False

    def refund(self) -> None:
        """Give back one token (a later check refused the request after all)."""
        self.tokens = min(self.burst, self.tokens + 1.0)

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until a request would be accepted (0: at once)."""
        tokens = min(self.tokens + (now - self.stamp) * self.rate, self.burst)
        return max(0.0, (1.0 - tokens) / self.rate)


class SlidingWindow:
    """At most ``floor(rate * window_s)`` (at least 1) accepted requests in any
    trailing ``window_s`` seconds. Refused requests do not count.

    A deque of the accepted requests' times, oldest first: each request drops the
    times that left the window and compares the length, O(1) amortised.
    """

    __slots__ = ("limit", "times", "window_s")

    def __init__(self, rate: float, window_s: float) -> None:
        if rate <= 0 or not math.isfinite(rate):
            raise ValueError("rate must be a positive number")
        if window_s <= 0 or not math.isfinite(window_s):
            raise ValueError("window must be a positive number of seconds")
        # The epsilon keeps 0.1/s over 10 s at 1 request, not 0 after float rounding.
        self.limit = max(1, math.floor(rate * window_s + 1e-9))
        self.window_s = window_s
        self.times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        times, edge = self.times, now - self.window_s
        while times and times[0] <= edge:
            times.popleft()

    def take(self, now: float) -> bool:
        """Count a request at ``now`` (seconds, monotonic); False when the window is full."""
        self._expire(now)
        if len(self.times) < self.limit:
            self.times.append(now)
            return True
        return False

    def refund(self) -> None:
        """Forget the latest accepted request (a later check refused it after all)."""
        if self.times:
            self.times.pop()

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until a request would be accepted (0: at once)."""
        self._expire(now)
        if len(self.times) < self.limit:
            return 0.0
        return self.times[0] + self.window_s - now


Limiter = TokenBucket | SlidingWindow


def default_burst(rate: float) -> int:
    """One second's worth of requests, at least 1: what a per-second window allows."""
    return max(1, math.ceil(rate))


@dataclass(frozen=True, slots=True)
class EndpointFaults:
    """Faults for one endpoint (or all). Rates are fractions of requests in [0, 1].

    One uniform draw per request picks at most one of: drop, timeout, 5xx error,
    forced 429, in that order of the cumulative rates. Latency is added to every
    answer (fixed plus uniform jitter). During a storm window every request gets 429.
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = ERROR_STATUSES
    timeout_rate: float = 0.0
    # A timed-out request is held this long without an answer, then its socket is
    # closed; clients normally give up first. Bounded so a test run always ends.
    timeout_hold_s: float = 30.0
    drop_rate: float = 0.0
    throttle_rate: float = 0.0
    # 429 storms: the first ``storm_duration_s`` of every ``storm_period_s``
    # (counted from when the faults were set) answers 429 to everything.
    storm_period_s: float = 0.0
    storm_duration_s: float = 0.0
    # When true the request still takes effect (the order is cancelled) before
    # the fault hides the answer: a 504 after the backend did the work.
    after_effect: bool = False

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.timeout_rate, self.drop_rate, self.throttle_rate)
        for name, value in zip(("error", "timeout", "drop", "throttle"), rates, strict=True):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}_rate must be within [0, 1]")
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError("error, timeout, drop and throttle rates add up to more than 1")
        for name in ("latency_ms", "jitter_ms", "timeout_hold_s", "storm_period_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0")
        if not 0 <= self.storm_duration_s <= max(self.storm_period_s, 0.0):
            raise ValueError("storm_duration_s must be within [0, storm_period_s]")
        if self.error_rate and not self.error_statuses:
            raise ValueError("error_statuses must not be empty when error_rate is set")
        for status in self.error_statuses:
            if not 400 <= status <= 599:
                raise ValueError("error_statuses must be HTTP error codes")

    @property
    def active(self) -> bool:
        """False when these settings change nothing (the fast path skips them)."""
        return bool(
            self.latency_ms
            or self.jitter_ms
            or self.error_rate
            or self.timeout_rate
            or self.drop_rate
            or self.throttle_rate
            or (self.storm_period_s and self.storm_duration_s)
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointFaults:
        """Build from JSON-like data; unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}")
        values = dict(data)
        if "error_statuses" in values:
            values["error_statuses"] = tuple(int(s) for s in values["error_statuses"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_statuses"] = list(self.error_statuses)
        return data


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What a fault does to one request. ``kind``: ``error``, ``throttle``, ``timeout``,
    ``drop`` or ``latency`` (only a delay)."""

    kind: str
    status: int = 0  # for error and throttle
    delay_s: float = 0.0
    hold_s: float = 0.0  # for timeout


def decide(faults: EndpointFaults, rng: random.Random, since_set_s: float) -> FaultDecision | None:
    """Draw this request's fault (None when the request goes through untouched)."""
    delay = faults.latency_ms / 1000.0
    if faults.jitter_ms:
        delay += rng.uniform(0.0, faults.jitter_ms) / 1000.0
    period = faults.storm_period_s
    if period and faults.storm_duration_s and since_set_s % period < faults.storm_duration_s:
        return FaultDecision("throttle", 429, delay)
    draw = rng.random()
    edge = faults.drop_rate
    if draw < edge:
        return FaultDecision("drop", 0, delay)
    edge += faults.timeout_rate
    if draw < edge:
        return FaultDecision("timeout", 0, delay, faults.timeout_hold_s)
    edge += faults.error_rate
    if draw < edge:
        return FaultDecision("error", rng.choice(faults.error_statuses), delay)
    edge += faults.throttle_rate
    if draw < edge:
        return FaultDecision("throttle", 429, delay)
    if delay:
        return FaultDecision("latency", 0, delay)
    return None


@dataclass(frozen=True, slots=True)
class Races:
    """The exchange moving under the client's feet, as probabilities per order.

    - ``close_before_cancel``: an open order about to be cancelled fills or is
      cancelled on its own first (answer ``order_already_closed`` / batch ``fail``).
    - ``spawn_on_cancel``: each cancelled order makes a new open order appear for
      the same client and symbol (at most ``max_spawned`` in all), so one pass of
      a sweep is not enough.
    - ``lose_cancel``: the answer is ``CANCEL_SENT`` but the order stays open
      (``CANCEL_SENT`` is not proof the order is gone).
    """

    close_before_cancel: float = 0.0
    spawn_on_cancel: float = 0.0
    max_spawned: int = 1_000
    lose_cancel: float = 0.0

    def __post_init__(self) -> None:
        for name in ("close_before_cancel", "spawn_on_cancel", "lose_cancel"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.max_spawned < 0:
            raise ValueError("max_spawned must be >= 0")

    @property
    def active(self) -> bool:
        return bool(self.close_before_cancel or self.spawn_on_cancel or self.lose_cancel)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Races:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown race setting(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
