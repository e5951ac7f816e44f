"""What the exchange client and its transport share: timeouts, stale connections, headers.

The client speaks the httpx transport interface (``httpx.AsyncBaseTransport``); the
one transport it ships with is :class:`~killswitch.exchange.http1.Http1Transport`
(HTTP/1.1 on asyncio sockets, framing by llhttp through ``httptools``), chosen by
measurement (``docs/CLIENT.md``). Its :meth:`~RawTransport.send_raw` fast path takes
the prepared method, URL string, headers and body bytes and returns ``(status, body
bytes, raw headers)`` without building ``httpx.Request``/``httpx.Response``; any other
httpx transport (``httpx.MockTransport`` in tests, a user's own) goes through
``handle_async_request`` as usual. Whatever the transport, the client bounds every
attempt by its own deadline.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

if TYPE_CHECKING:
    from killswitch.config import ExchangeTlsSettings

# Response headers as raw (name, value) byte pairs, as received (names in any case).
RawHeaders = list[tuple[bytes, bytes]]

TransportKind = Literal["http1"]
TRANSPORT_KINDS: tuple[TransportKind, ...] = ("http1",)


@dataclass(frozen=True, slots=True)
class Phases:
    """Per-phase timeouts in seconds (httpx's ``connect``/``read``/``pool``; None: no limit).

    ``write`` has no counterpart: the read timeout of the same attempt covers it.
    """

    connect: float | None = None
    read: float | None = None
    pool: float | None = None


class AttemptDeadline(httpx.TimeoutException):
    """The deadline given to :meth:`RawTransport.send_raw` passed before the answer was
    complete (the connection is discarded, like after any timeout)."""


class StaleConnection(httpx.ReadError):
    """A reused keep-alive connection ended before any byte of the answer (the server
    had closed it while idle). Raised instead of sending the same bytes again when the
    caller asked so (``resend_stale=False``): a signed request must be signed anew (a
    fresh timestamp) before it goes out again, on a fresh connection (``fresh=True``)."""


# The httpx request extensions the generic path honours on our own transport.
RESEND_STALE = "killswitch.resend_stale"
FRESH_CONNECTION = "killswitch.fresh_connection"


def header(headers: RawHeaders, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case bytes), decoded, or None."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RawTransport(Protocol):
    """A transport with the exchange client's fast path."""

    async def send_raw(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        phases: Phases,
        *,
        deadline: float | None = None,
        resend_stale: bool = True,
        fresh: bool = False,
    ) -> tuple[int, bytes, RawHeaders]:
        """Send prepared bytes, return ``(status, body bytes, raw headers)``; httpx's exceptions.

        ``deadline`` (event loop clock, ``loop.time()``): the whole exchange (pool wait,
        connect, write, the complete answer) ends by then, with :class:`AttemptDeadline`
        when the answer is what is late (the pool wait and connect, capped to it, raise
        their own timeouts). ``resend_stale=False``: a stale keep-alive connection raises
        :class:`StaleConnection` instead of sending the same bytes again; ``fresh``: use
        a new connection, not an idle one.
        """
        ...


def phases_of(spec: Any) -> Phases:
    """httpx's per-phase timeout extension (a dict, or absent) as :class:`Phases`."""
    if not isinstance(spec, dict):
        return Phases()
    return Phases(spec.get("connect"), spec.get("read"), spec.get("pool"))


_TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def tls_context(settings: ExchangeTlsSettings) -> ssl.SSLContext | None:
    """The account's TLS context towards the exchange; None when every setting is default.

    Certificates and host names are always verified: against ``cafile`` when set (the
    system store otherwise); ``certfile``/``keyfile`` present a client certificate
    (mutual TLS); ``min_version`` is the lowest protocol version offered. Unreadable
    files raise ``OSError``/``ssl.SSLError`` naming the file, never its contents.
    """
    if settings.is_default():
        return None
    context = ssl.create_default_context(
        cafile=str(settings.cafile) if settings.cafile is not None else None
    )
    context.minimum_version = _TLS_VERSIONS[settings.min_version]
    if settings.certfile is not None:
        password = settings.key_password
        context.load_cert_chain(
            str(settings.certfile),
            str(settings.keyfile) if settings.keyfile is not None else None,
            password.get_secret_value() if password is not None else None,
        )
    return context
