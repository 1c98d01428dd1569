"""``python -m bench.h2_memory [streams] [--trace]``: RSS of the proxy over many h2c streams.

One h2load run (``-c10 -m10``) through the proxy, h2c → h2c, against the tests' h2 upstream in
another process (its single pooled connection lives for the whole run); the proxy runs in this
process, RSS and req/s sampled every 10 s. ``--trace``: tracemalloc from the first sample on,
and at the end the lines whose objects grew most (what is still held, and where it was made).
Used for docs/performance.md, "h2c memory over many streams".
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import tracemalloc

import trio

from tests.http_helpers import http_config, start_proxy, to

UPSTREAM = """
import trio
from tests.h2_upstream import start_h2_upstream

class _Nothing(list):
    def append(self, item: object) -> None:  # the upstream records nothing: flat memory
        pass

async def main() -> None:
    async with trio.open_nursery() as nursery:
        up = await start_h2_upstream(nursery, max_concurrent_streams=1000)
        up.requests = _Nothing()
        print(up.port, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


async def run(streams: int, trace: bool) -> None:
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE)
    try:
        assert upstream.stdout is not None
        port_up = int(upstream.stdout.readline())
        async with trio.open_nursery() as nursery:
            h2 = {"downstream_protocol": "Http2", "upstream_protocol": "Http2"}
            server, port = await start_proxy(nursery, http_config([to("up")], {"up": port_up}, h2))
            gc.freeze()
            stats = server.listeners["ingress"].stats
            print(f"start: RSS {rss_mib():.1f} MiB", flush=True)
            first: list[tracemalloc.Snapshot] = []

            async def sample() -> None:
                start = last_t = time.monotonic()
                last_n = 0
                while True:
                    await trio.sleep(10)
                    now, done = time.monotonic(), stats.downstream_rq_total
                    rate = (done - last_n) / (now - last_t)
                    last_t, last_n = now, done
                    print(
                        f"{now - start:5.0f} s {done:8d} streams  RSS {rss_mib():5.1f} MiB"
                        f"  {rate:5.0f} req/s",
                        flush=True,
                    )
                    if trace and not first:
                        tracemalloc.start(1)
                        first.append(tracemalloc.take_snapshot())

            nursery.start_soon(sample)
            url = f"http://127.0.0.1:{port}/echo"
            result = await trio.run_process(
                ["h2load", "-n", str(streams), "-c", "10", "-m", "10", url], capture_stdout=True
            )
            for line in result.stdout.decode().splitlines():
                if line.startswith(("finished", "requests:")):
                    print(line)
            gc.collect()
            print(f"end: RSS {rss_mib():.1f} MiB", flush=True)
            if first:
                for stat in tracemalloc.take_snapshot().compare_to(first[0], "lineno")[:10]:
                    print(stat)
                held = tracemalloc.get_traced_memory()[0] / 2**20
                print(f"held since the first sample: {held:.2f} MiB")
            nursery.cancel_scope.cancel()
    finally:
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--trace"]
    trio.run(run, int(args[0]) if args else 250_000, "--trace" in sys.argv)
