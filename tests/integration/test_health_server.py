"""The health listener over a real loopback socket: /metrics, /healthz, /readyz."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from killswitch.config import MetricsSettings
from killswitch.core.outcomes import Outcome
from killswitch.health import HealthServer, HealthServerError, Readiness
from killswitch.metrics import Metrics

pytestmark = pytest.mark.integration


@dataclass
class Served:
    server: HealthServer
    readiness: Readiness
    metrics: Metrics
    clock: list[float]
    http: httpx.AsyncClient


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    registry = CollectorRegistry()
    metrics = Metrics(registry, ["mm-1", "mm-2"])
    readiness = Readiness.for_accounts(["mm-1", "mm-2"], stale_after_s=120)
    clock = [1000.0]
    server = HealthServer(
        MetricsSettings(host="127.0.0.1", port=0),
        registry,
        readiness,
        on_ready=metrics.set_ready,
        clock=lambda: clock[0],
    )
    async with server, httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        yield Served(server, readiness, metrics, clock, http)


async def test_binds_a_free_port(served: Served) -> None:
    assert served.server.port > 0
    assert served.server.url == f"http://127.0.0.1:{served.server.port}"


async def test_healthz(served: Served) -> None:
    response = await served.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"alive": True}


async def test_readyz_not_ready_names_the_reasons(served: Served) -> None:
    served.readiness.set_consuming(True)
    served.readiness.exchange_ok("mm-1", 1000.0 - 130)
    served.readiness.exchange_ok("mm-2", 1000.0)
    served.readiness.auth_rejected("mm-2")
    response = await served.http.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "ready": False,
        "reasons": ["exchange: mm-1 no answer for 130s", "mm-2: auth rejected"],
    }


async def test_readyz_ready_and_then_stale(served: Served) -> None:
    served.readiness.set_consuming(True)
    served.readiness.exchange_ok("mm-1", 1000.0)
    served.readiness.exchange_ok("mm-2", 1000.0)
    response = await served.http.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"ready": True, "reasons": []})
    served.clock[0] += 121
    response = await served.http.get("/readyz")
    assert response.status_code == 503
    assert len(response.json()["reasons"]) == 2


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_text_format_with_current_readiness(served: Served) -> None:
    served.metrics.cancel_outcome("mm-1", Outcome.SENT)
    response = await served.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    assert values[("killswitch_cancels_total", (("account", "mm-1"), ("outcome", "sent")))] == 1
    assert values[("killswitch_ready", ())] == 0

    served.readiness.set_consuming(True)
    served.readiness.exchange_ok("mm-1", 1000.0)
    served.readiness.exchange_ok("mm-2", 1000.0)
    values = samples((await served.http.get("/metrics")).text)
    assert values[("killswitch_ready", ())] == 1


async def test_metrics_openmetrics_when_asked(served: Served) -> None:
    response = await served.http.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_unknown_path_and_method(served: Served) -> None:
    assert (await served.http.get("/nope")).status_code == 404
    assert (await served.http.post("/metrics")).status_code == 405


async def test_port_in_use_is_a_clear_error(served: Served) -> None:
    other = HealthServer(
        MetricsSettings(host="127.0.0.1", port=served.server.port),
        CollectorRegistry(),
        Readiness.for_accounts([], 1),
    )
    with pytest.raises(HealthServerError, match=f"127.0.0.1:{served.server.port}"):
        await other.start()
    await other.close()


async def test_close_stops_listening() -> None:
    server = HealthServer(
        MetricsSettings(host="127.0.0.1", port=0),
        CollectorRegistry(),
        Readiness.for_accounts([], 1),
    )
    await server.start()
    url = server.url
    await server.close()
    await server.close()  # idempotent
    async with httpx.AsyncClient(timeout=2) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{url}/healthz")
