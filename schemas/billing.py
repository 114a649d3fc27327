"""Prices on plans, and invoices, as clients send and read them.

Money is exact: prices are decimal strings ("0.002"), never binary floats, and every amount on an
invoice is an integer number of the currency's minor units (schemas.currencies). Quantities are
the meters' own (JSON numbers, at most three decimals, as quotas take them).
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas.currencies import MINOR_UNITS
from schemas.quantities import QUANTITY_SCHEMA, SLUG_PATTERN, exact_quantity, quantity_json

PRICE_TEXT = re.compile(r"\d{1,9}(\.\d{1,12})?")  # below 10^9, at most 12 decimals: a token at 0.000002
PRICE_PATTERN = PRICE_TEXT.pattern
Place = tuple[str | int, ...]  # where in a plan's body a value is: ("prices", 0, "tiers", 1, "flat_price")


def price_text(value: Any, *, name: str) -> str:
    """A price: a decimal string (a JSON number would pass through a binary float), zero or more."""
    if not isinstance(value, str) or not PRICE_TEXT.fullmatch(value):
        raise ValueError(f'{name} must be a decimal string such as "0.002" (zero or more, below 10^9, 12 decimals at most)')
    return value


def decimals_of(text: str) -> int:
    return len(text.partition(".")[2])


Price = Annotated[str, Field(pattern=f"^{PRICE_PATTERN}$", examples=["0.002"])]
Quantity = Annotated[Decimal, WithJsonSchema(QUANTITY_SCHEMA)]
# A tier's end and a package's size: more than zero (zero is refused, as exact_quantity's `positive`).
PositiveQuantity = Annotated[
    Decimal,
    WithJsonSchema({**{k: v for k, v in QUANTITY_SCHEMA.items() if k != "minimum"}, "exclusiveMinimum": 0}),
]


class PriceModel(StrEnum):
    PER_UNIT = "per_unit"  # every billable unit at one price
    GRADUATED = "graduated"  # each unit at the price of the tier it falls in
    VOLUME = "volume"  # every unit at the price of the tier the whole quantity falls in
    PACKAGE = "package"  # per started package of N units


class Tier(BaseModel):
    """Units up to `up_to` (from the end of the tier before; null: no end) at `unit_price`, plus
    `flat_price` once when any unit falls in the tier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    up_to: PositiveQuantity | None = Field(
        default=None, description="The tier's last unit; absent or null for the last tier (and only it), which has no end"
    )
    unit_price: Price = "0"
    flat_price: Price | None = Field(default=None, description="Charged once when the quantity reaches the tier")

    @field_validator("up_to", mode="before")
    @classmethod
    def _up_to(cls, value: Any) -> Decimal | None:
        return None if value is None else exact_quantity(value, name="up_to", positive=True)

    @field_validator("unit_price", "flat_price", mode="before")
    @classmethod
    def _price(cls, value: Any) -> str | None:
        return None if value is None else price_text(value, name="a tier's price")


def _check_tiers(tiers: list[Tier]) -> list[Tier]:
    """Tiers follow each other without overlap or gap: each ends past the one before, and only the
    last is open-ended, so every quantity falls in exactly one tier."""
    if not tiers:
        raise ValueError("at least one tier")
    ends = [t.up_to for t in tiers]
    if ends[-1] is not None:
        raise ValueError(f"the last tier must have up_to null: quantities past {ends[-1]} would have no price (a gap)")
    if any(end is None for end in ends[:-1]):
        raise ValueError("only the last tier may have up_to null: the tiers after it would overlap it")
    bounded = [end for end in ends[:-1] if end is not None]
    for before, after in zip(bounded, bounded[1:], strict=False):
        if after <= before:
            raise ValueError(f"tiers overlap: up_to {after} does not end past the tier before it (up_to {before})")
    return tiers


class _PriceBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    meter: str = Field(pattern=SLUG_PATTERN, description="A SUM or COUNT meter's slug")
    included: Quantity = Field(
        default=Decimal(0),
        description="Units free each period, before any price applies",
        json_schema_extra={"default": 0},  # a number, as it is sent (the Decimal's own default would read "0")
    )
    minimum: Price | None = Field(default=None, description="The line's least amount each period, in the plan's currency")

    @field_validator("included", mode="before")
    @classmethod
    def _included(cls, value: Any) -> Decimal:
        return exact_quantity(value, name="included", positive=False)

    @field_validator("minimum", mode="before")
    @classmethod
    def _minimum(cls, value: Any) -> str | None:
        return None if value is None else price_text(value, name="minimum")

    def amounts(self) -> list[tuple[Place, str]]:
        """(its place in the price, decimal text) of every whole-currency amount in this price: each
        must fit the plan's currency (no fraction of its minor unit)."""
        return [(("minimum",), self.minimum)] if self.minimum is not None else []


class PerUnitPrice(_PriceBase):
    model: Literal[PriceModel.PER_UNIT] = PriceModel.PER_UNIT
    unit_price: Price

    @field_validator("unit_price", mode="before")
    @classmethod
    def _unit_price(cls, value: Any) -> str:
        return price_text(value, name="unit_price")


class GraduatedPrice(_PriceBase):
    model: Literal[PriceModel.GRADUATED] = PriceModel.GRADUATED
    tiers: list[Tier] = Field(min_length=1, max_length=50)

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: list[Tier]) -> list[Tier]:
        return _check_tiers(value)

    def amounts(self) -> list[tuple[Place, str]]:
        flat: list[tuple[Place, str]] = [
            (("tiers", i, "flat_price"), t.flat_price) for i, t in enumerate(self.tiers) if t.flat_price is not None
        ]
        return super().amounts() + flat


class VolumePrice(GraduatedPrice):
    model: Literal[PriceModel.VOLUME] = PriceModel.VOLUME  # type: ignore[assignment]


class PackagePrice(_PriceBase):
    model: Literal[PriceModel.PACKAGE] = PriceModel.PACKAGE
    package_size: PositiveQuantity = Field(description="Units per package; a started package is charged whole")
    package_price: Price

    @field_validator("package_size", mode="before")
    @classmethod
    def _package_size(cls, value: Any) -> Decimal:
        return exact_quantity(value, name="package_size", positive=True)

    @field_validator("package_price", mode="before")
    @classmethod
    def _package_price(cls, value: Any) -> str:
        return price_text(value, name="package_price")

    def amounts(self) -> list[tuple[Place, str]]:
        return [*super().amounts(), (("package_price",), self.package_price)]


MeterPrice = Annotated[PerUnitPrice | GraduatedPrice | VolumePrice | PackagePrice, Field(discriminator="model")]


def parse_price(stored: dict[str, Any]) -> MeterPrice:
    """A price as events and views keep it (`price_json`)."""
    body = {**stored}
    body["included"] = Decimal(str(body.get("included", "0")))
    if "package_size" in body:
        body["package_size"] = Decimal(str(body["package_size"]))
    if "tiers" in body:
        body["tiers"] = [{**t, "up_to": None if t["up_to"] is None else Decimal(str(t["up_to"]))} for t in body["tiers"]]
    model = body.get("model")
    kind: type[MeterPrice]
    match model:
        case PriceModel.PER_UNIT:
            kind = PerUnitPrice
        case PriceModel.GRADUATED:
            kind = GraduatedPrice
        case PriceModel.VOLUME:
            kind = VolumePrice
        case PriceModel.PACKAGE:
            kind = PackagePrice
        case _:
            raise ValueError(f"unknown price model {model!r}")
    return kind.model_validate(body)


def price_json(price: MeterPrice) -> dict[str, Any]:
    """As stored in events and views, and as read back by clients: quantities as exact decimal text
    inside events (`parse_price` reads them), prices as the strings they were given."""
    body = price.model_dump(mode="json", exclude_none=True)
    body["included"] = str(price.included)
    if isinstance(price, PackagePrice):
        body["package_size"] = str(price.package_size)
    if isinstance(price, GraduatedPrice):
        body["tiers"] = [
            {**tier, "up_to": None if t.up_to is None else str(t.up_to)}
            for tier, t in zip(body["tiers"], price.tiers, strict=True)
        ]
    return body


class Billing(BaseModel):
    """What a plan charges: its currency, a flat fee per period, and prices per meter."""

    model_config = ConfigDict(extra="forbid")

    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$", description="ISO 4217, such as USD, JPY or KWD")
    fee: Price | None = Field(default=None, description="A flat fee each period, in the currency")
    prices: list[MeterPrice] = Field(default_factory=list, max_length=100)

    @field_validator("fee", mode="before")
    @classmethod
    def _fee(cls, value: Any) -> str | None:
        return None if value is None else price_text(value, name="fee")

    @model_validator(mode="after")
    def _in_the_currency(self) -> Billing:
        """The rules across fields, each refusal at the place in the body it is about."""
        if self.currency is None:
            if self.fee is not None or self.prices:
                raise _refused([(("currency",), None, "a plan with a fee or prices needs a currency")])
            return self
        if self.currency not in MINOR_UNITS:
            reason = f"currency {self.currency!r} is not an ISO 4217 currency with minor units"
            raise _refused([(("currency",), self.currency, reason)])
        digits = MINOR_UNITS[self.currency]
        amounts: list[tuple[Place, str]] = [(("fee",), self.fee)] if self.fee is not None else []
        for index, price in enumerate(self.prices):
            amounts += [(("prices", index, *place), text) for place, text in price.amounts()]
        refused: list[tuple[Place, Any, str]] = [
            (place, text, f"{text!r} has more decimals than {self.currency} has minor units ({digits})")
            for place, text in amounts
            if decimals_of(text) > digits
        ]
        seen: set[str] = set()
        for index, price in enumerate(self.prices):
            if price.meter in seen:
                refused.append((("prices", index, "meter"), price.meter, f"one price per meter: {price.meter} appears before"))
            seen.add(price.meter)
        if refused:
            raise _refused(refused)
        return self


def _refused(refusals: list[tuple[Place, Any, str]]) -> ValidationError:
    """A validation error naming each place it refuses (a model validator's own errors would all be
    at the model: `body`, not `body.prices.0.minimum`)."""
    return ValidationError.from_exception_data(
        "Billing",
        [
            InitErrorDetails(type=PydanticCustomError("plan_rule", "{reason}", {"reason": reason}), loc=place, input=value)
            for place, value, reason in refusals
        ],
    )


def billing_json(billing: Billing) -> dict[str, Any]:
    """As stored with a plan (absent keys: a plan that charges nothing)."""
    if billing.currency is None:
        return {}
    body: dict[str, Any] = {"currency": billing.currency, "prices": [price_json(p) for p in billing.prices]}
    if billing.fee is not None:
        body["fee"] = billing.fee
    return body


def parse_billing(stored: dict[str, Any]) -> Billing:
    return Billing(
        currency=stored.get("currency"),
        fee=stored.get("fee"),
        prices=[parse_price(p) for p in stored.get("prices", [])],
    )


def price_public(price: MeterPrice) -> dict[str, Any]:
    """A price as clients read it back: as they PUT it, quantities as JSON numbers."""
    body = price.model_dump(mode="json", exclude_none=True)
    body["included"] = quantity_json(price.included)
    if isinstance(price, PackagePrice):
        body["package_size"] = quantity_json(price.package_size)
    if isinstance(price, GraduatedPrice):
        for tier, parsed in zip(body["tiers"], price.tiers, strict=True):
            tier["up_to"] = None if parsed.up_to is None else quantity_json(parsed.up_to)
    return body


# The lines of an invoice, as the OpenAPI document describes them (api/openapi.py). An invoice is
# returned as the projection made and digested it (projections.invoices), never re-validated: these
# models only document it, and the tests check real invoices of every kind against the document.
LINE_QUANTITY_SCHEMA: dict[str, Any] = {
    "description": "A quantity, exact: a JSON number where a double holds it exactly, else its decimal text "
    "(a meter's total may pass 64 bits)",
    "anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$"}],
}
LineQuantity = Annotated[Decimal, WithJsonSchema(LINE_QUANTITY_SCHEMA)]


def _not_null(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # left out when absent, never null


class FeeLine(BaseModel):
    """The plan's flat fee for the period."""

    type: Literal["fee"]
    plan: str = Field(description="The plan's slug")
    amount: int = Field(description="Minor units")


class TierLine(BaseModel):
    """What one tier of a graduated or volume price charged."""

    tier: int = Field(description="1 for the first tier")
    up_to: LineQuantity | None = Field(description="The tier's end; null: no end")
    quantity: LineQuantity = Field(description="The billable units this tier priced")
    unit_price: str
    flat_price: str | None
    amount: str = Field(description="Exact, in whole currency units (decimal text), before the line is rounded to minor units")


class UsageLine(BaseModel):
    """One meter's usage in the period, priced by the plan's price for it."""

    type: Literal["usage"]
    meter: str
    model: PriceModel
    quantity: LineQuantity = Field(description="The period's usage")
    included: LineQuantity = Field(description="Units the plan includes free")
    billable: LineQuantity = Field(description="Usage past the included units")
    amount: int = Field(description="Minor units: the exact amount rounded half-even once, lifted to the price's minimum")
    tiers: list[TierLine] | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_not_null, description="graduated and volume: each tier that priced some"
    )
    packages: int | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_not_null, description="package: packages started"
    )
    package_price: str | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_not_null, description="package: each package's"
    )
    unit_price: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_not_null, description="per_unit: each unit's")
    minimum_applied: bool | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_not_null, description="true when the price's minimum lifted the amount"
    )


class AdjustmentLine(BaseModel):
    """Usage of an earlier, invoiced month corrected since: billed now (upwards, on an invoice) or
    credited (downwards, on a credit note)."""

    type: Literal["adjustment"]
    meter: str
    period: str = Field(description="The corrected month, YYYY-MM")
    quantity: LineQuantity = Field(
        description="corrected_quantity less billed_quantity (less forgiven_quantity): negative when credited"
    )
    billed_quantity: LineQuantity = Field(description="What the month's documents billed so far")
    corrected_quantity: LineQuantity = Field(description="The month's usage now")
    forgiven_quantity: LineQuantity | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_not_null, description="What voided invoices of the month forgave"
    )
    amount: int = Field(description="Minor units, never negative: the document's kind says which way")


class VoidLine(BaseModel):
    """A credit note's one line when an invoice is voided: the invoice's whole total."""

    type: Literal["void"]
    invoice: str = Field(description="The voided invoice's id")
    number: str | None = Field(description="The voided invoice's number")
    amount: int = Field(description="Minor units")


InvoiceLine = Annotated[FeeLine | UsageLine | AdjustmentLine | VoidLine, Field(discriminator="type")]


def invoice_line_schemas(ref_template: str) -> dict[str, dict[str, Any]]:
    """`InvoiceLine` (one of the kinds, by `type`) and each kind's schema, named, for a document's components."""
    schema = TypeAdapter(InvoiceLine).json_schema(ref_template=ref_template)
    return {**schema.pop("$defs"), "InvoiceLine": schema}


class InvoicePublic(BaseModel):
    """An invoice or a credit note: amounts in integer minor units (`"total": 1930` is USD 19.30)."""

    id: str
    kind: Literal["invoice", "credit_note"]
    number: str | None = Field(description="Gapless per tenant and kind; null on a draft")
    tenant_id: str
    period: str = Field(description="The billing month, YYYY-MM (UTC, by event time)")
    period_start: str
    period_end: str
    currency: str
    minor_units: int = Field(description="The currency's digits after the point: USD 2, JPY 0, KWD 3")
    status: Literal["draft", "finalized", "paid", "void", "uncollectible"]
    plan: dict[str, Any] | None = Field(description="The plan version that priced it: {slug, version}")
    lines: Annotated[
        list[dict[str, Any]], WithJsonSchema({"type": "array", "items": {"$ref": "#/components/schemas/InvoiceLine"}})
    ] = Field(description="fee, usage (with tiers applied) and adjustment lines; a credit note's: adjustment or void lines")
    subtotal: int
    total: int
    issued_at: str | None = Field(description="When it was finalized; null on a draft")
    reason: str | None = None
    digest: str | None = Field(default=None, description="SHA-256 of the finalized document's canonical JSON")


class UpcomingInvoice(InvoicePublic):
    """This month's invoice as the next close would issue it, with the credit note issued beside it."""

    credit_note: InvoicePublic | None = Field(
        default=None,
        description="The credit note the next close issues with it (usage of an invoiced month corrected "
        "downwards), as a draft; null when there is none",
    )


class InvoiceList(BaseModel):
    data: list[InvoicePublic]
    next_before: str | None = None


class HeldTenant(BaseModel):
    tenant_id: str
    reason: str = Field(description="Why it was not invoiced: its amount would pass what an invoice holds (2^63 - 1 minor units)")


class PeriodClose(BaseModel):
    period: str
    closed_at: str
    invoices: int = Field(description="Invoices finalized")
    credit_notes: int = Field(description="Credit notes issued for usage corrected after its period was invoiced")
    totals: dict[str, int] = Field(description="Invoiced per currency, in minor units")
    held: list[HeldTenant] = Field(
        default_factory=list,
        description="Tenants not invoiced for the period (the others are): correct their usage, then "
        "close the period again to invoice them",
    )


class ClosedPeriodPublic(BaseModel):
    period: str
    closed_at: str
    documents: int = Field(description="Invoices and credit notes issued for the period")
    held: list[HeldTenant] = Field(description="Tenants the period still holds: not invoiced for it")


class ClosedPeriodList(BaseModel):
    data: list[ClosedPeriodPublic]
    next_before: str | None = Field(description="Pass as `before` for the next page; null on the last")


class StatusChange(BaseModel):
    """Why an admin voids an invoice, or marks it paid or uncollectible (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=500)]


class InvoiceChanged(BaseModel):
    invoice: InvoicePublic
    credit_note: InvoicePublic | None = Field(default=None, description="Issued when voided: the invoice's total back")
