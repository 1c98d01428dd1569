"""A scriptable ADS (state of the world) management server for tests.

    python tests/xds_server.py [--host 127.0.0.1] [--port 0]

Commands come as JSON lines on stdin:
    {"op": "set", "type": "CDS", "version": "v2", "resources": [{...Envoy JSON...}]}
    {"op": "quit"}
"set" replaces that type's resources and pushes them to every stream
subscribed to the type (only the subscribed names for non-wildcard requests).
With "garbage": true it also sends one Any of the right type_url whose bytes
do not decode (a string field holding invalid UTF-8), to provoke a NACK.
--tls-cert/--tls-key serve TLS (ALPN h2).
A type that was never set gets no response.

Events go to stdout, one per line, flushed:
    READY <port>
    SUBSCRIBE <TYPE> <names comma-joined>      (initial request or changed names)
    ACK <TYPE> <version>
    NACK <TYPE> <kept version_info or -> <error message>
    NODE <id> <cluster> <metadata JSON>        (a request carried a Node)
    CLOSED                                     (a stream ended)
Requests with a stale nonce are ignored, as the protocol asks.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import ssl
import sys
from typing import Any

from trio_mesh.xds.envoy_import import envoy_import

with envoy_import():
    import envoy_data_plane.envoy.config.trace.v3  # an HCM's tracing provider configs
    import envoy_data_plane.envoy.extensions.filters.http.router.v3
    import envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3
    import envoy_data_plane.envoy.extensions.transport_sockets.tls.v3  # noqa: F401
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster
    from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment
    from envoy_data_plane.envoy.config.listener.v3 import Listener
    from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
    from envoy_data_plane.envoy.service.discovery.v3 import (
        AggregatedDiscoveryServiceBase,
        DiscoveryResponse,
    )
    from envoy_data_plane.google.protobuf import Any as AnyMsg
from grpclib.server import Server

PREFIX = "type.googleapis.com/envoy.config."
TYPES = {
    "CDS": (PREFIX + "cluster.v3.Cluster", Cluster),
    "LDS": (PREFIX + "listener.v3.Listener", Listener),
    "EDS": (PREFIX + "endpoint.v3.ClusterLoadAssignment", ClusterLoadAssignment),
    "RDS": (PREFIX + "route.v3.RouteConfiguration", RouteConfiguration),
}
SHORT = {url: short for short, (url, _) in TYPES.items()}


def emit(*words: str) -> None:
    print(" ".join(words), flush=True)


def resource_name(msg: Any) -> str:
    return msg.cluster_name if isinstance(msg, ClusterLoadAssignment) else msg.name


class Store:
    """type_url -> (version, {name: Any}); types never set are absent."""

    def __init__(self) -> None:
        self.snapshot: dict[str, tuple[str, dict[str, AnyMsg]]] = {}
        self.streams: set[StreamState] = set()  # open streams

    def set(
        self, short: str, version: str, resources: list[dict[str, Any]], garbage: bool = False
    ) -> None:
        type_url, cls = TYPES[short]
        packed = {}
        for doc in resources:
            msg = cls.from_dict(doc)
            packed[resource_name(msg)] = AnyMsg.pack(msg)
        if garbage:
            # field 1 (name / cluster_name) as 2 bytes of invalid UTF-8; served to everyone
            packed[""] = AnyMsg(type_url=type_url, value=b"\x0a\x02\xff\xfe")
        self.snapshot[type_url] = (version, packed)
        for stream in self.streams:
            if type_url in stream.subs:
                stream.respond(type_url)


class StreamState:
    nonces = itertools.count(1)

    def __init__(self, store: Store) -> None:
        self.store = store
        self.subs: dict[str, list[str]] = {}  # type_url -> names ([] = all)
        self.last_nonce: dict[str, str] = {}
        self.outbox: asyncio.Queue[DiscoveryResponse | None] = asyncio.Queue()

    def respond(self, type_url: str) -> None:
        if type_url not in self.store.snapshot:
            return  # nothing published yet for this type
        version, resources = self.store.snapshot[type_url]
        names = self.subs[type_url]
        # "" is the garbage resource: sent whatever names were asked for
        nonce = str(next(self.nonces))
        self.last_nonce[type_url] = nonce
        self.outbox.put_nowait(
            DiscoveryResponse(
                version_info=version,
                type_url=type_url,
                nonce=nonce,
                resources=[a for n, a in resources.items() if not names or n in names or not n],
            )
        )

    async def read(self, messages: Any) -> None:
        try:
            async for req in messages:
                self.on_request(req)
        finally:
            # The request side ends on half-close, reset or connection loss, even
            # when grpclib drops the response generator without closing it.
            self.closed()
            self.outbox.put_nowait(None)

    def closed(self) -> None:
        if self in self.store.streams:
            self.store.streams.discard(self)
            emit("CLOSED")

    def on_request(self, req: Any) -> None:
        t = req.type_url
        short = SHORT.get(t, t)
        names = sorted(req.resource_names)
        if req.node is not None:
            meta = req.node.metadata.to_dict() if req.node.metadata is not None else {}
            emit("NODE", req.node.id, req.node.cluster, json.dumps(meta, sort_keys=True))
        if req.response_nonce and req.response_nonce != self.last_nonce.get(t):
            return  # stale: a newer response is on its way to the client
        if req.error_detail is not None:
            emit("NACK", short, req.version_info or "-", req.error_detail.message)
            self.subs[t] = names
            return
        if req.response_nonce:
            emit("ACK", short, req.version_info)
            if names == self.subs.get(t):
                return  # a plain ACK: nothing new to send
        emit("SUBSCRIBE", short, ",".join(names))
        self.subs[t] = names
        self.respond(t)


class ADSServer(AggregatedDiscoveryServiceBase):
    def __init__(self, store: Store) -> None:
        self.store = store

    async def stream_aggregated_resources(self, messages: Any) -> Any:
        state = StreamState(self.store)
        self.store.streams.add(state)
        reader = asyncio.create_task(state.read(messages))
        try:
            while (resp := await state.outbox.get()) is not None:
                yield resp
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            state.closed()


async def commands(store: Store) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            return
        if cmd["op"] == "set":
            store.set(
                cmd["type"], str(cmd["version"]), cmd.get("resources", []), bool(cmd.get("garbage"))
            )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    ctx = None
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        ctx.set_alpn_protocols(["h2"])
    store = Store()
    server = Server([ADSServer(store)])
    # reuse_address so a restarted server can take the port of a killed one
    await server.start(args.host, args.port, ssl=ctx, reuse_address=True)
    port = server._server.sockets[0].getsockname()[1]  # grpclib has no public accessor
    emit("READY", str(port))
    await commands(store)  # until "quit" or EOF on stdin
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
