"""Plans and quotas as clients send and read them: entitlements per meter, overrides, consume calls."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from schemas.api import Problem
from schemas.billing import Billing, parse_billing, price_public
from schemas.gdpr import BreachOverdueNotification
from schemas.quantities import QUANTITY_SCHEMA, SLUG_PATTERN, exact_quantity, floats_of_decimals, quantity_json, whole_as_int
from schemas.slos import SloAlertNotification
from schemas.suspensions import TenantStatusNotification
from schemas.text import Text


class Period(StrEnum):
    DAY = "DAY"
    MONTH = "MONTH"


class Enforcement(StrEnum):
    HARD = "hard"  # consume refuses what would pass the limit
    SOFT = "soft"  # consume never refuses; crossing thresholds only notifies


def _distinct(value: list[int]) -> list[int]:
    if len(set(value)) != len(value):
        raise ValueError("thresholds must be distinct")
    return sorted(value)


# Whole numbers (`80` or `80.0`): `true` or "80" is refused, not taken for a percentage.
Threshold = Annotated[int, Field(ge=1, le=1000, strict=True), BeforeValidator(whole_as_int)]
Thresholds = Annotated[list[Threshold], AfterValidator(_distinct)]

Limit = Annotated[Decimal, WithJsonSchema(QUANTITY_SCHEMA)]


class Entitlement(BaseModel):
    """How much of one meter a plan allows per period, and what happens at the limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    meter: str = Field(pattern=SLUG_PATTERN, description="A SUM or COUNT meter's slug")
    limit: Limit = Field(description="Units of the meter per period (zero allows nothing)")
    period: Period = Field(description="Calendar day or month, UTC, by event time")
    enforcement: Enforcement = Enforcement.HARD
    thresholds: Thresholds = Field(
        default_factory=lambda: [80, 100],
        max_length=10,
        description="Percentages of the limit; crossing each is notified once per period",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Decimal:
        return exact_quantity(value, name="limit", positive=False)

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> Entitlement:
        """As events and views keep it (commands.plans.entitlement_json): the limit as decimal text."""
        return cls.model_validate({**stored, "limit": Decimal(str(stored["limit"]))})

    def public(self) -> dict[str, Any]:
        body = self.model_dump(mode="json")
        body["limit"] = quantity_json(self.limit)
        return body


# The README's worked example (and the OpenAPI document's): USD 39.34 for 2,501 tokens, 1,234 calls
# and 250 images in a month.
EXAMPLE_PLAN: dict[str, Any] = {
    "name": "Pro",
    "currency": "USD",
    "fee": "10.00",
    "entitlements": [{"meter": "tokens", "limit": 1_000_000, "period": "MONTH", "enforcement": "soft", "thresholds": [80, 100]}],
    "prices": [
        {
            "meter": "tokens",
            "model": "graduated",
            "tiers": [{"up_to": 1000, "unit_price": "0"}, {"up_to": None, "unit_price": "0.002"}],
        },
        {"meter": "calls", "model": "per_unit", "unit_price": "0.01", "included": 100},
        {"meter": "images", "model": "package", "package_size": 100, "package_price": "5.00"},
    ],
}


class PlanBody(Billing):
    """A plan as PUT by the admin: its entitlements (quotas) and what it charges (invoices)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_PLAN]})

    name: Text | None = Field(default=None, max_length=200)
    entitlements: list[Entitlement] = Field(default_factory=list, max_length=100)

    @field_validator("entitlements")
    @classmethod
    def _one_per_meter(cls, value: list[Entitlement]) -> list[Entitlement]:
        meters = [e.meter for e in value]
        repeated = sorted({m for m in meters if meters.count(m) > 1})
        if repeated:
            raise ValueError(f"one entitlement per meter: {', '.join(repeated)} appear more than once")
        return value


class PlanPublic(BaseModel):
    slug: str
    version: int = Field(description="1 when published, one more at each change")
    name: str | None
    entitlements: list[dict[str, Any]]
    currency: str | None = Field(default=None, description="ISO 4217; null: the plan charges nothing")
    fee: str | None = Field(default=None, description="A flat fee each period")
    prices: list[dict[str, Any]] = Field(default_factory=list, description="Per meter, as PUT")
    updated_at: str

    @classmethod
    def of(
        cls, slug: str, version: int, name: str | None, entitlements: list[Entitlement], billing: dict[str, Any], at: str
    ) -> PlanPublic:
        """`billing` as stored (schemas.billing.billing_json)."""
        parsed = parse_billing(billing)
        return cls(
            slug=slug,
            version=version,
            name=name,
            entitlements=[e.public() for e in entitlements],
            currency=parsed.currency,
            fee=parsed.fee,
            prices=[price_public(p) for p in parsed.prices],
            updated_at=at,
        )


class PlanList(BaseModel):
    data: list[PlanPublic]


class PlanAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str = Field(pattern=SLUG_PATTERN)


class QuotaOverrideBody(BaseModel):
    """One tenant's own entitlement on one meter, in place of its plan's."""

    model_config = ConfigDict(extra="forbid")

    limit: Limit
    period: Period
    enforcement: Enforcement = Enforcement.HARD
    thresholds: Thresholds = Field(default_factory=lambda: [80, 100], max_length=10, json_schema_extra={"uniqueItems": True})

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Decimal:
        return exact_quantity(value, name="limit", positive=False)

    def entitlement(self, meter: str) -> Entitlement:
        return Entitlement(meter=meter, **self.model_dump())


class ConsumeBody(BaseModel):
    """The gateway's check-and-record before it serves a request."""

    model_config = ConfigDict(extra="forbid")

    amount: Annotated[Decimal, WithJsonSchema({**QUANTITY_SCHEMA, "exclusiveMinimum": 0})]
    subject: Text | None = Field(default=None, min_length=1, max_length=256)
    idempotency_key: Text = Field(
        min_length=1, max_length=200, description="The usage event's id: a retry with it returns the first answer"
    )
    data: dict[str, Any] | None = Field(default=None, description="Merged into the usage event's data")

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> Decimal:
        return exact_quantity(value, name="amount", positive=True)

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, value: Any) -> Any:
        return floats_of_decimals(value)  # read exactly with the amount (api/exact_json.py); kept as JSON reads it


class QuotaPublic(BaseModel):
    meter: str
    limit: int | float | str
    used: int | float | str
    remaining: int | float | str
    has_access: bool = Field(
        description="Whether a consume would be taken now: a hard limit with something remaining, or a soft limit (never refuses)"
    )
    overage: int | float | str = Field(description="Usage past the limit (facts are never refused), 0 within it")
    period: Period
    period_start: str
    period_end: str
    enforcement: Enforcement
    thresholds: list[int]
    source: str = Field(description="`plan` or `override`")
    plan: str | None


class QuotaList(BaseModel):
    data: list[QuotaPublic]


class ConsumeResult(BaseModel):
    used: int | float | str = Field(description="Usage in the quota's period, this consume included")
    remaining: int | float | str | None = Field(description="Left before the limit (null: no quota on this meter)")
    limit: int | float | str | None = Field(description="The limit in effect (null: no quota on this meter)")
    period_end: str


class ConsumeForbidden(Problem):
    """Consume's 403: the tenant is suspended (`type` .../tenant-suspended, with `suspended_at` and
    `reason`), or the key is the admin's (consume is a tenant's)."""

    suspended_at: str | None = Field(default=None, description="tenant-suspended: when (RFC 3339, UTC)")
    reason: str | None = Field(default=None, description="tenant-suspended: why, as the admin said")


class QuotaExceeded(Problem):
    """Consume's 429: a hard limit refuses the amount (`type` .../quota-exceeded), with `Retry-After`."""

    meter: str = Field(description="The meter consumed")
    limit: int | float | str = Field(description="The limit in effect")
    used: int | float | str = Field(description="Usage in the period, without the refused amount")
    period: str = Field(description="The quota's period: `2026-12-04` (a day) or `2026-12` (a month), UTC")
    period_end: str = Field(description="When the period ends (RFC 3339, UTC); `Retry-After` counts the seconds to it")


class NotificationPublic(BaseModel):
    """A quota's threshold reached in a period."""

    id: str
    type: Literal["omni.quota.threshold_crossed"]
    tenant_id: str
    meter: str
    period: str
    threshold: int
    limit: int | float | str
    used: int | float | str
    occurred_at: str


class NotificationList(BaseModel):
    data: list[
        Annotated[
            NotificationPublic | SloAlertNotification | BreachOverdueNotification | TenantStatusNotification,
            Field(discriminator="type"),
        ]
    ]
    next_before: str | None = None
