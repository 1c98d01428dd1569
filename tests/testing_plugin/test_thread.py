"""``mesh_in_thread`` without pytest's fixture: what the test's thread gets when the proxy
gives up starting, or fails while it runs."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from trio_mesh.testing import mesh_in_thread
from trio_mesh.testing.thread import THREAD_NAME


def config() -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "ok"}}
    return {
        "servers": [
            {
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
                        "virtual_hosts": [{"name": "a", "domains": ["*"], "routers": [route]}],
                    }
                ],
            }
        ]
    }


def mesh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def test_a_start_given_up_on_stops_by_itself() -> None:
    """Nobody would stop a proxy that starts after its caller's TimeoutError: it stops
    itself, and its thread ends."""
    assert mesh_threads() == []
    with pytest.raises(TimeoutError, match="did not start within 0 s"):
        mesh_in_thread(config(), start_timeout=0)
    for thread in mesh_threads():
        thread.join(30)
        assert not thread.is_alive()


def test_a_failure_while_running_is_raised_by_stop() -> None:
    mesh = mesh_in_thread(config())
    address = mesh.address("ingress")

    async def boom() -> None:
        raise RuntimeError("a task of the proxy failed")

    # A task of the server failing (through its private nursery: no public way exists to
    # make a healthy proxy fail) ends the proxy's thread.
    mesh.call(lambda handle: handle.server._nursery.start_soon(boom))  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="a task of the proxy failed"):
        mesh.stop()
    assert mesh_threads() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    mesh.stop()  # idempotent, and the error was raised once
    with pytest.raises(RuntimeError, match="stopped"):
        mesh.stats()
