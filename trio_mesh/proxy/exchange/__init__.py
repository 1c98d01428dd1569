"""Upstream exchanges: one module per upstream protocol, behind one small interface.

Each module opens the upstream side of one try (``http1.acquire``: a pooled connection;
``http2.open_stream``: a stream on a pooled connection; ``rpc.exchange``: a whole request and
its response over the multiplexed pool) and maps what can go wrong there to the local reply that
answers it, raised as :class:`UpstreamFailed`. Whether that try is retried is the
``RetryState``'s call (``proxy/retry.py``, from ``reply.cause``), not the exchange's.
"""

from __future__ import annotations

from ..replies import Reply


class UpstreamFailed(Exception):
    """The upstream side of a try failed before anything of a response came; ``reply``
    answers it (``CONNECT_FAILURE``, ``OVERFLOW``, ``TIMEOUT``, ``UPSTREAM_RESET``).
    ``race``: the upstream never processed the request (a reused connection it had closed,
    a stream it refused): it may be sent once more on a fresh connection."""

    def __init__(self, reply: Reply, *, race: bool = False) -> None:
        self.reply = reply
        self.race = race
