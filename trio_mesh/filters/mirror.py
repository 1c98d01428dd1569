"""The `mirror` stream filter: copies of a share of the requests to a shadow cluster.

Whether a request is mirrored is drawn when its filter would be made (no object at all for
the others). A mirrored request's method, target and headers are copied on its headers, its
body gathered as it passes (up to ``max_body_bytes``; a larger one is not mirrored); once the
body is complete the copy goes to the server's `Background` task set, which refuses at once
when it is full: the request itself never waits for its shadow. The shadow request goes over
the pooled upstream connections of the shadow cluster (HTTP/1.1, or HTTP/2 for gRPC), within
``timeout``, its answer read and thrown away. As Envoy does, the shadow's Host (authority) has
``-shadow`` appended to its host part, so that the shadow's logs tell copies from originals.

What goes out is what reached the filter (put it after filters that may refuse a request)
with the route's path rewrite, Host rewrite and request header mutations, as the request
itself gets them; the proxy's own forwarding headers (X-Forwarded-For, X-Request-Id) are not
added, and request trailers are not mirrored. Upgrade and CONNECT requests (tunnels) are not
mirrored. Neither are the RPC protocols: a copy would need the codec to re-encode the frame
under a new request id on the multiplexed RPC pool, which a stream filter's header view and
body bytes do not give.

Counters per (listener, shadow cluster): `mirror_stats`. The shadow cluster's own counters
(requests, timeouts, connections) count the shadow requests too, as in Envoy.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from random import random
from typing import Any

import attrs
import trio

from ..config.stream_filters.mirror import MirrorConfig, MirrorProtocol
from ..network.connect import ConnectError
from ..network.h2 import StreamGone
from ..pool import PoolOverflow
from ..protocols.http1 import (
    EndOfMessage,
    H1Error,
    ResponseHead,
    ResponseParser,
    encode_request_head,
    strip_hop_by_hop,
)
from ..protocols.http2 import Data as H2Data
from ..protocols.http2 import H2Settings
from ..protocols.http2 import ResponseHeaders as H2ResponseHeaders
from ..protocols.http2 import Trailers as H2Trailers
from ..router import apply_header_mutations
from ..stats import Stats
from ..upstream import CircuitOpenError, Cluster, ClusterManager, Host, NoHostError
from .stream import Headers, RequestContext, StreamFilter, register_stream_filter

__all__ = ["MirrorFilter", "MirrorStats", "mirror_stats", "shadow_authority"]

log = logging.getLogger("trio_mesh.filters.mirror")

_READ = 64 * 1024
# Sent again on a fresh connection after the keep-alive race only if running twice is safe.
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Shadow requests go out as their own request: none of these framing or hop fields carry over.
_DROP_H1 = frozenset({b"host", b"content-length", b"expect", b"upgrade"})
_DROP_H2 = frozenset({b"host", b"content-length", b"expect", b"upgrade", b"te"})
# The first user of a host's HTTP/2 pool sets its settings; the proxy's defaults.
_H2_SETTINGS = H2Settings()
_FAILURES = (
    ConnectError,
    CircuitOpenError,
    PoolOverflow,
    NoHostError,
    H1Error,
    StreamGone,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


@attrs.define(eq=False)
class MirrorStats(Stats):
    """``mirrored``: shadow requests handed to the background set; ``dropped``: refused by
    it (full); ``completed`` / ``failed`` / ``timeout``: how those that ran ended;
    ``too_large``: requests not mirrored because of their body; ``unsupported``: requests
    of a kind not mirrored (tunnels)."""

    mirrored: int = 0
    dropped: int = 0
    completed: int = 0
    failed: int = 0
    timeout: int = 0
    too_large: int = 0
    unsupported: int = 0


# Per server (its cluster manager): the counters of each (listener, shadow cluster), shared
# by the listener's filter and the routes that give it another config.
_STATS: weakref.WeakKeyDictionary[ClusterManager, dict[tuple[str, str], MirrorStats]] = (
    weakref.WeakKeyDictionary()
)


def mirror_stats(clusters: ClusterManager) -> dict[tuple[str, str], MirrorStats]:
    """The mirror counters of a server (``server.clusters``), by (listener, shadow cluster)."""
    return _STATS.setdefault(clusters, {})


def shadow_authority(authority: str) -> str:
    """``host-shadow``, the port kept after it (``a.b:8080`` -> ``a.b-shadow:8080``)."""
    if authority.startswith("["):  # IPv6 literal
        end = authority.find("]")
        if end > 0:
            return authority[: end + 1] + "-shadow" + authority[end + 1 :]
        return authority + "-shadow"
    host, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and host:
        return f"{host}-shadow:{port}"
    return authority + "-shadow"


class _Shadow:
    """One mirrored request, as it will go out (shared by its copies)."""

    __slots__ = ("authority", "body", "grpc", "headers", "method", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        authority: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        grpc: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.authority = authority  # "-shadow" already in
        self.headers = headers  # regular fields, without Host and framing
        self.body = body  # None: the request had no body at all
        self.grpc = grpc


class _Factory:
    """Built once per configuration (and per route overriding it): draws which requests are
    mirrored and owns the shadow requests' work."""

    __slots__ = ("build", "cluster", "config", "stats")

    def __init__(self, config: MirrorConfig, build: Any) -> None:
        self.config = config
        self.build = build
        self.cluster = config.cluster
        clusters = build.clusters
        if config.cluster not in clusters.clusters:
            # The loader refuses unknown names; a configuration built in code, or a cluster
            # gone since, is only logged: the requests themselves are not the mirror's to fail.
            log.warning("mirror: shadow cluster %r is not defined", config.cluster)
        self.stats = mirror_stats(clusters).setdefault(
            (build.listener, config.cluster), MirrorStats()
        )

    def __call__(self, context: RequestContext) -> MirrorFilter | None:
        # No cluster: no route, or the router answers itself (direct response, redirect).
        if context.cluster is None or context.is_rpc:
            return None
        percent = self.config.percent
        if percent < 100.0 and random() * 100.0 >= percent:
            return None
        return MirrorFilter(self, context)

    # ------------------------------------------------------------------ the shadow side

    def send(self, shadow: _Shadow) -> None:
        """Hand one request's copies to the background set; never waits."""
        stats = self.stats
        background = self.build.background
        cluster = self.build.clusters.clusters.get(self.cluster)
        if cluster is None:
            stats.failed += 1
            log.info("mirror: shadow cluster %r is not defined", self.cluster)
            return
        if self.config.broadcast:
            targets: list[Host | None] = list(cluster.hosts)
        else:
            targets = [None] * self.config.amplification  # None: the balancer picks
        for host in targets:
            if background is not None and background.spawn(
                self._run, cluster, host, shadow, name="mirror"
            ):
                stats.mirrored += 1
            else:
                stats.dropped += 1
                log.debug("mirror: background tasks full, a copy to %r dropped", self.cluster)

    async def _run(self, cluster: Cluster, host: Host | None, shadow: _Shadow) -> None:
        stats = self.stats
        ok = False
        with trio.move_on_after(self.config.timeout) as scope:
            try:
                if host is None:
                    host = cluster.choose_host()
                cluster.stats.upstream_rq_total += 1
                host.active_requests += 1
                try:
                    protocol = self.config.upstream_protocol
                    if protocol is MirrorProtocol.HTTP2 or (
                        protocol is MirrorProtocol.AUTO and shadow.grpc
                    ):
                        await self._h2(cluster, host, shadow)
                    else:
                        await self._h1(cluster, host, shadow)
                finally:
                    host.active_requests -= 1
                ok = True
            except _FAILURES as exc:
                stats.failed += 1
                log.debug("mirror: shadow request to %r failed: %r", cluster.name, exc)
                return
            except Exception:
                stats.failed += 1
                log.exception("mirror: shadow request to %r failed", cluster.name)
                return
        if scope.cancelled_caught:
            stats.timeout += 1
            cluster.stats.upstream_rq_timeout += 1
            log.debug("mirror: shadow request to %r timed out", cluster.name)
        elif ok:
            stats.completed += 1

    async def _h1(self, cluster: Cluster, host: Host, shadow: _Shadow) -> None:
        headers = [(b"host", shadow.authority), *shadow.headers]
        body = shadow.body
        # the copy is buffered whole: its own length frames it (written by the encoder)
        length = None if body is None else len(body)
        wire = encode_request_head(shadow.method, shadow.target, headers, length=length)
        if body:
            wire += body
        pool = self.build.pools.http1(cluster, host)
        fresh = False
        while True:
            conn = None if fresh else pool.take_idle()
            reused = conn is not None
            if conn is None:
                conn, reused = await pool.acquire(fresh=fresh)
            reusable = False
            try:
                try:
                    await conn.stream.send_all(wire)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # it may have answered before closing: read what it said
                reusable, raced = await _discard_h1_response(conn.stream, shadow.method == b"HEAD")
            finally:
                if reusable:
                    pool.release(conn, True)
                else:
                    pool.close(conn)
            if not raced:
                return
            # The upstream closed the idle connection as it was reused: once more, on a new
            # connection, if the method may run twice.
            if not reused or fresh or shadow.method not in _IDEMPOTENT:
                raise trio.BrokenResourceError("shadow upstream closed before a response")
            fresh = True

    async def _h2(self, cluster: Cluster, host: Host, shadow: _Shadow) -> None:
        pool = self.build.pools.http2(cluster, host, _H2_SETTINGS)
        up, usid, channel = await pool.open_stream()
        try:
            headers = [
                (b":method", shadow.method),
                (b":scheme", b"http"),
                (b":authority", shadow.authority),
                (b":path", shadow.target),
            ]
            headers += [(n, v) for n, v in shadow.headers if n not in _DROP_H2]
            if shadow.grpc:
                headers.append((b"te", b"trailers"))
            body = shadow.body
            up.send_headers(usid, headers, end_stream=body is None)
            if body is not None:
                await up.send_data(usid, body, end_stream=True)
            while True:
                event = await channel.get()
                kind = type(event)
                if kind is H2Data:
                    up.consumed(usid, event.flow_length)
                    if event.end_stream:
                        return
                elif kind is H2ResponseHeaders:
                    if event.end_stream:
                        return
                elif kind is H2Trailers:
                    return
        finally:
            up.close_stream(usid)


async def _discard_h1_response(stream: Any, head_request: bool) -> tuple[bool, bool]:
    """Read one response to its end and drop it: (connection reusable, the connection was
    closed before any byte came: the keep-alive race)."""
    parser = ResponseParser(head_request=head_request)
    keep_alive = False
    got = False
    while True:
        try:
            data = await stream.receive_some(_READ)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = None
        if not data:
            if not got:
                return False, True
            if data is None:
                raise trio.BrokenResourceError("shadow upstream reset mid-response")
            events = parser.feed_eof()  # ends a close-delimited body, or raises H1Error
        else:
            got = True
            events = parser.feed(data)
        for event in events:
            if type(event) is ResponseHead and event.status >= 200:
                if event.status == 101:  # nobody asked to switch: the connection is spent
                    raise H1Error(502, "shadow upstream switched protocols")
                keep_alive = event.keep_alive
            elif type(event) is EndOfMessage:
                return keep_alive and parser.complete and not parser.trailing, False


class MirrorFilter(StreamFilter):
    """One mirrored request: its copy, built while it passes."""

    __slots__ = ("_body", "_copy", "_size", "_shared")

    def __init__(self, factory: _Factory, context: RequestContext) -> None:
        self._shared = factory
        self.context = context
        self._copy: _Shadow | None = None  # None: not (or no longer) being mirrored
        self._body: list[bytes] = []
        self._size = 0

    @classmethod
    def factory(cls, config: Any, build: Any) -> Callable[[RequestContext], StreamFilter | None]:
        if config is None:
            raise ValueError("mirror needs a config naming its shadow cluster")
        return _Factory(config, build)

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> None:
        shared = self._shared
        context = self.context
        method = context.method
        if method == "CONNECT" or headers.get("upgrade") is not None:
            shared.stats.unsupported += 1  # a tunnel's bytes are not a request to copy
            return
        limit = shared.config.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            self._too_large()
            return
        self._copy = self._shadow(headers)
        if end_stream:
            self._send(None)

    def _shadow(self, headers: Headers) -> _Shadow:
        context = self.context
        route = context.route
        h2 = context.protocol == "HTTP/2"
        raw: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        authority = context.authority
        for name, value in strip_hop_by_hop([(n.lower(), v) for n, v in headers.raw]):
            if name.startswith(b":"):  # an HTTP/2 block may carry its pseudo-headers
                if name == b":authority" and not authority:
                    authority = value.decode("latin-1")
                continue
            if name == b"host" and not authority:
                authority = value.decode("latin-1")
            if name in _DROP_H1:
                continue
            if h2 and name == b"cookie":
                cookies.append(value)  # HTTP/2 splits them; one field again (RFC 9113 8.2.3)
                continue
            raw.append((name, value))
        if cookies:
            raw.append((b"cookie", b"; ".join(cookies)))
        path, _, query = context.path.partition("?")
        if route is not None:
            path = route.rewrite_path(path)
            if route.host_rewrite is not None:
                authority = route.host_rewrite
            if route.request_headers_to_add or route.request_headers_to_remove:
                raw = apply_header_mutations(
                    raw, route.request_headers_to_add, route.request_headers_to_remove
                )
        target = path + "?" + query if query else path
        return _Shadow(
            context.method.encode("latin-1"),
            (target or "/").encode("latin-1"),
            shadow_authority(authority or "localhost").encode("latin-1"),
            raw,
            None,
            context.grpc,
        )

    async def on_request_data(self, data: bytes, last: bool) -> None:
        if self._copy is None:
            return
        if data:
            self._size += len(data)
            if self._size > self._shared.config.max_body_bytes:
                self._too_large()
                return
            self._body.append(bytes(data))
        if last:
            body = b"".join(self._body)
            self._body = []
            self._send(body)

    def _too_large(self) -> None:
        self._copy = None
        self._body = []
        self._shared.stats.too_large += 1
        log.debug(
            "mirror: %s %s not mirrored: its body is over %d bytes",
            self.context.method,
            self.context.path,
            self._shared.config.max_body_bytes,
        )

    def _send(self, body: bytes | None) -> None:
        shadow = self._copy
        self._copy = None  # once
        if shadow is not None:
            shadow.body = body
            self._shared.send(shadow)


register_stream_filter("mirror", MirrorFilter, MirrorConfig)
