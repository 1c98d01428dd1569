"""TLS configuration: MOSN's v2 ``TLSConfig`` (same JSON keys) and Envoy's filter chain match.

The classes are data; the parsers below turn their strings into what ``ssl`` takes (pure, no
``ssl`` import): each raises ``ValueError`` with the reason, and ``check`` turns those into
``path: reason`` lines. ``network.tls_context`` builds the ``ssl.SSLContext`` objects and runs
the checks that need OpenSSL or the files (readable, the key matching its certificate, a cipher
this OpenSSL has).

What each MOSN key means here (MOSN: ``pkg/config/v2/tls.go``, ``pkg/mtls/``):

- ``status``: TLS on. Off: every other key is ignored (MOSN does the same).
- ``cert_chain``/``private_key``/``ca_cert``: a file path, or inline PEM (a value holding
  ``-----BEGIN``, as MOSN tells them apart).
- ``verify_client`` + ``require_client_cert`` (listener): both: a client certificate is
  required and verified against ``ca_cert``; ``verify_client`` alone: verified when given
  (MOSN's ``VerifyClientCertIfGiven``). ``require_client_cert`` alone is MOSN's
  ``RequestClientCert``, which asks for a certificate and never verifies it: trio-mesh does not
  accept unverified client certificates, so it requires *and verifies* one (stricter); both
  need ``ca_cert``. On a cluster they have no meaning (a warning says so).
- ``insecure_skip`` (cluster): the upstream's certificate is not verified (a warning at load).
- ``min_version``/``max_version``: MOSN's ``TLS_Auto``, ``TLSv1_2``, ``TLSv1_3`` (any case;
  ``TLSv1.2``, ``TLS1.2`` and ``1.2`` too). Below TLS 1.2 is a config error.
- ``cipher_suites``: ``:``-separated; OpenSSL names (``ECDHE-RSA-AES128-GCM-SHA256``), the
  IANA/Go names (``TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256``) and MOSN's own names (its
  ``ciphersMap``: ``ECDHE-RSA-WITH-CHACHA20-POLY1305``, ``RSA-AES128-CBC-SHA``, and
  ``AES128-GCM-SHA256``/``AES256-GCM-SHA384``, which in MOSN mean the TLS 1.3 suites, not
  OpenSSL's RSA ones). They restrict TLS 1.2. Python's ``ssl`` cannot restrict the TLS 1.3
  suites (all three are AEAD), so naming some but not all of them is a config error.
- ``ecdh_curves``: MOSN's ``x25519``, ``p256``, ``p384``, ``p521`` (and OpenSSL's names);
  Python's ``ssl`` sets one curve only: several are a config error.
- ``alpn``: ``,``-separated, from MOSN's ``h2``, ``http/1.1``, ``sofa``.
- ``ticket``: MOSN stores the string and uses it nowhere; here ``on`` turns session tickets
  (resumption) on with OpenSSL's own key, ``off``/empty leaves them off (the safe default).
- ``fall_back``: MOSN serves cleartext when a listener's certificate cannot be loaded, and
  retries an upstream in cleartext when the TLS handshake fails. Either lets a broken file or
  anyone on the path turn TLS off, so trio-mesh never falls back: the key is accepted (MOSN
  configurations load) and a warning says that it is not taken; a certificate that cannot be
  loaded stays a config error and a failed upstream handshake a failed connection.
- ``type``, ``extend_verify``, ``callbacks``, ``sds_source``: MOSN's extension hooks and SDS;
  refused when given (they change how peers are verified).
"""

from __future__ import annotations

import re
from typing import ClassVar

from attrs import frozen

from . import refused
from .refused import Refusal


@frozen(kw_only=True)
class TlsConfig:
    """MOSN's v2 ``TLSConfig``, same JSON keys."""

    status: bool = False
    type: str = ""
    server_name: str = ""
    ca_cert: str = ""
    cert_chain: str = ""
    private_key: str = ""
    verify_client: bool = False
    require_client_cert: bool = False
    insecure_skip: bool = False
    cipher_suites: str = ""
    ecdh_curves: str = ""
    min_version: str = ""
    max_version: str = ""
    alpn: str = ""
    ticket: str = ""
    fall_back: bool = False

    MOSN_REFUSED: ClassVar[dict[str, Refusal]] = {
        "extend_verify": (
            refused.given,
            "MOSN's TLS extension verification is not supported: peers would be verified"
            " without it (remove the key)",
        ),
        "callbacks": (
            refused.given,
            "MOSN's TLS context callbacks are not supported (remove the key)",
        ),
        "sds_source": (
            refused.given,
            "SDS (certificates from a secret discovery service) is not supported: give"
            " cert_chain, private_key and ca_cert as files or inline PEM",
        ),
    }


@frozen(kw_only=True)
class FilterChainMatch:
    """Envoy's ``FilterChainMatch``, the part trio-mesh honours."""

    #: Exact names, or ``*.example.com`` (any one or more labels before ``.example.com``).
    server_names: tuple[str, ...] = ()
    #: ``""`` (any), ``tls`` or ``raw_buffer`` (plaintext).
    transport_protocol: str = ""
    #: ALPN protocols the ClientHello offers (one of them must be offered).
    application_protocols: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.server_names or self.transport_protocol or self.application_protocols)

    def key(self) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
        """What makes two matches the same (names and protocols in any order and case)."""
        return (
            tuple(sorted({n.lower().rstrip(".") for n in self.server_names})),
            self.transport_protocol.lower(),
            tuple(sorted(set(self.application_protocols))),
        )


TRANSPORT_PROTOCOLS = ("", "tls", "raw_buffer")

# ------------------------------------------------------------------ versions

#: The lowest version trio-mesh speaks or accepts.
MIN_VERSION = (1, 2)
MAX_VERSION = (1, 3)

_VERSION = re.compile(r"(?:tls)?v?1(?:[._]([0-3]))?")


def parse_version(value: str) -> tuple[int, int] | None:
    """``TLSv1_2`` -> ``(1, 2)``; ``""``/``TLS_Auto``: ``None`` (the default)."""
    text = value.strip().lower()
    if text in ("", "tls_auto", "auto"):
        return None
    m = _VERSION.fullmatch(text)
    if m is None:
        raise ValueError(
            f"unknown TLS version {value!r} (use TLSv1_2, TLSv1_3 or TLS_Auto, as MOSN does)"
        )
    version = (1, int(m.group(1) or 0))
    if version < MIN_VERSION:
        raise ValueError(f"TLS 1.{version[1]} is below TLS 1.2, the lowest version allowed")
    return version


def versions(config: TlsConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(min, max)``; raises ``ValueError`` naming the key as ``key: reason``."""
    low = high = None
    try:
        low = parse_version(config.min_version)
    except ValueError as exc:
        raise ValueError(f"min_version: {exc}") from None
    try:
        high = parse_version(config.max_version)
    except ValueError as exc:
        raise ValueError(f"max_version: {exc}") from None
    low, high = low or MIN_VERSION, high or MAX_VERSION
    if low > high:
        raise ValueError(f"min_version: {config.min_version} is above max_version")
    return low, high


# ------------------------------------------------------------------ ciphers

#: The TLS 1.3 suites (OpenSSL enables all three; Python's ``ssl`` cannot choose among them).
TLS13_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")

#: MOSN's ``ciphersMap`` names (``pkg/mtls/ciphers.go``) -> OpenSSL's or a TLS 1.3 suite.
MOSN_CIPHERS = {
    "ECDHE-ECDSA-AES256-GCM-SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-WITH-CHACHA20-POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-WITH-CHACHA20-POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-CBC-SHA": "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-AES128-CBC-SHA": "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-CBC-SHA": "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-CBC-SHA": "ECDHE-ECDSA-AES128-SHA",
    "RSA-AES256-CBC-SHA": "AES256-SHA",
    "RSA-AES128-CBC-SHA": "AES128-SHA",
    "ECDHE-RSA-3DES-EDE-CBC-SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "RSA-3DES-EDE-CBC-SHA": "DES-CBC3-SHA",
    # In MOSN these two are the TLS 1.3 suites (OpenSSL's names mean RSA key exchange).
    "AES256-GCM-SHA384": "TLS_AES_256_GCM_SHA384",
    "AES128-GCM-SHA256": "TLS_AES_128_GCM_SHA256",
}

#: IANA (Go, Envoy) names -> OpenSSL's (``openssl ciphers -stdname``), TLS 1.2 suites.
IANA_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384": "DHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    # Go's names of the two above.
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "DHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8": "ECDHE-ECDSA-AES256-CCM8",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CCM": "ECDHE-ECDSA-AES256-CCM",
    "TLS_DHE_RSA_WITH_AES_256_CCM_8": "DHE-RSA-AES256-CCM8",
    "TLS_DHE_RSA_WITH_AES_256_CCM": "DHE-RSA-AES256-CCM",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256": "DHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8": "ECDHE-ECDSA-AES128-CCM8",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CCM": "ECDHE-ECDSA-AES128-CCM",
    "TLS_DHE_RSA_WITH_AES_128_CCM_8": "DHE-RSA-AES128-CCM8",
    "TLS_DHE_RSA_WITH_AES_128_CCM": "DHE-RSA-AES128-CCM",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384": "ECDHE-ECDSA-AES256-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384": "ECDHE-RSA-AES256-SHA384",
    "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256": "DHE-RSA-AES256-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256": "DHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_DHE_RSA_WITH_AES_256_CBC_SHA": "DHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA": "DHE-RSA-AES128-SHA",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_256_CCM_8": "AES256-CCM8",
    "TLS_RSA_WITH_AES_256_CCM": "AES256-CCM",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_128_CCM_8": "AES128-CCM8",
    "TLS_RSA_WITH_AES_128_CCM": "AES128-CCM",
    "TLS_RSA_WITH_AES_256_CBC_SHA256": "AES256-SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
}

# An OpenSSL cipher *string* ("HIGH", "!aNULL", "ALL:@SECLEVEL=0") would enable a family:
# only single suite names are taken (network.tls_context checks that each is one suite).
_CIPHER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@frozen
class Ciphers:
    """``cipher_suites`` parsed: OpenSSL names of TLS 1.2 suites, and the TLS 1.3 ones named;
    ``names`` maps each OpenSSL name back to what the configuration wrote."""

    tls12: tuple[str, ...]
    tls13: tuple[str, ...]
    names: dict[str, str]


def parse_ciphers(value: str, max_version: tuple[int, int] = MAX_VERSION) -> Ciphers | None:
    """``None``: not set (OpenSSL's defaults through Python's: ECDHE with AES-GCM or
    ChaCha20, no SHA-1 suites)."""
    items = [s.strip() for s in re.split(r"[:,]", value) if s.strip()]
    if not items:
        return None
    tls12: list[str] = []
    tls13: list[str] = []
    names: dict[str, str] = {}
    for item in items:
        if not _CIPHER_NAME.fullmatch(item):
            raise ValueError(f"{item!r} is not a cipher suite name")
        upper = item.upper()
        name = MOSN_CIPHERS.get(upper) or IANA_CIPHERS.get(upper) or upper
        if name in TLS13_SUITES:
            if name not in tls13:
                tls13.append(name)
        elif name not in tls12:
            tls12.append(name)
            names[name] = item
    if tls13 and len(tls13) < len(TLS13_SUITES) and max_version >= (1, 3):
        missing = ", ".join(s for s in TLS13_SUITES if s not in tls13)
        raise ValueError(
            f"names some TLS 1.3 suites but not {missing}: Python's ssl cannot restrict the"
            " TLS 1.3 suites (all three stay on); name all three or none, or set max_version:"
            " TLSv1_2"
        )
    if not tls12:
        # TLS 1.3 alone: a TLS 1.2 handshake would have no suite at all.
        raise ValueError("names no TLS 1.2 suite: set min_version: TLSv1_3 and drop the key")
    return Ciphers(tuple(tls12), tuple(tls13), names)


# ------------------------------------------------------------------ curves

#: MOSN's names (``p256``...) and OpenSSL's/IANA's -> OpenSSL's short name.
CURVES = {
    "x25519": "X25519",
    "x448": "X448",
    "p256": "prime256v1",
    "p-256": "prime256v1",
    "secp256r1": "prime256v1",
    "prime256v1": "prime256v1",
    "p384": "secp384r1",
    "p-384": "secp384r1",
    "secp384r1": "secp384r1",
    "p521": "secp521r1",
    "p-521": "secp521r1",
    "secp521r1": "secp521r1",
}


def parse_curve(value: str) -> str | None:
    """The one curve named (``None``: OpenSSL's default groups)."""
    items = [s.strip() for s in re.split(r"[:,]", value) if s.strip()]
    if not items:
        return None
    unknown = [s for s in items if s.lower() not in CURVES]
    if unknown:
        raise ValueError(f"unknown curve {unknown[0]!r} (known: x25519, x448, p256, p384, p521)")
    curves = list(dict.fromkeys(CURVES[s.lower()] for s in items))
    if len(curves) > 1:
        raise ValueError(
            "several curves: Python's ssl can set only one (set_ecdh_curve); name one, or"
            " leave the key empty for OpenSSL's defaults (X25519, P-256, X448, P-521, P-384)"
        )
    return curves[0]


# ------------------------------------------------------------------ ALPN, tickets

#: MOSN's ALPN names (``pkg/mtls/types.go``).
ALPN_PROTOCOLS = ("h2", "http/1.1", "sofa")


def parse_alpn(value: str) -> tuple[str, ...]:
    items = [s.strip().lower() for s in value.split(",") if s.strip()]
    for item in items:
        if item not in ALPN_PROTOCOLS:
            known = ", ".join(ALPN_PROTOCOLS)
            raise ValueError(f"unknown ALPN protocol {item!r} (known: {known})")
    return tuple(dict.fromkeys(items))


_TICKET_ON = ("on", "true", "enabled", "enable")
_TICKET_OFF = ("", "off", "false", "disabled", "disable")


def parse_ticket(value: str) -> bool:
    text = value.strip().lower()
    if text in _TICKET_ON:
        return True
    if text in _TICKET_OFF:
        return False
    raise ValueError(
        f"expected on or off, got {value!r} (a ticket key cannot be set: tickets use"
        " OpenSSL's own key, new at each start and reload)"
    )


# ------------------------------------------------------------------ checks


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def valid_server_name(name: str) -> bool:
    """A DNS name, or ``*.`` and one (``*.example.com``)."""
    text = name.lower().rstrip(".")
    if text.startswith("*."):
        text = text[2:]
    labels = text.split(".")
    return bool(text) and len(text) <= 253 and all(_LABEL.fullmatch(x) for x in labels)


def is_inline(value: str) -> bool:
    """MOSN's rule: a value holding a PEM header is the data, else a file path."""
    return "-----BEGIN" in value


def check(config: TlsConfig | None, path: str, *, server: bool) -> list[str]:
    """``path.key: reason`` for what is wrong without reading a file; an off config: none."""
    if config is None or not config.status:
        return []
    errors: list[str] = []

    def err(key: str, reason: str) -> None:
        errors.append(f"{path}.{key}: {reason}")

    if config.type.strip() not in ("", "default"):
        err("type", "MOSN's TLS extension types are not supported (remove the key)")
    if bool(config.cert_chain) != bool(config.private_key):
        missing = "private_key" if config.cert_chain else "cert_chain"
        err(missing, "required with " + ("cert_chain" if config.cert_chain else "private_key"))
    if server:
        if not config.cert_chain and not config.private_key:
            err("cert_chain", "a TLS listener needs a certificate (cert_chain and private_key)")
        if (config.verify_client or config.require_client_cert) and not config.ca_cert:
            key = "verify_client" if config.verify_client else "require_client_cert"
            err(key, "needs ca_cert (the CA that signs client certificates)")
        if config.insecure_skip:
            err("insecure_skip", "only for upstream connections (a cluster's tls_context)")
    high = MAX_VERSION
    try:
        high = versions(config)[1]
    except ValueError as exc:
        key, _, reason = str(exc).partition(": ")
        err(key, reason)
    for key, parse in (
        ("cipher_suites", lambda v: parse_ciphers(v, high)),
        ("ecdh_curves", parse_curve),
        ("alpn", parse_alpn),
        ("ticket", parse_ticket),
    ):
        try:
            parse(getattr(config, key))
        except ValueError as exc:
            err(key, str(exc))
    return errors


def warnings(config: TlsConfig | None, path: str, *, server: bool) -> list[str]:
    """What loads but is not done as MOSN does: each said once at load."""
    if config is None or not config.status:
        return []
    out = []
    if config.fall_back:
        out.append(
            f"{path}.fall_back: never taken: "
            + (
                "a certificate that cannot be loaded is a configuration error"
                if server
                else "a failed TLS handshake fails the connection"
            )
            + " (falling back to cleartext would let a broken file or anyone on the path"
            " turn TLS off)"
        )
    if not server and config.insecure_skip:
        out.append(
            f"{path}.insecure_skip: the upstream's certificate is NOT verified: anyone on the"
            " path can impersonate it"
        )
    if not server and (config.verify_client or config.require_client_cert):
        key = "verify_client" if config.verify_client else "require_client_cert"
        out.append(f"{path}.{key}: verifies downstream clients: no effect on a cluster")
    return out
