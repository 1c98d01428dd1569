"""proxy.py's reverse proxy pointed at the benchmark upstream.

proxy.py has no command-line flag for a reverse proxy's upstream: its reverse proxy core
(``--enable-reverse-proxy``) takes routes from plugins, and the one it ships
(``proxy.plugin.ReverseProxyPlugin``) has its upstreams written in its code. This plugin is
the same thing with the harness's upstream: three *static* routes, the mechanism proxy.py
documents for fixed upstreams, so no code of ours runs per request (proxy.py's core picks the
route's URL, rewrites the path and forwards). Everything else is proxy.py's own behaviour.

The upstream comes from the ``BENCH_UPSTREAM`` environment variable (``127.0.0.1:PORT``),
read when proxy.py imports this module (``--plugins bench.proxypy_reverse.BenchReverseProxy``).
"""

from __future__ import annotations

import os

from proxy.http.server import ReverseProxyBasePlugin

_UPSTREAM = os.environ.get("BENCH_UPSTREAM", "127.0.0.1:80")
_PATHS = ("/small", "/64k", "/post")
_ROUTES: list[str | tuple[str, list[bytes]]] = [
    (rf"{path}$", [f"http://{_UPSTREAM}{path}".encode()]) for path in _PATHS
]


class BenchReverseProxy(ReverseProxyBasePlugin):
    """Static routes: ``/small``, ``/64k``, ``/post`` to the same paths on the upstream."""

    def routes(self) -> list[str | tuple[str, list[bytes]]]:
        return _ROUTES
