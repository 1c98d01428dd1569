"""Raw RPC peers on real sockets, shared by the proxy, filter and cluster tests: a bolt client
(``DubboPeer`` for Dubbo), a bolt echo upstream, a Dubbo provider that decodes the real hessian2
arguments, and a route that takes any service."""

from __future__ import annotations

import random

import trio

from tests import bolt_frames as frames
from tests.http_helpers import start_raw_server
from trio_mesh.protocols.xprotocol import Codec, Frame
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT, BoltFrame
from trio_mesh.protocols.xprotocol.dubbo import DUBBO, DubboFrame
from trio_mesh.protocols.xprotocol.hessian2 import Hessian2Reader, encode_long, encode_string

ANY_SERVICE = [
    {
        "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
        "route": {"cluster_name": "up"},
    }
]


class BoltClient:
    """A raw RPC client on a trio stream (bolt unless ``codec`` says otherwise): send frames,
    read decoded frames."""

    codec: Codec = BOLT

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int) -> BoltClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, frame: Frame) -> None:
        await self.stream.send_all(bytes(frame.data))

    async def read(self):
        while True:
            decoded = self.codec.decode(self.buf)
            if decoded is not None:
                frame, used = decoded
                del self.buf[:used]
                return frame
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("peer closed")
            self.buf += data


def request(rid: int, body: bytes, service: str = frames.SERVICE, **kw) -> BoltFrame:
    return BOLT.build_request(
        rid, {"service": service, "sofa_head_method_name": "echo"}, body, codec=11, **kw
    )


async def echo_upstream(
    nursery, *, shuffle: bool = False, delay: float = 0.0, seen=None, oneway_seen=None
):
    """A raw bolt server answering each request with its own content (``shuffle``: answers
    held back and sent in a random order, to show ids, not order, match them up; held ones
    go whenever no request is left unread, so every request is answered)."""

    async def handler(stream: trio.SocketStream) -> None:
        peer = BoltClient(stream)
        held: list[BoltFrame] = []
        try:
            while True:
                frame = await peer.read()
                if seen is not None:
                    seen.append(frame)
                if frame.is_heartbeat:
                    await stream.send_all(bytes(BOLT.heartbeat_reply(frame).data))
                    continue
                if frame.is_oneway:
                    if oneway_seen is not None:
                        oneway_seen.set()
                    continue
                if delay:
                    await trio.sleep(delay)
                content = b"echo:" + bytes(frame.content)
                resp = BOLT.build_response(frame.request_id, 0, content=content)
                if not shuffle:
                    await stream.send_all(bytes(resp.data))
                    continue
                held.append(resp)
                if len(held) >= 7 or BOLT.decode(peer.buf) is None:
                    random.shuffle(held)
                    await stream.send_all(b"".join(bytes(r.data) for r in held))
                    held.clear()
        except (EOFError, trio.BrokenResourceError):
            pass

    return await start_raw_server(nursery, handler)


def arguments(frame: DubboFrame) -> list:
    """The call's arguments, decoded by the hessian2 reader (the provider's view)."""
    body = bytes(frame.data[df.HEADER_LENGTH :])
    r = Hessian2Reader(body)
    for _ in range(5):  # dubbo version, path, version, method, parameter types
        r.read()
    return [r.read() for _ in range(frame.request.argument_count)]


async def provider(nursery, name: str = "p", *, delay: float = 0.0, calls=None) -> int:
    """A Dubbo provider: sayHello(s) -> "hello s from NAME", add(a, b, ...) -> the sum."""

    async def serve(stream: trio.SocketStream) -> None:
        buf = bytearray()
        try:
            while True:
                decoded = DUBBO.decode(buf)
                if decoded is None:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                    continue
                frame, used = decoded
                del buf[:used]
                if frame.is_heartbeat:
                    await stream.send_all(df.heartbeat_response(frame.request_id))
                    continue
                if calls is not None:
                    calls.append(frame)
                args = arguments(frame)
                if delay:
                    await trio.sleep(delay)
                method = frame.request.method_name
                if method == "sayHello":
                    value = encode_string(f"hello {args[0]} from {name}")
                elif method == "add":
                    value = encode_long(sum(args))
                else:
                    await stream.send_all(
                        df.error_response(frame.request_id, df.Status.SERVICE_ERROR, "no method")
                    )
                    continue
                await stream.send_all(df.value_response(frame.request_id, value))
        except trio.BrokenResourceError:
            pass

    return await start_raw_server(nursery, serve)


class DubboPeer(BoltClient):
    codec = DUBBO
