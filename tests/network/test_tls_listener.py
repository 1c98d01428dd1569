"""Downstream TLS in the listener, against real clients: openssl s_client, curl, Python ssl.

SNI and ALPN, TLS versions, mutual TLS, several chains by server name, TLS and plaintext on one
port (``inspector``), pass-through of TLS bytes by server name, the handshake timeout and bound
(a stalled-ClientHello flood), certificate rotation on reload."""

from __future__ import annotations

import contextlib
import functools
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.http_helpers import (
    Client,
    curl,
    echoed,
    get,
    http_config,
    split_curl_output,
    start_proxy,
    start_upstream,
    to,
)
from tests.tls_pki import CLIENT_SPIFFE, SERVER_SPIFFE, Pair, Pki
from trio_mesh.config import MeshConfig

# ----------------------------------------------------------------------------- helpers


def tls_context(pair: Pair, **extra: Any) -> dict[str, Any]:
    return {"status": True, "cert_chain": str(pair.cert), "private_key": str(pair.key), **extra}


def mtls_context(pki: Pki, **extra: Any) -> dict[str, Any]:
    return tls_context(
        pki.server,
        ca_cert=str(pki.ca.cert),
        verify_client=True,
        require_client_cert=True,
        **extra,
    )


def proxy_chain(
    tls: dict[str, Any] | None = None,
    *,
    protocol: str = "Auto",
    match: dict[str, Any] | None = None,
    router: str = "r",
) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [
            {
                "type": "proxy",
                "config": {
                    "router_config_name": router,
                    "downstream_protocol": protocol,
                    "upstream_protocol": "Http1",
                },
            }
        ]
    }
    if tls is not None:
        chain["tls_context"] = tls
    if match is not None:
        chain["filter_chain_match"] = match
    return chain


def config(upstream_port: int, chains: list[dict[str, Any]], **listener: Any) -> MeshConfig:
    return http_config(
        [to("up")], {"up": upstream_port}, listener={"filter_chains": chains, **listener}
    )


def client_context(
    pki: Pki,
    *,
    cert: Pair | None = None,
    alpn: list[str] | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def tls_connect(
    port: int, ctx: ssl.SSLContext, server_name: str = "localhost"
) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_name, https_compatible=True)
    await stream.do_handshake()
    return stream


def peer_cn(stream: trio.SSLStream[Any]) -> str:
    cert = stream.getpeercert()
    assert cert
    return dict(x[0] for x in cert["subject"])["commonName"]


async def tls_get(port: int, ctx: ssl.SSLContext, server_name: str = "localhost") -> Any:
    stream = await tls_connect(port, ctx, server_name)
    async with Client(stream) as client:  # type: ignore[arg-type]
        await client.send(get("/echo"))
        return await client.response()


async def s_client(*args: str, stdin: bytes = b"") -> tuple[int, str]:
    with trio.fail_after(15):
        proc = await trio.run_process(
            ["openssl", "s_client", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def client_hello(sni: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# ----------------------------------------------------------------------------- basics


async def test_https_with_python_ssl_and_x_forwarded_proto(nursery, pki):
    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery, config(up.port, [proxy_chain(tls_context(pki.server))])
    )
    with trio.fail_after(10):
        response = await tls_get(port, client_context(pki))
    info = echoed(response)
    assert info["headers"].get("x-forwarded-proto") == "https"
    stats = server.listeners["ingress"].stats
    assert stats.ssl_handshake == 1 and stats.ssl_connection_error == 0


async def test_curl_https_http1_and_http2_by_alpn(nursery, pki):
    up = await start_upstream(nursery)
    _, port = await start_proxy(nursery, config(up.port, [proxy_chain(tls_context(pki.server))]))
    url = f"https://localhost:{port}/echo"
    resolve = f"localhost:{port}:127.0.0.1"
    for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
        code, out, err = await curl(
            "--cacert", str(pki.ca.cert), "--resolve", resolve, flag, "-i",
            "-w", "\n%{http_version}", url,
        )  # fmt: skip
        assert code == 0, err
        body, _, got_version = out.rpartition(b"\n")
        assert got_version.decode() == version
        ((status, _, payload),) = split_curl_output(body)
        assert status == 200, (flag, out)
        assert b'"x-forwarded-proto", "https"' in payload or b"https" in payload


async def test_openssl_s_client_sni_alpn_and_versions(nursery, pki):
    up = await start_upstream(nursery)
    _, port = await start_proxy(nursery, config(up.port, [proxy_chain(tls_context(pki.server))]))
    target = f"127.0.0.1:{port}"
    ca = str(pki.ca.cert)
    code, out = await s_client(
        "-connect", target, "-servername", "api.example.test", "-alpn", "h2",
        "-CAfile", ca, "-verify_return_error", "-tls1_3",
    )  # fmt: skip
    assert code == 0, out
    assert "New, TLSv1.3" in out
    assert "ALPN protocol: h2" in out
    assert "Verify return code: 0 (ok)" in out
    code, out = await s_client(
        "-connect", target, "-servername", "api.example.test", "-alpn", "http/1.1",
        "-CAfile", ca, "-verify_return_error", "-tls1_2",
    )  # fmt: skip
    assert code == 0, out
    assert "New, TLSv1.2" in out
    assert "ALPN protocol: http/1.1" in out
    # TLS 1.1 and below: refused by the server's minimum (OpenSSL's client may not even
    # offer it at its default security level; either way there is no session).
    code, out = await s_client(
        "-connect", target, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-brief"
    )
    assert code != 0, out


async def test_plaintext_client_on_a_tls_chain_is_closed_and_counted(nursery, pki):
    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery, config(up.port, [proxy_chain(tls_context(pki.server))])
    )
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            assert await client.read_to_eof() == b""
    assert server.listeners["ingress"].stats.ssl_connection_error == 1
    assert up.requests == []


# ----------------------------------------------------------------------------- mutual TLS


@pytest.mark.parametrize("who", ["none", "stranger", "expired", "good"])
async def test_mutual_tls_with_curl(nursery, pki, who):
    up = await start_upstream(nursery)
    server, port = await start_proxy(nursery, config(up.port, [proxy_chain(mtls_context(pki))]))
    args = ["--cacert", str(pki.ca.cert), "--resolve", f"localhost:{port}:127.0.0.1"]
    pair = {
        "none": None,
        "stranger": pki.stranger,
        "expired": pki.expired_client,
        "good": pki.client,
    }[who]
    if pair is not None:
        args += ["--cert", str(pair.cert), "--key", str(pair.key)]
    code, out, err = await curl(*args, "-i", f"https://localhost:{port}/echo")
    stats = server.listeners["ingress"].stats
    if who == "good":
        assert code == 0, err
        ((status, _, _),) = split_curl_output(out)
        assert status == 200
        assert stats.ssl_handshake == 1
        return
    assert code != 0 and not out, (code, out)
    assert up.requests == []
    with trio.fail_after(5):
        while stats.ssl_connection_error == 0:  # the server may see it after curl exits
            await trio.sleep(0.01)
    if who == "none":
        assert stats.ssl_fail_verify_no_cert == 1
    else:
        assert stats.ssl_fail_verify_error == 1


async def test_mutual_tls_peer_identity_reaches_the_connection(nursery, pki):
    up = await start_upstream(nursery)
    seen = []
    server, port = await start_proxy(nursery, config(up.port, [proxy_chain(mtls_context(pki))]))
    with trio.fail_after(10):
        stream = await tls_connect(port, client_context(pki, cert=pki.client))
        async with Client(stream) as client:  # type: ignore[arg-type]
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
            (conn,) = server.listeners["ingress"].connections
            seen.append(conn.tls)
    (info,) = seen
    assert info is not None
    assert info.peer_subject is not None and "CN=client" in info.peer_subject
    assert info.sni == "localhost"
    assert info.peer_uri_sans == (CLIENT_SPIFFE,)
    # The proxy's own certificate, for XFCC's By=.
    assert info.local_subject == "CN=localhost,O=trio-mesh tests"
    assert info.local_uri_sans == (SERVER_SPIFFE,)


# ----------------------------------------------------------------------------- chains


async def test_several_chains_by_server_name(nursery, pki):
    up = await start_upstream(nursery)
    chains = [
        proxy_chain(
            tls_context(pki.server),
            match={"server_names": ["api.example.test", "*.wild.example.test"]},
        ),
        proxy_chain(tls_context(pki.other_server), match={"server_names": ["other.example.test"]}),
    ]
    server, port = await start_proxy(nursery, config(up.port, chains))
    ctx = client_context(pki)
    with trio.fail_after(10):
        for name, cn in (
            ("api.example.test", "localhost"),
            ("x.wild.example.test", "localhost"),
            ("other.example.test", "other.example.test"),
        ):
            stream = await tls_connect(port, ctx, name)
            assert peer_cn(stream) == cn
            async with Client(stream) as client:  # type: ignore[arg-type]
                await client.send(get("/echo"))
                assert (await client.response()).status == 200
        # No chain for this name and no default chain: closed before any handshake.
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            await tls_connect(port, ctx, "nobody.example.test")
    assert server.listeners["ingress"].stats.no_filter_chain_match == 1


async def test_default_chain_takes_unknown_names_and_no_sni(nursery, pki):
    up = await start_upstream(nursery)
    chains = [
        proxy_chain(tls_context(pki.other_server), match={"server_names": ["other.example.test"]}),
        proxy_chain(tls_context(pki.server)),
    ]
    _, port = await start_proxy(nursery, config(up.port, chains))
    with trio.fail_after(10):
        stream = await tls_connect(port, client_context(pki, check_hostname=False), "unknown.test")
        assert peer_cn(stream) == "localhost"
        await stream.aclose()
        code, out = await s_client("-connect", f"127.0.0.1:{port}", "-noservername", "-brief")
        assert code == 0, out
        assert "localhost" in out


async def test_inspector_tls_and_plaintext_on_one_port(nursery, pki):
    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery, config(up.port, [proxy_chain(tls_context(pki.server))], inspector=True)
    )
    with trio.fail_after(10):
        info = echoed(await tls_get(port, client_context(pki)))
        assert info["headers"].get("x-forwarded-proto") == "https"
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            info = echoed(await client.response())
            assert info["headers"].get("x-forwarded-proto") == "http"
            # the replayed bytes were one request; the connection keeps serving
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
    assert server.listeners["ingress"].stats.ssl_handshake == 1


async def test_tls_pass_through_by_server_name(nursery, pki):
    """A tcp_proxy chain matched by server name forwards the TLS bytes untouched: the client's
    handshake is with the upstream (its certificate, its ALPN)."""
    upstream_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    upstream_ctx.load_cert_chain(str(pki.other_server.cert), str(pki.other_server.key))
    upstream_ctx.set_alpn_protocols(["echo/1"])

    async def tls_echo(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, upstream_ctx, server_side=True)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(65536):
                await stream.send_all(b"upstream:" + data)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"), tls_echo, 0
    )
    tls_port = listeners[0].socket.getsockname()[1]
    up = await start_upstream(nursery)
    doc_chains = [
        {
            "filter_chain_match": {"server_names": ["other.example.test"]},
            "filters": [{"type": "tcp_proxy", "config": {"cluster": "tls"}}],
        },
        proxy_chain(tls_context(pki.server)),
    ]
    cfg = http_config(
        [to("up")],
        {"up": up.port, "tls": tls_port},
        listener={"filter_chains": doc_chains},
    )
    server, port = await start_proxy(nursery, cfg)
    ctx = client_context(pki, alpn=["echo/1"])
    with trio.fail_after(10):
        stream = await tls_connect(port, ctx, "other.example.test")
        assert peer_cn(stream) == "other.example.test"
        assert stream.selected_alpn_protocol() == "echo/1"
        await stream.send_all(b"hello")
        assert await stream.receive_some(100) == b"upstream:hello"
        await stream.aclose()
        # The same port terminates TLS for other names.
        assert (await tls_get(port, client_context(pki))).status == 200
    assert server.listeners["ingress"].stats.ssl_handshake == 1


# ----------------------------------------------------------------------------- limits


async def test_handshake_timeout_for_a_silent_or_stalled_client(nursery, pki):
    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery,
        config(up.port, [proxy_chain(tls_context(pki.server))], tls_handshake_timeout="200ms"),
    )
    stats = server.listeners["ingress"].stats
    hello = client_hello("localhost")
    with trio.fail_after(10):
        for first in (b"", hello[:20], hello):
            async with await Client.connect(port) as client:
                if first:
                    await client.send(first)
                before = trio.current_time()
                got = await client.read_to_eof()
                assert trio.current_time() - before >= 0.15
                assert got == b"" or first == hello  # a whole hello gets the ServerHello
    assert stats.ssl_handshake_timeout == 3


async def test_stalled_hello_flood_leaves_a_real_client_served(nursery, pki):
    """1,000 connections send a ClientHello and stall; with at most 64 handshakes in
    progress, each new one evicts the oldest, and a real client is served at once."""
    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery,
        config(
            up.port,
            [proxy_chain(tls_context(pki.server))],
            tls_handshake_timeout="30s",
            max_concurrent_handshakes=64,
        ),
    )
    stats = server.listeners["ingress"].stats
    hello = client_hello("localhost")
    stalled: list[trio.SocketStream] = []
    try:
        with trio.fail_after(60):
            for _ in range(1000):
                s = await trio.open_tcp_stream("127.0.0.1", port)
                await s.send_all(hello)
                stalled.append(s)
            # The proxy has taken them all in (accepted, admitted, waiting for more).
            await trio.testing.wait_all_tasks_blocked()
            assert stats.ssl_handshake_evicted == 1000 - 64
        with trio.fail_after(5):  # a real client, while 64 stalled handshakes hold slots
            response = await tls_get(port, client_context(pki))
            assert response.status == 200
    finally:
        for s in stalled:
            with contextlib.suppress(Exception):
                await s.aclose()
    assert stats.ssl_handshake == 1
    assert stats.ssl_handshake_evicted >= 1000 - 64


# ----------------------------------------------------------------------------- rotation


async def test_rotation_on_reload(nursery, pki, tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    up = await start_upstream(nursery)
    tls = {"status": True, "cert_chain": str(cert), "private_key": str(key)}
    cfg = config(up.port, [proxy_chain(tls)])
    server, port = await start_proxy(nursery, cfg)
    ctx = client_context(pki)
    with trio.fail_after(15):
        old = await tls_connect(port, ctx)
        assert peer_cn(old) == "localhost"
        async with Client(old) as client:  # type: ignore[arg-type]
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
            rotated = pki.ca.issue("rotated", cn="rotated", dns=("localhost",), ips=("127.0.0.1",))
            shutil.copy(rotated.cert, cert)
            shutil.copy(rotated.key, key)
            await server.apply(cfg)  # the configuration is the same; the files are not
            fresh = await tls_connect(port, ctx)
            assert peer_cn(fresh) == "rotated"
            await fresh.aclose()
            # The open connection keeps its session and keeps working.
            await client.send(get("/echo"))
            assert (await client.response()).status == 200


async def test_rotation_to_a_bad_file_is_refused_and_keeps_serving(nursery, pki, tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    up = await start_upstream(nursery)
    cfg = config(
        up.port, [proxy_chain({"status": True, "cert_chain": str(cert), "private_key": str(key)})]
    )
    server, port = await start_proxy(nursery, cfg)
    shutil.copy(pki.other_server.key, key)  # a key that does not match the certificate
    from trio_mesh.errors import StartupError

    with pytest.raises(StartupError, match=r"filter_chains\[0\]\.tls_context"):
        await server.apply(cfg)
    with trio.fail_after(10):
        assert (await tls_get(port, client_context(pki))).status == 200


async def test_a_plain_listener_takes_the_direct_path(nursery):
    """One plaintext chain, nothing to match, no inspector: the chain's handler itself, so a
    connection costs no read before it."""
    from trio_mesh.network.dispatch import ChainDispatcher

    up = await start_upstream(nursery)
    server, _ = await start_proxy(nursery, config(up.port, [proxy_chain()]))
    assert not isinstance(server.listeners["ingress"].handler, ChainDispatcher)
    server, _ = await start_proxy(nursery, config(up.port, [proxy_chain()], inspector=True))
    assert isinstance(server.listeners["ingress"].handler, ChainDispatcher)


async def test_failures_logged_once_a_second_with_the_count(nursery, pki, caplog):
    up = await start_upstream(nursery)
    server, port = await start_proxy(
        nursery, config(up.port, [proxy_chain(tls_context(pki.server))])
    )
    caplog.set_level("INFO", logger="trio_mesh.listener")
    with trio.fail_after(10):
        for _ in range(5):
            async with await Client.connect(port) as client:
                await client.send(get("/echo"))
                assert await client.read_to_eof() == b""
    lines = [r.getMessage() for r in caplog.records if "plaintext on a TLS chain" in r.getMessage()]
    assert len(lines) == 1, lines
    assert server.listeners["ingress"].stats.ssl_connection_error == 5


async def test_alpn_picks_the_auto_proxys_protocol(nursery, pki):
    """``Auto`` behind TLS: ALPN h2 is HTTP/2 at once (the proxy's SETTINGS arrive before the
    client says a byte); http/1.1 is HTTP/1 (no preface detection needed)."""
    up = await start_upstream(nursery)
    _, port = await start_proxy(nursery, config(up.port, [proxy_chain(tls_context(pki.server))]))
    with trio.fail_after(10):
        stream = await tls_connect(port, client_context(pki, alpn=["h2"]))
        assert stream.selected_alpn_protocol() == "h2"
        frame = await stream.receive_some(9)
        assert frame[3] == 0x04  # a SETTINGS frame, unprompted
        await stream.aclose()
        stream = await tls_connect(port, client_context(pki, alpn=["http/1.1"]))
        assert stream.selected_alpn_protocol() == "http/1.1"
        async with Client(stream) as client:  # type: ignore[arg-type]
            await client.send(get("/echo"))
            response = await client.response()
            assert response.status == 200 and response.version == "HTTP/1.1"


async def test_alpn_offer_follows_the_proxys_protocol(nursery, pki):
    up = await start_upstream(nursery)
    chains = [
        proxy_chain(
            tls_context(pki.server), protocol="Http1", match={"server_names": ["localhost"]}
        ),
        proxy_chain(tls_context(pki.server), protocol="Http2"),
    ]
    _, port = await start_proxy(nursery, config(up.port, chains))
    ctx = client_context(pki, alpn=["h2", "http/1.1"])
    with trio.fail_after(10):
        one = await tls_connect(port, ctx, "localhost")
        assert one.selected_alpn_protocol() == "http/1.1"
        await one.aclose()
        two = await tls_connect(port, ctx, "api.example.test")
        assert two.selected_alpn_protocol() == "h2"
        await two.aclose()


async def test_tls_context_set_by_sni_with_inline_pem(nursery, pki):
    """Several certificates on one chain (MOSN's tls_context_set), chosen by SNI, the first
    as the default; inline PEM works as files do, the local identity included."""
    up = await start_upstream(nursery)
    tls_set = [
        {"status": True, "cert_chain": pki.server.cert_pem, "private_key": pki.server.key_pem},
        tls_context(pki.other_server),
    ]
    chain = proxy_chain()
    chain["tls_context_set"] = tls_set
    server, port = await start_proxy(nursery, config(up.port, [chain]))
    ctx = client_context(pki, check_hostname=False)
    with trio.fail_after(10):
        for name, cn in (
            ("other.example.test", "other.example.test"),
            ("api.example.test", "localhost"),
            ("unknown.test", "localhost"),
        ):
            stream = await tls_connect(port, ctx, name)
            assert peer_cn(stream) == cn
            async with Client(stream) as client:  # type: ignore[arg-type]
                await client.send(get("/echo"))
                assert (await client.response()).status == 200
                (conn,) = server.listeners["ingress"].connections
                assert conn.tls is not None
                assert conn.tls.local_subject == f"CN={cn},O=trio-mesh tests"


async def test_rotation_under_load_drops_nothing(nursery, pki, tmp_path: Path):
    """New TLS connections keep coming while reloads swap the certificate: every request is
    answered, and both certificates were served."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    rotated = pki.ca.issue("rotated-load", cn="rotated", dns=("localhost",))
    up = await start_upstream(nursery)
    cfg = config(
        up.port, [proxy_chain({"status": True, "cert_chain": str(cert), "private_key": str(key)})]
    )
    server, port = await start_proxy(nursery, cfg)
    ctx = client_context(pki)
    seen: list[str] = []
    failures: list[BaseException] = []
    done = trio.Event()
    progress = [trio.Event()]  # set (and replaced) on every new connection

    async def client_loop() -> None:
        while not done.is_set():
            try:
                stream = await tls_connect(port, ctx)
                seen.append(peer_cn(stream))
                progress[0].set()
                async with Client(stream) as client:  # type: ignore[arg-type]
                    for _ in range(3):  # keep-alive requests too
                        await client.send(get("/echo"))
                        assert (await client.response()).status == 200
            except Exception as exc:
                failures.append(exc)

    async def connections(n: int) -> None:
        target = len(seen) + n
        while len(seen) < target:
            progress[0] = trio.Event()
            await progress[0].wait()

    with trio.fail_after(60):
        async with trio.open_nursery() as clients:
            for _ in range(4):
                clients.start_soon(client_loop)
            for pair in ((rotated.cert, rotated.key), (pki.server.cert, pki.server.key)) * 2:
                await connections(10)
                shutil.copy(pair[0], cert)
                shutil.copy(pair[1], key)
                await server.apply(cfg)
            await connections(10)
            done.set()
    assert failures == []
    assert {"localhost", "rotated"} <= set(seen)
