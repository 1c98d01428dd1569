"""Stream filters on the HTTP/2 proxy: h2 and gRPC clients (the raw h2 test client, curl
--http2-prior-knowledge, grpcio) to HTTP/2 and HTTP/1 upstreams. Order both ways, local
replies (HTTP and gRPC, before the router answers, in place of a response, mid-upload, one that
closes the connection), a failing filter failing only its own stream, per-route config, body
rewriting both ways, trailers through the hooks, and what the hooks are told (``last``,
``end_stream``, the request context)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from typing import Any

import attrs
import grpc
import pytest
import trio

from tests import filter_helpers  # noqa: F401 - registers the t_* filters
from tests.grpc_helpers import EchoStub, GrpcEchoServer, grpc_upstream, in_thread
from tests.h2_upstream import (
    ErrorCodes,
    H2StreamReset,
    h2_request,
    open_h2_client,
    pattern_bytes,
    start_extra_upstream,
    start_h2_upstream,
)
from tests.http_helpers import (
    closed_port,
    curl,
    http_config,
    start_proxy,
    start_upstream,
    to,
    trailers_h1_upstream,
    upstream_headers,
)
from trio_mesh.filters.stream import (
    FILTER_FAILED,
    LocalReply,
    StreamFilter,
    register_stream_filter,
)

__all__ = ["grpc_upstream"]  # the fixture, imported for the tests below

UPSTREAMS = ("Http1", "Http2")
HEX32 = re.compile(r"[0-9a-f]{32}")
GRPC = [("content-type", "application/grpc"), ("te", "trailers")]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


# --------------------------------------------------------------------------- test filters
# (here rather than in filter_helpers.py: names of their own, t_h2_*)

#: What each ``t_h2_record`` filter saw, by its config ``key``: one tuple per hook call.
RECORDS: dict[str, list[tuple]] = {}


@attrs.frozen(kw_only=True)
class RecordConfig:
    key: str = "r"


class Record(StreamFilter):
    """Records every hook call in ``RECORDS[key]``, with the context the hook could see."""

    def _add(self, *entry: Any) -> None:
        RECORDS.setdefault(self.config.key, []).append(entry)

    async def on_request_headers(self, headers, end_stream):
        c = self.context
        self._add(
            "request_headers",
            end_stream,
            {
                "protocol": c.protocol,
                "grpc": c.grpc,
                "method": c.method,
                "path": c.path,
                "authority": c.authority,
                "cluster": c.cluster,
                "route": c.route is not None,
                "listener": c.listener,
                "remote": c.downstream_remote,
                "local": c.downstream_local,
            },
        )

    async def on_request_data(self, data, last):
        self._add("request_data", bytes(data), last)

    async def on_request_trailers(self, trailers):
        self._add("request_trailers", list(trailers))

    async def on_response_headers(self, headers, end_stream):
        c = self.context
        self._add("response_headers", headers.status, end_stream, c.upstream_host, c.request_id)

    async def on_response_data(self, data, last):
        self._add("response_data", bytes(data), last)

    async def on_response_trailers(self, trailers):
        self._add("response_trailers", list(trailers))


@attrs.frozen(kw_only=True)
class TrailerConfig:
    name: str = "x-filtered"
    value: str = "yes"


class Trailer(StreamFilter):
    """Sets ``name: value`` in the request's and the response's trailers."""

    async def on_request_trailers(self, trailers):
        trailers.set(self.config.name, self.config.value)

    async def on_response_trailers(self, trailers):
        trailers.set(self.config.name, self.config.value)


@attrs.frozen(kw_only=True)
class ReplyConfig:
    where: str = "request_headers"  # or request_data, response_headers
    status: int = 403
    body: str = "refused by t_h2_reply\n"
    grpc_status: int | None = None
    grpc_message: str | None = None
    close: bool = False
    #: request_data: answer once more than this many body bytes arrived
    after: int = 0


class Reply(StreamFilter):
    """Answers with a full `LocalReply` (header ``x-replied: <where>``) from hook ``where``."""

    def __init__(self, config: ReplyConfig, context: Any) -> None:
        super().__init__(config, context)
        self.seen = 0

    def _reply(self) -> LocalReply:
        c = self.config
        return LocalReply(
            c.status,
            c.body,
            headers=[("x-replied", c.where)],
            grpc_status=c.grpc_status,
            grpc_message=c.grpc_message,
            close=c.close,
        )

    async def on_request_headers(self, headers, end_stream):
        if self.config.where == "request_headers":
            return self._reply()
        return None

    async def on_request_data(self, data, last):
        self.seen += len(data)
        if self.config.where == "request_data" and self.seen > self.config.after:
            return self._reply()
        return None

    async def on_response_headers(self, headers, end_stream):
        if self.config.where == "response_headers":
            return self._reply()
        return None


@attrs.frozen(kw_only=True)
class StatusConfig:
    status: int = 201


class Status(StreamFilter):
    """Changes the response status."""

    async def on_response_headers(self, headers, end_stream):
        headers.status = self.config.status


register_stream_filter("t_h2_record", Record, RecordConfig)
register_stream_filter("t_h2_trailer", Trailer, TrailerConfig)
register_stream_filter("t_h2_reply", Reply, ReplyConfig)
register_stream_filter("t_h2_status", Status, StatusConfig)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _no_proxy_errors(caplog: pytest.LogCaptureFixture):
    """The proxy logs no error of its own (a failing filter is logged by trio_mesh.filters)."""
    RECORDS.clear()
    yield
    errors = [
        r
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR
        and r.name.startswith("trio_mesh")
        and r.name != "trio_mesh.filters"
    ]
    assert not errors, "\n".join(caplog.text.splitlines()[-60:])


async def start_any_upstream(nursery: trio.Nursery, kind: str) -> Any:
    """tests/upstream.py (h11) for ``Http1``, tests/h2_upstream.py for ``Http2``."""
    if kind == "Http1":
        return await start_upstream(nursery)
    return await start_h2_upstream(nursery)


async def filtered_proxy(
    nursery: trio.Nursery,
    up_port: int,
    filters: list[dict[str, Any]],
    *,
    up: str = "Http2",
    routes: list[dict[str, Any]] | None = None,
) -> int:
    """An HTTP/2 (h2c) listener with ``filters`` routing to cluster ``up``; its port."""
    config = http_config(
        routes if routes is not None else [to()],
        {"up": up_port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": up},
        listener={"stream_filters": filters},
    )
    _, port = await start_proxy(nursery, config)
    return port


def tags(*values: str) -> list[dict[str, Any]]:
    return [{"type": "t_tag", "config": {"value": v}} for v in values]


def echoed_body(info: dict[str, Any]) -> tuple[int, str]:
    """(length, sha256) of the body an /echo upstream (either kind) got."""
    return info.get("body_length", info.get("body_len")), info["body_sha256"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def hooks(key: str, name: str) -> list[tuple]:
    return [entry for entry in RECORDS[key] if entry[0] == name]


def assert_last_once(entries: list[tuple]) -> None:
    """Data hooks: ``last`` on the final call only."""
    assert [e[2] for e in entries] == [False] * (len(entries) - 1) + [True], entries


async def wait_closed_upstream(upstream: Any, n: int = 1) -> None:
    """Until the h11 upstream saw ``n`` connections close."""
    while upstream.closed < n:
        await upstream.closed_event.wait()


def _expect_rpc_error(fn, *args: Any, **kwargs: Any) -> grpc.RpcError:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{fn} succeeded")


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_request_order_is_config_order_and_response_order_reverse(
    nursery: trio.Nursery, up: str
) -> None:
    upstream = await start_any_upstream(nursery, up)
    port = await filtered_proxy(nursery, upstream.port, tags("a", "b"), up=up)
    r = await h2_request(port, "GET", "/echo", [("x-tag", "client")])
    assert r.status == 200, r
    assert upstream_headers(r.json()).get("x-tag") == "client,a,b"
    assert r.headers.get("x-tag") == "b,a"


@needs_curl
async def test_order_with_curl(nursery: trio.Nursery) -> None:
    upstream = await start_h2_upstream(nursery)
    port = await filtered_proxy(nursery, upstream.port, tags("a", "b"))
    code, out, err = await curl("--http2-prior-knowledge", "-i", f"http://127.0.0.1:{port}/echo")
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200")
    assert b"\r\nx-tag: b,a" in head
    assert upstream_headers(json.loads(body)).get("x-tag") == "a,b"


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_hooks_see_the_context_and_end_of_stream(nursery: trio.Nursery, up: str) -> None:
    upstream = await start_any_upstream(nursery, up)
    port = await filtered_proxy(nursery, upstream.port, [{"type": "t_h2_record"}], up=up)
    async with open_h2_client(port, authority="svc.example") as client:
        r = await client.request("GET", "/echo?a=1")
        assert r.status == 200
        ((_, end_stream, context),) = hooks("r", "request_headers")
        assert end_stream is True  # a GET: HEADERS with END_STREAM, no data hooks then
        assert not hooks("r", "request_data")
        assert context["protocol"] == "HTTP/2" and context["grpc"] is False
        assert (context["method"], context["path"], context["authority"]) == (
            "GET",
            "/echo?a=1",
            "svc.example",
        )
        assert (context["cluster"], context["route"], context["listener"]) == (
            "up",
            True,
            "ingress",
        )
        assert context["remote"][0] == "127.0.0.1" and context["local"][1] == port
        ((_, status, end, host, request_id),) = hooks("r", "response_headers")
        assert (status, end, host) == (200, False, f"127.0.0.1:{upstream.port}")
        assert HEX32.fullmatch(request_id)
        assert b"".join(e[1] for e in hooks("r", "response_data")) == r.body
        assert_last_once(hooks("r", "response_data"))

        # a body-less response (the head ends the stream): no data hooks
        RECORDS.clear()
        r = await client.request("GET", "/status/204")
        assert r.status == 204
        assert hooks("r", "response_headers")[0][1:3] == (204, True)
        assert not hooks("r", "response_data")


# --------------------------------------------------------------------------- local replies


async def test_local_reply_answers_and_the_connection_goes_on(nursery: trio.Nursery) -> None:
    upstream = await start_h2_upstream(nursery)
    port = await filtered_proxy(
        nursery, upstream.port, [{"type": "t_deny", "config": {"header": "x-deny"}}]
    )
    async with open_h2_client(port) as client:
        denied = await client.request("GET", "/echo", [("x-deny", "1")])
        passed = await client.request("GET", "/echo")
    assert (denied.status, denied.body) == (418, b"denied by t_deny\n")
    assert denied.headers.get("x-denied") == "1"
    assert denied.headers.get("content-type") == "text/plain"
    assert denied.headers.get("content-length") == str(len(denied.body))
    assert passed.status == 200
    assert [path for path, _ in upstream.requests] == ["/echo"]  # the denied one never went


async def test_filters_run_before_the_router_answers(nursery: trio.Nursery) -> None:
    """Envoy's order: a filter refuses a request even where no route (or a direct response)
    would answer; once the filters let it through, the router answers."""
    routes = [
        to(prefix="/only"),
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": "direct\n"}},
    ]
    filters = [{"type": "t_deny", "config": {"header": "x-deny"}}]
    port = await filtered_proxy(nursery, closed_port(), filters, routes=routes)
    async with open_h2_client(port) as client:
        for path in ("/elsewhere", "/direct"):
            r = await client.request("GET", path, [("x-deny", "1")])
            assert r.status == 418, path
        r = await client.request("GET", "/elsewhere")
        assert (r.status, r.body) == (404, b"route not found\n")
        r = await client.request("GET", "/direct")
        assert (r.status, r.body) == (200, b"direct\n")


@pytest.mark.parametrize(
    ("filter_", "code", "details"),
    [
        (
            {"type": "t_deny", "config": {"status": 403}},
            grpc.StatusCode.PERMISSION_DENIED,
            "denied by t_deny",
        ),
        (
            {
                "type": "t_h2_reply",
                "config": {"status": 429, "grpc_status": 8, "grpc_message": "slow down"},
            },
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
        ),
        ({"type": "t_boom"}, grpc.StatusCode.INTERNAL, FILTER_FAILED.strip()),
    ],
    ids=["mapped", "own-status", "raising"],
)
async def test_grpc_local_replies(
    nursery: trio.Nursery,
    grpc_upstream: GrpcEchoServer,
    filter_: dict[str, Any],
    code: grpc.StatusCode,
    details: str,
) -> None:
    port = await filtered_proxy(nursery, grpc_upstream.port, [filter_])
    with EchoStub.connect(port) as stub:
        error = await in_thread(_expect_rpc_error, stub.Unary, b"x", timeout=5)
    assert (error.code(), error.details()) == (code, details)
    if filter_["type"] == "t_h2_reply":
        # the reply's own headers ride in the trailers-only response
        assert ("x-replied", "request_headers") in error.trailing_metadata()
        # HTTP 200, one HEADERS frame with END_STREAM: the gRPC way
        r = await h2_request(port, "POST", "/test.Echo/Unary", GRPC, body=grpc_message(b"x"))
        assert (r.status, r.body) == (200, b"")
        assert (r.headers.get("grpc-status"), r.headers.get("grpc-message")) == ("8", "slow down")
    assert grpc_upstream.calls == []


async def test_a_reply_that_closes_sends_goaway_and_lets_streams_finish(
    nursery: trio.Nursery,
) -> None:
    upstream = await start_h2_upstream(nursery)
    filters = [{"type": "t_h2_reply", "config": {"status": 429, "close": True}}]
    routes = [
        to(prefix="/close"),
        {**to(), "per_filter_config": {"t_h2_reply": {"disabled": True}}},
    ]
    port = await filtered_proxy(nursery, upstream.port, filters, routes=routes)
    body = os.urandom(50_000)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            in_flight = await client.send_headers("POST", "/echo")
            await client.send_data(in_flight, body[:20_000])
            r = await client.request("GET", "/close")
            assert (r.status, r.headers.get("x-replied")) == (429, "request_headers")
            await client.wait_until(lambda: client.goaway is not None)
            assert client.goaway.error_code == ErrorCodes.NO_ERROR
            # the stream in flight finishes, then the connection closes
            await client.send_data(in_flight, body[20_000:], end_stream=True)
            done = await client.response(in_flight)
            assert done.status == 200 and done.json()["body_sha256"] == sha(body)
            await client.wait_closed()


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("where", ["request_headers", "response_headers", "response_data"])
@pytest.mark.parametrize("up", UPSTREAMS)
async def test_a_raising_filter_fails_only_its_stream(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, up: str, where: str
) -> None:
    upstream = await start_any_upstream(nursery, up)
    filters = [{"type": "t_boom", "config": {"where": where}}]
    routes = [
        to(prefix="/boom/", prefix_rewrite="/"),
        {**to(), "per_filter_config": {"t_boom": {"disabled": True}}},
    ]
    port = await filtered_proxy(nursery, upstream.port, filters, up=up, routes=routes)
    body = os.urandom(60_000)
    with caplog.at_level(logging.ERROR, logger="trio_mesh.filters"), trio.fail_after(10):
        async with open_h2_client(port) as client:
            # A neighbour in flight on the same connection, its body half sent.
            ok = await client.send_headers("POST", "/echo")
            await client.send_data(ok, body[:30_000])
            failing = await client.send_headers("GET", "/boom/bytes/100000", end_stream=True)
            if where == "response_data":
                # The head went already: the stream can only be reset.
                status, _ = await client.read_head(failing)
                assert status == 200
                with pytest.raises(H2StreamReset) as reset:
                    while await client.read_chunk(failing):
                        pass
                assert reset.value.error_code == ErrorCodes.INTERNAL_ERROR
            else:
                r = await client.response(failing)
                assert (r.status, r.body) == (500, FILTER_FAILED.encode())
            await client.send_data(ok, body[30_000:], end_stream=True)
            r = await client.response(ok)
            assert r.status == 200
            assert echoed_body(r.json()) == (len(body), sha(body))
            # and the connection takes new streams
            assert (await client.request("GET", "/echo")).status == 200
    assert any(
        "'t_boom'" in rec.getMessage() and where in rec.getMessage() for rec in caplog.records
    )


# --------------------------------------------------------------------------- per route


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_per_route_config_replaces_the_listeners(nursery: trio.Nursery, up: str) -> None:
    upstream = await start_any_upstream(nursery, up)
    routes = [
        {
            **to(prefix="/special", prefix_rewrite="/echo"),
            "per_filter_config": {"t_tag": {"value": "route"}},
        },
        {
            **to(prefix="/off", prefix_rewrite="/echo"),
            "per_filter_config": {"t_tag": {"disabled": True}},
        },
        to(),
    ]
    port = await filtered_proxy(nursery, upstream.port, tags("listener"), up=up, routes=routes)
    async with open_h2_client(port) as client:
        got = {path: await client.request("GET", path) for path in ("/special", "/off", "/echo")}
    expected = {"/special": "route", "/off": None, "/echo": "listener"}
    for path, value in expected.items():
        r = got[path]
        assert upstream_headers(r.json()).get("x-tag") == value, path
        assert r.headers.get("x-tag") == value, path


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_bodies_rewritten_both_ways(nursery: trio.Nursery, up: str) -> None:
    upstream = await start_any_upstream(nursery, up)
    port = await filtered_proxy(nursery, upstream.port, [{"type": "t_upper"}], up=up)
    body = b"hello, world; " * 5000  # 70 kB: several DATA frames
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("POST", "/echo", [("content-length", str(len(body)))])
            await client.send_data(sid, body, end_stream=True)
            r = await client.response(sid)
            big = await client.request("GET", "/bytes/200000")
    assert r.status == 200
    # the filter took content-length off (the length may change) both ways: an HTTP/1
    # upstream gets the request body chunked
    assert "content-length" not in r.headers
    assert r.body.count(b"!") == 1 and r.body.endswith(b"!")  # one last piece, at the end
    info = json.loads(r.body[:-1].lower())
    assert echoed_body(info) == (len(body), sha(body.upper()))
    sent = upstream_headers(info)
    assert "content-length" not in sent
    if up == "Http1":
        assert sent.get("transfer-encoding") == "chunked"
    assert big.status == 200 and "content-length" not in big.headers
    assert big.body == pattern_bytes(200_000).upper() + b"!"


@needs_curl
async def test_bodies_rewritten_with_curl(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    port = await filtered_proxy(nursery, upstream.port, [{"type": "t_upper"}], up="Http1")
    code, out, err = await curl(
        "--http2-prior-knowledge", "--data-binary", "hello", f"http://127.0.0.1:{port}/echo"
    )
    assert code == 0, err
    assert out.endswith(b"!")
    info = json.loads(out[:-1].lower())
    assert echoed_body(info) == (5, sha(b"HELLO"))
    assert upstream_headers(info).get("transfer-encoding") == "chunked"


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_a_status_changed_by_a_filter(nursery: trio.Nursery, up: str) -> None:
    upstream = await start_any_upstream(nursery, up)
    port = await filtered_proxy(nursery, upstream.port, [{"type": "t_h2_status"}], up=up)
    r = await h2_request(port, "GET", "/bytes/1000")
    assert (r.status, r.body) == (201, pattern_bytes(1000))


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_a_reply_to_the_response_head_replaces_the_response(
    nursery: trio.Nursery, up: str
) -> None:
    """The upstream's response is dropped: its HTTP/2 stream reset, its HTTP/1 connection
    closed (never reused with the rest of a body unread)."""
    upstream = await start_any_upstream(nursery, up)
    filters = [
        {
            "type": "t_h2_reply",
            "config": {"where": "response_headers", "status": 503, "body": "replaced\n"},
        }
    ]
    port = await filtered_proxy(nursery, upstream.port, filters, up=up)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            r = await client.request("GET", "/bytes/1000000")
            assert (r.status, r.body) == (503, b"replaced\n")
            assert r.headers.get("x-replied") == "response_headers"
            if up == "Http2":
                await upstream.wait_until(lambda: upstream.resets)
                ((_, _, code, path),) = upstream.resets
                assert (code, path) == (ErrorCodes.CANCEL, "/bytes/1000000")
            else:
                await wait_closed_upstream(upstream)
                r = await client.request("GET", "/bytes/10")
                assert r.status == 503
                assert upstream.connections == 2


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_a_reply_mid_upload_resets_the_upstream_request(
    nursery: trio.Nursery, up: str
) -> None:
    upstream = await start_any_upstream(nursery, up)
    filters = [
        {
            "type": "t_h2_reply",
            "config": {
                "where": "request_data",
                "after": 20_000,
                "status": 413,
                "body": "too large\n",
            },
        }
    ]
    routes = [to(prefix="/echo"), {**to(), "per_filter_config": {"t_h2_reply": {"disabled": True}}}]
    port = await filtered_proxy(nursery, upstream.port, filters, up=up, routes=routes)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            r = await client.request("POST", "/echo", body=os.urandom(200_000))
            assert (r.status, r.body) == (413, b"too large\n")
            assert r.headers.get("x-replied") == "request_data"
            if up == "Http2":
                await upstream.wait_until(lambda: upstream.resets)
                ((_, _, code, path),) = upstream.resets
                assert (code, path) == (ErrorCodes.CANCEL, "/echo")
            else:
                await wait_closed_upstream(upstream)
                assert upstream.requests == []  # it never got the whole request
            # the connection goes on (and an HTTP/1 upstream connection is a new one)
            r = await client.request("POST", "/upload" if up == "Http2" else "/x", body=b"ok")
            assert r.status == 200
    if up == "Http1":
        assert upstream.connections == 2


async def test_a_refused_stream_is_replayed_with_the_body_filtered_once(
    nursery: trio.Nursery,
) -> None:
    """The upstream refuses the stream mid-body (REFUSED_STREAM after 20 kB): the retry
    resends the filtered bytes it kept and filters only what arrives after."""
    upstream = await start_extra_upstream(nursery)
    filters = [{"type": "t_h2_record"}, {"type": "t_upper"}]
    port = await filtered_proxy(nursery, upstream.port, filters)
    body = b"abcdefgh" * 7_500  # 60 kB: within retry_buffer_bytes
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers("POST", "/refuse-once/k?after=20000")
            await client.send_data(sid, body[:30_000])
            await upstream.wait_until(lambda: len(upstream.requests) == 2)  # the retry is on
            await client.send_data(sid, body[30_000:])
            await client.send_trailers(sid, [("x-t", "1")])
            r = await client.response(sid)
    assert r.status == 200
    info = json.loads(r.body[:-1].lower())
    assert (info["body_len"], info["body_sha256"]) == (len(body), sha(body.upper()))
    assert info["trailers"] == [["x-t", "1"]]
    assert upstream.refused_keys == {"k"}
    assert b"".join(e[1] for e in hooks("r", "request_data")) == body  # each byte once
    assert_last_once(hooks("r", "request_data"))


# --------------------------------------------------------------------------- trailers


async def test_grpc_messages_and_trailers_pass_through_the_hooks(
    nursery: trio.Nursery, grpc_upstream: GrpcEchoServer
) -> None:
    filters = [{"type": "t_h2_record"}, {"type": "t_h2_trailer"}]
    port = await filtered_proxy(nursery, grpc_upstream.port, filters)
    with EchoStub.connect(port) as stub:
        response, call = await in_thread(
            stub.Unary.with_call, b"hello", metadata=(("x-trailer", "t1"),), timeout=5
        )
        messages = [b"m%d" % i for i in range(5)]
        summary = await in_thread(stub.ClientStream, iter(messages), timeout=5)
    assert response == b"hello"
    trailing = call.trailing_metadata()
    assert ("x-trailer", "t1") in trailing and ("x-filtered", "yes") in trailing
    assert summary == b"count=5;bytes=10"

    names = [e[0] for e in RECORDS["r"]]
    # both calls: request headers, data ..., response headers, data ..., trailers
    assert names.count("request_headers") == names.count("response_trailers") == 2
    first = names.index("response_trailers") + 1
    for call_entries in (RECORDS["r"][:first], RECORDS["r"][first:]):
        kinds = [e[0] for e in call_entries]
        assert kinds[0] == "request_headers" and kinds[-1] == "response_trailers"
        assert call_entries[0][2]["grpc"] is True
        assert kinds.index("response_headers") > max(
            i for i, k in enumerate(kinds) if k == "request_data"
        )
        assert_last_once([e for e in call_entries if e[0] == "request_data"])
        assert_last_once([e for e in call_entries if e[0] == "response_data"])
        (trailers,) = [e[1] for e in call_entries if e[0] == "response_trailers"]
        assert ("grpc-status", "0") in trailers
    request_bytes = b"".join(e[1] for e in RECORDS["r"][:first] if e[0] == "request_data")
    assert request_bytes == grpc_message(b"hello")
    request_bytes = b"".join(e[1] for e in RECORDS["r"][first:] if e[0] == "request_data")
    assert request_bytes == b"".join(grpc_message(m) for m in messages)


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_request_and_response_trailers_through_the_hooks(
    nursery: trio.Nursery, up: str
) -> None:
    """A gRPC-typed request with trailers (h2 client): the trailers hooks change them on the
    way up and on the way down; the data hooks' last call comes before the trailers'."""
    if up == "Http1":
        up_port, seen = await trailers_h1_upstream(nursery)
    else:
        upstream = await start_h2_upstream(nursery)
        up_port = upstream.port
    filters = [{"type": "t_h2_record"}, {"type": "t_h2_trailer"}]
    port = await filtered_proxy(nursery, up_port, filters, up=up)
    message = grpc_message(b"hello")
    r = await h2_request(port, "POST", "/echo", GRPC, body=message, trailers=[("x-sum", "abc")])
    assert r.status == 200
    if up == "Http1":
        (record,) = seen
        assert record["trailers"] == [["x-sum", "abc"], ["x-filtered", "yes"]]
        assert record["body"].encode("latin-1") == message
        assert r.trailers == [("x-up-trailer", "done"), ("grpc-status", "0"), ("x-filtered", "yes")]
    else:
        assert r.json()["trailers"] == [["x-sum", "abc"], ["x-filtered", "yes"]]
        assert r.json()["body_len"] == len(message)
        assert r.trailers == [("x-sum", "abc"), ("x-filtered", "yes")]
    kinds = [e[0] for e in RECORDS["r"]]
    assert kinds == [
        "request_headers",
        "request_data",
        "request_data",
        "request_trailers",
        "response_headers",
        "response_data",
        "response_data",
        "response_trailers",
    ]
    assert [e[1:] for e in hooks("r", "request_data")] == [(message, False), (b"", True)]
    assert hooks("r", "request_trailers")[0][1] == [("x-sum", "abc")]
    assert hooks("r", "response_data")[-1][1:] == (b"", True)


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_a_rewritten_body_ends_before_the_trailers(nursery: trio.Nursery, up: str) -> None:
    """The data hooks' last piece (t_upper's "!") goes out before the response trailers."""
    if up == "Http1":
        up_port, _ = await trailers_h1_upstream(nursery)
        path, trailers = "/x", [("x-up-trailer", "done"), ("grpc-status", "0")]
    else:
        up_port = (await start_h2_upstream(nursery)).port
        path, trailers = "/trailers", [("x-trailer", "yes"), ("grpc-status", "0")]
    port = await filtered_proxy(nursery, up_port, [{"type": "t_upper"}], up=up)
    r = await h2_request(port, "GET", path)
    assert r.status == 200 and r.body.endswith(b"!") and r.body.count(b"!") == 1
    assert r.trailers == trailers
    if up == "Http2":
        assert r.body == b"TRAILERS\n!"
    else:
        assert json.loads(r.body[:-1])["METHOD"] == "GET"
