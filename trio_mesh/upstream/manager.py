"""The cluster manager: every cluster by name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..config import Cluster as ClusterConfig
from .cluster import Cluster, ClusterTls, build_tls
from .host import Host

#: The TLS contexts of a configuration's clusters, by cluster name (``prepare_tls``).
TlsByCluster = Mapping[str, ClusterTls | None]


def prepare_tls(configs: Iterable[ClusterConfig]) -> dict[str, ClusterTls | None]:
    """Every cluster's TLS contexts, built from the files now (a reload: rotated certificates
    and CAs). Blocking file reads: the server runs it in a thread, before anything changes.
    Raises ``TlsConfigError`` naming the key's path."""
    return {
        c.name: build_tls(c, f"cluster_manager.clusters[{i}].tls_context")
        for i, c in enumerate(configs)
        if c.tls_context is not None
    }


class ClusterManager:
    def __init__(self, configs: Iterable[ClusterConfig], tls: TlsByCluster | None = None) -> None:
        """``tls``: the contexts ``prepare_tls`` built (built here when not given; ``{}``:
        none yet, clusters with TLS connect to nothing until an ``update`` brings them)."""
        configs = list(configs)
        if tls is None:
            tls = prepare_tls(configs)
        self.clusters: dict[str, Cluster] = {c.name: Cluster(c, tls.get(c.name)) for c in configs}

    def get(self, name: str) -> Cluster:
        return self.clusters[name]

    def __contains__(self, name: str) -> bool:
        return name in self.clusters

    def add_missing(
        self, configs: Iterable[ClusterConfig], tls: TlsByCluster | None = None
    ) -> list[str]:
        """Add the clusters not known yet (nothing routes to them before the swap that
        names them); returns their names, to ``remove`` should that swap fail."""
        added = []
        for config in configs:
            if config.name not in self.clusters:
                contexts = tls.get(config.name) if tls is not None else None
                self.clusters[config.name] = Cluster(config, contexts)
                added.append(config.name)
        return added

    def update(
        self, configs: Iterable[ClusterConfig], tls: TlsByCluster | None = None
    ) -> tuple[list[Cluster], list[Host]]:
        """Add new clusters and update the others in place (their objects, counters and
        pools stay); clusters absent from ``configs`` are NOT removed here (``remove``, once
        nothing routes to them). ``tls``: the contexts ``prepare_tls`` built for ``configs``
        (every cluster with TLS takes its new ones, changed or not: rotation). Returns the
        clusters left out, and the hosts that left."""
        configs = list(configs)
        if tls is None:
            tls = prepare_tls(configs)
        self.add_missing(configs, tls)
        left: list[Host] = []
        for config in configs:
            cluster = self.clusters[config.name]
            contexts = tls.get(config.name)
            if cluster.config != config:
                left += cluster.update(config, contexts)
            elif contexts is not None:
                cluster.tls = contexts  # the same keys, the files read again
                cluster.tls_missing = False
        names = {c.name for c in configs}
        stale = [c for name, c in self.clusters.items() if name not in names]
        return stale, left

    def remove(self, names: Iterable[str]) -> list[Host]:
        """Forget these clusters; returns their hosts (whose pools are to be retired)."""
        hosts: list[Host] = []
        for name in names:
            cluster = self.clusters.pop(name, None)
            if cluster is not None:
                hosts += cluster.hosts
        return hosts
