"""GDPR contracts: data classes (which paths of an event type are personal), requests, the legal
deadline, and the sealed form a personal value takes on the log.

A personal value is replaced at admission by a *sealed value*, a JSON object:

    {"omni_sealed": 1, "ps": "ps1_<pseudonym>"}

and the first sealed value of an event also carries the event's ciphertext:

    {"omni_sealed": 1, "ps": "ps1_...", "kid": "<data key id>", "ct": "<base64 of nonce || ciphertext || tag>"}

`ct` is AES-256-GCM under the person's data key (12-byte random nonce first, 16-byte tag last) of
the JSON object mapping each sealed path to its value ({"$.data.email": "...", ...}), with the JSON
array [tenant id, person] as associated data; `ps` is the person's pseudonym of that value, which
meters count and group by: a 128-bit MAC of its JSON text under a key derived from the same data
key, in hex, by the key's scheme (stores.data_keys): "ps2_" and keyed BLAKE2b for keys made since
schemes were recorded, "ps1_" and HMAC-SHA256 (its first 128 bits) for keys made before, which keep
it for life. Both are useless once the data key is erased.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from schemas.cloudevents import SUBJECT_MAX_LENGTH, Rfc3339Time
from schemas.meters import Aggregation, JsonPath, MeterDefinition, path_parts
from schemas.quantities import whole_as_int
from schemas.text import Text

SEALED = "omni_sealed"  # the marker member of a sealed value; its version is the value (1)
SEALED_VERSION = 1
PSEUDONYM = "ps"
PSEUDONYM_PREFIX = "ps1_"  # HMAC-SHA256, keys made before the key store recorded schemes
PSEUDONYM_PREFIX_BLAKE2B = "ps2_"  # keyed BLAKE2b, keys made since
DEFAULT_SUBJECT_PROPERTY = "$.subject"


def pseudonym_of(value: Any) -> str | None:
    """The pseudonym a sealed value carries, or None when `value` is not one (cheap: one type test)."""
    if type(value) is dict and value.get(SEALED) == SEALED_VERSION:
        found = value.get(PSEUDONYM)
        return found if type(found) is str else None
    return None


class RequestKind(StrEnum):
    ACCESS = "access"
    PORTABILITY = "portability"
    ERASURE = "erasure"
    RECTIFICATION = "rectification"


class RequestStatus(StrEnum):
    RECEIVED = "received"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def legal_deadline(received: datetime) -> datetime:
    """One month from receipt (GDPR Art. 12(3)): the same day of the next month at the same time,
    or that month's last day when it has no such day (Jan 31 -> Feb 28, or 29 in a leap year)."""
    year, month = (received.year + 1, 1) if received.month == 12 else (received.year, received.month + 1)
    day = min(received.day, calendar.monthrange(year, month)[1])
    return received.replace(year=year, month=month, day=day)


# Retention (README, "GDPR"): a tenant's period for personal data; a person whose last event is older
# has their data key shredded by the sweeper, as an erasure request with the reason `retention`.
RETENTION = "retention"
# A person's last event time is kept in the key store when an API process reads their key, and each
# process keeps a key in memory at most 5 minutes (omni.personal_data.DataKeyCache.max_age), so the
# true last event is at most that much later than the stored one: the sweeper waits this much more.
RETENTION_SLACK = timedelta(minutes=10)
MAX_RETENTION_DAYS = 36_500


def retention_cutoff(now: datetime, days: int) -> datetime:
    """Persons whose stored last event is before this are due for shredding at `now`."""
    return now - timedelta(days=days) - RETENTION_SLACK


def due_for_shredding(last_seen: Mapping[str, datetime], days: int | None, now: datetime) -> list[str]:
    """Which persons (by their last event time) a retention of `days` shreds at `now`, in order of
    their last event, oldest first: those whose last event is strictly before the cutoff. None: no
    retention, nobody."""
    if days is None:
        return []
    cutoff = retention_cutoff(now, days)
    return [person for person, seen in sorted(last_seen.items(), key=lambda item: (item[1], item[0])) if seen < cutoff]


RetentionDays = Annotated[int, Field(ge=1, le=MAX_RETENTION_DAYS, strict=True), BeforeValidator(whole_as_int)]
BreachSubjects = Annotated[int, Field(ge=0, le=10**12, strict=True), BeforeValidator(whole_as_int)]


class RetentionBody(BaseModel):
    """A tenant's retention period for personal data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    personal_data_days: RetentionDays | None = Field(
        description="Days after a person's last event before their data key is shredded; null: kept until erased",
    )


class RetentionPublic(BaseModel):
    personal_data_days: int | None = Field(description="null: no retention period (personal data kept until erased)")
    version: int = Field(description="0 until first set, then + 1 on each change")
    updated_at: str | None


class DataClassBody(BaseModel):
    """Which values of an event type are personal, and which names the person they are about."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    personal: list[JsonPath] = Field(
        min_length=1,
        max_length=32,
        description='Personal values, dotted paths under $.data, e.g. ["$.data.email", "$.data.prompt"]',
        json_schema_extra={
            "uniqueItems": True,
            "items": {"type": "string", "pattern": r"^\$\.data(\.[A-Za-z_][A-Za-z0-9_\-]*)+$"},
        },
    )
    subject_property: JsonPath = Field(
        default=DEFAULT_SUBJECT_PROPERTY,
        description="Where the person's id is: the CloudEvent `subject` (default) or a path under $.data",
        json_schema_extra={"pattern": r"^\$\.(subject|data(\.[A-Za-z_][A-Za-z0-9_\-]*)+)$"},
    )

    @field_validator("personal")
    @classmethod
    def _under_data(cls, paths: list[str]) -> list[str]:
        for path in paths:
            parts = path_parts(path)
            if parts[0] != "data" or len(parts) < 2:
                raise ValueError(f"{path}: a personal path names a value under $.data")
        if len(set(paths)) != len(paths):
            raise ValueError("each personal path once")
        return paths

    @field_validator("subject_property")
    @classmethod
    def _names_a_person(cls, path: str) -> str:
        parts = path_parts(path)
        if parts != ("subject",) and (parts[0] != "data" or len(parts) < 2):
            raise ValueError(f"{path}: the person is named by $.subject or a path under $.data")
        return path

    @model_validator(mode="after")
    def _person_apart(self) -> DataClassBody:
        if self.subject_property in self.personal:
            raise ValueError("the subject_property names the person; it cannot be sealed as one of the personal paths")
        return self

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class DataClassPublic(BaseModel):
    event_type: str
    version: int
    updated_at: str
    definition: DataClassBody


class DataClassList(BaseModel):
    data: list[DataClassPublic]


class GdprRequestBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: Text = Field(min_length=1, max_length=SUBJECT_MAX_LENGTH, description="The data subject's id")
    kind: RequestKind


class GdprStep(BaseModel):
    status: RequestStatus
    step: str
    at: str


class GdprRequestPublic(BaseModel):
    id: str
    subject: str
    kind: RequestKind
    status: RequestStatus
    received_at: str
    deadline: str = Field(description="One month from receipt (GDPR Art. 12(3))")
    steps: list[GdprStep]
    export: str | None = Field(
        default=None,
        description="Where the export is, once an access or portability request completed; null again once an erasure of its subject deleted it",
    )


# Breaches (Art. 33): the supervisory authority is to be notified within 72 hours of detection.
BREACH_OVERDUE = "omni.gdpr.breach_overdue"  # the notification, once per breach, when the deadline passes
BREACH_NOTIFY_WITHIN = timedelta(hours=72)
# The GDPR applies from 25 May 2018 (Art. 99(2)): a breach detected before it has no Art. 33 deadline,
# and a date of year 1 or 1970 is a client's default, which would emit an overdue notice at once.
GDPR_APPLIES_FROM = datetime(2018, 5, 25, tzinfo=UTC)


def breach_detection_problem(detected_at: datetime, now: datetime, future: timedelta) -> str | None:
    """Why a breach cannot have been detected at `detected_at`, as recorded at `now`, or None.

    A detection is in the past: at most `future` ahead of the clock, the skew admission allows an
    event's time (OMNI_FUTURE_TOLERANCE_SECONDS). A later one would be a breach never overdue (and one
    near year 9999 has no deadline a datetime can hold). Nor before the GDPR applied (GDPR_APPLIES_FROM)."""
    if detected_at - now > future:
        return f"detected_at {detected_at.isoformat()} is more than {future} in the future; a breach is recorded once detected"
    if detected_at < GDPR_APPLIES_FROM:
        return f"detected_at {detected_at.isoformat()} is before 2018-05-25, when the GDPR began to apply (Art. 99(2))"
    return None


class BreachBody(BaseModel):
    """A personal data breach as recorded by the platform's admin."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detected_at: Rfc3339Time = Field(description="When the breach was detected (the 72 hours run from it)")
    scope: Text = Field(min_length=1, max_length=2000, description="What was breached: systems, data, tenants")
    subjects: BreachSubjects | None = Field(default=None, description="How many data subjects, if known")
    description: Text | None = Field(default=None, max_length=4000)


class BreachOverdueNotification(BaseModel):
    """A breach's 72 hours passed with the supervisory authority not notified: the platform's notice,
    once per breach, dated when the deadline passed."""

    id: str
    type: Literal["omni.gdpr.breach_overdue"]
    tenant_id: str = Field(description="Always `_platform`: the register is the platform's")
    breach_id: str
    detected_at: str
    deadline: str
    scope: str
    occurred_at: str = Field(description="When the deadline passed (the breach's `deadline`)")


class BreachPublic(BaseModel):
    id: str
    detected_at: str
    recorded_at: str
    deadline: str = Field(description="72 hours after detection (GDPR Art. 33(1))")
    status: str = Field(pattern="^(open|overdue|notified)$")
    notified_at: str | None = Field(description="When the supervisory authority was notified")
    overdue_notice_at: str | None = Field(description="When the overdue notification was emitted (once)")
    scope: str
    subjects: int | None
    description: str | None


class BreachList(BaseModel):
    data: list[BreachPublic]


# What a meter reads as a value it adds, compares or keeps: a sealed value is no number for it, so it
# would count nothing. UNIQUE_COUNT and group_by read a sealed value as its pseudonym (README, GDPR).
READS_VALUES = frozenset({Aggregation.SUM, Aggregation.MAX, Aggregation.MIN, Aggregation.AVG, Aggregation.LATEST})


def sealed_value_read(personal: list[str], meter: MeterDefinition) -> str | None:
    """Why `meter` cannot read its value when these paths of its event type are personal (sealed at
    admission): its value_property is one of them or under one. None when it can."""
    if meter.aggregation not in READS_VALUES or meter.value_property is None:
        return None
    value = meter.value_property
    for path in personal:
        if value == path or value.startswith(path + "."):
            return (
                f"meter {meter.slug!r} ({meter.aggregation.value}) reads its value at {value}, which the data class of "
                f"{meter.event_type!r} seals as personal ({path}): a sealed value is no number, so the meter would count "
                "nothing; meter such a value with UNIQUE_COUNT or group_by (they read its pseudonym), or leave it out of the class"
            )
    return None
