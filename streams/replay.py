"""Replays (README, "Replay"): the log folded again from its start into a shadow store, compared
with the live views or made live.

A replay only reads the log (nothing here can append to it) and never runs the notices relay, so
no notification is sent again: the shadow's threshold notifications stay rows, and a swap keeps
which ones were sent from the live views. The live views are written by a swap alone, in one
transaction, after the whole fold has succeeded: a replay that fails or is killed before leaves
them as they were (and its shadow behind, removed by the next replay of the same id).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.meter_state import BucketState
from projections.meters import BucketKey, MeterIndex, apply
from schemas.envelope import decode, recorded_time_of
from schemas.meters import MeterDefinition
from schemas.topics import Topics, partition_for
from stores import plans as plan_store
from stores import shadow as shadows
from stores import views
from stores.database import Database, PostgresDatabase, SqliteDatabase
from stores.schema import SCHEMA
from streams.bulk_meters import CHUNK, BulkMeterProjector, Deferred
from streams.log import EventLog, LogRecord, Outgoing
from streams.projectors import API_CALLS, AUDIT, CATALOG, METERS, AuditProjector, CatalogProjector
from streams.runner import Runner

log = logging.getLogger(__name__)

AS_OF_PAGE = 5000  # records meters_as_of reads, and folds in a worker thread, at a time
SWAP_TRIES = 20  # folds of the shadow towards a moving live view before a swap gives up


class Mode(StrEnum):
    BUILD = "build"  # fold into the shadow only (with `until`: the point-in-time views, kept)
    DIFF = "diff"
    SWAP = "swap"


class BadReplay(ValueError):
    """A replay that cannot be: an unknown projection, a moment in the future, a point in time swapped live."""


class Appending(RuntimeError):
    """Something tried to append to the log through a replay's reader."""


@dataclass(slots=True)
class Progress:
    total: int = 0  # records on the replayed topics when the replay began (at `until`: up to it, once known)
    done: int = 0  # records folded into the shadow
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    progress: Progress
    differences: list[shadows.Difference]
    swapped: bool
    kept: str | None  # where the shadow was kept (its file or schema), when it was


class ReadOnlyLog:
    """A log as a replay sees it: read only, and with `until`, each partition up to its first
    record recorded after that moment (the log as it stood then: recorded times grow along a
    partition, the order records were appended in)."""

    def __init__(self, log: EventLog, until: datetime | None = None) -> None:
        self.log = log
        self.topics: Topics = log.topics
        self.until = until
        self._cut: dict[tuple[str, int], int] = {}
        self.limits: dict[tuple[str, int], int] = {}  # a diff's: where the live folds stand (next offsets)

    def limit(self, positions: dict[tuple[str, int], int]) -> bool:
        """Read each (topic, partition) no further than `positions`, the next offsets of the live
        folds (a diff compares at their place in the log); whether a limit moved since the last call."""
        moved = positions != self.limits
        self.limits = dict(positions)
        return moved

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        await self.log.ping()

    async def append(self, topic: str, items: Sequence[Outgoing]) -> None:
        raise Appending("a replay never writes to the log")

    async def read(self, topic: str, partition: int, start: int, limit: int) -> list[LogRecord]:
        cut = self._cut.get((topic, partition))
        if cut is not None and start >= cut:
            return []
        if start >= self.limits.get((topic, partition), start + 1):
            return []
        records = await self.log.read(topic, partition, start, limit)
        return self._before_cut(topic, partition, records)

    def _before_cut(self, topic: str, partition: int, records: list[LogRecord]) -> list[LogRecord]:
        most = self.limits.get((topic, partition))
        if most is not None and records and records[-1].offset >= most:
            records = [r for r in records if r.offset < most]
        if self.until is None:
            return records
        cut = self._cut.get((topic, partition))
        if cut is not None:
            return [r for r in records if r.offset < cut]
        for index, record in enumerate(records):
            moment = recorded_time_of(record.value)
            if moment is not None and moment > self.until:
                self._cut[(topic, partition)] = record.offset
                return records[:index]
        return records

    async def chunks(
        self, topic: str, starts: dict[int, int], size: int, partitions: Sequence[int] | None = None
    ) -> AsyncIterator[tuple[int, list[LogRecord]]]:
        """(partition, records) from `starts` to the end (or the cut), up to `size` at a time: Kafka's
        own scan when the log is Kafka, else reads partition by partition. `partitions`: only those."""
        scan = getattr(self.log, "scan", None)
        if scan is not None:
            async for partition, records in scan(topic, starts, size, partitions):
                kept = self._before_cut(topic, partition, records)
                if kept:
                    yield partition, kept
            return
        for partition in range(self.topics.partitions(topic)) if partitions is None else partitions:
            start = starts.get(partition, 0)
            while True:
                records: list[LogRecord] = []
                while len(records) < size:
                    more = await self.read(topic, partition, start, size - len(records))
                    if not more:
                        break
                    records += more
                    start = more[-1].offset + 1
                if not records:
                    break
                yield partition, records

    async def end_offsets(self, topic: str) -> dict[int, int]:
        ends = await self.log.end_offsets(topic)
        return {p: min(end, self._cut.get((topic, p), end), self.limits.get((topic, p), end)) for p, end in ends.items()}


class Folder(Protocol):
    topic: str

    def process(self, partition: int, records: Sequence[LogRecord]) -> int: ...


@dataclass(frozen=True, slots=True)
class Request:
    """What to replay: projection names (none: all), what to do with the shadow, up to when."""

    projections: Sequence[str] = ()
    mode: Mode = Mode.DIFF
    until: datetime | None = None
    keep: bool = False  # keep the shadow afterwards (always, for point-in-time views built alone)

    def check(self, now: datetime) -> list[shadows.Projection]:
        chosen = shadows.chosen(self.projections)  # UnknownProjection is a BadReplay's kin: ValueError
        if self.until is not None:
            if self.until.tzinfo is None:
                raise BadReplay("`until` needs a time zone offset (e.g. Z)")
            if self.until > now:
                raise BadReplay(f"`until` ({self.until.isoformat()}) is in the future: the log cannot tell yet")
            if self.mode is Mode.SWAP:
                raise BadReplay("point-in-time views (`until`) cannot be swapped live: the live views go on from the log's end")
        return chosen


@dataclass
class Replayer:
    """The wiring a replay needs from its process: the log, the live views, and how the folds are set."""

    log: EventLog
    live: Database
    folder: Path | None  # where SQLite shadows go (beside the live views)
    audit_key: Callable[[], Ed25519PrivateKey]
    keep_seen: timedelta
    batch_size: int = 5000
    audit_every: int = 100
    shard_from: int = 200_000  # records to replay from which another process folds half the usage topic
    # Told once a swap of the meters' views changed what the hot quota counters count: they are
    # built again from them (the live fold's next batch finds it too, by the views' generation).
    on_meters_swapped: Callable[[], Awaitable[None]] | None = None

    async def run(
        self,
        request: Request,
        *,
        replay_id: str | None = None,
        progress: Progress | None = None,
        on_progress: Callable[[Progress], None] = lambda _: None,
    ) -> Outcome:
        chosen = request.check(datetime.now(UTC))
        folds = shadows.folds_of(chosen)
        progress = progress or Progress()
        opening = asyncio.ensure_future(
            asyncio.to_thread(shadows.open_shadow, self.live, replay_id or shadows.new_id(), folder=self.folder)
        )
        try:
            shadow = await asyncio.shield(opening)
        except asyncio.CancelledError:  # stopped while the shadow was being made: it is removed all the same
            made = await asyncio.gather(opening, return_exceptions=True)
            if isinstance(made[0], shadows.Shadow):
                await asyncio.to_thread(made[0].drop)
            raise
        keep = request.keep or (request.mode is Mode.BUILD)
        try:
            source = ReadOnlyLog(self.log, request.until)
            folding = self._folding(source, shadow.db, {f.name for f in folds}, swap=request.mode is Mode.SWAP)
            if request.mode is Mode.DIFF:  # what the live folds have not folded yet is no difference
                source.limit(await asyncio.to_thread(self._live_positions, folding))
            progress.total = sum([sum((await source.end_offsets(topic)).values()) for topic in folding.topics])
            progress.started = time.monotonic()
            on_progress(progress)
            await folding.drain(progress, on_progress)
            if request.until is not None:
                progress.total = progress.done
            differences: list[shadows.Difference] = []
            if request.mode is Mode.DIFF:
                for _ in range(SWAP_TRIES):  # the live folds moved on meanwhile: fold on to where they are now
                    if not source.limit(await asyncio.to_thread(self._live_positions, folding)):
                        break
                    await folding.drain(progress, on_progress)
                tables = [t for p in chosen for t in p.tables]
                differences = await asyncio.to_thread(shadows.diff, self.live, shadow.db, tables)
            swapped = counters_change = False
            if request.mode is Mode.SWAP:
                for _ in range(SWAP_TRIES):
                    try:
                        counters_change = await asyncio.to_thread(shadows.swap, self.live, shadow, folds)
                    except shadows.ShadowBehind:
                        progress.total = max(progress.total, progress.done)
                        await folding.drain(progress, on_progress)
                        continue
                    swapped = True
                    break
                else:
                    raise shadows.ShadowBehind(f"the live views kept ahead of the replay {SWAP_TRIES} times; try again")
                if counters_change and self.on_meters_swapped is not None:
                    try:
                        await self.on_meters_swapped()
                    except Exception:  # the swap is done; the live fold's next batch finds the counters stale
                        log.warning("could not have the quota counters built again after the swap", exc_info=True)
            progress.finished = time.monotonic()
            on_progress(progress)
            return Outcome(progress, differences, swapped, (shadow.schema or str(shadow.file)) if keep else None)
        except BaseException:
            keep = False
            raise
        finally:
            if keep:
                shadow.db.close()
            else:
                await asyncio.to_thread(shadow.drop)

    async def views_as_of(self, projections: Sequence[str], until: datetime) -> shadows.Shadow:
        """The point-in-time views of `projections` at `until` (as `omni replay --until` builds them),
        in a shadow of their own: the caller reads it, then drops it."""
        outcome = await self.run(Request(tuple(projections), Mode.BUILD, until=until))
        assert outcome.kept is not None  # a point-in-time build is always kept
        return await asyncio.to_thread(shadows.reopen, self.live, outcome.kept)

    def _live_positions(self, folding: _Folding) -> dict[tuple[str, int], int]:
        """The next offset of the live fold of each partition of the topics `folding` reads."""
        found: dict[tuple[str, int], int] = {}
        with self.live.transaction() as tx:
            for consumer, folder in folding.sources:
                offsets = views.checkpoints(tx, consumer, folder.topic)
                for partition in range(self.log.topics.partitions(folder.topic)):
                    found[(folder.topic, partition)] = offsets.get(partition, 0)
        return found

    def _folding(self, source: ReadOnlyLog, db: Database, folds: set[str], *, swap: bool) -> _Folding:
        topics = source.topics
        catalog = CatalogProjector(db, topics)
        seen: dict[bytes, int] = {}  # the de-duplication memory of both topics' bulk folds
        # Written into the shadow for a swap only: the live fold going on from it needs it, a diff
        # ignores it (bookkeeping) and point-in-time views are only read.
        meters = BulkMeterProjector(db, topics, keep_seen=self.keep_seen, seen=seen, remember=swap)
        api_calls = BulkMeterProjector(
            db, topics, keep_seen=self.keep_seen, seen=seen, remember=swap, topic=topics.api_calls, consumer=API_CALLS
        )
        # The catalog always: the meters fold only the meters it defines.
        sources: list[tuple[str, Folder]] = [(CATALOG, catalog)]
        if shadows.METERS in folds:
            sources += [(METERS, meters), (API_CALLS, api_calls)]
        if shadows.AUDIT in folds:
            sources.append((AUDIT, AuditProjector(db, topics, self.audit_key(), every=self.audit_every)))
        runner = Runner(source, catalog, meters, batch_size=self.batch_size, api_calls=api_calls)  # for its catch-up
        chunks = {METERS: max(self.batch_size, CHUNK), API_CALLS: max(self.batch_size, CHUNK)}
        meters_runner = runner if shadows.METERS in folds else None
        return _Folding(source, db, sources, meters_runner, self.batch_size, chunks, shard_from=self.shard_from)


@dataclass
class _Folding:
    log: ReadOnlyLog
    db: Database
    sources: list[tuple[str, Folder]]
    runner: Runner | None  # catches up meters and SLOs defined after their events (with the meters)
    batch_size: int
    chunks: dict[str, int] = field(default_factory=dict)  # records per read and fold, by consumer (else batch_size)
    shard_from: int = 200_000  # records to replay from which half the usage topic is folded by another process
    bulk_done: bool = False
    _pool: ProcessPoolExecutor | None = None  # the shard's process, while the bulk fold runs

    @property
    def topics(self) -> list[str]:
        return [folder.topic for _, folder in self.sources]

    async def drain(self, progress: Progress, on_progress: Callable[[Progress], None]) -> None:
        """Fold until every source is at the end of its log (or of its cut). The first time, the
        catalog goes first, then the meters in bulk (streams.bulk_meters), their buckets written
        once at the end when no quota is in force; then everything, as the live runner does."""
        bulk = [folder for _, folder in self.sources if isinstance(folder, BulkMeterProjector)]
        if bulk and not self.bulk_done:
            self.bulk_done = True
            # The fold keeps millions of small tuples alive (the buckets, the digests seen): the cyclic
            # collector would walk them all again at every full collection, for nothing to free. They
            # are frozen (left out of collections) after each pass; the process's other objects, an
            # API's requests, are collected as before.
            try:
                # The shard's process starts (a new interpreter, importing the folds) while the catalog folds.
                self._pool = self._shard_pool(progress)
                while await self._pass(self.sources[:1], progress, on_progress):
                    pass
                quotas = await asyncio.to_thread(self._any_quota)
                deferred = None if quotas else Deferred()
                for folder in bulk:
                    folder.deferred = deferred
                    folder.slos.tenants_only = True  # the platform's SLOs: caught up below, every partition together
                for consumer, folder in [(c, f) for c, f in self.sources if f in bulk]:
                    starts = await asyncio.to_thread(self._checkpoints, consumer, folder.topic)
                    size = self.chunks.get(consumer, self.batch_size)
                    partitions = list(range(self.log.topics.partitions(folder.topic)))
                    shard = self._shard(consumer, folder, starts, size, partitions, deferred, progress)
                    mine = partitions if shard is None else partitions[: (len(partitions) + 1) // 2]
                    async for partition, records in self.log.chunks(folder.topic, starts, size, mine):
                        folded = await asyncio.to_thread(folder.process, partition, records)
                        progress.done += folded
                        progress.total = max(progress.total, progress.done)
                        on_progress(progress)
                        gc.freeze()
                        if deferred is not None and deferred.full:
                            await asyncio.to_thread(deferred.flush, self.db)
                    if shard is not None:
                        # This process's buckets are written while the shard folds on (the shard's
                        # tenants are others). The topics after this one are folded once the shard is
                        # done, and merged (deferred.written): their buckets may be the shard's.
                        if deferred is not None:
                            await asyncio.to_thread(deferred.flush, self.db)
                        progress.done += await shard
                        progress.total = max(progress.total, progress.done)
                        on_progress(progress)
                if deferred is not None:
                    await asyncio.to_thread(deferred.flush, self.db)
            finally:
                gc.unfreeze()
                for folder in bulk:
                    folder.deferred = None
                    folder.slos.tenants_only = False
                if self._pool is not None:
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
        while True:
            moved = await self._pass(self.sources, progress, on_progress)
            if self.runner is not None:
                moved += await self.runner.catch_up()
            if not moved:
                return

    def _shard(
        self,
        consumer: str,
        folder: Folder,
        starts: dict[int, int],
        size: int,
        partitions: list[int],
        deferred: Deferred | None,
        progress: Progress,
    ) -> asyncio.Future[int] | None:
        """The second half of the usage topic's partitions folded by a process of its own, when that
        can be: on Kafka and PostgreSQL, buckets written at the end (no quota in force), a log large
        enough to be worth a process's start. A tenant's events, buckets, digests and SLO minutes all
        live in its one partition, so the two processes never write the same row."""
        kafka, db, pool = self.log.log, self.db, self._pool
        if (
            pool is None
            or consumer != METERS
            or deferred is None
            or len(partitions) < 2
            or not isinstance(folder, BulkMeterProjector)
        ):
            return None
        job = Shard(
            bootstrap_servers=kafka.bootstrap_servers,  # type: ignore[attr-defined]
            topics=self.log.topics,
            produce_timeout=kafka.produce_timeout,  # type: ignore[attr-defined]
            url=db.url,
            schema=db.schema,
            topic=folder.topic,
            consumer=consumer,
            partitions=tuple(partitions[(len(partitions) + 1) // 2 :]),
            starts=dict(starts),
            size=size,
            keep_seen=folder.keep_seen,
            remember=folder.remember,
            until=self.log.until,
            collector=gc.get_threshold(),
        )
        log.info("replay: %s partitions %s folded by a process of its own", folder.topic, list(job.partitions))
        return asyncio.get_running_loop().run_in_executor(pool, fold_shard, job)

    def _shard_pool(self, progress: Progress) -> ProcessPoolExecutor | None:
        """A process for `_shard`, started now, when the replay can use one: on Kafka and PostgreSQL,
        the meters folded, a log large enough to be worth a process's start."""
        if (
            progress.total < self.shard_from
            or not isinstance(self.db, PostgresDatabase)
            or not hasattr(self.log.log, "scan")
            or not any(consumer == METERS for consumer, _ in self.sources)
        ):
            return None
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pool.submit(warm_shard)
        return pool

    async def _pass(self, sources: list[tuple[str, Folder]], progress: Progress, on_progress: Callable[[Progress], None]) -> int:
        """One chunk from each partition of each source; how many records were folded."""
        moved = 0
        for consumer, folder in sources:
            heads = await asyncio.to_thread(self._checkpoints, consumer, folder.topic)
            size = self.chunks.get(consumer, self.batch_size)
            for partition in range(self.log.topics.partitions(folder.topic)):
                records = await self._read(folder.topic, partition, heads.get(partition, 0), size)
                if records:
                    folded = await asyncio.to_thread(folder.process, partition, records)
                    moved += folded
                    progress.done += folded
                    progress.total = max(progress.total, progress.done)
                    on_progress(progress)
        return moved

    def _any_quota(self) -> bool:
        with self.db.transaction() as tx:
            return plan_store.any_quota(tx)

    async def _read(self, topic: str, partition: int, start: int, size: int) -> list[LogRecord]:
        """Up to `size` records from `start`: reads until that many came or the partition ended."""
        records: list[LogRecord] = []
        while len(records) < size:
            more = await self.log.read(topic, partition, start, size - len(records))
            if not more:
                break
            records += more
            start = more[-1].offset + 1
        return records

    def _checkpoints(self, consumer: str, topic: str) -> dict[int, int]:
        with self.db.transaction() as tx:
            return views.checkpoints(tx, consumer, topic)


async def meter_as_of(log: EventLog, definition: MeterDefinition, tenant_id: str, as_of: datetime) -> Database:
    """One tenant's buckets of one meter as the platform knew them at `as_of` (see meters_as_of)."""
    return await meters_as_of(log, [definition], tenant_id, as_of)


async def meters_as_of(log: EventLog, definitions: Sequence[MeterDefinition], tenant_id: str, as_of: datetime) -> Database:
    """One tenant's buckets of some meters as the platform knew them at `as_of`: folded from the
    records of the topics the meters fold that were recorded by then (whatever their event time),
    each (source, id) once, into a store of their own in memory (close it after the query).

    It reads the tenant's own partition of those topics whole (both are keyed by tenant: one
    partition holds its records), so it costs time in proportion to that partition (README,
    "Replay"). The records are read a page at a time and decoded and folded in a worker thread,
    as the store is built: none of it runs on the event loop, where it would hold up every other
    request while it lasts."""
    index = MeterIndex(definitions)
    types = {definition.event_type for definition in definitions}
    deltas: dict[BucketKey, BucketState] = {}
    seen: set[tuple[str, str, str]] = set()

    def fold(records: list[LogRecord]) -> None:
        for record in records:
            if record.key != tenant_id:
                continue  # another tenant's, sharing the partition: not decoded
            moment = recorded_time_of(record.value)
            if moment is None or moment > as_of:
                continue
            try:
                event = decode(record.value)
            except (ValueError, KeyError, TypeError):
                continue  # dead-lettered by the folds too
            if event.tenant_id != tenant_id or event.type not in types or event.dedupe_key in seen:
                continue
            seen.add(event.dedupe_key)
            apply(deltas, index, event, record.offset)

    for topic in (log.topics.usage, log.topics.api_calls):
        ends = await log.end_offsets(topic)
        own = partition_for(tenant_id, len(ends))
        end, offset = ends.get(own, 0), 0
        while offset < end:
            records = await log.read(topic, own, offset, min(AS_OF_PAGE, end - offset))
            if not records:
                break
            offset = records[-1].offset + 1
            await asyncio.to_thread(fold, records)
    return await asyncio.to_thread(_buckets_in_memory, definitions, deltas)


def _buckets_in_memory(definitions: Sequence[MeterDefinition], deltas: dict[BucketKey, BucketState]) -> Database:
    """A store in memory holding these meters and buckets (meters_as_of's). The buckets are merged
    AS_OF_PAGE at a time: merge_buckets sorts what it merges, and one sort of a tenant's every
    bucket (50,000 subjects) held the GIL, so the event loop too, for half a second."""
    db = SqliteDatabase(Path(":memory:"))
    try:
        db.migrate(SCHEMA)
        with db.transaction() as tx:
            for definition in definitions:
                views.add_meter_definition(tx, "_platform", definition, "as-of")
            keys = list(deltas)
            for start in range(0, len(keys), AS_OF_PAGE):
                views.merge_buckets(tx, {key: deltas[key] for key in keys[start : start + AS_OF_PAGE]})
    except BaseException:
        db.close()
        raise
    return db


@dataclass(frozen=True, slots=True)
class Shard:
    """What a process folding some of a topic's partitions in bulk needs (it is spawned: no shared state)."""

    bootstrap_servers: str
    topics: Topics
    produce_timeout: float
    url: str
    schema: str
    topic: str
    consumer: str
    partitions: tuple[int, ...]
    starts: dict[int, int]
    size: int
    keep_seen: timedelta
    remember: bool
    until: datetime | None
    collector: tuple[int, int, int] = (700, 10, 10)  # the cyclic collector's thresholds (the parent's: gc.get_threshold)


def warm_shard() -> None:
    """Run first in the shard's process, while the catalog folds: the imports `fold_shard` needs."""
    import streams.kafka_log  # noqa: F401


def fold_shard(job: Shard) -> int:
    """In a process of its own: fold `job.partitions` into the shadow schema; how many records."""
    return asyncio.run(_fold_shard(job))


async def _fold_shard(job: Shard) -> int:
    from streams.kafka_log import KafkaLog

    gc.set_threshold(*job.collector)  # as tuned in the replay's process (omni.runtime.tune_collector)
    gc.freeze()

    log = KafkaLog(job.bootstrap_servers, job.topics, produce_timeout=job.produce_timeout)
    db = PostgresDatabase(job.url, schema=job.schema, max_size=1)
    deferred = Deferred()
    folder = BulkMeterProjector(
        db, job.topics, keep_seen=job.keep_seen, seen={}, deferred=deferred, remember=job.remember, topic=job.topic,
        consumer=job.consumer,
    )  # fmt: skip
    folder.slos.tenants_only = True  # as the replay's own bulk pass (the platform's SLOs are caught up after)
    done = 0
    try:
        async for partition, records in ReadOnlyLog(log, job.until).chunks(job.topic, job.starts, job.size, job.partitions):
            done += await asyncio.to_thread(folder.process, partition, records)
            gc.freeze()
            if deferred.full:
                await asyncio.to_thread(deferred.flush, db)
        await asyncio.to_thread(deferred.flush, db)
    finally:
        await log.close()
        db.close()
    return done
