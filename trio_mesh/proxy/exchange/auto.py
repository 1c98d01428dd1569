"""``upstream_protocol: Auto`` to a cluster with TLS: the upstream's ALPN answer decides.

The first connection to a host offers ``h2`` and ``http/1.1`` (``Pools.negotiate``); what the
server picks (no ALPN: HTTP/1) is the protocol of that host from then on, and its connection
goes to that protocol's pool. Each try is then the HTTP/1 or the HTTP/2 exchange, whichever
protocol the request came in on (both convert). Without TLS, or to a host with
``tls_disable``, Auto keeps its cleartext meaning: the request's own protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...network.connect import ConnectError
from ...upstream import CircuitOpenError, Cluster, Host
from ..record import RequestRecord
from ..replies import OVERFLOW, Cause, connect_failure
from ..retry import RetryState
from . import UpstreamFailed
from . import http1 as h1_exchange
from . import http2 as h2_exchange

if TYPE_CHECKING:
    from ..lifecycle import ProxyCore, RequestBody, ResponseSink, UpstreamRequest


async def exchange(
    core: ProxyCore,
    cluster: Cluster,
    host: Host,
    req: UpstreamRequest,
    body: RequestBody,
    sink: ResponseSink,
    info: RequestRecord,
    retry: RetryState | None,
    fresh: bool,
) -> None:
    """One try over the protocol the host's ALPN chose (see the module docstring)."""
    if host.tls_disable:
        await core.exchange(core, cluster, host, req, body, sink, info, retry, fresh)
        return
    protocol = host.protocol
    if protocol is None:
        try:
            protocol = await core.pools.negotiate(cluster, host, core.h2_settings)
        except ConnectError as exc:
            raise UpstreamFailed(connect_failure(exc)) from None
        except CircuitOpenError:
            raise UpstreamFailed(OVERFLOW) from None
    try:
        if protocol == "h2":
            await h2_exchange.exchange(core, cluster, host, req, body, sink, info, retry, fresh)
        else:
            await h1_exchange.exchange(core, cluster, host, req, body, sink, info, retry, fresh)
    except UpstreamFailed as exc:
        if exc.reply.cause is Cause.CONNECT:
            # The host may have changed what it speaks (a redeploy): the next connection
            # offers both again.
            host.protocol = None
        raise
