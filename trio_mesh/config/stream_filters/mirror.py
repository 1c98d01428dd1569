"""Config of the `mirror` stream filter: copies of requests to a shadow cluster.

MOSN keeps the shadow cluster and its percentage on the route (``request_mirror_policies:
{cluster, percent}``) and only ``amplification`` and ``broadcast`` on the filter; here the
filter carries all of them, and a route's ``per_filter_config: {mirror: {...}}`` gives that
route its own policy (or ``{disabled: true}`` none).
"""

from __future__ import annotations

import enum
import math

from attrs import frozen

from ..routes import Problem, _raise
from ..scalars import Duration, PositiveInt, cluster_ref


class MirrorProtocol(enum.Enum):
    """How shadow requests go out. ``Auto``: HTTP/2 for gRPC requests (a gRPC server speaks
    nothing else), HTTP/1.1 for the others (whatever the downstream spoke)."""

    AUTO = "Auto"
    HTTP1 = "Http1"
    HTTP2 = "Http2"


@frozen(kw_only=True)
class MirrorConfig:
    """``percent`` of the requests (Envoy's ``runtime_fraction``, MOSN's route ``percent``;
    fractions allowed, 0 mirrors nothing) are copied to ``cluster``: ``amplification``
    copies each, to hosts its balancer picks, or with ``broadcast`` one copy to every host of
    the cluster. The shadow's answer is read and thrown away, within ``timeout``; it never
    delays or fails the request itself. A request whose body is larger than
    ``max_body_bytes`` is not mirrored (the copy is held in memory until the body is in)."""

    cluster: str = cluster_ref()
    percent: float = 100.0
    amplification: PositiveInt = PositiveInt(1)
    broadcast: bool = False
    max_body_bytes: int = 64 * 1024
    timeout: Duration = Duration(2.0)
    upstream_protocol: MirrorProtocol = MirrorProtocol.AUTO

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if not 0.0 <= self.percent <= 100.0 or math.isnan(self.percent):
            problems.append((("percent",), f"expected 0 to 100, got {self.percent:g}"))
        if self.max_body_bytes < 0:
            problems.append(
                (("max_body_bytes",), f"expected 0 or more bytes, got {self.max_body_bytes}")
            )
        if self.timeout <= 0:
            problems.append((("timeout",), "a shadow request needs a timeout above 0"))
        _raise(problems)
