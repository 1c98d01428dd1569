"""An activated socket for a listener that only xDS defines: kept until xDS is warm, then
taken by that listener (closed only if the snapshot has no such listener)."""

from __future__ import annotations

import importlib.util
import socket

import pytest
import trio

from tests.http_helpers import start_upstream
from tests.xds.test_xds import ads, fetch, initial  # noqa: F401 - ads is a fixture
from tests.xds.test_xds_client import TIMEOUT
from trio_mesh import Server
from trio_mesh.config import parse_config
from trio_mesh.network.inherit import InheritedSockets

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("envoy_data_plane") is None, reason="the xds extra is not installed"
)


async def test_an_xds_listener_takes_its_activated_socket_once_warm(nursery, ads):  # noqa: F811
    upstream = await start_upstream(nursery)
    await initial(ads, upstream.port)  # LDS: listener "ingress" on 127.0.0.1:0
    activated, spare = socket.socket(), socket.socket()
    for s in (activated, spare):
        s.bind(("127.0.0.1", 0))
        s.listen()
    inherited = InheritedSockets.of([("ingress", activated), ("nobody", spare)])
    config = parse_config({"xds": {"address": f"127.0.0.1:{ads.port}", "node_id": "t"}}).config
    server = await nursery.start(Server(config, inherited=inherited).run)
    with trio.fail_after(TIMEOUT):
        await server.live.wait()
        assert server.listeners["ingress"].sock is activated
        assert await fetch(activated.getsockname()[1]) == 200
    assert spare.fileno() == -1  # nobody took it once warm: closed
