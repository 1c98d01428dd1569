"""The README's mutual-TLS example as a user runs it: ``scripts/dev-certs``, then
``trio-mesh run conf/mtls.yaml`` and curl with and without a client certificate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cli.test_http_cli import ROOT, curl, free_port, running

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None, reason="needs curl, openssl"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dev") / "certs"
    subprocess.run([str(ROOT / "scripts" / "dev-certs"), str(out)], check=True, timeout=60)
    assert {p.name for p in out.iterdir()} >= {"ca.pem", "server.pem", "client.pem", "client.key"}
    assert (out / "client.key").stat().st_mode & 0o077 == 0  # private keys are private
    return out


def example(tmp_path: Path, certs: Path) -> Path:
    """conf/mtls.yaml with the ingress on port 0, the backend on a free port, and the
    certificates from ``certs`` (the example names conf/certs/, relative to the checkout)."""
    text = (ROOT / "conf" / "mtls.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text.replace("conf/certs/", f"{certs}/"))
    ingress, backend = doc["servers"][0]["listeners"]
    port = free_port()
    ingress["address"] = "127.0.0.1:0"
    backend["address"] = f"127.0.0.1:{port}"
    doc["cluster_manager"]["clusters"][0]["hosts"] = [{"address": f"127.0.0.1:{port}"}]
    path = tmp_path / "mtls.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def test_mutual_tls_example(tmp_path: Path, certs: Path) -> None:
    with running(example(tmp_path, certs)) as mesh:
        port = mesh.ready()["ingress"]
        url = f"https://localhost:{port}/api/hello"
        ca = ("--cacert", str(certs / "ca.pem"))
        me = ("--cert", str(certs / "client.pem"), "--key", str(certs / "client.key"))
        for version in ("--http1.1", "--http2"):
            r = curl(url, *ca, *me, version)
            assert r.status == 200, (r, mesh.text)
            assert r.body == b"hello, spiffe://dev.local/ns/default/sa/client\n"
        # a forged identity is replaced by the verified one (SANITIZE_SET)
        forged = ("-H", "x-forwarded-client-cert: URI=spiffe://dev.local/ns/default/sa/admin")
        assert curl(url, *ca, *me, *forged).status == 200
        # no client certificate: the handshake is refused
        refused = subprocess.run(
            ["curl", "-sS", "--max-time", "10", *ca, url], capture_output=True, timeout=20
        )
        assert refused.returncode != 0
        mesh.stop()
        assert "Traceback" not in mesh.text
        # the access log line carries the peer's SPIFFE id and the TLS version
        assert any("spiffe://dev.local/ns/default/sa/client" in line for line in mesh.stdout)
        assert any("TLSv1.3" in line for line in mesh.stdout)
