"""STRICT_DNS and LOGICAL_DNS clusters: their hosts come from resolving the configured names.

One task per DNS cluster (``run_resolver``, started in the cluster's pools nursery,
pool/cluster.py) resolves every ``dns_refresh_rate`` (jittered) off the event loop, and
sooner after a failure (1 s, doubling up to the refresh rate). A failed or empty answer
keeps the name's last good addresses: a DNS hiccup never empties the cluster.

- STRICT_DNS: every address is a host; ``Cluster.replace_hosts`` keeps the ``Host`` objects
  (and so the pooled connections) of addresses that stay; the hosts that left retire.
- LOGICAL_DNS (Envoy's): one host, labelled by its name; a new answer changes where its
  *new* connections go (``Host.host``), its open connections stay until they close.

Until the first answer the cluster has no host (a request gets 503, no healthy upstream);
the server's start-up waits for each DNS cluster's first answer, boundedly, as Envoy's
initialisation waits for its clusters to warm.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import attrs
import trio

from ..config import Address, ClusterType, DnsLookupFamily
from ..config import Cluster as ClusterConfig
from ..config import Host as HostConfig
from ..network.throttled_log import ThrottledLog

if TYPE_CHECKING:
    from .cluster import Cluster
    from .host import Host

log = logging.getLogger("trio_mesh.upstream.dns")

#: The first retry after a failed resolution; doubles up to the refresh rate.
FAILURE_RETRY = 1.0
#: Up to this fraction of the refresh rate is added to each wait: clusters spread out.
JITTER = 0.1
#: How long start-up waits for the DNS clusters' first answers.
WARM_TIMEOUT = 5.0
#: One name's resolution; longer is a failure (c-ares' default per try, as Envoy's).
RESOLVE_TIMEOUT = 5.0

#: ``(name, family) -> addresses`` (``AF_UNSPEC``, ``AF_INET`` or ``AF_INET6``), in the
#: resolver's order; raises ``OSError`` on failure. Injectable: tests swap answers.
Resolve = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(name: str, family: int) -> list[str]:
    """The system resolver, in a thread (``trio.socket.getaddrinfo``): never on the loop."""
    infos = await trio.socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_QUERY = {
    DnsLookupFamily.V4_ONLY: socket.AF_INET,
    DnsLookupFamily.V6_ONLY: socket.AF_INET6,
}


def pick(family: DnsLookupFamily, addresses: list[str]) -> list[str]:
    """The addresses ``family`` uses: AUTO the IPv6 ones if any, else IPv4; V4_PREFERRED the
    reverse; the ONLY ones just theirs."""
    v6 = [a for a in addresses if ":" in a]
    v4 = [a for a in addresses if ":" not in a]
    if family is DnsLookupFamily.V4_ONLY:
        return v4
    if family is DnsLookupFamily.V6_ONLY:
        return v6
    if family is DnsLookupFamily.AUTO:
        return v6 or v4
    return v4 or v6


def is_dns(config: ClusterConfig) -> bool:
    return config.type.is_dns


class DnsState:
    """A DNS cluster's resolution state (``Cluster.dns``): kept across updates of its
    configuration, so a reload neither forgets the answers nor empties the cluster."""

    def __init__(self, resolve: Resolve = system_resolve) -> None:
        self.resolve = resolve
        #: The last good addresses of each configured name.
        self.answers: dict[str, list[str]] = {}
        #: Set once every name was tried once (answered or failed): the cluster is warm.
        self.warmed = trio.Event()
        self.running = False
        # Set by a configuration change: resolve now rather than at the next refresh.
        self.wake = trio.Event()
        self.resolutions = 0
        self.failures = 0
        # A name that keeps failing logs once per 10 s per cluster, not at every retry.
        self.fail_log = ThrottledLog(log, interval=10.0)
        #: Set (and replaced) each time a round of answers was applied to the hosts.
        self.applied = trio.Event()


def _host_configs(config: ClusterConfig, answers: dict[str, list[str]]) -> list[HostConfig]:
    """STRICT_DNS: a host per address (weight, metadata, TLS name from its entry; the name is
    the TLS name when the entry gives none); the first entry wins an address two share."""
    out: dict[Address, HostConfig] = {}
    for cfg in config.hosts:
        for ip in answers.get(cfg.address.host, ()):
            address = Address(host=ip, port=cfg.address.port)
            if address not in out:
                out[address] = attrs.evolve(
                    cfg, address=address, hostname=cfg.hostname or cfg.address.host
                )
    return list(out.values())


def apply(cluster: Cluster, *, fresh: bool = False) -> list[Host]:
    """Make the cluster's hosts those of its answers; returns the hosts that left (their
    pools retire). ``fresh``: every host is new (a TLS change)."""
    state = cluster.dns
    assert state is not None
    config = cluster.config
    if config.type is ClusterType.LOGICAL_DNS:
        entry = config.hosts[0]
        # Its address changes under it: TLS names the name, never the address of the moment.
        entry = attrs.evolve(entry, hostname=entry.hostname or entry.address.host)
        answer = state.answers.get(entry.address.host)
        if not answer:
            if fresh:  # a TLS change: the host made under the old one goes
                old = list(cluster.hosts)
                cluster.set_hosts([])
                return old
            return []  # nothing known yet: no host (or the one it has, kept)
        if fresh:
            old = list(cluster.hosts)
            cluster.set_hosts([])
            left = old + cluster.replace_hosts([entry])
        else:
            left = cluster.replace_hosts([entry])
        host = cluster.hosts[0]
        if host.host != answer[0]:
            log.info("cluster %r: %s now at %s", cluster.name, host.label, answer[0])
        host.host = answer[0]  # new connections go there; open ones stay
        return left
    configs = _host_configs(config, state.answers)
    if fresh:
        old = list(cluster.hosts)
        cluster.set_hosts([])
        return old + cluster.replace_hosts(configs)
    return cluster.replace_hosts(configs)


def update(cluster: Cluster, config: ClusterConfig, fresh: bool) -> list[Host]:
    """``Cluster.update``'s DNS part (the configuration already taken): the hosts follow
    the last answers for the new names, and the resolver runs again now."""
    if not is_dns(config):
        if cluster.dns is not None:
            cluster.dns.wake.set()
        cluster.dns = None  # its resolver sees it and ends
        old = list(cluster.hosts)
        if fresh:
            cluster.set_hosts([])
            return old + cluster.replace_hosts(config.hosts)
        return cluster.replace_hosts(config.hosts)
    if cluster.dns is None:
        cluster.dns = DnsState()
    cluster.dns.wake.set()
    if not fresh and any(h.address.host not in cluster.dns.answers for h in config.hosts):
        # A new name: the hosts stay as they are until the resolver has tried it (warming).
        return []
    return apply(cluster, fresh=fresh)


async def resolve_all(cluster: Cluster, state: DnsState) -> bool:
    """Resolve every name once (concurrently); a name that fails keeps its last answer.
    Returns whether all answered."""
    config = cluster.config
    family = config.dns_lookup_family
    query = _QUERY.get(family, socket.AF_UNSPEC)
    names = list(dict.fromkeys(h.address.host for h in config.hosts))
    ok = True

    async def one(name: str) -> None:
        nonlocal ok
        try:
            with trio.fail_after(RESOLVE_TIMEOUT):
                addresses = pick(family, await state.resolve(name, query))
        except OSError as exc:
            addresses, reason = [], str(exc)
        except trio.TooSlowError:
            addresses, reason = [], f"no answer within {RESOLVE_TIMEOUT}s"
        else:
            reason = "no address in the lookup family"
        if not addresses:
            ok = False
            state.failures += 1
            kept = state.answers.get(name)
            state.fail_log.log(
                logging.WARNING,
                "cluster %r: resolving %r failed (%s); %s",
                cluster.name,
                name,
                reason,
                f"keeping {', '.join(kept)}" if kept else "no host yet",
            )
            return
        state.answers[name] = addresses

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    state.resolutions += 1
    state.answers = {n: state.answers[n] for n in names if n in state.answers}  # names gone
    return ok


async def run_resolver(cluster: Cluster, retire: Callable[[Iterable[Host]], None]) -> None:
    """The cluster's resolution loop, until the cluster stops being a DNS cluster (or its
    nursery is cancelled). ``retire``: what closes the pools of hosts that left."""
    state = cluster.dns
    if state is None:
        return
    state.running = True
    backoff = FAILURE_RETRY
    try:
        while cluster.dns is state:
            ok = await resolve_all(cluster, state)
            if cluster.dns is not state:
                return  # a reload made it another kind of cluster meanwhile
            left = apply(cluster)
            if left:
                retire(left)
            state.warmed.set()
            state.applied.set()
            state.applied = trio.Event()
            rate = cluster.config.dns_refresh_rate
            if ok:
                backoff = FAILURE_RETRY
                wait = rate * (1 + JITTER * random.random())
            else:
                wait = min(backoff, rate)
                backoff = min(backoff * 2, rate)
            with trio.move_on_after(wait):
                await state.wake.wait()
            state.wake = trio.Event()  # after the wait: a wake during resolution counts
    finally:
        state.running = False


async def wait_warm(clusters: Iterable[Cluster], timeout: float = WARM_TIMEOUT) -> None:
    """Start-up: wait (at most ``timeout``) until every DNS cluster tried its names once."""
    with trio.move_on_after(timeout) as scope:
        for cluster in clusters:
            if cluster.dns is not None:
                await cluster.dns.warmed.wait()
    if scope.cancelled_caught:
        log.warning("DNS clusters not resolved within %ss: serving without them", timeout)
