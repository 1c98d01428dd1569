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
HTTP_GET = b"GET / HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"


def serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, peer = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TIMEOUT)
            data = conn.recv(1024)
            if data.startswith(b"GET "):  # the proxy's HTTP request: the peer as the body
                body = peer[0].encode()
                head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
                conn.sendall(head + body)
            else:
                conn.sendall(peer[0].encode() + b" " + data)


def exchange(dst: tuple[str, int], source: str | None, request: bytes = b"ping") -> str:
    with socket.socket() as s:
        s.settimeout(TIMEOUT)
        if source is not None:
            s.bind((source, 0))
        s.connect(dst)
        s.sendall(request)
        chunks = []
        try:
            while chunk := s.recv(1024):
                chunks.append(chunk)
                if request == b"ping" and b"ping" in b"".join(chunks):
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
    # "http": the proxy speaks HTTP/1.1 (the client reads to the proxy's close).
    request = HTTP_GET if sys.argv[5:] == ["http"] else b"ping"
    listener = socket.create_server((upstream_host, upstream_port))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    deadline = time.monotonic() + TIMEOUT
    result: dict[str, str] = {}
    while True:  # the proxy was ready before this ran; retry only a refused connect
        try:
            result["redirected"] = exchange((upstream_host, upstream_port), client, request)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
    result["loop"] = exchange(("127.0.0.1", proxy_port), None, request)
    listener.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
