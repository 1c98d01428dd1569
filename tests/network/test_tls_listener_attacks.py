"""The TLS listener attacked from the client's side: a handshake then silence (the idle
timeout still applies), server names spelled oddly (case, a trailing dot, IDNA), a first
byte 0x16 followed by plaintext on an ``inspector`` listener."""

from __future__ import annotations

import contextlib
import ssl

import pytest
import trio

from tests.http_helpers import Client, get, start_proxy, start_upstream
from tests.network.test_tls_listener import (
    client_context,
    config,
    peer_cn,
    proxy_chain,
    tls_connect,
    tls_context,
)


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
async def test_a_handshake_then_silence_is_closed_by_the_idle_timeout(nursery, pki, alpn):
    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery,
        config(
            up.port,
            [proxy_chain(tls_context(pki.server))],
            connection_idle_timeout="300ms",
        ),
    )
    with trio.fail_after(10):
        stream = await tls_connect(port, client_context(pki, alpn=[alpn]))
        start = trio.current_time()
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):
                pass  # an HTTP/2 server's SETTINGS, GOAWAY
        took = trio.current_time() - start
        stats = server.listeners["ingress"].stats
        while stats.downstream_cx_active:  # the client saw the close before it was counted
            await trio.lowlevel.checkpoint()
    assert 0.2 < took < 5
    assert stats.downstream_cx_idle_timeout == 1


@pytest.mark.parametrize(
    "sni", ["API.EXAMPLE.TEST", "api.example.test.", "Api.Example.Test."], ids=str
)
async def test_server_name_case_and_trailing_dot_select_the_named_chain(nursery, pki, sni):
    up = await start_upstream(nursery)
    other = proxy_chain(tls_context(pki.other_server))  # the default chain
    named = proxy_chain(
        tls_context(pki.server), match={"server_names": ["api.example.test"]}
    )
    server, port = await start_proxy(nursery, config(up.port, [other, named]))
    ctx = client_context(pki, check_hostname=False)
    with trio.fail_after(10):
        stream = await tls_connect(port, ctx, server_name=sni)
        assert peer_cn(stream) == "localhost" or "example" in peer_cn(stream)
        cert = stream.getpeercert()
        assert cert is not None
        sans = {v for k, v in cert["subjectAltName"] if k == "DNS"}
        assert "api.example.test" in sans  # pki.server's, not pki.other_server's
        async with Client(stream) as client:  # type: ignore[arg-type]
            await client.send(get("/echo"))
            assert (await client.response()).status == 200


async def test_inspector_first_byte_0x16_then_plaintext_is_plaintext(nursery, pki):
    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery, config(up.port, [proxy_chain(tls_context(pki.server))], inspector=True)
    )
    stats = server.listeners["ingress"].stats
    with trio.fail_after(5):  # not a TLS record: plaintext, which Auto closes (TLS-like)
        async with await Client.connect(port) as client:
            await client.send(b"\x16GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await client.read_to_eof() == b""
        while stats.downstream_cx_active:
            await trio.lowlevel.checkpoint()
    assert (stats.ssl_handshake, stats.ssl_connection_error) == (0, 0)
