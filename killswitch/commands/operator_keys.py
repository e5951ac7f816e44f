"""Operator signing keys: ``keygen --ed25519`` writes one, ``trigger`` / ``release``
load one (PEM or OpenSSH). Errors name the file and the problem, never key material."""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_ssh_private_key,
)

from killswitch.commands.common import OPERATOR_KEY_PASSPHRASE_ENV, UsageError
from killswitch.exitcodes import EXIT_OK, EXIT_USAGE

__all__ = ["keygen_operator", "load_operator_key", "public_key_b64", "write_operator_key"]


def load_operator_key(path: Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) or OpenSSH file.

    Errors name the file and the problem, never any key material.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"signing key {path}: {exc.strerror or type(exc).__name__}") from None
    secret = passphrase.encode() if passphrase else None
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            key: object = load_ssh_private_key(data, secret)
        else:
            key = load_pem_private_key(data, secret)
    except TypeError:
        raise UsageError(
            f"signing key {path}: encrypted; set {OPERATOR_KEY_PASSPHRASE_ENV}"
            if secret is None
            else f"signing key {path}: not encrypted, but a passphrase was given"
        ) from None
    except ValueError:
        raise UsageError(
            f"signing key {path}: not a readable private key (or wrong passphrase)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"signing key {path}: {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key in base64: what ``trigger_signing.operators`` lists."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def write_operator_key(out: Path, *, force: bool = False) -> str:
    """Generate an Ed25519 key into ``out`` (mode 600, PKCS#8 PEM); return the public key."""
    if out.exists() and not force:
        raise UsageError(f"{out} exists (use --force to overwrite)")
    key = Ed25519PrivateKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return public_key_b64(key)


def keygen_operator(args: argparse.Namespace) -> int:
    """``killswitch keygen --ed25519 --out FILE``: an operator's trigger signing key."""
    try:
        public = write_operator_key(Path(args.out), force=args.force)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"private key: {args.out} (mode 600; pass it with --signing-key)\n"
        "add to the daemon's configuration:\n"
        "  [[trigger_signing.operators]]\n"
        '  name = "YOUR-NAME"\n'
        f'  public_key = "{public}"'
    )
    return EXIT_OK
