"""Suspending and resuming a tenant in the event store (commands.suspensions), and the fold of its
control events (projections.suspensions): what each change stores, relays and folds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from api.problems import Problem
from api.routes.quotas import _kept_while_suspended
from commands.control_plane import AuditEntry, CommandContext, ControlPlane, Tenant, describe
from commands.errors import NotFound
from commands.notices import NOTICE_TYPES, Notice
from commands.suspensions import status_notice_id
from projections import suspensions as fold
from schemas.envelope import Actor, Envelope
from schemas.plans import ConsumeBody
from schemas.suspensions import SUSPENSION_LIFTED, SUSPENSION_SET, TENANT_RESUMED, TENANT_SUSPENDED
from stores.suspensions import Suspension
from streams.log import CountersUnavailable

ADMIN = CommandContext(key_id=None, ip="127.0.0.1", user_agent="admin-cli")


@pytest.fixture
def app() -> ControlPlane:
    return ControlPlane(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def stored(app: ControlPlane) -> list[Any]:
    return [app.mapper.to_domain_event(n) for n in app.recorder.select_notifications(1, 1000)]


def relayed(event: Any) -> Envelope:
    """The control event as the outbox relay publishes it (streams.outbox)."""
    log_type, tenant_id, data = describe(event)
    return Envelope(
        id="e",
        type=log_type,
        tenant_id=tenant_id,
        source="omni://control",
        source_id="e",
        event_time=datetime.now(UTC),
        recorded_time=datetime.now(UTC),
        data=data,
        actor=Actor(None),
    )


def test_a_suspension_stores_the_change_its_notice_and_its_audit_entry_in_one_save(app: ControlPlane) -> None:
    tenant, _ = app.create_tenant(ADMIN, "acme", "pro")
    tenant_id = str(tenant.id)
    before = len(stored(app))
    suspended = app.suspend_tenant(ADMIN, tenant_id.upper(), "unpaid")
    assert suspended.suspension == "unpaid" and suspended.suspended_at is not None
    events = stored(app)[before:]
    assert [type(e).__qualname__ for e in events] == ["Tenant.Suspended", "Notice.Emitted", "AuditEntry.Recorded"]
    change, notice, audit = events
    assert change.tenant_id == tenant_id and change.notice_id == notice.notice_id == status_notice_id(tenant_id, 2)
    assert notice.kind == TENANT_SUSPENDED and notice.tenant_id == tenant_id
    assert notice.data == {"tenant_id": tenant_id, "reason": "unpaid", "occurred_at": change.at}
    assert (audit.action, audit.tenant_id, audit.outcome) == ("tenant.suspend", tenant_id, "accepted")
    assert app.get_tenant(tenant_id).suspension == "unpaid", "the state comes back from the events"

    log_type, tenant_of, data = describe(change)
    assert (log_type, tenant_of) == (SUSPENSION_SET, tenant_id)
    assert data == {"tenant_id": tenant_id, "version": 2, "notice_id": notice.notice_id, "reason": "unpaid", "at": change.at}
    assert describe(notice)[0] in NOTICE_TYPES and SUSPENSION_SET not in NOTICE_TYPES, "the notice alone goes to notifications"


def test_suspending_twice_or_resuming_an_active_tenant_changes_nothing_but_is_audited(app: ControlPlane) -> None:
    tenant, _ = app.create_tenant(ADMIN, "acme", "pro")
    tenant_id = str(tenant.id)
    app.resume_tenant(ADMIN, tenant_id)
    first = app.suspend_tenant(ADMIN, tenant_id, "first")
    second = app.suspend_tenant(ADMIN, tenant_id, "second")
    assert (second.suspension, second.suspended_at) == ("first", first.suspended_at)
    resumed = app.resume_tenant(ADMIN, tenant_id)
    assert (resumed.suspension, resumed.suspended_at) == (None, None)
    kinds = [type(e).__qualname__ for e in stored(app) if not isinstance(e, AuditEntry.Recorded)]
    assert kinds.count("Tenant.Suspended") == 1 and kinds.count("Tenant.Resumed") == 1 and kinds.count("Notice.Emitted") == 2
    actions = [e.action for e in stored(app) if isinstance(e, AuditEntry.Recorded)]
    assert actions[-4:] == ["tenant.resume", "tenant.suspend", "tenant.suspend", "tenant.resume"]


def test_suspending_a_missing_tenant_is_not_found_and_audited(app: ControlPlane) -> None:
    with pytest.raises(NotFound):
        app.suspend_tenant(ADMIN, "00000000-0000-0000-0000-000000000000", "x")
    audit = stored(app)[-1]
    assert (audit.action, audit.outcome) == ("tenant.suspend", "rejected")


def test_a_tenant_suspended_then_resumed_folds_into_two_changes_of_its_status(app: ControlPlane) -> None:
    tenant, _ = app.create_tenant(ADMIN, "acme", "pro")
    tenant_id = str(tenant.id)
    app.suspend_tenant(ADMIN, tenant_id, "unpaid")
    app.resume_tenant(ADMIN, tenant_id)
    made = [e for e in stored(app) if isinstance(e, Tenant.Suspended | Tenant.Resumed)]
    assert [relayed(e).type for e in made] == [SUSPENSION_SET, SUSPENSION_LIFTED]
    changes = [c for e in made for c in fold.changes(relayed(e))]
    assert [(c.status, c.reason, c.version) for c in changes] == [("suspended", "unpaid", 2), ("active", None, 3)]
    assert [c.notice_id for c in changes] == [status_notice_id(tenant_id, 2), status_notice_id(tenant_id, 3)]
    notices = [e for e in stored(app) if isinstance(e, Notice.Emitted)]
    assert [n.kind for n in notices] == [TENANT_SUSPENDED, TENANT_RESUMED]
    assert [c.at for c in changes] == [n.data["occurred_at"] for n in notices], "the view and the notice tell one time"


def test_other_control_events_change_no_status() -> None:
    event = Envelope(
        id="e",
        type="omni.tenant.created",
        tenant_id="t",
        source="omni://control",
        source_id="e",
        event_time=datetime.now(UTC),
        recorded_time=datetime.now(UTC),
        data={"tenant_id": "t", "name": "acme", "plan": "pro"},
        actor=Actor(None),
    )
    assert fold.changes(event) == []


def test_each_change_is_audited_with_why(app: ControlPlane) -> None:
    tenant, _ = app.create_tenant(ADMIN, "acme", "pro")
    tenant_id = str(tenant.id)
    app.suspend_tenant(ADMIN, tenant_id, "unpaid")
    app.suspend_tenant(ADMIN, tenant_id, "again")
    app.resume_tenant(ADMIN, tenant_id)
    app.resume_tenant(ADMIN, tenant_id)
    audits = [e for e in stored(app) if isinstance(e, AuditEntry.Recorded) and e.action.startswith("tenant.")][-4:]
    reasons = [(e.action, e.reason) for e in audits]
    assert reasons[0] == ("tenant.suspend", "unpaid") and reasons[2] == ("tenant.resume", None)
    assert reasons[1][1].startswith("already suspended since") and reasons[1][1].endswith(": unpaid")
    assert reasons[3] == ("tenant.resume", "not suspended")


class AwayLedger:
    """The kept answers cannot be read (Redis away)."""

    async def kept(self, tenant_id: str, idempotency_key: str, fingerprint: str, now: datetime) -> None:
        raise CountersUnavailable("the quota counters (Redis) are unreachable")


def test_a_suspended_consume_is_refused_when_its_kept_answers_cannot_be_read() -> None:
    """403, not 503: a gateway that fails open on 503 would serve the suspended tenant."""
    body = ConsumeBody(amount=Decimal(1), idempotency_key="k")
    suspension = Suspension("unpaid", "2026-12-07T10:00:00.000000Z")
    with pytest.raises(Problem) as refused:
        asyncio.run(_kept_while_suspended(AwayLedger(), "t", "tokens", Decimal(1), body, datetime.now(UTC), suspension))  # type: ignore[arg-type]
    assert refused.value.status == 403 and refused.value.kind == "tenant-suspended"
