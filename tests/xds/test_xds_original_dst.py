"""Envoy's ORIGINAL_DST cluster (CLUSTER_PROVIDED) and ``original_dst`` listener filter
through CDS / LDS: an ORIGINAL_DST cluster and a listener with ``use_original_dst``."""

from __future__ import annotations

from tests.xds.test_xds_translate import compose, expect, hcm, listener
from trio_mesh.config import ClusterType, LbType, parse_config
from trio_mesh.xds import types as t
from trio_mesh.xds.translate import cluster_doc, listener_doc

ROUTER = {
    "router_config_name": "main_routes",
    "virtual_hosts": [
        {"name": "v", "domains": ["*"], "routers": [{"route": {"cluster_name": "b"}}]}
    ],
}
CLUSTER = {"name": "b", "hosts": [{"address": "127.0.0.1:1"}]}
NAME = "envoy.filters.listener.original_dst"


def original_dst_cluster(**kw: object) -> t.Cluster:
    return t.Cluster(
        name="passthrough",
        type=t.ClusterDiscoveryType.ORIGINAL_DST,
        lb_policy=t.ClusterLbPolicy.CLUSTER_PROVIDED,
        **kw,  # type: ignore[arg-type]
    )


def test_original_dst_cluster_translates() -> None:
    doc, service = cluster_doc(original_dst_cluster())
    assert service is None
    loaded = parse_config({"cluster_manager": {"clusters": [doc]}})
    (cluster,) = loaded.config.cluster_manager.clusters
    assert cluster.type is ClusterType.ORIGINAL_DST
    assert cluster.lb_type is LbType.LB_ORIGINAL_DST
    assert cluster.hosts == ()


def test_original_dst_cluster_with_hosts_is_refused() -> None:
    expect(
        cluster_doc,
        original_dst_cluster(load_assignment=t.ClusterLoadAssignment(cluster_name="passthrough")),
        "Cluster 'passthrough': load_assignment: an ORIGINAL_DST cluster takes no hosts",
    )


def test_listener_filter_by_name_or_typed_config_sets_use_original_dst() -> None:
    for lf in (
        t.ListenerFilter(name=NAME),
        t.ListenerFilter(name=NAME, typed_config=t.Any.pack(t.OriginalDst())),
    ):
        lst = listener("edge", 8080, hcm(), listener_filters=[lf])
        (edge,) = compose([listener_doc(lst)], [ROUTER], [CLUSTER]).listeners  # type: ignore[attr-defined]
        assert edge.use_original_dst
        assert edge.listener_filters == ()


def test_listener_without_the_filter_does_not_read_it() -> None:
    lst = listener("edge", 8080, hcm())
    (edge,) = compose([listener_doc(lst)], [ROUTER], [CLUSTER]).listeners  # type: ignore[attr-defined]
    assert not edge.use_original_dst
