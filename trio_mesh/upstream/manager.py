"""The cluster manager: every cluster by name."""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Cluster as ClusterConfig
from .cluster import Cluster
from .host import Host


class ClusterManager:
    def __init__(self, configs: Iterable[ClusterConfig]) -> None:
        self.clusters: dict[str, Cluster] = {c.name: Cluster(c) for c in configs}

    def get(self, name: str) -> Cluster:
        return self.clusters[name]

    def __contains__(self, name: str) -> bool:
        return name in self.clusters

    def add_missing(self, configs: Iterable[ClusterConfig]) -> list[str]:
        """Add the clusters not known yet (nothing routes to them before the swap that
        names them); returns their names, to ``remove`` should that swap fail."""
        added = []
        for config in configs:
            if config.name not in self.clusters:
                self.clusters[config.name] = Cluster(config)
                added.append(config.name)
        return added

    def update(self, configs: Iterable[ClusterConfig]) -> tuple[list[Cluster], list[Host]]:
        """Add new clusters and update the others in place (their objects, counters and
        pools stay); clusters absent from ``configs`` are NOT removed here (``remove``, once
        nothing routes to them). Returns the clusters left out, and the hosts that left."""
        configs = list(configs)
        self.add_missing(configs)
        left: list[Host] = []
        for config in configs:
            cluster = self.clusters[config.name]
            if cluster.config != config:
                left += cluster.update(config)
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
