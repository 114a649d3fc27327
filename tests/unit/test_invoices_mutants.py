"""Invoices and credit notes as whole documents, voiding, corrections at their edges, and the billing
period's calendar: what `make mutation` found no fast test held (mutants that survived, or parts
of projections.invoices no test ran)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import NAMESPACE_URL, uuid5

import pytest

from projections.invoices import (
    CREDIT_NOTE,
    INVOICE,
    Billed,
    BillingPeriod,
    PricedPlan,
    Statement,
    StatusChanged,
    bill,
    canonical,
    changes,
    credit_note_id,
    digest,
    document_number,
    void_credit_note,
)
from schemas.billing import Billing
from schemas.envelope import Envelope
from tests.unit.test_invoices import DECEMBER, TENANT, close


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


# Whole documents: what a customer receives, byte for byte ----------------------------------------

INVOICES = uuid5(NAMESPACE_URL, "https://omni.dev/invoices")


def test_an_invoice_is_its_whole_document_and_its_digest_is_of_its_canonical_bytes() -> None:
    statement = close(usage={"tokens": Decimal(2501), "images": Decimal(250)})
    assert statement.invoice == {
        "id": str(uuid5(INVOICES, f"invoice/{TENANT}/2026-11")),
        "kind": "invoice",
        "number": "3F2A9C1B-0007",
        "tenant_id": TENANT,
        "period": "2026-11",
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
        "currency": "USD",
        "minor_units": 2,
        "status": "finalized",
        "plan": {"slug": "pro", "version": 1},
        "lines": [
            {"type": "fee", "plan": "pro", "amount": 1000},
            {
                "type": "usage", "meter": "images", "model": "package", "quantity": 250, "included": 0, "billable": 250,
                "amount": 1500, "packages": 3, "package_price": "5.00",
            },
            {
                "type": "usage", "meter": "tokens", "model": "graduated", "quantity": 2501, "included": 0, "billable": 2501,
                "amount": 300,
                "tiers": [
                    {"tier": 1, "up_to": 1000, "quantity": 1000, "unit_price": "0", "flat_price": None, "amount": "0"},
                    {"tier": 2, "up_to": None, "quantity": 1501, "unit_price": "0.002", "flat_price": None, "amount": "3.002"},
                ],
            },
        ],
        "subtotal": 2800,
        "total": 2800,
        "issued_at": "2026-12-01T01:00:00Z",
    }  # fmt: skip
    plain = json.dumps(statement.invoice, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical(statement.invoice) == plain
    assert digest(statement.invoice) == hashlib.sha256(plain).hexdigest()


def test_a_correction_downwards_is_a_whole_credit_note_beside_the_periods_invoice() -> None:
    statement = close(
        period=DECEMBER,
        earlier={"2026-11": {"tokens": Decimal(1500), "images": Decimal(250)}},
        billed={"2026-11": Billed("pro", 1, {"tokens": Decimal(2501), "images": Decimal(250)})},
    )
    assert statement.credit_note == {
        "id": str(uuid5(INVOICES, f"credit_note/{TENANT}/2026-12")),
        "kind": "credit_note",
        "number": "3F2A9C1B-CN-0002",
        "tenant_id": TENANT,
        "period": "2026-12",
        "period_start": "2026-12-01T00:00:00Z",
        "period_end": "2027-01-01T00:00:00Z",
        "currency": "USD",
        "minor_units": 2,
        "status": "finalized",
        "plan": {"slug": "pro", "version": 1},
        "lines": [
            {
                "type": "adjustment", "meter": "tokens", "period": "2026-11", "quantity": -1001, "billed_quantity": 2501,
                "corrected_quantity": 1500, "amount": 200,  # 3.00 billed for 2501, 1.00 for 1500
            }
        ],
        "subtotal": 200,
        "total": 200,
        "issued_at": "2026-12-01T01:00:00Z",
        "reason": "usage corrected after its period was invoiced",
    }  # fmt: skip
    assert statement.invoice is not None and [line["type"] for line in statement.invoice["lines"]] == ["fee"]
    assert statement.billed == {
        "2026-12": Billed("pro", 1, {}),
        "2026-11": Billed("pro", 1, {"tokens": Decimal(1500), "images": Decimal(250)}),
    }


def test_only_periods_whose_totals_moved_are_adjusted_and_remembered() -> None:
    statement = close(
        period=DECEMBER,
        earlier={
            "2026-09": {"tokens": Decimal(5000)},  # billed by a plan version that is gone: left alone
            "2026-10": {"tokens": Decimal(2501), "images": Decimal(100)},  # as billed
            "2026-11": {"tokens": Decimal(3001), "images": Decimal(100)},  # tokens moved up
        },
        billed={
            "2026-09": Billed("gone", 1, {"tokens": Decimal(1)}),
            "2026-10": Billed("pro", 1, {"tokens": Decimal(2501), "images": Decimal(100)}),
            "2026-11": Billed("pro", 1, {"tokens": Decimal(2501), "images": Decimal(100)}),
        },
    )
    assert statement.invoice is not None and statement.credit_note is None
    assert [(line["type"], line.get("period"), line.get("meter"), line["amount"]) for line in statement.invoice["lines"]] == [
        ("fee", None, None, 1000),
        ("adjustment", "2026-11", "tokens", 100),  # 4.00 for 3001, 3.00 billed
    ]
    assert set(statement.billed) == {"2026-11", "2026-12"}


def test_a_correction_that_costs_nothing_more_is_a_zero_line_on_the_invoice_not_a_credit_note() -> None:
    statement = close(
        period=DECEMBER,
        earlier={"2026-11": {"tokens": Decimal(900)}},
        billed={"2026-11": Billed("pro", 1, {"tokens": Decimal(500)})},  # both inside the free first tier
    )
    assert statement.credit_note is None and statement.invoice is not None
    assert statement.invoice["lines"][1] == {
        "type": "adjustment", "meter": "tokens", "period": "2026-11", "quantity": 400, "billed_quantity": 500,
        "corrected_quantity": 900, "amount": 0,
    }  # fmt: skip
    assert statement.billed["2026-11"] == Billed("pro", 1, {"tokens": Decimal(900)})


ALLOWANCE = PricedPlan(
    "allowance",
    1,
    Billing.model_validate(
        {"currency": "JPY", "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "1", "included": 100}]}
    ),
)


def close_allowance(billed_then: int, now: int, plan: PricedPlan | None = ALLOWANCE) -> Statement:
    return bill(
        tenant_id=TENANT,
        period=DECEMBER,
        plan=plan,
        usage={},
        earlier={"2026-11": {"tokens": Decimal(now)}},
        billed={"2026-11": Billed("allowance", 1, {"tokens": Decimal(billed_then)})},
        plan_at=lambda slug, version: ALLOWANCE if (slug, version) == ("allowance", 1) else None,
        next_invoice=1,
        next_credit_note=1,
        issued_at="2026-12-01T01:00:00Z",
    )


def test_without_usage_or_fee_only_a_correction_that_costs_something_makes_an_invoice() -> None:
    assert close_allowance(10, 20).invoice is None  # moved inside the allowance: nothing to charge
    one_yen = close_allowance(100, 101).invoice
    assert one_yen is not None and [(line["type"], line["amount"]) for line in one_yen["lines"]] == [("adjustment", 1)]
    assert one_yen["total"] == 1


def test_a_tenant_left_without_a_plan_is_invoiced_its_corrections_in_the_currency_they_were_billed_in() -> None:
    statement = close_allowance(100, 150, plan=None)
    assert statement.invoice is not None
    assert (statement.invoice["plan"], statement.invoice["currency"], statement.invoice["minor_units"]) == (None, "JPY", 0)
    assert [(line["type"], line["amount"]) for line in statement.invoice["lines"]] == [("adjustment", 50)]


def test_a_period_billed_in_another_currency_is_refused_with_both_named() -> None:
    with pytest.raises(ValueError) as refused:
        close(
            period=DECEMBER,
            earlier={"2026-11": {"tokens": Decimal(10)}},
            billed={"2026-11": Billed("metered", 3, {"tokens": Decimal(5)})},
        )
    assert str(refused.value) == "2026-11 was billed in JPY, this invoice is in USD"


def test_a_fee_of_zero_is_no_line_and_a_minimum_says_it_applied() -> None:
    plan = PricedPlan(
        "min",
        1,
        Billing.model_validate(
            {
                "currency": "USD",
                "fee": "0.00",
                "prices": [
                    {"meter": "calls", "model": "per_unit", "unit_price": "0.01", "minimum": "5.00"},
                    {"meter": "tokens", "model": "per_unit", "unit_price": "0.01"},
                ],
            }
        ),
    )
    invoice = close(plan=plan, usage={"calls": Decimal(10), "tokens": Decimal(10)}).invoice
    assert invoice is not None
    assert [(line["type"], line["meter"], line["amount"], line.get("minimum_applied")) for line in invoice["lines"]] == [
        ("usage", "calls", 500, True),
        ("usage", "tokens", 10, None),
    ]


def test_a_document_number_takes_the_first_eight_characters_of_the_tenant_without_dashes() -> None:
    assert document_number("ab-cd-ef-gh-ij", INVOICE, 12) == "ABCDEFGH-0012"
    assert document_number("ab-cd-ef-gh-ij", CREDIT_NOTE, 3) == "ABCDEFGH-CN-0003"


def test_what_was_billed_is_kept_as_json_and_read_back_exactly() -> None:
    billed = Billed("pro", 2, {"tokens": Decimal("2.50"), "images": Decimal(1)})
    assert billed.to_json() == {"plan": "pro", "version": 2, "quantities": {"images": "1", "tokens": "2.50"}}
    assert Billed.from_json(billed.to_json()) == billed
    assert Billed.from_json({"plan": "pro", "version": "2", "quantities": {"tokens": "2.50", "images": "1"}}) == billed


def test_the_period_of_an_instant_does_not_depend_on_the_servers_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert BillingPeriod.of(datetime(2026, 11, 30, 23, 0, tzinfo=UTC)) == BillingPeriod.parse("2026-11")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_status_change_recorded_without_its_source_was_an_admins() -> None:
    moment = datetime(2026, 12, 2, 8, tzinfo=UTC)
    data = {"invoice_id": "inv-1", "status": "void", "at": "2026-12-02T08:00:00Z"}
    event = Envelope(
        id="s", type="omni.invoice.status_changed", tenant_id=TENANT, source="omni://billing", source_id="s",
        event_time=moment, recorded_time=moment, data=data,
    )  # fmt: skip
    assert changes(event) == [StatusChanged("inv-1", "void", "2026-12-02T08:00:00Z", "admin")]
