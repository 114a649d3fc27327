"""Webhook delivery rows are pruned on both databases: a settled delivery (delivered or given up)
past keeping goes with its attempts, a pending one never does, and a deleted endpoint's rows and
sealed secret go at once. They were never deleted: one row per notice and endpoint, and one per
attempt, for ever."""

from __future__ import annotations

from stores import webhooks as store
from stores.database import Database

OLD, NEW, CUTOFF = "2026-10-01T00:00:00Z", "2026-12-06T00:00:00Z", "2026-11-06T00:00:00Z"


def rows(db: Database, table: str) -> list[tuple[object, ...]]:
    with db.transaction() as tx:
        order = "id" if table in ("webhook_targets", "webhook_previous_secrets") else "endpoint_id, seq"
        return [tuple(r) for r in tx.execute(f"SELECT * FROM {table} ORDER BY {order}")]


def keys(db: Database, table: str) -> set[tuple[str, int]]:
    with db.transaction() as tx:
        return {(r[0], int(r[1])) for r in tx.execute(f"SELECT endpoint_id, seq FROM {table}")}


def deliver(db: Database, endpoint_id: str, seq: int, created_at: str, state: str, settled_at: str | None = None) -> None:
    """A delivery made at `created_at`, attempted then and, when not pending, settled at `settled_at`."""
    with db.transaction() as tx:
        store.enqueue(tx, [store.NewDelivery(endpoint_id, seq, f"n{seq}", "omni.test", "{}")], 0.0, created_at)
        if state != store.PENDING:
            last = settled_at or created_at
            store.record_attempt(tx, endpoint_id, seq, 1, created_at, 500, "500", store.PENDING, 1.0)
            store.record_attempt(tx, endpoint_id, seq, 2, last, 200 if state == store.DELIVERED else 500, None, state, None)


def test_settled_deliveries_past_keeping_go_with_their_attempts_and_pending_ones_stay(database: Database) -> None:
    with database.transaction() as tx:
        store.open_target(tx, "we_open", "t1", "https://a.example/hook", "sealed")
    deliver(database, "we_open", 1, OLD, store.DELIVERED)
    deliver(database, "we_open", 2, OLD, store.FAILED)
    deliver(database, "we_open", 3, OLD, store.PENDING)  # still being retried: never pruned
    deliver(database, "we_open", 4, NEW, store.DELIVERED)
    deliver(database, "we_open", 5, OLD, store.FAILED, settled_at=NEW)  # retried for a while: kept from when it settled

    with database.transaction() as tx:
        pruned = store.prune(tx, CUTOFF, limit=1)  # a batch at a time
    assert pruned == store.Pruned(deliveries=1, endpoints=0)
    with database.transaction() as tx:
        assert store.prune(tx, CUTOFF, limit=10) == store.Pruned(deliveries=1, endpoints=0)
        assert store.prune(tx, CUTOFF, limit=10) == store.Pruned(deliveries=0, endpoints=0)
    assert keys(database, "webhook_deliveries") == {("we_open", 3), ("we_open", 4), ("we_open", 5)}
    assert keys(database, "webhook_attempts") == {("we_open", 4), ("we_open", 5)}  # the pruned ones' attempts went with them
    assert [r[0] for r in rows(database, "webhook_targets")] == ["we_open"]


def test_a_deleted_endpoints_rows_and_secret_go_at_once(database: Database) -> None:
    with database.transaction() as tx:
        store.open_target(tx, "we_gone", "t1", "https://a.example/hook", "sealed-secret")
        store.open_target(tx, "we_kept", "t1", "https://b.example/hook", "sealed")
    deliver(database, "we_gone", 1, NEW, store.DELIVERED)
    deliver(database, "we_gone", 2, NEW, store.PENDING)
    deliver(database, "we_kept", 3, NEW, store.DELIVERED)
    with database.transaction() as tx:
        store.close_target(tx, "we_gone")
        assert store.prune(tx, CUTOFF, limit=1) == store.Pruned(deliveries=1, endpoints=0)  # in batches too
        assert store.prune(tx, CUTOFF, limit=10) == store.Pruned(deliveries=1, endpoints=0)
        assert store.prune(tx, CUTOFF, limit=10) == store.Pruned(deliveries=0, endpoints=1)
        assert store.prune(tx, CUTOFF, limit=10) == store.Pruned(deliveries=0, endpoints=0)
        # An attempt that was in flight as its endpoint's rows went is recorded nowhere (nothing would prune it).
        store.record_attempt(tx, "we_gone", 2, 1, NEW, 200, None, store.DELIVERED, None)
    assert keys(database, "webhook_deliveries") == {("we_kept", 3)}
    assert keys(database, "webhook_attempts") == {("we_kept", 3)}
    assert [r[0] for r in rows(database, "webhook_targets")] == ["we_kept"]


def test_a_leased_delivery_is_not_due_until_its_lease_ends(database: Database) -> None:
    """An attempt takes its delivery first (webhooks handed from one leader to the next did not send
    an attempt again that the first still had in flight): the delivery is not due meanwhile, and a
    second taker, or one after it settled, gets nothing."""
    with database.transaction() as tx:
        store.open_target(tx, "we_1", "t1", "https://a.example/hook", "sealed")
        store.enqueue(tx, [store.NewDelivery("we_1", 1, "n1", "omni.test", "{}")], 100.0, NEW)
        assert [d.seq for d in store.due(tx, 100.0, 10)] == [1]
        assert store.lease(tx, "we_1", 1, now=100.0, until=140.0)
        assert not store.lease(tx, "we_1", 1, now=101.0, until=141.0)  # taken: not due
        assert store.due(tx, 139.0, 10) == [] and store.next_due_at(tx) == 140.0
        assert [d.seq for d in store.due(tx, 140.0, 10)] == [1]  # the lease ended unrecorded (a crash): due again
        store.record_attempt(tx, "we_1", 1, 1, NEW, 200, None, store.DELIVERED, None)
        assert not store.lease(tx, "we_1", 1, now=150.0, until=190.0)  # settled
        assert store.due(tx, 10_000.0, 10) == []


def test_a_rotated_out_secret_signs_until_its_time_and_a_later_rotation_never_extends_it(database: Database) -> None:
    """The delivery loop's secrets across rotations: each rotated-out secret is due beside the current
    one until its `valid_until`, the latest first; a rotation caps the one before it at its own time
    (0 hours: ends it), never extends it, and ends any older one (at most two sign beside the
    current); a lapsed one is forgotten; a deleted endpoint's go with it."""
    t0 = 1_800_000_000.0
    with database.transaction() as tx:
        store.open_target(tx, "we_rot", "t1", "https://a.example/hook", "first")
        store.open_target(tx, "we_other", "t1", "https://b.example/hook", "other")
    deliver(database, "we_rot", 1, NEW, store.PENDING)
    deliver(database, "we_other", 2, NEW, store.PENDING)

    def secrets_due(now: float) -> dict[str, tuple[str, tuple[str, ...]]]:
        with database.transaction() as tx:
            return {d.endpoint_id: (d.sealed_secret, d.previous_sealed_secrets) for d in store.due(tx, now, 10)}

    assert secrets_due(t0) == {"we_rot": ("first", ()), "we_other": ("other", ())}
    with database.transaction() as tx:
        store.rotate_target(tx, "we_rot", 10, "second", t0 + 86_400)
    assert secrets_due(t0)["we_rot"] == ("second", ("first",))
    with database.transaction() as tx:
        store.rotate_target(tx, "we_rot", 11, "third", t0 + 3_600)  # kept an hour: "first" is cut to it too
    assert secrets_due(t0)["we_rot"] == ("third", ("second", "first"))
    assert secrets_due(t0 + 3_601)["we_rot"] == ("third", ()), "none signs past the later rotation's time"
    assert secrets_due(t0 + 3_601)["we_other"] == ("other", ())
    with database.transaction() as tx:
        store.rotate_target(tx, "we_rot", 12, "fourth", t0 + 86_400)  # a day: "second" is not extended to it
    assert secrets_due(t0)["we_rot"] == ("fourth", ("third", "second")), "the oldest, first, ends: two at most"
    assert secrets_due(t0 + 3_601)["we_rot"] == ("fourth", ("third",))
    with database.transaction() as tx:
        store.rotate_target(tx, "we_rot", 13, "fifth", t0)  # a leak: nothing kept, every earlier one ends now
    assert secrets_due(t0)["we_rot"] == ("fifth", ())
    with database.transaction() as tx:
        store.drop_expired_secrets(tx, t0 + 1)
    assert rows(database, "webhook_previous_secrets") == []
    with database.transaction() as tx:
        store.rotate_target(tx, "we_rot", 14, "sixth", t0 + 60)
        store.rotate_target(tx, "we_gone_long_ago", 15, "x", t0 + 60)  # an endpoint the loop no longer has
        store.close_target(tx, "we_rot")
    assert [r[0] for r in rows(database, "webhook_previous_secrets")] == ["we_rot"]
    with database.transaction() as tx:
        assert store.prune(tx, CUTOFF, limit=10) == store.Pruned(deliveries=1, endpoints=0)  # its delivery
        assert store.prune(tx, CUTOFF, limit=10) == store.Pruned(deliveries=0, endpoints=1)  # then the endpoint
    assert rows(database, "webhook_previous_secrets") == [], "a deleted endpoint's secrets go with it"
