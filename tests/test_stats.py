"""Counters (trio_mesh/stats.py): slotted attrs classes, every counter declared once."""

from __future__ import annotations

import pytest

from trio_mesh.filters.mirror import MirrorStats
from trio_mesh.stats import ClusterStats, ListenerStats, Stats


@pytest.mark.parametrize("cls", [ListenerStats, ClusterStats, MirrorStats])
def test_counters_start_at_zero_and_count(cls: type[Stats]) -> None:
    stats = cls()
    counts = stats.as_dict()
    assert counts and set(counts.values()) == {0}
    name = next(iter(counts))
    setattr(stats, name, getattr(stats, name) + 2)
    assert stats.as_dict()[name] == 2
    assert cls().as_dict()[name] == 0  # each object counts on its own


def test_counters_in_declaration_order() -> None:
    names = list(ClusterStats().as_dict())
    assert names[:3] == ["upstream_cx_total", "upstream_cx_active", "upstream_cx_connect_fail"]
    assert names[-1] == "http2_inbound_window_update_frames_flood"


def test_a_misspelt_counter_is_refused() -> None:
    # slots: a typo on the hot path fails loudly instead of counting into a new attribute
    stats = ListenerStats()
    with pytest.raises(AttributeError):
        stats.downstream_cx_totl = 1  # type: ignore[attr-defined]
    assert "downstream_cx_totl" not in stats.as_dict()


def test_compared_by_identity() -> None:
    # two listeners' counters are two objects, even while their counts are equal; and they
    # can key a dict
    a, b = ListenerStats(), ListenerStats()
    assert a != b
    assert {a: 1, b: 2}[a] == 1
