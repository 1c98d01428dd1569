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

import trio

from ..config import MeshConfig
from ..config.metrics_check import prometheus_sinks
from ..config.observability import PrometheusSinkConfig
from ..config.scalars import format_hostport
from .fanout import FanOutTarget
from .hub import WorkerHub

log = logging.getLogger("trio_mesh.admin.workers")


def run_admin_process(
    config: MeshConfig,
    control: socket.socket,
    admin: socket.socket | None,
    workers: int,
    started: float,
    ready_fd: int,
    drain_timeout: float = 5.0,
) -> int:
    """The process's whole life; its exit code. ``started``: the supervisor's
    ``time.monotonic()`` (system-wide: the same clock here), the origin of uptime;
    ``ready_fd``: where to say it serves (as the workers do)."""
    from ..errors import StartupError

    try:
        trio.run(_main, config, control, admin, workers, started, ready_fd, drain_timeout)
    except BaseExceptionGroup as group:
        failures, rest = group.split(StartupError)  # a sink's port in use, say
        if rest is not None or failures is None:
            raise
        for exc in _leaves(failures):
            log.error("%s", exc)
        return 1
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in ``group`` and its nested groups (nurseries nest them)."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _main(
    config: MeshConfig,
    control: socket.socket,
    admin: socket.socket | None,
    workers: int,
    started: float,
    ready_fd: int,
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
            os.write(ready_fd, b"R")
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


async def _serve_sink(
    sink: PrometheusSinkConfig, target: FanOutTarget, *, task_status: trio.TaskStatus[None]
) -> None:
    from ..metrics.sink import run_prometheus_sink

    async with trio.open_nursery() as nursery:
        address = await nursery.start(run_prometheus_sink, sink, target.metrics)
        log.info(
            "prometheus metrics sink on http://%s%s (every worker)",
            format_hostport(*address),
            sink.endpoint,
        )
        task_status.started()
