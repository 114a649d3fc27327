"""The catalog projector folds the billing control events into the billing views, on SQLite and on
PostgreSQL alike: a finalized document once, each status change with who made it, a closed period
with its cut. (`make mutation` found no fast test folding them.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from projections.invoices import void_credit_note
from schemas.envelope import Envelope, encode
from schemas.topics import Topics
from stores import billing as billing_store
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
