"""``python -m bench.health_micro``: what active health checking costs: one cluster of
``--hosts`` hosts (each a listener of a helper process on 127.0.0.1) checked by TCP connect
every ``--interval`` seconds by ``upstream.health.HealthChecker`` alone (no proxy, no
requests), and this process's CPU time (user and system) over ``--seconds``.

The issue's target: 1,000 hosts at a 1 s interval under 5% of one core.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import trio

from trio_mesh.config import parse_config
from trio_mesh.upstream import Cluster
from trio_mesh.upstream.health import HealthChecker

#: The helper: N listeners that accept and wait for the checker's close; prints the ports.
SERVERS = """
import sys, trio
async def main(n):
    async def handler(stream):
        try:
            await stream.receive_some(16)
        except trio.BrokenResourceError:
            pass
    async with trio.open_nursery() as nursery:
        ports = []
        for _ in range(n):
            listeners = await nursery.start(trio.serve_tcp, handler, 0)
            ports.append(listeners[0].socket.getsockname()[1])
        print(" ".join(map(str, ports)), flush=True)
trio.run(main, int(sys.argv[1]))
"""


async def measure(ports: list[str], interval: float, seconds: float) -> None:
    doc = {
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "hosts": [{"address": f"127.0.0.1:{p}"} for p in ports],
                    "health_check": {
                        "protocol": "tcp",
                        "timeout": "1s",
                        "interval": f"{int(interval * 1000)}ms",
                        "interval_jitter": f"{int(interval * 100)}ms",
                    },
                }
            ]
        }
    }
    (config,) = parse_config(doc).config.cluster_manager.clusters
    cluster = Cluster(config)
    stats = cluster.stats
    async with trio.open_nursery() as nursery:
        nursery.start_soon(HealthChecker(cluster).run)
        await trio.sleep(2 * interval)  # past the first round's connects
        before, wall, attempts = os.times(), time.monotonic(), stats.health_check_attempt
        await trio.sleep(seconds)
        after, wall = os.times(), time.monotonic() - wall
        checks = stats.health_check_attempt - attempts
        user, system = after.user - before.user, after.system - before.system
        print(
            f"{len(ports)} hosts every {interval:g}s (+<=10% jitter): {checks / wall:.0f} checks/s,"
            f" {stats.health_check_failure} failed; CPU {100 * (user + system) / wall:.1f}% of a"
            f" core (user {100 * user / wall:.1f}%, system {100 * system / wall:.1f}%),"
            f" {1e6 * (user + system) / max(checks, 1):.0f} us a check"
        )
        nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--smoke", action="store_true", help="50 hosts for 2 s")
    args = parser.parse_args()
    if args.smoke:
        args.hosts, args.seconds = 50, 2.0
    servers = subprocess.Popen(
        [sys.executable, "-c", SERVERS, str(args.hosts)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: stopped as a whole below
    )
    try:
        assert servers.stdout is not None
        ports = servers.stdout.readline().split()
        if len(ports) != args.hosts:
            print(f"the helper listened on {len(ports)} of {args.hosts} ports", file=sys.stderr)
            return 1
        trio.run(measure, ports, args.interval, args.seconds)
        return 0
    finally:
        os.killpg(servers.pid, signal.SIGTERM)
        servers.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
