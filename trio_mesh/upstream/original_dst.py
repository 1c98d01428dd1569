"""An ``ORIGINAL_DST`` cluster's hosts: one ``Host`` per original destination, made on
demand and reused (pools are keyed by ``Host``), at most ``MAX_HOSTS`` of them.

A full cache drops its least recently used idle host (no open connection, no request);
when every host is busy the new destination is refused rather than the cache grown, so
clients choosing destinations cannot grow it without bound.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Address
from .host import Host

#: Destinations kept at once per cluster (Envoy keeps them until idle too).
MAX_HOSTS = 1024


class OriginalDstHosts:
    __slots__ = ("hosts", "max_hosts", "on_drop")

    def __init__(self, max_hosts: int = MAX_HOSTS) -> None:
        self.max_hosts = max_hosts
        #: Told of each host dropped (the pools forget its empty pools).
        self.on_drop: Callable[[Host], None] | None = None
        #: Insertion-ordered: the least recently used first.
        self.hosts: dict[tuple[str, int], Host] = {}

    def host_for(self, dst: tuple[str, int]) -> Host | None:
        """The host for ``dst`` (the same object as long as it stays cached); ``None``
        when the cache is full of busy hosts."""
        hosts = self.hosts
        host = hosts.pop(dst, None)
        if host is None:
            if len(hosts) >= self.max_hosts and not self._drop_idle():
                return None
            host = Host(Address(host=dst[0], port=dst[1]))
        hosts[dst] = host  # now the most recently used
        return host

    def _drop_idle(self) -> bool:
        for key, host in self.hosts.items():
            if host.cx_active == 0 and host.active_requests == 0:
                del self.hosts[key]
                if self.on_drop is not None:
                    self.on_drop(host)
                return True
        return False
