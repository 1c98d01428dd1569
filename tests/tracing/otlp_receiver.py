"""A small OTLP/HTTP traces receiver for the tests: ``POST /v1/traces`` on 127.0.0.1, each
body decoded with opentelemetry-proto's ``ExportTraceServiceRequest``; ``hang=True``: it
accepts connections and never answers (an overloaded collector)."""

from __future__ import annotations

import functools
import gzip
from typing import Any

import h11
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Span(dict[str, Any]):
    """One received span: ``trace_id``, ``span_id``, ``parent_span_id`` (hex, ``""``: none),
    ``name``, ``kind``, ``status``, ``start``, ``end`` (ns), ``attributes``, ``resource``."""


class OtlpReceiver:
    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.spans: list[Span] = []
        self.requests = 0
        self.connections = 0
        #: Set (and replaced) whenever spans arrive.
        self.received = trio.Event()
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def start(self, nursery: trio.Nursery) -> OtlpReceiver:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), self._serve, 0
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def wait_spans(self, n: int, timeout: float = 10.0) -> list[Span]:
        with trio.fail_after(timeout):
            while len(self.spans) < n:
                await self.received.wait()
        return self.spans

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        if self.hang:
            await trio.sleep_forever()
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                body = b""
                request = None
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        if not data:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                status = 200
                if request.method != b"POST" or request.target != b"/v1/traces":
                    status = 404
                else:
                    if dict(request.headers).get(b"content-encoding") == b"gzip":
                        body = gzip.decompress(body)
                    self._decode(body)
                payload = ExportTraceServiceResponse().SerializeToString()
                await stream.send_all(
                    conn.send(
                        h11.Response(
                            status_code=status,
                            headers=[
                                ("content-type", "application/x-protobuf"),
                                ("content-length", str(len(payload))),
                            ],
                        )
                    )
                    + conn.send(h11.Data(payload))
                    + conn.send(h11.EndOfMessage())
                )
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            stream.socket.close()

    def _decode(self, body: bytes) -> None:
        self.requests += 1
        message = ExportTraceServiceRequest.FromString(body)
        for rs in message.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append(
                        Span(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            status=span.status.code,
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            resource=resource,
                            scope=ss.scope.name,
                        )
                    )
        self.received.set()
        self.received = trio.Event()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None
