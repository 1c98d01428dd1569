"""Test-only stream filters, registered under ``t_*`` names, used by the filter tests."""

from __future__ import annotations

import attrs

from trio_mesh.filters.stream import LocalReply, StreamFilter, register_stream_filter


@attrs.frozen(kw_only=True)
class TagConfig:
    name: str = "x-tag"
    value: str = "t"


class Tag(StreamFilter):
    """Appends its value to ``name`` on the request and on the response (ordering tests)."""

    async def on_request_headers(self, headers, end_stream):
        old = headers.get(self.config.name)
        headers.set(self.config.name, f"{old},{self.config.value}" if old else self.config.value)
        self.context.metadata.setdefault("order", []).append(self.config.value)

    async def on_response_headers(self, headers, end_stream):
        old = headers.get(self.config.name)
        headers.set(self.config.name, f"{old},{self.config.value}" if old else self.config.value)


@attrs.frozen(kw_only=True)
class BoomConfig:
    where: str = "request_headers"


class Boom(StreamFilter):
    """Raises in the hook ``where`` names."""

    async def on_request_headers(self, headers, end_stream):
        if self.config.where == "request_headers":
            raise RuntimeError("boom")

    async def on_response_headers(self, headers, end_stream):
        if self.config.where == "response_headers":
            raise RuntimeError("boom")

    async def on_response_data(self, data, last):
        if self.config.where == "response_data":
            raise RuntimeError("boom")


@attrs.frozen(kw_only=True)
class DenyConfig:
    status: int = 418
    body: str = "denied by t_deny\n"
    header: str | None = None


class Deny(StreamFilter):
    """Answers itself (only when ``header`` is on the request, if set)."""

    async def on_request_headers(self, headers, end_stream):
        if self.config.header is None or headers.get(self.config.header) is not None:
            return LocalReply(self.config.status, self.config.body, headers=[("x-denied", "1")])


class Upper(StreamFilter):
    """Upper-cases bodies both ways, and takes Content-Length off (the length may change)."""

    async def on_request_headers(self, headers, end_stream):
        headers.remove("content-length")

    async def on_request_data(self, data, last):
        return data.upper()

    async def on_response_headers(self, headers, end_stream):
        headers.remove("content-length")

    async def on_response_data(self, data, last):
        return data.upper() + (b"!" if last else b"")


register_stream_filter("t_tag", Tag, TagConfig)
register_stream_filter("t_boom", Boom, BoomConfig)
register_stream_filter("t_deny", Deny, DenyConfig)
register_stream_filter("t_upper", Upper, None)
