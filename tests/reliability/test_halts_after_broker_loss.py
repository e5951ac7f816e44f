"""Halt states survive a broker that comes back empty.

The broker (a test's own) is SIGKILLed and restarted on the same port; the embedded
broker keeps topics in memory, so the restarted one is empty and the daemon creates
its topics again. The daemon kept guarding the account it had latched; once the
broker answers again it publishes that halt again, so ``killswitch status`` (the
state topic read to its end) and any daemon started afterwards know the latch. A
release afterwards is the account's last record: the republished halt does not
come back over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from killswitch.commands.common import OperatorError
from killswitch.commands.status import read_status
from killswitch.config import load_settings
from killswitch.contracts import decode_state
from killswitch.core.model import HaltState
from killswitch.embedded import EmbeddedBroker
from tests.support.broker import kill_broker, wait_kafka_up, wait_ready
from tests.support.daemon import Daemons, daemon_config, write_config
from tests.support.exchange import exchange
from tests.support.topics import Producer, TopicCollector, alert, read_to_end
from tests.support.waiting import wait_for, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNTS = ["mm-1", "mm-2"]
SYMBOLS = ["BTC_USDT"]
DETECT_S = 10.0  # the daemon declares the broker lost within this


async def halted_accounts(config: Path) -> dict[str, HaltState]:
    """What ``killswitch status`` shows (the state topic read to its end); empty while
    the state topic does not exist yet."""
    try:
        states = await read_status(load_settings(config).kafka, 10.0)
    except OperatorError:
        return {}
    return {s.account: s for s in states}


async def wait_halted(config: Path, expected: set[str], timeout: float) -> dict[str, HaltState]:
    """Poll ``status`` until it shows exactly ``expected`` halted, with a deadline."""
    return await wait_until(
        lambda: halted_accounts(config),
        lambda shown: set(shown) == expected,
        timeout,
        interval=0.2,
        what=lambda shown: f"status shows {sorted(shown)}, not {sorted(expected)}",
    )


async def send_and_wait_final(
    bootstrap: str, topics: dict[str, str], message: dict[str, Any]
) -> dict[str, Any]:
    async with (
        TopicCollector(bootstrap, topics["results"]) as results,
        Producer(bootstrap) as producer,
    ):
        await producer.send(topics["alerts"], message, key="mm-1")
        alert_id = message["alert_id"]
        await wait_for(lambda: bool(results.finals(alert_id)), timeout=60)
        return results.finals(alert_id)[0]


async def test_a_halt_is_published_again_when_the_broker_comes_back_empty(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    broker.start()
    async with exchange(ACCOUNTS, SYMBOLS, seed=41) as ex:
        settings = daemon_config(broker.bootstrap, "halts", ex.account_configs())
        topics = settings["kafka"]["topics"]
        config = write_config(tmp_path / "killswitch.toml", settings)
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(config)
        await wait_ready(url, True, timeout=60)
        ex.seed("mm-1", SYMBOLS, 3)
        latched = await send_and_wait_final(
            broker.bootstrap, topics, alert("latch-1", ["mm-1"], latch=True)
        )
        assert latched["status"] == "flat"
        before = await wait_halted(config, {"mm-1"}, timeout=30)

        kill_broker(broker)
        await wait_kafka_up(url, 0, timeout=DETECT_S)
        broker.start()  # same port, empty
        await wait_ready(url, True, timeout=60)

        after = await wait_halted(config, {"mm-1"}, timeout=30)
        assert after["mm-1"] == before["mm-1"]  # the same latch: alert, since, scope, who, why
        assert after["mm-1"].alert_id == "latch-1"
        assert after["mm-1"].by == "reliability"
        # The latch still holds on the exchange: a new order of mm-1 is cancelled.
        late = ex.seed("mm-1", SYMBOLS, 1)
        await wait_for(lambda: not (late & ex.open_ids("mm-1")), timeout=30)

        released = await send_and_wait_final(
            broker.bootstrap, topics, alert("release-1", ["mm-1"], action="release")
        )
        assert released["status"] == "released"
        assert await halted_accounts(config) == {}
        records = await read_to_end(broker.bootstrap, topics["state"])
        mine = [r for r in records.records if r.key == b"mm-1"]
        last = decode_state(mine[-1].value) if mine else None
        assert last is not None
        assert (last.account, last.halted, last.alert_id) == ("mm-1", False, "release-1")
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0
