"""The ``proxy_protocol`` listener filter end to end: the address a PROXY header carries is
the downstream address for X-Forwarded-For, the access log and ip_access; curl's header is
read; malformed, oversized, slow and missing headers close the connection and are counted."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import shutil
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.http_helpers import (
    Client,
    access_log,
    curl,
    echoed,
    get,
    http_config,
    raw_exchange,
    read_access_log,
    request,
    running_proxy,
    start_proxy,
    start_upstream,
    to,
)
from tests.upstream import Upstream
from trio_mesh import Server
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.config.filter_configs import ProxyProtocolConfig
from trio_mesh.protocols.proxy_protocol import V2_SIGNATURE


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> Upstream:
    return await start_upstream(nursery)


def pp(config: dict[str, Any] | None = None, **listener: Any) -> dict[str, Any]:
    """``listener`` keys of a listener that reads PROXY headers."""
    return {"listener_filters": [{"type": "proxy_protocol", "config": config or {}}], **listener}


def v1(src: str, sport: int = 40000, dst: str = "10.0.0.1", dport: int = 80) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(
    src: str, sport: int = 40000, dst: str = "2001:db8::1", dport: int = 80, *, local: bool = False
) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = a.packed + b.packed + struct.pack("!HH", sport, dport) + b"\x01\x00\x02h2"  # a TLV
    head = V2_SIGNATURE + bytes([0x20 if local else 0x21, 0x11 if a.version == 4 else 0x21])
    return head + struct.pack("!H", len(body)) + body


async def proxy(nursery: trio.Nursery, upstream: Upstream, **listener: Any) -> tuple[Server, int]:
    return await start_proxy(nursery, http_config([to("up")], {"up": upstream.port}, **listener))


def errors(server: Server) -> int:
    return server.listeners["ingress"].stats.downstream_cx_proxy_proto_error


# --------------------------------------------------------------------------- config


def test_mosn_listener_filters_load() -> None:
    config = http_config(
        listener=pp({"allow_requests_without_proxy_protocol": True}, listener_filters_timeout="2s")
    )
    (lst,) = config.listeners
    (lf,) = lst.listener_filters
    assert lf.type == "proxy_protocol"
    assert lf.config == ProxyProtocolConfig(allow_requests_without_proxy_protocol=True)
    assert lst.listener_filters_timeout == 2.0
    assert http_config().listeners[0].listener_filters_timeout == 15.0  # Envoy's default


def _doc(listener: dict[str, Any]) -> dict[str, Any]:
    chain = {"filters": [{"type": "tcp_proxy", "config": {"cluster": "c"}}]}
    lst = {"name": "l", "address": "127.0.0.1:0", "filter_chains": [chain], **listener}
    return {
        "servers": [{"listeners": [lst]}],
        "cluster_manager": {"clusters": [{"name": "c", "hosts": [{"address": "127.0.0.1:1"}]}]},
    }


def test_tlv_keys_warn_and_disallowed_versions_is_refused() -> None:
    loaded = parse_config(_doc(pp({"rules": [{"tlv_type": 1}], "pass_through_tlvs": {}})))
    at = "servers[0].listeners[0].listener_filters[0].config"
    assert any(f"{at}.rules" in w for w in loaded.warnings), loaded.warnings
    assert any(f"{at}.pass_through_tlvs" in w for w in loaded.warnings)
    with pytest.raises(ConfigError, match=re.escape(f"{at}.disallowed_versions: not supported")):
        parse_config(_doc(pp({"disallowed_versions": ["V1"]})))


def test_unknown_listener_filter_is_an_error() -> None:
    doc = _doc({"listener_filters": [{"type": "http_inspector"}]})
    with pytest.raises(ConfigError, match=r"listener_filters\[0\]\.type: unknown listener filter"):
        parse_config(doc)


# --------------------------------------------------------------------------- the address


async def test_v1_address_is_x_forwarded_for_and_in_the_access_log(
    upstream: Upstream, tmp_path: Path
) -> None:
    keys, log_path = access_log(tmp_path)
    config = http_config([to("up")], {"up": upstream.port}, listener=pp(**keys))
    async with running_proxy(config) as (_, port):
        with trio.fail_after(5):
            # The header and the request in one write: the bytes after the header are replayed.
            response = await request(port, v1("203.0.113.9", 5555) + get("/echo"))
    assert echoed(response)["headers"].getall("x-forwarded-for") == ["203.0.113.9"]
    (entry,) = read_access_log(log_path)
    assert entry["downstream_remote_address"] == "203.0.113.9:5555"
    assert entry["downstream_local_address"] == "10.0.0.1:80"


async def test_v2_ipv6_address_and_keep_alive(nursery: trio.Nursery, upstream: Upstream) -> None:
    _, port = await proxy(nursery, upstream, listener=pp())
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(v2("2001:db8::5"))  # the header alone, the request after
            for _ in range(2):  # the address is the connection's, for every request
                await client.send(get("/echo"))
                info = echoed(await client.response())
                assert info["headers"].getall("x-forwarded-for") == ["2001:db8::5"]


async def test_v2_local_keeps_the_socket_address(nursery: trio.Nursery, upstream: Upstream):
    server, port = await proxy(nursery, upstream, listener=pp())
    with trio.fail_after(5):
        response = await request(port, v2("192.0.2.1", local=True) + get("/echo"))
    assert echoed(response)["headers"].getall("x-forwarded-for") == ["127.0.0.1"]
    assert errors(server) == 0


async def test_curl_haproxy_protocol(nursery: trio.Nursery, upstream: Upstream) -> None:
    # curl sends a v1 header with its own address: the proxy reads it and serves the request
    # (without the filter, "PROXY TCP4 ..." would be a bad request).
    server, port = await proxy(nursery, upstream, listener=pp())
    code, out, err = await curl("--haproxy-protocol", f"http://127.0.0.1:{port}/echo")
    assert code == 0, err
    assert b'"x-forwarded-for", "127.0.0.1"' in out.lower().replace(b"'", b'"'), out
    assert errors(server) == 0


async def test_ip_access_denies_by_the_carried_address(nursery: trio.Nursery, upstream: Upstream):
    ip_access = {"type": "ip_access", "config": {"action": "deny", "ips": ["203.0.113.0/24"]}}
    listener = pp()
    listener["filter_chains"] = [
        {"filters": [ip_access, {"type": "proxy", "config": {"router_config_name": "r"}}]}
    ]
    config = http_config([to("up")], {"up": upstream.port}, listener=listener)
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        assert await raw_exchange(port, v1("203.0.113.50") + get("/echo")) == b""
        allowed = await request(port, v1("198.51.100.7") + get("/echo"))
    assert echoed(allowed)["headers"].getall("x-forwarded-for") == ["198.51.100.7"]
    assert len(upstream.requests) == 1


# --------------------------------------------------------------------------- attacks


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP4 " + b"1" * 200,  # no CRLF in 107 bytes
        V2_SIGNATURE + b"\x21\x11\xff\xff",  # a 64 KiB v2 header: refused from its length
        V2_SIGNATURE + b"\x21\x11\x00\x0e" + b"\x00" * 12 + b"\x01\x00",  # a cut TLV
        b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",  # no header at all
    ],
)
async def test_bad_or_missing_header_closes_and_counts(
    nursery: trio.Nursery, upstream: Upstream, header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    server, port = await proxy(nursery, upstream, listener=pp())
    with caplog.at_level(logging.INFO, "trio_mesh.listener"):
        assert await raw_exchange(port, header + get("/echo")) == b""
    assert errors(server) == 1
    assert upstream.requests == []
    assert "PROXY protocol" in caplog.text


async def test_slow_header_is_closed_at_the_timeout(nursery: trio.Nursery, upstream: Upstream):
    server, port = await proxy(nursery, upstream, listener=pp(listener_filters_timeout="0.3s"))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            start = trio.current_time()
            for byte in b"PROXY TCP4 ":  # a byte at a time, then nothing
                await client.send(bytes([byte]))
            assert await client.closed()
            assert trio.current_time() - start < 3
    assert errors(server) == 1
    assert server.listeners["ingress"].stats.downstream_cx_active == 0


async def test_without_a_header_served_only_when_allowed(nursery: trio.Nursery, upstream):
    listener = pp({"allow_requests_without_proxy_protocol": True})
    server, port = await proxy(nursery, upstream, listener=listener)
    with trio.fail_after(5):
        plain = await request(port, get("/echo"))
        carried = await request(port, v1("192.0.2.44") + get("/echo"))
    assert echoed(plain)["headers"].getall("x-forwarded-for") == ["127.0.0.1"]
    assert echoed(carried)["headers"].getall("x-forwarded-for") == ["192.0.2.44"]
    assert errors(server) == 0


# --------------------------------------------------------------------------- with TLS


async def test_header_then_tls_on_a_tls_chain(nursery: trio.Nursery, upstream: Upstream, pki):
    # The header comes first in cleartext (as a TLS-passing load balancer sends it), then the
    # ClientHello: the chain dispatcher and the handshake read what follows the header.
    chain = {
        "filters": [{"type": "proxy", "config": {"router_config_name": "r"}}],
        "tls_context": {
            "status": True,
            "cert_chain": str(pki.server.cert),
            "private_key": str(pki.server.key),
        },
    }
    server, port = await proxy(nursery, upstream, listener=pp(filter_chains=[chain]))
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    with trio.fail_after(5):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(v1("198.51.100.20"))
        stream = trio.SSLStream(tcp, ctx, server_hostname="localhost", https_compatible=True)
        async with stream:
            await stream.do_handshake()
            await stream.send_all(get("/echo", headers="Connection: close\r\n"))
            raw = b""
            while data := await stream.receive_some(65536):
                raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    assert json.loads(body)["headers"].count(["x-forwarded-for", "198.51.100.20"]) == 1
    assert server.listeners["ingress"].stats.ssl_handshake == 1


async def test_drain_closes_a_connection_still_reading_its_header(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    server, port = await proxy(nursery, upstream, listener=pp())
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(b"PROXY TCP4 ")
            await trio.testing.wait_all_tasks_blocked()  # accepted, waiting for the rest
            assert server.listeners["ingress"].stats.downstream_cx_active == 1
            assert await server.drain(5)  # no request has begun: nothing to wait for
            assert await client.closed()
    assert errors(server) == 0  # a drain, not the client's fault


async def test_a_zero_timeout_leaves_the_idle_timeout(nursery: trio.Nursery, upstream) -> None:
    # Envoy's 0: no timeout of the filter's own; the connection's idle timeout still ends it.
    listener = pp(listener_filters_timeout="0s", connection_idle_timeout="0.3s")
    server, port = await proxy(nursery, upstream, listener=listener)
    assert server.config.listeners[0].listener_filters_timeout == 0
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(b"PROXY TCP4 ")
            assert await client.closed()
    stats = server.listeners["ingress"].stats
    assert (stats.downstream_cx_idle_timeout, errors(server)) == (1, 0)


async def test_certificate_rotation_reaches_a_chain_behind_the_filter(
    nursery: trio.Nursery, upstream: Upstream, pki: Any, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    chain = {
        "filters": [{"type": "proxy", "config": {"router_config_name": "r"}}],
        "tls_context": {"status": True, "cert_chain": str(cert), "private_key": str(key)},
    }
    config = http_config([to("up")], {"up": upstream.port}, listener=pp(filter_chains=[chain]))
    server, port = await start_proxy(nursery, config)
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))

    async def peer_cn() -> str:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(v1("198.51.100.21"))
        async with trio.SSLStream(tcp, ctx, server_hostname="localhost") as stream:
            await stream.do_handshake()
            subject = dict(x[0] for x in stream.getpeercert()["subject"])  # type: ignore[index]
            return str(subject["commonName"])

    with trio.fail_after(10):
        assert await peer_cn() == "localhost"
        rotated = pki.ca.issue("pp-rotated", cn="rotated", dns=("localhost",))
        shutil.copy(rotated.cert, cert)
        shutil.copy(rotated.key, key)
        await server.apply(config)  # the same configuration: the files are read again
        assert await peer_cn() == "rotated"


def test_proxy_protocol_twice_is_an_error() -> None:
    twice = {"listener_filters": [{"type": "proxy_protocol"}, {"type": "proxy_protocol"}]}
    with pytest.raises(ConfigError, match=re.escape("listener_filters[1].type: proxy_protocol")):
        parse_config(_doc(twice))
