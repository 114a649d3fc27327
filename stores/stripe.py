"""The Stripe view: each tenant's Stripe customer, each pushed invoice's Stripe invoice (folded by
the catalog projector from control events), and the finalized invoices still to push.

Rows are only ever added, once: a control event relayed twice changes nothing."""

from __future__ import annotations

from typing import Any

import orjson

from projections.invoices import INVOICE
from projections.stripe import CustomerLinked, InvoicePushed, StatusMirrored, StripeChange
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS stripe_customers (
    tenant_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, linked_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stripe_invoices (
    invoice_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, stripe_invoice_id TEXT NOT NULL,
    customer_id TEXT NOT NULL, pushed_at TEXT NOT NULL, mirrored_status TEXT);
"""

FINALIZED = "finalized"


def write(tx: Tx, change: StripeChange) -> None:
    match change:
        case CustomerLinked(tenant_id, customer_id, at):
            tx.execute(
                "INSERT INTO stripe_customers VALUES (?, ?, ?) ON CONFLICT (tenant_id) DO NOTHING", (tenant_id, customer_id, at)
            )
        case InvoicePushed(invoice_id, tenant_id, stripe_invoice_id, customer_id, at):
            tx.execute(
                "INSERT INTO stripe_invoices VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (invoice_id) DO NOTHING",
                (invoice_id, tenant_id, stripe_invoice_id, customer_id, at),
            )
        case StatusMirrored(invoice_id, status):
            tx.execute("UPDATE stripe_invoices SET mirrored_status=? WHERE invoice_id=?", (status, invoice_id))


# What Stripe is told when an admin moves a pushed invoice (Stripe's own payments come from Stripe).
MIRRORED = ("void", "uncollectible", "paid")


def to_mirror(tx: Tx, limit: int) -> list[tuple[str, str, str, str]]:
    """(invoice id, tenant, Stripe invoice id, status) of pushed invoices an admin moved since Stripe
    was last told: void, uncollectible, or paid outside Stripe."""
    marks = ", ".join("?" for _ in MIRRORED)
    rows = tx.execute(
        "SELECT i.id, i.tenant_id, s.stripe_invoice_id, i.status FROM invoices i JOIN stripe_invoices s ON s.invoice_id = i.id "
        f"WHERE i.status IN ({marks}) AND i.status_source = 'admin' "
        "AND (s.mirrored_status IS NULL OR s.mirrored_status <> i.status) ORDER BY i.status_changed_at, i.id LIMIT ?",
        (*MIRRORED, limit),
    )
    return [(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def unpushed(tx: Tx, limit: int, after: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """Finalized invoices (not credit notes) not yet in Stripe, oldest first (issued_at, then id);
    `after`: the (issued_at, id) of the last one of the page before."""
    page, params = "", ()
    if after is not None:
        page, params = " AND (i.issued_at > ? OR (i.issued_at = ? AND i.id > ?))", (after[0], after[0], after[1])
    rows = tx.execute(
        "SELECT i.document FROM invoices i WHERE i.kind=? AND i.status=? "
        f"AND NOT EXISTS (SELECT 1 FROM stripe_invoices s WHERE s.invoice_id = i.id){page} ORDER BY i.issued_at, i.id LIMIT ?",
        (INVOICE, FINALIZED, *params, limit),
    )
    return [orjson.loads(r[0]) for r in rows]


def stripe_invoice(tx: Tx, invoice_id: str) -> str | None:
    rows = tx.execute("SELECT stripe_invoice_id FROM stripe_invoices WHERE invoice_id=?", (invoice_id,))
    return str(rows[0][0]) if rows else None
