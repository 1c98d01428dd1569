"""The contenders: what each one runs, with which configuration, and whether it can run here.

Each contender is started fresh by the scenario that needs it, in its own process group, on a
free port of 127.0.0.1, and proxies to the shared nginx upstream (``direct`` is a private copy
of that upstream, so the client talks to the server itself: the ceiling).

``CONTENDERS`` are those of ``python -m bench http1``; ``H2_CONTENDERS`` those of ``python -m
bench http2``, which listen for h2c (HTTP/2 with prior knowledge) and proxy to the HTTP/1.1
upstream or to a second, h2c nginx upstream. ``RPC_CONTENDERS`` are those of ``python -m bench
rpc``: SOFA bolt, with a bolt echo server (``bench/bolt_server.py``) as the upstream; for the
Dubbo scenarios the same contenders are built by ``rpc_contenders("dubbo")`` (a Dubbo echo
server, ``bolt_server.py --protocol dubbo``, and ``downstream_protocol: dubbo``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import nginx
from .bolt_load import dubbo_status, rpc_status
from .h2 import h2_status
from .procs import Child, Processes, free_port, http_status, wait_ready
from .tls_client import https_status

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent


@dataclass
class Workdir:
    """Where this run keeps its generated files, and facts every contender needs."""

    dir: Path
    upstream_port: int
    nofile: int  # RLIMIT_NOFILE soft limit the children inherit
    h2_upstream_port: int = 0  # the h2c upstream (http2 only)
    dubbo_upstream_port: int = 0  # the Dubbo echo server (rpc only; upstream_port is bolt's)
    # tls only: the CA, the server certificate and its key (ECDSA P-256, made for this run)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.upstream_port}"

    def rpc_upstream(self, protocol: str) -> str:
        port = self.dubbo_upstream_port if protocol == "dubbo" else self.upstream_port
        return f"127.0.0.1:{port}"

    @property
    def h2_upstream(self) -> str:
        return f"127.0.0.1:{self.h2_upstream_port}"

    @property
    def connections(self) -> int:
        """nginx worker_connections: all the descriptors a worker may have, less a margin."""
        return max(1024, self.nofile - 64)


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: A metrics URL the harness scrapes once a second during each run (bench/scraper.py).
    scrape: str | None = None


@dataclass
class Contender:
    name: str
    description: str
    build: Callable[[Workdir, int, str], Launch]  # (workdir, port, instance tag) -> command
    check: Callable[[], str | None] = lambda: None  # why it cannot run here, or None
    # The readiness request: (port, path) -> HTTP status or None. HTTP/1.1 unless h2c only.
    status: Callable[[int, str], int | None] = http_status
    scheme: str = "http"  # "https": the contender terminates TLS (python -m bench tls)

    def unavailable(self) -> str | None:
        return self.check()


@dataclass
class Running:
    contender: Contender
    child: Child
    port: int
    startup_s: float = 0.0
    scrape: str | None = None  # Launch.scrape

    @property
    def name(self) -> str:
        return self.contender.name

    @property
    def pid(self) -> int:
        return self.child.pid

    def url(self, path: str) -> str:
        return f"{self.contender.scheme}://127.0.0.1:{self.port}{path}"


def start(
    contender: Contender, procs: Processes, work: Workdir, tag: str, ready_timeout: float = 30.0
) -> Running:
    """Start a fresh instance and wait until it answers ``GET /small`` with 200."""
    port = free_port()
    launch = contender.build(work, port, tag)
    child = procs.start(f"{contender.name}-{tag}", launch.argv, env=launch.env, cwd=REPO_ROOT)
    startup = wait_ready(child, port, timeout=ready_timeout, status=contender.status)
    return Running(contender, child, port, startup, launch.scrape)


# --- the upstream --------------------------------------------------------------------------


def upstream_launch(work: Workdir, port: int, name: str) -> Launch:
    conf = nginx.write_upstream_conf(work.dir, name, port, work.nofile, work.connections)
    return Launch(nginx.nginx_argv(conf, work.dir))


def start_upstream(procs: Processes, work: Workdir) -> Child:
    child = procs.start("upstream", upstream_launch(work, work.upstream_port, "upstream").argv)
    wait_ready(child, work.upstream_port)
    return child


def h2_upstream_launch(work: Workdir, port: int, name: str) -> Launch:
    conf = nginx.write_h2_upstream_conf(work.dir, name, port, work.nofile, work.connections)
    return Launch(nginx.nginx_argv(conf, work.dir))


def start_h2_upstream(procs: Processes, work: Workdir) -> Child:
    """The h2c upstream (http2 only), next to the HTTP/1.1 one."""
    launch = h2_upstream_launch(work, work.h2_upstream_port, "h2-upstream")
    child = procs.start("h2-upstream", launch.argv)
    wait_ready(child, work.h2_upstream_port, status=h2_status)
    return child


RPC_STATUS = {"bolt": rpc_status, "dubbo": dubbo_status}


def bolt_server_launch(work: Workdir, port: int, name: str, protocol: str = "bolt") -> Launch:
    argv = [sys.executable, "-m", "bench.bolt_server", "--port", str(port)]
    if protocol != "bolt":
        argv += ["--protocol", protocol]
    return Launch(argv)


def start_rpc_upstream(procs: Processes, work: Workdir, protocol: str = "bolt") -> Child:
    """The bolt (or Dubbo) echo server (rpc only): one asyncio process. The Dubbo one listens on
    ``work.dubbo_upstream_port`` (set it first)."""
    port = work.dubbo_upstream_port if protocol == "dubbo" else work.upstream_port
    name = "rpc-upstream" if protocol == "bolt" else f"rpc-upstream-{protocol}"
    launch = bolt_server_launch(work, port, name, protocol)
    child = procs.start(name, launch.argv, cwd=REPO_ROOT)
    wait_ready(child, port, status=RPC_STATUS[protocol])
    return child


# --- builders ------------------------------------------------------------------------------


def _direct(work: Workdir, port: int, tag: str) -> Launch:
    return upstream_launch(work, port, f"direct-{tag}")


def _nginx(work: Workdir, port: int, tag: str) -> Launch:
    name = f"nginx-{tag}"
    conf = nginx.write_proxy_conf(
        work.dir, name, port, work.upstream_port, work.nofile, work.connections
    )
    return Launch(nginx.nginx_argv(conf, work.dir))


_TRIO_MESH_CONF = """\
# trio-mesh benchmark configuration (written by bench/): one listener, the proxy filter,
# every path to the upstream cluster. Everything else is trio-mesh's defaults.
servers:
  - default_log_level: WARN
    listeners:
      - name: bench
        address: "127.0.0.1:{port}"
        filter_chains:
          - filters:
              - type: proxy
                config:
                  downstream_protocol: {downstream}
                  upstream_protocol: {upstream_protocol}
                  router_config_name: bench_routes
    routers:
      - router_config_name: bench_routes
        virtual_hosts:
          - name: all
            domains: ["*"]
            routers:
              - match: {{prefix: /}}
                route: {{cluster_name: upstream}}
cluster_manager:
  clusters:
    - name: upstream
      hosts:
        - address: "{upstream}"
"""


# The three typical stream filters of the filters benchmark (issue 7): header mutation, a
# rate limit far above any load here, and fault injection at 0%: what the mechanism costs.
_BENCH_STREAM_FILTERS = """\
        stream_filters:
          - type: header_mutation
            config:
              request: {add: [{key: x-bench, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]}
              response: {set: [{key: x-proxy, value: trio-mesh}]}
          - type: flowcontrol
            config: {max_tokens: 100000000, tokens_per_fill: 100000000, fill_interval: 1s}
          - type: fault
            config:
              delay_percent: 0
              delay_duration: 1s
              abort_percent: 0
              abort_status: 503
"""


_TRIO_MESH_TCP_CONF = """\
# trio-mesh benchmark configuration (written by bench/): the L4 tcp_proxy filter, no HTTP
# work at all: what trio-mesh's runtime (Trio, the socket stream, the relay) costs by itself.
servers:
  - default_log_level: WARN
    listeners:
      - name: bench
        address: "127.0.0.1:{port}"
        filter_chains:
          - filters:
              - type: tcp_proxy
                config:
                  cluster: upstream
cluster_manager:
  clusters:
    - name: upstream
      hosts:
        - address: "{upstream}"
"""


def _trio_mesh_tcp(work: Workdir, port: int, tag: str) -> Launch:
    conf = work.dir / f"trio-mesh-tcp-{tag}.yaml"
    conf.write_text(_TRIO_MESH_TCP_CONF.format(port=port, upstream=work.upstream))
    return Launch([sys.executable, "-m", "trio_mesh.cli", "run", str(conf), "--log-level", "WARN"])


def _trio_mesh(workers: int, filters: bool = False) -> Callable[[Workdir, int, str], Launch]:
    def build(work: Workdir, port: int, tag: str) -> Launch:
        conf = work.dir / f"trio-mesh-{workers}{'-filters' if filters else ''}-{tag}.yaml"
        text = _TRIO_MESH_CONF.format(
            port=port, upstream=work.upstream, downstream="Http1", upstream_protocol="Http1"
        )
        if filters:
            chains = "        filter_chains:"
            text = text.replace(chains, _BENCH_STREAM_FILTERS + chains)
        conf.write_text(text)
        argv = [sys.executable, "-m", "trio_mesh.cli", "run", str(conf), "--log-level", "WARN"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        return Launch(argv)

    return build


# trio-mesh-1 with its observability on (issue 17): the admin API and MOSN's prometheus sink,
# which the harness scrapes once a second during each run (bench/scraper.py).
_METRICS_CONF = """\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
metrics:
  sinks:
    - type: prometheus
      config: {{port: {metrics_port}, endpoint: /metrics}}
"""


def _trio_mesh_metrics(work: Workdir, port: int, tag: str) -> Launch:
    conf = work.dir / f"trio-mesh-metrics-{tag}.yaml"
    metrics_port = free_port()
    text = _TRIO_MESH_CONF.format(
        port=port, upstream=work.upstream, downstream="Http1", upstream_protocol="Http1"
    )
    conf.write_text(text + _METRICS_CONF.format(admin_port=free_port(), metrics_port=metrics_port))
    argv = [sys.executable, "-m", "trio_mesh.cli", "run", str(conf), "--log-level", "WARN"]
    return Launch(argv, scrape=f"http://127.0.0.1:{metrics_port}/metrics")


# trio-mesh terminating TLS (issue 16): the Http1 proxy above with a tls_context on its one
# filter chain, as MOSN writes it. Everything else (versions, ciphers, curves, tickets off) is
# trio-mesh's defaults; the load tool pins the cipher (bench/tls_client.py).
_TLS_CONTEXT = """\
          - tls_context:
              status: true
              cert_chain: "{cert}"
              private_key: "{key}"
            filters:"""


def _trio_mesh_tls(work: Workdir, port: int, tag: str) -> Launch:
    assert work.tls_cert is not None and work.tls_key is not None
    conf = work.dir / f"trio-mesh-tls-{tag}.yaml"
    text = _TRIO_MESH_CONF.format(
        port=port, upstream=work.upstream, downstream="Http1", upstream_protocol="Http1"
    )
    chain = "          - filters:"
    assert text.count(chain) == 1
    text = text.replace(chain, _TLS_CONTEXT.format(cert=work.tls_cert, key=work.tls_key))
    conf.write_text(text)
    return Launch([sys.executable, "-m", "trio_mesh.cli", "run", str(conf), "--log-level", "WARN"])


def _nginx_tls(work: Workdir, port: int, tag: str) -> Launch:
    assert work.tls_cert is not None and work.tls_key is not None
    conf = nginx.write_tls_proxy_conf(
        work.dir,
        f"nginx-tls-{tag}",
        port,
        work.upstream_port,
        work.nofile,
        work.connections,
        cert=work.tls_cert,
        key=work.tls_key,
    )
    return Launch(nginx.nginx_argv(conf, work.dir))


def _direct_h2(work: Workdir, port: int, tag: str) -> Launch:
    return h2_upstream_launch(work, port, f"direct-h2-{tag}")


def _nginx_h2(plain_over_h2: bool) -> Callable[[Workdir, int, str], Launch]:
    def build(work: Workdir, port: int, tag: str) -> Launch:
        name = f"nginx-h2{'-grpc-pass' if plain_over_h2 else ''}-{tag}"
        conf = nginx.write_h2_proxy_conf(
            work.dir,
            name,
            port,
            work.upstream_port,
            work.h2_upstream_port,
            work.nofile,
            work.connections,
            plain_over_h2=plain_over_h2,
        )
        return Launch(nginx.nginx_argv(conf, work.dir))

    return build


def _trio_mesh_h2(upstream_protocol: str) -> Callable[[Workdir, int, str], Launch]:
    """One process, ``downstream_protocol: Http2``; upstream ``Http1`` to the HTTP/1.1
    upstream or ``Http2`` to the h2c upstream. http2 options: trio-mesh's defaults."""

    def build(work: Workdir, port: int, tag: str) -> Launch:
        conf = work.dir / f"trio-mesh-h2{upstream_protocol[-1]}-{tag}.yaml"
        upstream = work.h2_upstream if upstream_protocol == "Http2" else work.upstream
        conf.write_text(
            _TRIO_MESH_CONF.format(
                port=port,
                upstream=upstream,
                downstream="Http2",
                upstream_protocol=upstream_protocol,
            )
        )
        argv = [sys.executable, "-m", "trio_mesh.cli", "run", str(conf), "--log-level", "WARN"]
        return Launch(argv)

    return build


_TRIO_MESH_BOLT_CONF = """\
# trio-mesh benchmark configuration (written by bench/): {title}, the proxy filter, every
# service (the request's `service` header) to the upstream cluster. Otherwise the defaults.
servers:
  - default_log_level: WARN
    listeners:
      - name: bench
        address: "127.0.0.1:{port}"
        filter_chains:
          - filters:
              - type: proxy
                config:
                  downstream_protocol: {protocol}
                  router_config_name: bench_routes
    routers:
      - router_config_name: bench_routes
        virtual_hosts:
          - name: all
            domains: ["*"]
            routers:
              - match: {{headers: [{{name: service, value: ".*", regex: true}}]}}
                route: {{cluster_name: upstream}}
cluster_manager:
  clusters:
    - name: upstream
      hosts:
        - address: "{upstream}"
"""


_RPC_TITLES = {"bolt": "SOFA bolt", "dubbo": "Apache Dubbo"}


def _direct_rpc(protocol: str) -> Callable[[Workdir, int, str], Launch]:
    def build(work: Workdir, port: int, tag: str) -> Launch:
        return bolt_server_launch(work, port, f"direct-{protocol}-{tag}", protocol)

    return build


def _trio_mesh_rpc(protocol: str) -> Callable[[Workdir, int, str], Launch]:
    def build(work: Workdir, port: int, tag: str) -> Launch:
        conf = work.dir / f"trio-mesh-{protocol}-{tag}.yaml"
        conf.write_text(
            _TRIO_MESH_BOLT_CONF.format(
                title=_RPC_TITLES[protocol],
                protocol=protocol,
                port=port,
                upstream=work.rpc_upstream(protocol),
            )
        )
        argv = [sys.executable, "-m", "trio_mesh.cli", "run", str(conf), "--log-level", "WARN"]
        return Launch(argv)

    return build


def _floor(
    module: str, upstream: Callable[[Workdir], str]
) -> Callable[[Workdir, int, str], Launch]:
    """A floor relay (``bench/floor_*.py``): the least a correct relay does on trio-mesh's
    runtime, so the distance to it is what trio-mesh's own code costs."""

    def build(work: Workdir, port: int, tag: str) -> Launch:
        argv = [sys.executable, "-m", f"bench.{module}", "--port", str(port)]
        return Launch([*argv, "--upstream", upstream(work)])

    return build


def _proxy_py(work: Workdir, port: int, tag: str) -> Launch:
    # --threaded (a thread per client connection), not proxy.py's default threadless mode: in
    # threadless mode (2.4.10) the reverse proxy's event loop dies with FileNotFoundError from
    # selector.modify() on the second request of a keep-alive connection (proxy.py issue
    # #1483), and the proxy stops serving. One acceptor process.
    # --timeout 300: its default (10 s) would drop the idle-10k connections while they open.
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "--hostname",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-reverse-proxy",
        "--plugins",
        "bench.proxypy_reverse.BenchReverseProxy",
        "--threaded",
        "--num-acceptors",
        "1",
        "--log-level",
        "ERROR",
        "--timeout",
        "300",
        "--open-file-limit",
        str(work.nofile),
        "--backlog",
        "4096",
    ]
    env = {"BENCH_UPSTREAM": work.upstream, "PYTHONPATH": str(REPO_ROOT)}
    return Launch(argv, env)


def _mitmproxy(work: Workdir, port: int, tag: str) -> Launch:
    # connection_strategy=lazy: connect upstream on the first request, not on accept.
    # confdir in the run's temp dir: its CA is made on the first start, not in ~/.mitmproxy.
    argv = [
        str(BIN_DIR / "mitmdump"),
        "--mode",
        f"reverse:http://{work.upstream}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "-q",
        "--set",
        "connection_strategy=lazy",
        "--set",
        f"confdir={work.dir / 'mitmproxy'}",
        "--set",
        "termlog_verbosity=error",
        "--set",
        "flow_detail=0",
    ]
    return Launch(argv)


# --- availability --------------------------------------------------------------------------


def _need_binary(path: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if shutil.which(path) or os.access(path, os.X_OK):
            return None
        return f"{path} not found"

    return check


@functools.cache
def _trio_mesh_workers_flag() -> str | None:
    out = subprocess.run(
        [sys.executable, "-m", "trio_mesh.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )
    if "--workers" in out.stdout:
        return None
    return "`trio-mesh run --help` does not list --workers yet"


def _need_module(module: str, extra: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"python module {module!r} not installed (pip install -e '.[{extra}]')"
        return None

    return check


def _trio_mesh_tls_available() -> str | None:
    # TLS termination lands with issue 16 (trio_mesh/network/tls.py, a filter chain's
    # tls_context, the listener's side); before all are in the tree, no HTTPS listener.
    if importlib.util.find_spec("trio_mesh.network.tls") is None:
        return "trio_mesh.network.tls not in this tree (TLS termination not merged yet)"
    import attrs

    from trio_mesh.config.model import FilterChain

    if "tls_context" not in attrs.fields_dict(FilterChain):
        return "filter_chains[].tls_context not in this tree's configuration model yet"
    # The listener side (ClientHello inspection, the handshake on accept) comes with it.
    if importlib.util.find_spec("trio_mesh.protocols.tls_hello") is None:
        return "the listener's TLS side (trio_mesh.protocols.tls_hello) not in this tree yet"
    return None


def _need_mitmdump() -> str | None:
    path = BIN_DIR / "mitmdump"
    if not path.exists():
        return f"{path} not found (pip install -e '.[bench]')"
    return None


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender(
            "direct",
            "client straight to the nginx upstream (the ceiling); CPU/RSS are the upstream's",
            _direct,
            _need_binary(nginx.NGINX),
        ),
        Contender(
            "nginx",
            "nginx, 1 worker, reverse proxy with upstream keepalive 64",
            _nginx,
            _need_binary(nginx.NGINX),
        ),
        Contender("trio-mesh-1", "trio-mesh run, 1 process", _trio_mesh(1)),
        Contender(
            "trio-mesh-metrics",
            "trio-mesh-1 plus the admin API and a prometheus sink, scraped once a second",
            _trio_mesh_metrics,
        ),
        Contender(
            "trio-mesh-filters",
            "trio-mesh-1 plus three stream filters: header_mutation, flowcontrol (limit far"
            " above the load), fault at 0%",
            _trio_mesh(1, filters=True),
        ),
        Contender(
            "trio-mesh-tcp",
            "trio-mesh run, 1 process, tcp_proxy (L4 relay, no HTTP parsing): the stack's floor",
            _trio_mesh_tcp,
        ),
        Contender(
            "trio-floor-h1",
            "bench/floor_h1.py: Trio + httptools keep-alive relay, one upstream connection per"
            " client connection, no routing, trio-mesh's socket Stream (the floor for HTTP/1)",
            _floor("floor_h1", lambda w: w.upstream),
        ),
        Contender(
            "trio-mesh-2",
            "trio-mesh run --workers 2 (SO_REUSEPORT)",
            _trio_mesh(2),
            _trio_mesh_workers_flag,
        ),
        Contender(
            "proxy.py",
            "proxy.py --enable-reverse-proxy --threaded, 1 acceptor, static routes (bench plugin)",
            _proxy_py,
            _need_module("proxy", "bench"),
        ),
        Contender(
            "mitmproxy",
            "mitmdump --mode reverse, connection_strategy=lazy",
            _mitmproxy,
            _need_mitmdump,
        ),
    )
}

H2_CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender(
            "direct",
            "h2c straight to the nginx h2c upstream (the ceiling); CPU/RSS are the upstream's",
            _direct_h2,
            _need_binary(nginx.NGINX),
            h2_status,
        ),
        Contender(
            "nginx",
            "nginx, 1 worker, h2c listener; proxy_pass (HTTP/1.1, keepalive 1024) to the HTTP/1.1"
            " upstream, gRPC by grpc_pass (keepalive 1024) to the h2c upstream",
            _nginx_h2(plain_over_h2=False),
            _need_binary(nginx.NGINX),
            h2_status,
        ),
        Contender(
            "nginx-grpc-pass",
            "nginx, 1 worker, h2c listener, everything by grpc_pass (HTTP/2, keepalive 1024) to"
            " the h2c upstream: the h2 -> h2 path",
            _nginx_h2(plain_over_h2=True),
            _need_binary(nginx.NGINX),
            h2_status,
        ),
        Contender(
            "trio-mesh-h2h1",
            "trio-mesh run, 1 process, Http2 downstream, Http1 upstream (the HTTP/1.1 upstream)",
            _trio_mesh_h2("Http1"),
            status=h2_status,
        ),
        Contender(
            "trio-mesh-h2h2",
            "trio-mesh run, 1 process, Http2 downstream, Http2 upstream (the h2c upstream)",
            _trio_mesh_h2("Http2"),
            status=h2_status,
        ),
        Contender(
            "trio-floor-h2",
            "bench/floor_h2.py: h2c -> h2c relay on Trio and h2, one task per stream, one"
            " upstream connection per client connection (the floor for h2 -> h2)",
            _floor("floor_h2", lambda w: w.h2_upstream),
            status=h2_status,
        ),
    )
}


def rpc_contenders(protocol: str) -> dict[str, Contender]:
    """``direct`` and ``trio-mesh`` for ``protocol`` (bolt or dubbo): the same two contenders,
    built with that protocol's echo server, trio-mesh configuration and readiness request."""
    status = RPC_STATUS[protocol]
    return {
        c.name: c
        for c in (
            Contender(
                "direct",
                "straight to a private copy of the scenario's echo server (bolt or Dubbo; the"
                " ceiling); CPU/RSS are the server's",
                _direct_rpc(protocol),
                status=status,
            ),
            Contender(
                "trio-mesh",
                "trio-mesh run, 1 process, downstream_protocol: bolt (or dubbo), routed on the"
                " service header to the shared echo server of that protocol",
                _trio_mesh_rpc(protocol),
                status=status,
            ),
            Contender(
                "trio-floor-bolt",
                "bench/floor_bolt.py: bolt v1 relay on Trio, every client multiplexed on one"
                " upstream connection with ids rewritten (the floor for bolt; bolt only)",
                _floor("floor_bolt", lambda w: w.rpc_upstream("bolt")),
                status=status,
            ),
        )
    }


RPC_CONTENDERS: dict[str, Contender] = rpc_contenders("bolt")

TLS_CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender(
            "nginx-tls",
            "nginx, 1 worker, terminating TLS (same certificate; session cache and tickets off),"
            " reverse proxy with upstream keepalive 64",
            _nginx_tls,
            _need_binary(nginx.NGINX),
            https_status,
            "https",
        ),
        Contender(
            "trio-mesh-tls",
            "trio-mesh run, 1 process, Http1 proxy, filter_chains[0].tls_context (status: true,"
            " cert_chain, private_key; trio-mesh's TLS defaults)",
            _trio_mesh_tls,
            _trio_mesh_tls_available,
            https_status,
            "https",
        ),
        Contender(
            "trio-mesh",
            "trio-mesh run, 1 process, Http1 proxy, cleartext (trio-mesh-1 of http1): the"
            " reference of the TLS GET target",
            _trio_mesh(1),
        ),
    )
}
