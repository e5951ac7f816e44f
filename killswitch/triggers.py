"""Signed manual triggers: Ed25519 signatures by operators on an allowlist (pure, no I/O).

Canonical form (what is signed): the alert JSON object *as sent*, without its
``signature`` member, serialised with keys sorted at every level, compact
separators (``,`` and ``:``), non-ASCII characters kept as UTF-8 (not
``\\u`` escapes), encoded as UTF-8. For the values alerts carry (strings,
integers, booleans, null, lists, objects) this matches RFC 8785 (JCS) except
for key order among non-BMP characters, which alert keys never use.

The ``signature`` member is the standard base64 of the 64-byte Ed25519
signature; the signer is named by ``operator.name``, which is part of the signed
bytes. A trigger is accepted when the operator is on the allowlist, the
signature verifies, and ``created_at`` is within ``max_age_s`` of now (either
side, for clock skew). Re-use of an ``alert_id`` is refused by the intake's
dedup window (a replayed signed trigger is still a valid signature).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from killswitch.config import TriggerSigningSettings

__all__ = [
    "SIGNATURE_FIELD",
    "TriggerKeyError",
    "TriggerVerifier",
    "canonical_bytes",
    "load_public_key",
    "sign_trigger",
]

SIGNATURE_FIELD = "signature"
_ED25519_RAW_LEN = 32
_ED25519_SIG_LEN = 64


class TriggerKeyError(ValueError):
    """An operator public key in the configuration cannot be used."""


def canonical_bytes(message: Mapping[str, Any]) -> bytes:
    """The bytes an operator signs: the message without ``signature``, canonical JSON."""
    unsigned = {k: v for k, v in message.items() if k != SIGNATURE_FIELD}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from base64 of the raw 32 bytes, or a PEM (SubjectPublicKeyInfo)."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(stripped.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise TriggerKeyError(f"not a readable PEM public key ({type(exc).__name__})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise TriggerKeyError(f"PEM key is {type(key).__name__}, not Ed25519")
        return key
    try:
        raw = base64.b64decode(stripped.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise TriggerKeyError("neither PEM nor base64") from None
    if len(raw) != _ED25519_RAW_LEN:
        raise TriggerKeyError(f"base64 key is {len(raw)} bytes, an Ed25519 key is 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign_trigger(
    alert: Mapping[str, Any], operator_name: str, private_key: Ed25519PrivateKey
) -> dict[str, Any]:
    """A copy of ``alert`` with ``operator.name`` set and signed (``signature``)."""
    message = copy.deepcopy(dict(alert))
    message.pop(SIGNATURE_FIELD, None)
    message["operator"] = {"name": operator_name}
    signature = private_key.sign(canonical_bytes(message))
    message[SIGNATURE_FIELD] = base64.b64encode(signature).decode("ascii")
    return message


class TriggerVerifier:
    """Checks manual triggers against the operator allowlist of the configuration.

    Construction validates every key (raises :class:`TriggerKeyError` naming the
    operator, never echoing key material), so a bad allowlist stops the daemon
    at start-up instead of refusing every trigger later.
    """

    def __init__(self, settings: TriggerSigningSettings) -> None:
        self.required = settings.required
        self.max_age_s = settings.max_age_s
        self._keys: dict[str, Ed25519PublicKey] = {}
        for op in settings.operators:
            if op.name in self._keys:
                raise TriggerKeyError(f"trigger_signing.operators: {op.name!r} listed twice")
            try:
                self._keys[op.name] = load_public_key(op.public_key)
            except TriggerKeyError as exc:
                raise TriggerKeyError(
                    f"trigger_signing.operators[{op.name!r}].public_key: {exc}"
                ) from None
        if self.required and not self._keys:
            raise TriggerKeyError("trigger_signing.required is true but no operators are listed")

    @property
    def operators(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(
        self,
        message: Mapping[str, Any],
        operator: str,
        created_at: datetime,
        *,
        now: datetime,
    ) -> str | None:
        """None when the trigger is authorised, else the reason it is not."""
        key = self._keys.get(operator)
        if key is None:
            return f"operator {operator[:128]!r} is not on the signing allowlist"
        encoded = message.get(SIGNATURE_FIELD)
        if not isinstance(encoded, str) or not encoded:
            return "signature missing (trigger signing is required)"
        try:
            signature = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return "signature is not base64"
        if len(signature) != _ED25519_SIG_LEN:
            return f"signature is {len(signature)} bytes, an Ed25519 signature is 64"
        try:
            key.verify(signature, canonical_bytes(message))
        except InvalidSignature:
            return f"signature does not verify for operator {operator!r}"
        except ValueError:  # NaN / unserialisable values cannot have been signed
            return "message has no canonical form"
        age = (now - created_at).total_seconds()
        if abs(age) > self.max_age_s:
            when = "old" if age > 0 else "in the future"
            return f"created_at is {abs(age):.0f}s {when}, outside the {self.max_age_s:.0f}s window"
        return None
