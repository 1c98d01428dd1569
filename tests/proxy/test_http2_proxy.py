"""HTTP/2 through the proxy, end to end on real sockets: h2->h2, h2->h1, h1->h2, real clients
(curl, nghttp, h2load), 100 MB each way with the proxy's memory bounded, backpressure both
ways, resets, upstream GOAWAY, Auto detection, drain and route timeouts.

The peers are tests/h2_upstream.py (raw h2, not our codec) and tests/upstream.py (h11). Every
wait is on state (``wait_until``, events, ``wait_all_tasks_blocked``) under a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from tests.h2_upstream import (
    ErrorCodes,
    H2ConnectionClosed,
    H2StreamReset,
    H2Upstream,
    h2_request,
    open_h2_client,
    pattern_bytes,
    start_extra_upstream,
    start_h2_upstream,
)
from tests.http_helpers import (
    Client,
    access_log,
    curl,
    echoed,
    get,
    http_config,
    read_access_log,
    read_request,
    start_proxy,
    start_raw_server,
    start_upstream,
    to,
    trailers_h1_upstream,
    upstream_headers,
)
from trio_mesh import Server

HEX32 = re.compile(r"[0-9a-f]{32}")
CHUNK = 16384

needs_nghttp = pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp not installed")
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@pytest.fixture(autouse=True)
def _no_proxy_errors(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture):
    """The proxy logs no error (an unexpected exception in a stream or connection task)."""
    yield
    if request.node.get_closest_marker("xfail") is None:
        errors = [
            r
            for r in caplog.get_records("call")
            if r.levelno >= logging.ERROR and r.name.startswith("trio_mesh")
        ]
        assert not errors, "\n".join(caplog.text.splitlines()[-60:])


# --------------------------------------------------------------------------- helpers


def h2_config(
    routes: list[dict[str, Any]],
    clusters: dict[str, Any],
    *,
    down: str = "Http2",
    up: str = "Http2",
    http2: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
):
    proxy: dict[str, Any] = {"downstream_protocol": down, "upstream_protocol": up}
    if http2:
        proxy["http2"] = http2
    return http_config(routes, clusters, proxy=proxy, listener=listener)


async def proxy_to(
    nursery: trio.Nursery, up_port: int, route: dict[str, Any] | None = None, **kw: Any
) -> tuple[Server, int]:
    """A proxy with one route (``/`` to cluster ``up`` on ``up_port``); its port."""
    return await start_proxy(nursery, h2_config([route or to("up")], {"up": up_port}, **kw))


def pattern_sha(n: int) -> str:
    """sha256 of ``pattern_bytes(n)``, computed in pieces (n may be 100 MB)."""
    digest = hashlib.sha256()
    period = pattern_bytes(65536)
    while n > 0:
        piece = period[: min(n, len(period))]
        digest.update(piece)
        n -= len(piece)
    return digest.hexdigest()


async def read_body(client, sid: int) -> tuple[int, str]:
    """Read a response body chunk by chunk (never held whole): its length and sha256."""
    digest = hashlib.sha256()
    length = 0
    while chunk := await client.read_chunk(sid):
        digest.update(chunk)
        length += len(chunk)
    return length, digest.hexdigest()


async def run(*cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(
            list(cmd), capture_stdout=True, capture_stderr=True, check=False
        )


def split_curl(out: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


H2LOAD_SUMMARY = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout"
)


def h2load_summary(out: str) -> dict[str, int]:
    m = H2LOAD_SUMMARY.search(out)
    assert m, out
    return {k: int(v) for k, v in m.groupdict().items()}


# --------------------------------------------------------------------------- the CLI

LISTENING = re.compile(r"listener '(?P<name>[^']+)' listening on 127\.0\.0\.1:(?P<port>\d+)")
READY = re.compile(r"trio-mesh \S+ ready")


def mesh_doc(cluster_port: int, proxy: dict[str, Any]) -> dict[str, Any]:
    """A whole configuration: listener ``ingress`` on a free port, one route to ``up``."""
    return {
        "servers": [
            {
                "default_log_level": "INFO",
                "listeners": [
                    {
                        "name": "ingress",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "type": "proxy",
                                        "config": {"router_config_name": "r", **proxy},
                                    }
                                ]
                            }
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routers": [to("up")]}],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{cluster_port}"}],
                }
            ]
        },
    }


class CliProxy:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0

    def vm(self, key: str) -> int:
        """A ``/proc/PID/status`` value in bytes (``VmHWM``, ``VmRSS``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {key} in /proc/{self.proc.pid}/status")


@contextlib.asynccontextmanager
async def cli_proxy(tmp_path: Path, doc: dict[str, Any]) -> AsyncIterator[CliProxy]:
    """``python -m trio_mesh.cli run CONF.yaml`` in a subprocess; ready (its log line says
    so) when the block starts, killed when it ends."""
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_mesh.cli", "run", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
    )
    cli = CliProxy(proc)
    ready = trio.Event()

    async def read_stderr() -> None:
        buf = b""
        assert proc.stderr is not None
        while data := await proc.stderr.receive_some(65536):
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                cli.lines.append(line)
                if m := LISTENING.search(line):
                    cli.port = int(m["port"])
                if READY.search(line):
                    ready.set()
        ready.set()  # exited: the check below fails with its log

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stderr)
            with trio.fail_after(15):
                await ready.wait()
            assert proc.returncode is None and cli.port, "\n".join(cli.lines)
            yield cli
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(OSError):
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
    assert "Traceback" not in "\n".join(cli.lines), "\n".join(cli.lines)


# --------------------------------------------------------------------------- 1. h2 -> h2


async def test_h2_to_h2_get_forwards_authority_and_headers(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        r = await h2_request(
            port, "GET", "/echo?a=b", [("x-test", "1")], authority="svc.example:8080"
        )
        assert r.status == 200, r
        info = r.json()
        assert (info["method"], info["path"], info["scheme"]) == ("GET", "/echo?a=b", "http")
        assert info["authority"] == "svc.example:8080"
        headers = dict(info["headers"])
        assert headers["x-test"] == "1"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert HEX32.fullmatch(headers["x-request-id"]), headers
        assert "host" not in headers
        # Exactly the four request pseudo-headers, first, once each.
        _, seen = up.requests[-1]
        names = [n for n, _ in seen]
        assert sorted(names[:4]) == [":authority", ":method", ":path", ":scheme"], names
        assert not any(n.startswith(":") for n in names[4:]), names

        # A client's x-request-id is kept, its x-forwarded-for extended.
        r = await h2_request(
            port,
            "GET",
            "/echo",
            [("x-request-id", "abc-123"), ("x-forwarded-for", "10.1.1.1")],
        )
        headers = dict(r.json()["headers"])
        assert headers["x-request-id"] == "abc-123"
        assert headers["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert up.protocol_errors == []


async def test_h2_to_h2_post_1mb_trailers_head_status(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    body = os.urandom(1 << 20)
    with trio.fail_after(10):
        r = await h2_request(port, "POST", "/upload", body=body)
        assert r.status == 200
        assert r.json() == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}

        r = await h2_request(port, "GET", "/trailers")
        assert (r.status, r.body) == (200, b"trailers\n")
        assert r.trailers == [("x-trailer", "yes"), ("grpc-status", "0")]

        # Request trailers reach the upstream (and /echo sends them back as trailers).
        r = await h2_request(port, "POST", "/echo", body=b"abc", trailers=[("x-t", "tt")])
        assert r.json()["trailers"] == [["x-t", "tt"]]
        assert r.json()["body_len"] == 3
        assert r.trailers == [("x-t", "tt")]

        r = await h2_request(port, "HEAD", "/bytes/1000")
        assert (r.status, r.headers.get("content-length"), r.body) == (200, "1000", b"")
        assert up.requests[-1][1].get(":method") == "HEAD"

        r = await h2_request(port, "GET", "/status/404")
        assert (r.status, r.body) == (404, b"status 404\n")  # the upstream's, not a local 404
    assert up.protocol_errors == []


async def test_h2_to_h2_concurrent_streams_share_one_upstream_connection(
    nursery: trio.Nursery,
) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    n = 20
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            # Every request is opened and held open (no END_STREAM): the upstream sees all
            # 20 at once before any of them can finish.
            sids = [
                await client.send_headers("POST", f"/echo?i={i}", end_stream=False)
                for i in range(n)
            ]
            await up.wait_until(lambda: len(up.requests) == n)
            assert up.max_concurrent_seen == n
            responses: dict[int, Any] = {}

            async def finish(i: int, sid: int) -> None:
                await client.send_data(sid, b"x" * i, end_stream=True)
                responses[i] = await client.response(sid)

            async with trio.open_nursery() as inner:
                for i, sid in enumerate(sids):
                    inner.start_soon(finish, i, sid)
    for i in range(n):
        info = responses[i].json()
        assert (info["path"], info["body_len"]) == (f"/echo?i={i}", i)
        assert info["connection"] == 1
    assert len({responses[i].json()["stream_id"] for i in range(n)}) == n
    assert up.connections == 1
    assert up.max_concurrent_seen > 1


async def test_a_stalled_stream_does_not_block_its_neighbours(nursery: trio.Nursery) -> None:
    """One stream whose reader stalls, one whose upstream stalls: other streams on the same
    downstream and upstream connections go on (flow control is per stream)."""
    up = await start_extra_upstream(nursery, initial_window_size=1 << 20, connection_window=1 << 24)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        async with open_h2_client(port, connection_window=1 << 24) as client:
            unread = await client.send_headers("GET", "/counted/20000000", end_stream=True)
            stalled = await client.send_headers("POST", "/slow-read")
            await client.send_data(stalled, os.urandom(200_000))
            await up.wait_until(lambda: up.bytes_received >= 200_000)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            body = os.urandom(500_000)
            r = await client.request("POST", "/upload", body=body)
            assert r.json() == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            r = await client.request("GET", "/bytes/300000")
            assert r.body == pattern_bytes(300_000)
            assert up.connections == 1
            await client.reset(unread)
            await client.reset(stalled)


async def test_downstream_max_concurrent_streams(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, http2={"max_concurrent_streams": 3})
    with trio.fail_after(5):
        async with open_h2_client(port) as client:
            await client.wait_until(lambda: client.conn.remote_settings.max_concurrent_streams == 3)
            held = [await client.send_headers("POST", "/echo") for _ in range(3)]
            extra = await client.send_raw_headers(
                [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/echo")]
            )
            await client.wait_until(lambda: client.streams[extra].raw_frames)
            (frame,) = client.streams[extra].raw_frames
            assert (frame.type, frame.error_code) == (0x3, ErrorCodes.REFUSED_STREAM)
            for sid in held:
                await client.send_data(sid, b"", end_stream=True)
                assert (await client.response(sid)).status == 200
    assert [p for p, _ in up.requests] == ["/echo"] * 3


async def test_h2_access_log(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_h2_upstream(nursery)
    keys, log_path = access_log(tmp_path)
    body = os.urandom(100_000)
    async with trio.open_nursery() as proxy_nursery:
        _, port = await start_proxy(
            proxy_nursery, h2_config([to("up")], {"up": up.port}, listener=keys)
        )
        with trio.fail_after(10):
            r = await h2_request(port, "PUT", "/upload?x=1", body=body, authority="log.example")
        proxy_nursery.cancel_scope.cancel()
    (entry,) = read_access_log(log_path)
    assert (entry["protocol"], entry["method"], entry["path"]) == ("HTTP/2", "PUT", "/upload?x=1")
    assert (entry["response_code"], entry["authority"]) == (200, "log.example")
    assert (entry["bytes_received"], entry["bytes_sent"]) == (len(body), len(r.body))
    assert entry["upstream_cluster"] == "up"
    assert entry["upstream_host"] == f"127.0.0.1:{up.port}"
    assert entry["downstream_local_address"] == f"127.0.0.1:{port}"
    assert entry["duration"] >= entry["response_received_duration"] > 0


async def send_with_wrong_length(client, sent: int) -> int:
    """POST /echo declaring content-length 10 and sending ``sent`` bytes; the stream id."""
    sid = await client.send_headers("POST", "/echo", [("content-length", "10")])
    client.conn.send_data(sid, b"a" * sent, end_stream=True)  # h2 checks no lengths it sends
    await client.drain()
    return sid


@pytest.mark.parametrize("sent", [5, 15], ids=["short", "long"])
async def test_content_length_mismatch_is_a_stream_error(nursery: trio.Nursery, sent: int) -> None:
    """RFC 9113 8.1.1: RST_STREAM(PROTOCOL_ERROR) on that stream only; a stream in flight on
    the same connection meanwhile completes, and the connection takes new streams."""
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            other = await client.send_headers("POST", "/echo")  # in flight meanwhile
            await up.wait_until(lambda: len(up.requests) == 1)
            bad = await send_with_wrong_length(client, sent)
            with pytest.raises(H2StreamReset) as exc:
                await client.response(bad)
            assert exc.value.error_code == ErrorCodes.PROTOCOL_ERROR
            await client.send_data(other, b"still here", end_stream=True)
            r = await client.response(other)
            assert r.json()["body_len"] == len(b"still here")
            r = await client.request("POST", "/echo", [("content-length", "3")], b"abc")
            assert r.json()["body_len"] == 3
            assert client.goaway is None


# --------------------------------------------------------------------------- 2. h2 -> h1


async def test_h2_to_h1(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, up="Http1")
    with trio.fail_after(10):
        r = await h2_request(port, "GET", "/echo?q=1", [("x-test", "1")], authority="a.example")
        assert r.status == 200
        info = r.json()
        assert (info["method"], info["target"]) == ("GET", "/echo?q=1")
        headers = upstream_headers(info)
        assert headers.getall("host") == ["a.example"]
        assert headers.get("x-test") == "1"
        assert headers.get("x-forwarded-for") == "127.0.0.1"
        assert not any(n.startswith(":") for n, _ in headers)

        body = os.urandom(300_000)
        r = await h2_request(port, "POST", "/echo", body=body)
        info = r.json()
        assert info["body_length"] == len(body)
        assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
        headers = upstream_headers(info)
        # No length known from HTTP/2: the body goes chunked.
        assert headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in headers

        r = await h2_request(port, "GET", "/chunked/100000")
        assert (r.status, r.body) == (200, pattern_bytes(100_000))
        assert "transfer-encoding" not in r.headers  # connection-specific in HTTP/2

        r = await h2_request(port, "GET", "/bytes/200000")
        assert r.status == 200 and r.headers.get("content-length") == "200000"
        assert r.body == pattern_bytes(200_000)


async def test_h2_to_h1_reuse_head_and_upstream_failures(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, up="Http1")
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            for i in range(3):  # one after another: the upstream connection is reused
                r = await client.request("GET", f"/status/20{i}")
                assert r.status == 200 + i
            assert up.connections == 1

            # Closed before a response: 502, the client's connection goes on.
            r = await client.request("GET", "/hangup")
            assert r.status == 502, r
            assert r.body.endswith(b"connection termination\n")
            # Reset in the middle of the body: the client's stream is reset, not ended.
            sid = await client.send_headers("GET", "/reset-mid-body", end_stream=True)
            status, headers = await client.read_head(sid)
            assert (status, headers.get("content-length")) == (200, "100000")
            with pytest.raises(H2StreamReset):
                await read_body(client, sid)

            # Last: h11 (the upstream) closes its connection after a HEAD of /bytes/N.
            r = await client.request("HEAD", "/bytes/5000")
            assert (r.status, r.headers.get("content-length"), r.body) == (200, "5000", b"")
    assert [i["method"] for i in up.requests][-1] == "HEAD"


async def closing_upstream(nursery: trio.Nursery) -> tuple[int, list[int]]:
    """An HTTP/1.1 upstream that answers one request per connection with a keep-alive
    response, then closes (as an upstream's idle timeout does); the port and a list that
    counts its connections."""
    connections: list[int] = []

    async def serve(stream: trio.SocketStream) -> None:
        connections.append(1)
        buf = bytearray()
        if await read_request(stream, buf) is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await stream.aclose()

    return await start_raw_server(nursery, serve), connections


@pytest.mark.parametrize(
    "down",
    [
        "Http1",
        "Http2",
    ],
)
async def test_upstream_closed_idle_connection_is_retried(nursery: trio.Nursery, down: str) -> None:
    up_port, connections = await closing_upstream(nursery)
    _, port = await proxy_to(nursery, up_port, down=down, up="Http1")
    statuses = []
    with trio.fail_after(10):
        for _ in range(3):
            if down == "Http2":
                r = await h2_request(port, "GET", "/")
                statuses.append((r.status, r.body))
            else:
                async with await Client.connect(port) as client:
                    await client.send(get("/"))
                    r = await client.response()
                    statuses.append((r.status, r.body))
    assert statuses == [(200, b"ok")] * 3
    assert len(connections) >= 3


@pytest.mark.parametrize("sent", [5, 15], ids=["short", "long"])
async def test_h2_to_h1_body_not_matching_content_length_is_not_smuggled(
    nursery: trio.Nursery, sent: int
) -> None:
    """A body shorter or longer than the client's content-length never reaches the upstream
    as a complete request, and the upstream connection that carried its head is not reused
    (what the next request sends would be read as the rest of that body)."""
    up = await start_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, up="Http1")
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await send_with_wrong_length(client, sent)
            with pytest.raises((H2StreamReset, H2ConnectionClosed)):
                await client.response(sid)
        r = await h2_request(port, "POST", "/echo", body=b"x" * 10)
    assert r.status == 200
    assert r.json()["body_sha256"] == hashlib.sha256(b"x" * 10).hexdigest()
    assert [(i["target"], i["body_length"]) for i in up.requests] == [("/echo", 10)]


async def test_client_reset_mid_download_closes_h1_upstream_connection(
    nursery: trio.Nursery,
) -> None:
    up = await start_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, up="Http1")
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("GET", "/bytes/50000000", end_stream=True)
            await client.read_head(sid)
            assert await client.read_chunk(sid)
            await client.reset(sid)
            # The upstream connection had a response half sent: it cannot be reused.
            while up.closed == 0:
                await up.closed_event.wait()
            r = await client.request("GET", "/status/200")
            assert r.status == 200
    assert up.connections == 2


# --------------------------------------------------------------------------- 3. h1 -> h2


async def test_h1_to_h2(nursery: trio.Nursery) -> None:
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, down="Http1")
    body = os.urandom(250_000)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/echo?x=1", host="h1.example", headers="x-test: 1\r\n"))
            r = await client.response()
            info = r.json()
            assert r.status == 200 and "connection" not in r.headers, r
            assert (info["method"], info["path"], info["scheme"]) == ("GET", "/echo?x=1", "http")
            assert info["authority"] == "h1.example"
            headers = dict(info["headers"])
            assert headers["x-test"] == "1"
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert "host" not in headers

            # The same downstream connection again (keep-alive), with a body.
            await client.send(
                b"POST /upload HTTP/1.1\r\nHost: h1.example\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            r = await client.response()
            assert r.json() == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}

            await client.send(get("/bytes/200000"))
            r = await client.response()
            assert r.headers.get("content-length") == "200000"
            assert "transfer-encoding" not in r.headers
            assert r.body == pattern_bytes(200_000)

            # No content-length from the upstream: chunked to an HTTP/1.1 client.
            await client.send(get("/nolength/100000"))
            r = await client.response()
            assert r.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.headers
            assert r.body == pattern_bytes(100_000)

            # A chunked request body becomes DATA frames.
            await client.send(
                b"POST /upload HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            r = await client.response()
            assert r.json() == {"len": 11, "sha256": hashlib.sha256(b"hello world").hexdigest()}
    # Five requests, one client connection, one upstream connection.
    assert len(up.requests) == 5
    assert up.connections == 1


async def test_h1_to_h2_upstream_refuses_before_headers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up = await start_h2_upstream(nursery)
    keys, log_path = access_log(tmp_path)
    async with trio.open_nursery() as proxy_nursery:
        _, port = await start_proxy(
            proxy_nursery,
            h2_config([to("up")], {"up": up.port}, down="Http1", listener=keys),
        )
        with trio.fail_after(10):
            async with await Client.connect(port) as client:
                await client.send(get("/reset"))
                r = await client.response()
        proxy_nursery.cancel_scope.cancel()
    assert r.status == 502, r
    # REFUSED_STREAM: never processed, so sent once more (the keep-alive race retry), then 502.
    assert [p for p, _ in up.requests] == ["/reset", "/reset"]
    (entry,) = read_access_log(log_path)
    assert entry["response_code"] == 502
    assert "UC" in entry["response_flag"]


async def test_h1_to_h2_upstream_reset_after_head_aborts_the_client(
    nursery: trio.Nursery,
) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, down="Http1")
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/reset-after-head"))
            # The head went (chunked: no length known), then the connection is cut: the
            # body never gets its last chunk.
            raw = await client.read_to_eof()
            assert raw.startswith(b"HTTP/1.1 200"), raw
            assert b"transfer-encoding: chunked" in raw.lower(), raw
            assert not raw.endswith(b"0\r\n\r\n"), raw
        async with await Client.connect(port) as client:
            body = b"some request body"
            await client.send(
                b"POST /reset HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            r = await client.response()
            assert r.status == 502, r
    # A streamed body is not kept: no second try.
    assert [p for p, _ in up.requests] == ["/reset-after-head", "/reset"]


@pytest.mark.parametrize(
    "upstream",
    [
        "Http1",
        "Http2",
    ],
)
async def test_h1_client_expect_100_continue(nursery: trio.Nursery, upstream: str) -> None:
    up: Any = await (start_h2_upstream if upstream == "Http2" else start_upstream)(nursery)
    _, port = await proxy_to(nursery, up.port, down="Http1", up=upstream)
    body = b"x" * 1000
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            interim = None
            with trio.move_on_after(0.5):  # a client waiting for 100 Continue before its body
                interim = await client.response(interim=True)
            assert interim is not None and interim.status == 100, "no 100 Continue"
            await client.send(body)
            r = await client.response()
    if upstream == "Http2":
        assert r.json() == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    else:
        assert (r.json()["body_length"], r.json()["target"]) == (len(body), "/upload")


async def test_h1_0_client_to_h2_gets_close_delimited_body(nursery: trio.Nursery) -> None:
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, down="Http1")
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(b"GET /nolength/50000 HTTP/1.0\r\nHost: x\r\n\r\n")
            raw = await client.read_to_eof()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"), head
    assert b"chunked" not in head.lower()
    assert body == pattern_bytes(50_000)


async def test_h1_to_h2_route_timeout(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, to("up", timeout="200ms"), down="Http1")
    with trio.fail_after(3):
        async with await Client.connect(port) as client:
            await client.send(get("/slow/5"))
            r = await client.response()
            assert (r.status, r.body) == (504, b"upstream request timeout\n")
            await up.wait_until(lambda: up.resets)
    assert up.resets[0][3] == "/slow/5"


# --------------------------------------------------------------------------- 4. real clients


@needs_curl
async def test_curl_prior_knowledge_through_proxy(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    base = f"http://127.0.0.1:{port}"
    rc, out, err = await curl("--noproxy", "*", "--http2-prior-knowledge", "-i", base + "/echo")
    assert rc == 0, err
    status, _, body = split_curl(out)
    assert status.startswith("HTTP/2 200"), out
    info = json.loads(body)
    assert info["authority"] == f"127.0.0.1:{port}"
    assert dict(info["headers"])["x-forwarded-for"] == "127.0.0.1"

    upload = os.urandom(500_000)
    (tmp_path / "body").write_bytes(upload)
    rc, out, err = await curl(
        "--noproxy",
        "*",
        "--http2-prior-knowledge",
        "--data-binary",
        f"@{tmp_path / 'body'}",
        base + "/upload",
    )
    assert rc == 0, err
    assert json.loads(out) == {"len": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}
    assert up.connections == 1  # both curl connections went over one upstream connection


@needs_nghttp
async def test_nghttp_through_proxy(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    p = await run("nghttp", f"http://127.0.0.1:{port}/bytes/300000")
    assert p.returncode == 0, p.stderr
    assert p.stdout == pattern_bytes(300_000)
    p = await run("nghttp", "-v", f"http://127.0.0.1:{port}/trailers")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert re.search(r"recv \(stream_id=\d+\) x-trailer: yes", out), out


@needs_h2load
@pytest.mark.parametrize(
    ("upstream", "n"), [("Http2", 20000), ("Http1", 2000)], ids=["h2-h2", "h2-h1"]
)
async def test_h2load_through_proxy(
    nursery: trio.Nursery, tmp_path: Path, upstream: str, n: int
) -> None:
    # The proxy in its own process: it and the upstream (here) get a core each.
    if upstream == "Http2":
        up: Any = await start_h2_upstream(nursery)
    else:
        up = await start_upstream(nursery)
    doc = mesh_doc(up.port, {"downstream_protocol": "Http2", "upstream_protocol": upstream})
    async with cli_proxy(tmp_path, doc) as proxy:
        p = await run(
            "h2load",
            *("-n", str(n), "-c", "10", "-m", "10"),
            f"http://127.0.0.1:{proxy.port}/status/200",
            timeout=60,
        )
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    summary = h2load_summary(out)
    assert summary["succeeded"] == n, out
    assert summary["failed"] == summary["errored"] == summary["timeout"] == 0, out
    assert f"status codes: {n} 2xx" in out, out
    assert len(up.requests) == n
    if upstream == "Http2":
        # 10 client connections x 10 streams, multiplexed on one upstream connection.
        assert up.connections == 1
        assert 1 < up.max_concurrent_seen <= 100
        assert up.refused == [] and up.protocol_errors == []


# --------------------------------------------------------------------------- 5. 100 MB each way


MB100 = 100 * 1024 * 1024


async def test_100mb_each_way_memory_bounded(nursery: trio.Nursery, tmp_path: Path) -> None:
    # Wide windows on the test's own peers, so that the proxy is the narrow part.
    up = await start_h2_upstream(nursery, initial_window_size=1 << 20, connection_window=1 << 24)
    doc = mesh_doc(up.port, {"downstream_protocol": "Http2", "upstream_protocol": "Http2"})
    async with cli_proxy(tmp_path, doc) as proxy:
        window = {4: 1 << 20}  # SettingCodes.INITIAL_WINDOW_SIZE
        async with open_h2_client(proxy.port, settings=window, connection_window=1 << 24) as c:
            with trio.fail_after(10):  # warm up: every code path once
                r = await c.request("POST", "/upload", body=b"warm" * 100_000)
                assert r.json()["len"] == 400_000
                r = await c.request("GET", "/bytes/1000000")
                assert r.body == pattern_bytes(1_000_000)
            baseline = proxy.vm("VmHWM")

            with trio.fail_after(60):
                sid = await c.send_headers("POST", "/upload")
                digest = hashlib.sha256()
                for i in range(100):
                    piece = os.urandom(1 << 20)
                    digest.update(piece)
                    await c.send_data(sid, piece, end_stream=i == 99)
                r = await c.response(sid)
                assert r.json() == {"len": MB100, "sha256": digest.hexdigest()}

                sid = await c.send_headers("GET", f"/bytes/{MB100}", end_stream=True)
                status, headers = await c.read_head(sid)
                assert (status, headers.get("content-length")) == (200, str(MB100))
                assert await read_body(c, sid) == (MB100, pattern_sha(MB100))
            grown = proxy.vm("VmHWM") - baseline
    assert grown < 64 << 20, f"the proxy's peak RSS grew by {grown >> 20} MB"
    assert up.connections == 1


# --------------------------------------------------------------------------- 6. backpressure


PROXY_STREAM_WINDOW = 256 * 1024  # the proxy's default initial_stream_window_size
H2_DEFAULT_WINDOW = 65535  # the test peers' windows (stream and connection)


async def test_backpressure_slow_upstream_reader(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    body = os.urandom(4 << 20)
    sent = 0
    with trio.fail_after(20):
        async with open_h2_client(port, connection_window=1 << 24) as client:
            sid = await client.send_headers("POST", "/slow-read")

            async def upload() -> None:
                nonlocal sent
                for start in range(0, len(body), CHUNK):
                    piece = body[start : start + CHUNK]
                    await client.send_data(sid, piece, end_stream=start + CHUNK >= len(body))
                    sent += len(piece)

            async with trio.open_nursery() as inner:
                inner.start_soon(upload)
                # The upstream acknowledges nothing: it gets its window's worth, and then
                # everything stalls.
                await up.wait_until(lambda: up.bytes_received >= H2_DEFAULT_WINDOW)
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                assert up.bytes_received == H2_DEFAULT_WINDOW
                assert up.bytes_consumed == 0
                assert H2_DEFAULT_WINDOW <= sent <= H2_DEFAULT_WINDOW + PROXY_STREAM_WINDOW + CHUNK
                up.read_gate.set()
            r = await client.response(sid)
    assert r.json() == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_backpressure_slow_downstream_reader(nursery: trio.Nursery) -> None:
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    n = 20_000_000
    with trio.fail_after(20):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("GET", f"/counted/{n}", end_stream=True)
            st = client.streams[sid]
            # Nothing is read (nor acknowledged): the client's window fills up...
            await client.wait_until(lambda: st.received >= H2_DEFAULT_WINDOW)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            assert st.received == H2_DEFAULT_WINDOW
            # ...and the upstream could send only what the proxy can hold for the client.
            assert up.body_sent <= H2_DEFAULT_WINDOW + PROXY_STREAM_WINDOW + 2 * CHUNK
            assert await read_body(client, sid) == (n, pattern_sha(n))
    assert up.body_sent == n


async def test_backpressure_slow_http1_reader_of_an_h2_upstream(nursery: trio.Nursery) -> None:
    """h1 -> h2: an HTTP/1 client that reads nothing; the upstream may send no more than the
    proxy's stream window plus what the kernel buffers on the way (the proxy's send buffer
    grows up to tcp_wmem's maximum)."""
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, down="Http1")
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    n = 30_000_000
    with trio.fail_after(20):
        async with await Client.connect(port) as client:
            client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            await client.send(get(f"/counted/{n}"))
            await up.wait_until(lambda: up.body_sent > 0)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            bound = PROXY_STREAM_WINDOW + wmem_max + (1 << 20)
            assert up.body_sent <= bound, (up.body_sent, bound)
            assert bound < n  # else this test proves nothing
            r = await client.response()
    assert r.headers.get("content-length") == str(n)
    assert hashlib.sha256(r.body).hexdigest() == pattern_sha(n)


async def test_backpressure_h2_upload_to_a_slow_http1_upstream(nursery: trio.Nursery) -> None:
    """h2 -> h1: an HTTP/1 upstream that reads nothing for a while; the client may send no
    more than the proxy's stream window plus the kernel's buffers on the way."""
    gate = trio.Event()
    n = 30_000_000

    async def serve(stream: trio.SocketStream) -> None:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(65536)
        await gate.wait()
        head, _, body = bytes(buf).partition(b"\r\n\r\n")
        assert b"content-length: %d" % n in head.lower(), head
        digest = hashlib.sha256(body)
        got = len(body)
        while got < n:
            data = await stream.receive_some(1 << 20)
            assert data
            digest.update(data)
            got += len(data)
        answer = digest.hexdigest().encode()
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n" + answer)

    up_port = await start_raw_server(nursery, serve)
    _, port = await proxy_to(nursery, up_port, up="Http1")
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    piece = os.urandom(1 << 20)
    body_digest = hashlib.sha256()
    sent = 0
    with trio.fail_after(20):
        async with open_h2_client(port, connection_window=1 << 24) as client:
            sid = await client.send_headers("POST", "/", [("content-length", str(n))])

            async def upload() -> None:
                nonlocal sent
                while sent < n:
                    data = piece[: min(CHUNK, n - sent)]
                    await client.send_data(sid, data, end_stream=sent + len(data) == n)
                    body_digest.update(data)
                    sent += len(data)

            async with trio.open_nursery() as inner:
                inner.start_soon(upload)
                await client.wait_until(lambda: sent > PROXY_STREAM_WINDOW)
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                bound = PROXY_STREAM_WINDOW + wmem_max + (1 << 20)
                assert sent <= bound, (sent, bound)
                assert bound < n  # else this test proves nothing
                gate.set()
            r = await client.response(sid)
    assert (r.status, r.body) == (200, body_digest.hexdigest().encode())


# --------------------------------------------------------------------------- 7. resets


async def test_client_reset_reaches_upstream(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("GET", "/slow/5", end_stream=True)
            await up.wait_until(lambda: len(up.requests) == 1)
            await client.reset(sid, ErrorCodes.CANCEL)
            with trio.fail_after(1):  # well before /slow/5 would answer
                await up.wait_until(lambda: up.resets)
            # The connection goes on.
            r = await client.request("GET", "/status/200")
            assert r.status == 200
    (conn, _, code, path) = up.resets[0]
    assert (conn, path, code) == (1, "/slow/5", ErrorCodes.CANCEL)


@pytest.mark.parametrize("upstream", ["Http2", "Http1"])
async def test_client_reset_mid_upload_reaches_upstream(
    nursery: trio.Nursery, upstream: str
) -> None:
    if upstream == "Http2":
        up: Any = await start_h2_upstream(nursery)
    else:
        up = await start_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, up=upstream)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers(
                "POST", "/slow-read" if upstream == "Http2" else "/echo"
            )
            await client.send_data(sid, b"x" * 50_000)
            if upstream == "Http2":
                await up.wait_until(lambda: up.bytes_received >= 50_000)
            else:
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert up.connections == 1
            await client.reset(sid, ErrorCodes.CANCEL)
            with trio.fail_after(2):
                if upstream == "Http2":
                    await up.wait_until(lambda: up.resets)
                else:
                    while up.closed == 0:
                        await up.closed_event.wait()
            r = await client.request("GET", "/status/200")  # the connection goes on
            assert r.status == 200
    if upstream == "Http2":
        assert up.resets[0][3] == "/slow-read"
    else:
        # The cut upload never looks complete upstream (no last chunk made up for it).
        assert [r["target"] for r in up.requests] == ["/status/200"]


async def test_rapid_reset_closes_the_connection_and_cancels_upstream(
    nursery: trio.Nursery,
) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, http2={"max_premature_resets": 5})
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            for _ in range(10):
                if not client.alive:
                    break
                sid = await client.send_headers("GET", "/slow/5", end_stream=True)
                await client.reset(sid)
            await client.wait_closed()
            assert client.goaway is not None
            assert client.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        # Whatever reached the upstream is cancelled there, not left running.
        with trio.fail_after(2):
            await up.wait_until(lambda: len(up.resets) == len(up.requests))
    assert all(path == "/slow/5" for _, _, _, path in up.resets)


async def test_upstream_reset_after_head_reaches_client(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("GET", "/reset-after-head", end_stream=True)
            status, _ = await client.read_head(sid)
            assert status == 200
            with pytest.raises(H2StreamReset) as exc:
                await client.read_chunk(sid)
            assert exc.value.error_code == ErrorCodes.INTERNAL_ERROR
            r = await client.request("GET", "/status/200")  # the connection goes on
            assert r.status == 200


async def test_upstream_refuses_before_headers_502(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_h2_upstream(nursery)
    keys, log_path = access_log(tmp_path)
    async with trio.open_nursery() as proxy_nursery:
        _, port = await start_proxy(
            proxy_nursery, h2_config([to("up")], {"up": up.port}, listener=keys)
        )
        with trio.fail_after(10):
            r = await h2_request(port, "GET", "/reset")
        proxy_nursery.cancel_scope.cancel()
    assert r.status == 502, r
    assert r.body.endswith(b"connection termination\n")
    # REFUSED_STREAM: never processed, and no body: sent once more, then 502. (With a
    # body: see test_upstream_reset_before_headers_with_request_body_gives_502.)
    assert [p for p, _ in up.requests] == ["/reset", "/reset"]
    (entry,) = read_access_log(log_path)
    assert (entry["response_code"], entry["protocol"]) == (502, "HTTP/2")
    assert "UC" in entry["response_flag"]


@pytest.mark.parametrize("code", [ErrorCodes.REFUSED_STREAM, ErrorCodes.INTERNAL_ERROR])
async def test_upstream_reset_before_headers_with_request_body_gives_502(
    nursery: trio.Nursery, code: int
) -> None:
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("POST", f"/reset-code/{int(code)}")
            await client.send_data(sid, b"payload", end_stream=True)
            r = await client.response(sid)
    assert r.status == 502, r
    assert r.body.endswith(b"connection termination\n")
    paths = [p for p, _ in up.requests]
    if code == ErrorCodes.REFUSED_STREAM:  # never processed: may be sent again, once
        assert paths in (["/reset-code/7"], ["/reset-code/7"] * 2), paths
    else:  # may have been processed: never sent again
        assert paths == [f"/reset-code/{int(code)}"]


async def test_refused_stream_body_is_replayed(nursery: trio.Nursery) -> None:
    """A stream refused after its whole body (and trailers) went upstream is sent again,
    body and trailers replayed from the retry buffer."""
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    body = os.urandom(50_000)  # under retry_buffer_bytes (64 KiB)
    with trio.fail_after(10):
        r = await h2_request(port, "POST", "/refuse-once/a", body=body, trailers=[("x-t", "1")])
    assert r.status == 200, r
    assert r.json() == {
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "trailers": [["x-t", "1"]],
    }
    assert [p for p, _ in up.requests] == ["/refuse-once/a"] * 2


async def test_refused_stream_mid_body_is_replayed_then_streamed_on(
    nursery: trio.Nursery,
) -> None:
    """Refused while the client is still sending: what went is replayed on the new stream,
    the rest follows as it arrives."""
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    body = os.urandom(60_000)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("POST", "/refuse-once/b?after=30000")
            await client.send_data(sid, body[:40_000])
            await up.wait_until(lambda: len(up.requests) == 2)  # the second try is on
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            await client.send_data(sid, body[40_000:], end_stream=True)
            r = await client.response(sid)
    assert r.status == 200, r
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_refused_stream_with_a_body_over_the_retry_buffer_is_502(
    nursery: trio.Nursery,
) -> None:
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        r = await h2_request(port, "POST", "/refuse-once/c", body=os.urandom(200_000))
        assert r.status == 502, r
        # The connection and the upstream are fine for the next one.
        r = await h2_request(port, "POST", "/refuse-once/c", body=b"again")
        assert r.json()["body_len"] == 5
    assert [p for p, _ in up.requests] == ["/refuse-once/c"] * 2


async def test_upstream_connection_dies(nursery: trio.Nursery) -> None:
    """The upstream connection is reset: a stream whose response started is reset, one
    still waiting for its head gets 502, and the next request gets a new connection."""
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            waiting = await client.send_headers("GET", "/slow/5", end_stream=True)
            await up.wait_until(lambda: len(up.requests) == 1)
            started = await client.send_headers("GET", "/die", end_stream=True)
            assert (await client.read_head(started))[0] == 200
            with pytest.raises(H2StreamReset):
                await client.read_chunk(started)
            r = await client.response(waiting)
            assert r.status == 502, r
            r = await client.request("GET", "/status/200")
            assert r.status == 200
    assert up.connections == 2
    assert up.request_connections[-1] == 2


async def test_a_broken_upstream_connection_fails_only_its_own_streams(
    nursery: trio.Nursery,
) -> None:
    """Two upstream connections in the pool (the upstream takes 2 streams each), two streams
    on each, one response started and one waiting on each. Connection 1 is reset: its
    started stream is reset, its waiting one gets 502 (not sent again: it may have been
    processed); the streams on connection 2 complete, and later requests use it."""
    up = await start_h2_upstream(nursery, max_concurrent_streams=2)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        # a connection window for all: an unread stream (per-stream window) blocks no other
        async with open_h2_client(port, connection_window=1 << 24) as client:
            sids = {}
            for name, method, path in [
                ("started-1", "GET", "/bytes/5000000"),
                ("waiting-1", "GET", "/slow/10"),
                ("started-2", "GET", "/bytes/300000"),
                ("waiting-2", "POST", "/echo"),  # its body is sent after the kill
            ]:
                sids[name] = await client.send_headers(method, path, end_stream=method == "GET")
                await up.wait_until(lambda: len(up.requests) == len(sids))
            assert up.request_connections == [1, 1, 2, 2]
            first = {}
            for name in ("started-1", "started-2"):  # mid-response on both connections
                assert (await client.read_head(sids[name]))[0] == 200
                first[name] = await client.read_chunk(sids[name])

            await up.kill_connection(1)

            with pytest.raises(H2StreamReset):
                await read_body(client, sids["started-1"])
            r = await client.response(sids["waiting-1"])
            assert r.status == 502, r
            assert r.body.endswith(b"connection termination\n"), r.body
            # connection 2's streams go on: one mid-response, one still sending its body
            await client.send_data(sids["waiting-2"], b"still here", end_stream=True)
            r = await client.response(sids["waiting-2"])
            assert (r.status, r.json()["body_len"], r.json()["connection"]) == (200, 10, 2)
            body = bytearray(first["started-2"])
            while chunk := await client.read_chunk(sids["started-2"]):
                body += chunk
            assert body == pattern_bytes(300_000)
            r = await client.request("POST", "/echo", body=b"after")
            assert (r.status, r.json()["connection"]) == (200, 2)
            assert client.goaway is None
    assert [p for p, _ in up.requests].count("/slow/10") == 1
    assert up.connections == 2


# --------------------------------------------------------------------------- 8. GOAWAY, limits


async def test_upstream_goaway_moves_to_a_new_connection(nursery: trio.Nursery) -> None:
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            # Streams in flight on the first upstream connection, below the GOAWAY.
            held = [await client.send_headers("POST", f"/echo?held={i}") for i in range(5)]
            await up.wait_until(lambda: len(up.requests) == 5)
            r = await client.request("GET", "/goaway")
            assert (r.status, r.body) == (200, b"goaway\n")
            after = [await client.request("GET", f"/echo?after={i}") for i in range(5)]
            for sid in held:
                await client.send_data(sid, b"", end_stream=True)
            held_responses = [await client.response(sid) for sid in held]
    assert [r.status for r in after] == [200] * 5
    assert {r.json()["connection"] for r in after} == {2}
    assert [r.json()["connection"] for r in held_responses] == [1] * 5
    assert up.connections == 2


async def test_upstream_goaway_under_load_loses_nothing(nursery: trio.Nursery) -> None:
    """GOAWAY while many streams are being opened: streams the upstream refuses (above its
    GOAWAY's last stream id) were never processed and must be sent again, not failed."""
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    statuses: list[int] = []
    with trio.fail_after(15):
        async with open_h2_client(port) as client:

            async def one(path: str) -> None:
                statuses.append((await client.request("GET", path)).status)

            for _ in range(3):
                async with trio.open_nursery() as inner:
                    for i in range(30):
                        inner.start_soon(one, "/goaway" if i == 10 else "/status/200")
    assert statuses == [200] * 90, sorted(statuses)
    assert up.connections >= 3
    # Streams were refused (above a GOAWAY's last stream id) and sent again: more requests
    # reached the upstream than the client made.
    assert len(up.requests) > 90


async def test_upstream_goaway_under_load_loses_no_post(nursery: trio.Nursery) -> None:
    """The same with request bodies: a refused stream's body (small, kept for a retry) is
    sent again, so a graceful upstream GOAWAY fails no POST either."""
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port)
    outcomes: list[int | str] = []
    with trio.fail_after(15):
        async with open_h2_client(port) as client:

            async def one(path: str) -> None:
                try:
                    r = await client.request("POST", path, body=b"small body")
                    outcomes.append(r.status)
                except H2StreamReset as exc:
                    outcomes.append(f"reset {exc.error_code}")

            for _ in range(3):
                async with trio.open_nursery() as inner:
                    for i in range(30):
                        inner.start_soon(one, "/goaway" if i == 10 else "/upload")
    assert outcomes == [200] * 90, sorted(outcomes, key=str)


async def test_pool_respects_upstream_max_concurrent_streams(nursery: trio.Nursery) -> None:
    """An upstream that takes 5 streams at a time: 20 held streams (with bodies) need 4
    connections, and none is refused: a new connection is used once its SETTINGS are known."""
    up = await start_h2_upstream(nursery, max_concurrent_streams=5)
    _, port = await proxy_to(nursery, up.port)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            # One first, so that the upstream's SETTINGS are known before the rush.
            assert (await client.request("GET", "/status/200")).status == 200
            sids = [await client.send_headers("POST", f"/echo?i={i}") for i in range(20)]
            await up.wait_until(lambda: len(up.requests) == 21)
            responses = []
            for sid in sids:
                await client.send_data(sid, b"body", end_stream=True)
            for sid in sids:
                responses.append(await client.response(sid))
    assert [r.status for r in responses] == [200] * 20
    assert up.refused == []
    assert up.connections == 4
    assert up.max_concurrent_seen == 5


async def test_pool_first_connection_before_upstream_settings(nursery: trio.Nursery) -> None:
    """A burst on a new upstream connection, before its SETTINGS (5 streams) arrived:
    streams the upstream refuses for that are sent again, none fails."""
    up = await start_h2_upstream(nursery, max_concurrent_streams=5)
    _, port = await proxy_to(nursery, up.port)
    statuses: list[int] = []
    with trio.fail_after(10):
        async with open_h2_client(port) as client:

            async def one(i: int) -> None:
                statuses.append((await client.request("GET", f"/slow/0.05?i={i}")).status)

            async with trio.open_nursery() as inner:
                for i in range(20):
                    inner.start_soon(one, i)
    assert sorted(statuses) == [200] * 20, sorted(statuses)
    assert up.connections == 4


# --------------------------------------------------------------------------- 9. Auto


async def auto_proxy(nursery: trio.Nursery) -> tuple[Any, H2Upstream, int]:
    """Downstream and upstream Auto; /h1/ goes to an h11 upstream, /h2/ to an h2 one."""
    h1 = await start_upstream(nursery)
    h2 = await start_h2_upstream(nursery)
    config = h2_config(
        [
            to("h1", "/h1/", prefix_rewrite="/"),
            to("h2", "/h2/", prefix_rewrite="/"),
        ],
        {"h1": h1.port, "h2": h2.port},
        down="Auto",
        up="Auto",
    )
    _, port = await start_proxy(nursery, config)
    return h1, h2, port


async def test_auto_serves_http1_and_http2_on_one_port(nursery: trio.Nursery) -> None:
    h1, h2, port = await auto_proxy(nursery)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/h1/echo?via=h1", host="auto.example"))
            r = await client.response()
            info = echoed(r)
            assert r.version == "HTTP/1.1"
            assert (info["method"], info["target"]) == ("GET", "/echo?via=h1")
            assert info["headers"].get("host") == "auto.example"
            # keep-alive on the detected connection
            await client.send(get("/h1/status/201"))
            assert (await client.response()).status == 201

        r = await h2_request(port, "GET", "/h2/echo?via=h2", authority="auto.example")
        assert r.status == 200
        info = r.json()
        assert (info["path"], info["authority"]) == ("/echo?via=h2", "auto.example")
    assert len(h1.requests) == 2 and len(h2.requests) == 1
    assert h2.connections == 1
    # Upstream Auto is the client's protocol, whatever the upstream speaks: crossed over,
    # each fails (which shows the choice above was the client's protocol, not the route's).
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/h2/status/200"))
            assert (await client.response()).status in (502, 503)
        assert (await h2_request(port, "GET", "/h1/status/200")).status in (502, 503)
    assert h2.protocol_errors, "the h2 upstream never saw HTTP/1"
    assert h1.requests[-1]["method"] == "PRI"  # h11 read the HTTP/2 preface as a request


@needs_curl
async def test_auto_with_curl(nursery: trio.Nursery) -> None:
    h1, h2, port = await auto_proxy(nursery)
    base = f"http://127.0.0.1:{port}"
    rc, out, err = await curl("--noproxy", "*", "-i", "--http1.1", base + "/h1/bytes/70000")
    assert rc == 0, err
    status, _, body = split_curl(out)
    assert status.startswith("HTTP/1.1 200") and body == pattern_bytes(70_000), status
    rc, out, err = await curl(
        "--noproxy", "*", "-i", "--http2-prior-knowledge", base + "/h2/bytes/70000"
    )
    assert rc == 0, err
    status, _, body = split_curl(out)
    assert status.startswith("HTTP/2 200") and body == pattern_bytes(70_000), status
    assert (len(h1.requests), len(h2.requests)) == (1, 1)


async def test_auto_closes_on_unknown_protocol(nursery: trio.Nursery) -> None:
    h1, h2, port = await auto_proxy(nursery)
    tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(tls_hello)
            assert await client.closed()
    assert h1.connections == 0 and h2.connections == 0
    # The listener is fine afterwards.
    with trio.fail_after(5):
        r = await h2_request(port, "GET", "/h2/status/200")
    assert r.status == 200


# --------------------------------------------------------------------------- 10. drain


async def test_drain_sends_goaway_and_finishes_the_stream_in_flight(
    nursery: trio.Nursery,
) -> None:
    up = await start_h2_upstream(nursery)
    server, port = await proxy_to(nursery, up.port)
    outcome: dict[str, bool] = {}
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("POST", "/echo")  # in flight until we end it
            await client.send_data(sid, b"first ")
            await up.wait_until(lambda: len(up.requests) == 1)
            drained = trio.Event()

            async def drain() -> None:
                outcome["finished"] = await server.drain(5)
                drained.set()

            nursery.start_soon(drain)
            await client.wait_until(lambda: client.goaway is not None)
            assert client.goaway.error_code == ErrorCodes.NO_ERROR
            # First the announcement (RFC 9113 6.8): a stream the client sent before it read
            # it is still served.
            assert client.goaway.last_stream_id == 2**31 - 1
            early = await client.send_raw_headers(
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "x"),
                    (":path", "/echo?early"),
                ]
            )
            # (sent by hand past the client's own GOAWAY check: its frames come raw)
            await client.wait_until(lambda: client.streams[early].raw_frames)
            assert client.streams[early].raw_frames[0].type == 0x1  # HEADERS: answered
            await up.wait_until(lambda: len(up.requests) == 2)
            # Then the GOAWAY naming the last stream taken.
            await client.wait_until(lambda: client.goaway.last_stream_id != 2**31 - 1)
            assert client.goaway.error_code == ErrorCodes.NO_ERROR
            assert client.goaway.last_stream_id == early
            # A stream opened after that GOAWAY is refused, and never reaches the upstream.
            late = await client.send_raw_headers(
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "x"),
                    (":path", "/echo?late"),
                ]
            )
            late_stream = client.streams[late]
            await client.wait_until(lambda: late_stream.raw_frames)
            (frame,) = late_stream.raw_frames
            assert (frame.type, frame.error_code) == (0x3, ErrorCodes.REFUSED_STREAM)
            assert not drained.is_set()
            # The stream in flight still completes.
            await client.send_data(sid, b"second", end_stream=True)
            r = await client.response(sid)
            assert r.status == 200
            assert r.json()["body_len"] == len(b"first second")
            await drained.wait()
            await client.wait_closed()
    assert outcome["finished"] is True
    assert [p for p, _ in up.requests] == ["/echo", "/echo?early"]


async def test_drain_closes_an_idle_h2_connection_at_once(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    server, port = await proxy_to(nursery, up.port)
    with trio.fail_after(5):
        async with open_h2_client(port) as client:
            assert (await client.request("GET", "/status/200")).status == 200
            assert await server.drain(3) is True
            await client.wait_closed()
            assert client.goaway is not None
            assert client.goaway.error_code == ErrorCodes.NO_ERROR


# --------------------------------------------------------------------------- 11. route timeout


async def test_route_timeout_on_h2_gives_504_and_resets_upstream(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, to("up", timeout="200ms"))
    with trio.fail_after(3):
        start = trio.current_time()
        r = await h2_request(port, "GET", "/slow/5")
        elapsed = trio.current_time() - start
        assert (r.status, r.body) == (504, b"upstream request timeout\n")
        assert 0.19 <= elapsed < 2, elapsed
        # The upstream stream is not left running.
        await up.wait_until(lambda: up.resets)
    assert up.resets[0][3] == "/slow/5"


async def test_route_timeout_mid_response_resets_the_stream(nursery: trio.Nursery) -> None:
    """The head went, the body is still coming (the client reads nothing) when the route
    timeout fires: the stream is reset both ways, no 504 can be sent any more."""
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, to("up", timeout="300ms"))
    with trio.fail_after(5):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("GET", "/counted/20000000", end_stream=True)
            assert (await client.read_head(sid))[0] == 200
            st = client.streams[sid]
            await client.wait_until(lambda: st.reset_code is not None)
            assert st.reset_code == ErrorCodes.CANCEL
            await up.wait_until(lambda: up.resets)
            # What arrived before the reset is read (and acknowledged: the connection window
            # is shared), then the reset: the body never ends.
            with pytest.raises(H2StreamReset):
                await read_body(client, sid)
            assert (await client.request("GET", "/status/200")).status == 200
    assert up.resets[0][3] == "/counted/20000000"
    assert up.body_sent < 1_000_000


# ------------------------------------------------------------- 12. trailers across protocols


async def test_h1_chunked_request_trailers_reach_an_h2_upstream(nursery: trio.Nursery) -> None:
    """HTTP/1.1 chunked request trailers become the trailer HEADERS frame (END_STREAM) of the
    upstream HTTP/2 stream, after the DATA; names lower-cased, nothing hop-by-hop."""
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, down="Http1")
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(
                b"POST /echo HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: X-Checksum, X-Count\r\nTE: trailers\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\nX-Count: 2\r\n\r\n"
            )
            r = await client.response()
    assert r.status == 200, r
    info = r.json()
    assert info["trailers"] == [["x-checksum", "abc123"], ["x-count", "2"]]
    assert info["body_len"] == 11
    assert info["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
    names = {n for n, _ in info["headers"]}
    assert "transfer-encoding" not in names and "te" not in names, names
    assert ("trailer", "X-Checksum, X-Count") in [tuple(h) for h in info["headers"]]
    # The upstream echoed them as response trailers, but its response has a content-length:
    # an HTTP/1.1 body framed by length has no room for trailers, so they are dropped.
    assert r.headers.get("content-length") == str(len(r.body))
    assert "transfer-encoding" not in r.headers and r.trailers is None


async def test_h2_upstream_response_trailers_reach_an_h1_client(nursery: trio.Nursery) -> None:
    """An HTTP/2 response without content-length, ending in trailers: the HTTP/1.1 client
    gets it chunked, with the trailers in the last chunk; the connection is kept."""
    up = await start_extra_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, down="Http1")
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for n in (100_000, 0):
                await client.send(get(f"/nolength/{n}?trailers", headers="TE: trailers\r\n"))
                r = await client.response()
                assert r.status == 200, r
                assert r.headers.get("transfer-encoding") == "chunked", r.raw_head
                assert "content-length" not in r.headers
                assert r.body == pattern_bytes(n)
                assert r.trailers == [("x-trailer", "yes"), ("grpc-status", "0")], r.raw_body[-80:]
            # and with a content-length, the body by length and no trailers (see above)
            await client.send(get("/trailers"))
            r = await client.response()
            assert (r.status, r.body, r.trailers) == (200, b"trailers\n", None)
    assert up.connections == 1


async def test_h2_request_trailers_reach_an_h1_upstream_and_back(nursery: trio.Nursery) -> None:
    """HTTP/2 request trailers to an HTTP/1.1 upstream: a chunked request whose last chunk
    carries them. The upstream's chunked response trailers come back to the HTTP/2 client as
    a trailer HEADERS frame."""
    up_port, seen = await trailers_h1_upstream(nursery)
    _, port = await proxy_to(nursery, up_port, up="Http1")
    body = os.urandom(50_000)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            r = await client.request(
                "POST", "/up", body=body, trailers=[("x-checksum", "abc"), ("x-n", "1")]
            )
            assert r.status == 200, r
            assert r.trailers == [("x-up-trailer", "done"), ("grpc-status", "0")]
            record = r.json()
            # no body at all, just trailers: the HTTP/2 stream is HEADERS, HEADERS
            r = await client.request("POST", "/only-trailers", trailers=[("x-empty", "yes")])
            assert r.trailers == [("x-up-trailer", "done"), ("grpc-status", "0")]
    assert record["trailers"] == [["x-checksum", "abc"], ["x-n", "1"]]
    assert record["body"].encode("latin-1") == body
    headers = upstream_headers(record)
    assert headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in headers and "te" not in headers
    assert seen[1]["trailers"] == [["x-empty", "yes"]] and seen[1]["body"] == ""
    assert "trailer" in r.headers  # the upstream's announcement is an ordinary field


async def test_h1_upstream_trailer_fields_http2_forbids_are_dropped(nursery: trio.Nursery) -> None:
    """Connection-specific fields in an HTTP/1.1 upstream's trailer section (forbidden in
    HTTP/2) are dropped, the others reach the HTTP/2 client; a trailer section left empty
    ends the stream without trailers."""
    sections = [
        b"Connection: close\r\nKeep-Alive: 5\r\nX-Ok: 1\r\nTE: trailers\r\n",
        b"Upgrade: x\r\n",
    ]

    async def serve(stream: trio.SocketStream) -> None:
        buf = bytearray()
        for section in sections:
            if await read_request(stream, buf) is None:
                return
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
                + section
                + b"\r\n"
            )
        await stream.aclose()

    up_port = await start_raw_server(nursery, serve)
    _, port = await proxy_to(nursery, up_port, up="Http1")
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            r = await client.request("GET", "/")
            assert (r.status, r.body, r.trailers) == (200, b"ok", [("x-ok", "1")])
            r = await client.request("GET", "/")
            assert (r.status, r.body, r.trailers) == (200, b"ok", None)


async def test_h1_client_trailer_fields_http2_forbids_are_dropped(nursery: trio.Nursery) -> None:
    up = await start_h2_upstream(nursery)
    _, port = await proxy_to(nursery, up.port, down="Http1")
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\nKeep-Alive: 5\r\nX-Ok: 1\r\n\r\n"
            )
            r = await client.response()
    assert r.status == 200, r
    assert r.json()["trailers"] == [["x-ok", "1"]]
