"""Shadow view stores for replays (README, "Replay"): where a replay folds, how it differs from
the live views, and how it becomes them.

A shadow is a database of its own: a separate SQLite file beside the live views (embedded mode),
or a separate PostgreSQL schema in the same database (Kafka mode). Nothing here touches the log.

Projections are named as users know them (meters, quotas, invoices, slos, audit, catalog); each
names the view tables `--diff` compares. The tables are written by three folds, each committing
its tables and its offsets together (streams.projectors): the catalog (control topic), the
meters (usage and api_calls topics; SLO minutes and quota notifications too) and the audit
chains. A swap can only move a fold's tables together with its offsets, so `--swap` of a
projection makes live every table of the folds it needs.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

from projections.quotas import CounterKey
from projections.slos import AlertState, state_after_swap
from schemas.envelope import format_time
from stores import quotas as quota_views
from stores import slos as slo_store
from stores import views
from stores.database import Database, PostgresDatabase, SqliteDatabase, Tx

CATALOG, METERS, AUDIT = "catalog", "meters", "audit"  # the folds (see the module's docstring)


@dataclass(frozen=True, slots=True)
class Fold:
    """One fold's share of the views: its consumers' offsets, its tables, and its rows of shared ones."""

    name: str
    consumers: tuple[str, ...]  # its rows of `checkpoints` and `dead_letters`
    tables: tuple[str, ...]  # the tables it alone writes (replaced whole by a swap)
    relay_positions: tuple[str, ...] = ()  # its rows of `relay_positions`


# The GDPR views the catalog folds (gdpr_exports is no view: the request jobs write the documents).
GDPR_VIEWS = ("data_classes", "gdpr_requests", "gdpr_steps", "gdpr_breaches", "gdpr_retention")
FOLDS: dict[str, Fold] = {
    CATALOG: Fold(
        CATALOG,
        ("catalog",),
        (
            "tenants",
            "api_keys",
            "tenant_status_changes",
            "meter_definitions",
            "plans",
            "plan_versions",
            "quota_overrides",
            "invoices",
            "billing_periods",
            "billing_held",
            "stripe_customers",
            "stripe_invoices",
            "slos",
            "slo_deletions",
            "webhook_endpoints",
            *GDPR_VIEWS,
        ),
        ("catalog-applied",),
    ),
    METERS: Fold(
        METERS,
        ("meters", "api-calls"),
        (
            "meter_windows",
            "meter_totals",
            "meter_offsets",
            "seen_digests",
            "dropped_records",
            "slo_offsets",
            "slo_minutes",
            "slo_alerts",
            "slo_notifications",
        ),
    ),
    AUDIT: Fold(AUDIT, ("audit",), ("audit_entries", "audit_heads", "audit_checkpoints", "audit_trees")),
}
# Threshold notifications are written by the catalog's fold (a quota changed) and the meters' (usage
# crossed one): swapped with either. Whether each was recorded (sent) is kept from the live views.
NOTIFICATIONS = "notifications"
# Tables of notices the notices relay records (sent) and marks `recorded`: a swap keeps those marks.
SENT = (NOTIFICATIONS, "slo_notifications")


@dataclass(frozen=True, slots=True)
class Projection:
    name: str
    tables: tuple[str, ...]  # the views `--diff` compares
    folds: tuple[str, ...]  # what a swap replaces


PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        Projection("meters", ("meter_windows", "meter_totals"), (METERS,)),
        Projection("quotas", ("plans", "plan_versions", "quota_overrides", NOTIFICATIONS), (CATALOG, METERS)),
        Projection(
            "invoices", ("invoices", "billing_periods", "billing_held", "stripe_customers", "stripe_invoices"), (CATALOG,)
        ),
        Projection("slos", ("slos", "slo_deletions", "slo_minutes", "slo_alerts", "slo_notifications"), (CATALOG, METERS)),
        Projection("audit", ("audit_entries", "audit_heads", "audit_checkpoints", "audit_trees"), (AUDIT,)),
        Projection("gdpr", GDPR_VIEWS, (CATALOG,)),
        Projection(
            "catalog", ("tenants", "api_keys", "tenant_status_changes", "meter_definitions", "webhook_endpoints"), (CATALOG,)
        ),
    )
}
# Columns no replay can know: whether the notices relay has sent a notification yet.
# Nor when the notices relay emitted a breach's overdue notice (a swap keeps both from the live views).
UNCOMPARED = {**{table: ("recorded",) for table in SENT}, "gdpr_breaches": ("overdue_notice_at",)}
SWAP_CHUNK = 10_000


class UnknownProjection(ValueError):
    """A projection name that is not one of PROJECTIONS."""


def chosen(names: Iterable[str]) -> list[Projection]:
    """The projections named (every one when none is), in PROJECTIONS' order; UnknownProjection otherwise."""
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in PROJECTIONS]
    if unknown:
        raise UnknownProjection(f"unknown projection {', '.join(map(repr, unknown))}; known: {', '.join(PROJECTIONS)}")
    return [p for name, p in PROJECTIONS.items() if not wanted or name in wanted]


def folds_of(projections: Sequence[Projection]) -> list[Fold]:
    names = {fold for p in projections for fold in p.folds}
    return [fold for name, fold in FOLDS.items() if name in names]


def new_id() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class Shadow:
    """Where one replay folds: `db`, and how to find it again (`file` or `schema`)."""

    db: Database
    file: Path | None = None
    schema: str | None = None

    def drop(self) -> None:
        """Close and remove the shadow (its file, or its schema)."""
        if isinstance(self.db, PostgresDatabase) and self.schema is not None:
            with self.db.transaction() as tx:
                tx.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.db.close()
        if self.file is not None:
            for path in (self.file, Path(f"{self.file}-wal"), Path(f"{self.file}-shm")):
                path.unlink(missing_ok=True)


def open_shadow(live: Database, replay_id: str, *, folder: Path | None = None) -> Shadow:
    """A fresh, migrated shadow of `live`: `views.replay-<id>.sqlite` in `folder` (SQLite), or the
    schema `<live schema>_replay_<id>` (PostgreSQL)."""
    from stores.schema import SCHEMA  # here: stores.schema holds stores.replays, which reads the folds here

    if not re.fullmatch(r"[a-z0-9]{1,16}", replay_id):
        raise ValueError(f"a replay id is 1 to 16 lowercase letters and digits, not {replay_id!r}")
    if isinstance(live, PostgresDatabase):
        schema = f"{live.schema[:40]}_replay_{replay_id}"
        db: Database = PostgresDatabase(live.url, schema=schema, max_size=2)
        with db.transaction() as tx:  # left over by a replay that died at the same id: start afresh
            tx.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        db.migrate(SCHEMA)
        return Shadow(db, schema=schema)
    if folder is None:
        raise ValueError("an SQLite shadow needs the folder of the live views")
    file = folder / f"views.replay-{replay_id}.sqlite"
    for path in (file, Path(f"{file}-wal"), Path(f"{file}-shm")):
        path.unlink(missing_ok=True)
    db = SqliteDatabase(file)
    db.migrate(SCHEMA)
    return Shadow(db, file=file)


def reopen(live: Database, kept: str) -> Shadow:
    """A shadow a replay kept (`kept`: its schema, or its file), to read or drop."""
    if isinstance(live, PostgresDatabase):
        if not re.fullmatch(r"[a-z0-9_]{1,63}", kept) or "_replay_" not in kept:
            raise ValueError(f"not a replay's schema: {kept!r}")
        return Shadow(PostgresDatabase(live.url, schema=kept, max_size=2), schema=kept)
    file = Path(kept)
    if not file.name.startswith("views.replay-") or not file.exists():
        raise ValueError(f"not a replay's file: {kept!r}")
    return Shadow(SqliteDatabase(file), file=file)


# --- comparing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    side: str  # "live": a row only the live views hold; "replay": one only the replay holds
    row: tuple[Any, ...]


def columns(tx: Tx, table: str) -> list[str]:
    if tx.dialect == "postgres":
        rows = tx.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
    else:
        rows = [(row[1],) for row in tx.execute(f"PRAGMA table_info({table})")]
    return [str(row[0]) for row in rows]


def _hashable(value: Any) -> Any:
    if isinstance(value, list):  # PostgreSQL arrays: a unique count's tokens are kept in no particular order
        return tuple(sorted(_hashable(v) for v in value))
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def _rows(db: Database, table: str) -> tuple[list[str], Counter[tuple[Any, ...]]]:
    with db.transaction() as tx:
        names = [c for c in columns(tx, table) if c not in UNCOMPARED.get(table, ())]
        rows = tx.execute(f"SELECT {', '.join(names)} FROM {table}")
    return names, Counter(tuple(_hashable(v) for v in row) for row in rows)


def diff(live: Database, shadow: Database, tables: Iterable[str]) -> list[Difference]:
    """Every row that is in one store and not the other (as many times as it is missing), table
    by table, in a stable order."""
    found: list[Difference] = []
    for table in dict.fromkeys(tables):
        _, ours = _rows(live, table)
        _, theirs = _rows(shadow, table)
        for side, rows in (("live", ours - theirs), ("replay", theirs - ours)):
            for row in sorted(rows.elements(), key=repr):
                found.append(Difference(table, side, row))
    return found


# --- swapping ----------------------------------------------------------------------------------


class ShadowBehind(Exception):
    """The live views have folded further than the shadow: fold the shadow on, then swap again."""


def _offsets(tx: Tx, consumers: Sequence[str]) -> dict[tuple[str, str, int], int]:
    marks = ", ".join("?" for _ in consumers)
    rows = tx.execute(f"SELECT consumer, topic, partition, next_offset FROM checkpoints WHERE consumer IN ({marks})", consumers)
    return {(str(c), str(t), int(p)): int(o) for c, t, p, o in rows}


def _swapped_rows(folds: Sequence[Fold]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(table, WHERE clause, its parameters) of every row a swap of `folds` replaces."""
    consumers = tuple(c for fold in folds for c in fold.consumers)
    marks = ", ".join("?" for _ in consumers)
    parts: list[tuple[str, str, tuple[str, ...]]] = [(t, "", ()) for fold in folds for t in fold.tables]
    if {CATALOG, METERS} & {fold.name for fold in folds}:
        parts.append((NOTIFICATIONS, "", ()))
    parts.append(("checkpoints", f"WHERE consumer IN ({marks})", consumers))
    parts.append(("dead_letters", f"WHERE consumer IN ({marks})", consumers))
    positions = tuple(name for fold in folds for name in fold.relay_positions)
    if positions:
        parts.append(("relay_positions", f"WHERE name IN ({', '.join('?' for _ in positions)})", positions))
    return parts


def swap(live: Database, shadow: Shadow, folds: Sequence[Fold]) -> bool:
    """Make the shadow's rows of `folds` the live ones, in one transaction of the live views: their
    readers see the old rows or the new, never a mix, and the live folds wait (they lock their
    checkpoints first) and go on from the shadow's offsets. ShadowBehind (nothing changed) when
    the live folds are past the shadow's offsets anywhere: they would skip what lies between.
    True when the swap changed what the hot quota counters count (they are to be built again)."""
    consumers = tuple(c for fold in folds for c in fold.consumers)
    names = {fold.name for fold in folds}
    now = datetime.now(UTC)
    with shadow.db.transaction() as stx:
        theirs = _offsets(stx, consumers)
        their_counted = _counted(stx, now) if METERS in names else None
    with live.transaction(bounded=False) as tx:  # copies whole views: as long as they take
        if tx.dialect == "postgres":
            tx.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")  # the folds' first statement waits for us
        ours = _offsets(tx, consumers)
        behind = [key for key, offset in ours.items() if theirs.get(key, 0) < offset]
        if behind:
            raise ShadowBehind(f"the live views are past the replay at {behind[:3]}")
        # The hot quota counters are built from the meters' views: built again if these change what
        # they count (stores.views.meters_generation).
        counters_change = their_counted is not None and _changes_counters(tx, ours, theirs, their_counted, now)
        sent = {table: sorted(str(row[0]) for row in tx.execute(f"SELECT id FROM {table} WHERE recorded = 1")) for table in SENT}
        past = _slo_past(tx) if METERS in names else None
        thresholds = _every_row(tx, NOTIFICATIONS) if names & {CATALOG, METERS} else None
        noticed = _overdue_noticed(tx) if CATALOG in names else []
        # The catalog alone: meters its swap deletes (the shadow folded their omni.meter.deleted,
        # the live catalog not yet) leave the live meters' fold too, as the live catalog drops them.
        defined = _meter_slugs(tx) if CATALOG in names and METERS not in names else None
        for table, where, params in _swapped_rows(folds):
            tx.execute(f"DELETE FROM {table} {where}", params)
            listed = ", ".join(columns(tx, table))
            if isinstance(shadow.db, PostgresDatabase):
                tx.execute(f'INSERT INTO {table} ({listed}) SELECT {listed} FROM "{shadow.schema}".{table} {where}', params)
            else:
                assert shadow.file is not None
                with _reading(shadow.file) as source:
                    cursor = source.execute(f"SELECT {listed} FROM {table} {where}", params)
                    marks = ", ".join("?" for _ in listed.split(", "))
                    while chunk := list(islice(cursor, SWAP_CHUNK)):
                        tx.execute_many(f"INSERT INTO {table} ({listed}) VALUES ({marks})", chunk)
        for table, ids in sent.items():
            tx.execute_many(f"UPDATE {table} SET recorded = 1 WHERE id = ?", [(i,) for i in ids])
        if defined is not None:
            for slug in sorted(defined - _meter_slugs(tx)):
                views.drop_meter_rows(tx, slug)
        if past is not None:
            _keep_slo_past(tx, past)
        if thresholds is not None:
            _keep_thresholds_notified(tx, thresholds)
        tx.execute_many("UPDATE gdpr_breaches SET overdue_notice_at=? WHERE id=?", [(at, i) for i, at in noticed])
        if counters_change:
            views.set_relay_position(tx, views.METERS_GENERATION, views.meters_generation(tx) + 1)
    return counters_change


def _meter_slugs(tx: Tx) -> set[str]:
    return {str(row[0]) for row in tx.execute("SELECT slug FROM meter_definitions")}


def _counted(tx: Tx, now: datetime) -> dict[CounterKey, Decimal]:
    """What the hot quota counters take from these views: the current periods' totals."""
    return quota_views.current_totals(tx, views.meter_definitions(tx), now)


def _changes_counters(
    tx: Tx,
    ours: dict[tuple[str, str, int], int],
    theirs: dict[tuple[str, str, int], int],
    their_counted: dict[CounterKey, Decimal],
    now: datetime,
) -> bool:
    """Whether the shadow's meters' views would have the quota counters count otherwise than the live
    ones they replace: offsets moved (records the live fold never counted), a live meter still
    catching up (its counters hold part of its history; the shadow's holds it all), or other totals."""
    meters = [key for key in {*ours, *theirs} if key[0] in FOLDS[METERS].consumers]
    if any(ours.get(key, 0) != theirs.get(key, 0) for key in meters):
        return True
    heads: dict[str, dict[int, int]] = {}
    for key in meters:
        heads.setdefault(key[1], {})[key[2]] = ours.get(key, 0)
    if any(views.meters_behind(tx, topic, at) for topic, at in heads.items()):
        return True
    return _counted(tx, now) != their_counted


@dataclass(frozen=True, slots=True)
class TableRows:
    """Every row of one table, with its columns' names."""

    table: str
    columns: list[str]
    rows: list[tuple[Any, ...]]


def _every_row(tx: Tx, table: str) -> TableRows:
    names = columns(tx, table)
    return TableRows(table, names, [tuple(row) for row in tx.execute(f"SELECT {', '.join(names)} FROM {table}")])


def _keep_thresholds_notified(tx: Tx, live: TableRows) -> None:
    """A replay never tells a threshold notice again, nor otherwise. Its id names the tenant, meter,
    period and threshold, but its moment and usage depend on which fold found it first: a quota
    change over usage folded before it is notified as of the change, with the usage folded by then,
    while a replay folds the catalog first and finds it at the usage event that reached it. So each
    notice the live views hold stays as they told it (sent, or still to send as it is), the replay's
    of the same id is dropped, and only a notice the live views never had is new (and notified)."""
    tx.execute_many(f"DELETE FROM {live.table} WHERE id=?", [(row[0],) for row in live.rows])
    marks = ", ".join("?" for _ in live.columns)
    tx.execute_many(f"INSERT INTO {live.table} ({', '.join(live.columns)}) VALUES ({marks})", live.rows)


def _overdue_noticed(tx: Tx) -> list[tuple[str, str]]:
    """(breach id, when its overdue notice was emitted): no replay can know it, a swap keeps it."""
    rows = tx.execute("SELECT id, overdue_notice_at FROM gdpr_breaches WHERE overdue_notice_at IS NOT NULL")
    return [(str(i), str(at)) for i, at in rows]


@dataclass(frozen=True, slots=True)
class SloPast:
    """What the live views had told of SLO alerts before a swap: each version's state, its notices."""

    states: dict[str, AlertState]  # by fold id
    columns: list[str]
    notices: list[tuple[Any, ...]]  # every row of slo_notifications


def _slo_past(tx: Tx) -> SloPast:
    known = [str(row[0]) for row in tx.execute("SELECT slo FROM slo_alerts")]
    states = slo_store.alert_states(tx, known) if known else {}
    names = columns(tx, "slo_notifications")
    notices = [tuple(row) for row in tx.execute(f"SELECT {', '.join(names)} FROM slo_notifications")]
    return SloPast({slo: state for slo, state in states.items() if state is not None}, names, notices)


def _keep_slo_past(tx: Tx, past: SloPast) -> None:
    """A replay never notifies the past again. A platform SLO counts every partition, so the order
    in which their batches commit can move one of its transitions by a minute or two, and a refold
    finds it under another moment's id. So every transition up to where the live fold had evaluated
    stays as the live views told it (sent or not), the replay's own of that stretch are dropped, and
    only what the replay evaluated beyond it is new (and notified). A tenant's SLO folds one
    partition in log order: its transitions are the same either way."""
    replayed = slo_store.alert_states(tx, sorted(past.states)) if past.states else {}
    for slo, live in past.states.items():
        owner, name, version = slo.rsplit("/", 2)
        horizon = format_time(datetime.fromtimestamp(live.open, tz=UTC))
        tx.execute(
            "DELETE FROM slo_notifications WHERE tenant_id=? AND slo=? AND version=? AND occurred_at<=?",
            (owner, name, int(version), horizon),
        )
        kept = state_after_swap(live, replayed.get(slo))
        if kept != replayed.get(slo):
            slo_store.set_alert_state(tx, slo, kept)
    tx.execute_many("DELETE FROM slo_notifications WHERE id=?", [(row[0],) for row in past.notices])
    marks = ", ".join("?" for _ in past.columns)
    tx.execute_many(f"INSERT INTO slo_notifications ({', '.join(past.columns)}) VALUES ({marks})", past.notices)


@contextmanager
def _reading(file: Path) -> Iterator[sqlite3.Connection]:
    source = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        yield source
    finally:
        source.close()
