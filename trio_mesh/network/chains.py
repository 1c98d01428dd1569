"""Filter chain selection: which of a listener's chains serves a new connection (Envoy's
filter chain match, the criteria trio-mesh honours).

Envoy's order, most specific first at each level, and no backtracking between levels:

1. ``server_names``: the exact name the ClientHello asked for, else the longest ``*.`` suffix
   match, else the chains that name none;
2. ``transport_protocol``: ``"tls"`` when a ClientHello was seen, else ``"raw_buffer"``; else
   the chains that name none;
3. ``application_protocols``: the first of the client's ALPN offers that a chain names; else
   the chains that name none.

When that leaves nothing, the chain without a ``filter_chain_match`` serves (MOSN's and
Envoy's default chain), if there is one; otherwise the connection is closed. All of it is
indexed when the listener is built: a selection is a few dict lookups.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .tls_context import ServerTls

#: ``{context: (subject, URI SANs)}`` of a chain's own certificates.
Identities = dict[ssl.SSLContext, tuple[str | None, tuple[str, ...]]]


class MatchLike(Protocol):
    """``config.tls.FilterChainMatch``'s fields that selection reads."""

    @property
    def server_names(self) -> tuple[str, ...]: ...
    @property
    def transport_protocol(self) -> str: ...
    @property
    def application_protocols(self) -> tuple[str, ...]: ...


class Chain:
    """One built filter chain. ``tls``: its ``ServerTls`` (``None``: plaintext), replaced in
    place on a reload (rotation: new handshakes take the new one, open connections keep
    theirs). A chain without TLS whose terminal filter is ``tcp_proxy`` forwards TLS bytes
    untouched (pass-through: the dispatcher replays what it read)."""

    __slots__ = ("handler", "identities", "index", "match", "tls")

    def __init__(
        self,
        index: int,
        match: MatchLike | None,
        tls: ServerTls | None,
        handler: Callable[[Any], Awaitable[None]],
        identities: Identities | None = None,
    ) -> None:
        self.index = index
        self.match = match
        self.tls = tls
        self.handler = handler
        #: Each context's own certificate: its subject and URI SANs (``TlsInfo.local_*``,
        #: XFCC's ``By=``), read at configuration time.
        self.identities: Identities = identities or {}

    def __repr__(self) -> str:
        return f"<Chain {self.index}{' tls' if self.tls is not None else ''}>"


class ChainSelector:
    def __init__(self, chains: Sequence[Chain]) -> None:
        self.chains = tuple(chains)
        self.default = next((c for c in chains if c.match is None), None)
        self._exact: dict[str, list[Chain]] = {}
        self._suffix: dict[str, list[Chain]] = {}  # "*.example.com" -> key ".example.com"
        self._no_names: list[Chain] = []
        for chain in chains:
            names = chain.match.server_names if chain.match is not None else ()
            if not names:
                self._no_names.append(chain)
            for name in names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self._suffix.setdefault(name[1:], []).append(chain)
                else:
                    self._exact.setdefault(name, []).append(chain)

    def select(self, sni: str | None, tls: bool, alpn: Sequence[str] = ()) -> Chain | None:
        found = self._by_transport(self._by_name(sni), "tls" if tls else "raw_buffer")
        found = _by_alpn(found, alpn)
        if found:
            return found[0]
        return self.default

    def _by_name(self, sni: str | None) -> list[Chain]:
        if sni:
            sni = sni.rstrip(".")  # the absolute form names the same host
            exact = self._exact.get(sni)
            if exact:
                return exact
            if self._suffix:
                # Longest suffix first: "a.b.example.com" tries ".b.example.com", then
                # ".example.com", then ".com" (Envoy: a wildcard matches any depth).
                dot = sni.find(".")
                while dot != -1:
                    hit = self._suffix.get(sni[dot:])
                    if hit:
                        return hit
                    dot = sni.find(".", dot + 1)
        return self._no_names

    @staticmethod
    def _by_transport(chains: list[Chain], transport: str) -> list[Chain]:
        named = [c for c in chains if c.match is not None and c.match.transport_protocol]
        if not named:
            return chains
        hit = [
            c
            for c in named
            if c.match is not None and c.match.transport_protocol.lower() == transport
        ]
        if hit:
            return hit
        return [c for c in chains if c.match is None or not c.match.transport_protocol]


def _by_alpn(chains: list[Chain], offers: Sequence[str]) -> list[Chain]:
    named = [c for c in chains if c.match is not None and c.match.application_protocols]
    if not named:
        return chains
    for offer in offers:  # the client's preference first, as Envoy does
        hit = [c for c in named if c.match is not None and offer in c.match.application_protocols]
        if hit:
            return hit
    return [c for c in chains if c.match is None or not c.match.application_protocols]
