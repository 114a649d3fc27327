"""Every price model against totals computed by hand: on a tier's edge and one unit past it, in a
zero-decimal (JPY), a two-decimal (USD) and a three-decimal (KWD) currency, rounded half-even once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from projections.pricing import charge, to_minor
from schemas.billing import Billing, MeterPrice
from schemas.currencies import MINOR_UNITS

PRICE: TypeAdapter[MeterPrice] = TypeAdapter(MeterPrice)


def amount(price: dict[str, Any], quantity: str, currency: str) -> int:
    return charge(PRICE.validate_python({"meter": "m", **price}), Decimal(quantity), MINOR_UNITS[currency]).amount


def test_minor_units_come_from_the_currency() -> None:
    assert (MINOR_UNITS["JPY"], MINOR_UNITS["USD"], MINOR_UNITS["KWD"]) == (0, 2, 3)


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [("2.5", 0, 2), ("3.5", 0, 4), ("1.5", 0, 2), ("0.125", 2, 12), ("0.135", 2, 14), ("1.3125", 3, 1312), ("1.4375", 3, 1438)],
)
def test_one_rounding_half_even(value: str, digits: int, expected: int) -> None:
    assert to_minor(Decimal(value), digits) == expected


PER_UNIT = {"model": "per_unit", "unit_price": "0.01", "included": 100}


@pytest.mark.parametrize(
    ("quantity", "cents"), [("0", 0), ("100", 0), ("101", 1), ("1234", 1134), ("100.5", 0), ("150.5", 50), ("151.5", 52)]
)
def test_per_unit_usd_with_an_allowance(quantity: str, cents: int) -> None:
    # 100.5: 0.5 units x 0.01 = 0.5 cents -> 0; 150.5: 50.5 cents -> 50; 151.5: 51.5 cents -> 52.
    assert amount(PER_UNIT, quantity, "USD") == cents


@pytest.mark.parametrize(("quantity", "yen"), [("1", 0), ("3", 2), ("5", 2), ("7", 4)])
def test_per_unit_jpy_rounds_each_line_half_even(quantity: str, yen: int) -> None:
    # 0.5, 1.5, 2.5, 3.5 yen: no minor unit, so half-even to 0, 2, 2, 4.
    assert amount({"model": "per_unit", "unit_price": "0.5"}, quantity, "JPY") == yen


@pytest.mark.parametrize(("quantity", "fils"), [("1", 0), ("3", 2), ("2000", 1000)])
def test_per_unit_kwd_three_decimals(quantity: str, fils: int) -> None:
    # 0.0005, 0.0015, 1.0000 KWD: 0.5 fils -> 0, 1.5 fils -> 2, 1000 fils.
    assert amount({"model": "per_unit", "unit_price": "0.0005"}, quantity, "KWD") == fils


GRADUATED_USD = {
    "model": "graduated",
    "tiers": [{"up_to": 1000, "unit_price": "0"}, {"up_to": 5000, "unit_price": "0.002"}, {"up_to": None, "unit_price": "0.001"}],
}


@pytest.mark.parametrize(
    ("quantity", "cents"),
    [("1000", 0), ("1001", 0), ("5000", 800), ("5001", 800), ("6500", 950), ("6505", 950), ("6515", 952)],
)
def test_graduated_usd(quantity: str, cents: int) -> None:
    # 1001: 1 x 0.002 = 0.002 USD; 5000: 4000 x 0.002 = 8 USD; 5001: 8.001; 6500: 8 + 1.5 = 9.5;
    # 6505: 9.505 -> 950.5 cents -> 950 (even); 6515: 9.515 -> 951.5 -> 952 (even).
    assert amount(GRADUATED_USD, quantity, "USD") == cents


def test_a_graduated_tiers_flat_price_is_charged_once_the_quantity_enters_it() -> None:
    tiers = [{"up_to": 1000, "unit_price": "0"}, {"up_to": None, "unit_price": "0.002", "flat_price": "1.00"}]
    price = {"model": "graduated", "tiers": tiers}
    assert amount(price, "1000", "USD") == 0  # the edge: the second tier not reached
    assert amount(price, "1001", "USD") == 100  # 1.00 + 0.002 = 1.002 USD -> 100 cents


@pytest.mark.parametrize(("quantity", "fils"), [("10", 1250), ("11", 1312), ("13", 1438)])
def test_graduated_kwd(quantity: str, fils: int) -> None:
    # 10 x 0.125 = 1.25 KWD; 11: 1.25 + 0.0625 = 1.3125 -> 1312.5 fils -> 1312; 13: 1.4375 -> 1438.
    price = {"model": "graduated", "tiers": [{"up_to": 10, "unit_price": "0.125"}, {"up_to": None, "unit_price": "0.0625"}]}
    assert amount(price, quantity, "KWD") == fils


VOLUME_JPY = {
    "model": "volume",
    "tiers": [{"up_to": 100, "unit_price": "10"}, {"up_to": 1000, "unit_price": "8"}, {"up_to": None, "unit_price": "5"}],
}


@pytest.mark.parametrize(("quantity", "yen"), [("0", 0), ("100", 1000), ("101", 808), ("1000", 8000), ("1001", 5005)])
def test_volume_jpy_prices_every_unit_at_the_tier_the_whole_quantity_reaches(quantity: str, yen: int) -> None:
    assert amount(VOLUME_JPY, quantity, "JPY") == yen


def test_a_volume_tiers_flat_price() -> None:
    tiers = [{"up_to": 100, "unit_price": "10"}, {"up_to": None, "unit_price": "8", "flat_price": "500"}]
    assert amount({"model": "volume", "tiers": tiers}, "100", "JPY") == 1000
    assert amount({"model": "volume", "tiers": tiers}, "101", "JPY") == 1308  # 101 x 8 + 500


@pytest.mark.parametrize(("quantity", "fils"), [("5", 6172), ("6", 6600)])
def test_volume_kwd(quantity: str, fils: int) -> None:
    # 5 x 1.2345 = 6.1725 KWD -> 6172.5 fils -> 6172 (even); 6 x 1.1 = 6.6 KWD.
    price = {"model": "volume", "tiers": [{"up_to": 5, "unit_price": "1.2345"}, {"up_to": None, "unit_price": "1.1"}]}
    assert amount(price, quantity, "KWD") == fils


@pytest.mark.parametrize(("quantity", "cents"), [("0", 0), ("1", 500), ("100", 500), ("101", 1000), ("250", 1500)])
def test_package_usd_charges_started_packages(quantity: str, cents: int) -> None:
    assert amount({"model": "package", "package_size": 100, "package_price": "5.00"}, quantity, "USD") == cents


@pytest.mark.parametrize(("quantity", "cents"), [("100", 0), ("200", 500), ("201", 1000)])
def test_package_after_an_allowance(quantity: str, cents: int) -> None:
    price = {"model": "package", "package_size": 100, "package_price": "5.00", "included": 100}
    assert amount(price, quantity, "USD") == cents


@pytest.mark.parametrize(("quantity", "yen"), [("1000", 300), ("1001", 600)])
def test_package_jpy(quantity: str, yen: int) -> None:
    assert amount({"model": "package", "package_size": 1000, "package_price": "300"}, quantity, "JPY") == yen


@pytest.mark.parametrize(
    ("quantity", "cents", "applied"), [("0", 500, True), ("10", 500, True), ("500", 500, False), ("600", 600, False)]
)
def test_a_minimum_lifts_the_rounded_line(quantity: str, cents: int, applied: bool) -> None:
    price = PRICE.validate_python({"meter": "m", "model": "per_unit", "unit_price": "0.01", "minimum": "5.00"})
    found = charge(price, Decimal(quantity), 2)
    assert (found.amount, found.minimum_applied) == (cents, applied)


def test_the_readmes_worked_example() -> None:
    tokens = {"model": "graduated", "tiers": [{"up_to": 1000, "unit_price": "0"}, {"up_to": None, "unit_price": "0.002"}]}
    calls = {"model": "per_unit", "unit_price": "0.01", "included": 100}
    images = {"model": "package", "package_size": 100, "package_price": "5.00"}
    lines = [amount(tokens, "2501", "USD"), amount(calls, "1234", "USD"), amount(images, "250", "USD")]
    assert lines == [300, 1134, 1500]  # 3.002 USD -> 300.2 cents -> 300; 11.34; 3 packages
    assert 1000 + sum(lines) == 3934  # with the plan's 10.00 fee: USD 39.34


def test_a_negative_period_total_costs_nothing_but_its_minimum() -> None:
    assert amount(PER_UNIT, "-50", "USD") == 0


BAD_TIERS = [
    ([{"up_to": 100, "unit_price": "1"}], "gap"),
    ([{"up_to": None, "unit_price": "1"}, {"up_to": None, "unit_price": "2"}], "overlap"),
    ([{"up_to": 100, "unit_price": "1"}, {"up_to": 100, "unit_price": "2"}, {"up_to": None, "unit_price": "3"}], "overlap"),
    ([{"up_to": 200, "unit_price": "1"}, {"up_to": 100, "unit_price": "2"}, {"up_to": None, "unit_price": "3"}], "overlap"),
    ([{"up_to": 0, "unit_price": "1"}, {"up_to": None, "unit_price": "2"}], "more than zero"),
    ([], "at least"),
]


@pytest.mark.parametrize(("tiers", "says"), BAD_TIERS)
@pytest.mark.parametrize("model", ["graduated", "volume"])
def test_tiers_that_overlap_or_leave_gaps_are_refused(tiers: list[dict[str, Any]], says: str, model: str) -> None:
    with pytest.raises(ValidationError, match=says):
        PRICE.validate_python({"meter": "m", "model": model, "tiers": tiers})


@pytest.mark.parametrize(
    ("billing", "says"),
    [
        ({"currency": "XYZ", "prices": []}, "not an ISO 4217"),
        ({"currency": "usd"}, "pattern"),
        ({"currency": "XAU"}, "not an ISO 4217"),  # gold: no minor unit to round to
        ({"fee": "10.00"}, "needs a currency"),
        ({"currency": "JPY", "fee": "10.5"}, "more decimals than JPY"),
        ({"currency": "USD", "fee": "10.001"}, "more decimals than USD"),
        (
            {"currency": "USD", "prices": [{"meter": "m", "model": "package", "package_size": 10, "package_price": "0.001"}]},
            "package_price",
        ),
        ({"currency": "USD", "prices": [{"meter": "m", "model": "per_unit", "unit_price": 0.01}]}, "decimal string"),
        ({"currency": "USD", "prices": [{"meter": "m", "model": "per_unit", "unit_price": "-1"}]}, "decimal string"),
        ({"currency": "USD", "prices": [{"meter": "m", "model": "per_unit", "unit_price": "1"}] * 2}, "one price per meter"),
        ({"currency": "USD", "prices": [{"meter": "m", "model": "stairs"}]}, "model"),
    ],
)
def test_bad_billing_is_refused(billing: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Billing.model_validate(billing)


def test_kwd_takes_three_decimals_of_a_fee_and_unit_prices_take_more() -> None:
    body = {"currency": "KWD", "fee": "1.250", "prices": [{"meter": "m", "model": "per_unit", "unit_price": "0.0005"}]}
    assert Billing.model_validate(body).fee == "1.250"
