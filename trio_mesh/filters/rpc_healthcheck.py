"""MOSN's ``healthcheck`` stream filter: a client's RPC heartbeat is answered by the proxy.

trio-mesh's RPC proxy (``proxy/xprotocol.py``) answers every heartbeat request itself before
any routing or stream filter, on every RPC listener; so this filter has nothing left to do
per request: it makes no filter object. It exists so that MOSN configurations naming it load
and mean what they meant there. On an HTTP listener it does nothing either (as in MOSN,
which matched only xprotocol heartbeats).
"""

from __future__ import annotations

from typing import Any

from ..config.stream_filters.rpc_healthcheck import RpcHealthCheckConfig
from .stream import FactoryResult, StreamFilter, register_stream_filter


class RpcHealthCheck(StreamFilter):
    @classmethod
    def factory(cls, config: Any, build: Any) -> FactoryResult:
        return None  # heartbeats never reach the stream filters: see the module doc


register_stream_filter("healthcheck", RpcHealthCheck, RpcHealthCheckConfig)
