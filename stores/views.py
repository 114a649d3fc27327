"""The view tables and the statements the runners and query routes need.

Every function takes an open transaction, so a runner can commit view rows
and consumed offsets together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from projections.meter_query import StoredBucket
from projections.meter_state import BucketState, combine, dump, load
from projections.meters import BucketKey
from schemas.meters import MeterDefinition
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (consumer, topic, partition));
CREATE TABLE IF NOT EXISTS meter_definitions (
    slug TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, body TEXT NOT NULL, event_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meter_checkpoints (
    meter TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (meter, topic, partition));
CREATE TABLE IF NOT EXISTS meter_buckets (
    tenant_id TEXT NOT NULL, meter TEXT NOT NULL, window_start BIGINT NOT NULL,
    subject TEXT NOT NULL, group_key TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (tenant_id, meter, window_start, subject, group_key));
CREATE TABLE IF NOT EXISTS seen_events (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, source_id TEXT NOT NULL, keep_until BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, source, source_id));
CREATE TABLE IF NOT EXISTS dropped_records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, record_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition, record_offset));
CREATE TABLE IF NOT EXISTS dead_letters (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, record_offset BIGINT NOT NULL, consumer TEXT NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY (topic, partition, record_offset, consumer));
CREATE TABLE IF NOT EXISTS relay_positions (name TEXT PRIMARY KEY, position BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY, name TEXT NOT NULL, plan TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, label TEXT, issued_at TEXT NOT NULL, revoked_at TEXT);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id);
CREATE INDEX IF NOT EXISTS seen_events_expiry ON seen_events (keep_until)
"""

CHUNK = 400


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _lock_suffix(tx: Tx) -> str:
    return " FOR UPDATE" if tx.dialect == "postgres" else ""


# Checkpoints -----------------------------------------------------------------


def lock_checkpoint(tx: Tx, consumer: str, topic: str, partition: int) -> int:
    """The next offset this consumer must apply; locked until the transaction ends."""
    tx.execute(
        "INSERT INTO checkpoints VALUES (?, ?, ?, 0) ON CONFLICT DO NOTHING", (consumer, topic, partition)
    )
    rows = tx.execute(
        "SELECT next_offset FROM checkpoints WHERE consumer=? AND topic=? AND partition=?" + _lock_suffix(tx),
        (consumer, topic, partition),
    )
    return int(rows[0][0])


def set_checkpoint(tx: Tx, consumer: str, topic: str, partition: int, next_offset: int) -> None:
    tx.execute(
        "UPDATE checkpoints SET next_offset=? WHERE consumer=? AND topic=? AND partition=?",
        (next_offset, consumer, topic, partition),
    )


def checkpoints(tx: Tx, consumer: str, topic: str) -> dict[int, int]:
    rows = tx.execute("SELECT partition, next_offset FROM checkpoints WHERE consumer=? AND topic=?", (consumer, topic))
    return {int(p): int(o) for p, o in rows}


def meter_checkpoints(tx: Tx, topic: str, partition: int | None = None) -> dict[tuple[str, int], int]:
    if partition is None:
        rows = tx.execute("SELECT meter, partition, next_offset FROM meter_checkpoints WHERE topic=?", (topic,))
    else:
        rows = tx.execute(
            "SELECT meter, partition, next_offset FROM meter_checkpoints WHERE topic=? AND partition=?",
            (topic, partition),
        )
    return {(m, int(p)): int(o) for m, p, o in rows}


def set_meter_checkpoints(tx: Tx, topic: str, partition: int, next_offsets: Mapping[str, int]) -> None:
    tx.execute_many(
        "INSERT INTO meter_checkpoints VALUES (?, ?, ?, ?) "
        "ON CONFLICT (meter, topic, partition) DO UPDATE SET next_offset=excluded.next_offset",
        [(meter, topic, partition, offset) for meter, offset in next_offsets.items()],
    )


# De-duplication ----------------------------------------------------------------


def claim_events(tx: Tx, keys: Sequence[tuple[str, str, str, int]]) -> set[tuple[str, str, str]]:
    """Record (tenant, source, id, keep_until) as seen; return the keys that were new."""
    fresh: set[tuple[str, str, str]] = set()
    for chunk in _chunks(keys):
        values = ", ".join("(?, ?, ?, ?)" for _ in chunk)
        params = [value for key in chunk for value in key]
        rows = tx.execute(
            f"INSERT INTO seen_events VALUES {values} ON CONFLICT DO NOTHING RETURNING tenant_id, source, source_id",
            params,
        )
        fresh.update((t, s, i) for t, s, i in rows)
    return fresh


def purge_seen(tx: Tx, older_than: int) -> None:
    tx.execute("DELETE FROM seen_events WHERE keep_until < ?", (older_than,))


def add_dropped(tx: Tx, topic: str, partition: int, offsets: Iterable[int]) -> None:
    tx.execute_many(
        "INSERT INTO dropped_records VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(topic, partition, offset) for offset in offsets],
    )


def add_dead_letter(tx: Tx, consumer: str, topic: str, partition: int, offset: int, reason: str) -> None:
    tx.execute(
        "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (topic, partition, offset, consumer, reason[:1000])
    )


def dead_letters(tx: Tx, topic: str) -> list[tuple[int, int, str, str]]:
    rows = tx.execute(
        "SELECT partition, record_offset, consumer, reason FROM dead_letters WHERE topic=? ORDER BY partition, record_offset",
        (topic,),
    )
    return [(int(p), int(o), c, r) for p, o, c, r in rows]


def dropped_between(tx: Tx, topic: str, partition: int, start: int, end: int) -> set[int]:
    rows = tx.execute(
        "SELECT record_offset FROM dropped_records WHERE topic=? AND partition=? AND record_offset>=? AND record_offset<?",
        (topic, partition, start, end),
    )
    return {int(r[0]) for r in rows}


# Meter definitions and buckets -------------------------------------------------


def meter_definitions(tx: Tx) -> list[MeterDefinition]:
    rows = tx.execute("SELECT body FROM meter_definitions ORDER BY slug")
    return [MeterDefinition.model_validate_json(body) for (body,) in rows]


def meter_definition(tx: Tx, slug: str) -> MeterDefinition | None:
    rows = tx.execute("SELECT body FROM meter_definitions WHERE slug=?", (slug,))
    return MeterDefinition.model_validate_json(rows[0][0]) if rows else None


def add_meter_definition(tx: Tx, tenant_id: str, definition: MeterDefinition, event_id: str) -> None:
    """First definition of a slug wins; a redelivered event changes nothing."""
    tx.execute(
        "INSERT INTO meter_definitions VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (definition.slug, tenant_id, definition.model_dump_json(), event_id),
    )


def merge_buckets(tx: Tx, deltas: Mapping[BucketKey, BucketState]) -> None:
    """stored := stored ⊕ delta for every touched bucket."""
    keys = list(deltas)
    stored: dict[BucketKey, BucketState] = {}
    for chunk in _chunks(keys, 150):
        condition = " OR ".join(
            "(tenant_id=? AND meter=? AND window_start=? AND subject=? AND group_key=?)" for _ in chunk
        )
        rows = tx.execute(
            "SELECT tenant_id, meter, window_start, subject, group_key, state FROM meter_buckets WHERE " + condition,
            [value for key in chunk for value in key],
        )
        for tenant_id, meter, window_start, subject, group_key, state in rows:
            stored[BucketKey(tenant_id, meter, int(window_start), subject, group_key)] = load(state)
    tx.execute_many(
        "INSERT INTO meter_buckets VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, meter, window_start, subject, group_key) "
        "DO UPDATE SET state=excluded.state",
        [(*key, dump(combine(stored[key], delta) if key in stored else delta)) for key, delta in deltas.items()],
    )


def buckets(
    tx: Tx, tenant_id: str, meter: str, start: int | None, end: int | None, subjects: Sequence[str]
) -> list[StoredBucket]:
    sql = "SELECT window_start, subject, group_key, state FROM meter_buckets WHERE tenant_id=? AND meter=?"
    params: list[Any] = [tenant_id, meter]
    if start is not None:
        sql += " AND window_start>=?"
        params.append(start)
    if end is not None:
        sql += " AND window_start<?"
        params.append(end)
    if subjects:
        sql += " AND subject IN (" + ", ".join("?" for _ in subjects) + ")"
        params.extend(subjects)
    return [StoredBucket(int(w), s, g, load(state)) for w, s, g, state in tx.execute(sql, params)]


# Relay position -----------------------------------------------------------------


def relay_position(tx: Tx, name: str) -> int:
    rows = tx.execute("SELECT position FROM relay_positions WHERE name=?", (name,))
    return int(rows[0][0]) if rows else 0


def set_relay_position(tx: Tx, name: str, position: int) -> None:
    tx.execute(
        "INSERT INTO relay_positions VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position=excluded.position",
        (name, position),
    )


# Tenants and keys (the catalog) -------------------------------------------------


def upsert_tenant(tx: Tx, tenant_id: str, name: str, plan: str, created_at: str) -> None:
    tx.execute("INSERT INTO tenants VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (tenant_id, name, plan, created_at))


def add_key(tx: Tx, key_id: str, tenant_id: str, label: str | None, issued_at: str) -> None:
    tx.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, NULL) ON CONFLICT DO NOTHING", (key_id, tenant_id, label, issued_at))


def revoke_key(tx: Tx, key_id: str, revoked_at: str) -> None:
    tx.execute("UPDATE api_keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL", (revoked_at, key_id))


def tenant(tx: Tx, tenant_id: str) -> tuple[str, str, str, str] | None:
    rows = tx.execute("SELECT tenant_id, name, plan, created_at FROM tenants WHERE tenant_id=?", (tenant_id,))
    return tuple(rows[0]) if rows else None  # type: ignore[return-value]


def tenants(tx: Tx, limit: int, after: str | None) -> list[tuple[str, str, str, str]]:
    rows = tx.execute(
        "SELECT tenant_id, name, plan, created_at FROM tenants WHERE tenant_id > ? ORDER BY tenant_id LIMIT ?",
        (after or "", limit),
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def keys_of(tx: Tx, tenant_id: str) -> list[tuple[str, str | None, str, str | None]]:
    rows = tx.execute(
        "SELECT key_id, label, issued_at, revoked_at FROM api_keys WHERE tenant_id=? ORDER BY issued_at, key_id",
        (tenant_id,),
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]
