"""Shared helpers of the mutual-TLS consumer tests (XFCC, access log variables, filters)."""

from __future__ import annotations

from trio_mesh.network.tls import TlsInfo

from tests.tls_pki import CLIENT_SPIFFE, SERVER_SPIFFE


def mtls_info(**changes: object) -> TlsInfo:
    """A TlsInfo as a mutual-TLS handshake with ``pki.client`` leaves it (``changes`` on top)."""
    info = TlsInfo(
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        alpn=None,
        sni="localhost",
        peer_subject="CN=client,O=trio-mesh tests",
        peer_issuer="CN=ca,O=trio-mesh tests",
        peer_uri_sans=(CLIENT_SPIFFE,),
        peer_dns_sans=(),
        peer_serial="03E9",
        peer_cert_der=b"der",
        local_subject="CN=localhost,O=trio-mesh tests",
        local_uri_sans=(SERVER_SPIFFE,),
    )
    for name, value in changes.items():
        setattr(info, name, value)
    return info
