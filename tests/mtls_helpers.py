"""Shared helpers of the mutual-TLS consumer tests (XFCC, access log variables, filters)."""

from __future__ import annotations

import json
from typing import Any

import attrs

from tests.http_helpers import Headers, curl
from tests.tls_pki import CLIENT_SPIFFE, SERVER_SPIFFE, Pair, Pki
from trio_mesh.config import MeshConfig, parse_config


@attrs.define
class FakeTlsInfo:
    """A finished handshake's facts, as :class:`~trio_mesh.network.tls.TlsInfo` gives them,
    without a handshake (the pure tests of what consumes them)."""

    version: str = "TLSv1.3"
    cipher: str = "TLS_AES_128_GCM_SHA256"
    alpn: str | None = None
    sni: str | None = "localhost"
    peer_subject: str | None = "CN=client,O=trio-mesh tests"
    peer_issuer: str | None = "CN=ca,O=trio-mesh tests"
    peer_uri_sans: tuple[str, ...] = (CLIENT_SPIFFE,)
    peer_dns_sans: tuple[str, ...] = ()
    peer_serial: str | None = "03e9"
    peer_cert_der: bytes | None = b"der"
    local_subject: str | None = "CN=localhost,O=trio-mesh tests"
    local_uri_sans: tuple[str, ...] = (SERVER_SPIFFE,)

    @property
    def peer_verified(self) -> bool:
        return self.peer_cert_der is not None


def mtls_info(**changes: Any) -> Any:
    """What a mutual-TLS handshake with ``pki.client`` tells (``changes`` on top)."""
    return FakeTlsInfo(**changes)


def tls_context(
    pki: Pki, *, verify_client: bool = True, optional: bool = False, alpn: str = "h2,http/1.1"
) -> dict:
    """A listener chain's ``tls_context`` with ``pki.server``; ``verify_client``: mutual TLS
    (the client must present a certificate ``pki.ca`` signed; ``optional``: may present
    none, one it presents is verified)."""
    ctx: dict[str, Any] = {
        "status": True,
        "cert_chain": str(pki.server.cert),
        "private_key": str(pki.server.key),
        "alpn": alpn,
    }
    if verify_client:
        ctx.update(ca_cert=str(pki.ca.cert), verify_client=True, require_client_cert=not optional)
    return ctx


def mtls_config(
    pki: Pki,
    routes: list[dict[str, Any]],
    clusters: dict[str, int],
    *,
    proxy: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    stream_filters: list[dict[str, Any]] | None = None,
    verify_client: bool = True,
    optional: bool = False,
    plaintext_listener: bool = False,
) -> MeshConfig:
    """Listener ``ingress`` (TLS with ``pki.server``; mutual unless ``verify_client=False``)
    proxying with router ``r``; ``plaintext_listener``: a second listener ``plain``, the same
    proxy without TLS."""

    def one(name: str, tls: dict[str, Any] | None) -> dict[str, Any]:
        chain: dict[str, Any] = {
            "filters": [
                {
                    "type": "proxy",
                    "config": {
                        "router_config_name": "r",
                        "downstream_protocol": "Auto",
                        "upstream_protocol": "Http1",
                        **(proxy or {}),
                    },
                }
            ]
        }
        if tls is not None:
            chain["tls_context"] = tls
        return {
            "name": name,
            "address": "127.0.0.1:0",
            "filter_chains": [chain],
            **({"stream_filters": stream_filters} if stream_filters else {}),
            **(listener or {}),
        }

    tls = tls_context(pki, verify_client=verify_client, optional=optional)
    listeners = [one("ingress", tls)]
    if plaintext_listener:
        listeners.append(one("plain", None))
    doc = {
        "servers": [
            {
                "listeners": listeners,
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "v", "domains": ["*"], "routers": routes}],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [
                {
                    "name": name,
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{port}"}],
                }
                for name, port in clusters.items()
            ]
        },
    }
    return parse_config(doc).config


async def curl_tls(
    port: int,
    pki: Pki,
    path: str = "/echo",
    *,
    client: Pair | None = None,
    headers: tuple[str, ...] = (),
    http2: bool = False,
) -> tuple[int, bytes, bytes]:
    """curl ``https://localhost:<port><path>`` (SNI localhost, resolved to 127.0.0.1),
    verifying ``pki.server`` and presenting ``client`` (none by default): (exit code, body
    with ``-w`` status at its end as ``\\n<status>``, stderr)."""
    args = [
        "--cacert", str(pki.ca.cert),
        "--resolve", f"localhost:{port}:127.0.0.1",
        "-w", "\n%{http_code} %{http_version}",
    ]  # fmt: skip
    if client is not None:
        args += ["--cert", str(client.cert), "--key", str(client.key)]
    for header in headers:
        args += ["-H", header]
    args.append("--http2" if http2 else "--http1.1")
    return await curl(*args, f"https://localhost:{port}{path}")


def curl_result(out: bytes) -> tuple[int, str, bytes]:
    """``curl_tls``'s stdout: (status, HTTP version, body)."""
    body, _, tail = out.rpartition(b"\n")
    status, version = tail.decode().split()
    return int(status), version, body


def echoed_headers(body: bytes) -> Headers:
    """The upstream's /echo JSON body: the headers it received."""
    return Headers((n.lower(), v) for n, v in json.loads(body)["headers"])
