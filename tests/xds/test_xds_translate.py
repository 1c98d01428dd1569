"""Envoy v3 resources built in Python -> trio-mesh documents -> parse_config's classes."""

from __future__ import annotations

import datetime
import re

import pytest

from trio_mesh.config.filter_configs import (
    ClientCertDetails,
    ForwardClientCert,
    Protocol,
    ProxyConfig,
    TcpProxyConfig,
)
from trio_mesh.config.load import parse_config
from trio_mesh.config.model import LbType
from trio_mesh.config.routes import FILTER_DISABLED
from trio_mesh.config.scalars import Address
from trio_mesh.config.stream_filters.fault import FaultConfig
from trio_mesh.config.stream_filters.flowcontrol import FlowControlConfig
from trio_mesh.config.stream_filters.gzip import GzipConfig
from trio_mesh.xds import types as t
from trio_mesh.xds.envoy_import import envoy_import
from trio_mesh.xds.translate import (
    Compressor,
    CompressorPerRoute,
    ConvertError,
    FilterConfig,
    Gzip,
    HttpFault,
    ListenerParts,
    LocalRateLimit,
    cluster_doc,
    cluster_is_http2,
    endpoint_hosts,
    listener_doc,
    route_config_doc,
)

with envoy_import():
    from envoy_data_plane.envoy.config.core.v3 import (
        RuntimeFeatureFlag,
        RuntimeFractionalPercent,
        TypedExtensionConfig,
    )
    from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
        XRateLimitHeadersRfcVersion,
    )
    from envoy_data_plane.envoy.extensions.filters.common.fault.v3 import (
        FaultDelay,
        FaultDelayHeaderDelay,
    )
    from envoy_data_plane.envoy.extensions.filters.http.compressor.v3 import (
        CompressorCommonDirectionConfig,
        CompressorRequestDirectionConfig,
        CompressorResponseDirectionConfig,
    )
    from envoy_data_plane.envoy.extensions.filters.http.fault.v3 import FaultAbort
    from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac
    from envoy_data_plane.envoy.type.v3 import (
        FractionalPercent,
        FractionalPercentDenominatorType,
        HttpStatus,
        StatusCode,
        TokenBucket,
    )

ADS = t.ConfigSource(ads=t.AggregatedConfigSource(), resource_api_version=t.ApiVersion.V3)
secs = lambda s: datetime.timedelta(seconds=s)  # noqa: E731


def sock(host: str, port: int) -> t.Address:
    return t.Address(socket_address=t.SocketAddress(address=host, port_value=port))


def lb_endpoint(host: str, port: int, **kw: object) -> t.LbEndpoint:
    return t.LbEndpoint(endpoint=t.Endpoint(address=sock(host, port)), **kw)


def router_filter() -> t.HttpFilter:
    return t.HttpFilter(name="envoy.filters.http.router", typed_config=t.Any.pack(t.Router()))


def hcm(**kw: object) -> t.HttpConnectionManager:
    kw.setdefault("rds", t.Rds(config_source=ADS, route_config_name="main_routes"))
    return t.HttpConnectionManager(
        stat_prefix="ingress_http",
        codec_type=kw.pop("codec_type", t.HttpConnectionManagerCodecType.AUTO),
        http_filters=kw.pop("http_filters", [router_filter()]),
        **kw,
    )


def listener(name: str, port: int, *configs: object, **kw: object) -> t.Listener:
    return t.Listener(
        name=name,
        address=sock("127.0.0.1", port),
        filter_chains=kw.pop(
            "filter_chains",
            [
                t.FilterChain(
                    filters=[
                        t.Filter(name=f"f{i}", typed_config=t.Any.pack(c))
                        for i, c in enumerate(configs)
                    ]
                )
            ],
        ),
        **kw,
    )


def vhost(*routes: t.Route, **kw: object) -> t.VirtualHost:
    return t.VirtualHost(
        name=kw.pop("name", "all"), domains=kw.pop("domains", ["*"]), routes=list(routes), **kw
    )


def to_cluster(name: str = "backend") -> t.RouteAction:
    return t.RouteAction(cluster=name)


def compose(listeners: list[ListenerParts], routers: list[dict], clusters: list[dict]) -> object:
    doc = {
        "servers": [
            {
                "listeners": [p.listener for p in listeners],
                "routers": routers + [r for p in listeners for r in p.inline_routers],
            }
        ],
        "cluster_manager": {"clusters": clusters},
    }
    loaded = parse_config(doc)
    assert loaded.warnings == ()
    return loaded.config


# --------------------------------------------------------------------------- the happy path


def test_full_snapshot_through_parse_config() -> None:
    static = t.Cluster(
        name="static_be",
        type=t.ClusterDiscoveryType.STATIC,
        connect_timeout=secs(1.5),
        lb_policy=t.ClusterLbPolicy.LEAST_REQUEST,
        circuit_breakers=t.CircuitBreakers(
            thresholds=[
                t.CircuitBreakersThresholds(
                    priority=t.RoutingPriority.DEFAULT,
                    max_connections=10,
                    max_pending_requests=5,
                    max_retries=0,
                )
            ]
        ),
        typed_extension_protocol_options={
            t.UPSTREAM_HTTP_OPTIONS_KEY: t.Any.pack(
                t.UpstreamHttpProtocolOptions(
                    common_http_protocol_options=t.HttpProtocolOptions(
                        idle_timeout=secs(60), max_requests_per_connection=100
                    ),
                    explicit_http_config=t.HttpProtocolOptionsExplicitHttpConfig(
                        http_protocol_options=t.Http1ProtocolOptions()
                    ),
                )
            )
        },
        load_assignment=t.ClusterLoadAssignment(
            cluster_name="static_be",
            endpoints=[
                t.LocalityLbEndpoints(
                    lb_endpoints=[
                        lb_endpoint("10.0.0.1", 8001, load_balancing_weight=3),
                        lb_endpoint("::1", 8002),
                    ]
                )
            ],
        ),
    )
    eds = t.Cluster(
        name="backend",
        type=t.ClusterDiscoveryType.EDS,
        eds_cluster_config=t.ClusterEdsClusterConfig(eds_config=ADS, service_name="backend_svc"),
        lb_policy=t.ClusterLbPolicy.RANDOM,
    )
    cla = t.ClusterLoadAssignment(
        cluster_name="backend_svc",
        endpoints=[
            t.LocalityLbEndpoints(
                lb_endpoints=[
                    lb_endpoint("10.0.1.1", 9000, load_balancing_weight=128),
                    lb_endpoint("10.0.1.2", 9000, health_status=t.HealthStatus.UNHEALTHY),
                    lb_endpoint("10.0.1.3", 9000, health_status=t.HealthStatus.DRAINING),
                ]
            ),
            t.LocalityLbEndpoints(
                lb_endpoints=[
                    lb_endpoint("10.0.2.1", 9001, health_status=t.HealthStatus.HEALTHY),
                ]
            ),
        ],
    )
    rc = t.RouteConfiguration(
        name="main_routes",
        response_headers_to_add=[
            t.HeaderValueOption(header=t.HeaderValue(key="x-served-by", value="trio-mesh"))
        ],
        virtual_hosts=[
            vhost(
                t.Route(
                    match=t.RouteMatch(
                        prefix="/api/",
                        headers=[
                            t.HeaderMatcher(
                                name="x-env", string_match=t.StringMatcher(exact="prod")
                            ),
                            t.HeaderMatcher(name="x-canary", present_match=True, invert_match=True),
                            t.HeaderMatcher(
                                name="x-user", string_match=t.StringMatcher(prefix="a.")
                            ),
                        ],
                    ),
                    route=t.RouteAction(
                        cluster="backend",
                        prefix_rewrite="/v1/",
                        timeout=secs(2.5),
                        retry_policy=t.RetryPolicy(
                            retry_on="5xx,connect-failure", num_retries=3, per_try_timeout=secs(1)
                        ),
                    ),
                    request_headers_to_add=[
                        t.HeaderValueOption(
                            header=t.HeaderValue(key="x-route", value="api"),
                            append_action=t.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
                        )
                    ],
                ),
                t.Route(
                    match=t.RouteMatch(safe_regex=t.RegexMatcher(regex="/items/[0-9]+")),
                    route=t.RouteAction(
                        weighted_clusters=t.WeightedCluster(
                            clusters=[
                                t.WeightedClusterClusterWeight(name="backend", weight=90),
                                t.WeightedClusterClusterWeight(name="static_be", weight=10),
                            ]
                        )
                    ),
                ),
                t.Route(
                    match=t.RouteMatch(path="/old"),
                    redirect=t.RedirectAction(
                        path_redirect="/new",
                        https_redirect=True,
                        response_code=t.RedirectActionRedirectResponseCode.FOUND,
                    ),
                ),
                t.Route(
                    match=t.RouteMatch(prefix="/"),
                    direct_response=t.DirectResponseAction(
                        status=404, body=t.DataSource(inline_string="nothing\n")
                    ),
                ),
                domains=["example.com", "*.example.com"],
                name="example",
            ),
            vhost(t.Route(match=t.RouteMatch(prefix="/"), route=to_cluster("static_be"))),
        ],
    )
    http = listener_doc(
        listener(
            "ingress",
            8080,
            hcm(
                codec_type=t.HttpConnectionManagerCodecType.HTTP1,
                use_remote_address=True,
                common_http_protocol_options=t.HttpProtocolOptions(idle_timeout=secs(300)),
                request_headers_timeout=secs(5),
                max_request_headers_kb=32,
            ),
        )
    )
    assert http.rds == ["main_routes"] and http.inline_routers == []
    inline = listener_doc(
        listener(
            "admin",
            8081,
            hcm(
                rds=None,
                route_config=t.RouteConfiguration(
                    name="local",
                    virtual_hosts=[
                        vhost(t.Route(match=t.RouteMatch(prefix="/"), route=to_cluster()))
                    ],
                ),
            ),
        )
    )
    assert inline.rds == []
    tcp = listener_doc(
        listener(
            "tcp", 9090, t.TcpProxy(stat_prefix="tcp", cluster="static_be", max_connect_attempts=2)
        )
    )

    static_doc, static_eds = cluster_doc(static)
    eds_doc, service = cluster_doc(eds)
    assert static_eds is None and service == "backend_svc" and eds_doc["hosts"] == []
    eds_doc["hosts"] = endpoint_hosts(cla)
    config = compose([http, inline, tcp], [route_config_doc(rc)], [static_doc, eds_doc])

    ingress, admin, tcp_l = config.listeners
    assert ingress.address == Address("127.0.0.1", 8080)
    assert ingress.connection_idle_timeout == 300.0
    proxy = ingress.filter_chains[0].filters[0]
    assert proxy.type == "proxy" and isinstance(proxy.config, ProxyConfig)
    assert proxy.config.downstream_protocol == Protocol.HTTP1
    assert proxy.config.upstream_protocol == Protocol.HTTP1
    assert proxy.config.router_config_name == "main_routes"
    assert proxy.config.add_x_forwarded_for is True
    assert proxy.config.request_header_timeout == 5.0
    assert proxy.config.max_request_header_bytes == 32 * 1024
    admin_proxy = admin.filter_chains[0].filters[0].config
    assert admin_proxy.downstream_protocol == Protocol.AUTO
    assert admin_proxy.router_config_name == "admin/local"
    assert admin_proxy.add_x_forwarded_for is False  # Envoy's default use_remote_address
    tp = tcp_l.filter_chains[0].filters[0]
    assert tp.type == "tcp_proxy" and isinstance(tp.config, TcpProxyConfig)
    assert tp.config.cluster == "static_be" and tp.config.max_connect_attempts == 2
    assert tp.config.idle_timeout == 3600.0  # Envoy's default when unset

    routers = {r.router_config_name: r for r in config.servers[0].routers}
    assert set(routers) == {"main_routes", "admin/local"}
    main = routers["main_routes"]
    assert main.response_headers_to_add[0].header.key == "x-served-by"
    example, default = main.virtual_hosts
    assert example.domains == ("example.com", "*.example.com") and default.domains == ("*",)
    api, items, old, fallback = example.routers
    assert api.match.prefix == "/api/"
    env, canary, user = api.match.headers
    assert (env.name, env.value, env.regex, env.invert) == ("x-env", "prod", False, False)
    assert canary.present and canary.invert
    assert user.regex and re.fullmatch(user.value, "a.b") and not re.fullmatch(user.value, "ab")
    assert api.route.cluster_name == "backend" and api.route.prefix_rewrite == "/v1/"
    assert api.route.timeout == 2.5
    assert api.route.retry_policy.retry_on == frozenset({"5xx", "connect-failure"})
    assert api.route.retry_policy.num_retries == 3
    assert api.route.retry_policy.per_try_timeout == 1.0
    added = api.route.request_headers_to_add[0]
    assert (added.header.key, added.header.value, added.append) == ("x-route", "api", False)
    assert items.match.regex == "/items/[0-9]+"
    assert [(w.cluster.name, w.cluster.weight) for w in items.route.weighted_clusters] == [
        ("backend", 90),
        ("static_be", 10),
    ]
    assert items.route.timeout == 15.0
    assert old.redirect.path_redirect == "/new" and old.redirect.scheme_redirect == "https"
    assert old.redirect.response_code == 302
    assert fallback.direct_response.status == 404
    assert fallback.direct_response.body == "nothing\n"
    assert default.routers[0].route.cluster_name == "static_be"

    sb = config.cluster("static_be")
    assert sb.lb_type == LbType.LB_LEAST_REQUEST and sb.connect_timeout == 1.5
    assert sb.max_request_per_conn == 100 and sb.idle_timeout == 60.0
    assert [(str(h.address), h.weight) for h in sb.hosts] == [
        ("10.0.0.1:8001", 3),
        ("[::1]:8002", 1),
    ]
    limits = sb.thresholds()
    assert (
        limits.max_connections,
        limits.max_pending_requests,
        limits.max_requests,
        limits.max_retries,
    ) == (10, 5, None, 0)
    be = config.cluster("backend")
    assert be.lb_type == LbType.LB_RANDOM and be.connect_timeout == 5.0  # Envoy's default
    assert [(str(h.address), h.weight) for h in be.hosts] == [
        ("10.0.1.1:9000", 128),
        ("10.0.2.1:9001", 1),
    ]


def test_eds_service_name_defaults_to_cluster_name() -> None:
    c = t.Cluster(
        name="be",
        type=t.ClusterDiscoveryType.EDS,
        eds_cluster_config=t.ClusterEdsClusterConfig(eds_config=ADS),
    )
    assert cluster_doc(c)[1] == "be"


@pytest.mark.parametrize(
    ("policy", "lb_type"),
    [(t.ClusterLbPolicy.MAGLEV, "LB_MAGLEV"), (t.ClusterLbPolicy.RING_HASH, "LB_RING_HASH")],
)
def test_hashing_lb_policies(policy: t.ClusterLbPolicy, lb_type: str) -> None:
    doc, _ = cluster_doc(t.Cluster(name="h", lb_policy=policy))
    assert doc["lb_type"] == lb_type


def test_deprecated_fields_still_convert() -> None:
    """Control planes still send the fields Envoy deprecated; they map like their successors."""
    with pytest.warns(DeprecationWarning):
        c = t.Cluster(
            name="old",
            max_requests_per_connection=7,
            common_http_protocol_options=t.HttpProtocolOptions(idle_timeout=secs(9)),
        )
    doc, _ = cluster_doc(c)
    assert (doc["max_request_per_conn"], doc["idle_timeout"]) == (7, "9s")
    with pytest.warns(DeprecationWarning):
        m = t.HeaderMatcher(name="x-env", exact_match="prod", invert_match=True)
    rc = t.RouteConfiguration(
        name="r",
        virtual_hosts=[
            vhost(t.Route(match=t.RouteMatch(prefix="/", headers=[m]), route=to_cluster()))
        ],
    )
    header = route_config_doc(rc)["virtual_hosts"][0]["routers"][0]["match"]["headers"][0]
    assert header == {"name": "x-env", "value": "prod", "invert": True}


def test_cluster_is_http2() -> None:
    plain = t.Cluster(name="a", connect_timeout=secs(1))
    with pytest.warns(DeprecationWarning):
        old_style = t.Cluster(name="b", http2_protocol_options=t.Http2ProtocolOptions())
    ext = t.Cluster(
        name="c",
        typed_extension_protocol_options={
            t.UPSTREAM_HTTP_OPTIONS_KEY: t.Any.pack(
                t.UpstreamHttpProtocolOptions(
                    explicit_http_config=t.HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=t.Http2ProtocolOptions()
                    )
                )
            )
        },
    )
    ext_h1 = t.Cluster(
        name="d",
        typed_extension_protocol_options={
            t.UPSTREAM_HTTP_OPTIONS_KEY: t.Any.pack(
                t.UpstreamHttpProtocolOptions(
                    explicit_http_config=t.HttpProtocolOptionsExplicitHttpConfig(
                        http_protocol_options=t.Http1ProtocolOptions()
                    )
                )
            )
        },
    )
    assert [cluster_is_http2(c) for c in (plain, old_style, ext, ext_h1)] == [
        False,
        True,
        True,
        False,
    ]
    assert cluster_doc(ext)[0]["name"] == "c"  # the extension converts too


# --------------------------------------------------------------------------- refusals


def expect(fn: object, arg: object, message: str) -> ConvertError:
    with pytest.raises(ConvertError) as info:
        fn(arg)  # type: ignore[operator]
    assert str(info.value) == message
    return info.value


def test_unsupported_route_field_named_with_full_path() -> None:
    rc = t.RouteConfiguration(
        virtual_hosts=[
            vhost(
                t.Route(match=t.RouteMatch(prefix="/a"), route=to_cluster()),
                t.Route(
                    match=t.RouteMatch(prefix="/b", grpc=t.RouteMatchGrpcRouteMatchOptions()),
                    route=to_cluster(),
                ),
            )
        ]
    )
    err = expect(
        listener_doc,
        listener("ingress", 1, hcm(rds=None, route_config=rc)),
        "Listener 'ingress': filter_chains[0].filters[0].typed_config.route_config"
        ".virtual_hosts[0].routes[1].match.grpc: not supported by trio-mesh",
    )
    assert err.kind == "Listener" and err.name == "ingress"


def test_route_hash_policy_translates() -> None:
    hp = [
        t.RouteActionHashPolicy(header=t.RouteActionHashPolicyHeader(header_name="x-user")),
        t.RouteActionHashPolicy(
            cookie=t.RouteActionHashPolicyCookie(name="s", path="/", ttl=secs(30))
        ),
        t.RouteActionHashPolicy(
            connection_properties=t.RouteActionHashPolicyConnectionProperties(source_ip=True)
        ),
        t.RouteActionHashPolicy(query_parameter=t.RouteActionHashPolicyQueryParameter(name="u")),
    ]
    rc = t.RouteConfiguration(
        name="r",
        virtual_hosts=[
            vhost(
                t.Route(
                    match=t.RouteMatch(prefix="/"), route=t.RouteAction(cluster="a", hash_policy=hp)
                )
            )
        ],
    )
    doc = route_config_doc(rc)
    assert doc["virtual_hosts"][0]["routers"][0]["route"]["hash_policy"] == [
        {"header": {"key": "x-user"}},
        {"cookie": {"name": "s", "path": "/", "ttl": "30s"}},
        {"source_ip": {}},
        {"query_parameter": {"name": "u"}},
    ]
    terminal = [
        t.RouteActionHashPolicy(
            header=t.RouteActionHashPolicyHeader(header_name="x"), terminal=True
        )
    ]
    rc.virtual_hosts[0].routes[0].route.hash_policy = terminal
    expect(
        route_config_doc,
        rc,
        "RouteConfiguration 'r': virtual_hosts[0].routes[0].route.hash_policy[0].terminal:"
        " not supported by trio-mesh",
    )


def test_route_config_refusals() -> None:
    def rc(route: t.Route, **kw: object) -> t.RouteConfiguration:
        return t.RouteConfiguration(name="r", virtual_hosts=[vhost(route)], **kw)

    prefix = t.RouteMatch(prefix="/")
    expect(
        route_config_doc,
        rc(
            t.Route(
                match=prefix,
                route=t.RouteAction(
                    cluster="a",
                    request_mirror_policies=[t.RouteActionRequestMirrorPolicy(cluster="m")],
                ),
            )
        ),
        "RouteConfiguration 'r': virtual_hosts[0].routes[0].route.request_mirror_policies:"
        " not supported by trio-mesh",
    )
    expect(
        route_config_doc,
        rc(
            t.Route(
                match=t.RouteMatch(
                    prefix="/",
                    headers=[t.HeaderMatcher(name="x", range_match=t.Int64Range(start=1, end=3))],
                ),
                route=to_cluster(),
            )
        ),
        "RouteConfiguration 'r': virtual_hosts[0].routes[0].match.headers[0].range_match:"
        " not supported by trio-mesh",
    )
    expect(
        route_config_doc,
        rc(
            t.Route(
                match=prefix,
                route=t.RouteAction(
                    cluster="a", retry_policy=t.RetryPolicy(retry_on="retriable-4xx")
                ),
            )
        ),
        "RouteConfiguration 'r': virtual_hosts[0].routes[0].route.retry_policy.retry_on:"
        " retry condition 'retriable-4xx': not supported by trio-mesh",
    )
    expect(
        route_config_doc,
        rc(t.Route(match=prefix, redirect=t.RedirectAction(port_redirect=8443))),
        "RouteConfiguration 'r': virtual_hosts[0].routes[0].redirect.port_redirect:"
        " not supported by trio-mesh",
    )
    expect(
        route_config_doc,
        rc(t.Route(match=prefix, route=to_cluster()), internal_only_headers=["x-internal"]),
        "RouteConfiguration 'r': internal_only_headers: not supported by trio-mesh",
    )
    expect(
        route_config_doc,
        rc(
            t.Route(
                match=prefix,
                direct_response=t.DirectResponseAction(status=200),
                response_headers_to_remove=["server"],
            )
        ),
        "RouteConfiguration 'r': virtual_hosts[0].routes[0].response_headers_to_remove:"
        " header mutations are supported on forwarding routes only",
    )


def test_dns_clusters(caplog: pytest.LogCaptureFixture) -> None:
    family = type(t.Cluster().dns_lookup_family)
    strict = t.Cluster(
        name="strict",
        type=t.ClusterDiscoveryType.STRICT_DNS,
        dns_refresh_rate=secs(2),
        dns_lookup_family=family.V4_ONLY,
        respect_dns_ttl=True,
        load_assignment=t.ClusterLoadAssignment(
            cluster_name="strict",
            endpoints=[
                t.LocalityLbEndpoints(
                    lb_endpoints=[lb_endpoint("backend.internal", 8080), lb_endpoint("b", 81)]
                )
            ],
        ),
    )
    doc, eds = cluster_doc(strict)
    assert eds is None
    assert doc["type"] == "STRICT_DNS"
    assert doc["dns_lookup_family"] == "V4_ONLY" and doc["dns_refresh_rate"] == "2s"
    assert [h["address"] for h in doc["hosts"]] == ["backend.internal:8080", "b:81"]
    assert "strict': respect_dns_ttl: not enforced" in caplog.text
    logical = t.Cluster(
        name="logical",
        type=t.ClusterDiscoveryType.LOGICAL_DNS,
        load_assignment=t.ClusterLoadAssignment(
            cluster_name="logical",
            endpoints=[t.LocalityLbEndpoints(lb_endpoints=[lb_endpoint("api.example", 443)])],
        ),
    )
    doc, _ = cluster_doc(logical)
    assert doc["type"] == "LOGICAL_DNS" and doc["dns_lookup_family"] == "AUTO"
    assert "dns_refresh_rate" not in doc  # the default: Envoy's 5 s
    loaded = parse_config({"cluster_manager": {"clusters": [doc]}})
    cluster = loaded.config.cluster_manager.clusters[0]
    assert cluster.type.name == "LOGICAL_DNS" and cluster.dns_refresh_rate == 5.0
    assert cluster.hosts[0].address == Address(host="api.example", port=443)


def test_cluster_refusals() -> None:
    expect(
        cluster_doc,
        t.Cluster(name="odst", type=t.ClusterDiscoveryType.ORIGINAL_DST),
        "Cluster 'odst': lb_policy: ROUND_ROBIN: ORIGINAL_DST needs CLUSTER_PROVIDED",
    )
    family = type(t.Cluster().dns_lookup_family)
    expect(
        cluster_doc,
        t.Cluster(name="all", type=t.ClusterDiscoveryType.STRICT_DNS, dns_lookup_family=family.ALL),
        "Cluster 'all': dns_lookup_family: ALL: not supported by trio-mesh",
    )
    expect(
        cluster_doc,
        t.Cluster(name="jitter", type=t.ClusterDiscoveryType.STRICT_DNS, dns_jitter=secs(1)),
        "Cluster 'jitter': dns_jitter: not supported by trio-mesh",
    )
    expect(
        cluster_doc,
        t.Cluster(name="cp", lb_policy=t.ClusterLbPolicy.CLUSTER_PROVIDED),
        "Cluster 'cp': lb_policy: CLUSTER_PROVIDED: not supported by trio-mesh",
    )
    expect(
        cluster_doc,
        t.Cluster(name="zero", connect_timeout=secs(0)),
        "Cluster 'zero': connect_timeout: expected a positive duration, got 0.0s",
    )
    expect(
        cluster_doc,
        t.Cluster(name="tls", transport_socket=t.TransportSocket(name="tls")),
        "Cluster 'tls': transport_socket: 'tls': not supported by trio-mesh (only raw_buffer,"
        " and envoy.transport_sockets.tls with a UpstreamTlsContext)",
    )
    expect(
        cluster_doc,
        t.Cluster(
            name="zone",
            common_lb_config=t.ClusterCommonLbConfig(
                locality_weighted_lb_config=t.ClusterCommonLbConfigLocalityWeightedLbConfig()
            ),
        ),
        "Cluster 'zone': common_lb_config.locality_weighted_lb_config: not supported by trio-mesh",
    )
    expect(
        cluster_doc,
        t.Cluster(
            name="slow",
            round_robin_lb_config=t.ClusterRoundRobinLbConfig(
                slow_start_config=t.ClusterSlowStartConfig(slow_start_window=secs(30))
            ),
        ),
        "Cluster 'slow': round_robin_lb_config.slow_start_config: not supported by trio-mesh",
    )
    assert (
        cluster_doc(
            t.Cluster(
                name="rr",
                round_robin_lb_config=t.ClusterRoundRobinLbConfig(),
                common_lb_config=t.ClusterCommonLbConfig(update_merge_window=secs(1)),
            )
        )[0]["lb_type"]
        == "LB_ROUNDROBIN"
    )
    expect(
        cluster_doc,
        t.Cluster(
            name="ext",
            typed_extension_protocol_options={
                "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": t.Any.pack(t.Router())
            },
        ),
        "Cluster 'ext': typed_extension_protocol_options"
        ".envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions: not supported by trio-mesh",
    )


def test_endpoint_refusals() -> None:
    def cla(*eps: t.LbEndpoint) -> t.ClusterLoadAssignment:
        return t.ClusterLoadAssignment(
            cluster_name="be", endpoints=[t.LocalityLbEndpoints(lb_endpoints=list(eps))]
        )

    expect(
        endpoint_hosts,
        cla(lb_endpoint("10.0.0.1", 1), lb_endpoint("10.0.0.2", 2, load_balancing_weight=129)),
        "ClusterLoadAssignment 'be': endpoints[0].lb_endpoints[1].load_balancing_weight:"
        " weight 129: trio-mesh takes 1 to 128",
    )
    named = t.LbEndpoint(
        endpoint=t.Endpoint(
            address=t.Address(socket_address=t.SocketAddress(address="10.0.0.1", named_port="http"))
        )
    )
    expect(
        endpoint_hosts,
        cla(named),
        "ClusterLoadAssignment 'be': endpoints[0].lb_endpoints[0].endpoint.address"
        ".socket_address.named_port: not supported by trio-mesh",
    )


def test_listener_refusals() -> None:
    matched = listener(
        "m",
        1,
        filter_chains=[t.FilterChain(filter_chain_match=t.FilterChainMatch(destination_port=443))],
    )
    expect(
        listener_doc,
        matched,
        "Listener 'm': filter_chains[0].filter_chain_match.destination_port: not supported by"
        " trio-mesh",
    )
    tls = listener(
        "tls",
        1,
        filter_chains=[
            t.FilterChain(transport_socket=t.TransportSocket(name="envoy.transport_sockets.tls"))
        ],
    )
    expect(
        listener_doc,
        tls,
        "Listener 'tls': filter_chains[0].transport_socket.typed_config: a DownstreamTlsContext"
        " is required",
    )
    # an Any of a type nothing registered: refused by its URL, before unpacking
    unknown = t.Any(
        type_url="type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
        value=b"",
    )
    odd = listener(
        "odd",
        1,
        filter_chains=[t.FilterChain(filters=[t.Filter(name="redis", typed_config=unknown)])],
    )
    expect(
        listener_doc,
        odd,
        "Listener 'odd': filter_chains[0].filters[0].typed_config.type_url:"
        " 'type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy':"
        " not supported by trio-mesh",
    )
    expect(
        listener_doc,
        listener("lf", 1, hcm(), listener_filters=[t.ListenerFilter(name="x")]),
        "Listener 'lf': listener_filters[0]: 'x': not supported by trio-mesh",
    )


def test_other_transport_sockets_are_refused_and_raw_buffer_accepted() -> None:
    """Listener and cluster alike: a transport socket other than raw_buffer and TLS is
    refused (a NACK), never served as cleartext; Envoy's cleartext socket, raw_buffer, loads."""
    alts = t.Any(
        type_url="type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts",
        value=b"",
    )
    chain = t.FilterChain(
        filters=[t.Filter(name="f", typed_config=t.Any.pack(hcm()))],
        transport_socket=t.TransportSocket(typed_config=alts),
    )
    expect(
        listener_doc,
        listener("alts", 1, filter_chains=[chain]),
        "Listener 'alts': filter_chains[0].transport_socket:"
        " 'type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts': not supported"
        " by trio-mesh (only raw_buffer, and envoy.transport_sockets.tls with a"
        " DownstreamTlsContext)",
    )
    # The upstream context on a listener (and the other way round) is refused too.
    down = t.Any.pack(t.DownstreamTlsContext())
    expect(
        cluster_doc,
        t.Cluster(name="up", transport_socket=t.TransportSocket(name="tls", typed_config=down)),
        "Cluster 'up': transport_socket: 'tls': not supported by trio-mesh (only raw_buffer,"
        " and envoy.transport_sockets.tls with a UpstreamTlsContext)",
    )
    raw = t.TransportSocket(
        name="envoy.transport_sockets.raw_buffer",
        typed_config=t.Any(
            type_url="type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3"
            ".RawBuffer",
            value=b"",
        ),
    )
    chain.transport_socket = raw
    assert listener_doc(listener("raw", 1, filter_chains=[chain])).listener["name"] == "raw"
    assert cluster_doc(t.Cluster(name="up", transport_socket=raw))[0]["name"] == "up"


def test_http_filter_refusals() -> None:
    cors = t.HttpFilter(
        name="envoy.filters.http.cors",
        typed_config=t.Any(
            type_url="type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors", value=b""
        ),
    )
    expect(
        listener_doc,
        listener("h", 1, hcm(http_filters=[cors, router_filter()])),
        "Listener 'h': filter_chains[0].filters[0].typed_config.http_filters[0]: HTTP filter"
        " 'envoy.filters.http.cors' (type.googleapis.com/envoy.extensions.filters.http.cors"
        ".v3.Cors): not supported by trio-mesh",
    )
    expect(
        listener_doc,
        listener("h", 1, hcm(http_filters=[router_filter(), router_filter()])),
        "Listener 'h': filter_chains[0].filters[0].typed_config.http_filters[0]:"
        " the router filter must be the last HTTP filter",
    )
    expect(
        listener_doc,
        listener("h", 1, hcm(stream_idle_timeout=secs(300))),
        "Listener 'h': filter_chains[0].filters[0].typed_config.stream_idle_timeout:"
        " not supported by trio-mesh",
    )
    expect(
        listener_doc,
        listener("h", 1, hcm(rds=None, scoped_routes=t.ScopedRoutes(name="s"))),
        "Listener 'h': filter_chains[0].filters[0].typed_config.scoped_routes:"
        " not supported by trio-mesh",
    )


def test_tcp_proxy_refusals_and_idle_timeout() -> None:
    expect(
        listener_doc,
        listener("t", 1, t.TcpProxy(cluster="a", access_log=[t.AccessLog(name="x")])),
        "Listener 't': filter_chains[0].filters[0].typed_config.access_log:"
        " not supported by trio-mesh",
    )
    off = listener_doc(listener("t", 1, t.TcpProxy(cluster="a", idle_timeout=secs(0))))
    assert "idle_timeout" not in off.listener["filter_chains"][0]["filters"][0]["config"]


def test_resources_received_over_the_wire_convert_the_same() -> None:
    """What a client gets: Any-packed resources in a serialized DiscoveryResponse."""
    rc = t.RouteConfiguration(
        name="r",
        virtual_hosts=[
            vhost(
                t.Route(
                    match=t.RouteMatch(prefix="/"),
                    route=t.RouteAction(cluster="c", timeout=secs(0)),
                )
            )
        ],
    )
    lst = listener("l", 10000, hcm(rds=None, route_config=rc))
    cluster = t.Cluster(
        name="c",
        type=t.ClusterDiscoveryType.STATIC,
        load_assignment=t.ClusterLoadAssignment(
            cluster_name="c",
            endpoints=[t.LocalityLbEndpoints(lb_endpoints=[lb_endpoint("10.1.2.3", 5)])],
        ),
    )
    resp = t.DiscoveryResponse(type_url=t.LDS, resources=[t.Any.pack(lst), t.Any.pack(cluster)])
    lst2, cluster2 = (a.unpack() for a in t.DiscoveryResponse.parse(bytes(resp)).resources)
    assert listener_doc(lst2) == listener_doc(lst)
    assert cluster_doc(cluster2) == cluster_doc(cluster)
    parts = listener_doc(lst2)
    config = compose([parts], [], [cluster_doc(cluster2)[0]])
    route = config.servers[0].routers[0].virtual_hosts[0].routers[0]
    assert route.route.timeout == 0.0  # "0s": no timeout, as in Envoy
    assert [str(h.address) for h in config.cluster("c").hosts] == ["10.1.2.3:5"]


# --------------------------------------------------------------------------- HTTP filters

D = FractionalPercentDenominatorType
HFP = "Listener 'h': filter_chains[0].filters[0].typed_config.http_filters"


def http_filter(name: str, config: object) -> t.HttpFilter:
    return t.HttpFilter(name=name, typed_config=t.Any.pack(config))


def fault_filter(**kw: object) -> t.HttpFilter:
    return http_filter("envoy.filters.http.fault", HttpFault(**kw))


def gzip_filter(gz: Gzip | None = None, **kw: object) -> t.HttpFilter:
    lib = TypedExtensionConfig(name="gzip", typed_config=t.Any.pack(gz or Gzip()))
    return http_filter("envoy.filters.http.compressor", Compressor(compressor_library=lib, **kw))


def always() -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(
        default_value=FractionalPercent(numerator=100), runtime_key="rl"
    )


def ratelimit(**kw: object) -> LocalRateLimit:
    kw.setdefault(
        "token_bucket", TokenBucket(max_tokens=10, tokens_per_fill=5, fill_interval=secs(1))
    )
    kw.setdefault("filter_enabled", always())
    kw.setdefault("filter_enforced", always())
    return LocalRateLimit(stat_prefix="rl", **kw)


def with_filters(*filters: t.HttpFilter) -> t.Listener:
    return listener("h", 1, hcm(http_filters=[*filters, router_filter()]))


def test_http_filters_become_stream_filters_in_order() -> None:
    fault = fault_filter(
        delay=FaultDelay(
            fixed_delay=secs(2),
            percentage=FractionalPercent(numerator=2500, denominator=D.TEN_THOUSAND),
        ),
        abort=FaultAbort(
            grpc_status=14, percentage=FractionalPercent(numerator=5000, denominator=D.MILLION)
        ),
        upstream_cluster="backend",
        headers=[t.HeaderMatcher(name="x-chaos", string_match=t.StringMatcher(exact="on"))],
        delay_percent_runtime="fault.delay",  # a runtime name only: read as its default
    )
    gz = gzip_filter(
        Gzip(compression_level=9, window_bits=12),
        response_direction_config=CompressorResponseDirectionConfig(
            common_config=CompressorCommonDirectionConfig(
                min_content_length=1024, content_type=["text/html", "application/json"]
            )
        ),
    )
    rl = http_filter(
        "envoy.filters.http.local_ratelimit",
        ratelimit(
            status=HttpStatus(code=StatusCode.ServiceUnavailable),
            enable_x_ratelimit_headers=XRateLimitHeadersRfcVersion.DRAFT_VERSION_03,
        ),
    )
    parts = listener_doc(with_filters(fault, gz, rl))
    assert [f["type"] for f in parts.listener["stream_filters"]] == ["fault", "gzip", "flowcontrol"]
    cfg = compose(
        [parts],
        [
            {
                "router_config_name": "main_routes",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routers": [{"route": {"cluster_name": "backend"}}],
                    }
                ],
            }
        ],
        [{"name": "backend", "type": "SIMPLE", "hosts": []}],
    )
    sf = cfg.servers[0].listeners[0].stream_filters
    assert [f.type for f in sf] == ["fault", "gzip", "flowcontrol"]
    f, g, r = (s.config for s in sf)
    assert isinstance(f, FaultConfig) and f.delay_of() == (2.0, 25.0)
    abort = f.abort_of()
    assert abort is not None and abort.grpc_status == 14 and abort.percentage == 0.5
    assert f.upstream_cluster == "backend" and f.headers[0].name == "x-chaos"
    assert isinstance(g, GzipConfig)
    assert (g.level, g.content_length, g.content_types) == (
        9,
        1024,
        ("text/html", "application/json"),
    )
    assert isinstance(r, FlowControlConfig)
    assert (r.max_tokens, r.tokens_per_fill, r.fill_interval) == (10, 5, 1.0)
    assert r.action.status == 503 and r.action.body == "local_rate_limited"
    assert r.ratelimit_headers and r.global_switch


def test_http_filter_defaults_follow_envoy() -> None:
    # an abort's HTTP status, a percentage over its denominator (100%), Envoy's gzip defaults,
    # and a rate limit Envoy neither enables nor enforces (kept off, for routes to turn on)
    fault = fault_filter(
        abort=FaultAbort(http_status=503, percentage=FractionalPercent(numerator=150))
    )
    rl = http_filter(
        "rl",
        LocalRateLimit(
            stat_prefix="rl", token_bucket=TokenBucket(max_tokens=1, fill_interval=secs(1))
        ),
    )
    parts = listener_doc(with_filters(fault, gzip_filter(), rl))
    cfg = compose(
        [parts],
        [
            {
                "router_config_name": "main_routes",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routers": [{"route": {"cluster_name": "backend"}}],
                    }
                ],
            }
        ],
        [{"name": "backend", "type": "SIMPLE", "hosts": []}],
    )
    f, g, r = (s.config for s in cfg.servers[0].listeners[0].stream_filters)
    abort = f.abort_of()
    assert abort is not None and abort.http == 503 and abort.percentage == 100.0
    assert f.delay_of() == (0.0, 0.0)
    assert g == GzipConfig()
    assert not r.global_switch and r.tokens_per_fill == 1 and not r.ratelimit_headers
    # a compressor switched off compresses nothing: no stream filter at all
    off = gzip_filter(
        response_direction_config=CompressorResponseDirectionConfig(
            common_config=CompressorCommonDirectionConfig(
                enabled=RuntimeFeatureFlag(default_value=False, runtime_key="k")
            )
        )
    )
    assert "stream_filters" not in listener_doc(with_filters(off)).listener


def test_typed_per_filter_config_becomes_per_filter_config() -> None:
    quick = t.Any.pack(
        HttpFault(
            delay=FaultDelay(fixed_delay=secs(1), percentage=FractionalPercent(numerator=100))
        )
    )
    rc = t.RouteConfiguration(
        name="r",
        virtual_hosts=[
            vhost(
                t.Route(
                    match=t.RouteMatch(prefix="/a"),
                    route=to_cluster(),
                    typed_per_filter_config={
                        "envoy.filters.http.fault": quick,
                        "my-ratelimit": t.Any.pack(FilterConfig(config=t.Any.pack(ratelimit()))),
                        "envoy.filters.http.compressor": t.Any.pack(
                            CompressorPerRoute(disabled=True)
                        ),
                    },
                ),
                t.Route(
                    match=t.RouteMatch(prefix="/"),
                    route=to_cluster(),
                    typed_per_filter_config={
                        "envoy.filters.http.fault": t.Any.pack(FilterConfig(disabled=True))
                    },
                ),
            )
        ],
    )
    doc = route_config_doc(rc)
    parts = listener_doc(
        with_filters(
            fault_filter(),
            gzip_filter(),
            http_filter("my-ratelimit", LocalRateLimit(stat_prefix="rl")),
        )
    )
    doc["router_config_name"] = "main_routes"
    cfg = compose([parts], [doc], [{"name": "backend", "type": "SIMPLE", "hosts": []}])
    a, b = cfg.servers[0].routers[0].virtual_hosts[0].routers
    assert isinstance(a.per_filter_config["fault"], FaultConfig)
    assert a.per_filter_config["fault"].delay_of() == (1.0, 100.0)
    assert isinstance(a.per_filter_config["flowcontrol"], FlowControlConfig)
    assert a.per_filter_config["flowcontrol"].max_tokens == 10
    assert a.per_filter_config["gzip"] is FILTER_DISABLED
    assert b.per_filter_config["fault"] is FILTER_DISABLED


def test_http_filter_field_refusals() -> None:
    expect(
        listener_doc,
        with_filters(fault_filter(max_active_faults=3)),
        f"{HFP}[0].typed_config.max_active_faults: not supported by trio-mesh",
    )
    expect(
        listener_doc,
        with_filters(fault_filter(delay=FaultDelay(header_delay=FaultDelayHeaderDelay()))),
        f"{HFP}[0].typed_config.delay.header_delay: not supported by trio-mesh",
    )
    expect(
        listener_doc,
        with_filters(fault_filter(abort=FaultAbort())),
        f"{HFP}[0].typed_config.abort: an http_status or grpc_status is required",
    )
    expect(
        listener_doc,
        with_filters(gzip_filter(request_direction_config=CompressorRequestDirectionConfig())),
        f"{HFP}[0].typed_config.request_direction_config: not supported by trio-mesh",
    )
    expect(
        listener_doc,
        with_filters(
            gzip_filter(
                Gzip(),
                response_direction_config=(
                    CompressorResponseDirectionConfig(uncompressible_response_codes=[206])
                ),
            )
        ),
        f"{HFP}[0].typed_config.response_direction_config.uncompressible_response_codes:"
        " not supported by trio-mesh",
    )
    brotli = TypedExtensionConfig(
        name="br",
        typed_config=t.Any(
            type_url="type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli"
        ),
    )
    expect(
        listener_doc,
        with_filters(http_filter("c", Compressor(compressor_library=brotli))),
        f"{HFP}[0].typed_config.compressor_library.typed_config.type_url: 'type.googleapis"
        ".com/envoy.extensions.compression.brotli.compressor.v3.Brotli': not supported by"
        " trio-mesh",
    )
    expect(
        listener_doc,
        with_filters(http_filter("rl", ratelimit(local_rate_limit_per_downstream_connection=True))),
        f"{HFP}[0].typed_config.local_rate_limit_per_downstream_connection:"
        " not supported by trio-mesh",
    )
    half = RuntimeFractionalPercent(default_value=FractionalPercent(numerator=50))
    expect(
        listener_doc,
        with_filters(http_filter("rl", ratelimit(filter_enforced=half))),
        f"{HFP}[0].typed_config.filter_enforced: 50%: only 0% or 100% is supported",
    )
    expect(
        listener_doc,
        with_filters(http_filter("rl", ratelimit(token_bucket=None))),
        f"{HFP}[0].typed_config.token_bucket: a token_bucket is required",
    )
    expect(
        listener_doc,
        with_filters(http_filter("envoy.filters.http.rbac", Rbac())),
        f"{HFP}[0]: HTTP filter 'envoy.filters.http.rbac' (type.googleapis.com/envoy"
        ".extensions.filters.http.rbac.v3.RBAC): RBAC is not supported by trio-mesh"
        " (the ip_access filter allows or denies client addresses)",
    )
    expect(
        listener_doc,
        with_filters(fault_filter(), fault_filter()),
        f"{HFP}[1]: a second fault filter: not supported by trio-mesh",
    )


def test_typed_per_filter_config_refusals() -> None:
    def rc(where: str, configs: dict[str, t.Any]) -> t.RouteConfiguration:
        route = t.Route(
            match=t.RouteMatch(prefix="/"),
            route=to_cluster(),
            **({"typed_per_filter_config": configs} if where == "route" else {}),
        )
        return t.RouteConfiguration(
            name="r",
            virtual_hosts=[
                vhost(route, **({"typed_per_filter_config": configs} if where == "vhost" else {}))
            ],
        )

    pfc = "RouteConfiguration 'r': virtual_hosts[0].routes[0].typed_per_filter_config"
    expect(
        route_config_doc,
        rc("route", {"envoy.filters.http.fault": t.Any.pack(HttpFault(max_active_faults=1))}),
        f"{pfc}.envoy.filters.http.fault.max_active_faults: not supported by trio-mesh",
    )
    expect(
        route_config_doc,
        rc("route", {"custom": t.Any.pack(FilterConfig(disabled=True))}),
        f"{pfc}.custom: cannot tell which filter 'custom' is: use its config's type or one"
        " of envoy.filters.http.compressor, envoy.filters.http.fault,"
        " envoy.filters.http.local_ratelimit",
    )
    expect(
        route_config_doc,
        rc("route", {"envoy.filters.http.rbac": t.Any.pack(Rbac())}),
        f"{pfc}.envoy.filters.http.rbac.type_url: 'type.googleapis.com/envoy.extensions"
        ".filters.http.rbac.v3.RBAC': not supported by trio-mesh",
    )
    expect(
        route_config_doc,
        rc("vhost", {"envoy.filters.http.fault": t.Any.pack(HttpFault())}),
        "RouteConfiguration 'r': virtual_hosts[0].typed_per_filter_config:"
        " not supported by trio-mesh",
    )


def test_http2_flood_limits_map_from_envoy() -> None:
    """Envoy's frame-flood limits keep their names: set on the HTTP connection manager they
    become the listener's ``http2`` options and are enforced."""
    opts = t.Http2ProtocolOptions(
        max_concurrent_streams=50,
        max_outbound_control_frames=500,
        max_consecutive_inbound_frames_with_empty_payload=0,
        max_inbound_priority_frames_per_stream=7,
        max_inbound_window_update_frames_per_data_frame_sent=3,
    )
    parts = listener_doc(listener("ingress", 8080, hcm(http2_protocol_options=opts)))
    proxy = parts.listener["filter_chains"][0]["filters"][0]["config"]
    assert proxy["http2"] == {
        "max_concurrent_streams": 50,
        "max_outbound_control_frames": 500,
        "max_consecutive_inbound_frames_with_empty_payload": 0,
        "max_inbound_priority_frames_per_stream": 7,
        "max_inbound_window_update_frames_per_data_frame_sent": 3,
    }
    rc = t.RouteConfiguration(
        name="main_routes",
        virtual_hosts=[
            vhost(
                t.Route(
                    match=t.RouteMatch(prefix="/"),
                    direct_response=t.DirectResponseAction(status=200),
                )
            )
        ],
    )
    config = compose([parts], [route_config_doc(rc)], [])
    http2 = config.listeners[0].filter_chains[0].filters[0].config.http2
    assert (http2.max_outbound_control_frames, http2.max_inbound_priority_frames_per_stream) == (
        500,
        7,
    )


def test_http2_flood_limits_on_a_cluster_warn(caplog: pytest.LogCaptureFixture) -> None:
    """On a cluster the listener's limits apply (both sides of the proxy): loaded, and said."""
    with pytest.warns(DeprecationWarning):
        c = t.Cluster(
            name="b",
            connect_timeout=secs(1),
            http2_protocol_options=t.Http2ProtocolOptions(max_outbound_control_frames=10),
        )
    with caplog.at_level("WARNING", logger="trio_mesh.xds"):
        cluster_doc(c)
    assert "http2_protocol_options.max_outbound_control_frames: not enforced" in caplog.text


def test_listener_buffer_limit_maps_to_the_listener_budget() -> None:
    """Envoy's listener ``per_connection_buffer_limit_bytes`` is the listener key of the same
    name, enforced (never dropped silently)."""
    parts = listener_doc(listener("ingress", 8080, hcm(), per_connection_buffer_limit_bytes=32768))
    assert parts.listener["per_connection_buffer_limit_bytes"] == 32768
    rc = t.RouteConfiguration(
        name="main_routes",
        virtual_hosts=[
            vhost(
                t.Route(
                    match=t.RouteMatch(prefix="/"),
                    direct_response=t.DirectResponseAction(status=200),
                )
            )
        ],
    )
    config = compose([parts], [route_config_doc(rc)], [])
    assert config.listeners[0].per_connection_buffer_limit_bytes == 32768


def test_cluster_buffer_limit_warns(caplog: pytest.LogCaptureFixture) -> None:
    c = t.Cluster(name="b", connect_timeout=secs(1), per_connection_buffer_limit_bytes=32768)
    with caplog.at_level("WARNING", logger="trio_mesh.xds"):
        cluster_doc(c)
    assert "per_connection_buffer_limit_bytes: not enforced on a cluster" in caplog.text


def test_forward_client_cert_details_map_to_the_proxy() -> None:
    """The HCM's XFCC settings are the proxy's keys of the same names (enforced); a setting
    trio-mesh cannot honour is a NACK naming its field."""
    rc = t.RouteConfiguration(
        name="main_routes",
        virtual_hosts=[
            vhost(
                t.Route(
                    match=t.RouteMatch(prefix="/"),
                    direct_response=t.DirectResponseAction(status=200),
                )
            )
        ],
    )
    details = t.HttpConnectionManagerSetCurrentClientCertDetails(subject=True, uri=True)
    parts = listener_doc(
        listener(
            "ingress",
            8080,
            hcm(
                forward_client_cert_details=t.HttpConnectionManagerForwardClientCertDetails.SANITIZE_SET,
                set_current_client_cert_details=details,
            ),
        )
    )
    config = compose([parts], [route_config_doc(rc)], [])
    proxy = config.listeners[0].filter_chains[0].filters[0].config
    assert proxy.forward_client_cert_details is ForwardClientCert.SANITIZE_SET
    assert proxy.set_current_client_cert_details == ClientCertDetails(subject=True, uri=True)
    default = listener_doc(listener("d", 8081, hcm())).listener
    proxy_doc = default["filter_chains"][0]["filters"][0]["config"]
    assert "forward_client_cert_details" not in proxy_doc  # SANITIZE, the default
    # chain: Python 3.11's ssl has no peer chain: refused when the config is composed
    chain = listener_doc(
        listener(
            "c",
            8082,
            hcm(
                set_current_client_cert_details=t.HttpConnectionManagerSetCurrentClientCertDetails(
                    chain=True
                )
            ),
        )
    )
    with pytest.raises(Exception, match=r"set_current_client_cert_details\.chain: not supported"):
        compose([chain], [route_config_doc(rc)], [])
