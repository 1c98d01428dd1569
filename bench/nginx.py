"""nginx configurations the harness writes: the upstreams (fixed responses), the nginx contenders.

All run one worker, ``daemon off`` (the master stays our child, so its process group is
stopped as a whole), with every path (pid, logs, temp dirs) inside the run's temp dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .h2 import GRPC_MESSAGE, GRPC_PATH, grpc_frame

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SMALL_BODY = "hello"
BODY_64K_SIZE = 64 * 1024

# Common to both: one worker, no access log, long keep-alive, room for 10,000+ connections.
# worker_rlimit_nofile stays within the hard limit the harness inherits.
_MAIN = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
worker_rlimit_nofile {nofile};
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    default_type text/plain;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/{name}-client-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
{body}
}}
"""

_UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /small {{ return 200 "{small}"; }}
        location = /64k {{ root {dir}; default_type application/octet-stream; }}
        location = /post {{ client_body_buffer_size 16k; return 200 "{small}"; }}
    }}
"""

# The nginx contender: a reverse proxy with upstream keep-alive, as nginx is deployed in
# front of a service. Its response buffers hold a 64 KiB body in memory
# (proxy_max_temp_file_size 0: never spooled to disk), so it does not pay for disk writes
# the Python proxies (which stream) do not make.
_PROXY_SERVER = """\
    upstream u {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


# --- HTTP/2 (python -m bench http2) ---------------------------------------------------------

# The h2c upstream: cleartext HTTP/2 with prior knowledge (``listen ... http2`` without ssl
# speaks nothing else). /small as above; /test.Echo/Unary answers every POST with one fixed
# gRPC message and a ``grpc-status: 0`` trailer, after reading the request to its END_STREAM:
# - mirror_request_body (precontent phase) reads the body before the content handler runs.
#   Answering first (a `return`, which runs in the rewrite phase) makes nginx finish the
#   stream while the request's DATA frame is still unread, and send RST_STREAM(NO_ERROR)
#   after the response; nginx 1.22's grpc_pass then sometimes reads that RST on an upstream
#   connection it already reused for the next call, and answers that call 502 ("upstream sent
#   frame for unknown stream"), about 1 in 10,000 calls here.
# - the static module answers a POST to an existing file 405; error_page turns that into an
#   internal redirect to the file (such a redirect changes the method to GET) with status 200.
# - add_trailer sends the trailer as a HEADERS frame with END_STREAM after the DATA frame
#   (checked with nghttp -v and grpcio's client: StatusCode.OK).
# - sendfile off: with sendfile nginx writes the HEADERS frame, then turns TCP_NODELAY off and
#   corks the DATA and trailer frames; uncorked, those wait (Nagle) for the ACK of the
#   HEADERS, which a peer with one stream on the connection (nginx's grpc_pass) delays by
#   ~40 ms. open_file_cache: the file is opened once, not twice per call.
_H2_UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        sendfile off;
        open_file_cache max=16 inactive=1h;
        open_file_cache_valid 1h;
        location = /small {{ return 200 "{small}"; }}
        location = {grpc_path} {{
            alias {dir}/grpc-response;
            client_body_buffer_size 16k;
            mirror /read-body;
            mirror_request_body on;
            error_page 405 =200 /grpc-response;
        }}
        location = /read-body {{ internal; return 204; }}
        location = /grpc-response {{
            internal;
            root {dir};
            default_type application/grpc;
            etag off;
            add_trailer grpc-status 0 always;
        }}
    }}
"""

# The nginx contenders for HTTP/2: an h2c listener. ``nginx``: plain HTTP to the HTTP/1.1
# upstream as above (proxy_pass, keepalive), gRPC to the h2c upstream (grpc_pass, keepalive:
# nginx runs one stream per upstream connection and reuses the connections). ``grpc-pass``:
# everything over grpc_pass to the h2c upstream, the h2 -> h2 path trio-mesh-h2h2 takes.
# keepalive 1024: nginx needs an upstream connection per request in flight, and h2load keeps
# 100 in flight (10 connections x 10 streams); with 64 kept, nginx closed and reopened
# connections all the time (measured: +40% CPU per request with proxy_pass, a p99 of 47 ms
# instead of 10 ms with grpc_pass).
_H2_PROXY_SERVER = """\
    upstream u1 {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    upstream u2 {{
        server 127.0.0.1:{h2_upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{
{plain}
        }}
        location {grpc_prefix} {{
            grpc_pass grpc://u2;
        }}
    }}
"""

_H1_UPSTREAM_LOCATION = """\
            proxy_pass http://u1;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;"""

_H2_UPSTREAM_LOCATION = """\
            grpc_pass grpc://u2;"""

GRPC_RESPONSE_FILE = "grpc-response"

# --- TLS (python -m bench tls) --------------------------------------------------------------

# The nginx contender of the TLS benchmark: the HTTP/1 reverse proxy above, terminating TLS
# with the bench's certificate. nginx 1.22's default ssl_protocols lacks TLSv1.3 (added to the
# default in 1.23.4), so both versions trio-mesh allows are named. No session cache and no
# tickets, as trio-mesh's defaults (tickets off unless configured): every connection is a full
# handshake on both. The cipher is pinned by the load tool's OpenSSL configuration (the client
# offers TLS_AES_128_GCM_SHA256 only), so both servers negotiate the same one.
_TLS_PROXY_SERVER = """\
    upstream u {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


def write_body_files(directory: Path) -> None:
    """The 64 KiB file the upstream serves at ``/64k``; the h2 upstream's gRPC response."""
    path = directory / "64k"
    path.write_bytes(bytes(range(256)) * (BODY_64K_SIZE // 256))
    path.chmod(0o644)
    path = directory / GRPC_RESPONSE_FILE
    path.write_bytes(grpc_frame(GRPC_MESSAGE))
    path.chmod(0o644)


def write_h2_upstream_conf(
    directory: Path, name: str, port: int, nofile: int, connections: int
) -> Path:
    body = _H2_UPSTREAM_SERVER.format(
        port=port, dir=directory, small=SMALL_BODY, grpc_path=GRPC_PATH
    )
    return _write(directory, name, body, nofile, connections)


def write_h2_proxy_conf(
    directory: Path,
    name: str,
    port: int,
    upstream_port: int,
    h2_upstream_port: int,
    nofile: int,
    connections: int,
    *,
    plain_over_h2: bool = False,
) -> Path:
    body = _H2_PROXY_SERVER.format(
        port=port,
        upstream_port=upstream_port,
        h2_upstream_port=h2_upstream_port,
        plain=_H2_UPSTREAM_LOCATION if plain_over_h2 else _H1_UPSTREAM_LOCATION,
        grpc_prefix=GRPC_PATH.rsplit("/", 1)[0] + "/",
    )
    return _write(directory, name, body, nofile, connections)


def write_upstream_conf(
    directory: Path, name: str, port: int, nofile: int, connections: int
) -> Path:
    body = _UPSTREAM_SERVER.format(port=port, dir=directory, small=SMALL_BODY)
    return _write(directory, name, body, nofile, connections)


def write_proxy_conf(
    directory: Path, name: str, port: int, upstream_port: int, nofile: int, connections: int
) -> Path:
    body = _PROXY_SERVER.format(port=port, upstream_port=upstream_port)
    return _write(directory, name, body, nofile, connections)


def _write(directory: Path, name: str, body: str, nofile: int, connections: int) -> Path:
    text = _MAIN.format(dir=directory, name=name, body=body, nofile=nofile, connections=connections)
    path = directory / f"{name}.conf"
    path.write_text(text)
    return path


def nginx_argv(conf: Path, prefix: Path) -> list[str]:
    # -e: the error log nginx opens before reading its configuration, kept out of /var/log.
    return [
        NGINX,
        "-p",
        str(prefix),
        "-e",
        str(prefix / "nginx-startup-error.log"),
        "-c",
        str(conf),
    ]


def write_tls_proxy_conf(
    directory: Path,
    name: str,
    port: int,
    upstream_port: int,
    nofile: int,
    connections: int,
    *,
    cert: Path,
    key: Path,
) -> Path:
    body = _TLS_PROXY_SERVER.format(port=port, upstream_port=upstream_port, cert=cert, key=key)
    return _write(directory, name, body, nofile, connections)
