"""Fixtures every test folder shares; helpers live in tests/*_helpers.py and the peers."""

from __future__ import annotations

import pytest
import trio

from tests.tcp_helpers import echo_handler, start_tcp_server
from tests.tls_pki import Pki, make_pki

# isolation: the xDS tests' own process (trio-asyncio patches asyncio process-wide);
# pytester: tests/test_isolation.py runs small projects through it; zookeeper_server: the
# real ZooKeeper fixtures (tests/registry/).
pytest_plugins = ["tests.isolation", "pytester", "tests.zookeeper_server"]


@pytest.fixture
async def echo_port(nursery: trio.Nursery) -> int:
    return await start_tcp_server(nursery, echo_handler)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Two CAs and the certificates the TLS tests use (tests/tls_pki.py), made once a run."""
    return make_pki(tmp_path_factory.mktemp("pki"))
