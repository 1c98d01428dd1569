"""A reload or a ``Server.apply`` carrying a TLS key the proxy cannot honour is refused as a
whole, naming the key's path, and the running configuration keeps serving."""

from __future__ import annotations

import re
import signal
import ssl
from pathlib import Path

import attrs
import pytest
import trio

from tests.cli_helpers import proxy, write_config
from tests.http_helpers import Client, get, http_config, start_proxy, start_upstream, to
from tests.server.test_reload import direct_doc, fetch
from trio_mesh.config.tls import TlsConfig
from trio_mesh.network.tls_context import TlsConfigError


def with_cluster_tls(config, tls: TlsConfig):
    (cluster,) = config.cluster_manager.clusters
    cm = attrs.evolve(config.cluster_manager, clusters=(attrs.evolve(cluster, tls_context=tls),))
    return attrs.evolve(config, cluster_manager=cm)


def with_listener_tls(config, tls: TlsConfig):
    (srv,) = config.servers
    (lst,) = srv.listeners
    (chain,) = lst.filter_chains
    lst = attrs.evolve(lst, filter_chains=(attrs.evolve(chain, tls_context=tls),))
    return attrs.evolve(config, servers=(attrs.evolve(srv, listeners=(lst,)),))


async def test_apply_with_a_bad_tls_key_changes_nothing(nursery, tmp_path: Path) -> None:
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    first = http_config([to("up")], {"up": a.port})
    server, port = await start_proxy(nursery, first)
    moved = http_config([to("up")], {"up": b.port})
    missing = str(tmp_path / "missing-ca.pem")
    bad_cluster = with_cluster_tls(moved, TlsConfig(status=True, ca_cert=missing))
    with pytest.raises(TlsConfigError) as exc:
        await server.apply(bad_cluster)
    assert str(exc.value) == (
        f"cluster_manager.clusters[0].tls_context.ca_cert: cannot read {missing}:"
        " No such file or directory"
    )
    bad_listener = with_listener_tls(
        moved, TlsConfig(status=True, cert_chain=missing, private_key=missing)
    )
    with pytest.raises(TlsConfigError, match=r"^servers\[0\]\.listeners\[0\]\.filter_chains"):
        await server.apply(bad_listener)
    assert server.config == first
    assert [h.port for h in server.clusters.get("up").hosts] == [a.port]
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
    assert (len(a.requests), len(b.requests)) == (1, 0)


def test_sighup_with_an_unreadable_certificate_keeps_the_configuration(tmp_path: Path) -> None:
    path = write_config(tmp_path, direct_doc("one"))
    with proxy(path) as p:
        port = p.ready()["web"]
        assert fetch(port) == "one"
        doc = direct_doc("two")
        doc["servers"][0]["listeners"][0]["filter_chains"][0]["tls_context"] = {
            "status": True,
            "cert_chain": str(tmp_path / "gone.pem"),
            "private_key": str(tmp_path / "gone.key"),
        }
        write_config(tmp_path, doc)
        p.proc.send_signal(signal.SIGHUP)
        p.wait_for(
            re.compile(
                r"reload refused, configuration kept: servers\[0\]\.listeners\[0\]"
                r"\.filter_chains\[0\]\.tls_context\.cert_chain: cannot read .*gone\.pem"
            )
        )
        assert fetch(port) == "one"
        p.proc.send_signal(signal.SIGTERM)
        assert p.finish() == 0


async def test_tls_contexts_built_once_per_run_and_apply_off_the_event_loop(
    nursery, monkeypatch, pki
) -> None:
    """Each chain's and cluster's contexts are built once per run or apply, in a worker
    thread (file reads and OpenSSL loads never stall the event loop), and the listener
    serves what was built there."""
    import threading

    from trio_mesh import server as server_module

    calls: list[tuple[str, bool]] = []

    def counted(name: str, real):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append((name, threading.current_thread() is threading.main_thread()))
            return real(*args, **kwargs)

        return wrapper

    for name in ("server_tls", "build_tls", "identities"):
        monkeypatch.setattr(server_module, name, counted(name, getattr(server_module, name)))
    up = await start_upstream(nursery)
    plain = http_config([to("up")], {"up": up.port})
    listener_tls = TlsConfig(
        status=True, cert_chain=str(pki.server.cert), private_key=str(pki.server.key)
    )
    config = with_cluster_tls(
        with_listener_tls(plain, listener_tls), TlsConfig(status=True, ca_cert=str(pki.ca.cert))
    )
    server, port = await start_proxy(nursery, config)
    expected = [("server_tls", False), ("identities", False), ("build_tls", False)]
    assert calls == expected
    await server.apply(config)  # kept as it is: rotation
    assert calls == expected * 2
    changed = with_listener_tls(config, attrs.evolve(listener_tls, alpn="http/1.1"))
    await server.apply(changed)
    assert calls == expected * 3
    # The built context is the one handshakes use.
    (chain,) = server.listeners["ingress"].handler.chains  # type: ignore[attr-defined]
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with trio.fail_after(10):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "http/1.1"
        await stream.aclose()
    assert chain.tls is not None and chain.identities
