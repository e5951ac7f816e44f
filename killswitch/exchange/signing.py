"""Ajaib request signing: pure logic, no I/O.

Payload = timestamp + METHOD + path + query + compact body, concatenated with
nothing between them, signed with ECDSA/SHA-256. The same code builds the bytes
the client sends and the bytes the simulator verifies, so "signed bytes are the
sent bytes" is true by construction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

SignatureEncoding = Literal["base64-der", "hex-der", "base64-raw"]
CurveName = Literal["P-256", "P-384", "secp256k1"]

CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "secp256k1": ec.SECP256K1(),
}

_ECDSA = ec.ECDSA(hashes.SHA256())
# The same check over a digest taken by hashlib: a few microseconds cheaper per call than
# OpenSSL hashing the payload itself (the simulator verifies every request).
_ECDSA_PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))


class KeyLoadError(ValueError):
    """The private or public key could not be used. The message never holds key material."""


def encode_query(params: Sequence[tuple[str, str | int]] | Mapping[str, str | int]) -> str:
    """``k=v`` pairs joined by ``&`` in the given order, values percent-encoded once."""
    items = params if isinstance(params, list | tuple) else _items(params)
    return "&".join([f"{k}={_encode_value(v)}" for k, v in items])


def _items(
    params: Sequence[tuple[str, str | int]] | Mapping[str, str | int],
) -> Iterable[tuple[str, str | int]]:
    return params.items() if isinstance(params, Mapping) else params


# RFC 3986 unreserved characters: what a value may hold unencoded.
_UNRESERVED = re.compile(r"[A-Za-z0-9\-_.~]*")


def _encode_value(value: str | int) -> str:
    # Ids and pair names are already unreserved: one match instead of quote()'s
    # byte-by-byte pass (the same result).
    if type(value) is int:
        return str(value)  # digits and "-" only
    text = str(value)
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="-_.~")


def compact_json(body: Any) -> bytes:
    """JSON with no spaces or newlines: the exact request body that is signed and sent."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signing_payload(timestamp: str, method: str, path: str, query: str, body: bytes) -> bytes:
    """The bytes to sign. ``path`` has no query string; ``query`` has no ``?``."""
    return b"".join(
        (timestamp.encode(), method.upper().encode(), path.encode(), query.encode(), body)
    )


def load_private_key(
    data: bytes, passphrase: bytes | None = None, curve: CurveName = "P-256"
) -> ec.EllipticCurvePrivateKey:
    """Load a PKCS#8 or SEC1 PEM, a DER, or an OpenSSH private key; check its curve."""
    loaders = (
        serialization.load_pem_private_key,
        serialization.load_ssh_private_key,
        serialization.load_der_private_key,
    )
    key: object = None
    for loader in loaders:
        try:
            key = loader(data, passphrase)
            break
        except (ValueError, TypeError, IndexError, UnsupportedAlgorithm):
            continue  # not this format: try the next loader
    if key is None:
        raise KeyLoadError(
            "not a readable PEM (PKCS#8/SEC1), DER or OpenSSH private key, "
            "or the passphrase is wrong or missing"
        )
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyLoadError(f"expected an ECDSA key, got {type(key).__name__}")
    if key.curve.name != CURVES[curve].name:
        raise KeyLoadError(f"key is on curve {key.curve.name}, configured curve is {curve}")
    return key


def load_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """Load a PEM, DER or OpenSSH (``ecdsa-sha2-nistp256 ...``) public key."""
    loaders = (
        serialization.load_pem_public_key,
        serialization.load_ssh_public_key,
        serialization.load_der_public_key,
    )
    for loader in loaders:
        try:
            key = loader(data)
        except (ValueError, TypeError, binascii.Error):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            return key
        raise KeyLoadError(f"expected an ECDSA public key, got {type(key).__name__}")
    raise KeyLoadError("not a readable PEM, DER or OpenSSH public key")


def public_key_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a key (what the operator emails to the exchange)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _coord_len(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def encode_signature(der: bytes, encoding: SignatureEncoding, curve: ec.EllipticCurve) -> str:
    """Render a DER signature in the configured header encoding."""
    if encoding == "base64-der":
        return base64.b64encode(der).decode()
    if encoding == "hex-der":
        return der.hex()
    r, s = decode_dss_signature(der)
    size = _coord_len(curve)
    return base64.b64encode(r.to_bytes(size, "big") + s.to_bytes(size, "big")).decode()


def decode_signature(text: str, encoding: SignatureEncoding, curve: ec.EllipticCurve) -> bytes:
    """Parse a header signature back into DER (ValueError when malformed)."""
    try:
        if encoding == "hex-der":
            return bytes.fromhex(text)
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError("malformed signature encoding") from exc
    if encoding == "base64-der":
        return raw
    size = _coord_len(curve)
    if len(raw) != 2 * size:
        raise ValueError("raw signature has the wrong length")
    return encode_dss_signature(
        int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
    )


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs payloads with one account's key. Holds no API key (that is a header value)."""

    key: ec.EllipticCurvePrivateKey
    encoding: SignatureEncoding = "base64-der"

    def sign(self, payload: bytes) -> str:
        return encode_signature(self.key.sign(payload, _ECDSA), self.encoding, self.key.curve)

    def __repr__(self) -> str:  # never show the key
        return f"Signer(curve={self.key.curve.name}, encoding={self.encoding})"


def verify(
    public_key: ec.EllipticCurvePublicKey,
    payload: bytes,
    signature: str,
    encoding: SignatureEncoding = "base64-der",
) -> bool:
    """True when ``signature`` is a valid signature of ``payload``."""
    try:
        der = decode_signature(signature, encoding, public_key.curve)
        public_key.verify(der, hashlib.sha256(payload).digest(), _ECDSA_PREHASHED)
    except (ValueError, InvalidSignature):
        return False
    return True


def generate_private_key(curve: CurveName = "P-256") -> ec.EllipticCurvePrivateKey:
    """A fresh key pair (for ``killswitch keygen``, the demo and tests)."""
    return ec.generate_private_key(CURVES[curve])


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key (file mode is the caller's duty)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
