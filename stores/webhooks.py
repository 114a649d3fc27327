"""The webhooks' tables.

`webhook_endpoints` is the endpoints' view for reads, written by the catalog projector from the
control topic (`omni.webhook_endpoint.created` / `.deleted`; idempotent, so a control event relayed
twice changes nothing).

The delivery loop (streams.webhooks) keeps its own, written from the event store in its order:
`webhook_targets` (each endpoint, its sealed secret, open or deleted, as of the loop's position),
`webhook_deliveries` (one row per notice and endpoint, `seq` the notice's position in the event
store: the order it is delivered in), `webhook_attempts` (each attempt's outcome) and
`webhook_previous_secrets` (an endpoint's last two secrets rotated out, each still signing beside the
current one until its `valid_until`; `seq` the rotation's position in the event store). `prune` keeps
them from growing for ever: a settled delivery goes with its attempts once it is old enough, and a
deleted endpoint's rows (its sealed secret too) at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, url TEXT NOT NULL, description TEXT, created_at TEXT NOT NULL,
    deleted_at TEXT);
CREATE INDEX IF NOT EXISTS webhook_endpoints_by_owner ON webhook_endpoints (owner, created_at, id);
CREATE TABLE IF NOT EXISTS webhook_targets (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, url TEXT NOT NULL, sealed_secret TEXT NOT NULL, open INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS webhook_targets_by_owner ON webhook_targets (owner, id);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id TEXT NOT NULL, seq BIGINT NOT NULL, notice_id TEXT NOT NULL, type TEXT NOT NULL, body TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_at DOUBLE PRECISION, created_at TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, seq));
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending ON webhook_deliveries (endpoint_id, seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_age ON webhook_deliveries (created_at) WHERE state <> 'pending';
CREATE TABLE IF NOT EXISTS webhook_previous_secrets (
    id TEXT NOT NULL, seq BIGINT NOT NULL, sealed_secret TEXT NOT NULL, valid_until DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (id, seq));
CREATE TABLE IF NOT EXISTS webhook_attempts (
    endpoint_id TEXT NOT NULL, seq BIGINT NOT NULL, number INTEGER NOT NULL, at TEXT NOT NULL, status_code INTEGER,
    error TEXT, PRIMARY KEY (endpoint_id, seq, number));
"""

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


# The endpoints' view (reads) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointRow:
    id: str
    owner: str
    url: str
    description: str | None
    created_at: str


def add_endpoint(tx: Tx, endpoint_id: str, owner: str, url: str, description: str | None, created_at: str) -> None:
    tx.execute(
        "INSERT INTO webhook_endpoints VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (id) DO NOTHING",
        (endpoint_id, owner, url, description, created_at),
    )


def remove_endpoint(tx: Tx, endpoint_id: str, deleted_at: str) -> None:
    tx.execute("UPDATE webhook_endpoints SET deleted_at=? WHERE id=? AND deleted_at IS NULL", (deleted_at, endpoint_id))


def endpoints_of(tx: Tx, owner: str) -> list[EndpointRow]:
    rows = tx.execute(
        "SELECT id, owner, url, description, created_at FROM webhook_endpoints "
        "WHERE owner=? AND deleted_at IS NULL ORDER BY created_at, id",
        (owner,),
    )
    return [EndpointRow(*r) for r in rows]


def endpoint(tx: Tx, owner: str, endpoint_id: str) -> EndpointRow | None:
    """The owner's endpoint (not deleted); None for another owner's, as for one that does not exist."""
    rows = tx.execute(
        "SELECT id, owner, url, description, created_at FROM webhook_endpoints WHERE id=? AND owner=? AND deleted_at IS NULL",
        (endpoint_id, owner),
    )
    return next((EndpointRow(*r) for r in rows), None)


# The delivery loop's ---------------------------------------------------------------------------


def open_target(tx: Tx, endpoint_id: str, owner: str, url: str, sealed_secret: str) -> None:
    tx.execute(
        "INSERT INTO webhook_targets VALUES (?, ?, ?, ?, 1) ON CONFLICT (id) DO NOTHING",
        (endpoint_id, owner, url, sealed_secret),
    )


MAX_PREVIOUS_SECRETS = 2  # a rotation sent twice without its Idempotency-Key still keeps the first secret


def rotate_target(tx: Tx, endpoint_id: str, seq: int, sealed_secret: str, previous_valid_until: float) -> None:
    """The endpoint's new secret (the rotation at event-store position `seq`). The one it replaces
    signs beside it until `previous_valid_until` (epoch seconds), and so does the one rotated out
    before it, but never longer (a rotation that keeps nothing, for a leaked secret, ends both); any
    older one ends now, so a delivery carries at most three signatures. An endpoint the loop does not
    have (deleted and pruned) is left alone."""
    tx.execute(
        "UPDATE webhook_previous_secrets SET valid_until=? WHERE id=? AND valid_until > ?",
        (previous_valid_until, endpoint_id, previous_valid_until),
    )
    tx.execute(
        "DELETE FROM webhook_previous_secrets WHERE id=? AND seq NOT IN "
        "(SELECT seq FROM webhook_previous_secrets WHERE id=? ORDER BY seq DESC LIMIT ?)",
        (endpoint_id, endpoint_id, MAX_PREVIOUS_SECRETS - 1),
    )
    tx.execute(
        "INSERT INTO webhook_previous_secrets SELECT id, ?, sealed_secret, ? FROM webhook_targets WHERE id=? "
        "ON CONFLICT (id, seq) DO NOTHING",
        (seq, previous_valid_until, endpoint_id),
    )
    tx.execute("UPDATE webhook_targets SET sealed_secret=? WHERE id=?", (sealed_secret, endpoint_id))


def drop_expired_secrets(tx: Tx, now: float) -> None:
    """Forget the rotated-out secrets that no longer sign (sealed, but kept no longer than needed)."""
    tx.execute("DELETE FROM webhook_previous_secrets WHERE valid_until <= ?", (now,))


def close_target(tx: Tx, endpoint_id: str) -> None:
    tx.execute("UPDATE webhook_targets SET open=0 WHERE id=?", (endpoint_id,))


def open_targets_of(tx: Tx, owner: str) -> list[str]:
    return [r[0] for r in tx.execute("SELECT id FROM webhook_targets WHERE owner=? AND open=1 ORDER BY id", (owner,))]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    endpoint_id: str
    seq: int
    notice_id: str
    type: str
    body: str


def enqueue(tx: Tx, deliveries: Sequence[NewDelivery], now: float, created_at: str) -> None:
    if not deliveries:
        return
    tx.execute_many(
        "INSERT INTO webhook_deliveries VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?) ON CONFLICT (endpoint_id, seq) DO NOTHING",
        [(d.endpoint_id, d.seq, d.notice_id, d.type, d.body, now, created_at) for d in deliveries],
    )


@dataclass(frozen=True, slots=True)
class Due:
    """An endpoint's next delivery (the oldest pending), due now."""

    endpoint_id: str
    owner: str
    url: str
    sealed_secret: str
    seq: int
    notice_id: str
    body: str
    attempts: int
    previous_sealed_secrets: tuple[str, ...] = ()  # rotated out and still valid: they sign too, the latest first


def due(tx: Tx, now: float, limit: int) -> list[Due]:
    """Open endpoints whose oldest pending delivery is due by `now`, longest waiting first. Only the
    oldest of each endpoint: a later notice never overtakes an earlier one (in order per endpoint)."""
    rows = tx.execute(
        "SELECT t.id, t.owner, t.url, t.sealed_secret, d.seq, d.notice_id, d.body, d.attempts "
        "FROM webhook_targets t JOIN webhook_deliveries d ON d.endpoint_id = t.id "
        "WHERE t.open = 1 AND d.state = 'pending' AND d.next_attempt_at <= ? "
        "AND d.seq = (SELECT MIN(p.seq) FROM webhook_deliveries p WHERE p.endpoint_id = t.id AND p.state = 'pending') "
        "ORDER BY d.next_attempt_at, t.id LIMIT ?",
        (now, limit),
    )
    previous: dict[str, list[str]] = {}
    if rows:
        ids = sorted({r[0] for r in rows})
        for endpoint_id, sealed in tx.execute(
            f"SELECT id, sealed_secret FROM webhook_previous_secrets WHERE valid_until > ? AND id IN ({', '.join('?' * len(ids))}) "
            "ORDER BY id, seq DESC",
            (now, *ids),
        ):
            previous.setdefault(endpoint_id, []).append(sealed)
    return [Due(r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6], int(r[7]), tuple(previous.get(r[0], ()))) for r in rows]


def lease(tx: Tx, endpoint_id: str, seq: int, now: float, until: float) -> bool:
    """Take a due delivery for one attempt: it is not due again before `until` (the attempt's time
    limit, and a margin), so no other process (a new leader) sends it meanwhile; the attempt's
    outcome, recorded, sets when it is due next. False when it is no longer due (taken, or settled)."""
    return bool(
        tx.execute(
            "UPDATE webhook_deliveries SET next_attempt_at=? "
            "WHERE endpoint_id=? AND seq=? AND state='pending' AND next_attempt_at<=? RETURNING seq",
            (until, endpoint_id, seq, now),
        )
    )


def next_due_at(tx: Tx) -> float | None:
    """When the next delivery of an open endpoint is due, the oldest pending of each (None: nothing pending)."""
    rows = tx.execute(
        "SELECT MIN(d.next_attempt_at) FROM webhook_deliveries d JOIN webhook_targets t ON t.id = d.endpoint_id "
        "WHERE t.open = 1 AND d.state = 'pending' "
        "AND d.seq = (SELECT MIN(p.seq) FROM webhook_deliveries p WHERE p.endpoint_id = t.id AND p.state = 'pending')"
    )
    return None if not rows or rows[0][0] is None else float(rows[0][0])


def record_attempt(
    tx: Tx,
    endpoint_id: str,
    seq: int,
    number: int,
    at: str,
    status_code: int | None,
    error: str | None,
    state: str,
    next_attempt_at: float | None,
) -> None:
    """An attempt's outcome, and where its delivery stands after it (one transaction)."""
    tx.execute(  # only for a delivery still there (one pruned meanwhile, its endpoint deleted, keeps none)
        "INSERT INTO webhook_attempts SELECT ?, ?, ?, ?, ?, ? "
        "WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE endpoint_id=? AND seq=?) "
        "ON CONFLICT (endpoint_id, seq, number) DO NOTHING",
        (endpoint_id, seq, number, at, status_code, error, endpoint_id, seq),
    )
    tx.execute(
        "UPDATE webhook_deliveries SET state=?, attempts=?, next_attempt_at=? WHERE endpoint_id=? AND seq=?",
        (state, number, next_attempt_at, endpoint_id, seq),
    )


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    seq: int
    notice_id: str
    type: str
    state: str
    next_attempt_at: float | None
    created_at: str
    attempts: list[tuple[str, int | None, str | None]]  # (at, status code, error), oldest first


def deliveries(tx: Tx, endpoint_id: str, limit: int, before: int | None) -> list[DeliveryRow]:
    """The endpoint's deliveries, newest first (by their notices' order), before `before` (a seq)."""
    rows = tx.execute(
        "SELECT seq, notice_id, type, state, next_attempt_at, created_at FROM webhook_deliveries "
        "WHERE endpoint_id=? AND seq<? ORDER BY seq DESC LIMIT ?",
        (endpoint_id, before if before is not None else 2**62, limit),
    )
    if not rows:
        return []
    seqs = [int(r[0]) for r in rows]
    found: dict[int, list[tuple[str, int | None, str | None]]] = {s: [] for s in seqs}
    attempts = tx.execute(
        "SELECT seq, at, status_code, error FROM webhook_attempts WHERE endpoint_id=? AND seq>=? AND seq<=? ORDER BY seq, number",
        (endpoint_id, min(seqs), max(seqs)),
    )
    for seq, at, status, error in attempts:
        if int(seq) in found:
            found[int(seq)].append((at, None if status is None else int(status), error))
    return [DeliveryRow(int(r[0]), r[1], r[2], r[3], None if r[4] is None else float(r[4]), r[5], found[int(r[0])]) for r in rows]


def pending_head(tx: Tx, endpoint_id: str) -> int | None:
    """The seq of the endpoint's first pending delivery: the one attempted next (they go in order)."""
    # The state as a literal, as due() has it: PostgreSQL's partial index names it so.
    rows = tx.execute("SELECT min(seq) FROM webhook_deliveries WHERE endpoint_id=? AND state='pending'", (endpoint_id,))
    return None if not rows or rows[0][0] is None else int(rows[0][0])


# Pruning -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pruned:
    deliveries: int  # delivery rows deleted, with their attempts
    endpoints: int  # deleted endpoints whose rows (and sealed secret) are gone now


def prune(tx: Tx, settled_before: str, limit: int) -> Pruned:
    """Delete up to `limit` deliveries settled (delivered or given up) before `settled_before` (RFC
    3339: made, and last attempted, before it), with their attempts; and up to `limit` of one
    deleted endpoint's deliveries, then, once it has none, its target and secrets (a deleted endpoint
    is sent nothing more, and its deliveries are no longer listed). A pending delivery of an open
    endpoint is never deleted. Call it again while it deletes anything."""
    old = [
        (endpoint_id, int(seq))
        for endpoint_id, seq in tx.execute(
            "SELECT endpoint_id, seq FROM webhook_deliveries d WHERE state <> 'pending' AND created_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.endpoint_id = d.endpoint_id AND a.seq = d.seq "
            "AND a.at >= ?) LIMIT ?",
            (settled_before, settled_before, limit),
        )
    ]
    closed = [row[0] for row in tx.execute("SELECT id FROM webhook_targets WHERE open = 0 ORDER BY id LIMIT 1")]
    gone = 0
    for endpoint_id in closed:
        rows = tx.execute("SELECT endpoint_id, seq FROM webhook_deliveries WHERE endpoint_id=? LIMIT ?", (endpoint_id, limit))
        old += [(e, int(seq)) for e, seq in rows]
        if not rows:  # its last deliveries went in an earlier call: the endpoint goes now
            tx.execute("DELETE FROM webhook_attempts WHERE endpoint_id=?", (endpoint_id,))
            tx.execute("DELETE FROM webhook_previous_secrets WHERE id=?", (endpoint_id,))
            tx.execute("DELETE FROM webhook_targets WHERE id=?", (endpoint_id,))
            gone += 1
    if old:
        tx.execute_many("DELETE FROM webhook_attempts WHERE endpoint_id=? AND seq=?", old)
        tx.execute_many("DELETE FROM webhook_deliveries WHERE endpoint_id=? AND seq=?", old)
    return Pruned(len(old), gone)
