"""The `payload_limit` stream filter: request bodies over ``max_entity_size`` are refused.

A declared length (Content-Length) over the limit is refused in the request-headers hook,
before the proxy has contacted any upstream. A body without one (chunked, HTTP/2 without
content-length, an RPC frame's payload) is counted as it passes and refused once the count
goes over the limit: the proxy then answers downstream itself and closes (HTTP/1) or resets
(HTTP/2) the upstream side, whose request therefore never completes.
"""

from __future__ import annotations

from typing import Any

from ..config.stream_filters.payload_limit import PayloadLimitConfig
from .stream import (
    FactoryResult,
    Headers,
    LocalReply,
    RequestContext,
    StreamFilter,
    register_stream_filter,
)

#: gRPC's RESOURCE_EXHAUSTED, what gRPC itself answers for a message over its limit.
GRPC_RESOURCE_EXHAUSTED = 8
BODY = "request entity too large\n"


class PayloadLimit(StreamFilter):
    __slots__ = ("limit", "seen")

    def __init__(self, config: PayloadLimitConfig, context: RequestContext) -> None:
        super().__init__(config, context)
        self.limit = config.max_entity_size
        self.seen = 0

    @classmethod
    def factory(cls, config: PayloadLimitConfig, build: Any) -> FactoryResult:
        if config.max_entity_size == 0:  # MOSN's "no limit"
            return None
        return lambda context: cls(config, context)

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        if end_stream:
            return None
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limit:
            return self._refuse()
        return None

    async def on_request_data(self, data: bytes, last: bool) -> LocalReply | None:
        self.seen += len(data)
        if self.seen > self.limit:
            return self._refuse()
        return None

    def _refuse(self) -> LocalReply:
        return LocalReply(
            self.config.http_status,
            BODY,
            grpc_status=GRPC_RESOURCE_EXHAUSTED,
            grpc_message="request entity too large",
            rpc_error="CODEC_ERROR",
        )


register_stream_filter("payload_limit", PayloadLimit, PayloadLimitConfig)
