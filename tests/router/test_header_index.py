"""Runs of exact-header routes are looked up in a dict (router/table.py ``_index_runs``):
the same answers as the scan, in the same order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mesh.config.routes import (
    HeaderMatcher,
    Route,
    RouteAction,
    RouteMatch,
    RouterConfig,
    VirtualHost,
)
from trio_mesh.router import RouteTable
from trio_mesh.router.table import _INDEXED


def _route(cluster: str, *headers: HeaderMatcher, prefix: str | None = None) -> Route:
    return Route(
        match=RouteMatch(prefix=prefix, headers=headers), route=RouteAction(cluster_name=cluster)
    )


def _svc(value: str, cluster: str | None = None) -> Route:
    return _route(cluster or value, HeaderMatcher(name="service", value=value))


def _table(*routes: Route) -> RouteTable:
    vhost = VirtualHost(name="v", domains=("*",), routers=routes)
    return RouteTable.compile(RouterConfig(router_config_name="r", virtual_hosts=(vhost,)))


def _cluster(table: RouteTable, path: str = "/", **headers: str) -> str | None:
    route = table.match("", path, "", headers.get)
    return None if route is None else route.pick_cluster(headers.get)


def test_a_long_run_is_one_indexed_entry_and_keeps_first_match_order() -> None:
    table = _table(
        _route("first", HeaderMatcher(name="service", value="s.Any", regex=True)),
        *[_svc(f"s.S{i}") for i in range(10)],
        _svc("s.S3", "shadowed"),  # a later duplicate never wins
        _route("fallback", HeaderMatcher(name="service", value=".*", regex=True)),
    )
    kinds = [e[0] for e in table._default.entries]
    assert kinds.count(_INDEXED) == 1 and len(kinds) == 3
    assert _cluster(table, service="s.Any") == "first"
    assert _cluster(table, service="s.S3") == "s.S3"
    assert _cluster(table, service="s.S9") == "s.S9"
    assert _cluster(table, service="s.Other") == "fallback"  # falls through the index
    assert _cluster(table) is None  # no header: neither the index nor the regex matches
    assert _cluster(table, "*", service="s.S1") is None  # prefix "/" never matched "*"


def test_short_runs_and_other_matchers_stay_scanned() -> None:
    table = _table(
        *[_svc(f"s.S{i}") for i in range(3)],
        _route("inv", HeaderMatcher(name="service", value="x", invert=True)),
        _route("p", HeaderMatcher(name="service", value="s.P"), prefix="/api"),
    )
    assert _INDEXED not in [e[0] for e in table._default.entries]
    assert _cluster(table, service="s.S2") == "s.S2"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["service", "method"]), st.sampled_from("abcdefg")),
        max_size=30,
    ),
    st.dictionaries(st.sampled_from(["service", "method"]), st.sampled_from("abcdefgh")),
)
def test_the_index_answers_as_the_scan(spec: list[tuple[str, str]], headers: dict) -> None:
    routes = [
        _route(f"c{i}", HeaderMatcher(name=name, value=value))
        for i, (name, value) in enumerate(spec)
    ]
    expected = None
    for i, (name, value) in enumerate(spec):  # the scan, by hand
        if headers.get(name) == value:
            expected = f"c{i}"
            break
    assert _cluster(_table(*routes), **headers) == expected
