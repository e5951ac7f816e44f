"""Account key files on disk: write a key pair, and make the ones a configuration names.

``killswitch keygen --out FILE`` writes one pair; ``killswitch keygen --config FILE``
(``make keys``) writes every ``private_key_file`` the TOML file names that does not
exist yet, with the account's curve; ``killswitch demo`` does the same for key files
in a ``demo`` directory. An existing file is never overwritten by the latter two.

The TOML file is read directly, not through :func:`killswitch.config.load_settings`:
loading refuses a configuration whose key files are missing, which is exactly when
these are needed. Paths resolve as the settings do: relative to the file's directory.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args

from killswitch.config import ConfigError, config_relative
from killswitch.exchange.signing import (
    CurveName,
    generate_private_key,
    private_key_pem,
    public_key_pem,
)

__all__ = ["ConfiguredKey", "configured_keys", "make_missing_keys", "write_account_key"]

_CURVES = get_args(CurveName)


@dataclass(frozen=True, slots=True)
class ConfiguredKey:
    """An account's ``private_key_file`` as the configuration file names it."""

    account: str
    path: Path
    curve: CurveName


def public_key_path(private_key: Path) -> Path:
    """Where the public half of ``private_key`` is written (``mm-1.pem`` -> ``mm-1.pub.pem``)."""
    return private_key.with_suffix(".pub.pem")


def write_account_key(path: Path, curve: CurveName = "P-256", *, force: bool = False) -> Path:
    """Write a new ECDSA private key (PEM, mode 600) and its public half; the public path.

    Raises :class:`FileExistsError` when ``path`` exists and ``force`` is not set.
    """
    if path.exists() and not force:
        raise FileExistsError(str(path))
    key = generate_private_key(curve)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_key_pem(key))
    public = public_key_path(path)
    public.write_bytes(public_key_pem(key))
    return public


def configured_keys(config: Path) -> list[ConfiguredKey]:
    """Every account of the TOML file with a ``private_key_file`` (resolved like the settings).

    Raises :class:`ConfigError` when the file cannot be read or an account names an
    unknown curve (loading the settings would refuse it too).
    """
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration in {config}: {exc}") from None
    out = []
    for index, account in enumerate(data.get("accounts", [])):
        if not isinstance(account, dict):
            continue
        raw, curve = account.get("private_key_file"), account.get("curve", "P-256")
        if not isinstance(raw, str):
            continue
        name = str(account.get("id", index))
        if curve not in _CURVES:
            raise ConfigError(f"accounts[{name}].curve: must be one of {', '.join(_CURVES)}")
        path = config_relative(raw, config.parent)
        out.append(ConfiguredKey(name, path, cast(CurveName, curve)))
    return out


def make_missing_keys(
    config: Path, wanted: Callable[[ConfiguredKey], bool] = lambda key: True
) -> list[ConfiguredKey]:
    """Write every configured key file that is missing (and ``wanted``); the ones written."""
    made = []
    for key in configured_keys(config):
        if key.path.exists() or not wanted(key):
            continue
        write_account_key(key.path, key.curve)
        made.append(key)
    return made
