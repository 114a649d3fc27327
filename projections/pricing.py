"""What a quantity of a meter costs under a price: pure, exact, rounded once.

Every step is exact decimal arithmetic; a line's amount is rounded to the currency's minor units
half-even once, at the end (README, "Invoices": the rule, with a worked example). The included
allowance comes off the quantity first; a minimum lifts the rounded amount.

- per_unit: billable units x unit price.
- graduated: each unit at its own tier's price; a tier's flat price once when any unit falls in it.
- volume: every billable unit at the price of the tier the whole billable quantity falls in, plus
  that tier's flat price.
- package: started packages of `package_size` units (rounded up) x package price.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, localcontext

from projections.meter_state import EXACT
from schemas.billing import GraduatedPrice, MeterPrice, PackagePrice, PerUnitPrice, PriceModel

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class TierCharge:
    """How much of the billable quantity one tier priced, and at what."""

    index: int
    up_to: Decimal | None
    quantity: Decimal
    unit_price: str
    flat_price: str | None
    amount: Decimal  # exact, in whole currency units


@dataclass(frozen=True, slots=True)
class Charge:
    """One meter's line before it goes on an invoice."""

    meter: str
    model: PriceModel
    quantity: Decimal  # the period's usage
    included: Decimal
    billable: Decimal  # usage past the included allowance (zero or more)
    tiers: tuple[TierCharge, ...]
    packages: int | None
    unit_price: str | None  # per_unit: each unit's; package: each package's
    exact: Decimal  # the unrounded amount, in whole currency units
    amount: int  # minor units: `exact` rounded half-even once, lifted to the minimum
    minimum_applied: bool


def to_minor(amount: Decimal, digits: int) -> int:
    """Whole currency units to minor units, rounded half-even: the one rounding of a line."""
    return int(EXACT.multiply(amount, Decimal(10) ** digits).quantize(Decimal(1), rounding=ROUND_HALF_EVEN, context=EXACT))


def charge(price: MeterPrice, quantity: Decimal, digits: int, *, minimum: bool = True) -> Charge:
    """The line for `quantity` of the price's meter, in a currency with `digits` minor units.
    `minimum` False: the price's minimum does not apply (a month the tenant did not exist in).
    Exact in EXACT's 120 digits (a meter's total may reach 10^38 with 18 decimal places: Python's
    default 28 digits rounded such a quantity, and raised on quantizing an amount past 10^28)."""
    with localcontext(EXACT):
        return _charge(price, quantity, digits, minimum=minimum)


def _charge(price: MeterPrice, quantity: Decimal, digits: int, *, minimum: bool) -> Charge:
    billable = max(ZERO, quantity - price.included)
    tiers: tuple[TierCharge, ...] = ()
    packages: int | None = None
    unit_price: str | None = None
    if isinstance(price, PerUnitPrice):
        unit_price = price.unit_price
        exact = billable * Decimal(unit_price)
    elif isinstance(price, PackagePrice):
        packages = int((billable / price.package_size).to_integral_value(rounding=ROUND_CEILING))
        unit_price = price.package_price
        exact = packages * Decimal(unit_price)
    elif isinstance(price, GraduatedPrice):
        tiers = _volume(price, billable) if price.model is PriceModel.VOLUME else _graduated(price, billable)
        exact = sum((t.amount for t in tiers), ZERO)
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"no pricing for {price!r}")
    rounded = to_minor(exact, digits)
    least = to_minor(Decimal(price.minimum), digits) if minimum and price.minimum is not None else 0
    return Charge(
        meter=price.meter,
        model=price.model,
        quantity=quantity,
        included=price.included,
        billable=billable,
        tiers=tiers,
        packages=packages,
        unit_price=unit_price,
        exact=exact,
        amount=max(rounded, least),
        minimum_applied=least > rounded,
    )


def _tier_amount(quantity: Decimal, unit_price: str, flat_price: str | None) -> Decimal:
    return quantity * Decimal(unit_price) + (Decimal(flat_price) if flat_price is not None else ZERO)


def _graduated(price: GraduatedPrice, billable: Decimal) -> tuple[TierCharge, ...]:
    found: list[TierCharge] = []
    lower = ZERO
    for index, tier in enumerate(price.tiers):
        upper = billable if tier.up_to is None else min(billable, tier.up_to)
        within = upper - lower
        if within <= 0:
            break
        found.append(
            TierCharge(
                index,
                tier.up_to,
                within,
                tier.unit_price,
                tier.flat_price,
                _tier_amount(within, tier.unit_price, tier.flat_price),
            )
        )
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(found)


def _volume(price: GraduatedPrice, billable: Decimal) -> tuple[TierCharge, ...]:
    if billable <= 0:
        return ()
    for index, tier in enumerate(price.tiers):
        if tier.up_to is None or billable <= tier.up_to:
            amount = _tier_amount(billable, tier.unit_price, tier.flat_price)
            return (TierCharge(index, tier.up_to, billable, tier.unit_price, tier.flat_price, amount),)
    raise AssertionError("the last tier has no end")  # pragma: no cover - schemas.billing checks it
