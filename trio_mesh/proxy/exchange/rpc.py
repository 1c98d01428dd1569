"""The RPC upstream (bolt, Dubbo, any registered codec): a request and its response over the
host's multiplexed pool, ids rewritten by the pool."""

from __future__ import annotations

import math

from ...network.connect import ConnectError
from ...pool.xprotocol import UpstreamLost, XPool
from ...protocols.xprotocol import Frame
from ...upstream import CircuitOpenError
from ..replies import CONNECT_FAILURE, OVERFLOW, TIMEOUT, UPSTREAM_RESET
from . import UpstreamFailed


async def call(pool: XPool, frame: Frame, timeout: float = math.inf) -> Frame | None:
    """Send ``frame`` and return its response (``None`` for a oneway request, which is only
    sent), all within ``timeout`` seconds (the pool's connection times it: no cancel scope
    per call). Raises `UpstreamFailed` (``TIMEOUT`` when the timeout elapsed first)."""
    try:
        if frame.is_oneway:
            if await pool.send_oneway(frame, timeout):
                return None
        else:
            response = await pool.call(frame, timeout)
            if response is not None:
                return response
    except ConnectError:
        raise UpstreamFailed(CONNECT_FAILURE) from None
    except CircuitOpenError:
        raise UpstreamFailed(OVERFLOW) from None
    except UpstreamLost:
        raise UpstreamFailed(UPSTREAM_RESET) from None
    raise UpstreamFailed(TIMEOUT)
