"""The ``gzip`` stream filter end to end: real proxy, real upstreams (h11 and raw), real
clients (raw sockets, curl --compressed); bodies are decompressed with the gzip module and
compared byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import zlib
from typing import Any

import pytest
import trio

from tests.h2_upstream import h2_request, start_h2_upstream
from tests.http_helpers import (
    Client,
    curl,
    get,
    http_config,
    read_request,
    request,
    running_proxy,
    start_raw_server,
    start_upstream,
    to,
    upstream_headers,
)
from tests.upstream import pattern_bytes
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.config.stream_filters.gzip import GzipConfig
from trio_mesh.filters.gzip import GzipFilter, accepts_gzip
from trio_mesh.filters.stream import RequestContext

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
GZ = "Accept-Encoding: gzip\r\n"
MIB = 1024 * 1024


def gzip_config(port: int, config: dict[str, Any] | None = None, routes: list | None = None):
    listener = {"stream_filters": [{"type": "gzip", "config": config or {}}]}
    return http_config(routes or [to()], {"up": port}, listener=listener)


# --------------------------------------------------------------------------- Accept-Encoding


@pytest.mark.parametrize(
    ("values", "accepted"),
    [
        (["gzip"], True),
        (["GZIP"], True),
        (["gzip, deflate, br"], True),
        (["deflate", "gzip;q=0.5"], True),  # two fields are one list
        (["x-gzip"], True),
        (["*"], True),
        (["br;q=1.0, *;q=0.1"], True),
        (["gzip;q=0"], False),
        (["gzip; q=0.000"], False),
        (["gzip;q=0, *"], False),  # named: the wildcard does not stand for it
        (["*;q=0"], False),
        (["br, deflate"], False),
        (["identity"], False),
        ([""], False),
        (["gzip;q=0.5, identity;q=1"], False),  # identity preferred
        (["gzip;q=1, identity;q=0.5"], True),
        (["gzip;q=2"], False),  # malformed q: not taken as a yes
        (["gzip;q=abc"], False),
        (["gzip;level=1"], True),  # other parameters are not q
    ],
)
def test_accept_encoding(values: list[str], accepted: bool) -> None:
    assert accepts_gzip(values) is accepted


# --------------------------------------------------------------------------- HTTP/1


async def test_compressed_when_accepted_identity_otherwise(nursery):
    up = await start_upstream(nursery)
    async with running_proxy(gzip_config(up.port)) as (_, port):
        zipped = await request(port, get("/bytes/100000", headers=GZ))
        plain = await request(port, get("/bytes/100000"))
        refused = await request(port, get("/bytes/100000", headers="Accept-Encoding: gzip;q=0\r\n"))
        other = await request(port, get("/bytes/100000", headers="Accept-Encoding: br\r\n"))
    assert zipped.status == 200
    assert zipped.headers.get("content-encoding") == "gzip"
    assert zipped.headers.get("vary") == "accept-encoding"
    assert "content-length" not in zipped.headers
    assert zipped.headers.get("transfer-encoding") == "chunked"
    assert len(zipped.body) < 100000 // 10  # the pattern repeats: it compresses well
    assert gzip.decompress(zipped.body) == pattern_bytes(100000)
    for identity in (plain, refused, other):
        assert identity.status == 200
        assert "content-encoding" not in identity.headers
        # compressible, so caches are told it depends on Accept-Encoding (nginx's gzip_vary)
        assert identity.headers.get("vary") == "accept-encoding"
        assert identity.headers.get("content-length") == "100000"
        assert identity.body == pattern_bytes(100000)
    # the upstream saw the client's Accept-Encoding unchanged
    assert upstream_headers(up.requests[0]).get("accept-encoding") == "gzip"


@pytest.mark.parametrize("kind", ["bytes", "chunked"])
async def test_large_streamed_bodies_arrive_complete(nursery, kind):
    n = 6 * MIB + 12345
    up = await start_upstream(nursery)
    async with running_proxy(gzip_config(up.port)) as (_, port):
        with trio.fail_after(30):
            response = await request(port, get(f"/{kind}/{n}", headers=GZ))
    assert response.headers.get("content-encoding") == "gzip"
    body = gzip.decompress(response.body)
    assert len(body) == n
    assert hashlib.sha256(body).digest() == hashlib.sha256(pattern_bytes(n)).digest()


async def test_small_body_under_the_minimum_is_not_compressed(nursery):
    up = await start_upstream(nursery)
    async with running_proxy(gzip_config(up.port, {"content_length": 1000})) as (_, port):
        small = await request(port, get("/bytes/999", headers=GZ))
        exact = await request(port, get("/bytes/1000", headers=GZ))
        unknown = await request(port, get("/chunked/10", headers=GZ))  # no length: compressed
    assert "content-encoding" not in small.headers
    assert "vary" not in small.headers  # never compressed, whoever asks
    assert small.body == pattern_bytes(999)
    assert exact.headers.get("content-encoding") == "gzip"
    assert gzip.decompress(exact.body) == pattern_bytes(1000)
    assert unknown.headers.get("content-encoding") == "gzip"
    assert gzip.decompress(unknown.body) == pattern_bytes(10)


async def test_head_204_304_and_errors_without_body_are_untouched(nursery):
    up = await start_upstream(nursery)
    async with running_proxy(gzip_config(up.port)) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(f"HEAD /bytes/5000 HTTP/1.1\r\nHost: x\r\n{GZ}\r\n".encode())
            head = await client.response(head=True)
            await client.send(get("/status/204", headers=GZ))
            no_content = await client.response()
            await client.send(get("/status/304", headers=GZ))
            not_modified = await client.response()
            # and the connection is still good for a compressed response
            await client.send(get("/bytes/5000", headers=GZ))
            after = await client.response()
    assert head.status == 200
    assert head.headers.get("content-length") == "5000"
    assert "content-encoding" not in head.headers and "vary" not in head.headers
    for response in (no_content, not_modified):
        assert "content-encoding" not in response.headers
        assert response.body == b""
    assert no_content.status == 204 and not_modified.status == 304
    assert gzip.decompress(after.body) == pattern_bytes(5000)


async def test_content_types(nursery):
    """/echo answers application/json; /bytes has no Content-Type (compressed, as Envoy)."""
    up = await start_upstream(nursery)
    async with running_proxy(gzip_config(up.port)) as (_, port):
        json_default = await request(port, get("/echo", headers=GZ))
    only_html = gzip_config(up.port, {"content_types": ["Text/HTML"]})
    async with running_proxy(only_html) as (_, port):
        json_html_only = await request(port, get("/echo", headers=GZ))
        untyped = await request(port, get("/bytes/1000", headers=GZ))
    assert json_default.headers.get("content-encoding") == "gzip"
    assert gzip.decompress(json_default.body).startswith(b'{"method": "GET"')
    assert "content-encoding" not in json_html_only.headers
    assert json_html_only.body.startswith(b'{"method": "GET"')
    assert untyped.headers.get("content-encoding") == "gzip"


async def test_levels_are_applied(nursery):
    """The gzip header's XFL byte says which end of the scale compressed it."""
    up = await start_upstream(nursery)
    found = {}
    for level in (1, 9):
        async with running_proxy(gzip_config(up.port, {"gzip_level": level})) as (_, port):
            response = await request(port, get("/bytes/200000", headers=GZ))
        assert gzip.decompress(response.body) == pattern_bytes(200000)
        found[level] = response.body[8]
    assert found == {1: 4, 9: 2}  # RFC 1952: 4 = fastest, 2 = maximum compression


async def test_http10_client_gets_a_close_delimited_compressed_body(nursery):
    up = await start_upstream(nursery)
    async with running_proxy(gzip_config(up.port)) as (_, port):
        response = await request(port, f"GET /bytes/50000 HTTP/1.0\r\n{GZ}\r\n".encode())
    assert response.headers.get("content-encoding") == "gzip"
    assert "content-length" not in response.headers
    assert "transfer-encoding" not in response.headers
    assert gzip.decompress(response.body) == pattern_bytes(50000)


async def test_keep_alive_connection_each_response_its_own_stream(nursery):
    up = await start_upstream(nursery)
    async with running_proxy(gzip_config(up.port)) as (_, port):
        async with await Client.connect(port) as client:
            bodies = []
            for n, headers in ((3000, GZ), (4000, ""), (70000, GZ), (5, GZ)):
                await client.send(get(f"/chunked/{n}", headers=headers))
                response = await client.response()
                encoded = response.headers.get("content-encoding") == "gzip"
                body = gzip.decompress(response.body) if encoded else response.body
                bodies.append((encoded, body))
    assert bodies == [
        (True, pattern_bytes(3000)),
        (False, pattern_bytes(4000)),
        (True, pattern_bytes(70000)),
        (True, pattern_bytes(5)),
    ]
    assert up.connections == 1


async def test_per_route_config_and_disabled(nursery):
    up = await start_upstream(nursery)
    routes = [
        {**to(prefix="/off"), "per_filter_config": {"gzip": {"disabled": True}}},
        {**to(prefix="/min"), "per_filter_config": {"gzip": {"content_length": 100000}}},
        to(),
    ]
    async with running_proxy(gzip_config(up.port, routes=routes)) as (_, port):
        off = await request(port, get("/off/bytes/5000", headers=GZ))
        small_here = await request(port, get("/min/bytes/5000", headers=GZ))
        on = await request(port, get("/bytes/5000", headers=GZ))
    assert "content-encoding" not in off.headers
    assert "content-encoding" not in small_here.headers
    assert on.headers.get("content-encoding") == "gzip"


# --------------------------------------------------------------------------- raw upstream


async def raw_upstream(nursery: trio.Nursery, gate: trio.Event | None = None) -> int:
    """Answers every request with the headers named in its ``x-respond`` header
    (``name: value`` pairs split by ``|``) and a 2000-byte text body; ``/stream`` sends a
    chunked body in two pieces, the second only once ``gate`` is set."""

    async def handler(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            head, _ = req
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            extra = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "x-respond" and value.strip():
                    extra += [h.strip() for h in value.split("|")]
            if path == "/stream":
                first, second = b"first piece " * 50, b"second piece " * 50
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                    b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%b\r\n" % (len(first), first)
                )
                assert gate is not None
                await gate.wait()
                await stream.send_all(b"%x\r\n%b\r\n0\r\n\r\n" % (len(second), second))
                continue
            body = b"hello, compressible world! " * 74
            fields = "".join(f"{h}\r\n" for h in extra)
            await stream.send_all(
                f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{fields}\r\n".encode() + body
            )

    return await start_raw_server(nursery, handler)


def respond(*headers: str) -> str:
    return f"{GZ}x-respond: {'|'.join(headers)}\r\n"


async def test_response_header_rules(nursery):
    port_up = await raw_upstream(nursery)
    config = gzip_config(port_up)
    async with running_proxy(config) as (_, port):
        encoded = await request(port, get("/", headers=respond("content-encoding: br")))
        identity = await request(port, get("/", headers=respond("content-encoding: identity")))
        no_transform = await request(
            port, get("/", headers=respond("cache-control: public, No-Transform"))
        )
        ranged = await request(port, get("/", headers=respond("content-range: bytes 0-1997/5000")))
        charset = await request(
            port, get("/", headers=respond("content-type: text/html; charset=utf-8"))
        )
        image = await request(port, get("/", headers=respond("content-type: image/png")))
        grpc = await request(port, get("/", headers=respond("content-type: application/grpc")))
        vary = await request(port, get("/", headers=respond("vary: Origin", 'etag: "abc"')))
        vary_had = await request(port, get("/", headers=respond("vary: Accept-Encoding")))
        weak = await request(port, get("/", headers=respond('etag: W/"abc"')))
    for untouched in (encoded, no_transform, ranged, image, grpc):
        assert untouched.headers.get("content-length") == "1998", untouched
        assert untouched.headers.get("content-encoding") in (None, "br")
    assert encoded.headers.get("content-encoding") == "br"
    for compressed in (identity, charset, vary, vary_had, weak):
        assert compressed.headers.get("content-encoding") == "gzip", compressed
        assert gzip.decompress(compressed.body) == b"hello, compressible world! " * 74
    assert identity.headers.getall("content-encoding") == ["gzip"]
    assert vary.headers.get("vary") == "Origin, accept-encoding"
    assert vary.headers.get("etag") == 'W/"abc"'  # the bytes changed: no longer strong
    assert vary_had.headers.getall("vary") == ["Accept-Encoding"]
    assert weak.headers.get("etag") == 'W/"abc"'


async def test_each_piece_is_flushed_as_it_comes(nursery):
    """Z_SYNC_FLUSH per piece: what the upstream sent can be decompressed downstream before
    the upstream sends more (an event stream is not held back in the compressor)."""
    gate = trio.Event()
    port_up = await raw_upstream(nursery, gate)
    async with running_proxy(gzip_config(port_up)) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/stream", headers=GZ))
            head = await client._until(b"\r\n\r\n")
            assert b"content-encoding: gzip" in head
            z = zlib.decompressobj(31)
            out = b""
            with trio.fail_after(5):
                while len(out) < len(b"first piece " * 50):
                    size = int((await client._until(b"\r\n")).strip(), 16)
                    assert size > 0  # the body did not end
                    out += z.decompress((await client._exactly(size + 2))[:-2])
            assert out == b"first piece " * 50
            gate.set()
            while True:
                size = int((await client._until(b"\r\n")).strip(), 16)
                if size == 0:
                    assert await client._until(b"\r\n") == b"\r\n"
                    break
                out += z.decompress((await client._exactly(size + 2))[:-2])
            out += z.flush()
            assert z.eof
    assert out == b"first piece " * 50 + b"second piece " * 50


@needs_curl
async def test_curl_compressed(nursery, tmp_path):
    up = await start_upstream(nursery)
    async with running_proxy(gzip_config(up.port)) as (_, port):
        out = tmp_path / "body"
        code, _, err = await curl(
            "--compressed",
            "-D",
            str(tmp_path / "head"),
            "-o",
            str(out),
            f"http://127.0.0.1:{port}/chunked/{2 * MIB}",
        )
    assert code == 0, err
    head = (tmp_path / "head").read_bytes().lower()
    assert b"content-encoding: gzip" in head
    assert out.read_bytes() == pattern_bytes(2 * MIB)


# --------------------------------------------------------------------------- config


def test_config_errors_name_their_path():
    doc_ok = gzip_config(1).servers  # built: the defaults load
    assert doc_ok
    bad = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "stream_filters": [
                            {"type": "gzip", "config": {"gzip_level": 10}},
                            {"type": "gzip", "config": {"content_types": ["text/html", "html"]}},
                        ],
                        "filter_chains": [
                            {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
                        ],
                    }
                ],
                "routers": [{"router_config_name": "r"}],
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = str(info.value)
    assert "stream_filters[0].config.gzip_level: expected 0 to 9, got 10" in text
    assert "stream_filters[1].config.content_types[1]: expected a media type" in text


# --------------------------------------------------------------------------- HTTP/2


def h2_gzip_config(port: int, upstream: str, config: dict[str, Any] | None = None):
    listener = {"stream_filters": [{"type": "gzip", "config": config or {}}]}
    proxy = {"downstream_protocol": "Http2", "upstream_protocol": upstream}
    return http_config([to()], {"up": port}, proxy=proxy, listener=listener)


H2_GZ = [("accept-encoding", "gzip, deflate")]


async def test_h2_to_h1_compressed_and_identity(nursery):
    n = 3 * MIB + 7
    up = await start_upstream(nursery)
    async with running_proxy(h2_gzip_config(up.port, "Http1")) as (_, port):
        zipped = await h2_request(port, "GET", f"/chunked/{n}", H2_GZ, timeout=30)
        plain = await h2_request(port, "GET", "/bytes/100000")
        refused = await h2_request(port, "GET", "/bytes/100000", [("accept-encoding", "*;q=0")])
        small = await h2_request(port, "GET", "/bytes/20", H2_GZ)
    assert zipped.status == 200
    assert zipped.headers.get("content-encoding") == "gzip"
    assert zipped.headers.get("vary") == "accept-encoding"
    assert "content-length" not in zipped.headers
    assert gzip.decompress(zipped.body) == pattern_bytes(n)
    assert "vary" not in small.headers
    for identity, length in ((plain, 100000), (refused, 100000), (small, 20)):
        assert "content-encoding" not in identity.headers
        assert identity.headers.get("content-length") == str(length)
        assert identity.body == pattern_bytes(length)


async def test_h2_to_h2_compressed_head_untouched(nursery):
    up = await start_h2_upstream(nursery)
    config = {"content_types": ["application/octet-stream", "application/json"]}
    async with running_proxy(h2_gzip_config(up.port, "Auto", config)) as (_, port):
        zipped = await h2_request(port, "GET", "/bytes/500000", H2_GZ)
        head = await h2_request(port, "HEAD", "/bytes/500000", H2_GZ)
        echo = await h2_request(port, "POST", "/echo", H2_GZ, body=b"x" * 1000)
    assert zipped.headers.get("content-encoding") == "gzip"
    assert gzip.decompress(zipped.body) == pattern_bytes(500000)
    assert "content-encoding" not in head.headers
    assert head.headers.get("content-length") == "500000" and head.body == b""
    assert echo.headers.get("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(echo.body))["body_len"] == 1000


async def test_grpc_is_never_compressed(nursery):
    up = await start_h2_upstream(nursery)
    config = {"content_types": ["application/octet-stream"]}
    grpc = [("content-type", "application/grpc"), ("te", "trailers"), *H2_GZ]
    async with running_proxy(h2_gzip_config(up.port, "Auto", config)) as (_, port):
        response = await h2_request(port, "POST", "/bytes/5000", grpc, body=b"\0\0\0\0\0")
        plain = await h2_request(port, "POST", "/bytes/5000", H2_GZ, body=b"\0\0\0\0\0")
    assert "content-encoding" not in response.headers
    assert response.body == pattern_bytes(5000)
    assert plain.headers.get("content-encoding") == "gzip"  # the same, not gRPC


@needs_curl
async def test_curl_http2_compressed(nursery, tmp_path):
    up = await start_upstream(nursery)
    async with running_proxy(h2_gzip_config(up.port, "Http1")) as (_, port):
        out = tmp_path / "body"
        code, _, err = await curl(
            "--http2-prior-knowledge",
            "--compressed",
            "-D",
            str(tmp_path / "head"),
            "-o",
            str(out),
            f"http://127.0.0.1:{port}/chunked/{2 * MIB}",
        )
    assert code == 0, err
    head = (tmp_path / "head").read_bytes().lower()
    assert head.startswith(b"http/2 200")
    assert b"content-encoding: gzip" in head
    assert out.read_bytes() == pattern_bytes(2 * MIB)


def test_rpc_grpc_and_head_get_no_filter() -> None:
    make = GzipFilter.factory(GzipConfig(), None)
    assert make(RequestContext("bolt", method="")) is None
    assert make(RequestContext("HTTP/2", method="POST", grpc=True)) is None
    assert make(RequestContext("HTTP/1.1", method="HEAD")) is None
    assert isinstance(make(RequestContext("HTTP/1.1", method="GET")), GzipFilter)
    assert isinstance(GzipFilter.factory(None, None)(RequestContext("HTTP/2")), GzipFilter)
