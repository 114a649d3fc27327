"""Meters: defined by the admin, queried by tenants over their own usage, and watched live."""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any

from anyio import from_thread
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from api.as_of import DESCRIPTION as AS_OF
from api.as_of import check as as_of_check
from api.deps import AdminDep, CallerDep, PlatformDep, TenantDep, command_context, whole_minute
from api.meter_watch import EVENT_STREAM, MeterWatches, WatchFull
from api.problems import ExactJSONResponse, Problem
from api.relaying import run_command
from api.roles import RoleFirstRoute
from api.tenant_reads import read_in_thread
from commands.errors import NotFound
from omni import metrics
from omni.bootstrap import Platform
from projections.meter_query import MeterRow
from schemas.api import MeterList, MeterQueryResult
from schemas.cloudevents import Rfc3339Time
from schemas.meters import MeterDefinition, MeterDescription, WindowSize
from stores import views
from stores.database import Tx
from streams.replay import meter_as_of

router = APIRouter(prefix="/v1/meters", tags=["meters"], route_class=RoleFirstRoute)


@router.post("", status_code=201, response_model=MeterDefinition)
async def define_meter(body: MeterDefinition, request: Request, platform: PlatformDep, admin: AdminDep) -> MeterDefinition:
    """Define a meter. It covers every event already on the log, not only new ones."""
    await run_command(platform, platform.control.define_meter, command_context(request, admin), body)
    return body


@router.patch("/{slug}", response_model=MeterDefinition, responses={404: {}, 409: {}, 422: {}})
async def describe_meter(
    slug: str, body: MeterDescription, request: Request, platform: PlatformDep, admin: AdminDep
) -> MeterDefinition:
    """Change a meter's description. What a meter counts never changes under its slug (define
    another one, which covers the whole history too); a description may change at any time."""
    return await run_command(platform, platform.control.describe_meter, command_context(request, admin), slug, body.description)


@router.delete("/{slug}", status_code=204, response_class=Response, responses={404: {}, 409: {}})
async def delete_meter(slug: str, request: Request, platform: PlatformDep, admin: AdminDep) -> Response:
    """Delete a meter for good: its usage views are dropped, the folds stop counting it, and its
    slug is not defined again. 409 `meter-in-use` while a plan (any version) or an override names it."""
    await run_command(platform, platform.control.delete_meter, command_context(request, admin), slug)
    return Response(status_code=204)


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


# `filter_group_by[model]=large`: OpenAPI's deepObject style, as OpenMeter's `filterGroupBy[model]`.
FILTER = re.compile(r"filter_group_by\[([^\[\]]*)\]")
FILTER_PARAMETER = {
    "name": "filter_group_by",
    "in": "query",
    "required": False,
    "style": "deepObject",
    "explode": True,
    "description": (
        "Only usage whose dimension holds this value: `filter_group_by[model]=large`. Repeat it for several "
        "values of one dimension (any of them), name several dimensions (each must hold). A number, `true`, "
        "`false` or `null` (no such value in the event) also matches that typed value."
    ),
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
}


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


# Files of the zone database that are no zone of the IANA's: `localtime` is the host's own clock zone
# (a link to /etc/localtime), so answers would change with the server they came from.
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
LONGEST_ZONE_NAME = 64  # the longest IANA name has 32 characters


@functools.lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - NOT_ZONES


def _zone(name: str) -> tzinfo:
    """The IANA time zone a query's windows follow (UTC itself for `UTC`); 422 for another name.
    Only names in the zone database: ZoneInfo would also open a file a name leads to."""
    if name in ("UTC", "Etc/UTC"):
        return UTC
    if len(name) > LONGEST_ZONE_NAME or name not in _zone_names():
        raise Problem(
            422,
            "Unknown time zone",
            f"`{name if len(name) <= LONGEST_ZONE_NAME else name[:LONGEST_ZONE_NAME] + '…'}` is not an IANA time zone "
            "name (such as Europe/Berlin, America/New_York or Asia/Kolkata).",
            kind="unknown-time-zone",
            location="query.window_time_zone",
        )
    return zoneinfo.ZoneInfo(name)


def _split(values: list[str]) -> list[str]:
    """`group_by=model,region` as `group_by=model&group_by=region`: a dimension's name is an
    identifier (schemas.meters), so it never holds a comma. Subjects may: they are never split.
    An empty name (`group_by=`, `group_by=model,`) is 422: ignored, it would answer another question."""
    parts = [part for value in values for part in value.split(",")]
    if "" in parts:
        raise Problem(
            422, "Invalid group_by", "group_by names a dimension (or `subject`): an empty name asks nothing.",
            kind="invalid-parameter", location="query.group_by",
        )  # fmt: skip
    return parts


@dataclass(frozen=True, slots=True)
class MeterQuestion:
    """What a query or a watch asks of one meter, checked as far as it can be without reading anything."""

    slug: str
    start: datetime | None  # inclusive, a whole minute
    end: datetime | None  # exclusive, a whole minute
    window_size: WindowSize | None
    zone_name: str  # the IANA time zone of the windows, as asked
    zone: tzinfo  # that zone
    groups: list[str]  # `subject` and dimensions, as asked
    subjects: list[str]  # only these subjects (none: every one)
    filters: dict[str, list[str]]  # only usage whose dimension holds one of these values, by dimension


async def meter_question(
    request: Request,
    slug: str,
    from_: Annotated[Rfc3339Time | None, Query(alias="from", description="Inclusive, RFC 3339, whole minute")] = None,
    to: Annotated[Rfc3339Time | None, Query(description="Exclusive, RFC 3339, whole minute")] = None,
    window_size: Annotated[WindowSize | None, Query()] = None,
    window_time_zone: Annotated[
        str,
        Query(
            description="The IANA time zone whose local hours, days and months the windows follow (such as "
            "America/New_York); answers stay in UTC",
        ),
    ] = "UTC",
    group_by: Annotated[
        list[str], Query(description="Dimensions to group by; `subject` is one. Repeat it, or separate names with commas")
    ] = [],  # noqa: B006
    subject: Annotated[
        list[str], Query(description="Only these subjects: repeat it for several (taken whole: a subject may hold a comma)")
    ] = [],  # noqa: B006
) -> MeterQuestion:
    # Told back in UTC, as every row's window is: a bound sent with another offset made a row cut
    # to it start at "10:00:00+05:30" and end at "…Z".
    from_, to = _in_utc("from", from_), _in_utc("to", to)
    if from_ is not None:
        whole_minute("from", from_)
    if to is not None:
        whole_minute("to", to)
    if from_ is not None and to is not None and from_ >= to:
        raise Problem(422, "Invalid time range", "`from` must be before `to`.", kind="invalid-range", location="query.to")
    if "" in subject:  # ignored, it would answer every subject's usage
        raise Problem(
            422,
            "Invalid subject",
            "subject names a subject: it cannot be empty.",
            kind="invalid-parameter",
            location="query.subject",
        )
    subjects = list(dict.fromkeys(subject))
    filters: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if (asked := FILTER.fullmatch(name)) is not None:
            values = filters.setdefault(asked.group(1), [])
            if value not in values:
                values.append(value)
    zone = _zone(window_time_zone)
    return MeterQuestion(slug, from_, to, window_size, window_time_zone, zone, _split(group_by), subjects, filters)


QuestionDep = Annotated[MeterQuestion, Depends(meter_question)]


def _definition(tx: Tx, question: MeterQuestion) -> MeterDefinition:
    """The meter asked about, or 404; 422 for a dimension it does not have."""
    definition = views.meter_definition(tx, question.slug)
    if definition is None:
        raise NotFound(f"meter {question.slug!r} not found")
    unknown = [g for g in question.groups if g != "subject" and g not in definition.group_by]
    if unknown:
        raise Problem(
            422,
            "Unknown group_by",
            f"{', '.join(unknown)} not among this meter's dimensions: {', '.join(['subject', *definition.group_by])}.",
            kind="unknown-group-by",
            location="query.group_by",
        )
    unknown = [name for name in question.filters if name not in definition.group_by]
    if unknown:
        dimensions = ", ".join(definition.group_by) or "none"
        reason = f"not among this meter's dimensions ({dimensions}; filter subjects with `subject`)"
        raise Problem(
            422,
            "Unknown filter_group_by",
            f"{', '.join(repr(n) for n in unknown)}: {reason}.",
            kind="unknown-group-by",
            errors=[{"location": f"query.filter_group_by[{name}]", "reason": f"{name!r} is {reason}"} for name in unknown],
        )
    return definition


def _rows(tx: Tx, tenant_id: str, definition: MeterDefinition, question: MeterQuestion, limit: int) -> list[MeterRow]:
    """The buckets' answer, or 422 `query-too-large` past `limit` stored buckets (counted first)."""
    groups, subjects = question.groups, question.subjects
    filters = views.dimension_filters(definition, question.filters)
    if views.buckets_over(
        tx,
        tenant_id,
        question.slug,
        start=question.start,
        end=question.end,
        window_size=question.window_size,
        detailed=bool(groups or subjects or filters),
        subjects=subjects,
        limit=limit,
        filters=filters,
        zone=question.zone,
    ):
        raise Problem(
            422,
            "Query too large",
            f"This query would combine more than {limit} stored buckets (OMNI_MAX_QUERY_BUCKETS): "
            "narrow `from` and `to`, filter by `subject` or `filter_group_by`, or group by fewer dimensions.",
            kind="query-too-large",
        )
    return views.query_meter(
        tx,
        tenant_id,
        definition,
        start=question.start,
        end=question.end,
        window_size=question.window_size,
        group_by=list(dict.fromkeys(g for g in groups if g != "subject")),
        by_subject="subject" in groups or len(subjects) == 1,
        subjects=subjects,
        filters=filters,
        zone=question.zone,
    )


def _body(definition: MeterDefinition, question: MeterQuestion, rows: list[MeterRow]) -> dict[str, Any]:
    return {
        "meter": question.slug,
        "aggregation": definition.aggregation.value,
        "window_size": question.window_size.value if question.window_size else None,
        "window_time_zone": question.zone_name,
        "from": _utc_text(question.start),
        "to": _utc_text(question.end),
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


def meter_answer(platform: Platform, tenant_id: str, question: MeterQuestion) -> dict[str, Any]:
    """The live views' answer to `question` for `tenant_id` (blocking: call it from a worker thread).
    On a connection of its own (embedded mode): a long query holds up no other tenant's request."""
    with metrics.VIEW_QUERY.labels("meters").time(), platform.db.reading() as tx:
        definition = _definition(tx, question)
        rows = _rows(tx, tenant_id, definition, question, platform.settings.max_query_buckets)
    return _body(definition, question, rows)


@router.get(
    "/{slug}/query",
    response_model=MeterQueryResult,
    response_class=ExactJSONResponse,
    responses={429: {"description": "This tenant already runs its most meter queries at once, and too many more wait"}},
    openapi_extra={"parameters": [FILTER_PARAMETER]},
)
async def query_meter(
    question: QuestionDep,
    request: Request,
    platform: PlatformDep,
    principal: TenantDep,
    as_of: Annotated[Rfc3339Time | None, Query(description=f"{AS_OF} (`to` bounds event time instead)")] = None,
) -> ExactJSONResponse:
    """The caller's usage on one meter, per window and group."""
    as_of_check(as_of)
    tenant_id = principal.tenant_id or ""
    answer = functools.partial(_query_meter, platform, tenant_id, question, as_of)
    return await read_in_thread(
        request, principal, answer, heavy=True
    )  # in the tenant's turn: no thread, no connection held waiting


def _query_meter(platform: Platform, tenant_id: str, question: MeterQuestion, as_of: datetime | None) -> ExactJSONResponse:
    if as_of is None:
        return ExactJSONResponse(meter_answer(platform, tenant_id, question))
    with platform.db.reading() as tx:
        definition = _definition(tx, question)
    # The buckets as they stood then, folded from the log into a store of their own.
    past = from_thread.run(meter_as_of, platform.log, definition, tenant_id, as_of)
    try:
        with past.transaction() as past_tx:
            rows = _rows(past_tx, tenant_id, definition, question, platform.settings.max_query_buckets)
    finally:
        past.close()
    return ExactJSONResponse(_body(definition, question, rows))


WATCH_ANSWER = {
    "description": (
        "Server-Sent Events: `usage` events, each the meter's answer as `GET .../query` gives it (`data`, one "
        "JSON line; `id`, a digest of it), first at once and then whenever it changes; `problem` (RFC 9457) "
        "before the server ends a watch it cannot go on with; comment lines while nothing changes."
    ),
    # Each event, as OpenAPI 3.1 tools read the `schema` of an event stream (3.2 calls it `itemSchema`).
    "content": {
        EVENT_STREAM: {
            "schema": {
                "type": "object",
                "properties": {
                    "event": {"type": "string", "enum": ["usage", "problem"]},
                    "id": {"type": "string", "description": "`usage`: a digest of its answer (send it as Last-Event-ID)"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "description": "`usage`: the query's answer (MeterQueryResult); `problem`: an RFC 9457 problem",
                    },
                    "retry": {"type": "integer", "description": "Milliseconds to wait before reconnecting"},
                },
                "required": ["data"],
            }
        }
    },
}


@router.get(
    "/{slug}/watch",
    response_class=StreamingResponse,
    responses={200: WATCH_ANSWER, 429: {"description": "This tenant already holds its watches' most"}},
    openapi_extra={"parameters": [FILTER_PARAMETER]},
)
async def watch_meter(
    question: QuestionDep,
    request: Request,
    platform: PlatformDep,
    principal: TenantDep,
    last_event_id: Annotated[
        str | None, Header(description="The `id` of the last `usage` event received: not sent again while it holds")
    ] = None,
) -> StreamingResponse:
    """The caller's usage on one meter, live: the query's answer again each time the views change it."""
    watches: MeterWatches = request.app.state.watches
    tenant_id = principal.tenant_id or ""
    try:
        watch = watches.open(tenant_id, request.headers.get("authorization", ""), request.url.path)
    except WatchFull as full:
        raise Problem(
            429, "Too many watches", str(full), kind="too-many-watches", headers={"Retry-After": str(full.retry_after)}
        ) from None
    try:
        first = await watch.answer(lambda: meter_answer(platform, tenant_id, question), first=True)  # 404, 422, 429 as a query
    except BaseException:
        watch.close()
        raise
    return StreamingResponse(
        watch.events(first, lambda: meter_answer(platform, tenant_id, question), last_event_id),
        media_type=EVENT_STREAM,
        headers={"X-Accel-Buffering": "no"},  # a proxy in front (nginx) passes each event on at once
    )
