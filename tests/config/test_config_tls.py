"""The TLS keys of the configuration: MOSN's ``tls_context``/``tls_context_set``, Envoy's
``filter_chain_match``, several filter chains per listener, cluster TLS and ``tls_disable``;
loaded from YAML and JSON, every refusal with its path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.config.test_config_refused import http_doc
from trio_mesh.config import ConfigError, parse_config, read_config
from trio_mesh.config.tls import FilterChainMatch, TlsConfig

L0 = "servers[0].listeners[0]"
C0 = f"{L0}.filter_chains[0]"
U0 = "cluster_manager.clusters[0]"


def chains(doc: dict) -> list[dict]:
    return doc["servers"][0]["listeners"][0]["filter_chains"]


def proxy_chain(**extra: Any) -> dict:
    chain = json.loads(json.dumps(chains(http_doc())[0]))
    chain.update(extra)
    return chain


def tls(**kw: Any) -> dict:
    return {"status": True, "cert_chain": "/etc/c.pem", "private_key": "/etc/k.pem", **kw}


def errors_of(doc: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    return exc.value.errors


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_mosn_tls_document_loads_from_yaml_and_json(tmp_path: Path, fmt: str) -> None:
    doc = http_doc()
    listener = doc["servers"][0]["listeners"][0]
    listener.update(inspector=True, tls_handshake_timeout="3s", max_concurrent_handshakes=64)
    chains(doc)[0].update(
        # MOSN's Go loader matches keys case-insensitively.
        TLS_Context={
            "Status": True,
            "server_name": "api.example.test",
            "ca_cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "cert_chain": "/etc/mesh/cert.pem",
            "private_key": "/etc/mesh/key.pem",
            "verify_client": True,
            "require_client_cert": True,
            "cipher_suites": "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256",
            "ecdh_curves": "P256",
            "min_version": "TLSv1_2",
            "max_version": "TLSv1_3",
            "alpn": "h2,http/1.1",
        },
        filter_chain_match={"server_names": ["api.example.test", "*.example.test"]},
    )
    chains(doc).append(
        proxy_chain(
            tls_context_set=[tls(server_name="a.test"), tls(status=False), tls()],
            filter_chain_match={"transport_protocol": "tls", "application_protocols": ["h2"]},
        )
    )
    chains(doc).append(proxy_chain())  # the default: plaintext, no match
    cluster = doc["cluster_manager"]["clusters"][0]
    cluster["tls_context"] = {"status": True, "server_name": "up.test", "ca_cert": "/ca.pem"}
    cluster["hosts"].append({"address": "127.0.0.1:2", "tls_disable": True})
    path = tmp_path / f"mesh.{fmt}"
    path.write_text(json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc))
    loaded = read_config(path)
    assert loaded.warnings == ()
    lst = loaded.config.listeners[0]
    assert lst.inspector is True
    assert lst.tls_handshake_timeout == 3.0 and lst.max_concurrent_handshakes == 64
    first, second, third = lst.filter_chains
    assert first.tls_context is not None
    assert first.tls_context.verify_client and first.tls_context.require_client_cert
    assert first.tls_context.ecdh_curves == "P256"
    assert first.filter_chain_match == FilterChainMatch(
        server_names=("api.example.test", "*.example.test")
    )
    assert [c.server_name for c in second.tls_configs()] == ["a.test", ""]
    assert second.filter_chain_match == FilterChainMatch(
        transport_protocol="tls", application_protocols=("h2",)
    )
    assert third.tls_configs() == () and third.filter_chain_match is None
    c = loaded.config.cluster_manager.clusters[0]
    assert c.tls_context == TlsConfig(status=True, server_name="up.test", ca_cert="/ca.pem")
    assert [h.tls_disable for h in c.hosts] == [False, True]


def test_defaults() -> None:
    lst = parse_config(http_doc()).config.listeners[0]
    assert (lst.inspector, lst.tls_handshake_timeout, lst.max_concurrent_handshakes) == (
        False,
        10.0,
        256,
    )


def test_unknown_and_badly_typed_tls_keys_name_their_path() -> None:
    doc = http_doc()
    chains(doc)[0]["tls_context"] = tls(cert_chian="x", verify_client="maybe")
    chains(doc)[0]["filter_chain_match"] = {"server_names": "a.test", "sni": "x"}
    errors = errors_of(doc)
    assert any(
        e.startswith(f"{C0}.tls_context.cert_chian: unknown key (known keys: alpn,") for e in errors
    )
    assert any(e.startswith(f"{C0}.tls_context.verify_client: ") for e in errors), errors
    assert any(e.startswith(f"{C0}.filter_chain_match.sni: unknown key") for e in errors)
    assert f"{C0}.filter_chain_match.server_names: expected a list, got 'a.test'" in errors


#: (a TLS key set on the first chain, the error line's start)
PURE_REFUSALS = [
    ({"cipher_suites": "HIGH:!aNULL"}, "cipher_suites: '!aNULL' is not a cipher suite name"),
    ({"min_version": "TLSv1_0"}, "min_version: TLS 1.0 is below TLS 1.2"),
    ({"max_version": "TLS1.1"}, "max_version: TLS 1.1 is below TLS 1.2"),
    ({"ecdh_curves": "x25519,p256"}, "ecdh_curves: several curves"),
    ({"alpn": "h3"}, "alpn: unknown ALPN protocol 'h3'"),
    ({"ticket": "some-key"}, "ticket: expected on or off"),
    ({"private_key": ""}, "private_key: required with cert_chain"),
    ({"verify_client": True}, "verify_client: needs ca_cert"),
    ({"type": "gm"}, "type: MOSN's TLS extension types are not supported"),
]


@pytest.mark.parametrize(("change", "error"), PURE_REFUSALS)
def test_tls_values_refused_at_load_with_their_path(change: dict, error: str) -> None:
    doc = http_doc()
    chains(doc)[0]["tls_context"] = tls(**change)
    (line,) = errors_of(doc)
    assert line.startswith(f"{C0}.tls_context.{error}"), line


def test_cluster_tls_values_refused_at_load() -> None:
    doc = http_doc()
    doc["cluster_manager"]["clusters"][0]["tls_context"] = {"status": True, "min_version": "1.1"}
    assert errors_of(doc) == [
        f"{U0}.tls_context.min_version: TLS 1.1 is below TLS 1.2, the lowest version allowed"
    ]


def test_tls_context_and_tls_context_set_together() -> None:
    doc = http_doc()
    chains(doc)[0].update(tls_context=tls(), tls_context_set=[tls()])
    assert errors_of(doc) == [
        f"{C0}.tls_context_set: give tls_context or tls_context_set, not both"
    ]


def test_several_chains_need_matches_that_tell_them_apart() -> None:
    doc = http_doc()
    sni = {"server_names": ["a.test"]}
    chains(doc).extend(
        [
            proxy_chain(filter_chain_match=sni),
            proxy_chain(filter_chain_match={"server_names": ["A.test."]}),  # the same
            proxy_chain(filter_chain_match={}),  # empty: no match
        ]
    )
    assert sorted(errors_of(doc)) == [
        f"{L0}.filter_chains[2].filter_chain_match: the same match as"
        f" {L0}.filter_chains[1].filter_chain_match",
        f"{L0}.filter_chains[3].filter_chain_match: a second chain without a match"
        f" ({C0} has none): give each chain but one a filter_chain_match that tells them apart",
    ]


def test_several_chains_with_distinct_matches_load() -> None:
    doc = http_doc()
    chains(doc)[0]["filter_chain_match"] = {"transport_protocol": "raw_buffer"}
    chains(doc).extend(
        [
            proxy_chain(filter_chain_match={"server_names": ["a.test"]}, tls_context=tls()),
            proxy_chain(filter_chain_match={"server_names": ["*.b.test"]}, tls_context=tls()),
            proxy_chain(tls_context=tls()),  # the default
        ]
    )
    assert len(parse_config(doc).config.listeners[0].filter_chains) == 4


@pytest.mark.parametrize(
    ("match", "error"),
    [
        ({"transport_protocol": "quic"}, "transport_protocol: expected tls or raw_buffer"),
        (
            {"transport_protocol": "raw_buffer", "server_names": ["a.test"]},
            "transport_protocol: raw_buffer (plaintext) connections carry no server name",
        ),
        ({"server_names": ["a.*.test"]}, "server_names[0]: expected a host name or *.domain"),
        ({"server_names": ["*"]}, "server_names[0]: expected a host name or *.domain"),
        ({"server_names": ["ok.test", "bad name"]}, "server_names[1]: expected a host name"),
        ({"application_protocols": [""]}, "application_protocols[0]: not an ALPN name"),
    ],
)
def test_bad_filter_chain_match(match: dict, error: str) -> None:
    doc = http_doc()
    chains(doc)[0]["filter_chain_match"] = match
    (line,) = errors_of(doc)
    assert line.startswith(f"{C0}.filter_chain_match.{error}"), line


def test_raw_buffer_chain_with_tls_on_is_refused() -> None:
    doc = http_doc()
    chains(doc)[0].update(
        filter_chain_match={"transport_protocol": "raw_buffer"}, tls_context=tls()
    )
    assert errors_of(doc) == [
        f"{C0}.filter_chain_match.transport_protocol: raw_buffer: plaintext, but this chain"
        " has TLS on"
    ]


def test_fall_back_insecure_skip_and_client_keys_on_a_cluster_warn() -> None:
    doc = http_doc()
    chains(doc)[0]["tls_context"] = tls(fall_back=True)
    doc["cluster_manager"]["clusters"][0]["tls_context"] = {
        "status": True,
        "insecure_skip": True,
        "fall_back": True,
        "verify_client": True,
    }
    warnings = parse_config(doc).warnings
    assert warnings == (
        f"{U0}.tls_context.fall_back: never taken: a failed TLS handshake fails the connection"
        " (falling back to cleartext would let a broken file or anyone on the path turn TLS"
        " off)",
        f"{U0}.tls_context.insecure_skip: the upstream's certificate is NOT verified: anyone"
        " on the path can impersonate it",
        f"{U0}.tls_context.verify_client: verifies downstream clients: no effect on a cluster",
        f"{C0}.tls_context.fall_back: never taken: a certificate that cannot be loaded is a"
        " configuration error (falling back to cleartext would let a broken file or anyone on"
        " the path turn TLS off)",
    )


def test_insecure_skip_on_a_listener_is_refused() -> None:
    doc = http_doc()
    chains(doc)[0]["tls_context"] = tls(insecure_skip=True)
    (line,) = errors_of(doc)
    assert line.startswith(f"{C0}.tls_context.insecure_skip: only for upstream connections")


def test_handshake_timeout_must_be_positive() -> None:
    doc = http_doc()
    doc["servers"][0]["listeners"][0]["tls_handshake_timeout"] = "0s"
    assert errors_of(doc) == [f"{L0}.tls_handshake_timeout: expected a positive duration"]
