"""The TLS listener attacked from the client's side: a handshake then silence (the idle
timeout still applies), server names spelled oddly (case, a trailing dot, IDNA), a first
byte 0x16 followed by plaintext on an ``inspector`` listener."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

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
    named = proxy_chain(tls_context(pki.server), match={"server_names": ["api.example.test"]})
    _, port = await start_proxy(nursery, config(up.port, [other, named]))
    ctx = client_context(pki, check_hostname=False)
    with trio.fail_after(10):
        stream = await tls_connect(port, ctx, server_name=sni)
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


class MemoryClient:
    """A TLS client driven step by step (ssl.SSLObject over a raw socket): the test decides
    when each flight of the handshake goes."""

    def __init__(self, stream: trio.SocketStream, ctx: ssl.SSLContext, sni: str) -> None:
        self.stream = stream
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)

    def step(self) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    async def flush(self) -> None:
        if self.outgoing.pending:
            await self.stream.send_all(self.outgoing.read())

    async def read_flight(self) -> None:
        """The server's answer to the ClientHello, up to its Finished."""
        while True:
            data = await self.stream.receive_some(65536)
            assert data, "closed mid-handshake"
            self.incoming.write(data)
            if self.step():
                return

    async def request(self, raw: bytes) -> bytes:
        self.obj.write(raw)
        await self.flush()
        out = b""
        while b"\r\n\r\n" not in out:
            try:
                out += self.obj.read(65536)
            except ssl.SSLWantReadError:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.incoming.write(data)
        return out


async def test_handshakes_in_progress_finish_across_an_inline_certificate_rotation(nursery, pki):
    """An xDS or file update that rotates an inline certificate changes the listener: the
    new chain serves new connections, and the connections already open finish what they
    do. Handshakes in progress are among them: they finish with the certificate they began
    with and their request is served, not reset half-way through the handshake."""
    up = await start_upstream(nursery)

    def cfg(pair: Any) -> Any:
        tls = {"status": True, "cert_chain": pair.cert_pem, "private_key": pair.key_pem}
        return config(up.port, [proxy_chain(tls, protocol="Http1")])

    rotated = pki.ca.issue("rotated-inline", cn="rotated", dns=("localhost",), ips=("127.0.0.1",))
    server, port = await start_proxy(nursery, cfg(pki.server))
    ctx = client_context(pki)
    clients = []
    with trio.fail_after(15):
        for _ in range(20):
            client = MemoryClient(await trio.open_tcp_stream("127.0.0.1", port), ctx, "localhost")
            client.step()
            await client.flush()  # the ClientHello
            await client.read_flight()  # ServerHello .. server Finished: in progress now
            clients.append(client)
        await server.apply(cfg(rotated))
        statuses = []
        for client in clients:
            await client.flush()  # the client's Finished
            head = await client.request(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            statuses.append(head.split(b" ", 2)[1] if head else b"reset")
            cert = client.obj.getpeercert()
            assert cert is not None
            assert dict(x[0] for x in cert["subject"])["commonName"] == "localhost"
        fresh = await tls_connect(port, ctx)
        assert peer_cn(fresh) == "rotated"
        await fresh.aclose()
    assert statuses == [b"200"] * 20


async def test_a_hello_in_tiny_records_is_cut_at_once_not_at_the_timeout(nursery, pki):
    """A ClientHello fragmented into one-byte records (each read parsed again from the
    start) is refused after 64 records, not read on until the byte budget or the timeout."""
    from tests.protocols.test_tls_hello_attacks import tiny_records

    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery,
        config(up.port, [proxy_chain(tls_context(pki.server))], tls_handshake_timeout="30s"),
    )
    stats = server.listeners["ingress"].stats
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(tiny_records(70))
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.read_to_eof() == b""
    assert (stats.ssl_connection_error, stats.ssl_handshake_timeout) == (1, 0)


async def test_a_silent_connection_is_closed_at_once_by_a_drain(nursery, pki):
    """What the drain lets finish is a handshake begun; a connection that has sent nothing
    is closed at once, not held until the handshake timeout."""
    up = await start_upstream(nursery)

    def cfg(pair: Any) -> Any:
        tls = {"status": True, "cert_chain": pair.cert_pem, "private_key": pair.key_pem}
        return config(up.port, [proxy_chain(tls)], tls_handshake_timeout="30s")

    server, port = await start_proxy(nursery, cfg(pki.server))
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            while not server.listeners["ingress"].connections:
                await trio.lowlevel.checkpoint()
            await server.apply(cfg(pki.other_server))
            assert await client.read_to_eof() == b""


async def test_a_reload_rotating_certificates_does_not_stall_the_event_loop(nursery, pki):
    """Rotation rebuilds every TLS context of the running listeners from the files; one that
    loads a CA bundle (the system's: some 150 certificates) takes tens of milliseconds.
    That work must not run on the event loop, where every connection waits for it."""
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    if not Path(bundle).exists():
        pytest.skip("no system CA bundle")
    up = await start_upstream(nursery)
    entry = {**tls_context(pki.server), "ca_cert": bundle, "verify_client": True}
    chain = proxy_chain()
    chain["tls_context_set"] = [entry] * 12
    cfg = config(up.port, [chain])
    server, _ = await start_proxy(nursery, cfg)
    gaps: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        last = trio.current_time()
        while not done.is_set():
            await trio.sleep(0)
            now = trio.current_time()
            gaps.append(now - last)
            last = now

    with trio.fail_after(30):
        async with trio.open_nursery() as inner:
            inner.start_soon(ticker)
            await server.apply(cfg)  # the same config: a SIGHUP's certificate rotation
            done.set()
    assert max(gaps) < 0.2, max(gaps)  # it was 0.47 s on the loop
