"""The ``fault`` stream filter: config validation with paths, the percentage decision with an
injected random source, and delays and aborts through the real proxy (HTTP/1 with a raw
client and the h11 upstream; HTTP/2 with curl; gRPC with grpcio; bolt with anthunder)."""

from __future__ import annotations

import importlib.util
import json
import random
import uuid
from typing import Any

import grpc
import pytest
import trio

from tests import bolt_frames as frames
from tests.grpc_helpers import EchoStub, grpc_upstream, in_thread
from tests.h2_upstream import open_h2_client, start_h2_upstream
from tests.http_helpers import (
    Client,
    access_log,
    curl,
    echoed,
    get,
    http_config,
    read_access_log,
    request,
    running_proxy,
    start_proxy,
    start_upstream,
    to,
)
from tests.rpc_helpers import BoltClient, echo_upstream
from tests.rpc_helpers import request as bolt_request
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.config.stream_filters.fault import RPC_ERRORS, FaultConfig
from trio_mesh.filters.fault import Fault, chosen
from trio_mesh.filters.stream import Headers, RequestContext, as_maker
from trio_mesh.protocols.xprotocol import ErrorKind
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus

ABORTED = b"fault filter abort\n"
__all__ = ["grpc_upstream"]  # the fixture, imported for the tests below


def faulty(config: dict[str, Any]) -> dict[str, Any]:
    """Listener keys with one ``fault`` filter."""
    return {"stream_filters": [{"type": "fault", "config": config}]}


def abort_all(status: int = 503, **extra: Any) -> dict[str, Any]:
    return {"abort": {"status": status, "percentage": 100, **extra}}


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
                        "stream_filters": [{"type": "fault", "config": config}],
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
                                or [{"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}],
                            }
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [
                {"name": "up", "connect_timeout": "1s", "hosts": [{"address": "127.0.0.1:1"}]}
            ]
        },
    }


def errors(config: Any, routes: list | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(_doc(config, routes))
    return info.value.errors


C = "servers[0].listeners[0].stream_filters[0].config"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            {"delay": {"fixed_delay": "1s", "percentage": 101}},
            f"{C}.delay.percentage: expected a percentage from 0 to 100, got 101",
            id="delay-percentage-over-100",
        ),
        pytest.param(
            {"abort": {"status": 503, "percentage": -0.5}},
            f"{C}.abort.percentage: expected a percentage from 0 to 100, got -0.5",
            id="abort-percentage-negative",
        ),
        pytest.param(
            {"delay_percent": 200, "delay_duration": "1s"},
            f"{C}.delay_percent: expected a percentage from 0 to 100, got 200",
            id="flat-delay-percent",
        ),
        pytest.param(
            {"abort_percent": 10, "abort_status": 99},
            f"{C}.abort_status: expected an HTTP status from 200 to 599, got 99",
            id="flat-abort-status",
        ),
        pytest.param(
            {"abort_percent": 10},
            f"{C}.abort_status: abort_percent needs abort_status",
            id="flat-abort-without-status",
        ),
        pytest.param(
            {"abort": {"percentage": 10}},
            f"{C}.abort: give status (or http_status), or grpc_status",
            id="abort-without-status",
        ),
        pytest.param(
            {"abort": {"status": 503, "http_status": 500}},
            f"{C}.abort.http_status: give status or http_status, not both",
            id="status-and-http-status",
        ),
        pytest.param(
            {"abort": {"http_status": 600}},
            f"{C}.abort.http_status: expected an HTTP status from 200 to 599, got 600",
            id="http-status-range",
        ),
        pytest.param(
            {"abort": {"grpc_status": 0}},
            f"{C}.abort.grpc_status: expected a gRPC code from 1 to 16, got 0",
            id="grpc-status-ok-is-no-abort",
        ),
        pytest.param(
            {"abort": {"status": 503, "rpc_error": "BUSY"}},
            f"{C}.abort.rpc_error: expected one of {', '.join(RPC_ERRORS)}, got 'BUSY'",
            id="rpc-error-unknown",
        ),
        pytest.param(
            {"delay": {"percentage": 10}},
            f"{C}.delay.fixed_delay: required field missing",
            id="delay-without-duration",
        ),
        pytest.param(
            {"delay": {"fixed_delay": "soon"}},
            f"{C}.delay.fixed_delay: expected a duration such as '3s' or '250ms', got 'soon'",
            id="delay-duration-text",
        ),
        pytest.param(
            {"delay": {"fixed_delay": "1s"}, "delay_percent": 5},
            f"{C}.delay_percent: give delay: {{...}} or delay_percent / delay_duration",
            id="both-delay-shapes",
        ),
        pytest.param(
            {"abort": {"status": 503}, "abort_status": 500},
            f"{C}.abort_status: give abort: {{...}} or abort_percent / abort_status",
            id="both-abort-shapes",
        ),
        pytest.param(
            {"headers": [{"name": "x-a", "value": "(", "regex": True}]},
            f"{C}.headers[0].value: invalid regex: missing ), unterminated subpattern at"
            " position 0",
            id="header-matcher-regex",
        ),
        pytest.param(
            {"upstream_cluster": "nope"},
            f"{C}.upstream_cluster: unknown cluster 'nope' (defined: up)",
            id="unknown-upstream-cluster",
        ),
        pytest.param(
            {"abort": {"status": 503}, "colour": "red"},
            f"{C}.colour: unknown key (known keys: abort, abort_percent, abort_status, delay,"
            " delay_duration, delay_percent, headers, upstream_cluster)",
            id="unknown-key",
        ),
    ],
)
def test_config_errors_name_their_path(config: dict, expected: str) -> None:
    assert errors(config) == [expected]


def test_per_route_config_errors_name_their_path() -> None:
    routes = [
        {
            "match": {"prefix": "/"},
            "route": {"cluster_name": "up"},
            "per_filter_config": {"fault": {"abort": {"status": 503, "percentage": 300}}},
        }
    ]
    assert errors({}, routes) == [
        "servers[0].routers[0].virtual_hosts[0].routers[0].per_filter_config.fault.abort"
        ".percentage: expected a percentage from 0 to 100, got 300"
    ]


def test_mosn_shapes_load() -> None:
    """MOSN's stream filter JSON (its unmarshal test's) and its flat keys, key case as MOSN's
    Go loader takes it."""
    nested = (
        parse_config(
            _doc(
                {
                    "delay": {"fixed_delay": "1s", "percentage": 100},
                    "abort": {"status": 500, "percentage": 100},
                    "upstream_cluster": "up",
                    "headers": [
                        {"name": "service", "value": "test", "regex": False},
                        {"name": "user", "value": "bob", "regex": False},
                    ],
                }
            )
        )
        .config.listeners[0]
        .stream_filters[0]
        .config
    )
    assert nested.delay_of() == (1.0, 100.0)
    assert nested.abort_of().http == 500 and nested.abort_of().percentage == 100
    assert [h.name for h in nested.headers] == ["service", "user"]
    flat = parse_config(
        _doc(
            {
                "Delay_Percent": 50,
                "delay_duration": "250ms",
                "abort_percent": 2.5,
                "abort_status": 503,
            }
        )
    )
    config = flat.config.listeners[0].stream_filters[0].config
    assert config.delay_of() == (0.25, 50.0)
    assert (config.abort_of().http, config.abort_of().percentage) == (503, 2.5)


def test_rpc_error_names_are_the_codecs_error_kinds() -> None:
    assert set(RPC_ERRORS) == {kind.name for kind in ErrorKind}


# --------------------------------------------------------------------------- the decision


class Draws:
    """A random source that hands out given values and counts the draws."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.count = 0

    def __call__(self) -> float:
        self.count += 1
        return self.values.pop(0)


def test_chosen_edges_take_no_draw() -> None:
    def never() -> float:
        raise AssertionError("drawn")

    assert chosen(100, never) is True
    assert chosen(0, never) is False


def test_chosen_fraction_is_below_the_percentage() -> None:
    assert chosen(25, Draws(0.2499)) is True
    assert chosen(25, Draws(0.25)) is False
    assert chosen(0.5, Draws(0.004)) is True
    assert chosen(0.5, Draws(0.006)) is False


def ctx(cluster: str | None = "up") -> RequestContext:
    return RequestContext("HTTP/1.1", method="GET", path="/", cluster=cluster)


def make(config: dict, rand) -> Any:
    return as_maker(Fault.factory(parse_fault(config), None, rand=rand))


def parse_fault(config: dict) -> FaultConfig:
    return parse_config(_doc(config)).config.listeners[0].stream_filters[0].config


def test_seeded_fraction_matches_the_draws() -> None:
    """At 30%, each request draws once for the abort: exactly those under 0.3 are aborted."""
    maker = make({"abort": {"status": 503, "percentage": 30}}, random.Random(7).random)
    expected = random.Random(7)
    results = [maker(ctx()) for _ in range(2000)]
    aborted = [f is not None for f in results]
    assert aborted == [expected.random() < 0.3 for _ in range(2000)]
    assert 500 < sum(aborted) < 700


def test_zero_percent_makes_no_filter_and_draws_nothing() -> None:
    draws = Draws()
    for config in (
        {"delay_percent": 0, "delay_duration": "1s", "abort_percent": 0, "abort_status": 503},
        {"delay": {"fixed_delay": "1s"}, "abort": {"status": 503}},  # percentage left out: 0
        {"delay": {"fixed_delay": "0s", "percentage": 100}},
        {},
    ):
        maker = make(config, draws)
        assert [maker(ctx()) for _ in range(100)] == [None] * 100
    assert draws.count == 0


def test_hundred_percent_takes_no_draw_and_always_faults() -> None:
    draws = Draws()
    maker = make({"delay": {"fixed_delay": "2s", "percentage": 100}, **abort_all()}, draws)
    for _ in range(50):
        f = maker(ctx())
        assert f.delay == 2.0 and f.abort.status == 503 and f.abort.flag == "FI"
    assert draws.count == 0


def test_delay_and_abort_are_drawn_separately() -> None:
    maker = make(
        {
            "delay": {"fixed_delay": "1s", "percentage": 50},
            "abort": {"status": 503, "percentage": 50},
        },
        Draws(0.1, 0.9, 0.9, 0.1, 0.9, 0.9),
    )
    first, second, third = maker(ctx()), maker(ctx()), maker(ctx())
    assert (first.delay, first.abort) == (1.0, None)
    assert (second.delay, second.abort.status) == (0.0, 503)
    assert third is None


def test_upstream_cluster_limits_the_faults_to_its_requests() -> None:
    maker = make({**abort_all(), "upstream_cluster": "up"}, Draws())
    assert maker(ctx("up")) is not None
    assert maker(ctx("other")) is None
    assert maker(ctx(None)) is None


async def test_header_matchers_decide_in_the_hook() -> None:
    draws = Draws(0.1)
    maker = make(
        {
            "abort": {"status": 503, "percentage": 50},
            "headers": [{"name": "x-fault", "value": "yes"}, {"name": ":method", "value": "GET"}],
        },
        draws,
    )
    unmatched = maker(ctx())
    assert await unmatched.on_request_headers(Headers([(b"x-fault", b"no")]), True) is None
    assert draws.count == 0  # no match: no draw
    matched = maker(ctx())
    reply = await matched.on_request_headers(Headers([(b"x-fault", b"yes")]), True)
    assert reply.status == 503 and draws.count == 1


@pytest.mark.parametrize(
    ("abort", "status", "grpc_status", "rpc_error"),
    [
        ({"status": 503}, 503, None, None),  # gRPC and RPC follow the HTTP status
        ({"http_status": 429}, 429, None, None),
        ({"grpc_status": 14}, 503, 14, None),  # UNAVAILABLE -> 503 for HTTP clients
        ({"grpc_status": 4}, 504, 4, None),
        ({"status": 500, "grpc_status": 8, "rpc_error": "overflow"}, 500, 8, "OVERFLOW"),
    ],
)
def test_abort_reply_per_protocol_fields(abort, status, grpc_status, rpc_error) -> None:
    f = make({"abort": {**abort, "percentage": 100}}, Draws())(ctx())
    reply = f.abort
    assert (reply.status, reply.grpc_status, reply.rpc_error) == (status, grpc_status, rpc_error)
    assert reply.body == ABORTED and reply.grpc_message == "fault filter abort"


# --------------------------------------------------------------------------- HTTP/1


async def test_http1_abort_at_100_percent_never_reaches_the_upstream(nursery, tmp_path) -> None:
    up = await start_upstream(nursery)
    log_keys, log_path = access_log(tmp_path)
    config = http_config([to()], {"up": up.port}, listener={**faulty(abort_all(503)), **log_keys})
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            for _ in range(5):
                await client.send(get("/echo"))
                response = await client.response()
                assert (response.status, response.body) == (503, ABORTED)
    assert up.requests == []
    lines = read_access_log(log_path)
    assert [(line["response_code"], line["response_flag"]) for line in lines] == [(503, "FI")] * 5


async def test_http1_abort_at_0_percent_never_happens(nursery) -> None:
    up = await start_upstream(nursery)
    config = http_config(
        [to()], {"up": up.port}, listener=faulty({"abort": {"status": 503, "percentage": 0}})
    )
    async with running_proxy(config) as (_, port):
        for _ in range(5):
            assert (await request(port, get("/echo"))).status == 200
    assert len(up.requests) == 5


async def test_http1_flat_mosn_keys_and_grpc_only_abort(nursery) -> None:
    up = await start_upstream(nursery)
    routes = [
        {
            **to(prefix="/flat"),
            "per_filter_config": {"fault": {"abort_percent": 100, "abort_status": 429}},
        },
        {
            **to(prefix="/grpc-only"),
            "per_filter_config": {"fault": {"abort": {"grpc_status": 16, "percentage": 100}}},
        },
    ]
    config = http_config(routes, {"up": up.port}, listener=faulty({}))
    async with running_proxy(config) as (_, port):
        flat = await request(port, get("/flat"))
        grpc_only = await request(port, get("/grpc-only"))
    assert (flat.status, flat.body) == (429, ABORTED)
    assert grpc_only.status == 401  # UNAUTHENTICATED's HTTP status
    assert up.requests == []


async def test_http1_abort_only_for_matching_headers(nursery) -> None:
    up = await start_upstream(nursery)
    config = http_config(
        [to()],
        {"up": up.port},
        listener=faulty({**abort_all(502), "headers": [{"name": "x-chaos", "value": "on"}]}),
    )
    async with running_proxy(config) as (_, port):
        hit = await request(port, get("/echo", headers="X-Chaos: on\r\n"))
        missed = await request(port, get("/echo", headers="X-Chaos: off\r\n"))
        plain = await request(port, get("/echo"))
    assert hit.status == 502
    assert (missed.status, plain.status) == (200, 200)
    assert len(up.requests) == 2


async def test_http1_per_route_override_and_disable(nursery) -> None:
    up = await start_upstream(nursery)
    routes = [
        {**to(prefix="/off"), "per_filter_config": {"fault": {"disabled": True}}},
        {**to(prefix="/teapot"), "per_filter_config": {"fault": abort_all(418)}},
        to(prefix="/"),
    ]
    config = http_config(routes, {"up": up.port}, listener=faulty(abort_all(503)))
    async with running_proxy(config) as (_, port):
        off = await request(port, get("/off/echo"))
        teapot = await request(port, get("/teapot"))
        default = await request(port, get("/echo"))
    assert echoed(off)["target"] == "/off/echo"
    assert teapot.status == 418 and default.status == 503
    assert [r["target"] for r in up.requests] == ["/off/echo"]


async def test_http1_delay_holds_the_request_back(nursery) -> None:
    """A 30 s delay at 100%: half a second on, the request has not reached the upstream and
    no answer came, while a route with the fault disabled answers at once (the delay holds
    only its own request)."""
    up = await start_upstream(nursery)
    routes = [
        {**to(prefix="/fast"), "per_filter_config": {"fault": {"disabled": True}}},
        to(prefix="/"),
    ]
    config = http_config(
        routes,
        {"up": up.port},
        listener=faulty({"delay": {"fixed_delay": "30s", "percentage": 100}}),
    )
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            with trio.move_on_after(0.5) as waited:
                await client.response()
            assert waited.cancelled_caught
            with trio.fail_after(5):
                fast = await request(port, get("/fast/echo"))
    assert fast.status == 200
    assert [r["target"] for r in up.requests] == ["/fast/echo"]


async def test_http1_delay_at_0_percent_and_delay_then_abort(nursery) -> None:
    up = await start_upstream(nursery)
    routes = [
        {
            **to(prefix="/both"),
            "per_filter_config": {
                "fault": {"delay": {"fixed_delay": "1ms", "percentage": 100}, **abort_all(503)}
            },
        },
        to(prefix="/"),
    ]
    config = http_config(
        routes, {"up": up.port}, listener=faulty({"delay": {"fixed_delay": "30s", "percentage": 0}})
    )
    async with running_proxy(config) as (_, port):
        with trio.fail_after(5):  # a delay at 0% would hold this for 30 s
            plain = await request(port, get("/echo"))
            both = await request(port, get("/both"))
    assert plain.status == 200
    assert (both.status, both.body) == (503, ABORTED)
    assert len(up.requests) == 1


# --------------------------------------------------------------------------- HTTP/2, gRPC


def h2_faulty(up_port: int, routes: list, config: dict) -> Any:
    return http_config(
        routes,
        {"up": up_port},
        listener=faulty(config),
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
    )


async def h2_get(port: int, path: str, *headers: str) -> tuple[int, bytes]:
    args = ["--noproxy", "*", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code}"]
    for header in headers:
        args += ["-H", header]
    rc, out, err = await curl(*args, f"http://127.0.0.1:{port}{path}")
    assert rc == 0, err
    body, _, status = out.rpartition(b"\n")
    return int(status), body


async def test_http2_abort_matching_headers_and_per_route(nursery) -> None:
    up = await start_h2_upstream(nursery)
    # (the h2 upstream serves /echo only: the route prefixes are rewritten away)
    routes = [
        {
            **to(prefix="/off/", prefix_rewrite="/"),
            "per_filter_config": {"fault": {"disabled": True}},
        },
        {
            **to(prefix="/zero/", prefix_rewrite="/"),
            "per_filter_config": {"fault": {"abort_percent": 0, "abort_status": 500}},
        },
        to(prefix="/"),
    ]
    config = h2_faulty(
        up.port, routes, {**abort_all(503), "headers": [{"name": "x-chaos", "present": True}]}
    )
    async with running_proxy(config) as (_, port):
        aborted = await h2_get(port, "/echo", "x-chaos: 1")
        passed = await h2_get(port, "/echo")
        off = await h2_get(port, "/off/echo", "x-chaos: 1")
        zero = await h2_get(port, "/zero/echo", "x-chaos: 1")
    assert aborted == (503, ABORTED)
    assert (passed[0], off[0], zero[0]) == (200, 200, 200)
    assert json.loads(off[1])["path"] == "/echo"
    assert len(up.requests) == 3


async def test_http2_delay_holds_only_its_stream(nursery) -> None:
    """Two streams on one connection: the delayed one has not reached the upstream when the
    other (fault disabled on its route) is answered."""
    up = await start_h2_upstream(nursery)
    routes = [
        {
            **to(prefix="/fast/", prefix_rewrite="/"),
            "per_filter_config": {"fault": {"disabled": True}},
        },
        to(prefix="/"),
    ]
    config = h2_faulty(up.port, routes, {"delay": {"fixed_delay": "30s", "percentage": 100}})
    async with running_proxy(config) as (_, port), open_h2_client(port) as client:
        slow = await client.send_headers("GET", "/echo", end_stream=True)
        fast = await client.send_headers("GET", "/fast/echo", end_stream=True)
        with trio.fail_after(5):
            response = await client.response(fast)
        assert response.status == 200
        assert [path for path, _ in up.requests] == ["/echo"]  # the fast one only
        assert client.streams[slow].status is None


async def test_grpc_abort_gets_grpc_status(nursery, grpc_upstream) -> None:
    routes = [
        {
            **to(prefix="/test.Echo/Unary"),
            "per_filter_config": {"fault": {"abort": {"grpc_status": 8, "percentage": 100}}},
        },
        to(prefix="/"),
    ]
    config = h2_faulty(grpc_upstream.port, routes, abort_all(503))
    async with running_proxy(config) as (_, port):
        with EchoStub.connect(port) as stub:
            exhausted, _ = await in_thread(_rpc_error, stub.Unary, b"x", timeout=5)
            unavailable, _ = await in_thread(_rpc_error, stub.ServerStream, b"3", timeout=5)
    assert exhausted.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert exhausted.details() == "fault filter abort"
    assert unavailable.code() == grpc.StatusCode.UNAVAILABLE  # Envoy's code for HTTP 503
    assert grpc_upstream.calls == []


async def to_thread(fn, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), abandon_on_cancel=True)


def _rpc_error(fn, *args: Any, **kwargs: Any) -> tuple[grpc.RpcError, None]:
    try:
        result = fn(*args, **kwargs)
        if not isinstance(result, bytes):
            list(result)  # a stream: the error comes on reading it
    except grpc.RpcError as exc:
        return exc, None
    raise AssertionError(f"{fn} succeeded")


# --------------------------------------------------------------------------- RPC (bolt)

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)


def bolt_faulty(up_port: int, config: dict, routes: list | None = None) -> Any:
    any_service = {
        "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
        "route": {"cluster_name": "up"},
    }
    return http_config(
        routes or [any_service],
        {"up": up_port},
        listener=faulty(config),
        proxy={"downstream_protocol": "bolt"},
    )


def anthunder_error(port: int, service: str, **headers: str) -> str:
    """One anthunder call through the proxy that must fail: its ServerError as text."""
    from anthunder import SERVICE_MAP, Client
    from anthunder.exceptions import ServerError
    from mytracer import SpanContext

    SERVICE_MAP.setdefault(service, ("127.0.0.1", port))
    try:
        Client("trio-mesh-test").invoke_sync(
            service, "sayHello", b"\n\x01x", spanctx=SpanContext(), timeout_ms=5000, **headers
        )
    except ServerError as exc:
        return str(exc)
    raise AssertionError("the call succeeded")


def anthunder_ok(port: int, service: str, **headers: str) -> bytes:
    from anthunder import SERVICE_MAP, Client
    from mytracer import SpanContext

    SERVICE_MAP.setdefault(service, ("127.0.0.1", port))
    return Client("trio-mesh-test").invoke_sync(
        service, "sayHello", b"\n\x01x", spanctx=SpanContext(), timeout_ms=5000, **headers
    )


@pytest.fixture
def svc() -> str:
    """A service name of this test's own (anthunder's SERVICE_MAP keeps the first address)."""
    return f"com.alipay.test.Fault{uuid.uuid4().hex}:1.0"


@needs_anthunder
async def test_bolt_abort_is_the_codecs_error_status(nursery, svc) -> None:
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    routes = [
        {
            "match": {
                "headers": [
                    {"name": "service", "value": svc},
                    {"name": "x-timeout", "present": True},
                ]
            },
            "route": {"cluster_name": "up"},
            "per_filter_config": {"fault": abort_all(500, rpc_error="TIMEOUT")},
        },
        {
            "match": {
                "headers": [{"name": "service", "value": svc}, {"name": "x-off", "present": True}]
            },
            "route": {"cluster_name": "up"},
            "per_filter_config": {"fault": {"disabled": True}},
        },
        {
            "match": {"headers": [{"name": "service", "value": svc}]},
            "route": {"cluster_name": "up"},
        },
    ]
    _, port = await start_proxy(nursery, bolt_faulty(up, abort_all(503), routes))
    # 503 is OVERFLOW: bolt's SERVER_THREADPOOL_BUSY, as anthunder reports it
    assert "SERVER_THREADPOOL_BUSY" in await to_thread(anthunder_error, port, svc)
    timed_out = await to_thread(anthunder_error, port, svc, **{"x-timeout": "1"})
    assert "TIMEOUT" in timed_out and "BUSY" not in timed_out
    assert seen == []
    assert await to_thread(anthunder_ok, port, svc, **{"x-off": "1"}) == b"echo:\n\x01x"
    assert len(seen) == 1


async def test_bolt_header_matched_delay_holds_only_its_request(nursery) -> None:
    """Two requests on one connection: the one the fault's header matcher picks waits; the
    other is answered meanwhile. A matched abort answers with the codec's error status."""
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    config = {
        "delay": {"fixed_delay": "30s", "percentage": 100},
        "headers": [{"name": "x-slow", "present": True}],
    }
    _, port = await start_proxy(nursery, bolt_faulty(up, config))
    client = await BoltClient.connect(port)
    slow = BOLT.build_request(
        1,
        {"service": frames.SERVICE, "sofa_head_method_name": "echo", "x-slow": "1"},
        b"slow",
        codec=11,
    )
    await client.send(slow)
    await client.send(bolt_request(2, b"fast"))
    with trio.fail_after(5):
        answer = await client.read()
    assert (answer.request_id, bytes(answer.content)) == (2, b"echo:fast")
    assert [bytes(f.content) for f in seen] == [b"fast"]


async def test_bolt_abort_at_0_percent_and_grpc_only_status(nursery) -> None:
    up = await echo_upstream(nursery)
    config = {
        "abort": {"grpc_status": 14, "percentage": 100},
        "headers": [{"name": "x-abort", "value": "yes"}],
    }
    _, port = await start_proxy(nursery, bolt_faulty(up, config))
    client = await BoltClient.connect(port)
    await client.send(
        BOLT.build_request(
            3,
            {"service": frames.SERVICE, "sofa_head_method_name": "echo", "x-abort": "yes"},
            b"x",
            codec=11,
        )
    )
    await client.send(bolt_request(4, b"y"))
    with trio.fail_after(5):
        answers = {f.request_id: f for f in [await client.read(), await client.read()]}
    # UNAVAILABLE is HTTP 503, OVERFLOW for RPC: SERVER_THREADPOOL_BUSY
    assert answers[3].status == ResponseStatus.SERVER_THREADPOOL_BUSY
    assert (answers[4].status, bytes(answers[4].content)) == (ResponseStatus.SUCCESS, b"echo:y")
