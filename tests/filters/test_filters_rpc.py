"""Stream filters on RPC: the same filter objects as HTTP, run by the RPC proxy on the frame's
header view and payload, with the real bolt client (anthunder) and the real Dubbo consumer
(dubbo-ssl-python) downstream, and raw peers where a client cannot show what is on the wire."""

from __future__ import annotations

import importlib.util
import logging
import uuid

import pytest
import trio

from tests import bolt_frames as frames
from tests import dubbo_frames_data as captured
from tests import filter_helpers
from tests.http_helpers import http_config, start_proxy
from tests.rpc_helpers import BoltClient, DubboPeer, echo_upstream, provider, request
from trio_mesh.protocols.xprotocol import ErrorKind, register_protocol, unregister_protocol
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT, BoltCodec, ResponseStatus
from trio_mesh.protocols.xprotocol.dubbo import DUBBO
from trio_mesh.protocols.xprotocol.hessian2 import Hessian2Reader

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)
needs_consumer = pytest.mark.skipif(
    importlib.util.find_spec("dubbo_ssl") is None, reason="dubbo-ssl-python not installed"
)
DEMO = "org.apache.dubbo.demo.DemoService"


def any_service(**route) -> dict:
    return {
        "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
        "route": {"cluster_name": "up"},
        **route,
    }


def when_header(name: str, **route) -> dict:
    """A route for requests carrying header ``name`` (RPC routes match on headers)."""
    return {
        "match": {
            "headers": [
                {"name": "service", "value": ".*", "regex": True},
                {"name": name, "value": ".*", "regex": True},
            ]
        },
        "route": {"cluster_name": "up"},
        **route,
    }


def rpc_config(protocol: str, up: int, filters: list, routes=None, **proxy):
    return http_config(
        routes=routes or [any_service()],
        clusters={"up": up},
        proxy={"downstream_protocol": protocol, **proxy},
        listener={"stream_filters": filters},
    )


def tags(*values: str, kind: str = "t_tag") -> list[dict]:
    return [{"type": kind, "config": {"value": v}} for v in values]


@pytest.fixture(autouse=True)
def _recorded():
    filter_helpers.RPC_RECORDED.clear()
    yield filter_helpers.RPC_RECORDED
    filter_helpers.RPC_RECORDED.clear()


@pytest.fixture
def svc() -> str:
    """A service name of this test's own (anthunder's SERVICE_MAP is write-once)."""
    return f"com.alipay.test.F{uuid.uuid4().hex}:1.0"


def anthunder_call(port: int, service: str, body: bytes = b"\n\x01x", **headers: str) -> bytes:
    """One call through anthunder's sync client (its connections are pooled per address: the
    calls of a test share one)."""
    from anthunder import SERVICE_MAP, Client
    from mytracer import SpanContext

    if service not in SERVICE_MAP:
        SERVICE_MAP[service] = ("127.0.0.1", port)
    return Client("trio-mesh-test").invoke_sync(
        service, "sayHello", body, spanctx=SpanContext(), timeout_ms=5000, **headers
    )


async def in_thread(fn, *args, **kw):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kw), abandon_on_cancel=True)


async def server_error(fn, *args, **kw) -> str:
    """The ServerError a call raises, as text."""
    from anthunder.exceptions import ServerError

    with pytest.raises(ServerError) as exc:
        await in_thread(fn, *args, **kw)
    return str(exc.value)


# -- bolt -----------------------------------------------------------------------------------


@needs_anthunder
async def test_bolt_filters_run_in_order_and_the_tag_reaches_the_upstream_header_map(nursery, svc):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    filters = [*tags("a", "b"), {"type": "t_rpc_record"}]
    server, port = await start_proxy(nursery, rpc_config("bolt", up, filters))
    answer = await in_thread(anthunder_call, port, svc, body=b"\n\x05hello")
    assert answer == b"echo:\n\x05hello"  # the content went up and came back untouched
    (got,) = seen
    raw = got.raw_headers
    assert raw["x-tag"] == "a,b"  # config order, in the bolt header map itself
    assert raw["sofa_head_target_service"] == svc and got.method == "sayHello"
    assert bytes(got.content) == b"\n\x05hello"
    events = filter_helpers.RPC_RECORDED["default"]
    kinds = [e[0] for e in events]
    assert kinds == ["request_headers", "request_data", "response_headers", "response_data"]
    _, headers, end_stream, ctx = events[0]
    assert headers["x-tag"] == "a,b" and end_stream is False
    assert ctx["protocol"] == "bolt" and ctx["is_rpc"] and ctx["method"] == "sayHello"
    assert ctx["path"] == svc and ctx["cluster"] == "up" and ctx["route"]
    assert ctx["listener"] == "ingress" and ctx["remote"][0] == "127.0.0.1"
    assert ctx["local"] == ("127.0.0.1", port)
    assert events[1] == ("request_data", b"\n\x05hello", True)
    _, _, status, _, upstream_host = events[2]
    assert status == ResponseStatus.SUCCESS and upstream_host == f"127.0.0.1:{up}"
    assert events[3] == ("response_data", b"echo:\n\x05hello", True)

    # The response tags go the other way (reverse order) into the response's header map, and
    # rewritten requests still get upstream ids and their own ids back, many in flight.
    c = await BoltClient.connect(port)
    ids = [7, 0xFFFFFFFF, 1, 7 + 1000]
    for rid in ids:
        await c.send(request(rid, b"%d" % rid))
    with trio.fail_after(5):
        answers = {}
        for _ in ids:
            resp = await c.read()
            answers[resp.request_id] = (bytes(resp.content), resp.raw_headers.get("x-tag"))
    assert answers == {rid: (b"echo:%d" % rid, "b,a") for rid in ids}
    assert server.clusters.clusters["up"].stats.upstream_rq_total == 1 + len(ids)


async def test_bolt_v2_crc_request_rewritten_and_values_outside_latin1_kept(nursery):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    _, port = await start_proxy(nursery, rpc_config("bolt", up, tags("a")))
    c = await BoltClient.connect(port)
    headers = {"service": frames.SERVICE, "sofa_head_method_name": "echo", "who": "张三"}
    await c.send(BOLT.build_request(5, headers, b"crc", version=2, ver1=2, switch=1))
    with trio.fail_after(5):
        resp = await c.read()
    assert resp.request_id == 5 and resp.status == 0 and bytes(resp.content) == b"echo:crc"
    (got,) = seen  # decoded by the upstream: its CRC was recomputed
    assert got.crc and got.raw_headers["x-tag"] == "a" and got.raw_headers["who"] == "张三"


@needs_anthunder
async def test_bolt_deny_is_the_error_status_the_client_sees_before_no_route(nursery, svc):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    filters = [
        {"type": "t_deny", "config": {"status": 429, "header": "x-deny"}},
        {"type": "t_rpc_record"},
    ]
    routes = [
        {"match": {"headers": [{"name": "service", "value": svc}]}, "route": {"cluster_name": "up"}}
    ]
    _, port = await start_proxy(nursery, rpc_config("bolt", up, filters, routes))
    # 429 is OVERFLOW: bolt's SERVER_THREADPOOL_BUSY, as anthunder reports it
    deny = {"x-deny": "1"}
    assert "SERVER_THREADPOOL_BUSY" in await server_error(anthunder_call, port, svc, **deny)
    assert await in_thread(anthunder_call, port, svc) == b"echo:\n\x01x"
    # No route: the filters still see the request first (Envoy's order), so the deny wins...
    other = svc.replace(".F", ".Other")
    assert "SERVER_THREADPOOL_BUSY" in await server_error(anthunder_call, port, other, **deny)
    # ...and without it the proxy's own NO_PROCESSOR answers.
    assert "NO_PROCESSOR" in await server_error(anthunder_call, port, other)
    assert len(seen) == 1  # only the allowed call reached the upstream
    # the recorder (second) saw only what the deny let through: route and cluster or None
    seen_ctx = [
        (e[3]["path"], e[3]["route"], e[3]["cluster"])
        for e in filter_helpers.RPC_RECORDED["default"]
        if e[0] == "request_headers"
    ]
    assert seen_ctx == [(svc, True, "up"), (other, False, None)]


@needs_anthunder
async def test_bolt_a_raising_filter_fails_only_its_own_request(nursery, svc, caplog):
    up = await echo_upstream(nursery)
    filters = [{"type": "t_boom", "config": {"where": "request_headers"}}]
    routes = [
        when_header("x-boom-request"),
        when_header("x-boom-response", per_filter_config={"t_boom": {"where": "response_headers"}}),
        any_service(per_filter_config={"t_boom": {"disabled": True}}),
    ]
    _, port = await start_proxy(nursery, rpc_config("bolt", up, filters, routes))
    with caplog.at_level(logging.ERROR, logger="trio_mesh.filters"):
        # anthunder sees bolt's status for INTERNAL, UNKNOWN
        assert "UNKNOWN" in await server_error(anthunder_call, port, svc, **{"x-boom-request": "1"})
        assert "UNKNOWN" in await server_error(
            anthunder_call, port, svc, **{"x-boom-response": "1"}
        )
        assert await in_thread(anthunder_call, port, svc) == b"echo:\n\x01x"
        # anthunder's client does not keep one connection; a raw one shows the connection
        # goes on: failed, served, failed after the upstream answered, served
        c = await BoltClient.connect(port)
        for rid, header in enumerate(["x-boom-request", None, "x-boom-response", None], 1):
            headers = {"service": svc, **({header: "1"} if header else {})}
            await c.send(BOLT.build_request(rid, headers, b"%d" % rid))
            with trio.fail_after(5):
                resp = await c.read()
            assert resp.request_id == rid
            if header:
                assert resp.status == BOLT.status_for(ErrorKind.INTERNAL)
            else:
                assert resp.status == 0 and bytes(resp.content) == b"echo:%d" % rid
    assert "'t_boom' failed in on_request_headers" in caplog.text
    assert "'t_boom' failed in on_response_headers" in caplog.text


@needs_anthunder
async def test_bolt_per_filter_config_override_and_disable_on_header_routes(nursery, svc):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    routes = [
        when_header("x-special", per_filter_config={"t_tag": {"value": "route"}}),
        when_header("x-off", per_filter_config={"t_tag": {"disabled": True}}),
        any_service(),
    ]
    _, port = await start_proxy(nursery, rpc_config("bolt", up, tags("listener"), routes))
    for headers in ({"x-special": "1"}, {"x-off": "1"}, {}, {"x-special": "2"}):
        assert await in_thread(anthunder_call, port, svc, **headers) == b"echo:\n\x01x"
    assert [f.raw_headers.get("x-tag") for f in seen] == ["route", None, "listener", "route"]


@needs_anthunder
async def test_bolt_oneway_refused_by_a_filter_is_dropped_without_an_answer(nursery, svc, caplog):
    seen: list = []
    arrived = trio.Event()
    up = await echo_upstream(nursery, seen=seen, oneway_seen=arrived)
    filters = [{"type": "t_deny", "config": {"header": "x-deny"}}]
    _, port = await start_proxy(nursery, rpc_config("bolt", up, filters))

    def oneway_then_call(**headers) -> bytes:
        from anthunder import SERVICE_MAP, Client
        from mytracer import SpanContext

        if svc not in SERVICE_MAP:
            SERVICE_MAP[svc] = ("127.0.0.1", port)
        client = Client("trio-mesh-test")
        client.invoke_oneway(svc, "sayHello", b"\n\x01o", spanctx=SpanContext(), **headers)
        # a stray answer to the oneway on this connection would fail anthunder's id check
        return client.invoke_sync(
            svc, "sayHello", b"\n\x01s", spanctx=SpanContext(), timeout_ms=5000
        )

    with caplog.at_level(logging.INFO, logger="trio_mesh.proxy"):
        assert await in_thread(oneway_then_call, **{"x-deny": "1"}) == b"echo:\n\x01s"
    assert "oneway request refused by a stream filter" in caplog.text
    assert [bytes(f.content) for f in seen] == [b"\n\x01s"]
    assert await in_thread(oneway_then_call) == b"echo:\n\x01s"  # allowed: forwarded
    with trio.fail_after(5):
        await arrived.wait()
    # on one raw connection: the refused oneway gets nothing, the next request its answer
    c = await BoltClient.connect(port)
    await c.send(BOLT.build_request(1, {"service": svc, "x-deny": "1"}, b"o", oneway=True))
    await c.send(request(2, b"s"))
    with trio.fail_after(5):
        resp = await c.read()
    assert resp.request_id == 2 and bytes(resp.content) == b"echo:s"


async def test_bolt_reply_rpc_error_and_close(nursery):
    up = await echo_upstream(nursery)
    filters = [
        {
            "type": "t_rpc_reply",
            "config": {"status": 403, "rpc_error": "TIMEOUT", "close": True, "header": "x-bye"},
        }
    ]
    _, port = await start_proxy(nursery, rpc_config("bolt", up, filters))
    c = await BoltClient.connect(port)
    await c.send(request(1, b"ok"))
    assert bytes((await c.read()).content) == b"echo:ok"
    bye = BOLT.build_request(2, {"service": frames.SERVICE, "x-bye": "1"}, b"x")
    await c.send(bye)
    with trio.fail_after(5):
        resp = await c.read()
        assert resp.request_id == 2 and resp.status == ResponseStatus.TIMEOUT  # rpc_error wins
        with pytest.raises(EOFError):  # close: the proxy closes the connection after it
            await c.read()


async def test_bolt_response_local_reply_and_body_replacement_fail_the_request(nursery, caplog):
    up = await echo_upstream(nursery)
    routes = [
        when_header("x-upper", per_filter_config={"t_rpc_reply": {"disabled": True}}),
        any_service(per_filter_config={"t_upper": {"disabled": True}}),
    ]
    filters = [
        {"type": "t_upper"},
        {"type": "t_rpc_reply", "config": {"status": 503, "where": "response_data"}},
    ]
    _, port = await start_proxy(nursery, rpc_config("bolt", up, filters, routes))
    c = await BoltClient.connect(port)
    await c.send(request(1, b"x"))  # the upstream answered; the response filter replaces it
    assert (await c.read()).status == BOLT.status_for(ErrorKind.OVERFLOW)
    with caplog.at_level(logging.ERROR, logger="trio_mesh.proxy"):
        await c.send(BOLT.build_request(2, {"service": frames.SERVICE, "x-upper": "1"}, b"y"))
        resp = await c.read()
    assert resp.request_id == 2 and resp.status == BOLT.status_for(ErrorKind.INTERNAL)
    assert "replaced the body of a bolt request" in caplog.text


class PlainBolt(BoltCodec):
    """Bolt without header rewriting: a codec that keeps the interface's default."""

    name = "plainbolt"

    def with_headers(self, frame, headers):
        return super(BoltCodec, self).with_headers(frame, headers)


async def test_a_codec_without_header_rewriting_fails_changed_requests_only(nursery, caplog):
    register_protocol("plainbolt", PlainBolt())
    try:
        seen: list = []
        up = await echo_upstream(nursery, seen=seen)
        routes = [
            when_header("x-tagged"),
            any_service(per_filter_config={"t_req_tag": {"disabled": True}}),
        ]
        config = rpc_config(
            "X",
            up,
            tags("a", kind="t_req_tag"),
            routes,
            extend_config={"sub_protocol": "plainbolt"},
        )
        _, port = await start_proxy(nursery, config)
        c = await BoltClient.connect(port)
        with caplog.at_level(logging.ERROR, logger="trio_mesh.proxy"):
            tagged = {"service": frames.SERVICE, "x-tagged": "1"}
            await c.send(BOLT.build_request(1, tagged, b"t"))
            assert (await c.read()).status == BOLT.status_for(ErrorKind.INTERNAL)
        assert "the plainbolt codec cannot rewrite them" in caplog.text
        await c.send(request(2, b"plain"))  # unchanged headers: forwarded as they are
        assert bytes((await c.read()).content) == b"echo:plain"
        assert [bytes(f.content) for f in seen] == [b"plain"]
    finally:
        unregister_protocol("plainbolt")


# -- dubbo ----------------------------------------------------------------------------------


def consumer_call(port: int, method: str = "sayHello", args=("x",), group: str = "blue"):
    from dubbo_ssl.client import DubboClient

    client = DubboClient(DEMO, group=group, version="1.0.0", host=f"127.0.0.1:{port}")
    return client.call(method, list(args), timeout=10)


async def consumer_error(*args) -> str:
    from dubbo_ssl.common.exceptions import DubboException

    with pytest.raises(DubboException) as exc:
        await in_thread(consumer_call, *args)
    return str(exc.value)


@needs_consumer
async def test_dubbo_request_tags_reach_the_provider_attachments_in_order(nursery):
    calls: list = []
    up = await provider(nursery, "p", calls=calls)
    filters = [*tags("a", "b", kind="t_req_tag"), {"type": "t_rpc_record"}]
    _, port = await start_proxy(nursery, rpc_config("dubbo", up, filters))
    assert await in_thread(consumer_call, port, "add", (2, 3)) == 5  # arguments intact
    assert await in_thread(consumer_call, port, "sayHello", ("w",)) == "hello w from p"
    assert [f.request.attachments["x-tag"] for f in calls] == ["a,b", "a,b"]
    assert all(f.request.attachments["group"] == "blue" for f in calls)
    events = filter_helpers.RPC_RECORDED["default"]
    ctx = events[0][3]
    assert ctx["protocol"] == "dubbo" and ctx["path"] == DEMO and ctx["method"] == "add"
    # the payload as the consumer sent it (the tag went into the copy sent upstream)
    at = calls[0].request.attachments_offset
    assert events[1][0] == "request_data" and events[1][1][:at] == bytes(
        calls[0].data[16 : 16 + at]
    )
    assert b"x-tag" not in events[1][1]
    response = next(e for e in events if e[0] == "response_headers")
    assert response[2] == df.Status.OK and response[4] == f"127.0.0.1:{up}"


@needs_consumer
async def test_dubbo_deny_and_raise_fail_only_their_call(nursery):
    calls: list = []
    up = await provider(nursery, "p", calls=calls)
    filters = [
        {"type": "t_deny", "config": {"status": 403}},
        {"type": "t_boom", "config": {"where": "request_headers"}},
    ]
    routes = [
        {
            "match": {"headers": [{"name": "method", "value": "add"}]},
            "route": {"cluster_name": "up"},
            "per_filter_config": {"t_deny": {"disabled": True}},
        },  # add: only t_boom
        {
            "match": {"headers": [{"name": "group", "value": "open"}]},
            "route": {"cluster_name": "up"},
            "per_filter_config": {"t_deny": {"disabled": True}, "t_boom": {"disabled": True}},
        },
        any_service(),
    ]
    server, port = await start_proxy(nursery, rpc_config("dubbo", up, filters, routes))
    # 403 is NO_ROUTE: SERVICE_NOT_FOUND, with the filter's body as the message
    assert "denied by t_deny" in await consumer_error(port, "sayHello", ("x",))
    assert "stream filter failed" in await consumer_error(port, "add", (1, 2))
    assert await in_thread(consumer_call, port, "sayHello", ("ok",), "open") == "hello ok from p"
    assert "denied by t_deny" in await consumer_error(port, "sayHello", ("x",))
    assert [f.request.method_name for f in calls] == ["sayHello"]
    assert server.listeners["ingress"].stats.downstream_cx_total == 1


async def test_dubbo_error_statuses_and_a_response_header_change_it_cannot_carry(nursery, caplog):
    up = await provider(nursery, "p")
    routes = [
        when_header("x-respond", per_filter_config={"t_deny": {"disabled": True}}),
        any_service(per_filter_config={"t_tag": {"disabled": True}}),
    ]
    filters = [{"type": "t_deny", "config": {"status": 429, "header": "x-deny"}}, {"type": "t_tag"}]
    _, port = await start_proxy(nursery, rpc_config("dubbo", up, filters, routes))
    peer = await DubboPeer.connect(port)

    def with_attachment(raw: bytes, name: str, rid: int) -> bytes:
        frame = DUBBO.decode(raw)[0]
        changed = DUBBO.with_headers(frame, {**frame.headers, name: "1"})
        return bytes(DUBBO.set_request_id(changed, rid))

    await peer.stream.send_all(with_attachment(captured.SAY_HELLO, "x-deny", 11))
    resp = await peer.read()
    assert resp.request_id == 11
    assert resp.status == df.Status.SERVER_THREADPOOL_EXHAUSTED_ERROR
    assert Hessian2Reader(bytes(resp.data[16:])).read() == "denied by t_deny"
    # t_tag tags the response too: a Dubbo response's attachments cannot be rewritten
    with caplog.at_level(logging.ERROR, logger="trio_mesh.proxy"):
        await peer.stream.send_all(with_attachment(captured.SAY_HELLO, "x-respond", 12))
        resp = await peer.read()
    assert resp.request_id == 12 and resp.status == DUBBO.status_for(ErrorKind.INTERNAL)
    assert "dubbo codec cannot rewrite them" in caplog.text
    await peer.stream.send_all(captured.SAY_HELLO)  # untouched: served
    resp = await peer.read()
    assert resp.request_id == 0 and resp.status == df.Status.OK


async def test_dubbo_service_changed_by_a_filter_is_refused_and_logged(nursery, caplog):
    up = await provider(nursery, "p")
    filters = [{"type": "t_tag", "config": {"name": "method", "value": "evil"}}]
    _, port = await start_proxy(nursery, rpc_config("dubbo", up, filters))
    peer = await DubboPeer.connect(port)
    with caplog.at_level(logging.ERROR, logger="trio_mesh.proxy"):
        await peer.stream.send_all(captured.SAY_HELLO)
        resp = await peer.read()
    assert resp.status == DUBBO.status_for(ErrorKind.INTERNAL)
    assert "the invocation's own" in caplog.text
