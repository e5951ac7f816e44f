"""``AnswerReader`` (llhttp through httptools, plus our limits and decisions) fed in
every split, and ``request_bytes``, the request side's checks.

Each well-formed case is fed whole, byte by byte, and cut at every single position
and at random positions: the result must not depend on how the bytes arrive.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import httpx
import pytest

from killswitch.exchange.http1 import AnswerReader, Limits, request_bytes


def splits(data: bytes, seed: int = 7) -> Iterator[list[bytes]]:
    """``data`` whole, byte by byte, cut once at every position, and at random cuts."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    rng = random.Random(seed)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), min(5, len(data) - 1)))
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in itertools.pairwise(bounds)]


def parse(pieces: list[bytes], *, eof: bool = False) -> AnswerReader:
    """Feed the pieces; the reader must report completion exactly at the end."""
    parser = AnswerReader()
    done = False
    for index, piece in enumerate(pieces):
        assert not done, f"complete before piece {index}"
        done = parser.feed(piece)
    if eof:
        assert not done
        done = parser.feed_eof()
    assert done
    return parser


def feed_each(parser: AnswerReader, pieces: list[bytes]) -> None:
    for piece in pieces:
        parser.feed(piece)


def parse_all(data: bytes, **kw: bool) -> AnswerReader:
    """Parse ``data`` in every split; all must agree; return the whole-feed result."""
    first = parse([data], **kw)
    for pieces in splits(data):
        other = parse(pieces, **kw)
        assert (other.status, other.headers, other.body, other.keep_alive) == (
            first.status,
            first.headers,
            first.body,
            first.keep_alive,
        ), pieces
    return first


def test_content_length() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
        b'{"ok":true}'
    )
    parser = parse_all(data)
    assert parser.status == 200
    assert parser.body == b'{"ok":true}'
    assert parser.headers == [(b"Content-Type", b"application/json"), (b"Content-Length", b"11")]
    assert parser.keep_alive


def test_headers_are_case_insensitive_and_trimmed() -> None:
    data = b"HTTP/1.1 201 Created\r\ncOnTeNt-LeNgTh:   3 \t\r\nCONNECTION: Close\r\n\r\nabc"
    parser = parse_all(data)
    assert (parser.status, parser.body, parser.keep_alive) == (201, b"abc", False)
    assert parser.headers[0] == (b"cOnTeNt-LeNgTh", b"3")


def test_zero_length_and_empty_reason() -> None:
    parser = parse_all(b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n")
    assert (parser.status, parser.body) == (404, b"")
    parser = parse_all(b"HTTP/1.1 500\r\nContent-Length: 0\r\n\r\n")  # no reason at all
    assert parser.status == 500


def test_chunked_with_extensions_and_trailers() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"1A;a=b;c\r\n" + b"x" * 26 + b"\r\n"
        b"0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"
    )
    parser = parse_all(data)
    assert parser.body == b"hello" + b"x" * 26
    assert parser.keep_alive
    assert (b"X-Checksum", b"1") not in parser.headers  # trailers are not merged


def test_chunked_without_trailers() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert parse_all(data).body == b"abc"


def test_read_until_close() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    parser = parse_all(data, eof=True)
    assert parser.body == b"all of it"
    assert not parser.keep_alive


def test_eof_mid_content_length_body_is_not_complete() -> None:
    parser = AnswerReader()
    assert not parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert not parser.feed_eof()
    assert parser.received


def test_interim_100_continue_is_skipped() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    parser = parse_all(data)
    assert (parser.status, parser.body, parser.headers) == (
        200,
        b"ok",
        [(b"Content-Length", b"2")],
    )


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    # A Content-Length on these describes nothing that follows.
    parser = parse_all(f"HTTP/1.1 {status} X\r\nContent-Length: 7\r\n\r\n".encode())
    assert (parser.status, parser.body, parser.keep_alive) == (status, b"", True)


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    ],
)
def test_keep_alive_decision(head: bytes, keep_alive: bool) -> None:
    body = b"1\r\nx\r\n0\r\n\r\n" if b"chunked" in head else b"x"
    parser = parse_all(head + body)
    assert (parser.body, parser.keep_alive) == (b"x", keep_alive)


@pytest.mark.parametrize(
    "after",
    [b"GARBAGE", b"HTTP/1.1 404 X\r\nContent-Length: 0\r\n\r\n", b"H"],
)
def test_bytes_after_the_answer_make_the_connection_unusable(after: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    parser = parse([answer + after])
    assert (parser.status, parser.body, parser.keep_alive) == (200, b"x", False)
    later = AnswerReader()  # the same bytes arriving in a later read
    assert later.feed(answer)
    assert later.feed(after)
    assert (later.status, later.body, later.keep_alive) == (200, b"x", False)


def test_identity_content_encoding_is_accepted() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 1\r\n\r\nx"
    assert parse_all(data).body == b"x"


MALFORMED = [
    b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name : x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n",  # bare LF
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",  # bare CR
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",  # no CRLF after data
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
    # Refused rather than guessed at (RFC 9112 6.3 lets a recipient reject these).
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\nx\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",  # NUL (RFC 9110 5.5)
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",  # obs-fold
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # LF-only head
    # Codings: never asked for, so never inflated.
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        AnswerReader().feed(data)
    with pytest.raises(httpx.RemoteProtocolError):  # the same, arriving byte by byte
        feed_each(AnswerReader(), [data[i : i + 1] for i in range(len(data))])


def test_head_limit() -> None:
    parser = AnswerReader()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(httpx.RemoteProtocolError, match="head too large"):
        feed_each(parser, [b"X-Pad: " + b"a" * 1000 + b"\r\n"] * 70)  # past 64 KiB
    big = b"HTTP/1.1 200 OK\r\nX: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    with pytest.raises(httpx.RemoteProtocolError, match="head too large"):
        AnswerReader().feed(big)
    # Just under the limit is fine.
    ok = b"HTTP/1.1 200 OK\r\nX: " + b"a" * (60 * 1024) + b"\r\nContent-Length: 0\r\n\r\n"
    assert AnswerReader().feed(ok)


def test_endless_interim_answers_hit_the_head_limit() -> None:
    parser = AnswerReader()
    with pytest.raises(httpx.RemoteProtocolError, match="head too large"):
        feed_each(parser, [b"HTTP/1.1 100 Continue\r\n\r\n"] * 10_000)


def test_body_limits() -> None:
    limit = Limits().body
    with pytest.raises(httpx.RemoteProtocolError, match="body too large"):
        AnswerReader().feed(f"HTTP/1.1 200 OK\r\nContent-Length: {limit + 1}\r\n\r\n".encode())
    assert not AnswerReader().feed(f"HTTP/1.1 200 OK\r\nContent-Length: {limit}\r\n\r\n".encode())
    small = AnswerReader(Limits(body=10))
    small.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    with pytest.raises(httpx.RemoteProtocolError, match="body too large"):
        small.feed(b"6\r\nworld!")
    until_close = AnswerReader(Limits(body=10))
    until_close.feed(b"HTTP/1.1 200 OK\r\n\r\n0123456789")
    with pytest.raises(httpx.RemoteProtocolError, match="body too large"):
        until_close.feed(b"x")


def test_chunk_extension_flood_hits_the_wire_limit() -> None:
    limits = Limits(head=1024, body=1024, chunks=16)
    parser = AnswerReader(limits)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;")
    with pytest.raises(httpx.RemoteProtocolError, match="on the wire"):
        feed_each(parser, [b"e" * 1000] * (limits.wire // 1000 + 1))


def test_chunk_count_limit() -> None:
    parser = AnswerReader(Limits(chunks=100))
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    parser.feed(b"1\r\nx\r\n" * 100)
    with pytest.raises(httpx.RemoteProtocolError, match="too many chunks"):
        parser.feed(b"1\r\nx\r\n")


def test_header_count_limit() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 10
    assert AnswerReader(Limits(headers=11)).feed(head + b"Content-Length: 0\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError, match="too many header"):
        AnswerReader(Limits(headers=10)).feed(head + b"Content-Length: 0\r\n\r\n")
    trailers = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: 1\r\n" * 12
    with pytest.raises(httpx.RemoteProtocolError, match="too many header"):
        AnswerReader(Limits(headers=10)).feed(trailers)


# -- the request side -----------------------------------------------------------------


def test_request_bytes_keeps_dots_that_are_not_segments() -> None:
    data = request_bytes("GET", "/a/.b/c..?x=/../", "h", [], None)
    assert data.startswith(b"GET /a/.b/c..?x=/../ HTTP/1.1\r\n")


def test_request_bytes_with_body() -> None:
    headers = [
        ("X-API-KEY", "k"),
        ("content-length", "999"),  # framing is ours
        ("Host", "evil"),
        ("Connection", "close"),
        ("Transfer-Encoding", "chunked"),
    ]
    data = request_bytes("DELETE", "/a?b=c%2F", "h:8", headers, b'{"x":1}')
    assert data == (
        b"DELETE /a?b=c%2F HTTP/1.1\r\nHost: h:8\r\nX-API-KEY: k\r\n"
        b'Content-Length: 7\r\n\r\n{"x":1}'
    )


@pytest.mark.parametrize(
    ("method", "framing"),
    [("GET", b""), ("DELETE", b""), ("POST", b"Content-Length: 0\r\n")],
)
def test_request_bytes_without_body(method: str, framing: bytes) -> None:
    data = request_bytes(method, "/", "h", [("Accept", "*/*")], None)
    assert (
        data == method.encode() + b" / HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n" + framing + b"\r\n"
    )


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a b", []),
        ("/a\r\nX: y", []),
        ("/", [("X", "a\r\nInjected: 1")]),
        ("/", [("X", "a\nb")]),
        ("/", [("X\r", "a")]),
        ("/", [("X", "\u20ac")]),  # not ASCII
        ("/", [("X", "\xe9")]),  # latin-1, still not ASCII
        ("/", [("X", "a\x00b")]),
        ("/", [("X", "a\x7fb")]),
        ("/", [("X Y", "a")]),
        ("/", [("X:Y", "a")]),
        ("/", [("", "a")]),
        ("/a#frag", []),
        ("/a\x00", []),
        ("/\u00e9", []),
        ("a", []),  # not origin-form
        ("//evil.example/x", []),
        ("/a/../b", []),
        ("/a/./b", []),
        ("/..", []),
        ("", []),
    ],
)
def test_request_bytes_refuses_injection(target: str, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(httpx.LocalProtocolError):
        request_bytes("GET", target, "h", headers, None)


@pytest.mark.parametrize("method", ["HEAD", "GET /x", "G\rET", ""])
def test_request_bytes_refuses_methods(method: str) -> None:
    with pytest.raises(httpx.LocalProtocolError, match="method"):
        request_bytes(method, "/", "h", [], None)
