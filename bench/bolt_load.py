"""A SOFA bolt load generator: ``python -m bench.bolt_load --port PORT [-c 10] [-m 10] [-d 4]``.

Like ``h2load -c C -m M -D D``: C connections to 127.0.0.1:PORT, each keeping M requests in
flight (a new one is sent as each response arrives), for D seconds; then prints one JSON object
on stdout: ``requests`` (responses received within D), ``seconds``, ``rps``, ``p50_ms``,
``p99_ms``, ``max_ms`` (per-request latency, from the request's write to its response's read,
so it includes waiting behind the other M-1 requests of the connection), ``errors`` and
``extra`` (the kinds of error, requests left unanswered at the end).

Every response must carry the request id of a request outstanding on that connection, status
SUCCESS and exactly the request's content; anything else is counted as an error (a response
whose id matches nothing outstanding is a ``mismatch``). Requests are v1 bolt (hessian2 codec
field 11 here is irrelevant: the echo server does not deserialize), built once with
``BOLT.build_request`` and copied with the request id patched in at bytes 5..8.

Also :func:`probe` (one request, synchronous, with a socket timeout) and :func:`rpc_status`,
the readiness check the harness uses for bolt contenders.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import sys
import time

from trio_mesh.protocols.xprotocol.base import XProtocolError
from trio_mesh.protocols.xprotocol.bolt import BOLT

SERVICE = "com.alipay.bench.EchoService:1.0"
HEADERS = {"service": SERVICE, "sofa_head_method_name": "echo"}
MAX_FRAME = 16 * 1024 * 1024
PROBE_ID = 7


def payload(size: int) -> bytes:
    return (b"trio-mesh bolt echo " * (size // 20 + 1))[:size]


def request_template(content: bytes) -> bytes:
    return bytes(BOLT.build_request(0, HEADERS, content, codec=11).data)


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# --- the probe (readiness and the check before load) -----------------------------------------


def probe(port: int, content: bytes = b"probe", timeout: float = 2.0) -> str | None:
    """Send one bolt request to 127.0.0.1:port and check the reply in full; None when it is an
    echo (same id, status SUCCESS, same content), else what was wrong."""
    request = bytes(BOLT.build_request(PROBE_ID, HEADERS, content, codec=11).data)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            buf = b""
            while True:
                try:
                    decoded = BOLT.decode(buf, MAX_FRAME)
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
    if frame.status != 0:
        return f"reply status {frame.status:#06x}, not SUCCESS"
    if bytes(frame.content) != content:
        return f"reply content {bytes(frame.content)[:40]!r}, not {content!r}"
    return None


def rpc_status(port: int, path: str = "") -> int | None:
    """Readiness in the harness's terms (its ``wait_ready`` wants 200): 200 when the port
    answers one bolt request with its echo, else None."""
    return 200 if probe(port) is None else None


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
        self, template: bytes, content: bytes, inflight: int, stats: Stats, offset: int
    ) -> None:
        self.head = template[:5]
        self.tail = template[9:]
        self.content = content
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
        head, tail, outstanding = self.head, self.tail, self.outstanding
        for _ in range(n):
            rid = self.next_id
            self.next_id = (rid + 1) & 0xFFFFFFFF
            outstanding[rid] = now
            parts += (head, rid.to_bytes(4, "big"), tail)
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
        content = self.content
        answered = 0
        pos = 0
        try:
            while True:
                decoded = BOLT.decode(memoryview(buf)[pos:], MAX_FRAME)
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
                if frame.status != 0:
                    stats.error("status", f"{frame.status:#06x}")
                elif frame.content != content:
                    stats.error("content", f"{bytes(frame.content)[:40]!r}")
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
    port: int, connections: int, inflight: int, duration: float, size: int, grace: float = 2.0
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    content = payload(size)
    template = request_template(content)
    stats = Stats()
    conns: list[LoadConnection] = []
    for i in range(connections):
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda i=i: LoadConnection(template, content, inflight, stats, i << 24),
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
    args = parser.parse_args(argv)
    if min(args.connections, args.inflight) < 1 or args.duration <= 0 or args.payload < 0:
        parser.error("-c and -m must be >= 1, -d > 0, --payload >= 0")
    result = asyncio.run(
        run(args.port, args.connections, args.inflight, args.duration, args.payload)
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
