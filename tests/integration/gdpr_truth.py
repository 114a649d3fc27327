"""GDPR on the log, for the runner parity test and the soak: the control events of data classes,
requests (each ending, or left unfinished), breaches and retention periods, made by the aggregates
of commands/gdpr.py and relayed as the outbox relays them; sealed personal values as admission
seals them; and the GDPR views read back in the shape of tests/truth.py's `Gdpr`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from commands.control_plane import Tenant
from commands.gdpr import Breach, DataClass, GdprRequest, Retention
from commands.suspensions import status_notice_id
from commands.webhooks import WebhookEndpoints
from omni.personal_data import DataKey, associated_data
from schemas.envelope import Envelope, encode, format_time
from schemas.gdpr import RETENTION, DataClassBody, RequestStatus
from stores import gdpr as gdpr_store
from stores.database import Database
from streams.log import Outgoing
from streams.outbox import to_envelope
from tests.truth import Gdpr


def _later() -> None:
    """The next event's time is after the last one's: the views order a request's steps by time,
    as the commands' own steps always are (a job's steps are commands apart)."""
    start = datetime.now(UTC)
    while datetime.now(UTC) == start:
        pass


def _step(request: GdprRequest, status: RequestStatus, step: str, erased_key: str | None = None) -> None:
    _later()
    if erased_key is not None:
        request.erased(tenant_id=request.tenant_id, subject=request.subject, key_id=erased_key, reason=request.reason)
    request.advance(tenant_id=request.tenant_id, status=status.value, step=step)


def gdpr_control(tenants: Sequence[str], event_type: str, now: datetime) -> list[Envelope]:
    """Every kind of GDPR control event, about `tenants` (three at least): a data class revised and
    another defined; per tenant requests that complete, fail, or stop unfinished (received, or
    running); a retention erasure; breaches open, overdue at `now`, and notified; retention periods
    set, changed and removed."""
    first, second, third = tenants[:3]
    made: list[Any] = []
    chat = DataClass(event_type=event_type, spec=DataClassBody(personal=["$.data.email"]).stored())
    _later()
    chat.revise(event_type=event_type, revision=2, spec=DataClassBody(personal=["$.data.email", "$.data.prompt"]).stored())
    signup = DataClass(event_type="signup", spec=DataClassBody(personal=["$.data.name"], subject_property="$.data.user").stored())
    made += [chat, signup]
    plan = [
        (first, "user-0", "access", [RequestStatus.RUNNING, RequestStatus.COMPLETED]),
        (first, "user-1", "erasure", [RequestStatus.RUNNING, RequestStatus.COMPLETED]),
        (second, "user-2", "portability", [RequestStatus.RUNNING, RequestStatus.FAILED]),
        (second, "user-3", "erasure", [RequestStatus.RUNNING]),  # its process stopped while it ran
        (third, "user-1", "rectification", []),  # its process stopped before it ran
    ]
    for tenant, subject, kind, steps in plan:
        request = GdprRequest(tenant_id=tenant, subject=subject, kind=kind)
        for status in steps:
            erased = f"key-{tenant}-{subject}" if kind == "erasure" and status is RequestStatus.COMPLETED else None
            _step(request, status, f"{kind} {status.value}", erased)
        made.append(request)
    swept = GdprRequest(tenant_id=third, subject="user-2", kind="erasure", reason=RETENTION, key_id=f"key-{third}-user-2")
    _step(swept, RequestStatus.RUNNING, "erasure started")
    _step(swept, RequestStatus.COMPLETED, "data key erased", f"key-{third}-user-2")
    made.append(swept)
    overdue = Breach(detected_at=format_time(now - timedelta(hours=100)), scope="a backup", subjects=40, description=None)
    notified = Breach(detected_at=format_time(now - timedelta(hours=80)), scope="a laptop", subjects=None, description="lost")
    _later()
    notified.authority_notified(notified_at=format_time(now - timedelta(hours=75)))
    fresh = Breach(detected_at=format_time(now - timedelta(hours=1)), scope="a log file", subjects=2, description=None)
    made += [overdue, notified, fresh]
    kept = Retention(tenant_id=first, days=30)
    _later()
    kept.change(tenant_id=first, days=60, revision=2)
    dropped = Retention(tenant_id=second, days=30)
    _later()
    dropped.change(tenant_id=second, days=None, revision=2)
    made += [kept, dropped]
    return [to_envelope(event) for aggregate in made for event in aggregate.collect_events()]


def webhook_control(tenants: Sequence[str]) -> tuple[list[Envelope], set[tuple[str, str, str]]]:
    """Webhook endpoints added and deleted (a tenant's and the platform's), made by the aggregate of
    commands/webhooks.py and relayed as the outbox relays them; and the (id, owner, url) of those left."""
    first, second = tenants[:2]
    made = []
    for owner in (first, second, "_platform"):
        endpoints = WebhookEndpoints(owner=owner)
        for n in range(3):
            endpoints.add(
                owner=owner, endpoint_id=f"{owner}-{n}", url=f"https://h{n}.example/{owner}", description=None, sealed_secret="s"
            )
        endpoints.remove(owner=owner, endpoint_id=f"{owner}-1")
        made.append(endpoints)
    left = {(f"{o}-{n}", o, f"https://h{n}.example/{o}") for o in (first, second, "_platform") for n in (0, 2)}
    return [to_envelope(event) for aggregate in made for event in aggregate.collect_events()], left


def records(envelopes: Sequence[Envelope]) -> list[Outgoing]:
    """The control-topic records the outbox relay would publish."""
    return [Outgoing(e.id, encode(e)) for e in envelopes]


def gdpr_views(db: Database, truth: Gdpr, now: datetime) -> tuple[Gdpr, dict[str, Any]]:
    """The views in the truth's shape (the requests and retention periods the truth names, and a count
    of all), and their rows as stored, to compare one runner's with the other's."""
    with db.transaction() as tx:
        classes = {row.event_type: (row.version, row.definition.stored()) for row in gdpr_store.data_classes(tx)}
        rows = {i: gdpr_store.request(tx, tenant, i) for i, (tenant, *_) in truth.requests.items()}
        (count,) = tx.execute("SELECT count(*) FROM gdpr_requests")[0]
        breaches = gdpr_store.breaches(tx)
        overdue = {row.id for row in gdpr_store.overdue_unnoticed(tx, format_time(now))}
        unfinished = [i for _, i in gdpr_store.unfinished_requests(tx)]
        retention = {t: gdpr_store.retention(tx, t) for t in truth.retention}
    found = Gdpr(
        data_classes=classes,
        requests={i: (r.tenant_id, r.subject, r.kind, r.status) for i, r in rows.items() if r is not None},
        unfinished=unfinished,
        breaches={b.id: (b.detected_at, b.deadline, b.notified_at is not None) for b in breaches},
        overdue=overdue,
        retention={t: (r.days, r.version) for t, r in retention.items() if r is not None},
    )
    stored = {"requests": rows, "count": int(count), "breaches": breaches, "retention": retention}
    return found, stored


def sealed_email(tenant: str, person: str, email: str) -> dict[str, Any]:
    """`email` as admission seals it at `$.data.email` under the person's data key (one per tenant and
    person, made from their names here so that the stream is the same in every run)."""
    secret = hashlib.sha256(f"{tenant}/{person}".encode()).digest()
    key = DataKey(secret[:8].hex(), secret)
    return key.seal({"$.data.email": email}, associated_data(tenant, person))["$.data.email"]


def suspension_control() -> tuple[list[Envelope], dict[str, str | None]]:
    """Tenants suspended and resumed, made by the Tenant aggregate (commands/suspensions.py's events)
    and relayed as the outbox relays them; and each tenant's suspension reason at the end (None:
    active)."""
    made, left = [], {}
    for name, steps in (("kept", ["unpaid"]), ("back", ["unpaid", None]), ("again", ["unpaid", None, "fraud"])):
        tenant = Tenant(name=name, plan="pro")
        tenant_id = str(tenant.id)
        for n, reason in enumerate(steps):
            at = f"2026-12-07T08:0{n}:00.000000Z"
            notice = status_notice_id(tenant_id, tenant.version + 1)
            if reason is None:
                tenant.resume(tenant_id=tenant_id, notice_id=notice, at=at)
            else:
                tenant.suspend(tenant_id=tenant_id, reason=reason, notice_id=notice, at=at)
        made.append(tenant)
        left[tenant_id] = steps[-1]
    return [to_envelope(event) for aggregate in made for event in aggregate.collect_events()], left
