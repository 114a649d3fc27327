"""omni_views_lag_seconds and omni_views_event_time_seconds (omni.metrics.Freshness), read at scrape."""

from __future__ import annotations

import time

from omni.metrics import Freshness


def samples(freshness: Freshness) -> dict[tuple[str, str, str], float]:
    return {(m.name, s.labels["projector"], s.labels["partition"]): s.value for m in freshness.collect() for s in m.samples}


def test_seconds_behind_while_records_wait_zero_when_none_do_nothing_when_unknown() -> None:
    freshness = Freshness()
    recorded = time.time() - 90
    freshness.folded("meters", 0, recorded, recorded - 30)
    freshness.waiting("meters", 0, 12)  # behind: 90 s since the newest record folded was recorded
    freshness.waiting("meters", 1, 0)  # caught up
    freshness.waiting("meters", 2, 5)  # waiting, nothing folded here yet: unknown
    found = samples(freshness)
    assert 90 <= found[("omni_views_lag_seconds", "meters", "0")] < 100
    assert found[("omni_views_lag_seconds", "meters", "1")] == 0.0
    assert ("omni_views_lag_seconds", "meters", "2") not in found
    assert found[("omni_views_event_time_seconds", "meters", "0")] == recorded - 30
    freshness.waiting("meters", 0, 0)
    assert samples(freshness)[("omni_views_lag_seconds", "meters", "0")] == 0.0
    freshness.forget("meters", 0)
    assert ("omni_views_event_time_seconds", "meters", "0") not in samples(freshness)
