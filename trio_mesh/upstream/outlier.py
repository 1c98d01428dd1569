"""Outlier detection (Envoy's consecutive-failure kinds): a host that fails too many tries
in a row is ejected from its cluster's balancer for a while, longer each time.

Every try's result reaches ``response`` (the upstream answered, RPC error replies as 500)
or ``local_failure`` (connect failure, reset, timeout): a few integer operations on the
host's counters; the rare ejection does the rest. ``run``, one task per cluster in the
cluster's nursery (``pool/cluster.py``), brings hosts back when their time is up.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import trio

from ..config.outlier import OutlierDetection
from .host import Host

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger("trio_mesh.upstream.outlier")

CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"


class OutlierDetector:
    """One cluster's detector; replaced (not changed) when its configuration changes."""

    __slots__ = ("cluster", "config", "gateway", "local", "split", "x5xx")

    def __init__(self, cluster: Cluster, config: OutlierDetection) -> None:
        self.cluster = cluster
        self.config = config
        # The thresholds, read on the request path: 0 never matches a count (check off).
        self.x5xx = config.consecutive_5xx
        self.gateway = config.consecutive_gateway_failure
        self.local = config.consecutive_local_origin_failure
        self.split = config.split_external_local_origin_errors

    def response(self, host: Host, code: int) -> None:
        """A try of ``host`` got a response with status ``code``."""
        if code < 500:
            host.od_5xx = host.od_gateway = host.od_local = 0
            return
        host.od_local = 0  # it answered: the connection worked
        n = host.od_5xx + 1
        host.od_5xx = n
        if 502 <= code <= 504:
            g = host.od_gateway + 1
            host.od_gateway = g
            if g == self.gateway:
                host.od_gateway = 0
                self._consecutive(host, CONSECUTIVE_GATEWAY_FAILURE)
        else:
            host.od_gateway = 0
        if n == self.x5xx:
            host.od_5xx = 0
            self._consecutive(host, CONSECUTIVE_5XX)

    def local_failure(self, host: Host, code: int) -> None:
        """A try of ``host`` failed here (connect failure, reset, timeout); ``code``: the
        reply it becomes (503, 504), which is what counts without the split (as Envoy)."""
        if not self.split:
            self.response(host, code)
            return
        n = host.od_local + 1
        host.od_local = n
        if n == self.local:
            host.od_local = 0
            self._consecutive(host, CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    def _consecutive(self, host: Host, kind: str) -> None:
        """A consecutive count of ``kind`` reached its threshold: eject, if enforced and the
        cluster's ``max_ejection_percent`` allows it."""
        if host.ejected:
            return
        config = self.config
        enforcing: int = getattr(config, f"enforcing_{kind}")
        if enforcing < 100 and random.randrange(100) >= enforcing:
            return
        cluster = self.cluster
        stats = cluster.stats
        hosts = cluster.hosts
        if host not in hosts:
            return  # it left the cluster while its try was in flight
        active = sum(1 for h in hosts if h.ejected)
        # Envoy's rule: within the percentage of the hosts ejected before this one, so at
        # least one host can always be ejected (unless the percentage is 0).
        if active * 100 >= config.max_ejection_percent * len(hosts):
            stats.outlier_detection_ejections_overflow += 1
            return
        now = trio.current_time()
        # The multiplier grows while the time it gives stays under the cap (Envoy's backoff).
        if config.ejection_time(host.od_ejections) < config.ejection_time(host.od_ejections + 1):
            host.od_ejections += 1
        host.od_ejected_at = now
        stats.outlier_detection_ejections_enforced_total += 1
        if kind == CONSECUTIVE_5XX:
            stats.outlier_detection_ejections_enforced_consecutive_5xx += 1
        elif kind == CONSECUTIVE_GATEWAY_FAILURE:
            stats.outlier_detection_ejections_enforced_consecutive_gateway_failure += 1
        else:
            stats.outlier_detection_ejections_enforced_consecutive_local_origin_failure += 1
        stats.outlier_detection_ejections_active = active + 1
        log.warning(
            "cluster %r: host %s ejected (%s) for %gs",
            cluster.name,
            host.label,
            kind,
            config.ejection_time(host.od_ejections),
        )
        if host.set_health(ejected=True):
            cluster.host_health_changed()

    def tick(self, now: float) -> None:
        """The interval's check: hosts whose ejection is over come back; a host that stayed
        in as long as its last ejection lasted has its multiplier lowered (Envoy's decay)."""
        config = self.config
        changed = False
        active = 0
        for host in self.cluster.hosts:
            if host.ejected:
                if now - host.od_ejected_at >= config.ejection_time(host.od_ejections):
                    host.od_unejected_at = now
                    host.od_5xx = host.od_gateway = host.od_local = 0
                    changed |= host.set_health(ejected=False)
                    log.warning("cluster %r: host %s is back", self.cluster.name, host.label)
                else:
                    active += 1
            elif host.od_ejections and (
                now - host.od_unejected_at >= config.ejection_time(host.od_ejections)
            ):
                host.od_ejections -= 1
                host.od_unejected_at = now  # the next step down takes another stretch
        self.cluster.stats.outlier_detection_ejections_active = active
        if changed:
            self.cluster.host_health_changed()

    async def run(self) -> None:
        """Every ``interval``, ``tick``; returns once the cluster has another detector (its
        configuration changed) or none."""
        cluster = self.cluster
        while cluster.outlier is self:
            await trio.sleep(self.config.interval)
            if cluster.outlier is not self:
                return
            self.tick(trio.current_time())


def release_all(cluster: Cluster) -> None:
    """Outlier detection was turned off: every ejected host comes back now."""
    changed = False
    for host in cluster.hosts:
        if host.ejected:
            changed |= host.set_health(ejected=False)
        host.od_5xx = host.od_gateway = host.od_local = host.od_ejections = 0
    cluster.stats.outlier_detection_ejections_active = 0
    if changed:
        cluster.host_health_changed()
