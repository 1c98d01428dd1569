"""A proxy in a thread of its own (its own ``trio.run``), for tests that are not Trio code.

The test's thread talks to it only through ``trio.from_thread`` with the loop's token, so
nothing of the server is touched from two threads at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .handle import ConfigLike, MeshHandle, as_config, start_mesh

if TYPE_CHECKING:
    from ..config import MeshConfig
    from ..server import Server

T = TypeVar("T")

#: The name of every such thread (tests look for leftovers by it).
THREAD_NAME = "trio-mesh-in-thread"


class _Started:
    """What the thread hands back once: the handle and how to reach its loop, or why it
    could not start."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.handle: MeshHandle | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.scope: trio.CancelScope | None = None
        self.error: BaseException | None = None
        #: Set by ``mesh_in_thread`` when it gave up waiting: a proxy starting after that
        #: stops at once (nobody would stop it, and it would hold its ports).
        self.abandoned = False
        self.lock = threading.Lock()


class ThreadedMesh:
    """A running proxy in its thread (``mesh_in_thread``); every method is called from the
    test's thread. ``stop()`` (the fixture calls it) closes every socket and ends the
    thread; an error the proxy raised while running is raised there."""

    def __init__(self, thread: threading.Thread, started: _Started) -> None:
        assert started.handle is not None and started.token is not None
        self._thread = thread
        self._started = started
        self._handle = started.handle
        self._token = started.token
        self._stopped = False

    def _call(self, fn: Callable[[], T]) -> T:
        if self._stopped:
            raise RuntimeError("the proxy was stopped")
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    @property
    def server(self) -> Server:
        """The ``trio_mesh.Server``: read it in its own thread (``call``), not this one."""
        return self._handle.server

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        return self._call(lambda: dict(self._handle.addresses))

    def address(self, name: str) -> tuple[str, int]:
        return self._call(lambda: self._handle.address(name))

    def url(self, name: str, path: str = "/", *, scheme: str = "http") -> str:
        return self._call(lambda: self._handle.url(name, path, scheme=scheme))

    def apply(self, config: ConfigLike, *, drain_timeout: float = 30.0) -> None:
        """``MeshHandle.apply``, waited for; ``ConfigError`` is raised before the proxy's
        thread is involved."""
        cfg: MeshConfig = as_config(config)
        if self._stopped:
            raise RuntimeError("the proxy was stopped")
        trio.from_thread.run(
            lambda: self._handle.apply(cfg, drain_timeout=drain_timeout), trio_token=self._token
        )

    def stats(self, filter: str | None = None) -> dict[str, Any]:
        """``MeshHandle.stats``, read in the proxy's thread."""
        if self._stopped:
            raise RuntimeError("the proxy was stopped")
        return trio.from_thread.run(lambda: self._handle.stats(filter), trio_token=self._token)

    def call(self, fn: Callable[[MeshHandle], T]) -> T:
        """``fn(handle)`` run in the proxy's thread (synchronous ``fn``): to read the server
        without racing it."""
        return self._call(lambda: fn(self._handle))

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel the proxy (every socket closes) and join its thread; idempotent. Raises
        what the proxy failed with while running, or ``TimeoutError`` if the thread did
        not end within ``timeout`` seconds."""
        if not self._stopped:
            self._stopped = True
            scope = self._started.scope
            assert scope is not None
            try:
                trio.from_thread.run_sync(scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass  # it ended by itself (an error, kept in _started.error)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the proxy's thread did not end within {timeout} s")
        error, self._started.error = self._started.error, None
        if error is not None:
            raise error


async def _serve(config: MeshConfig, started: _Started, reuse_port: bool) -> None:
    async with trio.open_nursery() as nursery:
        handle = await start_mesh(nursery, config, reuse_port=reuse_port)
        with started.lock:
            if started.abandoned:
                nursery.cancel_scope.cancel()
                return
            started.handle = handle
            started.token = trio.lowlevel.current_trio_token()
            started.scope = nursery.cancel_scope
        started.event.set()


def _main(config: MeshConfig, started: _Started, reuse_port: bool) -> None:
    try:
        trio.run(_serve, config, started, reuse_port)
    except BaseException as exc:
        # Raised in the test's thread: by mesh_in_thread (start-up) or stop (later).
        started.error = _single(exc)
    finally:
        started.event.set()


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def mesh_in_thread(
    config: ConfigLike, *, reuse_port: bool = False, start_timeout: float = 60.0
) -> ThreadedMesh:
    """Start a proxy in a new thread and return once every listener serves. Raises
    ``ConfigError`` (before any thread starts) or ``StartupError`` (the thread has ended,
    nothing stays bound) here."""
    cfg = as_config(config)
    started = _Started()
    thread = threading.Thread(
        target=_main, args=(cfg, started, reuse_port), name=THREAD_NAME, daemon=True
    )
    thread.start()
    if not started.event.wait(start_timeout):
        with started.lock:
            started.abandoned = started.handle is None
        if started.abandoned:
            raise TimeoutError(f"the proxy did not start within {start_timeout} s")
    if started.handle is None or started.token is None:
        thread.join()
        error = started.error
        assert error is not None
        raise error
    return ThreadedMesh(thread, started)


__all__ = ["THREAD_NAME", "ThreadedMesh", "mesh_in_thread"]
