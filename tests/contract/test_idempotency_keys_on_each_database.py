"""The Idempotency-Key table on both databases: one request holds a key at a time, a claim past its
expiry is taken over, and the request that lost it can neither let go of nor complete the new one's."""

from __future__ import annotations

from stores import idempotency as store
from stores.database import Database


def test_a_key_is_held_by_one_request_and_its_taker_over_is_safe_from_the_first(database: Database) -> None:
    store.migrate(database)
    with database.transaction() as tx:
        assert store.claim(tx, "t1:k1", "key", "fp-a", "owner-a", now=100.0, pending_until=220.0) is None
        held = store.claim(tx, "t1:k1", "key", "fp-a", "owner-b", now=150.0, pending_until=270.0)
        assert held == store.Held("fp-a", store.PENDING, None)  # still the first one's
        assert store.claim(tx, "t1:k2", "key", "fp-a", "owner-c", now=150.0, pending_until=270.0) is None  # another caller's
        # Past its expiry the claim is taken over (the first request's process died, say)...
        assert store.claim(tx, "t1:k1", "key", "fp-b", "owner-b", now=221.0, pending_until=341.0) is None
        # ...and the first request, late, neither lets go of it nor completes it.
        store.release(tx, "t1:k1", "key", "owner-a")
        store.complete(tx, "t1:k1", "key", "owner-a", "sealed-a", keep_until=9_999.0)
        assert store.claim(tx, "t1:k1", "key", "fp-b", "owner-d", now=222.0, pending_until=342.0) == store.Held(
            "fp-b", store.PENDING, None
        )
        store.complete(tx, "t1:k1", "key", "owner-b", "sealed-b", keep_until=9_999.0)
        assert store.claim(tx, "t1:k1", "key", "fp-b", "owner-e", now=300.0, pending_until=420.0) == store.Held(
            "fp-b", store.DONE, "sealed-b"
        )
        store.release(tx, "t1:k1", "key", "owner-b")  # a done key is never let go
        store.purge(tx, now=9_999.0)
        assert store.claim(tx, "t1:k1", "key", "fp-c", "owner-f", now=10_000.0, pending_until=10_120.0) is None
