"""A cluster with a ``tls_context`` is checked over TLS with its contexts: a TLS host passes,
a cleartext server in the same cluster fails (never checked in cleartext instead)."""

from __future__ import annotations

import trio

from tests.clusters.test_upstream_tls import KeepAliveUpstream, serve_tls, server_context
from tests.tls_pki import Pki

from ..http_helpers import http_config, start_proxy, start_raw_server, to


async def test_tls_cluster_checked_over_tls(nursery: trio.Nursery, pki: Pki) -> None:
    upstream = KeepAliveUpstream()
    tls_port = await serve_tls(nursery, upstream.handler, server_context(pki))
    plain_seen: list[bytes] = []

    async def plain(stream: trio.SocketStream) -> None:
        plain_seen.append(await stream.receive_some(4096))  # a ClientHello, not a GET
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    plain_port = await start_raw_server(nursery, plain)
    cluster = {
        "name": "up",
        "connect_timeout": "2s",
        "hosts": [{"address": f"127.0.0.1:{p}"} for p in (tls_port, plain_port)],
        "tls_context": {"status": True, "ca_cert": str(pki.ca.cert)},
        "health_check": {
            "protocol": "http",
            "timeout": "1s",
            "interval": "100ms",
            "unhealthy_threshold": 1,
            "check_config": {"path": "/health"},
        },
    }
    server, _ = await start_proxy(nursery, http_config([to("up")], [cluster]))
    hosts = {h.port: h for h in server.clusters.get("up").hosts}
    with trio.fail_after(10):
        while not (hosts[plain_port].failed_active_hc and len(upstream.requests) >= 2):
            await trio.sleep(0.02)
    assert upstream.requests[0].startswith(b"GET /health HTTP/1.1")
    assert hosts[tls_port].usable
    assert plain_seen and not plain_seen[0].startswith(b"GET")  # TLS was offered, not HTTP
