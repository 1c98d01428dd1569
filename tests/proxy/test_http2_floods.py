"""Envoy's HTTP/2 frame-flood limits on the proxy's downstream side (issue 14, finding 2).

Each limit is tried from a real h2 client over a real socket: just under it the connection
goes on (proven by a PING round trip and a request), past it the proxy sends GOAWAY
ENHANCE_YOUR_CALM, closes, and counts the flood on the listener. A well-behaved connection
opened before each attack is still served afterwards.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest
import trio
from hyperframe.frame import DataFrame, PingFrame, PriorityFrame, SettingsFrame, WindowUpdateFrame

from tests.h2_upstream import ErrorCodes, H2Client, open_h2_client, raw_frame
from tests.http_helpers import http_config, to
from tests.proxy.test_http2_abuse import (
    PREFACE,
    TIMEOUT,
    bystander,
    goaway_code,
    h2_proxy,
    headers_frame,
    ping_roundtrip,
    still_served,
)
from trio_mesh.config.errors import ConfigError

DATA, HEADERS, CONTINUATION, UNKNOWN = 0x0, 0x1, 0x9, 0xEE
END_STREAM = 0x1


def flood_count(server: Any, flood: str) -> int:
    return getattr(server.listeners["ingress"].stats, f"http2_{flood}")


async def cut_with_calm(attacker: H2Client) -> None:
    await attacker.wait_closed()
    assert goaway_code(attacker) == ErrorCodes.ENHANCE_YOUR_CALM


def priority(stream_id: int) -> bytes:
    frame = PriorityFrame(stream_id)
    frame.depends_on = 0
    frame.stream_weight = 16
    return frame.serialize()


async def open_upload(client: H2Client) -> int:
    """A POST stream left open (its DATA frames follow by hand)."""
    head = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/echo")]
    sid, frame = headers_frame(client, head, end_stream=False)
    await client.send_raw(frame)
    return sid


# --------------------------------------------------------------------------- empty frames


async def test_one_empty_frame_at_a_time_is_fine(nursery: trio.Nursery) -> None:
    """Empty DATA frames between frames that carry something: never two in a row."""
    _, server, port = await h2_proxy(nursery)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            sid = await open_upload(client)
            for _ in range(20):
                await client.send_raw(raw_frame(DATA, 0, sid, b""))
                await client.send_raw(raw_frame(DATA, 0, sid, b"x"))
            await client.send_raw(raw_frame(DATA, 0, sid, b""))
            await client.send_raw(raw_frame(DATA, END_STREAM, sid, b""))  # END_STREAM: not empty
            await ping_roundtrip(client, b"emptyok!")
            await still_served(client)
    assert flood_count(server, "inbound_empty_frames_flood") == 0


async def test_one_unknown_frame_is_ignored(nursery: trio.Nursery) -> None:
    _, server, port = await h2_proxy(nursery)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await client.send_raw(raw_frame(UNKNOWN, 0, 0, b"extension"))
            await ping_roundtrip(client, b"unknown!")
            await still_served(client)  # a frame with payload ends the run of empty ones
            await client.send_raw(raw_frame(UNKNOWN, 0, 0, b""))
            await ping_roundtrip(client, b"unknown2")
            await still_served(client)
    assert flood_count(server, "inbound_empty_frames_flood") == 0


async def test_empty_frame_limit_is_configurable(nursery: trio.Nursery) -> None:
    _, server, port = await h2_proxy(nursery, max_consecutive_inbound_frames_with_empty_payload=50)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await client.send_raw(raw_frame(UNKNOWN, 0, 0) * 50)
            await ping_roundtrip(client, b"fiftyok!")
            await client.send_raw(raw_frame(UNKNOWN, 0, 0) * 51)
            await cut_with_calm(client)
    assert flood_count(server, "inbound_empty_frames_flood") == 1


# --------------------------------------------------------------------------- PRIORITY


async def test_priority_frames_up_to_the_limit_are_fine(nursery: trio.Nursery) -> None:
    """100 PRIORITY frames (for idle streams, as browsers send them) before any stream."""
    _, server, port = await h2_proxy(nursery)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await client.send_raw(b"".join(priority(2 * i + 101) for i in range(100)))
            await ping_roundtrip(client, b"prio-ok!")
            await still_served(client)
    assert flood_count(server, "inbound_priority_frames_flood") == 0


async def test_priority_allowance_grows_with_streams(nursery: trio.Nursery) -> None:
    """100 per stream opened: after one request, 200 in all are fine, the 201st is not."""
    _, server, port = await h2_proxy(nursery)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await still_served(client)
            await client.send_raw(priority(101) * 200)
            await ping_roundtrip(client, b"prio200!")
            await client.send_raw(priority(101))
            await cut_with_calm(client)
    assert flood_count(server, "inbound_priority_frames_flood") == 1


# --------------------------------------------------------------------------- WINDOW_UPDATE


def window_update(stream_id: int = 0, increment: int = 1) -> bytes:
    frame = WindowUpdateFrame(stream_id)
    frame.window_increment = increment
    return frame.serialize()


async def test_window_updates_within_the_allowance_are_fine(nursery: trio.Nursery) -> None:
    """Nothing sent by the proxy yet, no stream: Envoy allows 5."""
    _, server, port = await h2_proxy(nursery)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await client.send_raw(window_update() * 5)
            await ping_roundtrip(client, b"wu-ok!!!")
    assert flood_count(server, "inbound_window_update_frames_flood") == 0


async def test_window_update_allowance_grows_with_data_sent(nursery: trio.Nursery) -> None:
    """One stream answered with one DATA frame: 5 + 2 * (1 + 10 * 1) = 27 allowed (the
    client's own WINDOW_UPDATEs for that tiny body, if any, are a few of them)."""
    _, server, port = await h2_proxy(nursery)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await still_served(client)  # one stream, its response body in one DATA frame
            assert len([f for f in client.frames if isinstance(f, DataFrame)]) == 1
            await client.send_raw(window_update() * 20)  # 6 would be a flood without it
            await ping_roundtrip(client, b"wu20ok!!")
            await client.send_raw(window_update() * 10)
            await cut_with_calm(client)
    assert flood_count(server, "inbound_window_update_frames_flood") == 1


# --------------------------------------------------------------------------- control frames


async def test_control_frames_up_to_the_limit_are_fine(nursery: trio.Nursery) -> None:
    """1000 PINGs in one write, read as they come: all answered."""
    _, server, port = await h2_proxy(nursery)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await ping_roundtrip(client, b"warm-up!")
            await client.send_raw(PingFrame(0, b"p" * 8).serialize() * 999)
            await ping_roundtrip(client, b"last-one")
            acks = [f for f in client.frames if isinstance(f, PingFrame) and "ACK" in f.flags]
            assert len(acks) == 1001
            await still_served(client)
    assert flood_count(server, "outbound_control_flood") == 0


# A peer that reads nothing is cut only once the kernel's send buffer (autotuned, megabytes on
# loopback) is full: some 400k tiny frames through h2 first, seconds of CPU on a busy machine.
FLOOD_TIMEOUT = 3 * TIMEOUT


async def _flood_without_reading(port: int, frame: bytes) -> int:
    """Send ``frame`` over and over on a raw socket that reads nothing, until the proxy cuts
    the connection; returns how many were sent."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    attacker = trio.SocketStream(sock)
    per_write = 10_000
    chunk = frame * per_write
    sent = 0
    try:
        await attacker.send_all(PREFACE + SettingsFrame(0).serialize())
        while True:  # until cut (fail_after bounds it)
            await attacker.send_all(chunk)
            sent += per_write
    except trio.BrokenResourceError:
        return sent
    finally:
        sock.close()


async def test_ping_flood_without_reading_is_cut_at_the_control_limit(
    nursery: trio.Nursery,
) -> None:
    """PINGs whose ACKs are never read: once the socket takes no more, the proxy queues at
    most 1000 ACKs, then sends GOAWAY and closes (it used to stop reading and hold them)."""
    _, server, port = await h2_proxy(nursery)
    async with bystander(port) as good:
        with trio.fail_after(FLOOD_TIMEOUT):
            await _flood_without_reading(port, PingFrame(0, b"flooding").serialize())
            await still_served(good)
    assert flood_count(server, "outbound_control_flood") == 1


async def test_settings_flood_without_reading_is_cut(nursery: trio.Nursery) -> None:
    _, server, port = await h2_proxy(nursery)
    async with bystander(port) as good:
        with trio.fail_after(FLOOD_TIMEOUT):
            await _flood_without_reading(port, SettingsFrame(0).serialize())
            await still_served(good)
    assert flood_count(server, "outbound_control_flood") == 1


def test_flood_limits_out_of_range_are_config_errors() -> None:
    for key, value in [
        ("max_outbound_control_frames", 0),
        ("max_consecutive_inbound_frames_with_empty_payload", -1),
        ("max_inbound_priority_frames_per_stream", -1),
        ("max_inbound_window_update_frames_per_data_frame_sent", 0),
    ]:
        proxy = {"downstream_protocol": "Http2", "http2": {key: value}}
        with pytest.raises(ConfigError) as err:
            http_config([to("up")], {"up": 1}, proxy)
        assert f"config.http2.{key}: expected an integer of at least" in str(err.value)


# --------------------------------------------------------------------------- past each limit

FLOODS = {
    # name: (counter, frames after the attacker's preface); DATA goes on stream 1, an upload
    # opened first (and only for them: a stream opened raises the other allowances)
    "two_empty_data_frames_in_a_row": ("inbound_empty_frames_flood", raw_frame(DATA, 0, 1) * 2),
    "empty_data_frames": ("inbound_empty_frames_flood", raw_frame(DATA, 0, 1) * 5000),
    # the probe's 0xEE flood: frames that make no output and cost a parse each
    "unknown_frame_types": ("inbound_empty_frames_flood", raw_frame(UNKNOWN, 0, 0, b"j") * 2000),
    "priority_past_the_limit": (
        "inbound_priority_frames_flood",
        b"".join(priority(2 * i + 101) for i in range(101)),
    ),
    # the probe's flood: 2000 PRIORITY frames per write
    "priority_2000_per_write": ("inbound_priority_frames_flood", priority(1) * 2000),
    "window_update_past_the_allowance": ("inbound_window_update_frames_flood", window_update() * 6),
}


@pytest.mark.parametrize("flood", FLOODS)
async def test_past_the_limit_is_cut_with_calm(nursery: trio.Nursery, flood: str) -> None:
    """Past a limit: GOAWAY ENHANCE_YOUR_CALM, closed, counted once; a bystander connection
    opened before the attack is still served."""
    counter, frames = FLOODS[flood]
    _, server, port = await h2_proxy(nursery)
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            if frames.startswith(raw_frame(DATA, 0, 1)):
                assert await open_upload(attacker) == 1
            with contextlib.suppress(Exception):  # the proxy may cut it mid-write
                for _ in range(50 if flood == "priority_2000_per_write" else 1):
                    await attacker.send_raw(frames)
            await cut_with_calm(attacker)
            await still_served(good)
    assert flood_count(server, counter) == 1
