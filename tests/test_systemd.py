"""``Type=notify``: the proxy tells systemd READY=1 once bound and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


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
