"""Tenants and their API keys (control plane)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.deps import AdminDep, CallerDep, PlatformDep, command_context
from api.problems import invalid_cursor
from api.relaying import run_command
from api.roles import RoleFirstRoute
from commands.control_plane import Tenant
from commands.errors import NotFound
from omni.bootstrap import Platform
from schemas.api import KeyCreate, KeyIssued, KeyList, KeyPublic, TenantCreate, TenantCreated, TenantList, TenantPublic
from schemas.envelope import cursor_time, format_time
from schemas.ids import canonical_uuid
from schemas.suspensions import SuspendBody, TenantStatus
from stores import suspensions, views
from stores.suspensions import Suspension

router = APIRouter(prefix="/v1", tags=["tenants"], route_class=RoleFirstRoute)

KEY_ID = re.compile(r"[0-9a-f]{1,64}")  # commands.control_plane._new_key: hex


@router.post("/tenants", status_code=201, response_model=TenantCreated)
async def create_tenant(body: TenantCreate, request: Request, platform: PlatformDep, admin: AdminDep) -> TenantCreated:
    """Create a tenant and its first API key (shown once)."""
    tenant, key = await run_command(
        platform, platform.control.create_tenant, command_context(request, admin), body.name, body.plan
    )
    return TenantCreated(id=str(tenant.id), name=tenant.name, plan=tenant.plan, api_key=key.token, key_id=key.key_id)


def _public(row: tuple[str, str, str, str], suspension: Suspension | None) -> TenantPublic:
    tenant = TenantPublic(id=row[0], name=row[1], plan=row[2], created_at=row[3])
    if suspension is not None:
        tenant.status, tenant.suspended_at, tenant.suspension_reason = "suspended", suspension.since, suspension.reason
    return tenant


@router.get("/tenants", response_model=TenantList)
def list_tenants(
    platform: PlatformDep,
    admin: AdminDep,
    limit: int = Query(100, ge=1, le=1000),
    after: Annotated[str | None, Query(min_length=1, description="The `next_after` of the previous page")] = None,
    status: Annotated[TenantStatus | None, Query(description="Only the tenants of this status now")] = None,
) -> TenantList:
    """List tenants (admin), paged by id; `status` (`active` or `suspended`) keeps those of that status."""
    if after is not None and canonical_uuid(after) != after:  # compared as text, anything paged from somewhere
        raise invalid_cursor("after", "next_after")
    with platform.db.transaction() as tx:
        rows = suspensions.tenants(tx, limit, after, status)
        suspended = suspensions.suspensions(tx, (r[0] for r in rows))
    data = [_public(r, suspended.get(r[0])) for r in rows]
    return TenantList(data=data, next_after=data[-1].id if len(data) == limit else None)


def _visible(principal: CallerDep, tenant_id: str) -> str:
    """The tenant id in its canonical spelling, if the caller may see that tenant; else 404."""
    canonical = canonical_uuid(tenant_id)
    if canonical is None or (not principal.is_admin and principal.tenant_id != canonical):
        raise NotFound(f"tenant {tenant_id} not found")
    return canonical


@router.get("/tenants/{tenant_id}", response_model=TenantPublic)
def get_tenant(tenant_id: str, platform: PlatformDep, principal: CallerDep) -> TenantPublic:
    """One tenant: the admin sees any, a tenant key only its own."""
    return _read(platform, _visible(principal, tenant_id))


def _read(platform: Platform, tenant_id: str) -> TenantPublic:
    with platform.db.transaction() as tx:
        row = views.tenant(tx, tenant_id)
        suspension = suspensions.suspension(tx, tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return _public(row, suspension)


def _of_aggregate(tenant: Tenant) -> TenantPublic:
    """The tenant as its command left it (as the views show it once they hold the change)."""
    row = (str(tenant.id), tenant.name, tenant.plan, format_time(tenant.created_on))
    suspension = None if tenant.suspension is None else Suspension(tenant.suspension, tenant.suspended_at or "")
    return _public(row, suspension)


@router.post("/tenants/{tenant_id}/suspend", response_model=TenantPublic, responses={404: {}, 409: {}})
async def suspend_tenant(
    tenant_id: str, body: SuspendBody, request: Request, platform: PlatformDep, admin: AdminDep
) -> TenantPublic:
    """Suspend a tenant (admin): from the answer on, its consumes are refused with 403
    `tenant-suspended` and count nothing; its keys still read, and its events (facts) are still
    counted. The tenant is told by an `omni.tenant.suspended` notification (and its webhook
    endpoints). Suspending a suspended tenant changes nothing."""
    tenant = await run_command(platform, platform.control.suspend_tenant, command_context(request, admin), tenant_id, body.reason)
    return _of_aggregate(tenant)


@router.post("/tenants/{tenant_id}/resume", response_model=TenantPublic, responses={404: {}, 409: {}})
async def resume_tenant(tenant_id: str, request: Request, platform: PlatformDep, admin: AdminDep) -> TenantPublic:
    """Resume a suspended tenant (admin): its consumes are decided again from the answer on, and it is
    told by an `omni.tenant.resumed` notification. Resuming an active tenant changes nothing."""
    tenant = await run_command(platform, platform.control.resume_tenant, command_context(request, admin), tenant_id)
    return _of_aggregate(tenant)


@router.post("/tenants/{tenant_id}/keys", status_code=201, response_model=KeyIssued, responses={404: {}, 409: {}})
async def issue_key(
    tenant_id: str, request: Request, platform: PlatformDep, principal: CallerDep, body: KeyCreate | None = None
) -> KeyIssued:
    """Issue another API key for a tenant (the admin, or the tenant itself): at most
    OMNI_MAX_KEYS_PER_TENANT not revoked (409 `key-limit-reached` past it; revoke one first)."""
    ctx = command_context(request, principal)
    issued = await run_command(platform, platform.control.issue_key, ctx, tenant_id, body.label if body else None)
    return KeyIssued(key_id=issued.key_id, tenant_id=issued.tenant_id, api_key=issued.token)


def _keys_cursor(after: str) -> tuple[str, str]:
    """`after` as the list wrote it in `next_after`: `<issued_at>~<key_id>`, an RFC 3339 time and a
    key id; anything else is 422 rather than a page from somewhere."""
    at, _, key_id = after.partition("~")
    moment = cursor_time(at)
    if moment is None or not KEY_ID.fullmatch(key_id):
        raise invalid_cursor("after", "next_after")
    return moment, key_id


@router.get("/tenants/{tenant_id}/keys", response_model=KeyList, responses={404: {}, 422: {}})
def list_keys(
    tenant_id: str,
    platform: PlatformDep,
    principal: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(min_length=1, description="The `next_after` of the previous page")] = None,
) -> KeyList:
    """The tenant's keys without secrets, in the order they were issued, revoked ones with `revoked_at`;
    `limit` a page, the next after `next_after`."""
    tenant_id = _visible(principal, tenant_id)
    cursor = None if after is None else _keys_cursor(after)
    with platform.db.transaction() as tx:
        rows = views.keys_of(tx, tenant_id, limit, cursor)
    data = [KeyPublic(key_id=r[0], label=r[1], issued_at=r[2], revoked_at=r[3]) for r in rows]
    return KeyList(data=data, next_after=f"{data[-1].issued_at}~{data[-1].key_id}" if len(data) == limit else None)


@router.delete("/keys/{key_id}", status_code=204, response_class=Response)
async def revoke_key(key_id: str, request: Request, platform: PlatformDep, principal: CallerDep) -> Response:
    """Revoke a key; it is refused at once. Revoking twice is harmless."""
    await run_command(platform, platform.control.revoke_key, command_context(request, principal), key_id)
    return Response(status_code=204)
