"""Load balancers: pure choosers over an immutable host list, built when the list changes."""

from __future__ import annotations

import random
from collections.abc import Sequence
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


class LeastRequestLB:
    """Power of two choices: of two random hosts, the one with fewer active requests."""

    __slots__ = ("hosts",)

    def __init__(self, hosts: Sequence[Host]):
        self.hosts = tuple(hosts)

    def choose(self) -> Host | None:
        hosts = self.hosts
        n = len(hosts)
        if n < 2:
            return hosts[0] if hosts else None
        i = random.randrange(n)
        j = random.randrange(n - 1)
        if j >= i:
            j += 1  # two distinct hosts
        a, b = hosts[i], hosts[j]
        return a if a.active_requests <= b.active_requests else b


_BALANCERS: dict[LbType, type] = {
    LbType.LB_RANDOM: RandomLB,
    LbType.LB_ROUNDROBIN: RoundRobinLB,
    LbType.LB_WEIGHTED_ROUNDROBIN: WeightedRoundRobinLB,
    LbType.LB_LEAST_REQUEST: LeastRequestLB,
    LbType.LB_MAGLEV: MaglevLB,
    LbType.LB_RING_HASH: RingHashLB,
}

#: The balancers that choose by a request's hash key (``choose_key``).
HASHING_LB_TYPES = frozenset({LbType.LB_MAGLEV, LbType.LB_RING_HASH})


def make_balancer(lb_type: LbType, hosts: Sequence[Host]) -> LoadBalancer:
    return _BALANCERS[lb_type](hosts)
