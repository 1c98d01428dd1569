"""The HTTP/2 and gRPC test peers work on their own, without the proxy: real clients (curl,
nghttp, h2load, grpcio) against our h2 upstream and our gRPC server, and our h2 client against
the h2 upstream. If these fail, the end-to-end proxy tests built on the peers mean nothing."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import h2.events
import pytest
import trio

from tests.grpc_helpers import FAIL_DETAILS, EchoStub, GrpcEchoServer, grpc_upstream, in_thread
from tests.h2_upstream import (
    ErrorCodes,
    H2ConnectionClosed,
    H2StreamReset,
    h2_request,
    open_h2_client,
    pattern_bytes,
    raw_frame,
    start_h2_upstream,
)

__all__ = ["grpc_upstream"]  # the fixture, imported for the tests below


def _curl_has_http2() -> bool:
    if shutil.which("curl") is None:
        return False
    out = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    return bool(re.search(r"^Features:.*\bHTTP2\b", out, re.M))


needs_curl_h2 = pytest.mark.skipif(
    not _curl_has_http2(), reason="curl is missing or built without HTTP/2 (no HTTP2 feature)"
)
needs_nghttp = pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp not installed")
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")


async def run(*cmd: str, timeout: float = 15.0) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(
            list(cmd), capture_stdout=True, capture_stderr=True, check=False
        )


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await run("curl", "-sS", "--noproxy", "*", "--max-time", "10", *args)


def split_head(out: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """``curl -i`` output of one response: status line, headers, body."""
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0].encode(), headers, body


# ------------------------------------------------------------ h2 upstream, real clients


@needs_curl_h2
async def test_curl_prior_knowledge(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_h2_upstream(nursery)
    base = f"http://127.0.0.1:{up.port}"
    upload = os.urandom(100_000)
    (tmp_path / "body").write_bytes(upload)

    p = await curl("--http2-prior-knowledge", "-i", "-H", "x-test: 1", base + "/echo?a=b")
    assert p.returncode == 0, p.stderr
    status, headers, body = split_head(p.stdout)
    assert status.startswith(b"HTTP/2 200"), p.stdout
    assert headers["content-type"] == "application/json"
    info = json.loads(body)
    assert (info["method"], info["path"], info["scheme"]) == ("GET", "/echo?a=b", "http")
    assert info["authority"] == f"127.0.0.1:{up.port}"
    assert ["x-test", "1"] in info["headers"]

    p = await curl(
        "--http2-prior-knowledge", "--data-binary", f"@{tmp_path / 'body'}", base + "/echo"
    )
    info = json.loads(p.stdout)
    assert info["method"] == "POST"
    assert info["body_len"] == len(upload)
    assert info["body_sha256"] == hashlib.sha256(upload).hexdigest()

    p = await curl("--http2-prior-knowledge", "-w", "\n%{http_version}", base + "/bytes/100000")
    assert p.returncode == 0, p.stderr
    assert p.stdout == pattern_bytes(100_000) + b"\n2"

    # curl 7.88 does not show HTTP/2 trailers at all (not with -i, -D or -v): it only has to
    # take the trailing HEADERS frame without complaint. Their content is checked by nghttp.
    p = await curl("--http2-prior-knowledge", "-i", base + "/trailers")
    assert p.returncode == 0, p.stderr
    status, _, body = split_head(p.stdout)
    assert status.startswith(b"HTTP/2 200") and body == b"trailers\n"
    assert up.protocol_errors == []


@needs_nghttp
async def test_nghttp(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_h2_upstream(nursery)
    base = f"http://127.0.0.1:{up.port}"
    upload = os.urandom(70_000)  # more than one stream window: WINDOW_UPDATEs must flow
    (tmp_path / "body").write_bytes(upload)

    p = await run("nghttp", "-H", "x-test: 1", "-d", str(tmp_path / "body"), base + "/echo")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["method"] == "POST" and ["x-test", "1"] in info["headers"]
    assert info["body_len"] == len(upload)
    assert info["body_sha256"] == hashlib.sha256(upload).hexdigest()

    p = await run("nghttp", base + "/bytes/100000")
    assert p.returncode == 0, p.stderr
    assert p.stdout == pattern_bytes(100_000)

    p = await run("nghttp", "-v", base + "/trailers")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert re.search(r"recv \(stream_id=\d+\) x-trailer: yes", out), out
    assert re.search(r"recv \(stream_id=\d+\) grpc-status: 0", out), out
    assert "trailers\n" in out
    assert up.protocol_errors == []


@needs_h2load
async def test_h2load(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    p = await run("h2load", "-n", "2000", "-c", "4", "-m", "10", f"http://127.0.0.1:{up.port}/echo")
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert "Application protocol: h2c" in out
    assert re.search(
        r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, "
        r"0 timeout",
        out,
    ), out
    assert "status codes: 2000 2xx" in out, out
    assert len(up.requests) == 2000
    assert up.connections == 4
    assert 1 < up.max_concurrent_seen <= 10
    assert up.protocol_errors == []


# ------------------------------------------------------------ h2 upstream, our client


async def test_h2_request_endpoints(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    body = os.urandom(200_000)
    r = await h2_request(
        up.port,
        "POST",
        "/echo?x=1",
        [("x-a", "1"), ("x-a", "2")],
        body,
        trailers=[("x-t", "tt")],
    )
    info = r.json()
    assert r.status == 200
    assert (info["method"], info["path"], info["scheme"]) == ("POST", "/echo?x=1", "http")
    assert info["authority"] == f"127.0.0.1:{up.port}"
    assert info["headers"] == [["x-a", "1"], ["x-a", "2"]]
    assert info["trailers"] == [["x-t", "tt"]]
    assert info["body_len"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert r.trailers == [("x-t", "tt")]
    path, headers = up.requests[0]
    assert path == "/echo?x=1" and headers.get(":method") == "POST"
    assert headers.getall("x-a") == ["1", "2"]

    r = await h2_request(up.port, "GET", "/bytes/100000")
    assert r.status == 200 and r.headers.get("content-length") == "100000"
    assert r.body == pattern_bytes(100_000)

    r = await h2_request(up.port, "GET", "/trailers")
    assert (r.status, r.body) == (200, b"trailers\n")
    assert r.trailers == [("x-trailer", "yes"), ("grpc-status", "0")]

    r = await h2_request(up.port, "PUT", "/upload", body=body)
    assert r.json() == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    r = await h2_request(up.port, "HEAD", "/bytes/1000")
    assert (r.status, r.headers.get("content-length"), r.body) == (200, "1000", b"")

    r = await h2_request(up.port, "GET", "/status/503")
    assert (r.status, r.body) == (503, b"status 503\n")
    assert (await h2_request(up.port, "GET", "/nowhere")).status == 404

    with pytest.raises(H2StreamReset) as reset:
        await h2_request(up.port, "GET", "/reset")
    assert reset.value.error_code == ErrorCodes.REFUSED_STREAM

    async with open_h2_client(up.port) as client:
        sid = await client.send_headers("GET", "/reset-after-head", end_stream=True)
        status, _ = await client.read_head(sid)
        assert status == 200
        with pytest.raises(H2StreamReset) as reset:
            await client.read_chunk(sid)
        assert reset.value.error_code == ErrorCodes.INTERNAL_ERROR
    assert up.protocol_errors == []


async def test_streams_multiplexed_and_reset_reaches_upstream(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    async with open_h2_client(up.port) as client:
        slow = await client.send_headers("GET", "/slow/30", end_stream=True)
        quick = [await client.send_headers("GET", "/echo", end_stream=True) for _ in range(5)]
        for sid in quick:  # answered while /slow/30 is still open on the same connection
            assert (await client.response(sid)).json()["stream_id"] == sid
        assert up.max_concurrent_seen >= 2
        await client.reset(slow)  # CANCEL
        await up.wait_until(lambda: up.resets_received)
        assert up.resets_received == [slow]
        assert up.resets == [(1, slow, ErrorCodes.CANCEL, "/slow/30")]
    assert up.connections == 1


async def test_request_body_flow_control_and_read_gate(nursery: trio.Nursery) -> None:
    """/slow-read acknowledges nothing until read_gate is set: the client stalls at exactly
    the 65535-byte default windows, then finishes once the gate opens."""
    up = await start_h2_upstream(nursery)
    body = os.urandom(300_000)
    async with open_h2_client(up.port) as client:
        sid = await client.send_headers("POST", "/slow-read")
        sent = trio.Event()

        async def send() -> None:
            await client.send_data(sid, body, end_stream=True)
            sent.set()

        nursery.start_soon(send)
        await up.wait_until(lambda: up.bytes_received == 65535)
        await client.wait_until(lambda: client.conn.local_flow_control_window(sid) == 0)
        assert up.bytes_consumed == 0
        assert not sent.is_set()
        up.read_gate.set()
        r = await client.response(sid)
        assert r.json() == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        assert sent.is_set()
        assert up.bytes_consumed == up.bytes_received == len(body)


async def test_response_flow_control(nursery: trio.Nursery) -> None:
    """The upstream sends no more than the client's window until the client reads (h2 on the
    client side would flag any overrun as a protocol error)."""
    up = await start_h2_upstream(nursery)
    async with open_h2_client(up.port) as client:
        sid = await client.send_headers("GET", "/bytes/300000", end_stream=True)
        st = client.streams[sid]
        await client.wait_until(lambda: st.received >= 65535)
        assert st.received == 65535 and not st.ended
        r = await client.response(sid)
        assert r.body == pattern_bytes(300_000)
        assert client.h2_error is None


async def test_settings_and_refused_streams(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery, max_concurrent_streams=2, initial_window_size=16384)
    async with open_h2_client(up.port) as client:
        await client.wait_until(
            lambda: (
                client.conn.remote_settings.max_concurrent_streams == 2
                and client.conn.remote_settings.initial_window_size == 16384
            )
        )
        a = await client.send_headers("GET", "/slow/30", end_stream=True)
        b = await client.send_headers("GET", "/slow/30", end_stream=True)
        await up.wait_until(lambda: len(up.requests) == 2)
        # h2 would wait for a free slot: a hand-made HEADERS frame goes over the limit.
        extra = await client.send_raw_headers(
            [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/echo")]
        )
        await client.wait_until(lambda: client.streams[extra].reset_code is not None)
        assert client.streams[extra].reset_code == ErrorCodes.REFUSED_STREAM
        assert up.refused == [(1, extra, "/echo")]
        assert up.max_concurrent_seen == 2
        await client.reset(a)
        await client.reset(b)
        await up.wait_until(lambda: len(up.resets_received) == 2)
        # A slot is free again: the next stream is served, on the same connection.
        assert (await client.request("GET", "/echo")).status == 200
    assert up.connections == 1 and up.protocol_errors == []


async def test_goaway_endpoint(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    async with open_h2_client(up.port) as client:
        first = await client.send_headers("GET", "/goaway", end_stream=True)
        second = await client.send_headers("GET", "/slow/0", end_stream=True)
        r = await client.response(first)
        assert (r.status, r.body) == (200, b"goaway\n")
        await client.wait_closed()  # nothing left in flight: the upstream closes
        assert client.goaway is not None
        assert (client.goaway.error_code, client.goaway.last_stream_id) == (0, first)
        with pytest.raises(H2ConnectionClosed):
            await client.response(second)  # above last_stream_id: refused
    await up.wait_until(lambda: up.connections_closed == 1)


async def test_client_goaway_lets_streams_finish(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    async with open_h2_client(up.port) as client:
        sid = await client.send_headers("POST", "/upload")
        goaway = raw_frame(0x7, 0, 0, (0).to_bytes(4, "big") + (0).to_bytes(4, "big"))
        await client.send_raw(goaway)
        await up.wait_until(lambda: up.goaways_received)
        await client.send_data(sid, b"x" * 100_000, end_stream=True)  # still served
        assert (await client.response(sid)).json()["len"] == 100_000
        await client.wait_closed()
    assert up.goaways_received == [(1, 0, 0)]


async def test_protocol_error_closes_with_goaway(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    async with open_h2_client(up.port) as client:
        await client.send_raw(raw_frame(0x0, 0, 0, b"data on stream 0"))
        await client.wait_closed()
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert len(up.protocol_errors) == 1


async def test_client_ping_and_events(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    async with open_h2_client(up.port) as client:
        await client.ping(b"12345678")
        await client.wait_until(
            lambda: any(isinstance(e, h2.events.PingAckReceived) for e in client.events)
        )
        assert any(f.type == 0x6 and "ACK" in f.flags for f in client.frames)


# --------------------------------------------------------------------------- gRPC


def _bidi_lockstep(stub: EchoStub, n: int) -> list[tuple[bytes, bytes]]:
    requests: queue.Queue[bytes | None] = queue.Queue()

    def messages():
        while (message := requests.get()) is not None:
            yield message

    responses = stub.Bidi(messages(), timeout=5)
    pairs = []
    for i in range(n):
        message = b"m-%d" % i
        requests.put(message)
        pairs.append((message, next(responses)))  # answered before the next one is sent
    requests.put(None)
    assert list(responses) == []
    return pairs


def _cancel_server_stream(stub: EchoStub) -> tuple[list[bytes], grpc.StatusCode]:
    call = stub.ServerStream(b"1000,20", timeout=10)
    got = [next(call), next(call)]
    call.cancel()
    return got, call.code()


async def test_grpc_methods(grpc_upstream: GrpcEchoServer) -> None:
    with EchoStub.connect(grpc_upstream.port) as stub:
        response, call = await in_thread(
            stub.Unary.with_call,
            b"hello",
            metadata=(("x-echo", "e1"), ("x-trailer", "t1"), ("x-other", "o")),
            timeout=5,
        )
        assert response == b"hello"
        assert ("x-echo", "e1") in call.initial_metadata()
        assert ("x-trailer", "t1") in call.trailing_metadata()
        assert ("x-other", "o") in grpc_upstream.calls_of("Unary")[0].metadata

        got = await in_thread(lambda: list(stub.ServerStream(b"5", timeout=5)))
        assert got == [b"msg-%d" % i for i in range(5)]

        total = await in_thread(stub.ClientStream, iter([b"a", b"bc", b""]), timeout=5)
        assert total == b"count=3;bytes=3"

        pairs = await in_thread(_bidi_lockstep, stub, 5)
        assert all(sent == echoed for sent, echoed in pairs)

        assert await in_thread(stub.Sleep, b"0.01", timeout=5) == b"slept"

        for name in ("NOT_FOUND", "PERMISSION_DENIED"):
            with pytest.raises(grpc.RpcError) as failed:
                await in_thread(stub.Fail, name.encode(), timeout=5)
            assert failed.value.code() == getattr(grpc.StatusCode, name)
            assert failed.value.details() == FAIL_DETAILS

    assert grpc_upstream.cancelled == []
    assert sorted(set(grpc_upstream.completed)) == sorted(
        ["Unary", "ServerStream", "ClientStream", "Bidi", "Sleep", "Fail"]
    )


async def test_grpc_deadline_reaches_server(grpc_upstream: GrpcEchoServer) -> None:
    with EchoStub.connect(grpc_upstream.port) as stub:
        with pytest.raises(grpc.RpcError) as expired:
            await in_thread(stub.Sleep, b"5", timeout=0.3)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await grpc_upstream.await_cancelled("Sleep")
    assert grpc_upstream.cancelled == ["Sleep"]
    assert "Sleep" not in grpc_upstream.completed


async def test_grpc_stream_cancellation_reaches_server(grpc_upstream: GrpcEchoServer) -> None:
    with EchoStub.connect(grpc_upstream.port) as stub:
        got, code = await in_thread(_cancel_server_stream, stub)
    assert got == [b"msg-0", b"msg-1"]
    assert code == grpc.StatusCode.CANCELLED
    assert await grpc_upstream.await_cancelled("ServerStream")
    assert "ServerStream" not in grpc_upstream.completed
