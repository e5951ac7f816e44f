"""``killswitch broker``: the embedded broker in the foreground, as a newcomer runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from killswitch.broker import DEFAULT_PORT, default_port
from killswitch.config import KafkaSettings
from killswitch.embedded import free_port
from killswitch.kafka.clients import topic_roles
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}


def _listening(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=0.5),
    ):
        return True
    return False


@pytest.fixture
async def broker() -> AsyncIterator[tuple[asyncio.subprocess.Process, int, list[str]]]:
    """``killswitch broker --port P`` started, its output read up to the ``ready`` line."""
    async with _started(free_port()) as started:
        yield started


@contextlib.asynccontextmanager
async def _started(port: int) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, list[str]]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "killswitch",
        "broker",
        "--port",
        str(port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(_START_TIMEOUT_S):
            while not (lines and lines[-1].startswith("ready")):
                line = await proc.stdout.readline()
                assert line, "killswitch broker ended before it was ready"
                lines.append(line.decode().rstrip())
        yield proc, port, lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_broker_serves_kafka_on_loopback_and_stops_on_sigterm(
    broker: tuple[asyncio.subprocess.Process, int, list[str]],
) -> None:
    proc, port, lines = broker
    bootstrap = f"127.0.0.1:{port}"
    assert f"bootstrap servers: {bootstrap}  (kafka.bootstrap_servers)" in lines

    # The daemon's topics exist, the state topic compacted as the daemon asks.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        assert set(topic_roles(KafkaSettings())) <= set(await admin.list_topics())
        state = ConfigResource(ConfigResourceType.TOPIC, KafkaSettings().topics.state)
        (response,) = await admin.describe_configs([state])
    finally:
        await admin.close()
    ((_code, _msg, _type, _name, entries),) = response.resources
    assert ("cleanup.policy", "compact") in [(e[0], e[1]) for e in entries]

    topic = KafkaSettings().topics.alerts
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"mm-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, sent.partition)
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        record = await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"mm-1", b"hello")

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S) == 0
    assert not _listening(port)  # the broker process went with it


async def test_killed_it_leaves_the_port_free_for_the_next_one(
    broker: tuple[asyncio.subprocess.Process, int, list[str]],
) -> None:
    # SIGKILL of `killswitch broker` takes the broker process with it at once (memory
    # storage: nothing to save), even with a client connected (which a broker asked to
    # stop waits for), so it can be started again on the same port.
    proc, port, _ = broker
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        proc.kill()
        await proc.wait()
        # Started again at once: a broker still stopping would hold the port.
        async with _started(port) as (again, _, lines):
            assert lines[-1].startswith("ready")
            again.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(again.wait(), _STOP_TIMEOUT_S) == 0


async def test_sigint_stops_it_too(
    broker: tuple[asyncio.subprocess.Process, int, list[str]],
) -> None:
    proc, port, _ = broker
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S) == 0
    assert not _listening(port)


def _brokers_on(port: int) -> list[int]:
    """Pids of the Tansu processes listening on ``port`` (by their command line)."""
    needle = f"tcp://127.0.0.1:{port}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if entry.name.isdigit() and b"--listener-url" in argv and needle in argv:
                pids.append(int(entry.name))
    return pids


async def test_a_sigkilled_broker_command_takes_the_broker_with_it(
    broker: tuple[asyncio.subprocess.Process, int, list[str]],
) -> None:
    proc, port, _ = broker
    children = _brokers_on(port)
    assert children, "no Tansu process found for the running command"
    try:
        proc.kill()  # no clean-up of its own runs
        await proc.wait()
        await wait_for(lambda: not _brokers_on(port) and not _listening(port), timeout=10)
    finally:
        for pid in _brokers_on(port):  # left running without the fix: not by this test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "killswitch", "broker", "--port", str(port)],
            capture_output=True,
            text=True,
            check=False,
            env=_env(),
            timeout=60,
        )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"killswitch: 127.0.0.1:{port} is already in use (another broker running?); "
        "choose another with --port"
    ]


def test_without_port_it_listens_where_the_configuration_dials(tmp_path: Path) -> None:
    config = tmp_path / "killswitch.toml"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config.write_text(
            f'[kafka]\nbootstrap_servers = "127.0.0.1:{port}"\n'
            '[[accounts]]\nid = "mm-1"\napi_key = "k"\nprivate_key = "unused"\n'
        )
        # The configured port is busy: refused before any broker starts, naming it.
        proc = subprocess.run(
            [sys.executable, "-m", "killswitch", "broker", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
            env=_env(),
            timeout=60,
        )
    assert proc.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in proc.stderr


@pytest.mark.parametrize(
    ("bootstrap", "port"),
    [
        ("127.0.0.1:19092", 19092),
        ("localhost:19093,127.0.0.1:9092", 19093),
        ("kafka-1:9093,kafka-2:9093", DEFAULT_PORT),  # not loopback: not this broker
    ],
)
def test_default_port(bootstrap: str, port: int) -> None:
    assert default_port(KafkaSettings(bootstrap_servers=bootstrap)) == port
