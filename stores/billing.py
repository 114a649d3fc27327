"""The billing views: invoices and closed periods (folded from control events by the catalog
projector), and the usage cut a close bills (read from the meter views).

A month's usage of a meter is the sum of its day buckets in `meter_totals` (stores.views): the cost
of a close grows with tenants, meters and days, never with the events behind them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from projections.invoices import BillingPeriod, PricedPlan, canonical, digest
from projections.meter_state import EXACT
from projections.meters import DAY
from schemas.billing import parse_billing
from schemas.envelope import format_time
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS invoices (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, kind TEXT NOT NULL, number TEXT NOT NULL, period TEXT NOT NULL,
    status TEXT NOT NULL, currency TEXT NOT NULL, total BIGINT NOT NULL, issued_at TEXT NOT NULL,
    document TEXT NOT NULL, digest TEXT NOT NULL, status_changed_at TEXT, status_source TEXT);
CREATE INDEX IF NOT EXISTS invoices_by_tenant ON invoices (tenant_id, issued_at, id);
CREATE TABLE IF NOT EXISTS billing_periods (
    period TEXT PRIMARY KEY, closed_at TEXT NOT NULL, invoices INTEGER NOT NULL, cut TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS billing_held (
    period TEXT NOT NULL, tenant_id TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (period, tenant_id));
"""

InvoiceRow = tuple[dict[str, Any], str, str | None]  # the finalized document, its status now, when it changed


def add_invoice(tx: Tx, document: Mapping[str, Any]) -> None:
    """Keep a finalized document once: a control event relayed twice changes nothing."""
    tx.execute(
        "INSERT INTO invoices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT (id) DO NOTHING",
        (
            document["id"],
            document["tenant_id"],
            document["kind"],
            document["number"],
            document["period"],
            document["status"],
            document["currency"],
            int(document["total"]),
            document["issued_at"],
            canonical(document).decode(),
            digest(document),
        ),
    )


def set_status(tx: Tx, invoice_id: str, status: str, at: str, source: str) -> None:
    """`source`: who moved it (`admin`, or `stripe` for what Stripe's webhook reported)."""
    tx.execute("UPDATE invoices SET status=?, status_changed_at=?, status_source=? WHERE id=?", (status, at, source, invoice_id))


def add_closed_period(
    tx: Tx, period: str, closed_at: str, invoices: int, cut: Mapping[str, Any], held: Mapping[str, str]
) -> None:
    """`held`: the tenants the close did not invoice (an amount past what an invoice holds), with why."""
    tx.execute(
        "INSERT INTO billing_periods VALUES (?, ?, ?, ?) ON CONFLICT (period) DO NOTHING",
        (period, closed_at, invoices, orjson.dumps(cut, option=orjson.OPT_SORT_KEYS).decode()),
    )
    set_held(tx, period, held)


def held_invoiced(tx: Tx, period: str, invoices: int, held: Mapping[str, str]) -> None:
    """A close of the period again invoiced tenants it held: `held` are those still held."""
    tx.execute("UPDATE billing_periods SET invoices=? WHERE period=?", (invoices, period))
    set_held(tx, period, held)


def set_held(tx: Tx, period: str, held: Mapping[str, str]) -> None:
    tx.execute("DELETE FROM billing_held WHERE period=?", (period,))
    for tenant_id, reason in sorted(held.items()):
        tx.execute("INSERT INTO billing_held VALUES (?, ?, ?)", (period, tenant_id, reason))


def periods(tx: Tx, *, limit: int, before: str | None = None) -> list[tuple[str, str, int, dict[str, str]]]:
    """Closed periods, newest first: (period, closed_at, documents issued, held tenant -> reason)."""
    where, params = ("WHERE period < ?", (before,)) if before is not None else ("", ())
    rows = tx.execute(
        f"SELECT period, closed_at, invoices FROM billing_periods {where} ORDER BY period DESC LIMIT ?", (*params, limit)
    )
    held: dict[str, dict[str, str]] = {}
    if rows:
        low, high = rows[-1][0], rows[0][0]
        for period, tenant_id, reason in tx.execute(
            "SELECT period, tenant_id, reason FROM billing_held WHERE period >= ? AND period <= ? ORDER BY period, tenant_id",
            (low, high),
        ):
            held.setdefault(period, {})[tenant_id] = reason
    return [(r[0], r[1], int(r[2]), held.get(r[0], {})) for r in rows]


def _row(row: tuple[Any, ...]) -> InvoiceRow:
    return orjson.loads(row[0]), row[1], row[2]


def invoice(tx: Tx, invoice_id: str) -> InvoiceRow | None:
    rows = tx.execute("SELECT document, status, status_changed_at FROM invoices WHERE id=?", (invoice_id,))
    return _row(rows[0]) if rows else None


def invoices_of(
    tx: Tx, tenant_id: str | None, *, limit: int, before: tuple[str, str] | None = None, period: str | None = None
) -> list[InvoiceRow]:
    """Newest first (issued_at, then id, descending); `before`: the (issued_at, id) of the last one
    of the page before. `tenant_id` None: every tenant's (the admin's view)."""
    where, params = [], []
    if tenant_id is not None:
        where.append("tenant_id=?")
        params.append(tenant_id)
    if period is not None:
        where.append("period=?")
        params.append(period)
    if before is not None:
        where.append("(issued_at < ? OR (issued_at = ? AND id < ?))")
        params += [before[0], before[0], before[1]]
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = tx.execute(
        f"SELECT document, status, status_changed_at FROM invoices {clause} ORDER BY issued_at DESC, id DESC LIMIT ?",
        (*params, limit),
    )
    return [_row(r) for r in rows]


def closed_periods(tx: Tx) -> list[tuple[str, str, int]]:
    return [
        (r[0], r[1], int(r[2])) for r in tx.execute("SELECT period, closed_at, invoices FROM billing_periods ORDER BY period")
    ]


def is_closed(tx: Tx, period: str) -> bool:
    return bool(tx.execute("SELECT 1 FROM billing_periods WHERE period=?", (period,)))


# The cut a close bills ------------------------------------------------------------


def snapshot(tx: Tx) -> None:
    """Make the rest of the transaction read one snapshot (PostgreSQL reads each statement's own by
    default; a SQLite read transaction is one snapshot already). First statement of the transaction."""
    if tx.dialect == "postgres":
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def priced_plan(slug: str, version: int, billing: dict[str, Any]) -> PricedPlan | None:
    parsed = parse_billing(billing)
    return PricedPlan(slug, version, parsed) if parsed.currency is not None else None


def charging_plans(tx: Tx, moment: datetime | None = None) -> dict[str, PricedPlan]:
    """Every plan that charges, at its version in force just before `moment` (the last published
    before it; a plan first published later: its first version), or its current one."""
    if moment is None:
        rows = tx.execute(
            "SELECT v.slug, v.version, v.billing FROM plan_versions v JOIN plans p ON p.slug = v.slug AND p.version = v.version"
        )
    else:
        before = format_time(moment)
        versions: dict[str, list[tuple[int, str, str]]] = {}  # slug -> (version, published_at, billing)
        for slug, version, billing, published_at in tx.execute("SELECT slug, version, billing, published_at FROM plan_versions"):
            versions.setdefault(slug, []).append((int(version), published_at, billing))
        rows = []
        for slug, found in versions.items():
            found.sort()
            earlier = [v for v in found if v[1] < before]
            version, _, billing = earlier[-1] if earlier else found[0]
            rows.append((slug, version, billing))
    found = {r[0]: priced_plan(r[0], int(r[1]), orjson.loads(r[2])) for r in rows}
    return {slug: plan for slug, plan in found.items() if plan is not None}


def plan_versions(tx: Tx) -> dict[tuple[str, int], PricedPlan]:
    """Every version of every plan that charges: an adjustment is priced by the version that priced its period."""
    found = {
        (r[0], int(r[1])): priced_plan(r[0], int(r[1]), orjson.loads(r[2]))
        for r in tx.execute("SELECT slug, version, billing FROM plan_versions")
    }
    return {key: plan for key, plan in found.items() if plan is not None}


def priced_meters(tx: Tx) -> dict[str, str]:
    """Every meter any plan version prices, with its aggregation (SUM or COUNT)."""
    meters: set[str] = set()
    for (text,) in tx.execute("SELECT billing FROM plan_versions"):
        meters.update(p["meter"] for p in orjson.loads(text).get("prices", []))
    found: dict[str, str] = {}
    for meter in sorted(meters):
        rows = tx.execute("SELECT body FROM meter_definitions WHERE slug=?", (meter,))
        if rows:
            found[meter] = str(orjson.loads(rows[0][0])["aggregation"])
    return found


def period_usage(
    tx: Tx, meters: Mapping[str, str], period: BillingPeriod, tenant_id: str | None = None
) -> dict[str, dict[str, Decimal]]:
    """tenant -> meter -> its total over the period's UTC days (only the tenants with any; only
    `tenant_id` if given)."""
    start, end = int(period.start.timestamp()), int(period.end.timestamp())
    usage: dict[str, dict[str, Decimal]] = {}
    one = "" if tenant_id is None else " AND tenant_id=?"
    for meter, aggregation in meters.items():
        column = "count" if aggregation == "COUNT" else "total"
        params = (meter, DAY, start, end) + (() if tenant_id is None else (tenant_id,))
        if tx.dialect == "postgres":
            rows = tx.execute(
                f"SELECT tenant_id, SUM({column})::text FROM meter_totals WHERE meter=? AND resolution=? "
                f"AND window_start >= ? AND window_start < ?{one} GROUP BY tenant_id",
                params,
            )
        else:
            rows = tx.execute(
                f"SELECT tenant_id, {column} FROM meter_totals WHERE meter=? AND resolution=? "
                f"AND window_start >= ? AND window_start < ?{one}",
                params,
            )
        for owner, amount in rows:
            per_meter = usage.setdefault(owner, {})
            per_meter[meter] = EXACT.add(per_meter.get(meter, Decimal(0)), Decimal(amount))  # never rounded
    return {t: {m: _plain(q) for m, q in found.items()} for t, found in usage.items()}


def _plain(quantity: Decimal) -> Decimal:
    """Without trailing zeros or an exponent: 100, 2.5 (SQLite's text and PostgreSQL's sums carry scale)."""
    if quantity == quantity.to_integral_value():
        return quantity.quantize(Decimal(1), context=EXACT)  # in 120 digits: a total may pass Python's default 28
    return quantity.normalize(EXACT)


def earlier_periods(tx: Tx, period: BillingPeriod, window: timedelta) -> list[BillingPeriod]:
    """The closed periods before `period` that late usage may still have reached: those that ended
    within the acceptance window of its start, or after it."""
    found = []
    for text, _, _ in closed_periods(tx):
        earlier = BillingPeriod.parse(text)
        if earlier is not None and earlier.start < period.start and earlier.end >= period.start - window:
            found.append(earlier)
    return found


def meter_cut(tx: Tx, meters: Iterable[str]) -> dict[str, dict[str, int]]:
    """Each meter's checkpoints: `topic/partition` -> the next offset its views have not folded."""
    wanted = set(meters)
    cut: dict[str, dict[str, int]] = {m: {} for m in sorted(wanted)}
    for meter, topic, partition, offset in tx.execute("SELECT meter, topic, partition, next_offset FROM meter_offsets"):
        if meter in wanted:
            cut[meter][f"{topic}/{int(partition)}"] = int(offset)
    return {m: dict(sorted(found.items())) for m, found in cut.items()}


def tenants_and_plans(tx: Tx) -> dict[str, str]:
    return {r[0]: r[1] for r in tx.execute("SELECT tenant_id, plan FROM tenants")}


def currencies_invoiced_on_plan(tx: Tx, slug: str) -> frozenset[str]:
    """The currencies the tenants on plan `slug` now have been invoiced in."""
    rows = tx.execute(
        "SELECT DISTINCT i.currency FROM invoices i JOIN tenants t ON t.tenant_id = i.tenant_id WHERE t.plan = ?", (slug,)
    )
    return frozenset(str(r[0]) for r in rows)


def tenants_created_since(tx: Tx, moment: datetime) -> frozenset[str]:
    """The tenants created at `moment` or later (created_at is format_time's text, which sorts like the time)."""
    return frozenset(r[0] for r in tx.execute("SELECT tenant_id FROM tenants WHERE created_at >= ?", (format_time(moment),)))
