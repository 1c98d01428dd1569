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


# -- added for the RPC filter tests (tests/filters/test_filters_rpc.py) ----------------------------


class RequestTag(StreamFilter):
    """`Tag` on the request only (its response hooks are not overridden)."""

    async def on_request_headers(self, headers, end_stream):
        old = headers.get(self.config.name)
        headers.set(self.config.name, f"{old},{self.config.value}" if old else self.config.value)


@attrs.frozen(kw_only=True)
class RpcReplyConfig:
    status: int = 500
    body: str = ""
    rpc_error: str | None = None
    close: bool = False
    #: which hook answers: "request_headers", "request_data", "response_headers",
    #: "response_data"
    where: str = "request_headers"
    #: answer only requests carrying this header (``None``: every request)
    header: str | None = None


class RpcReply(StreamFilter):
    """Answers with the LocalReply its config describes, from the hook ``where`` names."""

    def _reply(self, where: str):
        if where != self.config.where:
            return None
        if self.config.header is not None and not self.context.metadata.get("t_rpc_reply"):
            return None
        c = self.config
        return LocalReply(c.status, c.body, rpc_error=c.rpc_error, close=c.close)

    async def on_request_headers(self, headers, end_stream):
        if self.config.header is not None and headers.get(self.config.header) is not None:
            self.context.metadata["t_rpc_reply"] = True
        return self._reply("request_headers")

    async def on_request_data(self, data, last):
        return self._reply("request_data")

    async def on_response_headers(self, headers, end_stream):
        return self._reply("response_headers")

    async def on_response_data(self, data, last):
        return self._reply("response_data")


#: What `RpcRecord` filters saw, by their config's ``key``.
RPC_RECORDED: dict[str, list] = {}


@attrs.frozen(kw_only=True)
class RpcRecordConfig:
    key: str = "default"


class RpcRecord(StreamFilter):
    """Appends what each hook saw to ``RPC_RECORDED[key]``: (hook, details) tuples."""

    def _add(self, *item) -> None:
        RPC_RECORDED.setdefault(self.config.key, []).append(item)

    async def on_request_headers(self, headers, end_stream):
        c = self.context
        self._add(
            "request_headers",
            dict(headers),
            end_stream,
            {
                "protocol": c.protocol,
                "method": c.method,
                "path": c.path,
                "cluster": c.cluster,
                "route": c.route is not None,
                "listener": c.listener,
                "is_rpc": c.is_rpc,
                "remote": c.downstream_remote,
                "local": c.downstream_local,
            },
        )

    async def on_request_data(self, data, last):
        self._add("request_data", bytes(data), last)

    async def on_response_headers(self, headers, end_stream):
        self._add(
            "response_headers",
            dict(headers),
            headers.status,
            end_stream,
            self.context.upstream_host,
        )

    async def on_response_data(self, data, last):
        self._add("response_data", bytes(data), last)


register_stream_filter("t_req_tag", RequestTag, TagConfig)
register_stream_filter("t_rpc_reply", RpcReply, RpcReplyConfig)
register_stream_filter("t_rpc_record", RpcRecord, RpcRecordConfig)


# -- added for the mutual-TLS tests (tests/proxy/test_mtls.py) -------------------------------------


@attrs.frozen(kw_only=True)
class SpiffeOnlyConfig:
    spiffe_id: str


class SpiffeOnly(StreamFilter):
    """RBAC-like: refuses (403) a request unless the client's verified certificate carries
    ``spiffe_id`` as a URI SAN (``context.tls``; plaintext: refused)."""

    async def on_request_headers(self, headers, end_stream):
        tls = self.context.tls
        if tls is None or self.config.spiffe_id not in tls.peer_uri_sans:
            return LocalReply(403, "forbidden\n")
        headers.set("x-peer-subject", tls.peer_subject or "")


register_stream_filter("t_spiffe_only", SpiffeOnly, SpiffeOnlyConfig)
