"""Envoy's TLS through xDS: DownstreamTlsContext / UpstreamTlsContext transport sockets,
filter chain matching and several chains, the TLS inspector, converted into the same
``TlsConfig``/``FilterChainMatch`` a file gives; what trio-mesh cannot honour (SDS, SAN
matching, ticket keys, other match fields) is refused with its Envoy path (a NACK)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from tests.tls_pki import Pki
from tests.xds.test_xds_translate import compose, expect, hcm, listener, secs
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.config.tls import FilterChainMatch, TlsConfig
from trio_mesh.network.tls_context import client_tls, server_tls
from trio_mesh.xds import types as t
from trio_mesh.xds.translate import ConvertError, cluster_doc, listener_doc

ROUTER = {
    "router_config_name": "main_routes",
    "virtual_hosts": [
        {"name": "v", "domains": ["*"], "routers": [{"route": {"cluster_name": "b"}}]}
    ],
}
CLUSTER = {"name": "b", "hosts": [{"address": "127.0.0.1:1"}]}


def inline(text: str) -> t.DataSource:
    return t.DataSource(inline_string=text)


def tls_socket(ctx: Any) -> t.TransportSocket:
    return t.TransportSocket(name="envoy.transport_sockets.tls", typed_config=t.Any.pack(ctx))


def http_chain(**kw: Any) -> t.FilterChain:
    return t.FilterChain(filters=[t.Filter(name="hcm", typed_config=t.Any.pack(hcm()))], **kw)


def downstream(pki: Pki, **kw: Any) -> t.DownstreamTlsContext:
    common = kw.pop("common", None) or t.CommonTlsContext(
        tls_certificates=[
            t.TlsCertificate(
                certificate_chain=inline(pki.server.cert_pem),
                private_key=inline(pki.server.key_pem),
            )
        ],
        validation_context=t.CertificateValidationContext(
            trusted_ca=t.DataSource(inline_bytes=pki.ca.cert.read_bytes())
        ),
        tls_params=t.TlsParameters(
            tls_minimum_protocol_version=t.TlsParametersTlsProtocol.TLSv1_2,
            tls_maximum_protocol_version=t.TlsParametersTlsProtocol.TLSv1_3,
            cipher_suites=["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"],
            ecdh_curves=["P-256"],
        ),
        alpn_protocols=["h2", "http/1.1"],
    )
    return t.DownstreamTlsContext(common_tls_context=common, **kw)


def test_listener_with_sni_chains_tls_and_a_plaintext_default(pki: Pki) -> None:
    lst = listener(
        "edge",
        8443,
        filter_chains=[
            http_chain(
                filter_chain_match=t.FilterChainMatch(
                    server_names=["api.example.test", "*.wild.example.test"],
                    transport_protocol="tls",
                    application_protocols=["h2"],
                ),
                transport_socket=tls_socket(downstream(pki, require_client_certificate=True)),
                transport_socket_connect_timeout=secs(4),
            ),
            http_chain(filter_chain_match=t.FilterChainMatch(transport_protocol="raw_buffer")),
        ],
        default_filter_chain=http_chain(transport_socket=tls_socket(downstream(pki))),
        listener_filters=[
            t.ListenerFilter(
                name="envoy.filters.listener.tls_inspector",
                typed_config=t.Any.pack(t.TlsInspector()),
            )
        ],
    )
    parts = listener_doc(lst)
    config = compose([parts], [ROUTER], [CLUSTER])
    (edge,) = config.listeners
    # Envoy's tls_inspector only reads the ClientHello: never MOSN's inspector, which would
    # serve a plaintext client in cleartext on a TLS chain
    assert edge.inspector is False and edge.tls_handshake_timeout == 4.0
    sni, plain, default = edge.filter_chains
    assert sni.filter_chain_match == FilterChainMatch(
        server_names=("api.example.test", "*.wild.example.test"),
        transport_protocol="tls",
        application_protocols=("h2",),
    )
    assert sni.tls_context == TlsConfig(
        status=True,
        ca_cert=pki.ca.cert.read_text(),
        cert_chain=pki.server.cert_pem,
        private_key=pki.server.key_pem,
        verify_client=True,
        require_client_cert=True,
        cipher_suites="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
        ecdh_curves="P-256",
        min_version="TLSv1_2",
        max_version="TLSv1_3",
        alpn="h2,http/1.1",
    )
    assert plain.tls_configs() == () and plain.filter_chain_match is not None
    assert default.filter_chain_match is None
    assert default.tls_context is not None and not default.tls_context.require_client_cert
    assert default.tls_context.verify_client  # a trusted CA: verified when given (Envoy's)
    # The converted contexts build, as the server builds them.
    built = server_tls(sni, "c", default_alpn=())
    assert built is not None and built.default.verify_mode == ssl.CERT_REQUIRED
    assert "api.example.test" in built.contexts[0][0]


def test_several_certificates_become_a_tls_context_set(pki: Pki) -> None:
    pair = lambda p: t.TlsCertificate(  # noqa: E731
        certificate_chain=t.DataSource(filename=str(p.cert)),
        private_key=t.DataSource(filename=str(p.key)),
    )
    ctx = t.DownstreamTlsContext(
        common_tls_context=t.CommonTlsContext(
            tls_certificates=[pair(pki.other_server), pair(pki.server)]
        )
    )
    parts = listener_doc(
        listener("two", 1, filter_chains=[http_chain(transport_socket=tls_socket(ctx))])
    )
    (chain,) = compose([parts], [ROUTER], [CLUSTER]).listeners[0].filter_chains
    assert [c.cert_chain for c in chain.tls_context_set] == [
        str(pki.other_server.cert),
        str(pki.server.cert),
    ]
    built = server_tls(chain, "c", default_alpn=())
    assert built is not None and built.select("api.example.test") is built.contexts[1][1]


def test_upstream_tls_context_becomes_the_cluster_tls_context(pki: Pki) -> None:
    ctx = t.UpstreamTlsContext(
        sni="api.example.test",
        common_tls_context=t.CommonTlsContext(
            tls_certificates=[
                t.TlsCertificate(
                    certificate_chain=t.DataSource(filename=str(pki.client.cert)),
                    private_key=t.DataSource(filename=str(pki.client.key)),
                )
            ],
            validation_context=t.CertificateValidationContext(
                trusted_ca=t.DataSource(filename=str(pki.ca.cert))
            ),
            alpn_protocols=["h2"],
        ),
    )
    doc, _ = cluster_doc(
        t.Cluster(name="up", type=t.ClusterDiscoveryType.EDS, transport_socket=tls_socket(ctx))
    )
    assert doc["tls_context"] == {
        "status": True,
        "server_name": "api.example.test",
        "ca_cert": str(pki.ca.cert),
        "cert_chain": str(pki.client.cert),
        "private_key": str(pki.client.key),
        "alpn": "h2",
    }
    config = parse_config({"cluster_manager": {"clusters": [doc]}}, dynamic=True).config
    built = client_tls(config.cluster_manager.clusters[0].tls_context, "c", alpn=())
    assert built is not None and built.server_name == "api.example.test"
    # No validation context: Envoy would verify nothing; trio-mesh verifies (system CAs).
    bare, _ = cluster_doc(t.Cluster(name="up", transport_socket=tls_socket(t.UpstreamTlsContext())))
    assert bare["tls_context"] == {"status": True}
    built = client_tls(TlsConfig(status=True), "c", alpn=())
    assert built is not None and built.context.verify_mode == ssl.CERT_REQUIRED


SDS = t.SdsSecretConfig(name="s", sds_config=t.ConfigSource(ads=t.AggregatedConfigSource()))
TP = "filter_chains[0].transport_socket.typed_config"
CT = f"{TP}.common_tls_context"


@pytest.mark.parametrize(
    ("ctx", "error"),
    [
        (
            t.DownstreamTlsContext(
                common_tls_context=t.CommonTlsContext(tls_certificate_sds_secret_configs=[SDS])
            ),
            f"{CT}.tls_certificate_sds_secret_configs: SDS is not supported",
        ),
        (
            t.DownstreamTlsContext(
                common_tls_context=t.CommonTlsContext(validation_context_sds_secret_config=SDS)
            ),
            f"{CT}.validation_context_sds_secret_config: SDS is not supported",
        ),
        (
            t.DownstreamTlsContext(session_ticket_keys=t.TlsSessionTicketKeys()),
            f"{TP}.session_ticket_keys: session ticket keys cannot be set",
        ),
        (
            t.DownstreamTlsContext(require_client_certificate=True),
            f"{TP}.require_client_certificate: needs common_tls_context.validation_context",
        ),
        (
            t.DownstreamTlsContext(require_sni=True),
            f"{TP}.require_sni: not supported by trio-mesh",
        ),
        (
            t.DownstreamTlsContext(
                common_tls_context=t.CommonTlsContext(
                    validation_context=t.CertificateValidationContext(
                        verify_certificate_hash=["ab"]
                    )
                )
            ),
            f"{CT}.validation_context.verify_certificate_hash: not supported by trio-mesh",
        ),
        (
            t.DownstreamTlsContext(
                common_tls_context=t.CommonTlsContext(
                    tls_params=t.TlsParameters(signature_algorithms=["ecdsa_secp256r1_sha256"])
                )
            ),
            f"{CT}.tls_params.signature_algorithms: not supported by trio-mesh",
        ),
        (
            t.DownstreamTlsContext(
                common_tls_context=t.CommonTlsContext(
                    tls_params=t.TlsParameters(cipher_suites=["[A|B]"])
                )
            ),
            f"{CT}.tls_params.cipher_suites: '[A|B]': equal-preference groups",
        ),
        (
            t.DownstreamTlsContext(
                common_tls_context=t.CommonTlsContext(
                    tls_certificates=[
                        t.TlsCertificate(
                            certificate_chain=t.DataSource(filename="/c.pem"),
                            private_key=t.DataSource(filename="/k.pem"),
                            password=t.DataSource(inline_string="secret"),
                        )
                    ]
                )
            ),
            f"{CT}.tls_certificates[0].password: encrypted private keys are not supported",
        ),
        (
            t.DownstreamTlsContext(
                common_tls_context=t.CommonTlsContext(
                    tls_certificates=[
                        t.TlsCertificate(
                            certificate_chain=t.DataSource(environment_variable="CERT"),
                            private_key=t.DataSource(filename="/k.pem"),
                        )
                    ]
                )
            ),
            f"{CT}.tls_certificates[0].certificate_chain.environment_variable: not supported",
        ),
        (
            t.DownstreamTlsContext(
                common_tls_context=t.CommonTlsContext(
                    tls_certificates=[
                        t.TlsCertificate(
                            certificate_chain=t.DataSource(inline_string="not pem"),
                            private_key=t.DataSource(filename="/k.pem"),
                        )
                    ]
                )
            ),
            f"{CT}.tls_certificates[0].certificate_chain.inline_string: expected PEM text",
        ),
    ],
    ids=[
        "sds-cert",
        "sds-ca",
        "ticket-keys",
        "require-without-ca",
        "require-sni",
        "cert-hash",
        "sigalgs",
        "cipher-group",
        "password",
        "env",
        "not-pem",
    ],
)
def test_downstream_refusals_name_the_envoy_field(ctx: Any, error: str) -> None:
    lst = listener("x", 1, filter_chains=[http_chain(transport_socket=tls_socket(ctx))])
    with pytest.raises(ConvertError) as exc:
        listener_doc(lst)
    assert str(exc.value).startswith(f"Listener 'x': {error}"), str(exc.value)


def test_upstream_and_match_refusals() -> None:
    expect(
        cluster_doc,
        t.Cluster(name="up", transport_socket=tls_socket(t.UpstreamTlsContext(auto_host_sni=True))),
        "Cluster 'up': transport_socket.typed_config.auto_host_sni: not supported by trio-mesh",
    )
    two = t.CommonTlsContext(tls_certificates=[t.TlsCertificate(), t.TlsCertificate()])
    expect(
        cluster_doc,
        t.Cluster(
            name="up", transport_socket=tls_socket(t.UpstreamTlsContext(common_tls_context=two))
        ),
        "Cluster 'up': transport_socket.typed_config.common_tls_context.tls_certificates: an"
        " upstream connection has one client certificate",
    )
    expect(
        listener_doc,
        listener(
            "x",
            1,
            filter_chains=[http_chain(filter_chain_match=t.FilterChainMatch(source_ports=[1]))],
        ),
        "Listener 'x': filter_chains[0].filter_chain_match.source_ports: not supported by"
        " trio-mesh",
    )
    expect(
        listener_doc,
        listener(
            "x",
            1,
            hcm(),
            listener_filters=[
                t.ListenerFilter(
                    name="i",
                    typed_config=t.Any.pack(t.TlsInspector(enable_ja3_fingerprinting=True)),
                )
            ],
        ),
        "Listener 'x': listener_filters[0].typed_config.enable_ja3_fingerprinting: not"
        " supported by trio-mesh",
    )


def test_versions_below_1_2_and_duplicate_chains_are_refused_by_validation(pki: Pki) -> None:
    old = downstream(
        pki,
        common=t.CommonTlsContext(
            tls_certificates=[
                t.TlsCertificate(
                    certificate_chain=inline(pki.server.cert_pem),
                    private_key=inline(pki.server.key_pem),
                )
            ],
            tls_params=t.TlsParameters(
                tls_minimum_protocol_version=t.TlsParametersTlsProtocol.TLSv1_1
            ),
        ),
    )
    parts = listener_doc(
        listener("x", 1, filter_chains=[http_chain(transport_socket=tls_socket(old)), http_chain()])
    )
    with pytest.raises(ConfigError) as exc:
        compose([parts], [ROUTER], [CLUSTER])
    assert sorted(exc.value.errors) == [
        "servers[0].listeners[0].filter_chains[0].tls_context.min_version: TLS 1.1 is below"
        " TLS 1.2, the lowest version allowed",
        "servers[0].listeners[0].filter_chains[1].filter_chain_match: a second chain without a"
        " match (servers[0].listeners[0].filter_chains[0] has none): give each chain but one a"
        " filter_chain_match that tells them apart",
    ]


def test_chains_must_share_their_http_filters() -> None:
    from tests.xds.test_xds_translate import router_filter

    fault = t.HttpFilter(
        name="envoy.filters.http.fault",
        typed_config=t.Any(
            type_url="type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            value=b"",
        ),
    )
    other = t.FilterChain(
        filters=[
            t.Filter(
                name="hcm", typed_config=t.Any.pack(hcm(http_filters=[fault, router_filter()]))
            )
        ],
        filter_chain_match=t.FilterChainMatch(server_names=["a.test"]),
    )
    expect(
        listener_doc,
        listener("x", 1, filter_chains=[http_chain(), other]),
        "Listener 'x': filter_chains[1].filters[0].typed_config: a second HTTP connection"
        " manager with other HTTP filters",
    )
