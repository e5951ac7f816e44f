"""Records of one account keep their order into the engine whichever way each is taken
up (daemon in process, embedded broker, exchange simulator over loopback)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.exchange import exchange
from tests.support.inprocess import (
    ACCOUNTS,
    SYMBOLS,
    daemon_in_process,
    daemon_settings,
    prepare_topics,
)
from tests.support.intake import alert_message
from tests.support.topics import TopicCollector, produce
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


async def test_a_release_is_not_overtaken_by_the_large_latched_kill_before_it(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # A record over 64 KiB is parsed in a worker thread; the release behind it in the
    # same lane must still reach the engine after it, or the account stays halted.
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS, 2)
        latch = alert_message(
            "latch-1", latch=True, scope={"symbols": ["BTC_USDT"]}, note="x" * 70_000
        )
        release = alert_message("release-1", action="release")
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings) as running,
        ):
            await produce(settings, [latch, release])
            await wait_for(
                lambda: results.finals("latch-1") and results.finals("release-1"), timeout=30
            )
            assert results.finals("release-1")[0]["was_halted"] is True
            assert "mm-1" not in running.daemon.engine.halted()
