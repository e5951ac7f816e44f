"""HTTP/1.1 answers for the differential tests of the transport's answer reader: a
hypothesis strategy of answers (optionally broken), random splits of their bytes, and
the verdicts of our reader and of h11 on the same pieces.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import h11
import httpx
from hypothesis import strategies as st

from killswitch.exchange.http1 import AnswerReader


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    status: int = 0
    body: bytes = b""


def ours(pieces: list[bytes]) -> Verdict:
    reader = AnswerReader()
    try:
        for piece in pieces:
            if reader.feed(piece):
                break
        done = reader.complete or reader.feed_eof()
    except httpx.RemoteProtocolError:
        return Verdict(False)
    return Verdict(True, reader.status, reader.body) if done else Verdict(False)


def theirs(pieces: list[bytes]) -> Verdict:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    status = 0
    body = bytearray()
    try:
        for piece in [*pieces, b""]:  # b"": the end of the connection
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return Verdict(True, status, bytes(body))
                elif isinstance(event, h11.ConnectionClosed):
                    return Verdict(False)
    except h11.RemoteProtocolError:
        return Verdict(False)
    return Verdict(False)


TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=12,
)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
RESERVED = {"content-length", "transfer-encoding", "connection", "content-encoding", "upgrade"}
BREAKS = (
    "none",
    "truncate",
    "no-colon",
    "nul",
    "space-before-colon",
    "bad-length",
    "two-lengths",
    "bad-chunk-size",
    "chunk-without-crlf",
    "bad-status",
)


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, str]:
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    status = draw(st.sampled_from([200, 201, 202, 204, 304, 400, 404, 409, 429, 500, 503]))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    body = draw(st.binary(max_size=300)) if status not in (204, 304) else b""
    headers = [
        (name, value)
        for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=6))
        if name.lower() not in RESERVED
    ]
    broken = draw(st.sampled_from(BREAKS))
    interim = b"".join(
        f"HTTP/1.1 {code} X\r\n\r\n".encode()
        for code in draw(st.lists(st.sampled_from([100, 103]), max_size=2))
    )
    code = "2x0" if broken == "bad-status" else str(status)
    lines = [f"{version} {code} Reason\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if broken == "no-colon":
        lines.append("NoColonHere\r\n")
    if broken == "nul":
        lines.append("X-Nul: a\x00b\r\n")
    if broken == "space-before-colon":
        lines.append("X-Space : v\r\n")
    payload = body
    if framing == "length" or status in (204, 304):
        length = "1x" if broken == "bad-length" else str(len(body))
        lines.append(f"Content-Length: {length}\r\n")
        if broken == "two-lengths":
            lines.append(f"Content-Length: {len(body) + 1}\r\n")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked\r\n")
        cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=4))))
        parts = [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)])]
        wire = b""
        for part in parts:
            if not part:
                continue
            ext = b";a=b" if draw(st.booleans()) else b""
            size = b"zz" if broken == "bad-chunk-size" else f"{len(part):x}".encode()
            end = b"XY" if broken == "chunk-without-crlf" else b"\r\n"
            wire += size + ext + b"\r\n" + part + end
        trailer = b"X-Trailer: 1\r\n" if draw(st.booleans()) else b""
        payload = wire + b"0\r\n" + trailer + b"\r\n"
    data = interim + "".join(lines).encode("latin-1") + b"\r\n" + payload
    if broken == "truncate":
        # Cut inside the head, or inside a framed body: both must see an incomplete answer.
        limit = len(data) if framing != "close" else len(data) - len(payload)
        data = data[: draw(st.integers(1, max(1, limit - 1)))]
    return data, broken


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
