"""gRPC health checks (grpc.health.v1.Health/Check) against a real grpcio server: its
service statuses decide, an unknown service (NOT_FOUND) fails."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import trio

from trio_mesh.upstream.host import Host

from ..http_helpers import http_config, start_proxy, to

SERVING, NOT_SERVING = 1, 2
#: The statuses the server answers, by service name (grpcio's health servicer's shape).
STATUSES = {"": SERVING, "svc.ok": SERVING, "svc.down": NOT_SERVING}
CHECKS: Counter[str] = Counter()  # calls by service (grpcio's threads; += under the GIL)


def _check(request: bytes, context: grpc.ServicerContext) -> bytes:
    # HealthCheckRequest: field 1 (service), length-delimited; short names only here.
    service = request[2 : 2 + request[1]].decode() if request[:1] == b"\x0a" else ""
    CHECKS[service] += 1
    if service not in STATUSES:
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return bytes([0x08, STATUSES[service]])  # HealthCheckResponse.status


@pytest.fixture
def health_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(_check)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait()


def cluster(port: int, service: str) -> dict[str, Any]:
    return {
        "name": service.replace(".", "_") or "whole",
        "connect_timeout": "1s",
        "hosts": [{"address": f"127.0.0.1:{port}"}],
        "health_check": {
            "protocol": "grpc",
            "timeout": "2s",
            "interval": "100ms",
            "unhealthy_threshold": 1,
            "service_name": service,
        },
    }


async def test_grpc_serving_status_decides(nursery: trio.Nursery, health_server: int) -> None:
    names = ["", "svc.ok", "svc.down", "svc.unknown"]
    clusters = [cluster(health_server, n) for n in names]
    server, _ = await start_proxy(nursery, http_config([to("whole")], clusters))
    hosts: dict[str, Host] = {c["name"]: server.clusters.get(c["name"]).hosts[0] for c in clusters}
    CHECKS.clear()
    with trio.fail_after(10):
        while not (
            hosts["svc_down"].failed_active_hc
            and hosts["svc_unknown"].failed_active_hc
            and CHECKS["svc.ok"] >= 3
            and CHECKS[""] >= 3
        ):
            await trio.sleep(0.02)
    # The serving ones passed several rounds meanwhile and were never taken out.
    assert hosts["whole"].usable and hosts["svc_ok"].usable
