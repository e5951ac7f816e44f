"""The exchange client's errors: the port's error tree (:mod:`killswitch.core.errors`),
under the adapter's name for the code around the client. The client raises them after
translating the transport's exceptions at its boundary; the engine imports them from the core."""

from killswitch.core.errors import (
    AuthError,
    ExchangeError,
    ExchangeUnavailable,
    InvalidRequest,
    NotFound,
    ProtocolError,
    Redirected,
    RequestRejected,
    RequestTimeout,
    TransportError,
    redirect_problem,
)

__all__ = [
    "AuthError",
    "ExchangeError",
    "ExchangeUnavailable",
    "InvalidRequest",
    "NotFound",
    "ProtocolError",
    "Redirected",
    "RequestRejected",
    "RequestTimeout",
    "TransportError",
    "redirect_problem",
]
