"""TLS configured by a real ADS server (tests/xds_server.py, its own process), end to end:
an LDS listener whose filter chain carries a DownstreamTlsContext with inline PEM serves real
TLS clients; an LDS update with a new certificate rotates it for new handshakes while open
connections finish on theirs; an update with a broken key is NACKed and the old certificate
stays; a CDS cluster with an UpstreamTlsContext reaches a real TLS upstream, and a change of
its trusted CA drains the old connections (Envoy's behaviour on a changed cluster)."""

from __future__ import annotations

import functools
import importlib.util
import ssl
from typing import Any

import pytest
import trio

from tests.http_helpers import Client, gated_upstream, get, read_request
from tests.tls_pki import Pair, Pki
from tests.xds.test_xds import ads, eds_cluster, endpoints, listener, routes, start_mesh
from tests.xds.test_xds_client import TIMEOUT, ServerProcess
from trio_mesh.proxy import http1 as proxy_http1

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("envoy_data_plane") is None, reason="the xds extra is not installed"
)

__all__ = ["ads"]  # the fixture, used by name

TLS_NS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def downstream_tls(pair: Pair, key_pem: str | None = None) -> dict[str, Any]:
    """A DownstreamTlsContext transport socket with ``pair`` as inline PEM (``key_pem``:
    another key instead of the pair's own)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
            "@type": TLS_NS + "DownstreamTlsContext",
            "commonTlsContext": {
                "tlsCertificates": [
                    {
                        "certificateChain": {"inlineString": pair.cert_pem},
                        "privateKey": {"inlineString": key_pem or pair.key_pem},
                    }
                ],
                "alpnProtocols": ["http/1.1"],
            },
        },
    }


def tls_listener(pair: Pair, key_pem: str | None = None) -> dict[str, Any]:
    """Listener ``ingress`` (routes ``r`` by RDS) terminating TLS with ``pair``."""
    doc = listener("ingress", "r")
    doc["filterChains"][0]["transportSocket"] = downstream_tls(pair, key_pem)
    return doc


def tls_cluster(name: str, ca_pem: str) -> dict[str, Any]:
    """EDS cluster ``name`` whose hosts are reached over TLS: SNI and verified name
    ``localhost``, ``ca_pem`` the only trusted CA (inline)."""
    return {
        **eds_cluster(name),
        "transportSocket": {
            "name": "envoy.transport_sockets.tls",
            "typedConfig": {
                "@type": TLS_NS + "UpstreamTlsContext",
                "sni": "localhost",
                "commonTlsContext": {"validationContext": {"trustedCa": {"inlineString": ca_pem}}},
            },
        },
    }


def der(pair: Pair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert_pem)


async def tls_client(port: int, pki: Pki) -> tuple[Client, bytes]:
    """A real TLS client (Python ssl, trusting ``pki.ca``, SNI localhost) and the DER of the
    certificate the proxy presented."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.set_alpn_protocols(["http/1.1"])
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost", https_compatible=True)
    await stream.do_handshake()
    cert = stream.getpeercert(binary_form=True)
    assert cert is not None
    return Client(stream), cert  # type: ignore[arg-type]


async def served_cert(port: int, pki: Pki) -> bytes:
    """A new handshake's certificate; a request on it is answered."""
    client, cert = await tls_client(port, pki)
    async with client:
        await client.send(get("/new"))
        assert (await client.response()).status == 200
    return cert


async def test_lds_tls_listener_rotated_by_update_and_broken_key_nacked(
    nursery, ads, pki, monkeypatch
):
    # A drained idle HTTP/1 connection waits this long for a next request (1 s by default):
    # room for a loaded machine between the ACK and that request.
    monkeypatch.setattr(proxy_http1, "DRAIN_IDLE_GRACE", 30.0)
    rotated = pki.ca.issue("xds-rotated", cn="localhost", dns=("localhost",), ips=("127.0.0.1",))
    up_port, arrived, release = await gated_upstream(nursery)
    await ads.set("CDS", "1", [eds_cluster("a")])
    await ads.set("EDS", "1", [endpoints("a", up_port)])
    await ads.set("RDS", "1", [routes("r", ("/", "a"))])
    await ads.set("LDS", "1", [tls_listener(pki.server)])
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        port = server.addresses["ingress"][1]
        assert await served_cert(port, pki) == der(pki.server)
        # Before the update: one keep-alive connection idle, one with a request in flight.
        idle, idle_cert = await tls_client(port, pki)
        await idle.send(get("/before"))
        first = await idle.response()
        assert first.status == 200 and "close" not in first.headers.get("connection", "")
        busy, busy_cert = await tls_client(port, pki)
        await busy.send(get("/wait"))
        await arrived.wait()
        assert idle_cert == busy_cert == der(pki.server)

        await ads.set("LDS", "2", [tls_listener(rotated)])
        await ads.expect("ACK LDS 2")
        # The open connections were accepted with the old certificate and keep it: the
        # idle one answers its next request, the one in flight finishes. The chain changed,
        # so both are drained as Envoy drains a changed filter chain's connections: the
        # response says "Connection: close", then the proxy closes (no reset, no loss).
        await idle.send(get("/after"))
        after = await idle.response()
        assert after.status == 200 and after.headers.get("connection") == "close"
        release.set()
        in_flight = await busy.response()
        assert in_flight.status == 200 and in_flight.body == b"ok"
        for client in (idle, busy):
            assert not await client._more() and not client.reset  # a clean close
            await client.aclose()
        # New handshakes see the new certificate.
        assert await served_cert(port, pki) == der(rotated)
        stats = server.listeners["ingress"].stats
        handshakes_before_nack = stats.ssl_handshake

        # A key that does not match its certificate: NACKed with the key's path, nothing
        # changes, the rotated certificate stays served.
        await ads.set("LDS", "3", [tls_listener(pki.server, key_pem=pki.other_server.key_pem)])
        nack = await ads.expect("NACK LDS")
        assert nack.startswith("NACK LDS 2 ")
        assert "filter_chains[0].tls_context.private_key: does not match" in nack, nack
        assert "LDS 3" in server.xds.last_error
        assert await served_cert(port, pki) == der(rotated)
        assert stats.ssl_handshake == handshakes_before_nack + 1


class TlsUpstream:
    """An HTTP/1.1 server over TLS (``pki.server``) answering ``conn=<n>``; ``/wait`` is
    held until ``release``. Records which connections ended."""

    def __init__(self) -> None:
        self.connections = 0
        self.handshake_failures = 0
        self.closed: set[int] = set()
        self.arrived = trio.Event()
        self.release = trio.Event()
        self.closed_event = trio.Event()

    async def handler(self, stream: trio.SSLStream) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            self.handshake_failures += 1  # the proxy refused our certificate
            return
        self.connections += 1
        n = self.connections
        buf = bytearray()
        try:
            while (req := await read_request(stream, buf)) is not None:  # type: ignore[arg-type]
                if req[0].startswith(b"GET /wait "):
                    self.arrived.set()
                    await self.release.wait()
                body = b"conn=%d" % n
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed.add(n)
        self.closed_event.set()

    async def wait_closed(self, n: int) -> None:
        while n not in self.closed:
            self.closed_event = trio.Event()
            await self.closed_event.wait()


async def start_tls_upstream(nursery: trio.Nursery, pki: Pki) -> tuple[TlsUpstream, int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    up = TlsUpstream()
    listeners = await nursery.start(
        functools.partial(trio.serve_ssl_over_tcp, host="127.0.0.1", https_compatible=True),
        up.handler,
        0,
        ctx,
    )
    return up, listeners[0].transport_listener.socket.getsockname()[1]


async def fetch(port: int, path: str = "/") -> Any:
    async with await Client.connect(port) as client:
        await client.send(get(path))
        return await client.response()


async def test_cds_upstream_tls_and_a_trusted_ca_change_drains_old_connections(
    nursery, ads: ServerProcess, pki: Pki
):
    up, up_port = await start_tls_upstream(nursery, pki)
    await ads.set("CDS", "1", [tls_cluster("a", pki.ca.cert.read_text())])
    await ads.set("EDS", "1", [endpoints("a", up_port)])
    await ads.set("RDS", "1", [routes("r", ("/", "a"))])
    await ads.set("LDS", "1", [listener("ingress", "r")])
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        port = server.addresses["ingress"][1]
        # One request held on upstream connection 1; connection 2 served one and is pooled.
        held = await Client.connect(port)
        await held.send(get("/wait"))
        await up.arrived.wait()
        ok = await fetch(port, "/one")
        assert (ok.status, ok.body) == (200, b"conn=2")
        assert (await fetch(port, "/two")).body == b"conn=2"  # pooled, reused
        cluster = server.clusters.get("a")
        assert cluster.stats.ssl_handshake == 2

        # CDS: the cluster now trusts another CA only. The changed transport socket makes
        # its hosts new (Envoy drains a changed cluster's connection pools): the idle
        # connection is closed now, the one in flight finishes its request then closes, and
        # new connections verify with the new CA (this upstream fails it: 503).
        await ads.set("CDS", "2", [tls_cluster("a", pki.other_ca.cert.read_text())])
        await ads.expect("ACK CDS 2")
        await up.wait_closed(2)
        refused = await fetch(port, "/three")
        assert refused.status == 503 and b"certificate verify failed" in refused.body, refused
        assert up.connections == 2  # the pooled connection of the old CA was not reused
        up.release.set()
        done = await held.response()
        assert (done.status, done.body) == (200, b"conn=1")
        await held.aclose()
        await up.wait_closed(1)
        assert server.clusters.get("a").stats.ssl_connection_error >= 1

        # Back to the right CA: new connections carry requests again.
        await ads.set("CDS", "3", [tls_cluster("a", pki.ca.cert.read_text())])
        await ads.expect("ACK CDS 3")
        again = await fetch(port, "/four")
        assert (again.status, again.body) == (200, b"conn=3")


async def test_lds_resent_with_rewritten_files_rotates_without_draining(
    nursery, ads: ServerProcess, pki: Pki, tmp_path
):
    """Certificate and key as file data sources: the control plane sends the same listener
    again (a new version) after the files changed. The listener is unchanged, so its
    connections are not drained at all; only new handshakes take the new certificate."""
    rotated = pki.ca.issue("xds-files", cn="localhost", dns=("localhost",), ips=("127.0.0.1",))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(pki.server.cert_pem)
    key.write_text(pki.server.key_pem)
    doc = listener("ingress", "r")
    socket = downstream_tls(pki.server)
    socket["typedConfig"]["commonTlsContext"]["tlsCertificates"] = [
        {"certificateChain": {"filename": str(cert)}, "privateKey": {"filename": str(key)}}
    ]
    doc["filterChains"][0]["transportSocket"] = socket
    up_port, _, _ = await gated_upstream(nursery)
    await ads.set("CDS", "1", [eds_cluster("a")])
    await ads.set("EDS", "1", [endpoints("a", up_port)])
    await ads.set("RDS", "1", [routes("r", ("/", "a"))])
    await ads.set("LDS", "1", [doc])
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        port = server.addresses["ingress"][1]
        idle, idle_cert = await tls_client(port, pki)
        assert idle_cert == der(pki.server)
        cert.write_text(rotated.cert_pem)
        key.write_text(rotated.key_pem)
        await ads.set("LDS", "2", [doc])
        await ads.expect("ACK LDS 2")
        assert await served_cert(port, pki) == der(rotated)
        for path in ("/a", "/b"):  # kept alive: not even drained
            await idle.send(get(path))
            resp = await idle.response()
            assert resp.status == 200 and "connection" not in resp.headers, resp.headers
        await idle.aclose()
