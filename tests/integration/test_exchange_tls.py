"""TLS towards the exchange, per account: the simulator behind a TLS-terminating proxy
with a throwaway CA (``tests/support/tls.py``), the full client on the shipped transport.

The right CA works; a wrong CA, a certificate for another host, and (with mutual TLS)
a missing client certificate are refused, and no request reaches the simulator: the
proxy pipes a connection upstream only after its handshake succeeded, and the order
stays open.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pydantic
import pytest

from killswitch.config import ExchangeTlsSettings
from killswitch.core.outcomes import Outcome
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.signing import KeyLoadError
from killswitch.exchange.transport import tls_context
from killswitch.simulator import Simulator, SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support.tls import Pki, TLSProxy, make_pki

pytestmark = pytest.mark.integration

SYMBOL = "BTC_USDT"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def exchange_behind_tls(
    pki: Pki, client_ca: Path | None = None
) -> AsyncIterator[tuple[Simulator, TLSProxy, str, str, bytes]]:
    sim = Simulator(seed=5)
    api_key, pem = register_test_client(sim)
    async with SimulatorServer(sim) as server:
        proxy = TLSProxy(pki, ("127.0.0.1", server.port), free_port(), client_ca)
        await proxy.start()
        try:
            yield sim, proxy, f"https://127.0.0.1:{proxy.port}", api_key, pem
        finally:
            await proxy.stop()


async def cancel_one(
    sim: Simulator, base_url: str, api_key: str, pem: bytes, tls: dict[str, Any]
) -> tuple[Outcome, str | None, bool]:
    """Cancel one seeded order over TLS: (outcome, error, the order is still open)."""
    (order_id,) = sim.seed_orders(api_key, SYMBOL, 1)
    settings = account_settings(
        base_url, api_key, pem, tls=tls, max_attempts=2, request_deadline_s=5.0
    )
    async with ExchangeClient(settings) as client:
        result = await client.cancel_order(order_id, SYMBOL)
    return result.outcome, result.error, order_id in sim.open_order_ids(api_key, SYMBOL)


async def test_the_right_ca_works(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    async with exchange_behind_tls(pki) as (sim, proxy, url, key, pem):
        outcome, _, still_open = await cancel_one(sim, url, key, pem, {"cafile": pki.ca_cert})
    assert (outcome, still_open) == (Outcome.SENT, False)
    assert proxy.connections >= 1


@pytest.mark.parametrize("tls", ["wrong-ca", "system-store", "wrong-host"])
async def test_an_unverified_exchange_gets_no_request(tls: str, tmp_path: Path) -> None:
    names = ("exchange.example",) if tls == "wrong-host" else ("localhost", "127.0.0.1")
    pki = make_pki(tmp_path / "pki", names=names)
    other = make_pki(tmp_path / "other", ca_name="some other CA")
    settings = {
        "wrong-ca": {"cafile": other.ca_cert},
        "system-store": {},
        "wrong-host": {"cafile": pki.ca_cert},
    }[tls]
    async with exchange_behind_tls(pki) as (sim, proxy, url, key, pem):
        outcome, error, still_open = await cancel_one(sim, url, key, pem, settings)
    assert (outcome, error, still_open) == (Outcome.FAILED, "ConnectError", True)
    assert proxy.connections == 0


async def test_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    client = make_pki(tmp_path / "client", ca_name="client CA", names=("mm-1",))
    stranger = make_pki(tmp_path / "stranger", ca_name="stranger CA", names=("mm-1",))
    async with exchange_behind_tls(pki, client_ca=client.ca_cert) as (sim, proxy, url, key, pem):
        good = {"cafile": pki.ca_cert, "certfile": client.server_cert, "keyfile": client.server_key}
        assert (await cancel_one(sim, url, key, pem, good))[::2] == (Outcome.SENT, False)
        admitted = proxy.connections
        for tls in (
            {"cafile": pki.ca_cert},
            {
                "cafile": pki.ca_cert,
                "certfile": stranger.server_cert,
                "keyfile": stranger.server_key,
            },
        ):
            outcome, _, still_open = await cancel_one(sim, url, key, pem, tls)
            assert (outcome, still_open) == (Outcome.FAILED, True)
    assert proxy.connections == admitted


def test_min_version_and_verification_are_applied(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    context = tls_context(ExchangeTlsSettings(cafile=pki.ca_cert, min_version="TLSv1.3"))
    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert tls_context(ExchangeTlsSettings()) is None  # the shared default context serves


def test_missing_files_are_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="cafile: file not found"):
        ExchangeTlsSettings(cafile=tmp_path / "absent.pem")
    with pytest.raises(pydantic.ValidationError, match="keyfile needs certfile"):
        ExchangeTlsSettings(keyfile=tmp_path / "absent.key")


def test_an_unusable_client_key_is_a_start_up_error_naming_the_account(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    _, pem = register_test_client(Simulator(seed=1))
    tls = {"certfile": pki.server_cert, "keyfile": other.server_key}  # not its key
    settings = account_settings("https://127.0.0.1:9", "key", pem, tls=tls)
    with pytest.raises(KeyLoadError, match=r"accounts\[acct-1\]\.tls") as caught:
        ExchangeClient(settings)
    assert "PRIVATE KEY" not in str(caught.value)
