"""The HTTP/1 upstream: one request at a time on a pooled connection.

``exchange`` is one try (``lifecycle.Exchange``): take a connection (an idle one first: the
common case, without a coroutine), send the head and the body, relay the response into the
sink, and give the connection back when it can carry another request. Failures before the
response began raise ``UpstreamFailed``; a reused connection the upstream had closed (nothing
read back) is the keep-alive race, flagged for one more try on a new connection.
"""

from __future__ import annotations

from time import monotonic as _monotonic
from typing import TYPE_CHECKING

import trio

from ...network.connect import ConnectError
from ...network.relay import CHUNK
from ...network.stream import Stream
from ...pool import H1Connection, H1Pool, PoolOverflow
from ...protocols.http1 import (
    Body,
    EndOfMessage,
    H1Error,
    ResponseHead,
    ResponseParser,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
)
from ...upstream import CircuitOpenError, Cluster, Host
from ..record import RequestRecord
from ..replies import BAD_RESPONSE, OVERFLOW, UPSTREAM_RESET, Flag, Reply, connect_failure
from ..retry import RetryState
from . import UpstreamFailed

if TYPE_CHECKING:
    from ..lifecycle import ProxyCore, RequestBody, ResponseSink, UpstreamRequest

_NO_BODY_STATUSES = frozenset({204, 304})
# Resent on their own after the keep-alive race: the upstream may have acted on a POST it
# read before closing, so only methods that may safely run twice are (as Go's net/http does).
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Not sent on an HTTP/1 request made from HTTP/2 headers: the proxy answers 100-continue
# itself, and "te: trailers" is HTTP/2's business.
_NOT_FROM_H2 = frozenset({b"te", b"expect", b"content-length"})


async def acquire(pool: H1Pool, fresh: bool = False) -> tuple[H1Connection, bool]:
    """A connection for one request, and whether it was reused from the idle ones
    (``fresh``: a new one). Callers try ``pool.take_idle()`` first: the common case, without
    a coroutine. Raises `UpstreamFailed`."""
    try:
        return await pool.acquire(fresh=fresh)
    except ConnectError as exc:
        raise UpstreamFailed(connect_failure(exc)) from None
    except (CircuitOpenError, PoolOverflow):
        raise UpstreamFailed(OVERFLOW) from None


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
    """One try over HTTP/1 (see the module docstring): the request sent, then the response
    relayed into ``sink`` (in this one frame: a coroutine layer is paid on every resume)."""
    pool = core.pools.http1(cluster, host)
    conn = None if fresh else pool.take_idle()  # the common case, without a coroutine
    reused = conn is not None
    if conn is None:
        conn, reused = await acquire(pool, fresh)
    if core.detailed:
        info.upstream_connect_duration = _monotonic() - info.start
    headers = req.headers
    authority = req.authority
    if req.host_in_headers:
        if authority is None:  # auto_host_rewrite, or no Host: the chosen host's address
            headers = [(n, v) for n, v in headers if n != b"host"]
            headers.append((b"host", host.label_bytes))
    else:
        headers = [(n, v) for n, v in headers if n not in _NOT_FROM_H2]
        headers.insert(0, (b"host", authority if authority is not None else host.label_bytes))
    wire = encode_request_head(
        req.method, req.target, headers, length=req.length, chunked=req.chunked
    )
    reusable = False
    host.active_requests += 1  # what LB_LEAST_REQUEST compares
    host.rq_total += 1
    try:
        upstream = conn.stream
        try:
            await upstream.send_all(wire)
            if not body.empty:
                await _send_body(upstream, body, req.chunked)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The upstream went away while we were sending. It may still have answered
            # (an early 413, say): read what it said before giving up.
            pass

        # The response.
        parser = conn.parser
        if parser is None:
            parser = conn.parser = ResponseParser(head_request=req.head_request)
        else:  # a reused connection: its last exchange ended clean, or it was not reused
            parser.reset(head_request=req.head_request)
        sink.waiting()
        buffers = sink.buffers
        got_bytes = False
        ended = False  # the response's end went to the sink (with its head or last piece)
        keep_alive = False
        receive = upstream.receive_after_wait  # the answer cannot be there yet
        reads = 0
        while True:
            reads += 1
            if reads % 16 == 0:  # a fast upstream must not keep the loop to itself
                await trio.lowlevel.checkpoint()
            try:
                data = await receive(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = None  # reset
            receive = upstream.receive_some
            events = None
            if data:
                got_bytes = True
                try:
                    events = parser.feed(data)
                except H1Error:
                    if not sink.started:
                        raise UpstreamFailed(BAD_RESPONSE) from None
                    sink.cut(Flag.UPSTREAM_PROTOCOL_ERROR)
                    return
            elif data is not None and got_bytes:
                try:
                    events = parser.feed_eof()  # a close-delimited body ends here
                except H1Error:
                    pass  # cut short: the same as a reset
            if events is None:
                if not sink.started:
                    # Closed or reset before any response byte: on a reused idle connection
                    # that is the keep-alive race, safe to send again.
                    race = reused and not got_bytes and req.method in _IDEMPOTENT
                    raise UpstreamFailed(UPSTREAM_RESET, race=race)
                # Mid-body: the status line is gone; the client must see a failure.
                sink.cut(Flag.UPSTREAM_TERMINATION)
                return
            done = False
            last = len(events) - 1
            for i, event in enumerate(events):
                # `type(...) is`, not a local `kind`: the checker narrows only this form.
                if type(event) is Body:
                    # The last piece carries the end itself: one call less.
                    if i < last and type(nxt := events[i + 1]) is EndOfMessage and not nxt.trailers:
                        await sink.data(event.data, True)
                        ended = True
                    else:
                        await sink.data(event.data, False)
                elif type(event) is EndOfMessage:
                    if event.trailers:
                        # llhttp keeps what a trailer section's Connection said across a
                        # reset: the next exchange on this connection gets its own parser.
                        conn.parser = None
                        if not ended:
                            await sink.trailers(event.trailers)
                    elif not ended:
                        await sink.data(b"", True)
                    ended = done = True
                elif type(event) is ResponseHead:
                    status = event.status
                    if status >= 200:
                        if retry is not None and body.replayable and retry.retries_status(status):
                            raise UpstreamFailed(Reply(status, Flag.NONE, b""))
                        if not body.empty:  # the upstream took it: no retry resends the body
                            body.forget()
                        keep_alive = event.keep_alive
                        ended = (
                            req.head_request
                            or status in _NO_BODY_STATUSES
                            or event.content_length == 0
                        )
                        await sink.head(event, ended, parser.head_raw)
                    elif status == 101:
                        if req.upgrade is not None and _switches_to_asked(req.upgrade, event):
                            await sink.upgrade(event, upstream, parser.upgraded_tail or b"")
                            return
                        if not sink.started:  # a switch nobody asked for, or to h2c
                            raise UpstreamFailed(BAD_RESPONSE)
                        sink.cut(Flag.UPSTREAM_PROTOCOL_ERROR)
                        return
                    else:
                        await sink.informational(status, event.reason, event.headers)
            if buffers and not ended:  # a sink sends what it holds at the end itself
                await sink.flush()
            if done:
                reusable = (
                    body.done
                    and parser.complete
                    and not parser.trailing
                    and sink.started
                    and keep_alive
                )
                return
    finally:
        host.active_requests -= 1
        if reusable:
            pool.release(conn, True)
        else:
            pool.close(conn)


async def _send_body(upstream: Stream, body: RequestBody, chunked: bool) -> None:
    chunks = 0
    while True:
        data = await body.next()
        chunks += 1
        if chunks % 16 == 0:  # a fast client must not keep the loop to itself
            await trio.lowlevel.checkpoint()
        if body.done:
            wire = encode_chunk(data) if chunked else data
            if chunked:
                wire += encode_last_chunk(body.trailers)
            if wire:
                await upstream.send_all(wire)
            body.sent()
            return
        if data:
            await upstream.send_all(encode_chunk(data) if chunked else data)
        body.sent()


def _switches_to_asked(asked: bytes, resp: ResponseHead) -> bool:
    """A 101 may switch only to protocols the client asked for (RFC 9110 7.8), and never to
    h2c: the proxy strips that offer, so an upstream switching to it is not to be relayed."""
    got = b",".join([v for n, v in resp.headers if n == b"upgrade"]).lower()
    tokens = [t for t in (t.strip(b" \t") for t in got.split(b",")) if t]
    wanted = {t.strip(b" \t") for t in asked.split(b",")}
    return bool(tokens) and all(t in wanted and t != b"h2c" for t in tokens)
