"""Consistent-hashing balancers (Maglev, ring hash): the table is built when the host set
changes; a request costs one hash of its key plus a table index or a bisect."""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Sequence
from hashlib import blake2b

from .host import Host

#: Maglev's table size: a prime, so every skip visits every slot (Envoy's default).
MAGLEV_TABLE_SIZE = 65537
#: Envoy's ring_hash_lb_config defaults.
RING_MIN_SIZE = 1024
RING_MAX_SIZE = 8 * 1024 * 1024


def hash_key(key: bytes) -> int:
    """The 64-bit hash of a request's key (one blake2b; the C implementation is fast)."""
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "little")


def _host_hashes(label: str) -> tuple[int, int]:
    d = blake2b(label.encode(), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


class _HashingLB:
    """Without a key (a route with no hash_policy), a hashing balancer picks at random,
    as Envoy's does."""

    __slots__ = ("hosts",)
    hashing = True

    def __init__(self, hosts: Sequence[Host]) -> None:
        self.hosts = tuple(hosts)

    def choose(self) -> Host | None:
        return random.choice(self.hosts) if self.hosts else None


class MaglevLB(_HashingLB):
    """Maglev (Eisenbud et al., 2016): each host walks its own permutation of the table
    (offset + j*skip mod M) and takes the next free slot; a host of weight w takes w/max
    turns per round, so it ends up with a share of slots proportional to its weight."""

    __slots__ = ("size", "table")

    def __init__(self, hosts: Sequence[Host], table_size: int = MAGLEV_TABLE_SIZE) -> None:
        super().__init__(hosts)
        self.size = table_size
        self.table: list[Host] = self._fill(table_size) if self.hosts else []

    def _fill(self, m: int) -> list[Host]:
        # Sort by label so the table depends on the set, not on the order hosts came in.
        hosts = sorted((h for h in self.hosts if h.weight > 0), key=lambda h: h.label)
        if not hosts:
            hosts = sorted(self.hosts, key=lambda h: h.label)
        n = len(hosts)
        offsets, skips = [], []
        for h in hosts:
            a, b = _host_hashes(h.label)
            offsets.append(a % m)
            skips.append(b % (m - 1) + 1)
        max_w = max(h.weight for h in hosts) or 1
        share = [(h.weight or 1) / max_w for h in hosts]
        credit = [0.0] * n
        nexts = [0] * n
        table: list[Host | None] = [None] * m
        filled = 0
        while True:
            for i in range(n):
                credit[i] += share[i]
                if credit[i] < 1.0:
                    continue
                credit[i] -= 1.0
                off, skip, j = offsets[i], skips[i], nexts[i]
                slot = (off + j * skip) % m
                while table[slot] is not None:
                    j += 1
                    slot = (off + j * skip) % m
                nexts[i] = j + 1
                table[slot] = hosts[i]
                filled += 1
                if filled == m:
                    return table  # type: ignore[return-value]

    def choose_key(self, key: int) -> Host | None:
        table = self.table
        return table[key % self.size] if table else None


class RingHashLB(_HashingLB):
    """Envoy's RING_HASH (ketama): each host owns points on a 64-bit ring in proportion to
    its weight, the ring at least ``min_size`` points (at most ``max_size``, where weights
    are then rounded); a key goes to the first point at or after its hash."""

    __slots__ = ("owners", "points")

    def __init__(
        self,
        hosts: Sequence[Host],
        min_size: int = RING_MIN_SIZE,
        max_size: int = RING_MAX_SIZE,
    ) -> None:
        super().__init__(hosts)
        ring: list[tuple[int, str, Host]] = []
        live = [h for h in self.hosts if h.weight > 0] or list(self.hosts)
        if live:
            # Weights in their lowest terms: 1000 hosts of weight 100 need no 100000 points.
            unit = math.gcd(*(h.weight or 1 for h in live))
            weights = [(h.weight or 1) // unit for h in live]
            total = sum(weights)
            # Points per unit of weight: the power of two that makes the ring at least
            # min_size. Rounding to a power of two keeps it the same when one host of many
            # leaves, so the survivors keep their points and only the leaver's keys move
            # (Envoy's exact scaling would give every survivor new points).
            per_weight = 1 << max(0, (-(-min_size // total) - 1).bit_length())
            if per_weight * total > max_size:
                per_weight = max(1, max_size // total)
            for h, w in zip(live, weights, strict=True):
                for i in range(w * per_weight):
                    ring.append((hash_key(f"{h.label}_{i}".encode()), h.label, h))
        ring.sort(key=lambda p: (p[0], p[1]))
        self.points = [p[0] for p in ring]
        self.owners = [p[2] for p in ring]

    def choose_key(self, key: int) -> Host | None:
        owners = self.owners
        if not owners:
            return None
        i = bisect_left(self.points, key)
        return owners[i] if i < len(owners) else owners[0]
