"""The registry service (MOSN's dubbod): publications and subscriptions, the sessions they
share, and the clusters and routes that subscriptions keep.

A publication is an ephemeral provider node in the registry, pointing consumers at the proxy's
own listener. A subscription is an ephemeral consumer node plus a watch on the interface's
providers: their addresses become the hosts of a cluster named after the interface, and a
route on the ``dubbo`` router sends requests for that interface there. Every change reaches the
proxy through ``Server.apply``, the swap a reload or an xDS update makes: connections to hosts
that stay are kept, those to hosts that left close once idle.

One API call at a time (a lock): each either completes or undoes what it began, so nothing is
ever half-registered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..config.model import Cluster, ClusterType, Host, LbType, MeshConfig
from ..config.registry import DubboRegistryConfig
from ..config.routes import HeaderMatcher, Route, RouteAction, RouteMatch, RouterConfig, VirtualHost
from ..config.scalars import MAX_HOST_WEIGHT, Address, Weight, format_hostport
from .backend import RegistryUnavailable, Session, SessionKey
from .request import RegistryRef, RegistryRequest, RequestError, ServiceRef, parse_request
from .url import (
    configurators_path,
    consumer_url,
    consumers_path,
    node_name,
    provider_url,
    providers_path,
    select_weighted,
)

if TYPE_CHECKING:
    from ..server import Server

log = logging.getLogger("trio_mesh.registry")

#: Seconds before a re-apply that failed is tried again.
APPLY_RETRY = 1.0
#: The most provider nodes of one interface read (a real service has tens): a registry
#: flooded with more would make every change a long parse on the event loop.
MAX_PROVIDER_NODES = 2000

#: Bounds on what API clients may make the sidecar keep (each publication and subscription
#: is state, a registry node and, for a subscription, a cluster and a route; each session a
#: ZooKeeper connection with kazoo's threads): far above what one pod's application needs,
#: low enough that a runaway client cannot exhaust memory or threads.
MAX_SESSIONS = 8
MAX_PUBLICATIONS = 256
MAX_SUBSCRIPTIONS = 256

#: The name of the virtual host the registry adds when its router has no ``*`` one.
VHOST_NAME = "dubbo_registry"


class Refused(Exception):
    """A request the registry cannot take as it stands (``err_no: 1``, HTTP 409)."""


@attrs.frozen
class Publication:
    registry: RegistryRef
    service: ServiceRef
    path: str  # the provider node
    url: str


@attrs.define
class Subscription:
    registry: RegistryRef
    service: ServiceRef
    consumer_path: str
    #: ``(host, port, weight)`` of the matching providers, as last applied.
    hosts: tuple[tuple[str, int, int], ...] = ()
    #: How many provider nodes the registry listed last (matching or not).
    listed: int = 0
    #: The registry was seen listing more than MAX_PROVIDER_NODES (logged once).
    warned_flood: bool = False
    cluster: Cluster | None = None
    #: False until the subscription is in place; a change the watch reports before that is
    #: kept here, and wins over the first read.
    active: bool = False
    early: tuple[str, ...] | None = None


def _pub_key(req: RegistryRequest) -> tuple[Any, ...]:
    return (req.registry.key(), req.service.interface, req.service.group, req.service.version)


def open_session(key: SessionKey, config: DubboRegistryConfig) -> Session:
    """A session to the registry ``key`` names (its type was checked by the request)."""
    if key[0] == "memory":
        from .memory import MemorySession

        return MemorySession(key)
    # Imported only now: kazoo and its threads are not needed without ZooKeeper.
    from .zookeeper import ZkSession

    return ZkSession(key, session_timeout=float(config.session_timeout), log=log)


class RegistryRuntime:
    """Owned by a ``Server``; ``run`` in its nursery (with the API's bound socket)."""

    def __init__(
        self,
        server: Server,
        config: DubboRegistryConfig,
        *,
        advertise_ip: str,
        session_factory: Callable[[SessionKey, DubboRegistryConfig], Session] = open_session,
    ) -> None:
        self.server = server
        self.config = config
        self.advertise_ip = advertise_ip
        self._open_session = session_factory
        self.sessions: dict[SessionKey, Session] = {}
        self.publications: dict[tuple[Any, ...], Publication] = {}
        self.subscriptions: dict[str, Subscription] = {}
        #: The API's real bound ``(host, port)`` while it serves.
        self.address: tuple[str, int] | None = None
        self._lock = trio.Lock()  # one API call at a time
        self._nursery: trio.Nursery | None = None
        # Coalesces provider changes: one pending re-apply at most, whatever the burst.
        self._changed_send, self._changed_recv = trio.open_memory_channel[None](1)
        #: Set when a drain began: publications were taken out, none are made any more.
        self.draining = False
        #: Set while a hot upgrade hands the state over (and after it completed): changes
        #: here would be lost to the new process, so they are refused (503, try again).
        self.handing_over = False
        #: Incremented after every swap that carried the registry's clusters (for tests).
        self.applied = 0
        self._applied_event = trio.Event()

    # ---------------------------------------------------------------- lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._apply_changes)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True), trio.move_on_after(self._timeout):
                for session in list(self.sessions.values()):
                    await session.aclose()
            self.sessions.clear()

    @property
    def _timeout(self) -> float:
        return float(self.config.registry_timeout)

    async def unpublish_all(self) -> None:
        """Take every publication out of its registry (a drain begins: consumers stop
        sending here before the listeners stop), each bounded by ``registry_timeout``."""
        # Before the lock: a call holding it past the drain's bound must not publish either.
        self.draining = True
        async with self._lock:
            for key, pub in list(self.publications.items()):
                session = self.sessions.get(pub.registry.key())
                try:
                    if session is not None:
                        await session.delete_ephemeral(pub.path, timeout=self._timeout)
                except RegistryUnavailable as exc:
                    # The node goes with the session when the process ends.
                    log.warning("unpublish %s at drain: %s", pub.service.interface, exc)
                del self.publications[key]
                log.info("unpublished %s (draining)", pub.service.interface)

    # ---------------------------------------------------------------- hot upgrade

    async def handover_state(self) -> dict[str, Any]:
        """What the API was asked to publish and subscribe, as its requests' JSON (with the
        credentials: see ``upgrade``), for the new process of a hot upgrade to replay. From
        now on changes are refused (503): one accepted here would be lost to the new
        process; ``handover_failed`` lifts that."""
        async with self._lock:  # no call half-way: the state is whole
            self.handing_over = True
            return {
                "publications": [
                    _request(p.registry, p.service) for p in self.publications.values()
                ],
                "subscriptions": [
                    _request(s.registry, s.service) for s in self.subscriptions.values()
                ],
            }

    def handover_failed(self) -> None:
        self.handing_over = False
        log.info("registry: the upgrade did not complete; taking changes again")

    async def replay(self, state: Any) -> int:
        """Publish and subscribe what the old process of a hot upgrade had (its
        ``handover_state``), before this one says ready; returns how many items failed.
        A failure is logged and the rest go on: the upgrade proceeds (the application sees
        what this process holds at ``GET /`` and may ask again); after the first time a
        registry does not answer, its remaining items are not tried (each would wait
        ``registry_timeout`` for nothing)."""
        items: list[tuple[str, RegistryRequest]] = []
        failed = 0
        for kind, field, most in (
            ("pub", "publications", MAX_PUBLICATIONS),
            ("sub", "subscriptions", MAX_SUBSCRIPTIONS),
        ):
            entries = state.get(field) if isinstance(state, dict) else None
            if not isinstance(entries, list):
                log.error("upgrade: the old process's registry state has no %s list", field)
                continue
            if len(entries) > most:
                log.error(
                    "upgrade: %d %s handed over: only %d are replayed", len(entries), field, most
                )
                failed += len(entries) - most
                entries = entries[:most]
            for i, entry in enumerate(entries):
                try:
                    items.append((kind, parse_request(json.dumps(entry).encode(), kind=kind)))  # type: ignore[arg-type]
                except (RequestError, TypeError, ValueError) as exc:
                    log.error("upgrade: the old process's %s[%d]: %s: not replayed", field, i, exc)
                    failed += 1
        down: set[tuple[str, str, str, str]] = set()
        async with self._lock:
            for kind, req in items:
                verb = "publish" if kind == "pub" else "subscribe"
                interface = req.service.interface
                key = req.registry.key()
                if key in down:
                    log.error(
                        "upgrade: %s %s not replayed: %s %s did not answer",
                        verb,
                        interface,
                        req.registry.type,
                        req.registry.addr,
                    )
                    failed += 1
                    continue
                try:
                    if kind == "pub":
                        await self._publish(req)
                    else:
                        await self._subscribe_or_replace(req)
                except Exception as exc:
                    if isinstance(exc, RegistryUnavailable):
                        down.add(key)
                    log.error("upgrade: %s %s not replayed: %s", verb, interface, exc)
                    failed += 1
        log.info(
            "upgrade: registry state replayed: %d publication(s), %d subscription(s), %d failed",
            len(self.publications),
            len(self.subscriptions),
            failed,
        )
        return failed

    def check_reload(self, config: MeshConfig) -> str | None:
        """Why ``config`` cannot be applied now, or None: the provider nodes name
        ``server_listener``'s port, so while anything is published that listener stays."""
        name = self.config.server_listener
        if name is None or not self.publications:
            return None
        before = {lst.name: lst.address for lst in self.server.config.listeners}.get(name)
        after = {lst.name: lst.address for lst in config.listeners}.get(name)
        if before == after:
            return None
        return (
            f"extends: dubbo_registry server_listener {name!r}: its address cannot change"
            " while services are published there (the provider nodes name its port):"
            " /unpub them first, or restart"
        )

    # ---------------------------------------------------------------- sessions

    async def _session(self, ref: RegistryRef) -> Session:
        key = ref.key()
        session = self.sessions.get(key)
        if session is None:
            if self._nursery is None:
                raise RegistryUnavailable("the registry service is not running")
            if len(self.sessions) >= MAX_SESSIONS:
                raise Refused(
                    f"registry: {len(self.sessions)} registries (addresses and credentials)"
                    f" in use already, the most the sidecar keeps"
                )
            session = self._open_session(key, self.config)
            await self._nursery.start(session.run)
            self.sessions[key] = session
        return session

    async def _release_unused(self, ref: RegistryRef) -> None:
        """Close a session nothing uses any more (a failed first request: its connection
        attempts would go on forever)."""
        key = ref.key()
        used = any(p.registry.key() == key for p in self.publications.values()) or any(
            s.registry.key() == key for s in self.subscriptions.values()
        )
        session = self.sessions.get(key)
        if session is not None and not used:
            del self.sessions[key]
            with trio.move_on_after(self._timeout):
                await session.aclose()

    # ---------------------------------------------------------------- publications

    def _advertised_port(self) -> int:
        config = self.config
        if config.server_listener is not None:
            address = self.server.addresses.get(config.server_listener)
            if address is None:
                raise Refused(f"listener {config.server_listener!r} is not listening")
            return address[1]
        assert config.server_port is not None  # the config check requires one of the two
        return config.server_port

    def _check_changes(self) -> None:
        if self.handing_over:
            raise RegistryUnavailable(
                "a hot upgrade is handing the registry over to a new process: try again"
            )

    async def publish(self, req: RegistryRequest) -> str:
        async with self._lock:
            self._check_changes()
            return await self._publish(req)

    async def _publish(self, req: RegistryRequest) -> str:
        """Under the lock."""
        if self.draining:
            raise Refused("the proxy is draining: it publishes nothing more")
        key = _pub_key(req)
        old = self.publications.get(key)
        if old is not None and old.service == req.service:
            return "already published"
        if old is None and len(self.publications) >= MAX_PUBLICATIONS:
            raise Refused(f"{MAX_PUBLICATIONS} services published already, the most")
        url = provider_url(
            ip=self.advertise_ip,
            port=self._advertised_port(),
            interface=req.service.interface,
            methods=req.service.methods,
            group=req.service.group,
            version=req.service.version,
            timestamp_ms=int(time.time() * 1000),
            pid=os.getpid(),
        )
        path = f"{providers_path(req.service.interface)}/{node_name(url)}"
        try:
            session = await self._session(req.registry)
            # Java providers make it (they watch it): consumers such as dubbo-ssl-python
            # read it and fail without it.
            await session.ensure_path(
                configurators_path(req.service.interface), timeout=self._timeout
            )
            await session.create_ephemeral(path, timeout=self._timeout)
        except BaseException:  # also cancelled (the API handler's own deadline)
            with trio.CancelScope(shield=True):
                await self._release_unused(req.registry)
            raise
        if self.draining:  # began while the registry was being written: undo
            self.publications.pop(key, None)
            with trio.CancelScope(shield=True):
                for stale in (path, *([old.path] if old is not None else [])):
                    try:
                        await session.delete_ephemeral(stale, timeout=self._timeout)
                    except RegistryUnavailable as exc:
                        log.warning("publish %s at drain: %s", req.service.interface, exc)
            raise Refused("the proxy is draining: it publishes nothing more")
        # Recorded as soon as its node exists: an /unpub must find it whatever follows.
        self.publications[key] = Publication(req.registry, req.service, path, url)
        if old is not None:  # methods changed: the new node replaces the old one
            try:
                await session.delete_ephemeral(old.path, timeout=self._timeout)
            except RegistryUnavailable as exc:
                # Forgotten by the session (never re-created): it goes with the session.
                log.warning("publish %s: the old node is left: %s", req.service.interface, exc)
        log.info("published %s as %s", req.service.interface, url)
        return "publish success"

    async def unpublish(self, req: RegistryRequest) -> str:
        async with self._lock:
            self._check_changes()
            key = _pub_key(req)
            pub = self.publications.get(key)
            if pub is None:
                raise Refused(
                    f"service.interface: {req.service.interface!r} is not published there"
                    " (with this group and version)"
                )
            session = await self._session(req.registry)
            await session.delete_ephemeral(pub.path, timeout=self._timeout)
            del self.publications[key]
            await self._release_unused(req.registry)
            log.info("unpublished %s", req.service.interface)
            return "unpub success"

    # ---------------------------------------------------------------- subscriptions

    async def subscribe(self, req: RegistryRequest) -> str:
        async with self._lock:
            self._check_changes()
            return await self._subscribe_or_replace(req)

    async def _subscribe_or_replace(self, req: RegistryRequest) -> str:
        """Under the lock."""
        interface = req.service.interface
        old = self.subscriptions.get(interface)
        if old is not None and (old.registry, old.service) == (req.registry, req.service):
            return "already subscribed"
        if self.server.source_config.cluster(interface) is not None:
            raise Refused(
                f"service.interface: a configured cluster is named {interface!r}: the"
                " subscription's cluster would replace it"
            )
        if old is None and len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise Refused(f"{MAX_SUBSCRIPTIONS} services subscribed already, the most")
        if old is not None:  # new filters or another registry: the new one replaces it
            await self._unsubscribe(old)
            try:
                result = await self._subscribe(req)
            except BaseException:
                # The old one is gone: neither routed nor holding a session any more.
                with trio.CancelScope(shield=True), trio.move_on_after(self._timeout):
                    await self.server.reapply()
                    await self._release_unused(old.registry)
                raise
            # Moved to another registry: the old one's session may serve nothing now.
            await self._release_unused(old.registry)
            return result
        return await self._subscribe(req)

    async def _subscribe(self, req: RegistryRequest) -> str:
        """Under the lock, with no subscription to ``req``'s interface."""
        interface = req.service.interface
        url = consumer_url(
            ip=self.advertise_ip,
            interface=interface,
            methods=req.service.methods,
            group=req.service.group,
            version=req.service.version,
            timestamp_ms=int(time.time() * 1000),
            pid=os.getpid(),
        )
        sub = Subscription(
            req.registry, req.service, f"{consumers_path(interface)}/{node_name(url)}"
        )
        try:
            session = await self._session(req.registry)
            await session.create_ephemeral(sub.consumer_path, timeout=self._timeout)
            try:
                children = await session.watch_children(
                    providers_path(interface),
                    lambda names: self._providers_changed(sub, names),
                    timeout=self._timeout,
                )
            except BaseException:
                with trio.CancelScope(shield=True), trio.move_on_after(self._timeout):
                    await session.delete_ephemeral(sub.consumer_path, timeout=self._timeout)
                raise
        except BaseException:  # also cancelled (the API handler's own deadline)
            with trio.CancelScope(shield=True):
                await self._release_unused(req.registry)
            raise
        self._set_hosts(sub, children if sub.early is None else sub.early)
        sub.active, sub.early = True, None
        self.subscriptions[interface] = sub
        # The route and the cluster are in place when the API answers.
        try:
            await self.server.reapply()
        except Exception as exc:
            # Not served: not subscribed either (nothing half-registered).
            with trio.CancelScope(shield=True), trio.move_on_after(self._timeout):
                await self._unsubscribe(sub)
                await self._release_unused(sub.registry)
            raise Refused(f"the configuration with this subscription cannot apply: {exc}") from exc
        log.info("subscribed %s: %d provider(s)", interface, len(sub.hosts))
        return "subscribe success"

    async def unsubscribe(self, req: RegistryRequest) -> str:
        async with self._lock:
            self._check_changes()
            sub = self.subscriptions.get(req.service.interface)
            if sub is None or sub.registry != req.registry:
                raise Refused(
                    f"service.interface: {req.service.interface!r} is not subscribed there"
                )
            await self._unsubscribe(sub)
            await self.server.reapply()
            await self._release_unused(req.registry)
            return "unsubscribe success"

    async def _unsubscribe(self, sub: Subscription) -> None:
        interface = sub.service.interface
        session = self.sessions.get(sub.registry.key())
        if session is not None:
            session.unwatch(providers_path(interface))
            try:
                await session.delete_ephemeral(sub.consumer_path, timeout=self._timeout)
            except RegistryUnavailable as exc:
                # Unwatched and forgotten already: the node goes with the session.
                log.warning("unsubscribe %s: consumer node left: %s", interface, exc)
        del self.subscriptions[interface]
        log.info("unsubscribed %s", interface)

    def _providers_changed(self, sub: Subscription, children: tuple[str, ...]) -> None:
        # On the Trio thread, from the session: only the swap waits for the apply task.
        if not sub.active:
            sub.early = children
            return
        if self.subscriptions.get(sub.service.interface) is not sub:
            return  # replaced or gone meanwhile
        if self._set_hosts(sub, children):
            try:
                self._changed_send.send_nowait(None)
            except trio.WouldBlock:
                pass  # a re-apply is pending already: it reads the latest hosts

    def _set_hosts(self, sub: Subscription, children: tuple[str, ...]) -> bool:
        """Take the providers the registry lists; True if the cluster's hosts change."""
        service = sub.service
        listed = len(children)
        if listed > MAX_PROVIDER_NODES:
            # A registry (or whoever writes into it) listing more than any real service has:
            # parsing and balancing over all of them would stall the event loop; the first
            # ones by name are taken (the same ones every time).
            if not sub.warned_flood:  # once: a flapping node must not flood the log
                sub.warned_flood = True
                log.warning(
                    "%s: the registry lists %d provider nodes: only %d are read",
                    service.interface,
                    listed,
                    MAX_PROVIDER_NODES,
                )
            children = tuple(sorted(children)[:MAX_PROVIDER_NODES])
        hosts = tuple(
            h
            for h in select_weighted(
                children,
                interface=service.interface,
                group=service.group,
                version=service.version,
            )
            if not self._refused_host(service.interface, h[0], h[1])
        )
        sub.listed = listed
        if not hosts and sub.hosts and self.config.empty_protection:
            # Dubbo's empty protection: a registry that lists nobody (wiped, restarted
            # empty) must not take every host away; the last known ones stay.
            log.warning(
                "%s: the registry lists no provider: keeping the %d known (empty_protection)",
                service.interface,
                len(sub.hosts),
            )
            return False
        if hosts == sub.hosts and sub.cluster is not None:
            return False
        before = {(h, p) for h, p, _ in sub.hosts}
        after = {(h, p) for h, p, _ in hosts}
        sub.hosts = hosts
        sub.cluster = _cluster(service.interface, hosts)
        # What changed, a few addresses at most: a flapping node among thousands must not
        # write every address on every change.
        log.info(
            "%s: %d provider(s); added %s; removed %s",
            service.interface,
            len(hosts),
            _few(after - before),
            _few(before - after),
        )
        return True

    def _refused_host(self, interface: str, host: str, port: int) -> bool:
        """A provider address the proxy must not send to: an unspecified, multicast or
        broadcast address (``0.0.0.0`` reaches this machine on Linux), or one of this
        proxy's own ports other than the one it publishes (a provider node pointing at the
        egress listener makes every call loop through the proxy until it runs out of
        connections; at the admin or registry API, it speaks Dubbo to HTTP). Envoy and MOSN
        would route there; a registry entry is not the operator's say, so it is dropped."""
        why = None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None  # a DNS name: resolved when connecting, as any cluster host
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1 (and is not is_loopback)
        if ip is not None and (
            ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255")
        ):
            why = "not a host address"
        elif (ip is not None and ip.is_loopback) or host in ("localhost", self.advertise_ip):
            if port in self._own_ports():
                why = "one of this proxy's own ports"
        if why is not None:
            log.warning("%s: provider %s ignored: %s", interface, format_hostport(host, port), why)
        return why is not None

    def _own_ports(self) -> set[int]:
        """This proxy's ports a provider must not point at (all but the published one)."""
        server = self.server
        ports = {port for _, port in server.addresses.values()}
        for address in (server.admin_address, self.address):
            if address is not None:
                ports.add(address[1])
        try:
            ports.discard(self._advertised_port())
        except Refused:
            pass
        return ports

    async def _apply_changes(self) -> None:
        async for _ in self._changed_recv:
            try:
                await self.server.reapply()
            except Exception:
                # A TLS file unreadable for a moment, say: the hosts are recorded, not yet
                # served; try again soon rather than wait for the next provider change.
                log.exception("registry: applying the providers' change failed; retrying")
                await trio.sleep(APPLY_RETRY)
                with contextlib.suppress(trio.WouldBlock):  # a newer change is queued: fine
                    self._changed_send.send_nowait(None)

    # ---------------------------------------------------------------- overlay

    def overlay(self, config: MeshConfig) -> MeshConfig:
        """``config`` plus the subscriptions' clusters and routes (``Server.apply`` passes
        every configuration through here). A cluster of the configuration's own with an
        interface's name wins: that subscription is left out (and logged)."""
        subs = [s for s in self.subscriptions.values() if s.cluster is not None]
        configured = {c.name for c in config.cluster_manager.clusters}
        clusters: list[Cluster] = []
        routes: list[Route] = []
        for sub in subs:
            assert sub.cluster is not None
            if sub.cluster.name in configured:
                log.warning(
                    "%s: a configured cluster has this name: the subscription is not routed",
                    sub.cluster.name,
                )
                continue
            clusters.append(sub.cluster)
            routes.append(_route(sub.service.interface))
        servers = list(config.servers)
        name = self.config.router_config_name
        placed = False
        for si, server in enumerate(servers):
            for ri, router in enumerate(server.routers):
                if router.router_config_name == name:
                    placed = True
                    if not routes:
                        continue
                    routers = list(server.routers)
                    routers[ri] = _with_routes(router, routes)
                    servers[si] = attrs.evolve(server, routers=tuple(routers))
        # The router exists from the start, empty: listeners may name it (MOSN creates it).
        if not placed and servers:
            router = RouterConfig(
                router_config_name=name,
                virtual_hosts=(
                    VirtualHost(name=VHOST_NAME, domains=("*",), routers=tuple(routes)),
                ),
            )
            servers[0] = attrs.evolve(servers[0], routers=(*servers[0].routers, router))
        if not clusters:
            return attrs.evolve(config, servers=tuple(servers))
        return attrs.evolve(
            config,
            servers=tuple(servers),
            cluster_manager=attrs.evolve(
                config.cluster_manager,
                clusters=(*config.cluster_manager.clusters, *clusters),
            ),
        )

    def applied_now(self) -> None:
        """The server swapped in a configuration carrying the registry's state."""
        self.applied += 1
        self._applied_event.set()
        self._applied_event = trio.Event()

    async def wait_applied(self) -> None:
        """Until the next swap (tests: a provider change has reached the proxy)."""
        await self._applied_event.wait()

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """What ``GET /`` shows: publications and subscriptions, no credentials."""
        return {
            "publications": [
                {
                    "registry": _public(p.registry),
                    "service": attrs.asdict(p.service),
                    "url": p.url,
                }
                for p in self.publications.values()
            ],
            "subscriptions": [
                {
                    "registry": _public(s.registry),
                    "service": attrs.asdict(s.service),
                    "providers_listed": s.listed,
                    "hosts": [format_hostport(h, p) for h, p, _ in s.hosts],  # IPv6 bracketed
                }
                for s in self.subscriptions.values()
            ],
            "sessions": [
                {"type": k[0], "addr": k[1], "connected": s.connected}
                for k, s in self.sessions.items()
            ],
        }


def _request(ref: RegistryRef, service: ServiceRef) -> dict[str, Any]:
    """A ``/pub`` or ``/sub`` body for ``parse_request`` (credentials included)."""
    return {
        "registry": attrs.asdict(ref),
        "service": {**attrs.asdict(service), "methods": list(service.methods)},
    }


def _public(ref: RegistryRef) -> dict[str, Any]:
    return {"type": ref.type, "addr": ref.addr, "username": ref.username}


def _cluster(interface: str, hosts: tuple[tuple[str, int, int], ...]) -> Cluster:
    # Dubbo's weights (default 100) scaled into MOSN's 1-128 when any is above.
    top = max((w for _, _, w in hosts), default=0)
    if top == 0:
        # Every provider at weight 0: Dubbo's RandomLoadBalance then picks among all of them
        # alike (one broken or hostile node writer must not empty the cluster).
        hosts = tuple((h, p, 1) for h, p, _ in hosts)
    scale = MAX_HOST_WEIGHT / top if top > MAX_HOST_WEIGHT else 1.0
    return Cluster(
        name=interface,
        type=ClusterType.SIMPLE,
        lb_type=LbType.LB_RANDOM,
        hosts=tuple(
            Host(address=Address(h, p), weight=Weight(max(1, math.floor(w * scale))))
            for h, p, w in hosts
            if w > 0  # Dubbo's weight 0: no traffic
        ),
    )


def _route(interface: str) -> Route:
    return Route(
        match=RouteMatch(headers=(HeaderMatcher(name="service", value=interface),)),
        route=RouteAction(cluster_name=interface),
    )


def _with_routes(router: RouterConfig, routes: list[Route]) -> RouterConfig:
    vhosts = list(router.virtual_hosts)
    for vi, vhost in enumerate(vhosts):
        if "*" in vhost.domains:
            vhosts[vi] = attrs.evolve(vhost, routers=(*vhost.routers, *routes))
            break
    else:
        vhosts.append(VirtualHost(name=VHOST_NAME, domains=("*",), routers=tuple(routes)))
    return attrs.evolve(router, virtual_hosts=tuple(vhosts))


def _few(addresses: set[tuple[str, int]], most: int = 3) -> str:
    shown = ", ".join(format_hostport(h, p) for h, p in sorted(addresses)[:most])
    more = len(addresses) - most
    return (shown or "none") + (f" and {more} more" if more > 0 else "")
