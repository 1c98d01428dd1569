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
# The userinfo ends at the last ``@`` of the authority: a password may hold an ``@``
# (``u:p@ss@host``), and the user may be empty (``redis://:pw@host``).
_URL_PASSWORD = re.compile(r"(://[^/@\s:]*:)[^/\s]*@")
# A userinfo without a password is a token as often as a user name (a Sentry or Uptrace
# DSN, ``https://<token>@github.com``): it goes whole.
_URL_TOKEN = re.compile(r"://[^/@\s:]+@")

# An environment variable is secret when a word of its name is one of these
# (``SECRET_KEY_BASE``, ``GITHUB_TOKEN_V2``, ``MYSQL_PWD``, ``SSH_KEY``; ``HEADERS``: the
# OTLP exporter's ``OTEL_EXPORTER_OTLP_HEADERS`` carries ``authorization=...``) or it holds
# one of the longer ones (``PGPASSWORD``, an Azure ``..._CONNECTION_STRING`` with its
# ``AccountKey``): a process's environment has no ``max_tokens`` to spare.
_ENV_WORDS = frozenset(
    {"key", "pwd", "pass", "auth", "pin", "salt", "cert", "jwt", "dsn", "headers", "cookie"}
)
_ENV_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "apikey",
    "privatekey",
    "authorization",
    "connectionstring",
)
_ENV_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def is_secret_name(name: str) -> bool:
    return name.lower().replace("_", "").replace("-", "").endswith(_SECRET_ENDINGS)


def is_secret_env(name: str) -> bool:
    lower = name.lower()
    if any(part in lower.replace("_", "").replace("-", "") for part in _ENV_PARTS):
        return True
    return not _ENV_WORDS.isdisjoint(_ENV_WORD_SPLIT.split(lower))


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
            if key == "headers" and isinstance(item, dict):
                # Headers an exporter sends (``tracing...config.headers``) carry collector
                # credentials under any vendor's name (``x-honeycomb-team``).
                out[key] = {str(k): REDACTED if v else v for k, v in item.items()}
                continue
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
        if "://" not in value:
            return value
        value = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", value)
        return _URL_TOKEN.sub(f"://{REDACTED}@", value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)
