"""A cluster's active health check (MOSN's cluster ``health_check``): the keys, and the
per-protocol ``check_config`` read into what the checker runs (``HttpCheck``, ``TcpCheck``,
``GrpcCheck``, ``RpcCheck``), with errors at their paths."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from attrs import frozen

from .errors import at
from .scalars import Duration, PositiveInt

#: The RPC protocols checked by their codec's heartbeat: the name in ``protocol`` -> the
#: codec's (xprotocol registry) name. ``SofaRpc`` is MOSN's name for its bolt v1 heartbeat check.
RPC_PROTOCOLS = {"bolt": "bolt", "sofarpc": "bolt", "dubbo": "dubbo"}
#: The protocols checked; another loads with a warning, unchecked.
CHECKED_PROTOCOLS = ("tcp", "http", "grpc", *RPC_PROTOCOLS)
#: The most bytes a TCP check sends or expects (its read buffer's budget).
MAX_TCP_PAYLOAD = 4096


@frozen(kw_only=True)
class HealthCheck:
    protocol: str = "tcp"
    #: One check's deadline (connect, send, answer).
    timeout: Duration = Duration(3.0)
    interval: Duration = Duration(10.0)
    #: Up to this much is added to each interval at random, so checks do not all line up.
    interval_jitter: Duration = Duration(0.0)
    #: Before the first round (MOSN's name; a duration such as ``"1s"``).
    initial_delay_seconds: Duration = Duration(0.0)
    #: Passes in a row that bring a failed host back; failures in a row that take it out.
    healthy_threshold: PositiveInt = PositiveInt(1)
    unhealthy_threshold: PositiveInt = PositiveInt(2)
    #: gRPC: the ``service`` asked of grpc.health.v1.Health/Check ("" the whole server).
    service_name: str = ""
    check_config: dict[str, Any] = attrs.field(factory=dict)

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset({"event_log_path", "common_callbacks"})


@frozen
class HttpCheck:
    path: str
    #: The ``Host`` header; ``None``: the host's address.
    host: str | None
    #: Statuses that pass: half-open ranges [start, end), as Envoy's ``expected_statuses``.
    statuses: tuple[tuple[int, int], ...]

    def passes(self, status: int) -> bool:
        return any(start <= status < end for start, end in self.statuses)


@frozen
class TcpCheck:
    send: bytes
    #: Bytes the answer must start with; empty: a connect is enough.
    expect: bytes


@frozen
class GrpcCheck:
    service: str
    authority: str | None


@frozen
class RpcCheck:
    #: The codec (xprotocol registry name) whose heartbeat request is sent and whose
    #: heartbeat response, with the same request id, passes.
    codec: str


CheckSpec = HttpCheck | TcpCheck | GrpcCheck | RpcCheck

_KEYS: dict[str, tuple[str, ...]] = {
    "http": ("path", "host", "expected_statuses"),
    "tcp": ("send", "expect"),
    "grpc": ("authority",),
    "bolt": (),
    "sofarpc": (),
    "dubbo": (),
}


def _clean(text: Any, path: str, errors: list[str], *, what: str) -> str | None:
    """A string that goes into a request line or header: printable ASCII, no spaces."""
    if not isinstance(text, str):
        errors.append(at(path, f"expected a string, got {text!r}"))
        return None
    if not text or any(not 0x21 <= ord(c) <= 0x7E for c in text):
        errors.append(at(path, f"expected {what} of printable ASCII without spaces, got {text!r}"))
        return None
    return text


def _hex(value: Any, path: str, errors: list[str]) -> bytes:
    if not isinstance(value, str):
        errors.append(at(path, f"expected hex bytes such as '50494e47', got {value!r}"))
        return b""
    try:
        data = bytes.fromhex(value)
    except ValueError:
        errors.append(at(path, f"expected hex bytes such as '50494e47', got {value!r}"))
        return b""
    if len(data) > MAX_TCP_PAYLOAD:
        errors.append(at(path, f"at most {MAX_TCP_PAYLOAD} bytes, got {len(data)}"))
    return data


def _statuses(value: Any, path: str, errors: list[str]) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not value:
        errors.append(
            at(path, f"expected a list of statuses or {{start, end}} ranges, got {value!r}")
        )
        return ()
    out = []
    for i, item in enumerate(value):
        ip = f"{path}[{i}]"
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            out.append((item, item + 1))
        elif isinstance(item, dict) and set(item) == {"start", "end"}:
            start, end = item["start"], item["end"]
            if not all(
                isinstance(x, int) and not isinstance(x, bool) for x in (start, end)
            ) or not (100 <= start < end <= 600):
                errors.append(at(ip, f"expected 100 <= start < end <= 600, got {item!r}"))
            else:
                out.append((start, end))
        else:
            errors.append(
                at(
                    ip,
                    f"expected a status (100-599) or {{start, end}} (end excluded), got {item!r}",
                )
            )
    return tuple(out)


def parse_check(hc: HealthCheck, path: str) -> tuple[CheckSpec | None, list[str]]:
    """What the checker runs for ``hc`` (``None``: a protocol not checked), and the errors,
    each at its key under ``path`` (the ``health_check`` key's)."""
    errors: list[str] = []
    protocol = hc.protocol.lower()
    if hc.timeout <= 0:
        errors.append(at(f"{path}.timeout", "expected a positive duration"))
    if hc.interval <= 0:
        errors.append(at(f"{path}.interval", "expected a positive duration"))
    if protocol not in CHECKED_PROTOCOLS:
        return None, errors
    cp = f"{path}.check_config"
    cfg = hc.check_config
    for key in cfg:
        if key not in _KEYS[protocol]:
            known = ", ".join(_KEYS[protocol]) or "none"
            errors.append(at(f"{cp}.{key}", f"unknown key for {protocol} (known keys: {known})"))
    spec: CheckSpec
    if protocol == "http":
        path_ = _clean(cfg.get("path", "/"), f"{cp}.path", errors, what="a path")
        if path_ is not None and not path_.startswith("/"):
            errors.append(at(f"{cp}.path", f"expected a path starting with '/', got {path_!r}"))
        host = cfg.get("host")
        if host is not None:
            host = _clean(host, f"{cp}.host", errors, what="a host name")
        statuses: tuple[tuple[int, int], ...] = ((200, 201),)
        if "expected_statuses" in cfg:
            statuses = _statuses(cfg["expected_statuses"], f"{cp}.expected_statuses", errors)
        spec = HttpCheck(path_ or "/", host, statuses)
    elif protocol == "tcp":
        send = _hex(cfg.get("send", ""), f"{cp}.send", errors)
        expect = _hex(cfg.get("expect", ""), f"{cp}.expect", errors)
        spec = TcpCheck(send, expect)
    elif protocol in RPC_PROTOCOLS:
        spec = RpcCheck(RPC_PROTOCOLS[protocol])
    else:
        authority = cfg.get("authority")
        if authority is not None:
            authority = _clean(authority, f"{cp}.authority", errors, what="an authority")
        spec = GrpcCheck(hc.service_name, authority)
    return (None if errors else spec), errors


def health_check_warnings(hc: HealthCheck, path: str) -> list[str]:
    if hc.protocol.lower() in CHECKED_PROTOCOLS:
        return []
    known = ", ".join(CHECKED_PROTOCOLS)
    return [
        at(
            f"{path}.protocol",
            f"{hc.protocol!r} health checks are not enforced (checked: {known}): its hosts"
            " are never checked",
        )
    ]
