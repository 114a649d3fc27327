"""Voiding an invoice, and the billing period's calendar: the parts of projections.invoices no other
fast test ran (`make mutation` reported their mutants as having no test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from projections.invoices import CREDIT_NOTE, BillingPeriod, credit_note_id, void_credit_note
from tests.unit.test_invoices import TENANT, close


def invoice() -> dict[str, object]:
    found = close(usage={"tokens": Decimal(2501), "images": Decimal(250)}).invoice
    assert found is not None and found["total"] == 2800
    return found


def test_a_void_credit_note_gives_the_whole_invoice_back_under_the_next_credit_note_number() -> None:
    voided = invoice()
    note = void_credit_note(voided, 3, "billed twice", "2026-12-02T08:00:00Z")
    assert note == {
        "id": credit_note_id(TENANT, f"void/{voided['id']}"),
        "kind": CREDIT_NOTE,
        "number": "3F2A9C1B-CN-0003",
        "tenant_id": TENANT,
        "period": "2026-11",
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
        "currency": "USD",
        "minor_units": 2,
        "plan": {"slug": "pro", "version": 1},
        "status": "finalized",
        "lines": [{"type": "void", "invoice": voided["id"], "number": "3F2A9C1B-0007", "amount": 2800}],
        "subtotal": 2800,
        "total": 2800,
        "issued_at": "2026-12-02T08:00:00Z",
        "reason": "voids 3F2A9C1B-0007: billed twice",
    }
    assert note["id"] != voided["id"] and note["id"] != credit_note_id(TENANT, "2026-11")


@pytest.mark.parametrize("reason", [None, ""])
def test_a_void_without_a_reason_only_names_the_invoice(reason: str | None) -> None:
    assert void_credit_note(invoice(), 1, reason, "2026-12-02T08:00:00Z")["reason"] == "voids 3F2A9C1B-0007"


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2026-11", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01", datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)),
        ("1900-01", datetime(1900, 1, 1, tzinfo=UTC), datetime(1900, 2, 1, tzinfo=UTC)),
        ("2999-12", datetime(2999, 12, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)),
    ],
)
def test_a_period_is_its_calendar_month_in_utc(text: str, start: datetime, end: datetime) -> None:
    assert BillingPeriod.parse(text) == BillingPeriod(text, start, end)


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-1", "1899-12", "3000-01", "2026-11-01", " 2026-11", "x"])
def test_what_is_not_a_month_is_no_period(text: str) -> None:
    assert BillingPeriod.parse(text) is None


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC), "2026-11"),
        (datetime(2026, 12, 1, tzinfo=UTC), "2026-12"),
        (datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))), "2026-11"),  # 23:30 UTC the day before
        (datetime(2026, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1))), "2027-01"),
    ],
)
def test_the_period_of_an_instant_is_its_utc_month(moment: datetime, text: str) -> None:
    assert BillingPeriod.of(moment) == BillingPeriod.parse(text)


@pytest.mark.parametrize(
    ("text", "before"), [("2026-12", "2026-11"), ("2027-01", "2026-12"), ("2026-02", "2026-01"), ("2026-10", "2026-09")]
)
def test_the_period_before_is_the_calendar_month_before(text: str, before: str) -> None:
    period = BillingPeriod.parse(text)
    assert period is not None and period.before() == BillingPeriod.parse(before)
