"""AdsClient against a real grpclib ADS server (tests/xds_server.py) in a subprocess."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_mesh.xds.client import CDS, EDS, LDS, RDS, AdsClient

# find_spec, not importorskip: importing trio_asyncio installs its event loop policy for the
# whole process, and the anthunder (asyncio) peers of other tests must not get it.
pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None for m in ("envoy_data_plane", "grpclib", "trio_asyncio")
    ),
    reason="the xds extra is not installed",
)

SERVER = Path(__file__).parents[1] / "xds_server.py"
TIMEOUT = 15  # the first envoy-data-plane round costs ~1 s per side

CLUSTER = {
    "name": "backend",
    "type": "EDS",
    "connectTimeout": "1.5s",
    "edsClusterConfig": {"serviceName": "backend", "edsConfig": {"ads": {}}},
}
LISTENER = {
    "name": "ingress",
    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 10000}},
}


def cla(name: str, port: int) -> dict[str, Any]:
    return {
        "clusterName": name,
        "endpoints": [
            {
                "lbEndpoints": [
                    {
                        "endpoint": {
                            "address": {"socketAddress": {"address": "10.0.0.1", "portValue": port}}
                        }
                    }
                ]
            }
        ],
    }


class ServerProcess:
    """tests/xds_server.py as a child; reads its event lines on demand."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.port = 0
        self.lines: list[str] = []
        self._buf = b""

    @classmethod
    async def start(cls, port: int = 0, *extra: str) -> ServerProcess:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(SERVER), "--port", str(port), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        server = cls(proc)
        server.port = int((await server.expect("READY")).split()[1])
        return server

    async def readline(self) -> str:
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                raise EOFError(f"server exited; saw {self.lines}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        self.lines.append(line.decode())
        return self.lines[-1]

    async def expect(self, prefix: str) -> str:
        """Skip lines until one starts with ``prefix``; return it."""
        with trio.fail_after(TIMEOUT):
            while not (line := await self.readline()).startswith(prefix):
                pass
        return line

    async def set(
        self, type_: str, version: str, resources: list[dict[str, Any]], garbage: bool = False
    ) -> None:
        cmd = {
            "op": "set",
            "type": type_,
            "version": version,
            "resources": resources,
            "garbage": garbage,
        }
        await self.proc.stdin.send_all(json.dumps(cmd).encode() + b"\n")

    async def kill(self) -> None:
        self.proc.kill()
        await self.proc.wait()

    async def quit(self) -> None:
        await self.proc.stdin.send_all(b'{"op": "quit"}\n')
        with trio.fail_after(TIMEOUT):
            await self.proc.wait()


class Recorder:
    """The client's handler: records calls, NACKs when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[Any]]] = []
        self.reject: dict[str, str] = {}  # type_url -> NACK message
        self._changed = trio.Event()

    async def __call__(self, type_url: str, version: str, resources: list[Any]) -> str | None:
        self.calls.append((type_url, version, resources))
        self._changed.set()
        self._changed = trio.Event()
        return self.reject.get(type_url)

    async def wait_for(self, type_url: str, version: str) -> list[Any]:
        with trio.fail_after(TIMEOUT):
            while True:
                for t, v, resources in self.calls:
                    if (t, v) == (type_url, version):
                        return resources
                await self._changed.wait()


async def wait_until(client: AdsClient, pred: Any) -> None:
    """Until ``pred()``; the client wakes waiters on every change of its state."""
    with trio.fail_after(TIMEOUT):
        while not pred():
            await client.changed.park()


@pytest.fixture
async def server():
    srv = await ServerProcess.start()
    yield srv
    if srv.proc.returncode is None:
        srv.proc.kill()
        await srv.proc.wait()


def make_client(port: int, handler: Recorder, **kwargs: Any) -> AdsClient:
    node = {"id": "test-node", "cluster": "trio-mesh", "metadata": {"zone": "a", "n": 1}}
    return AdsClient("127.0.0.1", port, node, handler, backoff_base=0.05, backoff_cap=0.5, **kwargs)


async def test_cds_lds_then_eds_subscription(server: ServerProcess) -> None:
    handler = Recorder()
    client = make_client(server.port, handler)
    await server.set("CDS", "c1", [CLUSTER])
    await server.set("LDS", "l1", [LISTENER])
    await server.set("EDS", "e1", [cla("backend", 8001), cla("other", 8002)])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        subs = {await server.expect("SUBSCRIBE"), await server.expect("SUBSCRIBE")}
        assert subs == {"SUBSCRIBE CDS ", "SUBSCRIBE LDS "}

        (cluster,) = await handler.wait_for(CDS, "c1")
        assert cluster.name == "backend"
        assert cluster.connect_timeout.total_seconds() == 1.5
        (listener,) = await handler.wait_for(LDS, "l1")
        assert listener.address.socket_address.port_value == 10000
        assert await server.expect("ACK") in {"ACK CDS c1", "ACK LDS l1"}
        # a type nobody subscribed to is not pushed
        assert all(t != EDS for t, _, _ in handler.calls)

        client.subscribe(EDS, ["backend"])
        assert await server.expect("SUBSCRIBE EDS") == "SUBSCRIBE EDS backend"
        (assignment,) = await handler.wait_for(EDS, "e1")  # "other" is filtered out
        assert assignment.cluster_name == "backend"
        assert await server.expect("ACK EDS") == "ACK EDS e1"

        # pushes follow the subscription
        await server.set("EDS", "e2", [cla("backend", 9001), cla("other", 9002)])
        (assignment,) = await handler.wait_for(EDS, "e2")
        sa = assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
        assert sa.port_value == 9001
        assert await server.expect("ACK EDS") == "ACK EDS e2"

        status = client.status()
        assert status["connected"] is True
        assert status["types"]["EDS"]["version"] == "e2"
        assert status["types"]["EDS"]["names"] == ["backend"]
        assert status["types"]["CDS"]["version"] == "c1"
        assert status["types"]["EDS"]["nonce"] != ""
        # the node went out once, on the stream's first request
        nodes = [line for line in server.lines if line.startswith("NODE")]
        assert nodes == ['NODE test-node trio-mesh {"n": 1.0, "zone": "a"}']
        nursery.cancel_scope.cancel()


async def test_handler_error_is_a_nack_keeping_the_version(server: ServerProcess) -> None:
    handler = Recorder()
    client = make_client(server.port, handler)
    await server.set("CDS", "c1", [CLUSTER])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await handler.wait_for(CDS, "c1")
        assert await server.expect("ACK CDS") == "ACK CDS c1"

        handler.reject[CDS] = "cluster backend: bad idea"
        await server.set("CDS", "c2", [{**CLUSTER, "connectTimeout": "0s"}])
        await handler.wait_for(CDS, "c2")
        assert await server.expect("NACK") == "NACK CDS c1 cluster backend: bad idea"
        status = client.status()["types"]["CDS"]
        assert status["version"] == "c1"
        assert status["last_error"] == "cluster backend: bad idea"

        del handler.reject[CDS]
        await server.set("CDS", "c3", [CLUSTER])
        await handler.wait_for(CDS, "c3")
        assert await server.expect("ACK CDS") == "ACK CDS c3"
        assert client.status()["types"]["CDS"]["last_error"] is None
        nursery.cancel_scope.cancel()


async def test_undecodable_resource_is_a_nack_without_calling_handler(
    server: ServerProcess,
) -> None:
    handler = Recorder()
    client = make_client(server.port, handler)
    await server.set("CDS", "c1", [CLUSTER])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await handler.wait_for(CDS, "c1")
        assert await server.expect("ACK CDS") == "ACK CDS c1"
        await server.set("CDS", "c2", [CLUSTER], garbage=True)
        line = await server.expect("NACK")
        assert line.startswith("NACK CDS c1 cannot decode resource:"), line
        assert [v for t, v, _ in handler.calls if t == CDS] == ["c1"]
        assert client.status()["types"]["CDS"]["version"] == "c1"
        # the stream survives: the next good version is ACKed
        await server.set("CDS", "c3", [CLUSTER])
        await handler.wait_for(CDS, "c3")
        assert await server.expect("ACK CDS") == "ACK CDS c3"
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await trio.run_process(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_stdout=True,
        capture_stderr=True,
    )
    srv = await ServerProcess.start(0, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.set_alpn_protocols(["h2"])  # gRPC needs h2 negotiated
        handler = Recorder()
        client = make_client(srv.port, handler, ssl_context=ctx)
        await srv.set("CDS", "t1", [CLUSTER])
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            (cluster,) = await handler.wait_for(CDS, "t1")
            assert cluster.name == "backend"
            assert await srv.expect("ACK CDS") == "ACK CDS t1"
            nursery.cancel_scope.cancel()
    finally:
        srv.proc.kill()
        await srv.proc.wait()


async def test_reconnects_and_resubscribes_after_server_restart(server: ServerProcess) -> None:
    handler = Recorder()
    client = make_client(server.port, handler)
    await server.set("CDS", "c1", [CLUSTER])
    await server.set("LDS", "l1", [LISTENER])
    await server.set("EDS", "e1", [cla("backend", 8001)])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await handler.wait_for(CDS, "c1")
        await handler.wait_for(LDS, "l1")
        client.subscribe(EDS, ["backend"])
        await handler.wait_for(EDS, "e1")
        await server.expect("ACK EDS")
        assert client.status()["connect_attempts"] == 1

        port = server.port
        await server.kill()
        await wait_until(client, lambda: client.status()["connect_attempts"] >= 3)
        assert client.status()["connected"] is False
        assert client.status()["last_error"]

        restarted = await ServerProcess.start(port)
        try:
            subs = set()
            for _ in range(3):
                subs.add(await restarted.expect("SUBSCRIBE"))
            assert subs == {"SUBSCRIBE CDS ", "SUBSCRIBE LDS ", "SUBSCRIBE EDS backend"}
            await wait_until(client, lambda: client.status()["connected"])
            # the new server publishes its own versions; they reach the handler
            await restarted.set("EDS", "r1", [cla("backend", 7001)])
            (assignment,) = await handler.wait_for(EDS, "r1")
            assert assignment.cluster_name == "backend"
            assert await restarted.expect("ACK EDS") == "ACK EDS r1"
            assert client.status()["types"]["CDS"]["version"] == "c1"  # kept across streams
            nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await restarted.kill()


async def test_resubscription_carries_last_acked_version(server: ServerProcess) -> None:
    """After a reconnect the initial requests carry the last ACKed version:
    a NACK on the new stream reports it as the kept version."""
    handler = Recorder()
    client = make_client(server.port, handler)
    await server.set("CDS", "c1", [CLUSTER])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await handler.wait_for(CDS, "c1")
        await server.expect("ACK CDS")
        port = server.port
        await server.kill()
        restarted = await ServerProcess.start(port)
        try:
            await restarted.expect("SUBSCRIBE CDS")
            handler.reject[CDS] = "no"
            await restarted.set("CDS", "x1", [CLUSTER])
            assert await restarted.expect("NACK") == "NACK CDS c1 no"
            nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await restarted.kill()


async def test_cancellation_closes_stream_and_leaves_no_asyncio_tasks(
    server: ServerProcess,
) -> None:
    handler = Recorder()
    client = make_client(server.port, handler)
    await server.set("CDS", "c1", [CLUSTER])
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await handler.wait_for(CDS, "c1")
            await server.expect("ACK CDS")
            scope.cancel()
    loop = client._loop
    assert [t for t in asyncio.all_tasks(loop) if not t.done()] == []
    assert client.status()["connected"] is False
    # the server saw the stream end (it was reset, not leaked until process exit)
    assert await server.expect("CLOSED") == "CLOSED"
    await server.quit()
    assert server.proc.returncode == 0


async def test_unreachable_server_retries_with_backoff() -> None:
    # grab a free port, then close it so nothing listens there
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    handler = Recorder()
    client = make_client(port, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await wait_until(client, lambda: client.status()["connect_attempts"] >= 3)
        status = client.status()
        assert status["connected"] is False
        assert "ConnectionRefusedError" in status["last_error"] or "Errno" in status["last_error"]
        assert handler.calls == []
        nursery.cancel_scope.cancel()


async def test_subscription_changes_coalesce(server: ServerProcess) -> None:
    handler = Recorder()
    client = make_client(server.port, handler)
    await server.set("CDS", "c1", [CLUSTER])
    route = {"name": "r1", "virtualHosts": [{"name": "all", "domains": ["*"]}]}
    await server.set("RDS", "rt1", [route])
    await server.set("EDS", "e1", [cla("a", 1), cla("b", 2), cla("c", 3)])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await handler.wait_for(CDS, "c1")
        await server.expect("ACK CDS")
        # three changes without a checkpoint in between: one request, the last state
        client.subscribe(EDS, ["a"])
        client.subscribe(EDS, ["c", "a"])
        client.subscribe(EDS, ["a", "c", "a"])
        assert await server.expect("SUBSCRIBE EDS") == "SUBSCRIBE EDS a,c"
        resources = await handler.wait_for(EDS, "e1")
        assert sorted(r.cluster_name for r in resources) == ["a", "c"]
        await server.expect("ACK EDS")
        # unchanged names send nothing: the next request the server sees is RDS
        client.subscribe(EDS, ["c", "a"])
        client.subscribe(RDS, ["r1"])
        start = len(server.lines)
        assert await server.expect("SUBSCRIBE RDS") == "SUBSCRIBE RDS r1"
        assert [x for x in server.lines[start:] if "EDS" in x] == []
        (config,) = await handler.wait_for(RDS, "rt1")
        assert config.virtual_hosts[0].domains == ["*"]
        assert client.status()["types"]["EDS"]["names"] == ["a", "c"]
        nursery.cancel_scope.cancel()


async def test_nack_of_the_first_response_keeps_no_version(server: ServerProcess) -> None:
    handler = Recorder()
    handler.reject[LDS] = "listener: unsupported"
    client = make_client(server.port, handler)
    await server.set("LDS", "l1", [LISTENER])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert await server.expect("NACK") == "NACK LDS - listener: unsupported"
        status = client.status()["types"]["LDS"]
        assert status["version"] == ""
        assert status["last_error"] == "listener: unsupported"
        nursery.cancel_scope.cancel()


async def test_handler_exception_is_a_nack_and_the_stream_survives(
    server: ServerProcess,
) -> None:
    calls = []

    async def handler(type_url: str, version: str, resources: list[Any]) -> str | None:
        calls.append(version)
        if version == "c1":
            raise KeyError("boom")
        return None

    client = AdsClient("127.0.0.1", server.port, {"id": "n"}, handler)
    await server.set("CDS", "c1", [CLUSTER])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert await server.expect("NACK") == "NACK CDS - handler error: KeyError: 'boom'"
        await server.set("CDS", "c2", [CLUSTER])
        assert await server.expect("ACK CDS") == "ACK CDS c2"
        assert calls == ["c1", "c2"]
        assert client.status()["connect_attempts"] == 1
        nursery.cancel_scope.cancel()
