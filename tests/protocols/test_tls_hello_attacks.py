"""The ClientHello parser against a peer that fragments its ClientHello into tiny records.

The listener parses what it has read after every read. A ClientHello dribbled one byte per
record and one record per TCP segment made each parse walk every record so far: some 2,800
records (the byte budget) cost seconds of CPU for 17 KB from the peer. Real ClientHellos
come in one record, two at most: past 64 records the peer is cut.
"""

from __future__ import annotations

import pytest

from tests.protocols.test_tls_hello import client_hello, reframe
from trio_mesh.protocols.tls_hello import NEED_MORE, ClientHello, HelloError, parse_client_hello

#: A ClientHello header that claims 16,000 bytes, then its first bytes.
BODY = bytes([1]) + (16000).to_bytes(3, "big") + b"\x03\x03" + b"\x00" * 15994


def tiny_records(count: int) -> bytes:
    return b"".join(b"\x16\x03\x01\x00\x01" + BODY[i : i + 1] for i in range(count))


def test_a_hello_dribbled_in_one_byte_records_is_cut_at_64() -> None:
    for count in range(1, 64):
        assert parse_client_hello(tiny_records(count)) is NEED_MORE
    with pytest.raises(HelloError, match="records"):
        parse_client_hello(tiny_records(64))  # and no 65th is waited for


def test_a_real_hello_in_64_records_still_parses() -> None:
    hello = client_hello("api.example.test", ["h2", "http/1.1"])
    size = -(-(len(hello) - 5) // 64)  # 64 records
    data = reframe(hello, [size] * 64)
    parsed = parse_client_hello(data)
    assert isinstance(parsed, ClientHello) and parsed.sni == "api.example.test"
    with pytest.raises(HelloError, match="records"):
        parse_client_hello(reframe(hello, [1] * 65))
