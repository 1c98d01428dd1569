"""Two filters a third party ships: trio-mesh loads them through entry points only."""

from __future__ import annotations

import attrs

from trio_mesh.filters import ConnectionFilter, LocalReply, StreamFilter


@attrs.frozen(kw_only=True)
class StampConfig:
    #: Header added to the request and to the response.
    header: str = "x-demo-stamp"
    value: str = "stamped"
    #: Requests carrying this header are refused with 451.
    refuse_header: str = "x-demo-refuse"


class Stamp(StreamFilter):
    """Stamps requests and responses; refuses requests that ask for it."""

    config_class = StampConfig

    async def on_request_headers(self, headers, end_stream):
        if self.config.refuse_header in headers:
            return LocalReply(451, "refused by demo_stamp\n")
        headers.set(self.config.header, self.config.value)
        return None

    async def on_response_headers(self, headers, end_stream):
        headers.set(self.config.header, f"{self.config.value}; via {self.context.protocol}")
        return None


class _Counter(ConnectionFilter):
    def __init__(self, totals: dict) -> None:
        self.totals = totals

    async def on_read(self, data: bytes) -> bytes:
        self.totals["read"] += len(data)
        return data

    async def on_write(self, data: bytes) -> bytes:
        self.totals["written"] += len(data)
        return data


class ByteCount:
    """A network filter counting the bytes of every connection of its listener."""

    config_class = None
    #: Every built instance, so that a test can read the counts.
    instances: list[ByteCount] = []

    def __init__(self, config: None, build: object) -> None:
        self.totals = {"connections": 0, "read": 0, "written": 0}
        ByteCount.instances.append(self)

    def accept(self, conn) -> _Counter:
        self.totals["connections"] += 1
        return _Counter(self.totals)
