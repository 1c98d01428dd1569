"""``ssl.SSLContext`` objects built from the TLS configuration, at configuration time.

Every check that can fail runs here and raises ``TlsConfigError`` whose message starts with
the key's path: a file that cannot be read, a key that does not match its certificate, a cipher
this OpenSSL does not have, a version below TLS 1.2, several curves. A configuration file's
validation calls the builders before any port is bound (``check_config``), and the server
builds the contexts it uses at each run or apply (``server.build_contexts``, in a thread), so
a reload or an xDS update re-reads every certificate file (rotation).

Safe defaults: TLS 1.2 at least, no compression, no renegotiation, no session tickets unless
``ticket`` is on, server cipher preference.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs

from ..config import tls as tlsconf
from ..config.model import FilterChain, MeshConfig
from ..config.tls import TlsConfig
from ..errors import StartupError
from .tls import format_name

log = logging.getLogger("trio_mesh.tls")

_VERSIONS = {(1, 2): ssl.TLSVersion.TLSv1_2, (1, 3): ssl.TLSVersion.TLSv1_3}


class TlsConfigError(StartupError):
    """A TLS key the proxy cannot honour; the message starts with the key's path."""


@attrs.frozen
class ServerTls:
    """One filter chain's TLS: a context per certificate, chosen by the client's SNI."""

    #: ``(names, context)`` in configuration order; names are lower case, ``*.x`` wildcards.
    contexts: tuple[tuple[tuple[str, ...], ssl.SSLContext], ...]
    #: The first context: for no SNI, or a name no certificate has.
    default: ssl.SSLContext
    _exact: dict[str, ssl.SSLContext] = attrs.field(factory=dict, alias="_exact", eq=False)

    def __attrs_post_init__(self) -> None:
        # The first context that names a host wins, as in configuration order.
        for names, ctx in self.contexts:
            for name in names:
                self._exact.setdefault(name, ctx)

    def select(self, sni: str | None) -> ssl.SSLContext:
        """Exact name, then the ``*.`` wildcard of its parent (one label), else the default."""
        if not sni:
            return self.default
        name = sni.lower().rstrip(".")
        ctx = self._exact.get(name)
        if ctx is not None:
            return ctx
        _, dot, parent = name.partition(".")
        if dot and parent:
            ctx = self._exact.get("*." + parent)
            if ctx is not None:
                return ctx
        return self.default


@attrs.frozen
class ClientTls:
    """One cluster's upstream TLS."""

    context: ssl.SSLContext
    #: The SNI sent and the name verified; ``None``: the caller passes the host's address.
    server_name: str | None


def _fail(path: str, key: str, reason: str) -> TlsConfigError:
    return TlsConfigError(f"{path}.{key}: {reason}")


def _parsed(config: TlsConfig, path: str, *, server: bool) -> None:
    """The pure checks (config validation made them already; a hand-built config here)."""
    errors = tlsconf.check(config, path, server=server)
    if errors:
        raise TlsConfigError(errors[0])


# ------------------------------------------------------------------ files and inline PEM


#: What each key's PEM must hold (OpenSSL's own error for a wrong one is "PEM lib").
_PEM_KINDS = {
    "cert_chain": (b"CERTIFICATE-----", "certificate"),
    "private_key": (b"PRIVATE KEY-----", "private key"),
    "ca_cert": (b"CERTIFICATE-----", "certificate"),
}


@contextmanager
def _pem_file(value: str, path: str, key: str) -> Iterator[str]:
    """A file path for ``value``: the file itself, or inline PEM written to a private
    temporary file (``ssl`` loads certificates and keys only from files), deleted at once."""
    marker, kind = _PEM_KINDS[key]
    if not tlsconf.is_inline(value):
        try:
            with open(value, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise _fail(path, key, f"cannot read {value}: {exc.strerror or exc}") from None
        if b"-----BEGIN" not in data:
            raise _fail(path, key, f"{value}: no PEM data in the file")
        if marker not in data:
            raise _fail(path, key, f"{value}: no PEM {kind} in it")
        yield value
        return
    if marker.decode() not in value:
        raise _fail(path, key, f"inline PEM: no {kind} in it")
    directory = tempfile.mkdtemp(prefix="trio-mesh-tls-")  # mode 0700
    try:
        name = os.path.join(directory, "pem")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii", errors="replace") as f:
            f.write(value)
        yield name
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    # Called only for an encrypted key: without it OpenSSL would prompt on the terminal.
    raise _Encrypted


def _load_pair(ctx: ssl.SSLContext, config: TlsConfig, path: str) -> tuple[str, ...]:
    """Load the certificate chain and its key; return the certificate's names."""
    with (
        _pem_file(config.cert_chain, path, "cert_chain") as cert,
        _pem_file(config.private_key, path, "private_key") as key,
    ):
        try:
            ctx.load_cert_chain(cert, key, password=_no_password)
        except _Encrypted:
            raise _fail(path, "private_key", "encrypted: give an unencrypted key") from None
        except ssl.SSLError as exc:
            raise _fail(path, *_cert_error(exc)) from None
        # Read while the file exists (inline PEM: a temporary one).
        return _cert_names(cert)


def _cert_error(exc: ssl.SSLError) -> tuple[str, str]:
    reason = (exc.reason or "").upper()
    if "KEY_VALUES_MISMATCH" in reason:
        return "private_key", "does not match the certificate in cert_chain"
    if exc.library == "PEM" or "PEM" in reason:
        if "KEY" in str(exc).upper() and "CERT" not in reason:
            return "private_key", f"not a usable private key ({exc.reason})"
        return "cert_chain", f"not a usable PEM certificate or key ({exc.reason})"
    return "cert_chain", f"cannot load the certificate and key ({exc.reason or exc})"


def _cert_names(cert_file: str) -> tuple[str, ...]:
    """The certificate's DNS SANs, then its CN, lower case (MOSN's ``buildMatch``)."""
    try:
        decoded: dict[str, Any] = ssl._ssl._test_decode_cert(cert_file)  # type: ignore[attr-defined]
    except Exception:  # names are only for SNI choice: no names, the cert is the default
        return ()
    names = [v.lower() for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]
    for rdn in decoded.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                names.append(v.lower())
    return tuple(dict.fromkeys(names))


def _load_ca(ctx: ssl.SSLContext, config: TlsConfig, path: str) -> None:
    # Counted as loaded certificates, CA or not: a self-signed peer certificate trusted as
    # itself is a valid ca_cert too.
    before = ctx.cert_store_stats()["x509"]
    if tlsconf.is_inline(config.ca_cert):
        try:
            ctx.load_verify_locations(cadata=config.ca_cert)
        except (ssl.SSLError, ValueError) as exc:
            raise _fail(path, "ca_cert", f"not a usable PEM certificate ({exc})") from None
    else:
        with _pem_file(config.ca_cert, path, "ca_cert") as ca:
            try:
                ctx.load_verify_locations(cafile=ca)
            except ssl.SSLError as exc:
                reason = f"{ca}: not a usable PEM certificate ({exc.reason or exc})"
                raise _fail(path, "ca_cert", reason) from None
    if ctx.cert_store_stats()["x509"] == before:
        raise _fail(path, "ca_cert", "no certificate in it")


# ------------------------------------------------------------------ common settings


def _common(ctx: ssl.SSLContext, config: TlsConfig, path: str) -> None:
    low, high = tlsconf.versions(config)
    ctx.minimum_version = _VERSIONS[low]
    ctx.maximum_version = _VERSIONS[high]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if tlsconf.parse_ticket(config.ticket):
        ctx.options &= ~ssl.OP_NO_TICKET
    else:
        ctx.options |= ssl.OP_NO_TICKET
    ciphers = tlsconf.parse_ciphers(config.cipher_suites, high)
    if ciphers is not None:
        _set_ciphers(ctx, ciphers, path)
    curve = tlsconf.parse_curve(config.ecdh_curves)
    if curve is not None:
        try:
            ctx.set_ecdh_curve(curve)
        except (ValueError, ssl.SSLError) as exc:
            raise _fail(path, "ecdh_curves", f"{curve}: not in this OpenSSL ({exc})") from None


def _set_ciphers(ctx: ssl.SSLContext, ciphers: tlsconf.Ciphers, path: str) -> None:
    # Each name alone first: OpenSSL skips a name it does not know when others are valid,
    # and takes a family keyword ("HIGH") as many suites.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name in ciphers.tls12:
        written = ciphers.names.get(name, name)
        try:
            probe.set_ciphers(name)
        except ssl.SSLError:
            raise _fail(
                path, "cipher_suites", f"{written!r}: not a cipher suite this OpenSSL offers"
            ) from None
        got = [c for c in probe.get_ciphers() if c["protocol"] != "TLSv1.3"]
        if [c["name"] for c in got] != [name]:
            raise _fail(path, "cipher_suites", f"{written!r} is not one cipher suite name")
        weak = _weak_suite(got[0])
        if weak:
            raise _fail(path, "cipher_suites", f"{written!r}: {weak}")
    ctx.set_ciphers(":".join(ciphers.tls12))


def _weak_suite(cipher: Mapping[str, object]) -> str | None:
    """Why a suite must never be offered. OpenSSL's defaults leave these out and its security
    level refuses them today, but a suite named alone gets past the first, and a system
    ``openssl.cnf`` at level 0 past the second."""
    if cipher.get("auth") == "auth-null":
        return "anonymous (no authentication: anyone in the middle can read it)"
    if not cipher.get("symmetric"):
        return "no encryption"
    if cipher.get("kea") in ("kx-psk", "kx-dhe-psk", "kx-ecdhe-psk", "kx-rsa-psk", "kx-srp"):
        return "pre-shared key or SRP suite (no certificate is used)"
    return None


# ------------------------------------------------------------------ builders


def _server_context(
    config: TlsConfig, path: str, alpn: tuple[str, ...]
) -> tuple[tuple[str, ...], ssl.SSLContext]:
    _parsed(config, path, server=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, config, path)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if not tlsconf.parse_ticket(config.ticket):
        ctx.num_tickets = 0  # TLS 1.3 tickets (OP_NO_TICKET covers TLS 1.2)
    cert_names = _load_pair(ctx, config, path)
    if config.verify_client or config.require_client_cert:
        _load_ca(ctx, config, path)
        # MOSN: both keys require and verify; verify_client alone verifies when given;
        # require_client_cert alone (MOSN: asked, never verified) also requires and verifies.
        ctx.verify_mode = (
            ssl.CERT_OPTIONAL
            if config.verify_client and not config.require_client_cert
            else ssl.CERT_REQUIRED
        )
    protocols = tlsconf.parse_alpn(config.alpn) or alpn
    if protocols:
        ctx.set_alpn_protocols(list(protocols))
    server_name = config.server_name.strip().lower().rstrip(".")
    names = (server_name,) if server_name else cert_names
    return names, ctx


def server_tls(chain: FilterChain, path: str, *, default_alpn: tuple[str, ...]) -> ServerTls | None:
    """The chain's TLS (``path``: the chain's, ``servers[0].listeners[1].filter_chains[0]``),
    or ``None`` for a cleartext chain. ``default_alpn``: what the chain's protocol speaks, when
    the configuration names no ``alpn``."""
    if chain.tls_context is not None and chain.tls_context_set:
        raise TlsConfigError(f"{path}.tls_context_set: give tls_context or tls_context_set")
    if chain.tls_context is not None:
        entries = [(f"{path}.tls_context", chain.tls_context)]
    else:
        entries = [(f"{path}.tls_context_set[{i}]", c) for i, c in enumerate(chain.tls_context_set)]
    contexts = tuple(
        _server_context(config, p, default_alpn) for p, config in entries if config.status
    )
    if not contexts:
        return None
    return ServerTls(contexts=contexts, default=contexts[0][1])


def client_tls(config: TlsConfig | None, path: str, *, alpn: tuple[str, ...]) -> ClientTls | None:
    """A cluster's upstream TLS (``path``: ``cluster_manager.clusters[0].tls_context``), or
    ``None`` when off. ``alpn``: what the cluster's pools speak, when ``alpn`` is not set."""
    if config is None or not config.status:
        return None
    _parsed(config, path, server=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _common(ctx, config, path)
    if config.insecure_skip:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif config.ca_cert:
        _load_ca(ctx, config, path)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if config.cert_chain:  # a client certificate, for mutual TLS
        _load_pair(ctx, config, path)
    protocols = tlsconf.parse_alpn(config.alpn) or alpn
    if protocols:
        ctx.set_alpn_protocols(list(protocols))
    return ClientTls(context=ctx, server_name=config.server_name.strip() or None)


# ------------------------------------------------------------------ the whole configuration


def check_config(
    config: MeshConfig, *, server_alpn: Callable[[FilterChain], tuple[str, ...]] | None = None
) -> list[str]:
    """Build every TLS context of ``config``; one ``path: reason`` line per failing one.
    The validation of a configuration file (``trio-mesh validate``, ``run``, the SIGHUP
    re-read) runs it before binding; ``Server.run``/``apply`` (xDS updates too) build the
    contexts they use in ``server.build_contexts``, refusing on the same errors."""
    errors: list[str] = []
    for si, server in enumerate(config.servers):
        for li, listener in enumerate(server.listeners):
            for ci, chain in enumerate(listener.filter_chains):
                path = f"servers[{si}].listeners[{li}].filter_chains[{ci}]"
                alpn = server_alpn(chain) if server_alpn is not None else ()
                try:
                    server_tls(chain, path, default_alpn=alpn)
                except TlsConfigError as exc:
                    errors.append(str(exc))
    for ci, cluster in enumerate(config.cluster_manager.clusters):
        try:
            client_tls(cluster.tls_context, f"cluster_manager.clusters[{ci}].tls_context", alpn=())
        except TlsConfigError as exc:
            errors.append(str(exc))
    return errors


#: Each context's own certificate: its subject and URI SANs (XFCC ``By=``,
#: ``%DOWNSTREAM_LOCAL_SUBJECT%``), by context (``network.chains.Identities``).
Identities = dict[ssl.SSLContext, tuple[str | None, tuple[str, ...]]]


def identities(chain: FilterChain, server_tls: ServerTls | None, path: str) -> Identities:
    """Each context's own certificate, its subject and URI SANs, from the chain's config (the
    contexts are those whose ``status`` is on, in order; read at configuration time)."""
    if server_tls is None:
        return {}
    out: Identities = {}
    for config, (_, ctx) in zip(chain.tls_configs(), server_tls.contexts, strict=False):
        try:
            with _pem_file(config.cert_chain, path, "cert_chain") as name:
                decoded = ssl._ssl._test_decode_cert(name)  # type: ignore[attr-defined]
        except Exception:  # only for logs and XFCC By=: a certificate that loaded has them
            continue
        uris = tuple(v for k, v in decoded.get("subjectAltName", ()) if k == "URI")
        out[ctx] = (format_name(decoded.get("subject")), uris)
    return out
