"""The admin process of ``--workers N``: one admin port (and metrics sink) for every worker.

Forked by the supervisor (``trio_mesh.workers``) with two sockets it bound and holds across
this process's restarts: the control socket the workers link to, and the admin listener.
Serves ``AdminApp`` over ``FanOutTarget`` and the Prometheus sinks from the same target.
On SIGTERM it keeps answering (``/ready`` says DRAINING) until every worker has unlinked or
``drain_timeout`` passed; a second signal stops it at once.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
from typing import Any

import trio

from ..config import MeshConfig
from .fanout import FanOutTarget
from .hub import WorkerHub

log = logging.getLogger("trio_mesh.admin.workers")


def run_admin_process(
    config: MeshConfig,
    control: socket.socket,
    admin: socket.socket | None,
    workers: int,
    started: float,
    drain_timeout: float = 5.0,
) -> int:
    """The process's whole life; its exit code. ``started``: the supervisor's
    ``time.monotonic()`` (system-wide: the same clock here), the origin of uptime."""
    trio.run(_main, config, control, admin, workers, started, drain_timeout)
    return 0


async def _main(
    config: MeshConfig,
    control: socket.socket,
    admin: socket.socket | None,
    workers: int,
    started: float,
    drain_timeout: float,
) -> None:
    hub = WorkerHub(workers)
    target = FanOutTarget(hub, workers, started, pid=os.getppid())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve, control)
            if admin is not None and config.admin is not None:
                from .server import run_admin

                await nursery.start(functools.partial(run_admin, config.admin, target, sock=admin))
            for sink in prometheus_sinks(config):
                await nursery.start(_serve_sink, sink, target)
            async for _ in signals:
                break
            with trio.move_on_after(drain_timeout + 1.0):
                async with trio.open_nursery() as waiting:

                    async def stop_now_on_second_signal() -> None:
                        async for _ in signals:
                            waiting.cancel_scope.cancel()

                    waiting.start_soon(stop_now_on_second_signal)
                    await hub.wait_all_unlinked()  # the workers unlink as they exit
                    waiting.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


def prometheus_sinks(config: MeshConfig) -> list[Any]:
    """The configured Prometheus sinks, as ``PrometheusSinkConfig``."""
    from ..metrics.sink import sink_config

    if config.metrics is None:
        return []
    return [sink_config(s) for s in config.metrics.sinks if s.type == "prometheus"]


async def _serve_sink(
    sink: Any, target: FanOutTarget, *, task_status: trio.TaskStatus[None]
) -> None:
    from ..metrics.sink import run_prometheus_sink

    await run_prometheus_sink(sink, target.metrics, task_status=task_status)
