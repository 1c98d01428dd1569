"""Route ``hash_policy``: the config (with path errors) and the compiled key."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trio_mesh.config import ConfigError, parse_config
from trio_mesh.router import RouteTable
from trio_mesh.router.hashing import HashPolicy

E0 = "servers[0].routers[0].virtual_hosts[0].routers[0]"


def doc_with(hash_policy: Any) -> dict[str, Any]:
    return {
        "servers": [
            {
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "v",
                                "domains": ["*"],
                                "routers": [
                                    {
                                        "match": {"prefix": "/"},
                                        "route": {
                                            "cluster_name": "up",
                                            "hash_policy": hash_policy,
                                        },
                                    }
                                ],
                            }
                        ],
                    }
                ]
            }
        ],
        "cluster_manager": {
            "clusters": [
                {"name": "up", "lb_type": "LB_MAGLEV", "hosts": [{"address": "127.0.0.1:1"}]}
            ]
        },
    }


def policy(hash_policy: Any) -> HashPolicy:
    (config,) = parse_config(copy.deepcopy(doc_with(hash_policy))).config.servers[0].routers
    route = RouteTable.compile(config).match("", "/", "", lambda name: None)
    assert route is not None and route.hash_policy is not None
    return route.hash_policy


def getter(**headers: str) -> Any:
    return lambda name: headers.get(name.replace("-", "_"))


def test_route_without_hash_policy_compiles_to_none() -> None:
    doc = doc_with([])
    (config,) = parse_config(doc).config.servers[0].routers
    route = RouteTable.compile(config).match("", "/", "", lambda name: None)
    assert route is not None and route.hash_policy is None


def test_header_policy_keys_by_value_and_absent_gives_none() -> None:
    p = policy([{"header": {"key": "X-User"}}])
    a1, cookie = p.key(getter(x_user="alice"))
    a2, _ = p.key(getter(x_user="alice"))
    b, _ = p.key(getter(x_user="bob"))
    assert a1 is not None and a1 == a2 != b and cookie is None
    assert p.key(getter()) == (None, None)


def test_cookie_policy_reads_cookie_and_generates_when_ttl() -> None:
    p = policy([{"cookie": {"name": "sticky", "path": "/app", "ttl": "60s"}}])
    key, set_cookie = p.key(getter(cookie="a=1; sticky=abc; b=2"))
    assert key is not None and set_cookie is None
    assert p.key(getter(cookie="sticky=abc"))[0] == key
    made, set_cookie = p.key(getter(cookie="a=1"))
    assert made is not None and set_cookie is not None
    name_value, *attrs = set_cookie.decode().split("; ")
    assert name_value.startswith("sticky=") and attrs == ["Max-Age=60", "Path=/app", "HttpOnly"]
    # the client sends the cookie it was given: same key as the first request got
    value = name_value.split("=", 1)[1]
    assert p.key(getter(cookie=f"sticky={value}")) == (made, None)


def test_cookie_policy_without_ttl_generates_nothing() -> None:
    p = policy([{"cookie": {"name": "sticky"}}])
    assert p.key(getter()) == (None, None)


def test_session_cookie_when_ttl_zero_and_short_ttls_round_up() -> None:
    p = policy([{"cookie": {"name": "s", "ttl": "0s"}}])
    _, set_cookie = p.key(getter())
    assert set_cookie is not None and b"Max-Age" not in set_cookie
    short = policy([{"cookie": {"name": "s", "ttl": "500ms"}}])
    _, set_cookie = short.key(getter())
    assert set_cookie is not None and b"; Max-Age=1;" in set_cookie


def test_source_ip_and_query_parameter() -> None:
    p = policy([{"source_ip": {}}])
    k1 = p.key(getter(), "", lambda: "10.0.0.1:5555")[0]
    k2 = p.key(getter(), "", lambda: "10.0.0.1:6666")[0]
    k3 = p.key(getter(), "", lambda: "[::1]:6666")[0]
    assert k1 is not None and k1 == k2 != k3
    q = policy([{"query_parameter": {"name": "u"}}])
    assert q.key(getter(), "a=1&u=x%20y")[0] == q.key(getter(), "u=x+y")[0] is not None
    assert q.key(getter(), "a=1")[0] is None


def test_policies_combine() -> None:
    p = policy([{"header": {"key": "a"}}, {"header": {"key": "b"}}])
    one = p.key(getter(a="1"))[0]
    both = p.key(getter(a="1", b="2"))[0]
    assert one is not None and both is not None and one != both


@pytest.mark.parametrize(
    ("hash_policy", "expected"),
    [
        (
            [{"header": {"key": "x"}, "source_ip": {}}],
            f"{E0}.route.hash_policy[0]: give exactly one of header, cookie, source_ip,"
            " query_parameter (got header, source_ip)",
        ),
        ([{}], f"{E0}.route.hash_policy[0]: give exactly one of header, cookie, source_ip,"),
        ([{"header": {"key": "bad name"}}], f"{E0}.route.hash_policy[0].header.key:"),
        # an attacker-shaped config: a path that would inject into Set-Cookie is refused
        (
            [{"cookie": {"name": "s", "path": "/; Domain=evil.com", "ttl": "1s"}}],
            f"{E0}.route.hash_policy[0].cookie.path: invalid cookie path",
        ),
        (
            [{"cookie": {"name": "s\r\nX-Evil: 1"}}],
            f"{E0}.route.hash_policy[0].cookie.name: invalid cookie name",
        ),
        ([{"query_parameter": {"name": ""}}], f"{E0}.route.hash_policy[0].query_parameter.name:"),
        ([{"header": {"key": "x", "nope": 1}}], f"{E0}.route.hash_policy[0].header.nope"),
    ],
)
def test_bad_hash_policy_names_its_path(hash_policy: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(doc_with(hash_policy))
    assert any(e.startswith(expected) for e in exc.value.errors), exc.value.errors
