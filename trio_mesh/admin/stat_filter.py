"""``/stats?filter=``: a client's regex run over every stat name, without stalling the proxy.

Envoy matches it with RE2 (linear time); Python's ``re`` backtracks, so ``(.*.*)*X`` takes
minutes on one 22-character name, holding the event loop (and the GIL: a thread does not
help). A filter is therefore refused (400) unless its backtracking per name is small: no
repetition inside a repetition, no alternation under a repetition, no backreference, at most
``MAX_VARIABLE`` repetitions of variable length (``*``, ``+``, ``?``, ``{2,5}``: each one
multiplies the work by up to the name's length; ``{3}`` does not) and at most
``MAX_CHOICES`` combinations of alternatives (``(a|b)(c|d)`` has four). Matching then yields
to the scheduler every few milliseconds, so a long scan only costs its own request.
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
#: Variable-length repetitions per filter (``^cluster\\..*\\.upstream_.*`` has two).
MAX_VARIABLE = 2
#: Combinations of alternatives per filter.
MAX_CHOICES = 16
#: Seconds of matching between two checkpoints.
_SLICE = 0.005


class FilterError(ValueError):
    pass


def compile_filter(pattern: str) -> re.Pattern[str]:
    """The compiled ``pattern``; ``FilterError`` when it is not a regex or could backtrack
    without bound."""
    try:
        tree = _sre.parse(pattern)
    except re.error as exc:
        raise FilterError(f"not a valid regex: {exc}") from None
    variable, choices = _cost(list(tree), in_repeat=False)
    if variable > MAX_VARIABLE:
        raise FilterError(f"more than {MAX_VARIABLE} variable repetitions (* + ? {{m,n}})")
    if choices > MAX_CHOICES:
        raise FilterError(f"more than {MAX_CHOICES} combinations of alternatives (a|b)")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise FilterError(f"not a valid regex: {exc}") from None


def _cost(items: list[tuple[Any, Any]], in_repeat: bool) -> tuple[int, int]:
    """(variable-length repetitions, combinations of alternatives) under ``items``; raises
    ``FilterError`` on a construct whose backtracking can be exponential."""
    variable, choices = 0, 1
    for op, av in items:
        inner: tuple[int, int] = (0, 1)
        if op in _REPEATS:
            low, high, sub = av
            if in_repeat:
                raise FilterError("a repetition inside a repetition can backtrack for minutes")
            variable += high != low
            inner = _cost(list(sub), in_repeat=True)
        elif op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
            raise FilterError("backreferences are not supported")
        elif op is _sre.SUBPATTERN:
            inner = _cost(list(av[-1]), in_repeat)
        elif op is _sre.ATOMIC_GROUP:
            inner = _cost(list(av), in_repeat)
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            inner = _cost(list(av[1]), in_repeat)
        elif op is _sre.BRANCH:
            if in_repeat:
                raise FilterError("an alternation inside a repetition can backtrack for minutes")
            alternatives = [_cost(list(b), in_repeat) for b in av[1]]
            inner = (
                max(v for v, _ in alternatives),
                len(alternatives) * max(c for _, c in alternatives),
            )
        variable += inner[0]
        choices *= inner[1]
    return variable, choices


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
