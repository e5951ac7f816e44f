"""Helpers for tests that run against the simulator (shipped, like structlog's fakes).

sim = Simulator()
api_key, private_pem = register_test_client(sim)
headers = signed_headers(api_key, private_pem, "DELETE", "/coin/internal/v1/order",
                         "order_id=1&symbol=BTC_USDT")
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from killswitch.config import AccountSettings
from killswitch.exchange.signing import (
    CurveName,
    SignatureEncoding,
    Signer,
    compact_json,
    encode_query,
    generate_private_key,
    load_private_key,
    private_key_pem,
    signing_payload,
)
from killswitch.simulator.core import Reply, Request, Simulator
from killswitch.simulator.server import SimulatorServer


def register_test_client(
    sim: Simulator,
    api_key: str | None = None,
    *,
    name: str | None = None,
    curve: CurveName = "P-256",
    signature_encoding: SignatureEncoding = "base64-der",
    rate_limit_per_second: float | None = None,
    burst: int | None = None,
) -> tuple[str, bytes]:
    """Make a key pair, register its public half on ``sim``; return (api_key, private PEM)."""
    key = generate_private_key(curve)
    api_key = api_key or f"test-{secrets.token_hex(8)}"
    sim.add_client(
        api_key,
        key.public_key(),
        signature_encoding=signature_encoding,
        rate_limit_per_second=rate_limit_per_second,
        burst=burst,
        name=name,
    )
    return api_key, private_key_pem(key)


def signed_headers(
    api_key: str,
    private_key: bytes | ec.EllipticCurvePrivateKey,
    method: str,
    path: str,
    *,
    query: str = "",
    body: bytes = b"",
    timestamp_ms: int | None = None,
    signature_encoding: SignatureEncoding = "base64-der",
) -> dict[str, str]:
    """The three auth headers for a request whose query and body are sent exactly so."""
    key = private_key if isinstance(private_key, ec.EllipticCurvePrivateKey) else None
    if key is None:
        assert isinstance(private_key, bytes)
        key = load_private_key(private_key)
    stamp = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
    signature = Signer(key, signature_encoding).sign(
        signing_payload(stamp, method, path, query, body)
    )
    return {"X-API-KEY": api_key, "X-TIMESTAMP": stamp, "X-SIGNATURE": signature}


def account_settings(
    base_url: str,
    api_key: str,
    private_pem: bytes,
    account_id: str = "acct-1",
    **overrides: Any,
) -> AccountSettings:
    """An ``AccountSettings`` pointing at a simulator, key inline (no file needed)."""
    return AccountSettings(
        id=account_id,
        api_key=api_key,  # pydantic converts str to SecretStr
        private_key=private_pem.decode(),
        base_url=base_url,
        **overrides,
    )


class SignedClient:
    """A tiny signed HTTP client for tests against a simulator (not the daemon's client).

    Sends the query and body exactly as given, signed; ``json_body`` is serialised
    compactly first. ``clock_offset_ms`` shifts X-TIMESTAMP (clock-skew tests).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        private_key: bytes | ec.EllipticCurvePrivateKey,
        *,
        signature_encoding: SignatureEncoding = "base64-der",
        clock_offset_ms: int = 0,
        timeout_s: float = 5.0,
    ) -> None:
        self.api_key = api_key
        self._key = (
            private_key
            if isinstance(private_key, ec.EllipticCurvePrivateKey)
            else load_private_key(private_key)
        )
        self.signature_encoding: SignatureEncoding = signature_encoding
        self.clock_offset_ms = clock_offset_ms
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        json_body: Any = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        """One signed request; ``path`` may be relative to ``/coin/internal/v1``."""
        if not path.startswith("/"):
            path = f"/coin/internal/v1/{path}"
        raw = compact_json(json_body) if json_body is not None else (body or b"")
        headers = signed_headers(
            self.api_key,
            self._key,
            method,
            path,
            query=query,
            body=raw,
            timestamp_ms=int(time.time() * 1000) + self.clock_offset_ms,
            signature_encoding=self.signature_encoding,
        )
        if raw:
            headers["Content-Type"] = "application/json"
        url = f"{path}?{query}" if query else path
        return await self.http.request(method, url, content=raw or None, headers=headers)

    async def open_orders(self, symbol: str, **params: int) -> httpx.Response:
        query = encode_query([("symbol", symbol), *params.items()])
        return await self.request("GET", "order/open", query=query)

    async def cancel(self, order_id: int | str, symbol: str) -> httpx.Response:
        query = encode_query([("order_id", order_id), ("symbol", symbol)])
        return await self.request("DELETE", "order", query=query)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> SignedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class DoorServer(SimulatorServer):
    """One more listener on a shared simulator that remembers which requests came
    through it (:attr:`seqs`, the log entries' ``seq``). Give each of several daemons
    trading one account its own door to tell their requests apart in the log."""

    def __init__(self, sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(sim, host, port)
        self.seqs: set[int] = set()

    def _answer(self, request: Request) -> Reply:
        before = self.sim.last_seq
        reply = super()._answer(request)
        # The simulator logs a request synchronously while answering it.
        self.seqs.update(range(before + 1, self.sim.last_seq + 1))
        return reply
