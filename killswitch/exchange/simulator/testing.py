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

from cryptography.hazmat.primitives.asymmetric import ec

from killswitch.config import AccountSettings
from killswitch.exchange.signing import (
    CurveName,
    SignatureEncoding,
    Signer,
    generate_private_key,
    load_private_key,
    private_key_pem,
    signing_payload,
)
from killswitch.exchange.simulator.core import Simulator


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
