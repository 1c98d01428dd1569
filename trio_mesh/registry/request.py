"""The registry API's request bodies (MOSN's ``pubReq`` / ``subReq`` shapes) parsed and
validated, pure: every refusal is a ``RequestError`` naming the field.

``{"registry": {"type", "addr", "username", "password"},
   "service": {"interface", "methods", "group", "version"}}``; unknown keys are ignored and a
JSON ``null`` counts as absent, as MOSN's binder does.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from attrs import frozen

from .url import INTERFACE_RE, METHOD_RE, bad_text, is_hostname

Kind = Literal["pub", "unpub", "sub", "unsub"]
KINDS: frozenset[str] = frozenset({"pub", "unpub", "sub", "unsub"})
REGISTRY_TYPES = ("zookeeper", "memory")
#: The server refuses longer bodies before parsing; checked here too so the parser stands alone.
MAX_BODY = 64 * 1024
_PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)


class RequestError(ValueError):
    """A request the API refuses: ``str()`` is ``"<field>: <message>"``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@frozen
class RegistryRef:
    type: str
    addr: str
    username: str = ""
    password: str = ""

    def key(self) -> tuple[str, str, str, str]:
        """One session per registry and credentials."""
        return (self.type, self.addr, self.username, self.password)


@frozen
class ServiceRef:
    interface: str
    methods: tuple[str, ...]
    group: str = ""
    version: str = ""


@frozen
class RegistryRequest:
    registry: RegistryRef
    service: ServiceRef


def parse_request(body: bytes, *, kind: Kind) -> RegistryRequest:
    """Parse a ``/pub``, ``/unpub``, ``/sub`` or ``/unsub`` body; RequestError on anything
    the API must refuse (and nothing else, whatever the bytes)."""
    if kind not in KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    doc = _load(body)
    registry = _section(doc, "registry")
    service = _section(doc, "service")
    return RegistryRequest(registry=_registry(registry), service=_service(service, kind))


def _load(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise RequestError("body", f"larger than {MAX_BODY} bytes")
    try:
        # Decoded first: json.loads would otherwise guess UTF-16/32 from the bytes.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("body", "not UTF-8") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise RequestError("body", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN, an integer too long to convert
        raise RequestError("body", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("body", "expected a JSON object")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        raise RequestError(name, "required")
    if not isinstance(value, dict):
        raise RequestError(name, "expected an object")
    return value


def _string(section: dict[str, Any], path: str, key: str, *, required: bool = False) -> str:
    value = section.get(key)
    if value is None or (required and value == ""):
        if required:
            raise RequestError(f"{path}.{key}", "required")
        return ""
    if not isinstance(value, str):
        raise RequestError(f"{path}.{key}", "expected a string")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise RequestError(f"{path}.{key}", "not valid Unicode (a lone surrogate)")
    return value


def _registry(section: dict[str, Any]) -> RegistryRef:
    type_ = _string(section, "registry", "type", required=True)
    if type_ not in REGISTRY_TYPES:
        raise RequestError(
            "registry.type",
            f"{type_!r} is not supported (expected one of {', '.join(REGISTRY_TYPES)})",
        )
    addr = _string(section, "registry", "addr", required=True)
    why = _bad_addr(addr)
    if why:
        raise RequestError("registry.addr", why)
    username = _string(section, "registry", "username")
    password = _string(section, "registry", "password")
    if username and not password:
        raise RequestError("registry.password", "required with a username")
    if password and not username:
        raise RequestError("registry.username", "required with a password")
    # ZooKeeper's digest scheme splits "user:password" at the first colon.
    if ":" in username or any(ord(ch) < 0x20 or ch == "\x7f" for ch in username):
        raise RequestError("registry.username", "must not contain ':' or control characters")
    return RegistryRef(type=type_, addr=addr, username=username, password=password)


def _bad_addr(addr: str) -> str | None:
    """Why ``addr`` is not a ZooKeeper connect string ``host:port[,host:port...]``."""
    if "/" in addr:
        return "a chroot is not supported"
    for entry in addr.split(","):
        if entry.startswith("["):
            host, bracket, tail = entry[1:].partition("]")
            if not bracket or ":" not in host or not tail.startswith(":"):
                return f"{entry!r} is not host:port (an IPv6 address as [addr]:port)"
            port = tail[1:]
        else:
            host, colon, port = entry.rpartition(":")
            if not colon or ":" in host:
                return f"{entry!r} is not host:port (an IPv6 address as [addr]:port)"
        if not is_hostname(host):
            return f"{entry!r}: {host!r} is not a host name or IP address"
        if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
            return f"{entry!r}: port {port!r} is not 1-65535"
    return None


def _service(section: dict[str, Any], kind: str) -> ServiceRef:
    interface = _string(section, "service", "interface", required=True)
    if not INTERFACE_RE.fullmatch(interface):
        raise RequestError(
            "service.interface", f"{interface!r} is not a Java name (like com.example.DemoService)"
        )
    methods = section.get("methods")
    if methods is None:
        raise RequestError("service.methods", "required")
    if not isinstance(methods, list):
        raise RequestError("service.methods", "expected a list of strings")
    for i, name in enumerate(methods):
        if not isinstance(name, str):
            raise RequestError(f"service.methods[{i}]", "expected a string")
        if not METHOD_RE.fullmatch(name):
            raise RequestError(f"service.methods[{i}]", f"{name!r} is not a Java method name")
    if not methods and kind in ("pub", "sub"):
        raise RequestError("service.methods", "at least one method is required")
    # A consumer may ask for any group ("*") or several ("a,b") and any version ("*").
    consumer = kind in ("sub", "unsub")
    group = _string(section, "service", "group")
    why = bad_text(group, allow="*," if consumer else "")
    if why:
        raise RequestError("service.group", why)
    version = _string(section, "service", "version")
    why = bad_text(version, allow="*" if consumer else "")
    if why:
        raise RequestError("service.version", why)
    return ServiceRef(interface=interface, methods=tuple(methods), group=group, version=version)
