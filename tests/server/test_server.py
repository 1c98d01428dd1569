"""The server embedded in a nursery, start-up failures, and the accept loop under fd exhaustion."""

from __future__ import annotations

import socket

import attrs
import pytest
import trio

from tests.cli_helpers import LowFdEcho
from trio_mesh import Server
from trio_mesh.config import Address, parse_config
from trio_mesh.network.listener import BindError


def two_listener_config(second_address: str = "127.0.0.1:0", bind_second: bool = True):
    def echo(name: str, address: str, **extra):
        return {
            "name": name,
            "address": address,
            "filter_chains": [{"filters": [{"type": "echo"}]}],
            **extra,
        }

    return parse_config(
        {
            "servers": [
                {
                    "listeners": [
                        echo("a", "127.0.0.1:0"),
                        echo("b", second_address, bind_port=bind_second),
                    ]
                }
            ]
        }
    ).config


async def echo_once(port: int, payload: bytes = b"ping") -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        return await stream.receive_some(100)


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_embedded_server_reports_real_ports_and_stops_with_its_nursery():
    async with trio.open_nursery() as nursery:
        server = await nursery.start(Server(two_listener_config()).run)
        ports = {name: port for name, (_, port) in server.addresses.items()}
        assert set(ports) == {"a", "b"}
        assert 0 not in ports.values() and ports["a"] != ports["b"]
        with trio.fail_after(5):
            assert await echo_once(ports["a"]) == b"ping"
            assert await echo_once(ports["b"], b"pong") == b"pong"
        nursery.cancel_scope.cancel()
    assert refused(ports["a"]) and refused(ports["b"])


async def test_bind_port_false_leaves_the_listener_unbound(nursery):
    server = await nursery.start(Server(two_listener_config(bind_second=False)).run)
    assert set(server.addresses) == {"a"}


async def test_port_in_use_stops_start_up_and_frees_what_was_bound():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    first_port = free.getsockname()[1]
    free.close()
    config = two_listener_config(f"127.0.0.1:{taken.getsockname()[1]}")
    config = attrs.evolve(
        config,
        servers=(
            attrs.evolve(
                config.servers[0],
                listeners=(
                    attrs.evolve(config.listeners[0], address=Address("127.0.0.1", first_port)),
                    config.listeners[1],
                ),
            ),
        ),
    )
    server = Server(config)
    try:
        with pytest.raises(BindError, match=r"listener 'b' cannot listen on 127\.0\.0\.1:\d+"):
            await server.run()
    finally:
        taken.close()
    # Listener 'a' had been bound before 'b' failed: its socket is closed again.
    assert server.listeners == {}
    with socket.socket() as again:
        again.bind(("127.0.0.1", first_port))


async def test_a_failing_connection_handler_does_not_harm_the_listener(nursery, caplog):
    server = Server(two_listener_config())
    calls = 0
    await nursery.start(server.run)
    runtime = server.listeners["a"]
    echo = runtime.handler

    async def sometimes_broken(conn):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("filter bug")
        await echo(conn)

    runtime.handler = sometimes_broken
    port = runtime.address[1]
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            assert await stream.receive_some(10) == b""  # closed, not hung
        # The count drops before the socket closes, so the EOF above proves it dropped.
        assert runtime.stats.downstream_cx_active == 0
        assert await echo_once(port) == b"ping"
    assert "connection handler failed" in caplog.text


def test_accept_loop_survives_running_out_of_file_descriptors(tmp_path):
    child = LowFdEcho(tmp_path)
    clients = []
    try:
        port = child.port()
        # Each served client holds one of the proxy's 48 descriptors; 80 must exhaust them.
        for _ in range(80):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        child.wait_for(r"accept failed \(Too many open files\), backing off")
        for c in clients[:-5]:
            c.close()
        last = clients[-1]  # it waited in the backlog through the exhaustion
        last.sendall(b"still here")
        assert last.recv(100) == b"still here"
        assert child.stop() == 0
    finally:
        for c in clients:
            c.close()
        child.kill()
