"""An RPC load generator: ``python -m bench.bolt_load --port PORT [--protocol bolt|dubbo] [-c 10]
[-m 10] [-d 4]``.

Like ``h2load -c C -m M -D D``: C connections to 127.0.0.1:PORT, each keeping M requests in
flight (a new one is sent as each response arrives), for D seconds; then prints one JSON object
on stdout: ``requests`` (responses received within D), ``seconds``, ``rps``, ``p50_ms``,
``p99_ms``, ``max_ms`` (per-request latency, from the request's write to its response's read,
so it includes waiting behind the other M-1 requests of the connection), ``errors`` and
``extra`` (the kinds of error, requests left unanswered at the end).

Every response must carry the request id of a request outstanding on that connection, the
protocol's success status and exactly the expected body; anything else is counted as an error
(a response whose id matches nothing outstanding is a ``mismatch``). Requests are built once
and copied with the request id patched in:

- ``bolt`` (the default): v1 bolt requests (hessian2 codec field 11 here is irrelevant: the
  echo server does not deserialize), built with ``BOLT.build_request``, the id at bytes 5..8;
  a response must be status SUCCESS (0) with exactly the request's content.
- ``dubbo``: Dubbo requests (flag 0xC2: request, two-way, hessian2) calling
  ``org.apache.dubbo.demo.EchoService:1.0.0`` ``echo(String)`` with the content as the string
  argument, the 8-byte id at bytes 4..11; a response must be status OK (20) with a body that is
  the value response of that same string (int 1, the hessian2 string).

Also :func:`probe` (one request, synchronous, with a socket timeout) and :func:`rpc_status` /
:func:`dubbo_status`, the readiness checks the harness uses for bolt and dubbo contenders.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from trio_mesh.protocols.xprotocol import dubbo_frames
from trio_mesh.protocols.xprotocol.base import Codec, Frame, XProtocolError
from trio_mesh.protocols.xprotocol.bolt import BOLT
from trio_mesh.protocols.xprotocol.dubbo import DUBBO
from trio_mesh.protocols.xprotocol.hessian2 import encode_string, encode_string_map

SERVICE = "com.alipay.bench.EchoService:1.0"
HEADERS = {"service": SERVICE, "sofa_head_method_name": "echo"}
DUBBO_SERVICE = "org.apache.dubbo.demo.EchoService"
DUBBO_VERSION = "2.4.10"
DUBBO_SERVICE_VERSION = "1.0.0"
DUBBO_REQUEST_FLAG = 0xC2  # request | two-way | hessian2
MAX_FRAME = 16 * 1024 * 1024
PROBE_ID = 7


def payload(size: int) -> bytes:
    return (b"trio-mesh bolt echo " * (size // 20 + 1))[:size]


def bolt_request(request_id: int, content: bytes) -> bytes:
    return bytes(BOLT.build_request(request_id, HEADERS, content, codec=11).data)


def dubbo_request(request_id: int, content: bytes) -> bytes:
    """A Dubbo ``echo(String)`` call whose argument is ``content`` (UTF-8) as a string."""
    body = b"".join(
        (
            encode_string(DUBBO_VERSION),
            encode_string(DUBBO_SERVICE),
            encode_string(DUBBO_SERVICE_VERSION),
            encode_string("echo"),
            encode_string("Ljava/lang/String;"),
            encode_string(content.decode("utf-8")),
            encode_string_map(
                {
                    "path": DUBBO_SERVICE,
                    "interface": DUBBO_SERVICE,
                    "version": DUBBO_SERVICE_VERSION,
                }
            ),
        )
    )
    return dubbo_frames.encode_frame(DUBBO_REQUEST_FLAG, 0, request_id, body)


def dubbo_response_body(content: bytes) -> bytes:
    """The body (after the 16-byte header) of the echo server's answer to ``content``."""
    return dubbo_frames.value_response(0, encode_string(content.decode("utf-8")))[
        dubbo_frames.HEADER_LENGTH :
    ]


@dataclass(frozen=True)
class Wire:
    """What the load generator and the probe need to know of a protocol."""

    codec: Codec
    request: Callable[[int, bytes], bytes]  # (request id, content) -> a request frame
    id_start: int  # where the request id sits in a request frame
    id_size: int
    ok_status: int
    body: Callable[[Frame], Any]  # the part of a response compared with ``expected`` (bytes-like)
    expected: Callable[[bytes], bytes]  # content -> what ``body`` must be


WIRES: dict[str, Wire] = {
    "bolt": Wire(
        BOLT,
        bolt_request,
        5,
        4,
        0,
        attrgetter("content"),
        lambda content: content,
    ),
    "dubbo": Wire(
        DUBBO,
        dubbo_request,
        4,
        8,
        int(dubbo_frames.Status.OK),
        lambda frame: frame.data[dubbo_frames.HEADER_LENGTH :],
        dubbo_response_body,
    ),
}


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# --- the probe (readiness and the check before load) -----------------------------------------


def probe(
    port: int, content: bytes = b"probe", timeout: float = 2.0, protocol: str = "bolt"
) -> str | None:
    """Send one request of ``protocol`` to 127.0.0.1:port and check the reply in full; None when
    it is an echo (same id, the success status, the expected body), else what was wrong."""
    wire = WIRES[protocol]
    request = wire.request(PROBE_ID, content)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            buf = b""
            while True:
                try:
                    decoded = wire.codec.decode(buf, MAX_FRAME)
                except XProtocolError as exc:
                    return f"bad reply: {exc}"
                if decoded is not None:
                    break
                chunk = s.recv(65536)
                if not chunk:
                    return f"connection closed after {len(buf)} bytes of reply"
                buf += chunk
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    frame = decoded[0]
    if not frame.is_response:
        return "reply is not a response"
    if frame.request_id != PROBE_ID:
        return f"reply id {frame.request_id}, not {PROBE_ID}"
    if frame.status != wire.ok_status:
        return f"reply status {frame.status:#06x}, not {wire.ok_status:#06x}"
    body, expected = wire.body(frame), wire.expected(content)
    if body != expected:
        return f"reply body {bytes(body)[:40]!r}, not {bytes(expected)[:40]!r}"
    return None


def rpc_status(port: int, path: str = "") -> int | None:
    """Readiness in the harness's terms (its ``wait_ready`` wants 200): 200 when the port
    answers one bolt request with its echo, else None."""
    return 200 if probe(port) is None else None


def dubbo_status(port: int, path: str = "") -> int | None:
    """:func:`rpc_status` for dubbo: 200 when the port answers one Dubbo echo call."""
    return 200 if probe(port, protocol="dubbo") is None else None


# --- the load ----------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.first_error = ""
        self.counting = True

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if not self.first_error:
            self.first_error = f"{kind}: {detail}" if detail else kind


class LoadConnection(asyncio.Protocol):
    def __init__(
        self,
        wire: Wire,
        template: bytes,
        expected: bytes,
        inflight: int,
        stats: Stats,
        offset: int,
    ) -> None:
        self.decode = wire.codec.decode
        self.body = wire.body
        self.ok_status = wire.ok_status
        self.id_size = wire.id_size
        self.head = template[: wire.id_start]
        self.tail = template[wire.id_start + wire.id_size :]
        self.expected = expected
        self.inflight = inflight
        self.stats = stats
        self.next_id = offset
        self.outstanding: dict[int, float] = {}
        self.buf = bytearray()
        self.sending = False
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _requests(self, n: int, now: float) -> bytes:
        parts = []
        head, tail, outstanding, size = self.head, self.tail, self.outstanding, self.id_size
        for _ in range(n):
            rid = self.next_id
            self.next_id = (rid + 1) & 0xFFFFFFFF
            outstanding[rid] = now
            parts += (head, rid.to_bytes(size, "big"), tail)
        return b"".join(parts)

    def start(self) -> None:
        self.sending = True
        assert self.transport is not None
        self.transport.write(self._requests(self.inflight, time.perf_counter()))

    def stop(self) -> None:
        self.sending = False

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        stats = self.stats
        outstanding = self.outstanding
        decode, body, expected, ok_status = self.decode, self.body, self.expected, self.ok_status
        answered = 0
        pos = 0
        try:
            while True:
                decoded = decode(memoryview(buf)[pos:], MAX_FRAME)
                if decoded is None:
                    break
                frame, used = decoded
                pos += used
                sent = outstanding.pop(frame.request_id, None)
                if sent is None:
                    stats.error("mismatch", f"response id {frame.request_id} not outstanding")
                    continue
                answered += 1
                if not stats.counting:
                    continue
                if frame.status != ok_status:
                    stats.error("status", f"{frame.status:#06x}")
                elif body(frame) != expected:
                    stats.error("content", f"{bytes(body(frame))[:40]!r}")
                else:
                    stats.latencies.append(now - sent)
        except XProtocolError as exc:
            stats.error("codec", str(exc))
            assert self.transport is not None
            self.transport.close()
            return
        if pos:
            del buf[:pos]
        if answered and self.sending and self.transport is not None:
            self.transport.write(self._requests(answered, now))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sending:
            self.stats.error("closed", str(exc) if exc else "by the peer")
        if not self.closed.done():
            self.closed.set_result(None)


async def run(
    port: int,
    connections: int,
    inflight: int,
    duration: float,
    size: int,
    grace: float = 2.0,
    protocol: str = "bolt",
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    wire = WIRES[protocol]
    content = payload(size)
    template = wire.request(0, content)
    expected = wire.expected(content)
    stats = Stats()
    conns: list[LoadConnection] = []
    for i in range(connections):
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda i=i: LoadConnection(wire, template, expected, inflight, stats, i << 24),
                    "127.0.0.1",
                    port,
                ),
                5.0,
            )
        except (OSError, TimeoutError) as exc:
            stats.error("connect", f"{type(exc).__name__}: {exc}")
            continue
        conns.append(proto)
    started = time.perf_counter()
    for c in conns:
        c.start()
    await asyncio.sleep(duration)
    stats.counting = False
    seconds = time.perf_counter() - started
    for c in conns:
        c.stop()
    # Let the requests in flight drain (their answers are checked, not counted) before closing.
    deadline = time.perf_counter() + grace
    while any(c.outstanding for c in conns) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    unanswered = sum(len(c.outstanding) for c in conns)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    if conns:
        await asyncio.wait([c.closed for c in conns], timeout=1.0)
    lat = sorted(stats.latencies)
    n = len(lat)
    return {
        "requests": n,
        "seconds": round(seconds, 3),
        "rps": round(n / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(_percentile(lat, 50) * 1e3, 3) if n else None,
        "p99_ms": round(_percentile(lat, 99) * 1e3, 3) if n else None,
        "max_ms": round(lat[-1] * 1e3, 3) if n else None,
        "errors": sum(stats.errors.values()) + unanswered,
        "extra": {
            **{f"errors_{k}": v for k, v in sorted(stats.errors.items())},
            "unanswered_after_grace": unanswered,
            "connections": len(conns),
            "inflight_per_connection": inflight,
            "payload_bytes": size,
            "protocol": protocol,
            **({"first_error": stats.first_error} if stats.first_error else {}),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bolt_load", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="127.0.0.1:PORT")
    parser.add_argument("-c", "--connections", type=int, default=10)
    parser.add_argument("-m", "--inflight", type=int, default=10, help="per connection")
    parser.add_argument("-d", "--duration", type=float, default=4.0, help="seconds")
    parser.add_argument("--payload", type=int, default=64, help="request content bytes (64)")
    parser.add_argument("--protocol", choices=sorted(WIRES), default="bolt", help="(bolt)")
    args = parser.parse_args(argv)
    if min(args.connections, args.inflight) < 1 or args.duration <= 0 or args.payload < 0:
        parser.error("-c and -m must be >= 1, -d > 0, --payload >= 0")
    result = asyncio.run(
        run(
            args.port,
            args.connections,
            args.inflight,
            args.duration,
            args.payload,
            protocol=args.protocol,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
