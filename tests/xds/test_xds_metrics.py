"""xDS stats (``collect``): per type update_attempt/success/rejected and the version's hash,
against the real ADS management server of tests/xds_server.py (its own process)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import trio

from tests.http_helpers import start_upstream
from tests.xds.test_xds import ads, eds_cluster, fetch, initial, start_mesh
from tests.xds.test_xds_client import TIMEOUT
from trio_mesh.metrics.collect import collect, version_hash
from trio_mesh.metrics.model import Metric

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("envoy_data_plane") is None, reason="the xds extra is not installed"
)

__all__ = ["ads"]  # the fixture, shared with test_xds.py


def by_name(metrics: list[Metric]) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


async def test_updates_counted_per_type_and_a_rejected_one_keeps_the_version(nursery, ads):
    a = await start_upstream(nursery)
    await initial(ads, a.port)
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        assert await fetch(server.addresses["ingress"][1]) == 200
        m = by_name(collect(server))
        for prefix in ("cluster_manager.cds", "cluster_manager.eds"):
            assert m[f"{prefix}.update_success"].value >= 1
        for prefix in ("listener_manager.lds", "listener_manager.rds"):
            assert m[f"{prefix}.update_success"].value >= 1
        for prefix in (
            "cluster_manager.cds",
            "cluster_manager.eds",
            "listener_manager.lds",
            "listener_manager.rds",
        ):
            attempt, success, rejected = (
                m[f"{prefix}.update_{s}"].value for s in ("attempt", "success", "rejected")
            )
            assert (attempt, rejected) == (success, 0)
            assert m[f"{prefix}.update_attempt"].kind == "counter"
            version = m[f"{prefix}.version"]
            assert (version.kind, version.value) == ("gauge", version_hash("1"))
            text = m[f"{prefix}.version_text"]
            assert text.tags == (("version_text", "1"),) and text.value == 1
        assert m["control_plane.connected_state"].value == 1
        doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
        xds = [n for n in m if n.split(".")[0] in ("cluster_manager", "listener_manager")]
        assert len(xds) == 4 * 5
        for name in [*xds, "control_plane.connected_state"]:  # documented
            assert name in doc or name.rsplit(".", 1)[0] + ".*" in doc, name
        # the listener xDS made is reported like a static one
        assert m["http.ingress.downstream_rq_total"].value == 1

        # A CDS update the proxy cannot take: NACKed, counted, the version stays.
        cds_before = m["cluster_manager.cds.update_attempt"].value
        await ads.set("CDS", "2", [{**eds_cluster("a"), "lbPolicy": "CLUSTER_PROVIDED"}])
        await ads.expect("NACK CDS")
        m = by_name(collect(server))
        assert m["cluster_manager.cds.update_attempt"].value == cds_before + 1
        assert m["cluster_manager.cds.update_rejected"].value == 1
        assert m["cluster_manager.cds.version"].value == version_hash("1")
        assert m["cluster_manager.cds.version_text"].tags == (("version_text", "1"),)

        # and a good one after it moves the version
        await ads.set("CDS", "3", [eds_cluster("a")])
        await ads.expect("ACK CDS 3")
        m = by_name(collect(server))
        assert m["cluster_manager.cds.update_success"].value == cds_before + 1
        assert m["cluster_manager.cds.version"].value == version_hash("3")
