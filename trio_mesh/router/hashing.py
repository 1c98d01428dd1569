"""A route's ``hash_policy``, compiled: the key a hashing balancer chooses a host by."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from urllib.parse import unquote_plus

from ..config import routes as rcfg
from ..upstream.hash_lb import hash_key

_HEADER, _COOKIE, _SOURCE_IP, _QUERY = range(4)
_MASK = (1 << 64) - 1


def _cookie_value(cookie_header: str | None, name: str) -> str | None:
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip('"')
    return None


def _query_value(query: str, name: str) -> str | None:
    if not query:
        return None
    for part in query.split("&"):
        k, sep, v = part.partition("=")
        if unquote_plus(k) == name:
            return unquote_plus(v) if sep else ""
    return None


def _peer_ip(peer: str | None) -> str | None:
    """The address part of ``host:port`` (``[v6]:port`` too)."""
    if not peer:
        return None
    if peer.startswith("["):
        return peer[1 : peer.find("]")]
    return peer.rpartition(":")[0] or peer


class HashPolicy:
    """The policies of one route, made once per configuration. ``key`` is called per request
    only for routes that have one and clusters whose balancer hashes."""

    __slots__ = ("_set_cookie", "parts")

    def __init__(self, policies: tuple[rcfg.HashPolicy, ...]) -> None:
        parts: list[tuple[int, str]] = []
        #: The cookie a request without it gets: (name, the attributes after its value).
        self._set_cookie: tuple[str, bytes] | None = None
        for p in policies:
            if p.header is not None:
                parts.append((_HEADER, p.header.key.lower()))
            elif p.cookie is not None:
                parts.append((_COOKIE, p.cookie.name))
                if p.cookie.ttl is not None and self._set_cookie is None:
                    attrs = b""
                    if p.cookie.ttl:
                        # whole seconds, at least one (Max-Age=0 would delete the cookie)
                        attrs += b"; Max-Age=%d" % max(1, math.ceil(p.cookie.ttl))
                    if p.cookie.path:
                        attrs += b"; Path=" + p.cookie.path.encode("ascii")
                    self._set_cookie = (p.cookie.name, attrs + b"; HttpOnly")
            elif p.source_ip is not None:
                parts.append((_SOURCE_IP, ""))
            elif p.query_parameter is not None:
                parts.append((_QUERY, p.query_parameter.name))
        self.parts = tuple(parts)

    def key(
        self,
        header: Callable[[str], str | None],
        query: str = "",
        peer: Callable[[], str | None] | None = None,
    ) -> tuple[int | None, bytes | None]:
        """The request's hash key (``None``: no policy found its input, the balancer picks
        at random) and the ``Set-Cookie`` value to answer with (a generated cookie)."""
        key: int | None = None
        set_cookie: bytes | None = None
        for kind, name in self.parts:
            if kind == _HEADER:
                value = header(name)
            elif kind == _COOKIE:
                value = _cookie_value(header("cookie"), name)
                if value is None and self._set_cookie is not None and set_cookie is None:
                    cookie_name, attrs = self._set_cookie
                    if cookie_name == name:
                        value = os.urandom(8).hex()
                        set_cookie = f"{name}={value}".encode("ascii") + attrs
            elif kind == _SOURCE_IP:
                value = _peer_ip(peer()) if peer is not None else None
            else:
                value = _query_value(query, name)
            if value is None:
                continue
            h = hash_key(value.encode("utf-8", "surrogateescape"))
            # Envoy's combination: rotate the key so far, then xor the next.
            key = h if key is None else (((key << 1) | (key >> 63)) & _MASK) ^ h
        return key, set_cookie


def compile_hash_policy(action: rcfg.RouteAction | None) -> HashPolicy | None:
    if action is None or not action.hash_policy:
        return None
    return HashPolicy(action.hash_policy)
