"""``--workers 2`` under systemd: the supervisor speaks for every worker. READY=1 once all
are ready, RELOADING=1 then READY=1 once each has reloaded, WATCHDOG=1 only while every
worker reports alive (a stopped worker stops the pings), STOPPING=1."""

from __future__ import annotations

import itertools
import os
import re
import signal

from tests.cli_helpers import write_config
from tests.systemd.helpers import Child, Notify, run_argv


def test_supervisor_watchdog_reload_and_stop_for_its_workers(tmp_path):
    listener = {
        "name": "e",
        "address": "127.0.0.1:0",
        "filter_chains": [{"filters": [{"type": "echo"}]}],
    }
    config = write_config(tmp_path, {"servers": [{"listeners": [listener]}]})
    notify = Notify(tmp_path)
    proxy = Child(run_argv(config, "--workers", "2"), notify.env(WATCHDOG_USEC="800000"))
    stopped = None
    try:
        started = re.compile(r"worker \d started \(pid (\d+)\)$")
        pids = [int(proxy.wait_for(started)[1]) for _ in range(2)]
        ready = notify.next("READY")
        assert ready.fields["STATUS"] == f"serving 1 listener(s) from {config}, 2 workers"
        pings = notify.pings_during(2.0)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(pings) >= 4 and all(0.3 <= g <= 0.6 for g in gaps), gaps

        # One worker stalls (its loop stopped): within 3/4 of the interval the pings stop.
        stopped = pids[0]

        os.kill(stopped, signal.SIGSTOP)
        pings = notify.pings_during(2.0)
        assert len(pings) <= 2, pings  # the ones already due before it was missed
        assert notify.pings_during(1.0) == []
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        notify.next("WATCHDOG", timeout=5)  # alive again: the pings resume

        proxy.proc.send_signal(signal.SIGHUP)
        reloading = notify.next("RELOADING")
        assert "MONOTONIC_USEC" in reloading.fields
        again = notify.next("READY")
        assert again.at >= reloading.at
        assert proxy.wait_for(re.compile(r"configuration reloaded")), proxy.text

        proxy.proc.send_signal(signal.SIGTERM)
        stopping = notify.next("STOPPING")
        assert stopping.fields["STATUS"] == "draining"
        assert proxy.finish() == 0
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        proxy.kill()
        notify.close()
