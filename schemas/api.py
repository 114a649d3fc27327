"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from schemas.meters import Aggregation, MeterDefinition, WindowSize
from schemas.text import Text


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    plan: Text = Field(min_length=1, max_length=100)


class TenantCreated(BaseModel):
    id: str
    name: str
    plan: str
    api_key: str = Field(description="Shown once; only its hash is stored")
    key_id: str


class TenantPublic(BaseModel):
    id: str
    name: str
    plan: str
    created_at: str
    status: Literal["active", "suspended"] = Field(
        default="active", description="`suspended`: its consumes are refused (403 `tenant-suspended`) until it is resumed"
    )
    suspended_at: str | None = Field(default=None, description="When it was suspended; null while active")
    suspension_reason: str | None = Field(default=None, description="Why; null while active")


class TenantList(BaseModel):
    data: list[TenantPublic]
    next_after: str | None = None


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Text | None = Field(default=None, max_length=200)


class KeyIssued(BaseModel):
    key_id: str
    tenant_id: str
    api_key: str = Field(description="Shown once; only its hash is stored")


class KeyPublic(BaseModel):
    key_id: str
    label: str | None
    issued_at: str
    revoked_at: str | None


class KeyList(BaseModel):
    data: list[KeyPublic]
    next_after: str | None = Field(default=None, description="Pass as `after` for the next page; null on the last")


class EventResult(BaseModel):
    index: int
    id: str
    status: Literal["accepted", "duplicate"]


class IngestResult(BaseModel):
    accepted: int
    duplicates: int
    results: list[EventResult]


class MeterList(BaseModel):
    data: list[MeterDefinition]


class MeterRowPublic(BaseModel):
    window_start: datetime
    window_end: datetime
    value: Annotated[Decimal | int | None, WithJsonSchema({"type": ["number", "null"]})] = Field(
        description="Exact: written as a JSON number with every digit (read it as a decimal to keep them)"
    )
    subject: str | None
    group_by: dict[str, Any]


class MeterQueryResult(BaseModel):
    meter: str
    aggregation: Aggregation
    window_size: WindowSize | None
    window_time_zone: str = Field(
        default="UTC", description="The time zone whose local hours, days and months the windows follow"
    )
    from_: datetime | None = Field(alias="from")
    to: datetime | None
    data: list[MeterRowPublic]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None,
        description="Each reason a request is refused: `location` (where in the request, dotted: "
        "`body.entitlements.0.limit`, `path.meter`, `query.from`) and `reason`; for a batch of events, "
        "each bad event's `index` (and `id`) with its `reasons`.",
    )
