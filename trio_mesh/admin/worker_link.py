"""A worker's end of the control link: connect to the admin process, answer its calls.

Runs in each worker's nursery under ``--workers N`` when an admin process serves the admin
port. The link connects (retrying with back-off while the admin process is not there, and
again after it restarts), says hello with the worker's slot, then answers each request by
calling the same-named method of the worker's target (``LocalTarget``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

from ..metrics.model import to_json
from ..network.throttled_log import ThrottledLog
from .wire import MAX_REQUEST, LineChannel, WireError

log = logging.getLogger("trio_mesh.admin.worker_link")

#: The calls a worker answers: ``AdminTarget``'s methods, and nothing else.
OPS = frozenset(
    {
        "metrics",
        "clusters",
        "config_dump",
        "server_info",
        "set_health_failed",
        "drain_listeners",
        "set_log_level",
        "log_levels",
        "set_logger_enabled",
    }
)
#: Requests answered at once; more wait in the socket (the admin process sends few).
MAX_IN_FLIGHT = 8
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


async def run_worker_link(
    path: str,
    slot: int,
    target: Any,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep a link to the admin process listening on ``path``, for as long as this runs."""
    task_status.started()
    lost = ThrottledLog(log, 5.0)
    backoff = BACKOFF_MIN
    while True:
        try:
            stream = await trio.open_unix_socket(path)
        except OSError as exc:
            lost.log(logging.DEBUG, "worker %d: admin link: %s; retrying", slot, exc)
        else:
            backoff = BACKOFF_MIN
            async with stream:
                reason = await _serve(LineChannel(stream, MAX_REQUEST), slot, target)
            lost.log(logging.WARNING, "worker %d: admin link lost: %s; reconnecting", slot, reason)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)


async def _serve(channel: LineChannel, slot: int, target: Any) -> str:
    """Answer requests until the link breaks; why it did."""
    in_flight = trio.Semaphore(MAX_IN_FLIGHT)
    async with trio.open_nursery() as nursery:
        try:
            await channel.send({"hello": slot, "pid": os.getpid()})
            while True:
                request = await channel.receive()
                await in_flight.acquire()
                nursery.start_soon(_answer_one, channel, target, request, in_flight)
        except (WireError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            nursery.cancel_scope.cancel()
            return str(exc) or type(exc).__name__


async def _answer_one(
    channel: LineChannel, target: Any, request: dict[str, Any], in_flight: trio.Semaphore
) -> None:
    try:
        reply = await answer(target, request)
        try:
            await channel.send(reply)
        except (TypeError, ValueError) as exc:  # a result JSON cannot carry: a bug, not fatal
            log.error("admin link: answer to %r not sent: %s", request.get("op"), exc)
            await channel.send({"id": reply.get("id"), "error": str(exc), "kind": "TypeError"})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader sees the link go and reconnects
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        in_flight.release()


async def answer(target: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The reply to one request: ``{"id", "result"}`` or ``{"id", "error", "kind"}`` (the
    exception's class name: the admin process maps a ``ValueError`` to a client error)."""
    rid = request.get("id")
    op = request.get("op")
    args = request.get("args", {})
    if op not in OPS or not isinstance(args, dict):
        return {"id": rid, "error": f"unknown operation {op!r}", "kind": "ValueError"}
    try:
        result = await getattr(target, op)(**args)
    except Exception as exc:  # a bad argument, a refused command: the admin shows it
        return {"id": rid, "error": str(exc), "kind": type(exc).__name__}
    if op == "metrics":
        result = to_json(result)
    return {"id": rid, "result": result}
