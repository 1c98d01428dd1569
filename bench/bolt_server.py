"""An RPC echo server for the benchmark: ``python -m bench.bolt_server --port PORT
[--protocol bolt|dubbo]``.

``bolt`` (the default): plain asyncio (one process, one thread, ``asyncio.Protocol``): every
request frame is answered with a response (status SUCCESS) carrying the same request id, codec
and content; heartbeats get bolt's heartbeat reply; oneway requests get nothing. Framing is the
project's codec (``BOLT.decode``); responses come from a template per (codec, content), built
once with ``BOLT.build_response`` and copied with the request id patched in (bytes 5..8 of a v1
response), so the server spends its time on the wire, not on building frames. v2 requests are
answered with ``BOLT.build_response`` each time (the load generator sends v1).

``dubbo``: the same loop for Apache Dubbo. Framing by the header alone
(``dubbo_frames.parse_header``, 16 bytes, the body length at 12..15); each two-way invocation is
answered status OK with a value response of its first argument (a hessian2 string; a null value
when the first argument is not a string) under the same request id (8 bytes at 4..11).
Responses come from a template per request body: a body seen before is not decoded again, a new
one is read with the project's hessian2 reader (the five header strings, then the argument) and
answered with ``value_response(rid, encode_string(argument))``. Heartbeats get
``heartbeat_response``; other events, oneway calls and responses get nothing.

Listens on 127.0.0.1 only. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.base import XProtocolError
from trio_mesh.protocols.xprotocol.bolt import BOLT, BoltFrame
from trio_mesh.protocols.xprotocol.hessian2 import Hessian2Error, Hessian2Reader, encode_string

MAX_FRAME = 16 * 1024 * 1024
_TEMPLATES: dict[tuple[int, bytes], bytes] = {}
_MAX_TEMPLATES = 256


def _response(frame: BoltFrame) -> bytes:
    rid = frame.request_id
    if frame.version != 1:
        return bytes(
            BOLT.build_response(
                rid,
                content=bytes(frame.content),
                codec=frame.codec,
                version=frame.version,
                ver1=frame.ver1,
                switch=frame.switch,
            ).data
        )
    key = (frame.codec, bytes(frame.content))
    template = _TEMPLATES.get(key)
    if template is None:
        template = bytes(BOLT.build_response(0, content=key[1], codec=key[0]).data)
        if len(_TEMPLATES) < _MAX_TEMPLATES:
            _TEMPLATES[key] = template
    return b"".join((template[:5], rid.to_bytes(4, "big"), template[9:]))


class EchoProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        pos = 0
        try:
            while True:
                decoded = BOLT.decode(memoryview(buf)[pos:], MAX_FRAME)
                if decoded is None:
                    break
                frame, used = decoded
                pos += used
                if frame.heartbeat:
                    out.append(bytes(BOLT.heartbeat_reply(frame).data))
                elif frame.is_request:
                    out.append(_response(frame))
                # oneway requests: no answer; responses from a client: ignored
        except XProtocolError:
            assert self.transport is not None
            self.transport.close()
            return
        if pos:
            del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


_DUBBO_TEMPLATES: dict[bytes, bytes] = {}
_DUBBO_ANSWERED = df.FLAG_REQUEST | df.FLAG_TWO_WAY


def _dubbo_response(rid: int, body: bytes) -> bytes:
    template = _DUBBO_TEMPLATES.get(body)
    if template is None:
        r = Hessian2Reader(body, max_bytes=len(body))
        for _ in range(5):  # dubbo version, service path, service version, method, types
            r.read_string_or_none()
        argument = None if r.at_end else r.read()
        value = encode_string(argument) if isinstance(argument, str) else None
        template = df.value_response(0, value)
        if len(_DUBBO_TEMPLATES) < _MAX_TEMPLATES:
            _DUBBO_TEMPLATES[body] = template
    return b"".join((template[:4], rid.to_bytes(8, "big"), template[12:]))


class DubboEchoProtocol(EchoProtocol):
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        pos = 0
        end = len(buf)
        header_length = df.HEADER_LENGTH
        try:
            while end - pos >= header_length:
                header = df.parse_header(buf, pos)
                assert header is not None
                size = header_length + header.body_length
                if end - pos < size:
                    break
                flag = header.flag
                if flag & _DUBBO_ANSWERED == _DUBBO_ANSWERED:
                    body = bytes(buf[pos + header_length : pos + size])
                    if flag & df.FLAG_EVENT:
                        if df.is_heartbeat(header, body):
                            out.append(df.heartbeat_response(header.request_id))
                    else:
                        out.append(_dubbo_response(header.request_id, body))
                pos += size
        except (df.DubboFrameError, Hessian2Error):
            assert self.transport is not None
            self.transport.close()
            return
        if pos:
            del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


PROTOCOLS: dict[str, type[asyncio.Protocol]] = {"bolt": EchoProtocol, "dubbo": DubboEchoProtocol}


async def serve(port: int, protocol: str = "bolt") -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(PROTOCOLS[protocol], "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bolt_server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="bolt", help="(bolt)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.protocol))


if __name__ == "__main__":
    main()
