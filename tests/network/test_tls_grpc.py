"""gRPC over mutual TLS through the proxy: a grpcio secure channel (its own TLS, BoringSSL)
-> trio-mesh (TLS terminated, ALPN h2, client certificate required) -> a grpcio server."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import trio

from tests.grpc_helpers import EchoStub, GrpcEchoServer, grpc_upstream, in_thread
from tests.http_helpers import http_config, start_proxy, to
from tests.tls_pki import Pair, Pki

__all__ = ["grpc_upstream"]  # the fixture, imported for the tests below


def secure_stub(port: int, pki: Pki, cert: Pair | None) -> EchoStub:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert.read_bytes(),
        private_key=cert.key.read_bytes() if cert else None,
        certificate_chain=cert.cert.read_bytes() if cert else None,
    )
    options: list[tuple[str, Any]] = [
        ("grpc.enable_http_proxy", 0),
        ("grpc.ssl_target_name_override", "api.example.test"),
    ]
    return EchoStub(grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options))


async def mtls_proxy(nursery: trio.Nursery, pki: Pki, upstream: int, protocol: str) -> Any:
    tls = {
        "status": True,
        "cert_chain": str(pki.server.cert),
        "private_key": str(pki.server.key),
        "ca_cert": str(pki.ca.cert),
        "verify_client": True,
        "require_client_cert": True,
    }
    chain = {
        "tls_context": tls,
        "filters": [
            {
                "type": "proxy",
                "config": {
                    "router_config_name": "r",
                    "downstream_protocol": protocol,
                    "upstream_protocol": "Http2",
                },
            }
        ],
    }
    config = http_config([to("up")], {"up": upstream}, listener={"filter_chains": [chain]})
    return await start_proxy(nursery, config)


@pytest.mark.parametrize("protocol", ["Http2", "Auto"])
async def test_grpc_over_mutual_tls(
    nursery, pki: Pki, grpc_upstream: GrpcEchoServer, protocol: str
) -> None:
    server, port = await mtls_proxy(nursery, pki, grpc_upstream.port, protocol)
    with secure_stub(port, pki, pki.client) as stub:
        assert await in_thread(stub.Unary, b"hello", timeout=10) == b"hello"
        replies = await in_thread(lambda: list(stub.ServerStream(b"3", timeout=10)))
        assert replies == [b"msg-0", b"msg-1", b"msg-2"]
    stats = server.listeners["ingress"].stats
    assert stats.ssl_handshake >= 1 and stats.ssl_connection_error == 0


async def test_grpc_without_a_client_certificate_is_refused(
    nursery, pki: Pki, grpc_upstream: GrpcEchoServer
) -> None:
    server, port = await mtls_proxy(nursery, pki, grpc_upstream.port, "Http2")
    for cert in (None, pki.stranger):
        with secure_stub(port, pki, cert) as stub:
            with pytest.raises(grpc.RpcError) as info:
                await in_thread(stub.Unary, b"hello", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert grpc_upstream.calls == []
    stats = server.listeners["ingress"].stats
    assert stats.ssl_fail_verify_no_cert >= 1 and stats.ssl_fail_verify_error >= 1
