"""Issue 14 follow-up, finding 3: a provider that begins a response frame and then trickles
it must not wedge the pooled RPC connection. Each byte it sends counts as traffic (so the
heartbeat check never fires); the frame deadline (``xprotocol.upstream_frame_timeout``)
closes the connection, its requests fail, and the next request gets a new connection."""

from __future__ import annotations

import trio
import trio.testing

from tests.http_helpers import http_config, start_proxy, start_raw_server
from tests.rpc_helpers import BoltClient, request
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus

ROUTES = [
    {
        "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
        "route": {"cluster_name": "up", "timeout": "30s"},
    }
]


class TricklingFirst:
    """Its first connection answers the first request with 100 bytes of a 1 MiB frame and
    then one byte every 0.2 s; later connections answer at once."""

    def __init__(self) -> None:
        self.connections = 0
        self.first_closed = trio.Event()

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        first = self.connections == 1
        peer = BoltClient(stream)
        try:
            while True:
                frame = await peer.read()
                if frame.is_heartbeat:
                    continue
                if not first:
                    resp = BOLT.build_response(frame.request_id, 0, content=b"ok")
                    await stream.send_all(bytes(resp.data))
                    continue
                whole = bytes(
                    BOLT.build_response(frame.request_id, 0, content=b"y" * (1 << 20)).data
                )
                await stream.send_all(whole[:100])
                for i in range(100, len(whole)):
                    await trio.sleep(0.2)  # the trickle itself (the attack), not a wait
                    await stream.send_all(whole[i : i + 1])
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if first:
                self.first_closed.set()


async def test_a_trickled_response_frame_closes_the_upstream_connection_at_its_deadline(nursery):
    provider = TricklingFirst()
    up = await start_raw_server(nursery, provider.serve)
    proxy = {
        "downstream_protocol": "bolt",
        # The heartbeat would check every 200 ms: the trickle must not keep it quiet.
        "xprotocol": {
            "upstream_frame_timeout": "1s",
            "heartbeat_interval": "200ms",
            "heartbeat_timeout": "200ms",
        },
    }
    _, port = await start_proxy(nursery, http_config(ROUTES, {"up": up}, proxy=proxy))
    client = await BoltClient.connect(port)
    with trio.fail_after(10):  # the route timeout (30 s) is not what ends it
        await client.send(request(1, b"a", timeout_ms=30_000))
        first = await client.read()
        # The frame was not whole within 1 s: the connection was closed, the request failed
        # as an upstream reset (not a timeout).
        assert first.request_id == 1 and first.status == ResponseStatus.NO_PROCESSOR
        await provider.first_closed.wait()

        await client.send(request(2, b"b", timeout_ms=30_000))
        second = await client.read()
        assert second.request_id == 2 and second.status == ResponseStatus.SUCCESS
        assert bytes(second.content) == b"ok"
    assert provider.connections == 2
