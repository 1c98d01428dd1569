"""ADS (state of the world) protocol client: subscriptions, ACK/NACK, reconnects.

The client knows the protocol, not the resources: every response is unpacked
and handed to an async ``handler(type_url, version, resources)``, which returns
None to ACK or an error string to NACK.  Requests are never queued: the sender
builds them from the current per-type state when woken, so a burst of
subscription changes or responses coalesces into one request per type.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_mesh.xds.envoy_import import envoy_import
from trio_mesh.xds.stream import open_ads_stream

log = logging.getLogger("trio_mesh.xds")

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

SHORT_NAMES = {LDS: "LDS", RDS: "RDS", CDS: "CDS", EDS: "EDS"}
INVALID_ARGUMENT = 3  # google.rpc.Code

Handler = Callable[[str, str, list[Any]], Awaitable[str | None]]


def _envoy() -> dict[str, Any]:
    """Import what the client needs; importing the resource modules registers
    their classes so Any.unpack() can find them (also the HCM and router
    filter configs nested inside Listeners)."""
    with envoy_import():
        import envoy_data_plane.envoy.config.cluster.v3
        import envoy_data_plane.envoy.config.endpoint.v3
        import envoy_data_plane.envoy.config.listener.v3
        import envoy_data_plane.envoy.config.route.v3
        import envoy_data_plane.envoy.extensions.filters.http.router.v3
        import envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3  # noqa: F401
        from envoy_data_plane.envoy.config.core.v3 import Node
        from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest
        from envoy_data_plane.google.protobuf import Struct
        from envoy_data_plane.google.rpc import Status
    return {"Node": Node, "DiscoveryRequest": DiscoveryRequest, "Struct": Struct, "Status": Status}


class _StreamEnded(Exception):
    """The server closed the ADS stream without an error status."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

    return (GRPCError, StreamTerminatedError, ProtocolError, OSError, _StreamEnded)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class AdsClient:
    """An ADS client that keeps one stream up (reconnecting with backoff)
    and reports every response to ``handler``.

    Initially subscribed to CDS and LDS as wildcards; EDS/RDS names are set
    with :meth:`subscribe`, typically from the handler once clusters and
    listeners are known.
    """

    def __init__(
        self,
        host: str,
        port: int,
        node: dict[str, Any],
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.node = dict(node)
        self.ssl_context = ssl_context
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._handler = handler
        # Per type_url; insertion order = order of the initial requests.
        self._names: dict[str, list[str]] = {CDS: [], LDS: []}
        self._version: dict[str, str] = {}  # last ACKed version (kept across streams)
        self._nonce: dict[str, str] = {}  # last nonce seen on the current stream
        self._type_error: dict[str, str | None] = {}
        # type_url -> NACK message (or None): requests the sender still owes.
        self._dirty: dict[str, str | None] = {}
        self._wake = trio.Event()
        self._connected = False
        #: Unparked whenever the connection state or a type's state changes (for waiters).
        self.changed = trio.lowlevel.ParkingLot()
        self._attempts = 0
        self._last_error: str | None = None
        self._loop: Any = None  # the trio-asyncio loop, for leak checks in tests

    # ------------------------------------------------------------ public API
    def subscribe(self, type_url: str, names: list[str]) -> None:
        """Set the resource names wanted for ``type_url`` (EDS/RDS).

        Non-blocking; if the set changed, a request is sent with the type's
        current version and nonce (it doubles as the ACK of that nonce)."""
        wanted = sorted(set(names))
        if self._names.get(type_url) == wanted:
            return
        self._names[type_url] = wanted
        # A pending NACK for this type is dropped: the new request answers the
        # same nonce, and a NACK would stop the server from responding.
        self._mark_dirty(type_url, None)

    @property
    def connected(self) -> bool:
        """An ADS stream is up (Envoy's ``control_plane.connected_state``)."""
        return self._connected

    def status(self) -> dict[str, Any]:
        """A snapshot for config dumps."""
        types = {}
        for type_url in {**self._names, **self._version}:
            types[SHORT_NAMES.get(type_url, type_url)] = {
                "version": self._version.get(type_url, ""),
                "nonce": self._nonce.get(type_url, ""),
                "names": list(self._names.get(type_url, [])),
                "last_error": self._type_error.get(type_url),
            }
        return {
            "server": f"{self.host}:{self.port}",
            "connected": self._connected,
            "connect_attempts": self._attempts,
            "last_error": self._last_error,
            "types": types,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep an ADS stream up until cancelled."""
        import asyncio

        import trio_asyncio

        errors = _transport_errors()
        # The Envoy types take most of a second to import: not on the event loop's time.
        envoy = await trio.to_thread.run_sync(_envoy)
        async with trio_asyncio.open_loop():
            self._loop = asyncio.get_event_loop()
            task_status.started()
            failures = 0
            while True:
                self._attempts += 1
                delivered = [False]  # set by the receiver: resets the backoff
                failure: BaseException | None = None
                try:
                    await self._session(envoy, delivered)
                except* errors as group:
                    failure = _first_leaf(group)
                finally:
                    self._connected = False
                    self.changed.unpark_all()
                failures = 0 if delivered[0] else failures
                failures += 1
                self._last_error = (
                    f"{type(failure).__name__}: {failure}" if failure else "stream ended"
                )
                # Full jitter: spreads reconnects of many proxies after a
                # control plane restart.
                delay = random.uniform(
                    0, min(self.backoff_cap, self.backoff_base * 2 ** min(failures - 1, 30))
                )
                log.warning(
                    "xDS stream to %s:%d failed (%s); retrying in %.2fs",
                    self.host,
                    self.port,
                    self._last_error,
                    delay,
                )
                await trio.sleep(delay)

    # ------------------------------------------------------------ internals
    def _mark_dirty(self, type_url: str, error: str | None) -> None:
        self._dirty[type_url] = error
        self._wake.set()

    def _node(self, envoy: dict[str, Any]) -> Any:
        kwargs: dict[str, Any] = {
            "id": str(self.node.get("id", "")),
            "cluster": str(self.node.get("cluster", "")),
        }
        metadata = self.node.get("metadata")
        if metadata:
            try:
                kwargs["metadata"] = envoy["Struct"].from_dict(metadata)
            except Exception as exc:  # not JSON-like: the node is still useful without it
                log.warning("xDS node metadata not sent: %s", exc)
        return envoy["Node"](**kwargs)

    def _request(self, envoy: dict[str, Any], type_url: str, error: str | None, node: Any) -> Any:
        return envoy["DiscoveryRequest"](
            node=node,
            type_url=type_url,
            resource_names=list(self._names.get(type_url, [])),
            version_info=self._version.get(type_url, ""),
            response_nonce=self._nonce.get(type_url, ""),
            error_detail=(
                envoy["Status"](code=INVALID_ARGUMENT, message=error) if error is not None else None
            ),
        )

    async def _session(self, envoy: dict[str, Any], delivered: list[bool]) -> None:
        async with open_ads_stream(self.host, self.port, self.ssl_context) as stream:
            self._connected = True
            self.changed.unpark_all()
            # Nonces belong to a stream; versions survive it.
            self._nonce.clear()
            self._dirty = dict.fromkeys(self._names)
            self._wake.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, envoy, stream)
                nursery.start_soon(self._receive_loop, stream, delivered)

    async def _send_loop(self, envoy: dict[str, Any], stream: Any) -> None:
        node = self._node(envoy)
        while True:
            while not self._dirty:
                self._wake = trio.Event()
                await self._wake.wait()
            type_url = next(iter(self._dirty))
            error = self._dirty.pop(type_url)
            request = self._request(envoy, type_url, error, node)
            node = None  # only the first request of a stream carries the node
            await stream.send(request)

    async def _receive_loop(self, stream: Any, delivered: list[bool]) -> None:
        while (response := await stream.receive()) is not None:
            delivered[0] = True
            type_url = response.type_url
            self._nonce[type_url] = response.nonce
            error = await self._handle(response)
            if error is None:
                self._version[type_url] = response.version_info
            else:
                log.warning(
                    "xDS NACK %s version %s: %s",
                    SHORT_NAMES.get(type_url, type_url),
                    response.version_info,
                    error,
                )
            self._type_error[type_url] = error
            self._mark_dirty(type_url, error)
            self.changed.unpark_all()
        raise _StreamEnded("server closed the stream")

    async def _handle(self, response: Any) -> str | None:
        type_url = response.type_url
        try:
            resources = []
            for any_ in response.resources:
                if any_.type_url != type_url:
                    return f"resource of type {any_.type_url} in a {type_url} response"
                resources.append(any_.unpack())
        except Exception as exc:  # unregistered type or bad bytes: NACK, handler not called
            return f"cannot decode resource: {exc}"
        try:
            return await self._handler(type_url, response.version_info, resources)
        except Exception as exc:
            # A handler bug must not kill the stream; it rejects this version.
            log.exception("xDS handler failed for %s", SHORT_NAMES.get(type_url, type_url))
            return f"handler error: {type(exc).__name__}: {exc}"


__all__ = ["CDS", "EDS", "LDS", "RDS", "AdsClient", "Handler"]
