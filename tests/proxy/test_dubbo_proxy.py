"""Apache Dubbo through the proxy: the real dubbo-ssl-python consumer, a provider written here
that decodes the real hessian2 arguments and answers, and raw peers for the proxy's own replies.
"""

from __future__ import annotations

import importlib.util
import threading

import pytest
import trio

from tests import dubbo_frames_data as captured
from tests.http_helpers import closed_port, http_config, start_proxy
from tests.rpc_helpers import BoltClient, DubboPeer, echo_upstream, provider, request
from trio_mesh.protocols.xprotocol import ErrorKind
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.dubbo import DUBBO
from trio_mesh.protocols.xprotocol.hessian2 import (
    Hessian2Reader,
)

needs_client = pytest.mark.skipif(
    importlib.util.find_spec("dubbo_ssl") is None,
    reason="dubbo-ssl-python (test extra) not installed",
)
SERVICE = "org.apache.dubbo.demo.DemoService"


def routes(extra=None):
    return (extra or []) + [
        {
            "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
            "route": {"cluster_name": "up"},
        }
    ]


def dubbo_config(clusters, *, routes_=None, proxy=None):
    return http_config(
        routes=routes_ or routes(),
        clusters=clusters,
        proxy={"downstream_protocol": "dubbo", **(proxy or {})},
    )


def consumer_calls(port: int, threads: int, calls: int, *, version="1.0.0", group="blue"):
    from dubbo_ssl.client import DubboClient

    client = DubboClient(SERVICE, group=group, version=version, host=f"127.0.0.1:{port}")
    results, errors = [], []

    def worker(i: int) -> None:
        for j in range(calls):
            try:
                results.append(((i, j), client.call("add", [i, j, 1000], timeout=10)))
                results.append((f"{i}-{j}", client.call("sayHello", [f"{i}-{j}"], timeout=10)))
            except Exception as exc:
                errors.append(repr(exc))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return results, errors


@needs_client
async def test_dubbo_consumer_through_proxy_to_provider(nursery):
    calls: list = []
    up = await provider(nursery, "p1", calls=calls)
    server, port = await start_proxy(nursery, dubbo_config({"up": up}))
    results, errors = await trio.to_thread.run_sync(consumer_calls, port, 8, 20)
    assert not errors, errors[:3]
    assert len(results) == 320
    for key, value in results:
        if isinstance(key, tuple):
            assert value == key[0] + key[1] + 1000  # every answer is its own call's
        else:
            assert value == f"hello {key} from p1"
    # the provider saw what the consumer sent: service, method, attachments intact
    assert {f.request.method_name for f in calls} == {"add", "sayHello"}
    assert all(f.headers["group"] == "blue" and f.headers["version"] == "1.0.0" for f in calls)
    assert server.clusters.clusters["up"].stats.upstream_cx_total == 1


@needs_client
async def test_routes_on_group_and_version(nursery):
    blue = await provider(nursery, "blue")
    green = await provider(nursery, "green")
    table = routes(
        [
            {
                "match": {"headers": [{"name": "group", "value": "green"}]},
                "route": {"cluster_name": "green"},
            },
        ]
    )
    _, port = await start_proxy(nursery, dubbo_config({"up": blue, "green": green}, routes_=table))

    def both():
        from dubbo_ssl.client import DubboClient

        out = []
        for group in ("blue", "green"):
            c = DubboClient(SERVICE, group=group, version="1.0.0", host=f"127.0.0.1:{port}")
            out.append(c.call("sayHello", [group], timeout=10))
        return out

    assert await trio.to_thread.run_sync(both) == ["hello blue from blue", "hello green from green"]


@needs_client
async def test_consumer_gets_an_error_for_no_route_and_for_a_timeout(nursery):
    from dubbo_ssl.common.exceptions import DubboException

    slow = await provider(nursery, delay=3)
    table = [
        {
            "match": {"headers": [{"name": "service", "value": "other.Service"}]},
            "route": {"cluster_name": "up"},
        },
        {
            "match": {"headers": [{"name": "method", "value": "sayHello"}]},
            "route": {"cluster_name": "up", "timeout": "200ms"},
        },
    ]
    _, port = await start_proxy(nursery, dubbo_config({"up": slow}, routes_=table))

    def call(method):
        from dubbo_ssl.client import DubboClient

        c = DubboClient(SERVICE, group="g", version="1.0.0", host=f"127.0.0.1:{port}")
        return c.call(method, ["x"] if method == "sayHello" else [1, 2], timeout=10)

    with pytest.raises(DubboException):  # add matches no route: SERVICE_NOT_FOUND
        await trio.to_thread.run_sync(call, "add")
    with trio.fail_after(5), pytest.raises(DubboException):  # 200 ms route timeout
        await trio.to_thread.run_sync(call, "sayHello")


# -- raw peers ------------------------------------------------------------------------------


def with_id(raw: bytes, rid: int) -> bytes:
    frame = DUBBO.decode(raw)[0]
    return bytes(DUBBO.set_request_id(frame, rid))


async def test_captured_requests_many_in_flight_keep_their_ids(nursery):
    up = await provider(nursery, "p")
    _, port = await start_proxy(nursery, dubbo_config({"up": up}))
    peer = await DubboPeer.connect(port)
    ids = [0, 1, 2**62, 5, 2**63 - 1, 77] * 50  # ids collide with other clients' and repeat
    wanted = {}
    for k, rid in enumerate(dict.fromkeys(ids)):
        wanted[rid] = k
        await peer.stream.send_all(with_id(captured.SAY_HELLO, rid))
    got = {}
    with trio.fail_after(10):
        for _ in wanted:
            resp = await peer.read()
            got[resp.request_id] = resp.status
    assert got == dict.fromkeys(wanted, df.Status.OK)


async def test_heartbeat_answered_by_proxy_and_errors_for_no_host(nursery):
    _, port = await start_proxy(nursery, dubbo_config({"up": closed_port()}))
    peer = await DubboPeer.connect(port)
    await peer.stream.send_all(captured.HEARTBEAT)
    hb = await peer.read()
    assert hb.is_heartbeat and hb.is_response and hb.request_id == 6 and hb.status == 20
    await peer.stream.send_all(captured.SAY_HELLO)
    err = await peer.read()
    assert err.request_id == 0 and err.status == DUBBO.status_for(ErrorKind.UPSTREAM_FAILURE)
    assert Hessian2Reader(bytes(err.data[16:])).read().startswith("trio-mesh:")


async def test_bolt_and_dubbo_on_one_listener(nursery):
    dub = await provider(nursery, "d")
    bolt = await echo_upstream(nursery)
    table = [
        {
            "match": {"headers": [{"name": "service", "value": "com.example.DemoService"}]},
            "route": {"cluster_name": "dubbo"},
        },
        {
            "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
            "route": {"cluster_name": "bolt"},
        },
    ]
    config = http_config(
        routes=table,
        clusters={"dubbo": dub, "bolt": bolt},
        proxy={"downstream_protocol": "X", "extend_config": {"sub_protocol": "bolt,dubbo"}},
    )
    _, port = await start_proxy(nursery, config)
    b = await BoltClient.connect(port)
    await b.send(request(3, b"b"))
    assert bytes((await b.read()).content) == b"echo:b"
    d = await DubboPeer.connect(port)
    await d.stream.send_all(captured.SAY_HELLO)  # com.example.DemoService.sayHello("world")
    resp = await d.read()
    assert resp.request_id == 0 and resp.status == df.Status.OK
    assert Hessian2Reader(bytes(resp.data[16:])).read() == 1  # kind: a value follows
