"""SIGTERM under load: a real ``trio-mesh run`` subprocess, 50 keep-alive clients written
here, ten stops in a row. Every request whose first byte was written gets a full 2xx
response; the only closes allowed are those a client sees before it writes anything (an
idle connection closed by the drain, or a refused connect once the listener is gone)."""

from __future__ import annotations

import errno
import signal
import socket
from pathlib import Path

import attrs
import pytest
import trio

from tests.cli_helpers import TIMEOUT, proxy, write_config
from tests.http_helpers import read_request, start_raw_server

CLIENTS = 50
RUNS = 10
# Responses before the signal: enough that every client is in its request loop.
WARM_UP = 300
REQUEST = b"GET /load HTTP/1.1\r\nHost: example.com\r\n\r\n"


@attrs.define
class Tally:
    ok: int = 0
    told_close: int = 0  # 2xx with Connection: close (the drain said so)
    not_2xx: int = 0
    closed_mid_way: int = 0  # request bytes written, no full response
    closed_before_write: int = 0  # EOF/reset seen before a new request's first byte
    warm: trio.Event = attrs.field(factory=trio.Event)


def drain_config(tmp_path: Path, upstream_port: int) -> Path:
    route = {"match": {"prefix": "/"}, "route": {"cluster_name": "up", "timeout": "5s"}}
    doc = {
        "servers": [
            {
                "default_log_level": "INFO",
                "listeners": [
                    {
                        "name": "ingress",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routers": [route]}],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{upstream_port}"}],
                }
            ]
        },
    }
    return write_config(tmp_path, doc)


async def _upstream(stream: trio.SocketStream) -> None:
    buf = bytearray()
    try:
        while await read_request(stream, buf) is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    except trio.BrokenResourceError:
        pass


async def _connect(port: int) -> socket.socket | None:
    """A connected non-blocking socket, or ``None`` when refused (the proxy stopped)."""
    sock = socket.socket()
    sock.setblocking(False)
    err = sock.connect_ex(("127.0.0.1", port))
    if err == errno.EINPROGRESS:
        await trio.lowlevel.wait_writable(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        sock.close()
        return None
    return sock


def _closed_while_idle(sock: socket.socket) -> bool:
    """The proxy closed (or reset) this connection before we wrote anything on it."""
    try:
        return sock.recv(1, socket.MSG_PEEK) is not None
    except BlockingIOError:
        return False
    except OSError:
        return True


async def _response(sock: socket.socket) -> tuple[int, bool] | None:
    """(status, connection: close) of one response, or ``None`` if the connection ended
    before all of it came."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            lines = buf[:end].split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            length = int(headers.get(b"content-length", b"0"))
            if len(buf) >= end + 4 + length:
                return int(lines[0].split()[1]), headers.get(b"connection") == b"close"
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not data:
            return None
        buf += data


async def _client(port: int, tally: Tally) -> None:
    sock: socket.socket | None = None
    try:
        while True:
            if sock is None:
                sock = await _connect(port)
                if sock is None:
                    return  # refused: the drain is over for this client
            if _closed_while_idle(sock):
                tally.closed_before_write += 1
                sock.close()
                sock = None
                continue
            try:
                sent = sock.send(REQUEST)
            except OSError:
                # Nothing of this request went out: the same as a close seen before writing.
                tally.closed_before_write += 1
                sock.close()
                sock = None
                continue
            assert sent == len(REQUEST)  # a fresh request on an empty socket buffer
            got = await _response(sock)
            if got is None:
                tally.closed_mid_way += 1
                sock.close()
                sock = None
                continue
            status, close = got
            if 200 <= status < 300:
                tally.ok += 1
            else:
                tally.not_2xx += 1
            if tally.ok >= WARM_UP:
                tally.warm.set()
            if close:
                tally.told_close += 1
                sock.close()
                sock = None
            else:
                await trio.lowlevel.checkpoint()
    finally:
        if sock is not None:
            sock.close()


@pytest.mark.parametrize("run", range(RUNS))
async def test_sigterm_under_load_answers_every_request(nursery, tmp_path, run):
    upstream_port = await start_raw_server(nursery, _upstream)
    config = drain_config(tmp_path, upstream_port)
    with proxy(config, "--drain-timeout", "5") as p:
        ports = await trio.to_thread.run_sync(p.ready)
        tally = Tally()
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as clients:
                for _ in range(CLIENTS):
                    clients.start_soon(_client, ports["ingress"], tally)
                await tally.warm.wait()
                p.proc.send_signal(signal.SIGTERM)
            rc = await trio.to_thread.run_sync(p.finish)
    assert rc == 0, p.text
    assert (tally.not_2xx, tally.closed_mid_way) == (0, 0), (tally, p.text)
    assert tally.ok >= WARM_UP
