"""What the three floor relays (``bench/floor_*.py``) share: the listening socket, the accept
loop, one connection's guard, and the command line.

The floors are the benchmark's ``trio-floor-*`` contenders: the least a correct relay of each
protocol does on trio-mesh's runtime (Trio, ``trio_mesh.network.stream.Stream``,
``connect_tcp``, the same codec libraries), so the distance from a floor to trio-mesh is what
trio-mesh's own code costs. They also run in a test's nursery (``serve`` reports its port).
"""

from __future__ import annotations

import argparse
import errno
import functools
import socket
from collections.abc import Awaitable, Callable

import trio

from trio_mesh.network.connect import ConnectError, connect_tcp
from trio_mesh.network.stream import Stream

Handler = Callable[[Stream], Awaitable[None]]  # one downstream connection
Address = tuple[str, int]
CONNECT_TIMEOUT = 5.0
_OVERLOAD = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def serve(
    port: int, handler: Handler, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on 127.0.0.1:port (0: any) and run ``handler`` per connection, in this task's
    nursery; reports the bound port through ``task_status``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(sock.getsockname()[1])
            accepted = 0
            while True:
                try:
                    client, _ = sock.accept()
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError as exc:
                    if exc.errno in _OVERLOAD:  # overload, not a bug: back off, keep serving
                        await trio.sleep(0.01)
                    continue
                nursery.start_soon(_connection, Stream(client), handler)
                accepted += 1
                if accepted % 16 == 0:  # a burst of connections must not starve the others
                    await trio.lowlevel.checkpoint()
    finally:
        sock.close()


async def _connection(down: Stream, handler: Handler) -> None:
    try:
        await handler(down)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectError):
        pass  # a peer went away or the upstream is down: close the connection
    finally:
        down.close()


async def connect(upstream: Address) -> Stream:
    return await connect_tcp(upstream[0], upstream[1], CONNECT_TIMEOUT)


Run = Callable[..., Awaitable[None]]  # run(port, upstream, task_status=...)


def main(description: str, run: Run) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    try:
        trio.run(functools.partial(run, args.port, (host, int(port))))
    except KeyboardInterrupt:
        pass
