"""Run inside the test's network namespace (``ip netns exec``): an echo upstream on
``UPSTREAM`` that answers with the peer address it saw, then a client from ``CLIENT`` to
the upstream's address (redirected to the proxy by the test's iptables rule) and one
straight to the proxy's own port (a loop: the proxy must refuse it). Prints JSON."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

TIMEOUT = 10.0


def serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, peer = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TIMEOUT)
            data = conn.recv(1024)
            conn.sendall(peer[0].encode() + b" " + data)


def exchange(dst: tuple[str, int], source: str | None) -> str:
    with socket.socket() as s:
        s.settimeout(TIMEOUT)
        if source is not None:
            s.bind((source, 0))
        s.connect(dst)
        s.sendall(b"ping")
        chunks = []
        try:
            while chunk := s.recv(1024):
                chunks.append(chunk)
                if b"ping" in b"".join(chunks):
                    break
        except ConnectionResetError:
            return "reset"
        return b"".join(chunks).decode()


def main() -> None:
    upstream_host, upstream_port, client, proxy_port = (
        sys.argv[1],
        int(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]),
    )
    listener = socket.create_server((upstream_host, upstream_port))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    deadline = time.monotonic() + TIMEOUT
    result: dict[str, str] = {}
    while True:  # the proxy was ready before this ran; retry only a refused connect
        try:
            result["redirected"] = exchange((upstream_host, upstream_port), client)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
    result["loop"] = exchange(("127.0.0.1", proxy_port), None)
    listener.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
