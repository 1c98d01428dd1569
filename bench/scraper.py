"""A Prometheus-like scraper for the ``trio-mesh-metrics`` contender: ``GET`` its metrics
endpoint once a second on one keep-alive connection, as Prometheus does (asking for
OpenMetrics first), while a load run goes on. It is a thread of the harness, so its CPU and
memory are not the contender's; it stops when told to or, at the latest, after ``limit``
seconds by itself.
"""

from __future__ import annotations

import http.client
import threading
import time
from types import TracebackType
from urllib.parse import urlsplit

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
#: A family every scrape of a serving proxy has (the load's requests are counted in it).
EXPECTED = b"envoy_http_downstream_rq_total"


def scrape_once(conn: http.client.HTTPConnection, path: str) -> str | None:
    """One scrape; None when it answered 200 with the proxy's request counter."""
    conn.request("GET", path, headers={"Accept": PROMETHEUS_ACCEPT})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        return f"status {response.status}: {body[:80]!r}"
    if EXPECTED not in body:
        return f"no {EXPECTED.decode()} in {len(body)} B"
    return None


def check(url: str, timeout: float = 5.0) -> str | None:
    """One scrape before the load; None when right, else what was wrong."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        return scrape_once(conn, parts.path)
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


class Scraper:
    """``with Scraper(url, limit=seconds + 5) as s: <load>``; then ``s.scrapes``,
    ``s.failures``, ``s.last_error``."""

    def __init__(self, url: str, *, interval: float = 1.0, limit: float = 60.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.path = parts.path
        self.interval = interval
        self.limit = limit
        self.scrapes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    problem = scrape_once(conn, self.path)
                except (OSError, http.client.HTTPException) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                    conn.close()  # reconnects on the next request
                self.scrapes += 1
                if problem is not None:
                    self.failures += 1
                    self.last_error = problem
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            conn.close()
