"""The RPC codec registry: names, duplicates, lazy built-ins, entry points, magic-byte detect."""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from tests import bolt_frames as frames
from trio_mesh.protocols.xprotocol import (
    NEED_MORE,
    Codec,
    ErrorKind,
    Frame,
    FrameKind,
    Match,
    UnknownCodec,
    XProtocolError,
    registry,
)
from trio_mesh.protocols.xprotocol.bolt import BoltCodec


class CafeCodec(Codec):
    """A toy protocol for the tests: magic b"\\xca\\xfe", then a u8 length and that many bytes."""

    name = "cafe"
    request_id_bits = 8

    def match(self, data):
        want = b"\xca\xfe"[: len(data)]
        if bytes(data[:2]) != want:
            return Match.NO
        return Match.YES if len(data) >= 2 else Match.NEED_MORE

    def decode(self, data, max_frame_size=1 << 20):
        if len(data) < 3:
            return None
        if bytes(data[:2]) != b"\xca\xfe":
            raise XProtocolError("not cafe", protocol=self.name)
        size = 3 + data[2]
        if len(data) < size:
            return None
        return Frame(bytearray(data[:size]), 0, FrameKind.REQUEST), size

    def set_request_id(self, frame, request_id):
        frame.request_id = request_id
        return frame.data

    def heartbeat_reply(self, frame):
        return frame

    def heartbeat_request(self, request_id):
        return Frame(bytearray(b"\xca\xfe\x00"), request_id, FrameKind.REQUEST, heartbeat=True)

    def error_reply(self, frame, kind, message=""):
        return Frame(bytearray(b"\xca\xfe\x00"), frame.request_id, FrameKind.RESPONSE, status=1)

    def status_for(self, kind):
        return 1

    def is_success(self, frame):
        return frame.status == 0


CAFE = CafeCodec()


class Misnamed(CafeCodec):
    name = "other"


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Each test sees the registry as a fresh process would, and leaves it as it was."""
    monkeypatch.setattr(registry, "_codecs", {})
    monkeypatch.setattr(registry, "_failed", {})
    monkeypatch.setattr(registry, "_all_loaded", False)


def fake_entry_points(monkeypatch, *eps):
    def entry_points(*, group):
        assert group == "trio_mesh.xprotocols"
        return [EntryPoint(name, value, group) for name, value in eps]

    monkeypatch.setattr(registry, "entry_points", entry_points)


def test_builtin_bolt():
    codec = registry.get("bolt")
    assert isinstance(codec, BoltCodec) and codec.name == "bolt"
    assert registry.get("bolt") is codec
    assert "bolt" in registry.names()
    assert repr(codec) == "<BoltCodec bolt>"


def test_register_and_duplicates():
    registry.register_protocol("cafe", CAFE)
    assert registry.get("cafe") is CAFE
    registry.register_protocol("cafe", CAFE)  # the same codec again: no-op
    with pytest.raises(ValueError, match="already registered"):
        registry.register_protocol("cafe", CafeCodec())
    registry.get("bolt")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_protocol("bolt", CafeCodec())
    with pytest.raises(ValueError):
        registry.register_protocol("", CAFE)
    with pytest.raises(TypeError):
        registry.register_protocol("junk", object())  # type: ignore[arg-type]
    registry.unregister_protocol("cafe")
    with pytest.raises(UnknownCodec):
        registry.get("cafe")


def test_unknown():
    with pytest.raises(UnknownCodec) as info:
        registry.get("nope")
    assert isinstance(info.value, KeyError)
    assert "nope" in str(info.value)


def test_entry_point_loaded_lazily_by_name(monkeypatch):
    fake_entry_points(monkeypatch, ("cafe", "tests.protocols.test_xprotocol_registry:CafeCodec"))
    assert "cafe" not in registry._codecs
    codec = registry.get("cafe")
    assert isinstance(codec, CafeCodec)  # a class is instantiated
    assert registry.get("cafe") is codec
    assert registry.names()[:1] == ["cafe"] and "bolt" in registry.names()


def test_entry_point_instance_and_detect(monkeypatch):
    fake_entry_points(monkeypatch, ("cafe", "tests.protocols.test_xprotocol_registry:CAFE"))
    assert registry.detect(b"\xca\xfe\x01x") is CAFE
    assert registry.detect(b"\xca") is NEED_MORE
    assert registry.detect(frames.CLIENT_REQUEST) is registry.get("bolt")


def test_broken_entry_points_are_skipped(monkeypatch, caplog):
    fake_entry_points(
        monkeypatch,
        ("missing", "tests.no_such_module:Codec"),
        ("misnamed", "tests.protocols.test_xprotocol_registry:Misnamed"),
        ("notacodec", "tests.protocols.test_xprotocol_registry:fake_entry_points"),
        ("cafe", "tests.protocols.test_xprotocol_registry:CafeCodec"),
    )
    with caplog.at_level(logging.WARNING, logger="trio_mesh.protocols.xprotocol.registry"):
        assert set(registry.names()) == {"bolt", "dubbo", "cafe"}
    assert "missing" in caplog.text and "misnamed" in caplog.text
    assert registry.detect(b"\xca\xfe\x00") is registry.get("cafe")
    with pytest.raises(UnknownCodec) as info:
        registry.get("missing")
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(UnknownCodec):
        registry.get("misnamed")


def test_entry_point_does_not_replace_a_registered_codec(monkeypatch):
    mine = CafeCodec()
    registry.register_protocol("cafe", mine)
    fake_entry_points(monkeypatch, ("cafe", "tests.protocols.test_xprotocol_registry:CafeCodec"))
    registry.names()
    assert registry.get("cafe") is mine


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", NEED_MORE),  # every codec needs bytes
        (b"\x01", NEED_MORE),
        (b"\x01\x01", "bolt"),
        (b"\x02\x01\x01", "bolt"),
        (frames.SERVER_RESPONSE, "bolt"),
        (b"\xca", NEED_MORE),
        (b"\xca\xfe", "cafe"),
        (b"GET / HTTP/1.1\r\n", None),
        (b"\x01\x09", None),
    ],
)
def test_detect(data, expected):
    registry.register_protocol("cafe", CAFE)
    result = registry.detect(data)
    if isinstance(expected, str):
        assert result is registry.get(expected)
    else:
        assert result is expected


def test_detect_among():
    registry.register_protocol("cafe", CAFE)
    assert registry.detect(b"\x01\x01", among=["cafe"]) is None
    assert registry.detect(b"\x01\x01", among=["cafe", "bolt"]) is registry.get("bolt")
    assert registry.detect(memoryview(b"\xca\xfe"), among=("cafe",)) is CAFE
    with pytest.raises(UnknownCodec):
        registry.detect(b"\x01", among=["nope"])


def test_first_undecided_codec_holds_back_later_ones():
    class Greedy(CafeCodec):
        name = "greedy"

        def match(self, data):
            return Match.YES if len(data) >= 4 else Match.NEED_MORE

    registry.register_protocol("greedy", Greedy())
    assert registry.detect(b"\x01\x01", among=["greedy", "bolt"]) is NEED_MORE
    assert registry.detect(b"\x01\x01", among=["bolt", "greedy"]) is registry.get("bolt")


def test_toy_codec_through_the_interface():
    codec = CAFE
    frame, used = codec.decode(b"\xca\xfe\x02hi...")
    assert used == 5 and codec.encode(frame) == b"\xca\xfe\x02hi"
    assert frame.headers == {} and frame.service == "" and frame.method == ""
    assert codec.error_reply(frame, ErrorKind.NO_ROUTE).is_response


def test_no_trio_and_no_codec_on_import():
    code = (
        "import sys\n"
        "import trio_mesh.protocols.xprotocol as x\n"
        "assert 'trio_mesh.protocols.xprotocol.bolt' not in sys.modules\n"
        "x.get('bolt')\n"
        "assert 'trio_mesh.protocols.xprotocol.bolt' in sys.modules\n"
        "assert 'trio' not in sys.modules, 'protocols must not import trio'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
