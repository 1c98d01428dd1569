"""`ip_access`: allow and deny lists of client addresses, as a stream filter and as a
(non-terminal) network filter with the same config.

The stream filter refuses a request (403, gRPC PERMISSION_DENIED, an RPC error reply); the
network filter closes a connection before the terminal filter reads a byte of it (any
listener: ``proxy``, ``tcp_proxy``...). Networks are parsed once per configuration and each
address's answer is cached, so an allowed request costs one dict lookup and no filter at all.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from ..config.stream_filters.ip_access import IpAccessConfig, IpAction, Network
from .network import RejectConnection
from .registry import register_network_filter
from .stream import Headers, LocalReply, RequestContext, StreamFilter, register_stream_filter

log = logging.getLogger("trio_mesh.filters")

#: gRPC's PERMISSION_DENIED.
GRPC_PERMISSION_DENIED = 7
BODY = "access denied\n"
#: Answers kept per matcher; a table this full is emptied (clients change slowly).
CACHE_SIZE = 4096


class IpMatcher:
    """The config's lists in order; the first holding an address decides, else the default."""

    def __init__(self, config: IpAccessConfig) -> None:
        self.rules: tuple[tuple[bool, tuple[Network, ...]], ...] = tuple(config.rules())
        self.default = config.effective_default() is IpAction.ALLOW
        self._cache: dict[str | None, bool] = {}

    def allows(self, host: str | None) -> bool:
        """Whether ``host`` (an address's text; ``None``: unknown) may pass."""
        cache = self._cache
        answer = cache.get(host)
        if answer is None:
            answer = self._decide(host)
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[host] = answer
        return answer

    def _decide(self, host: str | None) -> bool:
        if host is None:
            return self.default
        try:
            addr = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 zone
        except ValueError:
            return self.default  # as MOSN: an unreadable address is in no list
        candidates: tuple[Any, ...] = (addr,)
        mapped = getattr(addr, "ipv4_mapped", None)
        if mapped is not None:  # a dual-stack socket's view of an IPv4 client
            candidates = (addr, mapped)
        for allow, networks in self.rules:
            for net in networks:
                for a in candidates:
                    if a in net:
                        return allow
        return self.default


def host_of(value: str) -> str:
    """The address in a header value: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``;
    of a list (``X-Forwarded-For``) the last, which the nearest proxy wrote."""
    value = value.rpartition(",")[2].strip()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _reply(config: IpAccessConfig) -> LocalReply:
    return LocalReply(
        403,
        BODY,
        grpc_status=GRPC_PERMISSION_DENIED,
        grpc_message="access denied",
        # RPC protocols have no "forbidden" status; MOSN answers bolt's SERVER_EXCEPTION.
        rpc_error="INTERNAL",
        close=config.close,
    )


def _remote_host(context: RequestContext) -> str | None:
    remote = context.downstream_remote
    return remote[0] if remote else None


class IpAccess(StreamFilter):
    """Only made for requests to refuse (or, with ``header``, for every request)."""

    __slots__ = ("matcher",)

    def __init__(
        self, config: IpAccessConfig, context: RequestContext | None, matcher: IpMatcher
    ) -> None:
        super().__init__(config, context)  # type: ignore[arg-type]
        self.matcher = matcher

    @classmethod
    def factory(
        cls, config: IpAccessConfig, build: Any
    ) -> Callable[[RequestContext], StreamFilter | None]:
        matcher = IpMatcher(config)
        if config.header is not None:
            return lambda context: cls(config, context, matcher)
        denied = _Denied(config, None, matcher)
        allows = matcher.allows

        def make(context: RequestContext) -> StreamFilter | None:
            return None if allows(_remote_host(context)) else denied

        return make

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        value = headers.get(self.config.header)
        host = host_of(value) if value else _remote_host(self.context)
        if self.matcher.allows(host):
            return None
        log.info("ip_access: %s refused (listener %r)", host, self.context.listener)
        return _reply(self.config)


class _Denied(IpAccess):
    """Shared by every refused request (the decision was made from the connection)."""

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        return _reply(self.config)


class IpAccessNetworkFilter:
    """The network filter: ``accept`` refuses a connection from an address not allowed."""

    def __init__(self, config: IpAccessConfig, ctx: Any) -> None:
        if config.header is not None:
            raise ValueError(
                "ip_access as a network filter reads no headers: 'header' is for the stream"
                " filter only"
            )
        self.matcher = IpMatcher(config)

    def accept(self, conn: Any) -> None:
        remote = conn.remote
        host = remote[0] if remote else None
        if not self.matcher.allows(host):
            raise RejectConnection(f"{host} is not allowed by ip_access")
        return None


register_stream_filter("ip_access", IpAccess, IpAccessConfig)
register_network_filter("ip_access", IpAccessNetworkFilter, IpAccessConfig)
