"""Readiness with xDS: ``/ready`` is 503 PRE_INITIALIZING until the initial CDS and LDS
(and what they wait for: endpoints, routes) are applied, then 200 LIVE."""

from __future__ import annotations

import importlib.util

import pytest
import trio

from tests.http_helpers import curl, start_upstream
from tests.xds.test_xds import ads, eds_cluster, endpoints, listener, routes  # noqa: F401
from tests.xds.test_xds_client import TIMEOUT, ServerProcess
from trio_mesh import Server
from trio_mesh.config import parse_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("envoy_data_plane") is None, reason="the xds extra is not installed"
)


async def ready(url: str) -> tuple[int, bytes]:
    code, out, err = await curl("-w", "\n%{http_code}", f"{url}/ready")
    assert code == 0, err
    body, _, status = out.rpartition(b"\n")
    return int(status), body


async def test_ready_only_once_xds_is_warm(nursery: trio.Nursery, ads: ServerProcess) -> None:  # noqa: F811
    upstream = await start_upstream(nursery)
    doc = {
        "xds": {"address": f"127.0.0.1:{ads.port}", "node_id": "t"},
        "admin": {"address": "127.0.0.1:0"},
    }
    server = await nursery.start(Server(parse_config(doc).config).run)
    assert server.admin_address is not None
    url = f"http://127.0.0.1:{server.admin_address[1]}"
    assert await ready(url) == (503, b"PRE_INITIALIZING\n")
    with trio.fail_after(TIMEOUT):
        # CDS alone, its cluster waiting for endpoints: not warm.
        await ads.set("CDS", "1", [eds_cluster("a")])
        await ads.expect("ACK CDS 1")
        assert await ready(url) == (503, b"PRE_INITIALIZING\n")
        await ads.set("EDS", "1", [endpoints("a", upstream.port)])
        await ads.set("LDS", "1", [listener("ingress", "r")])
        await ads.expect("ACK LDS 1")
        assert not server.xds.warm  # the listener waits for its routes
        assert await ready(url) == (503, b"PRE_INITIALIZING\n")
        await ads.set("RDS", "1", [routes("r", ("/", "a"))])
        await server.live.wait()
    assert await ready(url) == (200, b"LIVE\n")
