"""One ADS stream (StreamAggregatedResources) as a Trio object.

grpclib is asyncio-only, so this module is the one place where the xDS code
crosses into asyncio (through trio-asyncio).  It must be used inside
``trio_asyncio.open_loop()``; callers only see Trio-flavoured ``send`` and
``receive``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from .envoy_import import envoy_import

if TYPE_CHECKING:
    from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse

ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _discovery_types() -> tuple[type[DiscoveryRequest], type[DiscoveryResponse]]:
    # Imported lazily: envoy-data-plane costs ~0.5 s and is only needed when a
    # control plane is configured.
    with envoy_import():
        from envoy_data_plane.envoy.service.discovery.v3 import (
            DiscoveryRequest,
            DiscoveryResponse,
        )
    return DiscoveryRequest, DiscoveryResponse


class AdsStream:
    """Trio-side handle on an open grpclib stream (see :func:`open_ads_stream`)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def send(self, request: Any) -> None:
        """Send one DiscoveryRequest."""
        from trio_asyncio import aio_as_trio

        await aio_as_trio(self._stream.send_message)(request)

    async def receive(self) -> Any | None:
        """The next DiscoveryResponse, or None once the server ended the stream."""
        from trio_asyncio import aio_as_trio

        return await aio_as_trio(self._stream.recv_message)()


@asynccontextmanager
async def open_ads_stream(
    host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[AdsStream]:
    """Open a new channel and one ADS stream on it; both are closed on exit.

    Must run inside ``trio_asyncio.open_loop()``: grpclib's Channel picks up
    the running loop in its constructor.  Connection errors (for example
    ConnectionRefusedError) surface from the ``async with`` itself.
    An ``ssl_context`` must offer ALPN "h2" (``set_alpn_protocols(["h2"])``).
    """
    from grpclib.client import Channel
    from grpclib.const import Cardinality
    from trio_asyncio import aio_as_trio

    request_cls, response_cls = _discovery_types()
    # A fresh channel per stream: a reused channel could hold a dead h2 connection.
    channel = Channel(host, port, ssl=ssl_context)
    try:
        cm = channel.request(ADS_PATH, Cardinality.STREAM_STREAM, request_cls, response_cls)
        stream = await aio_as_trio(cm.__aenter__)()
        try:
            await aio_as_trio(stream.send_request)()
            yield AdsStream(stream)
        except BaseException as exc:
            # Shielded: in a cancelled scope trio-asyncio would cancel the
            # __aexit__ future before grpclib resets the stream, leaking it.
            with trio.CancelScope(shield=True):
                await aio_as_trio(cm.__aexit__)(type(exc), exc, exc.__traceback__)
            raise
        else:
            with trio.CancelScope(shield=True):
                await aio_as_trio(cm.__aexit__)(None, None, None)
    finally:
        channel.close()
