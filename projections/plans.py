"""The plans view: plans, tenants' plans and quota overrides, folded from control-plane events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.envelope import Envelope, format_time
from schemas.plans import Entitlement

BILLING_KEYS = ("currency", "fee", "prices")


@dataclass(frozen=True, slots=True)
class PlanPublished:
    slug: str
    version: int
    name: str | None
    entitlements: tuple[Entitlement, ...]
    at: str
    billing: dict[str, Any]  # as stored: currency, fee, prices (schemas.billing.billing_json); {} charges nothing


@dataclass(frozen=True, slots=True)
class PlanAssigned:
    tenant_id: str
    plan: str


@dataclass(frozen=True, slots=True)
class OverrideSet:
    tenant_id: str
    entitlement: Entitlement


@dataclass(frozen=True, slots=True)
class OverrideRemoved:
    tenant_id: str
    meter: str


Change = PlanPublished | PlanAssigned | OverrideSet | OverrideRemoved


def changes(event: Envelope) -> list[Change]:
    """What one control-plane event changes in the plans view. Other types change nothing."""
    data: dict[str, Any] = event.data or {}
    match event.type:
        case "omni.plan.published":
            entitlements = tuple(Entitlement.from_stored(e) for e in data.get("entitlements", []))
            billing = {key: data[key] for key in BILLING_KEYS if key in data}
            at = format_time(event.event_time)
            return [PlanPublished(data["slug"], int(data["version"]), data.get("name"), entitlements, at, billing)]
        case "omni.tenant.plan_assigned":
            return [PlanAssigned(data["tenant_id"], data["plan"])]
        case "omni.quota.override_set":
            return [OverrideSet(data["tenant_id"], Entitlement.from_stored({**data["entitlement"], "meter": data["meter"]}))]
        case "omni.quota.override_removed":
            return [OverrideRemoved(data["tenant_id"], data["meter"])]
    return []
