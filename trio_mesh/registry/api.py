"""MOSN's dubbod HTTP API: ``POST /pub``, ``/unpub``, ``/sub``, ``/unsub`` with MOSN's
request and response shapes (``{"err_no": 0|1, "err_msg": "..."}``), and ``GET /`` (also
``/pub`` and ``/sub``) listing what is published and subscribed (beyond MOSN).

Status codes beyond MOSN's always-200: 400 for a request that does not parse (the message
names the field), 409 for one the state refuses (unpublishing what is not published), 503
when the registry does not answer within ``registry_timeout``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..config.registry import DubboRegistryConfig
from ..config.scalars import Address, format_hostport
from ..errors import StartupError
from ..network.http_server import (
    HttpLimits,
    HttpRequest,
    HttpResponse,
    from_another_site,
    json_error,
    loopback_host,
    serve_http,
)
from ..network.listener import BindError, bind
from .backend import RegistryUnavailable
from .request import RegistryRequest, RequestError, parse_request
from .runtime import Refused, RegistryRuntime

log = logging.getLogger("trio_mesh.registry")

# MOSN's words in its err_msg ("publish fail, err: ...").
_VERBS = {"/pub": "publish", "/unpub": "unpub", "/sub": "subscribe", "/unsub": "unsubscribe"}


def _answer(status: int, err_no: int, message: str) -> HttpResponse:
    body = json.dumps({"err_no": err_no, "err_msg": message}).encode() + b"\n"
    return HttpResponse(status, body)


class RegistryApp:
    def __init__(self, runtime: RegistryRuntime, *, loopback_names_only: bool) -> None:
        self.runtime = runtime
        #: On loopback (the default), refuse a ``Host`` that is not a loopback name: a web
        #: page that points its own name at 127.0.0.1 must not publish services.
        self.loopback_names_only = loopback_names_only
        self.actions: dict[str, Callable[[RegistryRequest], Awaitable[str]]] = {
            "/pub": runtime.publish,
            "/unpub": runtime.unpublish,
            "/sub": runtime.subscribe,
            "/unsub": runtime.unsubscribe,
        }

    async def handle(self, req: HttpRequest) -> HttpResponse:
        path = req.path.rstrip("/") or "/"
        if path not in self.actions and path != "/":
            return json_error(404, f"unknown path {req.path!r}: POST /pub, /unpub, /sub, /unsub")
        changes = req.method not in ("GET", "HEAD")
        if from_another_site(req, changes):
            return json_error(403, "the registry API does not answer requests from web pages")
        if self.loopback_names_only and not loopback_host(req.headers.get("host")):
            return json_error(403, "the registry API answers loopback names only (Host)")
        if req.method in ("GET", "HEAD"):
            return self._status(path)
        if req.method != "POST" or path == "/":
            allow = "GET, HEAD" if path == "/" else "GET, HEAD, POST"
            response = json_error(405, f"{path} takes {allow}")
            return HttpResponse(405, response.body, headers=(("allow", allow),))
        verb = _VERBS[path]
        kind = path[1:]
        try:
            request = parse_request(req.body, kind=kind)  # type: ignore[arg-type]
        except RequestError as exc:
            return _answer(400, 1, f"{verb} fail, err: {exc}")
        try:
            message = await self.actions[path](request)
        except RequestError as exc:  # a check that needs the running state
            return _answer(400, 1, f"{verb} fail, err: {exc}")
        except Refused as exc:
            return _answer(409, 1, f"{verb} fail, err: {exc}")
        except RegistryUnavailable as exc:
            log.warning("%s %s: %s", path, request.service.interface, exc)
            return _answer(503, 1, f"{verb} fail, err: {exc}")
        return _answer(200, 0, message)

    def _status(self, path: str) -> HttpResponse:
        status: dict[str, Any] = self.runtime.status()
        if path in ("/pub", "/unpub"):
            status = {"publications": status["publications"]}
        elif path in ("/sub", "/unsub"):
            status = {"subscriptions": status["subscriptions"]}
        return HttpResponse(200, json.dumps(status, indent=2).encode() + b"\n")


async def run_registry(
    runtime: RegistryRuntime,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the registry service and serve its API on ``sock`` (bound with the listeners)
    until cancelled; ``task_status`` gets the API's bound ``(host, port)``."""
    host, port = sock.getsockname()[:2]
    app = RegistryApp(runtime, loopback_names_only=not runtime.config.allow_non_loopback)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            # A request makes at most four registry calls, each bounded by registry_timeout,
            # then a swap: never cut short by the server's own deadline first (a 504).
            limits = HttpLimits(handler_timeout=4 * float(runtime.config.registry_timeout) + 30)
            serve = functools.partial(serve_http, sock, app.handle, name="registry", limits=limits)
            await nursery.start(serve)
            runtime.address = (host, port)
            log.info("registry API (pub/sub) listening on %s", format_hostport(host, port))
            task_status.started((host, port))
    finally:
        runtime.address = None


async def bind_api(config: DubboRegistryConfig) -> socket.socket:
    """The API's listening socket, bound with the proxy's listeners: a busy port stops
    start-up before anything serves."""
    address = Address(config.api_host, config.api_port)
    try:
        return await bind("registry", address)
    except BindError as exc:
        reason = str(exc).partition(": ")[2] or str(exc)
        raise StartupError(
            f"extends: dubbo_registry api_port: cannot listen on {address}: {reason}"
        ) from None


async def open_log(config: DubboRegistryConfig) -> logging.Handler | None:
    """MOSN's ``log_path``: the registry's events also go to ``<log_path>/dubbo.log``
    (opened in a thread, before anything serves: a path that cannot be written stops
    start-up)."""
    if not config.log_path:
        return None
    path = os.path.join(config.log_path, "dubbo.log")
    try:
        handler = await trio.to_thread.run_sync(logging.FileHandler, path)
    except OSError as exc:
        raise StartupError(
            f"extends: dubbo_registry log_path: cannot open {path}: {exc.strerror}"
        ) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("trio_mesh.registry").addHandler(handler)
    return handler
