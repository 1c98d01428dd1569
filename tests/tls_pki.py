"""Certificates for the TLS tests, made by the ``openssl`` command line when the tests run (no
private key is ever committed).

``make_pki(dir)`` writes two CAs and the leaf certificates the tests need; ``Pki.issue``
makes more (a rotated certificate, other names). ECDSA P-256 keys: fast to make and to sign
with, so a handshake costs what it costs in production, not an RSA-4096 key's time.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import attrs

#: A SPIFFE id, as a mesh's client workload carries it in a URI SAN.
CLIENT_SPIFFE = "spiffe://cluster.local/ns/default/sa/client"
SERVER_SPIFFE = "spiffe://cluster.local/ns/default/sa/server"


@attrs.frozen
class Pair:
    cert: Path
    key: Path

    @property
    def cert_pem(self) -> str:
        return self.cert.read_text()

    @property
    def key_pem(self) -> str:
        return self.key.read_text()


@attrs.frozen
class Ca:
    cert: Path
    key: Path
    dir: Path

    def issue(
        self,
        name: str,
        *,
        cn: str,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        client: bool = False,
        days: int = 30,
    ) -> Pair:
        """A leaf certificate signed by this CA; ``days=-1``: already expired."""
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        cert = self.dir / f"{name}.pem"
        ext = self.dir / f"{name}.ext"
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips] + [f"URI:{u}" for u in uris]
        lines = ["basicConstraints=CA:FALSE"]
        lines.append("extendedKeyUsage=" + ("clientAuth" if client else "serverAuth,clientAuth"))
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/O=trio-mesh tests/CN={cn}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
            "-set_serial", str(_serial()), "-out", cert, "-days", str(days), "-extfile", ext,
        )  # fmt: skip
        key.chmod(0o600)
        return Pair(cert, key)


@attrs.frozen
class Pki:
    dir: Path
    ca: Ca
    #: A second, unrelated CA: what it signs must be refused where ``ca`` is trusted.
    other_ca: Ca
    #: localhost, 127.0.0.1, ::1, api.example.test, *.wild.example.test; a SPIFFE URI SAN.
    server: Pair
    #: A second server certificate (other.example.test), for SNI selection.
    other_server: Pair
    #: CN=client with the SPIFFE id CLIENT_SPIFFE.
    client: Pair
    #: A client certificate signed by ``other_ca``.
    stranger: Pair
    expired_server: Pair
    expired_client: Pair


_counter = [1000]


def _serial() -> int:
    _counter[0] += 1
    return _counter[0]


def _openssl(*args: object) -> None:
    proc = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_ca(dir: Path, name: str) -> Ca:
    dir.mkdir(parents=True, exist_ok=True)
    key, cert = dir / f"{name}.key", dir / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", cert, "-days", "3650", "-subj", f"/O=trio-mesh tests/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    key.chmod(0o600)
    return Ca(cert, key, dir)


def make_pki(dir: Path) -> Pki:
    ca = make_ca(dir, "ca")
    other = make_ca(dir / "other", "other-ca")
    server_names = ("localhost", "api.example.test", "*.wild.example.test")
    return Pki(
        dir=dir,
        ca=ca,
        other_ca=other,
        server=ca.issue(
            "server",
            cn="localhost",
            dns=server_names,
            ips=("127.0.0.1", "::1"),
            uris=(SERVER_SPIFFE,),
        ),
        other_server=ca.issue("other-server", cn="other.example.test", dns=("other.example.test",)),
        client=ca.issue("client", cn="client", uris=(CLIENT_SPIFFE,), client=True),
        stranger=other.issue("stranger", cn="stranger", uris=(CLIENT_SPIFFE,), client=True),
        expired_server=ca.issue(
            "expired-server", cn="localhost", dns=("localhost",), ips=("127.0.0.1",), days=-1
        ),
        expired_client=ca.issue("expired-client", cn="client", client=True, days=-1),
    )
