"""Compiled route tables: virtual host choice, route matching, actions, header mutations."""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any
from urllib.parse import quote

import pytest

from trio_mesh.config import parse_config
from trio_mesh.router import Redirect, RetryPolicy, Route, RouteTable, apply_header_mutations
from trio_mesh.router import table as table_module

CLUSTERS = ("a", "b", "c", "up")


def compile_router(*vhosts: dict[str, Any], **router: Any) -> RouteTable:
    """Load a router config through the real loader, then compile it."""
    doc = {
        "servers": [
            {"routers": [{"router_config_name": "r", "virtual_hosts": list(vhosts), **router}]}
        ],
        "cluster_manager": {
            "clusters": [{"name": n, "hosts": [{"address": "127.0.0.1:1"}]} for n in CLUSTERS]
        },
    }
    (config,) = parse_config(doc).config.servers[0].routers
    return RouteTable.compile(config)


def vhost(domains: list[str], *routes: dict[str, Any], name: str = "", **kw: Any) -> dict:
    return {"name": name, "domains": domains, "routers": list(routes), **kw}


def route(match: dict[str, Any] | None = None, name: str | None = None, **action: Any) -> dict:
    """A route forwarding to cluster ``up`` unless ``action`` says otherwise."""
    entry: dict[str, Any] = {"match": match or {}}
    if name is not None:
        entry["name"] = name
    if "redirect" in action or "direct_response" in action:
        entry.update(action)
    else:
        entry["route"] = {"cluster_name": "up", **action}
    return entry


def no_headers(name: str) -> str | None:
    return None


def headers(**values: str):
    """``header(name)`` over ``values``, named with ``_`` for ``-``; asked in lower case."""
    table = {k.replace("_", "-"): v for k, v in values.items()}

    def lookup(name: str) -> str | None:
        assert name == name.lower(), f"header {name!r} asked in mixed case"
        return table.get(name)

    return lookup


def name_of(t: RouteTable, path: str, host: str = "h", query: str = "", header=no_headers):
    r = t.match(host, path, query, header)
    return None if r is None else r.name


# --------------------------------------------------------------------------- virtual hosts


def hosts_table() -> RouteTable:
    return compile_router(
        vhost(["api.a.com"], route(name="exact")),
        vhost(["*.a.com"], route(name="suffix")),
        vhost(["*.b.a.com"], route(name="longer-suffix")),
        vhost(["api.*"], route(name="prefix")),
        vhost(["api.eu.*"], route(name="longer-prefix")),
        vhost(["*"], route(name="default")),
    )


def test_exact_domain_is_case_insensitive() -> None:
    t = hosts_table()
    assert name_of(t, "/", "api.a.com") == "exact"
    assert name_of(t, "/", "API.A.Com") == "exact"


def test_suffix_wildcard_needs_one_character_before_the_suffix() -> None:
    t = hosts_table()
    assert name_of(t, "/", "web.a.com") == "suffix"
    assert name_of(t, "/", "a.com") == "default"  # "*.a.com" does not match "a.com"
    assert name_of(t, "/", ".a.com") == "default"  # the wildcard stands for one character or more


def test_longest_suffix_wins() -> None:
    t = hosts_table()
    assert name_of(t, "/", "x.b.a.com") == "longer-suffix"
    assert name_of(t, "/", "x.c.a.com") == "suffix"


def test_envoy_suffix_example_dash() -> None:
    t = compile_router(
        vhost(["*.foo.com"], route(name="dot")), vhost(["*-bar.foo.com"], route(name="dash"))
    )
    assert name_of(t, "/", "foo-bar.foo.com") == "dash"
    assert name_of(t, "/", "baz.foo.com") == "dot"


def test_prefix_wildcard_and_longest_prefix_wins() -> None:
    t = hosts_table()
    assert name_of(t, "/", "api.example.org") == "prefix"
    assert name_of(t, "/", "api.eu.example.org") == "longer-prefix"
    assert name_of(t, "/", "api.") == "default"  # the wildcard needs a character


def test_precedence_exact_then_suffix_then_prefix_then_any() -> None:
    t = hosts_table()
    assert name_of(t, "/", "api.a.com") == "exact"  # also "*.a.com", "api.*", "*"
    assert name_of(t, "/", "api.x.a.com") == "suffix"  # also "api.*" and "*"
    assert name_of(t, "/", "api.x.org") == "prefix"  # also "*"
    assert name_of(t, "/", "other.org") == "default"
    assert t.virtual_host("api.x.a.com") is not None


def test_no_virtual_host_gives_none() -> None:
    t = compile_router(vhost(["a.com"], route(name="a")))
    assert t.match("b.com", "/", "", no_headers) is None
    assert t.virtual_host("b.com") is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.com:8080", "a"),
        ("A.COM:80", "a"),
        ("a.com", "a"),
        ("[::1]:8080", "v6"),
        ("[::1]", "v6"),
        ("[::1]:", "v6"),
        ("::1", "default"),  # a bare IPv6 address has no port to strip
        ("[::2]:80", "default"),
    ],
)
def test_port_is_stripped_from_the_host(host: str, expected: str) -> None:
    t = compile_router(
        vhost(["a.com"], route(name="a")),
        vhost(["[::1]"], route(name="v6")),
        vhost(["*"], route(name="default")),
    )
    assert name_of(t, "/", host) == expected


# --------------------------------------------------------------------------- path matching


def test_prefix_match() -> None:
    t = compile_router(vhost(["*"], route({"prefix": "/api"}, name="api")))
    assert name_of(t, "/api") == "api"
    assert name_of(t, "/api/users") == "api"
    assert name_of(t, "/apix") == "api"  # a string prefix, not a path segment (as Envoy)
    assert name_of(t, "/ap") is None
    assert name_of(t, "/API") is None


def test_no_path_matcher_means_prefix_slash() -> None:
    t = compile_router(vhost(["*"], route({}, name="all")))
    assert name_of(t, "/") == "all"
    assert name_of(t, "/anything/at/all") == "all"
    assert name_of(t, "*") is None


def test_path_match_is_exact() -> None:
    t = compile_router(vhost(["*"], route({"path": "/exact"}, name="p")))
    assert name_of(t, "/exact") == "p"
    assert name_of(t, "/exact/") is None
    assert name_of(t, "/exactly") is None
    assert name_of(t, "/EXACT") is None


def test_regex_match_is_a_full_match_of_the_path() -> None:
    t = compile_router(vhost(["*"], route({"regex": "/v[0-9]+/.*"}, name="re")))
    assert name_of(t, "/v1/users") == "re"
    assert name_of(t, "/v12/") == "re"
    assert name_of(t, "/x/v1/users") is None  # anchored at the start
    assert name_of(t, "/v1") is None
    short = compile_router(vhost(["*"], route({"regex": "/v[0-9]+"}, name="re")))
    assert name_of(short, "/v1") == "re"
    assert name_of(short, "/v1/users") is None  # anchored at the end too
    assert name_of(t, "/V1/users") is None


def test_query_is_not_part_of_the_path_match() -> None:
    t = compile_router(vhost(["*"], route({"path": "/p"}, name="p")))
    assert name_of(t, "/p", query="a=1") == "p"


@pytest.mark.parametrize(
    ("match", "path"),
    [
        ({"prefix": "/API"}, "/api/users"),
        ({"prefix": "/api"}, "/Api/users"),
        ({"path": "/Exact"}, "/eXACT"),
        ({"regex": "/v[0-9]+/users"}, "/V1/USERS"),
    ],
)
def test_case_insensitive_path_matching(match: dict[str, Any], path: str) -> None:
    sensitive = compile_router(vhost(["*"], route(match, name="m")))
    insensitive = compile_router(vhost(["*"], route({**match, "case_sensitive": False}, name="m")))
    assert name_of(sensitive, path) is None
    assert name_of(insensitive, path) == "m"


# --------------------------------------------------------------------------- header matching


def header_table(*matchers: dict[str, Any]) -> RouteTable:
    return compile_router(vhost(["*"], route({"headers": list(matchers)}, name="h")))


def test_header_exact_match() -> None:
    t = header_table({"name": "X-Env", "value": "canary"})
    assert name_of(t, "/", header=headers(x_env="canary")) == "h"
    assert name_of(t, "/", header=headers(x_env="Canary")) is None  # values: case-sensitive
    assert name_of(t, "/", header=headers(x_env="canary2")) is None
    assert name_of(t, "/", header=no_headers) is None


def test_header_regex_match_is_full() -> None:
    t = header_table({"name": "x-version", "value": "v[0-9]+", "regex": True})
    assert name_of(t, "/", header=headers(x_version="v12")) == "h"
    assert name_of(t, "/", header=headers(x_version="v12-beta")) is None
    assert name_of(t, "/", header=headers(x_version="xv1")) is None


ONE_LINE_VALUES = ["", "a", "com.alipay.EchoService:1.0", "a\rb", "ü", "a\nb", "\n", "a\n"]


def test_header_regex_any_is_the_regex_without_the_engine() -> None:
    """``.*`` (MOSN's "any service") is matched without a regex, exactly as the regex
    would: every value without a line feed (``.`` takes none), inverted too; absent: no."""
    for invert in (False, True):
        t = header_table({"name": "service", "value": ".*", "regex": True, "invert": invert})
        for value in ONE_LINE_VALUES:
            expected = (re.fullmatch(".*", value) is not None) != invert
            assert (name_of(t, "/", header=headers(service=value)) == "h") == expected, value
        assert name_of(t, "/", header=no_headers) is None
    q = query_table({"name": "id", "value": ".*", "regex": True})
    for value in ONE_LINE_VALUES:
        expected = re.fullmatch(".*", value) is not None
        assert (name_of(q, "/", query="id=" + quote(value)) == "q") == expected, value
    assert name_of(q, "/", query="other=1") is None


def test_empty_host_takes_the_exact_empty_domain_else_the_default() -> None:
    """RPC requests route with an empty host: the default virtual host, never a wildcard."""
    t = compile_router(
        vhost(["*.a", "b*"], route(name="wild"), name="wild"),
        vhost(["*"], route(name="default"), name="default"),
    )
    assert name_of(t, "/", host="") == "default"
    assert t.virtual_host("") == "default"
    only_wild = compile_router(vhost(["*.a"], route(name="wild"), name="wild"))
    assert name_of(only_wild, "/", host="") is None


def test_header_present_match() -> None:
    t = header_table({"name": "x-debug", "present": True})
    assert name_of(t, "/", header=headers(x_debug="")) == "h"
    assert name_of(t, "/", header=headers(x_debug="1")) == "h"
    assert name_of(t, "/", header=no_headers) is None


def test_header_invert() -> None:
    exact = header_table({"name": "x-env", "value": "prod", "invert": True})
    assert name_of(exact, "/", header=headers(x_env="staging")) == "h"
    assert name_of(exact, "/", header=headers(x_env="prod")) is None
    assert name_of(exact, "/", header=no_headers) is None  # Envoy: absent never matches a value

    regex = header_table({"name": "x-v", "value": "[0-9]{3}", "regex": True, "invert": True})
    assert name_of(regex, "/", header=headers(x_v="1234")) == "h"
    assert name_of(regex, "/", header=headers(x_v="123")) is None

    absent = header_table({"name": "x-debug", "present": True, "invert": True})
    assert name_of(absent, "/", header=no_headers) == "h"
    assert name_of(absent, "/", header=headers(x_debug="1")) is None


def test_all_header_matchers_must_match() -> None:
    t = header_table({"name": "x-a", "value": "1"}, {"name": "x-b", "present": True})
    assert name_of(t, "/", header=headers(x_a="1", x_b="")) == "h"
    assert name_of(t, "/", header=headers(x_a="1")) is None
    assert name_of(t, "/", header=headers(x_b="")) is None


def test_pseudo_header_can_be_matched() -> None:
    t = header_table({"name": ":method", "value": "POST"})
    assert name_of(t, "/", header=lambda n: "POST" if n == ":method" else None) == "h"
    assert name_of(t, "/", header=lambda n: "GET" if n == ":method" else None) is None


# --------------------------------------------------------------------------- query parameters


def query_table(*matchers: dict[str, Any]) -> RouteTable:
    return compile_router(vhost(["*"], route({"query_parameters": list(matchers)}, name="q")))


def test_query_parameter_exact_value() -> None:
    t = query_table({"name": "debug", "value": "1"})
    assert name_of(t, "/", query="debug=1") == "q"
    assert name_of(t, "/", query="a=b&debug=1&c") == "q"
    assert name_of(t, "/", query="debug=2") is None
    assert name_of(t, "/", query="") is None
    assert name_of(t, "/", query="debug=2&debug=1") is None  # the first value counts


def test_query_parameter_is_percent_decoded() -> None:
    t = query_table({"name": "user name", "value": "a&b=c"})
    assert name_of(t, "/", query="user%20name=a%26b%3Dc") == "q"
    assert name_of(t, "/", query="user+name=a%26b%3Dc") == "q"


def test_query_parameter_regex_and_present() -> None:
    regex = query_table({"name": "id", "value": "[0-9]+", "regex": True})
    assert name_of(regex, "/", query="id=42") == "q"
    assert name_of(regex, "/", query="id=42x") is None
    present = query_table({"name": "flag", "present": True})
    assert name_of(present, "/", query="flag") == "q"
    assert name_of(present, "/", query="flag=") == "q"
    assert name_of(present, "/", query="flags=1") is None


def test_query_is_parsed_once_and_only_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = table_module.parse_qsl

    def counting(query: str, **kw: Any):
        calls.append(query)
        return real(query, **kw)

    monkeypatch.setattr(table_module, "parse_qsl", counting)
    t = compile_router(
        vhost(
            ["q.com"],
            route({"query_parameters": [{"name": "a", "value": "1"}]}, name="first"),
            route({"query_parameters": [{"name": "a", "value": "2"}]}, name="second"),
        ),
        vhost(["*"], route({"prefix": "/"}, name="plain")),
    )
    assert name_of(t, "/", "other", query="a=2") == "plain"
    assert calls == []
    assert name_of(t, "/", "q.com", query="a=2") == "second"
    assert calls == ["a=2"]


# --------------------------------------------------------------------------- order


def test_first_matching_route_wins() -> None:
    t = compile_router(
        vhost(
            ["*"],
            route({"prefix": "/api/v1"}, name="v1"),
            route({"prefix": "/api"}, name="api"),
            route({"prefix": "/api/v1/special"}, name="shadowed"),
            route({"prefix": "/", "headers": [{"name": "x", "value": "1"}]}, name="x"),
            route({"prefix": "/"}, name="rest"),
        )
    )
    assert name_of(t, "/api/v1/special") == "v1"
    assert name_of(t, "/api/v2") == "api"
    assert name_of(t, "/other", header=headers(x="1")) == "x"
    assert name_of(t, "/other") == "rest"


def test_no_matching_route_gives_none() -> None:
    t = compile_router(vhost(["*"], route({"prefix": "/api"}, name="api")))
    assert t.match("any", "/web", "", no_headers) is None


# --------------------------------------------------------------------------- clusters


def only_route(*routes: dict[str, Any], path: str = "/", **router: Any) -> Route:
    """The route matched by ``path`` (it must match)."""
    t = compile_router(vhost(["*"], *routes), **router)
    r = t.match("h", path, "", no_headers)
    assert r is not None
    return r


def test_cluster_name() -> None:
    assert only_route(route(cluster_name="b")).pick_cluster(no_headers) == "b"


def test_cluster_header() -> None:
    r = only_route(route(cluster_name=None, cluster_header="X-Cluster"))
    assert r.pick_cluster(headers(x_cluster="c")) == "c"
    assert r.pick_cluster(headers(x_cluster="")) is None
    assert r.pick_cluster(no_headers) is None


def weighted(*weights: tuple[str, int]) -> Route:
    clusters = [{"cluster": {"name": n, "weight": w}} for n, w in weights]
    return only_route(route(cluster_name=None, weighted_clusters=clusters))


def test_weighted_clusters_follow_their_weights() -> None:
    r = weighted(("a", 1), ("b", 3), ("c", 6))
    random.seed(20240501)
    picks = Counter(r.pick_cluster(no_headers) for _ in range(20_000))
    # expected 2000 / 6000 / 12000; a standard deviation is under 70: 500 is > 7 of them
    assert set(picks) == {"a", "b", "c"}
    assert abs(picks["a"] - 2_000) < 500
    assert abs(picks["b"] - 6_000) < 500
    assert abs(picks["c"] - 12_000) < 500


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, "a"), (0.0999, "a"), (0.1, "b"), (0.3999, "b"), (0.4, "c"), (0.999999, "c")],
)
def test_weighted_choice_boundaries(monkeypatch: pytest.MonkeyPatch, draw: float, expected: str):
    r = weighted(("a", 1), ("b", 3), ("c", 6))
    monkeypatch.setattr(random, "random", lambda: draw)
    assert r.pick_cluster(no_headers) == expected


# --------------------------------------------------------------------------- rewrites


@pytest.mark.parametrize(
    ("prefix", "rewrite", "path", "expected"),
    [
        ("/prefix/", "/", "/prefix/etc", "/etc"),  # Envoy's documented pair of routes...
        ("/prefix/", "/", "/prefix/", "/"),
        ("/prefix", "/", "/prefix", "/"),  # ...the second one
        ("/prefix", "/", "/prefix/etc", "//etc"),  # why the first one is needed
        ("/prefix", "/", "/prefixetc", "/etc"),
        ("/api", "/v2", "/api/users", "/v2/users"),
        ("/", "/base/", "/users", "/base/users"),
        ("/", "/base", "/", "/base"),
        ("/api", "", "/api/users", "/api/users"),  # empty: no rewrite, as in Envoy
    ],
)
def test_prefix_rewrite(prefix: str, rewrite: str, path: str, expected: str) -> None:
    r = only_route(route({"prefix": prefix}, prefix_rewrite=rewrite), path=path)
    assert r.rewrite_path(path) == expected


def test_prefix_rewrite_after_case_insensitive_prefix() -> None:
    r = only_route(
        route({"prefix": "/API/", "case_sensitive": False}, prefix_rewrite="/v1/"), path="/api/x"
    )
    assert r.rewrite_path("/api/Users") == "/v1/Users"


def test_prefix_rewrite_without_a_prefix_matcher() -> None:
    t = compile_router(
        vhost(
            ["*"],
            route({"path": "/old"}, name="path", prefix_rewrite="/new"),
            route({"regex": "/r/.*"}, name="regex", prefix_rewrite="/whole"),
            route({}, name="default", prefix_rewrite="/x/"),
        )
    )
    assert t.match("h", "/old", "", no_headers).rewrite_path("/old") == "/new"
    assert t.match("h", "/r/a/b", "", no_headers).rewrite_path("/r/a/b") == "/whole"
    assert t.match("h", "/abc", "", no_headers).rewrite_path("/abc") == "/x/abc"  # prefix "/"


def test_regex_rewrite() -> None:
    envoy_example = {
        "pattern": {"regex": "^/service/([^/]+)(/.*)$"},
        "substitution": "\\2/instance/\\1",
    }
    r = only_route(route(regex_rewrite=envoy_example))
    assert r.rewrite_path("/service/foo/v1/api") == "/v1/api/instance/foo"
    assert r.rewrite_path("/other") == "/other"
    every = only_route(route(regex_rewrite={"pattern": {"regex": "one"}, "substitution": "two"}))
    assert every.rewrite_path("/xxx/one/yyy/one/zzz") == "/xxx/two/yyy/two/zzz"


def test_no_rewrite_is_identity() -> None:
    assert only_route(route({"prefix": "/a"}), path="/a/b").rewrite_path("/a/b") == "/a/b"


def test_host_rewrite_and_auto_host_rewrite() -> None:
    fixed = only_route(route(host_rewrite="internal.svc"))
    assert (fixed.host_rewrite, fixed.auto_host_rewrite) == ("internal.svc", False)
    auto = only_route(route(auto_host_rewrite=True))
    assert (auto.host_rewrite, auto.auto_host_rewrite) == (None, True)


# --------------------------------------------------------------------------- redirects


def redirect(match: dict[str, Any] | None = None, path: str = "/", **spec: Any) -> Redirect:
    r = only_route(route(match, redirect=spec), path=path)
    assert r.redirect is not None
    assert r.direct_response is None
    assert r.pick_cluster(no_headers) is None
    return r.redirect


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_response_codes(code: int) -> None:
    rd = redirect(response_code=code, host_redirect="b.com")
    assert rd.location("http", "a.com", "/p", "") == (code, "http://b.com/p")


def test_redirect_default_code_is_301() -> None:
    assert redirect(path_redirect="/x").location("http", "a", "/", "")[0] == 301


def test_scheme_redirect() -> None:
    rd = redirect(scheme_redirect="HTTPS")
    assert rd.location("http", "a.com:8080", "/p", "q=1") == (301, "https://a.com:8080/p?q=1")


def test_host_redirect() -> None:
    rd = redirect(host_redirect="b.com:9000")
    assert rd.location("https", "a.com", "/p", "q=1") == (301, "https://b.com:9000/p?q=1")


def test_path_redirect() -> None:
    rd = redirect(path_redirect="/new/place")
    assert rd.location("http", "a.com", "/old", "q=1") == (301, "http://a.com/new/place?q=1")


def test_path_redirect_with_its_own_query() -> None:
    rd = redirect(path_redirect="/new?from=old", strip_query=True)
    assert rd.location("http", "a.com", "/old", "q=1") == (301, "http://a.com/new?from=old")


def test_prefix_rewrite_redirect() -> None:
    rd = redirect({"prefix": "/old/"}, path="/old/x", prefix_rewrite="/new/")
    assert rd.location("http", "a.com", "/old/x/y", "") == (301, "http://a.com/new/x/y")
    whole = redirect({"path": "/old"}, path="/old", prefix_rewrite="/new")
    assert whole.location("http", "a.com", "/old", "") == (301, "http://a.com/new")


def test_strip_query() -> None:
    keep = redirect(host_redirect="b.com")
    strip = redirect(host_redirect="b.com", strip_query=True)
    assert keep.location("http", "a", "/p", "a=1&b=2") == (301, "http://b.com/p?a=1&b=2")
    assert strip.location("http", "a", "/p", "a=1&b=2") == (301, "http://b.com/p")


def test_redirect_of_every_part() -> None:
    rd = redirect(
        scheme_redirect="https",
        host_redirect="b.com",
        path_redirect="/z",
        response_code=308,
        strip_query=True,
    )
    assert rd.location("http", "a.com", "/p", "x=1") == (308, "https://b.com/z")


# --------------------------------------------------------------------------- direct responses


def test_direct_response() -> None:
    r = only_route(route(direct_response={"status": 503, "body": "down for maintenance ✓"}))
    assert r.direct_response == (503, "down for maintenance ✓".encode())
    assert r.redirect is None
    assert r.pick_cluster(no_headers) is None
    assert r.timeout is None and r.retry is None
    empty = only_route(route(direct_response={"status": 204}))
    assert empty.direct_response == (204, b"")


# --------------------------------------------------------------------------- header mutations


def add(key: str, value: str, append: bool = True) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append": append}


def test_header_mutations_merge_over_three_levels() -> None:
    t = compile_router(
        vhost(
            ["*"],
            route(
                request_headers_to_add=[add("X-Level", "route", False), add("x-r", "1")],
                request_headers_to_remove=["X-Drop-Route", "x-drop-vh"],
                response_headers_to_add=[add("X-Resp", "route")],
                response_headers_to_remove=["server"],
            ),
            request_headers_to_add=[add("x-level", "vhost", False)],
            request_headers_to_remove=["x-drop-vh"],
            response_headers_to_add=[add("x-resp", "vhost")],
        ),
        request_headers_to_add=[add("X-Level", "router", False), add("x-router", "yes")],
        request_headers_to_remove=["X-Drop-Router"],
        response_headers_to_remove=["X-Powered-By"],
    )
    r = t.match("h", "/", "", no_headers)
    assert r.request_headers_to_add == (
        (b"x-level", b"router", False),
        (b"x-router", b"yes", True),
        (b"x-level", b"vhost", False),
        (b"x-level", b"route", False),
        (b"x-r", b"1", True),
    )
    assert r.request_headers_to_remove == (b"x-drop-router", b"x-drop-vh", b"x-drop-route")
    assert r.response_headers_to_add == ((b"x-resp", b"vhost", True), (b"x-resp", b"route", True))
    assert r.response_headers_to_remove == (b"x-powered-by", b"server")

    request = [(b"Host", b"h"), (b"X-Level", b"client"), (b"x-drop-vh", b"1"), (b"X-R", b"0")]
    out = apply_header_mutations(request, r.request_headers_to_add, r.request_headers_to_remove)
    # the most specific level wins for append=false; append=true adds a value
    assert out == [
        (b"Host", b"h"),
        (b"x-level", b"route"),
        (b"X-R", b"0"),
        (b"x-router", b"yes"),
        (b"x-r", b"1"),
    ]
    assert request[1] == (b"X-Level", b"client")  # the input list is left alone


def test_direct_response_gets_router_and_vhost_headers() -> None:
    r = only_route(
        route(direct_response={"status": 200}),
        response_headers_to_add=[add("x-router", "1")],
    )
    assert r.response_headers_to_add == ((b"x-router", b"1", True),)


def test_apply_header_mutations_removes_before_adding() -> None:
    headers_in = [(b"a", b"1"), (b"B", b"2"), (b"a", b"3")]
    out = apply_header_mutations(headers_in, ((b"b", b"new", True),), (b"b",))
    assert out == [(b"a", b"1"), (b"a", b"3"), (b"b", b"new")]


def test_apply_header_mutations_replace_and_append() -> None:
    headers_in = [(b"A", b"1"), (b"c", b"x"), (b"a", b"2")]
    assert apply_header_mutations(headers_in, ((b"a", b"9", False),), ()) == [
        (b"a", b"9"),
        (b"c", b"x"),
    ]
    assert apply_header_mutations(headers_in, ((b"a", b"9", True),), ()) == [
        *headers_in,
        (b"a", b"9"),
    ]
    assert apply_header_mutations([], ((b"n", b"v", False),), ()) == [(b"n", b"v")]
    assert apply_header_mutations(headers_in, (), ()) is headers_in


# --------------------------------------------------------------------------- retries, timeouts


def retry_of(policy: dict[str, Any]) -> RetryPolicy | None:
    return only_route(route(retry_policy=policy)).retry


def test_mosn_retry_on_true() -> None:
    retry = retry_of({"retry_on": True, "retry_timeout": "2s", "num_retries": 3})
    assert retry is not None
    assert retry.retry_on == frozenset({"connect-failure", "reset", "5xx"})
    assert (retry.num_retries, retry.per_try_timeout) == (3, 2.0)
    assert retry.retry_on_connect_failure and retry.retry_on_reset
    assert retry.should_retry_status(500) and retry.should_retry_status(599)
    assert not retry.should_retry_status(404)


def test_mosn_retry_on_false_means_no_retry() -> None:
    assert retry_of({"retry_on": False, "num_retries": 3}) is None


def test_no_retry_policy_and_zero_retries() -> None:
    assert only_route(route()).retry is None
    assert retry_of({"retry_on": "5xx", "num_retries": 0}) is None


@pytest.mark.parametrize(
    "written",
    ["gateway-error, retriable-status-codes", ["gateway-error", "retriable-status-codes"]],
)
def test_envoy_retry_on_string_or_list(written: Any) -> None:
    retry = retry_of(
        {"retry_on": written, "retriable_status_codes": [409], "per_try_timeout": "1s"}
    )
    assert retry.retry_on == frozenset({"gateway-error", "retriable-status-codes"})
    assert retry.num_retries == 1  # the default
    assert retry.per_try_timeout == 1.0
    assert retry.retriable_status_codes == frozenset({409})
    assert [s for s in (409, 500, 501, 502, 503, 504, 505) if retry.should_retry_status(s)] == [
        409,
        502,
        503,
        504,
    ]
    # as in Envoy, gateway-error also retries failed connects and resets
    assert retry.retry_on_connect_failure and retry.retry_on_reset


def test_retry_conditions_one_by_one() -> None:
    connect = retry_of({"retry_on": "connect-failure"})
    assert (connect.retry_on_connect_failure, connect.retry_on_reset) == (True, False)
    assert not connect.should_retry_status(503)
    reset = retry_of({"retry_on": "reset"})
    assert (reset.retry_on_connect_failure, reset.retry_on_reset) == (False, True)
    # listed codes count only with the retriable-status-codes condition
    codes_unused = retry_of({"retry_on": "5xx", "retriable_status_codes": [409]})
    assert not codes_unused.should_retry_status(409)
    assert codes_unused.per_try_timeout is None


def test_timeout_default_zero_and_set() -> None:
    assert only_route(route()).timeout == 15.0
    assert only_route(route(timeout="0s")).timeout is None
    assert only_route(route(timeout="2500ms")).timeout == 2.5


# --------------------------------------------------------------------------- immutability


def test_compiled_objects_are_immutable() -> None:
    r = only_route(route(redirect={"host_redirect": "b"}))
    with pytest.raises(AttributeError):
        r.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.redirect.status = 302  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        r.extra = 1  # type: ignore[attr-defined]
    t = compile_router(vhost(["*"], route()))
    with pytest.raises(AttributeError):
        t.name = "other"  # type: ignore[misc]
    assert t.name == "r"
