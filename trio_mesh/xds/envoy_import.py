"""The one place that silences what envoy-data-plane's generated modules warn while they load.

pydantic >= 2.12 deprecates ``@model_validator(mode="after")`` on a classmethod, and the
betterproto2-generated classes use it: about 100 harmless ``DeprecationWarning`` lines per run.
Only that message is ignored, and only while the generated modules are imported.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

GENERATED_CODE_WARNING = (
    r"Using `@model_validator` with mode='after' on a classmethod is deprecated"
)


@contextmanager
def envoy_import() -> Iterator[None]:
    """``with envoy_import(): from envoy_data_plane... import ...``"""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=GENERATED_CODE_WARNING, category=DeprecationWarning
        )
        yield
