"""The exchange port's error tree: what an :class:`~killswitch.core.ports.ExchangeAPI`
raises, and all the engine knows of exchange failures.

Everything the exchange client (``killswitch.exchange.client``, the adapter) raises for
an exchange or network problem is an :class:`ExchangeError`; third-party exceptions
(httpx) are translated at the client boundary and never escape it. Messages name the
account, the endpoint and the status or exchange error code, never an API key, a
signature or key material.

::

    ExchangeError
    ├── RequestRejected          final 4xx answer (not retried)
    │   ├── AuthError            401/403 or ``invalid_client``
    │   ├── InvalidRequest       400 ``invalid_request``
    │   ├── NotFound             404
    │   └── Redirected           3xx (never followed: a wrong ``base_url``)
    ├── ExchangeUnavailable      retry budget or request deadline exhausted
    ├── ProtocolError            a 2xx answer without the documented shape
    └── TransportError           one attempt failed on the wire (retried inside the client)
        └── RequestTimeout       one attempt timed out (retried inside the client)
"""

from __future__ import annotations


class ExchangeError(Exception):
    """Base of every error the exchange client raises.

    ``account`` is the configured account id (never the API key), ``endpoint``
    the short endpoint name used in metrics (``cancel``, ``open_orders``...).
    """

    def __init__(self, message: str, *, account: str = "", endpoint: str = "") -> None:
        prefix = " ".join(part for part in (account, endpoint) if part)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.account = account
        self.endpoint = endpoint


class RequestRejected(ExchangeError):
    """The exchange gave a final 4xx answer; retrying the same request will not help."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        account: str = "",
        endpoint: str = "",
    ) -> None:
        super().__init__(message, account=account, endpoint=endpoint)
        self.status = status
        self.code = code


class AuthError(RequestRejected):
    """``invalid_client``: key, signature or clock refused. An incident, not retried blindly."""


class InvalidRequest(RequestRejected):
    """``invalid_request``: bad parameters (unknown symbol, malformed id)."""


class NotFound(RequestRejected):
    """404: no such order (or path) for this client."""


class Redirected(RequestRejected):
    """A 3xx answer. Never followed (the signed headers must not go elsewhere) and never
    retried: the account's ``base_url`` is wrong. ``location`` is the ``Location`` header
    (empty when the answer had none)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        location: str,
        account: str = "",
        endpoint: str = "",
    ) -> None:
        super().__init__(message, status=status, account=account, endpoint=endpoint)
        self.location = location


def redirect_problem(status: int, location: str, endpoint: str = "") -> str:
    """How a redirect reads for an operator: a configuration problem of the account,
    naming where the exchange points and which endpoint (client name) answered it."""
    where = f" to {location}" if location else " (no Location)"
    on = f" on {endpoint}" if endpoint else ""
    return f"exchange answered {status} redirect{where}{on}: check base_url"


class ExchangeUnavailable(ExchangeError):
    """Retries (429, 5xx, timeouts, connection errors) ran out of attempts or time.

    ``attempts`` is how many requests were sent; ``last_status`` the last HTTP status
    (``None`` when the last attempt got no answer); ``last_error`` the last
    transport error class or exchange error code.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        last_status: int | None,
        last_error: str | None,
        account: str = "",
        endpoint: str = "",
    ) -> None:
        super().__init__(message, account=account, endpoint=endpoint)
        self.attempts = attempts
        self.last_status = last_status
        self.last_error = last_error


class ProtocolError(ExchangeError):
    """A successful answer that is not the documented shape (bad JSON, missing field)."""


class TransportError(ExchangeError):
    """One attempt failed without an HTTP answer (refused, reset, protocol violation)."""

    def __init__(self, message: str, *, kind: str, account: str = "", endpoint: str = "") -> None:
        super().__init__(message, account=account, endpoint=endpoint)
        self.kind = kind  # the translated exception's class name, e.g. "ConnectError"


class RequestTimeout(TransportError):
    """One attempt hit a connect, read, write or pool timeout."""
