"""Upstream TLS (a cluster's ``tls_context``) against real TLS servers: Debian nginx (HTTP/1.1
and HTTP/2, mutual TLS with ``ssl_verify_client on``), grpcio with ``ssl_server_credentials``,
Python ``ssl`` servers (HTTP/1 keep-alive and bolt frames) and a server that never answers
the ClientHello. Certificates come from the ``pki`` fixture (made when the tests run).
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from tests.grpc_helpers import EchoStub, GrpcEchoServer, in_thread
from tests.http_helpers import (
    Client,
    access_log,
    curl,
    free_port,
    get,
    http_config,
    read_access_log,
    read_request,
    running_proxy,
    start_proxy,
    to,
)
from tests.rpc_helpers import ANY_SERVICE, BoltClient, request
from tests.tcp_helpers import tcp_proxy_config
from tests.tls_pki import Pki
from trio_mesh.config import Cluster as ClusterConfig
from trio_mesh.config import Host as HostConfig
from trio_mesh.config.scalars import Address
from trio_mesh.config.tls import TlsConfig
from trio_mesh.network.connect import ConnectError
from trio_mesh.pool import http1 as pool_http1
from trio_mesh.protocols.xprotocol.bolt import BOLT
from trio_mesh.upstream import ClusterManager
from trio_mesh.upstream.cluster import ALPN_AUTO, ALPN_H1, ALPN_H2, ALPN_NONE, build_tls
from trio_mesh.upstream.manager import prepare_tls

NGINX = "/usr/sbin/nginx"
needs_nginx = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")

#: What the nginx servers below answer: enough to tell the connection and the TLS apart.
NGINX_SAYS = (
    '"$server_protocol $ssl_protocol sni=$ssl_server_name reused=$ssl_session_reused'
    ' conn=$connection req=$connection_requests dn=$ssl_client_s_dn\\n"'
)


def tls_cluster(port: int, **tls: Any) -> dict[str, Any]:
    """Cluster ``up`` at 127.0.0.1:``port`` with ``tls_context`` {status: true, **tls}."""
    return {
        "name": "up",
        "connect_timeout": "2s",
        "hosts": [{"address": f"127.0.0.1:{port}"}],
        "tls_context": {"status": True, **tls},
    }


def said(body: bytes) -> dict[str, str]:
    """nginx's ``NGINX_SAYS`` line as a dict (``protocol``: its first word)."""
    first, *rest = body.decode().split()
    out = {"protocol": first, "version": rest[0]}
    for item in rest[1:]:
        key, _, value = item.partition("=")
        out[key] = value
    out["dn"] = body.decode().split("dn=", 1)[1].strip()
    return out


def _nginx_conf(tmp: Path, pki: Pki, ports: dict[str, int]) -> str:
    server = pki.server
    common = (
        f"ssl_certificate {server.cert}; ssl_certificate_key {server.key};"
        " ssl_protocols TLSv1.2 TLSv1.3;"  # 1.22 leaves 1.3 out by default
    )
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{ports["h1"]} ssl;
        {common}
        location / {{ return 200 {NGINX_SAYS}; }}
    }}
    server {{
        listen 127.0.0.1:{ports["mtls"]} ssl;
        {common}
        ssl_client_certificate {pki.ca.cert};
        ssl_verify_client on;
        location / {{ return 200 {NGINX_SAYS}; }}
    }}
    server {{
        listen 127.0.0.1:{ports["h2"]} ssl http2;
        {common}
        location / {{ return 200 {NGINX_SAYS}; }}
    }}
    server {{
        listen 127.0.0.1:{ports["h1_only"]} ssl;
        {common}
        location / {{ return 200 {NGINX_SAYS}; }}
    }}
}}
"""


@contextlib.asynccontextmanager
async def nginx_tls(tmp: Path, pki: Pki) -> AsyncIterator[dict[str, int]]:
    """nginx with four TLS servers (the ``pki.server`` certificate): ``h1``, ``mtls`` (a
    client certificate from ``pki.ca`` required), ``h2`` (``ssl http2``: ALPN h2 and
    http/1.1) and ``h1_only``; yields their ports once all accept connections."""
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed")
    ports = {name: free_port() for name in ("h1", "mtls", "h2", "h1_only")}
    (tmp / "nginx.conf").write_text(_nginx_conf(tmp, pki, ports))
    proc = await trio.lowlevel.open_process(
        [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(10):
            for port in ports.values():
                while True:  # readiness: until nginx accepts connections on each port
                    if proc.poll() is not None:
                        log = tmp / "error.log"
                        pytest.fail(f"nginx exited: {log.read_text() if log.exists() else ''}")
                    try:
                        probe = await trio.open_tcp_stream("127.0.0.1", port)
                    except OSError:
                        await trio.sleep(0.01)
                        continue
                    await probe.aclose()
                    break
        yield ports
    finally:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def fetch(port: int, *paths: str) -> list[Any]:
    """GET each path in turn on one client connection to the proxy."""
    out = []
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for path in paths:
                await client.send(get(path))
                out.append(await client.response())
    return out


# --------------------------------------------------------------------------- nginx, HTTP/1.1


@needs_nginx
async def test_http1_to_nginx_over_tls_verified_and_pooled(nursery, tmp_path, pki):
    async with nginx_tls(tmp_path, pki) as ports:
        config = http_config(
            [to("up")],
            [tls_cluster(ports["h1"], ca_cert=str(pki.ca.cert), server_name="api.example.test")],
        )
        server, port = await start_proxy(nursery, config)
        first, second = await fetch(port, "/a", "/b")
    assert first.status == 200, first
    a, b = said(first.body), said(second.body)
    assert (a["protocol"], a["version"], a["sni"]) == ("HTTP/1.1", "TLSv1.3", "api.example.test")
    # one TLS connection carried both requests: same nginx connection, its 2nd request
    assert (b["conn"], b["req"]) == (a["conn"], "2")
    stats = server.clusters.get("up").stats
    assert (stats.upstream_cx_total, stats.ssl_handshake, stats.ssl_connection_error) == (1, 1, 0)


@needs_nginx
async def test_no_server_name_verifies_the_address_against_ip_sans(nursery, tmp_path, pki):
    async with nginx_tls(tmp_path, pki) as ports:
        config = http_config([to("up")], [tls_cluster(ports["h1"], ca_cert=str(pki.ca.cert))])
        _, port = await start_proxy(nursery, config)
        (resp,) = await fetch(port, "/")
    assert resp.status == 200, resp
    assert said(resp.body)["sni"] == ""  # no SNI for an IP address (RFC 6066)


@needs_nginx
async def test_host_hostname_is_the_sni_and_the_name_verified(nursery, tmp_path, pki):
    async with nginx_tls(tmp_path, pki) as ports:
        cluster = tls_cluster(ports["h1"], ca_cert=str(pki.ca.cert))
        cluster["hosts"] = [{"address": f"127.0.0.1:{ports['h1']}", "hostname": "localhost"}]
        _, port = await start_proxy(nursery, http_config([to("up")], [cluster]))
        (resp,) = await fetch(port, "/")
    assert resp.status == 200, resp
    assert said(resp.body)["sni"] == "localhost"


@needs_nginx
async def test_wrong_server_name_is_refused_with_503_and_counted(nursery, tmp_path, pki):
    async with nginx_tls(tmp_path, pki) as ports:
        config = http_config(
            [to("up")],
            [tls_cluster(ports["h1"], ca_cert=str(pki.ca.cert), server_name="evil.example.test")],
        )
        server, port = await start_proxy(nursery, config)
        (resp,) = await fetch(port, "/")
        assert (tmp_path / "access.log").read_text() == ""  # no request reached nginx
    assert resp.status == 503
    assert resp.body.startswith(
        b"upstream connect error or disconnect/reset before headers. reset reason: connection"
        b" failure, transport failure reason: TLS error: certificate verify failed"
    ), resp.body
    assert b"evil.example.test" in resp.body
    stats = server.clusters.get("up").stats
    assert stats.upstream_cx_connect_fail == 1
    assert (stats.ssl_connection_error, stats.ssl_fail_verify_error, stats.ssl_handshake) == (
        1,
        1,
        0,
    )
    assert stats.upstream_cx_active == 0


@needs_nginx
async def test_certificate_from_another_ca_refused_then_insecure_skip_connects(
    nursery, tmp_path, pki
):
    async with nginx_tls(tmp_path, pki) as ports:
        # trusting other_ca only: nginx's certificate (from pki.ca) does not verify
        strict = tls_cluster(ports["h1"], ca_cert=str(pki.other_ca.cert), server_name="localhost")
        skip = {**tls_cluster(ports["h1"], insecure_skip=True), "name": "skip"}
        config = http_config([to("up", "/strict"), to("skip", "/skip")], [strict, skip])
        server, port = await start_proxy(nursery, config)
        refused, skipped = await fetch(port, "/strict", "/skip")
    assert refused.status == 503
    assert b"TLS error: certificate verify failed" in refused.body, refused.body
    assert server.clusters.get("up").stats.ssl_fail_verify_error == 1
    assert skipped.status == 200, skipped
    assert said(skipped.body)["version"] == "TLSv1.3"
    assert server.clusters.get("skip").stats.ssl_handshake == 1


@needs_nginx
async def test_client_certificate_presented_to_nginx_requiring_one(nursery, tmp_path, pki):
    async with nginx_tls(tmp_path, pki) as ports:
        with_cert = tls_cluster(
            ports["mtls"],
            ca_cert=str(pki.ca.cert),
            server_name="localhost",
            cert_chain=str(pki.client.cert),
            private_key=str(pki.client.key),
        )
        # inline PEM, as MOSN accepts too, for the stranger (signed by other_ca)
        stranger = {
            **tls_cluster(
                ports["mtls"],
                ca_cert=pki.ca.cert.read_text(),
                server_name="localhost",
                cert_chain=pki.stranger.cert_pem,
                private_key=pki.stranger.key_pem,
            ),
            "name": "stranger",
        }
        none = {
            **tls_cluster(ports["mtls"], ca_cert=str(pki.ca.cert), server_name="localhost"),
            "name": "none",
        }
        config = http_config(
            [to("up", "/mine"), to("stranger", "/stranger"), to("none", "/none")],
            [with_cert, stranger, none],
        )
        _, port = await start_proxy(nursery, config)
        (mine,) = await fetch(port, "/mine")
        (theirs,) = await fetch(port, "/stranger")
        (nothing,) = await fetch(port, "/none")
    assert mine.status == 200, mine
    assert said(mine.body)["dn"] == "CN=client,O=trio-mesh tests"
    # nginx answers 400 itself for a missing or unverified client certificate (TLS 1.3: after
    # the handshake); either way no request with a made-up identity reached its location
    assert theirs.status == 400 and b"SSL certificate error" in theirs.body, theirs
    assert nothing.status == 400 and b"No required SSL certificate" in nothing.body, nothing


# --------------------------------------------------------------------------- nginx, HTTP/2


@needs_nginx
async def test_http2_upstream_over_tls_negotiates_h2(nursery, tmp_path, pki):
    async with nginx_tls(tmp_path, pki) as ports:
        config = http_config(
            [to("up")],
            [tls_cluster(ports["h2"], ca_cert=str(pki.ca.cert), server_name="localhost")],
            proxy={"upstream_protocol": "Http2"},
        )
        server, port = await start_proxy(nursery, config)
        first, second = await fetch(port, "/a", "/b")
    assert first.status == 200, first
    a, b = said(first.body), said(second.body)
    assert (a["protocol"], a["version"]) == ("HTTP/2.0", "TLSv1.3")
    assert b["conn"] == a["conn"]  # both streams on one TLS connection
    stats = server.clusters.get("up").stats
    assert (stats.upstream_cx_total, stats.ssl_handshake) == (1, 1)


# --------------------------------------------------------------------------- Python TLS peers


def server_context(pki: Pki, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


async def serve_tls(nursery: trio.Nursery, handler: Any, ctx: ssl.SSLContext) -> int:
    listeners = await nursery.start(
        functools.partial(trio.serve_ssl_over_tcp, host="127.0.0.1", https_compatible=True),
        handler,
        0,
        ctx,
    )
    return listeners[0].transport_listener.socket.getsockname()[1]


class KeepAliveUpstream:
    """An HTTP/1.1 server over TLS that answers ``conn=<n> alpn=<a>`` and, when
    ``close_idle`` is set, closes each connection (close_notify) after its first response."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.close_idle = False
        self.closed = trio.Event()
        self.got_request = trio.Event()

    async def handler(self, stream: trio.SSLStream) -> None:
        self.connections += 1
        n = self.connections
        buf = bytearray()
        try:
            await stream.do_handshake()
            while (req := await read_request(stream, buf)) is not None:  # type: ignore[arg-type]
                self.requests.append(req[0])
                self.got_request.set()
                body = b"conn=%d alpn=%s" % (n, str(stream.selected_alpn_protocol()).encode())
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                if self.close_idle:
                    await stream.aclose()
                    self.closed.set()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def test_idle_tls_connection_closed_by_the_server_is_not_reused(nursery, pki, monkeypatch):
    # Poll every idle connection before reuse (not only those idle over a second).
    monkeypatch.setattr(pool_http1, "PEEK_AFTER", -1.0)
    up = KeepAliveUpstream()
    up_port = await serve_tls(nursery, up.handler, server_context(pki))
    config = http_config(
        [to("up")], [tls_cluster(up_port, ca_cert=str(pki.ca.cert), server_name="localhost")]
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            # reused while the server keeps it: the TLS 1.3 tickets it sent after the
            # handshake are records without data, not a sign of a dead connection
            for _ in range(2):
                await client.send(get("/"))
                assert (await client.response()).body == b"conn=1 alpn=None"
            up.close_idle = True
            await client.send(get("/"))
            assert (await client.response()).body == b"conn=1 alpn=None"
            await up.closed.wait()
            # a POST: never resent after the keep-alive race, so only the idle check saves it
            await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            resp = await client.response()
    assert (resp.status, resp.body) == (200, b"conn=2 alpn=None")
    stats = server.clusters.get("up").stats
    assert (stats.upstream_cx_total, stats.ssl_handshake, stats.upstream_rq_retry) == (2, 2, 0)


async def test_handshake_bounded_by_the_connect_timeout(nursery, pki):
    """An upstream that accepts TCP and never answers the ClientHello: a connect failure
    (timeout) after connect_timeout, not a hung request."""
    accepted = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        accepted.set()
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), silent, 0)
    up_port = listeners[0].socket.getsockname()[1]
    cluster = {**tls_cluster(up_port, ca_cert=str(pki.ca.cert)), "connect_timeout": "0.3s"}
    server, port = await start_proxy(nursery, http_config([to("up")], [cluster]))
    start = trio.current_time()
    (resp,) = await fetch(port, "/")
    took = trio.current_time() - start
    assert accepted.is_set()
    assert resp.status == 503 and b"connection failure" in resp.body, resp
    assert 0.25 < took < 5
    stats = server.clusters.get("up").stats
    assert (stats.upstream_cx_connect_timeout, stats.upstream_cx_connect_fail) == (1, 1)
    assert stats.upstream_cx_active == 0


async def test_a_plaintext_server_is_a_tls_error_not_a_cleartext_request(nursery, pki, tmp_path):
    """TLS to a server that speaks HTTP in the clear: the handshake fails (503), and the
    request is never sent in the clear."""
    seen: list[bytes] = []

    async def plain(stream: trio.SocketStream) -> None:
        data = await stream.receive_some(65536)
        seen.append(data)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), plain, 0)
    up_port = listeners[0].socket.getsockname()[1]
    listener, log_path = access_log(tmp_path)
    config = http_config(
        [to("up")], [tls_cluster(up_port, ca_cert=str(pki.ca.cert))], listener=listener
    )
    async with running_proxy(config) as (server, port):
        (resp,) = await fetch(port, "/secret")
    assert resp.status == 503 and b"TLS error" in resp.body, resp
    assert seen and seen[0][:1] == b"\x16"  # a ClientHello, not "GET /secret"
    assert b"/secret" not in b"".join(seen)
    assert server.clusters.get("up").stats.ssl_connection_error == 1
    (line,) = read_access_log(log_path)
    assert (line["response_code"], line["response_flag"]) == (503, "UF"), line
    # MOSN's %upstream_transport_failure_reason%: OpenSSL's reason for the failed handshake
    assert line["upstream_transport_failure_reason"].startswith("TLS error: "), line


async def test_host_tls_disable_connects_in_cleartext(nursery, pki):
    seen: list[bytes] = []

    async def plain(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            seen.append(req[0])
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), plain, 0)
    plain_port = listeners[0].socket.getsockname()[1]
    cluster = tls_cluster(plain_port, ca_cert=str(pki.ca.cert))
    cluster["hosts"] = [{"address": f"127.0.0.1:{plain_port}", "tls_disable": True}]
    server, port = await start_proxy(nursery, http_config([to("up")], [cluster]))
    (resp,) = await fetch(port, "/x")
    assert (resp.status, resp.body) == (200, b"plain")
    assert seen and seen[0].startswith(b"GET /x HTTP/1.1")
    assert server.clusters.get("up").stats.ssl_handshake == 0


async def test_rotated_ca_file_is_used_by_new_connections_after_apply(nursery, pki, tmp_path):
    """The cluster's CA file is re-read on apply (a reload) even when the configuration is
    the same: first it trusts other_ca only (refused), then the file holds pki.ca."""
    up = KeepAliveUpstream()
    up_port = await serve_tls(nursery, up.handler, server_context(pki))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(pki.other_ca.cert.read_text())
    config = http_config(
        [to("up")], [tls_cluster(up_port, ca_cert=str(ca_file), server_name="localhost")]
    )
    server, port = await start_proxy(nursery, config)
    (refused,) = await fetch(port, "/")
    ca_file.write_text(pki.ca.cert.read_text())
    await server.apply(config)
    (ok,) = await fetch(port, "/")
    assert refused.status == 503 and b"certificate verify failed" in refused.body
    assert ok.status == 200, ok
    assert server.clusters.get("up").stats.ssl_handshake == 1


async def test_turning_tls_on_does_not_reuse_cleartext_connections(nursery, pki):
    """A cluster whose tls_context changes gets new hosts: an idle cleartext connection of
    the old configuration never carries a request meant for TLS."""
    seen: list[bytes] = []

    async def plain(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            seen.append(req[0])
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), plain, 0)
    plain_port = listeners[0].socket.getsockname()[1]
    cleartext = http_config([to("up")], {"up": plain_port})
    server, port = await start_proxy(nursery, cleartext)
    (first,) = await fetch(port, "/1")
    assert first.body == b"plain"
    tls_on = {**tls_cluster(plain_port, ca_cert=str(pki.ca.cert)), "connect_timeout": "0.5s"}
    await server.apply(http_config([to("up")], [tls_on]))
    (second,) = await fetch(port, "/2")
    # the cleartext server waits for a request head: the ClientHello goes unanswered
    assert second.status == 503 and b"connection failure" in second.body, second
    assert [r.split(b" ")[1] for r in seen] == [b"/1"]
    assert server.clusters.get("up").stats.upstream_cx_connect_timeout == 1


# --------------------------------------------------------------------------- gRPC


class TlsGrpcServer(GrpcEchoServer):
    """``GrpcEchoServer`` on a TLS port (``ssl_server_credentials``, ALPN h2 by grpcio)."""

    def __init__(self, pki: Pki, *, client_ca: bool = False) -> None:
        super().__init__()
        creds = grpc.ssl_server_credentials(
            [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
            root_certificates=pki.ca.cert.read_bytes() if client_ca else None,
            require_client_auth=client_ca,
        )
        self.tls_port = self.server.add_secure_port("127.0.0.1:0", creds)


@pytest.mark.parametrize(
    ("mutual", "protocol"),
    [(False, "Http2"), (True, "Http2"), (True, "Auto")],
    ids=["tls", "mtls", "mtls-auto"],
)
async def test_grpc_upstream_over_tls_from_a_plaintext_client(nursery, pki, mutual, protocol):
    upstream = TlsGrpcServer(pki, client_ca=mutual).start()
    try:
        keys: dict[str, Any] = {"ca_cert": str(pki.ca.cert), "server_name": "localhost"}
        if mutual:
            keys.update(cert_chain=str(pki.client.cert), private_key=str(pki.client.key))
        config = http_config(
            [to("up")],
            [tls_cluster(upstream.tls_port, **keys)],
            proxy={"downstream_protocol": protocol, "upstream_protocol": protocol},
        )
        server, port = await start_proxy(nursery, config)
        with EchoStub.connect(port) as stub:
            answers = [await in_thread(stub.Unary, b"hello %d" % i, timeout=10) for i in range(3)]
            streamed = await in_thread(lambda: list(stub.ServerStream(b"3", timeout=10)))
    finally:
        upstream.stop()
    assert answers == [b"hello 0", b"hello 1", b"hello 2"]
    assert len(streamed) == 3
    stats = server.clusters.get("up").stats
    assert (stats.ssl_handshake, stats.upstream_cx_total) == (1, 1)


async def test_grpc_upstream_requiring_a_client_certificate_refuses_none(nursery, pki):
    upstream = TlsGrpcServer(pki, client_ca=True).start()
    try:
        config = http_config(
            [to("up")],
            [tls_cluster(upstream.tls_port, ca_cert=str(pki.ca.cert), server_name="localhost")],
            proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
        )
        _, port = await start_proxy(nursery, config)
        with EchoStub.connect(port) as stub:
            with pytest.raises(grpc.RpcError) as info:
                await in_thread(stub.Unary, b"hello", timeout=10)
    finally:
        upstream.stop()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert upstream.calls_of("Unary") == []


# --------------------------------------------------------------------------- RPC (bolt)


async def test_bolt_cluster_over_tls(nursery, pki):
    frames_seen: list[Any] = []

    async def echo(stream: trio.SSLStream) -> None:
        peer = BoltClient(stream)  # type: ignore[arg-type]
        try:
            await stream.do_handshake()
            while True:
                frame = await peer.read()
                frames_seen.append(stream.selected_alpn_protocol())
                resp = BOLT.build_response(
                    frame.request_id, 0, content=b"tls:" + bytes(frame.content)
                )
                await stream.send_all(bytes(resp.data))
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    up_port = await serve_tls(nursery, echo, server_context(pki, ("h2", "http/1.1")))
    config = http_config(
        routes=ANY_SERVICE,
        clusters=[tls_cluster(up_port, ca_cert=str(pki.ca.cert), server_name="localhost")],
        proxy={"downstream_protocol": "bolt"},
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        client = await BoltClient.connect(port)
        for rid in (1, 2):
            await client.send(request(rid, b"ping %d" % rid))
            resp = await client.read()
            assert bytes(resp.content) == b"tls:ping %d" % rid
        await client.stream.aclose()
    assert frames_seen == [None, None]  # no ALPN offered for RPC
    assert server.clusters.get("up").stats.ssl_handshake == 1


async def test_bolt_call_to_a_failing_tls_upstream_logs_the_reason(nursery, pki, tmp_path):
    """An RPC call whose upstream handshake fails: the codec's error response, flag UF, and
    OpenSSL's reason in %upstream_transport_failure_reason% (the RPC reply path records it)."""

    async def plain(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)  # the ClientHello, answered in the clear
        await stream.send_all(b"not TLS at all\r\n")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), plain, 0)
    up_port = listeners[0].socket.getsockname()[1]
    listener, log_path = access_log(tmp_path)
    config = http_config(
        routes=ANY_SERVICE,
        clusters=[tls_cluster(up_port, ca_cert=str(pki.ca.cert), server_name="localhost")],
        proxy={"downstream_protocol": "bolt"},
        listener=listener,
    )
    async with running_proxy(config) as (_, port):
        with trio.fail_after(10):
            client = await BoltClient.connect(port)
            await client.send(request(1, b"ping"))
            resp = await client.read()
            await client.stream.aclose()
    assert resp.request_id == 1 and resp.status != 0  # an error response, not a hang
    (line,) = read_access_log(log_path)
    assert line["response_flag"] == "UF", line
    assert line["upstream_transport_failure_reason"].startswith("TLS error: "), line


# --------------------------------------------------------------------------- units


def test_contexts_offer_alpn_by_pool(pki):

    config = ClusterConfig(name="up", tls_context=TlsConfig(status=True, ca_cert=str(pki.ca.cert)))
    tls = build_tls(config, "cluster_manager.clusters[0].tls_context")
    assert tls is not None and tls.server_name is None
    assert set(tls.contexts) == {ALPN_NONE, ALPN_H1, ALPN_H2, ALPN_AUTO}
    assert all(c.verify_mode == ssl.CERT_REQUIRED for c in tls.contexts.values())
    off = ClusterConfig(name="up", tls_context=TlsConfig(status=False))
    assert build_tls(off, "x") is None


# --------------------------------------------------------------------------- Auto: ALPN decides


@needs_nginx
async def test_auto_upstream_uses_what_alpn_picked(nursery, tmp_path, pki):
    """``upstream_protocol: Auto`` over TLS offers h2 and http/1.1: nginx's h2 server picks
    h2 (HTTP/1 requests go up as HTTP/2), its HTTP/1-only server http/1.1; concurrent first
    requests share one negotiating connection."""
    async with nginx_tls(tmp_path, pki) as ports:
        h2 = {**tls_cluster(ports["h2"], ca_cert=str(pki.ca.cert)), "name": "h2"}
        h1 = {**tls_cluster(ports["h1_only"], ca_cert=str(pki.ca.cert)), "name": "h1"}
        config = http_config(
            [to("h2", "/two"), to("h1", "/one")],
            [h2, h1],
            proxy={"downstream_protocol": "Auto", "upstream_protocol": "Auto"},
        )
        server, port = await start_proxy(nursery, config)
        bodies: list[bytes] = []

        async def one() -> None:
            (resp,) = await fetch(port, "/two")
            bodies.append(resp.body)

        async with trio.open_nursery() as clients:
            for _ in range(5):
                clients.start_soon(one)
        (again,) = await fetch(port, "/two")
        (plain,) = await fetch(port, "/one")
        code, out, err = await curl(
            "--http2-prior-knowledge", "-d", "hello=1", f"http://127.0.0.1:{port}/one"
        )
    assert {said(b)["protocol"] for b in bodies} == {"HTTP/2.0"}
    assert len({said(b)["conn"] for b in [*bodies, again.body]}) == 1
    assert said(plain.body)["protocol"] == "HTTP/1.1"
    assert code == 0, err
    assert said(out)["protocol"] == "HTTP/1.1"  # an HTTP/2 request, framed for HTTP/1
    h2_stats = server.clusters.get("h2").stats
    assert (h2_stats.upstream_cx_total, h2_stats.ssl_handshake) == (1, 1)
    assert server.clusters.get("h2").hosts[0].protocol == "h2"
    assert server.clusters.get("h1").hosts[0].protocol == "http/1.1"


async def test_auto_without_alpn_answer_is_http1_and_failures_are_shared(nursery, pki):
    """A TLS server that answers no ALPN: HTTP/1. A negotiation that fails fails the
    requests waiting on it too (each does not wait its own connect timeout in turn)."""
    up = KeepAliveUpstream()
    up_port = await serve_tls(nursery, up.handler, server_context(pki))
    config = http_config(
        [to("up")], [tls_cluster(up_port, ca_cert=str(pki.ca.cert), server_name="localhost")]
    )
    server, port = await start_proxy(nursery, config)
    (resp,) = await fetch(port, "/")
    assert resp.body == b"conn=1 alpn=None"
    assert server.clusters.get("up").hosts[0].protocol == "http/1.1"

    accepted = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        accepted.set()
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), silent, 0)
    silent_port = listeners[0].socket.getsockname()[1]
    cluster = {**tls_cluster(silent_port, ca_cert=str(pki.ca.cert)), "connect_timeout": "0.5s"}
    server2, port2 = await start_proxy(nursery, http_config([to("up")], [cluster]))
    statuses: list[int] = []

    async def one() -> None:
        (r,) = await fetch(port2, "/")
        statuses.append(r.status)

    start = trio.current_time()
    async with trio.open_nursery() as clients:
        for _ in range(4):
            clients.start_soon(one)
    took = trio.current_time() - start
    assert statuses == [503] * 4
    assert took < 2.0  # one connect timeout, shared; not four in a row
    assert server2.clusters.get("up").stats.upstream_cx_connect_timeout == 1


# --------------------------------------------------------------------------- tcp_proxy, mirror


async def test_tcp_proxy_originates_tls(nursery, pki):
    """A tcp_proxy chain to a cluster with TLS: cleartext in, TLS out (no ALPN)."""
    seen: list[Any] = []

    async def echo(stream: trio.SSLStream) -> None:
        try:
            await stream.do_handshake()
            seen.append(stream.selected_alpn_protocol())
            while data := await stream.receive_some(65536):
                await stream.send_all(b"tls:" + data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    up_port = await serve_tls(nursery, echo, server_context(pki, ("h2", "http/1.1")))
    config = tcp_proxy_config(
        [up_port],
        cluster={"tls_context": {"status": True, "ca_cert": str(pki.ca.cert)}},
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"hello")
            assert await stream.receive_some(65536) == b"tls:hello"
    assert seen == [None]
    assert server.clusters.get("up").stats.ssl_handshake == 1


async def test_mirror_to_a_tls_shadow_cluster(nursery, pki):
    main = KeepAliveUpstream()
    shadow = KeepAliveUpstream()
    main_port = await serve_tls(nursery, main.handler, server_context(pki))
    shadow_port = await serve_tls(nursery, shadow.handler, server_context(pki))
    clusters = [
        tls_cluster(main_port, ca_cert=str(pki.ca.cert)),
        {**tls_cluster(shadow_port, ca_cert=str(pki.ca.cert)), "name": "shadow"},
    ]
    listener = {"stream_filters": [{"type": "mirror", "config": {"cluster": "shadow"}}]}
    server, port = await start_proxy(nursery, http_config([to()], clusters, listener=listener))
    (resp,) = await fetch(port, "/copied")
    with trio.fail_after(10):
        await shadow.got_request.wait()
    assert resp.body == b"conn=1 alpn=None"
    assert len(shadow.requests) == 1
    assert shadow.requests[0].startswith(b"GET /copied HTTP/1.1\r\n"), shadow.requests
    assert server.clusters.get("shadow").stats.ssl_handshake == 1


async def test_python_upstream_requiring_a_client_certificate(nursery, pki):
    """TLS 1.3: the upstream refuses a missing client certificate after our side of the
    handshake completed; the request is answered as an upstream reset, never forwarded."""
    up = KeepAliveUpstream()
    ctx = server_context(pki)
    ctx.load_verify_locations(pki.ca.cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    up_port = await serve_tls(nursery, up.handler, ctx)
    with_cert = tls_cluster(
        up_port,
        ca_cert=str(pki.ca.cert),
        cert_chain=str(pki.client.cert),
        private_key=str(pki.client.key),
    )
    without = {**tls_cluster(up_port, ca_cert=str(pki.ca.cert)), "name": "none"}
    config = http_config([to("none", "/without"), to("up", "/with")], [with_cert, without])
    _, port = await start_proxy(nursery, config)
    (ok,) = await fetch(port, "/with")
    (refused,) = await fetch(port, "/without")
    assert ok.status == 200, ok
    assert refused.status == 502 and b"reset reason: connection termination" in refused.body
    assert len(up.requests) == 1


def _cluster_config(pki: Pki, **host: Any) -> ClusterConfig:

    return ClusterConfig(
        name="up",
        hosts=(HostConfig(address=Address("127.0.0.1", 1), **host),),
        tls_context=TlsConfig(status=True, ca_cert=str(pki.ca.cert)),
    )


async def test_contexts_not_built_connect_to_nothing(pki):
    """A cluster with TLS whose contexts were not built yet refuses to connect, rather than
    connecting in cleartext."""

    manager = ClusterManager([_cluster_config(pki)], tls={})
    cluster = manager.get("up")
    with pytest.raises(ConnectError, match="TLS contexts are not built"):
        await cluster.connect(cluster.hosts[0])
    assert cluster.stats.upstream_cx_active == 0


def test_a_host_whose_tls_disable_changes_is_a_new_host(pki):

    before = _cluster_config(pki)
    manager = ClusterManager([before])
    host = manager.get("up").hosts[0]
    assert manager.get("up").tls is not None and not host.tls_disable
    same = manager.update([before], prepare_tls([before]))
    assert same[1] == [] and manager.get("up").hosts[0] is host
    after = _cluster_config(pki, tls_disable=True)
    _, left = manager.update([after], prepare_tls([after]))
    assert left == [host]
    assert manager.get("up").hosts[0] is not host and manager.get("up").hosts[0].tls_disable


# --------------------------------------------------------------------------- TLS on both sides


@needs_nginx
async def test_curl_over_tls_through_the_proxy_to_nginx_over_tls(nursery, tmp_path, pki):
    """curl (HTTPS, HTTP/2 by ALPN, its own client certificate) -> a TLS listener (Auto) ->
    nginx over TLS (Auto upstream: h2 by ALPN), certificates verified on both hops."""
    async with nginx_tls(tmp_path, pki) as ports:
        chain = {
            "tls_context": {
                "status": True,
                "cert_chain": str(pki.server.cert),
                "private_key": str(pki.server.key),
                "ca_cert": str(pki.ca.cert),
                "verify_client": True,
                "require_client_cert": True,
            },
            "filters": [
                {
                    "type": "proxy",
                    "config": {
                        "router_config_name": "r",
                        "downstream_protocol": "Auto",
                        "upstream_protocol": "Auto",
                    },
                }
            ],
        }
        config = http_config(
            [to("up")],
            [tls_cluster(ports["h2"], ca_cert=str(pki.ca.cert), server_name="localhost")],
            listener={"filter_chains": [chain]},
        )
        server, port = await start_proxy(nursery, config)
        args = ["--cacert", str(pki.ca.cert), "--cert", str(pki.client.cert)]
        args += ["--key", str(pki.client.key), "--http2", "-w", "%{http_version}"]
        code, out, err = await curl(*args, f"https://localhost:{port}/both")
    assert code == 0, err
    body, _, version = out.rpartition(b"\n")
    assert version == b"2"  # curl to the proxy: HTTP/2 by ALPN
    assert said(body + b"\n")["protocol"] == "HTTP/2.0"  # the proxy to nginx: h2 by ALPN
    assert server.clusters.get("up").stats.ssl_handshake == 1
