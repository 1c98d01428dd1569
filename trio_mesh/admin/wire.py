"""The workers' control link: newline-delimited JSON over a unix socket, every line bounded.

A worker says ``{"hello": slot, "pid": pid}`` once, then answers requests
``{"id": n, "op": name, "args": {...}}`` with ``{"id": n, "result": ...}`` or
``{"id": n, "error": "..."}``. A line over its budget, or one that is not JSON, ends the link.
"""

from __future__ import annotations

import json
from typing import Any

import trio

#: What a worker's answer may take: a metrics snapshot of a large configuration fits.
MAX_ANSWER = 16 * 1024 * 1024
#: What the admin process may send a worker: small requests only.
MAX_REQUEST = 64 * 1024
_CHUNK = 64 * 1024


class WireError(Exception):
    """The peer broke the protocol (a line too long, not JSON, not an object) or left."""


class LineChannel:
    """JSON objects as lines over one stream. ``receive`` buffers at most ``limit`` bytes;
    ``send`` may be called from several tasks (one line at a time)."""

    def __init__(self, stream: trio.abc.Stream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> dict[str, Any]:
        """The next message; ``WireError`` on EOF or a broken line."""
        start = 0
        while (end := self._buffer.find(b"\n", start)) < 0:
            start = len(self._buffer)
            if start > self.limit:
                raise WireError(f"line over {self.limit} bytes")
            data = await self.stream.receive_some(_CHUNK)
            if not data:
                raise WireError("connection closed")
            self._buffer += data
        if end > self.limit:
            raise WireError(f"line over {self.limit} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            message = json.loads(line)
        except ValueError:
            raise WireError("a line that is not JSON") from None
        if not isinstance(message, dict):
            raise WireError("a line that is not a JSON object")
        return message

    async def aclose(self) -> None:
        await self.stream.aclose()
