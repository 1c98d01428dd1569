"""How long ``Server.apply`` of a configuration with many TLS listeners takes, and how long it
stalls the event loop (the longest gap seen by a task that ticks every millisecond).

    python -m bench.tls_apply [--listeners 50] [--rounds 5] [--files]

Certificates are made in a temporary directory (``tests/tls_pki.py``, openssl). ``--files``:
the chains name certificate files; by default inline PEM (what xDS usually sends).
One proxy, plaintext upstreams never contacted: only configuration work is measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from trio_mesh import Server
from trio_mesh.config import MeshConfig, parse_config


def config(n: int, cert: str, key: str, version: int) -> MeshConfig:
    listeners = []
    for i in range(n):
        proxy = {"router_config_name": "r", "downstream_protocol": "Auto"}
        chain = {
            "filters": [{"type": "proxy", "config": proxy}],
            "tls_context": {"status": True, "cert_chain": cert, "private_key": key},
        }
        listeners.append({"name": f"tls{i}", "address": "127.0.0.1:0", "filter_chains": [chain]})
    # ``version`` changes a route: every listener is kept, only its TLS is rotated.
    route = {"match": {"prefix": f"/v{version}"}, "route": {"cluster_name": "up"}}
    doc: dict[str, Any] = {
        "servers": [
            {
                "listeners": listeners,
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "v", "domains": ["*"], "routers": [route]}],
                    }
                ],
            }
        ],
        "cluster_manager": {"clusters": [{"name": "up", "hosts": [{"address": "127.0.0.1:1"}]}]},
    }
    return parse_config(doc).config


async def measure(n: int, rounds: int, files: bool) -> dict[str, list[float]]:
    from tests.tls_pki import make_pki

    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        cert, key = (
            (str(pki.server.cert), str(pki.server.key))
            if files
            else (pki.server.cert_pem, pki.server.key_pem)
        )
        out: dict[str, list[float]] = {"run": [], "apply": [], "stall": []}
        async with trio.open_nursery() as nursery:
            gaps: list[float] = [0.0]

            async def ticker() -> None:
                last = time.perf_counter()
                while True:
                    await trio.sleep(0.001)
                    now = time.perf_counter()
                    gaps[0] = max(gaps[0], now - last)
                    last = now

            nursery.start_soon(ticker)
            await trio.sleep(0.01)
            gaps[0] = 0.0
            start = time.perf_counter()
            server = await nursery.start(Server(config(n, cert, key, 0)).run)
            out["run"].append(time.perf_counter() - start)
            out["run_stall"] = [gaps[0]]
            for r in range(1, rounds + 1):
                new = config(n, cert, key, r)
                await trio.sleep(0.01)
                gaps[0] = 0.0
                start = time.perf_counter()
                await server.apply(new)
                out["apply"].append(time.perf_counter() - start)
                await trio.sleep(0.003)  # the tick after the last stall
                out["stall"].append(gaps[0])
            nursery.cancel_scope.cancel()
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listeners", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", action="store_true")
    args = ap.parse_args()
    out = trio.run(measure, args.listeners, args.rounds, args.files)
    ms = lambda xs: f"median {statistics.median(xs) * 1e3:.1f} ms, max {max(xs) * 1e3:.1f} ms"  # noqa: E731
    kind = "files" if args.files else "inline PEM"
    print(f"{args.listeners} TLS listeners ({kind}), {args.rounds} applies")
    print(f"  run:                 {out['run'][0] * 1e3:.1f} ms", end="")
    print(f" (longest loop stall {out['run_stall'][0] * 1e3:.1f} ms)")
    print(f"  apply:               {ms(out['apply'])}")
    print(f"  longest loop stall:  {ms(out['stall'])}")


if __name__ == "__main__":
    main()
