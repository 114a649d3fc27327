"""The tenants' suspensions view: each suspension and resumption, folded from control-plane events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.envelope import Envelope
from schemas.suspensions import SUSPENSION_LIFTED, SUSPENSION_SET, TenantStatus


@dataclass(frozen=True, slots=True)
class StatusChanged:
    tenant_id: str
    version: int  # the tenant aggregate's version the change made: orders a tenant's changes
    notice_id: str
    status: TenantStatus
    reason: str | None
    at: str  # when the command made it (RFC 3339, UTC): the notice's occurred_at too


def changes(event: Envelope) -> list[StatusChanged]:
    """What one control-plane event changes in the view. Other types change nothing."""
    data: dict[str, Any] = event.data or {}
    status: TenantStatus
    if event.type == SUSPENSION_SET:
        status = "suspended"
    elif event.type == SUSPENSION_LIFTED:
        status = "active"
    else:
        return []
    reason = data.get("reason") if status == "suspended" else None
    return [StatusChanged(data["tenant_id"], int(data["version"]), data["notice_id"], status, reason, data["at"])]
