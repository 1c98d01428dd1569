"""Clusters, hosts and load balancers."""

from .cluster import CircuitOpenError, Cluster, NoHostError
from .host import Host
from .lb import make_balancer
from .manager import ClusterManager

__all__ = ["Cluster", "ClusterManager", "Host", "NoHostError", "CircuitOpenError", "make_balancer"]
