"""Closing a billing period: the edge around commands.billing.close_period.

1. Wait until the meter views hold everything the log held when the close began (the usage and
   api_calls topics' end offsets): usage sent before the close is billed by it, not deferred to an
   adjustment. Kafka mode's worker folds elsewhere; if it is behind for longer than
   `billing_catch_up_seconds`, the close is refused (ViewsBehind: 503), never half done.
2. Read the cut in one snapshot: tenants and plans, every priced meter's totals for the period and
   for the earlier closed periods late usage may still reach, and the meters' checkpoints.
3. Run the command, which decides and saves everything in one transaction.

`AutoClose` does it by itself for last month once `billing_close_grace_seconds` have passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from commands.billing import Closed, UsageCut
from commands.control_plane import CommandContext
from commands.errors import Conflict
from projections.invoices import BillingPeriod
from schemas.envelope import format_time
from stores import billing as billing_store
from stores.database import Database
from streams.log import EventLog

if TYPE_CHECKING:
    from omni.bootstrap import Platform

log = logging.getLogger(__name__)

SYSTEM = CommandContext(key_id="omni-billing")  # the actor of automatic closes in the audit trail
AUTO_CLOSE_EVERY = 60.0


class ViewsBehind(Exception):
    """The meter views did not fold the log's usage up to the close in time."""


class NotOver(Conflict):
    """The period has not ended yet."""


async def meters_reach(db: Database, log_: EventLog, meters: list[str], timeout: float) -> bool:
    """Wait (at most `timeout` seconds) until every meter's checkpoints reach the usage and api_calls
    topics' end offsets as they are now."""
    if not meters:
        return True
    topics = (log_.topics.usage, log_.topics.api_calls)
    ends = {topic: await log_.end_offsets(topic) for topic in topics}
    deadline = time.monotonic() + timeout
    delay = 0.01

    def behind() -> bool:
        with db.transaction() as tx:
            cut = billing_store.meter_cut(tx, meters)
        return any(
            cut[meter].get(f"{topic}/{partition}", 0) < end
            for meter in meters
            for topic, by_partition in ends.items()
            for partition, end in by_partition.items()
            if end > 0
        )

    while await asyncio.to_thread(behind):
        if time.monotonic() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
    return True


def read_cut(db: Database, period: BillingPeriod, window: timedelta, tenant_id: str | None = None) -> UsageCut:
    """What the views hold now, read in one snapshot (of one tenant only, with `tenant_id`)."""
    with db.transaction() as tx:
        billing_store.snapshot(tx)
        meters = billing_store.priced_meters(tx)
        tenants = billing_store.tenants_and_plans(tx)
        if tenant_id is not None:
            tenants = {tenant_id: tenants[tenant_id]} if tenant_id in tenants else {}
        joined_after = billing_store.tenants_created_since(tx, period.end) & tenants.keys()
        plans = billing_store.charging_plans(tx, period.end)  # a month ended: as they were at its end
        usage = billing_store.period_usage(tx, meters, period, tenant_id)
        earlier: dict[str, dict[str, dict[str, Decimal]]] = {}
        for before in billing_store.earlier_periods(tx, period, window):
            for found, totals in billing_store.period_usage(tx, meters, before, tenant_id).items():
                earlier.setdefault(found, {})[before.text] = totals
        offsets = billing_store.meter_cut(tx, meters)
        versions = billing_store.plan_versions(tx)
    return UsageCut(
        period=period,
        tenants=tenants,
        plans=plans,
        usage=usage,
        earlier=earlier,
        offsets=offsets,
        plan_at=lambda slug, version: versions.get((slug, version)),
        joined_after=joined_after,
    )


async def close_period(platform: Platform, period: BillingPeriod, ctx: CommandContext) -> Closed:
    """Close `period` now (NotOver before its end, Conflict once closed, ViewsBehind: see above)."""
    now = platform.clock()
    if now < period.end:
        raise NotOver(f"billing period {period.text} ends at {format_time(period.end)}; it cannot close before")
    if await asyncio.to_thread(platform.control.is_closed_holding_none, period.text):
        raise Conflict(f"billing period {period.text} is already closed")
    with platform.db.transaction() as tx:
        meters = sorted(billing_store.priced_meters(tx))
    if not await meters_reach(platform.db, platform.log, meters, platform.settings.billing_catch_up_seconds):
        raise ViewsBehind(
            f"the meter views have not folded the usage logged before this close within "
            f"{platform.settings.billing_catch_up_seconds:g}s; nothing was closed, retry later"
        )
    cut = await asyncio.to_thread(read_cut, platform.db, period, platform.settings.acceptance_window)
    return await platform.run_command(platform.control.close_period, ctx, cut, format_time(now))


class AutoClose:
    """Closes last month once its grace has passed (every process that runs it tries; the event
    store lets one close win, the others find it closed)."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def due(self, now: datetime) -> BillingPeriod | None:
        last = BillingPeriod.of(now).before()
        grace = timedelta(seconds=self.platform.settings.billing_close_grace_seconds)
        return last if now >= last.end + grace else None

    async def run(self, stop: asyncio.Event, every: float = AUTO_CLOSE_EVERY) -> None:
        while not stop.is_set():
            try:
                await self.once()
            except Exception:
                log.warning("closing last month's billing period failed; trying again later", exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass

    async def once(self) -> Closed | None:
        period = self.due(self.platform.clock())
        if period is None or await asyncio.to_thread(self.platform.control.is_closed, period.text):
            return None
        try:
            closed = await close_period(self.platform, period, SYSTEM)
        except Conflict:
            return None  # another process closed it first
        log.info("closed billing period %s: %d documents", closed.period, len(closed.invoices))
        for tenant_id, reason in sorted(closed.held.items()):
            log.warning(
                "billing period %s holds tenant %s, not invoiced: %s; correct its usage, then "
                "close the period again (POST /v1/billing/periods/%s/close)",
                closed.period,
                tenant_id,
                reason,
                closed.period,
            )
        return closed
