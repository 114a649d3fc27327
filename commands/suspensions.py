"""Suspending a tenant, and resuming it: events on its Tenant aggregate, each with an audit entry and a notice.

A suspended tenant's consumes are refused (403 `tenant-suspended`, nothing counted) until it is
resumed: the gateway stops serving it, as it would at a hard limit, whatever its quotas say. Its
keys still read (its invoices, its usage, its audit trail), and its facts (`POST /v1/events`) are
still counted: usage that happened is billed, as quotas never refuse a fact.

Each change is saved with a Notice (the tenant's `omni.tenant.suspended` or `omni.tenant.resumed`,
on the notifications topic and to its webhook endpoints) whose id is derived from the tenant and
the change's version, so the view of changes (stores.suspensions) lists it under the same id.
Suspending a suspended tenant, or resuming an active one, changes nothing (its audit entry is
still recorded).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import uuid5

from eventsourcing.persistence import IntegrityError

from commands.errors import Conflict
from commands.ids import OMNI_NAMESPACE
from commands.notices import Notice
from schemas.envelope import format_time
from schemas.suspensions import SUSPENSION_LIFTED, SUSPENSION_SET, TENANT_RESUMED, TENANT_SUSPENDED

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane, Tenant


def status_notice_id(tenant_id: str, version: int) -> str:
    """The notice of the change that made the tenant's aggregate `version`."""
    return str(uuid5(OMNI_NAMESPACE, f"tenant-status:{tenant_id}:{version}"))


class SuspensionCommands:
    def suspend_tenant(self: ControlPlane, ctx: CommandContext, tenant_id: str, reason: str) -> Tenant:
        with self._rejections_audited(ctx, "tenant.suspend", f"tenants/{tenant_id}"):
            tenant = self.get_tenant(tenant_id)
            canonical = str(tenant.id)
            changed: list[Any] = [tenant]
            why = f"already suspended since {tenant.suspended_at}: {tenant.suspension}"  # changes nothing
            if tenant.suspension is None:
                notice_id, at = status_notice_id(canonical, tenant.version + 1), format_time(datetime.now(UTC))
                tenant.suspend(tenant_id=canonical, reason=reason, notice_id=notice_id, at=at)
                data = {"tenant_id": canonical, "reason": reason, "occurred_at": at}
                changed.append(Notice(notice_id=notice_id, kind=TENANT_SUSPENDED, tenant_id=canonical, data=data))
                why = reason
            try:
                self.save(*changed, self._audit(ctx, "tenant.suspend", f"tenants/{canonical}", canonical, reason=why))
            except IntegrityError as race:
                raise Conflict(f"tenant {tenant_id} changed concurrently; retry") from race
            return tenant

    def resume_tenant(self: ControlPlane, ctx: CommandContext, tenant_id: str) -> Tenant:
        with self._rejections_audited(ctx, "tenant.resume", f"tenants/{tenant_id}"):
            tenant = self.get_tenant(tenant_id)
            canonical = str(tenant.id)
            changed: list[Any] = [tenant]
            why: str | None = "not suspended"  # changes nothing
            if tenant.suspension is not None:
                why = None
                notice_id, at = status_notice_id(canonical, tenant.version + 1), format_time(datetime.now(UTC))
                tenant.resume(tenant_id=canonical, notice_id=notice_id, at=at)
                data = {"tenant_id": canonical, "reason": None, "occurred_at": at}
                changed.append(Notice(notice_id=notice_id, kind=TENANT_RESUMED, tenant_id=canonical, data=data))
            try:
                self.save(*changed, self._audit(ctx, "tenant.resume", f"tenants/{canonical}", canonical, reason=why))
            except IntegrityError as race:
                raise Conflict(f"tenant {tenant_id} changed concurrently; retry") from race
            return tenant


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The log's type, tenant and data for a suspension or a resumption; None for any other event."""
    match type(domain_event).__qualname__:
        case "Tenant.Suspended":
            data = {
                "tenant_id": domain_event.tenant_id,
                "version": domain_event.originator_version,
                "notice_id": domain_event.notice_id,
                "reason": domain_event.reason,
                "at": domain_event.at,
            }
            return SUSPENSION_SET, domain_event.tenant_id, data
        case "Tenant.Resumed":
            data = {
                "tenant_id": domain_event.tenant_id,
                "version": domain_event.originator_version,
                "notice_id": domain_event.notice_id,
                "at": domain_event.at,
            }
            return SUSPENSION_LIFTED, domain_event.tenant_id, data
    return None
