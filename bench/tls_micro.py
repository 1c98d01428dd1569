"""``python -m bench.tls_micro``: what OpenSSL itself costs through Python's ``ssl``, with no
socket, no Trio and no proxy: a TLS 1.3 handshake between two ``SSLObject``s over memory BIOs
(ECDSA P-256, X25519, TLS_AES_128_GCM_SHA256 by the bench's OPENSSL_CONF, no tickets), each side's
CPU time apart; then the records of one small GET (request one way, response the other).

The floor under ``python -m bench tls``: a server cannot spend less than this per handshake or
per request on OpenSSL's work, whatever its own code does.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

from . import tls_client

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n"
    b"x-request-id: 0123456789abcdef0123456789abcdef\r\n\r\nhello"
)


def contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from tests.tls_pki import make_ca

    ca = make_ca(directory, "micro-ca")
    pair = ca.issue("micro-server", cn="localhost", dns=("localhost",))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pair.cert, pair.key)
    server.options |= ssl.OP_NO_TICKET
    server.num_tickets = 0
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(ca.cert)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    return server, client


class Pair:
    """A client and a server ``SSLObject`` wired to each other through memory BIOs."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.ci, self.co, self.si, self.so = (ssl.MemoryBIO() for _ in range(4))
        self.c = client.wrap_bio(self.ci, self.co, server_hostname="localhost")
        self.s = server.wrap_bio(self.si, self.so, server_side=True)

    def handshake(self) -> tuple[float, float]:
        """CPU seconds (client, server) spent in ``do_handshake``."""
        client_s = server_s = 0.0
        c_done = s_done = False
        while not (c_done and s_done):
            t = time.thread_time()
            try:
                self.c.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
            client_s += time.thread_time() - t
            if self.co.pending:
                self.si.write(self.co.read())
            t = time.thread_time()
            try:
                self.s.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
            server_s += time.thread_time() - t
            if self.so.pending:
                self.ci.write(self.so.read())
        return client_s, server_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="trio-mesh-tls-micro-"))
    if "BENCH_TLS_MICRO" not in os.environ:
        # The bench's suite (Python's ssl cannot choose TLS 1.3 suites): libssl reads
        # OPENSSL_CONF when it starts, so run again with it set.
        conf = tls_client.write_client_conf(directory)
        env = {**os.environ, **tls_client.client_env(conf), "BENCH_TLS_MICRO": "1"}
        argv = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, "-m", "bench.tls_micro", *argv], env)
    server, client = contexts(directory)
    client_s = server_s = 0.0
    for _ in range(args.handshakes):
        pair = Pair(server, client)
        c, s = pair.handshake()
        client_s += c
        server_s += s
    n = args.handshakes
    print(
        f"{pair.s.version()} {pair.s.cipher()[0]}: handshake CPU, server {server_s / n * 1e6:.0f}"
        f" us, client {client_s / n * 1e6:.0f} us (verifying the chain), {n} handshakes"
    )
    enc = []
    for _ in range(args.requests):
        pair.c.write(REQUEST)
        enc.append(pair.co.read())
    t = time.perf_counter()
    for record in enc:  # the server's read side: ciphertext in, plaintext out
        pair.si.write(record)
        pair.s.read(65536)
    read_us = (time.perf_counter() - t) / args.requests * 1e6
    t = time.perf_counter()
    for _ in range(args.requests):  # its write side: plaintext in, ciphertext out
        pair.s.write(RESPONSE)
        pair.so.read()
    write_us = (time.perf_counter() - t) / args.requests * 1e6
    print(
        f"server per small GET: decrypt the request {read_us:.2f} us, encrypt the response"
        f" {write_us:.2f} us ({len(REQUEST)} and {len(RESPONSE)} bytes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
