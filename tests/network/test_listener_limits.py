"""Listener limits that must hold against an attacker: ``max_connections`` under a burst,
the default downstream idle timeout, and the rate-limited accept back-off log."""

from __future__ import annotations

import re
import socket

import trio

from tests.cli_helpers import LowFdEcho
from tests.http_helpers import Client, get, http_config, start_proxy
from tests.tcp_helpers import tcp_proxy_config
from trio_mesh.config import parse_config


async def _served(sock: socket.socket) -> bool:
    """Whether the proxy relays a byte on this connection (else it closed or reset it)."""
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    try:
        await stream.send_all(b"x")
        return await stream.receive_some(10) == b"x"
    except trio.BrokenResourceError:
        return False


async def test_max_connections_holds_against_a_burst(nursery, echo_port):
    server, port = await start_proxy(
        nursery, tcp_proxy_config([echo_port], listener={"max_connections": 2})
    )
    stats = server.listeners["ingress"].stats
    with trio.fail_after(10):
        # Six handshakes done by the kernel before the accept loop runs once: one burst.
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        served = [s for s in burst if await _served(s)]
        assert len(served) == 2
        assert (stats.downstream_cx_overflow, stats.downstream_cx_active) == (4, 2)
        for s in burst:
            s.close()
        await server.listeners["ingress"].wait_closed()  # the proxy saw them go
        assert stats.downstream_cx_active == 0
        again = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        assert [await _served(s) for s in again] == [True, True]
        for s in again:
            s.close()


def test_downstream_idle_timeout_defaults_to_90s_and_0s_disables_it():
    def listener(**keys: str) -> dict:
        return {
            "name": "l",
            "address": "127.0.0.1:0",
            "filter_chains": [{"filters": [{"type": "echo"}]}],
            **keys,
        }

    doc = {"servers": [{"listeners": [listener(), listener(connection_idle_timeout="0s")]}]}
    doc["servers"][0]["listeners"][1]["name"] = "never"
    default, never = parse_config(doc).config.listeners
    assert default.connection_idle_timeout == 90.0  # MOSN's DefaultIdleTimeout
    assert never.connection_idle_timeout == 0.0


async def test_the_default_idle_timeout_applies_and_a_silent_connection_is_closed(nursery):
    server, port = await start_proxy(nursery, http_config([], {}))
    assert server.listeners["ingress"].idle_timeout == 90.0
    # The same mechanism with a short explicit value: a client that sends nothing goes.
    server, port = await start_proxy(
        nursery, http_config([], {}, listener={"connection_idle_timeout": "200ms"})
    )
    with trio.fail_after(10):
        silent = await Client.connect(port)
        assert await silent.closed()
    assert server.listeners["ingress"].stats.downstream_cx_idle_timeout == 1


async def test_0s_means_no_idle_timeout(nursery):
    server, port = await start_proxy(
        nursery, http_config([], {}, listener={"connection_idle_timeout": "0s"})
    )
    assert server.listeners["ingress"].idle_timeout is None
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            assert (await client.response()).status == 404


BACKOFF_LINE = re.compile(r"accept failed \(Too many open files\), backing off(; (\d+) more)?")


def test_accept_backoff_is_logged_at_most_once_a_second(tmp_path):
    """Real descriptor exhaustion (48 descriptors, 80 clients) held until the second
    back-off line: the back-off runs every 0.1 s, the log says it once a second, with the
    count of the attempts in between."""
    child = LowFdEcho(tmp_path)
    clients = []
    try:
        port = child.port()
        for _ in range(80):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        first = child.wait_for(BACKOFF_LINE, timeout=10)
        assert first.group(2) is None
        second = child.wait_for(BACKOFF_LINE, timeout=10)
        # Ten back-offs a second, one line: the attempts in between are counted, not logged.
        assert second.group(2) is not None and int(second.group(2)) >= 3
        for c in clients:
            c.close()
        assert child.stop() == 0
    finally:
        for c in clients:
            c.close()
        child.kill()
    backoffs = [m for line in child.seen if (m := BACKOFF_LINE.search(line))]
    # Every line after the first stands for several attempts: never one line per attempt.
    assert len(backoffs) >= 2
    assert all(m.group(2) is not None and int(m.group(2)) >= 3 for m in backoffs[1:])
