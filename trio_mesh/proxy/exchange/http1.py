"""The HTTP/1 upstream: one request at a time on a pooled connection."""

from __future__ import annotations

from ...network.connect import ConnectError
from ...pool import H1Connection, H1Pool, PoolOverflow
from ...upstream import CircuitOpenError
from ..replies import CONNECT_FAILURE, OVERFLOW
from . import UpstreamFailed


async def acquire(pool: H1Pool, fresh: bool = False) -> tuple[H1Connection, bool]:
    """A connection for one request, and whether it was reused from the idle ones
    (``fresh``: a new one). Callers try ``pool.take_idle()`` first: the common case, without
    a coroutine. Raises `UpstreamFailed`."""
    try:
        return await pool.acquire(fresh=fresh)
    except ConnectError:
        raise UpstreamFailed(CONNECT_FAILURE) from None
    except (CircuitOpenError, PoolOverflow):
        raise UpstreamFailed(OVERFLOW) from None
