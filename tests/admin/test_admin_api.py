"""The admin API of a real Server in a nursery, with curl: every endpoint, bad input too."""

from __future__ import annotations

import json
import logging
import socket

import attrs
import pytest
import trio

from trio_mesh import Server
from trio_mesh.config import MeshConfig
from trio_mesh.config.observability import AdminConfig
from trio_mesh.config.scalars import Address
from trio_mesh.errors import StartupError

from ..http_helpers import curl, http_config, start_upstream, to


def with_admin(config: MeshConfig, port: int = 0) -> MeshConfig:
    return attrs.evolve(config, admin=AdminConfig(address=Address(host="127.0.0.1", port=port)))


async def start(nursery: trio.Nursery, config: MeshConfig | None = None) -> tuple[Server, str, int]:
    """A proxy with an upstream cluster ``up`` and the admin API; (server, admin URL, proxy
    port)."""
    if config is None:
        upstream = await start_upstream(nursery)
        config = http_config([to("up")], {"up": upstream.port})
    server: Server = await nursery.start(Server(with_admin(config)).run)
    assert server.admin_address is not None
    host, port = server.admin_address
    return server, f"http://{host}:{port}", server.addresses["ingress"][1]


async def fetch(url: str, *args: str) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of one curl request."""
    code, out, err = await curl("-i", *args, url)
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, body, headers


async def test_ready_server_info_and_admin_address(nursery: trio.Nursery) -> None:
    server, url, _ = await start(nursery)
    status, body, headers = await fetch(f"{url}/ready")
    assert (status, body) == (200, b"LIVE\n")
    assert headers["content-type"].startswith("text/plain")
    status, body, _ = await fetch(f"{url}/server_info")
    info = json.loads(body)
    assert status == 200 and info["state"] == "LIVE" and info["version"]
    assert info["listeners"]["ingress"][1] == server.addresses["ingress"][1]
    assert info["uptime_current_epoch"].endswith("s")


async def test_healthcheck_fail_and_ok(nursery: trio.Nursery) -> None:
    server, url, _ = await start(nursery)
    status, _, headers = await fetch(f"{url}/healthcheck/fail")  # GET: refused
    assert status == 405 and headers["allow"] == "POST"
    assert server.health_failed is False
    status, body, _ = await fetch(f"{url}/healthcheck/fail", "-X", "POST")
    assert (status, body) == (200, b"OK\n")
    assert server.health_failed is True
    status, body, _ = await fetch(f"{url}/ready")
    assert (status, body) == (503, b"LIVE\n")
    await fetch(f"{url}/healthcheck/ok", "-X", "POST")
    status, _, _ = await fetch(f"{url}/ready")
    assert status == 200


async def test_health_check_filter_answers_from_server_health(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    config = http_config(
        [to("up")],
        {"up": upstream.port},
        listener={
            "stream_filters": [
                {
                    "type": "health_check",
                    "config": {"headers": [{"name": ":path", "value": "/healthz"}]},
                }
            ]
        },
    )
    _, url, port = await start(nursery, config)
    proxy = f"http://127.0.0.1:{port}"
    status, body, _ = await fetch(f"{proxy}/healthz")
    assert (status, body) == (200, b"")
    assert upstream.requests == []  # answered by the proxy itself
    status, _, _ = await fetch(f"{proxy}/other")
    assert status == 200 and len(upstream.requests) == 1  # other paths go upstream
    await fetch(f"{url}/healthcheck/fail", "-X", "POST")
    status, _, headers = await fetch(f"{proxy}/healthz")
    assert status == 503
    assert headers["x-envoy-immediate-health-check-fail"] == "true"
    await fetch(f"{url}/healthcheck/ok", "-X", "POST")
    status, _, _ = await fetch(f"{proxy}/healthz")
    assert status == 200


def test_health_check_pass_through_is_refused() -> None:
    from trio_mesh.config import ConfigError

    with pytest.raises(ConfigError) as info:
        http_config(
            listener={
                "stream_filters": [
                    {
                        "type": "health_check",
                        "config": {
                            "pass_through_mode": True,
                            "headers": [{"name": ":path", "value": "/healthz"}],
                        },
                    }
                ]
            }
        )
    assert "pass_through_mode" in str(info.value) and "only false" in str(info.value)


async def test_stats_text_json_filter_and_bad_regex(nursery: trio.Nursery) -> None:
    _, url, port = await start(nursery)
    for _ in range(3):
        status, _, _ = await fetch(f"http://127.0.0.1:{port}/x")
        assert status == 200
    status, body, _ = await fetch(f"{url}/stats")
    lines = dict(line.split(": ", 1) for line in body.decode().splitlines())
    assert status == 200
    assert lines["http.ingress.downstream_rq_2xx"] == "3"
    assert lines["cluster.up.upstream_rq_total"] == "3"
    status, body, _ = await fetch(f"{url}/stats?format=json&filter=^cluster%5C.up%5C.")
    doc = json.loads(body)
    names = {s["name"]: s["value"] for s in doc["stats"] if "name" in s}
    assert names and all(n.startswith("cluster.up.") for n in names)
    assert names["cluster.up.upstream_rq_total"] == 3
    assert "histograms" in doc["stats"][-1]
    status, body, _ = await fetch(f"{url}/stats?filter=(")
    assert status == 400 and "regex" in json.loads(body)["error"]
    status, body, _ = await fetch(f"{url}/stats?format=xml")
    assert status == 400


async def test_stats_prometheus(nursery: trio.Nursery) -> None:
    _, url, port = await start(nursery)
    await fetch(f"http://127.0.0.1:{port}/x")
    status, body, headers = await fetch(f"{url}/stats/prometheus")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"envoy_cluster_upstream_rq_total" in body


async def test_clusters_text_and_json(nursery: trio.Nursery) -> None:
    _, url, port = await start(nursery)
    await fetch(f"http://127.0.0.1:{port}/x")
    status, body, _ = await fetch(f"{url}/clusters")
    lines = body.decode().splitlines()
    assert status == 200
    host = next(line.split("::")[1] for line in lines if "::health_flags::" in line)
    assert f"up::{host}::health_flags::healthy" in lines
    assert f"up::{host}::weight::1" in lines
    assert f"up::{host}::rq_total::1" in lines
    assert f"up::{host}::cx_total::1" in lines
    assert "up::added_via_api::false" in lines
    status, body, _ = await fetch(f"{url}/clusters?format=json")
    (cluster,) = json.loads(body)["cluster_statuses"]
    (h,) = cluster["host_statuses"]
    assert h["weight"] == 1 and h["health_status"]["eds_health_status"] == "HEALTHY"
    assert {"name": "rq_total", "type": "COUNTER", "value": 1} in h["stats"]


async def test_logging_levels(nursery: trio.Nursery) -> None:
    _, url, _ = await start(nursery)
    root = logging.getLogger("trio_mesh")
    before = root.level
    try:
        status, _, _ = await fetch(f"{url}/logging?level=debug")  # GET: refused
        assert status == 405
        status, body, _ = await fetch(f"{url}/logging?level=debug", "-X", "POST")
        assert status == 200 and b"trio_mesh: debug" in body
        assert root.getEffectiveLevel() == logging.DEBUG
        status, _, _ = await fetch(f"{url}/logging?trio_mesh.admin=error", "-X", "POST")
        assert logging.getLogger("trio_mesh.admin").getEffectiveLevel() == logging.ERROR
        status, body, _ = await fetch(f"{url}/logging?level=loud", "-X", "POST")
        assert status == 400 and "unknown level" in json.loads(body)["error"]
        status, body, _ = await fetch(f"{url}/logging?no.such.logger=info", "-X", "POST")
        assert status == 404
        # MOSN's API
        status, body, _ = await fetch(f"{url}/api/v1/get_loglevel")
        assert json.loads(body)["trio_mesh.admin"] == "error"
        status, body, _ = await fetch(
            f"{url}/api/v1/update_loglevel",
            "-d",
            json.dumps({"log_path": "trio_mesh.admin", "log_level": "INFO"}),
        )
        assert (status, body) == (200, b"update logger success\n")
        assert logging.getLogger("trio_mesh.admin").getEffectiveLevel() == logging.INFO
        status, body, _ = await fetch(
            f"{url}/api/v1/update_loglevel", "-d", json.dumps({"log_level": "NOPE"})
        )
        assert status == 400 and json.loads(body) == {"error": "update logger failed"}
        status, _, _ = await fetch(f"{url}/api/v1/update_loglevel", "-d", "not json")
        assert status == 400
        status, body, _ = await fetch(f"{url}/api/v1/disable_log", "-d", "trio_mesh.admin")
        assert (status, body) == (200, b"disable logger success\n")
        assert logging.getLogger("trio_mesh.admin").disabled
        status, body, _ = await fetch(f"{url}/api/v1/enable_log", "-d", "trio_mesh.admin")
        assert status == 200 and not logging.getLogger("trio_mesh.admin").disabled
        status, body, _ = await fetch(f"{url}/api/v1/enable_log", "-d", "nope")
        assert status == 400 and json.loads(body) == {"error": "enable logger failed"}
    finally:
        root.setLevel(before)
        logging.getLogger("trio_mesh.admin").setLevel(logging.NOTSET)


async def test_mosn_endpoints(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    _, url, port = await start(nursery)
    await fetch(f"http://127.0.0.1:{port}/x")
    status, body, _ = await fetch(f"{url}/api/v1/version")
    assert status == 200 and body.startswith(b"trio-mesh version: ")
    status, body, _ = await fetch(f"{url}/api/v1/states")
    assert body.decode().startswith("pid=") and body.decode().endswith("&state=6\n")
    status, body, _ = await fetch(f"{url}/api/v1/stats")
    doc = json.loads(body)
    assert doc["cluster"]["envoy_cluster_name.up"]["upstream_rq_total"] == "1"
    status, body, _ = await fetch(f"{url}/api/v1/stats?key=cluster")
    assert set(json.loads(body)) == {"cluster"}
    status, body, _ = await fetch(f"{url}/api/v1/stats?key=nothing")
    assert body == b"no metrics key: nothing"
    status, body, _ = await fetch(f"{url}/api/v1/stats?a=1&b=2")
    assert status == 400
    status, body, _ = await fetch(f"{url}/api/v1/stats_glob")
    totals = dict(line.split(":") for line in body.decode().splitlines())
    assert totals["downstream_rq_total"] == "1"
    status, body, _ = await fetch(f"{url}/api/v1/features")
    assert json.loads(body)["admin_api"] is True
    status, body, _ = await fetch(f"{url}/api/v1/features?key=admin_api")
    assert body == b"true"
    monkeypatch.setenv("TM_PLAIN", "visible")
    monkeypatch.setenv("TM_DB_PASSWORD", "hunter2")
    status, body, _ = await fetch(f"{url}/api/v1/env?key=TM_PLAIN&key=TM_DB_PASSWORD&key=TM_NONE")
    assert json.loads(body) == {
        "env": {"TM_PLAIN": "visible", "TM_DB_PASSWORD": "[redacted]"},
        "not_found": ["TM_NONE"],
    }
    status, body, _ = await fetch(f"{url}/api/v1/env")
    assert status == 400 and json.loads(body) == {"error": "no env key"}


def _secret_config() -> MeshConfig:
    bearer = {"header": {"key": "authorization", "value": "Bearer s3cret"}}
    return http_config([to("up")], {"up": 1}, router_extra={"request_headers_to_add": [bearer]})


async def test_config_dump_redacts_secrets(nursery: trio.Nursery) -> None:
    _, url, _ = await start(nursery, _secret_config())
    status, body, _ = await fetch(f"{url}/api/v1/config_dump")
    assert status == 200
    assert b"s3cret" not in body
    assert b"[redacted]" in body
    doc = json.loads(body)
    assert doc["config"]["cluster_manager"]["clusters"][0]["name"] == "up"
    status, body, _ = await fetch(f"{url}/api/v1/config_dump?allclusters")
    assert list(json.loads(body)) == ["up"]
    status, body, _ = await fetch(f"{url}/api/v1/config_dump?listener=ingress")
    assert json.loads(body)["name"] == "ingress"
    status, body, _ = await fetch(f"{url}/api/v1/config_dump?listener=nope")
    assert status == 404
    status, body, _ = await fetch(f"{url}/api/v1/config_dump?mosnconfig&allrouters")
    assert (status, body) == (400, b"only support one parameter")
    status, body, _ = await fetch(f"{url}/api/v1/config_dump?bogus")
    assert status == 400


def test_redaction_rules() -> None:
    from trio_mesh.admin.redact import redact

    pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    doc = {
        "tls": {"private_key": "/etc/key.pem", "cert_chain": "/etc/cert.pem", "ca": pem},
        "zk": {"password": "pw", "max_tokens": 5, "token_bucket": {"tokens": 1}},
        "headers": [{"name": "Cookie", "value": "a=b"}, {"name": "x", "value": "y"}],
        "auth": {"privateKey": {"inline": "x"}, "X-Api-Key": "k", "GITHUB_TOKEN": "t"},
        "url": "https://user:pw@example.com/x",
    }
    assert redact(doc) == {
        "tls": {"private_key": "[redacted]", "cert_chain": "/etc/cert.pem", "ca": "[redacted]"},
        "zk": {"password": "[redacted]", "max_tokens": 5, "token_bucket": {"tokens": 1}},
        "headers": [{"name": "Cookie", "value": "[redacted]"}, {"name": "x", "value": "y"}],
        "auth": {
            "privateKey": "[redacted]",
            "X-Api-Key": "[redacted]",
            "GITHUB_TOKEN": "[redacted]",
        },
        "url": "https://user:[redacted]@example.com/x",
    }


async def test_bad_inputs(nursery: trio.Nursery) -> None:
    _, url, _ = await start(nursery)
    status, body, _ = await fetch(f"{url}/no/such/path")
    assert status == 404 and "error" in json.loads(body)
    status, body, headers = await fetch(f"{url}/ready", "-X", "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, body, _ = await fetch(f"{url}/api/v1/update_loglevel", "-d", "x" * 100_000)
    assert status == 413 and "error" in json.loads(body)
    status, body, _ = await fetch(f"{url}/ready", "-H", "x-huge: " + "a" * 20_000)
    assert status == 431
    status, body, _ = await fetch(f"{url}/drain_listeners?bogus", "-X", "POST")
    assert status == 400
    # Still serving.
    status, _, _ = await fetch(f"{url}/ready")
    assert status == 200


async def test_many_connections_are_bounded_and_slowloris_blocks_no_one(
    nursery: trio.Nursery,
) -> None:
    _, url, _ = await start(nursery)
    port = int(url.rsplit(":", 1)[1])
    held = []
    try:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /ready HTTP/1.1\r\nHost: a\r\n")  # and never more
        held.append(slow)
        status, _, _ = await fetch(f"{url}/ready")
        assert status == 200
        for _ in range(1000):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            held.append(s)
        # Over the limit, connections get 503 and are closed: the process holds a bounded
        # number of connection tasks.
        statuses = set()
        with trio.fail_after(20):
            for _ in range(3):
                _, out, _ = await curl("-o", "/dev/null", "-w", "%{http_code}", f"{url}/ready")
                statuses.add(out)
        assert statuses == {b"503"}
    finally:
        for s in held:
            s.close()
    # Once they are gone, it answers again.
    with trio.fail_after(20):
        while True:
            status, _, _ = await fetch(f"{url}/ready")
            if status == 200:
                break
            await trio.sleep(0.05)


async def test_drain_listeners_graceful(nursery: trio.Nursery) -> None:
    server, url, port = await start(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    with trio.fail_after(5):
        first = await stream.receive_some(65536)
    assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
    status, _, _ = await fetch(f"{url}/drain_listeners?graceful", "-X", "POST")
    assert status == 200
    assert server.state == "DRAINING"
    # The keep-alive connection accepted before is closed (idle between requests).
    with trio.fail_after(5):
        assert await stream.receive_some(65536) == b""
    await stream.aclose()
    status, body, _ = await fetch(f"{url}/ready")
    assert (status, body) == (503, b"DRAINING\n")
    code, _, _ = await curl(f"http://127.0.0.1:{port}/x", timeout=3)
    assert code == 7  # connection refused: the listener no longer accepts


async def test_drain_listeners_not_graceful_keeps_open_connections(nursery: trio.Nursery) -> None:
    server, url, port = await start(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    status, _, _ = await fetch(f"{url}/drain_listeners", "-X", "POST")
    assert status == 200 and server.state == "LIVE"
    code, _, _ = await curl(f"http://127.0.0.1:{port}/x", timeout=3)
    assert code == 7
    # The connection accepted before goes on serving.
    await stream.send_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    with trio.fail_after(5):
        data = await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 200")
    await stream.aclose()
    status, _, _ = await fetch(f"{url}/drain_listeners?inboundonly", "-X", "POST")
    assert status == 200


async def test_busy_admin_port_is_a_startup_error(nursery: trio.Nursery) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        config = with_admin(http_config(), port)
        with pytest.raises(StartupError, match=r"^admin\.address: cannot listen"):
            await nursery.start(Server(config).run)
    finally:
        busy.close()


async def test_no_admin_when_not_configured_or_serve_admin_false(nursery: trio.Nursery) -> None:
    server = await nursery.start(Server(http_config()).run)
    assert server.admin_address is None
    server = await nursery.start(Server(with_admin(http_config()), serve_admin=False).run)
    assert server.admin_address is None


async def test_a_reload_changing_admin_is_refused_whole(nursery: trio.Nursery) -> None:
    # Moving or removing the admin API (say, to close it) cannot be left undone with a
    # warning: the reload is refused, the rest of it too, and the admin API stays as it was.
    server, url, _ = await start(nursery, with_admin(http_config()))
    before = server.config
    moved = attrs.evolve(server.config, admin=AdminConfig(address=Address("127.0.0.1", 1)))
    renamed = moved.servers[0].listeners[0]
    renamed = attrs.evolve(renamed, name="other")
    moved = attrs.evolve(moved, servers=[attrs.evolve(moved.servers[0], listeners=[renamed])])
    for changed in (moved, attrs.evolve(server.config, admin=None)):
        with pytest.raises(StartupError, match=r"^admin: cannot change"):
            await server.apply(changed)
        assert server.config is before and set(server.listeners) == {"ingress"}
    await server.apply(before)  # the same admin block: applied
    status, _, _ = await fetch(f"{url}/ready")
    assert status == 200


async def test_health_check_filter_on_a_plain_header(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    matcher = {"name": "user-agent", "value": "ELB-HealthChecker/2.0"}
    config = http_config(
        [to("up")],
        {"up": upstream.port},
        listener={"stream_filters": [{"type": "health_check", "config": {"headers": [matcher]}}]},
    )
    server, _, port = await start(nursery, config)
    proxy = f"http://127.0.0.1:{port}/any"
    status, _, _ = await fetch(proxy, "-A", "ELB-HealthChecker/2.0")
    assert status == 200 and upstream.requests == []
    status, _, _ = await fetch(proxy, "-A", "curl")
    assert status == 200 and len(upstream.requests) == 1
    # Draining (the state alone here, so that the listener still accepts): checks fail.
    server.state = "DRAINING"
    status, _, _ = await fetch(proxy, "-A", "ELB-HealthChecker/2.0")
    assert status == 503
