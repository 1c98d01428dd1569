"""HTTP/2 for the harness: a small blocking h2c client (readiness probes and the one-request
checks before a load run) and the gRPC message framing the ``grpc-unary`` scenario sends.

The client is the ``h2`` library (a trio-mesh dependency) over a blocking socket with a
timeout on every receive and one overall deadline, so a silent peer cannot hang the harness.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

LOOPBACK = "127.0.0.1"

GRPC_PATH = "/test.Echo/Unary"
# A protobuf message (field 1, a 5-byte string) as the request and the fixed response.
GRPC_MESSAGE = b"\x0a\x05hello"
GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass
class H2Response:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    ended: bool = False  # END_STREAM seen
    error: str = ""  # reset, GOAWAY, connection closed early


def h2_request(
    port: int,
    method: str = "GET",
    path: str = "/small",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    timeout: float = 2.0,
) -> H2Response:
    """One request over a fresh h2c (prior knowledge) connection to 127.0.0.1:port.

    Raises OSError on a connect/send/receive failure or when ``timeout`` (the whole exchange)
    passes; protocol trouble (reset, GOAWAY, early close) comes back in ``error``.
    """
    deadline = time.monotonic() + timeout
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    request = [
        (":method", method),
        (":scheme", "http"),
        (":authority", f"{LOOPBACK}:{port}"),
        (":path", path),
        *headers,
    ]
    if body:
        request.append(("content-length", str(len(body))))
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, request, end_stream=not body)
    if body:
        conn.send_data(sid, body, end_stream=True)  # small bodies: within the initial windows
    response = H2Response()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        while not response.ended and not response.error:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OSError(f"no complete h2 response within {timeout:g} s")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                response.error = "connection closed before the response ended"
                break
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                response.error = f"h2 protocol error: {exc!r}"
                break
            for event in events:
                _apply(event, sid, conn, response)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
            conn.close_connection()
            sock.sendall(conn.data_to_send())
    return response


def _apply(
    event: h2.events.Event, sid: int, conn: h2.connection.H2Connection, response: H2Response
) -> None:
    if getattr(event, "stream_id", sid) != sid and not isinstance(
        event, h2.events.ConnectionTerminated
    ):
        return
    if isinstance(event, h2.events.ResponseReceived):
        for name, value in event.headers:
            if name == ":status":
                response.status = int(value)
            else:
                response.headers[name] = value
    elif isinstance(event, h2.events.DataReceived):
        response.body += event.data
        conn.acknowledge_received_data(event.flow_controlled_length, sid)
    elif isinstance(event, h2.events.TrailersReceived):
        response.trailers.update(event.headers)
    elif isinstance(event, h2.events.StreamEnded):
        response.ended = True
    elif isinstance(event, h2.events.StreamReset):
        response.error = f"stream reset, error code {event.error_code!r}"
    elif isinstance(event, h2.events.ConnectionTerminated):
        response.error = f"GOAWAY, error code {event.error_code!r}"


def h2_status(port: int, path: str = "/small", timeout: float = 2.0) -> int | None:
    """Status of one h2c ``GET path``; None on any failure (the readiness probe)."""
    try:
        r = h2_request(port, "GET", path, timeout=timeout)
    except OSError:
        return None
    return r.status if r.ended else None


def check_grpc_unary(port: int, timeout: float = 5.0) -> str | None:
    """One gRPC unary call through 127.0.0.1:port, checked the way a gRPC client would: HTTP
    200, content-type application/grpc, exactly the expected message, ``grpc-status: 0`` in
    the trailers. None when it is all there, else what is wrong."""
    try:
        r = h2_request(
            port, "POST", GRPC_PATH, GRPC_HEADERS, grpc_frame(GRPC_MESSAGE), timeout=timeout
        )
    except OSError as exc:
        return f"gRPC check: {exc}"
    problems = []
    if r.error:
        problems.append(r.error)
    if r.status != 200:
        problems.append(f"status {r.status}")
    if not r.headers.get("content-type", "").startswith("application/grpc"):
        problems.append(f"content-type {r.headers.get('content-type')!r}")
    if r.body != grpc_frame(GRPC_MESSAGE):
        problems.append(f"body {r.body[:40]!r}")
    status = r.trailers.get("grpc-status", r.headers.get("grpc-status"))
    if status != "0":
        problems.append(f"grpc-status {status!r} (trailers {r.trailers})")
    elif "grpc-status" not in r.trailers:
        problems.append("grpc-status not in trailers")
    return "gRPC check: " + "; ".join(problems) if problems else None


def check_small_get(port: int, body: str, timeout: float = 5.0) -> str | None:
    """One h2c ``GET /small``: 200 and the upstream's body."""
    try:
        r = h2_request(port, "GET", "/small", timeout=timeout)
    except OSError as exc:
        return f"GET /small check: {exc}"
    if r.error or r.status != 200 or r.body != body.encode():
        return f"GET /small check: status {r.status}, body {r.body[:40]!r}, {r.error or 'ok'}"
    return None
