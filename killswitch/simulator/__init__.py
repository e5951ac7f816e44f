"""The Ajaib exchange simulator: faithful, fast, fault-injecting, served over real HTTP.

In-process::

    sim = Simulator(seed=0)
    api_key, private_pem = register_test_client(sim)   # from .testing
    sim.seed_orders(api_key, "BTC_USDT", 500)
    async with SimulatorServer(sim) as server:
        ...  # point an account's base_url at server.base_url

Standalone: ``killswitch simulate-exchange --help``. Admin calls: docs/SIMULATOR.md.
"""

from killswitch.simulator.core import (
    ENDPOINTS,
    LogEntry,
    Reply,
    Simulator,
)
from killswitch.simulator.faults import EndpointFaults, Races, SlidingWindow, TokenBucket
from killswitch.simulator.server import SimulatorServer

__all__ = [
    "ENDPOINTS",
    "EndpointFaults",
    "LogEntry",
    "Races",
    "Reply",
    "Simulator",
    "SimulatorServer",
    "SlidingWindow",
    "TokenBucket",
]
