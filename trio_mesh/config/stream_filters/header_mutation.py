"""Config of the ``header_mutation`` stream filter (Envoy's filter of that name; MOSN has
route-level header lists only, whose keys are accepted here too), and the grammar of its
``%VARIABLE%`` values, checked at load time."""

from __future__ import annotations

import re

from attrs import frozen

from ..routes import (
    HeaderValueOption,
    Problem,
    _header_value_problem,
    _mutable_header_problem,
    _raise,
    header_name_problem,
)

#: Variables a value may use on both sides (Envoy's names), and ``%METHOD%``, ``%PATH%``,
#: ``%AUTHORITY%`` for the request line's parts.
REQUEST_VARIABLES = (
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "PROTOCOL",
    "METHOD",
    "PATH",
    "AUTHORITY",
    "ROUTE_NAME",
    "UPSTREAM_CLUSTER",
    "LISTENER_NAME",
    "START_TIME",
    "HOSTNAME",
)
#: Known once a host is chosen: on responses only.
RESPONSE_VARIABLES = ("UPSTREAM_HOST",)

# ``%name%`` with no whitespace or ``%`` in the name; ``%%`` is a literal ``%`` (the access
# log's grammar). ``REQ(a?b)`` is the request header ``a``, or ``b`` when ``a`` is absent.
_VARIABLE = re.compile(r"%([^%\s]*)%")
_HEADER_VARIABLE = re.compile(r"(REQ|RESP)\(([^()]+)\)")

#: A piece of a value: literal text, a variable's name, or ``("REQ"|"RESP", (names...))``.
Part = str | tuple[str, tuple[str, ...]]


def parse_value(value: str, response: bool) -> tuple[Part, ...]:
    """The pieces of a header value template: literal ``str`` pieces and ``(kind, arg)``
    variables (``("VAR", (name,))``, ``("REQ", names)``, ``("RESP", names)``). Raises
    ``ValueError`` for an unknown variable, or one the side (request or response) lacks."""
    parts: list[Part] = []
    literal: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(value):
        literal.append(value[position : match.start()])
        position = match.end()
        name = match.group(1)
        if not name:
            literal.append("%")
            continue
        if text := "".join(literal):
            parts.append(text)
        literal = []
        parts.append(_variable(name, response))
    literal.append(value[position:])
    if text := "".join(literal):
        parts.append(text)
    return tuple(parts)


def _variable(name: str, response: bool) -> tuple[str, tuple[str, ...]]:
    header = _HEADER_VARIABLE.fullmatch(name)
    if header is not None:
        kind, arg = header.groups()
        if kind == "RESP" and not response:
            raise ValueError(f"%{name}% is known on responses only")
        names = tuple(n.strip().lower() for n in arg.split("?"))
        if not all(names) or any(_bad_name(n) for n in names):
            raise ValueError(f"%{name}%: expected header names, as in %REQ(x-name)%")
        return kind, names
    if name in REQUEST_VARIABLES or (response and name in RESPONSE_VARIABLES):
        return "VAR", (name,)
    if name in RESPONSE_VARIABLES:
        raise ValueError(f"%{name}% is known on responses only (no host is chosen yet)")
    known = [*REQUEST_VARIABLES, *(RESPONSE_VARIABLES if response else ()), "REQ(name)"]
    if response:
        known.append("RESP(name)")
    raise ValueError(f"unknown variable %{name}% (known: {', '.join(known)}; %% for a %)")


def _bad_name(name: str) -> bool:
    # reading any header is fine, the host and pseudo-headers too
    return header_name_problem(name.removeprefix(":")) is not None


@frozen(kw_only=True)
class HeaderEntry:
    """One header to add or set: ``{key, value}``. A value that renders empty (a variable
    with no value, such as an absent request header) is not written, unless
    ``keep_empty_value`` (Envoy's rule and key)."""

    key: str
    value: str
    keep_empty_value: bool = False

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if (p := _mutable_header_problem(self.key)) is not None:
            problems.append((("key",), p))
        if (p := _header_value_problem(self.value)) is not None:
            problems.append((("value",), p))
        _raise(problems)


@frozen(kw_only=True)
class HeaderMutations:
    """The changes to one side's headers, applied in this order: ``remove`` every value of
    each name, ``set`` (replace every value of the name, or add it), ``add`` (another value,
    keeping those there)."""

    add: tuple[HeaderEntry, ...] = ()
    set: tuple[HeaderEntry, ...] = ()
    remove: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        _raise(
            [
                (("remove", i), p)
                for i, name in enumerate(self.remove)
                if (p := _mutable_header_problem(name)) is not None
            ]
        )

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove)


@frozen(kw_only=True)
class HeaderMutationConfig:
    """The ``header_mutation`` stream filter: changes request headers (before they go
    upstream) and response headers (before they go downstream)::

        request:
          add:    [{key: x-client, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]
          set:    [{key: x-route, value: "%ROUTE_NAME%"}]
          remove: [x-internal-token]
        response:
          set:    [{key: x-served-by, value: "%UPSTREAM_HOST%"}]
          remove: [server]

    MOSN's route-level keys work here too (``append: false`` is ``set``)::

        request_headers_to_add: [{header: {key: x-a, value: "1"}, append: true}]
        request_headers_to_remove: [x-b]
        response_headers_to_add: [...]
        response_headers_to_remove: [...]

    Values are text with ``%VARIABLE%`` pieces rendered per request (``%%`` is a ``%``):
    DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_REMOTE_PORT,
    DOWNSTREAM_LOCAL_ADDRESS (and _WITHOUT_PORT, _PORT), PROTOCOL, METHOD, PATH (with the
    query), AUTHORITY, ROUTE_NAME, UPSTREAM_CLUSTER, LISTENER_NAME, START_TIME (ISO 8601 UTC
    with milliseconds, when the request reached the filter), HOSTNAME, ``REQ(name)`` (the
    request header's first value; ``REQ(a?b)``: ``a``, else ``b``); on responses also
    UPSTREAM_HOST and ``RESP(name)``. Variables see the headers as they reached the filter,
    before its own changes. An unknown variable is a load error with its path.
    """

    request: HeaderMutations = HeaderMutations()
    response: HeaderMutations = HeaderMutations()
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        for side, response in (("request", False), ("response", True)):
            mutations: HeaderMutations = getattr(self, side)
            for op in ("add", "set"):
                for i, entry in enumerate(getattr(mutations, op)):
                    try:
                        parse_value(entry.value, response)
                    except ValueError as exc:
                        problems.append(((side, op, i, "value"), str(exc)))
            for i, option in enumerate(getattr(self, f"{side}_headers_to_add")):
                try:
                    parse_value(option.header.value, response)
                except ValueError as exc:
                    problems.append(((f"{side}_headers_to_add", i, "header", "value"), str(exc)))
            problems += [
                ((f"{side}_headers_to_remove", i), p)
                for i, name in enumerate(getattr(self, f"{side}_headers_to_remove"))
                if (p := _mutable_header_problem(name)) is not None
            ]
        _raise(problems)

    def side(self, response: bool) -> HeaderMutations:
        """One side's changes, MOSN's route-level keys folded in (after the others)."""
        name = "response" if response else "request"
        mutations: HeaderMutations = getattr(self, name)
        options: tuple[HeaderValueOption, ...] = getattr(self, f"{name}_headers_to_add")
        removals: tuple[str, ...] = getattr(self, f"{name}_headers_to_remove")
        if not options and not removals:
            return mutations
        entries = [(HeaderEntry(key=o.header.key, value=o.header.value), o.append) for o in options]
        return HeaderMutations(
            add=mutations.add + tuple(e for e, append in entries if append),
            set=mutations.set + tuple(e for e, append in entries if not append),
            remove=mutations.remove + removals,
        )
