"""``python -m bench resilience`` (bench/resilience.py): its proxy configurations load as the
modes describe them, and the smoke run works end to end against real nginx and wrk."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import resilience
from bench.contenders import REPO_ROOT
from trio_mesh.config import parse_config


@pytest.mark.parametrize("mode", ["a", "b", "c"])
def test_each_mode_configures_what_it_claims(mode: str) -> None:
    result = parse_config(resilience.proxy_conf(8080, 8081, [9001, 9002], mode))
    assert result.warnings == ()
    config = result.config
    (cluster,) = config.cluster_manager.clusters
    route = config.servers[0].routers[0].virtual_hosts[0].routers[0].route
    assert [h.address.port for h in cluster.hosts] == [9001, 9002]
    if mode == "a":
        assert cluster.health_check is None and cluster.outlier_detection is None
    else:
        assert cluster.health_check is not None
        assert (cluster.health_check.interval, cluster.health_check.unhealthy_threshold) == (1, 1)
        od = cluster.outlier_detection
        assert od is not None and od.enforcing_consecutive_gateway_failure == 100
    assert (route.retry_policy is not None) == (mode == "c")


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nginx", "wrk")), reason="needs nginx and wrk"
)
def test_smoke_run_kills_a_host_and_reports(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "resilience",
            "--smoke",
            "--modes",
            "c",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    (entry,) = json.loads((tmp_path / "results.json").read_text())
    assert entry["mode"] == "c" and entry["total"] > 1000
    # the killed host was seen down, and came back after its restart
    assert entry["marked_down_after"] is not None and entry["back_after"] is not None
    assert entry["proxy_5xx"] is not None and entry["failed"] >= 0
    assert "(c)" in (tmp_path / "table.txt").read_text()
