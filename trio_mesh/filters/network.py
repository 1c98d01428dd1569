"""Non-terminal network filters: per-connection read/write hooks in front of the terminal one.

A listener's chain is ``[filter, ..., terminal]``. Each non-terminal filter, built once per
configuration, is asked ``accept(conn)`` for every new connection: it returns a
`ConnectionFilter` (its hooks for that connection), ``None`` (nothing to do for it), or raises
`RejectConnection` to close the connection before the terminal filter sees a byte. When any
connection filter has read or write hooks, the terminal filter gets the connection's stream
wrapped so that bytes pass through them: reads in chain order, writes in reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..network.connection import Connection

log = logging.getLogger("trio_mesh.filters")


class RejectConnection(Exception):
    """Raised by ``accept``: close this connection now (``reason`` is logged)."""


class ConnectionFilter:
    """One connection's read/write hooks; each returns the bytes to pass on."""

    async def on_read(self, data: bytes) -> bytes:
        return data

    async def on_write(self, data: bytes) -> bytes:
        return data


def _overrides(f: ConnectionFilter, name: str) -> bool:
    return getattr(type(f), name) is not getattr(ConnectionFilter, name)


class FilteredStream:
    """The connection's stream as the terminal filter sees it through the read/write hooks.
    Everything else (``socket``, ``close``, ``abort``...) is the stream's own."""

    def __init__(
        self, stream: Any, readers: Sequence[ConnectionFilter], writers: Sequence[ConnectionFilter]
    ) -> None:
        self._stream = stream
        self._readers = tuple(readers)
        self._writers = tuple(reversed(writers))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def _read(self, data: bytes) -> bytes:
        for f in self._readers:
            if not data:
                break
            data = await f.on_read(data)
        return data

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        while True:
            data = await self._stream.receive_some(max_bytes)
            if not data:
                return data
            out = await self._read(data)
            if out:  # a filter that held everything back: read on, never a false EOF
                return out

    async def receive_after_wait(self, max_bytes: int = 65536) -> bytes:
        data = await self._stream.receive_after_wait(max_bytes)
        if not data:
            return data
        out = await self._read(data)
        return out if out else await self.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        out = bytes(data)
        for f in self._writers:
            out = await f.on_write(out)
        if out:
            await self._stream.send_all(out)


def compose(
    filters: Sequence[tuple[str, Any]], terminal: Callable[[Connection], Awaitable[None]]
) -> Callable[[Connection], Awaitable[None]]:
    """The connection handler of a chain: ``filters`` are ``(type name, built filter)`` of
    the non-terminal ones, in config order."""
    if not filters:
        return terminal

    async def handle(conn: Connection) -> None:
        readers: list[ConnectionFilter] = []
        writers: list[ConnectionFilter] = []
        for name, built in filters:
            try:
                f = built.accept(conn)
                if hasattr(f, "__await__"):
                    f = await f
            except RejectConnection as exc:
                log.info("downstream %s: closed by network filter %r: %s", conn.remote, name, exc)
                conn.stream.close()
                return
            except Exception:
                log.exception("network filter %r failed on a new connection", name)
                conn.stream.close()
                return
            if f is None:
                continue
            if _overrides(f, "on_read"):
                readers.append(f)
            if _overrides(f, "on_write"):
                writers.append(f)
        if readers or writers:
            conn.stream = FilteredStream(conn.stream, readers, writers)  # type: ignore[assignment]
        await terminal(conn)

    return handle
