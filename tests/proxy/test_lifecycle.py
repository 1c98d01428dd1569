"""The lifecycle's protocol-independent parts on their own: the request body an exchange reads
(filtered once, kept for a retry while small) and the response sink behind response filters."""

from __future__ import annotations

import gc

import pytest
import trio

from tests.h2_upstream import open_h2_client, start_h2_upstream
from tests.http_helpers import Client, get, http_config, start_proxy, start_upstream, to
from trio_mesh.filters.stream import (
    LocalReply,
    RequestContext,
    StreamFilter,
    StreamFilterChain,
    hook_mask,
)
from trio_mesh.protocols.http1 import ResponseHead
from trio_mesh.protocols.http2 import ErrorCode
from trio_mesh.proxy import http1, http2
from trio_mesh.proxy.lifecycle import (
    FilteredSink,
    FilterReplied,
    HeadFilteredSink,
    RequestBody,
    ResponseCut,
)
from trio_mesh.proxy.record import RequestRecord


class Source:
    """A body source handing out ``chunks``, the last one with ``trailers``."""

    duplex = False

    def __init__(self, chunks: list[bytes], trailers=None) -> None:
        self.chunks = list(chunks)
        self.finished = False
        self.request_trailers = None
        self._trailers = trailers
        self.reads = 0
        self.sent_calls = 0
        self.kept = 0
        self.forgotten = 0

    async def read(self) -> bytes:
        self.reads += 1
        data = self.chunks.pop(0)
        if not self.chunks:
            self.finished = True
            self.request_trailers = self._trailers
        return data

    def sent(self) -> None:
        self.sent_calls += 1

    def keep(self, n: int) -> bool:
        self.kept += n
        return True

    def forget(self, n: int) -> None:
        self.forgotten += n


def chain_of(*filters_cls: type[StreamFilter]) -> StreamFilterChain:
    context = RequestContext("HTTP/1.1")
    made = [(cls(None, context), hook_mask(cls), cls.__name__) for cls in filters_cls]
    mask = 0
    for _, bits, _ in made:
        mask |= bits
    return StreamFilterChain(context, made, mask)


SEEN: list[tuple[bytes, bool]] = []


class Upper(StreamFilter):
    async def on_request_data(self, data, last):
        SEEN.append((data, last))
        return data.upper()


async def read_all(body: RequestBody) -> list[bytes]:
    out = []
    while True:
        out.append(await body.next())
        body.sent()
        if body.done:
            return out


async def test_a_retry_resends_the_filtered_body_without_filtering_it_again():
    SEEN.clear()
    source = Source([b"ab", b"cd", b""], trailers=[(b"x-t", b"1")])
    body = RequestBody(source)
    body.reset(False, 1024)
    body.use_chain(chain_of(Upper))
    first = await read_all(body)
    assert first == [b"AB", b"CD", b""] and body.trailers == [(b"x-t", b"1")]
    assert body.replayable
    body.rewind()
    assert await read_all(body) == first  # the same bytes, from the copy
    assert source.reads == 3 and SEEN == [(b"ab", False), (b"cd", False), (b"", True)]
    assert source.kept == 4


async def test_a_body_beyond_the_retry_buffer_is_not_kept():
    source = Source([b"abc", b"def"])
    body = RequestBody(source)
    body.reset(False, 4)
    assert await read_all(body) == [b"abc", b"def"]
    assert not body.replayable and body.pieces == []
    assert source.forgotten == 3  # what was kept leaves the source's budget


async def test_a_streamed_body_keeps_nothing_and_an_empty_one_stays_replayable():
    source = Source([b""])  # -1: not even an empty piece is kept
    body = RequestBody(source)
    body.reset(False, -1)
    await read_all(body)
    assert not body.replayable
    empty = RequestBody(Source([]))
    empty.reset(True, -1)
    empty.forget()
    assert empty.replayable and empty.done  # no body: a retry resends the head alone


class Sink:
    buffers = False

    def __init__(self) -> None:
        self.started = False
        self.heads: list[tuple[ResponseHead, bool]] = []
        self.datas: list[tuple[bytes, bool]] = []
        self.cuts: list[str] = []

    def waiting(self) -> None:
        pass

    async def informational(self, status, reason, headers) -> None:
        pass

    async def head(self, resp, end, raw) -> None:
        self.started = True
        self.heads.append((resp, end))

    async def data(self, data, end) -> None:
        self.datas.append((data, end))

    async def trailers(self, trailers) -> None:
        pass

    async def flush(self) -> None:
        pass

    def cut(self, flag, code=ErrorCode.INTERNAL_ERROR) -> None:
        self.cuts.append(flag)

    async def upgrade(self, resp, upstream, tail) -> None:
        raise AssertionError


class Shout(StreamFilter):
    async def on_response_headers(self, headers, end_stream):
        headers.remove("content-length")

    async def on_response_data(self, data, last):
        if data == b"boom":
            return LocalReply(500, "no")
        return data.upper() + (b"!" if last else b"")


class Teapot(StreamFilter):
    async def on_response_headers(self, headers, end_stream):
        headers.status = 1000  # not a status: the filter failed


def head(status=200, length=5) -> ResponseHead:
    headers = [(b"content-length", b"%d" % length), (b"connection", b"x-drop"), (b"x-drop", b"1")]
    return ResponseHead(status, b"OK", b"1.1", headers, True, length, False)


async def test_response_hooks_change_the_head_and_the_body_on_their_way_down():
    inner = Sink()
    sink = FilteredSink(inner, chain_of(Shout), RequestRecord())
    await sink.head(head(), False, b"raw head bytes")
    ((resp, end),) = inner.heads
    # hop-by-hop fields gone before the hooks, the length with the header they took off
    assert resp.headers == [] and resp.content_length is None and not end
    await sink.data(b"hello", True)
    assert inner.datas == [(b"HELLO!", True)]


async def test_a_response_data_hook_failing_mid_body_cuts_the_response():
    inner = Sink()
    sink = FilteredSink(inner, chain_of(Shout), RequestRecord())
    await sink.head(head(), False, None)
    with pytest.raises(ResponseCut):
        await sink.data(b"boom", False)
    assert inner.cuts == ["FF"] and inner.datas == []


class Stamp(StreamFilter):
    async def on_response_headers(self, headers, end_stream):
        headers.set("x-proxy", "trio-mesh")


async def test_a_chain_with_only_response_headers_hooks_passes_the_body_straight_down():
    inner = Sink()
    sink = HeadFilteredSink(inner, chain_of(Stamp), RequestRecord())
    await sink.head(head(), False, b"raw head bytes")
    ((resp, end),) = inner.heads
    assert resp.headers == [(b"content-length", b"5"), (b"x-proxy", b"trio-mesh")]
    assert resp.content_length == 5 and not end
    await sink.data(b"hello", False)
    await sink.data(b"", True)
    assert inner.datas == [(b"hello", False), (b"", True)]
    assert sink.started


async def test_a_status_no_protocol_can_send_is_a_filter_failure():
    inner = Sink()
    sink = FilteredSink(inner, chain_of(Teapot), RequestRecord())
    with pytest.raises(FilterReplied) as raised:
        await sink.head(head(), False, None)
    assert raised.value.reply.status == 500 and inner.heads == []


# --------------------------------------------------------------------------- no cycles


def _alive(cls: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is cls)


async def test_a_finished_request_leaves_no_reference_cycle(nursery):
    """Sessions, streams and request bodies are freed when their request or connection ends,
    not left to the cycle collector (the body refers to its adapter, never the other way)."""
    h2_up = await start_h2_upstream(nursery)
    h2 = {"downstream_protocol": "Http2", "upstream_protocol": "Http2"}
    _, h2_port = await start_proxy(nursery, http_config([to("up")], {"up": h2_up.port}, proxy=h2))
    h1_up = await start_upstream(nursery)
    _, h1_port = await start_proxy(nursery, http_config([to("up")], {"up": h1_up.port}))
    gc.collect()
    gc.disable()
    try:
        with trio.fail_after(10):
            async with open_h2_client(h2_port) as client:
                for _ in range(5):
                    assert (await client.request("GET", "/echo")).status == 200
                    r = await client.request("POST", "/echo", body=b"x" * 1000)
                    assert r.status == 200
            for _ in range(5):
                async with await Client.connect(h1_port) as c:
                    await c.send(get("/"))
                    assert (await c.response()).status == 200
            # the connections' tasks end once the proxy saw the closes
            while _alive(http1._Session) or _alive(http2._Stream):
                await trio.sleep(0.01)
        assert _alive(RequestBody) == 0
    finally:
        gc.enable()
