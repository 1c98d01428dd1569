"""The RPC upstream (bolt, Dubbo, any registered codec): a request and its response over the
host's multiplexed pool, ids rewritten by the pool."""

from __future__ import annotations

import math

import trio

from ...network.connect import ConnectError
from ...pool.xprotocol import UpstreamLost, XPool
from ...protocols.xprotocol import Frame
from ...upstream import CircuitOpenError
from ..replies import CONNECT_FAILURE, OVERFLOW, TIMEOUT, UPSTREAM_RESET
from . import UpstreamFailed


async def call(pool: XPool, frame: Frame, timeout: float = math.inf) -> Frame | None:
    """Send ``frame`` and return its response (``None`` for a oneway request, which is only
    sent), all within ``timeout`` seconds. Raises `UpstreamFailed` (``TIMEOUT`` when the
    timeout elapsed first)."""
    try:
        with trio.move_on_after(timeout):
            if frame.is_oneway:
                await pool.send_oneway(frame)
                return None
            return await pool.call(frame)
    except ConnectError:
        raise UpstreamFailed(CONNECT_FAILURE) from None
    except CircuitOpenError:
        raise UpstreamFailed(OVERFLOW) from None
    except UpstreamLost:
        raise UpstreamFailed(UPSTREAM_RESET) from None
    raise UpstreamFailed(TIMEOUT)
