"""Shared helpers of the HTTP/1.1 proxy tests: configs, a raw-socket client, raw upstreams.

The client is deliberately small and strict: it reads exactly one response by its framing
(no body for HEAD, 1xx, 204, 304; Content-Length; chunked; else until EOF), so a proxy that
frames a response wrongly shows up as a wrong body or a hung read (bounded by fail_after).
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import trio

from trio_mesh import Server
from trio_mesh.config import MeshConfig, parse_config

from .upstream import Upstream

# --------------------------------------------------------------------------- configs

ClusterSpec = int | list[int] | dict[str, Any]


def _cluster(name: str, spec: ClusterSpec) -> dict[str, Any]:
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, list):
        return {
            "name": name,
            "connect_timeout": "2s",
            "hosts": [{"address": f"127.0.0.1:{p}"} for p in spec],
        }
    return {"name": name, "connect_timeout": "2s", **spec}


def http_config(
    routes: list[dict[str, Any]] | None = None,
    clusters: dict[str, ClusterSpec] | list[dict[str, Any]] | None = None,
    proxy: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    router_extra: dict[str, Any] | None = None,
    vhost_extra: dict[str, Any] | None = None,
) -> MeshConfig:
    """Listener ``ingress`` on 127.0.0.1:0 with the ``proxy`` filter and router config ``r``.

    ``routes``: the entries of one virtual host with domains ``["*"]`` (``vhost_extra`` is
    merged into that host); ``router_extra`` is merged into the router config, so it may
    replace ``virtual_hosts`` altogether. ``clusters``: ``{name: port | [ports] | {cluster
    keys}}`` or a list of full cluster dicts.
    """
    vhost = {"name": "default", "domains": ["*"], "routers": routes or [], **(vhost_extra or {})}
    router = {"router_config_name": "r", "virtual_hosts": [vhost], **(router_extra or {})}
    if clusters is None:
        cluster_list: list[dict[str, Any]] = []
    elif isinstance(clusters, dict):
        cluster_list = [_cluster(name, spec) for name, spec in clusters.items()]
    else:
        cluster_list = clusters
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "ingress",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "type": "proxy",
                                        "config": {"router_config_name": "r", **(proxy or {})},
                                    }
                                ]
                            }
                        ],
                        **(listener or {}),
                    }
                ],
                "routers": [router],
            }
        ],
        "cluster_manager": {"clusters": cluster_list},
    }
    return parse_config(doc).config


def to(cluster: str = "up", prefix: str = "/", **action: Any) -> dict[str, Any]:
    """A route entry: ``prefix`` to ``cluster`` with extra route-action keys."""
    return {"match": {"prefix": prefix}, "route": {"cluster_name": cluster, **action}}


async def start_proxy(nursery: trio.Nursery, config: MeshConfig) -> tuple[Server, int]:
    server = await nursery.start(Server(config).run)
    return server, server.addresses["ingress"][1]


@contextlib.asynccontextmanager
async def running_proxy(config: MeshConfig) -> AsyncIterator[tuple[Server, int]]:
    """A proxy for the block; stopped on exit (its access logs are written by then)."""
    async with trio.open_nursery() as nursery:
        server, port = await start_proxy(nursery, config)
        yield server, port
        nursery.cancel_scope.cancel()


def access_log(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """``listener`` keys for a JSON-lines access log in ``tmp_path``, and its path."""
    path = tmp_path / "access.log"
    return {"access_logs": [{"log_path": str(path), "log_format": "json"}]}, path


def read_access_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def start_upstream(nursery: trio.Nursery) -> Upstream:
    upstream = Upstream()
    await upstream.start(nursery)
    return upstream


async def start_raw_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    """Serve ``handler`` on 127.0.0.1:0; the port once listening."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    return listeners[0].socket.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound then closed: connecting is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_port() -> int:
    return closed_port()


# --------------------------------------------------------------------------- messages


class Headers(list):
    """``[(name_lowercase, value)]`` with lookups."""

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for n, v in self:
            if n == name:
                return v
        return default

    def getall(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self if n == name]

    def names(self) -> set[str]:
        return {n for n, _ in self}

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            return name.lower() in self.names()
        return super().__contains__(name)


class Response:
    """One response as read off the wire; unpacks as ``status, headers, body``."""

    def __init__(
        self,
        status: int,
        reason: str,
        version: str,
        headers: Headers,
        body: bytes,
        raw_head: bytes,
        raw_body: bytes,
        trailers: Headers | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.body = body
        self.raw_head = raw_head
        self.raw_body = raw_body
        self.trailers = trailers

    def __iter__(self):
        return iter((self.status, self.headers, self.body))

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {dict(self.headers)!r} body={self.body[:200]!r}>"


class Closed(Exception):
    """The connection ended (EOF or reset) before a complete response."""

    def __init__(self, got: bytes, reset: bool) -> None:
        super().__init__(f"connection {'reset' if reset else 'closed'} after {got[:300]!r}")
        self.got = got
        self.reset = reset


def parse_head(raw: bytes) -> tuple[int, str, str, Headers]:
    lines = raw.split(b"\r\n")
    version, _, rest = lines[0].decode("latin-1").partition(" ")
    code, _, reason = rest.partition(" ")
    headers = Headers()
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return int(code), reason, version, headers


class Client:
    """A raw HTTP/1.1 client connection: send bytes, read responses one at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def _until(self, marker: bytes) -> bytes:
        while (i := self.buf.find(marker)) < 0:
            if not await self._more():
                raise Closed(bytes(self.buf), self.reset)
        out = bytes(self.buf[: i + len(marker)])
        del self.buf[: i + len(marker)]
        return out

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._more():
                raise Closed(bytes(self.buf), self.reset)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def response(self, *, head: bool = False, interim: bool = False) -> Response:
        """The next response. ``head``: it answers a HEAD request. 1xx responses are
        skipped unless ``interim`` (then the next response, 1xx or not, is returned)."""
        while True:
            raw_head = await self._until(b"\r\n\r\n")
            status, reason, version, headers = parse_head(raw_head)
            if 100 <= status < 200 and status != 101 and not interim:
                continue
            break
        if head or status < 200 or status in (204, 304):
            return Response(status, reason, version, headers, b"", raw_head, b"")
        te = headers.get("transfer-encoding")
        if te is not None:
            assert te.lower() == "chunked", te
            body = bytearray()
            raw = bytearray()
            while True:
                line = await self._until(b"\r\n")
                raw += line
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    break
                data = await self._exactly(size + 2)
                raw += data
                assert data.endswith(b"\r\n")
                body += data[:-2]
            trailers = Headers()
            while (line := await self._until(b"\r\n")) != b"\r\n":
                raw += line
                name, _, value = line.decode("latin-1").partition(":")
                trailers.append((name.strip().lower(), value.strip()))
            raw += b"\r\n"
            return Response(
                status, reason, version, headers, bytes(body), raw_head, bytes(raw), trailers
            )
        length = headers.get("content-length")
        if length is not None:
            body = await self._exactly(int(length))
            return Response(status, reason, version, headers, body, raw_head, body)
        while await self._more():
            pass
        if self.reset:
            raise Closed(bytes(self.buf), True)
        body = bytes(self.buf)
        self.buf.clear()
        return Response(status, reason, version, headers, body, raw_head, body)

    async def read_to_eof(self) -> bytes:
        """Everything until the peer closes (a reset also ends it: see ``self.reset``)."""
        while await self._more():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def closed(self) -> bool:
        """Whether the peer ends the connection with nothing more sent (EOF or reset)."""
        return await self.read_to_eof() == b""


async def request(port: int, raw: bytes, *, head: bool = False) -> Response:
    """Send ``raw`` on a new connection and read one response."""
    async with await Client.connect(port) as client:
        await client.send(raw)
        return await client.response(head=head)


async def raw_exchange(port: int, raw: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``raw`` on a new connection, read until the proxy closes it (EOF or reset);
    fails if that takes more than ``timeout`` seconds."""
    with trio.fail_after(timeout):
        async with await Client.connect(port) as client:
            try:
                await client.send(raw)
            except trio.BrokenResourceError:
                pass
            return await client.read_to_eof()


def get(path: str = "/echo", host: str = "example.com", headers: str = "") -> bytes:
    """A GET request's bytes; ``headers``: extra raw header lines, each ending in CRLF."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode()


def echoed(response: Response) -> dict[str, Any]:
    """The upstream's /echo JSON with ``headers`` as a ``Headers`` list."""
    assert response.status == 200, response
    data = response.json()
    data["headers"] = Headers((n.lower(), v) for n, v in data["headers"])
    return data


def upstream_headers(info: dict[str, Any]) -> Headers:
    """Headers of one entry of ``Upstream.requests``."""
    return Headers((n.lower(), v) for n, v in info["headers"])


# --------------------------------------------------------------------------- raw upstreams


async def read_request(stream: trio.SocketStream, buf: bytearray) -> tuple[bytes, bytes] | None:
    """One request (head, Content-Length body) from ``stream``; ``None`` at EOF first."""
    while (i := buf.find(b"\r\n\r\n")) < 0:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    head = bytes(buf[: i + 4])
    del buf[: i + 4]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return head, body


async def curl(*args: str, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """Run curl with ``args``; (exit code, stdout, stderr)."""
    with trio.fail_after(timeout + 5):
        proc = await trio.run_process(
            ["curl", "-sS", "--max-time", str(timeout), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return proc.returncode, proc.stdout, proc.stderr


def split_curl_output(out: bytes) -> list[tuple[int, Headers, bytes]]:
    """``curl -i`` output: every response head (1xx included) and the body after the last."""
    blocks: list[tuple[int, Headers, bytes]] = []
    rest = out
    while rest.startswith(b"HTTP/"):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, out
        status, _, _, headers = parse_head(head)
        blocks.append((status, headers, b""))
    if blocks:
        status, headers, _ = blocks[-1]
        blocks[-1] = (status, headers, rest)
    return blocks


async def trailers_h1_upstream(nursery: trio.Nursery) -> tuple[int, list[dict[str, Any]]]:
    """An HTTP/1.1 upstream on h11 that records each request (method, target, headers, body,
    trailers: name/value lists) and answers with that record as JSON, chunked, then trailers
    ``x-up-trailer: done`` and ``grpc-status: 0``. Its port and the records."""
    seen: list[dict[str, Any]] = []

    async def serve(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)

        async def next_event() -> Any:
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            return event

        while isinstance(request := await next_event(), h11.Request):
            body = bytearray()
            while isinstance(event := await next_event(), h11.Data):
                body += event.data
            assert isinstance(event, h11.EndOfMessage), event
            record = {
                "method": request.method.decode(),
                "target": request.target.decode(),
                "headers": [[n.decode(), v.decode()] for n, v in request.headers],
                "body": body.decode("latin-1"),
                "trailers": [[n.decode(), v.decode()] for n, v in event.headers],
            }
            seen.append(record)
            head = [("transfer-encoding", "chunked"), ("trailer", "x-up-trailer, grpc-status")]
            out = conn.send(h11.Response(status_code=200, headers=head))
            out += conn.send(h11.Data(data=json.dumps(record).encode()))
            out += conn.send(
                h11.EndOfMessage(headers=[("x-up-trailer", "done"), ("grpc-status", "0")])
            )
            await stream.send_all(out)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
        await stream.aclose()

    return await start_raw_server(nursery, serve), seen


async def gated_upstream(nursery):
    """An upstream that holds ``/wait`` until ``release`` is set; ``arrived`` when it came."""
    arrived, release = trio.Event(), trio.Event()

    async def serve(stream):
        buf = bytearray()
        while (request := await read_request(stream, buf)) is not None:
            if b" /wait " in request[0].split(b"\r\n", 1)[0] + b" ":
                arrived.set()
                await release.wait()
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    port = await start_raw_server(nursery, serve)
    return port, arrived, release
