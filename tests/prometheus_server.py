"""A real Prometheus server (Debian's ``prometheus`` package) for the metrics tests.

Started on a free loopback port with a generated configuration (scrape every second, a
temporary storage directory); stopped (killed) when its nursery is cancelled. Its HTTP API is
polled with a bounded deadline: no sleeps to wait for readiness.
"""

from __future__ import annotations

import functools
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.http_helpers import free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="the prometheus package (prometheus, promtool) is not installed",
)


class Prometheus:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log

    def _get(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    async def api(self, path: str, **query: str) -> Any:
        return await trio.to_thread.run_sync(functools.partial(self._get, path, **query))

    async def wait_for(self, what: str, probe: Callable[[], Any], *, timeout: float = 30.0) -> Any:
        """Poll ``probe`` (async, returns a truthy value when done) until ``timeout``."""
        last: Any = None
        with trio.move_on_after(timeout):
            while True:
                try:
                    last = await probe()
                except (OSError, urllib.error.URLError) as exc:
                    last = exc
                else:
                    if last:
                        return last
                await trio.sleep(0.2)  # a poll interval, not a readiness wait
        log = self.log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"prometheus: {what}: not within {timeout}s (last: {last!r})\n{log}")

    async def targets(self) -> list[dict[str, Any]]:
        data = await self.api("/api/v1/targets")
        return list(data["data"]["activeTargets"])

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("/api/v1/query", query=expr)
        assert data["status"] == "success", data
        return list(data["data"]["result"])

    async def wait_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]] | None:
            targets = await self.targets()
            return targets if targets and all(t["health"] == "up" for t in targets) else None

        result: list[dict[str, Any]] = await self.wait_for("targets up", probe, timeout=timeout)
        return result

    async def wait_value(self, expr: str, expected: float, timeout: float = 30.0) -> float:
        async def probe() -> float | None:
            result = await self.query(expr)
            if len(result) == 1 and float(result[0]["value"][1]) == expected:
                return expected
            return None

        await self.wait_for(f"{expr} == {expected}", probe, timeout=timeout)
        return expected


async def start_prometheus(
    nursery: trio.Nursery, tmp_path: Path, targets: list[str], metrics_path: str = "/metrics"
) -> Prometheus:
    """Prometheus scraping ``targets`` (``host:port``) every second; ready when it returns."""
    assert PROMETHEUS is not None
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "trio-mesh",
                        "metrics_path": metrics_path,
                        "static_configs": [{"targets": targets}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        await nursery.start(
            functools.partial(
                trio.run_process,
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=out,
                check=False,
            )
        )
    server = Prometheus(port, log)

    async def ready() -> bool:
        return bool(await server.api("/api/v1/status/runtimeinfo"))

    await server.wait_for("ready", ready)
    return server


async def promtool_check(exposition: bytes) -> tuple[int, str]:
    """``promtool check metrics`` on ``exposition``: (exit code, its lint output). Exit code 1:
    the exposition does not parse; 3: it parses, with lint problems (listed)."""
    assert PROMTOOL is not None
    with trio.fail_after(30):
        proc = await trio.run_process(
            [PROMTOOL, "check", "metrics"],
            stdin=exposition,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")
