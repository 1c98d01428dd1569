"""Registers the ``proxy`` network filter: the L7 proxy, by downstream protocol.

The HTTP/2 and RPC proxies are imported when a listener is built with them (at configuration
time), so an HTTP/1 configuration starts without their modules."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..config.filter_configs import Protocol, ProxyConfig
from ..filters import BuildContext, NetworkFilter, register_network_filter
from ..network.connection import DRAIN_IDLE_GRACE, Connection
from ..network.relay import CHUNK
from ..protocols import xprotocol
from ..protocols.detect import UnknownProtocol, detect
from .http1 import Http1Proxy

if TYPE_CHECKING:
    from .http2 import Http2Proxy
    from .xprotocol import XProxy

log = logging.getLogger("trio_mesh.proxy")

_HTTP = ("Http1", "Http2")


class AutoProxy:
    """``downstream_protocol: Auto``: on TLS, the protocol ALPN negotiated (``h2``, ``http/1.1``);
    otherwise the first bytes of a connection pick its protocol (the
    HTTP/2 preface, an HTTP/1 method, or the magic of a registered RPC codec);
    ``upstream_protocol: Auto`` then means the same."""

    def __init__(self, config: ProxyConfig, ctx: BuildContext) -> None:
        from .http2 import Http2Proxy
        from .xprotocol import XProxy

        self.http1 = Http1Proxy(config, ctx)
        self.http2: Http2Proxy = Http2Proxy(config, ctx)
        self.rpc: XProxy = XProxy(config, ctx, [])

    def on_connection(self, conn: Connection) -> Coroutine[Any, Any, None]:
        return self._serve(conn)

    async def _serve(self, conn: Connection) -> None:
        # A drain while its first bytes are on their way (a hot upgrade's old process just
        # accepted it) waits for them: closing now would reset the client's first request.
        conn.drain_grace = DRAIN_IDLE_GRACE
        tls = conn.tls
        if tls is not None and tls.alpn is not None:
            # ALPN already said which HTTP the client speaks: no bytes to wait for.
            if tls.alpn == "h2":
                await self.http2.serve(conn, b"")
                return
            if tls.alpn == "http/1.1":
                await self.http1.serve(conn, b"")
                return
        buf = b""
        while True:
            # The listener's idle timeout bounds a client that never says enough.
            try:
                data = await conn.stream.receive_some(CHUNK)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return  # reset before saying what it speaks
            if not data:
                return
            buf += data
            conn.idle.touch()
            try:
                protocol = detect(buf, _HTTP)
            except UnknownProtocol:
                codec = xprotocol.detect(buf)
                if codec is None:
                    log.info("downstream %s: unknown protocol, closing", conn.remote)
                    return
                if codec is xprotocol.NEED_MORE:
                    continue
                await self.rpc.serve(conn, buf, codec)
                return
            if protocol is not None:
                break
        if protocol == "Http2":
            await self.http2.serve(conn, buf)
        else:
            await self.http1.serve(conn, buf)


def make_proxy(config: ProxyConfig, ctx: BuildContext) -> NetworkFilter:
    if ctx.tracers is not None:
        # This listener's effective tracing (its own, or the top-level block's).
        ctx = attrs.evolve(ctx, tracer=ctx.tracers.tracer_for(config))
    if config.downstream_protocol in (Protocol.X, Protocol.BOLT, Protocol.DUBBO):
        from .xprotocol import XProxy, configured_codecs

        return XProxy(config, ctx, configured_codecs(config))
    if config.downstream_protocol == Protocol.HTTP2:
        from .http2 import Http2Proxy

        return Http2Proxy(config, ctx)
    if config.downstream_protocol == Protocol.AUTO:
        return AutoProxy(config, ctx)
    return Http1Proxy(config, ctx)


register_network_filter("proxy", make_proxy, ProxyConfig, terminal=True)
