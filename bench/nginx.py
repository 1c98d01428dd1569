"""nginx configurations the harness writes: the upstream (fixed responses) and the nginx contender.

Both run one worker, ``daemon off`` (the master stays our child, so its process group is
stopped as a whole), with every path (pid, logs, temp dirs) inside the run's temp dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

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


def write_body_files(directory: Path) -> None:
    """The 64 KiB file the upstream serves at ``/64k``."""
    path = directory / "64k"
    path.write_bytes(bytes(range(256)) * (BODY_64K_SIZE // 256))
    path.chmod(0o644)


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
