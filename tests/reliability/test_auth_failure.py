"""Auth failure mid-sweep: one account's API key revoked on the exchange while it is swept.

One alert addresses two accounts. When ``mm-1`` has sent some cancels its key is revoked
on the simulator: its sweep must stop at once with ``failed`` (not hammer the exchange
with a refused key), ``mm-2`` must still end flat, and the daemon's readiness endpoint
must say that ``mm-1``'s key is refused. Once the key is reinstated, a new kill for
``mm-1`` works and the daemon is ready again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from killswitch.exchange.simulator import EndpointFaults
from tests.support import figures
from tests.support.daemon import Daemons, daemon_config, http_get, write_config
from tests.support.exchange import exchange
from tests.support.topics import Producer, TopicCollector, alert, create_topics
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ACCOUNTS = ["mm-1", "mm-2"]
SYMBOLS = ["BTC_USDT", "ETH_USDT", "SOL_USDT"]


async def ready_state(url: str) -> tuple[int, list[str]]:
    response = await http_get(f"{url}/readyz")
    assert response is not None
    return response.status_code, list(response.json()["reasons"])


async def test_revoked_key_fails_that_account_only_and_readiness_says_so(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS, seed=3) as ex:
        ex.sim.set_faults(EndpointFaults(latency_ms=2, jitter_ms=4))
        for account in ACCOUNTS:
            ex.seed(account, SYMBOLS, 25)
        config = daemon_config(
            kafka_bootstrap,
            f"auth{ex.server.port}",
            ex.account_configs(rate_limit_per_second=60.0, burst=5, max_concurrency=4),
        )
        topics = config["kafka"]["topics"]
        url = f"http://127.0.0.1:{config['metrics']['port']}"
        await create_topics(kafka_bootstrap, topics)
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", config))
        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            Producer(kafka_bootstrap) as producer,
        ):
            await producer.send(topics["alerts"], alert("auth-1", ACCOUNTS), key="mm-1")
            await wait_for(lambda: len(ex.log("cancel")) >= 10, timeout=30)
            ex.sim.revoke(ex.api_key("mm-1"))
            await wait_for(lambda: len(results.finals("auth-1")) == 2, timeout=30)
            by_account = {r["account"]: r for r in results.finals("auth-1")}
            status, reasons = await ready_state(url)
            metrics = await http_get(f"{url}/metrics")

            # The key comes back: a new kill for mm-1 works and the daemon is ready again.
            ex.sim.reinstate(ex.api_key("mm-1"))
            await producer.send(topics["alerts"], alert("auth-2", ["mm-1"]), key="mm-1")
            await wait_for(lambda: bool(results.finals("auth-2")), timeout=30)
            recovered = await ready_state(url)
            daemon.terminate()
            assert await daemon.wait(timeout=30) == 0
            recovery = (await results.to_end()).finals("auth-2")

    failed, flat = by_account["mm-1"], by_account["mm-2"]
    assert failed["status"] == "failed"
    assert "authentication" in failed["reason"]
    counts = failed["counts"]
    assert (
        counts["resolved"]
        == len(failed["orders"])
        == sum(v for k, v in counts.items() if k != "resolved")
    )
    assert counts["sent"] >= 1
    # It stopped: a handful of requests (those already in flight) after the first 401.
    mm1 = [e for e in ex.log() if e.client == "mm-1"]
    first_401 = next(i for i, e in enumerate(mm1) if e.status == 401)
    refused_then = [e for e in mm1[first_401:] if e.status == 401]
    assert len(refused_then) <= 8, f"{len(refused_then)} requests with a refused key"
    # The other account did not notice.
    assert flat["status"] == "flat"
    assert ex.open_ids("mm-2") == set()
    # Readiness names the account and its problem, and only that account.
    assert status == 503
    assert "mm-1: auth rejected" in reasons
    assert not [r for r in reasons if "mm-2" in r]
    assert metrics is not None
    assert "killswitch_ready 0.0" in metrics.text
    # After the key was reinstated.
    assert [r["status"] for r in recovery] == ["flat"]
    assert ex.open_ids("mm-1") == set()
    assert recovered == (200, [])
    figures.add("auth: requests refused after revocation", len(refused_then))
