"""Quota usage as the meter views hold it, and the notifications the threshold fold writes.

A quota's usage in a period is its meter's total for the tenant over the period's UTC days: the
day buckets of `meter_totals` (stores.views), summed here (SQLite keeps totals as decimal text).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from projections.meter_state import EXACT
from projections.meters import DAY
from projections.quotas import THRESHOLD_CROSSED, CounterKey, Crossing, PeriodKey, periods_around
from schemas.envelope import format_time
from schemas.meters import Aggregation, MeterDefinition
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, type TEXT NOT NULL, meter TEXT NOT NULL, period TEXT NOT NULL,
    threshold INTEGER NOT NULL, quota_limit TEXT NOT NULL, used TEXT NOT NULL, occurred_at TEXT NOT NULL,
    recorded INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS notifications_by_tenant ON notifications (tenant_id, occurred_at, id);
CREATE INDEX IF NOT EXISTS notifications_to_record ON notifications (id) WHERE recorded = 0;
"""


# PostgreSQL advisory lock (transaction-scoped) between the usage folds (shared) and the catalog's
# threshold sweep (exclusive): otherwise a usage batch that found no quota and a plan change that
# found no usage yet could commit side by side, and neither notify. SQLite has one writer anyway.
THRESHOLD_LOCK = 7245


def lock_thresholds(tx: Tx, *, exclusive: bool) -> None:
    if tx.dialect == "postgres":
        tx.execute(f"SELECT pg_advisory_xact_lock{'' if exclusive else '_shared'}({THRESHOLD_LOCK})")


def _amount(definition: MeterDefinition) -> str:
    return "count" if definition.aggregation is Aggregation.COUNT else "total"


def period_totals(tx: Tx, definition: MeterDefinition, start: int, end: int) -> dict[str, Decimal]:
    """Every tenant's usage of an additive meter over [start, end) (epoch seconds, whole UTC days)."""
    rows = tx.execute(
        f"SELECT tenant_id, {_amount(definition)} FROM meter_totals WHERE meter=? AND resolution=? "
        "AND window_start >= ? AND window_start < ?",
        (definition.slug, DAY, start, end),
    )
    found: dict[str, Decimal] = {}
    for tenant_id, amount in rows:
        found[tenant_id] = EXACT.add(found.get(tenant_id, Decimal(0)), Decimal(amount))  # as the meters add
    return found


def current_totals(tx: Tx, definitions: Iterable[MeterDefinition], now: datetime) -> dict[CounterKey, Decimal]:
    """Every tenant's usage of each additive meter in the periods around `now` (what the hot quota
    counters hold), as the views hold it."""
    found: dict[CounterKey, Decimal] = {}
    for definition in definitions:
        if definition.aggregation not in (Aggregation.SUM, Aggregation.COUNT):
            continue
        for period in periods_around(now):
            start, end = int(period.start.timestamp()), int(period.end.timestamp())
            for tenant_id, amount in period_totals(tx, definition, start, end).items():
                found[(tenant_id, definition.slug, period.text)] = amount
    return found


def period_total(tx: Tx, tenant_id: str, definition: MeterDefinition, period: PeriodKey) -> Decimal:
    """One tenant's usage of an additive meter in one period."""
    rows = tx.execute(
        f"SELECT {_amount(definition)} FROM meter_totals WHERE tenant_id=? AND meter=? AND resolution=? "
        "AND window_start >= ? AND window_start < ?",
        (tenant_id, definition.slug, DAY, int(period.start.timestamp()), int(period.end.timestamp())),
    )
    total = Decimal(0)
    for row in rows:
        total = EXACT.add(total, Decimal(row[0]))  # as the meters add: never rounded to 28 digits
    return total


def add_notifications(tx: Tx, crossings: Iterable[Crossing]) -> int:
    """Keep each crossing once (its id is deterministic); returns how many were new."""
    added = 0
    for c in crossings:
        rows = tx.execute(
            "INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT DO NOTHING RETURNING id",
            (
                c.id,
                c.tenant_id,
                THRESHOLD_CROSSED,
                c.meter,
                c.period.text,
                c.threshold,
                str(c.limit),
                str(c.used),
                format_time(c.occurred_at),
            ),
        )
        added += len(rows)
    return added


NotificationRow = tuple[str, str, str, str, str, int, str, str, str]


def notifications(tx: Tx, tenant_id: str, limit: int, before: tuple[str, str] | None) -> list[NotificationRow]:
    """The tenant's notifications, newest first; `before` is the (occurred_at, id) of the last one seen."""
    columns = "id, tenant_id, type, meter, period, threshold, quota_limit, used, occurred_at"
    if before is None:
        rows = tx.execute(
            f"SELECT {columns} FROM notifications WHERE tenant_id=? ORDER BY occurred_at DESC, id DESC LIMIT ?",
            (tenant_id, limit),
        )
    else:
        rows = tx.execute(
            f"SELECT {columns} FROM notifications WHERE tenant_id=? AND (occurred_at < ? OR (occurred_at = ? AND id < ?)) "
            "ORDER BY occurred_at DESC, id DESC LIMIT ?",
            (tenant_id, before[0], before[0], before[1], limit),
        )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def unrecorded(tx: Tx, limit: int) -> list[NotificationRow]:
    """Notifications the notices relay has not recorded in the event store yet."""
    columns = "id, tenant_id, type, meter, period, threshold, quota_limit, used, occurred_at"
    rows = tx.execute(
        f"SELECT {columns} FROM notifications WHERE recorded = 0 ORDER BY occurred_at, threshold, id LIMIT ?", (limit,)
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def mark_recorded(tx: Tx, ids: Iterable[str]) -> None:
    tx.execute_many("UPDATE notifications SET recorded = 1 WHERE id = ?", [(i,) for i in ids])
