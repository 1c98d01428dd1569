"""The HTTP/1 codec's fast path (regex heads) against its llhttp path: same events or same error.

The fast path may decline any head (llhttp then parses it whole); what it must never do is
accept a head llhttp refuses, or read one differently. Every case runs through a parser with the
fast path and one without it, fed the same bytes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mesh.protocols.http1 import H1Error, Limits, RequestParser, ResponseParser


class SlowRequestParser(RequestParser):
    __slots__ = ()

    def _fast_head(self, data, pos, end, events):
        return False


class SlowResponseParser(ResponseParser):
    __slots__ = ()

    def _fast_head(self, data, pos, end, events):
        return False


def outcome(parser, data: bytes):
    try:
        return ("ok", parser.feed(data))
    except H1Error as exc:
        return ("error", exc.status)


def same_request(data: bytes, limits: Limits | None = None):
    fast, slow = RequestParser(limits), SlowRequestParser(limits)
    got, want = outcome(fast, data), outcome(slow, data)
    assert got == want, data
    # a good request pipelined before a bad one: both keep the error for the next call
    assert (fast.error is None) == (slow.error is None), data
    return fast, got


def same_response(data: bytes, *, head_request: bool = False):
    fast = ResponseParser(head_request=head_request)
    slow = SlowResponseParser(head_request=head_request)
    got, want = outcome(fast, data), outcome(slow, data)
    assert got == want, data
    if got[0] == "ok":
        assert fast.complete == slow.complete and fast.trailing == slow.trailing, data
    return fast, got


# -- the common shapes take the fast path ---------------------------------------------------


def test_a_plain_get_takes_the_fast_path_and_never_builds_llhttp():
    parser, (kind, events) = same_request(
        b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\nAccept:  */*  \r\n\r\n"
    )
    assert kind == "ok" and len(events) == 2
    head = events[0]
    assert head.headers == [(b"host", b"x"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
    assert (head.path, head.query) == (b"/a", b"b=1")
    assert parser._p is None  # llhttp was never needed


def test_a_post_with_content_length_is_sliced_without_llhttp_across_feeds():
    fast = RequestParser()
    head = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
    events = fast.feed(head + b"01234")
    events += fast.feed(b"56789GET / HTTP/1.1\r\nHost: y\r\n\r\n")
    slow = SlowRequestParser()
    want = slow.feed(head + b"01234") + slow.feed(b"56789GET / HTTP/1.1\r\nHost: y\r\n\r\n")
    assert events == want
    assert [type(e).__name__ for e in events] == [
        "RequestHead", "Body", "Body", "EndOfMessage", "RequestHead", "EndOfMessage"
    ]
    assert fast._p is None


def test_a_response_with_content_length_takes_the_fast_path():
    parser, (kind, events) = same_response(
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
        b"\r\nhello"
    )
    assert kind == "ok" and parser.complete and parser._p is None
    assert events[0].keep_alive and events[0].content_length == 5


def test_slow_and_fast_messages_alternate_on_one_connection():
    fast = RequestParser()
    msgs = [
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /4 HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n",
    ]
    slow = SlowRequestParser()
    for m in msgs:
        assert outcome(fast, m) == outcome(slow, m), m


# -- declined or refused alike ---------------------------------------------------------------

REQUESTS = [
    b"GET / HTTP/1.1\r\n\r\n",  # 1.1 without Host
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n X: a\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://h/p HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
]


def test_hand_picked_requests_read_the_same_on_both_paths():
    for data in REQUESTS:
        same_request(data)


def test_limits_apply_on_the_fast_path_too():
    limits = Limits(max_head_bytes=64, max_url_bytes=8, max_headers=2)
    same_request(b"GET /123456789 HTTP/1.1\r\nHost: a\r\n\r\n", limits)  # 414
    same_request(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", limits)  # 431
    same_request(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 60 + b"\r\n\r\n", limits)
    body = Limits(max_body_bytes=3)
    same_request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd", body)  # 413


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: upgrade\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy",  # trailing bytes
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\r\n b\r\n\r\nx",
    b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: \xff\r\n\r\n",
]


def test_hand_picked_responses_read_the_same_on_both_paths():
    for data in RESPONSES:
        same_response(data)
        same_response(data, head_request=True)


# -- property: random heads built from near-valid pieces ------------------------------------

_NAMES = st.sampled_from(
    [b"Host", b"host", b"X-A", b"Content-Length", b"content-length", b"Connection",
     b"Transfer-Encoding", b"Upgrade", b"Expect", b"X y", b"X:", b"", b"\xc3\xa9", b"Cookie"]
)
_VALUE_BYTES = st.sampled_from(
    [b"a", b"1", b"0", b" ", b"\t", b"close", b"keep-alive", b"chunked", b"upgrade",
     b"100-continue", b"\r", b"\n", b"\x00", b"\x7f", b"\x80", b"\xff", b",", b"-1", b"+"]
)
_VALUES = st.lists(_VALUE_BYTES, max_size=5).map(b"".join)
_FIELDS = st.lists(
    st.tuples(_NAMES, st.sampled_from([b": ", b":", b" : ", b":\t"]), _VALUES), max_size=6
)
_METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"get"])
_TARGETS = st.sampled_from(
    [b"/", b"/a?b", b"/%zz", b"/a b", b"*", b"http://h/x", b"/\x80", b"/a#f", b"h:1", b"/\"<>"]
)
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 "])
_TAILS = st.sampled_from([b"", b"x", b"abc", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n"])


def _head(fields, line=b"") -> bytes:
    return line + b"".join(n + sep + v + b"\r\n" for n, sep, v in fields) + b"\r\n"


@settings(max_examples=1500, deadline=None)
@given(_METHODS, _TARGETS, _VERSIONS, _FIELDS, _TAILS)
def test_random_requests_read_the_same_on_both_paths(method, target, version, fields, tail):
    line = method + b" " + target + b" " + version + b"\r\n"
    same_request(_head(fields, line) + tail)


_STATUS_LINES = st.sampled_from(
    [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 404 \r\n", b"HTTP/1.1 204 x\r\n",
     b"HTTP/1.1 304 Not Modified\r\n", b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.1 2000 x\r\n",
     b"HTTP/1.1 200 O\tK\r\n", b"HTTP/1.1 500 \xff\r\n", b"HTTP/1.1 200\r\n"]
)


@settings(max_examples=1500, deadline=None)
@given(_STATUS_LINES, _FIELDS, _TAILS, st.booleans())
def test_random_responses_read_the_same_on_both_paths(line, fields, tail, head_request):
    same_response(_head(fields, line) + tail, head_request=head_request)
