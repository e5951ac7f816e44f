"""An account's private key, loaded once from its settings (file or inline secret)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from killswitch.config import AccountSettings
from killswitch.exchange.signing import KeyLoadError, load_private_key


def load_account_key(account: AccountSettings) -> ec.EllipticCurvePrivateKey:
    """The account's ECDSA key; :class:`KeyLoadError` naming the setting (never the key)."""
    passphrase = account.private_key_passphrase
    try:
        return load_private_key(
            account.private_key_bytes(),
            passphrase.get_secret_value().encode() if passphrase else None,
            account.curve,
        )
    except (KeyLoadError, OSError) as exc:
        path = account.private_key_file
        where = "private_key" if path is None else f"private_key_file {str(path)!r}"
        raise KeyLoadError(f"accounts[{account.id}].{where}: {exc}") from None
