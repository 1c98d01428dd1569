"""Mutual TLS end to end: what a verified client certificate gives the rest of the proxy.

curl with a client certificate (``tests/tls_pki.py``) -> the proxy's TLS listener (HTTP/1.1 and
HTTP/2) -> a real upstream that echoes what it received: ``x-forwarded-client-cert`` in each
mode, a route matching the SPIFFE id in it, the access log's ``DOWNSTREAM_*`` variables, and a
stream filter that authorizes by the peer's URI SAN. The attacker's side of each: a forged
header, another workload's certificate, a plaintext connection.
"""

from __future__ import annotations

import hashlib
import re
import ssl

import grpc
import pytest
import trio

from tests import filter_helpers  # noqa: F401 - registers t_spiffe_only
from tests.grpc_helpers import EchoStub, grpc_upstream, in_thread
from tests.http_helpers import (
    access_log,
    echoed,
    get,
    read_access_log,
    request,
    running_proxy,
    start_upstream,
)
from tests.mtls_helpers import (
    curl_result,
    curl_tls,
    echoed_headers,
    mtls_config,
)
from tests.rpc_helpers import BoltClient, echo_upstream
from tests.rpc_helpers import request as bolt_request
from tests.tls_pki import CLIENT_SPIFFE, SERVER_SPIFFE
from trio_mesh.protocols.xprotocol.bolt import ResponseStatus

__all__ = ["grpc_upstream"]  # the fixture, imported for the test below
OTHER_SPIFFE = "spiffe://cluster.local/ns/default/sa/other"
FORGED = f"By=spiffe://evil;URI={CLIENT_SPIFFE}"
BOLT_SERVICE = "com.example.Echo:1.0"
ROUTES = [{"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}]


@pytest.fixture
async def upstream(nursery):
    return await start_upstream(nursery)


@pytest.fixture(scope="module")
def other_client(pki):
    """A certificate ``pki.ca`` signed for another workload."""
    return pki.ca.issue("other-client", cn="other", uris=(OTHER_SPIFFE,), client=True)


def der(pair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert_pem)


def element(pki, *, uri: bool = False, subject: bool = False) -> str:
    """This proxy's XFCC element for ``pki.client``."""
    text = f"By={SERVER_SPIFFE};Hash={hashlib.sha256(der(pki.client)).hexdigest()}"
    if subject:
        text += ';Subject="CN=client,O=trio-mesh tests"'
    if uri:
        text += f";URI={CLIENT_SPIFFE}"
    return text


async def through(pki, config, *, client=None, headers=(), http2=False, path="/echo"):
    """One curl request through a proxy running ``config``: (status, HTTP version, body)."""
    async with running_proxy(config) as (server, _):
        port = server.addresses["ingress"][1]
        code, out, err = await curl_tls(
            port, pki, path, client=client, headers=headers, http2=http2
        )
    assert code == 0, err
    return curl_result(out)


# --------------------------------------------------------------------------- XFCC


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_sanitize_set_replaces_a_forged_header_with_the_verified_identity(
    pki, upstream, http2
):
    config = mtls_config(
        pki,
        ROUTES,
        {"up": upstream.port},
        proxy={
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": {"uri": True, "subject": True},
        },
    )
    with trio.fail_after(20):
        status, version, body = await through(
            pki,
            config,
            client=pki.client,
            headers=(f"X-Forwarded-Client-Cert: {FORGED}",),
            http2=http2,
        )
    assert (status, version) == (200, "2" if http2 else "1.1")
    seen = echoed_headers(body)
    assert seen.getall("x-forwarded-client-cert") == [element(pki, uri=True, subject=True)]
    assert seen.get("x-forwarded-proto") == "https"


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_default_sanitize_removes_the_header_even_under_mutual_tls(pki, upstream, http2):
    config = mtls_config(pki, ROUTES, {"up": upstream.port}, plaintext_listener=True)
    with trio.fail_after(20):
        async with running_proxy(config) as (server, _):
            port = server.addresses["ingress"][1]
            code, out, err = await curl_tls(
                port,
                pki,
                client=pki.client,
                headers=(f"x-forwarded-client-cert: {FORGED}",),
                http2=http2,
            )
            assert code == 0, err
            # the same on plaintext: a client can never forge it
            plain = server.addresses["plain"][1]
            forged = get(headers=f"X-Forwarded-Client-Cert: {FORGED}\r\n")
            plain_seen = echoed(await request(plain, forged))["headers"]
    status, _, body = curl_result(out)
    assert status == 200
    assert "x-forwarded-client-cert" not in echoed_headers(body)
    assert "x-forwarded-client-cert" not in plain_seen
    assert plain_seen.get("x-forwarded-proto") == "http"


async def test_append_forward_appends_and_forward_only_keeps(pki, upstream):
    proxy = {"forward_client_cert_details": "APPEND_FORWARD"}
    config = mtls_config(pki, ROUTES, {"up": upstream.port}, proxy=proxy)
    previous = "By=spiffe://edge;Hash=00"
    with trio.fail_after(20):
        _, _, body = await through(
            pki, config, client=pki.client, headers=(f"x-forwarded-client-cert: {previous}",)
        )
        seen = echoed_headers(body).getall("x-forwarded-client-cert")
        assert seen == [f"{previous},{element(pki)}"]
        _, _, body = await through(pki, config, client=pki.client)
        assert echoed_headers(body).getall("x-forwarded-client-cert") == [element(pki)]
        config = mtls_config(
            pki,
            ROUTES,
            {"up": upstream.port},
            proxy={"forward_client_cert_details": "FORWARD_ONLY"},
        )
        _, _, body = await through(
            pki, config, client=pki.client, headers=(f"x-forwarded-client-cert: {previous}",)
        )
        assert echoed_headers(body).getall("x-forwarded-client-cert") == [previous]


@pytest.mark.parametrize("mode", ["FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET"])
async def test_tls_without_a_client_certificate_is_not_trusted(pki, upstream, mode):
    """Envoy: only a connection whose client presented a certificate keeps or gets XFCC."""
    proxy = {"forward_client_cert_details": mode}
    config = mtls_config(pki, ROUTES, {"up": upstream.port}, proxy=proxy, verify_client=False)
    with trio.fail_after(20):
        status, _, body = await through(
            pki, config, headers=(f"x-forwarded-client-cert: {FORGED}",)
        )
    assert status == 200
    seen = echoed_headers(body)
    assert "x-forwarded-client-cert" not in seen
    assert seen.get("x-forwarded-proto") == "https"


async def test_an_optional_client_certificate_decides_per_connection(pki, upstream):
    """A listener that verifies a certificate when the client presents one: with one the
    request gets this hop's element, without one the forged header is just removed."""
    proxy = {
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"uri": True},
    }
    config = mtls_config(pki, ROUTES, {"up": upstream.port}, proxy=proxy, optional=True)
    forged = (f"x-forwarded-client-cert: {FORGED}",)
    with trio.fail_after(20):
        async with running_proxy(config) as (server, _):
            port = server.addresses["ingress"][1]
            code, out, err = await curl_tls(port, pki, headers=forged)
            assert code == 0, err
            without = echoed_headers(curl_result(out)[2])
            code, out, err = await curl_tls(port, pki, client=pki.client, headers=forged)
            assert code == 0, err
            with_cert = echoed_headers(curl_result(out)[2])
    assert "x-forwarded-client-cert" not in without
    assert with_cert.getall("x-forwarded-client-cert") == [f"{FORGED},{element(pki, uri=True)}"]


async def test_always_forward_only_trusts_whoever_connects(pki, upstream):
    proxy = {"forward_client_cert_details": "ALWAYS_FORWARD_ONLY"}
    config = mtls_config(pki, ROUTES, {"up": upstream.port}, proxy=proxy, verify_client=False)
    with trio.fail_after(20):
        _, _, body = await through(pki, config, headers=(f"x-forwarded-client-cert: {FORGED}",))
    assert echoed_headers(body).getall("x-forwarded-client-cert") == [FORGED]


# --------------------------------------------------------------------------- routing on XFCC

ADMIN_ROUTES = [
    {
        "match": {
            "prefix": "/admin",
            "headers": [
                {
                    "name": "x-forwarded-client-cert",
                    "value": ".*;URI=" + re.escape(CLIENT_SPIFFE) + "(;.*)?",
                    "regex": True,
                }
            ],
        },
        "route": {"cluster_name": "up"},
    },
    {"match": {"prefix": "/admin"}, "direct_response": {"status": 403, "body": "no\n"}},
    {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}},
]


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_a_route_matches_the_spiffe_id_and_a_forged_one_does_not(
    pki, upstream, other_client, http2
):
    proxy = {
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": True},
    }
    config = mtls_config(pki, ADMIN_ROUTES, {"up": upstream.port}, proxy=proxy)
    with trio.fail_after(30):
        async with running_proxy(config) as (server, _):
            port = server.addresses["ingress"][1]

            async def admin(client, *headers):
                code, out, err = await curl_tls(
                    port, pki, "/admin", client=client, headers=headers, http2=http2
                )
                assert code == 0, err
                return curl_result(out)[0]

            assert await admin(pki.client) == 200
            # another workload, even one sending the admin's identity itself: refused
            assert await admin(other_client) == 403
            forged = f"x-forwarded-client-cert: {element(pki, uri=True)}"
            assert await admin(other_client, forged) == 403
    assert [r["target"] for r in upstream.requests] == ["/admin"]


async def test_append_forward_trusts_the_clients_elements_in_routing_too(
    pki, upstream, other_client
):
    """Why the README says to match on XFCC only with SANITIZE_SET: APPEND_FORWARD keeps what
    a (verified) client wrote, as Envoy does, and the route's regex matches that too."""
    proxy = {
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"uri": True},
    }
    # a "contains" regex: the id anywhere in the header
    contains = ".*URI=" + re.escape(CLIENT_SPIFFE) + "[;,].*"
    header = {"name": "x-forwarded-client-cert", "value": contains, "regex": True}
    admin = {**ADMIN_ROUTES[0], "match": {"prefix": "/admin", "headers": [header]}}
    routes = [admin, *ADMIN_ROUTES[1:]]
    config = mtls_config(pki, routes, {"up": upstream.port}, proxy=proxy)
    forged = f"x-forwarded-client-cert: {element(pki, uri=True)}"
    with trio.fail_after(20):
        status, _, body = await through(
            pki, config, client=other_client, headers=(forged,), path="/admin"
        )
    assert status == 200
    (seen,) = echoed_headers(body).getall("x-forwarded-client-cert")
    assert seen.startswith(element(pki, uri=True) + ",") and seen.endswith(f"URI={OTHER_SPIFFE}")


# --------------------------------------------------------------------------- access log

LOG_FORMAT = (
    "%REQUESTED_SERVER_NAME%|%DOWNSTREAM_TLS_VERSION%|%DOWNSTREAM_PEER_SUBJECT%"
    "|%DOWNSTREAM_PEER_ISSUER%|%DOWNSTREAM_PEER_URI_SAN%|%DOWNSTREAM_PEER_FINGERPRINT_256%"
    "|%DOWNSTREAM_LOCAL_URI_SAN%|%DOWNSTREAM_TLS_CIPHER%|%DOWNSTREAM_PEER_SERIAL%|%path%"
)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_access_log_variables(pki, upstream, tmp_path, http2):
    text_log = tmp_path / "text.log"
    keys, json_log = access_log(tmp_path)
    keys["access_logs"].append({"log_path": str(text_log), "log_format": LOG_FORMAT})
    config = mtls_config(pki, ROUTES, {"up": upstream.port}, listener=keys, plaintext_listener=True)
    with trio.fail_after(20):
        async with running_proxy(config) as (server, _):
            port = server.addresses["ingress"][1]
            code, _, err = await curl_tls(port, pki, "/mtls", client=pki.client, http2=http2)
            assert code == 0, err
            await request(server.addresses["plain"][1], get("/plain"))
    lines = sorted(text_log.read_text().splitlines(), key=lambda line: line.endswith("/plain"))
    fields = lines[0].split("|")
    assert fields[:5] == [
        "localhost",
        fields[1],
        "CN=client,O=trio-mesh tests",
        "CN=ca,O=trio-mesh tests",
        CLIENT_SPIFFE,
    ]
    assert fields[1] in ("TLSv1.2", "TLSv1.3")
    assert fields[5] == hashlib.sha256(der(pki.client)).hexdigest()
    assert fields[6] == SERVER_SPIFFE
    assert fields[7] != "-" and fields[8] not in ("-", "") and fields[8] == fields[8].lower()
    assert fields[9] == "/mtls"
    assert lines[1] == "-|-|-|-|-|-|-|-|-|/plain"
    records = {r["path"]: r for r in read_access_log(json_log)}
    assert records["/mtls"]["DOWNSTREAM_PEER_URI_SAN"] == CLIENT_SPIFFE
    assert records["/mtls"]["requested_server_name"] == "localhost"
    assert records["/plain"]["DOWNSTREAM_PEER_URI_SAN"] is None
    assert records["/plain"]["DOWNSTREAM_TLS_VERSION"] is None


# --------------------------------------------------------------------------- stream filters


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_a_filter_authorizes_by_the_peers_spiffe_id(pki, upstream, other_client, http2):
    filters = [{"type": "t_spiffe_only", "config": {"spiffe_id": CLIENT_SPIFFE}}]
    config = mtls_config(
        pki, ROUTES, {"up": upstream.port}, stream_filters=filters, plaintext_listener=True
    )
    with trio.fail_after(30):
        async with running_proxy(config) as (server, _):
            port = server.addresses["ingress"][1]
            code, out, err = await curl_tls(port, pki, client=pki.client, http2=http2)
            assert code == 0, err
            status, _, body = curl_result(out)
            assert status == 200
            assert echoed_headers(body).get("x-peer-subject") == "CN=client,O=trio-mesh tests"
            code, out, err = await curl_tls(port, pki, client=other_client, http2=http2)
            assert code == 0, err
            assert curl_result(out)[:1] == (403,)
            # plaintext, with every header a client could forge: still refused
            plain = server.addresses["plain"][1]
            forged = get(headers=f"x-forwarded-client-cert: {element(pki, uri=True)}\r\n")
            assert (await request(plain, forged)).status == 403
    assert len(upstream.requests) == 1


# --------------------------------------------------------------------------- gRPC


async def test_grpc_over_mutual_tls_gets_the_verified_identity(pki, grpc_upstream):
    """A grpcio secure channel with a client certificate: the upstream sees the proxy's XFCC,
    never the metadata the client sent under that name."""
    proxy = {
        "upstream_protocol": "Http2",
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": True},
    }
    config = mtls_config(pki, ROUTES, {"up": grpc_upstream.port}, proxy=proxy)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert.read_bytes(),
        private_key=pki.client.key.read_bytes(),
        certificate_chain=pki.client.cert.read_bytes(),
    )
    with trio.fail_after(30):
        async with running_proxy(config) as (server, _):
            port = server.addresses["ingress"][1]
            channel = grpc.secure_channel(
                f"localhost:{port}", credentials, options=[("grpc.enable_http_proxy", 0)]
            )
            with EchoStub(channel) as stub:
                response = await in_thread(
                    stub.Unary,
                    b"ping",
                    timeout=10,
                    metadata=(("x-forwarded-client-cert", FORGED),),
                )
    assert response == b"ping"
    (call,) = grpc_upstream.calls_of("Unary")
    xfcc = [v for k, v in call.metadata if k == "x-forwarded-client-cert"]
    assert xfcc == [element(pki, uri=True)]


# --------------------------------------------------------------------------- RPC


async def bolt_over_tls(port: int, pki, client) -> BoltClient:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.load_cert_chain(client.cert, client.key)
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    await stream.do_handshake()
    return BoltClient(stream)


async def test_bolt_over_mutual_tls_filters_and_access_log(pki, nursery, tmp_path, other_client):
    """RPC requests carry the connection's TLS too: a filter authorizes bolt calls by the
    peer's SPIFFE id, and their access log lines have the DOWNSTREAM_* variables."""
    up = await echo_upstream(nursery)
    keys, path = access_log(tmp_path)
    service = {"headers": [{"name": "service", "value": BOLT_SERVICE}]}
    routes = [{"match": service, "route": {"cluster_name": "up"}}]
    filters = [{"type": "t_spiffe_only", "config": {"spiffe_id": CLIENT_SPIFFE}}]
    config = mtls_config(
        pki,
        routes,
        {"up": up},
        proxy={"downstream_protocol": "bolt", "upstream_protocol": "Auto"},
        listener=keys,
        stream_filters=filters,
    )
    with trio.fail_after(20):
        async with running_proxy(config) as (server, _):
            port = server.addresses["ingress"][1]
            allowed = await bolt_over_tls(port, pki, pki.client)
            await allowed.send(bolt_request(1, b"ping", service=BOLT_SERVICE))
            answered = await allowed.read()
            refused_client = await bolt_over_tls(port, pki, other_client)
            await refused_client.send(bolt_request(2, b"ping", service=BOLT_SERVICE))
            refused = await refused_client.read()
    assert (answered.request_id, answered.status) == (1, ResponseStatus.SUCCESS)
    assert refused.request_id == 2 and refused.status != ResponseStatus.SUCCESS
    ok, no = sorted(read_access_log(path), key=lambda line: line["response_code"])
    assert (ok["protocol"], ok["response_code"]) == ("bolt", 200)
    assert ok["DOWNSTREAM_PEER_URI_SAN"] == CLIENT_SPIFFE
    assert ok["DOWNSTREAM_PEER_SUBJECT"] == "CN=client,O=trio-mesh tests"
    assert ok["requested_server_name"] == "localhost"
    assert (no["response_code"], no["DOWNSTREAM_PEER_URI_SAN"]) == (403, OTHER_SPIFFE)
