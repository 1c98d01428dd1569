"""The pytest plugin (trio_mesh/testing/) as users get it: sample projects with no conftest,
run by a real pytest process (pytester, enabled by tests/conftest.py), that find the fixtures
through the installed ``pytest11`` entry point; and docs/testing.md's examples, run as written."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = r'''
import http.client
import socket
import threading

import pytest
import trio

from trio_mesh import ConfigError
from trio_mesh.errors import StartupError

#: The addresses each proxy had, for the last test (after their teardown).
SEEN = {}


def config(body, port=0):
    """Listener "ingress" answering every request with ``body`` itself."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": body}}
    return {
        "servers": [{
            "listeners": [{
                "name": "ingress",
                "address": f"127.0.0.1:{port}",
                "filter_chains": [{"filters": [
                    {"type": "proxy", "config": {"router_config_name": "r"}}
                ]}],
            }],
            "routers": [{
                "router_config_name": "r",
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routers": [route]}],
            }],
        }],
    }


def bad_config():
    doc = config("x")
    doc["servers"][0]["listeners"][0]["address"] = "nowhere"
    doc["servers"][0]["routers"][0]["virtual_hosts"][0]["routers"][0]["route"] = {}
    return doc


BAD = [
    "servers[0].listeners[0].address: expected host:port, got 'nowhere'",
    "servers[0].routers[0].virtual_hosts[0].routers[0].route: give exactly one of",
]


def check_bad(errors):
    assert len(errors) == 2, errors
    assert errors[0] == BAD[0]
    assert errors[1].startswith(BAD[1]), errors


def mesh_threads():
    return [t for t in threading.enumerate() if t.name == "trio-mesh-in-thread"]


async def get_async(address):
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    return data


def get_sync(url_host_port):
    host, port = url_host_port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.trio
async def test_async_request_apply_stats(start_trio_mesh):
    mesh = await start_trio_mesh(config("one"))
    host, port = mesh.address("ingress")
    assert mesh.addresses == {"ingress": (host, port)}
    assert host == "127.0.0.1" and port != 0
    assert mesh.url("ingress", "a/b") == f"http://127.0.0.1:{port}/a/b"
    assert mesh.server.state == "LIVE"
    assert (await get_async((host, port))).endswith(b"\r\n\r\none")
    await mesh.apply(config("two"))
    assert mesh.address("ingress") == (host, port)  # unchanged listener: same socket
    assert (await get_async((host, port))).endswith(b"\r\n\r\ntwo")
    stats = await mesh.stats()
    assert stats["http.ingress.downstream_rq_2xx"] == 2
    assert stats["http.ingress.downstream_rq_total"] == 2
    assert stats["http.ingress.downstream_rq_time"][50] is not None
    only = await mesh.stats(filter=r"^http\.ingress\.downstream_rq_2xx$")
    assert only == {"http.ingress.downstream_rq_2xx": 2}
    SEEN["async"] = (host, port)


@pytest.mark.trio
async def test_async_errors(start_trio_mesh):
    with pytest.raises(ConfigError) as refused:
        await start_trio_mesh(bad_config())
    check_bad(refused.value.errors)
    mesh = await start_trio_mesh(config("kept"))
    port = mesh.address("ingress")[1]
    with pytest.raises(StartupError, match=r"listener 'ingress' cannot listen on .*in use"):
        await start_trio_mesh(config("clash", port=port))
    with pytest.raises(ConfigError) as refused:
        await mesh.apply(bad_config())
    check_bad(refused.value.errors)
    assert (await get_async(mesh.address("ingress"))).endswith(b"kept")
    with pytest.raises(KeyError, match="no bound listener named 'egress' \\(bound: 'ingress'\\)"):
        mesh.address("egress")


def test_sync_request_apply_stats(trio_mesh_in_thread):
    mesh = trio_mesh_in_thread(config("one"))
    assert len(mesh_threads()) == 1
    address = mesh.address("ingress")
    assert mesh.addresses == {"ingress": address}
    assert mesh.url("ingress") == f"http://127.0.0.1:{address[1]}/"
    assert get_sync(address) == (200, b"one")
    mesh.apply(config("two"))
    assert get_sync(address) == (200, b"two")
    stats = mesh.stats()
    assert stats["http.ingress.downstream_rq_2xx"] == 2
    assert mesh.call(lambda handle: handle.server.state) == "LIVE"
    SEEN["sync"] = address


def test_sync_errors(trio_mesh_in_thread):
    with pytest.raises(ConfigError) as refused:
        trio_mesh_in_thread(bad_config())
    check_bad(refused.value.errors)
    assert mesh_threads() == []  # refused before any thread started
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    with blocker:
        port = blocker.getsockname()[1]
        with pytest.raises(StartupError, match="in use"):
            trio_mesh_in_thread(config("clash", port=port))
    assert mesh_threads() == []  # the failed one's thread ended
    mesh = trio_mesh_in_thread(config("kept"))
    with pytest.raises(ConfigError):
        mesh.apply(bad_config())
    # Refused by the running proxy (in its thread), raised here.
    admin = config("x")
    admin["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    with pytest.raises(StartupError, match="admin: cannot change"):
        mesh.apply(admin)
    assert get_sync(mesh.address("ingress")) == (200, b"kept")


def test_teardown_left_nothing():
    assert set(SEEN) == {"async", "sync"}
    assert mesh_threads() == []
    for address in SEEN.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5).close()
'''


def test_entry_point_names_the_plugin() -> None:
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert found.get("trio_mesh") == "trio_mesh.testing.plugin"


def test_sample_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=SAMPLE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=5)


def test_without_pytest_trio(pytester: pytest.Pytester) -> None:
    """The thread fixture needs no pytest-trio; the async one says what is missing."""
    pytester.makepyfile(test_sample=SAMPLE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:trio", "-k", "not teardown"
    )
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        ["*start_trio_mesh is an async fixture for Trio tests and needs pytest-trio*"]
    )


def test_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=SAMPLE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:trio_mesh")
    result.stdout.fnmatch_lines(["*fixture 'start_trio_mesh' not found*"])
    assert result.ret != 0


def docs_examples() -> dict[str, str]:
    """docs/testing.md's Python blocks that start with ``# test_<name>.py``."""
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    out = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        match = re.match(r"# (test_\w+)\.py\n", block)
        if match:
            out[match.group(1)] = block
    return out


def test_docs_examples_pass(pytester: pytest.Pytester) -> None:
    examples = docs_examples()
    assert set(examples) == {"test_mesh_trio", "test_mesh_sync"}
    pytester.makepyfile(**examples)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=3)


def test_loading_the_plugin_imports_no_proxy() -> None:
    """It loads in every pytest run of every project with trio-mesh installed."""
    code = (
        "import sys, trio_mesh.testing.plugin\n"
        "print(sorted(m for m in sys.modules if m.startswith(('trio', 'attrs', 'cattrs'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['trio_mesh', 'trio_mesh.testing', 'trio_mesh.testing.plugin']"


REGISTRY_CONFIG = """
servers:
  - listeners:
      - name: dubbo_ingress
        address: "127.0.0.1:0"
        filter_chains:
          - filters:
              - type: proxy
                config: {downstream_protocol: dubbo, router_config_name: dubbo}
extends:
  - type: dubbo_registry
    config:
      enable: true
      server_listener: dubbo_ingress
      api_port: 0
      router_config_name: dubbo
      advertise_ip: 127.0.0.1
"""

REGISTRY_SAMPLE = r"""
import json
import urllib.request

import pytest

from trio_mesh.registry.memory import MemoryRegistry

NAMESPACE = "127.0.0.1:2181"  # a memory registry: nothing listens there
PROVIDERS = "/dubbo/org.example.Greeter/providers"


@pytest.fixture(autouse=True)
def fresh_registry():
    MemoryRegistry.reset()
    yield
    MemoryRegistry.reset()


def publish(api, interface):
    body = {
        "registry": {"type": "memory", "addr": NAMESPACE},
        "service": {"interface": interface, "methods": ["greet"]},
    }
    request = urllib.request.Request(
        f"http://{api[0]}:{api[1]}/pub", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_publish_through_the_proxy(trio_mesh_in_thread):
    mesh = trio_mesh_in_thread("mesh.yaml")  # a file, as trio-mesh run reads it
    api = mesh.call(lambda handle: handle.registry.address)
    publish(api, "org.example.Greeter")
    # Read in the proxy's thread: the registry is that thread's.
    (node,) = mesh.call(lambda handle: handle.memory_registry(NAMESPACE).children(PROVIDERS))
    port = mesh.address("dubbo_ingress")[1]
    assert node.startswith("dubbo%3A%2F%2F127.0.0.1%3A" + str(port)), node


@pytest.mark.trio
async def test_publish_through_the_proxy_trio(start_trio_mesh):
    import trio

    mesh = await start_trio_mesh("mesh.yaml")
    await trio.to_thread.run_sync(publish, mesh.registry.address, "org.example.Greeter")
    assert len(mesh.memory_registry(NAMESPACE).children(PROVIDERS)) == 1
"""


def test_registry_and_a_config_file(pytester: pytest.Pytester) -> None:
    """A configuration file, the registry's API and its in-memory backend, from a user's
    test."""
    pytester.makefile(".yaml", mesh=REGISTRY_CONFIG)
    pytester.makepyfile(test_registry=REGISTRY_SAMPLE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)
