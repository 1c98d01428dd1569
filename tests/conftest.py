"""Fixtures every test folder shares; helpers live in tests/*_helpers.py and the peers."""

from __future__ import annotations

import pytest
import trio

from tests.tcp_helpers import echo_handler, start_tcp_server


@pytest.fixture
async def echo_port(nursery: trio.Nursery) -> int:
    return await start_tcp_server(nursery, echo_handler)


def pytest_collection_modifyitems(session, config, items) -> None:
    """The xDS tests run last: the trio-asyncio bridge they load patches asyncio for the
    whole process (new loops become its loops), which the asyncio peers of the RPC tests
    (anthunder, the Dubbo consumer) cannot run on."""
    items.sort(key=lambda item: "xds" in item.nodeid.split("::")[0])
