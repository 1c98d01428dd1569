"""Envoy's ``envoy.filters.listener.proxy_protocol`` through LDS: the listener's
``listener_filters``; what it cannot enforce warns, what would widen access is refused."""

from __future__ import annotations

import datetime
import logging

import pytest
from envoy_data_plane.envoy.config.core.v3 import ProxyProtocolConfigVersion
from envoy_data_plane.envoy.extensions.filters.listener.proxy_protocol.v3 import (
    ProxyProtocolRule,
)

from tests.xds.test_xds_translate import compose, expect, hcm, listener
from trio_mesh.config.filter_configs import ProxyProtocolConfig
from trio_mesh.xds import types as t
from trio_mesh.xds.translate import listener_doc

ROUTER = {
    "router_config_name": "main_routes",
    "virtual_hosts": [
        {"name": "v", "domains": ["*"], "routers": [{"route": {"cluster_name": "b"}}]}
    ],
}
CLUSTER = {"name": "b", "hosts": [{"address": "127.0.0.1:1"}]}
NAME = "envoy.filters.listener.proxy_protocol"


def with_pp(config: t.ProxyProtocol | None, **kw: object) -> t.Listener:
    typed = None if config is None else t.Any.pack(config)
    return listener(
        "edge",
        8080,
        hcm(),
        listener_filters=[t.ListenerFilter(name=NAME, typed_config=typed)],
        **kw,
    )


def test_proxy_protocol_becomes_the_listener_filter() -> None:
    lst = with_pp(
        t.ProxyProtocol(allow_requests_without_proxy_protocol=True),
        listener_filters_timeout=datetime.timedelta(seconds=3),
    )
    (edge,) = compose([listener_doc(lst)], [ROUTER], [CLUSTER]).listeners  # type: ignore[attr-defined]
    (lf,) = edge.listener_filters
    assert lf.type == "proxy_protocol"
    assert lf.config == ProxyProtocolConfig(allow_requests_without_proxy_protocol=True)
    assert edge.listener_filters_timeout == 3.0


def test_by_name_alone_and_with_the_tls_inspector() -> None:
    lst = listener(
        "edge",
        8080,
        hcm(),
        listener_filters=[
            t.ListenerFilter(name=NAME),
            t.ListenerFilter(name="envoy.filters.listener.tls_inspector"),
        ],
    )
    (edge,) = compose([listener_doc(lst)], [ROUTER], [CLUSTER]).listeners  # type: ignore[attr-defined]
    (lf,) = edge.listener_filters
    assert lf.config == ProxyProtocolConfig()  # a header required: Envoy's default
    assert edge.listener_filters_timeout == 15.0


def test_tlv_options_warn(caplog: pytest.LogCaptureFixture) -> None:
    config = t.ProxyProtocol(rules=[ProxyProtocolRule(tlv_type=0xE0)], stat_prefix="pp")
    with caplog.at_level(logging.WARNING, "trio_mesh.xds"):
        listener_doc(with_pp(config))
    assert "listener_filters[0].typed_config.rules: not enforced" in caplog.text


def test_access_widening_options_are_refused() -> None:
    v1 = ProxyProtocolConfigVersion.V1
    expect(
        listener_doc,
        with_pp(t.ProxyProtocol(disallowed_versions=[v1])),
        "Listener 'edge': listener_filters[0].typed_config.disallowed_versions: not supported"
        " by trio-mesh: a header of a version it names would be accepted",
    )
    expect(
        listener_doc,
        with_pp(t.ProxyProtocol(), continue_on_listener_filters_timeout=True),
        "Listener 'edge': continue_on_listener_filters_timeout: not supported with"
        " proxy_protocol: a client that sends no header in time is closed",
    )
