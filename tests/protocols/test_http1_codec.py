"""HTTP/1.1 codec: happy paths, request smuggling vectors, limits, encoders, properties."""

from __future__ import annotations

import gc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_mesh.protocols.http1 import (
    Body,
    EndOfMessage,
    H1Error,
    Limits,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
    encode_response_head,
    strip_hop_by_hop,
)

# -- helpers -------------------------------------------------------------------------------


def feed_in(parser, raw: bytes, step: int | None = None) -> list:
    """Feed raw in pieces of `step` bytes (all at once if None); all events."""
    if step is None:
        return parser.feed(raw)
    events = []
    for i in range(0, len(raw), step):
        events += parser.feed(raw[i : i + step])
    return events


def feed_until_error(parser, raw: bytes, step: int | None = None) -> tuple[list, H1Error | None]:
    """Like feed_in, but returns the events seen before an H1Error and the error."""
    events: list = []
    pieces = [raw] if step is None else [raw[i : i + step] for i in range(0, len(raw), step)]
    for piece in pieces:
        try:
            events += parser.feed(piece)
        except H1Error as e:
            return events, e
        if parser.error is not None:  # events before the bad part came first; the error waits
            return events, parser.error
    return events, None


def merged(events: list) -> list:
    """Events with adjacent Body events joined (bodies may arrive in any number of pieces)."""
    out: list = []
    for ev in events:
        if isinstance(ev, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def heads(events: list) -> list:
    return [e for e in events if isinstance(e, (RequestHead, ResponseHead))]


def body_of(events: list) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def parse_request(raw: bytes, **kw) -> list:
    return merged(RequestParser(**kw).feed(raw))


def parse_response(raw: bytes, **kw) -> tuple[ResponseParser, list]:
    p = ResponseParser(**kw)
    return p, merged(p.feed(raw))


# -- requests: happy paths -----------------------------------------------------------------


def test_get_request_fields():
    raw = (
        b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nAccept:  */*  \r\n"
        b"X-Dup: 1\r\nX-DUP: 2\r\nEmpty:\r\n\r\n"
    )
    events = parse_request(raw)
    assert len(events) == 2
    head, end = events
    assert head == RequestHead(
        method=b"GET",
        target=b"/a/b?x=1&y=2",
        path=b"/a/b",
        query=b"x=1&y=2",
        version=b"1.1",
        headers=[
            (b"host", b"example.com"),
            (b"accept", b"*/*"),
            (b"x-dup", b"1"),
            (b"x-dup", b"2"),
            (b"empty", b""),
        ],
        host=b"example.com",
        keep_alive=True,
        content_length=None,
        chunked=False,
        expect_continue=False,
        upgrade=None,
    )
    assert end == EndOfMessage(None)


def test_post_with_content_length_split_body():
    p = RequestParser()
    events = p.feed(b"POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello")
    assert isinstance(events[0], RequestHead)
    assert events[0].content_length == 11
    assert events[1:] == [Body(b"hello")]
    assert p.feed(b" world") == [Body(b" world"), EndOfMessage(None)]
    assert p.feed_eof() == []


def test_chunked_with_trailers():
    raw = (
        b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b'5\r\nhello\r\n6;ext=1;q="v"\r\n world\r\n0\r\nX-Checksum: abc \r\nX-Other: 1\r\n\r\n'
    )
    events = parse_request(raw)
    assert events[0].chunked and events[0].content_length is None
    assert events[1] == Body(b"hello world")
    assert events[2] == EndOfMessage([(b"x-checksum", b"abc"), (b"x-other", b"1")])


REQ1 = b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n"
REQ2 = b"POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
REQ3 = b"PUT /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"


def _check_three(events: list) -> None:
    events = merged(events)
    assert [type(e) for e in events] == [
        RequestHead,
        EndOfMessage,
        RequestHead,
        Body,
        EndOfMessage,
        RequestHead,
        Body,
        EndOfMessage,
    ]
    assert [h.path for h in heads(events)] == [b"/one", b"/two", b"/three"]
    assert events[3] == Body(b"abc")
    assert events[6] == Body(b"xy")


def test_pipelined_three_in_one_feed():
    _check_three(RequestParser().feed(REQ1 + REQ2 + REQ3))


@pytest.mark.parametrize("step", [1, 2, 3, 7, 16])
def test_pipelined_three_split(step):
    p = RequestParser()
    _check_three(feed_in(p, REQ1 + REQ2 + REQ3, step))
    assert p.feed_eof() == []


def test_leading_blank_lines_and_trailing_crlf_between_requests():
    p = RequestParser()
    events = p.feed(b"\r\n\r\n" + REQ1 + b"\r\n" + REQ1)
    assert len(heads(events)) == 2
    assert p.feed(b"\r\n") == []
    assert p.feed_eof() == []


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive", True),
        (b"1.1", b"foo, close", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"close", False),
    ],
)
def test_keep_alive_rules(version, connection, keep_alive):
    raw = b"GET / HTTP/" + version + b"\r\nHost: h\r\n"
    if connection is not None:
        raw += b"Connection: " + connection + b"\r\n"
    (head, _end) = parse_request(raw + b"\r\n")
    assert head.version == version
    assert head.keep_alive is keep_alive


def test_no_parsing_after_connection_close_request():
    p = RequestParser()
    events = p.feed(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert p.feed(b"more garbage") == []
    assert p.feed_eof() == []


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue"])
def test_expect_continue(value):
    raw = b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: " + value + b"\r\nContent-Length: 2\r\n\r\n"
    p = RequestParser()
    events = p.feed(raw)
    assert len(events) == 1 and events[0].expect_continue
    assert p.feed(b"ok") == [Body(b"ok"), EndOfMessage(None)]
    (head, _) = parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not head.expect_continue


def test_websocket_upgrade_with_tail_bytes():
    raw = (
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: WebSocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x05hello"
    )
    p = RequestParser()
    events = p.feed(raw)
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert events[0].upgrade == b"websocket"
    assert p.upgraded
    assert p.upgraded_tail == b"\x81\x05hello"
    assert p.feed(b"GET / HTTP/1.1\r\n\r\n") == []
    assert p.upgraded_tail == b"\x81\x05helloGET / HTTP/1.1\r\n\r\n"
    assert p.feed_eof() == []


def test_upgrade_split_byte_by_byte():
    raw = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\ntunnel"
    p = RequestParser()
    events = feed_in(p, raw, 1)
    assert heads(events)[0].upgrade == b"foo"
    assert p.upgraded_tail == b"tunnel"


H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_h2c_upgrade_is_a_plain_request_and_parsing_goes_on(size):
    """As Envoy: the h2c token goes, the request is a plain one (with its body), and the
    pipelined request after it is parsed as a request, not kept as a tunnel's bytes."""
    raw = (
        b"POST /a HTTP/1.1\r\nHost: h\r\n" + H2C + b"Content-Length: 5\r\n\r\nhello"
        b"GET /b HTTP/1.1\r\nHost: h\r\n" + H2C + b"\r\n"
        b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    p = RequestParser()
    events = merged(feed_in(p, raw, size))
    got = heads(events)
    assert [h.target for h in got] == [b"/a", b"/b", b"/c"]
    assert all(h.upgrade is None for h in got)
    assert all(b"upgrade" not in dict(h.headers) for h in got)
    assert Body(b"hello") in events
    assert not p.upgraded and p.upgraded_tail == b""
    assert strip_hop_by_hop(got[0].headers) == [(b"host", b"h"), (b"content-length", b"5")]


def test_h2c_among_other_upgrades_is_taken_out():
    head, _ = parse_request(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n"
    )
    assert head.upgrade == b"websocket"
    assert dict(head.headers)[b"upgrade"] == b"websocket"


@pytest.mark.parametrize(
    "lines",
    [b"Upgrade: websocket\r\nUpgrade: h2c\r\n", b"Upgrade: h2c\r\nUpgrade: websocket\r\n"],
)
def test_h2c_in_any_upgrade_line_is_taken_out(lines):
    head, _ = parse_request(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n" + lines + b"\r\n"
    )
    assert head.upgrade == b"websocket"
    assert [v for n, v in head.headers if n == b"upgrade"] == [b"websocket"]


def test_connection_cannot_take_off_framing_or_host():
    headers = [
        (b"host", b"h"),
        (b"connection", b"content-length, Transfer-Encoding, host, x-hop"),
        (b"content-length", b"5"),
        (b"x-hop", b"1"),
        (b"x-keep", b"2"),
    ]
    assert strip_hop_by_hop(headers) == [
        (b"host", b"h"),
        (b"content-length", b"5"),
        (b"x-keep", b"2"),
    ]


def test_encoders_write_framing_from_their_arguments_only():
    smuggled = [(b"Content-Length", b"99"), (b"transfer-encoding", b"chunked"), (b"x", b"y")]
    assert encode_request_head(b"POST", b"/", smuggled, length=3) == (
        b"POST / HTTP/1.1\r\nx: y\r\ncontent-length: 3\r\n\r\n"
    )
    assert encode_request_head(b"POST", b"/", smuggled, chunked=True) == (
        b"POST / HTTP/1.1\r\nx: y\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert encode_response_head(200, None, smuggled) == b"HTTP/1.1 200 OK\r\nx: y\r\n\r\n"
    assert encode_last_chunk(smuggled) == b"0\r\nx: y\r\n\r\n"


def test_response_naming_its_framing_in_connection_is_not_kept_alive():
    p, events = parse_response(
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok"
    )
    assert events[0].content_length == 2 and not events[0].keep_alive
    assert p.complete and body_of(events) == b"ok"


def test_upgrade_header_without_connection_upgrade_is_plain_request():
    (head, _) = parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
    assert head.upgrade is None


def test_connect():
    p = RequestParser()
    events = p.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03")
    head = events[0]
    assert head.method == b"CONNECT"
    assert head.upgrade == b"connect"
    assert head.host == b"example.com:443"
    assert head.target == b"example.com:443"
    assert p.upgraded and p.upgraded_tail == b"\x16\x03"


def test_absolute_form_target():
    raw = b"GET http://Example.com:8080/a/b?x=1#frag HTTP/1.1\r\nHost: other\r\n\r\n"
    (head, _) = parse_request(raw)
    assert head.target == b"http://Example.com:8080/a/b?x=1#frag"
    assert head.host == b"Example.com:8080"
    assert (head.path, head.query) == (b"/a/b", b"x=1")
    (head, _) = parse_request(b"GET https://h?q HTTP/1.1\r\n\r\n")
    assert (head.host, head.path, head.query) == (b"h", b"/", b"q")


def test_asterisk_form_and_fragment():
    (head, _) = parse_request(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (head.path, head.query) == (b"*", b"")
    (head, _) = parse_request(b"GET /p?q=1#f HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (head.path, head.query, head.host) == (b"/p", b"q=1", b"h")


def test_eof_inside_request_is_400():
    for partial in [b"GET / HT", b"GET / HTTP/1.1\r\nHost: h\r\n", REQ2[:-1], REQ3[:-2]]:
        p = RequestParser()
        p.feed(partial)
        with pytest.raises(H1Error) as ei:
            p.feed_eof()
        assert ei.value.status == 400


def test_error_is_sticky():
    p = RequestParser()
    with pytest.raises(H1Error):
        p.feed(b"GET / HTTP/1.1\r\nX : y\r\n\r\n")
    with pytest.raises(H1Error):
        p.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(H1Error):
        p.feed_eof()


def test_feed_accepts_bytearray_and_empty():
    p = RequestParser()
    assert p.feed(b"") == []
    assert len(p.feed(bytearray(REQ1))) == 2


# -- request smuggling vectors: 400 and the bad request's head never emitted ---------------

BAD_HEAD_REQUESTS = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "cl-duplicate-differing": b"POST / HTTP/1.1\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    # identical duplicates may be accepted by the spec; llhttp refuses them and so do we
    "cl-duplicate-identical": b"POST / HTTP/1.1\r\nContent-Length: 5\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    "cl-plus": b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
    "cl-list": b"POST / HTTP/1.1\r\nContent-Length: 5,6\r\n\r\nhello",
    "cl-list-identical": b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
    "cl-hex": b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\nhello",
    "cl-empty": b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\nhello",
    "cl-negative": b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\nhello",
    "cl-inner-space": b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\nhello",
    "cl-underscore": b"POST / HTTP/1.1\r\nContent-Length: 1_0\r\n\r\nhello",
    "cl-overflow": b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "te-gzip-chunked": b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-identity": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    "te-chunkedx": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n",
    "te-chunked-twice": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te-two-headers": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-identity": b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te-gzip": b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    "te-in-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n folded\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\tfolded\r\n\r\n",
    "obs-fold-te": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "space-before-colon-te": b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "tab-before-colon": b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n",
    "bare-lf-everywhere": b"GET / HTTP/1.1\nHost: h\n\n",
    "bare-lf-after-header": b"GET / HTTP/1.1\r\nHost: h\n\r\n",
    "bare-lf-end": b"GET / HTTP/1.1\r\nHost: h\r\n\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "cr-in-value": b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    "ctl-in-value": b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
    "nul-in-name": b"GET / HTTP/1.1\r\nX\x00: a\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\n: a\r\n\r\n",
    "invalid-method-char": b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
    "lowercase-method": b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    "unknown-method": b"FROB / HTTP/1.1\r\nHost: h\r\n\r\n",
    "version-2.0": b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    "version-0.9": b"GET / HTTP/0.9\r\nHost: h\r\n\r\n",
    "version-1.2": b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
    "version-missing": b"GET /\r\nHost: h\r\n\r\n",
    "version-lowercase": b"GET / http/1.1\r\nHost: h\r\n\r\n",
    "ctl-in-target": b"GET /a\x01b HTTP/1.1\r\nHost: h\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "absolute-form-bad-scheme": b"GET ftp://h/a HTTP/1.1\r\n\r\n",
    "absolute-form-userinfo": b"GET http://user@h/a HTTP/1.1\r\n\r\n",
    "asterisk-outside-options": b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    "connect-without-port": b"CONNECT example.com HTTP/1.1\r\n\r\n",
    "connect-path": b"CONNECT /a:1 HTTP/1.1\r\n\r\n",
    "upgrade-with-body": b"POST / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "connect-with-body": b"CONNECT h:443 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
}


@pytest.mark.parametrize("name", sorted(BAD_HEAD_REQUESTS))
@pytest.mark.parametrize("step", [None, 1, 5])
def test_bad_request_head_is_400_and_never_emitted(name, step):
    raw = BAD_HEAD_REQUESTS[name]
    p = RequestParser()
    assert len(p.feed(REQ1)) == 2  # a good request before it on the same connection
    events, err = feed_until_error(p, raw, step)
    assert err is not None, f"{name} was accepted"
    assert err.status == 400
    assert heads(events) == []


@pytest.mark.parametrize("name", sorted(BAD_HEAD_REQUESTS))
def test_bad_request_head_in_pipeline_is_400(name):
    # The good request before it is still delivered; the error comes with the next call.
    parser = RequestParser()
    events = parser.feed(REQ1 + BAD_HEAD_REQUESTS[name])
    assert len(heads(events)) == 1 and isinstance(events[-1], EndOfMessage)
    assert parser.error is not None and parser.error.status == 400
    with pytest.raises(H1Error) as ei:
        parser.feed(b"")
    assert ei.value is parser.error


BAD_CHUNK_SIZES = {
    "non-hex": b"zz",
    "negative": b"-1",
    "17-hex-digits": b"1" * 17,
    "zero-padded-over-16-digits": b"0" * 16 + b"5",
    "hex-prefix": b"0x5",
    "plus": b"+5",
    "trailing-space": b"5 ",
    "leading-space": b" 5",
    "trailing-tab": b"5\t",
    "space-before-ext": b"5 ;a=b",
    "empty": b"",
    "empty-ext": b"5;",
    "underscore": b"0_5",
}


@pytest.mark.parametrize("name", sorted(BAD_CHUNK_SIZES))
@pytest.mark.parametrize("step", [None, 1, 3])
def test_invalid_chunk_size_is_400(name, step):
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = head + BAD_CHUNK_SIZES[name] + b"\r\nhello\r\n0\r\n\r\n"
    events, err = feed_until_error(RequestParser(), raw, step)
    assert err is not None and err.status == 400
    assert body_of(events) == b""


@pytest.mark.parametrize(
    "body",
    [
        b"5\nhello\r\n0\r\n\r\n",  # bare LF after the size
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
        b"5\r\nhello\n0\r\n\r\n",  # bare LF after the data
        b"3\r\nhello\r\n0\r\n\r\n",  # data longer than the size
        b"5\r\nhello\r\n0\r\nX: y\n\r\n",  # bare LF in trailers
        b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",  # framing header in trailers
        b"5\r\nhello\r\n0\r\n folded\r\n\r\n",
    ],
)
def test_bad_chunked_framing_is_400(body):
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    for step in (None, 1):
        _events, err = feed_until_error(RequestParser(), raw + REQ1, step)
        assert err is not None and err.status == 400


def test_zero_padded_chunk_size_up_to_16_digits_is_fine():
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = head + b"000000000000000A\r\n0123456789\r\n0\r\n\r\n"
    assert body_of(parse_request(raw)) == b"0123456789"


def test_every_leniency_is_off():
    # what llhttp lets through only with a leniency flag on: each must fail
    vectors = [
        BAD_HEAD_REQUESTS["obs-fold"],  # lenient_headers
        BAD_HEAD_REQUESTS["cl-and-te"],  # lenient_chunked_length
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunkedx\r\n\r\n",  # lenient_transfer_encoding
        BAD_HEAD_REQUESTS["version-1.2"],  # lenient_version
        b"GET / HTTP/1.1\r\nX: y\r\r\n\r\n",  # lenient_optional_lf_after_cr
        BAD_HEAD_REQUESTS["bare-lf-everywhere"],  # lenient_optional_cr_before_lf
        # lenient_optional_crlf_after_chunk
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",  # spaces
    ]
    for raw in vectors:
        with pytest.raises(H1Error):
            RequestParser().feed(raw)


# -- limits --------------------------------------------------------------------------------


def test_head_limit_exact():
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    limits = Limits(max_head_bytes=len(head))
    assert len(RequestParser(limits).feed(head)) == 2
    limits = Limits(max_head_bytes=len(head) - 1)
    for step in (None, 1, 10):
        events, err = feed_until_error(RequestParser(limits), head, step)
        assert err is not None and err.status == 431 and events == []


def test_head_limit_refuses_before_the_head_ends():
    # slowloris: a huge header value that never ends is refused as soon as the limit is passed
    p = RequestParser(Limits(max_head_bytes=1024))
    p.feed(b"GET / HTTP/1.1\r\nX: ")
    fed = 19
    with pytest.raises(H1Error) as ei:
        while True:
            p.feed(b"a" * 100)
            fed += 100
    assert ei.value.status == 431
    assert fed <= 1024
    with pytest.raises(H1Error) as ei:
        RequestParser().feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 100_000)
    assert ei.value.status == 431


def test_head_limit_counts_each_pipelined_head_alone():
    limits = Limits(max_head_bytes=200)
    big = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
    events = merged(RequestParser(limits).feed(big + REQ1 + REQ3))
    assert [h.path for h in heads(events)] == [b"/", b"/one", b"/three"]
    assert len(body_of(events[:3])) == 100_000


def test_url_limit_is_414():
    limits = Limits(max_url_bytes=100)
    ok = b"GET /" + b"a" * 99 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert len(RequestParser(limits).feed(ok)) == 2
    bad = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    for step in (None, 1, 7):
        events, err = feed_until_error(RequestParser(limits), bad, step)
        assert err is not None and err.status == 414 and events == []
    # incomplete: refused before the request line ends
    p = RequestParser(limits)
    with pytest.raises(H1Error) as ei:
        p.feed(b"GET /" + b"a" * 200)
    assert ei.value.status == 414
    # the default limits: an 8 KiB+ URL is 414 even though the head fits 60 KiB
    with pytest.raises(H1Error) as ei:
        RequestParser().feed(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert ei.value.status == 414


def test_header_count_limit_is_431():
    def req(n: int) -> bytes:  # Host plus n-1 more: n headers
        extra = b"".join(b"X-%d: v\r\n" % i for i in range(n - 1))
        return b"GET / HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n"

    limits = Limits(max_headers=10)
    assert len(RequestParser(limits).feed(req(10))) == 2
    for step in (None, 1):
        events, err = feed_until_error(RequestParser(limits), req(11), step)
        assert err is not None and err.status == 431 and events == []


def test_content_length_over_body_limit_is_413_at_head_time():
    limits = Limits(max_body_bytes=10)
    ok = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"
    assert body_of(RequestParser(limits).feed(ok)) == b"0123456789"
    p = RequestParser(limits)
    with pytest.raises(H1Error) as ei:
        p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")  # no body byte sent yet
    assert ei.value.status == 413


def test_chunked_over_body_limit_is_413():
    limits = Limits(max_body_bytes=10)
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    ok = head + b"5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n"
    assert body_of(RequestParser(limits).feed(ok)) == b"0123456789"
    p = RequestParser(limits)
    events = p.feed(head + b"5\r\n01234\r\n5\r\n56789\r\n")
    assert body_of(events) == b"0123456789"
    with pytest.raises(H1Error) as ei:
        p.feed(b"1\r\n")  # refused from the size line, before the data
    assert ei.value.status == 413


def test_trailer_limits():
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    many = b"".join(b"T-%d: v\r\n" % i for i in range(11)) + b"\r\n"
    # The head is delivered; the trailer error stops the message before its end.
    events, err = feed_until_error(RequestParser(Limits(max_headers=10)), head + many)
    assert err is not None and err.status == 431  # 11 trailers
    assert not any(isinstance(e, EndOfMessage) for e in events)
    raw = head + b"T: " + b"v" * 200
    events, err = feed_until_error(RequestParser(Limits(max_head_bytes=100)), raw)
    assert err is not None and err.status == 431
    assert not any(isinstance(e, EndOfMessage) for e in events)


def test_chunk_size_line_bounded():
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(H1Error) as ei:
        RequestParser().feed(head + b"5;" + b"a" * 10_000)
    assert ei.value.status == 400


# -- responses -----------------------------------------------------------------------------


def test_response_content_length():
    p, events = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello")
    assert events == [
        ResponseHead(
            200, b"OK", b"1.1", [(b"content-length", b"5"), (b"server", b"x")], True, 5, False
        ),
        Body(b"hello"),
        EndOfMessage(None),
    ]
    assert p.complete and p.trailing == b"" and not p.upgraded
    assert p.feed_eof() == []


def test_response_chunked_split():
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nGrpc-Status: 0\r\n\r\n"
    )
    for step in (None, 1, 4):
        p = ResponseParser()
        events = merged(feed_in(p, raw, step))
        assert events[0].chunked and events[0].keep_alive
        assert events[1:] == [Body(b"abcdefg"), EndOfMessage([(b"grpc-status", b"0")])]
        assert p.complete and p.trailing == b""


def test_response_close_delimited():
    p = ResponseParser()
    events = p.feed(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nsome")
    assert events[0].keep_alive is False and events[0].content_length is None
    assert events[1:] == [Body(b"some")]
    assert p.feed(b" more") == [Body(b" more")]
    assert not p.complete
    assert p.feed_eof() == [EndOfMessage(None)]
    assert p.complete


def test_response_to_head_request():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    p, events = parse_response(raw, head_request=True)
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert events[0].content_length == 1234 and events[0].keep_alive
    assert p.complete
    # no length at all: still complete, still reusable
    p, events = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", head_request=True)
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert events[0].keep_alive
    # chunked announced: no chunks follow
    p, events = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", head_request=True
    )
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage] and p.complete


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status):
    raw = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    p, events = parse_response(raw)
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert p.complete and p.trailing == b""
    p, events = parse_response(b"HTTP/1.1 %d X\r\n\r\n" % status)
    assert events[0].keep_alive and p.complete


def test_continue_then_final():
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    for step in (None, 1, 3):
        p = ResponseParser()
        events = merged(feed_in(p, raw, step))
        assert [e.status for e in heads(events)] == [100, 103, 200]
        assert [type(e) for e in events] == [
            ResponseHead,
            ResponseHead,
            ResponseHead,
            Body,
            EndOfMessage,
        ]
        assert events[1].headers == [(b"link", b"</s.css>")]
        assert p.complete


def test_informational_with_content_length_has_no_body():
    raw = b"HTTP/1.1 199 Odd\r\nContent-Length: 5\r\n\r\n"
    raw += b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    _p, events = parse_response(raw)
    assert [e.status for e in heads(events)] == [199, 200]
    assert body_of(events) == b"x"


def test_switching_protocols_with_tail():
    raw = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x02hi"
    )
    for step in (None, 1):
        p = ResponseParser()
        events = feed_in(p, raw, step)
        assert [type(e) for e in events] == [ResponseHead]
        assert events[0].status == 101
        assert p.upgraded and p.upgraded_tail == b"\x81\x02hi" and not p.complete
    assert p.feed(b"more") == [] and p.upgraded_tail == b"\x81\x02himore"
    assert p.feed_eof() == []
    # llhttp calls a 101 without Upgrade headers an error; it is still a switch
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 101 Switching\r\n\r\nxyz")[0].status == 101
    assert p.upgraded_tail == b"xyz"


@pytest.mark.parametrize(
    ("raw", "extra"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\njunk", b"junk"),
        (b"HTTP/1.1 204 No Content\r\n\r\nhello", b"hello"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\r\n", b"\r\n"),
    ],
)
def test_trailing_bytes_after_complete_response(raw, extra):
    for step in (None, 1, 5):
        p = ResponseParser()
        events = feed_in(p, raw, step)
        assert isinstance(events[-1], EndOfMessage)
        assert p.complete and p.trailing == extra
    assert p.feed(b"+") == [] and p.trailing == extra + b"+"


def test_response_keep_alive_rules():
    _, events = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert events[0].keep_alive is False
    _, events = parse_response(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    )
    assert events[0].keep_alive is True
    _, events = parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert events[0].keep_alive is False
    _, events = parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", head_request=True)
    assert events[0].keep_alive is False


BAD_RESPONSES = {
    "not-http": b"HELLO\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 OK\r\n\r\n",
    "status-letters": b"HTTP/1.1 2x0 OK\r\n\r\n",
    "version-2": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "version-0.9": b"HTTP/0.9 200 OK\r\nContent-Length: 0\r\n\r\n",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    "cl-twice": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "cl-bad": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nab",
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-http10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX: \x00\r\nContent-Length: 0\r\n\r\n",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "long-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 17 + b"1\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_RESPONSES))
@pytest.mark.parametrize("step", [None, 1])
def test_malformed_response_is_502(name, step):
    events, err = feed_until_error(ResponseParser(), BAD_RESPONSES[name], step)
    assert err is not None and err.status == 502, name
    assert heads(events) == [] or name in ("bad-chunk", "long-chunk")


def test_response_limits_are_502():
    with pytest.raises(H1Error) as ei:
        ResponseParser(limits=Limits(max_head_bytes=100)).feed(
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200
        )
    assert ei.value.status == 502
    many = b"".join(b"X-%d: v\r\n" % i for i in range(5))
    with pytest.raises(H1Error) as ei:
        ResponseParser(limits=Limits(max_headers=4)).feed(b"HTTP/1.1 200 OK\r\n" + many + b"\r\n")
    assert ei.value.status == 502
    # max_body_bytes is for requests
    _, events = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20,
        limits=Limits(max_body_bytes=1),
    )
    assert len(body_of(events)) == 20


@pytest.mark.parametrize(
    "partial",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhell",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
)
def test_response_eof_when_incomplete_is_502(partial):
    p = ResponseParser()
    p.feed(partial)
    with pytest.raises(H1Error) as ei:
        p.feed_eof()
    assert ei.value.status == 502


# -- encoders ------------------------------------------------------------------------------


def test_encode_request_head_round_trip():
    headers = [(b"host", b"h.example"), (b"x-a", b"1"), (b"x-a", b"2")]
    raw = encode_request_head(b"POST", b"/p?q=1", headers, length=3)
    assert raw == (
        b"POST /p?q=1 HTTP/1.1\r\nhost: h.example\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\n"
    )
    events = parse_request(raw + b"abc")
    assert events[0].method == b"POST" and events[0].target == b"/p?q=1"
    assert events[0].headers == [*headers, (b"content-length", b"3")]
    assert events[1:] == [Body(b"abc"), EndOfMessage(None)]


def test_encode_response_head():
    assert encode_response_head(200, None, []) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert encode_response_head(599, None, []) == b"HTTP/1.1 599 \r\n\r\n"
    assert (
        encode_response_head(404, b"Nope", [(b"a", b"b")]) == b"HTTP/1.1 404 Nope\r\na: b\r\n\r\n"
    )
    raw = encode_response_head(201, None, [(b"x", b"y")], length=2)
    p, events = parse_response(raw + b"ok")
    assert (events[0].status, events[0].reason, events[0].headers) == (
        201,
        b"Created",
        [(b"x", b"y"), (b"content-length", b"2")],
    )
    assert p.complete and body_of(events) == b"ok"
    p, events = parse_response(encode_response_head(599, None, [], length=0))
    assert events[0].status == 599 and events[0].reason == b""


def test_encode_chunks_round_trip():
    assert encode_chunk(b"") == b""
    assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert encode_chunk(memoryview(b"abc")) == b"3\r\nabc\r\n"
    assert encode_last_chunk() == b"0\r\n\r\n"
    assert encode_last_chunk([(b"t", b"1")]) == b"0\r\nt: 1\r\n\r\n"
    head = encode_response_head(200, None, [], chunked=True)
    raw = head + encode_chunk(b"hello ") + encode_chunk(b"") + encode_chunk(b"world")
    raw += encode_last_chunk([(b"x-sum", b"42")])
    p, events = parse_response(raw)
    assert events[1:] == [Body(b"hello world"), EndOfMessage([(b"x-sum", b"42")])]
    assert p.complete


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_request_head(b"GET", b"/", [(b"x", b"a\r\nInjected: 1")]),
        lambda: encode_request_head(b"GET", b"/", [(b"x", b"a\nb")]),
        lambda: encode_request_head(b"GET", b"/", [(b"x\r\ny", b"a")]),
        lambda: encode_request_head(b"GET", b"/ HTTP/1.1\r\nX: y", []),
        lambda: encode_request_head(b"GET", b"/a b", []),
        lambda: encode_response_head(200, b"OK\r\nX: y", []),
        lambda: encode_response_head(200, None, [(b"x", b"a\rb")]),
        lambda: encode_response_head(42, None, []),
        lambda: encode_last_chunk([(b"x", b"\r\n")]),
    ],
)
def test_encoders_refuse_injection(call):
    with pytest.raises(ValueError):
        call()


# -- hop-by-hop ----------------------------------------------------------------------------


def test_strip_hop_by_hop():
    headers = [
        (b"host", b"h"),
        (b"connection", b"keep-alive, X-Secret , Upgrade"),
        (b"x-secret", b"s"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"trailer", b"x-sum"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authorization", b"Basic x"),
        (b"proxy-authenticate", b"Basic"),
        (b"connection", b"x-other"),
        (b"x-other", b"o"),
        (b"x-keep", b"k"),
    ]
    assert strip_hop_by_hop(headers) == [(b"host", b"h"), (b"trailer", b"x-sum"), (b"x-keep", b"k")]
    assert strip_hop_by_hop(headers, keep_upgrade=True) == [
        (b"host", b"h"),
        (b"upgrade", b"websocket"),
        (b"trailer", b"x-sum"),
        (b"x-keep", b"k"),
    ]
    plain = [(b"host", b"h"), (b"accept", b"*/*")]
    assert strip_hop_by_hop(plain) == plain
    assert strip_hop_by_hop(iter(plain)) == plain


# -- memory: no reference cycles per request ----------------------------------------------


def test_parsers_free_by_refcount():
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            p = ResponseParser()
            p.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            q = RequestParser()
            q.feed(REQ1 + REQ2 + REQ3)
            del p, q
        assert gc.collect() == 0
    finally:
        gc.enable()


# -- properties ----------------------------------------------------------------------------


@st.composite
def splits(draw, raw: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(0, len(raw)), max_size=12)))
    pieces, prev = [], 0
    for c in [*cuts, len(raw)]:
        pieces.append(raw[prev:c])
        prev = c
    return pieces


SEEDS = [REQ1, REQ2, REQ3, *BAD_HEAD_REQUESTS.values()]
RESPONSE_SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    *BAD_RESPONSES.values(),
]


def _mutated(data: st.DataObject, seeds: list[bytes]) -> bytes:
    base = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(0, 4))):
        if not base:
            break
        i = data.draw(st.integers(0, len(base) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        b = data.draw(st.sampled_from(list(b"\r\n :;,0159aAfFzZ\t\x00\xff-+")))
        if op == "flip":
            base[i] = b
        elif op == "insert":
            base.insert(i, b)
        else:
            del base[i]
    return bytes(base)


def _drive(parser, pieces: list[bytes]) -> None:
    try:
        for piece in pieces:
            for ev in parser.feed(piece):
                assert isinstance(ev, (RequestHead, ResponseHead, Body, EndOfMessage))
                if isinstance(ev, Body):
                    assert ev.data
        parser.feed_eof()
    except H1Error as e:
        assert e.status in (400, 413, 414, 431, 502)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_bytes_any_split_only_h1error(data):
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = _mutated(data, SEEDS) * data.draw(st.integers(1, 2))
    pieces = data.draw(splits(raw))
    _drive(RequestParser(Limits(max_head_bytes=200, max_headers=5)), pieces)
    _drive(RequestParser(), pieces)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_response_bytes_any_split_only_h1error(data):
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = _mutated(data, RESPONSE_SEEDS)
    pieces = data.draw(splits(raw))
    _drive(ResponseParser(head_request=data.draw(st.booleans())), pieces)


TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=12
)
VALUE = st.text(
    alphabet='abcdefghijklmnopqrstuvwxyzABCDEF0123456789 -_.,;:=/"()<>@?{}[]', max_size=20
)
RESERVED = {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"upgrade",
    b"expect",
    b"trailer",
    b"keep-alive",
    b"te",
}


@st.composite
def valid_requests(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
    path = "/" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~/%", max_size=30))
    query = draw(st.one_of(st.none(), st.text(alphabet="abcxyz0123456789=&%+", max_size=20)))
    target = (path if query is None else f"{path}?{query}").encode()
    names = draw(st.lists(TOKEN.map(str.encode), max_size=12))
    headers = [(b"host", b"svc.local")]
    for name in names:
        if name not in RESERVED:
            value = draw(VALUE).strip(" ").encode()
            headers.append((name, value))
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    chunks: list[bytes] = []
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
        rest = body
        while rest:
            n = draw(st.integers(1, len(rest)))
            chunks.append(rest[:n])
            rest = rest[n:]
    elif body or draw(st.booleans()):
        headers.append((b"content-length", str(len(body)).encode()))
    return method, target, headers, body, chunks


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_requests(), min_size=1, max_size=3), st.data())
def test_random_valid_requests_round_trip(requests, data):
    raw = b""
    for method, target, headers, body, chunks in requests:
        is_chunked = bool(chunks) or (b"transfer-encoding", b"chunked") in headers
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
        raw += encode_request_head(method, target, headers, length=length, chunked=is_chunked)
        if is_chunked:
            raw += b"".join(encode_chunk(c) for c in chunks) + encode_last_chunk()
        else:
            raw += body
    p = RequestParser()
    events = []
    for piece in data.draw(splits(raw)):
        events += p.feed(piece)
    assert p.feed_eof() == []
    events = merged(events)
    got = []
    cur = None
    for ev in events:
        if isinstance(ev, RequestHead):
            cur = [ev, b""]
        elif isinstance(ev, Body):
            cur[1] += ev.data
        else:
            assert ev.trailers is None
            got.append(tuple(cur))
    assert len(got) == len(requests)
    for (head, body), (method, target, headers, want_body, _chunks) in zip(
        got, requests, strict=True
    ):
        assert head.method == method
        assert head.target == target
        assert head.headers == headers
        assert head.host == b"svc.local"
        assert body == want_body
        assert head.path == target.partition(b"?")[0]


def _outcome(parser, pieces: list[bytes]) -> tuple:
    events: list = []
    try:
        for piece in pieces:
            events += parser.feed(piece)
        events += parser.feed_eof()
    except H1Error as e:
        return merged(events), e.status
    return merged(events), None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_split_invariance(data):
    # where the bytes are cut never changes what is parsed (bodies may arrive in more pieces)
    raw = _mutated(data, SEEDS) + data.draw(st.sampled_from([b"", REQ1, REQ2, REQ3]))
    whole_events, whole_status = _outcome(RequestParser(), [raw])
    split_events, split_status = _outcome(RequestParser(), data.draw(splits(raw)))
    assert split_status == whole_status
    if whole_status is None:
        assert split_events == whole_events
    else:  # an error may surface later in a stream, never earlier
        assert split_events[: len(whole_events)] == whole_events[: len(split_events)]
