"""``Type=notify`` with a datagram socket standing in for NOTIFY_SOCKET: READY=1 with
STATUS=, RELOADING=1 + MONOTONIC_USEC on SIGHUP then READY=1 (applied or refused),
STOPPING=1 on SIGTERM, WATCHDOG=1 at half of WATCHDOG_USEC."""

from __future__ import annotations

import itertools
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from tests.systemd.helpers import Child, Notify, run_argv

ECHO = (
    "servers: [{listeners: [{name: e, address: '127.0.0.1:0',"
    " filter_chains: [{filters: [{type: echo}]}]}]}]\n"
)
TWO = (
    "servers: [{listeners: ["
    "{name: e, address: '127.0.0.1:0', filter_chains: [{filters: [{type: echo}]}]},"
    "{name: f, address: '127.0.0.1:0', filter_chains: [{filters: [{type: echo}]}]}]}]\n"
)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_ready_status_reload_refused_reload_and_stopping(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(ECHO)
    notify = Notify(tmp_path)
    proxy = Child(run_argv(config), notify.env())
    try:
        ready = notify.recv()
        assert ready is not None
        assert ready.fields == {"READY": "1", "STATUS": f"serving 1 listener(s) from {config}"}

        config.write_text(TWO)
        before = monotonic_usec()
        proxy.proc.send_signal(signal.SIGHUP)
        reloading = notify.recv()
        after = monotonic_usec()
        assert reloading is not None
        assert reloading.fields["RELOADING"] == "1"
        assert reloading.fields["STATUS"] == "reloading"
        assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
        again = notify.recv()
        assert again is not None
        assert again.fields == {"READY": "1", "STATUS": f"serving 2 listener(s) from {config}"}

        config.write_text("servers: [\n")  # does not parse: refused, the two listeners kept
        proxy.proc.send_signal(signal.SIGHUP)
        refusing = notify.recv()
        assert refusing is not None and refusing.fields["RELOADING"] == "1"
        refused = notify.recv()
        assert refused is not None
        assert refused.fields == {
            "READY": "1",
            "STATUS": f"serving 2 listener(s) from {config} (reload refused: configuration kept)",
        }

        proxy.proc.send_signal(signal.SIGTERM)
        stopping = notify.recv()
        assert stopping is not None
        assert stopping.fields == {"STOPPING": "1", "STATUS": "draining"}
        assert proxy.finish() == 0
        # Nothing else was said (no watchdog asked for).
        assert notify.recv(timeout=0.01) is None
    finally:
        proxy.kill()
        notify.close()


def test_watchdog_pings_at_half_of_watchdog_usec(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(ECHO)
    notify = Notify(tmp_path)
    proxy = Child(run_argv(config), notify.env(WATCHDOG_USEC="600000"))
    try:
        notify.next("READY")
        pings = notify.pings_during(2.0)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 5 <= len(pings) <= 8, pings
        assert all(0.2 <= g <= 0.45 for g in gaps), gaps
        assert abs(sum(gaps) / len(gaps) - 0.3) < 0.05, gaps
        proxy.proc.send_signal(signal.SIGSTOP)  # the whole process stalled: no ping
        try:
            assert notify.pings_during(1.0) == []
        finally:
            proxy.proc.send_signal(signal.SIGCONT)
        notify.next("WATCHDOG", timeout=5)
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.finish() == 0
    finally:
        proxy.kill()
        notify.close()


def test_no_watchdog_for_another_process_and_none_without_watchdog_usec(tmp_path):
    """WATCHDOG_PID names another process (a parent's watchdog): not ours to keep."""
    config = tmp_path / "c.yaml"
    config.write_text(ECHO)
    notify = Notify(tmp_path)
    proxy = Child(run_argv(config), notify.env(WATCHDOG_USEC="200000", WATCHDOG_PID="1"))
    try:
        notify.next("READY")
        assert notify.pings_during(0.6) == []
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.finish() == 0
    finally:
        proxy.kill()
        notify.close()


def test_a_notify_socket_nobody_reads_never_blocks_the_proxy(tmp_path):
    """NOTIFY_SOCKET's queue is full (its reader stopped): READY=1, WATCHDOG=1 and
    STOPPING=1 are dropped with a warning, and the proxy starts, serves and stops all the
    same."""
    config = tmp_path / "c.yaml"
    config.write_text(ECHO)
    notify = Notify(tmp_path)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    try:
        while True:  # fill the receiver's queue: the next blocking sendto would wait
            filler.sendto(b"x", notify.path)
    except BlockingIOError:
        pass
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_mesh.cli", "run", str(config)],
        env=notify.env(WATCHDOG_USEC="200000"),
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(15, proc.kill)  # a proxy blocked in sendto never exits
    watchdog.start()
    try:
        port = None
        lines = []
        assert proc.stderr is not None
        for line in proc.stderr:  # ends at exit: a blocked proxy fails by the timeout below
            lines.append(line)
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
            if "sd_notify b'WATCHDOG=1' failed" in line:
                break
        assert port is not None and proc.poll() is None, "".join(lines)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        text = "".join(lines) + proc.stderr.read()
        assert "sd_notify b'READY=1\\nSTATUS=serving 1 listener(s) from" in text
        assert "sd_notify b'STOPPING=1\\nSTATUS=draining' failed" in text
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        notify.close()
        filler.close()
