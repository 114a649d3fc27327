"""GDPR: data classes (which values are personal; admin) and data subjects' requests (tenants)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from cryptography.exceptions import InvalidTag
from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import AdminDep, CallerDep, PlatformDep, acting_tenant, command_context
from api.problems import Problem
from api.relaying import run_command
from api.roles import RoleFirstRoute
from commands.control_plane import PLATFORM, Principal
from commands.errors import NotFound
from omni.personal_data import SEALED_DOCUMENT, document_associated_data
from projections.gdpr import breach_deadline
from schemas.cloudevents import TYPE_MAX_LENGTH, admissible_type
from schemas.envelope import format_time
from schemas.gdpr import (
    BreachBody,
    BreachList,
    BreachPublic,
    DataClassBody,
    DataClassList,
    DataClassPublic,
    GdprRequestBody,
    GdprRequestPublic,
    GdprStep,
    RequestKind,
    RequestStatus,
    RetentionBody,
    RetentionPublic,
    legal_deadline,
    sealed_value_read,
)
from schemas.ids import canonical_uuid
from schemas.text import NO_NUL_PATTERN
from stores import gdpr as gdpr_store
from stores import views

router = APIRouter(prefix="/v1", tags=["gdpr"], route_class=RoleFirstRoute)

EXPORTING = {RequestKind.ACCESS.value, RequestKind.PORTABILITY.value}
SubjectsOf = Annotated[
    str | None,
    Query(
        description="Admin only: whose data subjects: a tenant id, or `_platform`, the default: the platform's own, "
        "such as the admin's key as the actor of platform-wide commands (`apikey:admin`). A tenant key acts for its own "
        "subjects only (another tenant's id: 404)."
    ),
]


# `:path`: an event type may hold a `/` (`com.example/chat`), sent as is or as %2F, which the server
# decodes before routing; any text admission takes as a `type` is a data class's name.
@router.put(
    "/data-classes/{event_type:path}",
    response_model=DataClassPublic,
    responses={201: {"model": DataClassPublic, "description": "Defined"}, 404: {}, 409: {}, 422: {}},
)
async def put_data_class(
    event_type: Annotated[
        str,
        Path(
            min_length=1,
            max_length=TYPE_MAX_LENGTH,
            pattern=NO_NUL_PATTERN,
            description="The CloudEvent `type` it covers: any type admission takes (percent-encode what a URL path needs)",
        ),
    ],
    body: DataClassBody,
    request: Request,
    response: Response,
    platform: PlatformDep,
    admin: AdminDep,
) -> DataClassPublic:
    """Declare which values of an event type are personal (201), or change it (200, `version` + 1).
    From the answer on, every API process seals those values of new events at admission. 422 when a
    meter of the type adds, compares or keeps a value the class would seal (it would count nothing)."""
    reasons = await run_in_threadpool(_meters_reading_sealed, platform, event_type, list(body.personal))
    if reasons:
        raise Problem(
            422,
            "Invalid data class",
            f"{len(reasons)} meter(s) of type {event_type!r} read a value this data class would seal.",
            kind="invalid-data-class",
            errors=[{"location": "body.personal", "reason": reason} for reason in reasons],
        )
    found, created = await run_command(
        platform, platform.control.put_data_class, command_context(request, admin), event_type, body
    )
    response.status_code = 201 if created else 200
    return DataClassPublic(
        event_type=event_type, version=found.revision, updated_at=format_time(found.modified_on), definition=body
    )


def _meters_reading_sealed(platform: PlatformDep, event_type: str, personal: list[str]) -> list[str]:
    """Why each meter of `event_type` could not read its value were `personal` sealed (the views'
    definitions: a meter defined a moment ago is checked by its own command against the class)."""
    with platform.db.transaction() as tx:
        meters = [m for m in views.meter_definitions(tx) if m.event_type == event_type]
    return [why for m in meters if (why := sealed_value_read(personal, m)) is not None]


@router.get("/data-classes", response_model=DataClassList)
def list_data_classes(platform: PlatformDep, principal: CallerDep) -> DataClassList:
    """Every data class, at its current version."""
    with platform.db.transaction() as tx:
        rows = gdpr_store.data_classes(tx)
    return DataClassList(
        data=[
            DataClassPublic(event_type=r.event_type, version=r.version, updated_at=r.updated_at, definition=r.definition)
            for r in rows
        ]
    )


@router.get("/data-classes/{event_type:path}", response_model=DataClassPublic, responses={404: {}})
def get_data_class(event_type: str, platform: PlatformDep, principal: CallerDep) -> DataClassPublic:
    """One event type's data class."""
    row = None
    if admissible_type(event_type):
        with platform.db.transaction() as tx:
            row = gdpr_store.data_class(tx, event_type)
    if row is None:
        raise NotFound(f"data class {event_type!r} not found")
    return DataClassPublic(event_type=row.event_type, version=row.version, updated_at=row.updated_at, definition=row.definition)


def _link(principal: Principal, request_id: str, tenant_id: str, tail: str = "") -> str:
    """Where the request is, for this caller: the admin names the tenant unless it is `_platform`."""
    named = principal.is_admin and tenant_id != PLATFORM
    return f"/v1/gdpr/requests/{request_id}{tail}" + (f"?tenant={tenant_id}" if named else "")


def _public(row: gdpr_store.RequestRow, principal: Principal, *, exported: bool) -> GdprRequestPublic:
    """The request as answered; `exported`: its export is kept (not deleted by an erasure since)."""
    received = datetime.fromisoformat(row.received_at)
    done = row.status == RequestStatus.COMPLETED.value and row.kind in EXPORTING and exported
    return GdprRequestPublic(
        id=row.id,
        subject=row.subject,
        kind=RequestKind(row.kind),
        status=RequestStatus(row.status),
        received_at=row.received_at,
        deadline=format_time(legal_deadline(received)),
        steps=[GdprStep(status=RequestStatus(status), step=step, at=at) for status, step, at in row.steps],
        export=_link(principal, row.id, row.tenant_id, "/export") if done else None,
    )


def _row(platform: PlatformDep, principal: Principal, tenant: str | None, request_id: str) -> gdpr_store.RequestRow:
    tenant_id = acting_tenant(platform, principal, tenant)
    canonical = canonical_uuid(request_id)
    row = None
    if canonical is not None:
        with platform.db.transaction() as tx:
            row = gdpr_store.request(tx, tenant_id, canonical)
    if row is None:
        raise NotFound(f"request {request_id} not found")
    return row


@router.post("/gdpr/requests", status_code=202, response_model=GdprRequestPublic, responses={404: {}, 422: {}})
async def create_gdpr_request(
    body: GdprRequestBody,
    request: Request,
    response: Response,
    platform: PlatformDep,
    principal: CallerDep,
    tenant: SubjectsOf = None,
) -> GdprRequestPublic:
    """A data subject's request (Art. 15-17, 20), about one of the caller's own subjects (the admin's:
    the platform's, or a tenant's named by `?tenant=`): recorded (202) and run in the background; its
    status and steps at `Location`."""
    tenant_id = await run_in_threadpool(acting_tenant, platform, principal, tenant)
    ctx = command_context(request, principal)
    received = await run_command(platform, platform.control.receive_gdpr_request, ctx, tenant_id, body.subject, body.kind)
    platform.gdpr_jobs.start(ctx, received)
    response.headers["Location"] = _link(principal, str(received.id), tenant_id)
    at = received.created_on
    return GdprRequestPublic(
        id=str(received.id),
        subject=body.subject,
        kind=body.kind,
        status=RequestStatus.RECEIVED,
        received_at=format_time(at),
        deadline=format_time(legal_deadline(at)),
        steps=[GdprStep(status=RequestStatus.RECEIVED, step="received", at=format_time(at))],
    )


@router.get("/gdpr/requests/{request_id}", response_model=GdprRequestPublic, responses={404: {}})
def get_gdpr_request(
    request_id: str, platform: PlatformDep, principal: CallerDep, tenant: SubjectsOf = None
) -> GdprRequestPublic:
    """A request of the caller's (the admin's: of `?tenant=`): its status, each step with its time,
    and its legal deadline."""
    row = _row(platform, principal, tenant, request_id)
    with platform.db.transaction() as tx:
        exported = gdpr_store.has_export(tx, row.tenant_id, row.id)
    return _public(row, principal, exported=exported)


@router.get(
    "/gdpr/requests/{request_id}/export",
    responses={200: {"content": {"application/json": {}}, "description": "The export"}, 404: {}, 409: {}, 410: {}},
)
def get_gdpr_export(request_id: str, platform: PlatformDep, principal: CallerDep, tenant: SubjectsOf = None) -> Response:
    """An access or portability request's export, once completed: every event and view row about the
    person, opened (JSON)."""
    row = _row(platform, principal, tenant, request_id)
    if row.kind not in EXPORTING:
        article = "an" if row.kind[:1] in "aeiou" else "a"  # an erasure, a rectification
        raise Problem(
            409,
            "No export",
            f"request {request_id} is {article} {row.kind} request: only access and portability make one",
            kind="no-export",
        )
    with platform.db.transaction() as tx:
        document = gdpr_store.export(tx, row.tenant_id, row.id)
    if document is None:
        if row.status == RequestStatus.COMPLETED.value:
            raise Problem(
                410,
                "Export erased",
                f"the export of request {request_id} was deleted: its subject was erased since",
                kind="export-erased",
            )
        raise Problem(
            409, "Export not ready", f"request {request_id} is {row.status}; the export comes once it completed", kind="not-ready"
        )
    if document.startswith(SEALED_DOCUMENT):  # sealed under the person's key (omni.gdpr_jobs)
        document = _opened_export(platform, row, document)
    headers = {"Content-Disposition": f'attachment; filename="gdpr-export-{row.id}.json"'}
    return Response(document, media_type="application/json", headers=headers)


def _opened_export(platform: PlatformDep, row: gdpr_store.RequestRow, sealed: str) -> str:
    """An export kept sealed, opened with its person's key; 410 when the key is gone (erased)."""
    key = platform.personal.keys_for(row.tenant_id, [row.subject], create=False).get(row.subject)
    try:
        if key is None:
            raise ValueError("no key")
        return key.open_document(sealed, document_associated_data(row.tenant_id, row.subject, row.id)).decode()
    except (InvalidTag, ValueError):
        raise Problem(
            410,
            "Export erased",
            f"the export of request {row.id} can no longer be opened: its subject was erased since",
            kind="export-erased",
        ) from None


@router.put(
    "/gdpr/retention",
    response_model=RetentionPublic,
    responses={201: {"model": RetentionPublic, "description": "Set for the first time"}, 404: {}, 409: {}, 422: {}},
)
async def put_retention(
    body: RetentionBody,
    request: Request,
    response: Response,
    platform: PlatformDep,
    principal: CallerDep,
    tenant: SubjectsOf = None,
) -> RetentionPublic:
    """The caller's retention period for personal data (the admin's: `_platform`'s, or `?tenant=`'s):
    once a person has had no event for that many days, their data key is shredded, each as an erasure
    request with the reason `retention` (null: none). 201 the first time, 200 after."""
    tenant_id = await run_in_threadpool(acting_tenant, platform, principal, tenant)
    found, created = await run_command(
        platform, platform.control.put_retention, command_context(request, principal), tenant_id, body
    )
    response.status_code = 201 if created else 200
    return RetentionPublic(personal_data_days=found.days, version=found.revision, updated_at=format_time(found.modified_on))


@router.get("/gdpr/retention", response_model=RetentionPublic, responses={404: {}})
def get_retention(platform: PlatformDep, principal: CallerDep, tenant: SubjectsOf = None) -> RetentionPublic:
    """The caller's retention period for personal data (the admin's: `?tenant=`'s, default `_platform`'s;
    null days and version 0: never set)."""
    tenant_id = acting_tenant(platform, principal, tenant)
    with platform.db.transaction() as tx:
        row = gdpr_store.retention(tx, tenant_id)
    if row is None:
        return RetentionPublic(personal_data_days=None, version=0, updated_at=None)
    return RetentionPublic(personal_data_days=row.days, version=row.version, updated_at=row.at)


def _breach(row: gdpr_store.BreachRow, now: str) -> BreachPublic:
    return BreachPublic(
        id=row.id,
        detected_at=row.detected_at,
        recorded_at=row.recorded_at,
        deadline=row.deadline,
        status=row.status(now),
        notified_at=row.notified_at,
        overdue_notice_at=row.overdue_notice_at,
        scope=row.scope,
        subjects=row.subjects,
        description=row.description,
    )


def _now() -> str:
    return format_time(datetime.now(UTC))


def _breach_row(platform: PlatformDep, breach_id: str) -> gdpr_store.BreachRow:
    canonical = canonical_uuid(breach_id)
    row = None
    if canonical is not None:
        with platform.db.transaction() as tx:
            row = gdpr_store.breach(tx, canonical)
    if row is None:
        raise NotFound(f"breach {breach_id} not found")
    return row


@router.post("/gdpr/breaches", status_code=201, response_model=BreachPublic, responses={422: {}})
async def record_breach(
    body: BreachBody, request: Request, response: Response, platform: PlatformDep, admin: AdminDep
) -> BreachPublic:
    """Record a personal data breach: the supervisory authority is to be notified within 72 hours of
    its detection (Art. 33); past that, one `omni.gdpr.breach_overdue` notification is emitted. A
    detection more than the events' future tolerance (5 minutes by default) ahead of now: 422."""
    breach = await run_command(
        platform, platform.control.record_breach, command_context(request, admin), body, platform.policy.future
    )
    response.headers["Location"] = f"/v1/gdpr/breaches/{breach.id}"
    with platform.db.transaction() as tx:
        row = gdpr_store.breach(tx, str(breach.id))
    if row is not None:
        return _breach(row, _now())
    detected = format_time(body.detected_at)  # the views are behind (read-your-writes missed): from the command
    return BreachPublic(
        id=str(breach.id),
        detected_at=detected,
        recorded_at=format_time(breach.created_on),
        deadline=breach_deadline(detected),
        status="overdue" if _now() >= breach_deadline(detected) else "open",
        notified_at=None,
        overdue_notice_at=None,
        scope=body.scope,
        subjects=body.subjects,
        description=body.description,
    )


@router.get("/gdpr/breaches", response_model=BreachList)
def list_breaches(
    platform: PlatformDep,
    admin: AdminDep,
    status: Annotated[str | None, Query(pattern="^(open|overdue|notified)$", description="Only breaches in this state")] = None,
) -> BreachList:
    """The breach register, most recently detected first, each with its deadline and state."""
    now = _now()
    with platform.db.transaction() as tx:
        rows = gdpr_store.breaches(tx)
    found = [_breach(row, now) for row in rows]
    return BreachList(data=[b for b in found if status is None or b.status == status])


@router.get("/gdpr/breaches/{breach_id}", response_model=BreachPublic, responses={404: {}})
def get_breach(breach_id: str, platform: PlatformDep, admin: AdminDep) -> BreachPublic:
    """One breach of the register."""
    return _breach(_breach_row(platform, breach_id), _now())


@router.post("/gdpr/breaches/{breach_id}/notified", response_model=BreachPublic, responses={404: {}, 409: {}})
async def breach_notified(breach_id: str, request: Request, platform: PlatformDep, admin: AdminDep) -> BreachPublic:
    """The supervisory authority has been notified of the breach (now); again changes nothing."""
    await run_command(platform, platform.control.breach_notified, command_context(request, admin), breach_id)
    return _breach(_breach_row(platform, breach_id), _now())
