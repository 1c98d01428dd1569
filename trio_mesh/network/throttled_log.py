"""A log line an attacker can trigger at will, written at most once per interval."""

from __future__ import annotations

import logging
import time


class ThrottledLog:
    """``log(...)`` as ``logger.log``, but at most one line per ``interval`` seconds; the next
    line written says how many were left out meanwhile."""

    __slots__ = ("_interval", "_logger", "_next", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self._logger = logger
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        if self._suppressed:
            msg += " (%d more like it not logged)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self._logger.log(level, msg, *args)
