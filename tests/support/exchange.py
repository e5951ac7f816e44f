"""The exchange simulator in the test process, with one key pair per account.

Runs in the test's event loop, so it outlives any daemon the test kills and its books
are the truth a test checks ("flat" is what the simulator says, not the daemon).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from killswitch.simulator import LogEntry, Simulator, SimulatorServer
from killswitch.simulator.core import Reply, Request
from killswitch.simulator.testing import register_test_client
from tests.support.daemon import SWEEP_PAGE_SIZE, account_config

CANCEL_ENDPOINTS = frozenset({"cancel", "cancel_batch", "cancel_all"})


@dataclass(frozen=True)
class CancelAnswer:
    """When a cancel request arrived and when its answer leaves (``inf``: never)."""

    client: str
    received: float  # time.monotonic()
    leaves: float


class AnswerTimingSimulator(Simulator):
    """A :class:`Simulator` that notes when the answer to each cancel leaves.

    The server writes an answer no earlier than its delay after the request was
    handled (held and dropped answers never), so a cancel whose answer is due later
    than now is one its client has sent and not had answered: in flight.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancel_answers: list[CancelAnswer] = []

    def handle(self, request: Request) -> Reply:
        reply = super().handle(request)
        if request.method == "DELETE" and request.api_key in self.api_keys():
            now = time.monotonic()
            never = bool(reply.hold_s or reply.drop)
            leaves = math.inf if never else now + reply.delay_s
            self.cancel_answers.append(CancelAnswer(self.label(request.api_key), now, leaves))
        return reply


@dataclass
class Exchange:
    """A simulator served on loopback, one registered client per account (label = id)."""

    sim: Simulator
    server: SimulatorServer
    keys: dict[str, tuple[str, bytes]] = field(repr=False)  # account -> (api key, PEM)

    def api_key(self, account: str) -> str:
        return self.keys[account][0]

    def seed(self, account: str, symbols: Iterable[str], per_symbol: int) -> set[int]:
        ids: set[int] = set()
        for symbol in symbols:
            ids |= set(self.sim.seed_orders(self.api_key(account), symbol, per_symbol))
        return ids

    def open_ids(self, account: str, symbols: Iterable[str] | None = None) -> set[int]:
        key = self.api_key(account)
        if symbols is None:
            return self.sim.open_order_ids(key)
        return {i for s in symbols for i in self.sim.open_order_ids(key, s)}

    def log(self, endpoint: str | None = None, since: int = 0) -> list[LogEntry]:
        return [e for e in self.sim.log_since(since) if endpoint is None or e.endpoint == endpoint]

    def sweep_requests(self, since: int = 0) -> list[LogEntry]:
        """Requests only a sweep makes after log entry ``since``: cancels, and listings
        with the engine's page size other than the one the daemon's readiness probe
        makes each round (the first page of the first pair the exchange lists, of the
        engine's page size too, as a kill asks). A sweep's first page of that pair
        looks the same and is not counted: its cancels, its other pairs and its later
        pages are."""
        return [
            e
            for e in self.sim.log_since(since)
            if e.endpoint in CANCEL_ENDPOINTS
            or (
                e.endpoint == "open_orders"
                and f"limit={SWEEP_PAGE_SIZE}" in e.query
                and not probe_shaped(self.sim, e)
            )
        ]

    def cancels(self, account: str) -> list[int]:
        """Order ids of every single-order cancel the account sent, in order."""
        return [
            e.order_id
            for e in self.sim.log_since(0)
            if e.endpoint == "cancel" and e.client == account and e.order_id is not None
        ]

    def cancels_in_flight(self, since: float) -> int:
        """Cancels received since ``since`` (``time.monotonic()``) whose answer has not
        left yet: sent by a client and not answered (see :class:`AnswerTimingSimulator`).
        """
        assert isinstance(self.sim, AnswerTimingSimulator)
        now = time.monotonic()
        return sum(1 for a in self.sim.cancel_answers if a.received >= since and a.leaves > now)

    def last_seq(self) -> int:
        entries = self.sim.log_since(0)
        return entries[-1].seq if entries else 0

    def account_configs(self, **options: Any) -> list[dict[str, Any]]:
        """``[[accounts]]`` entries for a daemon pointed at this simulator."""
        return [
            account_config(account, api_key, pem, self.server.base_url, **options)
            for account, (api_key, pem) in self.keys.items()
        ]

    def secrets(self) -> list[str]:
        """Every API key and every private key (whole, and each base64 line of the PEM)."""
        out: list[str] = []
        for api_key, pem in self.keys.values():
            out.append(api_key)
            out.append(pem.decode())
            out.extend(
                line
                for line in pem.decode().splitlines()
                if line and not line.startswith("-----") and len(line) >= 16
            )
        return out


@contextlib.asynccontextmanager
async def exchange(
    accounts: Sequence[str], symbols: Sequence[str] | None = None, seed: int = 1, **limits: Any
) -> AsyncIterator[Exchange]:
    """A simulator trading ``symbols`` (its own default list when None) with a client per
    account (``limits``: per client)."""
    sim = AnswerTimingSimulator(seed=seed, symbols=None if symbols is None else list(symbols))
    keys = {a: register_test_client(sim, name=a, **limits) for a in accounts}
    async with SimulatorServer(sim) as server:
        yield Exchange(sim, server, keys)


def probe_shaped(sim: Simulator, entry: LogEntry) -> bool:
    """Whether ``entry`` is a listing the daemon's readiness probe makes: the first page
    (no cursor) of the first pair ``sim`` lists. The probe lists the engine's page size,
    as a kill does, so a kill's first page of that pair is indistinguishable from it."""
    symbols = sim.symbols
    return (
        entry.endpoint == "open_orders"
        and bool(symbols)
        and entry.query.startswith(f"symbol={symbols[0]}&")
        and "from_order_id=" not in entry.query
    )
