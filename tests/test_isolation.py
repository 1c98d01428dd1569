"""tests/isolation.py on a small project run by a real pytest process: the isolated tests run
in a child whatever their order, each with its own outcome and the child's traceback, and a
session of isolated tests only runs them in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ISOLATED = """
import os
import sys

import pytest


def test_changes_the_process():
    import poison  # noqa: F401 - what importing trio-asyncio is to the real suite


def test_runs_in_the_child():
    assert os.environ.get("TRIO_MESH_ISOLATED_RESULTS")


def test_fails():
    answer = 41
    assert answer == 42, "deliberate"


def test_skips():
    pytest.skip("deliberate skip")


@pytest.mark.xfail(reason="known bug")
def test_xfails():
    assert False
"""

PLAIN = """
import sys


def test_plain_shares_nothing_with_the_isolated():
    assert "poison" not in sys.modules
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for ``tests.isolation`` in every process
    monkeypatch.delenv("TRIO_MESH_ISOLATED_RESULTS", raising=False)
    pytester.makeini("[pytest]\nisolated_paths = iso\n")
    pytester.makeconftest('pytest_plugins = ["tests.isolation"]\n')
    pytester.mkdir("iso")
    pytester.path.joinpath("iso", "poison.py").write_text("")
    pytester.path.joinpath("iso", "test_iso.py").write_text(ISOLATED)
    pytester.path.joinpath("test_plain.py").write_text(PLAIN)
    return pytester


def test_isolated_tests_run_in_a_child_with_their_own_outcomes(project: pytest.Pytester):
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-ra", "iso", "test_plain.py")
    result.assert_outcomes(passed=3, failed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            '*assert answer == 42, "deliberate"*',
            "*(run in an isolated pytest process: tests/isolation.py)*",
            "SKIPPED * deliberate skip (iso/test_iso.py:*)",
            "FAILED iso/test_iso.py::test_fails - AssertionError: deliberate",
        ]
    )


def test_the_order_of_the_session_does_not_matter(project: pytest.Pytester):
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "test_plain.py", "iso")
    result.assert_outcomes(passed=3, failed=1, skipped=1, xfailed=1)


def test_collection_keeps_every_test(project: pytest.Pytester):
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["6 tests collected*"])


def test_isolated_tests_alone_run_in_process(project: pytest.Pytester):
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "iso", "-k", "child")
    result.assert_outcomes(failed=1)  # no child: the variable is not set
    result.stdout.fnmatch_lines(["*assert None*"])


def test_a_child_that_cannot_run_fails_every_isolated_test(project: pytest.Pytester):
    # The parent collects the isolated tests too: break only the child.
    project.path.joinpath("iso", "conftest.py").write_text(
        "import os\nif os.environ.get('TRIO_MESH_ISOLATED_RESULTS'):\n    raise SystemExit(3)\n"
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "iso", "test_plain.py")
    result.assert_outcomes(passed=1, failed=5)
    result.stdout.fnmatch_lines(["*not run by the isolated pytest child*"])
