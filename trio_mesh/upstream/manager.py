"""The cluster manager: every cluster by name."""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Cluster as ClusterConfig
from .cluster import Cluster


class ClusterManager:
    def __init__(self, configs: Iterable[ClusterConfig]) -> None:
        self.clusters: dict[str, Cluster] = {c.name: Cluster(c) for c in configs}

    def get(self, name: str) -> Cluster:
        return self.clusters[name]

    def __contains__(self, name: str) -> bool:
        return name in self.clusters
