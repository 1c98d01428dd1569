"""trio-floor-h2: the least a correct h2c relay does, on trio-mesh's runtime and h2 library.

h2c (prior knowledge) on both sides, every client's streams on one shared upstream
connection (as a mesh's pool would), one task per stream with a bounded channel fed by the
two connection readers, no routing. Headers, data and trailers are forwarded as h2 parsed
and validated them, data within both peers' flow-control windows (received data is
acknowledged once forwarded). ``python -m bench.floor_h2 --port P --upstream HOST:PORT``.
"""

from __future__ import annotations

import functools
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events as ev
import h2.exceptions
import trio

from trio_mesh.network.stream import Stream

from .floor_net import Address, connect, main, serve

_YIELD_EVERY = 16  # reads of data always ready between checkpoints: others must get a turn
_STREAM_EVENTS = 16  # per-stream channel: a full one stops its connection's reader
_DOWN, _UP = False, True  # which connection an event came from


class _Side:
    """One h2 connection and its socket. Tasks that made frames ``wake`` the side's writer,
    which runs after them and sends all their frames in one write."""

    def __init__(self, stream: Stream, client: bool) -> None:
        config = h2.config.H2Configuration(
            client_side=client,
            header_encoding=None,
            validate_outbound_headers=False,  # what goes out was validated coming in
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.stream = stream
        self.dirty = trio.Event()
        self.window = trio.Event()  # set (and replaced) when the peer opens a window

    def wake(self) -> None:
        self.dirty.set()

    async def writer(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty = trio.Event()
            while data := self.h2.data_to_send():
                await self.stream.send_all(data)

    def opened(self) -> None:
        self.window.set()
        self.window = trio.Event()

    async def send_data(self, sid: int, data: bytes) -> None:
        while data:
            n = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if n <= 0:
                self.wake()
                await self.window.wait()
                continue
            self.h2.send_data(sid, data[:n])
            data = data[n:]


async def _stream(down: _Side, up: _Side, did: int, uid: int, up_ended: bool, receive: Any) -> None:
    """One stream: the request's remaining events up, the response's down, until the
    response ends or either side resets the stream."""
    ended = {_UP: up_ended, _DOWN: False}  # whether the stream toward that side has ended
    async with receive:
        while True:
            try:  # what is queued without a yield per event (trio's receive() checkpoints)
                source, event = receive.receive_nowait()
            except trio.WouldBlock:
                source, event = await receive.receive()
            to, sid, frm, fsid = (up, uid, down, did) if source is _DOWN else (down, did, up, uid)
            target = not source
            if isinstance(event, ev.ResponseReceived | ev.TrailersReceived):
                end = event.stream_ended is not None
                to.h2.send_headers(sid, event.headers, end_stream=end)
                ended[target] = end
            elif isinstance(event, ev.DataReceived):
                await to.send_data(sid, event.data)
                frm.h2.acknowledge_received_data(event.flow_controlled_length, fsid)
                frm.wake()
            elif isinstance(event, ev.StreamEnded) and not ended[target]:
                to.h2.end_stream(sid)
                ended[target] = True
            elif isinstance(event, ev.StreamReset):
                to.h2.reset_stream(sid, event.error_code)
                to.wake()
                return
            to.wake()
            if source is _UP and isinstance(event, ev.StreamEnded):
                return


async def _read(side: _Side, source: bool, routes: dict[int, Any], on_new: Any) -> None:
    """A connection's reader: events to their stream's channel, new requests to ``on_new``."""
    reads = 0
    while data := await side.stream.receive_some():
        reads += 1
        if reads % _YIELD_EVERY == 0:
            await trio.lowlevel.checkpoint()
        try:
            events = side.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            return await side.stream.send_all(side.h2.data_to_send())  # h2's GOAWAY
        for event in events:
            if isinstance(event, ev.RequestReceived):
                await on_new(event)
            elif isinstance(event, ev.WindowUpdated | ev.RemoteSettingsChanged):
                side.opened()
            elif isinstance(event, ev.ConnectionTerminated):
                return
            elif (sid := getattr(event, "stream_id", None)) is not None:
                try:  # trio's send() checkpoints: only when the channel is full
                    try:
                        routes[sid].send_nowait((source, event))
                    except trio.WouldBlock:
                        await routes[sid].send((source, event))
                except (KeyError, trio.BrokenResourceError, trio.ClosedResourceError):
                    if isinstance(event, ev.DataReceived):  # its stream is done: free window
                        side.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        if side.h2._data_to_send:  # settings ACKs, pings, window updates (private: no peek)
            side.wake()


async def relay(up: _Side, by_up: dict[int, Any], stream: Stream) -> None:
    """One client connection; its streams go over the shared upstream connection ``up``."""
    down = _Side(stream, client=False)
    by_down: dict[int, Any] = {}
    async with trio.open_nursery() as nursery:

        async def on_request(event: ev.RequestReceived) -> None:
            did, end = event.stream_id, event.stream_ended is not None
            try:
                uid = up.h2.get_next_available_stream_id()
                up.h2.send_headers(uid, event.headers, end_stream=end)
            except h2.exceptions.TooManyStreamsError:  # the upstream's limit: try again later
                down.h2.reset_stream(did, h2.errors.ErrorCodes.REFUSED_STREAM)
                return down.wake()
            up.wake()
            send, receive = trio.open_memory_channel[tuple[bool, Any]](_STREAM_EVENTS)
            by_down[did] = by_up[uid] = send
            nursery.start_soon(_run_stream, did, uid, end, receive)

        async def _run_stream(did: int, uid: int, end: bool, receive: Any) -> None:
            try:
                await _stream(down, up, did, uid, end, receive)
            except (h2.exceptions.StreamClosedError, trio.EndOfChannel):
                pass  # reset by a peer meanwhile
            finally:
                by_down.pop(did).close()
                del by_up[uid]
                if up.h2.streams.get(uid) is not None and not up.h2.streams[uid].closed:
                    up.h2.reset_stream(uid)  # the client went away: free the upstream stream
                    up.wake()

        down.h2.initiate_connection()
        down.wake()
        nursery.start_soon(down.writer)
        await _read(down, _DOWN, by_down, on_request)
        nursery.cancel_scope.cancel()


async def run(
    port: int, upstream: Address, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve on ``port``, every client's streams multiplexed on one upstream connection (as a
    mesh's pool would); the upstream closing ends the relay."""
    up = _Side(await connect(upstream), client=True)
    by_up: dict[int, Any] = {}

    async def refuse(event: ev.RequestReceived) -> None:
        up.h2.reset_stream(event.stream_id)  # a server push, never enabled

    try:
        async with trio.open_nursery() as nursery:
            up.h2.initiate_connection()
            up.wake()
            nursery.start_soon(up.writer)
            handler = functools.partial(relay, up, by_up)
            task_status.started(await nursery.start(functools.partial(serve, port, handler)))
            await _read(up, _UP, by_up, refuse)
            nursery.cancel_scope.cancel()
    finally:
        up.stream.close()


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
