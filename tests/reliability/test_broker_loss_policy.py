"""Broker-loss policy (cancel on disconnect), with the daemon as a subprocess.

Each test runs a broker of its own (SIGKILLed and restarted on the same port; the
embedded broker keeps topics in memory, so the restarted one holds only what was
written after the restart) and the exchange simulator over real HTTP:

- ``mm-1`` opted in (``on_broker_loss_after_s``), ``mm-2`` not: the broker killed →
  every order of ``mm-1`` is cancelled (the simulator's books), and one placed while
  the broker is still away is cancelled too (the latch holds); ``mm-2`` is untouched.
  The broker back → the final result and the halt state of ``mm-1`` are published
  (``status`` shows the latch, by ``broker-loss``), nothing for ``mm-2``;
- the default configuration: the broker killed and away for a while → no cancel, and
  nothing published when it is back.

Absence is asserted after reading the topics to their end offsets.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from killswitch.commands.status import read_status
from killswitch.config import load_settings
from killswitch.core.model import HaltState
from killswitch.embedded import EmbeddedBroker
from tests.support.broker import kill_broker, wait_kafka_up, wait_ready
from tests.support.daemon import Daemons, daemon_config, write_config
from tests.support.exchange import CANCEL_ENDPOINTS, Exchange, exchange
from tests.support.topics import TopicCollector, read_to_end
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNTS = ["mm-1", "mm-2"]
SYMBOLS = ["BTC_USDT", "ETH_USDT"]
AFTER_S = 1.0  # mm-1's on_broker_loss_after_s
DETECT_S = 10.0  # the daemon declares the broker lost within this (its readiness promise)
# How long the default-configuration test keeps the broker away: past detection and
# many times the opted-in threshold above (an outage, not a synchronisation).
QUIET_WINDOW_S = 4.0


def settings_for(ex: Exchange, broker: EmbeddedBroker, tag: str, opted: bool) -> dict[str, Any]:
    accounts = ex.account_configs()
    if opted:
        for account in accounts:
            if account["id"] == "mm-1":
                account["on_broker_loss_after_s"] = AFTER_S
    return daemon_config(broker.bootstrap, tag, accounts)


def cancels_of(ex: Exchange, account: str) -> list[Any]:
    return [e for e in ex.log() if e.endpoint in CANCEL_ENDPOINTS and e.client == account]


async def halted_accounts(config: Path) -> dict[str, HaltState]:
    """What ``killswitch status`` shows (the state topic read to its end)."""
    states = await read_status(load_settings(config).kafka, 30.0)
    return {s.account: s for s in states}


async def test_opted_in_account_is_killed_and_latched_when_the_broker_is_lost(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    broker.start()
    async with exchange(ACCOUNTS, SYMBOLS, seed=31) as ex:
        settings = settings_for(ex, broker, "cod", opted=True)
        topics = settings["kafka"]["topics"]
        config = write_config(tmp_path / "killswitch.toml", settings)
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(config)
        await wait_ready(url, True, timeout=60)
        ex.seed("mm-1", SYMBOLS, 5)
        kept = ex.seed("mm-2", SYMBOLS, 5)

        kill_broker(broker)
        await wait_kafka_up(url, 0, timeout=DETECT_S)
        await wait_for(lambda: ex.open_ids("mm-1") == set(), timeout=60)
        # The latch holds while the broker is away: a new order is cancelled too.
        late = ex.seed("mm-1", SYMBOLS[:1], 1)
        await wait_for(lambda: not (late & ex.open_ids("mm-1")), timeout=60)
        assert ex.open_ids("mm-2") == kept
        assert cancels_of(ex, "mm-2") == []
        assert daemon.running

        broker.start()  # same port, empty
        await wait_ready(url, True, timeout=60)
        async with TopicCollector(broker.bootstrap, topics["results"]) as results:

            def mm1_final() -> list[dict[str, Any]]:
                return [
                    r
                    for r in results.finals()
                    if r["account"] == "mm-1" and r["alert_id"].startswith("broker-loss-mm-1-")
                ]

            await wait_for(lambda: bool(mm1_final()), timeout=60)
        final = mm1_final()[0]
        assert re.fullmatch(r"broker-loss-mm-1-\d{8}T\d{6}Z-[0-9a-f]{8}", final["alert_id"])
        assert final["status"] == "flat"
        assert final["source"] == "broker-loss"
        assert "on_broker_loss_after_s" in final["trigger_reason"]
        assert final["counts"]["sent"] >= 2 * 5

        halted = await halted_accounts(config)
        assert set(halted) == {"mm-1"}
        assert halted["mm-1"].halted
        assert halted["mm-1"].by == "broker-loss"
        assert halted["mm-1"].alert_id == final["alert_id"]
        assert "on_broker_loss_after_s" in halted["mm-1"].reason

        everything = (await read_to_end(broker.bootstrap, topics["results"])).json()
        assert [r for r in everything if r.get("account") == "mm-2"] == []
        assert ex.open_ids("mm-2") == kept
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0


async def test_default_configuration_does_nothing_on_broker_loss(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    broker.start()
    async with exchange(ACCOUNTS, SYMBOLS, seed=32) as ex:
        settings = settings_for(ex, broker, "nocod", opted=False)
        topics = settings["kafka"]["topics"]
        config = write_config(tmp_path / "killswitch.toml", settings)
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(config)
        await wait_ready(url, True, timeout=60)
        seeded = {a: ex.seed(a, SYMBOLS, 5) for a in ACCOUNTS}

        kill_broker(broker)
        await wait_kafka_up(url, 0, timeout=DETECT_S)
        await asyncio.sleep(QUIET_WINDOW_S)  # the outage lasts (not a synchronisation)
        broker.start()
        await wait_ready(url, True, timeout=60)

        for account in ACCOUNTS:
            assert ex.open_ids(account) == seeded[account]
            assert cancels_of(ex, account) == []
        assert (await read_to_end(broker.bootstrap, topics["results"])).json() == []
        assert await halted_accounts(config) == {}
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0
