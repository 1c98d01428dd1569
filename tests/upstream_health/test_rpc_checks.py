"""Bolt and Dubbo heartbeat health checks end to end: a real proxy in a nursery, anthunder's
bolt listener and the tests' Dubbo provider as live peers (killed mid-test), raw servers that
answer garbage, the wrong id, nothing, or an endless frame."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from tests import bolt_frames as frames
from tests import dubbo_frames_data as captured
from tests.anthunder_peers import anthunder_listener
from tests.http_helpers import http_config, start_proxy, start_raw_server
from tests.rpc_helpers import ANY_SERVICE, BoltClient, DubboPeer, echo_upstream, provider
from trio_mesh.network.connect import connect
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT
from trio_mesh.protocols.xprotocol.dubbo import DUBBO
from trio_mesh.server import Server
from trio_mesh.upstream import health
from trio_mesh.upstream.host import Host

from .test_active_checks import until

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)


def hc(protocol: str) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "timeout": "500ms",
        "interval": "100ms",
        "interval_jitter": "20ms",
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
    }


def rpc_config(protocol: str, ports: list[int]):
    cluster = {
        "name": "up",
        "connect_timeout": "1s",
        "lb_type": "LB_ROUNDROBIN",
        "hosts": [{"address": f"127.0.0.1:{p}"} for p in ports],
        "health_check": hc(protocol),
    }
    return http_config(ANY_SERVICE, [cluster], proxy={"downstream_protocol": protocol})


def host_of(server: Server, port: int) -> Host:
    return next(h for h in server.clusters.get("up").hosts if h.port == port)


async def killable(
    nursery: trio.Nursery, start: Callable[[trio.Nursery], Awaitable[int]]
) -> tuple[int, trio.CancelScope]:
    """A server started by ``start`` in a nursery of its own; cancelling the scope closes
    its listener and its connections (the peer is killed)."""

    async def run(task_status: trio.TaskStatus[tuple[int, trio.CancelScope]]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                task_status.started((await start(inner), scope))

    return await nursery.start(run)


async def bolt_calls(port: int, n: int) -> list[int]:
    """``n`` captured anthunder ``sayHello`` requests through the proxy: their statuses."""
    peer = await BoltClient.connect(port)
    statuses = []
    with trio.fail_after(10):
        for rid in range(1, n + 1):
            frame = BOLT.decode(frames.CLIENT_REQUEST)[0]  # type: ignore[index]
            await peer.stream.send_all(bytes(BOLT.set_request_id(frame, rid)))
            resp = await peer.read()
            assert resp.request_id == rid
            statuses.append(resp.status)
    await peer.stream.aclose()
    return statuses


async def dubbo_calls(port: int, n: int) -> list[int]:
    peer = await DubboPeer.connect(port)
    statuses = []
    with trio.fail_after(10):
        for rid in range(1, n + 1):
            frame = DUBBO.decode(captured.SAY_HELLO)[0]  # type: ignore[index]
            await peer.stream.send_all(bytes(DUBBO.set_request_id(frame, rid)))
            resp = await peer.read()
            assert resp.request_id == rid
            statuses.append(resp.status)
    await peer.stream.aclose()
    return statuses


@needs_anthunder
async def test_bolt_anthunder_passes_a_killed_one_leaves_rotation(nursery: trio.Nursery) -> None:
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(anthunder_listener())
        b_stack = contextlib.ExitStack()
        stack.enter_context(b_stack)
        b = b_stack.enter_context(anthunder_listener())
        server, port = await start_proxy(nursery, rpc_config("bolt", [a, b]))
        cluster = server.clusters.get("up")
        await until(lambda: cluster.stats.health_check_success >= 4)
        assert cluster.stats.health_check_failure == 0
        assert cluster.healthy_hosts == 2
        assert await bolt_calls(port, 4) == [0] * 4

        b_stack.close()  # anthunder b shut down: its port refuses
        down = host_of(server, b)
        await until(lambda: down.failed_active_hc)
        assert host_of(server, a).usable and cluster.healthy_hosts == 1
        assert cluster.stats.health_check_network_failure >= 2
        # No retries configured: every request still succeeds, so none went to b.
        assert await bolt_calls(port, 10) == [0] * 10


async def test_dubbo_provider_passes_a_killed_one_leaves_and_returns(nursery: trio.Nursery) -> None:
    async def start(n: trio.Nursery) -> int:
        return await provider(n, "p")

    a, _ = await killable(nursery, start)
    b, kill_b = await killable(nursery, start)
    server, port = await start_proxy(nursery, rpc_config("dubbo", [a, b]))
    cluster = server.clusters.get("up")
    await until(lambda: cluster.stats.health_check_success >= 4)
    assert cluster.stats.health_check_failure == 0 and cluster.healthy_hosts == 2
    assert await dubbo_calls(port, 4) == [df.Status.OK] * 4

    kill_b.cancel()
    down = host_of(server, b)
    await until(lambda: down.failed_active_hc)
    assert host_of(server, a).usable and cluster.healthy_hosts == 1
    # No retries configured: every call still succeeds, so none went to b.
    assert await dubbo_calls(port, 10) == [df.Status.OK] * 10

    # A provider on the same port again: back in rotation.
    async def again(n: trio.Nursery) -> int:
        await n.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), _provider_handler, b)
        return b

    await killable(nursery, again)
    await until(lambda: down.usable)
    assert cluster.healthy_hosts == 2


async def _provider_handler(stream: trio.SocketStream) -> None:
    """Answers Dubbo heartbeats only (enough for a check to pass)."""
    peer = DubboPeer(stream)
    with contextlib.suppress(EOFError, trio.BrokenResourceError):
        while True:
            frame = await peer.read()
            if frame.is_heartbeat:
                await stream.send_all(df.heartbeat_response(frame.request_id))


async def _garbage(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some(100)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await stream.receive_some(100)


async def _silent(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        while await stream.receive_some(100):
            pass


async def _endless(stream: trio.SocketStream, header: bytes) -> None:
    """A valid header declaring a huge frame, then bytes forever."""
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some(100)
        await stream.send_all(header)
        while True:
            await stream.send_all(b"\0" * 65536)


def _wrong_id(codec: Any) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def serve(stream: trio.SocketStream) -> None:
        peer = _peer_of(codec, stream)
        with contextlib.suppress(EOFError, trio.BrokenResourceError):
            frame = await peer.read()
            other = codec.heartbeat_request(frame.request_id + 1)
            await stream.send_all(bytes(codec.heartbeat_reply(other).data))
            await peer.read()

    return serve


async def _not_heartbeat_bolt(stream: trio.SocketStream) -> None:
    peer = BoltClient(stream)
    with contextlib.suppress(EOFError, trio.BrokenResourceError):
        frame = await peer.read()
        resp = BOLT.build_response(frame.request_id, 0, content=b"x")
        await stream.send_all(bytes(resp.data))
        await peer.read()


# A response header declaring a 1 GiB content: proto, type, cmdcode, ver2, id, codec, status,
# class, header and content lengths.
def _peer_of(codec: Any, stream: trio.SocketStream) -> BoltClient:
    return DubboPeer(stream) if codec is DUBBO else BoltClient(stream)


def _goaway(codec: Any) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A draining peer: its go-away (bolt) or READONLY event (Dubbo) instead of a reply."""
    frame = BOLT.goaway_frame() if codec is BOLT else DUBBO.goaway_request()

    async def serve(stream: trio.SocketStream) -> None:
        peer = _peer_of(codec, stream)
        with contextlib.suppress(EOFError, trio.BrokenResourceError):
            await peer.read()
            await stream.send_all(bytes(frame.data))
            await peer.read()

    return serve


def _heartbeat_flood(codec: Any) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """An attacker answering with its own heartbeat requests, forever."""
    burst = bytes(codec.heartbeat_request(99).data) * 1000

    async def serve(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.receive_some(100)
            while True:
                await stream.send_all(burst)

    return serve


def _own_heartbeat_first(codec: Any) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A live peer that sends its own heartbeat before answering: still a pass."""

    async def serve(stream: trio.SocketStream) -> None:
        peer = _peer_of(codec, stream)
        with contextlib.suppress(EOFError, trio.BrokenResourceError):
            frame = await peer.read()
            await stream.send_all(bytes(codec.heartbeat_request(99).data))
            await stream.send_all(bytes(codec.heartbeat_reply(frame).data))
            await peer.read()

    return serve


BOLT_HUGE = struct.pack(">BBHBIBHHHI", 1, 0, 2, 1, 5, 11, 0, 0, 0, 1 << 30)
DUBBO_HUGE = struct.pack(">HBBQI", 0xDABB, 0x22, 20, 5, 1 << 30)


@pytest.mark.parametrize("protocol", ["bolt", "dubbo"])
async def test_attackers_fail_and_the_live_peer_stays(nursery: trio.Nursery, protocol: str) -> None:
    codec = BOLT if protocol == "bolt" else DUBBO
    huge = BOLT_HUGE if protocol == "bolt" else DUBBO_HUGE
    assert codec.frame_length(huge, 1 << 31) is not None  # the attacker's header is valid
    live = await (echo_upstream(nursery) if protocol == "bolt" else provider(nursery, "live"))
    bad = {
        "garbage": await start_raw_server(nursery, _garbage),
        "silent": await start_raw_server(nursery, _silent),
        "endless": await start_raw_server(nursery, functools.partial(_endless, header=huge)),
        "wrong id": await start_raw_server(nursery, _wrong_id(codec)),
    }
    if protocol == "bolt":
        bad["not a heartbeat"] = await start_raw_server(nursery, _not_heartbeat_bolt)
    server, _ = await start_proxy(nursery, rpc_config(protocol, [live, *bad.values()]))
    hosts = {name: host_of(server, p) for name, p in bad.items()}
    await until(lambda: all(h.failed_active_hc for h in hosts.values()))
    assert host_of(server, live).usable
    stats = server.clusters.get("up").stats
    # Only the silent host's failures are "no answer"; the others answered wrongly.
    assert stats.health_check_failure > stats.health_check_network_failure >= 2
    assert stats.health_check_success >= 2


@pytest.mark.parametrize("protocol", ["bolt", "dubbo"])
async def test_each_bad_answer_fails_for_its_own_reason(
    nursery: trio.Nursery, protocol: str
) -> None:
    """The check itself against each attacker, over a real socket: the reason it gives."""
    codec = BOLT if protocol == "bolt" else DUBBO
    huge = BOLT_HUGE if protocol == "bolt" else DUBBO_HUGE
    cases: list[tuple[Callable[[trio.SocketStream], Awaitable[None]], str]] = [
        (_garbage, f"not a {protocol} frame"),
        (functools.partial(_endless, header=huge), "exceeds the limit of 16384"),
        (_wrong_id(codec), "a response to id 8, not 7"),
        (_goaway(codec), "the peer is draining"),
        (_heartbeat_flood(codec), "no heartbeat response in its budget"),
    ]
    if protocol == "bolt":
        cases.append((_not_heartbeat_bolt, "not a heartbeat"))
    for handler, reason in cases:
        port = await start_raw_server(nursery, handler)
        stream = await connect("127.0.0.1", port, 1.0)
        with trio.fail_after(5), pytest.raises(health.CheckFailed, match=reason):
            await health._heartbeat(stream, codec, 7)
        stream.abort()
    live = await (echo_upstream(nursery) if protocol == "bolt" else provider(nursery, "live"))
    chatty = await start_raw_server(nursery, _own_heartbeat_first(codec))
    for port in (live, chatty):
        stream = await connect("127.0.0.1", port, 1.0)
        with trio.fail_after(5):
            await health._heartbeat(stream, codec, 7)  # passes: returns
        stream.abort()
