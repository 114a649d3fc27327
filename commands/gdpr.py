"""GDPR decisions in the event store: data classes (admin) and data subjects' requests (tenants).

A data class says which paths of an event type are personal; it is defined at version 1 and each
change is the next version, as SLOs are. A request is an aggregate of its own: received, then each
step of its job (running, completed or failed) is an event, and an erasure also records
`SubjectErased`, which every API process reads to forget the person's data key (omni.gdpr_keys).
Every one of those events is saved with its audit entry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from commands.errors import Conflict, Invalid, NotFound
from commands.ids import OMNI_NAMESPACE
from schemas.envelope import format_time
from schemas.gdpr import (
    RETENTION,
    BreachBody,
    DataClassBody,
    RequestKind,
    RequestStatus,
    RetentionBody,
    breach_detection_problem,
)
from schemas.ids import canonical_uuid

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane

PLATFORM = "_platform"
DATA_CLASS_DEFINED = "omni.data_class.defined"
REQUEST_RECEIVED = "omni.gdpr.request_received"
REQUEST_UPDATED = "omni.gdpr.request_updated"
SUBJECT_ERASED = "omni.gdpr.subject_erased"
BREACH_RECORDED = "omni.gdpr.breach_recorded"
BREACH_NOTIFIED = "omni.gdpr.breach_notified"
RETENTION_SET = "omni.gdpr.retention_set"


def data_class_aggregate_id(event_type: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"data-class:{event_type}")


class DataClass(Aggregate):
    @staticmethod
    def create_id(event_type: str, spec: dict[str, Any]) -> UUID:
        return data_class_aggregate_id(event_type)

    @event("Defined")
    def __init__(self, event_type: str, spec: dict[str, Any]) -> None:
        self.event_type = event_type
        self.spec = spec
        self.revision = 1

    @event("Revised")
    def revise(self, event_type: str, revision: int, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.revision = revision


def retention_request_id(tenant_id: str, subject: str, key_id: str) -> UUID:
    """The erasure a retention period makes of one data key: one id, whoever sweeps and how often."""
    return uuid5(OMNI_NAMESPACE, f"gdpr-retention:{tenant_id}:{subject}:{key_id}")


def retention_aggregate_id(tenant_id: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"gdpr-retention-period:{tenant_id}")


class GdprRequest(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, subject: str, kind: str, reason: str | None = None, key_id: str | None = None) -> UUID:
        """A data subject's request gets a fresh id; a retention erasure the id of the key it shreds."""
        if reason == RETENTION and key_id is not None:
            return retention_request_id(tenant_id, subject, key_id)
        return uuid4()

    @event("Received")
    def __init__(self, tenant_id: str, subject: str, kind: str, reason: str | None = None, key_id: str | None = None) -> None:
        """`reason`: None for a data subject's request, `retention` for the sweeper's (of data key `key_id`)."""
        self.tenant_id = tenant_id
        self.subject = subject
        self.kind = kind
        self.reason = reason
        self.status = RequestStatus.RECEIVED.value

    @event("Advanced")
    def advance(self, tenant_id: str, status: str, step: str) -> None:
        """The event names the tenant so readers of the log need nothing else."""
        self.status = status

    @event("SubjectErased")
    def erased(self, tenant_id: str, subject: str, key_id: str | None, reason: str | None = None) -> None:
        """The person's data key is gone (key_id None: there was none); `reason` as the request's."""


class Retention(Aggregate):
    """A tenant's retention period for personal data (None: none)."""

    @staticmethod
    def create_id(tenant_id: str, days: int | None) -> UUID:
        return retention_aggregate_id(tenant_id)

    @event("Set")
    def __init__(self, tenant_id: str, days: int | None) -> None:
        self.tenant_id = tenant_id
        self.days = days
        self.revision = 1

    @event("Changed")
    def change(self, tenant_id: str, days: int | None, revision: int) -> None:
        self.days = days
        self.revision = revision


class Breach(Aggregate):
    """A personal data breach in the platform's register (Art. 33): recorded, then notified."""

    @event("Recorded")
    def __init__(self, detected_at: str, scope: str, subjects: int | None, description: str | None) -> None:
        self.detected_at = detected_at
        self.notified_at: str | None = None

    @event("AuthorityNotified")
    def authority_notified(self, notified_at: str) -> None:
        self.notified_at = notified_at


class GdprCommands:
    """The GDPR commands of the ControlPlane application (mixed into it)."""

    def put_data_class(self: ControlPlane, ctx: CommandContext, event_type: str, body: DataClassBody) -> tuple[DataClass, bool]:
        resource = f"data-classes/{event_type}"
        with self._rejections_audited(ctx, "data_class.put", resource):
            spec = body.stored()
            found = self.get_data_class(event_type)
            created = found is None
            if found is None:
                found = DataClass(event_type=event_type, spec=spec)
            elif found.spec != spec:
                found.revise(event_type=event_type, revision=found.revision + 1, spec=spec)
            try:
                self.save(found, self._audit(ctx, "data_class.put", resource, PLATFORM))
            except IntegrityError as race:
                raise Conflict(f"data class {event_type!r} changed concurrently; retry") from race
        return found, created

    def get_data_class(self: ControlPlane, event_type: str) -> DataClass | None:
        try:
            found: object = self.repository.get(data_class_aggregate_id(event_type))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, DataClass) else None

    def receive_gdpr_request(
        self: ControlPlane, ctx: CommandContext, tenant_id: str, subject: str, kind: RequestKind
    ) -> GdprRequest:
        """NotFound when a tenant names an actor (`apikey:<key id>`) that is no key of its own: the
        admin's key (`apikey:admin`) acted in the tenant's chain too, and its IP address and user
        agent there are the operator's personal data, which a tenant reads sealed and never opens
        (api/routes/audit.py), nor exports, nor erases."""
        from commands.control_plane import ACTOR_PREFIX

        if ctx.tenant_id is not None and subject.startswith(ACTOR_PREFIX):
            with self._rejections_audited(ctx, f"gdpr.{kind.value}.received", "gdpr/requests"):
                key = self._get_key(subject.removeprefix(ACTOR_PREFIX))
                if key is None or key.tenant_id != ctx.tenant_id:
                    raise NotFound(f"subject {subject} is no API key of this tenant's")
        request = GdprRequest(tenant_id=tenant_id, subject=subject, kind=kind.value)
        self.save(request, self._audit(ctx, f"gdpr.{kind.value}.received", f"gdpr/requests/{request.id}", tenant_id))
        return request

    def receive_retention_erasure(
        self: ControlPlane, ctx: CommandContext, tenant_id: str, subject: str, key_id: str, days: int
    ) -> GdprRequest:
        """The erasure of data key `key_id`, whose person had no event for `days` days: recorded once
        (its id is the key's); a second call returns the one recorded, to be run again if unfinished."""
        request = GdprRequest(
            tenant_id=tenant_id, subject=subject, kind=RequestKind.ERASURE.value, reason=RETENTION, key_id=key_id
        )
        resource = f"gdpr/requests/{request.id}"
        reason = f"{RETENTION}: no event for {days} days"
        try:
            self.save(request, self._audit(ctx, "gdpr.erasure.received", resource, tenant_id, reason=reason))
        except IntegrityError as recorded:
            found: object = self.repository.get(request.id)
            if not isinstance(found, GdprRequest):  # cannot be: the id is derived for this request alone
                raise Conflict(f"{request.id} is taken by another aggregate") from recorded
            return found
        return request

    def put_retention(self: ControlPlane, ctx: CommandContext, tenant_id: str, body: RetentionBody) -> tuple[Retention, bool]:
        """Set the tenant's retention period (or none); whether it was set for the first time."""
        resource = "gdpr/retention"
        with self._rejections_audited(ctx, "gdpr.retention.put", resource):
            found = self.get_retention(tenant_id)
            created = found is None
            if found is None:
                found = Retention(tenant_id=tenant_id, days=body.personal_data_days)
            elif found.days != body.personal_data_days:
                found.change(tenant_id=tenant_id, days=body.personal_data_days, revision=found.revision + 1)
            try:
                self.save(found, self._audit(ctx, "gdpr.retention.put", resource, tenant_id))
            except IntegrityError as race:
                raise Conflict("the retention period changed concurrently; retry") from race
        return found, created

    def get_retention(self: ControlPlane, tenant_id: str) -> Retention | None:
        try:
            found: object = self.repository.get(retention_aggregate_id(tenant_id))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, Retention) else None

    def get_gdpr_request(self: ControlPlane, tenant_id: str, request_id: str) -> GdprRequest:
        """The tenant's own request (another tenant's answers NotFound, as a missing one does)."""
        canonical = canonical_uuid(request_id)
        found: object = None
        if canonical is not None:
            try:
                found = self.repository.get(UUID(canonical))
            except AggregateNotFoundError:
                found = None
        if not isinstance(found, GdprRequest) or found.tenant_id != tenant_id:
            raise NotFound(f"request {request_id} not found")
        return found

    def advance_gdpr_request(
        self: ControlPlane,
        ctx: CommandContext,
        request: GdprRequest,
        status: RequestStatus,
        step: str,
        *,
        erased_key: str | None = None,
        erased: bool = False,
    ) -> None:
        """Record a step of the request's job (with `erased`, the erasure of the person's key first)."""
        if erased:
            reason = getattr(request, "reason", None)
            request.erased(tenant_id=request.tenant_id, subject=request.subject, key_id=erased_key, reason=reason)
        request.advance(tenant_id=request.tenant_id, status=status.value, step=step)
        action = f"gdpr.{request.kind}.{status.value}"
        self.save(request, self._audit(ctx, action, f"gdpr/requests/{request.id}", request.tenant_id))

    def record_breach(self: ControlPlane, ctx: CommandContext, body: BreachBody, future: timedelta) -> Breach:
        """Record a breach; refused (nothing recorded) when its detection is more than `future` (the
        clock skew admission allows) ahead of now, or cannot be written in UTC."""
        with self._rejections_audited(ctx, "gdpr.breach.record", "gdpr/breaches"):
            problem = breach_detection_problem(body.detected_at, datetime.now(UTC), future)
            if problem is not None:
                raise Invalid(
                    problem,
                    [{"location": "body.detected_at", "reason": problem}],
                    title="Invalid breach",
                    kind="invalid-breach",
                )
        breach = Breach(
            detected_at=format_time(body.detected_at), scope=body.scope, subjects=body.subjects, description=body.description
        )
        self.save(breach, self._audit(ctx, "gdpr.breach.record", f"gdpr/breaches/{breach.id}", PLATFORM))
        return breach

    def breach_notified(self: ControlPlane, ctx: CommandContext, breach_id: str) -> Breach:
        """The supervisory authority was notified (now); once: a second call changes nothing."""
        resource = f"gdpr/breaches/{breach_id}"
        with self._rejections_audited(ctx, "gdpr.breach.notified", resource):
            canonical = canonical_uuid(breach_id)
            found: object = None
            if canonical is not None:
                try:
                    found = self.repository.get(UUID(canonical))
                except AggregateNotFoundError:
                    found = None
            if not isinstance(found, Breach):
                raise NotFound(f"breach {breach_id} not found")
            if found.notified_at is None:
                found.authority_notified(notified_at=format_time(datetime.now(UTC)))
            try:
                self.save(found, self._audit(ctx, "gdpr.breach.notified", resource, PLATFORM))
            except IntegrityError as race:
                raise Conflict(f"breach {breach_id} changed concurrently; retry") from race
        return found


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The log's type, tenant and data for a GDPR event; None for any other event."""
    match type(domain_event).__qualname__:
        case "DataClass.Defined":
            data = {"event_type": domain_event.event_type, "version": 1, "definition": domain_event.spec}
            return DATA_CLASS_DEFINED, PLATFORM, data
        case "DataClass.Revised":
            data = {"event_type": domain_event.event_type, "version": domain_event.revision, "definition": domain_event.spec}
            return DATA_CLASS_DEFINED, PLATFORM, data
        case "GdprRequest.Received":
            tenant = domain_event.tenant_id
            data = {
                "id": str(domain_event.originator_id),
                "tenant_id": tenant,
                "subject": domain_event.subject,
                "kind": domain_event.kind,
                "status": RequestStatus.RECEIVED.value,
                "at": format_time(domain_event.timestamp),
            }
            reason = getattr(domain_event, "reason", None)
            if reason is not None:  # the sweeper's: say why (a data subject's request has none)
                data["reason"] = reason
            return REQUEST_RECEIVED, tenant, data
        case "GdprRequest.Advanced":
            tenant = domain_event.tenant_id
            data = {
                "id": str(domain_event.originator_id),
                "tenant_id": tenant,
                "status": domain_event.status,
                "step": domain_event.step,
                "at": format_time(domain_event.timestamp),
            }
            return REQUEST_UPDATED, tenant, data
        case "Breach.Recorded":
            data = {
                "id": str(domain_event.originator_id),
                "detected_at": domain_event.detected_at,
                "recorded_at": format_time(domain_event.timestamp),
                "scope": domain_event.scope,
                "subjects": domain_event.subjects,
                "description": domain_event.description,
            }
            return BREACH_RECORDED, PLATFORM, data
        case "Breach.AuthorityNotified":
            return BREACH_NOTIFIED, PLATFORM, {"id": str(domain_event.originator_id), "notified_at": domain_event.notified_at}
        case "GdprRequest.SubjectErased":
            tenant = domain_event.tenant_id
            data = {
                "id": str(domain_event.originator_id),
                "tenant_id": tenant,
                "subject": domain_event.subject,
                "key_id": domain_event.key_id,
                "reason": getattr(domain_event, "reason", None) or "request",
                "at": format_time(domain_event.timestamp),
            }
            return SUBJECT_ERASED, tenant, data
        case "Retention.Set" | "Retention.Changed":
            tenant = domain_event.tenant_id
            data = {
                "tenant_id": tenant,
                "personal_data_days": domain_event.days,
                "version": getattr(domain_event, "revision", 1),
                "at": format_time(domain_event.timestamp),
            }
            return RETENTION_SET, tenant, data
    return None
