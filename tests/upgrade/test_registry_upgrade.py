"""A hot upgrade of a sidecar running the service registry (``extends: dubbo_registry``),
end to end: real ``trio-mesh run`` processes, a real ZooKeeper (tests/zookeeper_server.py), a
Dubbo provider process (examples/dubbo_provider.py) behind the ingress, Dubbo calls (as
dubbo-ssl-python sends them) through the egress, and an independent kazoo client watching the
provider nodes all along. The in-memory registry cannot serve here: it lives in one process."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from tests import dubbo_frames_data as captured
from tests.cli_helpers import TIMEOUT, Proxy, write_config
from tests.http_helpers import free_port
from tests.registry.helpers import sidecar_doc
from tests.zookeeper_server import ZooKeeper, needs_zookeeper
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.registry.url import parse_node, providers_path

pytestmark = needs_zookeeper

ROOT = Path(__file__).resolve().parents[2]
UPGRADED = re.compile(r"upgraded: pid (\d+) took over; draining")
REPLAYED = re.compile(
    r"registry state replayed: (\d+) publication\(s\), (\d+) subscription\(s\), (\d+) failed"
)
HANDED_OVER = re.compile(r"registry API: using the socket handed over")


@pytest.fixture
def dubbo_provider() -> Iterator[int]:
    """examples/dubbo_provider.py in a process: its port (from the line it prints)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "dubbo_provider.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded: the process prints it or exits (EOF)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, f"provider said {line!r}"
        yield int(m[1])
    finally:
        proc.kill()
        proc.wait(TIMEOUT)


def api(port: int, path: str, doc: Any = None) -> tuple[int, dict[str, Any]]:
    """One call of the registry API on 127.0.0.1:port: its status and JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        if doc is None:
            conn.request("GET", path)
        else:
            conn.request(
                "POST", path, json.dumps(doc), headers={"Content-Type": "application/json"}
            )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def request(zk: str, interface: str, **service: str) -> dict[str, Any]:
    return {
        "registry": {"type": "zookeeper", "addr": zk},
        "service": {"interface": interface, "methods": ["sayHello", "add"], **service},
    }


#: dubbo-ssl-python's own ``sayHello("world")`` to com.example.DemoService (group blue,
#: version 1.0.0), sent as is on a new connection per call. Why not that client itself: it
#: keeps one connection per host and takes Dubbo's READONLY event for a heartbeat, so a call
#: it sends on the old process's connection after the drain's grace is lost (a race of any
#: RPC drain with that client, upgrade or SIGTERM, not of the registry's handover).
RAW_INTERFACE = "com.example.DemoService"


def raw_call(port: int) -> bytes:
    """The body of the answer to ``captured.SAY_HELLO`` on a new connection (events such as
    a draining proxy's READONLY skipped); a failure raises."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(captured.SAY_HELLO)
        data = bytearray()
        while True:
            header = df.parse_header(data)
            if header is not None and len(data) >= df.HEADER_LENGTH + header.body_length:
                body = bytes(data[df.HEADER_LENGTH : df.HEADER_LENGTH + header.body_length])
                del data[: df.HEADER_LENGTH + header.body_length]
                if header.flag & 0x20:  # an event (READONLY, heartbeat): not the answer
                    continue
                assert header.status == 20, (header.status, body)
                return body
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the answer")
            data += chunk


class Calls(threading.Thread):
    """Calls through the egress, one after another, each on a new connection, until
    stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.answers = 0
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                body = raw_call(self.port)
                if b"hello world from provider" in body:
                    self.answers += 1
                else:
                    self.errors.append(repr(body))
            except Exception as exc:
                self.errors.append(repr(exc))

    def wait_for(self, n: int) -> None:
        target = self.answers + n
        deadline = time.monotonic() + TIMEOUT
        while self.answers < target:
            assert time.monotonic() < deadline, f"calls stalled: {self.errors[:5]}"
            time.sleep(0.01)  # a poll: the calls are another thread's


class ProviderNodes(threading.Thread):
    """An independent ZooKeeper client listing the interface's provider nodes back to back:
    the fewest seen, and the pids they named."""

    def __init__(self, client: KazooClient, interface: str) -> None:
        super().__init__(daemon=True)
        self.client, self.path = client, providers_path(interface)
        self.fewest: int | None = None
        self.polls = 0
        self.pids: set[str] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                names = self.client.get_children(self.path)
            except NoNodeError:
                names = []
            for name in names:
                url = parse_node(name)
                if url is not None:
                    self.pids.add(url.params.get("pid", ""))
            self.fewest = len(names) if self.fewest is None else min(self.fewest, len(names))
            self.polls += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(TIMEOUT)


def children(client: KazooClient, path: str) -> list[str]:
    try:
        return list(client.get_children(path))
    except NoNodeError:
        return []


def write_sidecar(tmp_path: Path, provider_port: int, api_port: int, **registry: Any) -> Path:
    doc = sidecar_doc(provider_port=provider_port, registry={"api_port": api_port, **registry})
    return write_config(tmp_path, doc)


def publications(status: dict[str, Any]) -> list[Any]:
    return [(p["registry"], p["service"]) for p in status["publications"]]


def subscriptions(status: dict[str, Any]) -> list[Any]:
    return [(s["registry"], s["service"], s["hosts"]) for s in status["subscriptions"]]


def test_an_upgrade_hands_the_registry_over_without_a_gap(
    tmp_path: Path, zookeeper: ZooKeeper, dubbo_provider: int
) -> None:
    interface = RAW_INTERFACE  # the captured call's (only this test's, in ZooKeeper)
    api_port = free_port()
    config = write_sidecar(tmp_path, dubbo_provider, api_port)
    sock = tmp_path / "upgrade.sock"
    zk = KazooClient(hosts=zookeeper.address, timeout=10.0)
    zk.start(timeout=15)
    old = Proxy(config, "--upgrade-socket", str(sock))
    new: Proxy | None = None
    try:
        ports = old.ready()
        ingress, egress = ports["ingress"], ports["egress"]
        doc = request(zookeeper.address, interface, group="blue", version="1.0.0")
        assert api(api_port, "/pub", doc) == (200, {"err_no": 0, "err_msg": "publish success"})
        # Subscribed to itself: the egress routes the interface to the published ingress.
        assert api(api_port, "/sub", doc) == (200, {"err_no": 0, "err_msg": "subscribe success"})
        before = api(api_port, "/")[1]
        assert subscriptions(before)[0][2] == [f"127.0.0.1:{ingress}"]
        (old_node,) = children(zk, providers_path(interface))

        watch = ProviderNodes(zk, interface)
        calls = Calls(egress)
        watch.start()
        calls.start()
        try:
            calls.wait_for(5)
            new = Proxy(config, "--upgrade-socket", str(sock))
            # The same listening sockets: the same ports, the registry API's included.
            assert new.ready() == ports
            assert old.finish() == 0, old.text
            assert UPGRADED.search(old.text), old.text
            calls.wait_for(5)  # the new process routes the calls
        finally:
            calls.halt.set()
            calls.join(TIMEOUT)
            watch.stop()
        assert HANDED_OVER.search(new.text), new.text
        replayed = REPLAYED.search(new.text)
        assert replayed is not None and replayed.groups() == ("1", "1", "0"), new.text
        # ZooKeeper never listed the interface without a provider, and both processes'
        # nodes were seen (the new one's made before the old one's went).
        assert watch.polls > 10 and watch.fewest is not None and watch.fewest >= 1
        assert watch.pids == {str(old.proc.pid), str(new.proc.pid)}, watch.pids
        assert calls.errors == [], calls.errors[:5]
        assert calls.answers >= 10
        # The old process did not unpublish (a plain drain would say "unpublished ... (draining)").
        assert "(draining)" not in old.text, old.text
        # Only the new process's node is left (the old one's went with its session), and
        # the registry API, on the same port, is the new process's with the same state.
        (node,) = children(zk, providers_path(interface))
        assert node != old_node
        url = parse_node(node)
        assert url is not None and url.params["pid"] == str(new.proc.pid)
        assert url.port == ingress
        after = api(api_port, "/")[1]
        assert publications(after) == publications(before)
        assert subscriptions(after) == subscriptions(before)
        assert b"hello world from provider" in raw_call(egress)
        # A plain stop of the new one still unpublishes first (issue 19's rule).
        new.proc.terminate()
        assert new.finish() == 0, new.text
        assert f"unpublished {interface} (draining)" in new.text
        assert children(zk, providers_path(interface)) == []
    finally:
        old.kill()
        if new is not None:
            new.kill()
        zk.stop()
        zk.close()


def test_a_replay_that_fails_is_logged_and_the_upgrade_completes(
    tmp_path: Path, dubbo_provider: int
) -> None:
    """ZooKeeper down during the upgrade: the new process cannot publish again; it says so
    and becomes ready (the application may publish again); the old one exits 0 without
    trying to unpublish, and its node goes with its session (expired once ZooKeeper is back)."""
    interface = "org.example.upgrade.LostService"
    zookeeper = ZooKeeper(tmp_path / "zookeeper")
    zookeeper.start()
    api_port = free_port()
    config = write_sidecar(
        tmp_path, dubbo_provider, api_port, registry_timeout="1s", session_timeout="2s"
    )
    sock = tmp_path / "upgrade.sock"
    old = Proxy(config, "--upgrade-socket", str(sock))
    new: Proxy | None = None
    try:
        old.ready()
        doc = request(zookeeper.address, interface)
        assert api(api_port, "/pub", doc)[0] == 200
        assert api(api_port, "/sub", doc)[0] == 200
        zookeeper.stop()
        new = Proxy(config, "--upgrade-socket", str(sock))
        new.ready()
        assert old.finish() == 0, old.text
        replayed = REPLAYED.search(new.text)
        assert replayed is not None and replayed.groups() == ("0", "0", "2"), new.text
        assert re.search(rf"ERROR .*upgrade: publish {re.escape(interface)} not replayed", new.text)
        assert re.search(
            rf"ERROR .*upgrade: subscribe {re.escape(interface)} not replayed", new.text
        )
        # The old process left its publication alone (no unpublish against a dead registry).
        assert "(draining)" not in old.text and "at drain" not in old.text, old.text
        status = api(api_port, "/")[1]
        assert status["publications"] == [] and status["subscriptions"] == []
        # ZooKeeper back: the old process's session expires, and its node with it.
        zookeeper.start()
        zk = KazooClient(hosts=zookeeper.address, timeout=10.0)
        zk.start(timeout=15)
        try:
            deadline = time.monotonic() + TIMEOUT
            while children(zk, providers_path(interface)):
                assert time.monotonic() < deadline, "the old process's node stayed"
                time.sleep(0.1)  # a poll: the expiry is ZooKeeper's
            # The application publishes again, on the new process.
            assert api(api_port, "/pub", doc)[0] == 200
            (node,) = children(zk, providers_path(interface))
            url = parse_node(node)
            assert url is not None and url.params["pid"] == str(new.proc.pid)
        finally:
            zk.stop()
            zk.close()
    finally:
        old.kill()
        if new is not None:
            new.kill()
        zookeeper.stop()


def test_a_failed_upgrade_leaves_the_old_registry_serving_and_taking_changes(
    tmp_path: Path, dubbo_provider: int
) -> None:
    """The new process gets the registry's state, then dies before ready (a busy port): the
    old one keeps its publications and takes changes again (the in-memory registry: it lives
    in the old process, which is all this needs)."""
    api_port = free_port()
    config = write_sidecar(tmp_path, dubbo_provider, api_port)
    doc = sidecar_doc(provider_port=dubbo_provider, registry={"api_port": api_port})
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    extra = dict(doc["servers"][0]["listeners"][0])
    extra["name"] = "busy"
    extra["address"] = f"127.0.0.1:{busy.getsockname()[1]}"
    doc["servers"][0]["listeners"].append(extra)
    broken = write_config(tmp_path, doc, "broken.yaml")
    sock = tmp_path / "upgrade.sock"
    old = Proxy(config, "--upgrade-socket", str(sock))
    try:
        old.ready()
        first = request("127.0.0.1:2181", "org.example.upgrade.First")
        first["registry"]["type"] = "memory"
        assert api(api_port, "/pub", first)[0] == 200
        new = Proxy(broken, "--upgrade-socket", str(sock))
        try:
            assert new.finish() != 0
            assert "busy" in new.text and "cannot listen" in new.text, new.text
        finally:
            new.kill()
        old.wait_for(re.compile(r"upgrade did not complete; taking changes again"))
        old.wait_for(re.compile(r"upgrade by pid \d+ failed before ready"))
        second = request("127.0.0.1:2181", "org.example.upgrade.Second")
        second["registry"]["type"] = "memory"
        assert api(api_port, "/pub", second) == (
            200,
            {"err_no": 0, "err_msg": "publish success"},
        )
        interfaces = [p["service"]["interface"] for p in api(api_port, "/")[1]["publications"]]
        assert interfaces == ["org.example.upgrade.First", "org.example.upgrade.Second"]
        assert old.proc.poll() is None
    finally:
        busy.close()
        old.kill()
