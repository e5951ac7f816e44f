"""The daemon as a child process: a TOML config writer and a runner that always kills.

``write_config`` writes the settings a test wants as a TOML file (the way an operator
configures the daemon); :class:`DaemonProcess` runs ``python -m killswitch run --config
FILE`` with stdout and stderr in files; :class:`Daemons` (the ``daemons`` fixture in
``tests/support/fixtures.py``) remembers every process it started and kills what is
still running when the test ends, whatever happened. An ``atexit`` hook is the last line
of defence, so no daemon outlives the test run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from killswitch.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
TOPIC_ROLES = ("alerts", "manual", "heartbeats", "results", "state", "dlq")
# The engine's listing page size in test configs: a value the daemon's readiness probes
# (which list a page or two) do not use, so a test can tell a sweep's listings apart.
SWEEP_PAGE_SIZE = 50

_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        with contextlib.suppress(OSError):
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------------ TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string of ASCII text is a valid TOML basic string (same escapes).
        return json.dumps(str(value), ensure_ascii=True)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _emit(path: str, table: Mapping[str, Any], out: list[str], header: str | None) -> None:
    plain = {
        k: v
        for k, v in table.items()
        if v is not None and not isinstance(v, dict) and not _is_table_array(v)
    }
    if header is not None:
        out.append(header)
    out.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in plain.items())
    for key, value in table.items():
        sub = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            _emit(sub, value, out, f"[{sub}]")
        elif _is_table_array(value):
            for item in value:
                _emit(sub, item, out, f"[[{sub}]]")


def toml_dumps(data: Mapping[str, Any]) -> str:
    """TOML text for nested dicts and lists (``None`` values are left out)."""
    out: list[str] = []
    _emit("", data, out, None)
    return "\n".join(out) + "\n"


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """Write ``settings`` (the shape of ``killswitch.config.Settings``) as TOML."""
    text = toml_dumps(settings)
    assert tomllib.loads(text) == _without_none(dict(settings)), "TOML writer bug"
    path.write_text(text)
    return path


def daemon_config(
    bootstrap: str,
    tag: str,
    accounts: list[dict[str, Any]],
    *,
    metrics_port: int | None = None,
    kafka: Mapping[str, Any] | None = None,
    engine: Mapping[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """Settings for a daemon on topics and a group of its own (named after ``tag``),
    tuned for tests: short fetch waits and group timeouts, fast shutdown."""
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"group.{tag}",
            "client_id": f"killswitch-{tag}",
            "fetch_max_wait_ms": 10,
            # Short group timeouts: see make_settings in tests/support/intake.py.
            "session_timeout_ms": 2_000,
            "heartbeat_interval_ms": 500,
            "rebalance_timeout_ms": 2_000,
            "topics": {role: f"{role}.{tag}" for role in TOPIC_ROLES},
            **(kafka or {}),
        },
        "accounts": accounts,
        "metrics": {
            "enabled": True,
            "host": "127.0.0.1",
            "port": metrics_port if metrics_port is not None else free_port(),
        },
        "engine": {
            # These daemons are watched cancel by cancel (per-order DELETEs in the
            # simulator's log); the default strategy (auto) has tests of its own.
            "strategy": "per_order",
            "default_deadline_s": 20.0,
            "progress_interval_s": 0.5,
            # A halted account's guard lists at this share of 500/s: 25 listings/s.
            "latch_budget_share": 0.05,
            "shutdown_grace_s": 5.0,
            "page_size": SWEEP_PAGE_SIZE,
            **(engine or {}),
        },
        "logging": {"level": "INFO", "format": "json"},
        **sections,
    }


def account_config(
    account_id: str, api_key: str, private_pem: bytes, base_url: str, **options: Any
) -> dict[str, Any]:
    """One ``[[accounts]]`` entry: inline key, fast retries for tests."""
    return {
        "id": account_id,
        "api_key": api_key,
        "private_key": private_pem.decode(),
        "base_url": base_url,
        "rate_limit_per_second": 500.0,
        "burst": 20,
        "max_concurrency": 8,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.1,
        **options,
    }


# ------------------------------------------------------------------- processes


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float, name: str) -> int:
    """``proc``'s exit code, polling with a deadline (fails the test if it does not exit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.poll() is None:
        if loop.time() > deadline:
            raise AssertionError(f"{name} did not exit within {timeout}s")
        await asyncio.sleep(0.05)  # polling the child's exit with a deadline
    return proc.returncode


@dataclass
class DaemonProcess:
    """``python -m killswitch run --config FILE``; stdout and stderr go to files."""

    config: Path
    stderr_path: Path
    stdout_path: Path
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self.stderr_path.open("ab") as err, self.stdout_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "killswitch", "run", "--config", str(self.config)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        _RUNNING.add(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        _RUNNING.discard(self.proc)

    def terminate(self) -> None:
        """SIGTERM (graceful shutdown); see :meth:`wait`."""
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        """The exit code, polling with a deadline (fails the test if it does not exit)."""
        code = await wait_exit(self.proc, timeout, f"daemon {self.pid}")
        _RUNNING.discard(self.proc)
        return code

    def close(self) -> None:
        """Kill it if it still runs (tests end here whatever happened)."""
        if self.running:
            self.kill()
        _RUNNING.discard(self.proc)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        """Everything the process wrote (stdout and stderr)."""
        return self.stdout_path.read_text(errors="replace") + self.stderr()

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines of stderr (other lines are skipped)."""
        records = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records


class Daemons:
    """Starts daemons for one test and kills whatever still runs at :meth:`close`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[DaemonProcess] = []

    def start(self, config: Path, name: str | None = None) -> DaemonProcess:
        name = name or f"daemon{len(self.started) + 1}"
        daemon = DaemonProcess(
            config, self.directory / f"{name}.stderr", self.directory / f"{name}.stdout"
        )
        self.started.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            daemon.close()

    def all_output(self) -> str:
        return "".join(d.output() for d in self.started)


async def http_get(url: str, timeout: float = 2.0) -> httpx.Response | None:
    """GET, or None when nothing answers (the daemon is starting or gone)."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            return await client.get(url)
        except httpx.HTTPError:
            return None


async def wait_http(
    url: str,
    timeout: float = 30.0,
    until: Callable[[httpx.Response], bool] | None = None,
) -> httpx.Response:
    """The first answer from ``url`` (any status, or one ``until`` accepts), polling with
    a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer"
    while True:
        response = await http_get(url)
        if response is not None and (until is None or until(response)):
            return response
        if response is not None:
            last = f"{response.status_code} {response.text[:500]}"
        if loop.time() > deadline:
            # The last answer says why (a readiness page names its reasons).
            raise AssertionError(f"no such answer at {url} within {timeout}s; last: {last}")
        await asyncio.sleep(0.05)  # polling a listener with a deadline
