"""ORIGINAL_DST clusters: the upstream is each connection's original destination
(``SO_ORIGINAL_DST`` after an iptables REDIRECT), read at accept when the listener has
``use_original_dst`` (or Envoy's ``original_dst`` listener filter)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cli_helpers
from tests.cli_helpers import write_config
from tests.http_helpers import get, http_config, request, running_proxy, to
from trio_mesh.config import ClusterType, ConfigError, parse_config
from trio_mesh.network.original_dst import is_loop, parse_sockaddr, read_original_dst
from trio_mesh.upstream import NoHostError
from trio_mesh.upstream.cluster import Cluster
from trio_mesh.upstream.original_dst import OriginalDstHosts

PEER = Path(__file__).with_name("original_dst_peer.py")


def sockaddr_in(host: str, port: int) -> bytes:
    # family in host byte order (little-endian on the machines we run on), port in network
    return (
        struct.pack("<H", socket.AF_INET)
        + struct.pack(">H", port)
        + socket.inet_aton(host)
        + bytes(8)
    )


def sockaddr_in6(host: str, port: int) -> bytes:
    return (
        struct.pack("<H", socket.AF_INET6)
        + struct.pack(">H", port)
        + bytes(4)
        + socket.inet_pton(socket.AF_INET6, host)
        + bytes(4)
    )


# --------------------------------------------------------------------------- sockaddr


def test_parses_ipv4_and_ipv6_sockaddrs() -> None:
    assert parse_sockaddr(sockaddr_in("10.1.2.3", 8080)) == ("10.1.2.3", 8080)
    assert parse_sockaddr(sockaddr_in6("fd00::7", 443)) == ("fd00::7", 443)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x02", sockaddr_in("10.1.2.3", 80)[:6], b"\x01\x00" + bytes(14), bytes(16)],
    ids=["empty", "one-byte", "truncated", "unix-family", "zero-family"],
)
def test_bad_sockaddr_is_no_destination(raw: bytes) -> None:
    assert parse_sockaddr(raw) is None


def test_socket_not_redirected_answers_none_or_its_own_address() -> None:
    """No NAT entry: the kernel errors (no conntrack) or names the socket's own address,
    which the listener treats as a loop."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                dst = read_original_dst(accepted)
                local = accepted.getsockname()
                assert dst is None or dst == local
                if dst is not None:
                    assert is_loop(dst, local, server.getsockname())
            del client


def test_loop_to_the_listener_is_refused() -> None:
    listener = ("0.0.0.0", 15001)
    local = ("127.0.0.1", 15001)
    assert is_loop(("127.0.0.1", 15001), local, listener)  # not redirected
    assert is_loop(("10.0.0.5", 15001), ("127.0.0.1", 40000), listener)  # our port, wildcard
    assert not is_loop(("10.0.0.5", 8080), local, listener)
    assert is_loop(("10.0.0.5", 15001), None, ("10.0.0.5", 15001))
    assert not is_loop(("10.0.0.6", 15001), None, ("10.0.0.5", 15001))


# --------------------------------------------------------------------------- hosts


def test_one_host_per_destination_is_reused() -> None:
    hosts = OriginalDstHosts()
    a = hosts.host_for(("10.0.0.1", 80))
    assert a is not None and a.label == "10.0.0.1:80"
    assert hosts.host_for(("10.0.0.1", 80)) is a  # pools keyed by Host keep their connections
    assert hosts.host_for(("10.0.0.1", 81)) is not a


def test_attacker_choosing_destinations_cannot_grow_the_cache() -> None:
    dropped = []
    hosts = OriginalDstHosts(max_hosts=4)
    hosts.on_drop = dropped.append
    busy = [hosts.host_for(("10.0.0.1", p)) for p in range(4)]
    for h in busy:
        assert h is not None
        h.cx_active = 1
    assert hosts.host_for(("10.0.0.2", 1)) is None  # all busy: refused, not grown
    assert len(hosts.hosts) == 4
    busy[1].cx_active = 0  # type: ignore[union-attr]
    fresh = hosts.host_for(("10.0.0.2", 1))
    assert fresh is not None and len(hosts.hosts) == 4
    assert dropped == [busy[1]]  # the idle one went, and its pools are told
    for port in range(1000):  # a stream of new idle destinations stays at the bound
        hosts.host_for(("10.0.0.3", port))
    assert len(hosts.hosts) == 4


def original_dst_doc(listener: dict | None = None) -> dict:
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "ingress",
                        "address": "127.0.0.1:0",
                        "use_original_dst": True,
                        "filter_chains": [
                            {"filters": [{"type": "tcp_proxy", "config": {"cluster": "od"}}]}
                        ],
                        **(listener or {}),
                    }
                ]
            }
        ],
        "cluster_manager": {
            "clusters": [{"name": "od", "type": "ORIGINAL_DST", "lb_type": "LB_ORIGINAL_DST"}]
        },
    }


def test_cluster_without_a_destination_has_no_host() -> None:
    config = parse_config(original_dst_doc()).config
    (cluster_config,) = config.cluster_manager.clusters
    assert cluster_config.type is ClusterType.ORIGINAL_DST
    assert config.listeners[0].use_original_dst
    cluster = Cluster(cluster_config)
    with pytest.raises(NoHostError):
        cluster.choose_original_dst(None)
    assert cluster.stats.upstream_cx_none_healthy == 1
    assert cluster.choose_original_dst(("10.0.0.1", 80)) is cluster.choose_original_dst(
        ("10.0.0.1", 80)
    )


def test_config_refuses_hosts_and_a_stray_lb_original_dst() -> None:
    doc = original_dst_doc()
    doc["cluster_manager"]["clusters"][0]["hosts"] = [{"address": "127.0.0.1:1"}]
    doc["cluster_manager"]["clusters"].append(
        {"name": "x", "lb_type": "LB_ORIGINAL_DST", "hosts": [{"address": "127.0.0.1:1"}]}
    )
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    errors = info.value.errors
    assert any("clusters[0].hosts: an ORIGINAL_DST cluster takes no hosts" in e for e in errors)
    assert any("clusters[1].lb_type: LB_ORIGINAL_DST needs type: ORIGINAL_DST" in e for e in errors)


def test_envoy_original_dst_listener_filter_loads_without_warning() -> None:
    doc = original_dst_doc(
        {"use_original_dst": False, "listener_filters": [{"type": "original_dst"}]}
    )
    loaded = parse_config(doc)
    assert not [w for w in loaded.warnings if "original_dst" in w]


# --------------------------------------------------------------------------- netns, iptables

NS_UPSTREAM = "10.77.0.1"
NS_CLIENT = "10.77.0.9"
UPSTREAM_PORT = 18080


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=15)


@pytest.fixture
def netns() -> Iterator[str]:
    if shutil.which("ip") is None or shutil.which("iptables") is None:
        pytest.skip("needs the ip and iptables commands")
    name = f"tmesh-od-{os.getpid()}"
    made = _run("ip", "netns", "add", name)
    if made.returncode != 0:
        pytest.skip(f"the kernel refuses a network namespace: {made.stderr.strip()}")
    try:
        for cmd in (
            ("ip", "link", "set", "lo", "up"),
            # The namespace's own loopback carries the two addresses (no module needed).
            ("ip", "addr", "add", f"{NS_UPSTREAM}/32", "dev", "lo"),
            ("ip", "addr", "add", f"{NS_CLIENT}/32", "dev", "lo"),
        ):
            done = _run("ip", "netns", "exec", name, *cmd)
            if done.returncode != 0:
                pytest.skip(f"the kernel refuses {' '.join(cmd)}: {done.stderr.strip()}")
        yield name
    finally:
        _run("ip", "netns", "delete", name)


def http_doc() -> dict:
    doc = original_dst_doc()
    listener = doc["servers"][0]["listeners"][0]
    listener["filter_chains"] = [
        {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
    ]
    vhost = {"name": "any", "domains": ["*"], "routers": [to("od")]}
    doc["servers"][0]["routers"] = [{"router_config_name": "r", "virtual_hosts": [vhost]}]
    return doc


@pytest.mark.parametrize("mode", ["tcp", "http"])
def test_redirected_connection_reaches_its_original_destination(
    mode: str, netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, original_dst_doc() if mode == "tcp" else http_doc())
    monkeypatch.setattr(cli_helpers, "CLI", ["ip", "netns", "exec", netns, *cli_helpers.CLI])
    with cli_helpers.proxy(config) as proc:
        port = proc.ready()["ingress"]
        # Only the client's connections (by its source address) go to the proxy: the
        # proxy's own connection to the upstream is not redirected again.
        rule = _run(
            "ip", "netns", "exec", netns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
            "-s", NS_CLIENT, "-d", NS_UPSTREAM, "--dport", str(UPSTREAM_PORT),
            "-j", "REDIRECT", "--to-ports", str(port),
        )  # fmt: skip
        if rule.returncode != 0:
            pytest.skip(f"the kernel refuses the iptables REDIRECT: {rule.stderr.strip()}")
        peer = _run(
            "ip", "netns", "exec", netns, sys.executable, str(PEER),
            NS_UPSTREAM, str(UPSTREAM_PORT), NS_CLIENT, str(port), mode,
        )  # fmt: skip
        assert peer.returncode == 0, peer.stderr + proc.text
        result = json.loads(peer.stdout)
    # The upstream saw the proxy (its connection comes from the upstream's own address),
    # not the client: the connection went through the proxy to the original destination.
    if mode == "tcp":
        assert result["redirected"] == f"{NS_UPSTREAM} ping"
        # Straight to the proxy's port: SO_ORIGINAL_DST is the proxy itself: closed.
        assert result["loop"] in ("", "reset")
    else:
        assert result["redirected"].startswith("HTTP/1.1 200 ")
        assert result["redirected"].endswith(f"\r\n\r\n{NS_UPSTREAM}")
        assert result["loop"].startswith("HTTP/1.1 503 ")


# --------------------------------------------------------------------------- HTTP, no netns


@pytest.mark.parametrize("option", [True, False], ids=["use_original_dst", "option-off"])
async def test_http_request_not_redirected_is_refused_not_looped(option: bool) -> None:
    """A client straight at the proxy's port: its original destination is the proxy itself
    (or, without the option, unknown); forwarding there would loop: 503, no connection."""
    config = http_config(
        [to("od")],
        [{"name": "od", "type": "ORIGINAL_DST", "lb_type": "LB_ORIGINAL_DST"}],
        listener={"use_original_dst": option},
    )
    async with running_proxy(config) as (server, port):
        response = await request(port, get("/"))
        stats = server.clusters.get("od").stats
        assert response.status == 503
        assert stats.upstream_cx_none_healthy == 1
        assert stats.upstream_cx_total == 0


async def test_reload_turns_the_option_on_for_a_kept_listener() -> None:
    routes = [to("od")]
    clusters = [{"name": "od", "type": "ORIGINAL_DST", "lb_type": "LB_ORIGINAL_DST"}]
    async with running_proxy(http_config(routes, clusters)) as (server, port):
        assert not server.listeners["ingress"].original_dst
        await server.apply(http_config(routes, clusters, listener={"use_original_dst": True}))
        assert server.listeners["ingress"].original_dst
        # Still a loop for a client straight at the port: refused, not forwarded.
        assert (await request(port, get("/"))).status == 503
