"""``trio-mesh run --workers 2`` with an admin block, as a real subprocess: one admin port
for the whole proxy (sums over the workers, commands reaching each, readiness of all), and
what survives a worker or the admin process being killed."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cli_helpers import TIMEOUT, Proxy, write_config
from tests.http_helpers import free_port
from tests.prometheus_server import needs_prometheus, start_prometheus

LISTENING = re.compile(r"listener 'ingress' listening on 127\.0\.0\.1:(\d+)$")
ADMIN = re.compile(r"admin API listening on 127\.0\.0\.1:(\d+)$")
ADMIN_PID = re.compile(r"admin process started \(pid (\d+)\)$")
ALL_READY = re.compile(r"all 2 workers ready$")
#: promtool's naming lints that Envoy's names draw (what dashboards query: kept).
ENVOY_NAMING = re.compile(
    r'^\S+ (counter metrics should have "_total" suffix'
    r"|metric names should not contain abbreviated units)$"
)


def config(tmp_path: Path, observability: dict[str, Any] | None = None) -> Path:
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "hi\n"}}
    return write_config(
        tmp_path,
        {
            "servers": [
                {
                    "listeners": [
                        {
                            "name": "ingress",
                            "address": "127.0.0.1:0",
                            "filter_chains": [
                                {
                                    "filters": [
                                        {"type": "proxy", "config": {"router_config_name": "r"}}
                                    ]
                                }
                            ],
                        }
                    ],
                    "routers": [
                        {
                            "router_config_name": "r",
                            "virtual_hosts": [{"name": "v", "domains": ["*"], "routers": [route]}],
                        }
                    ],
                }
            ],
            **(
                observability
                or {
                    "admin": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
                    }
                }
            ),
        },
    )


def until_ready(proxy: Proxy, **patterns: re.Pattern[str]) -> dict[str, int]:
    """Read the start-up lines (several processes write them, in any order) up to the
    supervisor's "all ready"; each pattern's number, by name."""
    found: dict[str, int] = {}
    anything = re.compile("|".join(p.pattern for p in (*patterns.values(), ALL_READY)))
    while not ALL_READY.search(line := proxy.wait_for(anything).string):
        for key, pattern in patterns.items():
            if m := pattern.search(line):
                found[key] = int(m.group(1))
    assert set(found) == set(patterns), proxy.text
    return found


def stop(proxy: Proxy) -> None:
    """SIGTERM (the supervisor stops its children: a SIGKILL alone would orphan them)."""
    if proxy.proc.poll() is None:
        proxy.proc.send_signal(signal.SIGTERM)
        try:
            proxy.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            for pid in children(proxy.proc.pid):
                os.kill(pid, signal.SIGKILL)
    proxy.kill()


class Running:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        found = until_ready(proxy, port=LISTENING, admin=ADMIN, admin_pid=ADMIN_PID)
        self.port, self.admin, self.admin_pid = found["port"], found["admin"], found["admin_pid"]

    def admin_call(self, method: str, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=TIMEOUT)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        status, body = self.admin_call("GET", "/stats?format=json")
        assert status == 200, body
        return {s["name"]: s["value"] for s in json.loads(body)["stats"] if "name" in s}

    def info(self) -> dict[str, Any]:
        status, body = self.admin_call("GET", "/server_info")
        assert status == 200, body
        info: dict[str, Any] = json.loads(body)
        return info

    def until(self, what: str, check: Any) -> Any:
        """Poll the external process under a deadline (the links are made asynchronously)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if result := check():
                    return result
            except (OSError, http.client.HTTPException):
                pass  # the admin process is restarting
            if time.monotonic() > deadline:
                pytest.fail(f"never {what}:\n{self.proxy.text}")
            time.sleep(0.05)

    def ready(self) -> tuple[int, str]:
        return self.admin_call("GET", "/ready")


def request(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hi\n")
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    proxy = Proxy(config(tmp_path), "--workers", "2")
    try:
        yield Running(proxy)
    finally:
        stop(proxy)


def curl(url: str) -> str:
    return subprocess.run(
        ["curl", "-sS", "--fail", url], capture_output=True, text=True, timeout=TIMEOUT, check=True
    ).stdout


def test_one_admin_port_sums_the_workers_and_commands_reach_each(running: Running) -> None:
    running.until("ready", lambda: running.ready() == (200, "LIVE\n"))
    for _ in range(20):  # one connection each: SO_REUSEPORT spreads them over the workers
        request(running.port)
    stats = running.stats()
    assert stats["http.ingress.downstream_rq_total"] == 20
    assert stats[f"listener.127.0.0.1_{running.port}.downstream_cx_total"] == 20
    per_worker = {n for n in stats if n.endswith("downstream_cx_active")}
    assert per_worker == {
        f"listener.127.0.0.1_{running.port}.worker_{w}.downstream_cx_active" for w in (0, 1)
    }
    exposition = curl(f"http://127.0.0.1:{running.admin}/stats/prometheus")
    assert (
        'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"} 20' in exposition
    )
    for w in (0, 1):
        label = f'envoy_listener_address="127.0.0.1_{running.port}",worker="{w}"'
        assert f"envoy_listener_downstream_cx_active{{{label}}} 0" in exposition
    info = running.info()
    assert info["workers"] == 2 and info["pid"] == running.proxy.proc.pid
    assert [w["state"] for w in info["worker_status"]] == ["LIVE", "LIVE"]
    assert len({w["pid"] for w in info["worker_status"]}) == 2

    assert running.admin_call("POST", "/healthcheck/fail") == (200, "OK\n")
    assert running.ready()[0] == 503
    assert all(w["health_failed"] for w in running.info()["worker_status"])
    assert running.admin_call("POST", "/healthcheck/ok") == (200, "OK\n")
    assert running.ready() == (200, "LIVE\n")

    status, body = running.admin_call("POST", "/logging?trio_mesh.proxy=debug")
    assert status == 200 and "trio_mesh.proxy: debug" in body
    status, _ = running.admin_call("POST", "/logging?no.such.logger=debug")
    assert status == 404


def test_a_killed_worker_restarts_and_gets_the_health_check_state_back(running: Running) -> None:
    running.until("ready", lambda: running.ready() == (200, "LIVE\n"))
    for _ in range(10):
        request(running.port)
    assert running.admin_call("POST", "/healthcheck/fail") == (200, "OK\n")
    victim = running.info()["worker_status"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    running.proxy.wait_for(re.compile(rf"worker 0 \(pid {victim}\) was killed by SIGKILL"))
    # The scrape answers while the worker is gone: its counts went with it (as Envoy's do
    # on a hot restart), the other worker's are still there.
    assert running.stats()["http.ingress.downstream_rq_total"] <= 10
    assert running.ready()[0] == 503

    def relinked() -> Any:
        status = running.info()["worker_status"][0]
        return status["pid"] not in (None, victim) and status["state"] == "LIVE" and status

    status = running.until("worker 0 back", relinked)
    assert status["health_failed"] is True  # replayed to the new worker
    assert running.ready()[0] == 503
    assert running.admin_call("POST", "/healthcheck/ok") == (200, "OK\n")
    assert running.ready() == (200, "LIVE\n")


def test_a_killed_admin_process_restarts_on_the_same_port(running: Running) -> None:
    running.until("ready", lambda: running.ready() == (200, "LIVE\n"))
    request(running.port)
    os.kill(running.admin_pid, signal.SIGKILL)
    running.proxy.wait_for(re.compile(r"admin process \(pid \d+\) was killed by SIGKILL"))
    # Held by the supervisor: connections wait in its backlog until the new one accepts.
    running.until("ready again", lambda: running.ready() == (200, "LIVE\n"))
    assert running.stats()["http.ingress.downstream_rq_total"] == 1  # the workers kept theirs
    running.proxy.proc.send_signal(signal.SIGTERM)
    assert running.proxy.finish() == 0


def control_socket(admin_pid: int) -> str:
    """The path of the unix socket the admin process listens on (its descriptors, matched
    with /proc/net/unix by inode)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{admin_pid}/fd"):
        try:
            target = os.readlink(f"/proc/{admin_pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # a connection closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) == 8 and fields[6] in inodes and fields[7].endswith("control.sock"):
                return fields[7]
    raise AssertionError("no control socket")


def test_the_control_socket_is_private_and_survives_a_flood(running: Running) -> None:
    running.until("ready", lambda: running.ready() == (200, "LIVE\n"))
    path = control_socket(running.admin_pid)
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(TIMEOUT)
        chunk = b"x" * (1024 * 1024)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):  # a 100 MB line: cut off after 16 MiB
                s.sendall(chunk)
    running.proxy.wait_for(re.compile(r"control link dropped before hello: line over"))
    request(running.port)
    assert running.stats()["http.ingress.downstream_rq_total"] == 1
    assert running.ready() == (200, "LIVE\n")
    assert running.proxy.proc.poll() is None


def test_a_prometheus_sink_serves_every_worker(tmp_path: Path) -> None:
    port = free_port()
    sinks = {"metrics": {"sinks": [{"type": "prometheus", "config": {"port": port}}]}}
    p = Proxy(config(tmp_path, sinks), "--workers", "2")
    try:
        sink = re.compile(rf"prometheus metrics sink on http://127\.0\.0\.1:({port})/metrics")
        listener = until_ready(p, port=LISTENING, sink=sink)["port"]
        for _ in range(6):
            request(listener)
        url = f"http://127.0.0.1:{port}/metrics"
        total = 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"} 6'
        deadline = time.monotonic() + TIMEOUT
        while total not in (exposition := curl(url)):  # until both workers have linked
            assert time.monotonic() < deadline, exposition
            time.sleep(0.05)
        assert 'worker="0"' in exposition and 'worker="1"' in exposition
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True
        )
        # 3: it parses, with lint lines; only those Envoy's own names draw are expected.
        assert check.returncode in (0, 3), check.stdout + check.stderr
        lint = [line for line in (check.stdout + check.stderr).splitlines() if line.strip()]
        assert all(ENVOY_NAMING.match(line.strip()) for line in lint), lint
        p.proc.send_signal(signal.SIGTERM)
        assert p.finish() == 0
    finally:
        stop(p)


def test_drain_listeners_reaches_every_worker(running: Running) -> None:
    running.until("ready", lambda: running.ready() == (200, "LIVE\n"))
    assert running.admin_call("POST", "/drain_listeners?graceful") == (200, "OK\n")
    assert running.ready() == (503, "DRAINING\n")
    assert [w["state"] for w in running.info()["worker_status"]] == ["DRAINING", "DRAINING"]
    with pytest.raises(ConnectionRefusedError):  # no worker accepts any more
        request(running.port)


@pytest.mark.parametrize("what", ["admin", "sink"])
def test_a_busy_admin_or_sink_port_stops_start_up(tmp_path: Path, what: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        observability = (
            {"admin": {"address": address}}
            if what == "admin"
            else {"metrics": {"sinks": [{"type": "prometheus", "config": {"port": port}}]}}
        )
        p = Proxy(config(tmp_path, observability), "--workers", "2")
        try:
            assert p.finish() == 1
        finally:
            stop(p)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in p.text
    assert "Traceback" not in p.text


@needs_prometheus
async def test_a_real_prometheus_scrapes_the_sum_from_the_admin_port(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    proxy = Proxy(config(tmp_path), "--workers", "2")
    try:
        running = await trio.to_thread.run_sync(Running, proxy)
        await trio.to_thread.run_sync(
            running.until, "ready", lambda: running.ready() == (200, "LIVE\n")
        )
        for _ in range(12):
            await trio.to_thread.run_sync(request, running.port)
        prometheus = await start_prometheus(
            nursery, tmp_path, [f"127.0.0.1:{running.admin}"], metrics_path="/stats/prometheus"
        )
        await prometheus.wait_up()
        await prometheus.wait_value(
            'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"}', 12
        )
        active = await prometheus.query("envoy_listener_downstream_cx_active")
        assert sorted(s["metric"]["worker"] for s in active) == ["0", "1"]
        await prometheus.wait_value("envoy_server_live", 1)  # the minimum: every worker LIVE
    finally:
        await trio.to_thread.run_sync(stop, proxy)


def test_children_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the supervisor (no chance to forward anything): its workers and the admin
    process get SIGTERM from the kernel and exit, freeing the admin port."""
    proxy = Proxy(config(tmp_path), "--workers", "2")
    pids: list[int] = []
    try:
        run = Running(proxy)
        pids = children(proxy.proc.pid)
        assert run.admin_pid in pids and len(pids) == 3
        os.kill(proxy.proc.pid, signal.SIGKILL)
        proxy.proc.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _alive(pid)]
            time.sleep(0.05)  # polling other processes' exit: no event to wait on
        assert alive == []
        with socket.socket() as s:
            s.bind(("127.0.0.1", run.admin))  # the admin port is free again
    finally:
        for pid in pids:  # orphans, should the test fail (they hold the output pipe)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        stop(proxy)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_reload_keeps_admin_on_port_0_and_refuses_moving_it(tmp_path: Path) -> None:
    """SIGHUP to a ``--workers`` proxy: the same file (admin on port 0, which the supervisor
    made a real port) applies; a file that moves the admin API is refused by every worker,
    and the admin API stays where it was."""
    path = config(tmp_path)
    proxy = Proxy(path, "--workers", "2")
    try:
        run = Running(proxy)
        os.kill(proxy.proc.pid, signal.SIGHUP)
        for _ in range(2):
            proxy.wait_for(re.compile(r"configuration reloaded from"))
        moved = {
            "admin": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
            }
        }
        config(tmp_path, moved)
        os.kill(proxy.proc.pid, signal.SIGHUP)
        for _ in range(2):
            proxy.wait_for(re.compile(r"reload refused, configuration kept: admin: cannot change"))
        assert run.ready() == (200, "LIVE\n")
    finally:
        stop(proxy)
