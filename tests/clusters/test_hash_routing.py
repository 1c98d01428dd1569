"""Route hash_policy end to end: a real proxy, three real upstreams, raw-socket clients."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.http_helpers import Client, get, http_config, request, start_proxy, start_upstream, to
from tests.upstream import Upstream

HASHING = ["LB_MAGLEV", "LB_RING_HASH"]


async def setup(
    nursery: trio.Nursery, lb_type: str, hash_policy: list[dict[str, Any]]
) -> tuple[int, list[Upstream]]:
    ups = [await start_upstream(nursery) for _ in range(3)]
    config = http_config(
        [to(hash_policy=hash_policy)],
        {"up": {"lb_type": lb_type, "hosts": [{"address": f"127.0.0.1:{u.port}"} for u in ups]}},
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
