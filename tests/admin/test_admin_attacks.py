"""The admin API attacked: inputs meant to stall, leak or confuse it (each one a finding
that once got through)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import trio

from trio_mesh.admin.stat_filter import FilterError, compile_filter

from .test_admin_api import fetch, start


@pytest.mark.parametrize(
    "pattern",
    [
        "(.*.*)*X",  # minutes on one 22-character name with Python's re
        "(a+)+$",
        "(x|x.)*Y",
        "(.)\\1",
        ".*.*.*.*X",  # polynomial, but n**5 per name
        "(.{1,50}){1,50}X",
    ],
)
def test_catastrophic_filter_is_refused(pattern: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(pattern)


@pytest.mark.parametrize(
    "pattern", ["upstream_rq", "^cluster\\..*\\.upstream_.*total$", "(rq|cx)_active", "a{2,5}"]
)
def test_usual_filters_pass(pattern: str) -> None:
    assert compile_filter(pattern).pattern == pattern


async def test_stats_filter_redos_does_not_stall_the_proxy(nursery: trio.Nursery) -> None:
    _, url, port = await start(nursery)
    await fetch(f"http://127.0.0.1:{port}/x")
    # ``(.*.*)*X`` would freeze the event loop for minutes before the fix; these two are
    # of the same kinds, harmless on these short names, and refused all the same.
    for pattern in ("(a+)+$", ".*.*.*.*X"):
        status, body, _ = await fetch(f"{url}/stats?filter={quote(pattern, safe='')}")
        assert status == 400 and "repetition" in json.loads(body)["error"]
    good = quote("^cluster\\..*\\.upstream_.*total$", safe="")
    status, body, _ = await fetch(f"{url}/stats?filter={good}")
    lines = body.decode().splitlines()
    assert status == 200 and "cluster.up.upstream_rq_total: 1" in lines
    assert all(line.startswith("cluster.") for line in lines)
