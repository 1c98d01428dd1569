"""Issue 14 finding 4's probes: the RSS of a trio-mesh process that RPC clients try to make
buffer big bolt frames. Short and bounded (a few seconds each).

    python -m bench.rpc_memory_probe            # the trio-mesh importable here
    PYTHONPATH=/path/to/other/tree python -m bench.rpc_memory_probe

1. ``held``: 40 connections each send all of an 8 MiB frame but its last byte.
2. ``pipelined``: one connection sends 100 pipelined 4 MiB frames to a provider that reads
   and never answers.

Prints the proxy's VmRSS before and after each probe, and its peak (VmHWM), in MiB.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from trio_mesh.protocols.xprotocol.bolt import BOLT

from .procs import LOOPBACK

MiB = 1024 * 1024
SERVICE = "com.alipay.test.HelloService:1.0"
SEND_FOR = 3.0  # seconds the clients push before the RSS is read

CONFIG = """\
servers:
  - listeners:
      - name: bolt
        address: "127.0.0.1:{port}"
        filter_chains:
          - filters:
              - type: proxy
                config:
                  downstream_protocol: bolt
                  router_config_name: r
    routers:
      - router_config_name: r
        virtual_hosts:
          - name: rpc
            domains: ["*"]
            routers:
              - match: {{headers: [{{name: service, value: ".*", regex: true}}]}}
                route: {{cluster_name: provider, timeout: 60s}}
cluster_manager:
  clusters:
    - name: provider
      hosts: [{{address: "127.0.0.1:{provider}"}}]
"""


def _memory(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM of ``pid`` in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _silent_provider(sock: socket.socket, stop: threading.Event) -> None:
    """Accept and read everything, answer nothing."""
    sock.settimeout(0.2)
    conns = []
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            conn, _ = sock.accept()
            conns.append(conn)
            threading.Thread(target=_drain, args=(conn, stop), daemon=True).start()
    for conn in conns:
        conn.close()


def _drain(conn: socket.socket, stop: threading.Event) -> None:
    conn.settimeout(0.2)
    while not stop.is_set():
        try:
            if not conn.recv(1 << 20):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def _push(port: int, data: bytes, repeat: int, until: float, out: list[socket.socket]) -> None:
    """Send ``data`` ``repeat`` times, for as long as the proxy takes it before ``until``."""
    sock = socket.create_connection((LOOPBACK, port))
    out.append(sock)
    view = memoryview(data)
    for _ in range(repeat):
        sent = 0
        while sent < len(view):
            left = until - time.monotonic()
            if left <= 0:
                return
            sock.settimeout(left)
            try:
                sent += sock.send(view[sent:])
            except TimeoutError:
                return


@contextlib.contextmanager
def _proxy() -> Iterator[tuple[int, int]]:
    """A trio-mesh process in front of a silent provider: (its pid, its port)."""
    provider = socket.create_server((LOOPBACK, 0))
    stop = threading.Event()
    threading.Thread(target=_silent_provider, args=(provider, stop), daemon=True).start()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "bolt.yaml")
        conf.write_text(CONFIG.format(port=port, provider=provider.getsockname()[1]))
        proc = subprocess.Popen([sys.executable, "-m", "trio_mesh.cli", "run", str(conf)])
        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port)):
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("trio-mesh did not start")
                time.sleep(0.05)
            yield proc.pid, port
        finally:
            proc.terminate()
            proc.wait(10)
            stop.set()
            provider.close()


def _probe(name: str, conns: int, frame: bytes, repeat: int, whole: bool) -> None:
    with _proxy() as (pid, port):
        before, _ = _memory(pid)
        until = time.monotonic() + SEND_FOR
        data = frame if whole else frame[:-1]
        socks: list[socket.socket] = []
        threads = [
            threading.Thread(target=_push, args=(port, data, repeat, until, socks))
            for _ in range(conns)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss, peak = _memory(pid)
        for s in socks:
            s.close()
    print(f"{name}: RSS {before:.0f} MiB -> {rss:.0f} MiB (peak {peak:.0f} MiB)", flush=True)


def main() -> None:
    import trio_mesh

    print(f"trio_mesh from {os.path.dirname(trio_mesh.__file__)}")
    big = bytes(BOLT.build_request(1, {"service": SERVICE}, b"x" * (8 * MiB), codec=11).data)
    _probe("held: 40 connections x 8 MiB frame (all but its last byte)", 40, big, 1, False)
    four = bytes(BOLT.build_request(2, {"service": SERVICE}, b"x" * (4 * MiB), codec=11).data)
    _probe("pipelined: 100 x 4 MiB frames, provider never answers", 1, four, 100, True)


if __name__ == "__main__":
    main()
