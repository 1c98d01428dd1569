"""x-forwarded-client-cert: Envoy's element format and its five modes, decided per connection.

The pure part (the element, the policy, the passes that drop a client's header) is tested
here; the end-to-end part (curl with a client certificate through the proxy, HTTP/1 and
HTTP/2, a route matching the SPIFFE id) is in ``test_mtls.py``.
"""

from __future__ import annotations

import hashlib
import ssl
from urllib.parse import unquote

import pytest

from tests.mtls_helpers import mtls_info
from tests.tls_pki import CLIENT_SPIFFE, SERVER_SPIFFE
from trio_mesh.config.errors import ConfigError
from trio_mesh.config.filter_configs import ClientCertDetails, ForwardClientCert
from trio_mesh.protocols.http1 import strip_hop_by_hop
from trio_mesh.protocols.http2 import request_from_h2
from trio_mesh.proxy.xfcc import DROP, KEEP, XfccPolicy, element

XFCC = b"x-forwarded-client-cert"
ALL = ClientCertDetails(subject=True, uri=True, dns=True, cert=True)


def plain_tls():
    """A TLS connection whose client presented no certificate."""
    return mtls_info(
        peer_subject=None,
        peer_issuer=None,
        peer_uri_sans=(),
        peer_dns_sans=(),
        peer_serial=None,
        peer_cert_der=None,
    )


def test_element_is_envoys_format(pki) -> None:
    der = ssl.PEM_cert_to_DER_cert(pki.client.cert_pem)
    tls = mtls_info(peer_cert_der=der, peer_dns_sans=("a.example", "b.example"))
    digest = hashlib.sha256(der).hexdigest()
    # By and Hash always; then Envoy's order: Cert, Subject, URI, DNS
    assert element(tls, ClientCertDetails()) == f"By={SERVER_SPIFFE};Hash={digest}".encode()
    text = element(tls, ALL).decode()
    by, hash_, cert, subject, uri, dns_a, dns_b = text.split(";")
    assert (by, hash_) == (f"By={SERVER_SPIFFE}", f"Hash={digest}")
    assert cert.startswith('Cert="-----BEGIN%20CERTIFICATE-----%0A') and cert.endswith('%0A"')
    # URL-encoded PEM: no raw newline, space, "+", "/" or "=" is left; it decodes to the PEM
    assert not set(cert[6:-1]) & set("\n +/=")
    assert unquote(cert[6:-1]) == ssl.DER_cert_to_PEM_cert(der)
    assert subject == 'Subject="CN=client,O=trio-mesh tests"'
    assert uri == f"URI={CLIENT_SPIFFE}"
    assert (dns_a, dns_b) == ("DNS=a.example", "DNS=b.example")


def test_element_keeps_envoys_empty_keys() -> None:
    tls = mtls_info(peer_uri_sans=(), peer_subject=None, local_uri_sans=())
    text = element(tls, ClientCertDetails(subject=True, uri=True, dns=True)).decode()
    # no By without a local URI SAN; Subject and URI are there even when empty; DNS is not
    assert text == f'Hash={hashlib.sha256(b"der").hexdigest()};Subject="";URI='


def split_quoted(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside double quotes (``\\"`` inside quotes is escaped): how
    an XFCC reader splits elements (``,``) and pairs (``;``)."""
    parts, current, quoted, escaped = [], [], False, False
    for c in text:
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    assert not quoted, text
    parts.append("".join(current))
    return parts


def test_a_certificates_names_cannot_split_the_header_or_forge_a_key() -> None:
    """A (CA-signed) certificate with separators, quotes or a line break in its names: they
    stay inside one quoted value of one element; nothing reaches the header raw."""
    evil_uri = 'spiffe://x/a,By=spiffe://admin;URI=spiffe://admin"\r\nx-admin: 1'
    tls = mtls_info(
        peer_uri_sans=(evil_uri,),
        peer_subject='CN=a\\"b,O=x"\r\nInjected: 1',
        local_uri_sans=("spiffe://ok",),
    )
    value = element(tls, ClientCertDetails(subject=True, uri=True))
    assert b"\r" not in value and b"\n" not in value
    text = value.decode()
    (only,) = split_quoted(text, ",")  # one element
    pairs = [pair.split("=", 1) for pair in split_quoted(only, ";")]
    assert [key for key, _ in pairs] == ["By", "Hash", "Subject", "URI"]
    uri = pairs[3][1]
    assert uri == '"spiffe://x/a,By=spiffe://admin;URI=spiffe://admin\\"%0D%0Ax-admin: 1"'
    # RFC 2253's own escape kept, not doubled; the raw quote escaped
    assert pairs[2][1] == '"CN=a\\"b,O=x\\"%0D%0AInjected: 1"'


@pytest.mark.parametrize(
    ("mode", "plaintext", "tls_without_cert", "mtls"),
    [
        # Envoy's mutateXfccRequestHeader, mode by mode: (drops the client's, sets ours)
        ("SANITIZE", (True, False), (True, False), (True, False)),
        ("FORWARD_ONLY", (True, False), (True, False), (False, False)),
        ("APPEND_FORWARD", (True, False), (True, False), (False, True)),
        ("SANITIZE_SET", (True, False), (True, False), (True, True)),
        ("ALWAYS_FORWARD_ONLY", (False, False), (False, False), (False, False)),
    ],
)
def test_modes_per_connection(mode, plaintext, tls_without_cert, mtls) -> None:
    policy = XfccPolicy(ForwardClientCert(mode), ClientCertDetails())
    cases = ((None, plaintext), (plain_tls(), tls_without_cert), (mtls_info(), mtls))
    for tls, (drop, sets) in cases:
        conn = policy.for_connection(tls)
        assert (conn.drop, conn.value is not None) == (drop, sets), (mode, tls)
    assert policy.for_connection(None) in (DROP, KEEP)  # shared: nothing made per connection


def test_append_joins_the_clients_elements_in_one_field() -> None:
    conn = XfccPolicy(ForwardClientCert.APPEND_FORWARD, ClientCertDetails()).for_connection(
        mtls_info()
    )
    headers = [(b"a", b"1"), (XFCC, b"By=spiffe://first"), (b"b", b"2"), (XFCC, b"By=spiffe://2nd")]
    conn.apply(headers)
    assert headers[:2] == [(b"a", b"1"), (b"b", b"2")]
    assert headers[2] == (XFCC, b"By=spiffe://first,By=spiffe://2nd," + conn.value)
    assert len(headers) == 3
    alone: list[tuple[bytes, bytes]] = [(b"a", b"1")]
    conn.apply(alone)
    assert alone == [(b"a", b"1"), (XFCC, conn.value)]


def test_sanitize_set_replaces() -> None:
    conn = XfccPolicy(ForwardClientCert.SANITIZE_SET, ClientCertDetails()).for_connection(
        mtls_info()
    )
    assert conn.drop
    # the client's header went in the stripping pass: apply only adds ours
    headers = strip_hop_by_hop([(b"a", b"1"), (XFCC, b"forged")], drop_xfcc=conn.drop)
    conn.apply(headers)
    assert headers == [(b"a", b"1"), (XFCC, conn.value)]


def test_the_passes_drop_a_clients_header_only_when_asked() -> None:
    headers = [(b"host", b"h"), (XFCC, b"forged"), (b"connection", b"close")]
    assert strip_hop_by_hop(headers, drop_xfcc=True) == [(b"host", b"h")]
    assert strip_hop_by_hop(headers) == [(b"host", b"h"), (XFCC, b"forged")]
    assert strip_hop_by_hop(headers, keep_upgrade=True, drop_xfcc=True) == [(b"host", b"h")]
    # named by Connection: hop-by-hop, gone whatever the mode
    named = [(b"connection", b"x-forwarded-client-cert"), (XFCC, b"v")]
    assert strip_hop_by_hop(named) == []
    h2 = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/"),
        (b":authority", b"a"),
        (XFCC, b"forged"),
        (b"cookie", b"a=1"),
        (b"x", b"1"),
        (XFCC, b"again"),
    ]
    assert request_from_h2(h2, drop_xfcc=True).headers == [(b"cookie", b"a=1"), (b"x", b"1")]
    kept = request_from_h2(h2).headers
    assert kept == [(XFCC, b"forged"), (b"cookie", b"a=1"), (b"x", b"1"), (XFCC, b"again")]


# --------------------------------------------------------------------------- configuration


def _proxy(config: dict) -> dict:
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "type": "proxy",
                                        "config": {"router_config_name": "r", **config},
                                    }
                                ]
                            }
                        ],
                    }
                ],
                "routers": [{"router_config_name": "r", "virtual_hosts": []}],
            }
        ]
    }


def _proxy_config(config: dict):
    from trio_mesh.config import parse_config

    listener = parse_config(_proxy(config)).config.servers[0].listeners[0]
    return listener.filter_chains[0].filters[0].config


def test_config_defaults_and_names() -> None:
    default = _proxy_config({})
    assert default.forward_client_cert_details is ForwardClientCert.SANITIZE
    assert default.set_current_client_cert_details == ClientCertDetails()
    c = _proxy_config(
        {
            "forward_client_cert_details": "sanitize_set",  # Envoy's names, any case
            "set_current_client_cert_details": {"uri": True, "subject": True},
        }
    )
    assert c.forward_client_cert_details is ForwardClientCert.SANITIZE_SET
    assert c.set_current_client_cert_details == ClientCertDetails(uri=True, subject=True)


@pytest.mark.parametrize(
    ("config", "where", "says"),
    [
        ({"forward_client_cert_details": "APPEND"}, "forward_client_cert_details", "expected one"),
        (
            {"set_current_client_cert_details": {"chain": True}},
            "set_current_client_cert_details.chain",
            "not supported",
        ),
        (
            {"set_current_client_cert_details": {"hash": True}},
            "set_current_client_cert_details",
            "hash",
        ),
    ],
)
def test_config_errors_name_their_path(config, where, says) -> None:
    from trio_mesh.config import parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(_proxy(config))
    text = str(err.value)
    assert f"servers[0].listeners[0].filter_chains[0].filters[0].config.{where}" in text, text
    assert says in text, text
