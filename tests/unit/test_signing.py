"""Request signing with FIXED keys and known payloads, verified independently.

Independent verification means: the public key is loaded straight from its PEM and
the signature checked with ``cryptography`` calls written here, not with the
project's ``verify()``; raw r||s is re-assembled by hand.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pydantic import SecretStr

from killswitch.config import AccountSettings
from killswitch.exchange.client import ExchangeClient, prepare_request
from killswitch.exchange.signing import (
    KeyLoadError,
    SignatureEncoding,
    Signer,
    compact_json,
    encode_query,
    load_private_key,
    signing_payload,
    verify,
)
from tests.support.keys import PKCS8_PEM

# One P-256 key in the three file formats the docs allow (the same private scalar):
# PKCS#8 (tests/support/keys.py), SEC1 and OpenSSH.
SEC1_PEM = b"""-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIDBSZBzdae5kgPUqlDHtQzpRIQ4Ydk9Ypd3PA8eAZFvuoAoGCCqGSM49
AwEHoUQDQgAE9Ddn1Uh4IsB3bwocVTRMIA6vOmZWWx2oT272WFzgOT73zJVa7kWa
gOEtjrBwP1yv2UGaKOL6KnA6jz12SeV72Q==
-----END EC PRIVATE KEY-----
"""
OPENSSH_KEY = b"""-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAaAAAABNl
Y2RzYS1zaGEyLW5pc3RwMjU2AAAACG5pc3RwMjU2AAAAQQT0N2fVSHgiwHdvChxV
NEwgDq86ZlZbHahPbvZYXOA5PvfMlVruRZqA4S2OsHA/XK/ZQZoo4voqcDqPPXZJ
5XvZAAAAoBOqzKcTqsynAAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAy
NTYAAABBBPQ3Z9VIeCLAd28KHFU0TCAOrzpmVlsdqE9u9lhc4Dk+98yVWu5FmoDh
LY6wcD9cr9lBmiji+ipwOo89dknle9kAAAAgMFJkHN1p7mSA9SqUMe1DOlEhDhh2
T1il3c8Dx4BkW+4AAAAAAQIDBAUGBwg=
-----END OPENSSH PRIVATE KEY-----
"""
PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9Ddn1Uh4IsB3bwocVTRMIA6vOmZW
Wx2oT272WFzgOT73zJVa7kWagOEtjrBwP1yv2UGaKOL6KnA6jz12SeV72Q==
-----END PUBLIC KEY-----
"""
PRIVATE_SCALAR = 0x3052641CDD69EE6480F52A9431ED433A51210E18764F58A5DDCF03C780645BEE

# A P-384 key: must be refused when the configured curve is P-256.
P384_PEM = b"""-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDDB+0dbp3PrOBIvuVtV
brHnUntfy/mRbDbncTKcSWdh1ac+vNIIV1O+sDxLSemaU5mhZANiAATmQixyc9L+
6ET6LCUapn2Vo916w6GV+Sy27cO1I+VDvyxd1Pul0QlKAJrzbZq1Of1+xIXKKSIQ
I7nlh5q7QX+VLKbMhFyZeBZPohq0g8e2VneD0QmX0u9zwxdFA8a0vyE=
-----END PRIVATE KEY-----
"""

# The documented example: cancel order 123 on BTC_USDT at a fixed time.
CANCEL_PAYLOAD = b"1714440597515DELETE/coin/internal/v1/orderorder_id=123&symbol=BTC_USDT"
# Signatures of CANCEL_PAYLOAD made once with the key above (ECDSA is randomised, so
# these are fixed vectors for the verifier, not expected outputs of the signer).
KNOWN_SIGNATURES = {
    "base64-der": "MEUCIQCv6bEyRYfxeD+6yUaPxadb2EWvSNfJYwyIgGZfWBLcCQIgH/XiGKnqAIa7gsq1"
    "d7eG7N1ACtXwK0yZsQ9LDNcJMGE=",
    "hex-der": "3044022007a04acc28252bc58e2e5afe2c7e679a9a0b98e7cdcacf843ce8ae127afeafdb"
    "022070525ce55b9da39f8bded5531b6cd2c285537d01847671df792f858d91ef2cfd",
    "base64-raw": "1C/Hto4L3OES/yPEdQXlzvYLI//9WYwJBxcmz/QjgxUf+QjFrd91pijuky1YHZug3fcI"
    "kMqKBl+zEvp6gh26gA==",
}
ENCODINGS = ("base64-der", "hex-der", "base64-raw")


def public_key() -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(PUBLIC_PEM)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def independent_der(signature: str, encoding: str) -> bytes:
    """Header signature to DER without the project's decode_signature."""
    if encoding == "base64-der":
        return base64.b64decode(signature)
    if encoding == "hex-der":
        return bytes.fromhex(signature)
    raw = base64.b64decode(signature)
    assert len(raw) == 64
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def independently_valid(payload: bytes, signature: str, encoding: str) -> bool:
    try:
        public_key().verify(
            independent_der(signature, encoding), payload, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        return False
    return True


def test_payload_is_plain_concatenation() -> None:
    query = encode_query([("order_id", 123), ("symbol", "BTC_USDT")])
    assert query == "order_id=123&symbol=BTC_USDT"
    assert (
        signing_payload("1714440597515", "delete", "/coin/internal/v1/order", query, b"")
        == CANCEL_PAYLOAD
    )


def test_body_is_compact_json_in_given_order() -> None:
    body = compact_json({"order_ids": [1, 2, 3], "symbol": "BTC_IDR"})
    assert body == b'{"order_ids":[1,2,3],"symbol":"BTC_IDR"}'
    payload = signing_payload("1", "DELETE", "/coin/internal/v1/order/batch", "", body)
    assert (
        payload == b'1DELETE/coin/internal/v1/order/batch{"order_ids":[1,2,3],"symbol":"BTC_IDR"}'
    )


@pytest.mark.parametrize(
    "key_bytes", [PKCS8_PEM, SEC1_PEM, OPENSSH_KEY], ids=["pkcs8", "sec1", "openssh"]
)
def test_all_key_formats_load_the_same_key(key_bytes: bytes) -> None:
    key = load_private_key(key_bytes)
    assert key.private_numbers().private_value == PRIVATE_SCALAR


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    "key_bytes", [PKCS8_PEM, SEC1_PEM, OPENSSH_KEY], ids=["pkcs8", "sec1", "openssh"]
)
def test_signatures_verify_independently(key_bytes: bytes, encoding: SignatureEncoding) -> None:
    signer = Signer(load_private_key(key_bytes), encoding)
    signature = signer.sign(CANCEL_PAYLOAD)
    assert independently_valid(CANCEL_PAYLOAD, signature, encoding)
    assert not independently_valid(CANCEL_PAYLOAD + b"x", signature, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_known_signature_vectors(encoding: SignatureEncoding) -> None:
    signature = KNOWN_SIGNATURES[encoding]
    assert independently_valid(CANCEL_PAYLOAD, signature, encoding)
    assert verify(public_key(), CANCEL_PAYLOAD, signature, encoding)
    tampered = CANCEL_PAYLOAD.replace(b"123", b"124")
    assert not verify(public_key(), tampered, signature, encoding)


def test_signature_shapes() -> None:
    key = load_private_key(PKCS8_PEM)
    assert len(base64.b64decode(Signer(key, "base64-raw").sign(b"x"))) == 64
    hex_sig = Signer(key, "hex-der").sign(b"x")
    assert bytes.fromhex(hex_sig)[0] == 0x30  # a DER SEQUENCE


def test_wrong_curve_is_a_clear_error() -> None:
    with pytest.raises(KeyLoadError, match=r"curve secp384r1, configured curve is P-256"):
        load_private_key(P384_PEM, curve="P-256")
    assert load_private_key(P384_PEM, curve="P-384").curve.name == "secp384r1"


def test_unreadable_key_error_holds_no_key_material() -> None:
    garbage = PKCS8_PEM.replace(b"MIGHAgEAMBMG", b"XXXXXXXXXXXX")
    with pytest.raises(KeyLoadError) as info:
        load_private_key(garbage)
    assert "MIGH" not in str(info.value)
    assert "Me1DOlEhDhh2" not in str(info.value)


def test_prepared_request_signs_the_sent_target_and_headers() -> None:
    signer = Signer(load_private_key(PKCS8_PEM), "base64-der")
    query = encode_query([("order_id", 123), ("symbol", "BTC_USDT")])
    prepared = prepare_request(
        "DELETE",
        "/coin/internal/v1/order",
        query,
        api_key="key-1",
        signer=signer,
        timestamp_ms=1714440597515,
    )
    assert prepared.target == "/coin/internal/v1/order?order_id=123&symbol=BTC_USDT"
    assert prepared.headers["X-API-KEY"] == "key-1"
    assert prepared.headers["X-TIMESTAMP"] == "1714440597515"
    assert independently_valid(CANCEL_PAYLOAD, prepared.headers["X-SIGNATURE"], "base64-der")
    assert "Content-Type" not in prepared.headers


def test_httpx_sends_the_signed_query_bytes_unchanged() -> None:
    """The URL is built once; httpx must not re-encode it (reserved characters included)."""
    query = encode_query([("symbol", "BTC/USDT x"), ("note", "a+b&c=d~é")])
    url = httpx.URL("http://127.0.0.1:1/coin/internal/v1/order/open?" + query)
    assert url.raw_path.decode() == "/coin/internal/v1/order/open?" + query
    assert query == "symbol=BTC%2FUSDT%20x&note=a%2Bb%26c%3Dd~%C3%A9"


def test_prepared_batch_request_signs_body_bytes() -> None:
    signer = Signer(load_private_key(SEC1_PEM), "hex-der")
    body = compact_json({"order_ids": [5, 6], "symbol": "BTC_IDR"})
    prepared = prepare_request(
        "delete",
        "/coin/internal/v1/order/batch",
        "",
        body,
        api_key="k",
        signer=signer,
        timestamp_ms=42,
    )
    expected = b'42DELETE/coin/internal/v1/order/batch{"order_ids":[5,6],"symbol":"BTC_IDR"}'
    assert prepared.method == "DELETE"
    assert prepared.body == body
    assert prepared.headers["Content-Type"] == "application/json"
    assert independently_valid(expected, prepared.headers["X-SIGNATURE"], "hex-der")


def account(tmp_path: Path, key: bytes, **kw: object) -> AccountSettings:
    path = tmp_path / "key"
    path.write_bytes(key)
    return AccountSettings(
        id="acct-1", api_key=SecretStr("api-key-secret"), private_key_file=path, **kw
    )


async def test_client_loads_openssh_key_file(tmp_path: Path) -> None:
    client = ExchangeClient(account(tmp_path, OPENSSH_KEY, signature_encoding="base64-raw"))
    await client.close()
    assert "api-key-secret" not in repr(client)


def test_client_refuses_wrong_curve_naming_account_not_key(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError) as info:
        ExchangeClient(account(tmp_path, P384_PEM))
    message = str(info.value)
    assert "acct-1" in message
    assert "secp384r1" in message
    assert "api-key-secret" not in message
    assert "MIG2" not in message
