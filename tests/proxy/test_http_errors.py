"""HTTP/1.1 proxy end to end: every failure's local reply (status, body, Envoy response flag
in the JSON access log), timeouts, retries and the keep-alive race."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from tests.http_helpers import (
    Client,
    Closed,
    access_log,
    closed_port,
    get,
    http_config,
    read_access_log,
    read_request,
    request,
    running_proxy,
    start_proxy,
    start_raw_server,
    start_upstream,
    to,
)

RESET_BEFORE_HEADERS = b"upstream connect error or disconnect/reset before headers. reset reason: "


@pytest.fixture
async def upstream(nursery):
    return await start_upstream(nursery)


def retry(**policy):
    return {"retry_policy": policy}


async def one_logged(tmp_path, config_args: dict, raw: bytes):
    """Run a proxy with a JSON access log, send ``raw``, stop the proxy; the response and the
    one access log entry."""
    listener, path = access_log(tmp_path)
    config = http_config(listener=listener, **config_args)
    with trio.fail_after(10):
        async with running_proxy(config) as (server, port):
            response = await request(port, raw)
    (entry,) = read_access_log(path)
    return response, entry, server


# --------------------------------------------------------------------------- local replies


async def test_no_route_is_404_nr(tmp_path, upstream):
    r, entry, server = await one_logged(
        tmp_path,
        {
            "routes": [to("up", "/api/")],
            "clusters": {"up": upstream.port},
        },
        get("/other"),
    )
    assert (r.status, r.body) == (404, b"route not found\n")
    assert (entry["response_code"], entry["response_flag"]) == (404, "NR")
    assert upstream.requests == []
    assert server.listeners == {}  # stopped


async def test_no_virtual_host_is_404_nr(tmp_path, upstream):
    r, entry, _ = await one_logged(
        tmp_path,
        {
            "clusters": {"up": upstream.port},
            "router_extra": {
                "virtual_hosts": [{"name": "a", "domains": ["a.test"], "routers": [to("up")]}]
            },
        },
        get("/", host="b.test"),
    )
    assert (r.status, r.body, entry["response_flag"]) == (404, b"route not found\n", "NR")


@pytest.mark.parametrize("header", ["X-Cluster: nope\r\n", "", "X-Cluster: \r\n"])
async def test_cluster_header_naming_no_cluster_is_503_nc(tmp_path, upstream, header):
    r, entry, _ = await one_logged(
        tmp_path,
        {
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}}],
            "clusters": {"up": upstream.port},
        },
        get("/", headers=header),
    )
    assert (r.status, r.body) == (503, b"cluster not found\n")
    assert (entry["response_code"], entry["response_flag"]) == (503, "NC")
    assert upstream.requests == []


async def test_empty_cluster_is_503_uh(tmp_path):
    r, entry, server = await one_logged(
        tmp_path, {"routes": [to("empty")], "clusters": {"empty": []}}, get("/")
    )
    assert (r.status, r.body) == (503, b"no healthy upstream\n")
    assert (entry["response_code"], entry["response_flag"]) == (503, "UH")
    assert entry["upstream_cluster"] == "empty"
    assert server.clusters.get("empty").stats.upstream_cx_none_healthy == 1


async def test_connect_refused_is_503_uf(tmp_path):
    r, entry, server = await one_logged(
        tmp_path, {"routes": [to("up")], "clusters": {"up": closed_port()}}, get("/")
    )
    assert r.status == 503
    assert r.body == RESET_BEFORE_HEADERS + b"connection failure\n"
    assert (entry["response_code"], entry["response_flag"]) == (503, "UF")
    assert server.clusters.get("up").stats.upstream_cx_connect_fail == 1


async def test_malformed_upstream_response_is_502_upe(tmp_path, upstream):
    r, entry, _ = await one_logged(
        tmp_path, {"routes": [to("up")], "clusters": {"up": upstream.port}}, get("/malformed")
    )
    assert (r.status, r.body) == (502, b"upstream sent an invalid response\n")
    assert (entry["response_code"], entry["response_flag"]) == (502, "UPE")


async def test_upstream_hangup_before_headers_is_502_uc(tmp_path, upstream):
    r, entry, _ = await one_logged(
        tmp_path, {"routes": [to("up")], "clusters": {"up": upstream.port}}, get("/hangup")
    )
    assert r.status == 502
    assert r.body == RESET_BEFORE_HEADERS + b"connection termination\n"
    assert (entry["response_code"], entry["response_flag"]) == (502, "UC")
    assert len(upstream.requests) == 1  # a fresh connection: no keep-alive-race retry


async def test_upstream_reset_mid_body_cuts_the_client_off(tmp_path, upstream):
    listener, path = access_log(tmp_path)
    config = http_config([to("up")], {"up": upstream.port}, listener=listener)
    with trio.fail_after(10):
        async with running_proxy(config) as (_, port):
            async with await Client.connect(port) as client:
                await client.send(get("/reset-mid-body"))
                got = await client.read_to_eof()  # ends by EOF or by a reset
    assert got.startswith(b"HTTP/1.1 200 ")
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"content-length: 100000" in head.lower()
    assert 0 < len(body) < 100_000
    (entry,) = read_access_log(path)
    assert entry["response_code"] == 200
    assert "UC" in entry["response_flag"].split(",")


async def test_route_timeout_is_504_ut(tmp_path, upstream):
    start = trio.current_time()
    r, entry, server = await one_logged(
        tmp_path,
        {"routes": [to("up", timeout="200ms")], "clusters": {"up": upstream.port}},
        get("/slow/5"),
    )
    elapsed = trio.current_time() - start
    assert (r.status, r.body) == (504, b"upstream request timeout\n")
    assert (entry["response_code"], entry["response_flag"]) == (504, "UT")
    assert 0.2 <= elapsed < 3
    assert server.clusters.get("up").stats.upstream_rq_timeout == 1


async def test_route_timeout_keeps_the_connection_for_the_next_request(nursery, upstream):
    """The 504 is sent from the connection's own (expired) scope; the session then goes on
    under a fresh timer: the next request on the same connection is served, and idle
    timeouts still apply afterwards."""
    config = http_config(
        [to("up", prefix="/slow", timeout="200ms"), to("up")],
        {"up": upstream.port},
        listener={"connection_idle_timeout": "600ms"},
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/slow/5"))
            first = await client.response()
            await client.send(get("/echo"))
            second = await client.response()
            assert (first.status, second.status) == (504, 200)
            assert first.headers.get("connection") is None  # kept alive
            start = trio.current_time()
            with pytest.raises(Closed):
                await client.response()  # nothing asked: the idle timeout closes it
            assert 0.5 <= trio.current_time() - start < 3
    stats = server.listeners["ingress"].stats
    assert stats.downstream_cx_idle_timeout == 1  # the route timeout is not counted as idle
    assert server.clusters.get("up").stats.upstream_rq_timeout == 1


async def test_route_timeout_mid_body_resets_downstream(nursery, tmp_path):
    """Once the status line went downstream, a route timeout can only cut the response."""

    async def stalls_mid_body(stream):
        await read_request(stream, bytearray())
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
        await trio.sleep_forever()

    up = await start_raw_server(nursery, stalls_mid_body)
    listener, path = access_log(tmp_path)
    config = http_config([to("up", timeout="200ms")], {"up": up}, listener=listener)
    with trio.fail_after(10):
        async with running_proxy(config) as (server, port):
            async with await Client.connect(port) as client:
                await client.send(get("/"))
                got = await client.read_to_eof()
            assert server.clusters.get("up").stats.upstream_rq_timeout == 1
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"partial")
    (entry,) = read_access_log(path)
    assert (entry["response_code"], entry["response_flag"]) == (200, "UT")


async def test_route_timeout_counts_from_the_end_of_the_upload(nursery, upstream):
    """A request body trickling in for longer than the route timeout is not a 504: the
    route timeout starts once the request is complete (as Envoy's does)."""
    config = http_config([to("up", timeout="300ms")], {"up": upstream.port})
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(
                b"POST /echo HTTP/1.1\r\nhost: example.com\r\ncontent-length: 4\r\n\r\nab"
            )
            await trio.sleep(0.5)  # the slow client itself is what this test is about
            await client.send(b"cd")
            r = await client.response()
    assert r.status == 200


async def test_circuit_breaker_overflow_is_503_uo(nursery, tmp_path):
    """max_connections 1, max_pending_requests 1: A holds the connection, B waits for it,
    C overflows at once; then A and B complete on that one connection."""
    arrived = trio.Event()
    release = trio.Event()
    connections = 0

    async def gate(stream):
        nonlocal connections
        connections += 1
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            if req[0].startswith(b"GET /hold "):
                arrived.set()
                await release.wait()
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    up = await start_raw_server(nursery, gate)
    listener, path = access_log(tmp_path)
    cluster = {
        "hosts": [{"address": f"127.0.0.1:{up}"}],
        "circuit_breakers": [{"max_connections": 1, "max_pending_requests": 1}],
    }
    config = http_config([to("up")], {"up": cluster}, listener=listener)
    results: dict[str, tuple[int, bytes]] = {}

    async def fetch(port, name, path):
        async with await Client.connect(port) as client:
            await client.send(get(path))
            r = await client.response()
            results[name] = (r.status, r.body)

    with trio.fail_after(10):
        async with running_proxy(config) as (server, port):
            stats = server.clusters.get("up").stats
            async with trio.open_nursery() as n:
                n.start_soon(fetch, port, "a", "/hold")
                await arrived.wait()
                n.start_soon(fetch, port, "b", "/b")
                while stats.upstream_rq_pending_active < 1:  # B is queued for the connection
                    await trio.sleep(0.01)
                await fetch(port, "c", "/c")
                assert results == {"c": (503, b"upstream connection overflow\n")}
                release.set()
            assert stats.upstream_rq_pending_overflow == 1
    assert results["a"] == results["b"] == (200, b"ok")
    assert connections == 1
    flags = {(e["path"], e["response_code"], e["response_flag"]) for e in read_access_log(path)}
    assert flags == {("/hold", 200, None), ("/b", 200, None), ("/c", 503, "UO")}


# --------------------------------------------------------------------------- retries


async def test_retry_5xx_until_success(nursery, upstream):
    config = http_config([to("up", **retry(retry_on="5xx", num_retries=2))], {"up": upstream.port})
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        r = await request(port, get("/flaky/k1/2"))
    assert (r.status, r.body) == (200, b"try 3\n")
    assert [q["target"] for q in upstream.requests] == ["/flaky/k1/2"] * 3
    assert server.clusters.get("up").stats.upstream_rq_retry == 2


async def test_retries_exhausted_pass_the_last_response_through(nursery, upstream):
    config = http_config([to("up", **retry(retry_on="5xx", num_retries=1))], {"up": upstream.port})
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        r = await request(port, get("/flaky/k2/2"))
    assert (r.status, r.body) == (503, b"try 2\n")  # the upstream's own answer
    assert len(upstream.requests) == 2


async def test_no_retry_policy_no_retry(nursery, upstream):
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": upstream.port}))
    with trio.fail_after(5):
        r = await request(port, get("/flaky/k3/1"))
    assert (r.status, r.body) == (503, b"try 1\n")
    assert len(upstream.requests) == 1


async def test_retry_on_connect_failure_reaches_the_good_host(nursery, upstream):
    cluster = {
        "lb_type": "LB_ROUNDROBIN",
        "hosts": [
            {"address": f"127.0.0.1:{closed_port()}"},
            {"address": f"127.0.0.1:{upstream.port}"},
        ],
    }
    config = http_config(
        [to("up", **retry(retry_on="connect-failure", num_retries=1))], {"up": cluster}
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for i in range(10):
                await client.send(get(f"/echo/{i}"))
                assert (await client.response()).status == 200
    stats = server.clusters.get("up").stats
    assert len(upstream.requests) == 10
    assert stats.upstream_cx_connect_fail >= 1  # round robin sent some to the refused host
    assert stats.upstream_rq_retry == stats.upstream_cx_connect_fail


async def test_connect_failure_not_retried_without_the_condition(nursery):
    config = http_config(
        [to("up", **retry(retry_on="retriable-status-codes", retriable_status_codes=[503]))],
        {"up": closed_port()},
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        r = await request(port, get("/"))
    assert r.status == 503
    assert server.clusters.get("up").stats.upstream_cx_connect_fail == 1


async def test_retry_on_reset(nursery, upstream):
    config = http_config(
        [to("up", **retry(retry_on="reset", num_retries=2))], {"up": upstream.port}
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        r = await request(port, get("/hangup"))
    assert r.status == 502
    assert r.body == RESET_BEFORE_HEADERS + b"connection termination\n"
    assert len(upstream.requests) == 3


async def test_per_try_timeout_then_retry_on_another_host(nursery, upstream):
    """Round robin over a host that never answers and a good one: a try on the silent host
    ends at the per-try timeout and the retry goes to the good host."""
    silent_requests = 0

    async def silent(stream):
        nonlocal silent_requests
        buf = bytearray()
        if await read_request(stream, buf) is not None:
            silent_requests += 1
            await trio.sleep_forever()

    silent_port = await start_raw_server(nursery, silent)
    cluster = {
        "lb_type": "LB_ROUNDROBIN",
        "hosts": [
            {"address": f"127.0.0.1:{silent_port}"},
            {"address": f"127.0.0.1:{upstream.port}"},
        ],
    }
    config = http_config(
        [to("up", **retry(retry_on="reset", num_retries=1, per_try_timeout="200ms"))],
        {"up": cluster},
    )
    _, port = await start_proxy(nursery, config)
    start = trio.current_time()
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for i in range(2):  # one of two starts on the silent host, whatever the RR start
                await client.send(get(f"/echo/{i}"))
                assert (await client.response()).status == 200
    # one or two tries went to the silent host, depending on where round robin started
    assert silent_requests in (1, 2)
    assert trio.current_time() - start >= 0.2 * silent_requests
    assert [q["target"] for q in upstream.requests] == ["/echo/0", "/echo/1"]


async def test_per_try_timeout_every_try_times_out_is_504(nursery, upstream):
    config = http_config(
        [to("up", timeout="5s", **retry(retry_on="5xx", num_retries=1, per_try_timeout="150ms"))],
        {"up": upstream.port},
    )
    _, port = await start_proxy(nursery, config)
    start = trio.current_time()
    with trio.fail_after(5):
        r = await request(port, get("/slow/3"))
    assert (r.status, r.body) == (504, b"upstream request timeout\n")
    assert 0.3 <= trio.current_time() - start < 2
    assert [q["target"] for q in upstream.requests] == ["/slow/3", "/slow/3"]


async def test_retriable_status_codes(nursery, upstream):
    config = http_config(
        [
            to(
                "up",
                "/flaky/listed/",
                **retry(retry_on="retriable-status-codes", retriable_status_codes=[503]),
            ),
            to(
                "up",
                "/flaky/",
                **retry(retry_on="retriable-status-codes", retriable_status_codes=[409]),
            ),
        ],
        {"up": upstream.port},
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        listed = await request(port, get("/flaky/listed/1"))
        other = await request(port, get("/flaky/other/1"))
    assert (listed.status, listed.body) == (200, b"try 2\n")
    assert (other.status, other.body) == (503, b"try 1\n")  # 503 is not listed there
    assert [q["target"] for q in upstream.requests] == ["/flaky/listed/1"] * 2 + ["/flaky/other/1"]


async def test_small_post_body_is_replayed_on_retry(nursery, upstream):
    config = http_config(
        [to("up", **retry(retry_on="5xx", num_retries=1))],
        {"up": upstream.port},
        proxy={"retry_buffer_bytes": 1024},
    )
    _, port = await start_proxy(nursery, config)
    body = os.urandom(1000)
    with trio.fail_after(5):
        r = await request(
            port, b"POST /flaky/p1/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + body
        )
    assert (r.status, r.body) == (200, b"try 2\n")
    digest = hashlib.sha256(body).hexdigest()
    assert [(q["body_length"], q["body_sha256"]) for q in upstream.requests] == [(1000, digest)] * 2


async def test_small_chunked_post_body_is_replayed_on_retry(nursery, upstream):
    config = http_config(
        [to("up", **retry(retry_on="5xx", num_retries=1))],
        {"up": upstream.port},
        proxy={"retry_buffer_bytes": 1024},
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        r = await request(
            port,
            b"POST /flaky/p2/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
    assert (r.status, r.body) == (200, b"try 2\n")
    digest = hashlib.sha256(b"hello world").hexdigest()
    assert [(q["body_length"], q["body_sha256"]) for q in upstream.requests] == [(11, digest)] * 2


async def test_post_body_over_retry_buffer_is_not_retried(nursery, upstream):
    config = http_config(
        [to("up", **retry(retry_on="5xx", num_retries=2))],
        {"up": upstream.port},
        proxy={"retry_buffer_bytes": 1024},
    )
    server, port = await start_proxy(nursery, config)
    body = os.urandom(4096)
    with trio.fail_after(5):
        r = await request(
            port, b"POST /flaky/p3/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n" + body
        )
    assert len(upstream.requests) == 1
    assert upstream.requests[0]["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert server.clusters.get("up").stats.upstream_rq_retry == 0
    # not retryable, so the upstream's own response goes to the client
    assert (r.status, r.body) == (503, b"try 1\n")


# --------------------------------------------------------------------------- keep-alive race


async def _one_request_per_connection(nursery, *, wait_for_next: bool):
    """An upstream that answers one request per connection, never saying ``connection:
    close``, then closes: at once, or (``wait_for_next``) only when the next request came
    in on it, unanswered: the keep-alive race as the proxy sees it."""
    seen = {"connections": 0, "requests": 0}

    async def handler(stream):
        seen["connections"] += 1
        buf = bytearray()
        async with stream:
            if await read_request(stream, buf) is None:
                return
            seen["requests"] += 1
            body = b"conn %d\n" % seen["connections"]
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
            )
            if wait_for_next and await read_request(stream, buf) is not None:
                seen["requests"] += 1  # read, dropped: the connection closes under it

    port = await start_raw_server(nursery, handler)
    return port, seen


@pytest.mark.parametrize("wait_for_next", [False, True], ids=["closed-while-idle", "race"])
async def test_keep_alive_race_is_retried_transparently(nursery, wait_for_next):
    up, seen = await _one_request_per_connection(nursery, wait_for_next=wait_for_next)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        bodies = []
        for _ in range(3):
            async with await Client.connect(port) as client:
                await client.send(get("/"))
                r = await client.response()
                bodies.append((r.status, r.body))
    assert bodies == [(200, b"conn 1\n"), (200, b"conn 2\n"), (200, b"conn 3\n")]
    assert seen["connections"] == 3
    if wait_for_next:
        assert seen["requests"] == 5  # two requests went down a dying connection, then again
    # no retry policy is configured: this is not counted as a retry
    assert server.clusters.get("up").stats.upstream_rq_retry == 0


async def test_route_timeout_mid_body_cuts_the_client_off(nursery, tmp_path):
    """The route timeout covers the whole response: once the head went downstream, the only
    way to say it failed is to end the connection before the promised length."""

    async def stalls(stream):
        buf = bytearray()
        if await read_request(stream, buf) is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
            await trio.sleep_forever()

    up = await start_raw_server(nursery, stalls)
    listener, path = access_log(tmp_path)
    config = http_config([to("up", timeout="200ms")], {"up": up}, listener=listener)
    with trio.fail_after(5):
        async with running_proxy(config) as (_, port):
            async with await Client.connect(port) as client:
                start = trio.current_time()
                await client.send(get("/"))
                got = await client.read_to_eof()
                elapsed = trio.current_time() - start
    assert got == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"  # head as sent
    assert 0.2 <= elapsed < 2
    (entry,) = read_access_log(path)
    assert entry["response_code"] == 200
    assert "UT" in entry["response_flag"].split(",")


async def test_upstream_101_to_a_plain_request_is_502_upe(nursery):
    async def switches(stream):
        buf = bytearray()
        if await read_request(stream, buf) is not None:
            await stream.send_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"
                b"raw bytes"
            )
            await trio.sleep_forever()

    up = await start_raw_server(nursery, switches)
    _, port = await start_proxy(nursery, http_config([to("up", timeout="5s")], {"up": up}))
    with trio.fail_after(10):
        start = trio.current_time()
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            r = await client.response(interim=True)
        elapsed = trio.current_time() - start
    assert (r.status, r.body) == (502, b"upstream sent an invalid response\n")
    assert elapsed < 2
