"""Active health checking: one task per cluster with a ``health_check`` (run in that
cluster's nursery, pool/cluster.py), checking every host once per round.

A round starts a check of every host not still being checked, at most ``MAX_CONCURRENT``
open at once (a big cluster does not open hundreds of sockets together), each in its own
cancel scope of ``timeout``: a host that accepts and never answers fails alone, and each
result is applied when it comes. Rounds start ``interval`` (plus up to ``interval_jitter``)
apart. A host is taken out after
``unhealthy_threshold`` failures in a row and brought back after ``healthy_threshold`` passes;
the balancer is rebuilt only then (``Cluster.host_health_changed``). No request waits on a
check. Checks use their own connections (not the pools', not under the circuit breakers);
a cluster with TLS is checked over TLS with its contexts, as its requests are. Bolt and
Dubbo checks send their codec's heartbeat request (from the xprotocol registry: no parsing
here) and pass on its heartbeat response with the same id.
"""

from __future__ import annotations

import logging
import random
import re
import struct

import h2.config
import h2.connection
import h2.events
import trio

from ..config.health_check import (
    CheckSpec,
    GrpcCheck,
    HealthCheck,
    HttpCheck,
    RpcCheck,
    TcpCheck,
    parse_check,
)
from ..network.connect import ConnectError, connect
from ..network.stream import Stream
from ..network.throttled_log import ThrottledLog
from ..protocols.xprotocol import Codec, XProtocolError
from ..protocols.xprotocol import registry as xprotocols
from .cluster import ALPN_H1, ALPN_H2, ALPN_NONE, Cluster
from .host import Host

log = logging.getLogger("trio_mesh.upstream.health")

#: Checks in flight at once per cluster.
MAX_CONCURRENT = 64
#: The most bytes read of an answer (an HTTP status line, a gRPC response).
MAX_ANSWER = 16384
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])[ \r]")
_GRPC_PATH = "/grpc.health.v1.Health/Check"
_SERVING = 1  # grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING


class CheckFailed(Exception):
    """A check's answer was not a pass (or the host could not be reached)."""


class HealthChecker:
    """The health checking of one cluster; ``run`` until its ``health_check`` is removed."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        # Per host: passes and failures in a row (Host objects stay across reloads/EDS).
        self._passes: dict[Host, int] = {}
        self._failures: dict[Host, int] = {}
        self._limit = trio.Semaphore(MAX_CONCURRENT)
        self._in_flight: set[Host] = set()
        # The cluster's host tuple last seen, as a set: "is it still a host" per result is
        # a hash lookup, not a scan (1,000 hosts: a million comparisons a round otherwise).
        self._hosts_seen: tuple[Host, ...] = ()
        self._members: set[Host] = set()
        self._log = ThrottledLog(log, interval=1.0)
        self._config: HealthCheck | None = None
        self._spec: CheckSpec | None = None
        # RPC heartbeats: ids taken in turn (a reply must carry its request's).
        self._request_id = 0

    async def run(self) -> None:
        """Rounds while the cluster has a checked ``health_check``; on its removal every host
        it failed is usable again. The checks are this task's children: a round does not
        wait for the last one's stragglers (a host still being checked is skipped), so a host
        that never answers delays no other host's checks."""
        cluster = self.cluster
        try:
            async with trio.open_nursery() as nursery:
                first = True
                while True:
                    hc = cluster.config.health_check
                    if hc is None:
                        break
                    if hc is not self._config:
                        self._config = hc
                        self._spec = parse_check(hc, "health_check")[0]
                    if self._spec is None:  # a protocol not checked (its load warned)
                        break
                    if first and hc.initial_delay_seconds > 0:
                        first = False
                        await trio.sleep(hc.initial_delay_seconds)
                        continue
                    first = False
                    await self._round(nursery, hc, self._spec)
                    await trio.sleep(hc.interval + random.uniform(0, hc.interval_jitter))
                nursery.cancel_scope.cancel()
        finally:
            self._clear()

    def _clear(self) -> None:
        changed = False
        for host in self.cluster.hosts:
            changed |= host.set_health(failed_active_hc=False)
        if changed:
            self.cluster.host_health_changed()

    def _is_member(self, host: Host) -> bool:
        hosts = self.cluster.hosts
        if hosts is not self._hosts_seen:  # a reload or EDS replaced the set
            self._hosts_seen, self._members = hosts, set(hosts)
            for gone in [h for h in self._passes if h not in self._members]:
                del self._passes[gone]
            for gone in [h for h in self._failures if h not in self._members]:
                del self._failures[gone]
        return host in self._members

    async def _round(self, nursery: trio.Nursery, hc: HealthCheck, spec: CheckSpec) -> None:
        hosts = self.cluster.hosts
        in_flight = self._in_flight
        for host in hosts:
            if host in in_flight:
                continue
            await self._limit.acquire()  # at most MAX_CONCURRENT checks open at once
            in_flight.add(host)
            nursery.start_soon(self._check_one, hc, spec, host)

    async def _check_one(self, hc: HealthCheck, spec: CheckSpec, host: Host) -> None:
        stats = self.cluster.stats
        stats.health_check_attempt += 1
        try:
            reason = ""
            network = False  # no answer at all (Envoy's network_failure)
            with trio.move_on_after(hc.timeout) as scope:
                try:
                    await self._probe(spec, host)
                except CheckFailed as exc:
                    reason = str(exc)
                except (ConnectError, OSError, trio.BrokenResourceError) as exc:
                    reason, network = str(exc) or type(exc).__name__, True
                except Exception as exc:  # the check's failure, never the cluster's
                    reason = f"{type(exc).__name__}: {exc}"
            if scope.cancelled_caught:
                reason, network = f"no answer within {hc.timeout}s", True
            if reason:
                stats.health_check_failure += 1
                stats.health_check_network_failure += network
            else:
                stats.health_check_success += 1
            self._record(hc, host, reason)
        finally:
            self._in_flight.discard(host)
            self._limit.release()

    def _record(self, hc: HealthCheck, host: Host, reason: str) -> None:
        if not self._is_member(host):
            return  # it left while checked
        if not reason:
            self._failures[host] = 0
            passes = self._passes[host] = self._passes.get(host, 0) + 1
            if host.failed_active_hc and passes >= hc.healthy_threshold:
                self._set(host, False, f"passed {passes} check(s): healthy again")
            return
        self._passes[host] = 0
        failures = self._failures[host] = self._failures.get(host, 0) + 1
        if not host.failed_active_hc and failures >= hc.unhealthy_threshold:
            self._set(host, True, f"failed {failures} check(s), last: {reason}: unhealthy")

    def _set(self, host: Host, failed: bool, what: str) -> None:
        self._log.log(
            logging.WARNING if failed else logging.INFO,
            "cluster %r host %s: %s",
            self.cluster.name,
            host.label,
            what,
        )
        if host.set_health(failed_active_hc=failed):
            self.cluster.host_health_changed()

    async def _connect(self, host: Host, alpn: str, timeout: float) -> Stream:
        cluster = self.cluster
        tls = cluster.tls
        if tls is None or host.tls_disable:
            if cluster.tls_missing and not host.tls_disable:
                raise CheckFailed("the cluster's TLS contexts are not built")
            return await connect(host.host, host.port, timeout)
        name = tls.server_name or host.hostname or host.host
        return await connect(host.host, host.port, timeout, tls.contexts[alpn], name)

    async def _probe(self, spec: CheckSpec, host: Host) -> None:
        """Returns when ``host`` passes ``spec``; raises otherwise."""
        timeout = self._config.timeout if self._config is not None else 3.0
        if isinstance(spec, TcpCheck):
            stream = await self._connect(host, ALPN_NONE, timeout)
            try:
                await _tcp(stream, spec)
            finally:
                stream.abort()
        elif isinstance(spec, HttpCheck):
            stream = await self._connect(host, ALPN_H1, timeout)
            try:
                await _http(stream, spec, host)
            finally:
                stream.abort()
        elif isinstance(spec, RpcCheck):
            codec = xprotocols.get(spec.codec)
            self._request_id = request_id = self._request_id % 0x7FFFFFFF + 1
            stream = await self._connect(host, ALPN_NONE, timeout)
            try:
                await _heartbeat(stream, codec, request_id)
            finally:
                stream.abort()
        else:
            stream = await self._connect(host, ALPN_H2, timeout)
            try:
                scheme = "http" if self.cluster.tls is None or host.tls_disable else "https"
                await _grpc(stream, spec, host, scheme)
            finally:
                stream.abort()


async def _tcp(stream: Stream, spec: TcpCheck) -> None:
    if spec.send:
        await stream.send_all(spec.send)
    buf = b""
    while len(buf) < len(spec.expect):
        data = await stream.receive_some(len(spec.expect) - len(buf))
        if not data:
            raise CheckFailed("closed before the expected bytes")
        buf += data
    if buf != spec.expect:
        raise CheckFailed(f"answered {buf[:32].hex()}, expected {spec.expect[:32].hex()}")


async def _http(stream: Stream, spec: HttpCheck, host: Host) -> None:
    request = (
        f"GET {spec.path} HTTP/1.1\r\nHost: {spec.host or host.label}\r\n"
        "User-Agent: trio-mesh-health-check\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    await stream.send_all(request)
    buf = b""
    while b"\n" not in buf:
        if len(buf) >= MAX_ANSWER:
            raise CheckFailed("no status line in the first 16 KiB")
        data = await stream.receive_some(MAX_ANSWER - len(buf))
        if not data:
            raise CheckFailed("closed before a status line")
        buf += data
    m = _STATUS_LINE.match(buf)
    if m is None:
        raise CheckFailed(f"not an HTTP/1 status line: {buf[:40]!r}")
    status = int(m.group(1))
    if not spec.passes(status):
        raise CheckFailed(f"status {status}")


async def _heartbeat(stream: Stream, codec: Codec, request_id: int) -> None:
    """Sends the codec's heartbeat request; passes on its heartbeat response with the same
    id. The peer's own requests (its heartbeats) are skipped; at most ``4 * MAX_ANSWER``
    bytes are read, and no frame over ``MAX_ANSWER`` is buffered."""
    await stream.send_all(bytes(codec.heartbeat_request(request_id).data))
    buf = bytearray()
    received = 0
    while True:
        try:
            decoded = codec.decode(buf, MAX_ANSWER)
        except XProtocolError as exc:
            raise CheckFailed(f"not a {codec.name} frame: {exc}") from None
        if decoded is None:
            data = await stream.receive_some(MAX_ANSWER)
            if not data:
                raise CheckFailed("closed before the heartbeat response")
            received += len(data)
            if received > 4 * MAX_ANSWER:
                raise CheckFailed("no heartbeat response in its budget")
            buf += data
            continue
        frame, used = decoded
        del buf[:used]
        if frame.goaway:
            raise CheckFailed("the peer is draining (go-away)")
        if frame.is_request:
            continue  # the peer's own heartbeat: not an answer
        if frame.request_id != request_id:
            raise CheckFailed(f"a response to id {frame.request_id}, not {request_id}")
        if not frame.heartbeat:
            raise CheckFailed("a response that is not a heartbeat")
        if not codec.is_success(frame):
            raise CheckFailed(f"heartbeat status {codec.status_name(frame.status or 0)}")
        return


def _grpc_request(service: str) -> bytes:
    """A HealthCheckRequest (field 1, ``service``) in a gRPC message frame."""
    name = service.encode("utf-8")
    body = b""
    if name:
        body = b"\x0a" + _varint(len(name)) + name
    return b"\x00" + struct.pack(">I", len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _serving_status(message: bytes) -> int:
    """The ``status`` (field 1, varint) of a HealthCheckResponse; 0 (UNKNOWN) if absent."""
    i = 0
    status = 0
    while i < len(message):
        key = message[i]
        i += 1
        if key == 0x08:  # field 1, varint
            value, shift = 0, 0
            while i < len(message):
                b = message[i]
                i += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            status = value
        else:
            raise CheckFailed(f"unexpected field in the health response (key {key:#x})")
    return status


async def _grpc(stream: Stream, spec: GrpcCheck, host: Host, scheme: str) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", scheme),
            (":path", _GRPC_PATH),
            (":authority", spec.authority or host.label),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "trio-mesh-health-check"),
        ],
    )
    conn.send_data(sid, _grpc_request(spec.service), end_stream=True)
    await stream.send_all(conn.data_to_send())
    body = b""
    grpc_status: bytes | None = None
    received = 0
    while True:
        data = await stream.receive_some(MAX_ANSWER)
        if not data:
            raise CheckFailed("closed before the health response")
        received += len(data)
        if received > 4 * MAX_ANSWER:
            raise CheckFailed("a health response over its budget")
        ended = False
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                for name, value in event.headers:
                    if name in (b":status",) and value != b"200":
                        raise CheckFailed(f"HTTP status {value.decode()}")
                    if name == b"grpc-status":
                        grpc_status = value
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, sid)
                if len(body) > MAX_ANSWER:
                    raise CheckFailed("a health response over its budget")
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                ended = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise CheckFailed("the server closed the HTTP/2 connection")
        pending = conn.data_to_send()
        if pending:
            await stream.send_all(pending)
        if ended:
            break
    if grpc_status != b"0":
        status = grpc_status.decode() if grpc_status is not None else "none"
        raise CheckFailed(f"grpc-status {status}")
    if len(body) < 5:
        raise CheckFailed("no health response message")
    (length,) = struct.unpack(">I", body[1:5])
    serving = _serving_status(body[5 : 5 + length])
    if serving != _SERVING:
        raise CheckFailed(f"serving status {serving} (SERVING is 1)")
