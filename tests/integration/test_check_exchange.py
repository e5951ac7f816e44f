"""``killswitch check`` against a working exchange that answers one request badly: a
single 429 (or 5xx) of the time endpoint is asked again, not reported as the exchange
being unreachable."""

from __future__ import annotations

import pytest

from killswitch.commands.check import _exchange_checks
from killswitch.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client

pytestmark = pytest.mark.integration


async def test_one_throttled_clock_sync_is_asked_again() -> None:
    # The simulator's clock moves 10 s per time request answered, so a 429 storm of
    # the first second throttles exactly the first time request, whatever the timing.
    holder: list[Simulator] = []

    def clock() -> float:
        return 10.0 * holder[0].count(endpoint="time") if holder else 0.0

    sim = Simulator(seed=0, monotonic=clock)
    holder.append(sim)
    api_key, pem = register_test_client(sim, name="mm-1")
    sim.set_faults(EndpointFaults(storm_period_s=1000.0, storm_duration_s=1.0), endpoint="time")
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        account = account_settings(server.base_url, api_key, pem, "mm-1")
        checks = await _exchange_checks(account, timeout_s=5)
    assert sim.count(endpoint="time", status=429) == 1
    assert [(c.name, c.ok) for c in checks] == [
        ("exchange reachable", True),
        ("key accepted", True),
    ]


async def test_a_page_size_the_exchange_refuses_fails_the_key_check() -> None:
    sim = Simulator(seed=0, max_page_limit=50)
    api_key, pem = register_test_client(sim, name="mm-1")
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        account = account_settings(server.base_url, api_key, pem, "mm-1")
        too_big = await _exchange_checks(account, timeout_s=5, page_size=100)
        fits = await _exchange_checks(account, timeout_s=5, page_size=50)
    assert [c.ok for c in too_big] == [True, False]
    assert "engine.page_size" in too_big[1].detail
    assert [c.ok for c in fits] == [True, True]


async def test_a_listing_throttled_to_the_end_is_not_called_a_refused_key() -> None:
    sim = Simulator(seed=0)
    api_key, pem = register_test_client(sim, name="mm-1")
    sim.set_faults(EndpointFaults(throttle_rate=1.0), endpoint="open_orders")
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        account = account_settings(server.base_url, api_key, pem, "mm-1")
        checks = await _exchange_checks(account, timeout_s=5)
    assert sim.count(endpoint="open_orders", status=429) >= 1
    assert [(c.name, c.ok) for c in checks] == [
        ("exchange reachable", True),
        ("key accepted", False),
    ]
    assert checks[1].detail.startswith(
        "not known, not refused: listing open orders, the exchange was throttled (HTTP 429) "
        "through every retry (gave up after "
    ), checks[1].detail
