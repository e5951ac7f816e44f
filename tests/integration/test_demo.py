"""``make demo`` end to end: the real daemon, the faulty simulator, the embedded broker.

The demo runs in process on a temporary copy of the example configuration (so its
generated keys land in the test's directory), with fewer orders than ``make demo``
to stay fast; one run goes through ``python -m killswitch demo`` as ``make demo`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from killswitch.config import ConfigError
from killswitch.demo import DemoContext, DemoOptions, run_demo
from killswitch.embedded import BrokerUnavailable, EmbeddedBroker
from tests.support.demo import REPO, demo_dir

pytestmark = pytest.mark.integration


def listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
        return True
    return False


async def test_demo_kills_two_accounts_flat_and_stops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = demo_dir(tmp_path, monkeypatch)
    seen: list[DemoContext] = []
    health: list[int] = []

    async def while_running(ctx: DemoContext) -> None:
        seen.append(ctx)
        async with httpx.AsyncClient(timeout=5) as http:
            health.append((await http.get(f"{ctx.metrics_url}/healthz")).status_code)

    out = io.StringIO()
    broker = EmbeddedBroker()
    try:
        report = await run_demo(
            DemoOptions(config=config, orders_per_pair=100),
            broker=broker,
            out=out,
            tty=False,
            while_running=while_running,
        )
    finally:
        broker.stop()
    text = out.getvalue()
    assert report.exit_code == 0, text
    assert report.killed == ["mm-1", "mm-2"]
    assert report.seeded == {"mm-1": 400, "mm-2": 400, "arb-1": 400}
    # The simulator's own books: the killed accounts are flat, the other one untouched.
    assert report.open_after == {"mm-1": 0, "mm-2": 0, "arb-1": 400}
    assert report.trigger is not None
    assert [r.status for r in report.trigger.board.ordered()] == ["flat", "flat"]
    assert report.trigger.prepared.signed
    # Demo keys were generated next to the copied configuration, private ones mode 600.
    for name in ("mm-1.pem", "mm-2.pem", "arb-1.pem", "operator-ed25519.pem"):
        assert (tmp_path / "config" / "demo" / name).stat().st_mode & 0o077 == 0
    # What it shows: progress, books, halted accounts, metrics, and where they are.
    assert "ok: flat" in text
    assert f"metrics at {report.metrics_url}/metrics" in text
    assert "2 halted account(s):" in text
    assert "killswitch_cancels_total" in text
    assert text.rstrip().endswith("demo finished: OK")
    assert health == [200]
    # Everything it started is stopped.
    ctx = seen[0]
    assert not listening(ctx.metrics_url)
    assert not listening(ctx.simulator_url)
    assert not listening(f"http://{ctx.bootstrap}")
    # No secret in what it printed.
    for account in ctx.settings.accounts:
        assert account.api_key.get_secret_value() not in text
        pem = account.private_key_bytes().decode()
        assert pem.splitlines()[1] not in text


async def test_demo_refuses_a_configuration_without_demo_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = demo_dir(tmp_path, monkeypatch)
    config.write_text(config.read_text().replace('"demo/', '"prod/'))
    broker = EmbeddedBroker()
    with pytest.raises(ConfigError, match="file not found"):
        await run_demo(DemoOptions(config=config), broker=broker, out=io.StringIO(), tty=False)
    assert not (tmp_path / "config" / "prod").exists()  # never generates non-demo keys
    with pytest.raises(BrokerUnavailable, match="not started"):
        _ = broker.pid  # nothing was started for a configuration that cannot run


async def test_make_demo_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = demo_dir(tmp_path, monkeypatch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "killswitch",
        "demo",
        "--config",
        str(config.relative_to(tmp_path)),
        "--orders",
        "20",
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stdout.decode()
    assert proc.returncode == 0, text + stderr.decode()
    assert "generated demo keys in config/demo/" in text
    assert "demo finished: OK" in text


async def test_ctrl_c_stops_everything_the_demo_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = demo_dir(tmp_path, monkeypatch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "killswitch",
        "demo",
        "--config",
        str(config),
        "--orders",
        "20",
        "--keep-running",
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not lines or "Ctrl-C to stop" not in lines[-1]:
                line = (await proc.stdout.readline()).decode()
                assert line, "".join(lines)  # the demo ended before it was interrupted
                lines.append(line)
            text = "".join(lines)
            # The three loopback services the demo announced: broker, simulator, metrics.
            urls = re.findall(r"(?:at |at http://)(127\.0\.0\.1:\d+)", text)
            assert len(urls) == 3, text
            urls = [f"http://{u}" for u in urls]
            assert all(listening(u) for u in urls)
            proc.send_signal(signal.SIGINT)
            rest = (await proc.stdout.read()).decode()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 130, text + rest
    assert "stopping the daemon, the simulator and the broker" in rest
    assert not any(listening(u) for u in urls)
