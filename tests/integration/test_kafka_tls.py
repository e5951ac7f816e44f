"""Kafka over TLS, for real: a TLS-terminating proxy in front of the embedded broker."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from killswitch.embedded import EmbeddedBroker, free_port
from tests.support.tls import Pki, TLSProxy, make_pki
from tests.support.topics import create_topics

pytestmark = pytest.mark.integration


@pytest.fixture
async def tls_kafka(tmp_path: Path) -> AsyncIterator[tuple[str, Pki, TLSProxy]]:
    """(bootstrap, pki, proxy): a plaintext broker reachable only through the TLS proxy."""
    pki = make_pki(tmp_path / "pki")
    proxy_port = free_port()
    broker = EmbeddedBroker(advertised=f"127.0.0.1:{proxy_port}").start()
    proxy = TLSProxy(pki, ("127.0.0.1", broker.port), proxy_port)
    try:
        await proxy.start()
        bootstrap = f"127.0.0.1:{proxy_port}"
        await create_topics(
            bootstrap, ["tls.test"], security_protocol="SSL", ssl_context=_context(pki.ca_cert)
        )
        yield bootstrap, pki, proxy
    finally:
        await proxy.stop()
        broker.stop()


def _context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


async def test_round_trip_over_tls(tls_kafka: tuple[str, Pki, TLSProxy]) -> None:
    bootstrap, pki, proxy = tls_kafka
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, security_protocol="SSL", ssl_context=_context(pki.ca_cert)
    )
    await producer.start()
    try:
        await producer.send_and_wait("tls.test", b"over-tls")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        "tls.test",
        bootstrap_servers=bootstrap,
        security_protocol="SSL",
        ssl_context=_context(pki.ca_cert),
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.value == b"over-tls"
    assert proxy.connections >= 2


async def test_wrong_ca_is_refused(tls_kafka: tuple[str, Pki, TLSProxy], tmp_path: Path) -> None:
    bootstrap, _pki, _proxy = tls_kafka
    other = make_pki(tmp_path / "other", ca_name="some other CA")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        security_protocol="SSL",
        ssl_context=_context(other.ca_cert),
        request_timeout_ms=3000,
    )
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
