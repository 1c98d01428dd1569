"""gRPC through the proxy: grpcio client -> trio-mesh (downstream and upstream HTTP/2) ->
grpcio server. Every kind of call, deadlines and cancellations crossing the proxy, and the
proxy's own gRPC replies (trailers-only, HTTP 200, ``grpc-status``) when it cannot or may
not forward a call.

grpcio's calls block: they run in worker threads (``in_thread``), each with its own
deadline, so a hung proxy fails a call instead of hanging the test.
"""

from __future__ import annotations

import os
import queue
import time
from concurrent import futures
from typing import Any

import grpc
import pytest
import trio

from tests.grpc_helpers import FAIL_DETAILS, EchoStub, GrpcEchoServer, grpc_upstream, in_thread
from tests.h2_upstream import (
    ErrorCodes,
    H2StreamReset,
    open_h2_client,
    pattern_bytes,
    start_h2_upstream,
)
from tests.http_helpers import closed_port, http_config, start_proxy, to

__all__ = ["grpc_upstream"]  # the fixture, imported for the tests below

GRPC_PROXY = {"downstream_protocol": "Http2", "upstream_protocol": "Http2"}
ROUTE_TIMEOUT = "upstream request timeout"  # grpc-message of the proxy's timeout reply


async def grpc_proxy(
    nursery: trio.Nursery,
    upstream_port: int,
    routes: list[dict[str, Any]] | None = None,
    **proxy: Any,
) -> tuple[Any, int]:
    """A proxy (h2 in, h2 out) routing everything (or ``routes``) to cluster ``up``."""
    config = http_config(
        routes if routes is not None else [to("up")],
        {"up": upstream_port},
        proxy={**GRPC_PROXY, **proxy},
    )
    return await start_proxy(nursery, config)


def _bidi_lockstep(stub: EchoStub, n: int) -> list[tuple[bytes, bytes]]:
    """``n`` Bidi messages, each sent only once the previous one came back: a proxy that held
    request messages back (until the request ended, or a buffer filled) hangs this until the
    call's deadline."""
    requests: queue.Queue[bytes | None] = queue.Queue()

    def messages():
        while (message := requests.get()) is not None:
            yield message

    responses = stub.Bidi(messages(), timeout=5)
    pairs = []
    for i in range(n):
        message = b"m-%d" % i
        requests.put(message)
        pairs.append((message, next(responses)))
    requests.put(None)
    assert list(responses) == []
    return pairs


def _expect_rpc_error(fn, *args: Any, **kwargs: Any) -> tuple[grpc.RpcError, float]:
    """Call ``fn`` (blocking), which must fail; the error and how long the call took."""
    start = time.monotonic()
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc, time.monotonic() - start
    raise AssertionError(f"{fn} succeeded")


# --------------------------------------------------------------------------- calls


async def test_unary_metadata_both_ways_and_trailers(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    binary = bytes(range(256))
    with EchoStub.connect(port) as stub:
        response, call = await in_thread(
            stub.Unary.with_call,
            b"hello",
            metadata=(
                ("x-echo", "e1"),
                ("x-trailer", "t1"),
                ("x-other", "o"),
                ("x-data-bin", binary),
            ),
            timeout=5,
        )
    assert response == b"hello"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-echo", "e1") in call.initial_metadata()  # response headers came back
    assert ("x-trailer", "t1") in call.trailing_metadata()  # and the trailers
    (seen,) = grpc_upstream.calls_of("Unary")
    assert ("x-other", "o") in seen.metadata  # request metadata reached the server
    assert ("x-data-bin", binary) in seen.metadata  # binary metadata intact
    assert grpc_upstream.completed == ["Unary"]
    assert grpc_upstream.cancelled == []


async def test_server_streaming(nursery: trio.Nursery, grpc_upstream: GrpcEchoServer) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    with EchoStub.connect(port) as stub:
        got = await in_thread(lambda: list(stub.ServerStream(b"100", timeout=5)))
    assert got == [b"msg-%d" % i for i in range(100)]
    assert grpc_upstream.completed == ["ServerStream"]


async def test_client_streaming(nursery: trio.Nursery, grpc_upstream: GrpcEchoServer) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    messages = [os.urandom(i * 97 % 5000) for i in range(100)]  # an empty one among them
    with EchoStub.connect(port) as stub:
        total = await in_thread(stub.ClientStream, iter(messages), timeout=5)
    assert total == b"count=100;bytes=%d" % sum(map(len, messages))
    assert grpc_upstream.completed == ["ClientStream"]


async def test_bidi_interleaved(nursery: trio.Nursery, grpc_upstream: GrpcEchoServer) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    with EchoStub.connect(port) as stub:
        pairs = await in_thread(_bidi_lockstep, stub, 20)
    assert len(pairs) == 20
    assert all(sent == echoed for sent, echoed in pairs)
    assert grpc_upstream.completed == ["Bidi"]
    assert grpc_upstream.cancelled == []


async def test_server_error_status_and_message_pass_through(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    with EchoStub.connect(port) as stub:
        for name in ("NOT_FOUND", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"):
            error, _ = await in_thread(_expect_rpc_error, stub.Fail, name.encode(), timeout=5)
            assert error.code() == getattr(grpc.StatusCode, name)
            assert error.details() == FAIL_DETAILS
    assert len(grpc_upstream.calls_of("Fail")) == 3  # the server's answers, not the proxy's


async def test_large_messages_both_ways(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    # Far beyond every window on the way (proxy: 256 KiB per stream, 1 MiB per connection),
    # just under grpcio's 4 MiB default message limit.
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    payload = os.urandom(4 * 1024 * 1024 - 1024)
    with EchoStub.connect(port) as stub:
        echoed = await in_thread(stub.Unary, payload, timeout=10)
        assert echoed == payload
        chunks = [os.urandom(1024 * 1024) for _ in range(4)]
        total = await in_thread(stub.ClientStream, iter(chunks), timeout=10)
        assert total == b"count=4;bytes=%d" % (4 * 1024 * 1024)


def _concurrent_calls(stub: EchoStub, n: int) -> tuple[list[Any], float]:
    """``n`` calls all in flight at once on the stub's one channel: every other call sleeps
    0.3 s on the server (so they overlap), the rest echo a distinct payload and metadata."""
    start = time.monotonic()
    calls = []
    for i in range(n):
        if i % 2:
            calls.append(stub.Sleep.future(b"0.3", timeout=10))
        else:
            payload = b"call-%d:" % i + os.urandom(i * 100)
            meta = (("x-echo", f"e-{i}"), ("x-trailer", f"t-{i}"))
            calls.append((payload, stub.Unary.future(payload, metadata=meta, timeout=10)))
    results = []
    for i, item in enumerate(calls):
        if i % 2:
            results.append(item.result())
        else:
            payload, call = item
            results.append(
                (
                    call.result() == payload,
                    dict(call.initial_metadata()).get("x-echo"),
                    dict(call.trailing_metadata()).get("x-trailer"),
                )
            )
    return results, time.monotonic() - start


async def test_many_concurrent_calls_on_one_channel(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    server, port = await grpc_proxy(nursery, grpc_upstream.port)
    with EchoStub.connect(port) as stub:
        results, elapsed = await in_thread(_concurrent_calls, stub, 50)
    for i, result in enumerate(results):
        if i % 2:
            assert result == b"slept"
        else:
            assert result == (True, f"e-{i}", f"t-{i}"), i  # each answer on its own stream
    # 25 sleeps of 0.3 s one after the other would take 7.5 s; the server runs 32 at once.
    assert elapsed < 3.0, elapsed
    assert server.listeners["ingress"].stats.downstream_cx_total == 1  # one connection
    assert len(grpc_upstream.completed) == 50
    assert grpc_upstream.cancelled == []


# --------------------------------------------------------------------------- ending early


async def test_deadline_exceeded_reaches_server(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    with EchoStub.connect(port) as stub:
        error, elapsed = await in_thread(_expect_rpc_error, stub.Sleep, b"5", timeout=0.3)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 2.0, elapsed
        assert await grpc_upstream.await_cancelled("Sleep", timeout=3)
        # the channel (and the proxy's connections) still serve calls
        assert await in_thread(stub.Unary, b"after", timeout=5) == b"after"
    assert "Sleep" not in grpc_upstream.completed


def _cancel_server_stream(stub: EchoStub) -> tuple[list[bytes], grpc.StatusCode]:
    # 1000 messages 20 ms apart: 20 s, beyond the call's own 10 s deadline
    call = stub.ServerStream(b"1000,20", timeout=10)
    got = [next(call), next(call)]
    call.cancel()
    return got, call.code()


async def test_client_cancellation_reaches_server(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    """A cancelled call (RST_STREAM CANCEL from the client) must cancel the upstream call
    well before the call's own 10 s deadline would have ended it on the server."""
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    with EchoStub.connect(port) as stub:
        got, code = await in_thread(_cancel_server_stream, stub)
        assert got == [b"msg-0", b"msg-1"]
        assert code == grpc.StatusCode.CANCELLED
        assert await grpc_upstream.await_cancelled("ServerStream", timeout=3)
        # the channel goes on
        assert await in_thread(stub.Unary, b"after", timeout=5) == b"after"
    assert "ServerStream" not in grpc_upstream.completed


def _grpc_request(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("content-type", "application/grpc"), ("te", "trailers"), *extra]


async def test_cancelled_streaming_request_is_reset_upstream(nursery: trio.Nursery) -> None:
    """A client-streaming or bidi call cancelled halfway must reach the upstream as
    RST_STREAM(CANCEL), never as a clean end of the request stream (which a server would
    take for "all messages sent" and answer). grpcio's server does not tell the two apart
    reliably (its request iterator sometimes just stops on a cancel), so the h2 upstream
    records what arrived."""
    up = await start_h2_upstream(nursery)
    _, port = await grpc_proxy(nursery, up.port)
    async with open_h2_client(port) as client:
        with trio.fail_after(5):
            sid = await client.send_headers("POST", "/echo", _grpc_request())
            message = b"\x00" + (5).to_bytes(4, "big") + b"hello"  # one gRPC message
            await client.send_data(sid, message)
            await up.wait_until(lambda: up.bytes_received >= len(message))
            await client.reset(sid, ErrorCodes.CANCEL)
            await up.wait_until(lambda: up.resets)
            ((_, _, code, path),) = up.resets
            assert (code, path) == (ErrorCodes.CANCEL, "/echo")
            # the connection goes on
            response = await client.request("POST", "/echo", _grpc_request(), body=message)
            assert response.status == 200
            assert response.json()["body_len"] == len(message)


# --------------------------------------------------------------------------- proxy replies


async def test_no_route_is_unimplemented(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port, [to("up", prefix="/other.Service/")])
    with EchoStub.connect(port) as stub:
        error, _ = await in_thread(_expect_rpc_error, stub.Unary, b"x", timeout=5)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == "route not found"
    assert grpc_upstream.calls == []


async def test_closed_port_is_unavailable(nursery: trio.Nursery) -> None:
    _, port = await grpc_proxy(nursery, closed_port())
    with EchoStub.connect(port) as stub:
        error, elapsed = await in_thread(_expect_rpc_error, stub.Unary, b"x", timeout=5)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "connection failure" in error.details()
    assert elapsed < 2.0, elapsed


async def test_route_timeout_is_deadline_exceeded(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    # The client allows 5 s: the DEADLINE_EXCEEDED is the proxy's (its message says so).
    _, port = await grpc_proxy(nursery, grpc_upstream.port, [to("up", timeout="200ms")])
    with EchoStub.connect(port) as stub:
        error, elapsed = await in_thread(_expect_rpc_error, stub.Sleep, b"5", timeout=5)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error.details() == ROUTE_TIMEOUT
        assert 0.15 < elapsed < 1.5, elapsed
        # the proxy gave up on the upstream call too (the server's own deadline is 5 s)
        assert await grpc_upstream.await_cancelled("Sleep", timeout=3)
    assert "Sleep" not in grpc_upstream.completed


async def test_grpc_timeout_below_route_timeout_wins(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port, [to("up", timeout="10s")])
    with EchoStub.connect(port) as stub:
        error, elapsed = await in_thread(_expect_rpc_error, stub.Sleep, b"5", timeout=0.3)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 1.0, elapsed
        assert await grpc_upstream.await_cancelled("Sleep", timeout=3)


async def test_proxy_enforces_grpc_timeout_itself(nursery: trio.Nursery) -> None:
    """grpcio enforces its deadline on both ends, which hides whether the proxy does. Here a
    raw h2 client sends ``grpc-timeout: 300m`` and never gives up, and the upstream (not a
    gRPC server) ignores the header: only the proxy can end the call at 300 ms, with a
    trailers-only DEADLINE_EXCEEDED, and reset the upstream stream."""
    up = await start_h2_upstream(nursery)
    _, port = await grpc_proxy(nursery, up.port, [to("up", timeout="10s")])
    async with open_h2_client(port) as client:
        with trio.fail_after(5):
            start = trio.current_time()
            sid = await client.send_headers(
                "POST", "/slow/5", _grpc_request(("grpc-timeout", "300m"))
            )
            await client.end_stream(sid)
            response = await client.response(sid)
            elapsed = trio.current_time() - start
            assert response.status == 200
            assert response.headers.get("content-type") == "application/grpc"
            assert response.headers.get("grpc-status") == "4"  # DEADLINE_EXCEEDED
            assert response.headers.get("grpc-message") == ROUTE_TIMEOUT
            assert response.body == b""
            assert response.trailers is None  # trailers-only: one HEADERS with END_STREAM
            assert 0.25 < elapsed < 1.5, elapsed
            await up.wait_until(lambda: len(up.resets) == 1)  # the upstream stream was cut

            # A longer grpc-timeout leaves the route timeout in charge: /slow/0.2 finishes.
            sid = await client.send_headers(
                "POST", "/slow/0.2", _grpc_request(("grpc-timeout", "10S"))
            )
            await client.end_stream(sid)
            response = await client.response(sid)
            assert (response.status, response.body) == (200, b"slow\n")
            assert response.headers.get("grpc-status") is None  # the upstream's answer

            # Not gRPC (no application/grpc): grpc-timeout means nothing.
            response = await client.request("GET", "/slow/0.5", [("grpc-timeout", "100m")])
            assert (response.status, response.body) == (200, b"slow\n")


async def test_upstream_reset_is_unavailable_or_passed_on(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await grpc_proxy(nursery, up.port)
    async with open_h2_client(port) as client:
        with trio.fail_after(5):
            # reset before any response: the proxy answers for the upstream, UNAVAILABLE
            sid = await client.send_headers("POST", "/reset", _grpc_request(), end_stream=True)
            response = await client.response(sid)
            assert response.status == 200
            assert response.headers.get("content-type") == "application/grpc"
            assert response.headers.get("grpc-status") == "14"
            assert "reset before headers" in (response.headers.get("grpc-message") or "")
            # reset once the response began: too late for a reply, the reset is passed on
            sid = await client.send_headers(
                "POST", "/reset-after-head", _grpc_request(), end_stream=True
            )
            status, _ = await client.read_head(sid)
            assert status == 200
            with pytest.raises(H2StreamReset) as reset:
                await client.read_chunk(sid)
            assert reset.value.error_code == ErrorCodes.INTERNAL_ERROR
            # the connection goes on
            response = await client.request("POST", "/echo", _grpc_request())
            assert response.status == 200


async def test_a_broken_upstream_connection_fails_only_its_calls(nursery: trio.Nursery) -> None:
    """gRPC calls on two upstream connections (the upstream takes 2 streams each), one
    answering and one waiting on each. Connection 1 is reset: its waiting call gets the
    proxy's trailers-only UNAVAILABLE (14), its answering one is reset (too late for a
    reply); the calls on connection 2 complete."""
    up = await start_h2_upstream(nursery, max_concurrent_streams=2)
    _, port = await grpc_proxy(nursery, up.port)
    async with open_h2_client(port, connection_window=1 << 24) as client:
        with trio.fail_after(10):
            sids = {}
            for name, path in [
                ("answering-1", "/bytes/5000000"),
                ("waiting-1", "/slow/10"),
                ("answering-2", "/bytes/300000"),
                ("waiting-2", "/echo"),  # its request message is sent after the kill
            ]:
                sids[name] = await client.send_headers(
                    "POST", path, _grpc_request(), end_stream=name != "waiting-2"
                )
                await up.wait_until(lambda: len(up.requests) == len(sids))
            assert up.request_connections == [1, 1, 2, 2]
            first = {}
            for name in ("answering-1", "answering-2"):
                assert (await client.read_head(sids[name]))[0] == 200
                first[name] = await client.read_chunk(sids[name])

            await up.kill_connection(1)

            with pytest.raises(H2StreamReset):
                while await client.read_chunk(sids["answering-1"]):
                    pass
            response = await client.response(sids["waiting-1"])
            assert response.status == 200
            assert response.headers.get("content-type") == "application/grpc"
            assert response.headers.get("grpc-status") == "14"  # UNAVAILABLE
            assert "connection termination" in (response.headers.get("grpc-message") or "")
            assert response.body == b"" and response.trailers is None  # trailers-only
            message = b"\x00" + (5).to_bytes(4, "big") + b"hello"
            await client.send_data(sids["waiting-2"], message, end_stream=True)
            response = await client.response(sids["waiting-2"])
            assert response.status == 200 and response.headers.get("grpc-status") is None
            info = response.json()
            assert (info["body_len"], info["connection"]) == (len(message), 2)
            body = bytearray(first["answering-2"])
            while chunk := await client.read_chunk(sids["answering-2"]):
                body += chunk
            assert body == pattern_bytes(300_000)
    assert [p for p, _ in up.requests].count("/slow/10") == 1  # not sent again


async def test_concurrent_channels_isolated_from_a_failing_call(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    """Calls on two channels at once: one channel's cancelled stream and expired deadline
    leave the other channel's server stream (0.8 s, spanning both) whole."""
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    with EchoStub.connect(port) as steady, EchoStub.connect(port) as shaky:
        pool = futures.ThreadPoolExecutor(2)
        try:
            long_stream = pool.submit(lambda: list(steady.ServerStream(b"80,10", timeout=10)))
            error, _ = await in_thread(_expect_rpc_error, shaky.Sleep, b"5", timeout=0.2)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _, code = await in_thread(_cancel_server_stream, shaky)
            assert code == grpc.StatusCode.CANCELLED
            got = await in_thread(long_stream.result, 10)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    assert got == [b"msg-%d" % i for i in range(80)]
    assert "Sleep" not in grpc_upstream.completed


@pytest.mark.parametrize("size", [0, 1, 16 * 1024, 16 * 1024 + 1, 300 * 1024])
async def test_message_sizes_around_frame_and_window_edges(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer, size: int
) -> None:
    _, port = await grpc_proxy(nursery, grpc_upstream.port)
    payload = os.urandom(size)
    with EchoStub.connect(port) as stub:
        assert await in_thread(stub.Unary, payload, timeout=5) == payload
