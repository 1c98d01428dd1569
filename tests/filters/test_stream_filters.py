"""The stream filter mechanism over HTTP/1: order, local replies, failures, per-route config,
body rewriting, config errors, and a third-party package found through its entry points."""

from __future__ import annotations

import logging

import pytest
from trio_mesh_demo_filters import ByteCount

from tests import filter_helpers  # noqa: F401 - registers the t_* filters
from tests.http_helpers import (
    Client,
    Closed,
    echoed,
    get,
    http_config,
    request,
    running_proxy,
    start_upstream,
    to,
)
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.filters.stream import Headers, LocalReply, StreamFilter, hook_mask


def tags(*values: str) -> list[dict]:
    return [{"type": "t_tag", "config": {"value": v}} for v in values]


async def test_request_order_is_config_order_and_response_order_is_reverse(nursery):
    up = await start_upstream(nursery)
    config = http_config([to()], {"up": up.port}, listener={"stream_filters": tags("a", "b", "c")})
    async with running_proxy(config) as (_, port):
        response = await request(port, get("/echo"))
    assert echoed(response)["headers"].get("x-tag") == "a,b,c"
    assert response.headers.get("x-tag") == "c,b,a"


async def test_local_reply_answers_without_the_upstream(nursery):
    up = await start_upstream(nursery)
    listener = {"stream_filters": [{"type": "t_deny", "config": {"header": "x-deny"}}]}
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/echo", headers="x-deny: 1\r\n"))
            denied = await client.response()
            # the connection goes on after a local reply to a body-less request
            await client.send(get("/echo"))
            passed = await client.response()
    assert (denied.status, denied.body) == (418, b"denied by t_deny\n")
    assert denied.headers.get("x-denied") == "1"
    assert passed.status == 200
    assert len(up.requests) == 1


async def test_filters_run_before_the_router_answers(nursery):
    """Envoy's order: a filter refuses a request even when no route would take it."""
    listener = {"stream_filters": [{"type": "t_deny", "config": {}}]}
    config = http_config([to(prefix="/only")], {"up": 1}, listener=listener)
    async with running_proxy(config) as (_, port):
        response = await request(port, get("/elsewhere"))
    assert response.status == 418


async def test_no_route_still_404_after_filters_pass(nursery):
    config = http_config([to(prefix="/only")], {"up": 1}, listener={"stream_filters": tags("a")})
    async with running_proxy(config) as (_, port):
        response = await request(port, get("/elsewhere"))
    assert response.status == 404


@pytest.mark.parametrize("where", ["request_headers", "response_headers"])
async def test_a_raising_filter_fails_only_its_request(nursery, caplog, where):
    up = await start_upstream(nursery)
    listener = {"stream_filters": [{"type": "t_boom", "config": {"where": where}}]}
    routes = [
        {**to(prefix="/boom"), "per_filter_config": {}},
        {**to(prefix="/"), "per_filter_config": {"t_boom": {"disabled": True}}},
    ]
    config = http_config(routes, {"up": up.port}, listener=listener)
    with caplog.at_level(logging.ERROR, logger="trio_mesh.filters"):
        async with running_proxy(config) as (_, port):
            async with await Client.connect(port) as client:
                await client.send(get("/boom"))
                failed = await client.response()
            ok = await request(port, get("/echo"))
    assert failed.status == 500
    assert ok.status == 200
    assert any("'t_boom'" in r.getMessage() and where in r.getMessage() for r in caplog.records)


async def test_a_filter_failing_mid_response_cuts_it(nursery):
    up = await start_upstream(nursery)
    listener = {"stream_filters": [{"type": "t_boom", "config": {"where": "response_data"}}]}
    routes = [to(prefix="/bytes"), {**to(), "per_filter_config": {"t_boom": {"disabled": True}}}]
    config = http_config(routes, {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/bytes/1000"))
            with pytest.raises(Closed):  # reset: the head went, the body cannot
                await client.response()
        # the proxy goes on
        assert (await request(port, get("/status/204"))).status == 204


async def test_hop_by_hop_fields_a_request_headers_hook_adds_never_go_upstream(nursery):
    up = await start_upstream(nursery)
    added = [{"key": k, "value": "1"} for k in ("proxy-x", "keep-alive", "x-kept")]
    listener = {
        "stream_filters": [{"type": "header_mutation", "config": {"request": {"add": added}}}]
    }
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        headers = echoed(await request(port, get("/echo")))["headers"]
    assert headers.get("x-kept") == "1"
    assert headers.get("proxy-x") is None and headers.get("keep-alive") is None


async def test_per_route_config_replaces_the_listeners(nursery):
    up = await start_upstream(nursery)
    routes = [
        {**to(prefix="/special"), "per_filter_config": {"t_tag": {"value": "route"}}},
        {**to(prefix="/off"), "per_filter_config": {"t_tag": {"disabled": True}}},
        to(prefix="/"),
    ]
    config = http_config(routes, {"up": up.port}, listener={"stream_filters": tags("listener")})
    async with running_proxy(config) as (_, port):
        special = echoed(await request(port, get("/special/echo")))
        off = echoed(await request(port, get("/off/echo")))
        plain = echoed(await request(port, get("/echo")))
    assert special["headers"].get("x-tag") == "route"
    assert off["headers"].get("x-tag") is None
    assert plain["headers"].get("x-tag") == "listener"


@pytest.mark.parametrize("body", ["length", "chunked"])
async def test_bodies_rewritten_both_ways(nursery, body):
    up = await start_upstream(nursery)
    listener = {"stream_filters": [{"type": "t_upper"}]}
    config = http_config([to()], {"up": up.port}, listener=listener)
    if body == "length":
        raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    else:
        raw = (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
        )
    async with running_proxy(config) as (_, port):
        response = await request(port, raw)
    assert response.status == 200
    # the upstream got the upper-cased body (its length and hash), chunked since the
    # filter took the length off; the response is upper-cased with the last piece's "!"
    assert up.requests[0]["body_length"] == 5
    assert b'"BODY_LENGTH": 5' in response.body
    assert response.body.endswith(b"!")
    assert response.headers.get("transfer-encoding") == "chunked"


async def test_filters_see_route_cluster_and_addresses(nursery):
    seen: list = []

    class Spy(StreamFilter):
        async def on_request_headers(self, headers, end_stream):
            c = self.context
            seen.append(
                (
                    c.protocol,
                    c.method,
                    c.path,
                    c.cluster,
                    c.route.name,
                    c.downstream_remote[0],
                    c.listener,
                    end_stream,
                )
            )

        async def on_response_headers(self, headers, end_stream):
            seen.append((headers.status, self.context.upstream_host))

    from trio_mesh.filters.stream import register_stream_filter

    register_stream_filter("t_spy", Spy, None)
    up = await start_upstream(nursery)
    config = http_config(
        [{**to(), "name": "r0"}], {"up": up.port}, listener={"stream_filters": [{"type": "t_spy"}]}
    )
    async with running_proxy(config) as (_, port):
        await request(port, get("/echo?q=1"))
    assert seen[0] == ("HTTP/1.1", "GET", "/echo?q=1", "up", "r0", "127.0.0.1", "ingress", True)
    assert seen[1] == (200, f"127.0.0.1:{up.port}")


# --------------------------------------------------------------------------- config


def _doc_with(stream_filters, routes=None):
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
                        ],
                        "stream_filters": stream_filters,
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "v",
                                "domains": ["*"],
                                "routers": routes
                                or [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                            }
                        ],
                    }
                ],
            }
        ],
    }


def test_unknown_stream_filter_type_names_path_and_known_ones():
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc_with([{"type": "nope"}]))
    message = str(exc.value)
    assert "servers[0].listeners[0].stream_filters[0].type" in message
    assert "unknown stream filter type 'nope'" in message
    for known in ("fault", "gzip", "demo_stamp"):
        assert known in message


def test_unknown_per_filter_config_type_names_its_path():
    routes = [
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200},
            "per_filter_config": {"nope": {}},
        }
    ]
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc_with([], routes))
    assert "routers[0].virtual_hosts[0].routers[0].per_filter_config.nope" in str(exc.value)


def test_bad_per_filter_config_value_names_its_path():
    routes = [
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200},
            "per_filter_config": {"t_tag": {"value": 3, "bogus": 1}},
        }
    ]
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc_with(tags("a"), routes))
    assert "per_filter_config.t_tag.bogus: unknown key" in str(exc.value)


def test_stream_filters_need_the_proxy_filter():
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "filter_chains": [{"filters": [{"type": "echo"}]}],
                        "stream_filters": tags("a"),
                    }
                ]
            }
        ]
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert "servers[0].listeners[0].stream_filters: stream filters run in the proxy" in str(
        exc.value
    )


# --------------------------------------------------------------------------- API units


def test_headers_view_edits_the_list_in_place():
    raw = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    h = Headers(raw)
    assert h.get("A") == "1" and h.get_all("a") == ["1", "3"] and "B" in h
    h.set("a", "x")
    assert raw == [(b"a", b"x"), (b"b", b"2")]
    h.add("C", "y")
    assert raw[-1] == (b"c", b"y")
    assert h.remove("b") == 1 and h.remove("b") == 0
    assert list(h) == [("a", "x"), ("c", "y")] and h.changed


def test_only_overridden_hooks_are_called():
    class OnlyResponse(StreamFilter):
        async def on_response_data(self, data, last):
            return data

    assert hook_mask(OnlyResponse) == 16
    assert hook_mask(StreamFilter) == 0


def test_local_reply_headers_are_lowercased_bytes():
    reply = LocalReply(429, "slow down", headers=[("Retry-After", "1")])
    assert reply.body == b"slow down" and reply.http_headers() == [(b"retry-after", b"1")]


# --------------------------------------------------------------------------- third party


async def test_third_party_stream_filter_from_its_entry_point(nursery):
    up = await start_upstream(nursery)
    listener = {"stream_filters": [{"type": "demo_stamp", "config": {"value": "v1"}}]}
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        stamped = await request(port, get("/echo"))
        refused = await request(port, get("/echo", headers="x-demo-refuse: 1\r\n"))
    assert echoed(stamped)["headers"].get("x-demo-stamp") == "v1"
    assert stamped.headers.get("x-demo-stamp") == "v1; via HTTP/1.1"
    assert refused.status == 451


def test_third_party_filter_config_is_validated():
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc_with([{"type": "demo_stamp", "config": {"colour": "red"}}]))
    assert "stream_filters[0].config.colour: unknown key" in str(exc.value)


async def test_third_party_network_filter_sees_every_byte(nursery):
    up = await start_upstream(nursery)
    config = http_config([to()], {"up": up.port})
    doc_chain = config.servers[0].listeners[0].filter_chains[0]
    import attrs

    from trio_mesh.config.model import NetworkFilterConfig

    chain = attrs.evolve(
        doc_chain, filters=(NetworkFilterConfig(type="demo_byte_count"), *doc_chain.filters)
    )
    listener = attrs.evolve(config.servers[0].listeners[0], filter_chains=(chain,))
    config = attrs.evolve(config, servers=(attrs.evolve(config.servers[0], listeners=(listener,)),))
    ByteCount.instances.clear()
    raw = get("/bytes/1000")
    async with running_proxy(config) as (_, port):
        response = await request(port, raw)
    assert response.status == 200 and len(response.body) == 1000
    (counter,) = ByteCount.instances
    assert counter.totals["connections"] == 1
    assert counter.totals["read"] == len(raw)
    assert counter.totals["written"] == len(response.raw_head) + len(response.raw_body)


def test_network_filter_from_entry_point_loads_in_a_file():
    doc = _doc_with([])
    doc["servers"][0]["listeners"][0]["filter_chains"][0]["filters"].insert(
        0, {"type": "demo_byte_count"}
    )
    loaded = parse_config(doc)
    assert loaded.config.listeners[0].filter_chains[0].filters[0].type == "demo_byte_count"
