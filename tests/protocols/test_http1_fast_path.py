"""The HTTP/1 codec's fast path (`_Parser._whole`: a read between messages, within the head
budget, fed to llhttp in one call) against the per-phase walk it skips.

The same byte streams, split at random points, go to a parser with the fast path and to one with
it forced off; every feed must give the same events or the same error, and leave the same state
(phase, head bytes, carry, remaining body, the sink's collected fields, `trailing`,
`head_raw`, ...). The streams are the smuggling corpora (requests and upstream responses),
ordinary messages, pipelined and concatenated ones, and head budgets around each head's size
(431 / 502 exactly at the edge).
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.proxy.test_http_smuggling import VECTORS
from tests.proxy.test_http_smuggling_corpus import NEW_VECTORS, RESPONSE_VECTORS
from trio_mesh.protocols.http1 import H1Error, Limits, RequestParser, ResponseParser


class SlowRequestParser(RequestParser):
    _fast_path = False


class SlowResponseParser(ResponseParser):
    _fast_path = False


GET = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 07 Dec 2026 15:50:29 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    b"\r\nhello"
)
REQUESTS = [
    GET,
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\ntail",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 2\r\n\r\nok",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nraw",
    b"GET http://b/x?q HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\n\r\n" + GET,
    GET + b"\r\n",
    GET + GET + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: 1\r\n" * 12 + b"\r\n",
]
REQUESTS += list(VECTORS.values()) + [raw for raw, _ in NEW_VECTORS.values()]

RESPONSES = [
    NGINX,
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nws",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxEXTRA",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 02\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 12 + b"Content-Length: 1\r\n\r\nz",
]
RESPONSES += [raw for raw, _ in RESPONSE_VECTORS.values()]

_SKIP = frozenset(("_p", "_sink", "_fast", "_limits"))


def _state(p: RequestParser | ResponseParser) -> dict[str, Any]:
    """Every slot of the parser and its sink but llhttp and the fast-path switch."""
    slots = [s for c in type(p).__mro__ for s in getattr(c, "__slots__", ()) if s not in _SKIP]
    state = {s: getattr(p, s, None) for s in slots}
    error = state.pop("_error")
    if error is not None:
        # A failed parser is dead (the connection closes): only its error counts. What
        # llhttp had already seen of the message when it failed differs by how much of it
        # one call was given (the fast path gives the whole read), and nothing reads it.
        return {"error": (error.status, error.reason)}
    state["error"] = None
    sink = p._sink
    state["sink"] = (sink.begun, sink.url, sink.status, sink.headers, sink.head_done, sink.msg_done)
    return state


def _outcome(call: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("events", call(*args))
    except H1Error as e:
        return ("error", e.status, e.reason)


def _run_both(
    data: bytes, cuts: list[int], response: bool, max_head: int | None, head_request: bool
) -> None:
    limits = Limits() if max_head is None else Limits(max_head_bytes=max_head)
    if response:
        fast: RequestParser | ResponseParser = ResponseParser(
            head_request=head_request, limits=limits
        )
        slow: RequestParser | ResponseParser = SlowResponseParser(
            head_request=head_request, limits=limits
        )
    else:
        fast, slow = RequestParser(limits), SlowRequestParser(limits)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for a, b in itertools.pairwise(bounds):
        piece = data[a:b]
        assert _outcome(fast.feed, piece) == _outcome(slow.feed, piece)
        assert _state(fast) == _state(slow)
        if response and isinstance(fast, ResponseParser) and fast.complete and not fast.error:
            assert isinstance(slow, ResponseParser)
            fast.reset(head_request=head_request)
            slow.reset(head_request=head_request)
            assert _state(fast) == _state(slow)
    assert _outcome(fast.feed_eof) == _outcome(slow.feed_eof)
    assert _state(fast) == _state(slow)


def _budgets(data: bytes) -> st.SearchStrategy[int | None]:
    """No limit, or a head budget around the first head's size (and a small one)."""
    head = data.find(b"\r\n\r\n") + 4
    near = [head - 1, head, head + 1, len(data) - 1, len(data), len(data) + 1, 32]
    return st.one_of(st.none(), st.sampled_from([n for n in near if n > 0]))


@st.composite
def _streams(draw: st.DrawFn, corpus: list[bytes]) -> tuple[bytes, list[int], int | None]:
    parts = draw(st.lists(st.sampled_from(corpus), min_size=1, max_size=3))
    data = b"".join(parts)
    if draw(st.booleans()):  # a byte changed somewhere: errors at every point of a message
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    cuts = draw(st.lists(st.integers(0, 10_000), max_size=4))
    return data, cuts, draw(_budgets(data))


_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_streams(REQUESTS))
@example((GET, [], None))
@example((GET, [], len(GET)))
@example((GET, [], len(GET) - 1))
@example((b"POST /echo!HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\nhello", [], None))
def test_request_fast_path_matches_the_walk(case: tuple[bytes, list[int], int | None]) -> None:
    data, cuts, max_head = case
    _run_both(data, cuts, False, max_head, False)


@_SETTINGS
@given(_streams(RESPONSES), st.booleans())
@example((NGINX, [], None), False)
@example(  # a fresh llhttp (the fallback) forgot the close the walk's llhttp refuses after
    (
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        [40],
        None,
    ),
    False,
)
@example((NGINX, [], NGINX.index(b"hello")), False)
@example((NGINX, [], NGINX.index(b"hello") - 1), False)
def test_response_fast_path_matches_the_walk(
    case: tuple[bytes, list[int], int | None], head_request: bool
) -> None:
    data, cuts, max_head = case
    _run_both(data, cuts, True, max_head, head_request)


def test_every_corpus_stream_whole_and_byte_by_byte() -> None:
    for data in REQUESTS:
        _run_both(data, [], False, None, False)
        _run_both(data, list(range(len(data))), False, None, False)
    for data in RESPONSES:
        for head_request in (False, True):
            _run_both(data, [], True, None, head_request)
            _run_both(data, list(range(len(data))), True, None, head_request)


def test_the_fast_path_is_taken_for_a_small_get_and_nginx_answer() -> None:
    """The cases it exists for go through `_whole` (one llhttp call), not the walk."""
    taken: list[str] = []

    class Spy(RequestParser):
        def _run(self, data: bytes, events: Any) -> None:
            taken.append("walk")
            super()._run(data, events)

    class SpyResponse(ResponseParser):
        def _run(self, data: bytes, events: Any) -> None:
            taken.append("walk")
            super()._run(data, events)

    assert len(Spy().feed(GET)) == 2
    resp = SpyResponse()
    assert len(resp.feed(NGINX)) == 3 and resp.complete
    assert taken == []
    assert len(Spy(Limits(max_head_bytes=len(GET) - 1)).feed(GET[:10])) == 0
    assert taken == ["walk"]


def test_chunked_framing_goes_to_the_walk_without_a_wasted_parse() -> None:
    """Chunked framing as usually spelt is seen before llhttp is fed: no parse thrown away
    (and no llhttp replaced); the walk parses it as before."""
    fresh: list[str] = []

    class Spy(ResponseParser):
        def _new_llhttp(self) -> None:
            fresh.append("llhttp")
            super()._new_llhttp()

    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    p = Spy()
    assert [type(e).__name__ for e in p.feed(chunked)] == ["ResponseHead", "Body", "EndOfMessage"]
    assert p.complete and fresh == []
