"""``Type=notify``: the proxy tells systemd READY=1 once bound and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading


def test_sd_notify_ready_then_stopping(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "servers: [{listeners: [{name: e, address: '127.0.0.1:0',"
        " filter_chains: [{filters: [{type: echo}]}]}]}]\n"
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify")
    notify.bind(notify_path)
    notify.settimeout(20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_mesh.cli", "run", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": notify_path},
        stderr=subprocess.DEVNULL,
    )
    try:
        assert notify.recv(100) == b"READY=1"
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(100) == b"STOPPING=1"
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
        notify.close()


def test_a_notify_socket_nobody_reads_never_blocks_the_proxy(tmp_path):
    """NOTIFY_SOCKET's queue is full (its reader stopped): READY=1 and STOPPING=1 are
    dropped with a warning, and the proxy starts, serves and stops all the same."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "servers: [{listeners: [{name: e, address: '127.0.0.1:0',"
        " filter_chains: [{filters: [{type: echo}]}]}]}]\n"
    )
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    try:
        while True:  # fill the receiver's queue: the next blocking sendto would wait
            filler.sendto(b"x", notify_path)
    except BlockingIOError:
        pass
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_mesh.cli", "run", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": notify_path},
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(15, proc.kill)  # a proxy blocked in sendto never exits
    watchdog.start()
    try:
        port = None
        lines = []
        for line in proc.stderr:  # ends at exit: a blocked proxy fails by the timeout below
            lines.append(line)
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
            if re.search(r"trio-mesh \S+ ready$", line.rstrip()):
                break
        assert port is not None and proc.poll() is None, "".join(lines)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        rest = proc.stderr.read()
        text = "".join(lines) + rest
        assert "sd_notify b'READY=1' failed" in text
        assert "sd_notify b'STOPPING=1' failed" in text
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        notify.close()
        filler.close()
