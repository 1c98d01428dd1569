"""CDS, EDS and RDS: Envoy's ``lb_subset_config``, endpoint ``envoy.lb`` metadata and route
``metadata_match`` convert to the file's keys and load; what is not honoured is refused."""

from __future__ import annotations

from typing import Any

import pytest

from trio_mesh.config.load import parse_config
from trio_mesh.config.subset import FallbackPolicy
from trio_mesh.xds import types as t
from trio_mesh.xds.translate import ConvertError, cluster_doc, route_config_doc


def cluster(subset: dict[str, Any]) -> t.Cluster:
    return t.Cluster.from_dict(
        {
            "name": "be",
            "lbSubsetConfig": subset,
            "loadAssignment": {
                "clusterName": "be",
                "endpoints": [
                    {
                        "lbEndpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socketAddress": {"address": "127.0.0.1", "portValue": 8080}
                                    }
                                },
                                "metadata": {"filterMetadata": {"envoy.lb": {"version": "v2"}}},
                            }
                        ]
                    }
                ],
            },
        }
    )


def test_subset_config_and_endpoint_metadata_convert() -> None:
    c = cluster(
        {
            "fallbackPolicy": "DEFAULT_SUBSET",
            "defaultSubset": {"version": "v1"},
            "subsetSelectors": [{"keys": ["version"]}, {"keys": ["version", "zone"]}],
        }
    )
    doc, _ = cluster_doc(c)
    assert doc["lb_subset_config"] == {
        "fallback_policy": "DEFAULT_SUBSET",
        "default_subset": {"version": "v1"},
        "subset_selectors": [["version"], ["version", "zone"]],
    }
    assert doc["hosts"][0]["metadata"] == {"version": "v2"}
    loaded = parse_config({"cluster_manager": {"clusters": [doc]}}, dynamic=True)
    sc = loaded.config.cluster_manager.clusters[0].lb_subset_config
    assert sc is not None and sc.policy() is FallbackPolicy.DEFAULT_SUBSET


def test_unsupported_subset_options_are_refused() -> None:
    with pytest.raises(ConvertError, match="lb_subset_config"):
        cluster_doc(cluster({"subsetSelectors": [{"keys": ["v"]}], "panicModeAny": True}))
    with pytest.raises(ConvertError, match="single_host_per_subset"):
        cluster_doc(cluster({"subsetSelectors": [{"keys": ["v"], "singleHostPerSubset": True}]}))


def test_route_and_weighted_metadata_match_convert() -> None:
    lb = {"filterMetadata": {"envoy.lb": {"version": "v2"}}}
    rc = t.RouteConfiguration.from_dict(
        {
            "name": "r",
            "virtualHosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/a"},
                            "route": {"cluster": "be", "metadataMatch": lb},
                        },
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "weightedClusters": {
                                    "clusters": [{"name": "be", "weight": 1, "metadataMatch": lb}]
                                }
                            },
                        },
                    ],
                }
            ],
        }
    )
    doc = route_config_doc(rc)
    routes = doc["virtual_hosts"][0]["routers"]
    assert routes[0]["route"]["metadata_match"] == {"version": "v2"}
    cw = routes[1]["route"]["weighted_clusters"][0]["cluster"]
    assert cw["metadata_match"] == {"version": "v2"}
