"""The projectors' de-duplication memory, keyed by a 16-byte digest, on SQLite and PostgreSQL:
a database whose memory is still the legacy `seen_events` table keeps every key through the
migration (the digest computed in SQL is the Python one), and purging removes only what expired."""

from __future__ import annotations

import hashlib

from stores import views
from stores.database import Database

# The layout before digests, as the old SCHEMA created it.
LEGACY = """
CREATE TABLE IF NOT EXISTS seen_events (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, source_id TEXT NOT NULL, keep_until BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, source, source_id));
CREATE INDEX IF NOT EXISTS seen_events_expiry ON seen_events (keep_until)
"""

KEYS = [
    ("tenant-1", "gateway", "evt-1"),
    ("tenant-1", "gateway", "evt-2"),
    ("t2", "https://example.com/src", "0b9f2c3e-6a7d-4f0e-9d1a-2b3c4d5e6f70"),
    ("té", "ソース", "id-😀"),  # 2-, 3- and 4-byte UTF-8
    ("ab", "c", "d"),  # the same bytes as the next two but for where the separators fall
    ("a", "bc", "d"),
    ("a", "b", "cd"),
    ("t", "s", ""),
]


def tables(db: Database) -> set[str]:
    """Every table and index name of the database's schema."""
    with db.transaction() as tx:
        if tx.dialect == "sqlite":
            rows = tx.execute("SELECT name FROM sqlite_master")
        else:
            rows = tx.execute("SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace")
    return {name for (name,) in rows}


def stored(db: Database) -> dict[bytes, int]:
    with db.transaction() as tx:
        return {bytes(d): int(k) for d, k in tx.execute("SELECT digest, keep_until FROM seen_digests")}


def legacy(db: Database) -> Database:
    """The fixture's database as the previous version left it, its memory in seen_events."""
    with db.transaction() as tx:
        tx.execute("DROP TABLE seen_digests")
    db.migrate(LEGACY)
    assert {"seen_events", "seen_events_expiry"} <= tables(db)
    assert not {"seen_digests", "seen_digests_expiry"} & tables(db)
    return db


def test_the_digest_is_a_sha256_prefix_of_the_key_with_nul_separators() -> None:
    # Frozen: a different digest would forget every event seen before the change.
    assert views.seen_digest("tenant-1", "gateway", "evt-1").hex() == "e14258b2ec838f65ec1f1285fb17ff63"
    for key in KEYS:
        assert views.seen_digest(*key) == hashlib.sha256("\x00".join(key).encode()).digest()[:16]
    assert len({views.seen_digest(*key) for key in KEYS}) == len(KEYS)


def test_legacy_seen_events_survive_the_migration(database: Database) -> None:
    db = legacy(database)
    with db.transaction() as tx:
        tx.execute_many("INSERT INTO seen_events VALUES (?, ?, ?, ?)", [(*key, 10**9 + n) for n, key in enumerate(KEYS)])

    db.migrate(views.SCHEMA)
    names = tables(db)
    assert {"seen_digests", "seen_digests_expiry"} <= names
    assert not {"seen_events", "seen_events_expiry"} & names
    # The digest computed in SQL (PostgreSQL's sha256; SQLite's registered function) is the Python one.
    expected = {views.seen_digest(*key): 10**9 + n for n, key in enumerate(KEYS)}
    assert stored(db) == expected
    with db.transaction() as tx:
        assert views.claim_events(tx, [(*key, 2**40) for key in KEYS]) == set()
        assert views.claim_events(tx, [(*KEYS[0], 2**40), ("tenant-1", "gateway", "evt-3", 2**40)]) == {
            ("tenant-1", "gateway", "evt-3")
        }

    db.migrate(views.SCHEMA)  # again: nothing to copy, nothing lost
    assert not {"seen_events", "seen_events_expiry"} & tables(db)
    assert stored(db) == {**expected, views.seen_digest("tenant-1", "gateway", "evt-3"): 2**40}
    with db.transaction() as tx:
        assert views.claim_events(tx, [(*key, 2**40) for key in [*KEYS, ("tenant-1", "gateway", "evt-3")]]) == set()


def test_a_migration_meeting_digests_already_claimed_keeps_them(database: Database) -> None:
    """A key in both layouts (claimed anew before the legacy rows were copied) is kept once, as first claimed."""
    db = legacy(database)
    assert views.SCHEMA.rstrip().endswith("DROP TABLE IF EXISTS seen_events")
    db.migrate(views.SCHEMA.rstrip().removesuffix("DROP TABLE IF EXISTS seen_events"))  # copied, not yet dropped
    with db.transaction() as tx:
        assert views.claim_events(tx, [(*KEYS[0], 5), (*KEYS[1], 6)]) == {KEYS[0], KEYS[1]}
        tx.execute_many("INSERT INTO seen_events VALUES (?, ?, ?, ?)", [(*KEYS[1], 60), (*KEYS[2], 70)])
    db.migrate(views.SCHEMA)
    assert stored(db) == {views.seen_digest(*KEYS[0]): 5, views.seen_digest(*KEYS[1]): 6, views.seen_digest(*KEYS[2]): 70}
    assert "seen_events" not in tables(db)


def test_claims_return_only_the_new_keys(database: Database) -> None:
    with database.transaction() as tx:
        assert views.claim_events(tx, []) == set()
        assert views.claim_events(tx, [(*key, 100) for key in KEYS[:3]]) == set(KEYS[:3])
        # Twice in one batch, and more than one SQLite chunk.
        many = [("t", "s", f"e{n}", 100) for n in range(2 * views.CHUNK + 7)]
        batch = [*((*key, 100) for key in KEYS), *many, *many[:10]]
        assert views.claim_events(tx, batch) == set(KEYS[3:]) | {key[:3] for key in many}
        assert views.claim_events(tx, batch) == set()
    assert len(stored(database)) == len(KEYS) + len(many)


def test_purging_removes_only_expired_entries(database: Database) -> None:
    with database.transaction() as tx:
        views.claim_events(tx, [(*key, 100 * (n % 3 + 1)) for n, key in enumerate(KEYS)])  # keep until 100, 200 or 300
        views.purge_seen(tx, 200)
    assert sorted(set(stored(database).values())) == [200, 300]
    with database.transaction() as tx:
        again = views.claim_events(tx, [(*key, 1000) for key in KEYS])
    assert again == {key for n, key in enumerate(KEYS) if n % 3 == 0}
    with database.transaction() as tx:
        views.purge_seen(tx, 10_000)
    assert stored(database) == {}


def test_each_claimed_digest_keeps_its_own_keep_until(database: Database) -> None:
    """PostgreSQL gets the digests as one concatenation and keep_until as an array: each pair stays a pair,
    whatever order the digests sort in; a key twice in a batch keeps its first keep_until."""
    keys = [(f"tenant-{n % 3}", "gateway", f"evt-{n}") for n in range(300)] + KEYS
    until = {key: -(2**40) + 7919 * n if n % 5 == 0 else 2**40 + n for n, key in enumerate(keys)}
    again = [(*key, 1) for key in keys[::7]]  # later in the same batch: not their keep_until
    with database.transaction() as tx:
        assert views.claim_events(tx, [*((*key, until[key]) for key in keys), *again]) == set(keys)
    assert stored(database) == {views.seen_digest(*key): until[key] for key in keys}
