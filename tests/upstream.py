"""A real HTTP/1.1 upstream for the proxy's tests, on h11 (a different parser from ours).

The path picks the behaviour:
  /echo...            200, JSON of what arrived: method, target, headers, body length and hash
  /status/NNN         that status, short body
  /bytes/N            N bytes with Content-Length, written in 64 KiB pieces
  /chunked/N          N bytes, chunked
  /close-delimited/N  N bytes, no length: ends with the connection
  /slow/SECONDS       waits, then 200 (for timeouts)
  /flaky/KEY/N        503 for the first N requests with this KEY, then 200
  /hangup             closes the connection without a response
  /reset-mid-body     head with Content-Length 100000, some bytes, then an RST
  /malformed          bytes that are not HTTP
  /ws                 101 Switching Protocols, then echoes raw bytes
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import struct
from collections import Counter

import h11
import trio


class Upstream:
    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        #: Set (and replaced) whenever a connection closes.
        self.closed_event = trio.Event()
        self.requests: list[dict] = []
        #: The client port of each request's connection: which upstream connection served it.
        self.request_peers: list[int] = []
        self.flaky: Counter[str] = Counter()
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), self._serve, 0
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        peer = stream.socket.getpeername()[1]
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next(conn, stream)
                if request is None:
                    return
                body = hashlib.sha256()
                length = 0
                while True:
                    event = await self._next(conn, stream)
                    if isinstance(event, h11.Data):
                        body.update(event.data)
                        length += len(event.data)
                    elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                        break  # PAUSED: an Upgrade request, the rest is the tunnel's
                    elif event is None:
                        return
                info = {
                    "method": request.method.decode(),
                    "target": request.target.decode(),
                    "headers": [[n.decode(), v.decode()] for n, v in request.headers],
                    "body_length": length,
                    "body_sha256": body.hexdigest(),
                }
                self.requests.append(info)
                self.request_peers.append(peer)
                if not await self._respond(conn, stream, request, info):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            stream.socket.close()
            self.closed += 1
            self.closed_event.set()
            self.closed_event = trio.Event()

    async def _next(self, conn: h11.Connection, stream: trio.SocketStream):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA and conn.their_state is not h11.SWITCHED_PROTOCOL:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            return event

    async def _respond(self, conn, stream, request, info) -> bool:
        path = request.target.decode().split("?")[0]
        parts = path.strip("/").split("/")
        send = stream.send_all

        def head(status, headers=()):
            return conn.send(h11.Response(status_code=status, headers=list(headers)))

        if parts[0] == "status":
            status = int(parts[1])
            body = b"status %d\n" % status
            if status in (204, 304) or status < 200:
                await send(head(status))
            else:
                await send(
                    head(status, [("content-length", str(len(body)))]) + conn.send(h11.Data(body))
                )
            await send(conn.send(h11.EndOfMessage()))
        elif parts[0] in ("bytes", "chunked", "close-delimited"):
            n = int(parts[1])
            headers = [("content-length", str(n))] if parts[0] == "bytes" else []
            if parts[0] == "close-delimited":
                # h11 would chunk for an HTTP/1.1 client: write the bytes by hand instead.
                await send(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                await _send_pattern(send, n)
                return False
            await send(head(200, headers))
            await _send_pattern(lambda d: send(conn.send(h11.Data(d))), n)
            await send(conn.send(h11.EndOfMessage()))
        elif parts[0] == "slow":
            await trio.sleep(float(parts[1]))
            await send(head(200, [("content-length", "5")]) + conn.send(h11.Data(b"slow\n")))
            await send(conn.send(h11.EndOfMessage()))
        elif parts[0] == "flaky":
            self.flaky[parts[1]] += 1
            status = 503 if self.flaky[parts[1]] <= int(parts[2]) else 200
            body = b"try %d\n" % self.flaky[parts[1]]
            await send(
                head(status, [("content-length", str(len(body)))]) + conn.send(h11.Data(body))
            )
            await send(conn.send(h11.EndOfMessage()))
        elif parts[0] == "hangup":
            return False
        elif parts[0] == "reset-mid-body":
            await send(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        elif parts[0] == "malformed":
            await send(b"this is not http\r\n\r\n")
            return False
        elif parts[0] == "ws":
            await send(
                b"HTTP/1.1 101 Switching Protocols\r\n"
                b"upgrade: websocket\r\nconnection: upgrade\r\n\r\n"
            )
            tail, _ = conn.trailing_data
            if tail:
                await send(tail)
            while data := await stream.receive_some(65536):
                await send(data)
            return False
        else:
            body = json.dumps(info).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
            await send(head(200, headers) + conn.send(h11.Data(body)))
            await send(conn.send(h11.EndOfMessage()))
        return True


_PATTERN = bytes(range(256)) * 256  # 64 KiB


async def _send_pattern(send, n: int) -> None:
    while n > 0:
        piece = _PATTERN[: min(n, len(_PATTERN))]
        await send(piece)
        n -= len(piece)


def pattern_bytes(n: int) -> bytes:
    """What /bytes/N, /chunked/N and /close-delimited/N send."""
    return (_PATTERN * (n // len(_PATTERN) + 1))[:n]
