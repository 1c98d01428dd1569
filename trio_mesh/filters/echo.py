"""``echo``: writes back what it reads, as Envoy's echo filter; a stand-in upstream for demos."""

from __future__ import annotations

import trio

from ..network.connection import Connection
from ..network.relay import CHUNK
from .registry import BuildContext, register_network_filter


class Echo:
    def __init__(self, _config: None, _ctx: BuildContext) -> None:
        pass

    async def on_connection(self, conn: Connection) -> None:
        stream = conn.stream
        reads = 0
        try:
            while data := await stream.receive_some(CHUNK):
                conn.idle.touch()
                await stream.send_all(data)
                reads += 1
                if reads % 16 == 0:  # the stream yields only when it must wait: share the loop
                    await trio.lowlevel.checkpoint()
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing is owed to it


register_network_filter("echo", Echo, None, terminal=True)
