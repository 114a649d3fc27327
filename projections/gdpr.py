"""The GDPR views folded from control-plane events: data classes, requests and their steps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import uuid5

from projections.quotas import NOTICES
from projections.slos import PLATFORM
from schemas.envelope import Envelope, format_time
from schemas.gdpr import BREACH_NOTIFY_WITHIN


@dataclass(frozen=True, slots=True)
class DataClassDefined:
    event_type: str
    version: int
    definition: dict[str, Any]
    at: str


@dataclass(frozen=True, slots=True)
class RequestStep:
    """A request's step; `received` carries the request itself (subject, kind)."""

    request_id: str
    tenant_id: str
    event_id: str  # the step's own id: a control event relayed twice adds it once
    status: str
    step: str
    at: str
    subject: str | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class BreachRecorded:
    breach_id: str
    detected_at: str
    recorded_at: str
    deadline: str
    scope: str
    subjects: int | None
    description: str | None


@dataclass(frozen=True, slots=True)
class BreachNotified:
    breach_id: str
    notified_at: str


@dataclass(frozen=True, slots=True)
class BreachOverdue:
    """The platform's notice of a breach whose 72 hours passed with the authority not notified.
    Its id comes from the breach's and it is dated when the deadline passed, so the notices relay
    (after a restart, or a replay of the views) and GET /v1/notifications all find the same one."""

    id: str
    breach_id: str
    detected_at: str
    deadline: str
    scope: str

    @property
    def occurred_at(self) -> str:
        return self.deadline

    def data(self) -> dict[str, Any]:
        """The notice as the notifications topic carries it (`id` beside it, as for every notice)."""
        return {
            "tenant_id": PLATFORM,
            "breach_id": self.breach_id,
            "detected_at": self.detected_at,
            "deadline": self.deadline,
            "scope": self.scope,
            "occurred_at": self.occurred_at,
        }


def breach_overdue(breach_id: str, detected_at: str, deadline: str, scope: str) -> BreachOverdue:
    return BreachOverdue(str(uuid5(NOTICES, f"breach-overdue:{breach_id}")), breach_id, detected_at, deadline, scope)


@dataclass(frozen=True, slots=True)
class RetentionSet:
    tenant_id: str
    days: int | None
    version: int
    at: str


Change = DataClassDefined | RequestStep | BreachRecorded | BreachNotified | RetentionSet


LATEST = datetime.max.replace(tzinfo=UTC)


def breach_deadline(detected_at: str) -> str:
    """72 hours after detection (GDPR Art. 33(1)), in UTC.

    Clamped to the latest time a datetime holds (9999-12-31T23:59:59.999999Z) when 72 hours later
    is past it: such a breach is never overdue. The command refuses a detection in the future, but
    a log written before it did may hold one, and the fold must survive it (the catalog projector
    folds these events, and a replay of the log must always be possible)."""
    detected = datetime.fromisoformat(detected_at)
    if detected > LATEST - BREACH_NOTIFY_WITHIN:
        return format_time(LATEST)
    return format_time(detected + BREACH_NOTIFY_WITHIN)


def changes(event: Envelope) -> list[Change]:
    data: dict[str, Any] = event.data or {}
    match event.type:
        case "omni.data_class.defined":
            return [DataClassDefined(data["event_type"], int(data["version"]), data["definition"], format_time(event.event_time))]
        case "omni.gdpr.request_received":
            step = "received" if data.get("reason") is None else f"received: {data['reason']}"
            return [
                RequestStep(data["id"], data["tenant_id"], event.id, "received", step, data["at"], data["subject"], data["kind"])
            ]
        case "omni.gdpr.retention_set":
            days = data.get("personal_data_days")
            return [RetentionSet(data["tenant_id"], None if days is None else int(days), int(data["version"]), data["at"])]
        case "omni.gdpr.breach_recorded":
            detected = data["detected_at"]
            return [
                BreachRecorded(
                    data["id"],
                    detected,
                    data["recorded_at"],
                    breach_deadline(detected),
                    data["scope"],
                    data.get("subjects"),
                    data.get("description"),
                )
            ]
        case "omni.gdpr.breach_notified":
            return [BreachNotified(data["id"], data["notified_at"])]
        case "omni.gdpr.request_updated":
            return [RequestStep(data["id"], data["tenant_id"], event.id, data["status"], data["step"], data["at"])]
    return []
