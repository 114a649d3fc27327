"""SLO definitions: which events an SLO counts, what makes one good, the objective and its window."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.meters import JsonPath
from schemas.quantities import JSON_INTEGERS
from schemas.text import Text

SLO_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"
JSON_PATH_PATTERN = r"^\$(\.[A-Za-z_][A-Za-z0-9_\-]*)+$"  # schemas.meters.JsonPath's


class Sli(StrEnum):
    AVAILABILITY = "availability"  # good unless the status is 500 or more
    LATENCY = "latency"  # good when the latency is at most threshold_ms


class SloWindow(StrEnum):
    D7 = "7d"
    D28 = "28d"
    D30 = "30d"

    @property
    def seconds(self) -> int:
        return int(self.value.removesuffix("d")) * 86400


# Text: a NUL in a control event would have the catalog fold dead-letter it (streams.projectors.decoded).
MatchValue = Annotated[
    Text | int | Annotated[float, Field(allow_inf_nan=False)] | bool | None, Field(description="Equal to this JSON value")
]

# The rules `_consistent` checks, told in JSON Schema too, so clients and fuzzers know them.
_SLI_RULES = {
    "allOf": [
        {
            "if": {"properties": {"sli": {"const": "availability"}}},
            "then": {
                "required": ["status_property"],
                "properties": {
                    "status_property": {"type": "string"},
                    "latency_property": {"type": "null"},
                    "threshold_ms": {"type": "null"},
                },
            },
        },
        {
            "if": {"properties": {"sli": {"const": "latency"}}},
            "then": {
                "required": ["latency_property", "threshold_ms"],
                "properties": {
                    "latency_property": {"type": "string"},
                    "threshold_ms": {"type": "number"},
                    "status_property": {"type": "null"},
                },
            },
        },
    ]
}


class SloBody(BaseModel):
    """An SLO as PUT by its owner: a tenant's covers its own events, the admin's every tenant's."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_SLI_RULES)

    event_type: Text = Field(min_length=1, max_length=256, description="CloudEvent `type` the SLO counts")
    match: dict[JsonPath, MatchValue] = Field(
        default_factory=dict,
        max_length=16,
        description='Equality filters on JSON paths, e.g. {"$.data.model": "large"}',
        json_schema_extra={"propertyNames": {"pattern": JSON_PATH_PATTERN}},
    )
    sli: Sli
    status_property: JsonPath | None = Field(default=None, description="availability: where the status is")
    latency_property: JsonPath | None = Field(default=None, description="latency: where the latency in ms is")
    # strict: a number, as the schema says (`true` and "200" were taken as 1 and 200)
    threshold_ms: float | None = Field(default=None, gt=0, le=1e12, strict=True, description="latency: good at most this")
    # At least a thousandth of a percent: below the floats' normal range (1e-320) the rules and the
    # metrics wrote the objective differently (0 against 1e-322).
    objective: float = Field(ge=0.001, lt=100, strict=True, description="Percent of good events, e.g. 99.9 (0.001 to below 100)")
    window: SloWindow
    description: Text | None = Field(default=None, max_length=1024)

    @field_validator("match", mode="after")
    @classmethod
    def _integers_events_hold(cls, match: dict[str, Any]) -> dict[str, Any]:
        # An event holds 64-bit integers at most (the log's encoder refuses others): a larger one
        # matches nothing, and an SLO's event carrying it stopped the outbox relay for everyone.
        for path, value in match.items():
            if isinstance(value, int) and not isinstance(value, bool) and value not in JSON_INTEGERS:
                raise ValueError(f"match {path}: {value} is past 64 bits; events hold integers from -2^63 to 2^63 - 1")
        return match

    @model_validator(mode="after")
    def _consistent(self) -> SloBody:
        if self.sli is Sli.AVAILABILITY:
            if self.status_property is None:
                raise ValueError("an availability SLI needs a status_property")
            if self.latency_property is not None or self.threshold_ms is not None:
                raise ValueError("an availability SLI takes no latency_property nor threshold_ms")
        else:
            if self.latency_property is None or self.threshold_ms is None:
                raise ValueError("a latency SLI needs a latency_property and a threshold_ms")
            if self.status_property is not None:
                raise ValueError("a latency SLI takes no status_property")
        return self

    def stored(self) -> dict[str, Any]:
        """As kept in events and views: JSON, without unset optional fields."""
        return self.model_dump(mode="json", exclude_none=True)


class Counts(BaseModel):
    events: float | None = Field(description="Events (the allowance may be fractional); null when the window has no data")
    share: float | None = Field(description="Share of the budget; null when the window has no data")


class ErrorBudget(BaseModel):
    total: Counts = Field(description="Bad events the objective allows over the window (share 1)")
    consumed: Counts
    remaining: Counts


class Alerts(BaseModel):
    page: str = Field(pattern="^(firing|ok)$")
    ticket: str = Field(pattern="^(firing|ok)$")


class SloPublic(BaseModel):
    name: str
    owner: str = Field(description="The tenant id, or `_platform` for an admin's SLO over every tenant")
    version: int
    updated_at: str
    definition: SloBody


class SloStatus(SloPublic):
    as_of: str = Field(description="The end (exclusive) of the windows below: the minute after now")
    good: int = Field(description="Good events over the SLO window")
    total: int = Field(description="Counted events over the SLO window")
    sli: float | None = Field(description="good / total over the window; null when no event matched")
    error_budget: ErrorBudget
    burn_rates: dict[str, float | None] = Field(description="Keyed 5m 30m 1h 2h 6h 1d 3d; null without data")
    alerts: Alerts


class SloList(BaseModel):
    data: list[SloPublic]


class HistoryWindow(StrEnum):
    """The window sizes of an SLO's history (a meter's MONTH is none: SLO windows are days)."""

    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"

    @property
    def seconds(self) -> int:
        return {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}[self.value]


class SloHistoryPoint(BaseModel):
    start: str
    end: str
    good: int
    total: int
    sli: float | None


class SloHistory(BaseModel):
    name: str
    window_size: str
    data: list[SloHistoryPoint]


class SloAlertNotification(BaseModel):
    """An SLO's page or ticket alert fired or resolved, at the end of the minute of event time whose
    windows first (or no longer) burned past the thresholds."""

    id: str
    type: Literal["omni.slo.alert_fired", "omni.slo.alert_resolved"]
    tenant_id: str = Field(description="The SLO's owner: the tenant, or `_platform`")
    slo: str
    version: int
    alert: Literal["page", "ticket"]
    burn_rates: dict[str, float | None] = Field(description="Burn rates over 5m..3d at that moment")
    occurred_at: str
