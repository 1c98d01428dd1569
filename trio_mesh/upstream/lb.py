"""Load balancers: pure choosers over an immutable host list, built when the list changes."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from ..config import LbType
from .hash_lb import MaglevLB, RingHashLB
from .host import Host


class LoadBalancer(Protocol):
    def choose(self) -> Host | None: ...


class RandomLB:
    __slots__ = ("hosts",)

    def __init__(self, hosts: Sequence[Host]):
        self.hosts = tuple(hosts)

    def choose(self) -> Host | None:
        return random.choice(self.hosts) if self.hosts else None


class RoundRobinLB:
    __slots__ = ("hosts", "next")

    def __init__(self, hosts: Sequence[Host]):
        self.hosts = tuple(hosts)
        # A random start keeps several workers from all hitting the first host first.
        self.next = random.randrange(len(self.hosts)) if self.hosts else 0

    def choose(self) -> Host | None:
        if not self.hosts:
            return None
        i = self.next
        self.next = (i + 1) % len(self.hosts)
        return self.hosts[i]


class WeightedRoundRobinLB:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a, not a a a a a b c."""

    __slots__ = ("hosts", "current", "total")

    def __init__(self, hosts: Sequence[Host]):
        self.hosts = tuple(hosts)
        self.current = [0] * len(self.hosts)
        self.total = sum(h.weight for h in self.hosts)

    def choose(self) -> Host | None:
        if not self.hosts:
            return None
        current = self.current
        best = 0
        for i, h in enumerate(self.hosts):
            current[i] += h.weight
            if current[i] > current[best]:
                best = i
        current[best] -= self.total
        return self.hosts[best]


def _two_of(hosts: tuple[Host, ...]) -> tuple[Host, Host]:
    """Two distinct hosts at random (power of two choices); ``hosts`` has at least two."""
    n = len(hosts)
    i = random.randrange(n)
    j = random.randrange(n - 1)
    if j >= i:
        j += 1
    return hosts[i], hosts[j]


class LeastRequestLB:
    """Power of two choices: of two random hosts, the one with fewer active requests."""

    __slots__ = ("hosts",)

    def __init__(self, hosts: Sequence[Host]):
        self.hosts = tuple(hosts)

    def choose(self) -> Host | None:
        hosts = self.hosts
        if len(hosts) < 2:
            return hosts[0] if hosts else None
        a, b = _two_of(hosts)
        return a if a.active_requests <= b.active_requests else b


class LeastConnectionLB:
    """MOSN's LB_LEAST_CONNECTION: power of two choices on open connections."""

    __slots__ = ("hosts",)

    def __init__(self, hosts: Sequence[Host]):
        self.hosts = tuple(hosts)

    def choose(self) -> Host | None:
        hosts = self.hosts
        if len(hosts) < 2:
            return hosts[0] if hosts else None
        a, b = _two_of(hosts)
        return a if a.cx_active <= b.cx_active else b


class WeightedLeastRequestLB:
    """Envoy's least request over hosts of unequal weights: earliest deadline first, a
    host's weight taken when it is put back as ``weight / (active + 1) ** bias``, so a
    busy host comes round later (bias 1.0, Envoy's default)."""

    __slots__ = ("bias", "heap", "hosts")

    def __init__(self, hosts: Sequence[Host], bias: float = 1.0):
        self.hosts = tuple(h for h in hosts if h.weight > 0) or tuple(hosts)
        self.bias = bias
        # (deadline, position, host): the position breaks ties in the set's order
        self.heap = [(1.0 / max(h.weight, 1), i, h) for i, h in enumerate(self.hosts)]
        heapq.heapify(self.heap)
        # a random start keeps several workers from all beginning with the same host
        for _ in range(random.randrange(len(self.hosts)) if self.hosts else 0):
            self._next()

    def _active(self, host: Host) -> int:
        return host.active_requests

    def _next(self) -> Host:
        deadline, i, host = self.heap[0]
        weight = max(host.weight, 1) / (self._active(host) + 1) ** self.bias
        heapq.heapreplace(self.heap, (deadline + 1.0 / weight, i, host))
        return host

    def choose(self) -> Host | None:
        return self._next() if self.heap else None


class WeightedLeastConnectionLB(WeightedLeastRequestLB):
    """LB_LEAST_CONNECTION over hosts of unequal weights (MOSN's): as above, on open
    connections."""

    __slots__ = ()

    def _active(self, host: Host) -> int:
        return host.cx_active


class RequestRoundRobinLB:
    """MOSN's LB_REQUEST_ROUNDROBIN: every request starts at the first host and a retry
    goes on to the next (failover in configuration order, not load spreading)."""

    __slots__ = ("hosts",)

    def __init__(self, hosts: Sequence[Host]):
        self.hosts = tuple(hosts)

    def choose(self) -> Host | None:
        return self.hosts[0] if self.hosts else None


def _equal_weights(hosts: Sequence[Host]) -> bool:
    return len({h.weight for h in hosts}) <= 1


def _least_request(hosts: Sequence[Host]) -> LoadBalancer:
    """Power of two choices when weights are equal, Envoy's weighted schedule otherwise."""
    return LeastRequestLB(hosts) if _equal_weights(hosts) else WeightedLeastRequestLB(hosts)


def _least_connection(hosts: Sequence[Host]) -> LoadBalancer:
    if _equal_weights(hosts):
        return LeastConnectionLB(hosts)
    return WeightedLeastConnectionLB(hosts)


_BALANCERS: dict[LbType, Callable[[Sequence[Host]], LoadBalancer]] = {
    LbType.LB_RANDOM: RandomLB,
    LbType.LB_ROUNDROBIN: RoundRobinLB,
    LbType.LB_WEIGHTED_ROUNDROBIN: WeightedRoundRobinLB,
    LbType.LB_LEAST_REQUEST: _least_request,
    LbType.LB_LEAST_CONNECTION: _least_connection,
    LbType.LB_REQUEST_ROUNDROBIN: RequestRoundRobinLB,
    LbType.LB_MAGLEV: MaglevLB,
    LbType.LB_RING_HASH: RingHashLB,
    # ORIGINAL_DST clusters choose by destination (Cluster.choose_original_dst); this one
    # has no host to offer.
    LbType.LB_ORIGINAL_DST: RoundRobinLB,
}

#: The balancers that choose by a request's hash key (``choose_key``).
HASHING_LB_TYPES = frozenset({LbType.LB_MAGLEV, LbType.LB_RING_HASH})


def make_balancer(lb_type: LbType, hosts: Sequence[Host]) -> LoadBalancer:
    return _BALANCERS[lb_type](hosts)
