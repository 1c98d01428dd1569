"""RPC requests end like HTTP ones: one access log line each (MOSN's RPC variables), through
the listener's observers, for answered calls and for the proxy's own replies."""

from __future__ import annotations

import trio

from tests import dubbo_frames_data as captured
from tests.http_helpers import access_log, closed_port, http_config, read_access_log, running_proxy
from tests.rpc_helpers import BoltClient, DubboPeer, echo_upstream, provider, request
from trio_mesh.protocols.xprotocol import ErrorKind
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus
from trio_mesh.protocols.xprotocol.dubbo import DUBBO

BOLT_SERVICE = "com.example.Echo:1.0"
DUBBO_SERVICE = "com.example.DemoService"  # the captured frames'


def rpc_config(protocol: str, clusters, listener, service: str):
    """One named route for ``service`` only: any other service has no route."""
    routes = [
        {
            "name": "rpc-route",
            "match": {"headers": [{"name": "service", "value": service}]},
            "route": {"cluster_name": "up"},
        }
    ]
    return http_config(
        routes=routes,
        clusters=clusters,
        proxy={"downstream_protocol": protocol},
        listener=listener,
    )


async def test_bolt_calls_write_one_access_log_line_each(nursery, tmp_path):
    up = await echo_upstream(nursery)
    keys, path = access_log(tmp_path)
    async with running_proxy(rpc_config("bolt", {"up": up}, keys, BOLT_SERVICE)) as (_, port):
        client = await BoltClient.connect(port)
        with trio.fail_after(10):
            await client.send(request(1, b"ping", service=BOLT_SERVICE))
            answered = await client.read()
            await client.send(request(2, b"ping", service="com.example.Nobody:1.0"))
            refused = await client.read()
    assert (answered.request_id, answered.status) == (1, ResponseStatus.SUCCESS)
    assert refused.status == BOLT.status_for(ErrorKind.NO_ROUTE)
    lines = read_access_log(path)
    assert len(lines) == 2
    ok, no_route = lines
    assert {k: ok[k] for k in ("protocol", "x-mosn-rpc-service", "x-mosn-rpc-method")} == {
        "protocol": "bolt",
        "x-mosn-rpc-service": BOLT_SERVICE,
        "x-mosn-rpc-method": "echo",
    }
    assert (ok["response_code"], ok["response_flag"], ok["route_name"]) == (200, None, "rpc-route")
    assert (ok["upstream_cluster"], ok["upstream_host"]) == ("up", f"127.0.0.1:{up}")
    assert ok["bytes_received"] > 0 and ok["bytes_sent"] > 0
    assert ok["downstream_local_address"] == f"127.0.0.1:{port}"
    assert ok["duration"] >= ok["response_received_duration"] > 0
    assert no_route["x-mosn-rpc-service"] == "com.example.Nobody:1.0"
    assert (no_route["response_code"], no_route["response_flag"]) == (404, "NR")
    assert (no_route["upstream_cluster"], no_route["route_name"]) == (None, None)


async def test_dubbo_calls_write_one_access_log_line_each(nursery, tmp_path):
    up = await provider(nursery, "p")
    keys, path = access_log(tmp_path)
    down = closed_port()
    config = rpc_config("dubbo", {"up": up}, keys, DUBBO_SERVICE)
    async with running_proxy(config) as (_, port):
        peer = await DubboPeer.connect(port)
        with trio.fail_after(10):
            await peer.stream.send_all(captured.SAY_HELLO)
            answered = await peer.read()
    assert answered.status == df.Status.OK
    async with running_proxy(rpc_config("dubbo", {"up": down}, keys, DUBBO_SERVICE)) as (_, p2):
        peer = await DubboPeer.connect(p2)
        with trio.fail_after(10):
            await peer.stream.send_all(captured.SAY_HELLO)
            failed = await peer.read()
    assert failed.status == DUBBO.status_for(ErrorKind.UPSTREAM_FAILURE)
    ok, connect_failure = read_access_log(path)
    assert {k: ok[k] for k in ("protocol", "x-mosn-rpc-service", "x-mosn-rpc-method")} == {
        "protocol": "dubbo",
        "x-mosn-rpc-service": DUBBO_SERVICE,
        "x-mosn-rpc-method": "sayHello",
    }
    assert (ok["response_code"], ok["response_flag"], ok["upstream_host"]) == (
        200,
        None,
        f"127.0.0.1:{up}",
    )
    assert connect_failure["x-mosn-rpc-method"] == "sayHello"
    assert (connect_failure["response_code"], connect_failure["response_flag"]) == (503, "UF")
    assert connect_failure["upstream_host"] == f"127.0.0.1:{down}"


async def test_an_rpc_error_response_is_logged_as_500(nursery, tmp_path):
    """MOSN's mapping: an upstream answer that is not a success is a 500 in the log and the
    stats, with no response flag (the upstream answered)."""
    up = await provider(nursery, "p")
    keys, path = access_log(tmp_path)
    config = rpc_config("dubbo", {"up": up}, keys, DUBBO_SERVICE)
    async with running_proxy(config) as (server, port):
        peer = await DubboPeer.connect(port)
        with trio.fail_after(10):
            await peer.stream.send_all(captured.SAY_HELLO)
            assert (await peer.read()).status == df.Status.OK
            await peer.stream.send_all(captured.NO_ARGS)
            assert (await peer.read()).status == df.Status.SERVICE_ERROR
        stats = server.listeners["ingress"].stats
        assert (stats.downstream_rq_2xx, stats.downstream_rq_5xx) == (1, 1)
    codes = [
        (e["x-mosn-rpc-method"], e["response_code"], e["response_flag"])
        for e in read_access_log(path)
    ]
    assert codes == [("sayHello", 200, None), ("noArgs", 500, None)]
