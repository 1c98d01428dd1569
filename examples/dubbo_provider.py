"""A minimal Apache Dubbo provider on Trio, built on trio-mesh's own Dubbo codec and hessian2
encoder: the application behind the sidecar in conf/registry.yaml.

It serves any interface name (Dubbo's service path is not checked), with two methods:
``sayHello(name)`` answers "hello NAME from PROVIDER_NAME" and ``add(a, b, ...)`` the sum.
Another method gets a Dubbo error response (status 70, SERVICE_ERROR).

    python examples/dubbo_provider.py --port 20880 --name provider-a

Prints one line when it listens (``--port 0``: any free port, the line says which), one per
call with ``--verbose``; Ctrl-C or SIGTERM stops it (exit 0).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import trio

from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.dubbo import DUBBO, DubboFrame
from trio_mesh.protocols.xprotocol.hessian2 import (
    Hessian2Error,
    Hessian2Reader,
    encode_long,
    encode_string,
)


def arguments(frame: DubboFrame) -> list[Any]:
    """The call's arguments, decoded with the hessian2 reader."""
    assert frame.request is not None
    r = Hessian2Reader(bytes(frame.data[df.HEADER_LENGTH :]))
    for _ in range(5):  # dubbo version, service path, version, method, parameter types
        r.read()
    return [r.read() for _ in range(frame.request.argument_count)]


def answer(frame: DubboFrame, name: str) -> bytes:
    """The response frame to one call."""
    assert frame.request is not None
    method = frame.request.method_name
    try:
        args = arguments(frame)
    except Hessian2Error as exc:
        return df.error_response(frame.request_id, df.Status.BAD_REQUEST, f"bad arguments: {exc}")
    if method == "sayHello" and len(args) == 1:
        return df.value_response(frame.request_id, encode_string(f"hello {args[0]} from {name}"))
    if method == "add" and all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        return df.value_response(frame.request_id, encode_long(sum(args)))
    message = f"no method {method} taking {len(args)} argument(s) of these types"
    return df.error_response(frame.request_id, df.Status.SERVICE_ERROR, message)


async def serve(stream: trio.SocketStream, name: str, verbose: bool) -> None:
    """One consumer connection: frames in, answers out, until it closes."""
    buf = bytearray()
    async with stream:
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
                if frame.request is None:  # an event or a stray response: nothing to answer
                    continue
                if verbose:
                    print(f"{frame.request.service_path}.{frame.request.method_name}", flush=True)
                reply = answer(frame, name)
                if not frame.is_oneway:
                    await stream.send_all(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a frame we cannot read: drop this connection only
            print(f"closing a connection: {exc}", file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> None:
    listeners = await trio.open_tcp_listeners(args.port, host=args.host)
    port = listeners[0].socket.getsockname()[1]
    print(f"dubbo provider {args.name!r} listening on {args.host}:{port}", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await serve(stream, args.name, args.verbose)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        # SIGTERM (a service manager, a test) stops it like Ctrl-C does.
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A minimal Dubbo provider (sayHello, add) on Trio; Ctrl-C or SIGTERM stops it."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=20880, help="port to listen on (20880; 0: any free port)"
    )
    parser.add_argument("--name", default="provider", help="the name sayHello answers with")
    parser.add_argument("--verbose", action="store_true", help="print every call")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"--port: expected 0-65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        trio.run(main, args)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
