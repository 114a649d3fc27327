"""The meters' fold for rebuilds (replays): the streaming fold's own `process`, fed chunks ten times
larger, with its de-duplication memory kept in this process and appended in bulk.

What makes the streaming fold slow to rebuild with is not the fold: it is a round trip per batch
to claim each event's digest (INSERT ... ON CONFLICT ... RETURNING, a row lock each), and a
batch's bucket rows written once per 5,000 events. A rebuild starts from an empty store that
nothing else writes to, so which events came first is known here without asking the database,
and the digests are appended with COPY; every other step (decoding, dead letters, the fold,
roll-ups, threshold notifications, SLO minutes, offsets) is the streaming code, per chunk. A
property test (tests/unit/test_bulk_meters.py) holds the views it builds to the streaming fold's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from projections.meter_state import BucketState, combine
from projections.meters import BucketKey
from schemas.envelope import Envelope
from schemas.topics import Topics
from stores import views
from stores.database import Database, Tx
from streams.log import LogRecord
from streams.projectors import METERS, MeterProjector

log = logging.getLogger(__name__)

CHUNK = 50_000  # records per read and transaction of a rebuild (the streaming fold's: 5,000)


MAX_DEFERRED = 1_000_000  # minute buckets kept in memory before they are written anyway


class Deferred:
    """A rebuild's minute buckets, kept in memory across chunks and written once (or once per
    MAX_DEFERRED buckets): the first write appends (COPY) into the empty tables, later ones merge.
    Only while no quota is in force: threshold notifications read the buckets written so far."""

    def __init__(self) -> None:
        self.buckets: dict[BucketKey, BucketState] = {}
        self.written = False

    def add(self, deltas: dict[BucketKey, BucketState]) -> None:
        buckets = self.buckets
        for key, state in deltas.items():
            stored = buckets.get(key)
            buckets[key] = state if stored is None else combine(stored, state)

    @property
    def full(self) -> bool:
        return len(self.buckets) >= MAX_DEFERRED

    def flush(self, db: Database) -> None:
        if not self.buckets:
            return
        with db.transaction() as tx:
            (views.merge_buckets if self.written else views.append_buckets)(tx, self.buckets)
        self.written = True
        self.buckets = {}


class Broken(RuntimeError):
    """A chunk failed: the memory of what was seen may hold events its rolled-back transaction lost."""


class BulkMeterProjector(MeterProjector):
    """One topic's meters fold into a fresh store. `seen` (digest -> keep until) is shared by the
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

    def _merge(self, tx: Tx, deltas: dict[BucketKey, BucketState]) -> None:
        if self.deferred is None:
            super()._merge(tx, deltas)
        else:
            self.deferred.add(deltas)

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
