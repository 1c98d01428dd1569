"""The HTTP/2 upstream: a stream on a pooled, multiplexed connection.

``exchange`` is one try (``lifecycle.Exchange``): open a stream, send the headers, the body
(while the response comes, when the downstream is duplex: gRPC streams go both ways) and relay
the response into the sink, each DATA frame's credit given back once the sink took it. A
stream the upstream refused (REFUSED_STREAM, or beyond its GOAWAY) fails with the race flag:
it was not processed, so it may be sent once more.
"""

from __future__ import annotations

from time import monotonic as _monotonic
from typing import TYPE_CHECKING

import trio

from ...network.connect import ConnectError
from ...network.h2 import H2Endpoint, StreamChannel, StreamGone
from ...pool import PoolOverflow
from ...pool.http2 import H2Pool
from ...protocols.http1 import ResponseHead
from ...protocols.http2 import (
    Data,
    ErrorCode,
    H2HeaderError,
    InformationalHeaders,
    ResponseHeaders,
    Trailers,
    request_to_h2,
    response_from_h2,
    trailers_to_h2,
)
from ...upstream import CircuitOpenError, Cluster, Host
from ..record import RequestRecord
from ..replies import BAD_RESPONSE, OVERFLOW, UPSTREAM_RESET, Flag, Reply, connect_failure
from ..retry import RetryState
from . import UpstreamFailed

if TYPE_CHECKING:
    from ..lifecycle import ProxyCore, RequestBody, ResponseSink, UpstreamRequest


async def open_stream(pool: H2Pool) -> tuple[H2Endpoint, int, StreamChannel]:
    """A new upstream stream: its connection, id and channel (send its headers at once: stream
    ids go out in order). Raises `UpstreamFailed`."""
    try:
        return await pool.open_stream()
    except ConnectError as exc:
        raise UpstreamFailed(connect_failure(exc)) from None
    except (CircuitOpenError, PoolOverflow):
        raise UpstreamFailed(OVERFLOW) from None


def _headers(req: UpstreamRequest, host: Host) -> list[tuple[bytes, bytes]]:
    authority = req.authority if req.authority is not None else host.label_bytes
    if req.from_h1:
        headers = request_to_h2(req.method, req.target, authority, req.headers)
        headers = [h for h in headers if h[0] != b"content-length"]
        if req.length is not None and not req.chunked:
            headers.append((b"content-length", b"%d" % req.length))
        return headers
    return [
        (b":method", req.method),
        (b":scheme", req.scheme),
        (b":authority", authority),
        (b":path", req.target),
        *req.headers,
    ]


async def exchange(
    core: ProxyCore,
    cluster: Cluster,
    host: Host,
    req: UpstreamRequest,
    body: RequestBody,
    sink: ResponseSink,
    info: RequestRecord,
    retry: RetryState | None,
    fresh: bool,
) -> None:
    """One try over HTTP/2 (see the module docstring)."""
    pool = core.pools.http2(cluster, host, core.h2_settings)
    up, usid, uchannel = await open_stream(pool)
    if core.detailed:
        info.upstream_connect_duration = _monotonic() - info.start
    headers = _headers(req, host)
    host.active_requests += 1
    host.rq_total += 1
    try:
        try:
            up.send_headers(usid, headers, end_stream=body.empty)
        except StreamGone as exc:
            raise UpstreamFailed(UPSTREAM_RESET, race=exc.refused) from None
        if body.empty:
            await _response(up, usid, uchannel, body, sink, retry)
        elif not body.duplex:
            await _send_body(up, usid, body, req.from_h1)
            await _response(up, usid, uchannel, body, sink, retry)
        else:
            await _duplex(up, usid, uchannel, body, sink, retry)
    finally:
        host.active_requests -= 1
        up.close_stream(usid)  # resets the upstream stream if it is still open


async def _duplex(
    up: H2Endpoint,
    usid: int,
    uchannel: StreamChannel,
    body: RequestBody,
    sink: ResponseSink,
    retry: RetryState | None,
) -> None:
    """The body goes up in its own task while the response comes down."""
    failure: BaseException | None = None
    body_failure: list[BaseException] = []

    async def pump() -> None:
        try:
            await _send_body(up, usid, body, False)
        except Exception as exc:  # a filter's reply: the try ends (the response side too)
            body_failure.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            await _response(up, usid, uchannel, body, sink, retry)
        except Exception as exc:
            failure = exc  # raised below, not wrapped in the nursery's group
        # The response is complete (or failed): what the client still sends has no reader
        # on this stream.
        nursery.cancel_scope.cancel()
    if body_failure:
        raise body_failure[0]
    if failure is not None:
        raise failure


async def _send_body(up: H2Endpoint, usid: int, body: RequestBody, from_h1: bool) -> None:
    """Pump the request body upstream, each piece's credit going back once it was sent."""
    try:
        while True:
            data = await body.next()
            if body.done:
                trailers = body.trailers
                if trailers and from_h1:
                    trailers = trailers_to_h2(trailers)  # connection-specific fields dropped
                if trailers:
                    if data:
                        await up.send_data(usid, data)
                    up.send_trailers(usid, trailers)
                else:
                    await up.send_data(usid, data, True)
                body.sent()
                return
            await up.send_data(usid, data)
            body.sent()
    except StreamGone:
        # The client reset (the stream's scope is cancelled already), or the upstream stream
        # ended first (it answered early or was reset): the response side says what next.
        pass


async def _response(
    up: H2Endpoint,
    usid: int,
    uchannel: StreamChannel,
    body: RequestBody,
    sink: ResponseSink,
    retry: RetryState | None,
) -> None:
    sink.waiting()
    buffers = sink.buffers
    while True:
        try:
            event = await uchannel.get()
        except StreamGone as exc:
            if not sink.started:
                raise UpstreamFailed(UPSTREAM_RESET, race=exc.refused) from None
            # The upstream reset mid-response: the reset is passed on.
            sink.cut(
                Flag.UPSTREAM_RESET,
                exc.code if exc.code != ErrorCode.NO_ERROR else ErrorCode.CANCEL,
            )
            return
        # `type(...) is`, not a local `kind`: the checker narrows only this form (and it
        # costs the same per event: Data, the common one, is the first test).
        if type(event) is Data:
            try:
                await sink.data(event.data, event.end_stream)
                if buffers and not event.end_stream:  # at the end, the sink sent it itself
                    await sink.flush()
            finally:
                # Also when the sink failed (client gone, reset, timed out): the credit is the
                # upstream connection's, which other requests share.
                up.consumed(usid, event.flow_length)
            if event.end_stream:
                return
        elif type(event) is ResponseHeaders:
            try:
                status, headers = response_from_h2(event.headers)
            except H2HeaderError:
                if not sink.started:
                    raise UpstreamFailed(BAD_RESPONSE) from None
                sink.cut(Flag.UPSTREAM_PROTOCOL_ERROR)
                return
            if retry is not None and body.replayable and retry.retries_status(status):
                raise UpstreamFailed(Reply(status, Flag.NONE, b""))
            if not body.empty:  # the upstream took the stream: no retry replays the body
                body.forget()
            length = None
            for name, value in headers:
                if name == b"content-length" and value.isdigit():
                    length = int(value)
            end = event.end_stream
            if end and length is None:
                length = 0
            # reason None: an HTTP/1 encoder writes the standard phrase (HTTP/2 has none)
            await sink.head(
                ResponseHead(status, None, b"2", headers, True, length, False), end, None
            )
            if buffers and not end:
                await sink.flush()
            if end:
                return
        elif type(event) is Trailers:
            await sink.trailers(event.headers)
            return
        elif type(event) is InformationalHeaders:
            status, headers = response_from_h2(event.headers)
            await sink.informational(status, None, headers)
            if buffers:
                await sink.flush()
