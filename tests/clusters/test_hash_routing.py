"""Route hash_policy end to end: a real proxy, three real upstreams, raw-socket clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.http_helpers import (
    Client,
    curl,
    get,
    http_config,
    request,
    start_proxy,
    start_upstream,
    to,
)
from tests.rpc_helpers import ANY_SERVICE, BoltClient, echo_upstream
from tests.rpc_helpers import request as bolt_request
from tests.upstream import Upstream

HASHING = ["LB_MAGLEV", "LB_RING_HASH"]


async def setup(
    nursery: trio.Nursery,
    lb_type: str,
    hash_policy: list[dict[str, Any]],
    proxy: dict[str, Any] | None = None,
) -> tuple[int, list[Upstream]]:
    ups = [await start_upstream(nursery) for _ in range(3)]
    config = http_config(
        [to(hash_policy=hash_policy)],
        {"up": {"lb_type": lb_type, "hosts": [{"address": f"127.0.0.1:{u.port}"} for u in ups]}},
        proxy=proxy,
    )
    _, port = await start_proxy(nursery, config)
    return port, ups


def served(ups: list[Upstream]) -> list[int]:
    return [len(u.requests) for u in ups]


@pytest.mark.parametrize("lb_type", HASHING)
async def test_header_hash_sticks_to_one_upstream(nursery: trio.Nursery, lb_type: str) -> None:
    port, ups = await setup(nursery, lb_type, [{"header": {"key": "x-user"}}])
    async with await Client.connect(port) as client:
        for _ in range(50):
            await client.send(get(headers="X-User: alice\r\n"))
            assert (await client.response()).status == 200
    counts = served(ups)
    assert sorted(counts) == [0, 0, 50], counts
    # other keys spread over the upstreams, each of them sticky too
    before = served(ups)
    for user in range(30):
        for _ in range(2):
            response = await request(port, get(headers=f"X-User: u{user}\r\n"))
            assert response.status == 200
    grown = [a - b for a, b in zip(served(ups), before, strict=True)]
    assert sum(grown) == 60 and sum(1 for g in grown if g) >= 2, grown
    assert all(g % 2 == 0 for g in grown), grown  # both requests of a user went together


async def test_without_a_key_a_hashing_cluster_spreads(nursery: trio.Nursery) -> None:
    port, ups = await setup(nursery, "LB_MAGLEV", [{"header": {"key": "x-user"}}])
    for _ in range(60):
        assert (await request(port, get())).status == 200
    assert all(n > 0 for n in served(ups)), served(ups)


async def test_cookie_generated_then_honoured(nursery: trio.Nursery) -> None:
    policy = [{"cookie": {"name": "sticky", "path": "/", "ttl": "60s"}}]
    port, ups = await setup(nursery, "LB_RING_HASH", policy)
    first = await request(port, get())
    assert first.status == 200
    (set_cookie,) = first.headers.getall("set-cookie")
    pair, *attrs = set_cookie.split("; ")
    name, value = pair.split("=", 1)
    assert name == "sticky" and len(value) == 16
    assert attrs == ["Max-Age=60", "Path=/", "HttpOnly"]
    async with await Client.connect(port) as client:
        for _ in range(20):
            await client.send(get(headers=f"Cookie: a=b; sticky={value}\r\n"))
            response = await client.response()
            assert response.status == 200 and "set-cookie" not in response.headers
    assert sorted(served(ups)) == [0, 0, 21], served(ups)
    # each client without the cookie gets its own
    second = await request(port, get())
    assert second.headers.get("set-cookie").split(";")[0] != pair


async def test_source_ip_hash_ignores_the_client_port(nursery: trio.Nursery) -> None:
    port, ups = await setup(nursery, "LB_MAGLEV", [{"source_ip": {}}])
    for _ in range(50):  # a new connection each time: a new client port
        assert (await request(port, get())).status == 200
    assert sorted(served(ups)) == [0, 0, 50], served(ups)


async def test_hash_policy_on_a_non_hashing_cluster_is_not_evaluated(
    nursery: trio.Nursery,
) -> None:
    policy = [{"cookie": {"name": "sticky", "ttl": "60s"}}]
    port, ups = await setup(nursery, "LB_ROUNDROBIN", policy)
    for _ in range(30):
        response = await request(port, get())
        assert response.status == 200 and "set-cookie" not in response.headers
    assert served(ups) == [10, 10, 10]


async def test_hostile_cookie_headers_get_answers(nursery: trio.Nursery) -> None:
    """Malformed, repeated and oversized cookies hash or fall back to random; the response
    never carries the client's bytes in a Set-Cookie."""
    policy = [{"cookie": {"name": "sticky", "ttl": "0s"}}]
    port, ups = await setup(nursery, "LB_MAGLEV", policy)
    hostile = [
        "Cookie: sticky\r\n",
        "Cookie: ;;;;=;sticky=;\r\n",
        'Cookie: sticky="\r\n',
        "Cookie: " + "a=b; " * 1000 + "sticky=x\r\n",
        "Cookie: sticky=\xff\xfe\r\n",
    ]
    for line in hostile:
        response = await request(port, get(headers=line))
        assert response.status == 200, (line, response)
        for value in response.headers.getall("set-cookie"):
            assert value.startswith("sticky=") and "Max-Age" not in value
            assert len(value.split(";")[0]) == len("sticky=") + 16
    assert sum(served(ups)) == len(hostile)


async def test_rpc_route_hashes_on_a_frame_header(nursery: trio.Nursery) -> None:
    """Bolt: ``service`` picks the upstream, so one service's calls share one provider."""
    seen: list[list[Any]] = [[], [], []]
    ports = [await echo_upstream(nursery, seen=s) for s in seen]
    route = {
        **ANY_SERVICE[0],
        "route": {"cluster_name": "up", "hash_policy": [{"header": {"key": "service"}}]},
    }
    config = http_config(
        [route],
        {"up": {"lb_type": "LB_MAGLEV", "hosts": [{"address": f"127.0.0.1:{p}"} for p in ports]}},
        proxy={"downstream_protocol": "bolt"},
    )
    _, port = await start_proxy(nursery, config)
    client = await BoltClient.connect(port)
    rid = 0
    for _ in range(20):
        rid += 1
        await client.send(bolt_request(rid, b"x", service="com.example.A:1.0"))
        assert (await client.read()).content == b"echo:x"
    counts = [len(s) for s in seen]
    assert sorted(counts) == [0, 0, 20], counts
    for n in range(30):
        rid += 1
        await client.send(bolt_request(rid, b"y", service=f"com.example.S{n}:1.0"))
        assert (await client.read()).content == b"echo:y"
    assert sum(1 for s in seen if s) >= 2, [len(s) for s in seen]
    await client.stream.aclose()


async def test_curl_over_h2_keeps_the_cookie_and_its_upstream(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """HTTP/2 (curl, prior knowledge) with curl's cookie engine: the first response sets the
    cookie, curl sends it back, every request lands on the same upstream."""
    policy = [{"cookie": {"name": "sticky", "path": "/", "ttl": "60s"}}]
    port, ups = await setup(
        nursery, "LB_MAGLEV", policy, {"downstream_protocol": "Auto", "upstream_protocol": "Http1"}
    )
    jar = tmp_path / "jar"
    url = f"http://127.0.0.1:{port}/echo"
    heads = []
    # one curl per request (a new connection each), sharing the cookie jar
    for _ in range(10):
        code, out, err = await curl(
            "-i", "--http2-prior-knowledge", "-c", str(jar), "-b", str(jar), url
        )
        assert code == 0, err
        heads.append(out.partition(b"\r\n\r\n")[0].lower())
    assert heads[0].startswith(b"http/2 200") and b"set-cookie: sticky=" in heads[0]
    assert all(b"set-cookie" not in h for h in heads[1:])
    assert sorted(served(ups)) == [0, 0, 10], served(ups)
