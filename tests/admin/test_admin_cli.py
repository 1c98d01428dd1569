"""``trio-mesh run`` with an admin block, as a subprocess: readiness through a SIGTERM drain,
health-check failing, and config errors for an admin API off loopback."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import trio

from ..cli_helpers import Proxy, run_cli, write_config
from ..http_helpers import curl, gated_upstream

ADMIN = re.compile(r"admin API listening on 127\.0\.0\.1:(?P<port>\d+)$")


def doc(upstream: int, admin: Any) -> dict[str, Any]:
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
                        "stream_filters": [
                            {
                                "type": "health_check",
                                "config": {"headers": [{"name": ":path", "value": "/healthz"}]},
                            }
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "v",
                                "domains": ["*"],
                                "routers": [
                                    {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [{"name": "up", "hosts": [{"address": f"127.0.0.1:{upstream}"}]}]
        },
        "admin": admin,
    }


async def status_of(url: str, *args: str) -> tuple[int, bytes]:
    code, out, err = await curl("-w", "\n%{http_code}", *args, url)
    assert code == 0, err
    body, _, status = out.rpartition(b"\n")
    return int(status), body


async def test_ready_health_and_sigterm_drain(nursery: trio.Nursery, tmp_path: Path) -> None:
    up, arrived, release = await gated_upstream(nursery)
    admin = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    proxy = Proxy(write_config(tmp_path, doc(up, admin)), "--drain-timeout", "10")
    try:
        ports = await trio.to_thread.run_sync(proxy.ready)
        match = next(m for line in proxy.lines if (m := ADMIN.search(line)))
        admin_url = f"http://127.0.0.1:{match['port']}"
        proxy_url = f"http://127.0.0.1:{ports['ingress']}"

        assert await status_of(f"{admin_url}/ready") == (200, b"LIVE\n")
        assert (await status_of(f"{proxy_url}/healthz"))[0] == 200

        # /healthcheck/fail: readiness and the proxy's own health-check answers fail.
        assert (await status_of(f"{admin_url}/healthcheck/fail", "-X", "POST"))[0] == 200
        assert await status_of(f"{admin_url}/ready") == (503, b"LIVE\n")
        assert (await status_of(f"{proxy_url}/healthz"))[0] == 503
        assert (await status_of(f"{admin_url}/healthcheck/ok", "-X", "POST"))[0] == 200
        assert (await status_of(f"{admin_url}/ready"))[0] == 200
        assert (await status_of(f"{proxy_url}/healthz"))[0] == 200

        # A request in flight to a slow upstream, then SIGTERM: while it drains, /ready
        # says DRAINING with a 503 and the health check fails.
        in_flight: list[tuple[int, bytes]] = []

        async def slow_request() -> None:
            in_flight.append(await status_of(f"{proxy_url}/wait"))

        nursery.start_soon(slow_request)
        with trio.fail_after(10):
            await arrived.wait()
        proxy.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            while (got := await status_of(f"{admin_url}/ready")) != (503, b"DRAINING\n"):
                assert got == (200, b"LIVE\n"), got  # the signal is not handled yet
                await trio.sleep(0.02)
        release.set()
        with trio.fail_after(10):
            while not in_flight:
                await trio.sleep(0.02)
        assert in_flight == [(200, b"ok")]
        assert await trio.to_thread.run_sync(proxy.finish) == 0
    finally:
        proxy.kill()


def test_non_loopback_admin_is_a_config_error(tmp_path: Path) -> None:
    admin = {"address": {"socket_address": {"address": "0.0.0.0", "port_value": 34901}}}
    path = str(write_config(tmp_path, doc(1, admin)))
    for command in ("validate", "run"):  # run refuses before binding anything
        result = run_cli(command, path)
        assert result.returncode == 1
        output = result.stdout + result.stderr
        assert "admin.address: 0.0.0.0:34901 is not a loopback address" in output
        assert "admin.allow_non_loopback: true" in output
    admin["allow_non_loopback"] = True
    result = run_cli("validate", str(write_config(tmp_path, doc(1, admin))))
    assert result.returncode == 0, result.stderr
