"""The registry service end to end over the in-memory registry: the API, the clusters and
routes a subscription keeps, publications, drain. (ZooKeeper: test_zookeeper_e2e.py.)"""

from __future__ import annotations

import pytest
import trio

from trio_mesh import Server
from trio_mesh.registry.memory import MemoryRegistry
from trio_mesh.registry.url import parse_node, providers_path

from ..rpc_helpers import provider
from .helpers import SERVICE, api, body, calls, provider_node, register, sidecar_config

ADDR = "127.0.0.1:2181"


async def test_subscribe_balances_over_the_providers_and_follows_them(nursery):
    a = await provider(nursery, "a")
    b = await provider(nursery, "b")
    node_a, node_b = provider_node(a), provider_node(b)
    other = await register(nursery, node_a, node_b)
    server = await nursery.start(Server(sidecar_config()).run)
    egress = server.addresses["egress"][1]

    status, answer = await api(server, "/sub", body(ADDR, type="memory"))
    assert (status, answer) == (200, {"err_no": 0, "err_msg": "subscribe success"})
    cluster = server.clusters.get(SERVICE)
    hosts = sorted(str(h.address) for h in cluster.hosts)
    assert hosts == sorted([f"127.0.0.1:{a}", f"127.0.0.1:{b}"])
    # The consumer node is in the registry, as a Dubbo consumer's would be.
    consumers = MemoryRegistry.get(ADDR).children(f"/dubbo/{SERVICE}/consumers")
    assert len(consumers) == 1 and consumers[0].startswith("consumer%3A%2F%2F127.0.0.1")

    answers = await calls(egress, 40)
    assert {x.rsplit(" ", 1)[1] for x in answers} == {"a", "b"}

    # One provider leaves: no call goes there any more, none fails.
    await other.delete_ephemeral(node_b, timeout=5)
    with trio.fail_after(5):
        while len(server.clusters.get(SERVICE).hosts) != 1:
            await server.registry.wait_applied()
    answers = await calls(egress, 20)
    assert {x.rsplit(" ", 1)[1] for x in answers} == {"a"}


async def test_unsubscribe_removes_route_cluster_and_consumer_node(nursery):
    a = await provider(nursery, "a")
    await register(nursery, provider_node(a))
    server = await nursery.start(Server(sidecar_config()).run)
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    status, answer = await api(server, "/unsub", body(ADDR, type="memory"))
    assert (status, answer["err_no"]) == (200, 0)
    assert SERVICE not in server.clusters
    assert MemoryRegistry.get(ADDR).children(f"/dubbo/{SERVICE}/consumers") == ()
    # The router stays (listeners name it), without the route.
    dubbo = [r for s in server.config.servers for r in s.routers if r.router_config_name == "dubbo"]
    assert [v.routers for v in dubbo[0].virtual_hosts] == [()]


async def test_publish_points_consumers_at_the_ingress_listener(nursery):
    local = await provider(nursery, "local")
    server = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    status, answer = await api(server, "/pub", body(ADDR, type="memory", version="1.0.0"))
    assert (status, answer) == (200, {"err_no": 0, "err_msg": "publish success"})
    registry = MemoryRegistry.get(ADDR)
    (node,) = registry.children(providers_path(SERVICE))
    url = parse_node(node)
    assert url is not None
    assert (url.host, url.port) == ("127.0.0.1", server.addresses["ingress"][1])
    assert url.params["version"] == "1.0.0" and url.params["side"] == "provider"
    assert registry.is_ephemeral(f"{providers_path(SERVICE)}/{node}")
    assert registry.exists(f"/dubbo/{SERVICE}/configurators")
    # GET lists it, without credentials.
    status, listing = await api(server, "/pub", method="GET")
    assert status == 200 and [p["service"]["interface"] for p in listing["publications"]] == [
        SERVICE
    ]
    status, answer = await api(server, "/unpub", body(ADDR, type="memory", version="1.0.0"))
    assert (status, answer["err_no"]) == (200, 0)
    assert registry.children(providers_path(SERVICE)) == ()
    status, answer = await api(server, "/unpub", body(ADDR, type="memory", version="1.0.0"))
    assert status == 409 and answer["err_no"] == 1 and "not published" in answer["err_msg"]


async def test_subscribing_then_publishing_between_two_sidecars(nursery):
    """Sidecar P publishes its provider; sidecar C subscribes: C's egress reaches the
    provider through both proxies."""
    local = await provider(nursery, "behind-p")
    p = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    c = await nursery.start(Server(sidecar_config()).run)
    assert (await api(p, "/pub", body(ADDR, type="memory")))[0] == 200
    assert (await api(c, "/sub", body(ADDR, type="memory")))[0] == 200
    assert await calls(c.addresses["egress"][1], 3) == ["hello c0 from behind-p"] + [
        f"hello c{i} from behind-p" for i in (1, 2)
    ]


async def test_drain_unpublishes_before_the_listeners_stop(nursery):
    local = await provider(nursery, "local")
    server = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    assert (await api(server, "/pub", body(ADDR, type="memory")))[0] == 200
    registry = MemoryRegistry.get(ADDR)
    assert registry.children(providers_path(SERVICE))
    ingress = server.listeners["ingress"]
    drain = ingress.drain
    seen = []

    def drain_and_look(**kwargs: bool) -> None:
        # When the listener begins to drain, the provider node must be gone already.
        seen.append(registry.children(providers_path(SERVICE)))
        drain(**kwargs)

    ingress.drain = drain_and_look
    assert await server.drain(5)
    assert seen == [()]
    # Draining, it publishes nothing more.
    status, answer = await api(server, "/pub", body(ADDR, type="memory"))
    assert status == 409 and "draining" in answer["err_msg"]
    assert registry.children(providers_path(SERVICE)) == ()


@pytest.mark.parametrize(
    ("path", "doc", "field"),
    [
        ("/pub", b"{not json", "body"),
        ("/pub", {"registry": {"type": "zookeeper", "addr": ADDR}}, "service"),
        ("/sub", body(ADDR, interface=""), "service.interface"),
        ("/sub", body(ADDR, type="etcd"), "registry.type"),
        ("/unpub", body("127.0.0.1:99999"), "registry.addr"),
        ("/unsub", body("no port"), "registry.addr"),
        ("/pub", body(ADDR, interface="a/../b"), "service.interface"),
        ("/sub", body(ADDR, methods="sayHello"), "service.methods"),
    ],
)
async def test_bad_requests_name_the_field_and_register_nothing(nursery, path, doc, field):
    server = await nursery.start(Server(sidecar_config(provider_port=1)).run)
    status, answer = await api(server, path, doc)
    assert status == 400 and answer["err_no"] == 1
    assert field in answer["err_msg"], answer
    assert server.registry.sessions == {} and server.registry.status()["publications"] == []


async def test_wrong_methods_and_cross_site_requests(nursery):
    server = await nursery.start(Server(sidecar_config()).run)
    assert (await api(server, "/sub", b"", method="PUT"))[0] == 405
    assert (await api(server, "/nope", b""))[0] == 404
    port = server.registry.address[1]
    from ..http_helpers import request

    raw = (
        b"POST /pub HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    assert (await request(port, raw)).status == 403
    raw = (
        b"POST /pub HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    assert (await request(port, raw)).status == 403


async def test_the_last_provider_leaving_keeps_the_hosts_with_empty_protection(nursery):
    a = await provider(nursery, "a")
    node = provider_node(a)
    other = await register(nursery, node)
    server = await nursery.start(Server(sidecar_config()).run)
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    applied = server.registry.applied
    await other.delete_ephemeral(node, timeout=5)
    # The registry lists nobody now: the host stays, and calls still reach it.
    session = server.registry.sessions[("memory", ADDR, "", "")]
    with trio.fail_after(5):
        await session.settled()
    assert server.registry.status()["subscriptions"][0]["providers_listed"] == 0
    assert server.registry.applied == applied
    assert [str(h.address) for h in server.clusters.get(SERVICE).hosts] == [f"127.0.0.1:{a}"]
    assert await calls(server.addresses["egress"][1], 2) == ["hello c0 from a", "hello c1 from a"]


async def test_without_empty_protection_the_cluster_follows_the_registry(nursery):
    a = await provider(nursery, "a")
    node = provider_node(a)
    other = await register(nursery, node)
    config = sidecar_config(registry={"empty_protection": False})
    server = await nursery.start(Server(config).run)
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    await other.delete_ephemeral(node, timeout=5)
    with trio.fail_after(5):
        while server.clusters.get(SERVICE).hosts:
            await server.registry.wait_applied()


async def test_group_and_version_filter_the_providers(nursery):
    blue = await provider(nursery, "blue")
    green = await provider(nursery, "green")
    await register(
        nursery,
        provider_node(blue, group="blue", version="1.0.0"),
        provider_node(green, group="green", version="1.0.0"),
    )
    server = await nursery.start(Server(sidecar_config()).run)
    doc = body(ADDR, type="memory", group="green", version="1.0.0")
    assert (await api(server, "/sub", doc))[0] == 200
    assert [str(h.address) for h in server.clusters.get(SERVICE).hosts] == [f"127.0.0.1:{green}"]
    # A second /sub for the interface with other filters replaces the first.
    doc = body(ADDR, type="memory", group="*", version="1.0.0")
    assert (await api(server, "/sub", doc))[0] == 200
    assert len(server.clusters.get(SERVICE).hosts) == 2
    assert len(MemoryRegistry.get(ADDR).children(f"/dubbo/{SERVICE}/consumers")) == 1


async def test_a_configured_cluster_with_the_interface_name_is_never_replaced(nursery):
    config = sidecar_config(
        extra_clusters=[{"name": SERVICE, "hosts": [{"address": "127.0.0.1:9"}]}]
    )
    server = await nursery.start(Server(config).run)
    status, answer = await api(server, "/sub", body(ADDR, type="memory"))
    assert status == 409 and "configured cluster" in answer["err_msg"]
    assert [str(h.address) for h in server.clusters.get(SERVICE).hosts] == ["127.0.0.1:9"]
    assert MemoryRegistry.get(ADDR).children(f"/dubbo/{SERVICE}/consumers") == ()


async def test_a_reload_keeps_subscriptions_and_refuses_registry_changes(nursery):
    from trio_mesh.errors import StartupError

    a = await provider(nursery, "a")
    await register(nursery, provider_node(a))
    server = await nursery.start(Server(sidecar_config()).run)
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    # The same file again (SIGHUP): the subscription's cluster and route stay.
    await server.apply(sidecar_config())
    assert SERVICE in server.clusters
    assert await calls(server.addresses["egress"][1], 1) == ["hello c0 from a"]
    with pytest.raises(StartupError, match="dubbo_registry cannot change"):
        await server.apply(sidecar_config(registry={"allow_non_loopback": True}))


def test_workers_are_refused_with_the_registry(tmp_path):
    import json

    from ..cli_helpers import run_cli

    path = tmp_path / "registry.json"
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "in",
                        "address": "127.0.0.1:20881",
                        "filter_chains": [{"filters": [{"type": "echo"}]}],
                    }
                ]
            }
        ],
        "extends": [{"type": "dubbo_registry", "config": {"enable": True, "server_port": 20881}}],
    }
    path.write_text(json.dumps(doc))
    result = run_cli("run", "--workers", "2", str(path))
    assert result.returncode == 1
    assert "dubbo_registry needs a single process" in result.stderr


async def test_a_failed_reapply_of_a_provider_change_is_retried(nursery, monkeypatch):
    import trio_mesh.registry.runtime as runtime_module

    monkeypatch.setattr(runtime_module, "APPLY_RETRY", 0.05)
    a = await provider(nursery, "a")
    b = await provider(nursery, "b")
    node_b = provider_node(b)
    other = await register(nursery, provider_node(a), node_b)
    server = await nursery.start(Server(sidecar_config()).run)
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    reapply, failures = server.reapply, []

    async def failing_once() -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("a TLS file unreadable for a moment")
        await reapply()

    server.reapply = failing_once
    await other.delete_ephemeral(node_b, timeout=5)
    with trio.fail_after(5):
        while len(server.clusters.get(SERVICE).hosts) != 1:
            await server.registry.wait_applied()
    assert failures == [1]
