"""Broker loss: readiness follows the broker, the log stays quiet, the lifecycle holds.

Each test runs a broker of its own (it is killed and restarted on the same port; the
embedded broker keeps topics in memory, so a restarted one is empty and the daemon
creates its topics again, as it does at start-up):

- the broker frozen (SIGSTOP): not ready within 10 s (no error, only silence), ready
  again after SIGCONT;
- the broker SIGKILLed under a running daemon: ``/readyz`` 503 with a Kafka reason and
  ``killswitch_kafka_up 0`` within 10 s, the Kafka client's log records bounded; the
  broker back on the same port: ready again, and an alert is processed to a final result;
- the daemon started with no broker: it stays up and not ready ("waiting for Kafka at
  HOST:PORT"); the broker started: ready, and an alert is processed;
- the broker gone and one SIGTERM (idle, mid-sweep, or still waiting for it): exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from killswitch.embedded import EmbeddedBroker
from tests.support.broker import kill_broker, metric, wait_kafka_up, wait_ready
from tests.support.daemon import DaemonProcess, Daemons, daemon_config, wait_http, write_config
from tests.support.exchange import Exchange, exchange
from tests.support.topics import Producer, TopicCollector, alert
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNTS = ["mm-1"]
SYMBOLS = ["BTC_USDT"]
DETECT_S = 10.0  # the promise: not ready within 10 s of losing the broker
WINDOW_S = 8.0  # a window of the outage over which the client's log records are counted
# Per kind of client record once per 30 s plus one change line and summaries: a few
# dozen at most, where the unfiltered client writes hundreds a second.
MAX_CLIENT_LINES = 30


def config(ex: Exchange, broker: EmbeddedBroker, tag: str) -> dict[str, Any]:
    return daemon_config(broker.bootstrap, tag, ex.account_configs())


async def readyz(daemon_url: str) -> httpx.Response:
    return await wait_http(f"{daemon_url}/readyz")


def client_records(daemon: DaemonProcess) -> int:
    """Log records of the Kafka client in the daemon's log (aiokafka's loggers)."""
    return sum(1 for r in daemon.log_records() if str(r.get("logger", "")).startswith("aiokafka"))


async def alert_processed(bootstrap: str, topics: dict[str, str], alert_id: str) -> None:
    """Produce a kill for mm-1 and wait for its final result."""
    async with (
        TopicCollector(bootstrap, topics["results"]) as results,
        Producer(bootstrap) as producer,
    ):
        await producer.send(topics["alerts"], alert(alert_id, ACCOUNTS), key="mm-1")
        await wait_for(lambda: "mm-1" in {r["account"] for r in results.finals(alert_id)}, 60)
        assert results.finals(alert_id)[0]["status"] == "flat"


async def test_broker_killed_then_back_on_the_same_port(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    broker.start()
    async with exchange(ACCOUNTS, SYMBOLS, seed=21) as ex:
        settings = config(ex, broker, "loss")
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", settings))
        await wait_ready(url, True, timeout=60)
        assert await metric(url, "killswitch_kafka_up") == 1
        ex.seed("mm-1", SYMBOLS, 5)
        # Offsets read before the loss: the restarted (empty) broker numbers from 0 again.
        await alert_processed(broker.bootstrap, settings["kafka"]["topics"], "before-loss")

        kill_broker(broker)
        lost = await wait_ready(url, False, timeout=DETECT_S)
        reasons = lost.json()["reasons"]
        assert any("kafka" in reason.lower() for reason in reasons), reasons
        await wait_kafka_up(url, 0, timeout=DETECT_S)
        assert (await metric(url, "killswitch_ready")) == 0

        before = client_records(daemon)
        # Holding the outage for a window over which records are counted (not a sync).
        await asyncio.sleep(WINDOW_S)
        assert daemon.running
        assert client_records(daemon) - before <= MAX_CLIENT_LINES

        broker.start()  # same port
        await wait_ready(url, True, timeout=60)
        assert await metric(url, "killswitch_kafka_up") == 1
        ex.seed("mm-1", SYMBOLS, 5)
        await alert_processed(broker.bootstrap, settings["kafka"]["topics"], "after-loss")
        assert ex.open_ids("mm-1") == set()
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0


async def test_broker_frozen_then_resumed(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    broker.start()
    async with exchange(ACCOUNTS, SYMBOLS, seed=26) as ex:
        settings = config(ex, broker, "frozen")
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", settings))
        await wait_ready(url, True, timeout=60)
        os.kill(broker.pid, signal.SIGSTOP)  # requests hang: only the probe's deadline tells
        try:
            lost = await wait_ready(url, False, timeout=DETECT_S)
            assert any("kafka" in reason.lower() for reason in lost.json()["reasons"])
            assert await metric(url, "killswitch_kafka_up") == 0
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await wait_ready(url, True, timeout=60)
        assert await metric(url, "killswitch_kafka_up") == 1
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0


async def test_started_without_a_broker_waits_for_it(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS, seed=22) as ex:
        settings = config(ex, broker, "late")
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", settings))
        waiting = await readyz(url)
        assert waiting.status_code == 503
        assert f"waiting for Kafka at {broker.bootstrap}" in waiting.json()["reasons"]
        assert (await wait_http(f"{url}/healthz")).status_code == 200
        assert await metric(url, "killswitch_kafka_up") == 0
        # Several backoff rounds later: still up and waiting (the daemon never gives up).
        await asyncio.sleep(4.0)
        assert daemon.running
        assert (await readyz(url)).status_code == 503

        broker.start()
        await wait_ready(url, True, timeout=60)
        ex.seed("mm-1", SYMBOLS, 5)
        await alert_processed(broker.bootstrap, settings["kafka"]["topics"], "late-broker")
        assert ex.open_ids("mm-1") == set()
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0


async def test_one_sigterm_with_the_broker_gone_is_a_graceful_stop(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    broker.start()
    async with exchange(ACCOUNTS, SYMBOLS, seed=23) as ex:
        settings = config(ex, broker, "gone")
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", settings))
        await wait_ready(url, True, timeout=60)
        kill_broker(broker)
        await wait_kafka_up(url, 0, timeout=DETECT_S)
        daemon.terminate()
        assert await daemon.wait(timeout=60) == 0


async def test_one_sigterm_while_waiting_for_the_broker_is_a_graceful_stop(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS, seed=24) as ex:
        settings = config(ex, broker, "never")
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", settings))
        assert (await readyz(url)).status_code == 503
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0


async def test_sigterm_mid_sweep_with_the_broker_gone(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    broker.start()
    async with exchange(ACCOUNTS, SYMBOLS, seed=25) as ex:
        ex.seed("mm-1", SYMBOLS, 400)
        settings = daemon_config(
            broker.bootstrap,
            "midsweep",
            ex.account_configs(rate_limit_per_second=20.0, burst=2, max_concurrency=2),
            engine={"shutdown_grace_s": 3.0, "default_deadline_s": 60.0},
        )
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", settings))
        await wait_ready(url, True, timeout=60)
        async with Producer(broker.bootstrap) as producer:
            await producer.send(settings["kafka"]["topics"]["alerts"], alert("mid", ACCOUNTS))
        await wait_for(lambda: len(ex.log("cancel")) >= 5, timeout=30)
        kill_broker(broker)
        await wait_kafka_up(url, 0, timeout=DETECT_S)
        daemon.terminate()
        assert await daemon.wait(timeout=60) == 0
