"""STRICT_DNS and LOGICAL_DNS clusters (upstream/dns.py): hosts from names, refreshed off the
event loop; hosts that stay keep their pooled connections; a failed answer keeps the last
good hosts; LOGICAL_DNS moves new connections only. Real proxy, real upstreams on loopback;
the resolver is injected so answers change between refreshes without touching /etc/hosts."""

from __future__ import annotations

import functools
import logging
import socket
from typing import Any

import pytest
import trio
import trio.testing

from tests.http_helpers import Client, get, http_config, start_upstream, to
from tests.upstream import Upstream
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.server import Server
from trio_mesh.upstream import dns
from trio_mesh.upstream.dns import DnsState, pick, system_resolve
from trio_mesh.upstream.host import Host


class FakeResolver:
    """Answers by name; an ``OSError`` value fails that name."""

    def __init__(self, answers: dict[str, list[str] | OSError]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, name: str, family: int) -> list[str]:
        self.calls.append((name, family))
        answer = self.answers.get(name, OSError("no such name"))
        if isinstance(answer, OSError):
            raise answer
        return list(answer)


async def refresh(state: DnsState) -> None:
    """Resolve now and wait until the answers are applied (the refresh rate is long)."""
    applied = state.applied
    state.wake.set()
    with trio.fail_after(5):
        await applied.wait()


def dns_cluster(kind: str, hosts: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": "up",
        "type": kind,
        "connect_timeout": "2s",
        "dns_refresh_rate": "60s",
        "hosts": [{"address": h} for h in hosts],
        **extra,
    }


async def start_second(nursery: trio.Nursery, port: int) -> Upstream:
    """An upstream on 127.0.0.2 at ``port``: another address, the same port."""
    up = Upstream()
    await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.2"), up._serve, port)
    up.port = port
    return up


async def start(
    nursery: trio.Nursery, cluster: dict[str, Any], resolver: FakeResolver | None
) -> tuple[Server, int]:
    server = Server(http_config(routes=[to()], clusters=[cluster]))
    state = server.clusters.get("up").dns
    assert state is not None
    if resolver is not None:
        state.resolve = resolver
    await nursery.start(server.run)
    return server, server.addresses["ingress"][1]


async def fetch(client: Client, path: str = "/echo") -> int:
    await client.send(get(path))
    return (await client.response()).status


# --------------------------------------------------------------------------- config


def test_config_keys_and_errors_name_their_path() -> None:
    loaded = parse_config(
        {
            "cluster_manager": {
                "clusters": [
                    dns_cluster(
                        "STRICT_DNS",
                        ["backend.internal:8080"],
                        dns_lookup_family="V4_PREFERRED",
                        respect_dns_ttl=True,
                    )
                ]
            }
        }
    )
    c = loaded.config.cluster_manager.clusters[0]
    assert c.type.is_dns and c.dns_refresh_rate == 60.0
    assert c.dns_lookup_family.name == "V4_PREFERRED"
    assert any("clusters[0].respect_dns_ttl: not enforced" in w for w in loaded.warnings)

    # Values that do not structure, then checks on the structured configuration.
    for bad, paths in [
        (
            [
                dns_cluster("STRICT_DNS", ["a:1"], dns_lookup_family="ALL"),
                dns_cluster("DNS", ["a:1"]),
            ],
            ["clusters[0].dns_lookup_family: expected one of", "clusters[1].type: expected"],
        ),
        (
            [
                dns_cluster("LOGICAL_DNS", ["a:1", "b:2"]),
                dns_cluster("STRICT_DNS", ["a:1"], dns_refresh_rate="0s"),
            ],
            [
                "clusters[0].hosts: LOGICAL_DNS takes exactly one host, got 2",
                "clusters[1].dns_refresh_rate: expected a positive duration",
            ],
        ),
    ]:
        for i, cluster in enumerate(bad):
            cluster["name"] = f"c{i}"
        with pytest.raises(ConfigError) as err:
            parse_config({"cluster_manager": {"clusters": bad}})
        text = "\n".join(err.value.errors)
        for path in paths:
            assert f"cluster_manager.{path}" in text, text


def test_lookup_family_picks() -> None:
    both = ["::1", "127.0.0.1", "fe80::2", "10.0.0.1"]
    assert pick(_family("AUTO"), both) == ["::1", "fe80::2"]
    assert pick(_family("AUTO"), ["10.0.0.1"]) == ["10.0.0.1"]
    assert pick(_family("V4_PREFERRED"), both) == ["127.0.0.1", "10.0.0.1"]
    assert pick(_family("V4_PREFERRED"), ["::1"]) == ["::1"]
    assert pick(_family("V4_ONLY"), ["::1"]) == []
    assert pick(_family("V6_ONLY"), both) == ["::1", "fe80::2"]


def _family(name: str) -> Any:
    from trio_mesh.config import DnsLookupFamily

    return DnsLookupFamily[name]


# --------------------------------------------------------------------------- resolution


async def test_system_resolver_answers_localhost_off_the_loop() -> None:
    assert "127.0.0.1" in await system_resolve("localhost", socket.AF_INET)


async def test_requests_to_a_cluster_named_localhost(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    cluster = dns_cluster("STRICT_DNS", [f"localhost:{up.port}"], dns_lookup_family="V4_ONLY")
    server, port = await start(nursery, cluster, None)
    hosts = server.clusters.get("up").hosts
    assert [(h.host, h.port, h.hostname) for h in hosts] == [("127.0.0.1", up.port, "localhost")]
    async with await Client.connect(port) as client:
        for _ in range(3):
            assert await fetch(client) == 200
    assert len(up.requests) == 3


async def test_strict_dns_swaps_hosts_keeping_pooled_connections(nursery: trio.Nursery) -> None:
    up1 = await start_upstream(nursery)
    up2 = await start_second(nursery, up1.port)
    resolver = FakeResolver({"svc.test": ["127.0.0.1"]})
    cluster = dns_cluster("STRICT_DNS", [f"svc.test:{up1.port}"], dns_lookup_family="V4_ONLY")
    server, port = await start(nursery, cluster, resolver)
    state = server.clusters.get("up").dns
    assert state is not None
    assert resolver.calls == [("svc.test", socket.AF_INET)]
    cl = server.clusters.get("up")
    first: Host = cl.hosts[0]
    async with await Client.connect(port) as client:
        assert await fetch(client) == 200
        assert up1.connections == 1

        # A second address: the first host (and its pooled connection) stays.
        resolver.answers["svc.test"] = ["127.0.0.1", "127.0.0.2"]
        await refresh(state)
        assert [h.host for h in cl.hosts] == ["127.0.0.1", "127.0.0.2"]
        assert cl.hosts[0] is first
        for _ in range(4):
            assert await fetch(client) == 200
        assert len(up1.requests) == 3 and len(up2.requests) == 2
        assert up1.connections == 1 and up2.connections == 1  # both pooled, none redialled

        # A DNS failure, then an empty answer: the hosts stay as they were.
        resolver.answers["svc.test"] = OSError("SERVFAIL")
        await refresh(state)
        resolver.answers["svc.test"] = []
        await refresh(state)
        assert [h.host for h in cl.hosts] == ["127.0.0.1", "127.0.0.2"]
        assert state.failures == 2
        assert await fetch(client) == 200

        # The first address goes: its idle connection closes; the other's is kept.
        second = cl.hosts[1]
        closed = up1.closed_event
        resolver.answers["svc.test"] = ["127.0.0.2"]
        await refresh(state)
        assert list(cl.hosts) == [second]
        with trio.fail_after(5):
            await closed.wait()
        before = len(up2.requests)
        for _ in range(2):
            assert await fetch(client) == 200
        assert len(up2.requests) == before + 2 and up2.connections == 1


async def test_failure_before_the_first_answer_is_503_then_it_recovers(
    nursery: trio.Nursery,
) -> None:
    up = await start_upstream(nursery)
    resolver = FakeResolver({})
    server, port = await start(nursery, dns_cluster("STRICT_DNS", [f"svc:{up.port}"]), resolver)
    state = server.clusters.get("up").dns
    assert state is not None and state.warmed.is_set()  # start-up waited for the first try
    async with await Client.connect(port) as client:
        assert await fetch(client) == 503  # no host yet: no healthy upstream
        resolver.answers["svc"] = ["127.0.0.1"]
        await refresh(state)
        assert await fetch(client) == 200


async def test_failures_retry_sooner_than_the_refresh_rate(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = FakeResolver({})
    caplog.set_level(logging.WARNING, "trio_mesh.upstream.dns")
    server, _ = await start(nursery, dns_cluster("STRICT_DNS", ["svc:80"]), resolver)
    state = server.clusters.get("up").dns
    assert state is not None
    # The refresh rate is 60 s: a second try within 3 s is the failure back-off (1 s).
    with trio.fail_after(3):
        while len(resolver.calls) < 2:
            await state.applied.wait()
    assert server.clusters.get("up").hosts == ()
    # Rate-limited: one line per name for both failures.
    lines = [r for r in caplog.records if "resolving 'svc' failed" in r.getMessage()]
    assert len(lines) == 1


async def test_a_resolver_that_hangs_is_a_failure(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dns, "RESOLVE_TIMEOUT", 0.2)
    up = await start_upstream(nursery)
    resolver = FakeResolver({"svc": ["127.0.0.1"]})
    server, port = await start(nursery, dns_cluster("STRICT_DNS", [f"svc:{up.port}"]), resolver)
    state = server.clusters.get("up").dns
    assert state is not None

    async def hang(name: str, family: int) -> list[str]:
        await trio.sleep_forever()
        raise AssertionError

    state.resolve = hang
    await refresh(state)
    assert state.failures == 1
    assert [h.host for h in server.clusters.get("up").hosts] == ["127.0.0.1"]
    async with await Client.connect(port) as client:
        assert await fetch(client) == 200


async def test_logical_dns_moves_new_connections_keeps_open_ones(nursery: trio.Nursery) -> None:
    up1 = await start_upstream(nursery)
    up2 = await start_second(nursery, up1.port)
    resolver = FakeResolver({"svc.test": ["127.0.0.1", "127.0.0.2"]})
    cluster = dns_cluster("LOGICAL_DNS", [f"svc.test:{up1.port}"])
    server, port = await start(nursery, cluster, resolver)
    cl = server.clusters.get("up")
    state = cl.dns
    assert state is not None
    [host] = cl.hosts
    assert host.label == f"svc.test:{up1.port}" and host.host == "127.0.0.1"  # the first
    assert host.hostname == "svc.test"  # the TLS name: not the address of the moment
    async with await Client.connect(port) as client:
        assert await fetch(client) == 200
        resolver.answers["svc.test"] = ["127.0.0.2"]
        await refresh(state)
        assert list(cl.hosts) == [host] and host.host == "127.0.0.2"
        # Its pooled connection to the old address is kept (Envoy's logical host) ...
        assert await fetch(client) == 200
        assert len(up1.requests) == 2 and up1.connections == 1 and up2.connections == 0
    # ... and a new connection goes to the new address.
    stream = await cl.connect(host)
    try:
        assert stream.socket.getpeername()[0] == "127.0.0.2"
    finally:
        stream.close()
        cl.release_connection()


async def test_reload_to_a_new_name_keeps_the_hosts_until_it_answers(
    nursery: trio.Nursery,
) -> None:
    up1 = await start_upstream(nursery)
    up2 = await start_second(nursery, up1.port)
    resolver = FakeResolver({"old": ["127.0.0.1"], "new": ["127.0.0.2"]})
    server, port = await start(nursery, dns_cluster("STRICT_DNS", [f"old:{up1.port}"]), resolver)
    cl = server.clusters.get("up")
    state = cl.dns
    assert state is not None
    applied = state.applied
    await server.apply(
        http_config(routes=[to()], clusters=[dns_cluster("STRICT_DNS", [f"new:{up1.port}"])])
    )
    assert [h.host for h in cl.hosts] == ["127.0.0.1"]  # not emptied by the swap
    with trio.fail_after(5):
        await applied.wait()
    assert [h.host for h in cl.hosts] == ["127.0.0.2"]
    assert list(state.answers) == ["new"]
    async with await Client.connect(port) as client:
        assert await fetch(client) == 200
    assert len(up2.requests) == 1 and len(up1.requests) == 0


async def test_reload_to_a_static_cluster_ends_the_resolver(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    resolver = FakeResolver({"svc": ["127.0.0.1"]})
    server, port = await start(nursery, dns_cluster("STRICT_DNS", [f"svc:{up.port}"]), resolver)
    cl = server.clusters.get("up")
    state = cl.dns
    assert state is not None and state.running
    await server.apply(http_config(routes=[to()], clusters={"up": up.port}))
    assert cl.dns is None
    await trio.testing.wait_all_tasks_blocked()  # the resolver saw it: it ended
    assert not state.running
    calls = len(resolver.calls)
    async with await Client.connect(port) as client:
        assert await fetch(client) == 200
    assert len(resolver.calls) == calls
