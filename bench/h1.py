"""HTTP/1.1 for the harness: the one-request checks before a load run, since wrk and h2load
count any response with a status as a success."""

from __future__ import annotations

import http.client

from . import nginx

POST_BODY = b"x" * 1024  # what post.lua sends


def expected_body(path: str) -> bytes:
    """What the nginx upstream answers at ``path`` (see nginx.py)."""
    if path == "/64k":
        return bytes(range(256)) * (nginx.BODY_64K_SIZE // 256)
    return nginx.SMALL_BODY.encode()


def check(port: int, path: str, post: bool = False, timeout: float = 5.0) -> str | None:
    """Two requests of the scenario's kind on one keep-alive connection, each answer checked in
    full (200, the exact body, the connection kept); None when right, else what was wrong."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    expected = expected_body(path)
    try:
        for n in range(2):
            conn.request("POST" if post else "GET", path, body=POST_BODY if post else None)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or body != expected:
                return f"request {n + 1}: {response.status}, body {body[:40]!r} ({len(body)} B)"
            if response.will_close:
                return f"request {n + 1}: the connection was not kept alive"
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return None
