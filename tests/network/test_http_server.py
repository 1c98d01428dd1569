"""The admin HTTP server on its own: limits and bad input, with curl and raw sockets."""

from __future__ import annotations

import errno
import json
import os
import socket

import trio

from trio_mesh.network.http_server import (
    HttpLimits,
    HttpRequest,
    HttpResponse,
    _HttpServer,
    serve_http,
)

from ..http_helpers import curl


async def echo(req: HttpRequest) -> HttpResponse:
    if req.path == "/boom":
        raise RuntimeError("handler bug")
    if req.path == "/stuck":
        await trio.sleep_forever()
    doc = {"method": req.method, "path": req.path, "query": req.query, "body": req.body.decode()}
    return HttpResponse(200, json.dumps(doc).encode())


def listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock, sock.getsockname()[1]


async def start(nursery: trio.Nursery, limits: HttpLimits | None = None) -> int:
    sock, port = listening()
    await nursery.start(
        lambda task_status: serve_http(
            sock, echo, name="test", limits=limits, task_status=task_status
        )
    )
    return port


async def test_request_query_body_and_keep_alive(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    url = f"http://127.0.0.1:{port}"
    code, out, err = await curl("-d", "hello", f"{url}/a%20b?graceful&x=1&x=2")
    assert code == 0, err
    assert json.loads(out) == {
        "method": "POST",
        "path": "/a b",
        "query": {"graceful": [""], "x": ["1", "2"]},
        "body": "hello",
    }
    # Two requests on one connection: keep-alive works.
    code, out, err = await curl("-v", f"{url}/one", f"{url}/two")
    assert code == 0
    assert b"Re-using existing connection" in err or b"left intact" in err
    assert out.count(b'"method"') == 2


async def test_handler_exception_is_500_and_server_lives(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    _, out, _ = await curl("-w", "%{http_code}", f"http://127.0.0.1:{port}/boom")
    assert out.endswith(b"500")
    assert json.loads(out[:-3]) == {"error": "internal error"}
    _, out, _ = await curl("-w", "%{http_code}", f"http://127.0.0.1:{port}/fine")
    assert out.endswith(b"200")


async def test_body_over_limit_413_and_huge_head_431(nursery: trio.Nursery) -> None:
    port = await start(nursery, HttpLimits(max_body_bytes=1000, max_head_bytes=4096))
    url = f"http://127.0.0.1:{port}/x"
    _, out, _ = await curl("-w", "%{http_code}", "-d", "x" * 5000, url)
    assert out.endswith(b"413")
    assert "error" in json.loads(out[:-3])
    _, out, _ = await curl("-w", "%{http_code}", "-H", "x-big: " + "a" * 8000, url)
    assert out.endswith(b"431")
    # A chunked body over the limit is refused as it arrives.
    _, out, _ = await curl(
        "-w", "%{http_code}", "-H", "transfer-encoding: chunked", "-d", "y" * 5000, url
    )
    assert out.endswith(b"413")


async def test_slowloris_holds_only_its_own_slot(nursery: trio.Nursery) -> None:
    port = await start(nursery, HttpLimits(request_timeout=1.0))
    slow = trio.socket.socket()
    await slow.connect(("127.0.0.1", port))
    await slow.send(b"GET /x HTTP/1.1\r\nHost: a\r\n")  # never finished
    code, out, _ = await curl(f"http://127.0.0.1:{port}/other")
    assert code == 0 and b"/other" in out
    # The slow one gets a 408 once its request timeout ran out, then EOF.
    with trio.fail_after(5):
        got = b""
        while chunk := await slow.recv(4096):
            got += chunk
    assert got.startswith(b"HTTP/1.1 408")
    slow.close()


async def test_connections_are_bounded(nursery: trio.Nursery) -> None:
    port = await start(nursery, HttpLimits(max_connections=10))
    held = []
    for _ in range(10):
        s = trio.socket.socket()
        await s.connect(("127.0.0.1", port))
        held.append(s)
    _, out, _ = await curl("-w", "%{http_code}", f"http://127.0.0.1:{port}/x")
    assert out.endswith(b"503")
    for s in held:
        s.close()
    # Slots come back when those clients leave.
    with trio.fail_after(5):
        while True:
            _, out, _ = await curl("-w", "%{http_code}", f"http://127.0.0.1:{port}/x")
            if out.endswith(b"200"):
                break
            await trio.sleep(0.05)


async def test_garbage_is_400(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    s = trio.socket.socket()
    await s.connect(("127.0.0.1", port))
    await s.send(b"NOT HTTP AT ALL\r\n\r\n")
    with trio.fail_after(5):
        got = b""
        while chunk := await s.recv(4096):
            got += chunk
    assert got.startswith(b"HTTP/1.1 400")
    assert b'"error"' in got
    s.close()


async def test_head_gets_the_head_only_and_pipelining_works(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    code, out, _ = await curl("-sI", f"http://127.0.0.1:{port}/h")
    assert code == 0 and out.startswith(b"HTTP/1.1 200")
    assert b"content-length: " in out.lower()
    s = trio.socket.socket()
    await s.connect(("127.0.0.1", port))
    # Two pipelined requests, then a bad one: both good ones are answered, then a 400.
    await s.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nBAD\r\n\r\n")
    with trio.fail_after(5):
        got = b""
        while chunk := await s.recv(65536):
            got += chunk
    assert got.count(b"HTTP/1.1 200") == 2
    assert b'"path": "/1"' in got and b'"path": "/2"' in got
    assert got.rindex(b"HTTP/1.1 400") > got.rindex(b"HTTP/1.1 200")
    s.close()


async def test_a_connection_flood_is_refused_without_piling_up_tasks(
    nursery: trio.Nursery,
) -> None:
    port = await start(nursery, HttpLimits(max_connections=4))
    held = []
    for _ in range(200):
        s = trio.socket.socket()
        await s.connect(("127.0.0.1", port))
        held.append(s)
    # Every connection past the limit is answered 503 or just closed; none hangs.
    with trio.fail_after(10):
        for s in held[4:]:
            got = b""
            while chunk := await s.recv(4096):
                got += chunk
            assert got == b"" or got.startswith(b"HTTP/1.1 503")
    for s in held:
        s.close()


async def test_a_stuck_handler_gets_504(nursery: trio.Nursery) -> None:
    port = await start(nursery, HttpLimits(handler_timeout=0.2))
    _, out, _ = await curl("-w", "%{http_code}", f"http://127.0.0.1:{port}/stuck")
    assert out.endswith(b"504")
    assert json.loads(out[:-3]) == {"error": "the admin handler timed out"}


class _AbortingListener:
    """A real listening socket whose first accepts fail as Linux's can when a client resets
    before accept() (ECONNABORTED), or a firewall refuses it (EPERM, EPROTO)."""

    def __init__(self, sock: socket.socket, errnos: list[int]) -> None:
        self.real = trio.socket.from_stdlib_socket(sock)
        self.errnos = errnos

    async def accept(self) -> tuple[trio.socket.SocketType, object]:
        if self.errnos:
            await trio.lowlevel.checkpoint()
            code = self.errnos.pop(0)
            raise OSError(code, os.strerror(code))
        return await self.real.accept()


async def test_a_connection_aborted_before_accept_does_not_end_the_server(
    nursery: trio.Nursery,
) -> None:
    # Unhandled, such an error ended the accept loop and took the proxy's nursery with it.
    sock, port = listening()
    server = _HttpServer(echo, "test", HttpLimits())
    listener = _AbortingListener(sock, [errno.ECONNABORTED, errno.EPROTO, errno.EPERM])
    nursery.start_soon(server.accept, listener, nursery)
    code, out, err = await curl(f"http://127.0.0.1:{port}/after")
    assert code == 0, err
    assert json.loads(out)["path"] == "/after"
    assert listener.errnos == []
