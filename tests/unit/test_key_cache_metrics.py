"""omni_key_cache_total counts every lookup of a key in memory exactly once, as a hit or a miss."""

from __future__ import annotations

from prometheus_client import REGISTRY

from commands.control_plane import Principal, key_aggregate_id
from omni.key_cache import KeyCache

ALICE = Principal(tenant_id="t1", key_id="alice")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lookups() -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value("omni_key_cache_total", {"outcome": outcome}) or 0.0 for outcome in ("hit", "miss")
    }


def counted_since(before: dict[str, float]) -> dict[str, float]:
    return {outcome: total - before[outcome] for outcome, total in lookups().items()}


def test_each_lookup_counts_once_as_a_hit_or_a_miss() -> None:
    clock = Clock()
    cache = KeyCache(max_age=60, clock=clock)
    before = lookups()
    assert cache.get("omni_alice_secret") is None  # not watched yet: nothing kept, a miss
    cache.watched(True)
    cache.put("omni_alice_secret", ALICE, cache.generation)
    for _ in range(3):
        assert cache.get("omni_alice_secret") == ALICE
    assert cache.get("omni_alice_wrong") is None
    assert counted_since(before) == {"hit": 3, "miss": 2}

    clock.now += 61  # past max_age: the entry goes, and the lookup is a miss
    assert cache.get("omni_alice_secret") is None
    cache.put("omni_alice_secret", ALICE, cache.generation)
    cache.forget([key_aggregate_id("alice")])  # a revocation
    assert cache.get("omni_alice_secret") is None
    cache.put("omni_alice_secret", ALICE, cache.generation)
    cache.current(False)  # a failed look at the changes: distrusted, it serves nothing
    assert cache.get("omni_alice_secret") is None
    assert counted_since(before) == {"hit": 3, "miss": 5}


def test_what_is_never_looked_up_is_never_counted() -> None:
    cache = KeyCache()
    cache.watched(True)
    before = lookups()
    cache.put("omni_alice_secret", ALICE, cache.generation)
    cache.forget([key_aggregate_id("alice")])
    cache.watched(False)
    assert counted_since(before) == {"hit": 0, "miss": 0}
