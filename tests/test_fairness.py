"""Fairness (issue 14, finding 2): a connection that floods the proxy with work that makes
no output must not starve the others. The flood comes from another process (in this one it
would stop whenever the proxy does not yield, and prove nothing); a normal client on another
listener of the same event loop must complete 100 requests while the flood provably goes on.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import trio

from . import bolt_frames
from .http_helpers import closed_port, http_config, request, start_proxy

FLOODER = r"""
import socket, sys, time
port, preface, chunk = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
sock = socket.create_connection(("127.0.0.1", port))
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
        self.changed = trio.Condition()

    async def follow(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while data := await self.proc.stdout.receive_some(4096):
            buf += data
            *lines, buf = buf.split(b"\n")
            if lines:
                async with self.changed:
                    self.writes = int(lines[-1])
                    self.changed.notify_all()
        raise AssertionError("the flooder stopped (cut by the proxy, or its 60 s were up)")

    async def beyond(self, writes: int) -> None:
        async with self.changed:
            while self.writes <= writes:
                await self.changed.wait()


@pytest.mark.parametrize("flood", list(FLOODS))
async def test_a_flood_does_not_starve_another_listener(nursery: trio.Nursery, flood: str) -> None:
    routes, proxy, preface, chunk = FLOODS[flood]
    clusters = {"up": closed_port()}  # nothing of the flood goes upstream
    _, flood_port = await start_proxy(nursery, http_config(routes, clusters, proxy))
    _, port = await start_proxy(nursery, http_config(DIRECT, {}))
    with trio.fail_after(90):  # a safety net only: a starved client never gets there
        argv = [sys.executable, "-c", FLOODER, str(flood_port), preface.hex(), chunk.hex()]
        proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
        try:
            async with trio.open_nursery() as watch:
                progress = _Progress(proc)
                watch.start_soon(progress.follow)
                await progress.beyond(0)  # the flood is under way
                for _ in range(100):
                    response = await request(port, HTTP_GET)
                    assert (response.status, response.body) == (200, b"ok")
                # ... and still going: the flooder is alive, its connection open, and the
                # proxy keeps taking its writes
                done_at = progress.writes
                await progress.beyond(done_at + 10)
                assert proc.poll() is None
                watch.cancel_scope.cancel()
        finally:
            proc.kill()
            await proc.wait()
