"""The notices relay: notifications the folds found become Notice events in the event store.

The folds write a notification (a quota threshold crossed, an SLO alert fired or resolved) into the views with a deterministic id;
views are rebuilt from the log, so they may find the same notification again (a replay). This relay
records each one as a Notice aggregate under that id: the event store refuses a second one, and the
outbox relay publishes each Notice once, on the notifications topic. Then the row is marked
recorded. One process leads, as with the outbox relay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from commands.control_plane import ControlPlane
from commands.gdpr import PLATFORM
from commands.notices import Notice
from omni import failpoints
from projections.gdpr import breach_overdue
from projections.quotas import PeriodKey
from schemas.envelope import format_time
from schemas.gdpr import BREACH_OVERDUE
from schemas.plans import quantity_json
from stores import gdpr as gdpr_views
from stores import quotas as quota_views
from stores import slos as slo_views
from stores.database import Database, StoreUnavailable
from streams.pausing import pause

log = logging.getLogger(__name__)

LEADER = "notices-relay"
IDLE_SECONDS = 0.5


class NoticesRelay:
    def __init__(self, control: ControlPlane, db: Database, wake: Callable[[], None] | None = None) -> None:
        self.control = control
        self.db = db
        self.wake = wake  # the outbox relay's: publish what was just recorded

    def record_once(self, limit: int = 200) -> int:
        """Record the next notifications (blocking); return how many rows were settled."""
        moved = self._breaches_overdue()
        with self.db.transaction() as tx:
            rows = quota_views.unrecorded(tx, limit)
            alerts = slo_views.unrecorded_alerts(tx, limit)
        if not rows and not alerts:
            return moved
        # Recorded (and so published and delivered to webhooks) in the order they happened: the
        # thresholds one fact crossed together share its time, and go lowest first (50, 80, 100), not
        # in the order of their ids, which a receiver acting on the last notice it got took as news.
        notices: list[tuple[tuple[str, int, str], Notice]] = []
        for notice_id, tenant_id, kind, meter, period, threshold, quota_limit, used, occurred_at in rows:
            data = {
                "tenant_id": tenant_id,
                "meter": meter,
                "period": PeriodKey.parse(period).label,
                "threshold": int(threshold),
                "limit": quantity_json(Decimal(quota_limit)),
                "used": quantity_json(Decimal(used)),
                "occurred_at": occurred_at,
            }
            notice = Notice(notice_id=notice_id, kind=kind, tenant_id=tenant_id, data=data)
            notices.append(((occurred_at, int(threshold), notice_id), notice))
        for notice_id, owner, kind, slo, version, alert, burn_rates, occurred_at in alerts:
            data = {"tenant_id": owner, "slo": slo, "version": version, "alert": alert, "burn_rates": burn_rates}
            notice = Notice(notice_id=notice_id, kind=kind, tenant_id=owner, data={**data, "occurred_at": occurred_at})
            notices.append(((occurred_at, 0, notice_id), notice))
        for _, notice in sorted(notices, key=lambda pair: pair[0]):
            self.control.record_notice(notice)
        failpoints.hit(failpoints.NOTICES_AFTER_RECORD)
        with self.db.transaction() as tx:
            quota_views.mark_recorded(tx, [row[0] for row in rows])
            slo_views.mark_alerts_recorded(tx, [row[0] for row in alerts])
        return moved + len(rows) + len(alerts)

    def _breaches_overdue(self) -> int:
        """A breach whose 72 hours passed with the authority not notified: one notice, ever (its id is
        deterministic, so the event store refuses a second, after a restart or a replay too)."""
        now = format_time(datetime.now(UTC))
        with self.db.transaction() as tx:
            overdue = gdpr_views.overdue_unnoticed(tx, now)
        for breach in overdue:
            notice = breach_overdue(breach.id, breach.detected_at, breach.deadline, breach.scope)
            self.control.record_notice(Notice(notice_id=notice.id, kind=BREACH_OVERDUE, tenant_id=PLATFORM, data=notice.data()))
            with self.db.transaction() as tx:
                gdpr_views.mark_overdue_noticed(tx, breach.id, now)
        return len(overdue)

    async def run(self, stop: asyncio.Event) -> None:
        leadership = self.db.leadership(LEADER)
        try:
            while not stop.is_set():
                moved = 0
                try:
                    if await asyncio.to_thread(leadership.hold):
                        moved = await asyncio.to_thread(self.record_once)
                        if moved and self.wake is not None:
                            self.wake()
                except StoreUnavailable as outage:
                    log.warning("notices relay waiting: %s", outage)
                except Exception:
                    log.exception("notices relay failed; retrying")
                if not moved:
                    await pause(stop, IDLE_SECONDS)
        finally:
            leadership.release()
