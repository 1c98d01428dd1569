"""Route tables compiled from a ``RouterConfig``: pure, no I/O, built once per configuration.

Everything a request needs is computed here once: lower-cased domain tables, compiled regexes,
merged header mutations as bytes, timeouts in seconds. ``RouteTable.match`` then does dict
lookups, string comparisons and precompiled regex matches only.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from trio_mesh.config import routes as cfg
from trio_mesh.config.subset import MatchKey, match_key, match_values

from .hashing import HashPolicy, compile_hash_policy

#: ``header(name_lowercase)``: the request header's first value, or ``None``.
HeaderLookup = Callable[[str], str | None]
#: ``(lower-cased name, value, append)``
HeaderAdd = tuple[bytes, bytes, bool]


class _Frozen:
    """Slots set once by the constructor; assignment afterwards fails."""

    __slots__ = ()

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")


# --------------------------------------------------------------------------- retries


class RetryPolicy(_Frozen):
    """When and how often a request is tried again.

    ``retry_on_connect_failure`` and ``retry_on_reset`` say whether a failed connect or a
    reset/disconnect before the response is retried: ``connect-failure`` and ``reset`` ask for
    them, and, as in Envoy, ``5xx`` and ``gateway-error`` include both.
    """

    __slots__ = (
        "retry_on",
        "num_retries",
        "per_try_timeout",
        "retriable_status_codes",
        "retry_on_connect_failure",
        "retry_on_reset",
        "_any_5xx",
        "_gateway",
        "_codes",
    )
    retry_on: frozenset[str]
    num_retries: int
    per_try_timeout: float | None
    retriable_status_codes: frozenset[int]
    retry_on_connect_failure: bool
    retry_on_reset: bool
    _any_5xx: bool
    _gateway: bool
    _codes: frozenset[int]

    def __init__(self, config: cfg.RetryPolicy) -> None:
        on = frozenset(config.retry_on)
        codes = frozenset(config.retriable_status_codes)
        broad = "5xx" in on or "gateway-error" in on
        self._set(
            retry_on=on,
            num_retries=config.num_retries,
            per_try_timeout=config.per_try_timeout or None,
            retriable_status_codes=codes,
            retry_on_connect_failure=broad or "connect-failure" in on,
            retry_on_reset=broad or "reset" in on,
            _any_5xx="5xx" in on,
            _gateway="gateway-error" in on,
            _codes=codes if "retriable-status-codes" in on else frozenset(),
        )

    def should_retry_status(self, status: int) -> bool:
        """Whether a response with ``status`` is retried (``5xx``: 500-599;
        ``gateway-error``: 502, 503, 504; ``retriable-status-codes``: those listed)."""
        if self._any_5xx and 500 <= status <= 599:
            return True
        if self._gateway and status in (502, 503, 504):
            return True
        return status in self._codes

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(retry_on={sorted(self.retry_on)}, num_retries={self.num_retries}, "
            f"per_try_timeout={self.per_try_timeout}, "
            f"retriable_status_codes={sorted(self.retriable_status_codes)})"
        )


# --------------------------------------------------------------------------- redirects


class Redirect(_Frozen):
    """A compiled ``redirect`` action."""

    __slots__ = (
        "status",
        "_scheme",
        "_host",
        "_path",
        "_path_query",
        "_prefix_rewrite",
        "_prefix_len",
        "_strip_query",
    )
    status: int
    _scheme: str | None
    _host: str | None
    _path: str | None
    _path_query: str | None
    _prefix_rewrite: str | None
    _prefix_len: int | None
    _strip_query: bool

    def __init__(self, config: cfg.RedirectAction, prefix_len: int | None) -> None:
        path, path_query = config.path_redirect, None
        if path is not None and "?" in path:
            path, _, path_query = path.partition("?")
        self._set(
            status=config.response_code,
            _scheme=config.scheme_redirect.lower() if config.scheme_redirect else None,
            _host=config.host_redirect,
            _path=path,
            _path_query=path_query,
            _prefix_rewrite=config.prefix_rewrite or None,  # "": unset, as in Envoy
            _prefix_len=prefix_len,
            _strip_query=config.strip_query,
        )

    def location(self, scheme: str, host: str, path: str, query: str) -> tuple[int, str]:
        """``(status, Location value)`` for a request to ``scheme://host path?query``
        (``path`` without the query, ``query`` raw)."""
        if self._path is not None:
            path = self._path
            if self._path_query is not None:  # it replaces the request's, strip_query or not
                query = self._path_query
            elif self._strip_query:
                query = ""
        else:
            if self._prefix_rewrite is not None:
                path = _prefix_rewritten(path, self._prefix_rewrite, self._prefix_len)
            if self._strip_query:
                query = ""
        location = f"{self._scheme or scheme}://{self._host or host}{path}"
        if query:
            location = f"{location}?{query}"
        return self.status, location


def _prefix_rewritten(path: str, rewrite: str, prefix_len: int | None) -> str:
    """Envoy's prefix rewrite: the matched prefix is replaced; a route matched by its whole
    path or by a regex has the whole path replaced."""
    if prefix_len is None:
        return rewrite
    return rewrite + path[prefix_len:]


# --------------------------------------------------------------------------- routes


class Route(_Frozen):
    """A compiled route: what the proxy reads for each request it matched."""

    __slots__ = (
        "name",
        "direct_response",
        "redirect",
        "host_rewrite",
        "auto_host_rewrite",
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
        "timeout",
        "retry",
        "hash_policy",
        "per_filter_config",
        "subset_on",
        "_match",
        "_weighted_matches",
        "_cluster",
        "_cluster_header",
        "_clusters",
        "_cumulative",
        "_total",
        "_prefix_rewrite",
        "_prefix_len",
        "_regex_rewrite",
        "_substitution",
    )
    name: str | None
    direct_response: tuple[int, bytes] | None
    redirect: Redirect | None
    host_rewrite: str | None
    auto_host_rewrite: bool
    request_headers_to_add: tuple[HeaderAdd, ...]
    request_headers_to_remove: tuple[bytes, ...]
    response_headers_to_add: tuple[HeaderAdd, ...]
    response_headers_to_remove: tuple[bytes, ...]
    timeout: float | None
    retry: RetryPolicy | None
    #: The compiled ``hash_policy`` (``None``: the route has none).
    hash_policy: HashPolicy | None
    #: Stream filter type -> its config on this route (``cfg.FILTER_DISABLED``: off).
    per_filter_config: dict[str, Any]
    #: Whether the route has a ``metadata_match`` (the request path asks ``match_for`` only
    #: then: routes without one pay nothing).
    subset_on: bool
    _match: MatchKey | None
    _weighted_matches: dict[str, MatchKey]
    _cluster: str | None
    _cluster_header: str | None
    _clusters: tuple[str, ...]
    _cumulative: tuple[int, ...]
    _total: int
    _prefix_rewrite: str | None
    _prefix_len: int | None
    _regex_rewrite: re.Pattern[str] | None
    _substitution: str

    def __init__(
        self,
        config: cfg.Route,
        levels: tuple[cfg.RouterConfig, cfg.VirtualHost],
    ) -> None:
        match = config.match
        # the length of what a prefix match consumed; None: the whole path was matched
        prefix_len: int | None = None
        if match.path is None and match.regex is None:
            prefix_len = 1 if match.prefix is None else len(match.prefix)  # none: prefix "/"
        action = config.route
        mutations: list[Any] = [*levels, action] if action is not None else list(levels)
        weighted = action.weighted_clusters if action is not None else ()
        cumulative: list[int] = []
        for w in weighted:
            cumulative.append((cumulative[-1] if cumulative else 0) + w.cluster.weight)
        retry = action.retry_policy if action is not None else None
        rewrite = action.regex_rewrite if action is not None else None
        direct = config.direct_response
        base = match_values(action.metadata_match) if action is not None else None
        weighted_matches = {}
        for w in weighted:
            own = match_values(w.cluster.metadata_match)
            if own is not None:
                # Envoy's merge: the weighted cluster's keys over the route action's
                weighted_matches[w.cluster.name] = match_key({**(base or {}), **own})
        route_match = match_key(base) if base is not None else None
        self._set(
            name=config.name,
            direct_response=(direct.status, direct.body.encode()) if direct else None,
            redirect=Redirect(config.redirect, prefix_len) if config.redirect else None,
            host_rewrite=action.host_rewrite if action else None,
            auto_host_rewrite=action.auto_host_rewrite if action else False,
            request_headers_to_add=_adds(m.request_headers_to_add for m in mutations),
            request_headers_to_remove=_removes(m.request_headers_to_remove for m in mutations),
            response_headers_to_add=_adds(m.response_headers_to_add for m in mutations),
            response_headers_to_remove=_removes(m.response_headers_to_remove for m in mutations),
            timeout=(action.timeout or None) if action else None,
            retry=(
                RetryPolicy(retry)
                if retry is not None and retry.retry_on and retry.num_retries
                else None
            ),
            hash_policy=compile_hash_policy(action),
            per_filter_config=dict(config.per_filter_config.configs),
            subset_on=route_match is not None or bool(weighted_matches),
            _match=route_match,
            _weighted_matches=weighted_matches,
            _cluster=action.cluster_name if action else None,
            _cluster_header=(
                action.cluster_header.lower() if action and action.cluster_header else None
            ),
            _clusters=tuple(w.cluster.name for w in weighted),
            _cumulative=tuple(cumulative),
            _total=cumulative[-1] if cumulative else 0,
            _prefix_rewrite=(action.prefix_rewrite or None) if action else None,  # "": unset
            _prefix_len=prefix_len,
            _regex_rewrite=re.compile(rewrite.pattern.regex) if rewrite else None,
            _substitution=rewrite.substitution if rewrite else "",
        )

    def pick_cluster(self, header: HeaderLookup) -> str | None:
        """The cluster of this request: ``cluster_name``; the value of ``cluster_header``
        (``None`` if absent or empty); or a weighted random choice. ``None`` for routes
        that answer themselves (redirect, direct response)."""
        if self._cluster is not None:
            return self._cluster
        if self._cluster_header is not None:
            return header(self._cluster_header) or None
        clusters = self._clusters
        if clusters:
            i = bisect.bisect_right(self._cumulative, random.random() * self._total)
            return clusters[i] if i < len(clusters) else clusters[-1]
        return None

    def match_for(self, cluster: str) -> MatchKey | None:
        """The ``metadata_match`` key for a request to ``cluster`` (asked only when
        ``subset_on``): the weighted cluster's own merged match, else the route's."""
        return self._weighted_matches.get(cluster, self._match)

    def rewrite_path(self, path: str) -> str:
        """The upstream path (without the query): ``prefix_rewrite`` replaces the matched
        prefix (the whole path for ``path`` and ``regex`` matches, as in Envoy);
        ``regex_rewrite`` substitutes every match; otherwise ``path`` itself."""
        if self._prefix_rewrite is not None:
            return _prefix_rewritten(path, self._prefix_rewrite, self._prefix_len)
        if self._regex_rewrite is not None:
            return self._regex_rewrite.sub(self._substitution, path)
        return path

    def __repr__(self) -> str:
        return f"<Route {self.name!r}>"


def _adds(levels: Iterable[tuple[cfg.HeaderValueOption, ...]]) -> tuple[HeaderAdd, ...]:
    return tuple(
        (o.header.key.lower().encode("ascii"), o.header.value.encode(), o.append)
        for level in levels
        for o in level
    )


def _removes(levels: Iterable[tuple[str, ...]]) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(name.lower().encode("ascii") for level in levels for name in level))


def apply_header_mutations(
    headers: list[tuple[bytes, bytes]],
    add: tuple[HeaderAdd, ...],
    remove: tuple[bytes, ...],
) -> list[tuple[bytes, bytes]]:
    """Remove the headers named in ``remove``, then add ``add`` in order: ``append=True``
    adds another value, ``append=False`` replaces every value of that name (in place of the
    first). Names compare case-insensitively; ``headers`` is returned itself when there is
    nothing to do, and is never changed."""
    if not add and not remove:
        return headers
    if remove:
        out = [h for h in headers if h[0].lower() not in remove]
    else:
        out = list(headers)
    for name, value, append in add:
        if append:
            out.append((name, value))
            continue
        replaced: list[tuple[bytes, bytes]] = []
        found = False
        for h in out:
            if h[0].lower() != name:
                replaced.append(h)
            elif not found:
                replaced.append((name, value))
                found = True
        if not found:
            replaced.append((name, value))
        out = replaced
    return out


# --------------------------------------------------------------------------- matching

# path matcher kinds
_PREFIX, _PATH, _REGEX, _PREFIX_NOCASE, _PATH_NOCASE, _INDEXED = range(6)
# A run of at least this many routes that each match one header's exact value (and any path):
# one dict lookup instead of a scan (the registry's routes, one per subscribed interface).
_INDEX_MIN_RUN = 4
# header and query parameter matcher kinds (_ONE_LINE: the regex ".*", which fullmatches
# exactly the values without a line feed: MOSN's RPC routes, matched without the regex engine)
_EXACT, _MATCHES, _PRESENT, _ONE_LINE = range(4)

_Entry = tuple[int, Any, tuple, tuple, Route]


def _value_matcher(m: cfg.HeaderMatcher | cfg.QueryParameterMatcher) -> tuple[int, Any]:
    if m.present:
        return _PRESENT, None
    if not m.regex and m.value == ".*":
        # MOSN's RPC examples route every service with {name: service, value: ".*"} and no
        # regex flag; an existing MOSN config means "any value" by it, not the literal ".*".
        return _PRESENT, None
    if m.regex:
        if m.value == ".*":
            return _ONE_LINE, None
        return _MATCHES, re.compile(m.value or "")
    return _EXACT, m.value


def _entry(config: cfg.Route, route: Route) -> _Entry:
    match = config.match
    nocase = not match.case_sensitive
    if match.regex is not None:
        kind: int = _REGEX
        value: Any = re.compile(match.regex, re.IGNORECASE if nocase else 0)
    elif match.path is not None:
        kind, value = (_PATH_NOCASE, match.path.lower()) if nocase else (_PATH, match.path)
    else:
        prefix = "/" if match.prefix is None else match.prefix
        kind, value = (_PREFIX_NOCASE, prefix.lower()) if nocase else (_PREFIX, prefix)
    headers = tuple((h.name.lower(), *_value_matcher(h), h.invert) for h in match.headers)
    queries = tuple((q.name, *_value_matcher(q)) for q in match.query_parameters)
    return kind, value, headers, queries, route


def _exact_header(entry: _Entry) -> str | None:
    """The header name if ``entry`` matches any path and exactly one header's exact value."""
    kind, value, headers, queries, _ = entry
    if kind != _PREFIX or value != "/" or queries or len(headers) != 1:
        return None
    name, matcher, _, invert = headers[0]
    return name if matcher == _EXACT and not invert else None


def _index_runs(entries: list[_Entry]) -> list[_Entry]:
    """Fold each long run of consecutive exact-header routes on one header into a dict from
    the value to the route (the first route of a value wins, as the scan would have it)."""
    out: list[_Entry] = []
    i = 0
    while i < len(entries):
        name = _exact_header(entries[i])
        j = i + 1
        while name is not None and j < len(entries) and _exact_header(entries[j]) == name:
            j += 1
        if name is None or j - i < _INDEX_MIN_RUN:
            out.extend(entries[i:j])
        else:
            index: dict[str, Route] = {}
            for entry in entries[i:j]:
                index.setdefault(entry[2][0][2], entry[4])
            out.append((_INDEXED, (name, index), (), (), entries[i][4]))
        i = j
    return out


def _headers_match(matchers: tuple, header: HeaderLookup) -> bool:
    for name, kind, expected, invert in matchers:
        value = header(name)
        if value is None:
            # Envoy: an absent header fails every matcher except an inverted `present`
            if kind == _PRESENT and invert:
                continue
            return False
        if kind == _EXACT:
            ok = value == expected
        elif kind == _MATCHES:
            ok = expected.fullmatch(value) is not None
        elif kind == _ONE_LINE:
            ok = "\n" not in value
        else:
            ok = True
        if ok == invert:
            return False
    return True


def _query_params(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)  # the first value counts, as in Envoy
    return params


def _queries_match(matchers: tuple, params: dict[str, str]) -> bool:
    for name, kind, expected in matchers:
        value = params.get(name)
        if value is None:
            return False
        if kind == _EXACT:
            if value != expected:
                return False
        elif kind == _MATCHES:
            if expected.fullmatch(value) is None:
                return False
        elif kind == _ONE_LINE and "\n" in value:
            return False
    return True


class _VirtualHost(_Frozen):
    __slots__ = ("name", "entries")
    name: str
    entries: tuple[_Entry, ...]

    def __init__(self, config: cfg.VirtualHost, router: cfg.RouterConfig) -> None:
        entries = [_entry(r, Route(r, (router, config))) for r in config.routers]
        self._set(name=config.name, entries=tuple(_index_runs(entries)))

    def match(self, path: str, query: str, header: HeaderLookup) -> Route | None:
        lowered: str | None = None
        params: dict[str, str] | None = None
        for kind, value, headers, queries, route in self.entries:
            if kind == _PREFIX:
                if not path.startswith(value):
                    continue
            elif kind == _PATH:
                if path != value:
                    continue
            elif kind == _REGEX:
                if value.fullmatch(path) is None:
                    continue
            elif kind == _INDEXED:
                name, index = value
                if path.startswith("/"):
                    found = index.get(header(name))
                    if found is not None:
                        return found
                continue
            else:
                if lowered is None:
                    lowered = path.lower()
                if kind == _PREFIX_NOCASE:
                    if not lowered.startswith(value):
                        continue
                elif lowered != value:
                    continue
            if headers and not _headers_match(headers, header):
                continue
            if queries:
                if params is None:
                    params = _query_params(query)
                if not _queries_match(queries, params):
                    continue
            return route
        return None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.find(":")
    if colon >= 0 and host.find(":", colon + 1) < 0:
        return host[:colon]
    return host  # no port, or a bare IPv6 address


class RouteTable(_Frozen):
    """The compiled form of one ``RouterConfig``."""

    __slots__ = ("name", "_exact", "_suffixes", "_prefixes", "_default")
    name: str
    _exact: dict[str, _VirtualHost]
    # (length, {suffix or prefix: virtual host}), longest first
    _suffixes: tuple[tuple[int, dict[str, _VirtualHost]], ...]
    _prefixes: tuple[tuple[int, dict[str, _VirtualHost]], ...]
    _default: _VirtualHost | None

    @classmethod
    def compile(cls, config: cfg.RouterConfig) -> RouteTable:
        return cls(config)

    def __init__(self, config: cfg.RouterConfig) -> None:
        exact: dict[str, _VirtualHost] = {}
        suffixes: dict[int, dict[str, _VirtualHost]] = {}
        prefixes: dict[int, dict[str, _VirtualHost]] = {}
        default = None
        for vh_config in config.virtual_hosts:
            vhost = _VirtualHost(vh_config, config)
            for domain in vh_config.domains:
                domain = domain.lower()
                if domain == "*":
                    default = vhost  # one at most: the config checks it
                elif domain.startswith("*"):
                    suffix = domain[1:]
                    suffixes.setdefault(len(suffix), {}).setdefault(suffix, vhost)
                elif domain.endswith("*"):
                    prefix = domain[:-1]
                    prefixes.setdefault(len(prefix), {}).setdefault(prefix, vhost)
                else:
                    exact.setdefault(domain, vhost)
        self._set(
            name=config.router_config_name,
            _exact=exact,
            # longest first: the most specific wildcard wins
            _suffixes=tuple(sorted(suffixes.items(), reverse=True)),
            _prefixes=tuple(sorted(prefixes.items(), reverse=True)),
            _default=default,
        )

    def become(self, other: RouteTable) -> None:
        """Take ``other``'s routes in place (a reload, RDS): proxies hold this object, so
        their next request matches the new routes; a request already routed keeps its
        ``Route``. One step, no checkpoint: no request sees half of each."""
        for name in RouteTable.__slots__:
            object.__setattr__(self, name, getattr(other, name))

    def virtual_host(self, host: str) -> str | None:
        """The name of the virtual host chosen for ``host`` (for logs and tests)."""
        vhost = self._find(host)
        return None if vhost is None else vhost.name

    def _find(self, host: str) -> _VirtualHost | None:
        if not host:  # RPC requests: no wildcard matches an empty name
            vhost = self._exact.get("")
            return self._default if vhost is None else vhost
        host = _strip_port(host.lower())
        vhost = self._exact.get(host)
        if vhost is not None:
            return vhost
        n = len(host)
        for length, table in self._suffixes:
            if n > length:  # a wildcard matches one character at least
                vhost = table.get(host[n - length :])
                if vhost is not None:
                    return vhost
        for length, table in self._prefixes:
            if n > length:
                vhost = table.get(host[:length])
                if vhost is not None:
                    return vhost
        return self._default

    def match(self, host: str, path: str, query: str, header: HeaderLookup) -> Route | None:
        """The route of a request, or ``None`` (no virtual host, or no route in it).

        ``host``: the Host/authority as received (a port is ignored); ``path`` without the
        query; ``query`` raw; ``header(name_lowercase)``: a header's first value or ``None``.
        """
        vhost = self._find(host)
        if vhost is None:
            return None
        return vhost.match(path, query, header)
