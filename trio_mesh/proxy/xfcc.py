"""``x-forwarded-client-cert`` (XFCC), as Envoy's HTTP connection manager writes it.

What a connection's requests do with the header depends only on the listener's
``forward_client_cert_details`` and on the connection's handshake, so it is worked out once per
connection (:meth:`XfccPolicy.for_connection`), not per request: the adapters (HTTP/1, HTTP/2)
then drop the client's header in a pass they make anyway (hop-by-hop stripping, the HTTP/2
header split), before routing, so neither a route's header match nor a filter ever sees a
forged one; and add this hop's element, when there is one, with one check.

An element is ``By=<local URI SAN>;Hash=<sha256 hex of the client's DER certificate>``, then,
in Envoy's order, ``Cert="<URL-encoded PEM>"``, ``Subject="<RFC 2253>"``, ``URI=<each URI SAN>``
(``URI=`` when none), ``DNS=<each DNS SAN>``, as ``set_current_client_cert_details`` asks;
elements are joined with ``,`` (``APPEND_FORWARD``).
"""

from __future__ import annotations

import hashlib
import ssl
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..config.filter_configs import ClientCertDetails, ForwardClientCert

if TYPE_CHECKING:
    from ..network.tls import TlsInfo

XFCC = b"x-forwarded-client-cert"


class ConnectionXfcc:
    """What one connection's requests do with XFCC. ``drop``: the client's header is removed
    (before routing); ``value``: this hop's element, added (``append``: after the client's
    elements, which are then kept)."""

    __slots__ = ("append", "drop", "value")

    def __init__(self, drop: bool, value: bytes | None = None, append: bool = False) -> None:
        self.drop = drop
        self.value = value
        self.append = append

    def trailers(self, trailers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """A request's trailers without the client's XFCC unless its header goes on as it
        is (``KEEP``): an upstream that folds trailers into the headers (older Tomcat did)
        must not find there what the header was cleaned of. Trailers are rare: not on the
        common path."""
        if (self.drop or self.value is not None) and any(n == XFCC for n, _ in trailers):
            return [h for h in trailers if h[0] != XFCC]
        return trailers

    def apply(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Add this hop's element to ``headers`` (a request's own list; the client's XFCC
        already dropped when ``drop``), in place: set, or appended to the client's elements
        (then one field, ``,``-joined)."""
        value = self.value
        if value is None:
            return
        if self.append:
            previous = [v for n, v in headers if n == XFCC]
            if previous:
                headers[:] = [h for h in headers if h[0] != XFCC]
                value = b",".join((*previous, value))
        headers.append((XFCC, value))


#: The client's header goes on as it is (``ALWAYS_FORWARD_ONLY``; ``FORWARD_ONLY`` with mTLS).
KEEP = ConnectionXfcc(False)
#: The client's header is removed and nothing is set.
DROP = ConnectionXfcc(True)


class XfccPolicy:
    """A listener's ``forward_client_cert_details`` and ``set_current_client_cert_details``,
    built at configuration time."""

    __slots__ = ("details", "mode")

    def __init__(self, mode: ForwardClientCert, details: ClientCertDetails) -> None:
        self.mode = mode
        self.details = details

    @property
    def drops_always(self) -> bool:
        """No connection keeps the client's header (``SANITIZE``)."""
        return self.mode is ForwardClientCert.SANITIZE

    def for_connection(self, tls: TlsInfo | None) -> ConnectionXfcc:
        """Envoy's ``mutateXfccRequestHeader``, decided for a connection's every request."""
        mode = self.mode
        if mode is ForwardClientCert.ALWAYS_FORWARD_ONLY:
            return KEEP
        if mode is ForwardClientCert.SANITIZE or tls is None or not tls.peer_verified:
            return DROP  # not mutual TLS: whatever the client sent is not vouched for
        if mode is ForwardClientCert.FORWARD_ONLY:
            return KEEP
        value = element(tls, self.details)
        if mode is ForwardClientCert.APPEND_FORWARD:
            return ConnectionXfcc(False, value, append=True)
        return ConnectionXfcc(True, value)  # SANITIZE_SET


def element(tls: TlsInfo, details: ClientCertDetails) -> bytes:
    """This hop's XFCC element for a mutual-TLS connection (``tls.peer_cert_der`` set)."""
    der = tls.peer_cert_der
    assert der is not None
    parts = [f"By={_value(uri)}" for uri in tls.local_uri_sans]
    parts.append(f"Hash={hashlib.sha256(der).hexdigest()}")
    if details.cert:
        # Envoy URL-encodes the PEM (newlines, spaces, "+", "/", "=") and quotes it
        parts.append(f'Cert="{quote(ssl.DER_cert_to_PEM_cert(der), safe="")}"')
    if details.subject:
        parts.append(f"Subject={_quoted(tls.peer_subject or '')}")  # even when empty
    if details.uri:
        parts.extend(f"URI={_value(uri)}" for uri in tls.peer_uri_sans)
        if not tls.peer_uri_sans:
            parts.append("URI=")  # Envoy keeps the key
    if details.dns:
        parts.extend(f"DNS={_value(name)}" for name in tls.peer_dns_sans)
    return ";".join(parts).encode("ascii")


def _printable(text: str) -> str:
    """``text`` with anything but printable ASCII percent-encoded (UTF-8): a certificate's
    names can never put a control character (a line break) into a header."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else quote(c, safe="") for c in text)


def _value(text: str) -> str:
    """A key's value: double-quoted when it holds ``,``, ``;`` or ``=`` (the XFCC grammar's
    separators), so a name can never add an element or a key."""
    text = _printable(text)
    if any(c in text for c in ',;="'):
        return _quoted(text)
    return text


def _quoted(text: str) -> str:
    """``"text"``, its double quotes escaped (``\\"``) unless escaped already (RFC 2253)."""
    text = _printable(text)
    out: list[str] = []
    escaped = False
    for c in text:
        if c == '"' and not escaped:
            out.append("\\")
        out.append(c)
        escaped = c == "\\" and not escaped
    if escaped:
        out.append("\\")  # a trailing backslash must not escape the closing quote
    return '"' + "".join(out) + '"'
