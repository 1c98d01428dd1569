"""Route retries of HTTP/2 downstream streams (``proxy/retry.py``, the same ``RetryState`` as
HTTP/1): on a status, a connect failure, a reset, a per-try timeout; never back to the host that
just failed when the cluster has another."""

from __future__ import annotations

import trio

from tests.h2_upstream import open_h2_client, start_h2_upstream
from tests.http_helpers import (
    closed_port,
    http_config,
    start_proxy,
    start_raw_server,
    start_upstream,
    to,
)


def retried(cluster: dict, up: str, **policy) -> object:
    return http_config(
        [to("up", retry_policy=policy)],
        {"up": cluster},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": up},
    )


async def always_503(nursery: trio.Nursery, seen: list[str]) -> int:
    """A raw HTTP/1.1 upstream answering every request 503; ``seen``: each request's
    x-request-id, in order (the proxy sends the same id on every try of a request)."""

    async def serve(stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"x-request-id":
                        seen.append(value.strip().decode())
                await stream.send_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbad\n"
                )
        except trio.BrokenResourceError:
            pass

    return await start_raw_server(nursery, serve)


async def test_a_503_is_retried_on_another_host_never_the_one_that_failed(nursery):
    bad_seen: list[str] = []
    bad = await always_503(nursery, bad_seen)
    good = await start_upstream(nursery)
    cluster = {
        "lb_type": "LB_RANDOM",  # random: without the rule, a retry would often pick it again
        "hosts": [{"address": f"127.0.0.1:{bad}"}, {"address": f"127.0.0.1:{good.port}"}],
    }
    server, port = await start_proxy(
        nursery, retried(cluster, "Http1", retry_on="5xx", num_retries=3)
    )
    with trio.fail_after(20):
        async with open_h2_client(port) as client:
            for i in range(30):
                response = await client.request("GET", f"/echo/{i}")
                assert response.status == 200
    assert len(good.requests) == 30  # every request answered by the good host, once
    assert bad_seen, "the random balancer never picked the bad host"
    # A request failed on the bad host at most once: its retry went to the other host.
    assert len(set(bad_seen)) == len(bad_seen)
    assert server.clusters.get("up").stats.upstream_rq_retry == len(bad_seen)


async def test_connect_failure_is_retried_to_the_good_h2_host(nursery):
    good = await start_h2_upstream(nursery)
    cluster = {
        "lb_type": "LB_RANDOM",
        "hosts": [{"address": f"127.0.0.1:{closed_port()}"}, {"address": f"127.0.0.1:{good.port}"}],
    }
    config = retried(cluster, "Http2", retry_on="connect-failure", num_retries=3)
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(20):
        async with open_h2_client(port) as client:
            for i in range(20):
                assert (await client.request("GET", f"/echo?{i}")).status == 200
    stats = server.clusters.get("up").stats
    assert stats.upstream_cx_connect_fail >= 1
    # One retry per failure, and never more than one per request (not back to that host).
    assert stats.upstream_rq_retry == stats.upstream_cx_connect_fail <= 20


async def test_retries_exhausted_pass_the_last_h2_response_through(nursery):
    up = await start_h2_upstream(nursery)
    config = retried(
        {"hosts": [{"address": f"127.0.0.1:{up.port}"}]}, "Http2", retry_on="5xx", num_retries=2
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            response = await client.request("GET", "/status/503")
    assert response.status == 503 and response.body  # the upstream's own answer, body and all
    stats = server.clusters.get("up").stats
    assert (stats.upstream_rq_total, stats.upstream_rq_retry, stats.upstream_rq_retry_active) == (
        3,
        2,
        0,
    )


async def test_a_body_kept_within_the_retry_buffer_is_sent_again(nursery):
    up = await start_h2_upstream(nursery)
    config = retried(
        {"hosts": [{"address": f"127.0.0.1:{up.port}"}]}, "Http2", retry_on="5xx", num_retries=1
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            # /status/503 reads the whole body before it answers: both tries got all of it
            response = await client.request("POST", "/status/503", body=b"x" * 5000)
            echoed = await client.request("POST", "/echo", body=b"y" * 5000)
    assert response.status == 503
    assert echoed.status == 200 and echoed.json()["body_len"] == 5000
    assert server.clusters.get("up").stats.upstream_rq_retry == 1


async def test_per_try_timeout_then_retry_then_504(nursery):
    up = await start_h2_upstream(nursery)
    config = retried(
        {"hosts": [{"address": f"127.0.0.1:{up.port}"}]},
        "Http2",
        retry_on="reset",
        num_retries=1,
        per_try_timeout="200ms",
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            response = await client.request("GET", "/slow/5")
    assert response.status == 504
    stats = server.clusters.get("up").stats
    assert (stats.upstream_rq_total, stats.upstream_rq_retry) == (2, 1)


async def test_no_retry_policy_no_retry(nursery):
    up = await start_h2_upstream(nursery)
    config = http_config(
        [to("up")],
        {"up": up.port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            assert (await client.request("GET", "/status/503")).status == 503
    stats = server.clusters.get("up").stats
    assert (stats.upstream_rq_total, stats.upstream_rq_retry) == (1, 0)
