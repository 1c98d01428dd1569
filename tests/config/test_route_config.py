"""Route configuration: MOSN's router config shape loaded from YAML and JSON, warnings for its
pending keys, and one exact path line for each invalid value."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from trio_mesh.config import ConfigError, parse_config, read_config
from trio_mesh.config.routes import (
    ClusterWeight,
    DirectResponseAction,
    HeaderMatcher,
    HeaderValue,
    HeaderValueOption,
    QueryParameterMatcher,
    RedirectAction,
    RegexPattern,
    RegexRewrite,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    RouterConfig,
    VirtualHost,
    WeightedCluster,
)

# --------------------------------------------------------------------------- a MOSN document

MOSN_YAML = """\
servers:
  - Listeners:
      - name: http
        address: 127.0.0.1:0
        filter_chains:
          - filters:
              - type: proxy
                config: {downstream_protocol: Http1, router_config_name: server_router}
    Routers:
      - Router_Config_Name: server_router
        Request_Headers_To_Add:
          - {header: {key: X-Mesh, value: trio}, append: false}
        response_headers_to_remove: [Server]
        Virtual_Hosts:
          - Name: serverHost
            Domains: ["*"]
            request_headers_to_remove: [X-Internal]
            Routers:
              - Match:
                  Prefix: /api/
                  Case_Sensitive: false
                  Headers:
                    - {Name: X-Version, Value: "v[0-9]+", Regex: true}
                    - {name: X-Debug, present: true, invert: true}
                  Query_Parameters:
                    - {name: tenant, value: acme}
                Route:
                  Cluster_Name: serverCluster
                  Prefix_Rewrite: /
                  Timeout: 2s
                  Retry_Policy: {Retry_On: true, Retry_Timeout: 500ms, Num_Retries: 2}
                  Request_Headers_To_Add:
                    - {Header: {Key: x-route, Value: api}}
              - name: canary
                match: {path: /checkout}
                route:
                  weighted_clusters:
                    - cluster: {name: serverCluster, weight: 90}
                    - cluster: {Name: canaryCluster, Weight: 10}
                  regex_rewrite:
                    pattern: {regex: "^/checkout$"}
                    substitution: /v2/checkout
                  auto_host_rewrite: true
              - match: {regex: "/by-header/.*"}
                route:
                  cluster_header: X-Target
                  host_rewrite: backend.internal
                  timeout: 0s
                  retry_policy:
                    retry_on: "gateway-error,retriable-status-codes"
                    per_try_timeout: 1s
                    retriable_status_codes: [409]
          - name: legacy
            domains: [old.example.com, "*.old.example.com", "old.*"]
            routers:
              - match: {prefix: /}
                redirect:
                  scheme_redirect: https
                  host_redirect: new.example.com
                  prefix_rewrite: /legacy/
                  response_code: 308
                  strip_query: true
          - name: maintenance
            domains: [down.example.com]
            routers:
              - direct_response: {status: 503, body: back soon}
cluster_manager:
  clusters:
    - {name: serverCluster, hosts: [{address: "127.0.0.1:8080"}]}
    - {name: canaryCluster, hosts: [{address: "127.0.0.1:8081"}]}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_mosn_router(router: RouterConfig) -> None:
    assert router.router_config_name == "server_router"
    assert router.request_headers_to_add == (
        HeaderValueOption(header=HeaderValue(key="X-Mesh", value="trio"), append=False),
    )
    assert router.response_headers_to_remove == ("Server",)
    server, legacy, maintenance = router.virtual_hosts

    assert (server.name, server.domains) == ("serverHost", ("*",))
    assert server.request_headers_to_remove == ("X-Internal",)
    api, canary, by_header = server.routers
    assert api.name is None
    assert api.match == RouteMatch(
        prefix="/api/",
        case_sensitive=False,
        headers=(
            HeaderMatcher(name="X-Version", value="v[0-9]+", regex=True),
            HeaderMatcher(name="X-Debug", present=True, invert=True),
        ),
        query_parameters=(QueryParameterMatcher(name="tenant", value="acme"),),
    )
    assert (api.redirect, api.direct_response) == (None, None)
    assert api.route == RouteAction(
        cluster_name="serverCluster",
        prefix_rewrite="/",
        timeout=2.0,
        retry_policy=RetryPolicy(retry_on=True, per_try_timeout=0.5, num_retries=2),
        request_headers_to_add=(HeaderValueOption(header=HeaderValue(key="x-route", value="api")),),
    )
    retry = api.route.retry_policy
    assert retry.retry_on == frozenset({"connect-failure", "reset", "5xx"})
    assert (retry.per_try_timeout, retry.retry_timeout) == (0.5, None)  # the alias moved

    assert canary.name == "canary"
    assert canary.match.path == "/checkout"
    assert canary.route.weighted_clusters == (
        WeightedCluster(cluster=ClusterWeight(name="serverCluster", weight=90)),
        WeightedCluster(cluster=ClusterWeight(name="canaryCluster", weight=10)),
    )
    assert canary.route.regex_rewrite == RegexRewrite(
        pattern=RegexPattern(regex="^/checkout$"), substitution="/v2/checkout"
    )
    assert canary.route.auto_host_rewrite is True
    assert canary.route.timeout == 15.0  # the default

    assert by_header.match.regex == "/by-header/.*"
    action = by_header.route
    assert (action.cluster_header, action.host_rewrite, action.timeout) == (
        "X-Target",
        "backend.internal",
        0.0,
    )
    assert action.retry_policy.retry_on == frozenset({"gateway-error", "retriable-status-codes"})
    assert action.retry_policy.per_try_timeout == 1.0
    assert action.retry_policy.retriable_status_codes == (409,)
    assert action.retry_policy.num_retries == 1

    assert legacy.domains == ("old.example.com", "*.old.example.com", "old.*")
    (moved,) = legacy.routers
    assert moved.route is None
    assert moved.redirect == RedirectAction(
        scheme_redirect="https",
        host_redirect="new.example.com",
        prefix_rewrite="/legacy/",
        response_code=308,
        strip_query=True,
    )
    (down,) = maintenance.routers
    assert down.match == RouteMatch()  # no match given: every path
    assert down.direct_response == DirectResponseAction(status=503, body="back soon")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_mosn_router_config_loads_from_yaml_and_json(tmp_path: Path, suffix: str) -> None:
    text = MOSN_YAML if suffix == ".yaml" else json.dumps(yaml.safe_load(MOSN_YAML), indent=2)
    loaded = read_config(write(tmp_path, f"mosn{suffix}", text))
    assert loaded.warnings == ()
    (router,) = loaded.config.servers[0].routers
    assert_mosn_router(router)


# --------------------------------------------------------------------------- pending keys


def minimal_doc() -> dict[str, Any]:
    """Router config ``r``: one virtual host for ``*`` whose one route goes to ``up``."""
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
                                    {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}
                                ],
                            }
                        ],
                    }
                ]
            }
        ],
        "cluster_manager": {
            "clusters": [
                {"name": "up", "hosts": [{"address": "127.0.0.1:1"}]},
                {"name": "alt", "hosts": [{"address": "127.0.0.1:2"}]},
            ]
        },
    }


def router(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["servers"][0]["routers"][0]


def vhost(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return router(doc)["virtual_hosts"][i]


def entry(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return vhost(doc)["routers"][i]


def match(doc: dict[str, Any]) -> dict[str, Any]:
    return entry(doc)["match"]


def action(doc: dict[str, Any]) -> dict[str, Any]:
    return entry(doc)["route"]


R0 = "servers[0].routers[0]"
V0 = f"{R0}.virtual_hosts[0]"
E0 = f"{V0}.routers[0]"
PENDING = "known MOSN key, not implemented yet: ignored"


def test_pending_mosn_keys_warn_with_their_paths() -> None:
    doc = minimal_doc()
    # Refused keys (access, TLS) load silently while their values leave them off.
    vhost(doc).update(require_tls="NONE", Per_Filter_Config={})
    entry(doc).update(metadata={"filter_metadata": {}}, request_mirror_policies={})
    match(doc).update(variables=[], dsl_expressions=[])
    action(doc).update(
        auto_host_rewrite_header="x-host",
        mirror_policies={},
        cluster_variable="x",
    )
    entry(doc, 0)["route"] = {
        **action(doc),
        "cluster_name": None,
        "weighted_clusters": [{"cluster": {"name": "up", "weight": 1}}],
        "regex_rewrite": {"pattern": {"regex": "a", "google_re2": {}}, "substitution": "b"},
    }
    del entry(doc)["route"]["cluster_name"]
    loaded = parse_config(doc)
    assert sorted(loaded.warnings) == sorted(
        f"{path}: {PENDING}"
        for path in [
            f"{E0}.metadata",
            f"{E0}.request_mirror_policies",
            f"{E0}.route.auto_host_rewrite_header",
            f"{E0}.route.mirror_policies",
            f"{E0}.route.cluster_variable",
            f"{E0}.route.regex_rewrite.pattern.google_re2",
        ]
    )
    (r,) = loaded.config.servers[0].routers[0].virtual_hosts[0].routers
    assert r.route.weighted_clusters[0].cluster.name == "up"


def test_access_changing_mosn_keys_are_refused_with_their_paths() -> None:
    doc = minimal_doc()
    vhost(doc).update(require_tls="ALL", Per_Filter_Config={"ip_access": {}})
    match(doc).update(variables=[{"name": "x", "value": "1"}], dsl_expressions=[{"x": 1}])
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert sorted(exc.value.errors) == sorted(
        [
            f"{V0}.require_tls: require_tls is not enforced yet: requests over cleartext would"
            " be served (remove the key, or set it to NONE)",
            f"{V0}.per_filter_config: per-virtual-host filter configs are not supported yet:"
            " give per_filter_config on each route instead",
            f"{E0}.match.variables: variables match conditions are not supported yet: the"
            " route would match requests they exclude",
            f"{E0}.match.dsl_expressions: dsl_expressions match conditions are not supported"
            " yet: the route would match requests they exclude",
        ]
    )


def test_router_level_header_lists_are_implemented_not_pending() -> None:
    doc = minimal_doc()
    router(doc).update(
        request_headers_to_add=[{"header": {"key": "a", "value": "1"}}],
        response_headers_to_add=[{"header": {"key": "b", "value": "2"}, "append": False}],
        request_headers_to_remove=["c"],
        response_headers_to_remove=["d"],
    )
    loaded = parse_config(doc)
    assert loaded.warnings == ()
    r = loaded.config.servers[0].routers[0]
    assert r.request_headers_to_add[0].append is True  # the default
    assert r.response_headers_to_add[0].append is False
    assert (r.request_headers_to_remove, r.response_headers_to_remove) == (("c",), ("d",))


# --------------------------------------------------------------------------- errors


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.errors


UNKNOWN_UP = "(defined: alt, up)"
RETRY_VALID = "(valid: 5xx, connect-failure, gateway-error, reset, retriable-status-codes)"
ROUTE_KEYS = "direct_response, match, name, per_filter_config, redirect, route"
BAD_REGEX = "invalid regex: missing ), unterminated subpattern at position 1"


def second_route(d: dict[str, Any], route: dict[str, Any]) -> None:
    vhost(d)["routers"].append({"match": {"prefix": "/b"}, "route": route})


def add_vhost(d: dict[str, Any], *domains: str) -> None:
    router(d)["virtual_hosts"].append(
        {"domains": list(domains), "routers": copy.deepcopy(vhost(d)["routers"])}
    )


BAD_ROUTES = [
    # ---- references
    pytest.param(
        lambda d: second_route(d, {"cluster_name": "x"}),
        [f"{V0}.routers[1].route.cluster_name: unknown cluster 'x' {UNKNOWN_UP}"],
        id="unknown-cluster-name",
    ),
    pytest.param(
        lambda d: second_route(
            d,
            {
                "weighted_clusters": [
                    {"cluster": {"name": "up", "weight": 1}},
                    {"cluster": {"name": "gone", "weight": 0}},
                ]
            },
        ),
        [
            f"{V0}.routers[1].route.weighted_clusters[1].cluster.weight: "
            "expected an integer of at least 1, got 0",
            f"{V0}.routers[1].route.weighted_clusters[1].cluster.name: "
            f"unknown cluster 'gone' {UNKNOWN_UP}",
        ],
        id="weighted-cluster-unknown-and-weight-0",
    ),
    pytest.param(
        lambda d: action(d).update(cluster_name=None, weighted_clusters=[{"cluster": {}}]),
        [
            f"{E0}.route.weighted_clusters[0].cluster.name: required field missing",
            f"{E0}.route.weighted_clusters[0].cluster.weight: required field missing",
        ],
        id="weighted-cluster-without-name-and-weight",
    ),
    # ---- the route entry
    pytest.param(
        lambda d: entry(d).pop("route"),
        [f"{E0}: give exactly one of route, redirect, direct_response (got none)"],
        id="no-action",
    ),
    pytest.param(
        lambda d: entry(d).update(direct_response={"status": 200}, redirect={"host_redirect": "a"}),
        [
            f"{E0}: give exactly one of route, redirect, direct_response "
            "(got route, redirect, direct_response)"
        ],
        id="three-actions",
    ),
    pytest.param(
        lambda d: entry(d).update(rout={}),
        [f"{E0}.rout: unknown key (known keys: {ROUTE_KEYS})"],
        id="unknown-key",
    ),
    # ---- match
    pytest.param(
        lambda d: match(d).update(path="/a", regex="/b"),
        [f"{E0}.match: give at most one of prefix, path, regex (got prefix, path, regex)"],
        id="prefix-path-and-regex",
    ),
    pytest.param(
        lambda d: match(d).update(prefix=None, regex="/(a"),
        [f"{E0}.match.regex: {BAD_REGEX}"],
        id="invalid-path-regex",
    ),
    pytest.param(
        lambda d: match(d).update(case_sensitive="no"),
        [f"{E0}.match.case_sensitive: expected true or false, got 'no'"],
        id="case-sensitive-not-a-bool",
    ),
    pytest.param(
        lambda d: match(d).update(headers=[{"value": "1"}]),
        [f"{E0}.match.headers[0].name: required field missing"],
        id="header-without-name",
    ),
    pytest.param(
        lambda d: match(d).update(headers=[{"name": "x a", "value": "1"}]),
        [f"{E0}.match.headers[0].name: invalid header name 'x a'"],
        id="header-name-invalid",
    ),
    pytest.param(
        lambda d: match(d).update(headers=[{"name": "x"}, {"name": "y", "invert": True}]),
        [
            f"{E0}.match.headers[0]: give value, or present: true",
            f"{E0}.match.headers[1]: give value, or present: true",
        ],
        id="header-without-value",
    ),
    pytest.param(
        lambda d: match(d).update(headers=[{"name": "x", "value": "1", "present": True}]),
        [f"{E0}.match.headers[0]: give value (and regex) or present: true, not both"],
        id="header-value-and-present",
    ),
    pytest.param(
        lambda d: match(d).update(headers=[{"name": "x", "value": "a(b", "regex": True}]),
        [f"{E0}.match.headers[0].value: {BAD_REGEX}"],
        id="header-invalid-regex",
    ),
    pytest.param(
        lambda d: match(d).update(headers=[{"name": "x", "value": "1", "invert": 1}]),
        [f"{E0}.match.headers[0].invert: expected true or false, got 1"],
        id="header-invert-not-a-bool",
    ),
    pytest.param(
        lambda d: match(d).update(query_parameters=[{"name": "", "value": "1"}, {"value": "2"}]),
        [
            f"{E0}.match.query_parameters[0].name: a name is required",
            f"{E0}.match.query_parameters[1].name: required field missing",
        ],
        id="query-parameter-without-name",
    ),
    pytest.param(
        lambda d: match(d).update(
            query_parameters=[{"name": "q", "value": "[(", "regex": True}, {"name": "p"}]
        ),
        [
            f"{E0}.match.query_parameters[0].value: invalid regex: "
            "unterminated character set at position 0",
            f"{E0}.match.query_parameters[1]: give value, or present: true",
        ],
        id="query-parameter-bad-regex-and-no-value",
    ),
    # ---- route action
    pytest.param(
        lambda d: action(d).pop("cluster_name"),
        [
            f"{E0}.route: give exactly one of cluster_name, cluster_header, weighted_clusters "
            "(got none)"
        ],
        id="no-cluster",
    ),
    pytest.param(
        lambda d: action(d).update(cluster_header="x-cluster"),
        [
            f"{E0}.route: give exactly one of cluster_name, cluster_header, weighted_clusters "
            "(got cluster_name, cluster_header)"
        ],
        id="two-cluster-choices",
    ),
    pytest.param(
        lambda d: action(d).update(cluster_name=None, cluster_header="x cluster"),
        [f"{E0}.route.cluster_header: invalid header name 'x cluster'"],
        id="cluster-header-invalid",
    ),
    pytest.param(
        lambda d: action(d).update(
            prefix_rewrite="/", regex_rewrite={"pattern": {"regex": "a"}, "substitution": "b"}
        ),
        [f"{E0}.route: give prefix_rewrite or regex_rewrite, not both"],
        id="two-rewrites",
    ),
    pytest.param(
        lambda d: action(d).update(regex_rewrite={"pattern": {"regex": "a("}}),
        [f"{E0}.route.regex_rewrite.pattern.regex: {BAD_REGEX}"],
        id="regex-rewrite-invalid-pattern",
    ),
    pytest.param(
        lambda d: action(d).update(regex_rewrite={"pattern": {}, "substitution": "b"}),
        [f"{E0}.route.regex_rewrite.pattern.regex: required field missing"],
        id="regex-rewrite-without-regex",
    ),
    pytest.param(
        lambda d: action(d).update(
            regex_rewrite={"pattern": {"regex": "(a)"}, "substitution": "\\2"}
        ),
        [
            f"{E0}.route.regex_rewrite.substitution: "
            "invalid substitution: invalid group reference 2 at position 1"
        ],
        id="regex-rewrite-bad-group",
    ),
    pytest.param(
        lambda d: action(d).update(host_rewrite="a.b", auto_host_rewrite=True),
        [f"{E0}.route: give host_rewrite or auto_host_rewrite, not both"],
        id="two-host-rewrites",
    ),
    pytest.param(
        lambda d: action(d).update(host_rewrite="a/b"),
        [f"{E0}.route.host_rewrite: invalid host 'a/b'"],
        id="host-rewrite-invalid",
    ),
    pytest.param(
        lambda d: action(d).update(timeout="soon"),
        [f"{E0}.route.timeout: expected a duration such as '3s' or '250ms', got 'soon'"],
        id="timeout-not-a-duration",
    ),
    # ---- retry policy
    pytest.param(
        lambda d: action(d).update(retry_policy={"retry_on": "5xx, bogus"}),
        [f"{E0}.route.retry_policy.retry_on: unknown retry condition 'bogus' {RETRY_VALID}"],
        id="retry-on-unknown-token",
    ),
    pytest.param(
        lambda d: action(d).update(retry_policy={"retry_on": ["reset", "5XX", "nope"]}),
        [f"{E0}.route.retry_policy.retry_on: unknown retry condition 'nope' {RETRY_VALID}"],
        id="retry-on-list-unknown-token",
    ),
    pytest.param(
        lambda d: action(d).update(retry_policy={"retry_on": 3}),
        [f"{E0}.route.retry_policy.retry_on: expected true, false, a string or a list, got 3"],
        id="retry-on-number",
    ),
    pytest.param(
        lambda d: action(d).update(
            retry_policy={"retry_on": True, "retry_timeout": "1s", "per_try_timeout": "2s"}
        ),
        [f"{E0}.route.retry_policy: give per_try_timeout or its MOSN name retry_timeout, not both"],
        id="retry-timeout-and-alias",
    ),
    pytest.param(
        lambda d: action(d).update(
            retry_policy={"retry_on": True, "retriable_status_codes": [409, 600, 99]}
        ),
        [
            f"{E0}.route.retry_policy.retriable_status_codes[1]: "
            "expected an HTTP status from 100 to 599, got 600",
            f"{E0}.route.retry_policy.retriable_status_codes[2]: "
            "expected an HTTP status from 100 to 599, got 99",
        ],
        id="retriable-status-codes-out-of-range",
    ),
    pytest.param(
        lambda d: action(d).update(retry_policy={"retry_on": True, "num_retries": -1}),
        [f"{E0}.route.retry_policy.num_retries: expected 0 or more, got -1"],
        id="negative-retries",
    ),
    pytest.param(
        lambda d: action(d).update(retry_policy={"retry_on": True, "num_retries": "3"}),
        [f"{E0}.route.retry_policy.num_retries: expected an integer, got '3'"],
        id="retries-as-a-string",
    ),
    # ---- redirect
    pytest.param(
        lambda d: entry(d).update(route=None, redirect={"response_code": 305}),
        [f"{E0}.redirect.response_code: expected one of 301, 302, 303, 307, 308, got 305"],
        id="redirect-code",
    ),
    pytest.param(
        lambda d: entry(d).update(
            route=None, redirect={"path_redirect": "/a", "prefix_rewrite": "/"}
        ),
        [f"{E0}.redirect: give path_redirect or prefix_rewrite, not both"],
        id="redirect-path-and-prefix",
    ),
    pytest.param(
        lambda d: entry(d).update(route=None, redirect={"path_redirect": "relative"}),
        [f"{E0}.redirect.path_redirect: expected a path starting with '/', got 'relative'"],
        id="redirect-relative-path",
    ),
    pytest.param(
        lambda d: entry(d).update(route=None, redirect={"prefix_rewrite": "/a b"}),
        [f"{E0}.redirect.prefix_rewrite: a path may not contain white space, got '/a b'"],
        id="redirect-path-with-space",
    ),
    pytest.param(
        lambda d: entry(d).update(route=None, redirect={"scheme_redirect": "ht tp"}),
        [f"{E0}.redirect.scheme_redirect: invalid scheme 'ht tp'"],
        id="redirect-scheme",
    ),
    pytest.param(
        lambda d: entry(d).update(route=None, redirect={"host_redirect": "a.com/x"}),
        [f"{E0}.redirect.host_redirect: invalid host 'a.com/x'"],
        id="redirect-host",
    ),
    pytest.param(
        lambda d: entry(d).update(route=None, redirect={"strip_query": "yes"}),
        [f"{E0}.redirect.strip_query: expected true or false, got 'yes'"],
        id="redirect-strip-query-not-a-bool",
    ),
    # ---- direct response
    pytest.param(
        lambda d: entry(d).update(route=None, direct_response={"body": "x"}),
        [f"{E0}.direct_response.status: required field missing"],
        id="direct-response-without-status",
    ),
    pytest.param(
        lambda d: entry(d).update(route=None, direct_response={"status": 600}),
        [f"{E0}.direct_response.status: expected an HTTP status from 100 to 599, got 600"],
        id="direct-response-status-600",
    ),
    pytest.param(
        lambda d: entry(d).update(route=None, direct_response={"status": 99}),
        [f"{E0}.direct_response.status: expected an HTTP status from 100 to 599, got 99"],
        id="direct-response-status-99",
    ),
    pytest.param(
        lambda d: entry(d).update(route=None, direct_response={"status": 200, "body": 5}),
        [f"{E0}.direct_response.body: expected a string, got 5"],
        id="direct-response-body-not-a-string",
    ),
    # ---- header mutations
    pytest.param(
        lambda d: action(d).update(
            request_headers_to_add=[
                {"header": {"key": "bad key", "value": "1"}},
                {"header": {"key": "x", "value": "a\r\nInjected: 1"}},
                {"header": {"key": "Host", "value": "h"}},
                {"header": {"value": "v"}},
            ]
        ),
        [
            f"{E0}.route.request_headers_to_add[0].header.key: invalid header name 'bad key'",
            f"{E0}.route.request_headers_to_add[1].header.value: "
            "header value may not contain CR, LF or NUL, got 'a\\r\\nInjected: 1'",
            f"{E0}.route.request_headers_to_add[2].header.key: header 'Host' may not be added "
            "or removed (use host_rewrite for the host)",
            f"{E0}.route.request_headers_to_add[3].header.key: required field missing",
        ],
        id="headers-to-add",
    ),
    pytest.param(
        lambda d: vhost(d).update(
            response_headers_to_add=[{"header": {"key": "a", "value": "1"}, "append": "no"}]
        ),
        [f"{V0}.response_headers_to_add[0].append: expected true or false, got 'no'"],
        id="append-not-a-bool",
    ),
    pytest.param(
        lambda d: router(d).update(request_headers_to_remove=["ok", ":path", "a b"]),
        [
            f"{R0}.request_headers_to_remove[1]: header ':path' may not be added or removed "
            "(use host_rewrite for the host)",
            f"{R0}.request_headers_to_remove[2]: invalid header name 'a b'",
        ],
        id="headers-to-remove",
    ),
    pytest.param(
        lambda d: vhost(d).update(response_headers_to_remove="server"),
        [f"{V0}.response_headers_to_remove: expected a list, got 'server'"],
        id="headers-to-remove-not-a-list",
    ),
    # ---- virtual hosts and domains
    pytest.param(
        lambda d: vhost(d).update(domains=[]),
        [f"{V0}.domains: a virtual host needs at least one domain"],
        id="no-domains",
    ),
    pytest.param(
        lambda d: vhost(d).update(domains=["a.*.com", "*a*", "a.com:80", "[::1]:80", ""]),
        [
            f"{V0}.domains[0]: expected a domain such as 'a.com', '*.a.com', 'a.*' or '*', "
            "got 'a.*.com'",
            f"{V0}.domains[1]: expected a domain such as 'a.com', '*.a.com', 'a.*' or '*', "
            "got '*a*'",
            f"{V0}.domains[2]: domains are matched without the port, got 'a.com:80'",
            f"{V0}.domains[3]: domains are matched without the port, got '[::1]:80'",
            f"{V0}.domains[4]: expected a domain such as 'a.com', '*.a.com', 'a.*' or '*', got ''",
        ],
        id="invalid-domains",
    ),
    pytest.param(
        lambda d: [
            vhost(d).update(domains=["a.com", "*.b.com"]),
            add_vhost(d, "c.com", "A.COM"),
            add_vhost(d, "*.B.com", "d.com", "d.com"),
        ],
        [
            f"{R0}.virtual_hosts[1].domains[1]: duplicate domain 'A.COM' "
            "(also in virtual_hosts[0])",
            f"{R0}.virtual_hosts[2].domains[0]: duplicate domain '*.B.com' "
            "(also in virtual_hosts[0])",
            f"{R0}.virtual_hosts[2].domains[2]: duplicate domain 'd.com' "
            "(also in virtual_hosts[2])",
        ],
        id="duplicate-domains",
    ),
    pytest.param(
        lambda d: add_vhost(d, "*"),
        [
            f"{R0}.virtual_hosts[1].domains[0]: a second default virtual host '*' "
            "(first: virtual_hosts[0])"
        ],
        id="two-default-virtual-hosts",
    ),
    pytest.param(
        lambda d: d["servers"][0]["routers"].append(copy.deepcopy(router(d))),
        ["servers[0].routers[1].router_config_name: duplicate router config name 'r'"],
        id="duplicate-router-config-name",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), BAD_ROUTES)
def test_bad_route_config_reports_path_and_reason(mutate, expected: list[str]) -> None:
    doc = minimal_doc()
    parse_config(doc)  # the base document is valid: only the mutation can fail it
    mutate(doc)
    errors = errors_of(doc)
    assert sorted(errors) == sorted(expected)
    assert len(set(errors)) == len(errors)


def test_same_domain_in_two_router_configs_is_fine() -> None:
    doc = minimal_doc()
    other = copy.deepcopy(router(doc))
    other["router_config_name"] = "r2"
    doc["servers"][0]["routers"].append(other)
    assert len(parse_config(doc).config.servers[0].routers) == 2


def test_errors_in_several_routes_are_reported_together() -> None:
    doc = minimal_doc()
    second_route(doc, {"cluster_name": "nope"})
    vhost(doc)["routers"].append({"match": {"regex": "("}, "direct_response": {"status": 200}})
    vhost(doc)["routers"].append({"match": {}})
    assert sorted(errors_of(doc)) == sorted(
        [
            f"{V0}.routers[1].route.cluster_name: unknown cluster 'nope' {UNKNOWN_UP}",
            f"{V0}.routers[2].match.regex: invalid regex: "
            "missing ), unterminated subpattern at position 0",
            f"{V0}.routers[3]: give exactly one of route, redirect, direct_response (got none)",
        ]
    )


# --------------------------------------------------------------------------- built in Python


def test_classes_built_in_python_are_checked_too() -> None:
    """xDS builds these classes directly: the same rules hold without the loader."""
    with pytest.raises(ValueError, match="give exactly one of route, redirect"):
        Route(match=RouteMatch())
    with pytest.raises(ValueError, match="invalid regex"):
        RouteMatch(regex="(")
    with pytest.raises(ValueError, match="unknown retry condition 'x'"):
        RetryPolicy(retry_on="x")
    with pytest.raises(ValueError, match=r"virtual_hosts\[1\]\.domains\[0\]: duplicate domain 'A'"):
        RouterConfig(
            router_config_name="r",
            virtual_hosts=(
                VirtualHost(domains=("a",), routers=()),
                VirtualHost(domains=("A",), routers=()),
            ),
        )
    ok = Route(route=RouteAction(cluster_name="c", retry_policy=RetryPolicy(retry_timeout=1.0)))
    assert ok.route.retry_policy.per_try_timeout == 1.0
    assert ok.route.retry_policy.retry_on == frozenset()
