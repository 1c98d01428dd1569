"""Dubbo's registry layout in ZooKeeper: the paths, the provider and consumer URLs written as
node names, and the reading of provider nodes back into addresses (pure: no I/O, no trio).

The URLs are written as Java Dubbo writes them (keys sorted, ``methods`` comma-separated,
parameter values raw, the whole URL percent-encoded into one node name), so Java consumers and
dubbo-ssl-python's ``ZkRegister`` (which requires ``dubbo``, ``interface``, ``methods`` and
``revision``) read them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

from attrs import field, frozen

import trio_mesh

ROOT = "/dubbo"
APPLICATION = "trio-mesh"
#: The Dubbo protocol version Java Dubbo 2.7 advertises (the ``dubbo`` key).
DUBBO_PROTOCOL_VERSION = "2.0.2"
#: Dubbo's ``weight`` when a provider does not say (``Constants.DEFAULT_WEIGHT``).
DEFAULT_WEIGHT = 100
_MAX_JAVA_INT = 2**31 - 1

#: A Java-ish dotted name: the interface becomes a ZooKeeper path segment, so no ``/``.
INTERFACE_RE = re.compile(r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*", re.ASCII)
#: A Java method name (``methods`` is a comma list of these).
METHOD_RE = re.compile(r"[A-Za-z_$][\w$]*", re.ASCII)
#: Characters a group or version must not hold: they are written raw into the URL's query
#: (as Java does), so ``& = # ?`` would split it, ``/`` and ``%`` ``+`` would be decoded or
#: misread by consumers, ``,`` and ``*`` are a consumer's group list and wildcard, and
#: whitespace or control characters have no place in a node name.
_RESERVED = frozenset("&=/?#%+;,*") | {chr(c) for c in range(0x20)} | {"\x7f", " "}
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
_PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)


def providers_path(interface: str) -> str:
    return f"{ROOT}/{interface}/providers"


def consumers_path(interface: str) -> str:
    return f"{ROOT}/{interface}/consumers"


def configurators_path(interface: str) -> str:
    return f"{ROOT}/{interface}/configurators"


def bad_text(value: str, *, allow: str = "") -> str | None:
    """Why ``value`` cannot be a group or version written raw into a URL, or None if it can.
    ``allow`` lifts characters out of the reserved set (a consumer's ``*`` and ``,``)."""
    for ch in value:
        if ch in _RESERVED and ch not in allow:
            return f"must not contain {ch!r}"
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return "not valid Unicode (a lone surrogate)"
    return None


def is_hostname(host: str) -> bool:
    """A DNS name (RFC 1123 labels) or an IP literal (IPv6 without brackets)."""
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    # An all-digit last label is a mistyped IPv4 address, never a top-level domain.
    return all(_LABEL_RE.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _address(ip: str) -> str:
    """``ip`` as a URL writes it (IPv6 in brackets); ValueError if it is no address."""
    bare = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
    if not is_hostname(bare) or (bare != ip and ":" not in bare):
        raise ValueError(f"ip: not an address: {ip!r}")
    return f"[{bare}]" if ":" in bare else bare


def _check(
    interface: str, methods: Iterable[str], group: str, version: str, *, consumer: bool
) -> str:
    """Validate what goes into a URL; returns ``methods`` as Java writes it."""
    if not INTERFACE_RE.fullmatch(interface):
        raise ValueError(f"interface: not a Java name: {interface!r}")
    names = sorted(set(methods))
    for name in names:
        if not METHOD_RE.fullmatch(name):
            raise ValueError(f"methods: not a Java method name: {name!r}")
    allow = "*," if consumer else ""
    for key, value in (("group", group), ("version", version)):
        why = bad_text(value, allow=allow)
        if why:
            raise ValueError(f"{key}: {why}")
    # Java writes "*" for an interface without methods; dubbo-ssl-python needs the key.
    return ",".join(names) or "*"


def _join(scheme: str, address: str, interface: str, params: Mapping[str, str]) -> str:
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if v != "")
    return f"{scheme}://{address}/{interface}?{query}"


def provider_url(
    *,
    ip: str,
    port: int,
    interface: str,
    methods: Iterable[str],
    group: str,
    version: str,
    timestamp_ms: int,
    pid: int,
) -> str:
    """The ``dubbo://`` URL a Java provider of ``interface`` at ``ip:port`` registers.
    ValueError if a part cannot be written (the request layer refuses those first)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port: expected 1-65535, got {port}")
    address = _address(ip)
    joined = _check(interface, methods, group, version, consumer=False)
    params = {
        "anyhost": "true",
        "application": APPLICATION,
        "deprecated": "false",
        "dubbo": DUBBO_PROTOCOL_VERSION,
        "dynamic": "true",
        "generic": "false",
        "group": group,
        "interface": interface,
        "methods": joined,
        "pid": str(pid),
        "release": trio_mesh.__version__,
        # Java writes the implementation's version here; dubbo-ssl-python requires the key
        # (an empty value would be dropped by its parse_qsl), so a service without a version
        # gets the sidecar's release.
        "revision": version or trio_mesh.__version__,
        "side": "provider",
        "timestamp": str(timestamp_ms),
        "version": version,
    }
    return _join("dubbo", f"{address}:{port}", interface, params)


def consumer_url(
    *,
    ip: str,
    interface: str,
    methods: Iterable[str],
    group: str,
    version: str,
    timestamp_ms: int,
    pid: int,
) -> str:
    """The ``consumer://`` URL a Java consumer of ``interface`` registers (group may be a
    comma list or ``*``, version ``*``, as a consumer's may)."""
    address = _address(ip)
    joined = _check(interface, methods, group, version, consumer=True)
    params = {
        "application": APPLICATION,
        "category": "consumers",
        "check": "false",
        "dubbo": DUBBO_PROTOCOL_VERSION,
        "group": group,
        "interface": interface,
        "methods": joined,
        "pid": str(pid),
        "side": "consumer",
        "timestamp": str(timestamp_ms),
        "version": version,
    }
    return _join("consumer", address, interface, params)


def node_name(url: str) -> str:
    """The ZooKeeper node name of ``url``: Java Dubbo's ``URL.encode`` (everything but
    unreserved characters percent-encoded, so no ``/`` is left)."""
    return quote(url, safe="")


@frozen
class ProviderUrl:
    """A registry node read back: ``host`` without IPv6 brackets, ``port`` 0 when absent,
    ``interface`` from the ``interface`` parameter (else the path, as Dubbo falls back)."""

    scheme: str
    host: str
    port: int
    interface: str
    params: Mapping[str, str] = field(factory=dict)


def parse_node(name: str) -> ProviderUrl | None:
    """Read a registry node's name as Dubbo's ``URL.valueOf(URL.decode(name))`` does; None
    for anything that is not a URL with a usable host (never raises)."""
    try:
        return _parse(unquote(name, errors="strict"))
    except (ValueError, UnicodeError):
        return None


def _parse(url: str) -> ProviderUrl | None:
    url, _, query = url.partition("?")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return None
    address, _, path = rest.partition("/")
    address = address.rpartition("@")[2]  # user:password@ as Dubbo strips it
    if address.startswith("["):
        host, bracket, tail = address[1:].partition("]")
        if not bracket or ":" not in host:
            return None
        if tail and not tail.startswith(":"):
            return None
        port_text = tail[1:] if tail else None
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    elif ":" in address:
        return None  # an unbracketed IPv6 literal: host and port cannot be told apart
    else:
        host, port_text = address, None
    if not is_hostname(host):
        return None
    if port_text is None:
        port = 0
    elif _PORT_RE.fullmatch(port_text) and int(port_text) <= 65535:
        port = int(port_text)
    else:
        return None
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        # Dubbo keeps a bare key as key=key; empty values count as absent.
        value = value if eq else key
        if key and value:
            params[key] = value
    interface = params.get("interface") or path
    return ProviderUrl(scheme, host, port, interface, params)


def _in_list(values: str, value: str) -> bool:
    # Dubbo's StringUtils.isContains: split on commas (with blanks around them).
    return value in {v.strip() for v in values.split(",")}


def matches(provider: ProviderUrl, *, interface: str, group: str, version: str) -> bool:
    """Whether a consumer of ``interface`` with ``group`` / ``version`` (each may be ``*``,
    the group a comma list) takes ``provider``: Dubbo's ``UrlUtils.isMatch``."""
    params = provider.params
    if provider.scheme != "dubbo" or provider.interface != interface:
        return False
    if params.get("category", "providers") != "providers":
        return False
    # Java's getParameter(ENABLED_KEY, true): any value but "true" (any case) disables.
    enabled = params.get("enabled")
    if enabled is not None and enabled.lower() != "true":
        return False
    provider_group = params.get("group", "")
    if not (
        group == "*"
        or group == provider_group
        or (provider_group and _in_list(group, provider_group))
    ):
        return False
    return version == "*" or version == params.get("version", "")


def _weight(params: Mapping[str, str]) -> int:
    text = params.get("weight")
    if text is None or not re.fullmatch(r"-?[0-9]{1,10}", text, re.ASCII):
        return DEFAULT_WEIGHT
    n = int(text)
    if n > _MAX_JAVA_INT or n < -_MAX_JAVA_INT - 1:
        return DEFAULT_WEIGHT  # Java's parseInt would fail; Dubbo falls back
    return max(n, 0)  # Dubbo's balancers treat a negative weight as 0


def select_weighted(
    children: Iterable[str], *, interface: str, group: str, version: str
) -> tuple[tuple[str, int, int], ...]:
    """``(host, port, weight)`` of the providers among ``children`` (node names) a consumer
    takes, sorted, one per address (an address listed twice keeps its largest weight);
    the weight is Dubbo's (default 100, 0 for none)."""
    best: dict[tuple[str, int], int] = {}
    for child in children:
        provider = parse_node(child)
        if provider is None or provider.port == 0:
            continue
        if not matches(provider, interface=interface, group=group, version=version):
            continue
        key = (provider.host, provider.port)
        best[key] = max(best.get(key, -1), _weight(provider.params))
    return tuple((host, port, weight) for (host, port), weight in sorted(best.items()))


def select_hosts(
    children: Iterable[str], *, interface: str, group: str, version: str
) -> tuple[tuple[str, int], ...]:
    """``(host, port)`` of the providers a consumer takes, deduplicated and sorted."""
    chosen = select_weighted(children, interface=interface, group=group, version=version)
    return tuple((host, port) for host, port, _ in chosen)
