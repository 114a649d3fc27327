"""The key cache: what it keeps, what it forgets, and when it refuses to answer."""

from __future__ import annotations

from commands.control_plane import ApiKey, Principal, key_aggregate_id
from omni.key_cache import KEY_TOPICS, KeyCache

ALICE = Principal(tenant_id="t1", key_id="alice")
BOB = Principal(tenant_id="t1", key_id="bob")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watched_cache(**options: object) -> KeyCache:
    cache = KeyCache(**options)  # type: ignore[arg-type]
    cache.watched(True)
    return cache


def test_a_kept_key_is_served_by_its_token_only() -> None:
    cache = watched_cache()
    cache.put("omni_alice_secret", ALICE, cache.generation)
    assert cache.get("omni_alice_secret") == ALICE
    assert cache.get("omni_alice_other-secret") is None


def test_unwatched_it_keeps_and_serves_nothing() -> None:
    cache = KeyCache()
    cache.put("omni_alice_secret", ALICE, cache.generation)
    assert cache.get("omni_alice_secret") is None and len(cache) == 0
    cache.watched(True)
    cache.put("omni_alice_secret", ALICE, cache.generation)
    cache.watched(False)
    assert cache.get("omni_alice_secret") is None and len(cache) == 0, "losing the watch drops what was kept"


def test_forgetting_a_key_drops_it_and_only_it() -> None:
    cache = watched_cache()
    cache.put("omni_alice_secret", ALICE, cache.generation)
    cache.put("omni_bob_secret", BOB, cache.generation)
    cache.forget([key_aggregate_id("alice")])
    assert cache.get("omni_alice_secret") is None
    assert cache.get("omni_bob_secret") == BOB


def test_an_answer_read_before_a_change_is_not_kept() -> None:
    """The revocation lands while the store is being read: the stale answer must not stay."""
    cache = watched_cache()
    generation = cache.generation  # a request starts reading alice's key from the store
    cache.forget([key_aggregate_id("alice")])  # meanwhile alice's key is revoked
    cache.put("omni_alice_secret", ALICE, generation)  # the read (from before the revocation) returns
    assert cache.get("omni_alice_secret") is None


def test_a_failed_look_at_the_changes_drops_everything_until_one_succeeds() -> None:
    cache = watched_cache()
    cache.put("omni_alice_secret", ALICE, cache.generation)
    cache.current(False)
    assert not cache.trusted and cache.get("omni_alice_secret") is None
    cache.put("omni_alice_secret", ALICE, cache.generation)
    assert len(cache) == 0
    cache.current(True)
    assert cache.trusted and cache.get("omni_alice_secret") is None
    cache.put("omni_alice_secret", ALICE, cache.generation)
    assert cache.get("omni_alice_secret") == ALICE


def test_the_least_recently_used_key_leaves_first() -> None:
    cache = watched_cache(capacity=2)
    cache.put("omni_alice_secret", ALICE, cache.generation)
    cache.put("omni_bob_secret", BOB, cache.generation)
    assert cache.get("omni_alice_secret") == ALICE  # alice is now the most recent
    carol = Principal(tenant_id="t2", key_id="carol")
    cache.put("omni_carol_secret", carol, cache.generation)
    assert len(cache) == 2
    assert cache.get("omni_bob_secret") is None
    assert cache.get("omni_alice_secret") == ALICE and cache.get("omni_carol_secret") == carol


def test_an_entry_expires_after_max_age() -> None:
    clock = Clock()
    cache = watched_cache(max_age=60.0, clock=clock)
    cache.put("omni_alice_secret", ALICE, cache.generation)
    clock.now += 59
    assert cache.get("omni_alice_secret") == ALICE
    clock.now += 2
    assert cache.get("omni_alice_secret") is None and len(cache) == 0


def test_the_admin_is_never_kept() -> None:
    cache = watched_cache()
    cache.put("omni_admin_x", Principal(tenant_id=None, key_id="admin", is_admin=True), cache.generation)
    assert len(cache) == 0


def test_every_event_that_changes_an_existing_key_is_watched() -> None:
    from eventsourcing.utils import get_topic

    assert get_topic(ApiKey.Revoked) in KEY_TOPICS
    assert get_topic(ApiKey.Issued) not in KEY_TOPICS, "issuing creates a key; nothing about it can be stale"
