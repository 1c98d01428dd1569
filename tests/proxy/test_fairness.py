"""Fairness (issue 14, finding 2): a connection that floods the proxy with work that makes
no output must not starve the others. The flood comes from another process (in this one it
would stop whenever the proxy does not yield, and prove nothing); a normal client on another
listener of the same event loop must complete 100 requests while the flood provably goes on.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests import bolt_frames
from tests.http_helpers import closed_port, http_config, request, start_proxy

# argv: the proxy's port (a client flooding it), or "serve" (an upstream that floods the
# proxy's pooled connection once the proxy sends it something); the preface; the chunk
FLOODER = r"""
import socket, sys, time
where, preface, chunk = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
if where == "serve":
    listener = socket.create_server(("127.0.0.1", 0))
    print("port", listener.getsockname()[1], flush=True)
    sock, _ = listener.accept()
    sock.recv(65536)
else:
    sock = socket.create_connection(("127.0.0.1", int(where)))
sock.sendall(preface)
sent = 0
# a proxy that never yields cannot even fire the test's fail_after: the flood ends by itself
stop = time.monotonic() + 60
while time.monotonic() < stop:
    sock.sendall(chunk)
    sent += 1
    print(sent, flush=True)
"""

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
# PRIORITY on stream 1 (depends on 0, weight 16): decoded, answered by nothing
H2_PRIORITY = bytes.fromhex("0000050200000000010000000010")
DIRECT = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "ok"}}]
ANY_SERVICE = [
    {
        "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
        "route": {"cluster_name": "up"},
    }
]
FLOODS: dict[str, tuple[list[dict[str, Any]], dict[str, Any], bytes, bytes]] = {
    # the PRIORITY limit would cut this flood at once: raised, to see the scheduling alone
    "http2-priority": (
        DIRECT,
        {
            "downstream_protocol": "Http2",
            "upstream_protocol": "Http2",
            "http2": {"max_inbound_priority_frames_per_stream": 10**9},
        },
        H2_PREFACE,
        H2_PRIORITY * 2000,
    ),
    # bolt responses sent to the proxy: decoded, and dropped (a client does not answer us)
    "bolt-responses": (
        ANY_SERVICE,
        {"downstream_protocol": "bolt"},
        b"",
        bolt_frames.SERVER_RESPONSE * 400,
    ),
}

HTTP_GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


class _Progress:
    """The flooder's write count, read off its stdout as it goes."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.writes = 0
        self.port = 0  # the upstream flooder's listening port
        self.changed = trio.Condition()

    async def follow(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while data := await self.proc.stdout.receive_some(4096):
            buf += data
            *lines, buf = buf.split(b"\n")
            async with self.changed:
                for line in lines:
                    if line.startswith(b"port "):
                        self.port = int(line[5:])
                    else:
                        self.writes = int(line)
                self.changed.notify_all()
        raise AssertionError("the flooder stopped (cut by the proxy, or its 60 s were up)")

    async def listening(self) -> int:
        async with self.changed:
            while not self.port:
                await self.changed.wait()
        return self.port

    async def beyond(self, writes: int) -> None:
        async with self.changed:
            while self.writes <= writes:
                await self.changed.wait()


async def _served_meanwhile(progress: _Progress, port: int) -> None:
    """100 requests on ``port`` while the flood goes on, and it still goes on after them."""
    await progress.beyond(0)  # the flood is under way
    for _ in range(100):
        response = await request(port, HTTP_GET)
        assert (response.status, response.body) == (200, b"ok")
    # ... and still going: the flooder is alive, its connection open, and the proxy keeps
    # taking its writes
    await progress.beyond(progress.writes + 10)
    assert progress.proc.poll() is None


@contextlib.asynccontextmanager
async def _flooder(where: str, preface: bytes, chunk: bytes) -> AsyncIterator[_Progress]:
    argv = [sys.executable, "-c", FLOODER, where, preface.hex(), chunk.hex()]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
    try:
        async with trio.open_nursery() as watch:
            progress = _Progress(proc)
            watch.start_soon(progress.follow)
            yield progress
            watch.cancel_scope.cancel()
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize("flood", list(FLOODS))
async def test_a_client_flood_does_not_starve_another_listener(
    nursery: trio.Nursery, flood: str
) -> None:
    routes, proxy, preface, chunk = FLOODS[flood]
    clusters = {"up": closed_port()}  # nothing of the flood goes upstream
    _, flood_port = await start_proxy(nursery, http_config(routes, clusters, proxy))
    _, port = await start_proxy(nursery, http_config(DIRECT, {}))
    with trio.fail_after(90):  # a safety net only: a starved client never gets there
        async with _flooder(str(flood_port), preface, chunk) as progress:
            await _served_meanwhile(progress, port)


async def test_an_upstream_flood_does_not_starve_another_listener(nursery: trio.Nursery) -> None:
    """A bolt upstream that answers one request with endless responses nobody asked for: the
    pool's reader decodes and drops them."""
    _, port = await start_proxy(nursery, http_config(DIRECT, {}))
    with trio.fail_after(90):
        async with _flooder("serve", b"", bolt_frames.SERVER_RESPONSE * 400) as progress:
            up = await progress.listening()
            bolt = {"downstream_protocol": "bolt"}
            _, bolt_port = await start_proxy(nursery, http_config(ANY_SERVICE, {"up": up}, bolt))
            client = await trio.open_tcp_stream("127.0.0.1", bolt_port)
            async with client:
                await client.send_all(bolt_frames.CLIENT_REQUEST)  # opens the pooled conn
                await _served_meanwhile(progress, port)
