"""SOFA bolt through the proxy: anthunder's real client and listener on either side, and raw
peers for what anthunder cannot show (id rewriting under load, out-of-order answers, heartbeats,
timeouts, a lost upstream)."""

from __future__ import annotations

import contextlib
import importlib.util
import random
import threading
from pathlib import Path

import pytest
import trio
import yaml

from tests import bolt_frames as frames
from tests.anthunder_peers import anthunder_listener
from tests.http_helpers import closed_port, http_config, start_proxy, start_raw_server
from tests.rpc_helpers import ANY_SERVICE, BoltClient, echo_upstream, request
from trio_mesh.config import parse_config, read_config
from trio_mesh.protocols.xprotocol import ErrorKind
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus
from trio_mesh.server import Server

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)


def bolt_config(port: int, *, routes=None, proxy=None):
    return http_config(
        routes=ANY_SERVICE if routes is None else routes,
        clusters={"up": port},
        proxy={"downstream_protocol": "bolt", **(proxy or {})},
    )


# -- anthunder on both sides ----------------------------------------------------------------


@pytest.fixture
def anthunder_upstream():
    with anthunder_listener() as port:
        yield port


def _anthunder_calls(proxy_port: int, service: str, n_threads: int, calls: int) -> list:
    from anthunder import SERVICE_MAP, Client
    from mytracer import SpanContext

    SERVICE_MAP[service] = ("127.0.0.1", proxy_port)
    results: list = []
    errors: list = []

    def worker(i: int) -> None:
        client = Client("trio-mesh-test")
        for j in range(calls):
            body = b"\n\x05" + b"%02d:%02d" % (i, j)
            try:
                results.append(
                    (
                        body,
                        client.invoke_sync(
                            service, "sayHello", body, spanctx=SpanContext(), timeout_ms=5000
                        ),
                    )
                )
            except Exception as exc:  # reported below, with the call that failed
                errors.append((body, repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    return results


@needs_anthunder
async def test_anthunder_client_through_proxy_to_anthunder_listener(nursery, anthunder_upstream):
    server, port = await start_proxy(nursery, bolt_config(anthunder_upstream))
    results = await trio.to_thread.run_sync(
        _anthunder_calls, port, frames.SERVICE, 8, 25, abandon_on_cancel=True
    )
    assert len(results) == 200
    for body, answer in results:
        assert answer == b"\n\x05world:" + body  # every answer is its own request's
    stats = server.clusters.clusters["up"].stats
    assert stats.upstream_rq_total == 200
    assert stats.upstream_cx_total == 1  # multiplexed: one upstream connection for all


@needs_anthunder
async def test_anthunder_client_gets_no_processor_for_no_route(nursery):
    from anthunder.exceptions import ServerError

    routes = [
        {
            "match": {"headers": [{"name": "service", "value": "other.Service"}]},
            "route": {"cluster_name": "up"},
        }
    ]
    _, port = await start_proxy(nursery, bolt_config(closed_port(), routes=routes))
    with pytest.raises(ServerError, match="NO_PROCESSOR"):
        await trio.to_thread.run_sync(_anthunder_calls_raising, port, "com.alipay.test.NoRoute:1.0")


def _anthunder_calls_raising(port: int, service: str):
    from anthunder import SERVICE_MAP, Client
    from mytracer import SpanContext

    SERVICE_MAP[service] = ("127.0.0.1", port)
    return Client("trio-mesh-test").invoke_sync(
        service, "sayHello", b"\n\x01x", spanctx=SpanContext(), timeout_ms=5000
    )


# -- raw peers ------------------------------------------------------------------------------


async def test_ten_thousand_calls_hundred_in_flight_out_of_order_answers(nursery):
    up = await echo_upstream(nursery, shuffle=True)
    server, port = await start_proxy(nursery, bolt_config(up))
    total, in_flight = 10_000, 100
    answered = [0, 0, 0, 0]

    async def client(k: int) -> None:
        c = await BoltClient.connect(port)
        per = total // 4
        ids = [random.randrange(1, 2**31) for _ in range(per)]  # ids collide across clients
        sent = 0
        outstanding: dict[int, bytes] = {}
        while sent < per or outstanding:
            while sent < per and len(outstanding) < in_flight // 4:
                rid = ids[sent]
                while rid in outstanding:
                    rid += 1
                body = b"%d-%d" % (k, sent)
                outstanding[rid] = body
                await c.send(request(rid, body))
                sent += 1
            resp = await c.read()
            assert resp.is_response and resp.status == 0
            body = outstanding.pop(resp.request_id)  # the downstream id came back
            assert bytes(resp.content) == b"echo:" + body  # and with its own payload
            answered[k] += 1
        await c.stream.aclose()

    with trio.fail_after(120):
        async with trio.open_nursery() as clients:
            for k in range(4):
                clients.start_soon(client, k)
    assert answered == [total // 4] * 4
    assert server.clusters.clusters["up"].stats.upstream_rq_total == total


async def test_heartbeat_is_answered_by_the_proxy_itself(nursery):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    _, port = await start_proxy(nursery, bolt_config(up))
    c = await BoltClient.connect(port)
    await c.send(BOLT.heartbeat_request(42))
    hb = await c.read()
    assert hb.is_heartbeat and hb.is_response and hb.request_id == 42
    await c.send(request(43, b"x"))
    assert (await c.read()).request_id == 43
    assert not any(f.is_heartbeat for f in seen)  # never forwarded


async def test_oneway_is_forwarded_without_an_answer(nursery):
    seen: list = []
    arrived = trio.Event()
    up = await echo_upstream(nursery, seen=seen, oneway_seen=arrived)
    _, port = await start_proxy(nursery, bolt_config(up))
    c = await BoltClient.connect(port)
    await c.send(request(5, b"fire", oneway=True))
    await c.send(request(6, b"after"))
    resp = await c.read()  # the only answer: none comes for the oneway
    assert resp.request_id == 6 and bytes(resp.content) == b"echo:after"
    with trio.fail_after(5):
        await arrived.wait()
    assert sorted((bytes(f.content), f.is_oneway) for f in seen) == [
        (b"after", False),
        (b"fire", True),
    ]


async def test_route_timeout_and_frame_timeout_answer_timeout(nursery):
    up = await echo_upstream(nursery, delay=5)
    routes = [
        {
            "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
            "route": {"cluster_name": "up", "timeout": "200ms"},
        }
    ]
    _, port = await start_proxy(nursery, bolt_config(up, routes=routes))
    c = await BoltClient.connect(port)
    with trio.fail_after(3):
        await c.send(request(1, b"slow"))
        resp = await c.read()
    assert resp.request_id == 1 and resp.status == ResponseStatus.TIMEOUT
    # the frame's own timeout (100 ms) is shorter than the route's default 15 s
    _, port2 = await start_proxy(nursery, bolt_config(up))
    c2 = await BoltClient.connect(port2)
    with trio.fail_after(3):
        await c2.send(request(2, b"slow", timeout_ms=100))
        resp = await c2.read()
    assert resp.request_id == 2 and resp.status == ResponseStatus.TIMEOUT


async def test_no_upstream_and_lost_upstream_get_error_replies(nursery):
    _, port = await start_proxy(nursery, bolt_config(closed_port()))
    c = await BoltClient.connect(port)
    await c.send(request(9, b"x"))
    resp = await c.read()
    assert resp.request_id == 9 and resp.status == BOLT.status_for(ErrorKind.UPSTREAM_FAILURE)

    async def dies_after_reading(stream: trio.SocketStream) -> None:
        peer = BoltClient(stream)
        await peer.read()
        await peer.read()
        await stream.aclose()  # two requests in flight, then gone

    up = await start_raw_server(nursery, dies_after_reading)
    _, port = await start_proxy(nursery, bolt_config(up))
    c = await BoltClient.connect(port)
    await c.send(request(1, b"a"))
    await c.send(request(2, b"b"))
    got = {(await c.read()).request_id, (await c.read()).request_id}
    assert got == {1, 2}


async def test_a_malformed_frame_closes_only_its_connection(nursery):
    up = await echo_upstream(nursery)
    _, port = await start_proxy(nursery, bolt_config(up))
    bystander = await BoltClient.connect(port)
    bad = await trio.open_tcp_stream("127.0.0.1", port)
    await bad.send_all(b"\x01\x01\x00\x07" + b"\x00" * 30)  # cmdcode 7 is no bolt command
    with trio.fail_after(3):
        assert await bad.receive_some(100) == b""  # closed
    await bystander.send(request(3, b"still"))
    assert bytes((await bystander.read()).content) == b"echo:still"


async def test_a_frame_over_the_limit_is_refused_before_its_body(nursery):
    up = await echo_upstream(nursery)
    config = bolt_config(up, proxy={"xprotocol": {"max_frame_bytes": 1024}})
    _, port = await start_proxy(nursery, config)
    c = await BoltClient.connect(port)
    big = request(1, b"x" * 4096)
    await c.stream.send_all(bytes(big.data)[:100])  # only the header of a 4 KiB frame
    with trio.fail_after(3):
        assert await c.stream.receive_some(100) == b""


async def test_x_with_sub_protocols_and_auto_detect_bolt(nursery):
    up = await echo_upstream(nursery)
    for proxy in (
        {"downstream_protocol": "X", "extend_config": {"sub_protocol": "bolt"}},
        {"downstream_protocol": "Auto"},
    ):
        config = http_config(routes=ANY_SERVICE, clusters={"up": up}, proxy=proxy)
        _, port = await start_proxy(nursery, config)
        c = await BoltClient.connect(port)
        await c.send(request(77, b"hi"))
        resp = await c.read()
        assert resp.request_id == 77 and bytes(resp.content) == b"echo:hi"


async def test_idle_upstream_connections_get_heartbeats_and_are_replaced_when_unanswered(
    nursery,
):
    answered = trio.Event()

    async def answers(stream: trio.SocketStream) -> None:
        peer = BoltClient(stream)
        try:
            while True:
                frame = await peer.read()
                if frame.is_heartbeat:
                    await stream.send_all(bytes(BOLT.heartbeat_reply(frame).data))
                    answered.set()
                else:
                    resp = BOLT.build_response(frame.request_id, 0, content=b"ok")
                    await stream.send_all(bytes(resp.data))
        except (EOFError, trio.BrokenResourceError):
            pass

    keepalive = {"xprotocol": {"heartbeat_interval": "100ms", "heartbeat_timeout": "100ms"}}
    up = await start_raw_server(nursery, answers)
    server, port = await start_proxy(nursery, bolt_config(up, proxy=keepalive))
    c = await BoltClient.connect(port)
    await c.send(request(1, b"x"))
    await c.read()
    with trio.fail_after(5):
        await answered.wait()  # the idle connection was checked, and it answered
    await c.send(request(2, b"y"))
    assert (await c.read()).status == 0
    assert server.clusters.clusters["up"].stats.upstream_cx_total == 1  # still the same one

    silent_closed = trio.Event()

    async def ignores_heartbeats(stream: trio.SocketStream) -> None:
        peer = BoltClient(stream)
        try:
            while True:
                frame = await peer.read()
                if not frame.is_heartbeat:
                    resp = BOLT.build_response(frame.request_id, 0, content=b"ok")
                    await stream.send_all(bytes(resp.data))
        except (EOFError, trio.BrokenResourceError):
            silent_closed.set()  # the proxy gave up on this connection

    up2 = await start_raw_server(nursery, ignores_heartbeats)
    server2, port2 = await start_proxy(nursery, bolt_config(up2, proxy=keepalive))
    c2 = await BoltClient.connect(port2)
    await c2.send(request(1, b"x"))
    await c2.read()
    with trio.fail_after(5):
        await silent_closed.wait()
    await c2.send(request(2, b"y"))
    assert (await c2.read()).status == 0  # on a new connection
    assert server2.clusters.clusters["up"].stats.upstream_cx_total == 2


async def test_drain_finishes_requests_in_flight_and_takes_no_new_ones(nursery):
    up = await echo_upstream(nursery, delay=0.3)
    server, port = await start_proxy(nursery, bolt_config(up))
    c = await BoltClient.connect(port)
    await c.send(request(1, b"in-flight"))
    with trio.fail_after(5):
        while not server.listeners["ingress"].connections or not any(
            conn.busy for conn in server.listeners["ingress"].connections
        ):
            await trio.sleep(0)  # until the proxy has the request (a scheduler turn, no wait)
        done = await server.drain(5)
    assert done
    resp = await c.read()
    assert resp.request_id == 1 and bytes(resp.content) == b"echo:in-flight"
    with pytest.raises((EOFError, trio.BrokenResourceError)):
        await c.send(request(2, b"late"))
        await c.read()


CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("name", sorted(p.name for p in CONF.glob("*.yaml")))
def test_every_example_config_validates(name):
    loaded = read_config(CONF / name)
    assert loaded.config.listeners and not loaded.warnings


async def test_conf_bolt_yaml_serves_a_call(nursery):
    doc = yaml.safe_load((CONF / "bolt.yaml").read_text())
    up = await echo_upstream(nursery)
    doc["servers"][0]["listeners"][0]["address"] = "127.0.0.1:0"
    doc["cluster_manager"]["clusters"][0]["hosts"][0]["address"] = f"127.0.0.1:{up}"
    server = await nursery.start(Server(parse_config(doc).config).run)
    c = await BoltClient.connect(server.addresses["bolt_ingress"][1])
    await c.send(request(8, b"conf"))  # frames.SERVICE is com.alipay.*: the route's regex
    resp = await c.read()
    assert resp.request_id == 8 and bytes(resp.content) == b"echo:conf"
    await c.send(request(9, b"x", service="org.other.Service"))
    assert (await c.read()).status == BOLT.status_for(ErrorKind.NO_ROUTE)
    # Its bolt heartbeat check passes against the provider (the first round starts at once).
    stats = server.clusters.get("bolt_provider").stats
    with trio.fail_after(5):
        while stats.health_check_success < 1:
            await trio.sleep(0.02)
    assert stats.health_check_failure == 0


async def test_mosn_style_any_service_route_without_regex_flag(nursery):
    up = await echo_upstream(nursery)
    routes = [
        {
            "match": {"headers": [{"name": "service", "value": ".*"}]},
            "route": {"cluster_name": "up"},
        }
    ]
    _, port = await start_proxy(nursery, bolt_config(up, routes=routes))
    c = await BoltClient.connect(port)
    await c.send(request(4, b"any", service="whatever.Service"))
    assert bytes((await c.read()).content) == b"echo:any"


# -- found in review: each failed before its fix --------------------------------------------


async def test_an_upstream_flooding_heartbeats_then_closing_does_not_stop_the_server(nursery):
    done = trio.Event()

    async def floods(stream: trio.SocketStream) -> None:
        first = await BoltClient(stream).read()
        resp = BOLT.build_response(first.request_id, 0, content=b"ok")
        heartbeats = b"".join(bytes(BOLT.heartbeat_request(i).data) for i in range(1, 2000))
        await stream.send_all(bytes(resp.data) + heartbeats)
        await stream.aclose()  # gone with the proxy's replies unread: they meet a RST
        done.set()

    up = await start_raw_server(nursery, floods)
    _, port = await start_proxy(nursery, bolt_config(up))
    c = await BoltClient.connect(port)
    await c.send(request(1, b"x"))
    assert (await c.read()).status == 0
    await done.wait()
    c2 = await BoltClient.connect(port)
    await c2.send(request(2, b"y"))
    with trio.fail_after(5):
        resp = await c2.read()  # answered (by a new connection or an error): the server lives
    assert resp.request_id == 2


async def test_a_malformed_upstream_frame_fails_its_requests_at_once(nursery):
    closed = trio.Event()

    async def garbage(stream: trio.SocketStream) -> None:
        await BoltClient(stream).read()
        await stream.send_all(b"\x07" * 64)
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):
                pass
        closed.set()

    up = await start_raw_server(nursery, garbage)
    routes = [
        {
            "match": {"headers": [{"name": "service", "value": ".*"}]},
            "route": {"cluster_name": "up", "timeout": "0s"},
        }
    ]  # no timeout to save it
    _, port = await start_proxy(nursery, bolt_config(up, routes=routes))
    c = await BoltClient.connect(port)
    await c.send(request(1, b"x"))
    with trio.fail_after(5):
        resp = await c.read()
    assert resp.status == BOLT.status_for(ErrorKind.UPSTREAM_RESET)
    with trio.fail_after(5):
        await closed.wait()  # and the proxy closed that connection


async def test_a_timeout_mid_send_does_not_corrupt_the_next_frame(nursery):
    reading = trio.Event()
    decoded: list = []

    async def slow_reader(stream: trio.SocketStream) -> None:
        await reading.wait()  # not reading yet: the proxy's send of the big frame blocks
        peer = BoltClient(stream)
        try:
            while True:
                frame = await peer.read()
                decoded.append(bytes(frame.content[:6]))
                resp = BOLT.build_response(frame.request_id, 0, content=b"ok")
                await stream.send_all(bytes(resp.data))
        except (EOFError, trio.BrokenResourceError):
            pass  # the connection the torn frame was on: reset by the proxy

    up = await start_raw_server(nursery, slow_reader)
    routes = [
        {
            "match": {"headers": [{"name": "service", "value": ".*"}]},
            "route": {"cluster_name": "up", "timeout": "300ms"},
        }
    ]
    _, port = await start_proxy(nursery, bolt_config(up, routes=routes))
    c = await BoltClient.connect(port)
    await c.send(request(1, b"A" * 12_000_000))
    assert (await c.read()).status == ResponseStatus.TIMEOUT
    reading.set()
    with trio.fail_after(10):
        await c.send(request(2, b"second"))
        resp = await c.read()
    assert resp.request_id == 2 and resp.status == 0
    assert decoded[-1] == b"second"  # the upstream read a whole frame, not a torn one


@pytest.mark.parametrize(
    ("proxy", "error"),
    [
        ({"downstream_protocol": "X"}, "extend_config: downstream_protocol X needs sub_protocol"),
        (
            {"downstream_protocol": "bolt", "upstream_protocol": "Http2"},
            "upstream_protocol: Http2: an RPC request goes upstream in its own protocol",
        ),
        (
            {"downstream_protocol": "Http1", "upstream_protocol": "dubbo"},
            "upstream_protocol: dubbo: an HTTP request cannot go upstream as RPC",
        ),
        (
            {"downstream_protocol": "bolt", "extend_config": {"sub_protocol": "dubbo"}},
            "extend_config: only downstream_protocol X reads extend_config",
        ),
    ],
)
def test_rpc_protocol_config_errors_name_their_path(proxy, error):
    from trio_mesh.config import ConfigError

    with pytest.raises(ConfigError) as info:
        bolt_config(1, proxy=proxy)
    (line,) = info.value.errors
    assert line.startswith("servers[0].listeners[0].filter_chains[0].filters[0].config.")
    assert error in line, line


async def test_an_unknown_sub_protocol_stops_start_up_before_binding(nursery):
    from trio_mesh.errors import StartupError

    config = bolt_config(
        closed_port(),
        proxy={"downstream_protocol": "X", "extend_config": {"sub_protocol": "bolt,nosuch"}},
    )
    with pytest.raises(StartupError, match="no RPC codec 'nosuch'"):
        await nursery.start(Server(config).run)
