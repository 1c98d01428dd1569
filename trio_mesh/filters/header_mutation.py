"""The ``header_mutation`` stream filter: add, set and remove request and response headers,
with ``%VARIABLE%`` values rendered per request.

`HeaderMutation.factory` compiles each side once: names lower-cased and encoded, values
without variables encoded, each variable turned into a small function. A side with nothing
to do costs nothing: the filter class picked overrides only the hooks it needs, and when no
value has a variable one filter object serves every request.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from ..config.scalars import format_hostport
from ..config.stream_filters.header_mutation import (
    HeaderMutationConfig,
    HeaderMutations,
    Part,
    parse_value,
)
from .stream import (
    FactoryResult,
    Headers,
    LocalReply,
    RequestContext,
    StreamFilter,
    register_stream_filter,
)

__all__ = ["HeaderMutation"]

#: ``render(filter, headers) -> bytes``: one variable's value (``b""``: none).
Render = Callable[[Any, Headers], bytes]


def _b(text: str | None) -> bytes:
    """Header bytes of a ``str`` (latin-1, as the `Headers` view decodes them)."""
    if not text:
        return b""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _host(address: tuple | None) -> bytes:
    return _b(str(address[0])) if address else b""


def _port(address: tuple | None) -> bytes:
    return b"%d" % address[1] if address and len(address) > 1 else b""


def _hostport(address: tuple | None) -> bytes:
    if not address:
        return b""
    if len(address) < 2:
        return _host(address)
    return _b(format_hostport(str(address[0]), address[1]))


def start_time(timestamp: float) -> str:
    """Envoy's default START_TIME: ISO 8601 in UTC with milliseconds."""
    seconds = int(timestamp)
    millis = int((timestamp - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


_HOSTNAME = _b(socket.gethostname())
_VARIABLES: dict[str, Render] = {
    "DOWNSTREAM_REMOTE_ADDRESS": lambda f, h: _hostport(f.context.downstream_remote),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda f, h: _host(f.context.downstream_remote),
    "DOWNSTREAM_REMOTE_PORT": lambda f, h: _port(f.context.downstream_remote),
    "DOWNSTREAM_LOCAL_ADDRESS": lambda f, h: _hostport(f.context.downstream_local),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda f, h: _host(f.context.downstream_local),
    "DOWNSTREAM_LOCAL_PORT": lambda f, h: _port(f.context.downstream_local),
    "PROTOCOL": lambda f, h: _b(f.context.protocol),
    "METHOD": lambda f, h: _b(f.context.method),
    "PATH": lambda f, h: _b(f.context.path),
    "AUTHORITY": lambda f, h: _b(f.context.authority),
    "ROUTE_NAME": lambda f, h: _b(f.context.route.name) if f.context.route is not None else b"",
    "UPSTREAM_CLUSTER": lambda f, h: _b(f.context.cluster),
    "LISTENER_NAME": lambda f, h: _b(f.context.listener),
    "UPSTREAM_HOST": lambda f, h: _b(f.context.upstream_host),
    "START_TIME": lambda f, h: _b(start_time(f.start)),
}
# Pseudo-headers read through REQ(): HTTP/1 has none, so they come from the context.
_PSEUDO: dict[bytes, Callable[[RequestContext], str | None]] = {
    b":method": lambda c: c.method,
    b":path": lambda c: c.path,
    b":authority": lambda c: c.authority,
}


def _from_headers(names: tuple[bytes, ...]) -> Render:
    return lambda f, headers: _header_value(f.context, headers, names)


def _from_capture(index: int) -> Render:
    """The value the request had (kept by the request hook), for a response."""
    return lambda f, headers: f.captured[index]


def _header_value(context: RequestContext, headers: Headers, names: tuple[bytes, ...]) -> bytes:
    """The first value of the first of ``names`` present (``host``: the authority when the
    request has no Host header, as over HTTP/2)."""
    raw = headers.raw
    for name in names:
        pseudo = _PSEUDO.get(name)
        if pseudo is not None:
            value = pseudo(context)
            if value:
                return _b(value)
            continue
        for n, v in raw:
            if n == name or n.lower() == name:
                return v
        if name == b"host" and context.authority:
            return _b(context.authority)
    return b""


class _Side:
    """One side's changes, compiled. ``ops``: ``(append, name, value or None, render or
    None, keep_empty)``, sets before adds; ``captures``: the ``REQ()`` names a response
    value reads, taken from the request."""

    __slots__ = ("apply", "dynamic", "ops", "removes", "statics")

    def __init__(
        self, mutations: HeaderMutations, response: bool, captures: list[tuple[bytes, ...]]
    ) -> None:
        ops = []
        for append, entries in ((False, mutations.set), (True, mutations.add)):
            for entry in entries:
                name = entry.key.lower().encode("latin-1")
                static, render = _compile(parse_value(entry.value, response), response, captures)
                if render is None and not static and not entry.keep_empty_value:
                    continue  # an empty value is not written (Envoy's rule)
                ops.append((append, name, static, render, entry.keep_empty_value))
        self.ops = tuple(ops)
        self.removes = frozenset(n.lower().encode("latin-1") for n in mutations.remove)
        self.dynamic = any(op[3] is not None for op in ops)
        self.statics = tuple(op[2] for op in ops)
        #: ``apply(filter, headers)``: the general case, or a shortcut for a common one.
        self.apply: Callable[[Any, Headers], None] = self._fast() or self._apply

    def __bool__(self) -> bool:
        return bool(self.ops or self.removes)

    def _fast(self) -> Callable[[Any, Headers], None] | None:
        """A shorter ``apply`` for a side with no removals and only added static values, or
        a single operation (no rendering ahead needed: nothing else changes the block)."""
        if self.removes:
            return None
        ops = self.ops
        if not self.dynamic and all(op[0] for op in ops):
            pairs = tuple((op[1], op[2]) for op in ops)

            def add_statics(f: Any, headers: Headers) -> None:
                headers.raw.extend(pairs)
                headers.changed = True

            return add_statics
        if len(ops) != 1:
            return None
        append, name, static, render, keep = ops[0]

        def one(f: Any, headers: Headers) -> None:
            value = static if render is None else render(f, headers)
            if value or keep:
                if append:
                    headers.raw.append((name, value))
                else:
                    _set(headers.raw, name, value)
                headers.changed = True

        return one

    def _apply(self, f: Any, headers: Headers) -> None:
        raw = headers.raw
        ops = self.ops
        # Every value is rendered first: variables see the headers as they reached us.
        values = (
            [static if render is None else render(f, headers) for _, _, static, render, _ in ops]
            if self.dynamic
            else self.statics
        )
        changed = False
        removes = self.removes
        if removes:
            kept = [h for h in raw if h[0].lower() not in removes]
            if len(kept) != len(raw):
                raw[:] = kept
                changed = True
        for (append, name, _, _, keep), value in zip(ops, values, strict=True):
            if not value and not keep:
                continue
            if append:
                raw.append((name, value))
            else:
                _set(raw, name, value)
            changed = True
        if changed:
            headers.changed = True


def _set(raw: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    """Every value of ``name`` replaced by ``value``, in the first one's place."""
    found = False
    i = 0
    while i < len(raw):
        n = raw[i][0]
        if n == name or n.lower() == name:
            if found:
                del raw[i]
                continue
            raw[i] = (name, value)
            found = True
        i += 1
    if not found:
        raw.append((name, value))


def _compile(
    parts: tuple[Part, ...], response: bool, captures: list[tuple[bytes, ...]]
) -> tuple[bytes, Render | None]:
    """``(bytes, None)`` for a value without variables, else ``(b"", render)``."""
    pieces: list[bytes | Render] = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(_b(part))
            continue
        kind, args = part
        if kind == "VAR":
            # the host name is known now: a constant
            pieces.append(_HOSTNAME if args[0] == "HOSTNAME" else _VARIABLES[args[0]])
        elif kind == "RESP" or not response:
            names = tuple(n.encode("latin-1") for n in args)
            pieces.append(_from_headers(names))
        else:  # REQ() on a response: the value the request had, kept by the request hook
            names = tuple(n.encode("latin-1") for n in args)
            if names not in captures:
                captures.append(names)
            index = captures.index(names)
            pieces.append(_from_capture(index))
    constants = [p for p in pieces if isinstance(p, bytes)]
    if len(constants) == len(pieces):
        return b"".join(constants), None
    if len(pieces) == 1 and not isinstance(pieces[0], bytes):
        return b"", pieces[0]
    frozen = tuple(pieces)

    def render(f: Any, headers: Headers) -> bytes:
        return b"".join(p if isinstance(p, bytes) else p(f, headers) for p in frozen)

    return b"", render


class _Plan:
    __slots__ = ("captures", "config", "request", "response", "start")

    def __init__(self, config: HeaderMutationConfig) -> None:
        self.config = config
        self.captures: list[tuple[bytes, ...]] = []
        self.request = _Side(config.side(False), False, [])
        self.response = _Side(config.side(True), True, self.captures)
        #: START_TIME is used: the request hook notes the time.
        self.start = any(
            "START_TIME" in entry.value
            for side in (config.side(False), config.side(True))
            for entry in (*side.add, *side.set)
        )


class HeaderMutation(StreamFilter):
    """Both sides (and what the response side reads of the request: ``REQ()``, the start
    time). The factory picks a narrower class when only one side has work."""

    config_class = HeaderMutationConfig
    #: Set by the request hook when the plan needs them (class defaults otherwise).
    start: float = 0.0
    captured: tuple[bytes, ...] = ()

    def __init__(self, plan: _Plan, context: RequestContext | None) -> None:
        # (no super().__init__: one call fewer per request; these are all its attributes)
        self.config = plan.config
        self.context = context  # type: ignore[assignment]
        self.plan = plan

    @classmethod
    def factory(cls, config: HeaderMutationConfig, build: object) -> FactoryResult:
        plan = _Plan(config)
        request, response = plan.request, plan.response
        needs_request = bool(request) or bool(plan.captures) or (plan.start and bool(response))
        if not needs_request and not response:
            return None
        if not needs_request:
            kind: type[HeaderMutation] = _ResponseOnly
        elif not response:
            kind = _RequestOnly
        else:
            kind = HeaderMutation
        if not (request.dynamic or response.dynamic):
            # Nothing per request to remember or render: one object serves them all.
            shared = kind(plan, None)
            return shared
        return lambda context: kind(plan, context)

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        plan = self.plan
        if plan.start:
            self.start = time.time()
        if plan.captures:
            context = self.context
            self.captured = tuple(_header_value(context, headers, n) for n in plan.captures)
        plan.request.apply(self, headers)
        return None

    async def on_response_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        self.plan.response.apply(self, headers)
        return None


class _RequestOnly(HeaderMutation):
    on_response_headers = StreamFilter.on_response_headers  # not called: see hook_mask


class _ResponseOnly(HeaderMutation):
    on_request_headers = StreamFilter.on_request_headers


register_stream_filter("header_mutation", HeaderMutation, HeaderMutationConfig)
