"""The HTTP/2 upstream: a stream on a pooled, multiplexed connection."""

from __future__ import annotations

from ...network.connect import ConnectError
from ...network.h2 import H2Endpoint, Inbox
from ...pool import PoolOverflow
from ...pool.http2 import H2Pool
from ...upstream import CircuitOpenError
from ..replies import CONNECT_FAILURE, OVERFLOW
from . import UpstreamFailed


async def open_stream(pool: H2Pool) -> tuple[H2Endpoint, int, Inbox]:
    """A new upstream stream: its connection, id and inbox (send its headers at once: stream
    ids go out in order). Raises `UpstreamFailed`."""
    try:
        return await pool.open_stream()
    except ConnectError:
        raise UpstreamFailed(CONNECT_FAILURE) from None
    except (CircuitOpenError, PoolOverflow):
        raise UpstreamFailed(OVERFLOW) from None
