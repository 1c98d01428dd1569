"""A ZooKeeper session (kazoo) bridged into Trio.

kazoo runs its connection and callbacks on its own threads. Nothing here blocks the event
loop: requests go through kazoo's ``*_async`` methods, whose results (and kazoo's state
changes and watch events) come back to the Trio thread through ``TrioToken.run_sync_soon``;
every call is bounded by a cancel scope. Only ``stop``/``close`` block, so they run in a
worker thread.

The session remembers what it must restore: its ephemeral nodes (created again when a new
session replaces an expired one) and its watched paths (re-read, which re-arms kazoo's
one-shot watch, after any reconnection, since changes may have been missed meanwhile).
Disconnected for longer than the session timeout, it gives the session up for a new one, as
Curator does (a ZooKeeper restarted without its data would refuse the old one forever).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .backend import ChildrenListener, RegistryUnavailable, Session, SessionKey

if TYPE_CHECKING:  # kazoo is imported when a ZooKeeper session starts, not before
    from kazoo.client import KazooClient
    from kazoo.interfaces import IAsyncResult

log_default = logging.getLogger("trio_mesh.registry.zookeeper")

#: Bound on stopping the kazoo client (its threads join; the session is closed on the server).
CLOSE_TIMEOUT = 15.0
#: Pause before retrying a failed restore (the next reconnection also retries at once).
RESTORE_RETRY = 1.0


class _RedactAuth(logging.Filter):
    """kazoo logs every request it sends at DEBUG, its digest ``Auth`` ("user:password")
    among them: with ``--log-level DEBUG`` the password would be in the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        from kazoo.protocol.serialization import Auth

        if isinstance(record.args, tuple) and any(isinstance(a, Auth) for a in record.args):
            record.args = tuple(
                a._replace(auth="<redacted>") if isinstance(a, Auth) else a for a in record.args
            )
        return True


_REDACT_AUTH = _RedactAuth()


class ZkSession:
    """One ZooKeeper session: ``key = ("zookeeper", "host:port[,host:port...]", user, pass)``."""

    def __init__(
        self,
        key: SessionKey,
        *,
        session_timeout: float,
        log: logging.Logger | None = None,
    ) -> None:
        self.key = key
        _, self.addr, self.username, self.password = key
        self.session_timeout = session_timeout
        self.log = log or log_default
        self._client: KazooClient | None = None
        self._acl: list[Any] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._connected = False
        self._connected_event = trio.Event()
        # After LOST (an expired session), the next CONNECTED is a new session: restore all.
        self._session_lost = False
        self._restore_pending = False
        self._ephemerals: set[str] = set()
        # Paths of failed creates, to delete should the create have succeeded after all.
        self._orphans: set[str] = set()
        self._watches: dict[str, ChildrenListener] = {}
        # Paths whose watch fired (or whose children must be re-read): bounded by _watches.
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._closing = False
        self._closed = trio.Event()
        self._client_closed = False
        self._close_lock = trio.Lock()
        self._auth_failed = False
        #: When a connected session lost its connection (None while connected, or before the
        #: first connection): past ``session_timeout`` the session is given up (_renew_session).
        self._disconnected_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._connected

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start kazoo (it connects, and reconnects forever, in the background) and own the
        session until ``aclose`` or cancellation; the client is closed either way."""
        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry
        from kazoo.security import CREATOR_ALL_ACL

        self._token = trio.lowlevel.current_trio_token()
        auth = [("digest", f"{self.username}:{self.password}")] if self.username else None
        self._acl = list(CREATOR_ALL_ACL) if self.username else None
        # Connection attempts forever, with backoff (capped: a restarted ZooKeeper is found
        # again soon); commands are not retried by kazoo: each call here has its own bound.
        kazoo_log = self.log.getChild("kazoo")
        kazoo_log.addFilter(_REDACT_AUTH)  # once: addFilter skips a filter already there
        retry = KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=2.0)
        client = KazooClient(
            hosts=self.addr,
            timeout=self.session_timeout,
            auth_data=auth,
            default_acl=self._acl,
            connection_retry=retry,
            logger=kazoo_log,  # its reconnection chatter, filterable
        )
        self._client = client
        client.add_listener(self._on_state_kazoo)
        try:
            if not self._closing:
                client.start_async()
            task_status.started()
            await self._supervise()
        finally:
            with trio.CancelScope(shield=True):
                await self._close_client()

    async def aclose(self) -> None:
        self._closing = True
        await self._close_client()
        self._closed.set()
        self._wake.set()

    async def _close_client(self) -> None:
        async with self._close_lock:
            client = self._client
            if client is None or self._client_closed:
                return
            self._client_closed = True
            self._connected = False

            def close() -> None:
                client.stop()  # the session ends on the server: our ephemerals vanish
                client.close()

            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                await trio.to_thread.run_sync(close, abandon_on_cancel=True)
            if scope.cancelled_caught:
                self.log.warning("zookeeper %s: the client did not stop in time", self.addr)

    # ------------------------------------------------------------------ kazoo threads → Trio

    def _to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        """From a kazoo thread: run ``fn(*args)`` on the Trio thread (dropped once Trio ended)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def _on_state_kazoo(self, state: str) -> None:
        # LOST for an expired session or refused credentials: kazoo's finer state tells which
        # (after AUTH_FAILED it does not reconnect: calls then fail at once, not at timeout)
        client = self._client
        if state == "LOST" and client is not None and client.client_state == "AUTH_FAILED":
            state = "AUTH_FAILED"
        self._to_trio(self._on_state, state)

    def _on_watch_kazoo(self, event: Any) -> None:
        self._to_trio(self._mark_dirty, event.path)

    async def _result(self, async_result: IAsyncResult) -> Any:
        """Wait (without blocking) for a kazoo request's result; raises what it raised."""
        done = trio.Event()
        async_result.rawlink(lambda _: self._to_trio(done.set))
        await done.wait()
        return async_result.get_nowait()

    # ------------------------------------------------------------------ on the Trio thread

    def _on_state(self, state: str) -> None:
        if self._client_closed:
            return
        if state == "CONNECTED":
            self._connected = True
            self._disconnected_at = None
            self._connected_event.set()
            if self._session_lost:
                self.log.info("zookeeper %s: new session (the previous one expired)", self.addr)
                self._restore_pending = True
            else:
                self.log.info("zookeeper %s: connected", self.addr)
            self._session_lost = False
            # same session or not, changes to watched paths may have been missed
            self._dirty.update(self._watches)
            self._wake.set()
        else:
            if self._connected:
                self._disconnected_at = trio.current_time()
                self._wake.set()  # the supervisor times the outage from now
            self._connected = False
            if self._connected_event.is_set():
                self._connected_event = trio.Event()
            if state in ("LOST", "AUTH_FAILED"):
                self._session_lost = True
            self._auth_failed = state == "AUTH_FAILED"
            if self._auth_failed:
                self._connected_event.set()  # the waiting calls fail now, not at their timeout
            self.log.warning("zookeeper %s: connection %s", self.addr, state.lower())

    def _mark_dirty(self, path: str | None) -> None:
        if path is not None and path in self._watches:
            self._dirty.add(path)
            self._wake.set()

    async def _supervise(self) -> None:
        """Restore ephemerals after a new session; re-read dirty watches (coalesced)."""
        while not self._closed.is_set():
            await self._wait_wake()
            self._wake = trio.Event()
            if not self._connected or self._closed.is_set():
                continue  # nothing to tell listeners during an outage
            if self._restore_pending:
                if await self._restore_ephemerals():
                    self._restore_pending = False
                else:
                    await self._retry_later()
                    continue
            orphans_left = bool(self._orphans) and not await self._delete_orphans()
            dirty, self._dirty = self._dirty, set()
            for path in dirty:
                if not await self._reread(path):
                    self._dirty.add(path)
            if self._dirty or orphans_left:
                await self._retry_later()

    async def _wait_wake(self) -> None:
        """Until woken; or, disconnected for longer than the session timeout, until the
        session has been given up for a new one."""
        since = self._disconnected_at
        if since is None or self._auth_failed:
            await self._wake.wait()
            return
        with trio.move_on_at(since + self.session_timeout):
            await self._wake.wait()
            return
        await self._renew_session()

    async def _renew_session(self) -> None:
        """Give the session up and start a new one (Curator's client-side expiry, which Java
        Dubbo has). kazoo alone would try to resume the old session forever, and a ZooKeeper
        that lost its data (restarted empty) refuses that for good: the client has seen a
        later zxid than the server has. The session is expired on the server by now anyway
        (or soon will be); the new one restores the ephemerals and re-reads the watches."""
        async with self._close_lock:
            client = self._client
            if client is None or self._client_closed or self._connected:
                return
            self._disconnected_at = trio.current_time()  # again then, if still unreachable
            self.log.warning(
                "zookeeper %s: no connection for %gs (the session timeout): a new session",
                self.addr,
                self.session_timeout,
            )

            def restart() -> None:
                client.stop()  # LOST: the next CONNECTED restores everything
                client.start_async()

            await trio.to_thread.run_sync(restart)

    async def _retry_later(self) -> None:
        with trio.move_on_after(RESTORE_RETRY):
            await self._closed.wait()
        self._wake.set()

    async def _restore_ephemerals(self) -> bool:
        ok = True
        for path in sorted(self._ephemerals):
            if path not in self._ephemerals:
                continue  # deleted meanwhile
            try:
                await self._create(path, timeout=self.session_timeout, what="re-creating")
            except RegistryUnavailable as exc:
                self.log.warning("%s", exc)
                ok = False
            else:
                if path not in self._ephemerals:  # deleted while we re-created it
                    self._orphans.add(path)
        return ok

    async def _delete_orphans(self) -> bool:
        """Delete the nodes a failed (timed out, cancelled) create may have made after all:
        an API error must leave nothing registered. Each delete is sent once (a resend after
        a reconnection could overtake a later create of the same path); ZooKeeper applies a
        session's requests in order, so it follows the create it cleans up after."""
        from kazoo.exceptions import ConnectionLoss, NoNodeError, SessionExpiredError

        for path in list(self._orphans):
            if path in self._ephemerals or self._client is None:
                self._orphans.discard(path)
                continue
            with trio.move_on_after(self.session_timeout):
                try:
                    await self._result(self._client.delete_async(path))
                except (ConnectionLoss, SessionExpiredError):
                    return False  # again once connected
                except NoNodeError:
                    pass
                except Exception as exc:  # not allowed, say: then the create was not either
                    self.log.warning(
                        "zookeeper %s: deleting %s (a failed create): %r", self.addr, path, exc
                    )
                self._orphans.discard(path)
                continue
            return False
        return True

    async def _reread(self, path: str) -> bool:
        listener = self._watches.get(path)
        if listener is None:
            return True
        try:
            children = await self._read_children(path, timeout=self.session_timeout)
        except RegistryUnavailable as exc:
            self.log.warning("%s", exc)
            return False
        if self._watches.get(path) is listener and self._connected:
            try:
                listener(children)
            except Exception:
                self.log.exception("zookeeper %s: the listener of %s failed", self.addr, path)
        return True

    # ------------------------------------------------------------------ requests

    async def _call(
        self,
        what: str,
        path: str,
        timeout: float,
        request: Callable[[KazooClient], IAsyncResult],
        *,
        deadline: float | None = None,
    ) -> Any:
        """One request, sent once connected and again after a connection loss, until
        ``deadline`` (default: ``timeout`` from now; ``timeout`` is the caller's whole bound,
        for the message); errors become RegistryUnavailable naming the address and the
        request."""
        from kazoo.exceptions import (
            AuthFailedError,
            ConnectionClosedError,
            ConnectionLoss,
            KazooException,
            NoAuthError,
            NodeExistsError,
            NoNodeError,
            SessionExpiredError,
        )

        if self._closing or self._client_closed:
            raise RegistryUnavailable(f"zookeeper {self.addr}: {what} {path}: session closed")
        if self._client is None:
            raise RegistryUnavailable(f"zookeeper {self.addr}: {what} {path}: not started")
        client = self._client
        auth_failed = RegistryUnavailable(
            f"zookeeper {self.addr}: {what} {path}: authentication failed"
        )
        waited_for = "a connection"
        if deadline is None:
            deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline):
            while True:
                if self._auth_failed:
                    raise auth_failed
                await self._connected_event.wait()
                if self._auth_failed:
                    raise auth_failed
                waited_for = "an answer"
                try:
                    return await self._result(request(client))
                except (ConnectionLoss, SessionExpiredError):
                    waited_for = "a connection"
                    # kazoo tells the state change (on its way to us) too: wait for it
                    if self._connected_event.is_set():
                        await trio.sleep(0.05)
                    continue
                except ConnectionClosedError:
                    raise RegistryUnavailable(
                        f"zookeeper {self.addr}: {what} {path}: session closed"
                    ) from None
                except (AuthFailedError, NoAuthError):
                    raise RegistryUnavailable(
                        f"zookeeper {self.addr}: {what} {path}: authentication failed"
                        " (not authorized)"
                    ) from None
                except (NoNodeError, NodeExistsError):
                    raise  # the callers' business
                except KazooException as exc:
                    raise RegistryUnavailable(
                        f"zookeeper {self.addr}: {what} {path}: failed ({type(exc).__name__})"
                    ) from exc
        raise RegistryUnavailable(
            f"zookeeper {self.addr}: {what} {path}: timed out after {timeout:g}s"
            f" waiting for {waited_for}"
        )

    async def _create(self, path: str, *, timeout: float, what: str = "creating") -> None:
        from kazoo.exceptions import NodeExistsError, NoNodeError

        acl = self._acl

        def create(client: KazooClient) -> IAsyncResult:
            return client.create_async(path, b"", acl=acl, ephemeral=True, makepath=True)

        def delete(client: KazooClient) -> IAsyncResult:
            return client.delete_async(path)

        deadline = trio.current_time() + timeout
        while True:
            try:
                await self._call(what, path, timeout, create, deadline=deadline)
                return
            except NodeExistsError:
                # an earlier session's node (ours, or another sidecar's): Dubbo deletes it
                try:
                    await self._call("deleting", path, timeout, delete, deadline=deadline)
                except NoNodeError:
                    pass

    async def create_ephemeral(self, path: str, *, timeout: float) -> None:
        try:
            await self._create(path, timeout=timeout)
        except BaseException:
            # the request may be on its way and succeed: cleaned up in the background
            if path not in self._ephemerals:
                self._orphans.add(path)
                self._wake.set()
            raise
        self._ephemerals.add(path)
        self._orphans.discard(path)

    async def delete_ephemeral(self, path: str, *, timeout: float) -> None:
        from kazoo.exceptions import NoNodeError

        self._ephemerals.discard(path)
        try:
            await self._call("deleting", path, timeout, lambda c: c.delete_async(path))
        except NoNodeError:
            pass

    async def ensure_path(self, path: str, *, timeout: float) -> None:
        acl = self._acl
        await self._call("creating", path, timeout, lambda c: c.ensure_path_async(path, acl))

    async def _read_children(
        self, path: str, *, timeout: float, deadline: float | None = None
    ) -> tuple[str, ...]:
        from kazoo.exceptions import NoNodeError

        if deadline is None:
            deadline = trio.current_time() + timeout
        acl = self._acl
        while True:
            try:
                children = await self._call(
                    "reading",
                    path,
                    timeout,
                    lambda c: c.get_children_async(path, watch=self._on_watch_kazoo),
                    deadline=deadline,
                )
                return tuple(sorted(children))
            except NoNodeError:  # deleted by someone: created again, then read
                await self._call(
                    "creating",
                    path,
                    timeout,
                    lambda c: c.ensure_path_async(path, acl),
                    deadline=deadline,
                )

    async def watch_children(
        self, path: str, on_change: ChildrenListener, *, timeout: float
    ) -> tuple[str, ...]:
        # Registered before the read: a change during it is then re-read, not missed.
        self._watches[path] = on_change
        try:
            deadline = trio.current_time() + timeout
            acl = self._acl
            await self._call(
                "creating",
                path,
                timeout,
                lambda c: c.ensure_path_async(path, acl),
                deadline=deadline,
            )
            return await self._read_children(path, timeout=timeout, deadline=deadline)
        except BaseException:
            if self._watches.get(path) is on_change:
                del self._watches[path]
                self._dirty.discard(path)
            raise

    def unwatch(self, path: str) -> None:
        self._watches.pop(path, None)
        self._dirty.discard(path)


if TYPE_CHECKING:

    def _is_a_session(session: ZkSession) -> Session:
        return session  # mypy checks ZkSession against the protocol here
