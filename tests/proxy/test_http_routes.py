"""HTTP/1.1 proxy end to end: route features, forwarding rules, framing, keep-alive, upgrades.

Real sockets all the way: a client (raw bytes or curl) -> the proxy (an embedded Server) -> a
real upstream (tests/upstream.py on h11, a raw trio server, or nginx). Each test asserts what
the upstream received and what the client got.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import trio

from tests.http_helpers import (
    Client,
    curl,
    echoed,
    free_port,
    get,
    http_config,
    read_request,
    request,
    split_curl_output,
    start_proxy,
    start_raw_server,
    start_upstream,
    to,
    upstream_headers,
)
from tests.upstream import pattern_bytes


@pytest.fixture
async def upstream(nursery):
    return await start_upstream(nursery)


async def proxy_to(nursery, upstream, routes=None, **kw) -> int:
    """A proxy whose cluster ``up`` is ``upstream``; its port."""
    config = http_config(
        routes or [to("up")], {"up": upstream.port, **kw.pop("clusters", {})}, **kw
    )
    _, port = await start_proxy(nursery, config)
    return port


# --------------------------------------------------------------------------- path matching


async def test_prefix_match_routes_by_prefix(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [
            {"match": {"prefix": "/api/"}, "route": {"cluster_name": "up"}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "fallback"}},
        ],
    )
    with trio.fail_after(5):
        r = await request(port, get("/api/users?x=1"))
        assert echoed(r)["target"] == "/api/users?x=1"
        r = await request(port, get("/apix"))  # "/api" is not "/api/"
        assert (r.status, r.body) == (200, b"fallback")
    assert [q["target"] for q in upstream.requests] == ["/api/users?x=1"]


async def test_path_match_is_the_whole_path_without_query(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [
            {"match": {"path": "/exact"}, "route": {"cluster_name": "up"}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": "other"}},
        ],
    )
    with trio.fail_after(5):
        assert echoed(await request(port, get("/exact?q=1")))["target"] == "/exact?q=1"
        assert (await request(port, get("/exact/more"))).status == 404
        assert (await request(port, get("/exac"))).status == 404
        assert (await request(port, get("/EXACT"))).status == 404  # case-sensitive by default
    assert [q["target"] for q in upstream.requests] == ["/exact?q=1"]


async def test_regex_match_is_a_full_match_of_the_path(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [
            {"match": {"regex": r"/users/\d+"}, "route": {"cluster_name": "up"}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": "other"}},
        ],
    )
    with trio.fail_after(5):
        assert echoed(await request(port, get("/users/42?full=1")))["target"] == "/users/42?full=1"
        assert (await request(port, get("/users/42/x"))).status == 404  # not a full match
        assert (await request(port, get("/users/abc"))).status == 404
    assert len(upstream.requests) == 1


async def test_case_insensitive_prefix_and_path(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [
            {
                "match": {"prefix": "/API/", "case_sensitive": False},
                "route": {"cluster_name": "up"},
            },
            {"match": {"path": "/Login", "case_sensitive": False}, "route": {"cluster_name": "up"}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": "other"}},
        ],
    )
    with trio.fail_after(5):
        assert echoed(await request(port, get("/api/v1")))["target"] == "/api/v1"
        assert echoed(await request(port, get("/aPi/v1")))["target"] == "/aPi/v1"
        assert echoed(await request(port, get("/LOGIN")))["target"] == "/LOGIN"
        assert (await request(port, get("/LOGIN/x"))).status == 404
    assert len(upstream.requests) == 3


# --------------------------------------------------------------------------- header and query


async def test_header_matchers_exact_regex_present_invert(nursery, upstream):
    def only(name, headers):
        return {
            "match": {"prefix": "/", "headers": headers},
            "direct_response": {"status": 200, "body": name},
        }

    port = await proxy_to(
        nursery,
        upstream,
        [
            only("exact", [{"name": "x-env", "value": "prod"}]),
            only("regex", [{"name": "x-env", "value": "stag(e|ing)", "regex": True}]),
            only("not-canary", [{"name": "x-canary", "value": "yes", "invert": True}]),
            only("present", [{"name": "x-debug", "present": True}]),
            # the fallback proxies, so the upstream sees only what no matcher took
            {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}},
        ],
    )

    async def which(headers: str) -> bytes:
        r = await request(port, get("/", headers=headers))
        assert r.status == 200
        return r.body if not r.headers.get("content-type", "").startswith("application") else b"up"

    with trio.fail_after(5):
        assert await which("X-Env: prod\r\n") == b"exact"
        assert await which("X-Env: staging\r\n") == b"regex"
        assert await which("X-Env: stage\r\n") == b"regex"
        # "prodx" is neither exact nor a full regex match; the inverted matcher needs the
        # header present with another value (Envoy: an absent header fails an inverted value)
        assert await which("X-Env: prodx\r\nX-Canary: no\r\n") == b"not-canary"
        assert await which("X-Canary: yes\r\nX-Debug: \r\n") == b"present"
        assert await which("X-Canary: yes\r\n") == b"up"
    assert len(upstream.requests) == 1
    assert upstream_headers(upstream.requests[0]).get("x-canary") == "yes"


async def test_query_parameter_matchers(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [
            {
                "match": {
                    "prefix": "/",
                    "query_parameters": [
                        {"name": "v", "value": "2"},
                        {"name": "id", "value": r"\d+", "regex": True},
                        {"name": "debug", "present": True},
                    ],
                },
                "route": {"cluster_name": "up"},
            },
            {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": "no"}},
        ],
    )
    with trio.fail_after(5):
        r = await request(port, get("/q?debug&v=2&id=17"))
        assert echoed(r)["target"] == "/q?debug&v=2&id=17"
        assert (await request(port, get("/q?v=%32&id=17&debug=1"))).status == 200  # decoded
        assert (await request(port, get("/q?v=3&id=17&debug"))).status == 404
        assert (await request(port, get("/q?v=2&id=x17&debug"))).status == 404
        assert (await request(port, get("/q?v=2&id=17"))).status == 404
        assert (await request(port, get("/q"))).status == 404
    assert len(upstream.requests) == 2


# --------------------------------------------------------------------------- domains


async def test_domains_exact_suffix_prefix_default_and_most_specific(nursery, upstream):
    def vhost(name, *domains):
        return {
            "name": name,
            "domains": list(domains),
            "request_headers_to_add": [{"header": {"key": "x-vhost", "value": name}}],
            "routers": [to("up")],
        }

    config = http_config(
        clusters={"up": upstream.port},
        router_extra={
            "virtual_hosts": [
                vhost("exact", "api.example.com"),
                vhost("suffix", "*.example.com"),
                vhost("longer-suffix", "*.foo.example.com"),
                vhost("prefix", "api.*"),
                vhost("default", "*"),
            ]
        },
    )
    _, port = await start_proxy(nursery, config)
    cases = {
        "api.example.com": "exact",
        "API.Example.COM": "exact",
        "api.example.com:8080": "exact",  # the port is ignored
        "www.example.com": "suffix",
        "a.foo.example.com": "longer-suffix",  # the longest suffix wins
        "api.x.example.com": "suffix",  # suffix wildcards before prefix ones (Envoy)
        "api.other.org": "prefix",
        "api.other.org:81": "prefix",
        "example.com": "default",  # "*.example.com" needs one character at least
        "other.org": "default",
    }
    with trio.fail_after(10):
        for host, expected in cases.items():
            seen = echoed(await request(port, get("/", host=host)))["headers"]
            assert seen.getall("x-vhost") == [expected], host
            assert seen.get("host") == host  # Host goes upstream as sent


async def test_no_default_vhost_unknown_host_gets_404(nursery, upstream):
    config = http_config(
        clusters={"up": upstream.port},
        router_extra={
            "virtual_hosts": [{"name": "only", "domains": ["a.test"], "routers": [to("up")]}]
        },
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        assert (await request(port, get("/", host="a.test"))).status == 200
        assert (await request(port, get("/", host="b.test"))).status == 404
    assert len(upstream.requests) == 1


# --------------------------------------------------------------------------- clusters


async def test_cluster_name(nursery, upstream):
    port = await proxy_to(nursery, upstream, [to("up", "/")])
    with trio.fail_after(5):
        r = await request(port, get("/hello"))
    assert echoed(r)["target"] == "/hello"
    assert upstream.connections == 1


async def test_cluster_header_picks_the_upstream(nursery):
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    config = http_config(
        [{"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}}],
        {"a": a.port, "b": b.port},
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        for name in ["a", "b", "b", "a", "b"]:
            r = await request(port, get(f"/{name}", headers=f"X-Cluster: {name}\r\n"))
            assert echoed(r)["target"] == f"/{name}"
    assert [q["target"] for q in a.requests] == ["/a", "/a"]
    assert [q["target"] for q in b.requests] == ["/b", "/b", "/b"]
    # the header that chose the cluster still goes upstream
    assert upstream_headers(b.requests[0]).get("x-cluster") == "b"


async def test_weighted_clusters_split_traffic(nursery):
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    config = http_config(
        [
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": [
                        {"cluster": {"name": "a", "weight": 50}},
                        {"cluster": {"name": "b", "weight": 50}},
                    ]
                },
            }
        ],
        {"a": a.port, "b": b.port},
    )
    _, port = await start_proxy(nursery, config)
    random.seed(20240601)
    with trio.fail_after(30):
        async with await Client.connect(port) as client:
            for i in range(200):
                await client.send(get(f"/w{i}"))
                assert (await client.response()).status == 200
    assert len(a.requests) + len(b.requests) == 200
    # 50/50 over 200 requests: each side below 40 is more than 8 standard deviations away
    assert len(a.requests) >= 40
    assert len(b.requests) >= 40


async def test_weighted_clusters_follow_the_weights(nursery):
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    config = http_config(
        [
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": [
                        {"cluster": {"name": "a", "weight": 1}},
                        {"cluster": {"name": "b", "weight": 9}},
                    ]
                },
            }
        ],
        {"a": a.port, "b": b.port},
    )
    _, port = await start_proxy(nursery, config)
    random.seed(7)
    with trio.fail_after(30):
        async with await Client.connect(port) as client:
            for _ in range(200):
                await client.send(get("/"))
                assert (await client.response()).status == 200
    # expected 20 / 180; sd 4.2: these bounds are 2.4 and 4.8 sd away, and the seed is fixed
    assert 10 <= len(a.requests) <= 40
    assert len(b.requests) == 200 - len(a.requests)


async def test_least_request_sends_new_requests_to_the_less_busy_host(nursery):
    """Requests are held at two upstreams; with least request over two hosts, each new one
    goes to the host holding fewer, so the counts never differ by more than one."""
    arrivals_send, arrivals = trio.open_memory_channel(100)
    release = trio.Event()

    def gate(name):
        async def handler(stream):
            buf = bytearray()
            while await read_request(stream, buf) is not None:
                arrivals_send.send_nowait(name)
                await release.wait()
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

        return handler

    a = await start_raw_server(nursery, gate("a"))
    b = await start_raw_server(nursery, gate("b"))
    cluster = {
        "lb_type": "LB_LEAST_REQUEST",
        "hosts": [{"address": f"127.0.0.1:{a}"}, {"address": f"127.0.0.1:{b}"}],
    }
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": cluster}))
    statuses: list[int] = []

    async def fetch():
        async with await Client.connect(port) as client:
            await client.send(get("/hold"))
            statuses.append((await client.response()).status)

    held = {"a": 0, "b": 0}
    spreads = []
    random.seed(1)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            for _ in range(20):
                n.start_soon(fetch)
                held[await arrivals.receive()] += 1  # this one is in flight at its host
                spreads.append(abs(held["a"] - held["b"]))
            release.set()
    assert statuses == [200] * 20
    assert max(spreads) <= 1, spreads


# --------------------------------------------------------------------------- rewrites


async def test_prefix_rewrite(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [
            {
                "match": {"prefix": "/api/"},
                "route": {"cluster_name": "up", "prefix_rewrite": "/v1/"},
            },
            {"match": {"path": "/old"}, "route": {"cluster_name": "up", "prefix_rewrite": "/new"}},
        ],
    )
    with trio.fail_after(5):
        assert echoed(await request(port, get("/api/users?id=3")))["target"] == "/v1/users?id=3"
        assert echoed(await request(port, get("/old?x")))["target"] == "/new?x"
    assert [q["target"] for q in upstream.requests] == ["/v1/users?id=3", "/new?x"]


async def test_regex_rewrite(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [
            to(
                "up",
                "/svc/",
                regex_rewrite={
                    "pattern": {"regex": r"^/svc/([^/]+)/(.*)$"},
                    "substitution": r"/\2/\1",
                },
            )
        ],
    )
    with trio.fail_after(5):
        r = await request(port, get("/svc/users/list/all?page=2"))
    assert echoed(r)["target"] == "/list/all/users?page=2"  # the query is kept, not rewritten


async def test_host_rewrite(nursery, upstream):
    port = await proxy_to(nursery, upstream, [to("up", host_rewrite="backend.internal")])
    with trio.fail_after(5):
        r = await request(port, get("/", host="public.example.com"))
    assert echoed(r)["headers"].getall("host") == ["backend.internal"]


async def test_auto_host_rewrite(nursery, upstream):
    port = await proxy_to(nursery, upstream, [to("up", auto_host_rewrite=True)])
    with trio.fail_after(5):
        r = await request(port, get("/", host="public.example.com"))
    assert echoed(r)["headers"].getall("host") == [f"127.0.0.1:{upstream.port}"]


# --------------------------------------------------------------------------- header mutations


async def test_request_headers_added_and_removed_at_every_level(nursery, upstream):
    def add(key, value, append=True):
        return {"header": {"key": key, "value": value}, "append": append}

    config = http_config(
        [
            to(
                "up",
                request_headers_to_add=[add("x-route", "r"), add("x-replace", "new", False)],
                request_headers_to_remove=["x-drop-route"],
            )
        ],
        {"up": upstream.port},
        vhost_extra={
            "request_headers_to_add": [add("x-vhost", "v"), add("x-multi", "vhost")],
            "request_headers_to_remove": ["x-drop-vhost"],
        },
        router_extra={
            "request_headers_to_add": [add("x-router", "c"), add("x-multi", "router")],
            "request_headers_to_remove": ["x-drop-router"],
        },
    )
    _, port = await start_proxy(nursery, config)
    sent = (
        "X-Drop-Route: 1\r\nX-Drop-Vhost: 1\r\nX-Drop-Router: 1\r\nX-Keep: k\r\n"
        "X-Replace: old1\r\nX-Replace: old2\r\nX-Multi: client\r\n"
    )
    with trio.fail_after(5):
        seen = echoed(await request(port, get("/", headers=sent)))["headers"]
    assert seen.get("x-route") == "r"
    assert seen.get("x-vhost") == "v"
    assert seen.get("x-router") == "c"
    assert seen.get("x-keep") == "k"
    assert seen.getall("x-replace") == ["new"]  # append: false replaces every value
    assert sorted(seen.getall("x-multi")) == ["client", "router", "vhost"]  # appended
    assert not {"x-drop-route", "x-drop-vhost", "x-drop-router"} & seen.names()


async def test_response_headers_added_and_removed_at_every_level(nursery):
    async def handler(stream):
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nX-Drop-Route: 1\r\nX-Drop-Vhost: 1\r\n"
                b"X-Drop-Router: 1\r\nX-Keep: k\r\nX-Server: a\r\nX-Server: b\r\n"
                b"Content-Length: 2\r\n\r\nok"
            )

    def add(key, value, append=True):
        return {"header": {"key": key, "value": value}, "append": append}

    up = await start_raw_server(nursery, handler)
    config = http_config(
        [
            to(
                "up",
                response_headers_to_add=[add("x-route", "r"), add("x-server", "proxy", False)],
                response_headers_to_remove=["x-drop-route"],
            )
        ],
        {"up": up},
        vhost_extra={
            "response_headers_to_add": [add("x-vhost", "v")],
            "response_headers_to_remove": ["x-drop-vhost"],
        },
        router_extra={
            "response_headers_to_add": [add("x-router", "c")],
            "response_headers_to_remove": ["x-drop-router"],
        },
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        r = await request(port, get("/"))
    assert (r.status, r.body) == (200, b"ok")
    assert (r.headers.get("x-route"), r.headers.get("x-vhost"), r.headers.get("x-router")) == (
        "r",
        "v",
        "c",
    )
    assert r.headers.get("x-keep") == "k"
    assert r.headers.getall("x-server") == ["proxy"]  # append: false replaced both
    assert not {"x-drop-route", "x-drop-vhost", "x-drop-router"} & r.headers.names()
    assert r.headers.get("content-length") == "2"


@pytest.mark.parametrize("action", ["direct_response", "redirect"])
async def test_response_headers_added_to_local_answers(nursery, upstream, action):
    """As in Envoy (and conf/http1.yaml's x-served-by): a virtual host's response headers
    go on its direct responses and redirects too."""
    answer = (
        {"direct_response": {"status": 200, "body": "hi"}}
        if action == "direct_response"
        else {"redirect": {"path_redirect": "/there"}}
    )
    config = http_config(
        [{"match": {"prefix": "/"}, **answer}],
        {"up": upstream.port},
        vhost_extra={
            "response_headers_to_add": [{"header": {"key": "x-served-by", "value": "trio-mesh"}}]
        },
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        r = await request(port, get("/"))
    assert r.status in (200, 301)
    assert r.headers.get("x-served-by") == "trio-mesh"


# --------------------------------------------------------------------------- local answers


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirect_codes(nursery, upstream, code):
    port = await proxy_to(
        nursery,
        upstream,
        [{"match": {"prefix": "/"}, "redirect": {"path_redirect": "/new", "response_code": code}}],
    )
    with trio.fail_after(5):
        r = await request(port, get("/old?q=1", host="site.test:8080"))
    assert r.status == code
    assert r.headers.get("location") == "http://site.test:8080/new?q=1"
    assert r.headers.get("content-length") == "0"
    assert upstream.requests == []


async def test_redirect_scheme_host_path_prefix_and_strip_query(nursery, upstream):
    def redirect(match, **action):
        return {"match": match, "redirect": action}

    port = await proxy_to(
        nursery,
        upstream,
        [
            redirect({"prefix": "/secure/"}, scheme_redirect="https"),
            redirect({"prefix": "/moved/"}, host_redirect="other.test"),
            redirect({"path": "/p"}, path_redirect="/q?fixed=1"),
            redirect({"prefix": "/old/"}, prefix_rewrite="/new/", response_code=302),
            redirect({"prefix": "/strip/"}, strip_query=True, host_redirect="s.test"),
        ],
    )
    cases = {
        "/secure/a?x=1": (301, "https://h.test/secure/a?x=1"),
        "/moved/b": (301, "http://other.test/moved/b"),
        "/p?orig=2": (301, "http://h.test/q?fixed=1"),
        "/old/a/b?x=1": (302, "http://h.test/new/a/b?x=1"),
        "/strip/c?x=1": (301, "http://s.test/strip/c"),
    }
    with trio.fail_after(5):
        for path, (status, location) in cases.items():
            r = await request(port, get(path, host="h.test"))
            assert (r.status, r.headers.get("location")) == (status, location), path
    assert upstream.requests == []


async def test_direct_response_status_and_body(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [{"match": {"prefix": "/"}, "direct_response": {"status": 418, "body": "teapot\n"}}],
    )
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/") + get("/"))
            for _ in range(2):  # kept alive: the length frames it exactly
                r = await client.response()
                assert (r.status, r.body) == (418, b"teapot\n")
                assert r.headers.get("content-length") == "7"
    assert upstream.requests == []


# --------------------------------------------------------------------------- forwarding rules


async def test_x_forwarded_for_appended_and_proto_set(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        first = echoed(await request(port, get("/")))["headers"]
        second = echoed(
            await request(
                port, get("/", headers="X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n")
            )
        )["headers"]
    assert first.getall("x-forwarded-for") == ["127.0.0.1"]
    assert first.getall("x-forwarded-proto") == ["http"]
    assert second.getall("x-forwarded-for") == ["10.0.0.1, 127.0.0.1"]
    assert second.getall("x-forwarded-proto") == ["http"]  # the client's value is not trusted


async def test_x_request_id_generated_when_absent_and_kept_when_present(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        ids = [echoed(await request(port, get("/")))["headers"].getall("x-request-id")]
        ids.append(echoed(await request(port, get("/")))["headers"].getall("x-request-id"))
        kept = echoed(await request(port, get("/", headers="X-Request-Id: abc-123\r\n")))
    assert len(ids[0]) == len(ids[1]) == 1
    assert ids[0][0] and ids[0] != ids[1]  # generated, fresh per request
    assert kept["headers"].getall("x-request-id") == ["abc-123"]


async def test_host_preserved(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        seen = echoed(await request(port, get("/", host="Shop.Example.com:8443")))["headers"]
    assert seen.getall("host") == ["Shop.Example.com:8443"]


async def test_hop_by_hop_request_headers_removed(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    hop = (
        "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
        "TE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eA==\r\n"
        "Proxy-Connection: keep-alive\r\nX-End: kept\r\n"
    )
    with trio.fail_after(5):
        seen = echoed(await request(port, get("/", headers=hop)))["headers"]
    gone = {"connection", "x-hop", "keep-alive", "te", "upgrade"}
    assert not gone & seen.names(), seen
    assert not [n for n in seen.names() if n.startswith("proxy-")], seen
    assert seen.get("x-end") == "kept"


async def test_hop_by_hop_response_headers_removed(nursery):
    async def handler(stream):
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: secret\r\n"
                b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nProxy-Foo: 1\r\n"
                b"Upgrade: h2c\r\nTE: trailers\r\nX-End: kept\r\nContent-Length: 2\r\n\r\nok"
            )

    up = await start_raw_server(nursery, handler)
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            r = await client.response()
            await client.send(get("/"))  # still usable: the proxy's framing is right
            assert (await client.response()).body == b"ok"
    assert (r.status, r.body) == (200, b"ok")
    assert not {"connection", "x-hop", "keep-alive", "upgrade", "te"} & r.headers.names(), r
    assert not [n for n in r.headers.names() if n.startswith("proxy-")], r
    assert r.headers.get("x-end") == "kept"


# --------------------------------------------------------------------------- keep-alive


async def test_keep_alive_one_upstream_connection_for_ten_requests(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for i in range(10):
                await client.send(get(f"/echo/{i}"))
                assert echoed(await client.response())["target"] == f"/echo/{i}"
    assert upstream.connections == 1
    assert len(upstream.requests) == 10


async def test_idle_upstream_connection_reused_across_client_connections(nursery, upstream):
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": upstream.port}))
    with trio.fail_after(10):
        for i in range(2):
            async with await Client.connect(port) as client:
                await client.send(get(f"/c{i}"))
                assert echoed(await client.response())["target"] == f"/c{i}"
    assert upstream.connections == 1
    assert server.clusters.get("up").stats.upstream_cx_total == 1


async def test_lifo_reuse_takes_the_most_recent_idle_connection(nursery):
    """Two upstream connections go idle, A then B: the next request goes on B (last in,
    first out), never on the colder A."""
    arrived = {"a": trio.Event(), "b": trio.Event()}
    release = {"a": trio.Event(), "b": trio.Event()}
    ids = iter(range(100))

    async def handler(stream):
        cid = next(ids)
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            name = req[0].split(b" ")[1].decode().strip("/")
            if name in arrived:
                arrived[name].set()
                await release[name].wait()
            body = str(cid).encode()
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n" + body)

    up = await start_raw_server(nursery, handler)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    served: dict[str, bytes] = {}

    async def fetch(name):
        async with await Client.connect(port) as client:
            await client.send(get(f"/{name}"))
            served[name] = (await client.response()).body

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(fetch, "a")
            n.start_soon(fetch, "b")
            await arrived["a"].wait()
            await arrived["b"].wait()  # both held: two upstream connections
            release["a"].set()
            while "a" not in served:
                await trio.sleep(0.01)
            release["b"].set()
        await fetch("next")
    assert served["a"] != served["b"]
    assert served["next"] == served["b"]
    assert server.clusters.get("up").stats.upstream_cx_total == 2


async def test_max_request_per_conn_retires_upstream_connections(nursery, upstream):
    cluster = {"hosts": [{"address": f"127.0.0.1:{upstream.port}"}], "max_request_per_conn": 2}
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": cluster}))
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for i in range(5):
                await client.send(get(f"/echo/{i}"))
                assert echoed(await client.response())["target"] == f"/echo/{i}"
    assert upstream.connections == 3  # 2 + 2 + 1


async def test_idle_client_connection_closed_but_not_while_a_request_is_in_flight(
    nursery, upstream
):
    server, port = await start_proxy(
        nursery,
        http_config(
            [to("up")], {"up": upstream.port}, listener={"connection_idle_timeout": "300ms"}
        ),
    )
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/slow/0.6"))  # waiting on the upstream is not idle
            assert (await client.response()).body == b"slow\n"
            start = trio.current_time()
            assert await client.closed()  # idle after the response: closed
            assert 0.3 <= trio.current_time() - start < 2
    assert server.listeners["ingress"].stats.downstream_cx_idle_timeout == 1


async def test_pipelined_requests_answered_in_order(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/slow/0.2") + get("/echo/2") + get("/status/201"))
            first, second, third = [await client.response() for _ in range(3)]
    assert (first.status, first.body) == (200, b"slow\n")
    assert echoed(second)["target"] == "/echo/2"
    assert (third.status, third.body) == (201, b"status 201\n")
    assert [q["target"] for q in upstream.requests] == ["/slow/0.2", "/echo/2", "/status/201"]


async def test_http10_without_keep_alive_is_closed_after_the_response(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(b"GET /bytes/100 HTTP/1.0\r\nHost: x\r\n\r\n")
            r = await client.response()
            assert await client.closed()
    assert (r.status, r.body) == (200, pattern_bytes(100))
    assert r.headers.get("connection", "").lower() == "close"


async def test_connection_close_request_is_answered_then_closed(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/echo", headers="Connection: close\r\n") + get("/never"))
            r = await client.response()
            assert await client.closed()
    assert echoed(r)["target"] == "/echo"
    assert [q["target"] for q in upstream.requests] == ["/echo"]


# --------------------------------------------------------------------------- bodies and framing


async def test_head_response_has_no_body(nursery):
    async def handler(stream):
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            if req[0].startswith(b"HEAD"):
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")

    up = await start_raw_server(nursery, handler)
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
            r = await client.response(head=True)
            await client.send(get("/y"))  # no body bytes were sent for the HEAD
            after = await client.response()
    assert r.status == 200
    assert r.headers.get("content-length") == "1000"
    assert (after.status, after.body) == (200, b"body")


async def test_head_with_curl(nursery):
    async def handler(stream):
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            assert req[0].startswith(b"HEAD /doc ")
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nX-Up: 1\r\n\r\n")

    up = await start_raw_server(nursery, handler)
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    code, out, err = await curl("-I", f"http://127.0.0.1:{port}/doc")
    assert code == 0, err
    ((status, headers, body),) = split_curl_output(out)
    assert (status, headers.get("content-length"), headers.get("x-up"), body) == (
        200,
        "5000",
        "1",
        b"",
    )


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(nursery, upstream, status):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get(f"/status/{status}") + get("/echo/after"))
            r = await client.response()
            after = await client.response()
    assert (r.status, r.body) == (status, b"")
    assert "transfer-encoding" not in r.headers
    assert echoed(after)["target"] == "/echo/after"  # nothing leaked between the two


async def test_expect_100_continue(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    body = os.urandom(5000)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            interim = await client.response(interim=True)
            assert interim.status == 100
            assert upstream.requests == []  # nothing was sent on before the body came
            await client.send(body)
            final = echoed(await client.response())
    assert final["body_length"] == len(body)
    assert final["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "expect" not in final["headers"]


async def test_expect_100_continue_with_curl(nursery, upstream, tmp_path):
    port = await proxy_to(nursery, upstream)
    data = os.urandom(300_000)
    (tmp_path / "big").write_bytes(data)
    code, out, err = await curl(
        "-i",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "5",
        "--data-binary",
        f"@{tmp_path / 'big'}",
        f"http://127.0.0.1:{port}/echo",
    )
    assert code == 0, err
    blocks = split_curl_output(out)
    assert [b[0] for b in blocks] == [100, 200]
    seen = json.loads(blocks[-1][2])
    assert seen["body_length"] == len(data)
    assert seen["body_sha256"] == hashlib.sha256(data).hexdigest()


async def test_post_content_length_body(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    body = os.urandom(1_000_000)
    with trio.fail_after(10):
        r = await request(
            port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
    seen = echoed(r)
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["headers"].getall("content-length") == [str(len(body))]


async def test_post_chunked_body(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    pieces = [os.urandom(n) for n in (1, 1000, 70000, 5)]
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with trio.fail_after(10):
        r = await request(
            port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + wire
        )
    seen = echoed(r)
    body = b"".join(pieces)
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["headers"].getall("transfer-encoding") == ["chunked"]
    assert "content-length" not in seen["headers"]


async def test_post_with_curl_data_binary(nursery, upstream, tmp_path):
    port = await proxy_to(nursery, upstream)
    data = os.urandom(200_000)
    (tmp_path / "f").write_bytes(data)
    code, out, err = await curl(
        "-i", "-H", "Expect:", "--data-binary", f"@{tmp_path / 'f'}", f"http://127.0.0.1:{port}/up"
    )
    assert code == 0, err
    ((status, _, body),) = split_curl_output(out)
    seen = json.loads(body)
    assert status == 200
    assert (seen["method"], seen["target"]) == ("POST", "/up")
    assert seen["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert upstream.requests[0]["body_length"] == len(data)


async def test_chunked_upload_with_curl(nursery, upstream, tmp_path):
    port = await proxy_to(nursery, upstream)
    data = os.urandom(150_000)
    (tmp_path / "f").write_bytes(data)
    code, out, err = await curl(
        "-i",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect:",
        "--data-binary",
        f"@{tmp_path / 'f'}",
        f"http://127.0.0.1:{port}/chunky",
    )
    assert code == 0, err
    ((status, _, body),) = split_curl_output(out)
    assert status == 200
    seen = json.loads(body)
    assert seen["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert ["transfer-encoding", "chunked"] in seen["headers"]


async def test_chunked_response_reframed(nursery):
    """Chunk extensions and the upstream's chunk sizes do not pass through; the body does."""

    async def handler(stream):
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;secret-ext=1\r\nabc\r\n"
                b"A\r\n0123456789\r\n"
                b"0\r\n\r\n"
            )

    up = await start_raw_server(nursery, handler)
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            r = await client.response()
            await client.send(get("/"))
            again = await client.response()
    assert (r.status, r.body) == (200, b"abc0123456789")
    assert r.headers.getall("transfer-encoding") == ["chunked"]
    assert b"secret-ext" not in r.raw_body
    assert again.body == b"abc0123456789"


async def test_large_chunked_response_byte_exact(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(10):
        r = await request(port, get("/chunked/300000"))
    assert r.headers.getall("transfer-encoding") == ["chunked"]
    assert r.body == pattern_bytes(300_000)


async def test_close_delimited_response_rechunked_for_http11(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/close-delimited/100000"))
            r = await client.response()
            await client.send(get("/echo/again"))  # the client connection lives on
            assert echoed(await client.response())["target"] == "/echo/again"
    assert r.headers.getall("transfer-encoding") == ["chunked"]
    assert r.body == pattern_bytes(100_000)
    assert upstream.connections == 2  # the close-delimited one could not be reused


async def test_close_delimited_response_for_http10_client(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(b"GET /close-delimited/50000 HTTP/1.0\r\nHost: x\r\n\r\n")
            r = await client.response()
    assert "transfer-encoding" not in r.headers
    assert "content-length" not in r.headers
    assert r.body == pattern_bytes(50_000)
    assert client.eof and not client.reset


async def test_chunked_upstream_to_http10_client_is_close_delimited(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(
                b"GET /chunked/70000 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
            )
            r = await client.response()
    assert "transfer-encoding" not in r.headers  # HTTP/1.0 knows no chunked
    assert r.body == pattern_bytes(70_000)
    assert client.eof


# --------------------------------------------------------------------------- upgrade


async def test_websocket_upgrade(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            r = await client.response()
            assert r.status == 101
            assert r.headers.get("upgrade", "").lower() == "websocket"
            assert r.headers.get("connection", "").lower() == "upgrade"
            for payload in (b"\x81\x05hello", os.urandom(100_000)):
                await client.send(payload)
                got = await client._exactly(len(payload))
                assert got == payload
    seen = upstream_headers(upstream.requests[0])
    assert seen.get("upgrade") == "websocket"
    assert seen.get("connection", "").lower() == "upgrade"
    assert seen.get("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="


# --------------------------------------------------------------------------- curl, nginx


async def test_redirect_with_curl_not_followed(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        [
            {
                "match": {"prefix": "/old/"},
                "redirect": {"prefix_rewrite": "/new/", "response_code": 308},
            }
        ],
    )
    code, out, err = await curl("-i", "-H", "Host: h.test", f"http://127.0.0.1:{port}/old/x?y=1")
    assert code == 0, err
    ((status, headers, body),) = split_curl_output(out)
    assert (status, headers.get("location"), body) == (308, "http://h.test/new/x?y=1", b"")
    assert upstream.requests == []


async def test_get_with_curl_keep_alive_two_urls(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    url = f"http://127.0.0.1:{port}"
    code, out, err = await curl("-v", f"{url}/bytes/1000", "-o", "/dev/null", f"{url}/echo")
    assert code == 0, err
    assert b"Re-using existing connection" in err or b"Reusing existing" in err, err
    assert upstream.connections == 1
    assert [q["target"] for q in upstream.requests] == ["/bytes/1000", "/echo"]
    assert b'"target": "/echo"' in out


def _nginx_conf(tmp: Path, port: int) -> str:
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "nginx says hi\\n"; }}
        location /echo-host {{ return 200 "$host $request_uri\\n"; }}
    }}
}}
"""


async def test_nginx_as_upstream(nursery, tmp_path):
    nginx = "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.skip("nginx is not installed (/usr/sbin/nginx)")
    nginx_port = free_port()
    (tmp_path / "nginx.conf").write_text(_nginx_conf(tmp_path, nginx_port))
    proc = await trio.lowlevel.open_process(
        [
            nginx,
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(10):
            while True:  # readiness: until nginx accepts connections
                if proc.poll() is not None:
                    pytest.fail(f"nginx exited with {proc.returncode}: {_read(tmp_path)}")
                try:
                    probe = await trio.open_tcp_stream("127.0.0.1", nginx_port)
                except OSError:
                    await trio.sleep(0.01)
                    continue
                await probe.aclose()
                break
        config = http_config(
            [
                to("nginx", "/n/", prefix_rewrite="/"),
                to("nginx", "/echo-host"),
            ],
            {"nginx": nginx_port},
        )
        _, port = await start_proxy(nursery, config)
        with trio.fail_after(10):
            async with await Client.connect(port) as client:
                await client.send(get("/n/anything", host="front.test"))
                hi = await client.response()
                await client.send(get("/echo-host/a?b=c", host="front.test:8080"))
                host = await client.response()
                await client.send(b"HEAD /n/x HTTP/1.1\r\nHost: front.test\r\n\r\n")
                head = await client.response(head=True)
        code, out, err = await curl(f"http://127.0.0.1:{port}/echo-host?curl=1")
    finally:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (hi.status, hi.body) == (200, b"nginx says hi\n")
    assert (hi.headers.get("server") or "").startswith("nginx")
    assert (host.status, host.body) == (200, b"front.test /echo-host/a?b=c\n")
    assert head.status == 200 and head.headers.get("content-length") == "14"
    assert code == 0, err
    assert out == b"127.0.0.1 /echo-host?curl=1\n"


def _read(tmp: Path) -> str:
    log = tmp / "error.log"
    return log.read_text() if log.exists() else ""


# --------------------------------------------------------------------------- more protocol rules


async def _scripted(nursery, responses: dict[bytes, bytes]) -> int:
    """A raw upstream answering each path with fixed bytes (keep-alive unless they close)."""

    async def handler(stream):
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            await stream.send_all(responses[req[0].split(b" ")[1]])

    return await start_raw_server(nursery, handler)


async def test_http10_keep_alive_client_keeps_its_connection(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            for i in range(3):
                await client.send(
                    b"GET /echo/%d HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n" % i
                )
                r = await client.response()
                assert echoed(r)["target"] == f"/echo/{i}"
                assert r.headers.get("connection", "").lower() != "close"
    assert upstream.connections == 1


async def test_upstream_http10_response_connection_not_reused(nursery):
    """An HTTP/1.0 response without keep-alive means the upstream will close: its connection
    goes back to no pool, even if the upstream is slow to close it."""
    up = await _scripted(nursery, {b"/": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"})
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            for _ in range(2):
                await client.send(get("/"))
                r = await client.response()
                assert (r.status, r.version, r.body) == (200, "HTTP/1.1", b"ok")
    assert server.clusters.get("up").stats.upstream_cx_total == 2


async def test_response_trailers_forwarded(nursery):
    up = await _scripted(
        nursery,
        {
            b"/": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Sum: abc\r\n\r\n"
        },
    )
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        r = await request(port, get("/"))
    assert (r.status, r.body) == (200, b"ok")
    assert r.trailers == [("x-sum", "abc")]
    assert r.headers.get("trailer") == "X-Sum"


async def test_informational_103_forwarded_before_the_final_response(nursery):
    up = await _scripted(
        nursery,
        {
            b"/": b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        },
    )
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            early = await client.response(interim=True)
            final = await client.response()
    assert (early.status, early.headers.get("link")) == (103, "</s.css>; rel=preload")
    assert (final.status, final.body) == (200, b"ok")


async def test_refused_upgrade_answers_and_closes(nursery, upstream):
    """The upstream answers an Upgrade request with a plain 200: the client may already be
    sending bytes of the other protocol, so the connection ends after that response."""
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(
                b"GET /echo HTTP/1.1\r\nHost: x\r\n"
                b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            r = await client.response()
            assert await client.closed()
    assert echoed(r)["target"] == "/echo"
    assert r.headers.get("connection", "").lower() == "close"


def _absolute_form_config(upstream):
    return http_config(
        clusters={"up": upstream.port},
        router_extra={
            "virtual_hosts": [
                {
                    "name": "target",
                    "domains": ["target.test"],
                    "request_headers_to_add": [{"header": {"key": "x-vhost", "value": "target"}}],
                    "routers": [to("up")],
                },
                {"name": "other", "domains": ["*"], "routers": [to("up")]},
            ]
        },
    )


async def test_absolute_form_target_routes_by_its_authority(nursery, upstream):
    _, port = await start_proxy(nursery, _absolute_form_config(upstream))
    with trio.fail_after(5):
        r = await request(
            port, b"GET http://target.test/echo?x=1 HTTP/1.1\r\nHost: header.test\r\n\r\n"
        )
    seen = echoed(r)
    assert seen["target"] == "/echo?x=1"  # origin-form upstream
    assert seen["headers"].get("x-vhost") == "target"


async def test_absolute_form_target_sets_the_upstream_host(nursery, upstream):
    _, port = await start_proxy(nursery, _absolute_form_config(upstream))
    with trio.fail_after(5):
        r = await request(
            port, b"GET http://target.test/echo?x=1 HTTP/1.1\r\nHost: header.test\r\n\r\n"
        )
    assert echoed(r)["headers"].getall("host") == ["target.test"]


async def test_forwarding_headers_can_be_turned_off(nursery, upstream):
    port = await proxy_to(
        nursery,
        upstream,
        proxy={
            "add_x_forwarded_for": False,
            "add_x_forwarded_proto": False,
            "generate_request_id": False,
        },
    )
    with trio.fail_after(5):
        plain = echoed(await request(port, get("/")))["headers"]
        passed = echoed(
            await request(
                port, get("/", headers="X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n")
            )
        )["headers"]
    assert not {"x-forwarded-for", "x-forwarded-proto", "x-request-id"} & plain.names()
    assert passed.getall("x-forwarded-for") == ["1.2.3.4"]  # as the client sent them
    assert passed.getall("x-forwarded-proto") == ["https"]


async def test_x_forwarded_for_joins_several_client_values(nursery, upstream):
    port = await proxy_to(nursery, upstream)
    with trio.fail_after(5):
        seen = echoed(
            await request(
                port, get("/", headers="X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n")
            )
        )["headers"]
    assert seen.getall("x-forwarded-for") == ["1.1.1.1, 2.2.2.2, 127.0.0.1"]


async def test_expect_100_continue_on_a_local_reply_gets_the_final_answer(nursery, upstream):
    """No 100 for a request the proxy answers itself: the final response comes at once, and
    as the body was never read the connection closes."""
    port = await proxy_to(
        nursery,
        upstream,
        [{"match": {"prefix": "/"}, "direct_response": {"status": 403, "body": "no\n"}}],
    )
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(
                b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 5000\r\n\r\n"
            )
            r = await client.response(interim=True)
            assert await client.closed()
    assert (r.status, r.body) == (403, b"no\n")
    assert r.headers.get("connection", "").lower() == "close"
