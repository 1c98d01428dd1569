"""conf/registry.yaml and examples/: the README's walkthrough of the registry API with the
in-memory registry, run for real (the example provider and consumer as subprocesses, the
proxy from the example's own document on free ports, the README's own request bodies)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from tests.cli_helpers import run_cli
from trio_mesh import Server
from trio_mesh.config import parse_config
from trio_mesh.registry.url import parse_node

from .helpers import SERVICE, api

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "registry.yaml"
PROVIDER = ROOT / "examples" / "dubbo_provider.py"
CONSUMER = ROOT / "examples" / "dubbo_consumer.py"
README = ROOT / "README.md"
TIMEOUT = 30  # only reached when something is broken

# The README's requests: curl -s -XPOST 127.0.0.1:22222/<path> -d '<json>'
CURL = re.compile(r"curl -s -XPOST 127\.0\.0\.1:22222(?P<path>/\w+) -d '(?P<body>[^']*)'")


def readme_requests(registry_type: str) -> dict[str, dict[str, Any]]:
    """The bodies the README's walkthrough posts for one registry type, by path."""
    found: dict[str, dict[str, Any]] = {}
    for m in CURL.finditer(README.read_text(encoding="utf-8")):
        body = json.loads(m["body"])
        if body["registry"]["type"] == registry_type:
            found.setdefault(m["path"], body)
    return found


def example_on_free_ports(provider_port: int) -> dict[str, Any]:
    """conf/registry.yaml's document with every port free: listeners on port 0 (the registry
    publishes dubbo_ingress by name, its real port), the API on any port, the provider's."""
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for listener in doc["servers"][0]["listeners"]:
        assert listener["address"].startswith("127.0.0.1:")
        listener["address"] = "127.0.0.1:0"
    (cluster,) = doc["cluster_manager"]["clusters"]
    assert cluster["name"] == "local_provider"
    cluster["hosts"] = [{"address": f"127.0.0.1:{provider_port}"}]
    config = doc["extends"][0]["config"]
    assert config["server_port"] == 20881
    del config["server_port"]
    config.update(server_listener="dubbo_ingress", api_port=0)
    return doc


@asynccontextmanager
async def provider(name: str, *args: str) -> AsyncIterator[int]:
    """examples/dubbo_provider.py on a free port: its port once it listens (the line it
    prints after binding, read under a deadline). SIGTERM at the end must stop it with 0."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(PROVIDER), "--port", "0", "--name", name, *args],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(TIMEOUT):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                assert chunk, f"the provider exited ({await proc.wait()}) before listening"
                line += chunk
        m = re.fullmatch(rb"dubbo provider '.*' listening on 127\.0\.0\.1:(\d+)\n", line)
        assert m, line
        yield int(m[1])
        proc.terminate()
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()


async def consumer(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [sys.executable, str(CONSUMER), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def test_validate_accepts_the_example() -> None:
    result = run_cli("validate", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{EXAMPLE}: valid: 2 listener(s), 1 cluster(s), 0 warning")
    assert "extends" not in result.stderr


def test_the_example_publishes_its_ingress_and_routes_its_egress_through_dubbo() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    config = parse_config(doc).config
    (extend,) = config.extends
    assert extend.type == "dubbo_registry"
    assert extend.config == {
        "enable": True,
        "server_port": 20881,
        "api_port": 22222,
        "api_host": "127.0.0.1",
        "advertise_ip": "127.0.0.1",
        "router_config_name": "dubbo",
        "registry_timeout": "5s",
    }
    addresses = {lst.name: str(lst.address) for lst in config.listeners}
    assert addresses == {"dubbo_ingress": "127.0.0.1:20881", "dubbo_egress": "127.0.0.1:20882"}


@pytest.mark.parametrize(("script", "option"), [(PROVIDER, "--port"), (CONSUMER, "--zookeeper")])
def test_help(script: Path, option: str) -> None:
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ") and option in result.stdout


async def test_the_readme_walkthrough_with_the_memory_registry(nursery) -> None:
    requests = readme_requests("memory")
    assert sorted(requests) == ["/pub", "/sub", "/unpub", "/unsub"]
    assert {b["service"]["interface"] for b in requests.values()} == {SERVICE}

    async with provider("provider-a") as provider_port:
        doc = example_on_free_ports(provider_port)
        server = await nursery.start(Server(parse_config(doc).config).run)
        await walk_through(server, requests)


async def walk_through(server: Server, requests: dict[str, dict[str, Any]]) -> None:
    ingress = server.addresses["dubbo_ingress"][1]
    egress = server.addresses["dubbo_egress"][1]

    assert await api(server, "/pub", requests["/pub"]) == (
        200,
        {"err_no": 0, "err_msg": "publish success"},
    )
    assert await api(server, "/sub", requests["/sub"]) == (
        200,
        {"err_no": 0, "err_msg": "subscribe success"},
    )

    # GET /: the publication is the sidecar's ingress; the subscription's host is the same.
    status, listing = await api(server, "/", method="GET")
    assert status == 200
    (pub,) = listing["publications"]
    url = parse_node(pub["url"])
    assert url is not None and (url.host, url.port) == ("127.0.0.1", ingress)
    (sub,) = listing["subscriptions"]
    assert sub["hosts"] == [f"127.0.0.1:{ingress}"]

    # The consumer on the egress: egress -> the subscription's cluster -> ingress -> provider.
    result = await consumer("--host", f"127.0.0.1:{egress}", "--calls", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "sayHello('world 1') -> 'hello world 1 from provider-a'",
        "sayHello('world 2') -> 'hello world 2 from provider-a'",
        "add(1, 2, 3) -> 6",
    ]

    assert await api(server, "/unsub", requests["/unsub"]) == (
        200,
        {"err_no": 0, "err_msg": "unsubscribe success"},
    )
    assert await api(server, "/unpub", requests["/unpub"]) == (
        200,
        {"err_no": 0, "err_msg": "unpub success"},
    )
    status, listing = await api(server, "/", method="GET")
    assert (listing["publications"], listing["subscriptions"]) == ([], [])

    # No route any more: the call fails with Dubbo's SERVICE_NOT_FOUND, the consumer says so.
    result = await consumer("--host", f"127.0.0.1:{egress}", "--calls", "1")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode() == (
        f"127.0.0.1:{egress} answered an error: trio-mesh: no route for the service\n"
    )


async def test_the_consumer_fails_clearly_without_a_provider() -> None:
    with trio.socket.socket() as s:  # a port nothing listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await consumer("--host", f"127.0.0.1:{port}")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode() == (
        f"cannot connect to 127.0.0.1:{port}: connection refused (is it running?)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "nowhere"], "--host: expected HOST:PORT, got 'nowhere'"),
        (["--calls", "-1"], "--calls: expected 0 or more, got -1"),
    ],
)
async def test_the_consumer_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = await consumer(*args)
    assert result.returncode == 2 and message in result.stderr.decode()


async def test_the_provider_says_why_it_cannot_listen() -> None:
    async with provider("first") as port:
        with trio.fail_after(TIMEOUT):
            result = await trio.run_process(
                [sys.executable, str(PROVIDER), "--port", str(port)],
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
