"""trio-floor-h1: the least a correct keep-alive HTTP/1.1 relay does, on trio-mesh's runtime.

One upstream connection per downstream connection, no routing, httptools on both sides, the
same socket ``Stream``. Requests go up one at a time, in order; heads are rebuilt from the
parse with the relay's own framing (Content-Length or chunked) and without hop-by-hop fields.
Out of scope: upgrades and CONNECT (501), timeouts, answering ``Expect: 100-continue`` (the
upstream's 100 is relayed once the body is in). ``python -m bench.floor_h1 --port P
--upstream HOST:PORT``.
"""

from __future__ import annotations

import functools

import httptools
import trio

from trio_mesh.network.stream import Stream

from .floor_net import Address, connect, main, serve

_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
_FRAMING = {b"content-length", b"transfer-encoding"}
_YIELD_EVERY = 16  # reads of data always ready between checkpoints: others must get a turn
_REPLY = "HTTP/1.1 {} x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Message:
    __slots__ = ("data", "complete", "head_only", "keep_alive")

    def __init__(self) -> None:
        self.data = bytearray()  # re-framed bytes not yet forwarded
        self.complete = False
        self.head_only = False  # a HEAD request: its response has no body
        self.keep_alive = True


class _Side:
    """One direction's httptools callbacks: each message re-framed into a ``_Message``."""

    def __init__(self, request: bool) -> None:
        self.request = request
        self.parser = (httptools.HttpRequestParser if request else httptools.HttpResponseParser)(
            self
        )
        self.messages: list[_Message] = []
        self.head_only = False  # responses: the request was a HEAD
        self.url = self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.chunked = self.eof_body = False

    def on_message_begin(self) -> None:
        self.messages.append(_Message())
        self.url = self.reason = b""
        self.fields = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p, msg = self.parser, self.messages[-1]
        drop, length = _HOP | _FRAMING, b""
        for name, value in self.fields:  # a Connection field names more hop-by-hop fields
            if name == b"connection":
                drop = drop | {t.strip().lower() for t in value.split(b",")}
            elif name == b"content-length":
                length = value
        self.chunked = any(n == b"transfer-encoding" for n, _ in self.fields)
        msg.keep_alive = p.should_keep_alive()
        if self.request:
            method = p.get_method()
            msg.head_only = method == b"HEAD"
            head = [method, b" ", self.url, b" HTTP/1.1\r\n"]
        else:
            status = p.get_status_code()
            self.eof_body = not (self.chunked or length or self.head_only or status in (204, 304))
            self.eof_body = self.eof_body and status >= 200
            head = [b"HTTP/1.1 %d " % status, self.reason, b"\r\n"]
        for name, value in self.fields:
            if name not in drop:
                head += (name, b": ", value, b"\r\n")
        if self.chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        elif length:
            head += (b"content-length: ", length, b"\r\n")
        if not msg.keep_alive or self.eof_body:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        msg.data += b"".join(head)
        if self.head_only:
            msg.complete = True  # llhttp cannot know the response to a HEAD has no body

    def on_body(self, body: bytes) -> None:
        data = self.messages[-1].data
        data += b"%x\r\n%b\r\n" % (len(body), body) if self.chunked else body

    def on_message_complete(self) -> None:
        msg = self.messages[-1]
        if self.chunked:
            msg.data += b"0\r\n\r\n"
        if self.request or self.parser.get_status_code() >= 200:  # 1xx: the final one follows
            msg.complete = True


async def relay(upstream: Address, down: Stream) -> None:
    up = await connect(upstream)
    try:
        requests, responses = _Side(request=True), _Side(request=False)
        while True:
            if requests.messages:  # a request body in flight
                data = await down.receive_some()
            else:  # nothing sent ahead: wait for it instead of failing a recv
                data = await down.receive_after_wait()
            if not data:
                return
            try:
                requests.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                return await down.send_all(_REPLY.format(501).encode())
            except httptools.HttpParserError:
                return await down.send_all(_REPLY.format(400).encode())
            while requests.messages:
                msg = requests.messages[0]
                if msg.data:
                    await up.send_all(msg.data)
                    msg.data.clear()
                if not msg.complete:
                    break
                del requests.messages[0]
                if not await _response(up, down, responses, msg) or not msg.keep_alive:
                    return
    finally:
        up.close()


async def _response(up: Stream, down: Stream, side: _Side, request: _Message) -> bool:
    """Relay the response to ``request``; whether the connection can carry another."""
    side.messages.clear()
    side.head_only = request.head_only
    sent = False
    reads = 0
    while not side.messages or not side.messages[-1].complete:
        data = await (up.receive_some() if reads else up.receive_after_wait())
        reads += 1
        if reads % _YIELD_EVERY == 0:
            await trio.lowlevel.checkpoint()
        if not data:
            if not sent:
                await down.send_all(_REPLY.format(502).encode())
            return False  # a close-delimited body ends here, and so does the connection
        try:
            side.parser.feed_data(data)
        except httptools.HttpParserError:
            if not sent:
                await down.send_all(_REPLY.format(502).encode())
            return False
        for msg in side.messages:
            if msg.data:
                await down.send_all(msg.data)
                msg.data.clear()
                sent = True
    if side.head_only:  # llhttp still waits for a body: a fresh parser for the next one
        side.parser = httptools.HttpResponseParser(side)
    return side.messages[-1].keep_alive and not side.eof_body


async def run(
    port: int, upstream: Address, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    await serve(port, functools.partial(relay, upstream), task_status=task_status)


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
