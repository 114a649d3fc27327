"""The catalog projector folds the billing, Stripe and SLO control events into their views, on SQLite
and on PostgreSQL alike: a finalized document once, each status change with who made it, a closed
period with its cut, Stripe's customers and invoices and what it was told, SLO definitions. (`make
mutation` found no fast test folding them.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from projections.invoices import void_credit_note
from schemas.envelope import Envelope, encode
from schemas.topics import Topics
from stores import billing as billing_store
from stores import slos as slo_store
from stores import stripe as stripe_store
from stores.database import Database
from streams.log import LogRecord
from streams.projectors import CatalogProjector
from tests.unit.test_invoices import TENANT, close

TOPICS = Topics(prefix="b", usage_partitions=1)
START = datetime(2026, 12, 1, 1, tzinfo=UTC)


def control(offset: int, type_: str, data: dict[str, Any], tenant: str = TENANT) -> LogRecord:
    moment = START + timedelta(seconds=offset)
    envelope = Envelope(
        id=f"b-{offset}", type=type_, tenant_id=tenant, source="omni://billing", source_id=f"b/{offset}",
        event_time=moment, recorded_time=moment, data=data,
    )  # fmt: skip
    return LogRecord(TOPICS.control, 0, offset, tenant, encode(envelope))


def stored(db: Database, invoice_id: str) -> tuple[Any, ...]:
    with db.transaction() as tx:
        row = billing_store.invoice(tx, invoice_id)
        source = tx.execute("SELECT status_source FROM invoices WHERE id=?", (invoice_id,))
    assert row is not None
    return (*row, source[0][0])


def test_billing_events_fold_into_the_billing_views(database: Database) -> None:
    invoice = close(usage={"tokens": Decimal(2501)}).invoice
    assert invoice is not None
    note = void_credit_note(invoice, 1, "billed twice", "2026-12-02T08:00:00Z")
    cut = {"tokens": {"0": 42}}
    catalog = CatalogProjector(database, TOPICS)
    batch = [
        control(0, "omni.invoice.finalized", {"invoice": invoice, "billed": {}}),
        control(1, "omni.credit_note.finalized", {"invoice": note, "billed": {}}),
        control(
            2,
            "omni.billing.period_closed",
            {"period": "2026-11", "closed_at": "2026-12-01T01:00:00Z", "cut": cut, "invoices": 1},
            "_platform",
        ),  # fmt: skip
        control(
            3,
            "omni.invoice.status_changed",
            {"invoice_id": invoice["id"], "status": "void", "reason": "twice", "source": "admin", "at": "2026-12-02T08:00:00Z"},
        ),  # fmt: skip
    ]
    assert catalog.process(0, batch) == 4
    assert stored(database, invoice["id"]) == (invoice, "void", "2026-12-02T08:00:00Z", "admin")
    assert stored(database, note["id"]) == (note, "finalized", None, None)
    with database.transaction() as tx:
        assert billing_store.closed_periods(tx) == [("2026-11", "2026-12-01T01:00:00Z", 1)]
        assert billing_store.is_closed(tx, "2026-11") and not billing_store.is_closed(tx, "2026-12")
        assert [orjson.loads(c) for (c,) in tx.execute("SELECT cut FROM billing_periods")] == [cut]
        newest_first = [doc["id"] for doc, _, _ in billing_store.invoices_of(tx, TENANT, limit=10)]
        assert newest_first == [note["id"], invoice["id"]]

    paid = {"invoice_id": invoice["id"], "status": "paid", "source": "stripe", "at": "2026-12-03T08:00:00Z"}
    again = [control(4, "omni.invoice.finalized", {"invoice": {**invoice, "total": 1}, "billed": {}}), control(5, "omni.invoice.status_changed", paid)]  # fmt: skip
    assert catalog.process(0, again) == 2
    assert stored(database, invoice["id"]) == (invoice, "paid", "2026-12-03T08:00:00Z", "stripe")  # the document kept once


def test_stripe_and_slo_events_fold_into_their_views(database: Database) -> None:
    invoice = close(usage={"tokens": Decimal(2501)}).invoice
    assert invoice is not None
    definition = {"event_type": "inference", "sli": "availability", "status_property": "$.data.status", "objective": 99, "window": "30d"}  # fmt: skip
    batch = [
        control(0, "omni.invoice.finalized", {"invoice": invoice, "billed": {}}),
        control(1, "omni.stripe.customer_linked", {"tenant_id": TENANT, "customer_id": "cus_1", "at": "2026-12-01T02:00:00Z"}),
        control(
            2,
            "omni.stripe.invoice_pushed",
            {"invoice_id": invoice["id"], "stripe_invoice_id": "in_1", "customer_id": "cus_1", "at": "2026-12-01T03:00:00Z"},
        ),  # fmt: skip
        control(
            3,
            "omni.invoice.status_changed",
            {"invoice_id": invoice["id"], "status": "void", "source": "admin", "at": "2026-12-02T08:00:00Z"},
        ),  # fmt: skip
        control(4, "omni.slo.defined", {"owner": TENANT, "name": "api", "version": 2, "definition": definition}),
    ]
    assert CatalogProjector(database, TOPICS).process(0, batch) == 5
    with database.transaction() as tx:
        customers = tx.execute("SELECT tenant_id, customer_id, linked_at FROM stripe_customers")
        assert [tuple(row) for row in customers] == [(TENANT, "cus_1", "2026-12-01T02:00:00Z")]
        assert stripe_store.stripe_invoice(tx, invoice["id"]) == "in_1"
        assert stripe_store.to_mirror(tx, 10) == [(invoice["id"], TENANT, "in_1", "void")]  # Stripe is to be told
        slos = [(r.owner, r.name, r.version, r.definition.model_dump(mode="json", exclude_none=True), r.updated_at) for r in slo_store.definitions(tx)]  # fmt: skip
        assert slos == [(TENANT, "api", 2, {**definition, "match": {}}, "2026-12-01T01:00:04.000000Z")]
    mirrored = control(5, "omni.stripe.invoice_status_mirrored", {"invoice_id": invoice["id"], "status": "void"})
    assert CatalogProjector(database, TOPICS).process(0, [mirrored]) == 1
    with database.transaction() as tx:
        assert stripe_store.to_mirror(tx, 10) == []  # told
