"""Shared pieces of the benchmarks: the simulator process, measured child processes,
summary lines, JSON results and a description of the machine.

Rules every benchmark follows (docs/BENCHMARKS.md): loopback only; every process it
starts is ended by it (context managers, and a parent-death signal so that even a
killed benchmark leaves nothing behind); every wait has a deadline; every figure is a
ratio against a baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from killswitch.exchange.signing import generate_private_key, private_key_pem, public_key_pem
from killswitch.kafka.readers import result_head
from killswitch.procs import die_with_parent

RESULTS = Path(__file__).parent / "results"


# -- processes -------------------------------------------------------------------------


def cpus() -> list[int]:
    """The CPUs this process may run on, sorted."""
    return sorted(os.sched_getaffinity(0))


def pin(pid: int, which: set[int]) -> None:
    """Pin a process to CPUs (ignored when there is only one)."""
    if len(cpus()) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, which)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: a process this benchmark started never outlives it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Simulator:
    """``killswitch simulate-exchange`` in its own process, pinned to the first CPU.

    Clients are registered over the admin API (``add_client``); ``admin`` is an
    unsigned httpx client on its base URL.
    """

    def __init__(self, *extra_args: str, pin_first_cpu: bool = True) -> None:
        self.extra_args = list(extra_args)
        self.pin_first_cpu = pin_first_cpu
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Simulator:
        args = [sys.executable, "-m", "killswitch", "simulate-exchange", "--port", "0"]
        self.proc = subprocess.Popen(
            [*args, *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - a prctl call only, no locks taken
        )
        try:
            if self.pin_first_cpu:
                pin(self.proc.pid, {cpus()[0]})
            self.base_url = _listening_url(_readline(self.proc, 30.0))
        except BaseException:
            stop_process(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def admin(self, timeout: float = 60.0) -> httpx.Client:
        """A synchronous admin client (caller closes it)."""
        return httpx.Client(base_url=self.base_url, timeout=timeout)


def _listening_url(line: str) -> str:
    if "listening on" not in line:
        raise RuntimeError(f"simulator did not start: {line!r}")
    return line.rsplit(" ", 1)[1].strip()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line of ``proc`` within ``timeout`` seconds."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"no output within {timeout}s")
    return proc.stdout.readline()


def new_key() -> tuple[bytes, bytes]:
    """A fresh P-256 key pair: (private PEM, public PEM)."""
    key = generate_private_key()
    return private_key_pem(key), public_key_pem(key)


def register(admin: httpx.Client, api_key: str, public_pem: bytes, name: str) -> None:
    """Register a client on the simulator, unlimited."""
    body = {"api_key": api_key, "public_key": public_pem.decode(), "name": name}
    admin.post("/_admin/clients", json=body).raise_for_status()


def seed(admin: httpx.Client, api_key: str, symbol: str, count: int) -> list[int]:
    """``count`` open orders for ``api_key`` on ``symbol``; their ids."""
    ids: list[int] = []
    while count > 0:  # in chunks: one admin call holds the simulator's loop
        n = min(count, 20_000)
        answer = admin.post(
            "/_admin/orders", json={"api_key": api_key, "symbol": symbol, "count": n}
        )
        answer.raise_for_status()
        ids += answer.json()["order_ids"]
        count -= n
    return ids


def open_count(admin: httpx.Client, api_key: str) -> int:
    """Open orders the simulator holds for ``api_key``."""
    answer = admin.post("/_admin/orders/open", json={"api_key": api_key})
    answer.raise_for_status()
    return int(answer.json()["count"])


def in_child(
    target: Callable[..., dict[str, Any]],
    *args: Any,
    timeout: float = 300.0,
    cpu: int | None = None,
) -> dict[str, Any]:
    """Run ``target(*args)`` in a fresh (spawned) Python process and return its dict.

    The child dies with this process; past ``timeout`` it is killed and this raises.
    ``cpu`` pins it to one CPU.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(child, target, args), daemon=True)
    process.start()
    child.close()
    try:
        if cpu is not None and process.pid is not None:
            pin(process.pid, {cpu})
        if not parent.poll(timeout):
            raise TimeoutError(f"{getattr(target, '__name__', target)} took over {timeout}s")
        try:
            ok, value = parent.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(f"child died (exit code {process.exitcode})") from None
        if not ok:
            raise RuntimeError(f"child failed: {value}")
        return dict(value)
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        parent.close()


def _child_main(conn: Any, target: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    die_with_parent()
    try:
        result: tuple[bool, Any] = (True, target(*args))
    except BaseException as exc:  # report, never hang the parent
        import traceback

        result = (False, "".join(traceback.format_exception(exc))[-4000:])
    conn.send(result)
    conn.close()


# -- figures and results ---------------------------------------------------------------


def summary(name: str, value: str, goal: str | None = None, ok: bool | None = None) -> str:
    """Print and return one figure line: ``name: value (goal ...)``."""
    verdict = "" if ok is None else (" ok" if ok else " MISSED")
    line = f"{name}: {value}" + (f" (goal {goal}{verdict})" if goal else "")
    print(line, flush=True)
    return line


def machine() -> dict[str, Any]:
    """Where the figures come from: nproc, CPU model, Python, memory."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": len(cpus()),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "memory_mb": mem_kb // 1024,
    }


def write_result(name: str, data: dict[str, Any], argv: list[str] | None = None) -> Path:
    """Write ``bench/results/<name>.json`` with the machine and the command added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "command": " ".join(["python -m bench", name, *(argv or [])]),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    """A temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="killswitch-bench-") as tmp:
        yield Path(tmp)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[rank]


# -- Kafka and the daemon ----------------------------------------------------------------

ROLES = ("alerts", "manual", "heartbeats", "results", "state", "dlq")
REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def kafka() -> Iterator[tuple[str, str]]:
    """(bootstrap, kind): ``KILLSWITCH_BENCH_BOOTSTRAP`` if set, else an embedded broker.

    The embedded broker is started here (not with ``EmbeddedBroker``) so that it too dies
    with this process, even if this process is killed outright.
    """
    external = os.environ.get("KILLSWITCH_BENCH_BOOTSTRAP")
    if external:
        yield external, "external"
        return
    import socket

    from killswitch.embedded import broker_binary, free_port

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    args = [str(broker_binary()), "broker", "--listener-url", url]
    args += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "error"},
        preexec_fn=die_with_parent,  # noqa: PLW1509 - a prctl call only, no locks taken
    )
    try:
        deadline = time.monotonic() + 15.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"embedded broker exited with code {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("embedded broker did not listen within 15 s") from None
                time.sleep(0.02)  # polling a condition with a deadline
        yield f"127.0.0.1:{port}", "embedded (Tansu 0.6)"
    finally:
        stop_process(proc)


def topic_names(tag: str) -> dict[str, str]:
    """Fresh topic names for one measurement (role -> name)."""
    return {role: f"bench.{tag}.{role}" for role in ROLES}


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    """Create topics (name -> partitions), replication 1."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, p, 1) for n, p in partitions.items()])
    finally:
        await admin.close()


def daemon_env(
    bootstrap: str,
    topics: dict[str, str],
    group: str,
    base_url: str,
    accounts: dict[str, tuple[str, bytes]],
    *,
    fetch_max_wait_ms: int = 10,
    account: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    log_level: str = "WARNING",
) -> dict[str, str]:
    """The daemon's settings as ``KILLSWITCH_*`` variables (JSON per section); logs at
    ``log_level`` (the daemon's default is INFO)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    kafka_section = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "topics": topics,
        # Tansu rebalances slowly with the defaults; members that leave are noticed sooner.
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "rebalance_timeout_ms": 6000,
    }
    account_defaults = {"rate_limit_per_second": 5000.0, "burst": 100, "max_concurrency": 8}
    env["KILLSWITCH_KAFKA"] = json.dumps(kafka_section)
    env["KILLSWITCH_ACCOUNTS"] = json.dumps(
        [
            {
                "id": account_id,
                "api_key": api_key,
                "private_key": pem.decode(),
                "base_url": base_url,
                **account_defaults,
                **(account or {}),
            }
            for account_id, (api_key, pem) in accounts.items()
        ]
    )
    # Metrics on, as in production (their cost is part of the daemon's), on any free port.
    env["KILLSWITCH_METRICS"] = json.dumps({"enabled": True, "host": "127.0.0.1", "port": 0})
    env["KILLSWITCH_ENGINE"] = json.dumps({"progress_interval_s": 5.0, **(engine or {})})
    env["KILLSWITCH_LOGGING"] = json.dumps({"level": log_level, "format": "json"})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class DaemonProcess:
    """``python -m killswitch run`` as a child process; output to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "killswitch", "run"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - a prctl call only, no locks taken
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful), then SIGKILL; the exit code."""
        stop_process(self.proc, timeout)
        self._log.close()
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        """The end of the daemon's output (for error messages)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def alert_bytes(alert_id: str, account: str, **scope: Any) -> bytes:
    """A ``killswitch.alert/v1`` kill for one account, JSON bytes."""
    from datetime import UTC, datetime

    from killswitch.core.times import format_time

    body = {
        "schema": "killswitch.alert/v1",
        "alert_id": alert_id,
        "action": "kill",
        "source": "bench",
        "reason": "bench",
        "scope": {"accounts": [account], **scope},
        "created_at": format_time(datetime.now(UTC)),
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def group_lag(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Messages of ``topic`` not yet committed by ``group`` (all partitions)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(parts)
        lag = 0
        for tp in parts:
            lag += ends[tp] - (await consumer.committed(tp) or 0)
        return lag
    finally:
        await consumer.stop()


class Results:
    """Reads a results topic from the beginning in the background: final results per alert."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.final: dict[str, list[str]] = {}  # alert_id -> statuses of its final results
        self._last: dict[str, bytes] = {}  # alert_id -> its last final result, as written
        self.read = 0  # records read (final or not)
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None

    async def __aenter__(self) -> Results:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        # "earliest" (see tests/support/topics.py read_to_end): the default's own first
        # reset can land after the seek and skip a partition's records.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        await self._consumer.start()
        parts = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    self.read += 1
                    self._learn(record)
            if batch:
                self.changed.set()

    def _learn(self, record: Any) -> None:
        # From the result's head header (killswitch.result.head, docs/CONTRACTS.md) when
        # it has one, the body kept as bytes: this process shares the machine with the
        # daemon it measures, and decoding every body of a storm's results took it
        # about a second of CPU per storm.
        head = result_head(record)
        if head is not None:
            final, alert_id, status = head.final, head.alert_id, head.status
        else:
            body = json.loads(record.value)
            final, alert_id, status = body.get("final"), body.get("alert_id"), body.get("status")
        if final:
            self.final.setdefault(alert_id, []).append(status)
            self._last[alert_id] = record.value

    def last(self, alert_id: str) -> dict[str, Any] | None:
        """The last final result read for ``alert_id`` (None before one is read)."""
        raw = self._last.get(alert_id)
        return None if raw is None else dict(json.loads(raw))

    async def wait_for(self, alert_ids: set[str], timeout: float) -> None:
        """Until every id in ``alert_ids`` has a final result (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while not alert_ids <= self.final.keys():
                self.changed.clear()
                await self.changed.wait()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


async def wait_group_stable(bootstrap: str, group: str, members: int, timeout: float) -> None:
    """Until ``group`` is Stable with ``members`` members (TimeoutError after ``timeout``)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                (response,) = await admin.describe_consumer_groups([group])
                for _, name, state, _, _, found in _groups(response):
                    if name == group and state == "Stable" and len(found) == members:
                        return
                # Polling with a deadline: the broker has no event to wait on.
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _groups(response: Any) -> list[tuple[Any, ...]]:
    """(error, group, state, protocol_type, protocol, members) of a DescribeGroups answer."""
    return [tuple(g) for g in response.groups]


async def recv(conn: Any, timeout: float) -> Any:
    """The next object from a multiprocessing connection, without blocking the loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout(timeout):
            await ready
    finally:
        loop.remove_reader(fd)
    return conn.recv()
