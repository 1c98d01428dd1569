"""``start_trio_mesh`` where pytest-trio is missing or disabled: it says so."""

from __future__ import annotations

import pytest

MISSING = (
    "start_trio_mesh is an async fixture for Trio tests and needs pytest-trio, which is not"
    " installed or is disabled (-p no:trio): pip install pytest-trio, then mark the async"
    " tests @pytest.mark.trio (or set trio_mode = true in the pytest configuration). A test"
    " that is not Trio code can use the trio_mesh_in_thread fixture instead."
)


@pytest.fixture
def start_trio_mesh() -> None:
    pytest.fail(MISSING, pytrace=False)
