"""Envoy v3 ADS (state-of-the-world) client running inside Trio, using
grpclib (asyncio) through trio-asyncio.

    python client.py HOST:PORT [--mode stub|raw]   # connect to a running server
    python client.py --demo    [--mode stub|raw]   # spawn server.py, run the scenario

--mode stub : generated AggregatedDiscoveryServiceAsyncStub.stream_aggregated_resources
              driven by ONE asyncio coroutine (aio_as_trio), requests fed from a Trio
              memory channel via trio_as_aio, responses pushed back via trio_as_aio.
--mode raw  : grpclib Channel.request(...) stream; send and receive are two Trio tasks,
              each grpclib call wrapped with aio_as_trio.
"""
import argparse
import asyncio
import logging
import math
import signal
import sys
from contextlib import asynccontextmanager

import trio
import trio_asyncio
from trio_asyncio import aio_as_trio, trio_as_aio
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

import betterproto2
from xds_types import (
    CDS, EDS, LDS, RDS, AggregatedDiscoveryServiceAsyncStub, Cluster, ClusterDiscoveryType,
    ClusterLoadAssignment, DiscoveryRequest, DiscoveryResponse, HttpConnectionManager, Listener,
    Node, RouteConfiguration, Status,
)

log = logging.getLogger("ads-client")
ADS_ROUTE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
# what a broken transport looks like from the client side
TRANSPORT_ERRORS = (GRPCError, StreamTerminatedError, ConnectionError, OSError)
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}


class StreamEnded(Exception):
    """Server ended the ADS stream without an error status."""


# ---------------------------------------------------------------- xDS state
class XdsState:
    """Transport-independent SotW bookkeeping. Survives reconnects."""

    def __init__(self, node_id: str):
        self.node = Node(id=node_id, cluster="trio-mesh")
        self.names: dict[str, list[str]] = {CDS: [], LDS: []}   # [] = wildcard
        self.version: dict[str, str] = {}                       # last ACKed version
        self.nonce: dict[str, str] = {}                         # last nonce seen (this stream)
        self.resources: dict[str, dict[str, betterproto2.Message]] = {}
        self.changed = trio.Event()
        self.nacks = 0

    def initial_requests(self) -> list[DiscoveryRequest]:
        self.nonce.clear()                       # nonces are per stream
        return [self._req(t) for t in self.names]

    def _req(self, type_url, error: Status | None = None) -> DiscoveryRequest:
        return DiscoveryRequest(
            node=self.node, type_url=type_url, resource_names=self.names[type_url],
            version_info=self.version.get(type_url, ""),
            response_nonce=self.nonce.get(type_url, ""), error_detail=error)

    def on_response(self, resp: DiscoveryResponse) -> list[DiscoveryRequest]:
        t = resp.type_url
        self.nonce[t] = resp.nonce
        try:
            decoded = {}
            for any_ in resp.resources:
                if any_.type_url != t:
                    raise ValueError(f"resource type {any_.type_url} in {t} response")
                msg = any_.unpack()          # -> registered betterproto2 class (TypeError if unknown)
                self._validate(msg)
                decoded[msg.name if hasattr(msg, "name") and msg.name else msg.cluster_name] = msg
        except Exception as e:               # NACK: keep previous version, echo nonce, set error_detail
            self.nacks += 1
            log.warning("NACK %s v%s nonce=%s: %s", SHORT[t], resp.version_info, resp.nonce, e)
            return [self._req(t, Status(code=3, message=str(e)))]   # 3 = INVALID_ARGUMENT
        self.resources[t] = decoded
        self.version[t] = resp.version_info
        for name, msg in decoded.items():
            log.info("  %s v%s %s", SHORT[t], resp.version_info, describe(msg))
        out = [self._req(t)]                 # ACK
        # derive dependent subscriptions (CDS -> EDS, LDS -> RDS)
        if t == CDS:
            out += self._subscribe(EDS, sorted(
                c.eds_cluster_config.service_name or c.name for c in decoded.values()
                if c.type == ClusterDiscoveryType.EDS))
        elif t == LDS:
            out += self._subscribe(RDS, sorted(
                {hcm.rds.route_config_name for l in decoded.values() for hcm in hcms(l)
                 if betterproto2.which_one_of(hcm, "route_specifier")[0] == "rds"}))
        self.changed.set()
        self.changed = trio.Event()
        return out

    def _subscribe(self, t, names):
        if self.names.get(t) == names:
            return []
        self.names[t] = names
        return [self._req(t)]

    @staticmethod
    def _validate(msg):
        if isinstance(msg, Cluster) and (msg.connect_timeout is None or msg.connect_timeout.total_seconds() <= 0):
            raise ValueError(f"cluster {msg.name}: connect_timeout must be > 0, got {msg.connect_timeout}")


def hcms(listener: Listener):
    for fc in listener.filter_chains:
        for f in fc.filters:
            kind, cfg = betterproto2.which_one_of(f, "config_type")
            if kind == "typed_config" and isinstance(m := cfg.unpack(), HttpConnectionManager):
                yield m


def describe(msg) -> str:
    if isinstance(msg, Cluster):
        return (f"Cluster {msg.name} type={msg.type.name} lb={msg.lb_policy.name} "
                f"connect_timeout={msg.connect_timeout!r} "
                f"discovery_oneof={betterproto2.which_one_of(msg, 'cluster_discovery_type')[0]}")
    if isinstance(msg, ClusterLoadAssignment):
        eps = [lb.endpoint.address.socket_address for le in msg.endpoints for lb in le.lb_endpoints]
        return f"CLA {msg.cluster_name} endpoints={[f'{s.address}:{s.port_value}' for s in eps]}"
    if isinstance(msg, Listener):
        sa = msg.address.socket_address
        h = next(hcms(msg))
        return (f"Listener {msg.name} {sa.address}:{sa.port_value} -> HCM stat_prefix={h.stat_prefix} "
                f"route_specifier={betterproto2.which_one_of(h, 'route_specifier')[0]} "
                f"rds={h.rds.route_config_name} via ads={h.rds.config_source.ads is not None} "
                f"http_filters={[type(f.typed_config.unpack()).__name__ for f in h.http_filters]}")
    if isinstance(msg, RouteConfiguration):
        r = msg.virtual_hosts[0].routes[0]
        return f"RouteConfiguration {msg.name} prefix={r.match.prefix} -> cluster={r.route.cluster}"
    return repr(msg)


# ------------------------------------------------------------- transports
async def _stub_pump(stub, req_recv, resp_send):
    """asyncio-flavoured: drives the generated stub. Runs as ONE asyncio task, so
    cancelling it from Trio unwinds grpclib's `async with channel.request()`."""
    sender_task = None

    async def requests():                    # runs inside the stub's own sending task
        nonlocal sender_task
        sender_task = asyncio.current_task()
        async for req in trio_as_aio(req_recv):
            yield req

    try:
        async for resp in stub.stream_aggregated_resources(requests()):
            await trio_as_aio(resp_send.send)(resp)
    finally:
        # betterproto2's _stream_stream only cancels its sending task on error; on a
        # normal end it would stay blocked in requests() forever -> cancel + reap it.
        if sender_task is not None and not sender_task.done():
            sender_task.cancel()
        if sender_task is not None:
            await asyncio.gather(sender_task, return_exceptions=True)


async def session_stub(channel, state: XdsState):
    stub = AggregatedDiscoveryServiceAsyncStub(channel)
    req_send, req_recv = trio.open_memory_channel(math.inf)
    resp_send, resp_recv = trio.open_memory_channel(0)
    for r in state.initial_requests():
        req_send.send_nowait(r)

    async def pump():
        await aio_as_trio(_stub_pump)(stub, req_recv, resp_send)
        raise StreamEnded("server closed the stream")

    async with trio.open_nursery() as n:
        n.start_soon(pump)
        async for resp in resp_recv:
            for r in state.on_response(resp):
                req_send.send_nowait(r)


@asynccontextmanager
async def open_ads_stream(channel):
    """Trio-flavoured async CM around grpclib's Stream. __aexit__ is run shielded:
    otherwise in a cancelled scope trio-asyncio cancels the asyncio future before
    grpclib's cleanup (stream reset/release) gets to run."""
    cm = channel.request(ADS_ROUTE, Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse)
    stream = await aio_as_trio(cm.__aenter__)()
    try:
        await aio_as_trio(stream.send_request)()
        yield stream
    except BaseException as e:
        with trio.CancelScope(shield=True):
            await aio_as_trio(cm.__aexit__)(type(e), e, e.__traceback__)
        raise
    else:
        with trio.CancelScope(shield=True):
            await aio_as_trio(cm.__aexit__)(None, None, None)


async def session_raw(channel, state: XdsState):
    req_send, req_recv = trio.open_memory_channel(math.inf)
    for r in state.initial_requests():
        req_send.send_nowait(r)
    async with open_ads_stream(channel) as stream:
        async def sender():                   # Trio task 1
            async for req in req_recv:
                await aio_as_trio(stream.send_message)(req)

        async def receiver():                 # Trio task 2
            while (resp := await aio_as_trio(stream.recv_message)()) is not None:
                for r in state.on_response(resp):
                    req_send.send_nowait(r)
            raise StreamEnded("server closed the stream")

        async with trio.open_nursery() as n:
            n.start_soon(sender)
            n.start_soon(receiver)


# ------------------------------------------------------------ reconnect loop
async def run_ads(host, port, state: XdsState, mode="stub", *, connected=None):
    """Runs until cancelled. Each session gets a fresh Channel; transport errors
    are caught and retried with backoff."""
    session = session_stub if mode == "stub" else session_raw
    backoff = 0.1
    while True:
        channel = Channel(host, port)        # fine from Trio context inside open_loop()
        failed = None
        try:
            log.info("connecting to %s:%d (mode=%s)", host, port, mode)
            if connected:
                connected()
            await session(channel, state)
        except* TRANSPORT_ERRORS + (StreamEnded,) as eg:
            failed = eg.exceptions[0]
        finally:
            channel.close()                  # sync; closes the h2 connection
        log.warning("ADS stream failed: %s: %s; retry in %.1fs", type(failed).__name__, failed, backoff)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


# ------------------------------------------------------------------ demo
async def start_server(nursery, port=0):
    """Spawn server.py; ready when it prints 'READY <port>' (no sleeping)."""
    proc = await nursery.start(lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
        [sys.executable, "server.py", "--port", str(port)], stdout=-1, check=False,
        task_status=task_status))
    buf = b""
    while b"\n" not in buf:
        chunk = await proc.stdout.receive_some()
        if not chunk:
            raise RuntimeError("server exited before READY")
        buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    assert line.startswith("READY "), line
    return proc, int(line.split()[1])


async def wait_for(state, pred, what, timeout=5):
    with trio.fail_after(timeout):
        while not pred():
            await state.changed.wait()
    log.info("== %s", what)


def all_at(state, v):
    return lambda: all(state.version.get(t) == v for t in (CDS, EDS, LDS, RDS))


async def demo(mode):
    async with trio_asyncio.open_loop() as loop:
        async with trio.open_nursery() as procs:
            server, port = await start_server(procs)
            log.info("server pid=%d ready on port %d", server.pid, port)
            state = XdsState("trio-mesh-demo")
            connects = []
            async with trio.open_nursery() as n:
                cs = trio.CancelScope()

                async def client():
                    with cs:
                        await run_ads("127.0.0.1", port, state, mode, connected=lambda: connects.append(1))
                n.start_soon(client)

                await wait_for(state, all_at(state, "1"), "all four types ACKed at v1")
                server.send_signal(signal.SIGHUP)
                await wait_for(state, all_at(state, "2"), "SIGHUP -> all four types ACKed at v2")
                server.send_signal(signal.SIGUSR1)
                await wait_for(state, lambda: state.nacks == 1 and state.version.get(EDS) == "3",
                               "SIGUSR1 -> CDS v3 NACKed (kept v%s), EDS/LDS/RDS v3 ACKed" % state.version[CDS])

                server.kill()                        # SIGKILL: client must see an error and retry
                await server.wait()
                log.info("== server killed (rc=%s)", server.returncode)
                with trio.fail_after(5):
                    while len(connects) < 3:         # at least one failed reconnect attempt
                        await trio.sleep(0.05)
                server, _ = await start_server(procs, port)
                log.info("== new server pid=%d on same port", server.pid)
                await wait_for(state, lambda: state.nonce.get(RDS) and state.version.get(RDS) == "1",
                               "reconnected, v1 from new server ACKed", timeout=10)

                cs.cancel()                          # Trio-side cancellation
            # After cancel: every asyncio task we created must be gone.
            await trio.sleep(0.1)
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            log.info("== client cancelled; pending asyncio tasks: %d %s", len(pending), pending)
            server.send_signal(signal.SIGTERM)
            await server.wait()
            log.info("== server exited rc=%s; connect attempts=%d", server.returncode, len(connects))


async def connect_only(addr, mode):
    host, port = addr.rsplit(":", 1)
    async with trio_asyncio.open_loop():
        await run_ads(host, int(port), XdsState("trio-mesh-cli"), mode)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("addr", nargs="?")
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--mode", choices=["stub", "raw"], default="stub")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d client %(message)s", datefmt="%H:%M:%S")
    try:
        trio.run(demo if a.demo else connect_only, *([a.mode] if a.demo else [a.addr, a.mode]))
    except* KeyboardInterrupt:     # arrives wrapped in BaseExceptionGroup (open_loop's nursery)
        log.info("interrupted, exiting")
