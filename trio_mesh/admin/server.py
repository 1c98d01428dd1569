"""The admin API's listener: bound with the proxy's listeners, served in its nursery."""

from __future__ import annotations

import functools
import logging
import socket

import trio

from ..config.observability import AdminConfig
from ..config.scalars import format_hostport
from ..errors import StartupError
from ..network.http_server import HttpLimits, serve_http
from ..network.listener import BindError, bind
from .app import AdminApp
from .target import AdminTarget

log = logging.getLogger("trio_mesh.admin")


async def bind_admin(config: AdminConfig) -> socket.socket:
    """The admin API's listening socket; a ``StartupError`` naming ``admin.address`` when
    the address cannot be bound (a busy port stops start-up before anything serves)."""
    try:
        return await bind("admin", config.address)
    except BindError as exc:
        reason = str(exc).partition(": ")[2] or str(exc)
        raise StartupError(f"admin.address: cannot listen on {config.address}: {reason}") from None


async def run_admin(
    config: AdminConfig,
    target: AdminTarget,
    *,
    sock: socket.socket | None = None,
    limits: HttpLimits | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin API until cancelled; ``task_status`` gets the bound ``(host, port)``.
    ``sock``: one ``bind_admin`` made already (else it is bound here)."""
    if sock is None:
        sock = await bind_admin(config)
    host, port = sock.getsockname()[:2]
    # On loopback (the default), only loopback names: a web page that points its own name
    # at 127.0.0.1 (DNS rebinding) cannot read config_dump or env.
    app = AdminApp(target, loopback_names_only=not config.allow_non_loopback)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(serve_http, sock, app.handle, name="admin", limits=limits)
        )
        log.info("admin API listening on %s", format_hostport(host, port))
        task_status.started((host, port))
