"""The GDPR views folded from control-plane events: data classes, requests and their steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.envelope import Envelope, format_time


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


Change = DataClassDefined | RequestStep


def changes(event: Envelope) -> list[Change]:
    data: dict[str, Any] = event.data or {}
    match event.type:
        case "omni.data_class.defined":
            return [DataClassDefined(data["event_type"], int(data["version"]), data["definition"], format_time(event.event_time))]
        case "omni.gdpr.request_received":
            return [
                RequestStep(
                    data["id"], data["tenant_id"], event.id, "received", "received", data["at"], data["subject"], data["kind"]
                )
            ]
        case "omni.gdpr.request_updated":
            return [RequestStep(data["id"], data["tenant_id"], event.id, data["status"], data["step"], data["at"])]
    return []
