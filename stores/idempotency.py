"""Idempotency keys of POST requests (`Idempotency-Key`): each caller's key, the request it was
first used with (a fingerprint), and once that request succeeded, its answer, sealed.

Kept beside the data keys (the event store's SQLite file in embedded mode, PostgreSQL in Kafka
mode), so every API process of a deployment sees every key. A row is `pending` while its first
request runs (until `expires_at`: a process that died leaves it for that long), then `done` with
the answer for a day. A request that did not succeed leaves no row: its retry runs again.
"""

from __future__ import annotations

from dataclasses import dataclass

from stores.database import Database, Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL, idem_key TEXT NOT NULL, fingerprint TEXT NOT NULL, state TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL, sealed TEXT, owner TEXT NOT NULL, PRIMARY KEY (scope, idem_key));
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry ON idempotency_keys (expires_at);
"""

PENDING, DONE = "pending", "done"


def migrate(db: Database) -> None:
    db.migrate(SCHEMA)


@dataclass(frozen=True, slots=True)
class Held:
    """What a key already holds: its first request's fingerprint, and that request's answer (sealed)
    once it succeeded (None while it runs)."""

    fingerprint: str
    state: str
    sealed: str | None


def claim(tx: Tx, scope: str, key: str, fingerprint: str, owner: str, now: float, pending_until: float) -> Held | None:
    """Take `key` for a request (None: taken, by `owner`, a token of that request's own: run it), or
    what it already holds. A row past its expiry is taken over as if there were none."""
    taken = tx.execute(
        "INSERT INTO idempotency_keys VALUES (?, ?, ?, 'pending', ?, NULL, ?) ON CONFLICT (scope, idem_key) DO UPDATE "
        "SET fingerprint=excluded.fingerprint, state='pending', expires_at=excluded.expires_at, sealed=NULL, "
        "owner=excluded.owner WHERE idempotency_keys.expires_at <= ? RETURNING state",
        (scope, key, fingerprint, pending_until, owner, now),
    )
    if taken:
        return None
    [(held_fingerprint, state, sealed)] = tx.execute(
        "SELECT fingerprint, state, sealed FROM idempotency_keys WHERE scope=? AND idem_key=?", (scope, key)
    )
    return Held(held_fingerprint, state, sealed)


def complete(tx: Tx, scope: str, key: str, owner: str, sealed: str, keep_until: float) -> None:
    """The request holding `key` (as `owner`) succeeded: keep its answer until `keep_until`. A claim
    another request took over meanwhile is left to it."""
    tx.execute(
        "UPDATE idempotency_keys SET state='done', sealed=?, expires_at=? "
        "WHERE scope=? AND idem_key=? AND owner=? AND state='pending'",
        (sealed, keep_until, scope, key, owner),
    )


def release(tx: Tx, scope: str, key: str, owner: str) -> None:
    """The request holding `key` (as `owner`) did not succeed: its retry runs again."""
    tx.execute("DELETE FROM idempotency_keys WHERE scope=? AND idem_key=? AND owner=? AND state='pending'", (scope, key, owner))


def purge(tx: Tx, now: float) -> None:
    """Forget the keys past their expiry."""
    tx.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,))
