"""The server's own health, as load balancers see it (shared by the admin API and the
``health_check`` stream filter)."""

from __future__ import annotations


class Health:
    """Owned by the ``Server``: ``failed`` is set by ``POST /healthcheck/fail`` (cleared by
    ``/healthcheck/ok``), ``draining`` once a drain began. Filters read both per request:
    two attribute reads, no lock."""

    __slots__ = ("draining", "failed")

    def __init__(self) -> None:
        self.failed = False
        self.draining = False

    @property
    def healthy(self) -> bool:
        return not (self.failed or self.draining)
