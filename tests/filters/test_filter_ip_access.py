"""`ip_access`: the matcher's rules (order, defaults, IPv4/IPv6, mapped addresses), config
errors with their paths, the stream filter through the real HTTP/1 proxy (IPv4, and IPv6 on
::1 where it can be bound), and the network filter in front of tcp_proxy and proxy: the
connection is closed before the terminal filter, and so the upstream, sees anything."""

from __future__ import annotations

import importlib.util
import socket
import uuid
from typing import Any

import attrs
import grpc
import pytest
import trio

from tests.grpc_helpers import EchoStub, GrpcEchoServer, grpc_upstream, in_thread
from tests.h2_upstream import open_h2_client, start_h2_upstream
from tests.http_helpers import Client, get, http_config, request, running_proxy, start_upstream, to
from tests.rpc_helpers import BoltClient, echo_upstream
from tests.tcp_helpers import start_tcp_server
from trio_mesh import Server
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.config.converter import converter
from trio_mesh.config.stream_filters.ip_access import IpAccessConfig
from trio_mesh.errors import StartupError
from trio_mesh.filters.ip_access import IpMatcher, host_of
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus

__all__ = ["grpc_upstream"]  # the fixture, imported for the tests below


def matcher(config: dict[str, Any]) -> IpMatcher:
    return IpMatcher(converter.structure(config, IpAccessConfig))


def ip_filter(**config: Any) -> dict[str, Any]:
    return {"stream_filters": [{"type": "ip_access", "config": config}]}


def can_bind_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- rules


def test_short_form_allow_admits_only_its_addresses():
    m = matcher({"action": "allow", "ips": ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"]})
    assert m.allows("127.0.0.1") and m.allows("10.200.3.4") and m.allows("2001:db8::7")
    assert not m.allows("127.0.0.2") and not m.allows("::1") and not m.allows("192.168.1.1")


def test_short_form_deny_refuses_only_its_addresses():
    m = matcher({"action": "deny", "ips": ["127.0.0.0/8", "::1"]})
    assert not m.allows("127.9.9.9") and not m.allows("::1")
    assert m.allows("10.0.0.1") and m.allows("::2")


def test_mosn_lists_in_order_the_first_holding_the_address_decides():
    m = matcher(
        {
            "default_action": "deny",
            "ips": [
                {"action": "deny", "addrs": ["10.1.0.0/16"]},
                {"action": "allow", "addrs": ["10.0.0.0/8"]},
            ],
        }
    )
    assert not m.allows("10.1.2.3")  # the deny list comes first
    assert m.allows("10.2.3.4")
    assert not m.allows("11.0.0.1")  # default


def test_mosn_allow_list_alone_admits_everyone_as_in_mosn():
    """MOSN's default_action is allow: an allow list without default_action: deny lets
    every address through (documented; the short form defaults the other way)."""
    m = matcher({"ips": [{"action": "allow", "addrs": ["10.0.0.0/8"]}]})
    assert m.allows("10.0.0.1") and m.allows("192.168.0.1")


def test_ipv4_mapped_ipv6_zones_and_unreadable_addresses():
    m = matcher({"action": "allow", "ips": ["10.0.0.0/8", "fe80::/10"]})
    assert m.allows("::ffff:10.1.2.3")  # a dual-stack socket's IPv4 client
    assert not m.allows("::ffff:11.1.2.3")
    assert m.allows("fe80::1%eth0")
    assert not m.allows("not-an-address") and not m.allows(None)  # the default: deny


def test_cidr_with_host_bits_is_its_network_as_go_parses_it():
    m = matcher({"action": "deny", "ips": ["10.1.2.3/8"]})
    assert not m.allows("10.200.0.1")


def test_the_answer_per_address_is_cached():
    m = matcher({"action": "deny", "ips": ["10.0.0.0/8"]})
    assert not m.allows("10.0.0.1") and m.allows("11.0.0.1")
    assert m._cache == {"10.0.0.1": False, "11.0.0.1": True}


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("::1", "::1"),
        ("9.9.9.9, 10.0.0.7", "10.0.0.7"),
    ],
)
def test_host_of_header_values(value, host):
    assert host_of(value) == host


# --------------------------------------------------------------------------- config


def _doc(config: Any, network: bool = False) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [{"type": "proxy", "config": {"router_config_name": "r"}}]
    listener: dict[str, Any] = {"name": "l", "address": "127.0.0.1:0"}
    if network:
        filters.insert(0, {"type": "ip_access", "config": config})
    else:
        listener["stream_filters"] = [{"type": "ip_access", "config": config}]
    listener["filter_chains"] = [{"filters": filters}]
    return {
        "servers": [
            {
                "listeners": [listener],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "v",
                                "domains": ["*"],
                                "routers": [
                                    {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }


P = "servers[0].listeners[0].stream_filters[0].config"
N = "servers[0].listeners[0].filter_chains[0].filters[0].config"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, f"{P}.ips: expected at least one address or list"),
        (
            {"action": "allow", "ips": ["127.0.0.1", "300.1.1.1"]},
            f"{P}.ips[1]: expected an IP address or CIDR, got '300.1.1.1'",
        ),
        ({"action": "allow", "ips": ["10.0.0.0/33"]}, f"{P}.ips[0]: expected an IP address"),
        ({"ips": ["127.0.0.1"]}, f"{P}.ips[0]: a bare address takes its action from 'action'"),
        ({"action": "maybe", "ips": ["127.0.0.1"]}, f"{P}.action: expected one of allow, deny"),
        ({"ips": [{"action": "deny", "addrs": []}]}, f"{P}.ips[0].addrs: expected at least one"),
        (
            {"ips": [{"action": "deny", "addrs": ["::1", "::zz"]}]},
            f"{P}.ips[0].addrs[1]: expected an IP address or CIDR, got '::zz'",
        ),
        ({"ips": [{"action": "deny", "adrs": ["::1"]}]}, f"{P}.ips[0].adrs: unknown key"),
        ({"ips": [42]}, f"{P}.ips[0]: expected an address or {{action, addrs}}, got 42"),
        ({"action": "allow", "ips": ["::1"], "header": " "}, f"{P}.header: expected a header"),
    ],
)
def test_config_errors_name_their_path(config, expected):
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc(config))
    assert expected in str(exc.value)


def test_network_filter_config_errors_name_their_path():
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc({"action": "allow", "ips": ["1.1.1"]}, network=True))
    assert f"{N}.ips[0]: expected an IP address or CIDR, got '1.1.1'" in str(exc.value)


def test_a_non_terminal_network_filter_before_the_terminal_one_validates():
    doc = _doc({"action": "allow", "ips": ["127.0.0.1"]}, network=True)
    chain = parse_config(doc).config.listeners[0].filter_chains[0]
    assert [f.type for f in chain.filters] == ["ip_access", "proxy"]


def test_ip_access_cannot_end_a_chain():
    doc = _doc({"action": "allow", "ips": ["127.0.0.1"]}, network=True)
    doc["servers"][0]["listeners"][0]["filter_chains"][0]["filters"].pop()
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert "filters[0].type: the last filter must end the chain" in str(exc.value)


# --------------------------------------------------------------------------- stream filter


async def test_http1_allowed_and_denied_lists(nursery):
    up = await start_upstream(nursery)
    routes = [
        {
            **to(prefix="/denied"),
            "per_filter_config": {"ip_access": {"action": "deny", "ips": ["127.0.0.0/8"]}},
        },
        {
            **to(prefix="/elsewhere"),
            "per_filter_config": {"ip_access": {"action": "allow", "ips": ["10.0.0.0/8", "::1"]}},
        },
        to(prefix="/"),
    ]
    config = http_config(
        routes, {"up": up.port}, listener=ip_filter(action="allow", ips=["127.0.0.1/32"])
    )
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            allowed = await client.response()
            await client.send(get("/denied/echo"))
            denied = await client.response()
            await client.send(get("/elsewhere/echo"))
            not_listed = await client.response()
            await client.send(get("/echo"))  # a refusal keeps the connection
            again = await client.response()
    assert allowed.status == again.status == 200
    assert (denied.status, denied.body) == (403, b"access denied\n")
    assert not_listed.status == 403
    assert len(up.requests) == 2


async def test_close_true_closes_the_connection_after_the_refusal(nursery):
    up = await start_upstream(nursery)
    config = http_config(
        [to()], {"up": up.port}, listener=ip_filter(action="deny", ips=["127.0.0.1"], close=True)
    )
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            denied = await client.response()
            assert await client.closed()
    assert denied.status == 403 and denied.headers.get("connection") == "close"
    assert up.connections == 0


async def test_header_names_the_client_address(nursery):
    up = await start_upstream(nursery)
    config = http_config(
        [to()],
        {"up": up.port},
        listener=ip_filter(
            header="x-real-ip",
            default_action="deny",
            ips=[{"action": "allow", "addrs": ["127.0.0.1", "10.0.0.0/8"]}],
        ),
    )
    async with running_proxy(config) as (_, port):
        no_header = await request(port, get("/echo"))
        allowed = await request(port, get("/echo", headers="X-Real-IP: 10.1.1.1:5000\r\n"))
        denied = await request(port, get("/echo", headers="X-Real-IP: 192.168.0.9\r\n"))
        garbage = await request(port, get("/echo", headers="X-Real-IP: nonsense\r\n"))
    assert no_header.status == allowed.status == 200
    assert denied.status == garbage.status == 403


@pytest.mark.skipif(not can_bind_ipv6_loopback(), reason="::1 cannot be bound here")
@pytest.mark.parametrize(("action", "expected"), [("allow", 200), ("deny", 403)])
async def test_ipv6_client_on_an_ipv6_listener(nursery, action, expected):
    up = await start_upstream(nursery)
    listener = {"address": "[::1]:0", **ip_filter(action=action, ips=["::1/128"])}
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (server, port):
        assert server.addresses["ingress"][0] == "::1"
        stream = await trio.open_tcp_stream("::1", port)
        async with Client(stream) as client:
            await client.send(get("/echo"))
            response = await client.response()
    assert response.status == expected


# --------------------------------------------------------------------------- HTTP/2, gRPC


def h2_config(up_port: int, **config: Any) -> Any:
    return http_config(
        [to()],
        {"up": up_port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
        listener=ip_filter(**config),
    )


@pytest.mark.parametrize(("action", "expected"), [("allow", 200), ("deny", 403)])
async def test_http2_allowed_and_denied(nursery, action, expected):
    upstream = await start_h2_upstream(nursery)
    async with running_proxy(h2_config(upstream.port, action=action, ips=["127.0.0.1"])) as (
        _,
        port,
    ):
        with trio.fail_after(10):
            async with open_h2_client(port) as client:
                first = await client.request("GET", "/echo")
                second = await client.request("GET", "/echo")  # the connection goes on
    assert first.status == second.status == expected
    if expected == 403:
        assert first.body == b"access denied\n"
    assert len(upstream.requests) == (2 if expected == 200 else 0)


async def test_http2_close_sends_goaway(nursery):
    upstream = await start_h2_upstream(nursery)
    config = h2_config(upstream.port, action="deny", ips=["127.0.0.1"], close=True)
    async with running_proxy(config) as (_, port):
        with trio.fail_after(10):
            async with open_h2_client(port) as client:
                denied = await client.request("GET", "/echo")
                await client.wait_until(lambda: client.goaway is not None)
                await client.wait_closed()
    assert denied.status == 403


async def test_grpc_denied_gets_permission_denied(nursery, grpc_upstream: GrpcEchoServer):
    config = h2_config(grpc_upstream.port, action="deny", ips=["127.0.0.0/8"])
    async with running_proxy(config) as (_, port):
        with EchoStub.connect(port) as stub:
            try:
                await in_thread(stub.Unary, b"x", timeout=5)
            except grpc.RpcError as exc:
                error = exc
            else:
                raise AssertionError("a denied call succeeded")
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "access denied")
    assert grpc_upstream.calls == []


async def test_grpc_allowed_passes(nursery, grpc_upstream: GrpcEchoServer):
    config = h2_config(grpc_upstream.port, action="allow", ips=["127.0.0.1", "::1"])
    async with running_proxy(config) as (_, port):
        with EchoStub.connect(port) as stub:
            assert await in_thread(stub.Unary, b"hi", timeout=5) == b"hi"


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


def bolt_config(up_port: int, **config: Any) -> Any:
    return http_config(
        ANY_SERVICE,
        {"up": up_port},
        proxy={"downstream_protocol": "bolt"},
        listener=ip_filter(**config),
    )


def bolt_request(rid: int, body: bytes = b"x") -> Any:
    return BOLT.build_request(
        rid, {"service": "svc.Any", "sofa_head_method_name": "echo"}, body, codec=11
    )


@pytest.mark.parametrize(
    ("action", "expected"), [("allow", ResponseStatus.SUCCESS), ("deny", ResponseStatus.UNKNOWN)]
)
async def test_bolt_allowed_and_denied(nursery, action, expected):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    async with running_proxy(bolt_config(up, action=action, ips=["127.0.0.1"])) as (_, port):
        client = await BoltClient.connect(port)
        with trio.fail_after(5):
            await client.send(bolt_request(1))
            first = await client.read()
            await client.send(bolt_request(2))  # the connection goes on
            second = await client.read()
        await client.stream.aclose()
    assert (first.request_id, first.status) == (1, expected)
    assert (second.request_id, second.status) == (2, expected)
    assert len(seen) == (2 if action == "allow" else 0)


async def test_bolt_close_ends_the_connection_after_the_error_reply(nursery):
    up = await echo_upstream(nursery)
    config = bolt_config(up, action="deny", ips=["127.0.0.1"], close=True)
    async with running_proxy(config) as (_, port):
        client = await BoltClient.connect(port)
        with trio.fail_after(5):
            await client.send(bolt_request(7))
            denied = await client.read()
            with pytest.raises((EOFError, trio.BrokenResourceError)):
                await client.read()
        await client.stream.aclose()
    assert (denied.request_id, denied.status) == (7, ResponseStatus.UNKNOWN)


@needs_anthunder
async def test_anthunder_call_from_a_denied_address_fails(nursery):
    from anthunder import SERVICE_MAP, Client
    from anthunder.exceptions import ServerError
    from mytracer import SpanContext

    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    service = f"com.alipay.test.Denied{uuid.uuid4().hex}:1.0"

    def call(port: int) -> str:
        SERVICE_MAP.setdefault(service, ("127.0.0.1", port))
        try:
            Client("trio-mesh-test").invoke_sync(
                service, "sayHello", b"\n\x01x", spanctx=SpanContext(), timeout_ms=5000
            )
        except ServerError as exc:
            return str(exc)
        raise AssertionError("a denied call succeeded")

    async with running_proxy(bolt_config(up, action="deny", ips=["127.0.0.0/8"])) as (_, port):
        error = await trio.to_thread.run_sync(call, port)
    assert "UNKNOWN" in error
    assert seen == []


async def test_network_filter_in_front_of_a_bolt_listener(nursery):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    config = http_config(ANY_SERVICE, {"up": up}, proxy={"downstream_protocol": "bolt"})
    doc = _doc({"action": "deny", "ips": ["127.0.0.1"]}, network=True)
    ip_access = parse_config(doc).config.listeners[0].filter_chains[0].filters[0]
    (listener,) = config.servers[0].listeners
    chain = attrs.evolve(
        listener.filter_chains[0], filters=(ip_access, *listener.filter_chains[0].filters)
    )
    listener = attrs.evolve(listener, filter_chains=(chain,))
    config = attrs.evolve(config, servers=(attrs.evolve(config.servers[0], listeners=(listener,)),))
    async with running_proxy(config) as (_, port):
        client = await BoltClient.connect(port)
        with trio.fail_after(5):
            try:
                await client.send(bolt_request(1))
            except trio.BrokenResourceError:
                pass
            with pytest.raises((EOFError, trio.BrokenResourceError)):
                await client.read()
        await client.stream.aclose()
    assert seen == []


# --------------------------------------------------------------------------- network filter


def tcp_doc(ip_access: dict[str, Any], upstream_port: int) -> dict[str, Any]:
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "ingress",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {
                                "filters": [
                                    {"type": "ip_access", "config": ip_access},
                                    {"type": "tcp_proxy", "config": {"cluster": "up"}},
                                ]
                            }
                        ],
                    }
                ]
            }
        ],
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{upstream_port}"}],
                }
            ]
        },
    }


class CountingEcho:
    """A TCP echo upstream that counts the connections it was given."""

    def __init__(self) -> None:
        self.connections = 0

    async def __call__(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass


async def _ended_unserved(port: int) -> bool:
    """Connect, say something, and see the connection end with nothing sent back."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True  # refused before the handshake finished
    async with stream:
        try:
            await stream.send_all(b"hello\n")
        except trio.BrokenResourceError:
            return True
        with trio.fail_after(5):
            try:
                return await stream.receive_some(65536) == b""
            except trio.BrokenResourceError:
                return True  # reset


async def test_network_filter_closes_denied_tcp_proxy_connections(nursery):
    echo = CountingEcho()
    up_port = await start_tcp_server(nursery, echo)
    config = parse_config(tcp_doc({"action": "deny", "ips": ["127.0.0.1"]}, up_port)).config
    server = await nursery.start(Server(config).run)
    port = server.addresses["ingress"][1]
    assert await _ended_unserved(port)
    assert await _ended_unserved(port)
    assert echo.connections == 0  # the upstream never saw a connection


async def test_network_filter_lets_allowed_tcp_proxy_connections_through(nursery):
    echo = CountingEcho()
    up_port = await start_tcp_server(nursery, echo)
    doc = tcp_doc({"action": "allow", "ips": ["127.0.0.0/8", "::1"]}, up_port)
    server = await nursery.start(Server(parse_config(doc).config).run)
    port = server.addresses["ingress"][1]
    with trio.fail_after(5):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"ping")
            got = b""
            while len(got) < 4:
                got += await stream.receive_some(65536)
    assert got == b"ping" and echo.connections == 1


async def test_network_filter_in_front_of_the_http_proxy(nursery):
    up = await start_upstream(nursery)
    config = http_config([to()], {"up": up.port})
    doc = _doc({"action": "deny", "ips": ["127.0.0.1"]}, network=True)
    ip_access = parse_config(doc).config.listeners[0].filter_chains[0].filters[0]
    (listener,) = config.servers[0].listeners
    chain = attrs.evolve(
        listener.filter_chains[0], filters=(ip_access, *listener.filter_chains[0].filters)
    )
    listener = attrs.evolve(listener, filter_chains=(chain,))
    config = attrs.evolve(config, servers=(attrs.evolve(config.servers[0], listeners=(listener,)),))
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            assert await client.closed()  # no HTTP response at all
    assert up.connections == 0


async def test_network_filter_refuses_header_at_start_up():
    doc = _doc({"action": "allow", "ips": ["127.0.0.1"], "header": "x-real-ip"}, network=True)
    config = parse_config(doc).config
    with pytest.raises(ExceptionGroup) as exc:
        async with trio.open_nursery() as nursery:
            await nursery.start(Server(config).run)
    # a start-up error naming the listener and the filter, before any port is bound
    assert exc.group_contains(
        StartupError,
        match="listener 'l' network filter 'ip_access': .*reads no headers",
        depth=None,
    )
