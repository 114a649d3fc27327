"""What an invoice line shows of a price, whole: the breakdown a customer reads (tiers with their
edges and prices, packages, the unit price), not only the amount; and the one rounding, whatever
the ambient decimal context. Each test was written for a mutant `make mutation` found alive."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from pydantic import TypeAdapter

from projections.invoices import usage_line
from projections.pricing import Charge, TierCharge, charge, to_minor
from schemas.billing import MeterPrice, PriceModel

PRICE: TypeAdapter[MeterPrice] = TypeAdapter(MeterPrice)


def priced(price: dict[str, Any], quantity: str, digits: int = 2) -> Charge:
    return charge(PRICE.validate_python({"meter": "m", **price}), Decimal(quantity), digits)


def test_a_per_unit_line_has_its_unit_price_and_no_tiers_or_packages() -> None:
    found = priced({"model": "per_unit", "unit_price": "0.01", "included": 100}, "1234")
    assert found == Charge(
        meter="m", model=PriceModel.PER_UNIT, quantity=Decimal(1234), included=Decimal(100), billable=Decimal(1134),
        tiers=(), packages=None, unit_price="0.01", exact=Decimal("11.34"), amount=1134, minimum_applied=False,
    )  # fmt: skip
    assert usage_line(found) == {
        "type": "usage", "meter": "m", "model": "per_unit", "quantity": 1234, "included": 100, "billable": 1134,
        "amount": 1134, "unit_price": "0.01",
    }  # fmt: skip


def test_a_package_line_has_its_packages_and_their_price() -> None:
    found = priced({"model": "package", "package_size": 100, "package_price": "5.00"}, "250")
    assert found == Charge(
        meter="m", model=PriceModel.PACKAGE, quantity=Decimal(250), included=Decimal(0), billable=Decimal(250),
        tiers=(), packages=3, unit_price="5.00", exact=Decimal("15.00"), amount=1500, minimum_applied=False,
    )  # fmt: skip
    assert usage_line(found) == {
        "type": "usage", "meter": "m", "model": "package", "quantity": 250, "included": 0, "billable": 250,
        "amount": 1500, "packages": 3, "package_price": "5.00",
    }  # fmt: skip


GRADUATED = {
    "model": "graduated",
    "tiers": [
        {"up_to": 1000, "unit_price": "0"},
        {"up_to": 5000, "unit_price": "0.002", "flat_price": "1.00"},
        {"up_to": None, "unit_price": "0.001", "flat_price": "2.00"},
    ],
}


def test_a_graduated_line_shows_each_tier_it_reached_with_its_edge_and_prices() -> None:
    found = priced(GRADUATED, "6500")
    assert found.tiers == (
        TierCharge(0, Decimal(1000), Decimal(1000), "0", None, Decimal(0)),
        TierCharge(1, Decimal(5000), Decimal(4000), "0.002", "1.00", Decimal("9.000")),
        TierCharge(2, None, Decimal(1500), "0.001", "2.00", Decimal("3.500")),
    )
    assert (found.packages, found.unit_price, found.exact, found.amount) == (None, None, Decimal("12.5"), 1250)
    line = usage_line(found)
    assert "unit_price" not in line and "packages" not in line
    assert line["tiers"] == [
        {"tier": 1, "up_to": 1000, "quantity": 1000, "unit_price": "0", "flat_price": None, "amount": "0"},
        {"tier": 2, "up_to": 5000, "quantity": 4000, "unit_price": "0.002", "flat_price": "1.00", "amount": "9"},
        {"tier": 3, "up_to": None, "quantity": 1500, "unit_price": "0.001", "flat_price": "2.00", "amount": "3.5"},
    ]


VOLUME = {
    "model": "volume",
    "tiers": [{"up_to": 100, "unit_price": "10", "flat_price": "50"}, {"up_to": None, "unit_price": "8", "flat_price": "500"}],
}


def test_a_volume_line_shows_the_one_tier_the_whole_quantity_fell_in() -> None:
    first = priced(VOLUME, "100", digits=0)
    assert first.tiers == (TierCharge(0, Decimal(100), Decimal(100), "10", "50", Decimal(1050)),)
    last = priced(VOLUME, "101", digits=0)
    assert last.tiers == (TierCharge(1, None, Decimal(101), "8", "500", Decimal(1308)),)
    assert (last.packages, last.unit_price, last.exact, last.amount) == (None, None, Decimal(1308), 1308)
    assert usage_line(last)["tiers"] == [
        {"tier": 2, "up_to": None, "quantity": 101, "unit_price": "8", "flat_price": "500", "amount": "1308"}
    ]


def test_a_volume_price_charges_one_unit_and_no_flat_price_for_no_usage() -> None:
    one = priced(VOLUME, "1", digits=0)
    assert (one.tiers, one.amount) == ((TierCharge(0, Decimal(100), Decimal(1), "10", "50", Decimal(60)),), 60)
    none = priced(VOLUME, "0", digits=0)
    assert (none.tiers, none.exact, none.amount) == ((), Decimal(0), 0)
    assert "tiers" not in usage_line(none)


def test_the_rounding_is_half_even_whatever_the_decimal_context() -> None:
    for rounding in (ROUND_HALF_UP, ROUND_CEILING):
        with localcontext() as ambient:
            ambient.rounding = rounding
            assert [to_minor(Decimal(v), 0) for v in ("2.5", "3.5", "-2.5")] == [2, 4, -2]
            assert to_minor(Decimal("0.125"), 2) == 12


def test_a_tier_amount_is_written_without_an_exponent() -> None:
    tiers = [{"up_to": 10, "unit_price": "1.000"}, {"up_to": None, "unit_price": "0.5"}]
    found = priced({"model": "graduated", "tiers": tiers}, "40")
    assert [t["amount"] for t in usage_line(found)["tiers"]] == ["10", "15"]  # 10.000 and 15.0, not 1E+1
