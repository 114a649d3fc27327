"""The in-process runner: pulls batches from the log and hands them to the projectors.

Embedded mode runs it inside the API process. Kafka mode uses the Faust
worker for live batches and this runner's catch-up half for new meters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from omni import metrics
from omni.audit_keys import signing_key
from omni.settings import Settings
from stores import views
from stores.database import Database
from streams.log import EventLog, LogUnavailable
from streams.pausing import Pause, pause
from streams.projectors import API_CALLS, AUDIT, CATALOG, AuditProjector, CatalogProjector, MeterProjector
from streams.quota_ledger import FactLedger, Rebuilding, RebuiltByItsFold
from streams.slos import SloLag

log = logging.getLogger(__name__)

LAG_EVERY = 1.0  # seconds between updates of omni_views_lag_records
# How often the api_calls topic (self-metering) is folded at most, here and in the Faust worker (its
# agent's linger). Each fold is a transaction of its own, about 1.4 ms of Python (and PostgreSQL's
# share) for a few records, and api_call events trickle in, one per request: folded as soon as
# they came, they cost the workers about 1-2 µs per usage event at 1,000 events per request.
# Meters on api_call follow up to this much later than usage meters.
API_CALLS_EVERY = 1.0


class Runner:
    def __init__(
        self,
        log_: EventLog,
        catalog: CatalogProjector,
        meters: MeterProjector,
        *,
        batch_size: int = 5000,
        api_calls: MeterProjector | None = None,
        audit: AuditProjector | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        pause_: Pause = pause,
        counters: RebuiltByItsFold | None = None,
    ) -> None:
        self.log = log_
        self.catalog = catalog
        self.meters = meters  # the usage topic's
        self.api_calls = api_calls  # the api_calls topic's (self-metering), when wired
        self.audit = audit  # the audit topic's hash chains, when wired
        self.batch_size = batch_size
        self.clock = clock  # the schedules of the api_calls fold and of the lag report
        self.sleep = sleep  # the wait after a failed step
        self.pause = pause_  # the idle wait between steps
        self._api_calls_due = 0.0  # the clock's time of the next fold of api_calls (API_CALLS_EVERY)
        self._audit_due = 0.0  # and of the audit topic's
        self.counters = counters  # the quota counters this runner builds again when found stale (embedded mode)
        self._building_counters = False

    @property
    def meter_projectors(self) -> tuple[MeterProjector, ...]:
        """Every topic the meters fold, each with its projector."""
        return (self.meters,) if self.api_calls is None else (self.meters, self.api_calls)

    def _heads(self) -> tuple[dict[int, int], list[dict[int, int]], dict[int, int]]:
        with self.meters.db.transaction() as tx:
            return (
                views.checkpoints(tx, CATALOG, self.catalog.topic),
                [views.checkpoints(tx, m.consumer, m.topic) for m in self.meter_projectors],
                {} if self.audit is None else views.checkpoints(tx, AUDIT, self.audit.topic),
            )

    async def step(self, *, everything: bool = False) -> int:
        """One pass over every partition; returns how many records were applied. The api_calls
        topic is passed over until API_CALLS_EVERY has gone by since its last fold, unless told
        `everything`."""
        catalog_heads, meter_heads, audit_heads = await asyncio.to_thread(self._heads)
        moved = 0
        for partition in range(self.log.topics.partitions(self.catalog.topic)):
            records = await self.log.read(self.catalog.topic, partition, catalog_heads.get(partition, 0), self.batch_size)
            if records:
                moved += await asyncio.to_thread(self.catalog.process, partition, records)
        for meters, heads in zip(self.meter_projectors, meter_heads, strict=True):
            if meters is self.api_calls:
                now = self.clock()
                if now < self._api_calls_due and not everything:
                    continue
                self._api_calls_due = now + API_CALLS_EVERY
            for partition in range(self.log.topics.partitions(meters.topic)):
                records = await self.log.read(meters.topic, partition, heads.get(partition, 0), self.batch_size)
                if records:
                    moved += await asyncio.to_thread(meters.process, partition, records)
        if self.audit is not None and (everything or self.clock() >= self._audit_due):
            # Like api_calls, the audit topic is folded at most every API_CALLS_EVERY: its reads cost
            # a round trip per partition, and no command's caller waits for the chain.
            self._audit_due = self.clock() + API_CALLS_EVERY
            for partition in range(self.log.topics.partitions(self.audit.topic)):
                records = await self.log.read(self.audit.topic, partition, audit_heads.get(partition, 0), self.batch_size)
                if records:
                    moved += await asyncio.to_thread(self.audit.process, partition, records)
        moved += await self.catch_up()
        if self.counters is not None and self.counters.stale and not self._building_counters:
            await self._build_counters()
        return moved

    async def _build_counters(self) -> None:
        """Build the quota counters again from the views (a replay swapped them in), folding the log
        to its end first: the steps of that fold start no second build."""
        assert self.counters is not None
        self._building_counters = True
        try:
            log.info("the meters' views were swapped in by a replay: building the quota counters again")
            await self.counters.ensure_built(self.drain, self.meters.db, datetime.now(UTC))
        finally:
            self._building_counters = False

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records on the log the views do not hold yet, per (projector, partition)."""
        catalog_heads, meter_heads, audit_heads = await asyncio.to_thread(self._heads)
        found: dict[tuple[str, int], int] = {}
        sources = [(CATALOG, self.catalog.topic, catalog_heads)]
        sources += [(m.consumer, m.topic, heads) for m, heads in zip(self.meter_projectors, meter_heads, strict=True)]
        if self.audit is not None:
            sources.append((AUDIT, self.audit.topic, audit_heads))
        for projector, topic, heads in sources:
            for partition, end in (await self.log.end_offsets(topic)).items():
                found[(projector, partition)] = max(0, end - heads.get(partition, 0))
        return found

    async def report_lag(self) -> None:
        for (projector, partition), records in (await self.lag()).items():
            metrics.VIEWS_LAG.labels(projector, str(partition)).set(records)
            metrics.FRESHNESS.waiting(projector, partition, records)

    async def catch_up(self) -> int:
        """Fold history into meters and SLOs defined after their events arrived, from every topic meters fold."""
        moved = 0
        for meters in self.meter_projectors:
            for lag in await asyncio.to_thread(meters.lagging):
                records = await self.log.read(meters.topic, lag.partition, lag.start, min(self.batch_size, lag.end - lag.start))
                moved += await asyncio.to_thread(meters.catch_up, lag, records)
            by_slo: dict[str, list[SloLag]] = {}  # SLOs too (streams.slos), each with all its partitions at once
            for slo_lag in await asyncio.to_thread(meters.slos.lagging):
                by_slo.setdefault(slo_lag.slo, []).append(slo_lag)
            for lags in by_slo.values():
                records = {
                    lag.partition: await self.log.read(
                        meters.topic, lag.partition, lag.start, min(self.batch_size, lag.end - lag.start)
                    )
                    for lag in lags
                }
                moved += await asyncio.to_thread(meters.slos.catch_up, lags, records)
        return moved

    async def drain(self, rounds: int = 10_000, *, wait_for_counters: float = 60.0) -> None:
        """Apply everything currently on the log (tests and rebuilds), waiting out a rebuild of the
        quota counters (the fold counts facts in them)."""
        deadline = time.monotonic() + wait_for_counters
        for _ in range(rounds):
            try:
                if not await self.step(everything=True):
                    return
            except Rebuilding:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def run(self, stop: asyncio.Event, wake: asyncio.Event | None = None, idle: float = 0.05) -> None:
        lag_due = 0.0
        while not stop.is_set():
            try:
                if self.clock() >= lag_due:
                    lag_due = self.clock() + LAG_EVERY
                    await self.report_lag()
                moved = await self.step()
            except LogUnavailable as outage:
                log.warning("runner waiting for the log: %s", outage)
                moved = 0
                await self.sleep(1.0)
            except Exception:
                log.exception("runner step failed; retrying from the stored checkpoints")
                moved = 0
                await self.sleep(1.0)
            if moved:
                continue
            await self.pause(stop, idle, wake)
            if wake is not None:
                wake.clear()


def build_runner(settings: Settings, db: Database, log_: EventLog, ledger: FactLedger | None = None) -> Runner:
    """The projectors and their runner, as every mode and process wires them (`ledger`: the quota
    counters of embedded mode, which count facts as the meters fold them). The views' tables must
    be migrated: Kafka mode may keep the audit signing key there (omni.audit_keys)."""
    # De-duplication must last as long as an event can still be admitted.
    keep_seen = settings.acceptance_window + settings.future_tolerance
    topics = log_.topics
    system = settings.mode.value  # messaging.system of the fold's spans: kafka, or embedded
    from streams.embedded_quotas import EmbeddedQuotaLedger

    return Runner(
        log_,
        CatalogProjector(db, topics),
        MeterProjector(db, topics, keep_seen=keep_seen, ledger=ledger, log_system=system),
        batch_size=settings.runner_batch_size,
        api_calls=MeterProjector(
            db, topics, keep_seen=keep_seen, topic=topics.api_calls, consumer=API_CALLS, ledger=ledger, log_system=system
        ),
        audit=AuditProjector(db, topics, signing_key(settings, db), every=settings.audit_checkpoint_every),
        counters=ledger if isinstance(ledger, EmbeddedQuotaLedger) else None,  # built again by this process
    )
