"""A proxy started in a Trio nursery for a test, and what the test asks it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import trio

from ..config import ConfigError, MeshConfig
from ..config.scalars import format_hostport

if TYPE_CHECKING:
    from ..registry.memory import MemoryRegistry
    from ..registry.runtime import RegistryRuntime
    from ..server import Server

#: What a configuration may be given as: a parsed document, a validated config, a file.
ConfigLike = MeshConfig | dict[str, Any] | str | os.PathLike[str]

#: Hosts a listener may bind that a client cannot connect to: ``url`` uses loopback instead.
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def as_config(config: ConfigLike) -> MeshConfig:
    """``config`` validated; raises ``ConfigError`` listing every problem (``.errors``)."""
    if isinstance(config, MeshConfig):
        return config
    from ..config.load import load_config, parse_config

    if isinstance(config, dict):
        loaded = parse_config(config)
        if loaded.warnings:
            import logging

            for w in loaded.warnings:
                logging.getLogger("trio_mesh.config").warning("%s", w)
        return loaded.config
    if isinstance(config, str | os.PathLike):
        return load_config(config)
    raise ConfigError(
        [f"expected a dict, a MeshConfig or a file path, got {type(config).__name__}"]
    )


class MeshHandle:
    """A running proxy (``start_mesh``): its addresses, its stats, live reconfiguration."""

    def __init__(self, server: Server) -> None:
        #: The ``trio_mesh.Server`` itself (its listeners, clusters, ``live`` event...).
        self.server = server

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """The real bound ``(host, port)`` of each listener, by name (port 0 resolved)."""
        return self.server.addresses

    def address(self, name: str) -> tuple[str, int]:
        """The bound ``(host, port)`` of listener ``name``; ``KeyError`` naming the known
        listeners when there is none of that name (or it does not bind a port)."""
        addresses = self.server.addresses
        try:
            return addresses[name]
        except KeyError:
            known = ", ".join(repr(n) for n in sorted(addresses)) or "none"
            raise KeyError(f"no bound listener named {name!r} (bound: {known})") from None

    def url(self, name: str, path: str = "/", *, scheme: str = "http") -> str:
        """``http://127.0.0.1:<port>/path`` for listener ``name`` (a listener bound to
        0.0.0.0 or :: is reached on loopback)."""
        host, port = self.address(name)
        host = _ANY.get(host, host)
        if not path.startswith("/"):
            path = "/" + path
        return f"{scheme}://{format_hostport(host, port)}{path}"

    async def apply(self, config: ConfigLike, *, drain_timeout: float = 30.0) -> None:
        """Switch the running proxy to ``config`` (``Server.apply``): ``ConfigError`` for
        an invalid one, ``StartupError`` for one the server refuses; either way nothing
        changed."""
        await self.server.apply(as_config(config), drain_timeout=drain_timeout)

    async def stats(self, filter: str | None = None) -> dict[str, Any]:
        """Every stat now, by the names of the admin's ``/stats?format=json`` (read the
        same way): counters and gauges as numbers, histograms as ``{quantile: value}``
        (``None`` before any sample). ``filter``: the admin's ``?filter=`` regex."""
        from ..admin.app import stats_json
        from ..admin.target import LocalTarget

        metrics = await LocalTarget(self.server).metrics()
        if filter:
            from ..admin.stat_filter import compile_filter, matching

            metrics = await matching(compile_filter(filter), metrics)
        out: dict[str, Any] = {}
        for entry in stats_json(metrics)["stats"]:
            if "histograms" in entry:
                for h in entry["histograms"]["computed_quantiles"]:
                    quantiles = entry["histograms"]["supported_quantiles"]
                    out[h["name"]] = {
                        q: v["cumulative"] for q, v in zip(quantiles, h["values"], strict=True)
                    }
            else:
                out[entry["name"]] = entry["value"]
        return out

    @property
    def registry(self) -> RegistryRuntime | None:
        """The service registry (``extends: [{type: dubbo_registry}]``), if configured."""
        return self.server.registry

    def memory_registry(self, addr: str) -> MemoryRegistry:
        """The in-memory registry namespace ``addr`` (``registry.type: memory``), the one
        the proxy's sessions on that ``addr`` use: inspect it, or ``expire`` a session."""
        from ..registry.memory import MemoryRegistry

        return MemoryRegistry.get(addr)


async def start_mesh(
    nursery: trio.Nursery, config: ConfigLike, *, reuse_port: bool = False
) -> MeshHandle:
    """Start a proxy in ``nursery`` and return once every listener serves. Raises
    ``ConfigError`` (an invalid configuration, every problem listed) or ``StartupError`` (a
    port in use, a file it cannot open) here, with nothing left bound. Cancelling the
    nursery stops it."""
    from ..server import Server

    server = Server(as_config(config), reuse_port=reuse_port)
    try:
        await nursery.start(server.run)
    except BaseExceptionGroup as group:
        # One start-up failure, wrapped by a nursery inside run: raise it as itself.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
    return MeshHandle(server)


__all__ = ["ConfigLike", "MeshHandle", "as_config", "start_mesh"]
