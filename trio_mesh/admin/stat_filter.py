"""``/stats?filter=``: a client's regex run over every stat name, without stalling the proxy.

Envoy matches it with RE2 (linear time); Python's ``re`` backtracks, so ``(.*.*)*X`` takes
minutes on one 22-character name, holding the event loop (and the GIL: a thread does not
help). A filter is therefore refused (400) unless its cost per name is polynomial and small:
no repetition inside a repetition, no alternation under a repetition, no backreference, and at
most ``MAX_UNBOUNDED`` unbounded repetitions (each one multiplies the work by the name's
length). Matching then yields to the scheduler every few milliseconds, so a long scan only
costs its own request.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Iterable
from typing import Any

import trio

from ..metrics.model import Metric

#: ``re``'s own parser (the ``sre_parse`` module's successor; not in the typeshed stubs).
_sre: Any = importlib.import_module("re._parser")
_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)} - {None}
#: A repetition bounded by more than this counts as unbounded.
_BIG_REPEAT = 32
#: Unbounded repetitions per filter (``^cluster\\..*\\.upstream_.*`` has two).
MAX_UNBOUNDED = 2
#: Seconds of matching between two checkpoints.
_SLICE = 0.005


class FilterError(ValueError):
    pass


def compile_filter(pattern: str) -> re.Pattern[str]:
    """The compiled ``pattern``; ``FilterError`` when it is not a regex or could backtrack
    without bound."""
    try:
        tree = _sre.parse(pattern)
        compiled = re.compile(pattern)
    except re.error as exc:
        raise FilterError(f"not a valid regex: {exc}") from None
    unbounded = _check(list(tree), in_repeat=False)
    if unbounded > MAX_UNBOUNDED:
        raise FilterError(f"more than {MAX_UNBOUNDED} unbounded repetitions (* + {{n,}})")
    return compiled


def _check(items: list[tuple[Any, Any]], in_repeat: bool) -> int:
    """The unbounded repetitions under ``items``; raises ``FilterError`` on a construct whose
    backtracking can be exponential."""
    unbounded = 0
    for op, av in items:
        if op in _REPEATS:
            _low, high, sub = av
            if in_repeat:
                raise FilterError("a repetition inside a repetition can backtrack for minutes")
            if high == _sre.MAXREPEAT or high > _BIG_REPEAT:
                unbounded += 1
            unbounded += _check(list(sub), in_repeat=True)
        elif op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
            raise FilterError("backreferences are not supported")
        elif op is _sre.SUBPATTERN:
            unbounded += _check(list(av[-1]), in_repeat)
        elif op is _sre.ATOMIC_GROUP:
            unbounded += _check(list(av), in_repeat)
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            unbounded += _check(list(av[1]), in_repeat)
        elif op is _sre.BRANCH:
            if in_repeat:
                raise FilterError("an alternation inside a repetition can backtrack for minutes")
            unbounded += max((_check(list(b), in_repeat) for b in av[1]), default=0)
    return unbounded


async def matching(matcher: re.Pattern[str], metrics: Iterable[Metric]) -> list[Metric]:
    """The metrics whose name ``matcher`` finds, with a checkpoint every ``_SLICE``."""
    out = []
    started = time.perf_counter()
    for m in metrics:
        if matcher.search(m.name) is not None:
            out.append(m)
        if time.perf_counter() - started > _SLICE:
            await trio.lowlevel.checkpoint()
            started = time.perf_counter()
    return out
