"""MOSN's prometheus metrics sink: the Prometheus exposition on its own port.

``GET <endpoint>`` (``/metrics``) answers ``render`` of the metrics read at that moment, in
the format the ``Accept`` header negotiates; any other path is 404, any other method 405.
The server is the admin API's (``network.http_server.serve_http``): bounded heads, bodies, time and
connections.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from ..config.observability import PrometheusSinkConfig
from ..config.scalars import Address
from ..network.http_server import HttpRequest, HttpResponse, json_error, serve_http
from ..network.listener import bind
from .model import Metric
from .prometheus import render

MetricsSource = Callable[[], Awaitable[list[Metric]]]


def sink_handler(
    endpoint: str, metrics: MetricsSource
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    async def handle(request: HttpRequest) -> HttpResponse:
        if request.path != endpoint:
            return json_error(404, f"not found; the metrics are at {endpoint}")
        if request.method not in ("GET", "HEAD"):
            response = json_error(405, "method not allowed")
            return HttpResponse(405, response.body, headers=(("allow", "GET, HEAD"),))
        content_type, body = render(await metrics(), request.headers.get("accept"))
        return HttpResponse(200, body, content_type)

    return handle


async def run_prometheus_sink(
    sink: PrometheusSinkConfig,
    metrics: MetricsSource,
    *,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the sink until cancelled; reports the bound ``(host, port)`` (port 0 allowed).
    ``sock``: its listening socket, handed over (a hot upgrade), else bound here."""
    if sock is None:
        sock = await bind("prometheus sink", Address(sink.address, sink.port))
    try:
        host, port = sock.getsockname()[:2]
        handler = sink_handler(sink.endpoint, metrics)
        name = f"prometheus sink {host}:{port}"
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_http, sock, handler, name=name))
            task_status.started((host, port))
    finally:
        sock.close()  # serve_http closes it too, unless cancelled before it began
