"""The RPC upstream (bolt, Dubbo, any registered codec): a request and its response over the
host's multiplexed pool, ids rewritten by the pool.

``exchange`` is one try (``lifecycle.Exchange``): the request is one message
(:class:`RpcRequest`: the frame as the filters left it, its codec, and the time the whole call
may take), sent over the host's pool, its response handed to the sink whole
(``MessageSink.message``, the upstream's id still in it: the adapter restores its own). The
timeout is the pool's connection's business (one timer per connection), not a cancel scope.
"""

from __future__ import annotations

import math
from time import monotonic as _monotonic
from typing import cast

from ...config.filter_configs import XProtocolOptions
from ...network.connect import ConnectError
from ...pool.xprotocol import UpstreamLost, XPool
from ...protocols.xprotocol import Codec, Frame
from ...upstream import CircuitOpenError, Cluster, Host
from ..lifecycle import MessageSink, ProxyCore, RequestBody, ResponseSink, UpstreamRequest
from ..record import RequestRecord
from ..replies import OVERFLOW, TIMEOUT, UPSTREAM_RESET, connect_failure
from ..retry import RetryState
from . import UpstreamFailed


class RpcRequest(UpstreamRequest):
    """One RPC request as the exchange sends it: ``frame`` (the filters' copy when they
    changed its headers), its ``codec`` and ``options``, and ``timeout``, the seconds the
    whole call may take (the route's, capped by the frame's own)."""

    __slots__ = ("codec", "frame", "options", "timeout")

    def __init__(
        self, frame: Frame, codec: Codec, options: XProtocolOptions, timeout: float
    ) -> None:
        super().__init__()
        self.frame = frame
        self.codec = codec
        self.options = options
        self.timeout = timeout


async def exchange(
    core: ProxyCore,
    cluster: Cluster,
    host: Host,
    req: UpstreamRequest,
    body: RequestBody,
    sink: ResponseSink,
    info: RequestRecord,
    retry: RetryState | None,
    raced: bool,
) -> None:
    """One try of an RPC request (``req``: an `RpcRequest`): its response to the sink, or
    nothing for a oneway request. Raises `UpstreamFailed`."""
    call = cast(RpcRequest, req)
    frame = call.frame
    pool = core.pools.xprotocol(cluster, host, call.codec, call.options)
    downstream_id = frame.request_id
    host.active_requests += 1
    host.rq_total += 1  # /clusters' per-host count, as the fast path's _FastCall does
    try:
        response = await send(pool, frame, call.timeout)
    except UpstreamFailed as exc:
        if exc.reply is TIMEOUT:
            cluster.stats.upstream_rq_timeout += 1
        raise
    finally:
        host.active_requests -= 1
        frame.request_id = downstream_id  # an error reply answers the downstream id
    if response is not None:
        if core.detailed:  # only a detailed observer reads it (``start`` is set then)
            info.response_received_duration = _monotonic() - info.start
        await cast(MessageSink, sink).message(response)


async def send(pool: XPool, frame: Frame, timeout: float = math.inf) -> Frame | None:
    """Send ``frame`` and return its response (``None`` for a oneway request, which is only
    sent), all within ``timeout`` seconds (the pool's connection times it: no cancel scope
    per call). Raises `UpstreamFailed` (``TIMEOUT`` when the timeout elapsed first)."""
    try:
        if frame.is_oneway:
            if await pool.send_oneway(frame, timeout):
                return None
        else:
            response = await pool.call(frame, timeout)
            if response is not None:
                return response
    except ConnectError as exc:
        raise UpstreamFailed(connect_failure(exc)) from None
    except CircuitOpenError:
        raise UpstreamFailed(OVERFLOW) from None
    except UpstreamLost:
        raise UpstreamFailed(UPSTREAM_RESET) from None
    raise UpstreamFailed(TIMEOUT)
