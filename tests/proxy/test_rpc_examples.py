"""conf/bolt.yaml with examples/bolt_provider.py and examples/bolt_consumer.py, and
conf/dubbo.yaml with examples/dubbo_provider.py and examples/dubbo_consumer.py, as the README
runs them: three real processes each (the provider, ``trio-mesh run`` on the example's own
document with free ports, the consumer), every wait under a deadline."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import TIMEOUT, proxy, write_config

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = ROOT / "examples" / "bolt_provider.py"
CONSUMER = ROOT / "examples" / "bolt_consumer.py"
DUBBO_PROVIDER = ROOT / "examples" / "dubbo_provider.py"
DUBBO_CONSUMER = ROOT / "examples" / "dubbo_consumer.py"

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)
needs_dubbo_client = pytest.mark.skipif(
    importlib.util.find_spec("dubbo_ssl") is None, reason="dubbo-ssl-python not installed"
)
BOLT_READY = r"serving com\.alipay\.demo\.HelloService:1\.0 on 127\.0\.0\.1:(\d+)$"
DUBBO_READY = r"dubbo provider '.*' listening on 127\.0\.0\.1:(\d+)$"


def start_provider(
    name: str, program: Path = PROVIDER, ready: str = BOLT_READY
) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(program), "--port", "0", "--name", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once it accepts (EOF if it died)
    m = re.search(ready, line.rstrip("\n"))
    if m is None:
        proc.kill()
        pytest.fail(f"provider did not start: {line!r}")
    return proc, int(m[1])


def consume(port: int, calls: int, program: Path = CONSUMER) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(program), "--host", f"127.0.0.1:{port}", "--calls", str(calls)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def on_free_ports(name: str, provider_port: int) -> dict:
    """conf/NAME.yaml with its one listener on port 0 and its cluster at the provider."""
    doc = yaml.safe_load((ROOT / "conf" / f"{name}.yaml").read_text(encoding="utf-8"))
    (lst,) = doc["servers"][0]["listeners"]
    lst["address"] = "127.0.0.1:0"
    (cluster,) = doc["cluster_manager"]["clusters"]
    cluster["hosts"] = [{"address": f"127.0.0.1:{provider_port}"}]
    return doc


@needs_dubbo_client
def test_dubbo_consumer_through_the_example_proxy_to_the_provider(tmp_path):
    provider, provider_port = start_provider("provider-a", DUBBO_PROVIDER, DUBBO_READY)
    try:
        with proxy(write_config(tmp_path, on_free_ports("dubbo", provider_port))) as mesh:
            port = mesh.ready()["dubbo_ingress"]
            result = consume(port, 2, DUBBO_CONSUMER)
        assert result.returncode == 0, result.stderr
        assert "from provider-a" in result.stdout
        assert "add(1, 2, 3) -> 6" in result.stdout
    finally:
        provider.terminate()
        assert provider.wait(TIMEOUT) == 0


@needs_anthunder
def test_consumer_through_the_example_proxy_to_the_provider(tmp_path):
    provider, provider_port = start_provider("provider-a")
    try:
        doc = yaml.safe_load((ROOT / "conf" / "bolt.yaml").read_text(encoding="utf-8"))
        (lst,) = doc["servers"][0]["listeners"]
        assert lst["address"] == "127.0.0.1:2045"
        lst["address"] = "127.0.0.1:0"
        (cluster,) = doc["cluster_manager"]["clusters"]
        cluster["hosts"] = [{"address": f"127.0.0.1:{provider_port}"}]
        with proxy(write_config(tmp_path, doc)) as mesh:
            port = mesh.ready()["bolt_ingress"]
            result = consume(port, 3)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [f"hello call {i} from provider-a" for i in range(3)]
    finally:
        provider.terminate()
        assert provider.wait(TIMEOUT) == 0


@needs_anthunder
def test_consumer_reports_a_failure_with_exit_1(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    result = consume(dead, 1)
    assert result.returncode == 1
    assert result.stderr.startswith("call 0 failed: ")
