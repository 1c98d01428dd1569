"""Upstream exchanges: one module per upstream protocol, behind one small interface.

``http1.exchange``, ``http2.exchange`` and ``rpc.exchange`` are one try each
(``lifecycle.Exchange``): given the prepared upstream request, the request body and the
downstream's response sink, they send the request over a pooled connection (HTTP/1), a stream
on one (HTTP/2) or a multiplexed RPC connection, and relay the response into the sink (RPC: one
whole frame). What can go wrong before a response began is mapped to the local reply that
answers it, raised as :class:`UpstreamFailed`; whether that try is retried is the lifecycle's
call (``RetryState``, ``proxy/retry.py``, from ``reply.cause``), not the exchange's.
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
