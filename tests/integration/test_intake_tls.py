"""Kafka over TLS with the daemon's own client wiring (``kafka.ssl`` settings).

The embedded broker has no usable TLS, so the test puts a small TLS-terminating
proxy of its own in front of a plaintext broker that advertises the proxy's
address (the embedded broker cannot serve TLS itself). The certificate is made here, for
127.0.0.1, signed by a throwaway CA that the client is told to trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from killswitch.config import KafkaSettings
from killswitch.embedded import broker_binary, free_port
from killswitch.kafka.clients import all_partitions, ensure_topics, make_producer, make_reader

T = TypeVar("T")

pytestmark = pytest.mark.integration


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(tmp: Path) -> tuple[Path, Path, Path]:
    """CA certificate, server certificate (SAN 127.0.0.1) and server key files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test ca"))
        .issuer_name(_name("test ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@contextlib.contextmanager
def broker_advertising(port: int, advertised: int) -> Iterator[int]:
    """A plaintext broker on ``port`` that tells clients to connect to ``advertised``."""
    argv = [
        str(broker_binary()),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised}",
        "--storage-engine",
        "memory://tansu/",
    ]
    env = {**os.environ, "RUST_LOG": "error"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tls_proxy(listen: int, upstream: int, cert: Path, key: Path) -> AsyncIterator[list[int]]:
    """Terminates TLS on ``listen`` and forwards to the plaintext ``upstream``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handshakes: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handshakes.append(1)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_w.close()
            return
        for task in (
            asyncio.create_task(_pipe(client_r, up_w)),
            asyncio.create_task(_pipe(up_r, client_w)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", listen, ssl=context)
    try:
        yield handshakes
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_produce_and_consume_over_tls(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    broker_port, proxy_port = free_port(), free_port()
    settings = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{proxy_port}",
        security_protocol="SSL",
        ssl={"cafile": ca, "check_hostname": True},
        request_timeout_ms=5000,
    )
    with broker_advertising(broker_port, proxy_port):
        async with tls_proxy(proxy_port, broker_port, cert, key) as handshakes:
            created = await _retry_until_listening(lambda: ensure_topics(settings))
            assert settings.topics.results in created
            producer = make_producer(settings)
            await producer.start()
            try:
                await producer.send_and_wait(settings.topics.results, b"over tls", key=b"mm-1")
            finally:
                await producer.stop()
            reader = make_reader(settings)
            await reader.start()
            try:
                parts = await all_partitions(reader, settings.topics.results)
                reader.assign(parts)
                await reader.seek_to_beginning(*parts)
                batch = await reader.getmany(timeout_ms=5000)
                values = [r.value for records in batch.values() for r in records]
            finally:
                await reader.stop()
            assert values == [b"over tls"]
            assert handshakes  # every connection went through the TLS proxy


async def _retry_until_listening(start: Callable[[], Awaitable[T]]) -> T:
    """The broker process needs a moment to listen; retry with a deadline."""
    from aiokafka.errors import KafkaConnectionError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        try:
            return await start()
        except KafkaConnectionError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)  # polling the broker's start with a deadline


async def test_an_untrusted_broker_certificate_is_refused(tmp_path: Path) -> None:
    from aiokafka.errors import KafkaConnectionError

    _, cert, key = make_pki(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca, _, _ = make_pki(other)
    broker_port, proxy_port = free_port(), free_port()
    settings = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{proxy_port}",
        security_protocol="SSL",
        ssl={"cafile": wrong_ca},
        request_timeout_ms=2000,
    )
    with broker_advertising(broker_port, proxy_port):
        async with tls_proxy(proxy_port, broker_port, cert, key) as handshakes:
            # The same setup with the right CA works (test above): only the trust differs.
            with pytest.raises(KafkaConnectionError):
                await ensure_topics(settings)
            assert handshakes == []  # no TLS session was ever established


def test_sasl_settings_reach_the_clients() -> None:
    from killswitch.kafka.clients import connection_kwargs

    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl={"mechanism": "SCRAM-SHA-256", "username": "ks", "password": "pw-secret"},
    )
    kwargs = connection_kwargs(settings)
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kwargs["sasl_plain_username"] == "ks"
    assert kwargs["sasl_plain_password"] == "pw-secret"
    assert kwargs["ssl_context"] is None
    plain = connection_kwargs(KafkaSettings())
    assert "sasl_mechanism" not in plain
