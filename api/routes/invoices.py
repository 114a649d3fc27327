"""Invoices: closing billing periods (admin), finalized invoices and credit notes, the upcoming draft."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from api import as_of, invoice_page
from api.deps import AdminDep, CallerDep, PlatformDep, command_context, named_tenant
from api.problems import Problem, time_and_id_cursor
from api.relaying import run_command
from api.roles import RoleFirstRoute
from api.tenant_reads import read_in_thread
from commands.billing import PAID, UNCOLLECTIBLE, VOID, without_held
from commands.control_plane import Principal
from commands.errors import NotFound
from omni import metrics
from omni.billing_close import NotOver, ViewsBehind, close_period, read_cut
from omni.bootstrap import Platform
from projections.invoices import CREDIT_NOTE, INVOICE, PERIOD_PATTERN, BillingPeriod, Unbillable, bill, digest
from schemas.billing import (
    ClosedPeriodList,
    ClosedPeriodPublic,
    HeldTenant,
    InvoiceChanged,
    InvoiceList,
    InvoicePublic,
    PeriodClose,
    StatusChange,
    UpcomingInvoice,
)
from schemas.cloudevents import Rfc3339Time
from schemas.envelope import format_time
from stores import billing as billing_store
from stores import views

router = APIRouter(prefix="/v1", tags=["invoices"], route_class=RoleFirstRoute)


def _public(row: billing_store.InvoiceRow) -> InvoicePublic:
    document, status, _ = row
    return InvoicePublic.model_validate({**document, "status": status, "digest": digest(document)})


@router.post(
    "/billing/periods/{period}/close",
    response_model=PeriodClose,
    responses={409: {}, 422: {}, 503: {}},
)
async def close_billing_period(
    period: Annotated[str, Path(pattern=PERIOD_PATTERN, description="The month, YYYY-MM (UTC)", examples=["2026-11"])],
    request: Request,
    platform: PlatformDep,
    admin: AdminDep,
) -> PeriodClose:
    """Finalize every tenant's invoice for a month that has ended: once (409 after), from the usage the
    log held when the close began. 503 when the meter views lag the log for too long."""
    found = BillingPeriod.parse(period)
    assert found is not None  # the path's pattern
    try:
        closed = await close_period(platform, found, command_context(request, admin))
    except NotOver as early:
        raise Problem(409, "Period not over", str(early), kind="period-not-over") from early
    except ViewsBehind as behind:
        raise Problem(503, "Views behind", str(behind), kind="views-behind", headers={"Retry-After": "5"}) from behind
    totals: dict[str, int] = {}
    for document in closed.invoices:
        if document["kind"] == INVOICE:
            totals[document["currency"]] = totals.get(document["currency"], 0) + int(document["total"])
    return PeriodClose(
        period=closed.period,
        closed_at=closed.closed_at,
        invoices=sum(1 for d in closed.invoices if d["kind"] == INVOICE),
        credit_notes=sum(1 for d in closed.invoices if d["kind"] == CREDIT_NOTE),
        totals=dict(sorted(totals.items())),
        held=[HeldTenant(tenant_id=t, reason=why) for t, why in sorted(closed.held.items())],
    )


@router.get("/billing/periods", response_model=ClosedPeriodList, responses={422: {}})
def list_closed_periods(
    platform: PlatformDep,
    admin: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[str | None, Query(pattern=PERIOD_PATTERN, description="The `next_before` of the previous page")] = None,
) -> ClosedPeriodList:
    """The closed billing periods, newest first, each with the tenants it holds (not invoiced:
    their amount would pass what an invoice holds) until a close again invoices them."""
    with metrics.VIEW_QUERY.labels("billing_periods").time(), platform.db.transaction() as tx:
        rows = billing_store.periods(tx, limit=limit, before=before)
    found = [
        ClosedPeriodPublic(
            period=period,
            closed_at=closed_at,
            documents=documents,
            held=[HeldTenant(tenant_id=t, reason=why) for t, why in held.items()],
        )
        for period, closed_at, documents, held in rows
    ]
    return ClosedPeriodList(data=found, next_before=found[-1].period if len(found) == limit else None)


@router.get("/invoices", response_model=InvoiceList, responses={404: {}, 422: {}, 429: {}})
async def list_invoices(
    request: Request,
    platform: PlatformDep,
    principal: CallerDep,
    tenant: Annotated[str | None, Query(description="Admin only: whose invoices (every tenant's if absent)")] = None,
    period: Annotated[str | None, Query(pattern=PERIOD_PATTERN, description="Only this month's")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[str | None, Query(min_length=1, description="The `next_before` of the previous page")] = None,
    as_of_: Annotated[Rfc3339Time | None, Query(alias="as_of", description=as_of.DESCRIPTION)] = None,
) -> InvoiceList:
    """Finalized invoices and credit notes, newest first (with `as_of`: those issued by then, each
    with its status then)."""
    as_of.check(as_of_)
    read = functools.partial(_invoices, platform, principal, tenant, period, limit, before, as_of_)
    return await read_in_thread(request, principal, read, heavy=as_of_ is not None)  # as of: a fold of the log


def _invoices(
    platform: Platform,
    principal: Principal,
    tenant: str | None,
    period: str | None,
    limit: int,
    before: str | None,
    as_of_: datetime | None,
) -> InvoiceList:
    tenant_id = named_tenant(principal, tenant)
    cursor = None if before is None else time_and_id_cursor(before)
    with metrics.VIEW_QUERY.labels("invoices").time(), platform.db.transaction() as tx:
        if tenant_id is not None and views.tenant(tx, tenant_id) is None:
            raise NotFound(f"tenant {tenant} not found")
        if as_of_ is None:
            rows = billing_store.invoices_of(tx, tenant_id, limit=limit, before=cursor, period=period)
    if as_of_ is not None:
        with as_of.catalog_as_of(platform, as_of_) as past, past.transaction() as tx:
            rows = billing_store.invoices_of(tx, tenant_id, limit=limit, before=cursor, period=period)
    found = [_public(r) for r in rows]
    last = found[-1] if len(found) == limit else None
    return InvoiceList(data=found, next_before=f"{last.issued_at}~{last.id}" if last is not None else None)


@router.get("/invoices/upcoming", response_model=UpcomingInvoice, responses={404: {}, 422: {}})
async def upcoming_invoice(
    platform: PlatformDep,
    principal: CallerDep,
    tenant: Annotated[str | None, Query(description="Admin only: whose")] = None,
) -> UpcomingInvoice:
    """This month's invoice as it stands: the usage so far, priced by the tenant's plan now, with the
    adjustments the next close will bill and the credit note it will issue (`credit_note`). 404 when
    the tenant's plan charges nothing."""
    tenant_id = named_tenant(principal, tenant)
    if tenant_id is None:
        raise Problem(
            422, "Tenant needed", "The admin names the tenant: ?tenant=ID.", kind="tenant-needed", location="query.tenant"
        )
    return await run_in_threadpool(_draft, platform, tenant_id)


def _draft(platform: Platform, tenant_id: str) -> UpcomingInvoice:
    with platform.db.transaction() as tx:
        if views.tenant(tx, tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} not found")
    period = BillingPeriod.of(platform.clock())
    cut = read_cut(platform.db, period, platform.settings.acceptance_window, tenant_id)
    billed, next_invoice, next_credit_note = platform.control.billed_so_far(tenant_id)
    earlier = cut.earlier.get(tenant_id, {})
    held = platform.control.held_months(cut)
    try:
        statement = bill(
            tenant_id=tenant_id,
            period=period,
            plan=cut.plans.get(cut.tenants.get(tenant_id, "")),
            usage=cut.usage.get(tenant_id, {}),
            earlier=without_held(earlier, tenant_id, held),
            billed=billed,
            plan_at=cut.plan_at,
            next_invoice=next_invoice,
            next_credit_note=next_credit_note,
            issued_at=format_time(platform.clock()),
            existed=tenant_id not in cut.joined_after,
        )
    except Unbillable as too_large:
        raise Problem(422, "Unbillable amount", str(too_large), kind="unbillable-amount") from too_large
    if statement.invoice is None:
        raise NotFound(f"tenant {tenant_id} has nothing to be invoiced for {period.text} so far")
    unissued = {"status": "draft", "number": None, "issued_at": None}
    credit_note = None if statement.credit_note is None else {**statement.credit_note, **unissued}
    return UpcomingInvoice.model_validate({**statement.invoice, **unissued, "credit_note": credit_note})


@router.get(
    "/invoices/{invoice_id}",
    response_model=InvoicePublic,
    responses={
        200: {
            "content": {"text/html": {"schema": {"type": "string"}}},
            "description": "JSON, or a printable page for Accept: text/html",
        },
        404: {},
        429: {},
    },
)
async def get_invoice(
    invoice_id: str,
    request: Request,
    platform: PlatformDep,
    principal: CallerDep,
    tenant: Annotated[str | None, Query(description="Whose it must be (as on the list): another tenant's answers 404")] = None,
    as_of_: Annotated[Rfc3339Time | None, Query(alias="as_of", description=as_of.DESCRIPTION)] = None,
) -> Any:
    """One invoice or credit note (another tenant's answers 404); with `Accept: text/html`, a printable
    page; with `as_of`, its status then (404 if it was not issued yet)."""
    as_of.check(as_of_)
    read = functools.partial(_invoice, platform, principal, invoice_id, tenant, as_of_, request.headers.get("accept", ""))
    return await read_in_thread(request, principal, read, heavy=as_of_ is not None)  # as of: a fold of the log


def _invoice(
    platform: Platform, principal: Principal, invoice_id: str, tenant: str | None, as_of_: datetime | None, accept: str
) -> Any:
    owner = named_tenant(principal, tenant)  # a tenant key naming another tenant: 404, as on the list
    with platform.db.transaction() as tx:
        row = billing_store.invoice(tx, invoice_id)
        if row is None or (owner is not None and row[0]["tenant_id"] != owner):
            raise NotFound(f"invoice {invoice_id} not found")
        tenant_row = views.tenant(tx, row[0]["tenant_id"])
    if as_of_ is not None:
        with as_of.catalog_as_of(platform, as_of_) as past, past.transaction() as tx:
            row = billing_store.invoice(tx, invoice_id)
        if row is None:
            raise NotFound(f"invoice {invoice_id} was not issued by {format_time(as_of_)}")
    if not _wants_html(accept):
        return _public(row)
    customer = tenant_row[1] if tenant_row is not None else row[0]["tenant_id"]
    page = invoice_page.render(row[0], row[1], seller=platform.settings.invoice_seller, customer=customer)
    return HTMLResponse(page, headers={"Vary": "Accept"})


JSON_TYPES = ("application/json", "application/problem+json")


def _wants_html(accept: str) -> bool:
    """HTML when the client prefers text/html to JSON (a browser, `curl -H 'Accept: text/html'`): by
    their quality values (RFC 9110, 12.5.1; `q=0` is "not acceptable"), and at equal quality the one
    listed first. JSON otherwise, also for what neither names (the API's own type)."""
    html: tuple[float, int] | None = None
    json_: tuple[float, int] | None = None
    for index, part in enumerate(accept.split(",")):
        kind, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0  # unreadable: not taken as a preference
        kind = kind.lower()
        if kind == "text/html" and (html is None or quality > html[0]):
            html = (quality, index)
        elif kind in JSON_TYPES and (json_ is None or quality > json_[0]):
            json_ = (quality, index)
    if html is None or html[0] == 0:
        return False
    return json_ is None or html[0] > json_[0] or (html[0] == json_[0] and html[1] < json_[1])


async def _move(platform: Platform, request: Request, admin: Any, invoice_id: str, status: str, reason: str) -> InvoiceChanged:
    with platform.db.transaction() as tx:
        row = billing_store.invoice(tx, invoice_id)
    if row is None:
        raise NotFound(f"invoice {invoice_id} not found")
    ctx = command_context(request, admin)  # a credit note: the command's 409 (final as issued)
    at = format_time(platform.clock())
    move = functools.partial(platform.control.set_invoice_status, reason=reason, source="admin", at=at)
    credit_note = await run_command(platform, move, ctx, row[0], status)
    # The answer is the command's outcome (its caller's next read waits for the views to hold it).
    changed = None if credit_note is None else _public((credit_note, "finalized", None))
    return InvoiceChanged(invoice=_public((row[0], status, at)), credit_note=changed)


_MOVE_RESPONSES: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 422: {}}


@router.post("/invoices/{invoice_id}/void", response_model=InvoiceChanged, responses=_MOVE_RESPONSES)
async def void_invoice(
    invoice_id: str, body: StatusChange, request: Request, platform: PlatformDep, admin: AdminDep
) -> InvoiceChanged:
    """Void a finalized or uncollectible invoice, with a reason: a credit note gives its total back."""
    return await _move(platform, request, admin, invoice_id, VOID, body.reason)


@router.post("/invoices/{invoice_id}/mark-uncollectible", response_model=InvoiceChanged, responses=_MOVE_RESPONSES)
async def mark_invoice_uncollectible(
    invoice_id: str, body: StatusChange, request: Request, platform: PlatformDep, admin: AdminDep
) -> InvoiceChanged:
    """Give up collecting a finalized invoice (it may still be paid later)."""
    return await _move(platform, request, admin, invoice_id, UNCOLLECTIBLE, body.reason)


@router.post("/invoices/{invoice_id}/mark-paid", response_model=InvoiceChanged, responses=_MOVE_RESPONSES)
async def mark_invoice_paid(
    invoice_id: str, body: StatusChange, request: Request, platform: PlatformDep, admin: AdminDep
) -> InvoiceChanged:
    """Record a payment made outside Stripe (Stripe's own payments arrive by its webhook)."""
    return await _move(platform, request, admin, invoice_id, PAID, body.reason)
