"""What an operator sees on stderr when a command cannot do its job: the command's own
message, without a library's log line before it or a traceback."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


def _read_until(proc: subprocess.Popen[str], done: Callable[[str], bool], timeout: float) -> None:
    """Read ``proc``'s stderr line by line until a line satisfies ``done``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if not ready:
            break
        line = proc.stderr.readline()
        assert line, "the command ended before the awaited line"
        if done(line):
            return
    raise AssertionError("the awaited line did not come before the deadline")


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(tmp_path: Path) -> None:
    # A listener that never answers: should the signal come after the start-up after all,
    # the command is still waiting for Kafka and Ctrl-C ends it the same way.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        config = _config(tmp_path, silent.getsockname()[1])
        # ``-X importtime`` reports each module as it is loaded: the signal is sent while
        # the CLI's own modules are still loading (the command's start-up).
        proc = subprocess.Popen(
            [
                sys.executable,
                "-X",
                "importtime",
                "-m",
                "killswitch",
                "status",
                "--config",
                str(config),
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=_env(),
        )
        try:
            _read_until(
                proc, lambda line: line.rsplit("|", 1)[-1].strip() == "killswitch.config", 30
            )
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=_TIMEOUT_S)
        finally:
            proc.kill()
            proc.wait()
    said = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 130, said
    assert said == ["killswitch: interrupted"]
