"""Route configuration (``servers[].routers[]``) in MOSN's shape: router configs, virtual
hosts, routes with match and action.

Keys are MOSN's (``routers`` is MOSN's name for a virtual host's route list, each entry a
``Route``), with Envoy's where MOSN has none (``query_parameters``, ``strip_query``...).

Rules that span several fields (exactly one action, valid regexes, unique domains...) are checked
when a class is built, so a configuration made in Python (xDS) is checked like a file. Such a
check raises ``ValueError`` carrying cattrs' path notes, so the loader reports it as
``servers[0].routers[0].virtual_hosts[0].routers[1].match.regex: invalid regex: ...``. One
class reports its first failing field (with every problem below it); the others appear once it
is fixed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar

import attrs
from attrs import frozen
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)

from . import refused
from .refused import Refusal
from .scalars import Duration, PositiveInt
from .subset import check_match

# --------------------------------------------------------------------------- per-filter config


class _FilterDisabled:
    def __repr__(self) -> str:
        return "FILTER_DISABLED"


#: A route's ``per_filter_config`` entry ``{disabled: true}``: that filter is off on the route.
FILTER_DISABLED: Any = _FilterDisabled()


@frozen
class PerFilterConfig:
    """A route's ``per_filter_config`` (MOSN's key; Envoy's ``typed_per_filter_config``):
    stream filter type -> its config on this route, in place of the listener's, or
    `FILTER_DISABLED`. Each value is checked against the filter type's config class."""

    configs: dict[str, Any] = attrs.field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self.configs)

    def __contains__(self, name: object) -> bool:
        return name in self.configs

    def __getitem__(self, name: str) -> Any:
        return self.configs[name]


# --------------------------------------------------------------------------- located errors

#: ``(path below the class being built, reason)``; a path segment is a field name or an index.
Problem = tuple[tuple[str | int, ...], str]


def _note(exc: Exception, seg: str | int) -> Exception:
    note: str = (
        AttributeValidationNote(f"Validating @ {seg}", seg, Any)
        if isinstance(seg, str)
        else IterableValidationNote(f"Validating @ index {seg}", seg, Any)
    )
    exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    return exc


class _FieldErrors(ClassValidationError, ValueError):
    """Problems under one field; a ``ValueError`` for callers that build classes in Python."""


class _ItemErrors(IterableValidationError, ValueError):
    """Problems under list items."""


def _format(seg: str | int, path: tuple[str | int, ...]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in (seg, *path))


def _tree(seg: str | int, problems: list[Problem]) -> Exception:
    """One exception for every problem under ``seg``, shaped as ``cattrs.transform_error``
    walks them: a class node holds field-noted children, a list node index-noted ones."""
    leaves: list[Exception] = [ValueError(reason) for path, reason in problems if not path]
    groups: dict[str | int, list[Problem]] = {}
    for path, reason in problems:
        if path:
            groups.setdefault(path[0], []).append((path[1:], reason))
    children = [_tree(s, sub) for s, sub in groups.items()]
    if not children and len(leaves) == 1:
        return _note(leaves[0], seg)
    group_cls = _ItemErrors if any(isinstance(s, int) for s in groups) else _FieldErrors
    message = "; ".join(f"{_format(seg, path).lstrip('.')}: {reason}" for path, reason in problems)
    return _note(group_cls(message, [*leaves, *children], object), seg)


def _raise(problems: list[Problem]) -> None:
    """Raise the first problem, together with every other one under the same field."""
    if not problems:
        return
    path, reason = problems[0]
    if not path:  # about the class as a whole: reported at its own path
        raise ValueError(reason)
    first = path[0]
    raise _tree(first, [(p[1:], r) for p, r in problems if p and p[0] == first])


# --------------------------------------------------------------------------- value checks

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


def header_name_problem(name: str) -> str | None:
    if not name or not all(c in _TCHAR for c in name):
        return f"invalid header name {name!r}"
    return None


def _mutable_header_problem(name: str) -> str | None:
    if name.startswith(":") or name.lower() == "host":
        # as Envoy: the authority is changed with host_rewrite, pseudo-headers not at all
        return f"header {name!r} may not be added or removed (use host_rewrite for the host)"
    return header_name_problem(name)


def _header_value_problem(value: str) -> str | None:
    if any(c in value for c in "\r\n\0"):
        return f"header value may not contain CR, LF or NUL, got {value!r}"
    return None


def regex_problem(pattern: str, flags: int = 0) -> str | None:
    try:
        re.compile(pattern, flags)
    except re.error as exc:
        return f"invalid regex: {exc}"
    return None


def _status_problem(status: int) -> str | None:
    if not 100 <= status <= 599:
        return f"expected an HTTP status from 100 to 599, got {status}"
    return None


def _removals(field: str, names: Iterable[str]) -> list[Problem]:
    return [
        ((field, i), problem)
        for i, name in enumerate(names)
        if (problem := _mutable_header_problem(name)) is not None
    ]


def _exactly_one(given: dict[str, bool], *, at_most: bool = False) -> list[Problem]:
    chosen = [name for name, present in given.items() if present]
    if len(chosen) == 1 or (at_most and not chosen):
        return []
    names = ", ".join(given)
    got = ", ".join(chosen) or "none"
    return [((), f"give {'at most' if at_most else 'exactly'} one of {names} (got {got})")]


# --------------------------------------------------------------------------- headers


@frozen(kw_only=True)
class HeaderValue:
    key: str
    value: str

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if (p := _mutable_header_problem(self.key)) is not None:
            problems.append((("key",), p))
        if (p := _header_value_problem(self.value)) is not None:
            problems.append((("value",), p))
        _raise(problems)


@frozen(kw_only=True)
class HeaderValueOption:
    """``{header: {key, value}, append}`` as MOSN and Envoy write it. ``append: false``
    replaces every value the header had."""

    header: HeaderValue
    append: bool = True


def _header_problems(obj: RouterConfig | VirtualHost | RouteAction) -> list[Problem]:
    return _removals("request_headers_to_remove", obj.request_headers_to_remove) + _removals(
        "response_headers_to_remove", obj.response_headers_to_remove
    )


# --------------------------------------------------------------------------- match


@frozen(kw_only=True)
class HeaderMatcher:
    """Matches when header ``name`` (its first value) equals ``value``, or fully matches it
    with ``regex: true``, or with ``present: true`` when the header is there at all.
    ``invert`` negates the result; a value matcher never matches an absent header, inverted
    or not (Envoy's rule)."""

    name: str
    value: str | None = None
    regex: bool = False
    present: bool = False
    invert: bool = False

    def __attrs_post_init__(self) -> None:
        _raise(_matcher_problems(self, header=True))


@frozen(kw_only=True)
class QueryParameterMatcher:
    """Matches when query parameter ``name`` (its first value, percent-decoded) equals
    ``value``, or fully matches it with ``regex: true``, or with ``present: true`` when the
    parameter is there."""

    name: str
    value: str | None = None
    regex: bool = False
    present: bool = False

    def __attrs_post_init__(self) -> None:
        _raise(_matcher_problems(self, header=False))


def _matcher_problems(m: HeaderMatcher | QueryParameterMatcher, header: bool) -> list[Problem]:
    problems: list[Problem] = []
    if header:
        # pseudo-headers (":method") may be matched, as in Envoy
        if (p := header_name_problem(m.name.removeprefix(":"))) is not None:
            problems.append((("name",), f"invalid header name {m.name!r}"))
    elif not m.name:
        problems.append((("name",), "a name is required"))
    if m.present:
        if m.value is not None or m.regex:
            problems.append(((), "give value (and regex) or present: true, not both"))
    elif m.value is None:
        problems.append(((), "give value, or present: true"))
    elif m.regex and (p := regex_problem(m.value)) is not None:
        problems.append((("value",), p))
    return problems


@frozen(kw_only=True)
class RouteMatch:
    """At most one of ``prefix``, ``path`` (the whole path) and ``regex`` (a full match of
    the path without the query); none means ``prefix: "/"``. ``case_sensitive`` applies to
    those three. All ``headers`` and ``query_parameters`` must match too."""

    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    case_sensitive: bool = True
    headers: tuple[HeaderMatcher, ...] = ()
    query_parameters: tuple[QueryParameterMatcher, ...] = ()

    # Ignored conditions would let the route match requests they exclude.
    MOSN_REFUSED: ClassVar[dict[str, Refusal]] = {
        key: (
            refused.given,
            f"{key} match conditions are not supported yet: the route would"
            " match requests they exclude",
        )
        for key in ("variables", "dsl_expressions")
    }

    def __attrs_post_init__(self) -> None:
        problems = _exactly_one(
            {
                "prefix": self.prefix is not None,
                "path": self.path is not None,
                "regex": self.regex is not None,
            },
            at_most=True,
        )
        if self.regex is not None and (p := regex_problem(self.regex)) is not None:
            problems.append((("regex",), p))
        _raise(problems)


# --------------------------------------------------------------------------- route action


@frozen(kw_only=True)
class ClusterWeight:
    name: str = attrs.field(metadata={"refers_to": "cluster"})  # as cluster_ref()
    weight: PositiveInt
    #: Merged over the route action's ``metadata_match`` for this cluster (subset balancing).
    metadata_match: dict[str, Any] | None = None


@frozen(kw_only=True)
class WeightedCluster:
    """One entry of ``weighted_clusters`` as MOSN writes it: ``{cluster: {name, weight}}``."""

    cluster: ClusterWeight


@frozen(kw_only=True)
class RegexPattern:
    """Envoy's and MOSN's regex matcher, ``{regex: "..."}``; Python's ``re`` syntax."""

    regex: str

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset({"google_re2"})

    def __attrs_post_init__(self) -> None:
        if (p := regex_problem(self.regex)) is not None:
            _raise([(("regex",), p)])


@frozen(kw_only=True)
class RegexRewrite:
    """Every match of ``pattern`` in the path is replaced by ``substitution`` (``\\1`` for
    a group)."""

    pattern: RegexPattern
    substitution: str = ""

    def __attrs_post_init__(self) -> None:
        try:
            re.compile(self.pattern.regex).sub(self.substitution, "")  # parses the template
        except (re.error, IndexError) as exc:
            _raise([(("substitution",), f"invalid substitution: {exc}")])


#: Valid ``retry_on`` conditions (Envoy's names).
RETRY_CONDITIONS = frozenset(
    {"connect-failure", "reset", "5xx", "gateway-error", "retriable-status-codes"}
)
#: What MOSN's ``retry_on: true`` means.
MOSN_RETRY_ON = frozenset({"connect-failure", "reset", "5xx"})


def parse_retry_on(value: Any) -> frozenset[str]:
    """MOSN's bool, Envoy's comma-separated string, or a list of conditions."""
    if isinstance(value, frozenset):
        items: list[Any] = list(value)
    elif isinstance(value, bool):
        return MOSN_RETRY_ON if value else frozenset()
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _tree("retry_on", [((), f"expected true, false, a string or a list, got {value!r}")])
    out = set()
    for item in items:
        if not isinstance(item, str):
            raise _tree("retry_on", [((), f"expected a retry condition, got {item!r}")])
        token = item.strip().lower()
        if not token:
            continue
        if token not in RETRY_CONDITIONS:
            valid = ", ".join(sorted(RETRY_CONDITIONS))
            raise _tree("retry_on", [((), f"unknown retry condition {item!r} (valid: {valid})")])
        out.add(token)
    return frozenset(out)


@frozen(kw_only=True)
class RetryPolicy:
    """``retry_on`` is a frozenset of conditions once built; files write MOSN's bool
    (``true``: connect-failure, reset, 5xx), Envoy's ``"5xx,reset"`` or a list.
    ``retry_timeout`` is MOSN's name of ``per_try_timeout``: it moves there when built."""

    retry_on: Any = attrs.field(default=frozenset(), converter=parse_retry_on)
    num_retries: int = 1
    per_try_timeout: Duration | None = None
    retry_timeout: Duration | None = None
    retriable_status_codes: tuple[int, ...] = ()

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if self.num_retries < 0:
            problems.append((("num_retries",), f"expected 0 or more, got {self.num_retries}"))
        if self.per_try_timeout is not None and self.retry_timeout is not None:
            problems.append(((), "give per_try_timeout or its MOSN name retry_timeout, not both"))
        problems += [
            (("retriable_status_codes", i), p)
            for i, code in enumerate(self.retriable_status_codes)
            if (p := _status_problem(code)) is not None
        ]
        _raise(problems)
        if self.retry_timeout is not None:
            object.__setattr__(self, "per_try_timeout", self.retry_timeout)
            object.__setattr__(self, "retry_timeout", None)


# --------------------------------------------------------------------------- hash policy

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 6265: a token
_COOKIE_PATH = re.compile(r"[\x21-\x3a\x3c-\x7e]*")  # printable, no ';': nothing injected


@frozen(kw_only=True)
class HeaderHashPolicy:
    """Hash the value of request header ``key`` (RPC routes: a frame header, e.g.
    ``service``)."""

    key: str

    def __attrs_post_init__(self) -> None:
        if p := header_name_problem(self.key):
            _raise([(("key",), p)])


@frozen(kw_only=True)
class CookieHashPolicy:
    """Hash cookie ``name``. With ``ttl`` given, a request without it gets one made up and
    the response sets it (``Max-Age`` = ttl; ``0``: a session cookie), so the client sticks
    from its next request (Envoy's; without ``ttl`` nothing is generated)."""

    name: str
    path: str | None = None
    ttl: Duration | None = None

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if not _COOKIE_NAME.fullmatch(self.name):
            problems.append((("name",), f"invalid cookie name {self.name!r}"))
        if self.path is not None and not _COOKIE_PATH.fullmatch(self.path):
            problems.append((("path",), f"invalid cookie path {self.path!r}"))
        _raise(problems)


@frozen(kw_only=True)
class SourceIpHashPolicy:
    """Hash the client's IP address (Envoy's ``connection_properties.source_ip``)."""


@frozen(kw_only=True)
class QueryParameterHashPolicy:
    """Hash the value of query parameter ``name`` (Envoy's)."""

    name: str

    def __attrs_post_init__(self) -> None:
        if not self.name:
            _raise([(("name",), "a query parameter name is required")])


@frozen(kw_only=True)
class HashPolicy:
    """One input of a route's hash (exactly one of its keys); a route's policies are
    combined, each that finds its input adding to the key (Envoy's). Used only when the
    cluster's ``lb_type`` hashes (LB_MAGLEV, LB_RING_HASH)."""

    header: HeaderHashPolicy | None = None
    cookie: CookieHashPolicy | None = None
    source_ip: SourceIpHashPolicy | None = None
    query_parameter: QueryParameterHashPolicy | None = None

    def __attrs_post_init__(self) -> None:
        _raise(
            _exactly_one(
                {
                    "header": self.header is not None,
                    "cookie": self.cookie is not None,
                    "source_ip": self.source_ip is not None,
                    "query_parameter": self.query_parameter is not None,
                }
            )
        )


@frozen(kw_only=True)
class RouteAction:
    """Forward to a cluster: exactly one of ``cluster_name``, ``cluster_header`` (the cluster
    named by that request header) and ``weighted_clusters``. ``prefix_rewrite`` replaces the
    matched prefix (the whole path after a ``path`` or ``regex`` match); ``""`` means no
    rewrite, as in Envoy. ``timeout``: the whole request, ``"0s"`` for none."""

    cluster_name: str | None = attrs.field(default=None, metadata={"refers_to": "cluster"})
    cluster_header: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite: str | None = None
    auto_host_rewrite: bool = False
    timeout: Duration = Duration(15.0)
    retry_policy: RetryPolicy | None = None
    hash_policy: tuple[HashPolicy, ...] = ()
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()
    #: The hosts' metadata a subset-balanced cluster picks by (``config/subset.py``).
    metadata_match: dict[str, Any] | None = None

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {
            "auto_host_rewrite_header",
            "mirror_policies",
            "cluster_variable",
        }
    )

    def __attrs_post_init__(self) -> None:
        problems = _exactly_one(
            {
                "cluster_name": self.cluster_name is not None,
                "cluster_header": self.cluster_header is not None,
                "weighted_clusters": bool(self.weighted_clusters),
            },
        )
        if self.cluster_header is not None and (p := header_name_problem(self.cluster_header)):
            problems.append((("cluster_header",), p))
        if self.prefix_rewrite is not None and self.regex_rewrite is not None:
            problems.append(((), "give prefix_rewrite or regex_rewrite, not both"))
        if self.host_rewrite is not None:
            if self.auto_host_rewrite:
                problems.append(((), "give host_rewrite or auto_host_rewrite, not both"))
            if not self.host_rewrite or any(c.isspace() or c in "/?#" for c in self.host_rewrite):
                problems.append((("host_rewrite",), f"invalid host {self.host_rewrite!r}"))
        problems += _header_problems(self)
        problems += [((), e) for e in check_match(self.metadata_match, "metadata_match")]
        for i, w in enumerate(self.weighted_clusters):
            problems += [
                ((), e)
                for e in check_match(
                    w.cluster.metadata_match, f"weighted_clusters[{i}].cluster.metadata_match"
                )
            ]
        _raise(problems)


REDIRECT_CODES = (301, 302, 303, 307, 308)


@frozen(kw_only=True)
class RedirectAction:
    """Answer with a redirect to the request's URL with these parts replaced. A query in
    ``path_redirect`` replaces the request's (and survives ``strip_query``); ``prefix_rewrite``
    works as a route action's."""

    scheme_redirect: str | None = None
    host_redirect: str | None = None
    path_redirect: str | None = None
    prefix_rewrite: str | None = None
    response_code: int = 301
    strip_query: bool = False

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if self.scheme_redirect is not None and not _SCHEME.fullmatch(self.scheme_redirect):
            problems.append((("scheme_redirect",), f"invalid scheme {self.scheme_redirect!r}"))
        host = self.host_redirect
        if host is not None and (not host or any(c.isspace() or c in "/?#" for c in host)):
            problems.append((("host_redirect",), f"invalid host {host!r}"))
        if self.path_redirect is not None and self.prefix_rewrite is not None:
            problems.append(((), "give path_redirect or prefix_rewrite, not both"))
        if self.response_code not in REDIRECT_CODES:
            codes = ", ".join(map(str, REDIRECT_CODES))
            problems.append(
                (("response_code",), f"expected one of {codes}, got {self.response_code}")
            )
        for key, value in (
            ("path_redirect", self.path_redirect),
            ("prefix_rewrite", self.prefix_rewrite),
        ):
            if value is None:
                continue
            if any(c.isspace() for c in value):
                problems.append(((key,), f"a path may not contain white space, got {value!r}"))
            elif key == "path_redirect" and not value.startswith("/"):
                problems.append(((key,), f"expected a path starting with '/', got {value!r}"))
        _raise(problems)


@frozen(kw_only=True)
class DirectResponseAction:
    status: int
    body: str = ""

    def __attrs_post_init__(self) -> None:
        if (p := _status_problem(self.status)) is not None:
            _raise([(("status",), p)])


# --------------------------------------------------------------------------- routes


@frozen(kw_only=True)
class Route:
    """One entry of a virtual host's ``routers``: ``match`` and exactly one action."""

    name: str | None = None
    match: RouteMatch = RouteMatch()
    route: RouteAction | None = None
    redirect: RedirectAction | None = None
    direct_response: DirectResponseAction | None = None
    #: Stream filter type -> its config for requests on this route (``{disabled: true}``:
    #: the listener's filter of that type does not run for them).
    per_filter_config: PerFilterConfig = PerFilterConfig()

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset({"metadata", "request_mirror_policies"})

    def __attrs_post_init__(self) -> None:
        _raise(
            _exactly_one(
                {
                    "route": self.route is not None,
                    "redirect": self.redirect is not None,
                    "direct_response": self.direct_response is not None,
                },
            )
        )


def domain_problem(domain: str) -> str | None:
    """Exact (``a.com``), suffix (``*.a.com``), prefix (``a.*``) or any (``*``); no port."""
    if domain == "*":
        return None
    stars = domain.count("*")
    if (
        not domain
        or stars > 1
        or (stars == 1 and domain[0] != "*" and domain[-1] != "*")
        or any(c.isspace() or c in "/?#" for c in domain)
    ):
        return f"expected a domain such as 'a.com', '*.a.com', 'a.*' or '*', got {domain!r}"
    if (":" in domain and not domain.startswith("[")) or "]:" in domain:
        return f"domains are matched without the port, got {domain!r}"
    return None


@frozen(kw_only=True)
class VirtualHost:
    """Routes for the requests whose host matches one of ``domains``; the first matching
    entry of ``routers`` wins."""

    name: str = ""
    domains: tuple[str, ...] = ()
    routers: tuple[Route, ...] = ()
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()

    MOSN_REFUSED: ClassVar[dict[str, Refusal]] = {
        "require_tls": (
            refused.require_tls_on,
            "require_tls is not enforced yet: requests over cleartext would be served (remove"
            " the key, or set it to NONE)",
        ),
        # A filter's config here (ip_access, say) would tighten access on this host.
        "per_filter_config": (
            refused.given,
            "per-virtual-host filter configs are not supported yet: give per_filter_config"
            " on each route instead",
        ),
    }

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if not self.domains:
            problems.append((("domains",), "a virtual host needs at least one domain"))
        problems += [
            (("domains", i), p)
            for i, d in enumerate(self.domains)
            if (p := domain_problem(d)) is not None
        ]
        problems += _header_problems(self)
        _raise(problems)


@frozen(kw_only=True)
class RouterConfig:
    """A named route table, compiled by ``trio_mesh.router``. A domain may appear in one
    virtual host only (domains compare case-insensitively)."""

    router_config_name: str
    virtual_hosts: tuple[VirtualHost, ...] = ()
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        seen: dict[str, int] = {}
        for vi, vhost in enumerate(self.virtual_hosts):
            for di, domain in enumerate(vhost.domains):
                key = domain.lower()
                if key not in seen:
                    seen[key] = vi
                    continue
                if key == "*":
                    reason = (
                        f"a second default virtual host '*' (first: virtual_hosts[{seen[key]}])"
                    )
                else:
                    reason = f"duplicate domain {domain!r} (also in virtual_hosts[{seen[key]}])"
                problems.append((("virtual_hosts", vi, "domains", di), reason))
        _raise(problems + _header_problems(self))
