"""Route retries, one protocol-independent state per request: ``RetryState``.

A failed try (a local reply that nothing of the response has gone before) is tried again when
the route's ``retry_policy`` asks for that kind of failure (``retry_on``), tries are left
(``num_retries``), and the cluster's circuit breaker allows one more retry in flight
(``circuit_breakers.max_retries``, or its ``retry_budget``). A retry goes to none of the hosts
already tried while the cluster offers another one (Envoy's ``previous_hosts`` predicate: the
balancer is asked again, a bounded number of times, then the next untried host of the set is
taken). Made only for a route with a retry policy: a request without one allocates nothing.
"""

from __future__ import annotations

from ..config.subset import MatchKey
from ..router.table import RetryPolicy
from ..upstream import Cluster, Host
from .replies import Cause, Reply

#: How often the balancer is asked again for a host other than the one that failed.
RESELECT_ATTEMPTS = 4


def retry_on(policy: RetryPolicy, reply: Reply) -> bool:
    """Whether ``policy`` retries a try that failed with ``reply``."""
    cause = reply.cause
    if cause is Cause.CONNECT:
        return policy.retry_on_connect_failure
    if cause is Cause.RESET:  # reset, bad response, per-try timeout: as Envoy's "reset"
        return policy.retry_on_reset
    if cause is Cause.STATUS:
        return policy.should_retry_status(reply.status)
    return False  # the proxy refused the request itself (no host, overflow...)


class RetryState:
    """The retries of one request to one cluster. ``tries_left``: retries still allowed;
    ``per_try_timeout``: each try's own deadline (``None``: the route timeout alone)."""

    __slots__ = (
        "_host",
        "_retrying",
        "cluster",
        "match",
        "tried",
        "per_try_timeout",
        "policy",
        "tries_left",
    )

    def __init__(self, policy: RetryPolicy, cluster: Cluster) -> None:
        self.policy = policy
        self.cluster = cluster
        self.tries_left = policy.num_retries
        self.per_try_timeout = policy.per_try_timeout
        #: The hosts of the tries that failed (the next try avoids them all while it can).
        self.tried: tuple[Host, ...] = ()
        #: The route's ``metadata_match`` key: every try stays within its subset.
        self.match: MatchKey | None = None
        self._host: Host | None = None  # the host of the try in flight
        self._retrying = False  # this try holds a slot under circuit_breakers.max_retries

    def choose_host(self, key: int | None = None) -> Host:
        """The host for the next try: none already tried, if another is there (``key``: the
        route's hash; a retry off the hashed host picks another at random). Raises
        ``NoHostError`` as ``Cluster.choose_host`` does."""
        cluster = self.cluster
        match = self.match
        if match is not None:
            host = cluster.choose_subset(match, key)
        else:
            host = cluster.choose_host() if key is None else cluster.choose_host_for(key)
        tried = self.tried
        if tried and host in tried:
            # ``lb_hosts``: those the balancer offers (usable ones unless in panic), so the
            # fallback never picks a host that health checks or outlier detection took out.
            hosts = cluster.lb_hosts if match is None else cluster.subset_lb_hosts(match)
            for _ in range(RESELECT_ATTEMPTS):
                host = cluster.choose_host() if match is None else cluster.choose_subset(match)
                if host not in tried:
                    break
            else:  # the balancer insists (random with few hosts): the next untried host
                n = len(hosts)
                # A tried host may have left the set since (health changed): then the first.
                start = hosts.index(host) + 1 if host in hosts else 0
                for i in range(n):
                    candidate = hosts[(start + i) % n]
                    if candidate not in tried:
                        host = candidate
                        break
                # every host was tried: the balancer's choice stands (Envoy's, too)
        self._host = host
        return host

    def retries_status(self, status: int) -> bool:
        """Whether an upstream response with ``status`` would be retried (tries are left and
        the policy names it, and the circuit breaker allows one more retry): the proxy then
        holds it back instead of sending it down. A retry the breaker refuses is counted here,
        and the upstream's response goes down as it is (not an empty reply in its place)."""
        if self.tries_left <= 0 or not self.policy.should_retry_status(status):
            return False
        return not self.cluster.retry_overflows()

    def should_retry(self, reply: Reply) -> bool:
        """After a failed try: whether to make another. When so, the retry is counted and holds
        a ``max_retries`` slot until it ends (``next try``'s failure or ``release``)."""
        self.release()
        if self.tries_left <= 0 or not retry_on(self.policy, reply):
            return False
        cluster = self.cluster
        if cluster.retry_overflows():
            return False
        self.tries_left -= 1
        if self._host is not None:
            self.tried += (self._host,)
        stats = cluster.stats
        stats.upstream_rq_retry += 1
        stats.upstream_rq_retry_active += 1
        self._retrying = True
        return True

    def release(self) -> None:
        """The retry in flight is over: its ``max_retries`` slot is free."""
        if self._retrying:
            self._retrying = False
            self.cluster.stats.upstream_rq_retry_active -= 1
