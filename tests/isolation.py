"""Tests that must not share a process with the others run in a pytest child process.

trio-asyncio, which the xDS client loads, patches asyncio for the whole process on import (new
loops become its loops), and the asyncio peers of the RPC tests (anthunder, the Dubbo consumer)
cannot run after that. So when a session holds tests from both sides, the tests under the ini
option ``isolated_paths`` are run by one ``python -m pytest <their ids>`` child, started when
the first of them comes up, whatever the order; each keeps its own report line in the parent
(passed, failed with the child's traceback, skipped with its reason). A session of isolated
tests only runs them in-process, as usual (so ``pytest tests/xds --pdb`` works).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

#: Set in the child: where it writes its results.
RESULTS_ENV = "TRIO_MESH_ISOLATED_RESULTS"
#: The whole child run; every test has its own deadline well under this.
CHILD_TIMEOUT = 900.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "isolated_paths",
        type="paths",
        default=[],
        help="test directories run in their own pytest process when other tests share the run",
    )


def is_isolated(item: pytest.Item, roots: list[Path]) -> bool:
    return any(item.path.is_relative_to(root) for root in roots)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only what will run is sent
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if os.environ.get(RESULTS_ENV):
        return
    roots = [Path(p).resolve() for p in config.getini("isolated_paths")]
    isolated = [i for i in items if is_isolated(i, roots)]
    if not isolated or len(isolated) == len(items):
        return
    child = ChildRun(config, [i.nodeid for i in isolated])
    items[:] = [stand_in(i, child) if is_isolated(i, roots) else i for i in items]


def stand_in(item: pytest.Item, child: ChildRun) -> IsolatedItem:
    # The test's own markers stay behind: the child judges skipif/xfail, and plugins such as
    # pytest-trio must not treat the stand-in as the test function.
    return IsolatedItem.from_parent(item.parent, name=item.name, child=child)


class ChildRun:
    """One pytest child for every isolated test of the session, run on first demand."""

    def __init__(self, config: pytest.Config, nodeids: list[str]) -> None:
        self.config = config
        self.nodeids = nodeids
        self.results: dict[str, dict[str, Any]] | None = None
        self.output = ""

    def result(self, nodeid: str) -> dict[str, Any] | None:
        if self.results is None:
            self.run()
        assert self.results is not None
        return self.results.get(nodeid)

    def run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="trio-mesh-isolated-") as tmp:
            path = Path(tmp) / "results.json"
            argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
            if self.config.inipath is not None:
                argv += ["-c", str(self.config.inipath)]
            argv += ["--rootdir", str(self.config.rootpath), *self.nodeids]
            env = {**os.environ, RESULTS_ENV: str(path)}
            try:
                done = subprocess.run(
                    argv,
                    cwd=self.config.rootpath,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=CHILD_TIMEOUT,
                )
                self.output = f"exit code {done.returncode}\n{done.stdout}{done.stderr}"
            except subprocess.TimeoutExpired as exc:
                self.output = f"killed after {CHILD_TIMEOUT:.0f} s\n{exc.stdout or ''}"
            self.results = json.loads(path.read_text()) if path.exists() else {}


class IsolatedFailure(Exception):
    """A test that failed (or never ran) in the child; the message is the child's report."""


class IsolatedItem(pytest.Item):
    """Stands for a test the child runs: same node id, markers and report line."""

    def __init__(self, *, child: ChildRun, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.child = child

    def runtest(self) -> None:
        result = self.child.result(self.nodeid)
        if result is None:
            tail = "\n".join(self.child.output.splitlines()[-60:])
            raise IsolatedFailure(f"not run by the isolated pytest child:\n{tail}")
        if result["outcome"] == "failed":
            raise IsolatedFailure(result["text"])
        if result["outcome"] == "skipped":
            pytest.skip(result["text"])  # the reason carries the child's file:line
        if result["outcome"] == "xfailed":
            pytest.xfail(result["text"])

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:
        if isinstance(excinfo.value, IsolatedFailure):
            # First line: what the short summary shows (the child's crash message).
            return f"{excinfo.value}\n(run in an isolated pytest process: tests/isolation.py)"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


# -- in the child: one outcome per test, written at the end of the session


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(RESULTS_ENV):
        config.pluginmanager.register(ResultWriter(Path(os.environ[RESULTS_ENV])))


class ResultWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # The first phase that does not pass decides (a failing teardown fails a passed test).
        known = self.results.get(report.nodeid)
        if known is not None and known["outcome"] != "passed":
            return
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            phase = "" if report.when == "call" else f" (in {report.when})"
            headline = (crash.message if crash else "failed").splitlines()[0]
            outcome, text = "failed", f"{headline}{phase}\n{report.longreprtext}"
        elif hasattr(report, "wasxfail"):
            outcome, text = ("xfailed" if report.skipped else "passed"), report.wasxfail
        elif report.skipped:
            longrepr = report.longrepr
            if isinstance(longrepr, tuple):
                where, line, reason = longrepr
                text = f"{reason.removeprefix('Skipped: ')} ({os.path.relpath(where)}:{line})"
            else:
                text = str(longrepr)
            outcome = "skipped"
        else:
            outcome, text = "passed", ""
        self.results[report.nodeid] = {"outcome": outcome, "text": text}

    def pytest_sessionfinish(self) -> None:
        self.path.write_text(json.dumps(self.results))
