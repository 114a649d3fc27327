"""SLOs: a tenant's over its own events, the admin's over every tenant's; status and history."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from api.deps import CallerDep, PlatformDep, command_context, whole_minute
from api.problems import Problem
from api.relaying import run_command
from api.roles import RoleFirstRoute
from commands.control_plane import Principal
from commands.errors import NotFound
from commands.slos import PLATFORM
from omni import metrics
from projections import slos as slo_view
from schemas.cloudevents import Rfc3339Time
from schemas.envelope import format_time
from schemas.slos import (
    SLO_NAME_PATTERN,
    Alerts,
    Counts,
    ErrorBudget,
    HistoryWindow,
    SloBody,
    SloHistory,
    SloHistoryPoint,
    SloList,
    SloPublic,
    SloStatus,
)
from stores import slos as slo_store

router = APIRouter(prefix="/v1/slos", tags=["slos"], route_class=RoleFirstRoute)

NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")  # schemas.slos.SLO_NAME_PATTERN
MAX_HISTORY_POINTS = 10_000


def _owner(principal: Principal) -> str:
    return PLATFORM if principal.is_admin or principal.tenant_id is None else principal.tenant_id


def _public(row: slo_store.SloRow) -> SloPublic:
    return SloPublic(name=row.name, owner=row.owner, version=row.version, updated_at=row.updated_at, definition=row.definition)


def _row(platform: PlatformDep, principal: Principal, name: str) -> slo_store.SloRow:
    """The caller's own SLO (another owner's answers 404, as a missing one does)."""
    row = None
    if NAME.fullmatch(name):
        with platform.db.transaction() as tx:
            row = slo_store.one(tx, _owner(principal), name)
    if row is None:
        raise NotFound(f"SLO {name!r} not found")
    return row


@router.put(
    "/{name}",
    response_model=SloPublic,
    responses={201: {"model": SloPublic, "description": "Defined"}, 404: {}, 409: {}, 422: {}, 429: {}},
)
async def put_slo(
    name: Annotated[str, Path(pattern=SLO_NAME_PATTERN, description="The SLO's name, made here (422 when it is no slug)")],
    body: SloBody,
    request: Request,
    response: Response,
    platform: PlatformDep,
    principal: CallerDep,
) -> SloPublic:
    """Define an SLO (201), or revise it (200): a changed body is the next version, folded afresh from
    the whole log. A tenant's SLO counts its own events; the admin's counts every tenant's. An owner
    defines at most OMNI_MAX_SLOS_PER_TENANT SLOs (409 `slo-limit-reached` past it; revising one
    still works), and revises one at most OMNI_SLO_REVISIONS_PER_HOUR times in any hour (429
    `slo-revised-too-often`, with `Retry-After`)."""
    slo, created = await run_command(platform, platform.control.put_slo, command_context(request, principal), name, body)
    response.status_code = 201 if created else 200
    return SloPublic(
        name=slo.name, owner=slo.owner, version=slo.slo_version, updated_at=format_time(slo.modified_on), definition=body
    )


@router.delete("/{name}", status_code=204, response_class=Response, responses={404: {}, 409: {}})
async def delete_slo(name: str, request: Request, platform: PlatformDep, principal: CallerDep) -> Response:
    """Delete one of the caller's SLOs: it is no longer read, folded or alerted on. It keeps its place in
    the owner's count (OMNI_MAX_SLOS_PER_TENANT) for an hour, since every new SLO is folded from the
    whole log; its own name put again takes the place back at once, as its next version (a revision,
    counted against OMNI_SLO_REVISIONS_PER_HOUR), folded afresh. 404 for another owner's SLO, a missing
    one, or one deleted already."""
    await run_command(platform, platform.control.delete_slo, command_context(request, principal), name)
    return Response(status_code=204)


@router.get("", response_model=SloList)
def list_slos(platform: PlatformDep, principal: CallerDep) -> SloList:
    """The caller's SLOs, at their current versions (the admin's: the platform's)."""
    with platform.db.transaction() as tx:
        rows = slo_store.of_owner(tx, _owner(principal))
    return SloList(data=[_public(r) for r in rows])


@router.get("/{name}", response_model=SloStatus, responses={404: {}})
def get_slo(name: str, platform: PlatformDep, principal: CallerDep) -> SloStatus:
    """The SLO and where it stands now: SLI, error budget, burn rates and alerts over the rolling
    window that ends with the current minute. No matching event: no data (null), never 100%."""
    row = _row(platform, principal, name)
    end = slo_view.window_end(platform.clock())
    window = row.definition.window
    with metrics.VIEW_QUERY.labels("slos").time(), platform.db.transaction() as tx:
        counts = slo_store.counts(tx, slo_view.fold_id(row.owner, row.name, row.version), slo_view.spans(end, window))
    found = slo_view.report(end, counts, row.definition.objective, window)
    budget = found.budget
    return SloStatus(
        **_public(row).model_dump(),
        as_of=found.as_of,
        good=found.good,
        total=found.total,
        sli=found.sli,
        error_budget=ErrorBudget(
            total=Counts(events=budget.total, share=None if budget.total is None else 1.0),
            consumed=Counts(events=budget.consumed, share=budget.consumed_share),
            remaining=Counts(events=budget.remaining, share=budget.remaining_share),
        ),
        burn_rates=found.burn_rates,
        alerts=Alerts(page="firing" if found.page else "ok", ticket="firing" if found.ticket else "ok"),
    )


@router.get("/{name}/history", response_model=SloHistory, responses={404: {}, 422: {}})
def slo_history(
    name: str,
    platform: PlatformDep,
    principal: CallerDep,
    from_: Annotated[Rfc3339Time, Query(alias="from", description="Inclusive, RFC 3339, whole minute")],
    to: Annotated[Rfc3339Time, Query(description="Exclusive, RFC 3339, whole minute")],
    window_size: Annotated[HistoryWindow, Query(description="MINUTE, HOUR or DAY")] = HistoryWindow.HOUR,
) -> SloHistory:
    """Good and total events, and the SLI, per window of `window_size` from `from` to `to`: for a chart."""
    row = _row(platform, principal, name)
    start, end = whole_minute("from", from_), whole_minute("to", to)
    size = window_size.seconds
    if start >= end:
        raise Problem(422, "Invalid time range", "`from` must come before `to`.", kind="invalid-range", location="query.to")
    if -((start - end) // size) > MAX_HISTORY_POINTS:  # windows, the last partial one included
        raise Problem(
            422,
            "Invalid time range",
            f"At most {MAX_HISTORY_POINTS} windows: widen `window_size`.",
            kind="invalid-range",
            location="query.window_size",
        )
    with metrics.VIEW_QUERY.labels("slo_history").time(), platform.db.transaction() as tx:
        found = slo_store.windows(tx, slo_view.fold_id(row.owner, row.name, row.version), start, end, size)
    points = []
    for at in range(start, end, size):
        counts = found.get(at, slo_view.NONE)
        points.append(
            SloHistoryPoint(
                start=_text(at), end=_text(min(at + size, end)), good=counts.good, total=counts.total, sli=slo_view.sli(counts)
            )
        )
    return SloHistory(name=row.name, window_size=window_size.value, data=points)


def _text(epoch: int) -> str:
    return format_time(datetime.fromtimestamp(epoch, tz=UTC))
