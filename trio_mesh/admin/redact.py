"""Secrets out of a configuration dump: private keys, passwords, tokens, inline PEM keys."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

# Keys whose values are secret whatever they hold (a private key's file name included: a
# dump shows that a key is set, not where it lives).
_SECRET_KEY = re.compile(
    r"(private_?key|passw(or)?d|secret|token|credential|api_?key|authorization|cookie)",
    re.IGNORECASE,
)
# Header-like pairs ({key|name: authorization, value: ...}): the value is the secret.
_PAIR_NAMES = ("key", "name", "header")


def _secret_text(value: str) -> bool:
    return "PRIVATE KEY-----" in value or "-----BEGIN ENCRYPTED" in value


def redact(value: Any) -> Any:
    """A copy of ``value`` (plain JSON-like data) with every secret replaced by
    ``"[redacted]"``; values that are not JSON types become strings."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        pair_secret = any(
            isinstance(value.get(k), str) and _SECRET_KEY.search(value[k]) for k in _PAIR_NAMES
        )
        for key, item in value.items():
            key = str(key)
            if (
                item
                and isinstance(item, str | dict | list | tuple)
                and (_SECRET_KEY.search(key) or (pair_secret and key == "value"))
            ):
                out[key] = REDACTED
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return REDACTED if _secret_text(value) else value
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)
