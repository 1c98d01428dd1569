"""Subset load balancing (MOSN's ``lb_subset_config``, Envoy's subset LB): the subsets of a
cluster's hosts by their metadata, each with its own balancer, built when the host set or
a host's health changes; a request picks one by its route's ``metadata_match`` (a dict
lookup by a key the route computed at configuration time)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import LbType
from ..config.subset import FallbackPolicy, LbSubsetConfig, MatchKey, match_key
from .host import Host
from .lb import LoadBalancer, make_balancer

#: Wraps a balancer in panic (the cluster's, which counts ``lb_healthy_panic``).
PanicWrap = Callable[[LoadBalancer], LoadBalancer]

#: As the cluster's: below this share of usable hosts a subset offers all of its hosts.
PANIC_THRESHOLD = 0.5


class Subset:
    """One subset's balancer and the hosts it chooses from (usable ones, all in panic)."""

    __slots__ = ("hosts", "lb_hosts", "lb")

    def __init__(self, lb_type: LbType, hosts: Sequence[Host], panic_lb: PanicWrap) -> None:
        self.hosts = tuple(hosts)
        usable = tuple(h for h in self.hosts if h.usable)
        panic = len(usable) < PANIC_THRESHOLD * len(self.hosts)
        self.lb_hosts = self.hosts if panic else usable
        lb = make_balancer(lb_type, self.lb_hosts)
        self.lb: LoadBalancer = panic_lb(lb) if panic else lb


class SubsetTable:
    """Every selector's subsets, keyed by ``match_key`` of their (key, value) pairs, and the
    fallback for a match with no subset."""

    __slots__ = ("subsets", "policy", "default")

    def __init__(
        self,
        config: LbSubsetConfig,
        lb_type: LbType,
        hosts: Sequence[Host],
        panic_lb: PanicWrap,
    ) -> None:
        groups: dict[MatchKey, list[Host]] = {}
        for selector in config.subset_selectors:
            keys = sorted(selector)
            for host in hosts:
                md = host.metadata
                if all(k in md for k in keys):
                    groups.setdefault(match_key({k: md[k] for k in keys}), []).append(host)
        self.subsets: dict[MatchKey, Subset] = {
            key: Subset(lb_type, members, panic_lb) for key, members in groups.items()
        }
        self.policy = config.policy()
        self.default: Subset | None = None
        if self.policy is FallbackPolicy.DEFAULT_SUBSET:
            want = match_key(config.default_subset)
            members = [h for h in hosts if all(_has(h, k, v) for k, v in want)]
            self.default = Subset(lb_type, members, panic_lb)

    def find(self, match: MatchKey) -> Subset | None:
        """The subset for a route's match, or the fallback's (``None``: the cluster's own
        balancer for ANY_ENDPOINT; see ``Cluster.choose_subset``)."""
        subset = self.subsets.get(match)
        if subset is None:
            return self.default
        return subset


def _has(host: Host, key: str, value: str) -> bool:
    md = host.metadata
    return key in md and match_key({key: md[key]})[0][1] == value
