"""``killswitch broker`` (``make broker``): the embedded Kafka-protocol broker for local use.

Runs Tansu (:mod:`killswitch.embedded`) in the foreground on loopback, creates the
kill switch's topics exactly as the daemon does at start-up (state compacted), prints
the bootstrap address, and stops on SIGINT/SIGTERM with exit code 0. Memory storage:
stopping it loses every topic, offset and halt latch. Not for production: use a real
Kafka there (README, "Deploying with a real Kafka").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import signal
import socket
import sys

from killswitch.config import KafkaSettings, resolve_config_path
from killswitch.embedded import BrokerUnavailable, EmbeddedBroker
from killswitch.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from killswitch.kafka.clients import DEFAULT_PARTITIONS, ensure_topics, topic_config, topic_roles

__all__ = ["DEFAULT_PORT", "add_arguments_broker", "cli_broker", "default_port"]

DEFAULT_PORT = 9092  # the default kafka.bootstrap_servers is 127.0.0.1:9092
# How often the foreground loop checks that the broker process is still alive.
_LIVENESS_POLL_S = 0.5


def add_arguments_broker(parser: argparse.ArgumentParser) -> None:
    """Flags of ``killswitch broker`` (``--config`` is added by the CLI)."""
    parser.description = (
        "Run the embedded Kafka-protocol broker (Tansu, in memory) in the foreground on "
        "loopback and create the kill switch's topics. For local use and trying things "
        "out; Ctrl-C or SIGTERM stops it (and loses everything it held)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port (default: the first kafka.bootstrap_servers port when that is on "
        f"loopback, else {DEFAULT_PORT}; 0 = any)",
    )


def cli_broker(args: argparse.Namespace) -> int:
    """Entry point of ``killswitch broker``."""
    if args.port is not None and not 0 <= args.port <= 65535:
        print("killswitch: --port must be between 0 and 65535", file=sys.stderr)
        return EXIT_USAGE
    kafka = _kafka_settings(args)
    if args.port is None:
        args.port = default_port(kafka)
    if args.port and _port_in_use(args.host, args.port):
        print(
            f"killswitch: {args.host}:{args.port} is already in use "
            "(another broker running?); choose another with --port",
            file=sys.stderr,
        )
        return EXIT_USAGE
    broker = EmbeddedBroker(args.host, args.port or None)
    try:
        return asyncio.run(_serve(broker, kafka))
    except BrokerUnavailable as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        broker.stop()  # idempotent; the broker never outlives this process's normal exit


def _kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """Topic names from ``--config`` (or ``KILLSWITCH_CONFIG``) when given, else defaults."""
    path = resolve_config_path(args.config)
    if path is None:
        return KafkaSettings()
    from killswitch.config import load_settings  # noqa: PLC0415

    return load_settings(path).kafka


def default_port(kafka: KafkaSettings) -> int:
    """The port the other commands will dial: that of the first bootstrap server when it
    is on loopback (as ``simulate-exchange`` takes its port from ``base_url``), else
    :data:`DEFAULT_PORT`."""
    first = kafka.bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if host.strip("[]") in ("127.0.0.1", "localhost", "::1") and port.isdigit():
        return int(port)
    return DEFAULT_PORT


def _port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` already: the broker's own start-up check
    would otherwise mistake that listener for the broker."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


async def _serve(broker: EmbeddedBroker, kafka: KafkaSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await asyncio.to_thread(broker.start)
        local = kafka.model_copy(
            update={"bootstrap_servers": broker.bootstrap, "security_protocol": "PLAINTEXT"}
        )
        created = await ensure_topics(local)
        _print_started(broker, kafka, created)
        while not stop.is_set():
            if broker.returncode is not None:
                print(f"killswitch: the broker exited ({broker.returncode})", file=sys.stderr)
                return EXIT_FAILED
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _LIVENESS_POLL_S)
        print("stopping the broker", file=sys.stderr)
        await asyncio.to_thread(broker.stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return EXIT_OK


def _print_started(broker: EmbeddedBroker, kafka: KafkaSettings, created: list[str]) -> None:
    print(f"embedded Kafka broker (Tansu, in memory) at {broker.bootstrap}")
    for name, role in topic_roles(kafka).items():
        made = "created" if name in created else "already there"
        settings = ", ".join(f"{k}={v}" for k, v in topic_config(role).items())
        extra = f", {settings}" if settings else ""
        print(f"  topic {name}: {made} ({DEFAULT_PARTITIONS[role]} partition(s){extra})")
    print(f"bootstrap servers: {broker.bootstrap}  (kafka.bootstrap_servers)")
    print("ready; Ctrl-C or SIGTERM stops it (everything it held is lost)", flush=True)
