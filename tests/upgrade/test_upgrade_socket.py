"""The upgrade socket's rules and its defences: where it lives, who may use it, what a peer
that breaks the protocol gets."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest

from tests.upgrade.helpers import mesh, start, upstream, write
from tests.upgrade.test_upgrade import FAILED, _get
from trio_mesh.config import Address
from trio_mesh.errors import StartupError
from trio_mesh.network.inherit import InheritedSockets
from trio_mesh.upgrade import (
    MAX_LINE,
    UpgradeError,
    default_socket_path,
    peer_allowed,
    prepare_directory,
)


def test_peer_uid_check() -> None:
    assert peer_allowed(1000, 1000)
    assert peer_allowed(0, 1000)  # root may upgrade anyone's proxy
    assert not peer_allowed(1001, 1000)
    assert not peer_allowed(1000, 0)  # another user may not take root's sockets


def test_default_path_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mesh.yaml"
    digest = hashlib.sha256(str(config).encode()).hexdigest()[:12]
    name = f"upgrade-{digest}.sock"
    assert default_socket_path(str(config), {"RUNTIME_DIRECTORY": "/run/x:/run/y"}) == (
        f"/run/x/{name}"
    )
    # Relative or absolute, the same file names the same socket; another file another one.
    monkeypatch.chdir(tmp_path)
    assert default_socket_path("mesh.yaml", {"RUNTIME_DIRECTORY": "/r"}) == f"/r/{name}"
    assert default_socket_path("other.yaml", {"RUNTIME_DIRECTORY": "/r"}) != f"/r/{name}"
    fallback = default_socket_path(str(config), {"XDG_RUNTIME_DIR": "/xdg"})
    assert fallback.endswith(name)
    assert fallback.rsplit("/", 1)[0] in ("/run/trio-mesh", "/xdg/trio-mesh")


def test_a_directory_others_may_write_to_is_refused(tmp_path: Path) -> None:
    """In /tmp another user may create the directory first, to be handed our sockets."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UpgradeError, match="others may write to it"):
        prepare_directory(str(shared / "upgrade.sock"))
    if os.getuid() != 0:
        return  # making a directory another user owns needs root
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UpgradeError, match="owned by uid 65534"):
        prepare_directory(str(theirs / "upgrade.sock"))


def test_the_directory_is_created_private(tmp_path: Path) -> None:
    prepare_directory(str(tmp_path / "new" / "upgrade.sock"))
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


def test_inherited_take_rules() -> None:
    with socket.socket() as a, socket.socket() as b, socket.socket() as c:
        a.bind(("127.0.0.1", 0))
        a.listen()
        b.bind(("127.0.0.1", 0))
        b.listen()
        c.bind(("127.0.0.1", 0))  # bound, not listening
        pa, pb, pc = (s.getsockname()[1] for s in (a, b, c))
        got = InheritedSockets(
            by_name={"a": a, "c": c},
            by_address={("127.0.0.1", pa): a, ("127.0.0.1", pb): b, ("127.0.0.1", pc): c},
        )
        assert got.take("a", Address("127.0.0.1", 1)) is a  # by name first
        assert got.take("x", Address("127.0.0.1", pa)) is None  # and gone from both maps
        assert got.take("x", Address("127.0.0.1", 0)) is None  # port 0: never by address
        assert got.take("y", Address("0.0.0.0", pb)) is None  # 0.0.0.0 matches only itself
        assert got.take("y", Address("127.0.0.1", pb)) is b
        with pytest.raises(StartupError, match=r"'c'.*not a listening TCP socket"):
            got.take("c", Address("127.0.0.1", pc))
        assert got.leftovers() == []


@pytest.mark.parametrize(
    "send",
    [
        b"not json\n",
        json.dumps({"v": 99, "op": "hello"}).encode() + b"\n",
        b"x" * (MAX_LINE + 2),
        json.dumps({"v": 1, "op": "ready"}).encode() + b"\n",  # ready before hello
    ],
    ids=["garbage", "version", "oversize", "out-of-order"],
)
def test_a_peer_breaking_the_protocol_changes_nothing(tmp_path: Path, send: bytes) -> None:
    with upstream() as up:
        config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
        sock = tmp_path / "upgrade.sock"
        p = start(config, sock)
        try:
            port = p.ready()["ingress"]
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(str(sock))
                try:
                    c.sendall(send)
                except BrokenPipeError:
                    pass
                c.settimeout(10)
                try:
                    while c.recv(65536):  # whatever it says, then it closes the link
                        pass
                except ConnectionResetError:
                    pass
            p.wait_for(FAILED)
            assert b"200 OK" in _get(port)
            assert p.proc.poll() is None
        finally:
            p.kill()


@pytest.mark.trio
async def test_a_peer_that_does_not_read_the_document_frees_the_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer asking for the configuration document and never reading it must not hold the
    one upgrade slot forever (every later upgrade would be refused)."""
    import trio
    import trio.testing

    from trio_mesh import upgrade

    monkeypatch.setattr(upgrade, "ANSWER_TIMEOUT", 0.5)
    path = str(tmp_path / "u.sock")
    document = {"big": "x" * (8 * 1024 * 1024)}  # far more than the socket's buffer
    server = upgrade.UpgradeServer(path, lambda: [], lambda: document)
    hello = json.dumps({"v": 1, "op": "hello", "config": True}).encode() + b"\n"
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        stuck = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await stuck.connect(path)
        await stuck.send(hello)
        await trio.testing.wait_all_tasks_blocked(0.2)
        with trio.fail_after(5):
            while True:  # the slot frees once the send gives up
                second = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                await second.connect(path)
                await second.send(hello)
                answer = await second.recv(65536)
                second.close()
                if b"under way" not in answer:
                    break
                await trio.sleep(0.1)
        assert b'"sockets"' in answer
        stuck.close()
        nursery.cancel_scope.cancel()
