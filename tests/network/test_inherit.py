"""``InheritedSockets``: which listener takes which handed-over socket, and what is refused."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from trio_mesh.config import Address
from trio_mesh.errors import StartupError
from trio_mesh.network.inherit import InheritedSockets, address_key, is_shared, mark_shared


def listening(host: str = "127.0.0.1", family: socket.AddressFamily = socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen()
    return s


def test_by_name_first_then_by_address_and_each_socket_only_once():
    a, b = listening(), listening()
    try:
        b_port = b.getsockname()[1]
        inherited = InheritedSockets.of([("ingress", a), (None, b)])
        # The name wins over an address naming the other socket.
        assert inherited.take("ingress", Address("127.0.0.1", b_port)) is a
        assert a.getblocking() is False
        assert inherited.take("other", Address("127.0.0.1", b_port)) is b
        # Taken: gone from both maps.
        assert inherited.take("ingress", Address("127.0.0.1", a.getsockname()[1])) is None
        assert inherited.leftovers() == []
    finally:
        a.close()
        b.close()


def test_port_zero_never_matches_by_address_and_a_wildcard_only_itself():
    loop, wild = listening(), listening("0.0.0.0")
    try:
        inherited = InheritedSockets.of([(None, loop), (None, wild)])
        assert inherited.take("x", Address("127.0.0.1", 0)) is None
        assert inherited.take("x", Address("0.0.0.0", loop.getsockname()[1])) is None
        assert inherited.take("x", Address("127.0.0.1", wild.getsockname()[1])) is None
        assert inherited.take("x", Address("0.0.0.0", wild.getsockname()[1])) is wild
    finally:
        loop.close()
        wild.close()


def test_ipv6_addresses_compare_in_any_spelling():
    try:
        six = listening("::1", socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        inherited = InheritedSockets.of([(None, six)])
        assert inherited.take("x", Address("0:0::1", six.getsockname()[1])) is six
    finally:
        six.close()


def test_a_socket_that_is_not_listening_or_not_tcp_is_refused_naming_the_listener():
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))  # not listening
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inherited = InheritedSockets.of([("a", bound), ("b", dgram), ("c", unix)])
    with pytest.raises(StartupError, match=r"listener 'a': .* not a listening TCP socket"):
        inherited.take("a", Address("127.0.0.1", 1))
    with pytest.raises(StartupError, match=r"listener 'b': .*SOCK_DGRAM"):
        inherited.take("b", Address("127.0.0.1", 1))
    with pytest.raises(StartupError, match=r"listener 'c': .*AF_UNIX"):
        inherited.take("c", Address("127.0.0.1", 1))
    assert bound.fileno() == dgram.fileno() == unix.fileno() == -1  # closed, not leaked


def test_leftovers_are_closed_with_a_warning_naming_each(caplog):
    caplog.set_level(logging.WARNING)
    named, unnamed = listening(), listening()
    inherited = InheritedSockets.of([("spare", named), (None, unnamed)])
    assert len(inherited.leftovers()) == 2
    inherited.close_leftovers()
    assert named.fileno() == unnamed.fileno() == -1
    assert "inherited socket 'spare' (127.0.0.1:" in caplog.text
    assert caplog.text.count("matches no listener: closed") == 2
    assert inherited.leftovers() == []


async def test_server_run_and_apply_take_before_binding():
    import trio

    from trio_mesh import Server
    from trio_mesh.config import parse_config

    def config(*names: str):
        listeners = [
            {
                "name": n,
                "address": "127.0.0.1:0",
                "filter_chains": [{"filters": [{"type": "echo"}]}],
            }
            for n in names
        ]
        return parse_config({"servers": [{"listeners": listeners}]}).config

    first, later, spare = listening(), listening(), listening()
    async with trio.open_nursery() as nursery:
        inherited = InheritedSockets.of([("a", first), ("nobody", spare)])
        server = await nursery.start(Server(config("a"), inherited=inherited).run)
        assert server.addresses["a"] == first.getsockname()  # port 0 in the config: the real one
        assert spare.fileno() == -1  # closed once started
        # A listener a reload adds takes what was handed over for it (a hot upgrade's case).
        server.inherited = InheritedSockets.of([("b", later)])
        await server.apply(config("a", "b"))
        assert server.listeners["b"].sock is later
        stream = await trio.open_tcp_stream(*later.getsockname())
        async with stream:
            await stream.send_all(b"hi")
            assert await stream.receive_some(10) == b"hi"
        nursery.cancel_scope.cancel()
    assert first.fileno() == later.fileno() == -1


def test_a_socket_named_for_one_listener_is_not_taken_by_another_s_address() -> None:
    import socket

    from trio_mesh.config import Address
    from trio_mesh.network.inherit import InheritedSockets

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    inherited = InheritedSockets.of([("admin_side", sock)])
    inherited.reserved = {"first", "admin_side"}
    # "first" comes first in the config and has the socket's address: it must not take it.
    assert inherited.take("first", Address("127.0.0.1", port)) is None
    assert inherited.take("admin_side", Address("127.0.0.1", 1)) is sock
    sock.close()


def test_address_keys_compare_addresses_as_getsockname_gives_them() -> None:
    assert address_key("[::1]", 80) == address_key("0:0::1", 80) == ("::1", 80)
    assert address_key("::ffff:127.0.0.1", 80) == ("127.0.0.1", 80)
    assert address_key("fe80::1%eth0", 80) == ("fe80::1", 80)
    assert address_key("localhost", 80) == ("localhost", 80)  # a name is never resolved


def test_merge_keeps_ours_first_and_closes_a_copy_nobody_can_take() -> None:
    with listening() as ours, listening() as theirs, listening() as other:
        mine = InheritedSockets.of([("ingress", ours)])
        # The old process of an upgrade names a socket on our port "ingress" too (its own
        # copy of it), and hands one more over.
        dup = socket.socket(fileno=os.dup(ours.fileno()))
        upgrade = InheritedSockets.of([("ingress", dup), ("admin", other)])
        mine.merge(upgrade)
        assert dup.fileno() == -1  # named and addressed as ours: a copy, closed
        assert upgrade.leftovers() == []
        assert mine.take("ingress", Address("127.0.0.1", 1)) is ours
        assert mine.take("admin", Address("127.0.0.1", 1)) is other
        assert mine.take("x", Address("127.0.0.1", theirs.getsockname()[1])) is None


def test_the_shared_mark_is_per_socket() -> None:
    with listening() as a, listening() as b:
        mark_shared(a)
        assert is_shared(a) and not is_shared(b)
