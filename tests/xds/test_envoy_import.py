"""`envoy_import()`: the one filter for the warning envoy-data-plane's generated modules raise
while loading. Run in fresh interpreters with DeprecationWarning as an error, so the modules
really load and any warning left unsilenced fails the import."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings

import pytest

from trio_mesh.xds.envoy_import import envoy_import

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("envoy_data_plane") is None, reason="the xds extra is not installed"
)


def python(code: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-W", "error::DeprecationWarning", "-c", code]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_generated_modules_warn_without_the_helper():
    # Without it the next test would prove nothing.
    out = python("import envoy_data_plane.envoy.config.cluster.v3")
    if out.returncode == 0:
        pytest.skip("the generated modules no longer warn: envoy_import() can go")
    assert "model_validator" in out.stderr


def test_every_xds_module_imports_the_generated_code_quietly():
    out = python("import trio_mesh.xds.types, trio_mesh.xds.translate, trio_mesh.xds.client")
    assert out.returncode == 0, out.stderr


def test_only_that_warning_and_only_inside_the_block():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with envoy_import():
            warnings.warn(
                "Using `@model_validator` with mode='after' on a classmethod is deprecated.",
                DeprecationWarning,
                stacklevel=1,
            )
            warnings.warn("another deprecation", DeprecationWarning, stacklevel=1)
        warnings.warn(
            "Using `@model_validator` with mode='after' on a classmethod is deprecated.",
            DeprecationWarning,
            stacklevel=1,
        )
    assert [str(w.message) for w in seen] == [
        "another deprecation",
        "Using `@model_validator` with mode='after' on a classmethod is deprecated.",
    ]
