"""Checks across the structured configuration: unique names, references, chain shapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from .errors import at, join_path
from .filters import is_terminal
from .model import MeshConfig


def check(config: MeshConfig) -> list[str]:
    errors: list[str] = []
    clusters = {c.name for c in config.cluster_manager.clusters}
    _unique(
        errors,
        [
            (f"cluster_manager.clusters[{i}].name", c.name)
            for i, c in enumerate(config.cluster_manager.clusters)
        ],
        "cluster",
    )
    listeners, routers = [], []
    for si, server in enumerate(config.servers):
        sp = f"servers[{si}]"
        routers += [
            (f"{sp}.routers[{i}].router_config_name", r.router_config_name)
            for i, r in enumerate(server.routers)
        ]
        for li, listener in enumerate(server.listeners):
            lp = f"{sp}.listeners[{li}]"
            listeners.append((f"{lp}.name", listener.name))
            _check_chains(errors, lp, listener)
    _unique(errors, listeners, "listener")
    _unique(errors, routers, "router config")

    defined = ", ".join(sorted(clusters)) or "none"
    for path, name in _cluster_refs(config, ""):
        if name not in clusters:
            errors.append(at(path, f"unknown cluster {name!r} (defined: {defined})"))
    return errors


def _check_chains(errors: list[str], lp: str, listener: Any) -> None:
    if not listener.filter_chains:
        errors.append(at(f"{lp}.filter_chains", "a listener needs one filter chain"))
    elif len(listener.filter_chains) > 1:
        # Without chain matching (MOSN's `match`, pending) only one chain can ever be chosen.
        errors.append(at(f"{lp}.filter_chains", "only one filter chain per listener is supported"))
    for ci, chain in enumerate(listener.filter_chains):
        cp = f"{lp}.filter_chains[{ci}].filters"
        if not chain.filters:
            errors.append(at(cp, "a filter chain needs at least one network filter"))
            continue
        for fi, f in enumerate(chain.filters):
            last = fi == len(chain.filters) - 1
            if is_terminal(f.type) and not last:
                errors.append(at(f"{cp}[{fi}].type", f"{f.type!r} must be the last filter"))
            if last and not is_terminal(f.type):
                errors.append(
                    at(
                        f"{cp}[{fi}].type",
                        f"the last filter must end the chain (such as tcp_proxy), got {f.type!r}",
                    )
                )


def _unique(errors: list[str], named: list[tuple[str, str]], what: str) -> None:
    seen: set[str] = set()
    for path, name in named:
        if name in seen:
            errors.append(at(path, f"duplicate {what} name {name!r}"))
        seen.add(name)


def _cluster_refs(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every field marked with ``cluster_ref()``, anywhere, with its path."""
    if attrs.has(type(value)):
        for f in attrs.fields(type(value)):
            v = getattr(value, f.name)
            fp = join_path(path, f.name)
            if f.metadata.get("refers_to") == "cluster" and isinstance(v, str):
                yield fp, v
            else:
                yield from _cluster_refs(v, fp)
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            yield from _cluster_refs(v, join_path(path, i))
