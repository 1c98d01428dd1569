"""Hot upgrade tests' pieces: a threaded HTTP/1.1 upstream, the proxy's configuration, and
clients that keep a stream of requests going (HTTP/1 keep-alive, HTTP/1 a new connection each,
HTTP/2) and count what failed."""

from __future__ import annotations

import http.client
import http.server
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.cli_helpers import Proxy, write_config

TIMEOUT = 15.0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def upstream() -> Iterator[int]:
    """An HTTP/1.1 keep-alive upstream on 127.0.0.1 (threads): its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def listener(name: str, address: str) -> dict[str, Any]:
    return {
        "name": name,
        "address": address,
        "filter_chains": [
            {
                "filters": [
                    {
                        "type": "proxy",
                        "config": {
                            "downstream_protocol": "Auto",
                            "upstream_protocol": "Http1",
                            "router_config_name": "r",
                        },
                    }
                ]
            }
        ],
    }


def mesh(upstream_port: int, listeners: dict[str, str], **top: Any) -> dict[str, Any]:
    """Listeners ``{name: address}``, each proxying everything to the upstream."""
    route = {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}
    return {
        "servers": [
            {
                "listeners": [listener(n, a) for n, a in listeners.items()],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routers": [route]}],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "type": "SIMPLE",
                    "lb_type": "LB_ROUNDROBIN",
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{upstream_port}"}],
                }
            ]
        },
        **top,
    }


def start(config: Path, sock: Path, *extra: str) -> Proxy:
    return Proxy(config, "--upgrade-socket", str(sock), *extra)


class Load:
    """Threads sending GETs to ``port`` until stopped: ``kind`` ``keepalive`` (one HTTP/1.1
    connection, a new one only after the server closed it), ``fresh`` (a new connection per
    request), ``h2`` (nghttp, HTTP/2 prior knowledge: python's h2 cannot finish a stream after a
    GOAWAY, h2load does not reconnect after one)."""

    def __init__(self, port: int, kinds: tuple[str, ...] = ("keepalive", "fresh", "h2")) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=getattr(self, f"_{kind}"), daemon=True) for kind in kinds
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(TIMEOUT)

    def wait_for(self, count: int) -> None:
        """Until ``count`` more requests succeeded (load really flows)."""
        target = self.ok + count
        deadline = time.monotonic() + TIMEOUT
        while self.ok < target:
            assert time.monotonic() < deadline, f"load stalled: {self.failures[:5]}"
            time.sleep(0.01)

    def _count(self, failure: str | None) -> None:
        with self._lock:
            if failure is None:
                self.ok += 1
            else:
                self.failures.append(failure)

    def _keepalive(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            try:
                conn.request("GET", "/keepalive")
                response = conn.getresponse()
                body = response.read()
                closing = response.getheader("connection", "").lower() == "close"
                self._count(None if response.status == 200 and body == b"ok\n" else "keepalive")
            except (OSError, http.client.HTTPException) as exc:
                self._count(f"keepalive: {exc!r}")
                closing = True
            if closing:  # the server said so (a drain): the next request on a new one
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _fresh(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            try:
                conn.request("GET", "/fresh", headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
                self._count(None if response.status == 200 and body == b"ok\n" else "fresh")
            except (OSError, http.client.HTTPException) as exc:
                self._count(f"fresh: {exc!r}")
            finally:
                conn.close()

    def _h2(self) -> None:
        """nghttp runs of 20 concurrent requests on one HTTP/2 connection (prior knowledge):
        each must end 200, GOAWAY or not."""
        url = f"http://127.0.0.1:{self.port}/h2"
        while not self._stop.is_set():
            run = subprocess.run(
                ["nghttp", "-ns", "-m", str(H2_BATCH), url],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            codes = NGHTTP_STAT.findall(run.stdout)
            for code in codes:
                self._count(None if code == "200" else f"h2: {code}")
            if run.returncode != 0 or len(codes) != H2_BATCH:
                self._count(f"h2: nghttp exited {run.returncode}, {len(codes)} responses")


H2_BATCH = 20
#: A line of nghttp's statistics: id, responseEnd, requestStart, process, code, size, path.
NGHTTP_STAT = re.compile(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d+)\s+\d+\s+/", re.MULTILINE)


def write(tmp_path: Path, doc: dict[str, Any], name: str = "mesh.yaml") -> Path:
    return write_config(tmp_path, doc, name)
