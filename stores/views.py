"""The view tables and the statements the runners and query routes need.

Every function takes an open transaction, so a runner can commit view rows
and consumed offsets together.

Meter buckets (schema version 2)
--------------------------------
A bucket's state is kept in typed columns, one per BucketState field, so
PostgreSQL can combine buckets itself: `count`, `total` (exact NUMERIC),
`minimum`, `maximum`, `latest` with its ordering key (`latest_at_us`,
`latest_offset`: event time in µs, then log offset) and `uniques` (the
UNIQUE_COUNT set; NULL otherwise). SQLite cannot add decimals exactly, so
there the decimals are exact decimal TEXT and buckets are combined in Python
(read, combine, write: SQLite is in-process, so that costs no round trip).

`meter_windows` holds every bucket at three resolutions (`resolution`: 60,
3600 or 86400 seconds; UTC minutes, hours, days), keyed by tenant, meter,
window, subject and group values; `meter_totals` holds the same windows
across all subjects and group values. All of them are written from the same
batch deltas in the runner's transaction, with the checkpoints. PostgreSQL
rows also carry `group_values`, the JSON text of each group value in the
order of the meter's sorted dimensions, so a query groups by any subset of
them without parsing JSON.

Migration: views are rebuildable from the log, so a new bucket layout gets
new table names rather than a data migration. This script drops the version
1 tables (`meter_buckets`, one JSON state per minute, and `meter_checkpoints`)
and starts the meters' own checkpoints afresh in `meter_offsets`: every
meter is then behind its partition's checkpoint and the projector's catch-up
refolds it from offset zero into the new tables (skipping the duplicates and
dead letters the live fold recorded), while new batches keep being folded
into the meters already caught up. Until a meter has caught up its queries
show only the history folded so far. A later layout does the same with new
names again.

De-duplication memory (`seen_digests`)
--------------------------------------
The usage projector remembers every (tenant, source, id) it has folded, for
as long as an event may be admitted (a week), so a duplicate that reached
the log anyway is dropped. One row per event: `digest`, the first 16 bytes
of sha256 over the UTF-8 of `tenant_id NUL source NUL source_id`
(`seen_digest`; text never holds NUL, admission refuses it, so the
separator is unambiguous), and `keep_until` (epoch seconds), indexed for
`purge_seen`. Unlike the views this table cannot be rebuilt from the log:
losing it would let an event seen last week be counted again. So its
migration moves the rows: the script (re)creates the legacy `seen_events`
table (tenant, source, id as text) if absent, copies its rows into
`seen_digests` with the digest computed in SQL (PostgreSQL: `sha256`;
SQLite: the same Python function, registered on the connection as
`seen_digest`), then drops it. Run again, it finds nothing to copy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from functools import lru_cache
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from projections import meter_bulk
from projections.meter_bulk import BulkFold
from projections.meter_query import SECONDS, MeterRow, StoredBucket, meter_rows, plan, roll_up, whole_range, zoned
from projections.meter_state import BucketState, average, combine
from projections.meters import MINUTE, BucketKey, group_value_texts, roll_ups, totals
from schemas.meters import Aggregation, MeterDefinition, WindowSize
from stores.database import Tx

_BUCKET_VALUES_POSTGRES = """count BIGINT NOT NULL, total NUMERIC NOT NULL, minimum NUMERIC, maximum NUMERIC,
    latest_at_us BIGINT, latest_offset BIGINT, latest NUMERIC, uniques TEXT[]"""
_BUCKET_VALUES_SQLITE = """count INTEGER NOT NULL, total TEXT NOT NULL, minimum TEXT, maximum TEXT,
    latest_at_us INTEGER, latest_offset INTEGER, latest TEXT, uniques TEXT"""
# seen_digest in PostgreSQL's built-ins; decode('00', 'hex') is one NUL byte whatever standard_conforming_strings is.
# (The migration's INSERT ... SELECT has `WHERE true` so SQLite does not read its ON CONFLICT as a join's ON.)
_SEEN_DIGEST_POSTGRES = """substring(sha256(convert_to(tenant_id, 'UTF8') || decode('00', 'hex') || convert_to(source, 'UTF8')
    || decode('00', 'hex') || convert_to(source_id, 'UTF8')) from 1 for 16)"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (consumer, topic, partition));
CREATE TABLE IF NOT EXISTS meter_definitions (
    slug TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, body TEXT NOT NULL, event_id TEXT NOT NULL);
DROP TABLE IF EXISTS meter_checkpoints;
DROP TABLE IF EXISTS meter_buckets;
CREATE TABLE IF NOT EXISTS meter_offsets (
    meter TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (meter, topic, partition));
/*postgres*/ CREATE TABLE IF NOT EXISTS meter_windows (
    tenant_id TEXT NOT NULL, meter TEXT NOT NULL, resolution INTEGER NOT NULL, window_start BIGINT NOT NULL,
    subject TEXT NOT NULL, group_key TEXT NOT NULL, group_values TEXT[] NOT NULL, {_BUCKET_VALUES_POSTGRES},
    PRIMARY KEY (tenant_id, meter, resolution, window_start, subject, group_key)) WITH (fillfactor = 85);
/*sqlite*/ CREATE TABLE IF NOT EXISTS meter_windows (
    tenant_id TEXT NOT NULL, meter TEXT NOT NULL, resolution INTEGER NOT NULL, window_start INTEGER NOT NULL,
    subject TEXT NOT NULL, group_key TEXT NOT NULL, {_BUCKET_VALUES_SQLITE},
    PRIMARY KEY (tenant_id, meter, resolution, window_start, subject, group_key)) WITHOUT ROWID;
/*postgres*/ CREATE TABLE IF NOT EXISTS meter_totals (
    tenant_id TEXT NOT NULL, meter TEXT NOT NULL, resolution INTEGER NOT NULL, window_start BIGINT NOT NULL,
    {_BUCKET_VALUES_POSTGRES},
    PRIMARY KEY (tenant_id, meter, resolution, window_start)) WITH (fillfactor = 85);
/*sqlite*/ CREATE TABLE IF NOT EXISTS meter_totals (
    tenant_id TEXT NOT NULL, meter TEXT NOT NULL, resolution INTEGER NOT NULL, window_start INTEGER NOT NULL,
    {_BUCKET_VALUES_SQLITE},
    PRIMARY KEY (tenant_id, meter, resolution, window_start)) WITHOUT ROWID;
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
/*postgres*/ CREATE TABLE IF NOT EXISTS seen_digests (digest BYTEA PRIMARY KEY, keep_until BIGINT NOT NULL);
/*sqlite*/ CREATE TABLE IF NOT EXISTS seen_digests (digest BLOB PRIMARY KEY, keep_until INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_digests_expiry ON seen_digests (keep_until);
CREATE TABLE IF NOT EXISTS seen_events (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, source_id TEXT NOT NULL, keep_until BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, source, source_id));
/*postgres*/ INSERT INTO seen_digests (digest, keep_until) SELECT {_SEEN_DIGEST_POSTGRES}, keep_until
    FROM seen_events WHERE true ORDER BY 1 ON CONFLICT DO NOTHING;
/*sqlite*/ INSERT INTO seen_digests (digest, keep_until) SELECT seen_digest(tenant_id, source, source_id), keep_until
    FROM seen_events WHERE true ORDER BY 1 ON CONFLICT DO NOTHING;
DROP TABLE IF EXISTS seen_events
"""

CHUNK = 400


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Checkpoints -----------------------------------------------------------------


def lock_checkpoint(tx: Tx, consumer: str, topic: str, partition: int) -> int:
    """The next offset this consumer must apply; locked until the transaction ends.

    One statement: the no-op update of an existing row takes its row lock (as
    SELECT ... FOR UPDATE would) and returns the committed value after any wait.
    """
    rows = tx.execute(
        "INSERT INTO checkpoints VALUES (?, ?, ?, 0) ON CONFLICT (consumer, topic, partition) "
        "DO UPDATE SET next_offset=checkpoints.next_offset RETURNING next_offset",
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
        rows = tx.execute("SELECT meter, partition, next_offset FROM meter_offsets WHERE topic=?", (topic,))
    else:
        rows = tx.execute(
            "SELECT meter, partition, next_offset FROM meter_offsets WHERE topic=? AND partition=?",
            (topic, partition),
        )
    return {(m, int(p)): int(o) for m, p, o in rows}


def meters_behind(tx: Tx, topic: str, heads: Mapping[int, int]) -> dict[tuple[str, int], int]:
    """Each (meter, partition) of `topic` whose meter has folded less than the partition's checkpoint
    (`heads`): still catching up there (defined after its events). The value: the offset it has
    folded to, what its buckets hold below."""
    offsets = meter_checkpoints(tx, topic)
    return {
        (definition.slug, partition): offsets.get((definition.slug, partition), 0)
        for definition in meter_definitions(tx)
        for partition, head in heads.items()
        if offsets.get((definition.slug, partition), 0) < head
    }


# Bumped by a replay's swap of the meters' views (stores.shadow.swap), in its transaction: the hot quota
# counters are built from these views and hold the generation they were built from, so a fold that
# finds another one knows they no longer match the views and has them built again.
METERS_GENERATION = "meters-views-generation"


def meters_generation(tx: Tx) -> int:
    """How many times a replay swapped the meters' views in (0: never)."""
    return relay_position(tx, METERS_GENERATION)


def meter_positions(tx: Tx) -> dict[int, int]:
    """Per partition, the sum of every meter's next offset on every topic the meters fold: it moves
    whenever the meters' views take in a record of that partition (what a live watch waits for)."""
    rows = tx.execute("SELECT partition, SUM(next_offset) FROM meter_offsets GROUP BY partition")
    return {int(p): int(total) for p, total in rows}


def set_meter_checkpoints(tx: Tx, topic: str, partition: int, next_offsets: Mapping[str, int]) -> None:
    tx.execute_many(
        "INSERT INTO meter_offsets VALUES (?, ?, ?, ?) "
        "ON CONFLICT (meter, topic, partition) DO UPDATE SET next_offset=excluded.next_offset",
        [(meter, topic, partition, offset) for meter, offset in next_offsets.items()],
    )


# De-duplication ----------------------------------------------------------------


DIGEST_SIZE = 16  # bytes of seen_digest


def seen_digest(tenant_id: str, source: str, source_id: str) -> bytes:
    """The de-duplication key of an event: sha256 of `tenant_id NUL source NUL source_id` (UTF-8), first 16 bytes.

    The SCHEMA's migration computes the same bytes in SQL (PostgreSQL's sha256; on SQLite
    this function, registered on the connection).
    """
    return hashlib.sha256(f"{tenant_id}\x00{source}\x00{source_id}".encode()).digest()[:DIGEST_SIZE]


# The n-th keep_until (from 1, WITH ORDINALITY) goes with the n-th digest of the concatenation.
_CLAIM_POSTGRES = (
    "INSERT INTO seen_digests (digest, keep_until) "
    f"SELECT substring(%b::bytea FROM (n::int - 1) * {DIGEST_SIZE} + 1 FOR {DIGEST_SIZE}), keep_until "
    "FROM unnest(%s::bigint[]) WITH ORDINALITY AS claims(keep_until, n) "
    "ON CONFLICT DO NOTHING RETURNING digest"
)


def claim_events(tx: Tx, keys: Sequence[tuple[str, str, str, int]]) -> set[tuple[str, str, str]]:
    """Record (tenant, source, id, keep_until) as seen; return the (tenant, source, id) that were new.

    Stored as digests (seen_digest); PostgreSQL gets one statement with two parameters, whatever
    the batch size: the digests concatenated (one bytea, cut up in SQL) and the keep_until values
    as an array literal, both built in C rather than dumped element by element by psycopg.
    Digests are sorted, so concurrent claimers lock them in one order.
    """
    if not keys:
        return set()
    claimed: dict[bytes, tuple[tuple[str, str, str], int]] = {}
    for tenant_id, source, source_id, keep_until in keys:
        claimed.setdefault(seen_digest(tenant_id, source, source_id), ((tenant_id, source, source_id), keep_until))
    digests = sorted(claimed)
    if tx.dialect == "postgres":
        until = "{" + ",".join([str(claimed[d][1]) for d in digests]) + "}"
        rows = tx.execute(_CLAIM_POSTGRES, (b"".join(digests), until))
        return {claimed[bytes(d)][0] for (d,) in rows}
    fresh: set[tuple[str, str, str]] = set()
    for chunk in _chunks(digests):
        values = ", ".join("(?, ?)" for _ in chunk)
        params = [value for d in chunk for value in (d, claimed[d][1])]
        rows = tx.execute(f"INSERT INTO seen_digests VALUES {values} ON CONFLICT DO NOTHING RETURNING digest", params)
        fresh.update(claimed[bytes(d)][0] for (d,) in rows)
    return fresh


def already_seen(tx: Tx, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """Which of these (tenant, source, id) the usage fold has claimed (folded, or dropped as a duplicate)."""
    by_digest = {seen_digest(*key): key for key in keys}
    found: set[tuple[str, str, str]] = set()
    for chunk in _chunks(sorted(by_digest)):
        marks = ", ".join("?" for _ in chunk)
        rows = tx.execute(f"SELECT digest FROM seen_digests WHERE digest IN ({marks})", list(chunk))
        found.update(by_digest[bytes(d)] for (d,) in rows)
    return found


def purge_seen(tx: Tx, older_than: int) -> None:
    tx.execute("DELETE FROM seen_digests WHERE keep_until < ?", (older_than,))


def add_dropped(tx: Tx, topic: str, partition: int, offsets: Iterable[int]) -> None:
    tx.execute_many(
        "INSERT INTO dropped_records VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(topic, partition, offset) for offset in offsets],
    )


def add_dead_letter(tx: Tx, consumer: str, topic: str, partition: int, offset: int, reason: str) -> None:
    tx.execute(
        "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (topic, partition, offset, consumer, reason[:1000]),
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


@lru_cache(maxsize=1024)
def _definition(body: str) -> MeterDefinition:
    """Parsed once per body: definitions are immutable (frozen models; the first of a slug wins)."""
    return MeterDefinition.model_validate_json(body)


def meter_definitions(tx: Tx) -> list[MeterDefinition]:
    rows = tx.execute("SELECT body FROM meter_definitions ORDER BY slug")
    return [_definition(body) for (body,) in rows]


def meter_definition(tx: Tx, slug: str) -> MeterDefinition | None:
    rows = tx.execute("SELECT body FROM meter_definitions WHERE slug=?", (slug,))
    return _definition(rows[0][0]) if rows else None


def add_meter_definition(tx: Tx, tenant_id: str, definition: MeterDefinition, event_id: str) -> None:
    """First definition of a slug wins; a redelivered event changes nothing."""
    tx.execute(
        "INSERT INTO meter_definitions VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (definition.slug, tenant_id, definition.model_dump_json(), event_id),
    )


def describe_meter(tx: Tx, definition: MeterDefinition) -> None:
    """A meter's definition with its new description (nothing else of it changes)."""
    tx.execute("UPDATE meter_definitions SET body=? WHERE slug=?", (definition.model_dump_json(), definition.slug))


def drop_meter(tx: Tx, slug: str) -> None:
    """A deleted meter: its definition, buckets and offsets. The caller holds the meters' checkpoints
    (lock_checkpoint on every partition they fold), so no batch counting it commits after this."""
    tx.execute("DELETE FROM meter_definitions WHERE slug=?", (slug,))
    drop_meter_rows(tx, slug)


def drop_meter_rows(tx: Tx, slug: str) -> None:
    """A deleted meter's buckets and offsets (the meters' fold's rows of it), as drop_meter."""
    for table in ("meter_windows", "meter_totals", "meter_offsets"):
        tx.execute(f"DELETE FROM {table} WHERE meter=?", (slug,))


# Bucket rows ---------------------------------------------------------------------

_KEYS = {
    "meter_windows": ("tenant_id", "meter", "resolution", "window_start", "subject", "group_key"),
    "meter_totals": ("tenant_id", "meter", "resolution", "window_start"),
}
_KEY_TYPES = {
    "tenant_id": "text",
    "meter": "text",
    "resolution": "int",
    "window_start": "bigint",
    "subject": "text",
    "group_key": "text",
}
_VALUES = ("count", "total", "minimum", "maximum", "latest_at_us", "latest_offset", "latest", "uniques")
_VALUE_TYPES = ("bigint", "numeric", "numeric", "numeric", "bigint", "bigint", "numeric", "text[]")
_NEWER = "(t.latest_at_us IS NULL OR (excluded.latest_at_us, excluded.latest_offset) > (t.latest_at_us, t.latest_offset))"
# stored := stored ⊕ delta, in SQL: the same algebra as meter_state.combine.
_COMBINE = f"""count = t.count + excluded.count, total = t.total + excluded.total,
    minimum = CASE WHEN t.minimum IS NULL OR excluded.minimum < t.minimum
        OR (excluded.minimum = t.minimum AND scale(excluded.minimum) < scale(t.minimum))
        THEN coalesce(excluded.minimum, t.minimum) ELSE t.minimum END,
    maximum = CASE WHEN t.maximum IS NULL OR excluded.maximum > t.maximum
        OR (excluded.maximum = t.maximum AND scale(excluded.maximum) < scale(t.maximum))
        THEN coalesce(excluded.maximum, t.maximum) ELSE t.maximum END,
    latest_at_us = CASE WHEN {_NEWER} THEN excluded.latest_at_us ELSE t.latest_at_us END,
    latest_offset = CASE WHEN {_NEWER} THEN excluded.latest_offset ELSE t.latest_offset END,
    latest = CASE WHEN {_NEWER} THEN excluded.latest ELSE t.latest END,
    uniques = CASE WHEN excluded.uniques IS NULL THEN t.uniques WHEN t.uniques IS NULL THEN excluded.uniques
        ELSE ARRAY(SELECT DISTINCT token FROM unnest(t.uniques || excluded.uniques) AS token) END"""


def _postgres_columns(table: str) -> tuple[str, ...]:
    """The columns a PostgreSQL upsert row carries, in order: the key, group_values (windows), the state."""
    return (*_KEYS[table], *(("group_values",) if table == "meter_windows" else ()), *_VALUES)


def _postgres_upsert(table: str) -> str:
    """INSERT ... SELECT ... ON CONFLICT DO UPDATE, the rows given as one JSON array of objects.

    One statement and one parameter per batch, whatever its size: orjson writes
    the rows and `json_to_recordset` reads them into typed columns, both in C
    (unnest over one array parameter per column measured 3x slower here:
    psycopg builds each array element by element in Python; extracting each
    column with `->>` from arrays of arrays, 1.8x slower than the record set).
    Decimals travel as exact strings and are read as NUMERIC; uniques and group
    values as JSON arrays of JSON texts, read as text[].
    """
    columns = _postgres_columns(table)
    types = {**_KEY_TYPES, "group_values": "text[]", **dict(zip(_VALUES, _VALUE_TYPES, strict=True))}
    record = ", ".join(f"{column} {types[column]}" for column in columns)
    return (
        f"INSERT INTO {table} AS t ({', '.join(columns)}) SELECT {', '.join(columns)} "
        f"FROM json_to_recordset(?::json) AS d({record}) "
        f"ON CONFLICT ({', '.join(_KEYS[table])}) DO UPDATE SET {_COMBINE}"
    )


_POSTGRES_UPSERT = {table: _postgres_upsert(table) for table in _KEYS}
_POSTGRES_COLUMNS = {table: _postgres_columns(table) for table in _KEYS}


def _sqlite_upsert(table: str) -> str:
    columns = (*_KEYS[table], *_VALUES)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(_KEYS[table])}) DO UPDATE SET " + ", ".join(f"{v}=excluded.{v}" for v in _VALUES)
    )


def _values(state: BucketState, uniques: Any = None) -> tuple[Any, ...]:
    """A state as column values, decimals as exact text (SQLite stores them so; PostgreSQL casts them).

    `uniques` turns the sorted unique tokens into the column's form (SQLite: JSON text).
    """
    latest_at = state.latest_at or (None, None)
    return (
        state.count,
        str(state.total),
        None if state.minimum is None else str(state.minimum),
        None if state.maximum is None else str(state.maximum),
        latest_at[0],
        latest_at[1],
        None if state.latest is None else str(state.latest),
        (uniques or _json_text)(sorted(state.uniques)) if state.uniques else None,
    )


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _state(row: Sequence[Any]) -> BucketState:
    """The inverse of _values, for rows of either database."""
    count, total, minimum, maximum, latest_at_us, latest_offset, latest, uniques = row
    if isinstance(uniques, str):
        uniques = orjson.loads(uniques)
    return BucketState(
        count=int(count),
        total=Decimal(total),
        minimum=None if minimum is None else Decimal(minimum),
        maximum=None if maximum is None else Decimal(maximum),
        latest_at=None if latest_at_us is None else (int(latest_at_us), int(latest_offset)),
        latest=None if latest is None else Decimal(latest),
        uniques=frozenset(uniques) if uniques else frozenset(),
    )


def _group_values(group_key: str) -> list[str]:
    """The JSON text of each group value, by sorted dimension name."""
    values = orjson.loads(group_key)
    return [orjson.dumps(values[k]).decode() for k in sorted(values)]


def append_buckets(tx: Tx, deltas: Mapping[BucketKey, BucketState]) -> None:
    """Write minute buckets and their roll-ups into tables that hold none of their rows yet (a
    rebuild's first write): the rows merge_buckets would leave there, appended in bulk (COPY)."""
    levels = roll_ups(deltas)
    windows = [
        ((k.tenant_id, k.meter, r, k.window_start, k.subject, k.group_key), s)
        for r, level in levels.items()
        for k, s in level.items()
    ]
    overall = [((k.tenant_id, k.meter, r, k.window_start), s) for r, level in levels.items() for k, s in totals(level).items()]
    if tx.dialect == "postgres":
        # COPY's text format: arrays as array literals, the group values' built once per group key.
        literals: dict[str, str] = {}
        for key, _ in windows:
            if key[5] not in literals:
                literals[key[5]] = _array_literal(_group_values(key[5]))
        tx.copy_rows(
            "meter_windows",
            _POSTGRES_COLUMNS["meter_windows"],
            ((*key, literals[key[5]], *_values(state, _array_literal)) for key, state in windows),
        )
        tx.copy_rows(
            "meter_totals", _POSTGRES_COLUMNS["meter_totals"], ((*key, *_values(state, _array_literal)) for key, state in overall)
        )
        return
    for table, keyed in (("meter_windows", windows), ("meter_totals", overall)):
        tx.copy_rows(table, (*_KEYS[table], *_VALUES), ((*key, *_values(state)) for key, state in keyed))


def append_cells(tx: Tx, fold: BulkFold) -> None:
    """append_buckets of a rebuild's minute cells (projections.meter_bulk): the same rows, rolled up
    and written from the cells, on PostgreSQL as COPY text built here rather than row by row."""
    levels = fold.roll_ups()
    if tx.dialect != "postgres":
        windows, overall = meter_bulk.rows(levels)
        tx.copy_rows("meter_windows", (*_KEYS["meter_windows"], *_VALUES), ((*key, *_cell_values(cell)) for key, cell in windows))
        tx.copy_rows("meter_totals", (*_KEYS["meter_totals"], *_VALUES), ((*key, *_cell_values(cell)) for key, cell in overall))
        return
    minutes = levels[MINUTE]
    # Every text of the keys (the coarser levels' are the minutes'), escaped for COPY where it must be.
    groups = {k[4] for k in minutes}
    texts = {k[0] for k in minutes} | {k[1] for k in minutes} | {k[3] for k in minutes} | groups
    escaped = {text: _copy_escape(text) for text in texts}
    plain = all(escaped[text] is text for text in texts)
    literals = {group: _copy_escape(_array_literal(_group_values(group))) for group in groups}
    tx.copy_text("meter_windows", _POSTGRES_COLUMNS["meter_windows"], _window_lines(levels, literals, None if plain else escaped))
    overall = {resolution: meter_bulk.totals(level) for resolution, level in levels.items()}
    tx.copy_text("meter_totals", _POSTGRES_COLUMNS["meter_totals"], _total_lines(overall, None if plain else escaped))


def _window_lines(
    levels: Mapping[int, Mapping[meter_bulk.Key, meter_bulk.Cell]], literals: Mapping[str, str], escaped: Mapping[str, str] | None
) -> Iterator[str]:
    """meter_windows rows in COPY's text format, 5,000 lines a string. `escaped`: the key texts
    as COPY takes them, when any of them is not as it is (None: none needs escaping)."""
    lines: list[str] = []
    for resolution, level in levels.items():
        for (tenant, meter, start, subject, group), cell in level.items():
            literal = literals[group]
            if escaped is not None:
                tenant, meter, subject, group = escaped[tenant], escaped[meter], escaped[subject], escaped[group]
            count, total, low, high, at_us, at_offset, latest, uniques = cell
            if low is not None:
                state = f"{count}\t{total}\t{low}\t{high}\t{at_us}\t{at_offset}\t{latest}\t\\N"
            else:
                state = _cell_text(cell)
            lines.append(f"{tenant}\t{meter}\t{resolution}\t{start}\t{subject}\t{group}\t{literal}\t{state}\n")
            if len(lines) >= 5000:
                yield "".join(lines)
                lines.clear()
    if lines:
        yield "".join(lines)


def _total_lines(
    levels: Mapping[int, Mapping[tuple[str, str, int], meter_bulk.Cell]], escaped: Mapping[str, str] | None
) -> Iterator[str]:
    lines: list[str] = []
    for resolution, level in levels.items():
        for (tenant, meter, start), cell in level.items():
            if escaped is not None:
                tenant, meter = escaped[tenant], escaped[meter]
            lines.append(f"{tenant}\t{meter}\t{resolution}\t{start}\t{_cell_text(cell)}\n")
            if len(lines) >= 5000:
                yield "".join(lines)
                lines.clear()
    if lines:
        yield "".join(lines)


_COPY_SPECIAL = re.compile("[\b\t\n\v\f\r\\\\]")  # psycopg's own (_copy_base._dump_re)
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r"})


def _copy_escape(value: str) -> str:
    """A text value as COPY's text format takes it (as psycopg's Copy.write_row escapes it)."""
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


def _cell_text(cell: meter_bulk.Cell) -> str:
    """A cell's state columns in COPY's text format: what _values gives of its BucketState."""
    count, total, low, high, at_us, at_offset, latest, uniques = cell
    if low is not None:
        return f"{count}\t{total}\t{low}\t{high}\t{at_us}\t{at_offset}\t{latest}\t\\N"
    tokens = "\\N" if not uniques else _copy_escape(_array_literal(sorted(uniques)))
    return f"{count}\t{total}\t\\N\t\\N\t\\N\t\\N\t\\N\t{tokens}"


def _cell_values(cell: meter_bulk.Cell) -> tuple[Any, ...]:
    """A cell's state columns as _values gives them for SQLite."""
    count, total, low, high, at_us, at_offset, latest, uniques = cell
    if low is not None:
        return (count, str(total), str(low), str(high), at_us, at_offset, str(latest), None)
    return (count, str(total), None, None, None, None, None, _json_text(sorted(uniques)) if uniques else None)


def _array_literal(texts: Sequence[str]) -> str:
    """A PostgreSQL text[] literal: every element quoted, with its backslashes and quotes escaped."""
    return "{" + ",".join('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in texts) + "}"


def merge_buckets(tx: Tx, deltas: Mapping[BucketKey, BucketState]) -> None:
    """stored := stored ⊕ delta for every touched minute bucket, and for its hour, day and totals rows."""
    if not deltas:
        return
    levels = roll_ups(deltas)
    first = itemgetter(0)
    # Sorted by key, so concurrent writers would lock rows in the same order.
    windows: list[tuple[tuple[Any, ...], BucketState]] = sorted(
        (
            ((k.tenant_id, k.meter, r, k.window_start, k.subject, k.group_key), s)
            for r, level in levels.items()
            for k, s in level.items()
        ),
        key=first,
    )
    overall: list[tuple[tuple[Any, ...], BucketState]] = sorted(
        (((k.tenant_id, k.meter, r, k.window_start), s) for r, level in levels.items() for k, s in totals(level).items()),
        key=first,
    )
    if tx.dialect == "postgres":
        group_values: dict[str, list[str]] = {}
        for key, _ in windows:
            if key[5] not in group_values:
                group_values[key[5]] = _group_values(key[5])
        columns = _POSTGRES_COLUMNS["meter_windows"]
        rows = [dict(zip(columns, (*key, group_values[key[5]], *_values(state, list)), strict=True)) for key, state in windows]
        tx.execute(_POSTGRES_UPSERT["meter_windows"], (_json_text(rows),))
        columns = _POSTGRES_COLUMNS["meter_totals"]
        rows = [dict(zip(columns, (*key, *_values(state, list)), strict=True)) for key, state in overall]
        tx.execute(_POSTGRES_UPSERT["meter_totals"], (_json_text(rows),))
        return
    for table, keyed in (("meter_windows", windows), ("meter_totals", overall)):
        # Read the stored rows (all at once, joined through a temporary table of the keys),
        # combine in Python (exact decimals), write back.
        keys = _KEYS[table]
        touched = f"temp.touched_{table}"
        tx.execute(f"CREATE TEMP TABLE IF NOT EXISTS touched_{table} ({', '.join(keys)})")
        tx.execute_many(f"INSERT INTO {touched} VALUES ({', '.join('?' for _ in keys)})", [key for key, _ in keyed])
        stored = {
            tuple(row[: len(keys)]): _state(row[len(keys) :])
            for row in tx.execute(
                f"SELECT {', '.join(f's.{c}' for c in (*keys, *_VALUES))} FROM {touched} AS k "
                f"JOIN {table} AS s ON {' AND '.join(f's.{c} = k.{c}' for c in keys)}"
            )
        }
        tx.execute(f"DELETE FROM {touched}")
        tx.execute_many(
            _sqlite_upsert(table),
            [(*key, *_values(combine(stored[key], state) if key in stored else state)) for key, state in keyed],
        )


class DimensionFilter(NamedTuple):
    """Only the buckets whose value of one dimension is among `texts` (their JSON texts as folded)."""

    name: str
    position: int  # in the meter's sorted dimensions, from 1 (PostgreSQL's group_values)
    texts: tuple[str, ...]


def dimension_filters(definition: MeterDefinition, asked: Mapping[str, Sequence[str]]) -> list[DimensionFilter]:
    """The filters of a query asking, per dimension of `definition`, for any of some values (as the
    query string names them: projections.meters.group_value_texts)."""
    dimensions = sorted(definition.group_by)
    return [
        DimensionFilter(name, dimensions.index(name) + 1, tuple(dict.fromkeys(t for v in values for t in group_value_texts(v))))
        for name, values in sorted(asked.items())
    ]


def _where(
    dialect: str,
    params: list[Any],
    tenant_id: str,
    meter: str,
    resolution: int,
    start: int | None,
    end: int | None,
    subjects: Sequence[str] = (),
    filters: Sequence[DimensionFilter] = (),
) -> str:
    """The condition for one meter's buckets of one resolution, window starts in [start, end), of
    these subjects (all when none) and dimension values; its parameters are appended to `params`.
    Dimension filters hold for `meter_windows` only (`meter_totals` has no groups)."""
    sql = "tenant_id=? AND meter=? AND resolution=?"
    params += [tenant_id, meter, resolution]
    if start is not None:
        sql += " AND window_start>=?"
        params.append(start)
    if end is not None:
        sql += " AND window_start<?"
        params.append(end)
    if subjects and dialect == "postgres":
        sql += " AND subject = ANY(?)"
        params.append(list(subjects))
    elif subjects:
        sql += " AND subject IN (" + ", ".join("?" for _ in subjects) + ")"
        params.extend(subjects)
    for name, position, texts in filters:
        if dialect == "postgres":
            sql += f" AND group_values[{int(position)}] = ANY(?)"
            params.append(list(texts))
        else:  # the value's JSON text within group_key, as written (SQLite's ->)
            sql += " AND (group_key -> ?) IN (" + ", ".join("?" for _ in texts) + ")"
            params += [f"$.{name}", *texts]
    return sql


def buckets(
    tx: Tx,
    tenant_id: str,
    meter: str,
    start: int | None,
    end: int | None,
    subjects: Sequence[str],
    *,
    resolution: int = MINUTE,
    filters: Sequence[DimensionFilter] = (),
) -> list[StoredBucket]:
    """Stored buckets of one resolution (minutes unless told) whose window starts in [start, end)."""
    params: list[Any] = []
    where = _where(tx.dialect, params, tenant_id, meter, resolution, start, end, subjects, filters)
    sql = f"SELECT window_start, subject, group_key, {', '.join(_VALUES)} FROM meter_windows WHERE {where}"
    return [StoredBucket(int(w), s, g, _state(values)) for w, s, g, *values in tx.execute(sql, params)]


def total_buckets(
    tx: Tx, tenant_id: str, meter: str, start: int | None, end: int | None, *, resolution: int = MINUTE
) -> list[StoredBucket]:
    """Stored totals (every subject and group value together) of one resolution, as buckets of subject "" and no group."""
    params: list[Any] = []
    where = _where(tx.dialect, params, tenant_id, meter, resolution, start, end)
    sql = f"SELECT window_start, {', '.join(_VALUES)} FROM meter_totals WHERE {where}"
    return [StoredBucket(int(w), "", "{}", _state(values)) for w, *values in tx.execute(sql, params)]


# Meter queries ---------------------------------------------------------------------


def buckets_over(
    tx: Tx,
    tenant_id: str,
    meter: str,
    *,
    start: datetime | None,
    end: datetime | None,
    window_size: WindowSize | None,
    detailed: bool,
    subjects: Sequence[str],
    limit: int,
    filters: Sequence[DimensionFilter] = (),
    zone: tzinfo = UTC,
) -> bool:
    """Whether the meter query `query_meter` would answer would read more than `limit` stored buckets
    (`detailed`: asked for subjects or group values, or filtered by them). Each piece is counted up
    to the limit at most, from the index: the count costs no more than `limit` entries however many
    there are."""
    first = None if start is None else int(start.timestamp())
    last = None if end is None else int(end.timestamp())
    table = "meter_windows" if detailed else "meter_totals"
    counted = 0
    for piece in plan(first, last, window_size, zone):
        params: list[Any] = []
        where = _where(
            tx.dialect,
            params,
            tenant_id,
            meter,
            piece.resolution,
            piece.start,
            piece.end,
            subjects if detailed else (),
            filters if detailed else (),
        )
        [(found,)] = tx.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT {limit - counted + 1}) AS b", params
        )
        counted += int(found)
        if counted > limit:
            return True
    return False


def query_meter(
    tx: Tx,
    tenant_id: str,
    definition: MeterDefinition,
    *,
    start: datetime | None,
    end: datetime | None,
    window_size: WindowSize | None,
    group_by: Sequence[str],
    by_subject: bool,
    subjects: Sequence[str],
    filters: Sequence[DimensionFilter] = (),
    zone: tzinfo = UTC,
) -> list[MeterRow]:
    """One row per window, subject (when `by_subject`) and requested group values, of the buckets
    of `subjects` (all when none) whose dimensions hold the `filters`' values.

    `start` and `end` are whole UTC minutes. Buckets are read at the coarsest
    resolution that fits (projections.meter_query.plan): from `meter_totals`
    when neither subjects nor group values are asked for, else from
    `meter_windows`. PostgreSQL combines them in one GROUP BY; SQLite rolls
    them up in Python (it cannot add decimals exactly), and so do both for
    windows of a time zone (`zone`), whose starts Python computes alike.
    """
    first = None if start is None else int(start.timestamp())
    last = None if end is None else int(end.timestamp())
    detailed = bool(group_by or by_subject or subjects or filters)
    if tx.dialect == "postgres" and not zoned(window_size, zone):
        return _query_in_sql(
            tx, tenant_id, definition, first, last, start, end, window_size, group_by, by_subject, subjects, filters
        )
    stored: list[StoredBucket] = []
    for piece in plan(first, last, window_size, zone):
        if detailed:
            stored += buckets(
                tx, tenant_id, definition.slug, piece.start, piece.end, subjects, resolution=piece.resolution, filters=filters
            )
        else:
            stored += total_buckets(tx, tenant_id, definition.slug, piece.start, piece.end, resolution=piece.resolution)
    span = None
    if stored and window_size is None and (start is None or end is None):
        params: list[Any] = []
        table = "meter_windows" if detailed else "meter_totals"
        where = _where(tx.dialect, params, tenant_id, definition.slug, MINUTE, first, last, subjects, filters)
        [(low, high)] = tx.execute(f"SELECT min(window_start), max(window_start) FROM {table} WHERE {where}", params)
        span = (int(low), int(high))
    return roll_up(
        stored,
        definition.aggregation,
        start=start,
        end=end,
        window_size=window_size,
        group_by=group_by,
        by_subject=by_subject,
        span=span,
        zone=zone,
    )


_WINDOW_SQL = {
    WindowSize.MINUTE: "window_start - mod(mod(window_start, 60) + 60, 60)",
    WindowSize.HOUR: "window_start - mod(mod(window_start, 3600) + 3600, 3600)",
    WindowSize.DAY: "window_start - mod(mod(window_start, 86400) + 86400, 86400)",
    WindowSize.MONTH: "extract(epoch FROM date_trunc('month', to_timestamp(window_start) AT TIME ZONE 'UTC'))::bigint",
    None: "0",
}
_AGGREGATE_SQL = {  # over the rows of a group; values that are counts come back as int
    Aggregation.COUNT: "sum(count)::bigint",
    Aggregation.SUM: "sum(total)",
    Aggregation.AVG: "sum(total), sum(count)::bigint",
    # Of equal values (5.0 and 5), the plainer text, as meter_state.combine keeps it: min() and max()
    # returned whichever row came last, so a query told 5.0 where the embedded views tell 5.
    Aggregation.MIN: "(min(ARRAY[minimum, scale(minimum)]) FILTER (WHERE minimum IS NOT NULL))[1]",
    Aggregation.MAX: "(max(ARRAY[maximum, -scale(maximum)]) FILTER (WHERE maximum IS NOT NULL))[1]",
    Aggregation.LATEST: "(array_agg(latest ORDER BY latest_at_us DESC, latest_offset DESC) FILTER (WHERE latest_at_us IS NOT NULL))[1]",
    Aggregation.UNIQUE_COUNT: "count(DISTINCT token)",
}
_COLUMNS_SQL = {
    Aggregation.COUNT: "count",
    Aggregation.SUM: "total",
    Aggregation.AVG: "total, count",
    Aggregation.MIN: "minimum",
    Aggregation.MAX: "maximum",
    Aggregation.LATEST: "latest, latest_at_us, latest_offset",
    Aggregation.UNIQUE_COUNT: "uniques",
}
# A bucket's own value, when each bucket is a whole row of the answer.
_VALUE_SQL = {
    Aggregation.COUNT: "count",
    Aggregation.SUM: "total",
    Aggregation.AVG: "total, count",
    Aggregation.MIN: "minimum",
    Aggregation.MAX: "maximum",
    Aggregation.LATEST: "latest",
    Aggregation.UNIQUE_COUNT: "cardinality(uniques)",
}


def _query_in_sql(
    tx: Tx,
    tenant_id: str,
    definition: MeterDefinition,
    first: int | None,
    last: int | None,
    start: datetime | None,
    end: datetime | None,
    window_size: WindowSize | None,
    group_by: Sequence[str],
    by_subject: bool,
    subjects: Sequence[str],
    filters: Sequence[DimensionFilter],
) -> list[MeterRow]:
    """One statement. When every bucket read is exactly one row of the answer (buckets the size
    of the windows, keyed like the rows), it reads them as they are; otherwise it GROUPs BY."""
    detailed = bool(group_by or by_subject or subjects or filters)
    table = "meter_windows" if detailed else "meter_totals"
    aggregation = definition.aggregation
    dimensions = sorted(definition.group_by)
    pieces = plan(first, last, window_size)
    seconds = SECONDS.get(window_size) if window_size else None
    direct = all(p.resolution == seconds for p in pieces) and (not detailed or (by_subject and set(group_by) == set(dimensions)))
    keys = ["window_start" if direct else f"{_WINDOW_SQL[window_size]}"]
    if by_subject:
        keys.append("subject")
    # Each group value's JSON text, as the fold wrote it: the same groups as roll_up's.
    keys += [f"group_values[{dimensions.index(d) + 1}]" for d in group_by]
    params: list[Any] = []
    whole = window_size is None and (start is None or end is None)
    bounds = []
    if whole:  # the first and last minute with data, in the same statement (and snapshot)
        bounds = [
            f"(SELECT {edge}(window_start) FROM {table} "
            f"WHERE {_where(tx.dialect, params, tenant_id, definition.slug, MINUTE, first, last, subjects, filters)})"
            for edge in ("min", "max")
        ]
    columns = ", ".join([*keys, *bounds, _VALUE_SQL[aggregation] if direct else _AGGREGATE_SQL[aggregation]])
    inner = ", ".join(
        ["window_start", *(["subject"] if by_subject else []), *(["group_values"] if group_by else []), _COLUMNS_SQL[aggregation]]
    )
    selects = []
    for piece in pieces:
        where = _where(
            tx.dialect, params, tenant_id, definition.slug, piece.resolution, piece.start, piece.end, subjects, filters
        )
        selects.append(f"SELECT {columns if direct else inner} FROM {table} WHERE {where}")
    if direct:
        sql = " UNION ALL ".join(selects)
    else:
        source = f"({' UNION ALL '.join(selects)}) AS p"
        if aggregation is Aggregation.UNIQUE_COUNT:
            source += " CROSS JOIN LATERAL unnest(p.uniques) AS u(token)"
        sql = f"SELECT {columns} FROM {source} GROUP BY {', '.join(str(n) for n in range(1, len(keys) + 1))}"
    results = tx.execute(sql, params)
    if not results:
        return []
    at = len(keys) + len(bounds)  # where the value is
    groups = slice(2 if by_subject else 1, len(keys))
    if aggregation is Aggregation.AVG:
        grouped = [(r[0], r[1] if by_subject else None, r[groups], average(r[at], r[at + 1])) for r in results]
    elif by_subject or group_by:
        grouped = [(r[0], r[1] if by_subject else None, r[groups], r[at]) for r in results]
    else:  # the common case, thousands of minutes maybe: nothing but windows and values
        grouped = [(r[0], None, (), r[at]) for r in results]
    span = (results[0][len(keys)], results[0][len(keys) + 1]) if whole else (None, None)
    return meter_rows(
        grouped,
        start=start,
        end=end,
        window_size=window_size,
        group_by=group_by,
        whole=whole_range(start, end, *span) if window_size is None else None,
    )


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


def keys_of(
    tx: Tx, tenant_id: str, limit: int | None = None, after: tuple[str, str] | None = None
) -> list[tuple[str, str | None, str, str | None]]:
    """The tenant's keys in the order they were issued, `limit` of them (None: all) after `after`, the
    (issued_at, key_id) of the last one seen."""
    where = "tenant_id=?"
    params: list[Any] = [tenant_id]
    if after is not None:
        where += " AND (issued_at > ? OR (issued_at = ? AND key_id > ?))"
        params += [after[0], after[0], after[1]]
    paged = ""
    if limit is not None:
        paged = " LIMIT ?"
        params.append(limit)
    rows = tx.execute(
        f"SELECT key_id, label, issued_at, revoked_at FROM api_keys WHERE {where} ORDER BY issued_at, key_id{paged}", params
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def active_keys_of(tx: Tx, tenant_id: str) -> list[str]:
    rows = tx.execute(
        "SELECT key_id FROM api_keys WHERE tenant_id=? AND revoked_at IS NULL ORDER BY issued_at, key_id", (tenant_id,)
    )
    return [r[0] for r in rows]
