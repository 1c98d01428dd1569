"""Secrets out of a configuration dump: private keys, passwords, tokens, inline PEM keys,
the password of a URL."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

# A name is secret when it ends with one of these, case, ``_`` and ``-`` aside
# (``private_key``, ``privateKey``, ``db_password``, ``GITHUB_TOKEN``, ``x-api-key``), so
# that ``token_bucket`` or ``max_tokens`` stay readable.
_SECRET_ENDINGS = (
    "privatekey",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "secretkey",
    "accesskey",
    "token",
    "credential",
    "credentials",
    "apikey",
    "authorization",
    "cookie",
)
_URL_PASSWORD = re.compile(r"(://[^/@\s:]+:)[^/@\s]+@")


def is_secret_name(name: str) -> bool:
    return name.lower().replace("_", "").replace("-", "").endswith(_SECRET_ENDINGS)


def _secret_text(value: str) -> bool:
    return "PRIVATE KEY-----" in value or "-----BEGIN ENCRYPTED" in value


# Header-like pairs ({key|name: authorization, value: ...}): the value is the secret.
_PAIR_NAMES = ("key", "name", "header")


def redact(value: Any) -> Any:
    """A copy of ``value`` (plain JSON-like data) with every secret replaced by
    ``"[redacted]"``; values that are not JSON types become strings. A secret name's value
    goes whole (a private key's file name too: a dump shows that a key is set, not where)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        pair_secret = any(
            isinstance(value.get(k), str) and is_secret_name(value[k]) for k in _PAIR_NAMES
        )
        for key, item in value.items():
            key = str(key)
            if (
                item
                and isinstance(item, str | dict | list | tuple)
                and (is_secret_name(key) or (pair_secret and key == "value"))
            ):
                out[key] = REDACTED
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        if _secret_text(value):
            return REDACTED
        return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", value) if "://" in value else value
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)
