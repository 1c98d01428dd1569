"""x-forwarded-client-cert smuggling: under ``SANITIZE`` (the default) a client's XFCC never
reaches the upstream, whichever way it is sent: mixed case, twice, with obs-fold, in HTTP/1
chunked trailers, in HTTP/2 trailers, on a plaintext listener."""

from __future__ import annotations

import pytest
import trio

from tests.http_helpers import Client, http_config, start_proxy, to, trailers_h1_upstream


async def _send_raw(port: int, raw: bytes) -> bytes:
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(raw)
            resp = await client.response()
    return resp.status


def _names(record: dict) -> list[str]:
    return [n.lower() for n, _ in record["headers"]] + [n.lower() for n, _ in record["trailers"]]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Client-Cert: By=forged\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nx-forwarded-client-cert: a\r\n"
        b"X-FORWARDED-CLIENT-CERT: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: x-forwarded-client-cert\r\n\r\n"
        b"2\r\nhi\r\n0\r\nX-Forwarded-Client-Cert: By=forged\r\n\r\n",
    ],
    ids=["mixed-case", "twice", "h1-trailer"],
)
async def test_xfcc_from_an_http1_client_never_reaches_the_upstream(nursery, raw):
    up_port, seen = await trailers_h1_upstream(nursery)
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up_port}))
    status = await _send_raw(port, raw)
    assert status == 200
    (record,) = seen
    assert "x-forwarded-client-cert" not in _names(record), record


async def test_obs_fold_cannot_carry_xfcc(nursery):
    """A folded line is refused (400), never unfolded into the previous field nor read as a
    field of its own."""
    up_port, seen = await trailers_h1_upstream(nursery)
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up_port}))
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n x-forwarded-client-cert: By=forged\r\n\r\n"
    assert await _send_raw(port, raw) == 400
    assert seen == []


async def test_xfcc_in_http2_trailers_never_reaches_the_upstream(nursery):
    import h2.config
    import h2.connection
    import h2.events

    up_port, seen = await trailers_h1_upstream(nursery)
    _, port = await start_proxy(
        nursery,
        http_config(
            [to("up")],
            {"up": up_port},
            proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http1"},
        ),
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(1, headers)
    conn.send_data(1, b"hi")
    conn.send_headers(1, [("x-forwarded-client-cert", "By=forged")], end_stream=True)
    ended = False
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(conn.data_to_send())
            status = None
            while not ended:
                data = await stream.receive_some(65536)
                assert data
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
                    if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        ended = True
                await stream.send_all(conn.data_to_send())
    assert status == b"200"
    (record,) = seen
    assert record["body"] == "hi"
    assert "x-forwarded-client-cert" not in _names(record), record


def test_trailers_kept_only_where_the_header_is():
    from trio_mesh.proxy.xfcc import DROP, KEEP, ConnectionXfcc

    trailers = [(b"x-forwarded-client-cert", b"By=forged"), (b"grpc-status", b"0")]
    assert KEEP.trailers(trailers) == trailers  # ALWAYS_FORWARD_ONLY: the client's goes on
    assert DROP.trailers(trailers) == [(b"grpc-status", b"0")]
    set_ = ConnectionXfcc(True, b"Hash=00")
    append = ConnectionXfcc(False, b"Hash=00", append=True)
    for policy in (set_, append):  # this hop's element is in the header, not in a trailer
        assert policy.trailers(trailers) == [(b"grpc-status", b"0")]
