"""The ``header_mutation`` stream filter: config validation with paths (unknown variables
among them), the compiled plan, and request and response headers changed through the real
proxy (HTTP/1 with a raw client and the h11 upstream; HTTP/2 with curl; bolt with anthunder)."""

from __future__ import annotations

import importlib.util
import json
import socket
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import trio

from tests import bolt_frames as frames
from tests.grpc_helpers import EchoStub, grpc_upstream, in_thread
from tests.h2_upstream import start_h2_upstream
from tests.http_helpers import (
    Client,
    curl,
    echoed,
    get,
    http_config,
    request,
    running_proxy,
    split_curl_output,
    start_proxy,
    start_upstream,
    to,
)
from tests.rpc_helpers import BoltClient, echo_upstream
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.filters.header_mutation import HeaderMutation, start_time
from trio_mesh.filters.stream import (
    REQUEST_HEADERS,
    RESPONSE_HEADERS,
    Headers,
    RequestContext,
    as_maker,
    hook_mask,
)
from trio_mesh.protocols.xprotocol.bolt import BOLT

__all__ = ["grpc_upstream"]  # the fixture, imported for the tests below


def mutating(config: dict[str, Any]) -> dict[str, Any]:
    """Listener keys with one ``header_mutation`` filter."""
    return {"stream_filters": [{"type": "header_mutation", "config": config}]}


def entry(key: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "value": value, **extra}


# --------------------------------------------------------------------------- config


def _doc(config: Any, routes: list | None = None) -> dict:
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
                        "stream_filters": [{"type": "header_mutation", "config": config}],
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


def errors(config: Any, routes: list | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(_doc(config, routes))
    return info.value.errors


C = "servers[0].listeners[0].stream_filters[0].config"
REQUEST_KNOWN = (
    "DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_REMOTE_PORT,"
    " DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, DOWNSTREAM_LOCAL_PORT,"
    " PROTOCOL, METHOD, PATH, AUTHORITY, ROUTE_NAME, UPSTREAM_CLUSTER, LISTENER_NAME,"
    " START_TIME, HOSTNAME"
)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            {"request": {"add": [entry("x-a", "1"), entry("x-b", "id-%FOO%")]}},
            f"{C}.request.add[1].value: unknown variable %FOO% (known: {REQUEST_KNOWN},"
            " REQ(name); %% for a %)",
            id="unknown-variable",
        ),
        pytest.param(
            {"response": {"set": [entry("x-b", "%BAR%")]}},
            f"{C}.response.set[0].value: unknown variable %BAR% (known: {REQUEST_KNOWN},"
            " UPSTREAM_HOST, REQ(name), RESP(name); %% for a %)",
            id="unknown-variable-on-responses",
        ),
        pytest.param(
            {"request": {"set": [entry("x-up", "%UPSTREAM_HOST%")]}},
            f"{C}.request.set[0].value: %UPSTREAM_HOST% is known on responses only (no host"
            " is chosen yet)",
            id="upstream-host-on-requests",
        ),
        pytest.param(
            {"request": {"add": [entry("x-r", "%RESP(server)%")]}},
            f"{C}.request.add[0].value: %RESP(server)% is known on responses only",
            id="resp-on-requests",
        ),
        pytest.param(
            {"request": {"add": [entry("x-r", "%REQ(a@b)%")]}},
            f"{C}.request.add[0].value: %REQ(a@b)%: expected header names, as in %REQ(x-name)%",
            id="req-bad-name",
        ),
        pytest.param(
            {"request": {"add": [entry("x-r", "%req(x-a)%")]}},
            f"{C}.request.add[0].value: unknown variable %req(x-a)% (known: {REQUEST_KNOWN},"
            " REQ(name); %% for a %)",
            id="names-are-upper-case",
        ),
        pytest.param(
            {"request": {"add": [entry("host", "evil")]}},
            f"{C}.request.add[0].key: header 'host' may not be added or removed (use"
            " host_rewrite for the host)",
            id="host",
        ),
        pytest.param(
            {"request": {"remove": ["x-ok", ":path"]}},
            f"{C}.request.remove[1]: header ':path' may not be added or removed (use"
            " host_rewrite for the host)",
            id="pseudo-header-removed",
        ),
        pytest.param(
            {"response": {"add": [entry("x-a", "a\r\nb")]}},
            f"{C}.response.add[0].value: header value may not contain CR, LF or NUL, got"
            " 'a\\r\\nb'",
            id="crlf",
        ),
        pytest.param(
            {"request": {"add": [entry("bad name", "1")]}},
            f"{C}.request.add[0].key: invalid header name 'bad name'",
            id="bad-key",
        ),
        pytest.param(
            {"request": {"append": [entry("x", "1")]}},
            f"{C}.request.append: unknown key (known keys: add, remove, set)",
            id="unknown-op",
        ),
        pytest.param(
            {"request_headers_to_add": [{"header": entry("x-a", "%NOPE%")}]},
            f"{C}.request_headers_to_add[0].header.value: unknown variable %NOPE% (known:"
            f" {REQUEST_KNOWN}, REQ(name); %% for a %)",
            id="mosn-keys-checked-too",
        ),
    ],
)
def test_config_errors_name_their_path(config: dict, expected: str) -> None:
    assert errors(config) == [expected]


def test_per_route_config_errors_name_their_path() -> None:
    routes = [
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200},
            "per_filter_config": {
                "header_mutation": {"response": {"add": [entry("x", "%UPSTREAM_HOSTS%")]}}
            },
        }
    ]
    (line,) = errors({}, routes)
    assert line.startswith(
        "servers[0].routers[0].virtual_hosts[0].routers[0].per_filter_config.header_mutation"
        ".response.add[0].value: unknown variable %UPSTREAM_HOSTS%"
    )


def test_percent_signs_that_are_not_variables_stay() -> None:
    config = parse_config(_doc({"request": {"add": [entry("x", "100% of %% and 50 % off")]}}))
    assert config.config.listeners[0].stream_filters[0].config.request.add[0].value


# --------------------------------------------------------------------------- the plan


def plan(config: dict) -> Any:
    cfg = parse_config(_doc(config)).config.listeners[0].stream_filters[0].config
    return as_maker(HeaderMutation.factory(cfg, None))


def ctx() -> RequestContext:
    return RequestContext(
        "HTTP/1.1",
        method="GET",
        path="/p?q=1",
        authority="a.test",
        cluster="up",
        downstream_remote=("10.0.0.7", 5555),
        downstream_local=("127.0.0.1", 80),
        listener="l",
    )


def test_static_values_share_one_filter_and_hook_only_their_side() -> None:
    request_only = plan({"request": {"set": [entry("x-a", "1")], "remove": ["x-b"]}})
    first, second = request_only(ctx()), request_only(ctx())
    assert first is second  # nothing per request: one object serves them all
    assert hook_mask(type(first)) == REQUEST_HEADERS
    response_only = plan({"response": {"add": [entry("x-a", "1")]}})
    assert hook_mask(type(response_only(ctx()))) == RESPONSE_HEADERS
    assert plan({})(ctx()) is None
    # a response value reading the request needs the request hook as well
    both = plan({"response": {"add": [entry("x-a", "%REQ(x-id)%")]}})
    f = both(ctx())
    assert hook_mask(type(f)) == REQUEST_HEADERS | RESPONSE_HEADERS
    assert both(ctx()) is not f


async def test_operations_order_and_empty_values() -> None:
    make = plan(
        {
            "request": {
                "remove": ["x-gone", "X-Also"],
                "set": [
                    entry("x-set", "new"),
                    entry("x-empty", "%REQ(x-none)%"),
                    entry("x-kept-empty", "%REQ(x-none)%", keep_empty_value=True),
                ],
                "add": [
                    entry("x-add", "%METHOD% %PATH% %AUTHORITY% %DOWNSTREAM_REMOTE_ADDRESS%"),
                    entry("X-Set", "second"),
                ],
            }
        }
    )
    raw = [
        (b"x-gone", b"1"),
        (b"x-set", b"old1"),
        (b"x-keep", b"k"),
        (b"x-set", b"old2"),
        (b"x-also", b"2"),
        (b"x-gone", b"3"),
        (b"x-empty", b"was here"),
    ]
    headers = Headers(raw)
    assert await make(ctx()).on_request_headers(headers, True) is None
    assert raw == [
        (b"x-set", b"new"),
        (b"x-keep", b"k"),
        (b"x-empty", b"was here"),
        (b"x-kept-empty", b""),
        (b"x-add", b"GET /p?q=1 a.test 10.0.0.7:5555"),
        (b"x-set", b"second"),
    ]
    assert headers.changed


async def test_nothing_to_change_leaves_the_block_unchanged() -> None:
    make = plan({"request": {"remove": ["x-absent"]}})
    headers = Headers([(b"x-a", b"1")])
    await make(ctx()).on_request_headers(headers, True)
    assert not headers.changed and headers.raw == [(b"x-a", b"1")]


def test_start_time_is_envoys_format() -> None:
    assert start_time(1767323045.5) == "2026-01-02T03:04:05.500Z"


# --------------------------------------------------------------------------- HTTP/1


async def test_http1_request_variables_reach_the_upstream(nursery) -> None:
    up = await start_upstream(nursery)
    names = (
        "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_REMOTE_PORT",
        "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_LOCAL_PORT",
        "PROTOCOL",
        "METHOD",
        "PATH",
        "AUTHORITY",
        "ROUTE_NAME",
        "UPSTREAM_CLUSTER",
        "LISTENER_NAME",
        "START_TIME",
        "HOSTNAME",
    )
    config = {
        "request": {
            "add": [
                *(entry(f"x-v-{n.lower()}", f"%{n}%") for n in names),
                entry("x-v-req", "<%REQ(x-in)%>"),
                entry("x-v-fallback", "%REQ(x-missing?x-in)%"),
                entry("x-v-host", "%REQ(host)%"),
                entry("x-v-literal", "100% %%METHOD%% %METHOD%"),
            ]
        }
    }
    routes = [{**to(), "name": "main"}]
    mesh = http_config(routes, {"up": up.port}, listener=mutating(config))
    async with running_proxy(mesh) as (_, port):
        async with await Client.connect(port) as client:
            client_port = client.stream.socket.getsockname()[1]
            before = time.time()
            await client.send(get("/echo?x=1", host="svc.test", headers="X-In: hello\r\n"))
            response = await client.response()
            after = time.time()
    got = echoed(response)["headers"]
    v = {n: got.get(f"x-v-{n.lower()}") for n in names}
    assert v["DOWNSTREAM_REMOTE_ADDRESS"] == f"127.0.0.1:{client_port}"
    assert v["DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"] == "127.0.0.1"
    assert v["DOWNSTREAM_REMOTE_PORT"] == str(client_port)
    assert v["DOWNSTREAM_LOCAL_ADDRESS"] == f"127.0.0.1:{port}"
    assert v["DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT"] == "127.0.0.1"
    assert v["DOWNSTREAM_LOCAL_PORT"] == str(port)
    assert v["PROTOCOL"] == "HTTP/1.1"
    assert (v["METHOD"], v["PATH"], v["AUTHORITY"]) == ("GET", "/echo?x=1", "svc.test")
    assert (v["ROUTE_NAME"], v["UPSTREAM_CLUSTER"], v["LISTENER_NAME"]) == ("main", "up", "ingress")
    assert v["HOSTNAME"] == socket.gethostname()
    started = datetime.strptime(v["START_TIME"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    assert before - 0.001 <= started <= after
    assert got.get("x-v-req") == "<hello>"
    assert got.get("x-v-fallback") == "hello"
    assert got.get("x-v-host") == "svc.test"
    assert got.get("x-v-literal") == "100% %METHOD% GET"


async def test_http1_add_set_remove_on_both_sides(nursery) -> None:
    up = await start_upstream(nursery)
    config = {
        "request": {
            "add": [entry("x-multi", "added")],
            "set": [entry("x-one", "only"), entry("x-absent-var", "%REQ(x-nothing)%")],
            "remove": ["x-secret", "x-drop"],
        },
        "response": {
            "add": [
                entry("x-upstream", "%UPSTREAM_HOST%"),
                entry("x-type", "was %RESP(content-type)%"),
                entry("x-secret-seen", "%REQ(x-secret)%"),
            ],
            "set": [entry("content-type", "text/plain")],
            "remove": ["x-unused", "content-type-2"],
        },
    }
    mesh = http_config([to()], {"up": up.port}, listener=mutating(config))
    raw = "X-Multi: kept\r\nX-One: a\r\nX-One: b\r\nX-Secret: s3\r\nX-Drop: 1\r\nX-Drop: 2\r\n"
    async with running_proxy(mesh) as (_, port):
        response = await request(port, get("/echo", headers=raw))
    got = echoed(response)["headers"]
    assert got.getall("x-multi") == ["kept", "added"]
    assert got.getall("x-one") == ["only"]
    assert "x-secret" not in got and "x-drop" not in got
    assert "x-absent-var" not in got  # rendered empty: not written
    assert response.headers.get("x-upstream") == f"127.0.0.1:{up.port}"
    assert response.headers.get("x-type") == "was application/json"
    assert response.headers.getall("content-type") == ["text/plain"]
    # the response side reads the request as it reached the filter, before its removals
    assert response.headers.get("x-secret-seen") == "s3"


async def test_http1_mosn_route_style_keys(nursery) -> None:
    up = await start_upstream(nursery)
    config = {
        "request_headers_to_add": [
            {"header": entry("x-appended", "v2"), "append": True},
            {"header": entry("x-replaced", "new"), "append": False},
        ],
        "request_headers_to_remove": ["x-removed"],
        "response_headers_to_add": [{"header": entry("x-via", "%PROTOCOL%")}],
    }
    mesh = http_config([to()], {"up": up.port}, listener=mutating(config))
    raw = "X-Appended: v1\r\nX-Replaced: old\r\nX-Removed: 1\r\n"
    async with running_proxy(mesh) as (_, port):
        response = await request(port, get("/echo", headers=raw))
    got = echoed(response)["headers"]
    assert got.getall("x-appended") == ["v1", "v2"]
    assert got.getall("x-replaced") == ["new"]
    assert "x-removed" not in got
    assert response.headers.get("x-via") == "HTTP/1.1"


async def test_http1_per_route_override_and_disable(nursery) -> None:
    up = await start_upstream(nursery)
    override = {"request": {"set": [entry("x-tag", "route %ROUTE_NAME%")]}}
    routes = [
        {**to(prefix="/off"), "per_filter_config": {"header_mutation": {"disabled": True}}},
        {
            **to(prefix="/special"),
            "name": "special",
            "per_filter_config": {"header_mutation": override},
        },
        to(prefix="/"),
    ]
    mesh = http_config(
        routes,
        {"up": up.port},
        listener=mutating({"request": {"set": [entry("x-tag", "listener")]}}),
    )
    async with running_proxy(mesh) as (_, port):
        off = echoed(await request(port, get("/off/echo")))
        special = echoed(await request(port, get("/special/echo")))
        plain = echoed(await request(port, get("/echo")))
    assert off["headers"].get("x-tag") is None
    assert special["headers"].get("x-tag") == "route special"
    assert plain["headers"].get("x-tag") == "listener"


async def test_http1_local_replies_get_no_response_mutation(nursery) -> None:
    """The filter's response side runs on upstream responses; the proxy's own 404 (no route)
    is not an upstream response."""
    mesh = http_config(
        [to(prefix="/only")],
        {"up": 1},
        listener=mutating({"response": {"set": [entry("x-seen", "yes")]}}),
    )
    async with running_proxy(mesh) as (_, port):
        response = await request(port, get("/elsewhere"))
    assert response.status == 404
    assert "x-seen" not in response.headers, response


# --------------------------------------------------------------------------- HTTP/2, gRPC

H2 = {"downstream_protocol": "Http2", "upstream_protocol": "Http2"}


async def test_http2_both_sides_with_variables(nursery) -> None:
    up = await start_h2_upstream(nursery)
    config = {
        "request": {
            "add": [
                entry("x-proto", "%PROTOCOL% %METHOD% %PATH%"),
                entry("x-authority", "%AUTHORITY%|%REQ(:authority)%|%REQ(host)%"),
            ],
            "set": [entry("x-one", "only")],
            "remove": ["x-secret"],
        },
        "response": {
            "set": [
                entry("x-upstream", "%UPSTREAM_HOST%"),
                entry("x-type", "%RESP(content-type)%"),
            ],
            "remove": ["content-type"],
        },
    }
    mesh = http_config([to()], {"up": up.port}, listener=mutating(config), proxy=H2)
    async with running_proxy(mesh) as (_, port):
        rc, out, err = await curl(
            "--noproxy",
            "*",
            "--http2-prior-knowledge",
            "-i",
            "-H",
            "x-one: a",
            "-H",
            "x-secret: s",
            f"http://127.0.0.1:{port}/echo?q=1",
        )
    assert rc == 0, err
    status, headers, body = split_curl_output(out)[-1]
    assert status == 200
    got = dict(json.loads(body)["headers"])
    assert got["x-proto"] == "HTTP/2 GET /echo?q=1"
    assert got["x-authority"] == f"127.0.0.1:{port}|127.0.0.1:{port}|127.0.0.1:{port}"
    assert got["x-one"] == "only" and "x-secret" not in got
    assert headers.get("x-upstream") == f"127.0.0.1:{up.port}"
    assert headers.get("x-type") == "application/json"
    assert "content-type" not in headers


async def test_grpc_metadata_both_ways(nursery, grpc_upstream) -> None:
    config = {
        "request": {
            "add": [
                entry("x-caller", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                entry("x-grpc-path", "%PATH%"),
            ]
        },
        "response": {"add": [entry("x-served-by", "%UPSTREAM_CLUSTER%")]},
    }
    mesh = http_config([to()], {"up": grpc_upstream.port}, listener=mutating(config), proxy=H2)
    async with running_proxy(mesh) as (_, port):
        with EchoStub.connect(port) as stub:
            response, call = await in_thread(stub.Unary.with_call, b"hi", timeout=5)
    assert response == b"hi"
    assert ("x-served-by", "up") in call.initial_metadata()
    (seen,) = grpc_upstream.calls_of("Unary")
    assert ("x-caller", "127.0.0.1") in seen.metadata
    assert ("x-grpc-path", "/test.Echo/Unary") in seen.metadata


# --------------------------------------------------------------------------- RPC (bolt)

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)


def bolt_mutating(up_port: int, config: dict, routes: list | None = None) -> Any:
    any_service = {
        "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
        "route": {"cluster_name": "up"},
        "name": "rpc",
    }
    return http_config(
        routes or [any_service],
        {"up": up_port},
        listener=mutating(config),
        proxy={"downstream_protocol": "bolt"},
    )


def anthunder_call(port: int, service: str, **headers: str) -> bytes:
    from anthunder import SERVICE_MAP, Client
    from mytracer import SpanContext

    SERVICE_MAP.setdefault(service, ("127.0.0.1", port))
    return Client("trio-mesh-test").invoke_sync(
        service, "sayHello", b"\n\x01x", spanctx=SpanContext(), timeout_ms=5000, **headers
    )


@needs_anthunder
async def test_bolt_request_header_map_changed_with_variables(nursery) -> None:
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    service = f"com.alipay.test.Mutation{uuid.uuid4().hex}:1.0"
    config = {
        "request": {
            "add": [
                entry("x-caller", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                entry("x-call", "%PROTOCOL% %PATH% %METHOD% via %ROUTE_NAME%"),
                entry("x-from-header", "[%REQ(x-in)%]"),
            ],
            "set": [entry("x-in", "replaced")],
            "remove": ["x-secret"],
        }
    }
    _, port = await start_proxy(nursery, bolt_mutating(up, config))
    answer = await trio.to_thread.run_sync(
        lambda: anthunder_call(port, service, **{"x-in": "original", "x-secret": "s"}),
        abandon_on_cancel=True,
    )
    assert answer == b"echo:\n\x01x"
    (got,) = seen
    headers = got.raw_headers
    assert headers["x-caller"] == "127.0.0.1"
    assert headers["x-call"] == f"bolt {service} sayHello via rpc"
    assert headers["x-from-header"] == "[original]"
    assert headers["x-in"] == "replaced"
    assert "x-secret" not in headers
    assert headers["sofa_head_target_service"] == service  # the rest of the map is intact


async def test_bolt_response_header_map_changed(nursery) -> None:
    up = await echo_upstream(nursery)
    config = {
        "response": {
            "add": [entry("x-upstream", "%UPSTREAM_HOST%"), entry("x-asked", "%REQ(x-ask)%")]
        }
    }
    _, port = await start_proxy(nursery, bolt_mutating(up, config))
    client = await BoltClient.connect(port)
    await client.send(
        BOLT.build_request(
            9,
            {"service": frames.SERVICE, "sofa_head_method_name": "echo", "x-ask": "why"},
            b"q",
            codec=11,
        )
    )
    with trio.fail_after(5):
        answer = await client.read()
    assert (answer.request_id, bytes(answer.content)) == (9, b"echo:q")
    assert answer.raw_headers["x-upstream"] == f"127.0.0.1:{up}"
    assert answer.raw_headers["x-asked"] == "why"
