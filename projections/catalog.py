"""The catalog view: tenants, keys and meter definitions (described and deleted too), folded from
control-plane events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.envelope import Envelope, format_time
from schemas.meters import MeterDefinition
from schemas.topics import STORE_POSITION

METER_DESCRIBED, METER_DELETED = "omni.meter.described", "omni.meter.deleted"


@dataclass(frozen=True, slots=True)
class TenantAdded:
    tenant_id: str
    name: str
    plan: str
    created_at: str


@dataclass(frozen=True, slots=True)
class KeyAdded:
    key_id: str
    tenant_id: str
    label: str | None
    issued_at: str


@dataclass(frozen=True, slots=True)
class KeyRevoked:
    key_id: str
    revoked_at: str


@dataclass(frozen=True, slots=True)
class MeterAdded:
    definition: MeterDefinition
    event_id: str


@dataclass(frozen=True, slots=True)
class MeterDescribed:
    slug: str
    description: str | None


@dataclass(frozen=True, slots=True)
class MeterDeleted:
    slug: str


Change = TenantAdded | KeyAdded | KeyRevoked | MeterAdded | MeterDescribed | MeterDeleted


def store_position(event: Envelope) -> int:
    """The event-store position a relayed control event carries (0 for none: relayed by older code)."""
    position = event.extensions.get(STORE_POSITION)
    return position if type(position) is int else 0


def changes(event: Envelope) -> list[Change]:
    """What one control-plane event changes in the catalog. Unknown types change nothing."""
    data: dict[str, Any] = event.data or {}
    at = format_time(event.event_time)
    match event.type:
        case "omni.tenant.created":
            return [TenantAdded(data["tenant_id"], data["name"], data["plan"], at)]
        case "omni.api_key.issued":
            return [KeyAdded(data["key_id"], data["tenant_id"], data.get("label"), at)]
        case "omni.api_key.revoked":
            return [KeyRevoked(data["key_id"], at)]
        case "omni.meter.defined":
            return [MeterAdded(MeterDefinition.model_validate(data["definition"]), event.id)]
        case "omni.meter.described":  # METER_DESCRIBED
            return [MeterDescribed(data["slug"], data["description"])]
        case "omni.meter.deleted":  # METER_DELETED
            return [MeterDeleted(data["slug"])]
    return []
