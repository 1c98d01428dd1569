"""ResponseParser.head_raw: the upstream head as received, only when a proxy may forward it
unchanged (exactly what the encoder would write from the parse, hop-by-hop fields aside)."""

from __future__ import annotations

import pytest

from trio_mesh.protocols.http1 import (
    EndOfMessage,
    ResponseHead,
    ResponseParser,
    encode_response_head,
    strip_hop_by_hop,
)

PLAIN = [
    b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Mixed-Case: v\r\n\r\n",
    b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
    b"HTTP/1.1 204 No Content\r\nDate: today\r\n\r\n",
]

NOT_PLAIN = {
    "connection-names": (
        b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\n"
    ),
    "connection-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n",
    "two-connection-fields": (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: keep-alive\r\n"
        b"Content-Length: 5\r\n\r\n"
    ),
    "keep-alive-with-ows": (
        b"HTTP/1.1 200 OK\r\nConnection:keep-alive\r\nContent-Length: 5\r\n\r\n"
    ),
    "keep-alive": b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\n",
    "proxy-field": b"HTTP/1.1 200 OK\r\nProxy-Authenticate: x\r\nContent-Length: 5\r\n\r\n",
    "te": b"HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 5\r\n\r\n",
    "upgrade": b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\n",
    "http2-settings": b"HTTP/1.1 200 OK\r\nHTTP2-Settings: x\r\nContent-Length: 5\r\n\r\n",
    "leading-zeros": b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\n",
    "http-1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
    "close-delimited": b"HTTP/1.1 200 OK\r\nServer: up\r\n\r\n",
    "204-with-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "304-chunked": b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
}


def final_head(parser: ResponseParser, data: bytes) -> ResponseHead:
    heads = [e for e in parser.feed(data) if isinstance(e, ResponseHead) and e.status >= 200]
    assert len(heads) == 1
    return heads[0]


def as_encoded(resp: ResponseHead, head_request: bool = False) -> bytes:
    """What the proxy writes when it re-encodes (the framing from the parse)."""
    length = resp.content_length if resp.status != 204 else None
    chunked = resp.chunked and not head_request and resp.status not in (204, 304)
    return encode_response_head(
        resp.status, resp.reason, strip_hop_by_hop(resp.headers), length=length, chunked=chunked
    )


@pytest.mark.parametrize("raw", PLAIN)
def test_plain_head_is_kept_and_parses_as_the_encoded_one(raw: bytes) -> None:
    p = ResponseParser()
    resp = final_head(p, raw)
    assert p.head_raw == raw
    # the same head, field for field (the encoder writes the framing field last), as the one
    # the encoder would have written
    kept = final_head(ResponseParser(), p.head_raw)
    encoded = final_head(ResponseParser(), as_encoded(resp))
    kept.headers.sort()
    encoded.headers.sort()
    assert kept == encoded


@pytest.mark.parametrize("raw", list(NOT_PLAIN.values()), ids=list(NOT_PLAIN))
def test_head_a_proxy_must_rewrite_is_not_kept(raw: bytes) -> None:
    p = ResponseParser()
    final_head(p, raw)
    assert p.head_raw is None


def test_chunked_answer_to_head_is_not_kept() -> None:
    # nothing follows a HEAD response: the proxy writes no Transfer-Encoding for it
    p = ResponseParser(head_request=True)
    final_head(p, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert p.head_raw is None


def test_length_answer_to_head_is_kept() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    p = ResponseParser(head_request=True)
    assert p.feed(raw)[-1] == EndOfMessage(None)
    assert p.head_raw == raw


def test_head_split_over_two_reads_is_not_kept() -> None:
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 200 OK\r\nContent-") == []
    final_head(p, b"Length: 2\r\n\r\nok")
    assert p.head_raw is None


def test_final_head_after_an_informational_one_is_kept() -> None:
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    p = ResponseParser()
    final_head(p, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + final + b"ok")
    assert p.head_raw == final


@pytest.mark.parametrize("spelling", [b"Connection: keep-alive", b"connection: Keep-Alive"])
def test_connection_keep_alive_line_is_cut_out(spelling: bytes) -> None:
    # nginx's answer to an HTTP/1.1 client: the field changes nothing there, and goes
    p = ResponseParser()
    resp = final_head(
        p, b"HTTP/1.1 200 OK\r\nServer: up\r\n" + spelling + b"\r\nContent-Length: 5\r\n\r\n"
    )
    assert p.head_raw == b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 5\r\n\r\n"
    assert resp.keep_alive
