"""Registers the ``proxy`` network filter: the L7 proxy, by downstream protocol."""

from __future__ import annotations

from ..config.filters import ProxyConfig
from ..filters import BuildContext, register_network_filter
from .http1 import Http1Proxy


def make_proxy(config: ProxyConfig, ctx: BuildContext) -> Http1Proxy:
    # Http1 is the only protocol so far; HTTP/2 and the RPC codecs join here.
    return Http1Proxy(config, ctx)


register_network_filter("proxy", make_proxy, ProxyConfig, terminal=True)
