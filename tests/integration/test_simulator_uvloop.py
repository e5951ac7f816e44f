"""The simulator's HTTP layer on uvloop, the event loop ``killswitch simulate-exchange``
runs by default: framing, fault and robustness tests of ``test_simulator_http`` again,
each in a loop of uvloop's (whose transports are not ``asyncio.Transport`` subclasses)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from killswitch.simulator.cli import loop_factory
from tests.integration import test_simulator_http as http_tests
from tests.integration.test_simulator_http import GARBAGE, Served, raw_exchange, serving

pytestmark = pytest.mark.integration

Case = Callable[[Served], Awaitable[None]]


async def _a_large_answer_then_close_arrives_whole(served: Served) -> None:
    body = json.dumps({"api_key": served.api_key, "symbol": "BTC_USDT", "count": 20_000}).encode()
    request = b"POST /_admin/orders HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    ((status, answer),) = await raw_exchange(served.server.port, request % (len(body), body), 1)
    assert status == 200
    assert len(json.loads(answer)["order_ids"]) == 20_000


async def _on_uvloop(served: Served) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


CASES: list[Case] = [
    _on_uvloop,
    _a_large_answer_then_close_arrives_whole,
    http_tests.test_cancel_flow_and_errors,
    http_tests.test_error_and_latency_faults,
    http_tests.test_drop_and_timeout_faults,
    http_tests.test_pipelined_requests_are_answered_in_order,
    http_tests.test_requests_split_across_packets_and_bodies_in_a_pipeline,
    http_tests.test_a_bad_request_is_answered_after_the_delayed_ones_before_it,
    http_tests.test_a_head_trickled_past_the_limit_gets_431,
    http_tests.test_keep_alive_serves_many_requests_on_one_connection,
    *(
        functools.partial(http_tests.test_garbage_gets_an_error_and_the_server_lives_on, **case)
        for case in ({"data": data, "status": status} for data, status in GARBAGE)
    ),
]


def _name(case: Case) -> str:
    if isinstance(case, functools.partial):  # one of GARBAGE
        index = [data for data, _ in GARBAGE].index(case.keywords["data"])
        return f"garbage_{index}_gets_{case.keywords['status']}"
    return case.__name__.removeprefix("test_").lstrip("_")


@pytest.mark.parametrize("case", CASES, ids=[_name(case) for case in CASES])
def test_on_uvloop(case: Case) -> None:
    async def run() -> None:
        async with serving() as served:
            await case(served)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


def test_the_command_picks_uvloop_unless_told_otherwise() -> None:
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
