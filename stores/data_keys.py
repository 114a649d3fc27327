"""The data subjects' keys, in the event-store database (eventstore.sqlite, or the event store's
PostgreSQL schema): one row per (tenant, person), the data key wrapped by the master key.

Erasure sets `wrapped` to NULL and keeps the row (`erased_at`), so erasing again finds nothing to
do. A person seen again after erasure gets a new key, with a new id: what was sealed under the
erased key stays unreadable.

`gdpr_key_activity` keeps when each person's key was last read for admission (their last event,
give or take the time a process keeps a key in memory): the retention sweeper shreds the keys of
persons idle for longer than their tenant's period.

`scheme` says how a key makes pseudonyms (omni.personal_data.DataKey): 1, HMAC-SHA256, for every
key made before the column existed (its rows gain it with that value); 2, keyed BLAKE2b, for keys
made since. A key's pseudonyms never change (meters group and count by them), so a key keeps its
scheme for life; a person gets the current scheme with a new key, after an erasure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stores.database import Database, Tx

HMAC_SHA256, BLAKE2B = 1, 2  # pseudonym schemes
CURRENT_SCHEME = BLAKE2B

SCHEMA = """
/*postgres*/ CREATE TABLE IF NOT EXISTS gdpr_data_keys (
    tenant_id TEXT NOT NULL, subject TEXT NOT NULL, key_id TEXT NOT NULL, kek_id TEXT NOT NULL, wrapped BYTEA,
    created_at TEXT NOT NULL, erased_at TEXT, PRIMARY KEY (tenant_id, subject));
/*postgres*/ ALTER TABLE gdpr_data_keys ADD COLUMN IF NOT EXISTS scheme INTEGER NOT NULL DEFAULT 1;
/*sqlite*/ CREATE TABLE IF NOT EXISTS gdpr_data_keys (
    tenant_id TEXT NOT NULL, subject TEXT NOT NULL, key_id TEXT NOT NULL, kek_id TEXT NOT NULL, wrapped BLOB,
    created_at TEXT NOT NULL, erased_at TEXT, PRIMARY KEY (tenant_id, subject));
CREATE TABLE IF NOT EXISTS gdpr_key_activity (
    tenant_id TEXT NOT NULL, subject TEXT NOT NULL, last_seen_at TEXT NOT NULL, PRIMARY KEY (tenant_id, subject));
CREATE INDEX IF NOT EXISTS gdpr_key_activity_by_time ON gdpr_key_activity (tenant_id, last_seen_at)
"""


def migrate(db: Database) -> None:
    """Create the tables, or bring those of an earlier version up to date: keys gain their scheme
    (HMAC-SHA256 for every key already there). SQLite has no ADD COLUMN IF NOT EXISTS."""
    db.migrate(SCHEMA)
    with db.transaction() as tx:
        if tx.dialect == "sqlite" and "scheme" not in {row[1] for row in tx.execute("PRAGMA table_info(gdpr_data_keys)")}:
            tx.execute(f"ALTER TABLE gdpr_data_keys ADD COLUMN scheme INTEGER NOT NULL DEFAULT {HMAC_SHA256}")


@dataclass(frozen=True, slots=True)
class StoredKey:
    key_id: str
    kek_id: str  # which master key wrapped it
    wrapped: bytes
    scheme: int = HMAC_SHA256  # how it makes pseudonyms (HMAC_SHA256 or BLAKE2B), for life


def live(tx: Tx, tenant_id: str, subjects: Iterable[str]) -> dict[str, StoredKey]:
    """The keys of these persons that exist and are not erased."""
    found: dict[str, StoredKey] = {}
    wanted = sorted(set(subjects))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = tx.execute(
            f"SELECT subject, key_id, kek_id, wrapped, scheme FROM gdpr_data_keys WHERE tenant_id=? AND subject IN ({marks}) "
            "AND wrapped IS NOT NULL",
            (tenant_id, *chunk),
        )
        found.update({s: StoredKey(k, kek, bytes(w), int(scheme)) for s, k, kek, w, scheme in rows})
    return found


def any_live(tx: Tx) -> StoredKey | None:
    """One live key, whichever (start-up tries it against the configured master key), or None."""
    rows = tx.execute("SELECT key_id, kek_id, wrapped, scheme FROM gdpr_data_keys WHERE wrapped IS NOT NULL LIMIT 1")
    if not rows:
        return None
    key_id, kek_id, wrapped, scheme = rows[0]
    return StoredKey(key_id, kek_id, bytes(wrapped), int(scheme))


def create(tx: Tx, tenant_id: str, keys: dict[str, StoredKey], at: str) -> None:
    """Store new keys; a person who has a live key keeps it (a concurrent creator won: read it back)."""
    tx.execute_many(
        "INSERT INTO gdpr_data_keys (tenant_id, subject, key_id, kek_id, wrapped, created_at, erased_at, scheme) "
        "VALUES (?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (tenant_id, subject) DO UPDATE SET "
        "key_id=excluded.key_id, kek_id=excluded.kek_id, wrapped=excluded.wrapped, created_at=excluded.created_at, "
        "erased_at=NULL, scheme=excluded.scheme WHERE gdpr_data_keys.wrapped IS NULL",
        [(tenant_id, subject, k.key_id, k.kek_id, k.wrapped, at, k.scheme) for subject, k in sorted(keys.items())],
    )


def erase(tx: Tx, tenant_id: str, subject: str, at: str) -> str | None:
    """Delete the person's key material; the id of the key erased, None if there was none live."""
    rows = tx.execute(
        "SELECT key_id FROM gdpr_data_keys WHERE tenant_id=? AND subject=? AND wrapped IS NOT NULL", (tenant_id, subject)
    )
    if not rows:
        return None
    tx.execute("UPDATE gdpr_data_keys SET wrapped=NULL, erased_at=? WHERE tenant_id=? AND subject=?", (at, tenant_id, subject))
    tx.execute("DELETE FROM gdpr_key_activity WHERE tenant_id=? AND subject=?", (tenant_id, subject))
    return str(rows[0][0])


def touch(tx: Tx, tenant_id: str, subjects: Iterable[str], at: str) -> None:
    """The persons were seen at `at` (an event about them is being admitted); a later time stays."""
    tx.execute_many(
        "INSERT INTO gdpr_key_activity VALUES (?, ?, ?) ON CONFLICT (tenant_id, subject) DO UPDATE SET "
        "last_seen_at=excluded.last_seen_at WHERE gdpr_key_activity.last_seen_at < excluded.last_seen_at",
        [(tenant_id, subject, at) for subject in sorted(set(subjects))],
    )


@dataclass(frozen=True, slots=True)
class Idle:
    subject: str
    key_id: str
    last_seen_at: str


def idle(tx: Tx, tenant_id: str, before: str, limit: int) -> list[Idle]:
    """The tenant's persons with a live key and no event since `before` (oldest first, at most `limit`);
    a key never touched counts from its creation."""
    rows = tx.execute(
        "SELECT k.subject, k.key_id, COALESCE(a.last_seen_at, k.created_at) AS seen FROM gdpr_data_keys k "
        "LEFT JOIN gdpr_key_activity a ON a.tenant_id = k.tenant_id AND a.subject = k.subject "
        "WHERE k.tenant_id=? AND k.wrapped IS NOT NULL AND COALESCE(a.last_seen_at, k.created_at) < ? "
        "ORDER BY seen, k.subject LIMIT ?",
        (tenant_id, before, limit),
    )
    return [Idle(str(s), str(k), str(at)) for s, k, at in rows]


def erased_key_id(tx: Tx, tenant_id: str, subject: str) -> bool:
    rows = tx.execute("SELECT erased_at FROM gdpr_data_keys WHERE tenant_id=? AND subject=?", (tenant_id, subject))
    return bool(rows) and rows[0][0] is not None
