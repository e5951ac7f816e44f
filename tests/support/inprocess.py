"""End-to-end helpers: daemon settings for an :class:`~tests.support.exchange.Exchange`,
daemons in process (``async_run``) or as subprocesses configured by environment
variables (``python -m killswitch run``; :mod:`tests.support.daemon` runs them from a
config file)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from killswitch.config import Settings
from killswitch.daemon import Daemon, async_run
from tests.support.daemon import REPO, wait_exit
from tests.support.exchange import Exchange
from tests.support.intake import create_all_topics

# The accounts of the in-process tests' exchange (``exchange(ACCOUNTS, seed=7)``), and the
# pairs they place orders on.
ACCOUNTS = ["mm-1", "mm-2"]
SYMBOLS = ["BTC_USDT", "ETH_USDT"]


def daemon_settings(
    bootstrap: str, unique: Callable[[str], str], ex: Exchange, **overrides: Any
) -> Settings:
    """Settings for a daemon against ``ex`` on unique topics, tuned for fast tests."""
    kafka: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": unique("group"),
        "fetch_max_wait_ms": 10,
        # Short group timeouts: see make_settings in tests/support/intake.py.
        "session_timeout_ms": 2_000,
        "heartbeat_interval_ms": 500,
        "rebalance_timeout_ms": 2_000,
        "topics": {
            name: unique(name)
            for name in ("alerts", "manual", "heartbeats", "results", "state", "dlq")
        },
    }
    kafka.update(overrides.pop("kafka", {}))
    accounts = [
        {
            "id": account,
            "api_key": api_key,
            "private_key": pem.decode(),
            "base_url": ex.server.base_url,
            "rate_limit_per_second": 5000.0,
            "burst": 100,
            "max_concurrency": 8,
            "backoff_base_s": 0.005,
            "backoff_cap_s": 0.05,
            **overrides.pop(f"account_{account.replace('-', '_')}", {}),
        }
        for account, (api_key, pem) in ex.keys.items()
    ]
    engine = {
        # Most daemon tests watch single cancels in the simulator's log; the default
        # strategy (auto) is tested end to end by passing engine={"strategy": "auto"}.
        "strategy": "per_order",
        "default_deadline_s": 10.0,
        "progress_interval_s": 0.2,
        # A halted account's guard lists at this share of 5,000/s: 25 listings/s, not
        # thousands (the tests' exchange budget is far above a real one).
        "latch_budget_share": 0.005,
        "shutdown_grace_s": 3.0,
        **overrides.pop("engine", {}),
    }
    metrics = overrides.pop("metrics", {"enabled": False})
    return Settings(kafka=kafka, accounts=accounts, engine=engine, metrics=metrics, **overrides)


async def prepare_topics(settings: Settings, partitions: int = 1) -> None:
    await create_all_topics(settings, partitions=partitions)


@dataclass
class InProcess:
    daemon: Daemon
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def daemon_in_process(settings: Settings) -> AsyncIterator[InProcess]:
    """``async_run`` in this loop; stopped gracefully (stop event) when the block exits."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    started: list[Daemon] = []
    task = asyncio.create_task(
        async_run(settings, stop_event=stop, ready_event=ready, on_started=started.append)
    )
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([task, waiter], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises the start-up error
    if waiter not in done:
        task.cancel()
        raise AssertionError("daemon did not start within 30s")
    try:
        yield InProcess(started[0], stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as KILLSWITCH_* environment variables (JSON per section)."""
    data = settings.model_dump(mode="json")
    for account, original in zip(data["accounts"], settings.accounts, strict=True):
        account["api_key"] = original.api_key.get_secret_value()
        assert original.private_key is not None
        account["private_key"] = original.private_key.get_secret_value()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    for section, value in data.items():
        env[f"KILLSWITCH_{section.upper()}"] = json.dumps(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class EnvDaemonProcess:
    """``python -m killswitch run`` configured by environment variables, as a child
    process (stdout and stderr to a file)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "killswitch", "run"],
            cwd=REPO,
            env=settings_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        return await wait_exit(self.proc, timeout, "daemon")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
