"""A real Prometheus server scrapes the running daemon and answers for its kill.

Debian's ``prometheus`` package (``make system-deps``) provides the server; without it
the test is skipped, saying so. The daemon is the demo's (in process, with fewer
orders); Prometheus runs on loopback with its data in the test's temporary directory
and is always stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from killswitch.demo import DemoContext, DemoOptions, run_demo
from killswitch.embedded import EmbeddedBroker, free_port
from killswitch.render import metric_samples
from tests.support.demo import demo_dir

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL = "250ms"


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        pytest.skip(
            "the 'prometheus' binary is not installed (Debian package 'prometheus'; "
            "'make system-deps' installs it when run as root with apt-get)"
        )
    return found


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """A Prometheus server scraping ``target`` every 250 ms; yields its base URL."""
    binary = prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {SCRAPE_INTERVAL}\n"
        "  scrape_timeout: 200ms\n"
        "scrape_configs:\n"
        "  - job_name: killswitch\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


async def query(http: httpx.AsyncClient, base: str, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query ([] while Prometheus is not up yet)."""
    try:
        response = await http.get(f"{base}/api/v1/query", params={"query": promql})
    except httpx.TransportError:
        return []
    if response.status_code != 200:
        return []
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def until(
    http: httpx.AsyncClient, base: str, promql: str, wanted: float, timeout: float = 30.0
) -> float | None:
    """Poll the query until it answers ``wanted`` (bounded); the last value seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value: float | None = None
    while loop.time() < deadline:
        result = await query(http, base, promql)
        if result:
            value = float(result[0]["value"][1])
            if value == wanted:
                return value
        await asyncio.sleep(0.1)  # polling a condition with a deadline
    return value


async def test_prometheus_scrapes_the_daemon_and_answers_for_the_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prometheus_binary()  # skip before starting anything
    config = demo_dir(tmp_path, monkeypatch)
    metrics_port = free_port()
    answers: dict[str, Any] = {}

    async def while_running(ctx: DemoContext) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"{ctx.metrics_url}/metrics")).text
            own = {
                (labels.get("account"), labels.get("outcome")): value
                for name, labels, value in metric_samples(text)
                if name == "killswitch_cancels_total"
            }
            answers["daemon_sent"] = own[("mm-1", "sent")] + own[("mm-2", "sent")]
            answers["up"] = await until(http, prom, 'up{job="killswitch"}', 1.0)
            answers["prom_sent"] = await until(
                http,
                prom,
                'sum(killswitch_cancels_total{job="killswitch",outcome="sent"})',
                answers["daemon_sent"],
            )
            series = await query(http, prom, 'killswitch_cancels_total{account="mm-1"}')
            answers["outcomes"] = sorted(s["metric"]["outcome"] for s in series)

    broker = EmbeddedBroker()
    with prometheus(tmp_path, f"127.0.0.1:{metrics_port}") as prom:
        try:
            report = await run_demo(
                DemoOptions(config=config, orders_per_pair=50, metrics_port=metrics_port),
                broker=broker,
                out=io.StringIO(),
                tty=False,
                while_running=while_running,
            )
        finally:
            broker.stop()
    assert report.exit_code == 0
    assert answers["up"] == 1.0
    assert answers["daemon_sent"] > 0
    assert answers["prom_sent"] == answers["daemon_sent"]
    # Every contract outcome exists as a series from the start (rules can use increase()).
    assert {"sent", "already_closed", "rejected", "failed"} <= set(answers["outcomes"])
