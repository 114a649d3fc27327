"""Meters: defined by the admin, queried by tenants over their own usage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from anyio import from_thread
from fastapi import APIRouter, Query, Request

from api.as_of import DESCRIPTION as AS_OF
from api.as_of import check as as_of_check
from api.deps import AdminDep, CallerDep, PlatformDep, TenantDep, command_context, whole_minute
from api.problems import ExactJSONResponse, Problem
from api.relaying import run_command
from commands.errors import NotFound
from omni import metrics
from projections.meter_query import MeterRow
from schemas.api import MeterList, MeterQueryResult
from schemas.cloudevents import Rfc3339Time
from schemas.meters import MeterDefinition, WindowSize
from stores import views
from stores.database import Tx
from streams.replay import meter_as_of

router = APIRouter(prefix="/v1/meters", tags=["meters"])


@router.post("", status_code=201, response_model=MeterDefinition)
async def define_meter(body: MeterDefinition, request: Request, platform: PlatformDep, admin: AdminDep) -> MeterDefinition:
    """Define a meter. It covers every event already on the log, not only new ones."""
    await run_command(platform, platform.control.define_meter, command_context(request, admin), body)
    return body


@router.get("", response_model=MeterList)
def list_meters(platform: PlatformDep, principal: CallerDep) -> MeterList:
    """Every meter defined so far (as folded from the log)."""
    with platform.db.transaction() as tx:
        definitions = views.meter_definitions(tx)
    return MeterList(data=definitions)


@router.get("/{slug}", response_model=MeterDefinition)
def get_meter(slug: str, platform: PlatformDep, principal: CallerDep) -> MeterDefinition:
    """One meter's definition."""
    with platform.db.transaction() as tx:
        definition = views.meter_definition(tx, slug)
    if definition is None:
        raise NotFound(f"meter {slug!r} not found")
    return definition


def _utc_text(moment: datetime | None) -> str | None:
    """An instant of the answer, in UTC with a `Z`."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


QUERY_PARAMETERS = ("from", "to", "window_size", "group_by", "subject", "as_of")


def _refuse_unknown(request: Request) -> None:
    """422 for a query parameter the route does not take: a filter it does not know (a dimension's
    name, OpenMeter's `filterGroupBy[model]`) or a misspelt name, ignored, answered every group's
    usage as if filtered."""
    unknown = [name for name in dict.fromkeys(request.query_params) if name not in QUERY_PARAMETERS]
    if unknown:
        reason = f"not a parameter of this query, which takes {', '.join(QUERY_PARAMETERS)}"
        raise Problem(
            422,
            "Unknown query parameter",
            f"{', '.join(unknown)}: {reason}.",
            kind="unknown-parameter",
            errors=[{"location": f"query.{name}", "reason": f"{name} is {reason}"} for name in unknown],
        )


def _in_utc(name: str, moment: datetime | None) -> datetime | None:
    """A query's time bound as the same instant in UTC; 422 without an offset, or past the years
    UTC can name (0001-01-01T00:00:00+05:00 is in year 0)."""
    if moment is None:
        return None
    problem = None
    if moment.tzinfo is None:
        problem = f"`{name}` needs a time zone offset (e.g. Z)."
    else:
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            problem = f"`{name}` must fall between 0001-01-01T00:00:00Z and 9999-12-31T23:59:00Z."
    raise Problem(422, "Invalid time range", problem, kind="invalid-range", location=f"query.{name}")


def _split(values: list[str]) -> list[str]:
    """`group_by=model,region` as `group_by=model&group_by=region`: a dimension's name is an
    identifier (schemas.meters), so it never holds a comma. Subjects may: they are never split."""
    return [part for value in values for part in value.split(",") if part]


@router.get("/{slug}/query", response_model=MeterQueryResult, response_class=ExactJSONResponse)
def query_meter(
    slug: str,
    request: Request,
    platform: PlatformDep,
    principal: TenantDep,
    from_: Annotated[Rfc3339Time | None, Query(alias="from", description="Inclusive, RFC 3339, whole minute")] = None,
    to: Annotated[Rfc3339Time | None, Query(description="Exclusive, RFC 3339, whole minute")] = None,
    window_size: Annotated[WindowSize | None, Query()] = None,
    group_by: Annotated[
        list[str], Query(description="Dimensions to group by; `subject` is one. Repeat it, or separate names with commas")
    ] = [],  # noqa: B006
    subject: Annotated[
        list[str], Query(description="Only these subjects: repeat it for several (taken whole: a subject may hold a comma)")
    ] = [],  # noqa: B006
    as_of: Annotated[Rfc3339Time | None, Query(description=f"{AS_OF} (`to` bounds event time instead)")] = None,
) -> ExactJSONResponse:
    """The caller's usage on one meter, per window and group."""
    _refuse_unknown(request)
    as_of_check(as_of)
    # Told back in UTC, as every row's window is: a bound sent with another offset made a row cut
    # to it start at "10:00:00+05:30" and end at "…Z".
    from_, to = _in_utc("from", from_), _in_utc("to", to)
    start = None if from_ is None else whole_minute("from", from_)
    end = None if to is None else whole_minute("to", to)
    if start is not None and end is not None and start >= end:
        raise Problem(422, "Invalid time range", "`from` must be before `to`.", kind="invalid-range", location="query.to")
    groups = _split(group_by)
    # On a connection of its own (embedded mode): a long query holds up no other tenant's request.
    with metrics.VIEW_QUERY.labels("meters").time(), platform.db.reading() as tx:
        definition = views.meter_definition(tx, slug)
        if definition is None:
            raise NotFound(f"meter {slug!r} not found")
        unknown = [g for g in groups if g != "subject" and g not in definition.group_by]
        if unknown:
            raise Problem(
                422,
                "Unknown group_by",
                f"{', '.join(unknown)} not among this meter's dimensions: {', '.join(['subject', *definition.group_by])}.",
                kind="unknown-group-by",
                location="query.group_by",
            )
        subjects = [s for s in dict.fromkeys(subject) if s]  # an empty `subject=` filters nothing, as before

        limit = platform.settings.max_query_buckets

        def query(tx: Tx) -> list[MeterRow]:
            if views.buckets_over(
                tx,
                principal.tenant_id or "",
                slug,
                start=from_,
                end=to,
                window_size=window_size,
                detailed=bool(groups or subjects),
                subjects=subjects,
                limit=limit,
            ):
                raise Problem(
                    422,
                    "Query too large",
                    f"This query would combine more than {limit} stored buckets (OMNI_MAX_QUERY_BUCKETS): "
                    "narrow `from` and `to`, filter by `subject`, or group by fewer dimensions.",
                    kind="query-too-large",
                )
            return views.query_meter(
                tx,
                principal.tenant_id or "",
                definition,
                start=from_,
                end=to,
                window_size=window_size,
                group_by=list(dict.fromkeys(g for g in groups if g != "subject")),
                by_subject="subject" in groups or len(subjects) == 1,
                subjects=subjects,
            )

        if as_of is None:
            rows = query(tx)
    if as_of is not None:  # the buckets as they stood then, folded from the log into a store of their own
        past = from_thread.run(meter_as_of, platform.log, definition, principal.tenant_id or "", as_of)
        try:
            with past.transaction() as past_tx:
                rows = query(past_tx)
        finally:
            past.close()
    body: dict[str, Any] = {
        "meter": slug,
        "aggregation": definition.aggregation.value,
        "window_size": window_size.value if window_size else None,
        "from": _utc_text(from_),
        "to": _utc_text(to),
        "data": [
            {
                "window_start": _utc_text(row.window_start),
                "window_end": _utc_text(row.window_end),
                "value": row.value,
                "subject": row.subject or None,  # usage consumed without a subject: null, as a missing dimension is
                "group_by": row.group_by,
            }
            for row in rows
        ],
    }
    return ExactJSONResponse(body)
