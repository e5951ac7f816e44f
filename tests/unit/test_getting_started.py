"""A fresh clone: one command makes the example keys; a busy metrics port is one line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from killswitch.cli import main
from killswitch.exchange.signing import generate_private_key, private_key_pem

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "killswitch.example.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KILLSWITCH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example configuration alone in ``repo/config/``, run from another directory."""
    (tmp_path / "repo" / "config").mkdir(parents=True)
    config = tmp_path / "repo" / "config" / EXAMPLE.name
    shutil.copy(EXAMPLE, config)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return config


def test_keygen_config_makes_the_example_keys_and_config_check_passes(
    clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", "--config", str(clone)]) == 2
    assert f"killswitch keygen --config {clone}" in capsys.readouterr().err

    assert main(["keygen", "--config", str(clone)]) == 0
    demo = clone.parent / "demo"
    for account in ("mm-1", "mm-2", "arb-1"):
        assert (demo / f"{account}.pem").stat().st_mode & 0o777 == 0o600
        assert (demo / f"{account}.pub.pem").is_file()
    assert not (Path.cwd() / "demo").exists()  # relative to the file, not the working dir
    capsys.readouterr()

    assert main(["config", "check", "--config", str(clone)]) == 0
    assert "3 account(s) (mm-1, mm-2, arb-1)" in capsys.readouterr().out


def test_keygen_config_never_overwrites_a_key(clone: Path) -> None:
    existing = clone.parent / "demo" / "mm-1.pem"
    existing.parent.mkdir()
    pem = private_key_pem(generate_private_key())
    existing.write_bytes(pem)
    assert main(["keygen", "--config", str(clone)]) == 0
    assert existing.read_bytes() == pem
    assert (clone.parent / "demo" / "mm-2.pem").is_file()


def test_keygen_needs_out_or_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 2
    assert "exactly one of --out FILE and --config FILE" in capsys.readouterr().err


def test_busy_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "mm-1.pem"
    key.parent.mkdir()
    key.write_bytes(private_key_pem(generate_private_key()))
    config = tmp_path / "ks.toml"
    config.write_text(
        '[[accounts]]\nid = "mm-1"\napi_key = "k"\nprivate_key_file = "keys/mm-1.pem"\n'
    )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"PATH": "/usr/bin:/bin", "KILLSWITCH_METRICS__PORT": str(port)}
        # Nothing listens for Kafka there: the daemon must stop at the metrics listener,
        # which it opens first; if it got further it would wait for Kafka (and this run
        # would time out).
        env["KILLSWITCH_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
        proc = subprocess.run(
            [sys.executable, "-m", "killswitch", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "metrics.port" in lines[0]
    assert proc.stdout == ""
