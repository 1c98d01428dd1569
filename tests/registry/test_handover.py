"""The registry's side of a hot upgrade, in one process (the in-memory registry): the state
the old process hands over, the new one's replay, what each refuses meanwhile, and the old
one's drain, which leaves its publications to the new process."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from trio_mesh import Server
from trio_mesh.registry.memory import MemoryRegistry
from trio_mesh.registry.runtime import MAX_PUBLICATIONS
from trio_mesh.registry.url import parse_node, providers_path

from ..rpc_helpers import provider
from .helpers import MEMORY_ADDR, SERVICE, api, body, sidecar_config

OTHER = "org.example.handover.OtherService"


async def two_sidecars(nursery: trio.Nursery) -> tuple[Server, Server]:
    local = await provider(nursery, "local")
    old = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    new = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    return old, new


async def test_the_state_handed_over_is_replayed_and_changes_wait_meanwhile(
    nursery: trio.Nursery,
) -> None:
    old, new = await two_sidecars(nursery)
    assert old.registry is not None and new.registry is not None
    pub = body(MEMORY_ADDR, type="memory")
    pub["registry"].update(username="app", password="secret")
    sub = body(MEMORY_ADDR, type="memory", interface=OTHER, group="a,b", version="*")
    assert (await api(old, "/pub", pub))[0] == 200
    assert (await api(old, "/sub", sub))[0] == 200

    state = await old.registry.handover_state()
    # The requests themselves, credentials included (the new process logs in as we did),
    # and nothing else: it is JSON for the upgrade link.
    assert json.loads(json.dumps(state)) == state
    assert state["publications"] == [
        {
            "registry": pub["registry"],
            "service": {**pub["service"], "group": "", "version": ""},
        }
    ]
    assert state["subscriptions"][0]["service"]["group"] == "a,b"
    # Changes here now would be lost to the new process: refused, try again.
    status, answer = await api(old, "/pub", body(MEMORY_ADDR, type="memory", interface=OTHER))
    assert status == 503 and "hot upgrade" in answer["err_msg"]
    assert (await api(old, "/unsub", sub))[0] == 503

    assert await new.registry.replay(state) == 0
    before, after = (await api(old, "/", method="GET"))[1], (await api(new, "/", method="GET"))[1]
    for key in ("publications", "subscriptions"):
        assert [(x["registry"], x["service"]) for x in after[key]] == [
            (x["registry"], x["service"]) for x in before[key]
        ]
    # Both processes' provider nodes exist: the new one's points at its own ingress.
    nodes = MemoryRegistry.get(MEMORY_ADDR).children(providers_path(SERVICE))
    ports = {parse_node(n).port for n in nodes}  # type: ignore[union-attr]
    assert ports == {old.addresses["ingress"][1], new.addresses["ingress"][1]}

    # The upgrade failed after all: the old one takes changes again.
    old.registry.handover_failed()
    assert (await api(old, "/unsub", sub))[0] == 200


async def test_a_replay_goes_on_past_bad_items_and_says_how_many_failed(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    _, new = await two_sidecars(nursery)
    assert new.registry is not None
    good = body(MEMORY_ADDR, type="memory")
    state = {
        "publications": [
            {"registry": {"type": "etcd", "addr": MEMORY_ADDR}, "service": good["service"]},
            "not an object",
            good,
        ],
        "subscriptions": {"not": "a list"},
    }
    with caplog.at_level(logging.ERROR, "trio_mesh.registry"):
        assert await new.registry.replay(state) == 2
    assert "publications[0]: registry.type" in caplog.text
    assert "publications[1]: body: expected a JSON object" in caplog.text
    assert "no subscriptions list" in caplog.text
    assert [p.service.interface for p in new.registry.publications.values()] == [SERVICE]
    # Whatever the peer sends, no more than the runtime keeps.
    many = [
        body(MEMORY_ADDR, type="memory", interface=f"org.example.S{i}")
        for i in range(MAX_PUBLICATIONS + 5)
    ]
    failed = await new.registry.replay({"publications": many, "subscriptions": []})
    assert failed == 6  # 5 past the cap, and the last one the cap refuses (SERVICE counts)
    assert len(new.registry.publications) == MAX_PUBLICATIONS


async def test_after_a_handover_the_drain_does_not_unpublish(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    old, _ = await two_sidecars(nursery)
    assert old.registry is not None
    assert (await api(old, "/pub", body(MEMORY_ADDR, type="memory")))[0] == 200
    registry = MemoryRegistry.get(MEMORY_ADDR)
    ingress = old.listeners["ingress"]
    drain = ingress.drain
    seen = []

    def drain_and_look(**kwargs: bool) -> None:
        seen.append(registry.children(providers_path(SERVICE)))
        drain(**kwargs)

    ingress.drain = drain_and_look  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, "trio_mesh.registry"):
        await old.drain(5, handed_over=True)
    assert len(seen) == 1 and len(seen[0]) == 1  # still published when the listeners drain
    assert "unpublished" not in caplog.text
    # Draining, it publishes nothing more (the API may still answer before it stops).
    assert old.registry.draining
    # Its registry service stops (the API and the session; the node goes with the session).
    with trio.fail_after(5):
        while old.registry.address is not None or registry.children(providers_path(SERVICE)):
            await trio.sleep(0.01)
