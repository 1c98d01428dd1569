"""Every envoy-data-plane type trio-mesh's xDS code uses, imported in one place.

Importing a generated module registers its messages in betterproto2's message pool, which is
what ``Any.unpack()`` looks types up in, so every type that can arrive inside an ``Any`` is
imported here. The import is slow (about 1 s) and needs the ``xds`` extra: other modules import
this one lazily.
"""

# ruff: noqa: F401 - this module re-exports the envoy types
from __future__ import annotations

from .envoy_import import envoy_import

with envoy_import():
    import betterproto2
    from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
    from envoy_data_plane.envoy.config.cluster.v3 import (
        CircuitBreakers,
        CircuitBreakersThresholds,
        Cluster,
        ClusterCommonLbConfig,
        ClusterCommonLbConfigLocalityWeightedLbConfig,
        ClusterDiscoveryType,
        ClusterEdsClusterConfig,
        ClusterLbPolicy,
        ClusterRoundRobinLbConfig,
        ClusterSlowStartConfig,
        OutlierDetection,
    )
    from envoy_data_plane.envoy.config.core.v3 import (
        Address,
        AggregatedConfigSource,
        ApiVersion,
        ConfigSource,
        DataSource,
        HeaderValue,
        HeaderValueOption,
        HeaderValueOptionHeaderAppendAction,
        HealthCheck,
        HealthCheckGrpcHealthCheck,
        HealthCheckHttpHealthCheck,
        HealthCheckPayload,
        HealthCheckTcpHealthCheck,
        HealthStatus,
        Http1ProtocolOptions,
        Http2ProtocolOptions,
        HttpProtocolOptions,
        HttpService,
        HttpUri,
        Node,
        RoutingPriority,
        SocketAddress,
        SocketAddressProtocol,
        TransportSocket,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.config.listener.v3 import (
        Filter,
        FilterChain,
        FilterChainMatch,
        Listener,
        ListenerFilter,
    )
    from envoy_data_plane.envoy.config.route.v3 import (
        DirectResponseAction,
        HeaderMatcher,
        QueryParameterMatcher,
        RedirectAction,
        RedirectActionRedirectResponseCode,
        RetryPolicy,
        Route,
        RouteAction,
        RouteActionHashPolicy,
        RouteActionHashPolicyConnectionProperties,
        RouteActionHashPolicyCookie,
        RouteActionHashPolicyHeader,
        RouteActionHashPolicyQueryParameter,
        RouteActionRequestMirrorPolicy,
        RouteConfiguration,
        RouteMatch,
        RouteMatchGrpcRouteMatchOptions,
        VirtualHost,
        WeightedCluster,
        WeightedClusterClusterWeight,
    )
    from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.listener.original_dst.v3 import OriginalDst
    from envoy_data_plane.envoy.extensions.filters.listener.proxy_protocol.v3 import (
        ProxyProtocol,
    )
    from envoy_data_plane.envoy.extensions.filters.listener.tls_inspector.v3 import TlsInspector
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpConnectionManagerCodecType,
        HttpConnectionManagerForwardClientCertDetails,
        HttpConnectionManagerSetCurrentClientCertDetails,
        HttpConnectionManagerTracing,
        HttpFilter,
        Rds,
        ScopedRoutes,
    )
    from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
        CertificateValidationContext,
        CommonTlsContext,
        DownstreamTlsContext,
        SdsSecretConfig,
        TlsCertificate,
        TlsParameters,
        TlsParametersTlsProtocol,
        TlsSessionTicketKeys,
        UpstreamTlsContext,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
        HttpProtocolOptions as UpstreamHttpProtocolOptions,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
        HttpProtocolOptionsExplicitHttpConfig,
    )
    from envoy_data_plane.envoy.service.discovery.v3 import (
        AggregatedDiscoveryServiceAsyncStub,
        AggregatedDiscoveryServiceBase,
        DiscoveryRequest,
        DiscoveryResponse,
    )
    from envoy_data_plane.envoy.type.matcher.v3 import (
        RegexMatchAndSubstitute,
        RegexMatcher,
        StringMatcher,
    )
    from envoy_data_plane.envoy.type.v3 import Int64Range, Percent
    from envoy_data_plane.google.protobuf import Any, Duration, UInt32Value
    from envoy_data_plane.google.rpc import Status
    from envoy_data_plane.message_pool import default_message_pool


def type_url(cls: type) -> str:
    """``type.googleapis.com/<full proto name>`` of a registered message class."""
    return default_message_pool.type_to_url[cls]


LDS = type_url(Listener)
RDS = type_url(RouteConfiguration)
CDS = type_url(Cluster)
EDS = type_url(ClusterLoadAssignment)
HCM_TYPE = type_url(HttpConnectionManager)
TCP_PROXY_TYPE = type_url(TcpProxy)
ROUTER_TYPE = type_url(Router)
UPSTREAM_HTTP_OPTIONS_TYPE = type_url(UpstreamHttpProtocolOptions)
DOWNSTREAM_TLS_TYPE = type_url(DownstreamTlsContext)
UPSTREAM_TLS_TYPE = type_url(UpstreamTlsContext)
TLS_INSPECTOR_TYPE = type_url(TlsInspector)
PROXY_PROTOCOL_TYPE = type_url(ProxyProtocol)
ORIGINAL_DST_TYPE = type_url(OriginalDst)
OTEL_TRACER_TYPE = type_url(OpenTelemetryConfig)
#: The key of ``Cluster.typed_extension_protocol_options`` for the upstream HTTP options.
UPSTREAM_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

__all__ = [name for name in dir() if not name.startswith("_") and name != "annotations"]
