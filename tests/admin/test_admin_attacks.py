"""The admin API attacked: inputs meant to stall, leak or confuse it (each one a finding
that once got through)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import attrs
import pytest
import trio

from trio_mesh.admin.stat_filter import FilterError, compile_filter
from trio_mesh.config import MeshConfig
from trio_mesh.config.tracing import TracingConfig

from ..http_helpers import http_config, start_upstream, to
from .test_admin_api import fetch, start


@pytest.mark.parametrize(
    "pattern",
    [
        "(.*.*)*X",  # minutes on one 22-character name with Python's re
        "(a+)+$",
        "(x|x.)*Y",
        "(.)\\1",
        ".*.*.*.*X",  # polynomial, but n**5 per name
        "(.{1,50}){1,50}X",
        ".{0,32}.{0,32}.{0,32}.{0,32}.{0,32}X",  # bounded, but 32**5 steps per name
        "(.|.)" * 25 + "X",  # no repetition, but 2**25 paths
        "a?" * 40 + "X",
    ],
)
def test_catastrophic_filter_is_refused(pattern: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "upstream_rq",
        "^cluster\\..*\\.upstream_.*total$",
        "(rq|cx)_active",
        "a{2,5}",
        "x{3}" * 9,
        "^(http|rpc|cluster)\\.(a|b)\\..*_(rq|cx)_.*",
    ],
)
def test_usual_filters_pass(pattern: str) -> None:
    assert compile_filter(pattern).pattern == pattern


async def test_stats_filter_redos_does_not_stall_the_proxy(nursery: trio.Nursery) -> None:
    _, url, port = await start(nursery)
    await fetch(f"http://127.0.0.1:{port}/x")
    # ``(.*.*)*X`` would freeze the event loop for minutes before the fix; these two are
    # of the same kinds, harmless on these short names, and refused all the same.
    for pattern in ("(a+)+$", ".*.*.*.*X"):
        status, body, _ = await fetch(f"{url}/stats?filter={quote(pattern, safe='')}")
        assert status == 400 and "repetition" in json.loads(body)["error"]
    good = quote("^cluster\\..*\\.upstream_.*total$", safe="")
    status, body, _ = await fetch(f"{url}/stats?filter={good}")
    lines = body.decode().splitlines()
    assert status == 200 and "cluster.up.upstream_rq_total: 1" in lines
    assert all(line.startswith("cluster.") for line in lines)


@pytest.mark.parametrize(
    "name",
    [
        "SECRET_KEY_BASE",
        "GITHUB_TOKEN_V2",
        "MYSQL_PWD",
        "SSH_KEY",
        "API_KEY_ID",
        "SIGNING_KEY",
        # the OTLP exporter's own credentials (``authorization=Bearer ...``), and their kin
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "UPSTREAM_AUTHORIZATION",
        "SESSION_COOKIE",
        "AZURE_STORAGE_CONNECTION_STRING",
    ],
)
async def test_env_hides_secret_looking_names(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _, url, _ = await start(nursery)
    monkeypatch.setenv(name, "hunter2")
    status, body, _ = await fetch(f"{url}/api/v1/env?key={name}")
    assert status == 200 and json.loads(body) == {"env": {name: "[redacted]"}}


async def test_env_hides_url_passwords_and_inline_keys(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url, _ = await start(nursery)
    monkeypatch.setenv("TM_DATABASE_URL", "postgres://app:hunter2@db:5432/app")
    monkeypatch.setenv("TM_CACHE", "redis://:hunter2@cache:6379/0")
    monkeypatch.setenv("TM_TLS", "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----")
    monkeypatch.setenv("TM_KEYBOARD_LAYOUT", "us")  # KEY only as a word
    status, body, _ = await fetch(
        f"{url}/api/v1/env?key=TM_DATABASE_URL&key=TM_CACHE&key=TM_TLS&key=TM_KEYBOARD_LAYOUT"
    )
    assert status == 200 and b"hunter2" not in body and b"MIIE" not in body
    assert json.loads(body)["env"] == {
        "TM_DATABASE_URL": "postgres://app:[redacted]@db:5432/app",
        "TM_CACHE": "redis://:[redacted]@cache:6379/0",
        "TM_TLS": "[redacted]",
        "TM_KEYBOARD_LAYOUT": "us",
    }


def test_config_dump_url_password_with_at_sign() -> None:
    from trio_mesh.admin.redact import redact

    doc = {"a": "http://user:p@ss@host/x", "b": "see http://h:8080/x and x@y"}
    assert redact(doc) == {"a": "http://user:[redacted]@host/x", "b": doc["b"]}


def _with_second_listener(config: MeshConfig) -> MeshConfig:
    server = config.servers[0]
    second = attrs.evolve(server.listeners[0], name="second")
    servers = (attrs.evolve(server, listeners=(*server.listeners, second)),)
    return attrs.evolve(config, servers=servers)


@pytest.mark.parametrize("query", ["", "?graceful"])
async def test_reload_after_drain_listeners_starts_no_listener(
    nursery: trio.Nursery, query: str
) -> None:
    """Envoy refuses to add listeners once they were stopped: a reload or an xDS update
    after ``/drain_listeners`` must not open a port the operator just drained."""
    server, url, port = await start(nursery)
    status, _, _ = await fetch(f"{url}/drain_listeners{query}", "-X", "POST")
    assert status == 200
    await server.apply(_with_second_listener(server.config))
    assert "second" not in server.addresses
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    status, _, _ = await fetch(f"{url}/drain_listeners{query}", "-X", "POST")  # twice
    assert status == 200
    status, _, _ = await fetch(f"{url}/ready")
    assert status == (503 if query else 200)


async def test_web_pages_cannot_drive_the_admin_api(nursery: trio.Nursery) -> None:
    """CSRF: any web page can make a browser POST a form to 127.0.0.1:<admin>."""
    server, url, _ = await start(nursery)
    for header in ("Origin: http://evil.example", "Origin: null", "Sec-Fetch-Site: cross-site"):
        status, body, _ = await fetch(f"{url}/healthcheck/fail", "-X", "POST", "-H", header)
        assert status == 403 and "web pages" in json.loads(body)["error"]
        assert server.health_failed is False
    status, _, _ = await fetch(f"{url}/api/v1/env?key=PATH", "-H", "Sec-Fetch-Site: same-site")
    assert status == 403
    # curl, Prometheus, and a page served by the admin address itself are answered.
    status, _, _ = await fetch(f"{url}/stats", "-H", "Origin: http://evil.example")
    assert status == 200  # a read: the browser's same-origin policy keeps it from the page
    host = url.removeprefix("http://")
    status, _, _ = await fetch(
        f"{url}/healthcheck/fail", "-X", "POST", "-H", f"Origin: http://{host}"
    )
    assert status == 200 and server.health_failed is True
    status, _, _ = await fetch(f"{url}/healthcheck/ok", "-X", "POST")
    assert status == 200 and server.health_failed is False


async def test_update_loglevel_deeply_nested_json_is_400(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, url, _ = await start(nursery)
    for body in ("[" * 60000, '{"log_level": ' * 4000):  # under the 64 KiB body limit
        (tmp_path / "body").write_text(body)
        status, out, _ = await fetch(
            f"{url}/api/v1/update_loglevel", "--data-binary", f"@{tmp_path / 'body'}"
        )
        assert (status, json.loads(out)) == (400, {"error": "update logger failed"})


async def test_config_dump_hides_exporter_headers_and_url_tokens(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    provider = {
        "enable": True,
        "driver": "opentelemetry",
        "config": {
            "endpoint": "http://127.0.0.1:9/v1/traces",
            "random_sampling": 0,
            "headers": {"x-honeycomb-team": "SEKRIT1", "uptrace-dsn": "SEKRIT2"},
        },
    }
    config = http_config(
        [to("up")], {"up": upstream.port}, proxy={"tracing": {"provider": provider}}
    )
    config = attrs.evolve(
        config,
        tracing=TracingConfig(
            enable=True,
            driver="opentelemetry",
            config={
                "endpoint": "https://SEKRIT3@collector.example/v1/traces",
                "random_sampling": 0,
                "headers": {"x-scope-orgid": "SEKRIT4"},
            },
        ),
    )
    _, url, _ = await start(nursery, config)
    status, body, _ = await fetch(f"{url}/api/v1/config_dump")
    assert status == 200 and b"SEKRIT" not in body, body
    dump = json.loads(body)
    assert dump["config"]["tracing"]["config"]["headers"] == {"x-scope-orgid": "[redacted]"}
    assert dump["config"]["tracing"]["config"]["endpoint"] == (
        "https://[redacted]@collector.example/v1/traces"
    )


async def test_dns_rebinding_a_foreign_host_name_is_refused(nursery: trio.Nursery) -> None:
    """A web page whose own name was made to resolve to 127.0.0.1 reads the admin API with its
    name in ``Host``: a loopback-only admin answers loopback names only."""
    _, url, _ = await start(nursery)
    port = url.rsplit(":", 1)[1]
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io"):
        status, body, _ = await fetch(f"{url}/api/v1/config_dump", "-H", f"Host: {host}")
        assert status == 403, host
        assert b"loopback" in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "LOCALHOST", "127.1.2.3"):
        status, _, _ = await fetch(f"{url}/ready", "-H", f"Host: {host}")
        assert status == 200, host
