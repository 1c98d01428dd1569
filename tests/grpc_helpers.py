"""A real gRPC server and client for the proxy's tests, on grpcio (its C core speaks HTTP/2,
none of our code), bytes in and bytes out: generic handlers, no protoc.

Service ``test.Echo`` (method paths ``/test.Echo/<Method>``):
  Unary         returns the request; metadata ``x-echo`` comes back as initial metadata and
                ``x-trailer`` as trailing metadata
  ServerStream  request b"N" (or b"N,MS": MS milliseconds between messages) -> N messages
                b"msg-0" .. b"msg-<N-1>"
  ClientStream  -> b"count=N;bytes=M" over the request messages
  Bidi          echoes each message as it arrives (a response before the next request)
  Sleep         request b"SECONDS": sleeps (woken early if the call ends), then b"slept"
  Fail          aborts with the status code named by the request (b"NOT_FOUND") and details
                "failed on purpose"

grpcio runs its own threads. The server (``start_grpc_server`` or the ``grpc_upstream``
fixture) records calls and cancellations thread-safely; tests wait for a cancellation with
``await server.await_cancelled("Sleep")`` (a threading.Event waited on in a worker thread).
The client is grpcio's blocking one: from trio, ``await in_thread(stub.Unary, b"x",
timeout=5)``. A call counts as cancelled when it ends (client cancel, deadline, connection
loss) before its handler finished.

Use the fixture by importing it into the test module and naming it in ``__all__`` (a
``# noqa: F401`` import draws ruff's F811 at every test taking it as an argument):
``from .grpc_helpers import grpc_upstream`` and ``__all__ = ["grpc_upstream"]``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NamedTuple, TypeVar

import grpc
import pytest
import trio

SERVICE = "test.Echo"
METHODS = ("Unary", "ServerStream", "ClientStream", "Bidi", "Sleep", "Fail")
FAIL_DETAILS = "failed on purpose"

T = TypeVar("T")


class Call(NamedTuple):
    """One call the server saw."""

    method: str
    metadata: tuple[tuple[str, str | bytes], ...]
    peer: str


class _CallState:
    __slots__ = ("finished", "terminated")

    def __init__(self) -> None:
        self.finished = False
        self.terminated = threading.Event()


class GrpcEchoServer:
    """grpcio's threaded server running ``test.Echo`` on 127.0.0.1:``port``.

    Records, all guarded by one lock (read them after the calls of interest ended, or wait):
    ``calls`` (``Call(method, metadata, peer)`` in arrival order), ``completed`` (methods whose
    handler finished), ``cancelled`` (methods whose call ended first).
    """

    def __init__(self, max_workers: int = 32) -> None:
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self.completed: list[str] = []
        self.cancelled: list[str] = []
        #: Bytes each ClientStream handler read before its request stream ended. grpcio's
        #: sync server may end the iteration quietly (no RpcError) when the call is reset
        #: mid-stream, so "completed" alone cannot tell a reset from a whole request.
        self.client_stream_bytes: list[int] = []
        #: Set at the first cancellation of any method.
        self.cancelled_event = threading.Event()
        self._cancel_events = {m: threading.Event() for m in METHODS}
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
                "Sleep": grpc.unary_unary_rpc_method_handler(self._sleep),
                "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
            },
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-echo"),
            handlers=[handler],
            options=[("grpc.so_reuseport", 0)],
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def start(self) -> GrpcEchoServer:
        self.server.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop; ``grace=None`` cancels the calls in flight at once. Blocks until done."""
        self.server.stop(grace).wait()

    # ---- records

    def _begin(self, method: str, context: grpc.ServicerContext) -> _CallState:
        state = _CallState()
        with self._lock:
            self.calls.append(Call(method, tuple(context.invocation_metadata()), context.peer()))

        def on_end() -> None:
            state.terminated.set()
            if not state.finished:
                self._record_cancel(method)

        if not context.add_callback(on_end):  # already over
            on_end()
        return state

    def _finish(self, method: str, state: _CallState) -> None:
        state.finished = True
        with self._lock:
            self.completed.append(method)

    def _record_cancel(self, method: str) -> None:
        with self._lock:
            self.cancelled.append(method)
        self._cancel_events[method].set()
        self.cancelled_event.set()

    def wait_cancelled(self, method: str | None = None, timeout: float = 5.0) -> bool:
        """Blocking: whether a call (of ``method``) was cancelled within ``timeout`` seconds."""
        event = self.cancelled_event if method is None else self._cancel_events[method]
        return event.wait(timeout)

    async def await_cancelled(self, method: str | None = None, timeout: float = 5.0) -> bool:
        """``wait_cancelled`` from trio (in a worker thread)."""
        return await trio.to_thread.run_sync(
            functools.partial(self.wait_cancelled, method, timeout), abandon_on_cancel=True
        )

    def calls_of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    # ---- handlers (run in grpcio's worker threads)

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        state = self._begin("Unary", context)
        metadata = dict(context.invocation_metadata())
        if "x-echo" in metadata:
            context.send_initial_metadata((("x-echo", metadata["x-echo"]),))
        if "x-trailer" in metadata:
            context.set_trailing_metadata((("x-trailer", metadata["x-trailer"]),))
        self._finish("Unary", state)
        return request

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        state = self._begin("ServerStream", context)
        count, _, interval = request.decode().partition(",")
        pause = float(interval) / 1000 if interval else 0.0
        for i in range(int(count)):
            if i and pause and state.terminated.wait(pause):
                return  # ended early: recorded by on_end
            yield b"msg-%d" % i
        self._finish("ServerStream", state)

    def _client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        state = self._begin("ClientStream", context)
        count = size = 0
        try:
            for message in requests:
                count += 1
                size += len(message)
        except grpc.RpcError:  # the call ended under us
            return b""
        with self._lock:
            self.client_stream_bytes.append(size)
        self._finish("ClientStream", state)
        return b"count=%d;bytes=%d" % (count, size)

    def _bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        state = self._begin("Bidi", context)
        try:
            yield from requests  # each message echoed as it arrives
        except grpc.RpcError:
            return
        self._finish("Bidi", state)

    def _sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        state = self._begin("Sleep", context)
        if state.terminated.wait(float(request or b"0")):
            return b""  # cancelled (recorded by on_end); nobody reads this
        self._finish("Sleep", state)
        return b"slept"

    def _fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        state = self._begin("Fail", context)
        name = request.decode().strip().upper()
        self._finish("Fail", state)
        code = getattr(grpc.StatusCode, name, None)
        if code is None or code is grpc.StatusCode.OK:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no error status {name!r}")
        context.abort(code, FAIL_DETAILS)
        raise AssertionError("abort returned")  # pragma: no cover


def start_grpc_server(max_workers: int = 32) -> GrpcEchoServer:
    """A started ``GrpcEchoServer`` (``.port``); call ``.stop()`` when done."""
    return GrpcEchoServer(max_workers).start()


@pytest.fixture
def grpc_upstream() -> Iterator[GrpcEchoServer]:
    """A running ``GrpcEchoServer`` for the test, stopped afterwards."""
    server = start_grpc_server()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- client


def grpc_channel(
    port: int, host: str = "127.0.0.1", options: list[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """An insecure (h2c) channel to ``host:port``, never through an HTTP proxy from the
    environment. ``options`` e.g. ``[("grpc.default_authority", "echo.test")]``."""
    return grpc.insecure_channel(
        f"{host}:{port}", options=[("grpc.enable_http_proxy", 0), *(options or [])]
    )


class EchoStub:
    """The ``test.Echo`` methods as grpcio multi-callables, bytes in and out:
    ``stub.Unary(b"x", timeout=5)``, ``stub.Unary.with_call(b"x", metadata=...)``,
    ``stub.ServerStream(b"3")`` (an iterator and a call: ``.cancel()``),
    ``stub.ClientStream(iter([...]))``, ``stub.Bidi(request_iterator)``, ``stub.Sleep(b"5",
    timeout=0.2)``, ``stub.Fail(b"NOT_FOUND")``. All blocking: from trio use ``in_thread``."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.Unary = channel.unary_unary(f"/{SERVICE}/Unary")
        self.ServerStream = channel.unary_stream(f"/{SERVICE}/ServerStream")
        self.ClientStream = channel.stream_unary(f"/{SERVICE}/ClientStream")
        self.Bidi = channel.stream_stream(f"/{SERVICE}/Bidi")
        self.Sleep = channel.unary_unary(f"/{SERVICE}/Sleep")
        self.Fail = channel.unary_unary(f"/{SERVICE}/Fail")

    @classmethod
    def connect(cls, port: int, **kwargs: Any) -> EchoStub:
        """A stub on a new ``grpc_channel(port, **kwargs)``; close it with ``close()`` or
        ``with EchoStub.connect(port) as stub:``."""
        return cls(grpc_channel(port, **kwargs))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EchoStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking (grpcio) call in a worker thread. A cancelled trio task stops waiting
    but the call itself goes on to its own deadline: give grpc calls a ``timeout``."""
    return await trio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
    )
