"""``systemd-analyze verify`` accepts conf/trio-mesh.service and conf/trio-mesh.socket (in a
temp copy whose ExecStart points at this venv's ``trio-mesh``: the unit's /opt path exists
only once installed), and the socket unit names a listener of the example config."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trio_mesh.config import read_config

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
CONF = Path(__file__).resolve().parents[2] / "conf"
INSTALLED = "/opt/trio-mesh/bin/trio-mesh"


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ANALYZE), "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )


def copies(tmp_path: Path, service_edit=lambda text: text) -> tuple[Path, Path]:
    here = Path(sys.executable).parent / "trio-mesh"
    assert here.exists(), "the venv's trio-mesh script (pip install -e .)"
    service = tmp_path / "trio-mesh.service"
    service.write_text(
        service_edit((CONF / "trio-mesh.service").read_text()).replace(INSTALLED, str(here))
    )
    socket_unit = tmp_path / "trio-mesh.socket"
    shutil.copy(CONF / "trio-mesh.socket", socket_unit)
    return service, socket_unit


def test_systemd_analyze_verify_accepts_both_units(tmp_path):
    service, socket_unit = copies(tmp_path)
    result = verify(socket_unit, service)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def test_verify_is_no_rubber_stamp(tmp_path):
    """As shipped, verify checks the /opt path (absent here); a misspelt key is reported."""
    result = verify(CONF / "trio-mesh.service")
    assert f"Command {INSTALLED} is not executable" in result.stderr
    service, _ = copies(tmp_path, lambda text: text.replace("WatchdogSec=", "WatchdogSecs="))
    assert "Unknown key 'WatchdogSecs'" in verify(service).stderr


def test_the_service_runs_the_venv_and_says_notify_reload_needs_253():
    text = (CONF / "trio-mesh.service").read_text()
    assert re.search(rf"^ExecStartPre={INSTALLED} validate /etc/trio-mesh/conf.yaml$", text, re.M)
    assert re.search(rf"^ExecStart={INSTALLED} run /etc/trio-mesh/conf.yaml$", text, re.M)
    assert re.search(r"^Type=notify$", text, re.M)
    assert re.search(r"^#Type=notify-reload$", text, re.M)
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", text, re.M)
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    # The install steps, as a fresh Debian 12 needs them.
    for step in (
        "apt-get install -y python3-venv",
        "python3 -m venv /opt/trio-mesh",
        "/opt/trio-mesh/bin/pip install /path/to/checkout",
        "install -D -m644 conf/tcp.yaml /etc/trio-mesh/conf.yaml",
        "systemctl daemon-reload",
        "systemctl enable --now trio-mesh.service",
    ):
        assert step in text, step


def test_notify_reload_is_commented_because_systemd_252_refuses_it(tmp_path):
    version = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout
    major = int(version.split()[1])
    service, _ = copies(
        tmp_path, lambda text: text.replace("#Type=notify-reload", "Type=notify-reload")
    )
    refused = "Failed to parse service type, ignoring: notify-reload" in verify(service).stderr
    assert refused == (major < 253)


def test_the_socket_unit_names_a_listener_of_the_example_config():
    text = (CONF / "trio-mesh.socket").read_text()
    name = re.search(r"^FileDescriptorName=(\S+)$", text, re.M)
    listen = re.search(r"^ListenStream=(\S+)$", text, re.M)
    assert name and listen
    listeners = {lst.name: lst for lst in read_config(str(CONF / "tcp.yaml")).config.listeners}
    assert name[1] in listeners
    assert str(listeners[name[1]].address) == listen[1]  # by address too, when unnamed


def test_the_socket_steps_stop_the_running_service_before_the_socket_binds():
    # A running trio-mesh.service holds 127.0.0.1:10000 (no SO_REUSEPORT): enabling the socket
    # unit then fails with EADDRINUSE, so each set of steps stops the service first.
    for unit in ("trio-mesh.service", "trio-mesh.socket"):
        lines = [
            line.strip("# ").strip()
            for line in (CONF / unit).read_text().splitlines()
            if "systemctl" in line
        ]
        enable = lines.index("systemctl enable --now trio-mesh.socket")
        stops = [
            i for i, line in enumerate(lines) if line.startswith("systemctl stop trio-mesh.service")
        ]
        assert stops and stops[0] < enable, (unit, lines)
