"""Notices: what the platform says about itself (a quota threshold crossed, an SLO alert fired or resolved, a tenant
suspended or resumed), recorded once each.

The folds find notices in the views (stores.quotas); the notices relay (streams.notices) records
each one here as an aggregate whose id is the notice's own deterministic id, so a second recording
(a worker restart, a replay that finds it again) is refused by the event store, and the outbox
relay publishes each notice once, on the notifications topic. A suspension's notice is saved by
its command instead (commands.suspensions), with the change it tells of.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from projections.quotas import THRESHOLD_CROSSED
from projections.slos import ALERT_FIRED, ALERT_RESOLVED
from schemas.gdpr import BREACH_OVERDUE
from schemas.suspensions import TENANT_RESUMED, TENANT_SUSPENDED

NOTICE_TYPES = frozenset({THRESHOLD_CROSSED, ALERT_FIRED, ALERT_RESOLVED, BREACH_OVERDUE, TENANT_SUSPENDED, TENANT_RESUMED})


class Notice(Aggregate):
    @staticmethod
    def create_id(notice_id: str, kind: str, tenant_id: str, data: dict[str, Any]) -> UUID:
        return UUID(notice_id)

    @event("Emitted")
    def __init__(self, notice_id: str, kind: str, tenant_id: str, data: dict[str, Any]) -> None:
        self.kind = kind
        self.tenant_id = tenant_id


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    if type(domain_event).__qualname__ == "Notice.Emitted":
        return domain_event.kind, domain_event.tenant_id, {"id": domain_event.notice_id, **domain_event.data}
    return None
