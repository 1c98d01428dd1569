"""HTTP/1.1 proxy end to end: request smuggling vectors and request limits.

Each bad request is sent raw. The proxy must answer with a defined status (400, or 413, 414,
431, 408 for limits), end the connection after it, forward nothing to the upstream, and keep
serving other connections.
"""

from __future__ import annotations

import pytest
import trio

from tests.http_helpers import (
    Client,
    echoed,
    get,
    http_config,
    parse_head,
    raw_exchange,
    read_request,
    request,
    start_proxy,
    start_raw_server,
    start_upstream,
    to,
)


@pytest.fixture
async def upstream(nursery):
    return await start_upstream(nursery)


async def proxy(nursery, upstream, **proxy_config) -> tuple[object, int]:
    return await start_proxy(
        nursery, http_config([to("up")], {"up": upstream.port}, proxy=proxy_config)
    )


def assert_refused(got: bytes, status: int) -> None:
    """``got`` (everything until EOF) is exactly one response with ``status``, announcing
    ``connection: close``, with a body that matches its Content-Length."""
    head, sep, body = got.partition(b"\r\n\r\n")
    assert sep, got
    code, _, _, headers = parse_head(head)
    assert code == status, got
    assert headers.get("connection", "").lower() == "close", got
    assert int(headers.get("content-length")) == len(body), got  # nothing after it


async def still_serves(port: int, upstream) -> None:
    """A normal request on a new connection works, and is the only one the upstream saw."""
    r = await request(port, get("/echo/after"))
    assert echoed(r)["target"] == "/echo/after"
    assert [q["target"] for q in upstream.requests] == ["/echo/after"]


POST = b"POST /echo HTTP/1.1\r\nHost: x\r\n"

VECTORS = {
    # CL.TE and TE.CL: both framings in one request
    "cl-te": POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "te-cl": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
    "duplicate-cl": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-list": POST + b"Content-Length: 5, 6\r\n\r\nhello!",
    "cl-plus": POST + b"Content-Length: +5\r\n\r\nhello",
    "cl-hex": POST + b"Content-Length: 0x5\r\n\r\nhello",
    # Transfer-Encoding whose final coding is not chunked, or that we do not decode
    "te-chunked-identity": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-gzip": POST + b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    "te-gzip-chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-two-lines": POST
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te-xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-in-http10": b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    # chunk sizes
    "chunk-size-not-hex": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": POST + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n",
    "chunk-size-0x": POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": POST
    + b"Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
    "chunk-size-space": POST + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk-data-too-long": POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    "chunk-bare-lf": POST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    # header syntax
    "obs-fold": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    "space-before-colon": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Foo : bar\r\n\r\n",
    "te-space-before-colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "bare-lf": b"GET /echo HTTP/1.1\nHost: x\n\n",
    "bare-lf-one-line": b"GET /echo HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "bare-cr": b"GET /echo HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
    "nul-in-value": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    "nul-in-name": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-\x00Nul: ab\r\n\r\n",
    "two-hosts": b"GET /echo HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "bad-version": b"GET /echo HTTP/1.2\r\nHost: x\r\n\r\n",
    "space-in-target": b"GET /ec ho HTTP/1.1\r\nHost: x\r\n\r\n",
    "no-colon": b"GET /echo HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
}


@pytest.mark.parametrize("raw", VECTORS.values(), ids=VECTORS.keys())
async def test_smuggling_vector_is_400_and_close(nursery, upstream, raw):
    server, port = await proxy(nursery, upstream)
    with trio.fail_after(5):
        got = await raw_exchange(port, raw)
        assert_refused(got, 400)
        assert upstream.requests == []
        await still_serves(port, upstream)
    assert server.listeners["ingress"].stats.downstream_rq_4xx == 1


SMUGGLER = (
    POST + b"Content-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
)


async def test_request_hidden_in_an_ambiguous_body_is_never_forwarded(nursery, upstream):
    _, port = await proxy(nursery, upstream)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/echo/first"))
            assert echoed(await client.response())["target"] == "/echo/first"
            await client.send(SMUGGLER)  # on the same, kept-alive connection
            got = await client.read_to_eof()
    assert b"smuggled" not in got
    assert client.eof  # the connection ended
    assert [q["target"] for q in upstream.requests] == ["/echo/first"]


SECOND_REQUESTS = {
    "cl-te-400": (SMUGGLER, 400),
    "space-before-colon-400": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Foo : bar\r\n\r\n", 400),
    "url-too-long-414": (get("/" + "a" * 200), 414),
    "header-timeout-408": (b"GET /echo HTTP/1.1\r\nHost: x\r\n", 408),
}


@pytest.mark.parametrize("raw, status", SECOND_REQUESTS.values(), ids=SECOND_REQUESTS.keys())
async def test_bad_request_on_a_kept_alive_connection_gets_its_status(
    nursery, upstream, raw, status
):
    _, port = await proxy(nursery, upstream, max_url_bytes=100, request_header_timeout="300ms")
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/echo/first"))
            assert echoed(await client.response())["target"] == "/echo/first"
            await client.send(raw)
            got = await client.read_to_eof()
    assert [q["target"] for q in upstream.requests] == ["/echo/first"]
    assert_refused(got, status)


async def test_valid_request_pipelined_before_a_bad_one_is_still_answered(nursery, upstream):
    _, port = await proxy(nursery, upstream)
    with trio.fail_after(5):
        got = await raw_exchange(port, get("/echo/first") + SMUGGLER)
    assert [q["target"] for q in upstream.requests] == ["/echo/first"]  # and nothing else
    first, _, rest = got.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 400" in rest
    assert b"smuggled" not in rest


async def test_invalid_chunk_after_the_head_went_upstream(nursery, upstream):
    """The head was valid and forwarded; the bad chunk comes later: the client gets a 400 and
    the upstream never sees a complete request."""
    server, port = await proxy(nursery, upstream)
    stats = server.clusters.get("up").stats
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            while stats.upstream_rq_total < 1:  # the request is on its way upstream
                await trio.sleep(0.01)
            await client.send(b"zz\r\nworld\r\n0\r\n\r\n")
            got = await client.read_to_eof()
        assert_refused(got, 400)
        assert upstream.requests == []
        await still_serves(port, upstream)


async def test_body_of_a_locally_answered_request_is_never_parsed_as_a_request(nursery, upstream):
    _, port = await start_proxy(
        nursery,
        http_config(
            [
                {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": "d"}},
                to("up"),
            ],
            {"up": upstream.port},
        ),
    )
    inner = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(5):
        got = await raw_exchange(
            port,
            b"POST /direct HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner,
        )
    status, _, _, _ = parse_head(got.partition(b"\r\n\r\n")[0])
    assert status == 200
    assert got.count(b"HTTP/1.1") == 1
    assert upstream.requests == []


async def test_http11_request_without_host_is_400(nursery, upstream):
    _, port = await proxy(nursery, upstream)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n")
            r = await client.response()
            assert r.status == 400, r
            assert r.headers.get("connection", "").lower() == "close"
            assert await client.closed()
    assert upstream.connections == 0


async def test_http10_request_without_host_is_served(nursery, upstream):
    _, port = await proxy(nursery, upstream)
    with trio.fail_after(5):
        r = await request(port, b"GET /echo HTTP/1.0\r\n\r\n")
    seen = echoed(r)
    assert seen["target"] == "/echo"
    assert len(seen["headers"].getall("host")) == 1


# --------------------------------------------------------------------------- limits


async def test_header_bytes_over_the_limit_is_431(nursery, upstream):
    _, port = await proxy(nursery, upstream, max_request_header_bytes=1024)
    with trio.fail_after(5):
        ok = await request(port, get("/echo/fits", headers="X-Big: " + "a" * 900 + "\r\n"))
        assert ok.status == 200
        got = await raw_exchange(port, get("/", headers="X-Big: " + "a" * 2000 + "\r\n"))
        assert_refused(got, 431)
        upstream.requests.clear()
        await still_serves(port, upstream)


async def test_header_bytes_over_the_limit_split_over_many_sends(nursery, upstream):
    _, port = await proxy(nursery, upstream, max_request_header_bytes=1024)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(50):  # never a complete head: the limit must stop it
                    await client.send(b"X-Pad: " + b"p" * 50 + b"\r\n")
            except trio.BrokenResourceError:
                pass
            got = await client.read_to_eof()
        assert_refused(got, 431)
        assert upstream.requests == []
        await still_serves(port, upstream)


async def test_url_over_the_limit_is_414(nursery, upstream):
    _, port = await proxy(nursery, upstream, max_url_bytes=100)
    with trio.fail_after(5):
        assert (await request(port, get("/" + "a" * 90))).status == 200
        got = await raw_exchange(port, get("/" + "a" * 200))
        assert_refused(got, 414)
        upstream.requests.clear()
        await still_serves(port, upstream)


async def test_header_count_over_the_limit_is_431(nursery, upstream):
    _, port = await proxy(nursery, upstream, max_request_headers=5)
    with trio.fail_after(5):
        four = "".join(f"X-H{i}: v\r\n" for i in range(4))  # with Host: 5
        assert (await request(port, get("/echo/five", headers=four))).status == 200
        ten = "".join(f"X-H{i}: v\r\n" for i in range(10))
        got = await raw_exchange(port, get("/", headers=ten))
        assert_refused(got, 431)
        upstream.requests.clear()
        await still_serves(port, upstream)


async def test_content_length_over_the_body_limit_is_413_before_forwarding(nursery, upstream):
    _, port = await proxy(nursery, upstream, max_request_body_bytes=100)
    with trio.fail_after(5):
        ok = await request(port, POST + b"Content-Length: 100\r\n\r\n" + b"b" * 100)
        assert echoed(ok)["body_length"] == 100
        upstream.requests.clear()
        # the head alone says it is too large: answered before any body byte is sent
        async with await Client.connect(port) as client:
            await client.send(POST + b"Content-Length: 200\r\n\r\n")
            got = await client.read_to_eof()
        assert_refused(got, 413)
        assert upstream.requests == []
        await still_serves(port, upstream)


async def test_chunked_body_over_the_limit_never_gets_a_200(nursery, upstream):
    server, port = await proxy(nursery, upstream, max_request_body_bytes=100)
    stats = server.clusters.get("up").stats
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(
                POST + b"Transfer-Encoding: chunked\r\n\r\n3c\r\n" + b"a" * 60 + b"\r\n"
            )
            while stats.upstream_rq_total < 1:  # the first chunk is within the limit
                await trio.sleep(0.01)
            try:
                await client.send(b"3c\r\n" + b"b" * 60 + b"\r\n0\r\n\r\n")
            except trio.BrokenResourceError:
                pass
            got = await client.read_to_eof()
        if got:
            assert_refused(got, 413)
        assert b"200" not in got.split(b"\r\n", 1)[0]
        assert upstream.requests == []  # the upstream never got the whole request
        await still_serves(port, upstream)


async def test_chunked_body_over_the_limit_in_one_send_is_413(nursery, upstream):
    _, port = await proxy(nursery, upstream, max_request_body_bytes=100)
    body = b"".join(b"32\r\n" + b"c" * 50 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    with trio.fail_after(5):
        got = await raw_exchange(port, POST + b"Transfer-Encoding: chunked\r\n\r\n" + body)
        assert_refused(got, 413)
        assert upstream.requests == []
        await still_serves(port, upstream)


# --------------------------------------------------------------------------- slow clients


async def _drip(client: Client, data: bytes, every: float) -> None:
    """The slow client: one byte every ``every`` seconds until done or cut off."""
    try:
        for i in range(len(data)):
            await client.send(data[i : i + 1])
            await trio.sleep(every)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_slowloris_head_dripped_byte_by_byte_is_408(nursery, upstream):
    _, port = await proxy(nursery, upstream, request_header_timeout="300ms")
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"s" * 100 + b"\r\n\r\n"
    with trio.fail_after(5):
        async with await Client.connect(port) as client, trio.open_nursery() as n:
            start = trio.current_time()
            n.start_soon(_drip, client, head, 0.05)  # the whole head would take 6.5 s
            got = await client.read_to_eof()
            elapsed = trio.current_time() - start
            n.cancel_scope.cancel()
        assert_refused(got, 408)
        assert got.endswith(b"request header timeout\n")
        assert 0.3 <= elapsed < 2
        assert upstream.requests == []
        await still_serves(port, upstream)


async def test_head_never_finished_is_408(nursery, upstream):
    _, port = await proxy(nursery, upstream, request_header_timeout="300ms")
    with trio.fail_after(5):
        start = trio.current_time()
        got = await raw_exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        assert 0.3 <= trio.current_time() - start < 2
        assert_refused(got, 408)
        assert upstream.requests == []
        await still_serves(port, upstream)


async def test_header_timeout_starts_at_the_first_byte(nursery, upstream):
    """An idle keep-alive connection is not a slow head: the clock starts with a request's
    first byte."""
    _, port = await proxy(nursery, upstream, request_header_timeout="300ms")
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await trio.sleep(0.5)  # idle, longer than the header timeout
            await client.send(get("/echo/late"))
            assert echoed(await client.response())["target"] == "/echo/late"
            await trio.sleep(0.5)  # idle between requests too
            await client.send(get("/echo/later"))
            assert echoed(await client.response())["target"] == "/echo/later"


# --------------------------------------------------------------------------- upstream side


async def _scripted(nursery, responses: dict[bytes, bytes]) -> tuple[int, list[int]]:
    """A raw upstream answering each request line's target with fixed bytes; also the
    number of requests each of its connections received."""
    per_connection: list[int] = []

    async def handler(stream):
        index = len(per_connection)
        per_connection.append(0)
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            per_connection[index] += 1
            method, target = req[0].split(b" ")[:2]
            await stream.send_all(responses[method + b" " + target])

    return await start_raw_server(nursery, handler), per_connection


@pytest.mark.parametrize(
    "first",
    [
        # more bytes than Content-Length: a second response hidden in the first
        b"GET /split",
        # a body on a response to HEAD
        b"HEAD /head",
    ],
)
async def test_bytes_after_a_complete_response_are_never_a_response(nursery, first):
    evil = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"
    up, per_connection = await _scripted(
        nursery,
        {
            b"GET /split": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + evil,
            b"HEAD /head": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + evil,
            b"GET /next": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
        },
    )
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    method = first.split(b" ")[0]
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(first + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            r = await client.response(head=method == b"HEAD")
            await client.send(get("/next"))
            after = await client.response()
    assert r.status == 200
    assert (after.status, after.body) == (200, b"next")
    assert per_connection == [1, 1]  # the polluted connection was not used again


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["duplicate-cl", "cl-te", "te-gzip-chunked", "bad-chunk-size", "obs-fold", "nul"],
)
async def test_ambiguous_upstream_response_is_502(nursery, response):
    up, _ = await _scripted(nursery, {b"GET /": response})
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        got = await raw_exchange(port, get("/", headers="Connection: close\r\n"))
    assert got.startswith(b"HTTP/1.1 502 "), got
    assert got.endswith(b"\r\n\r\nupstream sent an invalid response\n"), got
