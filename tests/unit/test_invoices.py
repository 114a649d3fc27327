"""Closing a period for one tenant (projections.invoices.bill): which documents, which lines, and the
invariant that billing usage late never changes what it costs in all."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import invoice_page
from projections.invoices import (
    MAX_AMOUNT,
    Billed,
    BillingPeriod,
    PricedPlan,
    Statement,
    Unbillable,
    bill,
    canonical,
    digest,
    void_forgiven,
    void_refusal,
)
from projections.pricing import charge
from schemas.billing import Billing

NOVEMBER = BillingPeriod.parse("2026-11")
DECEMBER = BillingPeriod.parse("2026-12")
JANUARY = BillingPeriod.parse("2027-01")
assert NOVEMBER is not None and DECEMBER is not None and JANUARY is not None
TENANT = "3f2a9c1b-0000-4000-8000-000000000001"

PRO = PricedPlan(
    "pro",
    1,
    Billing.model_validate(
        {
            "currency": "USD",
            "fee": "10.00",
            "prices": [
                {
                    "meter": "tokens",
                    "model": "graduated",
                    "tiers": [{"up_to": 1000, "unit_price": "0"}, {"up_to": None, "unit_price": "0.002"}],
                },
                {"meter": "images", "model": "package", "package_size": 100, "package_price": "5.00"},
            ],
        }
    ),
)
USAGE_ONLY = PricedPlan(
    "metered",
    3,
    Billing.model_validate({"currency": "JPY", "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "2"}]}),
)

WITH_MINIMUM = PricedPlan(
    "floor",
    1,
    Billing.model_validate(
        {
            "currency": "USD",
            "fee": "10.00",
            "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "0.01", "minimum": "5.00"}],
        }
    ),
)


def close(
    period: BillingPeriod = NOVEMBER,
    plan: PricedPlan | None = PRO,
    usage: dict[str, Decimal] | None = None,
    earlier: dict[str, dict[str, Decimal]] | None = None,
    billed: dict[str, Billed] | None = None,
    existed: bool = True,
) -> Statement:
    plans = {(p.slug, p.version): p for p in (PRO, USAGE_ONLY, WITH_MINIMUM)}
    return bill(
        tenant_id=TENANT,
        period=period,
        plan=plan,
        usage=usage or {},
        earlier=earlier or {},
        billed=billed or {},
        plan_at=lambda slug, version: plans.get((slug, version)),
        next_invoice=7,
        next_credit_note=2,
        issued_at="2026-12-01T01:00:00Z",
        existed=existed,
    )


def test_an_invoice_bills_the_fee_and_each_priced_meter_and_remembers_what_it_billed() -> None:
    statement = close(usage={"tokens": Decimal(2501), "images": Decimal(250), "unpriced": Decimal(9)})
    invoice = statement.invoice
    assert invoice is not None and statement.credit_note is None
    assert (invoice["number"], invoice["period"], invoice["currency"], invoice["total"]) == (
        "3F2A9C1B-0007",
        "2026-11",
        "USD",
        2800,
    )
    assert [(line["type"], line.get("meter"), line["amount"]) for line in invoice["lines"]] == [
        ("fee", None, 1000),
        ("usage", "images", 1500),
        ("usage", "tokens", 300),
    ]
    assert statement.billed == {"2026-11": Billed("pro", 1, {"tokens": Decimal(2501), "images": Decimal(250)})}


def test_no_usage_and_no_fee_means_no_invoice_and_nothing_remembered() -> None:
    assert close(plan=USAGE_ONLY) == Statement(None, None, {})
    assert close(plan=None, usage={"tokens": Decimal(5)}) == Statement(None, None, {})


def test_a_fee_alone_is_invoiced() -> None:
    invoice = close().invoice
    assert invoice is not None and [line["type"] for line in invoice["lines"]] == ["fee"] and invoice["total"] == 1000


def test_a_tenant_created_after_the_period_owes_no_fee_nor_minimum_for_it_but_its_usage_is_billed() -> None:
    assert close(plan=WITH_MINIMUM, existed=False) == Statement(None, None, {})
    statement = close(plan=WITH_MINIMUM, usage={"tokens": Decimal(30)}, existed=False)  # usage of the month, sent late
    assert statement.invoice is not None
    assert [(line["type"], line["amount"]) for line in statement.invoice["lines"]] == [("usage", 30)]
    assert "minimum_applied" not in statement.invoice["lines"][0] and statement.invoice["total"] == 30
    assert statement.billed == {"2026-11": Billed("floor", 1, {"tokens": Decimal(30)}, minimums=False)}
    # Its late usage is priced as the month was: without the minimum (20 more tokens: 20 cents).
    later = close(DECEMBER, plan=WITH_MINIMUM, earlier={"2026-11": {"tokens": Decimal(50)}}, billed=statement.billed)
    assert later.invoice is not None
    assert [(line["type"], line["amount"]) for line in later.invoice["lines"]] == [
        ("fee", 1000),
        ("usage", 500),  # December, which it existed in: the minimum applies
        ("adjustment", 20),
    ]
    assert later.billed["2026-11"] == Billed("floor", 1, {"tokens": Decimal(50)}, minimums=False)
    assert Billed.from_json(later.billed["2026-11"].to_json()) == later.billed["2026-11"]
    # A tenant that existed: the fee and the minimum, as before (and its record says nothing of them).
    existing = close(plan=WITH_MINIMUM, usage={"tokens": Decimal(30)})
    assert existing.invoice is not None and existing.invoice["total"] == 1500
    assert existing.billed["2026-11"].to_json() == {"plan": "floor", "version": 1, "quantities": {"tokens": "30"}}


def test_an_invoice_holds_amounts_up_to_64_bits_and_refuses_more() -> None:
    cents = PricedPlan(
        "cents",
        1,
        Billing.model_validate({"currency": "USD", "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "0.01"}]}),
    )
    largest = close(plan=cents, usage={"tokens": Decimal(MAX_AMOUNT)}).invoice
    assert largest is not None and largest["total"] == MAX_AMOUNT == 2**63 - 1
    assert largest["lines"][0]["quantity"] == MAX_AMOUNT  # a JSON number still
    assert canonical(largest)
    with pytest.raises(Unbillable, match="more than an invoice holds"):
        close(plan=cents, usage={"tokens": Decimal(MAX_AMOUNT + 1)})
    # A quantity past 64 bits that costs nothing is invoiced, written as its exact text.
    gratis = PricedPlan(
        "gratis",
        1,
        Billing.model_validate({"currency": "USD", "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "0"}]}),
    )
    free = close(plan=gratis, usage={"tokens": Decimal(2**63)}).invoice
    assert free is not None and free["lines"][0]["quantity"] == str(2**63) and canonical(free)


@pytest.mark.parametrize("quantity", ["1e28", "1e30", "99999999999999999999999999999999999999", "-1e38"])
def test_a_quantity_past_28_digits_is_refused_as_unbillable_or_billed_exactly(quantity: str) -> None:
    # Python's default context keeps 28 digits: quantizing an amount past 10^28 raised
    # InvalidOperation there (a 500 that failed every tenant's close), and sums were rounded.
    total = Decimal(quantity)
    if total > 0:
        with pytest.raises(Unbillable, match="more than an invoice holds"):
            close(plan=USAGE_ONLY, usage={"tokens": total})
    else:  # far below nothing: no usage to bill, the fee only
        statement = close(usage={"tokens": total})
        assert statement.invoice is not None and statement.invoice["total"] == 1000
        assert statement.invoice["lines"][1]["quantity"] == str(int(total))


def test_a_quantity_with_more_than_28_significant_digits_is_invoiced_exactly() -> None:
    precise = Decimal("123456789012.123456789012345679")  # 30 significant digits, as a meter sums them
    statement = close(plan=USAGE_ONLY, usage={"tokens": precise})
    assert statement.invoice is not None
    (line,) = statement.invoice["lines"]
    assert Decimal(str(line["quantity"])) == precise
    assert line["amount"] == 246913578024  # 2 yen a token, 246,913,578,024.246... rounded once
    assert statement.billed["2026-11"].quantities == {"tokens": precise}
    tiered = close(usage={"tokens": precise}).invoice
    assert tiered is not None
    tokens = next(line for line in tiered["lines"] if line.get("meter") == "tokens")
    assert tokens["tiers"][1]["amount"] == "246913576.024246913578024691358"  # (precise - 1000) x 0.002, exact


def test_usage_that_costs_nothing_is_still_invoiced_at_zero() -> None:
    free = PricedPlan(
        "free",
        1,
        Billing.model_validate(
            {"currency": "USD", "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "0.01", "included": 100}]}
        ),
    )
    invoice = close(plan=free, usage={"tokens": Decimal(40)}).invoice
    assert invoice is not None and invoice["total"] == 0 and invoice["lines"][0]["billable"] == 0


def test_late_usage_is_billed_with_the_plan_version_that_priced_its_period() -> None:
    # November was billed by pro v1; pro is at v2 now, with tokens at 0.01: the adjustment is priced by v1.
    billed = {"2026-11": Billed("pro", 1, {"tokens": Decimal(2501), "images": Decimal(250)})}
    now = PricedPlan("pro", 2, PRO.billing.model_copy(update={"prices": [PRO.billing.prices[1]]}))
    statement = close(DECEMBER, plan=now, earlier={"2026-11": {"tokens": Decimal(3001), "images": Decimal(250)}}, billed=billed)
    invoice = statement.invoice
    assert invoice is not None
    adjustment = invoice["lines"][-1]
    assert adjustment == {
        "type": "adjustment",
        "meter": "tokens",
        "period": "2026-11",
        "quantity": 500,
        "billed_quantity": 2501,
        "corrected_quantity": 3001,
        "amount": 100,  # 2001 x 0.002 = 4.002 -> 400 cents, 300 billed before
    }
    assert statement.billed["2026-11"] == Billed("pro", 1, {"tokens": Decimal(3001), "images": Decimal(250)})


def test_a_correction_downwards_is_a_credit_note_and_no_fee_less_invoice_is_made_for_it() -> None:
    billed = {"2026-11": Billed("metered", 3, {"tokens": Decimal(100)})}
    statement = close(DECEMBER, plan=USAGE_ONLY, earlier={"2026-11": {"tokens": Decimal(40)}}, billed=billed)
    assert statement.invoice is None
    credit = statement.credit_note
    assert credit is not None
    assert (credit["kind"], credit["number"], credit["currency"], credit["total"]) == (
        "credit_note",
        "3F2A9C1B-CN-0002",
        "JPY",
        120,
    )
    assert credit["lines"][0]["quantity"] == -60
    assert statement.billed == {"2026-11": Billed("metered", 3, {"tokens": Decimal(40)})}


def test_a_period_never_invoiced_is_adjusted_from_nothing_with_the_plan_now() -> None:
    statement = close(DECEMBER, plan=USAGE_ONLY, earlier={"2026-11": {"tokens": Decimal(10)}})
    assert statement.invoice is not None
    assert [(line["type"], line["amount"]) for line in statement.invoice["lines"]] == [("adjustment", 20)]


def test_a_voided_adjustment_is_forgiven_and_its_months_standing_invoice_is_still_credited_down() -> None:
    """November's invoice stands (2501 tokens); December's, whose adjustment billed 500 more of
    November, is voided: November goes back to what stands, the 500 forgiven. A correction of
    November to 2501 then credits 500 of what its standing invoice charged, and nothing twice."""
    november = {"2026-11": Billed("pro", 1, {"tokens": Decimal(2501), "images": Decimal(250)})}
    december = close(DECEMBER, earlier={"2026-11": {"tokens": Decimal(3001), "images": Decimal(250)}}, billed=november)
    assert december.invoice is not None
    forgiven = void_forgiven(december.invoice, {**november, **december.billed})
    assert forgiven == {
        "2026-11": Billed("pro", 1, {"tokens": Decimal(2501), "images": Decimal(250)}, forgiven={"tokens": Decimal(500)})
    }
    assert Billed.from_json(forgiven["2026-11"].to_json()) == forgiven["2026-11"]
    assert "forgiven" not in november["2026-11"].to_json(), "a record without a void is stored as before"

    unchanged = close(JANUARY, earlier={"2026-11": {"tokens": Decimal(3001), "images": Decimal(250)}}, billed=forgiven)
    assert unchanged.credit_note is None and unchanged.invoice is not None
    assert [line["type"] for line in unchanged.invoice["lines"]] == ["fee"], "the forgiven 500 is not billed again"
    corrected = close(JANUARY, earlier={"2026-11": {"tokens": Decimal(2501), "images": Decimal(250)}}, billed=forgiven)
    assert corrected.credit_note is not None
    (line,) = corrected.credit_note["lines"]
    # 2001 billable (2501 less the 500 forgiven) against 2501 billed: 500 tokens at 0.002 back.
    assert (line["quantity"], line["forgiven_quantity"], line["corrected_quantity"], line["amount"]) == (-500, 500, 2501, 100)


def test_a_correction_of_a_voided_month_credits_nothing_and_its_later_usage_is_priced_past_the_forgiven() -> None:
    statement = close(usage={"tokens": Decimal(5000)})
    assert statement.invoice is not None
    forgiven = void_forgiven(statement.invoice, statement.billed)
    assert forgiven == {"2026-11": Billed("pro", 1, {"tokens": Decimal(0)}, forgiven={"tokens": Decimal(5000)})}
    down = close(DECEMBER, earlier={"2026-11": {"tokens": Decimal(4000)}}, billed=forgiven)
    assert down.credit_note is None and down.invoice is not None
    assert [line["type"] for line in down.invoice["lines"]] == ["fee"]
    up = close(DECEMBER, earlier={"2026-11": {"tokens": Decimal(7000)}}, billed=forgiven)
    assert up.invoice is not None and up.credit_note is None
    assert [(line["type"], line.get("quantity"), line["amount"]) for line in up.invoice["lines"]] == [
        ("fee", None, 1000),
        ("adjustment", 2000, 400),  # 2000 past the 5000 forgiven, which took the free 1000: all at 0.002
    ]


def test_a_void_forgives_the_minimum_its_invoice_charged_once() -> None:
    """100 tokens billed at the 5.00 minimum, voided; 1000 more reported later. The month's 1100 cost
    11.00 in all, less the 5.00 the void forgave: 6.00 (priced as if empty it was 5.00, forgiving 6.00)."""
    statement = close(plan=WITH_MINIMUM, usage={"tokens": Decimal(100)})
    assert statement.invoice is not None
    assert _lines(statement.invoice, "usage") == 500
    later = close(
        DECEMBER,
        plan=WITH_MINIMUM,
        earlier={"2026-11": {"tokens": Decimal(1100)}},
        billed=void_forgiven(statement.invoice, statement.billed),
    )
    assert later.invoice is not None
    assert _lines(later.invoice, "adjustment") == 600


@given(
    billed_then=st.integers(min_value=0, max_value=50_000).map(Decimal),
    late=st.integers(min_value=-5_000, max_value=50_000).map(Decimal),
)
def test_a_void_forgives_what_its_invoice_charged_and_no_more(billed_then: Decimal, late: Decimal) -> None:
    """After a void, the month's later usage costs what the whole month costs less what the voided
    invoice charged: the same as if the invoice had stood, less its amount."""
    first = close(usage={"tokens": billed_then})
    assert first.invoice is not None
    total = billed_then + late
    second = close(DECEMBER, earlier={"2026-11": {"tokens": total}}, billed=void_forgiven(first.invoice, first.billed))
    assert _lines(second.credit_note, "adjustment") == 0, "nothing is credited for a voided month"
    price = PRO.price_of("tokens")
    assert price is not None
    forgiven_usage = max(billed_then, Decimal(0))
    expected = charge(price, total, 2).amount - charge(price, forgiven_usage, 2).amount if total > forgiven_usage else 0
    assert _lines(second.invoice, "adjustment") == expected


def test_a_month_corrected_downwards_since_its_invoice_cannot_be_voided() -> None:
    """November billed 5000 tokens (1800); December credited 400 back (corrected to 3000). A void of
    November's invoice would give its whole 1800 back, 400 of it a second time: it is refused."""
    november = close(usage={"tokens": Decimal(5000)})
    assert november.invoice is not None
    december = close(DECEMBER, earlier={"2026-11": {"tokens": Decimal(3000)}}, billed=november.billed)
    assert december.credit_note is not None and december.credit_note["total"] == 400
    refusal = void_refusal(november.invoice, {**november.billed, **december.billed})
    assert refusal is not None and "tokens of 2026-11" in refusal and "5000 billed, 3000 now" in refusal
    assert void_refusal(november.invoice, november.billed) is None, "uncorrected: it may be voided"
    upwards = close(DECEMBER, earlier={"2026-11": {"tokens": Decimal(6000)}}, billed=november.billed)
    assert void_refusal(november.invoice, {**november.billed, **upwards.billed}) is None, "a debit since takes nothing back"


def test_a_void_forgives_only_what_its_invoice_added() -> None:
    """A correction downwards inside the free tier is a zero line on an invoice (its quantity below
    nothing), and a month's total may be below nothing: voiding either forgives nothing of them."""
    november = {"2026-11": Billed("pro", 1, {"tokens": Decimal(500)})}
    december = close(DECEMBER, earlier={"2026-11": {"tokens": Decimal(300)}}, billed=november)
    assert december.invoice is not None
    assert [(line["type"], line.get("quantity"), line["amount"]) for line in december.invoice["lines"]] == [
        ("fee", None, 1000),
        ("adjustment", -200, 0),
    ]
    assert void_refusal(december.invoice, {**november, **december.billed}) is None
    assert void_forgiven(december.invoice, {**november, **december.billed}) == {}
    below = close(usage={"tokens": Decimal(-5)})
    assert below.invoice is not None and void_forgiven(below.invoice, below.billed) == {}


def test_the_printable_page_shows_what_a_void_forgave() -> None:
    statement = close(usage={"tokens": Decimal(5000)})
    assert statement.invoice is not None
    later = close(
        DECEMBER, earlier={"2026-11": {"tokens": Decimal(7000)}}, billed=void_forgiven(statement.invoice, statement.billed)
    )
    assert later.invoice is not None
    page = invoice_page.render(later.invoice, "finalized", seller="Omni", customer="acme")
    assert "0 → 7000 (5000 forgiven)" in page


def test_the_same_inputs_give_the_same_bytes() -> None:
    usage = {"tokens": Decimal("2501.5"), "images": Decimal(1)}
    first, second = close(usage=usage).invoice, close(usage=dict(reversed(list(usage.items())))).invoice
    assert first is not None and second is not None
    assert canonical(first) == canonical(second) and digest(first) == digest(second)
    assert b" " not in canonical(first) and canonical(first).startswith(b'{"currency":"USD"')


amounts = st.integers(min_value=0, max_value=50_000).map(Decimal)


@given(billed_then=amounts, late=st.integers(min_value=-5_000, max_value=50_000).map(Decimal))
def test_what_a_period_costs_in_all_does_not_depend_on_when_its_usage_arrived(billed_then: Decimal, late: Decimal) -> None:
    """The invoice's line plus the adjustment (or minus the credit) equals pricing the whole total at once."""
    total = max(Decimal(0), billed_then + late)
    first = close(usage={"tokens": billed_then})
    assert first.invoice is not None
    on_time = sum(line["amount"] for line in first.invoice["lines"] if line.get("meter") == "tokens")
    second = close(DECEMBER, earlier={"2026-11": {"tokens": total}}, billed=first.billed)
    debit = _lines(second.invoice, "adjustment")
    credit = _lines(second.credit_note, "adjustment")
    price = PRO.price_of("tokens")
    assert price is not None
    assert on_time + debit - credit == charge(price, total, 2).amount


def _lines(document: dict[str, Any] | None, kind: str) -> int:
    return 0 if document is None else sum(line["amount"] for line in document["lines"] if line["type"] == kind)
