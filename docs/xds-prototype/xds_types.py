"""All envoy-data-plane imports in one place, with pydantic's import-time
deprecation warnings silenced.  Importing a module also registers its
messages in envoy_data_plane.message_pool.default_message_pool, which is what
Any.pack()/Any.unpack() use, so every type that can appear inside an Any must
be imported somewhere before unpacking."""
import time
import warnings

_t0 = time.perf_counter()
with warnings.catch_warnings():
    # 98x "Using `@model_validator` with mode='after' on a classmethod is
    # deprecated..." (pydantic >= 2.12, category PydanticDeprecatedSince212,
    # a DeprecationWarning subclass) raised while the generated modules load.
    warnings.filterwarnings(
        "ignore",
        message=r"Using `@model_validator` with mode='after' on a classmethod is deprecated",
        category=DeprecationWarning,
    )
    import betterproto2
    from envoy_data_plane.google.protobuf import Any, Duration, UInt32Value
    from envoy_data_plane.google.rpc import Status
    from envoy_data_plane.envoy.config.core.v3 import (
        Address, AggregatedConfigSource, ApiVersion, ConfigSource, Node,
        SocketAddress, SocketAddressProtocol,
    )
    from envoy_data_plane.envoy.config.cluster.v3 import (
        Cluster, ClusterDiscoveryType, ClusterEdsClusterConfig, ClusterLbPolicy,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import (
        Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    )
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager, HttpConnectionManagerCodecType, HttpFilter, Rds,
    )
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.service.discovery.v3 import (
        AggregatedDiscoveryServiceAsyncStub,  # grpclib client stub
        AggregatedDiscoveryServiceBase,       # grpclib server base
        DiscoveryRequest,
        DiscoveryResponse,
    )
IMPORT_SECONDS = time.perf_counter() - _t0

from envoy_data_plane.message_pool import default_message_pool  # noqa: E402

TYPE_URL = {cls: default_message_pool.type_to_url[cls]
            for cls in (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment)}
LDS, RDS, CDS, EDS = (TYPE_URL[c] for c in (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment))
