"""Quotas: consume (the gateway's check-and-record), reads of each quota, threshold notifications."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import uuid_utils
from anyio import from_thread
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api import as_of, tracing
from api.deps import CallerDep, PlatformDep, TenantDep, acting_tenant, named_tenant
from api.exact_json import ExactJsonRoute
from api.problems import Problem, time_and_id_cursor
from api.tenant_reads import read_in_thread
from commands.control_plane import PLATFORM, Principal
from commands.errors import NotFound
from commands.ingest import data_problems, too_large_stored
from omni import metrics
from omni.bootstrap import Platform
from omni.personal_data import KeysMissing
from projections.gdpr import breach_overdue
from projections.quotas import (
    CONSUME_SOURCE,
    QUOTA_CONSUME,
    REFUSALS_SOURCE,
    REFUSED,
    PeriodKey,
    Quota,
    consume_event_data,
    consume_mark,
    is_additive,
    period_of,
)
from schemas.cloudevents import Rfc3339Time
from schemas.envelope import Actor, Envelope, encode
from schemas.gdpr import BREACH_OVERDUE, BreachOverdueNotification
from schemas.meters import MeterDefinition
from schemas.plans import (
    ConsumeBody,
    ConsumeResult,
    Enforcement,
    NotificationList,
    NotificationPublic,
    Period,
    QuotaList,
    QuotaPublic,
    quantity_json,
)
from schemas.quantities import LEAST_AMOUNT
from schemas.slos import SloAlertNotification
from schemas.suspensions import TenantStatusNotification
from stores import gdpr as gdpr_store
from stores import plans as plan_store
from stores import quotas as quota_store
from stores import slos as slo_store
from stores import suspensions as suspension_store
from stores import views
from stores.suspensions import Suspension
from streams.log import LogUnavailable
from streams.projectors import CATALOG_APPLIED
from streams.quota_ledger import ConsumeOutcome, ConsumeRequest, QuotaLedger, consume_fingerprint
from streams.replay import meters_as_of

REPLAYED = "Idempotent-Replayed"  # as api/idempotency.py answers every POST's replay
router = APIRouter(prefix="/v1", tags=["quotas"], route_class=ExactJsonRoute)


def _ledger(platform: Platform) -> QuotaLedger:
    if platform.quotas is None:
        raise Problem(503, "Quotas unavailable", "This process keeps no quota counters.", kind="quotas-unavailable")
    return platform.quotas


@dataclass(frozen=True, slots=True)
class ConsumeCatalog:
    """What consume reads from the catalog: the meter's definition, the tenant's quotas, its suspension."""

    definition: MeterDefinition | None
    quotas: dict[str, Quota]
    suspension: Suspension | None


async def _catalog(platform: Platform, meter: str, tenant_id: str) -> ConsumeCatalog:
    """The meter's definition, the tenant's quotas and suspension: kept in memory while they hold
    (omni.catalog_cache), else read from the views, in a worker thread."""
    cache = platform.catalog
    found_meter, definition = cache.get(("meter", meter))
    found_tenant, tenant = cache.get(("tenant", tenant_id))
    if found_meter and found_tenant:
        return ConsumeCatalog(definition, *tenant)

    def read() -> ConsumeCatalog:
        with platform.db.transaction() as tx:
            applied = views.relay_position(tx, CATALOG_APPLIED)  # first: what follows is at least this new
            definition = views.meter_definition(tx, meter)
            quotas = plan_store.quotas_of(tx, tenant_id)
            suspension = suspension_store.suspension(tx, tenant_id)
        cache.put(("meter", meter), applied, definition)
        cache.put(("tenant", tenant_id), applied, (quotas, suspension))
        return ConsumeCatalog(definition, quotas, suspension)

    return await run_in_threadpool(read)


def _z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@router.post(
    "/quotas/{meter}/consume",
    response_model=ConsumeResult,
    responses={403: {}, 404: {}, 409: {}, 422: {}, 429: {}, 503: {}},
)
async def consume(
    meter: str, body: ConsumeBody, platform: PlatformDep, principal: TenantDep, response: Response
) -> ConsumeResult:
    """Check and record usage before serving a request: the usage is on the log (an event of the
    meter's type, whose id is the idempotency key) when the answer is 200. A hard limit refuses
    with 429 what would pass it; a retry with the same idempotency key returns the first answer and
    counts nothing, with `Idempotent-Replayed: true` (as every POST's replay), so a gateway can
    tell a consume counted now from one counted before. `response`: where that header is set (the
    paths that answer consume themselves, api/consume_path.py and api/lean_consume.py, pass one)."""
    ledger = _ledger(platform)
    tenant_id = principal.tenant_id or ""

    catalog = await _catalog(platform, meter, tenant_id)
    definition = catalog.definition
    if definition is None:
        raise NotFound(f"meter {meter!r} not found")
    quota = catalog.quotas.get(meter)
    if not is_additive(definition):
        raise Problem(  # one title per problem type (RFC 9457, 3.1.3), as the plan routes' invalid-quota
            422,
            "Invalid quota",
            f"meter {meter!r} aggregates {definition.aggregation.value}: only SUM and COUNT meters have quotas.",
            kind="invalid-quota",
            location="path.meter",
        )
    amount = body.amount
    if definition.aggregation.value == "COUNT" and amount != 1:
        raise Problem(
            422,
            "Invalid amount",
            f"meter {meter!r} counts events: each consume counts one (amount 1).",
            kind="invalid-amount",
            location="body.amount",
        )
    if amount != amount.to_integral_value() and Decimal(repr(float(amount))) != amount:
        raise Problem(
            422,
            "Invalid amount",
            "amount has more significant digits than the log's JSON numbers keep exactly (15).",
            kind="invalid-amount",
            location="body.amount",
        )
    try:
        data = consume_event_data(definition, amount, body.data)
    except ValueError as unusable:
        raise Problem(422, "Invalid quota", str(unusable), kind="invalid-quota", location="path.meter") from None
    # The usage event is held to the rules of a client's events (POST /v1/events): what the views
    # cannot store would be dead-lettered by the meters after consume counted it.
    if problems := data_problems(data, platform.policy):
        raise Problem(422, "Invalid data", "; ".join(problems), kind="invalid-data", location="body.data")
    now = platform.clock()
    if catalog.suspension is not None:
        outcome = await _kept_while_suspended(ledger, tenant_id, meter, amount, body, now, catalog.suspension)
    else:
        request = await _consume_request(platform, definition, quota, meter, amount, body, data, principal, now)
        outcome = await ledger.consume(request)
    if outcome.replayed:
        metrics.labelled(metrics.QUOTA_DECISIONS, "replayed").inc()
    else:
        metrics.labelled(metrics.QUOTA_DECISIONS, "accepted" if outcome.decision.accepted else "refused").inc()
    if outcome.in_progress:
        raise Problem(
            409,
            "Consume in progress",
            "A consume with this idempotency key is still being recorded; retry it in a moment.",
            kind="consume-in-progress",
            headers={"Retry-After": "1"},
        )
    if outcome.conflict:
        raise Problem(
            409,
            "Idempotency key reused",
            "This idempotency key was used for another consume (meter, amount or subject).",
            kind="idempotency-key-reused",
        )
    decision = outcome.decision
    replayed = {REPLAYED: "true"} if outcome.replayed else {}
    if not decision.accepted:
        retry_after = max(1, math.ceil((outcome.period.end - now).total_seconds()))
        raise Problem(
            429,
            "Quota exceeded",
            f"{meter}: {quantity_json(decision.used)} of {quantity_json(decision.limit or Decimal(0))} used in {outcome.period.label}; "
            f"{quantity_json(amount)} more would pass the limit"
            + (
                "."
                if decision.limit is None or amount <= decision.limit
                else ", and passes the whole limit: no period takes it at once."
            ),
            kind="quota-exceeded",
            headers={"Retry-After": str(retry_after), **replayed},
            members={
                "meter": meter,
                "limit": quantity_json(decision.limit or Decimal(0)),
                "used": quantity_json(decision.used),
                "period": outcome.period.label,
                "period_end": _z(outcome.period.end),
            },
        )
    response.headers.update(replayed)
    return ConsumeResult(
        used=quantity_json(decision.used),
        remaining=quantity_json(decision.remaining) if decision.remaining is not None else None,
        limit=quantity_json(decision.limit) if decision.limit is not None else None,
        period_end=_z(outcome.period.end),
    )


async def _consume_request(
    platform: Platform,
    definition: MeterDefinition,
    quota: Quota | None,
    meter: str,
    amount: Decimal,
    body: ConsumeBody,
    data: dict[str, Any],
    principal: Principal,
    now: datetime,
) -> ConsumeRequest:
    """What the ledger decides on: the usage event to append if accepted (its personal values sealed),
    and the refusal to append if refused."""
    tenant_id = principal.tenant_id or ""
    period = period_of(now, quota.entitlement.period if quota else Period.DAY)
    actor = Actor(principal.key_id)
    # The request's span: its records join the caller's trace, as an ingested event's do.
    traceparent = tracing.current_traceparent()
    usage = Envelope(
        id=str(uuid_utils.uuid7()),
        type=definition.event_type,
        tenant_id=tenant_id,
        source=CONSUME_SOURCE,
        source_id=body.idempotency_key,
        event_time=now,
        recorded_time=now,
        data=data,
        subject=body.subject,
        actor=actor,
        traceparent=traceparent,
        extensions={QUOTA_CONSUME: consume_mark(meter, period)},
    )
    usage = await _sealed(platform, usage)
    value = encode(usage)
    if len(value) > platform.policy.max_event_bytes:
        raise Problem(
            422,
            "Invalid data",
            too_large_stored(len(value), platform.policy.max_event_bytes),
            kind="invalid-data",
            location="body.data",
        )
    refusal = Envelope(
        id=str(uuid_utils.uuid7()),
        type=REFUSED,
        tenant_id=tenant_id,
        source=REFUSALS_SOURCE,
        source_id=body.idempotency_key,
        event_time=now,
        recorded_time=now,
        data={
            "meter": meter,
            "amount": quantity_json(amount),
            "limit": quantity_json(quota.entitlement.limit) if quota else None,
            "period": period.label,
        },
        subject=body.subject,
        actor=actor,
        traceparent=traceparent,
    )
    request = ConsumeRequest(
        tenant_id=tenant_id,
        meter=meter,
        amount=amount,
        idempotency_key=body.idempotency_key,
        subject=body.subject,
        entitlement=quota.entitlement if quota else None,
        period=period,
        usage=(usage, value),
        refusal=refusal,
    )
    return request


async def _kept_while_suspended(
    ledger: QuotaLedger, tenant_id: str, meter: str, amount: Decimal, body: ConsumeBody, now: datetime, suspension: Suspension
) -> ConsumeOutcome:
    """A suspended tenant's consume: nothing decided nor counted (nor sealed), only an answer kept from
    before the suspension given again; else 403. Kept answers that cannot be read (Redis away) are
    none: the refusal stands, where a 503 would let a gateway that fails open serve the tenant."""
    try:
        kept = await ledger.kept(tenant_id, body.idempotency_key, consume_fingerprint(meter, amount, body.subject), now)
    except LogUnavailable:
        kept = None
    if kept is not None and not (kept.decision.accepted or kept.conflict or kept.in_progress) and now >= kept.period.end:
        kept = None  # a refusal of a period that has ended answers no retry (QuotaLedger.consume): the 403 does
    if kept is None:
        metrics.labelled(metrics.QUOTA_DECISIONS, "suspended").inc()
        raise _suspended(tenant_id, suspension)
    return kept


def _suspended(tenant_id: str, suspension: Suspension) -> Problem:
    return Problem(
        403,
        "Tenant suspended",
        f"tenant {tenant_id} is suspended ({suspension.reason}): its consumes are refused until it is resumed.",
        kind="tenant-suspended",
        members={"suspended_at": suspension.since, "reason": suspension.reason},
    )


async def _sealed(platform: Platform, usage: Envelope) -> Envelope:
    """The usage event with its personal values sealed, as POST /v1/events seals them (README, "GDPR")."""
    envelopes = [usage]
    try:
        platform.personal.protect(envelopes, may_block=False)
    except KeysMissing:  # the person's key is not in memory: read (or made) off the event loop
        await run_in_threadpool(platform.personal.protect, envelopes, may_block=True)
    return envelopes[0]


def _tenant_of(principal: CallerDep, tenant: str | None) -> str:
    """The caller's own tenant, or for the admin the one named by `?tenant=` (which it must name)."""
    named = named_tenant(principal, tenant)
    if named is None:
        raise Problem(
            422, "Tenant needed", "The admin names the tenant: ?tenant=ID.", kind="tenant-needed", location="query.tenant"
        )
    return named


async def _quotas(platform: Platform, tenant_id: str) -> list[QuotaPublic]:
    """Usage from the hot counters, which hold consumes at once; from the views where there are none."""
    now = platform.clock()

    def from_views() -> tuple[list[tuple[str, Quota, PeriodKey, Decimal]], bool]:
        with platform.db.transaction() as tx:
            if views.tenant(tx, tenant_id) is None:
                raise NotFound(f"tenant {tenant_id} not found")
            definitions = {d.slug: d for d in views.meter_definitions(tx)}
            found = []
            for meter, quota in plan_store.quotas_of(tx, tenant_id).items():
                period = period_of(now, quota.entitlement.period)
                used = quota_store.period_total(tx, tenant_id, definitions[meter], period) if meter in definitions else Decimal(0)
                found.append((meter, quota, period, used))
            return found, suspension_store.suspension(tx, tenant_id) is not None

    found = []
    folded_quotas, suspended = await run_in_threadpool(from_views)
    for meter, quota, period, folded in folded_quotas:
        counted = await platform.quotas.used(tenant_id, meter, period) if platform.quotas is not None else None
        found.append(_public(meter, quota, period, folded if counted is None else counted, suspended=suspended))
    return found


def _public(meter: str, quota: Quota, period: PeriodKey, used: Decimal, *, suspended: bool) -> QuotaPublic:
    e = quota.entitlement
    return QuotaPublic(
        meter=meter,
        limit=quantity_json(e.limit),
        used=quantity_json(used),
        remaining=quantity_json(max(e.limit - used, Decimal(0))),
        # OpenMeter's entitlement answer (has access, balance, usage, overage), as a gateway reads it.
        # A suspended tenant has none: its consumes are refused whatever its usage.
        # Whether the least consume would be taken (a fact of finer grain may leave less than that).
        has_access=not suspended and (e.enforcement is not Enforcement.HARD or used + LEAST_AMOUNT <= e.limit),
        overage=quantity_json(max(used - e.limit, Decimal(0))),
        period=e.period,
        period_start=_z(period.start),
        period_end=_z(period.end),
        enforcement=e.enforcement,
        thresholds=e.thresholds,
        source=quota.source,
        plan=quota.plan,
    )


@router.get("/quotas", response_model=QuotaList, responses={404: {}, 422: {}, 429: {}})
async def list_quotas(
    request: Request,
    platform: PlatformDep,
    principal: CallerDep,
    tenant: Annotated[str | None, Query(description="Admin only: whose quotas")] = None,
    as_of_: Annotated[Rfc3339Time | None, Query(alias="as_of", description=as_of.DESCRIPTION)] = None,
) -> QuotaList:
    """Each quota of the tenant, with its usage in the current period (with `as_of`: in the period
    holding that instant, as the platform knew both then)."""
    return QuotaList(data=await _quotas_at(request, platform, principal, _tenant_of(principal, tenant), as_of_))


@router.get("/quotas/{meter}", response_model=QuotaPublic, responses={404: {}, 422: {}, 429: {}})
async def get_quota(
    meter: str,
    request: Request,
    platform: PlatformDep,
    principal: CallerDep,
    tenant: Annotated[str | None, Query(description="Admin only: whose quota")] = None,
    as_of_: Annotated[Rfc3339Time | None, Query(alias="as_of", description=as_of.DESCRIPTION)] = None,
) -> QuotaPublic:
    """One quota of the tenant, with its usage in the current period (or as of an instant)."""
    for quota in await _quotas_at(request, platform, principal, _tenant_of(principal, tenant), as_of_):
        if quota.meter == meter:
            return quota
    raise NotFound(f"no quota on meter {meter!r}")


async def _quotas_at(
    request: Request, platform: Platform, principal: Principal, tenant_id: str, moment: datetime | None
) -> list[QuotaPublic]:
    as_of.check(moment)
    if moment is None:
        return await _quotas(platform, tenant_id)
    as_then = functools.partial(_quotas_as_of, platform, tenant_id, moment)
    return await read_in_thread(request, principal, as_then, heavy=True)  # a fold of the log


def _quotas_as_of(platform: Platform, tenant_id: str, moment: datetime) -> list[QuotaPublic]:
    """In a worker thread: the quotas in force at `moment` (plan, overrides) from the catalog as the
    log held it then, and their usage in the period holding `moment` from the events recorded by then."""
    with platform.db.transaction() as tx:
        if views.tenant(tx, tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} not found")
    with as_of.catalog_as_of(platform, moment) as past, past.transaction() as tx:
        definitions = {d.slug: d for d in views.meter_definitions(tx)}
        quotas = plan_store.quotas_of(tx, tenant_id)
        suspended = suspension_store.suspension(tx, tenant_id) is not None
    counted = [definitions[meter] for meter in quotas if meter in definitions]
    usage = from_thread.run(meters_as_of, platform.log, counted, tenant_id, moment) if counted else None
    try:
        found = []
        for meter, quota in quotas.items():
            period = period_of(moment, quota.entitlement.period)
            used = Decimal(0)
            if usage is not None and meter in definitions:
                with usage.transaction() as tx:
                    used = quota_store.period_total(tx, tenant_id, definitions[meter], period)
            found.append(_public(meter, quota, period, used, suspended=suspended))
        return found
    finally:
        if usage is not None:
            usage.close()


@router.get("/notifications", response_model=NotificationList, responses={404: {}, 422: {}})
def list_notifications(
    platform: PlatformDep,
    principal: CallerDep,
    tenant: Annotated[
        str | None, Query(description="Admin only: whose notifications (none: the platform's, its SLOs' and overdue breaches')")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[str | None, Query(min_length=1, description="The `next_before` of the previous page")] = None,
) -> NotificationList:
    """The tenant's notifications (quota thresholds crossed, SLO alerts fired and resolved), newest first;
    the platform's (the admin's without `?tenant=`) also hold the overdue breaches' notices."""
    cursor = None if before is None else time_and_id_cursor(before)
    tenant_id = acting_tenant(platform, principal, tenant)  # an unknown tenant is 404, as for quotas
    with metrics.VIEW_QUERY.labels("notifications").time(), platform.db.transaction() as tx:
        rows = quota_store.notifications(tx, tenant_id, limit, cursor)
        alerts = slo_store.alert_notifications(tx, tenant_id, limit, cursor)
        overdue = gdpr_store.overdue_noticed(tx) if tenant_id == PLATFORM else []
        statuses = suspension_store.notifications(tx, tenant_id, limit, cursor)
    found: list[NotificationPublic | SloAlertNotification | BreachOverdueNotification | TenantStatusNotification] = [
        NotificationPublic(
            id=r[0],
            type=r[2],  # type: ignore[arg-type]
            tenant_id=r[1],
            meter=r[3],
            period=PeriodKey.parse(r[4]).label,
            threshold=r[5],
            limit=quantity_json(Decimal(r[6])),
            used=quantity_json(Decimal(r[7])),
            occurred_at=r[8],
        )
        for r in rows
    ]
    found += [
        SloAlertNotification(
            id=a[0],
            type=a[2],
            tenant_id=a[1],
            slo=a[3],
            version=a[4],
            alert=a[5],
            burn_rates=a[6],
            occurred_at=a[7],  # type: ignore[arg-type]
        )
        for a in alerts
    ]
    found += [
        TenantStatusNotification(id=i, type=kind, tenant_id=t, reason=reason, occurred_at=at)  # type: ignore[arg-type]
        for i, t, kind, reason, at in statuses
    ]
    for breach in overdue:
        notice = breach_overdue(breach.id, breach.detected_at, breach.deadline, breach.scope)
        if cursor is None or (notice.occurred_at, notice.id) < cursor:
            found.append(BreachOverdueNotification(id=notice.id, type=BREACH_OVERDUE, **notice.data()))
    data = sorted(found, key=lambda n: (n.occurred_at, n.id), reverse=True)[:limit]
    next_before = f"{data[-1].occurred_at}~{data[-1].id}" if len(data) == limit else None
    return NotificationList(data=data, next_before=next_before)
