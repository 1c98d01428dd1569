"""Our OTLP encoder (tracing/otlp.py) against the SDK's: the same spans give the same
``ExportTraceServiceRequest``, field by field; and the exporter's private client that posts
our bytes is still what we rely on (else the SDK path is used, and these tests say why)."""

from __future__ import annotations

import importlib.metadata
import inspect
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.http_helpers import closed_port
from tests.tracing.otlp_receiver import OtlpReceiver
from trio_mesh.config.tracing import TracingSettings
from trio_mesh.tracing import otlp
from trio_mesh.tracing.export import (
    OtlpExporter,
    SpanTuple,
    _otlp_exporter,
    bytes_sender,
    span_converter,
    span_encoder,
)

CONVERT = span_converter(TracingSettings(service_name="svc-ü"))
ENCODER = span_encoder(CONVERT)

ids32 = st.integers(1, 2**128 - 1).map(lambda n: f"{n:032x}")
ids16 = st.integers(1, 2**64 - 1).map(lambda n: f"{n:016x}")
texts = st.one_of(
    st.text(max_size=40),
    st.text(min_size=100, max_size=3000),  # past one-byte lengths and the varint table
    st.sampled_from(["", "GET", "/", "é", "☃", "\U0001f600", "a" * 127, "a" * 128]),
)
optional = st.one_of(st.none(), texts)
peers = st.one_of(
    st.none(),
    st.just(""),
    st.builds(
        lambda a, p: f"{a}:{p}", st.sampled_from(["127.0.0.1", "[::1]", "a"]), st.integers(0, 65535)
    ),
    st.sampled_from(["unix", "host:", "host:x1", ":80"]),
)
spans = st.tuples(
    ids32,
    ids16,
    st.one_of(st.none(), ids16),
    st.floats(0, 4e9, allow_nan=False),  # start (time.time())
    st.one_of(st.none(), st.floats(0, 1e5, allow_nan=False)),  # duration
    texts,  # protocol
    texts,  # method
    texts,  # path (with a query sometimes)
    optional,  # authority
    st.one_of(st.integers(0, 999), st.integers(0, 2**62)),  # status
    texts,  # flags
    optional,  # route
    optional,  # cluster
    optional,  # host
    peers,
    optional,  # rpc service
    optional,  # rpc method
)


def sdk_request(batch: list[SpanTuple]) -> ExportTraceServiceRequest:
    return encode_spans([CONVERT(span) for span in batch])


@settings(max_examples=300, deadline=None)
@given(st.lists(spans, min_size=1, max_size=6))
def test_the_encoding_is_the_sdks(batch: list[SpanTuple]) -> None:
    ours = ENCODER.encode(batch)
    expected = sdk_request(batch)
    decoded = ExportTraceServiceRequest.FromString(ours)
    assert decoded == expected  # every field of every message, repeated fields in order
    assert ours == expected.SerializeToString()  # and even the same bytes
    assert ENCODER.encode(batch) == ours  # from the cache: the same again


def test_every_field_of_a_span_decodes() -> None:
    span = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "b7ad6b7169203331",
            1765000000.5, 0.25, "HTTP/1.1", "POST", "/a/b?q=1", "example.com", 503, "UF,URX",
            "r1", "c1", "10.0.0.1:80", "[::1]:4321", None, None)  # fmt: skip
    (rs,) = ExportTraceServiceRequest.FromString(ENCODER.encode([span])).resource_spans
    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
    assert resource["service.name"] == "svc-ü"
    (ss,) = rs.scope_spans
    assert ss.scope.name == "trio_mesh"
    (s,) = ss.spans
    assert s.trace_id.hex() == span[0] and s.span_id.hex() == span[1]
    assert s.parent_span_id.hex() == span[2]
    assert s.name == "POST r1" and s.kind == 2  # SPAN_KIND_SERVER
    assert s.start_time_unix_nano == 1765000000500000000
    assert s.end_time_unix_nano - s.start_time_unix_nano == 250000000
    assert s.status.code == 2 and s.flags == 0x300  # error; parent remote
    attributes = {a.key: a.value for a in s.attributes}
    assert attributes["url.path"].string_value == "/a/b"
    assert attributes["http.response.status_code"].int_value == 503
    assert attributes["network.peer.address"].string_value == "::1"
    assert attributes["network.peer.port"].int_value == 4321
    assert attributes["response_flags"].string_value == "UF,URX"


def test_a_large_batch_is_the_sdks() -> None:
    batch = [
        (f"{n + 1:032x}", f"{n + 1:016x}", None, 1.0 + n, 0.001, "HTTP/1.1", "GET",
         f"/{n % 7}", "h", 200, "", "r", "c", "u:1", f"127.0.0.1:{n}", None, None)
        for n in range(600)
    ]  # fmt: skip
    ours = ENCODER.encode(batch)
    assert len(ours) > 2**16  # lengths of three varint bytes
    assert ExportTraceServiceRequest.FromString(ours) == sdk_request(batch)


def test_a_lone_surrogate_is_sent_replaced_not_lost() -> None:
    span = ("1" * 32, "2" * 16, None, 1.0, 0.0, "bolt", "", "", None, 200, "", None, None,
            None, None, "svc\ud800", "m\udfff")  # fmt: skip
    (rs,) = ExportTraceServiceRequest.FromString(ENCODER.encode([span])).resource_spans
    (s,) = rs.scope_spans[0].spans
    assert s.name == "svc?/m?"
    assert {a.key: a.value.string_value for a in s.attributes}["rpc.service"] == "svc?"


def test_the_cache_is_bounded() -> None:
    encoder = span_encoder(CONVERT)
    for n in range(3 * otlp.CACHE_ENTRIES):
        path = f"/{n}" + ("x" * 2000 if n % 2 else "")
        span = (f"{n + 1:032x}", f"{n + 1:016x}", None, 1.0, 0.0, "HTTP/1.1", "GET", path,
                "h", 200, "", None, None, None, f"10.0.0.1:{n}", None, None)  # fmt: skip
        assert ExportTraceServiceRequest.FromString(encoder.encode([span])) == sdk_request([span])
        assert len(encoder._cache) <= otlp.CACHE_ENTRIES
    assert all(
        len(v) <= otlp.CACHE_SEGMENT_MAX for v in encoder._cache.values() if isinstance(v, bytes)
    )


def test_varint() -> None:
    for n, wire in [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
                    (2**64 - 1, b"\xff" * 9 + b"\x01")]:  # fmt: skip
        assert otlp.varint(n) == wire


# ------------------------------------------------------------------ the exporter's transport


def _pinned(name: str) -> str:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    for dep in pyproject["project"]["dependencies"]:
        if dep.startswith(name + "=="):
            return str(dep.split("==")[1])
    raise AssertionError(f"{name} is not pinned exactly in pyproject.toml")


def test_the_exporter_version_is_the_pinned_one() -> None:
    # bytes_sender relies on this version's private client: a new version is a new review.
    version = importlib.metadata.version("opentelemetry-exporter-otlp-proto-http")
    assert version == _pinned("opentelemetry-exporter-otlp-proto-http")


def test_the_private_client_we_post_through_is_there() -> None:
    """If this fails, the SDK changed: spans still go (through its slower public path, with
    a warning at start), but tracing costs several times more CPU. Update bytes_sender."""
    from opentelemetry.exporter.otlp.common.http import _OTLPHTTPClient
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=1)
    try:
        assert isinstance(exporter._client, _OTLPHTTPClient)
        assert list(inspect.signature(exporter._client.export).parameters) == ["data"]
        assert isinstance(exporter._max_request_size, int)
        assert exporter._shutdown is False
        assert bytes_sender(exporter) is not None
        # what OTLPSpanExporter.export does around the same call (encode, size, client)
        source = inspect.getsource(OTLPSpanExporter.export)
        assert "encode_spans(spans).SerializePartialToString()" in source
        assert "self._client.export(serialized_data)" in source
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


def test_no_private_client_no_sender() -> None:
    class Other:
        _max_request_size = 0
        _shutdown = False

        class _client:  # the attribute's name in the SDK
            @staticmethod
            def export(data: bytes, timeout: float) -> Any:
                return None

    assert bytes_sender(object()) is None
    assert bytes_sender(Other()) is None  # another signature


async def _export(exporter: OtlpExporter, batch: list[SpanTuple]) -> bool:
    return await trio.to_thread.run_sync(exporter.export, batch)


def _batch(n: int) -> list[SpanTuple]:
    return [
        (f"{i + 1:032x}", f"{i + 1:016x}", None, 1.0, 0.5, "HTTP/1.1", "GET", f"/{i}", "h",
         200, "", "r", "c", "u:1", "127.0.0.1:5", None, None)
        for i in range(n)
    ]  # fmt: skip


async def test_our_bytes_go_through_the_sdk_exporter(nursery: trio.Nursery) -> None:
    receiver = await OtlpReceiver().start(nursery)
    settings = TracingSettings(endpoint=receiver.endpoint, headers=(("x-key", "k"),))
    exporter = await trio.to_thread.run_sync(_otlp_exporter, settings)
    try:
        assert exporter.send is not None  # the fast path is on
        assert await _export(exporter, _batch(3))
        spans = await receiver.wait_spans(3)
        assert [s["attributes"]["url.path"] for s in spans] == ["/0", "/1", "/2"]
        assert spans[0]["resource"]["service.name"] == "trio-mesh"
    finally:
        exporter.shutdown()
    assert not await _export(exporter, _batch(1))  # shut down: refused, as the SDK does


async def test_the_sdk_path_when_the_client_is_not_there(nursery: trio.Nursery) -> None:
    receiver = await OtlpReceiver().start(nursery)
    settings = TracingSettings(endpoint=receiver.endpoint)
    exporter = await trio.to_thread.run_sync(_otlp_exporter, settings)
    exporter.send = None  # as bytes_sender answers for an SDK without the client
    try:
        assert await _export(exporter, _batch(2))
        spans = await receiver.wait_spans(2)
        assert [s["attributes"]["url.path"] for s in spans] == ["/0", "/1"]
    finally:
        exporter.shutdown()


async def test_a_batch_over_the_size_limit_is_refused(nursery: trio.Nursery) -> None:
    receiver = await OtlpReceiver().start(nursery)
    exporter = await trio.to_thread.run_sync(
        _otlp_exporter, TracingSettings(endpoint=receiver.endpoint)
    )
    try:
        exporter._sdk._max_request_size = 100
        exporter.send = bytes_sender(exporter._sdk)
        assert not await _export(exporter, _batch(5))
        assert receiver.requests == 0
    finally:
        exporter.shutdown()


_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
               "ALL_PROXY", "no_proxy", "NO_PROXY")  # fmt: skip


async def test_the_proxy_from_the_environment_is_used(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment is read once (not on every export), with requests' own rules."""
    receiver = await OtlpReceiver().start(nursery)
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{receiver.port}")
    settings = TracingSettings(endpoint="http://collector.invalid:4318/v1/traces")
    exporter = await trio.to_thread.run_sync(_otlp_exporter, settings)
    try:
        assert not await _export(exporter, _batch(1))  # the "proxy" answers 404
        assert receiver.connections == 1 and receiver.requests == 0
    finally:
        exporter.shutdown()


async def test_no_proxy_from_the_environment_is_honoured(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await OtlpReceiver().start(nursery)
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    exporter = await trio.to_thread.run_sync(
        _otlp_exporter, TracingSettings(endpoint=receiver.endpoint)
    )
    try:
        assert await _export(exporter, _batch(2))
        assert len(await receiver.wait_spans(2)) == 2
    finally:
        exporter.shutdown()
