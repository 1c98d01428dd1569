"""Subset load balancing on the RPC fast path: Dubbo calls whose route has a
``metadata_match`` reach only the providers of that subset."""

from __future__ import annotations

from typing import Any

import trio

from tests import dubbo_frames_data as captured
from tests.http_helpers import http_config, running_proxy
from tests.rpc_helpers import DubboPeer, provider
from trio_mesh.protocols.xprotocol import dubbo_frames as df


def with_id(raw: bytes, rid: int) -> bytes:
    return raw[:4] + rid.to_bytes(8, "big") + raw[12:]


async def test_dubbo_calls_reach_only_their_subset(nursery: trio.Nursery) -> None:
    calls: list[list[Any]] = [[], [], []]
    ports = [await provider(nursery, f"p{i}", calls=calls[i]) for i in range(3)]
    cluster = {
        "name": "up",
        "lb_type": "LB_ROUNDROBIN",
        "hosts": [
            {"address": f"127.0.0.1:{p}", "metadata": {"version": v}}
            for p, v in zip(ports, ["v1", "v2", "v2"], strict=True)
        ],
        "lb_subset_config": {"subset_selectors": [["version"]]},
    }
    route = {
        "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
        "route": {"cluster_name": "up", "metadata_match": {"version": "v2"}},
    }
    config = http_config([route], [cluster], proxy={"downstream_protocol": "dubbo"})
    async with running_proxy(config) as (_server, port):
        peer = await DubboPeer.connect(port)
        with trio.fail_after(10):
            for rid in range(10):
                await peer.stream.send_all(with_id(captured.SAY_HELLO, rid))
                resp = await peer.read()
                assert resp.request_id == rid and resp.status == df.Status.OK
    assert [len(c) for c in calls] == [0, 5, 5]
