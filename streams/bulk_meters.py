"""The meters' fold for rebuilds (replays): the streaming fold, fed chunks ten times larger, with
its de-duplication memory kept in this process; and, while no quota is in force, a fold of its
own that keeps the buckets in memory and writes them once (`Deferred`).

What makes the streaming fold slow to rebuild with is not the fold: it is a round trip per batch
to claim each event's digest (INSERT ... ON CONFLICT ... RETURNING, a row lock each), and a
batch's bucket rows written once per 5,000 events. A rebuild starts from an empty store that
nothing else writes to, so which events came first is known here without asking the database,
and the digests are appended with COPY (for a swap only: a diff or point-in-time views do not
need them). With a `Deferred`, each record is decoded (schemas.envelope.decode_lean, without an
Envelope in the common case), de-duplicated and folded into the rebuild's buckets at once
(projections.meter_bulk: mutable cells, ints where the values are), and the buckets are written
at the end; without one, each chunk goes through the streaming code (decoding, dead letters, the
fold, roll-ups, threshold notifications, SLO minutes, offsets). Property tests hold the cells
to `apply` (tests/unit/test_meter_bulk.py) and the views both paths build to the streaming
fold's (tests/contract/test_bulk_meters_on_each_database.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from omni import failpoints, metrics
from projections.meter_bulk import BulkFold, plan
from projections.meters import MeterIndex
from schemas.envelope import Envelope, NewerSchema, Wire, decode_lean, envelope_of
from schemas.text import NUL_ESCAPE, json_holds_nul
from schemas.topics import Topics
from stores import slos as slo_store
from stores import views
from stores.database import Database, Tx
from stores.views import DIGEST_SIZE
from streams.log import LogRecord
from streams.projectors import METERS, MeterProjector, Mishaps, _check_contiguous

log = logging.getLogger(__name__)

CHUNK = 50_000  # records per read and transaction of a rebuild (the streaming fold's: 5,000)


MAX_DEFERRED = 1_000_000  # minute buckets kept in memory before they are written anyway


class Deferred:
    """A rebuild's minute buckets, kept in memory across chunks and written once (or once per
    MAX_DEFERRED buckets): the first write appends (COPY) into the empty tables, later ones merge.
    Only while no quota is in force: threshold notifications read the buckets written so far.
    Shared by the projectors of every topic the meters fold, which fold into it in turn."""

    def __init__(self) -> None:
        self.fold = BulkFold()
        self.written = False
        self.broken = False  # a chunk failed midway: the buckets may hold some of its events

    @property
    def full(self) -> bool:
        return len(self.fold) >= MAX_DEFERRED

    def flush(self, db: Database) -> None:
        if self.broken:
            raise Broken("a chunk of this rebuild failed midway; start the rebuild again")
        if not self.fold.cells:
            return
        with db.transaction() as tx:
            if self.written:
                views.merge_buckets(tx, self.fold.states())
            else:
                views.append_cells(tx, self.fold)
        self.written = True
        self.fold = BulkFold()


class Broken(RuntimeError):
    """A chunk failed: the memory of what was seen may hold events its rolled-back transaction lost."""


class BulkMeterProjector(MeterProjector):
    """One topic's meters fold into a fresh store. `seen` (digest -> keep until; 0 unless the store
    remembers) is shared by the
    projectors of every topic the meters fold, as the seen_digests table is; start it empty with
    an empty store, and fold nothing else into that store's meters meanwhile. With `deferred`, the
    buckets are written by its flush (the rebuild's, before anything reads them), not per chunk."""

    def __init__(
        self,
        db: Database,
        topics: Topics,
        *,
        keep_seen: timedelta,
        seen: dict[bytes, int],
        deferred: Deferred | None = None,
        remember: bool = True,
        topic: str | None = None,
        consumer: str = METERS,
    ) -> None:
        super().__init__(db, topics, keep_seen=keep_seen, topic=topic, consumer=consumer)
        self.seen = seen
        # Whether the store keeps the de-duplication memory (seen_digests): a live fold going on from
        # this store needs it (a swap); views only compared or read as of a moment do not.
        self.remember = remember
        self.deferred = deferred  # shared by the topics' projectors; None: each chunk merges its buckets
        self.broken = False

    def _process(self, partition: int, records: Sequence[LogRecord]) -> int:
        deferred = self.deferred
        if deferred is None:
            return super()._process(partition, records)
        try:
            return self._fold_deferred(deferred, partition, records)
        except BaseException:
            deferred.broken = True  # its buckets may hold events of the chunk that failed
            raise

    def _fold_deferred(self, deferred: Deferred, partition: int, records: Sequence[LogRecord]) -> int:
        """The streaming fold's `_process`, record by record into the rebuild's buckets: the same
        dead letters, dropped records, digests, SLO minutes and offsets, in one transaction; no
        threshold notifications (no quota is in force while buckets are deferred)."""
        with self.db.transaction() as tx:
            start = views.lock_checkpoint(tx, self.consumer, self.topic, partition)
            fresh = [r for r in records if r.offset >= start]
            if not fresh:
                return 0
            mishaps = Mishaps()
            _check_contiguous(self.topic, partition, start, fresh, mishaps)
            meters = MeterIndex(views.meter_definitions(tx))
            offsets = views.meter_checkpoints(tx, self.topic, partition)
            live = [slug for slug in meters.by_slug if offsets.get((slug, partition), 0) == start]
            live_meters = meters.only(live)
            wire_plan = plan(live_meters)
            slo_types = {row.definition.event_type for row in slo_store.definitions(tx)}
            slo_events: list[tuple[LogRecord, Envelope]] = []  # what the SLOs fold: kept events of their types
            dropped: list[int] = []  # dead letters and duplicates: the meters' catch-up skips both
            duplicates = 0
            remembered: list[tuple[bytes, int]] = []
            seen, remember, keep = self.seen, self.remember, self.keep_seen
            add_wire, add, digest_of, sha256 = deferred.fold.add_wire, deferred.fold.add, views.seen_digest, hashlib.sha256
            newest: Wire | Envelope | None = None
            for record in fresh:
                raw = record.value
                try:
                    event = decode_lean(raw)
                    if NUL_ESCAPE in raw and json_holds_nul(raw):  # as streams.projectors.decoded
                        raise ValueError("a text field holds a NUL character, which the views cannot store")
                except NewerSchema:
                    raise
                except (ValueError, KeyError, TypeError) as unreadable:
                    log.error("dead-lettering %s/%d@%d: %s", record.topic, record.partition, record.offset, unreadable)
                    views.add_dead_letter(tx, self.consumer, record.topic, record.partition, record.offset, repr(unreadable))
                    mishaps.dead_letters += 1
                    dropped.append(record.offset)
                    continue
                wire = type(event) is Wire
                if wire:  # views.seen_digest, inline: one call less per record
                    digest = sha256(f"{event.tenantid}\x00{event.source}\x00{event.id}".encode()).digest()[:DIGEST_SIZE]  # type: ignore[union-attr]
                else:
                    digest = digest_of(event.tenant_id, event.source, event.source_id)  # type: ignore[union-attr]
                if digest in seen:
                    duplicates += 1
                    dropped.append(record.offset)
                    continue
                until = 0
                if remember:
                    moment = event.time if wire else event.event_time  # type: ignore[union-attr]
                    until = int((moment + keep).timestamp())
                    remembered.append((digest, until))
                seen[digest] = until
                if wire:
                    add_wire(wire_plan, event, record.offset)  # type: ignore[arg-type]
                else:
                    add(live_meters, event, record.offset)  # type: ignore[arg-type]
                newest = event
                if slo_types and event.type in slo_types:
                    slo_events.append((record, envelope_of(event) if wire else event))  # type: ignore[arg-type]
            if remembered:
                tx.copy_rows("seen_digests", ("digest", "keep_until"), remembered)
            if duplicates:
                log.warning("dropped %d duplicate records on %s/%d", duplicates, self.topic, partition)
            if dropped:
                views.add_dropped(tx, self.topic, partition, dropped)
            end = fresh[-1].offset + 1
            shown = self.slos.fold_live(tx, partition, start, end, slo_events)
            views.set_checkpoint(tx, self.consumer, self.topic, partition, end)
            views.set_meter_checkpoints(tx, self.topic, partition, {slug: end for slug in live})
            failpoints.hit(failpoints.METERS_BEFORE_COMMIT)
        mishaps.count(self.consumer)
        failpoints.hit(failpoints.METERS_AFTER_COMMIT)
        metrics.PROJECTED.labels(self.consumer).inc(len(fresh))
        for show in shown:
            show()
        if newest is not None:
            recorded, happened = (
                (newest.recordedtime, newest.time) if type(newest) is Wire else (newest.recorded_time, newest.event_time)
            )  # type: ignore[union-attr]
            metrics.FRESHNESS.folded(self.consumer, partition, recorded.timestamp(), happened.timestamp())
        return len(fresh)

    def process(self, partition: int, records: Sequence[LogRecord]) -> int:
        if self.broken:
            raise Broken("an earlier chunk of this rebuild failed; start the rebuild again")
        try:
            return super().process(partition, records)
        except BaseException:
            self.broken = True
            raise

    def _first_occurrences(
        self, tx: Tx, partition: int, events: list[tuple[LogRecord, Envelope]]
    ) -> list[tuple[LogRecord, Envelope]]:
        seen, keep = self.seen, self.keep_seen
        digest_of = views.seen_digest
        kept: list[tuple[LogRecord, Envelope]] = []
        fresh: list[tuple[bytes, int]] = []
        dropped: list[int] = []
        for record, event in events:
            digest = digest_of(event.tenant_id, event.source, event.source_id)
            if digest in seen:
                dropped.append(record.offset)
                continue
            until = int((event.event_time + keep).timestamp())
            seen[digest] = until
            fresh.append((digest, until))
            kept.append((record, event))
        if fresh and self.remember:
            tx.copy_rows("seen_digests", ("digest", "keep_until"), fresh)
        if dropped:
            log.warning("dropped %d duplicate records on %s/%d", len(dropped), self.topic, partition)
            views.add_dropped(tx, self.topic, partition, dropped)
        kept.sort(key=lambda pair: pair[0].offset)
        return kept
