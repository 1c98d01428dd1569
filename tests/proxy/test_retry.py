"""RetryState on its own: which failures it retries, how often, the circuit breaker's
max_retries, and the host it avoids."""

from __future__ import annotations

from trio_mesh.config import parse_config
from trio_mesh.config.routes import RetryPolicy as RetryPolicyConfig
from trio_mesh.proxy import replies
from trio_mesh.proxy.replies import Flag, Reply
from trio_mesh.proxy.retry import RetryState, retry_on
from trio_mesh.router.table import RetryPolicy
from trio_mesh.upstream import Cluster


def policy(**kw) -> RetryPolicy:
    return RetryPolicy(RetryPolicyConfig(**kw))


def cluster(n: int, *, max_retries: int | None = None) -> Cluster:
    entry: dict = {
        "name": "up",
        "lb_type": "LB_RANDOM",
        "hosts": [{"address": f"127.0.0.1:{10000 + i}"} for i in range(n)],
    }
    if max_retries is not None:
        entry["circuit_breakers"] = [{"max_retries": max_retries}]
    (config,) = parse_config(
        {"cluster_manager": {"clusters": [entry]}}
    ).config.cluster_manager.clusters
    return Cluster(config)


def test_retry_on_reads_the_reply_cause():
    five = policy(retry_on="5xx")
    assert retry_on(five, replies.CONNECT_FAILURE) and retry_on(five, replies.UPSTREAM_RESET)
    assert retry_on(five, replies.TIMEOUT) and retry_on(five, Reply(503, Flag.NONE, b""))
    assert not retry_on(five, Reply(404, Flag.NONE, b""))
    # The proxy's own refusals are never retried, whatever their status.
    for refused in (replies.NO_HEALTHY_UPSTREAM, replies.OVERFLOW, replies.NO_CLUSTER):
        assert not retry_on(five, refused)
    connect = policy(retry_on="connect-failure")
    assert retry_on(connect, replies.CONNECT_FAILURE)
    assert not retry_on(connect, replies.UPSTREAM_RESET)
    assert not retry_on(connect, Reply(503, Flag.NONE, b""))


def test_tries_are_counted_and_the_failed_host_is_avoided():
    c = cluster(2)
    for _ in range(50):  # random over two hosts: a retry would often pick the same one again
        state = RetryState(policy(retry_on="5xx", num_retries=1), c)
        failed = state.choose_host()
        assert state.should_retry(replies.CONNECT_FAILURE)
        assert state.choose_host() is not failed
        assert not state.should_retry(replies.CONNECT_FAILURE)  # its one retry is spent
    assert (c.stats.upstream_rq_retry, c.stats.upstream_rq_retry_active) == (50, 0)
    single = RetryState(policy(retry_on="5xx", num_retries=1), cluster(1))
    only = single.choose_host()
    assert single.should_retry(replies.CONNECT_FAILURE)
    assert single.choose_host() is only  # no other host: the same one again
    assert not single.should_retry(replies.CONNECT_FAILURE)  # no tries left


def test_max_retries_circuit_breaker_refuses_and_counts():
    c = cluster(2, max_retries=1)
    first = RetryState(policy(retry_on="5xx", num_retries=2), c)
    second = RetryState(policy(retry_on="5xx", num_retries=2), c)
    first.choose_host()
    second.choose_host()
    assert first.should_retry(replies.UPSTREAM_RESET)  # holds the one slot
    assert not second.should_retry(replies.UPSTREAM_RESET)
    assert (c.stats.upstream_rq_retry, c.stats.upstream_rq_retry_overflow) == (1, 1)
    first.release()
    assert second.should_retry(replies.UPSTREAM_RESET)
    second.release()
    assert c.stats.upstream_rq_retry_active == 0
