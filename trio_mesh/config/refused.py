"""Known MOSN keys that change security or access and are not implemented (yet).

Ignoring such a key would weaken what the operator asked for (a TLS listener serving
cleartext, a route matching more than it should), so it is a configuration error while its
value turns the feature on; a value that leaves it off (``tls_context: {status: false}``, an
empty mapping) loads silently, since nothing is ignored then. A class lists its keys in
``MOSN_REFUSED``: key -> (whether the value turns it on, why it is refused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: ``(value turns the feature on, reason)`` for one refused key.
Refusal = tuple[Callable[[Any], bool], str]


def tls_on(value: Any) -> bool:
    """MOSN's ``TLSConfig``: on when ``status`` is true; absent, empty or false: off. Any
    other shape (a bare ``true``, a string) counts as on: refusing is the safe side."""
    if value is None or value is False or value == {}:
        return False
    if not isinstance(value, dict):
        return True
    status = next((v for k, v in value.items() if str(k).lower() == "status"), False)
    return status is not False and status is not None


def require_tls_on(value: Any) -> bool:
    """A virtual host's ``require_tls`` (Envoy's enum NONE / EXTERNAL_ONLY / ALL)."""
    if value is None or value is False:
        return False
    return not (isinstance(value, str) and value.strip().upper() in ("", "NONE"))


def given(value: Any) -> bool:
    """On whenever it holds something (a match condition, a filter config)."""
    return value not in (None, False, "", [], {})
