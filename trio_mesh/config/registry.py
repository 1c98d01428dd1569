"""MOSN's ``extends`` block and its ``dubbo_registry`` entry: the service registration API
(``trio_mesh.registry``) and the listener that published providers are reached at.

MOSN's shape: ``extends: [{type: dubbo_registry, config: {enable, server_port, api_port,
log_path}}]``. The keys past MOSN's (``server_listener``, ``api_host``...) are ours. Errors
and warnings name their path (``extends[0].config.api_port``), as the rest of the config does.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from attrs import frozen

from .admin_check import is_loopback
from .block import structure_block
from .errors import ConfigError, at
from .model import ExtendConfig, MeshConfig
from .normalize import Report
from .scalars import Duration

__all__ = [
    "DUBBO_REGISTRY",
    "DubboRegistryConfig",
    "ExtendConfig",
    "check_extends",
    "dubbo_registry_config",
    "extends_warnings",
    "structure_dubbo_registry",
]

DUBBO_REGISTRY = "dubbo_registry"
#: The ``extends`` types this proxy knows; MOSN ignores the others, and so do we (warning).
KNOWN_EXTENDS = frozenset({DUBBO_REGISTRY})


@frozen(kw_only=True)
class DubboRegistryConfig:
    enable: bool = False
    #: MOSN's: the proxy listener's port that published providers are reached at.
    server_port: int | None = None
    #: Ours: that listener by name (its real bound port is published: port 0 is fine).
    server_listener: str | None = None
    #: The HTTP API's port (MOSN's default); 0: any free port (embedded use, tests).
    api_port: int = 22222
    #: Ours: MOSN listens on every interface; here loopback unless asked otherwise.
    api_host: str = "127.0.0.1"
    #: Required for a non-loopback ``api_host`` (the API changes what the proxy routes to).
    allow_non_loopback: bool = False
    #: The IP written into provider and consumer URLs; ``None``: the host's primary address
    #: (``registry.address.primary_ip``, as MOSN's ``trace.GetIp``).
    advertise_ip: str | None = None
    #: MOSN's: a directory; registry events also go to ``<log_path>/dubbo.log``.
    log_path: str | None = None
    #: MOSN's ``dubboRouterConfigName``: the router the subscriptions' routes are added to.
    router_config_name: str = "dubbo"
    #: MOSN's ``REGISTRY_TIMEOUT_KEY``: the bound on every registry call of an API request.
    registry_timeout: Duration = Duration(5.0)
    #: The ZooKeeper session timeout asked for.
    session_timeout: Duration = Duration(10.0)
    #: Dubbo 3's empty protection: an empty provider list keeps the last known hosts.
    empty_protection: bool = True


def structure_dubbo_registry(raw: Any, path: str) -> tuple[DubboRegistryConfig | None, Report]:
    """A ``dubbo_registry`` entry's ``config`` as ``DubboRegistryConfig``, with the errors
    of its own values (not those across the configuration) at ``path``."""
    registry, report = structure_block(raw, DubboRegistryConfig, path)
    if registry is None:
        return None, report
    report.errors += _check_values(registry, path)
    return registry, report


def _check_values(r: DubboRegistryConfig, path: str) -> list[str]:
    errors = []
    if r.server_port is not None and not 1 <= r.server_port <= 65535:
        errors.append(
            at(f"{path}.server_port", f"expected a port number (1-65535), got {r.server_port}")
        )
    if not 0 <= r.api_port <= 65535:
        errors.append(at(f"{path}.api_port", f"expected a port number (0-65535), got {r.api_port}"))
    if not r.allow_non_loopback and not is_loopback(r.api_host):
        errors.append(
            at(
                f"{path}.api_host",
                f"{r.api_host!r} is not a loopback address; the registry API publishes services"
                " and changes the proxy's routes: set allow_non_loopback: true to serve it there",
            )
        )
    if r.advertise_ip is not None:
        errors += _check_advertise_ip(r.advertise_ip, f"{path}.advertise_ip")
    if r.server_listener is not None and not r.server_listener:
        errors.append(at(f"{path}.server_listener", "expected a listener name, got ''"))
    if r.log_path is not None and (not r.log_path or "\0" in r.log_path):
        errors.append(at(f"{path}.log_path", f"expected a directory path, got {r.log_path!r}"))
    if not r.router_config_name:
        errors.append(at(f"{path}.router_config_name", "expected a router config name, got ''"))
    for key in ("registry_timeout", "session_timeout"):
        if getattr(r, key) <= 0:
            errors.append(at(f"{path}.{key}", "expected a positive duration"))
    return errors


def _check_advertise_ip(text: str, path: str) -> list[str]:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return [at(path, f"expected an IP address, got {text!r}")]
    if ip.is_unspecified or ip.is_multicast:
        return [at(path, f"{text} is not an address the providers can be reached at")]
    return []


def _entries(config: MeshConfig) -> list[tuple[int, ExtendConfig]]:
    return [(i, e) for i, e in enumerate(config.extends) if e.type == DUBBO_REGISTRY]


def check_extends(config: MeshConfig) -> list[str]:
    """Errors of the ``extends`` block: the ``dubbo_registry`` entry (one at most) and how
    it names the proxy's listener."""
    errors: list[str] = []
    entries = _entries(config)
    for i, _ in entries[1:]:
        errors.append(
            at(f"extends[{i}].type", f"a second {DUBBO_REGISTRY} (extends[{entries[0][0]}] is one)")
        )
    for i, entry in entries:
        path = f"extends[{i}].config"
        registry, report = structure_dubbo_registry(entry.config, path)
        errors += report.errors
        if registry is not None and registry.enable:
            errors += _check_listener(config, registry, path)[0]
    return errors


def _check_listener(
    config: MeshConfig, r: DubboRegistryConfig, path: str
) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of how ``server_port``/``server_listener`` name a listener."""
    errors: list[str] = []
    warnings: list[str] = []
    listeners = config.listeners
    if r.server_port is None and r.server_listener is None:
        errors.append(
            at(
                f"{path}.server_port",
                "required with enable: true: the port of the proxy's listener that published"
                " providers are reached at (or name that listener with server_listener)",
            )
        )
        return errors, warnings
    if r.server_listener:
        named = [lst for lst in listeners if lst.name == r.server_listener]
        if not named:
            known = ", ".join(sorted(lst.name for lst in listeners)) or "none"
            errors.append(
                at(
                    f"{path}.server_listener",
                    f"unknown listener {r.server_listener!r} (defined: {known})",
                )
            )
        elif r.server_port is not None and named[0].address.port != r.server_port:
            errors.append(
                at(
                    f"{path}.server_port",
                    f"{r.server_port} is not the port of listener {r.server_listener!r}"
                    f" ({named[0].address.port}): give one of the two",
                )
            )
        return errors, warnings
    if r.server_port is None or not 1 <= r.server_port <= 65535:
        return errors, warnings  # an out-of-range port has its own error
    if not any(lst.address.port == r.server_port for lst in listeners):
        if config.xds_settings() is not None:
            warnings.append(
                at(
                    f"{path}.server_port",
                    f"no listener here on port {r.server_port}: the control plane must send it",
                )
            )
        else:
            errors.append(
                at(
                    f"{path}.server_port",
                    f"no listener on port {r.server_port}: published providers would be"
                    " unreachable",
                )
            )
    return errors, warnings


def extends_warnings(config: MeshConfig) -> list[str]:
    warnings: list[str] = []
    for i, entry in enumerate(config.extends):
        if entry.type not in KNOWN_EXTENDS:
            warnings.append(
                at(f"extends[{i}].type", f"{entry.type!r} is not a known extension: ignored")
            )
    entries = _entries(config)
    for i, entry in entries[:1]:
        path = f"extends[{i}].config"
        registry, report = structure_dubbo_registry(entry.config, path)
        warnings += report.warnings
        if registry is not None and registry.enable:
            warnings += _check_listener(config, registry, path)[1]
    return warnings


def dubbo_registry_config(config: MeshConfig) -> DubboRegistryConfig | None:
    """The ``dubbo_registry`` entry of a validated configuration, or ``None`` unless one is
    there with ``enable: true``. Raises ``ConfigError`` for a configuration that was not
    validated and holds a bad entry."""
    entries = _entries(config)
    if not entries:
        return None
    i, entry = entries[0]
    registry, report = structure_dubbo_registry(entry.config, f"extends[{i}].config")
    if report.errors or registry is None:
        raise ConfigError(report.errors)
    return registry if registry.enable else None
