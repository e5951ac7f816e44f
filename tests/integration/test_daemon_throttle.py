"""The daemon end to end through a throttle window, on an exchange that also wants its
public endpoints signed: an alert on the broker, 800 orders, 150/s, every request
answered 429 for 3 s after the 50th: the final result is flat with no order failed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import wait_for
from tests.integration.daemon_harness import (
    daemon_in_process,
    daemon_settings,
    exchange,
    prepare_topics,
)
from tests.integration.intake_harness import TopicReader, alert_message, produce

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


async def test_a_kill_rides_out_a_throttle_window_end_to_end(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange() as ex:
        ex.sim.public_auth = True
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            account_mm_1={"rate_limit_per_second": 150.0, "burst": 20, "max_concurrency": 16},
            engine={"strategy": "per_order", "default_deadline_s": 30.0},
        )
        await prepare_topics(settings)
        seeded = ex.seed("mm-1", 400)
        async with (
            TopicReader(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings),
        ):
            ex.sim.set_throttle_window(after_requests=50, duration_s=3.0, retry_after="seconds")
            await produce(settings, [alert_message("throttled-1", ["mm-1"])])
            await wait_for(lambda: len(results.finals("throttled-1")) == 1, timeout=40)
        final = results.finals("throttled-1")[0]
    assert final["status"] == "flat"
    counts = final["counts"]
    assert counts["failed"] == 0
    assert counts["sent"] + counts["already_closed"] == len(seeded) == 800
    api_key = ex.keys["mm-1"][0]
    assert ex.sim.count(api_key, "cancel", 429) > 0  # the window did happen
    assert ex.open_ids("mm-1") == set()
