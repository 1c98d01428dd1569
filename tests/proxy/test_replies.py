"""The local reply table: one typed value per reply kind, mapped per protocol."""

from __future__ import annotations

import pytest

from trio_mesh.filters.stream import LocalReply
from trio_mesh.protocols.http1 import encode_response_head
from trio_mesh.protocols.xprotocol import ErrorKind
from trio_mesh.proxy import grpc, replies
from trio_mesh.proxy.replies import Cause, Flag, Reply

CONSTANTS = [
    (replies.NO_ROUTE, 404, "NR", grpc.UNIMPLEMENTED, ErrorKind.NO_ROUTE, Cause.REFUSED),
    (replies.NO_CLUSTER, 503, "NC", grpc.UNAVAILABLE, ErrorKind.NO_ROUTE, Cause.REFUSED),
    (
        replies.NO_HEALTHY_UPSTREAM,
        503,
        "UH",
        grpc.UNAVAILABLE,
        ErrorKind.NO_HEALTHY_HOST,
        Cause.REFUSED,
    ),
    (replies.OVERFLOW, 503, "UO", grpc.UNAVAILABLE, ErrorKind.OVERFLOW, Cause.REFUSED),
    (
        replies.CONNECT_FAILURE,
        503,
        "UF",
        grpc.UNAVAILABLE,
        ErrorKind.UPSTREAM_FAILURE,
        Cause.CONNECT,
    ),
    (replies.UPSTREAM_RESET, 502, "UC", grpc.UNAVAILABLE, ErrorKind.UPSTREAM_RESET, Cause.RESET),
    (replies.BAD_RESPONSE, 502, "UPE", grpc.UNAVAILABLE, ErrorKind.UPSTREAM_FAILURE, Cause.RESET),
    (replies.TIMEOUT, 504, "UT", grpc.DEADLINE_EXCEEDED, ErrorKind.TIMEOUT, Cause.RESET),
]


@pytest.mark.parametrize(("reply", "status", "flag", "grpc_status", "rpc", "cause"), CONSTANTS)
def test_each_constant_maps_to_every_protocol(reply, status, flag, grpc_status, rpc, cause):
    assert (reply.status, reply.flag, reply.grpc_status, reply.rpc_error, reply.cause) == (
        status,
        flag,
        grpc_status,
        rpc,
        cause,
    )
    plain = (b"content-type", b"text/plain")
    length = len(reply.body)
    # The pre-encoded bytes are exactly what the encoder writes for a plain GET.
    assert reply.h1_keep == encode_response_head(status, None, [plain], length=length) + reply.body
    assert reply.h1_close == (
        encode_response_head(status, None, [plain, (b"connection", b"close")], length=length)
        + reply.body
    )
    trailers = dict(reply.grpc_trailers_only())
    assert trailers[b":status"] == b"200"
    assert trailers[b"grpc-status"] == b"%d" % grpc_status
    assert trailers[b"grpc-message"] == grpc.encode_message(reply.body.decode().strip())
    # Each answer gets its own list: a codec may keep or change what it is given.
    assert reply.grpc_trailers_only() is not reply.grpc_trailers_only()


def test_a_reply_made_at_run_time_maps_its_status_as_envoy_does():
    retry = Reply(503, Flag.NONE, b"")
    assert (retry.grpc_status, retry.rpc_error, retry.cause) == (
        grpc.UNAVAILABLE,
        ErrorKind.OVERFLOW,
        Cause.STATUS,
    )
    assert retry.h1_keep is None  # not a constant: encoded when answered
    assert dict(retry.grpc_trailers_only())[b"grpc-message"] == b"HTTP 503"
    bad = Reply(400, Flag.DOWNSTREAM_PROTOCOL_ERROR, b"bad\n")
    assert (bad.grpc_status, bad.rpc_error) == (grpc.INTERNAL, ErrorKind.CODEC_ERROR)


def test_a_filter_reply_keeps_its_own_codes_and_headers():
    local = LocalReply(
        403,
        "denied",
        headers=[("X-Why", "policy")],
        grpc_status=grpc.PERMISSION_DENIED,
        grpc_message="nope",
        rpc_error="NO_ROUTE",
        flag="RBAC",
        close=True,
    )
    reply = Reply.from_filter(local)
    assert reply.by_filter and reply.close
    assert (reply.status, reply.flag, reply.body) == (403, "RBAC", b"denied")
    assert (reply.grpc_status, reply.rpc_error) == (grpc.PERMISSION_DENIED, ErrorKind.NO_ROUTE)
    trailers = reply.grpc_trailers_only(reply.headers)
    assert (b"x-why", b"policy") in trailers
    assert dict(trailers)[b"grpc-message"] == b"nope"
    # A filter's failure maps by its flag; an unknown RPC kind answers INTERNAL.
    failed = Reply.from_filter(LocalReply(500, "x", flag="FF", rpc_error="BOGUS"))
    assert (failed.grpc_status, failed.rpc_error) == (grpc.INTERNAL, ErrorKind.INTERNAL)
