"""Plans (admin), tenants' plans and their quota overrides (admin)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from api.deps import AdminDep, CallerDep, PlatformDep, command_context
from api.exact_json import ExactJsonRoute
from api.relaying import run_command
from commands.errors import NotFound
from omni.bootstrap import Platform
from projections.plans import BILLING_KEYS
from schemas.envelope import format_time
from schemas.ids import canonical_uuid
from schemas.plans import Entitlement, PlanAssignment, PlanBody, PlanList, PlanPublic, QuotaOverrideBody
from schemas.quantities import SLUG_PATTERN
from stores import billing as billing_store
from stores import plans as plan_store

router = APIRouter(prefix="/v1", tags=["plans"], route_class=ExactJsonRoute)


def _currencies_invoiced_on_plan(platform: Platform, slug: str) -> frozenset[str]:
    with platform.db.transaction() as tx:
        return billing_store.currencies_invoiced_on_plan(tx, slug)


def _public(row: plan_store.PlanRow) -> PlanPublic:
    slug, version, name, entitlements, updated_at, billing = row
    return PlanPublic.of(slug, version, name, entitlements, billing, updated_at)


@router.put(
    "/plans/{slug}",
    response_model=PlanPublic,
    responses={201: {"model": PlanPublic, "description": "Published"}, 404: {}, 409: {}, 422: {}},
)
async def put_plan(
    slug: Annotated[str, Path(pattern=SLUG_PATTERN, description="The plan's slug, made here (422 when it is no slug)")],
    body: PlanBody,
    request: Request,
    response: Response,
    platform: PlatformDep,
    admin: AdminDep,
) -> PlanPublic:
    """Publish a plan (201), or revise it (200): a changed body is the next version, and its tenants
    get the new entitlements at once; usage so far in the period carries over."""
    invoiced_in = await asyncio.to_thread(_currencies_invoiced_on_plan, platform, slug)  # not on the event loop
    ctx = command_context(request, admin)
    plan, created = await run_command(platform, platform.control.put_plan, ctx, slug, body, invoiced_in)
    response.status_code = 201 if created else 200
    entitlements = [Entitlement.from_stored(e) for e in plan.body["entitlements"]]
    billing = {key: plan.body[key] for key in BILLING_KEYS if key in plan.body}
    return PlanPublic.of(
        plan.slug, plan.plan_version, plan.body.get("name"), entitlements, billing, format_time(plan.modified_on)
    )


@router.get("/plans", response_model=PlanList)
def list_plans(platform: PlatformDep, principal: CallerDep) -> PlanList:
    """Every plan, at its current version."""
    with platform.db.transaction() as tx:
        rows = plan_store.plans(tx)
    return PlanList(data=[_public(r) for r in rows])


@router.get("/plans/{slug}", response_model=PlanPublic, responses={404: {}})
def get_plan(slug: str, platform: PlatformDep, principal: CallerDep) -> PlanPublic:
    """One plan, at its current version."""
    with platform.db.transaction() as tx:
        row = plan_store.plan(tx, slug)
    if row is None:
        raise NotFound(f"plan {slug!r} not found")
    return _public(row)


def _tenant(tenant_id: str) -> str:
    canonical = canonical_uuid(tenant_id)
    if canonical is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return canonical


@router.put("/tenants/{tenant_id}/plan", status_code=204, response_class=Response, responses={404: {}, 409: {}, 422: {}})
async def assign_plan(tenant_id: str, body: PlanAssignment, request: Request, platform: PlatformDep, admin: AdminDep) -> Response:
    """Put a tenant on a plan: its entitlements apply from now on, to usage so far in the period too."""
    await run_command(platform, platform.control.assign_plan, command_context(request, admin), _tenant(tenant_id), body.plan)
    return Response(status_code=204)


@router.put(
    "/tenants/{tenant_id}/quotas/{meter}", status_code=204, response_class=Response, responses={404: {}, 409: {}, 422: {}}
)
async def set_quota_override(
    tenant_id: str,
    meter: Annotated[str, Path(pattern=SLUG_PATTERN, description="An additive meter's slug (422 when it is none)")],
    body: QuotaOverrideBody,
    request: Request,
    platform: PlatformDep,
    admin: AdminDep,
) -> Response:
    """Give one tenant its own entitlement on one meter, in place of its plan's."""
    ctx = command_context(request, admin)
    await run_command(platform, platform.control.set_quota_override, ctx, _tenant(tenant_id), body.entitlement(meter))
    return Response(status_code=204)


@router.delete("/tenants/{tenant_id}/quotas/{meter}", status_code=204, response_class=Response, responses={404: {}, 409: {}})
async def remove_quota_override(tenant_id: str, meter: str, request: Request, platform: PlatformDep, admin: AdminDep) -> Response:
    """Remove a tenant's override: its plan's entitlement applies again."""
    ctx = command_context(request, admin)
    await run_command(platform, platform.control.remove_quota_override, ctx, _tenant(tenant_id), meter)
    return Response(status_code=204)
