"""RPC draining, both ways: an upstream that announces its shutdown (Dubbo READONLY event, bolt
GoAway) mid-traffic loses no request, its connection takes nothing new and is closed after its
calls in flight; the proxy's own drain tells a Dubbo client READONLY and answers what is in
flight. Real clients (dubbo-ssl-python, anthunder) and raw peers on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import threading

import pytest
import trio

from tests import dubbo_frames_data as captured
from tests.http_helpers import http_config, start_proxy, start_raw_server
from tests.rpc_helpers import (
    ANY_SERVICE,
    BoltClient,
    DubboPeer,
    arguments,
    echo_upstream,
    provider,
    request,
)
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT
from trio_mesh.protocols.xprotocol.dubbo import DUBBO
from trio_mesh.protocols.xprotocol.hessian2 import Hessian2Reader, encode_long, encode_string
from trio_mesh.proxy import xprotocol as xprotocol_proxy

needs_dubbo_client = pytest.mark.skipif(
    importlib.util.find_spec("dubbo_ssl") is None,
    reason="dubbo-ssl-python (test extra) not installed",
)
needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)
DUBBO_SERVICE = "org.apache.dubbo.demo.DemoService"
BOLT_SERVICE = "com.alipay.rpc.common.service.facade.pb.SampleServicePb:1.0"


class Going:
    """What an upstream that goes away mid-traffic saw: calls per connection (in the order the
    connections came), calls that came on the first connection after its announcement, and
    whether the proxy closed that connection."""

    def __init__(self, after: int) -> None:
        self.after = after  # answered calls on the first connection before the announcement
        self.calls: list[int] = []
        self.late = 0
        self.announced = False
        self.first_closed = trio.Event()

    def answered(self, index: int) -> bool:
        """Count a call answered on connection ``index``; True when the announcement is due."""
        self.calls[index] += 1
        if index == 0 and self.announced:
            self.late += 1
        if index == 0 and not self.announced and self.calls[0] == self.after:
            self.announced = True
            return True
        return False


async def readonly_provider(nursery: trio.Nursery, going: Going) -> int:
    """A Dubbo provider (sayHello, add) that sends its first connection a READONLY event after
    ``going.after`` answers, then answers what still comes on it until the proxy closes it."""

    async def serve(stream: trio.SocketStream) -> None:
        index = len(going.calls)
        going.calls.append(0)
        buf = bytearray()
        try:
            while True:
                decoded = DUBBO.decode(buf)
                if decoded is None:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                    continue
                frame, used = decoded
                del buf[:used]
                if frame.is_heartbeat:
                    if frame.is_request:
                        await stream.send_all(df.heartbeat_response(frame.request_id))
                    continue
                args = arguments(frame)
                if frame.request.method_name == "sayHello":
                    value = encode_string(f"hello {args[0]} from {index}")
                else:
                    value = encode_long(sum(args))
                out = df.value_response(frame.request_id, value)
                if going.answered(index):
                    out += df.readonly_event(0)  # as Dubbo's provider sends it on shutdown
                await stream.send_all(out)
        except trio.BrokenResourceError:
            pass
        finally:
            if index == 0:
                going.first_closed.set()

    return await start_raw_server(nursery, serve)


def dubbo_consumer(port: int, threads: int, calls: int) -> tuple[list, list]:
    from dubbo_ssl.client import DubboClient

    client = DubboClient(DUBBO_SERVICE, group="blue", version="1.0.0", host=f"127.0.0.1:{port}")
    results: list = []
    errors: list = []

    def worker(i: int) -> None:
        for j in range(calls):
            try:
                results.append(((i, j), client.call("add", [i, j, 1000], timeout=10)))
            except Exception as exc:  # reported by the test
                errors.append(repr(exc))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return results, errors


def dubbo_config(up: int):
    return http_config(
        routes=ANY_SERVICE, clusters={"up": up}, proxy={"downstream_protocol": "dubbo"}
    )


# Both request paths: without stream filters (no task per call) and with (a task per call).
both_paths = pytest.mark.parametrize("fast", [True, False], ids=["fast", "task"])


@needs_dubbo_client
@both_paths
async def test_a_provider_sending_readonly_mid_traffic_fails_no_call(nursery, monkeypatch, fast):
    monkeypatch.setattr(xprotocol_proxy, "FAST_PATH", fast)
    going = Going(after=30)
    up = await readonly_provider(nursery, going)
    server, port = await start_proxy(nursery, dubbo_config(up))
    threads = 6
    results, errors = await trio.to_thread.run_sync(dubbo_consumer, port, threads, 25)
    assert not errors, errors[:3]
    assert len(results) == threads * 25
    assert all(value == i + j + 1000 for (i, j), value in results)
    assert going.announced
    # New calls went on a new connection; the first got only the calls already on their way
    # (at most one per consumer thread) and was closed once they were answered.
    assert len(going.calls) == 2 and going.calls[1] > 0
    assert going.late <= threads
    with trio.fail_after(5):
        await going.first_closed.wait()
    assert sum(going.calls) == threads * 25
    assert server.clusters.clusters["up"].stats.upstream_cx_total == 2


async def goaway_bolt_upstream(nursery: trio.Nursery, going: Going, repeat: int = 1) -> int:
    """A bolt echo upstream whose first connection says GoAway (``repeat`` times in a row)
    after ``going.after`` answers."""

    async def handler(stream: trio.SocketStream) -> None:
        index = len(going.calls)
        going.calls.append(0)
        peer = BoltClient(stream)
        try:
            while True:
                frame = await peer.read()
                if frame.is_heartbeat:
                    await stream.send_all(bytes(BOLT.heartbeat_reply(frame).data))
                    continue
                content = b"echo:" + bytes(frame.content)
                out = bytes(BOLT.build_response(frame.request_id, 0, content=content).data)
                if going.answered(index):
                    out += bytes(BOLT.goaway_frame().data) * repeat
                await stream.send_all(out)
        except (EOFError, trio.BrokenResourceError):
            pass
        finally:
            if index == 0:
                going.first_closed.set()

    return await start_raw_server(nursery, handler)


def anthunder_calls(port: int, threads: int, calls: int) -> tuple[list, list]:
    from anthunder import SERVICE_MAP, Client
    from mytracer import SpanContext

    SERVICE_MAP[BOLT_SERVICE] = ("127.0.0.1", port)
    results: list = []
    errors: list = []

    def worker(i: int) -> None:
        client = Client("trio-mesh-test")
        for j in range(calls):
            body = b"%02d:%02d" % (i, j)
            try:
                answer = client.invoke_sync(
                    BOLT_SERVICE, "sayHello", body, spanctx=SpanContext(), timeout_ms=5000
                )
                results.append((body, answer))
            except Exception as exc:  # reported by the test
                errors.append(repr(exc))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return results, errors


@needs_anthunder
async def test_a_bolt_upstream_sending_goaway_mid_traffic_fails_no_call(nursery):
    going = Going(after=20)
    up = await goaway_bolt_upstream(nursery, going)
    server, port = await start_proxy(
        nursery,
        http_config(routes=ANY_SERVICE, clusters={"up": up}, proxy={"downstream_protocol": "bolt"}),
    )
    threads = 5
    results, errors = await trio.to_thread.run_sync(anthunder_calls, port, threads, 20)
    assert not errors, errors[:3]
    assert len(results) == threads * 20
    assert all(answer == b"echo:" + body for body, answer in results)
    assert len(going.calls) == 2 and going.calls[1] > 0 and going.late <= threads
    with trio.fail_after(5):
        await going.first_closed.wait()
    assert server.clusters.clusters["up"].stats.upstream_cx_total == 2


@pytest.mark.parametrize("repeat", [1, 5000], ids=["once", "flood"])
async def test_goaway_with_nothing_in_flight_closes_the_connection_and_the_next_call_reconnects(
    nursery, repeat
):
    going = Going(after=1)
    up = await goaway_bolt_upstream(nursery, going, repeat)
    server, port = await start_proxy(
        nursery,
        http_config(routes=ANY_SERVICE, clusters={"up": up}, proxy={"downstream_protocol": "bolt"}),
    )
    c = await BoltClient.connect(port)
    await c.send(request(1, b"first"))
    assert bytes((await c.read()).content) == b"echo:first"
    with trio.fail_after(5):
        await going.first_closed.wait()  # nothing in flight: closed at once
    await c.send(request(2, b"second"))
    resp = await c.read()
    assert resp.request_id == 2 and bytes(resp.content) == b"echo:second"
    assert going.calls == [1, 1]
    assert server.clusters.clusters["up"].stats.upstream_cx_total == 2


async def until_in_flight(server) -> None:
    with trio.fail_after(5):
        while not any(c.busy for c in server.listeners["ingress"].connections):
            await trio.sleep(0)  # until the proxy has the request (a scheduler turn, no wait)


@both_paths
async def test_own_drain_sends_a_dubbo_client_readonly_and_answers_in_flight(
    nursery, monkeypatch, fast
):
    monkeypatch.setattr(xprotocol_proxy, "FAST_PATH", fast)
    up = await provider(nursery, "p", delay=0.3)
    server, port = await start_proxy(nursery, dubbo_config(up))
    peer = await DubboPeer.connect(port)
    await peer.stream.send_all(captured.SAY_HELLO)  # sayHello("world"), id 0
    await until_in_flight(server)
    outcome: dict = {}

    async def drain() -> None:
        outcome["done"] = await server.drain(5)

    nursery.start_soon(drain)
    with trio.fail_after(5):
        readonly = await peer.read()
        assert readonly.goaway and readonly.is_request and not readonly.is_heartbeat
        assert df.decode_event_body(bytes(readonly.data[df.HEADER_LENGTH :])) == "R"
        # A call the client sent before the announcement reached it is still served.
        late = DUBBO.decode(captured.SAY_HELLO)[0]
        await peer.stream.send_all(bytes(DUBBO.set_request_id(late, 9)))
        answers = {}
        for _ in range(2):
            resp = await peer.read()
            r = Hessian2Reader(bytes(resp.data[df.HEADER_LENGTH :]))
            answers[resp.request_id] = [r.read(), r.read()]  # kind 1 (a value), the value
        assert answers == {0: [1, "hello world from p"], 9: [1, "hello world from p"]}
        with pytest.raises(EOFError):
            await peer.read()  # closed once nothing is in flight
    with trio.fail_after(5):
        while "done" not in outcome:
            await trio.sleep(0.01)
    assert outcome["done"] is True


@needs_dubbo_client
async def test_own_drain_with_the_real_dubbo_consumer_mid_call(nursery):
    up = await provider(nursery, "p", delay=0.5)
    server, port = await start_proxy(nursery, dubbo_config(up))

    def call() -> object:
        from dubbo_ssl.client import DubboClient

        client = DubboClient(DUBBO_SERVICE, group="blue", version="1.0.0", host=f"127.0.0.1:{port}")
        return client.call("sayHello", ["drain"], timeout=10)

    async with trio.open_nursery() as inner:
        answer: list = []

        async def consumer() -> None:
            answer.append(await trio.to_thread.run_sync(call))

        inner.start_soon(consumer)
        await until_in_flight(server)
        # the consumer takes READONLY for a heartbeat (it answers it): its call still finishes
        assert await server.drain(5) is True
    assert answer == ["hello drain from p"]


async def test_a_client_sending_readonly_or_goaway_is_not_routed_nor_cut_off(nursery):
    calls: list = []
    up = await provider(nursery, "p", calls=calls)
    _, port = await start_proxy(nursery, dubbo_config(up))
    peer = await DubboPeer.connect(port)
    # the attacker's announcements: not forwarded, not answered, not an error
    await peer.stream.send_all(df.readonly_event(5) * 50)
    await peer.stream.send_all(captured.SAY_HELLO)
    with trio.fail_after(5):
        resp = await peer.read()
    assert resp.request_id == 0 and resp.status == df.Status.OK
    assert len(calls) == 1  # only the call reached the provider


async def test_with_two_connections_per_host_new_calls_go_on_the_one_not_draining(nursery):
    going = Going(after=10)
    up = await goaway_bolt_upstream(nursery, going)
    server, port = await start_proxy(
        nursery,
        http_config(
            routes=ANY_SERVICE,
            clusters={"up": up},
            proxy={"downstream_protocol": "bolt", "xprotocol": {"connections_per_host": 2}},
        ),
    )
    clients = [await BoltClient.connect(port) for _ in range(4)]
    rid = 0
    with trio.fail_after(10):
        for _ in range(15):  # in rounds: four calls in flight at a time
            for c in clients:
                rid += 1
                await c.send(request(rid, b"%d" % rid))
            for c in clients:
                resp = await c.read()
                assert bytes(resp.content) == b"echo:%d" % resp.request_id
        await going.first_closed.wait()
    assert sum(going.calls) == 60 and going.late <= 4
    # two connections, then a third in place of the drained one (two take calls again)
    assert len(going.calls) == 3 and going.calls[1] > 0 and going.calls[2] > 0
    assert server.clusters.clusters["up"].stats.upstream_cx_total == 3


@pytest.mark.parametrize("bolt_goaway", [False, True], ids=["default", "bolt_goaway"])
async def test_own_drain_sends_bolt_goaway_only_where_configured(nursery, bolt_goaway):
    up = await echo_upstream(nursery, delay=0.3)
    proxy = {"downstream_protocol": "bolt", "xprotocol": {"bolt_goaway": bolt_goaway}}
    server, port = await start_proxy(
        nursery, http_config(routes=ANY_SERVICE, clusters={"up": up}, proxy=proxy)
    )
    c = await BoltClient.connect(port)
    await c.send(request(1, b"in-flight"))
    await until_in_flight(server)
    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(server.drain, 5)
            first = await c.read()
            if bolt_goaway:
                assert first.goaway and first.request_id == 0
                await c.send(request(2, b"on-its-way"))  # sent before the GoAway arrived
                got = {f.request_id: bytes(f.content) for f in [await c.read(), await c.read()]}
                assert got == {1: b"echo:in-flight", 2: b"echo:on-its-way"}
            else:  # SOFA bolt's clients know no GoAway: only the answer comes
                assert not first.goaway and first.request_id == 1
                assert bytes(first.content) == b"echo:in-flight"
            with pytest.raises(EOFError):
                await c.read()


async def test_goaway_while_a_heartbeat_is_out_still_closes_the_connection(nursery):
    conns: list[trio.Event] = []  # one per upstream connection: set when it closes

    async def upstream(stream: trio.SocketStream) -> None:
        closed = trio.Event()
        conns.append(closed)
        peer = BoltClient(stream)
        try:
            while True:
                frame = await peer.read()
                if frame.is_heartbeat:  # go away while the proxy waits for this answer
                    reply = BOLT.heartbeat_reply(frame)
                    await stream.send_all(bytes(BOLT.goaway_frame().data) + bytes(reply.data))
                else:
                    resp = BOLT.build_response(frame.request_id, 0, content=b"ok")
                    await stream.send_all(bytes(resp.data))
        except (EOFError, trio.BrokenResourceError):
            pass
        finally:
            closed.set()

    up = await start_raw_server(nursery, upstream)
    keepalive = {"heartbeat_interval": "100ms", "heartbeat_timeout": "1s"}
    server, port = await start_proxy(
        nursery,
        http_config(
            routes=ANY_SERVICE,
            clusters={"up": up},
            proxy={"downstream_protocol": "bolt", "xprotocol": keepalive},
        ),
    )
    c = await BoltClient.connect(port)
    await c.send(request(1, b"x"))
    assert (await c.read()).status == 0
    with trio.fail_after(5):
        await conns[0].wait()  # drained: closed once its heartbeat was answered
    await c.send(request(2, b"y"))
    resp = await c.read()
    assert resp.request_id == 2 and resp.status == 0
    assert len(conns) == 2
    assert server.clusters.clusters["up"].stats.upstream_cx_total == 2
