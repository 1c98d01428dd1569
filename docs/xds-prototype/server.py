"""Minimal Envoy v3 ADS (state-of-the-world) management server on grpclib.

    python server.py [--port 0] [--host 127.0.0.1]

Prints "READY <port>" on stdout (flushed) once listening; logs to stderr.
SIGHUP  -> publish a new, valid version of every resource.
SIGUSR1 -> publish a new version with a Cluster connect_timeout of 0, which the
           prototype client rejects (NACK), to exercise error_detail.
"""
import argparse
import asyncio
import datetime
import itertools
import logging
import signal
import sys

from grpclib.server import Server

from xds_types import (
    CDS, EDS, LDS, RDS, Address, AggregatedConfigSource, AggregatedDiscoveryServiceBase,
    Any, ApiVersion, Cluster, ClusterDiscoveryType, ClusterEdsClusterConfig, ClusterLbPolicy,
    ClusterLoadAssignment, ConfigSource, DiscoveryRequest, DiscoveryResponse, Endpoint, Filter,
    FilterChain, HttpConnectionManager, HttpConnectionManagerCodecType, HttpFilter, LbEndpoint,
    Listener, LocalityLbEndpoints, Rds, Route, RouteAction, RouteConfiguration, RouteMatch,
    Router, SocketAddress, SocketAddressProtocol, VirtualHost,
)

log = logging.getLogger("ads-server")
ADS = ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def build_snapshot(version: int, broken: bool = False) -> dict[str, dict[str, Any]]:
    """type_url -> {resource name -> Any}."""
    cluster = Cluster(
        name="backend",
        type=ClusterDiscoveryType.EDS,                 # oneof cluster_discovery_type
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=ADS, service_name="backend"),
        connect_timeout=datetime.timedelta(seconds=0 if broken else 1.5),  # Duration == timedelta
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
    )
    cla = ClusterLoadAssignment(
        cluster_name="backend",
        endpoints=[LocalityLbEndpoints(lb_endpoints=[
            LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(
                protocol=SocketAddressProtocol.TCP, address="10.0.0.1", port_value=8000 + version))))
            for _ in range(1)
        ])],
    )
    hcm = HttpConnectionManager(
        stat_prefix="ingress_http",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        rds=Rds(config_source=ADS, route_config_name="local_route"),   # oneof route_specifier
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=Any.pack(Router()))],
    )
    listener = Listener(
        name="http_listener",
        address=Address(socket_address=SocketAddress(address="0.0.0.0", port_value=10000)),
        filter_chains=[FilterChain(filters=[Filter(
            name="envoy.filters.network.http_connection_manager",
            typed_config=Any.pack(hcm),                                  # oneof config_type
        )])],
    )
    route = RouteConfiguration(
        name="local_route",
        virtual_hosts=[VirtualHost(name="all", domains=["*"], routes=[Route(
            match=RouteMatch(prefix=f"/v{version}/"),
            route=RouteAction(cluster="backend"),
        )])],
    )
    return {
        CDS: {"backend": Any.pack(cluster)},
        EDS: {"backend": Any.pack(cla)},
        LDS: {"http_listener": Any.pack(listener)},
        RDS: {"local_route": Any.pack(route)},
    }


class Store:
    def __init__(self):
        self.version = 1
        self.snapshot = build_snapshot(1)
        self.watchers: set[asyncio.Queue] = set()

    def bump(self, broken: bool = False):
        self.version += 1
        self.snapshot = build_snapshot(self.version, broken)
        log.info("published version %d%s", self.version, " (BROKEN)" if broken else "")
        for q in self.watchers:
            q.put_nowait(None)


class ADSServer(AggregatedDiscoveryServiceBase):
    _nonces = itertools.count(1)

    def __init__(self, store: Store):
        self.store = store

    async def stream_aggregated_resources(self, messages):
        """Server-side bidi handler: `messages` is the request async iterator,
        whatever we yield is sent.  We need to push on version bumps too, so a
        reader task feeds a queue that this generator drains."""
        store = self.store
        wake: asyncio.Queue = asyncio.Queue()
        store.watchers.add(wake)
        subs: dict[str, list[str]] = {}        # type_url -> subscribed names ([] = wildcard)
        sent: dict[str, tuple[str, str]] = {}  # type_url -> (version, nonce) last sent
        outbox: asyncio.Queue = asyncio.Queue()
        node = "?"

        def respond(type_url: str):
            res = store.snapshot.get(type_url, {})
            names = subs[type_url]
            version = str(store.version)
            nonce = str(next(self._nonces))
            sent[type_url] = (version, nonce)
            outbox.put_nowait(DiscoveryResponse(
                version_info=version, type_url=type_url, nonce=nonce,
                resources=[a for n, a in res.items() if not names or n in names]))

        async def reader():
            try:
                await _read()
            finally:
                outbox.put_nowait(None)          # client half-closed or stream broke

        async def _read():
            nonlocal node
            async for req in messages:           # DiscoveryRequest
                node = req.node.id if req.node else node
                t, short = req.type_url, req.type_url.rsplit(".", 1)[-1]
                last = sent.get(t)
                if req.response_nonce and last and req.response_nonce != last[1]:
                    log.info("[%s] %s stale nonce %s (latest %s), ignored", node, short, req.response_nonce, last[1])
                    continue
                if req.error_detail is not None:
                    log.warning("[%s] NACK %s nonce=%s kept_version=%r: code=%s %s", node, short,
                                req.response_nonce, req.version_info, req.error_detail.code,
                                req.error_detail.message)
                    subs[t] = list(req.resource_names)
                    continue
                if req.response_nonce:
                    log.info("[%s] ACK %s version=%s nonce=%s", node, short, req.version_info, req.response_nonce)
                    if list(req.resource_names) == subs.get(t):
                        continue                 # pure ACK, nothing new to send
                else:
                    log.info("[%s] subscribe %s names=%s", node, short, list(req.resource_names))
                subs[t] = list(req.resource_names)
                respond(t)

        async def pusher():
            while True:
                await wake.get()
                for t in list(subs):
                    respond(t)

        tasks = [asyncio.create_task(reader()), asyncio.create_task(pusher())]
        try:
            while (resp := await outbox.get()) is not None:
                yield resp
            if not tasks[0].cancelled() and tasks[0].exception():
                raise tasks[0].exception()
        finally:
            log.info("[%s] stream closed", node)
            store.watchers.discard(wake)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    store = Store()
    server = Server([ADSServer(store)])
    await server.start(args.host, args.port)
    port = server._server.sockets[0].getsockname()[1]   # grpclib has no public accessor
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, store.bump)
    loop.add_signal_handler(signal.SIGUSR1, store.bump, True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"READY {port}", flush=True)
    log.info("listening on %s:%d", args.host, port)
    await stop.wait()
    server.close()
    await server.wait_closed()
    log.info("shut down")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d server %(message)s", datefmt="%H:%M:%S")
    asyncio.run(main())
