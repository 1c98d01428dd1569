"""TLS contexts built from the configuration: every refusal names its key's path, the safe
defaults are set, SNI picks the certificate, and real handshakes (OpenSSL on both sides, over
memory BIOs) succeed or fail as the configuration says."""

from __future__ import annotations

import os
import re
import ssl
import stat
import tempfile
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.tls_pki import CLIENT_SPIFFE, Pki
from trio_mesh.config.model import FilterChain
from trio_mesh.config.tls import TlsConfig
from trio_mesh.errors import StartupError
from trio_mesh.network.tls_context import (
    ClientTls,
    ServerTls,
    TlsConfigError,
    client_tls,
    server_tls,
)

CP = "servers[0].listeners[0].filter_chains[0]"
TP = f"{CP}.tls_context"
UP = "cluster_manager.clusters[0].tls_context"


def server_config(pki: Pki, **kw: Any) -> TlsConfig:
    base: dict[str, Any] = {
        "status": True,
        "cert_chain": str(pki.server.cert),
        "private_key": str(pki.server.key),
    }
    return TlsConfig(**{**base, **kw})


def build_server(config: TlsConfig, alpn: tuple[str, ...] = ()) -> ServerTls:
    tls = server_tls(FilterChain(tls_context=config), CP, default_alpn=alpn)
    assert tls is not None
    return tls


def build_client(pki: Pki, **kw: Any) -> ClientTls:
    base: dict[str, Any] = {"status": True, "ca_cert": str(pki.ca.cert), "server_name": "localhost"}
    tls = client_tls(TlsConfig(**{**base, **kw}), UP, alpn=())
    assert tls is not None
    return tls


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, sni: str | None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A full handshake between the two contexts over memory BIOs; raises the side's error."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_side=False, server_hostname=sni)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c_done = s_done = False
    for _ in range(20):
        if not c_done:
            try:
                c.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            try:
                s.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if c_done and s_done:
            # TLS 1.3: the client learns of a refused certificate on its first read.
            c.write(b"x")
            s_in.write(c_out.read())
            assert s.read(1) == b"x"
            return c, s
    raise AssertionError("handshake did not finish")


# ------------------------------------------------------------------ defaults


def test_server_defaults_are_the_safe_ones(pki: Pki) -> None:
    ctx = build_server(server_config(pki)).default
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET):
        assert ctx.options & option == option
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert ctx.num_tickets == 0
    assert ctx.verify_mode == ssl.CERT_NONE  # no client certificate asked for


def test_ticket_on_turns_session_tickets_on(pki: Pki) -> None:
    ctx = build_server(server_config(pki, ticket="on")).default
    assert not ctx.options & ssl.OP_NO_TICKET
    assert ctx.num_tickets > 0


def test_client_defaults_verify_the_server(pki: Pki) -> None:
    tls = build_client(pki)
    assert tls.server_name == "localhost"
    ctx = tls.context
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_RENEGOTIATION and ctx.options & ssl.OP_NO_COMPRESSION
    assert build_client(pki, server_name="").server_name is None


def test_client_without_ca_uses_the_system_cas(pki: Pki) -> None:
    tls = client_tls(TlsConfig(status=True), UP, alpn=("h2",))
    assert tls is not None and tls.context.verify_mode == ssl.CERT_REQUIRED
    # Our test CA is not a system CA: the handshake must fail.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(build_server(server_config(pki)).default, tls.context, "localhost")


def test_off_configs_build_nothing(pki: Pki) -> None:
    assert server_tls(FilterChain(), CP, default_alpn=()) is None
    off = FilterChain(tls_context=TlsConfig(status=False, cert_chain="/nonexistent"))
    assert server_tls(off, CP, default_alpn=()) is None
    assert client_tls(None, UP, alpn=()) is None
    assert client_tls(TlsConfig(status=False, ca_cert="/nonexistent"), UP, alpn=()) is None


# ------------------------------------------------------------------ handshakes


def test_handshake_with_verification_alpn_and_versions(pki: Pki) -> None:
    server = build_server(server_config(pki), alpn=("h2", "http/1.1"))
    client = client_tls(
        TlsConfig(status=True, ca_cert=str(pki.ca.cert), server_name="api.example.test"),
        UP,
        alpn=("h2",),
    )
    assert client is not None
    c, s = handshake(server.select("api.example.test"), client.context, client.server_name)
    assert c.selected_alpn_protocol() == "h2" == s.selected_alpn_protocol()
    assert c.version() == "TLSv1.3"
    assert s.getpeercert() is None  # no client certificate asked for


def test_wrong_server_name_is_refused_by_the_client(pki: Pki) -> None:
    server = build_server(server_config(pki)).default
    client = build_client(pki, server_name="elsewhere.example.test")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(server, client.context, client.server_name)


def test_insecure_skip_accepts_any_certificate(pki: Pki) -> None:
    server = build_server(server_config(pki)).default
    client = build_client(pki, ca_cert="", insecure_skip=True, server_name="elsewhere.test")
    assert client.context.verify_mode == ssl.CERT_NONE and not client.context.check_hostname
    handshake(server, client.context, client.server_name)


def test_mutual_tls_requires_and_verifies_the_client(pki: Pki) -> None:
    server = build_server(
        server_config(pki, ca_cert=str(pki.ca.cert), verify_client=True, require_client_cert=True)
    ).default
    assert server.verify_mode == ssl.CERT_REQUIRED
    good = build_client(pki, cert_chain=str(pki.client.cert), private_key=str(pki.client.key))
    _, s = handshake(server, good.context, "localhost")
    peer = s.getpeercert()
    assert peer is not None and ("URI", CLIENT_SPIFFE) in peer["subjectAltName"]
    with pytest.raises(ssl.SSLError):  # no client certificate
        handshake(server, build_client(pki).context, "localhost")
    stranger = build_client(
        pki, cert_chain=str(pki.stranger.cert), private_key=str(pki.stranger.key)
    )
    with pytest.raises(ssl.SSLError, match="certificate"):  # signed by another CA
        handshake(server, stranger.context, "localhost")
    expired = build_client(
        pki, cert_chain=str(pki.expired_client.cert), private_key=str(pki.expired_client.key)
    )
    with pytest.raises(ssl.SSLError, match="certificate"):
        handshake(server, expired.context, "localhost")


def test_verify_client_alone_verifies_a_certificate_when_given(pki: Pki) -> None:
    server = build_server(server_config(pki, ca_cert=str(pki.ca.cert), verify_client=True))
    assert server.default.verify_mode == ssl.CERT_OPTIONAL
    handshake(server.default, build_client(pki).context, "localhost")  # none given: served
    stranger = build_client(
        pki, cert_chain=str(pki.stranger.cert), private_key=str(pki.stranger.key)
    )
    with pytest.raises(ssl.SSLError):
        handshake(server.default, stranger.context, "localhost")


def test_require_client_cert_alone_also_verifies(pki: Pki) -> None:
    # MOSN asks for a certificate and never verifies it; trio-mesh verifies it.
    server = build_server(
        server_config(pki, ca_cert=str(pki.ca.cert), require_client_cert=True)
    ).default
    assert server.verify_mode == ssl.CERT_REQUIRED
    stranger = build_client(
        pki, cert_chain=str(pki.stranger.cert), private_key=str(pki.stranger.key)
    )
    with pytest.raises(ssl.SSLError):
        handshake(server, stranger.context, "localhost")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_client_is_refused(pki: Pki) -> None:
    server = build_server(server_config(pki)).default
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(server, old, "localhost")


def test_max_version_and_cipher_suites_are_enforced(pki: Pki) -> None:
    server = build_server(
        server_config(
            pki,
            max_version="TLSv1_2",
            cipher_suites="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",  # the IANA name
            ecdh_curves="P256",
        )
    ).default
    c, _ = handshake(server, build_client(pki).context, "localhost")
    assert c.version() == "TLSv1.2"
    assert c.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    only_other = build_client(pki, cipher_suites="ECDHE-ECDSA-AES256-GCM-SHA384")
    only_other.context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(server, only_other.context, "localhost")


def test_inline_pem_loads_and_leaves_no_file_behind(pki: Pki) -> None:
    before = set(os.listdir(tempfile.gettempdir()))
    server = build_server(
        server_config(
            pki,
            cert_chain=pki.server.cert_pem,
            private_key=pki.server.key_pem,
            ca_cert=pki.ca.cert.read_text(),
            verify_client=True,
        )
    )
    assert set(os.listdir(tempfile.gettempdir())) - before == set()
    assert "api.example.test" in server.contexts[0][0]
    client = build_client(
        pki,
        ca_cert=pki.ca.cert.read_text(),
        cert_chain=pki.client.cert_pem,
        private_key=pki.client.key_pem,
    )
    _, s = handshake(server.default, client.context, "localhost")
    assert s.getpeercert() is not None


def test_inline_key_is_written_private(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        seen.append(
            (stat.S_IMODE(os.stat(keyfile).st_mode), stat.S_IMODE(os.stat(keyfile).st_mode))
        )
        seen.append((stat.S_IMODE(os.stat(Path(keyfile).parent).st_mode), 0o700))
        real(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    build_server(server_config(pki, private_key=pki.server.key_pem))
    assert seen[0][0] == 0o600 and seen[1][0] == 0o700


# ------------------------------------------------------------------ SNI


def test_select_exact_then_wildcard_then_default(pki: Pki) -> None:
    chain = FilterChain(
        tls_context_set=(
            server_config(pki, cert_chain=str(pki.other_server.cert),
                          private_key=str(pki.other_server.key)),
            TlsConfig(status=False, cert_chain="/nonexistent"),  # off: skipped
            server_config(pki),
        )
    )  # fmt: skip
    tls = server_tls(chain, CP, default_alpn=())
    assert tls is not None and len(tls.contexts) == 2
    other, main = tls.contexts[0][1], tls.contexts[1][1]
    assert tls.contexts[0][0] == ("other.example.test",)
    assert tls.default is other
    assert tls.select("api.example.test") is main
    assert tls.select("API.Example.Test.") is main
    assert tls.select("a.wild.example.test") is main  # *.wild.example.test
    assert tls.select("a.b.wild.example.test") is other  # a wildcard is one label
    assert tls.select("wild.example.test") is other
    assert tls.select("other.example.test") is other
    assert tls.select("unknown.test") is other
    assert tls.select(None) is other
    # The chosen context serves its own certificate.
    sni = "a.wild.example.test"
    c, _ = handshake(tls.select(sni), build_client(pki).context, sni)
    cert = c.getpeercert()
    assert cert is not None and ("DNS", "*.wild.example.test") in cert["subjectAltName"]


def test_server_name_overrides_the_certificate_names(pki: Pki) -> None:
    tls = build_server(server_config(pki, server_name="Named.Example.Test"))
    assert tls.contexts[0][0] == ("named.example.test",)


# ------------------------------------------------------------------ refusals


def _server_error(config: TlsConfig) -> str:
    with pytest.raises(TlsConfigError) as exc:
        build_server(config)
    assert isinstance(exc.value, StartupError)
    return str(exc.value)


REFUSED_SERVER: list[tuple[dict[str, Any], str]] = [
    ({"cert_chain": "/nonexistent/cert.pem"}, "cert_chain: cannot read /nonexistent/cert.pem"),
    ({"private_key": "/nonexistent/key.pem"}, "private_key: cannot read /nonexistent/key.pem"),
    ({"cert_chain": "/"}, "cert_chain: cannot read /: Is a directory"),
    ({"private_key": ""}, "private_key: required with cert_chain"),
    ({"cert_chain": "", "private_key": ""}, "cert_chain: a TLS listener needs a certificate"),
    ({"cipher_suites": "NOPE-CIPHER"}, "cipher_suites: 'NOPE-CIPHER': not a cipher suite"),
    ({"cipher_suites": "HIGH"}, "cipher_suites: 'HIGH' is not one cipher suite name"),
    ({"cipher_suites": "!aNULL"}, "cipher_suites: '!aNULL' is not a cipher suite name"),
    ({"cipher_suites": "RSA-3DES-EDE-CBC-SHA"}, "cipher_suites: 'RSA-3DES-EDE-CBC-SHA': not a"),
    # Named one by one, suites OpenSSL leaves out of every default would be offered: no
    # authentication (anyone in the middle), no encryption, pre-shared keys or SRP (no
    # certificate: a chain that names one would never use it).
    (
        {"cipher_suites": "ECDHE-ECDSA-AES128-GCM-SHA256:AECDH-AES128-SHA"},
        "cipher_suites: 'AECDH-AES128-SHA': anonymous (no authentication",
    ),
    ({"cipher_suites": "ADH-AES128-GCM-SHA256"}, "cipher_suites: 'ADH-AES128-GCM-SHA256': anon"),
    ({"cipher_suites": "ECDHE-ECDSA-NULL-SHA"}, "cipher_suites: 'ECDHE-ECDSA-NULL-SHA': no encr"),
    ({"cipher_suites": "NULL-SHA256"}, "cipher_suites: 'NULL-SHA256': no encryption"),
    ({"cipher_suites": "PSK-AES128-GCM-SHA256"}, "cipher_suites: 'PSK-AES128-GCM-SHA256': pre"),
    ({"cipher_suites": "SRP-AES-128-CBC-SHA"}, "cipher_suites: 'SRP-AES-128-CBC-SHA': pre-shared"),
    (
        {"cipher_suites": "ECDHE-ECDSA-AES128-GCM-SHA256:TLS_AES_128_GCM_SHA256"},
        "cipher_suites: names some TLS 1.3 suites but not TLS_AES_256_GCM_SHA384",
    ),
    ({"min_version": "TLSv1_1"}, "min_version: TLS 1.1 is below TLS 1.2"),
    ({"max_version": "TLSv1_0"}, "max_version: TLS 1.0 is below TLS 1.2"),
    ({"min_version": "SSLv3"}, "min_version: unknown TLS version 'SSLv3'"),
    ({"min_version": "TLSv1_3", "max_version": "TLSv1_2"}, "min_version: TLSv1_3 is above"),
    ({"ecdh_curves": "p256,x25519"}, "ecdh_curves: several curves: Python's ssl can set only"),
    ({"ecdh_curves": "brainpool"}, "ecdh_curves: unknown curve 'brainpool'"),
    ({"alpn": "h2,spdy/3"}, "alpn: unknown ALPN protocol 'spdy/3'"),
    ({"ticket": "c2VjcmV0a2V5"}, "ticket: expected on or off"),
    ({"verify_client": True}, "verify_client: needs ca_cert"),
    ({"require_client_cert": True}, "require_client_cert: needs ca_cert"),
    ({"verify_client": True, "ca_cert": "/nonexistent/ca.pem"}, "ca_cert: cannot read"),
    ({"insecure_skip": True}, "insecure_skip: only for upstream connections"),
    ({"type": "sm"}, "type: MOSN's TLS extension types are not supported"),
]


@pytest.mark.parametrize(("change", "reason"), REFUSED_SERVER)
def test_server_refusals_name_the_key(pki: Pki, change: dict[str, Any], reason: str) -> None:
    message = _server_error(server_config(pki, **change))
    assert message.startswith(f"{TP}.{reason}"), message


def test_key_not_matching_its_certificate(pki: Pki) -> None:
    message = _server_error(server_config(pki, private_key=str(pki.client.key)))
    assert message == f"{TP}.private_key: does not match the certificate in cert_chain"


def test_files_that_are_not_pem(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert _server_error(server_config(pki, cert_chain=str(junk))).startswith(
        f"{TP}.cert_chain: {junk}: no PEM data"
    )
    assert _server_error(server_config(pki, private_key=str(pki.server.cert))) == (
        f"{TP}.private_key: {pki.server.cert}: no PEM private key in it"
    )
    assert _server_error(server_config(pki, cert_chain=str(pki.server.key))) == (
        f"{TP}.cert_chain: {pki.server.key}: no PEM certificate in it"
    )
    no_ca = server_config(pki, verify_client=True, ca_cert=str(pki.server.key))
    assert _server_error(no_ca).startswith(f"{TP}.ca_cert: ")


def test_encrypted_key_is_refused_without_prompting(pki: Pki, tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "enc.key"
    subprocess.run(
        ["openssl", "ec", "-in", str(pki.server.key), "-out", str(key), "-aes256",
         "-passout", "pass:secret"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    message = _server_error(server_config(pki, private_key=str(key)))
    assert message == f"{TP}.private_key: encrypted: give an unencrypted key"


def test_unreadable_file(pki: Pki, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    key = tmp_path / "k.pem"
    key.write_text(pki.server.key_pem)
    key.chmod(0)
    message = _server_error(server_config(pki, private_key=str(key)))
    assert message == f"{TP}.private_key: cannot read {key}: Permission denied"


def test_set_entries_are_named_by_index(pki: Pki) -> None:
    chain = FilterChain(
        tls_context_set=(server_config(pki), server_config(pki, min_version="TLSv1_0"))
    )
    with pytest.raises(TlsConfigError, match="^" + re.escape(f"{CP}.tls_context_set[1].min_ver")):
        server_tls(chain, CP, default_alpn=())


def test_client_refusals_name_the_key(pki: Pki) -> None:
    def error(**kw: Any) -> str:
        with pytest.raises(TlsConfigError) as exc:
            build_client(pki, **kw)
        return str(exc.value)

    assert error(ca_cert="/nonexistent").startswith(f"{UP}.ca_cert: cannot read /nonexistent")
    assert error(cert_chain=str(pki.client.cert)).startswith(
        f"{UP}.private_key: required with cert_chain"
    )
    assert error(cert_chain=str(pki.client.cert), private_key=str(pki.server.key)) == (
        f"{UP}.private_key: does not match the certificate in cert_chain"
    )
    assert error(min_version="TLSv1").startswith(f"{UP}.min_version: TLS 1.0 is below")


def test_mosn_names_map(pki: Pki) -> None:
    # MOSN's own cipher names and its version and curve spellings.
    config = server_config(
        pki,
        cipher_suites="ECDHE-ECDSA-WITH-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-CBC-SHA",
        min_version="TLSv1_2",
        max_version="TLS_Auto",
        ecdh_curves="X25519",
    )
    ctx = build_server(config).default
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}
    assert names == {"ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA"}
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    # MOSN's AES128-GCM-SHA256 is the TLS 1.3 suite: with all three named, TLS 1.3 stays on.
    all13 = "AES128-GCM-SHA256:AES256-GCM-SHA384:TLS_CHACHA20_POLY1305_SHA256"
    ctx = build_server(
        attrs.evolve(config, cipher_suites=f"ECDHE-ECDSA-AES128-GCM-SHA256:{all13}")
    ).default
    assert {c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"} == {
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    }


def test_a_self_signed_peer_certificate_is_a_usable_ca_cert(pki: Pki, tmp_path: Path) -> None:
    import subprocess

    key, cert = tmp_path / "self.key", tmp_path / "self.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=self",
         "-addext", "subjectAltName=DNS:self.test", "-addext", "basicConstraints=CA:FALSE"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    server = build_server(TlsConfig(status=True, cert_chain=str(cert), private_key=str(key)))
    client = build_client(pki, ca_cert=str(cert), server_name="self.test")
    handshake(server.default, client.context, "self.test")
    with pytest.raises(TlsConfigError, match=re.escape(f"{UP}.ca_cert: not a usable PEM")):
        build_client(pki, ca_cert="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
