"""The `flowcontrol` stream filter: the token bucket on an injected clock, config errors with
their paths, and the real proxy over HTTP/1 with a real upstream (buckets whose fill interval
is an hour, so no refill can happen while a test runs: nothing depends on wall-clock speed)."""

from __future__ import annotations

import importlib.util
import uuid
from typing import Any

import grpc
import pytest
import trio

from tests.grpc_helpers import EchoStub, GrpcEchoServer, grpc_upstream, in_thread
from tests.h2_upstream import open_h2_client, start_h2_upstream
from tests.http_helpers import (
    Client,
    curl,
    get,
    http_config,
    request,
    running_proxy,
    start_upstream,
    to,
)
from tests.rpc_helpers import BoltClient, echo_upstream
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.filters.flowcontrol import TokenBucket
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus

__all__ = ["grpc_upstream"]  # the fixture, imported for the tests below

HOUR = "1h"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bucket_filter(max_tokens: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "type": "flowcontrol",
            "config": {
                "max_tokens": max_tokens,
                "tokens_per_fill": max_tokens,
                "fill_interval": HOUR,
                **extra,
            },
        }
    ]


# --------------------------------------------------------------------------- the bucket


def test_bucket_starts_full_and_refills_in_whole_fills():
    clock = FakeClock()
    bucket = TokenBucket(3, 2, 10.0, clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 9.999
    assert not bucket.take()  # no fill before the interval
    clock.now += 0.001
    assert [bucket.take() for _ in range(3)] == [True, True, False]  # one fill: 2 tokens
    assert bucket.reset_after() == pytest.approx(10.0)


def test_bucket_never_holds_more_than_max_tokens():
    clock = FakeClock()
    bucket = TokenBucket(3, 2, 10.0, clock)
    assert bucket.take()
    clock.now += 1000.0  # a hundred fills while nobody looked
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    # the fills stay on their schedule from the bucket's creation
    assert bucket.reset_after() == pytest.approx(10.0)
    clock.now += 25.0
    assert bucket.reset_after() == pytest.approx(5.0)


# --------------------------------------------------------------------------- config


def _doc(config: Any, per_route: Any = None) -> dict[str, Any]:
    route: dict[str, Any] = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
    if per_route is not None:
        route["per_filter_config"] = {"flowcontrol": per_route}
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
                        "stream_filters": [{"type": "flowcontrol", "config": config}],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "v", "domains": ["*"], "routers": [route]}],
                    }
                ],
            }
        ]
    }


def errors(config: Any, per_route: Any = None) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc(config, per_route))
    return str(exc.value)


P = "servers[0].listeners[0].stream_filters[0].config"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_tokens": 5}, f"{P}.fill_interval: required with max_tokens"),
        ({"fill_interval": "1s"}, f"{P}.max_tokens: required with fill_interval"),
        ({"max_tokens": 0, "fill_interval": "1s"}, f"{P}.max_tokens: expected an integer of at"),
        ({"max_tokens": 5, "fill_interval": "0"}, f"{P}.fill_interval: expected a positive"),
        ({"max_tokens": 5, "fill_interval": "soon"}, f"{P}.fill_interval: expected a duration"),
        ({"max_tokens": 5, "fill_interval": "1s", "bogus": 1}, f"{P}.bogus: unknown key"),
        ({}, f"{P}: needs a token bucket"),
        (
            {"max_tokens": 5, "fill_interval": "1s", "rules": [{"resource": "/", "threshold": 1}]},
            f"{P}.rules: give either a token bucket",
        ),
        (
            {"max_tokens": 5, "fill_interval": "1s", "action": {"status": 42}},
            f"{P}.action.status: expected an HTTP status 200-599, got 42",
        ),
        ({"rules": [{"resource": "/a"}]}, f"{P}.rules[0].threshold: required field missing"),
        (
            {"rules": [{"resource": "/a", "threshold": 0}]},
            f"{P}.rules[0].threshold: expected at least 1",
        ),
        (
            {"rules": [{"resource": "/a", "threshold": 5, "grade": 0}]},
            f"{P}.rules[0].grade: expected 1 (QPS)",
        ),
        (
            {"rules": [{"resource": "/a", "threshold": 5, "controlBehavior": 1}]},
            f"{P}.rules[0].controlBehavior: expected 0 (reject)",
        ),
        (
            {"rules": [{"resource": "/a", "threshold": 5}, {"resource": "/a", "threshold": 2}]},
            f"{P}.rules[1].resource: duplicate resource '/a'",
        ),
        ({"rules": [], "limit_key_type": "HOST"}, f"{P}.limit_key_type: expected one of PATH"),
    ],
)
def test_config_errors_name_their_path(config, expected):
    assert expected in errors(config)


def test_per_route_config_errors_name_their_path():
    message = errors({"max_tokens": 5, "fill_interval": "1s"}, {"max_tokens": 5})
    assert (
        "servers[0].routers[0].virtual_hosts[0].routers[0].per_filter_config.flowcontrol"
        ".fill_interval: required with max_tokens" in message
    )


def test_mosn_sentinel_config_loads_with_warnings_for_what_is_not_implemented():
    """The shape of MOSN's examples/codes/flowcontrol-sample/server_config.json."""
    mosn = {
        "app_name": "sample",
        "log_path": "/tmp/sentinel",
        "global_switch": True,
        "monitor": False,
        "limit_key_type": "PATH",
        "action": {"status": 500, "body": "blocked"},
        "rules": [{"resource": "/test", "limitApp": "", "grade": 1, "threshold": 1, "strategy": 0}],
    }
    loaded = parse_config(_doc(mosn))
    config = loaded.config.listeners[0].stream_filters[0].config
    assert config.rules[0].resource == "/test" and config.action.status == 500
    for key in ("app_name", "log_path", "monitor", "rules[0].limitapp", "rules[0].strategy"):
        assert any(f"{P}.{key}: known MOSN key" in w for w in loaded.warnings), key


def test_switched_off_needs_no_limit():
    config = parse_config(_doc({"global_switch": False})).config
    assert config.listeners[0].stream_filters[0].config.global_switch is False


# --------------------------------------------------------------------------- HTTP/1


async def test_listener_bucket_is_shared_by_all_requests_and_refuses_with_429(nursery):
    up = await start_upstream(nursery)
    config = http_config([to()], {"up": up.port}, listener={"stream_filters": bucket_filter(3)})
    async with running_proxy(config) as (_, port):
        first = await request(port, get("/echo"))
        async with await Client.connect(port) as client:  # one connection, then another
            await client.send(get("/echo"))
            second = await client.response()
            await client.send(get("/echo"))
            third = await client.response()
            await client.send(get("/echo"))
            refused = await client.response()
            # a refusal is a complete response: the connection carries the next request
            await client.send(get("/echo"))
            again = await client.response()
        other = await request(port, get("/status/204"))
    assert [r.status for r in (first, second, third)] == [200, 200, 200]
    assert refused.status == again.status == other.status == 429
    assert refused.body == b"current request is limited"
    assert refused.headers.get("x-ratelimit-limit") == "3"
    assert refused.headers.get("x-ratelimit-remaining") == "0"
    assert 3500 <= int(refused.headers.get("x-ratelimit-reset")) <= 3600
    assert len(up.requests) == 3  # refused requests never reach the upstream


async def test_action_sets_status_and_body_and_headers_can_be_off(nursery):
    up = await start_upstream(nursery)
    listener = {
        "stream_filters": bucket_filter(
            1, action={"status": 503, "body": "later"}, ratelimit_headers=False
        )
    }
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        assert (await request(port, get("/echo"))).status == 200
        refused = await request(port, get("/echo"))
    assert (refused.status, refused.body) == (503, b"later")
    assert "x-ratelimit-limit" not in refused.headers


async def test_route_override_has_its_own_bucket_per_route(nursery):
    """FilterChainFactory builds one factory per overriding route, so two routes with the
    same override do not share a bucket, and neither touches the listener's."""
    up = await start_upstream(nursery)
    one = {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": HOUR}
    routes = [
        {**to(prefix="/a"), "per_filter_config": {"flowcontrol": one}},
        {**to(prefix="/c"), "per_filter_config": {"flowcontrol": one}},
        {**to(prefix="/free"), "per_filter_config": {"flowcontrol": {"disabled": True}}},
        to(prefix="/"),
    ]
    config = http_config(routes, {"up": up.port}, listener={"stream_filters": bucket_filter(2)})

    async def status(path: str) -> int:
        return (await request(port, get(path))).status

    async with running_proxy(config) as (_, port):
        got = {
            "a1": await status("/a/echo"),
            "c1": await status("/c/echo"),
            "a2": await status("/a/echo"),
            "c2": await status("/c/echo"),
            "b1": await status("/b/echo"),
            "b2": await status("/b/echo"),
            "b3": await status("/b/echo"),
            "free": [await status("/free/echo") for _ in range(5)],
        }
    assert got == {
        "a1": 200,
        "c1": 200,
        "a2": 429,
        "c2": 429,
        "b1": 200,
        "b2": 200,
        "b3": 429,
        "free": [200] * 5,
    }
    assert len(up.requests) == 2 + 2 + 5


async def test_mosn_rules_limit_their_resource_only(nursery):
    up = await start_upstream(nursery)
    rules = {
        "limit_key_type": "PATH",
        "action": {"status": 509, "body": "blocked"},
        "rules": [{"resource": "/echo/limited", "threshold": 2, "statIntervalInMs": 3_600_000}],
    }
    listener = {"stream_filters": [{"type": "flowcontrol", "config": rules}]}
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        limited = [(await request(port, get("/echo/limited?n=" + str(i)))).status for i in range(3)]
        refused = await request(port, get("/echo/limited"))
        others = [(await request(port, get("/echo/other"))).status for _ in range(4)]
    assert limited == [200, 200, 509]
    assert (refused.status, refused.body) == (509, b"blocked")
    assert others == [200] * 4


async def test_global_switch_off_limits_nothing(nursery):
    up = await start_upstream(nursery)
    listener = {"stream_filters": bucket_filter(1, global_switch=False)}
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        statuses = [(await request(port, get("/echo"))).status for _ in range(3)]
    assert statuses == [200] * 3


# --------------------------------------------------------------------------- HTTP/2, gRPC


def h2_config(up_port: int, filters: list[dict[str, Any]], up: str = "Http2") -> Any:
    return http_config(
        [to()],
        {"up": up_port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": up},
        listener={"stream_filters": filters},
    )


@pytest.mark.parametrize("up", ["Http2", "Http1"])
async def test_http2_streams_share_the_bucket_and_get_429(nursery, up):
    upstream = await (start_h2_upstream(nursery) if up == "Http2" else start_upstream(nursery))
    async with running_proxy(h2_config(upstream.port, bucket_filter(2), up)) as (_, port):
        with trio.fail_after(10):
            async with open_h2_client(port) as client:
                statuses = [(await client.request("GET", "/echo")).status for _ in range(2)]
                refused = await client.request("GET", "/echo")
                # a refused stream leaves the connection to the others
                again = await client.request("GET", "/echo")
    assert statuses == [200, 200]
    assert (refused.status, refused.body) == (429, b"current request is limited")
    assert refused.headers.get("x-ratelimit-remaining") == "0"
    assert again.status == 429
    assert len(upstream.requests) == 2


async def test_curl_http2_prior_knowledge_is_limited(nursery):
    upstream = await start_h2_upstream(nursery)
    async with running_proxy(h2_config(upstream.port, bucket_filter(1))) as (_, port):
        url = f"http://127.0.0.1:{port}/echo"
        codes = []
        for _ in range(2):
            code, out, err = await curl(
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                url,
            )
            assert code == 0, err
            codes.append(out)
    assert codes == [b"200 2", b"429 2"]


def _rpc_error(fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{fn} succeeded")


async def test_grpc_call_over_the_limit_gets_resource_exhausted(
    nursery, grpc_upstream: GrpcEchoServer
):
    config = h2_config(grpc_upstream.port, bucket_filter(2, action={"body": "slow down"}))
    async with running_proxy(config) as (_, port):
        with EchoStub.connect(port) as stub:
            answers = [await in_thread(stub.Unary, b"x%d" % i, timeout=5) for i in range(2)]
            error = await in_thread(_rpc_error, stub.Unary, b"y", timeout=5)
    assert answers == [b"x0", b"x1"]
    assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
    assert [c.method for c in grpc_upstream.calls] == ["Unary", "Unary"]


# --------------------------------------------------------------------------- RPC (bolt)

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)
ANY_SERVICE = [
    {
        "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
        "route": {"cluster_name": "up"},
    }
]


def bolt_config(up_port: int, filters: list[dict[str, Any]]) -> Any:
    return http_config(
        ANY_SERVICE,
        {"up": up_port},
        proxy={"downstream_protocol": "bolt"},
        listener={"stream_filters": filters},
    )


def bolt_request(rid: int, service: str, body: bytes = b"x") -> Any:
    return BOLT.build_request(
        rid, {"service": service, "sofa_head_method_name": "echo"}, body, codec=11
    )


def anthunder_calls(port: int, service: str, n: int) -> list[bytes | str]:
    """``n`` anthunder calls through the proxy: each answer, or its ServerError's text."""
    from anthunder import SERVICE_MAP, Client
    from anthunder.exceptions import ServerError
    from mytracer import SpanContext

    SERVICE_MAP.setdefault(service, ("127.0.0.1", port))
    client = Client("trio-mesh-test")
    out: list[bytes | str] = []
    for _ in range(n):
        try:
            out.append(
                client.invoke_sync(
                    service, "sayHello", b"\n\x01x", spanctx=SpanContext(), timeout_ms=5000
                )
            )
        except ServerError as exc:
            out.append(str(exc))
    return out


@needs_anthunder
async def test_bolt_over_the_limit_gets_the_overflow_error(nursery):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    service = f"com.alipay.test.Limited{uuid.uuid4().hex}:1.0"
    async with running_proxy(bolt_config(up, bucket_filter(2))) as (_, port):
        answers = await trio.to_thread.run_sync(anthunder_calls, port, service, 3)
    assert answers[:2] == [b"echo:\n\x01x"] * 2
    assert isinstance(answers[2], str) and "SERVER_THREADPOOL_BUSY" in answers[2]
    assert len(seen) == 2


async def test_bolt_rules_count_each_service_on_its_own(nursery):
    """MOSN's rules over RPC: the resource is the request's service (its PATH)."""
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    rules = {"rules": [{"resource": "svc.Limited", "threshold": 1, "statIntervalInMs": 3_600_000}]}
    config = bolt_config(up, [{"type": "flowcontrol", "config": rules}])
    async with running_proxy(config) as (_, port):
        client = await BoltClient.connect(port)
        answers = {}
        with trio.fail_after(5):
            for rid, service in enumerate(
                ["svc.Limited", "svc.Limited", "svc.Other", "svc.Other"], 1
            ):
                await client.send(bolt_request(rid, service))
                answer = await client.read()
                answers[rid] = answer.status
        await client.stream.aclose()
    assert answers == {
        1: ResponseStatus.SUCCESS,
        2: ResponseStatus.SERVER_THREADPOOL_BUSY,
        3: ResponseStatus.SUCCESS,
        4: ResponseStatus.SUCCESS,
    }
    assert len(seen) == 3
