"""What an operator sees on stderr when a command cannot do its job: the command's own
message, without a library's log line before it or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from killswitch.embedded import free_port

pytestmark = pytest.mark.integration

_TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "killswitch.toml"
    path.write_text(
        f'[kafka]\nbootstrap_servers = "127.0.0.1:{port}"\n'
        '[[accounts]]\nid = "mm-1"\napi_key = "k"\nprivate_key = "unused"\n'
    )
    return path


def _status(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *flags, "status", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
        timeout=_TIMEOUT_S,
    )


def test_kafka_down_shows_the_commands_message_and_not_the_clients_log(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there: every connect is refused
    proc = _status(_config(tmp_path, port))
    assert proc.returncode == 1
    assert f"killswitch: Kafka at 127.0.0.1:{port} is not reachable" in proc.stderr
    assert "Unable connect" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_verbose_shows_the_clients_log_too(tmp_path: Path) -> None:
    port = free_port()
    proc = _status(_config(tmp_path, port), "--verbose")
    assert proc.returncode == 1
    assert f'Unable connect to "127.0.0.1:{port}"' in proc.stderr
    assert f"killswitch: Kafka at 127.0.0.1:{port} is not reachable" in proc.stderr
