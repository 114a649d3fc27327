"""Apply log records to views, committing view rows and offsets in one transaction.

Runners (the embedded loop, the Faust agents) only fetch records and hand
them here. Every record below a stored checkpoint is skipped, so redelivery
changes nothing: exactly-once effect over at-least-once delivery.

Meters have checkpoints of their own. A meter whose checkpoint equals the
partition's is live and is folded with each batch; a meter defined later
starts at offset zero and is caught up from the log until it is live, so it
covers the whole history.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry import trace

from omni import failpoints, metrics
from projections import audit_chain, catalog, invoices, quotas
from projections import gdpr as gdpr_view
from projections import plans as plan_view
from projections import slos as slo_view
from projections import stripe as stripe_view
from projections import suspensions as suspension_view
from projections import webhooks as webhook_view
from projections.meter_state import BucketState
from projections.meters import BucketKey, MeterIndex, apply
from projections.plans import changes as plan_changes
from schemas.envelope import Envelope, NewerSchema, decode
from schemas.text import NUL_ESCAPE, json_holds_nul
from schemas.topics import Topics
from stores import audit as audit_store
from stores import billing as billing_store
from stores import gdpr as gdpr_store
from stores import plans as plan_store
from stores import quotas as quota_store
from stores import slos as slo_store
from stores import stripe as stripe_store
from stores import suspensions as suspension_store
from stores import views
from stores import webhooks as webhook_store
from stores.database import Database, Tx
from streams import tracing
from streams.log import LogRecord
from streams.quota_ledger import FactLedger
from streams.slos import SloFold

log = logging.getLogger(__name__)

METERS = "meters"
API_CALLS = "api-calls"  # the meters' fold of the api_calls topic (self-metering), with checkpoints of its own
PURGE_EVERY_BATCHES = 200
CATALOG = "catalog"
AUDIT = "audit"  # the audit topic's fold into the tenants' hash chains
CATALOG_APPLIED = "catalog-applied"  # the highest event-store position the catalog views hold


@dataclass(frozen=True, slots=True)
class Lag:
    meter: str
    partition: int
    start: int
    end: int


@dataclass(slots=True)
class Mishaps:
    """What one batch found wrong with its records: counted in metrics once its transaction
    commits, so a batch retried after a failure counts them once, not once per try."""

    dead_letters: int = 0
    holes: int = 0

    def count(self, consumer: str) -> None:
        if self.dead_letters:
            metrics.DEAD_LETTERS.labels(consumer).inc(self.dead_letters)
        if self.holes:
            metrics.LOG_HOLES.inc(self.holes)


def decoded(tx: Tx, consumer: str, records: Sequence[LogRecord], mishaps: Mishaps) -> list[tuple[LogRecord, Envelope]]:
    """Decode a batch. A record that is not an envelope is dead-lettered (kept, with the reason)
    instead of stopping its partition forever; one written by newer code stops it (NewerSchema)."""
    events = []
    for record in records:
        try:
            event = decode(record.value)
            if NUL_ESCAPE in record.value and json_holds_nul(record.value):  # the first test alone: no call
                # Older code admitted these. PostgreSQL text cannot hold NUL, so folding one would
                # fail its batch on every retry and stop the partition, every tenant on it. Found in
                # the record's JSON text, in C: walking the decoded event took seconds for a large
                # record full of the text \u0000 (an escaped backslash before u0000, no NUL).
                raise ValueError("a text field holds a NUL character, which the views cannot store")
            events.append((record, event))
        except NewerSchema:
            raise
        except (ValueError, KeyError, TypeError) as unreadable:
            log.error("dead-lettering %s/%d@%d: %s", record.topic, record.partition, record.offset, unreadable)
            views.add_dead_letter(tx, consumer, record.topic, record.partition, record.offset, repr(unreadable))
            mishaps.dead_letters += 1
    return events


def _check_contiguous(topic: str, partition: int, start: int, fresh: Sequence[LogRecord], mishaps: Mishaps) -> None:
    """Our topics are never compacted nor transactional: a hole, before the batch or inside it,
    means records were lost upstream. Logged and counted; the fold continues after it."""
    expected = start
    for record in fresh:
        if record.offset > expected:
            log.error(
                "%s/%d: records %d..%d are missing from the log; continuing after them",
                topic,
                partition,
                expected,
                record.offset - 1,
            )
            mishaps.holes += 1
        expected = record.offset + 1


class CatalogProjector:
    """Control topic -> tenants, keys and meter definitions."""

    def __init__(self, db: Database, topics: Topics) -> None:
        self.db = db
        self.topics = topics
        self.topic = topics.control

    def process(self, partition: int, records: Sequence[LogRecord]) -> int:
        with self.db.transaction() as tx:
            start = views.lock_checkpoint(tx, CATALOG, self.topic, partition)
            fresh = [r for r in records if r.offset >= start]
            if not fresh:
                return 0
            mishaps = Mishaps()
            _check_contiguous(self.topic, partition, start, fresh, mishaps)
            position = 0
            events = decoded(tx, CATALOG, fresh, mishaps)
            if any(e.type == catalog.METER_DELETED for _, e in events):
                self._hold_meter_folds(tx)  # first, before any other lock this batch takes
            for _, event in events:
                for change in catalog.changes(event):
                    _write_change(tx, change)
                for plan_change in plan_changes(event):
                    _write_plan_change(tx, plan_change)
                    _sweep_thresholds(tx, plan_change, event)
                for billing_change in invoices.changes(event):
                    _write_billing_change(tx, billing_change)
                for stripe_change in stripe_view.changes(event):
                    stripe_store.write(tx, stripe_change)
                for slo in slo_view.changes(event):
                    match slo:
                        case slo_view.SloDefined():
                            slo_store.resolve_ended(tx, slo.owner, slo.name, slo.version - 1, slo.at)
                            slo_store.put(tx, slo.owner, slo.name, slo.version, slo.definition, slo.at)
                        case slo_view.SloDeleted():
                            slo_store.resolve_ended(tx, slo.owner, slo.name, slo.version, slo.at)
                            slo_store.delete(tx, slo.owner, slo.name, slo.version, slo.at)
                for gdpr_change in gdpr_view.changes(event):
                    match gdpr_change:
                        case gdpr_view.DataClassDefined():
                            gdpr_store.put_data_class(tx, gdpr_change)
                        case gdpr_view.RequestStep():
                            gdpr_store.add_step(tx, gdpr_change)
                        case gdpr_view.BreachRecorded():
                            gdpr_store.add_breach(tx, gdpr_change)
                        case gdpr_view.BreachNotified():
                            gdpr_store.breach_notified(tx, gdpr_change)
                        case gdpr_view.RetentionSet():
                            gdpr_store.put_retention(tx, gdpr_change)
                for status_change in suspension_view.changes(event):
                    suspension_store.record(tx, status_change)
                for webhook_change in webhook_view.changes(event):
                    match webhook_change:
                        case webhook_view.EndpointAdded():
                            c = webhook_change
                            webhook_store.add_endpoint(tx, c.endpoint_id, c.owner, c.url, c.description, c.created_at)
                        case webhook_view.EndpointRemoved():
                            webhook_store.remove_endpoint(tx, webhook_change.endpoint_id, webhook_change.deleted_at)
                position = max(position, catalog.store_position(event))
            views.set_checkpoint(tx, CATALOG, self.topic, partition, fresh[-1].offset + 1)
            # Records relayed by older versions carry no position; one republished after a relay's
            # crash carries an older one than the records that came before it.
            if position > views.relay_position(tx, CATALOG_APPLIED):
                views.set_relay_position(tx, CATALOG_APPLIED, position)
            failpoints.hit(failpoints.CATALOG_BEFORE_COMMIT)
        mishaps.count(CATALOG)
        metrics.PROJECTED.labels(CATALOG).inc(len(fresh))
        return len(fresh)

    def _hold_meter_folds(self, tx: Tx) -> None:
        """Every partition's checkpoint of the folds that count meters, held to the end of this
        transaction: a batch that read a deleted meter's definition commits before its rows are
        dropped, and the next finds it gone."""
        for consumer, topic in ((METERS, self.topics.usage), (API_CALLS, self.topics.api_calls)):
            for partition in range(self.topics.partitions(topic)):
                views.lock_checkpoint(tx, consumer, topic, partition)


def _write_change(tx: Tx, change: catalog.Change) -> None:
    match change:
        case catalog.TenantAdded():
            views.upsert_tenant(tx, change.tenant_id, change.name, change.plan, change.created_at)
        case catalog.KeyAdded():
            views.add_key(tx, change.key_id, change.tenant_id, change.label, change.issued_at)
        case catalog.KeyRevoked():
            views.revoke_key(tx, change.key_id, change.revoked_at)
        case catalog.MeterAdded():
            views.add_meter_definition(tx, "_platform", change.definition, change.event_id)
        case catalog.MeterDescribed():
            definition = views.meter_definition(tx, change.slug)
            if definition is not None:
                views.describe_meter(tx, definition.model_copy(update={"description": change.description}))
        case catalog.MeterDeleted():
            views.drop_meter(tx, change.slug)


def _sweep_thresholds(tx: Tx, change: plan_view.Change, event: Envelope) -> None:
    """Thresholds a quota change finds reached already (usage folded before the change, or a lower
    limit), notified as of the change. With the usage folds' own checks (under the same lock) no
    crossing is missed, whichever topic is folded first, as in a replay."""
    match change:
        case plan_view.PlanPublished():
            tenants = plan_store.tenants_on(tx, change.slug)
        case plan_view.PlanAssigned() | plan_view.OverrideSet():
            tenants = [change.tenant_id]
        case _:
            return
    quota_store.lock_thresholds(tx, exclusive=True)
    definitions = {d.slug: d for d in views.meter_definitions(tx)}
    found: list[quotas.Crossing] = []
    for tenant_id in tenants:
        for meter, quota in plan_store.quotas_of(tx, tenant_id).items():
            definition = definitions.get(meter)
            if definition is None:
                continue
            period = quotas.period_of(event.event_time, quota.entitlement.period)
            used = quota_store.period_total(tx, tenant_id, definition, period)
            found += quotas.reached_now(tenant_id, meter, period, quota, used, event.recorded_time)
    if found:
        quota_store.add_notifications(tx, found)


def _write_billing_change(tx: Tx, change: invoices.BillingChange) -> None:
    match change:
        case invoices.DocumentFinalized(document):
            billing_store.add_invoice(tx, document)
        case invoices.StatusChanged(invoice_id, status, at, source):
            billing_store.set_status(tx, invoice_id, status, at, source)
        case invoices.PeriodClosed(period, closed_at, count, cut, held):
            billing_store.add_closed_period(tx, period, closed_at, count, cut, held)
        case invoices.HeldInvoiced(period, count, held):
            billing_store.held_invoiced(tx, period, count, held)


def _write_plan_change(tx: Tx, change: plan_view.Change) -> None:
    match change:
        case plan_view.PlanPublished():
            plan_store.put_plan(tx, change.slug, change.version, change.name, change.entitlements, change.at, change.billing)
        case plan_view.PlanAssigned():
            plan_store.assign_plan(tx, change.tenant_id, change.plan)
        case plan_view.OverrideSet():
            plan_store.set_override(tx, change.tenant_id, change.entitlement)
        case plan_view.OverrideRemoved():
            plan_store.remove_override(tx, change.tenant_id, change.meter)


class AuditProjector:
    """Audit topic -> one hash chain per tenant (projections.audit_chain), with periodic signed
    checkpoints. The topic is keyed by tenant, so each chain lives in one partition and is linked
    in the log's order; an entry the relay republished (same id) is linked once. The entries, the
    heads and the offsets commit in one transaction, so a rebuild from the log gives the same hashes."""

    def __init__(self, db: Database, topics: Topics, key: Ed25519PrivateKey, *, every: int) -> None:
        self.db = db
        self.topic = topics.audit
        self.key = key
        self.every = every

    def process(self, partition: int, records: Sequence[LogRecord]) -> int:
        with self.db.transaction() as tx:
            start = views.lock_checkpoint(tx, AUDIT, self.topic, partition)
            fresh = [r for r in records if r.offset >= start]
            if not fresh:
                return 0
            mishaps = Mishaps()
            _check_contiguous(self.topic, partition, start, fresh, mishaps)
            pairs = [(r, e) for r, e in decoded(tx, AUDIT, fresh, mishaps) if e.type == audit_chain.AUDIT_TYPE]
            events = [e for _, e in pairs]
            seen = audit_store.known(tx, [e.id for e in events])
            heads = audit_store.heads(tx, (e.tenant_id for e in events))
            folded = audit_chain.fold(heads, events, seen, every=self.every, key=self.key)
            offsets = {id(e): r.offset for r, e in pairs}
            for event, reason in folded.unlinked:
                views.add_dead_letter(tx, AUDIT, self.topic, partition, offsets[id(event)], reason)
                mishaps.dead_letters += 1
            changed = {entry["chain"] for entry in folded.entries}
            audit_store.write(tx, folded.entries, folded.checkpoints, {chain: folded.heads[chain] for chain in changed})
            views.set_checkpoint(tx, AUDIT, self.topic, partition, fresh[-1].offset + 1)
            failpoints.hit(failpoints.AUDIT_BEFORE_COMMIT)
        mishaps.count(AUDIT)
        metrics.PROJECTED.labels(AUDIT).inc(len(fresh))
        return len(fresh)


class MeterProjector:
    """Usage topic -> meter buckets, with de-duplication by (tenant, source, id).

    One instance per topic the meters fold: the usage topic (consumer METERS), and the api_calls
    topic of self-metering (API_CALLS). Every meter folds both; each topic has its checkpoints."""

    def __init__(
        self,
        db: Database,
        topics: Topics,
        *,
        keep_seen: timedelta,
        topic: str | None = None,
        consumer: str = METERS,
        ledger: FactLedger | None = None,
        log_system: str = "kafka",
    ) -> None:
        self.db = db
        self.log_system = log_system  # the spans' messaging.system
        self.ledger = ledger  # the quota counters that facts are counted in as they are folded (embedded mode)
        self.topic = topics.usage if topic is None else topic
        self.consumer = consumer
        self.keep_seen = keep_seen  # at least as long as an event can be admitted
        self._batches = 0
        self.slos = SloFold(db, self.topic, consumer)  # folded in the same transaction, from the same events

    def process(self, partition: int, records: Sequence[LogRecord]) -> int:
        """Fold a batch in one transaction, within a `process` span continuing its records' traces."""
        with tracing.batch_span(self.log_system, self.topic, partition, records):
            return self._process(partition, records)

    def _process(self, partition: int, records: Sequence[LogRecord]) -> int:
        with contextlib.ExitStack() as writing, self.db.transaction() as tx:
            start = views.lock_checkpoint(tx, self.consumer, self.topic, partition)
            fresh = [r for r in records if r.offset >= start]
            if not fresh:
                return 0
            mishaps = Mishaps()
            _check_contiguous(self.topic, partition, start, fresh, mishaps)
            events = decoded(tx, self.consumer, fresh, mishaps)
            dead = {r.offset for r in fresh} - {r.offset for r, _ in events}
            if dead:
                views.add_dropped(tx, self.topic, partition, dead)  # so catch-up skips them too
            kept = self._first_occurrences(tx, partition, events)
            meters = MeterIndex(views.meter_definitions(tx))
            offsets = views.meter_checkpoints(tx, self.topic, partition)
            live = [slug for slug in meters.by_slug if offsets.get((slug, partition), 0) == start]
            end = fresh[-1].offset + 1
            live_meters = meters.only(live)
            deltas = _folded(live_meters, kept)
            usage = quotas.usage_from_buckets(live_meters, deltas)
            self._notify_thresholds(tx, live_meters, kept, usage)
            if self.ledger is not None:
                counted = _facts_counter(live_meters, kept, start, usage) if usage else _nothing_counted
                self.ledger.add_facts(self.topic, partition, start, end, counted, views.meters_generation(tx))
            # `write views` ends after the commit: the ExitStack is left after the transaction.
            writing.enter_context(trace.use_span(tracing.write_span(), end_on_exit=True))
            self._merge(tx, deltas)
            shown = self.slos.fold_live(tx, partition, start, end, kept)
            views.set_checkpoint(tx, self.consumer, self.topic, partition, end)
            views.set_meter_checkpoints(tx, self.topic, partition, {slug: end for slug in live})
            failpoints.hit(failpoints.METERS_BEFORE_COMMIT)
        mishaps.count(self.consumer)
        failpoints.hit(failpoints.METERS_AFTER_COMMIT)
        metrics.PROJECTED.labels(self.consumer).inc(len(fresh))
        for show in shown:
            show()
        if kept:
            newest = kept[-1][1]
            metrics.FRESHNESS.folded(self.consumer, partition, newest.recorded_time.timestamp(), newest.event_time.timestamp())
        return len(fresh)

    def _merge(self, tx: Tx, deltas: dict[BucketKey, BucketState]) -> None:
        """Write a batch's bucket deltas (a rebuild's fold may keep them for later: streams.bulk_meters)."""
        views.merge_buckets(tx, deltas)

    def lagging(self) -> list[Lag]:
        """Meters that have not yet folded everything the partition checkpoint has passed."""
        with self.db.transaction() as tx:
            slugs = [m.slug for m in views.meter_definitions(tx)]
            heads = views.checkpoints(tx, self.consumer, self.topic)
            offsets = views.meter_checkpoints(tx, self.topic)
        return [
            Lag(slug, partition, offsets.get((slug, partition), 0), head)
            for slug in slugs
            for partition, head in sorted(heads.items())
            if offsets.get((slug, partition), 0) < head
        ]

    def catch_up(self, lag: Lag, records: Sequence[LogRecord]) -> int:
        """Fold records [lag.start, ...) into one lagging meter; return how many offsets it advanced."""
        with self.db.transaction() as tx:
            head = views.lock_checkpoint(tx, self.consumer, self.topic, lag.partition)
            current = views.meter_checkpoints(tx, self.topic, lag.partition).get((lag.meter, lag.partition), 0)
            definition = views.meter_definition(tx, lag.meter)
            if definition is None or current >= head or current != lag.start:
                return 0  # someone else moved it since `records` were read: read again from `current`
            batch = [r for r in records if current <= r.offset < head]
            # Nothing left to read below the head means the rest is a gap in the log.
            end = min(batch[-1].offset + 1, head) if batch else head
            dropped = views.dropped_between(tx, self.topic, lag.partition, current, end)
            kept = [(r, decode(r.value)) for r in batch if r.offset not in dropped]  # dead letters are in `dropped`
            one = MeterIndex([definition])
            deltas = _folded(one, kept)
            self._notify_thresholds(tx, one, kept, quotas.usage_from_buckets(one, deltas))
            if self.ledger is not None and quotas.is_additive(definition):
                # The live fold counted these records before the meter existed; its quota counts them now.
                pairs = [(r.offset, e) for r, e in kept]
                self.ledger.add_caught_up(
                    lag.meter,
                    self.topic,
                    lag.partition,
                    current,
                    end,
                    lambda since, tail_from, consumed_from: quotas.caught_up_deltas(one, pairs, since, tail_from, consumed_from),
                    views.meters_generation(tx),
                )
            views.merge_buckets(tx, deltas)
            views.set_meter_checkpoints(tx, self.topic, lag.partition, {lag.meter: end})
        return end - current

    def _first_occurrences(
        self, tx: Tx, partition: int, events: list[tuple[LogRecord, Envelope]]
    ) -> list[tuple[LogRecord, Envelope]]:
        first: dict[tuple[str, str, str], tuple[LogRecord, Envelope]] = {}
        for record, event in events:
            first.setdefault(event.dedupe_key, (record, event))
        keep_until = {key: int((event.event_time + self.keep_seen).timestamp()) for key, (_, event) in first.items()}
        self._batches += 1
        if self._batches % PURGE_EVERY_BATCHES == 0:
            # The log's own recording clock, not the wall clock: replays purge the same way.
            views.purge_seen(tx, int(max(e.recorded_time for _, e in events).timestamp()))
        fresh = views.claim_events(tx, [(*key, keep_until[key]) for key in first])
        kept = [first[key] for key in first if key in fresh]
        kept_offsets = {record.offset for record, _ in kept}
        dropped = [record.offset for record, _ in events if record.offset not in kept_offsets]
        if dropped:
            log.warning("dropped %d duplicate records on %s/%d", len(dropped), self.topic, partition)
            views.add_dropped(tx, self.topic, partition, dropped)
        kept.sort(key=lambda pair: pair[0].offset)
        return kept

    @staticmethod
    def _notify_thresholds(
        tx: Tx, meters: MeterIndex, events: Sequence[tuple[LogRecord, Envelope]], usage: Mapping[quotas.CounterKey, Decimal]
    ) -> None:
        """Thresholds of quotas the batch crosses, kept as notifications (before the batch's buckets
        are merged: usage before the batch is read from the views). `usage`: what the batch adds."""
        if not usage:
            return
        touched = {(tenant, meter) for tenant, meter, _ in usage}
        quota_store.lock_thresholds(tx, exclusive=False)
        in_force = plan_store.quotas_on(tx, {t for t, _ in touched}, {m for _, m in touched})
        in_force = {key: quota for key, quota in in_force.items() if key in touched}
        if not in_force:
            return
        quota_meters = meters.only(m for _, m in in_force)
        tenants = {t for t, _ in in_force}
        relevant = [e for _, e in events if e.tenant_id in tenants]
        before: dict[quotas.CounterKey, Decimal] = {}
        for event in relevant:
            for meter in quota_meters.by_type.get(event.type, ()):
                quota = in_force.get((event.tenant_id, meter.slug))
                if quota is None:
                    continue
                period = quotas.period_of(event.event_time, quota.entitlement.period)
                key = (event.tenant_id, meter.slug, period.text)
                if key not in before:
                    before[key] = quota_store.period_total(tx, event.tenant_id, meter.definition, period)
        found = quotas.crossings(before, relevant, quota_meters, in_force)
        if found:
            quota_store.add_notifications(tx, found)


def _nothing_counted(since: int) -> dict[quotas.CounterKey, Decimal]:
    return {}


def _folded(meters: MeterIndex, events: Sequence[tuple[LogRecord, Envelope]]) -> dict[BucketKey, BucketState]:
    """The batch's bucket deltas, in memory (views.merge_buckets writes them)."""
    deltas: dict[BucketKey, BucketState] = {}
    if meters.by_slug:
        for record, event in events:
            apply(deltas, meters, event, record.offset)
    return deltas


def _facts_counter(
    meters: MeterIndex, events: Sequence[tuple[LogRecord, Envelope]], start: int, usage: Mapping[quotas.CounterKey, Decimal]
) -> Callable[[int], Mapping[quotas.CounterKey, Decimal]]:
    """What the facts of the batch add, from an offset on, for the quota ledger: from the whole
    batch (its buckets' usage, less what consume recorded and counted already) unless the ledger
    counted the batch's first offsets before (a batch folded again); then event by event."""

    def counted(since: int) -> Mapping[quotas.CounterKey, Decimal]:
        if since <= start:
            consumed = [e for _, e in events if quotas.QUOTA_CONSUME in e.extensions]
            if not consumed:
                return usage
            return quotas.minus(usage, quotas.consumed_deltas(meters, consumed))
        return quotas.usage_deltas(meters, [e for r, e in events if r.offset >= since], facts_only=True)

    return counted
